//! The envelope stored beside each queued message, in a line-based text form an admin can read.

use std::net::IpAddr;

/// Everything about a queued message except its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Message id.
    pub mid: u64,
    /// Inbound connection id.
    pub icid: u64,
    /// Listener it arrived on.
    pub listener: String,
    /// HAT sender group of the client.
    pub sender_group: String,
    /// Mail-flow policy applied.
    pub policy: String,
    /// Client address.
    pub peer_ip: IpAddr,
    /// EHLO/HELO name given by the client.
    pub helo: String,
    /// Envelope sender; empty for the null sender `<>`.
    pub from: String,
    /// Accepted recipients in RID order.
    pub rcpts: Vec<String>,
    /// Arrival time, seconds since the Unix epoch.
    pub received_unix: u64,
    /// `protocol cipher` when received over TLS.
    pub tls: Option<String>,
}

/// An envelope file that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("envelope: {0}")]
pub struct EnvelopeError(pub String);

const MAGIC: &str = "mxgate-envelope 1";

impl Envelope {
    /// Serialises to the text form (`key value` per line; values never contain newlines).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{MAGIC}\nmid {}\nicid {}\nlistener {}\nsender_group {}\npolicy {}\npeer_ip {}\nhelo {}\nreceived {}\n",
            self.mid,
            self.icid,
            self.listener,
            self.sender_group,
            self.policy,
            self.peer_ip,
            one_line(&self.helo),
            self.received_unix
        );
        if let Some(t) = &self.tls {
            s.push_str(&format!("tls {}\n", one_line(t)));
        }
        s.push_str(&format!("from {}\n", one_line(&self.from)));
        for r in &self.rcpts {
            s.push_str(&format!("rcpt {}\n", one_line(r)));
        }
        s.push_str("end\n");
        s
    }

    /// Parses the text form; the final `end` line proves the file is complete.
    pub fn parse(text: &str) -> Result<Envelope, EnvelopeError> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(EnvelopeError("missing header line".into()));
        }
        let mut e = Envelope {
            mid: 0,
            icid: 0,
            listener: String::new(),
            sender_group: String::new(),
            policy: String::new(),
            peer_ip: IpAddr::from([0, 0, 0, 0]),
            helo: String::new(),
            from: String::new(),
            rcpts: Vec::new(),
            received_unix: 0,
            tls: None,
        };
        let mut complete = false;
        for line in lines {
            if line == "end" {
                complete = true;
                break;
            }
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| EnvelopeError(format!("bad number in {line:?}")))
            };
            match k {
                "mid" => e.mid = num(v)?,
                "icid" => e.icid = num(v)?,
                "received" => e.received_unix = num(v)?,
                "listener" => e.listener = v.into(),
                "sender_group" => e.sender_group = v.into(),
                "policy" => e.policy = v.into(),
                "peer_ip" => {
                    e.peer_ip = v
                        .parse()
                        .map_err(|_| EnvelopeError(format!("bad ip {v:?}")))?
                }
                "helo" => e.helo = v.into(),
                "tls" => e.tls = Some(v.into()),
                "from" => e.from = v.into(),
                "rcpt" => e.rcpts.push(v.into()),
                _ => {} // unknown keys are kept forward-compatible
            }
        }
        if !complete {
            return Err(EnvelopeError("truncated (no end line)".into()));
        }
        Ok(e)
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_envelope_is_refused() {
        let e = Envelope {
            mid: 5,
            icid: 2,
            listener: "l".into(),
            sender_group: "G".into(),
            policy: "P".into(),
            peer_ip: "2001:db8::1".parse().unwrap(),
            helo: "h".into(),
            from: String::new(),
            rcpts: vec!["a@b".into(), "\"x y\"@c".into()],
            received_unix: 9,
            tls: Some("TLSv1.3 TLS13_AES_128_GCM_SHA256".into()),
        };
        let t = e.to_text();
        assert_eq!(Envelope::parse(&t).unwrap(), e);
        let cut = &t[..t.len() - 4];
        assert!(Envelope::parse(cut).is_err());
    }
}
