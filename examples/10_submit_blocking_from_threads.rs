//! `submit_blocking`: plain OS threads (a legacy thread pool, a C callback thread) feed the same
//! WorkGrinder as async code, and get their results synchronously. On an async runtime thread
//! it refuses with `BlockingOnRuntime` instead of blocking the runtime.
//!
//! Run: `cargo run --example 10_submit_blocking_from_threads`

use std::error::Error;
use std::time::Duration;

use leasepool::{LeaseError, LeaseManager, StopMode, WorkGrinder};

fn main() -> Result<(), Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (manager, grinder) = runtime.block_on(async {
        let manager = LeaseManager::builder()
            .max_pools(2)
            .name_prefix("threads")
            .build()?;
        manager.start().await?;
        let grinder = WorkGrinder::builder(&manager)
            .batch_size_threshold(16)
            .max_wait(Duration::from_millis(5))
            .build()?;
        grinder.start().await?;
        Ok::<_, Box<dyn Error>>((manager, grinder))
    })?;

    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let grinder = grinder.clone();
            std::thread::spawn(move || -> Result<u64, LeaseError> {
                let mut total = 0;
                for i in 0..50u64 {
                    total += grinder.submit_blocking(move || t * 1_000 + i)?;
                }
                Ok(total)
            })
        })
        .collect();
    for (t, thread) in threads.into_iter().enumerate() {
        println!("thread {t}: total {}", thread.join().expect("thread")?);
    }

    let on_runtime = runtime.block_on(async { grinder.submit_blocking(|| 0) });
    println!("submit_blocking on a runtime thread -> {on_runtime:?}");

    runtime.block_on(async {
        grinder.stop(StopMode::Drain).await;
        manager.stop().await;
    });
    Ok(())
}
