//! The checks, as pure functions over what mxgate serves ([`Facts`]) and what DNS says
//! ([`Lookups`]): each returns findings whose fix is spelled out, and [`records`] the records
//! to publish.

use super::lookup::{tlsa_name, Lookups};
use super::tlsa::{self, TlsaVerdict};
use super::txt::{self, Published, STS_VERSION, TLSRPT_VERSION};
use super::{Facts, Finding, NextCert, Report, ServedCert};
use crate::certs::cert::name_matches;
use crate::dns::records::{RecordLookup, TlsaRecord};
use crate::mta_sts::{txt_record, Policy};

/// The fix of a failed lookup.
const FIX_RESOLVER: &str =
    "check that the resolvers (dns.resolvers in mxgate.yaml, or --dns-resolver) answer, then run again";

/// Records quoted and joined, for messages.
fn quoted(records: &[String]) -> String {
    records
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `_mta-sts.DOMAIN. IN TXT "v=STSv1; id=…"` for the served policy.
pub(crate) fn sts_record(domain: &str, policy: &Policy) -> String {
    format!("_mta-sts.{domain}. IN TXT \"{}\"", txt_record(policy))
}

/// The TLS-RPT record to publish: reports to mxgate's intake (`ours`, the `rua=` value of
/// policies/tlsrpt.yaml), else to `tlsrpt@DOMAIN`.
pub(crate) fn tlsrpt_suggestion(domain: &str, ours: Option<&str>) -> String {
    let rua = ours.map_or_else(|| format!("mailto:tlsrpt@{domain}"), str::to_string);
    format!("_smtp._tls.{domain}. IN TXT \"v=TLSRPTv1; rua={rua}\"")
}

/// True when a published report URI is one of `ours` (mail addresses without regard to case).
fn is_our_uri(uri: &str, ours: &str) -> bool {
    ours.split(',')
        .any(|o| o == uri || (o.starts_with("mailto:") && o.eq_ignore_ascii_case(uri)))
}

/// `_25._tcp.HOST. IN TLSA 3 1 1 …` for a chain's leaf key.
fn tlsa_record(host: &str, record: &TlsaRecord) -> String {
    format!("{}. IN TLSA {record}", tlsa_name(host))
}

/// The `mx:` pattern of `policy` that `host` matches (RFC 8461 §4.1: a `*.` wildcard stands
/// for exactly one leftmost label, the same rule as certificate names).
pub(crate) fn matching_pattern<'a>(policy: &'a Policy, host: &str) -> Option<&'a str> {
    policy
        .mx
        .iter()
        .find(|p| name_matches(p, host))
        .map(String::as_str)
}

/// The published `_mta-sts` record judged against the served policy's id.
pub(crate) fn check_sts(
    domain: &str,
    policy: Option<&Policy>,
    txt: &RecordLookup<String>,
) -> Finding {
    let subject = format!("_mta-sts.{domain} TXT");
    let published = txt::published(txt, STS_VERSION, txt::parse_sts);
    let Some(policy) = policy else {
        return match published {
            Published::Failed(e) => {
                Finding::problem(subject, format!("lookup failed: {e}"), FIX_RESOLVER)
            }
            Published::Missing(_) => Finding::ok(
                subject,
                format!("not published, and mxgate serves no MTA-STS policy for {domain}: MTA-STS not used"),
            ),
            _ => Finding::problem(
                subject,
                format!("published, but mxgate serves no MTA-STS policy for {domain}: senders find no policy to fetch"),
                format!("add {domain} under domains: in policies/mta_sts.yaml, or remove the record"),
            ),
        };
    };
    let served = policy.id();
    let publish = format!("publish {}", sts_record(domain, policy));
    match published {
        Published::One(record, id) if id == served => Finding::ok(
            subject,
            format!("\"{record}\" names the served policy (id {served})"),
        ),
        Published::One(record, id) => Finding::problem(
            subject,
            format!("\"{record}\" has id {id}, not the served policy's id {served}: the policy changed but the id did not, so senders keep the policy they cached"),
            format!("{publish} in place of the old record"),
        ),
        Published::Missing(others) if others.is_empty() => Finding::problem(
            subject,
            "no record: senders never fetch the served policy",
            publish,
        ),
        Published::Missing(others) => Finding::problem(
            subject,
            format!("no v=STSv1 record among {}: senders never fetch the served policy", quoted(&others)),
            publish,
        ),
        Published::Several(records) => Finding::problem(
            subject,
            format!("{} v=STSv1 records ({}): senders ignore them all", records.len(), quoted(&records)),
            format!("{publish} as the only v=STSv1 record"),
        ),
        Published::Garbled(record, why) => Finding::problem(
            subject,
            format!("\"{record}\" is not well-formed: {why}; senders ignore it"),
            format!("{publish} in its place"),
        ),
        Published::Failed(e) => {
            Finding::problem(subject, format!("lookup failed: {e}"), FIX_RESOLVER)
        }
    }
}

