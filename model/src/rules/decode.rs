//! Decode the `spec` of the networking kinds (VirtualService, DestinationRule, ServiceEntry,
//! Sidecar) into the model. Each kind's shape is a set of typed serde structs below, carrying
//! Istio's field names once; `crate::typed::decode` reads them with field-path errors and
//! reports the fields they do not define as warnings. Istio's checks across fields, host
//! qualification and regex compilation then run on the typed value, naming the field path the
//! same way. A DestinationRule's `trafficPolicy` is decoded in the same pass, into
//! `policy::traffic::TrafficPolicySpec`, and a route's `corsPolicy` into `policy::cors::Cors`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::host::{check_host, qualify};
use crate::kinds::*;
use crate::policy::cors::{Cors, CorsSpec};
use crate::policy::traffic::{DestinationRule, Subset, TrafficPolicySpec};
pub use crate::typed::{fail, FieldError, Unknown, R};
use crate::typed::{Dur, Int, Percent, Port};

/// The context one document is decoded in.
pub struct DocCtx<'a> {
    pub namespace: &'a str,
    pub domain: &'a str,
}

impl DocCtx<'_> {
    fn host(&self, raw: &str, field: &str, allow_wildcard: bool) -> R<String> {
        if raw.trim().is_empty() {
            return fail(field, "host must not be empty");
        }
        if let Err(e) = check_host(raw.trim()) {
            return fail(field, e);
        }
        if !allow_wildcard && raw.contains('*') {
            return fail(field, format!("wildcard host {raw:?} is not allowed here"));
        }
        Ok(qualify(raw, self.namespace, self.domain))
    }
}

fn join(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

/// A string field that must be set and not empty.
fn required(v: Option<String>, field: &str) -> R<String> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => fail(field, "required field is missing or empty"),
    }
}

// ------------------------------------------------------------------------------ shared shapes

/// `StringMatch`: one of `exact`, `prefix`, `regex`.
#[derive(Deserialize, schemars::JsonSchema)]
struct StringMatchSpec {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

/// Istio's `Percent`: `{value: 0..=100}` (an absent value is 0).
#[derive(Deserialize, schemars::JsonSchema)]
struct PercentSpec {
    value: Option<Percent>,
}

impl PercentSpec {
    fn get(&self) -> f64 {
        self.value.map_or(0.0, |p| p.0)
    }
}

/// `PortSelector`.
#[derive(Deserialize, schemars::JsonSchema)]
struct PortSelectorSpec {
    number: Option<Port>,
}

/// `Destination`.
#[derive(Deserialize, schemars::JsonSchema)]
struct DestinationSpec {
    host: Option<String>,
    subset: Option<String>,
    port: Option<PortSelectorSpec>,
}

/// `HeaderOperations`.
#[derive(Deserialize, schemars::JsonSchema)]
struct HeaderOpsSpec {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// `Headers`.
#[derive(Deserialize, schemars::JsonSchema)]
struct HeadersSpec {
    request: Option<HeaderOpsSpec>,
    response: Option<HeaderOpsSpec>,
}

// ------------------------------------------------------------------------------ VirtualService

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VirtualServiceSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    gateways: Vec<String>,
    #[serde(default)]
    http: Vec<HttpRouteSpec>,
    #[serde(default)]
    tls: Vec<L4RouteSpec>,
    #[serde(default)]
    tcp: Vec<L4RouteSpec>,
    #[serde(default)]
    export_to: Vec<String>,
}

/// `HTTPRoute`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct HttpRouteSpec {
    name: Option<String>,
    #[serde(rename = "match", default)]
    matches: Vec<HttpMatchSpec>,
    #[serde(default)]
    route: Vec<HttpRouteDestinationSpec>,
    redirect: Option<RedirectSpec>,
    direct_response: Option<DirectResponseSpec>,
    /// Refused: delegate VirtualServices are not supported.
    delegate: Option<Value>,
    rewrite: Option<RewriteSpec>,
    timeout: Option<Dur>,
    retries: Option<RetriesSpec>,
    fault: Option<FaultSpec>,
    mirror: Option<DestinationSpec>,
    #[serde(default)]
    mirrors: Vec<MirrorSpec>,
    mirror_percentage: Option<PercentSpec>,
    /// The deprecated integer form of `mirrorPercentage.value`.
    mirror_percent: Option<Int<0, 100>>,
    /// The same, as Istio's API also spells it.
    #[serde(rename = "mirror_percent")]
    mirror_percent_snake: Option<Int<0, 100>>,
    cors_policy: Option<CorsSpec>,
    headers: Option<HeadersSpec>,
}

/// `HTTPMatchRequest`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct HttpMatchSpec {
    name: Option<String>,
    uri: Option<StringMatchSpec>,
    scheme: Option<StringMatchSpec>,
    method: Option<StringMatchSpec>,
    authority: Option<StringMatchSpec>,
    /// `null` or `{}` for a name: the header is present.
    #[serde(default)]
    headers: BTreeMap<String, Option<StringMatchSpec>>,
    #[serde(default)]
    without_headers: BTreeMap<String, Option<StringMatchSpec>>,
    #[serde(default)]
    query_params: BTreeMap<String, Option<StringMatchSpec>>,
    port: Option<Port>,
    #[serde(default)]
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    #[serde(default)]
    gateways: Vec<String>,
    ignore_uri_case: Option<bool>,
    /// Accepted, not applied.
    #[allow(dead_code)]
    stat_prefix: Option<Value>,
}

/// `HTTPRouteDestination`.
#[derive(Deserialize, schemars::JsonSchema)]
struct HttpRouteDestinationSpec {
    destination: Option<DestinationSpec>,
    weight: Option<Int<0, 2147483647>>,
    headers: Option<HeadersSpec>,
}

/// `HTTPRedirect`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
/// Istio's schema also has `prefixRewrite`, which remora does not read (kept).
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
struct RedirectSpec {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<Port>,
    derive_port: Option<String>,
    scheme: Option<String>,
    redirect_code: Option<Int<300, 399>>,
}

/// `HTTPDirectResponse`.
#[derive(Deserialize, schemars::JsonSchema)]
struct DirectResponseSpec {
    status: Option<Int<200, 599>>,
    body: Option<BodySpec>,
}

/// `HTTPBody`.
#[derive(Deserialize, schemars::JsonSchema)]
struct BodySpec {
    string: Option<String>,
    /// Refused: use `string`.
    bytes: Option<Value>,
}

/// `HTTPRewrite`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct RewriteSpec {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Option<RegexRewriteSpec>,
}

/// `RegexRewrite`.
#[derive(Deserialize, schemars::JsonSchema)]
struct RegexRewriteSpec {
    #[serde(rename = "match")]
    pattern: Option<String>,
    rewrite: Option<String>,
}

/// `HTTPRetry`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct RetriesSpec {
    attempts: Option<Int<0, 1000>>,
    per_try_timeout: Option<Dur>,
    retry_on: Option<String>,
    retry_remote_localities: Option<bool>,
    /// Accepted, not applied.
    #[allow(dead_code)]
    retry_ignore_previous_hosts: Option<Value>,
    #[allow(dead_code)]
    backoff: Option<Value>,
}

/// `HTTPFaultInjection`.
#[derive(Deserialize, schemars::JsonSchema)]
struct FaultSpec {
    delay: Option<DelaySpec>,
    abort: Option<AbortSpec>,
}

/// `HTTPFaultInjection.Delay`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct DelaySpec {
    fixed_delay: Option<Dur>,
    percentage: Option<PercentSpec>,
    /// The deprecated integer form of `percentage.value`.
    percent: Option<Int<0, 100>>,
    /// Refused: use `fixedDelay`.
    exponential_delay: Option<Value>,
}

