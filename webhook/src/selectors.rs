//! Which webhook entry sends a pod to which revision's injector: the one definition of the
//! selectors of remora's MutatingWebhookConfigurations.
//!
//! Istio's layout (`manifests/charts/istio-control/istio-discovery/templates/mutatingwebhook.yaml`):
//! one configuration per installed revision, whose entries are
//!
//! | entry | namespaceSelector | objectSelector | revisions |
//! |---|---|---|---|
//! | `rev.namespace.` | `istio.io/rev` In [rev], `istio-injection` DoesNotExist | `sidecar.istio.io/inject` NotIn [false] | every |
//! | `rev.object.` | `istio.io/rev` DoesNotExist, `istio-injection` DoesNotExist | `sidecar.istio.io/inject` NotIn [false], `istio.io/rev` In [rev] | every |
//! | `namespace.` | `istio-injection` In [enabled] | `sidecar.istio.io/inject` NotIn [false] | `default` |
//! | `object.` | `istio-injection` DoesNotExist, `istio.io/rev` DoesNotExist | `sidecar.istio.io/inject` In [true], `istio.io/rev` DoesNotExist | `default` |
//!
//! remora adds one requirement to every namespaceSelector: `kubernetes.io/metadata.name` NotIn
//! the system namespaces and its own, so those never reach the webhook. The entries exclude each
//! other, so at most one entry of all installed revisions is called for a pod (two revisions
//! never share a name).
//!
//! Each entry calls its revision's Service at the path `/inject/rev/<revision>/<entry>`, so the
//! injector knows which entry sent the pod: it checks the revision is its own and the pod's labels
//! against the entry's objectSelector ([`Selection`], used by `decide`).
//!
//! Revision tags, as Istio's `istioctl tag set prod --revision b`: a tag is a second name for a
//! revision. Its own configuration, `remora-revision-tag-<tag>` ([`tag_configuration`]), has
//! the two `rev.` entries with the tag as the `istio.io/rev` value, calling revision `b`'s
//! Service at `/inject/rev/b/tag/<tag>/<entry>`; so a namespace labelled `istio.io/rev=prod` is
//! injected by `b`, and moving `prod` to another revision is one `manifest --tag` re-apply, no
//! namespace relabelled. The tag `default` (Istio's, which also takes `istio-injection=enabled`)
//! is not supported. The same definition
//! renders the configurations ([`mutating_webhook_configuration`], `manifests/webhook.yaml` is
//! tested against it), answers the offline `check-inject -f` ([`select`]) and picks the
//! namespaces the mesh CA publishes its root to ([`namespace_may_be_selected`]).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Value};

use crate::label_selector::{Requirement, Selector};
use crate::values::INJECT;

/// Istio's namespace label: `enabled` selects the default revision.
pub const INJECTION_LABEL: &str = "istio-injection";
/// Istio's revision label, on a namespace or a pod.
pub const REV_LABEL: &str = "istio.io/rev";
/// The label the API server puts on every namespace.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The revision `istio-injection=enabled` and a pod's `sidecar.istio.io/inject=true` select.
pub const DEFAULT_REVISION: &str = "default";
/// Namespaces no entry selects: Kubernetes' own and the mesh's.
pub const EXCLUDED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "remora-system",
];
/// The namespace of the webhook's Service.
pub const MESH_NAMESPACE: &str = "remora-system";
/// The injection path; revisions' entries add `/rev/<revision>/<entry>`.
pub const INJECT_PATH: &str = "/inject";
/// Longest revision name: it ends the names of the revision's objects
/// (`remora-webhook-<revision>` is a Service name, at most 63 characters).
pub const MAX_REVISION_LEN: usize = 32;
/// Label on remora's own objects naming their revision (not `istio.io/rev`, which Istio's tools
/// read as one of Istio's revisions).
pub const REVISION_LABEL: &str = "remora.dev/revision";

/// Label on a tag's configuration naming the tag (its revision is in [`REVISION_LABEL`]).
pub const TAG_LABEL: &str = "remora.dev/tag";
/// A tag's MutatingWebhookConfiguration is `remora-revision-tag-<tag>` (Istio's is
/// `istio-revision-tag-<tag>`).
pub const TAG_CONFIG_PREFIX: &str = "remora-revision-tag";

/// The default revision's object names; another revision's are these with `-<revision>` added
/// ([`revision_name`]).
pub const WEBHOOK_CONFIG: &str = "remora-sidecar-injector";
pub const WEBHOOK_SERVICE: &str = "remora-webhook";
pub const INJECTOR_CONFIGMAP: &str = "remora-injector";

/// The name of a revision's object: `base` for the default revision, `base-<revision>` else.
pub fn revision_name(base: &str, revision: &str) -> String {
    if revision == DEFAULT_REVISION {
        base.to_string()
    } else {
        format!("{base}-{revision}")
    }
}

