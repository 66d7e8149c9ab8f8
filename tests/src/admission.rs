//! The real `remora-webhook serve`, the lab's control plane: started in the node's network
//! namespace with a fresh CA and serving cert (rcgen) for its admission listener on 127.0.0.1,
//! its mesh CA on every address of the node (pods reach it on the bridge), backed by the lab's
//! Kubernetes API; and a client that sends it `admission.k8s.io/v1` AdmissionReviews over HTTPS
//! the way the kube-apiserver does, then applies the returned JSON patch.

use crate::netns::{Netns, Proc};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What the webhook answered for one pod.
#[derive(Debug, Clone)]
pub struct Admission {
    pub allowed: bool,
    /// The denial message when not allowed.
    pub message: String,
    /// The patched object (unchanged when the webhook returned no patch).
    pub object: serde_json::Value,
    /// The decoded JSON patch, if any.
    pub patch: Option<serde_json::Value>,
}

/// The admission listener's port inside the node's namespace (the lab's own, so always free).
pub const WEBHOOK_PORT: u16 = 15017;
/// The mesh CA's port (the install's).
pub const CA_PORT: u16 = 15012;
/// Time between the CA's root publication passes in the lab (the install's default is 60 s):
/// a namespace labelled for injection gets the root within a second.
pub const LAB_PUBLISH_INTERVAL: &str = "1s";

/// Where the lab runs the control plane.
pub struct ControlPlane<'a> {
    /// The node's namespace: `remora-webhook serve` runs there (`ip netns exec`), so its
    /// listeners are the node's.
    pub netns: &'a Netns,
    /// The Kubernetes API (`--kube-url`), reachable inside `netns`.
    pub kube_url: String,
    /// `--ca-max-cert-ttl` when set (the soak's short-lived workload certificates).
    pub ca_max_cert_ttl: Option<String>,
}

/// A running webhook (stopped on drop) and an HTTPS client trusting its CA.
pub struct Webhook {
    /// The admission listener, inside [`Webhook::netns`].
    pub addr: SocketAddr,
    /// The network namespace the webhook runs in (`/run/netns/<node>`).
    pub netns: PathBuf,
    pub proc: Proc,
    connector: TlsConnector,
    pub ca_pem: String,
    counter: std::sync::atomic::AtomicU64,
    /// `ip` and its arguments, to start the same process again (`restart`).
    argv: Vec<std::ffi::OsString>,
}

