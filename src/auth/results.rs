//! The `Authentication-Results` header (RFC 8601) we add, and the removal of incoming ones
//! that claim our authserv-id (§5: a forgery, or a stale result of ours). Pure text work.

use super::message::{DmarcVerdict, MessageAnswer};
use super::spf::SpfIdentity;

/// The header we add when a DMARC `quarantine` was applied: the internal server files on it.
pub const QUARANTINE_HEADER: &str = "X-Mxgate-DMARC";

/// Keeps a value safe inside a header: printable ASCII without `;`, `(`, `)`, `"` or `\`.
fn token(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, ';' | '(' | ')' | '"' | '\\'))
        .collect()
}

/// `Authentication-Results: <authserv_id>; spf=…; dkim=…; dmarc=…` with CRLF, folded one
/// method per line. `none` when no method ran (§2.2).
pub fn render(authserv_id: &str, answer: &MessageAnswer, dmarc_asked: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(o) = &answer.spf {
        let prop = match o.identity {
            SpfIdentity::MailFrom => "smtp.mailfrom",
            SpfIdentity::Helo => "smtp.helo",
        };
        let value = match o.identity {
            SpfIdentity::MailFrom => token(&o.address),
            SpfIdentity::Helo => token(&o.domain),
        };
        parts.push(format!("spf={} {prop}={value}", o.result.label()));
    }
    if dmarc_asked {
        if answer.dkim.is_empty() {
            parts.push("dkim=none".into());
        }
        for s in &answer.dkim {
            let mut p = format!("dkim={}", s.result.label());
            if !s.reason.is_empty() {
                p.push_str(&format!(" ({})", token_words(&s.reason)));
            }
            if !s.domain.is_empty() {
                p.push_str(&format!(" header.d={}", token(&s.domain)));
            }
            if !s.selector.is_empty() {
                p.push_str(&format!(" header.s={}", token(&s.selector)));
            }
            if !s.identity.is_empty() {
                p.push_str(&format!(" header.i={}", token(&s.identity)));
            }
            parts.push(p);
        }
    }
    if let Some(d) = &answer.dmarc {
        let mut p = format!("dmarc={}", d.result.label());
        // The policy means something only when a record was found and evaluated.
        if matches!(d.result, DmarcVerdict::Pass | DmarcVerdict::Fail) {
            p.push_str(&format!(" (p={})", d.policy.as_str()));
        }
        if !d.from_domain.is_empty() {
            p.push_str(&format!(" header.from={}", token(&d.from_domain)));
        }
        parts.push(p);
    }
    let id = token(authserv_id);
    if parts.is_empty() {
        return format!("Authentication-Results: {id}; none\r\n");
    }
    format!(
        "Authentication-Results: {id};\r\n\t{}\r\n",
        parts.join(";\r\n\t")
    )
}

