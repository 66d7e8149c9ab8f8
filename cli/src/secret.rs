//! `remora proxy-config secret`: the workload certificate a sidecar holds, as
//! `istioctl proxy-config secret` shows it: the chain (`default`) and the trusted roots
//! (`ROOTCA`), each with its serial and validity, plus the SPIFFE id and the renewal state.

use remora_model::dump::IdentityDump;
use serde::Serialize;

use super::{table, text};

/// One certificate the proxy holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecretRow {
    /// `default` (the workload chain) or `ROOTCA`.
    pub resource: String,
    /// `Cert Chain` or `CA`.
    pub kind: String,
    /// `ACTIVE`, `WAITING` (none issued yet) or `EXPIRED`.
    pub status: String,
    pub valid: bool,
    pub serial: String,
    /// RFC 3339, UTC.
    pub not_after: String,
    pub not_before: String,
}

/// The secret view of one proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecretView {
    pub spiffe_id: String,
    pub ca_address: String,
    pub rows: Vec<SecretRow>,
    /// Renewal state in words (next renewal, last error).
    pub notes: Vec<String>,
}

/// The view of a dump's `identity` section, at `now` (Unix seconds).
pub fn view(id: &IdentityDump, now: i64) -> SecretView {
    let mut rows = Vec::new();
    let status = match id.state.as_str() {
        "valid" => "ACTIVE",
        "expired" => "EXPIRED",
        _ => "WAITING",
    };
    if let Some(serial) = &id.serial {
        rows.push(SecretRow {
            resource: "default".into(),
            kind: "Cert Chain".into(),
            status: status.into(),
            valid: id.state == "valid",
            serial: serial.clone(),
            not_after: id.not_after.map(rfc3339).unwrap_or_default(),
            not_before: id.not_before.map(rfc3339).unwrap_or_default(),
        });
    }
    for c in certs(&id.roots_pem) {
        rows.push(SecretRow {
            resource: "ROOTCA".into(),
            kind: "CA".into(),
            status: "ACTIVE".into(),
            valid: c.not_before <= now && now < c.not_after,
            serial: c.serial,
            not_after: rfc3339(c.not_after.max(0) as u64),
            not_before: rfc3339(c.not_before.max(0) as u64),
        });
    }
    let mut notes = Vec::new();
    match (id.expires_in_seconds, id.next_renewal_in_seconds) {
        (Some(e), _) if e <= 0 => notes.push(format!(
            "the workload certificate expired {}s ago; the proxy is unready until the CA issues a new one",
            -e
        )),
        (Some(e), Some(n)) => notes.push(format!(
            "expires in {}, renewal in {}",
            text::short_duration(e),
            text::short_duration(n.max(0))
        )),
        _ => notes.push("no certificate issued yet".into()),
    }
    if let Some(err) = &id.last_error {
        notes.push(format!("last request to the CA failed: {err}"));
    }
    if id.inbound_mtls_connections > 0 {
        notes.push(format!(
            "{} inbound mTLS connections open",
            id.inbound_mtls_connections
        ));
    }
    SecretView {
        spiffe_id: id.spiffe_id.clone(),
        ca_address: id.ca_address.clone(),
        rows,
        notes,
    }
}

/// The text table.
pub fn render(v: &SecretView) -> String {
    let header = [
        "RESOURCE NAME",
        "TYPE",
        "STATUS",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "NOT BEFORE",
    ];
    let mut cells = Vec::new();
    for r in &v.rows {
        cells.push(vec![
            r.resource.clone(),
            r.kind.clone(),
            r.status.clone(),
            r.valid.to_string(),
            r.serial.clone(),
            r.not_after.clone(),
            r.not_before.clone(),
        ]);
    }
    let mut out = table::render(&header, &cells);
    out.push_str(&format!(
        "identity {} from the CA at {}\n",
        v.spiffe_id, v.ca_address
    ));
    for n in &v.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

struct Cert {
    serial: String,
    not_before: i64,
    not_after: i64,
}

fn certs(pem: &str) -> Vec<Cert> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            Some(Cert {
                serial: c.raw_serial_as_string().replace(':', ""),
                not_before: c.validity().not_before.timestamp(),
                not_after: c.validity().not_after.timestamp(),
            })
        })
        .collect()
}

/// `2026-12-07T04:02:10Z` from Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let Ok(t) = remora_webhook::certs::OffsetDateTime::from_unix_timestamp(secs as i64) else {
        return secs.to_string();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (String, String) {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        (c.pem(), "0abc".to_string())
    }

    #[test]
    fn rows_and_notes_from_a_dump() {
        let (root_pem, root_serial) = root();
        let id = IdentityDump {
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
            ca_address: "remora-ca.remora-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            state: "valid".into(),
            serial: Some("1f2e".into()),
            not_before: Some(1_796_601_600),
            not_after: Some(1_796_688_000),
            expires_in_seconds: Some(86_000),
            next_renewal_in_seconds: Some(43_000),
            requests: 1,
            last_error: None,
            chain_pem: vec![],
            roots_pem: root_pem,
            inbound_mtls_connections: 2,
        };
        let v = view(&id, 1_796_602_000);
        assert_eq!(v.rows.len(), 2);
        assert_eq!(v.rows[0].resource, "default");
        assert_eq!(v.rows[0].status, "ACTIVE");
        assert_eq!(v.rows[0].not_before, "2026-12-07T00:00:00Z");
        assert_eq!(v.rows[0].not_after, "2026-12-08T00:00:00Z");
        assert_eq!(v.rows[1].resource, "ROOTCA");
        assert_eq!(v.rows[1].serial, root_serial);
        assert!(v.rows[1].valid);
        assert_eq!(
            v.notes,
            vec![
                "expires in 23h53m, renewal in 11h56m".to_string(),
                "2 inbound mTLS connections open".to_string()
            ]
        );
        let text = render(&v);
        assert!(text.starts_with("RESOURCE NAME"), "{text}");
        assert!(text.contains("identity spiffe://cluster.local/ns/shop/sa/web from the CA at remora-ca.remora-system.svc:15012"), "{text}");

        let waiting = IdentityDump {
            state: "waiting".into(),
            serial: None,
            not_before: None,
            not_after: None,
            expires_in_seconds: None,
            last_error: Some("the CA refused: Unauthenticated: token expired".into()),
            roots_pem: String::new(),
            ..id
        };
        let v = view(&waiting, 0);
        assert!(v.rows.is_empty());
        assert_eq!(
            v.notes,
            vec![
                "no certificate issued yet".to_string(),
                "last request to the CA failed: the CA refused: Unauthenticated: token expired"
                    .to_string(),
                "2 inbound mTLS connections open".to_string()
            ]
        );
    }
}