/// Checks a revision name: a Kubernetes label value that can also end object names.
pub fn check_revision(rev: &str) -> Result<(), String> {
    let ok_chars = rev
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if rev.is_empty() {
        return Err("empty: name a revision (default, or e.g. canary, 1-2-0)".into());
    }
    if rev.len() > MAX_REVISION_LEN {
        return Err(format!(
            "{} characters: at most {MAX_REVISION_LEN} (it ends the names of the revision's objects)",
            rev.len()
        ));
    }
    if !ok_chars || !ends(rev.as_bytes().first()) || !ends(rev.as_bytes().last()) {
        return Err("must be lowercase letters, digits and '-', starting and ending with a letter or digit (e.g. canary, 1-2-0)".into());
    }
    Ok(())
}

/// Checks a tag for `revision`: a revision name (it is an `istio.io/rev` value too), not
/// `default` and not the revision's own name.
pub fn check_tag(tag: &str, revision: &str) -> Result<(), String> {
    check_revision(tag)?;
    if tag == DEFAULT_REVISION {
        return Err(format!(
            "the tag {DEFAULT_REVISION} is not supported (istio-injection=enabled and {INJECT}=true select the default revision itself); name another tag"
        ));
    }
    if tag == revision {
        return Err(format!(
            "is the revision's own name: {REV_LABEL}={revision} selects it already"
        ));
    }
    Ok(())
}

/// A revision tag: `name` stands for `revision` in `istio.io/rev` labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub name: String,
    pub revision: String,
}

impl Tag {
    /// `TAG=REVISION` (a flag's value), checked with [`check_tag`].
    pub fn parse(v: &str) -> Result<Tag, String> {
        let Some((name, revision)) = v.split_once('=') else {
            return Err("expected TAG=REVISION, e.g. prod=b".into());
        };
        check_revision(revision).map_err(|why| format!("revision {revision:?}: {why}"))?;
        check_tag(name, revision).map_err(|why| format!("tag {name:?}: {why}"))?;
        Ok(Tag {
            name: name.to_string(),
            revision: revision.to_string(),
        })
    }
}

/// One of Istio's four injector webhook entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    /// The namespace's `istio.io/rev` names the revision.
    RevNamespace,
    /// The pod's `istio.io/rev` names the revision (namespace unlabelled).
    RevObject,
    /// The namespace's `istio-injection=enabled` (default revision).
    Namespace,
    /// The pod's `sidecar.istio.io/inject=true` (namespace unlabelled; default revision).
    Object,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Entry {
    pub const ALL: [Entry; 4] = [
        Entry::RevNamespace,
        Entry::RevObject,
        Entry::Namespace,
        Entry::Object,
    ];

    /// The entry's id: its name prefix and the last segment of its path.
    pub fn id(self) -> &'static str {
        match self {
            Entry::RevNamespace => "rev.namespace",
            Entry::RevObject => "rev.object",
            Entry::Namespace => "namespace",
            Entry::Object => "object",
        }
    }

    pub fn parse(s: &str) -> Option<Entry> {
        Entry::ALL.into_iter().find(|e| e.id() == s)
    }

    /// The entries of a revision's configuration, in Istio's order.
    pub fn of_revision(rev: &str) -> &'static [Entry] {
        if rev == DEFAULT_REVISION {
            &Entry::ALL
        } else {
            &Entry::ALL[..2]
        }
    }

    /// `webhooks[].name` (unique within the configuration).
    pub fn webhook_name(self) -> String {
        format!("{}.sidecar-injector.remora.dev", self.id())
    }

    /// The path of the revision's Service this entry calls.
    pub fn path(self, rev: &str) -> String {
        format!("{INJECT_PATH}/rev/{rev}/{}", self.id())
    }

    /// The path revision `rev`'s Service is called at by this entry of tag `tag`.
    pub fn tag_path(self, rev: &str, tag: &str) -> String {
        format!("{INJECT_PATH}/rev/{rev}/tag/{tag}/{}", self.id())
    }

    pub fn namespace_selector(self, rev: &str) -> Selector {
        let mut r = match self {
            Entry::RevNamespace => vec![
                Requirement::In(REV_LABEL.into(), vec![rev.into()]),
                Requirement::DoesNotExist(INJECTION_LABEL.into()),
            ],
            Entry::RevObject => vec![
                Requirement::DoesNotExist(REV_LABEL.into()),
                Requirement::DoesNotExist(INJECTION_LABEL.into()),
            ],
            Entry::Namespace => vec![Requirement::In(
                INJECTION_LABEL.into(),
                vec!["enabled".into()],
            )],
            Entry::Object => vec![
                Requirement::DoesNotExist(INJECTION_LABEL.into()),
                Requirement::DoesNotExist(REV_LABEL.into()),
            ],
        };
        r.push(Requirement::NotIn(
            NAME_LABEL.into(),
            EXCLUDED_NAMESPACES.iter().map(|s| s.to_string()).collect(),
        ));
        Selector { requirements: r }
    }

    pub fn object_selector(self, rev: &str) -> Selector {
        let not_false = Requirement::NotIn(INJECT.into(), vec!["false".into()]);
        let r = match self {
            Entry::RevNamespace | Entry::Namespace => vec![not_false],
            Entry::RevObject => vec![
                not_false,
                Requirement::In(REV_LABEL.into(), vec![rev.into()]),
            ],
            Entry::Object => vec![
                Requirement::In(INJECT.into(), vec!["true".into()]),
                Requirement::DoesNotExist(REV_LABEL.into()),
            ],
        };
        Selector { requirements: r }
    }

    /// What selects a pod through this entry, in words.
    pub fn why(self, rev: &str) -> String {
        match self {
            Entry::RevNamespace => {
                format!("namespace label {REV_LABEL}={rev} (and no {INJECTION_LABEL} label)")
            }
            Entry::RevObject => format!(
                "pod label {REV_LABEL}={rev} (the namespace has neither {INJECTION_LABEL} nor {REV_LABEL})"
            ),
            Entry::Namespace => format!("namespace label {INJECTION_LABEL}=enabled"),
            Entry::Object => format!(
                "pod label {INJECT}=true (the namespace has neither {INJECTION_LABEL} nor {REV_LABEL}, the pod no {REV_LABEL})"
            ),
        }
    }
}