/// Only the lab's flags decide: settings of the environment the lab runs in do not.
fn clean_env(mut cmd: std::process::Command) -> std::process::Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("REMORA_CA")
            || k == "REMORA_TRUST_DOMAIN"
            || k == "REMORA_ROOT_NAMESPACE"
            || k == "REMORA_INJECT_CA_ADDRESS"
            || k == "REMORA_KUBE_URL"
            || k == "POD_NAMESPACE"
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A fresh CA and a serving certificate it signed, for 127.0.0.1 and the webhook's Service name.
pub struct IssuedCert {
    pub ca_der: Vec<u8>,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Issue a new CA named `ca_name` and a serving certificate for the lab's webhook.
pub fn issue_serving_cert(ca_name: &str) -> Result<IssuedCert> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "remora-webhook.remora-system.svc".to_string(),
    ])?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok(IssuedCert {
        ca_der: ca.der().to_vec(),
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl Webhook {
    /// Writes a CA and a serving cert for 127.0.0.1 into `dir`, starts
    /// `<bin_dir>/remora-webhook serve` in `plane.netns` with its admission listener on
    /// 127.0.0.1:[`WEBHOOK_PORT`], the mesh CA on 0.0.0.0:[`CA_PORT`] backed by
    /// `plane.kube_url`, and `--inject-ca-address` as given (`off` for `None`), and waits
    /// (bounded) until a TLS request to `/readyz` answers 200. The CA becomes ready by itself
    /// once it has stored its root through the API.
    pub async fn start(
        bin_dir: &Path,
        dir: &Path,
        config: Option<&Path>,
        inject_ca_address: Option<&str>,
        plane: &ControlPlane<'_>,
        rules_controller: bool,
    ) -> Result<Webhook> {
        let bin = bin_dir.join("remora-webhook");
        if !bin.exists() {
            bail!(
                "{} is missing: build it first (cargo build -p remora-webhook)",
                bin.display()
            );
        }
        std::fs::create_dir_all(dir)?;
        let issued = issue_serving_cert("remora lab CA")?;
        let cert_path = dir.join("tls.crt");
        let key_path = dir.join("tls.key");
        std::fs::write(&cert_path, &issued.cert_pem)?;
        std::fs::write(&key_path, &issued.key_pem)?;

        let connector = tls_connector(&issued.ca_der)?;
        let addr: SocketAddr = ([127, 0, 0, 1], WEBHOOK_PORT).into();
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", plane.netns.name()])
            .arg(&bin)
            .arg("serve")
            .args(["--ca-addr", &format!("0.0.0.0:{CA_PORT}")])
            .args(["--kube-url", &plane.kube_url])
            .args(["--ca-publish-interval", LAB_PUBLISH_INTERVAL])
            .args(["--inject-ca-address", inject_ca_address.unwrap_or("off")])
            // The lab's API stand-in serves no Services, EndpointSlices or Pods (the lab's
            // sidecars get their endpoints from the ServiceEntries the lab writes), so discovery
            // is not served here, whatever the install's default: the injected proxies get no
            // discovery address.
            .args(["--discovery", "off"])
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--tls-cert")
            .arg(&cert_path)
            .arg("--tls-key")
            .arg(&key_path);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        if rules_controller {
            cmd.args(["--rules-controller", "on", "--rules-debounce", "100ms"])
                .args(["--rules-identity", "lab-control-plane"]);
        }
        if let Some(ttl) = &plane.ca_max_cert_ttl {
            cmd.args(["--ca-max-cert-ttl", ttl]);
        }
        let argv: Vec<std::ffi::OsString> = std::iter::once(cmd.get_program().to_owned())
            .chain(cmd.get_args().map(|a| a.to_owned()))
            .collect();
        let proc = Proc::spawn("remora-webhook", clean_env(cmd), dir.join("webhook.log"))?;
        let mut hook = Webhook {
            addr,
            netns: plane.netns.path(),
            proc,
            connector,
            ca_pem: issued.ca_pem,
            counter: 0.into(),
            argv,
        };
        match hook.wait_ready(Duration::from_secs(20)).await {
            Ok(()) => Ok(hook),
            Err(e) => Err(e.context(format!("webhook log:\n{}", hook.proc.log_tail(20)))),
        }
    }

    /// Stops the process (SIGTERM, as a rollout does), keeps it down for `down`, starts the same
    /// command again (the certificate files as they are now; the mesh CA reads its root back
    /// from the API) and waits until it is ready. Returns how long it was not serving.
    pub async fn restart(&mut self, down: Duration) -> Result<Duration> {
        let stopped = Instant::now();
        self.proc.stop(Duration::from_secs(10));
        tokio::time::sleep(down).await;
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("no command to restart"))?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        self.proc = Proc::spawn("remora-webhook", clean_env(cmd), self.proc.log.clone())?;
        match self.wait_ready(Duration::from_secs(20)).await {
            Ok(()) => Ok(stopped.elapsed()),
            Err(e) => Err(e.context(format!("webhook log:\n{}", self.proc.log_tail(20)))),
        }
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.proc.exited() {
                bail!("remora-webhook exited during start-up ({st})");
            }
            match self.request("GET", "/readyz", Bytes::new()).await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) if Instant::now() >= deadline => {
                    bail!(
                        "webhook /readyz answered {code}: {}",
                        String::from_utf8_lossy(&body)
                    )
                }
                Err(e) if Instant::now() >= deadline => return Err(e.context("webhook not ready")),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// One HTTPS request on a fresh connection; returns status and body.
    pub async fn request(&self, method: &str, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        https_request(
            &self.connector,
            Some(&self.netns),
            self.addr,
            method,
            path,
            body,
        )
        .await
    }

    /// Sends `pod` (a Pod object as JSON) for CREATE in `namespace` and applies the patch.
    pub async fn admit(&self, namespace: &str, pod: &serde_json::Value) -> Result<Admission> {
        self.admit_at(namespace, pod, "/inject").await
    }

    /// [`Webhook::admit`] at `path`, the one the webhook configuration's entry calls
    /// (`/inject/rev/<revision>/<entry>`).
    pub async fn admit_at(
        &self,
        namespace: &str,
        pod: &serde_json::Value,
        path: &str,
    ) -> Result<Admission> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let uid = format!(
            "00000000-0000-4000-8000-{:012x}",
            std::process::id() as u64 * 1000 + n
        );
        let review = admission_review(&uid, namespace, pod);
        let (status, body) = self
            .request("POST", path, Bytes::from(serde_json::to_vec(&review)?))
            .await?;
        if status != 200 {
            bail!(
                "webhook answered HTTP {status} to the AdmissionReview: {}",
                String::from_utf8_lossy(&body)
            );
        }
        parse_review_response(&uid, pod, &body)
    }
}

/// A TLS client configuration that trusts only the CA `ca_der`.
pub fn tls_connector(ca_der: &[u8]) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(ca_der.to_vec()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(tls)))
}