/// `HTTPFaultInjection.Abort`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct AbortSpec {
    http_status: Option<Int<200, 599>>,
    grpc_status: Option<String>,
    /// Refused: use `httpStatus` or `grpcStatus`.
    http2_error: Option<Value>,
    percentage: Option<PercentSpec>,
    /// The deprecated integer form of `percentage.value` (read, but not in Istio's schema: the
    /// API server refuses it there, as with Istio's CRDs).
    #[schemars(skip)]
    percent: Option<Int<0, 100>>,
}

/// `HTTPMirrorPolicy`.
#[derive(Deserialize, schemars::JsonSchema)]
struct MirrorSpec {
    destination: Option<DestinationSpec>,
    percentage: Option<PercentSpec>,
}

/// A `tcp` or `tls` route (`TCPRoute`, `TLSRoute`).
#[derive(Deserialize, schemars::JsonSchema)]
struct L4RouteSpec {
    #[serde(rename = "match", default)]
    matches: Vec<L4MatchSpec>,
    #[serde(default)]
    route: Vec<RouteDestinationSpec>,
}

/// `L4MatchAttributes` / `TLSMatchAttributes`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
/// Istio's `sourceSubnet` is not read (kept).
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
struct L4MatchSpec {
    #[serde(default)]
    sni_hosts: Vec<String>,
    #[serde(default)]
    destination_subnets: Vec<String>,
    port: Option<Port>,
    #[serde(default)]
    source_labels: BTreeMap<String, String>,
    #[serde(default)]
    gateways: Vec<String>,
    source_namespace: Option<String>,
}

/// `RouteDestination`.
#[derive(Deserialize, schemars::JsonSchema)]
struct RouteDestinationSpec {
    destination: Option<DestinationSpec>,
    weight: Option<Int<0, 2147483647>>,
}

/// `StringMatch`. `allow_empty`: `{}` means "present" (headers, query parameters).
fn string_match(sm: StringMatchSpec, field: &str, allow_empty: bool) -> R<StringMatch> {
    let set = sm.exact.is_some() as u8 + sm.prefix.is_some() as u8 + sm.regex.is_some() as u8;
    if set > 1 {
        return fail(field, "only one of exact, prefix or regex may be set");
    }
    if let Some(e) = sm.exact {
        return Ok(StringMatch::Exact(e));
    }
    if let Some(p) = sm.prefix {
        if p.is_empty() {
            // Istio: an empty prefix on a header or query parameter tests presence.
            if allow_empty {
                return Ok(StringMatch::Present);
            }
            return fail(&join(field, "prefix"), "prefix must not be empty");
        }
        return Ok(StringMatch::Prefix(p));
    }
    if let Some(r) = sm.regex {
        // Istio: `regex: "*"` on a header means "present" (it is not a valid regex).
        if allow_empty && r == "*" {
            return Ok(StringMatch::Present);
        }
        return compile_regex(&r, &join(field, "regex")).map(|re| StringMatch::Regex(r, re));
    }
    if allow_empty {
        Ok(StringMatch::Present)
    } else {
        fail(field, "one of exact, prefix or regex is required")
    }
}

/// Compile an RE2-style pattern for a full match.
pub(crate) fn compile_regex(src: &str, field: &str) -> R<regex::Regex> {
    crate::kinds::compile_regex(src).or_else(|reason| fail(field, reason))
}

fn opt_match(sm: Option<StringMatchSpec>, field: &str) -> R<Option<StringMatch>> {
    sm.map(|sm| string_match(sm, field, false)).transpose()
}

/// `headers`, `withoutHeaders` (names lower-cased and checked) or `queryParams`.
fn match_map(
    m: BTreeMap<String, Option<StringMatchSpec>>,
    field: &str,
    header: bool,
) -> R<Vec<(String, StringMatch)>> {
    let mut out = Vec::new();
    for (name, sm) in m {
        if name.is_empty() {
            return fail(field, "name must not be empty");
        }
        let f = join(field, &name);
        let sm = match sm {
            None => StringMatch::Present,
            Some(sm) => string_match(sm, &f, true)?,
        };
        let name = if header {
            name.to_ascii_lowercase()
        } else {
            name
        };
        if header && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return fail(&f, format!("{name:?} is not a valid HTTP header name"));
        }
        out.push((name, sm));
    }
    Ok(out)
}

fn http_match(m: HttpMatchSpec, path: &str) -> R<HttpMatch> {
    Ok(HttpMatch {
        uri: opt_match(m.uri, &join(path, "uri"))?,
        scheme: opt_match(m.scheme, &join(path, "scheme"))?,
        method: opt_match(m.method, &join(path, "method"))?,
        authority: opt_match(m.authority, &join(path, "authority"))?,
        headers: match_map(m.headers, &join(path, "headers"), true)?,
        without_headers: match_map(m.without_headers, &join(path, "withoutHeaders"), true)?,
        query_params: match_map(m.query_params, &join(path, "queryParams"), false)?,
        name: m.name,
        port: m.port.map(Int::as_u16),
        source_labels: m.source_labels,
        source_namespace: m.source_namespace,
        gateways: m.gateways,
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
    })
}

fn header_ops(ops: Option<HeaderOpsSpec>, path: &str) -> R<HeaderOps> {
    let Some(o) = ops else {
        return Ok(HeaderOps::default());
    };
    let check = |name: &str, field: &str| -> R<()> {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return fail(field, format!("{name:?} is not a valid HTTP header name"));
        }
        Ok(())
    };
    let mut out = HeaderOps::default();
    for (key, map, dst) in [("set", o.set, &mut out.set), ("add", o.add, &mut out.add)] {
        for (k, val) in map {
            let f = format!("{path}.{key}.{k}");
            check(&k, &f)?;
            if http::HeaderValue::from_str(&val).is_err() {
                return fail(&f, format!("{val:?} is not a valid HTTP header value"));
            }
            dst.push((k.to_ascii_lowercase(), val));
        }
    }
    for (i, k) in o.remove.into_iter().enumerate() {
        check(&k, &format!("{path}.remove[{i}]"))?;
        out.remove.push(k.to_ascii_lowercase());
    }
    Ok(out)
}

fn headers(h: Option<HeadersSpec>, path: &str) -> R<Headers> {
    let Some(h) = h else {
        return Ok(Headers::default());
    };
    let field = join(path, "headers");
    Ok(Headers {
        request: header_ops(h.request, &join(&field, "request"))?,
        response: header_ops(h.response, &join(&field, "response"))?,
    })
}

fn destination(d: Option<DestinationSpec>, path: &str, cx: &DocCtx<'_>) -> R<Destination> {
    let Some(d) = d else {
        return fail(path, "required field is missing or empty");
    };
    let raw = required(d.host, &join(path, "host"))?;
    let host = cx.host(&raw, &join(path, "host"), false)?;
    if d.subset.as_deref() == Some("") {
        return fail(&join(path, "subset"), "subset must not be empty");
    }
    Ok(Destination {
        host,
        subset: d.subset,
        port: d.port.and_then(|p| p.number).map(Int::as_u16),
    })
}

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn retries(r: RetriesSpec, path: &str) -> R<RetryPolicy> {
    let mut retry_on = Vec::new();
    if let Some(s) = r.retry_on {
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let is_code = p.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if !is_code && !RETRY_ON.contains(&p) {
                return fail(
                    &join(path, "retryOn"),
                    format!("unknown retry condition {p:?}"),
                );
            }
            retry_on.push(p.to_string());
        }
    }
    Ok(RetryPolicy {
        attempts: r.attempts.map_or(0, Int::as_u32),
        per_try_timeout: r.per_try_timeout.map(|d| d.0),
        retry_on,
        retry_remote_localities: r.retry_remote_localities,
    })
}

/// `percentage.value`, or the deprecated integer `percent`; 100 when neither is set.
fn fault_percentage(percentage: Option<PercentSpec>, percent: Option<Int<0, 100>>) -> f64 {
    match (percentage, percent) {
        (Some(p), _) => p.get(),
        (None, Some(p)) => p.0 as f64,
        (None, None) => 100.0,
    }
}

