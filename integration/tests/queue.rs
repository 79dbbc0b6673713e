//! Durable-queue jobs (feature `queue`) against a real SQLite queue file: worker processes
//! sharing one queue, exactly-once completion without crashes, capacity-aware claiming, the
//! outcome mapping, graceful stop and hand-back, and orphan re-runs after a SIGKILL.
//!
//! No libtest harness: this binary is also the worker processes' program (`LP_QUEUE_ROLE`).
//! `LPQ_TRACE=apalis_core=debug,leasepool::queue=debug` prints apalis' and the worker's logs.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::process::ProcessJob as _;
use leasepool::queue::{Queue, QueueError, QueueWorker};
use leasepool::LeaseManager;

const ROLE: &str = "LP_QUEUE_ROLE";

/// Opens a queue store: a `redis://` URL or a SQLite file path.
async fn open(store: &str) -> Queue {
    if store.starts_with("redis://") {
        Queue::redis(store).await.unwrap()
    } else {
        Queue::sqlite(store).await.unwrap()
    }
}

/// A private redis-server for this test binary: a free loopback port, a temp dir, no
/// persistence; killed when the binary ends (see `main`).
struct RedisServer {
    child: Child,
    url: String,
    dir: PathBuf,
}

static REDIS: std::sync::Mutex<Option<RedisServer>> = std::sync::Mutex::new(None);

fn redis_url() -> String {
    let mut slot = REDIS.lock().unwrap();
    if let Some(r) = slot.as_ref() {
        return r.url.clone();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = temp_dir("redis");
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "redis-server is missing: these tests need the Debian package redis-server \
             (`apt-get install redis-server`; .ci/run installs it)"
        );
    }
    // Through a small shell that also ends the server when this test binary dies, even by
    // abort (the deadline watchdog) or SIGKILL.
    let watchdog = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --dir '{}' & r=$!; \
         trap 'kill $r 2>/dev/null' EXIT TERM INT; \
         while kill -0 {me} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.5; done",
        dir.display(),
        me = std::process::id()
    );
    let child = Command::new("sh")
        .args(["-c", &watchdog])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sh for redis-server");
    let url = format!("redis://127.0.0.1:{port}/");
    let begun = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "redis-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    *slot = Some(RedisServer {
        child,
        url: url.clone(),
        dir,
    });
    url
}

fn stop_redis() {
    if let Some(mut r) = REDIS.lock().unwrap().take() {
        // SIGTERM to the shell: its trap stops the server.
        let _ = Command::new("kill").arg(r.child.id().to_string()).status();
        let _ = r.child.wait();
        let _ = std::fs::remove_dir_all(&r.dir);
    }
}

/// Where an in-process test keeps its queue.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Redis,
}

async fn queue_for(kind: Kind, tag: &str) -> (Queue, PathBuf) {
    let dir = temp_dir(tag);
    let q = match kind {
        Kind::Sqlite => open(dir.join("q.db").to_str().unwrap()).await,
        Kind::Redis => open(&redis_url()).await,
    };
    (q, dir)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lp-queue-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn results_db(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS results (task INTEGER NOT NULL, pid INTEGER NOT NULL)",
    )
    .unwrap();
    c
}

thread_local! {
    static RESULTS: std::cell::RefCell<Option<rusqlite::Connection>> = const { std::cell::RefCell::new(None) };
}

