//! The axum twin of `actix_web_service`: a blocking "vendor SDK" call per request through a
//! lease (a `LeaseLayer` on the route), 503 + Retry-After when overloaded instead of an unbounded
//! `spawn_blocking` queue, `/stats` (JSON) and `/metrics` (leasepool's metrics through the
//! `metrics` facade, exported by `metrics-exporter-prometheus`).
//!
//! The manager is started before serving and stopped after the server returns; SIGTERM or
//! Ctrl-C stops accepting and lets in-flight requests finish (axum's graceful shutdown).
//!
//! Run: `cargo run --release --example axum_service --features tower,serde,metrics`, then
//! `curl localhost:8081/devices/1/status` and `curl localhost:8081/metrics`.
//! (`LEASEPOOL_ADDR` sets the address, default 127.0.0.1:8081; `LEASEPOOL_SERVE_SECS=N` stops it
//! after N seconds, as CI does.)

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use leasepool::tower::{LeaseConfig, LeaseLayer, Leased};
use leasepool::{LeaseError, LeaseManager};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The blocking vendor SDK call this service wraps.
fn read_device_status(id: u32) -> String {
    std::thread::sleep(Duration::from_millis(200));
    format!(r#"{{"device":{id},"status":"online"}}"#)
}

async fn device_status(
    lease: Leased,
    Path(id): Path<u32>,
) -> Result<impl IntoResponse, LeaseError> {
    let body = lease.run(move || read_device_status(id)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body))
}

async fn stats(State(app): State<App>) -> impl IntoResponse {
    Json(app.manager.stats().await)
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.prometheus.render(),
    )
}

#[derive(Clone)]
struct App {
    manager: LeaseManager,
    prometheus: PrometheusHandle,
}

/// The exporter, installed as the global recorder before the manager is built (a manager
/// registers its metrics when it is built); `_seconds` histograms get buckets from 1 ms to 30 s.
fn install_prometheus() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    const BUCKETS: [f64; 13] = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)?
        .install_recorder()?)
}

async fn shutdown_signal() {
    let serve_secs = std::env::var("LEASEPOOL_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let timer = async {
        match serve_secs {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = timer => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = install_prometheus()?;
    let manager = LeaseManager::builder()
        .max_pools(4)
        .workers_per_pool(2)
        .max_waiters(64) // bounded queue: beyond it, 503 at once
        .name_prefix("svc")
        .build()?;
    manager.start().await?;
    // The exporter's housekeeping (it drains histogram samples into their buckets).
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    // Shed requests are told when a pool should be free (computed from recent hold times, the
    // waiters ahead and the pools; 1 s while there is no basis yet).
    let leases = LeaseLayer::new(manager.clone()).config(
        LeaseConfig::timeout(Duration::from_millis(500))
            .retry_after_estimated(Duration::from_secs(1), Duration::from_secs(30)),
    );
    let app = Router::new()
        .route("/devices/{id}/status", get(device_status).layer(leases))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .with_state(App {
            manager: manager.clone(),
            prometheus,
        });
    let addr = std::env::var("LEASEPOOL_ADDR").unwrap_or_else(|_| "127.0.0.1:8081".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    manager.stop().await;
    println!("stopped cleanly");
    Ok(())
}
