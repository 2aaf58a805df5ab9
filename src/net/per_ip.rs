//! The per-IP connection slot of an accepted connection (`max_concurrent_connections_per_ip`):
//! a lease in the shared store when `shared_state:` is set (docs/shared-state.md), else this
//! node's count.

use crate::net::conn::ListenerContext;
use crate::policy::flow::Action as PolicyAction;
use crate::smtp::session::Opening;

/// A client's place under `max_concurrent_connections_per_ip`, held for the session.
#[derive(Debug)]
#[allow(dead_code)] // held for its drop
pub(crate) enum PerIpSlot {
    /// Counted on this node.
    Local(crate::policy::rate::ConnectionSlot),
    /// A lease in the shared store.
    Shared(crate::shared_state::counters::Lease),
}

/// Takes the client's per-IP connection slot: in the shared store when there is one (which
/// also tells the client's harvest count across nodes), else here. `Err` is how the
/// session opens instead (`ConcurrencyFull`, or `SharedStateUnavailable` under
/// `when_unavailable: tempfail`). TCPREFUSE takes nothing.
pub(crate) async fn per_ip_slot(
    ctx: &ListenerContext,
    ip: std::net::IpAddr,
    policy: &crate::policy::flow::MailFlowPolicy,
) -> Result<Option<PerIpSlot>, Opening> {
    use crate::shared_state::counters;
    use crate::shared_state::settings::Fallback;
    if matches!(policy.action, PolicyAction::TcpRefuse) {
        return Ok(None);
    }
    let max = policy.max_concurrent_connections_per_ip.max;
    let max_invalid = policy.max_invalid_recipients_per_hour.max;
    let local = || match ctx.rate.try_connect(ip, max) {
        Some(s) => Ok(Some(PerIpSlot::Local(s))),
        None => Err(Opening::ConcurrencyFull),
    };
    let Some(shared) = ctx.shared_state.as_ref() else {
        return local();
    };
    if max.is_none() && max_invalid.is_none() {
        return local();
    }
    let key = ctx.rate.shared_key(ip);
    match counters::take_connection(shared, &key, max).await {
        Ok(answer) => {
            if max_invalid.is_some() {
                ctx.rate.observe_invalid(ip, answer.invalid);
            }
            match (max, answer.lease) {
                (None, _) => local(),
                (Some(_), Some(lease)) => Ok(Some(PerIpSlot::Shared(lease))),
                (Some(_), None) => Err(Opening::ConcurrencyFull),
            }
        }
        Err(_) => {
            let w = shared.settings().when_unavailable;
            if max_invalid.is_some() {
                shared.fallback("harvest");
                if w.harvest == Fallback::Tempfail {
                    return Err(Opening::SharedStateUnavailable { harvest: true });
                }
            }
            if max.is_some() {
                shared.fallback("connections");
                if w.connections == Fallback::Tempfail {
                    return Err(Opening::SharedStateUnavailable { harvest: false });
                }
            }
            local()
        }
    }
}
