//! The EHLO/HELO argument: a domain name or an address literal (RFC 5321 §4.1.1.1), nothing else.
//!
//! The name ends up in our `Received:` header, so anything that could add a comment, a
//! bracketed address or another clause to it (spaces, parentheses, brackets) is refused.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest domain name (RFC 1035 §2.3.4); a literal is shorter anyway.
const MAX_LEN: usize = 255;

/// True for a domain name or an `[IPv4]` / `[IPv6:...]` address literal.
///
/// Domain names are checked by character only (letters, digits, `-`, `.`, and `_`, which
/// Windows hosts send): enough to keep the header intact without refusing real clients
/// whose names break the label rules.
pub(crate) fn is_valid_helo_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_LEN {
        return false;
    }
    match name.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']').is_some_and(is_address_literal),
        None => name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
    }
}

/// The inside of `[...]`: a dotted quad, or `IPv6:` (any case) and an IPv6 address.
fn is_address_literal(inner: &str) -> bool {
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_26_helo_name_validator() {
        for ok in [
            "mail.example.com",
            "mail.example.com.",
            "localhost",
            "MY-PC",
            "my_pc.corp.example",
            "192.0.2.1",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "[ipv6:::1]",
            "[IPv6:::ffff:192.0.2.1]",
        ] {
            assert!(is_valid_helo_name(ok), "{ok:?} should be accepted");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "a) (evil [1.2.3.4]) by trusted.example",
            "foo bar",
            "é",
            "bücher.example",
            "a(b",
            "a)",
            "[1.2.3.4",
            "1.2.3.4]",
            "[1.2.3.4]]",
            "[[1.2.3.4]",
            "[]",
            "[999.1.1.1]",
            "[2001:db8::1]",
            "[IPv6:1.2.3.4]",
            "[IPv6:2001:db8::1 ]",
            "[tag:anything]",
            "junk_name!",
            "a;b",
            "<a>",
            "a\"b",
            "a\\b",
            long.as_str(),
        ] {
            assert!(!is_valid_helo_name(bad), "{bad:?} should be refused");
        }
    }
}
