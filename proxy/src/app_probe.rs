//! The app's original Kubernetes probes, which the injector moved into `ISTIO_KUBE_APP_PROBERS`
//! (Istio's JSON), executed on request of `/app-health/<container>/{livez,readyz,startupz}`.
//!
//! Semantics follow the kubelet: httpGet succeeds on a status in 200..400, tcpSocket when the
//! connection opens, grpc when `grpc.health.v1.Health/Check` answers SERVING; each within the
//! probe's `timeoutSeconds` (default 1).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// One probe as Istio writes it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prober {
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    #[serde(default)]
    pub tcp_socket: Option<TcpSocket>,
    #[serde(default)]
    pub grpc: Option<GrpcProbe>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    #[serde(default)]
    pub path: Option<String>,
    pub port: PortValue,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TcpSocket {
    pub port: PortValue,
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GrpcProbe {
    pub port: PortValue,
    #[serde(default)]
    pub service: Option<String>,
}

/// A port as a number or a numeric string (named ports are resolved by the injector).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PortValue {
    Num(u64),
    Str(String),
}

impl PortValue {
    fn resolve(&self, field: &str) -> Result<u16, String> {
        let n = match self {
            PortValue::Num(n) => *n,
            PortValue::Str(s) => s.parse::<u64>().map_err(|_| {
                format!("{field}: port {s:?} is not a number (named ports must be resolved by the injector)")
            })?,
        };
        if n == 0 || n > 65535 {
            return Err(format!("{field}: port {n} is out of range 1..65535"));
        }
        Ok(n as u16)
    }
}

/// The probes of all containers, keyed by the path `/app-health/<container>/<kind>`.
#[derive(Clone, Debug, Default)]
pub struct AppProbers {
    pub probes: BTreeMap<String, Prober>,
    /// Where the app listens (the pod IP when known, else loopback).
    pub default_host: String,
}

