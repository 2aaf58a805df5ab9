//! The validated `shared_state:` section of `mxgate.yaml`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// What a counter does while the store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Count on this node alone (the default): limits hold per node, not across them.
    Local,
    /// Refuse for now: 421 4.3.0 at connect, 451 4.3.0 at RCPT.
    Tempfail,
}

/// `when_unavailable:` per counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhenUnavailable {
    /// Concurrent connections per client IP.
    pub connections: Fallback,
    /// Recipients per hour per client IP.
    pub recipients_per_hour: Fallback,
    /// Invalid recipients per hour per client IP (harvest protection).
    pub harvest: Fallback,
}

impl Default for WhenUnavailable {
    fn default() -> Self {
        WhenUnavailable {
            connections: Fallback::Local,
            recipients_per_hour: Fallback::Local,
            harvest: Fallback::Local,
        }
    }
}

/// `shared_state:`: where the store is and how long a reply may wait for it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedStateSettings {
    /// `redis://` or `rediss://` URL, without a password.
    pub url: String,
    /// The first line of `password_file`.
    pub password: Option<String>,
    /// PEM trust anchors for a `rediss://` server with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Longest wait for the store on the path of an SMTP reply.
    pub timeout: Duration,
    /// Per counter, what happens while the store does not answer.
    pub when_unavailable: WhenUnavailable,
}

impl fmt::Debug for SharedStateSettings {
    // By hand: the password must never reach a log or a panic message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStateSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("when_unavailable", &self.when_unavailable)
            .finish()
    }
}
