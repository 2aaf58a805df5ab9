//! The connection driver: PROXY header, reverse DNS, HAT, then feeding the session and doing
//! what it asks (replies, STARTTLS, spool writes) under the listener's timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::UnixTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::model::Listener;
use crate::dns::dnsbl;
use crate::dns::ReverseResolver;
use crate::mail_log::{Event, Level, MailLog};
use crate::metrics::{self, InboundLabels};
use crate::net::proxy::{self, ProxyParse};
use crate::net::read_deadline::ReadDeadlines;
use crate::net::tls;
use crate::net::write_bound::{
    bounded_write, write_deadline, WriteDeadline, WriteStop, CLOSING_WRITE,
};
use crate::policy::check::connect;
use crate::policy::flow::{Action as PolicyAction, ClientCert};
use crate::policy::hat::{Peer, ReverseDns};
use crate::policy::rate::RateLimiter;
use crate::smtp::session::{Action, Opening, Session, SessionEnv, SessionParams, TlsInfo};
use crate::spool::{Incoming, Spool};

/// Initial read size; buffers grow only while a message streams in, so idle sessions stay small.
const READ_CHUNK: usize = 4 * 1024;
/// Read size during DATA.
const DATA_CHUNK: usize = 64 * 1024;

/// Everything a connection on one listener needs.
pub struct ListenerContext {
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
}

enum Flow<S> {
    Done,
    Upgrade(S),
}

struct Conn<'a> {
    ctx: &'a ListenerContext,
    labels: InboundLabels,
    session: Session,
    buf: Vec<u8>,
    out: Vec<u8>,
    incoming: Option<Incoming>,
    body_error: Option<String>,
    deadline: Instant,
    reads: ReadDeadlines,
    force_close: watch::Receiver<bool>,
}

/// Handles one accepted TCP connection to the end.
pub async fn handle(
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
                    &ctx.listener,
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
    let (rdns, dnslists) = tokio::join!(
        ctx.resolver.lookup(peer_ip),
        dnsbl::check_zones(&ctx.resolver, peer_ip, &zones)
    );
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
    let labels = InboundLabels {
        listener: ctx.listener.name.clone(),
        sender_group: classification.group.clone(),
        policy: policy.name.clone(),
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
    };
    let mut session = Session::new(params);
    let slot = if matches!(policy.action, PolicyAction::TcpRefuse) {
        None
    } else {
        ctx.rate
            .try_connect(peer_ip, policy.max_concurrent_connections_per_ip.max)
    };
    // Watch for a client that talks first until the pause is over (time spent on DNS counts);
    // what the session makes of it is decided by `check::connect`.
    let pause = connect::pre_greet_pause(&policy, ctx.listener.kind, slot.is_none());
    let opening = if !buf.is_empty() || talks_before(&stream, connected + pause).await {
        Opening::PreGreet
    } else if slot.is_none() && policy.action != PolicyAction::TcpRefuse {
        // (TCPREFUSE asks for no slot.)
        Opening::ConcurrencyFull
    } else {
        Opening::Normal
    };
    let _slot = slot;
    session.start(opening);
    let mut conn = Conn {
        ctx: &ctx,
        labels,
        session,
        buf,
        out: Vec::new(),
        incoming: None,
        body_error: None,
        deadline: Instant::now() + ctx.listener.timeouts.session,
        reads: ReadDeadlines::default(),
        force_close,
    };
    if let Flow::Upgrade(tcp) = conn.run(stream).await {
        conn.upgrade(tcp).await;
    }
    conn.session.finish();
    conn.process_final_actions();
    if let Some(outcome) = conn.session.tls_outcome() {
        metrics::inbound_tls_outcome(&conn.labels, outcome);
    }
}