fn fault(f: FaultSpec, path: &str) -> R<FaultPolicy> {
    let mut out = FaultPolicy::default();
    if let Some(d) = f.delay {
        let p = join(path, "delay");
        if d.exponential_delay.is_some() {
            return fail(
                &join(&p, "exponentialDelay"),
                "exponentialDelay is not supported; use fixedDelay",
            );
        }
        let Some(fixed) = d.fixed_delay else {
            return fail(
                &join(&p, "fixedDelay"),
                "required field is missing or empty",
            );
        };
        out.delay = Some(FaultDelay {
            fixed_delay: fixed.0,
            percentage: fault_percentage(d.percentage, d.percent),
        });
    }
    if let Some(a) = f.abort {
        let p = join(path, "abort");
        if a.http2_error.is_some() {
            return fail(
                &join(&p, "http2Error"),
                "http2Error is not supported; use httpStatus or grpcStatus",
            );
        }
        let http_status = a.http_status.map(Int::as_u16);
        if http_status.is_none() && a.grpc_status.is_none() {
            return fail(&p, "one of httpStatus or grpcStatus is required");
        }
        if http_status.is_some() && a.grpc_status.is_some() {
            return fail(&p, "only one of httpStatus or grpcStatus may be set");
        }
        out.abort = Some(FaultAbort {
            http_status,
            grpc_status: a.grpc_status,
            percentage: fault_percentage(a.percentage, a.percent),
        });
    }
    if out.delay.is_none() && out.abort.is_none() {
        return fail(path, "one of delay or abort is required");
    }
    Ok(out)
}

fn mirror_target(
    d: Option<DestinationSpec>,
    path: &str,
    pct: Option<f64>,
    cx: &DocCtx<'_>,
) -> R<Mirror> {
    let d = destination(d, path, cx)?;
    Ok(Mirror {
        host: d.host,
        subset: d.subset,
        port: d.port,
        percentage: pct.unwrap_or(100.0),
    })
}

fn rewrite(r: RewriteSpec, path: &str) -> R<Rewrite> {
    let mut uri_regex = None;
    if let Some(rr) = r.uri_regex_rewrite {
        let p = join(path, "uriRegexRewrite");
        let m = required(rr.pattern, &join(&p, "match"))?;
        let re = regex::RegexBuilder::new(&m)
            .size_limit(1 << 20)
            .build()
            .or_else(|e| {
                let msg = e.to_string();
                let last = msg
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_string();
                fail(&join(&p, "match"), format!("invalid regex {m:?}: {last}"))
            })?;
        uri_regex = Some((re, istio_replacement(&rr.rewrite.unwrap_or_default())));
    }
    if r.uri.is_some() && uri_regex.is_some() {
        return fail(path, "only one of uri or uriRegexRewrite may be set");
    }
    Ok(Rewrite {
        // Istio treats an empty rewrite as unset.
        uri: r.uri.filter(|u| !u.is_empty()),
        authority: r.authority,
        uri_regex,
    })
}

/// RE2/Envoy substitutions `\1` become the `regex` crate's `${1}`; a literal `$` is escaped.
fn istio_replacement(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|n| n.is_ascii_digit()) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            '$' => out.push_str("$$"),
            other => out.push(other),
        }
    }
    out
}

fn redirect(r: RedirectSpec, path: &str) -> R<Redirect> {
    let derive_port_from_request = match r.derive_port.as_deref() {
        None | Some("FROM_PROTOCOL_DEFAULT") => false,
        Some("FROM_REQUEST_PORT") => true,
        Some(other) => {
            return fail(
                &join(path, "derivePort"),
                format!("unknown value {other:?} (FROM_PROTOCOL_DEFAULT, FROM_REQUEST_PORT)"),
            )
        }
    };
    if r.port.is_some() && r.derive_port.is_some() {
        return fail(path, "only one of port or derivePort may be set");
    }
    if let Some(s) = &r.scheme {
        if s != "http" && s != "https" {
            return fail(
                &join(path, "scheme"),
                format!("unknown scheme {s:?} (http, https)"),
            );
        }
    }
    Ok(Redirect {
        uri: r.uri,
        authority: r.authority,
        port: r.port.map(Int::as_u16),
        derive_port_from_request,
        scheme: r.scheme,
        code: r.redirect_code.map_or(301, Int::as_u16),
    })
}

fn direct_response(d: DirectResponseSpec, path: &str) -> R<DirectResponse> {
    let Some(status) = d.status else {
        return fail(&join(path, "status"), "required field is missing or empty");
    };
    let mut body = String::new();
    if let Some(b) = d.body {
        if b.bytes.is_some() {
            return fail(
                &join(path, "body.bytes"),
                "body.bytes is not supported; use body.string",
            );
        }
        body = b.string.unwrap_or_default();
    }
    Ok(DirectResponse {
        status: status.as_u16(),
        body,
    })
}

fn weighted(
    d: Option<DestinationSpec>,
    weight: Option<Int<0, 2147483647>>,
    headers: Headers,
    path: &str,
    cx: &DocCtx<'_>,
) -> R<WeightedDestination> {
    Ok(WeightedDestination {
        destination: destination(d, &join(path, "destination"), cx)?,
        weight: weight.map(Int::as_u32),
        headers,
    })
}

/// A route and its `corsPolicy`.
fn http_route(r: HttpRouteSpec, path: &str, cx: &DocCtx<'_>) -> R<(HttpRoute, Option<Cors>)> {
    if r.delegate.is_some() {
        return fail(
            &join(path, "delegate"),
            "delegate VirtualServices are not supported",
        );
    }
    let mut matches = Vec::new();
    for (i, m) in r.matches.into_iter().enumerate() {
        matches.push(http_match(m, &format!("{path}.match[{i}]"))?);
    }
    let mut route = Vec::new();
    for (i, d) in r.route.into_iter().enumerate() {
        let p = format!("{path}.route[{i}]");
        let h = headers(d.headers, &p)?;
        route.push(weighted(d.destination, d.weight, h, &p, cx)?);
    }
    let redirect = r
        .redirect
        .map(|x| redirect(x, &join(path, "redirect")))
        .transpose()?;
    let direct_response = r
        .direct_response
        .map(|x| direct_response(x, &join(path, "directResponse")))
        .transpose()?;
    let rewrite = r
        .rewrite
        .map(|x| rewrite(x, &join(path, "rewrite")))
        .transpose()?;
    let actions =
        !route.is_empty() as u8 + redirect.is_some() as u8 + direct_response.is_some() as u8;
    if actions == 0 {
        return fail(path, "one of route, redirect or directResponse is required");
    }
    if actions > 1 {
        return fail(
            path,
            "only one of route, redirect or directResponse may be set",
        );
    }
    if rewrite.is_some() && redirect.is_some() {
        return fail(path, "rewrite and redirect cannot both be set");
    }
    if route.len() > 1 {
        let total: u64 = route.iter().map(|d| d.weight.unwrap_or(0) as u64).sum();
        if total == 0 {
            return fail(
                &join(path, "route"),
                "total weight is 0: set a weight on the destinations",
            );
        }
    }
    let mut policy = Policy {
        timeout: r.timeout.map(|d| d.0),
        retries: r
            .retries
            .map(|x| retries(x, &join(path, "retries")))
            .transpose()?,
        fault: r
            .fault
            .map(|x| fault(x, &join(path, "fault")))
            .transpose()?,
        mirrors: Vec::new(),
    };
    let single = r.mirror.is_some();
    if let Some(m) = r.mirror {
        // `mirrorPercent` (an integer) is the deprecated form of `mirrorPercentage.value`.
        let pct = match (
            &r.mirror_percentage,
            r.mirror_percent.or(r.mirror_percent_snake),
        ) {
            (Some(p), _) => Some(p.get()),
            (None, p) => p.map(|p| p.0 as f64),
        };
        policy
            .mirrors
            .push(mirror_target(Some(m), &join(path, "mirror"), pct, cx)?);
    }
    if !r.mirrors.is_empty() && single {
        return fail(path, "only one of mirror or mirrors may be set");
    }
    for (i, m) in r.mirrors.into_iter().enumerate() {
        let p = format!("{path}.mirrors[{i}]");
        let pct = m.percentage.as_ref().map(PercentSpec::get);
        policy.mirrors.push(mirror_target(
            m.destination,
            &join(&p, "destination"),
            pct,
            cx,
        )?);
    }
    let route = HttpRoute {
        name: r.name,
        path: path.to_string(),
        matches,
        route,
        redirect,
        direct_response,
        rewrite,
        headers: headers(r.headers, path)?,
        policy,
    };
    let cors = r
        .cors_policy
        .map(|c| Cors::from_spec(c, &join(path, "corsPolicy")))
        .transpose()?;
    Ok((route, cors))
}

