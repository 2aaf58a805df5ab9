//! The sender-authentication keys of a mail-flow policy (`sender_dns_verification`, `spf`,
//! `spf_reject_softfail`, `spf_at`, `dmarc`): their `*Def` shapes and how they apply over the
//! inherited policy. docs/sender-auth.md describes them.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::defs::{PolicyDef, ReplyDef, SpannedStr};
use super::error::{index, join, FileErrors};
use super::policies::{merge_reply, Class, Parts};
use super::values::{check_sender, parse_bool};
use crate::policy::flow::MailFlowPolicy;
use crate::policy::sender_auth::{DmarcMode, SenderDnsVerification, SpfMode, SpfStage};
use crate::smtp::reply::Reply;

/// `sender_dns_verification:` a switch (`on`/`off`, `true`/`false`) or a map.
#[derive(Debug)]
pub(crate) enum SenderDnsDef {
    /// The short form.
    Switch(String),
    /// The long form: on (unless `enabled: off`), with replies and exceptions.
    Full(Box<SenderDnsFullDef>),
}

impl<'de> Deserialize<'de> for SenderDnsDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SenderDnsDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "on, off, or a map {enabled, malformed, not_exist, unresolvable, exceptions}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SenderDnsDef, E> {
                Ok(SenderDnsDef::Switch(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SenderDnsDef, E> {
                Ok(SenderDnsDef::Switch(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SenderDnsDef, A::Error> {
                SenderDnsFullDef::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|f| SenderDnsDef::Full(Box::new(f)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The long form of `sender_dns_verification:`; unset keys are inherited.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SenderDnsFullDef {
    /// `on` or `off` (default `on` when the map is given).
    #[serde(default)]
    pub enabled: Option<SpannedStr>,
    /// Reply to a sender without a usable domain (4xx/5xx).
    #[serde(default)]
    pub malformed: Option<ReplyDef>,
    /// Reply to a sender whose domain does not exist (4xx/5xx).
    #[serde(default)]
    pub not_exist: Option<ReplyDef>,
    /// Reply when the domain could not be resolved (4xx only).
    #[serde(default)]
    pub unresolvable: Option<ReplyDef>,
    /// Senders always allowed: `user@domain`, `@domain` or `domain`.
    #[serde(default)]
    pub exceptions: Option<Vec<SpannedStr>>,
}

/// `on`/`off` (and `true`/`false`).
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        t => Err(format!("{t:?}: write on or off (true or false)")),
    }
}

/// Merges a reply Def over `base`.
fn apply_reply(
    base: &mut Reply,
    def: &Option<ReplyDef>,
    e: &mut FileErrors<'_>,
    path: &str,
    temporary_only: bool,
) {
    let Some(def) = def else { return };
    let p = merge_reply(
        Parts {
            code: base.code,
            enhanced: base.enhanced,
            text: base.text.to_string(),
        },
        &def.into(),
        Class::Failure,
        e,
        path,
    );
    if temporary_only && p.code / 100 != 4 {
        if let Some(c) = &def.code {
            e.on(
                c,
                join(path, "code"),
                "must be 4xx: a DNS failure is temporary, never a permanent refusal",
            );
        }
        return;
    }
    *base = Reply {
        code: p.code,
        enhanced: p.enhanced,
        text: p.text.into(),
    };
}

/// Applies the sender-authentication keys of `def` over `p` (inherited values).
pub(super) fn apply(p: &mut MailFlowPolicy, def: &PolicyDef, e: &mut FileErrors<'_>, path: &str) {
    if let Some(d) = &def.sender_dns_verification {
        let key = join(path, "sender_dns_verification");
        match &d.value {
            SenderDnsDef::Switch(s) => match parse_switch(s) {
                Ok(true) => {
                    if p.sender_dns_verification.is_none() {
                        p.sender_dns_verification = Some(SenderDnsVerification::builtin());
                    }
                }
                Ok(false) => p.sender_dns_verification = None,
                Err(m) => e.on(d, &key, m),
            },
            SenderDnsDef::Full(f) => {
                let enabled = match &f.enabled {
                    Some(s) => match parse_switch(&s.value) {
                        Ok(b) => b,
                        Err(m) => {
                            e.on(s, join(&key, "enabled"), m);
                            true
                        }
                    },
                    None => true,
                };
                let mut v = p
                    .sender_dns_verification
                    .clone()
                    .unwrap_or_else(SenderDnsVerification::builtin);
                apply_reply(
                    &mut v.malformed,
                    &f.malformed,
                    e,
                    &join(&key, "malformed"),
                    false,
                );
                apply_reply(
                    &mut v.not_exist,
                    &f.not_exist,
                    e,
                    &join(&key, "not_exist"),
                    false,
                );
                apply_reply(
                    &mut v.unresolvable,
                    &f.unresolvable,
                    e,
                    &join(&key, "unresolvable"),
                    true,
                );
                if let Some(list) = &f.exceptions {
                    let mut out = Vec::new();
                    for (i, s) in list.iter().enumerate() {
                        match check_sender(&s.value) {
                            Ok(()) => out.push(s.value.trim().to_ascii_lowercase()),
                            Err(m) => e.on(s, index(&join(&key, "exceptions"), i), m),
                        }
                    }
                    v.exceptions = Arc::new(out);
                }
                p.sender_dns_verification = enabled.then_some(v);
            }
        }
    }
    if let Some(s) = &def.spf {
        match s.value.trim() {
            "off" | "false" => p.spf.mode = SpfMode::Off,
            "tag" => p.spf.mode = SpfMode::Tag,
            "reject_fail" => p.spf.mode = SpfMode::RejectFail,
            t => e.on(
                s,
                join(path, "spf"),
                format!("{t:?}: write off, tag or reject_fail"),
            ),
        }
    }
    if let Some(s) = &def.spf_reject_softfail {
        match parse_bool(&s.value) {
            Ok(b) => p.spf.reject_softfail = b,
            Err(m) => e.on(s, join(path, "spf_reject_softfail"), m),
        }
    }
    if let Some(s) = &def.spf_at {
        match s.value.trim() {
            "mail" => p.spf.at = SpfStage::Mail,
            "rcpt" => p.spf.at = SpfStage::Rcpt,
            "data" => p.spf.at = SpfStage::Data,
            t => e.on(
                s,
                join(path, "spf_at"),
                format!("{t:?}: write mail, rcpt or data"),
            ),
        }
    }
    if let Some(s) = &def.dmarc {
        match s.value.trim() {
            "off" | "false" => p.dmarc = DmarcMode::Off,
            "tag" => p.dmarc = DmarcMode::Tag,
            "enforce" => p.dmarc = DmarcMode::Enforce,
            t => e.on(
                s,
                join(path, "dmarc"),
                format!("{t:?}: write off, tag or enforce"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{config_dir, errors, loaded};
    use super::super::Overrides;
    use crate::policy::sender_auth::{SpfMode, SpfStage};
    use crate::smtp::reply::Enhanced;

    fn with_flow(flow: &str) -> tempfile::TempDir {
        config_dir(&[("policies/mail_flow.yaml", Some(flow))])
    }

    #[test]
    fn keys_inherit_and_default_to_off() {
        let d = with_flow(
            "default:
  sender_dns_verification:
    not_exist: {code: 450, text: Unknown sender domain}
    exceptions: [Lab.test, \"@partner.test\"]
  spf: tag
policies:
  ACCEPTED: {action: accept}
  BLOCKED: {action: reject, sender_dns_verification: \"off\", spf: \"off\"}
  RELAYED: {action: relay, spf: reject_fail, spf_reject_softfail: true, spf_at: rcpt}
",
        );
        let c = loaded(&d, &Overrides::default());
        let a = &c.policies["ACCEPTED"];
        let v = a.sender_dns_verification.as_ref().unwrap();
        assert_eq!(
            (v.not_exist.code, v.not_exist.enhanced, &*v.not_exist.text),
            (450, Some(Enhanced(4, 1, 8)), "Unknown sender domain")
        );
        assert_eq!(v.malformed.code, 553);
        assert_eq!(*v.exceptions, ["lab.test", "@partner.test"]);
        assert_eq!(a.spf.mode, SpfMode::Tag);
        let b = &c.policies["BLOCKED"];
        assert_eq!(
            (b.sender_dns_verification.is_none(), b.spf.mode),
            (true, SpfMode::Off)
        );
        let r = &c.policies["RELAYED"];
        assert_eq!(
            (r.spf.mode, r.spf.reject_softfail, r.spf.at),
            (SpfMode::RejectFail, true, SpfStage::Rcpt)
        );
        // Without the keys: today's behaviour.
        let d = with_flow("policies:\n  ACCEPTED: {action: accept}\n  BLOCKED: {action: reject}\n  RELAYED: {action: relay}\n");
        let c = loaded(&d, &Overrides::default());
        let a = &c.policies["ACCEPTED"];
        assert_eq!(
            (a.sender_dns_verification.is_none(), a.spf.mode),
            (true, SpfMode::Off)
        );
    }

    #[test]
    fn bad_values_are_located() {
        let d = with_flow(
            "policies:
  ACCEPTED:
    sender_dns_verification:
      unresolvable: {code: 550}
      exceptions: [\"not an address\", \"@@bad.example\"]
    spf: strict
    spf_at: end
  BLOCKED: {action: reject, sender_dns_verification: maybe}
  RELAYED: {action: relay}
",
        );
        let e = errors(&d, &Overrides::default());
        let text = e.join("\n");
        for want in [
            "policies/mail_flow.yaml:4:28: policies.ACCEPTED.sender_dns_verification.unresolvable.code: must be 4xx",
            "policies.ACCEPTED.sender_dns_verification.exceptions[0]",
            "policies.ACCEPTED.sender_dns_verification.exceptions[1]: \"@@bad.example\" is not an address",
            "policies.ACCEPTED.spf: \"strict\": write off, tag or reject_fail",
            "policies.ACCEPTED.spf_at: \"end\": write mail, rcpt or data",
            "policies.BLOCKED.sender_dns_verification: \"maybe\": write on or off (true or false)",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
