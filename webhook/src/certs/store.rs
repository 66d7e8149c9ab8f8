//! The kube calls of the certificate manager, and nothing else: read, create and replace the
//! Secret (optimistic concurrency: a 409 is reported as a lost race, not an error), read the
//! MutatingWebhookConfiguration and the ValidatingWebhookConfiguration and JSON-patch their
//! `caBundle`s, list and watch the revision's tag configurations and patch theirs.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};

/// The events of [`Store::watch_tag_configs`].
pub type TagEvents = futures::stream::BoxStream<
    'static,
    Result<watcher::Event<MutatingWebhookConfiguration>, watcher::Error>,
>;

/// A Secret as read: its data and the version a replace must name.
#[derive(Clone, Debug)]
pub struct StoredSecret {
    pub data: BTreeMap<String, Vec<u8>>,
    pub resource_version: Option<String>,
    object: Secret,
}

impl StoredSecret {
    /// The Secret's annotation `key`, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }
}

/// The result of a write that may lose to another replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Done,
    /// 409: another writer got there first (AlreadyExists on create, Conflict on replace).
    Lost,
}

/// The Secret and the webhook configurations the manager looks after.
#[derive(Clone)]
pub struct Store {
    secrets: Api<Secret>,
    configs: Api<MutatingWebhookConfiguration>,
    validating: Api<ValidatingWebhookConfiguration>,
    pub namespace: String,
    pub secret: String,
    /// The MutatingWebhookConfiguration (sidecar injection).
    pub webhook_config: String,
    /// The ValidatingWebhookConfiguration (rules validation); empty: not managed.
    pub validating_config: String,
    /// The label selector of this revision's tag configurations (`remora-webhook manifest
    /// --tag`); `None`: tags are not managed ([`Store::with_tags_of`]).
    pub tag_selector: Option<String>,
    /// Set while the ValidatingWebhookConfiguration is known to be absent, so that is logged
    /// once, not at every check (shared by clones of this store).
    pub(crate) validating_missing: Arc<AtomicBool>,
}

impl Store {
    /// `validating_config` may be empty: then only the MutatingWebhookConfiguration is patched.
    pub fn new(
        client: Client,
        namespace: &str,
        secret: &str,
        webhook_config: &str,
        validating_config: &str,
    ) -> Store {
        Store {
            secrets: Api::namespaced(client.clone(), namespace),
            configs: Api::all(client.clone()),
            validating: Api::all(client),
            namespace: namespace.to_string(),
            secret: secret.to_string(),
            webhook_config: webhook_config.to_string(),
            validating_config: validating_config.to_string(),
            validating_missing: Arc::new(AtomicBool::new(false)),
            tag_selector: None,
        }
    }

    /// Also manage the `caBundle` of revision `revision`'s tag configurations: the
    /// MutatingWebhookConfigurations labelled with a tag and this revision
    /// (`crate::selectors::tag_configs_selector`).
    pub fn with_tags_of(mut self, revision: &str) -> Store {
        self.tag_selector = Some(crate::selectors::tag_configs_selector(revision));
        self
    }

    /// `GET` the Secret; `None` on 404.
    pub async fn read_secret(&self) -> Result<Option<StoredSecret>, kube::Error> {
        let Some(s) = self.secrets.get_opt(&self.secret).await? else {
            return Ok(None);
        };
        let data = s
            .data
            .as_ref()
            .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
            .unwrap_or_default();
        Ok(Some(StoredSecret {
            data,
            resource_version: s.metadata.resource_version.clone(),
            object: s,
        }))
    }

    /// `POST` a new Secret of type `kubernetes.io/tls`; `Lost` on 409 AlreadyExists.
    pub async fn create_secret(
        &self,
        data: BTreeMap<String, Vec<u8>>,
    ) -> Result<Write, kube::Error> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.secret.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(
                    [
                        ("app.kubernetes.io/name", "remora-webhook"),
                        ("app.kubernetes.io/part-of", "remora"),
                        ("app.kubernetes.io/managed-by", "remora-webhook"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_string()),
            data: Some(to_bytes(data)),
            ..Secret::default()
        };
        lost_on_conflict(self.secrets.create(&PostParams::default(), &secret).await)
    }

