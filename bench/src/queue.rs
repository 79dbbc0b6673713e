//! Q1: message-based jobs through a Redis or PostgreSQL queue, scaled over worker processes
//! (`--queue`; not in the normal or `--quick` runs: it needs `redis-server` and PostgreSQL's
//! server programs, and takes a few minutes).
//!
//! Each worker process has room for `SLOTS` tasks at a time; each task is a 10 ms blocking
//! sleep. Two kinds of worker process, on the same queue setup (apalis-redis or
//! apalis-postgres, one task per fetch, a 5 ms poll interval):
//! - leasepool: a `QueueWorker` on a `LeaseManager` of `SLOTS` pools of one thread, one lease
//!   per task, claiming only while a lease is free;
//! - apalis + `spawn_blocking`: a plain apalis worker with `concurrency(SLOTS)` whose handler
//!   awaits `tokio::task::spawn_blocking` of the same sleep.
//!
//! For 1, 2 and 3 processes of each kind: start them, push `tasks` tasks, time until the queue
//! reports them all done. Reported: throughput, scaling 1 → 3 processes, and the time one task
//! costs a slot (`elapsed × slots / tasks`) beside the 10 ms of work.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueWorker};
use leasepool::LeaseManager;
use serde_json::{json, Value};

/// Tasks each worker process runs at once.
const SLOTS: usize = 4;
/// The work of one task.
const WORK: Duration = Duration::from_millis(10);
const POLL: Duration = Duration::from_millis(5);

/// `--q1-worker <url> <queue> <leasepool|apalis>`: a worker process; prints `ready`, then works
/// until killed.
pub fn worker(url: &str, queue: &str, kind: &str) {
    actix_rt::System::new().block_on(async move {
        let store = open(url).await.expect("open the queue");
        match kind {
            "leasepool" => {
                let manager = LeaseManager::builder()
                    .name_prefix("q1")
                    .max_pools(SLOTS)
                    .min_pools(SLOTS)
                    .workers_per_pool(1)
                    .build()
                    .expect("valid settings");
                manager.start().await.expect("start");
                let w = QueueWorker::builder(&manager, &store, queue)
                    .poll_interval(POLL)
                    .build_blocking(|_: u64| -> Result<(), String> {
                        std::thread::sleep(WORK);
                        Ok(())
                    })
                    .expect("valid settings");
                w.start().expect("start the worker");
                println!("ready");
                std::future::pending::<()>().await;
            }
            _ if is_postgres(url) => {
                use apalis::prelude::*;
                let pool = leasepool::queue::PgPool::connect(url)
                    .await
                    .expect("connect");
                let config = apalis_postgres::Config::default()
                    .queue(queue)
                    .batch_size(1);
                let backend = apalis_postgres::PostgresStorage::<u64>::new(&pool)
                    .with_config(config)
                    .poll_with_interval(POLL);
                let worker = WorkerBuilder::new(format!("q1-apalis-{}", std::process::id()))
                    .backend(backend)
                    .concurrency(SLOTS)
                    .build(handle);
                println!("ready");
                let _ = worker.run().await;
            }
            _ => {
                use apalis::prelude::*;
                let conn = apalis_redis::connect(url).await.expect("connect");
                let config = apalis_redis::Config::default().queue(queue).batch_size(1);
                let backend = apalis_redis::RedisStorage::<u64>::new(conn)
                    .with_config(config)
                    .poll_with_interval(POLL);
                let worker = WorkerBuilder::new(format!("q1-apalis-{}", std::process::id()))
                    .backend(backend)
                    .concurrency(SLOTS)
                    .build(handle);
                println!("ready");
                let _ = worker.run().await;
            }
        }
    });
}

/// The apalis peer's handler: the same sleep through `spawn_blocking`.
async fn handle(_: u64) -> Result<(), apalis::prelude::BoxDynError> {
    tokio::task::spawn_blocking(|| std::thread::sleep(WORK)).await?;
    Ok(())
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://")
}

