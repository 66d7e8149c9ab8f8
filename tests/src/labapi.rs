//! The lab's Kubernetes API: what the control plane (`remora-webhook serve` with its mesh CA)
//! asks of an API server, answered from the lab's own state by the recorded API's fallback
//! ([`RecordedApi::fallback`]), over plain HTTP on 127.0.0.1 in the node's network namespace
//! (where the lab runs the control plane; pods cannot reach it).
//!
//! - **TokenReview** (`POST /apis/authentication.k8s.io/v1/tokenreviews`): the lab's projected
//!   service-account tokens ([`issue_token`], written by the kubelet stand-in) are JWTs signed
//!   with a key of this lab (HS256). A review authenticates a token only when its signature
//!   verifies, its issuer is the lab's, it has not expired, one of its audiences is one the
//!   review asks for (`spec.audiences`; none: the API server's own), its subject is a service
//!   account and the pod it is bound to still runs. The answer has kube-apiserver's shape: user
//!   `system:serviceaccount:<ns>:<sa>` with its groups and the bound pod's extras, the granted
//!   audiences; a refusal is `authenticated` unset and the authenticator's error text.
//! - **Namespaces**: get and list (label selectors `k=v`, `k!=v`, `k`), as the lab creates them.
//! - **ConfigMaps and Secrets**: get, list (field selector `metadata.name`/`metadata.namespace`,
//!   label selectors), create (201; 409 AlreadyExists; 404 when the namespace does not exist)
//!   and replace (409 Conflict on a stale `resourceVersion`). A ConfigMap written through the API
//!   is also written into the lab directory in the kubelet's atomic layout, where pods of its
//!   namespace mount it (as a kubelet syncs ConfigMap volumes).
//!
//! - **Namespaced objects of other APIs** (`/apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME]`:
//!   Istio's kinds, Leases, Events…) of the groups the lab serves ([`ClusterState::served`],
//!   answered at `GET /apis/GROUP` as an `APIGroup`): get, list (one namespace or all: `GET
//!   /apis/GROUP/VERSION/PLURAL`), create, replace (409 on a stale `resourceVersion`), delete;
//!   one store per group and plural whatever the version asked, each object answered with the
//!   `apiVersion` of the request.
//! - **Watches** (`?watch=true`) of namespaces and of those objects (all namespaces): a held
//!   stream replaying the changes after the `resourceVersion` asked (the last 1,000 are kept),
//!   then each change as it happens. A change made between a watch's answer and the server
//!   holding its stream is not delivered (a fixture's simplification: tests write after the
//!   watch is open, see [`LabApi::open_watches`]).
//!
//! Everything else is 404. [`answer`] is the whole behaviour; [`LabApi`] runs it.

use crate::apiserver::{status_body, Emitter, RecordedApi, Reply, Seen};
use crate::netns::Netns;
use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the API listens inside the node's namespace (127.0.0.1): the namespace is the lab's
/// own, so the port is always free.
pub const API_PORT: u16 = 6443;
/// The `iss` of the lab's tokens.
pub const TOKEN_ISSUER: &str = "remora-lab";
/// The audience of a review that names none: the API server's own (kube-apiserver's default).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// The node name in tokens and reviews.
pub const NODE_NAME: &str = "lab-node";
const TOKENREVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hmac_key(key: &[u8]) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key)
}

/// A JWT (HS256, `kid` = the lab's issuer) carrying `claims`, signed with `key`.
pub fn issue_token(key: &[u8], claims: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": TOKEN_ISSUER});
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = ring::hmac::sign(&hmac_key(key), signing_input.as_bytes());
    format!("{signing_input}.{}", b64(sig.as_ref()))
}

/// The claims of `token` when it is a JWT signed with `key`; else why not.
pub fn verify_token(key: &[u8], token: &str) -> Result<Value, String> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [header, claims, sig] = parts.as_slice() else {
        return Err("compact JWS format must have three parts".into());
    };
    let dec = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| "malformed token: not base64url".to_string())
    };
    let h: Value =
        serde_json::from_slice(&dec(header)?).map_err(|_| "malformed token header".to_string())?;
    if h["alg"] != "HS256" {
        return Err(format!(
            "unexpected signing algorithm {}: the lab signs HS256",
            h["alg"]
        ));
    }
    let input = format!("{header}.{claims}");
    ring::hmac::verify(&hmac_key(key), input.as_bytes(), &dec(sig)?)
        .map_err(|_| "the token's signature does not verify with the lab's key".to_string())?;
    serde_json::from_slice(&dec(claims)?).map_err(|_| "malformed token claims".to_string())
}

/// A Kubernetes-looking uid, stable for `seed`.
fn uid_of(seed: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in seed.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 20) & 0xfff,
        h & 0xffff_ffff_ffff
    )
}

/// Go's `%q` of a string list: `["a" "b"]`.
fn go_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| Value::from(s.as_str()).to_string())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// The objects, tokens and pods the lab's API knows.
pub struct ClusterState {
    /// name → Namespace object.
    namespaces: BTreeMap<String, Value>,
    /// (resource, namespace, name) → object; resource is `configmaps` or `secrets`.
    objects: BTreeMap<(String, String, String), Value>,
    /// Running pods: uid → (namespace, name).
    pods: BTreeMap<String, (String, String)>,
    rv: u64,
    token_key: Vec<u8>,
    /// ConfigMaps written through the API go to `<dir>/<namespace>/<name>`.
    dir: PathBuf,
    /// API group → versions served (best first).
    pub served: BTreeMap<String, Vec<String>>,
    /// `group/plural` of kinds whose CRD is missing in a served group (answered 404).
    pub missing_kinds: std::collections::BTreeSet<String>,
    /// Recent changes: (resourceVersion, watch path without version, event), for replays.
    log: std::collections::VecDeque<(u64, String, Value)>,
    /// Changes not yet sent to held watches: (watch path without version, event).
    pending: Vec<(String, Value)>,
}