/// Records that `task` was done by this process (one row per run: duplicates stay visible).
fn record(results: &Path, task: u64) -> Result<(), String> {
    RESULTS.with(|r| {
        let mut r = r.borrow_mut();
        let c = r.get_or_insert_with(|| results_db(results));
        c.execute(
            "INSERT INTO results (task, pid) VALUES (?1, ?2)",
            (task as i64, std::process::id() as i64),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    common::until(what, f, |b| *b).await;
}

// ---- the worker process -----------------------------------------------------------------------

/// `LP_QUEUE_ROLE=work <store> <queue> <results> <max_pools> <task_ms> <orphan_s> <exit_at_done>`:
/// runs a QueueWorker; prints `ready` once claiming; stops once the queue has `exit_at_done`
/// tasks done and none pending or claimed (0: never).
fn worker_role() -> ! {
    let args: Vec<String> = std::env::args().collect();
    let store = args[1].clone();
    let queue_name = args[2].clone();
    let results = PathBuf::from(&args[3]);
    let max_pools: usize = args[4].parse().unwrap();
    let task_ms: u64 = args[5].parse().unwrap();
    let orphan_s: u64 = args[6].parse().unwrap();
    let exit_at_done: u64 = args[7].parse().unwrap();
    actix_rt::System::new().block_on(async move {
        let queue = open(&store).await;
        let manager = LeaseManager::builder()
            .name_prefix(format!("w{}", std::process::id()))
            .max_pools(max_pools)
            .workers_per_pool(1)
            .build()
            .unwrap();
        manager.start().await.unwrap();
        let worker = QueueWorker::builder(&manager, &queue, &queue_name)
            .poll_interval(Duration::from_millis(10))
            .orphan_timeout(Duration::from_secs(orphan_s))
            .build_blocking(move |task: u64| {
                std::thread::sleep(Duration::from_millis(task_ms));
                record(&results, task)
            })
            .unwrap();
        worker.start().unwrap();
        println!("ready");
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if exit_at_done > 0 {
                let c = queue.counts(&queue_name).await.unwrap();
                if c.done >= exit_at_done && c.pending == 0 && c.claimed == 0 {
                    break;
                }
            }
        }
        let stats = worker.stop().await;
        manager.stop().await;
        eprintln!(
            "    worker {}: {stats:?}, last error {:?}",
            std::process::id(),
            worker.last_error()
        );
    });
    std::process::exit(0)
}

struct Worker {
    child: Child,
}

impl Worker {
    fn spawn(
        store: &str,
        queue: &str,
        results: &Path,
        max_pools: usize,
        task_ms: u64,
        orphan_s: u64,
        exit_at_done: u64,
    ) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, "work")
            .args([
                store,
                queue,
                results.to_str().unwrap(),
                &max_pools.to_string(),
                &task_ms.to_string(),
                &orphan_s.to_string(),
                &exit_at_done.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Wait for "ready" on its stdout.
        use std::io::BufRead;
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        let first = lines.next().expect("worker printed nothing").unwrap();
        assert_eq!(first, "ready", "worker's first line");
        std::thread::spawn(move || for _ in lines {});
        Worker { child }
    }

    fn wait(mut self, within: Duration) -> std::process::ExitStatus {
        let begun = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if begun.elapsed() > within {
                let _ = self.child.kill();
                panic!(
                    "worker process {} still running after {within:?}",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (rows, distinct tasks, rows per pid)
fn results_of(path: &Path) -> (i64, i64, Vec<(i64, i64)>) {
    let c = results_db(path);
    let rows: i64 = c
        .query_row("SELECT count(*) FROM results", [], |r| r.get(0))
        .unwrap();
    let distinct: i64 = c
        .query_row("SELECT count(DISTINCT task) FROM results", [], |r| r.get(0))
        .unwrap();
    let mut st = c
        .prepare("SELECT pid, count(*) FROM results GROUP BY pid ORDER BY pid")
        .unwrap();
    let per_pid = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (rows, distinct, per_pid)
}

// ---- tests across processes -------------------------------------------------------------------

async fn two_worker_processes_do_2000_tasks_exactly_once() {
    let dir = temp_dir("2000");
    let db = dir.join("queue.db");
    let results = dir.join("results.db");
    let queue = Queue::sqlite(&db).await.unwrap();
    queue.push_all("numbers", 0..2000_u64).await.unwrap();
    assert_eq!(queue.counts("numbers").await.unwrap().pending, 2000);
    let a = Worker::spawn(db.to_str().unwrap(), "numbers", &results, 2, 1, 60, 2000);
    let b = Worker::spawn(db.to_str().unwrap(), "numbers", &results, 2, 1, 60, 2000);
    assert!(a.wait(Duration::from_secs(80)).success());
    assert!(b.wait(Duration::from_secs(10)).success());
    let (rows, distinct, per_pid) = results_of(&results);
    println!("    results: {rows} rows, {distinct} distinct tasks, per process {per_pid:?}");
    assert_eq!(distinct, 2000, "every task done");
    assert_eq!(rows, 2000, "no task done twice");
    let counts = queue.counts("numbers").await.unwrap();
    assert_eq!(counts.done, 2000, "{counts:?}");
    let _ = std::fs::remove_dir_all(dir);
}

async fn the_bigger_instance_takes_its_fair_share() {
    // One instance with 1 pool, one with 4; slow tasks: the bigger takes >= 3x as many.
    let dir = temp_dir("fair");
    let db = dir.join("queue.db");
    let results = dir.join("results.db");
    let queue = Queue::sqlite(&db).await.unwrap();
    let small = Worker::spawn(db.to_str().unwrap(), "fair", &results, 1, 50, 60, 200);
    let big = Worker::spawn(db.to_str().unwrap(), "fair", &results, 4, 50, 60, 200);
    let small_pid = small.child.id() as i64;
    queue.push_all("fair", 0..200_u64).await.unwrap();
    assert!(small.wait(Duration::from_secs(80)).success());
    assert!(big.wait(Duration::from_secs(10)).success());
    let (rows, distinct, per_pid) = results_of(&results);
    println!("    results: {rows} rows, per process {per_pid:?} (small = {small_pid})");
    assert_eq!((rows, distinct), (200, 200));
    let small_n = per_pid
        .iter()
        .find(|(p, _)| *p == small_pid)
        .map_or(0, |(_, n)| *n);
    let big_n = rows - small_n;
    assert!(
        big_n >= 3 * small_n,
        "the 4-pool instance did {big_n}, the 1-pool one {small_n}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

async fn a_killed_instance_tasks_are_run_by_another_after_the_orphan_timeout() {
    let dir = temp_dir("orphan");
    let db = dir.join("queue.db");
    let results = dir.join("results.db");
    let queue = Queue::sqlite(&db).await.unwrap();
    queue.push_all("orphans", 0..4_u64).await.unwrap();
    // The victim claims 2 tasks (2 pools) and sleeps in them far longer than the test.
    let mut victim = Worker::spawn(db.to_str().unwrap(), "orphans", &results, 2, 600_000, 5, 0);
    eventually("the victim holds 2 tasks", || async {
        queue.counts("orphans").await.unwrap().claimed == 2
    })
    .await;
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    let killed_at = Instant::now();
    assert_eq!(
        queue.counts("orphans").await.unwrap().claimed,
        2,
        "the dead instance's tasks stay claimed"
    );
    let rescuer = Worker::spawn(db.to_str().unwrap(), "orphans", &results, 2, 1, 5, 4);
    assert!(rescuer.wait(Duration::from_secs(60)).success());
    let (rows, distinct, _) = results_of(&results);
    assert_eq!(
        (rows, distinct),
        (4, 4),
        "all four done once, the victim's two re-run"
    );
    let took = killed_at.elapsed();
    println!("    the victim's tasks were done {took:.1?} after the kill (orphan timeout 5 s)");
    // Heartbeats are stored in whole seconds and the victim's last one was up to a third of the
    // timeout before the kill: the re-run comes between about 2.3 s and 5 s after it.
    assert!(
        took >= Duration::from_secs(2),
        "re-run before the orphan timeout: {took:?}"
    );
    assert_eq!(queue.counts("orphans").await.unwrap().done, 4);
    let _ = std::fs::remove_dir_all(dir);
}

/// Also the regression test for pushing more than ~8 000 tasks at once to Redis (apalis-redis
/// 1.0 then fails every fetch: see `redis::promote`).
async fn redis_three_workers_share_10000_tasks_and_survive_a_sigkill() {
    let url = redis_url();
    let dir = temp_dir("redis-fleet");
    let results = dir.join("results.db");
    let queue = open(&url).await;
    const N: u64 = 10_000;
    queue.push_all("fleet", 0..N).await.unwrap();
    let mut victim = Worker::spawn(&url, "fleet", &results, 2, 0, 5, 0);
    let b = Worker::spawn(&url, "fleet", &results, 2, 0, 5, N);
    let c = Worker::spawn(&url, "fleet", &results, 2, 0, 5, N);
    // Kill one mid-run, without warning.
    let victim_pid = victim.child.id() as i64;
    let begun = Instant::now();
    loop {
        let c = queue.counts("fleet").await.unwrap();
        if c.done >= N / 3 {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(80),
            "a third of the tasks not done in 80 s: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("    a third done in {:.1?}", begun.elapsed());
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed_at_done = queue.counts("fleet").await.unwrap().done;
    assert!(b.wait(Duration::from_secs(100)).success());
    assert!(c.wait(Duration::from_secs(20)).success());
    let (rows, distinct, per_pid) = results_of(&results);
    let lost = N as i64 - distinct;
    let duplicates = rows - distinct;
    println!(
        "    10 000 tasks, 3 workers, one (pid {victim_pid}) SIGKILLed at {killed_at_done} done: \
         lost {lost}, duplicates {duplicates}, per process {per_pid:?}"
    );
    assert_eq!(lost, 0, "every task done");
    let counts = queue.counts("fleet").await.unwrap();
    assert_eq!(counts.done, N, "{counts:?}");
    assert_eq!(
        (counts.pending, counts.claimed, counts.failed),
        (0, 0, 0),
        "{counts:?}"
    );
    // What the victim held when it died is at most its 2 leases' tasks (batch size 1, no
    // prefetch), done at most once more each.
    assert!(duplicates <= 2, "{duplicates} duplicates");
    let _ = std::fs::remove_dir_all(dir);
}

async fn a_large_due_backlog_on_redis_does_not_stop_fetching() {
    // apalis-redis' fetch moves every due scheduled task with one Lua `unpack`, which fails
    // beyond ~8 000: a producer's large apalis push (or a burst of retries) left every worker
    // failing each fetch. Put 9 000 due tasks in the schedule the way apalis' own push does.
    let url = redis_url();
    let queue = open(&url).await;
    const N: u64 = 9_000;
    queue.push_all("backlog", 0..N).await.unwrap();
    let moved = redis_cli(&[
        "EVAL",
        "local ids = redis.call('LRANGE', KEYS[1], 0, -1) \
         for i = 1, #ids do redis.call('ZADD', KEYS[2], 0, ids[i]) end \
         redis.call('DEL', KEYS[1]) return #ids",
        "2",
        "backlog:active",
        "backlog:scheduled",
    ]);
    assert_eq!(moved, N.to_string());
    let m = manager("q-backlog", 4).await;
    let worker = QueueWorker::builder(&m, &queue, "backlog")
        .poll_interval(Duration::from_millis(2))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    worker.start().unwrap();
    let begun = Instant::now();
    loop {
        let c = queue.counts("backlog").await.unwrap();
        if c.done >= N {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(80),
            "not done in 80 s: {c:?}, {:?}, last error {:?}",
            worker.stats(),
            worker.last_error()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = worker.stop().await;
    println!(
        "    9 000 due tasks done in {:.1?}; restarts {}",
        begun.elapsed(),
        st.restarts
    );
    m.stop().await;
}

/// Runs `redis-cli -p <port of the tests' server> args…`; its output.
fn redis_cli(args: &[&str]) -> String {
    let url = redis_url();
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let out = Command::new("redis-cli")
        .args(["-p", &port])
        .args(args)
        .output()
        .expect("redis-cli (Debian package redis-tools, which redis-server depends on)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Redis: the mark a deferral leaves before apalis acknowledges it (its attempt is owed back)
/// must not outlive an acknowledgement that never landed (the worker was killed, its apalis
/// worker failed or was aborted): a task allowed two attempts whose meta hash carries such a
/// mark — at an attempt above the count stored — runs twice, not three times, and the mark is
/// gone once it ran.
async fn a_stale_owed_mark_gives_no_free_attempt() {
    let queue = open(&redis_url()).await;
    let id = queue
        .push_with_attempts("stale-mark", 1_u64, 2)
        .await
        .unwrap();
    let meta = format!("stale-mark:meta:{id}");
    assert_eq!(redis_cli(&["HSET", &meta, "leasepool_owed:1", "1"]), "1");
    let m = manager("q-stale", 1).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let worker = QueueWorker::builder(&m, &queue, "stale-mark")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |_: u64| -> Result<(), String> {
            r.fetch_add(1, Ordering::SeqCst);
            Err("fails every time".into())
        })
        .unwrap();
    worker.start().unwrap();
    // apalis-redis retries after `attempt` seconds.
    common::until(
        "the task out of attempts",
        || async { queue.counts("stale-mark").await.unwrap() },
        |c| c.failed == 1,
    )
    .await;
    let t = queue.task("stale-mark", &id).await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "{t:?}");
    assert_eq!(t.attempts, 2, "{t:?}");
    assert_eq!(redis_cli(&["HEXISTS", &meta, "leasepool_owed:1"]), "0");
    worker.stop().await;
    m.stop().await;
}

/// Redis: a worker whose task was taken from it (apalis re-enqueued it as an orphan: the
/// worker's heartbeat looked stale, a pause, a partition) and that hands it back later marks no
/// attempt as owed — the task may already have run elsewhere, and such a mark would give it a
/// run beyond `max_attempts`. A task allowed two attempts runs twice.
async fn a_hand_back_of_a_task_taken_from_its_worker_marks_nothing() {
    let queue = open(&redis_url()).await;
    let busy = manager("q-moved-w", 1).await;
    let held = busy.acquire().await.unwrap();
    let w = QueueWorker::builder(&busy, &queue, "moved")
        .instance_name("w-moved")
        .prefetch(1)
        .lease_wait(Duration::from_secs(60))
        .poll_interval(Duration::from_millis(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    let id = queue.push_with_attempts("moved", 1_u64, 2).await.unwrap();
    w.start().unwrap();
    eventually("W holds the task", || async { w.stats().waiting == 1 }).await;
    // What apalis' orphan re-run does: out of W's in-flight set, back to the active list.
    let moved = redis_cli(&[
        "EVAL",
        "if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then \
           redis.call('RPUSH', KEYS[2], ARGV[1]) return 1 end return 0",
        "2",
        "moved:inflight:w-moved",
        "moved:active",
        &id,
    ]);
    assert_eq!(moved, "1");
    let free = manager("q-moved-x", 1).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let x = QueueWorker::builder(&free, &queue, "moved")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |_: u64| -> Result<(), String> {
            r.fetch_add(1, Ordering::SeqCst);
            Err("fails every time".into())
        })
        .unwrap();
    x.start().unwrap();
    eventually("X's first run acknowledged", || async {
        queue.task("moved", &id).await.unwrap().unwrap().attempts >= 1
    })
    .await;
    // W stops: it hands its waiting copy back (a deferral).
    let st = w.stop().await;
    assert_eq!(st.handed_back, 1, "{st:?}");
    common::until(
        "the task out of attempts",
        || async { queue.counts("moved").await.unwrap() },
        |c| c.failed == 1,
    )
    .await;
    let t = queue.task("moved", &id).await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "{t:?}");
    assert!(
        !redis_cli(&["HKEYS", &format!("moved:meta:{id}")]).contains("leasepool_owed"),
        "a mark was left"
    );
    drop(held);
    x.stop().await;
    busy.stop().await;
    free.stop().await;
}

// ---- tests in this process --------------------------------------------------------------------

async fn manager(prefix: &str, max_pools: usize) -> LeaseManager {
    let m = LeaseManager::builder()
        .name_prefix(prefix)
        .max_pools(max_pools)
        .workers_per_pool(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    m
}

async fn claims_stay_within_capacity_plus_prefetch(kind: Kind) {
    let (queue, dir) = queue_for(kind, "cap").await;
    queue.push_all("cap", 0..20_u64).await.unwrap();
    let m = manager("q-cap", 2).await;
    let gate = common::Gate::new();
    let g = gate.clone();
    let worker = QueueWorker::builder(&m, &queue, "cap")
        .prefetch(1)
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |_: u64| -> Result<(), String> {
            g.wait();
            Ok(())
        })
        .unwrap();
    worker.start().unwrap();
    eventually("two tasks running", || async {
        worker.stats().running == 2
    })
    .await;
    // Let it try to claim more for a while: it must stop at 2 running + 1 prefetched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = worker.stats();
    let c = queue.counts("cap").await.unwrap();
    assert_eq!((s.claimed, s.running, s.waiting), (3, 2, 1), "{s:?}");
    assert_eq!((c.claimed, c.pending), (3, 17), "{c:?}");
    gate.open();
    eventually("all done", || async { worker.stats().done == 20 }).await;
    let s = worker.stop().await;
    assert_eq!(
        (s.claimed, s.done, s.failed, s.put_back),
        (20, 20, 0, 0),
        "{s:?}"
    );
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn a_busy_manager_claims_nothing_and_leaves_tasks_for_others(kind: Kind) {
    let (queue, dir) = queue_for(kind, "busy").await;
    let m = manager("q-busy", 1).await;
    let held = m.acquire().owner("someone else").await.unwrap();
    queue.push_all("busy", 0..3_u64).await.unwrap();
    let worker = QueueWorker::builder(&m, &queue, "busy")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    worker.start().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(worker.stats().claimed, 0, "claimed with no lease free");
    assert_eq!(queue.counts("busy").await.unwrap().pending, 3);
    held.release().await;
    eventually("all done", || async { worker.stats().done == 3 }).await;
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn overload_puts_the_task_back_without_counting_an_attempt(kind: Kind) {
    // Prefetch 1 on a 1-pool manager whose pool someone else takes: the prefetched task waits
    // `lease_wait`, then goes back for anyone with its attempts unchanged.
    let (queue, dir) = queue_for(kind, "over").await;
    let m = manager("q-over", 1).await;
    let gate = common::Gate::new();
    let g = gate.clone();
    let worker = QueueWorker::builder(&m, &queue, "over")
        .prefetch(1)
        .lease_wait(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |n: u64| -> Result<(), String> {
            if n == 0 {
                g.wait();
            }
            Ok(())
        })
        .unwrap();
    let first = queue.push("over", 0_u64).await.unwrap();
    worker.start().unwrap();
    eventually("task 0 running", || async { worker.stats().running == 1 }).await;
    let second = queue.push("over", 1_u64).await.unwrap();
    eventually("task 1 put back", || async { worker.stats().put_back >= 1 }).await;
    eventually("task 1 unlocked", || async {
        let t = queue.task("over", &second).await.unwrap().unwrap();
        t.locked_by.is_none() && t.status == "Pending"
    })
    .await;
    let t = queue.task("over", &second).await.unwrap().unwrap();
    assert_eq!(t.attempts, 0, "a put-back is not an attempt: {t:?}");
    gate.open();
    eventually("both done", || async {
        queue.counts("over").await.unwrap().done == 2
    })
    .await;
    assert_eq!(
        queue.task("over", &first).await.unwrap().unwrap().attempts,
        1
    );
    assert_eq!(
        queue.task("over", &second).await.unwrap().unwrap().attempts,
        1
    );
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn outcomes_map_to_the_queue(kind: Kind) {
    let (queue, dir) = queue_for(kind, "outcomes").await;
    let m = manager("q-out", 2).await;
    let worker = QueueWorker::builder(&m, &queue, "outcomes")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |job: String| -> Result<(), String> {
            match job.as_str() {
                "panic" => panic!("job panicked on purpose"),
                "error" => Err("job said no".into()),
                _ => Ok(()),
            }
        })
        .unwrap();
    let panics = queue
        .push_with_attempts("outcomes", "panic".to_string(), 2)
        .await
        .unwrap();
    let errors = queue
        .push_with_attempts("outcomes", "error".to_string(), 3)
        .await
        .unwrap();
    let fine = queue.push("outcomes", "fine".to_string()).await.unwrap();
    worker.start().unwrap();
    // Redis retries after `attempt` seconds: the "error" task's three attempts take 3 s.
    common::until(
        "everything settled",
        || async { queue.counts("outcomes").await.unwrap() },
        |c| c.pending == 0 && c.claimed == 0,
    )
    .await;
    // Out of attempts: `Failed` on SQLite, `Killed` (the dead set) on Redis.
    let spent = |status: &str| matches!(status, "Failed" | "Killed");
    let p = queue.task("outcomes", &panics).await.unwrap().unwrap();
    assert!(spent(&p.status) && p.attempts == 2, "{p:?}");
    assert!(
        p.last_result
            .as_deref()
            .unwrap_or("")
            .contains("job panicked on purpose"),
        "{p:?}"
    );
    let e = queue.task("outcomes", &errors).await.unwrap().unwrap();
    assert!(spent(&e.status) && e.attempts == 3, "{e:?}");
    assert!(
        e.last_result
            .as_deref()
            .unwrap_or("")
            .contains("job said no"),
        "{e:?}"
    );
    let f = queue.task("outcomes", &fine).await.unwrap().unwrap();
    assert_eq!((f.status.as_str(), f.attempts), ("Done", 1), "{f:?}");
    let st = worker.stop().await;
    assert_eq!((st.done, st.failed, st.retried), (1, 5, 0), "{st:?}");
    let c = queue.counts("outcomes").await.unwrap();
    assert_eq!((c.done, c.failed), (1, 2), "{c:?}");
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A put-back whose worker has not given its attempt back yet (it lost the race, or died) and
/// that another worker runs first still costs no attempt: a task allowed one attempt runs and is
/// done. On Redis the deferred task is due again within a second and anyone may take it (the
/// attempt is owed in the task); on SQLite the row stays locked until its worker gives it back.
/// (Before the fix, Redis killed the task unrun: "out of attempts (1)".)
async fn a_deferral_taken_first_by_another_worker_costs_no_attempt(kind: Kind) {
    let (queue, dir) = queue_for(kind, "owed").await;
    // Worker A: its only pool is held here, so its prefetched task is put back after 100 ms,
    // and it gives deferrals back only after 3 s.
    let busy = manager("q-owed-a", 1).await;
    let held = busy.acquire().await.unwrap();
    let a = QueueWorker::builder(&busy, &queue, "owed")
        .prefetch(1)
        .lease_wait(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(5))
        .hold_deferrals(Duration::from_secs(3))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    let id = queue.push_with_attempts("owed", 7_u64, 1).await.unwrap();
    a.start().unwrap();
    eventually("A put the task back", || async { a.stats().put_back >= 1 }).await;
    let free = manager("q-owed-b", 1).await;
    let b = QueueWorker::builder(&free, &queue, "owed")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    b.start().unwrap();
    common::until(
        "the task settled",
        || async { queue.counts("owed").await.unwrap() },
        |c| c.pending == 0 && c.claimed == 0,
    )
    .await;
    let t = queue.task("owed", &id).await.unwrap().unwrap();
    assert_eq!(
        t.status,
        "Done",
        "{t:?}; A {:?}, B {:?}",
        a.stats(),
        b.stats()
    );
    assert_eq!(t.attempts, 1, "one run, the put-backs not counted: {t:?}");
    assert_eq!((a.stats().failed, b.stats().failed), (0, 0));
    // A's late give-back finds the task done and changes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = queue.task("owed", &id).await.unwrap().unwrap();
    assert_eq!(
        (later.status.as_str(), later.attempts),
        ("Done", 1),
        "{later:?}"
    );
    assert_eq!(queue.counts("owed").await.unwrap().done, 1);
    drop(held);
    a.stop().await;
    b.stop().await;
    busy.stop().await;
    free.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// SQLite: a worker that dies after apalis wrote its deferral (`Pending`, still locked by it)
/// but before it unlocked the row does not strand the task: apalis' fetch takes only unlocked
/// rows and its orphan re-run only claimed or running ones, so the other workers give such rows
/// back once the dead worker's heartbeat is older than the orphan timeout. (Before the fix the
/// task was never run and counted as pending forever.)
async fn a_dead_workers_deferred_task_runs_again() {
    let dir = temp_dir("dead-deferral");
    let db = dir.join("q.db");
    let queue = open(db.to_str().unwrap()).await;
    let id = queue.push("ghost", 5_u64).await.unwrap();
    {
        // What a worker that died in that window leaves behind.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute(
            "INSERT INTO Workers (id, worker_type, storage_name, layers, last_seen) \
             VALUES ('ghost-worker', 'ghost', 'SqliteStorage', '', strftime('%s', 'now') - 3600)",
            [],
        )
        .unwrap();
        let changed = c
            .execute(
                "UPDATE Jobs SET status = 'Pending', lock_by = 'ghost-worker', \
                 lock_at = strftime('%s', 'now') - 3600, attempts = 1 WHERE id = ?1",
                [&id],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let m = manager("q-ghost", 1).await;
    let worker = QueueWorker::builder(&m, &queue, "ghost")
        .poll_interval(Duration::from_millis(5))
        .orphan_timeout(Duration::from_secs(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    worker.start().unwrap();
    eventually("the stranded task done", || async {
        queue.counts("ghost").await.unwrap().done == 1
    })
    .await;
    let t = queue.task("ghost", &id).await.unwrap().unwrap();
    assert_eq!((t.status.as_str(), t.attempts), ("Done", 1), "{t:?}");
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `counts()` is one snapshot: while tasks are claimed, fail, wait for their retry and finish,
/// every reading adds up to the tasks pushed. (Read key by key, Redis' counts missed a task
/// acknowledged between two reads: a CI run saw a queue "settled" with a task still scheduled.)
async fn counts_add_up_while_tasks_move(kind: Kind) {
    const N: u64 = 60;
    let (queue, dir) = queue_for(kind, "snapshot").await;
    let m = manager("q-snap", 2).await;
    let tried = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let worker = QueueWorker::builder(&m, &queue, "snapshot")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |n: u64| -> Result<(), String> {
            // Each task fails its first attempt, so every task also moves through the retries.
            if tried.lock().unwrap().insert(n) {
                Err(format!("task {n}: again, please"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    queue.push_all("snapshot", 0..N).await.unwrap();
    worker.start().unwrap();
    let begun = Instant::now();
    let mut readings = 0;
    loop {
        let c = queue.counts("snapshot").await.unwrap();
        readings += 1;
        assert_eq!(c.total(), N, "reading {readings} does not add up: {c:?}");
        if c.done == N {
            break;
        }
        assert!(
            begun.elapsed() < common::EVENTUALLY * 3,
            "not done after {:?}: {c:?}",
            begun.elapsed()
        );
    }
    println!("    {kind:?}: {readings} readings, each adding up to {N}");
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A queue payload that is also a process job: crashes its child on the first attempt (a marker
/// file tells), then answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CrashOnce {
    marker: PathBuf,
    n: u64,
}

impl leasepool::process::ProcessJob for CrashOnce {
    const NAME: &'static str = "queue-test.crash-once.v1";
    type Output = u64;
    fn run(self) -> u64 {
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.marker)
            .is_ok()
        {
            std::process::abort();
        }
        self.n * 2
    }
}

/// Spins past its lease on the first attempt (a marker file tells), then answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RunawayOnce {
    marker: PathBuf,
}

impl leasepool::process::ProcessJob for RunawayOnce {
    const NAME: &'static str = "queue-test.runaway-once.v1";
    type Output = ();
    fn run(self) {
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.marker)
            .is_ok()
        {
            loop {
                std::hint::spin_loop();
            }
        }
    }
}

fn process_jobs() -> leasepool::process::Jobs {
    leasepool::process::Jobs::new()
        .register::<CrashOnce>()
        .register::<RunawayOnce>()
}

async fn a_task_killed_at_hard_expiry_is_retried(kind: Kind) {
    // Process backend: a runaway attempt is killed when its lease is revoked (`Expired`); the
    // queue runs it again.
    let (queue, dir) = queue_for(kind, "expiry").await;
    let m = LeaseManager::builder()
        .backend(leasepool::Backend::Process)
        .process_jobs(process_jobs())
        .name_prefix("q-expiry")
        .max_pools(1)
        .workers_per_pool(1)
        .lease_grace(Duration::from_millis(50))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let worker = QueueWorker::builder(&m, &queue, RunawayOnce::NAME)
        .poll_interval(Duration::from_millis(5))
        .lease_for(Duration::from_millis(300))
        .build_calls::<RunawayOnce>()
        .unwrap();
    let id = queue
        .push(
            RunawayOnce::NAME,
            RunawayOnce {
                marker: dir.join("ran"),
            },
        )
        .await
        .unwrap();
    worker.start().unwrap();
    common::until(
        "the runaway task done on its second attempt",
        || async { queue.task(RunawayOnce::NAME, &id).await.unwrap().unwrap() },
        |t| t.status == "Done",
    )
    .await;
    let t = queue.task(RunawayOnce::NAME, &id).await.unwrap().unwrap();
    assert_eq!(t.attempts, 2, "{t:?}");
    let st = worker.stop().await;
    assert_eq!((st.retried, st.done, st.failed), (1, 1, 0), "{st:?}");
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn process_jobs_from_the_queue_retry_a_crash_in_a_child(kind: Kind) {
    let (queue, dir) = queue_for(kind, "proc").await;
    let m = LeaseManager::builder()
        .backend(leasepool::Backend::Process)
        .process_jobs(process_jobs())
        .name_prefix("q-proc")
        .max_pools(2)
        .workers_per_pool(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let worker = QueueWorker::builder(&m, &queue, CrashOnce::NAME)
        .poll_interval(Duration::from_millis(5))
        .build_calls::<CrashOnce>()
        .unwrap();
    let crashes = queue
        .push(
            CrashOnce::NAME,
            CrashOnce {
                marker: dir.join("crashed"),
                n: 1,
            },
        )
        .await
        .unwrap();
    let fine = queue
        .push(
            CrashOnce::NAME,
            CrashOnce {
                marker: dir.join("missing-dir/never"),
                n: 2,
            },
        )
        .await
        .unwrap();
    worker.start().unwrap();
    eventually("both done", || async {
        queue.counts(CrashOnce::NAME).await.unwrap().done == 2
    })
    .await;
    let c = queue
        .task(CrashOnce::NAME, &crashes)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.attempts),
        ("Done", 2),
        "crashed once, then done: {c:?}"
    );
    let f = queue.task(CrashOnce::NAME, &fine).await.unwrap().unwrap();
    assert_eq!((f.status.as_str(), f.attempts), ("Done", 1), "{f:?}");
    let st = worker.stop().await;
    assert_eq!((st.done, st.retried, st.failed), (2, 1, 0), "{st:?}");
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn stop_lets_running_tasks_finish_and_hands_back_the_rest(kind: Kind) {
    let (queue, dir) = queue_for(kind, "stop").await;
    let m = manager("q-stop", 2).await;
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = Arc::clone(&started);
    let gate = common::Gate::new();
    let g = gate.clone();
    let worker = QueueWorker::builder(&m, &queue, "stop")
        .prefetch(1)
        .shutdown_timeout(Duration::from_millis(400))
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |n: u64| -> Result<(), String> {
            s2.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                std::thread::sleep(Duration::from_millis(150)); // finishes within the timeout
            } else {
                g.wait(); // outruns it
            }
            Ok(())
        })
        .unwrap();
    let ids = [
        queue.push("stop", 0_u64).await.unwrap(),
        queue.push("stop", 1_u64).await.unwrap(),
        queue.push("stop", 2_u64).await.unwrap(),
    ];
    worker.start().unwrap();
    eventually("2 running, 1 waiting", || async {
        let s = worker.stats();
        s.running == 2 && s.waiting == 1
    })
    .await;
    let begun = Instant::now();
    let st = worker.stop().await;
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    assert_eq!((st.done, st.handed_back), (1, 2), "{st:?}");
    assert!(!worker.is_running());
    let t0 = queue.task("stop", &ids[0]).await.unwrap().unwrap();
    assert_eq!(t0.status, "Done");
    for id in &ids[1..] {
        let t = queue.task("stop", id).await.unwrap().unwrap();
        assert_eq!(
            (t.status.as_str(), t.attempts, t.locked_by.as_deref()),
            ("Pending", 0, None),
            "{t:?}"
        );
    }
    gate.open();
    // The handed-back tasks run on the next start.
    worker.start().unwrap();
    eventually("all done", || async {
        queue.counts("stop").await.unwrap().done == 3
    })
    .await;
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn an_idle_worker_takes_tasks_pushed_later(kind: Kind) {
    // Heartbeats every 20 s: nothing but the poll interval may wake an idle worker. A poll
    // interval as short as a fetch makes apalis' interval tick often fire while a fetch is
    // in flight (the case where its strategy armed no timer and the worker went deaf).
    let (queue, dir) = queue_for(kind, "idle").await;
    let m = manager("q-idle", 2).await;
    let worker = QueueWorker::builder(&m, &queue, "idle")
        .poll_interval(Duration::from_millis(1))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    worker.start().unwrap();
    for round in 1..=10_u64 {
        // Idle long enough for many empty fetches, then one task.
        tokio::time::sleep(Duration::from_millis(300)).await;
        queue.push("idle", round).await.unwrap();
        let pushed = Instant::now();
        while worker.stats().done < round {
            assert!(
                pushed.elapsed() < Duration::from_secs(5),
                "round {round}: a task pushed to an idle worker was not taken within 5 s (poll interval 1 ms)"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn bad_settings_are_refused_by_name(kind: Kind) {
    let (queue, dir) = queue_for(kind, "bad").await;
    let m = manager("q-bad", 1).await;
    let refuse = |b: leasepool::queue::QueueWorkerBuilder<()>, what: &str| match b
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
    {
        Err(QueueError::InvalidArgument(t)) => assert!(t.contains(what), "{t}"),
        other => panic!("expected InvalidArgument naming {what}: {other:?}"),
    };
    refuse(QueueWorker::builder(&m, &queue, ""), "queue name");
    refuse(
        QueueWorker::builder(&m, &queue, "q").poll_interval(Duration::ZERO),
        "poll_interval",
    );
    refuse(
        QueueWorker::builder(&m, &queue, "q").orphan_timeout(Duration::from_millis(10)),
        "orphan_timeout",
    );
    refuse(
        QueueWorker::builder(&m, &queue, "q").lease_wait(Duration::ZERO),
        "lease_wait",
    );
    refuse(
        QueueWorker::builder(&m, &queue, "q").lease_for(Duration::ZERO),
        "lease_for",
    );
    assert!(matches!(
        queue.push_with_attempts("q", 1_u64, 0).await,
        Err(QueueError::InvalidArgument(t)) if t.contains("max_attempts")
    ));
    let w = QueueWorker::builder(&m, &queue, "q")
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    w.start().unwrap();
    assert!(matches!(w.start(), Err(QueueError::AlreadyRunning(_))));
    w.stop().await;
    let err = Queue::sqlite("/proc/no/such/dir/q.db").await.unwrap_err();
    assert!(
        matches!(err, QueueError::Store(ref t) if t.contains("/proc/no/such/dir")),
        "{err}"
    );
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

// ---- lifecycle under churn (found by an adversarial pass) --------------------------------------

/// CPU time of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Percent of one core this process used over `d` (100 ticks per second).
async fn cpu_over(d: Duration) -> f64 {
    let t0 = cpu_ticks();
    tokio::time::sleep(d).await;
    (cpu_ticks() - t0) as f64 / d.as_secs_f64()
}

/// How many times each task ran.
type Seen = Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>;

/// (lost, tasks run more than once)
fn tally(seen: &Seen, n: u64) -> (u64, u64) {
    let s = seen.lock().unwrap();
    let lost = (0..n).filter(|k| !s.contains_key(k)).count() as u64;
    (lost, s.values().filter(|c| **c > 1).count() as u64)
}

fn counting_job(
    seen: &Seen,
    ms: u64,
) -> impl Fn(u64) -> Result<(), String> + Send + Sync + 'static {
    let seen = Arc::clone(seen);
    move |n: u64| {
        std::thread::sleep(Duration::from_millis(ms + n % 7));
        *seen.lock().unwrap().entry(n).or_default() += 1;
        Ok(())
    }
}

async fn start_then_stop_at_once_is_prompt_and_leaves_nothing_claimed(kind: Kind) {
    // `stop` right after a restart once found the last run's stopped apalis worker, took it
    // for this run's, and waited out its timeouts while the new one claimed and handed back
    // hundreds of tasks.
    let (queue, dir) = queue_for(kind, "once").await;
    queue.push_all("once", 0..30_u64).await.unwrap();
    let m = manager("q-once", 2).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, "once")
        .poll_interval(Duration::from_millis(5))
        .shutdown_timeout(Duration::from_secs(1))
        .build_blocking(counting_job(&seen, 100))
        .unwrap();
    worker.start().unwrap();
    eventually("one done", || async { worker.stats().done >= 1 }).await;
    worker.stop().await;
    for round in 0..3 {
        let before = worker.stats();
        worker.start().unwrap();
        let begun = Instant::now();
        let after = worker.stop().await;
        let took = begun.elapsed();
        let c = queue.counts("once").await.unwrap();
        assert!(
            took < Duration::from_millis(1500),
            "round {round}: stop took {took:?}"
        );
        assert!(
            after.claimed - before.claimed <= 3,
            "round {round}: {} claims in a start+stop",
            after.claimed - before.claimed
        );
        assert_eq!(
            c.claimed, 0,
            "round {round}: tasks still claimed after stop: {c:?}"
        );
    }
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn a_stopped_manager_pauses_claiming_and_loses_nothing(kind: Kind) {
    // Its manager stopped under it, a worker once claimed and put back tasks in a busy loop,
    // and on SQLite a put-back acknowledged after the stop's hand-back stayed locked for good.
    let (queue, dir) = queue_for(kind, "mstop").await;
    const N: u64 = 100;
    queue.push_all("mstop", 0..N).await.unwrap();
    let m = manager("q-mstop", 2).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, "mstop")
        .prefetch(1)
        .poll_interval(Duration::from_millis(5))
        .shutdown_timeout(Duration::from_secs(2))
        .build_blocking(counting_job(&seen, 20))
        .unwrap();
    worker.start().unwrap();
    eventually("20 done", || async { worker.stats().done >= 20 }).await;
    m.stop().await;
    let before = worker.stats();
    let cpu = cpu_over(Duration::from_secs(3)).await;
    let after = worker.stats();
    assert!(
        cpu < 15.0,
        "{cpu:.1} % of a core while its manager is stopped"
    );
    assert!(
        after.claimed - before.claimed <= 12,
        "{} claims in 3 s with the manager stopped",
        after.claimed - before.claimed
    );
    let begun = Instant::now();
    worker.stop().await;
    assert!(begun.elapsed() < Duration::from_secs(8));
    // A new manager and worker finish every task; none failed, none lost.
    let m2 = manager("q-mstop2", 2).await;
    let w2 = QueueWorker::builder(&m2, &queue, "mstop")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(counting_job(&seen, 0))
        .unwrap();
    w2.start().unwrap();
    common::until(
        "every task done by the new worker",
        || async { queue.counts("mstop").await.unwrap() },
        |c| c.done >= N,
    )
    .await;
    w2.stop().await;
    let c = queue.counts("mstop").await.unwrap();
    assert_eq!(
        (c.done, c.failed, c.pending, c.claimed),
        (N, 0, 0, 0),
        "{c:?}"
    );
    assert_eq!(tally(&seen, N).0, 0, "lost tasks");
    m2.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn start_stop_churn_loses_and_repeats_nothing(kind: Kind) {
    let (queue, dir) = queue_for(kind, "churn").await;
    const N: u64 = 300;
    queue.push_all("churn", 0..N).await.unwrap();
    let m = manager("q-churn", 3).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, "churn")
        .prefetch(2)
        .poll_interval(Duration::from_millis(2))
        .shutdown_timeout(Duration::from_secs(3))
        .build_blocking(counting_job(&seen, 3))
        .unwrap();
    let mut max_stop = Duration::ZERO;
    for round in 0..400_u64 {
        worker.start().unwrap();
        tokio::time::sleep(Duration::from_millis(round * 7 % 60)).await;
        let begun = Instant::now();
        let st = worker.stop().await;
        max_stop = max_stop.max(begun.elapsed());
        let c = queue.counts("churn").await.unwrap();
        assert_eq!(
            (st.running, st.waiting, c.claimed),
            (0, 0, 0),
            "round {round}: {st:?} {c:?}"
        );
        if c.done >= N {
            break;
        }
    }
    let (lost, repeated) = tally(&seen, N);
    println!("    {kind:?}: longest stop {max_stop:?}, lost {lost}, run twice {repeated}");
    assert!(
        max_stop < Duration::from_secs(2),
        "a stop took {max_stop:?}"
    );
    assert_eq!((lost, repeated), (0, 0));
    let c = queue.counts("churn").await.unwrap();
    assert_eq!(
        (c.done, c.pending, c.claimed, c.failed),
        (N, 0, 0, 0),
        "{c:?}"
    );
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn a_task_that_does_not_decode_fails_alone(kind: Kind) {
    // apalis decoded payloads before our service: one bad task failed every fetch, and each
    // replacement worker met it first again — the whole queue stalled.
    let (queue, dir) = queue_for(kind, "decode").await;
    queue.push_all("decode", 0..5_u64).await.unwrap();
    let bad = queue
        .push_with_attempts("decode", "not a number".to_string(), 2)
        .await
        .unwrap();
    queue.push_all("decode", 5..10_u64).await.unwrap();
    let m = manager("q-decode", 2).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, "decode")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(counting_job(&seen, 0))
        .unwrap();
    worker.start().unwrap();
    common::until(
        "the ten numbers done and the string failed",
        || async { queue.counts("decode").await.unwrap() },
        |c| c.done == 10 && c.failed == 1,
    )
    .await;
    let t = queue.task("decode", &bad).await.unwrap().unwrap();
    assert!(
        t.last_result
            .as_deref()
            .unwrap_or("")
            .contains("payload is not a u64"),
        "{t:?}"
    );
    let st = worker.stop().await;
    assert_eq!((st.restarts, st.failed, st.done), (0, 1, 10), "{st:?}");
    assert_eq!(tally(&seen, 10), (0, 0));
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn start_while_a_stop_is_under_way_is_refused(kind: Kind) {
    // A start that slipped in while a stop ran got a second supervisor beside the first:
    // tasks were stranded locked, others ran twice.
    let (queue, dir) = queue_for(kind, "race").await;
    const N: u64 = 200;
    queue.push_all("race", 0..N).await.unwrap();
    let m = manager("q-race", 2).await;
    let seen: Seen = Arc::default();
    let worker = Arc::new(
        QueueWorker::builder(&m, &queue, "race")
            .poll_interval(Duration::from_millis(2))
            .shutdown_timeout(Duration::from_secs(3))
            .build_blocking(counting_job(&seen, 20))
            .unwrap(),
    );
    let mut refused = 0;
    for round in 0..40_u64 {
        worker.start().unwrap();
        tokio::time::sleep(Duration::from_millis(10 + round % 20)).await;
        let w = Arc::clone(&worker);
        let stop = actix_rt::spawn(async move { w.stop().await });
        tokio::time::sleep(Duration::from_millis(round % 5)).await;
        match worker.start() {
            Err(QueueError::Stopping(_)) => refused += 1,
            // The stop had already finished: this start is a normal one.
            Ok(()) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
        stop.await.unwrap();
        worker.stop().await;
        let c = queue.counts("race").await.unwrap();
        assert_eq!(
            c.claimed, 0,
            "round {round}: claimed after both stops: {c:?}"
        );
        if c.done >= N {
            break;
        }
    }
    assert!(
        refused > 0,
        "no start was ever refused: the race was not exercised"
    );
    // Whatever is left runs on one more worker.
    worker.start().unwrap();
    common::until(
        "all done",
        || async { queue.counts("race").await.unwrap() },
        |c| c.done >= N,
    )
    .await;
    let st = worker.stop().await;
    assert_eq!(st.restarts, 0, "{st:?}");
    let (lost, repeated) = tally(&seen, N);
    assert_eq!((lost, repeated), (0, 0));
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

// ---- the runner -------------------------------------------------------------------------------

fn main() {
    leasepool::process::init(process_jobs());
    if std::env::var_os("LPQ_TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("LPQ_TRACE"))
            .with_writer(std::io::stderr)
            .init();
    }
    if std::env::var(ROLE).as_deref() == Ok("work") {
        worker_role();
    }
    let mut all: Vec<common::NamedTest> = Vec::new();
    // In-process tests run against both stores.
    macro_rules! each_store {
        ($($name:ident),* $(,)?) => {$(
            for kind in [Kind::Sqlite, Kind::Redis] {
                let name = format!("{}::{kind:?}", stringify!($name)).to_lowercase();
                all.push((name, Box::new(move || Box::pin($name(kind)))));
            }
        )*};
    }
    each_store![
        claims_stay_within_capacity_plus_prefetch,
        a_busy_manager_claims_nothing_and_leaves_tasks_for_others,
        overload_puts_the_task_back_without_counting_an_attempt,
        outcomes_map_to_the_queue,
        counts_add_up_while_tasks_move,
        a_deferral_taken_first_by_another_worker_costs_no_attempt,
        process_jobs_from_the_queue_retry_a_crash_in_a_child,
        a_task_killed_at_hard_expiry_is_retried,
        stop_lets_running_tasks_finish_and_hands_back_the_rest,
        an_idle_worker_takes_tasks_pushed_later,
        bad_settings_are_refused_by_name,
        start_then_stop_at_once_is_prompt_and_leaves_nothing_claimed,
        a_stopped_manager_pauses_claiming_and_loses_nothing,
        start_stop_churn_loses_and_repeats_nothing,
        a_task_that_does_not_decode_fails_alone,
        start_while_a_stop_is_under_way_is_refused,
    ];
    all.extend(common::named_tests![
        a_dead_workers_deferred_task_runs_again,
        two_worker_processes_do_2000_tasks_exactly_once,
        the_bigger_instance_takes_its_fair_share,
        a_killed_instance_tasks_are_run_by_another_after_the_orphan_timeout,
        redis_three_workers_share_10000_tasks_and_survive_a_sigkill,
        a_large_due_backlog_on_redis_does_not_stop_fetching,
        a_stale_owed_mark_gives_no_free_attempt,
        a_hand_back_of_a_task_taken_from_its_worker_marks_nothing,
    ]);
    let ran = common::run_named(
        all,
        Duration::from_secs(120),
        |test| actix_rt::System::new().block_on(test),
        |_| {},
        |_| {},
    );
    stop_redis();
    ran.finish();
}
