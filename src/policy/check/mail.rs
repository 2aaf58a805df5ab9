//! `MAIL FROM`: every reply after the sequence checks (EHLO first, one transaction at a time),
//! in the order they run. When the policy asks for sender authentication (DNS verification,
//! SPF) the 250 waits for the lookups: [`MailPermit::Verify`], then
//! `sender::check_mail_verdict` decides.

use super::sender::{self, SenderCtx};
use super::{Denial, DenialReason, LimitKind, Permit};
use crate::auth::SenderRequest;
use crate::policy::flow::{ClientCert, MailFlowPolicy};
use crate::smtp::address::Mailbox;
use crate::smtp::command::{Body, MailParams};
use crate::smtp::reply::{Enhanced, Reply};

/// What the MAIL decision needs.
#[derive(Debug, Clone)]
pub(crate) struct MailCtx<'a> {
    /// The session's mail-flow policy.
    pub policy: &'a MailFlowPolicy,
    /// The client said EHLO (not HELO), so extensions were announced.
    pub esmtp: bool,
    /// The reverse-path (`None` is `<>`).
    pub from: Option<&'a Mailbox>,
    /// The ESMTP parameters.
    pub params: &'a MailParams,
    /// The client certificate of the active TLS session; `None` without TLS.
    pub tls: Option<&'a ClientCert>,
    /// Messages already queued on this connection.
    pub messages: u64,
    /// `MAIL FROM` commands since the last queued message (or the start), this one excluded.
    pub without_message: u64,
    /// Client address, HELO name and our host name, for sender authentication.
    pub sender: SenderCtx<'a>,
}

/// What a passing `MAIL FROM` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MailPermit {
    /// Answer now.
    Accept(Permit),
    /// Look the sender up first ([`SenderRequest`]), then decide with
    /// `sender::check_mail_verdict`; `permit` is the 250 if nothing refuses.
    Verify {
        /// What to look up.
        request: SenderRequest,
        /// The 250.
        permit: Permit,
    },
}

/// `MAIL FROM` commands a connection may send without a message being queued (each opens a
/// transaction, takes a MID and writes log lines; `RSET` or a refusal ends it): past this the
/// connection is closed with 421, so a client looping MAIL/RSET cannot fill the log's disk.
/// Postfix bounds the same loop with `smtpd_junk_command_limit` (100).
pub(crate) const MAX_TRANSACTIONS_WITHOUT_MESSAGE: u64 = 100;

/// The checks of `MAIL FROM`, in order; `Ok` carries the 250, or says the sender must be
/// authenticated first.
pub(crate) fn check_mail(ctx: &MailCtx) -> Result<MailPermit, Denial> {
    let permit = check_mail_syntax_and_limits(ctx)?;
    Ok(match sender::request(ctx.policy, ctx.from, &ctx.sender) {
        Some(request) => MailPermit::Verify { request, permit },
        None => MailPermit::Accept(permit),
    })
}

/// Everything `MAIL FROM` decides without DNS.
fn check_mail_syntax_and_limits(ctx: &MailCtx) -> Result<Permit, Denial> {
    let p = ctx.policy;
    if ctx.without_message >= MAX_TRANSACTIONS_WITHOUT_MESSAGE {
        return Err(Denial::new(
            Reply::new(
                421,
                Enhanced(4, 7, 0),
                "Too many transactions without a message, closing connection",
            ),
            DenialReason::TooManyTransactions {
                max: MAX_TRANSACTIONS_WITHOUT_MESSAGE,
            },
        ));
    }
    // After HELO no extension was announced, so none of their parameters may be used
    // (RFC 5321 §4.1.1.1, RFC 6152, RFC 6531).
    if !ctx.esmtp && *ctx.params != MailParams::default() {
        return Err(Denial::new(
            Reply::new(555, Enhanced(5, 5, 4), "MAIL parameters require EHLO"),
            DenialReason::ParamsNeedEhlo,
        ));
    }
    if ctx.tls.is_none()
        && ctx
            .from
            .is_some_and(|m| p.is_tls_mandatory_for(&m.address()))
    {
        return Err(Denial::new(
            Reply::new(
                530,
                Enhanced(5, 7, 0),
                "Must issue a STARTTLS command first",
            ),
            DenialReason::TlsMandatorySender,
        ));
    }
    if let Some(why) = p.client_cert_refusal(ctx.tls) {
        return Err(Denial::new(
            Reply::new(
                530,
                Enhanced(5, 7, 0),
                "A verified client certificate is required",
            ),
            DenialReason::ClientCert { why },
        ));
    }
    let limit = &p.max_messages_per_connection;
    if limit.is_exceeded_by(ctx.messages + 1) {
        return Err(limit_denial(
            p,
            &limit.reply,
            limit.max,
            LimitKind::MessagesPerConnection,
        ));
    }
    let size = &p.max_message_size;
    if let Some(declared) = ctx.params.size.filter(|d| size.is_exceeded_by(*d)) {
        return Err(limit_denial(
            p,
            &size.reply,
            size.max,
            LimitKind::DeclaredSize { declared },
        ));
    }
    if ctx.params.body == Some(Body::BinaryMime) {
        return Err(Denial::new(
            Reply::new(
                555,
                Enhanced(5, 5, 4),
                "BODY=BINARYMIME requires CHUNKING, which is not offered",
            ),
            DenialReason::BinaryMime,
        ));
    }
    if ctx.from.is_some_and(|m| m.flags.utf8) && !ctx.params.smtputf8 {
        return Err(needs_smtputf8());
    }
    Ok(Permit::with(Reply::new(
        250,
        Enhanced(2, 1, 0),
        "Sender ok",
    )))
}

