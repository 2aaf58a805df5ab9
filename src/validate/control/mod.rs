//! The recipient-validation verbs of the control socket (`spool/control.sock`), behind
//! `mxgate recipients ...`:
//! - `validate ADDRESS [nocache] [listener NAME]`: what the running configuration answers for
//!   ADDRESS and why ([`check`]), with the live cache, probe pools and breakers;
//! - `cache-list [valid|invalid] [ADDRESS|@DOMAIN]` and `cache-flush [ADDRESS|@DOMAIN]`: the
//!   verdict cache.
//!
//! `explain` holds the configuration side of a check (listener, RAT entry, method): no I/O.
//!
//! An answer's first line is `ok` (a report follows) or `ok TEXT`, or `error TEXT`, as the
//! queue verbs answer. [`LiveRecipients`] is what the socket sees of the current
//! configuration; the server replaces it on reload.

pub mod check;
mod explain;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cache::{CacheKey, Entry, VerdictCache};
use super::destination::{SystemClocks, ValidationClock};
use super::service::Validator;
use super::settings::ValidationSettings;
use crate::config::model::{Config, ListenerKind};
use crate::config::outbound::{DestinationControls, RouteTable};
use crate::policy::rat::RecipientAccessTable;

pub use check::CheckRequest;

/// The verbs this module answers.
const VERBS: [&str; 3] = ["validate", "cache-list", "cache-flush"];

/// Usage of the verbs, for the socket's usage error.
pub const USAGE: &str =
    "validate ADDRESS [nocache] [listener NAME], cache-list [valid|invalid] [ADDRESS], cache-flush [ADDRESS]";

/// True when `verb` is one of this module's.
pub fn is_verb(verb: &str) -> bool {
    VERBS.contains(&verb)
}

/// One listener as the check needs it.
#[derive(Debug, Clone)]
pub(crate) struct ListenerRat {
    /// Listener name.
    pub name: String,
    /// Public or private.
    pub kind: ListenerKind,
    /// Its RAT (public listeners).
    pub rat: Option<Arc<RecipientAccessTable>>,
}

/// What a recipient check reads of one configuration: listeners and their RATs, routes,
/// destination controls and validation settings, and where each RAT entry is written.
#[derive(Debug, Clone)]
pub struct RecipientView {
    pub(crate) dir: PathBuf,
    pub(crate) listeners: Vec<ListenerRat>,
    pub(crate) routes: Arc<RouteTable>,
    pub(crate) destinations: Arc<DestinationControls>,
    pub(crate) settings: Arc<ValidationSettings>,
    /// `policies/rat.yaml:LINE:COLUMN` of each entry, by RAT name and index.
    positions: HashMap<(String, usize), String>,
}

impl RecipientView {
    /// The view of `config` (reads `policies/rat.yaml` again for the entries' positions).
    pub fn new(config: &Config) -> Self {
        RecipientView {
            dir: config.dir.clone(),
            listeners: config
                .listeners
                .iter()
                .map(|l| ListenerRat {
                    name: l.name.clone(),
                    kind: l.kind,
                    rat: l.rat.clone(),
                })
                .collect(),
            routes: config.routes.clone(),
            destinations: config.destinations.clone(),
            settings: config.validation.clone(),
            positions: rat_positions(&config.dir),
        }
    }

    /// Where entry `index` of RAT `rat` is written, when known.
    pub(crate) fn position(&self, rat: &str, index: usize) -> Option<&str> {
        self.positions
            .get(&(rat.to_string(), index))
            .map(String::as_str)
    }

    /// A path of the configuration as written (relative to its directory when inside it).
    pub(crate) fn shown_path<'a>(&self, path: &'a Path) -> std::path::Display<'a> {
        path.strip_prefix(&self.dir).unwrap_or(path).display()
    }
}

/// The positions of every RAT entry in `DIR/policies/rat.yaml`; empty when it cannot be
/// read (the check then names entries by number only).
fn rat_positions(dir: &Path) -> HashMap<(String, usize), String> {
    use crate::config::defs::{NamedMap, RatDef};
    use crate::config::error::Pos;
    let file = Path::new("policies").join("rat.yaml");
    let Ok(text) = std::fs::read_to_string(dir.join(&file)) else {
        return HashMap::new();
    };
    let Ok(Some(rats)) = serde_saphyr::from_str::<Option<NamedMap<Option<RatDef>>>>(&text) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for (name, rat) in &rats.0 {
        let entries = rat.as_ref().and_then(|r| r.entries.as_ref());
        for (i, e) in entries.into_iter().flatten().enumerate() {
            let at = format!("{}:{}", file.display(), Pos::of(e));
            out.insert((name.value.trim().to_string(), i), at);
        }
    }
    out
}

/// What the control socket sees of the running configuration: its view and its validator.
#[derive(Debug)]
pub struct LiveRecipients {
    /// The configuration's listeners, RATs and routes.
    pub view: RecipientView,
    /// The validator of the configuration (its cache is the server's).
    pub validator: Arc<Validator>,
}

