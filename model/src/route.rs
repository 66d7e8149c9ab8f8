//! Pure routing: a `Snapshot` and one request in, a `Decision` out. No I/O.

use std::net::SocketAddr;

pub use crate::kinds::{
    Endpoint, FaultAbort, FaultDelay, FaultPolicy, HeaderOps, Mirror, Policy, RetryPolicy,
};

use crate::host::{candidates, match_score, split_authority};
use crate::rules::{
    HttpMatch, HttpRoute, Snapshot, StringMatch, VirtualService, WeightedDestination,
};

/// What the data plane knows about one HTTP request.
pub struct RequestInfo<'a> {
    pub authority: &'a str,
    pub method: &'a str,
    /// Path including `?query`.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The original destination of the connection.
    pub dst: SocketAddr,
}

/// Which proxy a request goes through, for the `gateways` of a VirtualService and of its
/// matches: a sidecar (`mesh`), or a gateway serving these Gateways (`namespace/name`) with the
/// request's scheme (`http`, or `https` after the gateway terminated TLS).
#[derive(Clone, Copy, Debug)]
pub enum Via<'a> {
    Mesh,
    Gateways(&'a [String], &'a str),
}

impl Via<'_> {
    /// Does a `gateways` list (of a VirtualService in `vs_namespace`, or of one of its
    /// matches; empty = the VirtualService's own) bind this proxy?
    fn binds(&self, vs_namespace: &str, gateways: &[String]) -> bool {
        match self {
            Via::Mesh => gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
            Via::Gateways(gws, _) => bound_to(vs_namespace, gateways, gws),
        }
    }

    fn scheme(&self) -> &str {
        match self {
            Via::Mesh => "http",
            Via::Gateways(_, scheme) => scheme,
        }
    }
}

/// A VirtualService's reference to a Gateway, as `namespace/name`: `ns/name` as written, a
/// short `name` in the VirtualService's namespace, and Istio's older `name.ns[.svc.domain]`
/// form. `None` for the reserved `mesh`.
pub fn gateway_ref(vs_namespace: &str, reference: &str) -> Option<String> {
    if reference == "mesh" {
        return None;
    }
    if let Some((ns, name)) = reference.split_once('/') {
        return Some(format!("{ns}/{name}"));
    }
    match reference.split_once('.') {
        Some((name, rest)) => {
            let ns = rest.split('.').next().unwrap_or(rest);
            Some(format!("{ns}/{name}"))
        }
        None => Some(format!("{vs_namespace}/{reference}")),
    }
}

/// Is a list of `gateways` (of a VirtualService in `vs_namespace`, or of one of its matches)
/// bound to one of `gateways` (`namespace/name`)?
pub fn bound_to(vs_namespace: &str, refs: &[String], gateways: &[String]) -> bool {
    refs.iter()
        .filter_map(|r| gateway_ref(vs_namespace, r))
        .any(|r| gateways.contains(&r))
}

/// What to do with a request.
// The contract between the rules and the data plane fixes `Forward(Forward)` unboxed; one
// decision is made per request and moved once, so the size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Send to an upstream.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect { status: u16, location: String },
    /// No VirtualService matched and the host is neither a ServiceEntry host nor a cluster
    /// Service (a raw IP, an external name without ServiceEntry): the original destination
    /// as-is, without any policy.
    Passthrough,
    /// The rules forbid this request (for example a Sidecar with `outboundTrafficPolicy:
    /// REGISTRY_ONLY` and an unknown host, or no route matched in a VirtualService):
    /// answer `status` (Envoy/Istio answer 502 for the BlackHole cluster, 404 for no route).
    Deny { status: u16, reason: String },
    /// A `directResponse` rule: answer `status` with `body` without any upstream.
    DirectResponse { status: u16, body: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// The `http` route's name (with its match's); `None` also for the default route.
    pub route_name: Option<String>,
    /// `namespace/name` of the VirtualService that routed the request; `None` for the host's
    /// default route (no VirtualService applies: a ServiceEntry host or a cluster Service).
    pub virtual_service: Option<String>,
    /// The `http` route of `virtual_service` that decided (`spec.http[i]`): the key of its
    /// per-route policies (`corsPolicy`), at a sidecar and at a gateway alike.
    pub route_path: Option<String>,
    /// Destination host (FQDN), e.g. `reviews.default.svc.cluster.local`.
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
    /// Candidate endpoints; empty = use the original destination.
    pub endpoints: Vec<Endpoint>,
    pub authority_rewrite: Option<String>,
    /// The path (with query) after a `rewrite.uri`.
    pub uri_rewrite: Option<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub policy: Policy,
    /// `endpoints` is empty AND the destination is not what the client addressed (a route to
    /// another host or port): connect to `host:port` through DNS, not to the original
    /// destination. Always false when `endpoints` is non-empty.
    pub resolve_by_dns: bool,
}

impl Forward {
    /// To `host:port` (its `subset`) at `endpoints`, with no route, VirtualService, rewrite,
    /// header operation or policy of its own, and no DNS resolution: the host's default route
    /// and the L4 forwards start from it.
    pub fn plain(
        host: String,
        subset: Option<String>,
        port: u16,
        endpoints: Vec<Endpoint>,
    ) -> Forward {
        Forward {
            route_name: None,
            virtual_service: None,
            route_path: None,
            host,
            subset,
            port,
            endpoints,
            authority_rewrite: None,
            uri_rewrite: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            policy: Policy::default(),
            resolve_by_dns: false,
        }
    }
}

/// Route one request: the most specific VirtualService for its authority, its first matching
/// `http` route, a weighted destination; when no VirtualService applies, the host's default
/// route (a ServiceEntry host or a cluster Service: a `Forward` without route or VirtualService
/// name, so its DestinationRule applies) or else the original destination.
///
/// The path is normalized first, as Istio's default (`pathNormalization: BASE`, Envoy's
/// `normalize_path`) does: routes match the normalized path, and a `Forward` carries it in
/// `uri_rewrite` when it differs from what the client sent (Envoy forwards the normalized path).
pub fn route(snap: &Snapshot, req: &RequestInfo<'_>, rng: &mut impl rand::Rng) -> Decision {
    normalized(req, |req| route_normalized(snap, req, rng))
}

/// Route a request through `via` by one given VirtualService (a gateway's choice): its first
/// matching `http` route, as [`route`] does, on the normalized path. The destination is never
/// "what the client addressed": with no endpoint list it is resolved by DNS.
pub fn route_bound(
    snap: &Snapshot,
    vs: &VirtualService,
    req: &RequestInfo<'_>,
    via: Via<'_>,
    rng: &mut impl rand::Rng,
) -> Decision {
    normalized(req, |req| {
        route_virtual_service(snap, vs, req, &[], via, rng)
    })
}

/// Decide on the normalized path; a `Forward` carries it in `uri_rewrite` when it differs from
/// what the client sent.
fn normalized(
    req: &RequestInfo<'_>,
    decide: impl FnOnce(&RequestInfo<'_>) -> Decision,
) -> Decision {
    if is_normal_path(req.path) {
        return decide(req);
    }
    let normalized = normalize_path(req.path);
    if normalized != req.path {
        let norm_req = RequestInfo {
            authority: req.authority,
            method: req.method,
            path: &normalized,
            headers: req.headers,
            dst: req.dst,
        };
        return match decide(&norm_req) {
            Decision::Forward(mut f) => {
                if f.uri_rewrite.is_none() {
                    f.uri_rewrite = Some(normalized.clone());
                }
                Decision::Forward(f)
            }
            other => other,
        };
    }
    decide(req)
}

fn route_normalized(snap: &Snapshot, req: &RequestInfo<'_>, rng: &mut impl rand::Rng) -> Decision {
    let (host, _) = split_authority(req.authority);
    let cands = if host.is_empty() {
        Vec::new()
    } else {
        candidates(&host, &snap.ctx.namespace, &snap.ctx.cluster_domain)
    };
    let port = req.dst.port();
    match best_virtual_service(snap, &cands)
        .filter(|vs| egress_allows(snap, &vs.meta, &vs.hosts, port))
    {
        Some(vs) => route_virtual_service(snap, vs, req, &cands, Via::Mesh, rng),
        None => no_virtual_service(snap, req, &host, &cands),
    }
}

/// The Sidecar's per-port egress listeners (the load already dropped resources outside every
/// listener).
fn egress_allows(snap: &Snapshot, meta: &crate::rules::Meta, hosts: &[String], port: u16) -> bool {
    snap.sidecar
        .as_ref()
        .is_none_or(|sc| crate::rules::in_egress_scope_on_port(sc, &meta.namespace, hosts, port))
}

/// A path `normalize_path` leaves as it is, told without building its normal form: nothing to
/// decode (`%`), no backslash, no `.` or `..` segment (each would start with `/.`).
fn is_normal_path(full: &str) -> bool {
    is_normal(split_path(full).0)
}

/// The same for a path without its query (authorization's path matching uses it too).
pub(crate) fn is_normal(path: &str) -> bool {
    !path.bytes().any(|b| b == b'%' || b == b'\\') && !path.contains("/.")
}

/// RFC 3986 syntax-based normalization of the path part (the query is kept as is), as Envoy's
/// `normalize_path`: backslashes become `/`, percent-encoded unreserved characters are decoded
/// (`%2e` → `.`, `%41` → `A`), and `.` / `..` segments are removed. Paths that do not start
/// with `/` (for example `*`) are returned unchanged.
pub fn normalize_path(full: &str) -> String {
    let (path, query) = split_path(full);
    if !path.starts_with('/') && !path.starts_with('\\') {
        return full.to_string();
    }
    // Decode unreserved characters and turn backslashes into slashes.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(c as char);
                    i += 3;
                    continue;
                }
            }
        }
        if b == b'\\' {
            decoded.push('/');
        } else {
            // Push the whole UTF-8 character starting here.
            let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
            decoded.push_str(&path[i..i + ch_len]);
            i += ch_len;
            continue;
        }
        i += 1;
    }
    // Remove dot segments (RFC 3986 5.2.4) on '/'-separated segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            other => {
                out.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut norm = String::with_capacity(decoded.len());
    for seg in &out {
        norm.push('/');
        norm.push_str(seg);
    }
    if trailing_slash || norm.is_empty() {
        norm.push('/');
    }
    match query {
        Some(q) => format!("{norm}?{q}"),
        None => norm,
    }
}

/// The most specific VirtualService (with `http` routes) for one of the candidate FQDNs; the
/// first one loaded on a tie.
pub fn best_virtual_service<'a>(
    snap: &'a Snapshot,
    cands: &[String],
) -> Option<&'a VirtualService> {
    snap.best_http_virtual_service(cands)
}

