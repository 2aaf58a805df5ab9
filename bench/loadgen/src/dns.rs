//! A tiny authoritative DNS stub on 127.0.0.1, so the gateway under test can do its reverse
//! DNS (PTR, then forward A/AAAA) without any traffic leaving the machine.
//!
//! Answers: PTR of any 127.x.x.x address -> `--ptr-name`; A of that name -> the address
//! asked for last (127.0.0.1 by default); AAAA of that name -> no data; everything else ->
//! NXDOMAIN.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// Parsed question: (name in lower case without the trailing dot, qtype, bytes of the question).
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        let l = q.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    i += 4; // qtype + qclass
    if i > q.len() {
        return None;
    }
    Some((labels.join("."), qtype, i))
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for l in name.trim_end_matches('.').split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
}

const T_A: u16 = 1;
const T_PTR: u16 = 12;

/// Builds the response to `q`, or `None` for garbage.
pub fn answer(q: &[u8], ptr_name: &str) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let (name, qtype, qend) = question(q)?;
    let mut rdata: Option<(u16, Vec<u8>)> = None;
    let mut exists = false;
    if let Some(rev) = name.strip_suffix(".in-addr.arpa") {
        let parts: Vec<&str> = rev.split('.').collect();
        if parts.len() == 4 && parts[3] == "127" {
            exists = true;
            if qtype == T_PTR {
                let mut d = Vec::new();
                encode_name(ptr_name, &mut d);
                rdata = Some((T_PTR, d));
            }
        }
    } else if name == ptr_name.trim_end_matches('.') {
        exists = true;
        if qtype == T_A {
            rdata = Some((T_A, Ipv4Addr::LOCALHOST.octets().to_vec()));
        }
    }
    let mut r = Vec::with_capacity(qend + 64);
    r.extend_from_slice(&q[0..2]); // id
    let rd = q[2] & 0x01;
    r.push(0x84 | rd); // QR, AA, RD copied
    r.push(0x80 | if exists { 0 } else { 3 }); // RA, NOERROR / NXDOMAIN
    r.extend_from_slice(&[0, 1]); // qdcount
    r.extend_from_slice(&[0, u8::from(rdata.is_some())]); // ancount
    r.extend_from_slice(&[0, 0, 0, 0]); // nscount, arcount
    r.extend_from_slice(&q[12..qend]);
    if let Some((t, d)) = rdata {
        r.extend_from_slice(&[0xc0, 12]); // pointer to the question name
        r.extend_from_slice(&t.to_be_bytes());
        r.extend_from_slice(&[0, 1]); // IN
        r.extend_from_slice(&300u32.to_be_bytes());
        r.extend_from_slice(&(d.len() as u16).to_be_bytes());
        r.extend_from_slice(&d);
    }
    Some(r)
}

/// Serves until `max` has passed.
pub async fn serve(listen: SocketAddr, ptr_name: String, max: Duration) -> std::io::Result<()> {
    if !listen.ip().is_loopback() {
        return Err(std::io::Error::other(
            "the DNS stub binds loopback addresses only",
        ));
    }
    let sock = UdpSocket::bind(listen).await?;
    eprintln!("dns stub on {}", sock.local_addr()?);
    let end = Instant::now() + max;
    let mut buf = vec![0u8; 1500];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let Ok(r) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await else {
            return Ok(());
        };
        let (n, from) = r?;
        if let Some(resp) = answer(&buf[..n], &ptr_name) {
            let _ = sock.send_to(&resp, from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        encode_name(name, &mut q);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn ptr_a_and_nxdomain() {
        let r = answer(
            &query("1.0.0.127.in-addr.arpa", T_PTR),
            "client.loadgen.test",
        )
        .unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0);
        assert_eq!(r[7], 1);
        assert!(r.ends_with(b"\x06client\x07loadgen\x04test\x00"));
        let r = answer(&query("client.loadgen.test", T_A), "client.loadgen.test").unwrap();
        assert!(r.ends_with(&[0, 4, 127, 0, 0, 1]));
        let r = answer(&query("client.loadgen.test", 28), "client.loadgen.test").unwrap();
        assert_eq!((r[3] & 0x0f, r[7]), (0, 0));
        let r = answer(&query("other.example", T_A), "client.loadgen.test").unwrap();
        assert_eq!(r[3] & 0x0f, 3);
    }
}
