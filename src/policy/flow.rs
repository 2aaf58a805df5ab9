//! Mail-flow policies: what a sender group may do (docs/configuration.md).

use std::time::Duration;

use crate::config::model::ListenerKind;
use crate::policy::sender_auth::{SenderDnsVerification, SpfPolicy};
use crate::smtp::reply::{Enhanced, Reply};

/// Pre-greet pause of a policy that sets none, on a public listener: long enough that a bot
/// which talks first is caught, short enough that nobody waiting for the banner notices.
pub(crate) const DEFAULT_PUBLIC_PRE_GREET_PAUSE: Duration = Duration::from_millis(300);

/// What happens to a connection whose sender group names this policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Accept mail for recipients the RAT accepts.
    Accept,
    /// Greet with the reject banner, then close.
    Reject,
    /// Close the TCP connection before any greeting.
    TcpRefuse,
    /// Accept mail for any recipient (internal hosts); the RAT is skipped.
    Relay,
    /// Ignore this group and keep matching below it.
    Continue,
}

impl Action {
    /// The word used in the mail log (`ACCEPT`, `REJECT`, ...).
    pub fn log_word(self) -> &'static str {
        match self {
            Action::Accept => "ACCEPT",
            Action::Reject => "REJECT",
            Action::TcpRefuse => "TCPREFUSE",
            Action::Relay => "RELAY",
            Action::Continue => "CONTINUE",
        }
    }

    /// Lower-case name used in configuration and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::TcpRefuse => "tcprefuse",
            Action::Relay => "relay",
            Action::Continue => "continue",
        }
    }
}

/// Inbound TLS mode of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS not offered.
    Off,
    /// STARTTLS offered; plaintext allowed.
    Preferred,
    /// STARTTLS offered; mail commands refused with 530 until TLS is active.
    Required,
}

impl TlsMode {
    /// Name used in configuration and output.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Preferred => "preferred",
            TlsMode::Required => "required",
        }
    }
}

/// What the STARTTLS handshake learned about the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// The policy did not ask for one (`tls_verify_client: false`).
    NotRequested,
    /// The client sent none.
    Missing,
    /// It chains to a trusted root and allows client authentication; the subject for the log.
    Verified(String),
    /// It did not verify: why.
    Failed(String),
}

impl ClientCert {
    /// The metric label: `verified`, `missing` or `failed`; `None` when not requested.
    pub(crate) fn result_label(&self) -> Option<&'static str> {
        match self {
            ClientCert::NotRequested => None,
            ClientCert::Missing => Some("missing"),
            ClientCert::Verified(_) => Some("verified"),
            ClientCert::Failed(_) => Some("failed"),
        }
    }

    /// What the mail log says about it (`no client certificate`, ...); `None` when not requested.
    pub fn describe(&self) -> Option<String> {
        match self {
            ClientCert::NotRequested => None,
            ClientCert::Missing => Some("no client certificate".into()),
            ClientCert::Verified(subject) => Some(format!("client certificate verified {subject}")),
            ClientCert::Failed(why) => Some(format!("client certificate failed: {why}")),
        }
    }
}

/// A numeric limit together with the reply sent when it is exceeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The limit; `None` means unlimited.
    pub max: Option<u64>,
    /// Reply used when the limit is exceeded.
    pub reply: Reply,
}

impl Limit {
    /// True when `count` is beyond the limit.
    pub(crate) fn is_exceeded_by(&self, count: u64) -> bool {
        self.max.is_some_and(|m| count > m)
    }
}

/// A banner template: code and text with `$RemoteIP`, `$Hostname`, `$Group` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    /// Reply code (220 for a greeting, 554 for a reject banner, ...).
    pub code: u16,
    /// Enhanced code, used for reject banners.
    pub enhanced: Option<Enhanced>,
    /// Template text.
    pub text: String,
}

impl Banner {
    /// Expands the template variables into a reply.
    pub fn render(&self, remote_ip: &str, hostname: &str, group: &str) -> Reply {
        let text = self
            .text
            .replace("$RemoteIP", remote_ip)
            .replace("$Hostname", hostname)
            .replace("$Group", group);
        Reply {
            code: self.code,
            enhanced: self.enhanced,
            text: text.into(),
        }
    }
}

