//! Watches the start of a message for the headers the mail log reports (Message-ID, Subject).

/// Header bytes kept at most while looking for the end of the header block.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Collects the header block of a message as it streams past.
#[derive(Debug, Default)]
pub(crate) struct HeaderScanner {
    buf: Vec<u8>,
    done: bool,
    /// Length of `buf` already searched for the end of the header block.
    searched: usize,
    /// Bytes handed to the end-of-headers search so far (what the tests bound).
    #[cfg(test)]
    examined: usize,
}

/// Headers of interest found in a message.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FoundHeaders {
    /// `Message-ID` value.
    pub message_id: Option<String>,
    /// `Subject` value.
    pub subject: Option<String>,
}

impl HeaderScanner {
    /// Feeds message bytes; returns the headers once the header block ended (or grew too large).
    pub(crate) fn feed(&mut self, data: &[u8]) -> Option<FoundHeaders> {
        if self.done {
            return None;
        }
        let room = MAX_HEADER_BYTES.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        // Search only bytes not searched before, plus the 3 that may start a CRLFCRLF
        // ending in the new ones: rescanning the whole block made small feeds quadratic.
        let from = self.searched.saturating_sub(3);
        self.searched = self.buf.len();
        let end = if self.buf.starts_with(b"\r\n") {
            Some(0)
        } else {
            #[cfg(test)]
            {
                self.examined += self.buf.len() - from;
            }
            find(&self.buf[from..], b"\r\n\r\n").map(|i| from + i + 2)
        };
        match end {
            Some(e) => Some(self.finish_at(e)),
            None if self.buf.len() >= MAX_HEADER_BYTES => Some(self.finish_at(self.buf.len())),
            None => None,
        }
    }

    /// Ends scanning at end of message (a message with only headers).
    pub(crate) fn finish(&mut self) -> Option<FoundHeaders> {
        if self.done {
            return None;
        }
        Some(self.finish_at(self.buf.len()))
    }

    fn finish_at(&mut self, end: usize) -> FoundHeaders {
        self.done = true;
        let block = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = Vec::new();
        parse_block(&block)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_block(block: &str) -> FoundHeaders {
    let mut found = FoundHeaders::default();
    // Unfold: a line starting with white space continues the previous header.
    let mut fields: Vec<String> = Vec::new();
    for line in block.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim_start());
            }
        } else if !line.is_empty() {
            fields.push(line.to_string());
        }
    }
    for f in fields {
        let Some((name, value)) = f.split_once(':') else {
            continue;
        };
        let value = value.trim().to_string();
        if name.eq_ignore_ascii_case("message-id") && found.message_id.is_none() {
            found.message_id = Some(value);
        } else if name.eq_ignore_ascii_case("subject") && found.subject.is_none() {
            found.subject = Some(value);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_folded_headers_across_chunks() {
        let msg = b"Subject: hello\r\n  world\r\nMessage-ID: <x@y>\r\n\r\nbody Subject: no\r\n";
        let mut s = HeaderScanner::default();
        let mut got = None;
        for c in msg.chunks(3) {
            if let Some(h) = s.feed(c) {
                got = Some(h);
            }
        }
        let h = got.unwrap();
        assert_eq!(h.subject.as_deref(), Some("hello world"));
        assert_eq!(h.message_id.as_deref(), Some("<x@y>"));
        assert_eq!(s.finish(), None);
    }

    /// Feeds `msg` in the chunks `cuts` gives; the headers as the session would log them.
    fn scan_split(msg: &[u8], cuts: &[usize]) -> Option<FoundHeaders> {
        let mut s = HeaderScanner::default();
        let mut at = 0;
        let mut got = None;
        for &c in cuts.iter().chain(std::iter::once(&msg.len())) {
            let c = c.clamp(at, msg.len());
            if let Some(h) = s.feed(&msg[at..c]) {
                assert!(got.is_none(), "headers reported twice");
                got = Some(h);
            }
            at = c;
        }
        got.or_else(|| s.finish())
    }

    #[test]
    fn trust_12_each_byte_is_searched_once_however_small_the_feeds() {
        // 60 KB of header lines with no end yet, one line per feed: each feed must search only
        // the new bytes (plus the 3 that could begin a CRLFCRLF), not the whole block again.
        let line = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut s = HeaderScanner::default();
        let (mut fed, mut feeds) = (0, 0);
        while fed + line.len() < 60 * 1024 {
            assert_eq!(s.feed(line), None);
            fed += line.len();
            feeds += 1;
        }
        assert!(
            s.examined <= fed + 3 * feeds,
            "searched {} bytes for {fed} bytes fed in {feeds} feeds",
            s.examined
        );
        let h = s.feed(b"Subject: late\r\n\r\nbody").unwrap();
        assert_eq!(h.subject.as_deref(), Some("late"));
    }

    #[test]
    fn trust_12_header_end_split_across_feeds() {
        let msg = b"Subject: a\r\n\r\nSubject: body\r\n";
        for cut in 0..msg.len() {
            for cut2 in cut..msg.len() {
                let h = scan_split(msg, &[cut, cut2]).unwrap();
                assert_eq!(h.subject.as_deref(), Some("a"), "cuts {cut} {cut2}");
            }
        }
        assert_eq!(
            scan_split(b"\r\nSubject: body\r\n", &[1]).unwrap(),
            FoundHeaders::default()
        );
    }

    proptest::proptest! {
        #[test]
        fn trust_12_any_split_finds_what_one_feed_finds(
            lines in proptest::collection::vec(
                proptest::sample::select(vec![
                    "Subject: hi", "Message-ID: <a@b>", "subject: second", " folded", "\tmore",
                    "X-Other: x", "", "Received: from x", "no colon",
                ]),
                0..12,
            ),
            tail in proptest::sample::select(vec!["", "\r", "\r\n", "\r\n\r", "body\r\n"]),
            pad in 0usize..3,
            mut cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut msg = String::new();
            for l in &lines {
                msg.push_str(l);
                msg.push_str("\r\n");
            }
            msg.push_str(tail);
            let mut msg = msg.into_bytes();
            // Some cases run into the 64 KB cap.
            if pad == 2 {
                let mut big = b"X-Big: ".to_vec();
                big.resize(MAX_HEADER_BYTES - 5, b'x');
                big.extend_from_slice(&msg);
                msg = big;
                for c in &mut cuts {
                    *c += MAX_HEADER_BYTES - 200;
                }
            }
            cuts.sort_unstable();
            let whole = scan_split(&msg, &[]);
            proptest::prop_assert_eq!(scan_split(&msg, &cuts), whole);
        }
    }

    #[test]
    fn headers_only_message() {
        let mut s = HeaderScanner::default();
        assert_eq!(s.feed(b"Subject: x\r\n"), None);
        assert_eq!(s.finish().unwrap().subject.as_deref(), Some("x"));
    }
}
