//! `policies/hat.yaml` and `policies/rat.yaml`: HATs and RATs from their `*Def` forms.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::defs::{HatDef, NamedMap, RatDef, SpannedStr};
use super::error::{index, join, FileErrors, Pos};
use super::policies::{merge_reply, Class, Named, Parts};
use super::validation::{build_entry_validation, ValidationContext};
use super::values::{check_table_name, host_bits_warning, parse_policy_name, parse_rat_action};
use crate::policy::flow::{Action, MailFlowPolicy};
use crate::policy::hat::{Criterion, HostAccessTable, SenderGroup};
use crate::policy::rat::{RatAction, RatEntry, RecipientAccessTable, RecipientPattern};
use crate::smtp::reply::{Enhanced, Reply};

/// Criteria that match every client.
fn is_universal(c: &Criterion) -> bool {
    match c {
        Criterion::All => true,
        Criterion::Net(n) => n.prefix_len() == 0,
        Criterion::Range(a, b) => {
            let (lo, hi): (std::net::IpAddr, std::net::IpAddr) = if a.is_ipv4() {
                ([0, 0, 0, 0].into(), [255, 255, 255, 255].into())
            } else {
                ([0u16; 8].into(), [0xffffu16; 8].into())
            };
            *a == lo && *b == hi
        }
        _ => false,
    }
}

/// Looks up a policy reference, recording `unknown policy` errors.
fn policy_ref(
    s: &SpannedStr,
    policies: &Named<MailFlowPolicy>,
    e: &mut FileErrors<'_>,
    path: &str,
) -> Arc<MailFlowPolicy> {
    let name = match parse_policy_name(&s.value) {
        Ok(n) => n,
        Err(m) => {
            e.on(s, path, m);
            return Arc::new(MailFlowPolicy::builtin_default(s.value.trim()));
        }
    };
    match policies.find(&name) {
        Ok(Some(p)) => p,
        Ok(None) => Arc::new(MailFlowPolicy::builtin_default(&name)),
        Err(()) => {
            e.on(s, path, format!("unknown policy {name:?}"));
            Arc::new(MailFlowPolicy::builtin_default(&name))
        }
    }
}

/// HATs by name, with why each would make a public listener an open relay.
pub(crate) type Hats = (
    BTreeMap<String, Arc<HostAccessTable>>,
    BTreeMap<String, Vec<String>>,
);

/// Builds every HAT.
pub(crate) fn build_hats(
    def: &NamedMap<Option<HatDef>>,
    policies: &Named<MailFlowPolicy>,
    e: &mut FileErrors<'_>,
) -> Hats {
    let file = e.file.display().to_string();
    let mut hats = BTreeMap::new();
    let mut relay_all = BTreeMap::new();
    let empty = HatDef::default();
    for (key, hat) in &def.0 {
        let hat = hat.as_ref().unwrap_or(&empty);
        let hat_name = key.value.trim().to_string();
        if let Err(m) = check_table_name(&hat_name, "HAT name") {
            e.on(key, &hat_name, m);
        }
        let mut open = Vec::new();
        let mut groups = Vec::new();
        let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
        let gpath = join(&hat_name, "sender_groups");
        for (i, g) in hat.sender_groups.iter().flatten().enumerate() {
            let path = index(&gpath, i);
            let gd = &g.value;
            let name = match &gd.name {
                Some(n) => {
                    let name = n.value.trim().to_string();
                    if let Err(m) = check_table_name(&name, "sender group name") {
                        e.on(n, join(&path, "name"), m);
                    } else if name.eq_ignore_ascii_case("ALL") {
                        e.on(
                            n,
                            join(&path, "name"),
                            "ALL is the implicit last group: use default_policy instead",
                        );
                    } else if let Some(first) = seen.get(&name.to_ascii_lowercase()) {
                        e.on(
                            n,
                            join(&path, "name"),
                            format!(
                                "duplicate sender group name {name:?} (first at line {})",
                                first.line
                            ),
                        );
                    } else {
                        seen.insert(name.to_ascii_lowercase(), Pos::of(n));
                    }
                    name
                }
                None => {
                    e.on(g, join(&path, "name"), "missing required key `name`");
                    format!("#{i}")
                }
            };
            let policy = match &gd.policy {
                Some(p) => policy_ref(p, policies, e, &join(&path, "policy")),
                None => {
                    e.on(g, join(&path, "policy"), "missing required key `policy`");
                    Arc::new(MailFlowPolicy::builtin_default(""))
                }
            };
            let mut criteria = Vec::new();
            for (j, c) in gd.criteria.iter().flatten().enumerate() {
                match Criterion::parse(&c.value) {
                    Ok(crit) => {
                        if policy.action == Action::Relay && is_universal(&crit) {
                            open.push(format!(
                                "sender group {name:?} ({file}:{}) gives relay policy {:?} to every host (match {})",
                                Pos::of(c),
                                policy.name,
                                c.value.trim()
                            ));
                        }
                        if let Some(w) = host_bits_warning(&c.value) {
                            e.warn_on(c, &index(&join(&path, "match"), j), w);
                        }
                        criteria.push(crit);
                    }
                    Err(m) => e.on(c, index(&join(&path, "match"), j), m),
                }
            }
            groups.push(SenderGroup {
                name,
                criteria,
                policy,
            });
        }
        let fallback = match &hat.default_policy {
            Some(p) => policy_ref(p, policies, e, &join(&hat_name, "default_policy")),
            None => match policies.find("ACCEPTED") {
                Ok(Some(p)) => p,
                Ok(None) => Arc::new(MailFlowPolicy::builtin_default("ACCEPTED")),
                Err(()) => {
                    e.on(
                        key,
                        join(&hat_name, "default_policy"),
                        "no default_policy given, and there is no policy \"ACCEPTED\" to fall back on",
                    );
                    Arc::new(MailFlowPolicy::builtin_default("ACCEPTED"))
                }
            },
        };
        if fallback.action == Action::Continue {
            let at = hat
                .default_policy
                .as_ref()
                .map(Pos::of)
                .unwrap_or_else(|| Pos::of(key));
            e.at(
                at,
                join(&hat_name, "default_policy"),
                format!(
                    "default_policy {:?} has action continue, but no group follows ALL",
                    fallback.name
                ),
            );
        }
        if fallback.action == Action::Relay {
            open.push(format!(
                "its default_policy {:?} ({file}:{}) relays for every host no group matches",
                fallback.name,
                hat.default_policy
                    .as_ref()
                    .map(Pos::of)
                    .unwrap_or_else(|| Pos::of(key))
            ));
        }
        relay_all.insert(hat_name.clone(), open);
        let table = HostAccessTable::new(hat_name.clone(), groups, fallback);
        hats.insert(hat_name, Arc::new(table));
    }
    (hats, relay_all)
}

