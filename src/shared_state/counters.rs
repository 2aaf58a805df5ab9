//! The shared per-client counters, each one atomic server-side step (a Lua script, sent as
//! EVALSHA and loaded on NOSCRIPT): one round trip per decision. Keys are
//! `{prefix}rcpt:{ip}`, `{prefix}conn:{ip}` and `{prefix}dhap:{ip}`, where `ip` is the
//! client's counting key (IPv4 address, or its IPv6 network: `per_ip.ipv6_prefix`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::Script;

use super::{SharedError, SharedState};

/// One hour: the window of the per-hour counters, as for the local ones.
const HOUR_SECONDS: u64 = 3600;

/// How long a connection lease lives without a refresh: a node that dies frees its
/// clients' slots within this.
pub const LEASE: Duration = Duration::from_secs(60);

/// Recipients per hour: INCR; the first sets the hour; past `max` the increment is taken
/// back and the answer is 0 (spent), else 1 (taken).
static TAKE_RECIPIENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
if n < 1 then
  -- A negative count (written by someone else) would be a budget without end.
  redis.call('SET', KEYS[1], 1)
  n = 1
end
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return 1
",
    )
});

/// Concurrent connections: a sorted set of leases (member `node:connection`, score = expiry
/// in ms of the server's clock); expired leases are dropped, then a slot is taken unless
/// `max` are held (`-1`: unlimited, nothing taken). Also answers the client's invalid-recipient count (`KEYS[2]`), so a
/// harvester moving to another node is known there at once. Returns `{taken, dhap}`.
static TAKE_CONNECTION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- A value that is not a count (written by someone else) counts as none, and an invalid
-- count without an expiry gets the hour it should have had.
local dhap = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if dhap < 0 then dhap = 0 end
if dhap > 0 and redis.call('TTL', KEYS[2]) == -1 then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
dhap = math.floor(dhap)
if tonumber(ARGV[1]) < 0 then
  return {1, dhap}
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return {0, dhap}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, dhap}
",
    )
});

/// Refreshes this node's leases: `KEYS[i]` holds member `ARGV[i+1]`. A lease the store lost
/// (an outage longer than the lease, a restarted store) is added back: its session is open.
static REFRESH_LEASES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease)
end
return #KEYS
",
    )
});

/// Invalid recipients per hour (harvest): INCR, the first sets the hour; returns the count.
static COUNT_INVALID: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
if n < 1 then
  redis.call('SET', KEYS[1], 1)
  n = 1
end
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
",
    )
});

/// The shared store's answer to taking one recipient of a client's hourly budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HourlyAnswer {
    /// One recipient was taken from the budget.
    Taken,
    /// The budget is spent.
    Spent,
    /// The store did not answer in time (or is down).
    Unavailable,
}

/// Takes one recipient from `ip`'s hourly budget of `max` across every node: `true` taken,
/// `false` spent.
pub async fn take_recipient(s: &SharedState, ip: &str, max: u64) -> Result<bool, SharedError> {
    let key = s.key("rcpt", ip);
    s.run(|mut c| async move {
        TAKE_RECIPIENT
            .key(key)
            .arg(max)
            .arg(HOUR_SECONDS)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|n| n == 1)
    })
    .await
}

/// Counts one invalid recipient of `ip` across every node; returns the count this hour.
pub async fn count_invalid(s: &SharedState, ip: &str) -> Result<u64, SharedError> {
    let key = s.key("dhap", ip);
    s.run(|mut c| async move {
        COUNT_INVALID
            .key(key)
            .arg(HOUR_SECONDS)
            .invoke_async::<u64>(&mut c)
            .await
    })
    .await
}

/// The answer of [`take_connection`].
#[derive(Debug)]
pub struct ConnectionAnswer {
    /// The slot, held until dropped; `None` when `max` are already held.
    pub lease: Option<Lease>,
    /// The client's invalid recipients this hour, across every node.
    pub invalid: u64,
}