/// The MX hosts (null MX left out).
pub(crate) fn mx_hosts(mx: &RecordLookup<String>) -> Vec<String> {
    match mx {
        RecordLookup::Found(hosts) => hosts.iter().filter(|h| !h.is_empty()).cloned().collect(),
        _ => Vec::new(),
    }
}

/// The MX records: present, not a null MX, and each host matching an `mx:` pattern of the
/// served policy (when there is one). `suggest` is a host name for the fix of a missing MX.
pub(crate) fn check_mx(
    domain: &str,
    policy: Option<&Policy>,
    mx: &RecordLookup<String>,
    suggest: Option<&str>,
) -> Vec<Finding> {
    let subject = format!("MX {domain}");
    let hosts = match mx {
        RecordLookup::Failed(e) => {
            return vec![Finding::problem(
                subject,
                format!("lookup failed: {e}"),
                FIX_RESOLVER,
            )]
        }
        RecordLookup::NotFound => {
            return vec![Finding::problem(
            subject,
            "no MX record: senders deliver to the domain's own address, which no mx: pattern names",
            format!("publish {domain}. IN MX 10 {}.", suggest.unwrap_or("HOST")),
        )]
        }
        RecordLookup::Found(hosts) => hosts,
    };
    if hosts.iter().any(String::is_empty) {
        return vec![Finding::problem(
            subject,
            "null MX (RFC 7505): the domain receives no mail",
            "replace it with MX records naming mxgate's public listeners",
        )];
    }
    hosts
        .iter()
        .map(|host| {
            let subject = format!("MX {host}");
            match policy {
                None => Finding::ok(subject, "published (no served MTA-STS policy to match)"),
                Some(p) => match matching_pattern(p, host) {
                    Some(pattern) => Finding::ok(
                        subject,
                        format!("matches mx: {pattern} of the served policy"),
                    ),
                    None => Finding::problem(
                        subject,
                        format!("matches no mx: pattern of the served policy ({}): senders enforcing it refuse this MX", p.mx.join(", ")),
                        format!("list {host} under domains.{domain}.mx in policies/mta_sts.yaml (then publish the policy's new id: run this check again to get the record), or point the MX at a host the policy names"),
                    ),
                },
            }
        })
        .collect()
}

/// Which listeners serve a host name: those whose `hostname` it is; else the public
/// listeners whose certificate covers it; else every public listener (`false`: a guess).
pub(crate) fn serving<'a>(host: &str, listeners: &'a [ServedCert]) -> (Vec<&'a ServedCert>, bool) {
    let named: Vec<&ServedCert> = listeners.iter().filter(|l| l.hostname == host).collect();
    if !named.is_empty() {
        return (named, true);
    }
    let public = listeners.iter().filter(|l| l.public);
    let covering: Vec<&ServedCert> = public
        .clone()
        .filter(|l| {
            l.chain
                .as_ref()
                .is_ok_and(|c| c[0].covering_name(host).is_some())
        })
        .collect();
    if !covering.is_empty() {
        return (covering, true);
    }
    (public.collect(), false)
}

/// Listeners grouped by the certificate file they serve, each group with its label
/// (`listener a`, `listeners a, b`), in order.
fn by_file<'a>(listeners: &[&'a ServedCert]) -> Vec<(String, &'a ServedCert)> {
    let mut groups: Vec<(Vec<&str>, &ServedCert)> = Vec::new();
    for l in listeners {
        match groups.iter_mut().find(|(_, g)| g.path == l.path) {
            Some((names, _)) => names.push(&l.listener),
            None => groups.push((vec![&l.listener], l)),
        }
    }
    groups
        .into_iter()
        .map(|(names, l)| {
            let s = if names.len() > 1 { "s" } else { "" };
            (format!("listener{s} {}", names.join(", ")), l)
        })
        .collect()
}