fn split_path(path: &str) -> (&str, Option<&str>) {
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

fn header_value(req: &RequestInfo<'_>, name: &str) -> Option<String> {
    match name {
        ":authority" | "host" if !req.authority.is_empty() => {
            return Some(req.authority.to_string())
        }
        ":method" => return Some(req.method.to_string()),
        ":path" => return Some(req.path.to_string()),
        _ => {}
    }
    let mut vals = req.headers.get_all(name).iter().peekable();
    vals.peek()?;
    let joined: Vec<String> = vals
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    Some(joined.join(","))
}

/// Does one match block hold for this request?
pub fn match_holds(
    snap: &Snapshot,
    vs: &VirtualService,
    m: &HttpMatch,
    req: &RequestInfo<'_>,
) -> bool {
    match_holds_via(snap, vs, m, req, Via::Mesh)
}

/// [`match_holds`] for a request through `via` (a sidecar or a gateway).
pub fn match_holds_via(
    snap: &Snapshot,
    vs: &VirtualService,
    m: &HttpMatch,
    req: &RequestInfo<'_>,
    via: Via<'_>,
) -> bool {
    let gateways = if m.gateways.is_empty() {
        &vs.gateways
    } else {
        &m.gateways
    };
    if !via.binds(&vs.meta.namespace, gateways) {
        return false;
    }
    let (path, query) = split_path(req.path);
    if let Some(u) = &m.uri {
        if !u.matches(path, m.ignore_uri_case) {
            return false;
        }
    }
    if let Some(s) = &m.scheme {
        if !s.matches(via.scheme(), false) {
            return false;
        }
    }
    if let Some(x) = &m.method {
        if !x.matches(req.method, false) {
            return false;
        }
    }
    if let Some(a) = &m.authority {
        if !a.matches(req.authority, false) {
            return false;
        }
    }
    if let Some(p) = m.port {
        if p != req.dst.port() {
            return false;
        }
    }
    for (name, sm) in &m.headers {
        match header_value(req, name) {
            Some(v) if sm.matches(&v, false) => {}
            _ => return false,
        }
    }
    // Istio/Envoy semantics (an inverted header matcher): `{}` holds when the header is absent;
    // any other match holds when the header is present and does not match.
    for (name, sm) in &m.without_headers {
        let holds = match (header_value(req, name), sm) {
            (None, StringMatch::Present) => true,
            (None, _) => false,
            (Some(v), sm) => !sm.matches(&v, false),
        };
        if !holds {
            return false;
        }
    }
    for (key, sm) in &m.query_params {
        match query_value(query, key) {
            Some(v) if sm.matches(v, false) => {}
            _ => return false,
        }
    }
    if !m
        .source_labels
        .iter()
        .all(|(k, v)| snap.ctx.pod_labels.get(k) == Some(v))
    {
        return false;
    }
    if let Some(ns) = &m.source_namespace {
        if ns != &snap.ctx.namespace {
            return false;
        }
    }
    true
}

/// The first route that matches, with the match block that matched (`None` for a route
/// without `match`).
pub fn select_route<'a>(
    snap: &Snapshot,
    vs: &'a VirtualService,
    req: &RequestInfo<'_>,
) -> Option<(&'a HttpRoute, Option<&'a HttpMatch>)> {
    select_route_via(snap, vs, req, Via::Mesh)
}

/// [`select_route`] for a request through `via` (a sidecar or a gateway).
pub fn select_route_via<'a>(
    snap: &Snapshot,
    vs: &'a VirtualService,
    req: &RequestInfo<'_>,
    via: Via<'_>,
) -> Option<(&'a HttpRoute, Option<&'a HttpMatch>)> {
    for r in &vs.http {
        if r.matches.is_empty() {
            if via.binds(&vs.meta.namespace, &vs.gateways) {
                return Some((r, None));
            }
            continue;
        }
        if let Some(m) = r
            .matches
            .iter()
            .find(|m| match_holds_via(snap, vs, m, req, via))
        {
            return Some((r, Some(m)));
        }
    }
    None
}

/// Weighted random choice; a single destination takes all traffic.
pub fn pick_destination<'a>(
    dests: &'a [WeightedDestination],
    rng: &mut impl rand::Rng,
) -> Option<&'a WeightedDestination> {
    if dests.len() <= 1 {
        return dests.first();
    }
    let total: u64 = dests.iter().map(|d| d.weight.unwrap_or(0) as u64).sum();
    if total == 0 {
        return dests.first();
    }
    let mut x = rng.gen_range(0..total);
    for d in dests {
        let w = d.weight.unwrap_or(0) as u64;
        if x < w {
            return Some(d);
        }
        x -= w;
    }
    dests.last()
}

fn route_name(r: &HttpRoute, m: Option<&HttpMatch>) -> Option<String> {
    match (r.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
        (Some(r), Some(m)) => Some(format!("{r}.{m}")),
        (Some(r), None) => Some(r.to_string()),
        // As Istio names Envoy routes: `route.Name + "." + match.Name`.
        (None, Some(m)) => Some(format!(".{m}")),
        (None, None) => None,
    }
}

/// The path after `rewrite.uri` / `uriRegexRewrite`, as Envoy does it for Istio: a prefix
/// match has its matched prefix replaced; an exact or regex match has the whole path replaced;
/// a route without a uri match replaces the leading `/` (Envoy's implicit prefix match). The
/// query string is kept.
pub fn rewrite_path(r: &HttpRoute, m: Option<&HttpMatch>, full_path: &str) -> Option<String> {
    let rw = r.rewrite.as_ref()?;
    let (path, query) = split_path(full_path);
    let new_path = if let Some((re, rep)) = &rw.uri_regex {
        re.replace_all(path, rep.as_str()).into_owned()
    } else {
        let new = rw.uri.as_deref()?;
        match m.and_then(|m| m.uri.as_ref()) {
            Some(StringMatch::Prefix(p)) => {
                let rest = path.get(p.len()..).unwrap_or("");
                format!("{new}{rest}")
            }
            Some(StringMatch::Exact(_)) | Some(StringMatch::Regex(..)) => new.to_string(),
            Some(StringMatch::Present) | None => {
                let rest = path.strip_prefix('/').unwrap_or(path);
                format!("{new}{rest}")
            }
        }
    };
    Some(match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    })
}

fn redirect_location(rd: &crate::rules::Redirect, req: &RequestInfo<'_>) -> String {
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let base = rd.authority.as_deref().unwrap_or(req.authority);
    let (bare, req_port) = split_authority(base);
    let bare = if bare.contains(':') {
        format!("[{bare}]")
    } else {
        bare
    };
    let authority = if let Some(p) = rd.port {
        format!("{bare}:{p}")
    } else if rd.derive_port_from_request {
        let (_, p) = split_authority(req.authority);
        format!("{bare}:{}", p.unwrap_or(req.dst.port()))
    } else if rd.authority.is_some() {
        base.to_string()
    } else {
        match req_port {
            Some(p) => format!("{bare}:{p}"),
            None => bare,
        }
    };
    let (_, query) = split_path(req.path);
    let path = match rd.uri.as_deref() {
        Some(u) if u.contains('?') => u.to_string(),
        Some(u) => match query {
            Some(q) => format!("{u}?{q}"),
            None => u.to_string(),
        },
        None => req.path.to_string(),
    };
    format!("{scheme}://{authority}{path}")
}

/// `Meta::key` (`namespace/name`) without the formatter: once per routed request.
fn meta_key(m: &crate::rules::Meta) -> String {
    let mut k = String::with_capacity(m.namespace.len() + 1 + m.name.len());
    k.push_str(&m.namespace);
    k.push('/');
    k.push_str(&m.name);
    k
}

fn concat(a: &HeaderOps, b: &HeaderOps) -> HeaderOps {
    let empty = |o: &HeaderOps| o.set.is_empty() && o.add.is_empty() && o.remove.is_empty();
    if empty(b) {
        return a.clone();
    }
    if empty(a) {
        return b.clone();
    }
    HeaderOps {
        set: a.set.iter().chain(b.set.iter()).cloned().collect(),
        add: a.add.iter().chain(b.add.iter()).cloned().collect(),
        remove: a.remove.iter().chain(b.remove.iter()).cloned().collect(),
    }
}

/// The service port to use for `host` when the route names none: a ServiceEntry with exactly
/// one port, else the port the client addressed.
fn default_port(snap: &Snapshot, host: &str, dst_port: u16) -> u16 {
    match snap.best_service_entry(&[host.to_string()]) {
        Some(se) if se.ports.len() == 1 && !se.ports.iter().any(|p| p.number == dst_port) => {
            se.ports[0].number
        }
        _ => dst_port,
    }
}

fn route_virtual_service(
    snap: &Snapshot,
    vs: &VirtualService,
    req: &RequestInfo<'_>,
    cands: &[String],
    via: Via<'_>,
    rng: &mut impl rand::Rng,
) -> Decision {
    let Some((r, m)) = select_route_via(snap, vs, req, via) else {
        return Decision::Deny {
            status: 404,
            reason: format!("no route of VirtualService {} matched", vs.meta.key()),
        };
    };
    if let Some(rd) = &r.redirect {
        return Decision::Redirect {
            status: rd.code,
            location: redirect_location(rd, req),
        };
    }
    if let Some(dr) = &r.direct_response {
        return Decision::DirectResponse {
            status: dr.status,
            body: dr.body.clone(),
        };
    }
    let Some(wd) = pick_destination(&r.route, rng) else {
        return Decision::Deny {
            status: 503,
            reason: format!(
                "route {} of VirtualService {} has no destination",
                r.path,
                vs.meta.key()
            ),
        };
    };
    let d = &wd.destination;
    let port = d
        .port
        .unwrap_or_else(|| default_port(snap, &d.host, req.dst.port()));
    let endpoints = match destination_endpoints(snap, d, port) {
        Ok(eps) => eps,
        Err(reason) => {
            return Decision::Deny {
                status: 503,
                reason,
            }
        }
    };
    let addressed = cands.iter().any(|c| c == &d.host) && port == req.dst.port();
    let (request_headers, authority_rewrite) = split_authority_header(
        concat(&r.headers.request, &wd.headers.request),
        r.rewrite.as_ref().and_then(|rw| rw.authority.clone()),
    );
    Decision::Forward(Forward {
        route_name: route_name(r, m),
        virtual_service: Some(meta_key(&vs.meta)),
        route_path: Some(r.path.clone()),
        host: d.host.clone(),
        subset: d.subset.clone(),
        port,
        resolve_by_dns: endpoints.is_empty() && !addressed,
        endpoints,
        authority_rewrite,
        uri_rewrite: rewrite_path(r, m, req.path),
        request_headers,
        response_headers: concat(&r.headers.response, &wd.headers.response),
        policy: r.policy.clone(),
    })
}

