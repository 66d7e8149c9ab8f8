//! The only part of the user CLI that talks to the cluster: building a `kube::Client` like
//! kubectl (kubeconfig, context, server override) and GETs by API path, read into
//! k8s-openapi's typed objects ([`Cluster::get_opt_as`], [`Cluster::list_as`]) or, where the
//! injector must see an object exactly as the API server sent it, raw JSON ([`Cluster::get_opt`],
//! [`Cluster::list`]). Everything else in the CLI is pure functions over what these return.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How to reach the cluster.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Overrides the cluster URL. Without `--kubeconfig`/`--context` no credentials are sent
    /// (the kubeconfig's user is for its own cluster, not an arbitrary URL).
    pub server: Option<String>,
    /// PEM file of the CA that signed the API server's certificate (replaces the kubeconfig's).
    pub certificate_authority: Option<PathBuf>,
    /// Do not verify the API server's certificate (kubectl's `--insecure-skip-tls-verify`).
    pub insecure_skip_tls_verify: bool,
}

/// A GET that did not return an object.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("{path}: HTTP {code}: {message}")]
    Status {
        path: String,
        code: u16,
        message: String,
    },
    #[error("{path}: {message}")]
    Other { path: String, message: String },
}

impl GetError {
    pub fn code(&self) -> Option<u16> {
        match self {
            GetError::NotFound { .. } => Some(404),
            GetError::Status { code, .. } => Some(*code),
            GetError::Other { .. } => None,
        }
    }
}

/// A connected client and the namespace to use when `-n` is not given.
pub struct Cluster {
    pub client: kube::Client,
    /// The same, without kube's retries of 429/503/504: for port-forwards and `--admin`, where
    /// a failure means the proxy is unreachable and retrying only delays the answer.
    pub once: kube::Client,
    pub default_namespace: String,
    pub url: String,
}

/// Builds the client: `--kubeconfig FILE` (with `--context`), else `--context` in the default
/// kubeconfig, else `--server` alone, else `kube::Config::infer()` (KUBECONFIG, ~/.kube/config,
/// in-cluster).
pub async fn connect(opts: &ConnectOptions) -> anyhow::Result<Cluster> {
    let kc_opts = kube::config::KubeConfigOptions {
        context: opts.context.clone(),
        ..Default::default()
    };
    let mut cfg = if let Some(path) = &opts.kubeconfig {
        let kc = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| anyhow!("--kubeconfig {}: cannot read: {e}", path.display()))?;
        kube::Config::from_custom_kubeconfig(kc, &kc_opts)
            .await
            .map_err(|e| anyhow!("--kubeconfig {}: unusable: {e}", path.display()))?
    } else if opts.context.is_some() {
        kube::Config::from_kubeconfig(&kc_opts)
            .await
            .map_err(|e| anyhow!("--context: cannot use it with the default kubeconfig: {e}"))?
    } else if let Some(server) = &opts.server {
        kube::Config::new(parse_server(server)?)
    } else {
        kube::Config::infer().await.map_err(|e| {
            anyhow!("no cluster configured (KUBECONFIG, ~/.kube/config, in-cluster service account): {e}; use --kubeconfig or --server")
        })?
    };
    if let Some(server) = &opts.server {
        cfg.cluster_url = parse_server(server)?;
    }
    if let Some(ca) = &opts.certificate_authority {
        cfg.root_cert = Some(read_ca(ca)?);
    }
    if opts.insecure_skip_tls_verify {
        cfg.accept_invalid_certs = true;
    }
    cfg.connect_timeout = Some(Duration::from_secs(10));
    cfg.read_timeout = Some(Duration::from_secs(30));
    let url = cfg.cluster_url.to_string();
    let default_namespace = cfg.default_namespace.clone();
    let mut once_cfg = cfg.clone();
    once_cfg.default_retry = false;
    let client =
        kube::Client::try_from(cfg).map_err(|e| anyhow!("building the Kubernetes client: {e}"))?;
    let once = kube::Client::try_from(once_cfg)
        .map_err(|e| anyhow!("building the Kubernetes client: {e}"))?;
    Ok(Cluster {
        client,
        once,
        default_namespace,
        url,
    })
}

