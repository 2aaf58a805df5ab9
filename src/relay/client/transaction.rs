//! The mail transaction: RSET when needed, MAIL, RCPT (pipelined when offered), DATA; one
//! outcome per recipient.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::mail_log::Event;
use crate::smtp::reply::{Enhanced, Reply};

use super::body::BodySource;
use super::wire::WireError;
use super::{Connection, DeliveryLog};

/// One message transaction to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Message id (for the log).
    pub mid: u64,
    /// Envelope sender; `""` = null sender.
    pub from: String,
    /// Recipients: (RID, address).
    pub rcpts: Vec<(u32, String)>,
    /// The message's queue file (`queue/MID.mail`, the body after its header), or a file
    /// holding only the body; CRLF lines, not dot-stuffed.
    pub body_path: PathBuf,
    /// The same bytes in memory when the caller has them (the file is then not read).
    pub body: Option<std::sync::Arc<Vec<u8>>>,
    /// Size in bytes (for `SIZE=`).
    pub size: u64,
    /// The envelope needs SMTPUTF8.
    pub smtputf8: bool,
    /// The body is 8-bit MIME (RFC 6152): `BODY=8BITMIME` when the server offers it.
    pub eightbitmime: bool,
}

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// Accepted: the reply to the final `.`.
    Delivered(Reply),
    /// Try again later (4xx, or the connection was lost).
    TempFail(Reply),
    /// Bounce (5xx).
    PermFail(Reply),
}

impl RcptOutcome {
    /// The reply behind the outcome.
    pub fn reply(&self) -> &Reply {
        match self {
            RcptOutcome::Delivered(r) | RcptOutcome::TempFail(r) | RcptOutcome::PermFail(r) => r,
        }
    }
}

/// The result of [`Connection::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageResult {
    /// Message id.
    pub mid: u64,
    /// One outcome per recipient, in the order given.
    pub rcpts: Vec<(u32, RcptOutcome)>,
    /// The connection broke (I/O error, timeout, 421): do not use it again.
    pub connection_lost: bool,
}

