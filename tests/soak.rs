//! Soak: a long run with every fault mixed in, then a full accounting.
//!
//! `cargo test --release --test soak -- --ignored soak` runs 1 000 000 lease jobs and 100 000
//! `WorkGrinder` items (set `LEASEPOOL_SOAK_JOBS` and `LEASEPOOL_SOAK_ITEMS` to change them);
//! `.ci/run` runs `soak_short` (20 000 jobs, 2 000 items).
//!
//! Lease jobs: 1 % panic, 1 % of leases are dropped mid-job, 0.5 % of leases expire under their
//! jobs, and a pool actor is killed every 10 000 jobs.
//!
//! Grinder items, alongside: submitted with `enqueue` (handle kept, or dropped: the item still
//! runs), `submit(..).await` and `submit_blocking` from plain threads, 2 % of them panicking,
//! through a small queue (`max_pending` 64) so that backpressure is exercised too. A pool under
//! a grinder batch is killed every 200 items (20 times at most). Each item has a ledger entry:
//! how many closures were made for it, how many of them ran, how many were dropped unrun, and
//! how its handle resolved. The two parts pace each other so that they run side by side.
//!
//! Once, in the middle of the run, everything is restarted: `grinder.stop(StopMode::Drain)`,
//! `manager.stop()`, `manager.start()`, `grinder.start()`. Lease acquires refused meanwhile
//! (`NotStarted`, `Stopped`) are retried; grinder items in flight may answer `Stopped`,
//! `NotStarted` or `WorkerLost` — but only if their life crossed the restart.
//!
//! Checked: no outcome lost or doubled, no hung future, the count invariant in periodic
//! snapshots, no worker thread left after `stop`, RSS growth.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasepool::{JobHandle, LeaseError, LeaseManager, StopMode, WorkGrinder};
use testkit::{assert_invariant, threads_named, wait_no_threads};

const PREFIX: &str = "lpsoak";
const TASKS: u64 = 16;
const BATCH: u64 = 50;
/// Batch leases of the grinder are owned by `soakgrind-batch-{n}`.
const GRINDER_OWNER: &str = "soakgrind";
/// Async tasks submitting grinder items with `enqueue` and `submit`.
const GRINDER_TASKS: u64 = 4;
/// Item indices an async grinder task takes at a time.
const GRINDER_CHUNK: u64 = 40;
/// Plain threads submitting grinder items with `submit_blocking`.
const BLOCKING_THREADS: usize = 6;
/// Most pools under grinder batches killed over the run (one per 200 items up to this).
const GRINDER_KILLS: u64 = 20;
/// How far (as a fraction of its own total) one part may run ahead of the other.
const PACE_SLACK: f64 = 0.02;

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    panicked: u64,
    lost_or_revoked: u64,
    stopped: u64,
    dropped_mid_job: u64,
    pools_killed: u64,
    acquire_retries: u64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Planned panics are 1 % of the jobs; printing each (with a backtrace under CI) would drown the
/// report. Everything else still goes to the default hook.
fn quiet_planned_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.starts_with("planned soak panic"));
        let killed = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.contains("fault injection"));
        if !planned && !killed {
            default(info);
        }
    }));
}

/// Awaits `fut`, panicking with `what` if it takes longer than `bound`.
async fn within<F: std::future::Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(bound, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {bound:?}"),
    }
}

/// Where the run stands with respect to the one restart.
const BEFORE_RESTART: u8 = 0;
const RESTARTING: u8 = 1;
const AFTER_RESTART: u8 = 2;

/// Whether something that began in phase `began` and ended in phase `ended` overlapped the
/// restart window (from the grinder's stop to its start again).
fn crossed_restart(began: u8, ended: u8) -> bool {
    began == RESTARTING || ended == RESTARTING || began != ended
}

/// The shared progress of both parts, for pacing, the restart trigger and stall detection.
struct Progress {
    jobs: u64,
    items: u64,
    /// Lease jobs answered (any outcome).
    jobs_answered: AtomicU64,
    /// Grinder items answered (any outcome, a dropped handle counting at once).
    items_answered: AtomicU64,
    phase: AtomicU8,
    /// Set when the run is over (or given up): pacing waits end at once.
    abort: AtomicBool,
}

