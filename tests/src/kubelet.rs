//! A tiny kubelet: runs the containers of an (injected) Pod object inside its network namespace,
//! the way a kubelet would: init containers in order, each as its `securityContext` says; native
//! sidecars (`restartPolicy: Always` init containers) started and probed before the next step;
//! env with the downward API filled in; volumes "mounted" by mapping mount paths to lab
//! directories (kubelet's `..data` symlink layout); probes executed from the node.

use crate::netns::{Netns, Proc};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Everything about the pod that is not in its spec.
pub struct PodCtx<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub ip: Ipv4Addr,
    pub netns: &'a Netns,
    /// The node's namespace, where probes come from.
    pub node: &'a Netns,
    /// Per-pod scratch directory (logs, volumes).
    pub dir: &'a Path,
    /// Where the programs named by container commands live (first on PATH).
    pub bin_dir: &'a Path,
    /// ConfigMaps of the pod's namespace: name → directory in `..data` layout.
    pub configmaps: &'a BTreeMap<String, PathBuf>,
    /// Secrets of the pod's namespace the lab made: name → directory in `..data` layout.
    pub secrets: &'a BTreeMap<String, PathBuf>,
    /// How long to wait for a probe or an init container.
    pub timeout: Duration,
    /// The key projected service-account tokens are signed with (the lab's API checks them).
    pub token_key: &'a [u8],
}

/// A container the kubelet started and keeps running.
pub struct Running {
    pub name: String,
    pub proc: Proc,
    /// The command line as run (after `$(VAR)` expansion), for narration.
    pub argv: Vec<String>,
    pub uid: u32,
}

fn str_at<'v>(v: &'v Value, ptr: &str) -> Option<&'v str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn map_of(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Kubelet's downward-API file format for a label or annotation map: `key="value"` per line,
/// sorted by key, values quoted like Go's `%q`.
pub fn downward_map_file(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `files` into `root` in kubelet's atomic-writer layout: a timestamped directory holding
/// the files, `..data` pointing at it (swapped with one rename), and `name -> ..data/name` links.
/// Older timestamped directories are removed after the swap.
pub fn write_atomic_dir(root: &Path, files: &[(String, String)]) -> Result<()> {
    std::fs::create_dir_all(root)?;
    set_mode(root, 0o755)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ts = format!("..{}_{:09}", stamp.as_secs(), stamp.subsec_nanos());
    let ts_dir = root.join(&ts);
    std::fs::create_dir(&ts_dir).with_context(|| format!("creating {}", ts_dir.display()))?;
    set_mode(&ts_dir, 0o755)?;
    for (name, text) in files {
        if name.contains('/') || name.starts_with("..") || name.is_empty() {
            bail!("file name {name:?} is not a valid ConfigMap key");
        }
        let p = ts_dir.join(name);
        std::fs::write(&p, text)?;
        set_mode(&p, 0o644)?;
    }
    let tmp = root.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, root.join("..data"))?;
    let wanted: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "..data" || name == ts {
            continue;
        }
        if name.starts_with("..") {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if !wanted.contains(&name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for name in wanted {
        let link = root.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)?;
        }
    }
    Ok(())
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Resolves one `fieldRef.fieldPath` of the downward API.
pub fn field_ref(pod: &Value, ctx_ip: Ipv4Addr, path: &str) -> Result<String> {
    let labels = map_of(pod.pointer("/metadata/labels"));
    let annotations = map_of(pod.pointer("/metadata/annotations"));
    let key_of = |p: &str, prefix: &str| -> Option<String> {
        p.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => str_at(pod, "/metadata/name")
            .unwrap_or_default()
            .to_string(),
        "metadata.namespace" => str_at(pod, "/metadata/namespace")
            .unwrap_or("default")
            .to_string(),
        "metadata.uid" => str_at(pod, "/metadata/uid").unwrap_or_default().to_string(),
        "status.podIP" | "status.podIPs" => ctx_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => "10.244.0.1".to_string(),
        "spec.nodeName" => "lab-node".to_string(),
        "spec.serviceAccountName" => str_at(pod, "/spec/serviceAccountName")
            .unwrap_or("default")
            .to_string(),
        "metadata.labels" => downward_map_file(&labels),
        "metadata.annotations" => downward_map_file(&annotations),
        p => {
            if let Some(k) = key_of(p, "metadata.labels['") {
                labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = key_of(p, "metadata.annotations['") {
                annotations.get(&k).cloned().unwrap_or_default()
            } else {
                bail!("fieldRef.fieldPath {p:?} is not supported by the lab kubelet")
            }
        }
    })
}

/// Expands `$(NAME)` references against already-defined variables (kubelet semantics: unknown
/// references stay as written, `$$` escapes).
pub fn expand(text: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if after.starts_with('(') {
            if let Some(end) = after.find(')') {
                let name = &after[1..end];
                match vars.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 2 + end]),
                }
                rest = &after[end + 1..];
            } else {
                out.push_str(&rest[i..]);
                rest = "";
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment, downward API resolved, in declaration order.
pub fn container_env(pod: &Value, c: &Value, ip: Ipv4Addr) -> Result<Vec<(String, String)>> {
    let cname = str_at(c, "/name").unwrap_or("?");
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let name = str_at(e, "/name")
            .ok_or_else(|| anyhow!("container {cname}: env entry without a name"))?;
        let value = if let Some(v) = e.get("value") {
            expand(v.as_str().unwrap_or_default(), &vars)
        } else if let Some(path) = str_at(e, "/valueFrom/fieldRef/fieldPath") {
            field_ref(pod, ip, path).with_context(|| format!("container {cname} env {name}"))?
        } else if let Some(res) = str_at(e, "/valueFrom/resourceFieldRef/resource") {
            resource_value(c, res)
        } else if e.get("valueFrom").is_some() {
            bail!("container {cname} env {name}: only value, fieldRef and resourceFieldRef are supported by the lab kubelet");
        } else {
            String::new()
        };
        vars.push((name.to_string(), value));
    }
    Ok(vars)
}

