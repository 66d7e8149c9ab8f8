//! What each HTTP request leaves behind: the Istio standard metrics and the access-log line.

use super::ReqCtx;
use crate::state::{Direction, Settings};
use crate::telemetry::{flags, HttpLabelsRef, HttpLogEntry, Metrics};
use pingora::proxy::Session;
use pingora::Error;

/// Record the finished request `ctx` (failed with `e`, if it did) in `metrics` and the access
/// log.
pub(super) fn record(
    dir: Direction,
    s: &Settings,
    metrics: &Metrics,
    session: &Session,
    e: Option<&Error>,
    ctx: &mut ReqCtx,
) {
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
    let (sw, sns, dw, dns) = match dir {
        Direction::Outbound => (
            s.workload.name.as_str(),
            s.workload.namespace.as_str(),
            "unknown",
            "unknown",
        ),
        Direction::Inbound => (
            "unknown",
            "unknown",
            s.workload.name.as_str(),
            s.workload.namespace.as_str(),
        ),
    };
    let security = if ctx.mesh_upstream || ctx.peer_identity.is_some() {
        "mutual_tls"
    } else {
        "none"
    };
    let labels = HttpLabelsRef {
        reporter: dir.reporter(),
        source_workload: sw,
        source_workload_namespace: sns,
        destination_workload: dw,
        destination_workload_namespace: dns,
        destination_service: &ctx.destination_service,
        request_protocol: if ctx.grpc { "grpc" } else { "http" },
        response_code: status,
        grpc_response_status: ctx.grpc_status.unwrap_or_default(),
        response_flags,
        connection_security_policy: security,
    };
    metrics.record_http_ref(&labels, duration_ms, req_bytes, resp_bytes);
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
            connection_security_policy: security,
            peer_principal: ctx.peer_identity.as_ref().map(|p| p.principal.as_str()),
            tls_version: ctx.peer_identity.as_ref().map(|p| p.tls_version),
        },
    );
}
