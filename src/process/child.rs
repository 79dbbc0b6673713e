//! The parent side of one worker child: start it and check its handshake, send it jobs, read
//! its answers while watching for a reason to kill it, end it.
//!
//! Only the worker thread that owns a `Child` signals or reaps it, so no pid is signalled after
//! the kernel reused it: until this thread reaps it, a dead child stays a zombie holding its pid.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{kill_process_group, Pid, Signal};

use super::logs::{forward, ChildLabels};
use super::protocol::{
    encode, parse, FromChild, Parsed, ToChild, ENV_LOG_LEVEL, ENV_MAX_MESSAGE, ENV_MEMORY_LIMIT,
    ENV_PARENT, ENV_TOKEN, MAGIC, PROTOCOL_VERSION,
};
use crate::LeaseError;

/// How often a worker waiting on its child looks for a reason to kill it (hard expiry, an
/// overdue stop). The longest a runaway job outlives its lease, beyond the host's own timer.
const WATCH_EVERY: Duration = Duration::from_millis(5);
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
}

/// One running worker child.
pub(crate) struct Child {
    process: std::process::Child,
    to: Option<ChildStdin>,
    from: ChildStdout,
    buf: Vec<u8>,
    jobs: HashSet<String>,
    served: usize,
    reaped: bool,
    log: Option<JoinHandle<()>>,
    labels: ChildLabels,
    max_message: usize,
    max_jobs: Option<usize>,
}

/// What waiting for a frame gave.
enum Waited {
    Frame(FromChild),
    /// The child closed its end: it died (or is dying).
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

/// The worker thread's name, and the pool part of it (`{prefix}-{pool}-{n}`).
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

/// "exited with code 3", "killed by signal 9 (SIGKILL)".
pub(crate) fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
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
            format!("killed by signal {sig}{name}")
        }
        None => format!("ended ({status})"),
    }
}

impl Child {
    /// Starts a child and waits for its handshake. The error text says what went wrong and
    /// becomes the worker state factory's error (logged, retried with backoff, and carried by
    /// `NoHealthyPool`).
    pub(crate) fn spawn(spec: &ChildSpec) -> Result<Child, String> {
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
        let log_labels = labels.clone();
        let log = std::thread::Builder::new()
            .name(format!("{}-log", labels.worker))
            .spawn(move || forward(stderr, &log_labels));
        let mut child = Child {
            process,
            to: Some(to),
            from,
            buf: Vec::new(),
            jobs: HashSet::new(),
            served: 0,
            reaped: false,
            log: None,
            labels,
            max_message: spec.max_message,
            max_jobs: spec.max_jobs_per_child,
        };
        match log {
            Ok(handle) => child.log = Some(handle),
            Err(e) => {
                child.kill();
                return Err(format!(
                    "cannot spawn the log thread of a worker child: {e}"
                ));
            }
        }
        let started = Instant::now();
        match child.handshake(&token, started.checked_add(spec.start_timeout)) {
            Ok(()) => {
                tracing::debug!(target: "leasepool::process", manager = %child.labels.manager, pool = %child.labels.pool, worker = %child.labels.worker, pid, took = ?started.elapsed(), "worker child started");
                Ok(child)
            }
            Err(why) => {
                child.kill();
                let status = child.process.try_wait().ok().flatten();
                let status = status.map(|s| format!(" (it {})", describe(s)));
                Err(format!(
                    "worker program {program} (pid {pid}) failed its start: {why}{}",
                    status.unwrap_or_default()
                ))
            }
        }
    }