fn resource_value(c: &Value, res: &str) -> String {
    let (kind, name) = res.split_once('.').unwrap_or(("limits", res));
    let q = c
        .pointer(&format!("/resources/{kind}/{name}"))
        .and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| Some(v.to_string()))
        });
    match (q, name) {
        (Some(q), "cpu") => {
            let cores = q
                .strip_suffix('m')
                .and_then(|m| m.parse::<f64>().ok())
                .map(|m| m / 1000.0)
                .or_else(|| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            format!("{}", cores.ceil().max(1.0) as u64)
        }
        (Some(q), _) => q,
        (None, "cpu") => std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_else(|_| "1".into()),
        (None, _) => "0".into(),
    }
}

/// uid, gid, and the capability bounding set (None = root's full set) of a container.
pub fn security(pod: &Value, c: &Value) -> (u32, u32, Option<Vec<String>>, bool) {
    let num = |ptr: &str| -> Option<u32> {
        c.pointer(&format!("/securityContext/{ptr}"))
            .or_else(|| pod.pointer(&format!("/spec/securityContext/{ptr}")))
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    let uid = num("runAsUser").unwrap_or(0);
    let gid = num("runAsGroup").unwrap_or(0);
    let drops: Vec<String> = c
        .pointer("/securityContext/capabilities/drop")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let adds: Vec<String> = c
        .pointer("/securityContext/capabilities/add")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let caps = drops
        .iter()
        .any(|d| d.eq_ignore_ascii_case("ALL"))
        .then_some(adds);
    let no_new_privs = c
        .pointer("/securityContext/allowPrivilegeEscalation")
        .and_then(Value::as_bool)
        == Some(false);
    (uid, gid, caps, no_new_privs)
}

/// A probe the kubelet runs from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http { port: u16, path: String },
    Tcp { port: u16 },
}

