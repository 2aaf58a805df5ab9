//! `list` and `inspect`: what is installed, who uses it, and what is wrong with it.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::cert::{read_certs, Cert, Key};
use super::chain::{assemble, End};
use super::usage::{coverage_lines, missing_references, usage, ConfigView, Usage};
use super::{days_left, describe_days_left, fmt_time, now, refuse, CertsDir, Result};

/// What `inspect` was pointed at.
struct Target {
    /// Name in certs_dir, when it is one.
    name: Option<String>,
    /// The certificate file.
    crt: PathBuf,
    /// The key file next to it, if any.
    key: Option<PathBuf>,
}

fn resolve(dir: &CertsDir, target: &str) -> Result<Target> {
    let p = Path::new(target);
    let looks_like_path = target.contains('/')
        || [".pem", ".crt", ".cer", ".der"]
            .iter()
            .any(|x| target.ends_with(x));
    if looks_like_path || (p.is_file() && super::check_name(target).is_err()) {
        if !p.is_file() {
            return refuse(format!("{target}: no such file"));
        }
        let key = p.with_extension("key");
        let in_dir = p.parent().is_some_and(
            |d| matches!((d.canonicalize(), dir.dir.canonicalize()), (Ok(a), Ok(b)) if a == b),
        );
        let name = (in_dir && p.extension().is_some_and(|e| e == "crt"))
            .then(|| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .flatten();
        return Ok(Target {
            name,
            crt: p.to_path_buf(),
            key: key.is_file().then_some(key),
        });
    }
    super::check_name(target)?;
    let crt = dir.crt(target);
    if !crt.exists() {
        let hint = if dir.csr(target).exists() {
            format!(
                ": the request {} is pending; install the signed certificate with \
                 `mxgate certs install {target} --cert FILE`",
                dir.csr(target).display()
            )
        } else {
            String::new()
        };
        return refuse(format!(
            "no certificate {target} ({} not found){hint}",
            crt.display()
        ));
    }
    let key = dir.key(target);
    Ok(Target {
        name: Some(target.to_string()),
        crt,
        key: key.exists().then_some(key),
    })
}

/// `mxgate certs inspect NAME|FILE`.
pub(crate) fn inspect(dir: &CertsDir, target: &str, view: &ConfigView) -> Result<String> {
    let t = resolve(dir, target)?;
    let certs = read_certs(&t.crt)?;
    let key = t.key.as_ref().map(|k| Key::read(k).map_err(|e| e.0));
    let ts = now();
    // The leaf: the certificate of the key, else one that issued no other in the file.
    let leaf_at = match &key {
        Some(Ok(k)) => certs.iter().position(|c| k.matches(c)),
        _ => None,
    }
    .or_else(|| {
        certs
            .iter()
            .position(|c| !certs.iter().any(|o| o.der != c.der && o.issued_by(c)))
    })
    .unwrap_or(0);
    let leaf = certs[leaf_at].clone();
    let mut s = String::new();
    let row = |s: &mut String, label: &str, value: &str| {
        let _ = writeln!(s, "{label:<13} {value}");
    };
    let title = match &t.name {
        Some(n) => format!("{n}  ({})", t.crt.display()),
        None => t.crt.display().to_string(),
    };
    row(&mut s, "Certificate", &title);
    row(&mut s, "Subject", &leaf.subject);
    row(
        &mut s,
        "SANs",
        &if leaf.sans.is_empty() {
            "(none: clients fall back to the CN)".to_string()
        } else {
            leaf.sans.join(", ")
        },
    );
    row(&mut s, "Issuer", &leaf.issuer);
    row(&mut s, "Serial", &leaf.serial);
    row(&mut s, "Valid from", &fmt_time(leaf.not_before));
    row(
        &mut s,
        "Valid until",
        &format!(
            "{} ({})",
            fmt_time(leaf.not_after),
            describe_days_left(leaf.not_after, ts)
        ),
    );
    row(&mut s, "Key type", &leaf.key_type);
    let key_line = match (&t.key, &key) {
        (Some(p), Some(Ok(k))) if k.matches(&leaf) => {
            format!("{}: matches the certificate", p.display())
        }
        (Some(p), Some(Ok(k))) => format!(
            "{}: DOES NOT MATCH the certificate (key is {})",
            p.display(),
            k.key_type
        ),
        (Some(p), Some(Err(e))) => format!("{}: unreadable: {e}", p.display()),
        _ => "not found next to the certificate".to_string(),
    };
    row(&mut s, "Key file", &key_line);
    let _ = writeln!(
        s,
        "Chain         {} certificate{}, in file order:",
        certs.len(),
        if certs.len() == 1 { "" } else { "s" }
    );
    for (i, c) in certs.iter().enumerate() {
        let _ = writeln!(
            s,
            "  {}. {}{}  issuer {}  until {} ({})",
            i + 1,
            c.subject,
            if c.self_signed { " (self-signed)" } else { "" },
            c.issuer,
            fmt_time(c.not_after),
            describe_days_left(c.not_after, ts)
        );
    }
    let mut problems = Vec::new();
    if leaf_at != 0 {
        problems.push(format!(
            "warning: wrong order: the leaf certificate must come first (it is certificate {})",
            leaf_at + 1
        ));
    }
    let others: Vec<Cert> = certs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leaf_at)
        .map(|(_, c)| c.clone())
        .collect();
    let a = assemble(leaf.clone(), others, ts).with_ca_roots(&view.ca_roots());
    problems.extend(a.messages(false));
    for c in &a.chain {
        if c.not_after < ts {
            problems.push(format!(
                "warning: {} expired on {}",
                c.subject,
                fmt_time(c.not_after)
            ));
        } else if c.not_before > ts {
            problems.push(format!(
                "warning: {} is not valid before {}",
                c.subject,
                fmt_time(c.not_before)
            ));
        }
    }
    if leaf.self_signed {
        problems.push(
            "note: self-signed: TLS works, but clients cannot verify it (like the demo certificate)"
                .to_string(),
        );
    }
    if problems.is_empty() {
        let ends = match &a.end {
            End::KnownRoot(r) => format!("ends below the well-known root {r}"),
            _ => "ends at a self-signed root".to_string(),
        };
        problems.push(format!("ok: leaf→root, no duplicates, {ends}"));
    }
    for (i, p) in problems.iter().enumerate() {
        row(&mut s, if i == 0 { "Chain check" } else { "" }, p);
    }
    let u = match &view.cfg {
        Some(cfg) => Some(usage(cfg, &dir.dir, t.name.as_deref(), &t.crt)),
        None => None,
    };
    match &u {
        Some(u) => row(&mut s, "Used by", &used_by_text(u)),
        None => row(
            &mut s,
            "Used by",
            view.warning
                .as_deref()
                .unwrap_or("unknown (configuration not loaded)"),
        ),
    }
    if let Some(u) = &u {
        for (i, (_, line)) in coverage_lines(&leaf, u).iter().enumerate() {
            row(&mut s, if i == 0 { "Host names" } else { "" }, line);
        }
    }
    let tlsa = leaf.tlsa();
    row(&mut s, "TLSA", &format!("3 1 1 {tlsa}"));
    let mut hosts: Vec<&str> = u
        .iter()
        .flat_map(|u| u.listeners.iter().map(|l| l.hostname.as_str()))
        .collect();
    hosts.dedup();
    for h in hosts {
        row(
            &mut s,
            "",
            &format!("_25._tcp.{}. IN TLSA 3 1 1 {tlsa}", h.trim_end_matches('.')),
        );
    }
    Ok(s)
}

