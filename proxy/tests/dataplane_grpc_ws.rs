//! Process tests: a real gRPC service (tonic, over h2c prior knowledge) unary and bidirectional
//! streaming with trailers end to end, a gRPC health app probe, and a WebSocket echo, each
//! through the proxy.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoMsg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub seq: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

struct UnarySvc;
impl tonic::server::UnaryService<EchoMsg> for UnarySvc {
    type Response = EchoMsg;
    type Future = std::future::Ready<Result<Response<EchoMsg>, Status>>;
    fn call(&mut self, req: Request<EchoMsg>) -> Self::Future {
        let m = req.into_inner();
        if m.text == "fail" {
            return std::future::ready(Err(Status::not_found("no such echo")));
        }
        let mut resp = Response::new(EchoMsg {
            text: format!("echo: {}", m.text),
            seq: m.seq + 1,
        });
        resp.metadata_mut()
            .insert("x-echo-server", "tonic".parse().unwrap());
        std::future::ready(Ok(resp))
    }
}

type MsgStream = Pin<Box<dyn futures::Stream<Item = Result<EchoMsg, Status>> + Send>>;

struct ChatSvc;
impl tonic::server::StreamingService<EchoMsg> for ChatSvc {
    type Response = EchoMsg;
    type ResponseStream = MsgStream;
    type Future = std::future::Ready<Result<Response<MsgStream>, Status>>;
    fn call(&mut self, req: Request<Streaming<EchoMsg>>) -> Self::Future {
        let count = Arc::new(AtomicU32::new(0));
        let c2 = count.clone();
        let out = req
            .into_inner()
            .map(move |r| {
                r.map(|m| {
                    c2.fetch_add(1, Ordering::Relaxed);
                    EchoMsg {
                        text: m.text.to_uppercase(),
                        seq: m.seq * 10,
                    }
                })
            })
            // After the client half-closes: end with a non-OK status carried in the trailers.
            .chain(futures::stream::once(async move {
                Err(Status::aborted(format!(
                    "chat done after {}",
                    count.load(Ordering::Relaxed)
                )))
            }));
        std::future::ready(Ok(Response::new(Box::pin(out) as MsgStream)))
    }
}

struct HealthSvc;
impl tonic::server::UnaryService<HealthCheckRequest> for HealthSvc {
    type Response = HealthCheckResponse;
    type Future = std::future::Ready<Result<Response<HealthCheckResponse>, Status>>;
    fn call(&mut self, req: Request<HealthCheckRequest>) -> Self::Future {
        let s = req.into_inner().service;
        let status = if s.is_empty() || s == "remora.test.Echo" {
            1
        } else {
            3
        };
        std::future::ready(Ok(Response::new(HealthCheckResponse { status })))
    }
}

/// The hand-written equivalent of tonic's generated server for `remora.test.Echo` plus
/// `grpc.health.v1.Health/Check` (no protoc needed).
#[derive(Clone)]
struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "remora.test.Echo";
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match req.uri().path() {
            "/remora.test.Echo/Unary" => Box::pin(async move {
                let mut g = tonic::server::Grpc::new(
                    tonic_prost::ProstCodec::<EchoMsg, EchoMsg>::default(),
                );
                Ok(g.unary(UnarySvc, req).await)
            }),
            "/remora.test.Echo/Chat" => Box::pin(async move {
                let mut g = tonic::server::Grpc::new(
                    tonic_prost::ProstCodec::<EchoMsg, EchoMsg>::default(),
                );
                Ok(g.streaming(ChatSvc, req).await)
            }),
            "/grpc.health.v1.Health/Check" => Box::pin(async move {
                let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                    HealthCheckResponse,
                    HealthCheckRequest,
                >::default());
                Ok(g.unary(HealthSvc, req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The same handler registered under the health service's name (tonic routes by service name).
#[derive(Clone)]
struct HealthServer;

impl tonic::server::NamedService for HealthServer {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl tower::Service<http::Request<tonic::body::Body>> for HealthServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        EchoServer.call(req)
    }
}

/// Serve the echo service on a fresh loopback port (h2c) and return its address.
async fn spawn_grpc() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .add_service(EchoServer)
        .add_service(HealthServer);
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        let _ = router.serve_with_incoming(incoming).await;
    });
    addr
}

