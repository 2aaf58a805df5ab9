//! The header section of a received message as the checks after DATA see it: its fields, a
//! structure the internal server will read the same way (or a refusal), the From fields
//! DMARC needs, and the copy DKIM verifies, with the signatures it will not verify taken out
//! (a cap against DNS and CPU amplification, RFC 6376 §6.1; rsa-sha1, RFC 8301 §3.1).
//! Pure byte work.

/// DKIM signatures verified per message; the rest are reported as `policy` (RFC 6376 §6.1
/// lets a verifier limit them: each costs a DNS query and a hash of the signed headers).
pub const MAX_DKIM_SIGNATURES: usize = 5;

/// Header names one signature may list in `h=` (more: not verified). Verification cost
/// grows with names × header fields.
pub const MAX_SIGNED_HEADERS: usize = 100;

/// Names × header fields the verified signatures may cost together (a signature past the
/// budget is not verified): a few thousand for real mail, bounded for a hostile one.
pub const DKIM_WORK_BUDGET: usize = 2_000_000;

/// Why the header section cannot be authenticated as the internal server will read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The first line is a continuation line: it would fold into the header we add on top.
    FoldedFirstLine,
    /// A line that is neither a field nor a continuation (RFC 5322 §2.2): parsers disagree
    /// on where the header section ends.
    LineWithoutColon,
    /// Not exactly one `From:` field (RFC 7489 §6.6.1): how many there are.
    FromFields(usize),
    /// The `From:` field has no address, addresses of several domains, or a domain that
    /// is not a host name: no single author domain for DMARC.
    FromAddress,
    /// The DKIM/DMARC parser could not read the header section.
    Unreadable,
}

impl HeaderProblem {
    /// True for the structural problems, refused whenever we add `Authentication-Results`.
    pub fn is_malformed(self) -> bool {
        matches!(
            self,
            HeaderProblem::FoldedFirstLine
                | HeaderProblem::LineWithoutColon
                | HeaderProblem::Unreadable
        )
    }

    /// The mail log's and the reply's wording.
    pub fn describe(self) -> String {
        match self {
            HeaderProblem::FoldedFirstLine => "the first header line is a continuation".into(),
            HeaderProblem::LineWithoutColon => "a header line is not a field".into(),
            HeaderProblem::FromFields(n) => format!("{n} From fields, not one"),
            HeaderProblem::FromAddress => "no single From domain".into(),
            HeaderProblem::Unreadable => "the header section cannot be read".into(),
        }
    }
}

/// The length of the header section of `message` (up to and including the empty line; the
/// whole message when it has no body).
pub(crate) fn header_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 0;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |i| i + 2)
}

/// The fields of a header section, each with its continuation lines and CRLFs.
pub(crate) fn fields(head: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
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
    fields
}

/// A field's name (trimmed) and value; the name is empty for a line without a colon.
pub(crate) fn split_field(f: &[u8]) -> (&[u8], &[u8]) {
    match f.iter().position(|b| *b == b':') {
        Some(c) => (f[..c].trim_ascii(), &f[c + 1..]),
        None => (&f[..0], f),
    }
}

/// The structural problem of `message`'s header section, if any, else how many `From:`
/// fields it has.
pub fn structure(message: &[u8]) -> Result<usize, HeaderProblem> {
    let head = &message[..header_end(message)];
    if matches!(head.first(), Some(b' ' | b'\t')) {
        return Err(HeaderProblem::FoldedFirstLine);
    }
    let mut from = 0;
    for f in fields(head) {
        // The name and its colon on the field's first line, the name printable ASCII
        // (RFC 5322 §2.2; `From :` is the obsolete form, still read): else parsers disagree.
        let first = f.split(|b| *b == b'\n').next().unwrap_or(f);
        let Some(colon) = first.iter().position(|b| *b == b':') else {
            return Err(HeaderProblem::LineWithoutColon);
        };
        let name = first[..colon].trim_ascii_end();
        if name.is_empty() || !name.iter().all(|b| (33..=126).contains(b)) {
            return Err(HeaderProblem::LineWithoutColon);
        }
        if name.eq_ignore_ascii_case(b"from") {
            from += 1;
        }
    }
    Ok(from)
}

/// The problem with the author addresses mail-auth parsed from the `From:` field, if any.
pub fn from_problem(addresses: &[String]) -> Option<HeaderProblem> {
    let mut domain: Option<String> = None;
    for a in addresses {
        let d = a
            .rsplit_once('@')
            .and_then(|(_, d)| super::dns_verify::a_label(d))
            .filter(|d| crate::dns::name::is_host_name(d) && d.contains('.'));
        match (d, &domain) {
            (None, _) => return Some(HeaderProblem::FromAddress),
            (Some(d), Some(seen)) if &d != seen => return Some(HeaderProblem::FromAddress),
            (Some(d), _) => domain = Some(d),
        }
    }
    domain.is_none().then_some(HeaderProblem::FromAddress)
}

