//! The certificates senders applying an MTA-STS policy validate against public CAs, as a
//! browser does: the policy host's (RFC 8461 §3.3) and each MX's (§4.2). A self-signed one
//! fails them (DANE-EE `3 1 1` alone would accept it), so under `testing` or `enforce` it is a
//! problem `dns check` must not call ok.

use std::path::{Path, PathBuf};

use super::checks::serving;
use super::{Finding, ServedCert};
use crate::certs::cert::Cert;
use crate::mta_sts::{Mode, MtaStsSettings, Policy};

/// The MTA-STS endpoint's certificate file and its chain (or why it could not be read).
pub(crate) type PolicyCert = (PathBuf, Result<Vec<Cert>, String>);

/// The leaf signed itself: no CA did (names alone can coincide, the signature decides).
fn self_signed(chain: &[Cert]) -> bool {
    chain.first().is_some_and(|leaf| leaf.issued_by(leaf))
}

/// The policy in force, when senders validate certificates for it.
fn applied(policy: Option<&Policy>) -> Option<&Policy> {
    policy.filter(|p| p.mode != Mode::None)
}

/// What a self-signed certificate costs under `policy`.
fn consequence(policy: &Policy) -> &'static str {
    match policy.mode {
        Mode::Enforce => "they do not deliver",
        _ => "they report failures (TLS-RPT) and deliver without MTA-STS",
    }
}

/// The fix: a certificate from a public CA for `host`.
fn fix_public_ca(host: &str) -> String {
    format!("install a certificate from a public CA for {host}: `mxgate certs csr NAME --cn {host}`, have the CA sign the request, then `mxgate certs install NAME --cert SIGNED.pem`")
}

/// Each certificate served for MX `host` is CA-signed when a policy is applied.
pub(crate) fn check_mx(
    host: &str,
    listeners: &[ServedCert],
    policy: Option<&Policy>,
) -> Vec<Finding> {
    let Some(policy) = applied(policy) else {
        return Vec::new();
    };
    let (serving, _) = serving(host, listeners);
    serving
        .iter()
        .filter(|l| l.chain.as_ref().is_ok_and(|c| self_signed(c)))
        .map(|l| {
            Finding::problem(
                format!("certificate for {host}"),
                format!(
                    "{} (listener {}) is self-signed: senders applying the MTA-STS policy (mode {}) check it against public CAs and fail, so {}",
                    l.path.display(),
                    l.listener,
                    policy.mode,
                    consequence(policy)
                ),
                fix_public_ca(host),
            )
        })
        .collect()
}

/// The MTA-STS endpoint's certificate covers `mta-sts.DOMAIN` and is CA-signed.
pub(crate) fn check_policy_host(
    domain: &str,
    policy: Option<&Policy>,
    cert: Option<&PolicyCert>,
) -> Vec<Finding> {
    let (Some(_), Some((path, chain))) = (applied(policy), cert) else {
        return Vec::new();
    };
    let host = MtaStsSettings::policy_host(domain);
    let subject = format!("policy host {host}");
    let finding = match chain {
        Err(e) => Finding::problem(subject, e.clone(), fix_public_ca(&host)),
        Ok(chain) => match chain[0].covering_name(&host) {
            None => Finding::problem(
                subject,
                format!(
                    "{} names {}, not {host}: senders cannot fetch the policy, so they apply none",
                    path.display(),
                    chain[0].names()
                ),
                fix_public_ca(&host),
            ),
            Some(_) if self_signed(chain) => Finding::problem(
                subject,
                format!(
                    "{} is self-signed: senders fetch the policy only over HTTPS they can verify against public CAs, so they apply none",
                    path.display()
                ),
                fix_public_ca(&host),
            ),
            Some(name) => Finding::ok(subject, format!("{} covers it ({name})", path.display())),
        },
    };
    vec![finding]
}

/// The endpoint's certificate file of `settings` (the generated demo one without
/// `certificate:`), read.
pub(crate) fn policy_cert(settings: &MtaStsSettings, certs_dir: &Path) -> PolicyCert {
    let path = match &settings.certificate {
        Some((c, _)) => c.clone(),
        None => {
            let demo = certs_dir.join("mta-sts-demo.crt");
            let why = "no `certificate:` in policies/mta_sts.yaml: the endpoint serves a generated self-signed demo certificate, which senders cannot verify, so they apply no policy";
            return (demo, Err(why.to_string()));
        }
    };
    let chain = match crate::certs::cert::read_certs(&path) {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(format!("{}: no certificate in the file", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    };
    (path, chain)
}
