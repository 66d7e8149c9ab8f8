//! The downstream limits: the flags of `remora-proxy run` that set them, and their validated
//! form (`DownstreamLimits`), including the h2 settings they become.

use clap::Args;
use std::time::Duration;

/// Pingora's own hard ceilings (pingora-core 0.9 `protocols/http/v1/common.rs`): our limits must
/// stay below them so that our answer, not Pingora's generic 400, is what a client sees.
pub const PINGORA_MAX_HEADERS: u64 = 256;
pub const PINGORA_MAX_HEADER_KB: u64 = 1023;

/// Flags of `remora-proxy run` for the abuse limits and the privilege check (flattened into the
/// run arguments; each one also reads its environment variable).
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Largest HTTP/1 request head (request line + headers), KiB; larger → 431. HTTP/2: the
    /// header-list size setting. Envoy's `max_request_headers_kb` default.
    #[arg(long, env = "REMORA_MAX_REQUEST_HEADERS_KB", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=PINGORA_MAX_HEADER_KB))]
    pub max_request_headers_kb: u64,
    /// Most header fields in one HTTP/1 request; more → 431. Envoy's
    /// `max_request_headers_count` default.
    #[arg(long, env = "REMORA_MAX_REQUEST_HEADERS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=PINGORA_MAX_HEADERS))]
    pub max_request_headers: u64,
    /// Longest HTTP/1 request line, KiB; longer → 414. Must not exceed
    /// --max-request-headers-kb.
    #[arg(long, env = "REMORA_MAX_REQUEST_LINE_KB", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=PINGORA_MAX_HEADER_KB))]
    pub max_request_line_kb: u64,
    /// Time a client has to send a whole HTTP/1 request head, seconds (slowloris); over it →
    /// 408 and close (or a plain close when nothing was sent).
    #[arg(long, env = "REMORA_REQUEST_HEADERS_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_headers_timeout_seconds: u64,
    /// Close HTTP keep-alive and h2c connections with no request, and opaque TCP connections
    /// with no byte either way, for this long, seconds (Istio's 1 h for both).
    #[arg(long, env = "REMORA_IDLE_TIMEOUT_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout_seconds: u64,
    /// Most open downstream connections on the inbound capture listener (15006: remote peers);
    /// a connection over the cap is closed at once. A separate cap from the outbound one, so
    /// remote peers cannot use up the pod's own outbound capacity. Default 10000.
    #[arg(long, env = "REMORA_MAX_INBOUND_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_inbound_connections: Option<u64>,
    /// Most open downstream connections on the outbound capture listener (15001: the pod's own
    /// app); a connection over the cap is closed at once. Default 10000.
    #[arg(long, env = "REMORA_MAX_OUTBOUND_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_outbound_connections: Option<u64>,
    /// Older form: the cap for each listener whose own flag is not given (it used to be one
    /// cap shared by both listeners).
    #[arg(long, env = "REMORA_MAX_DOWNSTREAM_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_downstream_connections: Option<u64>,
    /// Close an HTTP request (an HTTP/1 request or an HTTP/2 stream) on which nothing moved
    /// either way for this long, seconds: HTTP/2 streams are reset, HTTP/1 connections closed.
    /// Envoy's `stream_idle_timeout` default (5 min).
    #[arg(long, env = "REMORA_STREAM_IDLE_TIMEOUT_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub stream_idle_timeout_seconds: u64,
    /// Longest wait for one write to a downstream client to go through, seconds: a client that
    /// stops reading a response is disconnected after it.
    #[arg(long, env = "REMORA_DOWNSTREAM_WRITE_TIMEOUT_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub downstream_write_timeout_seconds: u64,
    /// Longest wait for one read from (or write to) the app on an inbound request, seconds,
    /// unless a route timeout sets one: a stuck app does not hold a request forever.
    #[arg(long, env = "REMORA_INBOUND_UPSTREAM_READ_TIMEOUT_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub inbound_upstream_read_timeout_seconds: u64,
    /// Most concurrent streams on one HTTP/2 downstream connection (h2 SETTINGS).
    #[arg(long, env = "REMORA_H2_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub h2_max_concurrent_streams: u32,
    /// Permit running as uid 0 inside Kubernetes (lab/debugging only). Outside Kubernetes uid 0
    /// is allowed with a warning.
    #[arg(long, env = "REMORA_ALLOW_ROOT")]
    pub allow_root: bool,
}

/// The downstream limits, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownstreamLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_request_line: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Connection cap of the inbound capture listener.
    pub max_inbound_connections: usize,
    /// Connection cap of the outbound capture listener.
    pub max_outbound_connections: usize,
    pub h2_max_concurrent_streams: u32,
    /// Per request (HTTP/1) or stream (HTTP/2): close after this long with nothing moving.
    pub stream_idle_timeout: Duration,
    /// Per write to a downstream client.
    pub downstream_write_timeout: Duration,
    /// Per read from the app on an inbound request (a route timeout replaces it).
    pub inbound_upstream_read_timeout: Duration,
}

