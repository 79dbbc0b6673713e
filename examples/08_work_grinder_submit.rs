//! The WorkGrinder with `submit`: callers submit single small blocking items and get each
//! result back; the grinder batches them onto leases behind the scenes.
//!
//! Run: `cargo run --example 08_work_grinder_submit`

use std::error::Error;
use std::time::{Duration, Instant};

use leasepool::{LeaseManager, StopMode, WorkGrinder};

/// A small blocking call: hashing a record, say.
fn checksum(record: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    record.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let manager = LeaseManager::builder()
        .max_pools(2)
        .workers_per_pool(4)
        .name_prefix("grind")
        .build()?;
    manager.start().await?;
    let grinder = WorkGrinder::builder(&manager)
        .batch_size_threshold(20) // start a batch at 20 pending items ...
        .max_wait(Duration::from_millis(50)) // ... or when the oldest has waited 50 ms
        .owner_prefix("checksums")
        .build()?;
    grinder.start().await?;

    let begun = Instant::now();
    let mut callers = Vec::new();
    for record in 0..200u64 {
        let grinder = grinder.clone();
        callers.push(actix_rt::spawn(async move {
            grinder.submit(move || checksum(record)).await
        }));
    }
    let mut xor = 0;
    for caller in callers {
        xor ^= caller.await??;
    }
    let stats = grinder.stats().await;
    println!(
        "200 items in {:?} over {} batches (2 ms each; 8 workers), xor = {xor:#x}",
        begun.elapsed(),
        stats.batches_run
    );
    grinder.stop(StopMode::Drain).await;
    manager.stop().await;
    Ok(())
}
