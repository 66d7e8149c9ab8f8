//! `remora-cni-node` on temporary CNI directories: installs the plugin, chains it after the
//! primary plugin, puts it back when the primary plugin rewrites the file, removes everything on
//! SIGTERM and on `uninstall`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const AGENT: &str = env!("CARGO_BIN_EXE_remora-cni-node");
const PLUGIN: &str = env!("CARGO_BIN_EXE_remora-cni");

fn calico() -> Value {
    json!({
        "name": "k8s-pod-network",
        "cniVersion": "0.3.1",
        "plugins": [
            {"type": "calico", "ipam": {"type": "calico-ipam"}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_default()).unwrap_or(Value::Null)
}

fn types(v: &Value) -> Vec<String> {
    v["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["type"].as_str().map(str::to_string))
        .collect()
}

/// Wait (at most 10 s) until `cond` holds.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path, conf: &Path, extra: &[&str]) -> Agent {
    Agent(spawn(bin, conf, extra))
}

fn spawn(bin: &Path, conf: &Path, extra: &[&str]) -> Child {
    Command::new(AGENT)
        .arg("run")
        .args(["--cni-bin-dir", bin.to_str().expect("path")])
        .args(["--cni-conf-dir", conf.to_str().expect("path")])
        .args([
            "--plugin-binary",
            PLUGIN,
            "--pod-dir",
            "/run/remora-cni/pods",
        ])
        .args(["--poll-ms", "50"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn remora-cni-node")
}

#[test]
fn installs_keeps_chained_and_removes_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&conf).expect("conf");
    let primary = conf.join("10-calico.conflist");
    // The primary plugin writes its file after the agent started.
    let mut agent = start(&bin, &conf, &[]);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&primary, calico().to_string()).expect("write");
    // A later file is not the one the runtime uses: left alone.
    std::fs::write(
        conf.join("99-other.conf"),
        r#"{"type":"bridge","name":"x"}"#,
    )
    .expect("write");

    wait_for("the plugin chained last", || {
        types(&read(&primary)) == ["calico", "portmap", "remora-cni"]
    });
    let installed = bin.join("remora-cni");
    assert_eq!(
        std::fs::read(&installed).expect("installed plugin"),
        std::fs::read(PLUGIN).expect("plugin")
    );
    let mode = std::fs::metadata(&installed)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let entry = read(&primary)["plugins"][2].clone();
    assert_eq!(
        entry,
        json!({"type": "remora-cni", "podInfo": {"source": "file", "dir": "/run/remora-cni/pods"}, "excludeNamespaces": ["kube-system"]})
    );
    assert_eq!(read(&conf.join("99-other.conf"))["type"], "bridge");

    // The primary plugin rewrites its file: the agent chains itself again.
    std::fs::write(&primary, calico().to_string()).expect("rewrite");
    wait_for("the plugin chained again", || {
        types(&read(&primary)) == ["calico", "portmap", "remora-cni"]
    });

    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert_eq!(read(&primary), calico());
    assert!(!installed.exists());
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist_and_uninstall_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&conf).expect("conf");
    std::fs::write(
        conf.join("10-bridge.conf"),
        json!({"cniVersion": "1.0.0", "name": "lab", "type": "bridge", "bridge": "cni0"})
            .to_string(),
    )
    .expect("write");
    let out = spawn(&bin, &conf, &["--once"])
        .wait_with_output()
        .expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!conf.join("10-bridge.conf").exists());
    let list = read(&conf.join("10-bridge.conflist"));
    assert_eq!(list["name"], "lab");
    assert_eq!(types(&list), ["bridge", "remora-cni"]);
    // Running again changes nothing.
    let before = std::fs::read(conf.join("10-bridge.conflist")).expect("read");
    let out = spawn(&bin, &conf, &["--once"])
        .wait_with_output()
        .expect("wait");
    assert!(String::from_utf8_lossy(&out.stdout).contains("10-bridge.conflist chains remora-cni"));
    assert_eq!(
        std::fs::read(conf.join("10-bridge.conflist")).expect("read"),
        before
    );

    let out = Command::new(AGENT)
        .args([
            "uninstall",
            "--cni-bin-dir",
            bin.to_str().expect("p"),
            "--cni-conf-dir",
            conf.to_str().expect("p"),
        ])
        .output()
        .expect("uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(types(&read(&conf.join("10-bridge.conflist"))), ["bridge"]);
    assert!(!bin.join("remora-cni").exists());
}

#[test]
fn a_relative_directory_is_refused_with_the_flag_named() {
    let out = Command::new(AGENT)
        .args(["run", "--cni-conf-dir", "net.d", "--once"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "remora-cni-node: error: invalid --cni-conf-dir \"net.d\": must be an absolute path"
    );
}
