//! Message-based jobs from a durable queue, run on leases (feature `queue`).
//!
//! One queue file, any number of processes:
//!
//! ```text
//! cargo run --release --features queue --example 20_distributed_jobs -- --produce 200
//! cargo run --release --features queue --example 20_distributed_jobs -- --work &   # several at once
//! cargo run --release --features queue --example 20_distributed_jobs -- --work --metrics 127.0.0.1:9187 &
//! cargo run --release --features queue --example 20_distributed_jobs -- --status
//! ```
//!
//! Options: `--db PATH` (default `target/distributed-jobs.db`), `--pools N` (leases this worker
//! runs at once, default 2), `--exit-when-idle` (a worker stops once nothing is pending or
//! claimed), `--metrics ADDR` (a worker serves its counters as Prometheus text on
//! `http://ADDR/metrics`), `--redis URL` (a Redis server instead of the SQLite file: a fleet of
//! machines shares one queue, e.g. `--redis redis://10.0.0.5:6379/`), `--postgres URL` (a
//! PostgreSQL server instead: e.g. `--postgres postgres://jobs:secret@10.0.0.6/jobs`; workers
//! wake on its `NOTIFY` when a task is pushed), `--results PATH` (where
//! workers record what they did, default `target/distributed-jobs-results.db`).
//!
//! Each task is a `Resize` job (a serde value, the same type on both sides); the work is a
//! blocking 20 ms sleep standing in for a vendor SDK call, and a row written through the
//! worker thread's own database connection (`worker_state` + `build_with`: one connection per
//! worker thread, opened once). A worker claims a task only while its `LeaseManager` has a free
//! lease, so a busy process leaves tasks for the others. A failed attempt is retried after
//! 1 s, 2 s, 4 s, … (at most a minute), up to 25 attempts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use leasepool::queue::{Queue, QueueStats, QueueWorker, RetryPolicy};
use leasepool::LeaseManager;
use serde::{Deserialize, Serialize};

const QUEUE: &str = "resize.v1";

/// The queue payload. Put an idempotency key in every job whose effect must not happen twice:
/// delivery is at least once.
#[derive(Debug, Serialize, Deserialize)]
struct Resize {
    image: u64,
    width: u32,
}

/// A worker thread's connection to the results database, opened once per thread.
fn open_results(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS resized (image INTEGER PRIMARY KEY, width INTEGER NOT NULL)",
    )?;
    Ok(c)
}

/// The job: the blocking work, then its effect recorded idempotently (delivery is at least
/// once: a second run of the same job changes nothing).
fn resize(db: &mut rusqlite::Connection, job: Resize) -> Result<(), String> {
    if job.width == 0 {
        return Err(format!("image {}: width 0", job.image));
    }
    std::thread::sleep(Duration::from_millis(20));
    db.execute(
        "INSERT INTO resized (image, width) VALUES (?1, ?2) ON CONFLICT (image) DO NOTHING",
        (job.image as i64, job.width),
    )
    .map(|_| ())
    .map_err(|e| format!("image {}: recording the result: {e}", job.image))
}

struct Args {
    db: PathBuf,
    results: PathBuf,
    redis: Option<String>,
    postgres: Option<String>,
    produce: Option<u64>,
    work: bool,
    status: bool,
    pools: usize,
    exit_when_idle: bool,
    metrics: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        db: PathBuf::from("target/distributed-jobs.db"),
        results: PathBuf::from("target/distributed-jobs-results.db"),
        redis: None,
        postgres: None,
        produce: None,
        work: false,
        status: false,
        pools: 2,
        exit_when_idle: false,
        metrics: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--db" => args.db = PathBuf::from(value("--db")?),
            "--results" => args.results = PathBuf::from(value("--results")?),
            "--produce" => {
                let n = value("--produce")?;
                args.produce = Some(
                    n.parse()
                        .map_err(|_| format!("--produce {n}: not a count"))?,
                );
            }
            "--work" => args.work = true,
            "--status" => args.status = true,
            "--exit-when-idle" => args.exit_when_idle = true,
            "--pools" => {
                let n = value("--pools")?;
                args.pools = n.parse().map_err(|_| format!("--pools {n}: not a count"))?;
            }
            "--metrics" => args.metrics = Some(value("--metrics")?),
            "--redis" => args.redis = Some(value("--redis")?),
            "--postgres" => args.postgres = Some(value("--postgres")?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.produce.is_none() && !args.work && !args.status {
        return Err("say --produce N, --work or --status".into());
    }
    if args.redis.is_some() && args.postgres.is_some() {
        return Err("say --redis URL or --postgres URL, not both".into());
    }
    Ok(args)
}

fn metrics_text(s: &QueueStats) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        ("claimed", "Tasks taken from the queue", s.claimed),
        ("done", "Tasks done and acknowledged", s.done),
        (
            "retried",
            "Attempts lost to a crash or a revoked lease, retried",
            s.retried,
        ),
        (
            "failed",
            "Attempts that failed (error, panic, unrunnable)",
            s.failed,
        ),
        (
            "put_back",
            "Tasks put back because no lease came",
            s.put_back,
        ),
        ("handed_back", "Tasks handed back by a stop", s.handed_back),
    ] {
        out.push_str(&format!(
            "# HELP leasepool_queue_{name}_total {help}.\n# TYPE leasepool_queue_{name}_total counter\nleasepool_queue_{name}_total {value}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP leasepool_queue_running Tasks running on a lease.\n# TYPE leasepool_queue_running gauge\nleasepool_queue_running {}\n",
        s.running
    ));
    out
}

