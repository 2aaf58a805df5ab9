//! Connection setup: connect, greeting, EHLO (HELO when EHLO is refused) and STARTTLS with
//! certificate verification exactly as the destination's TLS mode says; what TLS came to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::mail_log::Event;
use crate::smtp::reply::Reply;

use super::tls::handshake;
use super::wire::{Stream, Wire, WireError};
use super::{Capabilities, ClientSettings, Connection, DeliveryLog, Target, QUIT_TIMEOUT};

/// What happened about TLS on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsOutcome {
    /// Mode `no`: STARTTLS never tried.
    NotAttempted,
    /// The server did not offer STARTTLS.
    NotOffered,
    /// The session is encrypted.
    Success {
        /// `TLSv1.3` / `TLSv1.2`.
        protocol: String,
        /// Cipher suite (`TLS13_AES_256_GCM_SHA384`).
        cipher: String,
        /// `None` when the mode does not verify; `Some(false)` when a
        /// `preferred-verify` check failed and delivery went on regardless.
        verified: Option<bool>,
    },
    /// `preferred*`: STARTTLS failed before the 220 reply; the session went on in plaintext.
    FellBackPlaintext,
    /// TLS failed (the connection was given up); the reason.
    Failed(String),
}

/// A connection could not be set up for mail: nothing was sent, try again later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// Human-readable cause (for `Delayed:` lines and `queue list`).
    pub reason: String,
    /// Enhanced status code: `4.4.1` connect failed, `4.4.2` bad connection or
    /// refused greeting/EHLO, `4.7.5` TLS.
    pub enhanced: String,
    /// The server's reply when one caused the failure.
    pub reply: Option<Reply>,
    /// TLS state when it failed.
    pub tls: TlsOutcome,
    /// A `required*` mode could not negotiate (or verify) TLS: the alert case.
    pub required_tls_failure: bool,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} - {}", self.enhanced, self.reason)
    }
}

impl std::error::Error for ConnectError {}

/// Builds a [`ConnectError`].
fn connect_error(
    reason: String,
    enhanced: &str,
    reply: Option<Reply>,
    tls: TlsOutcome,
    required_tls_failure: bool,
) -> ConnectError {
    ConnectError {
        reason,
        enhanced: enhanced.to_string(),
        reply,
        tls,
        required_tls_failure,
    }
}

/// How a failed `open` leaves the socket.
enum Teardown {
    /// The SMTP dialogue is intact: say QUIT first.
    Quit,
    /// Just close.
    Close,
}

impl Connection {
    /// Connects and prepares the session for mail (greeting, EHLO, STARTTLS per mode).
    pub async fn open(
        dcid: u64,
        target: &Target,
        settings: &ClientSettings,
        log: &dyn DeliveryLog,
    ) -> Result<Connection, ConnectError> {
        let tcp = match timeout(settings.timeouts.connect, TcpStream::connect(target.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(connect_error(
                    format!("connection to {} failed: {e}", target.addr),
                    "4.4.1",
                    None,
                    TlsOutcome::NotAttempted,
                    false,
                ))
            }
            Err(_) => {
                return Err(connect_error(
                    format!("connection to {} timed out", target.addr),
                    "4.4.1",
                    None,
                    TlsOutcome::NotAttempted,
                    false,
                ))
            }
        };
        let _ = tcp.set_nodelay(true);
        let interface = tcp
            .local_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        log.log(Event::NewDcid {
            dcid,
            interface,
            address: target.addr.ip(),
            port: target.addr.port(),
        });
        let mut conn = Connection {
            wire: Wire {
                stream: Stream::Plain(tcp),
                buf: Vec::new(),
                pos: 0,
            },
            dcid,
            remote: target.addr,
            caps: Capabilities::default(),
            tls: TlsOutcome::NotAttempted,
            timeouts: settings.timeouts.clone(),
            transactions: 0,
            open_transaction: false,
            broken: false,
        };
        match conn.establish(target, settings, log).await {
            Ok(()) => Ok(conn),
            Err((err, teardown)) => {
                if matches!(teardown, Teardown::Quit) {
                    let _ = conn
                        .wire
                        .command("QUIT\r\n", QUIT_TIMEOUT.min(settings.timeouts.mail), "QUIT")
                        .await;
                }
                let _ = timeout(QUIT_TIMEOUT, conn.wire.stream.shutdown()).await;
                log.log(Event::DcidClose { dcid });
                Err(err)
            }
        }
    }

