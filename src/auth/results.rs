//! The `Authentication-Results` header (RFC 8601) we add, and the removal of incoming ones
//! that claim our authserv-id (§5: a forgery, or a stale result of ours). Pure text work.

use super::header::{authserv_id, fields, header_end, split_field};
use super::message::{DmarcVerdict, MessageAnswer};
use super::spf::SpfIdentity;

/// The header we add when a DMARC `quarantine` was applied: the internal server files on it.
pub const QUARANTINE_HEADER: &str = "X-Mxgate-DMARC";

/// Longest property value written, quoted; a longer one is left out. Four values and a
/// comment stay under RFC 5322's 998 characters per line.
const MAX_VALUE: usize = 200;

/// Longest comment (a reason) written.
const MAX_COMMENT: usize = 100;

/// A property value as RFC 8601 §2.2 writes it: `[local-part@]domain` or a token as is,
/// anything else printable as a quoted-string; `None` (left out) for an empty, over-long or
/// non-ASCII value. Never drops characters: a value is written whole or not at all.
fn pvalue(s: &str) -> Option<String> {
    if s.is_empty() || !s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return None;
    }
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b);
    let plain = match s.rsplit_once('@') {
        Some((l, d)) => {
            l.bytes().all(atext)
                && !d.is_empty()
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
        None => s
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b)),
    };
    let v = if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    };
    (v.len() <= MAX_VALUE).then_some(v)
}

/// A domain property value: its A-label form when internationalized.
fn domain_value(d: &str) -> Option<String> {
    pvalue(&super::dns_verify::a_label(d).unwrap_or_else(|| d.to_string()))
}

/// ` name=value`, or nothing when the value cannot be written.
fn prop(name: &str, value: Option<String>) -> String {
    value.map(|v| format!(" {name}={v}")).unwrap_or_default()
}

/// `Authentication-Results: <authserv_id>; spf=…; dkim=…; dmarc=…` with CRLF, folded one
/// method per line. `none` when no method ran (§2.2).
pub fn render(authserv_id: &str, answer: &MessageAnswer, dmarc_asked: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(o) = &answer.spf {
        let name = match o.identity {
            SpfIdentity::MailFrom => "smtp.mailfrom",
            SpfIdentity::Helo => "smtp.helo",
        };
        let value = match o.identity {
            SpfIdentity::MailFrom => match o.address.rsplit_once('@') {
                Some((l, d)) => domain_value(d).and_then(|d| pvalue(&format!("{l}@{d}"))),
                None => pvalue(&o.address),
            },
            SpfIdentity::Helo => domain_value(&o.domain),
        };
        parts.push(format!("spf={}{}", o.result.label(), prop(name, value)));
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
            p.push_str(&prop("header.d", domain_value(&s.domain)));
            p.push_str(&prop("header.s", pvalue(&s.selector)));
            p.push_str(&prop("header.i", pvalue(&s.identity)));
            parts.push(p);
        }
    }
    if let Some(d) = &answer.dmarc {
        let mut p = format!("dmarc={}", d.result.label());
        // The policy means something only when a record was found and evaluated.
        if matches!(d.result, DmarcVerdict::Pass | DmarcVerdict::Fail) {
            p.push_str(&format!(" (p={})", d.policy.as_str()));
        }
        p.push_str(&prop("header.from", domain_value(&d.from_domain)));
        parts.push(p);
    }
    let id = pvalue(authserv_id).unwrap_or_else(|| "localhost".into());
    if parts.is_empty() {
        return format!("Authentication-Results: {id}; none\r\n");
    }
    format!(
        "Authentication-Results: {id};\r\n\t{}\r\n",
        parts.join(";\r\n\t")
    )
}

/// A comment's text: printable ASCII words without parentheses or backslashes (they would
/// end or escape the comment), at most [`MAX_VALUE`] bytes.
fn token_words(s: &str) -> String {
    let mut out = s
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\'))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ");
    out.truncate(MAX_COMMENT);
    out
}

/// How many forged fields [`strip_forged`] removed, by name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forged {
    /// `Authentication-Results` fields claiming one of our authserv-ids.
    pub results: usize,
    /// [`QUARANTINE_HEADER`] fields.
    pub quarantine: usize,
}

/// `message` without the `Authentication-Results` fields whose authserv-id is one of `ours`
/// (the one we write, and the listener's host name when `override_hostname` differs: the
/// internal server may trust either), and without any [`QUARANTINE_HEADER`] (only we set it).
pub fn strip_forged(message: &[u8], ours: &[&str]) -> (Vec<u8>, Forged) {
    let end = header_end(message);
    let mut out = Vec::with_capacity(message.len());
    let mut removed = Forged::default();
    for f in fields(&message[..end]) {
        let (name, value) = split_field(f);
        if name.eq_ignore_ascii_case(b"authentication-results") && {
            let id = authserv_id(value);
            ours.iter().any(|o| id.eq_ignore_ascii_case(o))
        } {
            removed.results += 1;
        } else if name.eq_ignore_ascii_case(QUARANTINE_HEADER.as_bytes()) {
            removed.quarantine += 1;
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
        let (out, n) = strip_forged(msg, &["mx.test.example"]);
        assert_eq!((n.results, n.quarantine), (2, 1));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Authentication-Results: other.example; dmarc=pass\r\nSubject: s\r\n\r\n\
Authentication-Results: mx.test.example; body\r\n"
        );
    }

    #[test]
    fn values_are_written_whole_quoted_or_left_out() {
        assert_eq!(pvalue("a@b.example").as_deref(), Some("a@b.example"));
        assert_eq!(pvalue("@b.example").as_deref(), Some("@b.example"));
        assert_eq!(pvalue("sel-2024").as_deref(), Some("sel-2024"));
        assert_eq!(
            pvalue("sel d=bank.test").as_deref(),
            Some("\"sel d=bank.test\"")
        );
        assert_eq!(pvalue("a\"b").as_deref(), Some("\"a\\\"b\""));
        assert_eq!(
            pvalue("x@evil.test;dmarc=pass").as_deref(),
            Some("\"x@evil.test;dmarc=pass\"")
        );
        assert_eq!(pvalue("b\u{430}nk.test"), None);
        assert_eq!(pvalue(&"s".repeat(201)), None);
        assert_eq!(pvalue(&"\"".repeat(150)), None);
        assert_eq!(pvalue(""), None);
        assert_eq!(
            domain_value("B\u{fc}cher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
    }

    #[test]
    fn header_only_message_and_no_headers() {
        let (out, n) = strip_forged(b"Authentication-Results: a.b; x", &["c.d", "a.b"]);
        assert_eq!((out.as_slice(), n.results), (&b""[..], 1));
        let (out, n) = strip_forged(b"\r\nbody", &["a.b"]);
        assert_eq!((out.as_slice(), n), (&b"\r\nbody"[..], Forged::default()));
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
            header: None,
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
            header: None,
        };
        assert_eq!(
            render("mx.test", &none, false),
            "Authentication-Results: mx.test; none\r\n"
        );
    }
}
