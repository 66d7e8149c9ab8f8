//! Publishes the root certificate as ConfigMap `remora-ca-root-cert`, key `root-cert.pem`
//! (Istio's `istio-ca-root-cert` shape), so workloads can trust the CA before they hold a
//! certificate, to every namespace whose pods some revision's webhook entry may inject
//! ([`wanted`]: `selectors::namespace_may_be_selected`): labelled `istio-injection=enabled`,
//! labelled `istio.io/rev`, or unlabelled (a pod there may opt in with its own labels). Not to
//! namespaces labelled `istio-injection` otherwise (`disabled`), nor to the system namespaces
//! and the mesh's own. The root is the same for every revision.
//!
//! One pass is two list calls (the namespaces; the ConfigMaps of that name in every namespace,
//! by field selector) and then one write per wanted namespace whose ConfigMap is missing or
//! different, at most [`MAX_WRITES`] writes per pass (the rest wait for the next pass). A pass
//! runs at start and then every interval; a failed write is logged and retried next pass.
//! The decisions ([`wanted`], [`plan`]) are pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

pub const CONFIGMAP: &str = "remora-ca-root-cert";
pub const KEY: &str = "root-cert.pem";
/// Most writes in one pass.
pub const MAX_WRITES: usize = 100;
/// Items per list page, and most pages read per list.
const PAGE: u32 = 500;
const MAX_PAGES: usize = 20;

/// What one namespace needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    /// The ConfigMap exists with another (or no) `root-cert.pem`.
    Update,
    Keep,
}

/// Whether namespace `ns` gets the root: some revision's webhook entry may inject its pods.
pub fn wanted(ns: &Namespace) -> Option<&str> {
    let name = ns.metadata.name.as_deref()?;
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    crate::selectors::namespace_may_be_selected(name, &labels).then_some(name)
}

/// The action for a namespace whose ConfigMap is `existing`.
pub fn plan(existing: Option<&ConfigMap>, root_pem: &str) -> Action {
    match existing {
        None => Action::Create,
        Some(cm) => {
            let current = cm.data.as_ref().and_then(|d| d.get(KEY));
            if current.map(String::as_str) == Some(root_pem) {
                Action::Keep
            } else {
                Action::Update
            }
        }
    }
}

fn labels() -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/part-of", "remora"),
        ("app.kubernetes.io/managed-by", "remora-webhook"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The ConfigMap to write in `namespace`: a new one, or `existing` with `root-cert.pem` set
/// (other keys and metadata kept, its resourceVersion named for optimistic concurrency).
pub fn desired(namespace: &str, root_pem: &str, existing: Option<&ConfigMap>) -> ConfigMap {
    let mut cm = match existing {
        Some(e) => {
            let mut cm = e.clone();
            cm.metadata.managed_fields = None;
            cm
        }
        None => ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        },
    };
    cm.data
        .get_or_insert_with(BTreeMap::new)
        .insert(KEY.to_string(), root_pem.to_string());
    cm
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub namespaces: usize,
    pub created: usize,
    pub updated: usize,
    pub kept: usize,
    /// Namespaces whose write failed (retried next pass).
    pub failed: Vec<String>,
    /// Namespaces left for the next pass (over [`MAX_WRITES`]).
    pub deferred: usize,
}

async fn list_all<K>(api: &Api<K>, lp: ListParams) -> Result<Vec<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut lp = lp.limit(PAGE);
    for _ in 0..MAX_PAGES {
        let page = api.list(&lp).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    Ok(out)
}

