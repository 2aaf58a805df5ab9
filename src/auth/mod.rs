//! Sender authentication: the lookups behind envelope-sender DNS verification and SPF
//! (docs/sender-auth.md). This module asks DNS and reports what it found; what each answer
//! does under a policy is decided in `src/policy/check/sender.rs`.
//!
//! One resolver serves everything: the listeners' [`ReverseResolver`] (the configured `dns:`
//! servers, hickory's cache with the records' TTLs). SPF runs on mail-auth's
//! [`MessageAuthenticator`] over the same hickory resolver, so its lookups share that cache;
//! mail-auth applies RFC 7208's lookup limits. A DNS failure is always reported as temporary.
//!
//! | file | what |
//! |---|---|
//! | [`dns_verify`] | classify a sender's domain, look it up (MX, else A/AAAA; null MX) |
//! | [`spf`] | the SPF result of the MAIL FROM (or HELO) identity |
//! | [`message`] | after DATA: DKIM of every signature, DMARC (and SPF when not done at MAIL) |
//! | [`results`] | the `Authentication-Results` header; removing forged ones |

pub mod dns_verify;
pub mod header;
pub mod message;
pub mod results;
pub mod spf;

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::MessageAuthenticator;

use crate::dns::ReverseResolver;
pub use dns_verify::{DnsCheck, DnsVerdict};
pub use message::{
    DkimSignature, DkimVerdict, DmarcOutcome, DmarcPolicy, DmarcVerdict, MessageAnswer,
    MessageRequest,
};
pub use spf::{SpfIdentity, SpfOutcome, SpfVerdict};

/// RFC 7208 §4.6.4: a whole SPF evaluation should be bounded by at least 20 seconds.
pub const SPF_TIMEOUT: Duration = Duration::from_secs(20);

/// What to verify about one `MAIL FROM` (built by `check_mail` from the policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderRequest {
    /// The client address (the SPF `<ip>`).
    pub peer_ip: IpAddr,
    /// The EHLO/HELO name (the SPF identity of the null sender, and the `h` macro).
    pub helo: String,
    /// The envelope sender, `local@domain`; empty for the null sender `<>`.
    pub from: String,
    /// Our host name (the SPF `r` macro).
    pub host: String,
    /// The DNS verification to run.
    pub dns: DnsCheck,
    /// Evaluate SPF.
    pub spf: bool,
}

/// What the lookups found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderAnswer {
    /// The DNS verification's finding; `None` when it was not asked for.
    pub dns: Option<DnsVerdict>,
    /// The SPF result; `None` when it was not asked for.
    pub spf: Option<SpfOutcome>,
}

impl SenderAnswer {
    /// The answer when the lookups ran out of time: a temporary failure of each one asked.
    pub fn timed_out(req: &SenderRequest) -> Self {
        SenderAnswer {
            dns: match &req.dns {
                DnsCheck::Skip => None,
                DnsCheck::Lookup(_) => Some(DnsVerdict::Unresolvable("no answer in time".into())),
                other => Some(other.verdict_without_lookup()),
            },
            spf: req.spf.then(|| SpfOutcome::temp_error(req)),
        }
    }
}

/// The sender-authentication service of one configuration.
#[derive(Clone)]
pub struct SenderAuth {
    resolver: ReverseResolver,
    authenticator: std::sync::Arc<MessageAuthenticator>,
}

impl std::fmt::Debug for SenderAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderAuth").finish_non_exhaustive()
    }
}

impl SenderAuth {
    /// A service on `resolver` (the configured `dns:` servers and their cache).
    pub(crate) fn new(resolver: &ReverseResolver) -> Self {
        SenderAuth {
            resolver: resolver.clone(),
            authenticator: std::sync::Arc::new(MessageAuthenticator(resolver.hickory())),
        }
    }

    /// mail-auth's authenticator over the shared resolver.
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.authenticator
    }

    /// Runs the message checks of `req` (DKIM, DMARC; SPF when not done at `MAIL FROM`).
    /// The work runs on a blocking-pool thread (hashing the signed fields of a large header
    /// section is CPU): a hostile message cannot stall the workers that serve other clients.
    pub async fn authenticate_message(&self, req: &MessageRequest) -> MessageAnswer {
        let (this, owned) = (self.clone(), req.clone());
        let runtime = tokio::runtime::Handle::current();
        let work = tokio::task::spawn_blocking(move || {
            runtime.block_on(message::authenticate(
                &this.authenticator,
                &this.resolver,
                &owned,
            ))
        });
        work.await.unwrap_or_else(|_| MessageAnswer::timed_out(req))
    }

    /// Runs the checks `req` asks for, at once (a slow DNS costs one timeout, not the sum).
    pub async fn verify(&self, req: &SenderRequest) -> SenderAnswer {
        let dns = async {
            match &req.dns {
                DnsCheck::Skip => None,
                DnsCheck::Lookup(domain) => {
                    Some(dns_verify::lookup_domain(&self.resolver, domain).await)
                }
                other => Some(other.verdict_without_lookup()),
            }
        };
        let spf = async {
            if !req.spf {
                return None;
            }
            let check = spf::evaluate(&self.authenticator, &self.resolver, req);
            Some(
                tokio::time::timeout(SPF_TIMEOUT, check)
                    .await
                    .unwrap_or_else(|_| SpfOutcome::temp_error(req)),
            )
        };
        let (dns, spf) = tokio::join!(dns, spf);
        SenderAnswer { dns, spf }
    }
}