/// Reads `probe` (an httpGet or tcpSocket probe; named ports resolved from the container).
pub fn parse_probe(c: &Value, probe: &Value) -> Result<Option<Probe>> {
    let port_of = |p: &Value| -> Result<u16> {
        if let Some(n) = p.as_u64() {
            return u16::try_from(n).map_err(|_| anyhow!("probe port {n} out of range"));
        }
        let name = p.as_str().unwrap_or_default();
        if let Ok(n) = name.parse::<u16>() {
            return Ok(n);
        }
        c.get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|cp| str_at(cp, "/name") == Some(name))
            .and_then(|cp| cp.get("containerPort").and_then(Value::as_u64))
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| anyhow!("probe port {name:?} names no container port"))
    };
    if let Some(h) = probe.get("httpGet") {
        let port = port_of(h.get("port").unwrap_or(&Value::Null))?;
        let path = str_at(h, "/path").unwrap_or("/").to_string();
        return Ok(Some(Probe::Http { port, path }));
    }
    if let Some(t) = probe.get("tcpSocket") {
        let port = port_of(t.get("port").unwrap_or(&Value::Null))?;
        return Ok(Some(Probe::Tcp { port }));
    }
    Ok(None)
}

/// Runs one probe from the node's namespace against the pod IP.
pub fn run_probe(node: &Netns, ip: Ipv4Addr, probe: &Probe) -> Result<()> {
    let port = match probe {
        Probe::Http { port, .. } | Probe::Tcp { port } => *port,
    };
    let addr = SocketAddr::from((ip, port));
    let mut s = node.connect(addr, Duration::from_secs(1))?;
    if let Probe::Http { path, .. } = probe {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        let head = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("probe {addr}{path}: not an HTTP answer: {head:?}"))?;
        if !(200..400).contains(&code) {
            bail!("probe {addr}{path} answered {code}");
        }
    }
    Ok(())
}

fn wait_probe(ctx: &PodCtx, r: &mut Running, probe: &Probe) -> Result<()> {
    let deadline = Instant::now() + ctx.timeout;
    loop {
        if let Some(st) = r.proc.exited() {
            bail!(
                "container {} exited ({st}) before its probe {probe:?} passed; log:\n{}",
                r.name,
                r.proc.log_tail(30)
            );
        }
        match run_probe(ctx.node, ctx.ip, probe) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "container {}: probe {probe:?} still failing after {:?}: {e:#}; log:\n{}",
                    r.name,
                    ctx.timeout,
                    r.proc.log_tail(30)
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Materializes the pod's volumes: name → lab directory.
fn volumes(pod: &Value, ctx: &PodCtx) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(v, "/name").ok_or_else(|| anyhow!("volume without a name"))?;
        let dir = ctx.dir.join("volumes").join(name);
        if let Some(cm) = str_at(v, "/configMap/name") {
            if let Some(d) = ctx.configmaps.get(cm) {
                out.insert(name.to_string(), d.clone());
                continue;
            }
            let optional = v.pointer("/configMap/optional").and_then(Value::as_bool) == Some(true);
            if !optional {
                bail!(
                    "volume {name}: ConfigMap {cm} does not exist in the lab namespace {}",
                    ctx.namespace
                );
            }
            write_atomic_dir(&dir, &[])?;
        } else if let Some(items) = v.pointer("/downwardAPI/items").and_then(Value::as_array) {
            let mut files = Vec::new();
            for it in items {
                let path = str_at(it, "/path").unwrap_or_default().to_string();
                let field = str_at(it, "/fieldRef/fieldPath").ok_or_else(|| {
                    anyhow!("volume {name}: downwardAPI item {path:?} without fieldRef")
                })?;
                files.push((path, field_ref(pod, ctx.ip, field)?));
            }
            write_atomic_dir(&dir, &files)?;
        } else if let Some(sources) = v.pointer("/projected/sources").and_then(Value::as_array) {
            // Projected volumes: service-account tokens are written (a lab token, see
            // `lab_token`); other sources are not supported and say so.
            let mut files = Vec::new();
            for src in sources {
                let Some(sat) = src.get("serviceAccountToken") else {
                    bail!("volume {name}: projected source {src} is not supported by the lab kubelet (serviceAccountToken only)");
                };
                let path = str_at(sat, "/path")
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| anyhow!("volume {name}: serviceAccountToken without a path"))?;
                let audience = str_at(sat, "/audience").unwrap_or("https://kubernetes.default.svc");
                let seconds = sat
                    .get("expirationSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(3600);
                files.push((path.to_string(), lab_token(pod, ctx, audience, seconds)));
            }
            write_atomic_dir(&dir, &files)?;
        } else if let Some(secret) = str_at(v, "/secret/secretName") {
            if let Some(d) = ctx.secrets.get(secret) {
                out.insert(name.to_string(), d.clone());
                continue;
            }
            if v.pointer("/secret/optional").and_then(Value::as_bool) != Some(true) {
                bail!(
                    "volume {name}: Secret {secret} does not exist in the lab namespace {}",
                    ctx.namespace
                );
            }
            write_atomic_dir(&dir, &[])?;
        } else {
            // emptyDir: an empty directory the container may use.
            std::fs::create_dir_all(&dir)?;
            set_mode(&dir, 0o777)?;
        }
        out.insert(name.to_string(), dir);
    }
    Ok(out)
}