/// Changes kept for watch replays.
const LOG_MAX: usize = 1000;

impl ClusterState {
    pub fn new(token_key: Vec<u8>, dir: PathBuf) -> ClusterState {
        ClusterState {
            namespaces: BTreeMap::new(),
            objects: BTreeMap::new(),
            pods: BTreeMap::new(),
            rv: 1000,
            token_key,
            dir,
            served: [
                ("networking.istio.io", &["v1", "v1beta1", "v1alpha3"][..]),
                ("security.istio.io", &["v1", "v1beta1"][..]),
                ("remora.dev", &["v1alpha1"][..]),
                ("coordination.k8s.io", &["v1"][..]),
                ("events.k8s.io", &["v1"][..]),
            ]
            .into_iter()
            .map(|(g, v)| (g.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect(),
            missing_kinds: Default::default(),
            log: std::collections::VecDeque::new(),
            pending: Vec::new(),
        }
    }

    /// Record a change for watches on `watch` (the all-namespaces path; for objects of other
    /// APIs, `GROUP/PLURAL`).
    fn changed(&mut self, watch: &str, kind: &str, object: &Value) {
        let rv = self.rv;
        let event = json!({"type": kind, "object": object});
        self.log.push_back((rv, watch.to_string(), event.clone()));
        while self.log.len() > LOG_MAX {
            self.log.pop_front();
        }
        self.pending.push((watch.to_string(), event));
    }

    /// The changes to send to held watches since the last call: (watch key, event).
    pub fn take_pending(&mut self) -> Vec<(String, Value)> {
        std::mem::take(&mut self.pending)
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Creates or relabels a namespace (`kubernetes.io/metadata.name` is added).
    pub fn set_namespace(&mut self, name: &str, labels: &BTreeMap<String, String>) {
        let mut labels = labels.clone();
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
        let rv = self.next_rv();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "uid": uid_of(&format!("ns/{name}")),
                            "resourceVersion": rv, "labels": labels},
               "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let kind = if self.namespaces.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.changed("namespaces", kind, &ns);
        self.namespaces.insert(name.to_string(), ns);
    }

    pub fn add_pod(&mut self, namespace: &str, name: &str, uid: &str) {
        self.pods
            .insert(uid.to_string(), (namespace.to_string(), name.to_string()));
    }

    pub fn remove_pod(&mut self, uid: &str) {
        self.pods.remove(uid);
    }

    /// ConfigMaps of `namespace` written through the API: name → directory.
    pub fn configmap_dirs(&self, namespace: &str) -> BTreeMap<String, PathBuf> {
        self.objects
            .keys()
            .filter(|(r, ns, _)| r == "configmaps" && ns == namespace)
            .map(|(_, ns, name)| (name.clone(), self.dir.join(ns).join(name)))
            .collect()
    }

    /// An object written through the API (`configmaps` or `secrets`).
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        ))
    }
}

fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::json(code, status_body(code, reason, message))
}

