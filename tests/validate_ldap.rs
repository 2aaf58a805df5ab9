//! The `ldap:` validation method against a real OpenLDAP slapd (Debian `slapd`), started
//! privately on 127.0.0.1 with its own mdb database loaded from an LDIF: known users and
//! aliases are valid, unknown ones invalid, and every failure that is not an answer (wrong
//! bind password, no read rights, the server down) is a tempfail, never "no such user".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mxgate::validate::ldap::{LdapDirectory, LdapSettings};
use mxgate::validate::{TempFailCause, Verdict};

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const SUFFIX: &str = "dc=example,dc=test";
const BIND_DN: &str = "cn=mxgate,ou=services,dc=example,dc=test";
const BIND_PW: &str = "bindsecret";
const FILTER: &str = "(|(mail={address})(mailLocalAddress={address}))";

const USERS: &str = "\
dn: dc=example,dc=test
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,dc=example,dc=test
objectClass: organizationalUnit
ou: people

dn: ou=services,dc=example,dc=test
objectClass: organizationalUnit
ou: services

dn: cn=mxgate,ou=services,dc=example,dc=test
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: mxgate
userPassword: bindsecret

dn: uid=alice,ou=people,dc=example,dc=test
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: alice
cn: Alice Example
sn: Example
mail: alice@example.test
mailLocalAddress: a.example@example.test

dn: uid=bob,ou=people,dc=example,dc=test
objectClass: inetOrgPerson
uid: bob
cn: Bob Example
sn: Example
mail: bob@example.test
";

/// A private slapd; killed on drop.
struct Slapd {
    child: Option<Child>,
    addr: SocketAddr,
    /// The `ldaps://` listener when started with TLS.
    tls_addr: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Slapd {
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when slapd is installed; otherwise SKIP (or fail under CI).
fn slapd_available() -> bool {
    if Path::new(SLAPD).exists() && Path::new(SLAPADD).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{SLAPD} is missing: install the Debian packages slapd ldap-utils");
    }
    println!("SKIP: {SLAPD} not installed (Debian packages slapd ldap-utils)");
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes the configuration, loads the LDIF offline and starts slapd in the foreground; with
/// `tls` (certificate PEM, PKCS#8 key PEM) also on an `ldaps://` port, and StartTLS offered.
async fn start_slapd(tls: Option<(&str, &str)>) -> Slapd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("db")).unwrap();
    // TLS settings are global: they must precede "database".
    let tls_conf = match tls {
        Some((cert, key)) => {
            std::fs::write(d.join("cert.pem"), cert).unwrap();
            std::fs::write(d.join("key.pem"), key).unwrap();
            format!(
                "TLSCertificateFile {d}/cert.pem\nTLSCertificateKeyFile {d}/key.pem\n",
                d = d.display()
            )
        }
        None => String::new(),
    };
    let conf: PathBuf = d.join("slapd.conf");
    std::fs::write(
        &conf,
        format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/misc.schema\n\
             pidfile {d}/slapd.pid\n\
             {tls_conf}\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             database mdb\n\
             maxsize 10485760\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"cn=admin,{SUFFIX}\"\n\
             rootpw adminsecret\n\
             directory {d}/db\n\
             index mail,mailLocalAddress eq\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by dn.exact=\"{BIND_DN}\" read by * none\n",
            d = d.display()
        ),
    )
    .unwrap();
    let ldif = d.join("users.ldif");
    std::fs::write(&ldif, USERS).unwrap();
    let out = Command::new(SLAPADD)
        .arg("-f")
        .arg(&conf)
        .arg("-l")
        .arg(&ldif)
        .output()
        .expect("run slapadd");
    assert!(
        out.status.success(),
        "slapadd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let tls_addr: Option<SocketAddr> =
        tls.map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let mut urls = format!("ldap://{addr}/");
    if let Some(a) = tls_addr {
        urls.push_str(&format!(" ldaps://{a}/"));
    }
    // -d 0 keeps slapd in the foreground, so the child is slapd itself.
    let child = Command::new(SLAPD)
        .arg("-h")
        .arg(urls)
        .arg("-f")
        .arg(&conf)
        .args(["-d", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start slapd");
    let slapd = Slapd {
        child: Some(child),
        addr,
        tls_addr,
        _dir: dir,
    };
    for a in std::iter::once(addr).chain(tls_addr) {
        let mut up = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(a).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "slapd did not listen on {a}");
    }
    slapd
}

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
    assert!(a.detail.starts_with("ldap corp: "), "{}", a.detail);
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

/// A test CA and a certificate for 127.0.0.1 signed by it: (CA DER, cert PEM, key PEM).
fn test_pki() -> (rustls::pki_types::CertificateDer<'static>, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "validate_ldap test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.der().clone(), leaf.pem(), key.serialize_pem())
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
    let (ca, cert_pem, key_pem) = test_pki();
    let slapd = start_slapd(Some((&cert_pem, &key_pem))).await;
    let tls_addr = slapd.tls_addr.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
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
