//! Strict RFC 5321 §4.1.2 path parsing (`<local@domain>`), with flags for relay-trick syntax.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::reply::{Enhanced, Reply};

/// RFC 5321 §4.5.3.1.1.
const MAX_LOCAL: usize = 64;
/// RFC 5321 §4.5.3.1.2.
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;
/// RFC 5321 §4.5.3.1.3, angle brackets included.
const MAX_PATH: usize = 256;

/// Syntax features of a parsed mailbox that policy may care about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressFlags {
    /// An RFC 5321 source route (`@a,@b:`) was present and dropped.
    pub source_route: bool,
    /// The domain is an address literal such as `[192.0.2.1]`.
    pub domain_literal: bool,
    /// The local part was a quoted string.
    pub quoted_local: bool,
    /// The (unquoted) local part contains `@`, `%` or `!`.
    pub local_has_routing: bool,
    /// The domain had a trailing dot, which was stripped.
    pub trailing_dot: bool,
    /// The local part or domain contains non-ASCII UTF-8.
    pub utf8: bool,
}

/// A parsed mailbox: local part (unquoted) and domain (as given, not case-folded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Local part with quoting removed.
    pub local: String,
    /// Domain as sent (trailing dot stripped); an address literal keeps its brackets.
    pub domain: String,
    /// Syntax features seen while parsing.
    pub flags: AddressFlags,
}

impl Mailbox {
    /// True if the address uses syntax typically abused for relaying.
    pub(crate) fn is_relay_attempt(&self) -> bool {
        let f = &self.flags;
        f.source_route || f.domain_literal || f.local_has_routing || f.trailing_dot
    }

    /// `local@domain`, with the local part re-quoted if it was quoted.
    pub fn address(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.flags.quoted_local {
            // Re-quote so `"a@b"@c` is never displayed as the different address `a@b@c`.
            f.write_str("\"")?;
            for part in self.local.split_inclusive(['"', '\\']) {
                match part.strip_suffix(['"', '\\']) {
                    Some(head) => {
                        f.write_str(head)?;
                        f.write_str("\\")?;
                        f.write_str(&part[head.len()..])?;
                    }
                    None => f.write_str(part)?,
                }
            }
            f.write_str("\"")?;
        } else {
            f.write_str(&self.local)?;
        }
        // `<Postmaster>` has no domain (RFC 5321 §4.1.1.3).
        if !self.domain.is_empty() {
            write!(f, "@{}", self.domain)?;
        }
        Ok(())
    }
}

/// Why a path is syntactically invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// The path does not start with `<`.
    MissingBrackets,
    /// The input ended before the closing `>` (or inside a quoted string or literal).
    Unterminated,
    /// Invalid syntax; the text names the problem (never echoes client input).
    Syntax(&'static str),
    /// A length limit was exceeded; the text names the part.
    TooLong(&'static str),
}

impl AddressError {
    /// A generic `501 5.1.3` reply; the command layer picks sender/recipient wording.
    pub fn reply(&self) -> Reply {
        Reply::new(
            501,
            Enhanced(5, 1, 3),
            format!("Bad address syntax ({self})"),
        )
    }
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::MissingBrackets => f.write_str("angle brackets required"),
            AddressError::Unterminated => f.write_str("unterminated address"),
            AddressError::Syntax(s) => f.write_str(s),
            AddressError::TooLong(what) => write!(f, "{what} too long"),
        }
    }
}

impl std::error::Error for AddressError {}

