//! The process backend tells the truth: every user callback a job runs (`Serialize`,
//! `Deserialize`, `run`) answers for itself; an output over `max_message_bytes` stops being
//! encoded at the cap; a child that dies while idle is reaped at once; an idle pool costs no
//! CPU; and each counter counts what its doc says, on both backends. `harness = false`: this
//! binary is its managers' worker program (see `tests/process.rs`).

mod common;
#[path = "common/process.rs"]
mod proc_common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use leasepool::process::{self, Jobs, ProcessJob};
use leasepool::{
    Backend, Counters, LeaseError, LeaseManager, ManagerBuilder, StopMode, WorkGrinder,
};
use proc_common::{alive, children_of, eventually, scratch, stat, Boom, Hog, Pid};
use serde::{Deserialize, Serialize};

// ---- jobs ------------------------------------------------------------------------------------

/// Which user callback of [`Fragile`] panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Fault {
    None,
    /// The input's `Serialize` (in the parent).
    EncodeInput,
    /// The input's `Deserialize` (in the child).
    DecodeInput,
    /// The output's `Serialize` (in the child).
    EncodeOutput,
    /// The output's `Deserialize` (in the parent).
    DecodeOutput,
}

/// A job whose input and output panic in the callback its `fault` names; answers `id`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
struct Fragile {
    id: u32,
    fault: Fault,
}

/// What goes on the wire for [`Fragile`] and [`FragileOut`].
#[derive(Clone, Serialize, Deserialize)]
struct Wire {
    id: u32,
    fault: Fault,
}

impl From<Fragile> for Wire {
    fn from(f: Fragile) -> Wire {
        assert!(
            f.fault != Fault::EncodeInput,
            "input {} refuses to encode",
            f.id
        );
        Wire {
            id: f.id,
            fault: f.fault,
        }
    }
}

