//! Parsers for the scalar forms used in the YAML: durations, sizes, addresses, names.
//!
//! Each returns a message fit to show the administrator when the value is wrong.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::model::{ListenerKind, MailLogFormat};
use crate::dns::name::is_host_name;
use crate::policy::flow::{Action, TlsMode};
use crate::policy::rat::RatAction;
use crate::smtp::reply::Enhanced;

/// Splits `123abc` into the number and the unit.
fn split_number(t: &str) -> Option<(u64, &str)> {
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if end == 0 {
        return None;
    }
    let n = t[..end].parse().ok()?;
    Some((n, t[end..].trim()))
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `5d`, `2w` or a plain number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "{t:?} is not a duration: write e.g. 250ms, 30s, 5m, 1h, 5d, 2w or a number of seconds"
        )
    };
    let (n, unit) = split_number(t).ok_or_else(bad)?;
    let d = match unit.to_ascii_lowercase().as_str() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        "w" => n.checked_mul(7 * 86_400).map(Duration::from_secs),
        _ => return Err(bad()),
    };
    d.ok_or_else(|| format!("duration {t:?} is too large"))
}

/// Parses a size: bytes, or a number with `K`, `M` or `G` (binary; a trailing `B` is allowed).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!("{t:?} is not a size: write bytes or a number with K, M or G (e.g. 512K, 10M, 1G)")
    };
    let (n, unit) = split_number(t).ok_or_else(bad)?;
    let unit = unit.to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let mult: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {t:?} is too large"))
}

/// Parses a plain non-negative integer.
pub(crate) fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{t:?} is not a whole number"));
    }
    t.parse().map_err(|_| format!("{t:?} is too large"))
}

/// Parses an `IP:port` to listen on (IPv6 in brackets: `[::1]:2525`).
pub(crate) fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if t.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return Err(format!(
            "{t:?} has no port: write e.g. 127.0.0.1:2525 or [::1]:2525"
        ));
    }
    Err(format!(
        "{t:?} is not an IP:port address (e.g. 127.0.0.1:2525 or [::1]:2525)"
    ))
}

/// Parses a DNS resolver: `IP` (port 53) or `IP:port`.
pub(crate) fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    match t
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => Ok(SocketAddr::new(ip, 53)),
        Err(_) => Err(format!(
            "{t:?} is not a resolver address: write an IP or IP:port (e.g. 127.0.0.1:5353)"
        )),
    }
}

/// Parses a network in CIDR form, or a single address.
pub(crate) fn parse_network(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    t.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("{t:?} is not a valid CIDR network or IP address"))
}

/// For a CIDR network written with host bits (`192.0.2.1/24`): what it really means.
pub(crate) fn host_bits_warning(s: &str) -> Option<String> {
    let t = s.trim();
    let n = t.parse::<IpNet>().ok()?;
    (n != n.trunc()).then(|| {
        format!(
            "{t:?} has host bits set, so it matches the whole network {}: write {} for the \
             network, or {} for the one host",
            n.trunc(),
            n.trunc(),
            n.addr()
        )
    })
}

/// Parses `true` or `false`.
pub(crate) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        t => Err(format!("{t:?} is not a boolean: write true or false")),
    }
}

/// Parses a reply code: three digits, 200-599.
pub(crate) fn parse_code(s: &str) -> Result<u16, String> {
    let t = s.trim();
    match t.parse::<u16>() {
        Ok(c) if (200..=599).contains(&c) && t.len() == 3 => Ok(c),
        _ => Err(format!(
            "{t:?} is not an SMTP reply code (three digits, 200-599)"
        )),
    }
}

/// Parses an enhanced status code such as `5.7.1`.
pub(crate) fn parse_enhanced(s: &str) -> Result<Enhanced, String> {
    s.trim().parse::<Enhanced>()
}

/// Checks reply text: not empty, no CR or other control characters (LF separates lines).
pub(crate) fn check_reply_text(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("reply text is empty".into());
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err("reply text contains control characters".into());
    }
    Ok(())
}

/// Parses a mail-flow policy name; a leading `$` (ESA style) is stripped.
pub(crate) fn parse_policy_name(s: &str) -> Result<String, String> {
    let t = s.trim();
    let name = t.strip_prefix('$').unwrap_or(t);
    check_table_name(name, "policy name").map(|()| name.to_string())
}

/// Checks a HAT, RAT or sender-group name: letters, digits, `_` and `-`.
pub(crate) fn check_table_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{what} {name:?} may contain only letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks a host name (`mx.example.com`).
pub(crate) fn check_hostname(s: &str) -> Result<(), String> {
    if is_host_name(s.strip_suffix('.').unwrap_or(s)) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid host name"))
    }
}

/// Checks a TLS-mandatory sender: `user@domain`, `@domain` or `domain`.
pub(crate) fn check_sender(s: &str) -> Result<(), String> {
    let t = s.trim();
    let domain = match t.rsplit_once('@') {
        Some(("", d)) => d,
        Some((local, d)) if !local.contains(|c: char| c.is_whitespace() || c == '@') => d,
        Some(_) => "",
        None => t,
    };
    check_hostname(domain).map_err(|_| {
        format!("{t:?} is not an address, @domain or domain (e.g. ceo@corp.example, @bank.example)")
    })
}

/// Parses a listener type.
pub(crate) fn parse_listener_kind(s: &str) -> Result<ListenerKind, String> {
    match s.trim() {
        "public" => Ok(ListenerKind::Public),
        "private" => Ok(ListenerKind::Private),
        t => Err(format!(
            "unknown listener type {t:?}: expected public or private"
        )),
    }
}

/// Parses a mail-log format.
pub(crate) fn parse_log_format(s: &str) -> Result<MailLogFormat, String> {
    match s.trim() {
        "text" => Ok(MailLogFormat::Text),
        "json" => Ok(MailLogFormat::Json),
        t => Err(format!(
            "unknown mail log format {t:?}: expected text or json"
        )),
    }
}

/// Parses a policy action.
pub(crate) fn parse_action(s: &str) -> Result<Action, String> {
    match s.trim() {
        "accept" => Ok(Action::Accept),
        "reject" => Ok(Action::Reject),
        "tcprefuse" => Ok(Action::TcpRefuse),
        "relay" => Ok(Action::Relay),
        "continue" => Ok(Action::Continue),
        t => Err(format!(
            "unknown action {t:?}: expected accept, reject, tcprefuse, relay or continue"
        )),
    }
}

/// Parses a TLS mode.
pub(crate) fn parse_tls(s: &str) -> Result<TlsMode, String> {
    match s.trim() {
        "off" => Ok(TlsMode::Off),
        "preferred" => Ok(TlsMode::Preferred),
        "required" => Ok(TlsMode::Required),
        t => Err(format!(
            "unknown TLS mode {t:?}: expected off, preferred or required"
        )),
    }
}

/// Parses a RAT action.
pub(crate) fn parse_rat_action(s: &str) -> Result<RatAction, String> {
    match s.trim() {
        "accept" => Ok(RatAction::Accept),
        "reject" => Ok(RatAction::Reject),
        t => Err(format!(
            "unknown RAT action {t:?}: expected accept or reject"
        )),
    }
}