/// Parses the path `<...>` at the start of `s`; returns `None` for `<>` and the bytes consumed.
pub fn parse_path(s: &str) -> Result<(Option<Mailbox>, usize), AddressError> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return Err(AddressError::MissingBrackets);
    }
    if b.get(1) == Some(&b'>') {
        return Ok((None, 2));
    }
    let mut p = Parser { s, b, pos: 1 };
    let mut flags = AddressFlags::default();

    if p.peek() == Some(b'@') {
        p.source_route()?;
        flags.source_route = true;
    }

    let local_start = p.pos;
    let local = if p.peek() == Some(b'"') {
        flags.quoted_local = true;
        p.quoted_string()?
    } else {
        p.dot_string()?;
        s[local_start..p.pos].to_owned()
    };
    if p.pos - local_start > MAX_LOCAL {
        return Err(AddressError::TooLong("local part"));
    }
    match p.bump() {
        Some(b'@') => {}
        None => return Err(AddressError::Unterminated),
        Some(b'>') => return Err(AddressError::Syntax("missing domain")),
        Some(_) => return Err(AddressError::Syntax("invalid character in local part")),
    }

    let domain = if p.peek() == Some(b'[') {
        flags.domain_literal = true;
        p.address_literal()?
    } else {
        let (d, trailing) = p.domain(true)?;
        flags.trailing_dot = trailing;
        d
    };
    match p.bump() {
        Some(b'>') => {}
        None => return Err(AddressError::Unterminated),
        Some(_) => return Err(AddressError::Syntax("invalid character in domain")),
    }
    if p.pos > MAX_PATH {
        return Err(AddressError::TooLong("path"));
    }

    flags.local_has_routing = local.bytes().any(|c| matches!(c, b'@' | b'%' | b'!'));
    flags.utf8 = !local.is_ascii() || !domain.is_ascii();
    // ASCII controls never pass the byte classes; C1 controls (U+0080..U+009F) could.
    if flags.utf8 && (local.chars().any(char::is_control) || domain.chars().any(char::is_control)) {
        return Err(AddressError::Syntax("control character in address"));
    }
    Ok((
        Some(Mailbox {
            local,
            domain,
            flags,
        }),
        p.pos,
    ))
}

/// RFC 5321 atext, extended with UTF-8 bytes by RFC 6531 (the `&str` guarantees validity).
fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

