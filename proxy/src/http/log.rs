//! What each HTTP request leaves behind: the Istio standard metrics and the access-log line.

use super::ReqCtx;
use crate::state::{Direction, Shared};
use crate::telemetry::accesslog::ClusterName;
use crate::telemetry::peer::{peer_of, security_policy, PeerFacts};
use crate::telemetry::{flags, HttpLabelsRef, HttpLogEntry, Peer};
use pingora::proxy::Session;
use pingora::Error;
use remora_model::telemetry::Side;
use std::sync::Arc;

/// The other side's labels: inbound, the client (its mTLS principal, its pod by address,
/// decided once per mTLS connection); outbound, the endpoint the request went to (the server's
/// SPIFFE id over mTLS, its pod by address, its labels in the rules). `unknown` (without an
/// allocation) when nothing is known.
fn peer_labels(dir: Direction, shared: &Shared, session: &Session, ctx: &ReqCtx) -> Arc<Peer> {
    let snap = shared.snapshot.load();
    let cluster = &shared.settings.workload.plain.cluster;
    match dir {
        Direction::Inbound => {
            let ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let pod = || ip.and_then(|ip| snap.endpoints.pod_of_ip(ip));
            if let Some(info) = &ctx.peer_identity {
                return info
                    .labels
                    .get_or_init(|| {
                        Arc::new(peer_of(&PeerFacts {
                            principal: Some(&info.principal),
                            pod: pod().as_deref(),
                            exchanged: ctx.exchanged.as_deref(),
                            endpoint_labels: None,
                            cluster,
                        }))
                    })
                    .clone();
            }
            match pod() {
                None => Peer::unknown(),
                Some(p) => Arc::new(peer_of(&PeerFacts {
                    pod: Some(&p),
                    cluster,
                    ..Default::default()
                })),
            }
        }
        Direction::Outbound => {
            let Some(addr) = ctx.upstream else {
                return Peer::unknown();
            };
            let principal = shared
                .identity
                .as_ref()
                .filter(|_| ctx.mesh_upstream)
                .and_then(|id| id.servers.get(addr));
            let pod = snap.endpoints.pod_of_ip(addr.ip());
            let endpoint_labels = ctx
                .policy
                .as_ref()
                .and_then(|rp| rp.endpoints.iter().find(|e| e.addr == addr))
                .map(|e| &e.labels)
                .filter(|l| !l.is_empty());
            if principal.is_none() && pod.is_none() && endpoint_labels.is_none() {
                return Peer::unknown();
            }
            Arc::new(peer_of(&PeerFacts {
                principal: principal.as_deref(),
                pod: pod.as_deref(),
                exchanged: ctx.exchanged.as_deref(),
                endpoint_labels,
                cluster,
            }))
        }
    }
}