/// The fix for a certificate that does not name `host`.
fn fix_certificate(host: &str) -> String {
    format!("install a certificate naming {host} (`mxgate certs csr NAME --cn {host}`, then `mxgate certs install NAME --cert SIGNED`)")
}

/// Every MX host name is covered by the certificate of the listener serving it.
pub(crate) fn check_certificate(host: &str, listeners: &[ServedCert]) -> Vec<Finding> {
    let subject = format!("certificate for {host}");
    let named: Vec<&ServedCert> = listeners.iter().filter(|l| l.hostname == host).collect();
    if named.is_empty() {
        let public: Vec<&ServedCert> = listeners.iter().filter(|l| l.public).collect();
        if public.is_empty() {
            return vec![Finding::problem(
                subject,
                format!("no listener has host name {host}, and there is no public listener"),
                format!("set hostname: {host} on the listener that receives this MX's mail"),
            )];
        }
        for l in &public {
            if let Some(name) = l.chain.as_ref().ok().and_then(|c| c[0].covering_name(host)) {
                return vec![Finding::ok(
                    subject,
                    format!("no listener has host name {host}; {} (public listener {}) covers it ({name})", l.path.display(), l.listener),
                )];
            }
        }
        return vec![Finding::problem(
            subject,
            format!("no listener has host name {host}, and no public listener's certificate covers it: senders that verify (MTA-STS, DANE-TA) refuse this MX"),
            format!("set hostname: {host} on the public listener receiving its mail and {}", fix_certificate(host)),
        )];
    }
    by_file(&named)
        .into_iter()
        .map(|(who, l)| match &l.chain {
            Err(e) => Finding::problem(subject.clone(), format!("{who}: {e}"), fix_certificate(host)),
            Ok(chain) => match chain[0].covering_name(host) {
                Some(name) => Finding::ok(
                    subject.clone(),
                    format!("{} ({who}) covers it ({name})", l.path.display()),
                ),
                None => Finding::problem(
                    subject.clone(),
                    format!("{} ({who}) names {}, not {host}: senders that verify (MTA-STS, DANE-TA) refuse it", l.path.display(), chain[0].names()),
                    fix_certificate(host),
                ),
            },
        })
        .collect()
}

/// The TLSA records at `_25._tcp.HOST` match the key each listener serving it presents;
/// none published means no DANE, which is not a problem.
pub(crate) fn check_tlsa(
    host: &str,
    tlsa: &RecordLookup<TlsaRecord>,
    listeners: &[ServedCert],
) -> Vec<Finding> {
    let subject = format!("TLSA {}", tlsa_name(host));
    match tlsa {
        RecordLookup::NotFound => return vec![Finding::ok(subject, "no record: not using DANE")],
        RecordLookup::Failed(e) => {
            return vec![Finding::problem(
                subject,
                format!("lookup failed: {e}"),
                FIX_RESOLVER,
            )]
        }
        RecordLookup::Found(_) => {}
    }
    let (serving, _) = serving(host, listeners);
    if serving.is_empty() {
        return vec![Finding::problem(
            subject,
            "records are published, but no public listener serves this host",
            format!("set hostname: {host} on the listener receiving this MX's mail"),
        )];
    }
    by_file(&serving)
        .into_iter()
        .map(|(who, l)| {
            let chain = match &l.chain {
                Ok(c) => c,
                Err(e) => {
                    return Finding::problem(
                        subject.clone(),
                        format!("cannot compare with {who}: {e}"),
                        fix_certificate(host),
                    )
                }
            };
            match tlsa::verdict(tlsa, chain) {
                TlsaVerdict::Matches(r) => Finding::ok(
                    subject.clone(),
                    format!("{r} matches the key of {} ({who})", l.path.display()),
                ),
                TlsaVerdict::NoneMatches { records, usable } => {
                    let list: Vec<String> = records.iter().map(ToString::to_string).collect();
                    let unusable = if usable < records.len() {
                        " (usages 0 and 1 and unknown parameters are unusable for SMTP, RFC 7672)"
                    } else {
                        ""
                    };
                    Finding::problem(
                        subject.clone(),
                        format!("none of {} matches the key of {} ({who}){unusable}: DANE senders refuse to deliver", quoted(&list), l.path.display()),
                        format!("publish {}", tlsa_record(host, &tlsa::record_311(&chain[0]))),
                    )
                }
                TlsaVerdict::NotPublished => Finding::ok(subject.clone(), "no record: not using DANE"),
                TlsaVerdict::Failed(e) => Finding::problem(subject.clone(), format!("lookup failed: {e}"), FIX_RESOLVER),
            }
        })
        .collect()
}

