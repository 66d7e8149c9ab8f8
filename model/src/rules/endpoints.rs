//! Endpoint discovery behind a small trait, so Kubernetes discovery can be added later next to
//! the ServiceEntry source.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::host::HostIndex;
use crate::kinds::Endpoint;
use crate::kinds::{Resolution, ServiceEntry};

/// Where endpoints of a host come from.
pub trait EndpointSource: Send + Sync + std::fmt::Debug {
    /// Endpoints of `host` (FQDN) for service port `port`, restricted to endpoints whose labels
    /// include all of `subset` (a DestinationRule subset's labels). `None` means this source
    /// does not know the host (the caller then uses the original destination); `Some(vec![])`
    /// means it knows the host but no endpoint qualifies.
    fn endpoints(
        &self,
        host: &str,
        port: u16,
        subset: Option<&BTreeMap<String, String>>,
    ) -> Option<Vec<Endpoint>>;

    /// Whether this source knows `host` and it has service port `port` (`None`: the host is
    /// unknown here). Tells "no such port" (Istio has no cluster for it: the original
    /// destination) from "no endpoint is ready" (503). By default, whether any endpoint
    /// answers for that port.
    fn has_port(&self, host: &str, port: u16) -> Option<bool> {
        self.endpoints(host, port, None).map(|e| !e.is_empty())
    }

    /// The service host whose virtual address (a Kubernetes ClusterIP) is `ip`, if this source
    /// knows one.
    fn host_of_ip(&self, _ip: IpAddr) -> Option<String> {
        None
    }

    /// The service port behind virtual address `ip` and `port` (a Kubernetes Service's
    /// ClusterIP): its name and, as `protocol`, its `appProtocol` when Istio knows it.
    fn service_port(&self, _ip: IpAddr, _port: u16) -> Option<crate::kinds::ServicePort> {
        None
    }

    /// The pod whose address is `ip`, if this source knows one (for the peer's labels in
    /// metrics).
    fn pod_of_ip(&self, _ip: IpAddr) -> Option<std::sync::Arc<PodIdentity>> {
        None
    }
}

/// What discovery knows of a pod: enough to name it in metrics, and the service account its
/// sidecar's certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: std::sync::Arc<str>,
    /// The workload (`crate::workload::workload_of`): a Deployment's name, not its ReplicaSet's.
    pub workload: std::sync::Arc<str>,
    pub labels: std::sync::Arc<BTreeMap<String, String>>,
    /// `spec.serviceAccountName`, when discovery knows it (from the control plane; the proxy's
    /// direct API mode reads pod metadata only and never knows it).
    pub service_account: Option<std::sync::Arc<str>>,
}

/// Several sources asked in order: the first that knows a host answers (for example the
/// ServiceEntry source, then Kubernetes discovery).
#[derive(Debug, Default)]
pub struct ChainedEndpoints {
    pub sources: Vec<std::sync::Arc<dyn EndpointSource>>,
}

impl EndpointSource for ChainedEndpoints {
    fn endpoints(
        &self,
        host: &str,
        port: u16,
        subset: Option<&BTreeMap<String, String>>,
    ) -> Option<Vec<Endpoint>> {
        self.sources
            .iter()
            .find_map(|s| s.endpoints(host, port, subset))
    }

    fn has_port(&self, host: &str, port: u16) -> Option<bool> {
        self.sources.iter().find_map(|s| s.has_port(host, port))
    }

    fn host_of_ip(&self, ip: IpAddr) -> Option<String> {
        self.sources.iter().find_map(|s| s.host_of_ip(ip))
    }

    fn service_port(&self, ip: IpAddr, port: u16) -> Option<crate::kinds::ServicePort> {
        self.sources.iter().find_map(|s| s.service_port(ip, port))
    }

    fn pod_of_ip(&self, ip: IpAddr) -> Option<std::sync::Arc<PodIdentity>> {
        self.sources.iter().find_map(|s| s.pod_of_ip(ip))
    }
}

/// A resolver for `resolution: DNS` names (host name → addresses).
pub type Resolver<'a> = dyn Fn(&str) -> Vec<IpAddr> + Send + Sync + 'a;

