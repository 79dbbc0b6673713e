//! S1–S7, once per system. Each function sets up, times only the measured part, tears down.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use leasepool::LeaseManager;
use tokio::sync::Semaphore;

use crate::measure::{current_thread, multi_thread, per_sec, rss_kib, trim_heap, us_per_op};
use crate::peers::{Noop, OffThreadArbiter, RawWorker, Sleep};

async fn started(pools: usize, workers: usize) -> LeaseManager {
    let builder = LeaseManager::builder()
        .max_pools(pools)
        .min_pools(pools)
        .workers_per_pool(workers)
        .max_waiters(1_000_000)
        .name_prefix("bench");
    // Rows M: built while a recorder is active, the manager records into it.
    #[cfg(feature = "metrics")]
    let built = match crate::recording::active() {
        Some(recorder) => metrics::with_local_recorder(recorder, || builder.build()),
        None => builder.build(),
    };
    #[cfg(not(feature = "metrics"))]
    let built = builder.build();
    let m = built.expect("bench settings");
    m.start().await.expect("start");
    m
}

// ---- S1: sequential run(noop) on one 1-worker lease, µs/op -------------------------------

pub fn s1_leasepool(n: usize) -> f64 {
    current_thread().block_on(async {
        let m = started(1, 1).await;
        let lease = m.acquire().await.unwrap();
        let t = Instant::now();
        for _ in 0..n {
            lease.run(|| ()).await.unwrap();
        }
        let dt = t.elapsed();
        lease.release().await;
        m.stop().await;
        us_per_op(dt, n)
    })
}

pub fn s1_raw_off_thread(n: usize) -> f64 {
    let arbiter = OffThreadArbiter::start(1);
    current_thread().block_on(async {
        let addr = arbiter.addr();
        let t = Instant::now();
        for _ in 0..n {
            addr.send(Noop).await.unwrap();
        }
        us_per_op(t.elapsed(), n)
    })
}

pub fn s1_raw_on_system(n: usize) -> f64 {
    System::new().block_on(async {
        let addr = SyncArbiter::start(1, || RawWorker);
        let t = Instant::now();
        for _ in 0..n {
            addr.send(Noop).await.unwrap();
        }
        us_per_op(t.elapsed(), n)
    })
}

pub fn s1_spawn_blocking(n: usize) -> f64 {
    current_thread().block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            tokio::task::spawn_blocking(|| ()).await.unwrap();
        }
        us_per_op(t.elapsed(), n)
    })
}

pub fn s1_semaphore(n: usize) -> f64 {
    current_thread().block_on(async {
        let sem = Semaphore::new(1);
        let t = Instant::now();
        for _ in 0..n {
            let _permit = sem.acquire().await.unwrap();
            tokio::task::spawn_blocking(|| ()).await.unwrap();
        }
        us_per_op(t.elapsed(), n)
    })
}

pub fn s1_web_block(n: usize) -> f64 {
    System::new().block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            actix_web::web::block(|| ()).await.unwrap();
        }
        us_per_op(t.elapsed(), n)
    })
}

// ---- S2: acquire -> run(noop) -> release, µs/op --------------------------------------------

pub fn s2_leasepool(n: usize) -> f64 {
    current_thread().block_on(async {
        let m = started(1, 1).await;
        let t = Instant::now();
        for _ in 0..n {
            let lease = m.acquire().await.unwrap();
            lease.run(|| ()).await.unwrap();
            lease.release().await;
        }
        let dt = t.elapsed();
        m.stop().await;
        us_per_op(dt, n)
    })
}

pub fn s2_semaphore(n: usize) -> f64 {
    // The hand-rolled equivalent: a permit, one blocking job, the permit back.
    s1_semaphore(n)
}

// ---- S3: fan-out of noop jobs over pools x workers, jobs/s ---------------------------------

