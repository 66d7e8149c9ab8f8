//! HTTP/1.1, gRPC (h2c) and line-protocol clients whose sockets are created inside a pod's network
//! namespace, so their traffic is the pod's traffic (captured by its sidecar when it has one).

use crate::netns::Netns;
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {} body is not JSON: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn tcp_in(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<tokio::net::TcpStream> {
    let s = ns.connect(addr, timeout)?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    Ok(tokio::net::TcpStream::from_std(s)?)
}

/// GET (or another method) `path` on `addr`, with `Host: host`, from inside `ns`.
pub async fn http(
    ns: &Netns,
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpReply> {
    let fut = async {
        let tcp = tcp_in(ns, addr, timeout).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::new()))?)
            .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>(HttpReply {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        anyhow!("{method} http://{host}{path} via {addr} timed out after {timeout:?}")
    })?
}

/// Encodes a protobuf message with one string field (number 1): `EchoRequest { message }`.
pub fn pb_string(msg: &str) -> Vec<u8> {
    let mut out = vec![0x0a];
    let mut n = msg.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(msg.as_bytes());
    out
}

/// Decodes what [`pb_string`] encodes.
pub fn pb_string_decode(mut buf: &[u8]) -> Result<String> {
    if buf.first() != Some(&0x0a) {
        bail!("not a field-1 length-delimited protobuf message");
    }
    buf = &buf[1..];
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let b = *buf.first().ok_or_else(|| anyhow!("truncated varint"))?;
        buf = &buf[1..];
        len |= ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            bail!("varint too long");
        }
    }
    if buf.len() < len {
        bail!("truncated string field");
    }
    Ok(String::from_utf8(buf[..len].to_vec())?)
}

/// gRPC length-prefixed framing of one message.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 5);
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// Splits gRPC frames.
pub fn grpc_unframe(mut body: Bytes) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            bail!("truncated gRPC frame header");
        }
        let compressed = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if compressed != 0 {
            bail!("compressed gRPC frames are not supported");
        }
        body.advance(5);
        if body.len() < len {
            bail!("truncated gRPC frame");
        }
        out.push(body.split_to(len));
    }
    Ok(out)
}

/// A gRPC answer: messages and the `grpc-status` trailer.
#[derive(Debug, Clone)]
pub struct GrpcReply {
    pub http_status: u16,
    pub grpc_status: Option<String>,
    pub messages: Vec<String>,
    pub headers: http::HeaderMap,
}

/// A unary gRPC call over h2c (prior knowledge) from inside `ns`.
pub async fn grpc_unary(
    ns: &Netns,
    addr: SocketAddr,
    authority: &str,
    path: &str,
    message: &str,
    timeout: Duration,
) -> Result<GrpcReply> {
    let fut = async {
        let tcp = tcp_in(ns, addr, timeout).await?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{authority}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(grpc_frame(&pb_string(message))))?;
        let resp = send.send_request(req).await?;
        let http_status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut grpc_status = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let collected = resp.into_body().collect().await?;
        if let Some(t) = collected.trailers() {
            if let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok()) {
                grpc_status = Some(s.to_string());
            }
        }
        let frames = grpc_unframe(collected.to_bytes())?;
        let messages = frames
            .iter()
            .map(|f| pb_string_decode(f))
            .collect::<Result<Vec<_>>>()?;
        Ok::<_, anyhow::Error>(GrpcReply {
            http_status,
            grpc_status,
            messages,
            headers,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("gRPC {path} via {addr} timed out after {timeout:?}"))?
}

/// Sends each line of a line protocol on one connection and returns the answer lines.
pub async fn line_session(
    ns: &Netns,
    addr: SocketAddr,
    lines: &[&str],
    timeout: Duration,
) -> Result<Vec<String>> {
    let fut = async {
        let tcp = tcp_in(ns, addr, timeout).await?;
        let (r, mut w) = tcp.into_split();
        let mut r = BufReader::new(r);
        let mut out = Vec::new();
        for l in lines {
            w.write_all(format!("{l}\r\n").as_bytes()).await?;
            let mut answer = String::new();
            if r.read_line(&mut answer).await? == 0 {
                bail!("connection closed after {} answers", out.len());
            }
            out.push(answer.trim_end().to_string());
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("line session to {addr} timed out after {timeout:?}"))?
}

/// One Prometheus sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition (comments skipped; malformed lines ignored).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = match line.rfind('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim()),
            None => match line.split_once(' ') {
                Some((h, v)) => (h, v.trim()),
                None => continue,
            },
        };
        let value = value.split_whitespace().next().unwrap_or("");
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (head, Default::default()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',') | Some(' ')) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                o => val.push(o),
            }
        }
        out.insert(key.trim().to_string(), val);
    }
    out
}

/// Sum of the samples named `name` whose labels include every `filter` pair.
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_and_grpc_framing_round_trip() {
        let long = "x".repeat(300);
        for m in ["", "hello", long.as_str()] {
            let framed = grpc_frame(&pb_string(m));
            let frames = grpc_unframe(framed).unwrap();
            assert_eq!(frames.len(), 1);
            assert_eq!(pb_string_decode(&frames[0]).unwrap(), m);
        }
        assert!(grpc_unframe(Bytes::from_static(&[0, 0, 0, 0, 9, 1])).is_err());
    }

    #[test]
    fn prometheus_text_parses() {
        let text = "# HELP istio_requests_total x\n# TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"source\",destination_service=\"reviews.bookinfo.svc.cluster.local\",response_code=\"200\"} 7\n\
            istio_requests_total{reporter=\"destination\",response_code=\"503\",x=\"a\\\"b,c\"} 2\n\
            remora_config_generation 3\n";
        let s = parse_prometheus(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].labels["x"], "a\"b,c");
        assert_eq!(sum(&s, "istio_requests_total", &[]), 9.0);
        assert_eq!(
            sum(&s, "istio_requests_total", &[("reporter", "source")]),
            7.0
        );
        assert_eq!(sum(&s, "remora_config_generation", &[]), 3.0);
    }
}
