//! The accept loop of the policy endpoint: TLS (tokio-rustls), then one HTTP/1.1 request
//! per connection (hyper), answered by [`super::http::answer`] from the policies current at
//! that moment (a reload swaps them), or — a report POST to the TLS-RPT intake's path — by
//! the intake ([`super::http::report_answer`]).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::http::{answer, report_answer, report_method_answer, route, Answer, Route, Served};
use crate::mail_log::{Event, MailLog};
use crate::tlsrpt::ingest::{refused, Outcome};
use crate::tlsrpt::intake::Intake;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// Connections one client (an IPv4 address, an IPv6 /64) holds at once; more are closed at
/// once. A sender fetching a policy needs one: a few slow clients must not take the slots
/// every other sender's first policy fetch needs (a failed fetch is a downgrade).
const MAX_CONNECTIONS_PER_CLIENT: u32 = 8;
/// Bound on reading a report POST's body once its head is in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a whole connection, handshake included: no slow client keeps a slot longer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on reading the request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head hyper buffers (its minimum); a longer one is refused with 431.
const MAX_REQUEST_HEAD: usize = 8192;
/// Largest report body read (the decoder's own cap refuses it past 1 MiB; this bounds the
/// memory a POST can take before that).
const MAX_REPORT_BODY: usize = (1 << 20) + 1;

/// What the connections share: the policies, the TLS-RPT intake and the mail log; a reload
/// swaps the first two.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// The policies served.
    pub served: Arc<ArcSwap<Served>>,
    /// The report intake, when `policies/tlsrpt.yaml` sets `https_path`.
    pub intake: Arc<ArcSwapOption<Intake>>,
    /// Where report outcomes are logged.
    pub log: Arc<MailLog>,
}

/// Accepts until `stop` turns true; open connections are dropped with the loop.
pub(crate) async fn serve(
    socket: TcpListener,
    acceptor: TlsAcceptor,
    endpoint: Endpoint,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let clients = Clients::default();
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = stop.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok((s, peer)) => {
                backoff = Duration::from_millis(10);
                (s, peer)
            }
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                tracing::warn!("mta-sts accept: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(client) = clients.take(peer.ip()) else {
            tracing::debug!(
                "mta-sts: {} holds {MAX_CONNECTIONS_PER_CLIENT} connections, closing another",
                peer.ip()
            );
            continue;
        };
        let acceptor = acceptor.clone();
        let endpoint = endpoint.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _client = client;
            let conn = connection(stream, peer, acceptor, endpoint);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

/// Open connections per client key ([`client_key`]).
#[derive(Clone, Default)]
struct Clients(Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, u32>>>);

/// One connection's place in [`Clients`], given back when dropped.
struct ClientSlot {
    clients: Clients,
    key: IpAddr,
}

impl Clients {
    /// A place for a connection from `ip`, unless its client holds the maximum.
    fn take(&self, ip: IpAddr) -> Option<ClientSlot> {
        let key = client_key(ip);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clone(),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.clients.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Who a connection counts for: an IPv4 address, or an IPv6 /64 (one host has a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// One connection: handshake, then one request.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    endpoint: Endpoint,
) {
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let endpoint = endpoint.clone();
        async move { Ok::<_, Infallible>(respond(req, &endpoint, peer).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        // One policy per connection is all a sender fetches.
        .keep_alive(false);
    if let Err(e) = http.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!("mta-sts connection: {e}");
    }
}

/// The hyper response for a request; only a report POST's body is read.
async fn respond(
    req: Request<Incoming>,
    endpoint: &Endpoint,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    let intake = endpoint.intake.load_full();
    let report_path = intake
        .as_ref()
        .and_then(|i| i.settings().https_path.clone());
    let method = req.method().as_str().to_owned();
    let a = match (
        route(&method, req.uri().path(), report_path.as_deref()),
        intake,
    ) {
        (Route::Report, Some(intake)) => {
            let outcome = report(req, intake).await;
            endpoint.log.log(&Event::TlsRptReport {
                via: format!("HTTPS from {}", peer.ip()),
                outcome: outcome.label(),
                detail: outcome.describe(),
            });
            report_answer(&outcome)
        }
        (Route::ReportMethod, _) => report_method_answer(),
        _ => {
            let host = req
                .uri()
                .host()
                .or_else(|| req.headers().get(hyper::header::HOST)?.to_str().ok());
            answer(&method, req.uri().path(), host, &endpoint.served.load())
        }
    };
    http_response(a)
}

/// Reads a report POST's body (bounded) and hands it to the intake.
async fn report(req: Request<Incoming>, intake: Arc<Intake>) -> Outcome {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_REPORT_BODY) {
        return refused(Outcome::TooLarge);
    }
    let read = Limited::new(req.into_body(), MAX_REPORT_BODY).collect();
    let Ok(read) = tokio::time::timeout(BODY_TIMEOUT, read).await else {
        return refused(Outcome::Malformed(format!(
            "request body not received within {} s",
            BODY_TIMEOUT.as_secs()
        )));
    };
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return refused(Outcome::TooLarge),
        // The client went away, or sent a body hyper could not frame.
        Err(e) => return refused(Outcome::Malformed(format!("request body: {e}"))),
    };
    let now = chrono::Utc::now().timestamp();
    tokio::task::spawn_blocking(move || intake.post(&body, &content_type, now))
        .await
        .unwrap_or_else(|e| Outcome::StoreFailed(format!("intake task failed: {e}")))
}

/// The hyper response of an answer.
fn http_response(a: Answer) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(a.body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(a.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(a.content_type),
    );
    if let Some(allow) = a.allow {
        headers.insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static(allow),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_share_and_gets_it_back() {
        let c = Clients::default();
        let ip: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let slots: Vec<_> = (0..MAX_CONNECTIONS_PER_CLIENT)
            .map(|i| c.take(if i % 2 == 0 { ip } else { same_64 }).unwrap())
            .collect();
        assert!(c.take(ip).is_none() && c.take(same_64).is_none());
        assert!(c.take("2001:db8:1:3::1".parse().unwrap()).is_some());
        assert!(c.take("192.0.2.1".parse().unwrap()).is_some());
        drop(slots);
        assert!(c.take(ip).is_some());
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }
}
