//! The mesh CA: workload identity certificates, Istio-compatible (the sidecar's side is
//! `remora-proxy`'s `identity` module).
//!
//! `remora-webhook serve` runs it on its own TLS port (`--ca-addr`, default `0.0.0.0:15012`):
//! Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate` over gRPC ([`grpc`]). A
//! caller sends a CSR with `authorization: Bearer <projected service-account token>`; the token
//! is checked by the API server with a TokenReview for the CA's audience ([`authn`]), and the
//! CSR is signed only for that service account's SPIFFE identity ([`sign`], pure rules).
//!
//! The root of trust ([`root`]): the user's plug-in CA in Secret `cacerts` (Istio's format)
//! when present, else a root generated on first start and kept in Secret `remora-ca`, created
//! race-safely (create; on 409 read the winner's), so every replica signs with the same root.
//! [`publish`] writes the root into ConfigMap `remora-ca-root-cert` of every meshed namespace.
//!
//! Root rotation: before every publication pass the root Secrets are read again; when their data
//! changed and the new CA loads (a `root-cert.pem` bundle of the old and the new root, then the
//! new signing CA, then the new root alone: Istio's procedure for plug-in CAs), it replaces the
//! one in use — new certificates, the serving certificate and the published roots follow — and a
//! Secret that does not load leaves the current CA in place, with the reason in the log.

pub mod authn;
pub mod authority;
pub mod client_auth;
pub mod grpc;
pub mod publish;
pub mod root;
pub mod sign;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::certs::store::{lost_on_conflict, Write};
use authority::Origin;

/// The plug-in CA Secret's name (Istio's).
pub const PLUGIN_SECRET: &str = "cacerts";

/// Settings of the CA.
#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    pub trust_domain: String,
    /// Audience the callers' tokens must be issued for.
    pub audience: String,
    /// Longest certificate lifetime issued (and the default one, when shorter than 24 h).
    pub max_ttl: Duration,
    /// Namespace of the root Secret, the plug-in Secret and the CA's Service.
    pub namespace: String,
    /// The generated root's Secret.
    pub secret: String,
    /// The CA's Service name: its serving certificate names `<service>.<namespace>.svc` etc.
    pub service: String,
    /// Time between root publication passes.
    pub publish_interval: Duration,
    /// A generated root is renewed when less than this fraction of its lifetime is left.
    pub root_renew_when_left: f64,
    /// Connections the listener holds open at once (certificate callers and discovery
    /// subscribers, one each); more are closed at accept.
    pub max_connections: usize,
}

/// Lifetime of a certificate when the request names none (capped by `max_ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Bounds of `--ca-max-cert-ttl`.
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
/// The CA's own serving certificate: lifetime and re-issue interval.
const SERVING_TTL: Duration = Duration::from_secs(7 * 86_400);
const SERVING_RENEW: Duration = Duration::from_secs(86_400);

impl Options {
    /// Checks every setting; the error is one line naming the flag, the value and the reason.
    pub fn validate(&self) -> Result<(), String> {
        let td = &self.trust_domain;
        crate::values::check_trust_domain(td)
            .map_err(|why| format!("--trust-domain {td:?}: {why}"))?;
        let aud = &self.audience;
        crate::values::check_audience(aud)
            .map_err(|why| format!("--ca-token-audience {aud:?}: {why}"))?;
        if self.max_ttl < MIN_TTL || self.max_ttl > MAX_TTL {
            return Err(format!(
                "--ca-max-cert-ttl {}: must be between {} and {}",
                crate::certs::issue::fmt_duration(self.max_ttl),
                crate::certs::issue::fmt_duration(MIN_TTL),
                crate::certs::issue::fmt_duration(MAX_TTL)
            ));
        }
        for (flag, v) in [
            ("--ca-secret-namespace", &self.namespace),
            ("--ca-secret-name", &self.secret),
            ("--ca-service", &self.service),
        ] {
            if v.is_empty()
                || v.len() > 63
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                || v.starts_with('-')
                || v.ends_with('-')
            {
                return Err(format!(
                    "{flag} {v:?}: must be a DNS label (lowercase letters, digits, '-', at most 63)"
                ));
            }
        }
        let left = self.root_renew_when_left;
        if !(left > 0.0 && left < 1.0) {
            return Err(format!(
                "--ca-root-renew-when-left {left}: must be a fraction between 0 and 1 (e.g. 0.2)"
            ));
        }
        if self.secret == PLUGIN_SECRET {
            return Err(format!(
                "--ca-secret-name {PLUGIN_SECRET}: that name is the plug-in CA Secret; pick another"
            ));
        }
        Ok(())
    }

