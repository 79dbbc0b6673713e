//! One axum server on a loopback port, with a real client connection: served, then shed with
//! a 503 and `Retry-After` while the only pool is held.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use leasepool::tower::{LeaseConfig, LeaseLayer, Leased, RequestBody};
use leasepool::LeaseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::Layer;

use crate::manager;

/// One HTTP/1.1 request on a fresh connection; the whole response as text.
async fn fetch(addr: std::net::SocketAddr, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn an_axum_server_on_a_loopback_port_serves_and_sheds() {
    let _deadline = testkit::deadline();
    let m = manager("axum-socket", 1).await;
    async fn work(lease: Leased) -> Result<String, LeaseError> {
        lease.run(|| "served".to_owned()).await
    }
    let app = Router::new().route("/work", get(work)).layer(
        LeaseLayer::new(m.clone())
            .config(LeaseConfig::no_wait().retry_after(Duration::from_secs(4))),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let ok = fetch(addr, "/work").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with("served"), "{ok}");
    let held = m.acquire().await.unwrap();
    let shed = fetch(addr, "/work").await;
    assert!(shed.starts_with("HTTP/1.1 503"), "{shed}");
    assert!(
        shed.to_ascii_lowercase().contains("retry-after: 4"),
        "{shed}"
    );
    drop(held);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    m.stop().await;
}

/// hyper directly, no axum: `LeaseService` over hyper's own body type `Incoming`, served with
/// hyper-util's `TowerToHyperService`.
#[tokio::test]
async fn a_plain_hyper_server_serves_through_the_layer() {
    let _deadline = testkit::deadline();
    let m = manager("hyper-plain", 1).await;
    let echo = tower::service_fn(|req: http::Request<RequestBody<Incoming>>| async move {
        let lease = req
            .extensions()
            .get::<Leased>()
            .cloned()
            .expect("the lease");
        let body = req.into_body().collect().await?.to_bytes();
        let n = lease.run(move || body.len()).await.unwrap_or(0);
        Ok::<_, hyper::Error>(http::Response::new(Full::new(bytes::Bytes::from(format!(
            "{n} bytes"
        )))))
    });
    let svc = LeaseLayer::new(m.clone()).layer(echo);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        hyper::server::conn::http1::Builder::new()
            .serve_connection(
                hyper_util::rt::TokioIo::new(io),
                hyper_util::service::TowerToHyperService::new(svc),
            )
            .await
    });
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let req =
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("5 bytes"), "{response}");
    server.await.unwrap().unwrap();
    assert_eq!(m.stats().await.counters.acquired, 1);
    m.stop().await;
}