fn is_ldh(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
    }

    /// `@a.test,@b.test:` — validated, then dropped by the caller.
    fn source_route(&mut self) -> Result<(), AddressError> {
        loop {
            self.expect(b'@', "invalid source route")?;
            self.domain(false)?;
            match self.bump() {
                Some(b',') => {}
                Some(b':') => return Ok(()),
                None => return Err(AddressError::Unterminated),
                Some(b'>') => return Err(AddressError::Syntax("missing local part")),
                Some(_) => return Err(AddressError::Syntax("invalid source route")),
            }
        }
    }

    fn dot_string(&mut self) -> Result<(), AddressError> {
        let start = self.pos;
        loop {
            let atom = self.pos;
            self.skip_while(is_atext);
            if self.pos == atom {
                return Err(match self.peek() {
                    None => AddressError::Unterminated,
                    Some(b'.') if atom == start => {
                        AddressError::Syntax("local part starts with a dot")
                    }
                    Some(b'.') => AddressError::Syntax("consecutive dots in local part"),
                    Some(b'@') if atom == start => AddressError::Syntax("empty local part"),
                    Some(b'@') => AddressError::Syntax("local part ends with a dot"),
                    Some(_) => AddressError::Syntax("invalid character in local part"),
                });
            }
            if self.peek() != Some(b'.') {
                return Ok(());
            }
            self.pos += 1;
        }
    }

    /// RFC 5321 Quoted-string; returns the content with quoted-pairs resolved.
    fn quoted_string(&mut self) -> Result<String, AddressError> {
        self.pos += 1;
        let mut out = String::new();
        let mut run = self.pos;
        loop {
            match self.bump() {
                None => return Err(AddressError::Unterminated),
                Some(b'"') => {
                    out.push_str(&self.s[run..self.pos - 1]);
                    return Ok(out);
                }
                Some(b'\\') => {
                    out.push_str(&self.s[run..self.pos - 1]);
                    match self.bump() {
                        Some(c @ 32..=126) => out.push(char::from(c)),
                        None => return Err(AddressError::Unterminated),
                        Some(_) => return Err(AddressError::Syntax("invalid quoted-pair")),
                    }
                    run = self.pos;
                }
                // qtextSMTP (%d32-33 / %d35-91 / %d93-126) plus UTF-8 (RFC 6531).
                Some(32..=126 | 0x80..) => {}
                Some(_) => return Err(AddressError::Syntax("invalid character in quoted string")),
            }
        }
    }

    /// Dot-separated LDH labels; returns the domain and whether a trailing dot was stripped.
    fn domain(&mut self, allow_trailing_dot: bool) -> Result<(String, bool), AddressError> {
        let start = self.pos;
        let mut trailing = false;
        loop {
            let label = self.pos;
            self.skip_while(is_ldh);
            let l = &self.b[label..self.pos];
            if l.is_empty() {
                match self.peek() {
                    None => return Err(AddressError::Unterminated),
                    _ if label == start => return Err(AddressError::Syntax("missing domain")),
                    Some(b'>') if allow_trailing_dot => {
                        trailing = true;
                        break;
                    }
                    Some(b'.') => return Err(AddressError::Syntax("empty domain label")),
                    Some(_) => return Err(AddressError::Syntax("invalid character in domain")),
                }
            }
            if l.len() > MAX_LABEL {
                return Err(AddressError::TooLong("domain label"));
            }
            if l.first() == Some(&b'-') || l.last() == Some(&b'-') {
                return Err(AddressError::Syntax(
                    "domain label starts or ends with a hyphen",
                ));
            }
            if self.peek() != Some(b'.') {
                break;
            }
            self.pos += 1;
        }
        let end = self.pos - usize::from(trailing);
        if end - start > MAX_DOMAIN {
            return Err(AddressError::TooLong("domain"));
        }
        Ok((self.s[start..end].to_owned(), trailing))
    }

    /// `[IPv4]` or `[IPv6:...]`, kept with brackets; other tags are refused.
    fn address_literal(&mut self) -> Result<String, AddressError> {
        let start = self.pos;
        self.pos += 1;
        // dcontent: %d33-90 / %d94-126.
        self.skip_while(|c| matches!(c, 33..=90 | 94..=126));
        let content = &self.s[start + 1..self.pos];
        self.expect(b']', "invalid address literal")?;
        let ok = match content.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => valid_ipv6(&content[5..]),
            _ if content.contains(':') => {
                return Err(AddressError::Syntax("unsupported address literal tag"))
            }
            _ => content.parse::<Ipv4Addr>().is_ok(),
        };
        if !ok {
            return Err(AddressError::Syntax("invalid IP address literal"));
        }
        Ok(self.s[start..self.pos].to_owned())
    }

    /// Consumes `c`; end of input means unterminated, anything else is `msg`.
    fn expect(&mut self, c: u8, msg: &'static str) -> Result<(), AddressError> {
        match self.bump() {
            Some(x) if x == c => Ok(()),
            None => Err(AddressError::Unterminated),
            Some(_) => Err(AddressError::Syntax(msg)),
        }
    }
}

