//! Property test: the WorkGrinder lifecycle under random interleavings.
//!
//! One manager (2 pools × 2 workers) and two grinders over it get random sequences of: grinder
//! starts and stops (`Drain`, `CancelPending`), some in background tasks that overlap the next
//! operations; items sent with `enqueue` (handle kept or dropped at once), `submit` (awaited in a
//! background task, some aborted) and `submit_blocking` (from a plain thread), which sleep a
//! little, wait on a gate the test opens later, or panic; manager stops and starts; killed pools;
//! and leases the test itself holds, so that batches must wait for a pool.
//!
//! Checked: every item is answered exactly once (a bounded wait, or it "hung") with an answer
//! that fits it, and its closure ran at most once — exactly once when it answered a value or
//! `Panicked`, never when it answered another error; every grinder stop (background ones too)
//! returns within its `stop_timeout` + 2 s and every manager stop within `shutdown_timeout` +
//! 2 s; at the end nothing is pending, no batch is in flight, the batch counters agree with the
//! answers, and no thread of the manager is left.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::{GrinderStats, JobHandle, Lease, LeaseError, LeaseManager, StopMode, WorkGrinder};
use proptest::prelude::*;
use testkit::Gate;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Gates that items can wait on; every one is open at the end of a case.
const GATES: usize = 3;
/// Bound for anything that must not hang: an item's answer, a start, a release, a kill.
const BOUND: Duration = Duration::from_secs(20);
/// How late a stop may return past its own timeout (a shared 2-core VM).
const SLACK: Duration = Duration::from_secs(2);
/// The manager's `shutdown_timeout`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(300);
/// Each grinder's `stop_timeout`.
const STOP_TIMEOUT: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(600)];

/// Numbers the cases, so that each has its own thread-name prefix (a failed case may leave
/// threads behind; the next one must not count them).
static CASES: AtomicUsize = AtomicUsize::new(0);

/// What an item does on its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Sleeps this many milliseconds.
    Sleep(u64),
    /// Waits until this gate is opened.
    Gated(usize),
    /// Panics.
    Panic,
}

