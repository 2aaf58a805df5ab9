//! The DNS self-check gauges of a running server (`src/metrics/dane.rs`): every
//! `dns.self_check_interval`, and at once after a reload, the TLSA records of each public
//! listener's host name are judged against the certificate it serves, and the `_mta-sts`
//! TXT and MX records of each MTA-STS domain against the served policy, with the checks of
//! `mxgate dns check` ([`crate::dnscheck`]). Only while the metrics endpoint is on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::config::model::Config;
use crate::dns::ReverseResolver;
use crate::dnscheck::lookup::{mx_hosts, tlsa_name};
use crate::dnscheck::tlsa::{verdict, TlsaVerdict};
use crate::dnscheck::{checks, facts};
use crate::mta_sts::Policy;

/// What one refresh looks at: taken from the configuration, replaced on reload.
struct Targets {
    resolver: ReverseResolver,
    /// Zero: no refresh.
    interval: Duration,
    /// Public listeners: name, host name, certificate file.
    listeners: Vec<(String, String, PathBuf)>,
    /// MTA-STS domains and their served policies.
    policies: Vec<(String, Policy)>,
}

impl Targets {
    fn new(config: &Config, resolver: &ReverseResolver) -> Targets {
        Targets {
            resolver: resolver.clone(),
            interval: config.global.dns.self_check_interval,
            listeners: facts::listener_files(config)
                .into_iter()
                .filter(|(_, _, public, _)| *public)
                .map(|(name, host, _, path)| (name, host, path))
                .collect(),
            policies: config
                .mta_sts
                .as_ref()
                .map(|s| s.domains.clone())
                .unwrap_or_default(),
        }
    }
}

/// The refresh task's handle: a reload gives it new targets and wakes it.
pub(crate) struct DaneRefresh {
    targets: Arc<ArcSwap<Targets>>,
    wake: Arc<Notify>,
}

impl DaneRefresh {
    /// Starts the refresh task (ended by `stop`) when the metrics endpoint is on.
    pub(crate) fn start(
        config: &Config,
        resolver: &ReverseResolver,
        stop: &watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) -> Option<DaneRefresh> {
        config.global.metrics_listen?;
        let targets = Arc::new(ArcSwap::from_pointee(Targets::new(config, resolver)));
        let wake = Arc::new(Notify::new());
        tasks.spawn(run(targets.clone(), wake.clone(), stop.clone()));
        Some(DaneRefresh { targets, wake })
    }

    /// A reloaded configuration: new listeners, policies, resolver and interval, refreshed now.
    pub(crate) fn apply(this: Option<&DaneRefresh>, config: &Config, resolver: &ReverseResolver) {
        if let Some(d) = this {
            d.targets.store(Arc::new(Targets::new(config, resolver)));
            d.wake.notify_one();
        }
    }
}

/// Refreshes, then waits for the interval; a reload or the stop cuts either short.
async fn run(targets: Arc<ArcSwap<Targets>>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        let t = targets.load_full();
        let round = async {
            if t.interval.is_zero() {
                std::future::pending::<()>().await;
            }
            refresh(&t).await;
            tokio::time::sleep(t.interval).await;
        };
        tokio::select! {
            _ = round => {}
            _ = wake.notified() => {}
            _ = stop.changed() => break,
        }
    }
}

/// One round of lookups; a failed lookup leaves its gauge as it was.
async fn refresh(t: &Targets) {
    for (listener, host, path) in &t.listeners {
        let served = facts::served_cert(listener, host, true, path);
        let chain = match &served.chain {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("DANE self-check of listener {listener}: {e}");
                continue;
            }
        };
        let name = tlsa_name(host);
        match verdict(&t.resolver.lookup_tlsa(&name).await, chain) {
            TlsaVerdict::Matches(_) => crate::metrics::dane::tlsa_match(listener, Some(true)),
            TlsaVerdict::NotPublished => crate::metrics::dane::tlsa_match(listener, None),
            TlsaVerdict::NoneMatches { .. } => {
                tracing::warn!("DANE self-check: no TLSA record at {name} matches the key of listener {listener} ({}): `mxgate dns check` prints the record to publish", path.display());
                crate::metrics::dane::tlsa_match(listener, Some(false));
            }
            TlsaVerdict::Failed(e) => tracing::warn!("DANE self-check: TLSA lookup of {name}: {e}"),
        }
    }
    for (domain, policy) in &t.policies {
        let sts = t.resolver.lookup_txt(&format!("_mta-sts.{domain}")).await;
        let mx = mx_hosts(&t.resolver, domain).await;
        match checks::policy_valid(policy, &sts, &mx) {
            Some(valid) => crate::metrics::dane::policy_valid(domain, valid),
            None => tracing::warn!("MTA-STS self-check of {domain}: a DNS lookup failed"),
        }
    }
}
