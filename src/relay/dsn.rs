//! RFC 3464 delivery status notifications (bounces): multipart/report with
//! message/delivery-status and the original headers as text/rfc822-headers.

/// One recipient that failed permanently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailedRecipient {
    /// The recipient address.
    pub rcpt: String,
    /// Enhanced status code (`5.1.1`).
    pub status: String,
    /// Why: the downstream reply, or our own reason.
    pub diagnostic: Diagnostic,
    /// The server that gave the reply, when one did.
    pub remote_mta: Option<String>,
}

/// Why a recipient failed, typed for the DSN's `Diagnostic-Code` (RFC 3464 §2.3.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Diagnostic {
    /// An SMTP reply (`550 5.1.1 No such user`): the server's, or one given for it (a null MX).
    Smtp(String),
    /// A reason of our own (`bounced by administrator`, expiry).
    Local(String),
}

impl Diagnostic {
    /// The text, whatever its type.
    pub(crate) fn text(&self) -> &str {
        match self {
            Diagnostic::Smtp(t) | Diagnostic::Local(t) => t,
        }
    }

    /// The `Diagnostic-Code` value: type `smtp` for a reply, our own `X-mxgate` otherwise.
    fn code(&self) -> String {
        match self {
            Diagnostic::Smtp(t) => format!("smtp; {}", one_line(t)),
            Diagnostic::Local(t) => format!("X-mxgate; {}", one_line(t)),
        }
    }
}

/// Everything a DSN says.
#[derive(Debug, Clone)]
pub(crate) struct Dsn<'a> {
    /// Our host name (Reporting-MTA, From: MAILER-DAEMON@...).
    pub reporting_mta: &'a str,
    /// Original envelope sender (the DSN goes to it).
    pub to: &'a str,
    /// Original message id (for the text).
    pub original_mid: u64,
    /// Arrival time of the original, RFC 5322 date.
    pub arrival_date: &'a str,
    /// Now, RFC 5322 date.
    pub date: &'a str,
    /// Message-ID for the DSN (without angle brackets).
    pub message_id: &'a str,
    /// Failed recipients.
    pub failed: &'a [FailedRecipient],
    /// Header block of the original message (up to the blank line).
    pub original_headers: &'a [u8],
}

/// Returns the header block of a message (up to and including the blank line), at most `max` bytes.
pub(crate) fn header_block(message: &[u8], max: usize) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len());
    &message[..end.min(max)]
}

impl Dsn<'_> {
    /// Renders the DSN as a CRLF message ready for the spool.
    pub(crate) fn render(&self) -> Vec<u8> {
        // Random, not derived from the (public) MID: nobody can plant the boundary in the
        // original headers or a downstream reply that the DSN quotes.
        let boundary = format!("mxgate-dsn-{}", random_hex());
        let mut m = String::new();
        let mut h = |k: &str, v: &str| {
            m.push_str(k);
            m.push_str(": ");
            m.push_str(v);
            m.push_str("\r\n");
        };
        h(
            "From",
            &format!(
                "Mail Delivery System <MAILER-DAEMON@{}>",
                self.reporting_mta
            ),
        );
        h("To", &format!("<{}>", self.to));
        h("Subject", "Undelivered Mail Returned to Sender");
        h("Date", self.date);
        h("Message-ID", &format!("<{}>", self.message_id));
        h("Auto-Submitted", "auto-replied");
        h("MIME-Version", "1.0");
        h(
            "Content-Type",
            &format!("multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""),
        );
        m.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");
        // 8-bit text (a UTF-8 reply, 8-bit original headers) is declared as such per part.
        let eight_diag = self.failed.iter().any(|f| !f.diagnostic.text().is_ascii());
        let cte = |eight: bool| {
            if eight {
                "Content-Transfer-Encoding: 8bit\r\n"
            } else {
                ""
            }
        };
        m.push_str(&format!(
            "--{boundary}\r\nContent-Type: text/plain; charset={}\r\n{}\r\n",
            if eight_diag { "utf-8" } else { "us-ascii" },
            cte(eight_diag)
        ));
        m.push_str(&format!(
            "This is the mail system at host {}.\r\n\r\nYour message could not be delivered to one or more recipients.\r\n\r\n",
            self.reporting_mta
        ));
        for f in self.failed {
            m.push_str(&format!(
                "<{}>: {}\r\n",
                f.rcpt,
                one_line(f.diagnostic.text())
            ));
        }
        m.push_str(&format!(
            "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n{}\r\n",
            cte(eight_diag)
        ));
        m.push_str(&format!("Reporting-MTA: dns; {}\r\n", self.reporting_mta));
        m.push_str(&format!("X-Mxgate-Queue-ID: {}\r\n", self.original_mid));
        m.push_str(&format!("Arrival-Date: {}\r\n", self.arrival_date));
        for f in self.failed {
            m.push_str("\r\n");
            m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", f.rcpt));
            m.push_str("Action: failed\r\n");
            m.push_str(&format!("Status: {}\r\n", f.status));
            if let Some(r) = &f.remote_mta {
                m.push_str(&format!("Remote-MTA: dns; {r}\r\n"));
            }
            m.push_str(&format!("Diagnostic-Code: {}\r\n", f.diagnostic.code()));
        }
        m.push_str(&format!(
            "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n{}\r\n",
            cte(!self.original_headers.is_ascii())
        ));
        let mut out = m.into_bytes();
        out.extend_from_slice(self.original_headers);
        if !self.original_headers.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        out
    }
}