    /// Greeting, EHLO and STARTTLS.
    async fn establish(
        &mut self,
        target: &Target,
        settings: &ClientSettings,
        log: &dyn DeliveryLog,
    ) -> Result<(), (ConnectError, Teardown)> {
        let t = &settings.timeouts;
        let mode = settings.control.tls;
        let peer = target.addr.ip();
        let dcid = self.dcid;
        let lost = |e: WireError, tls: TlsOutcome| {
            (
                connect_error(
                    format!("lost connection with {peer}: {e}"),
                    "4.4.2",
                    None,
                    tls,
                    false,
                ),
                Teardown::Close,
            )
        };

        let greeting = self
            .wire
            .read_reply(t.greeting, "the greeting")
            .await
            .map_err(|e| lost(e, TlsOutcome::NotAttempted))?;
        if greeting.code / 100 != 2 {
            return Err((
                connect_error(
                    format!("{peer} refused the connection: {greeting}"),
                    "4.4.2",
                    Some(greeting),
                    TlsOutcome::NotAttempted,
                    false,
                ),
                Teardown::Quit,
            ));
        }
        self.hello(&settings.helo_name, t.ehlo, peer).await?;

        if !mode.uses_starttls() {
            self.tls = TlsOutcome::NotAttempted;
            return Ok(());
        }
        let required_failed = |log: &dyn DeliveryLog| {
            log.log(Event::DcidTlsRequiredFailed {
                dcid,
                address: peer,
                domain: target.domain.clone(),
            })
        };
        if !self.caps.starttls {
            self.tls = TlsOutcome::NotOffered;
            if mode.is_required() {
                required_failed(log);
                return Err((
                    connect_error(
                        format!(
                            "TLS is required for {} but {peer} does not offer STARTTLS",
                            target.domain
                        ),
                        "4.7.5",
                        None,
                        TlsOutcome::NotOffered,
                        true,
                    ),
                    Teardown::Quit,
                ));
            }
            return Ok(());
        }

        let reply = self
            .wire
            .command("STARTTLS\r\n", t.ehlo, "the reply to STARTTLS")
            .await
            .map_err(|e| lost(e, TlsOutcome::Failed("connection lost at STARTTLS".into())))?;
        if reply.code != 220 {
            log.log(Event::DcidTlsFailed {
                dcid: self.dcid,
                reason: "STARTTLS unexpected response".into(),
            });
            if mode.is_required() {
                required_failed(log);
                return Err((
                    connect_error(
                        format!(
                            "TLS is required for {} but STARTTLS was answered {reply}",
                            target.domain
                        ),
                        "4.7.5",
                        Some(reply.clone()),
                        TlsOutcome::Failed(format!("STARTTLS answered {reply}")),
                        true,
                    ),
                    Teardown::Quit,
                ));
            }
            // Before the 220: the preferred modes go on in plaintext.
            self.tls = TlsOutcome::FellBackPlaintext;
            return Ok(());
        }

        // After the 220 there is no way back to plaintext, whatever the mode.
        let tls_failed = |reason: String, log: &dyn DeliveryLog| {
            log.log(Event::DcidTlsFailed {
                dcid,
                reason: reason.clone(),
            });
            if mode.is_required() {
                required_failed(log);
            }
            (
                connect_error(
                    format!("TLS negotiation with {peer} failed: {reason}"),
                    "4.7.5",
                    None,
                    TlsOutcome::Failed(reason),
                    mode.is_required(),
                ),
                Teardown::Close,
            )
        };
        if self.wire.buffered() > 0 {
            return Err(tls_failed(
                format!(
                    "{} bytes sent by the server after its 220 reply to STARTTLS",
                    self.wire.buffered()
                ),
                log,
            ));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.wire.stream, Stream::Gone) else {
            return Err(tls_failed("STARTTLS on an encrypted session".into(), log));
        };
        let done = match handshake(
            tcp,
            target,
            &settings.tls,
            mode,
            settings.control.ca_file.as_deref(),
            t.ehlo,
        )
        .await
        {
            Ok(h) => h,
            Err(reason) => return Err(tls_failed(reason, log)),
        };
        let (protocol, cipher) = (done.protocol, done.cipher);
        self.wire.stream = Stream::Tls(Box::new(done.stream));

        let verified = match done.verification {
            Some(Ok(identity)) => {
                log.log(Event::DcidTlsSuccess {
                    dcid: self.dcid,
                    protocol: protocol.clone(),
                    cipher: cipher.clone(),
                    verified: Some(identity),
                });
                Some(true)
            }
            Some(Err(why)) => {
                let reason = format!("certificate verification failed: {why}");
                if mode.is_required() {
                    return Err(tls_failed(reason, log));
                }
                log.log(Event::DcidTlsFailed {
                    dcid: self.dcid,
                    reason,
                });
                log.log(Event::DcidTlsSuccess {
                    dcid: self.dcid,
                    protocol: protocol.clone(),
                    cipher: cipher.clone(),
                    verified: None,
                });
                Some(false)
            }
            None => {
                log.log(Event::DcidTlsSuccess {
                    dcid: self.dcid,
                    protocol: protocol.clone(),
                    cipher: cipher.clone(),
                    verified: None,
                });
                None
            }
        };
        self.tls = TlsOutcome::Success {
            protocol,
            cipher,
            verified,
        };
        // Forget what was learned in plaintext and ask again over TLS.
        self.caps = Capabilities::default();
        let outcome = self.tls.clone();
        self.hello(&settings.helo_name, t.ehlo, peer)
            .await
            .map_err(|(mut e, teardown)| {
                e.tls = outcome;
                (e, teardown)
            })
    }

