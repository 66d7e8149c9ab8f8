//! A small test peer for manual runs and benchmarks of the proxy:
//!
//! ```text
//! peer http ADDR [NAME]   HTTP/1.1 + h2c server answering `NAME` (default "peer") to every request
//! peer tcp-echo ADDR      TCP echo server
//! ```

use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;

fn usage() -> ! {
    eprintln!("usage: peer http ADDR [NAME] | peer tcp-echo ADDR");
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(addr)) = (args.first(), args.get(1)) else {
        usage()
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|e| {
        eprintln!("peer: ADDR {addr:?}: {e}");
        std::process::exit(2)
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| {
            eprintln!("peer: bind {addr}: {e}");
            std::process::exit(1)
        });
    match mode.as_str() {
        "http" => {
            let name: &'static str = Box::leak(
                args.get(2)
                    .cloned()
                    .unwrap_or_else(|| "peer".into())
                    .into_boxed_str(),
            );
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = service_fn(
                        move |_req: hyper::Request<hyper::body::Incoming>| async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from_static(name.as_bytes()),
                            )))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(sock), svc)
                        .await;
                });
            }
        }
        "tcp-echo" => loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        },
        _ => usage(),
    }
}