/// RFC 5321 IPv6 literal: std parsing plus "`::` stands for at least two groups".
fn valid_ipv6(s: &str) -> bool {
    if s.parse::<Ipv6Addr>().is_err() {
        return false;
    }
    if !s.contains("::") {
        return true;
    }
    let groups: usize = s
        .split(':')
        .filter(|g| !g.is_empty())
        .map(|g| if g.contains('.') { 2 } else { 1 })
        .sum();
    groups <= 6
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> (Mailbox, usize) {
        match parse_path(s) {
            Ok((Some(m), n)) => (m, n),
            other => panic!("{s:?}: {other:?}"),
        }
    }

    fn err(s: &str) -> AddressError {
        match parse_path(s) {
            Err(e) => e,
            other => panic!("{s:?} should fail: {other:?}"),
        }
    }

    #[test]
    fn plain_and_null() {
        let (m, n) = ok("<User.Name+tag@Example.COM> SIZE=1");
        assert_eq!(
            (m.local.as_str(), m.domain.as_str(), n),
            ("User.Name+tag", "Example.COM", 27)
        );
        assert_eq!(m.flags, AddressFlags::default());
        assert!(!m.is_relay_attempt());
        assert_eq!(m.address(), "User.Name+tag@Example.COM");
        assert_eq!(parse_path("<> BODY=8BITMIME"), Ok((None, 2)));
    }

    #[test]
    fn relay_tricks_are_flagged() {
        let (m, _) = ok("<user%other.test@example.com>");
        assert!(m.flags.local_has_routing && m.is_relay_attempt());
        let (m, _) = ok("<user!other.test@example.com>");
        assert!(m.flags.local_has_routing);

        let (m, _) = ok(r#"<"user@other.test"@example.com>"#);
        assert_eq!(m.local, "user@other.test");
        assert!(m.flags.quoted_local && m.flags.local_has_routing);
        assert_eq!(m.to_string(), r#""user@other.test"@example.com"#);

        let (m, n) = ok("<@example.com,@b.test:user@other.test>");
        assert_eq!(
            (m.local.as_str(), m.domain.as_str()),
            ("user", "other.test")
        );
        assert!(m.flags.source_route && m.is_relay_attempt());
        assert_eq!(n, 38);

        let (m, _) = ok("<user@[192.0.2.1]>");
        assert_eq!(m.domain, "[192.0.2.1]");
        assert!(m.flags.domain_literal && m.is_relay_attempt());

        let (m, _) = ok("<user@other.test.>");
        assert_eq!(m.domain, "other.test");
        assert!(m.flags.trailing_dot && m.is_relay_attempt());
    }

    #[test]
    fn quoted_local_parts() {
        let (m, _) = ok(r#"<"a\"b\\c d"@x>"#);
        assert_eq!(m.local, r#"a"b\c d"#);
        assert_eq!(m.address(), r#""a\"b\\c d"@x"#);
        let (m, _) = ok(r#"<""@x>"#);
        assert_eq!(m.local, "");
        assert_eq!(err(r#"<"a@x>"#), AddressError::Unterminated);
        assert_eq!(
            err("<\"a\tb\"@x>"),
            AddressError::Syntax("invalid character in quoted string")
        );
        assert_eq!(
            err("<\"a\\\u{e9}\"@x>"),
            AddressError::Syntax("invalid quoted-pair")
        );
    }

    #[test]
    fn address_literals() {
        for good in [
            "[IPv6:2001:db8::1]",
            "[ipv6:::1]",
            "[IPv6:::ffff:192.0.2.1]",
            "[IPv6:1:2:3:4:5:6:7:8]",
        ] {
            let (m, _) = ok(&format!("<u@{good}>"));
            assert_eq!(m.domain, good);
        }
        // `>` is legal dcontent, so the literal swallows it and never ends.
        assert_eq!(err("<u@[1.2.3.4>"), AddressError::Unterminated);
        assert_eq!(err("<u@[1.2.3.4"), AddressError::Unterminated);
    }

    #[test]
    fn syntax_errors() {
        use AddressError::*;
        const BAD_IP: AddressError = Syntax("invalid IP address literal");
        const HYPHEN: AddressError = Syntax("domain label starts or ends with a hyphen");
        let table: &[(&str, AddressError)] = &[
            ("<u@[192.0.2]>", BAD_IP),
            ("<u@[192.0.2.256]>", BAD_IP),
            ("<u@[010.0.0.1]>", BAD_IP),
            ("<u@[IPv6:2001:db8::g]>", BAD_IP),
            ("<u@[IPv6:1:2:3:4:5:6:7::]>", BAD_IP),
            ("<u@[IPv6:192.0.2.1]>", BAD_IP),
            ("<u@[]>", BAD_IP),
            ("<u@[x-tag:abc]>", Syntax("unsupported address literal tag")),
            ("<u@[1.2.3.4 >", Syntax("invalid address literal")),
            ("user@example.com", MissingBrackets),
            ("", MissingBrackets),
            (" <a@b>", MissingBrackets),
            ("<@example.com>", Syntax("missing local part")),
            ("<@x.test:@y.test:u@z>", Syntax("empty local part")),
            ("<@x.test;u@z>", Syntax("invalid source route")),
            ("<a..b@x>", Syntax("consecutive dots in local part")),
            ("<.a@x>", Syntax("local part starts with a dot")),
            ("<a.@x>", Syntax("local part ends with a dot")),
            ("<@x>", Syntax("missing local part")),
            ("<a@-x.test>", HYPHEN),
            ("<a@x-.test>", HYPHEN),
            ("<a@x..test>", Syntax("empty domain label")),
            ("<a@.x>", Syntax("missing domain")),
            ("<a@>", Syntax("missing domain")),
            ("<a>", Syntax("missing domain")),
            ("<a b@x>", Syntax("invalid character in local part")),
            ("<a@x y>", Syntax("invalid character in domain")),
            ("<a@x_y.test>", Syntax("invalid character in domain")),
            ("<a\0@x>", Syntax("invalid character in local part")),
            ("<a@b", Unterminated),
            ("<a@", Unterminated),
            ("<a", Unterminated),
            ("<", Unterminated),
            ("<@x", Unterminated),
            ("<a\u{85}b@x>", Syntax("control character in address")),
        ];
        for (input, want) in table {
            assert_eq!(&err(input), want, "{input:?}");
        }
        // `<a@b>>`: the path ends at the first `>`; the command layer rejects the leftover.
        assert_eq!(ok("<a@b>>").1, 5);
        assert_eq!(ok("<a@x.>>").1, 6);
    }

    #[test]
    fn length_limits() {
        let l64 = "a".repeat(64);
        ok(&format!("<{l64}@x>"));
        assert_eq!(
            err(&format!("<{l64}b@x>")),
            AddressError::TooLong("local part")
        );
        assert_eq!(
            err(&format!("<\"{}\"@x>", "a".repeat(63))),
            AddressError::TooLong("local part")
        );
        let lab63 = "b".repeat(63);
        ok(&format!("<a@{lab63}.test>"));
        assert_eq!(
            err(&format!("<a@{lab63}c.test>")),
            AddressError::TooLong("domain label")
        );
        // 4 * 63 + 3 dots = 255 octets: a legal domain, but no path can hold it.
        let d255 = [lab63.as_str(); 4].join(".");
        assert_eq!(err(&format!("<a@{d255}>")), AddressError::TooLong("path"));
        assert_eq!(
            err(&format!("<a@{d255}.c>")),
            AddressError::TooLong("domain")
        );
        // Exactly 256 octets: 1 + 64 + 1 + 189 + 1.
        let d189 = format!("{lab63}.{lab63}.{}", "c".repeat(61));
        assert_eq!(ok(&format!("<{l64}@{d189}>")).1, 256);
        assert_eq!(
            err(&format!("<{l64}@{d189}c>")),
            AddressError::TooLong("path")
        );
    }

    #[test]
    fn utf8_is_flagged() {
        let (m, _) = ok("<jürgen@bücher.example>");
        assert!(m.flags.utf8);
        assert_eq!(m.domain, "bücher.example");
        let (m, _) = ok("<\"jö rg\"@x>");
        assert!(m.flags.utf8 && m.flags.quoted_local);
    }

    #[test]
    fn replies() {
        let r = AddressError::Syntax("empty local part").reply();
        assert_eq!(
            r.to_wire(),
            "501 5.1.3 Bad address syntax (empty local part)\r\n"
        );
        assert_eq!(AddressError::TooLong("path").to_string(), "path too long");
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in prop_oneof![
            "\\PC{0,80}|<[ -~\u{80}-\u{ff}]{0,80}>?",
            // Address-shaped input, so the round-trip check below is exercised often.
            concat!(
                r#"<(@[a-z]{1,3}(,@[a-z]{1,3})*:)?("([ !#-\[\]-~]|\\[ -~]){0,10}"|"#,
                r"[a-z%!+é]{1,5}(\.[a-z%!+é]{1,5}){0,2})@(\[192\.0\.2\.[0-9]{1,2}\]|",
                r"([a-z0-9]([a-z0-9-]{0,5}[a-z0-9])?\.){0,3}[a-zü]{1,6}\.?)>",
            ),
        ]) {
            if let Ok((m, n)) = parse_path(&s) {
                prop_assert!(n <= s.len() && s.is_char_boundary(n));
                if let Some(m) = m {
                    // Re-parsing the canonical form yields the same mailbox.
                    let (m2, _) = parse_path(&format!("<{m}>")).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let m2 = m2.ok_or_else(|| TestCaseError::fail("null"))?;
                    prop_assert_eq!((&m2.local, &m2.domain), (&m.local, &m.domain));
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_path(&String::from_utf8_lossy(&b));
        }
    }
}
