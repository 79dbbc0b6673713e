//! Reading `stats()`: pool counts, waiters, per-lease details and counters.
//!
//! Run: `cargo run --example 05_stats`

use std::error::Error;
use std::time::Duration;

use leasepool::LeaseManager;

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let manager = LeaseManager::builder()
        .max_pools(3)
        .min_pools(1)
        .workers_per_pool(2)
        .lease_grace(Duration::from_secs(5))
        .name_prefix("stats")
        .build()?;
    manager.start().await?;

    let a = manager
        .acquire()
        .owner("importer")
        .lease_for(Duration::from_secs(60))
        .await?;
    let b = manager.acquire().owner("exporter").await?;
    // Dropping the handle does not cancel a submitted job; the lease will drain it.
    drop(a.submit(|| std::thread::sleep(Duration::from_millis(300)))?);
    b.run(|| ()).await?;

    let s = manager.stats().await;
    println!(
        "backend={} desired={} available={} leased={} total={} (max {}) waiting={}",
        s.backend, s.desired, s.available, s.leased, s.total, s.max_pools, s.waiting
    );
    for l in &s.leases {
        println!(
            "  {} owner={:?} pool={} soft in {:?} hard in {:?} in_flight={} draining={}",
            l.id,
            l.owner,
            l.pool,
            l.until_soft_expiry,
            l.until_hard_expiry,
            l.in_flight,
            l.draining
        );
    }
    println!("counters: {:?}", s.counters);
    assert_eq!(s.available + s.leased, s.total);

    a.release().await; // drains: its job is still running
    b.release().await;
    manager.stop().await;
    Ok(())
}
