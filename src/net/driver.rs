//! The connection driver: feeds the [`Session`] what the client sends and carries out what it
//! asks (replies, STARTTLS, spool writes, mail-log lines) under the listener's timeouts.
//!
//! The driver is generic over where its bytes come from and go ([`ClientStream`], upgraded by
//! [`StartTls`]) and where messages and log lines go ([`Backend`]). `net/conn.rs` runs it over
//! the TCP socket, rustls, the spool and the mail log; `tests/transcripts.rs` over scripted
//! packets, so the transcripts test this loop and not a copy of it. Generic, not `dyn`: the
//! per-line path compiles to direct calls.

use std::future::Future;
use std::io;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::model::Timeouts;
use crate::envelope::Envelope;
use crate::mail_log::Event;
use crate::metrics::{self, InboundLabels};
use crate::net::read_deadline::ReadDeadlines;
use crate::net::write_bound::{
    bounded_write, write_deadline, WriteDeadline, WriteStop, CLOSING_WRITE,
};
use crate::smtp::session::{Action, Opening, Session, TlsInfo};
use crate::validate::destination::{Checked, Source};
use crate::validate::rule::ValidationRequest;
use crate::validate::{Answer, TempFailCause};

/// Read size during DATA. Outside DATA the driver reserves nothing: [`ClientStream::read`]
/// allocates only once bytes arrive, so an idle session holds no read buffer.
const DATA_CHUNK: usize = 64 * 1024;

