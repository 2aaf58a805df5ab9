//! PROXY protocol v1/v2 (HAProxy) header parsing, for listeners behind a load balancer.

use std::net::{IpAddr, SocketAddr};

use ppp::v1;
use ppp::v2;
use ppp::{HeaderResult, PartialResult};

use crate::net::bind::canonical;

/// Longest header we wait for: v1 is at most 107 bytes; v2 is 16 + a 16-bit length, but
/// addresses plus the TLVs load balancers send fit well within this.
pub(crate) const MAX_HEADER: usize = 1024;

/// Longest PROXY v1 header, CRLF included (the spec's limit).
const MAX_V1_HEADER: usize = 107;

/// Result of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProxyParse {
    /// More bytes are needed.
    Incomplete,
    /// A header of `consumed` bytes; `source` is the real client (`None` for LOCAL/UNKNOWN,
    /// meaning the load balancer's own health check: use the socket's address).
    Header {
        /// Header length.
        consumed: usize,
        /// Real client address.
        source: Option<SocketAddr>,
        /// Address the client connected to at the load balancer.
        destination: Option<SocketAddr>,
    },
    /// Not a valid PROXY header.
    Invalid(String),
}

/// Why a connection was closed before SMTP because of the PROXY protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The socket's peer is not in `proxy_protocol.trusted`.
    UntrustedSource,
    /// No whole header within `proxy_protocol.timeout`.
    Timeout,
    /// The connection ended before a whole header.
    Closed,
    /// Not a valid PROXY header (or longer than [`MAX_HEADER`]).
    Malformed(String),
    /// Reading failed.
    Io(String),
}

impl Refusal {
    /// The `reason` label of `mxgate_proxy_refused_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Refusal::UntrustedSource => "untrusted_source",
            Refusal::Timeout => "timeout",
            Refusal::Closed => "closed",
            Refusal::Malformed(_) => "malformed",
            Refusal::Io(_) => "io_error",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UntrustedSource => f.write_str("not a trusted PROXY source"),
            Refusal::Timeout => f.write_str("timeout waiting for PROXY header"),
            Refusal::Closed => f.write_str("connection closed before PROXY header"),
            Refusal::Malformed(m) | Refusal::Io(m) => f.write_str(m),
        }
    }
}

/// Parses a PROXY v1 or v2 header at the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> ProxyParse {
    if buf.is_empty() {
        return ProxyParse::Incomplete;
    }
    // ppp parses a v1 line as far as it goes and calls a cut-off port invalid: wait for the
    // CRLF (v1 is one line of at most 107 bytes) so a header split across reads is whole.
    if buf.starts_with(b"PROXY ") {
        let line = &buf[..buf.len().min(MAX_V1_HEADER)];
        if !line.windows(2).any(|w| w == b"\r\n") {
            return if buf.len() >= MAX_V1_HEADER {
                ProxyParse::Invalid(format!("PROXY v1: no CRLF within {MAX_V1_HEADER} bytes"))
            } else {
                ProxyParse::Incomplete
            };
        }
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            ProxyParse::Invalid("PROXY header too long".into())
        } else {
            ProxyParse::Incomplete
        };
    }
    let parsed = match result {
        HeaderResult::V1(Ok(h)) => {
            let (source, destination) = match h.addresses {
                v1::Addresses::Tcp4(a) => (
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
                    Some(SocketAddr::new(
                        IpAddr::V4(a.destination_address),
                        a.destination_port,
                    )),
                ),
                v1::Addresses::Tcp6(a) => (
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
                    Some(SocketAddr::new(
                        IpAddr::V6(a.destination_address),
                        a.destination_port,
                    )),
                ),
                v1::Addresses::Unknown => (None, None),
            };
            ProxyParse::Header {
                consumed: h.header.len(),
                source,
                destination,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let (source, destination) = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => (
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
                    Some(SocketAddr::new(
                        IpAddr::V4(a.destination_address),
                        a.destination_port,
                    )),
                ),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => (
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
                    Some(SocketAddr::new(
                        IpAddr::V6(a.destination_address),
                        a.destination_port,
                    )),
                ),
                _ => (None, None),
            };
            ProxyParse::Header {
                consumed: h.header.len(),
                source,
                destination,
            }
        }
        HeaderResult::V1(Err(e)) => ProxyParse::Invalid(format!("PROXY v1: {e}")),
        HeaderResult::V2(Err(e)) => ProxyParse::Invalid(format!("PROXY v2: {e}")),
    };
    // A TCP6 header may carry an IPv4 client as `::ffff:a.b.c.d`: use the IPv4 address.
    match parsed {
        ProxyParse::Header {
            consumed,
            source,
            destination,
        } => ProxyParse::Header {
            consumed,
            source: source.map(canonical),
            destination: destination.map(canonical),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_header_and_following_bytes() {
        let input = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO x\r\n";
        match parse(input) {
            ProxyParse::Header {
                consumed, source, ..
            } => {
                assert_eq!(&input[consumed..], b"EHLO x\r\n");
                assert_eq!(source, Some("192.0.2.7:40000".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), ProxyParse::Incomplete);
        assert!(matches!(
            parse(b"EHLO client.example\r\n"),
            ProxyParse::Invalid(_)
        ));
    }

    #[test]
    fn trust_22_v1_waits_for_crlf() {
        let header = b"PROXY TCP4 192.0.2.43 127.0.0.1 4343 3402\r\n";
        // Every cut of the header (a sender writing byte by byte) waits for more.
        for cut in 1..header.len() {
            assert_eq!(
                parse(&header[..cut]),
                ProxyParse::Incomplete,
                "{:?}",
                String::from_utf8_lossy(&header[..cut])
            );
        }
        assert!(matches!(
            parse(header),
            ProxyParse::Header { consumed: 43, source: Some(s), .. } if s == "192.0.2.43:4343".parse().unwrap()
        ));
        // Bad fields are still refused once the line is complete.
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.43 127.0.0.1 4343 \r\n"),
            ProxyParse::Invalid(_)
        ));
        // No CRLF within the 107 bytes v1 allows: refused, not waited for.
        let mut long = b"PROXY TCP4 192.0.2.43 127.0.0.1 4343 3402".to_vec();
        long.resize(107, b' ');
        assert_eq!(parse(&long[..106]), ProxyParse::Incomplete);
        assert!(matches!(parse(&long), ProxyParse::Invalid(m) if m.contains("107")));
    }

    #[test]
    fn v2_header() {
        let addrs: v2::Addresses = (
            "192.0.2.9:1234".parse::<SocketAddr>().unwrap(),
            "127.0.0.1:25".parse::<SocketAddr>().unwrap(),
        )
            .into();
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addrs,
        )
        .build()
        .unwrap();
        let mut input = header.clone();
        input.extend_from_slice(b"QUIT\r\n");
        match parse(&input) {
            ProxyParse::Header {
                consumed, source, ..
            } => {
                assert_eq!(consumed, header.len());
                assert_eq!(source, Some("192.0.2.9:1234".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&header[..10]), ProxyParse::Incomplete);
    }
}
