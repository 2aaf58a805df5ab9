//! Prometheus metrics: every name in one place, the recorder, and the HTTP endpoint
//! (`/metrics`, `/health`, `/ready`). Label values come from configuration (listener, sender
//! group, policy, destination domain), never from a client address or a message.
//! What `/ready` checks (start-up, spool free space, failed spool writes) lives in the
//! `ready` submodule and is re-exported here.

pub(crate) mod config_info;
pub(crate) mod dane;
mod ready;
pub(crate) mod sender_auth;
pub mod sender_org;
pub(crate) mod shared_state;
pub(crate) mod tlsrpt;
pub(crate) mod validation;

pub(crate) use ready::spool_write_failed;
pub use ready::{free_space, FreeSpace, Readiness, SPOOL_MIN_FREE_BYTES};

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Inbound TLS outcome per connection:
/// `{listener, sender_group, sender_org, tls_version, policy, outcome, client_cert}` with
/// outcome `success`, `handshake_failed`, `plaintext`, `required_refused`, `not_offered`,
/// client_cert `verified`, `missing`, `failed`, `not_requested`, tls_version `TLSv1.2`,
/// `TLSv1.3` or `none` ([`tls_version_label`]), sender_org from [`sender_org::SenderOrgs`].
pub(crate) const INBOUND_TLS: &str = "mxgate_inbound_tls_total";
/// Negotiated inbound TLS sessions: `{listener, sender_org, protocol, cipher}`.
pub(crate) const INBOUND_TLS_SESSIONS: &str = "mxgate_inbound_tls_sessions_total";
/// Inbound TLS handshake duration histogram (seconds): `{listener}`.
pub(crate) const TLS_HANDSHAKE_SECONDS: &str = "mxgate_tls_handshake_seconds";
/// Connections by HAT action: `{listener, sender_group, sender_org, action}`.
pub(crate) const CONNECTIONS: &str = "mxgate_connections_total";
/// Open inbound connections: `{listener}`.
pub(crate) const CONNECTIONS_ACTIVE: &str = "mxgate_connections_active";
/// Messages accepted and queued: `{listener, sender_group}`.
pub(crate) const MESSAGES_ACCEPTED: &str = "mxgate_messages_accepted_total";
/// Messages refused at MAIL FROM or after DATA: `{listener, reason}` (tls_required, client_cert,
/// size, limit, data_syntax, spool, aborted).
pub(crate) const MESSAGES_REJECTED: &str = "mxgate_messages_rejected_total";
/// Recipients refused: `{listener, reason}` (rat, relay_attempt, limit, dhap).
pub(crate) const RECIPIENTS_REJECTED: &str = "mxgate_recipients_rejected_total";
/// Connections dropped by Directory Harvest Attack Prevention (`max_invalid_recipients_per_hour`
/// passed): `{listener, sender_group}`.
pub(crate) const DHAP_DROPS: &str = "mxgate_dhap_drops_total";
/// Recipients accepted: `{listener, sender_group}`.
pub(crate) const RECIPIENTS_ACCEPTED: &str = "mxgate_recipients_accepted_total";
/// Message bytes received (as stored, before our `Received:` header): `{listener}`.
pub(crate) const BYTES_RECEIVED: &str = "mxgate_bytes_received_total";
/// Outbound TLS outcome per delivery connection: `{destination, mode, outcome}` with outcome
/// `success`, `verified`, `not_verified`, `fell_back_plaintext`, `failed`, `not_offered`, `not_attempted`.
pub(crate) const OUTBOUND_TLS: &str = "mxgate_outbound_tls_total";
/// Delivery attempts per recipient: `{destination, result}` (delivered, deferred, bounced).
pub(crate) const DELIVERY_ATTEMPTS: &str = "mxgate_delivery_attempts_total";
/// Required-TLS destinations that could not negotiate or verify TLS: `{destination}`.
pub(crate) const REQUIRED_TLS_FAILURES: &str = "mxgate_required_tls_failures_total";
/// Messages in the queue.
pub(crate) const QUEUE_MESSAGES: &str = "mxgate_queue_messages";
/// Age of the oldest queued message (seconds).
pub(crate) const QUEUE_OLDEST_AGE_SECONDS: &str = "mxgate_queue_oldest_age_seconds";
/// Listener certificate expiry (Unix seconds): `{listener}`.
pub(crate) const CERTIFICATE_EXPIRY: &str = "mxgate_certificate_expiry_timestamp_seconds";
/// Configuration reloads: `{result}` (success, failure).
pub(crate) const CONFIG_RELOADS: &str = "mxgate_config_reloads_total";
/// DNS block-list lookups: `{zone, result}` with result `listed`, `not_listed` or `error`
/// (timeout, server failure, or only a list error code such as 127.255.255.254).
pub(crate) const DNSBL_LOOKUPS: &str = "mxgate_dnsbl_lookups_total";
/// Connections closed because of the PROXY protocol: `{listener, reason}` with reason
/// `untrusted_source`, `timeout`, `closed`, `malformed`, `io_error`.
pub(crate) const PROXY_REFUSED: &str = "mxgate_proxy_refused_total";
/// Reverse-DNS (FCrDNS) results per connection, as RFC 8601 `iprev` names them:
/// `{listener, result}` with result `pass`, `fail` (PTR names do not resolve back),
/// `temperror` (lookup failed or timed out), `permerror` (no PTR).
pub(crate) const REVERSE_DNS: &str = "mxgate_reverse_dns_total";
/// Build information, value 1: `{version}`.
pub(crate) const BUILD_INFO: &str = "mxgate_build_info";

