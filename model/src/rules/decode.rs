//! Decode one YAML document (as a JSON value) into the model, validating every field we
//! implement and naming the field path on error. Unknown fields are accepted and ignored.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::host::{check_host, qualify};
use crate::kinds::*;
use crate::kinds::{FaultAbort, FaultDelay, FaultPolicy, HeaderOps, Mirror, Policy, RetryPolicy};

/// A field-level error inside one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

pub type R<T> = Result<T, FieldError>;

fn fail<T>(field: &str, reason: impl Into<String>) -> R<T> {
    Err(FieldError {
        field: field.to_string(),
        reason: reason.into(),
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// "expected a string" with a hint for scalars YAML typed as numbers or booleans.
fn not_a_string(v: &Value) -> String {
    match v {
        Value::Number(_) | Value::Bool(_) => format!(
            "expected a string, found {} (write it in quotes: \"{v}\")",
            type_name(v)
        ),
        other => format!("expected a string, found {}", type_name(other)),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn as_obj<'a>(v: &'a Value, path: &str) -> R<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => fail(
            path,
            format!("expected a mapping, found {}", type_name(other)),
        ),
    }
}

/// A present, non-null field.
fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

fn opt_str(m: &Map<String, Value>, key: &str, path: &str) -> R<Option<String>> {
    match get(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => fail(&join(path, key), not_a_string(other)),
    }
}

fn req_str(m: &Map<String, Value>, key: &str, path: &str) -> R<String> {
    match opt_str(m, key, path)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => fail(&join(path, key), "required field is missing or empty"),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str, path: &str) -> R<Option<bool>> {
    match get(m, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => fail(
            &join(path, key),
            format!("expected true or false, found {}", type_name(other)),
        ),
    }
}

fn opt_int(m: &Map<String, Value>, key: &str, path: &str, min: i64, max: i64) -> R<Option<i64>> {
    let field = join(path, key);
    match get(m, key) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) if i >= min && i <= max => Ok(Some(i)),
            Some(i) => fail(&field, format!("{i} is out of range {min}..={max}")),
            None => fail(&field, format!("expected an integer, found {n}")),
        },
        Some(Value::String(s)) => match s.parse::<i64>() {
            // Kubernetes accepts int-or-string in a few places; be exact about what is wrong.
            Ok(_) => fail(
                &field,
                format!("expected an integer, found the string {s:?} (remove the quotes)"),
            ),
            Err(_) => fail(
                &field,
                format!("expected an integer, found the string {s:?}"),
            ),
        },
        Some(other) => fail(
            &field,
            format!("expected an integer, found {}", type_name(other)),
        ),
    }
}

fn opt_port(m: &Map<String, Value>, key: &str, path: &str) -> R<Option<u16>> {
    Ok(opt_int(m, key, path, 1, 65535)?.map(|p| p as u16))
}

fn opt_list<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> R<&'a [Value]> {
    match get(m, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a.as_slice()),
        Some(other) => fail(
            &join(path, key),
            format!("expected a list, found {}", type_name(other)),
        ),
    }
}

fn str_list(m: &Map<String, Value>, key: &str, path: &str) -> R<Vec<String>> {
    let mut out = Vec::new();
    for (i, v) in opt_list(m, key, path)?.iter().enumerate() {
        match v {
            Value::String(s) => out.push(s.clone()),
            other => return fail(&format!("{}[{i}]", join(path, key)), not_a_string(other)),
        }
    }
    Ok(out)
}

fn str_map(m: &Map<String, Value>, key: &str, path: &str) -> R<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Some(v) = get(m, key) else {
        return Ok(out);
    };
    let field = join(path, key);
    for (k, v) in as_obj(v, &field)? {
        match v {
            Value::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            other => return fail(&format!("{field}.{k}"), not_a_string(other)),
        }
    }
    Ok(out)
}

fn percentage(m: &Map<String, Value>, key: &str, path: &str) -> R<Option<f64>> {
    let Some(v) = get(m, key) else {
        return Ok(None);
    };
    let field = join(path, key);
    let o = as_obj(v, &field)?;
    match get(o, "value") {
        None => Ok(Some(0.0)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if (0.0..=100.0).contains(&f) => Ok(Some(f)),
            _ => fail(
                &format!("{field}.value"),
                format!("{n} is out of range 0..=100"),
            ),
        },
        Some(other) => fail(
            &format!("{field}.value"),
            format!("expected a number, found {}", type_name(other)),
        ),
    }
}

