//! The probe pool against scripted SMTP servers: reply mapping, reuse, coalescing, shedding.

use super::*;
use crate::validate::verdict::Verdict;
use std::sync::atomic::AtomicUsize;
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

#[test]
fn rcpt_codes_map_to_verdicts() {
    for c in [250, 251, 252] {
        assert_eq!(classify_rcpt(c), Verdict::Valid);
    }
    for c in [550, 551, 553, 554] {
        assert_eq!(classify_rcpt(c), Verdict::Invalid);
    }
    assert_eq!(
        classify_rcpt(450),
        Verdict::TempFail(TempFailCause::Server4xx)
    );
    assert_eq!(
        classify_rcpt(354),
        Verdict::TempFail(TempFailCause::Protocol)
    );
}

/// A scripted SMTP server: `rcpt` answers each RCPT; counts connections.
async fn server(
    rcpt: fn(&str) -> &'static str,
    mail: &'static str,
) -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let n = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 internal.test ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let up = line.to_ascii_uppercase();
                    let reply = if up.starts_with("EHLO") {
                        "250-internal.test\r\n250 PIPELINING\r\n"
                    } else if up.starts_with("MAIL") {
                        mail
                    } else if up.starts_with("RCPT") {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        rcpt(&line)
                    } else if up.starts_with("RSET") {
                        "250 2.0.0 Ok\r\n"
                    } else if up.starts_with("QUIT") {
                        let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                        return;
                    } else {
                        "502 5.5.2 Error\r\n"
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    (addr, conns)
}

fn alice_only(line: &str) -> &'static str {
    if line.contains("<alice@") {
        "250 2.1.5 Ok\r\n"
    } else if line.contains("<busy@") {
        "450 4.2.1 Mailbox busy\r\n"
    } else {
        "550 5.1.1 <x>: Recipient address rejected: User unknown in relay recipient table\r\n"
    }
}

#[tokio::test]
async fn probes_share_a_kept_open_connection() {
    let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    let a = pool.check("alice@example.test").await;
    assert_eq!(a.verdict, Verdict::Valid, "{a:?}");
    let a = pool.check("nobody@example.test").await;
    assert_eq!(a.verdict, Verdict::Invalid);
    assert!(a.detail.contains("550 5.1.1"), "{}", a.detail);
    let a = pool.check("busy@example.test").await;
    assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::Server4xx));
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert_eq!(pool.connections_opened(), 1);
    pool.close_idle().await;
}

#[tokio::test]
async fn identical_lookups_in_flight_make_one_probe() {
    let (addr, _) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    let all = join_all((0..10).map(|_| pool.check("nobody@example.test")).collect()).await;
    assert!(all.iter().all(|a| a.verdict == Verdict::Invalid));
    assert_eq!(pool.probes_sent(), 1);
}

#[tokio::test]
async fn over_the_waiting_cap_lookups_are_shed() {
    let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(
        addr,
        CallaheadSettings {
            max_concurrency: 1,
            max_waiting: 2,
            ..CallaheadSettings::default()
        },
    );
    let addrs: Vec<String> = (0..6).map(|i| format!("u{i}@example.test")).collect();
    let answers = join_all(addrs.iter().map(|a| pool.check(a)).collect()).await;
    let shed = answers
        .iter()
        .filter(|a| a.verdict == Verdict::TempFail(TempFailCause::Shed))
        .count();
    // One probing, two waiting, the rest shed.
    assert_eq!(shed, 3, "{answers:?}");
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one connection at most");
}

/// Polls the lookups together, so they overlap in time.
async fn join_all<F: std::future::Future<Output = Answer>>(fs: Vec<F>) -> Vec<Answer> {
    let mut futs: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<Answer>> = vec![None; futs.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(a) => done[i] = Some(a),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn a_refused_null_sender_is_a_tempfail() {
    let (addr, _) = server(alice_only, "553 5.1.7 Null sender not allowed\r\n").await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    let a = pool.check("alice@example.test").await;
    assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::MailRefused));
    assert!(
        a.detail.contains("MAIL FROM:<> refused: 553"),
        "{}",
        a.detail
    );
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_and_a_closed_port_refused() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let pool = ProbePool::new(
        addr,
        CallaheadSettings {
            timeout: Duration::from_millis(200),
            ..CallaheadSettings::default()
        },
    );
    let a = pool.check("alice@example.test").await;
    assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::Timeout));
    drop(l);
    let a = pool.check("alice@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::Refused),
        "{a:?}"
    );
}

#[tokio::test]
async fn an_address_that_would_inject_commands_is_not_sent() {
    let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    for bad in [
        "a@example.test>\r\nRCPT TO:<b@example.test",
        "a\n@example.test",
        "<a@x>",
    ] {
        let a = pool.check(bad).await;
        assert_eq!(
            a.verdict,
            Verdict::TempFail(TempFailCause::Protocol),
            "{bad:?}"
        );
    }
    assert_eq!(conns.load(Ordering::SeqCst), 0, "nothing was sent");
}

