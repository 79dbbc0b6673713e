//! leasepool's peer benchmark harness.
//!
//! `cargo run --release -p leasepool-bench -- [--quick] [--out DIR] [--no-python]`; the queue
//! rows (Q1 on Redis and PostgreSQL over worker processes, W, Q2, the idle cost) run alone with
//! `--queue`.
//!
//! Every system runs the same work in the same process and run; each figure is the median of
//! several rounds after a warm-up round. Figures from different runs or machines are not
//! comparable — the ratios within one run are the result.

mod handoff;
mod measure;
mod peers;
mod process;
mod python;
mod queue;
mod queue_backlog;
mod queue_wake;
#[cfg(feature = "metrics")]
mod recording;
mod rejection;
mod report;
mod retry_after;
mod scenarios;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use measure::median;
use report::{Better, Curve, Scenario, Target};
use scenarios as sc;

/// The system under test, as named in the report.
pub const LEASEPOOL: &str = "leasepool";
const RAW_OFF: &str = "SyncArbiter, caller on another thread";
const RAW_ON: &str = "SyncArbiter, caller on its System";
const SPAWN_BLOCKING: &str = "tokio spawn_blocking";
const SEMAPHORE: &str = "Semaphore + spawn_blocking";
const SEMAPHORE_ONLY: &str = "tokio Semaphore";
const WEB_BLOCK: &str = "actix-web web::block";
const DEADPOOL: &str = "deadpool unmanaged";
const DEADPOOL_BLOCKING: &str = "deadpool + spawn_blocking";
const PYTHON: &str = "Python leasepool 0.1.3";

struct Params {
    quick: bool,
    /// Scenario ids to run (`--only S1,S8`); empty = all.
    only: Vec<String>,
    rounds: usize,
    s1_ops: usize,
    s2_ops: usize,
    s3_jobs: usize,
    s4_tasks: usize,
    s4_sleep: Duration,
    s4_handoff_rounds: usize,
    s5_waiters: usize,
    s6_ops: usize,
    s6_tasks: usize,
    s6_per_task: usize,
    s7_jobs: usize,
    s7_waiters: Vec<usize>,
    s8_items: usize,
    p1_ops: usize,
    p2_calls: usize,
    p3_trips: usize,
    p6_items: usize,
}

impl Params {
    fn wants(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o.eq_ignore_ascii_case(id))
    }

    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                only: Vec::new(),
                rounds: 3,
                s1_ops: 2_000,
                s2_ops: 1_000,
                s3_jobs: 20_000,
                s4_tasks: 80,
                s4_sleep: Duration::from_millis(10),
                s4_handoff_rounds: 5,
                s5_waiters: 2_000,
                s6_ops: 5_000,
                s6_tasks: 64,
                s6_per_task: 50,
                s7_jobs: 5_000,
                s7_waiters: vec![10, 100, 1_000],
                s8_items: 20_000,
                p1_ops: 500,
                p2_calls: 2_000,
                p3_trips: 10,
                p6_items: 5_000,
            }
        } else {
            Self {
                quick,
                only: Vec::new(),
                rounds: 7,
                s1_ops: 20_000,
                s2_ops: 5_000,
                s3_jobs: 20_000,
                s4_tasks: 400,
                s4_sleep: Duration::from_millis(10),
                s4_handoff_rounds: 10,
                s5_waiters: 10_000,
                s6_ops: 50_000,
                s6_tasks: 64,
                s6_per_task: 500,
                s7_jobs: 20_000,
                s7_waiters: vec![10, 100, 1_000, 10_000],
                s8_items: 100_000,
                p1_ops: 5_000,
                p2_calls: 20_000,
                p3_trips: 50,
                p6_items: 100_000,
            }
        }
    }

    fn python_json(&self) -> Value {
        json!({
            "rounds": self.rounds,
            "s1_ops": self.s1_ops,
            "s2_ops": self.s2_ops,
            "s3_jobs": self.s3_jobs,
            "s4_tasks": self.s4_tasks,
            "s4_sleep_ms": self.s4_sleep.as_millis() as u64,
            "s5_waiters": self.s5_waiters,
            "s6_ops": self.s6_ops,
            "s6_per_task": self.s6_per_task,
            "python_deadline_s": if self.quick { 20 } else { 60 },
            "p1_ops": if self.wants("P1") { self.p1_ops } else { 0 },
            "p2_calls": self.p2_calls,
        })
    }
}

