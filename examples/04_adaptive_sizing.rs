//! Adaptive sizing: the number of pools follows a size signal (here: connected devices).
//!
//! desired = min(max_pools, max(min_pools, ceil(devices / units_per_pool))). The supervisor
//! re-evaluates every `check_interval` and at once on `notify_scale_changed()`. Idle pools above
//! the target are shut down; leased pools are never revoked because the target shrank.
//!
//! Run: `cargo run --example 04_adaptive_sizing`

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasepool::LeaseManager;

async fn show(manager: &LeaseManager, devices: usize) {
    // Sizing is applied by the supervisor asynchronously; give it a moment.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = manager.stats().await;
    println!(
        "devices={devices:>3} desired={} total={} available={} leased={} retiring={}",
        s.desired, s.total, s.available, s.leased, s.retiring
    );
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let devices = Arc::new(AtomicUsize::new(0));
    let signal = Arc::clone(&devices);
    let manager = LeaseManager::builder()
        .max_pools(5)
        .min_pools(1)
        .units_per_pool(10) // one pool per 10 devices
        .workers_per_pool(2)
        .size_provider(move || signal.load(Ordering::Relaxed))
        .check_interval(Duration::from_secs(30))
        .name_prefix("sizing")
        .build()?;
    manager.start().await?;
    show(&manager, 0).await;

    for n in [35, 80] {
        devices.store(n, Ordering::Relaxed);
        manager.notify_scale_changed();
        show(&manager, n).await;
    }

    // Hold two leases, then let the devices go: idle pools go, held ones stay.
    let a = manager.acquire().owner("poller-a").await?;
    let b = manager.acquire().owner("poller-b").await?;
    devices.store(0, Ordering::Relaxed);
    manager.notify_scale_changed();
    show(&manager, 0).await;

    // Released pools above the target are retired rather than parked.
    a.release().await;
    b.release().await;
    show(&manager, 0).await;

    manager.stop().await;
    Ok(())
}
