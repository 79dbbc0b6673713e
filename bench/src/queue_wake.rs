//! A throwaway PostgreSQL cluster for the queue rows, and W: how long a task pushed to an idle
//! worker waits before it starts, on each store (both with `--queue`).
//!
//! W: one started worker (4 leases, the default 100 ms poll interval) with nothing to do; a
//! task is pushed every 150–290 ms (a step that does not divide the poll interval, so pushes
//! land all over it); the time from calling `push` to the job starting on its worker thread.
//! SQLite and Redis wait for the next poll (half the interval on average); PostgreSQL's
//! workers are woken by the `NOTIFY` of apalis' insert trigger.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueWorker};
use leasepool::LeaseManager;
use serde_json::{json, Value};

/// A private PostgreSQL cluster (initdb into a temp dir, run as the user `postgres` when this
/// process is root) under a watchdog shell that stops it and removes its directory when
/// dropped, or when this process dies (killed included).
pub struct Postgres(Child);

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Debian's newest `/usr/lib/postgresql/<version>/bin`.
fn server_bin() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (install the Debian package postgresql)"))?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no initdb under /usr/lib/postgresql (install postgresql)".into())
}

pub fn start_postgres() -> Result<(Postgres, String), String> {
    let bin = server_bin()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = std::env::temp_dir().join(format!("leasepool-bench-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let runner = if root {
        Command::new("chown")
            .arg("postgres")
            .arg(&dir)
            .status()
            .map_err(|e| e.to_string())?;
        "runuser -u postgres --"
    } else {
        ""
    };
    let (bin, data, d) = (bin.display(), dir.join("data"), dir.display());
    let data = data.display();
    let init = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{runner} '{bin}/initdb' -A trust -U postgres --no-sync -D '{data}' >/dev/null"
        ))
        .status()
        .map_err(|e| format!("initdb: {e}"))?;
    if !init.success() {
        return Err("initdb failed".into());
    }
    // The server, stopped (a fast shutdown of the postmaster named in its pid file) and its
    // directory removed when the shell is told to end or this process is gone.
    let shell = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{runner} '{bin}/postgres' -D '{data}' -p {port} -k '{d}' \
             -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 \
             >'{d}/server.log' 2>&1 & r=$!; \
             trap 'p=$(head -n 1 \"{data}/postmaster.pid\" 2>/dev/null); \
               if [ -n \"$p\" ]; then kill -INT $p 2>/dev/null; \
                 for i in $(seq 1 100); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; \
                 kill -KILL $p 2>/dev/null; fi; rm -rf \"{d}\"' EXIT TERM INT; \
             while kill -0 {me} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.5; done",
            me = std::process::id()
        ))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("sh: {e}"))?;
    let pg = Postgres(shell);
    let begun = Instant::now();
    let ready = || {
        Command::new(format!("{bin}/pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
    };
    while !ready() {
        if begun.elapsed() > Duration::from_secs(30) {
            return Err("PostgreSQL did not start in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((pg, format!("postgres://postgres@127.0.0.1:{port}/postgres")))
}

/// Push → start times (ms) of `samples` tasks pushed one at a time to an idle worker.
async fn wake_times(queue: &Queue, name: &str, samples: usize) -> Vec<f64> {
    let m = LeaseManager::builder()
        .name_prefix("wake")
        .max_pools(4)
        .min_pools(4)
        .workers_per_pool(1)
        .build()
        .expect("valid settings");
    m.start().await.expect("start");
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Instant>();
    let worker = QueueWorker::builder(&m, queue, name)
        .build_blocking(move |_: u64| -> Result<(), String> {
            let _ = started_tx.send(Instant::now());
            Ok(())
        })
        .expect("valid settings");
    worker.start().expect("start");
    // Past the start-up (registration, the first fetch, the listener's connection).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 37) % 140)).await;
        let pushed = Instant::now();
        queue.push(name, i as u64).await.expect("push");
        let begun = Instant::now();
        let started = loop {
            if let Ok(at) = started_rx.try_recv() {
                break at;
            }
            assert!(
                begun.elapsed() < Duration::from_secs(30),
                "W: task {i} never started"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        times.push(started.saturating_duration_since(pushed).as_secs_f64() * 1e3);
    }
    worker.stop().await;
    m.stop().await;
    times.sort_by(f64::total_cmp);
    times
}

/// Runs W on SQLite (a temp file), Redis and PostgreSQL; returns the markdown section and JSON.
pub fn wake(
    redis_url: &str,
    postgres_url: &str,
    samples: usize,
) -> Result<(String, Value), String> {
    let dir = std::env::temp_dir().join(format!("leasepool-wake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let rows = actix_rt::System::new().block_on(async {
        let stores = [
            ("SQLite", Queue::sqlite(dir.join("wake.db")).await),
            ("Redis", Queue::redis(redis_url).await),
            ("PostgreSQL", Queue::postgres(postgres_url).await),
        ];
        let mut rows = Vec::new();
        for (store, queue) in stores {
            let queue = queue.map_err(|e| format!("{store}: {e}"))?;
            let times = wake_times(&queue, &format!("wake-{}", std::process::id()), samples).await;
            let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            eprintln!("W {store}: median {:.1} ms, p90 {:.1} ms", at(0.5), at(0.9));
            rows.push((store, at(0.5), at(0.9), times[times.len() - 1]));
        }
        Ok::<_, String>(rows)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let rows = rows?;
    let mut md = format!(
        "## W: push → start at idle\n\n\
         One idle worker (4 leases, default 100 ms poll interval); {samples} tasks pushed one at a \
         time, 150–290 ms apart; the time from calling `push` to the job starting.\n\n\
         | store | median ms | p90 ms | max ms |\n|---|---|---|---|\n"
    );
    let mut js = serde_json::Map::new();
    for (store, median, p90, max) in &rows {
        md.push_str(&format!(
            "| {store} | {median:.1} | {p90:.1} | {max:.1} |\n"
        ));
        let key = store.to_lowercase();
        js.insert(format!("{key}_median_ms"), json!(median));
        js.insert(format!("{key}_p90_ms"), json!(p90));
        js.insert(format!("{key}_max_ms"), json!(max));
    }
    js.insert("samples".into(), json!(samples));
    Ok((md, Value::Object(js)))
}
