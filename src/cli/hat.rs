//! `mxgate hat trace`: the sender group and mail-flow policy a client would get.

use super::*;
use mxgate::mail_log::Event;
use mxgate::policy::flow::Action;
use mxgate::policy::hat::Classification;

pub(super) fn trace(
    cfg: &Config,
    ip: IpAddr,
    hostname: Option<String>,
    ptr: Option<PtrState>,
    listed: &[DnsListZone],
    listener: Option<&str>,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    // As the listener does: an IPv4-mapped address is the IPv4 client it stands for.
    let ip = ip.to_canonical();
    let l = match listener {
        Some(name) => cfg
            .listeners
            .iter()
            .find(|l| l.name == name)
            .with_context(|| format!("no listener named {name:?}"))?,
        None => cfg.listeners.first().context("no listeners configured")?,
    };
    let name = hostname.map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    let rdns = match (ptr, name) {
        (Some(PtrState::Missing | PtrState::Tempfail), Some(_)) => anyhow::bail!(
            "--hostname gives a reverse-DNS name: it goes with --ptr mismatch, not with --ptr missing or --ptr tempfail"
        ),
        (Some(PtrState::Missing), None) => ReverseDns::Missing,
        (Some(PtrState::Tempfail), None) => ReverseDns::TempFail,
        (Some(PtrState::Mismatch), n) => ReverseDns::Mismatch(n.unwrap_or_default()),
        (None, Some(n)) => ReverseDns::Verified(n),
        (None, None) => ReverseDns::NotChecked,
    };
    // The answers a real lookup would have recorded: 127.0.0.2 is the answer lists give for
    // their test entries (RFC 5782 §5), and counts under every criterion without codes.
    let answers: Vec<(&str, Vec<std::net::Ipv4Addr>)> = listed
        .iter()
        .map(|z| {
            let codes = if z.codes.is_empty() {
                vec![std::net::Ipv4Addr::new(127, 0, 0, 2)]
            } else {
                z.codes.clone()
            };
            (z.zone.as_str(), codes)
        })
        .collect();
    let c = l.hat.classify(&Peer {
        ip,
        rdns: rdns.clone(),
        dnslists_listed: answers
            .iter()
            .flat_map(|(zone, codes)| codes.iter().map(|a| dnslist_entry(zone, *a)))
            .collect(),
    });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "listener      {} ({}, HAT {})",
        l.name,
        l.kind.as_str(),
        l.hat.name
    );
    let _ = writeln!(s, "client        {ip}");
    let _ = writeln!(
        s,
        "reverse dns   {}",
        match &rdns {
            ReverseDns::Verified(n) => format!("{n} (treated as verified)"),
            ReverseDns::Missing => "no PTR record (simulated)".into(),
            ReverseDns::TempFail => "temporary failure (simulated)".into(),
            ReverseDns::Mismatch(n) if n.is_empty() =>
                "a PTR name not confirmed by its A/AAAA records (simulated)".into(),
            ReverseDns::Mismatch(n) =>
                format!("{n} (PTR name not confirmed by its A/AAAA records, simulated)"),
            ReverseDns::NotChecked =>
                "not looked up (use --hostname NAME or --ptr STATE to match host/suffix and ptr_* entries)".into(),
        }
    );
    let zones = l.hat.dnslist_zones();
    for (zone, codes) in &answers {
        let codes: Vec<String> = codes.iter().map(ToString::to_string).collect();
        let unused = if zones.contains(zone) {
            String::new()
        } else {
            format!(
                "; HAT {} names no such dnslist, so it changes nothing",
                l.hat.name
            )
        };
        let _ = writeln!(
            s,
            "dns lists     {zone} answers {} (simulated{unused})",
            codes.join(",")
        );
    }
    if answers.is_empty() && !zones.is_empty() {
        let _ = writeln!(
            s,
            "dns lists     not looked up (use --listed ZONE to simulate a listing on {})",
            zones.join(", ")
        );
    }
    for g in &c.continued {
        let _ = writeln!(s, "continue      {g} matched but its policy says continue");
    }
    let listed_zones: Vec<&str> = answers.iter().map(|(z, _)| *z).collect();
    let skipped = mxgate::policy::hat_trace::unevaluated(
        &l.hat,
        &c.group,
        rdns != ReverseDns::NotChecked,
        &listed_zones,
    );
    if !skipped.rdns.is_empty() {
        let _ = writeln!(
            s,
            "not evaluated {}: no reverse DNS given (use --hostname or --ptr)",
            skipped.rdns.join(", ")
        );
    }
    if !skipped.dnslists.is_empty() {
        let _ = writeln!(
            s,
            "not evaluated {}: block lists not asked (use --listed ZONE)",
            skipped.dnslists.join(", ")
        );
    }
    let _ = writeln!(s, "sender group  {}", c.group);
    let _ = writeln!(s, "matched       {}", c.matched);
    let _ = writeln!(s, "log line      {}", hat_log_line(&c, ip));
    describe_policy(&mut s, &c.policy, &l.hostname);
    Ok(s)
}

