//! The one internal server (downstream SMTP) of the tests, in-process on a real socket:
//! records what it accepts and every line of every session, and is programmable (STARTTLS
//! states, capabilities, replies per recipient, to DATA and to the final dot, a slow final
//! reply). [`Sink::start`] is the plain internal server of the relay tests, on a chosen
//! address, answering by recipient prefix (`nouser`, `later`, `ctrl`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What the server does about STARTTLS.
#[derive(Clone)]
pub enum ServerTls {
    /// STARTTLS not offered (and refused with 502 if tried).
    NotOffered,
    /// Offered, answered `454 4.7.0 TLS not available`.
    Refuse454,
    /// Offered, answered 220, then non-TLS garbage once the ClientHello arrives, then close.
    Garbage,
    /// Offered, answered 220, then a real handshake with this configuration.
    Offer(Arc<ServerConfig>),
}

/// Behaviour of the test server.
#[derive(Clone)]
pub struct SinkConfig {
    pub tls: ServerTls,
    pub greeting: String,
    pub pipelining: bool,
    pub size: Option<u64>,
    pub smtputf8: bool,
    /// Refuse EHLO with 502 (the client must fall back to HELO).
    pub reject_ehlo: bool,
    /// Reply per recipient address; `DROP` closes the connection, `STALL` never answers.
    pub rcpt_replies: Vec<(String, String)>,
    /// Reply to the DATA command instead of 354.
    pub data_reply: Option<String>,
    /// Reply to the final dot instead of 250.
    pub final_reply: Option<String>,
    /// Send an extra line in the same write as the 220 to STARTTLS.
    pub extra_after_starttls: bool,
    /// Advertise ENHANCEDSTATUSCODES.
    pub enhanced_status_codes: bool,
    /// Reply per recipient local-part prefix, after `rcpt_replies`.
    pub rcpt_prefix_replies: Vec<(String, String)>,
    /// Wait this long before answering the final dot (a slow server).
    pub data_delay: Duration,
    /// Where to listen (`127.0.0.1:0` for any port).
    pub bind: String,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            tls: ServerTls::NotOffered,
            greeting: "220 sink.test ESMTP test sink".into(),
            pipelining: true,
            size: Some(50_000_000),
            smtputf8: true,
            reject_ehlo: false,
            rcpt_replies: Vec::new(),
            data_reply: None,
            final_reply: None,
            extra_after_starttls: false,
            enhanced_status_codes: true,
            rcpt_prefix_replies: Vec::new(),
            data_delay: Duration::ZERO,
            bind: "127.0.0.1:0".into(),
        }
    }
}

impl SinkConfig {
    /// The plain internal server of the relay tests on `bind`: PIPELINING and 8BITMIME only;
    /// recipients whose local part starts with `nouser` get `550 5.1.1`, `later` get
    /// `451 4.3.0`, `ctrl` a 550 whose text carries ESC and a bare CR (a hostile server).
    pub fn plain(bind: &str) -> SinkConfig {
        SinkConfig {
            greeting: "220 sink.test ESMTP".into(),
            size: None,
            smtputf8: false,
            enhanced_status_codes: false,
            rcpt_prefix_replies: vec![
                ("ctrl".into(), "550 5.1.1 Bad \x1b[31m\rINJ".into()),
                ("nouser".into(), "550 5.1.1 No such user".into()),
                ("later".into(), "451 4.3.0 Try again later".into()),
            ],
            final_reply: Some("250 2.0.0 queued".into()),
            bind: bind.into(),
            ..SinkConfig::default()
        }
    }
}

/// One message the server accepted.
#[derive(Debug, Clone)]
pub struct Received {
    /// The reverse path, without the angle brackets (empty for a DSN).
    pub from: String,
    /// The MAIL command as sent, parameters included (no CRLF).
    pub mail_cmd: String,
    pub rcpts: Vec<String>,
    /// The body, de-stuffed, without the terminating dot line, as text (lossy UTF-8).
    pub body: String,
    /// The same body as bytes.
    pub bytes: Vec<u8>,
    /// Arrived over TLS.
    pub tls: bool,
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct SinkState {
    /// `C: …` / `S: …` lines (body lines left out), all connections in order.
    pub transcript: Vec<String>,
    pub messages: Vec<Received>,
    /// For each MAIL command: were RCPT and DATA already in the read buffer (pipelined)?
    pub mail_pipelined: Vec<bool>,
    /// SNI of each completed TLS handshake.
    pub sni: Vec<Option<String>>,
    /// Handshake errors seen by the server.
    pub handshake_errors: Vec<String>,
}

/// A running test server; stops when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<SinkState>>,
    task: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    /// The plain internal server ([`SinkConfig::plain`]) on `bind` (`127.0.0.1:0` for any
    /// port, or a port kept free for it).
    pub async fn start(bind: &str) -> Sink {
        Self::start_with(SinkConfig::plain(bind)).await
    }

