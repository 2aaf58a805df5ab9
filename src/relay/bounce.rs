//! Queues a DSN for bounced recipients through the same spool and queue.

use std::sync::Arc;

use crate::envelope::Envelope;
use crate::relay::dsn::{header_block, Dsn, FailedRecipient};
use crate::spool::Spool;

/// Largest part of the original header block copied into a DSN.
const MAX_HEADERS: usize = 64 * 1024;

/// Builds and commits a DSN to the original sender; `Ok(None)` for a null sender (double bounce).
pub(crate) async fn send_dsn(
    spool: &Arc<Spool>,
    hostname: &str,
    original: &Envelope,
    failed: &[FailedRecipient],
) -> Result<Option<u64>, String> {
    if original.from.is_empty() {
        return Ok(None);
    }
    let spool = spool.clone();
    let hostname = hostname.to_string();
    let original = original.clone();
    let failed = failed.to_vec();
    tokio::task::spawn_blocking(move || {
        let head = crate::spool::queue_file::read_body_head(
            &spool.message_path(original.mid),
            MAX_HEADERS as u64,
        )
        .unwrap_or_default();
        let mid = spool.next_mid().map_err(|e| e.to_string())?;
        let now = chrono::Local::now();
        let arrival = chrono::DateTime::from_timestamp(original.received_unix as i64, 0)
            .map(|t| t.to_rfc2822())
            .unwrap_or_default();
        let message_id = format!("dsn.{mid}.{}@{hostname}", original.mid);
        let dsn = Dsn {
            reporting_mta: &hostname,
            to: &original.from,
            original_mid: original.mid,
            arrival_date: &arrival,
            date: &now.to_rfc2822(),
            message_id: &message_id,
            failed: &failed,
            original_headers: header_block(&head, MAX_HEADERS),
        };
        let body = dsn.render();
        let mut inc = spool.begin(mid);
        inc.write(&body).map_err(|e| e.to_string())?;
        let env = Envelope {
            mid,
            icid: 0,
            listener: "bounce".into(),
            sender_group: "-".into(),
            policy: "-".into(),
            peer_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            helo: hostname.clone(),
            from: String::new(),
            rcpts: vec![original.from.clone()],
            received_unix: now.timestamp().max(0) as u64,
            tls: None,
            // 8-bit original headers or replies make the DSN 8-bit (RFC 6152).
            body_8bitmime: !body.is_ascii(),
        };
        spool.commit(inc, &env).map_err(|e| e.to_string())?;
        Ok(Some(mid))
    })
    .await
    .map_err(|e| format!("DSN task failed: {e}"))?
}

/// Queues an alert mail to the administrator about a required-TLS failure.
pub(crate) async fn send_alert(
    spool: &Arc<Spool>,
    hostname: &str,
    to: &str,
    domain: &str,
    reason: &str,
) -> Result<u64, String> {
    let spool = spool.clone();
    let (hostname, to, domain, reason) = (
        hostname.to_string(),
        to.to_string(),
        domain.to_string(),
        reason.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let mid = spool.next_mid().map_err(|e| e.to_string())?;
        let now = chrono::Local::now();
        let body = format!(
            "From: mxgate <MAILER-DAEMON@{hostname}>\r\nTo: <{to}>\r\nSubject: [mxgate] required TLS to {domain} failed\r\n\
             Date: {}\r\nMessage-ID: <alert.{mid}@{hostname}>\r\nAuto-Submitted: auto-generated\r\n\r\n\
             mxgate on {hostname} could not deliver to {domain}: its destination controls require TLS,\r\n\
             and TLS could not be negotiated or verified:\r\n\r\n  {}\r\n\r\n\
             Mail for {domain} stays queued and is retried. See the mail log (DCID lines) and\r\n\
             mxgate_required_tls_failures_total. Further alerts for {domain} are held back for the configured interval.\r\n",
            now.to_rfc2822(),
            crate::mail_log::printable(&reason)
        );
        let mut inc = spool.begin(mid);
        inc.write(body.as_bytes()).map_err(|e| e.to_string())?;
        let env = Envelope {
            mid,
            icid: 0,
            listener: "alert".into(),
            sender_group: "-".into(),
            policy: "-".into(),
            peer_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            helo: hostname.clone(),
            from: String::new(),
            rcpts: vec![to],
            received_unix: now.timestamp().max(0) as u64,
            tls: None,
            body_8bitmime: !body.is_ascii(),
        };
        spool.commit(inc, &env).map_err(|e| e.to_string())?;
        Ok(mid)
    })
    .await
    .map_err(|e| format!("alert task failed: {e}"))?
}
