//! The controller's decisions, pure: what it knows of the cluster ([`World`]: the Istio objects
//! checked once each, the namespaces and their labels, the rules ConfigMaps as last seen) and
//! what to do in each meshed namespace ([`plan`]). The I/O is in `mod.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use remora_model::compile::{
    self, Checked, Invalid, ObjectRef, RenderError, Settings, View, GATEWAY_LABEL,
};

/// An object's place in the cache: kind, namespace, name.
pub type Key = ObjectRef;

/// The rules ConfigMap of a namespace as last seen or written: its data only as a digest
/// ([`digest`]), which is all a comparison with the render needs (a thousand namespaces'
/// ConfigMaps are megabytes of text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    /// Carries the controller's `managed-by` label.
    pub managed: bool,
    pub digest: Digest,
    pub resource_version: Option<String>,
}

/// SHA-256 of a ConfigMap's data.
pub type Digest = [u8; 32];

/// The digest of `data`: each key and value, length-prefixed, in key order (so no two
/// different maps give the same input).
pub fn digest(data: &BTreeMap<String, String>) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (k, v) in data {
        for part in [k, v] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What the controller knows.
#[derive(Default)]
pub struct World {
    /// Each object as checked once (shared with the [`Index`] of a reconcile).
    pub objects: BTreeMap<Key, Result<Arc<Checked>, Invalid>>,
    /// Namespace → labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Namespace → its rules ConfigMap (absent: none exists).
    pub configmaps: BTreeMap<String, Existing>,
}

/// The valid objects, split by reach: those only their own namespace can see, by namespace,
/// and the others (exported, mesh-wide), which every namespace's render goes through.
pub struct Index {
    pub global: Vec<Arc<Checked>>,
    pub by_namespace: BTreeMap<String, Vec<Arc<Checked>>>,
}

/// Index the valid objects of `world`.
pub fn index(world: &World, settings: &Settings) -> Index {
    let mut idx = Index {
        global: Vec::new(),
        by_namespace: BTreeMap::new(),
    };
    for c in world.objects.values().filter_map(|r| r.as_ref().ok()) {
        if c.only_in_own_namespace(settings) {
            idx.by_namespace
                .entry(c.id.namespace.clone())
                .or_default()
                .push(c.clone());
        } else {
            idx.global.push(c.clone());
        }
    }
    idx
}

/// Is a namespace in the mesh? Istio's labels: `istio-injection=enabled`, or an `istio.io/rev`
/// label (a revision) while `istio-injection` does not say `disabled`.
pub fn meshed(labels: &BTreeMap<String, String>) -> bool {
    match labels.get("istio-injection").map(String::as_str) {
        Some("enabled") => true,
        Some(_) => false,
        None => labels.contains_key("istio.io/rev"),
    }
}

/// Whose rules a namespace gets, if any: meshed ([`meshed`]) → its sidecars'; labelled
/// `remora.dev/gateway=enabled` (a gateway runs there) → a gateway's; both → both; neither →
/// none.
pub fn view(labels: &BTreeMap<String, String>) -> Option<View> {
    let gateway = labels.get(GATEWAY_LABEL.0).map(String::as_str) == Some(GATEWAY_LABEL.1);
    match (meshed(labels), gateway) {
        (true, false) => Some(View::Sidecars),
        (false, true) => Some(View::Gateway),
        (true, true) => Some(View::Both),
        (false, false) => None,
    }
}

/// What to do in one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Create(BTreeMap<String, String>),
    /// Replace the data of the controller's ConfigMap (at this resourceVersion).
    Update {
        data: BTreeMap<String, String>,
        resource_version: Option<String>,
    },
    /// Nothing changed.
    Keep,
    /// The ConfigMap is the user's (no controller label): left alone.
    UserOwned,
    /// Not written: too large, or a set its proxies would reject.
    Refused(RenderError),
}

/// One namespace's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub namespace: String,
    pub action: Action,
    /// Objects in the rendered ConfigMap.
    pub objects: usize,
}

/// The namespaces to plan: meshed or running a gateway ([`view`]), and in `only` when given;
/// in name order.
pub fn namespaces(world: &World, only: Option<&BTreeSet<String>>) -> Vec<String> {
    world
        .namespaces
        .iter()
        .filter(|(ns, labels)| view(labels).is_some() && only.is_none_or(|o| o.contains(*ns)))
        .map(|(ns, _)| ns.clone())
        .collect()
}

