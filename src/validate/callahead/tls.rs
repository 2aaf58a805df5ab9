//! The TLS of a probe destination: the same mode, trust roots, server name and certificate
//! identity as delivery to it, so a probe goes over TLS exactly when mail would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::outbound::{DestinationControls, OutboundTls};
use crate::relay::client::Target;
use crate::relay::outbound_tls::OutboundTlsContext;
use crate::relay::worker::delivery_target;

/// How probes to one destination negotiate STARTTLS (docs/recipient-validation.md).
#[derive(Debug, Clone)]
pub struct ProbeTls {
    /// The destination's outbound TLS mode (`policies/destinations.yaml`).
    pub mode: OutboundTls,
    /// Trust roots of the `*-verify*` modes; `None` = the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// The outbound TLS context delivery uses (client configuration, verification).
    pub context: Arc<OutboundTlsContext>,
    /// Address, server name (SNI), verify identity and destination domain.
    pub target: Target,
}

impl ProbeTls {
    /// The TLS a delivery to `domain` through the route host `route_host` (at `addr`) would
    /// use: the mode and CA bundle of the domain's destination control, the target built as
    /// the delivery worker builds it.
    pub fn for_route_host(
        controls: &DestinationControls,
        context: Arc<OutboundTlsContext>,
        domain: &str,
        route_host: &str,
        addr: SocketAddr,
    ) -> ProbeTls {
        let control = controls.for_domain(domain);
        ProbeTls {
            mode: control.tls,
            ca_file: control.ca_file.clone(),
            context,
            target: delivery_target(addr, domain, route_host, route_host),
        }
    }
}
