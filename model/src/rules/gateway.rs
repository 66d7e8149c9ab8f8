//! Istio's `Gateway` kind (`networking.istio.io`) as the model holds it, decoded and checked
//! (Istio's validation, with field paths); the gateway's decisions are in `crate::gateway`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::host::{check_host, match_score};
use crate::kinds::Meta;
use crate::typed::{fail, pick, Port, Unknown, R};

// ------------------------------------------------------------------------------------ the kind

/// One `Gateway` object, decoded and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Gateway {
    pub meta: Meta,
    /// `spec.selector`: the labels a gateway pod must carry (all of them).
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<Server>,
}

/// One entry of `spec.servers`.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    /// Its index in `spec.servers` (for messages: `spec.servers[i]`).
    pub index: usize,
    pub name: Option<String>,
    /// `port.number`: the gateway Service's port.
    pub port: u16,
    pub port_name: String,
    pub protocol: ServerProtocol,
    pub hosts: Vec<ServerHost>,
    /// `bind`: the address to listen on (default: all addresses).
    pub bind: Option<String>,
    pub tls: Option<ServerTls>,
}

/// `port.protocol` of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerProtocol {
    Http,
    Https,
    Http2,
    Grpc,
    Tls,
    Tcp,
}

impl ServerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerProtocol::Http => "HTTP",
            ServerProtocol::Https => "HTTPS",
            ServerProtocol::Http2 => "HTTP2",
            ServerProtocol::Grpc => "GRPC",
            ServerProtocol::Tls => "TLS",
            ServerProtocol::Tcp => "TCP",
        }
    }
}

/// One of a server's `hosts`: `[namespace/]dnsName`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHost {
    /// Which VirtualServices may bind to this host, by their namespace.
    pub namespace: HostNamespace,
    /// `*`, `*.example.com` or `example.com` (lower case).
    pub host: String,
}

/// The namespace part of a server host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostNamespace {
    /// No namespace or `*/`: VirtualServices of any namespace.
    Any,
    /// `./`: the Gateway's own namespace.
    Gateway,
    /// `ns/`: that namespace only.
    Named(String),
}

/// `tls` of a server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerTls {
    pub https_redirect: bool,
    /// `None` when `mode` is not set (Istio's default is PASSTHROUGH; only an HTTP server with
    /// `httpsRedirect` alone leaves it unset in practice).
    pub mode: Option<TlsMode>,
    pub credential_name: Option<String>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    pub cipher_suites: Vec<String>,
}

