//! Mirroring: which mirrors a request is copied to, and the shadow authority
//! (`host-shadow[:port]`, as Envoy rewrites it).

use crate::kinds::Mirror;

/// `reviews:9080` → `reviews-shadow:9080`; `[::1]:80` → `[::1]-shadow:80` is not meaningful,
/// so IP literals keep Envoy's rule too (suffix after the host part).
pub fn shadow_authority(authority: &str) -> String {
    let a = authority.trim();
    // host part ends at the last ':' that is outside brackets and followed only by digits
    if let Some(i) = a.rfind(':') {
        let (h, p) = a.split_at(i);
        let is_port = p.len() > 1 && p[1..].bytes().all(|b| b.is_ascii_digit());
        let inside_v6 = h.starts_with('[') && !h.ends_with(']');
        let bare_v6 = h.contains(':') && !h.starts_with('[');
        if is_port && !inside_v6 && !bare_v6 {
            return format!("{h}-shadow{p}");
        }
    }
    format!("{a}-shadow")
}

/// The mirrors this request goes to (each sampled by its own percentage).
pub fn select<'a>(mirrors: &'a [Mirror], rng: &mut impl rand::Rng) -> Vec<&'a Mirror> {
    mirrors
        .iter()
        .filter(|m| super::fault::sample(m.percentage, rng))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn percentages_select_mirrors_independently() {
        let m = |host: &str, percentage: f64| Mirror {
            host: host.into(),
            subset: None,
            port: None,
            percentage,
        };
        let mirrors = [m("all", 100.0), m("none", 0.0), m("half", 50.0)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut half = 0;
        for _ in 0..10_000 {
            let s = select(&mirrors, &mut rng);
            assert_eq!(s[0].host, "all");
            assert!(s.iter().all(|x| x.host != "none"));
            half += s.iter().filter(|x| x.host == "half").count();
        }
        // 3 sigma of Binomial(10000, 0.5) is 150
        assert!((4850..=5150).contains(&half), "{half}");
    }
}
