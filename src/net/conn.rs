//! One accepted connection: PROXY header, ICID, reverse DNS and block lists, HAT, the per-IP
//! slot and the pre-greet pause; then the [`Driver`] runs the session over the socket
//! (`Socket`: TCP, rustls after STARTTLS) and the spool and mail log (`SpoolBackend`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::UnixTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::model::Listener;
use crate::dns::dnsbl;
use crate::dns::ReverseResolver;
use crate::envelope::Envelope;
use crate::mail_log::{Event, Level, MailLog};
use crate::metrics::{self, InboundLabels};
use crate::net::driver::{Backend, ClientStream, Driver, StartTls};
use crate::net::proxy::{self, ProxyParse};
use crate::net::tls;
use crate::net::write_bound::{bounded_write, write_deadline};
use crate::policy::check::connect;
use crate::policy::flow::ClientCert;
use crate::policy::hat::{Peer, ReverseDns};
use crate::policy::rate::RateLimiter;
use crate::smtp::session::{Opening, Session, SessionEnv, SessionParams, TlsInfo};
use crate::spool::{Incoming, Spool};

/// Everything a connection on one listener needs.
pub(crate) struct ListenerContext {
    /// The listener's configuration.
    pub listener: Listener,
    /// TLS acceptor (always present: a demo certificate is generated when none is configured).
    pub tls: Option<TlsAcceptor>,
    /// Acceptor and check for policies with `tls_verify_client` (same certificate store).
    pub tls_verify: Option<tls::ClientVerifyTls>,
    /// Reverse DNS.
    pub resolver: ReverseResolver,
    /// Per-IP counters shared by all listeners.
    pub rate: Arc<RateLimiter>,
    /// The spool.
    pub spool: Arc<Spool>,
    /// The mail log.
    pub log: Arc<MailLog>,
    /// Ids and time for sessions.
    pub env: Arc<dyn SessionEnv>,
    /// The queue manager, told about every committed message.
    pub queue: Option<crate::relay::queue::QueueHandle>,
    /// Recipient validation of this configuration.
    pub validator: Option<Arc<crate::validate::service::Validator>>,
    /// The TLS-RPT intake of this configuration (`policies/tlsrpt.yaml`).
    pub tlsrpt: Option<Arc<crate::tlsrpt::intake::Intake>>,
    /// Sender authentication (DNS verification, SPF) on the same resolver.
    pub sender_auth: crate::auth::SenderAuth,
    /// The store shared with other gateways (`shared_state:`), when configured.
    pub shared_state: Option<crate::shared_state::SharedState>,
}