/// Handshake histogram buckets: most handshakes take a few milliseconds on loopback.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Errors starting metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be installed.
    #[error("metrics recorder: {0}")]
    Recorder(String),
    /// The endpoint could not be bound.
    #[error("metrics endpoint {addr}: {cause}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause (in the message, not a `source`: `mxgate: {e:#}` would print it twice).
        cause: std::io::Error,
    },
}

/// Installs the global Prometheus recorder once; later calls return the same handle.
pub fn recorder() -> Result<PrometheusHandle, MetricsError> {
    // A lock, not a check-then-install: two servers starting at once (tests) must not both
    // try to install, and the loser must get the winner's handle.
    static HANDLE: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut slot = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(TLS_HANDSHAKE_SECONDS.into()),
            HANDSHAKE_BUCKETS,
        )
        .map_err(|e| MetricsError::Recorder(e.to_string()))?
        .set_buckets_for_metric(
            Matcher::Full(validation::VALIDATION_SECONDS.into()),
            validation::VALIDATION_BUCKETS,
        )
        .map_err(|e| MetricsError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    *slot = Some(handle.clone());
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(INBOUND_TLS, "Inbound TLS outcome per connection");
    describe_counter!(
        INBOUND_TLS_SESSIONS,
        "Inbound TLS sessions by protocol and cipher"
    );
    describe_histogram!(
        TLS_HANDSHAKE_SECONDS,
        Unit::Seconds,
        "Inbound TLS handshake duration"
    );
    describe_counter!(CONNECTIONS, "Inbound connections by HAT action");
    describe_gauge!(CONNECTIONS_ACTIVE, "Open inbound connections");
    describe_counter!(MESSAGES_ACCEPTED, "Messages accepted and queued");
    describe_counter!(MESSAGES_REJECTED, "Messages refused at or after DATA");
    describe_counter!(RECIPIENTS_REJECTED, "Recipients refused");
    describe_counter!(RECIPIENTS_ACCEPTED, "Recipients accepted");
    describe_counter!(
        DHAP_DROPS,
        "Connections dropped by Directory Harvest Attack Prevention"
    );
    describe_counter!(BYTES_RECEIVED, Unit::Bytes, "Message bytes received");
    describe_counter!(OUTBOUND_TLS, "Outbound TLS outcome per delivery connection");
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "Delivery attempts per recipient by result"
    );
    describe_counter!(
        REQUIRED_TLS_FAILURES,
        "Required-TLS destinations that failed TLS"
    );
    describe_gauge!(QUEUE_MESSAGES, "Messages in the queue");
    describe_gauge!(
        QUEUE_OLDEST_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest queued message"
    );
    describe_gauge!(
        CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "Listener certificate expiry time"
    );
    describe_counter!(CONFIG_RELOADS, "Configuration reloads by result");
    describe_counter!(DNSBL_LOOKUPS, "DNS block-list lookups by zone and result");
    describe_counter!(
        PROXY_REFUSED,
        "Connections closed because of the PROXY protocol, by reason"
    );
    describe_counter!(REVERSE_DNS, "Reverse-DNS (iprev) results per connection");
    describe_gauge!(BUILD_INFO, "Build information");
    validation::describe();
    sender_auth::describe();
    tlsrpt::describe();
    dane::describe();
    shared_state::describe();
}

