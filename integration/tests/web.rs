//! actix-web integration: error mapping, the `Leased` extractor under overload, releases,
//! and a real `HttpServer` on 127.0.0.1 with a real HTTP client, including graceful shutdown.

use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{test, web, App, HttpResponse, HttpServer, ResponseError};
use leasepool::web::{DuplicateManager, LeaseConfig, Leased, LeasedAfter, LeasedError, Managers};
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
    let _deadline = testkit::deadline();
    leasepool::web::set_retry_after(Duration::from_secs(1));
    for (err, status) in [
        (LeaseError::Unavailable, 503),
        (LeaseError::Timeout(Duration::from_millis(5)), 503),
        (LeaseError::NotStarted, 503),
        (LeaseError::Stopped, 503),
        (LeaseError::Expired, 500),
        (LeaseError::Released, 500),
        (LeaseError::WorkerLost, 500),
        // Never started: safe to retry, so "come back later".
        (LeaseError::NeverRan, 503),
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
    let _deadline = testkit::deadline();
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
    let _deadline = testkit::deadline();
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
    let stats = testkit::stats_until(&manager, "every lease released", |s| s.leased == 0).await;
    assert_eq!(stats.counters.acquired, 10);
    assert_eq!(stats.counters.jobs_panicked, 5);
    manager.stop().await;
}

struct Db;

async fn with_db(lease: Leased<Db>) -> HttpResponse {
    HttpResponse::Ok().body(lease.owner().unwrap_or_default().to_owned())
}

#[actix_web::test]
async fn a_missing_manager_is_a_500_naming_the_manager_type_not_an_overload() {
    let _deadline = testkit::deadline();
    // A LeaseManager<()> is registered, but the route wants a LeaseManager<Db>.
    let manager = one_pool("web-missing");
    let svc = test::init_service(
        App::new()
            .app_data(web::Data::new(manager))
            .route("/db", web::get().to(with_db)),
    )
    .await;
    let resp = test::call_service(&svc, test::TestRequest::get().uri("/db").to_request()).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!resp.headers().contains_key(header::RETRY_AFTER));
    let body = test::read_body(resp).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"],
        "misconfigured"
    );
    let req = test::TestRequest::get().to_http_request();
    let err = <Leased<Db> as actix_web::FromRequest>::extract(&req)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("LeaseManager<web::Db>"),
        "the error names the missing manager type: {err}"
    );
}

/// Answers the name of the worker thread that ran its job: which manager served the request.
async fn whose(lease: Leased) -> Result<HttpResponse, LeaseError> {
    let thread = lease
        .run(|| std::thread::current().name().unwrap_or_default().to_owned())
        .await?;
    Ok(HttpResponse::Ok().body(thread))
}

/// `GET uri` on a test service: the status and the body.
macro_rules! call {
    ($svc:expr, $uri:expr) => {{
        let resp = test::call_service($svc, test::TestRequest::get().uri($uri).to_request()).await;
        let status = resp.status();
        let body = test::read_body(resp).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }};
}

