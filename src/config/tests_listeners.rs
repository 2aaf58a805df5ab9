//! Tests of the listener files: unique names, required keys, values and certificates,
//! the client CA file; and of missing directories.

use std::time::Duration;

use super::tests::{config_dir, errors, loaded, PUBLIC};
use super::{load, Overrides};

#[test]
fn listener_names_must_be_unique() {
    let d = config_dir(&[("listeners/zz.yaml", Some(&PUBLIC.replace("2525", "2526")))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        ["listeners/zz.yaml:1:7: name: listener name \"inbound\" is already used in listeners/inbound.yaml"]
    );
}

#[test]
fn missing_directories_and_files_are_named() {
    let d = tempfile::tempdir().unwrap();
    let at = d.path().display();
    assert_eq!(
        errors(&d, &Overrides::default()),
        [
            format!("listeners/: directory not found in {at}: it holds one YAML file per listener (--config-dir names the configuration directory)"),
            format!("policies/: directory not found in {at}: it holds mail_flow.yaml, hat.yaml and rat.yaml (--config-dir names the configuration directory)"),
        ]
    );
    let d = config_dir(&[
        ("policies/hat.yaml", None),
        ("listeners/inbound.yaml", Some("")),
    ]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        [
            "listeners/inbound.yaml: file is empty: define a listener (name, type, bind, hostname, hat)",
            "policies/hat.yaml: file not found: it defines the HATs the listeners name",
        ]
    );
    let gone = d.path().join("nope");
    let e = load(&gone, &Overrides::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("configuration directory {} not found", gone.display())
    );
}

#[test]
fn missing_listener_keys_are_all_reported() {
    let d = config_dir(&[(
        "listeners/inbound.yaml",
        Some("# nothing useful\ntype: public\nmax_command_line: 100\n"),
    )]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        [
            "listeners/inbound.yaml:2:1: name: missing required key `name`",
            "listeners/inbound.yaml:2:1: bind: missing required key `bind` (e.g. bind: [\"127.0.0.1:2525\"])",
            "listeners/inbound.yaml:2:1: hostname: missing required key `hostname`",
            "listeners/inbound.yaml:2:1: hat: missing required key `hat`",
            "listeners/inbound.yaml:2:7: rat: a public listener needs a rat: mxgate is never an open relay",
            "listeners/inbound.yaml:3:19: max_command_line: must be at least 512",
        ]
    );
}

#[test]
fn listener_values_and_certificates() {
    let listener = "\
name: Data 1
type: public
bind: [\"0.0.0.0:25\", \"[::]:25\"]
hostname: mx.example.com
certificate: mx
hat: inbound
rat: inbound
max_connections: 50
max_command_line: 1024
max_bad_commands: 3
timeouts: {command: 60, data: 2m, tls_handshake: 1500ms, session: 1h}
proxy_protocol: {trusted: [198.51.100.10, 10.1.2.3/8]}
";
    let d = config_dir(&[("listeners/inbound.yaml", Some(listener))]);
    let c = loaded(&d, &Overrides::default());
    let l = &c.listeners[0];
    assert_eq!(l.name, "Data 1");
    assert_eq!(l.certificate, Some(d.path().join("certs/mx.crt")));
    assert_eq!(l.key, Some(d.path().join("certs/mx.key")));
    assert_eq!(
        (l.max_connections, l.max_command_line, l.max_bad_commands),
        (50, 1024, 3)
    );
    assert_eq!(l.timeouts.command, Duration::from_secs(60));
    assert_eq!(l.timeouts.tls_handshake, Duration::from_millis(1500));
    assert_eq!(l.timeouts.session, Duration::from_secs(3600));
    let pp = l.proxy_protocol.as_ref().unwrap();
    assert_eq!(
        pp.trusted,
        vec![
            "198.51.100.10/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap()
        ]
    );
    assert_eq!(pp.timeout, Duration::from_secs(5));

    let paths = PUBLIC.to_string() + "certificate: tls/mx.pem\nkey: tls/mx-key.pem\n";
    let d = config_dir(&[
        ("mxgate.yaml", Some("certs_dir: /etc/mxgate/certs\n")),
        ("listeners/inbound.yaml", Some(&paths)),
    ]);
    let l = &loaded(&d, &Overrides::default()).listeners[0];
    assert_eq!(l.certificate, Some(d.path().join("tls/mx.pem")));
    assert_eq!(l.key, Some(d.path().join("tls/mx-key.pem")));
    let named_key = PUBLIC.to_string() + "certificate: mx\nkey: other\n";
    let d = config_dir(&[
        ("mxgate.yaml", Some("certs_dir: /etc/mxgate/certs\n")),
        ("listeners/inbound.yaml", Some(&named_key)),
    ]);
    assert_eq!(
        loaded(&d, &Overrides::default()).listeners[0].key,
        Some("/etc/mxgate/certs/other.key".into())
    );

    let bad = PUBLIC.replace("[\"127.0.0.1:2525\"]", "[\"127.0.0.1\", \"[::1]:25\", \"0.0.0.0:25\"]")
        + "certificate: mx.pem\ntimeouts: {data: 0s}\nproxy_protocol: {trusted: []}\nmax_connections: 0\n";
    let d = config_dir(&[("listeners/inbound.yaml", Some(&bad))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        [
            "listeners/inbound.yaml:3:8: bind[0]: \"127.0.0.1\" has no port: write e.g. 127.0.0.1:2525 or [::1]:2525",
            "listeners/inbound.yaml:7:14: certificate: certificate is a file path, so key must name the private key file too",
            "listeners/inbound.yaml:8:18: timeouts.data: must be longer than 0",
            "listeners/inbound.yaml:9:27: proxy_protocol.trusted: list at least one network: a PROXY header from any other host is refused",
            "listeners/inbound.yaml:10:18: max_connections: must be at least 1",
        ]
    );
}

#[test]
fn listener_client_ca_file() {
    // Unset or null: the webpki roots.
    let c = loaded(&config_dir(&[]), &Overrides::default());
    assert_eq!(c.listeners[0].client_ca_file, None);
    let null = PUBLIC.to_string() + "client_ca_file: null\n";
    let d = config_dir(&[("listeners/inbound.yaml", Some(&null))]);
    assert_eq!(
        loaded(&d, &Overrides::default()).listeners[0].client_ca_file,
        None
    );
    // A PEM bundle, relative to the config dir.
    let ca = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUb4HSiJ+uxuQ5JK4NTxNJ4s/ie8YwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";
    let with = PUBLIC.to_string() + "client_ca_file: certs/partners.pem\n";
    let d = config_dir(&[
        ("listeners/inbound.yaml", Some(&with)),
        ("certs/partners.pem", Some(ca)),
    ]);
    assert_eq!(
        loaded(&d, &Overrides::default()).listeners[0].client_ca_file,
        Some(d.path().join("certs/partners.pem"))
    );
    // Missing, empty and certificate-less files are reported where they are written.
    let missing = PUBLIC.to_string() + "client_ca_file: certs/nope.pem\n";
    let d = config_dir(&[("listeners/inbound.yaml", Some(&missing))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        ["listeners/inbound.yaml:7:17: client_ca_file: CA bundle \"certs/nope.pem\" not found (relative paths start at the config directory)"]
    );
    let not_pem = PUBLIC.to_string() + "client_ca_file: ca.txt\n";
    let d = config_dir(&[
        ("listeners/inbound.yaml", Some(&not_pem)),
        ("ca.txt", Some("not a certificate\n")),
    ]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        ["listeners/inbound.yaml:7:17: client_ca_file: CA bundle \"ca.txt\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)"]
    );
}
