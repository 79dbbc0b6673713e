//! Every error leasepool returns, provoked on purpose, and what to do about each.
//!
//! Run: `cargo run --example 11_error_handling`

use std::time::Duration;

use leasepool::{LeaseError, LeaseManager};

fn advice(e: &LeaseError) -> &'static str {
    match e {
        LeaseError::NotStarted => "start the manager (or refuse work during shutdown)",
        LeaseError::Unavailable | LeaseError::Timeout(_) => "shed load: HTTP 503 + Retry-After",
        LeaseError::Stopped => "the service is shutting down; give up",
        LeaseError::Expired | LeaseError::Released => "acquire a new lease",
        LeaseError::Panicked(_) => "a bug in the job; log it (the worker survived)",
        LeaseError::WorkerLost => "retry on a new lease if the job is idempotent",
        LeaseError::NeverRan => "retry: the job never started",
        LeaseError::InvalidArgument(_) => "fix the call",
        _ => "unexpected; log it",
    }
}

fn report(what: &str, e: LeaseError) {
    println!(
        "{what:<34} -> {e}\n{:<34}    what to do: {}",
        "",
        advice(&e)
    );
}

#[actix_rt::main]
async fn main() {
    match LeaseManager::builder().max_pools(2).min_pools(3).build() {
        Err(e) => println!("{:<34} -> {e}", "build with min_pools > max_pools"),
        Ok(_) => unreachable!("min_pools > max_pools is refused"),
    }

    let manager = LeaseManager::builder()
        .max_pools(1)
        .workers_per_pool(1)
        .lease_grace(Duration::ZERO)
        .name_prefix("errors")
        .build()
        .expect("valid settings");
    if let Err(e) = manager.acquire().await {
        report("acquire before start", e);
    }
    manager.start().await.expect("start");

    let lease = manager.acquire().await.expect("a free pool");
    if let Err(e) = manager.acquire().no_wait().await {
        report("no_wait while everything is leased", e);
    }
    if let Err(e) = manager.acquire().timeout(Duration::from_millis(50)).await {
        report("timeout while everything is leased", e);
    }
    if let Err(e) = lease.run(|| -> u32 { panic!("bad input 42") }).await {
        report("a job that panics", e);
    }
    if let Err(e) = manager.acquire().lease_for(Duration::ZERO).await {
        report("lease_for(0)", e);
    }
    lease.release().await;

    let short = manager
        .acquire()
        .lease_for(Duration::from_millis(50))
        .await
        .expect("free");
    let blocker = short
        .submit(|| std::thread::sleep(Duration::from_millis(200)))
        .expect("accepted");
    let queued = short.submit(|| ()).expect("accepted");
    actix_rt::time::sleep(Duration::from_millis(120)).await;
    if let Err(e) = short.run(|| ()).await {
        report("a job after hard expiry", e);
    }
    if let Err(e) = queued.await {
        report("a job queued at revocation", e);
    }
    let _ = blocker.await;

    let m = manager.clone();
    let holder = manager.acquire().await.expect("free");
    let waiter = actix_rt::spawn(async move { m.acquire().await.map(drop) });
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    manager.stop().await;
    if let Ok(Err(e)) = waiter.await {
        report("waiting while the manager stops", e);
    }
    if let Err(e) = holder.run(|| ()).await {
        report("a job on a lease revoked by stop", e);
    }
}