/// How the injector learned which entry sent a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The webhook's path, `/inject/rev/<revision>/<entry>`.
    Path,
    /// The path `/inject` of a configuration written before revisions: it selected namespaces
    /// labelled `istio-injection=enabled`, the default revision's `namespace.` entry.
    LegacyPath,
    /// Offline: evaluated from the labels given.
    Labels,
    /// Offline without namespace labels: assumed.
    Assumed,
}

/// Which entry of which revision sends (or would send) a pod to the injector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub revision: String,
    /// The tag whose configuration's entry it is (`None`: the revision's own).
    pub tag: Option<String>,
    pub entry: Entry,
    pub source: Source,
}

impl Selection {
    pub fn new(revision: &str, entry: Entry, source: Source) -> Selection {
        Selection {
            revision: revision.to_string(),
            tag: None,
            entry,
            source,
        }
    }

    /// An entry of tag `tag`'s configuration, calling `revision`'s injector.
    pub fn tagged(revision: &str, tag: &str, entry: Entry, source: Source) -> Selection {
        Selection {
            tag: Some(tag.to_string()),
            ..Selection::new(revision, entry, source)
        }
    }

    /// The `istio.io/rev` value the entry's selectors name: the tag, else the revision.
    pub fn label_value(&self) -> &str {
        self.tag.as_deref().unwrap_or(&self.revision)
    }

    /// What a webhook configuration from before revisions (path `/inject`) selected.
    pub fn legacy() -> Selection {
        Selection::new(DEFAULT_REVISION, Entry::Namespace, Source::LegacyPath)
    }

    /// Reads the request path: `/inject` (a configuration from before revisions) or
    /// `/inject/rev/<revision>/<entry>`, the entry being one of that revision's.
    pub fn from_path(path: &str) -> Result<Selection, String> {
        let p = path.trim_end_matches('/');
        if p == INJECT_PATH {
            return Ok(Selection::legacy());
        }
        let bad = |why: String| {
            Err(format!(
                "request path {path:?}: {why}; expected {INJECT_PATH}/rev/<revision>/<entry> (entry: rev.namespace, rev.object, namespace, object) or {INJECT_PATH}/rev/<revision>/tag/<tag>/<entry> (entry: rev.namespace, rev.object), as the webhook configuration rendered for a revision or a tag calls it"
            ))
        };
        let Some(rest) = p.strip_prefix(&format!("{INJECT_PATH}/rev/")) else {
            return bad("not a revision's path".into());
        };
        let Some((rev, entry)) = rest.split_once('/') else {
            return bad("no entry".into());
        };
        if let Err(why) = check_revision(rev) {
            return bad(format!("revision {rev:?}: {why}"));
        }
        if let Some(tagged) = entry.strip_prefix("tag/") {
            let Some((tag, entry)) = tagged.split_once('/') else {
                return bad("no entry after the tag".into());
            };
            if let Err(why) = check_tag(tag, rev) {
                return bad(format!("tag {tag:?}: {why}"));
            }
            return match Entry::parse(entry) {
                Some(e @ (Entry::RevNamespace | Entry::RevObject)) => {
                    Ok(Selection::tagged(rev, tag, e, Source::Path))
                }
                Some(e) => bad(format!(
                    "entry {e} belongs to the default revision only, not to a tag"
                )),
                None => bad(format!("unknown entry {entry:?}")),
            };
        }
        let Some(entry) = Entry::parse(entry) else {
            return bad(format!("unknown entry {entry:?}"));
        };
        if !Entry::of_revision(rev).contains(&entry) {
            return bad(format!(
                "entry {entry} belongs to the default revision only, not to {rev}"
            ));
        }
        Ok(Selection::new(rev, entry, Source::Path))
    }

    /// The namespace was moved to remora explicitly: labelled `istio.io/rev` with a remora
    /// revision other than `default`. `istio-injection=enabled`, `istio.io/rev=default` and the
    /// pod labels select Istio's default revision as well, so they move nothing.
    pub fn namespace_moved(&self) -> bool {
        self.entry == Entry::RevNamespace && self.label_value() != DEFAULT_REVISION
    }

