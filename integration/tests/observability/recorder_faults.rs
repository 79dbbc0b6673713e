//! A recorder is user code: one that calls back into the manager from a gauge, or panics on
//! every call, must neither wedge the manager nor cost a waiter its answer or a job its result.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};

use leasepool::LeaseManager;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Called from every gauge set while armed.
static CALLBACK: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();
static ARMED: AtomicBool = AtomicBool::new(false);

struct Hostile;

impl CounterFn for Hostile {
    fn increment(&self, _: u64) {
        panic!("on purpose");
    }
    fn absolute(&self, _: u64) {
        panic!("on purpose");
    }
}

impl GaugeFn for Hostile {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {
        if ARMED.load(SeqCst) {
            if let Some(callback) = CALLBACK.get() {
                callback();
            }
        }
    }
}

impl HistogramFn for Hostile {
    fn record(&self, _: f64) {
        panic!("on purpose");
    }
}

struct HostileRecorder;

impl Recorder for HostileRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Hostile))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Hostile))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Hostile))
    }
}

#[testkit::test]
async fn a_hostile_recorder_neither_wedges_the_manager_nor_loses_an_answer() {
    let m = metrics::with_local_recorder(&HostileRecorder, || {
        LeaseManager::builder()
            .name_prefix("obs-hostile")
            .max_pools(1)
            .build()
    })
    .unwrap();
    m.start().await.unwrap();
    let again = m.clone();
    let _ = CALLBACK.set(Box::new(move || {
        // A recorder that looks something up in the application when a gauge moves.
        let _ = again.capacity();
    }));
    ARMED.store(true, SeqCst);
    for round in 0..20u64 {
        let lease = m.acquire().await.unwrap();
        // A job's result arrives although recording its outcome panics.
        assert_eq!(lease.run(move || round * 2).await.unwrap(), round * 2);
        // A waiter queued behind gets its answer although the lease's hold time panics.
        let waiter = {
            let m = m.clone();
            actix_rt::spawn(async move { m.acquire_owned().await.map(|l| l.id()) })
        };
        testkit::stats_until(&m, "one waiter", |s| s.waiting == 1).await;
        lease.release().await;
        testkit::within("the waiter's answer", waiter)
            .await
            .unwrap()
            .unwrap();
        // `stats()` flushes the gauges, each of which calls back into the manager.
        let stats = m.stats().await;
        assert_eq!(stats.counters.acquired, 2 * (round + 1));
    }
    ARMED.store(false, SeqCst);
    m.stop().await;
}