/// When a background `submit` task is aborted.
#[derive(Debug, Clone, Copy)]
enum Abort {
    Never,
    /// Right after it was spawned (it may not have queued its item yet).
    AtOnce,
    /// This many milliseconds later, from another task, while the next operations run.
    AfterMs(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Start {
        g: usize,
        background: bool,
    },
    Stop {
        g: usize,
        mode: StopMode,
        background: bool,
    },
    Enqueue {
        g: usize,
        work: Work,
        keep: bool,
    },
    Submit {
        g: usize,
        work: Work,
        abort: Abort,
    },
    SubmitBlocking {
        g: usize,
        work: Work,
    },
    ManagerStop,
    ManagerStart,
    /// Kills the pool of the i-th live lease (a batch's or the test's own).
    KillPool(usize),
    /// The test acquires a lease (waiting at most 30 ms) and holds it.
    AcquireOther,
    ReleaseOther(usize),
    OpenGate(usize),
    Sleep(u64),
}

fn work() -> impl Strategy<Value = Work> {
    prop_oneof![
        6 => (0u64..=20).prop_map(Work::Sleep),
        2 => (0..GATES).prop_map(Work::Gated),
        1 => Just(Work::Panic),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let g = || 0usize..2;
    let mode = prop_oneof![Just(StopMode::Drain), Just(StopMode::CancelPending)];
    let abort = prop_oneof![
        2 => Just(Abort::Never),
        1 => Just(Abort::AtOnce),
        1 => (1u64..30).prop_map(Abort::AfterMs),
    ];
    prop_oneof![
        5 => (g(), any::<bool>()).prop_map(|(g, background)| Op::Start { g, background }),
        2 => (g(), mode, any::<bool>())
            .prop_map(|(g, mode, background)| Op::Stop { g, mode, background }),
        10 => (g(), work(), any::<bool>()).prop_map(|(g, work, keep)| Op::Enqueue { g, work, keep }),
        6 => (g(), work(), abort).prop_map(|(g, work, abort)| Op::Submit { g, work, abort }),
        3 => (g(), work()).prop_map(|(g, work)| Op::SubmitBlocking { g, work }),
        1 => Just(Op::ManagerStop),
        2 => Just(Op::ManagerStart),
        1 => (0usize..4).prop_map(Op::KillPool),
        2 => Just(Op::AcquireOther),
        2 => (0usize..4).prop_map(Op::ReleaseOther),
        1 => (0..GATES).prop_map(Op::OpenGate),
        4 => (1u64..=25).prop_map(Op::Sleep),
    ]
}

/// The case's gates; dropping them (also when a check panics) opens them all.
struct Gates(Vec<Gate>);

impl Gates {
    fn open_all(&self) {
        for gate in &self.0 {
            gate.open();
        }
    }
}

impl Drop for Gates {
    fn drop(&mut self) {
        self.open_all();
    }
}

/// How an item was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Enqueue,
    Submit,
    SubmitBlocking,
}

/// Where an item's answer comes from.
enum Answer {
    /// The sending call refused it at once (`enqueue` only).
    Refused(LeaseError),
    /// Already answered (a probe `submit` the test awaited itself).
    Answered(Result<u64, LeaseError>),
    Handle(JobHandle<u64>),
    /// The handle was dropped at once: the item may run; nothing to await.
    Dropped,
    /// A background `submit`; `abortable` if it is (or will be) aborted.
    Task {
        task: JoinHandle<Result<u64, LeaseError>>,
        abortable: bool,
    },
    /// A plain thread's `submit_blocking`.
    Thread(oneshot::Receiver<Result<u64, LeaseError>>),
}

struct Item {
    id: u64,
    /// Which operation sent it ("op 7"), or "the final probe".
    origin: String,
    grinder: usize,
    work: Work,
    via: Via,
    /// How many times its closure ran.
    ran: Arc<AtomicUsize>,
    answer: Answer,
}

/// What a background lifecycle task reports.
enum Life {
    Started(Result<(), LeaseError>),
    /// How long the stop took; `None` if it did not return within [`BOUND`].
    Stopped(Option<Duration>),
}

struct Case {
    prefix: String,
    /// The operations, one per line with its index, for failure messages.
    script: String,
    manager: LeaseManager,
    grinders: [WorkGrinder; 2],
    gates: Gates,
    items: Vec<Item>,
    held: Vec<Lease>,
    /// Background starts and stops: (grinder, what, task).
    lifecycle: Vec<(usize, String, JoinHandle<Life>)>,
    /// Tasks that abort a `submit` task later.
    aborters: Vec<JoinHandle<()>>,
    /// A pool was killed or the manager stopped: items may fail with `NeverRan`.
    worker_loss_possible: bool,
}

/// The closure of item `id`: counts its runs, then does its work and returns `id`.
fn job(
    gates: &Gates,
    id: u64,
    work: Work,
    ran: &Arc<AtomicUsize>,
) -> impl FnOnce() -> u64 + Send + 'static {
    let ran = Arc::clone(ran);
    let gate = match work {
        Work::Gated(n) => Some(gates.0[n].clone()),
        _ => None,
    };
    move || {
        ran.fetch_add(1, SeqCst);
        match work {
            Work::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Work::Gated(_) => gate.expect("a gated item has its gate").wait(),
            Work::Panic => panic!("item {id} panics as planned"),
        }
        id
    }
}

/// Stops `g` and measures how long it took (`None`: not within [`BOUND`]).
async fn timed_stop(g: WorkGrinder, mode: StopMode) -> Option<Duration> {
    let begun = Instant::now();
    tokio::time::timeout(BOUND, g.stop(mode))
        .await
        .ok()
        .map(|()| begun.elapsed())
}

