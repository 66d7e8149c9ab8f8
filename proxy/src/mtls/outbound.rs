//! Outbound mutual TLS between sidecars: connect, hand the server the workload certificate
//! with Istio's ALPN values, verify the server's chain against the mesh roots and its SPIFFE
//! id against the destination (trust domain, the Service's namespace when the host is a
//! cluster Service, and the service accounts discovery knows of its endpoints: `expect`). For
//! HTTP the connector plugs into Pingora (`MeshConnect`, a custom L4 connect whose TLS stream
//! Pingora gets as a virtual socket over the TCP connection, `pooled`), so Pingora pools these
//! connections like plain-text ones, in pool groups of their own; opaque TCP uses `handshake`
//! directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::{Error, ErrorType, Result};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::expect::{Accounts, Refused};
use crate::identity::material::spiffe_of;
use crate::identity::{Carried, Identity, Material};

/// What a mesh connection to one destination must be.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Expect {
    /// The destination's namespace, when the host is a cluster Service.
    pub namespace: Option<String>,
    /// The service accounts the server may present (`expect::accounts`).
    pub accounts: Accounts,
    /// Istio's SNI for the destination: `outbound_.<port>_.<subset>_.<host>`.
    pub sni: String,
}

impl Expect {
    /// For `host:port` (subset optional), `cluster_domain` naming cluster Services; no service
    /// account known yet ([`Expect::with_accounts`]).
    pub fn new(host: &str, port: u16, subset: Option<&str>, cluster_domain: &str) -> Expect {
        Expect {
            namespace: service_namespace(host, cluster_domain),
            accounts: Accounts::Unknown,
            sni: format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or("")),
        }
    }

    pub fn with_accounts(self, accounts: Accounts) -> Expect {
        Expect { accounts, ..self }
    }
}

fn failed(message: String) -> Refused {
    Refused {
        label: "handshake",
        message,
    }
}

/// The namespace of `<svc>.<ns>.svc.<cluster domain>`.
pub fn service_namespace(host: &str, cluster_domain: &str) -> Option<String> {
    let suffix = format!(".svc.{cluster_domain}");
    let rest = host.strip_suffix(&suffix)?;
    let (_, ns) = rest.rsplit_once('.')?;
    (!ns.is_empty()).then(|| ns.to_string())
}

fn no_certificate(identity: &Identity) -> String {
    format!(
        "mutual TLS needs the workload certificate, which the CA at {} has not issued yet",
        identity.config.ca.address
    )
}

/// The mTLS handshake on a connected `tcp` with the current workload certificate; the server's
/// identity is returned, or why it failed (`label`: the metric's reason).
pub async fn handshake(
    identity: &Identity,
    what: Carried,
    expect: &Expect,
    tcp: TcpStream,
    timeout: Duration,
) -> std::result::Result<(tokio_rustls::client::TlsStream<TcpStream>, String), Refused> {
    let Some(material) = identity.current() else {
        return Err(failed(no_certificate(identity)));
    };
    handshake_with(
        &material,
        &identity.config.trust_domain,
        what,
        expect,
        tcp,
        timeout,
    )
    .await
}

/// The mTLS handshake on a connected `tcp` presenting `material`'s certificate; the server must
/// be of `trust_domain`, of the expected namespace and one of the expected service accounts
/// (`expect::check`). The server's identity is returned, or why it failed.
pub async fn handshake_with(
    material: &Material,
    trust_domain: &str,
    what: Carried,
    expect: &Expect,
    tcp: TcpStream,
    timeout: Duration,
) -> std::result::Result<(tokio_rustls::client::TlsStream<TcpStream>, String), Refused> {
    let addr = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "the server".to_string());
    let name = ServerName::try_from(expect.sni.clone())
        .map_err(|e| failed(format!("SNI {:?}: {e}", expect.sni)))?;
    let connector = tokio_rustls::TlsConnector::from(material.client(what));
    let tls = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(failed(format!("mTLS handshake with {addr}: {e}"))),
        Err(_) => {
            return Err(failed(format!(
                "mTLS handshake with {addr} timed out after {timeout:?}"
            )))
        }
    };
    let server_id = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| spiffe_of(c.as_ref()))
        .ok_or_else(|| failed(format!("{addr} presented no SPIFFE id")))?;
    super::expect::check(
        &server_id,
        trust_domain,
        expect.namespace.as_deref(),
        &expect.accounts,
    )
    .map_err(|r| Refused {
        label: r.label,
        message: format!("server {addr} refused: {}", r.message),
    })?;
    Ok((tls, server_id))
}

