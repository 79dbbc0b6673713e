//! The watcher of one worker child: a thread of the parent that forwards the child's stderr as
//! log events and notices when the child dies *between* jobs. It blocks in `poll` on three
//! descriptors — the child's stderr, the child's protocol pipe (only its hang-up: nothing is
//! read from it here), and a wake pipe of its own — so an idle child costs no wake-up at all.
//!
//! When the child hangs up while idle (killed from outside, or it exited on its own), the
//! watcher kills what is left of its process group, reaps it (no zombie stays), counts it and
//! logs it; the worker thread starts a new child when it takes its next job. While a job runs
//! (`busy`) or the child is being ended (`ending`), the worker thread handles the child's end
//! itself. Signalling and reaping happen only under [`Watch::life`] and only while the child
//! is not reaped: its pid — and its process group id — cannot have been reused before.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::ChildStderr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::process::{kill_process_group, Pid, Signal, WaitId, WaitIdOptions};

use super::super::counters::{ChildCounters, ChildEnd};
use super::super::logs::{ChildLabels, JobSpans, Lines, DRAIN_AFTER_STOP};

/// What the worker thread and the watcher share about the child.
#[derive(Debug, Default)]
pub(crate) struct Life {
    /// A job is being exchanged with the child: its end is the worker thread's to handle.
    pub(crate) busy: bool,
    /// The worker thread is ending the child.
    pub(crate) ending: bool,
    /// How the child ended, once reaped (by either thread): its pid is no longer ours.
    pub(crate) reaped: Option<String>,
    /// Since its current job started (or, idle, since its last one did), it wrote Rust's
    /// "memory allocation of … failed" on stderr: what its allocation-failure handler prints
    /// just before it aborts.
    pub(crate) out_of_memory: bool,
    /// Its stderr is read to the end (or the watcher stopped).
    pub(crate) stderr_done: bool,
}

/// One child's shared facts (see the module docs).
pub(crate) struct Watch {
    pub(crate) life: Mutex<Life>,
    /// Signalled when `stderr_done` is set.
    drained: Condvar,
    pid: u32,
    labels: ChildLabels,
    counters: Arc<ChildCounters>,
    /// The child runs under `child_memory_limit`: only then does a report of a failed
    /// allocation (in the job it died in: see `JOB_MARKER`) make its death `OverMemory`.
    limited: bool,
    /// The spans of the jobs sent to it, for its log lines.
    pub(crate) spans: JobSpans,
}

impl Watch {
    /// The facts of a child that is starting: until its handshake is done (see
    /// [`Watch::started`]) its end is the worker thread's — a child that fails its start is no
    /// crash to count.
    pub(crate) fn new(
        labels: ChildLabels,
        counters: Arc<ChildCounters>,
        limited: bool,
    ) -> Arc<Watch> {
        Arc::new(Watch {
            life: Mutex::new(Life {
                busy: true,
                ..Life::default()
            }),
            drained: Condvar::new(),
            pid: labels.pid,
            labels,
            counters,
            limited,
            spans: JobSpans::default(),
        })
    }

    /// The child finished its handshake: from now on a death between jobs is the watcher's to
    /// reap and count.
    pub(crate) fn started(&self) {
        self.life().busy = false;
    }

    pub(crate) fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn counters(&self) -> &ChildCounters {
        &self.counters
    }

    /// How a child that died counts: its memory limit if it said so on stderr (waiting a
    /// moment for the watcher to read its last lines), otherwise a crash.
    pub(crate) fn death(&self) -> ChildEnd {
        let life = self.life();
        let (life, _) = self
            .drained
            .wait_timeout_while(life, Duration::from_millis(100), |l| !l.stderr_done)
            .unwrap_or_else(|e| e.into_inner());
        if life.out_of_memory {
            ChildEnd::OverMemory
        } else {
            ChildEnd::Crashed
        }
    }

    fn stderr_done(&self) {
        self.life().stderr_done = true;
        self.drained.notify_all();
    }