impl Case {
    fn new(ops: &[Op]) -> Self {
        let prefix = format!("gp{:04}", CASES.fetch_add(1, SeqCst));
        let manager = LeaseManager::builder()
            .max_pools(2)
            .min_pools(1)
            .workers_per_pool(2)
            .shutdown_timeout(SHUTDOWN_TIMEOUT)
            .name_prefix(prefix.as_str())
            .build()
            .expect("valid manager settings");
        let grinders = [
            WorkGrinder::builder(&manager)
                .batch_size_threshold(3)
                .max_wait(Duration::from_millis(10))
                .max_pending(8)
                .stop_timeout(STOP_TIMEOUT[0])
                .owner_prefix("gp-a")
                .build()
                .expect("valid grinder settings"),
            WorkGrinder::builder(&manager)
                .batch_size_threshold(1)
                .max_wait(Duration::from_millis(5))
                .max_pending(4)
                .max_concurrent_batches(1)
                .stop_timeout(STOP_TIMEOUT[1])
                .owner_prefix("gp-b")
                .build()
                .expect("valid grinder settings"),
        ];
        let script = ops
            .iter()
            .enumerate()
            .map(|(i, op)| format!("  {i:2}: {op:?}"))
            .collect::<Vec<_>>()
            .join("\n");
        Case {
            prefix,
            script,
            manager,
            grinders,
            gates: Gates((0..GATES).map(|_| Gate::new()).collect()),
            items: Vec::new(),
            held: Vec::new(),
            lifecycle: Vec::new(),
            aborters: Vec::new(),
            worker_loss_possible: false,
        }
    }