/// The default cap of each capture listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for DownstreamLimits {
    fn default() -> Self {
        DownstreamLimits {
            max_head_bytes: 60 * 1024,
            max_headers: 100,
            max_request_line: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_inbound_connections: DEFAULT_MAX_CONNECTIONS,
            max_outbound_connections: DEFAULT_MAX_CONNECTIONS,
            h2_max_concurrent_streams: 100,
            stream_idle_timeout: Duration::from_secs(300),
            downstream_write_timeout: Duration::from_secs(300),
            inbound_upstream_read_timeout: Duration::from_secs(300),
        }
    }
}

impl DownstreamLimits {
    /// Build from the flags; errors name the flag, the value and the reason.
    pub fn from_args(a: &LimitArgs) -> Result<DownstreamLimits, String> {
        if a.max_request_line_kb > a.max_request_headers_kb {
            return Err(format!(
                "--max-request-line-kb/REMORA_MAX_REQUEST_LINE_KB: {} is larger than --max-request-headers-kb ({}); the request line is part of the head",
                a.max_request_line_kb, a.max_request_headers_kb
            ));
        }
        let kb = |v: u64, flag: &str| {
            usize::try_from(v.saturating_mul(1024))
                .map_err(|_| format!("{flag}: {v} KiB does not fit this platform"))
        };
        Ok(DownstreamLimits {
            max_head_bytes: kb(a.max_request_headers_kb, "--max-request-headers-kb")?,
            max_headers: usize::try_from(a.max_request_headers)
                .map_err(|_| format!("--max-request-headers: {}", a.max_request_headers))?,
            max_request_line: kb(a.max_request_line_kb, "--max-request-line-kb")?,
            header_timeout: Duration::from_secs(a.request_headers_timeout_seconds),
            idle_timeout: Duration::from_secs(a.idle_timeout_seconds),
            max_inbound_connections: cap(
                a.max_inbound_connections,
                a.max_downstream_connections,
                "--max-inbound-connections",
            )?,
            max_outbound_connections: cap(
                a.max_outbound_connections,
                a.max_downstream_connections,
                "--max-outbound-connections",
            )?,
            h2_max_concurrent_streams: a.h2_max_concurrent_streams,
            stream_idle_timeout: Duration::from_secs(a.stream_idle_timeout_seconds),
            downstream_write_timeout: Duration::from_secs(a.downstream_write_timeout_seconds),
            inbound_upstream_read_timeout: Duration::from_secs(
                a.inbound_upstream_read_timeout_seconds,
            ),
        })
    }

    /// The connection cap of a capture listener (`"inbound"` or `"outbound"`).
    pub fn max_connections(&self, listener: &str) -> usize {
        if listener == "inbound" {
            self.max_inbound_connections
        } else {
            self.max_outbound_connections
        }
    }

    /// The h2 settings for downstream h2c connections (Pingora's bounded defaults, with ours).
    pub fn h2_options(&self) -> pingora::protocols::http::v2::server::H2Options {
        let mut o = pingora::protocols::http::v2::server::default_h2_options();
        o.max_concurrent_streams(self.h2_max_concurrent_streams);
        o.max_header_list_size(u32::try_from(self.max_head_bytes).unwrap_or(u32::MAX));
        o
    }
}

/// A listener's cap: its own flag, else the older shared flag, else the default.
fn cap(own: Option<u64>, shared: Option<u64>, flag: &str) -> Result<usize, String> {
    match own.or(shared) {
        None => Ok(DEFAULT_MAX_CONNECTIONS),
        Some(v) => usize::try_from(v).map_err(|_| format!("{flag}: {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_flags_validate() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            l: LimitArgs,
        }
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(
            DownstreamLimits::from_args(&t.l).unwrap(),
            DownstreamLimits::default()
        );
        let t = T::try_parse_from(["t", "--max-request-line-kb=61"]).unwrap();
        let e = DownstreamLimits::from_args(&t.l).unwrap_err();
        assert!(
            e.contains("--max-request-line-kb") && e.contains("61"),
            "{e}"
        );
        let e = T::try_parse_from(["t", "--max-request-headers=300"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--max-request-headers"), "{e}");
        assert!(T::try_parse_from(["t", "--max-downstream-connections=0"]).is_err());
        assert!(T::try_parse_from(["t", "--max-inbound-connections=0"]).is_err());
        // Separate caps; the older flag sets each one not given on its own.
        let l = |args: &[&str]| {
            let mut v = vec!["t"];
            v.extend_from_slice(args);
            DownstreamLimits::from_args(&T::try_parse_from(v).unwrap().l).unwrap()
        };
        let d = l(&[]);
        assert_eq!(
            (d.max_inbound_connections, d.max_outbound_connections),
            (10_000, 10_000)
        );
        let d = l(&["--max-inbound-connections=5"]);
        assert_eq!(
            (d.max_inbound_connections, d.max_outbound_connections),
            (5, 10_000)
        );
        let d = l(&[
            "--max-downstream-connections=7",
            "--max-outbound-connections=9",
        ]);
        assert_eq!(
            (d.max_inbound_connections, d.max_outbound_connections),
            (7, 9)
        );
        assert_eq!(d.max_connections("inbound"), 7);
        assert_eq!(d.max_connections("outbound"), 9);
        assert_eq!(d.stream_idle_timeout, Duration::from_secs(300));
    }
}