/// Record the finished request `ctx` (failed with `e`, if it did) in the metrics and the access
/// log.
pub(super) fn record(
    dir: Direction,
    gateway: bool,
    shared: &Shared,
    session: &Session,
    e: Option<&Error>,
    ctx: &mut ReqCtx,
) {
    let (s, metrics) = (&shared.settings, &*shared.metrics);
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.local_status)
        .unwrap_or(0);
    if let (Some(e), None) = (e, &ctx.error) {
        ctx.error = Some(e.to_string());
    }
    let delayed_flags;
    let response_flags: &str = match (ctx.fault_delayed, ctx.flags) {
        (false, f) => f,
        (true, flags::NONE) => flags::DELAY_INJECTED,
        (true, f) => {
            delayed_flags = format!("{},{f}", flags::DELAY_INJECTED);
            &delayed_flags
        }
    };
    let duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0;
    let req_bytes = session.body_bytes_read() as u64;
    let resp_bytes = session.body_bytes_sent() as u64;
    let protocol: &'static str = if ctx.grpc {
        "grpc"
    } else if session.is_http2() {
        "http2"
    } else {
        "http"
    };
    let mutual_tls = ctx.mesh_upstream || ctx.peer_identity.is_some();
    let security = security_policy(dir == Direction::Inbound, mutual_tls);
    let me = s.workload.labels(mutual_tls);
    let peer = peer_labels(dir, shared, session, ctx);
    let (source, destination) = match dir {
        Direction::Outbound => (me, &peer),
        Direction::Inbound => (&peer, me),
    };
    let labels = HttpLabelsRef {
        reporter: dir.reporter(),
        source,
        destination,
        destination_service: &ctx.destination_service,
        request_protocol: if ctx.grpc { "grpc" } else { "http" },
        response_code: status,
        grpc_response_status: ctx.grpc_status.unwrap_or_default(),
        response_flags,
        connection_security_policy: security,
    };
    metrics.record_http_ref(&labels, duration_ms, req_bytes, resp_bytes);
    let targets = std::mem::take(&mut ctx.log_to);
    let sampled = matches!(ctx.trace, super::trace::Traced::Sampled(_));
    let log = !targets.none(s.access_log);
    if !sampled && !log {
        return;
    }
    let user_agent = super::header_str(session.req_header(), &http::header::USER_AGENT);
    let istio_protocol = if session.is_http2() {
        "HTTP/2"
    } else {
        "HTTP/1.1"
    };
    if sampled {
        let snap = shared.snapshot.load();
        let side = match dir {
            Direction::Outbound => Side::Client,
            Direction::Inbound => Side::Server,
        };
        let cluster = cluster_name(
            dir,
            ctx.dst,
            ctx.route_port,
            ctx.subset.as_deref(),
            &ctx.destination_service,
        )
        .to_string();
        super::trace::finish(
            ctx,
            &super::trace::Finished {
                dir,
                gateway,
                status,
                response_flags,
                protocol: istio_protocol,
                peer_address: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                request_size: req_bytes,
                response_size: resp_bytes,
                user_agent,
                cluster,
                port: span_port(dir, ctx),
                custom_tags: &snap.telemetry.side(side).custom_tags,
                request: session.req_header(),
            },
        );
    }
    if !log {
        return;
    }
    let downstream = session.client_addr().and_then(|a| a.as_inet()).copied();
    let destination_service = std::mem::take(&mut ctx.destination_service);
    let subset = ctx.subset.take();
    let entry = HttpLogEntry {
        start_time: std::mem::take(&mut ctx.started_at),
        kind: "http",
        direction: dir.as_str(),
        method: std::mem::take(&mut ctx.method),
        path: std::mem::take(&mut ctx.path),
        authority: std::mem::take(&mut ctx.authority),
        protocol: istio_protocol,
        request_protocol: protocol,
        status,
        response_code: status,
        response_code_details: code_details(ctx.local_status.is_some(), response_flags),
        duration_ms,
        duration: duration_ms as u64,
        upstream: ctx.upstream,
        upstream_host: ctx.upstream,
        upstream_cluster: Some(cluster_name(
            dir,
            ctx.dst,
            ctx.route_port,
            subset.as_deref(),
            &destination_service,
        )),
        original_dst: ctx.dst,
        downstream,
        downstream_local_address: ctx.dst,
        downstream_remote_address: downstream,
        x_forwarded_for: super::header_str(session.req_header(), &X_FORWARDED_FOR),
        user_agent,
        route_name: ctx.route_name.take(),
        virtual_service: ctx.virtual_service.take(),
        destination_service: &destination_service,
        response_flags,
        bytes_received: req_bytes,
        bytes_sent: resp_bytes,
        request_id: std::mem::take(&mut ctx.request_id),
        traceparent: ctx.traceparent.take(),
        error: ctx.error.take(),
        // The log says what the hop was (`none`: plain text), on both sides.
        connection_security_policy: if mutual_tls { "mutual_tls" } else { "none" },
        peer_principal: ctx.peer_identity.as_ref().map(|p| p.principal.as_str()),
        tls_version: ctx.peer_identity.as_ref().map(|p| p.tls_version),
        upstream_local_address: ctx.upstream_local,
        requested_server_name: ctx.peer_identity.as_ref().and_then(|p| p.sni.as_deref()),
        upstream_transport_failure_reason: ctx.transport_failure.as_deref(),
        upstream_service_time: ctx.upstream_service_ms,
    };
    for a in targets.encodings(&s.access_log) {
        a.write_http(metrics, &entry);
    }
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Istio's cluster name of the request's upstream: `outbound|<port>|<subset>|<host>` for a
/// routed outbound request, `inbound|<port>||` inbound, else the destination service
/// (`PassthroughCluster`, `BlackHoleCluster`, `unknown`).
fn cluster_name<'a>(
    dir: Direction,
    dst: Option<std::net::SocketAddr>,
    route_port: u16,
    subset: Option<&'a str>,
    service: &'a str,
) -> ClusterName<'a> {
    match dir {
        Direction::Inbound => ClusterName::Inbound(dst.map_or(0, |d| d.port())),
        Direction::Outbound if route_port != 0 => ClusterName::Outbound {
            port: route_port,
            subset: subset.unwrap_or_default(),
            host: service,
        },
        Direction::Outbound => ClusterName::Named(service),
    }
}