/// The endpoints of a route destination: those of its host and port, narrowed to its subset's
/// labels. Empty = no endpoint source knows the host (the caller resolves it or uses the
/// original destination). Err: why the request is denied with 503 (a subset no DestinationRule
/// defines, or a known host without any endpoint).
fn destination_endpoints(
    snap: &Snapshot,
    d: &crate::kinds::Destination,
    port: u16,
) -> Result<Vec<Endpoint>, String> {
    let subset_labels = match &d.subset {
        None => None,
        Some(name) => {
            let found = snap
                .destination_rule(&d.host)
                .and_then(|dr| dr.subsets.iter().find(|s| &s.name == name));
            match found {
                Some(s) => Some(&s.labels),
                None => {
                    return Err(format!(
                        "subset {name:?} of host {} is not defined by any DestinationRule",
                        d.host
                    ))
                }
            }
        }
    };
    match snap.endpoints.endpoints(&d.host, port, subset_labels) {
        Some(eps) if eps.is_empty() => Err(match &d.subset {
            Some(s) => format!("no endpoints for host {} subset {s:?} port {port}", d.host),
            None => format!("no endpoints for host {} port {port}", d.host),
        }),
        Some(eps) => Ok(eps),
        None => Ok(Vec::new()),
    }
}

/// Istio turns a request header `set` of `host` or `:authority` into an authority rewrite
/// (`rewrite.authority` wins when both are given); the header itself is not set.
fn split_authority_header(
    mut ops: HeaderOps,
    rewrite: Option<String>,
) -> (HeaderOps, Option<String>) {
    let mut from_header = None;
    ops.set.retain(|(k, v)| {
        if k == "host" || k == ":authority" {
            from_header = Some(v.clone());
            false
        } else {
            true
        }
    });
    (ops, rewrite.or(from_header))
}

/// No VirtualService applies: Istio's default route of the host (`outbound|port||host`) when the
/// request names a ServiceEntry host or a cluster Service, else the original destination
/// (or 502 under `REGISTRY_ONLY` for a host outside the registry).
fn no_virtual_service(
    snap: &Snapshot,
    req: &RequestInfo<'_>,
    host: &str,
    cands: &[String],
) -> Decision {
    let port = req.dst.port();
    let declared = |se: &crate::rules::ServiceEntry| {
        se.ports.is_empty() || se.ports.iter().any(|p| p.number == port)
    };
    // A ServiceEntry only captures the ports it declares (Istio builds listeners per port).
    if let Some(se) = snap
        .best_service_entry(cands)
        .filter(|se| declared(se) && egress_allows(snap, &se.meta, &se.hosts, port))
    {
        // The concrete name the client used (the candidate the ServiceEntry matched).
        let fqdn = cands
            .iter()
            .find(|c| se.hosts.iter().any(|h| match_score(h, c).is_some()))
            .cloned()
            .unwrap_or_else(|| host.to_string());
        return default_route(snap, fqdn, req.dst, false);
    }
    if let Some(fqdn) = cluster_service_host(snap, host, cands, port) {
        return default_route(snap, fqdn, req.dst, true);
    }
    if let Some(sc) = snap.sidecar.as_ref().filter(|sc| sc.registry_only) {
        // An IP literal (or no Host at all) is in the registry only when that address is: a
        // Service's ClusterIP or a ServiceEntry's address or endpoint, as Istio's listeners
        // and virtual hosts are per registered address.
        let (in_registry, what) = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => (
                address_in_registry(snap, SocketAddr::new(ip, port)),
                format!("address {host}"),
            ),
            Err(_) if host.is_empty() => (
                address_in_registry(snap, req.dst),
                format!("a request without Host to {}", req.dst),
            ),
            Err(_) => (
                names_a_cluster_service(snap, cands),
                format!("host {host:?}"),
            ),
        };
        if !in_registry {
            return black_hole(sc, &what);
        }
    }
    Decision::Passthrough
}

/// Istio's `BlackHoleCluster`: under `REGISTRY_ONLY`, a destination outside the registry is
/// refused (HTTP 502 with flag `NR`; an opaque TCP or TLS connection is closed).
pub const BLACK_HOLE: &str = "BlackHoleCluster";

fn black_hole(sc: &crate::rules::Sidecar, what: &str) -> Decision {
    Decision::Deny {
        status: 502,
        reason: format!(
            "{BLACK_HOLE}: {what} is not in the registry and Sidecar {} sets outboundTrafficPolicy REGISTRY_ONLY",
            sc.meta.key()
        ),
    }
}

/// Is `dst` a registered address: a Kubernetes Service's ClusterIP (on a port it declares,
/// when discovery knows the ports), a ServiceEntry's `addresses`, or a ServiceEntry
/// endpoint's address?
fn address_in_registry(snap: &Snapshot, dst: SocketAddr) -> bool {
    let ip = dst.ip();
    if snap.endpoints.service_port(ip, dst.port()).is_some()
        || snap.endpoints.host_of_ip(ip).is_some()
    {
        return true;
    }
    snap.service_entries.iter().any(|se| {
        se.addresses.iter().any(|n| n.contains(&ip))
            || se
                .endpoints
                .iter()
                .any(|e| e.address.parse::<std::net::IpAddr>().ok() == Some(ip))
    })
}

/// Does one of the candidate FQDNs name a cluster Service (`*.svc.<domain>`)? (Not checked
/// against the discovered Services.)
fn names_a_cluster_service(snap: &Snapshot, cands: &[String]) -> bool {
    let suffix = format!(".svc.{}", snap.ctx.cluster_domain);
    cands.iter().any(|c| c.ends_with(&suffix))
}

/// A connection the rules leave to its original destination, unless the Sidecar sets
/// `REGISTRY_ONLY` and neither its address nor (for TLS) its SNI is in the registry.
fn passthrough_unless_registry_only(
    snap: &Snapshot,
    dst: SocketAddr,
    sni_cands: Option<&[String]>,
) -> Decision {
    let Some(sc) = snap.sidecar.as_ref().filter(|sc| sc.registry_only) else {
        return Decision::Passthrough;
    };
    if address_in_registry(snap, dst) {
        return Decision::Passthrough;
    }
    if let Some(cands) = sni_cands {
        let known =
            snap.best_service_entry(cands).is_some() || names_a_cluster_service(snap, cands);
        if known {
            return Decision::Passthrough;
        }
        let sni = cands.first().map(String::as_str).unwrap_or("");
        return black_hole(sc, &format!("TLS to {dst} with SNI {sni:?}"));
    }
    black_hole(sc, &format!("TCP to {dst}"))
}

/// The cluster Service (`name.namespace.svc.<domain>`) a request host names, if it names one
/// visible under the Sidecar's egress scope on `port`.
///
/// `reviews`, `reviews.prod.svc` and the FQDN name a Service whether or not an endpoint source
/// knows it. `a.b` is ambiguous (Service `a` in namespace `b`, or the external name `a.b`): it
/// names a Service only when an endpoint source knows that Service or a DestinationRule is
/// written for exactly that FQDN (a wildcard DestinationRule such as `*.local` does not turn
/// external names into cluster ones).
fn cluster_service_host(
    snap: &Snapshot,
    host: &str,
    cands: &[String],
    port: u16,
) -> Option<String> {
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let suffix = format!(".svc.{}", snap.ctx.cluster_domain);
    let fqdn = cands.iter().find(|c| c.ends_with(&suffix))?;
    // `name.namespace` before the suffix: a Service, not a pod name or `x.svc.<domain>`.
    let (_, ns) = fqdn.strip_suffix(&suffix)?.split_once('.')?;
    if ns.is_empty() || ns.contains('.') {
        return None;
    }
    let written = host.trim_end_matches('.');
    let ambiguous = written.matches('.').count() == 1;
    if ambiguous
        && snap.endpoints.endpoints(fqdn, port, None).is_none()
        && snap
            .destination_rule(fqdn)
            .is_none_or(|dr| &dr.host != fqdn)
    {
        return None;
    }
    let visible = snap.sidecar.as_ref().is_none_or(|sc| {
        crate::rules::in_egress_scope_on_port(sc, ns, std::slice::from_ref(fqdn), port)
    });
    visible.then(|| fqdn.clone())
}

/// Istio's default route of a host without VirtualService: the whole host (no subset) on the
/// port the client addressed, its endpoints (as for a VirtualService destination), no header
/// operations, and the default route policy (no timeout; Istio's default retries, never for a
/// non-idempotent method). The host's DestinationRule `trafficPolicy` (with its
/// `portLevelSettings` for this port) applies in the data plane, which looks it up by host and
/// port exactly as for a routed destination. Without known endpoints the original destination
/// is used. For a cluster Service (`headless_aware`), when the client addressed one of the
/// endpoints itself (a headless Service: its DNS gave a pod's address), that endpoint is kept,
/// as Istio's ORIGINAL_DST cluster for headless Services does; a ServiceEntry host's endpoints
/// are always balanced.
fn default_route(snap: &Snapshot, fqdn: String, dst: SocketAddr, headless_aware: bool) -> Decision {
    let port = dst.port();
    // A port the known Service does not declare: Istio has no cluster for it and the
    // connection takes the PassthroughCluster (the original destination), not a 503.
    if headless_aware && snap.endpoints.has_port(&fqdn, port) == Some(false) {
        return Decision::Passthrough;
    }
    let d = crate::kinds::Destination {
        host: fqdn,
        subset: None,
        port: Some(port),
    };
    let mut endpoints = match destination_endpoints(snap, &d, port) {
        Ok(eps) => eps,
        Err(reason) => {
            return Decision::Deny {
                status: 503,
                reason,
            }
        }
    };
    if headless_aware && endpoints.iter().any(|e| e.addr == dst) {
        endpoints.retain(|e| e.addr == dst);
    }
    // The client addressed this host and port: without endpoints, its original destination.
    Decision::Forward(Forward::plain(d.host, None, port, endpoints))
}

/// Route an opaque TCP connection (or a TLS one, when the data plane has read its SNI) by the
/// VirtualServices' `tcp` / `tls` routes. TLS: the VirtualService whose hosts match the SNI and
/// its first `tls` route whose `sniHosts` (and other conditions) match. TCP: the host whose
/// virtual address the client connected to (a ServiceEntry's `addresses`, a Service's
/// ClusterIP), its VirtualService's first matching `tcp` route, else the host's default route
/// (its endpoints, balanced under its DestinationRule). Otherwise `Passthrough` (the original
/// destination).
pub fn route_tcp(
    snap: &Snapshot,
    dst: SocketAddr,
    sni: Option<&str>,
    rng: &mut impl rand::Rng,
) -> Decision {
    if let Some(sni) = sni.filter(|s| !s.is_empty()) {
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        let cands = candidates(&name, &snap.ctx.namespace, &snap.ctx.cluster_domain);
        return match best_l4(snap, &cands, true, dst, Some(&name))
            .filter(|(vs, _)| egress_allows(snap, &vs.meta, &vs.hosts, dst.port()))
        {
            Some((vs, r)) => l4_forward(snap, vs, r, dst, &cands, rng),
            None => passthrough_unless_registry_only(snap, dst, Some(&cands)),
        };
    }
    // Opaque TCP: the host is known by the virtual address the client connected to: a
    // ServiceEntry's `addresses`, or a Kubernetes Service's ClusterIP (from discovery).
    let port = dst.port();
    if let Some(se) = snap
        .service_entries
        .iter()
        .find(|se| se.addresses.iter().any(|n| n.contains(&dst.ip())))
    {
        if let Some((vs, r)) = best_l4(snap, &se.hosts, false, dst, None)
            .filter(|(vs, _)| egress_allows(snap, &vs.meta, &vs.hosts, port))
        {
            return l4_forward(snap, vs, r, dst, &se.hosts, rng);
        }
        // No tcp route: the entry's default route, on a port it declares and with endpoints
        // (else the original destination, as before any rule).
        let declared = se.ports.is_empty() || se.ports.iter().any(|p| p.number == port);
        if !declared || !egress_allows(snap, &se.meta, &se.hosts, port) {
            return passthrough_unless_registry_only(snap, dst, None);
        }
        let Some(host) = se
            .hosts
            .iter()
            .find(|h| snap.endpoints.has_port(h, port) == Some(true))
        else {
            return passthrough_unless_registry_only(snap, dst, None);
        };
        return default_route(snap, host.clone(), dst, false);
    }
    let Some(fqdn) = snap.endpoints.host_of_ip(dst.ip()) else {
        return passthrough_unless_registry_only(snap, dst, None);
    };
    let hosts = std::slice::from_ref(&fqdn);
    if let Some((vs, r)) = best_l4(snap, hosts, false, dst, None)
        .filter(|(vs, _)| egress_allows(snap, &vs.meta, &vs.hosts, port))
    {
        return l4_forward(snap, vs, r, dst, hosts, rng);
    }
    let visible = snap.sidecar.as_ref().is_none_or(|sc| {
        let ns = fqdn.split('.').nth(1).unwrap_or("");
        crate::rules::in_egress_scope_on_port(sc, ns, hosts, port)
    });
    if !visible {
        return passthrough_unless_registry_only(snap, dst, None);
    }
    // The Service's default route: its endpoints balanced by the proxy under its
    // DestinationRule (a port the Service does not declare passes through).
    default_route(snap, fqdn, dst, true)
}