fn l4_route(r: L4RouteSpec, path: &str, tls: bool, cx: &DocCtx<'_>) -> R<L4Route> {
    let mut matches = Vec::new();
    for (i, m) in r.matches.into_iter().enumerate() {
        let p = format!("{path}.match[{i}]");
        let mut sni_hosts = Vec::new();
        for (j, h) in m.sni_hosts.iter().enumerate() {
            check_host(h).or_else(|e| fail(&format!("{p}.sniHosts[{j}]"), e))?;
            sni_hosts.push(h.trim_end_matches('.').to_ascii_lowercase());
        }
        if tls && sni_hosts.is_empty() {
            return fail(&join(&p, "sniHosts"), "at least one SNI host is required");
        }
        let mut destination_subnets = Vec::new();
        for (j, a) in m.destination_subnets.iter().enumerate() {
            let net = parse_net(a).ok_or_else(|| {
                FieldError::new(
                    format!("{p}.destinationSubnets[{j}]"),
                    format!("{a:?} is not an IP address or CIDR"),
                )
            })?;
            destination_subnets.push(net);
        }
        matches.push(L4Match {
            sni_hosts,
            port: m.port.map(Int::as_u16),
            destination_subnets,
            source_labels: m.source_labels,
            source_namespace: m.source_namespace,
            gateways: m.gateways,
        });
    }
    if tls && matches.is_empty() {
        return fail(
            &join(path, "match"),
            "TLS routes need at least one match with sniHosts",
        );
    }
    let mut route = Vec::new();
    for (i, d) in r.route.into_iter().enumerate() {
        let p = format!("{path}.route[{i}]");
        route.push(weighted(
            d.destination,
            d.weight,
            Headers::default(),
            &p,
            cx,
        )?);
    }
    if route.is_empty() {
        return fail(&join(path, "route"), "at least one destination is required");
    }
    if route.len() > 1 && route.iter().all(|d| d.weight.unwrap_or(0) == 0) {
        return fail(
            &join(path, "route"),
            "total weight is 0: set a weight on the destinations",
        );
    }
    Ok(L4Route {
        path: path.to_string(),
        matches,
        route,
    })
}

/// An IP address or CIDR.
fn parse_net(a: &str) -> Option<ipnet::IpNet> {
    a.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| a.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// `exportTo`: `.`, `*`, `~` or namespace names (DNS-1123 labels).
fn export_to(list: Vec<String>) -> R<Vec<String>> {
    for (i, e) in list.iter().enumerate() {
        let label_ok = !e.is_empty()
            && e.len() <= 63
            && e.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !e.starts_with('-')
            && !e.ends_with('-');
        if !(matches!(e.as_str(), "." | "*" | "~") || label_ok) {
            return fail(
                &format!("spec.exportTo[{i}]"),
                format!("{e:?} is not \".\", \"*\", \"~\" or a namespace name"),
            );
        }
    }
    Ok(list)
}

/// Decode a VirtualService's `spec`: the kind and the `corsPolicy` of its routes (by route
/// path, `spec.http[i]`); the unknown fields are added to `unknown`.
pub fn virtual_service(
    meta: Meta,
    spec: &Value,
    cx: &DocCtx<'_>,
    unknown: &mut Vec<Unknown>,
) -> R<(VirtualService, Vec<(String, Cors)>)> {
    let s = crate::typed::decode::<VirtualServiceSpec>(spec, "spec", unknown)?;
    if s.hosts.is_empty() {
        return fail("spec.hosts", "at least one host is required");
    }
    let mut http = Vec::new();
    let mut cors = Vec::new();
    for (i, r) in s.http.into_iter().enumerate() {
        let (route, c) = http_route(r, &format!("spec.http[{i}]"), cx)?;
        if let Some(c) = c {
            cors.push((route.path.clone(), c));
        }
        http.push(route);
    }
    let gw_mesh = |g: &[String]| g.is_empty() || g.iter().any(|g| g == "mesh");
    let applies_to_mesh = gw_mesh(&s.gateways)
        || http
            .iter()
            .flat_map(|r| r.matches.iter())
            .any(|m| m.gateways.iter().any(|g| g == "mesh"));
    let mut hosts = Vec::new();
    for (i, h) in s.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if h == "*" && gw_mesh(&s.gateways) {
            return fail(
                &field,
                "wildcard host \"*\" is not allowed for VirtualServices bound to the mesh",
            );
        }
        let q = cx.host(h, &field, true)?;
        if hosts.contains(&q) {
            return fail(&field, format!("duplicate host {h:?}"));
        }
        hosts.push(q);
    }
    let mut tcp = Vec::new();
    for (i, r) in s.tcp.into_iter().enumerate() {
        tcp.push(l4_route(r, &format!("spec.tcp[{i}]"), false, cx)?);
    }
    let mut tls = Vec::new();
    for (i, r) in s.tls.into_iter().enumerate() {
        tls.push(l4_route(r, &format!("spec.tls[{i}]"), true, cx)?);
    }
    if http.is_empty() && tcp.is_empty() && tls.is_empty() {
        return fail("spec", "one of http, tcp or tls routes is required");
    }
    let vs = VirtualService {
        meta,
        hosts,
        gateways: s.gateways,
        export_to: export_to(s.export_to)?,
        http,
        tcp,
        tls,
        applies_to_mesh,
    };
    Ok((vs, cors))
}

// ------------------------------------------------------------------------------ DestinationRule

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DestinationRuleSpec {
    host: Option<String>,
    traffic_policy: Option<TrafficPolicySpec>,
    #[serde(default)]
    subsets: Vec<SubsetSpec>,
    #[serde(default)]
    export_to: Vec<String>,
    workload_selector: Option<MatchLabelsSpec>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct SubsetSpec {
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    traffic_policy: Option<TrafficPolicySpec>,
}

/// `WorkloadSelector` of a DestinationRule.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct MatchLabelsSpec {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

/// Decode a DestinationRule's `spec` (its `trafficPolicy` included); the unknown fields are
/// added to `unknown`.
pub fn destination_rule(
    meta: Meta,
    spec: &Value,
    cx: &DocCtx<'_>,
    unknown: &mut Vec<Unknown>,
) -> R<DestinationRule> {
    let s = crate::typed::decode::<DestinationRuleSpec>(spec, "spec", unknown)?;
    let raw = required(s.host, "spec.host")?;
    let host = cx.host(&raw, "spec.host", true)?;
    let mut subsets: Vec<Subset> = Vec::new();
    for (i, sub) in s.subsets.into_iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        let name = required(sub.name, &join(&p, "name"))?;
        if subsets.iter().any(|s| s.name == name) {
            return fail(&join(&p, "name"), format!("duplicate subset name {name:?}"));
        }
        subsets.push(Subset {
            name,
            labels: sub.labels,
            traffic_policy: sub.traffic_policy,
        });
    }
    let dr = DestinationRule {
        meta,
        host,
        subsets,
        export_to: export_to(s.export_to)?,
        traffic_policy: s.traffic_policy,
        workload_selector: s.workload_selector.map(|w| w.match_labels),
    };
    Ok(dr)
}