/// `tls.mode` of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Passthrough => "PASSTHROUGH",
            TlsMode::Simple => "SIMPLE",
            TlsMode::Mutual => "MUTUAL",
            TlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
            TlsMode::IstioMutual => "ISTIO_MUTUAL",
            TlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GatewaySpec {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    servers: Vec<ServerSpec>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ServerSpec {
    port: Option<PortSpec>,
    #[serde(default)]
    hosts: Vec<String>,
    bind: Option<String>,
    tls: Option<TlsSpec>,
    name: Option<String>,
    default_endpoint: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct PortSpec {
    number: Option<Port>,
    protocol: Option<String>,
    name: Option<String>,
    target_port: Option<Port>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
/// Istio's TLS fields remora does not read (`caCertCredentialName`, `ecdhCurves`, ...) are kept.
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
struct TlsSpec {
    #[serde(default)]
    https_redirect: bool,
    mode: Option<String>,
    credential_name: Option<String>,
    #[serde(default)]
    credential_names: Vec<String>,
    server_certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
    ca_crl: Option<String>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    verify_certificate_spki: Vec<String>,
    #[serde(default)]
    verify_certificate_hash: Vec<String>,
    min_protocol_version: Option<String>,
    max_protocol_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
}

const PROTOCOLS: &[(&str, ServerProtocol)] = &[
    ("HTTP", ServerProtocol::Http),
    ("HTTPS", ServerProtocol::Https),
    ("HTTP2", ServerProtocol::Http2),
    ("GRPC", ServerProtocol::Grpc),
    ("TLS", ServerProtocol::Tls),
    ("TCP", ServerProtocol::Tcp),
];

const MODES: &[(&str, TlsMode)] = &[
    ("PASSTHROUGH", TlsMode::Passthrough),
    ("SIMPLE", TlsMode::Simple),
    ("MUTUAL", TlsMode::Mutual),
    ("AUTO_PASSTHROUGH", TlsMode::AutoPassthrough),
    ("ISTIO_MUTUAL", TlsMode::IstioMutual),
    ("OPTIONAL_MUTUAL", TlsMode::OptionalMutual),
];

const TLS_VERSIONS: &[(&str, ())] = &[
    ("TLS_AUTO", ()),
    ("TLSV1_0", ()),
    ("TLSV1_1", ()),
    ("TLSV1_2", ()),
    ("TLSV1_3", ()),
];

/// Decode and check a Gateway's `spec` (Istio's validation: a port, a protocol and at least
/// one host per server; TLS settings for HTTPS and TLS servers; certificates for SIMPLE and
/// MUTUAL). Unknown fields are added to `unknown`.
pub fn decode(meta: Meta, spec: &Value, unknown: &mut Vec<Unknown>) -> R<Gateway> {
    let s = crate::typed::decode::<GatewaySpec>(spec, "spec", unknown)?;
    if s.servers.is_empty() {
        return fail("spec.servers", "at least one server is required");
    }
    for (k, v) in &s.selector {
        if k.is_empty() {
            return fail("spec.selector", format!("empty label key (value {v:?})"));
        }
    }
    let mut servers = Vec::new();
    for (i, sv) in s.servers.into_iter().enumerate() {
        servers.push(server(i, sv)?);
    }
    Ok(Gateway {
        meta,
        selector: s.selector,
        servers,
    })
}

fn server(index: usize, s: ServerSpec) -> R<Server> {
    let at = format!("spec.servers[{index}]");
    let Some(port) = s.port else {
        return fail(&format!("{at}.port"), "required field is missing");
    };
    let Some(number) = port.number else {
        return fail(&format!("{at}.port.number"), "required field is missing");
    };
    let protocol = match port.protocol.as_deref() {
        None | Some("") => return fail(&format!("{at}.port.protocol"), "required field is missing"),
        Some(p) => pick(
            &p.to_ascii_uppercase(),
            PROTOCOLS,
            "HTTP, HTTPS, HTTP2, GRPC, TLS or TCP (other protocols are not served by remora's gateway)",
        )
        .map_err(|e| crate::typed::FieldError::new(format!("{at}.port.protocol"), e))?,
    };
    if port.target_port.is_some() {
        return fail(
            &format!("{at}.port.targetPort"),
            "not supported (deprecated in Istio); the listening port comes from --gateway-port-map",
        );
    }
    if s.hosts.is_empty() {
        return fail(&format!("{at}.hosts"), "at least one host is required");
    }
    let mut hosts = Vec::new();
    for (j, h) in s.hosts.iter().enumerate() {
        hosts.push(server_host(h, &format!("{at}.hosts[{j}]"))?);
    }
    if let Some(b) = &s.bind {
        if b.parse::<std::net::IpAddr>().is_err() {
            return fail(
                &format!("{at}.bind"),
                format!("{b:?} is not an IP address (unix sockets are not supported)"),
            );
        }
    }
    if s.default_endpoint.is_some() {
        return fail(
            &format!("{at}.defaultEndpoint"),
            "not supported (a sidecar ingress setting, not a gateway's)",
        );
    }
    let tls = match s.tls {
        None => None,
        Some(t) => Some(server_tls(t, &format!("{at}.tls"))?),
    };
    let terminates = matches!(protocol, ServerProtocol::Https | ServerProtocol::Tls);
    if terminates && tls.as_ref().and_then(|t| t.mode).is_none() {
        return fail(
            &format!("{at}.tls"),
            format!(
                "a {} server needs tls with a mode (SIMPLE, MUTUAL, PASSTHROUGH, ...)",
                protocol.as_str()
            ),
        );
    }
    if !terminates {
        if let Some(t) = tls.as_ref().filter(|t| !t.https_redirect) {
            if let Some(m) = t.mode {
                return fail(
                    &format!("{at}.tls.mode"),
                    format!(
                        "{} on a {} server: TLS termination needs protocol HTTPS or TLS (an HTTP server takes tls only for httpsRedirect)",
                        m.as_str(),
                        protocol.as_str()
                    ),
                );
            }
        }
    }
    Ok(Server {
        index,
        name: s.name,
        port: number.as_u16(),
        port_name: port.name.unwrap_or_default(),
        protocol,
        hosts,
        bind: s.bind,
        tls,
    })
}

/// One `hosts` entry: `[namespace/]host`, the namespace `*`, `.` or a name.
pub fn server_host(raw: &str, field: &str) -> R<ServerHost> {
    let (ns, host) = match raw.split_once('/') {
        Some((ns, h)) => (Some(ns), h),
        None => (None, raw),
    };
    let namespace = match ns {
        None | Some("*") => HostNamespace::Any,
        Some(".") => HostNamespace::Gateway,
        Some("") => return fail(field, format!("{raw:?}: empty namespace before '/'")),
        Some("~") => {
            return fail(
                field,
                format!("{raw:?}: the namespace \"~\" is for Sidecars, not Gateways"),
            )
        }
        Some(n) => {
            if !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return fail(field, format!("{raw:?}: {n:?} is not a namespace name"));
            }
            HostNamespace::Named(n.to_string())
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if let Err(e) = check_host(&host) {
        return fail(field, format!("{raw:?}: {e}"));
    }
    Ok(ServerHost { namespace, host })
}

fn server_tls(t: TlsSpec, at: &str) -> R<ServerTls> {
    let f = |k: &str| format!("{at}.{k}");
    let mode = match t.mode.as_deref() {
        None | Some("") => None,
        Some(m) => Some(
            pick(
                m,
                MODES,
                "PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL or OPTIONAL_MUTUAL",
            )
            .map_err(|e| crate::typed::FieldError::new(f("mode"), e))?,
        ),
    };
    for (k, v) in [
        ("minProtocolVersion", &t.min_protocol_version),
        ("maxProtocolVersion", &t.max_protocol_version),
    ] {
        if let Some(v) = v {
            pick(
                v,
                TLS_VERSIONS,
                "TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2 or TLSV1_3",
            )
            .map_err(|e| crate::typed::FieldError::new(f(k), e))?;
        }
    }
    if !t.credential_names.is_empty() {
        return fail(
            &f("credentialNames"),
            "not supported yet (use credentialName)",
        );
    }
    for (k, set) in [
        ("caCrl", t.ca_crl.is_some()),
        (
            "verifyCertificateSpki",
            !t.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !t.verify_certificate_hash.is_empty(),
        ),
    ] {
        if set {
            return fail(&f(k), "not supported yet");
        }
    }
    let empty = |o: &Option<String>| o.as_deref().is_none_or(str::is_empty);
    if matches!(
        mode,
        Some(TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual)
    ) && empty(&t.credential_name)
        && (empty(&t.server_certificate) || empty(&t.private_key))
    {
        return fail(
            &f("credentialName"),
            format!(
                "{} needs credentialName, or serverCertificate and privateKey",
                mode.map_or("", TlsMode::as_str)
            ),
        );
    }
    if matches!(mode, Some(TlsMode::Mutual | TlsMode::OptionalMutual))
        && empty(&t.credential_name)
        && empty(&t.ca_certificates)
    {
        return fail(
            &f("caCertificates"),
            "MUTUAL needs caCertificates when no credentialName is given",
        );
    }
    Ok(ServerTls {
        https_redirect: t.https_redirect,
        mode,
        credential_name: t.credential_name.filter(|s| !s.is_empty()),
        server_certificate: t.server_certificate.filter(|s| !s.is_empty()),
        private_key: t.private_key.filter(|s| !s.is_empty()),
        ca_certificates: t.ca_certificates.filter(|s| !s.is_empty()),
        subject_alt_names: t.subject_alt_names,
        min_protocol_version: t.min_protocol_version,
        max_protocol_version: t.max_protocol_version,
        cipher_suites: t.cipher_suites,
    })
}

impl ServerHost {
    /// May a VirtualService of `vs_namespace` bind this server host (on a Gateway of
    /// `gateway_namespace`)?
    pub fn admits_namespace(&self, gateway_namespace: &str, vs_namespace: &str) -> bool {
        match &self.namespace {
            HostNamespace::Any => true,
            HostNamespace::Gateway => vs_namespace == gateway_namespace,
            HostNamespace::Named(n) => n == vs_namespace,
        }
    }

    /// How well this server host matches a concrete request host (or SNI); `None`: no match.
    pub fn score(&self, host: &str) -> Option<usize> {
        match_score(&self.host, host)
    }
}