/// The most specific VirtualService with `tcp` (or `tls`) routes for the names, and its first
/// route with a match block that holds (or without match blocks).
fn best_l4<'a>(
    snap: &'a Snapshot,
    cands: &[String],
    tls: bool,
    dst: SocketAddr,
    sni: Option<&str>,
) -> Option<(&'a VirtualService, &'a crate::rules::L4Route)> {
    let mut best: Option<(usize, &VirtualService)> = None;
    for vs in &snap.virtual_services {
        let routes = if tls { &vs.tls } else { &vs.tcp };
        if routes.is_empty() {
            continue;
        }
        for h in &vs.hosts {
            for c in cands {
                if let Some(score) = match_score(h, c) {
                    if best.is_none_or(|(b, _)| score > b) {
                        best = Some((score, vs));
                    }
                }
            }
        }
    }
    let (_, vs) = best?;
    let routes = if tls { &vs.tls } else { &vs.tcp };
    let mesh = |g: &[String]| g.is_empty() || g.iter().any(|x| x == "mesh");
    let route = routes.iter().find(|r| {
        if r.matches.is_empty() {
            return mesh(&vs.gateways);
        }
        r.matches.iter().any(|m| {
            let g = if m.gateways.is_empty() {
                &vs.gateways
            } else {
                &m.gateways
            };
            mesh(g) && l4_match_holds(snap, m, dst, sni)
        })
    })?;
    Some((vs, route))
}

/// Route a TCP connection a gateway accepted (`sni`: the ClientHello's name of a TLS one) by one
/// given VirtualService (the gateway's choice): its first `tls` route (`tls_routes`: TLS passed
/// through) or `tcp` route (opaque TCP, or TLS the gateway terminated) whose match blocks are bound to `gateway` (`namespace/name`; a
/// match without `gateways` takes the VirtualService's) and hold; a route without match blocks
/// holds when the VirtualService is bound to it. `dst` carries the Gateway port. The
/// destination is never "what the client addressed": with no endpoint list it is resolved by
/// DNS. `None`: no route holds.
pub fn route_l4_bound(
    snap: &Snapshot,
    vs: &VirtualService,
    sni: Option<&str>,
    tls_routes: bool,
    dst: SocketAddr,
    gateway: &str,
    rng: &mut impl rand::Rng,
) -> Option<Decision> {
    let ns = vs.meta.namespace.as_str();
    let gw = [gateway.to_string()];
    let routes = if tls_routes { &vs.tls } else { &vs.tcp };
    let r = routes.iter().find(|r| {
        if r.matches.is_empty() {
            return bound_to(ns, &vs.gateways, &gw);
        }
        r.matches.iter().any(|m| {
            let g = if m.gateways.is_empty() {
                &vs.gateways
            } else {
                &m.gateways
            };
            bound_to(ns, g, &gw) && l4_match_holds(snap, m, dst, sni)
        })
    })?;
    Some(l4_forward(snap, vs, r, dst, &[], rng))
}

/// A connection sent to a service the registry knows (a gateway's `AUTO_PASSTHROUGH`: the
/// destination named by the client's SNI, no VirtualService): `host`'s endpoints on `port`,
/// narrowed to `subset`'s labels. A host no endpoint source knows is refused (never resolved by
/// DNS: the client must not make the gateway connect anywhere it names).
pub fn forward_to_known(snap: &Snapshot, host: &str, subset: Option<&str>, port: u16) -> Decision {
    let d = crate::kinds::Destination {
        host: host.to_string(),
        subset: subset.map(str::to_string),
        port: Some(port),
    };
    match destination_endpoints(snap, &d, port) {
        Ok(eps) if eps.is_empty() => Decision::Deny {
            status: 404,
            reason: format!("host {host} port {port} is not known to the registry"),
        },
        Ok(endpoints) => Decision::Forward(Forward::plain(d.host, d.subset, port, endpoints)),
        Err(reason) => Decision::Deny {
            status: 503,
            reason,
        },
    }
}

/// Do the conditions of one `tcp`/`tls` match block hold for this connection?
fn l4_match_holds(
    snap: &Snapshot,
    m: &crate::rules::L4Match,
    dst: SocketAddr,
    sni: Option<&str>,
) -> bool {
    m.port.is_none_or(|p| p == dst.port())
        && (m.destination_subnets.is_empty()
            || m.destination_subnets.iter().any(|n| n.contains(&dst.ip())))
        && m.source_labels
            .iter()
            .all(|(k, v)| snap.ctx.pod_labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| ns == &snap.ctx.namespace)
        && (m.sni_hosts.is_empty()
            || sni.is_some_and(|s| m.sni_hosts.iter().any(|h| match_score(h, s).is_some())))
}

