//! The accept loop of the policy endpoint: TLS (tokio-rustls), then one HTTP/1.1 request
//! per connection (hyper), answered by [`super::http::answer`] from the policies current at
//! that moment (a reload swaps them).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::http::{answer, Served};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// Bound on a whole connection, handshake included: no slow client keeps a slot longer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on reading the request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head hyper buffers (its minimum); a longer one is refused with 431.
const MAX_REQUEST_HEAD: usize = 8192;

/// Accepts until `stop` turns true; open connections are dropped with the loop.
pub(crate) async fn serve(
    socket: TcpListener,
    acceptor: TlsAcceptor,
    served: Arc<ArcSwap<Served>>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let stream = match accepted {
            Ok((s, _)) => {
                backoff = Duration::from_millis(10);
                s
            }
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                tracing::warn!("mta-sts accept: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let served = served.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection(stream, acceptor, served))
                .await;
        });
    }
}

/// One connection: handshake, then one request.
async fn connection(
    stream: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    served: Arc<ArcSwap<Served>>,
) {
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let served = served.load_full();
        async move { Ok::<_, Infallible>(respond(&req, &served)) }
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

/// The hyper response for a request; its body is never read (a GET has none).
fn respond(req: &Request<Incoming>, served: &Served) -> Response<Full<Bytes>> {
    let host = req
        .uri()
        .host()
        .or_else(|| req.headers().get(hyper::header::HOST)?.to_str().ok());
    let a = answer(req.method().as_str(), req.uri().path(), host, served);
    let mut resp = Response::new(Full::new(Bytes::from(a.body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(a.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(a.content_type),
    );
    if a.status == 405 {
        headers.insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
    }
    resp
}
