//! SMTP command parser (RFC 5321 §4.1) with strict ESMTP parameter handling.

use std::fmt;

use super::address::{parse_path, AddressError, AddressFlags, Mailbox};
use super::helo::is_valid_helo_name;
use super::line::find_first_of;
use super::reply::{Enhanced, Reply};

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO <domain or address literal>` (checked by `is_valid_helo_name`).
    Ehlo(String),
    /// `HELO <domain or address literal>` (checked by `is_valid_helo_name`).
    Helo(String),
    /// `MAIL FROM:<path> [params]`; `None` is the null reverse-path `<>`.
    Mail {
        /// The reverse-path.
        from: Option<Mailbox>,
        /// Recognised ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path>`.
    Rcpt {
        /// The forward-path (`<Postmaster>` has an empty domain).
        to: Mailbox,
        /// No RCPT parameters are supported (DSN is not advertised).
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `STARTTLS`.
    StartTls,
    /// `HELP [string]`.
    Help,
    /// `VRFY <string>`.
    Vrfy(String),
    /// `EXPN <string>`.
    Expn(String),
    /// `BDAT ...` (arguments not parsed; CHUNKING is not advertised).
    Bdat,
    /// `AUTH ...` (arguments not parsed; AUTH is not advertised on an MX).
    Auth,
}

/// ESMTP parameters of `MAIL FROM`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailParams {
    /// RFC 1870 `SIZE=`; saturates at `u64::MAX` for absurd 20-digit values.
    pub size: Option<u64>,
    /// RFC 6152 / RFC 3030 `BODY=`.
    pub body: Option<Body>,
    /// RFC 6531 `SMTPUTF8`.
    pub smtputf8: bool,
}

/// Value of the `BODY=` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME` (needs CHUNKING; the session decides).
    BinaryMime,
}

/// ESMTP parameters of `RCPT TO` (none are supported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RcptParams {}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb.
    Unknown,
    /// Malformed arguments; the text names the problem (never echoes client input).
    Syntax(&'static str),
    /// Malformed `MAIL FROM` path.
    BadSender(AddressError),
    /// Malformed `RCPT TO` path.
    BadRecipient(AddressError),
    /// A well-formed but unsupported ESMTP parameter keyword (as sent).
    UnknownParameter(String),
    /// A supported parameter with an invalid value; holds the keyword.
    BadParameterValue(&'static str),
    /// A NUL octet in the line.
    Nul,
    /// Invalid UTF-8 or a control character in the line.
    BadCharacters,
}

impl CommandError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => Reply::new(500, Enhanced(5, 5, 1), "Command unrecognized"),
            CommandError::Syntax(m) => {
                Reply::new(501, Enhanced(5, 5, 4), format!("Syntax error ({m})"))
            }
            CommandError::BadSender(e) => Reply::new(
                501,
                Enhanced(5, 1, 7),
                format!("Bad sender address syntax ({e})"),
            ),
            CommandError::BadRecipient(e) => Reply::new(
                501,
                Enhanced(5, 1, 3),
                format!("Bad recipient address syntax ({e})"),
            ),
            CommandError::UnknownParameter(_) => {
                Reply::new(555, Enhanced(5, 5, 4), "Unsupported parameter")
            }
            CommandError::BadParameterValue(k) => Reply::new(
                501,
                Enhanced(5, 5, 4),
                format!("Syntax error (invalid {k} value)"),
            ),
            CommandError::Nul => Reply::new(
                500,
                Enhanced(5, 5, 2),
                "Syntax error (NUL character in command)",
            ),
            CommandError::BadCharacters => Reply::new(
                500,
                Enhanced(5, 5, 2),
                "Syntax error (invalid character in command)",
            ),
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.reply(), f)
    }
}

impl std::error::Error for CommandError {}

