//! A private OpenLDAP slapd (Debian `slapd`) for the `ldap:` validation tests: started on
//! 127.0.0.1 with its own mdb database loaded from an LDIF ([`USERS`]: alice with an alias,
//! bob, and the service account mxgate binds as), optionally with TLS (an `ldaps://` port and
//! StartTLS). Killed on drop; [`slapd_available`] prints SKIP where it is not installed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The slapd binary.
pub const SLAPD: &str = "/usr/sbin/slapd";
/// The offline loader.
pub const SLAPADD: &str = "/usr/sbin/slapadd";
/// The directory's suffix.
pub const SUFFIX: &str = "dc=example,dc=test";
/// The service account mxgate binds as (it alone may read the people).
pub const BIND_DN: &str = "cn=mxgate,ou=services,dc=example,dc=test";
/// Its password.
pub const BIND_PW: &str = "bindsecret";
/// A filter matching a primary address or an alias.
pub const FILTER: &str = "(|(mail={address})(mailLocalAddress={address}))";

/// The directory's content.
pub const USERS: &str = "\
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
pub struct Slapd {
    child: Option<Child>,
    /// The `ldap://` listener.
    pub addr: SocketAddr,
    /// The `ldaps://` listener when started with TLS.
    pub tls_addr: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Slapd {
    /// Kills slapd (the directory goes down).
    pub fn stop(&mut self) {
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
pub fn slapd_available() -> bool {
    if Path::new(SLAPD).exists() && Path::new(SLAPADD).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{SLAPD} is missing: install the Debian packages slapd ldap-utils");
    }
    println!("SKIP: {SLAPD} not installed (Debian packages slapd ldap-utils)");
    false
}

/// Writes the configuration, loads the LDIF offline and starts slapd in the foreground; with
/// `tls` (certificate PEM, PKCS#8 key PEM) also on an `ldaps://` port, and StartTLS offered.
pub async fn start_slapd(tls: Option<(&str, &str)>) -> Slapd {
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
    let port = super::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let tls_addr: Option<SocketAddr> =
        tls.map(|_| format!("127.0.0.1:{}", super::free_port()).parse().unwrap());
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

/// A test CA and slapd's certificate for 127.0.0.1, signed by it.
pub struct SlapdPki {
    /// The CA certificate.
    pub ca: rustls::pki_types::CertificateDer<'static>,
    /// The same as PEM (a `ca_file`).
    pub ca_pem: String,
    /// slapd's certificate.
    pub cert_pem: String,
    /// Its PKCS#8 key.
    pub key_pem: String,
}

/// A fresh [`SlapdPki`].
pub fn test_pki() -> SlapdPki {
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
    SlapdPki {
        ca: ca.der().clone(),
        ca_pem: ca.pem(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
    }
}