/// Runs one S5 measurement in a fresh child process, so its RSS baseline is not inflated (or
/// its growth hidden) by memory the allocator kept from earlier scenarios.
fn s5_in_child(system: &str, waiters: usize) -> Result<sc::WaiterRun, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["--s5-child", system, &waiters.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .as_ref()
        .and_then(sc::WaiterRun::from_json)
        .ok_or_else(|| "child printed no figures".to_owned())
}

fn main() {
    // First: this binary is also the worker program of the P scenarios' managers.
    leasepool::process::init(process::jobs());
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() == 2 && argv[1] == "--echo-child" {
        process::echo_child();
        return;
    }
    if argv.len() == 5 && argv[1] == "--q1-worker" {
        queue::worker(&argv[2], &argv[3], &argv[4]);
        return;
    }
    if argv.len() == 4 && argv[1] == "--s5-child" {
        let waiters = argv[3].parse().unwrap_or(1000);
        match sc::s5_by_name(&argv[2], waiters, 4) {
            Some(run) => println!("{}", run.to_json()),
            None => std::process::exit(2),
        }
        return;
    }
    if argv.len() == 4 && argv[1] == "--s6-child" {
        // For instruction counts (callgrind): one S6 run of one system, nothing else.
        let ops: usize = argv[3].parse().unwrap_or(10_000);
        let run = match argv[2].as_str() {
            "leasepool" => sc::s6_leasepool,
            "deadpool" => sc::s6_deadpool,
            "semaphore" => sc::s6_semaphore,
            _ => std::process::exit(2),
        };
        let (single, contended) = run(ops, 64, ops / 64, 4);
        println!("{{\"uncontended_us\": {single}, \"contended_per_s\": {contended}}}");
        return;
    }
    let mut quick = false;
    let mut python = true;
    let mut out = PathBuf::from("target/bench");
    let mut only = Vec::new();
    let mut q1 = false;
    let mut q2_large: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--queue" => q1 = true,
            "--retry-after" => {
                // Fixed vs computed Retry-After under ~10x overload (see retry_after.rs).
                let secs = if quick { 5 } else { 20 };
                match retry_after::run(secs) {
                    Ok(md) => println!("{md}"),
                    Err(e) => {
                        eprintln!("the Retry-After rows could not run: {e}");
                        std::process::exit(1);
                    }
                }
                return;
            }
            "--q2-pending" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => q2_large = Some(n),
                None => usage("--q2-pending needs a number of tasks"),
            },
            "--no-python" => python = false,
            "--only" => match args.next() {
                Some(ids) => only = ids.split(',').map(|s| s.trim().to_owned()).collect(),
                None => usage("--only needs scenario ids, e.g. S1,S8"),
            },
            "--out" => match args.next() {
                Some(dir) => out = PathBuf::from(dir),
                None => usage("--out needs a directory"),
            },
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("cannot create {}: {e}", out.display());
        std::process::exit(2);
    }
    if q1 {
        // Q1, W, Q2 and the idle cost: they need redis-server, PostgreSQL and processes of their
        // own.
        let (redis, url) = match queue::start_redis() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("the queue rows could not run: {e}");
                std::process::exit(1);
            }
        };
        let (postgres, pg_url) = match queue_wake::start_postgres() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("the queue rows could not run: {e}");
                std::process::exit(1);
            }
        };
        let (tasks, rounds) = if quick { (600, 1) } else { (3000, 3) };
        let q1 = queue::q1("Redis", &url, tasks, rounds).and_then(|(md, js)| {
            let (pg_md, pg_js) = queue::q1("PostgreSQL", &pg_url, tasks, rounds)?;
            let (w_md, w_js) = queue_wake::wake(&url, &pg_url, if quick { 10 } else { 40 })?;
            let js = serde_json::json!({ "redis": js, "postgres": pg_js, "wake": w_js });
            Ok((format!("{md}\n{pg_md}\n{w_md}"), js))
        });
        let large = q2_large.unwrap_or(if quick { 20_000 } else { 100_000 });
        let q2 = queue_backlog::q2_and_idle(
            2_000,
            large,
            if quick { 500 } else { 2_000 },
            if quick { 1 } else { 3 },
            Duration::from_secs(if quick { 2 } else { 20 }),
            (&url, &pg_url),
        );
        drop(redis);
        drop(postgres);
        match (q1, q2) {
            (Ok((md1, js1)), Ok((md2, js2))) => {
                let md = format!("{md1}\n{md2}");
                let js = serde_json::json!({ "q1": js1, "q2_idle": js2 });
                write(&out.join("bench-queue.md"), &md);
                write(&out.join("bench-queue.json"), &format!("{js:#}\n"));
                println!("{md}");
                println!("wrote {}/bench-queue.md, bench-queue.json", out.display());
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("the queue rows could not run: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let began = Instant::now();
    let mut p = Params::new(quick);
    p.only = only;
    let py = if python {
        python_figures(&out, &p)
    } else {
        Err("skipped (--no-python)".to_owned())
    };
    let (scenarios, curves) = run_all(&p, &py);
    let targets = targets(&scenarios);
    let header = run_header(&p, began.elapsed());
    let md = report::markdown(&header_markdown(&header), &scenarios, &targets);
    let js = report::json(&header, &scenarios, &curves, &targets);
    write(&out.join("bench-report.md"), &md);
    write(&out.join("bench-report.json"), &format!("{js:#}\n"));
    write(&out.join("bench-scale.svg"), &report::svg(&curves));
    println!("{md}");
    println!(
        "wrote {}/bench-report.md, bench-report.json, bench-scale.svg",
        out.display()
    );
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "usage: leasepool-bench [--quick] [--out DIR] [--no-python] [--only S1,S8,...] | --queue [--quick] [--q2-pending N] [--out DIR] | [--quick] --retry-after"
    );
    std::process::exit(if problem.is_empty() { 0 } else { 2 });
}

fn write(path: &std::path::Path, text: &str) {
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
}

fn python_figures(out: &std::path::Path, p: &Params) -> Result<Value, String> {
    eprintln!("python: preparing the virtualenv with leasepool 0.1.3 ...");
    let python = python::ensure_venv(out)?;
    eprintln!("python: running the anchor ...");
    python::run_anchor(&python, &p.python_json())
}

fn py_value(py: &Result<Value, String>, key: &str) -> Result<f64, String> {
    match py {
        Ok(v) => v
            .get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("no figure for {key}")),
        Err(e) => Err(e.clone()),
    }
}

