//! What a gateway pod (`remora-proxy gateway`) serves, as `remora describe pod` and `remora
//! proxy-config listeners` show it: the model's own plan of its listeners
//! (`remora_model::gateway::plan`) from the rules its namespace's proxies load, the servers on
//! each port, the VirtualServices bound to the selected Gateways, and the servers left out.

use std::collections::BTreeMap;
use std::fmt::Write;

use k8s_openapi::api::core::v1::Pod;
use remora_model::dump::{GatewayDump, GatewayServerDump};
use remora_model::gateway::{self, PortMap};
use remora_model::rules::Snapshot;

/// The environment variable of `--gateway-port-map`.
const PORT_MAP_ENV: &str = "REMORA_GATEWAY_PORT_MAP";

/// The gateway view of `pod` with `labels`: `Some` when the pod runs `remora-proxy gateway`
/// (a container whose arguments start with `gateway`) or a Gateway of `snap` selects it. The
/// port map is the container's `REMORA_GATEWAY_PORT_MAP` (the default when unset or not
/// readable). Offline, no server is known to be down (the gateway's own `/config_dump` says).
pub fn of(pod: &Pod, labels: &BTreeMap<String, String>, snap: &Snapshot) -> Option<GatewayDump> {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
    let runs_gateway = containers.into_iter().flatten().find(|c| {
        c.args.as_ref().and_then(|a| a.first()).map(String::as_str) == Some("gateway")
            || c.command
                .as_ref()
                .is_some_and(|cmd| cmd.iter().any(|w| w == "gateway"))
    });
    let selected = snap.gateways.iter().any(|g| gateway::selects(g, labels));
    if runs_gateway.is_none() && !selected {
        return None;
    }
    let ports = runs_gateway
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == PORT_MAP_ENV))
        .and_then(|e| e.value.as_deref())
        .and_then(|v| PortMap::parse(v).ok())
        .unwrap_or_default();
    let plan = gateway::plan(&snap.gateways, labels, &ports);
    Some(gateway::dump(
        &plan,
        &snap.gateway_virtual_services,
        |_, _| false,
        |_, _| None,
    ))
}

/// What a listener of `kind` does with a connection.
pub fn listener_does(kind: &str) -> &'static str {
    match kind {
        "http" => "plain HTTP/1.1 and h2c",
        "https" => "TLS terminated (the SNI picks the server), then HTTP",
        "tls" => "TLS terminated (the SNI picks the server), then TCP by tcp routes",
        "passthrough" => "TLS passed through, routed by SNI (tls routes; AUTO_PASSTHROUGH: to the service the SNI names)",
        "tls-by-sni" => "TLS servers of several modes: the SNI picks the server, which passes the connection through or terminates it (then HTTP or TCP)",
        _ => "TCP by tcp routes",
    }
}

/// One server: `Gateway ns/name spec.servers[i] PROTOCOL [hosts] tls MODE credentialName C`,
/// `(DOWN)` when its TLS settings are not loaded.
pub fn server_text(s: &GatewayServerDump) -> String {
    let mut t = format!("{} {} [{}]", s.server, s.protocol, s.hosts.join(","));
    if let Some(m) = &s.tls_mode {
        let _ = write!(t, " tls {m}");
    }
    if let Some(c) = &s.credential_name {
        let _ = write!(t, " credentialName {c}");
    }
    if let Some(c) = &s.certificate {
        let _ = write!(
            t,
            " certificate {} [{}] serial {} expires {}",
            c.subject,
            c.dns_names.join(","),
            c.serial,
            crate::secret::rfc3339(c.not_after)
        );
    }
    if s.state != "served" {
        let _ = write!(t, " ({})", s.state.to_uppercase());
    }
    t
}