impl AppProbers {
    /// Parse `ISTIO_KUBE_APP_PROBERS`. Empty or absent means no probes.
    pub fn parse(json: Option<&str>, default_host: &str) -> Result<AppProbers, String> {
        let mut out = AppProbers {
            probes: BTreeMap::new(),
            default_host: default_host.to_string(),
        };
        let Some(json) = json.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(out);
        };
        let raw: BTreeMap<String, Prober> = serde_json::from_str(json)
            .map_err(|e| format!("ISTIO_KUBE_APP_PROBERS: invalid JSON: {e}"))?;
        for (path, p) in raw {
            let rest = path.strip_prefix("/app-health/").ok_or_else(|| {
                format!("ISTIO_KUBE_APP_PROBERS: key {path:?} does not start with /app-health/")
            })?;
            let kinds = ["livez", "readyz", "startupz"];
            let ok = rest
                .rsplit_once('/')
                .is_some_and(|(c, k)| !c.is_empty() && kinds.contains(&k));
            if !ok {
                return Err(format!(
                    "ISTIO_KUBE_APP_PROBERS: key {path:?} is not /app-health/<container>/(livez|readyz|startupz)"
                ));
            }
            let n = [
                p.http_get.is_some(),
                p.tcp_socket.is_some(),
                p.grpc.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n != 1 {
                return Err(format!(
                    "ISTIO_KUBE_APP_PROBERS: {path}: exactly one of httpGet, tcpSocket, grpc is required, found {n}"
                ));
            }
            if let Some(h) = &p.http_get {
                h.port.resolve(&format!("{path}.httpGet.port"))?;
                if let Some(s) = &h.scheme {
                    if !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https") {
                        return Err(format!(
                            "ISTIO_KUBE_APP_PROBERS: {path}.httpGet.scheme: {s:?} is not HTTP or HTTPS"
                        ));
                    }
                }
            }
            if let Some(t) = &p.tcp_socket {
                t.port.resolve(&format!("{path}.tcpSocket.port"))?;
            }
            if let Some(g) = &p.grpc {
                g.port.resolve(&format!("{path}.grpc.port"))?;
            }
            out.probes.insert(path, p);
        }
        Ok(out)
    }

    /// Run the probe registered for `path`. `None` when there is no such probe.
    pub async fn run(&self, path: &str) -> Option<ProbeResult> {
        let p = self.probes.get(path)?;
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1));
        let fut = self.execute(p);
        Some(match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => ProbeResult::fail(format!("probe timed out after {}s", timeout.as_secs())),
        })
    }

    async fn execute(&self, p: &Prober) -> ProbeResult {
        if let Some(h) = &p.http_get {
            return self.http(h).await;
        }
        if let Some(t) = &p.tcp_socket {
            let host = t.host.clone().unwrap_or_else(|| self.default_host.clone());
            let port = match t.port.resolve("tcpSocket.port") {
                Ok(p) => p,
                Err(e) => return ProbeResult::fail(e),
            };
            return match connect(&host, port).await {
                Ok(_) => ProbeResult::ok(format!("tcp connect to {host}:{port} succeeded")),
                Err(e) => ProbeResult::fail(format!("tcp connect to {host}:{port}: {e}")),
            };
        }
        if let Some(g) = &p.grpc {
            return self.grpc(g).await;
        }
        ProbeResult::fail("probe has no action".into())
    }

    async fn http(&self, h: &HttpGet) -> ProbeResult {
        let port = match h.port.resolve("httpGet.port") {
            Ok(p) => p,
            Err(e) => return ProbeResult::fail(e),
        };
        let https = h
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let host = h.host.clone().unwrap_or_else(|| self.default_host.clone());
        let mut path = h.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let stream = match connect(&host, port).await {
            Ok(s) => s,
            Err(e) => return ProbeResult::fail(format!("connect to {host}:{port}: {e}")),
        };
        let mut sender = if https {
            // Like the kubelet: TLS without certificate verification.
            let tls = match tls_connect(&host, stream).await {
                Ok(t) => t,
                Err(e) => return ProbeResult::fail(format!("TLS to {host}:{port}: {e}")),
            };
            match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await {
                Ok((sender, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    sender
                }
                Err(e) => return ProbeResult::fail(format!("http handshake: {e}")),
            }
        } else {
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok((sender, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    sender
                }
                Err(e) => return ProbeResult::fail(format!("http handshake: {e}")),
            }
        };
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut req = http::Request::builder()
            .method("GET")
            .uri(&path)
            .header("host", &authority)
            .header("user-agent", "kube-probe/1.37")
            .header("accept", "*/*");
        let mut has_host = false;
        for hh in &h.http_headers {
            if hh.name.eq_ignore_ascii_case("host") {
                has_host = true;
            }
            req = req.header(hh.name.as_str(), hh.value.as_str());
        }
        let req = match req.body(Empty::<Bytes>::new()) {
            Ok(r) => r,
            Err(e) => return ProbeResult::fail(format!("invalid probe request: {e}")),
        };
        let mut req = req;
        if has_host {
            // The probe's own Host header replaces the default one.
            let hosts: Vec<_> = req.headers().get_all("host").iter().cloned().collect();
            if let Some(last) = hosts.last().cloned() {
                req.headers_mut().insert("host", last);
            }
        }
        match sender.send_request(req).await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                if (200..400).contains(&code) {
                    ProbeResult::ok(format!("GET {path} on {authority}: HTTP {code}"))
                } else {
                    ProbeResult::fail(format!("GET {path} on {authority}: HTTP {code}"))
                }
            }
            Err(e) => ProbeResult::fail(format!("GET {path} on {authority}: {e}")),
        }
    }

    async fn grpc(&self, g: &GrpcProbe) -> ProbeResult {
        let port = match g.port.resolve("grpc.port") {
            Ok(p) => p,
            Err(e) => return ProbeResult::fail(e),
        };
        let host = self.default_host.clone();
        let service = g.service.clone().unwrap_or_default();
        match grpc_health_check(&host, port, &service).await {
            Ok(1) => ProbeResult::ok(format!(
                "grpc health {host}:{port} service {service:?}: SERVING"
            )),
            Ok(s) => ProbeResult::fail(format!(
                "grpc health {host}:{port} service {service:?}: status {} ({s})",
                serving_status_name(s)
            )),
            Err(e) => ProbeResult::fail(format!("grpc health {host}:{port}: {e}")),
        }
    }
}

