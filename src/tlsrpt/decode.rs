//! The body of a report as it arrives — `application/tlsrpt+gzip` or `application/tlsrpt+json`
//! (RFC 8460 §5.3) — to JSON bytes, within caps. Decompression reads at most
//! [`Limits::max_json`] + 1 bytes out, so a gzip bomb costs that much memory and no more.

use std::io::Read;

/// Size caps of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes a body may have as received (gzip or JSON).
    pub max_body: usize,
    /// The most bytes of JSON (plain, or after decompression).
    pub max_json: usize,
    /// The highest decompressed/compressed ratio accepted once the output passes 64 KiB: a
    /// JSON report compresses some 10 to 20 times, a bomb a thousand.
    pub max_ratio: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1 << 20,
            max_json: 1 << 20,
            max_ratio: 100,
        }
    }
}

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/tlsrpt+gzip`.
    Gzip,
    /// `application/tlsrpt+json`.
    Json,
}

/// Why a body gave no JSON.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The content type is not a TLS-RPT one.
    #[error("content type {0:?} is not application/tlsrpt+gzip or application/tlsrpt+json")]
    ContentType(String),
    /// The body is larger than [`Limits::max_body`].
    #[error("report body of {size} bytes is over the {max} byte limit")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Decompressing would pass [`Limits::max_json`] or [`Limits::max_ratio`].
    #[error("gzip body expands past {limit}: refused as a decompression bomb")]
    Bomb {
        /// Which limit.
        limit: &'static str,
    },
    /// The gzip data is corrupt.
    #[error("gzip body is corrupt: {0}")]
    Gzip(String),
}

impl Encoding {
    /// The encoding a `Content-Type` names (parameters and case ignored).
    pub fn from_content_type(ct: &str) -> Result<Encoding, DecodeError> {
        let t = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match t.as_str() {
            "application/tlsrpt+gzip" => Ok(Encoding::Gzip),
            "application/tlsrpt+json" => Ok(Encoding::Json),
            _ => Err(DecodeError::ContentType(ct.to_string())),
        }
    }
}

/// The JSON of a body labelled `content_type`. A body that starts with the gzip magic is
/// decompressed whatever its label says: some reporters label gzip as `+json`.
pub fn decode(body: &[u8], content_type: &str, limits: Limits) -> Result<Vec<u8>, DecodeError> {
    let encoding = Encoding::from_content_type(content_type)?;
    if body.len() > limits.max_body {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            max: limits.max_body,
        });
    }
    let gzip = encoding == Encoding::Gzip || body.starts_with(&[0x1f, 0x8b]);
    if !gzip {
        if body.len() > limits.max_json {
            return Err(DecodeError::TooLarge {
                size: body.len(),
                max: limits.max_json,
            });
        }
        return Ok(body.to_vec());
    }
    gunzip(body, limits)
}

fn gunzip(body: &[u8], limits: Limits) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(8).min(limits.max_json));
    // One byte past the cap tells "exactly at the cap" from "over it".
    let cap = limits.max_json as u64 + 1;
    flate2::read::GzDecoder::new(body)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Gzip(e.to_string()))?;
    if out.len() > limits.max_json {
        return Err(DecodeError::Bomb {
            limit: "the JSON size limit",
        });
    }
    if out.len() > 64 * 1024 && out.len() / body.len().max(1) > limits.max_ratio {
        return Err(DecodeError::Bomb {
            limit: "the compression ratio limit",
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::report::RFC_EXAMPLE;

    #[test]
    fn gzip_and_json_bodies_give_the_same_json() {
        let l = Limits::default();
        let z = gzip(RFC_EXAMPLE.as_bytes());
        assert_eq!(
            decode(&z, "application/tlsrpt+gzip", l).unwrap(),
            RFC_EXAMPLE.as_bytes()
        );
        assert_eq!(
            decode(
                RFC_EXAMPLE.as_bytes(),
                "Application/TLSRPT+JSON; charset=utf-8",
                l
            )
            .unwrap(),
            RFC_EXAMPLE.as_bytes()
        );
        // Mislabelled gzip still decodes.
        assert_eq!(
            decode(&z, "application/tlsrpt+json", l).unwrap(),
            RFC_EXAMPLE.as_bytes()
        );
        assert!(matches!(
            decode(&z, "application/json", l),
            Err(DecodeError::ContentType(_))
        ));
        assert!(matches!(
            decode(b"\x1f\x8bnot gzip", "application/tlsrpt+gzip", l),
            Err(DecodeError::Gzip(_))
        ));
    }

    #[test]
    fn oversized_bodies_are_too_large() {
        let l = Limits {
            max_body: 1000,
            max_json: 500,
            max_ratio: 100,
        };
        assert_eq!(
            decode(&[b' '; 1001], "application/tlsrpt+json", l),
            Err(DecodeError::TooLarge {
                size: 1001,
                max: 1000
            })
        );
        assert_eq!(
            decode(&[b' '; 501], "application/tlsrpt+json", l),
            Err(DecodeError::TooLarge {
                size: 501,
                max: 500
            })
        );
    }

    #[test]
    fn a_gzip_bomb_is_refused_quickly_without_expanding_it() {
        // 100 MiB of zeros, compressed in chunks so the test itself does not hold them.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..100 {
            std::io::Write::write_all(&mut e, &chunk).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 200 * 1024, "{}", bomb.len());
        let t = std::time::Instant::now();
        assert_eq!(
            decode(&bomb, "application/tlsrpt+gzip", Limits::default()),
            Err(DecodeError::Bomb {
                limit: "the JSON size limit"
            })
        );
        // Only 1 MiB is ever inflated: far below what 100 MiB would take.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        // Under the size cap but expanding 1000 times: the ratio check.
        let small_bomb = gzip(&vec![0u8; 512 * 1024]);
        assert_eq!(
            decode(&small_bomb, "application/tlsrpt+gzip", Limits::default()),
            Err(DecodeError::Bomb {
                limit: "the compression ratio limit"
            })
        );
    }
}
