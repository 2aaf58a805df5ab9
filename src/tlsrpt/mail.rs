//! The report inside a report mail (RFC 8460 §5.3): a `multipart/report; report-type=tlsrpt`
//! message whose report part is `application/tlsrpt+gzip` or `application/tlsrpt+json`
//! (any transfer encoding). MIME is parsed by `mail-parser`; we only pick the part.

use mail_parser::{MessageParser, MimeHeaders};

/// The report part of a mail: its content type and decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPart {
    /// `application/tlsrpt+gzip` or `application/tlsrpt+json`.
    pub content_type: String,
    /// The part's body after its transfer encoding was undone.
    pub body: Vec<u8>,
}

/// Why a mail held no report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The message could not be parsed as MIME at all.
    #[error("not a MIME message")]
    NotMime,
    /// No part is `application/tlsrpt+gzip` or `application/tlsrpt+json`.
    #[error("no application/tlsrpt+gzip or application/tlsrpt+json part")]
    NoReportPart,
    /// More than one report part: RFC 8460 §5.3 allows one report per message.
    #[error("{0} report parts: one report per message (RFC 8460 §5.3)")]
    SeveralReports(usize),
}

/// The report part of `message` (the message as received, headers included).
pub fn report_part(message: &[u8]) -> Result<ReportPart, MailError> {
    let parsed = MessageParser::default()
        .parse(message)
        .ok_or(MailError::NotMime)?;
    let mut found: Vec<ReportPart> = parsed
        .parts
        .iter()
        .filter_map(|part| {
            let ct = part.content_type()?;
            let sub = ct.subtype()?;
            let full = format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase();
            matches!(
                full.as_str(),
                "application/tlsrpt+gzip" | "application/tlsrpt+json"
            )
            .then(|| ReportPart {
                content_type: full,
                body: part.contents().to_vec(),
            })
        })
        .collect();
    match found.len() {
        0 => Err(MailError::NoReportPart),
        1 => Ok(found.remove(0)),
        n => Err(MailError::SeveralReports(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report mail as RFC 8460 §5.3 shows it, with `part` as the report part.
    fn mail(part_headers: &str, part_body: &str) -> Vec<u8> {
        format!(
            "From: tlsrpt-noreply@mail.example\r\nTo: tlsrpt@example.com\r\n\
             Subject: Report Domain: example.com Submitter: mail.example Report-ID: <r1>\r\n\
             TLS-Report-Domain: example.com\r\nTLS-Report-Submitter: mail.example\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"B\"\r\n\r\n\
             --B\r\nContent-Type: text/plain\r\n\r\nThis is an aggregate TLS report.\r\n\
             --B\r\n{part_headers}\r\n\r\n{part_body}\r\n--B--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn the_report_part_is_found_and_decoded() {
        use base64::Engine;
        let gz = crate::tlsrpt::decode::gzip(b"{\"a\":1}");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&gz);
        let m = mail(
            "Content-Type: application/tlsrpt+gzip; name=\"r.json.gz\"\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"r.json.gz\"",
            &b64,
        );
        let p = report_part(&m).unwrap();
        assert_eq!(p.content_type, "application/tlsrpt+gzip");
        assert_eq!(p.body, gz);

        let m = mail("Content-Type: Application/TLSRPT+JSON", "{\"a\":1}");
        let p = report_part(&m).unwrap();
        assert_eq!(p.content_type, "application/tlsrpt+json");
        assert_eq!(p.body, b"{\"a\":1}");
    }

    #[test]
    fn mail_without_one_report_part_is_refused() {
        let m = mail("Content-Type: application/json", "{}");
        assert_eq!(report_part(&m), Err(MailError::NoReportPart));
        assert_eq!(
            report_part(b"Subject: hi\r\n\r\nplain text\r\n"),
            Err(MailError::NoReportPart)
        );
        let two = "Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\n\
             Content-Type: application/tlsrpt+json\r\n\r\n{}\r\n--B\r\n\
             Content-Type: application/tlsrpt+json\r\n\r\n{}\r\n--B--\r\n";
        assert_eq!(
            report_part(two.as_bytes()),
            Err(MailError::SeveralReports(2))
        );
    }
}
