//! The verdict cache: valid and invalid answers of the lookup methods, with separate TTLs,
//! a size cap and unix-second timestamps passed in (so tests never sleep). Tempfails are
//! never stored.
//!
//! Eviction keeps the valid set: invalid entries may fill at most `max_invalid_share` percent
//! of the cap, so a dictionary attack (thousands of invalid addresses) only churns its own
//! share. When full: expired entries go first (one sweep per shard and second at most), then
//! the least recently hit of a small sample, invalid ones before valid ones.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use super::verdict::Verdict;

/// Cache settings (`cache:` of `policies/validation.yaml`); durations in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Entries kept at most.
    pub max_entries: usize,
    /// Lifetime of a valid entry (7 days).
    pub valid_ttl: u64,
    /// Age after which a hit on a valid entry asks for a background refresh (1 day).
    pub valid_refresh: u64,
    /// Lifetime of an invalid entry (1 hour; no refresh: new hires must not wait days).
    pub invalid_ttl: u64,
    /// Percent of `max_entries` invalid entries may use (25).
    pub max_invalid_share: u8,
    /// Keep the local part's case in the key (default false: the internal servers fold it,
    /// and case variants must not bypass the cache).
    pub case_sensitive_local: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 200_000,
            valid_ttl: 7 * 86_400,
            valid_refresh: 86_400,
            invalid_ttl: 3_600,
            max_invalid_share: 25,
            case_sensitive_local: false,
        }
    }
}

/// A cache key: `<method-id>\t<address>`, method id `callahead:<route domain>` or
/// `ldap:<NAME>`; the address's domain lower-cased (and its local part unless
/// `case_sensitive_local`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of `address` looked up by `method`.
    pub fn new(method: &str, address: &str, case_sensitive_local: bool) -> Self {
        let (local, domain) = match address.rfind('@') {
            Some(i) => (&address[..i], &address[i + 1..]),
            None => (address, ""),
        };
        // ASCII only: Unicode folding would make a different mailbox (`o\u{212A}elly`, with
        // the Kelvin sign) share the key of a real one (`okelly`), so one probe of the first
        // could poison the cache for the second.
        let local = if case_sensitive_local {
            local.to_string()
        } else {
            local.to_ascii_lowercase()
        };
        let at = if address.contains('@') { "@" } else { "" };
        CacheKey(format!(
            "{method}\t{local}{at}{}",
            domain.to_ascii_lowercase()
        ))
    }

    /// A key from its text form (the persistence file), when it has the two parts.
    pub fn from_text(text: &str) -> Option<Self> {
        let (m, a) = text.split_once('\t')?;
        (!m.is_empty() && !a.is_empty() && !a.contains(['\t', '\n', '\r']))
            .then(|| CacheKey(text.to_string()))
    }

    /// The method id part.
    pub fn method(&self) -> &str {
        self.0.split_once('\t').map_or("", |(m, _)| m)
    }

    /// The address part.
    pub fn address(&self) -> &str {
        self.0.split_once('\t').map_or("", |(_, a)| a)
    }

    /// The text form (`method\taddress`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One cached answer; times in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Valid (true) or invalid.
    pub valid: bool,
    /// When the answer was obtained.
    pub stored: u64,
    /// When it stops counting.
    pub expires: u64,
    /// Last hit (or store), for eviction.
    pub last_hit: u64,
}

/// A cache hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// [`Verdict::Valid`] or [`Verdict::Invalid`].
    pub verdict: Verdict,
    /// When the answer was obtained (the log says "cached since").
    pub stored: u64,
    /// When it expires.
    pub expires: u64,
    /// A valid entry older than `valid_refresh`: refresh it in the background (the answer
    /// stands meanwhile). Never set for invalid entries.
    pub refresh_due: bool,
}

/// Entries sampled to choose an eviction victim.
const SAMPLE: usize = 16;
/// Caches smaller than this use one shard, so the caps are exact.
const SHARDED_FROM: usize = 1024;
/// Shards of a large cache (lock contention between sessions).
const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<CacheKey, Entry>,
    invalid: usize,
    last_sweep: u64,
}

