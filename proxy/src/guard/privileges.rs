//! Least privilege at start-up: refuse uid 0 in a Kubernetes pod (unless allowed), give up every
//! capability through the `caps` crate, and set no_new_privs.

#![forbid(unsafe_code)]

use caps::CapSet;
use tracing::{debug, info, warn};

/// Capabilities the process holds (hex masks from `/proc/self/status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub bounding: u64,
}

/// Parse the `Cap*` lines of `/proc/<pid>/status` (pure).
pub fn parse_caps(status: &str) -> Result<Caps, String> {
    let mut c = Caps::default();
    let mut seen = 0;
    for line in status.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let slot = match k {
            "CapInh" => &mut c.inheritable,
            "CapPrm" => &mut c.permitted,
            "CapEff" => &mut c.effective,
            "CapBnd" => &mut c.bounding,
            "CapAmb" => &mut c.ambient,
            _ => continue,
        };
        *slot = u64::from_str_radix(v.trim(), 16)
            .map_err(|e| format!("{k}: {:?} is not a hex mask: {e}", v.trim()))?;
        seen += 1;
    }
    if seen < 4 {
        return Err("no Cap* lines in the process status".to_string());
    }
    Ok(c)
}

/// The start-up privilege decision (pure): `Err` = refuse to start.
pub fn root_policy(euid: u32, in_kubernetes: bool, allow_root: bool) -> Result<(), String> {
    if euid != 0 {
        return Ok(());
    }
    if in_kubernetes && !allow_root {
        return Err(
            "refusing to run as uid 0 in a Kubernetes pod: the sidecar runs as uid 1337 (its traffic is exempt from capture by that uid); fix the pod's securityContext, or pass --allow-root/REMORA_ALLOW_ROOT=true for a lab"
                .to_string(),
        );
    }
    Ok(())
}

/// Check who we run as, then give up every capability (effective, permitted, inheritable,
/// ambient) and set no_new_privs. The proxy needs none: its ports are above 1024, the inbound
/// source 127.0.0.6 is a local address, and `SO_ORIGINAL_DST` is unprivileged. The bounding set
/// is left as it is (no_new_privs keeps it from mattering) and logged.
///
/// Must run while the process has one thread: capset(2) changes the calling thread only. That
/// is checked, not assumed.
pub fn drop_privileges(allow_root: bool) -> Result<(), String> {
    let euid = nix::unistd::geteuid().as_raw();
    // An injected sidecar: the kubelet sets KUBERNETES_SERVICE_HOST in every container, and the
    // injected proxy container gets POD_NAME from the downward API.
    let in_kubernetes = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && std::env::var_os("POD_NAME").is_some();
    root_policy(euid, in_kubernetes, allow_root)?;
    if euid == 0 {
        warn!(
            in_kubernetes,
            "running as uid 0 (allowed: {}); capabilities are dropped, but a pod should run the proxy as uid 1337",
            if in_kubernetes {
                "--allow-root"
            } else {
                "not in Kubernetes"
            }
        );
    }
    let status = read_status()?;
    let before = parse_caps(&status)?;
    single_threaded(&status)?;
    // Ambient first (lowering permitted clears it anyway, but be explicit).
    if let Err(e) = caps::clear(None, CapSet::Ambient) {
        debug!("clearing ambient capabilities: {e}");
    }
    // Inheritable, then permitted (which takes effective with it): lowering is always allowed.
    for set in [CapSet::Inheritable, CapSet::Permitted] {
        caps::clear(None, set).map_err(|e| format!("dropping capabilities (capset): {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("setting no_new_privs: {e}"))?;
    let after = parse_caps(&read_status()?)?;
    if after.effective != 0 || after.permitted != 0 || after.ambient != 0 {
        return Err(format!(
            "capabilities still held after dropping them: effective {:#x}, permitted {:#x}, ambient {:#x}",
            after.effective, after.permitted, after.ambient
        ));
    }
    info!(
        uid = euid,
        dropped_effective = format!("{:#x}", before.effective),
        dropped_permitted = format!("{:#x}", before.permitted),
        bounding = format!("{:#x}", after.bounding),
        "privileges: no capabilities held, no_new_privs set"
    );
    Ok(())
}

/// The `Threads:` count of `/proc/<pid>/status` (pure).
pub fn thread_count(status: &str) -> Result<usize, String> {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .ok_or("no Threads line in the process status")?;
    v.trim()
        .parse()
        .map_err(|e| format!("Threads: {:?} is not a count: {e}", v.trim()))
}

/// capset(2) changes the calling thread's capabilities only: with another thread running, that
/// thread would keep its own.
fn single_threaded(status: &str) -> Result<(), String> {
    match thread_count(status)? {
        1 => Ok(()),
        n => Err(format!(
            "dropping capabilities needs a single-threaded process (capset changes the calling thread only), but {n} threads are running"
        )),
    }
}

fn read_status() -> Result<String, String> {
    std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_and_root_policy() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        let c = parse_caps(s).unwrap();
        assert_eq!(c.effective, 0x1ff_ffff_ffff);
        assert_eq!(c.ambient, 0);
        assert!(parse_caps("Name: x\n").is_err());
        assert!(parse_caps("CapInh: zz\nCapPrm: 0\nCapEff: 0\nCapBnd: 0\n")
            .unwrap_err()
            .contains("CapInh"));
        assert!(root_policy(1337, true, false).is_ok());
        assert!(root_policy(0, true, false)
            .unwrap_err()
            .contains("--allow-root"));
        assert!(root_policy(0, true, true).is_ok());
        assert!(root_policy(0, false, false).is_ok());
    }

    #[test]
    fn thread_count_parses_and_gates_capset() {
        assert_eq!(thread_count("Name:\tx\nThreads:\t1\n"), Ok(1));
        assert_eq!(thread_count("Threads: 12\n"), Ok(12));
        assert!(thread_count("Name: x\n").is_err());
        assert!(thread_count("Threads: many\n")
            .unwrap_err()
            .contains("many"));
        assert!(single_threaded("Threads:\t1\n").is_ok());
        let e = single_threaded("Threads:\t3\n").unwrap_err();
        assert!(
            e.contains("3 threads") && e.contains("single-threaded"),
            "{e}"
        );
    }
}