pub fn s3_leasepool(jobs: usize, pools: usize, workers: usize) -> f64 {
    current_thread().block_on(async {
        let m = started(pools, workers).await;
        let mut leases = Vec::new();
        for _ in 0..pools {
            leases.push(m.acquire().await.unwrap());
        }
        let per = jobs / pools;
        let t = Instant::now();
        let mut handles = Vec::with_capacity(jobs);
        for lease in &leases {
            for _ in 0..per {
                handles.push(lease.submit(|| ()).unwrap());
            }
        }
        for h in join_all(handles).await {
            h.unwrap();
        }
        let dt = t.elapsed();
        for l in leases {
            l.release().await;
        }
        m.stop().await;
        per_sec(dt, per * pools)
    })
}

pub fn s3_raw_off_thread(jobs: usize, workers: usize) -> f64 {
    let arbiter = OffThreadArbiter::start(workers);
    current_thread().block_on(async {
        let addr = arbiter.addr();
        let t = Instant::now();
        for r in join_all((0..jobs).map(|_| addr.send(Noop))).await {
            r.unwrap();
        }
        per_sec(t.elapsed(), jobs)
    })
}

pub fn s3_raw_on_system(jobs: usize, workers: usize) -> f64 {
    System::new().block_on(async {
        let addr = SyncArbiter::start(workers, || RawWorker);
        let t = Instant::now();
        for r in join_all((0..jobs).map(|_| addr.send(Noop))).await {
            r.unwrap();
        }
        per_sec(t.elapsed(), jobs)
    })
}

pub fn s3_spawn_blocking(jobs: usize) -> f64 {
    multi_thread().block_on(async {
        let t = Instant::now();
        let handles: Vec<_> = (0..jobs)
            .map(|_| tokio::task::spawn_blocking(|| ()))
            .collect();
        for h in join_all(handles).await {
            h.unwrap();
        }
        per_sec(t.elapsed(), jobs)
    })
}

pub fn s3_semaphore(jobs: usize, capacity: usize) -> f64 {
    multi_thread().block_on(async {
        let sem = Arc::new(Semaphore::new(capacity));
        let t = Instant::now();
        let tasks: Vec<_> = (0..jobs)
            .map(|_| {
                let sem = Arc::clone(&sem);
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await.unwrap();
                    tokio::task::spawn_blocking(|| ()).await.unwrap();
                })
            })
            .collect();
        for h in join_all(tasks).await {
            h.unwrap();
        }
        per_sec(t.elapsed(), jobs)
    })
}

pub fn s3_web_block(jobs: usize) -> f64 {
    System::new().block_on(async {
        let t = Instant::now();
        for r in join_all((0..jobs).map(|_| actix_web::web::block(|| ()))).await {
            r.unwrap();
        }
        per_sec(t.elapsed(), jobs)
    })
}

// ---- S4: blocking I/O under contention: efficiency = ideal / actual ------------------------

fn efficiency(tasks: usize, pools: usize, sleep: Duration, actual: Duration) -> f64 {
    (sleep.as_secs_f64() * tasks as f64 / pools as f64) / actual.as_secs_f64()
}

/// S4 for leasepool, with a breakdown of where time goes: returns (efficiency, median gap in
/// µs between one job ending and the next starting on the same pool, median overshoot in µs of
/// the 10 ms sleep itself).
pub fn s4_leasepool(tasks: usize, pools: usize, sleep: Duration) -> (f64, f64, f64) {
    multi_thread().block_on(async {
        let m = started(pools, 1).await;
        let spans = Arc::new(Mutex::new(Vec::with_capacity(tasks)));
        let t = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (m, spans) = (m.clone(), Arc::clone(&spans));
                tokio::spawn(async move {
                    let lease = m.acquire().await.unwrap();
                    let span = lease
                        .run(move || {
                            let begun = Instant::now();
                            std::thread::sleep(sleep);
                            (
                                std::thread::current().name().map(str::to_owned),
                                begun,
                                Instant::now(),
                            )
                        })
                        .await
                        .unwrap();
                    lease.release().await;
                    spans.lock().unwrap().push(span);
                })
            })
            .collect();
        for h in join_all(handles).await {
            h.unwrap();
        }
        let dt = t.elapsed();
        m.stop().await;
        let mut spans = spans.lock().unwrap().clone();
        spans.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut gaps: Vec<f64> = spans
            .windows(2)
            .filter(|w| w[0].0 == w[1].0)
            .map(|w| w[1].1.saturating_duration_since(w[0].2).as_secs_f64() * 1e6)
            .collect();
        let mut over: Vec<f64> = spans
            .iter()
            .map(|s| s.2.duration_since(s.1).saturating_sub(sleep).as_secs_f64() * 1e6)
            .collect();
        (
            efficiency(tasks, pools, sleep, dt),
            middle(&mut gaps),
            middle(&mut over),
        )
    })
}

