//! The parent side of one worker child: start it and check its handshake, send it jobs, read
//! its answers while watching for a reason to kill it, end it.
//!
//! Only the worker thread that owns a `Child` signals or reaps it, and it learns that the child
//! died with `waitid(WNOWAIT)`, which leaves the child a zombie: so the child's pid — and with
//! it the id of its process group — cannot be reused before this thread has signalled the group
//! and reaped the child. (A host program that sets `SIGCHLD` to `SIG_IGN` makes the kernel reap
//! children itself; see docs/process-backend.md.)
//!
//! Both pipe ends the parent holds are non-blocking, and every wait is a `poll` of at most
//! [`WATCH_EVERY`]: between two polls the worker looks at the job's stop reason and at whether
//! the child is still alive, so no pipe a job's own subprocess keeps open can stall it.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

use super::super::counters::{ChildCounters, ChildEnd};
use super::super::logs::ChildLabels;
use super::super::protocol::{frame_with_body, trim, ToChild};
use super::exchange::{self, NoAnswer, Waited};
use super::watcher::{describe as describe_end, Watch, Watcher};
use crate::LeaseError;

mod pipes;
mod start;

/// How long a child told to finish (its input closed) gets before it is killed.
const END_GRACE: Duration = Duration::from_millis(250);

/// How to start the children of one manager.
#[derive(Debug)]
pub(crate) struct ChildSpec {
    pub(crate) manager: String,
    pub(crate) program: PathBuf,
    pub(crate) max_message: usize,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) max_jobs_per_child: Option<usize>,
    pub(crate) start_timeout: Duration,
    pub(crate) counters: Arc<ChildCounters>,
    /// Why the running job (or the starting worker) must stop now, if it must: asked between
    /// two waits (the engine's, given by the builder).
    pub(crate) stop_reason: fn() -> Option<LeaseError>,
}

/// One running worker child.
pub(crate) struct Child {
    process: std::process::Child,
    to: Option<ChildStdin>,
    from: ChildStdout,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// The frame being sent (its capacity is reused).
    out: Vec<u8>,
    jobs: HashSet<String>,
    seq: u64,
    /// The child marks each job's start and end on its stderr (see `JOB_MARKER`).
    pub(super) marks_jobs: bool,
    served: usize,
    /// Set once the child is reaped (here, or by its watcher: see [`Watch`]).
    reaped: bool,
    watch: Arc<Watch>,
    watcher: Option<Watcher>,
    labels: ChildLabels,
    max_message: usize,
    max_jobs: Option<usize>,
    spec: Arc<ChildSpec>,
}

/// One exchange with a child: its answer — and, as a value, whether the worker must start a
/// new child before its next job (`rebuild`: why) — or the news that the child died before it
/// took the job (so it never started: safe to send again).
pub(crate) enum Exchange {
    Answered {
        answer: Result<(), LeaseError>,
        rebuild: Option<&'static str>,
    },
    Undelivered,
}

impl Exchange {
    fn answer(answer: Result<(), LeaseError>) -> Self {
        Exchange::Answered {
            answer,
            rebuild: None,
        }
    }
}

/// "exited with code 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe(status: ExitStatus) -> String {
    describe_end(status.code(), status.signal())
}

impl Child {
    /// Whether the child is gone (died while idle, or before it took the last job): the next
    /// job cannot reach it.
    pub(crate) fn is_dead(&self) -> bool {
        self.reaped || self.has_exited()
    }

    /// Whether the child has served its `max_jobs_per_child`.
    pub(crate) fn is_spent(&self) -> bool {
        exchange::spent(self.max_jobs, self.served)
    }

    /// How many jobs the next call may send (see [`exchange::jobs_left`]).
    pub(crate) fn jobs_left(&self) -> Option<usize> {
        exchange::jobs_left(self.max_jobs, self.served)
    }

