//! An actix-web service that runs a blocking "vendor SDK" call per request through a lease,
//! answers 503 + Retry-After when overloaded (instead of queueing without bound), and exposes
//! `/stats` (JSON) and `/metrics` (leasepool's metrics through the `metrics` facade, exported
//! by `metrics-exporter-prometheus`: acquire waits, give-ups, jobs, replacements, pools).
//!
//! The manager is started before `HttpServer::run` and stopped after it returns. On SIGTERM (what
//! `kill`, systemd and Kubernetes send) the server stops accepting, lets in-flight requests
//! finish (`shutdown_timeout`), then the manager stops and joins its threads. Ctrl-C (SIGINT) is
//! a *forced* shutdown in actix-web: in-flight requests are dropped — send SIGTERM
//! (`kill <pid>`) to see the graceful path.
//!
//! Run: `cargo run --release --example actix_web_service --features web,serde,metrics`, then
//! `curl localhost:8080/devices/1/status` and `curl localhost:8080/metrics`.
//! (`LEASEPOOL_ADDR` sets the address, default 127.0.0.1:8080; `LEASEPOOL_SERVE_SECS=N` stops it
//! after N seconds, as CI does.)

use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use leasepool::web::{LeaseConfig, Leased};
use leasepool::{LeaseError, LeaseManager};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The blocking vendor SDK call this service wraps.
fn read_device_status(id: u32) -> String {
    std::thread::sleep(Duration::from_millis(200));
    format!(r#"{{"device":{id},"status":"online"}}"#)
}

async fn device_status(lease: Leased, path: web::Path<u32>) -> Result<HttpResponse, LeaseError> {
    let id = path.into_inner();
    let body = lease.run(move || read_device_status(id)).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

async fn stats(manager: web::Data<LeaseManager>) -> HttpResponse {
    HttpResponse::Ok().json(manager.stats().await)
}

/// The Prometheus text exposition of everything recorded through the `metrics` facade:
/// leasepool's metrics (docs/observability.md), and any of the application's own.
async fn metrics(prometheus: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(prometheus.render())
}

/// The exporter, installed as the global recorder — before any manager is built: a manager
/// registers its metrics when it is built. Every `_seconds` metric is a histogram with these
/// buckets (from 1 ms to 30 s), so PromQL's `histogram_quantile` works across instances.
fn install_prometheus() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    const BUCKETS: [f64; 13] = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)?
        .install_recorder()?;
    Ok(handle)
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = install_prometheus()?;
    let manager = LeaseManager::builder()
        .max_pools(4)
        .workers_per_pool(2)
        .max_waiters(64) // bounded queue: beyond it, 503 at once
        .name_prefix("svc")
        .build()?;
    manager.start().await?;
    leasepool::web::set_retry_after(Duration::from_secs(1));

    let data = web::Data::new(manager.clone());
    let metrics_data = web::Data::new(prometheus.clone());
    // The exporter's housekeeping (it drains histogram samples into their buckets).
    actix_web::rt::spawn(async move {
        loop {
            actix_web::rt::time::sleep(Duration::from_secs(5)).await;
            prometheus.run_upkeep();
        }
    });
    let addr = std::env::var("LEASEPOOL_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(metrics_data.clone())
            // Shed requests are told when a pool should be free (computed from recent hold
            // times, the waiters ahead and the pools; 1 s while there is no basis yet).
            .app_data(
                LeaseConfig::timeout(Duration::from_millis(500))
                    .retry_after_estimated(Duration::from_secs(1), Duration::from_secs(30)),
            )
            .route("/devices/{id}/status", web::get().to(device_status))
            .route("/stats", web::get().to(stats))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(2)
    .shutdown_timeout(10)
    .bind(&addr)?;
    for a in server.addrs() {
        println!("listening on http://{a}");
    }
    let server = server.run();
    if let Some(secs) = std::env::var("LEASEPOOL_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            actix_web::rt::time::sleep(Duration::from_secs(secs)).await;
            handle.stop(true).await;
        });
    }
    server.await?;
    manager.stop().await;
    println!("stopped cleanly");
    Ok(())
}
