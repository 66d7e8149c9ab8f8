//! The lab's pure cluster model: Services with virtual IPs, their endpoints, and what the lab
//! renders from them: the kube-proxy stand-in's iptables rules, each pod's hosts file, and the
//! ServiceEntries that stand in for the mesh's service registry. Plain values in, text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The chain the kube-proxy stand-in owns in every pod's `nat` table.
pub const KUBE_CHAIN: &str = "KUBE-SERVICES";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    /// Kubernetes `appProtocol` when given (e.g. `grpc`, `http`, `tcp`).
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    pub selector: BTreeMap<String, String>,
}

/// A ready pod as the service machinery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
}

impl Service {
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    /// Pods in the service's namespace whose labels carry every selector pair (an empty selector
    /// selects nothing, as in Kubernetes).
    pub fn selects(&self, ep: &Endpoint) -> bool {
        !self.selector.is_empty()
            && ep.namespace == self.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| ep.labels.get(k) == Some(v))
    }

    /// The mesh protocol of a port: `appProtocol`, else the Istio port-name prefix convention.
    pub fn protocol(port: &ServicePort) -> &'static str {
        let name = port
            .app_protocol
            .clone()
            .unwrap_or_else(|| port.name.clone())
            .to_ascii_lowercase();
        let prefix = name.split('-').next().unwrap_or("");
        match prefix {
            "http" => "HTTP",
            "http2" | "h2c" => "HTTP2",
            "grpc" => "GRPC",
            "tcp" | "redis" | "mongo" | "mysql" => "TCP",
            _ => "TCP",
        }
    }
}

/// The `nat` table text for `iptables-restore --noflush`: the whole KUBE-SERVICES chain (declaring
/// it flushes the old content), one DNAT per backend, spread with `statistic --mode random` the way
/// kube-proxy does (rule i of n matches with probability 1/(n-i); the last one always).
/// A service without endpoints is rejected in the `filter` table's chain of the same name.
/// The jumps from OUTPUT are not part of it: see [`jump_last_commands`].
pub fn kube_proxy_rules(services: &[Service], endpoints: &[Endpoint]) -> String {
    let mut out = String::from("*nat\n");
    let _ = writeln!(out, ":{KUBE_CHAIN} - [0:0]");
    let mut reject = String::new();
    for svc in services {
        let backends: Vec<&Endpoint> = endpoints.iter().filter(|e| svc.selects(e)).collect();
        for port in &svc.ports {
            let n = backends.len();
            if n == 0 {
                let _ = writeln!(
                    reject,
                    "-A {KUBE_CHAIN} -d {}/32 -p tcp -m tcp --dport {} -m comment --comment \"{}/{}:{} has no endpoints\" -j REJECT --reject-with tcp-reset",
                    svc.vip, port.port, svc.namespace, svc.name, port.name
                );
                continue;
            }
            for (i, ep) in backends.iter().enumerate() {
                let left = n - i;
                let stat = if left > 1 {
                    format!(
                        " -m statistic --mode random --probability {:.10}",
                        1.0 / left as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "-A {KUBE_CHAIN} -d {}/32 -p tcp -m tcp --dport {} -m comment --comment \"{}/{}:{} -> {}\"{stat} -j DNAT --to-destination {}:{}",
                    svc.vip, port.port, svc.namespace, svc.name, port.name, ep.pod, ep.ip, port.target_port
                );
            }
        }
    }
    out.push_str("COMMIT\n*filter\n");
    let _ = writeln!(out, ":{KUBE_CHAIN} - [0:0]");
    out.push_str(&reject);
    out.push_str("COMMIT\n");
    out
}

/// The iptables invocations (args after `iptables`) that move the `OUTPUT -j KUBE-SERVICES` jump to
/// the end of OUTPUT: after the sidecar's capture jump, so an app's connection to a service IP is
/// captured first (the proxy sees the service IP, as in a cluster where kube-proxy runs on the
/// node), and only what capture lets through (the proxy's own uid, excluded ports, un-meshed pods)
/// is spread over the backends.
pub fn jump_last_commands() -> [Vec<&'static str>; 2] {
    [
        vec!["-t", "nat", "-D", "OUTPUT", "-j", KUBE_CHAIN],
        vec!["-t", "nat", "-A", "OUTPUT", "-j", KUBE_CHAIN],
    ]
}

/// A pod's `/etc/hosts`: itself, then every service (short name only in its own namespace).
pub fn hosts_file(pod: &str, pod_ns: &str, pod_ip: Ipv4Addr, services: &[Service]) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
    let _ = writeln!(out, "{pod_ip}\t{pod}");
    for svc in services {
        let mut names = vec![
            svc.fqdn(),
            format!("{}.{}.svc", svc.name, svc.namespace),
            format!("{}.{}", svc.name, svc.namespace),
        ];
        if svc.namespace == pod_ns {
            names.push(svc.name.clone());
        }
        let _ = writeln!(out, "{}\t{}", svc.vip, names.join(" "));
    }
    out
}

