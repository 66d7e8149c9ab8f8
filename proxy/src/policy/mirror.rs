//! Mirroring: which mirrors a request is copied to, the shadow authority
//! (`host-shadow[:port]`, as Envoy rewrites it), and the sender of the copies (one HTTP client
//! and in-flight bound per process; each copy's result counted in the metrics handle it is given).

pub use remora_model::policy::mirror::*;

use crate::telemetry::Metrics;

/// Mirrors in flight at once; beyond it a copy is dropped (the caller never waits).
pub const MAX_IN_FLIGHT: usize = 256;
/// Longest a mirror copy may take when the route sets no timeout.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn client() -> &'static (Client, std::sync::Arc<tokio::sync::Semaphore>) {
    static C: std::sync::OnceLock<(Client, std::sync::Arc<tokio::sync::Semaphore>)> =
        std::sync::OnceLock::new();
    C.get_or_init(|| {
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        conn.set_nodelay(true);
        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(conn);
        (
            c,
            std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        )
    })
}

/// A request copy to send.
pub struct Copy {
    pub target: std::net::SocketAddr,
    pub method: http::Method,
    /// Path with query.
    pub path: String,
    /// The shadow authority (`Host`).
    pub authority: String,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
    pub timeout: std::time::Duration,
}

/// Send a copy without waiting for it: the caller's request never sees its outcome, which is
/// counted in `metrics` (`remora_mirror_requests_total{result}`). Must be called inside a tokio
/// runtime. Returns false when the copy was dropped (too many in flight).
pub fn spawn(metrics: &Metrics, copy: Copy) -> bool {
    let (client, sem) = client();
    let results = metrics.mirror_requests.clone();
    let Ok(permit) = sem.clone().try_acquire_owned() else {
        results.with_label_values(&["dropped"]).inc();
        tracing::debug!(target = %copy.target, "mirror copy dropped: too many in flight");
        return false;
    };
    let client = client.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let uri = format!("http://{}{}", copy.target, copy.path);
        let mut req = match http::Request::builder()
            .method(copy.method)
            .uri(uri)
            .body(http_body_util::Full::new(copy.body))
        {
            Ok(r) => r,
            Err(e) => {
                results.with_label_values(&["failed"]).inc();
                tracing::debug!("mirror copy not built: {e}");
                return;
            }
        };
        for (k, v) in copy.headers.iter() {
            if !is_hop_by_hop(k.as_str()) {
                req.headers_mut().append(k.clone(), v.clone());
            }
        }
        if let Ok(h) = http::HeaderValue::from_str(&copy.authority) {
            req.headers_mut().insert(http::header::HOST, h);
        }
        let result = match tokio::time::timeout(copy.timeout, async {
            let resp = client.request(req).await?;
            // Drain the body so the connection can be reused.
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            Ok::<_, hyper_util::client::legacy::Error>(())
        })
        .await
        {
            Ok(Ok(())) => "sent",
            Ok(Err(e)) => {
                tracing::debug!(target = %copy.target, "mirror copy failed: {e}");
                "failed"
            }
            Err(_) => "timeout",
        };
        results.with_label_values(&[result]).inc();
    });
    true
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "content-length"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_authorities() {
        let cases = [
            ("reviews", "reviews-shadow"),
            ("reviews:9080", "reviews-shadow:9080"),
            (
                "reviews.default.svc.cluster.local:80",
                "reviews.default.svc.cluster.local-shadow:80",
            ),
            ("[::1]:8080", "[::1]-shadow:8080"),
            ("::1", "::1-shadow"),
        ];
        for (a, want) in cases {
            assert_eq!(shadow_authority(a), want, "{a}");
        }
    }

    /// A copy reaches a real server with the shadow authority, method, path and headers.
    #[tokio::test]
    async fn copies_arrive_with_the_shadow_authority() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("hello") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            tx.send(String::from_utf8_lossy(&got).to_string())
                .await
                .unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let mut headers = http::HeaderMap::new();
        headers.insert("x-test", "1".parse().unwrap());
        let metrics = Metrics::new(10).unwrap();
        assert!(spawn(
            &metrics,
            Copy {
                target: addr,
                method: http::Method::POST,
                path: "/p?q=1".into(),
                authority: shadow_authority("svc:80"),
                headers,
                body: bytes::Bytes::from_static(b"hello"),
                timeout: std::time::Duration::from_secs(5),
            }
        ));
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(seen.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{seen}");
        assert!(
            seen.to_ascii_lowercase().contains("host: svc-shadow:80"),
            "{seen}"
        );
        assert!(seen.contains("x-test: 1"), "{seen}");
        // The result is counted in the handle the copy was given.
        let sent = metrics.mirror_requests.with_label_values(&["sent"]);
        for _ in 0..250 {
            if sent.get() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(sent.get(), 1);
    }
}