impl Connection {
    /// Sends one message: RSET first if an earlier transaction was left open, then
    /// MAIL, RCPT (pipelined when offered), DATA and the body.
    pub async fn send(&mut self, msg: &OutgoingMessage, log: &dyn DeliveryLog) -> MessageResult {
        let n = msg.rcpts.len();
        let mut out: Vec<Option<RcptOutcome>> = vec![None; n];
        let all = |out: Vec<Option<RcptOutcome>>, o: RcptOutcome, lost: bool| MessageResult {
            mid: msg.mid,
            rcpts: msg
                .rcpts
                .iter()
                .zip(out)
                .map(|((rid, _), got)| (*rid, got.unwrap_or_else(|| o.clone())))
                .collect(),
            connection_lost: lost,
        };
        let peer = self.remote.ip();
        if self.broken {
            let r = Reply::new(421, Enhanced(4, 4, 2), "connection is no longer usable");
            return all(out, RcptOutcome::TempFail(r), true);
        }
        if self.open_transaction {
            match self
                .wire
                .command("RSET\r\n", self.timeouts.mail, "the reply to RSET")
                .await
            {
                Ok(r) if r.code / 100 == 2 => {}
                Ok(r) => {
                    self.broken = true;
                    let r = Reply::new(451, Enhanced(4, 4, 2), format!("{peer} refused RSET: {r}"));
                    return all(out, RcptOutcome::TempFail(r), true);
                }
                Err(e) => {
                    self.broken = true;
                    return all(out, RcptOutcome::TempFail(lost_reply(peer, &e)), true);
                }
            }
        }
        self.transactions += 1;

        if let Some(max) = self.caps.size.filter(|m| *m > 0) {
            if msg.size > max {
                let r = Reply::new(
                    552,
                    Enhanced(5, 3, 4),
                    format!(
                        "message size {} exceeds the fixed maximum message size of {peer} ({max})",
                        msg.size
                    ),
                );
                return all(out, RcptOutcome::PermFail(r), false);
            }
        }
        if msg.smtputf8 && !self.caps.smtputf8 {
            let r = Reply::new(
                553,
                Enhanced(5, 6, 7),
                format!("{peer} does not support SMTPUTF8, which this message needs"),
            );
            return all(out, RcptOutcome::PermFail(r), false);
        }
        let bad_addr = |a: &str| {
            a.bytes()
                .any(|b| b.is_ascii_control() || b == b'<' || b == b'>')
        };
        if bad_addr(&msg.from) {
            let r = Reply::new(553, Enhanced(5, 1, 7), "malformed envelope sender");
            return all(out, RcptOutcome::PermFail(r), false);
        }
        for (i, (_, rcpt)) in msg.rcpts.iter().enumerate() {
            if bad_addr(rcpt) {
                out[i] = Some(RcptOutcome::PermFail(Reply::new(
                    553,
                    Enhanced(5, 1, 3),
                    "malformed recipient address",
                )));
            }
        }
        let opened = match &msg.body {
            Some(bytes) => Ok(BodySource::Memory(bytes.clone())),
            // One hand-off to the blocking pool: open, read the header, seek to the body.
            None => {
                let path = msg.body_path.clone();
                tokio::task::spawn_blocking(move || crate::spool::queue_file::open_body(&path))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)))
                    .map(|f| BodySource::File(tokio::fs::File::from_std(f)))
            }
        };
        let body = match opened {
            Ok(b) => b,
            Err(e) => {
                let r = Reply::new(
                    451,
                    Enhanced(4, 3, 0),
                    format!("local error: cannot read {}: {e}", msg.body_path.display()),
                );
                return all(out, RcptOutcome::TempFail(r), false);
            }
        };
        if out.iter().all(Option::is_some) {
            return all(out, RcptOutcome::TempFail(Reply::plain(451, "")), false);
        }

        log.log(Event::DeliveryStart {
            dcid: self.dcid,
            mid: msg.mid,
            rids: msg
                .rcpts
                .iter()
                .zip(&out)
                .filter(|(_, refused)| refused.is_none())
                .map(|((rid, _), _)| *rid)
                .collect(),
        });
        match self.transaction(msg, body, &mut out, log).await {
            Ok(saw_421) => {
                if saw_421 {
                    self.broken = true;
                }
                let r = Reply::new(421, Enhanced(4, 4, 2), "connection closed by server");
                all(out, RcptOutcome::TempFail(r), saw_421)
            }
            Err(e) => {
                self.broken = true;
                let r = match e {
                    TxError::Wire(e) => lost_reply(peer, &e),
                    TxError::Local(e) => Reply::new(
                        451,
                        Enhanced(4, 3, 0),
                        format!("local error reading {}: {e}", msg.body_path.display()),
                    ),
                };
                all(out, RcptOutcome::TempFail(r), true)
            }
        }
    }

    /// The transaction proper; fills `out` for every recipient with a final answer.
    /// Returns whether the server said 421 (it is closing the connection).
    async fn transaction(
        &mut self,
        msg: &OutgoingMessage,
        body: BodySource,
        out: &mut [Option<RcptOutcome>],
        log: &dyn DeliveryLog,
    ) -> Result<bool, TxError> {
        let t = self.timeouts.clone();
        let mut mail = format!("MAIL FROM:<{}>", msg.from);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", msg.size));
        }
        if msg.eightbitmime && self.caps.eightbitmime {
            mail.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        // Recipients still in play (not refused locally): index into msg.rcpts.
        let wanted: Vec<usize> = (0..msg.rcpts.len()).filter(|&i| out[i].is_none()).collect();
        let rcpt_cmd = |i: usize| format!("RCPT TO:<{}>\r\n", msg.rcpts[i].1);
        let mut saw_421 = false;
        let mut accepted: Vec<usize> = Vec::new();
        // Until the reply to the final dot; cleared below only on a path that reads it.
        self.open_transaction = true;

        let data_reply = if self.caps.pipelining {
            let mut batch = mail.clone();
            for &i in &wanted {
                batch.push_str(&rcpt_cmd(i));
            }
            batch.push_str("DATA\r\n");
            self.wire.write(batch.as_bytes(), t.mail, "MAIL").await?;
            let mail_reply = self.wire.read_reply(t.mail, "the reply to MAIL").await?;
            saw_421 |= mail_reply.code == 421;
            let mail_ok = mail_reply.code / 100 == 2;
            for &i in &wanted {
                let r = self.wire.read_reply(t.rcpt, "the reply to RCPT").await?;
                saw_421 |= r.code == 421;
                if !mail_ok {
                    out[i] = Some(failure(&mail_reply));
                } else if r.code / 100 == 2 {
                    accepted.push(i);
                } else {
                    out[i] = Some(failure(&r));
                }
            }
            let data = self
                .wire
                .read_reply(t.data_init, "the reply to DATA")
                .await?;
            saw_421 |= data.code == 421;
            if accepted.is_empty() {
                if data.code == 354 {
                    // RFC 2920 §3.1: the server took DATA anyway; send an empty message.
                    self.wire.write(b".\r\n", t.data_block, "DATA").await?;
                    let r = self
                        .wire
                        .read_reply(t.data_term, "the reply to end of DATA")
                        .await?;
                    saw_421 |= r.code == 421;
                    self.open_transaction = false;
                }
                return Ok(saw_421);
            }
            data
        } else {
            let mail_reply = self
                .wire
                .command(&mail, t.mail, "the reply to MAIL")
                .await?;
            if mail_reply.code / 100 != 2 {
                for &i in &wanted {
                    out[i] = Some(failure(&mail_reply));
                }
                // MAIL refused: no transaction was started.
                self.open_transaction = false;
                return Ok(mail_reply.code == 421);
            }
            for &i in &wanted {
                let r = self
                    .wire
                    .command(&rcpt_cmd(i), t.rcpt, "the reply to RCPT")
                    .await?;
                if r.code / 100 == 2 {
                    accepted.push(i);
                } else {
                    out[i] = Some(failure(&r));
                    if r.code == 421 {
                        return Ok(true);
                    }
                }
            }
            if accepted.is_empty() {
                return Ok(false);
            }
            self.wire
                .command("DATA\r\n", t.data_init, "the reply to DATA")
                .await?
        };

        if data_reply.code != 354 {
            for &i in &accepted {
                out[i] = Some(failure(&data_reply));
            }
            return Ok(saw_421 || data_reply.code == 421);
        }
        self.send_body(body, t.data_block).await?;
        let done = self
            .wire
            .read_reply(t.data_term, "the reply to end of DATA")
            .await?;
        self.open_transaction = false;
        if done.code / 100 == 2 {
            for &i in &accepted {
                out[i] = Some(RcptOutcome::Delivered(done.clone()));
            }
            log.log(Event::MessageDone {
                dcid: self.dcid,
                mid: msg.mid,
                rids: accepted.iter().map(|&i| msg.rcpts[i].0).collect(),
            });
        } else {
            for &i in &accepted {
                out[i] = Some(failure(&done));
            }
        }
        Ok(saw_421 || done.code == 421)
    }
}

/// Errors inside a transaction.
#[derive(Debug)]
pub(super) enum TxError {
    /// The connection failed.
    Wire(WireError),
    /// The spool file could not be read.
    Local(io::Error),
}

impl From<WireError> for TxError {
    fn from(e: WireError) -> Self {
        TxError::Wire(e)
    }
}

/// The outcome a failure reply gives a recipient: 5xx bounces, anything else is retried.
fn failure(r: &Reply) -> RcptOutcome {
    if r.code / 100 == 5 {
        RcptOutcome::PermFail(r.clone())
    } else {
        RcptOutcome::TempFail(r.clone())
    }
}

/// How the text of [`lost_reply`] starts.
const LOST: &str = "lost connection with ";

/// The reply recorded for recipients left without an answer when the connection failed.
fn lost_reply(peer: IpAddr, e: &WireError) -> Reply {
    Reply::new(451, Enhanced(4, 4, 2), format!("{LOST}{peer}: {e}"))
}

/// True for the reply [`lost_reply`] made up: the server never sent its code, so the log
/// must not show one.
pub(crate) fn is_lost_connection(r: &Reply) -> bool {
    r.text.starts_with(LOST)
}
