//! `mxgate tlsrpt list|show`: the TLS-RPT reports stored under `SPOOL/tlsrpt/`, read from the
//! directory (no running server needed).

use super::*;

use mxgate::tlsrpt::report::Report;
use mxgate::tlsrpt::reporter::reporter;
use mxgate::tlsrpt::store::{Store, StoredReport};

pub(super) fn tlsrpt_command(cmd: TlsrptCmd) -> anyhow::Result<ExitCode> {
    let config = match &cmd {
        TlsrptCmd::List(c) => c,
        TlsrptCmd::Show { config, .. } => config,
    };
    // The spool is all these commands need: with --spool-dir, no configuration.
    let spool = match &config.spool_dir {
        Some(s) => s.clone(),
        None => match config.load_or_report()? {
            Some(cfg) => cfg.global.spool_dir,
            None => return Ok(ExitCode::from(1)),
        },
    };
    let store = Store::new(&spool);
    match cmd {
        TlsrptCmd::List(_) => {
            let (reports, bad) = store.list()?;
            print!("{}", terminal_safe(&render_list(&reports)));
            println!("{} report(s) in {}", reports.len(), store.dir().display());
            for b in bad {
                eprintln!(
                    "mxgate: {}: not a valid TLS-RPT report, skipped",
                    b.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TlsrptCmd::Show { report_id, .. } => {
            let found = store.get(&report_id)?;
            if found.is_empty() {
                eprintln!(
                    "mxgate: no report {report_id:?} in {}",
                    store.dir().display()
                );
                return Ok(ExitCode::from(1));
            }
            // Several reports under one id: different content (one may be forged).
            let shown: Vec<String> = found.iter().map(render_show).collect();
            print!("{}", terminal_safe(&shown.join("\n")));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reports are anyone's text: every character that could drive the terminal (ESC, ...) or
/// hide what is printed (bidirectional overrides) is shown escaped, `\u{1b}`.
fn terminal_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' => "\n".to_string(),
            c if mxgate::mail_log::is_unsafe(c) => format!("\\u{{{:x}}}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn domains(r: &Report) -> String {
    let mut d: Vec<&str> = r
        .policies
        .iter()
        .map(|p| p.policy.policy_domain.as_str())
        .collect();
    d.dedup();
    d.join(",")
}

fn render_list(reports: &[StoredReport]) -> String {
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|s| {
            let r = &s.report;
            [
                reporter(&r.organization_name).to_string(),
                r.report_id.clone(),
                format!("{} - {}", utc(r.date_range.start), utc(r.date_range.end)),
                domains(r),
                r.successful().to_string(),
                r.failed().to_string(),
            ]
        })
        .collect();
    let head = [
        "REPORTER",
        "REPORT-ID",
        "DATE RANGE (UTC)",
        "POLICY DOMAINS",
        "SUCCESS",
        "FAILURE",
    ];
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |c: [&str; 6]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:>w4$}  {:>w5$}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4],
            w5 = w[5]
        )
    };
    let mut out = line(head);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    out
}

fn render_show(s: &StoredReport) -> String {
    let r = &s.report;
    let mut o = String::new();
    o.push_str(&format!("Report-ID:     {}\n", r.report_id));
    o.push_str(&format!(
        "Organization:  {} (reporter {})\n",
        r.organization_name,
        reporter(&r.organization_name)
    ));
    if let Some(c) = &r.contact_info {
        o.push_str(&format!("Contact:       {c}\n"));
    }
    o.push_str(&format!(
        "Date range:    {} - {} UTC\n",
        utc(r.date_range.start),
        utc(r.date_range.end)
    ));
    o.push_str(&format!("Stored:        {} UTC\n", utc(s.stored_at)));
    o.push_str(&format!("File:          {}\n", s.path.display()));
    for p in &r.policies {
        o.push_str(&format!(
            "\nPolicy {} {}\n",
            p.policy.policy_type.label(),
            p.policy.policy_domain
        ));
        if !p.policy.mx_host.is_empty() {
            o.push_str(&format!(
                "  mx-host:       {}\n",
                p.policy.mx_host.join(", ")
            ));
        }
        if !p.policy.policy_string.is_empty() {
            o.push_str(&format!(
                "  policy-string: {}\n",
                p.policy.policy_string.join(" | ")
            ));
        }
        o.push_str(&format!(
            "  successful sessions: {}\n  failed sessions:     {}\n",
            p.summary.successful, p.summary.failed
        ));
        for d in &p.failure_details {
            o.push_str(&format!(
                "  failure {}: {} session(s)\n",
                d.result_type, d.failed_session_count
            ));
            for (k, v) in [
                ("sending-mta-ip", &d.sending_mta_ip),
                ("receiving-mx-hostname", &d.receiving_mx_hostname),
                ("receiving-mx-helo", &d.receiving_mx_helo),
                ("receiving-ip", &d.receiving_ip),
                ("failure-reason-code", &d.failure_reason_code),
                ("additional-information", &d.additional_information),
            ] {
                if let Some(v) = v {
                    o.push_str(&format!("    {k}: {v}\n"));
                }
            }
        }
        let rest = p.unattributed_failures();
        if rest > 0 {
            o.push_str(&format!("  failures without details: {rest} session(s)\n"));
        }
    }
    o
}
