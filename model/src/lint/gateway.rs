//! `remora analyze`'s checks of the cluster's gateways, made on the Istio objects as the API
//! server holds them (every namespace at once), not on one proxy's rule set:
//!
//! - a VirtualService bound (`spec.gateways` or a match's `gateways`) to a Gateway that does
//!   not exist;
//! - a VirtualService bound to a Gateway none of whose server hosts (admitting the
//!   VirtualService's namespace) overlaps a host of its own, so the gateway never routes to it;
//! - a Gateway whose selector matches no pod (no gateway serves it);
//! - servers that conflict on one port of a gateway pod (another protocol or TLS handling, so
//!   one is left out; or the same host twice, so the first loaded wins);
//! - a server whose `credentialName` names no Secret in the namespace of the gateway pods that
//!   serve it (the server stays down until the Secret exists).
//!
//! The caller (the CLI) reads the objects, the selected pods and the Secrets; everything here
//! is decided on that data, so a table tests it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::gateway::{plan, PortMap};
use crate::host::overlaps;
use crate::route::gateway_ref;
use crate::rules::gateway::{Gateway, HostNamespace, TlsMode};

/// A finding about one object: `Kind namespace/name`, the field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayFinding {
    /// `error` (the gateway does not do what the object asks) or `warning`.
    pub level: &'static str,
    /// `Kind namespace/name`.
    pub object: String,
    pub field: String,
    pub message: String,
}

/// What a VirtualService says about gateways: its hosts and every gateway reference, with the
/// field that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayBinding {
    pub namespace: String,
    pub name: String,
    /// `spec.hosts`, lower case, short names completed in the VirtualService's namespace.
    pub hosts: Vec<String>,
    /// (field, reference as written), `mesh` left out.
    pub refs: Vec<(String, String)>,
}

impl GatewayBinding {
    /// Read a VirtualService object (`metadata`, `spec.hosts`, `spec.gateways`, and the
    /// `gateways` of its `http`, `tls` and `tcp` matches). `None` for an object that is not a
    /// VirtualService or names no gateway but `mesh`.
    pub fn from_object(v: &Value, cluster_domain: &str) -> Option<GatewayBinding> {
        if v.get("kind").and_then(Value::as_str) != Some("VirtualService") {
            return None;
        }
        let md = v.get("metadata")?;
        let namespace = md.get("namespace")?.as_str()?.to_string();
        let name = md.get("name")?.as_str()?.to_string();
        let spec = v.get("spec")?;
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let hosts = strings(spec.get("hosts"))
            .into_iter()
            .map(|h| complete_host(&h, &namespace, cluster_domain))
            .collect();
        let mut refs = Vec::new();
        for (i, g) in strings(spec.get("gateways")).into_iter().enumerate() {
            refs.push((format!("spec.gateways[{i}]"), g));
        }
        for section in ["http", "tls", "tcp"] {
            let routes = spec.get(section).and_then(Value::as_array);
            for (i, r) in routes.into_iter().flatten().enumerate() {
                let matches = r.get("match").and_then(Value::as_array);
                for (j, m) in matches.into_iter().flatten().enumerate() {
                    for (k, g) in strings(m.get("gateways")).into_iter().enumerate() {
                        refs.push((format!("spec.{section}[{i}].match[{j}].gateways[{k}]"), g));
                    }
                }
            }
        }
        refs.retain(|(_, g)| g != "mesh");
        (!refs.is_empty()).then_some(GatewayBinding {
            namespace,
            name,
            hosts,
            refs,
        })
    }
}

/// A VirtualService host as a gateway matches it: lower case; a short name (no dot, not a
/// wildcard) is a Service of the VirtualService's namespace.
fn complete_host(h: &str, ns: &str, cluster_domain: &str) -> String {
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    if h.contains('.') || h.starts_with('*') {
        h
    } else {
        format!("{h}.{ns}.svc.{cluster_domain}")
    }
}