/// The lab's projected service-account token: a JWT with the claims of the kubelet's token
/// (audience, issuer, `system:serviceaccount:<ns>:<sa>`, the pod's name and uid, expiry, a
/// `jti`), signed HS256 with the lab's key, which the lab's API stand-in verifies when asked
/// for a TokenReview (`labapi`).
pub fn lab_token(pod: &Value, ctx: &PodCtx, audience: &str, seconds: u64) -> String {
    let sa = str_at(pod, "/spec/serviceAccountName").unwrap_or("default");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let claims = serde_json::json!({
        "aud": [audience],
        "iss": crate::labapi::TOKEN_ISSUER,
        "sub": format!("system:serviceaccount:{}:{sa}", ctx.namespace),
        "iat": now,
        "nbf": now,
        "exp": now + seconds,
        "jti": format!("{:032x}", rand::random::<u128>()),
        "kubernetes.io": {
            "namespace": ctx.namespace,
            "node": {"name": crate::labapi::NODE_NAME},
            "serviceaccount": {"name": sa},
            "pod": {"name": ctx.name, "uid": str_at(pod, "/metadata/uid").unwrap_or_default()}
        }
    });
    crate::labapi::issue_token(ctx.token_key, &claims)
}

/// `(mountPath, lab dir)` pairs of one container, longest mount path first.
fn mounts(c: &Value, vols: &BTreeMap<String, PathBuf>) -> Vec<(String, PathBuf)> {
    let mut m: Vec<(String, PathBuf)> = c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|vm| {
            let mp = str_at(vm, "/mountPath")?.trim_end_matches('/').to_string();
            let dir = vols.get(str_at(vm, "/name")?)?;
            let dir = match str_at(vm, "/subPath") {
                Some(sp) if !sp.is_empty() => dir.join(sp),
                _ => dir.clone(),
            };
            Some((mp, dir))
        })
        .collect();
    m.sort_by_key(|x| std::cmp::Reverse(x.0.len()));
    m
}