    /// Reaps this dead child, counting and logging how it ended unless its watcher did.
    pub(crate) fn reap_dead(&mut self) {
        let (status, fresh) = self.kill();
        if fresh {
            self.watch.counters().ended(self.watch.death());
            let l = &self.labels;
            tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, status = %status, "worker child died between jobs; starting a new one");
        }
    }

    /// The labels of this child, for the caller's logs.
    pub(crate) fn labels(&self) -> &ChildLabels {
        &self.labels
    }

    /// How this child was started (and a new one is).
    pub(crate) fn spec(&self) -> &Arc<ChildSpec> {
        &self.spec
    }

    /// Runs job `name` in this child — `count` of them in one frame if given: `encode` appends
    /// the input(s) to the frame, `decode` reads the output(s) from the answer. One exchange:
    /// a child that dies before it has taken the whole frame answers `Undelivered`, and the
    /// caller (the slot) sends the job to a new child.
    pub(crate) fn exchange(
        &mut self,
        name: &str,
        count: Option<u32>,
        encode: &mut dyn FnMut(Vec<u8>, usize) -> postcard::Result<Vec<u8>>,
        decode: &mut dyn FnMut(&[u8]) -> Result<usize, &'static str>,
    ) -> Exchange {
        // From here until this returns, the child's end is ours to handle, not its watcher's.
        let watch = Arc::clone(&self.watch);
        let busy = Busy::enter(&watch);
        if busy.is_none() {
            // Its watcher reaped it just now, before the job reached it.
            return Exchange::Undelivered;
        }
        if !self.jobs.contains(name) {
            let mut known: Vec<&str> = self.jobs.iter().map(String::as_str).collect();
            known.sort_unstable();
            return Exchange::answer(Err(LeaseError::ProcessJob(format!(
                "job {name:?} is not registered in the worker program's process::init \
                 (it knows {known:?})"
            ))));
        }
        self.seq += 1;
        let seq = self.seq;
        // The child's log lines for this job are recorded under the span current here (only
        // a child that marks its jobs tells which lines are whose).
        if self.marks_jobs {
            self.watch.spans.sent(seq, tracing::Span::current());
        }
        let header = match count {
            None => ToChild::Run {
                seq,
                name: name.to_owned(),
            },
            Some(count) => ToChild::RunMany {
                seq,
                name: name.to_owned(),
                count,
            },
        };
        let frame = match frame_with_body(
            &header,
            encode,
            std::mem::take(&mut self.out),
            self.max_message,
        ) {
            Ok(frame) => frame,
            Err(e) => {
                let text = format!("job {name:?}: its input: {e}");
                return Exchange::answer(Err(LeaseError::ProcessJob(text)));
            }
        };
        let len = frame.len();
        let sent = self.send(&frame);
        self.out = frame;
        self.out.clear();
        trim(&mut self.out);
        if let Err((waited, sent)) = sent {
            let taken = sent == len && self.pipe_drained();
            return self.failed(name, waited, taken);
        }
        // One answer frame — or, for `count` jobs, `DoneMany` frames until every job has its
        // outcome (the child sends them as they finish).
        let mut outcomes = 0_usize;
        let (answer, end) = loop {
            let (header, body, end) = match self.wait_frame(None) {
                Waited::Frame { header, body, end } => (header, body, end),
                // A child that died without taking the whole frame never started the job.
                other => {
                    let taken = outcomes > 0 || self.pipe_drained();
                    return self.failed(name, other, taken);
                }
            };
            let answer = match exchange::read_frame(header, seq, count.is_some()) {
                exchange::Frame::Output => match decode(&self.buf[body]) {
                    Ok(_) => Ok(()),
                    Err(what) => return self.broken(what),
                },
                exchange::Frame::Outcomes => {
                    match decode(&self.buf[body]) {
                        Ok(n) => outcomes += n,
                        Err(what) => return self.broken(what),
                    }
                    if count.is_some_and(|n| !exchange::batch_complete(n, outcomes)) {
                        self.buf.drain(..end);
                        continue;
                    }
                    Ok(())
                }
                exchange::Frame::Answer(error) => Err(error),
                exchange::Frame::Foreign(why) => return self.broken(&why),
            };
            break (answer, end);
        };
        self.buf.drain(..end);
        if !self.buf.is_empty() {
            // Nothing may follow an answer: whatever did was not written by our protocol.
            return self.broken("bytes after an answer");
        }
        trim(&mut self.buf);
        self.served += count.map_or(1, |n| n as usize);
        let mut rebuild = None;
        if self.is_spent() {
            self.watch.counters().ended(ChildEnd::Recycled);
            rebuild = Some("max_jobs_per_child reached");
        }
        drop(busy);
        Exchange::Answered { answer, rebuild }
    }

    /// Follows the verdict on a wait that gave no answer; `taken`: the child took the whole
    /// frame from its pipe (so the job may have started).
    fn failed(&mut self, name: &str, waited: Waited, taken: bool) -> Exchange {
        let verdict = exchange::no_answer(waited, taken);
        let rebuild = exchange::rebuild_after(&verdict);
        let error = match verdict {
            NoAnswer::Stop(reason) => self.stop(name, reason),
            NoAnswer::Broken(why) => return self.broken(&why),
            NoAnswer::Undelivered => {
                // Dead before it had the job: counted and reaped here; the caller replaces it.
                let (status, fresh) = self.kill();
                if fresh {
                    self.watch.counters().ended(self.watch.death());
                }
                let l = &self.labels;
                tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, job = name, status = %status, "worker child died before it took a job; sending it to a new one");
                return Exchange::Undelivered;
            }
            NoAnswer::Lost => self.lost(&format!("it died running job {name:?}")),
        };
        Exchange::Answered {
            answer: Err(error),
            rebuild,
        }
    }

    /// The child sent something it must not: kill it, answer `WorkerLost`, replace it.
    fn broken(&mut self, why: &str) -> Exchange {
        let (status, fresh) = self.kill();
        if fresh {
            self.watch.counters().ended(ChildEnd::Crashed);
        }
        let l = &self.labels;
        tracing::error!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, why, status = %status, "malformed frame from a worker child; killed it");
        Exchange::Answered {
            answer: Err(LeaseError::WorkerLost),
            rebuild: Some(exchange::BROKEN),
        }
    }

    /// The child died (or stopped talking): reap it, log how, answer `WorkerLost`, replace it.
    fn lost(&mut self, what: &str) -> LeaseError {
        let (status, fresh) = self.kill();
        if fresh {
            self.watch.counters().ended(self.watch.death());
        }
        let l = &self.labels;
        tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, status = %status, "worker child lost: {what}; starting a new one");
        LeaseError::WorkerLost
    }

    /// The job must stop (hard expiry, an overdue stop): kill the child and its group.
    fn stop(&mut self, name: &str, reason: LeaseError) -> LeaseError {
        let (status, fresh) = self.kill();
        if fresh {
            self.watch.counters().ended(ChildEnd::Killed);
        }
        let l = &self.labels;
        tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, job = name, reason = %reason, status = %status, "killed a worker child running a job that had to stop");
        reason
    }

    /// Kills the child's process group and reaps the child; says how it ended, and whether
    /// this call reaped it (`false`: it was reaped before, here or by its watcher).
    pub(super) fn kill(&mut self) -> (String, bool) {
        let mut life = self.watch.life();
        if let Some(status) = &life.reaped {
            self.reaped = true;
            self.to = None;
            return (status.clone(), false);
        }
        // Not yet reaped, so the pid (and group id) is still ours, even if the child died. The
        // pid too: a child may have left its group.
        if let Some(pid) = Pid::from_raw(self.labels.pid as i32) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.process.kill();
        let status = match self.process.wait() {
            Ok(status) => describe(status),
            Err(e) => format!("could not be reaped: {e}"),
        };
        life.reaped = Some(status.clone());
        drop(life);
        self.reaped = true;
        self.to = None;
        (status, true)
    }

    /// Ends the child: closes its input (it exits on its own), kills it if it does not within
    /// a short grace, kills what is left of its process group (a job's own subprocesses), reaps
    /// it, and ends its log thread.
    pub(crate) fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        // Its end is ours now, not a death for its watcher to report.
        self.watch.life().ending = true;
        if !self.reaped {
            self.to = None;
            let deadline = Instant::now() + END_GRACE;
            while !self.has_exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = self.kill();
        }
        if let Some(watcher) = self.watcher.take() {
            // It forwards what is left on stderr, then ends, even if a process outside the
            // group still holds the pipe open.
            watcher.stop();
        }
    }
}

/// Marks the child busy for the length of one exchange (see `watcher.rs`); `None` if it was
/// reaped already.
struct Busy<'a>(&'a Watch);

impl<'a> Busy<'a> {
    fn enter(watch: &'a Watch) -> Option<Busy<'a>> {
        let mut life = watch.life();
        if life.reaped.is_some() {
            return None;
        }
        life.busy = true;
        Some(Busy(watch))
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.life().busy = false;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.finish();
    }
}