/// What the CLI found in the cluster for the checks that need more than the objects.
#[derive(Clone, Debug, Default)]
pub struct GatewayContext {
    /// Every Gateway's `namespace/name`, valid or not (an invalid one is reported on its own;
    /// a VirtualService bound to it is not "bound to a missing Gateway").
    pub gateway_ids: BTreeSet<String>,
    /// Per Gateway (`namespace/name`): the namespaces of the pods its selector matches, `None`
    /// when the pods could not be listed.
    pub pod_namespaces: BTreeMap<String, Option<BTreeSet<String>>>,
    /// Secrets looked up: (namespace, name) → found; a pair absent or `None`: not checked.
    pub secrets: BTreeMap<(String, String), Option<bool>>,
}

/// The `(namespace, name)` Secrets whose existence the checks need: each `credentialName` in
/// each namespace of the pods its Gateway selects (given by `pod_namespaces`).
pub fn secrets_to_look_up(
    gateways: &[Gateway],
    pod_namespaces: &BTreeMap<String, Option<BTreeSet<String>>>,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for gw in gateways {
        let Some(Some(namespaces)) = pod_namespaces.get(&gw.meta.key()) else {
            continue;
        };
        for name in credential_names(gw) {
            for ns in namespaces {
                out.insert((ns.clone(), name.to_string()));
            }
        }
    }
    out
}

fn credential_names(gw: &Gateway) -> impl Iterator<Item = &str> {
    gw.servers.iter().filter_map(|s| {
        let tls = s.tls.as_ref()?;
        match tls.mode {
            Some(TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual) => {
                tls.credential_name.as_deref()
            }
            _ => None,
        }
    })
}

