//! A child's logs and output reach the parent's subscriber with their fields, bounded per line,
//! from before `init` on.

use leasepool::LeaseError;
use std::sync::atomic::Ordering;
use std::time::Duration;
use testkit::capture::{captured, Captured};

use crate::jobs::*;
use crate::support::*;

#[testkit::test]
async fn child_logs_and_output_reach_the_parent_with_fields() {
    let m = builder("pt-logs", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let pid = lease.call(Chatty).await.unwrap().to_string();
    let from_child = |e: &Captured| {
        e.fields.get("manager").map(String::as_str) == Some("pt-logs")
            && e.fields.get("pid") == Some(&pid)
            && e.fields.get("pool").is_some_and(|p| p.starts_with("pool-"))
            && e.fields
                .get("worker")
                .is_some_and(|w| w.starts_with("pt-logs-0-"))
    };
    let arrived = eventually(Duration::from_secs(10), || {
        captured(|e| from_child(e) && e.target == "leasepool::process::output").len() >= 2
            && !captured(|e| from_child(e) && e.target == "leasepool::process::child").is_empty()
    });
    let all = captured(from_child);
    assert!(
        arrived,
        "the child's event and both output lines arrived: {all:#?}"
    );
    let event = all
        .iter()
        .find(|e| e.target == "leasepool::process::child")
        .unwrap();
    assert_eq!(event.fields["message"], "hello from the child");
    assert!(event.fields["fields"].contains("answer=42"), "{event:?}");
    // The job's own target: the module `Chatty` is written in.
    assert_eq!(event.fields["child_target"], "process::jobs::answers");
    let lines: Vec<&str> = all
        .iter()
        .filter(|e| e.target == "leasepool::process::output")
        .map(|e| e.fields["message"].as_str())
        .collect();
    assert!(lines.contains(&"printed by a job on stdout"), "{lines:?}");
    assert!(lines.contains(&"written by a job on stderr"), "{lines:?}");
    lease.release().await;
    m.stop().await;
}

/// A child prints one huge line (no newline): what does the parent's memory do?
#[testkit::test]
async fn huge_log_line() {
    // The binary's capture would keep the 400 MiB it measures.
    let _not_kept = testkit::capture::paused();
    let m = impatient_builder("adv-line", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let rss0 = vm_rss_kb();
    let hwm0 = vm_hwm_kb();
    let n = 400 << 20;
    let (r, took) = timed(
        Duration::from_secs(60),
        lease.call(Spew {
            bytes: n,
            newline: false,
            binary: true,
        }),
    )
    .await;
    std::thread::sleep(Duration::from_millis(500));
    let hwm1 = vm_hwm_kb();
    println!(
        "    call {r:?} in {took:?}; parent RSS {} MiB -> HWM {} MiB (was {} MiB)",
        rss0 >> 10,
        hwm1 >> 10,
        hwm0 >> 10
    );
    check!(
        hwm1.saturating_sub(hwm0) < (64 << 10),
        "a child's {} MiB log line grows the parent's peak memory by < 64 MiB (grew {} MiB)",
        n >> 20,
        hwm1.saturating_sub(hwm0) >> 10
    );
    lease.release().await;
    m.stop().await;
    report_leftovers("end", "adv-line");
}

#[testkit::test]
async fn prints_before_init() {
    let prog = script("print", &format!("echo hello there; exec {}", exe()));
    let m = impatient_builder("adv-print", 1, 1)
        .worker_program(prog)
        .build()
        .unwrap();
    let (r, took) = timed(Duration::from_secs(20), m.start()).await;
    println!("    start: {r:?} in {took:?}");
    check!(
        matches!(r, Some(Err(LeaseError::NoHealthyPool(_)))),
        "NoHealthyPool"
    );
    m.stop().await;
    // a prefix that mimics the magic then a huge length
    let prog = script("print2", "printf 'LPW\\001\\377\\377\\377\\377'; sleep 100");
    let m = impatient_builder("adv-print2", 1, 1)
        .worker_program(prog)
        .build()
        .unwrap();
    let (r, took) = timed(Duration::from_secs(20), m.start()).await;
    println!("    start (magic + huge length): {r:?} in {took:?}");
    check!(
        matches!(r, Some(Err(LeaseError::NoHealthyPool(_)))),
        "NoHealthyPool"
    );
    m.stop().await;
    report_leftovers("end", "adv-print");
}
