//! TLS-RPT de-duplication across gateways (`shared_state:` in `mxgate.yaml`,
//! docs/shared-state.md): before a node stores a report it claims the report's
//! de-duplication key ([`super::store::dedup_key`], digested) in the store with
//! `SET {key_prefix}tlsrpt:{digest} NODE NX PX` [`CLAIM_TTL`]; the node that wins stores the
//! report, the others answer that it was received before. A claim whose store failed is
//! released, so the sender's retry is not taken for a duplicate. While the store is down each
//! node de-duplicates its own store only, as without `shared_state:`.

use std::time::Duration;

use crate::shared_state::SharedState;

/// How long a claim lives. The report store keeps reports by count and size, not age; a
/// reporter re-sends a report within days (a retry, or one copy per `rua=` URI), so a month
/// covers every copy of one report while the store's keys stay bounded.
pub const CLAIM_TTL: Duration = Duration::from_secs(30 * 86_400);

/// The `counter` label of `mxgate_shared_state_fallbacks_total` for reports de-duplicated
/// without the store.
pub const FALLBACK_COUNTER: &str = "tlsrpt";

/// What claiming a report in the store said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This node claimed it first: store it.
    Won,
    /// Another node (or this one) claimed it before: a duplicate.
    Taken,
    /// The store did not answer: the local store alone decides.
    Unavailable,
}

/// The report claims in the shared store.
#[derive(Debug, Clone)]
pub struct SharedReports {
    state: SharedState,
}

impl SharedReports {
    /// The claims in `state`.
    pub fn new(state: SharedState) -> Self {
        SharedReports { state }
    }

    /// The store key of a de-duplication key: its SHA-256, as the store's file name.
    fn key(&self, dedup_key: &str) -> String {
        self.state
            .key("tlsrpt", &super::store::sha256_hex(dedup_key.as_bytes()))
    }

    /// Claims the report of `dedup_key` (one `SET NX`, bounded by `shared_state.timeout`).
    pub async fn claim(&self, dedup_key: &str) -> Claim {
        let k = self.key(dedup_key);
        let node = self.state.node_id().to_string();
        let ttl = u64::try_from(CLAIM_TTL.as_millis()).unwrap_or(u64::MAX);
        let r = self
            .state
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&node)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        match r {
            Ok(Some(_)) => Claim::Won,
            Ok(None) => Claim::Taken,
            Err(_) => {
                self.state.fallback(FALLBACK_COUNTER);
                Claim::Unavailable
            }
        }
    }

    /// Gives up a claim this node won but could not store, so the sender's retry (to any
    /// node) is stored.
    pub async fn release(&self, dedup_key: &str) {
        let k = self.key(dedup_key);
        let r = self
            .state
            .run(
                |mut c| async move { redis::cmd("DEL").arg(&k).query_async::<usize>(&mut c).await },
            )
            .await;
        if let Err(e) = r {
            tracing::warn!("tlsrpt: a claim in the shared store was not released: {e}");
        }
    }

    /// [`SharedReports::claim`] from a blocking thread (the intakes parse and store on
    /// `spawn_blocking`); `Unavailable` outside a runtime.
    pub fn claim_blocking(&self, dedup_key: &str) -> Claim {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.block_on(self.claim(dedup_key)),
            Err(_) => Claim::Unavailable,
        }
    }

    /// [`SharedReports::release`] from a blocking thread.
    pub fn release_blocking(&self, dedup_key: &str) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.block_on(self.release(dedup_key));
        }
    }
}
