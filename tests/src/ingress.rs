//! The ingress gateway in the lab, shared by the scenario (`tests/tests/scenarios.rs`) and the
//! demo (`remora-lab demo`): Istio's `bookinfo-gateway.yaml` from the corpus, a client pod
//! outside the mesh, and requests to the gateway's Service.

use crate::client::HttpReply;
use crate::lab::{Lab, GATEWAY_NAMESPACE, GATEWAY_SERVICE};
use anyhow::{anyhow, Result};
use serde_json::Value;
use std::path::PathBuf;

/// The namespace of the client outside the mesh (no injection label).
pub const OUTSIDE_NAMESPACE: &str = "outside";

/// A plain pod (no sidecar: its namespace is not labelled) to call the gateway from.
pub const VISITOR: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: visitor, labels: {app: visitor}}\nspec:\n  containers:\n  - name: visitor\n    image: lab/lab-app:latest\n    command: [lab-app]\n    args: [http, --service, visitor, --port, \"9080\"]\n    readinessProbe: {tcpSocket: {port: 9080}}\n";

/// A file of Istio's Bookinfo samples (`<shared>/anchors/istio/networking/NAME`: `$REMORA_SHARED`,
/// else `shared/` next to the checkout); `None` when absent.
pub fn bookinfo_sample(name: &str) -> Option<String> {
    let shared = match std::env::var_os("REMORA_SHARED") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    std::fs::read_to_string(shared.join("anchors/istio/networking").join(name)).ok()
}

/// The host of the HTTPS server of [`https_rules`].
pub const SECURE_HOST: &str = "bookinfo.example.com";
/// The Secret (in the gateway's namespace) holding its certificate.
pub const SECURE_CREDENTIAL: &str = "bookinfo-credential";

/// A Gateway (`bookinfo-https`) with an HTTPS `SIMPLE` server for [`SECURE_HOST`], its
/// certificate from the Secret [`SECURE_CREDENTIAL`], and a VirtualService bound to it routing
/// `/productpage` to productpage (applied in Bookinfo's namespace).
pub fn https_rules() -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: bookinfo-https}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [{SECURE_HOST}]\n    tls: {{mode: SIMPLE, credentialName: {SECURE_CREDENTIAL}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bookinfo-secure}}\nspec:\n  hosts: [{SECURE_HOST}]\n  gateways: [bookinfo-https]\n  http:\n  - match: [{{uri: {{exact: /productpage}}}}]\n    route: [{{destination: {{host: productpage, port: {{number: 9080}}}}}}]\n")
}

/// A self-signed test certificate for [`SECURE_HOST`] (rcgen): PEM certificate and key, put
/// into the Secret [`SECURE_CREDENTIAL`] in the gateway's namespace.
pub fn secure_credential(lab: &mut Lab) -> Result<String> {
    let cert = rcgen::generate_simple_self_signed(vec![SECURE_HOST.to_string()])?;
    let (crt, key) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    lab.create_secret(
        GATEWAY_NAMESPACE,
        SECURE_CREDENTIAL,
        &[("tls.crt", &crt), ("tls.key", &key)],
    )?;
    Ok(crt)
}

/// The host the gateway's Service is reached by from another namespace.
pub fn gateway_host() -> String {
    format!("{GATEWAY_SERVICE}.{GATEWAY_NAMESPACE}")
}

/// `GET path` from pod `from` to the gateway's Service port 80 (the gateway listens on 8080).
pub fn get(lab: &Lab, from: &str, path: &str) -> Result<HttpReply> {
    let p = lab.pod(from)?;
    lab.http(p, &gateway_host(), 80, path, &[])
}

/// `GET path` with `Host: host` from pod `from` to the gateway's Service port 80 (as a client
/// that resolved `host` to the gateway's address).
pub fn get_host(lab: &Lab, from: &str, host: &str, path: &str) -> Result<HttpReply> {
    let p = lab.pod(from)?;
    let vip = lab.service(GATEWAY_NAMESPACE, GATEWAY_SERVICE)?.vip;
    lab.rt.block_on(crate::client::http(
        &p.netns,
        std::net::SocketAddr::from((vip, 80)),
        host,
        "GET",
        path,
        &[],
        std::time::Duration::from_secs(15),
    ))
}

/// `GET path` over TLS from pod `from` to the gateway's Service port 443 (the gateway listens on
/// 8443), with SNI and `Host` `sni`, a real rustls client trusting only `root_pem`: the status
/// and the body.
pub fn get_tls(
    lab: &Lab,
    from: &str,
    sni: &str,
    root_pem: &str,
    path: &str,
) -> Result<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let p = lab.pod(from)?;
    let vip = lab.service(GATEWAY_NAMESPACE, GATEWAY_SERVICE)?.vip;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name)?;
    let timeout = std::time::Duration::from_secs(15);
    let mut sock = p
        .netns
        .connect(std::net::SocketAddr::from((vip, 443)), timeout)?;
    sock.set_read_timeout(Some(timeout))?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    // A close without close_notify is fine here: the response is complete or it is not.
    let read = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        anyhow!("no HTTP response over TLS from the gateway ({read:?}): {text:?}")
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP status line: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Who built a product page: `productpage v1 ← reviews v3 ← ratings v1` (`?` for a missing
/// part), from the lab app's JSON.
pub fn page_chain(v: &Value) -> String {
    let part = |v: &Value| {
        format!(
            "{} {}",
            v["service"].as_str().unwrap_or("?"),
            v["version"].as_str().unwrap_or("?")
        )
    };
    let mut chain = vec![part(v), part(&v["reviews"])];
    if v["reviews"].get("ratings").is_some() {
        chain.push(part(&v["reviews"]["ratings"]));
    }
    chain.join(" ← ")
}