fn used_by_text(u: &Usage) -> String {
    let mut v: Vec<String> = u
        .listeners
        .iter()
        .map(|l| format!("listener {} ({})", l.name, l.hostname))
        .collect();
    if u.delivery {
        v.push("delivery client certificate (policies/destinations.yaml)".to_string());
    }
    if v.is_empty() {
        "nothing (no listener or delivery names it)".to_string()
    } else {
        v.join(", ")
    }
}

/// `mxgate certs list`: one row per certificate in certs_dir, then pending requests and
/// certificates the configuration names but that do not exist.
pub(crate) fn list(dir: &CertsDir, view: &ConfigView) -> Result<String> {
    let mut names: Vec<String> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir.dir) {
        for e in rd.flatten() {
            let p = e.path();
            let (Some(stem), Some(ext)) = (p.file_stem(), p.extension()) else {
                continue;
            };
            let stem = stem.to_string_lossy().into_owned();
            if stem.starts_with('.') {
                continue;
            }
            match ext.to_str() {
                Some("crt") => names.push(stem),
                Some("csr") => pending.push(stem),
                _ => {}
            }
        }
    } else if !dir.dir.exists() {
        return Ok(format!(
            "{} does not exist: no certificates yet\n",
            dir.dir.display()
        ));
    }
    names.sort();
    pending.sort();
    pending.retain(|p| !names.contains(p));
    let ts = now();
    let mut rows = Vec::new();
    for n in &names {
        let crt = dir.crt(n);
        let used = view
            .cfg
            .as_ref()
            .map(|cfg| usage(cfg, &dir.dir, Some(n), &crt).summary())
            .unwrap_or_else(|| "?".to_string());
        match read_certs(&crt) {
            Ok(certs) => {
                let c = &certs[0];
                let key = match Key::read(&dir.key(n)) {
                    Ok(k) if k.matches(c) => "ok".to_string(),
                    Ok(_) => "MISMATCH".to_string(),
                    Err(_) if !dir.key(n).exists() => "missing".to_string(),
                    Err(_) => "unreadable".to_string(),
                };
                let left = if c.not_after < ts {
                    "EXPIRED".to_string()
                } else {
                    days_left(c.not_after, ts).to_string()
                };
                rows.push(vec![
                    n.clone(),
                    c.cn.clone().unwrap_or_else(|| "-".into()),
                    if c.sans.is_empty() {
                        "-".into()
                    } else {
                        c.sans.join(",")
                    },
                    fmt_time(c.not_after),
                    left,
                    key,
                    used,
                ]);
            }
            Err(e) => rows.push(vec![
                n.clone(),
                format!("unreadable: {e}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                used,
            ]),
        }
    }
    let mut s = if rows.is_empty() {
        format!("no certificates in {}\n", dir.dir.display())
    } else {
        table(
            &[
                "Name",
                "CN",
                "SANs",
                "Expires",
                "Days left",
                "Key",
                "Used by",
            ],
            &rows,
        )
    };
    for p in &pending {
        let _ = writeln!(
            s,
            "{p}: request {} pending (install the signed certificate with `mxgate certs install {p} --cert FILE`)",
            dir.csr(p).display()
        );
    }
    if let Some(cfg) = &view.cfg {
        for (who, path) in missing_references(cfg, &dir.dir) {
            let demo = path.file_name().is_some_and(|f| f == "demo.crt");
            let _ = writeln!(
                s,
                "{who} uses {}, which does not exist{}",
                path.display(),
                if demo {
                    " yet (the self-signed demo certificate, generated on first start)"
                } else {
                    ": the server will not start"
                }
            );
        }
    }
    Ok(s)
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{c:<w$}");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(
        &mut out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    line(
        &mut out,
        &width.iter().map(|w| "=".repeat(*w)).collect::<Vec<_>>(),
    );
    for r in rows {
        line(&mut out, r);
    }
    out
}
