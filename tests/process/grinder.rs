//! The `WorkGrinder` on the process backend: batched items answer one by one (panics, caps,
//! encodings, crashes), frames stay under the cap, answers leave the child as items end.

use leasepool::{Backend, LeaseError, StopMode, WorkGrinder};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::jobs::*;
use crate::support::*;

#[testkit::test]
async fn the_grinder_runs_process_jobs() {
    let m = builder("pt-grind", 2, 2).build().unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(8)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let handles: Vec<_> = (0..40)
        .map(|i| g.enqueue_call(Shout(format!("item {i}"))).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().0, format!("ITEM {i}"));
    }
    assert_eq!(g.submit_call(Shout("one".into())).await.unwrap().0, "ONE");
    let err = g
        .submit_call(Boom("grinder item".into()))
        .await
        .unwrap_err();
    assert_eq!(err, LeaseError::Panicked("grinder item".into()));
    let refused = g.submit(|| 1).await.unwrap_err();
    assert!(matches!(refused, LeaseError::InvalidArgument(ref t) if t.contains("submit_call")));
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

#[testkit::test]
async fn grinder_items_in_one_frame_are_answered_each_on_their_own() {
    // 2 pools x 2 children, threshold 60: batches of 60 items of mixed outcomes, each batch
    // sent as one frame per child.
    let m = builder("pt-gframe", 2, 2).build().unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(60)
        .max_wait(Duration::from_millis(20))
        .build()
        .unwrap();
    g.start().await.unwrap();
    enum Item {
        Panics(leasepool::JobHandle<()>),
        Shouts(leasepool::JobHandle<(String, u32)>),
    }
    let mut handles = Vec::new();
    for i in 0..240 {
        let h = if i % 7 == 3 {
            Item::Panics(g.enqueue_call(Boom(format!("item {i}"))).unwrap())
        } else {
            Item::Shouts(g.enqueue_call(Shout(format!("item {i}"))).unwrap())
        };
        handles.push(h);
    }
    // Which child takes which frame is up to the pool's workers (whichever is free first takes
    // the next frame), so the items may all land on one child: only the answers are checked.
    for (i, h) in handles.into_iter().enumerate() {
        match h {
            Item::Panics(h) => {
                assert_eq!(h.await, Err(LeaseError::Panicked(format!("item {i}"))));
            }
            Item::Shouts(h) => {
                let (text, _pid) = h.await.unwrap();
                assert_eq!(text, format!("ITEM {i}"));
            }
        }
    }
    // A crash costs the items of its frame, not the batch's others, and never an answer twice.
    let crash = g.enqueue_call(Crash::Abort).unwrap();
    let others: Vec<_> = (0..59)
        .map(|i| g.enqueue_call(Shout(format!("beside {i}"))).unwrap())
        .collect();
    assert_eq!(crash.await, Err(LeaseError::WorkerLost));
    let mut lost = 0;
    for h in others {
        match h.await {
            Ok((text, _)) => assert!(text.starts_with("BESIDE")),
            Err(LeaseError::WorkerLost) => lost += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        lost < 59,
        "the items sent to the other children were answered"
    );
    // The pools serve on.
    assert_eq!(
        g.submit_call(Shout("after".into())).await.unwrap().0,
        "AFTER"
    );
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

#[testkit::test]
async fn a_grinder_item_too_large_fails_alone_and_frames_stay_under_the_cap() {
    let m = builder("pt-gcap", 1, 1)
        .max_message_bytes(64 * 1024)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(41)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    g.start().await.unwrap();
    // 40 items of 10 KiB do not fit one 64 KiB frame together: they travel in several.
    let fits: Vec<_> = (0..40)
        .map(|_| g.enqueue_call(Bytes(vec![1; 10 * 1024])).unwrap())
        .collect();
    let too_big = g.enqueue_call(Bytes(vec![2; 100 * 1024])).unwrap();
    for h in fits {
        assert_eq!(h.await, Ok(10 * 1024));
    }
    let err = too_big.await.unwrap_err();
    assert!(
        matches!(err, LeaseError::ProcessJob(ref t) if t.contains("max_message_bytes")),
        "{err}"
    );
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

/// In a grinder batch — one frame for many items — each item whose callback panics fails alone:
/// its neighbours (before and after it in the same frame) are answered.
#[testkit::test]
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
        check_answer(id, fault, handle.await);
    }
    let c = counted(&m, [40, 0, 10, 0], None).await;
    assert_eq!(children_counted(&c)[..2], [1, 0], "{c:?}");
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

/// A grinder item on the process backend counts once, as what happened to it (not one count per
/// frame).
#[testkit::test]
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
    let c = testkit::stats_until(&m, "a new child", |s| s.counters.children_started == 2)
        .await
        .counters;
    assert_eq!(children_counted(&c)[..2], [2, 1], "{c:?}");
    m.stop().await;
}

/// Grinder items whose part never reached a worker (its lease expired while they queued)
/// answer `NeverRan` — on both backends alike.
#[testkit::test]
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

/// `max_jobs_per_child` holds for grinder items too: a batch of 40 on one worker runs at most 3
/// in each child (before, one child ran all 40, being one frame).
#[testkit::test]
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
#[testkit::test]
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

#[testkit::test]
async fn grinder_with_crashes() {
    let m = impatient_builder("adv-grc", 2, 2).build().unwrap();
    m.start().await.unwrap();
    let g = leasepool::WorkGrinder::builder(&m)
        .batch_size_threshold(8)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let hs: Vec<_> = (0..64)
        .map(|i| {
            (
                i,
                if i % 5 == 0 {
                    g.enqueue_call(Fail::Abort).unwrap()
                } else {
                    g.enqueue_call(Pid).unwrap()
                },
            )
        })
        .collect();
    let mut wrong = Vec::new();
    for (i, h) in hs {
        let (r, _) = timed(Duration::from_secs(20), h).await;
        let good = if i % 5 == 0 {
            r == Some(Err(LeaseError::WorkerLost))
        } else {
            matches!(r, Some(Ok(_)))
        };
        if !good {
            wrong.push((i, r));
        }
    }
    check!(
        wrong.is_empty(),
        "grinder items answered right: {:?}",
        wrong
    );
    g.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
    report_leftovers("end", "adv-grc");
}

/// Batched frames: outputs that fit one by one but not together are each answered.
#[testkit::test]
async fn batched_outputs_are_capped_per_item_not_per_frame() {
    let m = impatient_builder("adv-bout", 1, 1)
        .max_message_bytes(4096)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = grinder_over(&m, 10);
    g.start().await.unwrap();
    let hs: Vec<_> = (0..10)
        .map(|_| g.enqueue_call(BigOut(1000)).unwrap())
        .collect();
    for (i, h) in hs.into_iter().enumerate() {
        let r = h.await.map(|v| v.len());
        check!(r == Ok(1000), "item {i}: {r:?}");
    }
    g.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
}

/// Batched frames: a long job name does not push small items over the cap.
#[testkit::test]
async fn batched_frames_leave_room_for_a_long_name() {
    let m = impatient_builder("adv-blong", 1, 1)
        .max_message_bytes(4096)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = grinder_over(&m, 1000);
    g.start().await.unwrap();
    let hs: Vec<_> = (0..1000)
        .map(|i| g.enqueue_call(LongName(u32::MAX - i)).unwrap())
        .collect();
    let mut bad = 0;
    for h in hs {
        if h.await.is_err() {
            bad += 1;
        }
    }
    check!(bad == 0, "every small item answered Ok: {bad} failed");
    g.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
}

/// Batched frames: an input whose Serialize panics or fails fails alone.
#[testkit::test]
async fn batched_inputs_that_do_not_encode_fail_alone() {
    let m = impatient_builder("adv-bser", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let g = grinder_over(&m, 10);
    g.start().await.unwrap();
    let hs: Vec<_> = (0..10)
        .map(|i| {
            let mut t = Touchy::new(i);
            t.ser_panic = i == 5;
            t.ser_err = i == 7;
            g.enqueue_call(t).unwrap()
        })
        .collect();
    for (i, h) in hs.into_iter().enumerate() {
        let r = h.await;
        match i {
            5 => check!(
                matches!(r, Err(LeaseError::ProcessJob(ref t))
                    if t.contains("encoding its input panicked: serialize panics 5")),
                "item 5: {r:?}"
            ),
            7 => check!(
                matches!(r, Err(LeaseError::ProcessJob(ref t)) if t.contains("cannot encode its input")),
                "item 7: {r:?}"
            ),
            _ => check!(r == Ok(i as u64), "item {i}: {r:?}"),
        }
    }
    g.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
}

/// Batched frames: items whose Drop panics — skipped (their submitter left) or dropped unrun
/// (their lease expired) — neither abort the process nor take the others' answers.
#[testkit::test]
async fn batched_items_with_panicking_drops_cost_nothing_else() {
    let m = impatient_builder("adv-bdrop", 1, 1)
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = leasepool::WorkGrinder::builder(&m)
        .batch_size_threshold(1000)
        .max_wait(Duration::from_millis(20))
        .build()
        .unwrap();
    g.start().await.unwrap();
    // Keeps the only worker busy while the batch's other parts wait.
    let busy = g.enqueue_call(SleepMs(300)).unwrap();
    let keep: Vec<_> = (0..5)
        .map(|i| g.enqueue_call(Touchy::new(100 + i)).unwrap())
        .collect();
    let mut left = Vec::new();
    for i in 0..2 {
        let g = g.clone();
        left.push(tokio::spawn(async move {
            let mut t = Touchy::new(i);
            t.drop_panic = true;
            let _ = tokio::time::timeout(Duration::from_millis(100), g.submit_call(t)).await;
        }));
    }
    for l in left {
        let _ = l.await;
    }
    let _ = busy.await;
    for (i, h) in keep.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(5), h).await;
        check!(
            matches!(r, Ok(Ok(id)) if id == 100 + i as u64),
            "kept item {i} answered: {r:?}"
        );
    }
    // Dropped unrun: a batch whose lease expires while its part waits behind a long job.
    let g2 = leasepool::WorkGrinder::builder(&m)
        .batch_size_threshold(1000)
        .max_wait(Duration::from_millis(20))
        .lease_for(Duration::from_millis(100))
        .build()
        .unwrap();
    g.stop(leasepool::StopMode::Drain).await;
    g2.start().await.unwrap();
    let busy = g2.enqueue_call(SleepMs(1500)).unwrap();
    let hs: Vec<_> = (0..3)
        .map(|i| {
            let mut t = Touchy::new(i);
            t.drop_panic = true;
            g2.enqueue_call(t).unwrap()
        })
        .collect();
    let _ = busy.await;
    for (i, h) in hs.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(5), h).await;
        check!(r.is_ok(), "item {i} with a panicking Drop resolved: {r:?}");
    }
    g2.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
}