/// A DKIM signature taken out before verification, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// `d=`, `s=`, `i=` as written (for the log and the header).
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `i=`.
    pub identity: String,
    /// Why it was not verified.
    pub why: &'static str,
}

/// A tag's value in a DKIM-Signature value (`d`, `s`, `i`, `a`, `h`), whitespace removed.
fn tag(value: &[u8], name: &str) -> String {
    String::from_utf8_lossy(value)
        .split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.chars().filter(|c| !c.is_whitespace()).collect())
        .unwrap_or_default()
}

/// True when a tag name appears twice (RFC 6376 §3.2: invalid; and we must read the tags
/// as the verifier does, which takes another occurrence than ours).
fn repeated_tag(value: &[u8]) -> bool {
    let text = String::from_utf8_lossy(value);
    let mut seen = std::collections::HashSet::new();
    text.split(';')
        .filter_map(|t| t.split_once('='))
        .any(|(k, _)| !seen.insert(k.trim().to_ascii_lowercase()))
}

/// `message` as DKIM verifies it: the first [`MAX_DKIM_SIGNATURES`] acceptable
/// `DKIM-Signature` fields kept, the others taken out and returned.
pub fn dkim_view(message: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Vec<Unverified>) {
    let end = header_end(message);
    let all = fields(&message[..end]);
    let mut kept = 0;
    let mut work = 0usize;
    let mut out = Vec::new();
    let mut skip = vec![false; all.len()];
    for (i, f) in all.iter().enumerate() {
        let (name, value) = split_field(f);
        if !name.eq_ignore_ascii_case(b"dkim-signature") {
            continue;
        }
        let names = tag(value, "h").split(':').count();
        let why = if repeated_tag(value) {
            Some("a tag is repeated (RFC 6376 3.2)")
        } else if tag(value, "a").eq_ignore_ascii_case("rsa-sha1") {
            Some("rsa-sha1 is not accepted (RFC 8301)")
        } else if names > MAX_SIGNED_HEADERS {
            Some("too many signed header fields")
        } else if kept >= MAX_DKIM_SIGNATURES {
            Some("signature limit reached")
        } else if work + names * all.len() > DKIM_WORK_BUDGET {
            Some("too many header fields to verify")
        } else {
            kept += 1;
            work += names * all.len();
            None
        };
        if let Some(why) = why {
            skip[i] = true;
            out.push(Unverified {
                domain: tag(value, "d").to_ascii_lowercase(),
                selector: tag(value, "s"),
                identity: tag(value, "i"),
                why,
            });
        }
    }
    if out.is_empty() {
        return (std::borrow::Cow::Borrowed(message), out);
    }
    let mut view = Vec::with_capacity(message.len());
    for (f, s) in all.iter().zip(&skip) {
        if !s {
            view.extend_from_slice(f);
        }
    }
    view.extend_from_slice(&message[end..]);
    (std::borrow::Cow::Owned(view), out)
}