impl From<Wire> for Fragile {
    fn from(w: Wire) -> Fragile {
        assert!(
            w.fault != Fault::DecodeInput,
            "input {} refuses to decode",
            w.id
        );
        Fragile {
            id: w.id,
            fault: w.fault,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
struct FragileOut {
    id: u32,
    fault: Fault,
}

impl From<FragileOut> for Wire {
    fn from(f: FragileOut) -> Wire {
        assert!(
            f.fault != Fault::EncodeOutput,
            "output {} refuses to encode",
            f.id
        );
        Wire {
            id: f.id,
            fault: f.fault,
        }
    }
}

impl From<Wire> for FragileOut {
    fn from(w: Wire) -> FragileOut {
        assert!(
            w.fault != Fault::DecodeOutput,
            "output {} refuses to decode",
            w.id
        );
        FragileOut {
            id: w.id,
            fault: w.fault,
        }
    }
}

impl ProcessJob for Fragile {
    const NAME: &'static str = "fragile.v1";
    type Output = FragileOut;
    fn run(self) -> FragileOut {
        FragileOut {
            id: self.id,
            fault: self.fault,
        }
    }
}

/// A value whose encoding is `len` bytes made on the fly: it takes no memory until encoded.
#[derive(Serialize, Deserialize)]
struct Lazy {
    len: u64,
}

/// A sequence of `len` bytes, produced as it is serialized.
struct Stream(u64);

impl Serialize for Stream {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::SerializeSeq as _;
        let len = usize::try_from(self.0).map_err(serde::ser::Error::custom)?;
        let mut seq = s.serialize_seq(Some(len))?;
        for _ in 0..self.0 {
            seq.serialize_element(&7_u8)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Stream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Stream, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        Ok(Stream(bytes.len() as u64))
    }
}

/// Answers a [`Stream`] of `len` bytes.
impl ProcessJob for Lazy {
    const NAME: &'static str = "lazy.v1";
    type Output = Stream;
    fn run(self) -> Stream {
        Stream(self.len)
    }
}

/// Aborts its child.
#[derive(Serialize, Deserialize)]
struct Abort;
impl ProcessJob for Abort {
    const NAME: &'static str = "abort.v1";
    type Output = ();
    fn run(self) {
        std::process::abort();
    }
}

/// Writes its pid to `pid_file`, then sleeps until killed.
#[derive(Serialize, Deserialize)]
struct Hang {
    pid_file: PathBuf,
}
impl ProcessJob for Hang {
    const NAME: &'static str = "hang.v1";
    type Output = ();
    fn run(self) {
        std::fs::write(&self.pid_file, std::process::id().to_string()).expect("write the pid");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Allocates, touches and keeps `mb` MiB (its exit then takes a while); answers its pid.
#[derive(Serialize, Deserialize)]
struct Keep {
    mb: usize,
}
static KEPT: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
impl ProcessJob for Keep {
    const NAME: &'static str = "keep.v1";
    type Output = u32;
    fn run(self) -> u32 {
        KEPT.lock().unwrap().push(vec![1_u8; self.mb << 20]);
        std::process::id()
    }
}

/// A linked list as deep as its length: serde encodes and decodes it recursively.
#[derive(Serialize, Deserialize)]
struct Node(Option<Box<Node>>);

impl Node {
    fn deep(depth: usize) -> Node {
        let mut node = Node(None);
        for _ in 0..depth {
            node = Node(Some(Box::new(node)));
        }
        node
    }

    fn depth(&self) -> usize {
        let (mut n, mut at) = (0, &self.0);
        while let Some(next) = at {
            n += 1;
            at = &next.0;
        }
        n
    }
}

impl Drop for Node {
    // Iterative: only serde's recursion is under test.
    fn drop(&mut self) {
        let mut next = self.0.take();
        while let Some(mut node) = next {
            next = node.0.take();
        }
    }
}

/// Answers the depth of its input, and a list `output` deep.
#[derive(Serialize, Deserialize)]
struct Deep {
    input: Node,
    output: usize,
}
impl ProcessJob for Deep {
    const NAME: &'static str = "deep.v1";
    type Output = (usize, Node);
    fn run(self) -> (usize, Node) {
        (self.input.depth(), Node::deep(self.output))
    }
}

/// Sleeps `nap_ms` (so that jobs sent together land on different children), then answers its
/// pid and how many of its open descriptors are pipes.
#[derive(Serialize, Deserialize)]
struct PipeFds {
    nap_ms: u64,
}
impl ProcessJob for PipeFds {
    const NAME: &'static str = "pipe-fds.v1";
    type Output = (u32, usize);
    fn run(self) -> (u32, usize) {
        std::thread::sleep(Duration::from_millis(self.nap_ms));
        let pipes = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("pipe:"))
            })
            .count();
        (std::process::id(), pipes)
    }
}

/// Prints what Rust prints when an allocation fails (without failing one); answers its pid.
#[derive(Serialize, Deserialize)]
struct SaysOom;
impl ProcessJob for SaysOom {
    const NAME: &'static str = "says-oom.v1";
    type Output = u32;
    fn run(self) -> u32 {
        eprintln!("memory allocation of 12 bytes failed");
        std::process::id()
    }
}

/// Sleeps `ms`; answers its pid.
#[derive(Serialize, Deserialize)]
struct Nap(u64);
impl ProcessJob for Nap {
    const NAME: &'static str = "nap.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::sleep(Duration::from_millis(self.0));
        std::process::id()
    }
}

/// Sleeps `ms`; then, if `abort`, aborts its child, else answers the child's pid. (One job
/// type for both, so that a grinder batch keeps them in one frame, in order.)
#[derive(Serialize, Deserialize)]
struct Step {
    ms: u64,
    abort: bool,
}
impl ProcessJob for Step {
    const NAME: &'static str = "step.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::sleep(Duration::from_millis(self.ms));
        if self.abort {
            std::process::abort();
        }
        std::process::id()
    }
}

fn step_of(ms: u64) -> Step {
    Step { ms, abort: false }
}

/// While this file exists, a child refuses to start (its `on_child_start` hook panics).
fn refuse_starts_flag() -> PathBuf {
    std::env::temp_dir().join(format!("lp-process-truth-refuse-{}", parent_pid()))
}

/// The test process's pid, in the test process and in its children alike.
fn parent_pid() -> u32 {
    if process::is_worker_child() {
        stat(std::process::id()).map_or(0, |(_, ppid, _)| ppid)
    } else {
        std::process::id()
    }
}

