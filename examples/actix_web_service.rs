//! An actix-web service that runs a blocking "vendor SDK" call per request through a lease,
//! answers 503 + Retry-After when overloaded (instead of queueing without bound), and exposes
//! `/stats` (JSON) and `/metrics` (Prometheus text exposition, via the `prometheus-client` crate).
//!
//! The manager is started before `HttpServer::run` and stopped after it returns. On SIGTERM (what
//! `kill`, systemd and Kubernetes send) the server stops accepting, lets in-flight requests
//! finish (`shutdown_timeout`), then the manager stops and joins its threads. Ctrl-C (SIGINT) is
//! a *forced* shutdown in actix-web: in-flight requests are dropped — send SIGTERM
//! (`kill <pid>`) to see the graceful path.
//!
//! Run: `cargo run --release --example actix_web_service --features web,serde`
//! (`LEASEPOOL_ADDR` sets the address, default 127.0.0.1:8080; `LEASEPOOL_SERVE_SECS=N` stops it
//! after N seconds, as CI does.)

use std::sync::Mutex;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use leasepool::web::{LeaseConfig, Leased};
use leasepool::{Counters, LeaseError, LeaseManager};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// Prometheus metrics, refreshed from `stats()` at each scrape.
struct Metrics {
    registry: Registry,
    available: Gauge,
    leased: Gauge,
    total: Gauge,
    waiting: Gauge,
    acquired: Counter,
    rejected: Counter,
    timed_out: Counter,
    jobs_completed: Counter,
    jobs_panicked: Counter,
    seen: Mutex<Counters>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("leasepool");
        let m = Metrics {
            registry: Registry::default(),
            available: Gauge::default(),
            leased: Gauge::default(),
            total: Gauge::default(),
            waiting: Gauge::default(),
            acquired: Counter::default(),
            rejected: Counter::default(),
            timed_out: Counter::default(),
            jobs_completed: Counter::default(),
            jobs_panicked: Counter::default(),
            seen: Mutex::new(Counters::default()),
        };
        registry.register("pools_available", "Idle pools", m.available.clone());
        registry.register("pools_leased", "Pools held by a lease", m.leased.clone());
        registry.register("pools_total", "Pools in service", m.total.clone());
        registry.register("waiters", "Acquirers queued for a pool", m.waiting.clone());
        registry.register("leases_acquired", "Leases handed out", m.acquired.clone());
        registry.register(
            "acquires_rejected",
            "Acquires refused (503)",
            m.rejected.clone(),
        );
        registry.register(
            "acquires_timed_out",
            "Acquires that timed out (503)",
            m.timed_out.clone(),
        );
        registry.register(
            "jobs_completed",
            "Jobs that delivered a value",
            m.jobs_completed.clone(),
        );
        registry.register(
            "jobs_panicked",
            "Jobs that panicked",
            m.jobs_panicked.clone(),
        );
        Metrics { registry, ..m }
    }

    async fn render(&self, manager: &LeaseManager) -> Result<String, std::fmt::Error> {
        let s = manager.stats().await;
        let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.available.set(as_gauge(s.available));
        self.leased.set(as_gauge(s.leased));
        self.total.set(as_gauge(s.total));
        self.waiting.set(as_gauge(s.waiting));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let c = s.counters;
            self.acquired
                .inc_by(c.acquired.saturating_sub(seen.acquired));
            self.rejected
                .inc_by(c.rejected.saturating_sub(seen.rejected));
            self.timed_out
                .inc_by(c.timed_out.saturating_sub(seen.timed_out));
            self.jobs_completed
                .inc_by(c.jobs_completed.saturating_sub(seen.jobs_completed));
            self.jobs_panicked
                .inc_by(c.jobs_panicked.saturating_sub(seen.jobs_panicked));
            *seen = c;
        }
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

async fn metrics(manager: web::Data<LeaseManager>, metrics: web::Data<Metrics>) -> HttpResponse {
    match metrics.render(&manager).await {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = LeaseManager::builder()
        .max_pools(4)
        .workers_per_pool(2)
        .max_waiters(64) // bounded queue: beyond it, 503 at once
        .name_prefix("svc")
        .build()?;
    manager.start().await?;
    leasepool::web::set_retry_after(Duration::from_secs(1));

    let data = web::Data::new(manager.clone());
    let metrics_data = web::Data::new(Metrics::new());
    let addr = std::env::var("LEASEPOOL_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(metrics_data.clone())
            .app_data(LeaseConfig::timeout(Duration::from_millis(500)))
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