#[actix_web::test]
async fn two_managers_of_one_type_serve_the_routes_that_name_them() {
    let _deadline = testkit::deadline();
    let threads = one_pool("web-threads");
    let sandbox = one_pool("web-sandbox");
    threads.start().await.unwrap();
    sandbox.start().await.unwrap();
    let managers = Managers::new()
        .with(threads.clone())
        .unwrap()
        .with(sandbox.clone())
        .unwrap();
    assert_eq!(
        managers.clone().with(one_pool("web-threads")).unwrap_err(),
        DuplicateManager {
            name: "web-threads".into()
        },
        "two managers of one name are refused when the registry is built"
    );
    let wait = LeaseConfig::timeout(Duration::from_secs(5));
    let svc = test::init_service(
        App::new()
            .app_data(web::Data::new(managers))
            .service(
                web::scope("/threads")
                    .app_data(wait.clone().manager("web-threads"))
                    .route("", web::get().to(whose)),
            )
            .service(
                web::scope("/sandbox")
                    .app_data(wait.clone().manager("web-sandbox"))
                    .route("", web::get().to(whose)),
            )
            .service(
                web::scope("/typo")
                    .app_data(wait.manager("web-sandbx"))
                    .route("", web::get().to(whose)),
            )
            .route("/unnamed", web::get().to(whose)),
    )
    .await;
    for _ in 0..3 {
        let (status, thread) = call!(&svc, "/threads");
        assert_eq!(status, StatusCode::OK);
        assert!(thread.starts_with("web-threads-"), "{thread}");
        let (status, thread) = call!(&svc, "/sandbox");
        assert_eq!(status, StatusCode::OK);
        assert!(thread.starts_with("web-sandbox-"), "{thread}");
    }
    // A name that is not there, or no name among two: a 500, never either manager.
    for uri in ["/typo", "/unnamed"] {
        let (status, body) = call!(&svc, uri);
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        assert_eq!(body, r#"{"error":"misconfigured"}"#, "{uri}");
    }
    let acquired = |s: leasepool::Stats| s.counters.acquired;
    assert_eq!(acquired(threads.stats().await), 3);
    assert_eq!(acquired(sandbox.stats().await), 3);
    threads.stop().await;
    sandbox.stop().await;
}

#[actix_web::test]
async fn a_route_whose_manager_was_swapped_out_answers_500_naming_both() {
    let _deadline = testkit::deadline();
    // The mistake the registry prevents: two managers of one type registered directly. actix
    // keeps the last; a route that names its manager notices instead of running elsewhere.
    let sandbox = one_pool("web-swap-sandbox");
    let threads = one_pool("web-swap-threads");
    threads.start().await.unwrap();
    let svc = test::init_service(
        App::new()
            .app_data(web::Data::new(sandbox))
            .app_data(web::Data::new(threads.clone()))
            .service(
                web::scope("/convert")
                    .app_data(LeaseConfig::no_wait().manager("web-swap-sandbox"))
                    .route("", web::get().to(whose)),
            ),
    )
    .await;
    let (status, body) = call!(&svc, "/convert");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, r#"{"error":"misconfigured"}"#);
    assert_eq!(
        threads.stats().await.counters.acquired,
        0,
        "nothing ran on the other manager"
    );
    let req = test::TestRequest::get()
        .app_data(web::Data::new(threads.clone()))
        .app_data(LeaseConfig::no_wait().manager("web-swap-sandbox"))
        .to_http_request();
    let err = <Leased as actix_web::FromRequest>::extract(&req)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LeasedError::WrongManager { wanted, available, .. }
            if wanted == "web-swap-sandbox" && available == &["web-swap-threads".to_owned()]),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("\"web-swap-sandbox\"") && text.contains("web-swap-threads"),
        "{text}"
    );
    threads.stop().await;
}

/// Every place a manager can be in `app_data` counts: `web::Data` and plain, and a registry in
/// either. (Before, a `web::Data` manager hid a plain one and a plain registry hid nothing
/// when a `web::Data` one was there: a route could run on a manager other than the one meant.)
#[actix_web::test]
async fn every_manager_in_app_data_counts_and_one_seen_twice_counts_once() {
    let _deadline = testkit::deadline();
    let a = one_pool("web-all-a");
    let b = one_pool("web-all-b");
    let a_again = one_pool("web-all-a"); // another manager of the same name
    let extract = |req: actix_web::HttpRequest| async move {
        <Leased as actix_web::FromRequest>::extract(&req)
            .await
            .map(|_| ())
    };
    let ambiguous =
        |r: &Result<(), LeasedError>| matches!(r, Err(LeasedError::AmbiguousManager { .. }));
    // Data and plain, distinct: an unnamed route cannot choose.
    let req = test::TestRequest::get()
        .app_data(web::Data::new(a.clone()))
        .app_data(b.clone())
        .to_http_request();
    assert!(ambiguous(&extract(req).await));
    // A plain registry beside a Data manager: the registry's managers count too.
    let req = test::TestRequest::get()
        .app_data(web::Data::new(a.clone()))
        .app_data(Managers::new().with(b.clone()).unwrap())
        .app_data(LeaseConfig::no_wait().manager("web-all-b"))
        .to_http_request();
    assert!(
        matches!(
            extract(req).await,
            Err(LeasedError::Acquire {
                error: LeaseError::NotStarted,
                ..
            })
        ),
        "the registry's b was picked (it is not started)"
    );
    // Two distinct managers of the name a route wants: ambiguous, whatever their places.
    let req = test::TestRequest::get()
        .app_data(web::Data::new(a.clone()))
        .app_data(Managers::new().with(a_again.clone()).unwrap())
        .app_data(LeaseConfig::no_wait().manager("web-all-a"))
        .to_http_request();
    assert!(ambiguous(&extract(req).await));
    // The same manager in several places is one manager.
    a.start().await.unwrap();
    let req = test::TestRequest::get()
        .app_data(web::Data::new(a.clone()))
        .app_data(a.clone())
        .app_data(web::Data::new(Managers::new().with(a.clone()).unwrap()))
        .to_http_request();
    assert_eq!(extract(req).await, Ok(()));
    assert_eq!(a.stats().await.counters.acquired, 1);
    a.stop().await;
}