/// A label selector's requirements: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k`.
fn label_matches(selector: &str, labels: &Value) -> Result<bool, String> {
    for req in selector.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        let ok = if let Some((k, v)) = req.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
            get(k) == Some(v.trim())
        } else if let Some(k) = req.strip_prefix('!') {
            get(k).is_none()
        } else if req.contains(' ') || req.contains('(') {
            return Err(format!("unsupported label selector requirement {req:?}"));
        } else {
            get(req).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn field_matches(selector: &str, obj: &Value) -> Result<bool, String> {
    for req in selector.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let (k, v, eq) = if let Some((k, v)) = req.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
            (k, v, true)
        } else {
            return Err(format!("invalid field selector {req:?}"));
        };
        let got = match k.trim() {
            "metadata.name" => obj.pointer("/metadata/name"),
            "metadata.namespace" => obj.pointer("/metadata/namespace"),
            other => return Err(format!("field label not supported: {other}")),
        }
        .and_then(Value::as_str);
        if (got == Some(v.trim())) != eq {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The answer to one request (`None`: not something this API serves, a 404). `now`: Unix
/// seconds, for token expiry.
pub fn answer(st: &mut ClusterState, req: &Seen, now: u64) -> Option<Reply> {
    let path = req.path().to_string();
    let query: BTreeMap<String, String> = req.query().into_iter().collect();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method.as_str();
    if path == TOKENREVIEWS {
        return Some(match method {
            "POST" => token_review(st, req.body.as_ref(), now),
            _ => status(405, "MethodNotAllowed", "tokenreviews: create only"),
        });
    }
    let list = |kind: &str, items: Vec<Value>, rv: u64| {
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut o| {
                if let Some(m) = o.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                o
            })
            .collect();
        Reply::json(
            200,
            json!({"kind": kind, "apiVersion": "v1",
                   "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        )
    };
    let select = |o: &Value| -> Result<bool, String> {
        let labels = o.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
        Ok(query
            .get("labelSelector")
            .map(|s| label_matches(s, &labels))
            .transpose()?
            .unwrap_or(true)
            && query
                .get("fieldSelector")
                .map(|s| field_matches(s, o))
                .transpose()?
                .unwrap_or(true))
    };
    let bad = |e: String| status(400, "BadRequest", &e);
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if let ("GET", ["api", "v1", "namespaces"]) = (method, segs.as_slice()) {
        if watching {
            return Some(replay(st, "namespaces", &query, None));
        }
    }
    if let Some(reply) = other_api(
        st,
        method,
        &segs,
        &query,
        watching,
        req.body.as_ref(),
        &select,
    ) {
        return Some(reply);
    }
    match (method, segs.as_slice()) {
        ("GET", ["api", "v1", "namespaces"]) => {
            let mut items = Vec::new();
            for o in st.namespaces.values() {
                match select(o) {
                    Ok(true) => items.push(o.clone()),
                    Ok(false) => {}
                    Err(e) => return Some(bad(e)),
                }
            }
            Some(list("NamespaceList", items, st.rv))
        }
        ("GET", ["api", "v1", "namespaces", ns]) => Some(match st.namespaces.get(*ns) {
            Some(o) => Reply::json(200, o.clone()),
            None => status(404, "NotFound", &format!("namespaces \"{ns}\" not found")),
        }),
        ("GET", ["api", "v1", res @ ("configmaps" | "secrets")]) => {
            Some(list_objects(st, res, None, &select, &list))
        }
        ("GET", ["api", "v1", "namespaces", ns, res @ ("configmaps" | "secrets")]) => {
            Some(list_objects(st, res, Some(ns), &select, &list))
        }
        ("GET", ["api", "v1", "namespaces", ns, res @ ("configmaps" | "secrets"), name]) => {
            let key = (res.to_string(), ns.to_string(), name.to_string());
            Some(match st.objects.get(&key) {
                Some(o) => Reply::json(200, o.clone()),
                None => status(404, "NotFound", &format!("{res} \"{name}\" not found")),
            })
        }
        ("POST", ["api", "v1", "namespaces", ns, res @ ("configmaps" | "secrets")]) => {
            Some(write(st, res, ns, None, req.body.as_ref()))
        }
        ("PUT", ["api", "v1", "namespaces", ns, res @ ("configmaps" | "secrets"), name]) => {
            Some(write(st, res, ns, Some(name), req.body.as_ref()))
        }
        _ => None,
    }
}

/// A held watch on `watch` replaying the logged changes after the `resourceVersion` asked,
/// each object given `api_version` when named.
fn replay(
    st: &ClusterState,
    watch: &str,
    query: &BTreeMap<String, String>,
    api_version: Option<&str>,
) -> Reply {
    let after: u64 = query
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(st.rv);
    let events = st
        .log
        .iter()
        .filter(|(rv, w, _)| *rv > after && w == watch)
        .map(|(_, _, e)| with_version(e.clone(), api_version))
        .collect();
    Reply::watch(events, true)
}

/// A watch event (or object) with its object's `apiVersion` set.
fn with_version(mut v: Value, api_version: Option<&str>) -> Value {
    if let Some(av) = api_version {
        let obj = if v.get("object").is_some() {
            v.get_mut("object")
        } else {
            Some(&mut v)
        };
        if let Some(m) = obj.and_then(Value::as_object_mut) {
            m.insert("apiVersion".into(), av.into());
        }
    }
    v
}

/// Objects of other APIs (`/apis/GROUP...`): `None` when the path is not one.
fn other_api(
    st: &mut ClusterState,
    method: &str,
    segs: &[&str],
    query: &BTreeMap<String, String>,
    watching: bool,
    body: Option<&Value>,
    select: &dyn Fn(&Value) -> Result<bool, String>,
) -> Option<Reply> {
    let ["apis", group, rest @ ..] = segs else {
        return None;
    };
    let Some(versions) = st.served.get(*group).cloned() else {
        return Some(status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource (group {group})"),
        ));
    };
    if rest.is_empty() && method == "GET" {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        return Some(Reply::json(
            200,
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
                   "versions": vs, "preferredVersion": vs.first()}),
        ));
    }
    if let ("PATCH", [v, "namespaces", ns, plural, name, "status"]) = (method, rest) {
        if !versions.iter().any(|x| x == v) {
            return Some(status(
                404,
                "NotFound",
                &format!("{group}/{v} is not served"),
            ));
        }
        return Some(patch_status(st, group, v, ns, plural, name, body));
    }
    let (version, ns, plural, name) = match rest {
        [v, plural] => (*v, None, *plural, None),
        [v, "namespaces", ns, plural] => (*v, Some(*ns), *plural, None),
        [v, "namespaces", ns, plural, name] => (*v, Some(*ns), *plural, Some(*name)),
        _ => return None,
    };
    if !versions.iter().any(|v| v == version) {
        return Some(status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({group}/{version})"),
        ));
    }
    let api_version = format!("{group}/{version}");
    let store = format!("{group}/{plural}");
    if st.missing_kinds.contains(&store) {
        return Some(status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({plural}.{group})"),
        ));
    }
    match (method, ns, name) {
        ("GET", _, None) if watching => Some(replay(st, &store, query, Some(&api_version))),
        ("GET", ns, None) => {
            let mut items = Vec::new();
            for ((r, n, _), o) in &st.objects {
                if *r != store || ns.is_some_and(|want| want != n) {
                    continue;
                }
                match select(o) {
                    Ok(true) => {
                        let mut o = o.clone();
                        if let Some(m) = o.as_object_mut() {
                            m.remove("kind");
                            m.remove("apiVersion");
                        }
                        items.push(o)
                    }
                    Ok(false) => {}
                    Err(e) => return Some(status(400, "BadRequest", &e)),
                }
            }
            Some(Reply::json(
                200,
                json!({"kind": "List", "apiVersion": api_version,
                       "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            ))
        }
        ("GET", Some(ns), Some(name)) => {
            let key = (store, ns.to_string(), name.to_string());
            Some(match st.objects.get(&key) {
                Some(o) => Reply::json(200, with_version(o.clone(), Some(&api_version))),
                None => status(
                    404,
                    "NotFound",
                    &format!("{plural}.{group} \"{name}\" not found"),
                ),
            })
        }
        ("POST", Some(ns), None) => Some(write_other(st, &store, &api_version, ns, None, body)),
        ("PUT", Some(ns), Some(name)) => {
            Some(write_other(st, &store, &api_version, ns, Some(name), body))
        }
        ("DELETE", Some(ns), Some(name)) => {
            let key = (store.clone(), ns.to_string(), name.to_string());
            Some(match st.objects.remove(&key) {
                Some(o) => {
                    st.next_rv();
                    st.changed(&store, "DELETED", &o);
                    Reply::json(200, with_version(o, Some(&api_version)))
                }
                None => status(
                    404,
                    "NotFound",
                    &format!("{plural}.{group} \"{name}\" not found"),
                ),
            })
        }
        _ => Some(status(
            405,
            "MethodNotAllowed",
            "not served by the lab's API",
        )),
    }
}

/// A JSON merge patch (RFC 7386) of an object's `status` subresource: only `status` changes;
/// a `metadata.resourceVersion` in the patch must be current (409 otherwise).
fn patch_status(
    st: &mut ClusterState,
    group: &str,
    version: &str,
    ns: &str,
    plural: &str,
    name: &str,
    body: Option<&Value>,
) -> Reply {
    let key = (
        format!("{group}/{plural}"),
        ns.to_string(),
        name.to_string(),
    );
    let Some(mut obj) = st.objects.get(&key).cloned() else {
        return status(
            404,
            "NotFound",
            &format!("{plural}.{group} \"{name}\" not found"),
        );
    };
    let Some(patch) = body.filter(|b| b.is_object()) else {
        return status(400, "BadRequest", "the patch is not a JSON object");
    };
    if let Some(want) = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        if obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            != Some(want)
        {
            return status(
                409,
                "Conflict",
                &format!("Operation cannot be fulfilled on {plural}.{group} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            );
        }
    }
    if let Some(new_status) = patch.get("status") {
        let mut merged = obj.get("status").cloned().unwrap_or(json!({}));
        json_patch::merge(&mut merged, new_status);
        obj["status"] = merged;
    }
    let rv = st.next_rv();
    obj["metadata"]["resourceVersion"] = rv.into();
    st.objects.insert(key, obj.clone());
    st.changed(&format!("{group}/{plural}"), "MODIFIED", &obj);
    Reply::json(200, with_version(obj, Some(&format!("{group}/{version}"))))
}

/// Create (`name` None) or replace an object of another API in store `store`.
fn write_other(
    st: &mut ClusterState,
    store: &str,
    api_version: &str,
    ns: &str,
    name: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let old = body
        .and_then(|b| b.pointer("/metadata/name"))
        .and_then(Value::as_str)
        .and_then(|n| {
            st.objects
                .get(&(store.to_string(), ns.to_string(), n.to_string()))
                .cloned()
        });
    let existed = old.is_some();
    let reply = write(st, store, ns, name, body);
    if let Reply::Json {
        status: code @ (200 | 201),
        body: obj,
    } = &reply
    {
        let mut obj = obj.clone();
        // As with a status subresource: a write keeps the status; `generation` counts spec
        // changes.
        let generation = match &old {
            None => 1,
            Some(o) => {
                let g = o
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if o.get("spec") == obj.get("spec") {
                    g
                } else {
                    g + 1
                }
            }
        };
        obj["metadata"]["generation"] = generation.into();
        match old.as_ref().and_then(|o| o.get("status")) {
            Some(status) => obj["status"] = status.clone(),
            None => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), api_version.into());
            let kind = body
                .and_then(|b| b.get("kind"))
                .cloned()
                .unwrap_or(Value::Null);
            m.insert("kind".into(), kind);
        }
        if let Some(n) = obj.pointer("/metadata/name").and_then(Value::as_str) {
            st.objects.insert(
                (store.to_string(), ns.to_string(), n.to_string()),
                obj.clone(),
            );
        }
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        st.changed(store, kind, &obj);
        return Reply::json(*code, obj);
    }
    reply
}

fn list_objects(
    st: &ClusterState,
    res: &str,
    ns: Option<&str>,
    select: &dyn Fn(&Value) -> Result<bool, String>,
    list: &dyn Fn(&str, Vec<Value>, u64) -> Reply,
) -> Reply {
    let mut items = Vec::new();
    for ((r, n, _), o) in &st.objects {
        if r != res || ns.is_some_and(|want| want != n) {
            continue;
        }
        match select(o) {
            Ok(true) => items.push(o.clone()),
            Ok(false) => {}
            Err(e) => return status(400, "BadRequest", &e),
        }
    }
    let kind = if res == "configmaps" {
        "ConfigMapList"
    } else {
        "SecretList"
    };
    list(kind, items, st.rv)
}

/// Create (`name` None) or replace an object.
fn write(
    st: &mut ClusterState,
    res: &str,
    ns: &str,
    name: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let Some(mut obj) = body.filter(|b| b.is_object()).cloned() else {
        return status(400, "BadRequest", "the request body is not a JSON object");
    };
    let Some(obj_name) = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return status(
            422,
            "Invalid",
            &format!("{res}: metadata.name: Required value"),
        );
    };
    if let Some(n) = name.filter(|n| *n != obj_name) {
        return status(
            400,
            "BadRequest",
            &format!(
                "the name of the object ({obj_name}) does not match the name on the URL ({n})"
            ),
        );
    }
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(n) if n != ns => return status(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        ),
        _ => {}
    }
    if !st.namespaces.contains_key(ns) {
        return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
    }
    let key = (res.to_string(), ns.to_string(), obj_name.clone());
    let existing = st.objects.get(&key).cloned();
    let (code, uid) = match (name, &existing) {
        (None, Some(_)) => {
            return status(
                409,
                "AlreadyExists",
                &format!("{res} \"{obj_name}\" already exists"),
            )
        }
        (None, None) => (201, uid_of(&format!("{res}/{ns}/{obj_name}/{}", st.rv))),
        (Some(_), None) => {
            return status(404, "NotFound", &format!("{res} \"{obj_name}\" not found"))
        }
        (Some(_), Some(old)) => {
            let want = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str);
            let have = old
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str);
            if want.is_some_and(|w| Some(w) != have) {
                return status(
                    409,
                    "Conflict",
                    &format!("Operation cannot be fulfilled on {res} \"{obj_name}\": the object has been modified; please apply your changes to the latest version and try again"),
                );
            }
            (
                200,
                old.pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    };
    let rv = st.next_rv();
    let kind = match res {
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        _ => obj.get("kind").and_then(Value::as_str).unwrap_or("Object"),
    }
    .to_string();
    if !obj.get("data").is_none_or(Value::is_object) {
        return status(
            422,
            "Invalid",
            &format!("{res} \"{obj_name}\": data must be a map"),
        );
    }
    if let Some(m) = obj.as_object_mut() {
        m.insert("kind".into(), kind.into());
        if !res.contains('/') {
            m.insert("apiVersion".into(), "v1".into());
        }
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), ns.into());
        meta.insert("uid".into(), uid.into());
        meta.insert("resourceVersion".into(), rv.into());
        meta.remove("managedFields");
    }
    if res == "configmaps" {
        let files: Vec<(String, String)> = obj
            .get("data")
            .and_then(Value::as_object)
            .map(|d| {
                d.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let dir = st.dir.join(ns).join(&obj_name);
        if let Err(e) = crate::kubelet::write_atomic_dir(&dir, &files) {
            return status(
                500,
                "InternalError",
                &format!(
                    "lab: writing ConfigMap {ns}/{obj_name} to {}: {e:#}",
                    dir.display()
                ),
            );
        }
    }
    st.objects.insert(key, obj.clone());
    Reply::json(code, obj)
}

fn token_review(st: &ClusterState, body: Option<&Value>, now: u64) -> Reply {
    let Some(body) = body else {
        return status(400, "BadRequest", "tokenreviews: no body");
    };
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let asked: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![API_AUDIENCE.to_string()]);
    let mut spec = json!({"token": token});
    if let Some(a) = body.pointer("/spec/audiences") {
        spec["audiences"] = a.clone();
    }
    let status = match review(st, token, &asked, now) {
        Ok(s) => s,
        Err(why) => json!({"user": {}, "error": format!("[invalid bearer token, {why}]")}),
    };
    Reply::json(
        201,
        json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
               "metadata": {"creationTimestamp": null}, "spec": spec, "status": status}),
    )
}