/// Maps an in-container path to the lab directory mounted there, if any.
pub fn map_path(path: &str, mounts: &[(String, PathBuf)]) -> Option<PathBuf> {
    mounts.iter().find_map(|(mp, dir)| {
        if path == mp {
            Some(dir.clone())
        } else {
            path.strip_prefix(mp.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .map(|r| dir.join(r))
        }
    })
}

/// The program an image of remora's runs when a container names no `command`: the `ENTRYPOINT`
/// of the Dockerfile stage named after the image (`ghcr.io/remora-mesh/remora-proxy:TAG` → stage
/// `proxy`), as its file name (the lab's bin directory is first on PATH).
pub fn image_entrypoint(image: &str) -> Option<String> {
    let repo = image.rsplit('/').next()?;
    let repo = repo.split([':', '@']).next()?;
    let stage = repo.strip_prefix("remora-")?;
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile");
    let text = std::fs::read_to_string(dockerfile).ok()?;
    entrypoint_of_stage(&text, stage)
}

fn entrypoint_of_stage(dockerfile: &str, stage: &str) -> Option<String> {
    let mut current = None::<String>;
    for line in dockerfile.lines().map(str::trim) {
        if let Some(from) = line.strip_prefix("FROM ") {
            let words: Vec<&str> = from.split_whitespace().collect();
            current = match words.as_slice() {
                [_, kw, name] if kw.eq_ignore_ascii_case("AS") => Some(name.to_string()),
                _ => None,
            };
        } else if let Some(ep) = line.strip_prefix("ENTRYPOINT ") {
            if current.as_deref() == Some(stage) {
                let argv: Vec<String> = serde_json::from_str(ep).ok()?;
                let first = argv.first()?;
                return Some(first.rsplit('/').next().unwrap_or(first).to_string());
            }
        }
    }
    None
}

/// A directory whose entries are mounts (`/etc/remora/gateway-credentials/<Secret>`, one
/// volume each): made at `at` with a symlink per mount, as the container sees it. `None` when
/// no mount is directly under `path`.
fn parent_of_mounts(
    path: &str,
    mounts: &[(String, PathBuf)],
    at: &Path,
) -> Result<Option<PathBuf>> {
    let prefix = format!("{}/", path.trim_end_matches('/'));
    let children: Vec<(&str, &PathBuf)> = mounts
        .iter()
        .filter_map(|(mp, dir)| {
            let rest = mp.strip_prefix(&prefix)?;
            (!rest.is_empty() && !rest.contains('/')).then_some((rest, dir))
        })
        .collect();
    if children.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(at)?;
    set_mode(at, 0o755)?;
    for (name, dir) in children {
        let link = at.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dir, &link)
            .with_context(|| format!("linking {} to {}", link.display(), dir.display()))?;
    }
    Ok(Some(at.to_path_buf()))
}

/// Path-valued settings of our programs with their in-container defaults (docs/architecture.md);
/// the lab points them at the directories "mounted" there.
const PATH_ENV: &[(&str, &str)] = &[
    ("REMORA_RULES_DIR", "/etc/remora/rules"),
    ("REMORA_POD_LABELS_FILE", "/etc/remora/pod/labels"),
    (
        "REMORA_CA_ROOT_FILE",
        "/var/run/secrets/remora/ca/root-cert.pem",
    ),
    (
        "REMORA_CA_TOKEN_FILE",
        "/var/run/secrets/tokens/remora-ca-token",
    ),
    (
        "REMORA_GATEWAY_CREDENTIALS_DIR",
        "/etc/remora/gateway-credentials",
    ),
];

fn start_container(
    pod: &Value,
    c: &Value,
    ctx: &PodCtx,
    vols: &BTreeMap<String, PathBuf>,
) -> Result<Running> {
    let name = str_at(c, "/name").ok_or_else(|| anyhow!("container without a name"))?;
    let mut env = container_env(pod, c, ctx.ip)?;
    let mnt = mounts(c, vols);
    for (var, default) in PATH_ENV {
        let current = env
            .iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| default.to_string());
        if let Some(p) = map_path(&current, &mnt) {
            env.push((var.to_string(), p.to_string_lossy().into_owned()));
        } else if let Some(p) = parent_of_mounts(&current, &mnt, &ctx.dir.join("mounts").join(var))?
        {
            env.push((var.to_string(), p.to_string_lossy().into_owned()));
        }
    }
    let mut argv: Vec<String> = Vec::new();
    if c.get("command").is_none() {
        // The image's ENTRYPOINT, as a container runtime takes it: known for remora's own
        // images (from the Dockerfile), by the program's name (the bin directory is on PATH).
        let image = str_at(c, "/image").unwrap_or_default();
        let entrypoint = image_entrypoint(image).ok_or_else(|| {
            anyhow!("container {name} has no command and image {image:?} is not one of remora's (the lab runs commands from the spec, not images)")
        })?;
        argv.push(entrypoint);
    }
    for part in ["command", "args"] {
        for a in c.get(part).and_then(Value::as_array).into_iter().flatten() {
            let a = a
                .as_str()
                .ok_or_else(|| anyhow!("container {name}: {part} entry is not a string"))?;
            argv.push(expand(a, &env));
        }
    }
    if argv.is_empty() {
        bail!("container {name} has no command: the lab runs commands from the spec, not images");
    }
    // Arguments naming a mounted path are pointed at the lab directory as well.
    for a in argv.iter_mut().skip(1) {
        if a.starts_with('/') {
            if let Some(p) = map_path(a, &mnt) {
                *a = p.to_string_lossy().into_owned();
            }
        }
    }
    let (uid, gid, caps, nnp) = security(pod, c);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ctx.netns.name(), "setpriv"]);
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups");
    if let Some(adds) = &caps {
        let mut set = String::from("-all");
        for a in adds {
            set.push_str(",+");
            set.push_str(&a.to_ascii_lowercase());
        }
        cmd.arg(format!("--bounding-set={set}"));
    }
    if nnp {
        cmd.arg("--no-new-privs");
    }
    cmd.arg("--").args(&argv);
    cmd.env_clear()
        .env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ctx.bin_dir.display()
            ),
        )
        .env("HOSTNAME", ctx.name)
        .env("HOME", "/")
        .current_dir("/");
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let log = ctx.dir.join(format!("{name}.log"));
    let proc = Proc::spawn(&format!("{}/{name}", ctx.name), cmd, log)?;
    Ok(Running {
        name: name.to_string(),
        proc,
        argv,
        uid,
    })
}