    /// Fails the case with `msg` and the operation sequence.
    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!(
            "{msg}\n  (case {}; grinder 0: threshold 3, max_pending 8, stop_timeout {:?}; \
             grinder 1: threshold 1, max_pending 4, one batch at a time, stop_timeout {:?})\n  \
             operations:\n{}",
            self.prefix, STOP_TIMEOUT[0], STOP_TIMEOUT[1], self.script
        )
    }

    /// Awaits `fut` at most [`BOUND`]; fails the case naming `what` if it hangs.
    async fn bounded<F: std::future::Future>(&self, what: &str, fut: F) -> F::Output {
        match tokio::time::timeout(BOUND, fut).await {
            Ok(out) => out,
            Err(_) => self.fail(format!("{what} did not finish within {BOUND:?}: it hangs")),
        }
    }

    fn check_start(&self, what: &str, result: Result<(), LeaseError>) {
        match result {
            Ok(()) | Err(LeaseError::NotStarted) => {}
            Err(e) => self.fail(format!("{what}: unexpected error {e:?}")),
        }
    }

    fn check_stop(&self, g: usize, what: &str, took: Option<Duration>) {
        let limit = STOP_TIMEOUT[g] + SLACK;
        match took {
            Some(took) if took <= limit => {}
            Some(took) => self.fail(format!(
                "{what} took {took:?}, more than stop_timeout {:?} + {SLACK:?}",
                STOP_TIMEOUT[g]
            )),
            None => self.fail(format!("{what} did not return within {BOUND:?}")),
        }
    }

    async fn manager_stop(&self, what: &str) {
        let begun = Instant::now();
        self.bounded(what, self.manager.stop()).await;
        let took = begun.elapsed();
        if took > SHUTDOWN_TIMEOUT + SLACK {
            self.fail(format!(
                "{what} took {took:?}, more than shutdown_timeout {SHUTDOWN_TIMEOUT:?} + {SLACK:?}"
            ));
        }
    }

    fn new_item(&self) -> (u64, Arc<AtomicUsize>) {
        (self.items.len() as u64, Arc::new(AtomicUsize::new(0)))
    }

    async fn apply(&mut self, at: usize, op: Op) {
        match op {
            Op::Start { g, background } => {
                let grinder = self.grinders[g].clone();
                let what = format!("op {at}: start of grinder {g}");
                if background {
                    let task = tokio::spawn(async move { Life::Started(grinder.start().await) });
                    self.lifecycle.push((g, format!("background {what}"), task));
                } else {
                    let result = self.bounded(&what, grinder.start()).await;
                    self.check_start(&what, result);
                }
            }
            Op::Stop {
                g,
                mode,
                background,
            } => {
                let stop = timed_stop(self.grinders[g].clone(), mode);
                let what = format!("op {at}: stop({mode:?}) of grinder {g}");
                if background {
                    let task = tokio::spawn(async move { Life::Stopped(stop.await) });
                    self.lifecycle.push((g, format!("background {what}"), task));
                } else {
                    let took = stop.await;
                    self.check_stop(g, &what, took);
                }
            }
            Op::Enqueue { g, work, keep } => {
                let (id, ran) = self.new_item();
                let answer = match self.grinders[g].enqueue(job(&self.gates, id, work, &ran)) {
                    Ok(handle) if keep => Answer::Handle(handle),
                    Ok(handle) => {
                        drop(handle);
                        Answer::Dropped
                    }
                    Err(
                        e
                        @ (LeaseError::NotStarted | LeaseError::Stopped | LeaseError::Unavailable),
                    ) => Answer::Refused(e),
                    Err(e) => self.fail(format!("op {at}: enqueue refused with {e:?}")),
                };
                self.items.push(Item {
                    id,
                    origin: format!("op {at}"),
                    grinder: g,
                    work,
                    via: Via::Enqueue,
                    ran,
                    answer,
                });
            }
            Op::Submit { g, work, abort } => {
                let (id, ran) = self.new_item();
                let grinder = self.grinders[g].clone();
                let f = job(&self.gates, id, work, &ran);
                let task = tokio::spawn(async move { grinder.submit(f).await });
                let abortable = match abort {
                    Abort::Never => false,
                    Abort::AtOnce => {
                        task.abort();
                        true
                    }
                    Abort::AfterMs(ms) => {
                        let abort = task.abort_handle();
                        self.aborters.push(tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            abort.abort();
                        }));
                        true
                    }
                };
                self.items.push(Item {
                    id,
                    origin: format!("op {at}"),
                    grinder: g,
                    work,
                    via: Via::Submit,
                    ran,
                    answer: Answer::Task { task, abortable },
                });
            }
            Op::SubmitBlocking { g, work } => {
                let (id, ran) = self.new_item();
                let grinder = self.grinders[g].clone();
                let f = job(&self.gates, id, work, &ran);
                let (tx, rx) = oneshot::channel();
                std::thread::Builder::new()
                    .name(format!("sb-item-{id}"))
                    .spawn(move || {
                        let _ = tx.send(grinder.submit_blocking(f));
                    })
                    .expect("spawn a submitting thread");
                self.items.push(Item {
                    id,
                    origin: format!("op {at}"),
                    grinder: g,
                    work,
                    via: Via::SubmitBlocking,
                    ran,
                    answer: Answer::Thread(rx),
                });
            }
            Op::ManagerStop => {
                self.worker_loss_possible = true;
                self.manager_stop(&format!("op {at}: manager stop")).await;
            }
            Op::ManagerStart => {
                let what = format!("op {at}: manager start");
                if let Err(e) = self.bounded(&what, self.manager.start()).await {
                    self.fail(format!("{what} failed: {e:?}"));
                }
            }
            Op::KillPool(i) => {
                let leases = self.manager.stats().await.leases;
                if !leases.is_empty() {
                    let pool = leases[i % leases.len()].pool;
                    self.worker_loss_possible = true;
                    let what = format!("op {at}: kill_pool({pool:?})");
                    self.bounded(&what, self.manager.kill_pool(pool)).await;
                }
            }
            Op::AcquireOther => {
                let acquire = self
                    .manager
                    .acquire()
                    .owner("other")
                    .timeout(Duration::from_millis(30));
                match self.bounded(&format!("op {at}: acquire"), acquire).await {
                    Ok(lease) => self.held.push(lease),
                    Err(
                        LeaseError::Timeout(_)
                        | LeaseError::NotStarted
                        | LeaseError::Stopped
                        | LeaseError::Unavailable,
                    ) => {}
                    Err(e) => self.fail(format!("op {at}: acquire failed with {e:?}")),
                }
            }
            Op::ReleaseOther(i) => {
                if !self.held.is_empty() {
                    let lease = self.held.remove(i % self.held.len());
                    self.bounded(&format!("op {at}: release"), lease.release())
                        .await;
                }
            }
            Op::OpenGate(n) => self.gates.0[n].open(),
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }

    /// Opens the gates, releases the held leases, lets the background starts and stops end,
    /// stops both grinders, collects every answer, stops the manager; then checks everything.
    async fn finish(mut self) {
        self.gates.open_all();
        for lease in std::mem::take(&mut self.held) {
            self.bounded("final release", lease.release()).await;
        }
        for (g, what, task) in std::mem::take(&mut self.lifecycle) {
            match self.bounded(&what, task).await {
                Ok(Life::Started(result)) => self.check_start(&what, result),
                Ok(Life::Stopped(took)) => self.check_stop(g, &what, took),
                Err(e) => self.fail(format!("{what} panicked: {e}")),
            }
        }
        for task in std::mem::take(&mut self.aborters) {
            self.bounded("an aborting task", task)
                .await
                .expect("an aborting task does not fail");
        }
        // Nothing blocks the pools any more: a grinder that reports itself started must run a
        // new item.
        for g in 0..2 {
            if !self.grinders[g].stats().await.started {
                continue;
            }
            let (mut id, mut ran) = self.new_item();
            let probe = self.grinders[g].submit(job(&self.gates, id, Work::Sleep(0), &ran));
            let mut what = format!(
                "item {id} (a probe submitted to grinder {g}, which reports itself started)"
            );
            let mut answer = self.bounded(&what, probe).await;
            if answer == Err(LeaseError::NeverRan) && self.worker_loss_possible {
                // A pool crashed by `kill_pool` dies asynchronously: for a moment it can still
                // be handed out, and the probe's batch lands on it. That item is lost as
                // promised (NeverRan: not run); the next probe must run.
                self.items.push(Item {
                    id,
                    origin: "a probe that met a crashing pool".to_owned(),
                    grinder: g,
                    work: Work::Sleep(0),
                    via: Via::Submit,
                    ran: ran.clone(),
                    answer: Answer::Answered(answer.clone()),
                });
                (id, ran) = self.new_item();
                let probe = self.grinders[g].submit(job(&self.gates, id, Work::Sleep(0), &ran));
                what = format!("item {id} (a second probe submitted to grinder {g})");
                answer = self.bounded(&what, probe).await;
            }
            if answer != Ok(id) {
                self.fail(format!("{what} answered {answer:?}"));
            }
            self.items.push(Item {
                id,
                origin: "the final probe".to_owned(),
                grinder: g,
                work: Work::Sleep(0),
                via: Via::Submit,
                ran,
                answer: Answer::Answered(answer),
            });
        }
        for g in 0..2 {
            let took = timed_stop(self.grinders[g].clone(), StopMode::Drain).await;
            self.check_stop(g, &format!("final stop(Drain) of grinder {g}"), took);
        }

        // Every answer, before the final manager stop (which would revoke what still runs).
        let mut answers = Vec::new();
        for item in std::mem::take(&mut self.items) {
            let what = format!(
                "item {} ({}, {:?} to grinder {}, {:?})",
                item.id, item.origin, item.via, item.grinder, item.work
            );
            let refused = matches!(item.answer, Answer::Refused(_));
            let answer = match item.answer {
                Answer::Refused(e) => Some(Err(e)),
                Answer::Answered(out) => Some(out),
                Answer::Dropped => None,
                Answer::Handle(handle) => Some(self.bounded(&what, handle).await),
                Answer::Task { task, abortable } => match self.bounded(&what, task).await {
                    Ok(out) => Some(out),
                    Err(e) if e.is_cancelled() && abortable => None,
                    Err(e) => self.fail(format!("{what}: its submit task failed: {e}")),
                },
                Answer::Thread(rx) => match self.bounded(&what, rx).await {
                    Ok(out) => Some(out),
                    Err(_) => self.fail(format!("{what}: its thread ended without an answer")),
                },
            };
            answers.push((what, item.id, item.work, item.ran, refused, answer));
        }

        self.manager_stop("final manager stop").await;

        // No batch or item left anywhere.
        let mut stats: Vec<GrinderStats> = Vec::new();
        for (g, grinder) in self.grinders.iter().enumerate() {
            let deadline = Instant::now() + testkit::EVENTUALLY;
            loop {
                let s = grinder.stats().await;
                if s.in_flight_batches == 0 && s.pending == 0 {
                    if s.started {
                        self.fail(format!("grinder {g} still started after its stop: {s:?}"));
                    }
                    stats.push(s);
                    break;
                }
                if Instant::now() >= deadline {
                    self.fail(format!(
                        "grinder {g} still counts pending items or batches in flight {:?} \
                         after every item was answered and everything stopped: {s:?}",
                        testkit::EVENTUALLY
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let m = self.manager.stats().await;
        if m.leased != 0 || !m.leases.is_empty() || m.waiting != 0 {
            self.fail(format!(
                "the stopped manager still has leases or waiters: {m:#?}"
            ));
        }
        let left = testkit::wait_no_threads(&self.prefix, testkit::EVENTUALLY);
        if !left.is_empty() {
            self.fail(format!("threads left after the final stops: {left:?}"));
        }

        // Now no item can run any more: the ledger is final.
        let mut done_with_a_batch = 0u64;
        let mut accepted = 0u64;
        for (what, id, work, ran, refused, answer) in &answers {
            let ran = ran.load(SeqCst);
            if ran > 1 {
                self.fail(format!("{what} ran {ran} times (answer {answer:?})"));
            }
            if !refused {
                accepted += 1;
            }
            let Some(answer) = answer else { continue };
            match answer {
                Ok(v) if v == id && *work != Work::Panic && ran == 1 => done_with_a_batch += 1,
                Err(LeaseError::Panicked(_)) if *work == Work::Panic && ran == 1 => {
                    done_with_a_batch += 1
                }
                Err(LeaseError::Unavailable) if *refused && ran == 0 => {}
                Err(LeaseError::Stopped | LeaseError::NotStarted) if ran == 0 => {}
                Err(LeaseError::NeverRan) if self.worker_loss_possible && ran == 0 => {}
                _ => self.fail(format!(
                    "{what} answered {answer:?} but its closure ran {ran} times \
                     (pool killed or manager stopped in this case: {})",
                    self.worker_loss_possible
                )),
            }
        }
        // Books: an item answered by a worker belonged to a batch that completed, and a batch
        // counts only items that were accepted.
        let items_done: u64 = stats.iter().map(|s| s.items_done).sum();
        if items_done < done_with_a_batch || items_done > accepted {
            self.fail(format!(
                "the grinders count {items_done} items done, but {done_with_a_batch} items were \
                 answered by a worker and {accepted} were accepted: {stats:?}"
            ));
        }
    }
}

async fn run_case(ops: Vec<Op>) {
    let mut case = Case::new(&ops);
    let what = "initial manager start";
    if let Err(e) = case.bounded(what, case.manager.start()).await {
        case.fail(format!("{what} failed: {e:?}"));
    }
    for g in 0..2 {
        let result = case
            .bounded("initial grinder start", case.grinders[g].start())
            .await;
        if let Err(e) = result {
            case.fail(format!("initial start of grinder {g} failed: {e:?}"));
        }
    }
    for (at, op) in ops.into_iter().enumerate() {
        case.apply(at, op).await;
    }
    case.finish().await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_grinder_lifecycles_answer_every_item_exactly_once(ops in proptest::collection::vec(op(), 1..40)) {
        let _deadline = testkit::deadline();
        testkit::block_on_tokio(run_case(ops));
    }
}
