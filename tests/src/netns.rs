//! Network namespaces and the small process helpers the lab is built from.
//!
//! Every namespace is a guard: dropping it deletes the namespace and its `/etc/netns/<name>/`
//! directory. Sockets for the test process are created inside a namespace by a short-lived thread
//! that `setns(2)`s into it (a socket stays in the namespace it was created in).

use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs a program to completion; a non-zero exit becomes an error carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_input(program, args, None)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{program}` (is it installed?)"))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace created by the lab (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        if name.is_empty() || name.contains('/') {
            bail!("netns name {name:?} is invalid");
        }
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `/etc/netns/<name>/hosts`, which `ip netns exec` bind-mounts over `/etc/hosts`.
    pub fn hosts_path(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name).join("hosts")
    }

    /// Writes the hosts file in place (same inode, so processes that already bind-mounted it see
    /// the new text).
    pub fn write_hosts(&self, text: &str) -> Result<()> {
        let path = self.hosts_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// `ip -n <name> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec <name> ARGS`.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        self.exec_input(args, None)
    }

    pub fn exec_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run_input("ip", &all, input)
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                join_netns(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("namespace thread panicked"))?
        })
    }

    /// A TCP connection made from inside this namespace (as the test process's uid, 0).
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.enter(|| TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connecting to {addr} from netns {}", self.name))
    }

    /// A TCP connection made from inside this namespace by a thread running as `uid`/`gid`
    /// (per-thread credentials via the raw syscalls, so the rest of the process is unaffected),
    /// e.g. as the proxy's uid 1337, which capture exempts.
    pub fn connect_as(
        &self,
        addr: SocketAddr,
        uid: u32,
        gid: u32,
        timeout: Duration,
    ) -> Result<TcpStream> {
        self.enter(|| {
            // SAFETY: raw setresgid/setresuid change only this (short-lived) thread's credentials.
            let rc = unsafe {
                let g = libc::syscall(libc::SYS_setresgid, gid, gid, gid);
                if g != 0 {
                    g
                } else {
                    libc::syscall(libc::SYS_setresuid, uid, uid, uid)
                }
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpStream::connect_timeout(&addr, timeout)
        })?
        .with_context(|| format!("connecting to {addr} as uid {uid} from netns {}", self.name))
    }

    /// A listening socket bound inside this namespace.
    pub fn listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.enter(|| TcpListener::bind(addr))?
            .with_context(|| format!("binding {addr} in netns {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "delete", &self.name]) {
            eprintln!("lab: deleting netns {}: {e:#}", self.name);
        }
        let dir = PathBuf::from("/etc/netns").join(&self.name);
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Moves the calling thread (only it) into the network namespace at `path`; sockets it creates
/// from then on are that namespace's.
pub fn join_netns(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening {} (namespace gone?)", path.display()))?;
    // SAFETY: setns on a valid namespace fd affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A child process of the lab, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: std::process::Child,
    done: Option<std::process::ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` in its own process group with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = file.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            log,
            child,
            done: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.done.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.done = Some(st);
            }
        }
        self.done
    }

    /// Waits for the process to end by itself, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = self.exited() {
                return Ok(st);
            }
            if std::time::Instant::now() >= deadline {
                bail!("{} did not finish within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if self.exited().is_some() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if self.wait_exit(grace).is_err() {
            let _ = kill(pid, Signal::SIGKILL);
            if let Ok(st) = self.child.wait() {
                self.done = Some(st);
            }
        }
    }

    /// Sends SIGTERM without waiting (see [`stop_all`]).
    pub fn terminate(&mut self) {
        use nix::sys::signal::{kill, Signal};
        if self.exited().is_none() {
            let _ = kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                Signal::SIGTERM,
            );
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Stops many processes at once: SIGTERM to all, up to `grace` for all of them together, then
/// SIGKILL to the rest.
pub fn stop_all(procs: &mut [&mut Proc], grace: Duration) {
    for p in procs.iter_mut() {
        p.terminate();
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && procs.iter_mut().any(|p| p.exited().is_none()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in procs.iter_mut() {
        p.stop(Duration::ZERO);
    }
}

/// The last `lines` lines of a file ("" if it cannot be read).
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