fn l4_forward(
    snap: &Snapshot,
    vs: &VirtualService,
    r: &crate::rules::L4Route,
    dst: SocketAddr,
    cands: &[String],
    rng: &mut impl rand::Rng,
) -> Decision {
    let Some(wd) = pick_destination(&r.route, rng) else {
        return Decision::Passthrough;
    };
    let d = &wd.destination;
    let port = d
        .port
        .unwrap_or_else(|| default_port(snap, &d.host, dst.port()));
    let endpoints = match destination_endpoints(snap, d, port) {
        Ok(eps) => eps,
        Err(reason) => {
            return Decision::Deny {
                status: 503,
                reason,
            }
        }
    };
    let addressed = cands.iter().any(|c| c == &d.host) && port == dst.port();
    Decision::Forward(Forward {
        virtual_service: Some(vs.meta.key()),
        resolve_by_dns: endpoints.is_empty() && !addressed,
        ..Forward::plain(d.host.clone(), d.subset.clone(), port, endpoints)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{snapshot_from_yaml, LoadContext};
    use rand::SeedableRng;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn ctx() -> LoadContext {
        LoadContext {
            pod_labels: [("app".to_string(), "productpage".to_string())].into(),
            ..LoadContext::default()
        }
    }

    fn snap(yaml: &str) -> Snapshot {
        match snapshot_from_yaml(&[("t.yaml", yaml)], &ctx(), 1) {
            Ok(s) => s,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn req_with<'a>(
        authority: &'a str,
        method: &'a str,
        path: &'a str,
        headers: &'a http::HeaderMap,
        port: u16,
    ) -> RequestInfo<'a> {
        RequestInfo {
            authority,
            method,
            path,
            headers,
            dst: SocketAddr::from(([10, 0, 0, 1], port)),
        }
    }

    fn fwd(d: Decision) -> Forward {
        match d {
            Decision::Forward(f) => f,
            other => panic!("expected Forward, got {other:?}"),
        }
    }

    const MATCHES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - name: exact
    match: [{uri: {exact: /exact}}]
    route: [{destination: {host: exact}}]
  - name: ci
    match: [{uri: {prefix: /CaSe}, ignoreUriCase: true}]
    route: [{destination: {host: ci}}]
  - name: regex
    match: [{uri: {regex: "/r/[0-9]+"}}]
    route: [{destination: {host: regex}}]
  - name: and
    match: [{uri: {prefix: /and}, method: {exact: POST}, headers: {x-a: {exact: "1"}}}]
    route: [{destination: {host: and}}]
  - name: or
    match: [{headers: {x-or: {exact: a}}}, {queryParams: {or: {exact: b}}}]
    route: [{destination: {host: or}}]
  - name: without
    match: [{uri: {prefix: /without}, withoutHeaders: {x-debug: {exact: "1"}}}]
    route: [{destination: {host: without}}]
  - name: absent
    match: [{uri: {prefix: /absent}, withoutHeaders: {x-debug: {}}}]
    route: [{destination: {host: absent}}]
  - name: present-prefix
    match: [{uri: {prefix: /pp}, headers: {x-pp: {prefix: ""}}}]
    route: [{destination: {host: pp}}]
  - name: present-star
    match: [{uri: {prefix: /ps}, headers: {x-ps: {regex: "*"}}}]
    route: [{destination: {host: ps}}]
  - name: present
    match: [{headers: {x-present: {}}}]
    route: [{destination: {host: present}}]
  - name: port
    match: [{port: 8080}]
    route: [{destination: {host: port}}]
  - name: labels
    match: [{uri: {prefix: /labels}, sourceLabels: {app: productpage}}]
    route: [{destination: {host: labels}}]
  - name: otherlabels
    match: [{uri: {prefix: /other}, sourceLabels: {app: reviews}}]
    route: [{destination: {host: otherlabels}}]
  - name: authority
    match: [{authority: {prefix: "api:9"}}]
    route: [{destination: {host: authority}}]
  - name: gw
    match: [{uri: {prefix: /gw}, gateways: [some-gateway]}]
    route: [{destination: {host: gw}}]
  - name: hdrprefix
    match: [{headers: {user-agent: {prefix: curl/}}}]
    route: [{destination: {host: hdrprefix}}]
  - name: default
    route: [{destination: {host: default}}]
"#;

    #[test]
    fn match_semantics_table() {
        let s = snap(MATCHES);
        // (authority, method, path, headers, dst port, expected route name)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            u16,
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            ("api", "GET", "/exact", &[], 80, "exact"),
            ("api", "GET", "/exact/no", &[], 80, "default"),
            ("api", "GET", "/exact?x=1", &[], 80, "exact"),
            ("api", "GET", "/case/x", &[], 80, "ci"),
            ("api", "GET", "/CASE", &[], 80, "ci"),
            ("api", "GET", "/r/123", &[], 80, "regex"),
            ("api", "GET", "/r/12a", &[], 80, "default"),
            ("api", "GET", "/x/r/1", &[], 80, "default"),
            ("api", "POST", "/and", &[("x-a", "1")], 80, "and"),
            ("api", "GET", "/and", &[("x-a", "1")], 80, "default"),
            ("api", "POST", "/and", &[("x-a", "2")], 80, "default"),
            ("api", "GET", "/", &[("x-or", "a")], 80, "or"),
            ("api", "GET", "/?or=b", &[], 80, "or"),
            ("api", "GET", "/?or=bb", &[], 80, "default"),
            ("api", "GET", "/?z=1&or=b", &[], 80, "or"),
            // Envoy's inverted matcher: an absent header does not satisfy withoutHeaders.
            ("api", "GET", "/without", &[], 80, "default"),
            ("api", "GET", "/absent", &[], 80, "absent"),
            ("api", "GET", "/absent", &[("x-debug", "")], 80, "default"),
            ("api", "GET", "/pp", &[("x-pp", "")], 80, "present-prefix"),
            ("api", "GET", "/pp", &[], 80, "default"),
            (
                "api",
                "GET",
                "/ps",
                &[("x-ps", "anything")],
                80,
                "present-star",
            ),
            ("api", "GET", "/ps", &[], 80, "default"),
            ("api", "GET", "/without", &[("x-debug", "2")], 80, "without"),
            ("api", "GET", "/without", &[("x-debug", "1")], 80, "default"),
            ("api", "GET", "/", &[("x-present", "")], 80, "present"),
            ("api", "GET", "/", &[], 8080, "port"),
            ("api", "GET", "/labels", &[], 80, "labels"),
            ("api", "GET", "/other", &[], 80, "default"),
            ("api:9080", "GET", "/", &[], 80, "authority"),
            (
                "api.default.svc.cluster.local:9080",
                "GET",
                "/",
                &[],
                80,
                "default",
            ),
            ("api", "GET", "/gw", &[], 80, "default"),
            (
                "api",
                "GET",
                "/",
                &[("user-agent", "curl/8.0")],
                80,
                "hdrprefix",
            ),
            (
                "API.default",
                "GET",
                "/",
                &[("User-Agent", "CURL/8.0")],
                80,
                "default",
            ),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for (authority, method, path, hdrs, port, want) in cases {
            let mut h = http::HeaderMap::new();
            for (k, v) in *hdrs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            let r = req_with(authority, method, path, &h, *port);
            let f = fwd(route(&s, &r, &mut rng));
            assert_eq!(
                f.route_name.as_deref(),
                Some(*want),
                "{authority} {method} {path} {hdrs:?} {port}"
            );
            assert_eq!(f.virtual_service.as_deref(), Some("default/api"));
        }
    }

    #[test]
    fn host_selection_most_specific_wins() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild}
spec:
  hosts: ["*.example.com"]
  http: [{name: wild, route: [{destination: {host: wild.example.com}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: deeper}
spec:
  hosts: ["*.api.example.com"]
  http: [{name: deeper, route: [{destination: {host: deeper.example.com}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: exact}
spec:
  hosts: [v1.api.example.com]
  http: [{name: exact, route: [{destination: {host: exact.example.com}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other-ns, namespace: prod}
spec:
  hosts: [reviews]
  http: [{name: prod-reviews, route: [{destination: {host: reviews}}]}]
"#,
        );
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cases = [
            ("v1.api.example.com", Some("exact")),
            ("v1.api.example.com:443", Some("exact")),
            ("v2.api.example.com", Some("deeper")),
            ("a.b.api.example.com", Some("deeper")),
            ("www.example.com", Some("wild")),
            ("example.com", None),
            ("reviews.prod", Some("prod-reviews")),
            ("reviews.prod.svc", Some("prod-reviews")),
            ("reviews.prod.svc.cluster.local:9080", Some("prod-reviews")),
        ];
        for (authority, want) in cases {
            let d = route(&s, &req_with(authority, "GET", "/", &h, 80), &mut rng);
            match want {
                Some(name) => assert_eq!(fwd(d).route_name.as_deref(), Some(name), "{authority}"),
                None => assert_eq!(d, Decision::Passthrough, "{authority}"),
            }
        }
        // No VirtualService in the proxy's namespace: the Service's default route (this was a
        // Passthrough before default routes existed).
        let f = fwd(route(
            &s,
            &req_with("reviews", "GET", "/", &h, 80),
            &mut rng,
        ));
        assert_eq!(f.host, "reviews.default.svc.cluster.local");
        assert_eq!((f.route_name, f.virtual_service), (None, None));
        // The prod VirtualService's short destination host resolves in *its* namespace.
        let f = fwd(route(
            &s,
            &req_with("reviews.prod", "GET", "/", &h, 9080),
            &mut rng,
        ));
        assert_eq!(f.host, "reviews.prod.svc.cluster.local");
        assert!(!f.resolve_by_dns, "same service and port as addressed");
        let f = fwd(route(
            &s,
            &req_with("www.example.com", "GET", "/", &h, 80),
            &mut rng,
        ));
        assert!(
            f.resolve_by_dns,
            "routed to another host without known endpoints"
        );
    }

    #[test]
    fn short_names_resolve_in_the_proxy_namespace() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{name: in-default, route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews]
  http: [{name: in-prod, route: [{destination: {host: reviews}}]}]
"#;
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for (ns, authority, want) in [
            ("default", "reviews", "in-default"),
            ("prod", "reviews", "in-prod"),
            ("prod", "reviews.default", "in-default"),
            ("default", "reviews.prod:9080", "in-prod"),
        ] {
            let ctx = LoadContext {
                namespace: ns.to_string(),
                ..LoadContext::default()
            };
            let s = snapshot_from_yaml(&[("t.yaml", yaml)], &ctx, 1).unwrap();
            let f = fwd(route(
                &s,
                &req_with(authority, "GET", "/", &h, 9080),
                &mut rng,
            ));
            assert_eq!(f.route_name.as_deref(), Some(want), "{ns} {authority}");
            assert_eq!(
                f.host,
                format!("reviews.{}.svc.cluster.local", &want[3..]),
                "{ns} {authority}"
            );
        }
        // Another cluster domain.
        let ctx = LoadContext {
            cluster_domain: "corp.internal".to_string(),
            ..LoadContext::default()
        };
        let s = snapshot_from_yaml(&[("t.yaml", yaml)], &ctx, 1).unwrap();
        let f = fwd(route(
            &s,
            &req_with("reviews", "GET", "/", &h, 9080),
            &mut rng,
        ));
        assert_eq!(f.host, "reviews.default.svc.corp.internal");
    }

    #[test]
    fn path_normalization_table() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a//b/", "/a//b/"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/%41%62c", "/Abc"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a\\..\\b", "/b"),
            ("/x?a=../b", "/x?a=../b"),
            ("/a/../b?q=1", "/b?q=1"),
            ("*", "*"),
            ("/ünï/./x", "/ünï/x"),
            ("/%", "/%"),
            ("/%4", "/%4"),
            ("/%zz", "/%zz"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input), want, "{input}");
            // The shortcut never skips a path normalization would change.
            if is_normal_path(input) {
                assert_eq!(input, want, "{input}");
            }
        }
        for p in [
            "/",
            "/a/b",
            "/a//b/",
            "/x?a=../b",
            "*",
            "/.well-known/x",
            "/a.b/c.",
        ] {
            assert!(
                !is_normal_path(p) || normalize_path(p) == p,
                "{p}: {}",
                normalize_path(p)
            );
        }
        assert!(is_normal_path("/a/b?x=%2e"));
    }

    #[test]
    fn routes_match_the_normalized_path() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: n}
spec:
  hosts: [n]
  http:
  - name: admin
    match: [{uri: {prefix: /admin}}]
    directResponse: {status: 403}
  - name: api
    match: [{uri: {prefix: /api}}]
    route: [{destination: {host: n}}]
"#,
        );
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for path in ["/api/../admin", "/api/%2e%2e/admin", "/admin"] {
            assert_eq!(
                route(&s, &req_with("n", "GET", path, &h, 80), &mut rng),
                Decision::DirectResponse {
                    status: 403,
                    body: String::new()
                },
                "{path}"
            );
        }
        let f = fwd(route(
            &s,
            &req_with("n", "GET", "/api/./v1/../v2?x=1", &h, 80),
            &mut rng,
        ));
        assert_eq!(f.uri_rewrite.as_deref(), Some("/api/v2?x=1"));
        let f = fwd(route(
            &s,
            &req_with("n", "GET", "/api/v2", &h, 80),
            &mut rng,
        ));
        assert_eq!(f.uri_rewrite, None);
    }

    #[test]
    fn rewrite_semantics_table() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rw}
spec:
  hosts: [rw]
  http:
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: newhost}
    route: [{destination: {host: rw}}]
  - match: [{uri: {exact: /exact}}]
    rewrite: {uri: /replaced}
    route: [{destination: {host: rw}}]
  - match: [{uri: {prefix: /CI}, ignoreUriCase: true}]
    rewrite: {uri: /ci}
    route: [{destination: {host: rw}}]
  - match: [{uri: {prefix: /rx}}]
    rewrite: {uriRegexRewrite: {match: "^/rx/([a-z]+)/(.*)$", rewrite: "/\\2/\\1"}}
    route: [{destination: {host: rw}}]
  - rewrite: {uri: /v2/}
    route: [{destination: {host: rw}}]
"#,
        );
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cases = [
            ("/old/x?q=1", Some("/new/x?q=1"), Some("newhost")),
            ("/oldish", Some("/newish"), Some("newhost")),
            ("/exact", Some("/replaced"), None),
            ("/ci/a", Some("/ci/a"), None),
            ("/Ci/b", Some("/ci/b"), None),
            ("/rx/abc/def", Some("/def/abc"), None),
            ("/other", Some("/v2/other"), None),
        ];
        for (path, uri, authority) in cases {
            let f = fwd(route(&s, &req_with("rw", "GET", path, &h, 80), &mut rng));
            assert_eq!(f.uri_rewrite.as_deref(), uri, "{path}");
            assert_eq!(f.authority_rewrite.as_deref(), authority, "{path}");
        }
    }

    #[test]
    fn redirect_and_direct_response() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rd}