/// Pingora's custom L4 connect for a mesh destination (one per request's peer).
#[derive(Clone)]
pub struct MeshConnect {
    pub identity: Arc<Identity>,
    /// The certificate new connections present: the current one when the request's peer was
    /// built (`None`: none issued yet, and the connect fails). Its serial is part of the pool
    /// group, so once the certificate rotates, requests open connections with the new one and
    /// the old connections idle out.
    pub material: Option<Arc<Material>>,
    pub what: Carried,
    pub expect: Expect,
    /// The endpoint. The peer's own address is `pooled::peer_addr`'s stand-in.
    pub addr: SocketAddr,
    pub timeout: Duration,
    /// Where a failed handshake is counted (`remora_mtls_failures_total`).
    pub metrics: Arc<crate::telemetry::Metrics>,
}

impl std::fmt::Debug for MeshConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnect")
            .field("addr", &self.addr)
            .field("what", &self.what)
            .field("expect", &self.expect)
            .field("serial", &self.material.as_ref().map(|m| &m.serial))
            .finish()
    }
}

impl MeshConnect {
    /// The pool group of these connections: never shared with plain ones, nor between
    /// endpoints, destinations that expect different identities, protocols carried or client
    /// certificates.
    pub fn group_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        "remora-mesh-mtls".hash(&mut h);
        self.addr.hash(&mut h);
        self.expect.hash(&mut h);
        (self.what as u8).hash(&mut h);
        self.material.as_ref().map(|m| &m.serial).hash(&mut h);
        h.finish() | 1
    }

    async fn connect_tls(
        &self,
    ) -> std::result::Result<tokio_rustls::client::TlsStream<TcpStream>, Refused> {
        let Some(material) = &self.material else {
            return Err(failed(no_certificate(&self.identity)));
        };
        let tcp = crate::upstream::connect_tcp(self.addr, None, false, self.timeout)
            .await
            .map_err(|e| failed(format!("connect: {e}")))?;
        let trust_domain = &self.identity.config.trust_domain;
        let (tls, server) = handshake_with(
            material,
            trust_domain,
            self.what,
            &self.expect,
            tcp,
            self.timeout,
        )
        .await?;
        self.identity.servers.note(self.addr, &server);
        Ok(tls)
    }
}

#[async_trait]
impl pingora::connectors::L4Connect for MeshConnect {
    /// `_peer_addr` is the stand-in address of mesh peers; the endpoint is `self.addr`.
    async fn connect(&self, _peer_addr: &PSocketAddr) -> Result<L4Stream> {
        match self.connect_tls().await {
            Ok(tls) => Ok(super::pooled::into_stream(tls)),
            Err(e) => {
                self.metrics
                    .mtls_failures
                    .with_label_values(&["outbound", e.label])
                    .inc();
                if e.label != "handshake" {
                    // A server that is not who the destination's endpoints are: worth a line.
                    tracing::warn!(endpoint = %self.addr, reason = e.label, "mesh mTLS: {}", e.message);
                }
                Error::e_explain(ErrorType::ConnectError, e.message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_namespace_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("reviews.bookinfo.svc.cluster.local", Some("bookinfo")),
            ("a.b.c.svc.cluster.local", Some("c")),
            ("reviews.svc.cluster.local", None),
            ("api.example.com", None),
            ("reviews.bookinfo.svc.other.local", None),
        ];
        for (host, want) in cases {
            assert_eq!(
                service_namespace(host, "cluster.local").as_deref(),
                *want,
                "{host}"
            );
        }
        let e = Expect::new(
            "reviews.bookinfo.svc.cluster.local",
            9080,
            Some("v2"),
            "cluster.local",
        );
        assert_eq!(
            e.sni,
            "outbound_.9080_.v2_.reviews.bookinfo.svc.cluster.local"
        );
    }
}
