//! The WorkGrinder with `enqueue`: queue work without waiting, get a handle back at once, and
//! see backpressure when `max_pending` is reached (`Unavailable`, not an unbounded queue).
//!
//! Run: `cargo run --example 09_work_grinder_enqueue`

use std::error::Error;
use std::time::Duration;

use leasepool::{LeaseError, LeaseManager, StopMode, WorkGrinder};

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let manager = LeaseManager::builder()
        .max_pools(1)
        .name_prefix("enq")
        .build()?;
    manager.start().await?;
    let grinder = WorkGrinder::builder(&manager)
        .batch_size_threshold(1_000)
        .max_wait(Duration::from_millis(100))
        .max_pending(50)
        .build()?;
    grinder.start().await?;

    let mut handles = Vec::new();
    let mut refused = 0;
    for i in 0..80u32 {
        match grinder.enqueue(move || i * i) {
            Ok(handle) => handles.push(handle),
            Err(LeaseError::Unavailable) => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    let s = grinder.stats().await;
    println!(
        "queued {} (pending {}), refused {refused} at max_pending",
        handles.len(),
        s.pending
    );

    let mut sum = 0u64;
    for h in handles {
        sum += u64::from(h.await?);
    }
    println!("sum of squares of the queued items: {sum}");

    // Stop with CancelPending: whatever is still queued is answered `Stopped`.
    let late = grinder.enqueue(|| 1)?;
    grinder.stop(StopMode::CancelPending).await;
    println!("an item pending at stop -> {:?}", late.await);
    manager.stop().await;
    Ok(())
}
