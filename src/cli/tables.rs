//! `mxgate routes list` and `mxgate destinations list`: the configuration as tables.

use super::*;

/// Renders a text table: header lines (each with one cell per column), a `===` rule, rows.
pub(super) fn render_table(header: &[&[&str]], rows: &[Vec<String>]) -> String {
    let cols = header.first().map_or(0, |h| h.len());
    let mut width = vec![0usize; cols];
    let cells = header
        .iter()
        .map(|h| h.iter().map(|c| c.chars().count()).collect::<Vec<_>>())
        .chain(
            rows.iter()
                .map(|r| r.iter().map(|c| c.chars().count()).collect()),
        );
    for line in cells {
        for (w, n) in width.iter_mut().zip(line) {
            *w = (*w).max(n);
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(&format!("{c:<w$}"));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    for h in header {
        line(h.iter().map(|c| c.to_string()).collect());
    }
    line(width.iter().map(|w| "=".repeat(*w)).collect());
    for r in rows {
        line(r.clone());
    }
    out
}

/// A duration the way the YAML writes it (`1h`, `30m`, `45s`, `250ms`).
pub(super) fn short_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// `mxgate destinations list`: the destination controls as a table, default row last.
pub(super) fn destinations_list(cfg: &Config) -> String {
    use mxgate::config::outbound::DestinationControl;
    use std::fmt::Write;
    let d = &cfg.destinations;
    let roots = |c: &DestinationControl| {
        let path = c
            .ca_file
            .as_ref()
            .map(|p| p.strip_prefix(&cfg.dir).unwrap_or(p).display().to_string());
        match (c.tls.verifies(), path) {
            (true, Some(p)) => p,
            (true, None) => "webpki".to_string(),
            (false, Some(p)) => format!("{p} (unused)"),
            (false, None) => "-".to_string(),
        }
    };
    let row = |label: String, c: &DestinationControl| {
        vec![
            label,
            c.max_concurrent_connections.to_string(),
            c.max_messages_per_connection.to_string(),
            c.max_recipients_per_message.to_string(),
            c.tls.as_str().to_string(),
            roots(c),
        ]
    };
    let mut rows: Vec<Vec<String>> = d
        .entries
        .iter()
        .map(|c| row(c.domain.to_string(), c))
        .collect();
    rows.push(row("Default".to_string(), &d.default));
    let mut s = render_table(
        &[
            &[
                "",
                "Rate Limiting /",
                "Messages per",
                "Recipients per",
                "",
                "Trust",
            ],
            &[
                "Domain",
                "Concurrency",
                "Connection",
                "Message",
                "TLS",
                "Roots",
            ],
        ],
        &rows,
    );
    let _ = writeln!(
        s,
        "\nAlert on required TLS failure: {}, interval {}, mail to {}",
        if d.alert.enabled { "on" } else { "off" },
        short_duration(d.alert.interval),
        d.alert.mail_to.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        s,
        "Client certificate: {}",
        d.client_certificate.as_deref().unwrap_or("(none)")
    );
    s
}

/// `mxgate routes list`: every route and its hosts (by priority), `ALL` last.
pub(super) fn routes_list(cfg: &Config) -> String {
    let routes = &cfg.routes.routes;
    if routes.is_empty() {
        return "No SMTP routes configured (policies/routes.yaml): accepted mail has nowhere to go.\n"
            .to_string();
    }
    let mut rows = Vec::new();
    for r in routes {
        for (i, h) in r.hosts.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first {
                    r.domain.to_string()
                } else {
                    String::new()
                },
                h.host.clone(),
                h.port.to_string(),
                h.priority.to_string(),
                match (first, r.mx_lookup) {
                    (false, _) => String::new(),
                    (true, true) => "yes".to_string(),
                    (true, false) => "no".to_string(),
                },
            ]);
        }
    }
    render_table(
        &[&["Domain", "Host", "Port", "Priority", "MX Lookup"]],
        &rows,
    )
}