    /// The child hung up its protocol pipe. If it is idle, it died between jobs: kill its
    /// group, reap it, count and log it.
    fn hung_up(&self) {
        let mut life = self.life();
        if life.busy || life.ending || life.reaped.is_some() {
            return;
        }
        let Some(pid) = Pid::from_raw(self.pid as i32) else {
            return;
        };
        // Not reaped: the pid and the group id are still the child's (a zombie keeps them).
        let _ = kill_process_group(pid, Signal::KILL);
        let status = match rustix::process::waitid(WaitId::Pid(pid), WaitIdOptions::EXITED) {
            Ok(Some(status)) => describe(status.exit_status(), status.terminating_signal()),
            Ok(None) => "ended".to_owned(),
            Err(e) => format!("could not be reaped: {e}"),
        };
        life.reaped = Some(status.clone());
        let how = if life.out_of_memory {
            ChildEnd::OverMemory
        } else {
            ChildEnd::Crashed
        };
        drop(life);
        self.counters.ended(how);
        let l = &self.labels;
        tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, status = %status, "worker child died while idle; reaped, a new one starts with the next job");
    }
}

/// "exited with code 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe(code: Option<i32>, signal: Option<i32>) -> String {
    if let Some(code) = code {
        return format!("exited with code {code}");
    }
    match signal {
        Some(sig) => {
            let name = match sig {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("was killed by signal {sig}{name}")
        }
        None => "ended".to_owned(),
    }
}

/// The watcher thread, and the pipe that stops it.
pub(crate) struct Watcher {
    thread: JoinHandle<()>,
    wake: OwnedFd,
}

impl Watcher {
    /// Starts watching: `stderr` is the child's, `hangup` a duplicate of the parent's read end
    /// of the child's protocol pipe.
    pub(crate) fn spawn(
        stderr: ChildStderr,
        hangup: OwnedFd,
        watch: Arc<Watch>,
        name: String,
    ) -> Result<Watcher, String> {
        // Close-on-exec: no child (nor a job's subprocess) may inherit another child's wake pipe.
        let (stop, wake) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("cannot make a watcher's pipe: {e}"))?;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(stderr, hangup, stop, &watch))
            .map_err(|e| format!("cannot spawn the watcher thread of a worker child: {e}"))?;
        Ok(Watcher { thread, wake })
    }

    /// Stops the watcher (after it forwards what is left on stderr, within a bound) and joins
    /// it.
    pub(crate) fn stop(self) {
        let _ = rustix::io::write(&self.wake, &[1]);
        let _ = self.thread.join();
    }
}

fn run(mut stderr: ChildStderr, hangup: OwnedFd, stop: OwnedFd, watch: &Watch) {
    let mut lines = Lines::default();
    let mut chunk = [0_u8; 16 * 1024];
    let (mut reading, mut watching) = (true, true);
    loop {
        let mut fds = vec![PollFd::new(&stop, PollFlags::IN)];
        if reading {
            fds.push(PollFd::new(&stderr, PollFlags::IN));
        }
        if watching {
            // No events asked: a hang-up is reported anyway.
            fds.push(PollFd::new(&hangup, PollFlags::empty()));
        }
        if rustix::event::poll(&mut fds, None).is_err() {
            continue; // EINTR
        }
        let ready: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
        drop(fds);
        if !ready[0].is_empty() {
            break;
        }
        let mut at = 1;
        if reading {
            if !ready[at].is_empty() && !read_available(&mut stderr, &mut chunk, &mut lines, watch)
            {
                reading = false;
                lines.flush(&watch.labels);
                watch.stderr_done();
            }
            at += 1;
        }
        if watching && !ready[at].is_empty() {
            watching = false;
            watch.hung_up();
        }
    }
    if reading {
        // What is left, within a bound: a process outside the child's group that keeps the
        // pipe open and keeps writing cannot keep this thread (and its worker) alive.
        let mut after = 0;
        while after < DRAIN_AFTER_STOP {
            match stderr.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    after += n;
                    lines.feed(&chunk[..n], &watch.labels, &watch.spans);
                }
            }
        }
        lines.flush(&watch.labels);
    }
    watch.stderr_done();
}

/// Most reads in a row before the watcher looks at its wake pipe again: a writer that never
/// pauses (a job's subprocess outside the child's group that keeps the pipe full) cannot keep
/// it from stopping.
const READS_PER_WAKE: usize = 16;

/// Reads what stderr has now (at most [`READS_PER_WAKE`] chunks) and forwards it; `false` at
/// its end.
fn read_available(
    stderr: &mut ChildStderr,
    chunk: &mut [u8],
    lines: &mut Lines,
    watch: &Watch,
) -> bool {
    for _ in 0..READS_PER_WAKE {
        match stderr.read(chunk) {
            Ok(0) => return false,
            Ok(n) => {
                if let Some(out_of_memory) = lines.feed(&chunk[..n], &watch.labels, &watch.spans) {
                    if watch.limited {
                        watch.life().out_of_memory = out_of_memory;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