/// How long a response of the metrics endpoint may take to write.
const RESPONSE_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the endpoint now (so a bad address fails start-up) and serves it in the background.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    ready: Arc<Readiness>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|cause| MetricsError::Bind { addr, cause })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let handle = handle.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                // A request may arrive in several segments: read up to the end of its headers.
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    let mut chunk = [0u8; 1024];
                    match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                        Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let n = buf.len();
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                let (status, ctype, body) = match path {
                    "/metrics" => {
                        handle.run_upkeep();
                        let mut text = handle.render();
                        text.push_str(&config_info::render());
                        ("200 OK", "text/plain; version=0.0.4", text)
                    }
                    "/health" => ("200 OK", "text/plain", "ok\n".to_string()),
                    "/ready" => match ready.check() {
                        Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
                        Err(reason) => (
                            "503 Service Unavailable",
                            "text/plain",
                            format!("not ready: {reason}\n"),
                        ),
                    },
                    _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                // A scraper that reads nothing must not hold this task forever.
                let respond = async {
                    s.write_all(head.as_bytes()).await?;
                    s.write_all(body.as_bytes()).await?;
                    s.shutdown().await
                };
                let _ = tokio::time::timeout(RESPONSE_WRITE_TIMEOUT, respond).await;
            });
        }
    });
    Ok((bound, task))
}

/// Labels of one inbound connection, fixed once the HAT has classified it.
#[derive(Debug, Clone)]
pub struct InboundLabels {
    /// Listener name.
    pub listener: String,
    /// Sender group.
    pub sender_group: String,
    /// Mail-flow policy name.
    pub policy: String,
    /// Organisation of the verified PTR name (`other`, `unknown`): [`sender_org::SenderOrgs`].
    pub sender_org: String,
}

/// Counts what an inbound mail-log event means for the metrics.
pub(crate) fn observe_inbound(e: &crate::mail_log::Event, l: &InboundLabels) {
    use crate::mail_log::Event;
    use crate::policy::check::Stage;
    let listener = l.listener.clone();
    match e {
        Event::Hat { action, group, .. } => {
            metrics::counter!(CONNECTIONS, "listener" => listener, "sender_group" => group.clone(),
                "sender_org" => l.sender_org.clone(), "action" => action.to_ascii_lowercase())
            .increment(1);
        }
        Event::TlsSuccess {
            protocol, cipher, ..
        } => {
            metrics::counter!(INBOUND_TLS_SESSIONS, "listener" => listener,
                "sender_org" => l.sender_org.clone(), "protocol" => protocol.clone(),
                "cipher" => cipher.clone())
            .increment(1);
        }
        Event::Queued { .. } => {
            ready::set_out_of_space(false); // a commit just worked
            metrics::counter!(MESSAGES_ACCEPTED, "listener" => listener, "sender_group" => l.sender_group.clone())
                .increment(1);
        }
        Event::Ready { bytes, .. } => {
            metrics::counter!(BYTES_RECEIVED, "listener" => listener).increment(*bytes);
        }
        Event::To { .. } => {
            metrics::counter!(RECIPIENTS_ACCEPTED, "listener" => listener, "sender_group" => l.sender_group.clone())
                .increment(1);
        }
        Event::RatRejected { .. } => {
            metrics::counter!(RECIPIENTS_REJECTED, "listener" => listener, "reason" => "rat")
                .increment(1);
        }
        Event::DhapDrop { .. } => {
            metrics::counter!(DHAP_DROPS, "listener" => listener, "sender_group" => l.sender_group.clone())
                .increment(1);
        }
        // The stage's check typed the reason; only MAIL and RCPT refusals are counted here
        // (a message refused after DATA is counted by its `ReceivingFailed`).
        Event::Refused { reason, .. } => match reason.stage() {
            Stage::Mail => {
                metrics::counter!(MESSAGES_REJECTED, "listener" => listener, "reason" => reason.label())
                    .increment(1);
            }
            Stage::Rcpt => {
                metrics::counter!(RECIPIENTS_REJECTED, "listener" => listener, "reason" => reason.label())
                    .increment(1);
            }
            Stage::Connect | Stage::Helo | Stage::Data => {}
        },
        Event::SenderRejected { outcome, .. } => {
            metrics::counter!(MESSAGES_REJECTED, "listener" => listener, "reason" => outcome.label())
                .increment(1);
        }
        Event::ReceivingFailed { reason, .. } => {
            metrics::counter!(MESSAGES_REJECTED, "listener" => listener, "reason" => reason.label())
                .increment(1);
        }
        _ => {}
    }
}

/// Counts the connection's inbound TLS outcome once, at its end; `protocol` is the negotiated
/// version as the mail log names it (`None` without TLS).
pub(crate) fn inbound_tls_outcome(
    l: &InboundLabels,
    o: crate::smtp::session::TlsOutcome,
    protocol: Option<&str>,
) {
    // sender_org and tls_version sit between sender_group and policy: scrapers matching the
    // older label sequence by prefix and suffix keep matching.
    metrics::counter!(INBOUND_TLS, "listener" => l.listener.clone(), "sender_group" => l.sender_group.clone(),
        "sender_org" => l.sender_org.clone(), "tls_version" => tls_version_label(protocol),
        "policy" => l.policy.clone(), "outcome" => o.outcome, "client_cert" => o.client_cert)
    .increment(1);
}