/// The step for one namespace: selected cheaply from `idx` and compared with its ConfigMap;
/// only a set to be written is decoded as a whole (`compile::verify`).
pub fn step(world: &World, idx: &Index, settings: &Settings, ns: &str) -> Step {
    let mut objs: Vec<&Checked> = idx.global.iter().map(|c| c.as_ref()).collect();
    if let Some(own) = idx.by_namespace.get(ns) {
        objs.extend(own.iter().map(|c| c.as_ref()));
    }
    let existing = world.configmaps.get(ns);
    let view = world
        .namespaces
        .get(ns)
        .and_then(view)
        .unwrap_or(View::Sidecars);
    let (action, objects) = match compile::select_view(&objs, ns, settings, view) {
        Err(e) => (Action::Refused(e), 0),
        Ok(r) => {
            let n = r.included.len();
            let action = match existing {
                Some(e) if !e.managed => Action::UserOwned,
                Some(e) if e.digest == digest(&r.data) => Action::Keep,
                _ => match compile::verify(&r, settings) {
                    Err(e) => Action::Refused(e),
                    Ok(()) => match existing {
                        None => Action::Create(r.data),
                        Some(e) => Action::Update {
                            data: r.data,
                            resource_version: e.resource_version.clone(),
                        },
                    },
                },
            };
            (action, n)
        }
    };
    Step {
        namespace: ns.to_string(),
        action,
        objects,
    }
}

/// The plan for the meshed and gateway namespaces (those in `only` when given), in name order.
pub fn plan(world: &World, settings: &Settings, only: Option<&BTreeSet<String>>) -> Vec<Step> {
    let idx = index(world, settings);
    namespaces(world, only)
        .iter()
        .map(|ns| step(world, &idx, settings, ns))
        .collect()
}

/// The condition type the controller writes into an object's `status.conditions` (opt-in); its
/// own type, so conditions Istio's control plane writes next to it are left as they are.
pub const CONDITION: &str = "remora.dev/Compiled";

/// Our condition for an object at `generation`: `True` when the rules controller compiles it,
/// `False` with the reason when it leaves it out. `lastTransitionTime` is the caller's.
pub fn condition(
    result: &Result<Arc<Checked>, Invalid>,
    generation: Option<i64>,
) -> serde_json::Value {
    let (status, reason, message) = match result {
        Ok(_) => (
            "True",
            "Compiled",
            "compiled into the remora-mesh-rules ConfigMap of every meshed namespace that sees it"
                .to_string(),
        ),
        Err(e) => ("False", "Invalid", e.reason.clone()),
    };
    let mut c = serde_json::json!({"type": CONDITION, "status": status, "reason": reason, "message": message});
    if let Some(g) = generation {
        c["observedGeneration"] = g.into();
    }
    c
}

/// The same condition, whatever its `lastTransitionTime`?
pub fn same_condition(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    ["type", "status", "reason", "message", "observedGeneration"]
        .iter()
        .all(|k| a.get(*k) == b.get(*k))
}

/// The `status.conditions` to write: `current` with ours replaced by `ours`; `None` when ours
/// is already there as it should be.
pub fn conditions_to_write(
    current: &[serde_json::Value],
    ours: &serde_json::Value,
) -> Option<Vec<serde_json::Value>> {
    if current.iter().any(|c| {
        c.get("type").and_then(|t| t.as_str()) == Some(CONDITION) && same_condition(c, ours)
    }) {
        return None;
    }
    let mut out: Vec<serde_json::Value> = current
        .iter()
        .filter(|c| c.get("type").and_then(|t| t.as_str()) != Some(CONDITION))
        .cloned()
        .collect();
    out.push(ours.clone());
    Some(out)
}

