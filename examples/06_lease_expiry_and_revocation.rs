//! Lease expiry: a soft lifetime (`lease_for`), a grace period, then hard revocation.
//!
//! During grace, jobs still run. At `soft + grace` the lease is revoked: new jobs fail with
//! `Expired`, queued jobs with `NeverRan`, a running job finishes; the pool is retired and a
//! fresh one takes its place, so a waiting acquirer is served without any help from the holder.
//!
//! Run: `cargo run --example 06_lease_expiry_and_revocation`

use std::error::Error;
use std::time::{Duration, Instant};

use leasepool::{LeaseError, LeaseManager};

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let manager = LeaseManager::builder()
        .max_pools(1)
        .workers_per_pool(1)
        .lease_grace(Duration::from_millis(200))
        .name_prefix("expiry")
        .build()?;
    manager.start().await?;

    let lease = manager
        .acquire()
        .owner("forgetful")
        .lease_for(Duration::from_millis(200))
        .await?;
    println!(
        "acquired {}; soft expiry in 200 ms, revocation 200 ms later",
        lease.id()
    );

    actix_rt::time::sleep(Duration::from_millis(300)).await;
    println!("in grace: job -> {:?}", lease.run(|| "still runs").await);

    // A long job is running when the lease is revoked; one more is queued behind it.
    let running = lease.submit(|| {
        std::thread::sleep(Duration::from_millis(300));
        "running job finished"
    })?;
    let queued = lease.submit(|| "never runs")?;

    // Someone else waits for the only pool; revocation frees capacity for them.
    let begun = Instant::now();
    let next = manager
        .acquire()
        .owner("patient")
        .timeout(Duration::from_secs(5))
        .await?;
    println!(
        "waiter served after {:?} with {}",
        begun.elapsed(),
        next.id()
    );

    println!("after revocation: new job -> {:?}", lease.run(|| ()).await);
    println!("queued job -> {:?}", queued.await);
    println!("running job -> {:?}", running.await);
    assert_eq!(lease.run(|| ()).await, Err(LeaseError::Expired));

    let s = manager.stats().await;
    println!(
        "revoked={} total={} retiring={}",
        s.counters.revoked, s.total, s.retiring
    );
    next.release().await;
    manager.stop().await;
    Ok(())
}
