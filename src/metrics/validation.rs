//! Recipient-validation metrics: lookups by result, lookup latency, cache size and open
//! breakers. Labels come from the configuration (listener, method, destination id) and
//! typed verdicts, never from addresses.

use crate::validate::destination::{Checked, Source};

/// Counter: validation answers by listener, method and result (`valid`, `invalid`,
/// `tempfail`, `cache_hit`).
pub(crate) const RECIPIENT_VALIDATION: &str = "mxgate_recipient_validation_total";
/// Histogram: seconds a lookup that asked the directory took (cache hits excluded).
pub(crate) const VALIDATION_SECONDS: &str = "mxgate_recipient_validation_seconds";
/// Gauge: verdict cache entries by verdict.
pub(crate) const VALIDATION_CACHE_ENTRIES: &str = "mxgate_recipient_validation_cache_entries";
/// Gauge: 1 while a destination's circuit breaker is open.
pub(crate) const VALIDATION_BREAKER_OPEN: &str = "mxgate_recipient_validation_breaker_open";

/// Counter: answers taken from the verdict cache, by where the entry came from: `local`
/// (this node's cache) or `shared` (another gateway's answer, from the `shared_state:` store).
pub(crate) const VALIDATION_CACHE_HITS: &str = "mxgate_recipient_validation_cache_hits_total";

/// Counter: times a destination's circuit breaker opened (again).
pub(crate) const VALIDATION_BREAKER_TRIPS: &str = "mxgate_recipient_validation_breaker_trips_total";

/// Lookup latency buckets: a cache hit is microseconds, a probe milliseconds, a timeout 10 s.
pub(crate) const VALIDATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Describes the validation metrics.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        RECIPIENT_VALIDATION,
        "Recipient validation answers by method and result"
    );
    describe_histogram!(
        VALIDATION_SECONDS,
        Unit::Seconds,
        "Recipient validation lookups that asked the directory"
    );
    describe_gauge!(
        VALIDATION_CACHE_ENTRIES,
        "Recipient validation cache entries"
    );
    describe_counter!(
        VALIDATION_CACHE_HITS,
        "Recipient validation answers taken from the verdict cache, by origin (local, shared)"
    );
    describe_counter!(
        VALIDATION_BREAKER_TRIPS,
        "Times a validation destination's circuit breaker opened"
    );
    describe_gauge!(
        VALIDATION_BREAKER_OPEN,
        "1 while a validation destination's circuit breaker is open"
    );
}

/// Counts one validation answer (and its latency when the directory was asked).
pub(crate) fn observe(listener: &str, method: &'static str, c: &Checked, seconds: f64) {
    let result = match c.source {
        Source::Cache { .. } => "cache_hit",
        Source::Lookup | Source::Breaker => c.answer.verdict.label(),
    };
    metrics::counter!(RECIPIENT_VALIDATION, "listener" => listener.to_string(),
        "method" => method, "result" => result)
    .increment(1);
    if c.source == Source::Lookup && method != "list" {
        metrics::histogram!(VALIDATION_SECONDS, "method" => method).record(seconds);
    }
}

/// Counts one answer taken from the cache; `from` is `local` or `shared`.
pub(crate) fn cache_hit(from: &'static str) {
    metrics::counter!(VALIDATION_CACHE_HITS, "from" => from).increment(1);
}

/// Sets the cache gauge.
pub(crate) fn set_cache_entries(valid: usize, invalid: usize) {
    metrics::gauge!(VALIDATION_CACHE_ENTRIES, "verdict" => "valid").set(valid as f64);
    metrics::gauge!(VALIDATION_CACHE_ENTRIES, "verdict" => "invalid").set(invalid as f64);
}

/// A destination's breaker changed state: its gauge, and the trips counter when it opened.
pub(crate) fn breaker(destination: &str, t: crate::validate::breaker::Transition) {
    use crate::validate::breaker::Transition;
    let open = !matches!(t, Transition::Closed);
    metrics::gauge!(VALIDATION_BREAKER_OPEN, "destination" => destination.to_string())
        .set(if open { 1.0 } else { 0.0 });
    if open {
        metrics::counter!(VALIDATION_BREAKER_TRIPS, "destination" => destination.to_string())
            .increment(1);
    }
}