/// The status of an authenticated review, or the authenticator's error.
fn review(st: &ClusterState, token: &str, asked: &[String], now: u64) -> Result<Value, String> {
    if token.is_empty() {
        return Err("no token".into());
    }
    let claims = verify_token(&st.token_key, token)?;
    if claims["iss"] != TOKEN_ISSUER {
        return Err(format!(
            "token issuer {} is not this lab's ({TOKEN_ISSUER})",
            claims["iss"]
        ));
    }
    let exp = claims["exp"].as_u64().ok_or("token has no expiry")?;
    if exp <= now {
        return Err("service account token has expired".into());
    }
    if claims["nbf"].as_u64().is_some_and(|nbf| nbf > now + 60) {
        return Err("service account token is not valid yet".into());
    }
    let auds: Vec<String> = match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let granted: Vec<String> = asked.iter().filter(|a| auds.contains(a)).cloned().collect();
    if granted.is_empty() {
        return Err(format!(
            "token audiences {} is invalid for the target audiences {}",
            go_list(&auds),
            go_list(asked)
        ));
    }
    let sub = claims["sub"].as_str().unwrap_or_default();
    let (ns, sa) = match sub.split(':').collect::<Vec<_>>().as_slice() {
        ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => {
            (ns.to_string(), sa.to_string())
        }
        _ => return Err(format!("token subject {sub:?} is not a service account")),
    };
    let mut extra = serde_json::Map::new();
    if let Some(jti) = claims["jti"].as_str() {
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            json!([format!("JTI={jti}")]),
        );
    }
    let pod = &claims["kubernetes.io"]["pod"];
    if let (Some(name), Some(uid)) = (pod["name"].as_str(), pod["uid"].as_str()) {
        match st.pods.get(uid) {
            Some((pns, pname)) if *pns == ns && pname == name => {}
            _ => {
                return Err(format!(
                    "pod \"{name}\" (uid {uid}) in namespace {ns} does not exist: token has been invalidated"
                ))
            }
        }
        extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            json!([NODE_NAME]),
        );
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            json!([name]),
        );
        extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
    }
    Ok(json!({
        "authenticated": true,
        "user": {
            "username": sub,
            "uid": uid_of(&format!("sa/{ns}/{sa}")),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "extra": extra,
        },
        "audiences": granted,
    }))
}