/// The DER certificates of a PEM file, at least one.
fn read_ca(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            anyhow!(
                "--certificate-authority {}: cannot read: {e}",
                path.display()
            )
        })?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            anyhow!(
                "--certificate-authority {}: invalid PEM: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(anyhow!(
            "--certificate-authority {}: no CERTIFICATE block in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn parse_server(s: &str) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| anyhow!("--server: invalid value {s:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => Ok(uri),
        _ => Err(anyhow!(
            "--server: invalid value {s:?}: must be an http:// or https:// URL with a host"
        )),
    }
}

/// Percent-encodes a query value (label selectors contain `=`, `,`, `!`, spaces, parentheses).
pub fn encode_query(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Cluster {
    /// GETs `path` (with query) and parses the JSON body.
    pub async fn get(&self, path: &str) -> Result<Value, GetError> {
        let text = self.get_text(path).await?;
        serde_json::from_str(&text).map_err(|e| GetError::Other {
            path: path.to_string(),
            message: format!("response is not JSON: {e}"),
        })
    }

    /// GETs `path` and returns the body as text.
    pub async fn get_text(&self, path: &str) -> Result<String, GetError> {
        self.get_text_with(&self.client, path).await
    }

    /// GETs `path` once (no retries) and returns the body as text (the proxy's own bytes).
    pub async fn get_text_once(&self, path: &str) -> Result<String, GetError> {
        self.get_text_with(&self.once, path).await
    }

    async fn get_text_with(&self, client: &kube::Client, path: &str) -> Result<String, GetError> {
        let req = http::Request::get(path)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| GetError::Other {
                path: path.to_string(),
                message: format!("invalid request path: {e}"),
            })?;
        match client.request_text(req).await {
            Ok(t) => Ok(t),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(GetError::NotFound {
                path: path.to_string(),
            }),
            Err(kube::Error::Api(s)) => Err(GetError::Status {
                path: path.to_string(),
                code: s.code,
                message: one_line(&s.message),
            }),
            Err(e) => Err(GetError::Other {
                path: path.to_string(),
                message: one_line(&e.to_string()),
            }),
        }
    }

    /// A proxy's `/config_dump` at `path` of a client pointed at its admin port (`--admin`), once,
    /// within `timeout`. The error is one line: what went wrong, as `proxy-config` prints it.
    pub async fn config_dump_at(&self, path: &str, timeout: Duration) -> Result<Value, String> {
        match tokio::time::timeout(timeout, self.get_text_once(path)).await {
            Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
            Ok(Err(GetError::Status { code, message, .. })) => {
                Err(format!("HTTP {code}: {message}"))
            }
            Ok(Err(GetError::NotFound { .. })) => {
                Err("HTTP 404: no /config_dump there (the pod is gone, or the port is not the proxy's admin port)".to_string())
            }
            Ok(Err(GetError::Other { message, .. })) => Err(message),
            Ok(Ok(text)) => {
                serde_json::from_str::<Value>(&text).map_err(|e| format!("answer is not JSON: {e}"))
            }
        }
    }

    /// The `/config_dump` of the proxy of pod `ns/name`, read from its admin `port` through a
    /// port-forward (the API server's `pods/portforward`, what `kubectl port-forward` uses; the
    /// kubelet connects to `localhost:PORT` inside the pod, the only peer the admin port gives
    /// `/config_dump` to), once, within `timeout`. The error is one line: what went wrong, as
    /// `proxy-status` and `proxy-config` print it.
    pub async fn pod_config_dump(
        &self,
        ns: &str,
        name: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Value, String> {
        let (status, body) = tokio::time::timeout(
            timeout,
            admin_get_forwarded(&self.once, ns, name, port, "/config_dump"),
        )
        .await
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))??;
        match status {
            200 => serde_json::from_slice::<Value>(&body)
                .map_err(|e| format!("answer is not JSON: {e}")),
            404 => Err(format!(
                "HTTP 404: no /config_dump there (port {port} is not the proxy's admin port)"
            )),
            code => Err(format!(
                "HTTP {code}: {}",
                one_line(String::from_utf8_lossy(&body).lines().next().unwrap_or(""))
            )),
        }
    }

    /// GETs an object that may be absent: `Ok(None)` on 404.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Value>, GetError> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(GetError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GETs an object that may be absent (`Ok(None)` on 404) as the typed `K`.
    pub async fn get_opt_as<K>(&self, path: &str) -> Result<Option<K>, GetError>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        match self.get_opt(path).await? {
            Some(v) => typed(v, path, None).map(Some),
            None => Ok(None),
        }
    }

    /// GETs a `*List` and returns its `items` as the typed `K`.
    pub async fn list_as<K>(&self, path: &str) -> Result<Vec<K>, GetError>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        self.list(path)
            .await?
            .into_iter()
            .enumerate()
            .map(|(i, v)| typed(v, path, Some(i)))
            .collect()
    }

    /// GETs a `*List` and returns its `items`.
    pub async fn list(&self, path: &str) -> Result<Vec<Value>, GetError> {
        let v = self.get(path).await?;
        match v.get("items") {
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(Value::Null) | None => Ok(Vec::new()),
            Some(_) => Err(GetError::Other {
                path: path.to_string(),
                message: "items is not a list".into(),
            }),
        }
    }
}