fn serving_status_name(s: u64) -> &'static str {
    match s {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "unrecognised",
    }
}

async fn tls_connect(
    host: &str,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::upstream::mtls::NoVerify(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("server name {host:?}: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())
}

async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    match host.parse::<IpAddr>() {
        Ok(ip) => TcpStream::connect((ip, port)).await,
        Err(_) => TcpStream::connect((host, port)).await,
    }
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    pub message: String,
}

impl ProbeResult {
    fn ok(message: String) -> Self {
        ProbeResult { ok: true, message }
    }
    fn fail(message: String) -> Self {
        ProbeResult { ok: false, message }
    }
}

/// Encode `grpc.health.v1.HealthCheckRequest { service }` as a length-prefixed gRPC message.
pub fn encode_health_request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.put_u8(0);
    out.put_u32(msg.len() as u32);
    out.put_slice(&msg);
    out.freeze()
}

fn put_varint(b: &mut BytesMut, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            b.put_u8(byte);
            return;
        }
        b.put_u8(byte | 0x80);
    }
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !b.has_remaining() {
            return None;
        }
        let byte = b.get_u8();
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Decode a length-prefixed `grpc.health.v1.HealthCheckResponse` and return its status field.
pub fn decode_health_response(mut body: &[u8]) -> Result<u64, String> {
    if body.len() < 5 {
        return Err("response message shorter than the 5-byte gRPC prefix".into());
    }
    if body[0] != 0 {
        return Err("compressed gRPC response is not supported".into());
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if body.len() < len {
        return Err(format!(
            "gRPC message truncated: {} of {len} bytes",
            body.len()
        ));
    }
    let mut msg = &body[..len];
    let mut status = 0u64; // proto3 default: UNKNOWN
    while msg.has_remaining() {
        let key = get_varint(&mut msg).ok_or("bad protobuf key")?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(&mut msg).ok_or("bad status varint")?,
            (_, 0) => {
                get_varint(&mut msg).ok_or("bad varint")?;
            }
            (_, 2) => {
                let l = get_varint(&mut msg).ok_or("bad length")? as usize;
                if msg.len() < l {
                    return Err("truncated field".into());
                }
                msg.advance(l);
            }
            (_, 1) if msg.len() >= 8 => msg.advance(8),
            (_, 5) if msg.len() >= 4 => msg.advance(4),
            _ => return Err("unsupported protobuf wire type".into()),
        }
    }
    Ok(status)
}

