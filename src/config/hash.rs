//! The configuration's fingerprint: `mxgate_config_info{hash}` and `mxgate check --print-hash`,
//! so a dashboard shows nodes running different policies.
//!
//! Taken over the validated model, not the files: SHA-256 of the model's `Debug` output (every
//! table in a stable order), first 16 hex digits. A comment, a reordered key or a YAML quoting
//! change leaves it as it is; any change in what the gateway does changes it. It covers what a
//! node does, not where: listener bind addresses, the metrics address and the spool, mail-log
//! and certificates locations are left out, so nodes with their own `--bind` or `--spool-dir`
//! still agree. It covers the contents of files the model holds (recipient lists) and of
//! `dns.hosts_file` (its answers decide FCrDNS and so the sender group), not its path;
//! certificate and key files are named by path, not hashed: a renewed certificate is not a
//! policy change. Listeners are taken in name order, so renaming a listener's file (which
//! only changes the load order) leaves the hash as it is.

use super::model::Config;

/// The configuration's hash: 16 lower-case hex digits.
pub fn config_hash(config: &Config) -> String {
    // Destructured so that a new field is a decision, not an oversight. Left out: where the
    // files were read from, warnings (their file positions move with comments), and the
    // node-local locations (cleared below).
    let Config {
        dir: _,
        global,
        listeners,
        hats,
        policies,
        rats,
        routes,
        destinations,
        validation,
        mta_sts,
        tlsrpt,
        warnings: _,
    } = config;
    let mut global = global.clone();
    let hosts = global
        .dns
        .hosts_file
        .take()
        .map(|path| hosts_file_contents(&path));
    global.spool_dir = Default::default();
    global.mail_log = super::model::MailLogTarget::Stdout;
    global.certs_dir = Default::default();
    global.metrics_listen = None;
    let mut listeners: Vec<_> = listeners
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.bind.clear();
            l
        })
        .collect();
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    // Like a listener's bind addresses: where the MTA-STS endpoint listens is node-local.
    let mta_sts = mta_sts.as_ref().map(|m| {
        let mut m = (**m).clone();
        m.listen.clear();
        m
    });
    let canonical = format!(
        "{global:?}\n{hosts:?}\n{listeners:?}\n{hats:?}\n{policies:?}\n{rats:?}\n{routes:?}\n{destinations:?}\n{validation:?}\n{mta_sts:?}\n{tlsrpt:?}\n"
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hosts file as the resolver reads it (lines without comments or blank ones, so a
/// comment changes nothing); a file that cannot be read hashes as its error, which differs
/// from any contents.
fn hosts_file_contents(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.kind().to_string())?;
    Ok(text
        .lines()
        .map(|l| {
            l.split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, Overrides};
    use std::path::Path;

    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn hash_of(dir: &Path) -> String {
        config_hash(&load(dir, &Overrides::default()).unwrap())
    }

    #[test]
    fn stable_under_comments_changed_by_policy() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2e");
        let dir = tempfile::tempdir().unwrap();
        copy(&fixture, dir.path());
        let first = hash_of(dir.path());
        assert_eq!(first.len(), 16);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        // Loaded again (every hash map seeded anew): the same.
        assert_eq!(hash_of(dir.path()), first);
        // Node-local locations: the same.
        let local = Overrides {
            spool_dir: Some("/elsewhere/spool".into()),
            metrics_listen: Some(Some("127.0.0.1:9999".parse().unwrap())),
            binds: vec![("preferred".into(), vec!["127.0.0.1:2526".parse().unwrap()])],
            ..Overrides::default()
        };
        assert_eq!(config_hash(&load(dir.path(), &local).unwrap()), first);
        // A comment: the same.
        let flow = dir.path().join("policies/mail_flow.yaml");
        let text = std::fs::read_to_string(&flow).unwrap();
        std::fs::write(&flow, format!("# a comment\n{text}\n# another\n")).unwrap();
        assert_eq!(hash_of(dir.path()), first);
        // A policy change: another hash.
        let hat = dir.path().join("policies/hat.yaml");
        let text = std::fs::read_to_string(&hat).unwrap();
        std::fs::write(
            &hat,
            text.replace("match: [127.0.0.7]", "match: [127.0.0.8]"),
        )
        .unwrap();
        assert_ne!(hash_of(dir.path()), first);
    }

    #[test]
    fn hosts_file_by_contents_listeners_by_name() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2e");
        let dir = tempfile::tempdir().unwrap();
        copy(&fixture, dir.path());
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "192.0.2.1 mail.example.org\n").unwrap();
        let global = dir.path().join("mxgate.yaml");
        let text = std::fs::read_to_string(&global).unwrap();
        std::fs::write(
            &global,
            text.replace("  timeout: 2s", "  timeout: 2s\n  hosts_file: hosts"),
        )
        .unwrap();
        let first = hash_of(dir.path());
        // A comment or blank line in the hosts file: the same.
        std::fs::write(&hosts, "# ours\n\n192.0.2.1   mail.example.org # the MX\n").unwrap();
        assert_eq!(hash_of(dir.path()), first);
        // The same contents under another name: the same.
        std::fs::rename(&hosts, dir.path().join("hosts2")).unwrap();
        let text = std::fs::read_to_string(&global).unwrap();
        std::fs::write(
            &global,
            text.replace("hosts_file: hosts", "hosts_file: hosts2"),
        )
        .unwrap();
        assert_eq!(hash_of(dir.path()), first);
        // Another answer: another hash (FCrDNS, and so the sender group, may change).
        std::fs::write(dir.path().join("hosts2"), "192.0.2.9 mail.example.org\n").unwrap();
        let other = hash_of(dir.path());
        assert_ne!(other, first);
        // A listener's file renamed (it now loads first): the same.
        let listeners = dir.path().join("listeners");
        std::fs::rename(listeners.join("tiny.yaml"), listeners.join("0-tiny.yaml")).unwrap();
        assert_eq!(hash_of(dir.path()), other);
    }
}
