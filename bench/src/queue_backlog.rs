//! Q2: claim throughput of a SQLite queue against its backlog, and the idle cost of a queue
//! worker on each store (both with `--queue`).
//!
//! Q2: one worker, 4 leases, no-op tasks, one queue file. The queue holds `pending` tasks;
//! the worker runs `measured` of them; tasks per second over those. Reported for a small and a
//! large backlog in the same run, and their ratio (target ≥ 0.8: a deep queue claims nearly as
//! fast as a shallow one). Without the planner's statistics SQLite walked an index for every
//! claim: 177 tasks/s at 2 000 pending, 15–23 at 100 000.
//!
//! Idle: a started worker with nothing to do (SQLite, Redis, PostgreSQL), at the default 100 ms poll interval, for a
//! while; the CPU time this process used over it (from /proc/self/stat), as percent of a core.

use std::path::Path;
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueWorker};
use leasepool::LeaseManager;
use serde_json::{json, Value};

const LEASES: usize = 4;

async fn manager(prefix: &str) -> LeaseManager {
    let m = LeaseManager::builder()
        .name_prefix(prefix)
        .max_pools(LEASES)
        .min_pools(LEASES)
        .workers_per_pool(1)
        .build()
        .expect("valid settings");
    m.start().await.expect("start");
    m
}

/// Tasks per second while a worker runs `measured` tasks of a queue holding `pending`.
async fn claim_rate(dir: &Path, pending: u64, measured: u64) -> f64 {
    let db = dir.join(format!("q2-{pending}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let queue = Queue::sqlite(&db).await.expect("open");
    let mut pushed = 0;
    while pushed < pending {
        let n = (pending - pushed).min(20_000);
        queue
            .push_all("q2", pushed..pushed + n)
            .await
            .expect("push");
        pushed += n;
    }
    let m = manager("q2").await;
    let worker = QueueWorker::builder(&m, &queue, "q2")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .expect("valid settings");
    worker.start().expect("start");
    let begun = Instant::now();
    while worker.stats().done < measured {
        assert!(
            begun.elapsed() < Duration::from_secs(600),
            "Q2: stuck at {pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = worker.stats().done as f64 / begun.elapsed().as_secs_f64();
    worker.stop().await;
    m.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    rate
}

/// This process's CPU time so far, in clock ticks (100 a second).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = rest.split(' ').collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Percent of a core an idle worker on `queue` costs over `window`.
async fn idle_cost(queue: &Queue, window: Duration) -> f64 {
    let m = manager("idle").await;
    let worker = QueueWorker::builder(&m, queue, "idle")
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .expect("valid settings");
    worker.start().expect("start");
    // Past the start-up (registration, the first sweep).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_ticks();
    tokio::time::sleep(window).await;
    let ticks = cpu_ticks() - before;
    worker.stop().await;
    m.stop().await;
    ticks as f64 / window.as_secs_f64()
}

/// Runs Q2 (`small` and `large` pending, `measured` tasks each, median of `rounds`) and the
/// idle cost on SQLite, on Redis at `redis_url` and on PostgreSQL at `postgres_url`; returns
/// the markdown section and JSON.
pub fn q2_and_idle(
    small: u64,
    large: u64,
    measured: u64,
    rounds: usize,
    idle_window: Duration,
    (redis_url, postgres_url): (&str, &str),
) -> Result<(String, Value), String> {
    let dir = std::env::temp_dir().join(format!("leasepool-q2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = actix_rt::System::new().block_on(async {
        let mut medians = Vec::new();
        for pending in [small, large] {
            let mut rates = Vec::new();
            for _ in 0..rounds {
                rates.push(claim_rate(&dir, pending, measured).await);
            }
            rates.sort_by(f64::total_cmp);
            eprintln!("Q2 {pending} pending: {rates:.0?} tasks/s");
            medians.push(rates[rates.len() / 2]);
        }
        let sqlite = Queue::sqlite(dir.join("idle.db"))
            .await
            .map_err(|e| e.to_string())?;
        let redis = Queue::redis(redis_url).await.map_err(|e| e.to_string())?;
        let postgres = Queue::postgres(postgres_url)
            .await
            .map_err(|e| e.to_string())?;
        let idle_sqlite = idle_cost(&sqlite, idle_window).await;
        let idle_redis = idle_cost(&redis, idle_window).await;
        let idle_postgres = idle_cost(&postgres, idle_window).await;
        Ok::<_, String>((medians, idle_sqlite, idle_redis, idle_postgres))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (medians, idle_sqlite, idle_redis, idle_postgres) = result?;
    let ratio = medians[1] / medians[0];
    let md = format!(
        "## Q2: SQLite claim throughput against the backlog\n\n\
         | pending | tasks/s (one worker, {LEASES} leases, no-op tasks) |\n|---|---|\n\
         | {small} | {:.0} |\n| {large} | {:.0} |\n\n\
         {measured} tasks measured per run, median of {rounds} runs. {large} pending ÷ {small} \
         pending: **{ratio:.2}** (target ≥ 0.8).\n\n\
         ## Idle cost of a queue worker\n\n\
         A started worker with nothing to do, default 100 ms poll interval, over {:?} (this \
         process's CPU time from /proc/self/stat): SQLite {idle_sqlite:.2} % of a core, Redis \
         {idle_redis:.2} %, PostgreSQL {idle_postgres:.2} %.\n",
        medians[0], medians[1], idle_window
    );
    let js = json!({
        "q2_small_pending": small,
        "q2_large_pending": large,
        "q2_small_tasks_per_sec": medians[0],
        "q2_large_tasks_per_sec": medians[1],
        "q2_ratio": ratio,
        "idle_percent_sqlite": idle_sqlite,
        "idle_percent_redis": idle_redis,
        "idle_percent_postgres": idle_postgres,
    });
    Ok((md, js))
}