/// The objects that failed their check (not the unsupported kinds), for Events and logs.
pub fn invalid(world: &World) -> Vec<&Invalid> {
    world
        .objects
        .values()
        .filter_map(|r| r.as_ref().err())
        .filter(|e| !e.unsupported)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn world() -> World {
        let mut w = World::default();
        let dr = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                        "metadata": {"name": "reviews", "namespace": "bookinfo"},
                        "spec": {"host": "reviews"}});
        let c = compile::check(&dr, "cluster.local").map(Arc::new);
        w.objects
            .insert(c.as_ref().map(|c| c.id.clone()).expect("valid"), c);
        for (ns, l) in [
            ("bookinfo", labels(&[("istio-injection", "enabled")])),
            ("frontend", labels(&[("istio.io/rev", "b")])),
            (
                "off",
                labels(&[("istio-injection", "disabled"), ("istio.io/rev", "b")]),
            ),
            ("plain", labels(&[])),
            ("istio-system", labels(&[("remora.dev/gateway", "enabled")])),
            (
                "gw-off",
                labels(&[("remora.dev/gateway", "true"), ("istio-injection", "off")]),
            ),
        ] {
            w.namespaces.insert(ns.to_string(), l);
        }
        w
    }

    #[test]
    fn meshed_namespaces_by_istio_labels() {
        let cases = [
            (vec![("istio-injection", "enabled")], true),
            (vec![("istio.io/rev", "canary")], true),
            (
                vec![("istio-injection", "disabled"), ("istio.io/rev", "x")],
                false,
            ),
            (vec![("istio-injection", "Enabled")], false),
            (vec![], false),
        ];
        for (l, want) in cases {
            assert_eq!(meshed(&labels(&l)), want, "{l:?}");
        }
    }

    #[test]
    fn gateway_namespaces_by_their_label() {
        let cases = [
            (vec![("remora.dev/gateway", "enabled")], Some(View::Gateway)),
            (
                vec![
                    ("remora.dev/gateway", "enabled"),
                    ("istio-injection", "enabled"),
                ],
                Some(View::Both),
            ),
            (vec![("istio-injection", "enabled")], Some(View::Sidecars)),
            (vec![("remora.dev/gateway", "true")], None),
            (vec![], None),
        ];
        for (l, want) in cases {
            assert_eq!(view(&labels(&l)), want, "{l:?}");
        }
        // The gateway's namespace sees bookinfo's Gateway; a meshed namespace does not.
        let mut w = world();
        let gw = json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                        "metadata": {"name": "bookinfo-gateway", "namespace": "bookinfo"},
                        "spec": {"selector": {"istio": "ingressgateway"},
                                 "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                                              "hosts": ["*"]}]}});
        let c = compile::check(&gw, "cluster.local").map(Arc::new);
        w.objects
            .insert(c.as_ref().map(|c| c.id.clone()).expect("valid"), c);
        let steps = plan(&w, &Settings::default(), None);
        let data = |ns: &str| match &steps.iter().find(|s| s.namespace == ns).expect(ns).action {
            Action::Create(d) => d.keys().cloned().collect::<Vec<_>>(),
            other => panic!("{ns}: expected Create, got {other:?}"),
        };
        assert_eq!(
            data("istio-system"),
            [
                "bookinfo.destinationrule.reviews.yaml",
                "bookinfo.gateway.bookinfo-gateway.yaml"
            ]
        );
        assert_eq!(data("frontend"), ["bookinfo.destinationrule.reviews.yaml"]);
    }

    #[test]
    fn create_keep_update_and_user_owned() {
        let mut w = world();
        let s = Settings::default();
        let steps = plan(&w, &s, None);
        let names: Vec<&str> = steps.iter().map(|s| s.namespace.as_str()).collect();
        assert_eq!(names, ["bookinfo", "frontend", "istio-system"]);
        let Action::Create(data) = &steps[0].action else {
            panic!("expected Create, got {:?}", steps[0].action)
        };
        assert_eq!(steps[0].objects, 1);
        // As written: nothing to do.
        w.configmaps.insert(
            "bookinfo".into(),
            Existing {
                managed: true,
                digest: digest(data),
                resource_version: Some("5".into()),
            },
        );
        // Someone else's ConfigMap in frontend.
        w.configmaps.insert(
            "frontend".into(),
            Existing {
                managed: false,
                digest: digest(&BTreeMap::new()),
                resource_version: Some("9".into()),
            },
        );
        let steps = plan(&w, &s, None);
        assert_eq!(steps[0].action, Action::Keep);
        assert_eq!(steps[1].action, Action::UserOwned);
        // An edit of the controller's ConfigMap by hand is put back.
        if let Some(e) = w.configmaps.get_mut("bookinfo") {
            let mut edited = data.clone();
            edited.insert("extra.yaml".into(), "{}".into());
            e.digest = digest(&edited);
        }
        match &plan(&w, &s, None)[0].action {
            Action::Update {
                data: d,
                resource_version,
            } => {
                assert_eq!(d, data);
                assert_eq!(resource_version.as_deref(), Some("5"));
            }
            other => panic!("expected Update, got {other:?}"),
        }
    }

    /// Different data, different digests (keys and values cannot trade bytes); equal data,
    /// equal digests.
    #[test]
    fn digests_tell_data_apart() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = m(&[("a.yaml", "x: 1\n"), ("b.yaml", "y: 2\n")]);
        assert_eq!(digest(&a), digest(&a.clone()));
        for other in [
            m(&[("a.yaml", "x: 1\n")]),
            m(&[("a.yamlx", ": 1\n"), ("b.yaml", "y: 2\n")]),
            m(&[("a.yaml", "x: 1\nb.yaml"), ("", "y: 2\n")]),
            m(&[]),
        ] {
            assert_ne!(digest(&a), digest(&other), "{other:?}");
        }
    }

    /// The index (objects only their namespace sees apart) gives every namespace what a render
    /// over all objects gives it.
    #[test]
    fn the_index_renders_what_all_objects_render() {
        let mut w = world();
        let objs = [
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                   "metadata": {"name": "private", "namespace": "bookinfo"},
                   "spec": {"host": "details", "exportTo": ["."]}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "to-bookinfo", "namespace": "frontend"},
                   "spec": {"hosts": ["frontend-only"], "exportTo": ["bookinfo"],
                            "http": [{"route": [{"destination": {"host": "a"}}]}]}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                   "metadata": {"name": "default", "namespace": "frontend"},
                   "spec": {"egress": [{"hosts": ["./*", "remora-system/*"]}]}}),
            json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                   "metadata": {"name": "default", "namespace": "remora-system"},
                   "spec": {"mtls": {"mode": "STRICT"}}}),
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": "deny", "namespace": "frontend"}, "spec": {}}),
        ];
        for o in objs {
            let c = compile::check(&o, "cluster.local").map(Arc::new);
            w.objects
                .insert(c.as_ref().map(|c| c.id.clone()).expect("valid"), c);
        }
        let s = Settings::default();
        let all: Vec<Checked> = w
            .objects
            .values()
            .filter_map(|r| r.as_ref().ok().map(|c| c.as_ref().clone()))
            .collect();
        let idx = index(&w, &s);
        assert!(!idx.global.is_empty() && idx.by_namespace.contains_key("frontend"));
        for ns in ["bookinfo", "frontend"] {
            let want = compile::render(&all, ns, &s).expect("renders").data;
            match step(&w, &idx, &s, ns).action {
                Action::Create(data) => assert_eq!(data, want, "{ns}"),
                other => panic!("{ns}: expected Create, got {other:?}"),
            }
        }
    }

    #[test]
    fn status_conditions_keep_others_and_change_only_when_ours_does() {
        let ok = compile::check(
            &json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                    "metadata": {"name": "s", "namespace": "a"}, "spec": {}}),
            "cluster.local",
        )
        .map(Arc::new);
        let ours = condition(&ok, Some(3));
        assert_eq!(ours["status"], "True");
        assert_eq!(ours["observedGeneration"], 3);
        let istio = json!({"type": "Reconciled", "status": "True", "message": "istiod"});
        let first = conditions_to_write(std::slice::from_ref(&istio), &ours).expect("written");
        assert_eq!(first, vec![istio.clone(), ours.clone()]);
        // Already there (another lastTransitionTime): nothing to write.
        let mut stamped = ours.clone();
        stamped["lastTransitionTime"] = json!("2026-12-07T08:00:00Z");
        assert_eq!(
            conditions_to_write(&[istio.clone(), stamped.clone()], &ours),
            None
        );
        // A new generation, now invalid: replaced, Istio's kept.
        let bad: Result<Arc<Checked>, Invalid> = Err(Invalid {
            id: None,
            reason: "spec.x: bad".into(),
            unsupported: false,
        });
        let now = condition(&bad, Some(4));
        let next = conditions_to_write(&[istio.clone(), stamped], &now).expect("written");
        assert_eq!(next, vec![istio, now.clone()]);
        assert_eq!(now["status"], "False");
        assert_eq!(now["message"], "spec.x: bad");
    }

    #[test]
    fn only_the_namespaces_asked() {
        let w = world();
        let only: BTreeSet<String> = ["frontend".to_string()].into();
        let steps = plan(&w, &Settings::default(), Some(&only));
        let names: Vec<&str> = steps.iter().map(|s| s.namespace.as_str()).collect();
        assert_eq!(names, ["frontend"]);
    }

    #[test]
    fn invalid_objects_are_listed_and_left_out() {
        let mut w = world();
        let bad = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                         "metadata": {"name": "bad", "namespace": "bookinfo"},
                         "spec": {"hosts": ["a"], "http": [{"timeout": "x"}]}});
        let r = compile::check(&bad, "cluster.local").map(Arc::new);
        let key = ObjectRef {
            kind: "VirtualService".into(),
            namespace: "bookinfo".into(),
            name: "bad".into(),
        };
        w.objects.insert(key, r);
        let inv = invalid(&w);
        assert_eq!(inv.len(), 1);
        assert!(inv[0]
            .to_string()
            .starts_with("VirtualService bookinfo/bad: spec.http[0].timeout"));
        assert_eq!(plan(&w, &Settings::default(), None)[0].objects, 1);
    }
}