/// The hosts-file line for a Service of the control plane that runs on the node (the mesh CA):
/// its names (`name.ns.svc.cluster.local`, `name.ns.svc`, `name.ns`) at the node's address.
pub fn node_service_hosts(node_ip: Ipv4Addr, name: &str, namespace: &str) -> String {
    format!("{node_ip}\t{name}.{namespace}.svc.cluster.local {name}.{namespace}.svc {name}.{namespace}\n")
}

/// ServiceEntries for the services of one namespace, with their ready endpoints and labels: what a
/// control plane would derive from Services and Pods (the proxy's endpoint source in this
/// version is ServiceEntry).
pub fn service_entries(namespace: &str, services: &[Service], endpoints: &[Endpoint]) -> String {
    let mut docs = Vec::new();
    for svc in services.iter().filter(|s| s.namespace == namespace) {
        let ports: Vec<serde_json::Value> = svc
            .ports
            .iter()
            .map(|p| {
                serde_json::json!({
                    "number": p.port,
                    "name": p.name,
                    "protocol": Service::protocol(p),
                    "targetPort": p.target_port,
                })
            })
            .collect();
        let eps: Vec<serde_json::Value> = endpoints
            .iter()
            .filter(|e| svc.selects(e))
            .map(|e| {
                let port_map: serde_json::Map<String, serde_json::Value> = svc
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), serde_json::json!(p.target_port)))
                    .collect();
                serde_json::json!({
                    "address": e.ip.to_string(),
                    "labels": e.labels,
                    "ports": port_map,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": format!("lab-svc-{}", svc.name), "namespace": namespace},
            "spec": {
                "hosts": [svc.fqdn()],
                "addresses": [svc.vip.to_string()],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "ports": ports,
                "endpoints": eps,
            }
        });
        if let Ok(text) = serde_yaml_ng::to_string(&doc) {
            docs.push(text);
        }
    }
    docs.join("---\n")
}

/// A Kubernetes label selector (`matchLabels` + `matchExpressions`), as in the webhook's
/// `namespaceSelector` / `objectSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<(String, String, Vec<String>)>,
}

