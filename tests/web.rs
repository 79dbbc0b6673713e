//! actix-web integration: error mapping, the `Leased` extractor under overload, releases,
//! and a real `HttpServer` on 127.0.0.1 with a real HTTP client, including graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{test, web, App, HttpResponse, HttpServer, ResponseError};
use leasepool::web::{LeaseConfig, Leased};
use leasepool::{LeaseError, LeaseManager};

async fn slow(lease: Leased, ms: web::Path<u64>) -> Result<HttpResponse, LeaseError> {
    let ms = ms.into_inner();
    let owner = lease.owner().unwrap_or_default().to_owned();
    lease
        .run(move || std::thread::sleep(Duration::from_millis(ms)))
        .await?;
    Ok(HttpResponse::Ok().body(owner))
}

async fn boom(lease: Leased) -> Result<HttpResponse, LeaseError> {
    lease.run(|| panic!("secret internal detail")).await?;
    Ok(HttpResponse::Ok().finish())
}

fn one_pool(prefix: &str) -> LeaseManager {
    LeaseManager::builder()
        .max_pools(1)
        .workers_per_pool(1)
        .name_prefix(prefix)
        .build()
        .unwrap()
}

#[actix_web::test]
async fn errors_map_to_503_with_retry_after_or_500_with_a_small_json_body() {
    let _deadline = common::deadline();
    leasepool::web::set_retry_after(Duration::from_secs(1));
    for (err, status) in [
        (LeaseError::Unavailable, 503),
        (LeaseError::Timeout(Duration::from_millis(5)), 503),
        (LeaseError::NotStarted, 503),
        (LeaseError::Stopped, 503),
        (LeaseError::Expired, 500),
        (LeaseError::Released, 500),
        (LeaseError::WorkerLost, 500),
        (
            LeaseError::Panicked("secret internal detail".to_owned()),
            500,
        ),
    ] {
        let resp = err.error_response();
        assert_eq!(resp.status().as_u16(), status, "{err:?}");
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(retry.as_deref(), (status == 503).then_some("1"), "{err:?}");
        let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], err.code());
        assert!(
            !String::from_utf8_lossy(&body).contains("secret"),
            "internals leaked: {body:?}"
        );
    }
}

#[actix_web::test]
async fn overload_gives_503_at_once_for_no_wait_and_after_the_timeout_otherwise() {
    let _deadline = common::deadline();
    let manager = one_pool("web-overload");
    manager.start().await.unwrap();
    let app = |config: LeaseConfig| {
        App::new()
            .app_data(web::Data::new(manager.clone()))
            .app_data(config)
            .route("/slow/{ms}", web::get().to(slow))
    };
    let held = manager.acquire().await.unwrap();

    let svc = test::init_service(app(LeaseConfig::no_wait())).await;
    let begun = Instant::now();
    let resp = test::call_service(&svc, test::TestRequest::get().uri("/slow/1").to_request()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    assert!(
        begun.elapsed() < Duration::from_secs(2),
        "no_wait must answer at once"
    );

    let svc = test::init_service(app(LeaseConfig::timeout(Duration::from_millis(300)))).await;
    let begun = Instant::now();
    let resp = test::call_service(&svc, test::TestRequest::get().uri("/slow/1").to_request()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = test::read_body(resp).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"],
        "timeout"
    );
    assert!(
        begun.elapsed() >= Duration::from_millis(300),
        "answered before the timeout"
    );

    drop(held);
    let resp = test::call_service(&svc, test::TestRequest::get().uri("/slow/1").to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        test::read_body(resp).await,
        "GET /slow/{ms}",
        "owner = method + matched route"
    );
    manager.stop().await;
}

#[actix_web::test]
async fn the_extractor_releases_its_lease_when_the_handler_ends_even_on_errors() {
    let _deadline = common::deadline();
    let manager = LeaseManager::builder()
        .max_pools(2)
        .workers_per_pool(1)
        .name_prefix("web-rel")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let svc = test::init_service(
        App::new()
            .app_data(web::Data::new(manager.clone()))
            .route("/slow/{ms}", web::get().to(slow))
            .route("/boom", web::get().to(boom)),
    )
    .await;
    for _ in 0..5 {
        let resp =
            test::call_service(&svc, test::TestRequest::get().uri("/slow/5").to_request()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp =
            test::call_service(&svc, test::TestRequest::get().uri("/boom").to_request()).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!String::from_utf8_lossy(&test::read_body(resp).await).contains("secret"));
    }
    let stats = common::stats_until(&manager, "every lease released", |s| s.leased == 0).await;
    assert_eq!(stats.counters.acquired, 10);
    assert_eq!(stats.counters.jobs_panicked, 5);
    manager.stop().await;
}

#[actix_web::test]
async fn a_missing_manager_is_a_503_not_a_panic() {
    let _deadline = common::deadline();
    let svc = test::init_service(App::new().route("/slow/{ms}", web::get().to(slow))).await;
    let resp = test::call_service(&svc, test::TestRequest::get().uri("/slow/1").to_request()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[actix_web::test]
async fn a_real_server_serves_sheds_load_and_shuts_down_gracefully() {
    let _deadline = common::deadline();
    let manager = one_pool("web-real");
    manager.start().await.unwrap();
    let data = web::Data::new(manager.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(LeaseConfig::timeout(Duration::from_millis(200)))
            .route("/slow/{ms}", web::get().to(slow))
    })
    .workers(1)
    .shutdown_timeout(10)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(20))
        .finish();
    let url = |ms: u64| format!("http://{addr}/slow/{ms}");

    let resp = client.get(url(10)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The extractor's lease is released by drop (asynchronously): wait for it.
    common::stats_until(&manager, "first lease released", |s| s.leased == 0).await;

    // One request holds the only pool for 1.5 s; another waits 200 ms and is shed with 503.
    let long = actix_web::rt::spawn({
        let client = client.clone();
        let u = url(1_500);
        async move { client.get(u).send().await.map(|r| r.status()) }
    });
    common::stats_until(&manager, "long request leased", |s| s.leased == 1).await;
    let shed = client.get(url(10)).send().await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers().get(header::RETRY_AFTER).unwrap(), "1");

    // Graceful shutdown while the long request is in flight: it still completes with 200.
    handle.stop(true).await;
    assert_eq!(long.await.unwrap().unwrap(), StatusCode::OK);
    running.await.unwrap().unwrap();
    manager.stop().await;
    assert!(
        client.get(url(1)).send().await.is_err(),
        "the server is gone"
    );
}

#[actix_web::test]
async fn requests_waiting_for_a_lease_get_503_when_the_manager_stops() {
    let _deadline = common::deadline();
    let manager = one_pool("web-stop");
    manager.start().await.unwrap();
    let svc = test::init_service(
        App::new()
            .app_data(web::Data::new(manager.clone()))
            .app_data(LeaseConfig::timeout(Duration::from_secs(30)))
            .route("/slow/{ms}", web::get().to(slow)),
    )
    .await;
    let held = manager.acquire().await.unwrap();
    let waiting = test::call_service(&svc, test::TestRequest::get().uri("/slow/1").to_request());
    let stopper = async {
        common::stats_until(&manager, "a waiting request", |s| s.waiting == 1).await;
        manager.stop().await;
    };
    let (resp, ()) = futures_util::join!(waiting, stopper);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    let body = test::read_body(resp).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"],
        "stopped"
    );
    drop(held);
}