fn duration(m: &Map<String, Value>, key: &str, path: &str) -> R<Option<std::time::Duration>> {
    if let Some(Value::Number(n)) = get(m, key) {
        return fail(
            &join(path, key),
            format!("expected a duration such as \"{n}s\" or \"100ms\", found the number {n}"),
        );
    }
    match opt_str(m, key, path)? {
        None => Ok(None),
        Some(s) => parse_duration(&s)
            .map(Some)
            .or_else(|e| fail(&join(path, key), e)),
    }
}

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

/// `StringMatch`. `allow_empty`: `{}` means "present" (headers, query parameters).
fn string_match(v: &Value, field: &str, allow_empty: bool) -> R<StringMatch> {
    let o = as_obj(v, field)?;
    let exact = opt_str(o, "exact", field)?;
    let prefix = opt_str(o, "prefix", field)?;
    let regex = opt_str(o, "regex", field)?;
    let set = exact.is_some() as u8 + prefix.is_some() as u8 + regex.is_some() as u8;
    if set > 1 {
        return fail(field, "only one of exact, prefix or regex may be set");
    }
    if let Some(e) = exact {
        return Ok(StringMatch::Exact(e));
    }
    if let Some(p) = prefix {
        if p.is_empty() {
            // Istio: an empty prefix on a header or query parameter tests presence.
            if allow_empty {
                return Ok(StringMatch::Present);
            }
            return fail(&format!("{field}.prefix"), "prefix must not be empty");
        }
        return Ok(StringMatch::Prefix(p));
    }
    if let Some(r) = regex {
        // Istio: `regex: "*"` on a header means "present" (it is not a valid regex).
        if allow_empty && r == "*" {
            return Ok(StringMatch::Present);
        }
        return compile_regex(&r, &format!("{field}.regex")).map(|re| StringMatch::Regex(r, re));
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

fn match_map(
    m: &Map<String, Value>,
    key: &str,
    path: &str,
    lower: bool,
) -> R<Vec<(String, StringMatch)>> {
    let mut out = Vec::new();
    let Some(v) = get(m, key) else {
        return Ok(out);
    };
    let field = join(path, key);
    for (name, sm) in as_obj(v, &field)? {
        if name.is_empty() {
            return fail(&field, "name must not be empty");
        }
        let f = format!("{field}.{name}");
        let sm = if sm.is_null() {
            StringMatch::Present
        } else {
            string_match(sm, &f, true)?
        };
        let name = if lower {
            name.to_ascii_lowercase()
        } else {
            name.clone()
        };
        if lower && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return fail(&f, format!("{name:?} is not a valid HTTP header name"));
        }
        out.push((name, sm));
    }
    Ok(out)
}

fn http_match(v: &Value, path: &str) -> R<HttpMatch> {
    let o = as_obj(v, path)?;
    let opt_sm = |key: &str| -> R<Option<StringMatch>> {
        match get(o, key) {
            None => Ok(None),
            Some(v) => string_match(v, &join(path, key), false).map(Some),
        }
    };
    let gateways = str_list(o, "gateways", path)?;
    Ok(HttpMatch {
        name: opt_str(o, "name", path)?,
        uri: opt_sm("uri")?,
        scheme: opt_sm("scheme")?,
        method: opt_sm("method")?,
        authority: opt_sm("authority")?,
        headers: match_map(o, "headers", path, true)?,
        without_headers: match_map(o, "withoutHeaders", path, true)?,
        query_params: match_map(o, "queryParams", path, false)?,
        port: opt_port(o, "port", path)?,
        source_labels: str_map(o, "sourceLabels", path)?,
        source_namespace: opt_str(o, "sourceNamespace", path)?,
        gateways,
        ignore_uri_case: opt_bool(o, "ignoreUriCase", path)?.unwrap_or(false),
    })
}

fn header_ops(v: Option<&Value>, path: &str) -> R<HeaderOps> {
    let Some(v) = v else {
        return Ok(HeaderOps::default());
    };
    let o = as_obj(v, path)?;
    let check = |name: &str, field: &str| -> R<()> {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return fail(field, format!("{name:?} is not a valid HTTP header name"));
        }
        Ok(())
    };
    let mut ops = HeaderOps::default();
    for (key, dst) in [("set", &mut ops.set), ("add", &mut ops.add)] {
        for (k, val) in str_map(o, key, path)? {
            let f = format!("{}.{k}", join(path, key));
            check(&k, &f)?;
            if http::HeaderValue::from_str(&val).is_err() {
                return fail(&f, format!("{val:?} is not a valid HTTP header value"));
            }
            dst.push((k.to_ascii_lowercase(), val));
        }
    }
    for (i, k) in str_list(o, "remove", path)?.into_iter().enumerate() {
        check(&k, &format!("{}[{i}]", join(path, "remove")))?;
        ops.remove.push(k.to_ascii_lowercase());
    }
    Ok(ops)
}