#[tokio::test]
async fn a_connection_is_replaced_after_its_share_of_refusals() {
    let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(
        addr,
        CallaheadSettings {
            max_refusals_per_connection: 4,
            ..CallaheadSettings::default()
        },
    );
    for i in 0..10 {
        let a = pool.check(&format!("x{i}@example.test")).await;
        assert_eq!(a.verdict, Verdict::Invalid);
        // Valid answers do not count.
        assert_eq!(
            pool.check("alice@example.test").await.verdict,
            Verdict::Valid
        );
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3, "4 + 4 + 2 refusals");
}

// ---- STARTTLS per the destination's TLS mode ----

mod starttls {
    use super::*;
    use crate::config::outbound::{DestinationControl, DestinationControls, OutboundTls};
    use crate::relay::outbound_tls::OutboundTlsContext;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio_rustls::TlsAcceptor;

    /// Lines a test server received, `tls:`-prefixed once the session is encrypted.
    type Seen = Arc<Mutex<Vec<String>>>;

    /// A CA (written to `dir/ca.pem`) and a server configuration presenting a leaf it
    /// signed for `names`.
    fn pki(dir: &std::path::Path, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca.der().clone()];
        let key: PrivateKeyDer<'static> = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(cfg)
    }

    /// One SMTP dialogue on `s`; returns the socket when the client asked for STARTTLS
    /// (after the 220), `None` when the session ended.
    async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
        s: S,
        seen: &Seen,
        tls: bool,
        offer: bool,
    ) -> Option<S> {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).await.unwrap_or(0) > 0 {
            let cmd = line.trim_end().to_string();
            seen.lock()
                .unwrap()
                .push(format!("{}{cmd}", if tls { "tls:" } else { "" }));
            let up = cmd.to_ascii_uppercase();
            let reply = if up.starts_with("EHLO") && offer && !tls {
                "250-internal.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n"
            } else if up.starts_with("EHLO") {
                "250-internal.test\r\n250 PIPELINING\r\n"
            } else if up == "STARTTLS" && offer && !tls {
                r.get_mut().write_all(b"220 2.0.0 Ready\r\n").await.ok()?;
                return Some(r.into_inner());
            } else if up.starts_with("MAIL") || up.starts_with("RSET") {
                "250 2.0.0 Ok\r\n"
            } else if up.starts_with("RCPT") {
                alice_only(&line)
            } else if up.starts_with("QUIT") {
                let _ = r.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
                return None;
            } else {
                "502 5.5.2 Error\r\n"
            };
            r.get_mut().write_all(reply.as_bytes()).await.ok()?;
            line.clear();
        }
        None
    }

    /// A scripted server that offers STARTTLS when `config` is given.
    async fn tls_server(config: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Seen) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (seen, config) = (log.clone(), config.clone());
                tokio::spawn(async move {
                    s.write_all(b"220 internal.test ESMTP\r\n").await.unwrap();
                    let Some(tcp) = dialogue(s, &seen, false, config.is_some()).await else {
                        return;
                    };
                    let acceptor = TlsAcceptor::from(config.unwrap());
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            seen.lock().unwrap().push("handshake".into());
                            dialogue(tls, &seen, true, true).await;
                        }
                        Err(e) => seen.lock().unwrap().push(format!("handshake failed: {e}")),
                    }
                });
            }
        });
        (addr, seen)
    }

    /// A pool probing `addr` (route host `127.0.0.1`, domain example.test) in `mode`,
    /// through the helper the coordinator uses.
    fn pool(addr: SocketAddr, mode: OutboundTls, ca_file: Option<std::path::PathBuf>) -> ProbePool {
        let controls = DestinationControls {
            default: DestinationControl {
                tls: mode,
                ca_file,
                ..DestinationControl::builtin_default()
            },
            ..DestinationControls::default()
        };
        let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
        let tls = ProbeTls::for_route_host(&controls, ctx, "example.test", "127.0.0.1", addr);
        assert_eq!(
            (tls.target.host.as_str(), tls.target.addr),
            ("127.0.0.1", addr)
        );
        ProbePool::with_tls(CallaheadSettings::default(), tls)
    }

    fn lines(seen: &Seen) -> Vec<String> {
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn required_without_starttls_offered_is_a_tls_tempfail_and_probes_nothing() {
        let (addr, seen) = tls_server(None).await;
        let a = pool(addr, OutboundTls::Required, None)
            .check("alice@example.test")
            .await;
        assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::Tls), "{a:?}");
        assert_eq!(
            a.detail,
            format!(
                "probe {addr}: STARTTLS: TLS is required (required) but the server does not \
                 offer STARTTLS"
            )
        );
        assert!(TempFailCause::Tls.counts_for_breaker());
        let got = lines(&seen);
        assert!(
            !got.iter()
                .any(|l| l.starts_with("MAIL") || l.starts_with("RCPT")),
            "{got:?}"
        );
        // `preferred` goes on in plaintext.
        let a = pool(addr, OutboundTls::Preferred, None)
            .check("alice@example.test")
            .await;
        assert_eq!(a.verdict, Verdict::Valid, "{a:?}");
        assert!(lines(&seen).contains(&"RCPT TO:<alice@example.test>".to_string()));
    }

    #[tokio::test]
    async fn preferred_with_starttls_offered_probes_over_tls_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, seen) = tls_server(Some(pki(dir.path(), &["other.test"]))).await;
        let pool = pool(addr, OutboundTls::Preferred, None);
        assert_eq!(
            pool.check("alice@example.test").await.verdict,
            Verdict::Valid
        );
        assert_eq!(
            pool.check("nobody@example.test").await.verdict,
            Verdict::Invalid
        );
        assert_eq!(pool.connections_opened(), 1);
        let got = lines(&seen);
        assert_eq!(
            got,
            [
                "EHLO localhost",
                "STARTTLS",
                "handshake",
                "tls:EHLO localhost",
                "tls:MAIL FROM:<>",
                "tls:RCPT TO:<alice@example.test>",
                "tls:RSET",
                "tls:MAIL FROM:<>",
                "tls:RCPT TO:<nobody@example.test>",
            ],
            "the certificate is not checked; RCPTs only after the handshake"
        );
        pool.close_idle().await;
    }

    #[tokio::test]
    async fn required_verify_needs_a_certificate_for_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Some(dir.path().join("ca.pem"));
        let (addr, seen) = tls_server(Some(pki(dir.path(), &["mx.other.test"]))).await;
        let a = pool(addr, OutboundTls::RequiredVerify, ca.clone())
            .check("alice@example.test")
            .await;
        assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::Tls), "{a:?}");
        assert!(
            a.detail.contains(
                "STARTTLS: certificate verification failed: certificate name mismatch: \
                 presented DNS:mx.other.test"
            ),
            "{}",
            a.detail
        );
        // The server task records the handshake a moment after the client has given up.
        for _ in 0..100 {
            if lines(&seen).iter().any(|l| l.starts_with("handshake")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = lines(&seen);
        assert_eq!(got, ["EHLO localhost", "STARTTLS", "handshake"]);
        // The same CA, a certificate for the destination domain: verified, probed.
        let dir = tempfile::tempdir().unwrap();
        let ca = Some(dir.path().join("ca.pem"));
        let (addr, seen) = tls_server(Some(pki(dir.path(), &["example.test"]))).await;
        let a = pool(addr, OutboundTls::RequiredVerify, ca)
            .check("alice@example.test")
            .await;
        assert_eq!(a.verdict, Verdict::Valid, "{a:?}");
        assert!(lines(&seen).contains(&"tls:RCPT TO:<alice@example.test>".to_string()));
    }
}

