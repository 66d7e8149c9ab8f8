//! What each HTTP request leaves behind: the Istio standard metrics and the access-log line.

use super::ReqCtx;
use crate::state::{Direction, Shared};
use crate::telemetry::peer::{peer_of, security_policy, PeerFacts};
use crate::telemetry::{flags, HttpLabelsRef, HttpLogEntry, Peer};
use pingora::proxy::Session;
use pingora::Error;
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
    if let Some(tracer) = s.tracer.as_deref() {
        super::trace::finish(
            Some(tracer),
            ctx,
            &super::trace::Finished {
                dir,
                gateway,
                status,
                response_flags,
                protocol: match protocol {
                    "http2" | "grpc" if session.is_http2() => "HTTP/2",
                    _ => "HTTP/1.1",
                },
                peer_address: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                request_size: req_bytes,
                response_size: resp_bytes,
                user_agent: super::header_str(session.req_header(), &http::header::USER_AGENT),
            },
        );
    }
    s.access_log.write_http(
        metrics,
        &HttpLogEntry {
            start_time: std::mem::take(&mut ctx.started_at),
            kind: "http",
            direction: dir.as_str(),
            method: std::mem::take(&mut ctx.method),
            path: std::mem::take(&mut ctx.path),
            authority: std::mem::take(&mut ctx.authority),
            protocol,
            status,
            duration_ms,
            upstream: ctx.upstream,
            original_dst: ctx.dst,
            downstream: session.client_addr().and_then(|a| a.as_inet()).copied(),
            route_name: ctx.route_name.take(),
            virtual_service: ctx.virtual_service.take(),
            destination_service: std::mem::take(&mut ctx.destination_service),
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
        },
    );
}
