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

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{fcntl_setfl, OFlags};
use rustix::process::{kill_process_group, Pid, Signal, WaitId, WaitIdOptions};

use super::counters::{ChildCounters, ChildEnd};
use super::logs::ChildLabels;
use super::protocol::{
    frame_with_body, parse, split, trim, FromChild, Parsed, ToChild, ENV_LOG_LEVEL,
    ENV_MAX_MESSAGE, ENV_MEMORY_LIMIT, ENV_PARENT, ENV_TOKEN, MAGIC, PROTOCOL_VERSION,
};
use super::watcher::{describe as describe_end, Watch, Watcher};
use crate::LeaseError;

/// How often a worker waiting on its child looks for a reason to kill it (hard expiry, an
/// overdue stop, a child that died): the longest a runaway job outlives its lease, beyond the
/// host's own timer.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// The pipe size asked for (Linux): 1 MiB, the default `pipe-max-size`.
#[cfg(any(target_os = "linux", target_os = "android"))]
const PIPE_SIZE: usize = 1 << 20;
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

/// What waiting gave.
/// One exchange with a child: its answer, or the news that the child died before it took the
/// job (so it never started: safe to send again).
enum Exchange {
    Answered(Result<(), LeaseError>),
    Undelivered,
}

enum Waited {
    /// A whole frame: its header; its body spans `body` of the buffer, which holds `end` bytes
    /// of it.
    Frame {
        header: FromChild,
        body: std::ops::Range<usize>,
        end: usize,
    },
    /// The child closed its end or died.
    Ended,
    Malformed(String),
    /// The running job must stop now, for this reason.
    Stop(LeaseError),
    TimedOut,
}

fn token() -> String {
    // Two independently keyed hashes of the pid and the time: unguessable enough to tell our
    // own child from a program that happens to answer.
    let seed = (
        std::process::id(),
        Instant::now(),
        std::time::SystemTime::now(),
    );
    let a = RandomState::new().hash_one(seed);
    let b = RandomState::new().hash_one(a);
    format!("{a:016x}{b:016x}")
}

/// The worker thread's name, and its pool (`{prefix}-{pool}-{n}` → `pool-{pool}`).
fn worker_labels(manager: &str) -> (String, String) {
    let worker = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned();
    let pool = worker
        .strip_prefix(manager)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.rsplit_once('-'))
        .map_or_else(String::new, |(pool, _)| format!("pool-{pool}"));
    (worker, pool)
}

/// "exited with code 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe(status: ExitStatus) -> String {
    describe_end(status.code(), status.signal())
}

fn nonblocking(fd: impl std::os::fd::AsFd) -> Result<(), String> {
    fcntl_setfl(fd, OFlags::NONBLOCK).map_err(|e| format!("cannot make a pipe non-blocking: {e}"))
}