// ------------------------------------------------------------------------------ ServiceEntry

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceEntrySpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    ports: Vec<ServicePortSpec>,
    location: Option<String>,
    resolution: Option<String>,
    #[serde(default)]
    endpoints: Vec<WorkloadEntrySpec>,
    /// Selects the WorkloadEntries of the namespace as endpoints.
    workload_selector: Option<LabelsSpec>,
    #[serde(default)]
    export_to: Vec<String>,
    /// Accepted, not applied.
    #[allow(dead_code)]
    subject_alt_names: Option<Value>,
}

/// `ServicePort`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ServicePortSpec {
    number: Option<Port>,
    protocol: Option<String>,
    name: Option<String>,
    target_port: Option<Port>,
}

/// `WorkloadEntry`, as a ServiceEntry endpoint.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkloadEntrySpec {
    address: Option<String>,
    /// Port name → port number (`null`: no port).
    #[serde(default)]
    ports: BTreeMap<String, Option<Port>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Accepted, not applied.
    #[allow(dead_code)]
    network: Option<Value>,
    #[allow(dead_code)]
    locality: Option<Value>,
    weight: Option<Int<0, 4294967295>>,
    #[allow(dead_code)]
    service_account: Option<Value>,
}

const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP",
];

/// Decode a ServiceEntry's `spec`; the unknown fields are added to `unknown`.
pub fn service_entry(
    meta: Meta,
    spec: &Value,
    cx: &DocCtx<'_>,
    unknown: &mut Vec<Unknown>,
) -> R<ServiceEntry> {
    let s = crate::typed::decode::<ServiceEntrySpec>(spec, "spec", unknown)?;
    if s.hosts.is_empty() {
        return fail("spec.hosts", "at least one host is required");
    }
    let resolution = match s.resolution.as_deref() {
        None | Some("NONE") => Resolution::None,
        Some("STATIC") => Resolution::Static,
        Some("DNS") => Resolution::Dns,
        Some("DNS_ROUND_ROBIN") => Resolution::DnsRoundRobin,
        Some(other) => {
            return fail(
                "spec.resolution",
                format!("unknown resolution {other:?} (NONE, STATIC, DNS, DNS_ROUND_ROBIN)"),
            )
        }
    };
    let mut hosts = Vec::new();
    for (i, h) in s.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if h == "*" {
            return fail(
                &field,
                "the wildcard host \"*\" is not allowed in a ServiceEntry",
            );
        }
        let q = cx.host(h, &field, true)?;
        if q.starts_with('*') && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            return fail(
                &field,
                format!("wildcard host {h:?} needs resolution NONE or STATIC, not DNS"),
            );
        }
        if hosts.contains(&q) {
            return fail(&field, format!("duplicate host {h:?}"));
        }
        hosts.push(q);
    }
    let mut addresses = Vec::new();
    for (i, a) in s.addresses.iter().enumerate() {
        let Some(net) = parse_net(a) else {
            return fail(
                &format!("spec.addresses[{i}]"),
                format!("{a:?} is not an IP address or CIDR"),
            );
        };
        addresses.push(net);
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, p) in s.ports.into_iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let Some(number) = p.number.map(Int::as_u16) else {
            return fail(&join(&f, "number"), "required field is missing or empty");
        };
        if let Some(proto) = &p.protocol {
            if !PROTOCOLS.contains(&proto.to_ascii_uppercase().as_str()) {
                return fail(
                    &join(&f, "protocol"),
                    format!("unknown protocol {proto:?} ({})", PROTOCOLS.join(", ")),
                );
            }
        }
        if ports.iter().any(|q| q.number == number) {
            return fail(&join(&f, "number"), format!("duplicate port {number}"));
        }
        if let Some(name) = &p.name {
            if ports.iter().any(|q| q.name.as_ref() == Some(name)) {
                return fail(&join(&f, "name"), format!("duplicate port name {name:?}"));
            }
        }
        ports.push(ServicePort {
            number,
            protocol: p.protocol,
            name: p.name,
            target_port: p.target_port.map(Int::as_u16),
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.into_iter().enumerate() {
        let f = format!("spec.endpoints[{i}]");
        let we = workload_entry_spec(e, &f)?;
        check_endpoint_address(&we.address, resolution, &join(&f, "address"), &f)?;
        endpoints.push(we);
    }
    let workload_selector = match s.workload_selector {
        None => None,
        Some(_) if !endpoints.is_empty() => {
            return fail(
                "spec.workloadSelector",
                "only one of workloadSelector or endpoints is allowed in a ServiceEntry",
            )
        }
        Some(_) if resolution == Resolution::None => {
            return fail(
                "spec.workloadSelector",
                "WorkloadEntries are endpoints: resolution must be STATIC or DNS, not NONE",
            )
        }
        Some(w) if w.labels.is_empty() => {
            return fail(
                "spec.workloadSelector.labels",
                "must not be empty (it selects the WorkloadEntries by label)",
            )
        }
        Some(w) => Some(w.labels),
    };
    if let Some(l) = &s.location {
        if l != "MESH_EXTERNAL" && l != "MESH_INTERNAL" {
            return fail(
                "spec.location",
                format!("unknown location {l:?} (MESH_EXTERNAL, MESH_INTERNAL)"),
            );
        }
    }
    let se = ServiceEntry {
        meta,
        hosts,
        addresses,
        ports,
        location: s.location,
        resolution,
        endpoints,
        export_to: export_to(s.export_to)?,
        workload_selector,
    };
    Ok(se)
}

/// Does an endpoint's address suit the ServiceEntry's resolution? (`field`: the address's path,
/// `entry`: the endpoint's.)
pub fn check_endpoint_address(
    address: &str,
    resolution: Resolution,
    field: &str,
    entry: &str,
) -> R<()> {
    match resolution {
        Resolution::Static => {
            if address.parse::<IpAddr>().is_err() {
                return fail(
                    field,
                    format!(
                        "{address:?} is not an IP address (resolution STATIC needs IP endpoints)"
                    ),
                );
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if address.parse::<IpAddr>().is_err() {
                check_host(address).or_else(|e| fail(field, e))?;
            }
        }
        Resolution::None => {
            return fail(entry, "endpoints need resolution STATIC or DNS, not NONE");
        }
    }
    Ok(())
}

/// A `WorkloadEntry` spec (a ServiceEntry endpoint or the `WorkloadEntry` kind) at `f`.
fn workload_entry_spec(e: WorkloadEntrySpec, f: &str) -> R<WorkloadEntry> {
    let address = required(e.address, &join(f, "address"))?;
    if address.starts_with("unix://") {
        return fail(
            &join(f, "address"),
            format!("{address:?}: Unix domain socket endpoints are not supported"),
        );
    }
    Ok(WorkloadEntry {
        address,
        ports: e
            .ports
            .into_iter()
            .filter_map(|(k, p)| p.map(|p| (k, p.as_u16())))
            .collect(),
        labels: e.labels,
        weight: e.weight.map(Int::as_u32),
    })
}

/// Decode a `WorkloadEntry` object's `spec` (its address is an IP address or a host name; which
/// one suits is checked against each ServiceEntry that selects it).
pub fn workload_entry(
    meta: Meta,
    spec: &Value,
    unknown: &mut Vec<Unknown>,
) -> R<crate::kinds::WorkloadEntryObject> {
    let s = crate::typed::decode::<WorkloadEntrySpec>(spec, "spec", unknown)?;
    let entry = workload_entry_spec(s, "spec")?;
    if entry.address.parse::<IpAddr>().is_err() {
        check_host(&entry.address).or_else(|e| fail("spec.address", e))?;
    }
    Ok(crate::kinds::WorkloadEntryObject { meta, entry })
}

// ------------------------------------------------------------------------------ Sidecar

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SidecarSpec {
    workload_selector: Option<LabelsSpec>,
    /// Accepted, not applied (the proxy's inbound side is not configured by a Sidecar).
    #[allow(dead_code)]
    ingress: Option<Value>,
    #[serde(default)]
    egress: Vec<EgressSpec>,
    #[allow(dead_code)]
    inbound_connection_pool: Option<Value>,
    outbound_traffic_policy: Option<OutboundTrafficPolicySpec>,
}

/// `WorkloadSelector` of a Sidecar.
#[derive(Deserialize, schemars::JsonSchema)]
struct LabelsSpec {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// `IstioEgressListener`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct EgressSpec {
    port: Option<SidecarPortSpec>,
    /// Accepted, not applied.
    #[allow(dead_code)]
    bind: Option<Value>,
    #[allow(dead_code)]
    capture_mode: Option<Value>,
    #[serde(default)]
    hosts: Vec<String>,
}

/// `SidecarPort`: only `number` is used.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct SidecarPortSpec {
    number: Option<Port>,
    name: Option<Value>,
    protocol: Option<Value>,
    target_port: Option<Value>,
}

/// `OutboundTrafficPolicy`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct OutboundTrafficPolicySpec {
    mode: Option<String>,
    /// Accepted, not applied.
    #[allow(dead_code)]
    egress_proxy: Option<Value>,
}

