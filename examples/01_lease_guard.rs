//! The guard pattern: a `Lease` releases itself when dropped. Shows `stats()` before, during
//! and after the lease.
//!
//! Run: `cargo run --example 01_lease_guard`

use std::error::Error;
use std::time::Duration;

use leasepool::{LeaseManager, Stats};

fn show(when: &str, s: &Stats) {
    println!(
        "{when:>7}: available={} leased={} total={} waiting={} leases={:?}",
        s.available,
        s.leased,
        s.total,
        s.waiting,
        s.leases
            .iter()
            .map(|l| (l.id.to_string(), l.owner.clone()))
            .collect::<Vec<_>>()
    );
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let manager = LeaseManager::builder()
        .max_pools(2)
        .workers_per_pool(2)
        .name_prefix("guard")
        .build()?;
    manager.start().await?;
    show("before", &manager.stats().await);

    {
        let lease = manager.acquire().owner("report-job").await?;
        let sum = lease
            .run(|| {
                std::thread::sleep(Duration::from_millis(50)); // blocking work
                (1..=100u32).sum::<u32>()
            })
            .await?;
        println!("sum = {sum}");
        show("during", &manager.stats().await);
    } // the lease is dropped here: a non-blocking release message

    // The release is asynchronous; give the supervisor a moment before looking.
    tokio::time::sleep(Duration::from_millis(50)).await;
    show("after", &manager.stats().await);

    manager.stop().await;
    Ok(())
}