fn add_python(s: &mut Scenario, py: &Result<Value, String>, key: &str) {
    match py_value(py, key) {
        Ok(v) => s.add(PYTHON, v),
        Err(e) => s.skip(PYTHON, e),
    }
}

fn run_all(p: &Params, py: &Result<Value, String>) -> (Vec<Scenario>, Vec<Curve>) {
    let r = p.rounds;
    let mut all = Vec::new();
    let mut curves = Vec::new();
    if p.wants("S1") {
        eprintln!("S1 ...");
        let mut s1 = Scenario::new(
            "S1",
            "sequential run(noop) on one 1-worker lease",
            "µs/op",
            Better::Lower,
        );
        s1.add(LEASEPOOL, median(r, || sc::s1_leasepool(p.s1_ops)));
        s1.add(RAW_OFF, median(r, || sc::s1_raw_off_thread(p.s1_ops)));
        s1.add(RAW_ON, median(r, || sc::s1_raw_on_system(p.s1_ops)));
        s1.add(
            SPAWN_BLOCKING,
            median(r, || sc::s1_spawn_blocking(p.s1_ops)),
        );
        s1.add(SEMAPHORE, median(r, || sc::s1_semaphore(p.s1_ops)));
        s1.add(WEB_BLOCK, median(r, || sc::s1_web_block(p.s1_ops)));
        add_python(&mut s1, py, "S1");
        all.push(s1);
        // The tail, not only the mean: p50 and p99 of single round trips (median of rounds).
        let mut p50 = Scenario::new(
            "S1",
            "tail: p50 of one run(noop) round trip",
            "µs",
            Better::Lower,
        );
        let mut p99 = Scenario::new(
            "S1",
            "tail: p99 of one run(noop) round trip",
            "µs",
            Better::Lower,
        );
        for (system, f) in [
            (
                LEASEPOOL,
                handoff::s1_tail_leasepool as fn(usize) -> (f64, f64),
            ),
            (RAW_OFF, handoff::s1_tail_raw_off_thread),
            (SPAWN_BLOCKING, handoff::s1_tail_spawn_blocking),
        ] {
            p50.add(system, median(r, || f(p.s1_ops).0));
            p99.add(system, median(r, || f(p.s1_ops).1));
        }
        all.extend([p50, p99]);
    }

    #[cfg(feature = "metrics")]
    if p.wants("M") {
        eprintln!("M (the cost of recording metrics) ...");
        let s6 = (p.s6_ops, p.s6_tasks, p.s6_per_task);
        all.extend(recording::rows(r, p.s1_ops, p.s2_ops, s6));
    }

    if p.wants("S2") {
        eprintln!("S2 ...");
        let mut s2 = Scenario::new(
            "S2",
            "acquire -> run(noop) -> release",
            "µs/op",
            Better::Lower,
        );
        s2.add(LEASEPOOL, median(r, || sc::s2_leasepool(p.s2_ops)));
        s2.add(SEMAPHORE, median(r, || sc::s2_semaphore(p.s2_ops)));
        add_python(&mut s2, py, "S2");
        all.push(s2);
    }

    if p.wants("S3") {
        eprintln!("S3 ...");
        let mut s3 = Scenario::new(
            "S3",
            format!(
                "fan-out of {} noop jobs over 2 pools x 4 workers",
                p.s3_jobs
            ),
            "jobs/s",
            Better::Higher,
        );
        s3.add(LEASEPOOL, median(r, || sc::s3_leasepool(p.s3_jobs, 2, 4)));
        s3.add(RAW_OFF, median(r, || sc::s3_raw_off_thread(p.s3_jobs, 8)));
        s3.add(RAW_ON, median(r, || sc::s3_raw_on_system(p.s3_jobs, 8)));
        s3.add(
            SPAWN_BLOCKING,
            median(r, || sc::s3_spawn_blocking(p.s3_jobs)),
        );
        s3.add(SEMAPHORE, median(r, || sc::s3_semaphore(p.s3_jobs, 8)));
        s3.add(WEB_BLOCK, median(r, || sc::s3_web_block(p.s3_jobs)));
        add_python(&mut s3, py, "S3");
        all.push(s3);
    }

    if p.wants("S4") {
        eprintln!("S4 ...");
        let mut s4 = Scenario::new(
            "S4",
            format!(
                "{} tasks x (acquire, {} ms blocking sleep, release) over 8 pools x 1 worker",
                p.s4_tasks,
                p.s4_sleep.as_millis()
            ),
            "efficiency (ideal/actual)",
            Better::Higher,
        );
        let mut s4_runs: Vec<(f64, f64, f64)> = (0..=r)
            .map(|_| sc::s4_leasepool(p.s4_tasks, 8, p.s4_sleep))
            .skip(1)
            .collect();
        s4_runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (eff, gap, over) = s4_runs[s4_runs.len() / 2];
        s4.add(LEASEPOOL, eff);
        s4.add(
            RAW_OFF,
            median(r, || sc::s4_raw_off_thread(p.s4_tasks, 8, p.s4_sleep)),
        );
        s4.add(
            SEMAPHORE,
            median(r, || sc::s4_semaphore(p.s4_tasks, 8, p.s4_sleep)),
        );
        s4.add(
            DEADPOOL_BLOCKING,
            median(r, || sc::s4_deadpool(p.s4_tasks, 8, p.s4_sleep)),
        );
        add_python(&mut s4, py, "S4");
        all.push(s4);
        // Where leasepool's S4 time goes (same median round): the hand-off between leases on a pool
        // and the sleep's own overshoot, which no system can avoid.
        let mut s4g = Scenario::new(
            "S4",
            "breakdown: gap between consecutive jobs on a pool (median)",
            "µs",
            Better::Lower,
        );
        s4g.add(LEASEPOOL, gap);
        let mut s4o = Scenario::new(
            "S4",
            "breakdown: overshoot of the blocking sleep itself (median)",
            "µs",
            Better::Lower,
        );
        s4o.add(LEASEPOOL, over);
        all.extend([s4g, s4o]);
        // The hand-off alone: the same contention with 0 ms jobs.
        let mut s4h = Scenario::new(
            "S4",
            format!(
                "hand-off alone: {} tasks x {} x (acquire, run(noop), release) over 8 pools x 1 worker",
                p.s4_tasks, p.s4_handoff_rounds
            ),
            "hand-offs/s",
            Better::Higher,
        );
        let (tasks, rounds) = (p.s4_tasks, p.s4_handoff_rounds);
        s4h.add(
            LEASEPOOL,
            median(r, || handoff::s4_handoff_leasepool(tasks, rounds, 8)),
        );
        s4h.add(
            SEMAPHORE,
            median(r, || handoff::s4_handoff_semaphore(tasks, rounds, 8)),
        );
        s4h.add(
            DEADPOOL_BLOCKING,
            median(r, || handoff::s4_handoff_deadpool(tasks, rounds, 8)),
        );
        all.push(s4h);
    }

    if p.wants("S5") {
        eprintln!("S5 ...");
        let s5_title = format!("{} concurrent acquirers on 4 pools", p.s5_waiters);
        let mut s5 = Scenario::new("S5", s5_title.clone(), "acquisitions/s", Better::Higher);
        let mut s5o = Scenario::new("S5", s5_title.clone(), "FIFO overtakes", Better::Lower);
        let mut s5m = Scenario::new(
            "S5",
            s5_title.clone(),
            "bytes per waiter (RSS delta)",
            Better::Lower,
        );
        let mut s5a = Scenario::new(
            "S5",
            s5_title,
            "RSS growth retained after (fraction of peak)",
            Better::Lower,
        );
        for (name, child) in [
            (LEASEPOOL, "leasepool"),
            (DEADPOOL, "deadpool"),
            (SEMAPHORE_ONLY, "semaphore"),
        ] {
            let runs: Vec<_> = match (0..r).map(|_| s5_in_child(child, p.s5_waiters)).collect() {
                Ok(runs) => runs,
                Err(e) => {
                    s5.skip(name, e);
                    continue;
                }
            };
            let mid = |g: fn(&sc::WaiterRun) -> f64| {
                let mut v: Vec<f64> = runs.iter().map(g).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            s5.add(name, mid(|w| w.rate));
            s5o.add(
                name,
                runs.iter().map(|w| w.overtakes).max().unwrap_or(0) as f64,
            );
            s5m.add(name, mid(|w| w.bytes_per_waiter));
            s5a.add(name, mid(|w| w.retained));
        }
        match py_value(py, "S5_rate") {
            Ok(v) => s5.add(PYTHON, v),
            Err(e) => s5.skip(
                PYTHON,
                if py.is_ok() {
                    format!("did not finish: {e}")
                } else {
                    e
                },
            ),
        }
        add_python(&mut s5o, py, "S5_overtakes");
        add_python(&mut s5m, py, "S5_bytes_per_waiter");
        all.extend([s5, s5o, s5m, s5a]);
    }

    if p.wants("S6") {
        eprintln!("S6 ...");
        let mut s6u = Scenario::new(
            "S6",
            "acquire + release, no job, uncontended",
            "µs/op",
            Better::Lower,
        );
        let mut s6c = Scenario::new(
            "S6",
            format!("acquire + release, no job, {} tasks on 4 pools", p.s6_tasks),
            "ops/s",
            Better::Higher,
        );
        for (name, f) in [
            (
                LEASEPOOL,
                sc::s6_leasepool as fn(usize, usize, usize, usize) -> (f64, f64),
            ),
            (DEADPOOL, sc::s6_deadpool),
            (SEMAPHORE_ONLY, sc::s6_semaphore),
        ] {
            let runs: Vec<_> = (0..=r)
                .map(|_| f(p.s6_ops, p.s6_tasks, p.s6_per_task, 4))
                .skip(1)
                .collect();
            let mut u: Vec<f64> = runs.iter().map(|x| x.0).collect();
            let mut c: Vec<f64> = runs.iter().map(|x| x.1).collect();
            u.sort_by(|a, b| a.total_cmp(b));
            c.sort_by(|a, b| a.total_cmp(b));
            s6u.add(name, u[u.len() / 2]);
            s6c.add(name, c[c.len() / 2]);
        }
        match py_value(py, "S6_uncontended") {
            Ok(v) => s6u.add(PYTHON, 1e6 / v),
            Err(e) => s6u.skip(PYTHON, e),
        }
        add_python(&mut s6c, py, "S6_contended");
        all.extend([s6u, s6c]);
    }

    if p.wants("S8") {
        eprintln!("S8 ...");
        let mut s8 = Scenario::new(
            "S8",
            format!(
                "{} tiny jobs: WorkGrinder (2 pools x 4 workers) vs one spawn_blocking per item",
                p.s8_items
            ),
            "items/s",
            Better::Higher,
        );
        s8.add(LEASEPOOL, median(r, || sc::s8_grinder(p.s8_items)));
        s8.add(
            SPAWN_BLOCKING,
            median(r, || sc::s8_spawn_blocking(p.s8_items)),
        );
        all.push(s8);
    }

    if p.wants("W1") {
        eprintln!("W1 ...");
        let ops = if p.quick { 5_000 } else { 50_000 };
        let mut w1 = Scenario::new(
            "W1",
            "a request refused for overload: 503 + Retry-After through actix-web (in process, one thread)",
            "µs/request",
            Better::Lower,
        );
        w1.add(
            "leasepool: Leased extractor refused (no_wait)",
            median(r, || rejection::web(ops, true)),
        );
        w1.add(
            "actix-web alone: a handler that answers the 503",
            median(r, || rejection::web(ops, false)),
        );
        let mut w1b = Scenario::new(
            "W1",
            "a bare refusal: acquire().no_wait() on a manager with no pool free",
            "µs/op",
            Better::Lower,
        );
        w1b.add(LEASEPOOL, median(r, || rejection::bare(ops * 4)));
        all.extend([w1, w1b]);
    }

    run_process(p, py, &mut all);

    if p.wants("S7") {
        eprintln!("S7 ...");
        let mut jobs_curve = Curve {
            title: "S7a: fan-out throughput vs pools (4 workers each)",
            x_label: "pools",
            y_label: "jobs/s",
            log_x: false,
            series: vec![(LEASEPOOL, Vec::new()), (RAW_OFF, Vec::new())],
        };
        for pools in [1usize, 2, 4, 8] {
            let lp = median(r, || sc::s3_leasepool(p.s7_jobs, pools, 4));
            let raw = median(r, || sc::s3_raw_off_thread(p.s7_jobs, pools * 4));
            jobs_curve.series[0].1.push((pools as f64, lp));
            jobs_curve.series[1].1.push((pools as f64, raw));
        }
        let mut wait_curve = Curve {
            title: "S7b: acquisitions/s vs waiters (4 pools)",
            x_label: "waiters (log)",
            y_label: "acquisitions/s",
            log_x: true,
            series: vec![
                (LEASEPOOL, Vec::new()),
                (DEADPOOL, Vec::new()),
                (SEMAPHORE_ONLY, Vec::new()),
            ],
        };
        for &w in &p.s7_waiters {
            for (k, f) in [
                sc::s5_leasepool as fn(usize, usize) -> sc::WaiterRun,
                sc::s5_deadpool,
                sc::s5_semaphore,
            ]
            .into_iter()
            .enumerate()
            {
                let rate = median(r, || f(w, 4).rate);
                wait_curve.series[k].1.push((w as f64, rate));
            }
        }
        curves = vec![jobs_curve, wait_curve];
    }
    (all, curves)
}

/// P1–P6: the process backend.
fn run_process(p: &Params, py: &Result<Value, String>, all: &mut Vec<Scenario>) {
    let r = p.rounds;
    if p.wants("P1") {
        eprintln!("P1 ...");
        let mut p1 = Scenario::new(
            "P1",
            "sequential call(noop) on one 1-child lease (process backend)",
            "µs/op",
            Better::Lower,
        );
        p1.add(LEASEPOOL, median(r, || process::p1(p.p1_ops)));
        p1.add(
            "leasepool thread backend run(noop)",
            median(r, || sc::s1_leasepool(p.p1_ops)),
        );
        add_python(&mut p1, py, "P1");
        all.push(p1);
    }
    if p.wants("P2") {
        eprintln!("P2 ...");
        let mut p2 = Scenario::new(
            "P2",
            format!("{} noop calls over 2 pools x 4 children", p.p2_calls),
            "calls/s",
            Better::Higher,
        );
        p2.add(LEASEPOOL, median(r, || process::p2(p.p2_calls)));
        add_python(&mut p2, py, "P2");
        all.push(p2);
    }
    if p.wants("P3") {
        eprintln!("P3 ...");
        let mut p3 = Scenario::new(
            "P3",
            "1 MiB into a child and back",
            "µs/round trip",
            Better::Lower,
        );
        p3.add(
            LEASEPOOL,
            median(r, || process::p3_call(1 << 20, p.p3_trips)),
        );
        p3.add(
            "raw echo child, same request/response",
            median(r, || process::p3_raw_echo(1 << 20, p.p3_trips)),
        );
        p3.add(
            "raw pipes through cat, streamed",
            median(r, || process::p3_raw_pipe(1 << 20, p.p3_trips)),
        );
        all.push(p3);
    }
    if p.wants("P4") {
        eprintln!("P4 ...");
        let runs: Vec<(f64, f64)> = (0..=r).map(|_| process::p4()).skip(1).collect();
        let mid = |f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut start = Scenario::new("P4", "start() with 4 children ready", "ms", Better::Lower);
        start.add(LEASEPOOL, mid(|x| x.0));
        let mut crash = Scenario::new(
            "P4",
            "crash answered -> replacement child serves a job",
            "ms (replacement)",
            Better::Lower,
        );
        crash.add(LEASEPOOL, mid(|x| x.1));
        all.extend([start, crash]);
    }
    if p.wants("P5") {
        eprintln!("P5 ...");
        let mut p5 = Scenario::new(
            "P5",
            "runaway job: hard expiry -> child killed and job answered Expired",
            "ms late",
            Better::Lower,
        );
        p5.add(LEASEPOOL, median(r, process::p5));
        all.push(p5);
    }
    if p.wants("P6") {
        eprintln!("P6 ...");
        let mut p6 = Scenario::new(
            "P6",
            format!(
                "{} tiny process calls: WorkGrinder (2 pools x 4 children) vs one call per item",
                p.p6_items
            ),
            "items/s",
            Better::Higher,
        );
        p6.add(LEASEPOOL, median(r, || process::p6_grinder(p.p6_items)));
        p6.add(
            "one call per item",
            median(r, || process::p6_one_call_each(p.p6_items)),
        );
        all.push(p6);
    }
}

fn find<'a>(all: &'a [Scenario], id: &str, unit: &str) -> Option<&'a Scenario> {
    all.iter().find(|s| s.id == id && s.unit.starts_with(unit))
}

