//! Fault injection (a route's `fault`): delay the request, or abort it with an HTTP or gRPC
//! status, before any upstream work.

use super::{grpc_status, local_reply, ReqCtx};
use crate::policy;
use crate::route::Forward;
use crate::telemetry::flags;
use pingora::proxy::Session;
use pingora::Result;

/// Inject the route's faults; `Ok(true)` when the request was aborted (answered here).
pub(super) async fn inject(session: &mut Session, ctx: &mut ReqCtx, f: &Forward) -> Result<bool> {
    let inj = policy::fault::decide(f.policy.fault.as_ref(), &mut rand::thread_rng());
    if let Some(d) = inj.delay {
        ctx.fault_delayed = true;
        tokio::time::sleep(d).await;
    }
    match inj.abort {
        Some(policy::fault::Abort::Http(status)) => {
            ctx.flags = flags::FAULT_INJECTED;
            local_reply::send(session, ctx, status, &[], "fault filter abort\n").await
        }
        Some(policy::fault::Abort::Grpc(code)) => {
            ctx.flags = flags::FAULT_INJECTED;
            let c = code.to_string();
            ctx.grpc_status = grpc_status::code_label(code.into());
            local_reply::send(
                session,
                ctx,
                200,
                &[
                    ("content-type", "application/grpc"),
                    ("grpc-status", &c),
                    ("grpc-message", "fault filter abort"),
                ],
                "",
            )
            .await
        }
        None => Ok(false),
    }
}