/// A `LeaseConfig` both plain and in `web::Data`: the same is fine, two different ones a 500
/// naming both (before, the plain one won silently).
#[actix_web::test]
async fn two_different_lease_configs_in_app_data_are_a_500() {
    let _deadline = testkit::deadline();
    let m = one_pool("web-conf");
    m.start().await.unwrap();
    let extract = |req: actix_web::HttpRequest| async move {
        <Leased as actix_web::FromRequest>::extract(&req)
            .await
            .map(|_| ())
    };
    let same = LeaseConfig::no_wait().retry_after(Duration::from_secs(3));
    let req = test::TestRequest::get()
        .app_data(web::Data::new(m.clone()))
        .app_data(same.clone())
        .app_data(web::Data::new(same.clone()))
        .to_http_request();
    assert_eq!(extract(req).await, Ok(()));
    let req = test::TestRequest::get()
        .app_data(web::Data::new(m.clone()))
        .app_data(same.clone())
        .app_data(web::Data::new(LeaseConfig::timeout(Duration::from_secs(9))))
        .to_http_request();
    let err = extract(req).await.unwrap_err();
    assert!(
        matches!(err, LeasedError::ConflictingConfig { .. }),
        "{err:?}"
    );
    assert_eq!(
        actix_web::ResponseError::status_code(&err),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let text = err.to_string();
    assert!(text.contains("NoWait") && text.contains("9s"), "{text}");
    assert_eq!(
        m.stats().await.counters.acquired,
        1,
        "the conflict acquired nothing"
    );
    m.stop().await;
}

#[actix_web::test]
async fn each_route_can_carry_its_own_retry_after_hint() {
    let _deadline = testkit::deadline();
    leasepool::web::set_retry_after(Duration::from_secs(1));
    let manager = one_pool("web-hint");
    manager.start().await.unwrap();
    let svc = test::init_service(
        App::new()
            .app_data(web::Data::new(manager.clone()))
            .service(
                web::scope("/fast")
                    .app_data(LeaseConfig::no_wait().retry_after(Duration::from_secs(7)))
                    .route("/{ms}", web::get().to(slow)),
            )
            .service(
                web::scope("/plain")
                    .app_data(LeaseConfig::no_wait())
                    .route("/{ms}", web::get().to(slow)),
            ),
    )
    .await;
    let held = manager.acquire().await.unwrap();
    for (uri, hint) in [("/fast/1", "7"), ("/plain/1", "1")] {
        let resp = test::call_service(&svc, test::TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(
            resp.headers().get(header::RETRY_AFTER).unwrap(),
            hint,
            "{uri}"
        );
        let body = test::read_body(resp).await;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["retry_after"].to_string(), hint, "{uri}");
    }
    held.release().await;
    manager.stop().await;
}

#[actix_web::test]
async fn a_route_can_send_a_retry_after_computed_from_the_pools() {
    let _deadline = testkit::deadline();
    let manager = one_pool("web-estimate");
    manager.start().await.unwrap();
    let config = LeaseConfig::no_wait()
        .retry_after(Duration::from_secs(7))
        .retry_after_estimated(Duration::from_secs(1), Duration::from_secs(30));
    let svc = test::init_service(
        App::new()
            .app_data(web::Data::new(manager.clone()))
            .service(
                web::scope("/est")
                    .app_data(config)
                    .route("/{ms}", web::get().to(slow)),
            ),
    )
    .await;
    let hint = |resp: &actix_web::dev::ServiceResponse| {
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        resp.headers()
            .get(header::RETRY_AFTER)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    // Hold times are measured from the first estimate on.
    assert_eq!(manager.estimated_wait(), None);
    let held = manager.acquire().await.unwrap();
    // No lease has ended yet: no basis, the fixed hint.
    let resp = test::call_service(&svc, test::TestRequest::get().uri("/est/1").to_request()).await;
    assert_eq!(hint(&resp), "7");
    // Leases here are held 2.2 s: a request shed just after one began is told to come back
    // when it should end (2.2 s, rounded up; 2 if this machine took over 200 ms between).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    held.release().await;
    let held = manager.acquire().await.unwrap();
    let resp = test::call_service(&svc, test::TestRequest::get().uri("/est/1").to_request()).await;
    let computed = hint(&resp);
    assert!(computed == "3" || computed == "2", "{computed}");
    let body = test::read_body(resp).await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["retry_after"].to_string(), computed);
    held.release().await;
    manager.stop().await;
}

async fn import_after(
    LeasedAfter(body, lease): LeasedAfter<web::Bytes>,
) -> actix_web::Result<HttpResponse> {
    let n = lease.run(move || body.len()).await?;
    Ok(HttpResponse::Ok().body(n.to_string()))
}

async fn import_naive(body: web::Bytes, lease: Leased) -> actix_web::Result<HttpResponse> {
    let n = lease.run(move || body.len()).await?;
    Ok(HttpResponse::Ok().body(n.to_string()))
}

/// Sends a 6 000-byte body to `path` in 12 slices, 60 ms apart, signalling after the 6th; returns
/// the status line of the answer.
fn slow_upload(
    addr: std::net::SocketAddr,
    path: &str,
    halfway: std::sync::mpsc::Sender<()>,
) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: 6000\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    for slice in 0..12 {
        stream.write_all(&[b'x'; 500]).unwrap();
        stream.flush().unwrap();
        if slice == 5 {
            halfway.send(()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

#[actix_web::test]
async fn leased_after_takes_no_pool_while_a_slow_client_uploads_its_body() {
    let _deadline = testkit::deadline();
    let manager = one_pool("web-body");
    manager.start().await.unwrap();
    let data = web::Data::new(manager.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/after", web::post().to(import_after))
            .route("/naive", web::post().to(import_naive))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);

    for (path, leased_while_uploading) in [("/after", 0), ("/naive", 1)] {
        let (halfway_tx, halfway_rx) = std::sync::mpsc::channel();
        let client = std::thread::spawn(move || slow_upload(addr, path, halfway_tx));
        let halfway =
            tokio::task::spawn_blocking(move || halfway_rx.recv_timeout(Duration::from_secs(30)));
        halfway.await.unwrap().expect("the upload got halfway");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            manager.stats().await.leased,
            leased_while_uploading,
            "{path}: pools leased while the body is still uploading"
        );
        let status = tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        assert!(status.contains("200"), "{path}: {status}");
        testkit::stats_until(&manager, "the request's lease released", |s| s.leased == 0).await;
    }
    handle.stop(true).await;
    running.await.unwrap().unwrap();
    manager.stop().await;
}

#[actix_web::test]
async fn a_real_server_serves_sheds_load_and_shuts_down_gracefully() {
    let _deadline = testkit::deadline();
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
    // The handler's lease was dropped when the handler ended, before the response went out:
    // its pool is free already (dropping a lease returns an idle pool at once).
    assert_eq!(manager.stats().await.leased, 0);

    // One request holds the only pool for 1.5 s; another waits 200 ms and is shed with 503.
    let long = actix_web::rt::spawn({
        let client = client.clone();
        let u = url(1_500);
        async move { client.get(u).send().await.map(|r| r.status()) }
    });
    testkit::stats_until(&manager, "long request leased", |s| s.leased == 1).await;
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
    let _deadline = testkit::deadline();
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
        testkit::stats_until(&manager, "a waiting request", |s| s.waiting == 1).await;
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

/// `Stats` as a `/stats` endpoint serves it: every counter under its own name, the deprecated
/// aliases (`workers_restarted`, `pools_restarted`) left out.
#[actix_web::test]
async fn the_stats_json_has_every_counter_and_no_deprecated_alias() {
    let _deadline = testkit::deadline();
    let manager = one_pool("web-stats-json");
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    lease.run(|| ()).await.unwrap();
    drop(lease);
    let json = serde_json::to_value(manager.stats().await).unwrap();
    let counters = json["counters"].as_object().unwrap();
    for name in [
        "jobs_completed",
        "jobs_panicked",
        "jobs_failed",
        "jobs_lost",
        "worker_states_rebuilt",
        "children_started",
        "children_crashed",
        "children_killed",
        "children_over_memory",
        "children_recycled",
    ] {
        assert!(counters.contains_key(name), "{name} missing: {counters:?}");
    }
    for alias in ["workers_restarted", "pools_restarted"] {
        assert!(!counters.contains_key(alias), "{alias} serialized");
    }
    assert_eq!(counters["jobs_completed"], 1);
    manager.stop().await;
}