    /// The signing policy.
    pub fn policy(&self) -> sign::Policy {
        sign::Policy {
            trust_domain: self.trust_domain.clone(),
            max_ttl: self.max_ttl,
            default_ttl: DEFAULT_TTL.min(self.max_ttl),
        }
    }

    /// DNS names of the CA's serving certificate.
    pub fn dns_names(&self) -> Vec<String> {
        let (s, n) = (&self.service, &self.namespace);
        vec![
            format!("{s}.{n}.svc"),
            s.clone(),
            format!("{s}.{n}"),
            format!("{s}.{n}.svc.cluster.local"),
        ]
    }
}

/// Prometheus metrics of the CA, in the process's default registry.
pub mod metrics {
    use std::sync::LazyLock;

    use prometheus::{
        register_histogram, register_int_counter, register_int_counter_vec, Histogram, IntCounter,
        IntCounterVec,
    };

    use super::sign::Reason;

    static ISSUED: LazyLock<Option<IntCounter>> = LazyLock::new(|| {
        register_int_counter!(
            "remora_ca_certificates_issued_total",
            "Workload certificates issued by the mesh CA."
        )
        .ok()
    });

    static REFUSED: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
        register_int_counter_vec!(
            "remora_ca_requests_refused_total",
            "Certificate requests refused by the mesh CA, by reason.",
            &["reason"]
        )
        .ok()
    });

    static SIGN: LazyLock<Option<Histogram>> = LazyLock::new(|| {
        register_histogram!(
            "remora_ca_sign_seconds",
            "Time to check a CSR and sign its certificate (not the TokenReview).",
            vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]
        )
        .ok()
    });

    /// Registers every family, with each refusal reason at 0.
    pub fn init() {
        LazyLock::force(&ISSUED);
        LazyLock::force(&SIGN);
        if let Some(r) = REFUSED.as_ref() {
            for reason in Reason::ALL {
                r.with_label_values(&[reason.label()]);
            }
        }
    }

    pub fn issued(seconds: f64) {
        if let Some(c) = ISSUED.as_ref() {
            c.inc();
        }
        if let Some(h) = SIGN.as_ref() {
            h.observe(seconds);
        }
    }

    pub fn refused(reason: Reason) {
        if let Some(c) = REFUSED.as_ref() {
            c.with_label_values(&[reason.label()]).inc();
        }
    }
}

/// The signing CA in use, shared by the service, the publisher and the serving certificate;
/// replaced as a whole when the root Secret changes.
#[derive(Clone, Debug)]
pub struct Current(Arc<RwLock<Arc<authority::Authority>>>);

impl Current {
    pub fn new(a: authority::Authority) -> Current {
        Current(Arc::new(RwLock::new(Arc::new(a))))
    }

    pub fn get(&self) -> Arc<authority::Authority> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, a: Arc<authority::Authority>) {
        match self.0.write() {
            Ok(mut g) => *g = a,
            Err(p) => *p.into_inner() = a,
        }
    }
}

/// The data of the Secret that decides the CA now: `cacerts` when it exists, else the
/// generated root's Secret; `None` when neither exists.
async fn secret_in_force(client: &Client, opts: &Options) -> Result<Loaded, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let ns = &opts.namespace;
    for (name, origin) in [
        (
            PLUGIN_SECRET,
            Origin::PlugIn(format!("{ns}/{PLUGIN_SECRET}")),
        ),
        (
            opts.secret.as_str(),
            Origin::Generated(format!("{ns}/{}", opts.secret)),
        ),
    ] {
        match secrets.get_opt(name).await {
            Ok(Some(s)) => return Ok(Some((origin, data_of(&s)))),
            Ok(None) => {}
            Err(e) => return Err(format!("reading Secret {ns}/{name}: {e}")),
        }
    }
    Ok(None)
}

/// The origin and data of the Secret a CA was loaded from; `None`: no Secret.
pub type Loaded = Option<(Origin, BTreeMap<String, Vec<u8>>)>;

