//! Unit tests of the event texts and the renderer.

use super::*;
use crate::config::model::MailLogFormat;
use crate::policy::check::{DenialReason, LimitKind};

#[test]
fn esa_lines() {
    let e = Event::NewIcid {
        icid: 7,
        listener: "inbound".into(),
        local_ip: "127.0.0.1".parse().unwrap(),
        peer_ip: "192.0.2.1".parse().unwrap(),
        rdns_host: "mail.example.com".into(),
        verified: true,
    };
    assert_eq!(
        e.text(),
        "New SMTP ICID 7 interface inbound (127.0.0.1) address 192.0.2.1 reverse dns host mail.example.com verified yes"
    );
    let line = render(
        &Event::Queued { mid: 3 },
        MailLogFormat::Text,
        "Tue Apr 17 00:57:53 2018",
    );
    assert_eq!(
        line,
        "Tue Apr 17 00:57:53 2018 Info: MID 3 queued for delivery\n"
    );
    let sub = Event::Subject {
        mid: 1,
        subject: "a\r\nb'c".into(),
    };
    assert_eq!(sub.text(), "MID 1 Subject 'a  b\\'c'");
}

/// Lines in ESA's families use ESA's own forms; mxgate's own lines start with `mxgate:`.
#[test]
fn trust_15_lines_follow_esa_forms() {
    let rcpt = Event::Refused {
        icid: 5,
        mid: Some(7),
        what: "RCPT TO: <a@example.com>".into(),
        reason: DenialReason::Limit {
            kind: LimitKind::RecipientsPerMessage,
            max: 2,
            policy: "THROTTLED".into(),
        },
    };
    assert_eq!(
        rcpt.text(),
        "mxgate: ICID 5 MID 7 RCPT TO: <a@example.com> refused: max_recipients_per_message 2 (policy THROTTLED)"
    );
    let mail = Event::Refused {
        icid: 5,
        mid: None,
        what: "MAIL FROM: <a@example.com>".into(),
        reason: DenialReason::TlsMandatorySender,
    };
    assert_eq!(
        mail.text(),
        "mxgate: ICID 5 MAIL FROM: <a@example.com> refused: tls_mandatory_senders"
    );
    let failed = Event::ReceivingFailed {
        mid: 7,
        icid: 5,
        reason: ReceivingFailure::TooBig,
    };
    assert_eq!(
        failed.text(),
        "ICID 5 Receiving Failed: Message size exceeds limit"
    );
    let aborted = Event::MessageFinished {
        mid: 7,
        how: "aborted".into(),
    };
    assert_eq!(aborted.text(), "Message finished MID 7 aborted");
    assert_eq!(
        Event::PreGreet { icid: 5 }.text(),
        "mxgate: ICID 5 pre-greeting traffic, rejected"
    );
    assert_eq!(
        Event::StartTlsInjection { icid: 5, bytes: 9 }.text(),
        "mxgate: ICID 5 discarded 9 bytes pipelined after STARTTLS"
    );
    let note = |text: &str| Event::Note {
        level: Level::Info,
        text: text.into(),
    };
    assert_eq!(
        note("DCID 3 MX host mx.example preference 10 for route host example.com").text(),
        "mxgate: DCID 3 MX host mx.example preference 10 for route host example.com"
    );
    assert_eq!(
        note("MID 7 double bounce").text(),
        "mxgate: MID 7 double bounce"
    );
    assert_eq!(note("mxgate stopped").text(), "mxgate stopped");
}

#[test]
fn json_lines_are_one_object() {
    let line = render(&Event::Lost { icid: 9 }, MailLogFormat::Json, "T");
    assert_eq!(
        line,
        "{\"time\":\"T\",\"level\":\"Info\",\"event\":\"lost\",\"text\":\"ICID 9 lost\"}\n"
    );
}

#[test]
fn timestamp_shape() {
    let t = timestamp();
    assert_eq!(t.len(), 24, "{t}");
}

/// DHAP: our `refused:` line, and ESA's own drop line (its wording from an ESA mail log).
#[test]
fn dhap_lines() {
    let refused = Event::Refused {
        icid: 7,
        mid: Some(12),
        what: "RCPT TO: <x@example.com>".into(),
        reason: DenialReason::Dhap {
            max: 25,
            ip: "198.51.100.7".parse().unwrap(),
            policy: "ACCEPTED".into(),
            reply: Box::new(crate::smtp::reply::Reply::new(
                550,
                crate::smtp::reply::Enhanced(5, 7, 1),
                "Too many invalid recipients",
            )),
        },
    };
    assert_eq!(
        refused.text(),
        "mxgate: ICID 7 MID 12 RCPT TO: <x@example.com> refused: max_invalid_recipients_per_hour 25 \
         for 198.51.100.7 (policy ACCEPTED) -> 550 5.7.1 Too many invalid recipients"
    );
    let drop = |rdns_host: Option<&str>| Event::DhapDrop {
        icid: 7,
        peer_ip: "198.51.100.7".parse().unwrap(),
        rdns_host: rdns_host.map(str::to_string),
        limit: 25,
        sender_group: "ALL".into(),
        listener: "inbound".into(),
    };
    assert_eq!(
        drop(Some("mail.example.net")).text(),
        "Dropping connection due to potential Directory Harvest Attack from \
         host=('198.51.100.7', 'mail.example.net'), dhap_limit=25, sender_group=ALL, \
         listener=inbound, reverse_dns=198.51.100.7"
    );
    assert_eq!(
        drop(None).text(),
        "Dropping connection due to potential Directory Harvest Attack from \
         host=('198.51.100.7', '198.51.100.7'), dhap_limit=25, sender_group=ALL, \
         listener=inbound, reverse_dns=198.51.100.7"
    );
    assert_eq!(drop(None).level(), Level::Info);
    let json = render(&drop(None), MailLogFormat::Json, "T");
    assert!(
        json.starts_with("{\"time\":\"T\",\"level\":\"Info\",\"event\":\"dhap_drop\",\"text\":\"Dropping connection"),
        "{json}"
    );
}