/// The authserv-id of an `Authentication-Results` value (RFC 8601 §2.2): CFWS skipped
/// (nested comments with `\` escapes), then a token or a quoted-string.
pub(crate) fn authserv_id(value: &[u8]) -> String {
    let mut i = 0;
    let mut depth = 0u32;
    // Leading white space and comments.
    while i < value.len() {
        match value[i] {
            b'\\' if depth > 0 => i += 1,
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let mut out = Vec::new();
    if value.get(i) == Some(&b'"') {
        i += 1;
        while i < value.len() && value[i] != b'"' {
            if value[i] == b'\\' {
                i += 1;
            }
            if let Some(b) = value.get(i) {
                out.push(*b);
            }
            i += 1;
        }
    } else {
        while i < value.len() && !matches!(value[i], b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(') {
            out.push(value[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_finds_folded_starts_stray_lines_and_counts_from() {
        assert_eq!(
            structure(b"\t; dkim=pass\r\nFrom: a@b.example\r\n\r\nx"),
            Err(HeaderProblem::FoldedFirstLine)
        );
        assert_eq!(
            structure(b"X-A: 1\r\ngarbage\r\nFrom: a@b.example\r\n\r\nx"),
            Err(HeaderProblem::LineWithoutColon)
        );
        assert_eq!(
            structure(b"From: a@b.example\r\n\tfolded\r\n\r\nx: y"),
            Ok(1)
        );
        assert_eq!(structure(b"From: a\r\nFROM : b\r\n\r\n"), Ok(2));
        assert_eq!(structure(b"\r\nbody without headers"), Ok(0));
        // A name alone on its line, its colon on the next: mail-auth stops reading there.
        assert_eq!(
            structure(b"X-Foo\r\n : bar\r\nFrom: a@b.example\r\n\r\n"),
            Err(HeaderProblem::LineWithoutColon)
        );
        assert_eq!(
            structure(b"Fr\xc3\xb6m: a@b.example\r\n\r\n"),
            Err(HeaderProblem::LineWithoutColon)
        );
        assert_eq!(structure(b"From : a@b.example\r\n\r\n"), Ok(1));
    }

    #[test]
    fn one_author_domain_or_a_problem() {
        let p = |a: &[&str]| from_problem(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&["ceo@bank.test"]), None);
        assert_eq!(p(&["a@Bank.test", "b@bank.test"]), None);
        assert_eq!(
            p(&["a@bank.test", "b@evil.test"]),
            Some(HeaderProblem::FromAddress)
        );
        assert_eq!(p(&[]), Some(HeaderProblem::FromAddress));
        for bad in [
            "ceo",
            "ceo@ bank.test",
            "ceo@bank .test",
            "ceo@bank.test.",
            "a@b",
        ] {
            assert_eq!(p(&[bad]), Some(HeaderProblem::FromAddress), "{bad}");
        }
    }

    #[test]
    fn the_view_keeps_five_signatures_and_drops_sha1_and_huge_lists() {
        let mut m = String::new();
        m.push_str("DKIM-Signature: v=1; a=rsa-sha1; d=old.test; s=s; h=from; b=x\r\n");
        m.push_str(&format!(
            "DKIM-Signature: v=1; a=rsa-sha256; d=wide.test; s=s; h={}; b=x\r\n",
            vec!["x"; 101].join(":")
        ));
        for n in 0..7 {
            m.push_str(&format!(
                "DKIM-Signature: v=1; a=rsa-sha256; d={n}.test; s=s{n};\r\n\th=from; b=x\r\n"
            ));
        }
        m.push_str("From: a@b.test\r\n\r\nbody\r\n");
        let (view, out) = dkim_view(m.as_bytes());
        let why: Vec<(&str, &str)> = out.iter().map(|u| (u.domain.as_str(), u.why)).collect();
        assert_eq!(
            why,
            [
                ("old.test", "rsa-sha1 is not accepted (RFC 8301)"),
                ("wide.test", "too many signed header fields"),
                ("5.test", "signature limit reached"),
                ("6.test", "signature limit reached"),
            ]
        );
        let view = String::from_utf8(view.into_owned()).unwrap();
        assert_eq!(view.matches("DKIM-Signature").count(), 5);
        assert!(view.contains("d=4.test; s=s4;\r\n\th=from; b=x\r\nFrom: a@b.test\r\n\r\nbody"));
        let twice = b"DKIM-Signature: a=rsa-sha256; h=from; d=a.test; h=from:x:y\r\n\r\n";
        assert_eq!(
            dkim_view(twice).1[0].why,
            "a tag is repeated (RFC 6376 3.2)"
        );
        let mut many = format!(
            "DKIM-Signature: v=1; d=w.test; s=s; h={}; b=x\r\n",
            vec!["x"; MAX_SIGNED_HEADERS].join(":")
        );
        many.push_str(&"X: y\r\n".repeat(DKIM_WORK_BUDGET / MAX_SIGNED_HEADERS));
        assert_eq!(
            dkim_view(many.as_bytes()).1[0].why,
            "too many header fields to verify"
        );
        let plain = b"From: a@b.test\r\n\r\nx";
        assert!(matches!(dkim_view(plain).0, std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn authserv_ids_behind_comments_and_in_quotes() {
        for (v, id) in [
            (" mx.test.example; spf=pass", "mx.test.example"),
            (" (c) MX.test.example 1; x", "MX.test.example"),
            (" (a\\(b) mx.test.example; x", "mx.test.example"),
            (" (a (nested) b) mx.test.example;x", "mx.test.example"),
            (" \"mx.test.example\"; dmarc=pass", "mx.test.example"),
            (" \"mx.te\\st.example\"; x", "mx.test.example"),
            ("\r\n\tmx.test.example;", "mx.test.example"),
            (" mx.test.example(c);", "mx.test.example"),
        ] {
            assert_eq!(authserv_id(v.as_bytes()), id, "{v}");
        }
    }
}