fn jobs() -> Jobs {
    Jobs::new()
        .on_child_start(|| {
            assert!(
                !refuse_starts_flag().exists(),
                "this child refuses to start"
            );
        })
        .register::<Keep>()
        .register::<Step>()
        .register::<Deep>()
        .register::<PipeFds>()
        .register::<SaysOom>()
        .register::<Nap>()
        .register::<Pid>()
        .register::<Fragile>()
        .register::<Lazy>()
        .register::<Boom>()
        .register::<Abort>()
        .register::<Hog>()
        .register::<Hang>()
}

fn builder(prefix: &str, pools: usize, workers: usize) -> ManagerBuilder<()> {
    proc_common::process_builder(jobs(), prefix, pools, workers)
        .shutdown_timeout(Duration::from_secs(5))
}

fn fragile(id: u32, fault: Fault) -> Fragile {
    Fragile { id, fault }
}

/// The step a faulty [`Fragile`] is answered for.
fn step(fault: Fault) -> &'static str {
    match fault {
        Fault::None => "",
        Fault::EncodeInput => "encoding its input panicked: input",
        Fault::DecodeInput => "decoding its input panicked: input",
        Fault::EncodeOutput => "encoding its output panicked: output",
        Fault::DecodeOutput => "decoding its output panicked: output",
    }
}

const FAULTS: [Fault; 4] = [
    Fault::EncodeInput,
    Fault::DecodeInput,
    Fault::EncodeOutput,
    Fault::DecodeOutput,
];

/// Checks `answer` is what `Fragile { id, fault }` should get.
fn check(id: u32, fault: Fault, answer: Result<FragileOut, LeaseError>) {
    match (fault, answer) {
        (Fault::None, Ok(out)) => assert_eq!(out, FragileOut { id, fault }),
        (fault, Err(LeaseError::ProcessJob(text))) if fault != Fault::None => assert!(
            text.contains(step(fault)) && text.contains(&id.to_string()),
            "{fault:?} answered {text:?}"
        ),
        (fault, other) => panic!("item {id} ({fault:?}) answered {other:?}"),
    }
}

/// The counters a test looks at.
fn jobs_counted(c: &Counters) -> [u64; 4] {
    [
        c.jobs_completed,
        c.jobs_panicked,
        c.jobs_failed,
        c.jobs_lost,
    ]
}

fn children_counted(c: &Counters) -> [u64; 5] {
    [
        c.children_started,
        c.children_crashed,
        c.children_killed,
        c.children_over_memory,
        c.children_recycled,
    ]
}

/// Waits until the job and child counters read `jobs` and `children` (a grinder part counts its
/// items when it ends, a replacement child starts after the answer), then returns them all.
/// Fails with the last reading if they never do.
async fn counted(m: &LeaseManager, jobs: [u64; 4], children: Option<[u64; 5]>) -> Counters {
    common::stats_until(m, "the counters", |s| {
        jobs_counted(&s.counters) == jobs
            && children.is_none_or(|c| children_counted(&s.counters) == c)
    })
    .await
    .counters
}

// ---- tests -----------------------------------------------------------------------------------

