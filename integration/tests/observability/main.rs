//! Observability (features `metrics`, `queue`): what the `metrics` facade records agrees with
//! `Counters` and `QueueStats` on both backends and the queue; a job's span is a child of its
//! submitter's, on a worker thread and across the process boundary.
//!
//! No libtest harness: this binary is also the process backend's worker program.

mod jobs;
mod metrics_process;
mod metrics_queue;
mod metrics_thread;
mod recorded;
mod recorder_faults;
mod spans;
mod trace;

fn main() {
    leasepool::process::init(jobs::jobs());
    spans::install();
    // The jobs that panic on purpose would print a report each: keep the output readable.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload().downcast_ref::<&str>().copied();
        if message != Some("on purpose") {
            report(info);
        }
    }));
    let ran = testkit::Runner::new(|test| actix_rt::System::new().block_on(test))
        .limit(std::time::Duration::from_secs(120))
        .run();
    ran.finish();
}

/// Removes its directory when dropped (also when the test fails).
pub struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh SQLite queue in a directory of its own, named for the test.
pub async fn sqlite_queue(name: &str) -> (leasepool::queue::Queue, TempDir) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let queue = leasepool::queue::Queue::sqlite(dir.join("q.db"))
        .await
        .unwrap();
    (queue, TempDir(dir))
}