#[actix_web::main]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("20_distributed_jobs: {e}");
            std::process::exit(2);
        }
    };
    let opened = match (&args.redis, &args.postgres) {
        (Some(url), _) => Queue::redis(url).await,
        (None, Some(url)) => Queue::postgres(url).await,
        (None, None) => {
            if let Some(dir) = args.db.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(dir);
            }
            Queue::sqlite(&args.db).await
        }
    };
    let queue = match opened {
        Ok(q) => q,
        Err(e) => {
            eprintln!("20_distributed_jobs: {e}");
            std::process::exit(1);
        }
    };
    if let Some(n) = args.produce {
        let jobs = (0..n).map(|image| Resize { image, width: 640 });
        let pushed = queue.push_all(QUEUE, jobs).await.expect("push the jobs");
        println!("produced {} jobs into {queue:?}", pushed.len());
    }
    if args.work {
        let results = args.results.clone();
        if let Some(dir) = results.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let manager = LeaseManager::builder()
            .name_prefix("jobs")
            .max_pools(args.pools)
            .workers_per_pool(1)
            // One connection per worker thread, opened on that thread; a failure to open is
            // retried by the manager with a backoff.
            .try_worker_state(move || open_results(&results))
            .build()
            .expect("valid settings");
        manager.start().await.expect("start the manager");
        let worker = Arc::new(
            QueueWorker::builder(&manager, &queue, QUEUE)
                .poll_interval(Duration::from_millis(50))
                .orphan_timeout(Duration::from_secs(15))
                .retry(RetryPolicy::exponential(
                    Duration::from_secs(1),
                    Duration::from_secs(60),
                ))
                .build_with(resize)
                .expect("valid settings"),
        );
        worker.start().expect("start the worker");
        println!("worker {} started", worker.instance_name());
        let server = args.metrics.as_ref().map(|addr| {
            let w = Arc::clone(&worker);
            let server = HttpServer::new(move || {
                let w = Arc::clone(&w);
                App::new().route(
                    "/metrics",
                    web::get().to(move || {
                        let text = metrics_text(&w.stats());
                        async move {
                            HttpResponse::Ok()
                                .content_type("text/plain; version=0.0.4")
                                .body(text)
                        }
                    }),
                )
            })
            .workers(1)
            .disable_signals()
            .bind(addr.as_str())
            .expect("bind the metrics address")
            .run();
            let handle = server.handle();
            actix_web::rt::spawn(server);
            handle
        });
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if args.exit_when_idle {
                let c = queue.counts(QUEUE).await.expect("count");
                if c.pending == 0 && c.claimed == 0 {
                    break;
                }
            }
        }
        let stats = worker.stop().await;
        if let Some(h) = server {
            h.stop(true).await;
        }
        manager.stop().await;
        println!("worker stopped: {stats:?}");
    }
    if args.status {
        let c = queue.counts(QUEUE).await.expect("count");
        println!(
            "{QUEUE}: pending {}, claimed {}, done {}, failed {} (total {})",
            c.pending,
            c.claimed,
            c.done,
            c.failed,
            c.total()
        );
    }
}