/// Reads `v` (the object at `path`, or its list's item `item`) as the typed `K`.
pub fn typed<K>(v: Value, path: &str, item: Option<usize>) -> Result<K, GetError>
where
    K: k8s_openapi::Resource + DeserializeOwned,
{
    serde_json::from_value(v).map_err(|e| GetError::Other {
        path: path.to_string(),
        message: match item {
            Some(i) => format!("items[{i}] is not a valid {}: {e}", K::KIND),
            None => format!("response is not a valid {}: {e}", K::KIND),
        },
    })
}

/// `GET path` on `port` of pod `ns/name` through a port-forward: the status and body, or one
/// line saying what failed (the API server's refusal, the kubelet's error, the connection).
async fn admin_get_forwarded(
    client: &kube::Client,
    ns: &str,
    name: &str,
    port: u16,
    path: &str,
) -> Result<(u16, bytes::Bytes), String> {
    use futures::FutureExt;
    use http_body_util::BodyExt;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), ns);
    let mut forward = pods.portforward(name, &[port]).await.map_err(|e| match e {
        kube::Error::Api(s) => format!(
            "port-forward refused: HTTP {}: {}",
            s.code,
            one_line(&s.message)
        ),
        e => format!("port-forward failed: {}", one_line(&e.to_string())),
    })?;
    let (Some(stream), Some(kubelet_error)) = (forward.take_stream(port), forward.take_error(port))
    else {
        forward.abort();
        return Err(format!("port-forward failed: no stream for port {port}"));
    };
    let exchange = async {
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP over the port-forward: {e}"))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, format!("localhost:{port}"))
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| format!("invalid request path {path:?}: {e}"))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP over the port-forward: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("HTTP over the port-forward: reading the answer: {e}"))?
            .to_bytes();
        conn.abort();
        Ok::<_, String>((status, body))
    };
    tokio::pin!(exchange);
    let mut kubelet_error = kubelet_error.fuse();
    let mut kubelet_done = false;
    let kubelet = |e: &str| format!("the kubelet could not forward port {port}: {}", one_line(e));
    // The kubelet's error (it could not connect to the port) comes just before it closes the
    // stream; it says more than the closed stream, so it is looked at first, and waited for a
    // moment when the stream closed first.
    let result = loop {
        tokio::select! {
            biased;
            e = &mut kubelet_error, if !kubelet_done => match e {
                Some(e) => break Err(kubelet(&e)),
                None => kubelet_done = true,
            },
            r = &mut exchange => break match r {
                Ok(answer) => Ok(answer),
                Err(e) => {
                    let late = if kubelet_done {
                        None
                    } else {
                        tokio::time::timeout(Duration::from_millis(500), &mut kubelet_error)
                            .await
                            .ok()
                            .flatten()
                    };
                    Err(match late {
                        Some(k) => kubelet(&k),
                        None => format!("{e} (the port-forward closed without a reason from the kubelet: is port {port} open in the pod?)"),
                    })
                }
            },
        }
    };
    forward.abort();
    result
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// API paths used by the CLI.
pub mod paths {
    use super::encode_query;

