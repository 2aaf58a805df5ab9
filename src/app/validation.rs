//! The recipient-validation runtime of a running server: the verdict cache (loaded from
//! the spool at start, saved every `save_every` and at shutdown), the validator of the
//! current configuration, and the cache and breaker gauges.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::model::Config;
use crate::mail_log::{Event, Level, MailLog};
use crate::relay::outbound_tls::OutboundTlsContext;
use crate::validate::cache::VerdictCache;
use crate::validate::destination::{SystemClocks, ValidationClock};
use crate::validate::persist;
use crate::validate::service::{Validator, ValidatorConfig};
use crate::validate::shared::SharedVerdicts;

/// Where the cache is kept, under the spool directory.
pub(crate) fn cache_path(spool_dir: &std::path::Path) -> PathBuf {
    spool_dir.join("validation").join("recipients.cache")
}

/// The cache and its saver.
pub(crate) struct ValidationRuntime {
    /// The verdict cache every validator of this server shares.
    pub cache: Arc<VerdictCache>,
    path: PathBuf,
    log: Arc<MailLog>,
    saver: tokio::task::JoinHandle<()>,
    /// The verdicts shared with other gateways (`shared_state:`), given to every validator.
    shared: Option<SharedVerdicts>,
}

/// True when a cache entry's method id still names something configured.
fn is_known(config: &Config, method: &str) -> bool {
    match method.split_once(':') {
        Some(("ldap", name)) => config.validation.ldap.contains_key(name),
        Some(("callahead", domain)) => config
            .routes
            .routes
            .iter()
            .any(|r| r.domain.to_string() == domain),
        _ => false,
    }
}

fn now() -> u64 {
    SystemClocks.unix()
}

impl ValidationRuntime {
    /// Creates the cache, loads the saved one and starts the periodic saver.
    pub(crate) fn start(config: &Config, log: &Arc<MailLog>) -> Self {
        let cache = Arc::new(VerdictCache::new(config.validation.cache.clone()));
        let path = cache_path(&config.global.spool_dir);
        match persist::load(&cache, &path, now(), |m| is_known(config, m)) {
            Ok(r) if r.loaded + r.malformed + r.expired + r.unknown_method > 0 => {
                let level = if r.malformed > 0 {
                    Level::Warning
                } else {
                    Level::Info
                };
                log.log(&Event::Note {
                    level,
                    text: format!(
                        "recipient validation cache {}: {} entries loaded, {} expired, {} of methods no longer configured, {} malformed lines skipped",
                        path.display(),
                        r.loaded,
                        r.expired,
                        r.unknown_method,
                        r.malformed
                    ),
                });
            }
            Ok(_) => {}
            Err(e) => log.log(&Event::Note {
                level: Level::Warning,
                text: format!("recipient validation cache not loaded (starting empty): {e}"),
            }),
        }
        let every = config.validation.save_every;
        let (weak, save_path, save_log) = (Arc::downgrade(&cache), path.clone(), log.clone());
        let saver = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(cache) = weak.upgrade() else { break };
                save(&cache, &save_path, &save_log).await;
            }
        });
        ValidationRuntime {
            cache,
            path,
            log: log.clone(),
            saver,
            shared: None,
        }
    }

    /// Shares the verdicts of the validators made from now on in `state`.
    pub(crate) fn share(&mut self, state: Option<&crate::shared_state::SharedState>) {
        self.shared = state.cloned().map(SharedVerdicts::new);
    }

    /// The validator of `config`, around the shared cache.
    pub(crate) fn validator(
        &self,
        config: &Config,
        helo_name: String,
        tls: Arc<OutboundTlsContext>,
    ) -> Arc<Validator> {
        let clock: Arc<dyn ValidationClock> = Arc::new(SystemClocks);
        Arc::new(
            Validator::new(
                ValidatorConfig {
                    settings: config.validation.clone(),
                    routes: config.routes.clone(),
                    helo_name,
                    destinations: config.destinations.clone(),
                    tls,
                },
                self.cache.clone(),
                clock,
            )
            .with_shared(self.shared.clone()),
        )
    }

    /// Stops the saver and saves once more (at shutdown).
    pub(crate) async fn stop(self) {
        self.saver.abort();
        save(&self.cache, &self.path, &self.log).await;
    }
}

/// Saves the cache (on the blocking pool: it fsyncs) and updates the gauges; a failure is
/// a Warning (the cache only saves probes).
async fn save(cache: &Arc<VerdictCache>, path: &std::path::Path, log: &MailLog) {
    let (valid, invalid) = cache.counts();
    crate::metrics::validation::set_cache_entries(valid, invalid);
    if valid + invalid == 0 && !path.exists() {
        return;
    }
    let (c, p) = (cache.clone(), path.to_owned());
    let r = tokio::task::spawn_blocking(move || persist::save(&c, &p, now())).await;
    match r {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => log.log(&Event::Note {
            level: Level::Warning,
            text: format!("recipient validation cache not saved: {e}"),
        }),
        Err(e) => tracing::warn!("cache save task: {e}"),
    }
}
