//! The two TXT records a domain publishes for its senders, parsed as the senders do:
//! `_mta-sts` (RFC 8461 §3.1, `v=STSv1; id=…`) and `_smtp._tls` (RFC 8460 §3,
//! `v=TLSRPTv1; rua=…`).

use crate::dns::records::RecordLookup;

/// The version tag of an MTA-STS TXT record.
pub(crate) const STS_VERSION: &str = "v=STSv1";
/// The version tag of a TLS-RPT TXT record.
pub(crate) const TLSRPT_VERSION: &str = "v=TLSRPTv1";

/// What a domain's TXT records of one kind say, before comparing with what is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Published<T> {
    /// Exactly one record of the kind, well-formed: the record and its content.
    One(String, T),
    /// No record of the kind (other TXT records, if any, listed).
    Missing(Vec<String>),
    /// More than one: senders ignore them all.
    Several(Vec<String>),
    /// One record, not well-formed: the record and why.
    Garbled(String, String),
    /// The lookup failed.
    Failed(String),
}

/// Sorts the TXT records at a name into the one record of a kind. RFC 8461 and RFC 8460
/// discard records not beginning with the version tag; one that begins with the tag but
/// is not followed by `;` is kept here, so that a garbled record is reported as such.
pub(crate) fn published<T>(
    txt: &RecordLookup<String>,
    version: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Published<T> {
    let records = match txt {
        RecordLookup::Found(r) => r,
        RecordLookup::NotFound => return Published::Missing(Vec::new()),
        RecordLookup::Failed(e) => return Published::Failed(e.clone()),
    };
    let ours: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with(version))
        .collect();
    match ours.as_slice() {
        [] => Published::Missing(records.clone()),
        [one] => match parse(one) {
            Ok(v) => Published::One((*one).clone(), v),
            Err(why) => Published::Garbled((*one).clone(), why),
        },
        several => Published::Several(several.iter().map(|s| (*s).clone()).collect()),
    }
}

/// Splits `v=TAG; a=b; c=d;` into its fields after the version; an empty last field (a
/// trailing `;`) is allowed. `*WSP ";" *WSP` separates fields.
fn fields<'a>(record: &'a str, version: &str) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut parts = record.split(';').map(|p| p.trim_matches([' ', '\t']));
    if parts.next() != Some(version) {
        return Err(format!("it must begin with \"{version};\""));
    }
    let parts: Vec<&str> = parts.collect();
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() && i + 1 == parts.len() {
            break;
        }
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => out.push((k, v)),
            _ => return Err(format!("field {p:?} is not NAME=VALUE")),
        }
    }
    Ok(out)
}

/// The `id` of an `_mta-sts` record (RFC 8461 §3.1): 1 to 32 letters and digits, once.
pub(crate) fn parse_sts(record: &str) -> Result<String, String> {
    let fields = fields(record.trim(), STS_VERSION)?;
    let ids: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| *k == "id")
        .map(|(_, v)| *v)
        .collect();
    match ids.as_slice() {
        [] => Err("it has no id=".into()),
        [id] if id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Ok(id.to_string())
        }
        [id] => Err(format!("id {id:?} is not 1 to 32 letters and digits")),
        _ => Err("it has more than one id=".into()),
    }
}

/// The report URIs of an `_smtp._tls` record (RFC 8460 §3): `rua=` once, with one or more
/// comma-separated `mailto:` or `https:` URIs.
pub(crate) fn parse_tlsrpt(record: &str) -> Result<Vec<String>, String> {
    let fields = fields(record.trim(), TLSRPT_VERSION)?;
    let ruas: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| *k == "rua")
        .map(|(_, v)| *v)
        .collect();
    let rua = match ruas.as_slice() {
        [] => return Err("it has no rua=".into()),
        [one] => *one,
        _ => return Err("it has more than one rua=".into()),
    };
    let mut uris = Vec::new();
    for uri in rua.split(',').map(|u| u.trim_matches([' ', '\t'])) {
        let ok = match uri.split_once(':') {
            Some(("mailto", rest)) => rest.contains('@') && !rest.contains(' '),
            Some(("https", rest)) => rest.starts_with("//") && rest.len() > 2,
            _ => false,
        };
        if !ok {
            return Err(format!("{uri:?} is not a mailto: or https: URI"));
        }
        uris.push(uri.to_string());
    }
    Ok(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_records_as_rfc_8461_reads_them() {
        assert_eq!(
            parse_sts("v=STSv1; id=20160831085700Z;"),
            Ok("20160831085700Z".into())
        );
        assert_eq!(parse_sts("v=STSv1;id=abc"), Ok("abc".into()));
        assert_eq!(parse_sts("v=STSv1 ;\tid=abc ; ext=1"), Ok("abc".into()));
        for (bad, why) in [
            ("v=STSv1", "no id="),
            ("v=STSv1 id=abc", "must begin with"),
            ("v=STSv2; id=abc", "must begin with"),
            ("v=STSv1; id=", "is not NAME=VALUE"),
            ("v=STSv1; id=a-b", "letters and digits"),
            ("v=STSv1; id=abc; id=def", "more than one"),
            ("v=STSv1; garbage", "is not NAME=VALUE"),
            ("v=STSv1; id=abc;;", "is not NAME=VALUE"),
        ] {
            let e = parse_sts(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(parse_sts(&format!("v=STSv1; id={}", "a".repeat(33))).is_err());
    }

    #[test]
    fn tlsrpt_records_as_rfc_8460_reads_them() {
        assert_eq!(
            parse_tlsrpt("v=TLSRPTv1; rua=mailto:tlsrpt@example.com"),
            Ok(vec!["mailto:tlsrpt@example.com".to_string()])
        );
        assert_eq!(
            parse_tlsrpt("v=TLSRPTv1;rua=mailto:a@example.com, https://r.example.com/v1;"),
            Ok(vec![
                "mailto:a@example.com".to_string(),
                "https://r.example.com/v1".to_string()
            ])
        );
        for (bad, why) in [
            ("v=TLSRPTv1;", "no rua="),
            ("v=TLSRPTv1; rua=tlsrpt@example.com", "not a mailto:"),
            ("v=TLSRPTv1; rua=http://r.example.com", "not a mailto:"),
            ("v=TLSRPTv1 rua=mailto:a@example.com", "must begin with"),
        ] {
            let e = parse_tlsrpt(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn only_records_of_the_kind_count() {
        let found = |v: &[&str]| RecordLookup::Found(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            published(&found(&["spf1", "v=STSv1; id=1"]), STS_VERSION, parse_sts),
            Published::One("v=STSv1; id=1".into(), "1".into())
        );
        assert_eq!(
            published(&found(&["v=spf1 -all"]), STS_VERSION, parse_sts),
            Published::Missing(vec!["v=spf1 -all".into()])
        );
        assert!(matches!(
            published(&found(&["v=STSv1; id=1", "v=STSv1; id=2"]), STS_VERSION, parse_sts),
            Published::Several(v) if v.len() == 2
        ));
        assert!(matches!(
            published(&found(&["v=STSv1 id=1"]), STS_VERSION, parse_sts),
            Published::Garbled(_, _)
        ));
        assert_eq!(
            published(&RecordLookup::NotFound, STS_VERSION, parse_sts),
            Published::Missing(vec![])
        );
        assert_eq!(
            published(
                &RecordLookup::Failed("timeout".into()),
                STS_VERSION,
                parse_sts
            ),
            Published::Failed("timeout".into())
        );
    }
}