    /// The entry and why it selects the pod, in words.
    pub fn why(&self) -> String {
        let config = match &self.tag {
            Some(t) => tag_config_name(t),
            None => revision_name(WEBHOOK_CONFIG, &self.revision),
        };
        let hook = format!("{config}/{}", self.entry.webhook_name());
        let mut what = self.entry.why(self.label_value());
        if let Some(t) = &self.tag {
            what.push_str(&format!(", {t} being a tag of revision {}", self.revision));
        }
        match self.source {
            Source::Path | Source::Labels => {
                format!("{hook} (revision {}): {what}", self.revision)
            }
            Source::LegacyPath => format!(
                "path {INJECT_PATH} (a webhook configuration from before revisions, taken as {hook} of revision {}): {what}",
                self.revision
            ),
            Source::Assumed => format!(
                "namespace labels not given (--namespace-labels); assuming {hook} (revision {}) is called: {what}",
                self.revision
            ),
        }
    }
}

fn with_name(namespace: &str, ns_labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut l = ns_labels.clone();
    l.entry(NAME_LABEL.to_string())
        .or_insert_with(|| namespace.to_string());
    l
}

/// The entry of the installed `revisions` that the API server calls for a pod with `pod_labels`
/// in namespace `namespace` labelled `ns_labels`, or why none is.
pub fn select(
    namespace: &str,
    ns_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
    revisions: &[String],
) -> Result<Selection, String> {
    select_with_tags(namespace, ns_labels, pod_labels, revisions, &[])
}

/// [`select`] with the installed `tags` too (a tag of a revision not installed calls no
/// injector that answers; it is reported so).
pub fn select_with_tags(
    namespace: &str,
    ns_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
    revisions: &[String],
    tags: &[Tag],
) -> Result<Selection, String> {
    let ns_l = with_name(namespace, ns_labels);
    for rev in revisions {
        for &e in Entry::of_revision(rev) {
            if e.namespace_selector(rev).matches(&ns_l)
                && e.object_selector(rev).matches(pod_labels)
            {
                return Ok(Selection::new(rev, e, Source::Labels));
            }
        }
    }
    for t in tags {
        for &e in TAG_ENTRIES {
            if e.namespace_selector(&t.name).matches(&ns_l)
                && e.object_selector(&t.name).matches(pod_labels)
            {
                return Ok(Selection::tagged(&t.revision, &t.name, e, Source::Labels));
            }
        }
    }
    Err(not_selected(namespace, &ns_l, pod_labels, revisions))
}

/// A tag's entries: Istio's `rev.` pair, with the tag as the `istio.io/rev` value.
pub const TAG_ENTRIES: &[Entry] = &[Entry::RevNamespace, Entry::RevObject];

/// Why no entry of `revisions` selects the pod (the selectors said so; this finds the words).
fn not_selected(
    namespace: &str,
    ns_l: &BTreeMap<String, String>,
    pod_l: &BTreeMap<String, String>,
    revisions: &[String],
) -> String {
    let installed = if revisions.is_empty() {
        "none".to_string()
    } else {
        revisions.join(", ")
    };
    let default_missing = |label: &str| {
        format!("{label} selects the default revision, which is not among the installed revisions ({installed})")
    };
    let not_installed = |label: &str, rev: &str| {
        format!("{label}={rev} names no installed remora revision (installed: {installed})")
    };
    if EXCLUDED_NAMESPACES.contains(&namespace) {
        return format!("namespace {namespace} is excluded by every entry's namespaceSelector ({NAME_LABEL} NotIn [{}]): no webhook is called", EXCLUDED_NAMESPACES.join(", "));
    }
    if pod_l.get(INJECT).map(String::as_str) == Some("false") {
        return format!("pod label {INJECT}=false: every entry's objectSelector excludes the pod, no webhook is called");
    }
    match ns_l.get(INJECTION_LABEL).map(String::as_str) {
        Some("enabled") => {
            return default_missing(&format!("namespace label {INJECTION_LABEL}=enabled"))
        }
        Some(v) => {
            return format!("namespace label {INJECTION_LABEL}={v}: no webhook is called (only enabled selects, and it wins over {REV_LABEL})")
        }
        None => {}
    }
    if let Some(rev) = ns_l.get(REV_LABEL) {
        return not_installed(&format!("namespace label {REV_LABEL}"), rev);
    }
    if let Some(rev) = pod_l.get(REV_LABEL) {
        return not_installed(&format!("pod label {REV_LABEL}"), rev);
    }
    if pod_l.get(INJECT).map(String::as_str) == Some("true") {
        return default_missing(&format!("pod label {INJECT}=true"));
    }
    format!("the namespace has no {INJECTION_LABEL}=enabled or {REV_LABEL} label and the pod no {REV_LABEL} or {INJECT}=true label: no webhook is called")
}

