//! The TLS half of STARTTLS, shared by delivery connections and call-ahead probes
//! (`validate::callahead`): after the server's 220, the handshake with the outbound client
//! configuration and the server name of [`server_name_for`], then the certificate check the
//! destination's mode demands. What a failure means (give up, go on, log) is the caller's.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::UnixTime;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::outbound::OutboundTls;
use crate::net::tls::{cipher_name, protocol_name};
use crate::relay::outbound_tls::{server_name_for, OutboundTlsContext};

use super::Target;

/// An encrypted session and what was negotiated on it.
pub(crate) struct Handshake {
    /// The encrypted stream.
    pub(crate) stream: TlsStream<TcpStream>,
    /// `TLSv1.3` / `TLSv1.2`.
    pub(crate) protocol: String,
    /// Cipher suite.
    pub(crate) cipher: String,
    /// `None` when the mode does not verify; else the identity that matched, or why the
    /// certificate check failed.
    pub(crate) verification: Option<Result<String, String>>,
}

/// Runs the TLS handshake on `tcp` (the server has answered STARTTLS with 220) within
/// `limit`, then checks the certificate as `mode` demands (trust roots from `ca_file`, or
/// the webpki roots). Err: why the handshake failed.
pub(crate) async fn handshake(
    tcp: TcpStream,
    target: &Target,
    tls: &OutboundTlsContext,
    mode: OutboundTls,
    ca_file: Option<&Path>,
    limit: Duration,
) -> Result<Handshake, String> {
    let connector = TlsConnector::from(tls.client_config());
    let name = server_name_for(&target.host, &target.domain, target.addr.ip());
    let stream = match timeout(limit, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    let (protocol, cipher, certs) = {
        let c = stream.get_ref().1;
        (
            protocol_name(c.protocol_version()),
            cipher_name(c.negotiated_cipher_suite()),
            c.peer_certificates()
                .map(|c| c.to_vec())
                .unwrap_or_default(),
        )
    };
    let verification = mode.verifies().then(|| {
        tls.verify(
            mode,
            ca_file,
            &certs,
            &target.domain,
            &target.identity,
            UnixTime::now(),
        )
    });
    Ok(Handshake {
        stream,
        protocol,
        cipher,
        verification,
    })
}
