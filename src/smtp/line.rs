//! Strict SMTP command-line framing: only CRLF ends a line (RFC 5321 §2.3.8, §4.5.3.1.4).

use super::reply::{Enhanced, Reply};

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// One framing decision about the front of the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEvent<'a> {
    /// A complete line (without its CRLF); `consumed` includes the CRLF.
    Line {
        /// The line's bytes, CRLF excluded.
        line: &'a [u8],
        /// Bytes to drop from the buffer, CRLF included.
        consumed: usize,
    },
    /// No CRLF yet and the buffer is still within the limit: read more.
    Incomplete,
    /// The line exceeded `max_len`; drop `consumed` bytes, reply only once `complete` is true.
    TooLong {
        /// Bytes to drop from the buffer.
        consumed: usize,
        /// True once the overlong line's CRLF has been consumed.
        complete: bool,
    },
    /// A bare CR or LF appeared before the CRLF; the whole line (CRLF included) is refused.
    BareNewline {
        /// Bytes to drop from the buffer, CRLF included.
        consumed: usize,
    },
}

impl LineEvent<'_> {
    /// The reply the session should send for this event, if any.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            // RFC 5321 §4.5.3.1.10 names "500 Line too long".
            LineEvent::TooLong { complete: true, .. } => {
                Some(Reply::new(500, Enhanced(5, 5, 2), "Line too long"))
            }
            LineEvent::BareNewline { .. } => Some(Reply::new(
                500,
                Enhanced(5, 5, 2),
                "Syntax error (bare CR or LF in command line, RFC 5321 section 2.3.8)",
            )),
            _ => None,
        }
    }
}

/// Splits a byte stream into CRLF-terminated command lines, remembering an overlong line across reads.
#[derive(Debug, Clone)]
pub struct LineReader {
    max_len: usize,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    /// Dropping the rest of an overlong line; `cr` = the last dropped byte was CR, so an LF
    /// at the start of the next buffer completes the CRLF (we keep state, not bytes).
    Discarding {
        cr: bool,
    },
}

impl LineReader {
    /// A reader accepting lines of at most `max_len` octets including CRLF (minimum 2).
    pub fn new(max_len: usize) -> Self {
        LineReader {
            max_len: max_len.max(2),
            state: State::Normal,
        }
    }

    /// True while the rest of an overlong line is being dropped.
    pub fn is_discarding(&self) -> bool {
        matches!(self.state, State::Discarding { .. })
    }

    /// Forgets any discarding state (e.g. after STARTTLS, when the caller also empties its buffer).
    pub fn reset(&mut self) {
        self.state = State::Normal;
    }

    /// Examines the front of `buf`; the caller drops the reported `consumed` bytes and calls again.
    pub fn next<'a>(&mut self, buf: &'a [u8]) -> LineEvent<'a> {
        if buf.is_empty() {
            return LineEvent::Incomplete;
        }
        if let State::Discarding { cr } = self.state {
            return self.discard(buf, cr);
        }
        let window = &buf[..buf.len().min(self.max_len)];
        // One pass over the window: the first CR/LF is either the CRLF or a bare newline.
        match find_first_of(window, [CR, LF]) {
            Some(p) if window[p] == CR && window.get(p + 1) == Some(&LF) => {
                return LineEvent::Line {
                    line: &buf[..p],
                    consumed: p + 2,
                };
            }
            Some(p) => {
                if let Some(cr) = find_crlf(window, p + 1) {
                    return LineEvent::BareNewline { consumed: cr + 2 };
                }
            }
            None => {}
        }
        if buf.len() < self.max_len {
            // A bare CR/LF without its CRLF yet is decided when the CRLF arrives.
            return LineEvent::Incomplete;
        }
        // No CRLF ends within max_len: the line is too long whatever follows. LFs before
        // max_len were already seen not to end a CRLF, so search from max_len onward.
        match find_byte_from(buf, LF, self.max_len) {
            Some(lf) if buf[lf - 1] == CR => LineEvent::TooLong {
                consumed: lf + 1,
                complete: true,
            },
            Some(lf) => match find_crlf(buf, lf + 1) {
                Some(cr) => LineEvent::TooLong {
                    consumed: cr + 2,
                    complete: true,
                },
                None => self.start_discarding(buf),
            },
            None => self.start_discarding(buf),
        }
    }

    fn start_discarding<'a>(&mut self, buf: &[u8]) -> LineEvent<'a> {
        self.state = State::Discarding {
            cr: buf.last() == Some(&CR),
        };
        LineEvent::TooLong {
            consumed: buf.len(),
            complete: false,
        }
    }

    fn discard<'a>(&mut self, buf: &[u8], cr: bool) -> LineEvent<'a> {
        let end = if cr && buf[0] == LF {
            Some(1)
        } else {
            find_crlf(buf, 0).map(|p| p + 2)
        };
        match end {
            Some(consumed) => {
                self.state = State::Normal;
                LineEvent::TooLong {
                    consumed,
                    complete: true,
                }
            }
            None => self.start_discarding(buf),
        }
    }
}

