//! SMTP replies: a code, an RFC 3463 enhanced status code and text.

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code such as `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl std::str::FromStr for Enhanced {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut it = s.split('.');
        let (Some(a), Some(b), Some(c), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(format!(
                "enhanced status code {s:?} is not of the form X.Y.Z"
            ));
        };
        let class: u8 = a.parse().map_err(|_| format!("bad class in {s:?}"))?;
        if !matches!(class, 2 | 4 | 5) {
            return Err(format!("enhanced status class in {s:?} must be 2, 4 or 5"));
        }
        let subject: u16 = b.parse().map_err(|_| format!("bad subject in {s:?}"))?;
        let detail: u16 = c.parse().map_err(|_| format!("bad detail in {s:?}"))?;
        if subject > 999 || detail > 999 {
            return Err(format!("enhanced status code {s:?} out of range"));
        }
        Ok(Enhanced(class, subject, detail))
    }
}

/// One SMTP reply. Multi-line replies keep their lines separated by `\n` in `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code; `None` only for the greeting and the EHLO reply (RFC 2034).
    pub enhanced: Option<Enhanced>,
    /// Human-readable text; `\n` separates lines of a multi-line reply.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A reply without an enhanced code (greeting, EHLO).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// Appends the wire form (CRLF-terminated lines) to `out`.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        if lines.peek().is_none() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
        }
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            // The enhanced code prefixes every line of a multi-line reply (RFC 2034 §4).
            match self.enhanced {
                Some(e) => {
                    out.extend_from_slice(format!("{}{sep}{e} {line}\r\n", self.code).as_bytes())
                }
                None => out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes()),
            }
        }
    }

    /// The wire form as a string (for logs and tests).
    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text.replace('\n', " / ")),
            None => write!(f, "{} {}", self.code, self.text.replace('\n', " / ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_wire_form() {
        let r = Reply::new(550, Enhanced(5, 7, 1), "Recipient address rejected");
        assert_eq!(r.to_wire(), "550 5.7.1 Recipient address rejected\r\n");
    }

    #[test]
    fn multi_line_wire_form() {
        let r = Reply::plain(250, "mx.example.com\nPIPELINING\nSIZE 100");
        assert_eq!(
            r.to_wire(),
            "250-mx.example.com\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
    }

    #[test]
    fn enhanced_parse() {
        assert_eq!("4.7.0".parse::<Enhanced>(), Ok(Enhanced(4, 7, 0)));
        assert!("3.1.1".parse::<Enhanced>().is_err());
        assert!("5.1".parse::<Enhanced>().is_err());
    }
}