/// The port of the span's name: the routed port outbound, the original destination's else.
fn span_port(dir: Direction, ctx: &ReqCtx) -> u16 {
    match dir {
        Direction::Outbound if ctx.route_port != 0 => ctx.route_port,
        _ => ctx.dst.map_or(0, |d| d.port()),
    }
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for what remora knows of the answer: `via_upstream` when
/// the upstream answered, else the reason the proxy answered itself (by its response flag).
fn code_details(local: bool, response_flags: &str) -> &'static str {
    let last = response_flags.rsplit(',').next().unwrap_or(response_flags);
    match (local, last) {
        (_, flags::RETRY_LIMIT_EXCEEDED) | (false, flags::NONE | flags::DELAY_INJECTED) => {
            "via_upstream"
        }
        (_, flags::NO_ROUTE) => "route_not_found",
        (_, flags::UPSTREAM_CONNECT_FAILURE) => {
            "upstream_reset_before_response_started{connection_failure}"
        }
        (_, flags::UPSTREAM_TIMEOUT) => "response_timeout",
        (_, flags::UPSTREAM_TERMINATION) => {
            "upstream_reset_before_response_started{connection_termination}"
        }
        (_, flags::UPSTREAM_PROTOCOL_ERROR) => {
            "upstream_reset_before_response_started{protocol_error}"
        }
        (_, flags::DOWNSTREAM_TERMINATION) => "downstream_remote_disconnect",
        (_, flags::NO_HEALTHY_UPSTREAM) => "no_healthy_upstream",
        (_, flags::UPSTREAM_OVERFLOW) => "upstream_reset_before_response_started{overflow}",
        (_, flags::FAULT_INJECTED) => "fault_filter_abort",
        (_, flags::RATE_LIMITED) => "local_rate_limited",
        (true, _) => "direct_response",
        (false, _) => "via_upstream",
    }
}

#[cfg(test)]
mod tests {
    use super::code_details;

    #[test]
    fn code_details_say_who_answered() {
        assert_eq!(code_details(false, "-"), "via_upstream");
        assert_eq!(code_details(false, "DI"), "via_upstream");
        assert_eq!(code_details(true, "-"), "direct_response");
        assert_eq!(code_details(true, "NR"), "route_not_found");
        assert_eq!(
            code_details(true, "DI,UF"),
            "upstream_reset_before_response_started{connection_failure}"
        );
        assert_eq!(code_details(false, "URX"), "via_upstream");
        assert_eq!(code_details(true, "RL"), "local_rate_limited");
    }
}
