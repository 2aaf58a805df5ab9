//! Between the greeting and `MAIL FROM`: whether STARTTLS is offered, and the `tls: required`
//! gate that refuses mail commands until TLS is active (docs/tls.md).
//!
//! An invalid EHLO/HELO name is a syntax error of the parser (`src/smtp/command.rs`, checked
//! by `src/smtp/helo.rs`), not a policy decision.

use super::{Denial, DenialReason, Permit};
use crate::policy::flow::TlsMode;
use crate::smtp::command::Command;
use crate::smtp::reply::{Enhanced, Reply};

/// What the TLS decisions need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeloCtx {
    /// The policy's TLS mode.
    pub tls_mode: TlsMode,
    /// TLS is active on this connection.
    pub tls_active: bool,
    /// A certificate is loaded, so STARTTLS can work.
    pub tls_available: bool,
}

/// True when EHLO announces STARTTLS and STARTTLS may start.
pub(crate) fn is_starttls_offered(ctx: &HeloCtx) -> bool {
    ctx.tls_mode != TlsMode::Off && !ctx.tls_active && ctx.tls_available
}

/// `STARTTLS`: 220 when offered, else 502 (a bad command).
pub(crate) fn check_starttls(ctx: &HeloCtx) -> Result<Permit, Denial> {
    if !is_starttls_offered(ctx) {
        return Err(Denial::new(
            Reply::new(502, Enhanced(5, 5, 1), "STARTTLS not available"),
            DenialReason::StartTlsUnavailable,
        ));
    }
    Ok(Permit::with(Reply::new(
        220,
        Enhanced(2, 0, 0),
        "Ready to start TLS",
    )))
}

/// Under `tls: required`, only EHLO, HELO, NOOP, RSET, QUIT and STARTTLS work before TLS.
pub(crate) fn check_tls_gate(ctx: &HeloCtx, cmd: &Command) -> Result<Permit, Denial> {
    let allowed = matches!(
        cmd,
        Command::Ehlo(_)
            | Command::Helo(_)
            | Command::Noop
            | Command::Rset
            | Command::Quit
            | Command::StartTls
    );
    if ctx.tls_mode == TlsMode::Required && !ctx.tls_active && !allowed {
        return Err(Denial::new(
            Reply::new(
                530,
                Enhanced(5, 7, 0),
                "Must issue a STARTTLS command first",
            ),
            DenialReason::TlsRequired,
        ));
    }
    Ok(Permit::later())
}

#[cfg(test)]
mod tests {
    use super::super::outcome;
    use super::*;

    fn ctx(tls_mode: TlsMode, tls_active: bool, tls_available: bool) -> HeloCtx {
        HeloCtx {
            tls_mode,
            tls_active,
            tls_available,
        }
    }

    #[test]
    fn starttls_table() {
        use TlsMode::*;
        // (mode, active, certificate loaded) -> (code, enhanced, label)
        let table = [
            (Preferred, false, true, (220, "2.0.0", "permit")),
            (Required, false, true, (220, "2.0.0", "permit")),
            (Off, false, true, (502, "5.5.1", "starttls_unavailable")),
            (
                Preferred,
                false,
                false,
                (502, "5.5.1", "starttls_unavailable"),
            ),
            (
                Preferred,
                true,
                true,
                (502, "5.5.1", "starttls_unavailable"),
            ),
        ];
        for (i, (mode, active, avail, (code, enh, label))) in table.into_iter().enumerate() {
            let c = ctx(mode, active, avail);
            assert_eq!(
                outcome(&check_starttls(&c)),
                (code, enh.to_string(), label),
                "row {i}"
            );
            assert_eq!(is_starttls_offered(&c), code == 220, "row {i}");
        }
    }

    #[test]
    fn tls_gate_table() {
        use TlsMode::*;
        let mail = Command::Data;
        let ehlo = Command::Ehlo("a.example".into());
        // (mode, active, command) -> (code, enhanced, label)
        let table = [
            (Required, false, &mail, (530, "5.7.0", "tls_required")),
            (
                Required,
                false,
                &Command::Help,
                (530, "5.7.0", "tls_required"),
            ),
            (Required, false, &ehlo, (0, "", "permit")),
            (Required, false, &Command::StartTls, (0, "", "permit")),
            (Required, false, &Command::Quit, (0, "", "permit")),
            (Required, true, &mail, (0, "", "permit")),
            (Preferred, false, &mail, (0, "", "permit")),
            (Off, false, &mail, (0, "", "permit")),
        ];
        for (i, (mode, active, cmd, (code, enh, label))) in table.into_iter().enumerate() {
            let got = outcome(&check_tls_gate(&ctx(mode, active, true), cmd));
            assert_eq!(got, (code, enh.to_string(), label), "row {i}");
        }
    }
}