/// Each callback that panics answers `ProcessJob` naming its step, on `call` and `submit_call`;
/// the child serves on (one child from start to end).
async fn a_panicking_callback_answers_its_job_and_the_child_serves_on() {
    let m = builder("pt-serde", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let pid = lease.call(Pid).await.unwrap();
    for (i, fault) in FAULTS.into_iter().enumerate() {
        let id = i as u32;
        check(id, fault, lease.call(fragile(id, fault)).await);
        let handle = lease.submit_call(fragile(id + 10, fault)).unwrap();
        check(id + 10, fault, handle.await);
        assert_eq!(lease.call(Pid).await, Ok(pid), "{fault:?}: the same child");
    }
    check(99, Fault::None, lease.call(fragile(99, Fault::None)).await);
    let c = m.stats().await.counters;
    assert_eq!(jobs_counted(&c), [6, 0, 8, 0], "{c:?}");
    assert_eq!(children_counted(&c), [1, 0, 0, 0, 0], "{c:?}");
    assert_eq!(c.worker_states_rebuilt, 0, "{c:?}");
    lease.release().await;
    m.stop().await;
}

/// In a grinder batch — one frame for many items — each item whose callback panics fails alone:
/// its neighbours (before and after it in the same frame) are answered.
async fn in_a_batch_each_panicking_callback_fails_alone() {
    let m = builder("pt-bserde", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(50)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let mut sent = Vec::new();
    for id in 0..50_u32 {
        let fault = if id % 5 == 2 {
            FAULTS[(id / 5) as usize % FAULTS.len()]
        } else {
            Fault::None
        };
        sent.push((id, fault, g.enqueue_call(fragile(id, fault)).unwrap()));
    }
    for (id, fault, handle) in sent {
        check(id, fault, handle.await);
    }
    let c = counted(&m, [40, 0, 10, 0], None).await;
    assert_eq!(children_counted(&c)[..2], [1, 0], "{c:?}");
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

/// An output over `max_message_bytes` stops being encoded at the cap: a 1 GiB output from a
/// child limited to 256 MiB answers `ProcessJob`, and the child serves on. (Encoded in full
/// first, it would kill the child: `WorkerLost`.) The same holds for an input in the parent.
async fn an_output_over_the_cap_stops_encoding_at_the_cap() {
    let m = builder("pt-cap", 1, 1)
        .max_message_bytes(1 << 20)
        .child_memory_limit(256 << 20)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let pid = lease.call(Pid).await.unwrap();
    let small = lease.call(Lazy { len: 1000 }).await.unwrap();
    assert_eq!(small.0, 1000);
    let err = lease.call(Lazy { len: 1 << 30 }).await.err().unwrap();
    assert!(
        matches!(&err, LeaseError::ProcessJob(t) if t.contains("over max_message_bytes (1048576)")),
        "{err:?}"
    );
    assert_eq!(lease.call(Pid).await, Ok(pid), "the same child");
    lease.release().await;
    // In a batch too.
    let g = WorkGrinder::builder(&m)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let big = g.enqueue_call(Lazy { len: 1 << 30 }).unwrap();
    let fine = g.enqueue_call(Lazy { len: 10 }).unwrap();
    assert!(matches!(big.await, Err(LeaseError::ProcessJob(t)) if t.contains("max_message_bytes")));
    assert_eq!(fine.await.map(|s| s.0), Ok(10));
    g.stop(StopMode::Drain).await;
    let c = m.stats().await.counters;
    assert_eq!(children_counted(&c), [1, 0, 0, 0, 0], "{c:?}");
    m.stop().await;
}

/// A child killed while its worker is idle is reaped and counted at once (no zombie waits for
/// the next job), and the next job runs in a new child as if nothing happened.
async fn a_child_killed_while_idle_is_reaped_at_once() {
    let m = builder("pt-idle-kill", 1, 2).build().unwrap();
    m.start().await.unwrap();
    let me = std::process::id();
    assert!(eventually(Duration::from_secs(10), || children_of(me)
        .0
        .len()
        == 2));
    let victim = children_of(me).0[0];
    let killed = Instant::now();
    rustix_kill(victim);
    let reaped = eventually(Duration::from_secs(3), || stat(victim).is_none());
    let took = killed.elapsed();
    assert!(
        reaped,
        "child {victim} still {:?} after {took:?}",
        stat(victim)
    );
    println!("    reaped {took:?} after the kill");
    common::stats_until(&m, "the death counted", |s| {
        s.counters.children_crashed == 1
    })
    .await;
    // Both workers serve: two jobs at once need two children.
    let lease = m.acquire().await.unwrap();
    let a = lease.submit_call(Pid).unwrap();
    let b = lease.submit_call(Pid).unwrap();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(a != victim && b != victim);
    let c = m.stats().await.counters;
    assert_eq!(jobs_counted(&c), [2, 0, 0, 0], "{c:?}");
    assert_eq!(children_counted(&c), [3, 1, 0, 0, 0], "{c:?}");
    assert_eq!(m.stats().await.unhealthy, 0);
    lease.release().await;
    m.stop().await;
}

fn rustix_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// CPU time this process has used (every thread, from `/proc/self/task/*/schedstat`, in ns).
fn cpu_used() -> Duration {
    let mut total = 0_u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// Context switches of this process's threads (voluntary and not).
fn switches() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if line.contains("ctxt_switches") {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// An idle pool of 16 children costs under 0.2 % of a core over 10 s: nothing polls.
async fn an_idle_pool_of_sixteen_children_costs_nothing() {
    let m = builder("pt-idle", 2, 8).build().unwrap();
    m.start().await.unwrap();
    let me = std::process::id();
    assert!(eventually(Duration::from_secs(20), || children_of(me)
        .0
        .len()
        == 16));
    // Settle: the children's start-up output is read and logged.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu, ctx, begun) = (cpu_used(), switches(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (spent, switched, took) = (cpu_used() - cpu, switches() - ctx, begun.elapsed());
    let share = spent.as_secs_f64() / took.as_secs_f64();
    println!(
        "    idle 16 children: {spent:?} of CPU in {took:.1?} ({:.3} % of a core), {switched} context switches",
        share * 100.0
    );
    assert!(share < 0.002, "{:.3} % of a core", share * 100.0);
    m.stop().await;
}

/// Every counter counts what its doc says on the process backend: completed, panicked,
/// failed, lost; children started, crashed, killed at hard expiry, over their memory limit,
/// recycled; no worker state rebuilt for a child replaced.
async fn every_counter_counts_what_it_says_on_the_process_backend() {
    let m = builder("pt-count", 1, 1)
        .child_memory_limit(512 << 20)
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    assert!(lease.call(Pid).await.is_ok());
    assert!(lease.call(Pid).await.is_ok());
    assert!(matches!(
        lease.call(Boom("b".into())).await,
        Err(LeaseError::Panicked(_))
    ));
    assert_eq!(lease.call(Abort).await, Err(LeaseError::WorkerLost));
    assert_eq!(
        lease.call(Hog { bytes: 2 << 30 }).await,
        Err(LeaseError::WorkerLost)
    );
    check(
        7,
        Fault::EncodeOutput,
        lease.call(fragile(7, Fault::EncodeOutput)).await,
    );
    lease.release().await;
    let dir = scratch("count");
    let pid_file = dir.join("pid");
    let short = m
        .acquire()
        .lease_for(Duration::from_millis(300))
        .await
        .unwrap();
    let hang = Hang {
        pid_file: pid_file.clone(),
    };
    assert_eq!(short.call(hang).await, Err(LeaseError::Expired));
    drop(short);
    // The pool went with its lease; its replacement's child serves.
    let next = m.acquire().await.unwrap();
    assert!(next.call(Pid).await.is_ok());
    next.release().await;
    counted(&m, [3, 1, 1, 3], None).await;
    // Children: the first, one after the crash, one after the memory death, one in the new
    // pool — and perhaps one the runaway's worker started before its pool retired.
    let c = common::stats_until(&m, "the children counted", |s| {
        children_counted(&s.counters)[1..] == [1, 1, 1, 0]
    })
    .await
    .counters;
    assert!((4..=5).contains(&c.children_started), "{c:?}");
    assert_eq!((c.worker_states_rebuilt, c.revoked), (0, 1), "{c:?}");
    m.stop().await;

    // Recycling: a new child every second job.
    let m = builder("pt-count-recycle", 1, 1)
        .max_jobs_per_child(2)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    for _ in 0..5 {
        assert!(lease.call(Pid).await.is_ok());
    }
    lease.release().await;
    let c = m.stats().await.counters;
    assert_eq!(jobs_counted(&c), [5, 0, 0, 0], "{c:?}");
    assert_eq!(children_counted(&c), [3, 0, 0, 0, 2], "{c:?}");
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The same counters on the thread backend: a panic rebuilds the worker state; no child.
async fn every_counter_counts_what_it_says_on_the_thread_backend() {
    let m = LeaseManager::builder()
        .name_prefix("pt-count-thread")
        .max_pools(1)
        .workers_per_pool(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    assert_eq!(lease.run(|| 1).await, Ok(1));
    assert!(lease.call(Pid).await.is_ok());
    assert!(matches!(
        lease.call(Boom("b".into())).await,
        Err(LeaseError::Panicked(_))
    ));
    assert!(lease.run(|| panic!("closure")).await.is_err());
    // Serde does not run on threads: a "fragile" job just runs.
    check(3, Fault::None, lease.call(fragile(3, Fault::None)).await);
    lease.release().await;
    let g = WorkGrinder::builder(&m)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let items: Vec<_> = (0..10)
        .map(|i| g.enqueue_call(fragile(i, Fault::None)).unwrap())
        .collect();
    for (i, h) in items.into_iter().enumerate() {
        check(i as u32, Fault::None, h.await);
    }
    g.stop(StopMode::Drain).await;
    let c = counted(&m, [13, 2, 0, 0], Some([0; 5])).await;
    assert_eq!(c.worker_states_rebuilt, 2, "{c:?}");
    m.stop().await;
}

/// A grinder item on the process backend counts once, as what happened to it (not one count per
/// frame).
async fn grinder_items_count_one_by_one_on_the_process_backend() {
    let m = builder("pt-count-grind", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(20)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let good: Vec<_> = (0..15)
        .map(|i| g.enqueue_call(fragile(i, Fault::None)).unwrap())
        .collect();
    let bad: Vec<_> = (0..3)
        .map(|_| g.enqueue_call(Boom("x".into())).unwrap())
        .collect();
    let failed = g.enqueue_call(fragile(99, Fault::EncodeOutput)).unwrap();
    for h in good {
        assert!(h.await.is_ok());
    }
    for h in bad {
        assert!(h.await.is_err());
    }
    assert!(failed.await.is_err());
    // An abort loses its frame's items: each counts as lost.
    let crash = g.enqueue_call(Abort).unwrap();
    assert_eq!(crash.await, Err(LeaseError::WorkerLost));
    g.stop(StopMode::Drain).await;
    // The crashed child's replacement starts after the answer.
    counted(&m, [15, 3, 1, 1], None).await;
    let c = common::stats_until(&m, "a new child", |s| s.counters.children_started == 2)
        .await
        .counters;
    assert_eq!(children_counted(&c)[..2], [2, 1], "{c:?}");
    m.stop().await;
}

/// A job sent to a child that was killed a moment before — still exiting, so its pipe takes the
/// job — goes to a new child: the old one never took the job from its pipe, so it cannot have
/// started it. Before, it answered `WorkerLost` (a big child takes a while to exit).
async fn a_job_sent_to_a_child_that_was_just_killed_goes_to_a_new_one() {
    let m = builder("pt-just-killed", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    for round in 0..8 {
        let pid = lease.call(Keep { mb: 200 }).await.unwrap();
        rustix_kill(pid);
        let next = lease.call(Pid).await;
        assert!(
            matches!(next, Ok(p) if p != pid),
            "round {round}: {next:?} after killing {pid}"
        );
    }
    let c = counted(&m, [16, 0, 0, 0], None).await;
    assert_eq!(children_counted(&c)[..2], [9, 8], "{c:?}");
    lease.release().await;
    m.stop().await;
}

/// A child that fails its start is no crash: only the killed one counts, however many of its
/// replacements fail — whether they refuse in `on_child_start` or exit before their handshake.
async fn children_that_fail_their_start_are_not_counted_as_crashes() {
    let dir = scratch("start-fails");
    // A worker program that exits at once while `exit-now` exists.
    let script = dir.join("worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e {dir}/exit-now ] && exit 3\nexec {exe}\n",
            dir = dir.display(),
            exe = std::env::current_exe().unwrap().display()
        ),
    )
    .unwrap();
    let made = std::process::Command::new("chmod")
        .args(["+x", &script.display().to_string()])
        .status()
        .unwrap();
    assert!(made.success());
    for refusal in ["on_child_start", "exit"] {
        let m = builder(&format!("pt-start-fails-{refusal}"), 1, 1)
            .worker_program(&script)
            .build()
            .unwrap();
        m.start().await.unwrap();
        let lease = m.acquire().await.unwrap();
        let pid = lease.call(Pid).await.unwrap();
        let flag = match refusal {
            "exit" => dir.join("exit-now"),
            _ => refuse_starts_flag(),
        };
        std::fs::write(&flag, b"").unwrap();
        rustix_kill(pid);
        assert_eq!(
            lease.call(Pid).await,
            Err(LeaseError::NeverRan),
            "{refusal}"
        );
        // The worker retries with backoff meanwhile: a few starts fail.
        let s = common::stats_until(&m, "starts refused", |s| {
            s.counters.worker_state_failures >= 3
        })
        .await;
        assert_eq!(
            children_counted(&s.counters),
            [1, 1, 0, 0, 0],
            "{refusal}: {s:?}"
        );
        std::fs::remove_file(&flag).unwrap();
        lease.release().await;
        m.stop().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// No child holds another child's pipes (each watcher's wake pipe is close-on-exec): every
/// child of a pool has the same number of pipe descriptors, however many were started before.
async fn no_child_inherits_another_childs_pipes() {
    let m = builder("pt-fds", 1, 4).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    // Four at once: one in each child.
    let asked: Vec<_> = (0..4)
        .map(|_| lease.submit_call(PipeFds { nap_ms: 300 }).unwrap())
        .collect();
    let mut per_child = std::collections::BTreeMap::new();
    for a in asked {
        let (pid, pipes) = a.await.unwrap();
        per_child.insert(pid, pipes);
    }
    assert_eq!(per_child.len(), 4, "one job in each child: {per_child:?}");
    let counts: std::collections::BTreeSet<_> = per_child.values().collect();
    assert_eq!(
        counts.len(),
        1,
        "pipe descriptors per child differ: {per_child:?}"
    );
    lease.release().await;
    m.stop().await;
}

/// A child that printed what Rust prints when an allocation fails, and later aborted, crashed:
/// only a death right after that line is a memory death.
async fn an_abort_after_printing_an_allocation_failure_is_a_crash() {
    // Under a memory limit (far above what these jobs use), where such a report counts.
    let m = builder("pt-says-oom", 1, 1)
        .child_memory_limit(4 << 30)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    assert!(lease.call(SaysOom).await.is_ok());
    assert!(lease.call(Pid).await.is_ok());
    assert_eq!(lease.call(Abort).await, Err(LeaseError::WorkerLost));
    let c = counted(&m, [2, 0, 0, 1], None).await;
    assert_eq!(children_counted(&c)[1..4], [1, 0, 0], "{c:?}");
    lease.release().await;
    m.stop().await;
}

/// Grinder items whose part never reached a worker (its lease expired while they queued)
/// answer `NeverRan` — on both backends alike.
async fn grinder_items_whose_part_never_ran_answer_never_ran() {
    for backend in [Backend::Process, Backend::Thread] {
        let m = builder(&format!("pt-unrun-{backend:?}"), 1, 1)
            .backend(backend)
            .lease_grace(Duration::ZERO)
            .build()
            .unwrap();
        m.start().await.unwrap();
        let g = WorkGrinder::builder(&m)
            .batch_size_threshold(6)
            .max_wait(Duration::from_millis(50))
            .lease_for(Duration::from_millis(300))
            .build()
            .unwrap();
        g.start().await.unwrap();
        // One part naps past the lease (on the only worker); the other part waits behind it.
        let slow = g.enqueue_call(Nap(1000)).unwrap();
        let queued: Vec<_> = (0..5).map(|_| g.enqueue_call(Pid).unwrap()).collect();
        let _ = slow.await;
        for h in queued {
            assert_eq!(h.await, Err(LeaseError::NeverRan), "{backend:?}");
        }
        g.stop(StopMode::Drain).await;
        m.stop().await;
    }
}

/// A child's output nested 40 000 deep — which the child encodes on its main thread — is
/// decoded by the parent without overflowing the worker thread's stack, on `call` and in a
/// grinder batch; and the child decodes a deep input the same way. (Before, the parent's worker
/// thread overflowed decoding it: the whole host process aborted.)
async fn deeply_nested_values_cross_without_overflowing_a_stack() {
    // What the child's 8 MiB main thread encodes; the parent's worker threads have 2 MiB,
    // which overflowed at 20 000 before. The input: what a worker thread can encode.
    const DEPTH: usize = 40_000;
    const INPUT: usize = 5_000;
    let m = builder("pt-deep", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let (seen, out) = lease
        .call(Deep {
            input: Node::deep(INPUT),
            output: DEPTH,
        })
        .await
        .unwrap();
    assert_eq!((seen, out.depth()), (INPUT, DEPTH));
    lease.release().await;
    let g = WorkGrinder::builder(&m)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let items: Vec<_> = (0..3)
        .map(|_| {
            g.enqueue_call(Deep {
                input: Node::deep(INPUT),
                output: DEPTH,
            })
            .unwrap()
        })
        .collect();
    for item in items {
        let (seen, out) = item.await.unwrap();
        assert_eq!((seen, out.depth()), (INPUT, DEPTH));
    }
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

/// `max_jobs_per_child` holds for grinder items too: a batch of 40 on one worker runs at most 3
/// in each child (before, one child ran all 40, being one frame).
async fn the_grinder_keeps_to_max_jobs_per_child() {
    let m = builder("pt-grind-recycle", 1, 1)
        .max_jobs_per_child(3)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(40)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let items: Vec<_> = (0..40).map(|_| g.enqueue_call(Pid).unwrap()).collect();
    let mut per_child = std::collections::BTreeMap::<u32, usize>::new();
    for item in items {
        *per_child.entry(item.await.unwrap()).or_default() += 1;
    }
    g.stop(StopMode::Drain).await;
    assert!(per_child.values().all(|&n| n <= 3), "{per_child:?}");
    assert!(per_child.len() >= 14, "{per_child:?}");
    let c = counted(&m, [40, 0, 0, 0], None).await;
    assert!(c.children_recycled >= 13, "{c:?}");
    m.stop().await;
}

/// In a grinder frame, an item's answer leaves the child within a few ms of its end — it does
/// not wait for the next item (before, three quick items behind which a slow one ran were
/// answered with it, 2 s later) — so a crash later in the frame costs only the items not done.
async fn grinder_answers_leave_the_child_as_items_end() {
    let m = builder("pt-outbox", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(4)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let begun = Instant::now();
    let quick: Vec<_> = (0..3)
        .map(|_| g.enqueue_call(step_of(0)).unwrap())
        .collect();
    let slow = g.enqueue_call(step_of(2000)).unwrap();
    for h in quick {
        h.await.unwrap();
    }
    let took = begun.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "quick items answered after {took:?}"
    );
    slow.await.unwrap();
    // Done items before a crash keep their answers; the one running and the next 32 (the most
    // a child holds unsent) are lost with the child; every later one never started.
    const AFTER: usize = 40;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(4 + AFTER)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let before: Vec<_> = (0..3)
        .map(|_| g.enqueue_call(step_of(0)).unwrap())
        .collect();
    let crash = g
        .enqueue_call(Step {
            ms: 300,
            abort: true,
        })
        .unwrap();
    let after: Vec<_> = (0..AFTER)
        .map(|_| g.enqueue_call(step_of(0)).unwrap())
        .collect();
    for h in before {
        assert!(h.await.is_ok());
    }
    assert_eq!(crash.await, Err(LeaseError::WorkerLost));
    let mut answers = Vec::new();
    for h in after {
        answers.push(h.await);
    }
    let lost = answers
        .iter()
        .take_while(|a| **a == Err(LeaseError::WorkerLost))
        .count();
    assert_eq!(lost, 32, "{answers:?}");
    assert!(
        answers[lost..]
            .iter()
            .all(|a| *a == Err(LeaseError::NeverRan)),
        "{answers:?}"
    );
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

fn main() {
    process::init(jobs());
    let all = common::named_tests![
        a_panicking_callback_answers_its_job_and_the_child_serves_on,
        in_a_batch_each_panicking_callback_fails_alone,
        an_output_over_the_cap_stops_encoding_at_the_cap,
        a_child_killed_while_idle_is_reaped_at_once,
        an_idle_pool_of_sixteen_children_costs_nothing,
        every_counter_counts_what_it_says_on_the_process_backend,
        every_counter_counts_what_it_says_on_the_thread_backend,
        grinder_items_count_one_by_one_on_the_process_backend,
        a_job_sent_to_a_child_that_was_just_killed_goes_to_a_new_one,
        children_that_fail_their_start_are_not_counted_as_crashes,
        no_child_inherits_another_childs_pipes,
        an_abort_after_printing_an_allocation_failure_is_a_crash,
        grinder_items_whose_part_never_ran_answer_never_ran,
        deeply_nested_values_cross_without_overflowing_a_stack,
        the_grinder_keeps_to_max_jobs_per_child,
        grinder_answers_leave_the_child_as_items_end,
    ];
    let ran = common::run_named(
        all,
        Duration::from_secs(120),
        common::block_on_tokio,
        |_| {},
        |_| {},
    );
    let me = std::process::id();
    assert!(
        eventually(Duration::from_secs(5), || children_of(me).0.is_empty()),
        "children left: {:?}",
        children_of(me)
    );
    let _ = alive;
    ran.finish();
}
