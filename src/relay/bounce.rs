//! Queues a DSN for bounced recipients through the same spool and queue.

use std::io::Read;
use std::sync::Arc;

use crate::relay::dsn::{header_block, Dsn, FailedRecipient};
use crate::spool::{Envelope, Spool};

/// Largest part of the original header block copied into a DSN.
const MAX_HEADERS: usize = 64 * 1024;

/// Builds and commits a DSN to the original sender; `Ok(None)` for a null sender (double bounce).
pub async fn send_dsn(
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
        let mut head = Vec::new();
        if let Ok(f) = std::fs::File::open(spool.message_path(original.mid)) {
            let _ = f.take(MAX_HEADERS as u64).read_to_end(&mut head);
        }
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
        };
        spool.commit(inc, &env).map_err(|e| e.to_string())?;
        Ok(Some(mid))
    })
    .await
    .map_err(|e| format!("DSN task failed: {e}"))?
}
