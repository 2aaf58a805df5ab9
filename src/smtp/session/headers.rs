//! Watches the start of a message for the headers the mail log reports (Message-ID, Subject).

/// Header bytes kept at most while looking for the end of the header block.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Collects the header block of a message as it streams past.
#[derive(Debug, Default)]
pub struct HeaderScanner {
    buf: Vec<u8>,
    done: bool,
}

/// Headers of interest found in a message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FoundHeaders {
    /// `Message-ID` value.
    pub message_id: Option<String>,
    /// `Subject` value.
    pub subject: Option<String>,
}

impl HeaderScanner {
    /// Feeds message bytes; returns the headers once the header block ended (or grew too large).
    pub fn feed(&mut self, data: &[u8]) -> Option<FoundHeaders> {
        if self.done {
            return None;
        }
        let room = MAX_HEADER_BYTES.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        let end = if self.buf.starts_with(b"\r\n") {
            Some(0)
        } else {
            find(&self.buf, b"\r\n\r\n").map(|i| i + 2)
        };
        match end {
            Some(e) => Some(self.finish_at(e)),
            None if self.buf.len() >= MAX_HEADER_BYTES => Some(self.finish_at(self.buf.len())),
            None => None,
        }
    }

    /// Ends scanning at end of message (a message with only headers).
    pub fn finish(&mut self) -> Option<FoundHeaders> {
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

    #[test]
    fn headers_only_message() {
        let mut s = HeaderScanner::default();
        assert_eq!(s.feed(b"Subject: x\r\n"), None);
        assert_eq!(s.finish().unwrap().subject.as_deref(), Some("x"));
    }
}
