//! TLS-RPT report bodies (RFC 8460) as reporters send them: gzip'd, and base64 in 76-column
//! lines for a `multipart/report` mail.

use std::io::Write;

use base64::Engine;

/// `data` gzip'd.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `json` gzip'd and base64-encoded in CRLF-separated lines of 76 characters: the body of
/// an `application/tlsrpt+gzip` part.
pub fn gzip_base64_lines(json: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(gzip(json.as_bytes()));
    b64.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n")
}