/// A fully resolved mail-flow policy (inheritance from the default already applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFlowPolicy {
    /// Policy name as written in config (e.g. `ACCEPTED`; shown as `$ACCEPTED`).
    pub name: String,
    /// Connection action.
    pub action: Action,
    /// Maximum message size in bytes, advertised in EHLO SIZE.
    pub max_message_size: Limit,
    /// Maximum messages per connection.
    pub max_messages_per_connection: Limit,
    /// Maximum recipients per message.
    pub max_recipients_per_message: Limit,
    /// Maximum concurrent connections from one client IP.
    pub max_concurrent_connections_per_ip: Limit,
    /// Maximum recipients per hour from one client IP, across all listeners.
    pub max_recipients_per_hour: Limit,
    /// Maximum invalid recipients per hour from one client IP, across all listeners (DHAP):
    /// past it every RCPT gets the reply and the connection is dropped, until the hour ends.
    pub max_invalid_recipients_per_hour: Limit,
    /// Greeting banner (code 220 by default).
    pub banner: Banner,
    /// Banner sent before closing when the action is `reject`.
    pub reject_banner: Banner,
    /// Host name used in the greeting and EHLO instead of the listener's.
    pub override_hostname: Option<String>,
    /// Inbound TLS mode.
    pub tls: TlsMode,
    /// Ask the client for a certificate at STARTTLS and verify it; under `tls: required` mail
    /// needs a verified one, under `preferred` the result is only logged.
    pub tls_verify_client: bool,
    /// Envelope senders (addresses or `@domain` / `domain`) for whom TLS is mandatory even under `preferred`.
    pub tls_mandatory_senders: Vec<String>,
    /// How long to wait before the greeting, watching for a client that talks first;
    /// `None` = the listener kind's default (see `MailFlowPolicy::pre_greet_pause_on`).
    pub pre_greet_pause: Option<Duration>,
    /// Envelope-sender DNS verification at `MAIL FROM`; `None` = off (docs/sender-auth.md).
    pub sender_dns_verification: Option<SenderDnsVerification>,
    /// SPF evaluation of the `MAIL FROM` (or HELO) identity.
    pub spf: SpfPolicy,
    /// DKIM and DMARC after DATA (docs/sender-auth.md).
    pub dmarc: crate::policy::sender_auth::DmarcMode,
}

impl MailFlowPolicy {
    /// True when messages get an `Authentication-Results` header (SPF or DMARC is on).
    pub fn is_message_auth_on(&self) -> bool {
        self.spf.mode != crate::policy::sender_auth::SpfMode::Off
            || self.dmarc != crate::policy::sender_auth::DmarcMode::Off
    }

    /// The pre-greet pause on a listener of `kind`: the policy's own, else 300 ms on public
    /// listeners (where bots talk first) and none on private ones (internal hosts).
    pub(crate) fn pre_greet_pause_on(&self, kind: ListenerKind) -> Duration {
        self.pre_greet_pause.unwrap_or(match kind {
            ListenerKind::Public => DEFAULT_PUBLIC_PRE_GREET_PAUSE,
            ListenerKind::Private => Duration::ZERO,
        })
    }

    /// True when `sender` (an envelope address) must use TLS under this policy.
    pub(crate) fn is_tls_mandatory_for(&self, sender: &str) -> bool {
        let sender = sender.to_ascii_lowercase();
        let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.tls_mandatory_senders.iter().any(|entry| {
            let entry = entry.to_ascii_lowercase();
            if let Some(d) = entry.strip_prefix('@') {
                d == domain
            } else if entry.contains('@') {
                entry == sender
            } else {
                entry == domain
            }
        })
    }

    /// Whether `MAIL FROM` must be refused for want of a verified client certificate, given
    /// the certificate result of the active TLS session (`None` before STARTTLS). Returns the
    /// reason for the log. Only `tls: required` with `tls_verify_client` refuses; plaintext under
    /// `required` is refused earlier by the STARTTLS gate, and `preferred` only logs the result.
    pub(crate) fn client_cert_refusal(
        &self,
        tls_client_cert: Option<&ClientCert>,
    ) -> Option<String> {
        if self.tls != TlsMode::Required || !self.tls_verify_client {
            return None;
        }
        match tls_client_cert? {
            ClientCert::Verified(_) => None,
            // A session set up without asking (not expected: the driver asks whenever the
            // policy says so) has no verified certificate either.
            ClientCert::NotRequested => Some("client certificate not requested".into()),
            other => other.describe(),
        }
    }