impl Shard {
    fn remove(&mut self, key: &CacheKey) -> Option<Entry> {
        let e = self.map.remove(key)?;
        if !e.valid {
            self.invalid -= 1;
        }
        Some(e)
    }

    /// Drops expired entries, at most once per second.
    fn sweep(&mut self, now: u64) {
        if self.last_sweep == now {
            return;
        }
        self.last_sweep = now;
        self.map.retain(|_, e| e.expires > now);
        self.invalid = self.map.values().filter(|e| !e.valid).count();
    }

    /// The least recently hit of a sample of entries (of `valid` kind when given).
    fn victim(&self, valid: Option<bool>) -> Option<CacheKey> {
        // HashMap order follows the keys' hashes: its first entries are a fair sample.
        self.map
            .iter()
            .filter(|(_, e)| valid.is_none_or(|v| e.valid == v))
            .take(SAMPLE)
            .min_by_key(|(_, e)| (e.valid, e.last_hit))
            .map(|(k, _)| k.clone())
    }
}

/// The verdict cache, shared by every session (interior locking).
#[derive(Debug)]
pub struct VerdictCache {
    settings: CacheSettings,
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    shard_cap: usize,
    shard_invalid_cap: usize,
}

impl VerdictCache {
    /// An empty cache.
    pub fn new(settings: CacheSettings) -> Self {
        let n = if settings.max_entries < SHARDED_FROM {
            1
        } else {
            SHARDS
        };
        let shard_cap = settings.max_entries.div_ceil(n).max(1);
        let share = usize::from(settings.max_invalid_share.min(100));
        let shard_invalid_cap = (shard_cap * share / 100).max(1);
        VerdictCache {
            settings,
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            shard_cap,
            shard_invalid_cap,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The key of `address` for `method`, with this cache's case rule.
    pub fn key(&self, method: &str, address: &str) -> CacheKey {
        CacheKey::new(method, address, self.settings.case_sensitive_local)
    }

    fn shard(&self, key: &CacheKey) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        lock(&self.shards[i])
    }

    /// The cached answer for `key` at `now`, if any (an expired entry is dropped).
    pub fn get(&self, key: &CacheKey, now: u64) -> Option<Hit> {
        let mut shard = self.shard(key);
        let e = shard.map.get_mut(key)?;
        if e.expires <= now {
            shard.remove(key);
            return None;
        }
        e.last_hit = now;
        Some(Hit {
            verdict: if e.valid {
                Verdict::Valid
            } else {
                Verdict::Invalid
            },
            stored: e.stored,
            expires: e.expires,
            refresh_due: e.valid && now >= e.stored.saturating_add(self.settings.valid_refresh),
        })
    }

    /// The entry of `key` as stored, when it has not expired at `now` (a hit is not
    /// recorded).
    pub fn entry(&self, key: &CacheKey, now: u64) -> Option<Entry> {
        self.shard(key)
            .map
            .get(key)
            .filter(|e| e.expires > now)
            .copied()
    }

    /// Stores a fresh answer obtained at `now`. A tempfail is not stored (returns false).
    pub fn insert(&self, key: CacheKey, verdict: Verdict, now: u64) -> bool {
        let (valid, ttl) = match verdict {
            Verdict::Valid => (true, self.settings.valid_ttl),
            Verdict::Invalid => (false, self.settings.invalid_ttl),
            Verdict::TempFail(_) => return false,
        };
        self.insert_entry(
            key,
            Entry {
                valid,
                stored: now,
                expires: now.saturating_add(ttl),
                last_hit: now,
            },
            now,
        );
        true
    }

    /// Stores an entry as it is (loading the persisted cache); expired ones are ignored.
    pub fn insert_entry(&self, key: CacheKey, entry: Entry, now: u64) {
        if entry.expires <= now {
            return;
        }
        let mut shard = self.shard(&key);
        shard.remove(&key);
        if shard.map.len() >= self.shard_cap
            || (!entry.valid && shard.invalid >= self.shard_invalid_cap)
        {
            shard.sweep(now);
        }
        // Invalid entries over their share make room among themselves.
        if !entry.valid && shard.invalid >= self.shard_invalid_cap {
            if let Some(k) = shard.victim(Some(false)) {
                shard.remove(&k);
            }
        }
        if shard.map.len() >= self.shard_cap {
            // A new invalid entry never displaces a valid one while invalid ones are there.
            let kind = (!entry.valid && shard.invalid > 0).then_some(false);
            if let Some(k) = shard.victim(kind) {
                shard.remove(&k);
            }
        }
        if !entry.valid {
            shard.invalid += 1;
        }
        shard.map.insert(key, entry);
    }

    /// Forgets one key; true when it was cached.
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.shard(key).remove(key).is_some()
    }