fn probe_of(c: &Value, kinds: &[&str]) -> Result<Option<Probe>> {
    for k in kinds {
        if let Some(p) = c.get(*k) {
            if let Some(probe) = parse_probe(c, p)? {
                return Ok(Some(probe));
            }
        }
    }
    Ok(None)
}

/// CNI mode: the container runtime's call of the chained `remora-cni` plugin once the pod's
/// network exists (`ADD`, the pod object where the plugin's `podInfo` source reads it, a bridge
/// plugin's result as `prevResult`). `dir` holds the plugin's pod files, state and log.
pub fn cni_add(pod: &Value, ctx: &PodCtx, dir: &Path) -> Result<()> {
    let pods = dir.join("pods").join(ctx.namespace);
    std::fs::create_dir_all(&pods)?;
    std::fs::write(pods.join(format!("{}.json", ctx.name)), pod.to_string())?;
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "lab",
        "type": "remora-cni",
        "podInfo": {"source": "file", "dir": dir.join("pods")},
        "excludeNamespaces": ["kube-system"],
        "stateDir": dir.join("state"),
        "logFile": dir.join("remora-cni.log"),
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": ctx.netns.path()}],
            "ips": [{"address": format!("{}/24", ctx.ip), "gateway": "10.244.0.1", "interface": 0}]
        }
    });
    let plugin = ctx.bin_dir.join("remora-cni");
    let mut child = Command::new(&plugin)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", "ADD")
        .env(
            "CNI_CONTAINERID",
            format!("lab-{}-{}", ctx.namespace, ctx.name),
        )
        .env("CNI_NETNS", ctx.netns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", ctx.bin_dir)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                ctx.namespace, ctx.name
            ),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(config.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "remora-cni ADD for pod {}/{} failed ({}): {}",
            ctx.namespace,
            ctx.name,
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// Starts the pod. `after_init` runs after each init container that ran to completion (the lab
/// uses it to keep the kube-proxy stand-in's jump after the capture rules, as a re-sync would).
/// Returns the running containers in start order (native sidecars first).
pub fn start_pod(
    pod: &Value,
    ctx: &PodCtx,
    after_init: &dyn Fn() -> Result<()>,
    log: &mut dyn FnMut(String),
) -> Result<Vec<Running>> {
    std::fs::create_dir_all(ctx.dir)?;
    set_mode(ctx.dir, 0o755)?;
    let vols = volumes(pod, ctx)?;
    let mut running: Vec<Running> = Vec::new();
    for c in pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(c, "/name").unwrap_or("?").to_string();
        let mut r = start_container(pod, c, ctx, &vols)?;
        if str_at(c, "/restartPolicy") == Some("Always") {
            log(format!(
                "{}: started native sidecar {name} (uid {})",
                ctx.name, r.uid
            ));
            if let Some(p) = probe_of(c, &["startupProbe", "readinessProbe"])? {
                wait_probe(ctx, &mut r, &p)?;
                log(format!("{}: {name} passed its probe {p:?}", ctx.name));
            }
            running.push(r);
        } else {
            let st = r.proc.wait_exit(ctx.timeout)?;
            if !st.success() {
                bail!(
                    "init container {name} of pod {} failed ({st}); its log:\n{}",
                    ctx.name,
                    r.proc.log_tail(40)
                );
            }
            log(format!(
                "{}: init container {name} completed (uid {})",
                ctx.name, r.uid
            ));
            after_init()?;
        }
    }
    after_init()?;
    let containers: Vec<&Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let first_app = running.len();
    for c in &containers {
        let name = str_at(c, "/name").unwrap_or("?").to_string();
        let mut r = start_container(pod, c, ctx, &vols)?;
        log(format!(
            "{}: started container {name} (uid {})",
            ctx.name, r.uid
        ));
        if name == "remora-proxy" {
            // Not a native sidecar: hold the app until the proxy is ready (Istio's
            // holdApplicationUntilProxyStarts), so the app never starts unmeshed.
            if let Some(p) = probe_of(c, &["readinessProbe", "startupProbe"])? {
                wait_probe(ctx, &mut r, &p)?;
            }
        }
        running.push(r);
    }
    for (i, c) in containers.iter().enumerate() {
        if let Some(p) = probe_of(c, &["readinessProbe"])? {
            wait_probe(ctx, &mut running[first_app + i], &p)?;
            log(format!(
                "{}: {} ready ({p:?})",
                ctx.name,
                running[first_app + i].name
            ));
        }
    }
    Ok(running)
}

