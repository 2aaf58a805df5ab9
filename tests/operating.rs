//! Operating mxgate as a new administrator would: `check` finds everything `serve` would
//! refuse, the test dependencies install, logs are readable outside a terminal, the queue
//! commands, restarts and reloads.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{copy_dir, repo};

fn mxgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mxgate"))
}

/// A copy of the shipped configuration (listeners/, policies/) in a temporary directory.
fn shipped_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("listeners"), &dir.path().join("listeners"));
    copy_dir(&repo().join("policies"), &dir.path().join("policies"));
    dir
}

fn check(dir: &Path) -> (Output, String) {
    let out = mxgate()
        .args(["check", "--config-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

#[test]
fn trust_17_check_reports_every_error_of_a_file_with_an_unknown_key() {
    let dir = shipped_copy();
    std::fs::write(
        dir.path().join("policies/rat.yaml"),
        "inbound:\n  entries:\n    - recipient: example.com\n      bogus: 1\n    - recipient: \"bad..example\"\n      action: acept\n",
    )
    .unwrap();
    let (out, text) = check(dir.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has("policies/rat.yaml:4:7: unknown key `bogus`"), "{text}");
    assert!(
        has("policies/rat.yaml:5:18: inbound.entries[1].recipient:"),
        "{text}"
    );
    assert!(
        has("policies/rat.yaml:6:15: inbound.entries[1].action:"),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");
}

#[test]
fn trust_17_check_refuses_a_missing_certificate_file_naming_the_listener() {
    let dir = shipped_copy();
    let file = dir.path().join("listeners/inbound.yaml");
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        yaml.replace("\ncertificate: demo\n", "\ncertificate: mx\n"),
    )
    .unwrap();
    let (out, text) = check(dir.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("listener inbound: certificate file ")
            && text.contains("certs/mx.crt not found")
            && text.contains("mxgate certs new mx"),
        "{text}"
    );
    assert!(!text.contains("configuration OK"), "{text}");
}

#[test]
fn trust_17_check_warns_about_host_bits_in_a_cidr() {
    let dir = shipped_copy();
    std::fs::write(
        dir.path().join("policies/hat.yaml"),
        "inbound:\n  sender_groups:\n    - name: PARTNERS\n      policy: ACCEPTED\n      match: [192.0.2.1/24]\nrelay:\n  sender_groups: []\n",
    )
    .unwrap();
    let (out, text) = check(dir.path());
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "policies/hat.yaml:5:15: warning: inbound.sender_groups[0].match[0]: \"192.0.2.1/24\" \
             has host bits set, so it matches the whole network 192.0.2.0/24"
        ),
        "{text}"
    );
    assert!(text.contains("configuration OK"), "{text}");
}

#[test]
fn trust_19_run_sh_installs_what_swaks_tls_needs() {
    // swaks only recommends its TLS modules, and run.sh installs with --no-install-recommends.
    let script = std::fs::read_to_string(repo().join("tests/run.sh")).unwrap();
    for (module, package) in [
        ("Net::SSLeay", "libnet-ssleay-perl"),
        ("IO::Socket::SSL", "libio-socket-ssl-perl"),
    ] {
        assert!(
            script
                .lines()
                .any(|l| l.contains(module) && l.contains(&format!("need+=({package})"))),
            "tests/run.sh does not install {package} for {module}"
        );
    }
    match Command::new("swaks").arg("--support").output() {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            assert!(
                text.contains("=== TLS supported"),
                "swaks --support:\n{text}"
            );
        }
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "swaks must be installed in CI"
            );
            eprintln!("SKIP: swaks is not installed");
        }
    }
}