/// What a reload pass concluded (pure, for the log and the tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The Secret's data is what is in use.
    Unchanged,
    /// A new CA replaced the one in use.
    Replaced,
    /// The Secret changed but does not load (or is gone): the current CA stays.
    Kept(String),
}

/// Reads the Secret in force and replaces `current` when its data changed (against `last`, the
/// data in use) and loads. Logs what it decided.
pub async fn reload(
    client: &Client,
    opts: &Options,
    current: &Current,
    last: &mut Loaded,
) -> Reload {
    let found = match secret_in_force(client, opts).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "mesh CA: could not re-read the root Secret; keeping the current CA");
            return Reload::Kept(e);
        }
    };
    if found.is_none() && last.is_none() {
        return Reload::Unchanged;
    }
    if found == *last {
        return Reload::Unchanged;
    }
    let Some((origin, data)) = found else {
        let why = "neither Secret exists any more".to_string();
        tracing::warn!(reason = %why, "mesh CA: the root Secret is gone; keeping the current CA (it is not generated again while running)");
        *last = None;
        return Reload::Kept(why);
    };
    match root::load(&data, origin.clone(), OffsetDateTime::now_utc()) {
        Ok(a) => {
            let before = current.get();
            tracing::info!(origin = %a.origin, roots = a.roots, ca_valid_until = %crate::certs::issue::fmt_time(a.ca_not_after),
                root_changed = (a.root_pem != before.root_pem), signing_ca_changed = (a.intermediates != before.intermediates || a.root_der != before.root_der),
                dropped = ?a.dropped,
                "mesh CA: the root Secret changed ({origin}); now signing with it and trusting {} root(s)", a.roots);
            current.set(Arc::new(a));
            *last = Some((origin, data));
            Reload::Replaced
        }
        Err(e) => {
            tracing::error!(error = %e, origin = %origin,
                "mesh CA: the root Secret changed but does not hold a usable CA; keeping the current one");
            *last = Some((origin, data));
            Reload::Kept(e)
        }
    }
}

/// Renews the generated root when the one in use (`loaded`) is due (`root::renewal_due`): reads
/// its Secret again (the plug-in Secret, when it appeared, wins and nothing is renewed), writes
/// the renewed root over it with the resourceVersion read (a replica that renewed it first wins
/// the race; this one reads the winner's at the next reload). The next reload takes it.
async fn renew_if_due(client: &Client, opts: &Options, loaded: &Loaded) {
    let Some((Origin::Generated(id), in_use)) = loaded else {
        return;
    };
    let now = OffsetDateTime::now_utc();
    let why = match root::renewal_due(in_use, now, opts.root_renew_when_left) {
        Ok(Some(why)) => why,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, secret = %id, "mesh CA: cannot tell whether the generated root is due for renewal");
            return;
        }
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    match secrets.get_opt(PLUGIN_SECRET).await {
        Ok(None) => {}
        Ok(Some(_)) => return,
        Err(e) => {
            tracing::warn!(error = %e, "mesh CA: renewing the generated root: cannot read the plug-in Secret; not renewing now");
            return;
        }
    }
    let mut secret = match secrets.get_opt(&opts.secret).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, secret = %id, "mesh CA: renewing the generated root: cannot read its Secret; not renewing now");
            return;
        }
    };
    let data = data_of(&secret);
    if data != *in_use {
        // Changed since it was loaded (another replica renewed it): the reload takes that.
        return;
    }
    let renewed = match root::renew(&data, now, root::ROOT_VALIDITY)
        .and_then(|r| root::load(&r, Origin::Generated(id.clone()), now).map(|a| (r, a)))
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, secret = %id, "mesh CA: the generated root is due for renewal but renewing it failed; keeping it");
            return;
        }
    };
    let (renewed, a) = renewed;
    secret.data = Some(
        renewed
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
            .collect(),
    );
    match lost_on_conflict(
        secrets
            .replace(&opts.secret, &PostParams::default(), &secret)
            .await,
    ) {
        Ok(Write::Done) => tracing::info!(secret = %id, reason = %why,
            root_valid_until = %crate::certs::issue::fmt_time(a.ca_not_after),
            "mesh CA: renewed the generated root (same key and subject); the old and the new root are published and trusted together until the old one expires"),
        Ok(Write::Lost) => tracing::info!(secret = %id,
            "mesh CA: another replica renewed the generated root first (409); taking theirs"),
        Err(e) => tracing::warn!(error = %e, secret = %id,
            "mesh CA: writing the renewed root failed; retrying at the next pass"),
    }
}