/// A TCP connection to `addr` made inside the network namespace at `netns` (`None`: this
/// process's own), bounded to `limit`. The socket is made on a short-lived thread that joined
/// the namespace (never a pooled thread: it stays in the namespace it joined).
pub async fn connect_in(
    netns: Option<&Path>,
    addr: SocketAddr,
    limit: Duration,
) -> Result<TcpStream> {
    let Some(ns) = netns else {
        return tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connecting to {addr}"));
    };
    let ns = ns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = crate::netns::join_netns(&ns).and_then(|()| {
            let s = std::net::TcpStream::connect_timeout(&addr, limit)
                .with_context(|| format!("connecting to {addr} in {}", ns.display()))?;
            s.set_nonblocking(true)?;
            Ok(s)
        });
        let _ = tx.send(r);
    });
    let std_stream = rx
        .await
        .map_err(|_| anyhow!("the connecting thread ended"))??;
    Ok(TcpStream::from_std(std_stream)?)
}

/// One HTTPS request to the webhook at `addr` (inside the namespace `netns`, `None`: this
/// process's) on a fresh connection made with `connector` (connect and TLS handshake bounded
/// to 5 s each, the answer to 10 s); returns status and body.
pub async fn https_request(
    connector: &TlsConnector,
    netns: Option<&Path>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes)> {
    let tcp = connect_in(netns, addr, Duration::from_secs(5)).await?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake with the webhook timed out"))??;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| anyhow!("the webhook did not answer {method} {path} within 10 s"))??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The AdmissionReview the kube-apiserver sends for a CREATE of `pod` (a Pod object as JSON) in
/// `namespace`, as the ReplicaSet controller, with request uid `uid`.
pub fn admission_review(uid: &str, namespace: &str, pod: &serde_json::Value) -> serde_json::Value {
    let gvk = serde_json::json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = serde_json::json!({"group": "", "version": "v1", "resource": "pods"});
    let mut review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    // The apiserver omits `name` (omitempty) for generateName pods.
    if let Some(name) = pod.pointer("/metadata/name") {
        review["request"]["name"] = name.clone();
    }
    review
}

/// Checks an AdmissionReview response (uid echoed, patch type, base64 patch) and applies its
/// patch to `object`.
pub fn parse_review_response(
    uid: &str,
    object: &serde_json::Value,
    body: &[u8],
) -> Result<Admission> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("webhook response is not JSON")?;
    let resp = v
        .get("response")
        .ok_or_else(|| anyhow!("webhook response has no `response` field: {v}"))?;
    let got_uid = resp.get("uid").and_then(|u| u.as_str()).unwrap_or_default();
    if got_uid != uid {
        bail!("webhook response uid {got_uid:?} does not match request uid {uid:?}");
    }
    let allowed = resp
        .get("allowed")
        .and_then(|a| a.as_bool())
        .unwrap_or(false);
    let message = resp
        .pointer("/status/message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    let mut patched = object.clone();
    let mut patch_value = None;
    if let Some(p) = resp.get("patch") {
        let b64 = p
            .as_str()
            .ok_or_else(|| anyhow!("response.patch is not a base64 string: {p}"))?;
        let ptype = resp
            .get("patchType")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        if ptype != "JSONPatch" {
            bail!("response.patchType is {ptype:?}, expected \"JSONPatch\"");
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("response.patch is not valid base64")?;
        let pv: serde_json::Value = serde_json::from_slice(&raw).context("patch is not JSON")?;
        let patch: json_patch::Patch =
            serde_json::from_value(pv.clone()).context("patch is not an RFC 6902 JSON patch")?;
        json_patch::patch(&mut patched, &patch).context("the webhook's patch does not apply")?;
        patch_value = Some(pv);
    }
    Ok(Admission {
        allowed,
        message,
        object: patched,
        patch: patch_value,
    })
}

/// Where the lab finds the programs: `REMORA_BIN_DIR`, else the target profile directory this
/// executable was built into (`target/debug` for tests, the binary's own directory for the CLI).
pub fn default_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("REMORA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_base64_patch_and_checks_uid() {
        let pod = serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        let patch =
            serde_json::json!([{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
        let body = serde_json::json!({"response": {"uid": "u1", "allowed": true, "patchType": "JSONPatch", "patch": b64}});
        let a = parse_review_response("u1", &pod, body.to_string().as_bytes()).unwrap();
        assert!(a.allowed);
        assert_eq!(a.object["metadata"]["labels"]["a"], "b");
        assert!(parse_review_response("u2", &pod, body.to_string().as_bytes()).is_err());
        let numbers = serde_json::json!({"response": {"uid": "u1", "allowed": true, "patchType": "JSONPatch", "patch": [1, 2]}});
        assert!(parse_review_response("u1", &pod, numbers.to_string().as_bytes()).is_err());
    }

    #[test]
    fn denial_carries_message() {
        let body = serde_json::json!({"response": {"uid": "u", "allowed": false, "status": {"message": "bad port"}}});
        let a = parse_review_response("u", &serde_json::json!({}), body.to_string().as_bytes())
            .unwrap();
        assert!(!a.allowed);
        assert_eq!(a.message, "bad port");
    }
}