fn lock(state: &Mutex<ClusterState>) -> MutexGuard<'_, ClusterState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Send `pending` changes to the held watches: namespaces on `/api/v1/namespaces`, objects
/// of other APIs on `/apis/GROUP/VERSION/PLURAL` for every version served, each object
/// answered with that version.
fn deliver(
    emitter: &Emitter,
    served: &BTreeMap<String, Vec<String>>,
    pending: Vec<(String, Value)>,
) {
    for (watch, event) in pending {
        if watch == "namespaces" {
            emitter.emit("/api/v1/namespaces", event);
            continue;
        }
        let Some((group, plural)) = watch.split_once('/') else {
            continue;
        };
        for v in served.get(group).into_iter().flatten() {
            let av = format!("{group}/{v}");
            emitter.emit(
                &format!("/apis/{av}/{plural}"),
                with_version(event.clone(), Some(&av)),
            );
        }
    }
}

/// The running API (stopped on drop) and the state it answers from.
pub struct LabApi {
    api: RecordedApi,
    state: Arc<Mutex<ClusterState>>,
    addr: SocketAddr,
}

impl LabApi {
    /// Listens on 127.0.0.1:[`API_PORT`] inside `node` (from within `rt`); ConfigMaps go under
    /// `dir`; tokens are signed with a new random key.
    pub fn start(rt: &tokio::runtime::Runtime, node: &Netns, dir: &Path) -> Result<LabApi> {
        let addr = SocketAddr::from(([127, 0, 0, 1], API_PORT));
        let listener = node
            .listen(addr)
            .context("the lab's Kubernetes API stand-in")?;
        let api = {
            let _in_rt = rt.enter();
            RecordedApi::start_on(listener)?
        };
        Ok(LabApi::serve(api, addr, dir))
    }

