//! The `ldap:` validation method against a real OpenLDAP slapd (Debian `slapd`), started
//! privately on 127.0.0.1 with its own mdb database loaded from an LDIF: known users and
//! aliases are valid, unknown ones invalid, and every failure that is not an answer (wrong
//! bind password, no read rights, the server down) is a tempfail, never "no such user".

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mxgate::validate::ldap::{LdapDirectory, LdapSettings};
use mxgate::validate::{TempFailCause, Verdict};
use support::slapd::{slapd_available, start_slapd, test_pki, BIND_DN, BIND_PW, FILTER, SUFFIX};

fn settings(addr: SocketAddr) -> LdapSettings {
    LdapSettings {
        name: "corp".into(),
        url: format!("ldap://{addr}"),
        starttls: false,
        tls: None,
        bind_dn: BIND_DN.into(),
        password: BIND_PW.into(),
        base: format!("ou=people,{SUFFIX}"),
        filter: FILTER.into(),
        timeout: Duration::from_secs(5),
        max_connections: 2,
    }
}

#[tokio::test]
async fn users_and_aliases_are_valid_unknown_addresses_invalid() {
    if !slapd_available() {
        return;
    }
    let slapd = start_slapd(None).await;
    let dir = LdapDirectory::new(settings(slapd.addr));
    assert_eq!(dir.method_id(), "ldap:corp");
    for valid in [
        "alice@example.test",
        "bob@example.test",
        "a.example@example.test",
        // The directory compares case-insensitively (mail is caseIgnoreIA5Match).
        "Alice@Example.TEST",
    ] {
        let a = dir.lookup(valid).await;
        assert_eq!(a.verdict, Verdict::Valid, "{valid}: {a:?}");
    }
    let a = dir.lookup("nobody@example.test").await;
    assert_eq!(a.verdict, Verdict::Invalid, "{a:?}");
    assert!(a.detail.starts_with("ldap://127.0.0.1:"), "{}", a.detail);
    // A filter injection in the local part is escaped: no wildcard match.
    let a = dir.lookup("*)(mail=*@example.test").await;
    assert_eq!(a.verdict, Verdict::Invalid, "{a:?}");
    // {local} and {domain} placeholders.
    let by_uid = LdapDirectory::new(LdapSettings {
        filter: "(&(uid={local})(mail=*@{domain}))".into(),
        ..settings(slapd.addr)
    });
    assert_eq!(
        by_uid.lookup("alice@example.test").await.verdict,
        Verdict::Valid
    );
    assert_eq!(
        by_uid.lookup("alice@other.test").await.verdict,
        Verdict::Invalid
    );
    assert_eq!(
        by_uid.lookup("carol@example.test").await.verdict,
        Verdict::Invalid
    );
}

#[tokio::test]
async fn failures_that_are_not_answers_are_tempfails() {
    if !slapd_available() {
        return;
    }
    let mut slapd = start_slapd(None).await;
    // Wrong bind password: rc 49, never "no such user".
    let wrong = LdapDirectory::new(LdapSettings {
        password: "wrong".into(),
        ..settings(slapd.addr)
    });
    let a = wrong.lookup("alice@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::LdapBind),
        "{a:?}"
    );
    assert!(a.detail.contains("bind"), "{}", a.detail);
    // Anonymous: the ACL hides the tree, slapd answers 32 (noSuchObject) for everyone.
    let anon = LdapDirectory::new(LdapSettings {
        bind_dn: String::new(),
        password: String::new(),
        ..settings(slapd.addr)
    });
    let a = anon.lookup("alice@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::LdapResult),
        "{a:?}"
    );
    assert!(a.detail.contains("result code 32"), "{}", a.detail);
    // The server goes down under a kept-open connection: tempfail at once, no timeout.
    let dir = LdapDirectory::new(settings(slapd.addr));
    assert_eq!(dir.lookup("bob@example.test").await.verdict, Verdict::Valid);
    slapd.stop();
    let t0 = Instant::now();
    let a = dir.lookup("bob@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::LdapDown),
        "{a:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Nothing listens at all.
    let gone = LdapDirectory::new(settings(slapd.addr));
    let a = gone.lookup("bob@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::LdapDown),
        "{a:?}"
    );
}

/// A rustls client configuration trusting `roots` only.
fn client_config(roots: rustls::RootCertStore) -> std::sync::Arc<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

/// LDAPS and StartTLS with the directory's CA: lookups work; a client that does not trust
/// that CA gets a tempfail, never an answer over an unverified connection.
#[tokio::test]
async fn ldaps_and_starttls_verify_the_server() {
    if !slapd_available() {
        return;
    }
    let pki = test_pki();
    let slapd = start_slapd(Some((&pki.cert_pem, &pki.key_pem))).await;
    let tls_addr = slapd.tls_addr.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca).unwrap();
    let trusted = client_config(roots);
    let ldaps = LdapDirectory::new(LdapSettings {
        url: format!("ldaps://{tls_addr}"),
        tls: Some(trusted.clone()),
        ..settings(slapd.addr)
    });
    assert_eq!(
        ldaps.lookup("alice@example.test").await.verdict,
        Verdict::Valid
    );
    assert_eq!(
        ldaps.lookup("nobody@example.test").await.verdict,
        Verdict::Invalid
    );
    let starttls = LdapDirectory::new(LdapSettings {
        starttls: true,
        tls: Some(trusted),
        ..settings(slapd.addr)
    });
    assert_eq!(
        starttls.lookup("bob@example.test").await.verdict,
        Verdict::Valid
    );
    // Trusting only the public roots: the handshake fails.
    let public = client_config(rustls::RootCertStore::from_iter(
        webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
    ));
    for (url, st) in [
        (format!("ldaps://{tls_addr}"), false),
        (format!("ldap://{}", slapd.addr), true),
    ] {
        let dir = LdapDirectory::new(LdapSettings {
            url: url.clone(),
            starttls: st,
            tls: Some(public.clone()),
            ..settings(slapd.addr)
        });
        let a = dir.lookup("alice@example.test").await;
        assert_eq!(
            a.verdict,
            Verdict::TempFail(TempFailCause::LdapDown),
            "{url}: {a:?}"
        );
    }
}
