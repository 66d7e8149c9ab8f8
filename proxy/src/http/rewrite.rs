//! Rewrites of a routed request and its response: the route's header operations (set, add,
//! remove, in Istio's order), its `rewrite.uri` and `rewrite.authority`, `Connection: close` on
//! an upstream connection's last request, and the `:authority` an h2 upstream needs.

use super::{header_str, ReqCtx};
use crate::route::HeaderOps;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, Result};

/// Make the upstream request what the route says it is.
pub(super) fn upstream_request(upstream_request: &mut RequestHeader, ctx: &ReqCtx) -> Result<()> {
    if ctx.close_upstream {
        upstream_request.insert_header("connection", "close")?;
    }
    if let Some(f) = &ctx.forward {
        apply_request_ops(upstream_request, &f.request)?;
        if let Some(uri) = &f.uri {
            let mut parts = upstream_request.uri.clone().into_parts();
            parts.path_and_query = Some(uri.parse().map_err(|e| {
                Error::because(ErrorType::InternalError, format!("uri rewrite {uri:?}"), e)
            })?);
            let new = http::Uri::from_parts(parts)
                .map_err(|e| Error::because(ErrorType::InternalError, "uri rewrite", e))?;
            upstream_request.set_uri(new);
        }
        if let Some(a) = &f.authority {
            upstream_request.insert_header("host", a.as_str())?;
            if upstream_request.uri.authority().is_some() {
                let mut parts = upstream_request.uri.clone().into_parts();
                parts.authority = Some(a.parse().map_err(|e| {
                    Error::because(
                        ErrorType::InternalError,
                        format!("authority rewrite {a:?}"),
                        e,
                    )
                })?);
                if let Ok(u) = http::Uri::from_parts(parts) {
                    upstream_request.set_uri(u);
                }
            }
        }
    }
    // h1 → h2 upstream: the h2 client needs :authority; take it from Host.
    if ctx.upstream_h2 && upstream_request.uri.authority().is_none() {
        let host = header_str(upstream_request, "host").map(str::to_string);
        if let Some(host) = host {
            let pq = upstream_request
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            if let Ok(u) = http::Uri::builder()
                .scheme("http")
                .authority(host.as_str())
                .path_and_query(pq)
                .build()
            {
                upstream_request.set_uri(u);
            }
        }
    }
    Ok(())
}

/// The route's response header operations, then the headers other steps added (CORS,
/// `x-ratelimit-*`).
pub(super) fn response(resp: &mut ResponseHeader, ctx: &ReqCtx) -> Result<()> {
    apply_response_ops(resp, &ctx.response_ops)?;
    for (k, v) in &ctx.extra_response_headers {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    Ok(())
}

fn apply_request_ops(req: &mut RequestHeader, ops: &HeaderOps) -> Result<()> {
    for name in &ops.remove {
        req.remove_header(name.as_str());
    }
    for (k, v) in &ops.set {
        req.insert_header(k.clone(), v.as_str())?;
    }
    for (k, v) in &ops.add {
        req.append_header(k.clone(), v.as_str())?;
    }
    Ok(())
}

fn apply_response_ops(resp: &mut ResponseHeader, ops: &HeaderOps) -> Result<()> {
    for name in &ops.remove {
        resp.remove_header(name.as_str());
    }
    for (k, v) in &ops.set {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    for (k, v) in &ops.add {
        resp.append_header(k.clone(), v.as_str())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_ops_apply_in_istio_order() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-old", "1").unwrap();
        req.insert_header("x-keep", "1").unwrap();
        let ops = HeaderOps {
            set: vec![("x-set".into(), "a".into()), ("x-keep".into(), "2".into())],
            add: vec![("x-add".into(), "b".into()), ("x-keep".into(), "3".into())],
            remove: vec!["x-old".into()],
        };
        apply_request_ops(&mut req, &ops).unwrap();
        assert!(req.headers.get("x-old").is_none());
        assert_eq!(req.headers.get("x-set").unwrap(), "a");
        let keep: Vec<_> = req.headers.get_all("x-keep").iter().collect();
        assert_eq!(keep, vec!["2", "3"]);
        assert_eq!(req.headers.get("x-add").unwrap(), "b");
    }
}
