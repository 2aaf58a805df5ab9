//! The message body: from memory or streamed from the spool file, dot-stuffed, ended by
//! the terminating dot.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::transaction::TxError;
use super::Connection;

/// Body bytes read from the spool file per chunk.
const BODY_CHUNK: usize = 64 * 1024;

/// Where a message body comes from.
pub(super) enum BodySource {
    /// Held in memory (a message's first attempt).
    Memory(std::sync::Arc<Vec<u8>>),
    /// Read from the spool file as it is sent.
    File(tokio::fs::File),
}

impl Connection {
    /// Sends the body dot-stuffed, then `.`: from memory in one write, or streamed from the
    /// spool file (never holding the whole body), with the final dot in the last write.
    pub(super) async fn send_body(
        &mut self,
        body: BodySource,
        limit: Duration,
    ) -> Result<(), TxError> {
        let mut at_line_start = true;
        let mut tail = [0u8; 2];
        let mut empty = true;
        let mut wire_buf: Vec<u8>;
        match body {
            BodySource::Memory(bytes) => {
                wire_buf = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 5);
                dot_stuff(&bytes, &mut at_line_start, &mut wire_buf);
                if let [.., a, b] = bytes[..] {
                    tail = [a, b];
                }
                empty = bytes.is_empty();
            }
            BodySource::File(mut file) => {
                let mut chunk = vec![0u8; BODY_CHUNK];
                wire_buf = Vec::with_capacity(BODY_CHUNK + BODY_CHUNK / 8);
                loop {
                    let n = file.read(&mut chunk).await.map_err(TxError::Local)?;
                    if n == 0 {
                        break;
                    }
                    empty = false;
                    dot_stuff(&chunk[..n], &mut at_line_start, &mut wire_buf);
                    tail = if n >= 2 {
                        [chunk[n - 2], chunk[n - 1]]
                    } else {
                        [tail[1], chunk[0]]
                    };
                    if wire_buf.len() >= BODY_CHUNK {
                        self.wire.write(&wire_buf, limit, "DATA").await?;
                        wire_buf.clear();
                    }
                }
            }
        }
        // The body always ends with CRLF before the terminating dot.
        let end: &[u8] = if empty || tail == *b"\r\n" {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        };
        wire_buf.extend_from_slice(end);
        self.wire.write(&wire_buf, limit, "DATA").await?;
        Ok(())
    }
}

/// Appends `input` to `out`, doubling a `.` at the start of every line; `at_line_start`
/// carries the state across chunks.
pub(crate) fn dot_stuff(input: &[u8], at_line_start: &mut bool, out: &mut Vec<u8>) {
    // Line by line: whole lines are copied at once, a dot is inserted only at line starts.
    let mut rest = input;
    while let Some(&first) = rest.first() {
        if *at_line_start && first == b'.' {
            out.push(b'.');
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                out.extend_from_slice(&rest[..=i]);
                rest = &rest[i + 1..];
                *at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                *at_line_start = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_across_chunks() {
        let mut out = Vec::new();
        let mut bol = true;
        dot_stuff(b".a\r\nb\r", &mut bol, &mut out);
        dot_stuff(b"\n.", &mut bol, &mut out);
        dot_stuff(b".\r\n", &mut bol, &mut out);
        assert_eq!(out, b"..a\r\nb\r\n...\r\n");
    }

    proptest::proptest! {
        /// Any split of any body stuffs exactly like the byte-at-a-time definition
        /// (a dot is doubled at the start of every line, and nowhere else).
        #[test]
        fn dot_stuffing_matches_the_definition(
            body in proptest::collection::vec(proptest::sample::select(b".\r\na".to_vec()), 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let mut want = Vec::new();
            let mut bol = true;
            for &b in &body {
                if bol && b == b'.' {
                    want.push(b'.');
                }
                want.push(b);
                bol = b == b'\n';
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let (mut out, mut at, mut from) = (Vec::new(), true, 0);
            for c in cuts.into_iter().chain([body.len()]) {
                dot_stuff(&body[from..c], &mut at, &mut out);
                from = c;
            }
            proptest::prop_assert_eq!(out, want);
            proptest::prop_assert_eq!(at, bol);
        }
    }
}