/// A staged certificate: its key's TLSA record must be published at every MX host it covers
/// before it is served, or DANE senders refuse delivery after the switch.
pub(crate) fn check_next(next: &NextCert, hosts: &[String], lookups: &Lookups) -> Vec<Finding> {
    let subject = format!("next certificate {}", next.path.display());
    let chain = match &next.chain {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::problem(
                subject,
                format!("cannot read it: {e}"),
                "give --next-cert a PEM certificate (chain) file",
            )]
        }
    };
    let covered: Vec<&String> = hosts
        .iter()
        .filter(|h| chain[0].covering_name(h).is_some())
        .collect();
    if covered.is_empty() {
        return vec![Finding::problem(
            subject,
            format!(
                "it covers none of the MX hosts ({}): senders that verify would refuse it",
                hosts.join(", ")
            ),
            "get the next certificate for the MX host names",
        )];
    }
    let record = tlsa::record_311(&chain[0]);
    covered
        .into_iter()
        .map(|h| {
            let subject = format!("{subject} for {h}");
            match lookups.tlsa.get(h).map(|t| tlsa::verdict(t, chain)) {
                None | Some(TlsaVerdict::NotPublished) => Finding::ok(
                    subject,
                    format!("no TLSA record at {}: not using DANE, nothing to publish before the switch", tlsa_name(h)),
                ),
                Some(TlsaVerdict::Failed(e)) => Finding::problem(subject, format!("lookup failed: {e}"), FIX_RESOLVER),
                Some(TlsaVerdict::Matches(r)) => Finding::ok(
                    subject,
                    format!("{} already publishes {r} for the next key: safe to switch once its TTL has passed since publication", tlsa_name(h)),
                ),
                Some(TlsaVerdict::NoneMatches { .. }) => Finding::problem(
                    subject,
                    format!("{} has no record for the next key: once it is served, DANE senders refuse to deliver", tlsa_name(h)),
                    format!("publish {} beside the current record, wait at least its TTL (twice is safer), then install the next certificate", tlsa_record(h, &record)),
                ),
            }
        })
        .collect()
}

/// The published `_smtp._tls` record: present, well-formed and, when mxgate takes reports
/// in (`ours`, policies/tlsrpt.yaml), sending them to mxgate among others.
pub(crate) fn check_tlsrpt(
    domain: &str,
    txt: &RecordLookup<String>,
    ours: Option<&str>,
) -> Finding {
    let subject = format!("_smtp._tls.{domain} TXT");
    let publish = match ours {
        Some(_) => format!(
            "publish {} (mxgate's intake, policies/tlsrpt.yaml)",
            tlsrpt_suggestion(domain, ours)
        ),
        None => format!(
            "publish {} (any mailbox or https: URI that collects reports)",
            tlsrpt_suggestion(domain, ours)
        ),
    };
    match txt::published(txt, TLSRPT_VERSION, txt::parse_tlsrpt) {
        Published::One(record, uris) => match ours {
            Some(ours) if !uris.iter().any(|u| is_our_uri(u, ours)) => Finding::problem(
                subject,
                format!("\"{record}\" sends reports to {}, none of which is mxgate's intake ({ours}): its TLS-RPT metrics stay empty", uris.join(", ")),
                format!("{publish}, keeping other URIs if reports should go there too"),
            ),
            _ => Finding::ok(
                subject,
                format!("\"{record}\": reports go to {}", uris.join(", ")),
            ),
        },
        Published::Missing(others) if others.is_empty() => {
            Finding::problem(subject, "no record: senders send no TLS reports", publish)
        }
        Published::Missing(others) => Finding::problem(
            subject,
            format!(
                "no v=TLSRPTv1 record among {}: senders send no TLS reports",
                quoted(&others)
            ),
            publish,
        ),
        Published::Several(records) => Finding::problem(
            subject,
            format!(
                "{} v=TLSRPTv1 records ({}): senders ignore them all",
                records.len(),
                quoted(&records)
            ),
            format!("keep one: {publish}"),
        ),
        Published::Garbled(record, why) => Finding::problem(
            subject,
            format!("\"{record}\" is not well-formed: {why}; senders ignore it"),
            publish,
        ),
        Published::Failed(e) => {
            Finding::problem(subject, format!("lookup failed: {e}"), FIX_RESOLVER)
        }
    }
}

