//! Shared-state metrics (`shared_state:` in `mxgate.yaml`, docs/shared-state.md).

/// Gauge: `1` while the Redis/Valkey store answers, `0` while this node counts locally (or
/// tempfails) because it does not. Absent without `shared_state:`.
pub(crate) const SHARED_STATE_UP: &str = "mxgate_shared_state_up";
/// Decisions taken without the store, `{counter}` with counter `connections`,
/// `recipients_per_hour`, `harvest` (and the users built on the module).
pub(crate) const SHARED_STATE_FALLBACKS: &str = "mxgate_shared_state_fallbacks_total";

/// Describes the shared-state metrics.
pub(crate) fn describe() {
    metrics::describe_gauge!(
        SHARED_STATE_UP,
        "1 while the shared-state store (Redis/Valkey) answers, 0 while counting falls back"
    );
    metrics::describe_counter!(
        SHARED_STATE_FALLBACKS,
        "Decisions taken without the shared-state store, by counter"
    );
}

/// Sets the up gauge.
pub(crate) fn up(up: bool) {
    metrics::gauge!(SHARED_STATE_UP).set(if up { 1.0 } else { 0.0 });
}

/// Counts one decision taken without the store.
pub(crate) fn fallback(counter: &'static str) {
    metrics::counter!(SHARED_STATE_FALLBACKS, "counter" => counter).increment(1);
}