/// Index of the CR of the first CRLF whose CR is at or after `from`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let lf = find_byte_from(buf, LF, i)?;
        if lf > from && buf[lf - 1] == CR {
            return Some(lf - 1);
        }
        i = lf + 1;
    }
}

fn find_byte_from(buf: &[u8], needle: u8, from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    find_first_of(rest, [needle]).map(|p| from + p)
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Index of the first byte of `hay` equal to any of `needles` (SWAR, 8 bytes per step).
#[inline]
pub(crate) fn find_first_of<const N: usize>(hay: &[u8], needles: [u8; N]) -> Option<usize> {
    let (chunks, tail) = hay.as_chunks::<8>();
    for (ci, chunk) in chunks.iter().enumerate() {
        let x = u64::from_le_bytes(*chunk);
        let mut mask = 0;
        for n in needles {
            // Classic "has zero byte": exact for the lowest matching byte, which is all we use.
            let v = x ^ (LO * u64::from(n));
            mask |= v.wrapping_sub(LO) & !v & HI;
        }
        if mask != 0 {
            return Some(ci * 8 + (mask.trailing_zeros() / 8) as usize);
        }
    }
    let base = chunks.len() * 8;
    tail.iter()
        .position(|b| needles.contains(b))
        .map(|p| base + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(max: usize, buf: &[u8]) -> LineEvent<'_> {
        LineReader::new(max).next(buf)
    }

    #[test]
    fn simple_line_and_pipelining() {
        let buf = b"NOOP\r\nQUIT\r\n";
        assert_eq!(
            ev(512, buf),
            LineEvent::Line {
                line: b"NOOP",
                consumed: 6
            }
        );
        assert_eq!(
            ev(512, &buf[6..]),
            LineEvent::Line {
                line: b"QUIT",
                consumed: 6
            }
        );
        assert_eq!(
            ev(512, b"\r\n"),
            LineEvent::Line {
                line: b"",
                consumed: 2
            }
        );
    }

    #[test]
    fn incomplete_cases() {
        for buf in [
            &b""[..],
            b"NOOP",
            b"NOOP\r",
            b"NO\nOP",
            b"NO\rOP\r",
            b"\n",
            b"\r",
        ] {
            assert_eq!(ev(512, buf), LineEvent::Incomplete, "{buf:?}");
        }
    }

    #[test]
    fn bare_newlines_refuse_whole_line() {
        assert_eq!(
            ev(512, b"RSET\nQUIT\r\nNOOP\r\n"),
            LineEvent::BareNewline { consumed: 11 }
        );
        assert_eq!(
            ev(512, b"RSET\rQUIT\r\n"),
            LineEvent::BareNewline { consumed: 11 }
        );
        assert_eq!(ev(512, b"\r\r\n"), LineEvent::BareNewline { consumed: 3 });
        assert_eq!(ev(512, b"\n\r\n"), LineEvent::BareNewline { consumed: 3 });
        assert_eq!(
            ev(512, b"a\n\n\r\n"),
            LineEvent::BareNewline { consumed: 5 }
        );
    }

    #[test]
    fn length_limit_counts_crlf() {
        assert_eq!(
            ev(6, b"NOOP\r\n"),
            LineEvent::Line {
                line: b"NOOP",
                consumed: 6
            }
        );
        assert_eq!(
            ev(5, b"NOOP\r\nX"),
            LineEvent::TooLong {
                consumed: 6,
                complete: true
            }
        );
        // Exactly at the limit without CRLF: cannot fit anymore.
        assert_eq!(
            ev(5, b"NOOPX"),
            LineEvent::TooLong {
                consumed: 5,
                complete: false
            }
        );
        assert_eq!(ev(5, b"NOOP"), LineEvent::Incomplete);
    }

    #[test]
    fn too_long_wins_over_bare_lf() {
        assert_eq!(
            ev(6, b"ab\ncdefg\r\nNOOP\r\n"),
            LineEvent::TooLong {
                consumed: 10,
                complete: true
            }
        );
        assert_eq!(
            ev(6, b"abcdefg\nh\r\n"),
            LineEvent::TooLong {
                consumed: 11,
                complete: true
            }
        );
    }

    #[test]
    fn discarding_across_reads_with_split_crlf() {
        let mut r = LineReader::new(4);
        assert_eq!(
            r.next(b"abcd\r"),
            LineEvent::TooLong {
                consumed: 5,
                complete: false
            }
        );
        assert!(r.is_discarding());
        assert_eq!(
            r.next(b"\nQUIT\r\n"),
            LineEvent::TooLong {
                consumed: 1,
                complete: true
            }
        );
        assert!(!r.is_discarding());
        assert_eq!(
            r.next(b"ok\r\n"),
            LineEvent::Line {
                line: b"ok",
                consumed: 4
            }
        );
        // An LF not preceded by CR while discarding does not end the line.
        let mut r = LineReader::new(4);
        r.next(b"abcdef");
        assert_eq!(
            r.next(b"\nx"),
            LineEvent::TooLong {
                consumed: 2,
                complete: false
            }
        );
        assert_eq!(
            r.next(b"y\r\nz"),
            LineEvent::TooLong {
                consumed: 3,
                complete: true
            }
        );
        assert_eq!(r.next(b""), LineEvent::Incomplete);
    }

    #[test]
    fn replies() {
        let r = ev(4, b"abcdef\r\n").reply().map(|r| r.code);
        assert_eq!(r, Some(500));
        assert!(LineEvent::Incomplete.reply().is_none());
        assert!(LineEvent::TooLong {
            consumed: 1,
            complete: false
        }
        .reply()
        .is_none());
        assert_eq!(
            LineEvent::BareNewline { consumed: 3 }
                .reply()
                .map(|r| r.code),
            Some(500)
        );
    }

    #[test]
    fn swar_search_matches_naive() {
        let hay: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(37)).collect();
        for start in 0..hay.len() {
            for n in [0u8, 1, 10, 13, 0x80, 0xff, 0x7f] {
                let naive = hay[start..].iter().position(|&b| b == n);
                assert_eq!(find_first_of(&hay[start..], [n]), naive);
            }
        }
    }

    /// Event kinds that do not depend on how the stream was chunked.
    #[derive(Debug, PartialEq)]
    enum Kind {
        Line(Vec<u8>),
        TooLong,
        Bare,
    }

    /// Simulates a session: append chunks to a buffer, drain events.
    fn run(max: usize, chunks: &[&[u8]]) -> (Vec<Kind>, usize) {
        let mut r = LineReader::new(max);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            loop {
                let (kind, n) = match r.next(&buf) {
                    LineEvent::Incomplete => break,
                    LineEvent::Line { line, consumed } => {
                        (Some(Kind::Line(line.to_vec())), consumed)
                    }
                    LineEvent::TooLong { consumed, complete } => {
                        (complete.then_some(Kind::TooLong), consumed)
                    }
                    LineEvent::BareNewline { consumed } => (Some(Kind::Bare), consumed),
                };
                assert!(n > 0 && n <= buf.len());
                out.extend(kind);
                buf.drain(..n);
            }
        }
        (out, buf.len())
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_events(
            data in proptest::collection::vec(prop::sample::select(b"ab\r\n.".to_vec()), 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..8),
            max in 2usize..12,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&data[last..c]);
                last = c;
            }
            chunks.push(&data[last..]);
            let (whole, _) = run(max, &[&data]);
            let (split, _) = run(max, &chunks);
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), max in 0usize..600) {
            let (events, _) = run(max, &[&data]);
            for e in events {
                if let Kind::Line(l) = e {
                    prop_assert!(l.len() + 2 <= max.max(2));
                    prop_assert!(!l.contains(&CR) && !l.contains(&LF));
                }
            }
        }
    }
}
