//! The etcd v3 `Auth` service, registered so that clients get a clear
//! answer: muster has no users, roles or tokens yet.
//!
//! Invariants:
//!
//! - Every RPC of the service answers [`tonic::Code::Unimplemented`] with
//!   [`AUTH_UNSUPPORTED`], touches no state and never proposes anything.
//!   So `etcdctl auth enable` fails with that message instead of gRPC's
//!   generic "unknown service", and no client can believe authentication
//!   is on.
//! - `AuthStatus` is no exception: answering "disabled" would invite a
//!   client to rely on an auth store that does not exist.

use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::auth_server::{Auth, AuthServer};
use tonic::{Request, Response, Status};

/// The message of every `Auth` RPC's `Unimplemented` status.
pub const AUTH_UNSUPPORTED: &str = "muster: authentication is not supported yet";

/// The `Auth` service of one member: every RPC is refused as unimplemented.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthService;

impl AuthService {
    /// The service.
    pub fn new() -> Self {
        AuthService
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> AuthServer<Self> {
        AuthServer::new(self)
    }
}

/// The status every `Auth` RPC answers.
fn unsupported() -> Status {
    Status::unimplemented(AUTH_UNSUPPORTED)
}

/// Implements `Auth` with each listed RPC answering [`unsupported`].
macro_rules! unsupported_auth {
    ($($rpc:ident($request:ident) -> $response:ident;)*) => {
        #[tonic::async_trait]
        impl Auth for AuthService {
            $(
                async fn $rpc(
                    &self,
                    _request: Request<pb::$request>,
                ) -> Result<Response<pb::$response>, Status> {
                    Err(unsupported())
                }
            )*
        }
    };
}

unsupported_auth! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    auth_status(AuthStatusRequest) -> AuthStatusResponse;
    authenticate(AuthenticateRequest) -> AuthenticateResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    user_list(AuthUserListRequest) -> AuthUserListResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_rpc_is_unimplemented() {
        let auth = AuthService::new();
        let statuses = [
            auth.auth_enable(Request::new(pb::AuthEnableRequest {}))
                .await
                .err(),
            auth.auth_status(Request::new(pb::AuthStatusRequest {}))
                .await
                .err(),
            auth.user_list(Request::new(pb::AuthUserListRequest {}))
                .await
                .err(),
            auth.role_revoke_permission(Request::new(
                pb::AuthRoleRevokePermissionRequest::default(),
            ))
            .await
            .err(),
        ];
        for status in statuses {
            let status = status.expect("refused");
            assert_eq!(status.code(), tonic::Code::Unimplemented);
            assert_eq!(status.message(), AUTH_UNSUPPORTED);
        }
    }
}
