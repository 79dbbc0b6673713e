//! Supervision, shown with fault injection (feature `testing`) and a flaky worker-state
//! factory: dead workers are replaced with backoff, crashed pool and lease actors are replaced,
//! and the counters prove it.
//!
//! Run: `cargo run --example 15_supervisor_restart` (examples and tests always have the
//! `testing` feature; in your own crate, enable it in `[dev-dependencies]`).

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasepool::{LeaseError, LeaseManager};

/// Stands in for a database connection that fails to open a few times.
struct Connection {
    serial: usize,
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let opened = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&opened);
    let manager = LeaseManager::builder()
        .max_pools(2)
        .workers_per_pool(2)
        .name_prefix("supervised")
        .worker_state(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            // Connections 3 and 4 fail to open (think: the database restarted).
            if n == 3 || n == 4 {
                panic!("connection {n} refused");
            }
            Connection { serial: n }
        })
        .build()?;
    manager.start().await?;
    let lease = manager.acquire().owner("demo").await?;
    println!(
        "serving on connection {}",
        lease.run_with(|c| c.serial).await?
    );

    // 1. A panicking job: the worker rebuilds its state; the factory fails twice, so those
    //    threads die and are replaced with backoff (10 ms, 20 ms, ...).
    for _ in 0..2 {
        let _ = lease.run(|| panic!("job bug")).await;
    }
    loop {
        match lease.run_with(|c| c.serial).await {
            Ok(serial) => {
                println!("recovered on connection {serial}");
                break;
            }
            Err(LeaseError::NeverRan | LeaseError::WorkerLost) => {
                actix_rt::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(e.into()),
        }
    }

    // 2. A worker thread killed outright is replaced.
    manager.kill_worker(lease.pool(), 1).await;
    // 3. A crashed pool actor: its lease is revoked and the capacity rebuilt.
    manager.kill_pool(lease.pool()).await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    println!(
        "job on the crashed pool's lease -> {:?}",
        lease.run(|| ()).await
    );

    // 4. A crashed lease actor: that lease is revoked, its pool retired and replaced.
    let other = manager.acquire().owner("other").await?;
    manager.kill_lease_actor(other.id()).await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    println!(
        "job on the crashed actor's lease -> {:?}",
        other.run(|| ()).await
    );

    let fresh = manager.acquire().timeout(Duration::from_secs(5)).await?;
    println!("a fresh lease works: {}", fresh.run(|| "yes").await?);
    let s = manager.stats().await;
    println!(
        "worker_states_rebuilt={} workers_replaced={} pools_replaced={} revoked={} total={} unhealthy={}",
        s.counters.worker_states_rebuilt,
        s.counters.workers_replaced,
        s.counters.pools_replaced,
        s.counters.revoked,
        s.total,
        s.unhealthy
    );
    drop((lease, other, fresh));
    manager.stop().await;
    Ok(())
}