/// Parses one command line (without its CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    if find_first_of(line, [0]).is_some() {
        return Err(CommandError::Nul);
    }
    // Tabs are refused too: RFC 5321 separates with SP only, and leniency here is how
    // parser differentials start.
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(CommandError::BadCharacters);
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacters)?;
    if !line.is_ascii() && line.chars().any(char::is_control) {
        return Err(CommandError::BadCharacters);
    }
    // Trailing spaces are common from real clients and harmless.
    let line = line.trim_end_matches(' ');
    let (verb, arg) = match line.split_once(' ') {
        Some((v, a)) => (v, a.trim_start_matches(' ')),
        None => (line, ""),
    };
    // Upper-case the verb into a stack buffer: no allocation, one match.
    let mut up = [0u8; 8];
    let Some(dst) = up.get_mut(..verb.len()) else {
        return Err(CommandError::Unknown);
    };
    for (d, s) in dst.iter_mut().zip(verb.bytes()) {
        *d = s.to_ascii_uppercase();
    }
    let no_arg = |c: Command| {
        if arg.is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax("no parameters allowed"))
        }
    };
    let need_arg = |what: &'static str| {
        if arg.is_empty() {
            Err(CommandError::Syntax(what))
        } else {
            Ok(arg.to_owned())
        }
    };
    // The name goes into our Received header: refuse anything but a domain or address literal.
    let helo_arg = |what: &'static str| match need_arg(what) {
        Ok(name) if is_valid_helo_name(&name) => Ok(name),
        _ => Err(CommandError::Syntax(what)),
    };
    match &up[..verb.len()] {
        b"EHLO" => helo_arg("EHLO requires a domain name or address literal").map(Command::Ehlo),
        b"HELO" => helo_arg("HELO requires a domain name or address literal").map(Command::Helo),
        b"MAIL" => parse_mail(arg),
        b"RCPT" => parse_rcpt(arg),
        b"DATA" => no_arg(Command::Data),
        b"RSET" => no_arg(Command::Rset),
        b"QUIT" => no_arg(Command::Quit),
        b"STARTTLS" => no_arg(Command::StartTls),
        b"NOOP" => Ok(Command::Noop),
        b"HELP" => Ok(Command::Help),
        b"VRFY" => need_arg("VRFY requires an argument").map(Command::Vrfy),
        b"EXPN" => need_arg("EXPN requires an argument").map(Command::Expn),
        b"BDAT" => Ok(Command::Bdat),
        b"AUTH" => Ok(Command::Auth),
        _ => Err(CommandError::Unknown),
    }
}

/// Case-insensitive ASCII prefix strip.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits what follows a path into `(keyword, value)` pairs, checking RFC 5321 esmtp-param syntax.
fn params(rest: &str) -> Result<Vec<(&str, Option<&str>)>, CommandError> {
    let mut out = Vec::new();
    for p in rest.split(' ').filter(|p| !p.is_empty()) {
        let (kw, val) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        let kw_ok = kw.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && kw.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
        // esmtp-value = 1*(%d33-60 / %d62-126 / UTF-8); SP and controls are already gone.
        let val_ok = val.is_none_or(|v| !v.is_empty() && !v.contains('='));
        if !kw_ok || !val_ok {
            return Err(CommandError::Syntax("invalid parameter syntax"));
        }
        out.push((kw, val));
    }
    Ok(out)
}

/// The path must be followed by the end of line or a space before parameters.
fn after_path(rest: &str) -> Result<&str, AddressError> {
    if rest.is_empty() || rest.starts_with(' ') {
        Ok(rest)
    } else {
        Err(AddressError::Syntax("unexpected text after address"))
    }
}

