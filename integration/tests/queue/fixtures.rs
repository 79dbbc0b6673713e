//! What the queue tests share: the stores (a private redis-server, temp SQLite files), the
//! worker processes (this binary in the role `LP_QUEUE_ROLE=work`), managers, job helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueWorker};
use leasepool::LeaseManager;

pub(crate) const ROLE: &str = "LP_QUEUE_ROLE";

/// The task a worker process's job runs by aborting the process.
pub(crate) const ABORT_TASK: u64 = 999_999;

/// Opens a queue store: a `redis://` or `postgres://` URL or a SQLite file path.
pub(crate) async fn open(store: &str) -> Queue {
    if store.starts_with("redis://") {
        Queue::redis(store).await.unwrap()
    } else if store.starts_with("postgres://") {
        Queue::postgres(store).await.unwrap()
    } else {
        Queue::sqlite(store).await.unwrap()
    }
}

/// A private redis-server for this test binary: a free loopback port, a temp dir, no
/// persistence; killed when the binary ends (see `main`).
pub(crate) struct RedisServer {
    child: Child,
    url: String,
    dir: PathBuf,
}

pub(crate) static REDIS: std::sync::Mutex<Option<RedisServer>> = std::sync::Mutex::new(None);

pub(crate) fn redis_url() -> String {
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
    let child = start_watched(&watchdog, "redis-server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("redis://127.0.0.1:{port}/");
    *slot = Some(RedisServer {
        child,
        url: url.clone(),
        dir,
    });
    url
}

pub(crate) fn stop_redis() {
    if let Some(mut r) = REDIS.lock().unwrap().take() {
        stop_watched(&mut r.child);
        let _ = std::fs::remove_dir_all(&r.dir);
    }
}

/// Starts `script` — a server and the watchdog that ends it if this binary dies — in a shell,
/// and waits (at most 30 s) until `ready`.
pub(crate) fn start_watched(script: &str, what: &str, ready: impl Fn() -> bool) -> Child {
    let child = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start sh for {what}: {e}"));
    let begun = Instant::now();
    while !ready() {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "{what} was not ready in 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Stops a server started by [`start_watched`]: SIGTERM to its shell, whose trap stops it.
pub(crate) fn stop_watched(shell: &mut Child) {
    let _ = Command::new("kill").arg(shell.id().to_string()).status();
    let _ = shell.wait();
}

/// Where an in-process test keeps its queue.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Sqlite,
    Redis,
    Postgres,
}

/// The stores an in-process test runs against (`#[testkit::test(each = STORES)]`): the test
/// `module::name` runs as `module::name::sqlite`, `module::name::redis` and
/// `module::name::postgres`.
pub(crate) const STORES: &[(&str, Kind)] = &[
    ("sqlite", Kind::Sqlite),
    ("redis", Kind::Redis),
    ("postgres", Kind::Postgres),
];

pub(crate) async fn queue_for(kind: Kind, tag: &str) -> (Queue, PathBuf) {
    let dir = temp_dir(tag);
    let q = match kind {
        Kind::Sqlite => open(dir.join("q.db").to_str().unwrap()).await,
        Kind::Redis => open(&redis_url()).await,
        Kind::Postgres => open(&crate::postgres_server::postgres_url()).await,
    };
    (q, dir)
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lp-queue-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn results_db(path: &Path) -> rusqlite::Connection {
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
pub(crate) fn record(results: &Path, task: u64) -> Result<(), String> {
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

pub(crate) async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    f: impl FnMut() -> F,
) {
    testkit::until(what, f, |b| *b).await;
}

// ---- the worker process -----------------------------------------------------------------------

/// `LP_QUEUE_ROLE=work <store> <queue> <results> <max_pools> <task_ms> <orphan_s> <exit_at_done>`:
/// runs a QueueWorker; prints `ready` once claiming; stops once the queue has `exit_at_done`
/// tasks done and none pending or claimed (0: never).
pub(crate) fn worker_role() -> ! {
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
                if task == ABORT_TASK {
                    // A job that takes its process down (an abort, the OOM killer, a bad FFI call).
                    record(&results, task)?;
                    std::process::abort();
                }
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

pub(crate) struct Worker {
    pub(crate) child: Child,
}

impl Worker {
    pub(crate) fn spawn(
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

    pub(crate) fn wait(mut self, within: Duration) -> std::process::ExitStatus {
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
pub(crate) fn results_of(path: &Path) -> (i64, i64, Vec<(i64, i64)>) {
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

/// Runs `redis-cli -p <port of the tests' server> args…`; its output.
pub(crate) fn redis_cli(args: &[&str]) -> String {
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

pub(crate) async fn manager(prefix: &str, max_pools: usize) -> LeaseManager {
    let m = LeaseManager::builder()
        .name_prefix(prefix)
        .max_pools(max_pools)
        .workers_per_pool(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    m
}

/// A queue payload that is also a process job: crashes its child on the first attempt (a marker
/// file tells), then answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CrashOnce {
    pub(crate) marker: PathBuf,
    pub(crate) n: u64,
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
pub(crate) struct RunawayOnce {
    pub(crate) marker: PathBuf,
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

pub(crate) fn process_jobs() -> leasepool::process::Jobs {
    leasepool::process::Jobs::new()
        .register::<CrashOnce>()
        .register::<RunawayOnce>()
        .register::<PanicOnEncode>()
}

/// CPU time of this process, in clock ticks.
pub(crate) fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Percent of one core this process used over `d` (100 ticks per second).
pub(crate) async fn cpu_over(d: Duration) -> f64 {
    let t0 = cpu_ticks();
    tokio::time::sleep(d).await;
    (cpu_ticks() - t0) as f64 / d.as_secs_f64()
}

/// How many times each task ran.
pub(crate) type Seen = Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>;

/// (lost, tasks run more than once)
pub(crate) fn tally(seen: &Seen, n: u64) -> (u64, u64) {
    let s = seen.lock().unwrap();
    let lost = (0..n).filter(|k| !s.contains_key(k)).count() as u64;
    (lost, s.values().filter(|c| **c > 1).count() as u64)
}

pub(crate) fn counting_job(
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

// ---- writing straight into a store: what no push would make ------------------------------------

/// A connection to the tests' redis-server.
pub(crate) fn redis_conn() -> redis::Connection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Writes a task into the Redis queue `queue` by hand: its payload (`None`: none), its meta
/// fields, first in the active list.
pub(crate) fn raw_redis_task(queue: &str, id: &str, data: Option<&[u8]>, meta: &[(&str, &[u8])]) {
    let mut c = redis_conn();
    if let Some(data) = data {
        let _: () = redis::cmd("HSET")
            .arg(format!("{queue}:data"))
            .arg(id)
            .arg(data)
            .query(&mut c)
            .unwrap();
    }
    for (field, value) in meta {
        let _: () = redis::cmd("HSET")
            .arg(format!("{queue}:meta:{id}"))
            .arg(*field)
            .arg(*value)
            .query(&mut c)
            .unwrap();
    }
    let _: () = redis::cmd("RPUSH")
        .arg(format!("{queue}:active"))
        .arg(id)
        .query(&mut c)
        .unwrap();
}

/// A SQLite connection to a queue file, to write rows by hand.
pub(crate) fn raw_sqlite(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Inserts a row into the SQLite queue `queue` by hand: `columns` are SQL expressions for
/// (job, id, attempts, max_attempts, run_at, metadata).
pub(crate) fn raw_sqlite_row(db: &Path, queue: &str, columns: [&str; 6]) {
    let [job, id, attempts, max_attempts, run_at, metadata] = columns;
    raw_sqlite(db)
        .execute(
            &format!(
                "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, \
                 priority, metadata) VALUES ({job}, {id}, ?1, 'Pending', {attempts}, \
                 {max_attempts}, {run_at}, 0, {metadata})"
            ),
            [queue],
        )
        .unwrap();
}

// ---- what the queue logs -------------------------------------------------------------------------

/// A WARN or ERROR event of leasepool's queue, as logged.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub(crate) level: tracing::Level,
    pub(crate) fields: std::collections::BTreeMap<String, String>,
}

static LOGGED: std::sync::Mutex<Vec<Logged>> = std::sync::Mutex::new(Vec::new());

struct KeepQueueLogs;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for KeepQueueLogs {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN || !meta.target().starts_with("leasepool::queue") {
            return;
        }
        struct Fields(std::collections::BTreeMap<String, String>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.insert(f.name().to_owned(), format!("{v:?}"));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.insert(f.name().to_owned(), v.to_owned());
            }
        }
        let mut fields = Fields(Default::default());
        event.record(&mut fields);
        LOGGED.lock().unwrap().push(Logged {
            level: *meta.level(),
            fields: fields.0,
        });
    }
}

/// Keeps leasepool's queue WARN and ERROR events for [`logged`] (installed by `main` unless
/// `LPQ_TRACE` prints logs instead).
pub(crate) fn keep_queue_logs() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let subscriber = tracing_subscriber::registry().with(KeepQueueLogs);
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
}

/// The queue's WARN and ERROR events about task `id` so far.
pub(crate) fn logged(id: &str) -> Vec<Logged> {
    LOGGED
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.fields.get("task").map(String::as_str) == Some(id))
        .cloned()
        .collect()
}

/// A process job whose output's `Serialize` panics (in the child).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct PanicOnEncode;

/// An output that cannot be encoded.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("this output refuses to be encoded")
    }
}

impl leasepool::process::ProcessJob for PanicOnEncode {
    const NAME: &'static str = "queue-test.panic-on-encode.v1";
    type Output = Unencodable;
    fn run(self) -> Unencodable {
        Unencodable
    }
}

/// A blocking queue job that waits until `gate` opens, then succeeds: a task that stays
/// running while a test looks at the store or the worker.
pub(crate) fn gated(
    gate: &testkit::Gate,
) -> impl Fn(u64) -> Result<(), String> + Send + Sync + 'static {
    let g = gate.clone();
    move |_| {
        g.wait();
        Ok(())
    }
}