    /// EHLO, or HELO when EHLO gets a 5xx; sets the capabilities.
    async fn hello(
        &mut self,
        helo_name: &str,
        limit: Duration,
        peer: IpAddr,
    ) -> Result<(), (ConnectError, Teardown)> {
        let lost = |e: WireError| {
            let err = connect_error(
                format!("lost connection with {peer}: {e}"),
                "4.4.2",
                None,
                TlsOutcome::NotAttempted,
                false,
            );
            (err, Teardown::Close)
        };
        let refused = |verb: &str, r: Reply| {
            let err = connect_error(
                format!("{peer} refused {verb}: {r}"),
                "4.4.2",
                Some(r),
                TlsOutcome::NotAttempted,
                false,
            );
            (err, Teardown::Quit)
        };
        let ehlo = self
            .wire
            .command(&format!("EHLO {helo_name}\r\n"), limit, "the reply to EHLO")
            .await
            .map_err(lost)?;
        if ehlo.code / 100 == 2 {
            self.caps = Capabilities::from_ehlo(&ehlo);
            return Ok(());
        }
        if ehlo.code / 100 != 5 {
            return Err(refused("EHLO", ehlo));
        }
        let helo = self
            .wire
            .command(&format!("HELO {helo_name}\r\n"), limit, "the reply to HELO")
            .await
            .map_err(lost)?;
        if helo.code / 100 != 2 {
            return Err(refused("HELO", helo));
        }
        self.caps = Capabilities::default();
        Ok(())
    }
}