/// The mail-log line the connection would get: the session's own [`Event::Hat`] and its
/// text, with `n` for the connection's ICID. Refused connections are logged as the session
/// logs them: under ICID 0, with the client address.
fn hat_log_line(c: &Classification, ip: IpAddr) -> String {
    let action = c.policy.action;
    let event = Event::Hat {
        icid: 0,
        action: action.log_word(),
        group: c.group.clone(),
        matched: if action == Action::TcpRefuse {
            format!("{} address {ip}", c.matched)
        } else {
            c.matched.clone()
        },
    };
    let text = event.text();
    if action == Action::TcpRefuse {
        return text;
    }
    // The trace has no connection: the ICID is a placeholder.
    match text.strip_prefix("ICID 0 ") {
        Some(rest) => format!("ICID n {rest}"),
        None => text,
    }
}

pub(super) fn describe_policy(s: &mut String, p: &MailFlowPolicy, hostname: &str) {
    use std::fmt::Write;
    let lim = |l: &Limit| match l.max {
        Some(m) => format!("{m}  (exceeded: {})", l.reply),
        None => "unlimited".into(),
    };
    let _ = writeln!(s, "policy        ${}", p.name);
    let _ = writeln!(
        s,
        "  action                            {}",
        p.action.as_str()
    );
    let _ = writeln!(s, "  tls                               {}", p.tls.as_str());
    let _ = writeln!(
        s,
        "  max_message_size                  {}",
        lim(&p.max_message_size)
    );
    let _ = writeln!(
        s,
        "  max_messages_per_connection       {}",
        lim(&p.max_messages_per_connection)
    );
    let _ = writeln!(
        s,
        "  max_recipients_per_message        {}",
        lim(&p.max_recipients_per_message)
    );
    let _ = writeln!(
        s,
        "  max_concurrent_connections_per_ip {}",
        lim(&p.max_concurrent_connections_per_ip)
    );
    let _ = writeln!(
        s,
        "  max_recipients_per_hour           {}",
        lim(&p.max_recipients_per_hour)
    );
    let _ = writeln!(
        s,
        "  max_invalid_recipients_per_hour   {}",
        lim(&p.max_invalid_recipients_per_hour)
    );
    let host = p.override_hostname.as_deref().unwrap_or(hostname);
    let _ = writeln!(
        s,
        "  banner                            {}",
        p.banner.render("$RemoteIP", host, "$Group")
    );
    let _ = writeln!(
        s,
        "  reject_banner                     {}",
        p.reject_banner.render("$RemoteIP", host, "$Group")
    );
    if let Some(h) = &p.override_hostname {
        let _ = writeln!(s, "  override_hostname                 {h}");
    }
    if !p.tls_mandatory_senders.is_empty() {
        let _ = writeln!(
            s,
            "  tls_mandatory_senders             {}",
            p.tls_mandatory_senders.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn classified(action: Action) -> Classification {
        let mut policy = MailFlowPolicy::builtin_default("P");
        policy.action = action;
        Classification {
            group: "BLOCKED".into(),
            matched: "192.0.2.0/24".into(),
            policy: Arc::new(policy),
            continued: vec![],
        }
    }

    #[test]
    fn log_line_is_the_mail_logs_own_hat_line() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(
            hat_log_line(&classified(Action::Reject), ip),
            "ICID n REJECT SG BLOCKED match 192.0.2.0/24 SBRS None"
        );
        // Refused connections are logged under ICID 0 with the client address.
        assert_eq!(
            hat_log_line(&classified(Action::TcpRefuse), ip),
            "ICID 0 TCPREFUSE SG BLOCKED match 192.0.2.0/24 address 192.0.2.9 SBRS None"
        );
    }
}
