//! Conversions between the registry service's wire types
//! ([`crate::registrypb`]) and the registry's data model
//! ([`crate::registry::Instance`]).
//!
//! Wire → model is lenient only where the proto says so (weight 0 means 1,
//! an unspecified health means passing) and otherwise refuses what the
//! model cannot hold (a weight above 65535, an unknown health); the
//! caller still runs [`Instance::validate`]. Model → wire cannot fail.

use std::time::{Duration, UNIX_EPOCH};

use crate::registry::{Health, Instance, InvalidInstance};
use crate::registrypb;

/// The wire form of `health`.
pub fn health_to_wire(health: Health) -> registrypb::Health {
    match health {
        Health::Passing => registrypb::Health::Passing,
        Health::Warning => registrypb::Health::Warning,
        Health::Critical => registrypb::Health::Critical,
    }
}

/// The health a wire enum value names: `None` for `HEALTH_UNSPECIFIED`
/// ("unchanged" or "any", as the request says), an error for a value the
/// enum does not have.
pub fn health_from_wire(value: i32) -> Result<Option<Health>, InvalidInstance> {
    match registrypb::Health::try_from(value) {
        Ok(registrypb::Health::Unspecified) => Ok(None),
        Ok(registrypb::Health::Passing) => Ok(Some(Health::Passing)),
        Ok(registrypb::Health::Warning) => Ok(Some(Health::Warning)),
        Ok(registrypb::Health::Critical) => Ok(Some(Health::Critical)),
        Err(_) => Err(InvalidInstance(format!(
            "health {value} is not one of passing (1), warning (2), critical (3)"
        ))),
    }
}

/// The wire form of `instance`, as stored at `mod_revision` attached to
/// `lease` (0: none).
pub fn instance_to_wire(
    instance: &Instance,
    mod_revision: i64,
    lease: i64,
) -> registrypb::Instance {
    let registered_unix = instance
        .registered
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    registrypb::Instance {
        service: instance.service.clone(),
        id: instance.id.clone(),
        addr: instance.addr.clone(),
        tags: instance.tags.clone(),
        meta: instance.meta.clone().into_iter().collect(),
        weight: u32::from(instance.weight),
        zone: instance.zone.clone(),
        health: health_to_wire(instance.health) as i32,
        registered_unix,
        mod_revision,
        lease,
    }
}

/// The instance a request carries: weight 0 is 1 and an unspecified
/// health is passing; `registered` is taken from `registered_unix` (the
/// epoch when not positive). `mod_revision` and `lease` are output only
/// and ignored. Not validated: see [`Instance::validate`].
pub fn instance_from_wire(wire: registrypb::Instance) -> Result<Instance, InvalidInstance> {
    let weight = match wire.weight {
        0 => 1,
        w => u16::try_from(w).map_err(|_| InvalidInstance(format!("weight {w} is above 65535")))?,
    };
    let health = health_from_wire(wire.health)?.unwrap_or(Health::Passing);
    let registered = UNIX_EPOCH + Duration::from_secs(wire.registered_unix.max(0).unsigned_abs());
    Ok(Instance {
        service: wire.service,
        id: wire.id,
        addr: wire.addr,
        tags: wire.tags,
        meta: wire.meta.into_iter().collect(),
        weight,
        zone: wire.zone,
        health,
        registered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::parse_rfc3339;

    #[test]
    fn an_instance_survives_the_wire() {
        let mut instance = Instance::new("api", "api-1", "10.0.0.1:8080");
        instance.tags = vec!["v2".into()];
        instance.meta.insert("commit".into(), "4f2a".into());
        instance.weight = 7;
        instance.zone = "eu-1a".into();
        instance.health = Health::Critical;
        instance.registered = parse_rfc3339("2026-11-25T10:00:00Z").unwrap();
        let wire = instance_to_wire(&instance, 42, 9);
        assert_eq!((wire.mod_revision, wire.lease), (42, 9));
        assert_eq!(wire.health, registrypb::Health::Critical as i32);
        assert_eq!(wire.registered_unix, 1_795_600_800);
        assert_eq!(instance_from_wire(wire), Ok(instance));
    }

    #[test]
    fn wire_defaults_and_refusals() {
        let wire = registrypb::Instance {
            service: "api".into(),
            id: "1".into(),
            addr: "h:80".into(),
            ..Default::default()
        };
        let instance = instance_from_wire(wire.clone()).unwrap();
        assert_eq!((instance.weight, instance.health), (1, Health::Passing));
        let heavy = registrypb::Instance {
            weight: 65_536,
            ..wire.clone()
        };
        assert!(instance_from_wire(heavy).unwrap_err().0.contains("weight"));
        let unknown = registrypb::Instance { health: 9, ..wire };
        assert!(
            instance_from_wire(unknown)
                .unwrap_err()
                .0
                .contains("health")
        );
        assert_eq!(health_from_wire(0), Ok(None));
    }
}
