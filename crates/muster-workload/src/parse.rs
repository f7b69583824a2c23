//! Parsing of the command line's durations and endpoint lists.
//!
//! Invariants: parsing is pure and total (every input yields a value or an
//! error message, never a panic); an endpoint list yields at least one
//! member, with unique names, and every URL carries a scheme.

use std::collections::BTreeMap;

/// Parses a Go-style duration (see [`muster_server::duration::parse`]).
pub use muster_server::duration::parse as parse_duration;

/// Parses a comma-separated endpoint list into member name → URL.
///
/// Entries are `name=url` or a bare `url`; a bare entry at position `i`
/// (from 0) is named `m<i+1>`. A URL without a scheme gets `http://`.
/// Empty entries are skipped; an empty list or a repeated name is an error.
pub fn parse_endpoints(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut members = BTreeMap::new();
    for (i, entry) in text
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let (name, url) = match entry.split_once('=') {
            Some((name, url)) if !name.contains(':') && !name.contains('/') => {
                (name.trim().to_string(), url.trim())
            }
            _ => (format!("m{}", i + 1), entry),
        };
        if name.is_empty() {
            return Err(format!("empty member name in {entry:?}"));
        }
        if url.is_empty() {
            return Err(format!("empty URL in {entry:?}"));
        }
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        if members.insert(name.clone(), url).is_some() {
            return Err(format!("member {name:?} given twice"));
        }
    }
    if members.is_empty() {
        return Err("no endpoints given".into());
    }
    Ok(members)
}