impl Progress {
    fn job_share(&self) -> f64 {
        self.jobs_answered.load(SeqCst) as f64 / self.jobs.max(1) as f64
    }

    fn item_share(&self) -> f64 {
        self.items_answered.load(SeqCst) as f64 / self.items.max(1) as f64
    }

    /// Lease jobs may go on unless they are more than the slack ahead of the grinder.
    fn jobs_may_go(&self) -> bool {
        self.items_answered.load(SeqCst) >= self.items
            || self.job_share() <= self.item_share() + PACE_SLACK
            || self.abort.load(SeqCst)
    }

    /// Grinder items may go on unless they are more than the slack ahead of the lease jobs.
    fn items_may_go(&self) -> bool {
        self.jobs_answered.load(SeqCst) >= self.jobs
            || self.item_share() <= self.job_share() + PACE_SLACK
            || self.abort.load(SeqCst)
    }

    fn total_answered(&self) -> u64 {
        self.jobs_answered.load(SeqCst) + self.items_answered.load(SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// The grinder ledger.

/// How an item's handle resolved, as recorded by its submitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Answer {
    Pending = 0,
    Ok,
    Panicked,
    Stopped,
    WorkerLost,
    NotStarted,
    /// The handle was dropped on purpose: the answer is not observed.
    Dropped,
    /// The await (or blocking call) did not end within its bound.
    Hung,
    /// Any other answer, or a wrong value (described in `Ledger::unexpected`).
    Unexpected,
}

const ANSWERS: [Answer; 9] = [
    Answer::Pending,
    Answer::Ok,
    Answer::Panicked,
    Answer::Stopped,
    Answer::WorkerLost,
    Answer::NotStarted,
    Answer::Dropped,
    Answer::Hung,
    Answer::Unexpected,
];

#[derive(Default)]
struct Entry {
    /// Closures made for this item (a refusal with `Unavailable` makes the next attempt).
    attempts: AtomicU8,
    /// Closures of this item that ran.
    runs: AtomicU8,
    /// Closures of this item dropped without running.
    unrun: AtomicU8,
    /// The recorded `Answer`.
    answer: AtomicU8,
    /// Restart phase when the item was submitted.
    phase_in: AtomicU8,
    /// Restart phase when its answer was recorded.
    phase_out: AtomicU8,
    /// Answers recorded (more than one is a bug of the test or the engine).
    answers: AtomicU8,
}

struct Ledger {
    entries: Vec<Entry>,
    unexpected: Mutex<Vec<String>>,
}

/// Marks its item's closure as dropped without running, unless it ran.
struct Probe {
    ledger: Arc<Ledger>,
    item: usize,
    ran: bool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.ran {
            self.ledger.entries[self.item].unrun.fetch_add(1, SeqCst);
        }
    }
}

/// How an item is submitted, by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    EnqueueKept,
    EnqueueDropped,
    Submit,
    Blocking,
}

fn mode(item: u64) -> Mode {
    match item % 10 {
        0..=2 => Mode::EnqueueKept,
        3 | 4 => Mode::EnqueueDropped,
        5..=7 => Mode::Submit,
        _ => Mode::Blocking,
    }
}

/// The `k`-th item submitted with `submit_blocking` (indices 8 and 9 of every ten).
fn blocking_item(k: u64) -> u64 {
    (k / 2) * 10 + 8 + k % 2
}

/// About 2 % of the items, spread over every submission mode.
fn planned_item_panic(item: u64) -> bool {
    item % 47 == 13
}

impl Ledger {
    fn new(items: u64) -> Arc<Self> {
        // Allocated and touched up front, so it does not show as RSS growth.
        let entries: Vec<Entry> = (0..items).map(|_| Entry::default()).collect();
        for e in &entries {
            e.answer.store(Answer::Pending as u8, SeqCst);
        }
        Arc::new(Ledger {
            entries,
            unexpected: Mutex::new(Vec::new()),
        })
    }