    fn handshake(&mut self, token: &str, deadline: Option<Instant>) -> Result<(), String> {
        // The magic first: a program that prints anything else is no leasepool worker.
        while self.buf.len() < MAGIC.len() {
            match self.fill(deadline, false) {
                Ok(true) => {}
                Ok(false) => {
                    return Err("it ended before its handshake; does its main call \
                         leasepool::process::init first?"
                        .to_owned())
                }
                Err(Waited::TimedOut) => {
                    return Err("no handshake in time; does its main call \
                         leasepool::process::init first?"
                        .to_owned())
                }
                Err(_) => return Err("reading its handshake failed".to_owned()),
            }
        }
        if self.buf[..MAGIC.len()] != MAGIC {
            return Err(
                "it answered something other than a leasepool handshake; does its \
                 main call leasepool::process::init first (and print nothing before)?"
                    .to_owned(),
            );
        }
        self.buf.drain(..MAGIC.len());
        match self.wait_frame(deadline, false) {
            Waited::Frame(FromChild::Hello {
                protocol,
                token: theirs,
                pid,
                jobs,
            }) => {
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
            Waited::Frame(FromChild::StartFailed(why)) => Err(why),
            Waited::Frame(other) => Err(format!("unexpected first message {other:?}")),
            Waited::Malformed(why) => Err(why),
            Waited::Ended => Err("it ended during its handshake".to_owned()),
            Waited::TimedOut => Err("no handshake in time".to_owned()),
            Waited::Stop(e) => Err(e.to_string()),
        }
    }

    /// Runs job `name` on `input` in this child and returns its encoded output.
    pub(crate) fn call(&mut self, name: &str, input: Vec<u8>) -> Result<Vec<u8>, LeaseError> {
        if self.reaped {
            leasepool_actors::request_state_rebuild("its worker child had ended");
            return Err(LeaseError::WorkerLost);
        }
        if !self.jobs.contains(name) {
            let mut known: Vec<&str> = self.jobs.iter().map(String::as_str).collect();
            known.sort_unstable();
            return Err(LeaseError::ProcessJob(format!(
                "job {name:?} is not registered in the worker program's process::init \
                 (it knows {known:?})"
            )));
        }
        let frame = encode(
            &ToChild::Run {
                name: name.to_owned(),
                input,
            },
            self.max_message,
        )
        .map_err(|e| LeaseError::ProcessJob(format!("job {name:?}: {e}")))?;
        let sent = self.to.as_mut().map(|to| to.write_all(&frame));
        drop(frame);
        if !matches!(sent, Some(Ok(()))) {
            return Err(self.lost(&format!("it stopped reading while job {name:?} was sent")));
        }
        let answer = match self.wait_frame(None, true) {
            Waited::Frame(FromChild::Done(bytes)) => Ok(bytes),
            Waited::Frame(FromChild::Panicked(message)) => Err(LeaseError::Panicked(message)),
            Waited::Frame(FromChild::Failed(why)) => return Err(LeaseError::ProcessJob(why)),
            Waited::Frame(other) => {
                return Err(self.broken(&format!("unexpected message {other:?}")))
            }
            Waited::Malformed(why) => return Err(self.broken(&why)),
            Waited::Ended | Waited::TimedOut => {
                return Err(self.lost(&format!("it died running job {name:?}")))
            }
            Waited::Stop(reason) => return Err(self.stop(name, reason)),
        };
        self.served += 1;
        if self.max_jobs.is_some_and(|n| self.served >= n) {
            leasepool_actors::request_state_rebuild("max_jobs_per_child reached");
        }
        answer
    }

    /// The child sent something it must not: kill it, answer `WorkerLost`, replace it.
    fn broken(&mut self, why: &str) -> LeaseError {
        let l = &self.labels;
        tracing::error!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, why, "malformed frame from a worker child; killing it");
        self.kill();
        leasepool_actors::request_state_rebuild("its worker child sent a malformed frame");
        LeaseError::WorkerLost
    }

    /// The child died (or stopped talking): reap it, log how, answer `WorkerLost`, replace it.
    fn lost(&mut self, what: &str) -> LeaseError {
        let status = self.kill();
        let l = &self.labels;
        tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, status = %status, "worker child lost: {what}; starting a new one");
        leasepool_actors::request_state_rebuild("its worker child died");
        LeaseError::WorkerLost
    }

    /// The job must stop (hard expiry, an overdue stop): kill the child and its group.
    fn stop(&mut self, name: &str, reason: LeaseError) -> LeaseError {
        let status = self.kill();
        let l = &self.labels;
        tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, pid = l.pid, job = name, reason = %reason, status = %status, "killed a worker child running a job that had to stop");
        if reason != LeaseError::Stopped {
            leasepool_actors::request_state_rebuild("its worker child was killed");
        }
        reason
    }

    /// Reads until a whole frame is buffered.
    fn wait_frame(&mut self, deadline: Option<Instant>, watch_job: bool) -> Waited {
        loop {
            match parse(&self.buf, self.max_message) {
                Parsed::Frame { start, end } => {
                    let decoded = postcard::from_bytes::<FromChild>(&self.buf[start..end]);
                    self.buf.drain(..end);
                    return match decoded {
                        Ok(frame) => Waited::Frame(frame),
                        Err(e) => Waited::Malformed(format!("undecodable frame: {e}")),
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
            match self.fill(deadline, watch_job) {
                Ok(true) => {}
                Ok(false) => return Waited::Ended,
                Err(waited) => return waited,
            }
        }
    }

    /// Waits for bytes from the child and appends them: `Ok(false)` at its end of output.
    /// While `watch_job`, gives up as soon as the running job must stop.
    fn fill(&mut self, deadline: Option<Instant>, watch_job: bool) -> Result<bool, Waited> {
        let every = Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(WATCH_EVERY.subsec_nanos()),
        };
        loop {
            if watch_job {
                if let Some(reason) = leasepool_actors::job_stop_reason() {
                    return Err(Waited::Stop(reason));
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Waited::TimedOut);
            }
            let mut fds = [PollFd::new(&self.from, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&every)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return Ok(false),
            }
            let mut chunk = [0_u8; 64 * 1024];
            match self.from.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(false),
            }
        }
    }

    /// Kills the child's process group and reaps the child; how it ended.
    fn kill(&mut self) -> String {
        if self.reaped {
            return "already reaped".to_owned();
        }
        // Not yet reaped, so the pid (and group id) is still ours, even if the child died.
        if let Some(pid) = Pid::from_raw(self.labels.pid as i32) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.process.kill();
        let status = self.process.wait();
        self.reaped = true;
        self.to = None;
        match status {
            Ok(status) => describe(status),
            Err(e) => format!("not reaped: {e}"),
        }
    }

    /// Ends the child: closes its input (it exits on its own), kills it if it does not within
    /// a short grace, reaps it, and joins its log thread.
    pub(crate) fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if !self.reaped {
            self.to = None;
            let deadline = Instant::now() + END_GRACE;
            loop {
                match self.process.try_wait() {
                    Ok(Some(_)) => {
                        self.reaped = true;
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    _ => {
                        self.kill();
                        break;
                    }
                }
            }
        }
        if let Some(log) = self.log.take() {
            // Its stderr closes with the group; give it a moment, never wait for good.
            let deadline = Instant::now() + END_GRACE;
            while !log.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if log.is_finished() {
                let _ = log.join();
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.finish();
    }
}