/// A policy limit's own reply, with the limit for the log.
pub(super) fn limit_denial(
    p: &MailFlowPolicy,
    reply: &Reply,
    max: Option<u64>,
    kind: LimitKind,
) -> Denial {
    Denial::new(
        reply.clone(),
        DenialReason::Limit {
            kind,
            max: max.unwrap_or(0),
            policy: p.name.clone(),
        },
    )
}

/// A non-ASCII address without `SMTPUTF8` (RFC 6531).
pub(super) fn needs_smtputf8() -> Denial {
    Denial::new(
        Reply::new(
            553,
            Enhanced(5, 6, 7),
            "Non-ASCII address requires SMTPUTF8",
        ),
        DenialReason::NeedsSmtputf8,
    )
}

#[cfg(test)]
mod tests {
    use super::super::outcome;
    use super::*;
    use crate::policy::flow::TlsMode;
    use crate::smtp::address::parse_path;

    fn mailbox(s: &str) -> Mailbox {
        parse_path(s).unwrap().0.unwrap()
    }

    fn sender_ctx() -> SenderCtx<'static> {
        SenderCtx {
            peer_ip: "192.0.2.1".parse().unwrap(),
            helo: "client.test",
            host: "mx.test",
        }
    }

    /// The policies of the table ask for no sender authentication.
    fn accepted(p: MailPermit) -> Permit {
        match p {
            MailPermit::Accept(p) => p,
            MailPermit::Verify { .. } => panic!("no lookup expected"),
        }
    }

    #[test]
    fn mail_table() {
        let mut p = MailFlowPolicy::builtin_default("P");
        p.tls_mandatory_senders = vec!["@bank.example".into()];
        p.max_messages_per_connection.max = Some(2);
        p.max_message_size.max = Some(1000);
        let mut req = p.clone();
        req.tls = TlsMode::Required;
        req.tls_verify_client = true;

        let plain = mailbox("<a@other.example>");
        let bank = mailbox("<a@bank.example>");
        let utf8 = mailbox("<δ@other.example>");
        let none = MailParams::default();
        let big = MailParams {
            size: Some(1001),
            ..MailParams::default()
        };
        let fits = MailParams {
            size: Some(1000),
            ..MailParams::default()
        };
        let binary = MailParams {
            body: Some(Body::BinaryMime),
            ..MailParams::default()
        };
        let smtputf8 = MailParams {
            smtputf8: true,
            ..MailParams::default()
        };
        let verified = ClientCert::Verified("CN=a".into());
        let missing = ClientCert::Missing;

        type Row<'a> = (
            &'a MailFlowPolicy,
            bool,
            Option<&'a Mailbox>,
            &'a MailParams,
            Option<&'a ClientCert>,
            u64,
            (u16, &'a str, &'a str),
        );
        let table: Vec<Row> = vec![
            (
                &p,
                true,
                Some(&plain),
                &none,
                None,
                0,
                (250, "2.1.0", "permit"),
            ),
            (&p, true, None, &none, None, 0, (250, "2.1.0", "permit")),
            (
                &p,
                false,
                Some(&plain),
                &fits,
                None,
                0,
                (555, "5.5.4", "params_need_ehlo"),
            ),
            (
                &p,
                false,
                Some(&plain),
                &none,
                None,
                0,
                (250, "2.1.0", "permit"),
            ),
            (
                &p,
                true,
                Some(&bank),
                &none,
                None,
                0,
                (530, "5.7.0", "tls_required"),
            ),
            (
                &p,
                true,
                Some(&bank),
                &none,
                Some(&ClientCert::NotRequested),
                0,
                (250, "2.1.0", "permit"),
            ),
            (
                &req,
                true,
                Some(&plain),
                &none,
                Some(&missing),
                0,
                (530, "5.7.0", "client_cert"),
            ),
            (
                &req,
                true,
                Some(&plain),
                &none,
                Some(&verified),
                0,
                (250, "2.1.0", "permit"),
            ),
            (
                &p,
                true,
                Some(&plain),
                &none,
                None,
                1,
                (250, "2.1.0", "permit"),
            ),
            (
                &p,
                true,
                Some(&plain),
                &none,
                None,
                2,
                (452, "4.5.3", "limit"),
            ),
            (
                &p,
                true,
                Some(&plain),
                &big,
                None,
                0,
                (552, "5.3.4", "size"),
            ),
            (
                &p,
                true,
                Some(&plain),
                &fits,
                None,
                0,
                (250, "2.1.0", "permit"),
            ),
            (
                &p,
                true,
                Some(&plain),
                &binary,
                None,
                0,
                (555, "5.5.4", "binarymime"),
            ),
            (
                &p,
                true,
                Some(&utf8),
                &none,
                None,
                0,
                (553, "5.6.7", "smtputf8"),
            ),
            (
                &p,
                true,
                Some(&utf8),
                &smtputf8,
                None,
                0,
                (250, "2.1.0", "permit"),
            ),
            // The order: the TLS sender rule before the message limit before the size.
            (
                &p,
                true,
                Some(&bank),
                &big,
                None,
                2,
                (530, "5.7.0", "tls_required"),
            ),
            (
                &p,
                true,
                Some(&plain),
                &big,
                None,
                2,
                (452, "4.5.3", "limit"),
            ),
        ];
        for (i, (policy, esmtp, from, params, tls, messages, (code, enh, label))) in
            table.into_iter().enumerate()
        {
            let ctx = MailCtx {
                policy,
                esmtp,
                from,
                params,
                tls,
                messages,
                without_message: 0,
                sender: sender_ctx(),
            };
            assert_eq!(
                outcome(&check_mail(&ctx).map(accepted)),
                (code, enh.to_string(), label),
                "row {i}"
            );
        }
    }

    #[test]
    fn declared_size_log_text() {
        let p = MailFlowPolicy::builtin_default("THROTTLED");
        let params = MailParams {
            size: Some(20_000_000),
            ..MailParams::default()
        };
        let d = check_mail(&MailCtx {
            policy: &p,
            esmtp: true,
            from: None,
            params: &params,
            tls: None,
            messages: 0,
            without_message: 0,
            sender: sender_ctx(),
        })
        .unwrap_err();
        assert_eq!(
            d.reason.to_string(),
            "max_message_size 10485760 < SIZE=20000000 (policy THROTTLED)"
        );
    }

    /// Found by an outsider: MAIL/RSET in a loop took a MID and wrote two log lines each,
    /// without end (a million lines in 5 s). The 101st MAIL without a message closes.
    #[test]
    fn a_loop_of_transactions_without_a_message_is_closed() {
        let p = MailFlowPolicy::builtin_default("ACCEPTED");
        let params = MailParams::default();
        let at = |without_message| {
            check_mail(&MailCtx {
                policy: &p,
                esmtp: true,
                from: None,
                params: &params,
                tls: None,
                messages: 3,
                without_message,
                sender: sender_ctx(),
            })
            .map(accepted)
        };
        assert_eq!(
            outcome(&at(MAX_TRANSACTIONS_WITHOUT_MESSAGE - 1)),
            (250, "2.1.0".to_string(), "permit")
        );
        let closed = at(MAX_TRANSACTIONS_WITHOUT_MESSAGE);
        assert_eq!(outcome(&closed), (421, "4.7.0".to_string(), "transactions"));
        assert_eq!(
            closed.unwrap_err().reason.to_string(),
            "100 transactions without a message"
        );
    }
}