impl LiveRecipients {
    /// The live state of `config` with its `validator`.
    pub fn new(config: &Config, validator: Arc<Validator>) -> Self {
        LiveRecipients {
            view: RecipientView::new(config),
            validator,
        }
    }
}

/// Answers one of this module's verbs; `rest` is the line after the verb.
pub async fn execute(live: &LiveRecipients, verb: &str, rest: &str) -> String {
    let now = SystemClocks.unix();
    let cache = live.validator.cache();
    let answer = match verb {
        "validate" => match CheckRequest::parse(rest) {
            Ok(req) => check::check_live(live, &req)
                .await
                .map(|r| format!("ok\n{r}")),
            Err(e) => Err(e),
        },
        "cache-list" => CacheFilter::parse(rest, true).map(|f| list(cache, &f, now)),
        "cache-flush" => match CacheFilter::parse(rest, false) {
            Ok(f) => {
                let mut answer = flush(cache, &f, now);
                let (valid, invalid) = cache.counts();
                crate::metrics::validation::set_cache_entries(valid, invalid);
                if let Some(shared) = live.validator.shared() {
                    let said = shared_flushed(shared.flush(f.address.as_deref()).await);
                    // After the local answer, on its line: `ok ...; shared store: ...`.
                    answer.truncate(answer.trim_end().len());
                    answer.push_str(&format!("; {said}\n"));
                }
                Ok(answer)
            }
            Err(e) => Err(e),
        },
        _ => Err(format!("usage: {USAGE}")),
    };
    answer.unwrap_or_else(|e| format!("error {e}\n"))
}

/// What a flush did to the shared store: other gateways keep their local copies.
fn shared_flushed(r: Result<usize, crate::shared_state::SharedError>) -> String {
    match r {
        Ok(n) => format!(
            "{} removed from the shared store (other gateways keep their local copies until they expire or are flushed there)",
            entries(n)
        ),
        Err(e) => format!("the shared store was not flushed: {e}"),
    }
}

/// Which cache entries `cache-list` and `cache-flush` mean.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheFilter {
    /// Only valid (true) or only invalid (false) entries.
    pub valid: Option<bool>,
    /// One address, or every address at `@DOMAIN` (the catch-all finding included).
    pub address: Option<String>,
}

impl CacheFilter {
    /// The words after the verb: `[valid|invalid] [ADDRESS]` (the verdict for `cache-list`
    /// only).
    pub fn parse(rest: &str, verdict: bool) -> Result<Self, String> {
        let mut f = CacheFilter::default();
        for w in rest.split_whitespace() {
            match w {
                "valid" | "invalid" if verdict && f.valid.is_none() => f.valid = Some(w == "valid"),
                _ if w.contains('@') && f.address.is_none() => {
                    f.address = Some(w.trim_matches(['<', '>']).to_string())
                }
                _ if verdict => {
                    return Err(format!(
                        "usage: cache-list [valid|invalid] [ADDRESS] ({w:?})"
                    ))
                }
                _ => return Err(format!("usage: cache-flush [ADDRESS] ({w:?})")),
            }
        }
        Ok(f)
    }

    /// The control-socket line of `verb` with this filter.
    pub fn to_line(&self, verb: &str) -> String {
        let mut line = verb.to_string();
        if let Some(v) = self.valid {
            line.push_str(if v { " valid" } else { " invalid" });
        }
        if let Some(a) = &self.address {
            line.push(' ');
            line.push_str(a);
        }
        line
    }

    fn matches(&self, key: &CacheKey, e: &Entry) -> bool {
        let address = key.address().to_ascii_lowercase();
        self.valid.is_none_or(|v| e.valid == v)
            && self.address.as_deref().is_none_or(|a| {
                let a = a.to_ascii_lowercase();
                match a.strip_prefix('@') {
                    Some(domain) => address.rsplit_once('@').is_some_and(|(_, d)| d == domain),
                    None => address == a,
                }
            })
    }
}

/// `1 entry`, `2 entries`.
pub(crate) fn entries(n: usize) -> String {
    if n == 1 {
        "1 entry".into()
    } else {
        format!("{n} entries")
    }
}

/// Unix seconds as RFC 3339 UTC (`2026-12-05T16:20:01Z`).
pub(crate) fn utc(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}