async fn grpc_client(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect gRPC channel through the proxy");
    tonic::client::Grpc::new(ch)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn grpc_unary_and_bidi_streaming_through_the_proxy() {
    let rt = rt();
    let server = rt.block_on(spawn_grpc());
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(server);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let proxy = p.ports.outbound_addr();

    rt.block_on(async move {
        let mut g = grpc_client(proxy).await;
        let codec = || tonic_prost::ProstCodec::<EchoMsg, EchoMsg>::default();
        let path = http::uri::PathAndQuery::from_static("/remora.test.Echo/Unary");

        // Unary OK (status in trailers, metadata in headers).
        g.ready().await.unwrap();
        let r = g
            .unary(
                Request::new(EchoMsg {
                    text: "hi".into(),
                    seq: 1,
                }),
                path.clone(),
                codec(),
            )
            .await
            .expect("unary call");
        assert_eq!(r.metadata().get("x-echo-server").unwrap(), "tonic");
        assert_eq!(
            r.into_inner(),
            EchoMsg {
                text: "echo: hi".into(),
                seq: 2
            }
        );

        // Unary error: grpc-status/grpc-message reach the client.
        g.ready().await.unwrap();
        let e = g
            .unary(
                Request::new(EchoMsg {
                    text: "fail".into(),
                    seq: 0,
                }),
                path.clone(),
                codec(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(e.message(), "no such echo");

        // Bidirectional streaming, ending with a status carried in trailers after data.
        g.ready().await.unwrap();
        let msgs: Vec<EchoMsg> = (1..=5)
            .map(|i| EchoMsg {
                text: format!("m{i}"),
                seq: i,
            })
            .collect();
        let resp = g
            .streaming(
                Request::new(futures::stream::iter(msgs)),
                http::uri::PathAndQuery::from_static("/remora.test.Echo/Chat"),
                codec(),
            )
            .await
            .expect("streaming call");
        let mut stream = resp.into_inner();
        let mut got = Vec::new();
        let end = loop {
            match stream.message().await {
                Ok(Some(m)) => got.push(m),
                Ok(None) => panic!("stream ended without the trailer status"),
                Err(s) => break s,
            }
        };
        assert_eq!(got.len(), 5);
        assert_eq!(got[4].text, "M5");
        assert_eq!(got[4].seq, 50);
        assert_eq!(end.code(), tonic::Code::Aborted);
        assert_eq!(end.message(), "chat done after 5");
    });

    let line = p.wait_log(|v| v["path"] == "/remora.test.Echo/Chat");
    assert_eq!(line["request_protocol"], "grpc");
    assert_eq!(line["status"], 200);
    // Each call is recorded when its stream ends, not in call order: wait (bounded) for all.
    for code in ["0", "5"] {
        p.metrics_when(
            "istio_requests_total",
            &[&format!("grpc_response_status=\"{code}\"")],
            1.0,
        );
    }
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &["request_protocol=\"grpc\"", "grpc_response_status=\"0\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &["request_protocol=\"grpc\"", "grpc_response_status=\"5\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &["request_protocol=\"grpc\"", "grpc_response_status=\"10\""]
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn grpc_health_app_probe_and_inbound_grpc() {
    let rt = rt();
    let server = rt.block_on(spawn_grpc());
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_inbound = Some(server);
    o.env.push((
        "ISTIO_KUBE_APP_PROBERS".into(),
        format!(
            r#"{{"/app-health/app/startupz": {{"grpc": {{"port": {}, "service": ""}}}},
                "/app-health/app/readyz": {{"grpc": {{"port": {}, "service": "nope"}}}}}}"#,
            server.port(),
            server.port()
        ),
    ));
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let r = http_get(p.ports.admin_addr(), "/app-health/app/startupz", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(r.body_text().contains("SERVING"));
    let r = http_get(p.ports.admin_addr(), "/app-health/app/readyz", &[]).unwrap();
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(
        r.body_text().contains("SERVICE_UNKNOWN"),
        "{}",
        r.body_text()
    );

    // Inbound gRPC to the app.
    let inbound = p.ports.inbound_addr();
    rt.block_on(async move {
        let mut g = grpc_client(inbound).await;
        g.ready().await.unwrap();
        let r = g
            .unary(
                Request::new(EchoMsg {
                    text: "in".into(),
                    seq: 7,
                }),
                http::uri::PathAndQuery::from_static("/remora.test.Echo/Unary"),
                tonic_prost::ProstCodec::<EchoMsg, EchoMsg>::default(),
            )
            .await
            .unwrap();
        assert_eq!(r.into_inner().seq, 8);
    });
    let line = p.wait_log(|v| v["direction"] == "inbound");
    assert_eq!(line["request_protocol"], "grpc");
}

async fn spawn_ws_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn websocket_upgrade_echo_through_the_proxy() {
    use tokio_tungstenite::tungstenite::Message;
    let rt = rt();
    let server = rt.block_on(spawn_ws_echo());
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(server);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let proxy = p.ports.outbound_addr();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.testns:8080/ws", tcp)
            .await
            .expect("websocket handshake through the proxy");
        assert_eq!(resp.status(), 101);
        for i in 0..20 {
            ws.send(Message::text(format!("hello {i}"))).await.unwrap();
            let m = ws.next().await.unwrap().unwrap();
            assert_eq!(m.into_text().unwrap().as_str(), format!("hello {i}"));
        }
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_data().as_ref(), &big[..]);
        ws.close(None).await.unwrap();
    });
    let line = p.wait_log(|v| v["path"] == "/ws");
    assert_eq!(line["status"], 101);
    assert_eq!(line["authority"], "chat.testns:8080");
}

#[test]
fn grpc_client_gets_unavailable_when_the_upstream_is_down() {
    let rt = rt();
    // nothing listens there, and the port stays bound so no other test's server can take it
    let closed = DeadPort::new();
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(closed.addr());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let proxy = p.ports.outbound_addr();
    let status = rt.block_on(async move {
        let mut g = grpc_client(proxy).await;
        g.ready().await.unwrap();
        g.unary(
            Request::new(EchoMsg {
                text: "x".into(),
                seq: 0,
            }),
            http::uri::PathAndQuery::from_static("/remora.test.Echo/Unary"),
            tonic_prost::ProstCodec::<EchoMsg, EchoMsg>::default(),
        )
        .await
        .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("upstream error"), "{status:?}");
    let line = p.wait_log(|l| l["path"] == "/remora.test.Echo/Unary");
    assert_eq!(line["response_flags"], "UF");
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &["grpc_response_status=\"14\"", "response_flags=\"UF\""]
        ),
        1.0,
        "{m}"
    );
}
