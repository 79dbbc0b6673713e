//! The process backend: CPU-bound work in worker child processes, crash isolation, and a real
//! kill when a lease expires.
//!
//! 1. Four CPU-bound jobs run in parallel in four children (2 pools x 2 workers).
//! 2. One job aborts its child: it alone answers `WorkerLost`; the job beside it on the same
//!    pool finishes, and the pool serves on with a new child.
//! 3. A runaway job on a 300 ms lease is killed at the hard expiry and answers `Expired` — a
//!    thread could not be stopped; a child can.
//!
//! Run: `cargo run --release --example 12_process_backend --features process`

use std::error::Error;
use std::time::{Duration, Instant};

use leasepool::process::{self, Jobs, ProcessJob};
use leasepool::{Backend, LeaseError, LeaseManager};
use serde::{Deserialize, Serialize};

/// Counts the primes below `limit`, the slow way.
#[derive(Serialize, Deserialize)]
struct CountPrimes {
    limit: u64,
}

impl ProcessJob for CountPrimes {
    const NAME: &'static str = "count-primes.v1";
    type Output = (u64, u32);
    fn run(self) -> (u64, u32) {
        let count = (2..self.limit)
            .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
            .count() as u64;
        (count, std::process::id())
    }
}

/// A vendor call gone wrong: aborts its process.
#[derive(Serialize, Deserialize)]
struct Crash;

impl ProcessJob for Crash {
    const NAME: &'static str = "crash.v1";
    type Output = ();
    fn run(self) {
        std::process::abort();
    }
}

/// Never returns.
#[derive(Serialize, Deserialize)]
struct Runaway;

impl ProcessJob for Runaway {
    const NAME: &'static str = "runaway.v1";
    type Output = ();
    fn run(self) {
        loop {
            std::hint::spin_loop();
        }
    }
}

fn jobs() -> Jobs {
    Jobs::new()
        .register::<CountPrimes>()
        .register::<Crash>()
        .register::<Runaway>()
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // First line: in a worker child this serves jobs and never returns.
    process::init(jobs());

    let manager = LeaseManager::builder()
        .backend(Backend::Process)
        .process_jobs(jobs())
        .max_pools(2)
        .min_pools(2)
        .workers_per_pool(2)
        .lease_grace(Duration::ZERO)
        .name_prefix("procs")
        .build()?;
    manager.start().await?;

    // 1. Parallel CPU work in four children.
    let a = manager.acquire().owner("primes-a").await?;
    let b = manager.acquire().owner("primes-b").await?;
    let begun = Instant::now();
    let jobs = [
        a.submit_call(CountPrimes { limit: 60_000 })?,
        a.submit_call(CountPrimes { limit: 60_000 })?,
        b.submit_call(CountPrimes { limit: 60_000 })?,
        b.submit_call(CountPrimes { limit: 60_000 })?,
    ];
    for job in jobs {
        let (count, pid) = job.await?;
        println!("{count} primes below 60000, counted by child {pid}");
    }
    println!("four jobs in {:?}", begun.elapsed());
    drop(b);

    // 2. A crash costs one job, not the pool.
    let beside = a.submit_call(CountPrimes { limit: 20_000 })?;
    match a.call(Crash).await {
        Err(LeaseError::WorkerLost) => println!("the crashing job answered WorkerLost"),
        other => println!("unexpected: {other:?}"),
    }
    println!(
        "the job beside it answered {:?}",
        beside.await.map(|(n, _)| n)
    );
    println!(
        "and the pool serves on: {:?}",
        a.call(CountPrimes { limit: 100 }).await.map(|(n, _)| n)
    );
    a.release().await;

    // 3. A runaway job is killed at the hard expiry.
    let short = manager
        .acquire()
        .owner("runaway")
        .lease_for(Duration::from_millis(300))
        .await?;
    let begun = Instant::now();
    let answer = short.call(Runaway).await;
    println!(
        "the runaway job answered {answer:?} after {:?}",
        begun.elapsed()
    );
    drop(short);

    // 4. The counters say what happened: one job lost to a crash, one to a kill at expiry.
    let c = manager.stats().await.counters;
    println!(
        "jobs: {} completed, {} lost; children: {} started, {} crashed, {} killed at expiry",
        c.jobs_completed, c.jobs_lost, c.children_started, c.children_crashed, c.children_killed
    );

    manager.stop().await;
    println!("stopped: no child process left");
    Ok(())
}
