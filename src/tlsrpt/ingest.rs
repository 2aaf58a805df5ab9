//! The one entry point of the intakes: a report body in, an [`Outcome`] out. Decode, validate,
//! store unless a copy is stored, and count — `mxgate_tlsrpt_reports_total` for every body,
//! `mxgate_tlsrpt_sessions_total` for accepted reports only, so a duplicate never counts its
//! sessions twice. The caller only turns the outcome into its reply (SMTP or HTTP).

use super::decode::{decode, DecodeError, Limits};
use super::domains::PolicyDomains;
use super::report::Report;
use super::reporter::{reporter, UNKNOWN};
use super::shared::{Claim, SharedReports};
use super::store::{dedup_key, Store, Stored};

/// What became of one report body.
#[derive(Debug)]
pub enum Outcome {
    /// Stored and counted.
    Accepted {
        /// The report.
        report: Box<Report>,
    },
    /// A report with this report-id was stored before: not stored, not counted again.
    Duplicate {
        /// Its report-id.
        report_id: String,
    },
    /// Not a valid report (content type, gzip data, JSON, fields, counts, dates).
    Malformed(String),
    /// The body is over the size limit.
    TooLarge,
    /// The gzip body expands past the limits.
    Bomb,
    /// A valid report that could not be stored (disk): the sender should try again later.
    StoreFailed(String),
}

impl Outcome {
    /// The `outcome` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Malformed(_) => "malformed",
            Outcome::TooLarge => "too_large",
            Outcome::Bomb => "bomb",
            Outcome::StoreFailed(_) => "store_failed",
        }
    }

    /// What became of the report, for the log: which report, or why none.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Accepted { report } => {
                let ok: u64 = report.policies.iter().map(|p| p.summary.successful).sum();
                let failed: u64 = report.policies.iter().map(|p| p.summary.failed).sum();
                let day = |t: i64| {
                    chrono::DateTime::from_timestamp(t, 0)
                        .map(|d| d.format("%Y-%m-%d").to_string())
                        .unwrap_or_default()
                };
                format!(
                    "report-id <{}> from {:?} for {} to {}: {} policies, {ok} successful and {failed} failed sessions",
                    report.report_id,
                    report.organization_name,
                    day(report.date_range.start),
                    day(report.date_range.end),
                    report.policies.len()
                )
            }
            Outcome::Duplicate { report_id } => {
                format!("report-id <{report_id}> is stored already")
            }
            Outcome::Malformed(why) => why.clone(),
            Outcome::TooLarge => "over the size limit".into(),
            Outcome::Bomb => "gzip body expands past the limits (decompression bomb)".into(),
            Outcome::StoreFailed(why) => format!("not stored: {why}"),
        }
    }

    /// Whether the sender should send the same body again later.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Outcome::StoreFailed(_))
    }
}

/// Decodes, validates, stores and counts one report body of `content_type` received at
/// `now` (Unix seconds); `domains` bounds the `policy_domain` label.
pub fn ingest(
    body: &[u8],
    content_type: &str,
    store: &Store,
    domains: &PolicyDomains,
    now: i64,
) -> Outcome {
    ingest_shared(body, content_type, store, None, domains, now)
}

/// [`ingest`] with the report claimed in the store `shared` with other gateways first, so
/// only one of them stores it; on a blocking thread of a runtime (the claim is awaited there).
pub fn ingest_shared(
    body: &[u8],
    content_type: &str,
    store: &Store,
    shared: Option<&SharedReports>,
    domains: &PolicyDomains,
    now: i64,
) -> Outcome {
    let (outcome, who) = classify(body, content_type, store, shared, now);
    crate::metrics::tlsrpt::report_outcome(who, outcome.label());
    if let Outcome::Accepted { report } = &outcome {
        crate::metrics::tlsrpt::sessions(report, who, domains);
    }
    outcome
}

/// Counts a body refused before it could be decoded (no report part in a mail, a mail over
/// its size limit) and returns its outcome.
pub fn refused(outcome: Outcome) -> Outcome {
    crate::metrics::tlsrpt::report_outcome(UNKNOWN, outcome.label());
    outcome
}

/// The outcome and the `reporter` label, without counting.
fn classify(
    body: &[u8],
    content_type: &str,
    store: &Store,
    shared: Option<&SharedReports>,
    now: i64,
) -> (Outcome, &'static str) {
    let json = match decode(body, content_type, Limits::default()) {
        Ok(j) => j,
        Err(DecodeError::TooLarge { .. }) => return (Outcome::TooLarge, UNKNOWN),
        Err(DecodeError::Bomb { .. }) => return (Outcome::Bomb, UNKNOWN),
        Err(e) => return (Outcome::Malformed(e.to_string()), UNKNOWN),
    };
    let report = match Report::from_json(&json, now) {
        Ok(r) => r,
        Err(e) => return (Outcome::Malformed(e.to_string()), organisation_of(&json)),
    };
    let who = reporter(&report.organization_name);
    let key = dedup_key(&report, &json);
    // A copy in this node's store is a duplicate without asking anyone; otherwise the first
    // node to claim the report stores it.
    let claim = match shared {
        Some(shared) if !store.contains(&key) => shared.claim_blocking(&key),
        _ => Claim::Unavailable,
    };
    if claim == Claim::Taken {
        let outcome = Outcome::Duplicate {
            report_id: report.report_id,
        };
        return (outcome, who);
    }
    let outcome = match store.put(&key, &json) {
        Ok(Stored::New) => Outcome::Accepted {
            report: Box::new(report),
        },
        Ok(Stored::Duplicate) => Outcome::Duplicate {
            report_id: report.report_id,
        },
        Err(e) => {
            if let (Claim::Won, Some(shared)) = (claim, shared) {
                shared.release_blocking(&key);
            }
            Outcome::StoreFailed(e.to_string())
        }
    };
    (outcome, who)
}

