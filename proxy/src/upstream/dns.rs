//! DNS for route destinations that have no known endpoints, cached for a few seconds.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Resolves route destination hosts that have no known endpoints and are not the service the
/// request was addressed to (e.g. a VirtualService sending `reviews` traffic to `ratings`), the way
/// a pod without a mesh would: DNS, cached for a few seconds.
#[derive(Default)]
pub struct HostResolver {
    cache: std::sync::Mutex<std::collections::HashMap<String, (Instant, Vec<IpAddr>)>>,
}

impl HostResolver {
    const TTL: Duration = Duration::from_secs(5);

    /// An address for `host:port`, preferring `dst`'s address family.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        dst: SocketAddr,
    ) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let cached = self.cache.lock().ok().and_then(|c| {
            c.get(host)
                .filter(|(t, _)| t.elapsed() < Self::TTL)
                .map(|(_, ips)| ips.clone())
        });
        let ips = match cached {
            Some(ips) => ips,
            None => {
                let lookup = tokio::net::lookup_host((host, port));
                let ips: Vec<IpAddr> = match tokio::time::timeout(Duration::from_secs(2), lookup)
                    .await
                {
                    Ok(Ok(it)) => it.map(|a| a.ip()).collect(),
                    Ok(Err(e)) => return Err(format!("resolving route destination {host}: {e}")),
                    Err(_) => return Err(format!("resolving route destination {host}: timed out")),
                };
                if let Ok(mut c) = self.cache.lock() {
                    if c.len() > 1024 {
                        c.clear();
                    }
                    c.insert(host.to_string(), (Instant::now(), ips.clone()));
                }
                ips
            }
        };
        ips.iter()
            .find(|ip| ip.is_ipv4() == dst.is_ipv4())
            .or(ips.first())
            .map(|ip| SocketAddr::new(*ip, port))
            .ok_or_else(|| format!("route destination {host} has no addresses"))
    }
}