    /// [`Sink::start`] answering the final dot only after `delay`.
    pub async fn start_with_delay(bind: &str, delay: Duration) -> Sink {
        Self::start_with(SinkConfig {
            data_delay: delay,
            ..SinkConfig::plain(bind)
        })
        .await
    }

    /// A server behaving as `cfg` says.
    pub async fn start_with(cfg: SinkConfig) -> Sink {
        let listener = TcpListener::bind(cfg.bind.as_str()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(SinkState::default()));
        let cfg = Arc::new(cfg);
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(session(tcp, cfg.clone(), st.clone()));
            }
        });
        Sink { addr, state, task }
    }

    /// Stops accepting (the port closes).
    pub fn stop(self) {}

    /// The Message-ID of each message received, in order (without the angle brackets).
    pub fn message_ids(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(|m| {
                m.body.lines().find_map(|l| {
                    l.strip_prefix("Message-ID: <")
                        .map(|v| v.trim_end_matches('>').to_string())
                })
            })
            .collect()
    }

    /// `C: …` / `S: …` lines of every session so far.
    pub fn transcript(&self) -> Vec<String> {
        self.state.lock().unwrap().transcript.clone()
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    /// The command lines received so far.
    pub fn commands(&self) -> Vec<String> {
        self.transcript()
            .into_iter()
            .filter_map(|l| l.strip_prefix("C: ").map(str::to_string))
            .collect()
    }
}

enum End {
    Quit,
    Closed,
    StartTls,
}

fn note(st: &Mutex<SinkState>, line: String) {
    st.lock().unwrap().transcript.push(line);
}

async fn session(tcp: TcpStream, cfg: Arc<SinkConfig>, st: Arc<Mutex<SinkState>>) {
    let mut r = BufReader::new(tcp);
    if say(&mut r, &st, &format!("{}\r\n", cfg.greeting))
        .await
        .is_err()
    {
        return;
    }
    if !cfg.greeting.starts_with('2') {
        let _ = smtp_loop(&mut r, &cfg, &st, false).await;
        return;
    }
    if !matches!(smtp_loop(&mut r, &cfg, &st, false).await, End::StartTls) {
        return;
    }
    let mut tcp = r.into_inner();
    match &cfg.tls {
        ServerTls::Garbage => {
            let mut hello = [0u8; 64];
            let _ = tcp.read(&mut hello).await;
            let _ = tcp
                .write_all(b"this is not a TLS record, just plaintext garbage\r\n")
                .await;
            let _ = tcp.shutdown().await;
        }
        ServerTls::Offer(sc) => {
            let acceptor = TlsAcceptor::from(sc.clone());
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    st.lock().unwrap().sni.push(sni);
                    note(&st, "-- TLS established".into());
                    let mut r = BufReader::new(tls);
                    let _ = smtp_loop(&mut r, &cfg, &st, true).await;
                    let _ = r.get_mut().shutdown().await;
                }
                Ok(Err(e)) => {
                    st.lock().unwrap().handshake_errors.push(e.to_string());
                    note(&st, format!("-- TLS handshake failed: {e}"));
                }
                Err(_) => note(&st, "-- TLS handshake timed out".into()),
            }
        }
        _ => {}
    }
}

async fn say<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut BufReader<S>,
    st: &Mutex<SinkState>,
    text: &str,
) -> std::io::Result<()> {
    for l in text.split_terminator("\r\n") {
        note(st, format!("S: {l}"));
    }
    r.get_mut().write_all(text.as_bytes()).await?;
    r.get_mut().flush().await
}

