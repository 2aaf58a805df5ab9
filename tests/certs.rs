//! `mxgate certs ...` judged by OpenSSL (`/usr/bin/openssl`): CSRs it verifies, chains it
//! verifies after install, PKCS#12 files both ways, the TLSA digest it computes; and the
//! refusals (mismatched key, expired certificate, overwriting) with one-line reasons.
//!
//! Commands are written as one string, split on spaces (`'...'` keeps spaces), and run in
//! the test's temporary directory: `ca/` is the OpenSSL test PKI, `certs/` the certs dir,
//! `config/` a copy of the repository's configuration with `certificate: mx` on `inbound`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

const OPENSSL: &str = "/usr/bin/openssl";

/// Splits a command line on spaces; `'a b'` is one word.
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in cmd.chars() {
        match ch {
            '\'' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

struct Env {
    tmp: TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = tmp.path().join("config");
        copy_dir(&repo.join("listeners"), &config.join("listeners"));
        copy_dir(&repo.join("policies"), &config.join("policies"));
        std::fs::copy(repo.join("mxgate.yaml"), config.join("mxgate.yaml")).unwrap();
        let inbound = config.join("listeners/inbound.yaml");
        let yaml = std::fs::read_to_string(&inbound).unwrap();
        assert!(
            yaml.contains("\ncertificate: demo\n"),
            "inbound.yaml changed"
        );
        let yaml = yaml.replace("\ncertificate: demo\n", "\ncertificate: mx\n");
        std::fs::write(&inbound, yaml).unwrap();
        std::fs::create_dir_all(tmp.path().join("ca")).unwrap();
        Env { tmp }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap()
    }

    /// `mxgate certs CMD --config-dir config --certs-dir certs`.
    fn mx(&self, cmd: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mxgate"))
            .arg("certs")
            .args(words(cmd))
            .args(["--config-dir", "config", "--certs-dir", "certs"])
            .env_remove("MXGATE_CONFIG_DIR")
            .env_remove("MXGATE_CERTS_DIR")
            .current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns (stdout, stderr).
    fn ok(&self, cmd: &str) -> (String, String) {
        let o = self.mx(cmd);
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert!(o.status.success(), "mxgate certs {cmd}:\n{out}\n{err}");
        (out, err)
    }

    /// Runs and expects a refusal: exit 1 and exactly one line on stderr.
    fn refused(&self, cmd: &str) -> String {
        let o = self.mx(cmd);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "mxgate certs {cmd}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        assert!(err.starts_with("mxgate certs: "), "{err}");
        err
    }

    /// Runs OpenSSL, expecting success; returns stdout + stderr.
    fn openssl(&self, cmd: &str) -> String {
        let o = Command::new(OPENSSL)
            .args(words(cmd))
            .current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let all = text(&o.stdout) + &text(&o.stderr);
        assert!(o.status.success(), "openssl {cmd}:\n{all}");
        all
    }

    fn sh(&self, script: &str) -> String {
        let o = Command::new("sh")
            .args(["-c", script])
            .current_dir(self.tmp.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{script}: {}", text(&o.stderr));
        text(&o.stdout)
    }

    /// Subjects of the certificates in a PEM file, in order, as OpenSSL reads them.
    fn subjects(&self, file: &str) -> Vec<String> {
        self.sh(&format!(
            "{OPENSSL} crl2pkcs7 -nocrl -certfile {file} | {OPENSSL} pkcs7 -print_certs -noout"
        ))
        .lines()
        .filter(|l| l.starts_with("subject="))
        .map(str::to_string)
        .collect()
    }

    /// The test PKI: ca/root.pem → ca/int.pem, EC keys.
    fn make_ca(&self) {
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        self.openssl(&format!(
            "req -x509 {ec} -keyout ca/root.key -out ca/root.pem -subj '/CN=Test Root' -days 60 \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
        self.openssl(&format!(
            "req -new {ec} -keyout ca/int.key -out ca/int.csr -subj '/CN=Test Intermediate'"
        ));
        let ext = "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\n";
        std::fs::write(self.path("ca/ca.ext"), ext).unwrap();
        self.openssl(
            "x509 -req -in ca/int.csr -CA ca/root.pem -CAkey ca/root.key -CAcreateserial \
             -days 60 -extfile ca/ca.ext -out ca/int.pem",
        );
    }

    /// Signs `csr` with the intermediate (keeping the request's SANs) into `out`.
    fn sign(&self, csr: &str, out: &str) {
        self.openssl(&format!(
            "x509 -req -in {csr} -CA ca/int.pem -CAkey ca/int.key -CAcreateserial -days 30 \
             -copy_extensions copy -out {out}"
        ));
    }

    fn cat(&self, parts: &[&str], out: &str) {
        let data: Vec<u8> = parts.iter().flat_map(|p| self.read(p)).collect();
        std::fs::write(self.path(out), data).unwrap();
    }

    /// csr → signed by the intermediate → installed with a chain file holding the root and
    /// the intermediate twice, in the wrong order. Returns install's stderr.
    fn install_mx(&self) -> String {
        self.make_ca();
        self.ok("csr mx --cn mx.example.com --san mail.example.com");
        self.sign("certs/mx.csr", "ca/mx-signed.pem");
        self.cat(&["ca/root.pem", "ca/int.pem", "ca/int.pem"], "ca/chain.pem");
        self.ok("install mx --cert ca/mx-signed.pem --chain ca/chain.pem")
            .1
    }

    fn load_pair(&self, name: &str) {
        let (crt, key) = (
            self.path(&format!("certs/{name}.crt")),
            self.path(&format!("certs/{name}.key")),
        );
        mxgate::net::tls::load_certified_key(&crt, &key).unwrap();
        assert_eq!(mode(&key), 0o600);
    }
}

#[test]
fn csr_is_accepted_by_openssl() {
    let env = Env::new();
    let (out, _) =
        env.ok("csr mx --cn mx.example.com --san mail.example.com --org Example --country DE");
    assert!(out.contains("mxgate certs install mx"), "{out}");
    let v = env.openssl("req -verify -in certs/mx.csr -noout");
    assert!(v.contains("verify OK"), "{v}");
    let t = env.openssl("req -in certs/mx.csr -noout -text");
    assert!(
        t.contains("C = DE, O = Example, CN = mx.example.com"),
        "{t}"
    );
    assert!(
        t.contains("DNS:mx.example.com, DNS:mail.example.com"),
        "{t}"
    );
    assert_eq!(mode(&env.path("certs/mx.key")), 0o600);
    assert!(!env.path("certs/mx.crt").exists());

    // RSA for CAs that want it; a second request for the same key needs --reuse-key.
    env.ok("csr rsa --cn rsa.example.com --key rsa-2048");
    env.openssl("req -verify -in certs/rsa.csr -noout");
    let t = env.openssl("req -in certs/rsa.csr -noout -text");
    assert!(t.contains("Public-Key: (2048 bit)"), "{t}");
    let key_before = env.read("certs/rsa.key");
    let err = env.refused("csr rsa --cn rsa.example.com");
    assert!(err.contains("--reuse-key"), "{err}");
    env.ok("csr rsa --cn rsa.example.com --reuse-key --force");
    env.openssl("req -verify -in certs/rsa.csr -noout");
    assert_eq!(env.read("certs/rsa.key"), key_before);
}

#[test]
fn installed_chain_is_ordered_deduplicated_and_verified_by_openssl() {
    let env = Env::new();
    let err = env.install_mx();
    assert!(
        err.contains("warning: duplicate intermediate dropped: CN=Test Intermediate"),
        "{err}"
    );
    assert!(err.contains("chain reordered leaf→root"), "{err}");
    let v = env.openssl("verify -CAfile ca/root.pem -untrusted certs/mx.crt certs/mx.crt");
    assert!(v.contains("certs/mx.crt: OK"), "{v}");
    assert_eq!(
        env.subjects("certs/mx.crt"),
        [
            "subject=CN = mx.example.com",
            "subject=CN = Test Intermediate",
            "subject=CN = Test Root"
        ]
    );
    env.load_pair("mx");
    let (out, _) = env.ok("inspect mx");
    assert!(out.contains("ok: leaf→root, no duplicates"), "{out}");
    assert!(out.contains("matches the certificate"), "{out}");
    let err = env.refused("install mx --cert ca/mx-signed.pem --chain ca/int.pem");
    assert!(err.contains("already exists: use --force"), "{err}");
    env.ok("install mx --cert ca/mx-signed.pem --chain ca/int.pem --force");
}

#[test]
fn install_refuses_a_certificate_for_another_key() {
    let env = Env::new();
    env.make_ca();
    env.ok("csr mx --cn mx.example.com");
    // Same name, another key: what comes back when the wrong CSR went to the CA.
    env.openssl(
        "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca/other.key \
         -out ca/other.csr -subj /CN=mx.example.com",
    );
    env.sign("ca/other.csr", "ca/other.pem");
    let err = env.refused("install mx --cert ca/other.pem --chain ca/int.pem");
    assert!(err.contains("does not match the private key"), "{err}");
    assert!(!env.path("certs/mx.crt").exists());
}

#[test]
fn install_refuses_an_expired_certificate() {
    let env = Env::new();
    env.make_ca();
    env.ok("csr mx --cn mx.example.com");
    // `openssl ca` back-dates: valid 2020-01-01 .. 2021-01-01.
    std::fs::write(env.path("ca/index.txt"), "").unwrap();
    std::fs::write(env.path("ca/serial"), "1000\n").unwrap();
    let cnf = "[ca]\ndefault_ca = t\n[t]\ndatabase = ca/index.txt\nnew_certs_dir = ca\n\
               serial = ca/serial\ndefault_md = sha256\npolicy = any\ncopy_extensions = copy\n\
               unique_subject = no\n[any]\ncommonName = supplied\n";
    std::fs::write(env.path("ca/ca.cnf"), cnf).unwrap();
    env.openssl(
        "ca -batch -config ca/ca.cnf -cert ca/int.pem -keyfile ca/int.key -in certs/mx.csr \
         -out ca/old.pem -startdate 20200101000000Z -enddate 20210101000000Z -notext",
    );
    let err = env.refused("install mx --cert ca/old.pem --chain ca/int.pem");
    assert!(err.contains("expired on 2021-01-01"), "{err}");
    assert!(!env.path("certs/mx.crt").exists());
}

#[test]
fn install_warns_about_a_missing_intermediate() {
    let env = Env::new();
    env.make_ca();
    env.ok("csr mx --cn mx.example.com");
    env.sign("certs/mx.csr", "ca/mx-signed.pem");
    let (_, err) = env.ok("install mx --cert ca/mx-signed.pem");
    let want =
        "warning: missing intermediate: CN=mx.example.com was issued by CN=Test Intermediate";
    assert!(err.contains(want), "{err}");
    let (out, _) = env.ok("inspect mx");
    assert!(out.contains("missing intermediate"), "{out}");
}

#[test]
fn exported_p12_is_read_by_openssl() {
    let env = Env::new();
    env.install_mx();
    std::fs::write(env.path("pw"), "s3cret pass\n").unwrap();
    env.ok("export-p12 mx mx.p12 --password-file pw");
    assert_eq!(mode(&env.path("mx.p12")), 0o600);
    // OpenSSL 3 reads the default export (AES-256-CBC, PBKDF2) without -legacy.
    let info = env.openssl("pkcs12 -info -in mx.p12 -noout -passin file:pw");
    assert!(info.contains("AES-256-CBC"), "{info}");
    env.openssl("pkcs12 -in mx.p12 -nokeys -passin file:pw -out p12-certs.pem");
    assert_eq!(env.subjects("p12-certs.pem").len(), 3);
    env.openssl("pkcs12 -in mx.p12 -nocerts -nodes -passin file:pw -out p12-key.pem");
    let from_p12 = env.openssl("pkey -in p12-key.pem -pubout");
    assert_eq!(from_p12, env.openssl("pkey -in certs/mx.key -pubout"));

    // --legacy (3DES, SHA-1 MAC) is readable too, without OpenSSL's legacy provider.
    env.ok("export-p12 mx legacy.p12 --legacy --password-file pw");
    let info = env.openssl("pkcs12 -info -in legacy.p12 -noout -passin file:pw");
    assert!(info.contains("pbeWithSHA1And3-KeyTripleDES-CBC"), "{info}");

    let err = env.refused("export-p12 mx mx.p12 --password-file pw");
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn p12_made_by_openssl_is_imported() {
    let env = Env::new();
    env.make_ca();
    env.openssl(
        "req -new -newkey rsa:2048 -nodes -keyout ca/leaf.key -out ca/leaf.csr \
         -subj /CN=mx.example.com -addext subjectAltName=DNS:mx.example.com",
    );
    env.sign("ca/leaf.csr", "ca/leaf.pem");
    std::fs::write(env.path("pw"), "pw\n").unwrap();
    // OpenSSL 3's default (AES-256-CBC) and -legacy (RC2-40 certificates, 3DES key).
    for (name, legacy) in [("imported", ""), ("imported-legacy", "-legacy")] {
        env.openssl(&format!(
            "pkcs12 -export {legacy} -in ca/leaf.pem -inkey ca/leaf.key -certfile ca/int.pem \
             -out ca/{name}.p12 -passout file:pw"
        ));
        let (out, _) = env.ok(&format!(
            "import-p12 {name} ca/{name}.p12 --password-file pw"
        ));
        assert!(out.contains("2 certificates"), "{out}");
        env.load_pair(name);
        assert_eq!(
            env.subjects(&format!("certs/{name}.crt")),
            [
                "subject=CN = mx.example.com",
                "subject=CN = Test Intermediate"
            ]
        );
    }
    std::fs::write(env.path("bad"), "wrong\n").unwrap();
    let err = env.refused("import-p12 x ca/imported.p12 --password-file bad");
    assert!(err.contains("wrong password"), "{err}");
    assert!(!env.path("certs/x.key").exists());
}

#[test]
fn inspect_shows_names_days_users_and_the_tlsa_record() {
    let env = Env::new();
    env.install_mx();
    let (out, _) = env.ok("inspect mx");
    let digest = env.sh(&format!(
        "{OPENSSL} x509 -in certs/mx.crt -pubkey -noout | {OPENSSL} pkey -pubin -outform DER | sha256sum"
    ));
    let digest = digest.split_whitespace().next().unwrap();
    assert_eq!(digest.len(), 64);
    for want in [
        "SANs          DNS:mx.example.com, DNS:mail.example.com",
        "Issuer        CN=Test Intermediate",
        "days left)",
        "Key type      ECDSA P-256",
        "Used by       listener inbound (mx.example.com)",
        "listener inbound host name mx.example.com is covered by DNS:mx.example.com",
        &format!("TLSA          3 1 1 {digest}"),
        &format!("_25._tcp.mx.example.com. IN TLSA 3 1 1 {digest}"),
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // A file works too; a certificate for another host name is flagged.
    let (out, _) = env.ok("inspect ca/int.pem");
    assert!(out.contains("Subject       CN=Test Intermediate"), "{out}");
    env.ok("new-self-signed mx --cn other.example.com --force");
    let (out, _) = env.ok("inspect mx");
    assert!(
        out.contains("host name mx.example.com is NOT covered"),
        "{out}"
    );
    assert!(out.contains("note: self-signed"), "{out}");
}

#[test]
fn new_self_signed_never_overwrites_without_force() {
    let env = Env::new();
    let (out, _) = env.ok("new-self-signed mx --cn mx.example.com --days 10 --key rsa-2048");
    assert!(out.contains("RSA 2048"), "{out}");
    let t = env.openssl("x509 -in certs/mx.crt -noout -text");
    assert!(
        t.contains("Public-Key: (2048 bit)") && t.contains("DNS:mx.example.com"),
        "{t}"
    );
    env.openssl("verify -CAfile certs/mx.crt certs/mx.crt");
    env.load_pair("mx");
    let before = (env.read("certs/mx.crt"), env.read("certs/mx.key"));
    let err = env.refused("new-self-signed mx --cn mx.example.com");
    assert!(err.contains("already exists: use --force"), "{err}");
    assert_eq!(before, (env.read("certs/mx.crt"), env.read("certs/mx.key")));
    env.ok("new-self-signed mx --cn mx.example.com --force --key ecdsa-p384");
    assert_ne!(env.read("certs/mx.key"), before.1);
    env.load_pair("mx");
    let err = env.refused("new-self-signed bad/name --cn mx.example.com");
    assert!(err.contains("not a certificate name"), "{err}");
}

#[test]
fn list_shows_users_and_survives_a_broken_configuration() {
    let env = Env::new();
    env.ok("new-self-signed mx --cn mx.example.com");
    env.ok("csr next --cn mx.example.com");
    let (out, _) = env.ok("list");
    let row = out
        .lines()
        .find(|l| l.starts_with("mx "))
        .unwrap_or_default();
    assert!(
        row.contains("DNS:mx.example.com") && row.contains("listener inbound"),
        "{out}"
    );
    assert!(out.contains("next: request"), "{out}");
    assert!(out.contains("listener relay uses"), "{out}");
    std::fs::write(env.path("config/listeners/inbound.yaml"), "name: [broken\n").unwrap();
    let (out, err) = env.ok("list");
    assert!(out.lines().any(|l| l.starts_with("mx ")), "{out}");
    assert!(err.contains("not loaded"), "{err}");
}

#[test]
fn trust_20_a_leaf_signed_directly_by_a_supplied_rsa_pss_root_misses_no_intermediate() {
    let env = Env::new();
    // OpenSSL's RSA-PSS root (its default salt length); the leaf is signed by it directly.
    env.openssl(
        "req -x509 -newkey rsa-pss -pkeyopt rsa_keygen_bits:2048 -nodes -keyout ca/root.key \
         -out ca/root.pem -subj '/CN=Test PSS Root' -days 60",
    );
    env.ok("csr mx --cn mx.example.com");
    env.openssl(
        "x509 -req -in certs/mx.csr -CA ca/root.pem -CAkey ca/root.key -CAcreateserial \
         -days 30 -copy_extensions copy -out ca/mx-signed.pem",
    );
    let (out, err) = env.ok("install mx --cert ca/mx-signed.pem --chain ca/root.pem");
    assert!(!err.contains("missing intermediate"), "{err}");
    assert!(!err.contains("not part of this chain"), "{err}");
    assert!(out.contains("(2 certificates, leaf→root)"), "{out}");
    let (out, _) = env.ok("inspect mx");
    assert!(
        out.contains("Chain check   ok: leaf→root, no duplicates, ends at a self-signed root"),
        "{out}"
    );
}

#[test]
fn trust_20_a_leaf_signed_by_the_configured_ca_root_misses_no_intermediate() {
    let env = Env::new();
    env.make_ca();
    // The operator's own root, supplied to mxgate as the CA of a listener.
    let inbound = env.path("config/listeners/inbound.yaml");
    let yaml = std::fs::read_to_string(&inbound).unwrap();
    std::fs::write(
        &inbound,
        format!("{yaml}\nclient_ca_file: ../ca/root.pem\n"),
    )
    .unwrap();
    env.ok("csr mx --cn mx.example.com");
    env.openssl(
        "x509 -req -in certs/mx.csr -CA ca/root.pem -CAkey ca/root.key -CAcreateserial \
         -days 30 -copy_extensions copy -out ca/mx-signed.pem",
    );
    let (_, err) = env.ok("install mx --cert ca/mx-signed.pem");
    assert!(!err.contains("missing intermediate"), "{err}");
    let note = "note: the chain ends at CN=mx.example.com, issued by the root CN=Test Root of \
                ../ca/root.pem, which is not included: clients must trust that root";
    assert!(err.contains(note), "{err}");
    let (out, _) = env.ok("inspect mx");
    assert!(!out.contains("missing intermediate"), "{out}");
    assert!(out.contains(note), "{out}");
}