    pub const MUTATING_WEBHOOKS: &str =
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

    pub fn namespace(ns: &str) -> String {
        format!("/api/v1/namespaces/{ns}")
    }
    pub fn pod(ns: &str, name: &str) -> String {
        format!("/api/v1/namespaces/{ns}/pods/{name}")
    }
    /// Pods of one namespace, or of all (`None`), optionally by label selector.
    pub fn pods(ns: Option<&str>, selector: Option<&str>) -> String {
        let base = match ns {
            Some(ns) => format!("/api/v1/namespaces/{ns}/pods"),
            None => "/api/v1/pods".to_string(),
        };
        match selector {
            Some(s) if !s.is_empty() => format!("{base}?labelSelector={}", encode_query(s)),
            _ => base,
        }
    }
    pub fn secret(ns: &str, name: &str) -> String {
        format!("/api/v1/namespaces/{ns}/secrets/{name}")
    }
    pub fn config_map(ns: &str, name: &str) -> String {
        format!("/api/v1/namespaces/{ns}/configmaps/{name}")
    }
    pub fn config_maps(ns: Option<&str>, selector: Option<&str>) -> String {
        let base = match ns {
            Some(ns) => format!("/api/v1/namespaces/{ns}/configmaps"),
            None => "/api/v1/configmaps".to_string(),
        };
        match selector {
            Some(s) if !s.is_empty() => format!("{base}?labelSelector={}", encode_query(s)),
            _ => base,
        }
    }
    pub fn services(ns: Option<&str>) -> String {
        match ns {
            Some(ns) => format!("/api/v1/namespaces/{ns}/services"),
            None => "/api/v1/services".to_string(),
        }
    }
    /// A workload by kind (`Deployment`, ...), `None` for kinds the CLI does not read.
    pub fn workload(kind: &str, ns: &str, name: &str) -> Option<String> {
        let (group, plural) = match kind {
            "Deployment" => ("apis/apps/v1", "deployments"),
            "StatefulSet" => ("apis/apps/v1", "statefulsets"),
            "DaemonSet" => ("apis/apps/v1", "daemonsets"),
            "ReplicaSet" => ("apis/apps/v1", "replicasets"),
            "Job" => ("apis/batch/v1", "jobs"),
            "CronJob" => ("apis/batch/v1", "cronjobs"),
            "ReplicationController" => ("api/v1", "replicationcontrollers"),
            _ => return None,
        };
        Some(format!("/{group}/namespaces/{ns}/{plural}/{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding_and_paths() {
        assert_eq!(
            encode_query("app=web,tier notin (db)"),
            "app%3Dweb%2Ctier%20notin%20%28db%29"
        );
        assert_eq!(
            paths::pods(Some("shop"), Some("app=web")),
            "/api/v1/namespaces/shop/pods?labelSelector=app%3Dweb"
        );
        assert_eq!(paths::pods(None, None), "/api/v1/pods");
        assert_eq!(
            paths::workload("CronJob", "a", "b").as_deref(),
            Some("/apis/batch/v1/namespaces/a/cronjobs/b")
        );
        assert!(paths::workload("Service", "a", "b").is_none());
    }

    #[test]
    fn certificate_authority_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert_eq!(read_ca(&good).unwrap(), vec![ca.cert.der().to_vec()]);
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = read_ca(&empty).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        let e = read_ca(&dir.path().join("absent.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--certificate-authority"), "{e}");
    }

    #[test]
    fn server_must_be_an_http_url() {
        assert!(parse_server("http://127.0.0.1:8080").is_ok());
        let e = parse_server("127.0.0.1:8080").unwrap_err().to_string();
        assert!(
            e.contains("--server") && e.contains("127.0.0.1:8080"),
            "{e}"
        );
        assert!(parse_server("ftp://x").is_err());
    }
}