/// At most this many read-decide-write rounds when settling the root (each lost race costs one).
const ROUNDS: usize = 4;

fn data_of(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default()
}

/// Settles the root of trust: the plug-in `cacerts` Secret when it exists (it wins), else the
/// generated root in `opts.secret`, generated and created now when missing (a lost create
/// race reads the winner's). A Secret that exists but does not hold a usable CA is an error,
/// never overwritten.
/// The Secret's origin and data are returned with the CA (what `reload` compares against).
pub async fn load_authority(
    client: &Client,
    opts: &Options,
) -> anyhow::Result<(authority::Authority, Loaded)> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let ns = &opts.namespace;
    let plug_id = format!("{ns}/{PLUGIN_SECRET}");
    let own_id = format!("{ns}/{}", opts.secret);
    for _ in 0..ROUNDS {
        let now = OffsetDateTime::now_utc();
        if let Some(s) = secrets
            .get_opt(PLUGIN_SECRET)
            .await
            .map_err(|e| anyhow::anyhow!("reading Secret {plug_id}: {e}"))?
        {
            let data = data_of(&s);
            let a = root::load(&data, Origin::PlugIn(plug_id.clone()), now)
                .map_err(|e| anyhow::anyhow!("plug-in CA Secret {plug_id}: {e}"))?;
            tracing::info!(secret = %plug_id, ca_valid_until = %crate::certs::issue::fmt_time(a.ca_not_after),
                intermediates = a.intermediates.len(),
                "mesh CA: using the plug-in CA from Secret {plug_id} (it wins over a generated root in {own_id})");
            return Ok((a, Some((Origin::PlugIn(plug_id), data))));
        }
        if let Some(s) = secrets
            .get_opt(&opts.secret)
            .await
            .map_err(|e| anyhow::anyhow!("reading Secret {own_id}: {e}"))?
        {
            let data = data_of(&s);
            let a = root::load(&data, Origin::Generated(own_id.clone()), now).map_err(|e| {
                anyhow::anyhow!("root Secret {own_id}: {e} (not overwritten: fix or delete it)")
            })?;
            tracing::info!(secret = %own_id, root_valid_until = %crate::certs::issue::fmt_time(a.ca_not_after),
                "mesh CA: using the root in Secret {own_id}");
            return Ok((a, Some((Origin::Generated(own_id), data))));
        }
        let data = root::generate(now, root::ROOT_VALIDITY, &opts.trust_domain)
            .map_err(|e| anyhow::anyhow!("mesh CA: {e}"))?;
        let a = root::load(&data, Origin::Generated(own_id.clone()), now)
            .map_err(|e| anyhow::anyhow!("mesh CA: the generated root is unusable: {e}"))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(opts.secret.clone()),
                namespace: Some(ns.clone()),
                labels: Some(
                    [
                        ("app.kubernetes.io/name", "remora-ca"),
                        ("app.kubernetes.io/part-of", "remora"),
                        ("app.kubernetes.io/managed-by", "remora-webhook"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Secret::default()
        };
        match lost_on_conflict(secrets.create(&PostParams::default(), &secret).await)
            .map_err(|e| anyhow::anyhow!("creating Secret {own_id}: {e}"))?
        {
            Write::Done => {
                tracing::info!(secret = %own_id, root_valid_until = %crate::certs::issue::fmt_time(a.ca_not_after),
                    "mesh CA: no root yet: generated an ECDSA P-256 root and stored it in Secret {own_id}");
                return Ok((a, Some((Origin::Generated(own_id), data))));
            }
            Write::Lost => {
                tracing::info!(secret = %own_id,
                    "mesh CA: lost the create race (409) for Secret {own_id}; reading the winner's root");
            }
        }
    }
    Err(anyhow::anyhow!(
        "Secret {own_id}: still losing create races after {ROUNDS} rounds"
    ))
}

/// The running CA.
pub struct Running {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Running {
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `opts.addr` now (a bad address is an error here), then in the background: settles the
/// root (retrying with backoff while the API server or the Secret is not usable), publishes it,
/// and serves. Requests are accepted only once the root is loaded.
pub async fn start(client: Client, opts: Options) -> anyhow::Result<Running> {
    start_with(client, opts, None).await
}

/// [`start`], also serving `extra` (another gRPC service, e.g. discovery) on the listener.
pub async fn start_with(
    client: Client,
    opts: Options,
    extra: Option<Arc<dyn grpc::Extra>>,
) -> anyhow::Result<Running> {
    opts.validate().map_err(|e| anyhow::anyhow!(e))?;
    metrics::init();
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| anyhow::anyhow!("--ca-addr {}: cannot listen: {e}", opts.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(addr = %addr, trust_domain = %opts.trust_domain, audience = %opts.audience,
        max_cert_ttl = %crate::certs::issue::fmt_duration(opts.max_ttl),
        "mesh CA listening on {addr}; loading the root of trust");
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        let (authority, mut loaded) = loop {
            match load_authority(&client, &opts).await {
                Ok((a, l)) => break (Current::new(a), l),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in_seconds = backoff.as_secs(),
                        "mesh CA: root of trust not loaded; not serving yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        let names = opts.dns_names();
        let resolver = match serving_key(&authority.get(), &names) {
            Ok(k) => crate::tls::CertResolver::from_pair(k),
            Err(e) => {
                tracing::error!(error = %e, "mesh CA: cannot issue its own serving certificate; not serving");
                return;
            }
        };
        // Client certificates are asked for (optional) when another method (discovery) uses
        // them; certificate requests authenticate with the token only.
        let clients = extra.as_ref().map(|_| {
            Arc::new(client_auth::MeshClientVerifier::new(authority.clone()))
                as Arc<dyn rustls::server::danger::ClientCertVerifier>
        });
        let tls = match grpc::tls_config(resolver.clone(), clients) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "mesh CA: TLS config; not serving");
                return;
            }
        };
        // Re-issue the serving certificate well before it expires.
        let reissue = {
            let (current, names, resolver) = (authority.clone(), names.clone(), resolver.clone());
            move || match serving_key(&current.get(), &names) {
                Ok(k) => {
                    resolver.set(k);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mesh CA: serving certificate renewal failed; keeping the current one")
                }
            }
        };
        let renew = tokio::spawn({
            let reissue = reissue.clone();
            async move {
                loop {
                    tokio::time::sleep(SERVING_RENEW).await;
                    reissue();
                }
            }
        });
        // Publish the roots, then every interval: re-read the root Secret (a rotation replaces
        // the CA and its serving certificate) and publish again.
        let publisher = tokio::spawn({
            let (client, current, opts) = (client.clone(), authority.clone(), opts.clone());
            async move {
                loop {
                    publish::pass_and_log(&client, &current.get().root_pem).await;
                    tokio::time::sleep(opts.publish_interval).await;
                    renew_if_due(&client, &opts, &loaded).await;
                    if reload(&client, &opts, &current, &mut loaded).await == Reload::Replaced {
                        reissue();
                    }
                }
            }
        });
        let authn = authn::Authenticator::new(client, &opts.audience, Duration::from_secs(10));
        let limits = grpc::Limits {
            max_connections: opts.max_connections,
            ..grpc::Limits::default()
        };
        let ca = Arc::new(grpc::Ca::new(
            authority.clone(),
            authn,
            opts.policy(),
            limits.clone(),
        ));
        let mut service = grpc::CaService::new(ca);
        if let Some(x) = extra {
            tracing::info!(addr = %addr, path = x.path(), "serving {} on {addr} too", x.path());
            service = service.with_extra(x);
        }
        tracing::info!(addr = %addr, origin = %authority.get().origin, server_name = %names[0],
            "mesh CA serving istio.v1.auth.IstioCertificateService on {addr}");
        // Aborting this task drops the guards, which end the helpers.
        let _guards = (AbortOnDrop(renew), AbortOnDrop(publisher));
        grpc::serve(listener, tls, service, limits).await;
    });
    Ok(Running { addr, task })
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn serving_key(
    a: &authority::Authority,
    names: &[String],
) -> Result<rustls::sign::CertifiedKey, String> {
    let (chain, key) = sign::serving(a, names, SERVING_TTL, OffsetDateTime::now_utc())?;
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    rustls::sign::CertifiedKey::from_der(chain, key_der, &rustls::crypto::ring::default_provider())
        .map_err(|e| format!("serving key: {e}"))
}