fn parse_mail(arg: &str) -> Result<Command, CommandError> {
    let rest = strip_prefix_ci(arg, "FROM:")
        .ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?
        .trim_start_matches(' ');
    let (from, n) = parse_path(rest).map_err(CommandError::BadSender)?;
    let rest = after_path(&rest[n..]).map_err(CommandError::BadSender)?;
    let mut mp = MailParams::default();
    for (kw, val) in params(rest)? {
        if kw.eq_ignore_ascii_case("SIZE") {
            if mp.size.is_some() {
                return Err(CommandError::Syntax("duplicate parameter"));
            }
            mp.size = Some(parse_size(val).ok_or(CommandError::BadParameterValue("SIZE"))?);
        } else if kw.eq_ignore_ascii_case("BODY") {
            if mp.body.is_some() {
                return Err(CommandError::Syntax("duplicate parameter"));
            }
            mp.body = Some(parse_body(val).ok_or(CommandError::BadParameterValue("BODY"))?);
        } else if kw.eq_ignore_ascii_case("SMTPUTF8") {
            // A repeated flag means the same thing (Python's smtplib sends it twice when
            // the caller also passes it): accept it, unlike a repeated SIZE or BODY.
            if val.is_some() {
                return Err(CommandError::BadParameterValue("SMTPUTF8"));
            }
            mp.smtputf8 = true;
        } else {
            return Err(CommandError::UnknownParameter(kw.to_owned()));
        }
    }
    Ok(Command::Mail { from, params: mp })
}

/// RFC 1870: `size-value ::= 1*20DIGIT`; values beyond `u64` saturate (they exceed any limit).
fn parse_size(val: Option<&str>) -> Option<u64> {
    let v = val?;
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(v.parse().unwrap_or(u64::MAX))
}

fn parse_body(val: Option<&str>) -> Option<Body> {
    let v = val?;
    [
        ("7BIT", Body::SevenBit),
        ("8BITMIME", Body::EightBitMime),
        ("BINARYMIME", Body::BinaryMime),
    ]
    .into_iter()
    .find_map(|(name, b)| v.eq_ignore_ascii_case(name).then_some(b))
}