fn middle(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn s4_raw_off_thread(tasks: usize, pools: usize, sleep: Duration) -> f64 {
    let arbiter = OffThreadArbiter::start(pools);
    current_thread().block_on(async {
        let addr = arbiter.addr();
        let t = Instant::now();
        for r in join_all((0..tasks).map(|_| addr.send(Sleep(sleep)))).await {
            r.unwrap();
        }
        efficiency(tasks, pools, sleep, t.elapsed())
    })
}

pub fn s4_semaphore(tasks: usize, pools: usize, sleep: Duration) -> f64 {
    multi_thread().block_on(async {
        let sem = Arc::new(Semaphore::new(pools));
        let t = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let sem = Arc::clone(&sem);
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await.unwrap();
                    tokio::task::spawn_blocking(move || std::thread::sleep(sleep))
                        .await
                        .unwrap();
                })
            })
            .collect();
        for h in join_all(handles).await {
            h.unwrap();
        }
        efficiency(tasks, pools, sleep, t.elapsed())
    })
}

pub fn s4_deadpool(tasks: usize, pools: usize, sleep: Duration) -> f64 {
    multi_thread().block_on(async {
        let pool = deadpool::unmanaged::Pool::from(vec![(); pools]);
        let t = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let _obj = pool.get().await.unwrap();
                    tokio::task::spawn_blocking(move || std::thread::sleep(sleep))
                        .await
                        .unwrap();
                })
            })
            .collect();
        for h in join_all(handles).await {
            h.unwrap();
        }
        efficiency(tasks, pools, sleep, t.elapsed())
    })
}

// ---- S5: many concurrent acquirers on 4 pools ----------------------------------------------

/// One S5 run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct WaiterRun {
    pub rate: f64,
    pub overtakes: usize,
    pub bytes_per_waiter: f64,
    /// RSS growth still held after the waiters finished, as a fraction of the growth at the
    /// peak: 0 = back to baseline, 1 = nothing given back.
    pub retained: f64,
}

impl WaiterRun {
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "rate": self.rate,
            "overtakes": self.overtakes,
            "bytes_per_waiter": self.bytes_per_waiter,
            "retained": self.retained,
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        Some(Self {
            rate: v.get("rate")?.as_f64()?,
            overtakes: v.get("overtakes")?.as_u64()? as usize,
            bytes_per_waiter: v.get("bytes_per_waiter")?.as_f64()?,
            retained: v.get("retained")?.as_f64()?,
        })
    }
}

/// Runs one S5 measurement for `system` in this (fresh) process.
pub fn s5_by_name(system: &str, waiters: usize, pools: usize) -> Option<WaiterRun> {
    match system {
        "leasepool" => Some(s5_leasepool(waiters, pools)),
        "deadpool" => Some(s5_deadpool(waiters, pools)),
        "semaphore" => Some(s5_semaphore(waiters, pools)),
        _ => None,
    }
}

/// Counts acquirers served after someone who queued later (an overtake).
pub fn overtakes(served: &[usize]) -> usize {
    let mut high = None;
    let mut count = 0;
    for &i in served {
        match high {
            Some(h) if i < h => count += 1,
            _ => high = Some(i),
        }
    }
    count
}

/// Lets background work (the host processing its mailbox) finish, then trims the heap.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
    trim_heap();
}