/// Handles one accepted TCP connection to the end.
pub(crate) async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<ListenerContext>,
    force_close: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let _active = metrics::ActiveConnection::new(&ctx.listener.name);
    let mut buf = Vec::new();
    let mut peer_ip = peer.ip();
    let mut local_ip = local.ip();
    if let Some(pp) = &ctx.listener.proxy_protocol {
        if !pp.trusted.iter().any(|n| n.contains(&peer.ip())) {
            metrics::proxy_refused(&ctx.listener.name, &proxy::Refusal::UntrustedSource);
            ctx.log.log(&Event::Note {
                level: Level::Warning,
                text: format!(
                    "interface {} refused connection from {}: not a trusted PROXY source",
                    ctx.listener.name,
                    peer.ip()
                ),
            });
            return;
        }
        match read_proxy_header(&mut stream, &mut buf, pp.timeout).await {
            Ok((Some(src), dst)) => {
                peer_ip = src.ip();
                if let Some(d) = dst {
                    local_ip = d.ip();
                }
            }
            Ok((None, _)) => {}
            Err(reason) => {
                metrics::proxy_refused(&ctx.listener.name, &reason);
                ctx.log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!(
                        "interface {} PROXY header from {} refused: {reason}",
                        ctx.listener.name,
                        peer.ip()
                    ),
                });
                return;
            }
        }
    }
    // The pre-greet pause counts from here: the real client's connection (after any PROXY header).
    let connected = tokio::time::Instant::now();
    let icid = match ctx.spool.next_icid() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("cannot allocate ICID: {e}");
            let mut force_close = force_close;
            let mut reply = Vec::new();
            if let Some(r) = connect::no_icid().reply {
                r.write_to(&mut reply);
            }
            let _ = bounded_write(
                stream.write_all(&reply),
                write_deadline(
                    &ctx.listener.timeouts,
                    Instant::now() + ctx.listener.timeouts.session,
                ),
                &mut force_close,
            )
            .await;
            return;
        }
    };
    // PTR + forward and every block list at once: a slow DNS costs one timeout, not the sum.
    let zones = ctx.listener.hat.dnslist_zones();
    // Boxed: the resolver's futures are large, and the task keeps its largest state for life.
    let (rdns, dnslists) = Box::pin(async {
        tokio::join!(
            ctx.resolver.lookup(peer_ip),
            dnsbl::check_zones(&ctx.resolver, peer_ip, &zones)
        )
    })
    .await;
    metrics::reverse_dns(&ctx.listener.name, &rdns);
    for (level, text) in dnsbl::log_notes(icid, peer_ip, &dnslists) {
        ctx.log.log(&Event::Note { level, text });
    }
    let classification = ctx.listener.hat.classify(&Peer {
        ip: peer_ip,
        rdns: rdns.clone(),
        dnslists_listed: dnsbl::peer_entries(&dnslists),
    });
    let policy = classification.policy.clone();
    // Boxed: the store's future is large, and the task keeps its largest state for life.
    let slot = Box::pin(crate::net::per_ip::per_ip_slot(&ctx, peer_ip, &policy)).await;
    let labels = InboundLabels {
        listener: ctx.listener.name.clone(),
        sender_group: classification.group.clone(),
        policy: policy.name.clone(),
        sender_org: ctx.listener.sender_orgs.label(&rdns).to_string(),
    };
    let params = SessionParams {
        icid,
        listener: ctx.listener.name.clone(),
        hostname: ctx.listener.hostname.clone(),
        local_ip,
        peer_ip,
        rdns_host: rdns.host_for_log().to_string(),
        rdns_verified: matches!(rdns, ReverseDns::Verified(_)),
        classification,
        rat: ctx.listener.rat.clone(),
        max_command_line: ctx.listener.max_command_line,
        max_bad_commands: ctx.listener.max_bad_commands,
        tls_available: ctx.tls.is_some(),
        rate: ctx.rate.clone(),
        env: ctx.env.clone(),
        // Report addresses are ours and published: only mail from outside is a report.
        reports: ctx
            .tlsrpt
            .as_ref()
            .filter(|_| ctx.listener.kind == crate::config::model::ListenerKind::Public)
            .map(|i| i.settings_arc()),
        shared_limits: ctx
            .shared_state
            .as_ref()
            .map(|s| s.settings().when_unavailable),
    };
    let session = Session::new(params);
    // Watch for a client that talks first until the pause is over (time spent on DNS counts);
    // what the session makes of it is decided by `check::connect`.
    let pause = connect::pre_greet_pause(&policy, ctx.listener.kind, slot.is_err());
    let opening = if !buf.is_empty() || talks_before(&stream, connected + pause, &force_close).await
    {
        Opening::PreGreet
    } else {
        match slot {
            Err(refused) => refused,
            Ok(_) => Opening::Normal,
        }
    };
    let _slot = slot;
    let backend = SpoolBackend {
        ctx: &ctx,
        incoming: None,
        body_error: None,
    };
    let client = Socket { stream, ctx: &ctx };
    Driver::new(
        session,
        labels,
        ctx.listener.timeouts.clone(),
        backend,
        force_close,
    )
    .with_input(buf)
    .run(opening, client)
    .await;
}

/// True when the client sends bytes before `until` (it spoke before our greeting); bytes
/// already there count even when `until` has passed. A forced shutdown ends the wait (the
/// session then closes with 421 at once instead of holding the shutdown for the pause).
async fn talks_before(
    stream: &TcpStream,
    until: tokio::time::Instant,
    force_close: &watch::Receiver<bool>,
) -> bool {
    let mut probe = [0u8; 1];
    // A clone: the session's own receiver must still see the change.
    let mut force = force_close.clone();
    if *force.borrow_and_update() {
        return false;
    }
    tokio::select! {
        r = tokio::time::timeout_at(until, stream.peek(&mut probe)) => matches!(r, Ok(Ok(n)) if n > 0),
        _ = force.changed() => false,
    }
}

async fn read_proxy_header(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: std::time::Duration,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), proxy::Refusal> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match proxy::parse(buf) {
            ProxyParse::Header {
                consumed,
                source,
                destination,
            } => {
                buf.drain(..consumed);
                return Ok((source, destination));
            }
            ProxyParse::Invalid(e) => return Err(proxy::Refusal::Malformed(e)),
            ProxyParse::Incomplete => {}
        }
        let mut chunk = [0u8; 256];
        // Read only what is there: bytes after the header belong to SMTP.
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err(proxy::Refusal::Timeout),
            Ok(Err(e)) => return Err(proxy::Refusal::Io(e.to_string())),
            Ok(Ok(0)) => return Err(proxy::Refusal::Closed),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The client's socket: TCP, then its rustls stream after STARTTLS.
