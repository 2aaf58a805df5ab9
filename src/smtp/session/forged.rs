//! Forged trust headers on the streaming path. With `spf` and `dmarc` off the message streams
//! to the spool as it arrives, but an incoming `Authentication-Results` claiming our
//! authserv-id (or an `X-Mxgate-DMARC`) must not reach the internal server all the same: it
//! may trust that name for the results another policy adds. So the header section alone is
//! held until its empty line, cleaned, and the rest streams as before.

use crate::auth::results;
use crate::mail_log::{Event, MessageAuthEvent};

use super::Session;

/// The header section of a streaming message, held until it is complete.
#[derive(Debug, Default)]
pub(super) struct HeadHold {
    bytes: Vec<u8>,
}

impl HeadHold {
    /// Takes the bytes the DATA reader just produced (from `from` on in `body`); true once
    /// the header section is complete (the empty line, or a message with no header section).
    pub(super) fn take_from(&mut self, body: &mut Vec<u8>, from: usize) -> bool {
        // An empty line split across two reads is found too.
        let scan = self.bytes.len().saturating_sub(3);
        self.bytes.extend_from_slice(&body[from..]);
        body.truncate(from);
        self.bytes.starts_with(b"\r\n") || self.bytes[scan..].windows(4).any(|w| w == b"\r\n\r\n")
    }
}

impl Session {
    /// Writes the held header section without its forged fields, and what followed it.
    pub(super) fn release_head(&mut self, mid: u64, head: HeadHold) {
        let ours = [self.hostname.as_str(), self.p.hostname.as_str()];
        let (bytes, removed) = results::strip_forged(&head.bytes, &ours);
        if removed != results::Forged::default() {
            self.log(Event::MessageAuth(MessageAuthEvent::ForgedHeaders {
                mid,
                removed,
                authserv_id: self.hostname.clone(),
            }));
        }
        self.body.extend_from_slice(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::HeadHold;

    #[test]
    fn complete_at_the_empty_line_even_split_across_reads() {
        let mut h = HeadHold::default();
        let mut body = b"RcvdA: x\r\n\r".to_vec();
        assert!(!h.take_from(&mut body, 4));
        assert_eq!(body, b"Rcvd");
        let mut body = b"\nbody".to_vec();
        assert!(h.take_from(&mut body, 0));
        assert_eq!(h.bytes, b"A: x\r\n\r\nbody");
        let mut h = HeadHold::default();
        assert!(h.take_from(&mut b"\r\nno header".to_vec(), 0));
    }
}