impl Child {
    /// Starts a child and waits for its handshake. The error text says what went wrong and
    /// becomes the worker state factory's error (logged, retried with backoff, and carried by
    /// `NoHealthyPool`).
    pub(crate) fn spawn(spec: &Arc<ChildSpec>) -> Result<Child, String> {
        let token = token();
        let mut cmd = Command::new(&spec.program);
        cmd.env(ENV_TOKEN, &token)
            .env(ENV_PARENT, std::process::id().to_string())
            .env(ENV_MAX_MESSAGE, spec.max_message.to_string())
            .env(
                ENV_LOG_LEVEL,
                tracing::level_filters::LevelFilter::current().to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a kill reaches whatever the job started too.
            .process_group(0);
        if let Some(bytes) = spec.memory_limit {
            cmd.env(ENV_MEMORY_LIMIT, bytes.to_string());
        }
        let program = spec.program.display();
        let mut process = cmd
            .spawn()
            .map_err(|e| format!("cannot start the worker program {program}: {e}"))?;
        let pid = process.id();
        let (worker, pool) = worker_labels(&spec.manager);
        let labels = ChildLabels {
            manager: spec.manager.clone(),
            pool,
            worker,
            pid,
        };
        let (Some(to), Some(from), Some(stderr)) = (
            process.stdin.take(),
            process.stdout.take(),
            process.stderr.take(),
        ) else {
            let _ = process.kill();
            let _ = process.wait();
            return Err("the worker program's pipes are missing".to_owned());
        };
        let mut child = Child {
            process,
            to: Some(to),
            from,
            buf: Vec::new(),
            out: Vec::new(),
            jobs: HashSet::new(),
            seq: 0,
            served: 0,
            reaped: false,
            watch: Watch::new(labels.clone(), Arc::clone(&spec.counters)),
            watcher: None,
            labels,
            max_message: spec.max_message,
            max_jobs: spec.max_jobs_per_child,
            spec: Arc::clone(spec),
        };
        let ready = (|| {
            if let Some(to) = &child.to {
                nonblocking(to)?;
            }
            nonblocking(&child.from)?;
            nonblocking(&stderr)?;
            // Larger pipes: a MiB-sized job crosses in a few wake-ups, not sixteen (best effort:
            // the system's pipe-max-size may refuse).
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                let size = spec.max_message.clamp(64 * 1024, PIPE_SIZE);
                if let Some(to) = &child.to {
                    let _ = rustix::pipe::fcntl_setpipe_size(to, size);
                }
                let _ = rustix::pipe::fcntl_setpipe_size(&child.from, size);
            }
            // The watcher forwards stderr and notices a death between jobs (it polls a
            // duplicate of the protocol pipe for its hang-up).
            let hangup = rustix::io::fcntl_dupfd_cloexec(&child.from, 3)
                .map_err(|e| format!("cannot watch a worker child: {e}"))?;
            let watcher = Watcher::spawn(
                stderr,
                hangup,
                Arc::clone(&child.watch),
                format!("{}-log", child.labels.worker),
            )?;
            child.watcher = Some(watcher);
            Ok::<(), String>(())
        })();
        if let Err(why) = ready {
            let _ = child.kill();
            return Err(why);
        }
        let started = Instant::now();
        match child.handshake(&token, started.checked_add(spec.start_timeout)) {
            Ok(()) => {
                let l = &child.labels;
                tracing::debug!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid, took = ?started.elapsed(), "worker child started");
                spec.counters.started();
                child.watch.started();
                Ok(child)
            }
            Err(why) => {
                let (status, _) = child.kill();
                Err(format!(
                    "worker program {program} (pid {pid}) failed its start: {why} (the child \
                     {status}; its output is in the log, target leasepool::process::output)"
                ))
            }
        }
    }

    fn handshake(&mut self, token: &str, deadline: Option<Instant>) -> Result<(), String> {
        const NOT_A_WORKER: &str = "does its main call leasepool::process::init first, and \
             does a wrapper script exec the program?";
        // The magic first: a program that prints anything else is no leasepool worker.
        while self.buf.len() < MAGIC.len() {
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => return Err(format!("it ended before its handshake; {NOT_A_WORKER}")),
                Err(Waited::TimedOut) => {
                    return Err(format!("no handshake in time; {NOT_A_WORKER}"))
                }
                Err(Waited::Stop(_)) => return Err("the manager stopped".to_owned()),
                Err(_) => return Err("reading its handshake failed".to_owned()),
            }
        }
        if self.buf[..MAGIC.len()] != MAGIC {
            return Err(format!(
                "it answered something other than a leasepool handshake; {NOT_A_WORKER}"
            ));
        }
        self.buf.drain(..MAGIC.len());
        let (header, end) = match self.wait_frame(deadline) {
            Waited::Frame { header, end, .. } => (header, end),
            Waited::Malformed(why) => return Err(why),
            Waited::Ended => return Err("it ended during its handshake".to_owned()),
            Waited::TimedOut => return Err("no handshake in time".to_owned()),
            Waited::Stop(_) => return Err("the manager stopped".to_owned()),
        };
        self.buf.drain(..end);
        match header {
            FromChild::Hello {
                protocol,
                token: theirs,
                pid,
                jobs,
            } => {
                if protocol != PROTOCOL_VERSION {
                    return Err(format!(
                        "it speaks protocol {protocol}, this library {PROTOCOL_VERSION} \
                         (build the worker program with the same leasepool)"
                    ));
                }
                if theirs != token || pid != self.process.id() {
                    return Err("its handshake carries the wrong token or pid".to_owned());
                }
                self.jobs = jobs.into_iter().collect();
                Ok(())
            }
            FromChild::StartFailed(why) => Err(why),
            other => Err(format!("unexpected first message {other:?}")),
        }
    }

    /// Runs job `name` in this child — `count` of them in one frame if given: `encode` appends
    /// the input(s) to the frame, `decode` reads the output(s) from the answer. A child found
    /// dead, or that dies before it has taken the whole frame from its pipe (so the job cannot
    /// have started), is replaced and the job sent again — once; then it is `NeverRan`.
    pub(crate) fn call(
        &mut self,
        name: &str,
        count: Option<u32>,
        encode: &mut dyn FnMut(Vec<u8>, usize) -> postcard::Result<Vec<u8>>,
        decode: &mut dyn FnMut(&[u8]) -> Result<usize, &'static str>,
    ) -> Result<(), LeaseError> {
        for _ in 0..2 {
            if self.reaped || self.has_exited() {
                // It died while idle (killed from outside, or it exited after its last
                // answer), or before it took the last job: this job has not reached it.
                self.replace_dead()?;
            } else if self.max_jobs.is_some_and(|n| self.served >= n) {
                // Spent (`max_jobs_per_child`, counted when it was reached) and asked for more
                // within the same engine job — a grinder part of several frames.
                self.replace_spent()?;
            }
            match self.exchange(name, count, encode, decode) {
                Exchange::Answered(answer) => return answer,
                Exchange::Undelivered => {}
            }
        }
        leasepool_actors::request_state_rebuild("its worker children died before taking a job");
        Err(LeaseError::NeverRan)
    }

    /// Replaces this dead child with a new one (counting how the old one ended, unless its
    /// watcher did). `NeverRan` if no new one starts.
    fn replace_dead(&mut self) -> Result<(), LeaseError> {
        let (status, fresh) = self.kill();
        let l = &self.labels;
        if fresh {
            // Not reaped by its watcher (nor by a failed exchange): counted and logged here.
            self.watch.counters().ended(self.watch.death());
            tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, status = %status, "worker child died between jobs; starting a new one");
        }
        match Child::spawn(&self.spec) {
            Ok(fresh) => {
                let old = std::mem::replace(self, fresh);
                old.end();
                Ok(())
            }
            Err(why) => {
                tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, error = %why, "cannot replace a worker child");
                leasepool_actors::request_state_rebuild("its worker child had ended");
                // The job has not reached any child.
                Err(LeaseError::NeverRan)
            }
        }
    }

    /// Replaces this spent child with a new one.
    fn replace_spent(&mut self) -> Result<(), LeaseError> {
        match Child::spawn(&self.spec) {
            Ok(fresh) => {
                let old = std::mem::replace(self, fresh);
                old.end();
                Ok(())
            }
            Err(why) => {
                let l = &self.labels;
                tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, error = %why, "cannot replace a worker child");
                Err(LeaseError::NeverRan)
            }
        }
    }

    /// How many jobs the next call may send (`max_jobs_per_child`): what this child may still
    /// run, or — spent, it is replaced first — what a new one may. `None`: no limit.
    pub(crate) fn jobs_left(&self) -> Option<usize> {
        self.max_jobs.map(|n| match n.saturating_sub(self.served) {
            0 => n,
            left => left,
        })
    }

    /// One exchange of job `name` with this child (see [`call`](Self::call)).
    fn exchange(
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
            return Exchange::Answered(Err(LeaseError::ProcessJob(format!(
                "job {name:?} is not registered in the worker program's process::init \
                 (it knows {known:?})"
            ))));
        }
        self.seq += 1;
        let seq = self.seq;
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
                return Exchange::Answered(Err(LeaseError::ProcessJob(text)));
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
            let answer = match header {
                FromChild::Done { seq: s } if s == seq && count.is_none() => {
                    if let Err(what) = decode(&self.buf[body]) {
                        return Exchange::Answered(Err(self.broken(what)));
                    }
                    Ok(())
                }
                FromChild::DoneMany { seq: s } if s == seq && count.is_some() => {
                    match decode(&self.buf[body]) {
                        Ok(n) => outcomes += n,
                        Err(what) => return Exchange::Answered(Err(self.broken(what))),
                    }
                    if count.is_some_and(|n| outcomes < n as usize) {
                        self.buf.drain(..end);
                        continue;
                    }
                    Ok(())
                }
                FromChild::Panicked { seq: s, message } if s == seq => {
                    Err(LeaseError::Panicked(message))
                }
                FromChild::Failed { seq: s, message } if s == seq => {
                    Err(LeaseError::ProcessJob(message))
                }
                other => {
                    let why = format!("an answer that is not job {seq}'s: {other:?}");
                    return Exchange::Answered(Err(self.broken(&why)));
                }
            };
            break (answer, end);
        };
        self.buf.drain(..end);
        if !self.buf.is_empty() {
            // Nothing may follow an answer: whatever did was not written by our protocol.
            return Exchange::Answered(Err(self.broken("bytes after an answer")));
        }
        trim(&mut self.buf);
        self.served += count.map_or(1, |n| n as usize);
        if self.max_jobs.is_some_and(|n| self.served >= n) {
            self.watch.counters().ended(ChildEnd::Recycled);
            leasepool_actors::request_state_rebuild("max_jobs_per_child reached");
        }
        drop(busy);
        Exchange::Answered(answer)
    }

    /// What a wait that gave no answer means for the job; `taken`: the child took the whole
    /// frame from its pipe (so the job may have started).
    fn failed(&mut self, name: &str, waited: Waited, taken: bool) -> Exchange {
        Exchange::Answered(Err(match waited {
            Waited::Stop(reason) => self.stop(name, reason),
            Waited::Malformed(why) => self.broken(&why),
            Waited::Ended | Waited::TimedOut | Waited::Frame { .. } if !taken => {
                // Dead before it had the job: counted and reaped here; the caller replaces it.
                let (status, fresh) = self.kill();
                if fresh {
                    self.watch.counters().ended(self.watch.death());
                }
                let l = &self.labels;
                tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, job = name, status = %status, "worker child died before it took a job; sending it to a new one");
                return Exchange::Undelivered;
            }
            Waited::Ended | Waited::TimedOut | Waited::Frame { .. } => {
                self.lost(&format!("it died running job {name:?}"))
            }
        }))
    }

    /// Whether the child took everything written to its pipe (unread bytes remain in the pipe
    /// after its reader died). If that cannot be told: yes (the job may have started).
    fn pipe_drained(&self) -> bool {
        self.to
            .as_ref()
            .is_none_or(|to| rustix::io::ioctl_fionread(to).map_or(true, |unread| unread == 0))
    }

    /// Writes `frame` without ever blocking for long: between partial writes, the job's stop
    /// reason and the child's life are checked. On failure: why, and how much was written.
    fn send(&mut self, frame: &[u8]) -> Result<(), (Waited, usize)> {
        let mut sent = 0;
        while sent < frame.len() {
            let Some(to) = self.to.as_mut() else {
                return Err((Waited::Ended, sent));
            };
            match to.write(&frame[sent..]) {
                Ok(0) => return Err((Waited::Ended, sent)),
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.watch().map_err(|w| (w, sent))?;
                    let Some(to) = self.to.as_ref() else {
                        return Err((Waited::Ended, sent));
                    };
                    let mut fds = [PollFd::new(to, PollFlags::OUT)];
                    let _ = rustix::event::poll(&mut fds, Some(&watch_every()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err((Waited::Ended, sent)),
            }
        }
        Ok(())
    }

    /// Checks, between two waits, whether the job must stop or the child died.
    fn watch(&mut self) -> Result<(), Waited> {
        if let Some(reason) = leasepool_actors::job_stop_reason() {
            return Err(Waited::Stop(reason));
        }
        if self.has_exited() {
            return Err(Waited::Ended);
        }
        Ok(())
    }

    /// Whether the child has exited — without reaping it (it stays a zombie, keeping its pid).
    fn has_exited(&self) -> bool {
        if self.reaped || self.watch.life().reaped.is_some() {
            return true;
        }
        let Some(pid) = Pid::from_raw(self.labels.pid as i32) else {
            return true;
        };
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        matches!(
            rustix::process::waitid(WaitId::Pid(pid), options),
            Ok(Some(_))
        )
    }

    /// The child sent something it must not: kill it, answer `WorkerLost`, replace it.
    fn broken(&mut self, why: &str) -> LeaseError {
        let (status, fresh) = self.kill();
        if fresh {
            self.watch.counters().ended(ChildEnd::Crashed);
        }
        let l = &self.labels;
        tracing::error!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, why, status = %status, "malformed frame from a worker child; killed it");
        leasepool_actors::request_state_rebuild("its worker child sent a malformed frame");
        LeaseError::WorkerLost
    }

    /// The child died (or stopped talking): reap it, log how, answer `WorkerLost`, replace it.
    fn lost(&mut self, what: &str) -> LeaseError {
        let (status, fresh) = self.kill();
        if fresh {
            self.watch.counters().ended(self.watch.death());
        }
        let l = &self.labels;
        tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, status = %status, "worker child lost: {what}; starting a new one");
        leasepool_actors::request_state_rebuild("its worker child died");
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
        if reason != LeaseError::Stopped {
            leasepool_actors::request_state_rebuild("its worker child was killed");
        }
        reason
    }

    /// Reads until a whole frame is buffered.
    fn wait_frame(&mut self, deadline: Option<Instant>) -> Waited {
        loop {
            match parse(&self.buf, self.max_message) {
                Parsed::Frame { start, end } => {
                    return match split::<FromChild>(&self.buf[start..end]) {
                        Ok((header, rest)) => Waited::Frame {
                            header,
                            body: end - rest.len()..end,
                            end,
                        },
                        Err(why) => Waited::Malformed(why),
                    };
                }
                Parsed::TooLong(n) => {
                    return Waited::Malformed(format!(
                        "a frame of {n} bytes, over max_message_bytes ({})",
                        self.max_message
                    ))
                }
                Parsed::Partial => {}
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => return Waited::Ended,
                Err(waited) => return waited,
            }
        }
    }

    /// Waits for bytes from the child and appends them: `Ok(false)` at its end of output.
    /// Gives up as soon as the job (or the starting worker) must stop, or the child died.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<bool, Waited> {
        loop {
            match self.read_some() {
                Ok(Some(true)) => return Ok(true),
                Ok(Some(false)) => return Ok(false),
                Ok(None) => {}
                Err(()) => return Ok(false),
            }
            if let Err(waited) = self.watch() {
                // It may have written its answer and exited between the read and the look.
                if matches!(waited, Waited::Ended) && self.read_some() == Ok(Some(true)) {
                    return Ok(true);
                }
                return Err(waited);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Waited::TimedOut);
            }
            let mut fds = [PollFd::new(&self.from, PollFlags::IN)];
            let _ = rustix::event::poll(&mut fds, Some(&watch_every()));
        }
    }

    /// One non-blocking read into the buffer: `Some(true)` bytes came, `Some(false)` end of
    /// output, `None` nothing yet.
    fn read_some(&mut self) -> Result<Option<bool>, ()> {
        // Room for the rest of the frame being read (its length is known once 4 bytes are in),
        // or a 64 KiB chunk.
        const CHUNK: usize = 64 * 1024;
        let rest = match parse(&self.buf, self.max_message) {
            Parsed::Partial if self.buf.len() >= 4 => {
                let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                (len as usize + 4).saturating_sub(self.buf.len()).max(1)
            }
            _ => CHUNK,
        };
        // Reserved once for the whole frame; read into the spare capacity (no zero-filling).
        self.buf.reserve(rest);
        loop {
            let have = self.buf.len();
            let result = (&mut self.from)
                .take(rest as u64)
                .read_to_end(&mut self.buf);
            let got = self.buf.len() - have;
            return match result {
                // Fewer bytes than asked and no error: the end of its output came after them.
                Ok(n) if n < rest && got == 0 => Ok(Some(false)),
                Ok(_) => Ok(Some(true)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    Ok((got > 0).then_some(true))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted && got == 0 => continue,
                Err(_) if got > 0 => Ok(Some(true)),
                Err(_) => Err(()),
            };
        }
    }

    /// Kills the child's process group and reaps the child; says how it ended, and whether
    /// this call reaped it (`false`: it was reaped before, here or by its watcher).
    fn kill(&mut self) -> (String, bool) {
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
        // A report of a failed allocation counts for the job that wrote it, not a later one.
        life.out_of_memory = false;
        Some(Busy(watch))
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.life().busy = false;
    }
}

fn watch_every() -> Timespec {
    Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(WATCH_EVERY.subsec_nanos()),
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.finish();
    }
}