/// Call `grpc.health.v1.Health/Check` over h2c and return the serving status.
pub async fn grpc_health_check(host: &str, port: u16, service: &str) -> Result<u64, String> {
    let stream = connect(host, port)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.37")
        .body(Full::new(encode_health_request(service)))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", resp.status().as_u16()));
    }
    let header_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading response: {e}"))?;
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let grpc_status = trailer_status.or(header_status).unwrap_or_default();
    if grpc_status != "0" {
        return Err(format!("grpc-status {grpc_status:?}"));
    }
    decode_health_response(&collected.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_format() {
        let json = r#"{
          "/app-health/app/livez": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP",
              "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 3},
          "/app-health/app/readyz": {"tcpSocket": {"port": "8081"}},
          "/app-health/side-car/startupz": {"grpc": {"port": 9090, "service": ""}}
        }"#;
        let p = AppProbers::parse(Some(json), "127.0.0.1").unwrap();
        assert_eq!(p.probes.len(), 3);
        let l = &p.probes["/app-health/app/livez"];
        assert_eq!(l.timeout_seconds, Some(3));
        let h = l.http_get.as_ref().unwrap();
        assert_eq!(h.path.as_deref(), Some("/healthz"));
        assert_eq!(h.http_headers[0].name, "X-Probe");
        assert_eq!(
            p.probes["/app-health/app/readyz"]
                .tcp_socket
                .as_ref()
                .unwrap()
                .port
                .resolve("x"),
            Ok(8081)
        );
        assert!(p.probes["/app-health/side-car/startupz"].grpc.is_some());
    }

    #[test]
    fn rejects_bad_input_with_field_names() {
        let cases = [
            (
                r#"{"/x/app/livez": {"tcpSocket": {"port": 1}}}"#,
                "does not start with /app-health/",
            ),
            (
                r#"{"/app-health/app/alive": {"tcpSocket": {"port": 1}}}"#,
                "is not /app-health/<container>",
            ),
            (
                r#"{"/app-health/app/livez": {"tcpSocket": {"port": "http"}}}"#,
                "tcpSocket.port: port \"http\" is not a number",
            ),
            (
                r#"{"/app-health/app/livez": {"tcpSocket": {"port": 70000}}}"#,
                "out of range",
            ),
            (
                r#"{"/app-health/app/livez": {"timeoutSeconds": 1}}"#,
                "exactly one of httpGet, tcpSocket, grpc",
            ),
            (
                r#"{"/app-health/app/livez": {"httpGet": {"port": 80, "scheme": "FTP"}}}"#,
                "httpGet.scheme",
            ),
            ("not json", "invalid JSON"),
        ];
        for (json, want) in cases {
            let err = AppProbers::parse(Some(json), "127.0.0.1").unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        assert!(AppProbers::parse(None, "127.0.0.1")
            .unwrap()
            .probes
            .is_empty());
        assert!(AppProbers::parse(Some("  "), "127.0.0.1")
            .unwrap()
            .probes
            .is_empty());
    }

    #[test]
    fn health_messages_round_trip() {
        let req = encode_health_request("svc");
        assert_eq!(&req[..], &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']);
        assert_eq!(&encode_health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(decode_health_response(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(decode_health_response(&[0, 0, 0, 0, 0]), Ok(0));
        assert_eq!(decode_health_response(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        assert!(decode_health_response(&[0, 0, 0]).is_err());
        assert!(decode_health_response(&[0, 0, 0, 0, 9, 0x08]).is_err());
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_real_sockets() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 2048];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = if req.starts_with("GET /ok ") && req.contains("x-probe: yes") {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        // A closed port for the failing TCP case.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let json = format!(
            r#"{{"/app-health/a/livez": {{"httpGet": {{"path": "/ok", "port": {port}, "httpHeaders": [{{"name": "x-probe", "value": "yes"}}]}}}},
               "/app-health/a/readyz": {{"httpGet": {{"path": "/bad", "port": {port}}}}},
               "/app-health/a/startupz": {{"tcpSocket": {{"port": {port}}}}},
               "/app-health/b/livez": {{"tcpSocket": {{"port": {closed}}}}}}}"#
        );
        let p = AppProbers::parse(Some(&json), "127.0.0.1").unwrap();
        let r = p.run("/app-health/a/livez").await.unwrap();
        assert!(r.ok, "{r:?}");
        let r = p.run("/app-health/a/readyz").await.unwrap();
        assert!(!r.ok && r.message.contains("HTTP 503"), "{r:?}");
        assert!(p.run("/app-health/a/startupz").await.unwrap().ok);
        assert!(!p.run("/app-health/b/livez").await.unwrap().ok);
        assert!(p.run("/app-health/c/livez").await.is_none());
    }

    #[tokio::test]
    async fn https_probe_does_not_verify_the_certificate_like_the_kubelet() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ck = rcgen::generate_simple_self_signed(vec!["app.local".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 2048];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = if req.starts_with("GET /secure ") {
                        "200 OK"
                    } else {
                        "500 Oops"
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let json = format!(
            r#"{{"/app-health/a/livez": {{"httpGet": {{"path": "/secure", "port": {port}, "scheme": "HTTPS"}}}},
               "/app-health/a/readyz": {{"httpGet": {{"path": "/other", "port": {port}, "scheme": "HTTPS"}}}},
               "/app-health/a/startupz": {{"httpGet": {{"path": "/secure", "port": {port}, "scheme": "HTTP"}}}}}}"#
        );
        let p = AppProbers::parse(Some(&json), "127.0.0.1").unwrap();
        let r = p.run("/app-health/a/livez").await.unwrap();
        assert!(r.ok, "{r:?}");
        let r = p.run("/app-health/a/readyz").await.unwrap();
        assert!(!r.ok && r.message.contains("HTTP 500"), "{r:?}");
        // Plain HTTP against a TLS port fails.
        assert!(!p.run("/app-health/a/startupz").await.unwrap().ok);
    }
}