    /// A closure for one attempt at `item`; it returns the item's index or panics as planned.
    fn job(self: &Arc<Self>, item: u64, phase: u8) -> impl FnOnce() -> u64 + Send + 'static {
        let entry = &self.entries[item as usize];
        entry.attempts.fetch_add(1, SeqCst);
        entry.phase_in.store(phase, SeqCst);
        let probe = Probe {
            ledger: Arc::clone(self),
            item: item as usize,
            ran: false,
        };
        move || {
            let mut probe = probe;
            probe.ran = true;
            probe.ledger.entries[probe.item].runs.fetch_add(1, SeqCst);
            if planned_item_panic(item) {
                panic!("planned soak panic (grinder item)");
            }
            item
        }
    }

    fn record(&self, progress: &Progress, item: u64, answer: Answer) {
        let entry = &self.entries[item as usize];
        entry.phase_out.store(progress.phase.load(SeqCst), SeqCst);
        entry.answer.store(answer as u8, SeqCst);
        if entry.answers.fetch_add(1, SeqCst) == 0 {
            progress.items_answered.fetch_add(1, SeqCst);
        }
    }

    fn unexpected(&self, progress: &Progress, item: u64, what: String) {
        let mut list = self.unexpected.lock().unwrap();
        if list.len() < 10 {
            list.push(format!("item {item}: {what}"));
        }
        drop(list);
        self.record(progress, item, Answer::Unexpected);
    }

    /// Records how `item`'s handle (or blocking call) resolved.
    fn answered(&self, progress: &Progress, item: u64, out: Result<u64, LeaseError>) {
        let answer = match out {
            Ok(v) if v == item => Answer::Ok,
            Ok(v) => return self.unexpected(progress, item, format!("answered {v}")),
            Err(LeaseError::Panicked(_)) => Answer::Panicked,
            Err(LeaseError::Stopped) => Answer::Stopped,
            // Lost with its worker, or never started: either may follow a kill.
            Err(LeaseError::WorkerLost | LeaseError::NeverRan) => Answer::WorkerLost,
            Err(LeaseError::NotStarted) => Answer::NotStarted,
            Err(e) => return self.unexpected(progress, item, format!("answered {e:?}")),
        };
        self.record(progress, item, answer);
    }
}

