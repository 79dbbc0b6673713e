//! The hand-off figures of issue 20: the tail of S1 (p50 and p99 of one job round trip, not
//! only the mean), and S4 with 0 ms jobs — acquire → run(noop) → release under contention, so
//! that the hand-off of a pool from one task to the next is all there is to measure.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use leasepool::LeaseManager;

use crate::measure::{current_thread, multi_thread, per_sec};
use crate::peers::{Noop, OffThreadArbiter};

/// p50 and p99 of `samples` (µs).
fn tail(mut samples: Vec<f64>) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// S1's round trips one by one on leasepool: (p50, p99) in µs.
pub fn s1_tail_leasepool(n: usize) -> (f64, f64) {
    current_thread().block_on(async {
        let m = LeaseManager::builder()
            .max_pools(1)
            .min_pools(1)
            .workers_per_pool(1)
            .name_prefix("bench-tail")
            .build()
            .expect("bench settings");
        m.start().await.expect("start");
        let lease = m.acquire().await.unwrap();
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            lease.run(|| ()).await.unwrap();
            samples.push(micros(t.elapsed()));
        }
        lease.release().await;
        m.stop().await;
        tail(samples)
    })
}

/// The same on a raw `SyncArbiter` of one worker, the caller on another thread.
pub fn s1_tail_raw_off_thread(n: usize) -> (f64, f64) {
    let arbiter = OffThreadArbiter::start(1);
    current_thread().block_on(async {
        let addr = arbiter.addr();
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            addr.send(Noop).await.unwrap();
            samples.push(micros(t.elapsed()));
        }
        tail(samples)
    })
}

/// The same with tokio's `spawn_blocking`.
pub fn s1_tail_spawn_blocking(n: usize) -> (f64, f64) {
    current_thread().block_on(async {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            tokio::task::spawn_blocking(|| ()).await.unwrap();
            samples.push(micros(t.elapsed()));
        }
        tail(samples)
    })
}

/// S4 with 0 ms jobs on leasepool: `tasks` tasks, each `rounds` times acquire → run(noop) →
/// release, over `pools` pools of one worker. Hand-offs per second.
pub fn s4_handoff_leasepool(tasks: usize, rounds: usize, pools: usize) -> f64 {
    multi_thread().block_on(async {
        let m = LeaseManager::builder()
            .max_pools(pools)
            .min_pools(pools)
            .workers_per_pool(1)
            .max_waiters(1_000_000)
            .name_prefix("bench-handoff")
            .build()
            .expect("bench settings");
        m.start().await.expect("start");
        let t = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        let lease = m.acquire().await.unwrap();
                        lease.run(|| ()).await.unwrap();
                        lease.release().await;
                    }
                })
            })
            .collect();
        for h in join_all(handles).await {
            h.unwrap();
        }
        let dt = t.elapsed();
        m.stop().await;
        per_sec(dt, tasks * rounds)
    })
}

/// The same with a deadpool of `pools` objects and `spawn_blocking` for the job.
pub fn s4_handoff_deadpool(tasks: usize, rounds: usize, pools: usize) -> f64 {
    multi_thread().block_on(async {
        let pool = deadpool::unmanaged::Pool::from(vec![(); pools]);
        let t = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        let _obj = pool.get().await.unwrap();
                        tokio::task::spawn_blocking(|| ()).await.unwrap();
                    }
                })
            })
            .collect();
        for h in join_all(handles).await {
            h.unwrap();
        }
        per_sec(t.elapsed(), tasks * rounds)
    })
}

/// The same with a tokio `Semaphore` of `pools` permits and `spawn_blocking`.
pub fn s4_handoff_semaphore(tasks: usize, rounds: usize, pools: usize) -> f64 {
    multi_thread().block_on(async {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(pools));
        let t = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let sem = std::sync::Arc::clone(&sem);
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        let _permit = sem.acquire().await.unwrap();
                        tokio::task::spawn_blocking(|| ()).await.unwrap();
                    }
                })
            })
            .collect();
        for h in join_all(handles).await {
            h.unwrap();
        }
        per_sec(t.elapsed(), tasks * rounds)
    })
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_takes_the_median_and_the_99th_percentile() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(tail(samples), (51.0, 99.0));
        assert_eq!(tail(vec![5.0]), (5.0, 5.0));
        assert_eq!(tail(Vec::new()), (0.0, 0.0));
    }
}
