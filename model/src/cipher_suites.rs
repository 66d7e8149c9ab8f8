//! `tls.cipherSuites` of a Gateway server: Istio's (Envoy's, BoringSSL's) cipher suite names
//! mapped to the TLS 1.2 suites remora's TLS library (rustls with ring) has. As in Envoy, the
//! list configures TLS 1.2 only: TLS 1.3's suites are always offered and cannot be listed.
//! Envoy's equivalence groups (`[A|B]`) are read as their members in order.

/// A TLS 1.2 suite remora can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls12Suite {
    EcdheEcdsaAes128GcmSha256,
    EcdheRsaAes128GcmSha256,
    EcdheEcdsaAes256GcmSha384,
    EcdheRsaAes256GcmSha384,
    EcdheEcdsaChacha20Poly1305,
    EcdheRsaChacha20Poly1305,
}

/// The names remora offers, as Envoy spells them.
const SUPPORTED: &[(&str, Tls12Suite)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        Tls12Suite::EcdheEcdsaAes128GcmSha256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        Tls12Suite::EcdheRsaAes128GcmSha256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        Tls12Suite::EcdheEcdsaAes256GcmSha384,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        Tls12Suite::EcdheRsaAes256GcmSha384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        Tls12Suite::EcdheEcdsaChacha20Poly1305,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        Tls12Suite::EcdheRsaChacha20Poly1305,
    ),
];

/// Names Envoy knows that rustls does not implement (CBC, static RSA, 3DES, PSK).
const UNSUPPORTED: &[&str] = &[
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
    "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-PSK-AES256-CBC-SHA",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "PSK-AES128-CBC-SHA",
    "PSK-AES256-CBC-SHA",
];

/// TLS 1.3's suites: always on, not configurable (in Envoy neither).
const TLS13: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The suite of one name, or why it cannot be offered.
fn one(name: &str) -> Result<Tls12Suite, String> {
    if let Some((_, s)) = SUPPORTED.iter().find(|(n, _)| *n == name) {
        return Ok(*s);
    }
    let supported = SUPPORTED
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    if UNSUPPORTED.contains(&name) {
        Err(format!(
            "{name:?} is not supported by remora's TLS library (rustls); supported: {supported}"
        ))
    } else if TLS13.contains(&name) {
        Err(format!(
            "{name:?} is a TLS 1.3 suite: TLS 1.3 suites are always on and not configurable (as in Envoy); list TLS 1.2 suites: {supported}"
        ))
    } else {
        Err(format!(
            "{name:?} is not a cipher suite name Envoy knows; supported: {supported}"
        ))
    }
}

/// The TLS 1.2 suites of a `cipherSuites` list, in its order, each once. Err: the index of the
/// first entry that cannot be offered and why (the caller names the field).
pub fn tls12_suites(names: &[String]) -> Result<Vec<Tls12Suite>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in names.iter().enumerate() {
        let raw = raw.trim();
        let members: Vec<&str> = match raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            Some(group) => group.split('|').map(str::trim).collect(),
            None => vec![raw],
        };
        for name in members {
            let s = one(name).map_err(|e| (i, e))?;
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// [`tls12_suites`] with the failing field named: `AT.cipherSuites[j]: reason`.
pub fn check(names: &[String], at: &str) -> Result<Vec<Tls12Suite>, String> {
    tls12_suites(names).map_err(|(i, e)| format!("{at}.cipherSuites[{i}]: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Tls12Suite::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn envoy_names_to_suites() {
        let ok: &[(&[&str], &[Tls12Suite])] = &[
            (&[], &[]),
            (
                &["ECDHE-ECDSA-AES128-GCM-SHA256"],
                &[EcdheEcdsaAes128GcmSha256],
            ),
            (
                &["ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES256-GCM-SHA384"],
                &[EcdheRsaChacha20Poly1305, EcdheRsaAes256GcmSha384],
            ),
            // Envoy's default list starts with an equivalence group.
            (
                &[
                    "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
                    "ECDHE-ECDSA-AES128-GCM-SHA256",
                ],
                &[EcdheEcdsaAes128GcmSha256, EcdheEcdsaChacha20Poly1305],
            ),
            (
                &[
                    "ECDHE-RSA-AES128-GCM-SHA256",
                    "ECDHE-ECDSA-AES256-GCM-SHA384",
                ],
                &[EcdheRsaAes128GcmSha256, EcdheEcdsaAes256GcmSha384],
            ),
        ];
        for (n, want) in ok {
            assert_eq!(tls12_suites(&names(n)).as_deref(), Ok(*want), "{n:?}");
        }
        let bad: &[(&[&str], usize, &str)] = &[
            (
                &["ECDHE-RSA-AES128-GCM-SHA256", "AES128-SHA"],
                1,
                "\"AES128-SHA\" is not supported by remora's TLS library (rustls)",
            ),
            (
                &["TLS_AES_128_GCM_SHA256"],
                0,
                "\"TLS_AES_128_GCM_SHA256\" is a TLS 1.3 suite",
            ),
            (
                &["ECDHE-RSA-AES128-GCM-SHA512"],
                0,
                "\"ECDHE-RSA-AES128-GCM-SHA512\" is not a cipher suite name Envoy knows",
            ),
            (
                &["[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-AES128-SHA]"],
                0,
                "\"ECDHE-ECDSA-AES128-SHA\" is not supported",
            ),
            (
                &["ecdhe-rsa-aes128-gcm-sha256"],
                0,
                "\"ecdhe-rsa-aes128-gcm-sha256\" is not a cipher suite name Envoy knows",
            ),
        ];
        for (n, at, why) in bad {
            let (i, e) = tls12_suites(&names(n)).unwrap_err();
            assert_eq!(i, *at, "{n:?}");
            assert!(e.starts_with(why), "{n:?}: {e}");
        }
        assert!(check(&names(&["RC4-SHA"]), "spec.servers[2].tls")
            .unwrap_err()
            .starts_with("spec.servers[2].tls.cipherSuites[0]: \"RC4-SHA\" is not"));
    }
}
