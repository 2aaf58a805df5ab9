//! The verdict cache shared by several gateways (`shared_state:` in `mxgate.yaml`,
//! docs/shared-state.md): a verdict one node learned is stored in the store too, under
//! `{key_prefix}verdict:{method id}:{address}` with the value `valid|invalid STORED EXPIRES`
//! (unix seconds) and a `PX` lifetime ending when the local entry would; a lookup that misses
//! the local cache asks the store (one `GET`, bounded by `shared_state.timeout`) before the
//! directory, and a hit fills the local cache. Tempfails are never stored, as locally.
//!
//! While the store is down the local cache works alone, as without `shared_state:`.

use std::time::Duration;

use super::cache::{CacheKey, Entry, VerdictCache};
use crate::shared_state::{SharedError, SharedState};

/// The `counter` label of `mxgate_shared_state_fallbacks_total` for lookups that missed
/// locally and could not ask the store.
pub const FALLBACK_COUNTER: &str = "validation_cache";

/// Longest a `cache-flush` may spend deleting shared entries (an operator's command, off
/// every reply's path; a large cache is many `SCAN` rounds).
const FLUSH_LIMIT: Duration = Duration::from_secs(30);

/// Keys asked per `SCAN` round of a flush.
const SCAN_COUNT: usize = 1000;

/// The shared verdicts: a view of the store for the validator.
#[derive(Debug, Clone)]
pub struct SharedVerdicts {
    state: SharedState,
}

/// The value stored for `entry`.
fn value(entry: &Entry) -> String {
    let verdict = if entry.valid { "valid" } else { "invalid" };
    format!("{verdict} {} {}", entry.stored, entry.expires)
}

/// The entry of a stored value (`last_hit` is `now`); `None` when it is not one of ours.
fn parse(value: &str, now: u64) -> Option<Entry> {
    let mut w = value.split(' ');
    let valid = match w.next()? {
        "valid" => true,
        "invalid" => false,
        _ => return None,
    };
    let stored = w.next()?.parse().ok()?;
    let expires = w.next()?.parse().ok()?;
    w.next().is_none().then_some(Entry {
        valid,
        stored,
        expires,
        last_hit: now,
    })
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// The cache key's address part of a shared key's id (`ldap:NAME:ADDRESS`,
/// `callahead:DOMAIN:ADDRESS`): the method id has one colon.
fn address_of(id: &str) -> Option<&str> {
    let mut parts = id.splitn(3, ':');
    parts.next()?;
    parts.next()?;
    parts.next()
}

/// Whether a flush of `filter` (an address, or `@DOMAIN` for every address of the domain)
/// means the cache key address `address`; ASCII case ignored, as the local flush does.
pub fn flush_matches(filter: &str, address: &str) -> bool {
    let address = address.to_ascii_lowercase();
    let filter = filter.to_ascii_lowercase();
    match filter.strip_prefix('@') {
        Some(domain) => address.rsplit_once('@').is_some_and(|(_, d)| d == domain),
        None => address == filter,
    }
}

impl SharedVerdicts {
    /// The shared verdicts in `state`.
    pub fn new(state: SharedState) -> Self {
        SharedVerdicts { state }
    }

    /// The store key of a cache key.
    fn key(&self, key: &CacheKey) -> String {
        self.state
            .key("verdict", &format!("{}:{}", key.method(), key.address()))
    }

    /// Looks `key` up in the store and, when found and not expired at `now`, stores it in
    /// `cache`: true when it did. Missing, expired, unreadable or unanswered: false (a store
    /// that did not answer counts as a fallback).
    pub async fn fill(&self, cache: &VerdictCache, key: &CacheKey, now: u64) -> bool {
        let k = self.key(key);
        let got = self
            .state
            .run(|mut c| async move {
                redis::cmd("GET")
                    .arg(&k)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        match got {
            Ok(Some(v)) => match parse(&v, now).filter(|e| e.expires > now) {
                Some(entry) => {
                    cache.insert_entry(key.clone(), entry, now);
                    true
                }
                None => false,
            },
            Ok(None) => false,
            Err(_) => {
                self.state.fallback(FALLBACK_COUNTER);
                false
            }
        }
    }

    /// Stores `entry` of `key`, living in the store until it expires (relative to `now`).
    /// Not on any reply's path: callers spawn it. A store that does not answer misses it.
    pub async fn publish(&self, key: &CacheKey, entry: Entry, now: u64) {
        let Some(ttl) = entry.expires.checked_sub(now).filter(|t| *t > 0) else {
            return;
        };
        let (k, v) = (self.key(key), value(&entry));
        let r = self
            .state
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&v)
                    .arg("PX")
                    .arg(ttl.saturating_mul(1000))
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        if let Err(e) = r {
            tracing::debug!("shared verdict cache: not published: {e}");
        }
    }

    /// Deletes the shared entries of `address` (an address, or `@DOMAIN`), or all of them
    /// without one; returns how many went.
    pub async fn flush(&self, address: Option<&str>) -> Result<usize, SharedError> {
        let head = self.state.key("verdict", "");
        let pattern = format!("{}*", glob_escape(&head));
        let filter = address.map(str::to_string);
        self.state
            .run_within(FLUSH_LIMIT, |mut c| async move {
                let mut cursor = 0u64;
                let mut removed = 0usize;
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(&mut c)
                        .await?;
                    let doomed: Vec<&String> = keys
                        .iter()
                        .filter(|k| {
                            let id = k.strip_prefix(head.as_str()).unwrap_or(k);
                            filter
                                .as_deref()
                                .is_none_or(|f| address_of(id).is_some_and(|a| flush_matches(f, a)))
                        })
                        .collect();
                    if !doomed.is_empty() {
                        removed += redis::cmd("UNLINK")
                            .arg(&doomed)
                            .query_async::<usize>(&mut c)
                            .await?;
                    }
                    if next == 0 {
                        return Ok(removed);
                    }
                    cursor = next;
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_strangers_are_ignored() {
        let e = Entry {
            valid: false,
            stored: 1_764_950_000,
            expires: 1_764_953_600,
            last_hit: 1,
        };
        assert_eq!(value(&e), "invalid 1764950000 1764953600");
        let back = parse(&value(&e), 7).unwrap();
        assert_eq!(back, Entry { last_hit: 7, ..e });
        for bad in [
            "",
            "valid",
            "valid 1",
            "maybe 1 2",
            "valid 1 2 3",
            "valid x 2",
        ] {
            assert_eq!(parse(bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn flush_filters_match_addresses_and_domains() {
        assert_eq!(
            address_of("callahead:example.test:bob@example.test"),
            Some("bob@example.test")
        );
        assert_eq!(address_of("ldap:corp:@corp.test"), Some("@corp.test"));
        assert!(flush_matches("Bob@Example.test", "bob@example.test"));
        assert!(!flush_matches("bob@example.test", "bobby@example.test"));
        assert!(flush_matches("@example.test", "bob@example.test"));
        assert!(flush_matches("@example.test", "@example.test"));
        assert!(!flush_matches("@example.test", "bob@sub.example.test"));
        assert_eq!(glob_escape("mx*[1]?\\:"), "mx\\*\\[1\\]\\?\\\\:");
    }
}