/// One pass: every wanted namespace gets the root.
pub async fn pass(client: &Client, root_pem: &str) -> Result<Pass, String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let meshed: Vec<String> = list_all(&namespaces, ListParams::default())
        .await
        .map_err(|e| format!("listing namespaces: {e}"))?
        .iter()
        .filter_map(wanted)
        .map(str::to_string)
        .collect();
    let all_cms: Api<ConfigMap> = Api::all(client.clone());
    let existing: BTreeMap<String, ConfigMap> = list_all(
        &all_cms,
        ListParams::default().fields(&format!("metadata.name={CONFIGMAP}")),
    )
    .await
    .map_err(|e| format!("listing ConfigMaps {CONFIGMAP}: {e}"))?
    .into_iter()
    .filter_map(|cm| Some((cm.metadata.namespace.clone()?, cm)))
    .collect();
    let mut done = Pass {
        namespaces: meshed.len(),
        ..Pass::default()
    };
    let mut writes = 0;
    for name in meshed {
        let current = existing.get(&name);
        let action = plan(current, root_pem);
        if action == Action::Keep {
            done.kept += 1;
            continue;
        }
        if writes >= MAX_WRITES {
            done.deferred += 1;
            continue;
        }
        writes += 1;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
        let cm = desired(&name, root_pem, current);
        let r = match action {
            Action::Create => api.create(&PostParams::default(), &cm).await.map(|_| ()),
            _ => api
                .replace(CONFIGMAP, &PostParams::default(), &cm)
                .await
                .map(|_| ()),
        };
        match r {
            Ok(()) => {
                if action == Action::Create {
                    done.created += 1;
                } else {
                    done.updated += 1;
                }
                tracing::info!(namespace = %name, configmap = CONFIGMAP,
                    "root certificate published to {name}/{CONFIGMAP} ({})",
                    if action == Action::Create { "created" } else { "updated" });
            }
            Err(e) => {
                tracing::warn!(namespace = %name, configmap = CONFIGMAP, error = %e,
                    "publishing the root certificate to {name}/{CONFIGMAP} failed; retrying next pass");
                done.failed.push(name);
            }
        }
    }
    Ok(done)
}

/// One pass, its outcome logged.
pub async fn pass_and_log(client: &Client, root_pem: &str) {
    {
        match pass(client, root_pem).await {
            Ok(p) => {
                let level_info =
                    p.created + p.updated > 0 || !p.failed.is_empty() || p.deferred > 0;
                if level_info {
                    tracing::info!(
                        namespaces = p.namespaces,
                        created = p.created,
                        updated = p.updated,
                        kept = p.kept,
                        failed = p.failed.len(),
                        deferred = p.deferred,
                        "root certificate publication pass"
                    );
                } else {
                    tracing::debug!(
                        namespaces = p.namespaces,
                        "root certificate current in every namespace a webhook entry may inject"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "root certificate publication pass failed; retrying next pass")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Option<&[(&str, &str)]>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP.into()),
                namespace: Some("default".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            data: data.map(|d| {
                d.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn plans() {
        let root = "ROOT";
        let rows: Vec<(Option<ConfigMap>, Action)> = vec![
            (None, Action::Create),
            (Some(cm(None)), Action::Update),
            (Some(cm(Some(&[("other", "x")]))), Action::Update),
            (Some(cm(Some(&[(KEY, "OLD")]))), Action::Update),
            (Some(cm(Some(&[(KEY, root), ("other", "x")]))), Action::Keep),
        ];
        for (existing, want) in rows {
            assert_eq!(plan(existing.as_ref(), root), want, "{existing:?}");
        }
    }

    #[test]
    fn wanted_namespaces() {
        let ns = |name: &str, labels: &[(&str, &str)]| Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        for (n, labels, want) in [
            ("shop", &[("istio-injection", "enabled")][..], true),
            ("canary", &[("istio.io/rev", "b")][..], true),
            ("plain", &[][..], true),
            ("off", &[("istio-injection", "disabled")][..], false),
            (
                "off-rev",
                &[("istio-injection", "disabled"), ("istio.io/rev", "b")][..],
                false,
            ),
            ("kube-system", &[][..], false),
            (
                "remora-system",
                &[("istio-injection", "disabled")][..],
                false,
            ),
        ] {
            assert_eq!(wanted(&ns(n, labels)).is_some(), want, "{n}");
        }
        assert_eq!(wanted(&Namespace::default()), None);
    }

    #[test]
    fn desired_keeps_other_keys_and_the_version() {
        let old = cm(Some(&[(KEY, "OLD"), ("other", "x")]));
        let d = desired("default", "NEW", Some(&old));
        assert_eq!(d.metadata.resource_version.as_deref(), Some("7"));
        let data = d.data.unwrap();
        assert_eq!(data[KEY], "NEW");
        assert_eq!(data["other"], "x");
        let fresh = desired("team-a", "NEW", None);
        assert_eq!(fresh.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(fresh.metadata.name.as_deref(), Some(CONFIGMAP));
        assert!(fresh.metadata.resource_version.is_none());
        assert_eq!(
            fresh.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
            "remora-webhook"
        );
    }
}
