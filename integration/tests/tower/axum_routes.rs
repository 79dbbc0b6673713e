//! axum: the extractors with a `LeaseLayer`, with a `ManagerLayer` per route (two managers of
//! one type never confused), without any, and `LeasedAfter` for a body.

use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use leasepool::tower::{LeaseConfig, LeaseLayer, Leased, LeasedAfter, ManagerLayer};
use leasepool::{LeaseError, LeaseManager};
use tower::ServiceExt;

use crate::{leased, manager};

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn pool_of(lease: Leased) -> Result<String, LeaseError> {
    let n = lease.run(|| 6 * 7).await?;
    Ok(format!("{} {n}", lease.pool()))
}

#[tokio::test]
async fn the_extractor_takes_the_layers_lease() {
    let _deadline = testkit::deadline();
    let m = manager("axum-layer", 1).await;
    let app = Router::new()
        .route("/", get(pool_of))
        .layer(LeaseLayer::new(m.clone()));
    let (status, body) = call(&app, get_req("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with(" 42"), "{body}");
    assert_eq!(
        m.stats().await.counters.acquired,
        1,
        "one lease per request"
    );
    leased(&m, 0).await;
    m.stop().await;
}

#[tokio::test]
async fn each_route_leases_from_the_manager_bound_nearest_to_it() {
    let _deadline = testkit::deadline();
    let threads = manager("axum-threads", 1).await;
    let sandbox = manager("axum-sandbox", 1).await;
    let app = Router::new()
        .route("/quick", get(pool_of))
        .route(
            "/convert",
            get(pool_of).layer(ManagerLayer::new(sandbox.clone())),
        )
        .layer(ManagerLayer::new(threads.clone()));
    for _ in 0..3 {
        assert_eq!(call(&app, get_req("/quick")).await.0, StatusCode::OK);
    }
    assert_eq!(call(&app, get_req("/convert")).await.0, StatusCode::OK);
    assert_eq!(threads.stats().await.counters.acquired, 3);
    assert_eq!(sandbox.stats().await.counters.acquired, 1);
    threads.stop().await;
    sandbox.stop().await;
}

#[tokio::test]
async fn a_bound_manager_answers_overload_with_its_config() {
    let _deadline = testkit::deadline();
    let m = manager("axum-bound-busy", 1).await;
    let held = m.acquire().await.unwrap();
    let app = Router::new().route("/", get(pool_of)).layer(
        ManagerLayer::new(m.clone())
            .config(LeaseConfig::no_wait().retry_after(Duration::from_secs(5))),
    );
    let r = app.clone().oneshot(get_req("/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "5");
    drop(held);
    m.stop().await;
}

#[tokio::test]
async fn without_a_layer_the_extractor_is_a_500_naming_nothing_to_the_client() {
    let _deadline = testkit::deadline();
    let app = Router::new().route("/", get(pool_of));
    let (status, body) = call(&app, get_req("/")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, r#"{"error":"misconfigured"}"#);
}

#[tokio::test]
async fn a_handlers_lease_error_is_the_same_answer_as_actix_webs() {
    let _deadline = testkit::deadline();
    let m = manager("axum-job-error", 1).await;
    async fn boom(lease: Leased) -> Result<String, LeaseError> {
        lease.run(|| panic!("secret internal detail")).await?;
        Ok(String::new())
    }
    let app = Router::new()
        .route("/", get(boom))
        .layer(LeaseLayer::new(m.clone()));
    let (status, body) = call(&app, get_req("/")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, r#"{"error":"panicked"}"#);
    m.stop().await;
}

#[tokio::test]
async fn leased_after_extracts_the_body_before_it_leases() {
    let _deadline = testkit::deadline();
    let m = manager("axum-after", 1).await;
    let watched = m.clone();
    let app = Router::new()
        .route(
            "/import",
            post(
                move |LeasedAfter(body, lease): LeasedAfter<String>| async move {
                    let n = lease.run(move || body.len()).await.unwrap();
                    format!("{n} bytes")
                },
            ),
        )
        .layer(ManagerLayer::new(m.clone()));
    let req = Request::post("/import")
        .body(Body::from("0123456789"))
        .unwrap();
    let (status, body) = call(&app, req).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "10 bytes"));
    // A body the extractor refuses: its own rejection, and no lease taken.
    let bad = Request::post("/import")
        .body(Body::from(vec![0xff, 0xfe]))
        .unwrap();
    let (status, _) = call(&app, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(watched.stats().await.counters.acquired, 1);
    m.stop().await;
}

#[tokio::test]
async fn two_leased_extractors_in_one_request_share_one_lease() {
    let _deadline = testkit::deadline();
    let m: LeaseManager = manager("axum-twice", 2).await;
    let app = Router::new()
        .route(
            "/",
            get(|a: Leased, b: Leased| async move { (a.id() == b.id()).to_string() }),
        )
        .layer(ManagerLayer::new(m.clone()));
    let (_, body) = call(&app, get_req("/")).await;
    assert_eq!(body, "true");
    assert_eq!(m.stats().await.counters.acquired, 1);
    m.stop().await;
}

#[tokio::test]
async fn a_layers_lease_from_another_manager_than_the_routes_binding_is_a_500() {
    let _deadline = testkit::deadline();
    let threads = manager("axum-mix-threads", 1).await;
    let sandbox = manager("axum-mix-sandbox", 1).await;
    let app = Router::new()
        .route(
            "/convert",
            get(pool_of).layer(ManagerLayer::new(sandbox.clone())),
        )
        .layer(LeaseLayer::new(threads.clone()));
    let (status, body) = call(&app, get_req("/convert")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(sandbox.stats().await.counters.acquired, 0);
    threads.stop().await;
    sandbox.stop().await;
}

#[tokio::test]
async fn a_manager_layers_config_naming_another_manager_is_a_500() {
    let _deadline = testkit::deadline();
    let m = manager("axum-named", 1).await;
    let app = Router::new()
        .route("/", get(pool_of))
        .layer(ManagerLayer::new(m.clone()).config(LeaseConfig::no_wait().manager("other")));
    assert_eq!(
        call(&app, get_req("/")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(m.stats().await.counters.acquired, 0);
    m.stop().await;
}

#[tokio::test]
async fn two_lease_layers_of_one_manager_take_one_lease() {
    let _deadline = testkit::deadline();
    let m = manager("axum-nested", 2).await;
    let app = Router::new()
        .route("/", get(pool_of).layer(LeaseLayer::new(m.clone())))
        .layer(LeaseLayer::new(m.clone()));
    assert_eq!(call(&app, get_req("/")).await.0, StatusCode::OK);
    assert_eq!(m.stats().await.counters.acquired, 1);
    m.stop().await;
}

#[tokio::test]
async fn leased_after_takes_no_lease_while_the_body_is_still_arriving() {
    let _deadline = testkit::deadline();
    let m = manager("axum-after-slow", 1).await;
    let app = Router::new()
        .route(
            "/import",
            post(|LeasedAfter(body, lease): LeasedAfter<String>| async move {
                let n = lease.run(move || body.len()).await.unwrap();
                format!("{n} bytes")
            }),
        )
        .layer(ManagerLayer::new(m.clone()));
    let (more, rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| {
            (
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(c.as_bytes())),
                rx,
            )
        })
    });
    more.send("first,").unwrap();
    let req = Request::post("/import")
        .body(Body::from_stream(chunks))
        .unwrap();
    let call = tokio::spawn(call_owned(app, req));
    tokio::time::sleep(crate::SETTLE).await;
    let s = m.stats().await;
    assert_eq!(
        (s.leased, s.waiting, s.counters.acquired),
        (0, 0, 0),
        "no lease during the upload"
    );
    more.send("second").unwrap();
    drop(more);
    let (status, body) = call.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "12 bytes"));
    m.stop().await;
}

async fn call_owned(app: Router, req: Request<Body>) -> (StatusCode, String) {
    call(&app, req).await
}
