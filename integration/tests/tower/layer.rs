//! `LeaseLayer` on a plain tower service: when the lease is held and released, what overload
//! and wiring mistakes answer, and the request body's rules.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use leasepool::tower::{LeaseConfig, LeaseLayer, Leased, RequestBody};
use leasepool::LeaseManager;
use tokio::sync::{mpsc, oneshot};
use tower::{service_fn, Layer, ServiceExt};

use crate::{leased, manager, SETTLE};

type Body = Full<Bytes>;

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::default()).unwrap()
}

async fn text<B: http_body::Body<Data = Bytes>>(body: B) -> String
where
    B::Error: std::fmt::Debug,
{
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// A handler that runs a job on the request's lease and answers with the lease's owner.
async fn owner_of(req: Request<RequestBody<Body>>) -> Result<Response<Body>, Infallible> {
    let lease = req
        .extensions()
        .get::<Leased>()
        .expect("the layer's lease")
        .clone();
    let n = lease.run(|| 21 * 2).await.unwrap();
    let owner = lease.owner().unwrap_or_default();
    Ok(Response::new(Body::from(format!("{owner} {n}"))))
}

#[tokio::test]
async fn the_lease_is_held_during_the_handler_and_released_after_it() {
    let _deadline = testkit::deadline();
    let m = manager("tower-held", 2).await;
    let (inside, mut seen) = mpsc::unbounded_channel();
    let watched = m.clone();
    let svc =
        LeaseLayer::new(m.clone()).layer(service_fn(move |req: Request<RequestBody<Body>>| {
            let (watched, inside) = (watched.clone(), inside.clone());
            async move {
                assert!(req.extensions().get::<Leased>().is_some());
                let _ = inside.send(watched.stats().await.leased);
                Ok::<_, Infallible>(Response::new(Body::from("ok")))
            }
        }));
    let response = svc.oneshot(get("/work")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.recv().await, Some(1), "leased while the handler ran");
    assert_eq!(text(response.into_body()).await, "ok");
    leased(&m, 0).await;
    m.stop().await;
}

#[tokio::test]
async fn the_owner_is_the_method_and_path_or_what_the_owner_function_says() {
    let _deadline = testkit::deadline();
    let m = manager("tower-owner", 1).await;
    let plain = LeaseLayer::new(m.clone()).layer(service_fn(owner_of));
    let r = plain.oneshot(get("/devices/7?x=1")).await.unwrap();
    assert_eq!(text(r.into_body()).await, "GET /devices/7 42");
    let custom = LeaseLayer::new(m.clone())
        .owner(|head| format!("tenant {}", head.headers["x-tenant"].to_str().unwrap()))
        .layer(service_fn(owner_of));
    let req = Request::get("/")
        .header("x-tenant", "acme")
        .body(Body::default())
        .unwrap();
    let r = custom.oneshot(req).await.unwrap();
    assert_eq!(text(r.into_body()).await, "tenant acme 42");
    m.stop().await;
}

#[tokio::test]
async fn overload_is_a_503_with_retry_after_and_the_handler_never_runs() {
    let _deadline = testkit::deadline();
    let m = manager("tower-busy", 1).await;
    let held = m.acquire().await.unwrap();
    for (config, secs) in [
        (
            LeaseConfig::no_wait().retry_after(Duration::from_secs(7)),
            "7",
        ),
        (
            LeaseConfig::timeout(Duration::from_millis(50)).retry_after(Duration::from_secs(3)),
            "3",
        ),
    ] {
        let svc = LeaseLayer::new(m.clone()).config(config).layer(service_fn(
            |_: Request<RequestBody<Body>>| async {
                panic!("the handler ran without a lease");
                #[allow(unreachable_code)]
                Ok::<Response<Body>, Infallible>(Response::new(Body::default()))
            },
        ));
        let r = svc.oneshot(get("/")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], secs);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body = text(r.into_body()).await;
        assert!(body.contains(&format!(r#""retry_after":{secs}"#)), "{body}");
    }
    drop(held);
    m.stop().await;
}

#[tokio::test]
async fn a_stopped_manager_is_a_503_and_a_config_naming_another_manager_a_500() {
    let _deadline = testkit::deadline();
    let m = manager("tower-wiring", 1).await;
    let wrong = LeaseLayer::new(m.clone())
        .config(LeaseConfig::no_wait().manager("elsewhere"))
        .layer(service_fn(owner_of));
    let r = wrong.oneshot(get("/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(text(r.into_body()).await, r#"{"error":"misconfigured"}"#);
    let right = LeaseLayer::new(m.clone())
        .config(LeaseConfig::no_wait().manager("tower-wiring"))
        .layer(service_fn(owner_of));
    assert_eq!(
        right.oneshot(get("/")).await.unwrap().status(),
        StatusCode::OK
    );
    m.stop().await;
    let stopped = LeaseLayer::new(m.clone()).layer(service_fn(owner_of));
    let r = stopped.oneshot(get("/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = text(r.into_body()).await;
    // A stopped manager can be started again: its acquires answer `NotStarted`.
    assert!(body.starts_with(r#"{"error":"not_started""#), "{body}");
}

#[tokio::test]
async fn a_cancelled_request_releases_its_lease() {
    let _deadline = testkit::deadline();
    let m = manager("tower-cancel", 1).await;
    let (inside, entered) = oneshot::channel::<()>();
    let inside = std::sync::Arc::new(std::sync::Mutex::new(Some(inside)));
    let svc = LeaseLayer::new(m.clone()).layer(service_fn(move |_: Request<RequestBody<Body>>| {
        let signal = inside.lock().unwrap().take();
        async move {
            if let Some(s) = signal {
                let _ = s.send(());
            }
            std::future::pending::<()>().await; // a handler that never answers
            Ok::<Response<Body>, Infallible>(Response::new(Body::default()))
        }
    }));
    let call = tokio::spawn(svc.oneshot(get("/hang")));
    entered.await.unwrap();
    leased(&m, 1).await;
    call.abort(); // the client went away
    leased(&m, 0).await;
    m.stop().await;
}

/// A request body whose first chunk is there at once and the rest when the test says.
fn gated_body() -> (
    StreamBody<impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>>>,
    mpsc::UnboundedSender<&'static str>,
) {
    let (tx, rx) = mpsc::unbounded_channel::<&'static str>();
    let chunks = futures_util::stream::once(async { "first," })
        .chain(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        }))
        .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c.as_bytes()))));
    (StreamBody::new(chunks), tx)
}

#[tokio::test]
async fn the_body_is_read_before_the_lease_unless_asked() {
    let _deadline = testkit::deadline();
    let m = manager("tower-body", 1).await;
    let echo = |req: Request<RequestBody<_>>| async move {
        let whole = req.body().is_whole();
        let body = text(req.into_body()).await;
        Ok::<_, Infallible>(Response::new(Body::from(format!("{whole} {body}"))))
    };
    // Default: while the client is still sending, no pool is leased.
    let (body, more) = gated_body();
    let svc = LeaseLayer::new(m.clone()).layer(service_fn(echo));
    let call = tokio::spawn(svc.oneshot(Request::post("/").body(body).unwrap()));
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        m.stats().await.leased,
        0,
        "leased while the body was uploading"
    );
    more.send("second").unwrap();
    drop(more);
    let r = call.await.unwrap().unwrap();
    assert_eq!(text(r.into_body()).await, "true first,second");
    // Asked: the lease first, the body streamed through.
    let (body, more) = gated_body();
    let svc = LeaseLayer::new(m.clone())
        .lease_during_body()
        .layer(service_fn(echo));
    let call = tokio::spawn(svc.oneshot(Request::post("/").body(body).unwrap()));
    leased(&m, 1).await;
    more.send("second").unwrap();
    drop(more);
    let r = call.await.unwrap().unwrap();
    assert_eq!(text(r.into_body()).await, "false first,second");
    leased(&m, 0).await;
    m.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_and_never_leased_for() {
    let _deadline = testkit::deadline();
    let m = manager("tower-limit", 1).await;
    let svc = LeaseLayer::new(m.clone())
        .body_limit(8)
        .layer(service_fn(owner_of));
    let r = svc
        .clone()
        .oneshot(Request::post("/").body(Body::from("0123456789")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let ok = svc
        .oneshot(Request::post("/").body(Body::from("01234567")).unwrap())
        .await;
    assert_eq!(ok.unwrap().status(), StatusCode::OK);
    let c = m.stats().await.counters;
    assert_eq!(
        c.acquired, 1,
        "only the body within the limit was leased for"
    );
    m.stop().await;
}

#[tokio::test]
async fn hold_through_body_keeps_the_lease_until_the_response_body_ends() {
    let _deadline = testkit::deadline();
    let m = manager("tower-through", 1).await;
    let streaming = |_: Request<RequestBody<Body>>| async {
        let (body, more) = gated_body();
        tokio::spawn(async move {
            tokio::time::sleep(SETTLE).await;
            let _ = more.send("end");
        });
        Ok::<_, Infallible>(Response::new(body))
    };
    // Default: released once the response is ready, while its body still streams.
    let svc = LeaseLayer::new(m.clone()).layer(service_fn(streaming));
    let r = svc.oneshot(get("/")).await.unwrap();
    leased(&m, 0).await;
    drop(r);
    // Asked: held until the body has ended.
    let svc = LeaseLayer::new(m.clone())
        .hold_through_body()
        .layer(service_fn(streaming));
    let r = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(m.stats().await.leased, 1, "held while the body streams");
    assert_eq!(text(r.into_body()).await, "first,end");
    leased(&m, 0).await;
    m.stop().await;
}

#[tokio::test]
async fn grpc_answers_overload_as_unavailable_with_a_pushback() {
    let _deadline = testkit::deadline();
    let m = manager("tower-grpc", 1).await;
    let held = m.acquire().await.unwrap();
    let svc = LeaseLayer::new(m.clone())
        .config(LeaseConfig::no_wait().retry_after(Duration::from_secs(2)))
        .grpc()
        .layer(service_fn(owner_of));
    let r = svc.oneshot(get("/pkg.Service/Method")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/grpc");
    assert_eq!(r.headers()["grpc-status"], "14");
    assert_eq!(r.headers()["grpc-retry-pushback-ms"], "2000");
    // What a tonic client makes of it.
    let status = tonic::Status::from_header_map(r.headers()).expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "unavailable");
    assert_eq!(text(r.into_body()).await, "");
    drop(held);
    m.stop().await;
}

#[tokio::test]
async fn an_estimated_retry_after_stays_in_its_range() {
    let _deadline = testkit::deadline();
    let m: LeaseManager = manager("tower-estimate", 1).await;
    // Give the estimate a basis: one lease held ~300 ms.
    let _ = m.estimated_wait();
    let l = m.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(l);
    let held = m.acquire().await.unwrap();
    let svc = LeaseLayer::new(m.clone())
        .config(
            LeaseConfig::no_wait()
                .retry_after_estimated(Duration::from_secs(2), Duration::from_secs(9)),
        )
        .layer(service_fn(owner_of));
    let r = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let secs: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2..=9).contains(&secs), "{secs}");
    drop(held);
    m.stop().await;
}

#[tokio::test]
async fn poll_ready_reserves_no_lease() {
    let _deadline = testkit::deadline();
    let m = manager("tower-ready", 1).await;
    let mut svc = LeaseLayer::new(m.clone()).layer(service_fn(owner_of));
    // Ready, and never called: nothing acquired, nothing held.
    tower::Service::<Request<Body>>::poll_ready(
        &mut svc,
        &mut std::task::Context::from_waker(std::task::Waker::noop()),
    )
    .map(|r| r.unwrap())
    .is_ready()
    .then_some(())
    .expect("a service_fn is always ready");
    drop(svc);
    tokio::time::sleep(SETTLE).await;
    let s = m.stats().await;
    assert_eq!((s.leased, s.counters.acquired), (0, 0));
    m.stop().await;
}

/// Waits (bounded) for the answer of a call.
async fn answered<F: std::future::Future>(call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("answered in time")
}

#[tokio::test]
async fn a_no_wait_request_is_shed_before_its_body_is_read_when_no_pool_is_free() {
    let _deadline = testkit::deadline();
    let m = manager("tower-shed-unread", 1).await;
    let held = m.acquire().await.unwrap();
    let svc = LeaseLayer::new(m.clone())
        .config(LeaseConfig::no_wait())
        .layer(service_fn(owner_of_any));
    // A body that never ends: only a refusal before reading can answer it.
    let (body, _more) = gated_body();
    let r = answered(svc.oneshot(Request::post("/").body(body).unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    drop(held);
    m.stop().await;
}

async fn owner_of_any<B>(req: Request<RequestBody<B>>) -> Result<Response<Body>, Infallible> {
    let lease = req
        .extensions()
        .get::<Leased>()
        .expect("the layer's lease")
        .clone();
    Ok(Response::new(Body::from(
        lease.owner().unwrap_or_default().to_owned(),
    )))
}

#[tokio::test]
async fn bodies_held_before_their_leases_stay_within_the_budget() {
    let _deadline = testkit::deadline();
    let m = manager("tower-budget", 2).await;
    let svc = LeaseLayer::new(m.clone())
        .body_budget(10)
        .layer(service_fn(owner_of_any));
    // The first body holds 6 of the 10 bytes while it is still arriving.
    let (slow, more) = gated_body();
    let first = tokio::spawn(svc.clone().oneshot(Request::post("/").body(slow).unwrap()));
    tokio::time::sleep(SETTLE).await;
    let (second, second_more) = gated_body();
    drop(second_more); // "first," (6 bytes) and the end: over what is left
    let r = answered(
        svc.clone()
            .oneshot(Request::post("/").body(second).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    drop(more);
    assert_eq!(
        answered(first).await.unwrap().unwrap().status(),
        StatusCode::OK
    );
    // Its bytes were given back: the same body fits again.
    let (third, third_more) = gated_body();
    drop(third_more);
    let r = answered(svc.oneshot(Request::post("/").body(third).unwrap())).await;
    assert_eq!(r.unwrap().status(), StatusCode::OK);
    m.stop().await;
}

#[tokio::test]
async fn a_body_slower_than_the_timeout_is_a_408_and_takes_no_lease() {
    let _deadline = testkit::deadline();
    let m = manager("tower-body-timeout", 1).await;
    let svc = LeaseLayer::new(m.clone())
        .body_timeout(Duration::from_millis(200))
        .layer(service_fn(owner_of_any));
    let (body, _more) = gated_body();
    let r = answered(svc.oneshot(Request::post("/").body(body).unwrap())).await;
    assert_eq!(r.unwrap().status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(m.stats().await.counters.acquired, 0);
    m.stop().await;
}

#[tokio::test]
async fn a_body_that_fails_is_a_400_and_takes_no_lease() {
    let _deadline = testkit::deadline();
    let m = manager("tower-body-fails", 1).await;
    let svc = LeaseLayer::new(m.clone()).layer(service_fn(owner_of_any));
    let frames = futures_util::stream::iter([
        Ok(http_body::Frame::data(Bytes::from_static(b"part"))),
        Err(std::io::Error::other("the client went away")),
    ]);
    let req = Request::post("/").body(StreamBody::new(frames)).unwrap();
    let r = answered(svc.oneshot(req)).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(m.stats().await.counters.acquired, 0);
    m.stop().await;
}

/// An inner service whose clones start not ready: calling one that was not driven ready fails.
#[derive(Default)]
struct ReadyOnce {
    ready: bool,
}

impl Clone for ReadyOnce {
    fn clone(&self) -> Self {
        Self { ready: false }
    }
}

impl<B> tower::Service<Request<B>> for ReadyOnce {
    type Response = Response<Body>;
    type Error = &'static str;
    type Future = std::future::Ready<Result<Response<Body>, &'static str>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        std::future::ready(if std::mem::take(&mut self.ready) {
            Ok(Response::new(Body::from("ok")))
        } else {
            Err("called without being ready")
        })
    }
}

#[tokio::test]
async fn the_call_uses_the_inner_instance_that_was_driven_ready() {
    let _deadline = testkit::deadline();
    let m = manager("tower-ready-once", 1).await;
    let svc = LeaseLayer::new(m.clone()).layer(ReadyOnce::default());
    for _ in 0..3 {
        let r = answered(svc.clone().oneshot(get("/"))).await;
        assert_eq!(
            r.expect("the ready instance was called").status(),
            StatusCode::OK
        );
    }
    m.stop().await;
}

#[tokio::test]
async fn a_request_cancelled_while_it_waits_for_a_lease_leaves_the_queue() {
    let _deadline = testkit::deadline();
    let m = manager("tower-cancel-wait", 1).await;
    let held = m.acquire().await.unwrap();
    let svc = LeaseLayer::new(m.clone())
        .config(LeaseConfig::timeout(Duration::from_secs(60)))
        .layer(service_fn(owner_of));
    let call = tokio::spawn(svc.oneshot(get("/")));
    testkit::stats_until(&m, "one waiter", |s| s.waiting == 1).await;
    call.abort();
    testkit::stats_until(&m, "no waiter", |s| s.waiting == 0).await;
    drop(held);
    leased(&m, 0).await;
    m.stop().await;
}

#[tokio::test]
async fn hold_through_body_releases_when_the_response_body_is_dropped_unread() {
    let _deadline = testkit::deadline();
    let m = manager("tower-through-drop", 1).await;
    let svc = LeaseLayer::new(m.clone())
        .hold_through_body()
        .layer(service_fn(|_: Request<RequestBody<Body>>| async {
            let (body, more) = gated_body();
            std::mem::forget(more); // never ends by itself
            Ok::<_, Infallible>(Response::new(body))
        }));
    let r = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(m.stats().await.leased, 1);
    drop(r); // the client went away mid-body
    leased(&m, 0).await;
    m.stop().await;
}
