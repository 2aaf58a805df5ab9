//! The connect stage, and the session as a whole: whether a connection is taken, greeted,
//! rejected or refused, and the 421s that end a session (bad commands, timeouts, shutdown).
//!
//! Order at the opening: the HAT decision comes first (a refused or rejected host is treated
//! as such even when it also spoke early or is over its connection limit), then pre-greeting
//! talk, then the per-IP connection limit, then the greeting. Before all of them, at accept:
//! draining (`mxgate drain`), then the listener's connection cap.

use std::net::IpAddr;
use std::time::Duration;

use super::{Denial, DenialReason, Permit};
use crate::config::model::ListenerKind;
use crate::policy::flow::{Action, MailFlowPolicy};
use crate::smtp::reply::{Enhanced, Reply};

/// What the accept loop knows when a connection arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AcceptCtx<'a> {
    /// A session slot of the listener was free.
    pub slot_free: bool,
    /// The listener's `max_connections`.
    pub max_connections: usize,
    /// The server is draining (`mxgate drain`): it takes no new sessions.
    pub draining: bool,
    /// The listener's host name (for the draining reply).
    pub hostname: &'a str,
}

/// Whether a new connection gets a session: 421 4.3.2 while draining (the client retries
/// another MX host or this one after its restart), 421 4.7.0 when every session slot is taken.
pub(crate) fn check_accept(ctx: &AcceptCtx) -> Result<Permit, Denial> {
    if ctx.draining {
        return Err(Denial::new(
            Reply::new(
                421,
                Enhanced(4, 3, 2),
                format!("{} Service not available, draining", ctx.hostname),
            ),
            DenialReason::Draining,
        ));
    }
    if ctx.slot_free {
        return Ok(Permit::later());
    }
    Err(Denial::new(
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            "Too many connections, try again later",
        ),
        DenialReason::ListenerFull {
            max: ctx.max_connections,
        },
    ))
}

/// No connection id could be allocated: the client should come back later.
pub(crate) fn no_icid() -> Denial {
    Denial::new(
        Reply::new(421, Enhanced(4, 3, 0), "Local error, try again later"),
        DenialReason::LocalError,
    )
}

/// How long to watch for a client that talks first. Only a client about to be greeted waits:
/// refusals (TCPREFUSE, REJECT, the per-IP limit) go out at once, so a flood does not hold
/// sockets for the pause.
pub(crate) fn pre_greet_pause(
    policy: &MailFlowPolicy,
    kind: ListenerKind,
    per_ip_full: bool,
) -> Duration {
    let greets = !per_ip_full && matches!(policy.action, Action::Accept | Action::Relay);
    if greets {
        policy.pre_greet_pause_on(kind)
    } else {
        Duration::ZERO
    }
}

/// What is known about a connection when the session opens.
#[derive(Debug, Clone)]
pub(crate) struct ConnectCtx<'a> {
    /// The mail-flow policy the HAT chose.
    pub policy: &'a MailFlowPolicy,
    /// Client address (for the banner's `$RemoteIP`).
    pub peer_ip: IpAddr,
    /// Host name for the banner.
    pub hostname: &'a str,
    /// Sender group (for `$Group`).
    pub group: &'a str,
    /// The client sent data before the greeting.
    pub talked_first: bool,
    /// The client's address already holds its maximum of concurrent connections.
    pub per_ip_full: bool,
    /// The shared store did not answer for this counter and its `when_unavailable` is
    /// `tempfail`.
    pub store_unavailable: Option<&'static str>,
}

/// The opening: the greeting, or why not.
pub(crate) fn check_connect(ctx: &ConnectCtx) -> Result<Permit, Denial> {
    let p = ctx.policy;
    let ip = ctx.peer_ip.to_string();
    match p.action {
        Action::TcpRefuse => {
            return Err(Denial {
                reply: None,
                reason: DenialReason::HatRefuse,
            })
        }
        Action::Reject => {
            let r = p.reject_banner.render(&ip, ctx.hostname, ctx.group);
            return Err(Denial::new(r, DenialReason::HatReject));
        }
        Action::Accept | Action::Relay | Action::Continue => {}
    }
    if ctx.talked_first {
        return Err(Denial::new(
            Reply::new(
                554,
                Enhanced(5, 5, 0),
                "Protocol error: data sent before greeting",
            ),
            DenialReason::PreGreet,
        ));
    }
    if let Some(counter) = ctx.store_unavailable {
        return Err(super::shared::store_unavailable_at_connect(
            ctx.hostname,
            counter,
        ));
    }
    if ctx.per_ip_full {
        let limit = &p.max_concurrent_connections_per_ip;
        return Err(Denial::new(
            limit.reply.clone(),
            DenialReason::PerIpFull {
                max: limit.max.unwrap_or(0),
                policy: p.name.clone(),
                reply: limit.reply.clone(),
            },
        ));
    }
    Ok(Permit::with(p.banner.render(&ip, ctx.hostname, ctx.group)))
}

/// Counts a bad command: past `max` the session ends with 421.
pub(crate) fn check_bad_commands(count: u32, max: u32) -> Result<Permit, Denial> {
    if count <= max {
        return Ok(Permit::later());
    }
    Err(Denial::new(
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            "Too many errors, closing connection",
        ),
        DenialReason::TooManyBadCommands { max },
    ))
}