fn check(what: &str, measured: Option<f64>, limit: &str, ok: impl Fn(f64) -> bool) -> Target {
    Target {
        what: what.to_owned(),
        measured,
        limit: limit.to_owned(),
        met: measured.map(ok),
    }
}

fn targets(all: &[Scenario]) -> Vec<Target> {
    let ratio = |id, unit, peer| find(all, id, unit).and_then(|s| s.ratio(peer));
    let value = |id, unit, sys| find(all, id, unit).and_then(|s| s.value(sys));
    let mut targets = vec![
        check(
            "S1 leasepool ÷ SyncArbiter (caller on another thread)",
            ratio("S1", "µs", RAW_OFF),
            "<= 1.15",
            |r| r <= 1.15,
        ),
        check(
            "S2 leasepool ÷ Python",
            ratio("S2", "µs", PYTHON),
            "<= 0.25",
            |r| r <= 0.25,
        ),
        check(
            "S6 uncontended acquire + release (µs)",
            value("S6", "µs", LEASEPOOL),
            "<= 5",
            |v| v <= 5.0,
        ),
        check(
            "S3 leasepool ÷ SyncArbiter, 8 workers",
            ratio("S3", "jobs", RAW_OFF),
            ">= 0.9",
            |r| r >= 0.9,
        ),
        check(
            "S3 leasepool ÷ Python",
            ratio("S3", "jobs", PYTHON),
            ">= 10",
            |r| r >= 10.0,
        ),
        check(
            "S4 leasepool efficiency",
            value("S4", "eff", LEASEPOOL),
            ">= 0.97",
            |v| v >= 0.97,
        ),
        check(
            "S5 leasepool FIFO overtakes",
            value("S5", "FIFO", LEASEPOOL),
            "== 0",
            |v| v == 0.0,
        ),
        check(
            "S5 leasepool bytes per waiter",
            value("S5", "bytes", LEASEPOOL),
            "<= 1024",
            |v| v <= 1024.0,
        ),
        check(
            "P1 process call(noop) - thread run(noop) (µs)",
            find(all, "P1", "µs").and_then(|s| {
                Some(s.value(LEASEPOOL)? - s.value("leasepool thread backend run(noop)")?)
            }),
            "<= 50",
            |v| v <= 50.0,
        ),
        check(
            "P1 process call(noop) ÷ Python process backend",
            ratio("P1", "µs", PYTHON),
            "<= 0.5",
            |r| r <= 0.5,
        ),
        check(
            "P2 calls/s ÷ Python process backend",
            ratio("P2", "calls", PYTHON),
            ">= 10",
            |r| r >= 10.0,
        ),
        check(
            "P3 1 MiB round trip ÷ raw echo child (request/response)",
            ratio("P3", "µs", "raw echo child, same request/response"),
            "<= 2",
            |r| r <= 2.0,
        ),
        check(
            "P4 start() with 4 children ready (ms)",
            value("P4", "ms", LEASEPOOL),
            "<= 25",
            |v| v <= 25.0,
        ),
        check(
            "P4 crash -> replacement serves (ms, first retry has no backoff)",
            value("P4", "ms (replacement)", LEASEPOOL),
            "<= 10",
            |v| v <= 10.0,
        ),
        check(
            "P5 runaway job answered after hard expiry (ms)",
            value("P5", "ms", LEASEPOOL),
            "<= 20",
            |v| v <= 20.0,
        ),
        check(
            "P6 grinder ÷ one call per item",
            ratio("P6", "items", "one call per item"),
            ">= 5",
            |r| r >= 5.0,
        ),
        check(
            "S5 leasepool RSS growth retained after the waiters finish",
            value("S5", "RSS", LEASEPOOL),
            "<= 0.10",
            |v| v <= 0.10,
        ),
    ];
    // Rows M (feature `metrics`): recording costs at most 10 %.
    for id in ["M1", "M2", "M3", "M4"] {
        if let Some(s) = all.iter().find(|s| s.id == id) {
            let what = format!("{id} {}", s.title);
            targets.push(check(&what, s.value(LEASEPOOL), "<= 1.10", |r| r <= 1.10));
        }
    }
    targets
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn run_header(p: &Params, took: Duration) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    json!({
        "date": command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "mode": if p.quick { "quick" } else { "full" },
        "rounds": p.rounds,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "os": command_line("uname", &["-sr"]),
        "rustc": command_line("rustc", &["--version"]),
        "seconds": took.as_secs_f64(),
    })
}

fn header_markdown(h: &Value) -> String {
    format!(
        "# leasepool benchmark report\n\nRun {} ({} mode, median of {} rounds after a warm-up) on {} CPUs ({}), {}, {}; harness time {:.0} s.\nRatios are leasepool's figure divided by each system's, measured in the same run.",
        h["date"].as_str().unwrap_or(""),
        h["mode"].as_str().unwrap_or(""),
        h["rounds"],
        h["cpus"],
        h["cpu"].as_str().unwrap_or(""),
        h["os"].as_str().unwrap_or(""),
        h["rustc"].as_str().unwrap_or(""),
        h["seconds"].as_f64().unwrap_or(0.0),
    )
}
