//! The envelope stored beside each queued message, in a line-based text form an admin can read.

use std::net::IpAddr;

use crate::envelope::Envelope;

/// An envelope file that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("envelope: {0}")]
pub struct EnvelopeError(pub String);

const MAGIC: &str = "mxgate-envelope 1";

impl Envelope {
    /// Serialises to the text form (`key value` per line; values never contain newlines).
    pub(crate) fn to_text(&self) -> String {
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
        if self.body_8bitmime {
            s.push_str("body 8BITMIME\n");
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
            body_8bitmime: false,
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
                // Envelopes written before this key existed have none: 7-bit, as then relayed.
                "body" => e.body_8bitmime = v.eq_ignore_ascii_case("8BITMIME"),
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
            body_8bitmime: false,
        };
        let t = e.to_text();
        assert_eq!(Envelope::parse(&t).unwrap(), e);
        let cut = &t[..t.len() - 4];
        assert!(Envelope::parse(cut).is_err());
    }

    /// `BODY=8BITMIME` survives the spool; an envelope written before the key existed still
    /// reads (as 7-bit).
    #[test]
    fn trust_23_body_8bitmime_is_stored_and_old_envelopes_still_read() {
        let mut e = Envelope::parse(
            "mxgate-envelope 1\nmid 3\nicid 1\nlistener l\nsender_group G\npolicy P\n\
             peer_ip 192.0.2.1\nhelo h\nreceived 9\nfrom a@b\nrcpt c@d\nend\n",
        )
        .unwrap();
        assert!(!e.body_8bitmime);
        assert_eq!(e.rcpts, ["c@d"]);
        e.body_8bitmime = true;
        let t = e.to_text();
        assert!(t.contains("\nbody 8BITMIME\n"), "{t}");
        assert_eq!(Envelope::parse(&t).unwrap(), e);
    }
}