/// A server that offers SMTPUTF8 when `offer`, and refuses a MAIL for a UTF-8 address
/// without the parameter (RFC 6531: 553 5.6.7).
async fn utf8_server(offer: bool) -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let rcpts = std::sync::Arc::new(AtomicUsize::new(0));
    let n = rcpts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 internal.test ESMTP\r\n").await.unwrap();
                let (mut line, mut declared) = (String::new(), false);
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let reply = if line.starts_with("EHLO") && offer {
                        "250-internal.test\r\n250 SMTPUTF8\r\n"
                    } else if line.starts_with("EHLO") {
                        "250 internal.test\r\n"
                    } else if line.starts_with("MAIL") {
                        declared = line.contains(" SMTPUTF8");
                        "250 2.1.0 Ok\r\n"
                    } else if line.starts_with("RCPT") {
                        n.fetch_add(1, Ordering::SeqCst);
                        if line.is_ascii() || declared {
                            "250 2.1.5 Ok\r\n"
                        } else {
                            "553 5.6.7 SMTPUTF8 needed\r\n"
                        }
                    } else {
                        "250 Ok\r\n"
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    (addr, rcpts)
}

#[tokio::test]
async fn a_non_ascii_address_is_probed_with_smtputf8_or_not_at_all() {
    let (addr, rcpts) = utf8_server(true).await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    let a = pool.check("jürgen@example.test").await;
    assert_eq!(a.verdict, Verdict::Valid, "{a:?}");
    assert_eq!(rcpts.load(Ordering::SeqCst), 1);
    // Without SMTPUTF8 the server could never receive it: invalid, and nothing is asked.
    let (addr, rcpts) = utf8_server(false).await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    let a = pool.check("jürgen@example.test").await;
    assert_eq!(a.verdict, Verdict::Invalid, "{a:?}");
    assert!(a.detail.contains("SMTPUTF8"), "{}", a.detail);
    assert_eq!(rcpts.load(Ordering::SeqCst), 0);
    assert_eq!(
        pool.check("ascii@example.test").await.verdict,
        Verdict::Valid
    );
}
