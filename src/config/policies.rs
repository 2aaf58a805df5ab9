//! `policies/mail_flow.yaml`: mail-flow policies from their `*Def` forms, and reply merging.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::defs::{LimitDef, MailFlowDef, PolicyDef, ReplyDef, SpannedStr};
use super::error::{index, join, FileErrors, Pos};
use super::values::{
    check_hostname, check_reply_text, check_sender, parse_action, parse_bool, parse_code,
    parse_count, parse_duration, parse_enhanced, parse_policy_name, parse_size, parse_tls,
};
use crate::policy::flow::{Action, Banner, Limit, MailFlowPolicy};
use crate::smtp::reply::{Enhanced, Reply};
use serde_saphyr::Spanned;

/// Longest `pre_greet_pause`: the pause holds the connection and delays every sender.
const MAX_PRE_GREET_PAUSE: Duration = Duration::from_secs(30);

/// Tables of one kind by name, and whether the list is trustworthy for "unknown name" errors.
#[derive(Debug)]
pub(crate) struct Named<T> {
    /// Entries by name.
    pub map: BTreeMap<String, Arc<T>>,
    /// False when the file could not be read or parsed: then unknown names are not reported.
    pub complete: bool,
}

impl<T> Named<T> {
    /// An empty table set that does not report unknown names.
    pub(super) fn unknown() -> Self {
        Named {
            map: BTreeMap::new(),
            complete: false,
        }
    }

    /// Looks a name up: `Ok(None)` when it may exist but cannot be known.
    pub(super) fn find(&self, name: &str) -> Result<Option<Arc<T>>, ()> {
        match self.map.get(name) {
            Some(t) => Ok(Some(t.clone())),
            None if self.complete => Err(()),
            None => Ok(None),
        }
    }
}

/// Which reply codes a reply may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// 2xx (greeting, accepted recipient).
    Success,
    /// 4xx or 5xx (refusals).
    Failure,
}

/// A reply being merged over its inherited value.
pub(super) struct Parts {
    /// Reply code.
    pub code: u16,
    /// Enhanced code.
    pub enhanced: Option<Enhanced>,
    /// Text.
    pub text: String,
}

/// Applies `code`/`enhanced`/`text` over `base`, checking classes.
pub(super) fn merge_reply(
    mut base: Parts,
    def: &ReplyLike<'_>,
    class: Class,
    e: &mut FileErrors<'_>,
    path: &str,
) -> Parts {
    let mut code_set = false;
    if let Some(c) = def.code {
        match parse_code(&c.value) {
            Ok(code) if class == Class::Success && code / 100 != 2 => e.on(
                c,
                join(path, "code"),
                format!("reply code {code} must be 2xx here"),
            ),
            Ok(code) if class == Class::Failure && code < 400 => e.on(
                c,
                join(path, "code"),
                format!("reply code {code} must be 4xx or 5xx here"),
            ),
            Ok(code) => {
                base.code = code;
                code_set = true;
            }
            Err(m) => e.on(c, join(path, "code"), m),
        }
    }
    let class_digit = (base.code / 100) as u8;
    if let Some(en) = def.enhanced {
        match parse_enhanced(&en.value) {
            Ok(x) if x.0 != class_digit => e.on(
                en,
                join(path, "enhanced"),
                format!(
                    "enhanced code {x} does not match reply code {}: its first digit must be {class_digit}",
                    base.code
                ),
            ),
            Ok(x) => base.enhanced = Some(x),
            Err(m) => e.on(en, join(path, "enhanced"), m),
        }
    } else if code_set {
        // A new code without an enhanced code keeps the inherited detail, in the code's class.
        if let Some(x) = base.enhanced.as_mut() {
            x.0 = class_digit;
        }
    }
    if let Some(t) = def.text {
        match check_reply_text(&t.value) {
            Ok(()) => base.text = t.value.clone(),
            Err(m) => e.on(t, join(path, "text"), m),
        }
    }
    base
}