    /// Forgets every entry whose address is `address` (any method); returns how many.
    pub fn remove_address(&self, address: &str) -> usize {
        let mut n = 0;
        for s in &self.shards {
            let mut s = lock(s);
            let keys: Vec<CacheKey> = s
                .map
                .keys()
                .filter(|k| k.address().eq_ignore_ascii_case(address))
                .cloned()
                .collect();
            for k in keys {
                s.remove(&k);
                n += 1;
            }
        }
        n
    }

    /// Forgets everything; returns how many entries there were.
    pub fn clear(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut s = lock(s);
                let n = s.map.len();
                *s = Shard::default();
                n
            })
            .sum()
    }

    /// Entries held (valid, invalid), expired ones included until swept: the gauge.
    pub fn counts(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(v, i), s| {
            let s = lock(s);
            (v + s.map.len() - s.invalid, i + s.invalid)
        })
    }

    /// Every unexpired entry at `now`, sorted by key (for persistence and `cache list`).
    pub fn entries(&self, now: u64) -> Vec<(CacheKey, Entry)> {
        let mut all: Vec<(CacheKey, Entry)> = self
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .map
                    .iter()
                    .filter(|(_, e)| e.expires > now)
                    .map(|(k, e)| (k.clone(), *e))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Locks a shard; a panic while holding it leaves consistent data (every update is a
/// single map operation plus a counter), so poisoning is ignored.
fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::verdict::TempFailCause;

    const M: &str = "callahead:example.com";

    fn small(max: usize) -> VerdictCache {
        VerdictCache::new(CacheSettings {
            max_entries: max,
            valid_ttl: 1000,
            valid_refresh: 100,
            invalid_ttl: 50,
            ..CacheSettings::default()
        })
    }

    #[test]
    fn keys_fold_case_unless_asked() {
        let k = CacheKey::new(M, "Alice@Example.COM", false);
        assert_eq!(k.as_str(), "callahead:example.com\talice@example.com");
        assert_eq!((k.method(), k.address()), (M, "alice@example.com"));
        let k = CacheKey::new(M, "Alice@Example.COM", true);
        assert_eq!(k.address(), "Alice@example.com");
        assert_eq!(CacheKey::from_text("a\tb@c").unwrap().address(), "b@c");
        assert!(CacheKey::from_text("no-tab").is_none());
        assert!(CacheKey::from_text("a\tb\tc").is_none());
        // A Unicode look-alike (the Kelvin sign folds to `k`) keeps a key of its own.
        let kelvin = CacheKey::new(M, "o\u{212A}elly@example.com", false);
        assert_ne!(kelvin, CacheKey::new(M, "okelly@example.com", false));
        assert_eq!(kelvin.address(), "o\u{212A}elly@example.com");
    }

    #[test]
    fn valid_and_invalid_have_their_own_ttl_and_refresh() {
        let c = small(100);
        let good = c.key(M, "alice@example.com");
        let bad = c.key(M, "nobody@example.com");
        assert!(c.insert(good.clone(), Verdict::Valid, 10));
        assert!(c.insert(bad.clone(), Verdict::Invalid, 10));
        let h = c.get(&good, 20).unwrap();
        assert_eq!(
            (h.verdict, h.stored, h.refresh_due),
            (Verdict::Valid, 10, false)
        );
        // Case variants hit the same entry.
        assert!(c.get(&c.key(M, "ALICE@example.com"), 20).is_some());
        assert!(c.get(&good, 110).unwrap().refresh_due);
        assert_eq!(c.get(&bad, 59).unwrap().verdict, Verdict::Invalid);
        assert!(!c.get(&bad, 59).unwrap().refresh_due);
        assert_eq!(c.get(&bad, 60), None, "invalid expires after 50 s");
        assert!(c.get(&good, 1009).is_some());
        assert_eq!(c.get(&good, 1010), None, "valid expires after 1000 s");
        assert_eq!(c.counts(), (0, 0));
    }

    #[test]
    fn tempfails_are_never_stored() {
        let c = small(100);
        let k = c.key(M, "bob@example.com");
        assert!(!c.insert(k.clone(), Verdict::TempFail(TempFailCause::Timeout), 1));
        assert_eq!(c.get(&k, 1), None);
        assert_eq!(c.counts(), (0, 0));
    }

    #[test]
    fn an_invalid_flood_does_not_evict_valid_entries() {
        let c = small(100);
        for i in 0..80 {
            c.insert(c.key(M, &format!("user{i}@example.com")), Verdict::Valid, 1);
        }
        for i in 0..10_000 {
            c.insert(c.key(M, &format!("x{i}@example.com")), Verdict::Invalid, 2);
        }
        let (valid, invalid) = c.counts();
        assert_eq!((valid, invalid), (80, 20), "25% of 100 for invalid entries");
        for i in 0..80 {
            assert!(c
                .get(&c.key(M, &format!("user{i}@example.com")), 3)
                .is_some());
        }
        // The newest invalid entry is there.
        assert!(c.get(&c.key(M, "x9999@example.com"), 3).is_some());
    }

    #[test]
    fn when_full_expired_then_least_recently_hit_go_first() {
        let c = small(10);
        for i in 0..10 {
            c.insert(c.key(M, &format!("u{i}@example.com")), Verdict::Valid, 1);
        }
        // Everyone but u3 is hit later.
        for i in (0..10).filter(|&i| i != 3) {
            c.get(&c.key(M, &format!("u{i}@example.com")), 5);
        }
        c.insert(c.key(M, "new@example.com"), Verdict::Valid, 6);
        assert_eq!(c.counts(), (10, 0));
        assert_eq!(
            c.get(&c.key(M, "u3@example.com"), 7),
            None,
            "u3 was evicted"
        );
        assert!(c.get(&c.key(M, "new@example.com"), 7).is_some());
        // Expired entries make room before any live one is evicted.
        let c = small(10);
        c.insert(c.key(M, "old@example.com"), Verdict::Invalid, 1);
        for i in 0..9 {
            c.insert(c.key(M, &format!("u{i}@example.com")), Verdict::Valid, 100);
        }
        c.insert(c.key(M, "new@example.com"), Verdict::Valid, 100);
        assert_eq!(c.counts(), (10, 0));
        for i in 0..9 {
            assert!(c
                .get(&c.key(M, &format!("u{i}@example.com")), 100)
                .is_some());
        }
    }

    #[test]
    fn a_large_cache_keeps_its_cap() {
        let c = VerdictCache::new(CacheSettings {
            max_entries: 2000,
            ..CacheSettings::default()
        });
        for i in 0..5000 {
            c.insert(c.key(M, &format!("u{i}@example.com")), Verdict::Valid, 1);
        }
        let (v, i) = c.counts();
        assert!(v + i <= 2000 && v + i > 1900, "{v} {i}");
    }

    #[test]
    fn flush_one_address_or_all() {
        let c = small(100);
        c.insert(c.key(M, "a@example.com"), Verdict::Valid, 1);
        c.insert(c.key("ldap:corp", "a@example.com"), Verdict::Invalid, 1);
        c.insert(c.key(M, "b@example.com"), Verdict::Valid, 1);
        assert_eq!(c.remove_address("A@example.com"), 2);
        assert_eq!(c.entries(2).len(), 1);
        assert!(c.remove(&c.key(M, "b@example.com")));
        c.insert(c.key(M, "b@example.com"), Verdict::Valid, 1);
        assert_eq!(c.clear(), 1);
        assert_eq!(c.counts(), (0, 0));
    }
}
