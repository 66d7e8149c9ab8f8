//! Durations as Istio (Go) writes them (`10s`, `0.5s`, `100ms`, `1m30s`), and on command lines
//! also with days and bare seconds.

use std::time::Duration;

/// Parse a duration as Istio/Go write them: `10s`, `0.5s`, `100ms`, `1m30s`, `2h`, `250us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_units(s, false)
}

/// Durations on command lines: Istio's grammar plus `d` (days) and a bare number of seconds
/// (`90d`, `1d12h`, `45`).
pub fn parse_duration_days(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.trim().parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    parse_duration_units(s, true)
}

fn parse_duration_units(s: &str, days: bool) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".to_string());
    }
    if t.starts_with('-') {
        return Err(format!("negative duration {s:?}"));
    }
    let bytes = t.as_bytes();
    let mut i = 0;
    let mut total = 0f64;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let num = &t[start..i];
        if num.is_empty() {
            return Err(format!(
                "invalid duration {s:?}: expected a number such as \"10s\", \"0.5s\" or \"100ms\""
            ));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: bad number {num:?}"))?;
        let ustart = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let unit = &t[ustart..i];
        let factor = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" if days => 86_400.0,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (ns, us, ms, s, m, h)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (ns, us, ms, s, m, h)"
                ))
            }
        };
        total += value * factor;
    }
    if !total.is_finite() || total > 1e10 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("10s", Duration::from_secs(10)),
            ("0.5s", Duration::from_millis(500)),
            ("100ms", Duration::from_millis(100)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
            ("7s", Duration::from_secs(7)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        let bad = [
            ("", "empty duration"),
            (
                "10",
                "invalid duration \"10\": missing unit (ns, us, ms, s, m, h)",
            ),
            (
                "10sec",
                "invalid duration \"10sec\": unknown unit \"sec\" (ns, us, ms, s, m, h)",
            ),
            ("-1s", "negative duration \"-1s\""),
            (
                "s",
                "invalid duration \"s\": expected a number such as \"10s\", \"0.5s\" or \"100ms\"",
            ),
            ("1..2s", "invalid duration \"1..2s\": bad number \"1..2\""),
        ];
        for (s, e) in bad {
            assert_eq!(parse_duration(s), Err(e.to_string()), "{s}");
        }
    }
}