/// The `cache-list` table: method id, verdict, stored, expires, address (the widest column
/// last, like `mxgate queue list`).
fn list(cache: &VerdictCache, f: &CacheFilter, now: u64) -> String {
    let all = cache.entries(now);
    let shown: Vec<&(CacheKey, Entry)> = all.iter().filter(|(k, e)| f.matches(k, e)).collect();
    let width = shown
        .iter()
        .map(|(k, _)| k.method().len())
        .chain(["METHOD".len()])
        .max()
        .unwrap_or(0);
    let mut s = format!(
        "ok\n{:<width$}  {:<7}  {:<20}  {:<20}  ADDRESS\n",
        "METHOD", "VERDICT", "STORED", "EXPIRES"
    );
    for (k, e) in &shown {
        s.push_str(&format!(
            "{:<width$}  {:<7}  {:<20}  {:<20}  {}\n",
            k.method(),
            if e.valid { "valid" } else { "invalid" },
            utc(e.stored),
            utc(e.expires),
            k.address()
        ));
    }
    let valid = all.iter().filter(|(_, e)| e.valid).count();
    s.push_str(&format!(
        "-- {} shown; the cache holds {valid} valid and {} invalid\n",
        entries(shown.len()),
        all.len() - valid
    ));
    s
}

/// `cache-flush`: forgets the matching entries (all without an address).
fn flush(cache: &VerdictCache, f: &CacheFilter, now: u64) -> String {
    let Some(address) = &f.address else {
        let n = cache.clear();
        return format!("ok {} removed; the cache is empty\n", entries(n));
    };
    let keys: Vec<CacheKey> = cache
        .entries(now)
        .into_iter()
        .filter(|(k, e)| f.matches(k, e))
        .map(|(k, _)| k)
        .collect();
    let n = keys.iter().filter(|k| cache.remove(k)).count();
    let mut s = format!("ok {} removed for {address}", entries(n));
    // A catch-all domain answers for all its addresses under one `@DOMAIN` entry.
    if let Some((_, domain)) = address.split_once('@').filter(|(l, _)| !l.is_empty()) {
        let marker = format!("@{domain}");
        let catch_all = cache
            .entries(now)
            .iter()
            .any(|(k, e)| e.valid && k.address().eq_ignore_ascii_case(&marker));
        if catch_all {
            s.push_str(&format!(
                " ({domain} is cached as a catch-all domain: flush @{domain} to probe it again)"
            ));
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::cache::CacheSettings;
    use crate::validate::Verdict;

    const M: &str = "callahead:example.com";

    fn cache() -> VerdictCache {
        let c = VerdictCache::new(CacheSettings {
            invalid_ttl: 3600,
            ..CacheSettings::default()
        });
        let t = 1_764_950_000;
        c.insert(c.key(M, "nobody@example.com"), Verdict::Invalid, t);
        c.insert(c.key(M, "alice@example.com"), Verdict::Valid, t);
        c.insert(c.key(M, "@catch.example"), Verdict::Valid, t);
        c.insert(c.key("ldap:corp", "bob@corp.example"), Verdict::Invalid, t);
        c
    }

    #[test]
    fn filters_parse_and_round_trip() {
        let f = CacheFilter::parse("invalid <Nobody@example.com>", true).unwrap();
        assert_eq!(f.valid, Some(false));
        assert_eq!(
            f.to_line("cache-list"),
            "cache-list invalid Nobody@example.com"
        );
        assert!(CacheFilter::parse("valid", false).is_err());
        assert!(CacheFilter::parse("bogus", true).is_err());
        assert_eq!(
            CacheFilter::parse("", false).unwrap(),
            CacheFilter::default()
        );
    }

    #[test]
    fn list_shows_rfc3339_times_and_filters() {
        let c = cache();
        let now = 1_764_950_010;
        let all = list(&c, &CacheFilter::default(), now);
        assert!(all.starts_with("ok\nMETHOD  "), "{all}");
        assert!(
            all.contains(
                "callahead:example.com  invalid  2025-12-05T15:53:20Z  2025-12-05T16:53:20Z  nobody@example.com\n"
            ),
            "{all}"
        );
        assert!(all.ends_with("-- 4 entries shown; the cache holds 2 valid and 2 invalid\n"));
        let f = CacheFilter::parse("valid @EXAMPLE.com", true).unwrap();
        let one = list(&c, &f, now);
        assert!(
            one.contains("alice@example.com") && !one.contains("nobody"),
            "{one}"
        );
        assert!(one.ends_with("-- 1 entry shown; the cache holds 2 valid and 2 invalid\n"));
    }

    #[test]
    fn flush_one_address_a_domain_or_all() {
        let c = cache();
        let now = 1_764_950_010;
        let f = CacheFilter::parse("NOBODY@example.com", false).unwrap();
        assert_eq!(
            flush(&c, &f, now),
            "ok 1 entry removed for NOBODY@example.com\n"
        );
        assert_eq!(
            flush(&c, &f, now),
            "ok 0 entries removed for NOBODY@example.com\n"
        );
        let f = CacheFilter::parse("x@catch.example", false).unwrap();
        assert!(flush(&c, &f, now).contains("flush @catch.example to probe it again"));
        let f = CacheFilter::parse("@catch.example", false).unwrap();
        assert_eq!(
            flush(&c, &f, now),
            "ok 1 entry removed for @catch.example\n"
        );
        assert_eq!(
            flush(&c, &CacheFilter::default(), now),
            "ok 2 entries removed; the cache is empty\n"
        );
    }
}
