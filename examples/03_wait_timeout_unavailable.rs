//! The three ways to acquire when everything is leased: wait (FIFO), wait with a bound
//! (`Timeout`), or fail fast (`Unavailable`).
//!
//! Run: `cargo run --example 03_wait_timeout_unavailable`

use std::error::Error;
use std::time::Duration;

use leasepool::{LeaseError, LeaseManager};

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let manager = LeaseManager::builder()
        .max_pools(1)
        .name_prefix("waits")
        .build()?;
    manager.start().await?;
    let held = manager.acquire().owner("holder").await?;

    match manager.acquire().no_wait().await {
        Err(LeaseError::Unavailable) => println!("no_wait: unavailable at once"),
        other => println!("no_wait: unexpected {other:?}"),
    }

    match manager.acquire().timeout(Duration::from_millis(200)).await {
        Err(LeaseError::Timeout(d)) => println!("timeout: gave up after {d:?}"),
        other => println!("timeout: unexpected {other:?}"),
    }

    // A plain wait is served as soon as the holder releases.
    let waiter = {
        let manager = manager.clone();
        actix_rt::spawn(async move {
            let lease = manager.acquire().owner("patient").await?;
            println!("wait: served {} after the holder released", lease.id());
            lease.release().await;
            Ok::<_, LeaseError>(())
        })
    };
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    println!("waiting acquirers: {}", manager.stats().await.waiting);
    held.release().await;
    waiter.await??;

    manager.stop().await;
    Ok(())
}
