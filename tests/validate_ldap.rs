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

/// Writes the configuration, loads the LDIF offline and starts slapd in the foreground.
async fn start_slapd() -> Slapd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("db")).unwrap();
    let conf: PathBuf = d.join("slapd.conf");
    std::fs::write(
        &conf,
        format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/misc.schema\n\
             pidfile {d}/slapd.pid\n\
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
    // -d 0 keeps slapd in the foreground, so the child is slapd itself.
    let child = Command::new(SLAPD)
        .arg("-h")
        .arg(format!("ldap://{addr}/"))
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
        _dir: dir,
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return slapd;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("slapd did not listen on {addr}");
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
    let slapd = start_slapd().await;
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
    let mut slapd = start_slapd().await;
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