/// Whether some revision's entry may call the webhook for pods of a namespace with these labels
/// (its name label added): where the mesh CA publishes its root. Any revision counts, so the
/// namespace's own `istio.io/rev` value is taken as installed.
pub fn namespace_may_be_selected(namespace: &str, ns_labels: &BTreeMap<String, String>) -> bool {
    let ns_l = with_name(namespace, ns_labels);
    let rev = ns_l
        .get(REV_LABEL)
        .cloned()
        .unwrap_or_else(|| DEFAULT_REVISION.to_string());
    let mut revs = vec![DEFAULT_REVISION.to_string()];
    if rev != DEFAULT_REVISION {
        revs.push(rev);
    }
    revs.iter().any(|r| {
        Entry::of_revision(r)
            .iter()
            .any(|e| e.namespace_selector(r).matches(&ns_l))
    })
}

/// The `webhooks` of a revision's MutatingWebhookConfiguration: its entries calling its Service
/// `remora-webhook[-<revision>]` in `remora-system`.
pub fn webhooks(rev: &str) -> Vec<Value> {
    Entry::of_revision(rev)
        .iter()
        .map(|&e| webhook(e, rev, rev, &e.path(rev)))
        .collect()
}

/// One entry: `e`'s selectors for the `istio.io/rev` value `value`, calling revision `rev`'s
/// Service at `path`.
fn webhook(e: Entry, value: &str, rev: &str, path: &str) -> Value {
    json!({
        "name": e.webhook_name(),
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
        "reinvocationPolicy": "IfNeeded",
        "matchPolicy": "Equivalent",
        "clientConfig": {"service": {
            "name": revision_name(WEBHOOK_SERVICE, rev),
            "namespace": MESH_NAMESPACE,
            "path": path,
            "port": 443,
        }},
        "rules": [{
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }],
        "namespaceSelector": e.namespace_selector(value).to_json(),
        "objectSelector": e.object_selector(value).to_json(),
    })
}

/// The label selector of revision `rev`'s tag configurations (the labels
/// [`tag_configuration`] gives them): the webhook fills their `caBundle` as its own.
pub fn tag_configs_selector(rev: &str) -> String {
    format!("{TAG_LABEL},{REVISION_LABEL}={rev}")
}

/// The name of tag `tag`'s MutatingWebhookConfiguration.
pub fn tag_config_name(tag: &str) -> String {
    format!("{TAG_CONFIG_PREFIX}-{tag}")
}

/// The `webhooks` of tag `tag` of revision `rev`: [`TAG_ENTRIES`] selecting `istio.io/rev=tag`,
/// calling `rev`'s Service at [`Entry::tag_path`].
pub fn tag_webhooks(tag: &str, rev: &str) -> Vec<Value> {
    TAG_ENTRIES
        .iter()
        .map(|&e| webhook(e, tag, rev, &e.tag_path(rev, tag)))
        .collect()
}

/// Tag `tag`'s whole MutatingWebhookConfiguration (as `istioctl tag generate` prints Istio's),
/// without `caBundle`: revision `rev`'s webhook with `--manage-certs` fills it (it patches every
/// configuration [`tag_configs_selector`] selects).
pub fn tag_configuration(tag: &str, rev: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": tag_config_name(tag),
            "labels": {
                "app.kubernetes.io/name": revision_name(WEBHOOK_SERVICE, rev),
                "app.kubernetes.io/part-of": "remora",
                REVISION_LABEL: rev,
                TAG_LABEL: tag,
            },
        },
        "webhooks": tag_webhooks(tag, rev),
    })
}