/// The system resolver (`getaddrinfo`: /etc/hosts, then DNS). Blocking: called while loading.
pub fn system_resolver(name: &str) -> Vec<IpAddr> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return vec![ip];
    }
    match (name, 0u16).to_socket_addrs() {
        Ok(it) => {
            let mut v: Vec<IpAddr> = it.map(|a| a.ip()).collect();
            v.sort();
            v.dedup();
            v
        }
        Err(e) => {
            tracing::warn!(host = name, error = %e, "DNS resolution failed for a ServiceEntry host; it has no endpoints until the next reload");
            Vec::new()
        }
    }
}

#[derive(Clone, Debug)]
struct SeEndpoint {
    ip: IpAddr,
    /// Port name → target port.
    ports: BTreeMap<String, u16>,
    labels: BTreeMap<String, String>,
    weight: u32,
}

#[derive(Clone, Debug)]
struct SeService {
    hosts: Vec<String>,
    resolution: Resolution,
    /// (service port, port name, target port)
    ports: Vec<(u16, Option<String>, Option<u16>)>,
    endpoints: Vec<SeEndpoint>,
}

/// Endpoints from ServiceEntries: STATIC lists, DNS names resolved at load time, NONE = unknown
/// (original destination).
#[derive(Clone, Debug, Default)]
pub struct ServiceEntryEndpoints {
    services: Vec<SeService>,
    index: HostIndex,
}

impl ServiceEntryEndpoints {
    pub fn new(entries: &[ServiceEntry], resolve: &Resolver<'_>) -> Self {
        let mut services = Vec::new();
        for se in entries {
            let mut endpoints = Vec::new();
            match se.resolution {
                Resolution::None => {}
                Resolution::Static => {
                    for e in &se.endpoints {
                        if let Ok(ip) = e.address.parse::<IpAddr>() {
                            endpoints.push(SeEndpoint {
                                ip,
                                ports: e.ports.clone(),
                                labels: e.labels.clone(),
                                weight: e.weight.unwrap_or(1),
                            });
                        }
                    }
                }
                Resolution::Dns | Resolution::DnsRoundRobin => {
                    if se.endpoints.is_empty() {
                        // Resolve the hosts themselves.
                        for h in &se.hosts {
                            for ip in resolve(h) {
                                endpoints.push(SeEndpoint {
                                    ip,
                                    ports: BTreeMap::new(),
                                    labels: BTreeMap::new(),
                                    weight: 1,
                                });
                            }
                        }
                    } else {
                        for e in &se.endpoints {
                            for ip in resolve(&e.address) {
                                endpoints.push(SeEndpoint {
                                    ip,
                                    ports: e.ports.clone(),
                                    labels: e.labels.clone(),
                                    weight: e.weight.unwrap_or(1),
                                });
                            }
                        }
                    }
                }
            }
            services.push(SeService {
                hosts: se.hosts.clone(),
                resolution: se.resolution,
                ports: se
                    .ports
                    .iter()
                    .map(|p| (p.number, p.name.clone(), p.target_port))
                    .collect(),
                endpoints,
            });
        }
        let index = HostIndex::build(
            services
                .iter()
                .enumerate()
                .flat_map(|(i, s)| s.hosts.iter().map(move |h| (i, h.as_str()))),
        );
        ServiceEntryEndpoints { services, index }
    }

    fn best(&self, host: &str) -> Option<&SeService> {
        self.index
            .best(&[host.to_string()])
            .and_then(|i| self.services.get(i))
    }
}

