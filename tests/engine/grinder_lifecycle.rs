//! WorkGrinder lifecycle under attack: settings at their extremes, a manager that stops or
//! restarts under the grinder, start and stop racing, cancelling a batch that waits for a lease,
//! and a host thread that stays idle while a saturated grinder waits.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::{LeaseError, LeaseManager, StopMode, WorkGrinder};
use testkit::{grinder_until, within, Gate, EVENTUALLY};

fn manager(prefix: &str, pools: usize, workers: usize) -> LeaseManager {
    LeaseManager::builder()
        .max_pools(pools)
        .min_pools(1)
        .workers_per_pool(workers)
        .name_prefix(prefix)
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .expect("valid settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_of_duration_max_means_never_flush_by_age() {
    let _deadline = testkit::deadline();
    let m = manager("gl-maxwait", 1, 2);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(3)
        .max_wait(Duration::MAX)
        .build()
        .unwrap();
    g.start().await.unwrap();
    let first = g.enqueue(|| 1).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = g.stats().await;
    assert_eq!(
        (s.pending, s.in_flight_batches),
        (1, 0),
        "below the threshold, never by age"
    );
    let rest = [g.enqueue(|| 2).unwrap(), g.enqueue(|| 3).unwrap()];
    assert_eq!(within("first item", first).await.unwrap(), 1);
    for (i, h) in rest.into_iter().enumerate() {
        assert_eq!(within("item", h).await.unwrap(), i as i32 + 2);
    }
    let pending = g.enqueue(|| 4).unwrap();
    within("stop(Drain)", g.stop(StopMode::Drain)).await;
    assert_eq!(within("drained item", pending).await.unwrap(), 4);
    within("manager stop", m.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_manager_stops_enqueue_is_refused_and_pending_items_are_answered() {
    let _deadline = testkit::deadline();
    let m = manager("gl-mstop", 1, 2);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1_000)
        .max_wait(Duration::from_secs(3600))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let pending: Vec<_> = (0..5).map(|i| g.enqueue(move || i).unwrap()).collect();
    within("manager stop", m.stop()).await;
    for h in pending {
        assert_eq!(
            within("a pending item", h).await,
            Err(LeaseError::Stopped),
            "items pending when the manager stopped are answered Stopped"
        );
    }
    match g.enqueue(|| 0) {
        Err(LeaseError::Stopped | LeaseError::NotStarted) => {}
        Err(other) => panic!("unexpected refusal {other}"),
        Ok(h) => panic!(
            "enqueue after the manager stopped was accepted (answer: {:?})",
            tokio::time::timeout(Duration::from_secs(1), h).await
        ),
    }
    assert!(
        !g.stats().await.started,
        "a grinder whose manager stopped is not started"
    );
    // The natural order manager.stop() then grinder.stop() returns at once.
    within(
        "grinder stop(Drain) after the manager",
        g.stop(StopMode::Drain),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grinder_starts_again_after_its_manager_restarts() {
    let _deadline = testkit::deadline();
    let m = manager("gl-restart", 1, 2);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .build()
        .unwrap();
    g.start().await.unwrap();
    assert_eq!(within("submit", g.submit(|| 1)).await.unwrap(), 1);
    within("manager stop", m.stop()).await;
    assert_eq!(
        g.start().await,
        Err(LeaseError::NotStarted),
        "no manager, no grinder"
    );
    m.start().await.unwrap();
    within("grinder start", g.start()).await.unwrap();
    assert!(g.stats().await.started);
    assert_eq!(
        within("submit after restart", g.submit(|| 2))
            .await
            .unwrap(),
        2
    );
    within("grinder stop", g.stop(StopMode::Drain)).await;
    within("manager stop", m.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pending_returns_when_the_manager_stopped_under_a_stuck_batch() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("gl-stuck")
        .shutdown_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .build()
        .unwrap();
    g.start().await.unwrap();
    let gate = Gate::new();
    let stuck = {
        let gate = gate.clone();
        g.enqueue(move || gate.wait()).unwrap()
    };
    grinder_until(&g, "the batch to run", |s| s.in_flight_batches == 1).await;
    within("manager stop", m.stop()).await; // leaves the stuck job's thread detached
    within(
        "grinder stop(CancelPending)",
        g.stop(StopMode::CancelPending),
    )
    .await;
    gate.open();
    within("the stuck item", stuck)
        .await
        .expect("it ran to the end");
    grinder_until(&g, "no batch left", |s| s.in_flight_batches == 0).await;
    assert!(
        testkit::wait_no_threads("gl-stuck", EVENTUALLY).is_empty(),
        "the detached thread exits once its job ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_while_a_stop_waits_loses_no_batch_and_both_return() {
    let _deadline = testkit::deadline();
    let m = manager("gl-startstop", 1, 1);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .max_concurrent_batches(1)
        .stop_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let gate = Gate::new();
    let running = {
        let gate = gate.clone();
        g.enqueue(move || {
            gate.wait();
            "ran"
        })
        .unwrap()
    };
    grinder_until(&g, "the batch to run", |s| s.in_flight_batches == 1).await;
    let stop = tokio::spawn({
        let g = g.clone();
        async move { g.stop(StopMode::Drain).await }
    });
    grinder_until(&g, "the stop to begin", |s| !s.started).await;
    let start = tokio::spawn({
        let g = g.clone();
        async move { g.start().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.open();
    within("the running item", running).await.unwrap();
    within("stop", stop).await.unwrap();
    within("start", start).await.unwrap().unwrap();
    let s = g.stats().await;
    assert!(s.started, "start came after the stop: {s:?}");
    assert_eq!(s.in_flight_batches, 0, "no batch slot lost: {s:?}");
    // With the one batch slot free, new work runs.
    assert_eq!(within("submit", g.submit(|| 7)).await.unwrap(), 7);
    within("grinder stop", g.stop(StopMode::Drain)).await;
    within("manager stop", m.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pending_cancels_a_batch_waiting_for_a_lease() {
    let _deadline = testkit::deadline();
    let m = manager("gl-waitlease", 1, 1);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .build()
        .unwrap();
    g.start().await.unwrap();
    let held = m.acquire().owner("someone else").await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let item = {
        let ran = Arc::clone(&ran);
        g.enqueue(move || ran.fetch_add(1, SeqCst)).unwrap()
    };
    testkit::stats_until(&m, "the batch to wait for a lease", |s| s.waiting == 1).await;
    within(
        "stop(CancelPending) while the batch waits",
        g.stop(StopMode::CancelPending),
    )
    .await;
    assert_eq!(within("the item", item).await, Err(LeaseError::Stopped));
    testkit::stats_until(&m, "the lease wait to be cancelled", |s| s.waiting == 0).await;
    held.release().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ran.load(SeqCst), 0, "a cancelled item never runs");
    assert_eq!(g.stats().await.in_flight_batches, 0);
    let s = m.stats().await;
    assert_eq!((s.leased, s.available), (0, 1), "the pool is back: {s:?}");
    within("manager stop", m.stop()).await;
}

/// CPU time (user + system, in clock ticks) of this process's thread named `name`.
fn thread_cpu_ticks(name: &str) -> Option<u64> {
    let shown = &name[..name.len().min(15)];
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim_end() != shown {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        return Some(utime + stime);
    }
    None
}

/// Share of one core the host thread used over `wall` (clock ticks are 1/100 s on Linux).
async fn host_cpu_share(prefix: &str, wall: Duration) -> f64 {
    let host = format!("{prefix}-host");
    let before = thread_cpu_ticks(&host).expect("the host thread exists");
    let begun = Instant::now();
    tokio::time::sleep(wall).await;
    let after = thread_cpu_ticks(&host).expect("the host thread exists");
    (after - before) as f64 / 100.0 / begun.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_grinder_leaves_the_host_thread_idle() {
    let _deadline = testkit::deadline();
    let prefix = "gl-busy";
    let m = manager(prefix, 1, 1);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .max_wait(Duration::from_millis(1))
        .max_concurrent_batches(1)
        .build()
        .unwrap();
    g.start().await.unwrap();
    let gate = Gate::new();
    let mut handles = Vec::new();
    {
        let gate = gate.clone();
        handles.push(g.enqueue(move || gate.wait()).unwrap());
    }
    grinder_until(&g, "the first batch", |s| s.in_flight_batches == 1).await;
    for _ in 0..2_000 {
        handles.push(g.enqueue(|| ()).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // every item is overdue now
    let share = host_cpu_share(prefix, Duration::from_secs(1)).await;
    assert!(
        share < 0.05,
        "the host thread used {:.0} % of a core while the saturated grinder waited",
        share * 100.0
    );
    gate.open();
    for h in handles {
        within("an item", h).await.unwrap();
    }
    within("grinder stop", g.stop(StopMode::Drain)).await;
    within("manager stop", m.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_item_waiting_for_max_wait_leaves_the_host_thread_idle() {
    let _deadline = testkit::deadline();
    let prefix = "gl-onewait";
    let m = manager(prefix, 1, 1);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(100)
        .max_wait(Duration::from_secs(2))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let begun = Instant::now();
    let item = g.enqueue(|| 5).unwrap();
    let share = host_cpu_share(prefix, Duration::from_secs(1)).await;
    assert!(
        share < 0.05,
        "the host thread used {:.0} % of a core while one item waited for max_wait",
        share * 100.0
    );
    assert_eq!(within("the item", item).await.unwrap(), 5);
    assert!(
        begun.elapsed() >= Duration::from_millis(1_900),
        "the item ran only at max_wait"
    );
    within("grinder stop", g.stop(StopMode::Drain)).await;
    within("manager stop", m.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_batches_get_distinct_owners() {
    let _deadline = testkit::deadline();
    let m = manager("gl-owners", 1, 1);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .owner_prefix("own")
        .build()
        .unwrap();
    g.start().await.unwrap();
    let mut owners = Vec::new();
    for batch in 1..=3u64 {
        let gate = Gate::new();
        let item = {
            let gate = gate.clone();
            g.enqueue(move || gate.wait()).unwrap()
        };
        let s = testkit::stats_until(&m, "the batch's lease", |s| s.leased == 1).await;
        owners.push(s.leases[0].owner.clone().unwrap_or_default());
        gate.open();
        within("the item", item).await.unwrap();
        grinder_until(&g, "the batch done", |s| s.batches_run == batch).await;
        testkit::stats_until(&m, "the lease released", |s| s.leased == 0).await;
    }
    assert_eq!(owners, ["own-batch-1", "own-batch-2", "own-batch-3"]);
    within("grinder stop", g.stop(StopMode::Drain)).await;
    within("manager stop", m.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_waiting_for_room_gets_in_when_a_batch_takes_the_pending_items() {
    let _deadline = testkit::deadline();
    let m = manager("gl-room", 1, 2);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(2)
        .max_wait(Duration::from_secs(3600))
        .max_pending(2)
        .max_concurrent_batches(1)
        .build()
        .unwrap();
    g.start().await.unwrap();
    let (first_gate, second_gate) = (Gate::new(), Gate::new());
    let blocking = |gate: &Gate, value: u32| {
        let gate = gate.clone();
        move || {
            gate.wait();
            value
        }
    };
    // Batch 1 takes the only batch slot and holds it until the first gate opens.
    let batch_one = [
        g.enqueue(blocking(&first_gate, 1)).unwrap(),
        g.enqueue(blocking(&first_gate, 2)).unwrap(),
    ];
    grinder_until(&g, "batch 1 running", |s| {
        s.in_flight_batches == 1 && s.pending == 0
    })
    .await;
    // The queue fills up behind it, and a submit has to wait for room.
    let batch_two = [
        g.enqueue(blocking(&second_gate, 3)).unwrap(),
        g.enqueue(blocking(&second_gate, 4)).unwrap(),
    ];
    let third = tokio::spawn({
        let g = g.clone();
        async move { g.submit(|| 5).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!third.is_finished(), "the queue is full: the submit waits");
    assert_eq!(g.stats().await.pending, 2);
    // Batch 1 ends; batch 2 takes the two pending items and runs them, and does not end (the
    // second gate stays shut). Taking the items made room: the submit gets in now.
    first_gate.open();
    for (h, v) in batch_one.into_iter().zip([1, 2]) {
        assert_eq!(within("a batch-1 item", h).await, Ok(v));
    }
    grinder_until(&g, "the submit queued behind batch 2", |s| {
        s.in_flight_batches == 1 && s.pending == 1 && s.batches_run == 1
    })
    .await;
    second_gate.open();
    for (h, v) in batch_two.into_iter().zip([3, 4]) {
        assert_eq!(within("a batch-2 item", h).await, Ok(v));
    }
    within("grinder stop", g.stop(StopMode::Drain)).await;
    assert_eq!(within("third", third).await.unwrap(), Ok(5));
    within("manager stop", m.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_stops_each_return_within_their_own_stop_timeout() {
    let _deadline = testkit::deadline();
    let m = manager("gl-overlap", 1, 1);
    m.start().await.unwrap();
    let stop_timeout = Duration::from_millis(500);
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .stop_timeout(stop_timeout)
        .build()
        .unwrap();
    g.start().await.unwrap();
    let gate = Gate::new();
    let stuck = {
        let gate = gate.clone();
        g.enqueue(move || gate.wait()).unwrap()
    };
    grinder_until(&g, "the batch to run", |s| s.in_flight_batches == 1).await;
    let mut stops = Vec::new();
    for mode in [
        StopMode::Drain,
        StopMode::CancelPending,
        StopMode::Drain,
        StopMode::CancelPending,
    ] {
        let g = g.clone();
        stops.push(tokio::spawn(async move {
            let begun = Instant::now();
            g.stop(mode).await;
            (mode, begun.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut took = Vec::new();
    for stop in stops {
        took.push(within("a stop", stop).await.unwrap());
    }
    gate.open();
    within("the stuck item", stuck).await.unwrap();
    for (mode, t) in took {
        assert!(
            t < stop_timeout + Duration::from_millis(400),
            "stop({mode:?}) took {t:?} with a stop_timeout of {stop_timeout:?}"
        );
    }
    grinder_until(&g, "the batch done", |s| s.in_flight_batches == 0).await;
    within("manager stop", m.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_dropped_midway_does_not_stop_the_next_one() {
    let _deadline = testkit::deadline();
    let m = manager("gl-cstart", 1, 1);
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .build()
        .unwrap();
    let mut cancelled = 0;
    for round in 0..200 {
        {
            // Polled once (the actor is asked for on the host), then dropped.
            let mut start = Box::pin(g.start());
            if futures_util::poll!(start.as_mut()).is_pending() {
                cancelled += 1;
            }
        }
        within("start", g.start()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            g.stats().await.started,
            "round {round}: the grinder stopped after a dropped start"
        );
        assert_eq!(within("an item", g.submit(move || round)).await, Ok(round));
        within("stop", g.stop(StopMode::Drain)).await;
    }
    assert!(cancelled > 0, "no start was ever dropped midway");
    within("manager stop", m.stop()).await;
}

#[test]
fn a_grinder_start_that_resumes_after_its_manager_stopped_is_not_left_half_started() {
    let _deadline = testkit::deadline();
    // A current-thread runtime: the start's task resumes only after the stop has run.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..5 {
            let m = manager("gl-startstop2", 1, 1);
            m.start().await.unwrap();
            let g = WorkGrinder::builder(&m)
                .batch_size_threshold(1)
                .build()
                .unwrap();
            let starter = tokio::spawn({
                let g = g.clone();
                async move { g.start().await }
            });
            let stopper = tokio::spawn({
                let m = m.clone();
                async move {
                    std::thread::spawn(move || futures_executor::block_on(m.stop()))
                        .join()
                        .unwrap();
                }
            });
            within("stop", stopper).await.unwrap();
            let started = within("start", starter).await.unwrap();
            m.start().await.unwrap();
            match started {
                Ok(()) | Err(LeaseError::NotStarted) => {}
                Err(other) => panic!("round {round}: {other}"),
            }
            // The start may have finished before the stop (then the stop ended the grinder) or
            // resumed after it. Either way the grinder is serving or plainly stopped, never
            // half-started: saying "started" with nothing behind it.
            if g.stats().await.started {
                let item = g
                    .enqueue(|| 7)
                    .unwrap_or_else(|e| panic!("round {round}: started but refuses items: {e}"));
                assert_eq!(within("an item", item).await, Ok(7), "round {round}");
            } else {
                assert!(
                    g.enqueue(|| 7).is_err(),
                    "round {round}: stopped but takes items"
                );
                g.start().await.unwrap();
            }
            assert_eq!(
                within("an item", g.submit(|| 8)).await,
                Ok(8),
                "round {round}"
            );
            within("grinder stop", g.stop(StopMode::Drain)).await;
            within("manager stop", m.stop()).await;
        }
    });
}