/// RATs by name, with the entries that accept every recipient.
pub(crate) type Rats = (
    BTreeMap<String, Arc<RecipientAccessTable>>,
    BTreeMap<String, Vec<String>>,
);

/// Builds every RAT.
pub(crate) fn build_rats(
    def: &NamedMap<Option<RatDef>>,
    vctx: &ValidationContext<'_>,
    e: &mut FileErrors<'_>,
) -> Rats {
    let file = e.file.display().to_string();
    let mut rats = BTreeMap::new();
    let mut accept_all = BTreeMap::new();
    let empty = RatDef::default();
    for (key, rat) in &def.0 {
        let rat = rat.as_ref().unwrap_or(&empty);
        let rat_name = key.value.trim().to_string();
        if let Err(m) = check_table_name(&rat_name, "RAT name") {
            e.on(key, &rat_name, m);
        }
        let mut all = Vec::new();
        let mut entries = Vec::new();
        for (i, ent) in rat.entries.iter().flatten().enumerate() {
            let path = index(&join(&rat_name, "entries"), i);
            let d = &ent.value;
            let action = match &d.action {
                Some(a) => parse_rat_action(&a.value).unwrap_or_else(|m| {
                    e.on(a, join(&path, "action"), m);
                    RatAction::Reject
                }),
                None => RatAction::Accept,
            };
            let pattern = match &d.recipient {
                Some(r) => match RecipientPattern::parse(&r.value) {
                    Ok(p) => {
                        if p == RecipientPattern::All && action == RatAction::Accept {
                            all.push(format!(
                                "entry {i} ({file}:{}) accepts every recipient",
                                Pos::of(r)
                            ));
                        }
                        Some(p)
                    }
                    Err(m) => {
                        e.on(r, join(&path, "recipient"), m);
                        None
                    }
                },
                None => {
                    e.on(
                        ent,
                        join(&path, "recipient"),
                        "missing required key `recipient`",
                    );
                    None
                }
            };
            let reply = d.reply.as_ref().map(|r| {
                let (class, base) = match action {
                    RatAction::Accept => (
                        Class::Success,
                        Reply::new(250, Enhanced(2, 1, 5), "Recipient OK"),
                    ),
                    RatAction::Reject => (Class::Failure, RecipientAccessTable::default_reply()),
                };
                let base = Parts {
                    code: base.code,
                    enhanced: base.enhanced,
                    text: base.text.to_string(),
                };
                let p = merge_reply(base, &r.into(), class, e, &join(&path, "reply"));
                Reply {
                    code: p.code,
                    enhanced: p.enhanced,
                    text: p.text.into(),
                }
            });
            let validation = build_entry_validation(
                d,
                action == RatAction::Accept,
                pattern.as_ref(),
                &path,
                vctx,
                e,
            );
            if let Some(pattern) = pattern {
                entries.push(RatEntry {
                    pattern,
                    action,
                    reply,
                    validation,
                });
            }
        }
        let postmaster = rat.postmaster.as_ref().and_then(|p| {
            super::destinations::check_address(&p.value)
                .map_err(|m| e.on(p, join(&rat_name, "postmaster"), m))
                .ok()
        });
        accept_all.insert(rat_name.clone(), all);
        rats.insert(
            rat_name.clone(),
            Arc::new(RecipientAccessTable {
                name: rat_name,
                entries,
                postmaster,
            }),
        );
    }
    (rats, accept_all)
}