fn headers(o: &Map<String, Value>, path: &str) -> R<Headers> {
    let Some(v) = get(o, "headers") else {
        return Ok(Headers::default());
    };
    let field = join(path, "headers");
    let h = as_obj(v, &field)?;
    Ok(Headers {
        request: header_ops(get(h, "request"), &join(&field, "request"))?,
        response: header_ops(get(h, "response"), &join(&field, "response"))?,
    })
}

fn destination(v: &Value, path: &str, cx: &DocCtx<'_>) -> R<Destination> {
    let o = as_obj(v, path)?;
    let raw = req_str(o, "host", path)?;
    let host = cx.host(&raw, &join(path, "host"), false)?;
    let subset = opt_str(o, "subset", path)?;
    if subset.as_deref() == Some("") {
        return fail(&join(path, "subset"), "subset must not be empty");
    }
    let port = match get(o, "port") {
        None => None,
        Some(p) => opt_port(
            as_obj(p, &join(path, "port"))?,
            "number",
            &join(path, "port"),
        )?,
    };
    Ok(Destination { host, subset, port })
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

fn retries(v: &Value, path: &str) -> R<RetryPolicy> {
    let o = as_obj(v, path)?;
    let attempts = opt_int(o, "attempts", path, 0, 1000)?.unwrap_or(0) as u32;
    let per_try_timeout = duration(o, "perTryTimeout", path)?;
    let mut retry_on = Vec::new();
    if let Some(s) = opt_str(o, "retryOn", path)? {
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
        attempts,
        per_try_timeout,
        retry_on,
        retry_remote_localities: opt_bool(o, "retryRemoteLocalities", path)?,
    })
}

/// `percentage.value`, or the deprecated integer `percent`; 100 when neither is set.
fn fault_percentage(o: &Map<String, Value>, path: &str) -> R<f64> {
    if let Some(p) = percentage(o, "percentage", path)? {
        return Ok(p);
    }
    Ok(opt_int(o, "percent", path, 0, 100)?
        .map(|p| p as f64)
        .unwrap_or(100.0))
}

fn fault(v: &Value, path: &str) -> R<FaultPolicy> {
    let o = as_obj(v, path)?;
    let mut f = FaultPolicy::default();
    if let Some(d) = get(o, "delay") {
        let p = join(path, "delay");
        let d = as_obj(d, &p)?;
        if get(d, "exponentialDelay").is_some() {
            return fail(
                &join(&p, "exponentialDelay"),
                "exponentialDelay is not supported; use fixedDelay",
            );
        }
        let Some(fixed) = duration(d, "fixedDelay", &p)? else {
            return fail(
                &join(&p, "fixedDelay"),
                "required field is missing or empty",
            );
        };
        f.delay = Some(FaultDelay {
            fixed_delay: fixed,
            percentage: fault_percentage(d, &p)?,
        });
    }
    if let Some(a) = get(o, "abort") {
        let p = join(path, "abort");
        let a = as_obj(a, &p)?;
        let http_status = opt_int(a, "httpStatus", &p, 200, 599)?.map(|s| s as u16);
        let grpc_status = opt_str(a, "grpcStatus", &p)?;
        if get(a, "http2Error").is_some() {
            return fail(
                &join(&p, "http2Error"),
                "http2Error is not supported; use httpStatus or grpcStatus",
            );
        }
        if http_status.is_none() && grpc_status.is_none() {
            return fail(&p, "one of httpStatus or grpcStatus is required");
        }
        if http_status.is_some() && grpc_status.is_some() {
            return fail(&p, "only one of httpStatus or grpcStatus may be set");
        }
        f.abort = Some(FaultAbort {
            http_status,
            grpc_status,
            percentage: fault_percentage(a, &p)?,
        });
    }
    if f.delay.is_none() && f.abort.is_none() {
        return fail(path, "one of delay or abort is required");
    }
    Ok(f)
}