spec:
  hosts: [rd]
  http:
  - match: [{uri: {exact: /a}}]
    redirect: {uri: /b}
  - match: [{uri: {exact: /c}}]
    redirect: {uri: /d, authority: other.example.com, redirectCode: 302, scheme: https}
  - match: [{uri: {exact: /e}}]
    redirect: {port: 8443}
  - match: [{uri: {exact: /f}}]
    redirect: {derivePort: FROM_REQUEST_PORT, authority: x.example.com}
  - match: [{uri: {exact: /g}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
"#,
        );
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cases = [
            (
                "rd",
                "/a?x=1",
                Decision::Redirect {
                    status: 301,
                    location: "http://rd/b?x=1".into(),
                },
            ),
            (
                "rd:9080",
                "/a",
                Decision::Redirect {
                    status: 301,
                    location: "http://rd:9080/b".into(),
                },
            ),
            (
                "rd",
                "/c",
                Decision::Redirect {
                    status: 302,
                    location: "https://other.example.com/d".into(),
                },
            ),
            (
                "rd:80",
                "/e",
                Decision::Redirect {
                    status: 301,
                    location: "http://rd:8443/e".into(),
                },
            ),
            (
                "rd:9080",
                "/f",
                Decision::Redirect {
                    status: 301,
                    location: "http://x.example.com:9080/f".into(),
                },
            ),
            (
                "rd",
                "/g",
                Decision::DirectResponse {
                    status: 418,
                    body: "short and stout".into(),
                },
            ),
            (
                "rd",
                "/zzz",
                Decision::Deny {
                    status: 404,
                    reason: "no route of VirtualService default/rd matched".into(),
                },
            ),
        ];
        for (authority, path, want) in cases {
            assert_eq!(
                route(&s, &req_with(authority, "GET", path, &h, 80), &mut rng),
                want,
                "{authority}{path}"
            );
        }
    }

    #[test]
    fn host_header_set_is_an_authority_rewrite() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: h}
spec:
  hosts: [h, g]
  http:
  - match: [{authority: {prefix: h}}]
    headers: {request: {set: {Host: upstream.example.com, x-a: "1"}}}
    route: [{destination: {host: h}}]
  - headers: {request: {set: {host: from-header}}}
    rewrite: {authority: from-rewrite}
    route: [{destination: {host: h}}]
"#,
        );
        let hm = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let f = fwd(route(&s, &req_with("h", "GET", "/", &hm, 80), &mut rng));
        assert_eq!(f.authority_rewrite.as_deref(), Some("upstream.example.com"));
        assert_eq!(
            f.request_headers.set,
            vec![("x-a".to_string(), "1".to_string())]
        );
        let f = fwd(route(&s, &req_with("g", "GET", "/", &hm, 80), &mut rng));
        assert_eq!(f.authority_rewrite.as_deref(), Some("from-rewrite"));
        assert!(f.request_headers.set.is_empty());
    }

    #[test]
    fn headers_policy_and_names() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: h}
spec:
  hosts: [h]
  http:
  - name: main
    match: [{name: jason, headers: {end-user: {exact: jason}}}]
    headers:
      request: {set: {x-route: main}, remove: [x-internal]}
      response: {add: {x-served-by: remora}}
    timeout: 2s
    retries: {attempts: 2, retryOn: "5xx"}
    route:
    - destination: {host: h}
      headers: {request: {set: {x-dest: h}}}
  - name: rest
    route: [{destination: {host: h}}]
"#,
        );
        let mut hm = http::HeaderMap::new();
        hm.insert("end-user", http::HeaderValue::from_static("jason"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let f = fwd(route(&s, &req_with("h", "GET", "/", &hm, 80), &mut rng));
        assert_eq!(f.route_name.as_deref(), Some("main.jason"));
        assert_eq!(
            f.request_headers.set,
            vec![
                ("x-route".to_string(), "main".to_string()),
                ("x-dest".to_string(), "h".to_string())
            ]
        );
        assert_eq!(f.request_headers.remove, vec!["x-internal".to_string()]);
        assert_eq!(
            f.response_headers.add,
            vec![("x-served-by".to_string(), "remora".to_string())]
        );
        assert_eq!(f.policy.timeout, Some(Duration::from_secs(2)));
        assert_eq!(f.policy.retries.as_ref().map(|r| r.attempts), Some(2));
        let f = fwd(route(
            &s,
            &req_with("h", "GET", "/", &http::HeaderMap::new(), 80),
            &mut rng,
        ));
        assert_eq!(f.route_name.as_deref(), Some("rest"));
        assert_eq!(f.policy, Policy::default());
    }

    #[test]
    fn service_entry_endpoints_and_subsets() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.10, ports: {http: 8081}, labels: {version: v1}}
  - {address: 127.0.0.11, ports: {http: 8082}, labels: {version: v2}, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend.internal
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend.internal]
  http:
  - match: [{headers: {x-v: {exact: "2"}}}]
    route: [{destination: {host: backend.internal, subset: v2}}]
  - match: [{headers: {x-v: {exact: "3"}}}]
    route: [{destination: {host: backend.internal, subset: v3}}]
  - match: [{headers: {x-v: {exact: "9"}}}]
    route: [{destination: {host: backend.internal, subset: v9}}]
  - route: [{destination: {host: backend.internal}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain}
spec:
  hosts: [plain.internal]
  ports: [{number: 9000, name: tcp-x}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.12}]
"#,
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let hv = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("x-v", http::HeaderValue::from_static(v));
            h
        };
        let h2 = hv("2");
        let f = fwd(route(
            &s,
            &req_with("backend.internal", "GET", "/", &h2, 80),
            &mut rng,
        ));
        assert_eq!(f.subset.as_deref(), Some("v2"));
        assert_eq!(f.endpoints.len(), 1);
        assert_eq!(f.endpoints[0].addr.to_string(), "127.0.0.11:8082");
        assert_eq!(f.endpoints[0].weight, 3);
        let none = http::HeaderMap::new();
        let f = fwd(route(
            &s,
            &req_with("backend.internal", "GET", "/", &none, 80),
            &mut rng,
        ));
        assert_eq!(f.endpoints.len(), 2);
        let h3 = hv("3");
        assert_eq!(
            route(
                &s,
                &req_with("backend.internal", "GET", "/", &h3, 80),
                &mut rng
            ),
            Decision::Deny {
                status: 503,
                reason: "no endpoints for host backend.internal subset \"v3\" port 80".into()
            }
        );
        let h9 = hv("9");
        assert_eq!(
            route(
                &s,
                &req_with("backend.internal", "GET", "/", &h9, 80),
                &mut rng
            ),
            Decision::Deny {
                status: 503,
                reason:
                    "subset \"v9\" of host backend.internal is not defined by any DestinationRule"
                        .into()
            }
        );
        // No VirtualService: the ServiceEntry's endpoints for the addressed port.
        let f = fwd(route(
            &s,
            &req_with("plain.internal:9000", "GET", "/", &none, 9000),
            &mut rng,
        ));
        assert_eq!(f.endpoints[0].addr.to_string(), "127.0.0.12:9000");
        assert_eq!(f.virtual_service, None);
        // A port the ServiceEntry does not declare is not captured by it.
        assert_eq!(
            route(
                &s,
                &req_with("plain.internal:9001", "GET", "/", &none, 9001),
                &mut rng
            ),
            Decision::Passthrough
        );
        // A Service no endpoint source knows: its default route to the original destination
        // (a Passthrough before default routes existed; now its DestinationRule applies).
        let f = fwd(route(
            &s,
            &req_with("unknown", "GET", "/", &none, 80),
            &mut rng,
        ));
        assert_eq!(f.host, "unknown.default.svc.cluster.local");
        assert!(f.endpoints.is_empty() && !f.resolve_by_dns);
        // No host at all: original destination.
        assert_eq!(
            route(&s, &req_with("", "GET", "/", &none, 80), &mut rng),
            Decision::Passthrough
        );
    }

    #[test]
    fn weights_are_proportional() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: w}
spec:
  hosts: [w]
  http:
  - route:
    - {destination: {host: w, subset: a}, weight: 70}
    - {destination: {host: w, subset: b}, weight: 20}
    - {destination: {host: w, subset: c}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: w}
spec:
  host: w
  subsets: [{name: a}, {name: b}, {name: c}]
"#,
        );
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let n = 10_000;
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            let f = fwd(route(&s, &req_with("w", "GET", "/", &h, 80), &mut rng));
            *counts.entry(f.subset.unwrap_or_default()).or_insert(0u32) += 1;
        }
        // Binomial standard deviation sqrt(n p (1-p)); allow 4 sigma.
        for (subset, p) in [("a", 0.7), ("b", 0.2), ("c", 0.1)] {
            let got = counts.get(subset).copied().unwrap_or(0) as f64;
            let mean = n as f64 * p;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (got - mean).abs() <= 4.0 * sigma,
                "{subset}: {got} vs {mean} ± {}",
                4.0 * sigma
            );
        }
    }

    /// `REGISTRY_ONLY` holds for every protocol, as Istio's BlackHoleCluster does: an HTTP
    /// request whose Host is an IP literal or empty is checked by address, opaque TCP by the
    /// address it connected to, TLS by its SNI (or address); registered addresses (a Service's
    /// ClusterIP, a ServiceEntry address or endpoint) and names pass.
    #[test]
    fn registry_only_holds_for_ip_hosts_empty_hosts_tcp_and_tls() {
        let rules = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  addresses: [192.0.2.0/24]
  ports: [{number: 5432, name: tcp-pg}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls}]
  resolution: STATIC
  endpoints: [{address: 198.51.100.7}]