/// One line of printable text: a downstream reply may carry CR, ESC and other controls.
fn one_line(s: &str) -> String {
    crate::mail_log::printable(s)
}

/// 128 random bits as hex.
fn random_hex() -> String {
    let mut b = [0u8; 16];
    // The system RNG does not fail on Linux; zeros would still make a valid boundary.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_has_the_rfc3464_parts() {
        let failed = vec![FailedRecipient {
            rcpt: "nobody@example.com".into(),
            status: "5.1.1".into(),
            diagnostic: Diagnostic::Smtp("550 5.1.1 No such user".into()),
            remote_mta: Some("127.0.0.1".into()),
        }];
        let orig = b"Received: x\r\nSubject: hi\r\n\r\nbody\r\n";
        let d = Dsn {
            reporting_mta: "mx.example.com",
            to: "alice@other.example",
            original_mid: 7,
            arrival_date: "Tue, 17 Apr 2018 00:57:53 +0000",
            date: "Tue, 17 Apr 2018 01:00:00 +0000",
            message_id: "dsn.7@mx.example.com",
            failed: &failed,
            original_headers: header_block(orig, 64 * 1024),
        };
        let text = String::from_utf8(d.render()).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains(
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n"
        ));
        // No Original-Recipient: the client gave no ORCPT (RFC 3464 §2.3.1 wants it only then).
        assert!(text.contains(
            "Final-Recipient: rfc822; nobody@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(!text.contains("Original-Recipient"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n"));
        assert!(text.contains("text/rfc822-headers\r\n\r\nReceived: x\r\nSubject: hi\r\n\r\n--"));
        assert!(!text.contains("body\r\n"));
        let bare_lf = text
            .as_bytes()
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r');
        assert!(!bare_lf, "every line ends in CRLF");
    }

    /// A downstream reply with ESC and CR reaches the DSN filtered; the boundary is random,
    /// so two DSNs for the same MID differ and neither names the MID.
    #[test]
    fn trust_16_dsn_is_printable_and_its_boundary_random() {
        let failed = vec![FailedRecipient {
            rcpt: "nobody@example.com".into(),
            status: "5.1.1".into(),
            diagnostic: Diagnostic::Smtp("550 5.1.1 \x1b[31m\rINJ".into()),
            remote_mta: None,
        }];
        let d = Dsn {
            reporting_mta: "mx.example.com",
            to: "alice@other.example",
            original_mid: 7,
            arrival_date: "Tue, 17 Apr 2018 00:57:53 +0000",
            date: "Tue, 17 Apr 2018 01:00:00 +0000",
            message_id: "dsn.7@mx.example.com",
            failed: &failed,
            original_headers: b"Subject: hi\r\n\r\n",
        };
        let (a, b) = (d.render(), d.render());
        let text = String::from_utf8(a.clone()).unwrap();
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(
            text.contains("Diagnostic-Code: smtp; 550 5.1.1  [31m INJ\r\n"),
            "{text}"
        );
        assert!(
            text.contains("<nobody@example.com>: 550 5.1.1  [31m INJ\r\n"),
            "{text}"
        );
        let boundary = |t: &str| {
            let start = t.find("boundary=\"").unwrap() + 10;
            t[start..].split('"').next().unwrap().to_string()
        };
        let (ba, bb) = (boundary(&text), boundary(&String::from_utf8(b).unwrap()));
        assert_ne!(ba, bb);
        assert!(!ba.contains("-7-") && !ba.ends_with("-7"), "{ba}");
        assert!(ba.len() >= 32, "{ba}");
        assert!(text.ends_with(&format!("\r\n--{ba}--\r\n")));
    }

    #[test]
    fn diagnostic_type_follows_where_the_reason_came_from() {
        let smtp = Diagnostic::Smtp("550 5.1.1 No such user".into());
        assert_eq!(smtp.code(), "smtp; 550 5.1.1 No such user");
        let local = Diagnostic::Local("bounced by administrator".into());
        assert_eq!(local.code(), "X-mxgate; bounced by administrator");
        // A local reason that starts with digits is still local.
        let expired = Diagnostic::Local("451 4.3.0 x, then the message expired".into());
        assert_eq!(
            expired.code(),
            "X-mxgate; 451 4.3.0 x, then the message expired"
        );
    }
}