/// The client's byte stream: plain TCP, or TLS after STARTTLS. The driver bounds every call
/// with its deadlines and shutdown, so implementations need no timers of their own.
pub trait ClientStream: Send {
    /// Appends what the client sent to `buf`; `Ok(0)` when the client closed. Spare capacity
    /// of `buf` (reserved in DATA) is read into directly; without it, nothing may be allocated
    /// before bytes arrive, so a connection waiting for its next command costs no buffer.
    fn read(&mut self, buf: &mut Vec<u8>) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes all of `bytes` and flushes them.
    fn write_all(&mut self, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends a TLS stream with close_notify (plain TCP sends its FIN when dropped).
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// A plain stream that STARTTLS turns into [`StartTls::Tls`].
pub trait StartTls: ClientStream + Sized {
    /// The stream after the handshake.
    type Tls: ClientStream;
    /// Runs the server side of the TLS handshake, asking for a client certificate when
    /// `client_cert`; the error text goes to the mail log. The driver bounds it with
    /// `timeouts.tls_handshake`.
    fn start_tls(
        self,
        client_cert: bool,
    ) -> impl Future<Output = Result<(Self::Tls, TlsInfo), String>> + Send;
}

/// Where a connection's results go: messages to the spool, events to the mail log.
pub trait Backend: Send {
    /// Writes mail-log lines (one call per burst of the session's actions).
    fn log(&mut self, events: &[Event]);
    /// A message with this id starts; its body follows through [`Backend::write_body`].
    fn begin_message(&mut self, mid: u64);
    /// Takes the body bytes the session produced and leaves `body` empty (the buffer may be
    /// replaced by another allocation). A failure is kept until the commit reports it.
    fn write_body(&mut self, body: &mut Vec<u8>) -> impl Future<Output = ()> + Send;
    /// Makes the current message durable and hands it on; `Err` names why it was not.
    fn commit_message(
        &mut self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Throws the current message (if any) away.
    fn abort_message(&mut self);
    /// Answers whether a recipient exists (cache, list, call-ahead or LDAP); the driver
    /// bounds it with the command timeout and shutdown.
    fn validate(&mut self, req: &ValidationRequest) -> impl Future<Output = Checked> + Send;
    /// Authenticates an envelope sender (DNS verification, SPF: `src/auth/`); the driver
    /// bounds it with the command timeout and shutdown.
    fn verify_sender(
        &mut self,
        req: &crate::auth::SenderRequest,
    ) -> impl Future<Output = crate::auth::SenderAnswer> + Send;
    /// Verifies a message's DKIM signatures and DMARC (`src/auth/message.rs`); the driver
    /// bounds it with the command timeout and shutdown.
    fn authenticate_message(
        &mut self,
        req: &crate::auth::MessageRequest,
    ) -> impl Future<Output = crate::auth::MessageAnswer> + Send;
    /// Takes one recipient of a client's hourly budget from the shared store (bounded by
    /// `shared_state.timeout` inside; the driver adds shutdown). Without a store: unavailable.
    fn take_recipient(
        &mut self,
        req: &crate::smtp::session::HourlyRequest,
    ) -> impl Future<Output = crate::shared_state::counters::HourlyAnswer> + Send {
        let _ = req;
        async { crate::shared_state::counters::HourlyAnswer::Unavailable }
    }
    /// Counts one invalid recipient of `ip` in the shared store, in the background (the
    /// global count it answers raises the local one). Without a store: nothing.
    fn count_invalid(&mut self, ip: std::net::IpAddr) {
        let _ = ip;
    }
    /// Takes the TLS-RPT report out of a message to a report address (`None`: the message
    /// passed the intake's size limit).
    fn ingest_report(
        &mut self,
        message: Option<Vec<u8>>,
    ) -> impl Future<Output = crate::tlsrpt::ingest::Outcome> + Send;
}

enum Flow<C> {
    Done,
    Upgrade(C),
}

enum ReadOutcome {
    Data,
    Closed,
    Timeout(&'static str),
    Shutdown,
}

/// Runs one classified connection's session from the greeting to the close.
///
/// Every connection's task is as large as the largest state of its future, idle or not, so
/// what the driver awaits besides reads and writes (the backend's lookups, the spool, the TLS
/// handshake) is boxed: those futures exist only while they run.
pub struct Driver<B> {
    session: Session,
    labels: InboundLabels,
    timeouts: Timeouts,
    backend: B,
    buf: Vec<u8>,
    out: Vec<u8>,
    deadline: Instant,
    reads: ReadDeadlines,
    force_close: watch::Receiver<bool>,
}

impl<B: Backend> Driver<B> {
    /// A driver for `session`; the session deadline (`timeouts.session`) starts now, and
    /// `force_close` turning true (or its sender dropping) is shutdown.
    pub fn new(
        session: Session,
        labels: InboundLabels,
        timeouts: Timeouts,
        backend: B,
        force_close: watch::Receiver<bool>,
    ) -> Self {
        let deadline = Instant::now() + timeouts.session;
        Driver {
            session,
            labels,
            timeouts,
            backend,
            buf: Vec::new(),
            out: Vec::new(),
            deadline,
            reads: ReadDeadlines::default(),
            force_close,
        }
    }

    /// Client bytes already read (after a PROXY header) that the session gets first.
    pub(crate) fn with_input(mut self, buf: Vec<u8>) -> Self {
        self.buf = buf;
        self
    }

    /// Starts the session with `opening` and serves `client` until the connection ends, then
    /// writes the final log lines and drops any unfinished message.
    pub async fn run<C: StartTls>(mut self, opening: Opening, client: C) {
        self.session.start(opening);
        if let Flow::Upgrade(plain) = self.serve(client).await {
            // Boxed: the handshake's result holds the TLS stream, and plain sessions should not
            // carry its room.
            Box::pin(self.upgrade(plain)).await;
        }
        self.session.finish();
        self.process_final_actions();
        if let Some(outcome) = self.session.tls_outcome() {
            let protocol = self.session.tls().map(|t| t.protocol.as_str());
            metrics::inbound_tls_outcome(&self.labels, outcome, protocol);
        }
    }

    async fn serve<C: ClientStream>(&mut self, mut client: C) -> Flow<C> {
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
                        self.write_logs(&mut logs);
                        if self.flush(&mut client).await.is_err() {
                            return Flow::Done;
                        }
                        if !self.buf.is_empty() {
                            // CVE-2011-0411: plaintext pipelined behind STARTTLS must never be read as commands.
                            self.session.discarded_after_starttls(self.buf.len());
                            self.buf.clear();
                            self.log_pending();
                        }
                        return Flow::Upgrade(client);
                    }
                    Action::BeginMessage(mid) => {
                        self.reads.message_started();
                        self.backend.begin_message(mid);
                    }
                    Action::CommitMessage(env) => {
                        self.write_logs(&mut logs);
                        self.drain_body().await;
                        let result = Box::pin(self.backend.commit_message(env)).await;
                        if let Err(e) = &result {
                            tracing::error!("spool commit failed: {e}");
                        }
                        self.session.committed(result);
                    }
                    Action::ValidateRecipient(req) => {
                        self.write_logs(&mut logs);
                        Box::pin(self.validate(req)).await;
                    }
                    Action::TakeRecipient(req) => {
                        self.write_logs(&mut logs);
                        Box::pin(self.take_recipient(req)).await;
                    }
                    Action::CountInvalid(ip) => self.backend.count_invalid(ip),
                    Action::VerifySender(req) => {
                        self.write_logs(&mut logs);
                        Box::pin(self.verify_sender(req)).await;
                    }
                    Action::AuthenticateMessage(req) => {
                        self.write_logs(&mut logs);
                        Box::pin(self.authenticate_message(req)).await;
                    }
                    Action::IngestReport(message) => {
                        self.write_logs(&mut logs);
                        let outcome = Box::pin(self.backend.ingest_report(message)).await;
                        self.session.report_ingested(outcome);
                    }
                    Action::AbortMessage => {
                        self.backend.abort_message();
                        // The session already dropped this message's bytes; what its body
                        // holds now belongs to the next, pipelined message.
                    }
                    Action::Close => {
                        self.write_logs(&mut logs);
                        let _ = self.flush(&mut client).await;
                        // TLS says close_notify; plain TCP sends its FIN when the socket is
                        // closed right after this, so a separate shutdown call is not needed.
                        if self.session.tls().is_some() {
                            let deadline = self.write_deadline();
                            let _ =
                                bounded_write(client.shutdown(), deadline, &mut self.force_close)
                                    .await;
                        }
                        return Flow::Done;
                    }
                }
            }
            self.write_logs(&mut logs);
            self.drain_body().await;
            // Callbacks above (committed, ...) may have queued more actions: run them first.
            if self.session.has_actions() {
                continue;
            }
            if self.session.is_closed() {
                let _ = self.flush(&mut client).await;
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
            match self.flush(&mut client).await {
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
            self.release_idle_buffers();
            match self.read(&mut client).await {
                ReadOutcome::Data => {}
                ReadOutcome::Closed => return Flow::Done,
                ReadOutcome::Timeout(what) => self.session.timeout(what),
                ReadOutcome::Shutdown => self.session.shutdown(),
            }
        }
    }

    /// Runs a recipient lookup for the session, bounded by the command timeout (and the
    /// session's). Shutdown interrupts it: the session then says its 421 and closes.
    async fn validate(&mut self, req: ValidationRequest) {
        let started = Instant::now();
        let until = (started + self.timeouts.command).min(self.deadline);
        let method = req.rule.method.label();
        let checked = tokio::select! {
            r = tokio::time::timeout_at(until.into(), self.backend.validate(&req)) => match r {
                Ok(c) => c,
                Err(_) => Checked {
                    answer: Answer::temp(TempFailCause::Timeout, "no answer within the command timeout"),
                    source: Source::Lookup,
                    refresh_due: false,
                    transition: None,
                },
            },
            _ = self.force_close.changed() => {
                self.session.shutdown();
                return;
            }
        };
        metrics::validation::observe(
            &self.labels.listener,
            method,
            &checked,
            started.elapsed().as_secs_f64(),
        );
        self.session.recipient_validated(checked);
    }

    /// Takes a recipient of the hourly budget from the shared store for the session; the
    /// backend bounds it with `shared_state.timeout`. Shutdown interrupts it.
    async fn take_recipient(&mut self, req: crate::smtp::session::HourlyRequest) {
        let answer = tokio::select! {
            a = self.backend.take_recipient(&req) => a,
            _ = self.force_close.changed() => {
                self.session.shutdown();
                return;
            }
        };
        self.session.recipient_taken(answer);
    }

    /// Runs a sender's authentication for the session, bounded like [`Driver::validate`];
    /// no answer in time is a temporary failure of each lookup asked for.
    async fn verify_sender(&mut self, req: crate::auth::SenderRequest) {
        let until = (Instant::now() + self.timeouts.command).min(self.deadline);
        let answer = tokio::select! {
            r = tokio::time::timeout_at(until.into(), self.backend.verify_sender(&req)) => {
                r.unwrap_or_else(|_| crate::auth::SenderAnswer::timed_out(&req))
            }
            _ = self.force_close.changed() => {
                self.session.shutdown();
                return;
            }
        };
        metrics::sender_auth::observe(&self.labels, &answer);
        self.session.sender_verified(answer);
    }

    /// Runs a message's DKIM and DMARC for the session, bounded like
    /// [`Driver::verify_sender`]; no answer in time is a temporary failure.
    async fn authenticate_message(&mut self, req: crate::auth::MessageRequest) {
        let until = (Instant::now() + self.timeouts.command).min(self.deadline);
        let answer = tokio::select! {
            r = tokio::time::timeout_at(until.into(), self.backend.authenticate_message(&req)) => {
                r.unwrap_or_else(|_| crate::auth::MessageAnswer::timed_out(&req))
            }
            _ = self.force_close.changed() => {
                self.session.shutdown();
                return;
            }
        };
        metrics::sender_auth::observe_message(&self.labels, &answer);
        self.session.message_authenticated(answer);
    }

    async fn read<C: ClientStream>(&mut self, client: &mut C) -> ReadOutcome {
        let in_data = self.session.is_in_data();
        let (until, what) = self
            .reads
            .next(in_data, Instant::now(), &self.timeouts, self.deadline);
        if in_data {
            self.buf.reserve(DATA_CHUNK);
        }
        if *self.force_close.borrow() {
            return ReadOutcome::Shutdown;
        }
        tokio::select! {
            r = tokio::time::timeout_at(until.into(), client.read(&mut self.buf)) => match r {
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

    async fn flush<C: ClientStream>(&mut self, client: &mut C) -> Result<(), WriteStop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let deadline = self.write_deadline();
        let out = std::mem::take(&mut self.out);
        bounded_write(client.write_all(&out), deadline, &mut self.force_close).await
    }

    /// Frees the buffers an idle session would otherwise keep while it waits for a command:
    /// the read buffer once consumed, and the body buffer of the last message. A message
    /// streaming in keeps its read buffer (up to two DATA chunks) from read to read.
    fn release_idle_buffers(&mut self) {
        let in_data = self.session.is_in_data();
        if self.buf.is_empty() && (!in_data || self.buf.capacity() > 2 * DATA_CHUNK) {
            self.buf = Vec::new();
        }
        if !in_data {
            let body = self.session.body_mut();
            if body.is_empty() {
                *body = Vec::new();
            }
        }
    }

    /// Until when the next write may block: see [`write_deadline`]; once shutdown forced the
    /// close, only [`CLOSING_WRITE`] for the 421.
    fn write_deadline(&self) -> WriteDeadline {
        let mut d = write_deadline(&self.timeouts, self.deadline);
        if *self.force_close.borrow() {
            d.at = d.at.min(Instant::now() + CLOSING_WRITE);
        }
        d
    }

    /// Hands the body bytes the session produced to the backend.
    async fn drain_body(&mut self) {
        let body = self.session.body_mut();
        if !body.is_empty() {
            Box::pin(self.backend.write_body(body)).await;
        }
    }

    /// Writes and clears the log lines `serve` collected.
    fn write_logs(&mut self, logs: &mut Vec<Event>) {
        if !logs.is_empty() {
            self.backend.log(logs);
            logs.clear();
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
                Action::AbortMessage => self.backend.abort_message(),
                _ => {}
            }
        }
        self.backend.abort_message();
    }

    fn log(&mut self, e: &Event) {
        self.backend.log(std::slice::from_ref(e));
        metrics::observe_inbound(e, &self.labels);
    }

    async fn upgrade<C: StartTls>(&mut self, plain: C) {
        // A second STARTTLS is refused by the session, so this returns Done. The stream goes
        // straight into `serve`: no local holds a second copy of it while the session runs.
        if let Some(tls) = self.handshake(plain).await {
            let _ = self.serve(tls).await;
        }
    }

    /// Runs the TLS handshake under `timeouts.tls_handshake` and tells the session how it went.
    async fn handshake<C: StartTls>(&mut self, plain: C) -> Option<C::Tls> {
        let started = Instant::now();
        let handshake = Box::pin(plain.start_tls(self.session.wants_client_cert()));
        match tokio::time::timeout(self.timeouts.tls_handshake, handshake).await {
            Ok(Ok((tls, info))) => {
                ::metrics::histogram!(metrics::TLS_HANDSHAKE_SECONDS, "listener" => self.labels.listener.clone())
                    .record(started.elapsed().as_secs_f64());
                self.session.tls_established(info);
                Some(tls)
            }
            Ok(Err(e)) => {
                self.session.tls_failed(&e);
                None
            }
            Err(_) => {
                self.session.tls_failed("handshake timeout");
                None
            }
        }
    }
}