/// Decode a Sidecar's `spec`; the unknown fields are added to `unknown`.
pub fn sidecar(meta: Meta, spec: &Value, unknown: &mut Vec<Unknown>) -> R<Sidecar> {
    let s = crate::typed::decode::<SidecarSpec>(spec, "spec", unknown)?;
    let mut egress = Vec::new();
    for (i, e) in s.egress.into_iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        if e.hosts.is_empty() {
            return fail(&join(&f, "hosts"), "at least one host is required");
        }
        let mut hosts = Vec::new();
        for (j, h) in e.hosts.iter().enumerate() {
            let hf = format!("{f}.hosts[{j}]");
            let shape = || {
                fail(
                    &hf,
                    format!("{h:?} must be namespace/dnsName (e.g. \"./*\", \"istio-system/*\")"),
                )
            };
            let Some((ns, dns)) = h.split_once('/') else {
                return shape();
            };
            if ns.is_empty() || dns.is_empty() {
                return shape();
            }
            check_host(dns).or_else(|e| fail(&hf, e))?;
            // `.` stays: it means the namespace of each workload the Sidecar applies to
            // (`Sidecar::for_namespace`), which for the root namespace's default is not its own.
            let namespace = ns.to_string();
            hosts.push(EgressHost {
                namespace,
                dns: dns.trim_end_matches('.').to_ascii_lowercase(),
            });
        }
        egress.push(EgressListener {
            port: e.port.and_then(|p| p.number).map(Int::as_u16),
            hosts,
        });
    }
    let mode = s.outbound_traffic_policy.and_then(|o| o.mode);
    let registry_only = match mode.as_deref() {
        None | Some("ALLOW_ANY") => false,
        Some("REGISTRY_ONLY") => true,
        Some(other) => {
            return fail(
                "spec.outboundTrafficPolicy.mode",
                format!("unknown mode {other:?} (ALLOW_ANY, REGISTRY_ONLY)"),
            )
        }
    };
    let sc = Sidecar {
        workload_selector: s.workload_selector.map(|w| w.labels),
        meta,
        egress,
        registry_only,
    };
    Ok(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> DocCtx<'static> {
        DocCtx {
            namespace: "default",
            domain: "cluster.local",
        }
    }

    fn meta() -> Meta {
        Meta {
            kind: "VirtualService".into(),
            api_version: "networking.istio.io/v1".into(),
            name: "x".into(),
            namespace: "default".into(),
            file: "f.yaml".into(),
            document: 1,
        }
    }

    fn vs_err(spec: &str) -> (String, String) {
        let v: Value = serde_yaml_ng::from_str(spec).unwrap();
        let e = virtual_service(meta(), &v, &cx(), &mut Vec::new()).unwrap_err();
        (e.field, e.reason)
    }

    #[test]
    fn virtual_service_field_errors() {
        let cases: &[(&str, &str, &str)] = &[
            ("hosts: []\nhttp: []", "spec.hosts", "at least one host is required"),
            ("hosts: [a]", "spec", "one of http, tcp or tls routes is required"),
            ("hosts: [\"*\"]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.hosts[0]",
             "wildcard host \"*\" is not allowed for VirtualServices bound to the mesh"),
            ("hosts: [a]\nhttp: [{}]", "spec.http[0]", "one of route, redirect or directResponse is required"),
            ("hosts: [a]\nhttp: [{route: [{destination: {host: a}, weight: -1}]}]",
             "spec.http[0].route[0].weight", "-1 is out of range 0..=2147483647"),
            ("hosts: [a]\nhttp: [{route: [{destination: {host: a}, weight: \"80\"}]}]",
             "spec.http[0].route[0].weight", "expected an integer, found the string \"80\" (remove the quotes)"),
            ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}, {destination: {host: b}}]}]",
             "spec.http[0].route", "total weight is 0: set a weight on the destinations"),
            ("hosts: [a]\nhttp: [{route: [{destination: {subset: v1}}]}]",
             "spec.http[0].route[0].destination.host", "required field is missing or empty"),
            ("hosts: [a]\nhttp: [{match: [{uri: {regex: \"(\"}}], route: [{destination: {host: a}}]}]",
             "spec.http[0].match[0].uri.regex", "invalid regex \"(\": error: unclosed group"),
            ("hosts: [a]\nhttp: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: a}}]}]",
             "spec.http[0].match[0].uri", "only one of exact, prefix or regex may be set"),
            ("hosts: [a]\nhttp: [{match: [{uri: {}}], route: [{destination: {host: a}}]}]",
             "spec.http[0].match[0].uri", "one of exact, prefix or regex is required"),
            ("hosts: [a]\nhttp: [{timeout: 10, route: [{destination: {host: a}}]}]",
             "spec.http[0].timeout", "expected a duration such as \"10s\" or \"100ms\", found the number 10"),
            ("hosts: [a]\nhttp: [{timeout: 10x, route: [{destination: {host: a}}]}]",
             "spec.http[0].timeout", "invalid duration \"10x\": unknown unit \"x\" (ns, us, ms, s, m, h)"),
            ("hosts: [a]\nhttp: [{redirect: {uri: /x}, rewrite: {uri: /y}}]",
             "spec.http[0]", "rewrite and redirect cannot both be set"),
            ("hosts: [a]\nhttp: [{redirect: {uri: /x, redirectCode: 200}}]",
             "spec.http[0].redirect.redirectCode", "200 is out of range 300..=399"),
            ("hosts: [a]\nhttp: [{fault: {abort: {percentage: {value: 10}}}, route: [{destination: {host: a}}]}]",
             "spec.http[0].fault.abort", "one of httpStatus or grpcStatus is required"),
            ("hosts: [a]\nhttp: [{fault: {abort: {httpStatus: 500, percentage: {value: 101}}}, route: [{destination: {host: a}}]}]",
             "spec.http[0].fault.abort.percentage.value", "101 is out of range 0..=100"),
            ("hosts: [a]\nhttp: [{retries: {attempts: 3, retryOn: \"5xx,bogus\"}, route: [{destination: {host: a}}]}]",
             "spec.http[0].retries.retryOn", "unknown retry condition \"bogus\""),
            ("hosts: [a]\nhttp: [{delegate: {name: x}}]",
             "spec.http[0].delegate", "delegate VirtualServices are not supported"),
            ("hosts: [a]\nhttp: [{match: [{port: 70000}], route: [{destination: {host: a}}]}]",
             "spec.http[0].match[0].port", "70000 is out of range 1..=65535"),
            ("hosts: [a]\nhttp: [{match: [{headers: {\"bad header\": {exact: x}}}], route: [{destination: {host: a}}]}]",
             "spec.http[0].match[0].headers.bad header", "\"bad header\" is not a valid HTTP header name"),
            ("hosts: [\"a b\"]\nhttp: [{route: [{destination: {host: a}}]}]",
             "spec.hosts[0]", "invalid host \"a b\": label \"a b\" must be letters, digits or '-' (not at either end)"),
            // The value found is named (it was "found a string").
            ("hosts: a\nhttp: []", "spec.hosts", "expected a list, found the string \"a\""),
            ("hosts: [a]\nexportTo: [Prod]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.exportTo[0]",
             "\"Prod\" is not \".\", \"*\", \"~\" or a namespace name"),
            ("hosts: [a]\ntls: [{route: [{destination: {host: a}}]}]", "spec.tls[0].match",
             "TLS routes need at least one match with sniHosts"),
            ("hosts: [a]\ntls: [{match: [{port: 443}], route: [{destination: {host: a}}]}]", "spec.tls[0].match[0].sniHosts",
             "at least one SNI host is required"),
            ("hosts: [a]\ntcp: [{}]", "spec.tcp[0].route", "at least one destination is required"),
            ("hosts: [a]\ntcp: [{match: [{destinationSubnets: [x]}], route: [{destination: {host: a}}]}]",
             "spec.tcp[0].match[0].destinationSubnets[0]", "\"x\" is not an IP address or CIDR"),
            ("hosts: [a]\nhttp: [{route: [{destination: {host: a, port: {number: \"80\"}}}]}]",
             "spec.http[0].route[0].destination.port.number", "expected an integer, found the string \"80\" (remove the quotes)"),
            ("hosts: [a]\nhttp: [{match: [{ignoreUriCase: \"yes\"}], route: [{destination: {host: a}}]}]",
             "spec.http[0].match[0].ignoreUriCase", "expected true or false, found the string \"yes\""),
            ("hosts: [a]\nhttp: [{name: 5, route: [{destination: {host: a}}]}]",
             "spec.http[0].name", "expected a string, found the number 5 (write it in quotes: \"5\")"),
            ("hosts: [a]\nhttp: [{headers: {request: {set: {x-a: [1]}}}, route: [{destination: {host: a}}]}]",
             "spec.http[0].headers.request.set.x-a", "expected a string, found a list"),
            ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {delay: {percent: 5}}}]",
             "spec.http[0].fault.delay.fixedDelay", "required field is missing or empty"),
            ("hosts: [a]\nhttp: [{directResponse: {status: 200, body: {bytes: eA==}}}]",
             "spec.http[0].directResponse.body.bytes", "body.bytes is not supported; use body.string"),
            ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], mirror: {host: b}, mirrors: [{destination: {host: c}}]}]",
             "spec.http[0]", "only one of mirror or mirrors may be set"),
            ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], rewrite: {uriRegexRewrite: {match: \"(\"}}}]",
             "spec.http[0].rewrite.uriRegexRewrite.match", "invalid regex \"(\": error: unclosed group"),
            ("[]", "spec", "expected a mapping, found a list"),
        ];
        for (spec, field, reason) in cases {
            assert_eq!(
                vs_err(spec),
                (field.to_string(), reason.to_string()),
                "{spec}"
            );
        }
    }

    #[test]
    fn virtual_service_decodes_everything() {
        let spec = r#"
hosts: [reviews, "*.example.com"]
http:
- name: r1
  match:
  - name: m1
    uri: {prefix: /api}
    ignoreUriCase: true
    headers: {End-User: {exact: jason}, x-present: {}}
    withoutHeaders: {x-debug: {exact: "1"}}
    queryParams: {v: {regex: "[0-9]+"}}
    method: {exact: GET}
    port: 9080
    sourceLabels: {app: productpage}
  rewrite: {uri: /v2, authority: new.host}
  headers:
    request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
    response: {remove: [server]}
  timeout: 0.5s
  retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "5xx,connect-failure,503"}
  fault:
    delay: {fixedDelay: 7s, percentage: {value: 10}}
    abort: {httpStatus: 503, percent: 5}
  mirror: {host: shadow, port: {number: 8080}}
  mirrorPercentage: {value: 25.5}
  route:
  - destination: {host: reviews, subset: v2, port: {number: 9080}}
    weight: 80
    headers: {request: {set: {x-dest: v2}}}
  - destination: {host: reviews.prod.svc.cluster.local, subset: v3}
    weight: 20