/// Starts some of a running pod's containers again, as a kubelet restarts containers that died
/// (the pod's network, capture rules and completed init containers stay as they are): the named
/// native sidecars first (probed), then the named containers (a non-native `remora-proxy` must be
/// ready before the next), then their readiness probes. Returns them in that order.
pub fn restart_containers(
    pod: &Value,
    ctx: &PodCtx,
    names: &[&str],
    log: &mut dyn FnMut(String),
) -> Result<Vec<Running>> {
    let vols = volumes(pod, ctx)?;
    let mut out: Vec<Running> = Vec::new();
    let wanted = |c: &Value| str_at(c, "/name").is_some_and(|n| names.contains(&n));
    for c in pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| wanted(c) && str_at(c, "/restartPolicy") == Some("Always"))
    {
        let mut r = start_container(pod, c, ctx, &vols)?;
        if let Some(p) = probe_of(c, &["startupProbe", "readinessProbe"])? {
            wait_probe(ctx, &mut r, &p)?;
        }
        log(format!("{}: restarted native sidecar {}", ctx.name, r.name));
        out.push(r);
    }
    let containers: Vec<&Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| wanted(c))
        .collect();
    let first_app = out.len();
    for c in &containers {
        let mut r = start_container(pod, c, ctx, &vols)?;
        if r.name == "remora-proxy" {
            if let Some(p) = probe_of(c, &["readinessProbe", "startupProbe"])? {
                wait_probe(ctx, &mut r, &p)?;
            }
        }
        log(format!("{}: restarted container {}", ctx.name, r.name));
        out.push(r);
    }
    for (i, c) in containers.iter().enumerate() {
        if let Some(p) = probe_of(c, &["readinessProbe"])? {
            wait_probe(ctx, &mut out[first_app + i], &p)?;
        }
    }
    if out.len() != names.len() {
        let found: Vec<&str> = out.iter().map(|r| r.name.as_str()).collect();
        bail!(
            "pod {}: asked to restart {names:?}, the spec has only {found:?} of them",
            ctx.name
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_of_remora_run_their_dockerfile_entrypoint() {
        assert_eq!(
            image_entrypoint("ghcr.io/remora-mesh/remora-proxy:0.1.0").as_deref(),
            Some("remora-proxy")
        );
        assert_eq!(
            image_entrypoint("ghcr.io/remora-mesh/remora-webhook:0.1.0").as_deref(),
            Some("remora-webhook")
        );
        assert_eq!(image_entrypoint("docker.io/library/nginx:1"), None);
        assert_eq!(
            image_entrypoint("ghcr.io/remora-mesh/remora-nothing:1"),
            None
        );
    }

    #[test]
    fn env_resolves_downward_api_and_expands() {
        let pod = serde_json::json!({
            "metadata": {"name": "reviews-v1-x", "namespace": "bookinfo", "labels": {"app": "reviews", "version": "v1"}},
            "spec": {"serviceAccountName": "bookinfo-reviews"}
        });
        let c = serde_json::json!({"name": "remora-proxy", "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "VERSION", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['version']"}}},
            {"name": "GREETING", "value": "$(POD_NAME) at $(INSTANCE_IP) $(NOPE) $$(POD_NAME)"}
        ]});
        let env = container_env(&pod, &c, Ipv4Addr::new(10, 244, 0, 7)).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("POD_NAME"), "reviews-v1-x");
        assert_eq!(get("POD_NAMESPACE"), "bookinfo");
        assert_eq!(get("INSTANCE_IP"), "10.244.0.7");
        assert_eq!(get("SERVICE_ACCOUNT"), "bookinfo-reviews");
        assert_eq!(get("VERSION"), "v1");
        assert_eq!(
            get("GREETING"),
            "reviews-v1-x at 10.244.0.7 $(NOPE) $(POD_NAME)"
        );
        let bad = serde_json::json!({"name": "x", "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]});
        assert!(container_env(&pod, &bad, Ipv4Addr::LOCALHOST).is_err());
    }

    #[test]
    fn labels_file_uses_kubelet_format() {
        let m: BTreeMap<String, String> = [
            ("version".into(), "v1".into()),
            ("app".into(), "re\"views".into()),
        ]
        .into();
        assert_eq!(downward_map_file(&m), "app=\"re\\\"views\"\nversion=\"v1\"");
    }

    #[test]
    fn atomic_dir_swaps_data_link() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rules");
        write_atomic_dir(&root, &[("a.yaml".into(), "one".into())]).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("a.yaml")).unwrap(), "one");
        let first = std::fs::read_link(root.join("..data")).unwrap();
        assert!(first.to_string_lossy().starts_with(".."));
        assert_eq!(
            std::fs::read_link(root.join("a.yaml")).unwrap(),
            PathBuf::from("..data/a.yaml")
        );
        write_atomic_dir(&root, &[("b.yaml".into(), "two".into())]).unwrap();
        assert!(std::fs::symlink_metadata(root.join("a.yaml")).is_err());
        assert_eq!(std::fs::read_to_string(root.join("b.yaml")).unwrap(), "two");
        assert_ne!(std::fs::read_link(root.join("..data")).unwrap(), first);
        assert!(!root.join(&first).exists(), "old generation removed");
    }

    #[test]
    fn security_context_and_probes() {
        let pod = serde_json::json!({"spec": {"securityContext": {"runAsUser": 1000}}});
        let init = serde_json::json!({"name": "remora-init", "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}}});
        assert_eq!(
            security(&pod, &init),
            (0, 0, Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]), true)
        );
        let app = serde_json::json!({"name": "app", "ports": [{"name": "http", "containerPort": 9080}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}}});
        assert_eq!(security(&pod, &app), (1000, 0, None, false));
        assert_eq!(
            parse_probe(&app, &app["readinessProbe"]).unwrap(),
            Some(Probe::Http {
                port: 9080,
                path: "/health".into()
            })
        );
        let bad = serde_json::json!({"httpGet": {"port": "nope"}});
        assert!(parse_probe(&app, &bad).is_err());
    }

    #[test]
    fn paths_map_through_mounts() {
        let m = vec![
            ("/etc/remora/rules".to_string(), PathBuf::from("/lab/rules")),
            ("/etc/remora/pod".to_string(), PathBuf::from("/lab/pod")),
        ];
        assert_eq!(
            map_path("/etc/remora/rules", &m),
            Some(PathBuf::from("/lab/rules"))
        );
        assert_eq!(
            map_path("/etc/remora/pod/labels", &m),
            Some(PathBuf::from("/lab/pod/labels"))
        );
        assert_eq!(map_path("/etc/remora/rulesx", &m), None);
    }
}