/// Enqueues one attempt after another while the queue is full; `Ok(None)` after `bound`.
async fn enqueue_item(
    grinder: &WorkGrinder,
    ledger: &Arc<Ledger>,
    progress: &Progress,
    item: u64,
    bound: Duration,
    queue_full: &AtomicU64,
) -> Result<Option<JobHandle<u64>>, LeaseError> {
    let give_up = Instant::now() + bound;
    loop {
        let job = ledger.job(item, progress.phase.load(SeqCst));
        match grinder.enqueue(job) {
            Ok(handle) => return Ok(Some(handle)),
            Err(LeaseError::Unavailable) if Instant::now() < give_up => {
                queue_full.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(LeaseError::Unavailable) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// One async grinder submitter: takes chunks of item indices and submits the items that are not
/// for `submit_blocking`: `enqueue` (handle kept or dropped) and `submit(..).await`, then waits
/// for every kept handle and submit.
async fn grinder_task(
    grinder: WorkGrinder,
    ledger: Arc<Ledger>,
    progress: Arc<Progress>,
    next: Arc<AtomicU64>,
    queue_full: Arc<AtomicU64>,
    bound: Duration,
) {
    let items = progress.items;
    loop {
        while !progress.items_may_go() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if progress.abort.load(SeqCst) {
            return;
        }
        let first = next.fetch_add(GRINDER_CHUNK, SeqCst);
        if first >= items {
            return;
        }
        let last = (first + GRINDER_CHUNK).min(items);
        let mut kept = Vec::new();
        let mut submits = Vec::new();
        let mut refused = false;
        for item in first..last {
            match mode(item) {
                Mode::Blocking => {}
                Mode::EnqueueKept | Mode::EnqueueDropped => {
                    match enqueue_item(&grinder, &ledger, &progress, item, bound, &queue_full).await
                    {
                        Ok(Some(handle)) if mode(item) == Mode::EnqueueKept => {
                            kept.push((item, handle))
                        }
                        Ok(Some(handle)) => {
                            drop(handle);
                            ledger.record(&progress, item, Answer::Dropped);
                        }
                        Ok(None) => {
                            ledger.unexpected(&progress, item, format!("queue full for {bound:?}"))
                        }
                        Err(e) => {
                            refused = true;
                            ledger.answered(&progress, item, Err(e));
                        }
                    }
                }
                Mode::Submit => {
                    let job = ledger.job(item, progress.phase.load(SeqCst));
                    let grinder = &grinder;
                    submits.push(async move {
                        (item, tokio::time::timeout(bound, grinder.submit(job)).await)
                    });
                }
            }
        }
        let awaited = async {
            for (item, handle) in kept {
                match tokio::time::timeout(bound, handle).await {
                    Ok(out) => ledger.answered(&progress, item, out),
                    Err(_) => ledger.record(&progress, item, Answer::Hung),
                }
            }
        };
        let (submitted, ()) = tokio::join!(futures_util::future::join_all(submits), awaited);
        for (item, out) in submitted {
            match out {
                Ok(out) => {
                    refused |= matches!(out, Err(LeaseError::Stopped | LeaseError::NotStarted));
                    ledger.answered(&progress, item, out);
                }
                Err(_) => ledger.record(&progress, item, Answer::Hung),
            }
        }
        if refused {
            // The grinder is restarting: do not burn through the items meanwhile.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// One plain-thread grinder submitter: `submit_blocking`, one item at a time.
fn blocking_submitter(
    grinder: WorkGrinder,
    ledger: Arc<Ledger>,
    progress: Arc<Progress>,
    next: Arc<AtomicU64>,
) {
    loop {
        while !progress.items_may_go() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if progress.abort.load(SeqCst) {
            return;
        }
        let item = blocking_item(next.fetch_add(1, SeqCst));
        if item >= progress.items {
            return;
        }
        let job = ledger.job(item, progress.phase.load(SeqCst));
        let out = grinder.submit_blocking(job);
        let refused = matches!(out, Err(LeaseError::Stopped | LeaseError::NotStarted));
        ledger.answered(&progress, item, out);
        if refused {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The grinder's accounting at the end of the run.
#[derive(Debug, Default)]
struct GrinderReport {
    by_answer: [u64; ANSWERS.len()],
    /// Ran twice (or more closures settled than were made).
    doubled: u64,
    /// Answered `Ok` without running, a closure neither run nor dropped by the end, or no
    /// answer recorded although its submitter finished.
    lost: u64,
    /// An await or blocking call that did not end within its bound.
    hung: u64,
    /// Answered `Panicked` without running, or an error although it ran.
    inconsistent: u64,
    /// Answered `Stopped`/`NotStarted` although it neither began nor ended near the restart.
    stopped_outside_restart: u64,
    /// Answered more than once (by the test's own bookkeeping).
    answered_twice: u64,
    /// Never submitted (the run was given up).
    unsubmitted: u64,
    dropped_ran: u64,
    dropped_not_run: u64,
    by_mode: [u64; 4],
}

impl GrinderReport {
    fn count(&self, answer: Answer) -> u64 {
        self.by_answer[answer as usize]
    }
}

fn grinder_report(ledger: &Ledger, blocking_hung: bool) -> GrinderReport {
    let mut r = GrinderReport::default();
    for (item, e) in ledger.entries.iter().enumerate() {
        let item = item as u64;
        let m = mode(item);
        r.by_mode[m as usize] += 1;
        let attempts = u64::from(e.attempts.load(SeqCst));
        let runs = u64::from(e.runs.load(SeqCst));
        let unrun = u64::from(e.unrun.load(SeqCst));
        let mut answer = ANSWERS[usize::from(e.answer.load(SeqCst))];
        if attempts == 0 {
            r.unsubmitted += 1;
            continue;
        }
        if answer == Answer::Pending && m == Mode::Blocking && blocking_hung {
            answer = Answer::Hung;
        }
        r.by_answer[answer as usize] += 1;
        if e.answers.load(SeqCst) > 1 {
            r.answered_twice += 1;
        }
        if runs > 1 || runs + unrun > attempts {
            r.doubled += 1;
        }
        match answer {
            Answer::Hung => r.hung += 1,
            Answer::Pending => r.lost += 1,
            Answer::Ok if runs == 0 => r.lost += 1,
            _ if runs + unrun < attempts => r.lost += 1,
            _ => {}
        }
        match answer {
            Answer::Panicked if runs == 0 => r.inconsistent += 1,
            Answer::Stopped | Answer::WorkerLost | Answer::NotStarted if runs > 0 => {
                r.inconsistent += 1
            }
            _ => {}
        }
        if matches!(answer, Answer::Stopped | Answer::NotStarted)
            && !crossed_restart(e.phase_in.load(SeqCst), e.phase_out.load(SeqCst))
        {
            r.stopped_outside_restart += 1;
        }
        if answer == Answer::Dropped {
            if runs > 0 {
                r.dropped_ran += 1;
            } else {
                r.dropped_not_run += 1;
            }
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------

async fn soak(jobs: u64, items: u64) {
    quiet_planned_panics();
    // Bound for one await that normally takes milliseconds.
    let bound = if jobs >= 100_000 {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(20)
    };
    let threads_before = threads_named(PREFIX).len();
    let manager = LeaseManager::builder()
        .max_pools(4)
        .min_pools(2)
        .workers_per_pool(2)
        .lease_grace(Duration::ZERO)
        .shutdown_timeout(Duration::from_secs(10))
        .name_prefix(PREFIX)
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let grinder = WorkGrinder::builder(&manager)
        .batch_size_threshold(16)
        .max_wait(Duration::from_millis(2))
        .max_pending(64)
        .owner_prefix(GRINDER_OWNER)
        .build()
        .unwrap();
    grinder.start().await.unwrap();
    // How often each job ran. Allocated and touched up front, so it does not show as RSS growth.
    let ran: Arc<Vec<AtomicU8>> = Arc::new((0..jobs).map(|_| AtomicU8::new(0)).collect());
    for cell in ran.iter() {
        cell.store(0, SeqCst);
    }
    let ledger = Ledger::new(items);
    let progress = Arc::new(Progress {
        jobs,
        items,
        jobs_answered: AtomicU64::new(0),
        items_answered: AtomicU64::new(0),
        phase: AtomicU8::new(BEFORE_RESTART),
        abort: AtomicBool::new(false),
    });
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let began = Instant::now();
    let mut rss_warm = 0;

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (m, ran, next, tally, progress) = (
            manager.clone(),
            ran.clone(),
            next.clone(),
            tally.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                while !progress.jobs_may_go() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let first = next.fetch_add(BATCH, SeqCst);
                if first >= jobs {
                    break;
                }
                let last = (first + BATCH).min(jobs);
                let batch = first / BATCH;
                // 0.5 % of leases expire under their jobs (the first job outlives the lease, so
                // the rest are queued at revocation); the rest live long.
                let expiring = batch % 200 == 3;
                let lease_for = if expiring {
                    Duration::from_millis(1)
                } else {
                    Duration::from_secs(60)
                };
                // Across the restart acquires are refused (`NotStarted`) or their wait ends
                // (`Stopped`): try again. At any other time that is a failure.
                let give_up = Instant::now() + bound;
                let (lease, phase_in) = loop {
                    let phase_in = progress.phase.load(SeqCst);
                    let out = tokio::time::timeout(
                        bound,
                        m.acquire()
                            .lease_for(lease_for)
                            .timeout(Duration::from_secs(30)),
                    )
                    .await;
                    let phase_out = progress.phase.load(SeqCst);
                    match out {
                        Ok(Ok(lease)) => break (lease, phase_in),
                        Ok(Err(LeaseError::NotStarted | LeaseError::Stopped))
                            if crossed_restart(phase_in, phase_out) && Instant::now() < give_up =>
                        {
                            tally.lock().unwrap().acquire_retries += 1;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Ok(Err(e)) => panic!("acquire failed: {e}"),
                        Err(_) => panic!("acquire hung"),
                    }
                };
                let mut handles = Vec::new();
                for token in first..last {
                    let ran = ran.clone();
                    let slow = expiring && token == first;
                    let job = move || {
                        if slow {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        ran[token as usize].fetch_add(1, SeqCst);
                        if token % 100 == 7 {
                            panic!("planned soak panic");
                        }
                        token
                    };
                    match lease.submit(job) {
                        Ok(h) => handles.push((token, h)),
                        Err(LeaseError::Stopped) => {
                            let phase_out = progress.phase.load(SeqCst);
                            assert!(
                                crossed_restart(phase_in, phase_out),
                                "job {token}: Stopped outside the restart"
                            );
                            tally.lock().unwrap().stopped += 1;
                            progress.jobs_answered.fetch_add(1, SeqCst);
                        }
                        Err(_) => {
                            tally.lock().unwrap().lost_or_revoked += 1;
                            progress.jobs_answered.fetch_add(1, SeqCst);
                        }
                    }
                }
                // A pool is killed every 10 000 jobs: the one under this lease, whose queued jobs
                // then fail with WorkerLost.
                if first % 10_000 == 0 && first > 0 && !expiring && m.kill_pool(lease.pool()).await
                {
                    tally.lock().unwrap().pools_killed += 1;
                }
                // 1 % of leases are dropped while their jobs run.
                if batch % 100 == 1 {
                    drop(lease);
                    tally.lock().unwrap().dropped_mid_job += 1;
                } else {
                    // Keep the lease alive until its jobs are answered.
                    let _keep = &lease;
                }
                for (token, h) in handles {
                    let out = tokio::time::timeout(bound, h).await.expect("a job hung");
                    let phase_out = progress.phase.load(SeqCst);
                    let mut tally = tally.lock().unwrap();
                    match out {
                        Ok(v) => {
                            assert_eq!(v, token);
                            tally.ok += 1;
                        }
                        Err(LeaseError::Panicked(_)) => tally.panicked += 1,
                        Err(
                            LeaseError::WorkerLost | LeaseError::NeverRan | LeaseError::Expired,
                        ) => tally.lost_or_revoked += 1,
                        Err(LeaseError::Stopped) if crossed_restart(phase_in, phase_out) => {
                            tally.stopped += 1
                        }
                        Err(e) => panic!("job {token}: unexpected {e}"),
                    }
                    progress.jobs_answered.fetch_add(1, SeqCst);
                }
            }
        }));
    }

    let grinder_next = Arc::new(AtomicU64::new(0));
    let queue_full = Arc::new(AtomicU64::new(0));
    let mut grinder_tasks = Vec::new();
    for _ in 0..GRINDER_TASKS {
        grinder_tasks.push(tokio::spawn(grinder_task(
            grinder.clone(),
            ledger.clone(),
            progress.clone(),
            grinder_next.clone(),
            queue_full.clone(),
            bound,
        )));
    }
    let blocking_next = Arc::new(AtomicU64::new(0));
    let blocking: Vec<_> = (0..BLOCKING_THREADS)
        .map(|n| {
            let (g, l, p, next) = (
                grinder.clone(),
                ledger.clone(),
                progress.clone(),
                blocking_next.clone(),
            );
            std::thread::Builder::new()
                .name(format!("soak-submit-{n}"))
                .spawn(move || blocking_submitter(g, l, p, next))
                .expect("spawn a submitter thread")
        })
        .collect();

    // Check the invariant in snapshots while the run goes; kill pools under grinder batches;
    // restart everything once, in the middle.
    let mut snapshots = 0u64;
    let grinder_kills = (items / 200).clamp(1, GRINDER_KILLS);
    let kill_every = (items / (grinder_kills + 1)).max(1);
    let mut next_kill_at = kill_every;
    let mut grinder_pools_killed = 0u64;
    let mut restart: Option<(Duration, u64, u64)> = None;
    let mut last_progress = (progress.total_answered(), Instant::now());
    let mut stalled = false;
    while tasks.iter().any(|t| !t.is_finished())
        || grinder_tasks.iter().any(|t| !t.is_finished())
        || blocking.iter().any(|t| !t.is_finished())
    {
        let done = next.load(SeqCst).min(jobs);
        if rss_warm == 0 && done >= jobs / 10 {
            rss_warm = rss_kib();
        }
        let stats = manager.stats().await;
        assert_invariant(&stats);
        snapshots += 1;
        let items_done = progress.items_answered.load(SeqCst);
        if items_done >= next_kill_at && grinder_pools_killed < grinder_kills {
            let batch_pool = stats
                .leases
                .iter()
                .find(|l| {
                    l.owner
                        .as_deref()
                        .is_some_and(|o| o.starts_with(GRINDER_OWNER))
                })
                .map(|l| l.pool);
            if let Some(pool) = batch_pool {
                if manager.kill_pool(pool).await {
                    grinder_pools_killed += 1;
                    next_kill_at += kill_every;
                }
            }
        }
        if restart.is_none() && done >= jobs / 2 + jobs / 20 {
            let at = (done, items_done);
            progress.phase.store(RESTARTING, SeqCst);
            let t = Instant::now();
            within(bound, "grinder stop(Drain)", grinder.stop(StopMode::Drain)).await;
            within(bound, "manager stop", manager.stop()).await;
            let stopped = manager.stats().await;
            assert_invariant(&stopped);
            assert!(
                stopped.leases.is_empty() && stopped.total == 0,
                "a stopped manager holds no pool: {stopped:#?}"
            );
            within(bound, "manager start", manager.start())
                .await
                .expect("the manager starts again");
            within(bound, "grinder start", grinder.start())
                .await
                .expect("the grinder starts again");
            progress.phase.store(AFTER_RESTART, SeqCst);
            restart = Some((t.elapsed(), at.0, at.1));
        }
        let now = progress.total_answered();
        if now != last_progress.0 {
            last_progress = (now, Instant::now());
        } else if last_progress.1.elapsed() > bound * 2 {
            // Every await is bounded by `bound`, so only a blocked `submit_blocking` (or a
            // failed task) stays this long without any answer.
            stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    progress.abort.store(true, SeqCst);
    for t in tasks {
        within(bound, "a lease task", t).await.unwrap();
    }
    for t in grinder_tasks {
        within(bound, "a grinder task", t).await.unwrap();
    }
    let mut blocking_hung = false;
    for t in blocking {
        if t.is_finished() {
            t.join().expect("a submitter thread panicked");
        } else {
            blocking_hung = true; // left detached: its item is counted as hung
        }
    }
    let wall = began.elapsed();
    let rss_end = rss_kib();
    within(
        bound,
        "final grinder stop(Drain)",
        grinder.stop(StopMode::Drain),
    )
    .await;
    let grinder_stats = grinder.stats().await;
    manager.stop().await;
    let left = tokio::task::spawn_blocking(|| wait_no_threads(PREFIX, Duration::from_secs(10)))
        .await
        .unwrap();

    let doubled = ran.iter().filter(|n| n.load(SeqCst) > 1).count();
    let stats = manager.stats().await;
    let tally = tally.lock().unwrap();
    let answered = tally.ok + tally.panicked + tally.lost_or_revoked + tally.stopped;
    let expected_expiries = (jobs / BATCH).div_ceil(200);
    let (restart_took, restart_jobs, restart_items) = restart.unwrap_or_default();
    eprintln!(
        "soak: {jobs} jobs in {wall:.1?}: ok {} panicked {} lost/revoked {} stopped {} | leases dropped mid-job {} | \
         pools killed {} | acquires retried across the restart {} | doubled {doubled} | snapshots {snapshots} | \
         threads before {threads_before} after {} | RSS at 10 % {rss_warm} KiB, at end {rss_end} KiB | counters {:?}",
        tally.ok,
        tally.panicked,
        tally.lost_or_revoked,
        tally.stopped,
        tally.dropped_mid_job,
        tally.pools_killed,
        tally.acquire_retries,
        left.len(),
        stats.counters
    );
    let g = grinder_report(&ledger, blocking_hung);
    eprintln!(
        "soak grinder: {items} items: lost {} doubled {} hung {} | ok {} panicked {} stopped {} worker-lost {} \
         not-started {} | handles dropped {} (ran {}, not run {}) | inconsistent {} stopped-outside-restart {} \
         unexpected {} | via enqueue kept {} / enqueue dropped {} / submit {} / submit_blocking {} | \
         queue-full retries {} | pools under batches killed {grinder_pools_killed} | restart (grinder \
         stop(Drain), manager stop, manager start, grinder start) at {restart_jobs} jobs / {restart_items} \
         items took {restart_took:.1?} | {:?}",
        g.lost,
        g.doubled,
        g.hung,
        g.count(Answer::Ok),
        g.count(Answer::Panicked),
        g.count(Answer::Stopped),
        g.count(Answer::WorkerLost),
        g.count(Answer::NotStarted),
        g.count(Answer::Dropped),
        g.dropped_ran,
        g.dropped_not_run,
        g.inconsistent,
        g.stopped_outside_restart,
        g.count(Answer::Unexpected),
        g.by_mode[Mode::EnqueueKept as usize],
        g.by_mode[Mode::EnqueueDropped as usize],
        g.by_mode[Mode::Submit as usize],
        g.by_mode[Mode::Blocking as usize],
        queue_full.load(SeqCst),
        grinder_stats,
    );
    assert!(!stalled, "the run stalled: no answer for {:?}", bound * 2);
    assert_eq!(answered, jobs, "every job is answered exactly once");
    assert_eq!(doubled, 0, "a job ran twice");
    assert!(tally.panicked > 0 && tally.ok > jobs / 2);
    assert!(
        stats.counters.revoked >= tally.pools_killed + expected_expiries,
        "every killed pool and expiring lease is revoked: {:?}",
        stats.counters
    );
    assert!(restart.is_some(), "the manager was restarted once");
    assert_eq!(g.unsubmitted, 0, "every grinder item was submitted");
    assert_eq!(
        (g.lost, g.doubled, g.hung),
        (0, 0, 0),
        "grinder items lost, doubled, hung"
    );
    assert_eq!(
        g.inconsistent, 0,
        "an answer disagrees with whether the item ran"
    );
    assert_eq!(g.answered_twice, 0, "an item was answered twice");
    assert_eq!(
        g.stopped_outside_restart, 0,
        "Stopped/NotStarted only across the restart"
    );
    assert_eq!(
        g.count(Answer::Unexpected),
        0,
        "unexpected grinder answers: {:?}",
        ledger.unexpected.lock().unwrap()
    );
    assert!(
        g.count(Answer::Panicked) > 0 && g.count(Answer::Ok) > items / 2,
        "most grinder items ran, the planned panics failed alone"
    );
    assert!(
        grinder_pools_killed > 0,
        "no pool under a grinder batch was killed"
    );
    assert_eq!(
        (grinder_stats.pending, grinder_stats.in_flight_batches),
        (0, 0),
        "the drained grinder holds nothing: {grinder_stats:?}"
    );
    assert!(left.is_empty(), "threads left after stop: {left:?}");
    if jobs >= 100_000 && rss_warm > 0 {
        let growth = rss_end as f64 / rss_warm as f64 - 1.0;
        assert!(
            growth < 0.10,
            "RSS grew {:.1} % from 10 % of the run to the end",
            growth * 100.0
        );
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn soak_short() {
    let _deadline = testkit::deadline();
    testkit::block_on_tokio(soak(20_000, 2_000));
}

#[test]
#[ignore = "long: cargo test --release --test soak -- --ignored soak"]
fn soak_full() {
    let _deadline = testkit::deadline_of(Duration::from_secs(1800));
    let jobs = env_or("LEASEPOOL_SOAK_JOBS", 1_000_000);
    let items = env_or("LEASEPOOL_SOAK_ITEMS", jobs / 10);
    testkit::block_on_tokio(soak(jobs, items));
}
