//! TLS state of a session: the negotiated parameters, the STARTTLS outcome, and the
//! inbound TLS metric labels.

use super::{Action, Phase, Session};
use crate::mail_log::Event;
use crate::policy::flow::{Action as PolicyAction, ClientCert, TlsMode};
use crate::smtp::line::LineReader;

/// The negotiated TLS parameters, as the driver reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub protocol: String,
    /// Cipher suite name.
    pub cipher: String,
    /// The client certificate, as the driver's verifier judged it.
    pub client_cert: ClientCert,
}

/// The labels of `mxgate_inbound_tls_total` for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsOutcome {
    /// `success`, `handshake_failed`, `plaintext`, `required_refused` or `not_offered`.
    pub outcome: &'static str,
    /// `verified`, `missing`, `failed`, or `not_requested` (no TLS, or the policy did not ask).
    pub client_cert: &'static str,
}

impl Session {
    /// The active TLS parameters.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The inbound TLS outcome of the connection for metrics; `None` for rejected or refused hosts.
    pub(crate) fn tls_outcome(&self) -> Option<TlsOutcome> {
        if matches!(
            self.policy.action,
            PolicyAction::Reject | PolicyAction::TcpRefuse
        ) {
            return None;
        }
        let outcome = if self.tls.is_some() {
            "success"
        } else if self.tls_failed {
            "handshake_failed"
        } else if self.policy.tls == TlsMode::Off || !self.p.tls_available {
            "not_offered"
        } else if self.policy.tls == TlsMode::Required {
            "required_refused"
        } else {
            "plaintext"
        };
        let client_cert = self
            .tls
            .as_ref()
            .and_then(|t| t.client_cert.result_label())
            .unwrap_or("not_requested");
        Some(TlsOutcome {
            outcome,
            client_cert,
        })
    }

    /// True when the driver must ask for a client certificate at STARTTLS.
    pub(crate) fn wants_client_cert(&self) -> bool {
        self.policy.tls_verify_client
    }

    /// The handshake succeeded: RFC 3207 §4.2 — forget everything learned before it.
    pub(crate) fn tls_established(&mut self, info: TlsInfo) {
        self.log(Event::TlsSuccess {
            icid: self.p.icid,
            protocol: info.protocol.clone(),
            cipher: info.cipher.clone(),
            client_cert: info.client_cert.clone(),
        });
        self.tls = Some(info);
        self.helo = None;
        self.esmtp = false;
        self.txn = None;
        self.lines = LineReader::new(self.p.max_command_line);
        self.phase = Phase::Command;
    }

    /// The handshake failed; the connection cannot continue.
    pub(crate) fn tls_failed(&mut self, reason: &str) {
        self.tls_failed = true;
        self.log(Event::TlsFailed {
            icid: self.p.icid,
            reason: reason.to_string(),
        });
        self.phase = Phase::Closed;
        self.actions.push(Action::Close);
    }

    /// The driver discarded plaintext pipelined behind STARTTLS.
    pub(crate) fn discarded_after_starttls(&mut self, bytes: usize) {
        self.log(Event::StartTlsInjection {
            icid: self.p.icid,
            bytes,
        });
    }
}