/// Every finding about `gateways` (the decoded, valid ones) and the VirtualServices that name
/// a gateway, given what the CLI found in `cx`.
pub fn check(
    gateways: &[Gateway],
    bindings: &[GatewayBinding],
    cx: &GatewayContext,
) -> Vec<GatewayFinding> {
    let mut out = Vec::new();
    let by_key: BTreeMap<String, &Gateway> = gateways.iter().map(|g| (g.meta.key(), g)).collect();
    for b in bindings {
        let object = format!("VirtualService {}/{}", b.namespace, b.name);
        let mut seen = BTreeSet::new();
        for (field, reference) in &b.refs {
            let Some(key) = gateway_ref(&b.namespace, reference) else {
                continue;
            };
            if !seen.insert(key.clone()) {
                continue;
            }
            if !cx.gateway_ids.contains(&key) {
                out.push(GatewayFinding {
                    level: "error",
                    object: object.clone(),
                    field: field.clone(),
                    message: format!(
                        "bound to Gateway {key}, which does not exist: no gateway routes by this VirtualService there"
                    ),
                });
                continue;
            }
            let Some(gw) = by_key.get(&key) else { continue };
            if let Some(m) = host_mismatch(gw, b) {
                out.push(GatewayFinding {
                    level: "warning",
                    object: object.clone(),
                    field: "spec.hosts".into(),
                    message: m,
                });
            }
        }
    }
    for gw in gateways {
        let object = format!("Gateway {}", gw.meta.key());
        match cx.pod_namespaces.get(&gw.meta.key()) {
            Some(Some(ns)) if ns.is_empty() => out.push(GatewayFinding {
                level: "warning",
                object: object.clone(),
                field: "spec.selector".into(),
                message: format!(
                    "no pod has the labels {}: no gateway serves this Gateway",
                    labels_text(&gw.selector)
                ),
            }),
            Some(Some(namespaces)) => {
                for s in &gw.servers {
                    let Some(name) = s.tls.as_ref().and_then(|t| {
                        matches!(
                            t.mode,
                            Some(TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual)
                        )
                        .then_some(t.credential_name.as_deref())
                        .flatten()
                    }) else {
                        continue;
                    };
                    let missing: Vec<&str> = namespaces
                        .iter()
                        .filter(|ns| {
                            cx.secrets.get(&((*ns).clone(), name.to_string())) == Some(&Some(false))
                        })
                        .map(String::as_str)
                        .collect();
                    if !missing.is_empty() {
                        out.push(GatewayFinding {
                            level: "error",
                            object: object.clone(),
                            field: format!("spec.servers[{}].tls.credentialName", s.index),
                            message: format!(
                                "no Secret {name:?} in namespace {} (where the gateway pods that serve this Gateway run): this server stays down until it exists",
                                missing.join(", ")
                            ),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    for gw in gateways {
        for (field, reason) in crate::gateway::cipher_suite_problems(gw) {
            out.push(GatewayFinding {
                level: "error",
                object: format!("Gateway {}", gw.meta.key()),
                field,
                message: format!("{reason}: the gateway keeps this server down"),
            });
        }
    }
    out.extend(port_conflicts(gateways));
    out
}

/// `None` when some server host of `gw` that admits the VirtualService's namespace overlaps
/// one of its hosts; else why the gateway never routes to it.
fn host_mismatch(gw: &Gateway, b: &GatewayBinding) -> Option<String> {
    let mut admitting = Vec::new();
    for s in &gw.servers {
        for h in &s.hosts {
            if h.admits_namespace(&gw.meta.namespace, &b.namespace) {
                if b.hosts.iter().any(|vh| overlaps(&h.host, vh)) {
                    return None;
                }
                admitting.push(h.host.as_str());
            }
        }
    }
    let servers_hosts: Vec<String> = gw
        .servers
        .iter()
        .flat_map(|s| s.hosts.iter())
        .map(|h| match &h.namespace {
            HostNamespace::Any => h.host.clone(),
            HostNamespace::Gateway => format!("./{}", h.host),
            HostNamespace::Named(n) => format!("{n}/{}", h.host),
        })
        .collect();
    Some(if admitting.is_empty() {
        format!(
            "Gateway {} admits no VirtualService of namespace {} (its server hosts: {}): the gateway never routes by this VirtualService",
            gw.meta.key(),
            b.namespace,
            servers_hosts.join(", ")
        )
    } else {
        format!(
            "none of the hosts {} matches a host of Gateway {} (its server hosts: {}): the gateway never routes by this VirtualService",
            b.hosts.join(", "),
            gw.meta.key(),
            servers_hosts.join(", ")
        )
    })
}

/// Conflicts between servers on one port of a gateway pod: for each distinct selector (the
/// labels of a pod it selects), the servers the gateway's own plan leaves out for a conflict,
/// and servers of different Gateways serving the same host on one port (the first loaded
/// wins).
fn port_conflicts(gateways: &[Gateway]) -> Vec<GatewayFinding> {
    let mut out = Vec::new();
    let selectors: BTreeSet<&BTreeMap<String, String>> = gateways
        .iter()
        .map(|g| &g.selector)
        .filter(|s| !s.is_empty())
        .collect();
    let mut said = BTreeSet::new();
    for sel in selectors {
        let p = plan(gateways, sel, &PortMap::default());
        for line in &p.not_served {
            if line.contains(": conflicts with ") && said.insert(line.clone()) {
                // The line starts with the left-out server: `Gateway ns/name spec.servers[i]`.
                let mut words = line.split(' ').skip(1);
                let (key, field) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                out.push(GatewayFinding {
                    level: "error",
                    object: format!("Gateway {key}"),
                    field: field.to_string(),
                    message: format!("on a gateway pod labelled {}: {line}", labels_text(sel)),
                });
            }
        }
        for l in &p.listeners {
            for (i, a) in l.servers.iter().enumerate() {
                for b in &l.servers[i + 1..] {
                    if a.gateway == b.gateway {
                        continue;
                    }
                    let shared = a.server.hosts.iter().find(|ha| {
                        b.server
                            .hosts
                            .iter()
                            .any(|hb| ha.host == hb.host && ha.namespace == hb.namespace)
                    });
                    if let Some(h) = shared {
                        let line = format!(
                            "{} and {} both serve host {} on port {}: the first loaded wins",
                            a.describe(),
                            b.describe(),
                            h.host,
                            l.gateway_port
                        );
                        if said.insert(line.clone()) {
                            out.push(GatewayFinding {
                                level: "warning",
                                object: format!("Gateway {}", b.gateway),
                                field: format!("spec.servers[{}].hosts", b.server.index),
                                message: format!(
                                    "on a gateway pod labelled {}: {line}",
                                    labels_text(sel)
                                ),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Labels as a Kubernetes label selector and as messages write them: `k=v,k2=v2`.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Meta;

    fn gateway(ns: &str, name: &str, yaml: &str) -> Gateway {
        let spec: Value = serde_yaml_ng::from_str(yaml).expect("spec YAML");
        let meta = Meta {
            kind: "Gateway".into(),
            api_version: "networking.istio.io/v1".into(),
            name: name.into(),
            namespace: ns.into(),
            file: String::new(),
            document: 0,
        };
        crate::rules::gateway::decode(meta, &spec, &mut Vec::new()).expect("valid Gateway")
    }

    fn binding(ns: &str, name: &str, spec: &str) -> GatewayBinding {
        let spec: Value = serde_yaml_ng::from_str(spec).expect("spec YAML");
        let v = serde_json::json!({
            "kind": "VirtualService",
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        });
        GatewayBinding::from_object(&v, "cluster.local").expect("names a gateway")
    }

    fn bookinfo_gateway() -> Gateway {
        gateway(
            "bookinfo",
            "bookinfo-gateway",
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 8080, name: http, protocol: HTTP}\n  hosts: ['*']\n",
        )
    }

    fn cx(gateways: &[Gateway]) -> GatewayContext {
        GatewayContext {
            gateway_ids: gateways.iter().map(|g| g.meta.key()).collect(),
            ..GatewayContext::default()
        }
    }

    #[test]
    fn bindings_are_read_from_every_place_a_virtual_service_names_a_gateway() {
        let b = binding(
            "bookinfo",
            "vs",
            "hosts: [reviews, 'Shop.Example.com']\ngateways: [mesh, bookinfo-gateway]\nhttp:\n- match: [{gateways: [istio-system/edge]}]\n  route: [{destination: {host: reviews}}]\ntls:\n- match: [{sniHosts: [a.example.com], gateways: [edge.istio-system.svc.cluster.local]}]\n  route: [{destination: {host: a}}]\n",
        );
        assert_eq!(
            b.hosts,
            ["reviews.bookinfo.svc.cluster.local", "shop.example.com"]
        );
        assert_eq!(
            b.refs,
            [
                (
                    "spec.gateways[1]".to_string(),
                    "bookinfo-gateway".to_string()
                ),
                (
                    "spec.http[0].match[0].gateways[0]".to_string(),
                    "istio-system/edge".to_string()
                ),
                (
                    "spec.tls[0].match[0].gateways[0]".to_string(),
                    "edge.istio-system.svc.cluster.local".to_string()
                ),
            ]
        );
        // Bound to the mesh only (or to nothing): not a gateway binding.
        let v = serde_json::json!({"kind": "VirtualService", "metadata": {"namespace": "a", "name": "b"},
            "spec": {"hosts": ["x"], "gateways": ["mesh"], "http": [{"route": []}]}});
        assert_eq!(GatewayBinding::from_object(&v, "cluster.local"), None);
        let v = serde_json::json!({"kind": "DestinationRule", "metadata": {"namespace": "a", "name": "b"}, "spec": {}});
        assert_eq!(GatewayBinding::from_object(&v, "cluster.local"), None);
    }

    #[test]
    fn a_virtual_service_bound_to_a_missing_gateway_is_an_error() {
        let gws = [bookinfo_gateway()];
        let b = binding(
            "bookinfo",
            "bookinfo",
            "hosts: ['*']\ngateways: [bookinfo-gateway, istio-system/missing]\nhttp: [{route: [{destination: {host: productpage}}]}]\n",
        );
        let f = check(&gws, &[b], &cx(&gws));
        assert_eq!(
            f,
            [GatewayFinding {
                level: "error",
                object: "VirtualService bookinfo/bookinfo".into(),
                field: "spec.gateways[1]".into(),
                message: "bound to Gateway istio-system/missing, which does not exist: no gateway routes by this VirtualService there".into(),
            }]
        );
        // An invalid Gateway exists (reported on its own), so no second finding here.
        let mut c = cx(&gws);
        c.gateway_ids.insert("istio-system/missing".into());
        let b = binding(
            "bookinfo",
            "bookinfo",
            "hosts: ['*']\ngateways: [istio-system/missing]\nhttp: [{route: [{destination: {host: productpage}}]}]\n",
        );
        assert_eq!(check(&gws, &[b], &c), []);
    }

    #[test]
    fn host_mismatches_between_gateway_and_virtual_service() {
        let gw = gateway(
            "istio-system",
            "edge",
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['shop/*.example.com', './admin.example.com']\n",
        );
        let gws = [gw];
        let c = cx(&gws);
        let cases = [
            // (namespace, hosts, finding expected)
            ("shop", "['www.example.com']", None),
            ("shop", "['*']", None),
            ("shop", "['*.example.com']", None),
            ("shop", "['www.example.org']", Some("none of the hosts www.example.org matches a host of Gateway istio-system/edge (its server hosts: shop/*.example.com, ./admin.example.com)")),
            ("istio-system", "['admin.example.com']", None),
            ("other", "['www.example.com']", Some("Gateway istio-system/edge admits no VirtualService of namespace other (its server hosts: shop/*.example.com, ./admin.example.com)")),
            // A short name is a cluster Service: never an external host of this Gateway.
            ("shop", "[cart]", Some("none of the hosts cart.shop.svc.cluster.local matches")),
        ];
        for (ns, hosts, want) in cases {
            let b = binding(
                ns,
                "vs",
                &format!("hosts: {hosts}\ngateways: [istio-system/edge]\nhttp: [{{route: [{{destination: {{host: x}}}}]}}]\n"),
            );
            let f = check(&gws, &[b], &c);
            match want {
                None => assert_eq!(f, [], "{ns} {hosts}"),
                Some(w) => {
                    assert_eq!(f.len(), 1, "{ns} {hosts}: {f:?}");
                    assert_eq!(f[0].level, "warning");
                    assert_eq!(f[0].field, "spec.hosts");
                    assert!(
                        f[0].message.starts_with(w),
                        "{ns} {hosts}: {}",
                        f[0].message
                    );
                }
            }
        }
    }

    #[test]
    fn a_selector_without_pods_and_a_credential_without_secret() {
        let gw = gateway(
            "bookinfo",
            "https",
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: bookinfo-cert}\n- port: {number: 9443, name: tls, protocol: TLS}\n  hosts: ['*']\n  tls: {mode: PASSTHROUGH}\n",
        );
        let gws = [gw];
        let key = "bookinfo/https".to_string();
        // Pods in istio-system: the Secret is looked up there.
        let mut pods = BTreeMap::new();
        pods.insert(
            key.clone(),
            Some(BTreeSet::from(["istio-system".to_string()])),
        );
        assert_eq!(
            secrets_to_look_up(&gws, &pods),
            BTreeSet::from([("istio-system".to_string(), "bookinfo-cert".to_string())])
        );
        let mut c = cx(&gws);
        c.pod_namespaces = pods.clone();
        c.secrets
            .insert(("istio-system".into(), "bookinfo-cert".into()), Some(false));
        let f = check(&gws, &[], &c);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].level, "error");
        assert_eq!(f[0].field, "spec.servers[0].tls.credentialName");
        assert!(f[0]
            .message
            .starts_with("no Secret \"bookinfo-cert\" in namespace istio-system"));
        // Found, or not checked (forbidden): nothing to say.
        for found in [Some(true), None] {
            c.secrets
                .insert(("istio-system".into(), "bookinfo-cert".into()), found);
            assert_eq!(check(&gws, &[], &c), []);
        }
        // No pod selected: one warning, no Secret lookup.
        c.pod_namespaces.insert(key.clone(), Some(BTreeSet::new()));
        assert!(secrets_to_look_up(&gws, &c.pod_namespaces).is_empty());
        let f = check(&gws, &[], &c);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].field, "spec.selector");
        assert_eq!(
            f[0].message,
            "no pod has the labels istio=ingressgateway: no gateway serves this Gateway"
        );
        // Pods could not be listed: nothing said.
        c.pod_namespaces.insert(key, None);
        assert_eq!(check(&gws, &[], &c), []);
    }

    #[test]
    fn conflicting_servers_on_one_port() {
        let a = gateway(
            "shop",
            "a",
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['shop.example.com']\n",
        );
        let same_host = gateway(
            "shop",
            "b",
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 80, name: http2, protocol: HTTP}\n  hosts: ['shop.example.com', 'other.example.com']\n",
        );
        let other_protocol = gateway(
            "shop",
            "c",
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 80, name: tcp, protocol: TCP}\n  hosts: ['*']\n",
        );
        let other_gateway_pod = gateway(
            "shop",
            "d",
            "selector: {istio: egressgateway}\nservers:\n- port: {number: 80, name: tcp, protocol: TCP}\n  hosts: ['*']\n",
        );
        let gws = [a, same_host, other_protocol, other_gateway_pod];
        let f = check(&gws, &[], &cx(&gws));
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].level, "error");
        assert_eq!(f[0].object, "Gateway shop/c");
        assert_eq!(f[0].field, "spec.servers[0]");
        assert!(
            f[0].message.starts_with("on a gateway pod labelled istio=ingressgateway: Gateway shop/c spec.servers[0] (port 80, listening on 8080): conflicts with Gateway shop/a spec.servers[0]"),
            "{}",
            f[0].message
        );
        assert_eq!(f[1].level, "warning");
        assert_eq!(f[1].object, "Gateway shop/b");
        assert_eq!(f[1].field, "spec.servers[0].hosts");
        assert!(
            f[1].message
                .contains("both serve host shop.example.com on port 80: the first loaded wins"),
            "{}",
            f[1].message
        );
        // Alone, each is fine.
        for g in &gws {
            let one = std::slice::from_ref(g);
            assert_eq!(check(one, &[], &cx(one)), []);
        }
    }
    #[test]
    fn cipher_suites_that_cannot_be_offered() {
        let g = |suites: &str| {
            gateway(
                "istio-system",
                "edge",
                &format!("selector: {{istio: ingressgateway}}\nservers:\n- port: {{number: 443, name: a, protocol: HTTPS}}\n  hosts: ['a.example.com']\n  tls: {{mode: SIMPLE, credentialName: a}}\n- port: {{number: 443, name: b, protocol: HTTPS}}\n  hosts: ['b.example.com']\n  tls: {{mode: SIMPLE, credentialName: b, cipherSuites: [{suites}]}}\n"),
            )
        };
        let cases: &[(&str, Option<&str>)] = &[
            ("ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-CHACHA20-POLY1305", None),
            (
                "ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-SHA",
                Some("spec.servers[1].tls.cipherSuites[1]: \"ECDHE-RSA-AES128-SHA\" is not supported by remora's TLS library (rustls)"),
            ),
            (
                "NOT-A-SUITE",
                Some("spec.servers[1].tls.cipherSuites[0]: \"NOT-A-SUITE\" is not a cipher suite name Envoy knows"),
            ),
        ];
        // Not applied where the gateway does not terminate with its own certificate.
        let pass = gateway(
            "istio-system",
            "pass",
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 443, name: a, protocol: TLS}\n  hosts: ['a.example.com']\n  tls: {mode: PASSTHROUGH, cipherSuites: [AES128-SHA]}\n",
        );
        let one = std::slice::from_ref(&pass);
        assert_eq!(check(one, &[], &cx(one)), []);
        for (suites, want) in cases {
            let gws = [g(suites)];
            let f = check(&gws, &[], &cx(&gws));
            match want {
                None => assert_eq!(f, [], "{suites}"),
                Some(w) => {
                    assert_eq!(f.len(), 1, "{f:?}");
                    assert_eq!(
                        (f[0].level, f[0].object.as_str()),
                        ("error", "Gateway istio-system/edge")
                    );
                    let line = format!("{}: {}", f[0].field, f[0].message);
                    assert!(line.starts_with(w), "{line}");
                    assert!(
                        line.ends_with("the gateway keeps this server down"),
                        "{line}"
                    );
                }
            }
        }
    }
}