fn mirror_target(v: &Value, path: &str, pct: Option<f64>, cx: &DocCtx<'_>) -> R<Mirror> {
    let d = destination(v, path, cx)?;
    Ok(Mirror {
        host: d.host,
        subset: d.subset,
        port: d.port,
        percentage: pct.unwrap_or(100.0),
    })
}

fn rewrite(v: &Value, path: &str) -> R<Rewrite> {
    let o = as_obj(v, path)?;
    let uri = opt_str(o, "uri", path)?;
    let authority = opt_str(o, "authority", path)?;
    let mut uri_regex = None;
    if let Some(rr) = get(o, "uriRegexRewrite") {
        let p = join(path, "uriRegexRewrite");
        let rr = as_obj(rr, &p)?;
        let m = req_str(rr, "match", &p)?;
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
        let rw = opt_str(rr, "rewrite", &p)?.unwrap_or_default();
        uri_regex = Some((re, istio_replacement(&rw)));
    }
    if uri.is_some() && uri_regex.is_some() {
        return fail(path, "only one of uri or uriRegexRewrite may be set");
    }
    if uri.as_deref() == Some("") {
        // Istio treats an empty rewrite as unset.
        return Ok(Rewrite {
            uri: None,
            authority,
            uri_regex,
        });
    }
    Ok(Rewrite {
        uri,
        authority,
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

fn redirect(v: &Value, path: &str) -> R<Redirect> {
    let o = as_obj(v, path)?;
    let port = opt_port(o, "port", path)?;
    let derive = opt_str(o, "derivePort", path)?;
    let derive_port_from_request = match derive.as_deref() {
        None | Some("FROM_PROTOCOL_DEFAULT") => false,
        Some("FROM_REQUEST_PORT") => true,
        Some(other) => {
            return fail(
                &join(path, "derivePort"),
                format!("unknown value {other:?} (FROM_PROTOCOL_DEFAULT, FROM_REQUEST_PORT)"),
            )
        }
    };
    if port.is_some() && derive.is_some() {
        return fail(path, "only one of port or derivePort may be set");
    }
    let code = opt_int(o, "redirectCode", path, 300, 399)?.unwrap_or(301) as u16;
    let scheme = opt_str(o, "scheme", path)?;
    if let Some(s) = &scheme {
        if s != "http" && s != "https" {
            return fail(
                &join(path, "scheme"),
                format!("unknown scheme {s:?} (http, https)"),
            );
        }
    }
    Ok(Redirect {
        uri: opt_str(o, "uri", path)?,
        authority: opt_str(o, "authority", path)?,
        port,
        derive_port_from_request,
        scheme,
        code,
    })
}

fn direct_response(v: &Value, path: &str) -> R<DirectResponse> {
    let o = as_obj(v, path)?;
    let Some(status) = opt_int(o, "status", path, 200, 599)? else {
        return fail(&join(path, "status"), "required field is missing or empty");
    };
    let mut body = String::new();
    if let Some(b) = get(o, "body") {
        let p = join(path, "body");
        let b = as_obj(b, &p)?;
        if get(b, "bytes").is_some() {
            return fail(
                &join(&p, "bytes"),
                "body.bytes is not supported; use body.string",
            );
        }
        body = opt_str(b, "string", &p)?.unwrap_or_default();
    }
    Ok(DirectResponse {
        status: status as u16,
        body,
    })
}

fn http_route(v: &Value, path: &str, cx: &DocCtx<'_>) -> R<HttpRoute> {
    let o = as_obj(v, path)?;
    if get(o, "delegate").is_some() {
        return fail(
            &join(path, "delegate"),
            "delegate VirtualServices are not supported",
        );
    }
    let mut matches = Vec::new();
    for (i, m) in opt_list(o, "match", path)?.iter().enumerate() {
        matches.push(http_match(m, &format!("{path}.match[{i}]"))?);
    }
    let mut route = Vec::new();
    for (i, d) in opt_list(o, "route", path)?.iter().enumerate() {
        let p = format!("{path}.route[{i}]");
        let dobj = as_obj(d, &p)?;
        let Some(dest) = get(dobj, "destination") else {
            return fail(
                &join(&p, "destination"),
                "required field is missing or empty",
            );
        };
        route.push(WeightedDestination {
            destination: destination(dest, &join(&p, "destination"), cx)?,
            weight: opt_int(dobj, "weight", &p, 0, i32::MAX as i64)?.map(|w| w as u32),
            headers: headers(dobj, &p)?,
        });
    }
    let redirect = get(o, "redirect")
        .map(|r| redirect(r, &join(path, "redirect")))
        .transpose()?;
    let direct_response = get(o, "directResponse")
        .map(|r| direct_response(r, &join(path, "directResponse")))
        .transpose()?;
    let rewrite = get(o, "rewrite")
        .map(|r| rewrite(r, &join(path, "rewrite")))
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
        timeout: duration(o, "timeout", path)?,
        retries: get(o, "retries")
            .map(|r| retries(r, &join(path, "retries")))
            .transpose()?,
        fault: get(o, "fault")
            .map(|f| fault(f, &join(path, "fault")))
            .transpose()?,
        mirrors: Vec::new(),
    };
    if let Some(m) = get(o, "mirror") {
        // `mirrorPercent` (an integer) is the deprecated form of `mirrorPercentage.value`.
        let pct = match percentage(o, "mirrorPercentage", path)? {
            Some(p) => Some(p),
            None => opt_int(o, "mirrorPercent", path, 0, 100)?.map(|p| p as f64),
        };
        policy
            .mirrors
            .push(mirror_target(m, &join(path, "mirror"), pct, cx)?);
    }
    let mirrors = opt_list(o, "mirrors", path)?;
    if !mirrors.is_empty() && get(o, "mirror").is_some() {
        return fail(path, "only one of mirror or mirrors may be set");
    }
    for (i, m) in mirrors.iter().enumerate() {
        let p = format!("{path}.mirrors[{i}]");
        let mo = as_obj(m, &p)?;
        let Some(d) = get(mo, "destination") else {
            return fail(
                &join(&p, "destination"),
                "required field is missing or empty",
            );
        };
        let pct = percentage(mo, "percentage", &p)?;
        policy
            .mirrors
            .push(mirror_target(d, &join(&p, "destination"), pct, cx)?);
    }
    Ok(HttpRoute {
        name: opt_str(o, "name", path)?,
        path: path.to_string(),
        matches,
        route,
        redirect,
        direct_response,
        rewrite,
        headers: headers(o, path)?,
        policy,
    })
}

fn l4_route(v: &Value, path: &str, tls: bool, cx: &DocCtx<'_>) -> R<L4Route> {
    let o = as_obj(v, path)?;
    let mut matches = Vec::new();
    for (i, m) in opt_list(o, "match", path)?.iter().enumerate() {
        let p = format!("{path}.match[{i}]");
        let mo = as_obj(m, &p)?;
        let mut sni_hosts = Vec::new();
        for (j, h) in str_list(mo, "sniHosts", &p)?.iter().enumerate() {
            let f = format!("{p}.sniHosts[{j}]");
            check_host(h).or_else(|e| fail(&f, e))?;
            sni_hosts.push(h.trim_end_matches('.').to_ascii_lowercase());
        }
        if tls && sni_hosts.is_empty() {
            return fail(&join(&p, "sniHosts"), "at least one SNI host is required");
        }
        let mut destination_subnets = Vec::new();
        for (j, a) in str_list(mo, "destinationSubnets", &p)?.iter().enumerate() {
            let net = a
                .parse::<ipnet::IpNet>()
                .or_else(|_| a.parse::<IpAddr>().map(ipnet::IpNet::from))
                .or_else(|_| {
                    fail(
                        &format!("{p}.destinationSubnets[{j}]"),
                        format!("{a:?} is not an IP address or CIDR"),
                    )
                })?;
            destination_subnets.push(net);
        }
        matches.push(L4Match {
            sni_hosts,
            port: opt_port(mo, "port", &p)?,
            destination_subnets,
            source_labels: str_map(mo, "sourceLabels", &p)?,
            source_namespace: opt_str(mo, "sourceNamespace", &p)?,
            gateways: str_list(mo, "gateways", &p)?,
        });
    }
    if tls && matches.is_empty() {
        return fail(
            &join(path, "match"),
            "TLS routes need at least one match with sniHosts",
        );
    }
    let mut route = Vec::new();
    for (i, d) in opt_list(o, "route", path)?.iter().enumerate() {
        let p = format!("{path}.route[{i}]");
        let dobj = as_obj(d, &p)?;
        let Some(dest) = get(dobj, "destination") else {
            return fail(
                &join(&p, "destination"),
                "required field is missing or empty",
            );
        };
        route.push(WeightedDestination {
            destination: destination(dest, &join(&p, "destination"), cx)?,
            weight: opt_int(dobj, "weight", &p, 0, i32::MAX as i64)?.map(|w| w as u32),
            headers: Headers::default(),
        });
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

/// `exportTo`: `.`, `*`, `~` or namespace names (DNS-1123 labels).
fn export_to(o: &Map<String, Value>) -> R<Vec<String>> {
    let list = str_list(o, "exportTo", "spec")?;
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

pub fn virtual_service(meta: Meta, spec: &Value, cx: &DocCtx<'_>) -> R<VirtualService> {
    let o = as_obj(spec, "spec")?;
    let raw_hosts = str_list(o, "hosts", "spec")?;
    if raw_hosts.is_empty() {
        return fail("spec.hosts", "at least one host is required");
    }
    let gateways = str_list(o, "gateways", "spec")?;
    let mut hosts = Vec::new();
    let mut http = Vec::new();
    for (i, r) in opt_list(o, "http", "spec")?.iter().enumerate() {
        http.push(http_route(r, &format!("spec.http[{i}]"), cx)?);
    }
    let gw_mesh = |g: &[String]| g.is_empty() || g.iter().any(|g| g == "mesh");
    let applies_to_mesh = gw_mesh(&gateways)
        || http
            .iter()
            .flat_map(|r| r.matches.iter())
            .any(|m| m.gateways.iter().any(|g| g == "mesh"));
    for (i, h) in raw_hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if h == "*" && gw_mesh(&gateways) {
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
    for (i, r) in opt_list(o, "tcp", "spec")?.iter().enumerate() {
        tcp.push(l4_route(r, &format!("spec.tcp[{i}]"), false, cx)?);
    }
    let mut tls = Vec::new();
    for (i, r) in opt_list(o, "tls", "spec")?.iter().enumerate() {
        tls.push(l4_route(r, &format!("spec.tls[{i}]"), true, cx)?);
    }
    if http.is_empty() && tcp.is_empty() && tls.is_empty() {
        return fail("spec", "one of http, tcp or tls routes is required");
    }
    Ok(VirtualService {
        meta,
        hosts,
        gateways,
        export_to: export_to(o)?,
        http,
        tcp,
        tls,
        applies_to_mesh,
    })
}

fn workload_selector(
    o: &Map<String, Value>,
    key: &str,
    inner: &str,
) -> R<Option<BTreeMap<String, String>>> {
    let Some(ws) = get(o, key) else {
        return Ok(None);
    };
    let p = format!("spec.{key}");
    let wo = as_obj(ws, &p)?;
    Ok(Some(str_map(wo, inner, &p)?))
}

pub fn destination_rule(meta: Meta, spec: &Value, cx: &DocCtx<'_>) -> R<DestinationRule> {
    let o = as_obj(spec, "spec")?;
    let raw = req_str(o, "host", "spec")?;
    let host = cx.host(&raw, "spec.host", true)?;
    let mut subsets: Vec<Subset> = Vec::new();
    for (i, s) in opt_list(o, "subsets", "spec")?.iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        let so = as_obj(s, &p)?;
        let name = req_str(so, "name", &p)?;
        if subsets.iter().any(|s| s.name == name) {
            return fail(&join(&p, "name"), format!("duplicate subset name {name:?}"));
        }
        if let Some(tp) = get(so, "trafficPolicy") {
            as_obj(tp, &join(&p, "trafficPolicy"))?;
        }
        subsets.push(Subset {
            name,
            labels: str_map(so, "labels", &p)?,
            traffic_policy: get(so, "trafficPolicy").cloned(),
        });
    }
    if let Some(tp) = get(o, "trafficPolicy") {
        as_obj(tp, "spec.trafficPolicy")?;
    }
    Ok(DestinationRule {
        meta,
        host,
        subsets,
        export_to: export_to(o)?,
        traffic_policy: get(o, "trafficPolicy").cloned(),
        workload_selector: workload_selector(o, "workloadSelector", "matchLabels")?,
    })
}

const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP",
];

pub fn service_entry(meta: Meta, spec: &Value, cx: &DocCtx<'_>) -> R<ServiceEntry> {
    let o = as_obj(spec, "spec")?;
    let raw_hosts = str_list(o, "hosts", "spec")?;
    if raw_hosts.is_empty() {
        return fail("spec.hosts", "at least one host is required");
    }
    let resolution = match opt_str(o, "resolution", "spec")?.as_deref() {
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
    for (i, h) in raw_hosts.iter().enumerate() {
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
    for (i, a) in str_list(o, "addresses", "spec")?.iter().enumerate() {
        let net = match a.parse::<ipnet::IpNet>() {
            Ok(n) => n,
            Err(_) => match a.parse::<IpAddr>() {
                Ok(ip) => ipnet::IpNet::from(ip),
                Err(_) => {
                    return fail(
                        &format!("spec.addresses[{i}]"),
                        format!("{a:?} is not an IP address or CIDR"),
                    )
                }
            },
        };
        addresses.push(net);
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, p) in opt_list(o, "ports", "spec")?.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let po = as_obj(p, &f)?;
        let Some(number) = opt_port(po, "number", &f)? else {
            return fail(&join(&f, "number"), "required field is missing or empty");
        };
        let protocol = opt_str(po, "protocol", &f)?;
        if let Some(proto) = &protocol {
            if !PROTOCOLS.contains(&proto.to_ascii_uppercase().as_str()) {
                return fail(
                    &join(&f, "protocol"),
                    format!("unknown protocol {proto:?} ({})", PROTOCOLS.join(", ")),
                );
            }
        }
        let name = opt_str(po, "name", &f)?;
        if ports.iter().any(|q| q.number == number) {
            return fail(&join(&f, "number"), format!("duplicate port {number}"));
        }
        if name.is_some() && ports.iter().any(|q| q.name == name) {
            return fail(
                &join(&f, "name"),
                format!("duplicate port name {:?}", name.unwrap_or_default()),
            );
        }
        ports.push(ServicePort {
            number,
            protocol,
            name,
            target_port: opt_port(po, "targetPort", &f)?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in opt_list(o, "endpoints", "spec")?.iter().enumerate() {
        let f = format!("spec.endpoints[{i}]");
        let eo = as_obj(e, &f)?;
        let address = req_str(eo, "address", &f)?;
        match resolution {
            Resolution::Static => {
                if address.parse::<IpAddr>().is_err() {
                    return fail(
                        &join(&f, "address"),
                        format!("{address:?} is not an IP address (resolution STATIC needs IP endpoints)"),
                    );
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                if address.parse::<IpAddr>().is_err() {
                    check_host(&address).or_else(|e| fail(&join(&f, "address"), e))?;
                }
            }
            Resolution::None => {
                return fail(&f, "endpoints need resolution STATIC or DNS, not NONE");
            }
        }
        let mut eports = BTreeMap::new();
        if let Some(pm) = get(eo, "ports") {
            let pf = join(&f, "ports");
            for (k, v) in as_obj(pm, &pf)? {
                let mut single = Map::new();
                single.insert(k.clone(), v.clone());
                if let Some(p) = opt_port(&single, k, &pf)? {
                    eports.insert(k.clone(), p);
                }
            }
        }
        endpoints.push(WorkloadEntry {
            address,
            ports: eports,
            labels: str_map(eo, "labels", &f)?,
            weight: opt_int(eo, "weight", &f, 0, u32::MAX as i64)?.map(|w| w as u32),
        });
    }
    let location = opt_str(o, "location", "spec")?;
    if let Some(l) = &location {
        if l != "MESH_EXTERNAL" && l != "MESH_INTERNAL" {
            return fail(
                "spec.location",
                format!("unknown location {l:?} (MESH_EXTERNAL, MESH_INTERNAL)"),
            );
        }
    }
    if get(o, "workloadSelector").is_some() {
        return fail(
            "spec.workloadSelector",
            "workloadSelector (WorkloadEntry selection) is not supported; list endpoints instead",
        );
    }
    Ok(ServiceEntry {
        meta,
        hosts,
        addresses,
        ports,
        location,
        resolution,
        endpoints,
        export_to: export_to(o)?,
    })
}

pub fn sidecar(meta: Meta, spec: &Value) -> R<Sidecar> {
    let o = as_obj(spec, "spec")?;
    let mut egress = Vec::new();
    for (i, e) in opt_list(o, "egress", "spec")?.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        let eo = as_obj(e, &f)?;
        let port = match get(eo, "port") {
            None => None,
            Some(p) => opt_port(as_obj(p, &join(&f, "port"))?, "number", &join(&f, "port"))?,
        };
        let raw = str_list(eo, "hosts", &f)?;
        if raw.is_empty() {
            return fail(&join(&f, "hosts"), "at least one host is required");
        }
        let mut hosts = Vec::new();
        for (j, h) in raw.iter().enumerate() {
            let hf = format!("{f}.hosts[{j}]");
            let Some((ns, dns)) = h.split_once('/') else {
                return fail(
                    &hf,
                    format!("{h:?} must be namespace/dnsName (e.g. \"./*\", \"istio-system/*\")"),
                );
            };
            if ns.is_empty() || dns.is_empty() {
                return fail(
                    &hf,
                    format!("{h:?} must be namespace/dnsName (e.g. \"./*\", \"istio-system/*\")"),
                );
            }
            check_host(dns).or_else(|e| fail(&hf, e))?;
            let namespace = if ns == "." {
                meta.namespace.clone()
            } else {
                ns.to_string()
            };
            hosts.push(EgressHost {
                namespace,
                dns: dns.trim_end_matches('.').to_ascii_lowercase(),
            });
        }
        egress.push(EgressListener { port, hosts });
    }
    let mut registry_only = false;
    if let Some(otp) = get(o, "outboundTrafficPolicy") {
        let p = "spec.outboundTrafficPolicy";
        let oo = as_obj(otp, p)?;
        registry_only = match opt_str(oo, "mode", p)?.as_deref() {
            None | Some("ALLOW_ANY") => false,
            Some("REGISTRY_ONLY") => true,
            Some(other) => {
                return fail(
                    &join(p, "mode"),
                    format!("unknown mode {other:?} (ALLOW_ANY, REGISTRY_ONLY)"),
                )
            }
        };
    }
    Ok(Sidecar {
        workload_selector: workload_selector(o, "workloadSelector", "labels")?,
        meta,
        egress,
        registry_only,
    })
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
        let e = virtual_service(meta(), &v, &cx()).unwrap_err();
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
            ("hosts: a\nhttp: []", "spec.hosts", "expected a list, found a string"),
            ("hosts: [a]\nexportTo: [Prod]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.exportTo[0]",
             "\"Prod\" is not \".\", \"*\", \"~\" or a namespace name"),
            ("hosts: [a]\ntls: [{route: [{destination: {host: a}}]}]", "spec.tls[0].match",
             "TLS routes need at least one match with sniHosts"),
            ("hosts: [a]\ntls: [{match: [{port: 443}], route: [{destination: {host: a}}]}]", "spec.tls[0].match[0].sniHosts",
             "at least one SNI host is required"),
            ("hosts: [a]\ntcp: [{}]", "spec.tcp[0].route", "at least one destination is required"),
            ("hosts: [a]\ntcp: [{match: [{destinationSubnets: [x]}], route: [{destination: {host: a}}]}]",
             "spec.tcp[0].match[0].destinationSubnets[0]", "\"x\" is not an IP address or CIDR"),
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
        let vs = virtual_service(meta(), &v, &cx()).unwrap();
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
    fn replacement_syntax() {
        assert_eq!(istio_replacement("/v\\1/\\2"), "/v${1}/${2}");
        assert_eq!(istio_replacement("/a$b"), "/a$$b");
    }

    #[test]
    fn service_entry_and_sidecar_errors() {
        let se = |s: &str| {
            let v: Value = serde_yaml_ng::from_str(s).unwrap();
            service_entry(meta(), &v, &cx())
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
            ("hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: foo.com}]", "spec.endpoints[0].address",
             "\"foo.com\" is not an IP address (resolution STATIC needs IP endpoints)"),
            ("hosts: [a.com]\nendpoints: [{address: 1.2.3.4}]", "spec.endpoints[0]", "endpoints need resolution STATIC or DNS, not NONE"),
            ("hosts: [a.com]\naddresses: [nope]", "spec.addresses[0]", "\"nope\" is not an IP address or CIDR"),
            ("hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: 1.2.3.4, ports: {http: 0}}]", "spec.endpoints[0].ports.http", "0 is out of range 1..=65535"),
        ];
        for (s, f, r) in cases {
            assert_eq!(se(s), Err((f.to_string(), r.to_string())), "{s}");
        }
        let sc = |s: &str| {
            let v: Value = serde_yaml_ng::from_str(s).unwrap();
            sidecar(meta(), &v).map_err(|e| (e.field, e.reason))
        };
        assert_eq!(
            sc("egress: [{hosts: [foo]}]").unwrap_err(),
            (
                "spec.egress[0].hosts[0]".to_string(),
                "\"foo\" must be namespace/dnsName (e.g. \"./*\", \"istio-system/*\")".to_string()
            )
        );
        let ok = sc("egress: [{hosts: [\"./*\", \"istio-system/*\"]}]\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}").unwrap();
        assert!(ok.registry_only);
        assert_eq!(
            ok.egress[0].hosts[0],
            EgressHost {
                namespace: "default".into(),
                dns: "*".into()
            }
        );
    }
}