/// Takes a connection slot of `ip` under `max` across every node (`None`: unlimited, no
/// slot is taken; only the harvest count is read).
pub async fn take_connection(
    s: &SharedState,
    ip: &str,
    max: Option<u64>,
) -> Result<ConnectionAnswer, SharedError> {
    let max_arg = max.map_or(-1, |m| i64::try_from(m).unwrap_or(i64::MAX));
    let key = s.key("conn", ip);
    let dhap = s.key("dhap", ip);
    let id = s.inner.leases.next.fetch_add(1, Ordering::Relaxed);
    let member = format!("{}:{id}", s.node_id());
    let (k, m) = (key.clone(), member.clone());
    let answer = s
        .run(|mut c| async move {
            TAKE_CONNECTION
                .key(k)
                .key(dhap)
                .arg(max_arg)
                .arg(LEASE.as_millis() as u64)
                .arg(m)
                .arg(HOUR_SECONDS)
                .invoke_async::<(i64, u64)>(&mut c)
                .await
        })
        .await;
    let (taken, invalid) = match answer {
        Ok(a) => a,
        // The script may still run once the store wakes up: the slot it would take is
        // owned by nobody, so it is given back as soon as the store answers again.
        Err(e @ (SharedError::Timeout(_) | SharedError::Store(_))) => {
            s.inner
                .leases
                .orphans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((key, member, std::time::Instant::now()));
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let lease = (taken == 1 && max.is_some()).then(|| {
        s.inner
            .leases
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (key.clone(), member.clone()));
        Lease {
            state: s.clone(),
            id,
            key,
            member,
        }
    });
    Ok(ConnectionAnswer { lease, invalid })
}

/// This node's open leases, refreshed together every `LEASE / 3`.
#[derive(Debug, Default)]
pub(super) struct Leases {
    next: AtomicU64,
    /// Lease id -> (key, member).
    open: Mutex<HashMap<u64, (String, String)>>,
    /// Slots asked for without an answer (key, member, when): removed again while the
    /// store answers, for as long as such a slot could live.
    orphans: Mutex<Vec<(String, String, std::time::Instant)>>,
}

/// Gives back the slots of connection scripts that got no answer (see [`take_connection`]);
/// the probe calls this while the store is up. Each is removed again until a lease could
/// have expired, since the script may run late.
pub(super) async fn release_orphans(s: &SharedState) {
    let pending: Vec<(String, String)> = {
        let mut o = s
            .inner
            .leases
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        o.retain(|(_, _, at)| at.elapsed() < LEASE);
        o.iter().map(|(k, m, _)| (k.clone(), m.clone())).collect()
    };
    if pending.is_empty() {
        return;
    }
    let _ = s
        .run_within(Duration::from_secs(1), |mut c| async move {
            let mut pipe = redis::pipe();
            for (key, member) in &pending {
                pipe.cmd("ZREM").arg(key).arg(member).ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await;
}

/// A connection slot held in the store; given back (ZREM, not awaited) when dropped.
#[derive(Debug)]
pub struct Lease {
    state: SharedState,
    id: u64,
    key: String,
    member: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state
            .inner
            .leases
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = self.state.clone();
        let (key, member) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        // Off the reply path: a slow store may take a second; an unanswered ZREM is
        // repaired by the lease's expiry.
        rt.spawn(async move {
            let _ = state
                .run_within(Duration::from_secs(1), |mut c| async move {
                    redis::cmd("ZREM")
                        .arg(key)
                        .arg(member)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
        });
    }
}

/// Every `LEASE / 3`, extends this node's open leases with one script call.
pub(super) async fn refresh_leases(
    inner: std::sync::Weak<super::Inner>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEASE / 3) => {}
            _ = stop.changed() => return,
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let state = SharedState { inner: strong };
        let open: Vec<(String, String)> = state
            .inner
            .leases
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        if open.is_empty() || !state.is_up() {
            continue;
        }
        let _ = refresh(&state, open).await;
    }
}

async fn refresh(s: &SharedState, open: Vec<(String, String)>) -> Result<i64, SharedError> {
    let s2 = Arc::new(open);
    s.run_within(Duration::from_secs(5), |mut c| async move {
        let mut inv = REFRESH_LEASES.prepare_invoke();
        inv.arg(LEASE.as_millis() as u64);
        for (key, member) in s2.iter() {
            inv.key(key).arg(member);
        }
        inv.invoke_async::<i64>(&mut c).await
    })
    .await
}