/// The `tls_version` label: `TLSv1.3` or `TLSv1.2` (all the listeners' rustls configuration
/// negotiates), `none` without TLS, and `other` should another version ever appear.
pub(crate) fn tls_version_label(protocol: Option<&str>) -> &'static str {
    match protocol {
        None => "none",
        Some("TLSv1.3") => "TLSv1.3",
        Some("TLSv1.2") => "TLSv1.2",
        Some(_) => "other",
    }
}

/// Tracks one open inbound connection in `mxgate_connections_active`.
#[derive(Debug)]
pub struct ActiveConnection(String);

impl ActiveConnection {
    /// Counts a connection as open until dropped.
    pub fn new(listener: &str) -> Self {
        metrics::gauge!(CONNECTIONS_ACTIVE, "listener" => listener.to_string()).increment(1.0);
        ActiveConnection(listener.to_string())
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS_ACTIVE, "listener" => self.0.clone()).decrement(1.0);
    }
}

/// The `destination` label: the destination-control entry that applies (bounded by config).
pub(crate) fn destination_label(control: &crate::config::outbound::DestinationControl) -> String {
    match &control.domain {
        crate::config::outbound::DomainMatch::All => "default".to_string(),
        d => d.to_string(),
    }
}

/// Counts the TLS outcome of one delivery connection.
pub fn outbound_tls(destination: &str, mode: &'static str, tls: &crate::relay::client::TlsOutcome) {
    use crate::relay::client::TlsOutcome;
    let outcome = match tls {
        TlsOutcome::NotAttempted => "not_attempted",
        TlsOutcome::NotOffered => "not_offered",
        TlsOutcome::Success {
            verified: Some(true),
            ..
        } => "verified",
        TlsOutcome::Success {
            verified: Some(false),
            ..
        } => "not_verified",
        TlsOutcome::Success { verified: None, .. } => "success",
        TlsOutcome::FellBackPlaintext => "fell_back_plaintext",
        TlsOutcome::Failed(_) => "failed",
    };
    metrics::counter!(OUTBOUND_TLS, "destination" => destination.to_string(), "mode" => mode, "outcome" => outcome)
        .increment(1);
}

/// Counts a required-TLS failure for a destination.
pub fn required_tls_failure(destination: &str) {
    metrics::counter!(REQUIRED_TLS_FAILURES, "destination" => destination.to_string()).increment(1);
}

/// Counts per-recipient delivery results.
pub(crate) fn delivery_attempt(destination: &str, result: &'static str, n: u64) {
    metrics::counter!(DELIVERY_ATTEMPTS, "destination" => destination.to_string(), "result" => result).increment(n);
}

/// Counts one block-list lookup; `zone` comes from the HAT, never from the client.
pub(crate) fn dnsbl_lookup(zone: &str, result: &'static str) {
    metrics::counter!(DNSBL_LOOKUPS, "zone" => zone.to_string(), "result" => result).increment(1);
}

/// Counts one PROXY refusal; the reason label comes from the typed refusal.
pub(crate) fn proxy_refused(listener: &str, r: &crate::net::proxy::Refusal) {
    metrics::counter!(PROXY_REFUSED, "listener" => listener.to_string(), "reason" => r.label())
        .increment(1);
}

/// Counts one connection's reverse-DNS result (nothing when it was not looked up).
pub(crate) fn reverse_dns(listener: &str, r: &crate::policy::hat::ReverseDns) {
    use crate::policy::hat::ReverseDns;
    let result = match r {
        ReverseDns::Verified(_) => "pass",
        ReverseDns::Mismatch(_) => "fail",
        ReverseDns::TempFail => "temperror",
        ReverseDns::Missing => "permerror",
        ReverseDns::NotChecked => return,
    };
    metrics::counter!(REVERSE_DNS, "listener" => listener.to_string(), "result" => result)
        .increment(1);
}

/// Sets the queue gauges.
pub(crate) fn queue_state(messages: usize, oldest_age_seconds: u64) {
    metrics::gauge!(QUEUE_MESSAGES).set(messages as f64);
    metrics::gauge!(QUEUE_OLDEST_AGE_SECONDS).set(oldest_age_seconds as f64);
}

/// Sets a listener's certificate expiry gauge from its PEM chain (leaf first).
pub(crate) fn certificate_expiry(listener: &str, cert_pem: &std::path::Path) {
    let Ok(pem) = std::fs::read(cert_pem) else {
        return;
    };
    let Ok((_, p)) = x509_parser::pem::parse_x509_pem(&pem) else {
        return;
    };
    let Ok(cert) = p.parse_x509() else { return };
    let not_after = cert.validity().not_after.timestamp();
    metrics::gauge!(CERTIFICATE_EXPIRY, "listener" => listener.to_string()).set(not_after as f64);
}