/// The reporter of an invalid report, when its JSON names an organisation at all.
fn organisation_of(json: &[u8]) -> &'static str {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("organization-name")?.as_str().map(reporter))
        .unwrap_or(UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::decode::gzip;
    use crate::tlsrpt::report::RFC_EXAMPLE;

    const NOW: i64 = 1_796_428_800;

    /// The value of one series in the rendered metrics, 0 when absent.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn the_rfc_example_counts_exactly_once_and_bad_bodies_are_typed() {
        let handle = crate::metrics::recorder().unwrap();
        // Unique names: the recorder is process-wide and other tests ingest too.
        let domain = "ingest-test.example";
        let json = RFC_EXAMPLE
            .replace(
                "company-y.example\",\n         \"mx-host",
                &format!("{domain}\",\n         \"mx-host"),
            )
            .replace("5065427c-23d3-47ca-b6e0-946ea0e8c4be", "ingest-test-1")
            .replace("Company-X", "Google Inc.");
        assert!(json.contains(domain));
        let spool = tempfile::tempdir().unwrap();
        let store = Store::new(spool.path());
        let domains = PolicyDomains::new([domain]);
        let s = |result: &str, rt: &str| {
            format!(
                "mxgate_tlsrpt_sessions_total{{policy_domain=\"{domain}\",policy_type=\"sts\",result=\"{result}\",result_type=\"{rt}\",reporter=\"google\"}}"
            )
        };
        let before = handle.render();
        let o = ingest(
            &gzip(json.as_bytes()),
            "application/tlsrpt+gzip",
            &store,
            &domains,
            NOW,
        );
        assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
        let o = ingest(
            json.as_bytes(),
            "application/tlsrpt+json",
            &store,
            &domains,
            NOW,
        );
        assert!(
            matches!(&o, Outcome::Duplicate { report_id } if report_id == "ingest-test-1"),
            "{o:?}"
        );
        let after = handle.render();
        let delta = |series: &str| value(&after, series) - value(&before, series);
        assert_eq!(delta(&s("success", "none")), 5326.0);
        assert_eq!(delta(&s("failure", "certificate-expired")), 100.0);
        assert_eq!(delta(&s("failure", "starttls-not-supported")), 200.0);
        assert_eq!(delta(&s("failure", "validation-failure")), 3.0);
        assert_eq!(delta(&s("failure", "other")), 0.0);
        let r = |outcome: &str| {
            format!("mxgate_tlsrpt_reports_total{{reporter=\"google\",outcome=\"{outcome}\"}}")
        };
        assert_eq!(delta(&r("accepted")), 1.0);
        assert_eq!(delta(&r("duplicate")), 1.0);

        // Not configured: the domain is `other`.
        let o = ingest(
            json.replace("ingest-test-1", "ingest-test-2").as_bytes(),
            "application/tlsrpt+json",
            &store,
            &PolicyDomains::default(),
            NOW,
        );
        assert!(matches!(o, Outcome::Accepted { .. }));
        let last = handle.render();
        assert!(last.contains("policy_domain=\"other\""), "{last}");

        // Refusals, each with its label and nothing stored.
        let before = handle.render();
        let missing = json.replace("\"report-id\": \"ingest-test-1\",", "");
        let o = ingest(
            missing.as_bytes(),
            "application/tlsrpt+json",
            &store,
            &domains,
            NOW,
        );
        assert!(
            matches!(&o, Outcome::Malformed(m) if m == "missing required field report-id"),
            "{o:?}"
        );
        let o = ingest(
            b"{not json",
            "application/tlsrpt+json",
            &store,
            &domains,
            NOW,
        );
        assert!(matches!(o, Outcome::Malformed(_)));
        let o = ingest(
            &vec![b' '; (1 << 20) + 1],
            "application/tlsrpt+json",
            &store,
            &domains,
            NOW,
        );
        assert!(matches!(o, Outcome::TooLarge));
        let o = ingest(
            &gzip(&vec![0u8; 4 << 20]),
            "application/tlsrpt+gzip",
            &store,
            &domains,
            NOW,
        );
        assert!(matches!(o, Outcome::Bomb));
        let after = handle.render();
        let delta = |series: &str| value(&after, series) - value(&before, series);
        assert_eq!(delta(&r("malformed")), 1.0);
        let u = |outcome: &str| {
            format!("mxgate_tlsrpt_reports_total{{reporter=\"unknown\",outcome=\"{outcome}\"}}")
        };
        assert!(delta(&u("malformed")) >= 1.0);
        assert!(delta(&u("too_large")) >= 1.0);
        assert!(delta(&u("bomb")) >= 1.0);
        assert_eq!(store.list().unwrap().0.len(), 2);
    }
}