/// The queue at `url` (Redis or PostgreSQL).
pub async fn open(url: &str) -> Result<Queue, String> {
    let opened = if is_postgres(url) {
        Queue::postgres(url).await
    } else {
        Queue::redis(url).await
    };
    opened.map_err(|e| e.to_string())
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_workers(url: &str, queue: &str, kind: &str, n: usize) -> Workers {
    use std::io::BufRead;
    let mut all = Workers(Vec::new());
    for _ in 0..n {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .args(["--q1-worker", url, queue, kind])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a worker process");
        let out = child.stdout.take().expect("stdout");
        all.0.push(child);
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(line.trim(), "ready", "worker process did not start");
    }
    all
}

/// Seconds until `tasks` tasks are done by `procs` fresh worker processes of `kind`.
async fn one_run(
    url: &str,
    store: &Queue,
    kind: &str,
    procs: usize,
    tasks: u64,
    run: usize,
) -> f64 {
    let queue = format!("q1-{kind}-{procs}-{run}-{}", std::process::id());
    let _workers = spawn_workers(url, &queue, kind, procs);
    store.push_all(&queue, 0..tasks).await.expect("push");
    let begun = Instant::now();
    loop {
        let c = store.counts(&queue).await.expect("counts");
        if c.done >= tasks {
            return begun.elapsed().as_secs_f64();
        }
        assert!(
            begun.elapsed() < Duration::from_secs(300),
            "Q1 {kind} x{procs}: not done after 300 s: {c:?}"
        );
        // (Every 20 ms: on PostgreSQL a count reads the queue's rows, and polling it every 5 ms
        // loaded the server the workers share this VM with.)
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private redis-server under a watchdog shell: stopped and its directory removed when
/// dropped, or when this process dies (killed included).
pub struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

pub fn start_redis() -> Result<(Redis, String), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = std::env::temp_dir().join(format!("leasepool-q1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Command::new("redis-server")
        .arg("--version")
        .output()
        .map_err(|e| format!("redis-server: {e} (install the Debian package redis-server)"))?;
    let shell = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --dir '{d}' \
             & r=$!; trap 'kill $r 2>/dev/null; rm -rf \"{d}\"' EXIT TERM INT; \
             while kill -0 {me} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.5; done",
            d = dir.display(),
            me = std::process::id()
        ))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("sh: {e}"))?;
    let redis = Redis(shell);
    let begun = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if begun.elapsed() > Duration::from_secs(20) {
            return Err("redis-server did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((redis, format!("redis://127.0.0.1:{port}/")))
}

/// Runs Q1 on the store at `url` (`store` names it: Redis, PostgreSQL); returns its markdown
/// section and JSON.
pub fn q1(
    store_name: &str,
    url: &str,
    tasks: u64,
    rounds: usize,
) -> Result<(String, Value), String> {
    let url = url.to_owned();
    let mut rows = Vec::new();
    let mut figures = serde_json::Map::new();
    actix_rt::System::new().block_on(async {
        let store = open(&url).await?;
        for kind in ["leasepool", "apalis"] {
            for procs in 1..=3 {
                let mut secs: Vec<f64> = Vec::new();
                for run in 0..rounds {
                    secs.push(one_run(&url, &store, kind, procs, tasks, run).await);
                }
                secs.sort_by(f64::total_cmp);
                let median = secs[secs.len() / 2];
                eprintln!("Q1 {store_name} {kind} x{procs}: {secs:.2?} s");
                figures.insert(format!("{kind}_{procs}_secs"), json!(median));
                rows.push((kind, procs, median));
            }
        }
        Ok::<(), String>(())
    })?;
    let secs = |kind: &str, procs: usize| {
        rows.iter()
            .find(|(k, p, _)| *k == kind && *p == procs)
            .map_or(f64::NAN, |r| r.2)
    };
    let rate = |kind: &str, procs: usize| tasks as f64 / secs(kind, procs);
    // Time one task costs a slot, and the part of it that is not the 10 ms of work.
    let per_task_ms =
        |kind: &str, procs: usize| secs(kind, procs) * 1e3 * (SLOTS * procs) as f64 / tasks as f64;
    let work_ms = WORK.as_secs_f64() * 1e3;
    let mut md = format!(
        "## Q1: 10 ms blocking tasks through {store_name}, 1–3 worker processes\n\n\
         | worker processes | leasepool tasks/s | apalis + spawn_blocking tasks/s | leasepool ms per task per slot | apalis ms per task per slot |\n|---|---|---|---|---|\n",
    );
    for procs in 1..=3 {
        md.push_str(&format!(
            "| {procs} | {:.0} | {:.0} | {:.2} | {:.2} |\n",
            rate("leasepool", procs),
            rate("apalis", procs),
            per_task_ms("leasepool", procs),
            per_task_ms("apalis", procs),
        ));
    }
    let scaling = rate("leasepool", 3) / rate("leasepool", 1);
    let apalis_scaling = rate("apalis", 3) / rate("apalis", 1);
    let overhead = |kind: &str| (1..=3).map(|p| per_task_ms(kind, p) - work_ms).sum::<f64>() / 3.0;
    let (ours, theirs) = (overhead("leasepool"), overhead("apalis"));
    let time_ratio = (1..=3)
        .map(|p| per_task_ms("leasepool", p) / per_task_ms("apalis", p))
        .fold(0.0_f64, f64::max);
    md.push_str(&format!(
        "\n{tasks} tasks per run, {SLOTS} slots per process, median of {rounds} runs. \
         Scaling 1 → 3 processes: leasepool {scaling:.2}× (target ≥ 2.5×), apalis {apalis_scaling:.2}×. \
         Per-task overhead beyond the 10 ms of work, mean over 1–3 processes: leasepool {ours:.2} ms, \
         apalis + spawn_blocking {theirs:.2} ms; per-task time leasepool / apalis at worst {time_ratio:.3}× \
         (target ≤ 1.1×).\n"
    ));
    figures.insert("tasks".into(), json!(tasks));
    figures.insert("slots_per_process".into(), json!(SLOTS));
    figures.insert("scaling_1_to_3".into(), json!(scaling));
    figures.insert("apalis_scaling_1_to_3".into(), json!(apalis_scaling));
    figures.insert("overhead_ms_leasepool".into(), json!(ours));
    figures.insert("overhead_ms_apalis".into(), json!(theirs));
    figures.insert("per_task_time_ratio_worst".into(), json!(time_ratio));
    Ok((md, Value::Object(figures)))
}
