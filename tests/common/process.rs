//! What the process-backend test binaries (`process`, `process_attacks`, `process_truth`) share: job types,
//! a manager builder, scratch directories and `/proc` readings. Included with
//! `#[path = "common/process.rs"] mod proc_common;` (the binaries are their managers' worker
//! programs, so each registers these jobs in its own `Jobs`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use leasepool::process::{Jobs, ProcessJob};
use leasepool::{Backend, LeaseManager, ManagerBuilder};
use serde::{Deserialize, Serialize};

/// Answers the pid of the child that ran it.
#[derive(Serialize, Deserialize)]
pub struct Pid;
impl ProcessJob for Pid {
    const NAME: &'static str = "pid.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::process::id()
    }
}

/// Answers the length of its payload.
#[derive(Serialize, Deserialize)]
pub struct Bytes(pub Vec<u8>);
impl ProcessJob for Bytes {
    const NAME: &'static str = "bytes.v1";
    type Output = usize;
    fn run(self) -> usize {
        self.0.len()
    }
}

/// Panics with its text.
#[derive(Serialize, Deserialize)]
pub struct Boom(pub String);
impl ProcessJob for Boom {
    const NAME: &'static str = "boom.v1";
    type Output = ();
    fn run(self) {
        panic!("{}", self.0);
    }
}

/// Allocates and touches `bytes`; answers their sum.
#[derive(Serialize, Deserialize)]
pub struct Hog {
    pub bytes: usize,
}
impl ProcessJob for Hog {
    const NAME: &'static str = "hog.v1";
    type Output = usize;
    fn run(self) -> usize {
        let block = vec![1_u8; self.bytes];
        block.iter().map(|&b| usize::from(b)).sum()
    }
}

/// A process-backend manager of `pools` fixed pools of `workers` children each, running `jobs`.
pub fn process_builder(
    jobs: Jobs,
    prefix: &str,
    pools: usize,
    workers: usize,
) -> ManagerBuilder<()> {
    LeaseManager::builder()
        .backend(Backend::Process)
        .process_jobs(jobs)
        .name_prefix(prefix)
        .max_pools(pools)
        .min_pools(pools)
        .workers_per_pool(workers)
}

/// A fresh, empty directory for one test, named after the binary, its pid and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lp-{}-{}-{name}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    dir
}

/// `(state, parent pid, process group)` of `pid` from `/proc/<pid>/stat`.
pub fn stat(pid: u32) -> Option<(String, u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = s.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.to_owned();
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(s, _, _)| s != "Z" && s != "X")
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// `(live, zombie)` children of `parent`.
pub fn children_of(parent: u32) -> (Vec<u32>, Vec<u32>) {
    let (mut live, mut zombie) = (Vec::new(), Vec::new());
    for pid in all_pids() {
        if let Some((state, ppid, _)) = stat(pid) {
            if ppid == parent {
                if state == "Z" {
                    zombie.push(pid);
                } else {
                    live.push(pid);
                }
            }
        }
    }
    (live, zombie)
}

/// Polls `cond` every 5 ms for up to `limit`; whether it came true.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
