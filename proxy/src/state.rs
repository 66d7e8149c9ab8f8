//! The state every part of the data plane reads: which listener a connection came in on
//! (`Direction`), the settings fixed at start-up (`Settings`), and what the listeners, the HTTP
//! proxies and the admin server share (`Shared`: settings, rule snapshot, policy state, the
//! workload identity, the peers of inbound mTLS connections and the metrics handle).

use crate::rules::SharedSnapshot;
use crate::telemetry::{AccessLog, Metrics, Workload};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Which capture listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the app to the world (port 15001); Istio reporter `source`.
    Outbound,
    /// From the world to the app (port 15006); Istio reporter `destination`.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
    pub fn reporter(self) -> &'static str {
        match self {
            Direction::Outbound => "source",
            Direction::Inbound => "destination",
        }
    }
}

/// Settings of the data plane, fixed at start-up.
#[derive(Clone, Debug)]
pub struct Settings {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    /// IPv6 capture listeners (ip6tables REDIRECTs to `[::1]:15001` / `[::]:15006`), when enabled.
    pub outbound_addr6: Option<SocketAddr>,
    pub inbound_addr6: Option<SocketAddr>,
    /// How long to wait for a client's first bytes before calling it server-first (opaque TCP).
    pub sniff_timeout: Duration,
    /// How long to wait for the first bytes on a port the rules declare HTTP.
    pub http_first_byte_timeout: Duration,
    /// Source address for inbound connections to the app (127.0.0.6, which the init program's
    /// output chain lets through without re-capture).
    pub inbound_bind: Option<IpAddr>,
    /// Bind 127.0.0.1 instead when binding `inbound_bind` fails (testing only).
    pub inbound_bind_fallback: bool,
    /// Testing/debugging hook: treat every outbound connection as if its original destination
    /// were this address (for running without iptables). Never set in a pod.
    pub fixed_outbound_target: Option<SocketAddr>,
    /// Same for inbound.
    pub fixed_inbound_target: Option<SocketAddr>,
    pub connect_timeout: Duration,
    /// Default per-read (and per-write) timeout towards the app on inbound requests, when no
    /// route timeout sets one (`--inbound-upstream-read-timeout-seconds`).
    pub inbound_upstream_read_timeout: Duration,
    pub workload: Workload,
    pub access_log: AccessLog,
    /// Istio's `numTrustedProxies`: which `X-Forwarded-For` entry is `remote.ip` for
    /// AuthorizationPolicy (`--num-trusted-proxies`).
    pub num_trusted_proxies: u32,
    /// Tracing's default provider (`None`: off, the request path untouched unless a Telemetry
    /// rule names one of `tracers`).
    pub tracer: Option<Arc<crate::telemetry::tracer::Tracer>>,
    /// The mesh's tracing providers by name, which a Telemetry rule may choose
    /// (`--tracing-providers`).
    pub tracers: Vec<(String, Arc<crate::telemetry::tracer::Tracer>)>,
    /// The access-log providers by name, which a Telemetry rule may choose: `envoy` (the
    /// mesh's own log, in the `--access-log-encoding`), then `--access-log-providers`.
    pub access_log_providers: Vec<(String, AccessLog)>,
}

/// State shared by the listeners, the HTTP proxies and the admin server.
pub struct Shared {
    pub settings: Settings,
    pub snapshot: SharedSnapshot,
    /// Traffic-policy state shared across requests (balancers, outlier detection, pools,
    /// rate limiters).
    pub policies: Arc<crate::policy::Policies>,
    /// The workload certificate and its renewal (`None`: `--ca-address off`, no mesh mTLS).
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// The identities of the inbound mTLS connections open now.
    pub peers: Arc<crate::mtls::inbound::Peers>,
    /// RequestAuthentication: the compiled rules and the JWKS cache.
    pub jwt: Arc<crate::jwt::JwtState>,
    /// The proxy's metrics (what `/stats/prometheus` serves), created at start-up.
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// The original destination of a connection on `dir`'s listener, given its socket digest.
    pub fn original_dst(
        &self,
        dir: Direction,
        digest: Option<&pingora::protocols::SocketDigest>,
    ) -> Option<SocketAddr> {
        let fixed = match dir {
            Direction::Outbound => self.settings.fixed_outbound_target,
            Direction::Inbound => self.settings.fixed_inbound_target,
        };
        if fixed.is_some() {
            return fixed;
        }
        digest
            .and_then(|d| d.original_dst())
            .and_then(|a| a.as_inet())
            .copied()
    }

    /// The addresses `dir`'s listener binds (IPv4, and IPv6 when enabled).
    pub fn listener_addrs(&self, dir: Direction) -> Vec<SocketAddr> {
        let s = &self.settings;
        let (v4, v6) = match dir {
            Direction::Outbound => (s.outbound_addr, s.outbound_addr6),
            Direction::Inbound => (s.inbound_addr, s.inbound_addr6),
        };
        std::iter::once(v4).chain(v6).collect()
    }

    /// Every capture listener address.
    pub fn all_listener_addrs(&self) -> Vec<SocketAddr> {
        let mut v = self.listener_addrs(Direction::Outbound);
        v.extend(self.listener_addrs(Direction::Inbound));
        v
    }
}