"#;
        let s = snap(rules);
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let black_hole = |d: &Decision| matches!(d, Decision::Deny { status: 502, reason } if reason.starts_with(BLACK_HOLE));
        let at = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
        // HTTP with an IP literal Host: by address.
        let mut r = req_with("203.0.113.9", "GET", "/", &h, 80);
        r.dst = at([203, 0, 113, 9], 80);
        let d = route(&s, &r, &mut rng);
        assert!(black_hole(&d), "{d:?}");
        let mut r = req_with("192.0.2.10:8080", "GET", "/", &h, 8080);
        r.dst = at([192, 0, 2, 10], 8080);
        assert_eq!(route(&s, &r, &mut rng), Decision::Passthrough);
        // HTTP without Host: by the address connected to.
        let mut r = req_with("", "GET", "/", &h, 80);
        r.dst = at([203, 0, 113, 9], 80);
        let d = route(&s, &r, &mut rng);
        assert!(black_hole(&d), "{d:?}");
        r.dst = at([198, 51, 100, 7], 80);
        assert_eq!(route(&s, &r, &mut rng), Decision::Passthrough);
        // Opaque TCP: by address.
        let d = route_tcp(&s, at([203, 0, 113, 9], 5432), None, &mut rng);
        assert!(black_hole(&d), "{d:?}");
        let d = route_tcp(&s, at([192, 0, 2, 44], 5432), None, &mut rng);
        assert!(!black_hole(&d), "{d:?}");
        // TLS: by SNI, or by a registered address.
        let d = route_tcp(
            &s,
            at([203, 0, 113, 9], 443),
            Some("evil.example.org"),
            &mut rng,
        );
        assert!(black_hole(&d), "{d:?}");
        let d = route_tcp(
            &s,
            at([203, 0, 113, 9], 443),
            Some("api.example.com"),
            &mut rng,
        );
        assert!(!black_hole(&d), "{d:?}");
        let d = route_tcp(
            &s,
            at([198, 51, 100, 7], 443),
            Some("evil.example.org"),
            &mut rng,
        );
        assert!(!black_hole(&d), "{d:?}");
        // Without REGISTRY_ONLY everything unknown passes through.
        let open = snap(&rules.replace("REGISTRY_ONLY", "ALLOW_ANY"));
        let d = route_tcp(&open, at([203, 0, 113, 9], 5432), None, &mut rng);
        assert_eq!(d, Decision::Passthrough);
        let d = route_tcp(
            &open,
            at([203, 0, 113, 9], 443),
            Some("evil.example.org"),
            &mut rng,
        );
        assert_eq!(d, Decision::Passthrough);
        let mut r = req_with("", "GET", "/", &h, 80);
        r.dst = at([203, 0, 113, 9], 80);
        assert_eq!(route(&open, &r, &mut rng), Decision::Passthrough);
    }

    #[test]
    fn sidecar_registry_only_and_scope() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress: [{hosts: ["./*"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: other}
spec:
  hosts: [ext.example.com]
  ports: [{number: 80, name: http}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local}
spec:
  hosts: [local.example.com]
  ports: [{number: 80, name: http}]
"#,
        );
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(s.service_entries.len(), 1);
        assert_eq!(
            s.ignored
                .iter()
                .filter(|i| i.reason == "outside the Sidecar's egress hosts")
                .count(),
            1
        );
        // NONE resolution: known host, its default route to the original destination (a
        // Passthrough before default routes existed, so its DestinationRule did not apply).
        let f = fwd(route(
            &s,
            &req_with("local.example.com", "GET", "/", &h, 80),
            &mut rng,
        ));
        assert_eq!((f.host.as_str(), f.port), ("local.example.com", 80));
        assert!(f.endpoints.is_empty() && !f.resolve_by_dns);
        assert_eq!(
            route(&s, &req_with("ext.example.com", "GET", "/", &h, 80), &mut rng),
            Decision::Deny {
                status: 502,
                reason: "BlackHoleCluster: host \"ext.example.com\" is not in the registry and Sidecar default/default sets outboundTrafficPolicy REGISTRY_ONLY".into()
            }
        );
        // A Service of the proxy's namespace (inside `./*`): its default route.
        let f = fwd(route(
            &s,
            &req_with("reviews", "GET", "/", &h, 80),
            &mut rng,
        ));
        assert_eq!(f.host, "reviews.default.svc.cluster.local");
        assert_eq!(f.virtual_service, None);
        // An IP literal is checked by address (no Service or ServiceEntry has 10.0.0.1).
        assert_eq!(
            route(&s, &req_with("10.0.0.1:80", "GET", "/", &h, 80), &mut rng),
            Decision::Deny {
                status: 502,
                reason: "BlackHoleCluster: address 10.0.0.1 is not in the registry and Sidecar default/default sets outboundTrafficPolicy REGISTRY_ONLY".into()
            }
        );
    }

    #[test]
    fn sidecar_egress_listeners_per_port() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - port: {number: 9080}
    hosts: ["./reviews.default.svc.cluster.local"]
  - hosts: ["./ratings.default.svc.cluster.local"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{name: reviews, route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http: [{name: ratings, route: [{destination: {host: ratings}}]}]
"#,
        );
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let name = |d: Decision| match d {
            Decision::Forward(f) => f.route_name,
            _ => None,
        };
        let cases = [
            ("reviews", 9080, Some("reviews")),
            ("reviews", 8080, None),
            ("ratings", 9080, None),
            ("ratings", 8080, Some("ratings")),
        ];
        for (authority, port, want) in cases {
            let d = route(&s, &req_with(authority, "GET", "/", &h, port), &mut rng);
            assert_eq!(name(d).as_deref(), want, "{authority}:{port}");
        }
    }

    #[test]
    fn port_protocols_from_service_entries() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a}
spec:
  hosts: [a.example.com]
  addresses: [127.0.0.0/24]
  ports: [{number: 80, protocol: HTTP}, {number: 50051, name: grpc-api}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b}
spec:
  hosts: [b.example.com]
  ports: [{number: 6379, name: redis}]
  resolution: STATIC
  endpoints: [{address: 127.0.1.1, ports: {redis: 16379}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c}
spec:
  hosts: [c.example.com]
  ports: [{number: 8443, name: tls}]
"#,
        );
        let a = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
        let cases = [
            (a([127, 0, 0, 5], 80), None, Some(Protocol::Http)),
            (a([127, 0, 0, 5], 50051), None, Some(Protocol::Grpc)),
            (a([127, 0, 1, 1], 16379), None, Some(Protocol::Tcp)),
            (
                a([10, 1, 1, 1], 6379),
                Some("b.example.com"),
                Some(Protocol::Tcp),
            ),
            (a([10, 1, 1, 1], 8443), None, Some(Protocol::Tls)),
            (a([10, 1, 1, 1], 3306), None, Some(Protocol::Tcp)),
            (a([10, 1, 1, 1], 9999), None, None),
            (a([10, 1, 1, 1], 80), None, None),
        ];
        for (dst, host, want) in cases {
            assert_eq!(s.port_protocol(dst, host), want, "{dst} {host:?}");
        }
    }

    /// A discovery source added after the ServiceEntries gives Kubernetes-style services
    /// endpoints, and DestinationRule subsets select among them by labels.
    #[test]
    fn added_endpoint_source_and_subsets() {
        #[derive(Debug)]
        struct Pods;
        impl crate::rules::EndpointSource for Pods {
            fn endpoints(
                &self,
                host: &str,
                port: u16,
                subset: Option<&BTreeMap<String, String>>,
            ) -> Option<Vec<Endpoint>> {
                if host != "reviews.default.svc.cluster.local" {
                    return None;
                }
                let pods = [
                    ("127.0.1.1", "v1"),
                    ("127.0.1.2", "v2"),
                    ("127.0.1.3", "v2"),
                ];
                Some(
                    pods.iter()
                        .map(|(ip, v)| Endpoint {
                            addr: SocketAddr::new(ip.parse().unwrap(), port),
                            labels: [("version".to_string(), v.to_string())].into(),
                            weight: 1,
                        })
                        .filter(|e| {
                            subset.is_none_or(|s| s.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                        })
                        .collect(),
                )
            }
        }
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#,
        )
        .with_endpoint_source(std::sync::Arc::new(Pods));
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let f = fwd(route(
            &s,
            &req_with("reviews:9080", "GET", "/", &h, 9080),
            &mut rng,
        ));
        let addrs: Vec<String> = f.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, vec!["127.0.1.2:9080", "127.0.1.3:9080"]);
    }

    #[test]
    fn tcp_and_tls_routes() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.internal]
  addresses: [10.20.0.0/24]
  ports: [{number: 5432, name: tcp-pg}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.41, labels: {role: primary}}
  - {address: 127.0.0.42, labels: {role: replica}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db.internal
  subsets: [{name: primary, labels: {role: primary}}, {name: replica, labels: {role: replica}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.internal]
  tcp:
  - match: [{port: 5433}]
    route: [{destination: {host: db.internal, subset: replica, port: {number: 5432}}}]
  - route: [{destination: {host: db.internal, subset: primary}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls}
spec:
  hosts: ["*.example.com"]
  tls:
  - match: [{sniHosts: [api.example.com], port: 443}]
    route: [{destination: {host: api-backend, port: {number: 8443}}}]
  - match: [{sniHosts: ["*.example.com"]}]
    route: [{destination: {host: other-backend}}]
"#,
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
        let f = fwd(route_tcp(&s, a([10, 20, 0, 5], 5432), None, &mut rng));
        assert_eq!(
            (f.host.as_str(), f.subset.as_deref(), f.port),
            ("db.internal", Some("primary"), 5432)
        );
        assert_eq!(
            f.endpoints
                .iter()
                .map(|e| e.addr.to_string())
                .collect::<Vec<_>>(),
            vec!["127.0.0.41:5432"]
        );
        let f = fwd(route_tcp(&s, a([10, 20, 0, 5], 5433), None, &mut rng));
        assert_eq!((f.subset.as_deref(), f.port), (Some("replica"), 5432));
        assert_eq!(f.endpoints[0].addr.to_string(), "127.0.0.42:5432");
        assert_eq!(
            route_tcp(&s, a([10, 30, 0, 5], 5432), None, &mut rng),
            Decision::Passthrough
        );
        let f = fwd(route_tcp(
            &s,
            a([10, 1, 1, 1], 443),
            Some("API.example.com"),
            &mut rng,
        ));
        assert_eq!(
            (f.host.as_str(), f.port),
            ("api-backend.default.svc.cluster.local", 8443)
        );
        assert!(f.resolve_by_dns);
        let f = fwd(route_tcp(
            &s,
            a([10, 1, 1, 1], 8443),
            Some("api.example.com"),
            &mut rng,
        ));
        assert_eq!(f.host, "other-backend.default.svc.cluster.local");
        assert_eq!(
            route_tcp(&s, a([10, 1, 1, 1], 443), Some("api.other.org"), &mut rng),
            Decision::Passthrough
        );
    }

    use crate::rules::Protocol;

    /// Pods of Services known to Kubernetes discovery (a stand-in for the chained discovery
    /// source): `reviews` and `ratings.prod` on service ports 9080 and 8080 (pod addresses
    /// keep the service port), `empty` with port 9080 only and no ready pod.
    #[derive(Debug)]
    struct ClusterPods;
    impl crate::rules::EndpointSource for ClusterPods {
        fn endpoints(
            &self,
            host: &str,
            port: u16,
            subset: Option<&BTreeMap<String, String>>,
        ) -> Option<Vec<Endpoint>> {
            let pods: &[(&str, &str)] = match host {
                "reviews.default.svc.cluster.local" => {
                    &[("10.1.0.1", "v1"), ("10.1.0.2", "v2"), ("10.1.0.3", "v3")]
                }
                "ratings.prod.svc.cluster.local" => &[("10.2.0.1", "v1")],
                "empty.default.svc.cluster.local" => &[],
                _ => return None,
            };
            if ![9080, 8080].contains(&port) {
                return Some(Vec::new());
            }
            Some(
                pods.iter()
                    .map(|(ip, v)| Endpoint {
                        addr: SocketAddr::new(ip.parse().unwrap(), port),
                        labels: [("version".to_string(), v.to_string())].into(),
                        weight: 1,
                    })
                    .filter(|e| {
                        subset.is_none_or(|s| s.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                    })
                    .collect(),
            )
        }

        fn has_port(&self, host: &str, port: u16) -> Option<bool> {
            self.endpoints(host, port, None)
                .map(|_| [9080, 8080].contains(&port))
        }

        fn host_of_ip(&self, ip: std::net::IpAddr) -> Option<String> {
            let host = match ip.to_string().as_str() {
                "10.96.0.10" => "reviews.default.svc.cluster.local",
                "10.96.0.20" => "ratings.prod.svc.cluster.local",
                _ => return None,
            };
            Some(host.to_string())
        }
    }

    #[test]
    fn opaque_tcp_to_a_cluster_ip_takes_the_service_routes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // No rules at all: the Service's default route over its pods.
        let s = snap("").with_endpoint_source(std::sync::Arc::new(ClusterPods));
        let f = fwd(route_tcp(
            &s,
            "10.96.0.10:9080".parse().unwrap(),
            None,
            &mut rng,
        ));
        assert_eq!(
            (f.host.as_str(), f.port),
            ("reviews.default.svc.cluster.local", 9080)
        );
        assert_eq!(
            addrs(&f),
            vec!["10.1.0.1:9080", "10.1.0.2:9080", "10.1.0.3:9080"]
        );
        // A port the Service does not declare, an unknown address: the original destination.
        let pass = |d: Decision| matches!(d, Decision::Passthrough);
        assert!(pass(route_tcp(
            &s,
            "10.96.0.10:3306".parse().unwrap(),
            None,
            &mut rng
        )));
        assert!(pass(route_tcp(
            &s,
            "10.96.0.99:9080".parse().unwrap(),
            None,
            &mut rng
        )));
        // A VirtualService tcp route for the Service's host moves the connection.
        let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-tcp, namespace: default}
spec:
  hosts: [reviews]
  tcp:
  - match: [{port: 9080}]
    route: [{destination: {host: ratings.prod.svc.cluster.local, port: {number: 9080}}}]
"#;
        let s = snap(vs).with_endpoint_source(std::sync::Arc::new(ClusterPods));
        let f = fwd(route_tcp(
            &s,
            "10.96.0.10:9080".parse().unwrap(),
            None,
            &mut rng,
        ));
        assert_eq!(f.host, "ratings.prod.svc.cluster.local");
        assert_eq!(f.virtual_service.as_deref(), Some("default/reviews-tcp"));
        assert_eq!(addrs(&f), vec!["10.2.0.1:9080"]);
        // A Sidecar whose egress does not list the namespace hides the Service.
        let sc = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: ["./*"]}]
