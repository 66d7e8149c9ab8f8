//! What a gateway pod (`remora-proxy gateway`) serves, as `remora describe pod` and `remora
//! proxy-config listeners` show it: the model's own plan of its listeners
//! (`remora_model::gateway::plan`) from the rules its namespace's proxies load, the servers on
//! each port, the VirtualServices bound to the selected Gateways, and the servers left out; for
//! `describe`, each server's state and certificate as the gateway's own `/config_dump` reports
//! them ([`take_live`]), or, without it, whether each `credentialName` Secret exists
//! ([`TlsSource`]).

use std::collections::BTreeMap;
use std::fmt::Write;

use k8s_openapi::api::core::v1::{Container, Pod};
use remora_model::dump::{GatewayDump, GatewayServerDump};
use remora_model::gateway::{self, PortMap};
use remora_model::rules::Snapshot;
use serde::Serialize;

/// The environment variable of `--gateway-port-map`.
const PORT_MAP_ENV: &str = "REMORA_GATEWAY_PORT_MAP";

/// The container running `remora-proxy gateway` (its arguments start with `gateway`, or its
/// command names it), if the pod has one.
pub fn gateway_container(pod: &Pod) -> Option<&Container> {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
    containers.into_iter().flatten().find(|c| {
        c.args.as_ref().and_then(|a| a.first()).map(String::as_str) == Some("gateway")
            || c.command
                .as_ref()
                .is_some_and(|cmd| cmd.iter().any(|w| w == "gateway"))
    })
}

/// The gateway view of `pod` with `labels`: `Some` when the pod runs `remora-proxy gateway`
/// ([`gateway_container`]) or a Gateway of `snap` selects it. The port map is the container's
/// `REMORA_GATEWAY_PORT_MAP` (the default when unset or not readable). Offline, no server is
/// known to be down and no certificate is known: [`take_live`] adds them from the gateway.
pub fn of(pod: &Pod, labels: &BTreeMap<String, String>, snap: &Snapshot) -> Option<GatewayDump> {
    let runs_gateway = gateway_container(pod);
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

/// Where `describe` took the servers' states and certificates from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TlsSource {
    /// From the gateway's own `/config_dump` (the states and certificates it serves).
    pub live: bool,
    /// What was read, or why the gateway could not be asked.
    pub note: String,
    /// Without the live dump: per `credentialName`, whether its Secret is in the gateway pod's
    /// namespace (`None`: it could not be read).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Option<bool>>,
}

