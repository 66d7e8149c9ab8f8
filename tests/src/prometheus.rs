//! A real Prometheus (Debian's `prometheus` package) for the lab: it runs on the node, scrapes
//! every pod the way Kubernetes service discovery with the usual `prometheus.io/*` relabelling
//! does (only pods annotated `scrape: "true"`, at their annotated port and path, labelled with
//! `namespace` and `pod`), plus the control plane's `/metrics`, and answers PromQL queries
//! through its HTTP API. The targets are written as a file-SD list from the pods as admitted (so
//! the annotations are the ones the webhook wrote).

use crate::client;
use crate::lab::{Lab, NODE_IP};
use crate::netns::Proc;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where Prometheus listens, on the node's bridge address.
pub const PORT: u16 = 9090;
/// The scrape interval (short, so a test sees its traffic within seconds).
pub const SCRAPE_INTERVAL: &str = "1s";

/// A running Prometheus; stopped when dropped.
pub struct Prometheus {
    proc: Proc,
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    node: String,
}

/// One sample of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

/// The `prometheus` binary (Debian's package; `scripts/setup` installs it).
pub fn binary() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/prometheus");
    p.exists().then_some(p)
}

/// The file-SD targets of `pods` (each `(namespace, name, ip, annotations)`) as Kubernetes'
/// pod discovery and the `prometheus.io/*` relabelling rules would make them.
pub fn pod_targets(pods: &[(String, String, String, BTreeMap<String, String>)]) -> Value {
    let mut out = Vec::new();
    for (ns, name, ip, ann) in pods {
        if ann.get("prometheus.io/scrape").map(String::as_str) != Some("true") {
            continue;
        }
        let port = ann
            .get("prometheus.io/port")
            .cloned()
            .unwrap_or("80".into());
        let path = ann
            .get("prometheus.io/path")
            .cloned()
            .unwrap_or("/metrics".into());
        out.push(json!({
            "targets": [format!("{ip}:{port}")],
            "labels": {"__metrics_path__": path, "namespace": ns, "pod": name, "job": "kubernetes-pods"},
        }));
    }
    Value::Array(out)
}

impl Prometheus {
    /// Starts Prometheus on the lab's node, scraping the lab's annotated pods and the control
    /// plane, and waits (bounded) until its HTTP API answers.
    pub fn start(lab: &Lab) -> Result<Prometheus> {
        let bin = binary().ok_or_else(|| {
            anyhow!("/usr/bin/prometheus is missing: install Debian's prometheus package (scripts/setup does)")
        })?;
        let dir = lab.dir().join("prometheus");
        std::fs::create_dir_all(dir.join("data"))?;
        let pods: Vec<_> = lab
            .pods()
            .iter()
            .map(|p| {
                let ann = p
                    .object
                    .pointer("/metadata/annotations")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                (p.namespace.clone(), p.name.clone(), p.ip.to_string(), ann)
            })
            .collect();
        std::fs::write(
            dir.join("pods.json"),
            serde_json::to_vec_pretty(&pod_targets(&pods))?,
        )?;
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n\
             scrape_configs:\n\
             - job_name: kubernetes-pods\n  file_sd_configs:\n  - files: [{pods}]\n    refresh_interval: 1s\n\
             - job_name: remora-control-plane\n  scheme: https\n  tls_config: {{insecure_skip_verify: true}}\n  static_configs:\n  - targets: ['127.0.0.1:{wh}']\n    labels: {{namespace: remora-system, app: remora-webhook}}\n",
            pods = dir.join("pods.json").display(),
            wh = crate::admission::WEBHOOK_PORT,
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", lab.node().name()])
            .arg(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={NODE_IP}:{PORT}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--log.level=warn");
        let proc = Proc::spawn("prometheus", cmd, dir.join("prometheus.log"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let p = Prometheus {
            proc,
            dir,
            rt,
            node: lab.node().name().to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match p.get(lab, "/-/ready") {
                Ok(r) if r.status == 200 => return Ok(p),
                _ if Instant::now() > deadline => bail!(
                    "prometheus not ready in 30 s; log:\n{}",
                    p.proc.log_tail(20)
                ),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn get(&self, lab: &Lab, path: &str) -> Result<client::HttpReply> {
        debug_assert_eq!(self.node, lab.node().name());
        self.rt.block_on(client::http(
            lab.node(),
            SocketAddr::from((NODE_IP, PORT)),
            &format!("{NODE_IP}:{PORT}"),
            "GET",
            path,
            &[],
            Duration::from_secs(15),
        ))
    }

    /// An instant query; `Err` with Prometheus' own error text for a query it refuses.
    pub fn query(&self, lab: &Lab, promql: &str) -> Result<Vec<Series>> {
        let r = self.get(lab, &format!("/api/v1/query?query={}", encode(promql)))?;
        let v: Value = serde_json::from_slice(&r.body)
            .with_context(|| format!("prometheus answered {}: not JSON", r.status))?;
        if v["status"] != "success" {
            bail!(
                "prometheus refused {promql:?}: {} {}",
                v["errorType"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or("")
            );
        }
        let result = &v["data"]["result"];
        let mut out = Vec::new();
        for s in result.as_array().into_iter().flatten() {
            let labels = s["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let value = s["value"][1]
                .as_str()
                .and_then(|x| x.parse::<f64>().ok())
                .ok_or_else(|| anyhow!("sample without a value: {s}"))?;
            out.push(Series { labels, value });
        }
        Ok(out)
    }

    /// Waits (bounded by `limit`) until `check` accepts the result of `promql`.
    pub fn wait_for(
        &self,
        lab: &Lab,
        promql: &str,
        limit: Duration,
        check: impl Fn(&[Series]) -> Result<(), String>,
    ) -> Result<Vec<Series>> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.query(lab, promql)?;
            match check(&got) {
                Ok(()) => return Ok(got),
                Err(e) if Instant::now() > deadline => bail!(
                    "after {limit:?}, {promql}: {e}\nresult: {got:?}\nprometheus log:\n{}",
                    self.proc.log_tail(10)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// The scrape configuration and targets, for failure reports.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_annotations() {
        let ann = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let pods = vec![
            (
                "shop".to_string(),
                "a".to_string(),
                "10.0.0.1".to_string(),
                ann(&[
                    ("prometheus.io/scrape", "true"),
                    ("prometheus.io/port", "15020"),
                    ("prometheus.io/path", "/stats/prometheus"),
                ]),
            ),
            (
                "shop".into(),
                "b".into(),
                "10.0.0.2".into(),
                ann(&[("prometheus.io/scrape", "false")]),
            ),
            ("shop".into(), "c".into(), "10.0.0.3".into(), ann(&[])),
            (
                "shop".into(),
                "d".into(),
                "10.0.0.4".into(),
                ann(&[("prometheus.io/scrape", "true")]),
            ),
        ];
        let t = pod_targets(&pods);
        assert_eq!(t.as_array().unwrap().len(), 2, "{t}");
        assert_eq!(t[0]["targets"][0], "10.0.0.1:15020");
        assert_eq!(t[0]["labels"]["__metrics_path__"], "/stats/prometheus");
        assert_eq!(t[1]["targets"][0], "10.0.0.4:80");
        assert_eq!(t[1]["labels"]["__metrics_path__"], "/metrics");
        assert_eq!(t[1]["labels"]["pod"], "d");
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(encode("up{a=\"b\"}"), "up%7Ba%3D%22b%22%7D");
        assert_eq!(encode("rate(x[1m])"), "rate%28x%5B1m%5D%29");
    }
}