"#;
        let s = snap(sc).with_endpoint_source(std::sync::Arc::new(ClusterPods));
        assert!(!pass(route_tcp(
            &s,
            "10.96.0.10:9080".parse().unwrap(),
            None,
            &mut rng
        )));
        assert!(pass(route_tcp(
            &s,
            "10.96.0.20:9080".parse().unwrap(),
            None,
            &mut rng
        )));
    }

    const REVIEWS_DR: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool: {tcp: {maxConnections: 7}}
    portLevelSettings:
    - port: {number: 8080}
      loadBalancer: {simple: ROUND_ROBIN}
      outlierDetection: {consecutive5xxErrors: 2}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

    fn addrs(f: &Forward) -> Vec<String> {
        f.endpoints.iter().map(|e| e.addr.to_string()).collect()
    }

    /// A host with a DestinationRule and no VirtualService takes its default route: all the
    /// Service's endpoints (subsets play no part), the addressed port, no route names, and the
    /// DestinationRule's trafficPolicy for that port as the data plane looks it up.
    #[test]
    fn destination_rule_only_host_gets_its_default_route() {
        let s = snap(REVIEWS_DR).with_endpoint_source(std::sync::Arc::new(ClusterPods));
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let f = fwd(route(
            &s,
            &req_with("reviews:9080", "GET", "/a/../b", &h, 9080),
            &mut rng,
        ));
        assert_eq!(f.host, "reviews.default.svc.cluster.local");
        assert_eq!((f.subset.as_deref(), f.port), (None, 9080));
        assert_eq!(
            (f.route_name.as_deref(), f.virtual_service.as_deref()),
            (None, None)
        );
        assert_eq!(
            addrs(&f),
            vec!["10.1.0.1:9080", "10.1.0.2:9080", "10.1.0.3:9080"],
            "every pod, whatever the subsets"
        );
        assert!(!f.resolve_by_dns);
        // Istio's default route: no timeout, the default retries (never a non-idempotent method).
        assert_eq!(f.policy, Policy::default());
        let retry = crate::policy::retry::effective(f.policy.retries.as_ref());
        assert_eq!(retry, crate::policy::retry::istio_default());
        assert!(!retry.explicit);
        // The path is normalized as on every route.
        assert_eq!(f.uri_rewrite.as_deref(), Some("/b"));

        // The data plane's lookup of the destination (host, no subset, port) finds the
        // DestinationRule's policy, port-level settings chosen by the addressed port.
        let dr = s
            .destination_rule(&f.host)
            .expect("reviews DestinationRule");
        let d9080 = crate::policy::traffic::resolve(dr, f.subset.as_deref(), f.port).unwrap();
        assert_eq!(
            d9080.load_balancer,
            crate::policy::lb::LbPolicy::ConsistentHash(crate::policy::lb::HashKey::Header(
                "x-user".into()
            ))
        );
        assert!(d9080.outlier_detection.is_none());
        assert_eq!(d9080.connection_pool.max_connections, 7);
        let f8080 = fwd(route(
            &s,
            &req_with(
                "reviews.default.svc.cluster.local:8080",
                "GET",
                "/",
                &h,
                8080,
            ),
            &mut rng,
        ));
        assert_eq!((f8080.host.as_str(), f8080.port), (f.host.as_str(), 8080));
        assert_eq!(
            addrs(&f8080),
            vec!["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
        );
        let d8080 = crate::policy::traffic::resolve(dr, None, f8080.port).unwrap();
        assert_eq!(d8080.load_balancer, crate::policy::lb::LbPolicy::RoundRobin);
        assert!(d8080.outlier_detection.is_some());
        assert_eq!(d8080.connection_pool.max_connections, 7);

        // A headless Service: the client addressed a pod itself; that pod is kept.
        let mut r = req_with("reviews", "GET", "/", &h, 9080);
        r.dst = "10.1.0.2:9080".parse().unwrap();
        assert_eq!(addrs(&fwd(route(&s, &r, &mut rng))), vec!["10.1.0.2:9080"]);

        // A Service discovery knows without a ready endpoint: 503.
        assert_eq!(
            route(&s, &req_with("empty", "GET", "/", &h, 9080), &mut rng),
            Decision::Deny {
                status: 503,
                reason: "no endpoints for host empty.default.svc.cluster.local port 9080".into()
            }
        );
        // A port the Service does not declare: no cluster in Istio, the original destination.
        assert_eq!(
            route(&s, &req_with("reviews", "GET", "/", &h, 7000), &mut rng),
            Decision::Passthrough
        );
        // A Service no source knows (no discovery): the original destination, policy applies.
        let f = fwd(route(
            &s,
            &req_with("details.default.svc:9080", "GET", "/", &h, 9080),
            &mut rng,
        ));
        assert_eq!(f.host, "details.default.svc.cluster.local");
        assert!(f.endpoints.is_empty() && !f.resolve_by_dns);
    }

    /// Only names of Services (or ServiceEntry hosts) get a default route: raw IPs, pod names
    /// and external names stay Passthrough; `a.b` is a Service only when it is known.
    #[test]
    fn non_service_hosts_stay_passthrough() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  host: "*.local"
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 3}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: prod}
spec:
  host: details.prod.svc.cluster.local
"#,
        )
        .with_endpoint_source(std::sync::Arc::new(ClusterPods));
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for authority in [
            "10.0.0.1:80",
            "[fd00::1]:80",
            "",
            // An external name, even with a wildcard DestinationRule that would match its
            // cluster reading (`example.com.svc.cluster.local`).
            "example.com",
            "api.example.com",
            // A pod's name under a headless Service, and a name without a namespace.
            "mysql-0.mysql.prod.svc.cluster.local",
            "x.svc.cluster.local",
        ] {
            assert_eq!(
                route(&s, &req_with(authority, "GET", "/", &h, 80), &mut rng),
                Decision::Passthrough,
                "{authority:?}"
            );
        }
        // `name.namespace` of a Service discovery knows, or one a DestinationRule names.
        let f = fwd(route(
            &s,
            &req_with("ratings.prod", "GET", "/", &h, 9080),
            &mut rng,
        ));
        assert_eq!(f.host, "ratings.prod.svc.cluster.local");
        assert_eq!(addrs(&f), vec!["10.2.0.1:9080"]);
        let f = fwd(route(
            &s,
            &req_with("details.prod:9080", "GET", "/", &h, 9080),
            &mut rng,
        ));
        assert_eq!(f.host, "details.prod.svc.cluster.local");
        assert!(f.endpoints.is_empty());
    }

    /// REGISTRY_ONLY answers 502 for unknown external names as before; Services inside the
    /// Sidecar's egress scope take their default route, those outside it pass through.
    #[test]
    fn registry_only_and_egress_scope_with_default_routes() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress: [{hosts: ["./*"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#,
        )
        .with_endpoint_source(std::sync::Arc::new(ClusterPods));
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(matches!(
            route(
                &s,
                &req_with("api.example.com", "GET", "/", &h, 80),
                &mut rng
            ),
            Decision::Deny { status: 502, .. }
        ));
        // An address no Service or ServiceEntry has: the black hole too.
        assert!(matches!(
            route(&s, &req_with("10.0.0.1", "GET", "/", &h, 80), &mut rng),
            Decision::Deny { status: 502, .. }
        ));
        let f = fwd(route(
            &s,
            &req_with("reviews", "GET", "/", &h, 9080),
            &mut rng,
        ));
        assert_eq!(addrs(&f).len(), 3);
        // Outside `./*`: not this proxy's registry view; as before, not denied either.
        assert_eq!(
            route(
                &s,
                &req_with("ratings.prod", "GET", "/", &h, 9080),
                &mut rng
            ),
            Decision::Passthrough
        );
    }

    /// A ServiceEntry host without VirtualService keeps its endpoints; with `resolution: NONE`
    /// it now takes its default route to the original destination (its DestinationRule applies).
    #[test]
    fn service_entry_hosts_take_their_default_route() {
        let s = snap(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.20}, {address: 127.0.0.21}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: tcp-pg}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext}
spec:
  host: api.example.com
  subsets: [{name: only20, labels: {x: y}}]
"#,
        );
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let f = fwd(route(
            &s,
            &req_with("api.example.com", "GET", "/", &h, 443),
            &mut rng,
        ));
        assert_eq!(addrs(&f), vec!["127.0.0.20:443", "127.0.0.21:443"]);
        assert_eq!((f.subset, f.virtual_service), (None, None));
        // Addressed at one of its endpoints: still balanced over all (as before).
        let mut r = req_with("api.example.com", "GET", "/", &h, 443);
        r.dst = "127.0.0.21:443".parse().unwrap();
        assert_eq!(
            addrs(&fwd(route(&s, &r, &mut rng))),
            vec!["127.0.0.20:443", "127.0.0.21:443"]
        );
        let f = fwd(route(
            &s,
            &req_with("db.example.com", "GET", "/", &h, 5432),
            &mut rng,
        ));
        assert_eq!((f.host.as_str(), f.port), ("db.example.com", 5432));
        assert!(f.endpoints.is_empty() && !f.resolve_by_dns);
        // An undeclared port of the external name: not captured, Passthrough.
        assert_eq!(
            route(
                &s,
                &req_with("api.example.com", "GET", "/", &h, 80),
                &mut rng
            ),
            Decision::Passthrough
        );
    }
}
