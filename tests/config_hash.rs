//! `mxgate_config_info{hash}` against the built binary: the value `mxgate check --print-hash`
//! prints is the one the server exports; a policy change changes it; a reload replaces the
//! exported series (the old hash disappears), with what the node runs: a change that needs a
//! restart is not in it until the restart.

mod support;

use std::path::Path;

use support::Mxgate;

fn print_hash(cfg: &Path, work: &Path) -> String {
    let out = support::mxgate::bin()
        .args(["check", "--print-hash"])
        .args(Mxgate::path_args(cfg, work))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(hash.len(), 16, "{hash:?}");
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash:?}");
    hash
}

/// The `mxgate_config_info` series on `/metrics`.
fn exported(m: &Mxgate) -> Vec<String> {
    m.metrics_text()
        .lines()
        .filter(|l| l.starts_with("mxgate_config_info{"))
        .map(str::to_string)
        .collect()
}

#[test]
fn check_prints_the_exported_hash_and_reload_replaces_it() {
    let cfg = tempfile::tempdir().unwrap();
    support::copy_dir(&support::repo().join("tests/fixtures/e2e"), cfg.path());
    let work = tempfile::tempdir().unwrap();
    let before = print_hash(cfg.path(), work.path());
    // Same configuration, same hash, in another process.
    assert_eq!(print_hash(cfg.path(), work.path()), before);

    let m = Mxgate::start_with(
        cfg.path(),
        work.path(),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    assert_eq!(
        exported(&m),
        vec![format!("mxgate_config_info{{hash=\"{before}\"}} 1")]
    );

    // A comment changes nothing; a policy change does.
    let flow = cfg.path().join("policies/mail_flow.yaml");
    let text = std::fs::read_to_string(&flow).unwrap();
    std::fs::write(&flow, format!("# reviewed\n{text}")).unwrap();
    assert_eq!(print_hash(cfg.path(), work.path()), before);
    let hat = cfg.path().join("policies/hat.yaml");
    let text = std::fs::read_to_string(&hat).unwrap();
    std::fs::write(&hat, text.replace("[192.0.2.30]", "[192.0.2.31]")).unwrap();
    let after = print_hash(cfg.path(), work.path());
    assert_ne!(after, before);

    let mark = m.log_mark();
    m.signal(libc::SIGHUP);
    m.wait_log_after(mark, "configuration reloaded");
    assert_eq!(
        exported(&m),
        vec![format!("mxgate_config_info{{hash=\"{after}\"}} 1")]
    );

    // Found by a new user: a change that needs a restart (here `shared_state:`) was exported
    // at reload as if it ran. The files now hash anew; the node exports what it runs, so it
    // shows as different until it is restarted.
    let global = cfg.path().join("mxgate.yaml");
    let text = std::fs::read_to_string(&global).unwrap();
    std::fs::write(
        &global,
        format!(
            "{text}shared_state:\n  url: redis://127.0.0.1:{}/0\n",
            support::free_port()
        ),
    )
    .unwrap();
    let files = print_hash(cfg.path(), work.path());
    assert_ne!(files, after);
    let mark = m.log_mark();
    m.signal(libc::SIGHUP);
    m.wait_log_after(
        mark,
        "reload: shared_state changed; the change needs a restart",
    );
    m.wait_log_after(mark, "configuration reloaded");
    assert_eq!(
        exported(&m),
        vec![format!("mxgate_config_info{{hash=\"{after}\"}} 1")]
    );
    m.stop();
}
