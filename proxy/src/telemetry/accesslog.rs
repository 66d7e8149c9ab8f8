//! One JSON access-log line per HTTP request and per TCP connection, on stdout.

use serde::Serialize;
use std::io::Write;

/// Where access-log lines go. `Stdout` is the product setting; `Off` disables them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLog {
    Stdout,
    Off,
}

impl AccessLog {
    /// Write one line (a serialized entry) and flush, ignoring a closed stdout.
    pub fn write<T: Serialize>(&self, entry: &T) {
        if *self == AccessLog::Off {
            return;
        }
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without a date crate.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let ms = now.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// An HTTP request's access-log entry.
#[derive(Debug, Serialize)]
pub struct HttpLogEntry {
    pub start_time: String,
    pub kind: &'static str,
    pub direction: &'static str,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub protocol: &'static str,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream: Option<String>,
    pub original_dst: Option<String>,
    pub downstream: Option<String>,
    pub route_name: Option<String>,
    pub virtual_service: Option<String>,
    pub destination_service: String,
    pub response_flags: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub request_id: String,
    pub traceparent: Option<String>,
    pub error: Option<String>,
}

/// A TCP connection's access-log entry.
#[derive(Debug, Serialize)]
pub struct TcpLogEntry {
    pub start_time: String,
    pub kind: &'static str,
    pub direction: &'static str,
    pub protocol: &'static str,
    pub duration_ms: f64,
    pub upstream: Option<String>,
    pub original_dst: Option<String>,
    pub downstream: Option<String>,
    pub route_name: Option<String>,
    pub response_flags: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_rfc3339_utc() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert!(t.starts_with("20"), "{t}");
    }

    #[test]
    fn entry_serializes_as_one_json_line() {
        let e = TcpLogEntry {
            start_time: now_rfc3339(),
            kind: "tcp",
            direction: "outbound",
            protocol: "tcp",
            duration_ms: 1.5,
            upstream: Some("127.0.0.1:9".into()),
            original_dst: None,
            downstream: None,
            route_name: None,
            response_flags: "-".into(),
            bytes_received: 3,
            bytes_sent: 4,
            reason: None,
        };
        let s = serde_json::to_string(&e).unwrap();
        assert!(!s.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["bytes_sent"], 4);
        assert_eq!(v["upstream"], "127.0.0.1:9");
    }
}