"#;
        let v: Value = serde_yaml_ng::from_str(spec).unwrap();
        let mut unknown = Vec::new();
        let (vs, _) = virtual_service(meta(), &v, &cx(), &mut unknown).unwrap();
        assert_eq!(unknown, vec![]);
        assert_eq!(
            vs.hosts,
            vec!["reviews.default.svc.cluster.local", "*.example.com"]
        );
        assert!(vs.applies_to_mesh);
        let r = &vs.http[0];
        assert_eq!(r.name.as_deref(), Some("r1"));
        let m = &r.matches[0];
        assert_eq!(m.uri, Some(StringMatch::Prefix("/api".into())));
        assert!(m.ignore_uri_case);
        assert_eq!(
            m.headers[0],
            ("end-user".to_string(), StringMatch::Exact("jason".into()))
        );
        assert_eq!(
            m.headers[1],
            ("x-present".to_string(), StringMatch::Present)
        );
        assert_eq!(m.port, Some(9080));
        assert_eq!(
            m.source_labels.get("app").map(String::as_str),
            Some("productpage")
        );
        assert_eq!(
            r.route[0].destination.host,
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(r.route[0].destination.port, Some(9080));
        assert_eq!(r.route[0].weight, Some(80));
        assert_eq!(
            r.route[0].headers.request.set,
            vec![("x-dest".to_string(), "v2".to_string())]
        );
        assert_eq!(
            r.route[1].destination.host,
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(r.headers.request.remove, vec!["x-c".to_string()]);
        assert_eq!(
            r.policy.timeout,
            Some(std::time::Duration::from_millis(500))
        );
        let rt = r.policy.retries.as_ref().unwrap();
        assert_eq!(
            (rt.attempts, rt.per_try_timeout),
            (3, Some(std::time::Duration::from_millis(100)))
        );
        assert_eq!(rt.retry_on, vec!["5xx", "connect-failure", "503"]);
        let f = r.policy.fault.as_ref().unwrap();
        assert_eq!(
            f.delay.as_ref().unwrap().fixed_delay,
            std::time::Duration::from_secs(7)
        );
        assert_eq!(f.delay.as_ref().unwrap().percentage, 10.0);
        assert_eq!(f.abort.as_ref().unwrap().http_status, Some(503));
        assert_eq!(f.abort.as_ref().unwrap().percentage, 5.0);
        assert_eq!(r.policy.mirrors[0].host, "shadow.default.svc.cluster.local");
        assert_eq!(r.policy.mirrors[0].percentage, 25.5);
        assert_eq!(
            r.rewrite.as_ref().unwrap().authority.as_deref(),
            Some("new.host")
        );
    }

    #[test]
    fn typos_are_found_with_suggestions() {
        let spec: Value = serde_yaml_ng::from_str(
            r#"
hosts: [x]
http:
- matches: [{uri: {prefix: /}}]
  route: [{destination: {host: x, subst: v1}, wieght: 10}]
- match: [{headers: {end-user: {exactly: jason}}, ignoreUriCase: true}]
  route: [{destination: {host: x}}]
  corsPolicy: {anything: goes}
  timout: 1s
frobnicate: true
"#,
        )
        .unwrap();
        let mut unknown = Vec::new();
        virtual_service(meta(), &spec, &cx(), &mut unknown).unwrap();
        assert_eq!(unknown.len(), 7, "{unknown:?}");
        let got: Vec<(String, Option<&str>)> = unknown
            .iter()
            .map(|u| (u.field.clone(), u.suggestion))
            .collect();
        assert_eq!(
            got,
            // Keys come in name order (the JSON map is sorted).
            vec![
                ("spec.frobnicate".to_string(), None),
                ("spec.http[0].matches".to_string(), Some("match")),
                (
                    "spec.http[0].route[0].destination.subst".to_string(),
                    Some("subset")
                ),
                ("spec.http[0].route[0].wieght".to_string(), Some("weight")),
                // corsPolicy is typed like the rest of the route.
                ("spec.http[1].corsPolicy.anything".to_string(), None),
                (
                    "spec.http[1].match[0].headers.end-user.exactly".to_string(),
                    Some("exact")
                ),
                ("spec.http[1].timout".to_string(), Some("timeout")),
            ]
        );
        assert_eq!(
            unknown[1].reason(),
            "unknown field, ignored (did you mean \"match\"?)"
        );
        let misplaced: Value = serde_yaml_ng::from_str(
            "hosts: [x]\nhttp:\n- match:\n  - uri: {prefix: /a}\n    route: [{destination: {host: x}}]\n  route: [{destination: {host: x}}]\n",
        )
        .unwrap();
        let mut u = Vec::new();
        virtual_service(meta(), &misplaced, &cx(), &mut u).unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].field, "spec.http[0].match[0].route");
        assert_eq!(
            u[0].reason(),
            "unknown field here, ignored (it is a field one level up: check the indentation)"
        );
        // A DestinationRule's trafficPolicy is checked too.
        let dr: Value = serde_yaml_ng::from_str(
            "host: x\ntrafficPolicy:\n  loadBalancer: {simpel: RANDOM}\n  portLevelSettings: [{port: {number: 80}, tls: {mod: SIMPLE}}]\n",
        )
        .unwrap();
        let mut u = Vec::new();
        destination_rule(meta(), &dr, &cx(), &mut u).unwrap();
        let got: Vec<(String, String)> = u.iter().map(|u| (u.field.clone(), u.reason())).collect();
        assert_eq!(
            got,
            vec![
                (
                    "spec.trafficPolicy.loadBalancer.simpel".to_string(),
                    "unknown field, ignored (did you mean \"simple\"?)".to_string()
                ),
                (
                    "spec.trafficPolicy.portLevelSettings[0].tls.mod".to_string(),
                    "unknown field, ignored (did you mean \"mode\"?)".to_string()
                ),
            ]
        );
    }

    #[test]
    fn bookinfo_shapes_are_known() {
        let Some(dir) = remora_corpus::istio("networking") else {
            return;
        };
        let ctx = crate::kinds::LoadContext::default();
        let (mut vss, mut drs) = (0, 0);
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            // One file at a time: the samples are alternatives (the same names again).
            let name = e.file_name().to_string_lossy().to_string();
            let inputs = crate::rules::load::Inputs {
                dir: "istio".into(),
                files: vec![(name, std::fs::read(e.path()).unwrap())],
                skipped: Vec::new(),
                hash: String::new(),
            };
            let d = crate::rules::load::decode_inputs(&inputs, &ctx);
            assert_eq!(d.errors, vec![], "{:?}", e.path());
            assert_eq!(d.unknown_fields, vec![], "{:?}", e.path());
            vss += d.virtual_services.len();
            drs += d.destination_rules.len();
        }
        assert!(vss > 10 && drs > 4, "{vss} {drs}");
    }

    #[test]
    fn replacement_syntax() {
        assert_eq!(istio_replacement("/v\\1/\\2"), "/v${1}/${2}");
        assert_eq!(istio_replacement("/a$b"), "/a$$b");
    }

    #[test]
    fn service_entry_and_sidecar_errors() {
        let se = |s: &str| {
            let v: Value = serde_yaml_ng::from_str(s).unwrap();
            service_entry(meta(), &v, &cx(), &mut Vec::new())
                .map(|_| ())
                .map_err(|e| (e.field, e.reason))
        };
        let cases: &[(&str, &str, &str)] = &[
            ("hosts: []", "spec.hosts", "at least one host is required"),
            ("hosts: [\"*.x.com\"]\nresolution: DNS", "spec.hosts[0]", "wildcard host \"*.x.com\" needs resolution NONE or STATIC, not DNS"),
            ("hosts: [a.com]\nresolution: MAGIC", "spec.resolution", "unknown resolution \"MAGIC\" (NONE, STATIC, DNS, DNS_ROUND_ROBIN)"),
            ("hosts: [a.com]\nports: [{number: 80, protocol: HTTPX}]", "spec.ports[0].protocol",
             "unknown protocol \"HTTPX\" (HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, MYSQL, REDIS, TCP, TLS, UDP)"),
            ("hosts: [a.com]\nports: [{name: http}]", "spec.ports[0].number", "required field is missing or empty"),
            ("hosts: [a.com]\nports: [{number: 80, name: a}, {number: 81, name: a}]", "spec.ports[1].name", "duplicate port name \"a\""),
            ("hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: foo.com}]", "spec.endpoints[0].address",
             "\"foo.com\" is not an IP address (resolution STATIC needs IP endpoints)"),
            ("hosts: [a.com]\nendpoints: [{address: 1.2.3.4}]", "spec.endpoints[0]", "endpoints need resolution STATIC or DNS, not NONE"),
            ("hosts: [a.com]\naddresses: [nope]", "spec.addresses[0]", "\"nope\" is not an IP address or CIDR"),
            ("hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: 1.2.3.4, ports: {http: 0}}]", "spec.endpoints[0].ports.http", "0 is out of range 1..=65535"),
            ("hosts: [a.com]\nworkloadSelector: {labels: {app: a}}", "spec.workloadSelector",
             "WorkloadEntries are endpoints: resolution must be STATIC or DNS, not NONE"),
            ("hosts: [a.com]\nresolution: STATIC\nworkloadSelector: {labels: {app: a}}\nendpoints: [{address: 1.2.3.4}]", "spec.workloadSelector",
             "only one of workloadSelector or endpoints is allowed in a ServiceEntry"),
            ("hosts: [a.com]\nresolution: STATIC\nworkloadSelector: {labels: {}}", "spec.workloadSelector.labels",
             "must not be empty (it selects the WorkloadEntries by label)"),
        ];
        for (s, f, r) in cases {
            assert_eq!(se(s), Err((f.to_string(), r.to_string())), "{s}");
        }
        let sc = |s: &str| {
            let v: Value = serde_yaml_ng::from_str(s).unwrap();
            sidecar(meta(), &v, &mut Vec::new()).map_err(|e| (e.field, e.reason))
        };
        assert_eq!(
            sc("egress: [{hosts: [foo]}]").unwrap_err(),
            (
                "spec.egress[0].hosts[0]".to_string(),
                "\"foo\" must be namespace/dnsName (e.g. \"./*\", \"istio-system/*\")".to_string()
            )
        );
        assert_eq!(
            sc("outboundTrafficPolicy: {mode: CLOSED}").unwrap_err(),
            (
                "spec.outboundTrafficPolicy.mode".to_string(),
                "unknown mode \"CLOSED\" (ALLOW_ANY, REGISTRY_ONLY)".to_string()
            )
        );
        let ok = sc("egress: [{port: {number: 9080, name: http}, hosts: [\"./*\", \"istio-system/*\"]}]\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}").unwrap();
        assert!(ok.registry_only);
        assert_eq!(ok.egress[0].port, Some(9080));
        assert_eq!(
            ok.egress[0].hosts[0],
            EgressHost {
                namespace: ".".into(),
                dns: "*".into()
            }
        );
        assert_eq!(
            ok.for_namespace("shop").egress[0].hosts[0],
            EgressHost {
                namespace: "shop".into(),
                dns: "*".into()
            }
        );
    }
}
