//! Smuggling-safe DATA reader: only CRLF.CRLF ends a message; bare CR, bare LF and NUL are refused.

use std::fmt;

use super::line::find_first_of;
use super::reply::{Enhanced, Reply};

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// Whether the end-of-data marker has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// All input consumed; the message continues in the next read.
    NeedMore,
    /// The terminating `.` CRLF was consumed; the rest of the input belongs to the command parser.
    Done,
}

/// Result of one [`DataReader::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataProgress {
    /// Bytes of input used, including the terminator when `status` is `Done`.
    pub consumed: usize,
    /// Whether the message is complete.
    pub status: DataStatus,
}

/// A byte sequence that makes the message ambiguous; the session must refuse it and close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// A CR not followed by LF.
    BareCr,
    /// An LF not preceded by CR.
    BareLf,
    /// A NUL octet.
    Nul,
}

impl DataError {
    /// The reply refusing the message.
    pub fn reply(&self) -> Reply {
        Reply::new(554, Enhanced(5, 6, 0), self.text())
    }

    fn text(&self) -> &'static str {
        match self {
            DataError::BareCr => "Message refused: bare CR in data (RFC 5321 section 2.3.8)",
            DataError::BareLf => "Message refused: bare LF in data (RFC 5321 section 2.3.8)",
            DataError::Nul => "Message refused: NUL character in data",
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl std::error::Error for DataError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the beginning of a line (also the very start: `.` CRLF first means an empty message).
    Bol,
    /// Inside a line.
    Mid,
    /// Just copied a CR that must be followed by LF (the CR ended the previous input).
    Cr,
    /// Saw a `.` at the beginning of a line; it is never copied (dot-unstuffing).
    Dot,
    /// Saw `.` CR at the beginning of a line; only LF may follow, and it ends the message.
    DotCr,
    Done,
    Failed(DataError),
}

/// Incremental DATA decoder; holds state (not bytes) across arbitrary chunk boundaries.
#[derive(Debug, Clone)]
pub struct DataReader {
    state: State,
}

impl Default for DataReader {
    fn default() -> Self {
        Self::new()
    }
}

impl DataReader {
    /// A reader positioned just after the `354` reply.
    pub fn new() -> Self {
        DataReader { state: State::Bol }
    }