fn parse_rcpt(arg: &str) -> Result<Command, CommandError> {
    let rest = strip_prefix_ci(arg, "TO:")
        .ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?
        .trim_start_matches(' ');
    // RFC 5321 §4.1.1.3: `<Postmaster>` without a domain must be accepted.
    let (to, n) = if strip_prefix_ci(rest, "<postmaster>").is_some() {
        let pm = Mailbox {
            local: "postmaster".to_owned(),
            domain: String::new(),
            flags: AddressFlags::default(),
        };
        (pm, "<postmaster>".len())
    } else {
        match parse_path(rest).map_err(CommandError::BadRecipient)? {
            (Some(m), n) => (m, n),
            (None, _) => {
                return Err(CommandError::BadRecipient(AddressError::Syntax(
                    "null path not allowed",
                )))
            }
        }
    };
    let rest = after_path(&rest[n..]).map_err(CommandError::BadRecipient)?;
    // Syntax errors first (501), then any well-formed parameter is unsupported (555).
    if let Some((kw, _)) = params(rest)?.first() {
        return Err(CommandError::UnknownParameter((*kw).to_owned()));
    }
    Ok(Command::Rcpt {
        to,
        params: RcptParams {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        parse_command(s.as_bytes())
    }

    fn wire(s: &[u8]) -> String {
        match parse_command(s) {
            Err(e) => e.reply().to_wire(),
            Ok(c) => panic!("{s:?} parsed as {c:?}"),
        }
    }

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
            flags: AddressFlags::default(),
        }
    }

    #[test]
    fn simple_verbs_any_case() {
        assert_eq!(p("data"), Ok(Command::Data));
        assert_eq!(p("RsEt"), Ok(Command::Rset));
        assert_eq!(p("QUIT  "), Ok(Command::Quit));
        assert_eq!(p("StartTLS"), Ok(Command::StartTls));
        assert_eq!(p("NOOP hello there"), Ok(Command::Noop));
        assert_eq!(p("HELP MAIL"), Ok(Command::Help));
        assert_eq!(p("BDAT 10 LAST"), Ok(Command::Bdat));
        assert_eq!(p("AUTH PLAIN"), Ok(Command::Auth));
        assert_eq!(
            p("VRFY  postmaster"),
            Ok(Command::Vrfy("postmaster".into()))
        );
        assert_eq!(p("EXPN list"), Ok(Command::Expn("list".into())));
        assert_eq!(
            p("EHLO mail.example.com"),
            Ok(Command::Ehlo("mail.example.com".into()))
        );
        assert_eq!(
            p("helo [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(p("EHLO junk_name"), Ok(Command::Ehlo("junk_name".into())));
    }

    /// `line|expected reply` (reply without CRLF), one case per row.
    const ERRORS: &str = "\
|500 5.5.1 Command unrecognized
FOO|500 5.5.1 Command unrecognized
MAILFROM:<a@b>|500 5.5.1 Command unrecognized
 NOOP|500 5.5.1 Command unrecognized
STARTTLSX|500 5.5.1 Command unrecognized
DATA x|501 5.5.4 Syntax error (no parameters allowed)
QUIT now|501 5.5.4 Syntax error (no parameters allowed)
EHLO|501 5.5.4 Syntax error (EHLO requires a domain name or address literal)
HELO   |501 5.5.4 Syntax error (HELO requires a domain name or address literal)
EHLO junk_name!|501 5.5.4 Syntax error (EHLO requires a domain name or address literal)
HELO a b|501 5.5.4 Syntax error (HELO requires a domain name or address literal)
VRFY|501 5.5.4 Syntax error (VRFY requires an argument)
NO\0OP|500 5.5.2 Syntax error (NUL character in command)
EHLO a\tb|500 5.5.2 Syntax error (invalid character in command)
EHLO \x7f|500 5.5.2 Syntax error (invalid character in command)
EHLO a\u{9b}b|500 5.5.2 Syntax error (invalid character in command)
MAIL TO:<a@b>|501 5.5.4 Syntax error (expected MAIL FROM:<address>)
MAIL FROM :<a@b>|501 5.5.4 Syntax error (expected MAIL FROM:<address>)
RCPT FROM:<a@b>|501 5.5.4 Syntax error (expected RCPT TO:<address>)
MAIL FROM:a@b|501 5.1.7 Bad sender address syntax (angle brackets required)
MAIL FROM:<a@b>>|501 5.1.7 Bad sender address syntax (unexpected text after address)
MAIL FROM:<a@b|501 5.1.7 Bad sender address syntax (unterminated address)
RCPT TO:<a..b@x>|501 5.1.3 Bad recipient address syntax (consecutive dots in local part)
RCPT TO:<>|501 5.1.3 Bad recipient address syntax (null path not allowed)
RCPT TO:<postmaster>x|501 5.1.3 Bad recipient address syntax (unexpected text after address)
MAIL FROM:<> FOO=bar|555 5.5.4 Unsupported parameter
MAIL FROM:<> AUTH=<>|555 5.5.4 Unsupported parameter
RCPT TO:<a@b> NOTIFY=NEVER|555 5.5.4 Unsupported parameter
RCPT TO:<a@b> ORCPT=rfc822;a@b|555 5.5.4 Unsupported parameter
MAIL FROM:<> SIZE=1 SIZE=2|501 5.5.4 Syntax error (duplicate parameter)
MAIL FROM:<> BODY=7BIT body=8bitmime|501 5.5.4 Syntax error (duplicate parameter)
MAIL FROM:<> SIZE=|501 5.5.4 Syntax error (invalid parameter syntax)
MAIL FROM:<> =5|501 5.5.4 Syntax error (invalid parameter syntax)
MAIL FROM:<> -X|501 5.5.4 Syntax error (invalid parameter syntax)
MAIL FROM:<> A=b=c|501 5.5.4 Syntax error (invalid parameter syntax)
RCPT TO:<a@b> =x|501 5.5.4 Syntax error (invalid parameter syntax)
MAIL FROM:<> SIZE=12a|501 5.5.4 Syntax error (invalid SIZE value)
MAIL FROM:<> SIZE|501 5.5.4 Syntax error (invalid SIZE value)
MAIL FROM:<> SIZE=123456789012345678901|501 5.5.4 Syntax error (invalid SIZE value)
MAIL FROM:<> SIZE=-1|501 5.5.4 Syntax error (invalid SIZE value)
MAIL FROM:<> BODY=8BIT|501 5.5.4 Syntax error (invalid BODY value)
MAIL FROM:<> BODY|501 5.5.4 Syntax error (invalid BODY value)
MAIL FROM:<> SMTPUTF8=yes|501 5.5.4 Syntax error (invalid SMTPUTF8 value)";

    #[test]
    fn command_errors_and_replies() {
        for row in ERRORS.lines() {
            let (line, want) = row.split_once('|').expect("table row");
            assert_eq!(wire(line.as_bytes()), format!("{want}\r\n"), "{line:?}");
        }
        // Not UTF-8.
        assert_eq!(
            wire(b"EHLO \xff"),
            "500 5.5.2 Syntax error (invalid character in command)\r\n"
        );
    }

    #[test]
    fn mail_from() {
        assert_eq!(
            p("MAIL FROM:<>"),
            Ok(Command::Mail {
                from: None,
                params: MailParams::default()
            })
        );
        // One (or more) spaces after the colon are tolerated; keywords are case-insensitive.
        let got = p("mail from: <a@b.test>  size=1000 Body=8BitMIME SMTPUTF8");
        assert_eq!(
            got,
            Ok(Command::Mail {
                from: Some(mb("a", "b.test")),
                params: MailParams {
                    size: Some(1000),
                    body: Some(Body::EightBitMime),
                    smtputf8: true
                }
            })
        );
        let Ok(Command::Mail { params, .. }) =
            p("MAIL FROM:<a@b> SIZE=99999999999999999999 BODY=binarymime")
        else {
            panic!("should parse");
        };
        assert_eq!(params.size, Some(u64::MAX));
        assert_eq!(params.body, Some(Body::BinaryMime));
        // Spaces inside a quoted local part do not end the path.
        let Ok(Command::Mail {
            from: Some(m),
            params,
        }) = p(r#"MAIL FROM:<"a b"@x> SIZE=5"#)
        else {
            panic!("quoted local with space");
        };
        assert_eq!((m.local.as_str(), params.size), ("a b", Some(5)));
        let Ok(Command::Mail { params, .. }) = p("MAIL FROM:<a@b> BODY=7bit") else {
            panic!("should parse");
        };
        assert_eq!(params.body, Some(Body::SevenBit));
    }

    #[test]
    fn rcpt_to() {
        assert_eq!(
            p("RCPT TO:<user@example.com>"),
            Ok(Command::Rcpt {
                to: mb("user", "example.com"),
                params: RcptParams {}
            })
        );
        for pm in [
            "RCPT TO:<Postmaster>",
            "rcpt to: <POSTMASTER> ",
            "RCPT TO:<postmaster>",
        ] {
            let Ok(Command::Rcpt { to, .. }) = p(pm) else {
                panic!("{pm}");
            };
            assert_eq!(to, mb("postmaster", ""));
            assert_eq!(to.to_string(), "postmaster");
        }
        let Ok(Command::Rcpt { to, .. }) = p("RCPT TO:<Postmaster@Example.com>") else {
            panic!("domain postmaster");
        };
        assert_eq!(to, mb("Postmaster", "Example.com"));
        let Ok(Command::Rcpt { to, .. }) = p("RCPT TO:<@relay.test:user%x@example.com>") else {
            panic!("source route");
        };
        assert!(to.flags.source_route && to.flags.local_has_routing && to.is_relay_attempt());
    }

    #[test]
    fn utf8_address_is_allowed_here() {
        let Ok(Command::Mail { from: Some(m), .. }) = p("MAIL FROM:<jörg@bücher.example> SMTPUTF8")
        else {
            panic!("utf8");
        };
        assert!(m.flags.utf8);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_command(&b);
        }

        #[test]
        fn command_shaped_input_never_panics(
            verb in "(?i)(mail from:|rcpt to:|ehlo|data|noop|vrfy)",
            rest in "[ -~\u{80}-\u{10ffff}]{0,60}",
        ) {
            if let Err(e) = parse_command(format!("{verb}{rest}").as_bytes()) {
                let r = e.reply();
                prop_assert!(r.code >= 500 && !r.text.contains('\n'));
            }
        }
    }
}