/// Shared S5 driver: `hold` takes every slot, `spawn_waiter(i, served)` queues waiter `i`,
/// `queued()` says how many are queued, `free` releases the holders.
async fn waiter_run<H, Fut>(
    waiters: usize,
    hold: H,
    spawn_waiter: impl Fn(usize, Arc<Mutex<Vec<usize>>>) -> tokio::task::JoinHandle<()>,
    queued: impl Fn() -> Fut,
) -> WaiterRun
where
    H: FnOnce() -> Box<dyn FnOnce()>,
    Fut: std::future::Future<Output = usize>,
{
    let free = hold();
    let served = Arc::new(Mutex::new(Vec::with_capacity(waiters)));
    settle().await;
    let base = rss_kib();
    let tasks: Vec<_> = (0..waiters)
        .map(|i| spawn_waiter(i, Arc::clone(&served)))
        .collect();
    while queued().await < waiters {
        tokio::task::yield_now().await;
    }
    let peak = rss_kib();
    let t = Instant::now();
    free();
    for h in join_all(tasks).await {
        h.unwrap();
    }
    let dt = t.elapsed();
    settle().await;
    let after = rss_kib();
    let served = served.lock().unwrap().clone();
    WaiterRun {
        rate: per_sec(dt, waiters),
        overtakes: overtakes(&served),
        bytes_per_waiter: (peak.saturating_sub(base) * 1024) as f64 / waiters as f64,
        retained: after.saturating_sub(base) as f64 / peak.saturating_sub(base).max(1) as f64,
    }
}

pub fn s5_leasepool(waiters: usize, pools: usize) -> WaiterRun {
    current_thread().block_on(async {
        let m = started(pools, 1).await;
        let mut holders = Vec::new();
        for _ in 0..pools {
            holders.push(m.acquire().await.unwrap());
        }
        let m2 = m.clone();
        let run = waiter_run(
            waiters,
            // Release from inside this runtime, like any holder in a service would.
            move || {
                Box::new(move || {
                    tokio::spawn(async move {
                        for h in holders {
                            h.release().await;
                        }
                    });
                })
            },
            |i, served| {
                let m = m.clone();
                tokio::spawn(async move {
                    let lease = m.acquire().await.unwrap();
                    served.lock().unwrap().push(i);
                    lease.release().await;
                })
            },
            || {
                let m = m2.clone();
                async move { m.stats().await.waiting }
            },
        )
        .await;
        m2.stop().await;
        run
    })
}

pub fn s5_deadpool(waiters: usize, pools: usize) -> WaiterRun {
    current_thread().block_on(async {
        let pool = deadpool::unmanaged::Pool::from(vec![(); pools]);
        let queued = Arc::new(AtomicUsize::new(0));
        let mut holders = Vec::new();
        for _ in 0..pools {
            holders.push(pool.get().await.unwrap());
        }
        let q = Arc::clone(&queued);
        waiter_run(
            waiters,
            move || Box::new(move || drop(holders)),
            |i, served| {
                let (pool, queued) = (pool.clone(), Arc::clone(&q));
                tokio::spawn(async move {
                    queued.fetch_add(1, SeqCst);
                    let obj = pool.get().await.unwrap();
                    served.lock().unwrap().push(i);
                    drop(obj);
                })
            },
            || {
                let q = Arc::clone(&queued);
                async move { q.load(SeqCst) }
            },
        )
        .await
    })
}

pub fn s5_semaphore(waiters: usize, pools: usize) -> WaiterRun {
    current_thread().block_on(async {
        let sem = Arc::new(Semaphore::new(pools));
        let holders = Arc::clone(&sem)
            .acquire_many_owned(pools as u32)
            .await
            .unwrap();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = Arc::clone(&queued);
        waiter_run(
            waiters,
            move || Box::new(move || drop(holders)),
            |i, served| {
                let (sem, queued) = (Arc::clone(&sem), Arc::clone(&q));
                tokio::spawn(async move {
                    queued.fetch_add(1, SeqCst);
                    let permit = sem.acquire().await.unwrap();
                    served.lock().unwrap().push(i);
                    drop(permit);
                })
            },
            || {
                let q = Arc::clone(&queued);
                async move { q.load(SeqCst) }
            },
        )
        .await
    })
}

// ---- S6: acquire + release with no job ------------------------------------------------------