    /// True once the end-of-data marker has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Appends decoded content from `input` to `out`, stopping after the end-of-data marker.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<DataProgress, DataError> {
        let mut i = 0;
        loop {
            match self.state {
                State::Done => {
                    return Ok(DataProgress {
                        consumed: i,
                        status: DataStatus::Done,
                    })
                }
                State::Failed(e) => return Err(e),
                _ if i == input.len() => {
                    return Ok(DataProgress {
                        consumed: i,
                        status: DataStatus::NeedMore,
                    })
                }
                State::Bol => {
                    if input[i] == b'.' {
                        i += 1;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => {
                    if input[i] == CR {
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        // RFC 5321 §4.5.2: the leading dot is deleted (we never copied it);
                        // the rest, even another dot, is ordinary line content.
                        self.state = State::Mid;
                    }
                }
                State::Cr => {
                    if input[i] != LF {
                        return self.fail(DataError::BareCr);
                    }
                    out.push(LF);
                    i += 1;
                    self.state = State::Bol;
                }
                State::DotCr => {
                    if input[i] != LF {
                        return self.fail(DataError::BareCr);
                    }
                    i += 1;
                    self.state = State::Done;
                }
                State::Mid => {
                    let rest = &input[i..];
                    // Fast path: copy a whole run up to and including its CRLF at once.
                    let Some(p) = find_first_of(rest, [CR, LF, 0]) else {
                        out.extend_from_slice(rest);
                        i = input.len();
                        continue;
                    };
                    match (rest[p], rest.get(p + 1)) {
                        (CR, Some(&LF)) => {
                            out.extend_from_slice(&rest[..p + 2]);
                            i += p + 2;
                            self.state = State::Bol;
                        }
                        (CR, Some(_)) => return self.fail(DataError::BareCr),
                        (CR, None) => {
                            out.extend_from_slice(rest);
                            i = input.len();
                            self.state = State::Cr;
                        }
                        (LF, _) => return self.fail(DataError::BareLf),
                        _ => return self.fail(DataError::Nul),
                    }
                }
            }
        }
    }

    fn fail(&mut self, e: DataError) -> Result<DataProgress, DataError> {
        // Sticky: a refused message stays refused even if the caller feeds more.
        self.state = State::Failed(e);
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `chunks` in order; returns (output, total consumed, done) or the error.
    fn run(chunks: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), DataError> {
        let mut r = DataReader::new();
        let mut out = Vec::new();
        let mut total = 0;
        for c in chunks {
            let p = r.feed(c, &mut out)?;
            total += p.consumed;
            if p.status == DataStatus::Done {
                return Ok((out, total, true));
            }
            assert_eq!(p.consumed, c.len());
        }
        Ok((out, total, false))
    }

    fn one(input: &[u8]) -> Result<(Vec<u8>, usize, bool), DataError> {
        run(&[input])
    }

    #[test]
    fn simple_message_and_pipelined_rest() {
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (out, n, done) = one(input).expect("valid");
        assert!(done);
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(&input[n..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message() {
        assert_eq!(one(b".\r\nQUIT\r\n"), Ok((vec![], 3, true)));
    }

    #[test]
    fn dot_unstuffing() {
        let (out, _, _) = one(b"..\r\n...x\r\n.y\r\na.b\r\n.\r\n").expect("valid");
        assert_eq!(out, b".\r\n..x\r\ny\r\na.b\r\n");
    }

    #[test]
    fn need_more_without_terminator() {
        assert_eq!(one(b"abc\r\n"), Ok((b"abc\r\n".to_vec(), 5, false)));
        assert_eq!(one(b"abc\r\n."), Ok((b"abc\r\n".to_vec(), 6, false)));
        assert_eq!(one(b"abc\r\n.\r"), Ok((b"abc\r\n".to_vec(), 7, false)));
        assert_eq!(one(b""), Ok((vec![], 0, false)));
    }

    #[test]
    fn smuggling_vectors() {
        use DataError::*;
        let table: &[(&[u8], DataError)] = &[
            (b"a\r\nb\n.\nMAIL FROM:<x@y>\r\n", BareLf),
            (b"a\r\nb\n.\r\nMAIL FROM:<x@y>\r\n", BareLf),
            (b"a\r\nb\r.\rMAIL FROM:<x@y>\r\n", BareCr),
            (b"a\r\nb\r\n.\rMAIL FROM:<x@y>\r\n", BareCr),
            (b"a\r\nb\r\r\n.\r\n", BareCr),
            (b"a\r\nb\r.\r\nMAIL FROM:<x@y>\r\n", BareCr),
            (b"\n.\r\n", BareLf),
            (b"\r.\r\n", BareCr),
            (b".\n", BareLf),
            (b".\r.", BareCr),
            (b"Subject: a\nX: b\r\n\r\nbody\r\n.\r\n", BareLf),
            (b"Subject: a\rX: b\r\n\r\nbody\r\n.\r\n", BareCr),
            (b"Subject: a\r\n\r\nbo\ndy\r\n.\r\n", BareLf),
            (b"Subject: a\r\n\r\nbo\rdy\r\n.\r\n", BareCr),
            (b"Subject: a\r\n\r\nbody\r\n\n.\r\n", BareLf),
            (b"Subject: a\r\n\r\nbo\0dy\r\n.\r\n", Nul),
            (b".\0\r\n.\r\n", Nul),
            (b"\0", Nul),
        ];
        for (input, want) in table {
            assert_eq!(
                one(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            // The same verdict whatever the chunking.
            for cut in 0..=input.len() {
                assert_eq!(run(&[&input[..cut], &input[cut..]]), Err(*want));
            }
        }
    }

    #[test]
    fn errors_are_sticky_and_replies_are_554() {
        let mut r = DataReader::new();
        let mut out = Vec::new();
        assert_eq!(r.feed(b"a\nb", &mut out), Err(DataError::BareLf));
        assert_eq!(r.feed(b"\r\n.\r\n", &mut out), Err(DataError::BareLf));
        let rep = DataError::BareLf.reply();
        assert_eq!(
            rep.to_wire(),
            "554 5.6.0 Message refused: bare LF in data (RFC 5321 section 2.3.8)\r\n"
        );
        assert_eq!(DataError::BareCr.reply().code, 554);
        assert_eq!(DataError::Nul.reply().enhanced, Some(Enhanced(5, 6, 0)));
    }

    #[test]
    fn done_is_sticky() {
        let mut r = DataReader::new();
        let mut out = Vec::new();
        let p = r.feed(b".\r\n", &mut out).expect("valid");
        assert_eq!(p.status, DataStatus::Done);
        assert!(r.is_done());
        let p = r.feed(b"more", &mut out).expect("valid");
        assert_eq!(
            p,
            DataProgress {
                consumed: 0,
                status: DataStatus::Done
            }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn terminator_split_at_every_boundary() {
        let input = b"Subject: t\r\n\r\n..dot\r\nlast\r\n.\r\nRSET\r\n";
        let whole = one(input).expect("valid");
        assert!(whole.2);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let got = run(&[&input[..a], &input[a..b], &input[b..]]).expect("valid");
                assert_eq!(got, whole, "split at {a},{b}");
            }
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes).expect("valid"), whole);
    }

    fn stuff(lines: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::new();
        let mut wire = Vec::new();
        for l in lines {
            body.extend_from_slice(l);
            body.extend_from_slice(b"\r\n");
            if l.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(l);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        (body, wire)
    }

    fn chunk<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts {
            out.push(&data[last..c]);
            last = c;
        }
        out.push(&data[last..]);
        out
    }

    fn line_strategy() -> impl Strategy<Value = Vec<u8>> {
        let byte = any::<u8>().prop_filter("no CR/LF/NUL", |b| !matches!(*b, 0 | CR | LF));
        prop_oneof![
            proptest::collection::vec(byte.clone(), 0..40),
            // Lines starting with dots exercise the unstuffing.
            proptest::collection::vec(byte, 0..5).prop_map(|mut v| {
                v.insert(0, b'.');
                v
            }),
        ]
    }

    proptest! {
        #[test]
        fn random_bodies_round_trip(
            lines in proptest::collection::vec(line_strategy(), 0..30),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let (body, wire) = stuff(&lines);
            let mut input = wire.clone();
            input.extend_from_slice(b"QUIT\r\n");
            let (out, consumed, done) = run(&chunk(&input, &cuts)).expect("valid");
            prop_assert!(done);
            prop_assert_eq!(out, body);
            prop_assert_eq!(consumed, wire.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(CR), Just(LF), Just(b'.')], 0..300),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let whole = one(&data);
            let split = run(&chunk(&data, &cuts));
            prop_assert_eq!(whole.clone(), split);
            if let Ok((out, n, _)) = whole {
                prop_assert!(n <= data.len() && out.len() <= n);
            }
        }
    }
}