/// A comment's text: words of printable ASCII, parentheses and backslashes dropped.
fn token_words(s: &str) -> String {
    s.split_whitespace()
        .map(token)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The authserv-id of an `Authentication-Results` value: its first token, comments skipped.
fn authserv_id(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut out = String::new();
    let mut depth = 0u32;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            ';' => break,
            c if c.is_whitespace() => {
                if !out.is_empty() {
                    break;
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The length of the header section of `message` (up to and including the empty line; the
/// whole message when it has no body).
fn header_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 0;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |i| i + 2)
}

/// `message` without the `Authentication-Results` fields whose authserv-id is `ours`, and
/// without any [`QUARANTINE_HEADER`] (only we set it). Returns the bytes and how many fields
/// were removed.
pub fn strip_forged(message: &[u8], ours: &str) -> (Vec<u8>, usize) {
    let end = header_end(message);
    let mut out = Vec::with_capacity(message.len());
    let mut removed = 0;
    // Split the header section into fields: a line starting with white space continues one.
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let head = &message[..end];
    while i < head.len() {
        let line_end = head[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(head.len(), |p| i + p + 2);
        if i > start && !matches!(head[i], b' ' | b'\t') {
            fields.push(&head[start..i]);
            start = i;
        }
        i = line_end;
    }
    if start < head.len() {
        fields.push(&head[start..]);
    }
    for f in fields {
        let (name, value) = match f.iter().position(|b| *b == b':') {
            Some(c) => (&f[..c], &f[c + 1..]),
            None => (f, &f[f.len()..]),
        };
        let name = String::from_utf8_lossy(name);
        let name = name.trim();
        let forged = (name.eq_ignore_ascii_case("authentication-results")
            && authserv_id(value).eq_ignore_ascii_case(ours))
            || name.eq_ignore_ascii_case(QUARANTINE_HEADER);
        if forged {
            removed += 1;
        } else {
            out.extend_from_slice(f);
        }
    }
    out.extend_from_slice(&message[end..]);
    (out, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::message::{DkimSignature, DkimVerdict, DmarcOutcome, DmarcPolicy};
    use crate::auth::{SpfOutcome, SpfVerdict};

    #[test]
    fn removes_only_our_authserv_id_and_keeps_folding() {
        let msg = b"Authentication-Results: MX.test.example;\r\n\tspf=pass\r\n\
Authentication-Results: (comment) mx.test.example 1; dkim=pass\r\n\
Authentication-Results: other.example; dmarc=pass\r\n\
X-Mxgate-DMARC: none\r\nSubject: s\r\n\r\nAuthentication-Results: mx.test.example; body\r\n";
        let (out, n) = strip_forged(msg, "mx.test.example");
        assert_eq!(n, 3);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Authentication-Results: other.example; dmarc=pass\r\nSubject: s\r\n\r\n\
Authentication-Results: mx.test.example; body\r\n"
        );
    }

    #[test]
    fn header_only_message_and_no_headers() {
        let (out, n) = strip_forged(b"Authentication-Results: a.b; x", "a.b");
        assert_eq!((out.as_slice(), n), (&b""[..], 1));
        let (out, n) = strip_forged(b"\r\nbody", "a.b");
        assert_eq!((out.as_slice(), n), (&b"\r\nbody"[..], 0));
    }

    #[test]
    fn renders_each_method_on_its_line() {
        let answer = MessageAnswer {
            dkim: vec![
                DkimSignature {
                    result: DkimVerdict::Pass,
                    domain: "a.example".into(),
                    selector: "sel".into(),
                    identity: "@a.example".into(),
                    reason: String::new(),
                },
                DkimSignature {
                    result: DkimVerdict::Fail,
                    domain: "b.example".into(),
                    selector: "s2".into(),
                    identity: String::new(),
                    reason: "body hash (did not) verify".into(),
                },
            ],
            spf: Some(SpfOutcome {
                result: SpfVerdict::Fail,
                identity: SpfIdentity::MailFrom,
                address: "x@a.example".into(),
                domain: "a.example".into(),
            }),
            spf_now: false,
            dmarc: Some(DmarcOutcome {
                result: DmarcVerdict::Pass,
                from_domain: "a.example".into(),
                policy: DmarcPolicy::Reject,
                pct: 100,
                spf_aligned: false,
                dkim_aligned: true,
            }),
            sample: 0,
        };
        assert_eq!(
            render("mx.test", &answer, true),
            "Authentication-Results: mx.test;\r\n\tspf=fail smtp.mailfrom=x@a.example;\r\n\t\
dkim=pass header.d=a.example header.s=sel header.i=@a.example;\r\n\t\
dkim=fail (body hash did not verify) header.d=b.example header.s=s2;\r\n\t\
dmarc=pass (p=reject) header.from=a.example\r\n"
        );
        let none = MessageAnswer {
            dkim: vec![],
            spf: None,
            spf_now: false,
            dmarc: None,
            sample: 0,
        };
        assert_eq!(
            render("mx.test", &none, false),
            "Authentication-Results: mx.test; none\r\n"
        );
    }
}