    /// The same API on 127.0.0.1 (a free port) of the caller's namespace, for contract tests
    /// of the control plane's kube calls. Call from within a Tokio runtime.
    pub fn start_local(dir: &Path) -> Result<LabApi> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let api = RecordedApi::start_on(listener)?;
        Ok(LabApi::serve(api, addr, dir))
    }

    fn serve(api: RecordedApi, addr: SocketAddr, dir: &Path) -> LabApi {
        let key: [u8; 32] = rand::random();
        let state = Arc::new(Mutex::new(ClusterState::new(
            key.to_vec(),
            dir.to_path_buf(),
        )));
        let st = state.clone();
        let emitter = api.emitter();
        api.fallback(Arc::new(move |req: &Seen| {
            let (reply, pending, served) = {
                let mut s = lock(&st);
                let reply = answer(&mut s, req, unix_now());
                (reply, s.take_pending(), s.served.clone())
            };
            deliver(&emitter, &served, pending);
            reply
        }));
        LabApi { api, state, addr }
    }

    /// Send the state's pending changes to the held watches.
    fn flush(&self) {
        let (pending, served) = {
            let mut s = lock(&self.state);
            (s.take_pending(), s.served.clone())
        };
        deliver(&self.api.emitter(), &served, pending);
    }

    /// Answer one request as the server would (no HTTP: the test's own writes), then send
    /// the changes it made to the held watches.
    fn call(
        &self,
        method: &str,
        pq: &str,
        content_type: Option<&str>,
        body: Option<Value>,
    ) -> Option<Reply> {
        let reply = answer(
            &mut lock(&self.state),
            &Seen {
                method: method.into(),
                path_and_query: pq.to_string(),
                content_type: content_type.map(str::to_string),
                body,
                matched: true,
            },
            unix_now(),
        );
        self.flush();
        reply
    }

    /// How many watches on `path` (no query) are held open.
    pub fn open_watches(&self, path: &str) -> usize {
        self.api.open_watches(path)
    }

    /// Create or replace an object of another API (as `kubectl apply` would), e.g. an Istio
    /// kind; `plural` is its resource name. Panics on a refusal (a test's own mistake).
    pub fn apply(&self, api_version: &str, plural: &str, object: Value) -> Value {
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let base = format!("/apis/{api_version}/namespaces/{ns}/{plural}");
        let exists = {
            let s = lock(&self.state);
            let group = api_version.split('/').next().unwrap_or_default();
            s.objects
                .contains_key(&(format!("{group}/{plural}"), ns.clone(), name.clone()))
        };
        let (method, pq) = if exists {
            ("PUT", format!("{base}/{name}"))
        } else {
            ("POST", base)
        };
        let reply = self.call(method, &pq, Some("application/json"), Some(object));
        match reply {
            Some(Reply::Json {
                status: 200 | 201,
                body,
            }) => body,
            other => panic!("lab API: {method} {pq}: {other:?}"),
        }
    }

    /// Merge-patch an object's `status` subresource (as a controller such as istiod does).
    pub fn patch_status(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        patch: Value,
    ) -> Value {
        let pq = format!("/apis/{api_version}/namespaces/{namespace}/{plural}/{name}/status");
        let reply = self.call(
            "PATCH",
            &pq,
            Some("application/merge-patch+json"),
            Some(patch),
        );
        match reply {
            Some(Reply::Json { status: 200, body }) => body,
            other => panic!("lab API: PATCH {pq}: {other:?}"),
        }
    }

    /// Delete an object of another API.
    pub fn delete(&self, api_version: &str, plural: &str, namespace: &str, name: &str) {
        let pq = format!("/apis/{api_version}/namespaces/{namespace}/{plural}/{name}");
        let reply = self.call("DELETE", &pq, None, None);
        assert!(
            matches!(reply, Some(Reply::Json { status: 200, .. })),
            "lab API: DELETE {pq}: {reply:?}"
        );
    }

    /// Create a ConfigMap as a user would (no controller label unless given).
    pub fn create_configmap(&self, namespace: &str, object: Value) -> Value {
        let pq = format!("/api/v1/namespaces/{namespace}/configmaps");
        let reply = self.call("POST", &pq, Some("application/json"), Some(object));
        match reply {
            Some(Reply::Json { status: 201, body }) => body,
            other => panic!("lab API: POST {pq}: {other:?}"),
        }
    }

    /// Replace a ConfigMap as a user would (`kubectl replace`; its resourceVersion, if given,
    /// must be current).
    pub fn replace_configmap(&self, namespace: &str, object: Value) -> Value {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let pq = format!("/api/v1/namespaces/{namespace}/configmaps/{name}");
        let reply = self.call("PUT", &pq, Some("application/json"), Some(object));
        match reply {
            Some(Reply::Json { status: 200, body }) => body,
            other => panic!("lab API: PUT {pq}: {other:?}"),
        }
    }

    /// Every object in `store` (`configmaps`, `secrets`, or `GROUP/PLURAL`), in key order.
    pub fn objects(&self, store: &str) -> Vec<Value> {
        lock(&self.state)
            .objects
            .iter()
            .filter(|((r, _, _), _)| r == store)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// End every held watch on `path` with an ERROR 410 Expired, as an API server does when
    /// the watch's resourceVersion is too old; returns how many watches got it.
    pub fn expire_watches(&self, path: &str) -> usize {
        let rv = lock(&self.state).rv.to_string();
        self.api.emit(path, crate::apiserver::expired_event(&rv))
    }

    /// Change the groups the API serves (e.g. drop one to stand for CRDs not installed).
    pub fn set_served(&self, group: &str, versions: &[&str]) {
        let mut s = lock(&self.state);
        if versions.is_empty() {
            s.served.remove(group);
        } else {
            s.served.insert(
                group.to_string(),
                versions.iter().map(|v| v.to_string()).collect(),
            );
        }
    }

    /// Answer 404 for `plural` of a served `group`, as when that kind's CRD is not installed.
    pub fn set_kind_missing(&self, group: &str, plural: &str) {
        lock(&self.state)
            .missing_kinds
            .insert(format!("{group}/{plural}"));
    }

    /// The URL the control plane uses (`--kube-url`), valid inside the node's namespace.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The key the lab's tokens are signed with.
    pub fn token_key(&self) -> Vec<u8> {
        lock(&self.state).token_key.clone()
    }

    pub fn set_namespace(&self, name: &str, labels: &BTreeMap<String, String>) {
        lock(&self.state).set_namespace(name, labels);
        self.flush();
    }

    pub fn add_pod(&self, namespace: &str, name: &str, uid: &str) {
        lock(&self.state).add_pod(namespace, name, uid);
    }

    pub fn remove_pod(&self, uid: &str) {
        lock(&self.state).remove_pod(uid);
    }

    /// ConfigMaps of `namespace` written through the API: name → directory.
    pub fn configmap_dirs(&self, namespace: &str) -> BTreeMap<String, PathBuf> {
        lock(&self.state).configmap_dirs(namespace)
    }

    /// An object written through the API (`configmaps` or `secrets`).
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.state).object(resource, namespace, name).cloned()
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.api.requests()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(method: &str, pq: &str, body: Option<Value>) -> Seen {
        Seen {
            method: method.into(),
            path_and_query: pq.into(),
            content_type: Some("application/json".into()),
            body,
            matched: false,
        }
    }

    fn state(dir: &Path) -> ClusterState {
        let mut st = ClusterState::new(b"lab key".to_vec(), dir.to_path_buf());
        st.set_namespace(
            "shop",
            &[("istio-injection".into(), "enabled".into())].into(),
        );
        st.set_namespace("plain", &BTreeMap::new());
        st.add_pod("shop", "web-1", "uid-web-1");
        st
    }

    fn token(key: &[u8], aud: &str, exp: u64, pod: (&str, &str)) -> String {
        issue_token(
            key,
            &json!({"aud": [aud], "iss": TOKEN_ISSUER, "sub": "system:serviceaccount:shop:web-sa",
                    "iat": 1000, "exp": exp, "jti": "j-1",
                    "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "web-sa"},
                                      "pod": {"name": pod.0, "uid": pod.1}}}),
        )
    }

    fn json_of(r: Option<Reply>) -> (u16, Value) {
        match r {
            Some(Reply::Json { status, body }) => (status, body),
            other => panic!("{other:?}"),
        }
    }

    fn review_of(st: &mut ClusterState, token: &str, auds: Value) -> Value {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                          "spec": {"token": token, "audiences": auds}});
        let (code, v) = json_of(answer(st, &seen("POST", TOKENREVIEWS, Some(body)), 5000));
        assert_eq!(code, 201);
        assert_eq!(v["kind"], "TokenReview");
        v["status"].clone()
    }

    #[test]
    fn token_reviews_authenticate_only_good_tokens() {
        let t = tempfile::tempdir().unwrap();
        let mut st = state(t.path());
        let good = token(b"lab key", "remora-ca", 9000, ("web-1", "uid-web-1"));
        let s = review_of(&mut st, &good, json!(["remora-ca"]));
        assert_eq!(s["authenticated"], true, "{s}");
        assert_eq!(s["audiences"], json!(["remora-ca"]));
        assert_eq!(s["user"]["username"], "system:serviceaccount:shop:web-sa");
        assert_eq!(
            s["user"]["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["web-1"])
        );
        // What the CA makes of it.
        let parsed: k8s_openapi::api::authentication::v1::TokenReviewStatus =
            serde_json::from_value(s).unwrap();
        let id = remora_webhook::ca::authn::identity_of(Some(&parsed), "remora-ca").unwrap();
        assert_eq!(
            id.spiffe("cluster.local"),
            "spiffe://cluster.local/ns/shop/sa/web-sa"
        );
        assert_eq!(id.pod.as_deref(), Some("web-1"));

        let refused = |st: &mut ClusterState, tok: &str, auds: Value, want: &str| {
            let s = review_of(st, tok, auds);
            assert!(s.get("authenticated").is_none(), "{s}");
            let e = s["error"].as_str().unwrap();
            assert!(
                e.starts_with("[invalid bearer token, ") && e.contains(want),
                "{e} lacks {want}"
            );
        };
        refused(
            &mut st,
            &good,
            json!([]),
            "token audiences [\"remora-ca\"] is invalid for the target audiences [\"https://kubernetes.default.svc.cluster.local\"]",
        );
        refused(
            &mut st,
            &good,
            json!(["other"]),
            "is invalid for the target audiences [\"other\"]",
        );
        let expired = token(b"lab key", "remora-ca", 4000, ("web-1", "uid-web-1"));
        refused(
            &mut st,
            &expired,
            json!(["remora-ca"]),
            "service account token has expired",
        );
        let forged = token(b"other key", "remora-ca", 9000, ("web-1", "uid-web-1"));
        refused(
            &mut st,
            &forged,
            json!(["remora-ca"]),
            "signature does not verify",
        );
        let gone = token(b"lab key", "remora-ca", 9000, ("web-2", "uid-web-2"));
        refused(
            &mut st,
            &gone,
            json!(["remora-ca"]),
            "token has been invalidated",
        );
        st.remove_pod("uid-web-1");
        refused(&mut st, &good, json!(["remora-ca"]), "does not exist");
        refused(&mut st, "not.a-token", json!(["remora-ca"]), "three parts");
        let unsigned = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(br#"{"sub":"system:serviceaccount:shop:web-sa"}"#)
        );
        refused(
            &mut st,
            &unsigned,
            json!(["remora-ca"]),
            "signing algorithm",
        );
    }

    #[test]
    fn objects_create_list_replace_and_configmaps_land_on_disk() {
        let t = tempfile::tempdir().unwrap();
        let mut st = state(t.path());
        let cms = "/api/v1/namespaces/shop/configmaps";
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "remora-ca-root-cert", "namespace": "shop", "labels": {"a": "b"}},
                        "data": {"root-cert.pem": "ROOT"}});
        let (code, created) = json_of(answer(&mut st, &seen("POST", cms, Some(cm.clone())), 1));
        assert_eq!(code, 201);
        let rv = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let file = t.path().join("shop/remora-ca-root-cert/root-cert.pem");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "ROOT");
        assert_eq!(
            st.configmap_dirs("shop")["remora-ca-root-cert"],
            t.path().join("shop/remora-ca-root-cert")
        );
        let (code, v) = json_of(answer(&mut st, &seen("POST", cms, Some(cm.clone())), 1));
        assert_eq!((code, v["reason"].as_str()), (409, Some("AlreadyExists")));
        // Unknown namespace.
        let (code, _) = json_of(answer(
            &mut st,
            &seen(
                "POST",
                "/api/v1/namespaces/nope/configmaps",
                Some(json!({"metadata": {"name": "x"}})),
            ),
            1,
        ));
        assert_eq!(code, 404);
        // The publisher's two lists.
        let (_, nss) = json_of(answer(
            &mut st,
            &seen(
                "GET",
                "/api/v1/namespaces?labelSelector=istio-injection%3Denabled&limit=500",
                None,
            ),
            1,
        ));
        let names: Vec<&str> = nss["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["shop"]);
        assert_eq!(nss["kind"], "NamespaceList");
        let (_, all) = json_of(answer(
            &mut st,
            &seen(
                "GET",
                "/api/v1/configmaps?fieldSelector=metadata.name%3Dremora-ca-root-cert&limit=500",
                None,
            ),
            1,
        ));
        assert_eq!(all["items"].as_array().unwrap().len(), 1);
        assert_eq!(all["items"][0]["metadata"]["namespace"], "shop");
        let (_, none) = json_of(answer(
            &mut st,
            &seen(
                "GET",
                "/api/v1/configmaps?fieldSelector=metadata.name%3Dother",
                None,
            ),
            1,
        ));
        assert!(none["items"].as_array().unwrap().is_empty());
        // Replace: a stale resourceVersion conflicts, the current one wins and the file follows.
        let put = "/api/v1/namespaces/shop/configmaps/remora-ca-root-cert";
        let mut update = created.clone();
        update["data"]["root-cert.pem"] = "NEW".into();
        update["metadata"]["resourceVersion"] = "1".into();
        let (code, _) = json_of(answer(&mut st, &seen("PUT", put, Some(update.clone())), 1));
        assert_eq!(code, 409);
        update["metadata"]["resourceVersion"] = rv.clone().into();
        let (code, v) = json_of(answer(&mut st, &seen("PUT", put, Some(update)), 1));
        assert_eq!(code, 200);
        assert_ne!(v["metadata"]["resourceVersion"], rv.as_str());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "NEW");
        // Secrets: 404, create, get.
        let s = "/api/v1/namespaces/remora-system/secrets";
        st.set_namespace("remora-system", &BTreeMap::new());
        let (code, _) = json_of(answer(
            &mut st,
            &seen("GET", &format!("{s}/remora-ca"), None),
            1,
        ));
        assert_eq!(code, 404);
        let secret =
            json!({"metadata": {"name": "remora-ca"}, "type": "Opaque", "data": {"k": "dg=="}});
        let (code, _) = json_of(answer(&mut st, &seen("POST", s, Some(secret)), 1));
        assert_eq!(code, 201);
        let (code, v) = json_of(answer(
            &mut st,
            &seen("GET", &format!("{s}/remora-ca"), None),
            1,
        ));
        assert_eq!((code, v["data"]["k"].as_str()), (200, Some("dg==")));
        assert!(answer(&mut st, &seen("GET", "/api/v1/pods", None), 1).is_none());
    }

    #[test]
    fn selectors() {
        let l = json!({"a": "1", "b": "2"});
        for (sel, want) in [
            ("a=1", true),
            ("a==1,b=2", true),
            ("a=2", false),
            ("a!=2", true),
            ("c", false),
            ("a", true),
            ("!c", true),
            ("", true),
        ] {
            assert_eq!(label_matches(sel, &l).unwrap(), want, "{sel}");
        }
        assert!(label_matches("a in (1)", &l).is_err());
        let o = json!({"metadata": {"name": "x", "namespace": "n"}});
        assert!(field_matches("metadata.name=x,metadata.namespace=n", &o).unwrap());
        assert!(!field_matches("metadata.name!=x", &o).unwrap());
        assert!(field_matches("spec.x=1", &o).is_err());
    }
}