    /// `PUT` the Secret with new data, naming the resourceVersion it was read at (labels,
    /// annotations and type are kept); `Lost` on 409 Conflict.
    pub async fn replace_secret(
        &self,
        prev: &StoredSecret,
        data: BTreeMap<String, Vec<u8>>,
    ) -> Result<Write, kube::Error> {
        let mut next = prev.object.clone();
        next.metadata.managed_fields = None;
        next.metadata.resource_version = prev.resource_version.clone();
        next.data = Some(to_bytes(data));
        next.string_data = None;
        if next.type_.is_none() {
            next.type_ = Some("kubernetes.io/tls".to_string());
        }
        lost_on_conflict(
            self.secrets
                .replace(&self.secret, &PostParams::default(), &next)
                .await,
        )
    }

    /// `GET` the MutatingWebhookConfiguration; `None` on 404.
    pub async fn read_webhook_config(
        &self,
    ) -> Result<Option<MutatingWebhookConfiguration>, kube::Error> {
        self.configs.get_opt(&self.webhook_config).await
    }

    /// `PATCH` (RFC 6902 JSON patch) the MutatingWebhookConfiguration.
    pub async fn patch_webhook_config(&self, patch: json_patch::Patch) -> Result<(), kube::Error> {
        self.configs
            .patch(
                &self.webhook_config,
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await
            .map(|_| ())
    }

    /// `LIST` the MutatingWebhookConfigurations matching `selector` (at most `limit`; the
    /// answer says whether there were more).
    pub async fn list_configs(
        &self,
        selector: &str,
        limit: u32,
    ) -> Result<(Vec<MutatingWebhookConfiguration>, bool), kube::Error> {
        let list = self
            .configs
            .list(&ListParams::default().labels(selector).limit(limit))
            .await?;
        let more = list
            .metadata
            .continue_
            .as_deref()
            .is_some_and(|c| !c.is_empty());
        Ok((list.items, more))
    }

    /// A watch of the revision's tag configurations (with a backoff on errors), when tags are
    /// managed.
    pub fn watch_tag_configs(&self) -> Option<TagEvents> {
        use kube::runtime::WatchStreamExt;
        let selector = self.tag_selector.as_ref()?;
        let cfg = watcher::Config::default().labels(selector);
        Some(watcher(self.configs.clone(), cfg).default_backoff().boxed())
    }

    /// `PATCH` (RFC 6902 JSON patch) the MutatingWebhookConfiguration `name`.
    pub async fn patch_config(
        &self,
        name: &str,
        patch: json_patch::Patch,
    ) -> Result<(), kube::Error> {
        self.configs
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .map(|_| ())
    }

    /// `GET` the ValidatingWebhookConfiguration; `None` on 404.
    pub async fn read_validating_config(
        &self,
    ) -> Result<Option<ValidatingWebhookConfiguration>, kube::Error> {
        self.validating.get_opt(&self.validating_config).await
    }

    /// `PATCH` (RFC 6902 JSON patch) the ValidatingWebhookConfiguration.
    pub async fn patch_validating_config(
        &self,
        patch: json_patch::Patch,
    ) -> Result<(), kube::Error> {
        self.validating
            .patch(
                &self.validating_config,
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await
            .map(|_| ())
    }
}

fn to_bytes(data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, ByteString> {
    data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()
}

pub(crate) fn lost_on_conflict<T>(r: Result<T, kube::Error>) -> Result<Write, kube::Error> {
    match r {
        Ok(_) => Ok(Write::Done),
        Err(kube::Error::Api(s))
            if s.code == 409 || s.reason == "AlreadyExists" || s.reason == "Conflict" =>
        {
            Ok(Write::Lost)
        }
        Err(e) => Err(e),
    }
}