struct Socket<'a, S> {
    stream: S,
    ctx: &'a ListenerContext,
}

/// Bytes one read outside DATA takes at most (a command burst; more waits for the next read).
const COMMAND_READ: usize = 4 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for Socket<'_, S> {
    async fn read(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        if buf.capacity() - buf.len() >= COMMAND_READ {
            return self.stream.read_buf(buf).await;
        }
        // Waiting for a command: read into the stack of whichever poll finds bytes, so the
        // waiting session holds no buffer; `buf` grows by what arrived.
        std::future::poll_fn(|cx| {
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); COMMAND_READ];
            let mut rb = tokio::io::ReadBuf::uninit(&mut chunk);
            match std::pin::Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
                std::task::Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(rb.filled());
                    std::task::Poll::Ready(Ok(rb.filled().len()))
                }
                std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
        .await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.stream.shutdown().await
    }
}

impl<'a> StartTls for Socket<'a, TcpStream> {
    /// Boxed: the rustls connection is over a kilobyte, and the futures the driver builds
    /// around the stream would otherwise each keep room for it.
    type Tls = Socket<'a, Box<TlsStream<TcpStream>>>;

    async fn start_tls(self, client_cert: bool) -> Result<(Self::Tls, TlsInfo), String> {
        let ctx = self.ctx;
        // The policy is known since the HAT ran, so the config can be picked per connection.
        let verify = match &ctx.tls_verify {
            Some(v) if client_cert => Some(v),
            _ => None,
        };
        let Some(acceptor) = verify.map(|v| v.acceptor.clone()).or(ctx.tls.clone()) else {
            return Err("no certificate".into());
        };
        let stream = acceptor
            .accept(self.stream)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = stream.get_ref();
        let info = TlsInfo {
            protocol: tls::protocol_name(conn.protocol_version()),
            cipher: tls::cipher_name(conn.negotiated_cipher_suite()),
            client_cert: match verify {
                Some(v) => v.check.check(conn.peer_certificates(), UnixTime::now()),
                None => ClientCert::NotRequested,
            },
        };
        Ok((
            Socket {
                stream: Box::new(stream),
                ctx,
            },
            info,
        ))
    }
}

/// The spool (messages go on to the queue manager) and the mail log.
struct SpoolBackend<'a> {
    ctx: &'a ListenerContext,
    incoming: Option<Incoming>,
    /// The first failed body write; the commit reports it.
    body_error: Option<String>,
}