/// True when the client sends bytes before `until` (it spoke before our greeting); bytes
/// already there count even when `until` has passed.
async fn talks_before(stream: &TcpStream, until: tokio::time::Instant) -> bool {
    let mut probe = [0u8; 1];
    matches!(
        tokio::time::timeout_at(until, stream.peek(&mut probe)).await,
        Ok(Ok(n)) if n > 0
    )
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

impl Conn<'_> {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, mut stream: S) -> Flow<S> {
        // Log lines of one burst of actions, written with one call before anything waits.
        let mut logs: Vec<Event> = Vec::new();
        loop {
            for action in self.session.take_actions() {
                match action {
                    Action::Reply(r) => {
                        self.reads.replied();
                        r.write_to(&mut self.out)
                    }
                    Action::Log(e) => {
                        metrics::observe_inbound(&e, &self.labels);
                        logs.push(e);
                    }
                    Action::StartTls => {
                        write_logs(&self.ctx.log, &mut logs);
                        if self.flush(&mut stream).await.is_err() {
                            return Flow::Done;
                        }
                        if !self.buf.is_empty() {
                            // CVE-2011-0411: plaintext pipelined behind STARTTLS must never be read as commands.
                            self.session.discarded_after_starttls(self.buf.len());
                            self.buf.clear();
                            self.log_pending();
                        }
                        return Flow::Upgrade(stream);
                    }
                    Action::BeginMessage(mid) => {
                        self.reads.message_started();
                        self.incoming = Some(self.ctx.spool.begin(mid));
                        self.body_error = None;
                    }
                    Action::CommitMessage(env) => {
                        write_logs(&self.ctx.log, &mut logs);
                        self.drain_body().await;
                        let result = match (self.incoming.take(), self.body_error.take()) {
                            (Some(inc), None) => {
                                let spool = self.ctx.spool.clone();
                                match tokio::task::spawn_blocking(move || {
                                    let r = spool.commit(inc, &env);
                                    (r, env)
                                })
                                .await
                                {
                                    Ok((Ok(body), env)) => {
                                        // The queue manager gets envelope and body as they are:
                                        // the first delivery reads nothing back from disk.
                                        if let Some(q) = &self.ctx.queue {
                                            q.committed(env, body);
                                        }
                                        Ok(())
                                    }
                                    Ok((Err(e), _)) => {
                                        metrics::spool_write_failed(e.is_out_of_space());
                                        Err(e.to_string())
                                    }
                                    Err(e) => Err(format!("commit task failed: {e}")),
                                }
                            }
                            (Some(inc), Some(err)) => {
                                self.ctx.spool.abort(inc);
                                Err(err)
                            }
                            (None, _) => Err("no message in progress".into()),
                        };
                        if let Err(e) = &result {
                            tracing::error!("spool commit failed: {e}");
                        }
                        self.session.committed(result);
                    }
                    Action::AbortMessage => {
                        if let Some(inc) = self.incoming.take() {
                            self.ctx.spool.abort(inc);
                        }
                        // The session already dropped this message's bytes; what its body
                        // holds now belongs to the next, pipelined message.
                    }
                    Action::Close => {
                        write_logs(&self.ctx.log, &mut logs);
                        let _ = self.flush(&mut stream).await;
                        // TLS says close_notify; plain TCP sends its FIN when the socket is
                        // closed right after this, so a separate shutdown call is not needed.
                        if self.session.tls().is_some() {
                            let deadline = self.write_deadline();
                            let _ =
                                bounded_write(stream.shutdown(), deadline, &mut self.force_close)
                                    .await;
                        }
                        return Flow::Done;
                    }
                }
            }
            write_logs(&self.ctx.log, &mut logs);
            self.drain_body().await;
            // Callbacks above (committed, ...) may have queued more actions: run them first.
            if self.session.has_actions() {
                continue;
            }
            if self.session.is_closed() {
                let _ = self.flush(&mut stream).await;
                return Flow::Done;
            }
            if !self.buf.is_empty() && !self.session.is_waiting() {
                let used = self.session.feed(&self.buf);
                self.buf.drain(..used);
                if used > 0 || self.session.is_waiting() {
                    continue;
                }
            }
            if self.session.is_waiting() {
                continue;
            }
            // Out of input: answer everything pipelined so far, then wait (RFC 2920).
            match self.flush(&mut stream).await {
                Ok(()) => {}
                Err(WriteStop::Failed) => return Flow::Done,
                // A client that does not read gets no 421 (it would not read that either):
                // log why, then close.
                Err(WriteStop::Timeout(what)) => {
                    self.session.timeout(what);
                    self.log_pending();
                    return Flow::Done;
                }
                Err(WriteStop::Shutdown) => {
                    self.session.shutdown();
                    self.log_pending();
                    return Flow::Done;
                }
            }
            if self.buf.capacity() > 2 * DATA_CHUNK && self.buf.is_empty() {
                self.buf = Vec::new();
            }
            match self.read(&mut stream).await {
                ReadOutcome::Data => {}
                ReadOutcome::Closed => return Flow::Done,
                ReadOutcome::Timeout(what) => self.session.timeout(what),
                ReadOutcome::Shutdown => self.session.shutdown(),
            }
        }
    }

    async fn read<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> ReadOutcome {
        let in_data = self.session.is_in_data();
        let t = &self.ctx.listener.timeouts;
        let (until, what) = self.reads.next(in_data, Instant::now(), t, self.deadline);
        self.buf
            .reserve(if in_data { DATA_CHUNK } else { READ_CHUNK });
        if *self.force_close.borrow() {
            return ReadOutcome::Shutdown;
        }
        tokio::select! {
            r = tokio::time::timeout_at(until.into(), stream.read_buf(&mut self.buf)) => match r {
                Err(_) => ReadOutcome::Timeout(what),
                Ok(Ok(0)) | Ok(Err(_)) => ReadOutcome::Closed,
                Ok(Ok(n)) => {
                    self.reads.received(in_data, n);
                    ReadOutcome::Data
                }
            },
            _ = self.force_close.changed() => ReadOutcome::Shutdown,
        }
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), WriteStop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let deadline = self.write_deadline();
        let out = &self.out;
        let write = async move {
            stream.write_all(out).await?;
            stream.flush().await
        };
        let r = bounded_write(write, deadline, &mut self.force_close).await;
        self.out.clear();
        r
    }

    /// Until when the next write may block: see [`write_deadline`]; once shutdown forced the
    /// close, only [`CLOSING_WRITE`] for the 421.
    fn write_deadline(&self) -> WriteDeadline {
        let mut d = write_deadline(&self.ctx.listener, self.deadline);
        if *self.force_close.borrow() {
            d.at = d.at.min(Instant::now() + CLOSING_WRITE);
        }
        d
    }

    /// Moves the body bytes the session produced into the spool. Bytes that stay in memory
    /// are copied here; a write to disk (a body past the in-memory threshold) runs on the
    /// blocking pool, because a write can stall on writeback and would stall every session
    /// of this runtime thread with it.
    async fn drain_body(&mut self) {
        let body = self.session.body_mut();
        if body.is_empty() {
            return;
        }
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
                    *self.session.body_mut() = data;
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

    fn log_pending(&mut self) {
        for a in self.session.take_actions() {
            if let Action::Log(e) = a {
                self.log(&e);
            }
        }
    }

    fn process_final_actions(&mut self) {
        for a in self.session.take_actions() {
            match a {
                Action::Log(e) => self.log(&e),
                Action::AbortMessage => {
                    if let Some(inc) = self.incoming.take() {
                        self.ctx.spool.abort(inc);
                    }
                }
                _ => {}
            }
        }
        if let Some(inc) = self.incoming.take() {
            self.ctx.spool.abort(inc);
        }
    }

    fn log(&self, e: &Event) {
        self.ctx.log.log(e);
        metrics::observe_inbound(e, &self.labels);
    }

    async fn upgrade(&mut self, tcp: TcpStream) {
        // The policy is known since the HAT ran, so the config can be picked per connection.
        let verify = match &self.ctx.tls_verify {
            Some(v) if self.session.wants_client_cert() => Some(v),
            _ => None,
        };
        let Some(acceptor) = verify.map(|v| v.acceptor.clone()).or(self.ctx.tls.clone()) else {
            self.session.tls_failed("no certificate");
            return;
        };
        let hs = self.ctx.listener.timeouts.tls_handshake;
        let started = Instant::now();
        match tokio::time::timeout(hs, acceptor.accept(tcp)).await {
            Ok(Ok(tls_stream)) => {
                ::metrics::histogram!(metrics::TLS_HANDSHAKE_SECONDS, "listener" => self.labels.listener.clone())
                    .record(started.elapsed().as_secs_f64());
                let (_, conn) = tls_stream.get_ref();
                let info = TlsInfo {
                    protocol: tls::protocol_name(conn.protocol_version()),
                    cipher: tls::cipher_name(conn.negotiated_cipher_suite()),
                    client_cert: match verify {
                        Some(v) => v.check.check(conn.peer_certificates(), UnixTime::now()),
                        None => ClientCert::NotRequested,
                    },
                };
                self.session.tls_established(info);
                // A second STARTTLS is refused by the session, so this returns Done.
                let _ = self.run(tls_stream).await;
            }
            Ok(Err(e)) => self.session.tls_failed(&e.to_string()),
            Err(_) => self.session.tls_failed("handshake timeout"),
        }
    }
}

enum ReadOutcome {
    Data,
    Closed,
    Timeout(&'static str),
    Shutdown,
}

/// Writes and clears the log lines `run` collected.
fn write_logs(log: &MailLog, logs: &mut Vec<Event>) {
    if !logs.is_empty() {
        log.log_many(logs);
        logs.clear();
    }
}