/// The `credentialName`s of `g`'s servers, each once.
pub fn credential_names(g: &GatewayDump) -> Vec<String> {
    let mut names: Vec<String> = g
        .listeners
        .iter()
        .flat_map(|l| &l.servers)
        .filter_map(|s| s.credential_name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Each server of `view` (planned from the rules) takes the state and certificate that the
/// gateway's own dump `live` reports for the same server on the same port. Returns the servers
/// of `view` the gateway does not report (its rules differ from these).
pub fn take_live(view: &mut GatewayDump, live: &GatewayDump) -> Vec<String> {
    let mut missing = Vec::new();
    for l in &mut view.listeners {
        let live_l = live.listeners.iter().find(|x| x.port == l.port);
        for s in &mut l.servers {
            match live_l.and_then(|x| x.servers.iter().find(|y| y.server == s.server)) {
                Some(y) => {
                    s.state = y.state.clone();
                    s.certificate = y.certificate.clone();
                }
                None => missing.push(format!("{} on port {}", s.server, l.port)),
            }
        }
    }
    missing
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

/// Without a certificate from the gateway: what the Secret of the server's `credentialName`
/// says, in `tls`'s words.
fn secret_text(s: &GatewayServerDump, tls: &TlsSource) -> Option<String> {
    if tls.live || s.certificate.is_some() {
        return None;
    }
    let name = s.credential_name.as_ref()?;
    Some(match tls.secrets.get(name) {
        Some(Some(true)) => {
            format!("Secret {name} exists: the certificate it serves is the gateway's to say")
        }
        Some(Some(false)) => format!(
            "no Secret {name} in the gateway's namespace: this server is down until it exists"
        ),
        _ => format!("Secret {name} not readable: whether it is loaded is not known"),
    })
}

/// The `Gateway:` section of `describe pod`; `tls`: where the servers' states and certificates
/// come from (`None`: not asked).
pub fn render(g: &GatewayDump, tls: Option<&TlsSource>, o: &mut String) {
    let _ = writeln!(o, "Gateway (remora-proxy gateway):");
    if g.gateways.is_empty() {
        let _ = writeln!(
            o,
            "  no Gateway in the rules selects this pod's labels: nothing is served"
        );
    } else {
        let _ = writeln!(o, "  selected by: {}", g.gateways.join(", "));
    }
    if let Some(t) = tls {
        let _ = writeln!(o, "  servers and certificates: {}", t.note);
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
            if let Some(t) = tls.and_then(|t| secret_text(s, t)) {
                let _ = writeln!(o, "      {t}");
            }
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
        render(&g, None, &mut text);
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
    fn describe_shows_the_certificates_the_gateway_serves_or_what_its_secrets_say() {
        let snap = snapshot(RULES);
        let gw = pod("metadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}\nspec:\n  containers:\n  - name: istio-proxy\n    args: [gateway]\n    env: [{name: REMORA_GATEWAY_PORT_MAP, value: '80=8080,443=9443'}]\n");
        let labels = BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]);
        let planned = of(&gw, &labels, &snap).expect("a gateway");
        assert_eq!(credential_names(&planned), ["shop-cert"]);
        // The gateway's own dump: the HTTPS server with its certificate; the plain server
        // down (as a live dump may say), and one server of other rules.
        let mut live = planned.clone();
        for l in &mut live.listeners {
            for s in &mut l.servers {
                if s.credential_name.is_some() {
                    s.certificate = Some(remora_model::dump::ServedCertificateDump {
                        subject: "CN=shop.example.com".into(),
                        dns_names: vec!["shop.example.com".into(), "www.shop.example.com".into()],
                        serial: "0a1b".into(),
                        not_after: 1_796_601_600,
                    });
                }
            }
        }
        live.listeners[2].servers[0].state = "down".into();
        live.listeners.remove(0);
        let mut g = planned.clone();
        let missing = take_live(&mut g, &live);
        assert_eq!(
            missing,
            ["Gateway bookinfo/web spec.servers[0] on port 8080"]
        );
        let tls = TlsSource {
            live: true,
            note: "as the gateway serves them".into(),
            secrets: BTreeMap::new(),
        };
        let mut text = String::new();
        render(&g, Some(&tls), &mut text);
        for line in [
            "  servers and certificates: as the gateway serves them\n",
            // The same words as `proxy-config listeners` (`server_text`).
            "    Gateway bookinfo/web spec.servers[1] HTTPS [shop.example.com] tls SIMPLE credentialName shop-cert certificate CN=shop.example.com [shop.example.com,www.shop.example.com] serial 0a1b expires 2026-12-07T00:00:00Z\n",
            "    Gateway bookinfo/web spec.servers[2] TLS [*.local] tls AUTO_PASSTHROUGH (DOWN)\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("      "),
            "no Secret line with the live dump: {text}"
        );

        // Without the live dump: whether the Secret exists, in three cases.
        for (found, want) in [
            (Some(true), "      Secret shop-cert exists: the certificate it serves is the gateway's to say\n"),
            (Some(false), "      no Secret shop-cert in the gateway's namespace: this server is down until it exists\n"),
            (None, "      Secret shop-cert not readable: whether it is loaded is not known\n"),
        ] {
            let tls = TlsSource {
                live: false,
                note: "planned from the rules".into(),
                secrets: BTreeMap::from([("shop-cert".to_string(), found)]),
            };
            let mut text = String::new();
            render(&planned, Some(&tls), &mut text);
            let at = text
                .find("credentialName shop-cert\n")
                .unwrap_or_else(|| panic!("{text}"));
            assert!(text[at..].contains(want), "{want:?} in\n{text}");
            assert!(!text.contains("certificate CN="), "{text}");
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
        render(&g, None, &mut text);
        assert!(
            text.contains("no Gateway in the rules selects this pod's labels"),
            "{text}"
        );
    }
}
