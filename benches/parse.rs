//! Micro-benchmarks of the SMTP parsers: command lines, DATA decoding (MB/s), and one whole
//! message transaction through the sans-IO session. `cargo bench --bench parse`; the numbers
//! are in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use mxgate::policy::flow::MailFlowPolicy;
use mxgate::policy::hat::Classification;
use mxgate::policy::rat::{RatAction, RatEntry, RecipientAccessTable, RecipientPattern};
use mxgate::policy::rate::{RateLimiter, SystemClock};
use mxgate::smtp::command::parse_command;
use mxgate::smtp::data::DataReader;
use mxgate::smtp::line::{LineEvent, LineReader};
use mxgate::smtp::session::{Action, Opening, Session, SessionEnv, SessionParams};

const COMMANDS: [&[u8]; 6] = [
    b"EHLO mail-relay.sender.example",
    b"MAIL FROM:<bounces+1234@news.sender.example> SIZE=4096 BODY=8BITMIME",
    b"RCPT TO:<alice.smith@example.com>",
    b"DATA",
    b"RSET",
    b"QUIT",
];

fn commands(c: &mut Criterion) {
    let mut g = c.benchmark_group("command");
    g.throughput(Throughput::Elements(1));
    for (name, line) in ["ehlo", "mail", "rcpt", "data"].iter().zip(COMMANDS) {
        g.bench_function(*name, |b| b.iter(|| parse_command(black_box(line))));
    }
    // Framing plus parsing of a pipelined client burst (RFC 2920): 6 commands per iteration.
    let mut burst = Vec::new();
    for l in COMMANDS {
        burst.extend_from_slice(l);
        burst.extend_from_slice(b"\r\n");
    }
    g.throughput(Throughput::Elements(COMMANDS.len() as u64));
    g.bench_function("pipelined_burst_framed", |b| {
        b.iter(|| {
            let mut r = LineReader::new(512);
            let mut buf = black_box(&burst[..]);
            let mut n = 0;
            while let LineEvent::Line { line, consumed } = r.next(buf) {
                n += usize::from(parse_command(line).is_ok());
                buf = &buf[consumed..];
            }
            n
        })
    });
    g.finish();
}

/// A message body of `size` bytes: 76-character lines, every 50th starting with a dot
/// (dot-stuffed on the wire), ending with the CRLF.CRLF terminator.
fn wire_message(size: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(size + 128);
    let mut i = 0u32;
    while m.len() < size {
        if i.is_multiple_of(50) {
            m.extend_from_slice(b"..");
        }
        for k in 0..76u32 {
            m.push(b'a' + ((i + k) % 26) as u8);
        }
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn data_reader(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_reader");
    for (name, size, chunk) in [
        ("4KiB_one_read", 4 * 1024, usize::MAX),
        ("1MiB_64KiB_reads", 1024 * 1024, 64 * 1024),
        ("1MiB_4KiB_reads", 1024 * 1024, 4 * 1024),
    ] {
        let msg = wire_message(size);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        let mut out = Vec::with_capacity(msg.len());
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let mut r = DataReader::new();
                for part in msg.chunks(chunk.min(msg.len())) {
                    r.feed(black_box(part), &mut out).unwrap();
                }
                assert!(r.is_done());
                out.len()
            })
        });
    }
    g.finish();
}

struct BenchEnv;

impl SessionEnv for BenchEnv {
    fn next_mid(&self) -> Result<u64, String> {
        Ok(1)
    }
    fn now_rfc2822(&self) -> String {
        "Thu, 01 Jan 2026 00:00:00 +0000".into()
    }
    fn now_unix(&self) -> u64 {
        1_767_225_600
    }
}

fn session_params() -> SessionParams {
    let mut policy = MailFlowPolicy::builtin_default("ACCEPTED");
    policy.max_recipients_per_hour.max = None;
    policy.max_concurrent_connections_per_ip.max = None;
    SessionParams {
        icid: 1,
        listener: "inbound".into(),
        hostname: "mx.example.com".into(),
        local_ip: "127.0.0.1".parse().unwrap(),
        peer_ip: "192.0.2.1".parse().unwrap(),
        rdns_host: "mail.sender.example".into(),
        rdns_verified: true,
        classification: Classification {
            group: "ALL".into(),
            matched: "ALL".into(),
            policy: Arc::new(policy),
            continued: Vec::new(),
        },
        rat: Some(Arc::new(RecipientAccessTable {
            name: "inbound".into(),
            entries: vec![RatEntry {
                pattern: RecipientPattern::parse("example.com").unwrap(),
                action: RatAction::Accept,
                reply: None,
                validation: None,
            }],
            postmaster: None,
        })),
        max_command_line: 512,
        max_bad_commands: 10,
        tls_available: true,
        rate: RateLimiter::new(Arc::new(SystemClock)),
        env: Arc::new(BenchEnv),
        reports: None,
        shared_limits: None,
    }
}

/// One whole session as the connection driver runs it (greeting, EHLO, MAIL, RCPT, DATA with
/// a 4 KiB message, commit, QUIT), without sockets or disk: the protocol CPU per message.
fn session(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    let params = session_params();
    let mut client = Vec::new();
    client.extend_from_slice(
        b"EHLO mail.sender.example\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
    );
    let mut body = b"Message-ID: <1@sender.example>\r\nSubject: hello\r\n\r\n".to_vec();
    body.extend_from_slice(&wire_message(4 * 1024));
    g.bench_function("4KiB_message_transaction", |b| {
        b.iter_batched(
            || params.clone(),
            |p| {
                let mut s = Session::new(p);
                s.start(Opening::Normal);
                let mut actions = 0usize;
                let mut feed = |s: &mut Session, input: &[u8]| {
                    let mut pos = 0;
                    while pos < input.len() {
                        let used = s.feed(&input[pos..]);
                        for a in s.take_actions() {
                            actions += 1;
                            if let Action::CommitMessage(_) = a {
                                s.committed(Ok(()));
                            }
                        }
                        s.body_mut().clear();
                        if used == 0 {
                            break;
                        }
                        pos += used;
                    }
                };
                feed(&mut s, &client);
                feed(&mut s, &body);
                feed(&mut s, b"QUIT\r\n");
                s.finish();
                actions + s.take_actions().len()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, commands, data_reader, session);
criterion_main!(benches);
