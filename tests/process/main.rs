//! The process backend, end to end, one module per subject: single calls and their answers,
//! crashes, expiry and stop, what a job starts (process groups), memory, logs, the grinder,
//! counters and idle costs, settings and starting, and a bounded chaos run on both backends.
//!
//! `harness = false`: this binary is also the worker program of its managers, so its `main`
//! calls `process::init` first — the pattern `docs/process-backend.md` recommends for tests —
//! with the one registry of every job the tests send ([`jobs`]). The tests register themselves
//! (`#[testkit::test]`) and run one at a time (they count the children, threads, memory and CPU
//! time of the whole process), each on its own thread under a deadline:
//! `cargo test --features process,testing --test process -- crashes::` runs one subject.
//!
//! Many tests were written by adversarial reviews: they print what they did and `check!` each
//! promise (a test fails when one of its checks does, and says which). `CHAOS_SECS` sets the
//! chaos run's time per backend (default 10).

mod calls;
mod chaos;
mod counters;
mod crashes;
mod expiry_and_stop;
mod grinder;
mod jobs;
mod logs;
mod memory;
mod process_groups;
mod start;
mod support;

use std::time::Duration;

use leasepool::process::{self, Jobs};
use tracing_subscriber::layer::SubscriberExt as _;

use jobs::*;
use support::{assert_no_children, Print, CHECKS, FAILS};

/// Every job of the binary: the children run whatever the tests send.
fn jobs() -> Jobs {
    let jobs = Jobs::new()
        .on_child_start(|| {
            assert!(
                !support::refuse_starts_flag().exists(),
                "this child refuses to start"
            );
            if let Ok(ms) = std::env::var("ADV_START_SLEEP_MS") {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            }
            if std::env::var_os("ADV_START_PANIC").is_some() {
                panic!("on_child_start refuses");
            }
        })
        // calls, crashes, expiry, logs, memory
        .register::<Nested>()
        .register::<Shout>()
        .register::<Pid>()
        .register::<Boom>()
        .register::<Crash>()
        .register::<Fail>()
        .register::<Rendezvous>()
        .register::<WaitFor>()
        .register::<Spin>()
        .register::<Hog>()
        .register::<Chatty>()
        .register::<Corrupt>()
        .register::<Bytes>()
        .register::<Keep>()
        .register::<Step>()
        .register::<Deep>()
        .register::<PipeFds>()
        .register::<SaysOom>()
        .register::<Nap>()
        .register::<Fragile>()
        .register::<Lazy>()
        .register::<Abort>()
        .register::<Hang>()
        .register::<Touchy>()
        .register::<LongName>()
        .register::<ChattyDaemon>()
        .register::<LeaveGroup>()
        .register::<BigIn>()
        .register::<ChildRss>()
        .register::<SleepMs>()
        .register::<Grandchild>()
        .register::<BigOut>()
        .register::<BigPanic>()
        .register::<Spew>()
        .register::<BgLogger>()
        .register::<ExitWhileWriting>()
        .register::<Inject>()
        .register::<Fds>();
    chaos::register(jobs)
}

fn main() {
    process::init(jobs());
    // The memory checks read what leasepool keeps, not what glibc caches: with a fixed mmap
    // threshold a freed big buffer goes back to the system at once (glibc's dynamic threshold
    // otherwise keeps 24 MiB buffers in per-thread arenas after the first one is freed).
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        use std::os::unix::process::CommandExt as _;
        let err = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .exec();
        panic!("cannot run again with MALLOC_MMAP_THRESHOLD_: {err}");
    }
    if std::env::var_os(expiry_and_stop::PARENT_ROLE).is_some() {
        expiry_and_stop::parent_role();
    }
    // Every event is kept for the tests that read what was logged (cleared before each test);
    // leasepool's WARN and ERROR events are also printed, briefly.
    let subscriber = tracing_subscriber::registry()
        .with(testkit::capture::layer())
        .with(Print);
    tracing::subscriber::set_global_default(subscriber).expect("the first subscriber");
    let ran = testkit::Runner::new(testkit::block_on_tokio)
        .limit(Duration::from_secs(180))
        .before_each(|name| {
            println!("== {name}");
            testkit::capture::events().lock().unwrap().clear();
            FAILS.lock().unwrap().clear();
        })
        .after_each(|_, passed| {
            if !passed {
                println!("    what it logged:");
                for e in testkit::capture::events().lock().unwrap().iter() {
                    println!("    {} {:?}", e.target, e.fields);
                }
            }
            let fails = FAILS.lock().unwrap();
            if fails.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} failed check(s):\n  {}",
                    fails.len(),
                    fails.join("\n  ")
                ))
            }
        })
        .run();
    println!(
        "{} checks",
        CHECKS.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_no_children("after every test");
    ran.finish();
}
