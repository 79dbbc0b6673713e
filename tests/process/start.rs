//! Settings and starting: bad settings are refused by name, a program that is no worker and a start
//! hook that panics fail the start with a clear error.

use leasepool::process::Jobs;
use leasepool::{Backend, BuildError, LeaseError, LeaseManager};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::jobs::*;
use crate::support::*;

#[testkit::test]
async fn a_program_that_is_no_worker_fails_start_with_a_clear_error() {
    let m = builder("pt-noinit", 1, 1)
        .worker_program("/bin/echo")
        .child_start_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = m.start().await.unwrap_err();
    assert!(
        matches!(err, LeaseError::NoHealthyPool(ref t) if t.contains("process::init")),
        "{err}"
    );
    m.stop().await;
}

#[testkit::test]
async fn build_refuses_bad_process_settings() {
    let base = || LeaseManager::builder().backend(Backend::Process);
    assert_eq!(base().build().unwrap_err(), BuildError::MissingProcessJobs);
    let dup = Jobs::new().register::<Shout>().register::<ShoutAgain>();
    assert_eq!(
        base().process_jobs(dup).build().unwrap_err(),
        BuildError::DuplicateJobName("shout.v1")
    );
    assert_eq!(
        base()
            .process_jobs(crate::jobs())
            .max_jobs_per_child(0)
            .build()
            .unwrap_err(),
        BuildError::Zero {
            setting: "max_jobs_per_child"
        }
    );
    assert_eq!(
        base()
            .process_jobs(crate::jobs())
            .child_memory_limit(0)
            .build()
            .unwrap_err(),
        BuildError::Zero {
            setting: "child_memory_limit"
        }
    );
    let err = base()
        .process_jobs(crate::jobs())
        .worker_program("/no/such/program")
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::WorkerProgram(ref t) if t.contains("/no/such/program")));
}

#[testkit::test]
async fn on_child_start_panics() {
    let prog = script("panic", &format!("ADV_START_PANIC=1 exec {}", exe()));
    let m = impatient_builder("adv-ocsp", 1, 2)
        .worker_program(prog)
        .build()
        .unwrap();
    let (r, took) = timed(Duration::from_secs(20), m.start()).await;
    println!("    start: {r:?} in {took:?}");
    check!(
        matches!(r, Some(Err(LeaseError::NoHealthyPool(ref t))) if t.contains("on_child_start")),
        "start fails naming on_child_start: {r:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let (_, z) = kids();
    check!(z.is_empty(), "no zombies while it retries: {z:?}");
    m.stop().await;
    report_leftovers("end", "adv-ocsp");
}