impl Backend for SpoolBackend<'_> {
    fn log(&mut self, events: &[Event]) {
        self.ctx.log.log_many(events);
    }

    fn begin_message(&mut self, mid: u64) {
        self.incoming = Some(self.ctx.spool.begin(mid));
        self.body_error = None;
    }

    /// Bytes that stay in memory are copied here; a write to disk (a body past the in-memory
    /// threshold) runs on the blocking pool, because a write can stall on writeback and would
    /// stall every session of this runtime thread with it.
    async fn write_body(&mut self, body: &mut Vec<u8>) {
        let Some(inc) = self.incoming.as_mut().filter(|_| self.body_error.is_none()) else {
            body.clear();
            return;
        };
        let result = if inc.stays_in_memory(body.len()) {
            let r = inc.write(body);
            body.clear();
            r
        } else {
            let data = std::mem::take(body);
            let Some(mut inc) = self.incoming.take() else {
                return;
            };
            match tokio::task::spawn_blocking(move || {
                let r = inc.write(&data);
                (inc, data, r)
            })
            .await
            {
                Ok((inc, mut data, r)) => {
                    self.incoming = Some(inc);
                    // The buffer goes back to the session for the next bytes.
                    data.clear();
                    *body = data;
                    r
                }
                Err(e) => {
                    self.body_error = Some(format!("spool write task failed: {e}"));
                    return;
                }
            }
        };
        if let Err(e) = result {
            metrics::spool_write_failed(e.is_out_of_space());
            self.body_error = Some(e.to_string());
        }
    }

    async fn commit_message(&mut self, env: Envelope) -> Result<(), String> {
        match (self.incoming.take(), self.body_error.take()) {
            (Some(inc), None) => {
                // The spool's commit thread does the work, batched with the other sessions'.
                match self.ctx.spool.commit_async(inc, &env).await {
                    Ok(body) => {
                        // The queue manager gets envelope and body as they are:
                        // the first delivery reads nothing back from disk.
                        if let Some(q) = &self.ctx.queue {
                            q.committed(env, body);
                        }
                        Ok(())
                    }
                    Err(e) => {
                        metrics::spool_write_failed(e.is_out_of_space());
                        Err(e.to_string())
                    }
                }
            }
            (Some(inc), Some(err)) => {
                self.ctx.spool.abort(inc);
                Err(err)
            }
            (None, _) => Err("no message in progress".into()),
        }
    }

    async fn validate(
        &mut self,
        req: &crate::validate::rule::ValidationRequest,
    ) -> crate::validate::destination::Checked {
        match &self.ctx.validator {
            Some(v) => v.validate(req).await,
            // A context without a validator (none is built in tests of other parts).
            None => crate::validate::destination::Checked {
                answer: crate::validate::Answer::temp(
                    crate::validate::TempFailCause::Protocol,
                    "recipient validation is not running",
                ),
                source: crate::validate::destination::Source::Lookup,
                refresh_due: false,
                transition: None,
            },
        }
    }

    async fn take_recipient(
        &mut self,
        req: &crate::smtp::session::HourlyRequest,
    ) -> crate::shared_state::counters::HourlyAnswer {
        use crate::shared_state::counters::{self, HourlyAnswer};
        let Some(shared) = &self.ctx.shared_state else {
            return HourlyAnswer::Unavailable;
        };
        let key = self.ctx.rate.shared_key(req.ip);
        match counters::take_recipient(shared, &key, req.max).await {
            Ok(true) => HourlyAnswer::Taken,
            Ok(false) => HourlyAnswer::Spent,
            Err(_) => {
                shared.fallback("recipients_per_hour");
                HourlyAnswer::Unavailable
            }
        }
    }

    fn count_invalid(&mut self, ip: std::net::IpAddr) {
        let Some(shared) = self.ctx.shared_state.clone() else {
            return;
        };
        let rate = self.ctx.rate.clone();
        let key = rate.shared_key(ip);
        // Not awaited: the local count already decided this RCPT; the global count raises
        // it for the next ones.
        tokio::spawn(async move {
            match crate::shared_state::counters::count_invalid(&shared, &key).await {
                Ok(global) => rate.observe_invalid(ip, global),
                Err(_) => shared.fallback("harvest"),
            }
        });
    }

    async fn verify_sender(
        &mut self,
        req: &crate::auth::SenderRequest,
    ) -> crate::auth::SenderAnswer {
        self.ctx.sender_auth.verify(req).await
    }

    async fn authenticate_message(
        &mut self,
        req: &crate::auth::MessageRequest,
    ) -> crate::auth::MessageAnswer {
        self.ctx.sender_auth.authenticate_message(req).await
    }

    async fn ingest_report(&mut self, message: Option<Vec<u8>>) -> crate::tlsrpt::ingest::Outcome {
        use crate::tlsrpt::ingest::Outcome;
        let Some(intake) = self.ctx.tlsrpt.clone() else {
            return Outcome::StoreFailed("the TLS-RPT intake is not running".into());
        };
        let now = self.ctx.env.now_unix() as i64;
        // Parsing, decompressing and an fsync: not on the runtime's threads.
        tokio::task::spawn_blocking(move || intake.mail(message.as_deref(), now))
            .await
            .unwrap_or_else(|e| Outcome::StoreFailed(format!("intake task failed: {e}")))
    }

    fn abort_message(&mut self) {
        if let Some(inc) = self.incoming.take() {
            self.ctx.spool.abort(inc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<F, A, B, C, D, E, Fut>(_: &F) -> usize
    where
        F: Fn(A, B, C, D, E) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A connection's task is as large as its future's largest state for as long as the
    /// connection lives, idle or not: lookups, the spool, the TLS handshake and the TLS
    /// session are boxed, so at 20 000 idle connections this stays tens of megabytes
    /// (bench/idle/idle.py measures the whole cost). It was 4 760 bytes before boxing
    /// (unoptimised build, as tests are).
    #[test]
    fn an_idle_connection_task_stays_small() {
        let n = future_size(&handle);
        assert!(n <= 4096, "the connection future grew to {n} bytes");
    }
}
