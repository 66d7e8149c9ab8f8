//! Reading a proxy's `/config_dump` into the proxy's own type, `remora_model::dump::ConfigDump`,
//! once: every command then uses typed fields. A dump this CLI cannot read (a proxy of another
//! version) is one line naming the proxy and the field.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

pub use remora_model::dump::ConfigDump;

/// Why a `/config_dump` could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DumpError {
    /// It could not be fetched (the proxy is unreachable, or answered with an error).
    Fetch(String),
    /// The answer has no `generation` and `hash`: not a remora proxy's admin port.
    NotRemora { target: String },
    /// A remora proxy's dump that does not read as this CLI's `ConfigDump` (version skew).
    Unreadable {
        who: String,
        /// The serde path of the field (`rules.virtual_services[0].meta`; `.` for the document).
        path: String,
        reason: String,
        /// What every version's dump starts with (enough for `proxy-status`).
        header: Box<Header>,
    },
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DumpError::Fetch(e) => f.write_str(e),
            DumpError::NotRemora { target } => write!(
                f,
                "{target}: the answer is not a remora proxy's /config_dump (no generation and hash)"
            ),
            DumpError::Unreadable {
                who, path, reason, ..
            } => write!(
                f,
                "{who} serves a config dump this CLI cannot read: {path}: {reason}"
            ),
        }
    }
}

impl std::error::Error for DumpError {}

/// What every remora proxy's dump starts with, whatever its version: its identity and which
/// rules it runs. `proxy-status` needs no more, so it still compares a proxy of another version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Header {
    #[serde(default)]
    pub version: Option<String>,
    pub generation: u64,
    pub hash: String,
    /// `files:/etc/remora/rules`, `api:configmap/...`.
    #[serde(default)]
    pub source: Option<String>,
    /// `config_source.source`: `files`, `api` or `none` (proxies that report it).
    #[serde(default, deserialize_with = "config_source")]
    pub config_source: Option<String>,
    /// The workload certificate's state (proxies with a workload identity).
    #[serde(default)]
    pub identity: Option<CertState>,
    /// The sync with the control plane's discovery service (`discovery.status.control_plane`;
    /// proxies with `--discovery-address`).
    #[serde(default, rename = "discovery", deserialize_with = "control_plane")]
    pub control_plane: Option<remora_model::dump::ControlPlaneSync>,
}

fn control_plane<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<remora_model::dump::ControlPlaneSync>, D::Error> {
    #[derive(Deserialize)]
    struct Status {
        #[serde(default)]
        control_plane: Option<remora_model::dump::ControlPlaneSync>,
    }
    #[derive(Deserialize)]
    struct Discovery {
        #[serde(default)]
        status: Option<serde_json::Value>,
    }
    // `status` is `"off"` or an object; only the object has a control plane.
    let v = Option::<Discovery>::deserialize(d)?;
    Ok(v.and_then(|d| d.status)
        .and_then(|s| serde_json::from_value::<Status>(s).ok())
        .and_then(|s| s.control_plane))
}

/// What `proxy-status` reads of a proxy's workload certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct CertState {
    /// `valid`, `waiting` or `expired`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub expires_in_seconds: Option<i64>,
}

impl CertState {
    /// The CERT column: `23h59m`, `WAITING`, `EXPIRED`.
    pub fn column(&self) -> String {
        match (self.state.as_str(), self.expires_in_seconds) {
            ("valid", Some(s)) => super::text::short_duration(s),
            ("expired", _) => "EXPIRED".into(),
            _ => "WAITING".into(),
        }
    }

    /// Why the certificate needs attention: expired, never issued, or under an hour left.
    pub fn warning(&self) -> Option<String> {
        match (self.state.as_str(), self.expires_in_seconds) {
            ("expired", _) => Some("workload certificate EXPIRED: the proxy is unready and its mTLS fails until the CA issues a new one (remora proxy-config secret shows the last error)".into()),
            ("valid", Some(s)) if s < 3600 => Some(format!("workload certificate expires in {} and was not renewed yet (remora proxy-config secret shows the last error)", super::text::short_duration(s))),
            ("valid", _) => None,
            _ => Some("no workload certificate issued yet: the proxy is unready (remora proxy-config secret shows the last error)".into()),
        }
    }
}

fn config_source<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Source {
        #[serde(default)]
        source: Option<String>,
    }
    Ok(Option::<Source>::deserialize(d)?.and_then(|s| s.source))
}

impl Header {
    pub fn of(d: &ConfigDump) -> Header {
        Header {
            version: Some(d.version.clone()),
            generation: d.generation,
            hash: d.hash.clone(),
            source: Some(d.source.clone()),
            config_source: Some(d.config_source.source.clone()),
            identity: d.identity.as_ref().map(|i| CertState {
                state: i.state.clone(),
                expires_in_seconds: i.expires_in_seconds,
            }),
            control_plane: match &d.discovery.status {
                remora_model::dump::DiscoveryStatus::Running(w) => {
                    w.control_plane.as_deref().cloned()
                }
                remora_model::dump::DiscoveryStatus::Off(_) => None,
            },
        }
    }
}

/// Reads a `/config_dump` answer as `ConfigDump`. `target` is where it came from (`shop/web-1`,
/// `127.0.0.1:15020`, a file) and `who` names the proxy (`proxy shop/web-1`, `proxy at
/// 127.0.0.1:15020`).
pub fn read(v: &Value, target: &str, who: &str) -> Result<ConfigDump, DumpError> {
    let Ok(header) = Header::deserialize(v) else {
        return Err(DumpError::NotRemora {
            target: target.to_string(),
        });
    };
    serde_path_to_error::deserialize(v).map_err(|e| DumpError::Unreadable {
        who: who.to_string(),
        path: e.path().to_string(),
        reason: e.into_inner().to_string(),
        header: Box::new(header),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unreadable_dumps_name_the_proxy_and_the_field() {
        let e = read(&json!({"x": 1}), "shop/web", "proxy shop/web").unwrap_err();
        assert_eq!(
            e.to_string(),
            "shop/web: the answer is not a remora proxy's /config_dump (no generation and hash)"
        );
        // An older proxy: identity, but no rules listing.
        let old = json!({"version": "0.0.9", "generation": 2, "hash": "abc", "source": "files:/r",
                         "rules_dir": "/r", "rules": {"generation": 2}});
        let e = read(&old, "shop/web", "proxy shop/web").unwrap_err();
        let DumpError::Unreadable { path, header, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(path, "rules");
        assert_eq!(header.version.as_deref(), Some("0.0.9"));
        assert_eq!((header.generation, header.hash.as_str()), (2, "abc"));
        assert!(
            e.to_string().starts_with(
                "proxy shop/web serves a config dump this CLI cannot read: rules: missing field"
            ),
            "{e}"
        );
    }
}