/// The three reply fields, from whichever Def holds them.
pub(super) struct ReplyLike<'a> {
    /// `code:`.
    code: Option<&'a SpannedStr>,
    /// `enhanced:`.
    enhanced: Option<&'a SpannedStr>,
    /// `text:`.
    text: Option<&'a SpannedStr>,
}

impl<'a> From<&'a ReplyDef> for ReplyLike<'a> {
    fn from(r: &'a ReplyDef) -> Self {
        ReplyLike {
            code: r.code.as_ref(),
            enhanced: r.enhanced.as_ref(),
            text: r.text.as_ref(),
        }
    }
}

/// Parses a limit's maximum.
fn parse_max(
    s: &SpannedStr,
    is_size: bool,
    e: &mut FileErrors<'_>,
    path: &str,
) -> Option<Option<u64>> {
    let t = s.value.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Some(None);
    }
    let r = if is_size {
        parse_size(t).and_then(|n| {
            if n == 0 {
                Err("a size limit must be above 0".into())
            } else {
                Ok(n)
            }
        })
    } else {
        parse_count(t).map_err(|m| format!("{m}: write a number or unlimited"))
    };
    match r {
        Ok(n) => Some(Some(n)),
        Err(m) => {
            e.on(s, path, m);
            None
        }
    }
}

/// Applies a limit Def over the inherited limit.
fn apply_limit(
    limit: &mut Limit,
    def: &Option<Spanned<LimitDef>>,
    is_size: bool,
    e: &mut FileErrors<'_>,
    path: &str,
) {
    let Some(def) = def else { return };
    match &def.value {
        LimitDef::Value(v) => {
            let s = Spanned::new(v.clone(), def.referenced, def.defined);
            if let Some(max) = parse_max(&s, is_size, e, path) {
                limit.max = max;
            }
        }
        LimitDef::Full(f) => {
            if let Some(m) = &f.max {
                if let Some(max) = parse_max(m, is_size, e, &join(path, "max")) {
                    limit.max = max;
                }
            }
            let base = Parts {
                code: limit.reply.code,
                enhanced: limit.reply.enhanced,
                text: limit.reply.text.to_string(),
            };
            let like = ReplyLike {
                code: f.code.as_ref(),
                enhanced: f.enhanced.as_ref(),
                text: f.text.as_ref(),
            };
            let p = merge_reply(base, &like, Class::Failure, e, path);
            limit.reply = Reply {
                code: p.code,
                enhanced: p.enhanced,
                text: p.text.into(),
            };
        }
    }
}

/// Applies a banner Def over the inherited banner.
fn apply_banner(
    banner: &mut Banner,
    def: &Option<ReplyDef>,
    class: Class,
    e: &mut FileErrors<'_>,
    path: &str,
) {
    let Some(def) = def else { return };
    let base = Parts {
        code: banner.code,
        enhanced: banner.enhanced,
        text: banner.text.clone(),
    };
    let p = merge_reply(base, &def.into(), class, e, path);
    *banner = Banner {
        code: p.code,
        enhanced: p.enhanced,
        text: p.text,
    };
}