async fn smtp_loop<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut BufReader<S>,
    cfg: &SinkConfig,
    st: &Mutex<SinkState>,
    tls: bool,
) -> End {
    let mut from: Option<String> = None;
    let mut mail_cmd = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return End::Closed,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        note(st, format!("C: {text}"));
        let upper = text.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("").to_string();
        let reply: String = match verb.as_str() {
            "EHLO" if cfg.reject_ehlo => "502 5.5.1 EHLO not implemented\r\n".into(),
            "EHLO" => {
                let mut lines = vec!["sink.test greets you".to_string()];
                if cfg.pipelining {
                    lines.push("PIPELINING".into());
                }
                if let Some(n) = cfg.size {
                    lines.push(format!("SIZE {n}"));
                }
                if cfg.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                lines.push("8BITMIME".into());
                if !tls && !matches!(cfg.tls, ServerTls::NotOffered) {
                    lines.push("STARTTLS".into());
                }
                if cfg.enhanced_status_codes {
                    lines.push("ENHANCEDSTATUSCODES".into());
                }
                let n = lines.len();
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}\r\n", if i + 1 == n { ' ' } else { '-' }))
                    .collect()
            }
            "HELO" => "250 sink.test\r\n".into(),
            "STARTTLS" if tls => "503 5.5.1 TLS already active\r\n".into(),
            "STARTTLS" => match cfg.tls {
                ServerTls::NotOffered => "502 5.5.1 STARTTLS not offered\r\n".into(),
                ServerTls::Refuse454 => "454 4.7.0 TLS not available\r\n".into(),
                _ => {
                    let mut t = String::from("220 2.0.0 Ready to start TLS\r\n");
                    if cfg.extra_after_starttls {
                        t.push_str("250 injected\r\n");
                    }
                    if say(r, st, &t).await.is_err() {
                        return End::Closed;
                    }
                    return End::StartTls;
                }
            },
            "MAIL" => {
                let buffered = String::from_utf8_lossy(r.buffer()).to_ascii_uppercase();
                st.lock()
                    .unwrap()
                    .mail_pipelined
                    .push(buffered.contains("RCPT TO:") && buffered.contains("DATA\r\n"));
                from = Some(text[10.min(text.len())..].to_string());
                mail_cmd = text.clone();
                rcpts.clear();
                "250 2.1.0 Ok\r\n".into()
            }
            "RCPT" => {
                let addr = text
                    .split_once('<')
                    .and_then(|(_, a)| a.split_once('>'))
                    .map(|(a, _)| a.to_string())
                    .unwrap_or_default();
                let custom = cfg
                    .rcpt_replies
                    .iter()
                    .find(|(a, _)| *a == addr)
                    .or_else(|| {
                        cfg.rcpt_prefix_replies
                            .iter()
                            .find(|(p, _)| addr.starts_with(p.as_str()))
                    })
                    .map(|(_, r)| r.clone());
                match custom.as_deref() {
                    Some("DROP") => {
                        note(st, "-- dropped".into());
                        return End::Closed;
                    }
                    Some("STALL") => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return End::Closed;
                    }
                    Some(r) => format!("{r}\r\n"),
                    None => {
                        rcpts.push(addr);
                        "250 2.1.5 Ok\r\n".into()
                    }
                }
            }
            "DATA" => {
                if let Some(d) = &cfg.data_reply {
                    format!("{d}\r\n")
                } else if from.is_none() || rcpts.is_empty() {
                    "554 5.5.1 No valid recipients\r\n".into()
                } else {
                    if say(r, st, "354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await
                        .is_err()
                    {
                        return End::Closed;
                    }
                    let mut body = Vec::new();
                    loop {
                        line.clear();
                        match r.read_until(b'\n', &mut line).await {
                            Ok(0) | Err(_) => return End::Closed,
                            Ok(_) => {}
                        }
                        if line == b".\r\n" {
                            break;
                        }
                        let l: &[u8] = if line.first() == Some(&b'.') {
                            &line[1..]
                        } else {
                            &line
                        };
                        body.extend_from_slice(l);
                    }
                    note(st, format!("C: <{} body bytes>", body.len()));
                    note(st, "C: .".into());
                    let fin = cfg
                        .final_reply
                        .clone()
                        .unwrap_or_else(|| "250 2.0.0 Ok: queued as TEST".into());
                    tokio::time::sleep(cfg.data_delay).await;
                    if fin.starts_with('2') {
                        let arg = from.clone().unwrap_or_default();
                        let arg = arg.trim();
                        // The address between the brackets; parameters may follow.
                        let address = arg
                            .strip_prefix('<')
                            .and_then(|a| a.split_once('>'))
                            .map_or(arg, |(a, _)| a);
                        st.lock().unwrap().messages.push(Received {
                            from: address.to_string(),
                            mail_cmd: mail_cmd.clone(),
                            rcpts: rcpts.clone(),
                            body: String::from_utf8_lossy(&body).into_owned(),
                            bytes: body,
                            tls,
                        });
                    }
                    from = None;
                    rcpts.clear();
                    format!("{fin}\r\n")
                }
            }
            "RSET" => {
                from = None;
                rcpts.clear();
                "250 2.0.0 Ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".into(),
            "QUIT" => {
                let _ = say(r, st, "221 2.0.0 Bye\r\n").await;
                return End::Quit;
            }
            _ => "500 5.5.2 Error: command not recognized\r\n".into(),
        };
        if say(r, st, &reply).await.is_err() {
            return End::Closed;
        }
    }
}