    /// The built-in defaults every policy inherits from when the config sets nothing.
    pub fn builtin_default(name: &str) -> Self {
        MailFlowPolicy {
            name: name.to_string(),
            action: Action::Accept,
            max_message_size: Limit {
                max: Some(10 * 1024 * 1024),
                reply: Reply::new(
                    552,
                    Enhanced(5, 3, 4),
                    "Message size exceeds fixed maximum message size",
                ),
            },
            max_messages_per_connection: Limit {
                max: Some(10),
                reply: Reply::new(452, Enhanced(4, 5, 3), "Too many messages for this session"),
            },
            max_recipients_per_message: Limit {
                max: Some(50),
                reply: Reply::new(452, Enhanced(4, 5, 3), "Too many recipients"),
            },
            max_concurrent_connections_per_ip: Limit {
                max: Some(10),
                reply: Reply::new(
                    421,
                    Enhanced(4, 7, 0),
                    "Too many concurrent connections from your address",
                ),
            },
            max_recipients_per_hour: Limit {
                max: None,
                reply: Reply::new(
                    452,
                    Enhanced(4, 5, 3),
                    "Too many recipients received this hour",
                ),
            },
            // Unlimited unless configured: configs written before DHAP keep their behaviour
            // (the shipped mail_flow.yaml sets 25, ESA's default on public listeners).
            max_invalid_recipients_per_hour: Limit {
                max: None,
                reply: Reply::new(550, Enhanced(5, 7, 1), "Too many invalid recipients"),
            },
            banner: Banner {
                code: 220,
                enhanced: None,
                text: "$Hostname ESMTP mxgate".to_string(),
            },
            reject_banner: Banner {
                code: 554,
                enhanced: Some(Enhanced(5, 7, 1)),
                text: "Access denied".to_string(),
            },
            override_hostname: None,
            tls: TlsMode::Preferred,
            tls_verify_client: false,
            tls_mandatory_senders: Vec::new(),
            pre_greet_pause: None,
            sender_dns_verification: None,
            spf: SpfPolicy::default(),
            dmarc: crate::policy::sender_auth::DmarcMode::Off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_variables_expand() {
        let b = Banner {
            code: 554,
            enhanced: Some(Enhanced(5, 7, 1)),
            text: "$Hostname refuses $RemoteIP ($Group)".into(),
        };
        let r = b.render("192.0.2.1", "mx.example.com", "BLOCKLIST");
        assert_eq!(
            r.to_wire(),
            "554 5.7.1 mx.example.com refuses 192.0.2.1 (BLOCKLIST)\r\n"
        );
    }

    #[test]
    fn limit_exceeded() {
        let p = MailFlowPolicy::builtin_default("X");
        assert!(!p.max_recipients_per_message.is_exceeded_by(50));
        assert!(p.max_recipients_per_message.is_exceeded_by(51));
        assert!(!p.max_recipients_per_hour.is_exceeded_by(u64::MAX));
    }

    #[test]
    fn client_cert_decision() {
        let verified = ClientCert::Verified("CN=mx.partner.example".into());
        let failed = ClientCert::Failed("UnknownIssuer".into());
        let mut p = MailFlowPolicy::builtin_default("X");
        // Without tls_verify_client nothing is refused, whatever the certificate.
        p.tls = TlsMode::Required;
        assert_eq!(p.client_cert_refusal(Some(&ClientCert::NotRequested)), None);
        assert_eq!(p.client_cert_refusal(Some(&ClientCert::Missing)), None);
        // required + verify: only a verified certificate lets mail through.
        p.tls_verify_client = true;
        assert_eq!(p.client_cert_refusal(Some(&verified)), None);
        assert_eq!(
            p.client_cert_refusal(Some(&ClientCert::Missing)).as_deref(),
            Some("no client certificate")
        );
        assert_eq!(
            p.client_cert_refusal(Some(&failed)).as_deref(),
            Some("client certificate failed: UnknownIssuer")
        );
        assert!(p
            .client_cert_refusal(Some(&ClientCert::NotRequested))
            .is_some());
        // Before STARTTLS the required-TLS gate answers, not this check.
        assert_eq!(p.client_cert_refusal(None), None);
        // preferred + verify (and off + verify): logged, never refused.
        for mode in [TlsMode::Preferred, TlsMode::Off] {
            p.tls = mode;
            assert_eq!(p.client_cert_refusal(Some(&ClientCert::Missing)), None);
            assert_eq!(p.client_cert_refusal(Some(&failed)), None);
        }
    }

    #[test]
    fn client_cert_log_text_and_labels() {
        let cases = [
            (ClientCert::NotRequested, None, None),
            (
                ClientCert::Missing,
                Some("no client certificate"),
                Some("missing"),
            ),
            (
                ClientCert::Verified("CN=a.example".into()),
                Some("client certificate verified CN=a.example"),
                Some("verified"),
            ),
            (
                ClientCert::Failed("expired".into()),
                Some("client certificate failed: expired"),
                Some("failed"),
            ),
        ];
        for (c, text, label) in cases {
            assert_eq!(c.describe().as_deref(), text);
            assert_eq!(c.result_label(), label);
        }
    }

    #[test]
    fn trust_18_pre_greet_pause_defaults_by_listener_kind() {
        let mut p = MailFlowPolicy::builtin_default("X");
        assert_eq!(
            p.pre_greet_pause_on(ListenerKind::Public),
            Duration::from_millis(300)
        );
        assert_eq!(p.pre_greet_pause_on(ListenerKind::Private), Duration::ZERO);
        // A policy's own value wins on either kind, 0 included.
        p.pre_greet_pause = Some(Duration::ZERO);
        assert_eq!(p.pre_greet_pause_on(ListenerKind::Public), Duration::ZERO);
        p.pre_greet_pause = Some(Duration::from_secs(2));
        assert_eq!(
            p.pre_greet_pause_on(ListenerKind::Private),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn tls_mandatory_senders_match_forms() {
        let mut p = MailFlowPolicy::builtin_default("X");
        p.tls_mandatory_senders = vec![
            "@bank.example".into(),
            "ceo@corp.example".into(),
            "gov.example".into(),
        ];
        assert!(p.is_tls_mandatory_for("Alice@BANK.example"));
        assert!(p.is_tls_mandatory_for("ceo@corp.example"));
        assert!(!p.is_tls_mandatory_for("cfo@corp.example"));
        assert!(p.is_tls_mandatory_for("x@gov.example"));
        assert!(!p.is_tls_mandatory_for("x@sub.gov.example"));
    }
}
