//! Starting a child: the command, its pipes and watcher, and the handshake that proves it is a
//! leasepool worker of this parent.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use rustix::fs::{fcntl_setfl, OFlags};

use super::super::super::logs::ChildLabels;
use super::super::super::protocol::{
    FromChild, ENV_LOG_LEVEL, ENV_MAX_MESSAGE, ENV_MEMORY_LIMIT, ENV_PARENT, ENV_TOKEN, MAGIC,
    PROTOCOL_VERSION,
};
use super::super::exchange::Waited;
use super::super::watcher::{Watch, Watcher};
use super::{Child, ChildSpec};

/// The pipe size asked for (Linux): 1 MiB, the default `pipe-max-size`.
#[cfg(any(target_os = "linux", target_os = "android"))]
const PIPE_SIZE: usize = 1 << 20;

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

fn nonblocking(fd: impl std::os::fd::AsFd) -> Result<(), String> {
    fcntl_setfl(fd, OFlags::NONBLOCK).map_err(|e| format!("cannot make a pipe non-blocking: {e}"))
}

impl Child {
    /// Starts a child and waits for its handshake. The error text says what went wrong and
    /// becomes the worker state factory's error (logged, retried with backoff, and carried by
    /// `NoHealthyPool`).
    pub(crate) fn spawn(spec: &Arc<ChildSpec>) -> Result<Child, String> {
        let token = token();
        let level = tracing::level_filters::LevelFilter::current();
        // The child marks its jobs on stderr when it forwards events or has a memory limit
        // (the same rule as the child's, in `child/serve.rs`).
        let marks_jobs =
            spec.memory_limit.is_some() || level != tracing::level_filters::LevelFilter::OFF;
        let mut cmd = Command::new(&spec.program);
        cmd.env(ENV_TOKEN, &token)
            .env(ENV_PARENT, std::process::id().to_string())
            .env(ENV_MAX_MESSAGE, spec.max_message.to_string())
            .env(ENV_LOG_LEVEL, level.to_string())
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
            marks_jobs,
            served: 0,
            reaped: false,
            watch: Watch::new(
                labels.clone(),
                Arc::clone(&spec.counters),
                spec.memory_limit.is_some(),
            ),
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

    pub(super) fn handshake(
        &mut self,
        token: &str,
        deadline: Option<Instant>,
    ) -> Result<(), String> {
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
}