/// A timeout fired (`what` names it): 421 and close.
pub(crate) fn timeout(what: &str, hostname: &str) -> Denial {
    Denial::new(
        Reply::new(
            421,
            Enhanced(4, 4, 2),
            format!("{hostname} Error: timeout exceeded"),
        ),
        DenialReason::Timeout { what: what.into() },
    )
}

/// The server is shutting down: 421 and close.
pub(crate) fn shutdown(hostname: &str) -> Denial {
    Denial::new(
        Reply::new(
            421,
            Enhanced(4, 3, 2),
            format!("{hostname} Service shutting down, closing transmission channel"),
        ),
        DenialReason::Shutdown,
    )
}

#[cfg(test)]
mod tests {
    use super::super::outcome;
    use super::*;

    fn ctx(policy: &MailFlowPolicy, talked_first: bool, per_ip_full: bool) -> ConnectCtx<'_> {
        ConnectCtx {
            policy,
            peer_ip: "192.0.2.1".parse().unwrap(),
            hostname: "mx.example.com",
            group: "G",
            talked_first,
            per_ip_full,
            store_unavailable: None,
        }
    }

    #[test]
    fn opening_table() {
        let with = |action| {
            let mut p = MailFlowPolicy::builtin_default("P");
            p.action = action;
            p
        };
        let (accept, relay, reject, refuse) = (
            with(Action::Accept),
            with(Action::Relay),
            with(Action::Reject),
            with(Action::TcpRefuse),
        );
        // (policy, talked first, per-IP full) -> (code, enhanced, label)
        let table = [
            (&accept, false, false, (220, "", "permit")),
            (&relay, false, false, (220, "", "permit")),
            (&accept, true, false, (554, "5.5.0", "pre_greet")),
            (&accept, false, true, (421, "4.7.0", "per_ip_full")),
            (&accept, true, true, (554, "5.5.0", "pre_greet")),
            (&reject, false, false, (554, "5.7.1", "hat_reject")),
            (&reject, true, true, (554, "5.7.1", "hat_reject")),
            (&refuse, false, false, (0, "", "hat_refuse")),
            (&refuse, true, true, (0, "", "hat_refuse")),
        ];
        for (i, (p, talked, full, (code, enh, label))) in table.into_iter().enumerate() {
            let got = outcome(&check_connect(&ctx(p, talked, full)));
            assert_eq!(got, (code, enh.to_string(), label), "row {i}");
        }
    }

    #[test]
    fn greeting_and_per_ip_log_text() {
        let p = MailFlowPolicy::builtin_default("ACCEPTED");
        let ok = check_connect(&ctx(&p, false, false)).unwrap();
        assert_eq!(
            ok.reply.unwrap().to_wire(),
            "220 mx.example.com ESMTP mxgate\r\n"
        );
        let d = check_connect(&ctx(&p, false, true)).unwrap_err();
        assert_eq!(
            d.reason.to_string(),
            "max_concurrent_connections_per_ip 10 (policy ACCEPTED) -> 421 4.7.0 Too many concurrent connections from your address"
        );
    }

    fn accept(slot_free: bool, draining: bool) -> AcceptCtx<'static> {
        AcceptCtx {
            slot_free,
            max_connections: 5,
            draining,
            hostname: "mx.example.com",
        }
    }

    #[test]
    fn draining_reply_bytes() {
        let d = check_accept(&accept(true, true)).unwrap_err();
        assert_eq!(
            d.reply.unwrap().to_wire(),
            "421 4.3.2 mx.example.com Service not available, draining\r\n"
        );
    }

    #[test]
    fn session_wide_table() {
        let table = [
            (check_accept(&accept(true, false)), (0, "", "permit")),
            (
                check_accept(&accept(false, false)),
                (421, "4.7.0", "listener_full"),
            ),
            (
                check_accept(&accept(true, true)),
                (421, "4.3.2", "draining"),
            ),
            (
                check_accept(&accept(false, true)),
                (421, "4.3.2", "draining"),
            ),
            (Err(no_icid()), (421, "4.3.0", "local_error")),
            (check_bad_commands(3, 3), (0, "", "permit")),
            (check_bad_commands(4, 3), (421, "4.7.0", "bad_commands")),
            (Err(timeout("command", "mx")), (421, "4.4.2", "timeout")),
            (Err(shutdown("mx")), (421, "4.3.2", "shutdown")),
        ];
        for (i, (r, (code, enh, label))) in table.into_iter().enumerate() {
            assert_eq!(outcome(&r), (code, enh.to_string(), label), "row {i}");
        }
        assert_eq!(
            no_icid().reply.unwrap().to_wire(),
            "421 4.3.0 Local error, try again later\r\n"
        );
    }

    #[test]
    fn only_a_client_about_to_be_greeted_waits() {
        let mut p = MailFlowPolicy::builtin_default("P");
        let public = ListenerKind::Public;
        assert_eq!(
            pre_greet_pause(&p, public, false),
            Duration::from_millis(300)
        );
        assert_eq!(pre_greet_pause(&p, public, true), Duration::ZERO);
        p.action = Action::Reject;
        assert_eq!(pre_greet_pause(&p, public, false), Duration::ZERO);
        p.action = Action::Relay;
        assert_eq!(
            pre_greet_pause(&p, ListenerKind::Private, false),
            Duration::ZERO
        );
    }
}
