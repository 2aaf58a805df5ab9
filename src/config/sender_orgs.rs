//! `metrics.sender_orgs` in `mxgate.yaml`: the administrator's additions to the shipped
//! suffix table of the `sender_org` label ([`crate::metrics::sender_org`]).
//!
//! ```yaml
//! metrics:
//!   sender_orgs:
//!     partner: [mail.partner.example]   # a new organisation
//!     google: [smtp-relay.gmail.com]    # one more suffix for a shipped one
//!     other: [sendgrid.net]             # a shipped suffix taken out
//! ```
//! Organisation names become label values, so they are checked (lower case, `_`, digits)
//! and capped at [`MAX_CONFIGURED_ORGS`] to keep the number of series bounded.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::defs::SenderOrgsDef;
use super::error::{index, FileErrors};
use crate::metrics::sender_org::{
    is_org_name, normalize_suffix, SenderOrgs, MAX_CONFIGURED_ORGS, MAX_ORG_NAME,
};

/// Key path of the section.
const PATH: &str = "metrics.sender_orgs";

/// The shipped table with `def` applied; every problem is recorded in `e`.
pub(super) fn build_sender_orgs(
    def: Option<&SenderOrgsDef>,
    e: &mut FileErrors<'_>,
) -> Arc<SenderOrgs> {
    let mut table = SenderOrgs::default();
    let Some(def) = def else {
        return Arc::new(table);
    };
    if def.value.0.len() > MAX_CONFIGURED_ORGS {
        e.on(
            def,
            PATH,
            format!(
                "{} organisations configured, at most {MAX_CONFIGURED_ORGS}: each is a label value \
                 of the inbound metrics; map the rest to a shared name or leave them as `other`",
                def.value.0.len()
            ),
        );
    }
    // Suffix -> (organisation, where) of this file, to name both places of a conflict.
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, suffixes) in &def.value.0 {
        let org = key.value.trim();
        let path = format!("{PATH}.{org}");
        if !is_org_name(org) {
            e.on(
                key,
                &path,
                format!(
                    "{org:?} is not a usable organisation name: lower-case letters, digits and `_`, \
                     starting with a letter, at most {MAX_ORG_NAME} characters; `unknown` is \
                     reserved for connections without a verified PTR name"
                ),
            );
            continue;
        }
        let Some(list) = suffixes.as_ref().filter(|l| !l.value.is_empty()) else {
            e.on(
                key,
                &path,
                "list at least one PTR suffix, e.g. [mail.partner.example]",
            );
            continue;
        };
        for (i, raw) in list.value.iter().enumerate() {
            let at = index(&path, i);
            match normalize_suffix(&raw.value) {
                Err(err) => e.on(raw, &at, err.to_string()),
                Ok(s) => match seen.get(&s) {
                    Some((other, first)) if other != org => e.on(
                        raw,
                        &at,
                        format!("{s} is already given to {other} at {first}: one organisation per suffix"),
                    ),
                    _ => {
                        table.insert(org, &s);
                        seen.insert(s, (org.to_string(), at));
                    }
                },
            }
        }
    }
    Arc::new(table)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{config_dir, errors, loaded};
    use crate::config::Overrides;
    use crate::policy::hat::ReverseDns;

    fn with(yaml: &str) -> tempfile::TempDir {
        config_dir(&[("mxgate.yaml", Some(yaml))])
    }

    #[test]
    fn configured_entries_add_to_and_override_the_shipped_table() {
        let d = with(
            "metrics:\n  sender_orgs:\n    partner: [mail.Partner.example., .relay.partner.example]\n    \
             other: [sendgrid.net]\n    google: [smtp-relay.gmail.com]\n",
        );
        let c = loaded(&d, &Overrides::default());
        let t = &c.global.sender_orgs;
        let v = |n: &str| ReverseDns::Verified(n.to_string());
        assert_eq!(t.label(&v("out1.mail.partner.example")), "partner");
        assert_eq!(t.label(&v("a.relay.partner.example")), "partner");
        assert_eq!(t.label(&v("s.x.outbound-mail.sendgrid.net")), "other");
        assert_eq!(t.label(&v("x.smtp-relay.gmail.com")), "google");
        assert_eq!(t.label(&v("mail-wr1-f54.google.com")), "google");
        // Every listener labels with the same table.
        assert!(std::sync::Arc::ptr_eq(t, &c.listeners[0].sender_orgs));
    }

    #[test]
    fn without_the_key_the_shipped_table_applies() {
        let c = loaded(&config_dir(&[]), &Overrides::default());
        assert_eq!(
            *c.global.sender_orgs,
            crate::metrics::sender_org::SenderOrgs::default()
        );
    }

    #[test]
    fn bad_names_and_suffixes_are_reported_with_file_line_and_key() {
        let d = with(
            "metrics:\n  sender_orgs:\n    Google: [google.com]\n    unknown: [x.example]\n    \
             acme: [\"*.acme.example\", \"bad name.example\", mail.acme.example]\n    empty: []\n    \
             dup: [mail.acme.example]\n",
        );
        let got = errors(&d, &Overrides::default());
        let want = [
            "mxgate.yaml:3:5: metrics.sender_orgs.Google: \"Google\" is not a usable organisation name",
            "mxgate.yaml:4:5: metrics.sender_orgs.unknown: \"unknown\" is not a usable organisation name",
            "mxgate.yaml:5:12: metrics.sender_orgs.acme[0]: \"*.acme.example\": write the suffix without `*.`",
            "mxgate.yaml:5:30: metrics.sender_orgs.acme[1]: \"bad name.example\" is not a DNS name",
            "mxgate.yaml:6:5: metrics.sender_orgs.empty: list at least one PTR suffix",
            "mxgate.yaml:7:11: metrics.sender_orgs.dup[0]: mail.acme.example is already given to acme at metrics.sender_orgs.acme[2]",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{g:?} should start with {w:?}");
        }
    }

    #[test]
    fn the_number_of_configured_organisations_is_capped() {
        use crate::metrics::sender_org::MAX_CONFIGURED_ORGS;
        let mut yaml = "metrics:\n  sender_orgs:\n".to_string();
        for i in 0..=MAX_CONFIGURED_ORGS {
            yaml.push_str(&format!("    org{i}: [org{i}.example]\n"));
        }
        let got = errors(&with(&yaml), &Overrides::default());
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            got[0].starts_with(&format!(
                "mxgate.yaml:3:5: metrics.sender_orgs: {} organisations configured, at most {MAX_CONFIGURED_ORGS}",
                MAX_CONFIGURED_ORGS + 1
            )),
            "{got:?}"
        );
        // Exactly the cap loads.
        let mut yaml = "metrics:\n  sender_orgs:\n".to_string();
        for i in 0..MAX_CONFIGURED_ORGS {
            yaml.push_str(&format!("    org{i}: [org{i}.example]\n"));
        }
        let c = loaded(&with(&yaml), &Overrides::default());
        assert_eq!(
            c.global.sender_orgs.label_values().len(),
            crate::metrics::sender_org::DEFAULT_SENDER_ORGS.len() + MAX_CONFIGURED_ORGS + 2
        );
    }
}
