//! WorkGrinder: batching triggers, concurrency, queue bounds, cancellation, stop modes,
//! blocking submission, validation.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::{BuildError, LeaseError, LeaseManager, StopMode, WorkGrinder};
use testkit::{grinder_until, Gate};

async fn manager(prefix: &str, pools: usize) -> LeaseManager {
    testkit::started(prefix, pools, 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_starts_at_the_threshold_on_one_lease_named_after_the_batch() {
    let _deadline = testkit::deadline();
    let m = manager("gr-threshold", 1).await;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(5)
        .max_wait(Duration::from_secs(60))
        .owner_prefix("thr")
        .build()
        .unwrap();
    g.start().await.unwrap();
    let hold = Gate::new();
    let mut handles = Vec::new();
    for i in 0..4 {
        let hold = hold.clone();
        handles.push(
            g.enqueue(move || {
                hold.wait();
                i
            })
            .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = g.stats().await;
    assert_eq!(
        (s.pending, s.in_flight_batches, s.batches_run),
        (4, 0, 0),
        "below the threshold"
    );
    let hold5 = hold.clone();
    handles.push(
        g.enqueue(move || {
            hold5.wait();
            4
        })
        .unwrap(),
    );
    grinder_until(&g, "a batch", |s| {
        s.in_flight_batches == 1 && s.pending == 0
    })
    .await;
    let leases = m.stats().await.leases;
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].owner.as_deref(), Some("thr-batch-1"));
    hold.open();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i);
    }
    let s = grinder_until(&g, "batch done", |s| s.batches_run == 1).await;
    assert_eq!(s.items_done, 5);
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_starts_when_the_oldest_item_waited_max_wait() {
    let _deadline = testkit::deadline();
    let m = manager("gr-wait", 1).await;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1_000)
        .max_wait(Duration::from_millis(150))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let begun = Instant::now();
    assert_eq!(g.submit(|| "alone").await.unwrap(), "alone");
    let waited = begun.elapsed();
    assert!(
        waited >= Duration::from_millis(140),
        "started before max_wait: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "max_wait not honoured: {waited:?}"
    );
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_to_max_concurrent_batches_run_at_once() {
    let _deadline = testkit::deadline();
    let m = manager("gr-conc", 3).await;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .max_concurrent_batches(2)
        .build()
        .unwrap();
    g.start().await.unwrap();
    let hold = Gate::new();
    let mut handles = Vec::new();
    for i in 0..2 {
        let hold = hold.clone();
        handles.push(
            g.enqueue(move || {
                hold.wait();
                i
            })
            .unwrap(),
        );
        grinder_until(&g, "batch started", |s| s.in_flight_batches == i + 1).await;
    }
    // A third item must wait: two batches already run.
    handles.push(g.enqueue(|| 2).unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = g.stats().await;
    assert_eq!((s.in_flight_batches, s.pending), (2, 1), "{s:?}");
    assert_eq!(m.stats().await.leased, 2, "two batches, two leases");
    hold.open();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i);
    }
    grinder_until(&g, "all done", |s| {
        s.batches_run == 3 && s.in_flight_batches == 0
    })
    .await;
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_resolves_once_and_a_panicking_item_fails_alone() {
    let _deadline = testkit::deadline();
    let m = manager("gr-once", 2).await;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(16)
        .max_wait(Duration::from_millis(20))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..200usize {
        let runs = Arc::clone(&runs);
        handles.push(
            g.enqueue(move || {
                runs.fetch_add(1, SeqCst);
                assert!(i % 40 != 3, "item {i} fails");
                i
            })
            .unwrap(),
        );
    }
    let (mut ok, mut panicked) = (0, 0);
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(v) => {
                assert_eq!(v, i);
                ok += 1;
            }
            Err(LeaseError::Panicked(msg)) => {
                assert!(msg.contains(&format!("item {i} fails")), "{msg}");
                panicked += 1;
            }
            Err(e) => panic!("item {i}: {e}"),
        }
    }
    assert_eq!((ok, panicked), (195, 5));
    assert_eq!(runs.load(SeqCst), 200);
    let s = grinder_until(&g, "counted", |s| s.items_done == 200).await;
    assert!(s.batches_run >= 1);
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_is_refused_at_max_pending_and_submit_waits_for_room() {
    let _deadline = testkit::deadline();
    let m = manager("gr-full", 1).await;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1_000)
        .max_wait(Duration::from_millis(300))
        .max_pending(3)
        .build()
        .unwrap();
    g.start().await.unwrap();
    let mut handles = Vec::new();
    for i in 0..3 {
        handles.push(g.enqueue(move || i).unwrap());
    }
    assert_eq!(g.enqueue(|| 99).unwrap_err(), LeaseError::Unavailable);
    // submit waits until the max_wait batch takes the three, then gets in.
    let begun = Instant::now();
    assert_eq!(g.submit(|| 3).await.unwrap(), 3);
    assert!(
        begun.elapsed() >= Duration::from_millis(200),
        "submit did not wait for room"
    );
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i);
    }
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_submit_future_removes_its_item_at_once() {
    let _deadline = testkit::deadline();
    let m = manager("gr-drop", 1).await;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1_000)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    let g2 = g.clone();
    let task = tokio::spawn(async move { g2.submit(move || r.fetch_add(1, SeqCst)).await });
    grinder_until(&g, "queued", |s| s.pending == 1).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        g.stats().await.pending,
        0,
        "the item left the queue with its future"
    );
    g.stop(StopMode::Drain).await;
    assert_eq!(ran.load(SeqCst), 0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drain_runs_what_is_queued_then_refuses() {
    let _deadline = testkit::deadline();
    let m = manager("gr-drain", 1).await;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1_000)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let handles: Vec<_> = (0..10).map(|i| g.enqueue(move || i * 2).unwrap()).collect();
    g.stop(StopMode::Drain).await;
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i * 2, "drained items run");
    }
    assert_eq!(g.enqueue(|| 0).unwrap_err(), LeaseError::Stopped);
    assert_eq!(g.submit(|| 0).await.unwrap_err(), LeaseError::Stopped);
    let s = g.stats().await;
    assert!(!s.started);
    assert_eq!((s.pending, s.items_done), (0, 10));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cancel_pending_answers_every_pending_item_with_stopped() {
    let _deadline = testkit::deadline();
    let m = manager("gr-cancel", 1).await;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1_000)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let ran = Arc::clone(&ran);
            g.enqueue(move || ran.fetch_add(1, SeqCst)).unwrap()
        })
        .collect();
    g.stop(StopMode::CancelPending).await;
    for h in handles {
        assert_eq!(h.await.unwrap_err(), LeaseError::Stopped);
    }
    assert_eq!(ran.load(SeqCst), 0);
    assert_eq!(g.enqueue(|| 0).unwrap_err(), LeaseError::Stopped);
    m.stop().await;
}

