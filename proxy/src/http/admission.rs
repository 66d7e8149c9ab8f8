//! Pool admission (a destination's `connectionPool` limits): a request over them fails fast
//! with 503 `UO`, as Envoy's circuit breakers do.

use super::{local_reply, ReqCtx};
use crate::policy::limits::Admitted;
use crate::policy::Destination;
use crate::telemetry::flags;
use pingora::proxy::Session;
use pingora::Result;

/// Admit the request to `dest`'s pool; `None` when it was answered 503 instead.
pub(super) async fn admit(
    session: &mut Session,
    ctx: &mut ReqCtx,
    dest: &Destination,
) -> Result<Option<Admitted>> {
    match dest.admit().await {
        Ok(a) => Ok(Some(a)),
        Err(o) => {
            ctx.flags = flags::UPSTREAM_OVERFLOW;
            ctx.error = Some(o.reason().to_string());
            local_reply::send(
                session,
                ctx,
                503,
                &[],
                "upstream connect error or disconnect/reset before headers. reset reason: overflow\n",
            )
            .await?;
            Ok(None)
        }
    }
}
