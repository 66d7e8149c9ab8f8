//! Webhook certificate rotation: a new CA and serving certificate written over the webhook's
//! files, checked to be served (and the old CA refused) and to still admit a new pod.

use super::NS;
use crate::admission;
use crate::lab::Lab;
use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

pub(super) struct Rotator {
    /// DER of the CA the webhook's certificate currently chains to.
    current_ca: Vec<u8>,
    n: u32,
}

/// One HTTPS request to the webhook (at `addr` in the namespace `netns`) on a fresh connection
/// trusting only `ca_der`.
async fn webhook_request(
    netns: &Path,
    addr: SocketAddr,
    ca_der: &[u8],
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes)> {
    admission::https_request(
        &admission::tls_connector(ca_der)?,
        Some(netns),
        addr,
        method,
        path,
        body,
    )
    .await
}

impl Rotator {
    pub(super) fn new(lab: &Lab) -> Result<Rotator> {
        use rustls_pki_types::pem::PemObject;
        let hook = lab
            .webhook()
            .ok_or_else(|| anyhow!("the lab has no webhook (no pod was injected)"))?;
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(hook.ca_pem.as_bytes())
            .map_err(|e| anyhow!("the lab webhook's CA PEM: {e:?}"))?;
        Ok(Rotator {
            current_ca: ca.to_vec(),
            n: 0,
        })
    }

    /// Issues a new CA and serving certificate (a CA rotation: the apiserver's caBundle would be
    /// updated with it), writes the pair over the files the webhook serves (renames, cert then
    /// key), waits (bounded) until new handshakes present it, checks that a client trusting only
    /// the old CA is now refused, and sends an AdmissionReview for a new pod trusting the new CA:
    /// it must be allowed with a patch that adds the sidecar. Returns what it saw.
    pub(super) fn rotate(&mut self, lab: &Lab) -> Result<String> {
        let hook = lab
            .webhook()
            .ok_or_else(|| anyhow!("the lab has no webhook"))?;
        let addr = hook.addr;
        let dir = lab.dir().join("webhook");
        self.n += 1;
        let issued = admission::issue_serving_cert(&format!("remora soak CA {}", self.n))?;
        let tmp_cert = dir.join(".tls.crt.soak");
        let tmp_key = dir.join(".tls.key.soak");
        std::fs::write(&tmp_cert, &issued.cert_pem)?;
        std::fs::write(&tmp_key, &issued.key_pem)?;
        std::fs::rename(&tmp_cert, dir.join("tls.crt"))?;
        std::fs::rename(&tmp_key, dir.join("tls.key"))?;
        let new_ca = issued.ca_der;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(25);
        loop {
            let r = lab.rt.block_on(webhook_request(
                &hook.netns,
                addr,
                &new_ca,
                "GET",
                "/readyz",
                Bytes::new(),
            ));
            match r {
                Ok((200, _)) => break,
                _ if Instant::now() >= deadline => bail!(
                    "the webhook still serves the old certificate 25 s after the rotation (last: {:?}); its log:\n{}",
                    r.map(|x| x.0),
                    hook.proc.log_tail(15)
                ),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let switched = started.elapsed();
        if let Ok((code, _)) = lab.rt.block_on(webhook_request(
            &hook.netns,
            addr,
            &self.current_ca,
            "GET",
            "/readyz",
            Bytes::new(),
        )) {
            bail!("after the rotation a client trusting only the old CA still got HTTP {code}: the old certificate is still served");
        }
        self.current_ca = new_ca;
        // Admit a new pod (another v1 backend replica) through the rotated certificate.
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("backend-v1-r{}", self.n), "namespace": NS,
                         "labels": {"app": "backend", "version": "v1"}},
            "spec": {"containers": [{"name": "backend", "image": "lab/lab-app:latest",
                     "command": ["lab-app", "http", "--service", "backend", "--port", "8080"],
                     "readinessProbe": {"tcpSocket": {"port": 8080}}}]}
        });
        let uid = format!("00000000-0000-4000-a000-{:012x}", self.n);
        let review = admission::admission_review(&uid, NS, &pod);
        let (status, body) = lab.rt.block_on(webhook_request(
            &hook.netns,
            addr,
            &self.current_ca,
            "POST",
            "/inject",
            Bytes::from(serde_json::to_vec(&review)?),
        ))?;
        if status != 200 {
            bail!(
                "admission after the rotation: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let adm = admission::parse_review_response(&uid, &pod, &body)?;
        if !adm.allowed {
            bail!("admission after the rotation was denied: {}", adm.message);
        }
        let spec = adm.object.to_string();
        if !spec.contains("remora-proxy") || !spec.contains("remora-init") {
            bail!("admission after the rotation returned no sidecar injection: {spec}");
        }
        Ok(format!(
            "rotation {}: new certificate served after {} ms, old CA refused, a new pod admitted with remora-proxy and remora-init",
            self.n,
            switched.as_millis()
        ))
    }
}