impl LabelSelector {
    /// Parses a selector object (`serde_json::Value`); unknown operators are an error.
    pub fn from_value(v: &serde_json::Value) -> Result<Self, String> {
        let mut sel = LabelSelector::default();
        if let Some(m) = v.get("matchLabels").and_then(|m| m.as_object()) {
            for (k, val) in m {
                sel.match_labels
                    .insert(k.clone(), val.as_str().unwrap_or_default().to_string());
            }
        }
        if let Some(list) = v.get("matchExpressions").and_then(|m| m.as_array()) {
            for e in list {
                let key = e.get("key").and_then(|k| k.as_str()).unwrap_or_default();
                let op = e
                    .get("operator")
                    .and_then(|k| k.as_str())
                    .unwrap_or_default();
                if !matches!(op, "In" | "NotIn" | "Exists" | "DoesNotExist") {
                    return Err(format!(
                        "selector operator {op:?} for key {key:?} is not one of In, NotIn, Exists, DoesNotExist"
                    ));
                }
                let values = e
                    .get("values")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                sel.match_expressions
                    .push((key.to_string(), op.to_string(), values));
            }
        }
        Ok(sel)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|(k, op, vals)| {
                let have = labels.get(k);
                match op.as_str() {
                    "In" => have.is_some_and(|h| vals.contains(h)),
                    "NotIn" => have.is_none_or(|h| !vals.contains(h)),
                    "Exists" => have.is_some(),
                    _ => have.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Service {
        Service {
            name: "reviews".into(),
            namespace: "bookinfo".into(),
            vip: Ipv4Addr::new(10, 96, 0, 12),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 9080,
                target_port: 9080,
                app_protocol: None,
            }],
            selector: [("app".to_string(), "reviews".to_string())].into(),
        }
    }

    fn ep(pod: &str, ip: u8, app: &str, version: &str) -> Endpoint {
        Endpoint {
            pod: pod.into(),
            namespace: "bookinfo".into(),
            ip: Ipv4Addr::new(10, 244, 0, ip),
            labels: [
                ("app".to_string(), app.to_string()),
                ("version".to_string(), version.to_string()),
            ]
            .into(),
        }
    }

    #[test]
    fn kube_proxy_spreads_over_selected_backends_only() {
        let eps = vec![
            ep("reviews-v1", 5, "reviews", "v1"),
            ep("ratings-v1", 6, "ratings", "v1"),
            ep("reviews-v2", 7, "reviews", "v2"),
            ep("reviews-v3", 8, "reviews", "v3"),
        ];
        let text = kube_proxy_rules(&[svc()], &eps);
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(rules.len(), 3, "{text}");
        assert!(
            rules[0].contains("--probability 0.3333333333")
                && rules[0].ends_with("10.244.0.5:9080")
        );
        assert!(
            rules[1].contains("--probability 0.5000000000")
                && rules[1].ends_with("10.244.0.7:9080")
        );
        assert!(!rules[2].contains("statistic") && rules[2].ends_with("10.244.0.8:9080"));
        assert!(
            text.starts_with("*nat\n:KUBE-SERVICES - [0:0]\n")
                && text.ends_with("*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"),
            "{text}"
        );
    }

    #[test]
    fn service_without_endpoints_rejects() {
        let text = kube_proxy_rules(&[svc()], &[]);
        let (nat, filter) = text.split_once("*filter").unwrap();
        assert!(!nat.contains("REJECT"), "{text}");
        assert!(filter.contains("-A KUBE-SERVICES -d 10.96.0.12/32 -p tcp -m tcp --dport 9080 -m comment --comment \"bookinfo/reviews:http has no endpoints\" -j REJECT --reject-with tcp-reset"), "{text}");
    }

    #[test]
    fn hosts_short_names_only_in_own_namespace() {
        let own = hosts_file("p", "bookinfo", Ipv4Addr::new(10, 244, 0, 9), &[svc()]);
        assert!(own.contains("10.96.0.12\treviews.bookinfo.svc.cluster.local reviews.bookinfo.svc reviews.bookinfo reviews\n"), "{own}");
        let other = hosts_file("p", "other", Ipv4Addr::new(10, 244, 0, 9), &[svc()]);
        assert!(other.contains("reviews.bookinfo\n"), "{other}");
        assert!(!other.contains(" reviews\n"));
    }

    #[test]
    fn service_entries_carry_endpoint_labels() {
        let eps = vec![
            ep("reviews-v1", 5, "reviews", "v1"),
            ep("ratings-v1", 6, "ratings", "v1"),
        ];
        let text = service_entries("bookinfo", &[svc()], &eps);
        let v: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v["spec"]["hosts"][0], "reviews.bookinfo.svc.cluster.local");
        assert_eq!(v["spec"]["addresses"][0], "10.96.0.12");
        assert_eq!(v["spec"]["ports"][0]["protocol"], "HTTP");
        let e = v["spec"]["endpoints"].as_array().unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["address"], "10.244.0.5");
        assert_eq!(e[0]["labels"]["version"], "v1");
        assert!(service_entries("other", &[svc()], &eps).is_empty());
    }

    #[test]
    fn port_protocols_follow_istio_naming() {
        let mut p = svc().ports[0].clone();
        for (name, proto) in [
            ("http", "HTTP"),
            ("grpc-echo", "GRPC"),
            ("tcp-kv", "TCP"),
            ("redis", "TCP"),
            ("web", "TCP"),
        ] {
            p.name = name.into();
            assert_eq!(Service::protocol(&p), proto, "{name}");
        }
        p.app_protocol = Some("grpc".into());
        assert_eq!(Service::protocol(&p), "GRPC");
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let sel = LabelSelector::from_value(&serde_json::json!({
            "matchExpressions": [
                {"key": "istio-injection", "operator": "In", "values": ["enabled"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}
            ]
        }))
        .unwrap();
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(sel.matches(&l(&[
            ("istio-injection", "enabled"),
            ("kubernetes.io/metadata.name", "bookinfo")
        ])));
        assert!(!sel.matches(&l(&[("kubernetes.io/metadata.name", "bookinfo")])));
        assert!(!sel.matches(&l(&[
            ("istio-injection", "enabled"),
            ("kubernetes.io/metadata.name", "kube-system")
        ])));
        assert!(LabelSelector::from_value(
            &serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Gt"}]})
        )
        .is_err());
    }
}