#[test]
fn submit_blocking_serves_plain_threads_and_refuses_runtime_threads() {
    let _deadline = testkit::deadline();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (m, g) = rt.block_on(async {
        let m = manager("gr-block", 2).await;
        let g = WorkGrinder::builder(&m)
            .batch_size_threshold(8)
            .max_wait(Duration::from_millis(10))
            .build()
            .unwrap();
        g.start().await.unwrap();
        (m, g)
    });
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let g = g.clone();
            std::thread::spawn(move || {
                (0..25u64)
                    .map(|i| g.submit_blocking(move || t * 100 + i).unwrap())
                    .sum::<u64>()
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        total,
        (0..8u64)
            .map(|t| (0..25).map(|i| t * 100 + i).sum::<u64>())
            .sum::<u64>()
    );
    let on_runtime = rt.block_on(async { g.submit_blocking(|| 1) });
    assert_eq!(
        on_runtime.unwrap_err(),
        LeaseError::BlockingOnRuntime("submit_blocking")
    );
    rt.block_on(async {
        g.stop(StopMode::Drain).await;
        m.stop().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grinder_needs_a_started_manager_and_a_start() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .name_prefix("gr-ns")
        .build()
        .unwrap();
    let g = WorkGrinder::builder(&m).build().unwrap();
    assert_eq!(g.enqueue(|| ()).unwrap_err(), LeaseError::NotStarted);
    assert_eq!(g.start().await.unwrap_err(), LeaseError::NotStarted);
    m.start().await.unwrap();
    g.start().await.unwrap();
    g.start().await.unwrap();
    assert!(g.stats().await.started);
    g.stop(StopMode::CancelPending).await;
    m.stop().await;
}

#[test]
fn invalid_settings_are_refused_naming_the_setting() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder().build().unwrap();
    let b = || WorkGrinder::builder(&m);
    let text = |r: Result<WorkGrinder, BuildError>| r.unwrap_err().to_string();
    assert!(text(b().batch_size_threshold(0).build()).starts_with("batch_size_threshold"));
    assert!(text(b().max_pending(0).build()).starts_with("max_pending"));
    assert!(text(b().max_concurrent_batches(0).build()).starts_with("max_concurrent_batches"));
    assert!(text(b().max_wait(Duration::ZERO).build()).starts_with("max_wait"));
    assert!(text(b().lease_for(Duration::ZERO).build()).starts_with("lease_for"));
    b().build().expect("defaults are valid");
}
