//! Explicit release: `release().await` returns once the supervisor has taken the lease back, so
//! the pool is immediately available to the next acquirer.
//!
//! Run: `cargo run --example 02_manual_release`

use std::error::Error;

use leasepool::LeaseManager;

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let manager = LeaseManager::builder()
        .max_pools(1)
        .name_prefix("manual")
        .build()?;
    manager.start().await?;

    let lease = manager.acquire().owner("first").await?;
    let checksum = lease
        .run(|| {
            // Blocking file I/O is a good use of a lease.
            let path = std::env::temp_dir().join("leasepool-manual-release.txt");
            std::fs::write(&path, b"leasepool")?;
            let bytes = std::fs::read(&path)?;
            std::fs::remove_file(&path)?;
            Ok::<_, std::io::Error>(bytes.iter().map(|b| u32::from(*b)).sum::<u32>())
        })
        .await??;
    println!("checksum of the file: {checksum}");
    lease.release().await;

    // With max_pools(1), this succeeds only because the release above has completed.
    let second = manager.acquire().no_wait().owner("second").await?;
    println!("acquired {} right after the release", second.id());
    second.release().await;

    manager.stop().await;
    Ok(())
}
