//! Quickstart: run a blocking call on a leased pool from async code.
//!
//! Mirrors the Python `leasepool` quickstart: a manager of up to 2 pools of 4 worker threads,
//! one lease, one blocking call (a 200 ms "vendor SDK" uppercase), release, stop.
//!
//! Run: `cargo run --release --example quickstart`

use std::error::Error;
use std::time::Duration;

use leasepool::LeaseManager;

/// Stands in for any blocking call: a vendor SDK, a sync database driver, file I/O.
fn blocking_uppercase(text: &str) -> String {
    std::thread::sleep(Duration::from_millis(200));
    text.to_uppercase()
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let manager = LeaseManager::builder()
        .max_pools(2)
        .min_pools(1)
        .workers_per_pool(4)
        .name_prefix("quickstart")
        .build()?;
    manager.start().await?;

    let lease = manager.acquire().owner("quickstart").await?;
    let result = lease.run(|| blocking_uppercase("hello leasepool")).await?;
    println!("Result: {result}");

    lease.release().await;
    manager.stop().await;
    Ok(())
}
