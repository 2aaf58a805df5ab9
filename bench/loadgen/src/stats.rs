//! Latency samples per phase, percentiles, and the hand-written JSON of the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The phases of an SMTP session whose latency is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// TCP connect until the 220 greeting is read.
    Connect,
    /// EHLO until its last reply line (also the EHLO after STARTTLS).
    Ehlo,
    /// STARTTLS sent until the TLS handshake completed.
    StartTls,
    /// MAIL FROM until its reply.
    Mail,
    /// Each RCPT TO until its reply.
    Rcpt,
    /// DATA until 354.
    Data,
    /// Body and final dot until the 250 that says the message is queued (the commit).
    Dot,
    /// Pipelined MAIL+RCPT+DATA until the 354 (with --pipelining).
    Envelope,
    /// MAIL FROM (or the pipelined envelope) until the final 250.
    Message,
    /// QUIT until 221.
    Quit,
    /// TCP connect until 221.
    Session,
}

impl Phase {
    /// All phases, in report order.
    pub const ALL: [Phase; 11] = [
        Phase::Connect,
        Phase::Ehlo,
        Phase::StartTls,
        Phase::Mail,
        Phase::Rcpt,
        Phase::Data,
        Phase::Dot,
        Phase::Envelope,
        Phase::Message,
        Phase::Quit,
        Phase::Session,
    ];

    /// JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Ehlo => "ehlo",
            Phase::StartTls => "starttls",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
            Phase::Dot => "dot",
            Phase::Envelope => "envelope",
            Phase::Message => "message",
            Phase::Quit => "quit",
            Phase::Session => "session",
        }
    }
}

/// Samples (microseconds) per phase plus error counts; one per task, merged at the end.
#[derive(Debug, Default)]
pub struct Stats {
    samples: BTreeMap<Phase, Vec<u32>>,
    /// Error kind -> count.
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    /// Records one latency sample.
    pub fn record(&mut self, phase: Phase, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        self.samples.entry(phase).or_default().push(us);
    }

    /// Counts one error of `kind`.
    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    /// Adds another task's samples.
    pub fn merge(&mut self, other: Stats) {
        for (p, v) in other.samples {
            self.samples.entry(p).or_default().extend(v);
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }

    /// `{"connect":{"n":..,"p50":..,...},...}` in milliseconds.
    pub fn latency_json(&mut self) -> String {
        let mut out = String::from("{");
        let mut first = true;
        for p in Phase::ALL {
            let Some(v) = self.samples.get_mut(&p) else {
                continue;
            };
            if v.is_empty() {
                continue;
            }
            v.sort_unstable();
            let pct = |q: f64| {
                let i = ((v.len() as f64 - 1.0) * q).round() as usize;
                v[i.min(v.len() - 1)] as f64 / 1000.0
            };
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 / 1000.0;
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(
                out,
                "\"{}\":{{\"n\":{},\"mean\":{:.3},\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"max\":{:.3}}}",
                p.name(),
                v.len(),
                mean,
                pct(0.5),
                pct(0.9),
                pct(0.99),
                *v.last().unwrap_or(&0) as f64 / 1000.0
            );
        }
        out.push('}');
        out
    }

    /// `{"kind":n,...}`.
    pub fn errors_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, n)) in self.errors.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}:{n}", json_str(k));
        }
        out.push('}');
        out
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// CPU seconds (user + system) this process used so far.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_json() {
        let mut s = Stats::default();
        for ms in 1..=100u64 {
            s.record(Phase::Mail, Duration::from_millis(ms));
        }
        s.error("bad \"reply\"");
        let j = s.latency_json();
        assert!(j.starts_with("{\"mail\":{\"n\":100,"), "{j}");
        assert!(j.contains("\"p50\":51.000"), "{j}");
        assert!(j.contains("\"p99\":99.000"), "{j}");
        assert_eq!(s.errors_json(), "{\"bad \\\"reply\\\"\":1}");
    }
}