/// The `Gateway:` section of `describe pod`.
pub fn render(g: &GatewayDump, o: &mut String) {
    let _ = writeln!(o, "Gateway (remora-proxy gateway):");
    if g.gateways.is_empty() {
        let _ = writeln!(
            o,
            "  no Gateway in the rules selects this pod's labels: nothing is served"
        );
    } else {
        let _ = writeln!(o, "  selected by: {}", g.gateways.join(", "));
    }
    for l in &g.listeners {
        let _ = writeln!(
            o,
            "  port {} (Gateway port {}): {}",
            l.port,
            l.gateway_port,
            listener_does(&l.kind)
        );
        for s in &l.servers {
            let _ = writeln!(o, "    {}", server_text(s));
        }
    }
    if !g.gateways.is_empty() {
        if g.virtual_services.is_empty() {
            let _ = writeln!(
                o,
                "  no VirtualService is bound to these Gateways: every request is answered 404"
            );
        }
        for vs in &g.virtual_services {
            let _ = writeln!(
                o,
                "  routes by VirtualService {}/{} (hosts {})",
                vs.meta.namespace,
                vs.meta.name,
                vs.hosts.join(", ")
            );
        }
    }
    for n in &g.not_served {
        let _ = writeln!(o, "  not served: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).expect("pod YAML")
    }

    fn snapshot(rules: &str) -> Snapshot {
        let ctx = remora_model::rules::LoadContext {
            namespace: "istio-system".into(),
            cluster_domain: "cluster.local".into(),
            pod_labels: BTreeMap::new(),
            root_namespace: "remora-system".into(),
        };
        remora_model::rules::snapshot_from_yaml(&[("rules.yaml", rules)], &ctx, 1)
            .expect("rules load")
    }

    const RULES: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: web, namespace: bookinfo}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [shop.example.com]\n    tls: {mode: SIMPLE, credentialName: shop-cert}\n  - port: {number: 15443, name: tls, protocol: TLS}\n    hosts: ['*.local']\n    tls: {mode: AUTO_PASSTHROUGH}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: pages, namespace: bookinfo}\nspec:\n  hosts: ['*']\n  gateways: [web]\n  http:\n  - route: [{destination: {host: productpage.bookinfo.svc.cluster.local, port: {number: 9080}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: mesh-only, namespace: bookinfo}\nspec:\n  hosts: [reviews.bookinfo.svc.cluster.local]\n  http:\n  - route: [{destination: {host: reviews.bookinfo.svc.cluster.local}}]\n";

    #[test]
    fn a_gateway_pod_is_described_with_its_plan_and_bound_routes() {
        let snap = snapshot(RULES);
        let gw = pod("metadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}\nspec:\n  containers:\n  - name: istio-proxy\n    args: [gateway]\n    env: [{name: REMORA_GATEWAY_PORT_MAP, value: '80=8080,443=9443'}]\n");
        let labels = BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]);
        let g = of(&gw, &labels, &snap).expect("a gateway");
        assert_eq!(g.gateways, ["bookinfo/web"]);
        let ports: Vec<(u16, u16, &str)> = g
            .listeners
            .iter()
            .map(|l| (l.port, l.gateway_port, l.kind.as_str()))
            .collect();
        assert_eq!(
            ports,
            [
                (8080, 80, "http"),
                (9443, 443, "https"),
                (15443, 15443, "passthrough")
            ]
        );
        let names: Vec<&str> = g
            .virtual_services
            .iter()
            .map(|v| v.meta.name.as_str())
            .collect();
        assert_eq!(names, ["pages"]);
        let mut text = String::new();
        render(&g, &mut text);
        for line in [
            "  selected by: bookinfo/web\n",
            "  port 9443 (Gateway port 443): TLS terminated (the SNI picks the server), then HTTP\n",
            "    Gateway bookinfo/web spec.servers[1] HTTPS [shop.example.com] tls SIMPLE credentialName shop-cert\n",
            "  routes by VirtualService bookinfo/pages (hosts *)\n",
            "  port 15443 (Gateway port 15443): TLS passed through, routed by SNI (tls routes; AUTO_PASSTHROUGH: to the service the SNI names)\n",
            "    Gateway bookinfo/web spec.servers[2] TLS [*.local] tls AUTO_PASSTHROUGH\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn other_pods_have_no_gateway_view_and_an_unselected_gateway_says_so() {
        let snap = snapshot(RULES);
        let app = pod("metadata: {name: app, namespace: bookinfo, labels: {app: web}}\nspec:\n  containers:\n  - {name: app, args: [serve]}\n");
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert_eq!(of(&app, &labels, &snap), None);
        let gw = pod("metadata: {name: gw, namespace: istio-system, labels: {istio: other}}\nspec:\n  containers:\n  - {name: istio-proxy, args: [gateway]}\n");
        let labels = BTreeMap::from([("istio".to_string(), "other".to_string())]);
        let g = of(&gw, &labels, &snap).expect("runs the gateway");
        assert!(g.gateways.is_empty() && g.listeners.is_empty());
        let mut text = String::new();
        render(&g, &mut text);
        assert!(
            text.contains("no Gateway in the rules selects this pod's labels"),
            "{text}"
        );
    }
}