/// A revision's whole MutatingWebhookConfiguration (without `caBundle`, which the webhook
/// writes itself with `--manage-certs`).
pub fn mutating_webhook_configuration(rev: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": revision_name(WEBHOOK_CONFIG, rev),
            "labels": {
                "app.kubernetes.io/name": revision_name(WEBHOOK_SERVICE, rev),
                "app.kubernetes.io/part-of": "remora",
                REVISION_LABEL: rev,
            },
        },
        "webhooks": webhooks(rev),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn revs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    /// Tags: namespace or pod labels naming a tag select its configuration's entry, which calls
    /// the tag's revision; the rendered configuration is this definition, and the path it calls
    /// reads back as the same selection.
    #[test]
    fn tags_select_their_revision() {
        let tags = [
            Tag::parse("prod=b").unwrap(),
            Tag::parse("canary=c").unwrap(),
        ];
        let installed = revs(&["default", "b", "c"]);
        // (namespace labels, pod labels, (revision, tag, entry) or words of the reason)
        type Row<'a> = (
            Vec<(&'a str, &'a str)>,
            Vec<(&'a str, &'a str)>,
            Result<(&'a str, Option<&'a str>, Entry), &'a str>,
        );
        let rows: Vec<Row> = vec![
            (
                vec![("istio.io/rev", "prod")],
                vec![],
                Ok(("b", Some("prod"), Entry::RevNamespace)),
            ),
            (
                vec![],
                vec![("istio.io/rev", "canary")],
                Ok(("c", Some("canary"), Entry::RevObject)),
            ),
            // The revision's own name still selects it directly.
            (
                vec![("istio.io/rev", "b")],
                vec![],
                Ok(("b", None, Entry::RevNamespace)),
            ),
            // istio-injection wins over a tag, as over a revision.
            (
                vec![("istio-injection", "enabled"), ("istio.io/rev", "prod")],
                vec![],
                Ok(("default", None, Entry::Namespace)),
            ),
            (
                vec![("istio.io/rev", "prod")],
                vec![("sidecar.istio.io/inject", "false")],
                Err("sidecar.istio.io/inject=false"),
            ),
            (
                vec![("istio.io/rev", "staging")],
                vec![],
                Err("istio.io/rev=staging names no installed remora revision"),
            ),
        ];
        for (ns, pod, want) in rows {
            let got = select_with_tags("shop", &l(&ns), &l(&pod), &installed, &tags);
            let ctx = format!("ns {ns:?} pod {pod:?}: {got:?}");
            match (want, got) {
                (Ok((rev, tag, entry)), Ok(sel)) => {
                    assert_eq!(
                        (sel.revision.as_str(), sel.tag.as_deref(), sel.entry),
                        (rev, tag, entry),
                        "{ctx}"
                    );
                    // The rendered entry selects the same labels and calls that path.
                    let path = match tag {
                        Some(t) => entry.tag_path(rev, t),
                        None => entry.path(rev),
                    };
                    assert_eq!(
                        Selection::from_path(&path),
                        Ok(Selection {
                            source: Source::Path,
                            ..sel.clone()
                        }),
                        "{ctx}"
                    );
                    if let Some(t) = tag {
                        assert!(
                            sel.why().starts_with(&format!(
                                "remora-revision-tag-{t}/{}",
                                entry.webhook_name()
                            )),
                            "{}",
                            sel.why()
                        );
                        assert!(
                            sel.why()
                                .ends_with(&format!("{t} being a tag of revision {rev}")),
                            "{}",
                            sel.why()
                        );
                    }
                }
                (Err(words), Err(why)) => assert!(why.contains(words), "{ctx}"),
                _ => panic!("{ctx}"),
            }
        }
        // The configuration: the two rev. entries, the tag as the label value, revision b's
        // Service at the tag's path.
        let c = tag_configuration("prod", "b");
        assert_eq!(c["metadata"]["name"], "remora-revision-tag-prod");
        assert_eq!(c["metadata"]["labels"][TAG_LABEL], "prod");
        assert_eq!(c["metadata"]["labels"][REVISION_LABEL], "b");
        let hooks = c["webhooks"].as_array().expect("webhooks");
        assert_eq!(hooks.len(), TAG_ENTRIES.len());
        for (w, &e) in hooks.iter().zip(TAG_ENTRIES) {
            assert_eq!(w["name"], e.webhook_name());
            assert_eq!(w["clientConfig"]["service"]["name"], "remora-webhook-b");
            assert_eq!(
                w["clientConfig"]["service"]["path"],
                e.tag_path("b", "prod")
            );
            assert_eq!(
                w["namespaceSelector"],
                e.namespace_selector("prod").to_json()
            );
            assert_eq!(w["objectSelector"], e.object_selector("prod").to_json());
        }
        // Bad tags and paths: one line naming what is wrong.
        assert_eq!(
            Tag::parse("prod").unwrap_err(),
            "expected TAG=REVISION, e.g. prod=b"
        );
        assert!(Tag::parse("default=b")
            .unwrap_err()
            .starts_with("tag \"default\": the tag default is not supported"));
        assert!(Tag::parse("b=b")
            .unwrap_err()
            .contains("is the revision's own name"));
        assert!(Tag::parse("Prod=b")
            .unwrap_err()
            .starts_with("tag \"Prod\": must be lowercase"));
        let e = Selection::from_path("/inject/rev/b/tag/prod/namespace").unwrap_err();
        assert!(
            e.contains("entry namespace belongs to the default revision only, not to a tag"),
            "{e}"
        );
        let e = Selection::from_path("/inject/rev/b/tag/default/rev.namespace").unwrap_err();
        assert!(e.contains("tag \"default\""), "{e}");
    }

    /// Namespace labels × pod labels × installed revisions → the entry called, or a reason
    /// containing the given words.
    #[test]
    fn selection_table() {
        type Row<'a> = (
            Vec<(&'a str, &'a str)>,
            Vec<(&'a str, &'a str)>,
            &'a [&'a str],
            Result<(&'a str, Entry), &'a str>,
        );
        let en = ("istio-injection", "enabled");
        let dis = ("istio-injection", "disabled");
        let rev = |r| ("istio.io/rev", r);
        let yes = ("sidecar.istio.io/inject", "true");
        let no = ("sidecar.istio.io/inject", "false");
        let d: &[&str] = &["default"];
        let db: &[&str] = &["default", "b"];
        let b: &[&str] = &["b"];
        let rows: Vec<Row> = vec![
            // istio-injection=enabled: the default revision, whatever the pod's istio.io/rev.
            (vec![en], vec![], d, Ok(("default", Entry::Namespace))),
            (
                vec![en],
                vec![rev("b")],
                db,
                Ok(("default", Entry::Namespace)),
            ),
            (
                vec![en, rev("b")],
                vec![],
                db,
                Ok(("default", Entry::Namespace)),
            ),
            (vec![en], vec![yes], d, Ok(("default", Entry::Namespace))),
            (
                vec![en],
                vec![no],
                d,
                Err("pod label sidecar.istio.io/inject=false"),
            ),
            (
                vec![en],
                vec![],
                b,
                Err("selects the default revision, which is not among"),
            ),
            // istio-injection=disabled (or any other value) wins over everything.
            (
                vec![dis],
                vec![yes],
                db,
                Err("istio-injection=disabled: no webhook"),
            ),
            (
                vec![dis, rev("b")],
                vec![rev("b")],
                db,
                Err("istio-injection=disabled"),
            ),
            (
                vec![("istio-injection", "Enabled")],
                vec![],
                d,
                Err("istio-injection=Enabled"),
            ),
            // Namespace istio.io/rev: that revision, the pod's own label does not count.
            (vec![rev("b")], vec![], db, Ok(("b", Entry::RevNamespace))),
            (
                vec![rev("b")],
                vec![rev("default")],
                db,
                Ok(("b", Entry::RevNamespace)),
            ),
            (
                vec![rev("default")],
                vec![],
                d,
                Ok(("default", Entry::RevNamespace)),
            ),
            (
                vec![rev("b")],
                vec![],
                d,
                Err("istio.io/rev=b names no installed remora revision"),
            ),
            (
                vec![rev("b")],
                vec![no],
                db,
                Err("sidecar.istio.io/inject=false"),
            ),
            (vec![rev("b")], vec![yes], b, Ok(("b", Entry::RevNamespace))),
            // Unlabelled namespace: the pod's istio.io/rev, else its sidecar.istio.io/inject=true.
            (vec![], vec![rev("b")], db, Ok(("b", Entry::RevObject))),
            (
                vec![],
                vec![rev("default")],
                d,
                Ok(("default", Entry::RevObject)),
            ),
            (vec![], vec![rev("b"), yes], db, Ok(("b", Entry::RevObject))),
            (
                vec![],
                vec![rev("b"), no],
                db,
                Err("sidecar.istio.io/inject=false"),
            ),
            (
                vec![],
                vec![rev("c")],
                db,
                Err("pod label istio.io/rev=c names no installed"),
            ),
            (vec![], vec![yes], d, Ok(("default", Entry::Object))),
            (vec![], vec![yes], db, Ok(("default", Entry::Object))),
            (
                vec![],
                vec![yes],
                b,
                Err("pod label sidecar.istio.io/inject=true selects the default revision"),
            ),
            (
                vec![],
                vec![("sidecar.istio.io/inject", "yes")],
                d,
                Err("no webhook is called"),
            ),
            (
                vec![],
                vec![],
                db,
                Err("the namespace has no istio-injection=enabled or istio.io/rev label"),
            ),
            (
                vec![("team", "shop")],
                vec![("app", "web")],
                d,
                Err("no webhook is called"),
            ),
        ];
        for (ns, pod, installed, want) in rows {
            let got = select("shop", &l(&ns), &l(&pod), &revs(installed));
            let ctx = format!("ns {ns:?} pod {pod:?} revisions {installed:?}: {got:?}");
            match (want, &got) {
                (Ok((r, e)), Ok(s)) => {
                    assert_eq!((s.revision.as_str(), s.entry), (r, e), "{ctx}");
                    assert!(s.why().contains(&e.why(r)), "{ctx}");
                }
                (Err(words), Err(why)) => assert!(why.contains(words), "{ctx}"),
                _ => panic!("{ctx}: want {want:?}"),
            }
        }
    }

    #[test]
    fn system_namespaces_are_never_selected() {
        for ns in EXCLUDED_NAMESPACES {
            for labels in [
                &[("istio-injection", "enabled")][..],
                &[("istio.io/rev", "default")],
            ] {
                let r = select(ns, &l(labels), &l(&[]), &revs(&["default"]));
                assert!(
                    r.as_ref()
                        .is_err_and(|w| w.contains("excluded by every entry")),
                    "{ns}: {r:?}"
                );
            }
            assert!(!namespace_may_be_selected(ns, &l(&[])));
        }
    }

    /// At most one entry of all revisions matches any combination of the labels that matter.
    #[test]
    fn entries_exclude_each_other() {
        let ns_values: [&[(&str, &str)]; 6] = [
            &[],
            &[("istio-injection", "enabled")],
            &[("istio-injection", "disabled")],
            &[("istio.io/rev", "default")],
            &[("istio.io/rev", "b")],
            &[("istio-injection", "enabled"), ("istio.io/rev", "b")],
        ];
        let pod_values: [&[(&str, &str)]; 7] = [
            &[],
            &[("sidecar.istio.io/inject", "true")],
            &[("sidecar.istio.io/inject", "false")],
            &[("istio.io/rev", "default")],
            &[("istio.io/rev", "b")],
            &[("istio.io/rev", "b"), ("sidecar.istio.io/inject", "true")],
            &[("istio.io/rev", "c")],
        ];
        let all = revs(&["default", "b", "c"]);
        for ns in ns_values {
            for pod in pod_values {
                let ns_l = with_name("shop", &l(ns));
                let hits: Vec<(String, Entry)> = all
                    .iter()
                    .flat_map(|r| Entry::of_revision(r).iter().map(move |e| (r.clone(), *e)))
                    .filter(|(r, e)| {
                        e.namespace_selector(r).matches(&ns_l)
                            && e.object_selector(r).matches(&l(pod))
                    })
                    .collect();
                assert!(hits.len() <= 1, "ns {ns:?} pod {pod:?}: {hits:?}");
            }
        }
    }

    #[test]
    fn paths_round_trip_and_bad_paths_are_named() {
        for rev in ["default", "b", "1-2-0"] {
            for &e in Entry::of_revision(rev) {
                let s = Selection::from_path(&e.path(rev)).unwrap();
                assert_eq!(
                    (s.revision.as_str(), s.entry, s.source),
                    (rev, e, Source::Path)
                );
            }
        }
        assert_eq!(
            Selection::from_path("/inject").unwrap(),
            Selection::legacy()
        );
        assert_eq!(
            Selection::from_path("/inject/").unwrap(),
            Selection::legacy()
        );
        for (p, words) in [
            ("/inject/cluster/a/net/b", "not a revision's path"),
            ("/inject/rev/b", "no entry"),
            ("/inject/rev/B/rev.namespace", "revision \"B\""),
            ("/inject/rev/b/pod", "unknown entry \"pod\""),
            ("/inject/rev/b/namespace", "default revision only"),
        ] {
            let e = Selection::from_path(p).unwrap_err();
            assert!(e.contains(words) && e.contains(p), "{p}: {e}");
        }
    }

    #[test]
    fn only_a_named_revision_in_the_namespace_label_moves_it() {
        let moved: Vec<(String, Entry)> = ["default", "b"]
            .iter()
            .flat_map(|r| {
                Entry::of_revision(r)
                    .iter()
                    .map(move |e| (r.to_string(), *e))
            })
            .filter(|(r, e)| Selection::new(r, *e, Source::Path).namespace_moved())
            .collect();
        assert_eq!(moved, [("b".to_string(), Entry::RevNamespace)]);
    }

    #[test]
    fn revision_names() {
        for ok in ["default", "b", "canary", "1-2-0", "a1"] {
            assert!(check_revision(ok).is_ok(), "{ok}");
        }
        for bad in ["", "B", "-a", "a-", "a.b", "a_b", &"x".repeat(33)] {
            assert!(check_revision(bad).is_err(), "{bad}");
        }
        assert_eq!(
            revision_name(WEBHOOK_CONFIG, "default"),
            "remora-sidecar-injector"
        );
        assert_eq!(revision_name(WEBHOOK_SERVICE, "b"), "remora-webhook-b");
    }

    #[test]
    fn root_publication_namespaces() {
        for (labels, want) in [
            (&[][..], true),
            (&[("istio-injection", "enabled")][..], true),
            (&[("istio.io/rev", "b")][..], true),
            (&[("istio.io/rev", "default")][..], true),
            (&[("istio-injection", "disabled")][..], false),
            (
                &[("istio-injection", "disabled"), ("istio.io/rev", "b")][..],
                false,
            ),
        ] {
            assert_eq!(
                namespace_may_be_selected("shop", &l(labels)),
                want,
                "{labels:?}"
            );
        }
    }

    #[test]
    fn configurations_follow_istios_layout() {
        let d = mutating_webhook_configuration("default");
        let names: Vec<&str> = d["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "rev.namespace.sidecar-injector.remora.dev",
                "rev.object.sidecar-injector.remora.dev",
                "namespace.sidecar-injector.remora.dev",
                "object.sidecar-injector.remora.dev"
            ]
        );
        assert_eq!(d["metadata"]["name"], "remora-sidecar-injector");
        assert_eq!(
            d["webhooks"][0]["namespaceSelector"]["matchExpressions"][0],
            json!({"key": "istio.io/rev", "operator": "In", "values": ["default"]})
        );
        let b = mutating_webhook_configuration("b");
        assert_eq!(b["metadata"]["name"], "remora-sidecar-injector-b");
        assert_eq!(b["webhooks"].as_array().unwrap().len(), 2);
        assert_eq!(
            b["webhooks"][1]["clientConfig"]["service"],
            json!({"name": "remora-webhook-b", "namespace": "remora-system", "path": "/inject/rev/b/rev.object", "port": 443})
        );
        assert_eq!(
            b["webhooks"][1]["objectSelector"],
            json!({"matchExpressions": [
                {"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]},
                {"key": "istio.io/rev", "operator": "In", "values": ["b"]}
            ]})
        );
    }
}