/// Applies a policy Def over `base` (the resolved default section).
fn apply_policy(
    base: &MailFlowPolicy,
    def: &PolicyDef,
    e: &mut FileErrors<'_>,
    path: &str,
) -> MailFlowPolicy {
    let mut p = base.clone();
    if let Some(a) = &def.action {
        match parse_action(&a.value) {
            Ok(x) => p.action = x,
            Err(m) => e.on(a, join(path, "action"), m),
        }
    }
    apply_limit(
        &mut p.max_message_size,
        &def.max_message_size,
        true,
        e,
        &join(path, "max_message_size"),
    );
    let counts = [
        (
            &mut p.max_messages_per_connection,
            &def.max_messages_per_connection,
            "max_messages_per_connection",
        ),
        (
            &mut p.max_recipients_per_message,
            &def.max_recipients_per_message,
            "max_recipients_per_message",
        ),
        (
            &mut p.max_concurrent_connections_per_ip,
            &def.max_concurrent_connections_per_ip,
            "max_concurrent_connections_per_ip",
        ),
        (
            &mut p.max_recipients_per_hour,
            &def.max_recipients_per_hour,
            "max_recipients_per_hour",
        ),
        (
            &mut p.max_invalid_recipients_per_hour,
            &def.max_invalid_recipients_per_hour,
            "max_invalid_recipients_per_hour",
        ),
    ];
    for (limit, d, key) in counts {
        apply_limit(limit, d, false, e, &join(path, key));
    }
    apply_banner(
        &mut p.banner,
        &def.banner,
        Class::Success,
        e,
        &join(path, "banner"),
    );
    apply_banner(
        &mut p.reject_banner,
        &def.reject_banner,
        Class::Failure,
        e,
        &join(path, "reject_banner"),
    );
    if let Some(h) = &def.override_hostname {
        match check_hostname(h.value.trim()) {
            Ok(()) => p.override_hostname = Some(h.value.trim().to_string()),
            Err(m) => e.on(h, join(path, "override_hostname"), m),
        }
    }
    if let Some(t) = &def.tls {
        match parse_tls(&t.value) {
            Ok(x) => p.tls = x,
            Err(m) => e.on(t, join(path, "tls"), m),
        }
    }
    if let Some(v) = &def.tls_verify_client {
        match parse_bool(&v.value) {
            Ok(x) => p.tls_verify_client = x,
            Err(m) => e.on(v, join(path, "tls_verify_client"), m),
        }
    }
    if let Some(v) = &def.pre_greet_pause {
        match parse_duration(&v.value) {
            Ok(d) if d > MAX_PRE_GREET_PAUSE => e.on(
                v,
                join(path, "pre_greet_pause"),
                "must be at most 30s: senders give up waiting for the greeting",
            ),
            Ok(d) => p.pre_greet_pause = Some(d),
            Err(m) => e.on(v, join(path, "pre_greet_pause"), m),
        }
    }
    if let Some(list) = &def.tls_mandatory_senders {
        p.tls_mandatory_senders.clear();
        for (i, s) in list.iter().enumerate() {
            match check_sender(&s.value) {
                Ok(()) => p.tls_mandatory_senders.push(s.value.trim().to_string()),
                Err(m) => e.on(s, index(&join(path, "tls_mandatory_senders"), i), m),
            }
        }
    }
    super::sender_auth::apply(&mut p, def, e, path);
    p
}

/// Builds every mail-flow policy, inheritance resolved.
pub(crate) fn build_policies(
    def: &MailFlowDef,
    e: &mut FileErrors<'_>,
) -> BTreeMap<String, Arc<MailFlowPolicy>> {
    let builtin = MailFlowPolicy::builtin_default("default");
    let template = match &def.default {
        Some(d) => {
            if let Some(a) = &d.value.action {
                e.on(
                    a,
                    "default.action",
                    "`action` cannot be inherited: set it in each policy (unset means accept)",
                );
            }
            apply_policy(&builtin, &d.value, e, "default")
        }
        None => builtin,
    };
    let mut out = BTreeMap::new();
    let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
    let Some(policies) = &def.policies else {
        return out;
    };
    for (key, pdef) in &policies.0 {
        let path = join("policies", &key.value);
        let name = match parse_policy_name(&key.value) {
            Ok(n) => n,
            Err(m) => {
                e.on(key, &path, m);
                continue;
            }
        };
        if let Some(first) = seen.get(&name) {
            e.on(
                key,
                &path,
                format!(
                    "policy {name:?} is defined twice (first at line {})",
                    first.line
                ),
            );
            continue;
        }
        seen.insert(name.clone(), Pos::of(key));
        let mut p = apply_policy(&template, &pdef.value, e, &path);
        p.name = name.clone();
        if pdef.value.action.is_none() {
            p.action = Action::Accept;
        }
        out.insert(name, Arc::new(p));
    }
    out
}
