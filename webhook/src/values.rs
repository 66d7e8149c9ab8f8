//! Value vocabularies shared by the injector's configuration and the pod annotations: proxy log
//! levels and Kubernetes resource quantities.

/// Proxy log levels accepted by `sidecar.istio.io/logLevel` (Envoy's names).
pub const LOG_LEVELS: &[&str] = &[
    "trace", "debug", "info", "warning", "error", "critical", "off",
];

/// Parses a Kubernetes resource quantity ("100m", "1.5", "128Mi", "1e3") into its value.
pub fn parse_quantity(v: &str) -> Result<f64, String> {
    let s = v.trim();
    if s.is_empty() {
        return Err("empty quantity".to_string());
    }
    let num_end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '+' || *c == '-'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num.starts_with('-') {
        return Err("not a non-negative quantity like 100m, 0.5, 128Mi or 1Gi".to_string());
    }
    let n: f64 = num
        .parse()
        .map_err(|_| "not a non-negative quantity like 100m, 0.5, 128Mi or 1Gi".to_string())?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if (e.starts_with('e') || e.starts_with('E')) && e.len() > 1 => {
            let exp: i32 = e[1..]
                .parse()
                .map_err(|_| format!("unknown suffix {suffix:?}"))?;
            10f64.powi(exp)
        }
        _ => {
            return Err(format!(
                "unknown suffix {suffix:?} (use m, k, M, G, Ki, Mi, Gi, ...)"
            ))
        }
    };
    Ok(n * mult)
}