impl EndpointSource for ServiceEntryEndpoints {
    fn endpoints(
        &self,
        host: &str,
        port: u16,
        subset: Option<&BTreeMap<String, String>>,
    ) -> Option<Vec<Endpoint>> {
        let svc = self.best(host)?;
        if svc.resolution == Resolution::None {
            return None;
        }
        let sp = svc.ports.iter().find(|(n, _, _)| *n == port);
        let mut out = Vec::new();
        for e in &svc.endpoints {
            if let Some(sel) = subset {
                if !sel.iter().all(|(k, v)| e.labels.get(k) == Some(v)) {
                    continue;
                }
            }
            // Istio: the endpoint's port for the service port's name, else targetPort, else the
            // service port itself.
            let p = sp
                .and_then(|(_, name, target)| {
                    name.as_ref()
                        .and_then(|n| e.ports.get(n).copied())
                        .or(*target)
                })
                .unwrap_or(port);
            out.push(Endpoint {
                addr: SocketAddr::new(e.ip, p),
                labels: e.labels.clone(),
                weight: e.weight,
            });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{Meta, ServicePort, WorkloadEntry};

    fn se(hosts: &[&str], res: Resolution, eps: Vec<WorkloadEntry>) -> ServiceEntry {
        ServiceEntry {
            meta: Meta {
                kind: "ServiceEntry".into(),
                api_version: "networking.istio.io/v1".into(),
                name: "se".into(),
                namespace: "default".into(),
                file: "f".into(),
                document: 1,
            },
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            addresses: vec![],
            ports: vec![ServicePort {
                number: 80,
                protocol: Some("HTTP".into()),
                name: Some("http".into()),
                target_port: None,
            }],
            location: None,
            resolution: res,
            endpoints: eps,
            export_to: vec![],
            workload_selector: None,
        }
    }

    fn we(addr: &str, port: Option<u16>, version: &str) -> WorkloadEntry {
        WorkloadEntry {
            address: addr.into(),
            ports: port
                .map(|p| [("http".to_string(), p)].into())
                .unwrap_or_default(),
            labels: [("version".to_string(), version.to_string())].into(),
            weight: None,
        }
    }

    #[test]
    fn static_endpoints_ports_and_subsets() {
        let src = ServiceEntryEndpoints::new(
            &[se(
                &["api.internal"],
                Resolution::Static,
                vec![
                    we("127.0.0.2", Some(8080), "v1"),
                    we("127.0.0.3", None, "v2"),
                ],
            )],
            &system_resolver,
        );
        let all = src.endpoints("api.internal", 80, None).unwrap();
        let addrs: Vec<String> = all.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, vec!["127.0.0.2:8080", "127.0.0.3:80"]);
        let v2: BTreeMap<String, String> = [("version".to_string(), "v2".to_string())].into();
        let only = src.endpoints("api.internal", 80, Some(&v2)).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].addr.to_string(), "127.0.0.3:80");
        let v9: BTreeMap<String, String> = [("version".to_string(), "v9".to_string())].into();
        assert_eq!(src.endpoints("api.internal", 80, Some(&v9)), Some(vec![]));
        assert_eq!(src.endpoints("other.internal", 80, None), None);
    }

    #[test]
    fn dns_uses_resolver_and_none_is_unknown() {
        let fake = |name: &str| -> Vec<IpAddr> {
            match name {
                "db.example.com" => vec!["127.0.0.9".parse().unwrap()],
                _ => vec![],
            }
        };
        let src = ServiceEntryEndpoints::new(
            &[
                se(&["db.example.com"], Resolution::Dns, vec![]),
                se(&["*.wild.com"], Resolution::None, vec![]),
            ],
            &fake,
        );
        let eps = src.endpoints("db.example.com", 80, None).unwrap();
        assert_eq!(eps[0].addr.to_string(), "127.0.0.9:80");
        assert_eq!(src.endpoints("a.wild.com", 80, None), None);
    }

    #[test]
    fn chained_sources_answer_in_order() {
        #[derive(Debug)]
        struct Fixed(&'static str, &'static str);
        impl EndpointSource for Fixed {
            fn endpoints(
                &self,
                host: &str,
                port: u16,
                _: Option<&BTreeMap<String, String>>,
            ) -> Option<Vec<Endpoint>> {
                (host == self.0).then(|| {
                    vec![Endpoint {
                        addr: SocketAddr::new(self.1.parse().unwrap(), port),
                        labels: BTreeMap::new(),
                        weight: 1,
                    }]
                })
            }
        }
        let chain = ChainedEndpoints {
            sources: vec![
                std::sync::Arc::new(Fixed("a", "127.0.0.1")),
                std::sync::Arc::new(Fixed("a", "127.0.0.2")),
                std::sync::Arc::new(Fixed("b", "127.0.0.3")),
            ],
        };
        let ip = |h: &str| chain.endpoints(h, 80, None).map(|v| v[0].addr.to_string());
        assert_eq!(ip("a").as_deref(), Some("127.0.0.1:80"));
        assert_eq!(ip("b").as_deref(), Some("127.0.0.3:80"));
        assert_eq!(ip("c"), None);
    }

    #[test]
    fn system_resolver_reads_etc_hosts() {
        // localhost is in /etc/hosts on every test machine.
        let ips = system_resolver("localhost");
        assert!(ips.iter().any(|ip| ip.is_loopback()), "{ips:?}");
        assert_eq!(
            system_resolver("127.0.0.5"),
            vec!["127.0.0.5".parse::<IpAddr>().unwrap()]
        );
    }
}
