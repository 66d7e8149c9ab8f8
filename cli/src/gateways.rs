//! `remora analyze`'s gateway findings: reads what the checks of
//! `remora_model::lint::gateway` need beyond the Istio objects — the pods each Gateway's
//! selector matches (where its gateway runs), the `credentialName` Secrets in those pods'
//! namespaces (looked up by name, their data never printed) — and the Kubernetes Gateway API
//! objects, which remora does not apply yet.

use std::collections::BTreeSet;

use anyhow::anyhow;
use k8s_openapi::api::core::v1::Pod;
use remora_model::kinds::Meta;
use remora_model::lint::gateway::{self, GatewayBinding, GatewayContext};
use remora_model::rules::gateway::Gateway;
use remora_webhook::rules_lint::Message;
use serde_json::Value;

use crate::kube::{paths, Cluster};

/// At most this many Secrets are looked up (one GET each).
const MAX_SECRET_LOOKUPS: usize = 100;

/// The Gateway API group: its objects are reported as not applied.
const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
const GATEWAY_API_KINDS: [(&str, &str); 5] = [
    ("gateways", "Gateway"),
    ("httproutes", "HTTPRoute"),
    ("grpcroutes", "GRPCRoute"),
    ("tlsroutes", "TLSRoute"),
    ("tcproutes", "TCPRoute"),
];

/// The findings about gateways among `objects` (the Istio objects as listed, with `kind`), in
/// `scope` (every namespace when `None`).
pub async fn findings(
    cluster: &Cluster,
    scope: Option<&str>,
    objects: &[Value],
    cluster_domain: &str,
) -> anyhow::Result<Vec<Message>> {
    let mut gateways = Vec::new();
    let mut cx = GatewayContext::default();
    for v in objects
        .iter()
        .filter(|v| v["kind"].as_str() == Some("Gateway"))
    {
        let (Some(ns), Some(name)) = (
            v["metadata"]["namespace"].as_str(),
            v["metadata"]["name"].as_str(),
        ) else {
            continue;
        };
        cx.gateway_ids.insert(format!("{ns}/{name}"));
        let meta = Meta {
            kind: "Gateway".into(),
            api_version: v["apiVersion"].as_str().unwrap_or_default().into(),
            name: name.into(),
            namespace: ns.into(),
            file: String::new(),
            document: 0,
        };
        // An invalid Gateway is reported by the rules controller's findings.
        if let Ok(gw) = remora_model::rules::gateway::decode(meta, &v["spec"], &mut Vec::new()) {
            gateways.push(gw);
        }
    }
    let bindings: Vec<GatewayBinding> = objects
        .iter()
        .filter_map(|v| GatewayBinding::from_object(v, cluster_domain))
        .collect();
    let in_scope = |ns: &str| scope.is_none_or(|s| s == ns);
    for gw in gateways.iter().filter(|g| in_scope(&g.meta.namespace)) {
        cx.pod_namespaces
            .insert(gw.meta.key(), pod_namespaces(cluster, gw).await?);
    }
    let wanted = gateway::secrets_to_look_up(&gateways, &cx.pod_namespaces);
    for (ns, name) in wanted.into_iter().take(MAX_SECRET_LOOKUPS) {
        let path = paths::secret(&ns, &name);
        let found = match cluster.get_opt(&path).await {
            Ok(s) => Some(s.is_some()),
            Err(e) if e.code() == Some(403) => {
                eprintln!("remora: cannot read Secret {ns}/{name} ({e}); its credentialName is not checked");
                None
            }
            Err(e) => return Err(anyhow!(e).context(format!("reading Secret {ns}/{name}"))),
        };
        cx.secrets.insert((ns, name), found);
    }
    let mut out: Vec<Message> = gateway::check(&gateways, &bindings, &cx)
        .into_iter()
        .filter(|f| {
            // `Kind namespace/name`: in scope by the object's namespace.
            let ns = f
                .object
                .split_once(' ')
                .and_then(|(_, id)| id.split_once('/'))
                .map(|(ns, _)| ns);
            ns.is_none_or(in_scope)
        })
        .map(|f| Message {
            level: f.level,
            config_map: String::new(),
            object: f.object,
            file: String::new(),
            document: 0,
            field: f.field,
            message: f.message,
        })
        .collect();
    out.extend(gateway_api_objects(cluster, scope).await?);
    Ok(out)
}

/// The namespaces of the pods `gw`'s selector matches (all namespaces; the Gateway's own when
/// listing all is forbidden); `None` when pods cannot be listed at all.
async fn pod_namespaces(
    cluster: &Cluster,
    gw: &Gateway,
) -> anyhow::Result<Option<BTreeSet<String>>> {
    if gw.selector.is_empty() {
        return Ok(None);
    }
    let selector = gateway::labels_text(&gw.selector);
    let pods = match cluster
        .list_as::<Pod>(&paths::pods(None, Some(&selector)))
        .await
    {
        Ok(p) => p,
        Err(e) if e.code() == Some(403) => {
            match cluster
                .list_as::<Pod>(&paths::pods(Some(&gw.meta.namespace), Some(&selector)))
                .await
            {
                Ok(p) if !p.is_empty() => p,
                // Forbidden, or none in the Gateway's namespace while others are unreadable.
                Ok(_) | Err(_) => return Ok(None),
            }
        }
        Err(e) => return Err(anyhow!(e).context("listing gateway pods")),
    };
    Ok(Some(
        pods.into_iter()
            .filter_map(|p| p.metadata.namespace)
            .collect(),
    ))
}

/// One warning per Kubernetes Gateway API object in scope: remora does not apply them yet.
async fn gateway_api_objects(
    cluster: &Cluster,
    scope: Option<&str>,
) -> anyhow::Result<Vec<Message>> {
    let group = match cluster.get_opt(&format!("/apis/{GATEWAY_API_GROUP}")).await {
        Ok(Some(g)) => g,
        Ok(None) => return Ok(Vec::new()),
        Err(e) if e.code() == Some(403) => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!(e).context(format!("reading API group {GATEWAY_API_GROUP}"))),
    };
    let Some(version) = group["preferredVersion"]["groupVersion"].as_str() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (plural, kind) in GATEWAY_API_KINDS {
        let path = match scope {
            Some(ns) => format!("/apis/{version}/namespaces/{ns}/{plural}"),
            None => format!("/apis/{version}/{plural}"),
        };
        let items = match cluster.list(&path).await {
            Ok(items) => items,
            // Not served at this version (an older CRD set), or not readable.
            Err(e) if matches!(e.code(), Some(404 | 403)) => continue,
            Err(e) => return Err(anyhow!(e).context(format!("listing {plural}"))),
        };
        for o in items {
            let (Some(ns), Some(name)) = (
                o["metadata"]["namespace"].as_str(),
                o["metadata"]["name"].as_str(),
            ) else {
                continue;
            };
            out.push(Message {
                level: "warning",
                config_map: String::new(),
                object: format!("{kind} {ns}/{name}"),
                file: String::new(),
                document: 0,
                field: String::new(),
                message: format!(
                    "Kubernetes Gateway API ({GATEWAY_API_GROUP}) objects are not applied by remora yet: no remora gateway or sidecar routes by this {kind}; use Istio's Gateway and VirtualService"
                ),
            });
        }
    }
    Ok(out)
}