/// The records to publish: the MTA-STS TXT record of the served policy, the TLS-RPT record
/// (the published one when well-formed), and `3 1 1` TLSA records for every MX host and
/// public listener host name mxgate serves, with those of the staged certificates.
pub(crate) fn records(facts: &Facts, lookups: &Lookups) -> Vec<String> {
    let d = &facts.domain;
    let mut out = Vec::new();
    if let Some(p) = &facts.policy {
        out.push(sts_record(d, p));
    }
    let ours = facts.tlsrpt_rua.as_deref();
    match txt::published(&lookups.tlsrpt, TLSRPT_VERSION, txt::parse_tlsrpt) {
        Published::One(record, uris)
            if ours.is_none_or(|o| uris.iter().any(|u| is_our_uri(u, o))) =>
        {
            out.push(format!("_smtp._tls.{d}. IN TXT \"{record}\""))
        }
        _ => out.push(tlsrpt_suggestion(d, ours)),
    }
    let mut hosts = mx_hosts(&lookups.mx);
    for h in super::facts::public_hosts(&facts.listeners) {
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    for host in &hosts {
        let (serving, known) = serving(host, &facts.listeners);
        let served = serving
            .iter()
            .filter(|_| known)
            .filter_map(|l| l.chain.as_ref().ok());
        let next = facts
            .next
            .iter()
            .filter_map(|n| n.chain.as_ref().ok())
            .filter(|c| c[0].covering_name(host).is_some());
        for chain in served.chain(next) {
            let line = tlsa_record(host, &tlsa::record_311(&chain[0]));
            if !out.contains(&line) {
                out.push(line);
            }
        }
    }
    out
}

/// Every check of a domain, in order, with the records to publish.
pub(crate) fn run(facts: &Facts, lookups: &Lookups) -> Report {
    let d = &facts.domain;
    let policy = facts.policy.as_ref();
    let public = super::facts::public_hosts(&facts.listeners);
    let mut findings = vec![check_sts(d, policy, &lookups.sts)];
    findings.extend(super::webpki::check_policy_host(
        d,
        policy,
        facts.policy_cert.as_ref(),
    ));
    findings.extend(check_mx(
        d,
        policy,
        &lookups.mx,
        public.first().map(String::as_str),
    ));
    let hosts = mx_hosts(&lookups.mx);
    for host in &hosts {
        findings.extend(check_certificate(host, &facts.listeners));
        findings.extend(super::webpki::check_mx(host, &facts.listeners, policy));
        let tlsa = lookups
            .tlsa
            .get(host)
            .cloned()
            .unwrap_or(RecordLookup::NotFound);
        findings.extend(check_tlsa(host, &tlsa, &facts.listeners));
    }
    if !hosts.is_empty() {
        for next in &facts.next {
            findings.extend(check_next(next, &hosts, lookups));
        }
    }
    findings.push(check_tlsrpt(
        d,
        &lookups.tlsrpt,
        facts.tlsrpt_rua.as_deref(),
    ));
    Report {
        domain: d.clone(),
        findings,
        records: records(facts, lookups),
    }
}

/// `mxgate_mta_sts_policy_valid`: the published id is the served policy's and every MX host
/// matches an `mx:` pattern; `None` when a lookup failed (nothing known).
pub(crate) fn policy_valid(
    policy: &Policy,
    sts: &RecordLookup<String>,
    mx: &RecordLookup<String>,
) -> Option<bool> {
    if matches!(sts, RecordLookup::Failed(_)) || matches!(mx, RecordLookup::Failed(_)) {
        return None;
    }
    let current = matches!(
        txt::published(sts, STS_VERSION, txt::parse_sts),
        Published::One(_, id) if id == policy.id()
    );
    let hosts = match mx {
        RecordLookup::Found(h) => h,
        _ => return Some(false),
    };
    let mx_ok = hosts
        .iter()
        .all(|h| !h.is_empty() && matching_pattern(policy, h).is_some());
    Some(current && mx_ok)
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
