//! Decisions on the shared-state store's answers (`shared_state:`, docs/shared-state.md):
//! the hourly budget taken in the store, and the refusal of a counter whose store does not
//! answer under `when_unavailable: tempfail`.

use super::rcpt::{hourly_denial, HourlyAnswer};
use super::{Denial, DenialReason};
use crate::policy::flow::MailFlowPolicy;
use crate::shared_state::settings::Fallback;
use crate::smtp::reply::{Enhanced, Reply};

/// Decides a [`super::rcpt::RcptPermit::TakeHourly`] from the store's answer; without one, by
/// `when_unavailable.recipients_per_hour`: `local` takes from this node's count
/// (`take_local`), `tempfail` refuses with 451 4.3.0.
pub(crate) fn check_hourly_answer(
    p: &MailFlowPolicy,
    ip: std::net::IpAddr,
    answer: HourlyAnswer,
    fallback: crate::shared_state::settings::Fallback,
    take_local: &dyn Fn() -> bool,
) -> Result<(), Denial> {
    match (answer, fallback) {
        (HourlyAnswer::Taken, _) => Ok(()),
        (HourlyAnswer::Spent, _) => Err(hourly_denial(p, ip)),
        (HourlyAnswer::Unavailable, Fallback::Local) => match take_local() {
            true => Ok(()),
            false => Err(hourly_denial(p, ip)),
        },
        (HourlyAnswer::Unavailable, Fallback::Tempfail) => {
            Err(shared_unavailable("recipients_per_hour"))
        }
    }
}

/// 451 4.3.0 for a counter whose store does not answer under `when_unavailable: tempfail`.
pub(crate) fn shared_unavailable(counter: &'static str) -> Denial {
    Denial::new(
        Reply::new(
            451,
            Enhanced(4, 3, 0),
            "Temporary local problem, please try again later",
        ),
        DenialReason::SharedStateUnavailable { counter },
    )
}

/// 421 4.3.0 at connect for a counter (`connections`, `harvest`) whose store does not answer
/// under `when_unavailable: tempfail`; the session then closes.
pub(crate) fn store_unavailable_at_connect(hostname: &str, counter: &'static str) -> Denial {
    Denial::new(
        Reply::new(
            421,
            Enhanced(4, 3, 0),
            format!("{hostname} Temporary local problem, please try again later"),
        ),
        DenialReason::SharedStateUnavailable { counter },
    )
}