/// (uncontended µs/op, contended ops/s with `tasks` tasks on `pools` pools).
pub fn s6_leasepool(n: usize, tasks: usize, per_task: usize, pools: usize) -> (f64, f64) {
    let single = current_thread().block_on(async {
        let m = started(1, 1).await;
        let t = Instant::now();
        for _ in 0..n {
            m.acquire().await.unwrap().release().await;
        }
        let dt = t.elapsed();
        m.stop().await;
        us_per_op(dt, n)
    });
    let contended = multi_thread().block_on(async {
        let m = started(pools, 1).await;
        let t = Instant::now();
        let hs: Vec<_> = (0..tasks)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        m.acquire().await.unwrap().release().await;
                    }
                })
            })
            .collect();
        for h in join_all(hs).await {
            h.unwrap();
        }
        let dt = t.elapsed();
        m.stop().await;
        per_sec(dt, tasks * per_task)
    });
    (single, contended)
}

pub fn s6_deadpool(n: usize, tasks: usize, per_task: usize, pools: usize) -> (f64, f64) {
    let single = current_thread().block_on(async {
        let pool = deadpool::unmanaged::Pool::from(vec![()]);
        let t = Instant::now();
        for _ in 0..n {
            drop(pool.get().await.unwrap());
        }
        us_per_op(t.elapsed(), n)
    });
    let contended = multi_thread().block_on(async {
        let pool = deadpool::unmanaged::Pool::from(vec![(); pools]);
        let t = Instant::now();
        let hs: Vec<_> = (0..tasks)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        drop(pool.get().await.unwrap());
                    }
                })
            })
            .collect();
        for h in join_all(hs).await {
            h.unwrap();
        }
        per_sec(t.elapsed(), tasks * per_task)
    });
    (single, contended)
}

pub fn s6_semaphore(n: usize, tasks: usize, per_task: usize, pools: usize) -> (f64, f64) {
    let single = current_thread().block_on(async {
        let sem = Semaphore::new(1);
        let t = Instant::now();
        for _ in 0..n {
            drop(sem.acquire().await.unwrap());
        }
        us_per_op(t.elapsed(), n)
    });
    let contended = multi_thread().block_on(async {
        let sem = Arc::new(Semaphore::new(pools));
        let t = Instant::now();
        let hs: Vec<_> = (0..tasks)
            .map(|_| {
                let sem = Arc::clone(&sem);
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        drop(sem.acquire().await.unwrap());
                    }
                })
            })
            .collect();
        for h in join_all(hs).await {
            h.unwrap();
        }
        per_sec(t.elapsed(), tasks * per_task)
    });
    (single, contended)
}

// ---- S8: many tiny jobs through the WorkGrinder vs one spawn_blocking per item -------------

pub fn s8_grinder(items: usize) -> f64 {
    multi_thread().block_on(async {
        let m = started(2, 4).await;
        let g = leasepool::WorkGrinder::builder(&m)
            .batch_size_threshold(256)
            .max_wait(Duration::from_millis(1))
            .max_pending(items)
            .build()
            .expect("grinder settings");
        g.start().await.unwrap();
        let t = Instant::now();
        let handles: Vec<_> = (0..items).map(|i| g.enqueue(move || i).unwrap()).collect();
        for h in join_all(handles).await {
            h.unwrap();
        }
        let dt = t.elapsed();
        g.stop(leasepool::StopMode::Drain).await;
        m.stop().await;
        per_sec(dt, items)
    })
}

pub fn s8_spawn_blocking(items: usize) -> f64 {
    multi_thread().block_on(async {
        let t = Instant::now();
        let handles: Vec<_> = (0..items)
            .map(|i| tokio::task::spawn_blocking(move || i))
            .collect();
        for h in join_all(handles).await {
            h.unwrap();
        }
        per_sec(t.elapsed(), items)
    })
}

#[cfg(test)]
mod tests {
    use super::overtakes;

    #[test]
    fn overtakes_counts_each_acquirer_served_after_a_later_one() {
        assert_eq!(overtakes(&[0, 1, 2, 3]), 0);
        assert_eq!(overtakes(&[1, 0, 2, 3]), 1);
        assert_eq!(overtakes(&[3, 0, 1, 2]), 3);
        assert_eq!(overtakes(&[]), 0);
    }
}
