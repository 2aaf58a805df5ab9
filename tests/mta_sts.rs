//! MTA-STS policy hosting (issue 14 item 1): the built binary serves each domain's policy at
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, fetched by the real curl with a test CA;
//! `mxgate reload` changes what it serves; other hosts, paths and methods are refused.

mod support;

use std::path::Path;
use std::process::Command;

use support::pki::TestPki;
use support::{copy_dir, repo, Mxgate};

/// What curl saw: status, content type and body bytes.
struct Fetched {
    status: String,
    content_type: String,
    body: Vec<u8>,
}

/// `curl --resolve HOST:PORT:127.0.0.1 https://HOST:PORT/PATH --cacert CA` plus `extra`.
fn curl(host: &str, port: u16, path: &str, ca: &Path, extra: &[&str]) -> Fetched {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}{path}"))
        .arg("--cacert")
        .arg(ca)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{content_type}"])
        .args(extra)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = String::from_utf8(out.stdout).unwrap();
    let (status, content_type) = w.split_once(' ').unwrap();
    Fetched {
        status: status.into(),
        content_type: content_type.into(),
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// Writes a PEM file of `label` blocks.
fn pem(path: &Path, blocks: &[(&str, &[u8])]) {
    let text: String = blocks
        .iter()
        .map(|(label, der)| mxgate::certs::pem_encode(label, der))
        .collect();
    std::fs::write(path, text).unwrap();
}

const POLICY_FILE: &str = "\
listen: [\"127.0.0.1:0\"]
certificate: mta-sts
max_age: 1d
domains:
  example.com:
    mode: testing
    mx: [mx1.example.com, \"*.mx.example.com\"]
  example.org: {}
";

#[test]
fn curl_fetches_each_policy_and_a_reload_changes_it() {
    if !support::tools_available(&["curl"]) {
        return;
    }
    let cfg = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), cfg.path());
    let file = cfg.path().join("policies/mta_sts.yaml");
    std::fs::write(&file, POLICY_FILE).unwrap();
    // A certificate for both policy hosts, signed by a test CA that curl trusts.
    let pki = TestPki::new();
    let leaf = pki.leaf(&["mta-sts.example.com", "mta-sts.example.org"], None);
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let chain: Vec<(&str, &[u8])> = leaf
        .chain
        .iter()
        .map(|c| ("CERTIFICATE", c.as_ref()))
        .collect();
    pem(&certs.join("mta-sts.crt"), &chain);
    pem(
        &certs.join("mta-sts.key"),
        &[("PRIVATE KEY", leaf.key.secret_der())],
    );
    let ca = work.path().join("ca.pem");
    pki.write_ca(&ca);

    let srv = Mxgate::start(cfg.path(), work.path());
    let port = srv.mta_sts_port();
    let path = "/.well-known/mta-sts.txt";

    let got = curl("mta-sts.example.com", port, path, &ca, &[]);
    let testing = "version: STSv1\r\nmode: testing\r\nmx: mx1.example.com\r\nmx: *.mx.example.com\r\nmax_age: 86400\r\n";
    assert_eq!(got.status, "200");
    assert_eq!(got.content_type, "text/plain");
    assert_eq!(String::from_utf8(got.body).unwrap(), testing);
    // The id to publish in DNS is logged, and is the policy text's id.
    let id = mxgate::mta_sts::policy_id(testing);
    srv.wait_log(&format!(
        "mta-sts: policy of example.com mode testing id {id}: publish _mta-sts.example.com TXT \"v=STSv1; id={id}\""
    ));
    // No `mx:` list: the public listeners' host name (every public listener of the fixture
    // says mx.test.example; the private one's relay.test.example is not an MX).
    let got = curl("mta-sts.example.org", port, path, &ca, &[]);
    assert_eq!(
        String::from_utf8(got.body).unwrap(),
        "version: STSv1\r\nmode: testing\r\nmx: mx.test.example\r\nmax_age: 86400\r\n"
    );

    // Another Host (over the same TLS name), another path, another method.
    let other = curl(
        "mta-sts.example.com",
        port,
        path,
        &ca,
        &["-H", "Host: mta-sts.example.net"],
    );
    assert_eq!(other.status, "404");
    assert_eq!(
        curl("mta-sts.example.com", port, "/", &ca, &[]).status,
        "404"
    );
    let post = curl(
        "mta-sts.example.com",
        port,
        path,
        &ca,
        &["-X", "POST", "-d", "x"],
    );
    assert_eq!(post.status, "405");
    // A request head larger than the bound is refused, not buffered.
    let big = format!("X-Big: {}", "a".repeat(20_000));
    assert_eq!(
        curl("mta-sts.example.com", port, path, &ca, &["-H", &big]).status,
        "431"
    );

    // Enforce, reloaded: curl sees the new mode, and the new id is logged.
    let mark = srv.log_mark();
    std::fs::write(&file, POLICY_FILE.replace("mode: testing", "mode: enforce")).unwrap();
    let out = srv.ctl(&["reload"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.wait_log_after(mark, "configuration reloaded");
    let enforce = testing.replace("mode: testing", "mode: enforce");
    let got = curl("mta-sts.example.com", port, path, &ca, &[]);
    assert_eq!(String::from_utf8(got.body).unwrap(), enforce);
    let new_id = mxgate::mta_sts::policy_id(&enforce);
    assert_ne!(new_id, id);
    srv.wait_log_after(
        mark,
        &format!("mta-sts: policy of example.com mode enforce id {new_id}:"),
    );

    // A changed `listen:` needs a restart: a Warning, and the old port still serves.
    let mark = srv.log_mark();
    std::fs::write(
        &file,
        POLICY_FILE
            .replace("127.0.0.1:0", "127.0.0.1:1")
            .replace("mode: testing", "mode: none"),
    )
    .unwrap();
    let out = srv.ctl(&["reload"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.wait_log_after(
        mark,
        "mta_sts.yaml listen addresses changed; the change needs a restart",
    );
    srv.wait_log_after(mark, "configuration reloaded");
    let got = curl("mta-sts.example.com", port, path, &ca, &[]);
    assert!(String::from_utf8(got.body)
        .unwrap()
        .contains("mode: none\r\n"));

    // A wrong mode is refused whole by `mxgate reload`, with its position.
    std::fs::write(
        &file,
        POLICY_FILE.replace("mode: testing", "mode: enforcing"),
    )
    .unwrap();
    let out = srv.ctl(&["reload"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "policies/mta_sts.yaml:6:11: domains.example.com.mode: \"enforcing\" is not a mode"
        ),
        "{err}"
    );
    srv.stop();
}

#[test]
fn without_a_certificate_a_demo_one_names_every_policy_host() {
    if !support::tools_available(&["curl"]) {
        return;
    }
    let cfg = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), cfg.path());
    let file = cfg.path().join("policies/mta_sts.yaml");
    std::fs::write(&file, POLICY_FILE.replace("certificate: mta-sts\n", "")).unwrap();
    let srv = Mxgate::start(cfg.path(), work.path());
    let port = srv.mta_sts_port();
    // The self-signed demo certificate is its own trust anchor for curl: it names both hosts.
    let demo = work.path().join("certs/mta-sts-demo.crt");
    for host in ["mta-sts.example.com", "mta-sts.example.org"] {
        let got = curl(host, port, "/.well-known/mta-sts.txt", &demo, &[]);
        assert_eq!(got.status, "200", "{host}");
    }
    // A domain added by a reload gets a new demo certificate naming it too.
    let mark = srv.log_mark();
    let three = POLICY_FILE.replace("certificate: mta-sts\n", "") + "  example.net: {mode: none}\n";
    std::fs::write(&file, three).unwrap();
    let out = srv.ctl(&["reload"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.wait_log_after(mark, "configuration reloaded");
    for host in ["mta-sts.example.com", "mta-sts.example.net"] {
        let got = curl(host, port, "/.well-known/mta-sts.txt", &demo, &[]);
        assert_eq!(got.status, "200", "{host}");
    }
    srv.stop();
}

#[test]
fn check_names_a_missing_certificate() {
    // `mxgate check` names a configured certificate that is not installed (serve would fail).
    let cfg = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), cfg.path());
    std::fs::write(cfg.path().join("policies/mta_sts.yaml"), POLICY_FILE).unwrap();
    let out = support::mxgate::bin()
        .arg("check")
        .args(Mxgate::path_args(cfg.path(), work.path()))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("policies/mta_sts.yaml: certificate: ")
            && text.contains("mta-sts.crt not found"),
        "{text}"
    );
}
