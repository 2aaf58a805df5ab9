//! Outbound SMTP client: one delivery connection (DCID) to a downstream server.
//!
//! [`Connection::open`] connects, reads the greeting, says EHLO (HELO when EHLO is
//! refused with 5xx) and negotiates STARTTLS exactly as the destination's
//! [`OutboundTls`](crate::config::outbound::OutboundTls) mode says (docs/relay.md); [`Connection::send`] runs one
//! mail transaction (PIPELINING and SIZE when offered, one outcome per recipient,
//! the body streamed from the spool file with dot-stuffing);
//! [`Connection::quit`] ends the session. Every step is bounded by the RFC 5321
//! §4.5.3.2 timeouts in [`ClientTimeouts`]. The mail-log lines of docs/mail-log.md
//! (`New SMTP DCID`, `DCID n TLS …`, `Delivery start`, `Message done`,
//! `DCID n close`) go to a [`DeliveryLog`].
//!
//! The client decides nothing about retries: it reports per recipient
//! ([`RcptOutcome`]) or per connection ([`ConnectError`]) and the queue manager
//! acts on that.
//!
//! Its parts: `wire` (socket, replies, timeouts), `capabilities` (EHLO), `setup` (connect,
//! greeting, EHLO, STARTTLS), `tls` (the handshake and certificate check after STARTTLS,
//! shared with the call-ahead probes), `transaction` (MAIL/RCPT/DATA, outcomes) and `body`
//! (the dot-stuffed body).

mod body;
mod capabilities;
mod setup;
pub(crate) mod tls;
mod transaction;
mod wire;

pub use capabilities::Capabilities;
pub use setup::{ConnectError, TlsOutcome};
pub(crate) use transaction::is_lost_connection;
pub use transaction::{MessageResult, OutgoingMessage, RcptOutcome};
pub use wire::ReplyParser;
pub(crate) use wire::Stream;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use crate::config::outbound::DestinationControl;
use crate::mail_log::Event;
use crate::relay::outbound_tls::OutboundTlsContext;

use wire::Wire;

/// Bound on waiting for the reply to QUIT (and to a courtesy QUIT after a failure).
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Address and port to connect to.
    pub addr: SocketAddr,
    /// The server's name (the route host as configured, or its MX host; or IP text): sent
    /// as SNI when it is a name.
    pub host: String,
    /// The name a `required-verify` / `preferred-verify` certificate may present besides
    /// the domain: the route host, or an MX host within it (never a name taken from DNS
    /// alone, which an attacker who forges one answer would choose).
    pub identity: String,
    /// Destination domain: the reference identity of `required-verify-hosted`, also
    /// accepted by `required-verify`; named in the required-TLS alert line.
    pub domain: String,
}

/// RFC 5321 §4.5.3.2 timeouts (plus connect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Initial 220 greeting (5 min).
    pub greeting: Duration,
    /// EHLO/HELO reply, STARTTLS reply and the TLS handshake (5 min).
    pub ehlo: Duration,
    /// MAIL FROM reply, also RSET (5 min).
    pub mail: Duration,
    /// Each RCPT TO reply (5 min).
    pub rcpt: Duration,
    /// DATA reply (354) (2 min).
    pub data_init: Duration,
    /// Each write of a body chunk (3 min).
    pub data_block: Duration,
    /// Reply to the final `.` (10 min).
    pub data_term: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(m * 60);
        ClientTimeouts {
            connect: Duration::from_secs(30),
            greeting: min(5),
            ehlo: min(5),
            mail: min(5),
            rcpt: min(5),
            data_init: min(2),
            data_block: min(3),
            data_term: min(10),
        }
    }
}

/// Everything a connection needs besides the target.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Name sent in EHLO/HELO.
    pub helo_name: String,
    /// Destination control of the target domain (TLS mode, CA bundle).
    pub control: DestinationControl,
    /// Shared outbound TLS context.
    pub tls: Arc<OutboundTlsContext>,
    /// Timeouts.
    pub timeouts: ClientTimeouts,
}

/// Receives the delivery mail-log events.
pub trait DeliveryLog: Send + Sync {
    /// Records one event.
    fn log(&self, e: Event);
}

impl DeliveryLog for crate::mail_log::MailLog {
    fn log(&self, e: Event) {
        crate::mail_log::MailLog::log(self, &e);
    }
}

/// One delivery connection, ready for mail.
pub struct Connection {
    wire: Wire,
    dcid: u64,
    remote: SocketAddr,
    caps: Capabilities,
    tls: TlsOutcome,
    timeouts: ClientTimeouts,
    transactions: u32,
    /// A transaction was started and not ended by the reply to the final dot: the next
    /// one needs RSET first (RFC 5321 §4.1.1.5; after a final reply the server has
    /// already reset its state, §4.1.1.4).
    open_transaction: bool,
    broken: bool,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("dcid", &self.dcid)
            .field("remote", &self.remote)
            .field("caps", &self.caps)
            .field("tls", &self.tls)
            .field("transactions", &self.transactions)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Connection {
    /// Delivery connection id.
    pub fn dcid(&self) -> u64 {
        self.dcid
    }

    /// Remote address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// TLS state of the session.
    pub fn tls(&self) -> &TlsOutcome {
        &self.tls
    }

    /// Capabilities currently in force (after STARTTLS: those announced over TLS).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Mail transactions started on this connection.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// False once the connection broke; do not send more on it.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// Says QUIT (when the session is still sound), closes and logs `DCID n close`.
    pub async fn quit(mut self, log: &dyn DeliveryLog) {
        if !self.broken {
            let limit = QUIT_TIMEOUT.min(self.timeouts.mail);
            let _ = self
                .wire
                .command("QUIT\r\n", limit, "the reply to QUIT")
                .await;
        }
        let _ = timeout(QUIT_TIMEOUT, self.wire.stream.shutdown()).await;
        log.log(Event::DcidClose { dcid: self.dcid });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue manager runs deliveries in spawned tasks: the futures must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(
        c: &mut Connection,
        m: &OutgoingMessage,
        t: &Target,
        s: &ClientSettings,
        l: &dyn DeliveryLog,
    ) {
        fn send<T: Send>(_: &T) {}
        send(&Connection::open(1, t, s, l));
        send(&c.send(m, l));
    }

    #[test]
    fn default_timeouts_follow_rfc5321() {
        let t = ClientTimeouts::default();
        assert_eq!(t.greeting.as_secs(), 300);
        assert_eq!(t.data_init.as_secs(), 120);
        assert_eq!(t.data_block.as_secs(), 180);
        assert_eq!(t.data_term.as_secs(), 600);
    }
}
