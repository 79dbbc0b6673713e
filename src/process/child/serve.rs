//! In the child: what [`init`](super::super::init) does in a worker child.
//!
//! 1. Take the protocol pipes off stdin/stdout (private descriptors), point stdin at
//!    `/dev/null` and stdout at stderr: a job's prints become log lines, never frames.
//! 2. Die with the parent: `PR_SET_PDEATHSIG` (Linux), and a parent already gone ends us now.
//! 3. Apply the memory limit (`RLIMIT_AS`), run the `on_child_start` hooks, forward `tracing`.
//! 4. Send the handshake, then serve one job at a time until the parent closes the pipe.

use std::fs::File;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use super::super::job::panic_text;
use super::super::logs::ChildSubscriber;
use super::super::protocol::DEFAULT_MAX_MESSAGE;
use super::super::protocol::{
    encode, fit, split, trim, FromChild, ToChild, ENV_LOG_LEVEL, ENV_MAX_MESSAGE, ENV_MEMORY_LIMIT,
    ENV_PARENT, ENV_TOKEN, JOB_END_MARKER, JOB_MARKER, MAGIC, PROTOCOL_VERSION,
};
use super::jobs::Jobs;
use super::run::RunOutcome;

static IN_CHILD: AtomicBool = AtomicBool::new(false);

/// Fault injection (feature `testing`): the running job's reply goes out malformed.
#[cfg(feature = "testing")]
pub(crate) static CORRUPT_REPLY: AtomicBool = AtomicBool::new(false);

pub(crate) fn in_child() -> bool {
    IN_CHILD.load(SeqCst)
}

/// Serves as a worker child if this process was started as one; returns otherwise.
pub(crate) fn serve_if_child(jobs: Jobs) {
    let Some(token) = std::env::var_os(ENV_TOKEN) else {
        return;
    };
    IN_CHILD.store(true, SeqCst);
    let token = token.to_string_lossy().into_owned();
    let setting = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let parent = setting(ENV_PARENT);
    let memory_limit = setting(ENV_MEMORY_LIMIT);
    let max_message = setting(ENV_MAX_MESSAGE)
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE);
    let log_level = std::env::var(ENV_LOG_LEVEL).unwrap_or_default();
    // Nothing this child starts (a job's own subprocess) is a worker.
    for name in [
        ENV_TOKEN,
        ENV_PARENT,
        ENV_MEMORY_LIMIT,
        ENV_MAX_MESSAGE,
        ENV_LOG_LEVEL,
    ] {
        std::env::remove_var(name);
    }
    let code = match run(jobs, &token, parent, memory_limit, max_message, &log_level) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("leasepool worker child {}: {e}", std::process::id());
            70
        }
    };
    std::process::exit(code);
}

fn run(
    jobs: Jobs,
    token: &str,
    parent: Option<u64>,
    memory_limit: Option<u64>,
    max_message: usize,
    log_level: &str,
) -> Result<(), String> {
    // Private, close-on-exec copies: nothing a job starts inherits the protocol pipes.
    let from_parent =
        rustix::io::fcntl_dupfd_cloexec(std::io::stdin(), 3).map_err(io("dup stdin"))?;
    let to_parent =
        rustix::io::fcntl_dupfd_cloexec(std::io::stdout(), 3).map_err(io("dup stdout"))?;
    let (mut from_parent, mut to_parent) = (File::from(from_parent), File::from(to_parent));
    let null = File::open("/dev/null").map_err(io("open /dev/null"))?;
    rustix::stdio::dup2_stdin(&null).map_err(io("stdin to /dev/null"))?;
    rustix::stdio::dup2_stdout(std::io::stderr()).map_err(io("stdout to stderr"))?;
    // Die with the parent. The signal fires when the parent *thread* that started us ends:
    // that is the worker thread that owns us, which ends us itself first.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(io("PR_SET_PDEATHSIG"))?;
    // A parent that died before the line above would never send the signal: look.
    let parent_alive = parent
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
        .is_none_or(|p| rustix::process::test_kill_process(p).is_ok());
    if !parent_alive {
        return Err("the parent is gone".to_owned());
    }
    if let Some(bytes) = memory_limit {
        let limit = rustix::process::Rlimit {
            current: Some(bytes),
            maximum: Some(bytes),
        };
        rustix::process::setrlimit(rustix::process::Resource::As, limit)
            .map_err(io("RLIMIT_AS"))?;
    }
    // The magic first, so that the parent reads what follows as our protocol.
    to_parent.write_all(&MAGIC).map_err(io("write to parent"))?;
    for hook in jobs.start_hooks() {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| hook())) {
            let text = format!("on_child_start panicked: {}", panic_text(payload.as_ref()));
            std::mem::forget(payload);
            let failed = FromChild::StartFailed(fit(text.clone(), max_message));
            send(&mut to_parent, &failed, max_message)?;
            return Err(text);
        }
    }
    // After the hooks: a subscriber a hook installed wins.
    ChildSubscriber::install(log_level);
    send(
        &mut to_parent,
        &FromChild::Hello {
            protocol: PROTOCOL_VERSION,
            token: token.to_owned(),
            pid: std::process::id(),
            jobs: jobs.names().map(str::to_owned).collect(),
        },
        max_message,
    )?;
    // Each job's start is marked on stderr when it tells the parent something: which job's
    // span the lines that follow belong to (when events are forwarded), and that an earlier
    // report of a failed allocation is not this job's (under a memory limit).
    let marks_jobs = memory_limit.is_some() || ChildSubscriber::forwards(log_level);
    // Both buffers are reused from job to job.
    let mut request = Vec::new();
    let mut reply = Vec::new();
    loop {
        if !read_frame(&mut from_parent, max_message, &mut request)? {
            return Ok(()); // The parent closed the pipe: we are done.
        }
        let (header, input) = split::<ToChild>(&request)?;
        let unknown = |name: &str| {
            RunOutcome::Failed(format!(
                "job {name:?} is not registered in this worker program's process::init"
            ))
        };
        if marks_jobs {
            // Best effort: a lost marker only makes a later death count as a crash, or this
            // job's log lines land in the previous job's span.
            let _ = writeln!(std::io::stderr(), "{JOB_MARKER}{}", header.seq());
        }
        let buf = std::mem::take(&mut reply);
        let (seq, outcome) = match header {
            ToChild::Run { seq, name } => match jobs.runner(&name) {
                Some(run) => (seq, run(seq, input, buf, max_message)),
                None => (seq, unknown(&name)),
            },
            ToChild::RunMany { seq, name, count } => match jobs.many_runner(&name) {
                Some(run) => {
                    let mut emit = |frame: &[u8]| {
                        to_parent
                            .write_all(frame)
                            .map_err(|e| format!("write to parent: {e}"))
                    };
                    (seq, run(seq, count, input, buf, max_message, &mut emit))
                }
                None => (seq, unknown(&name)),
            },
        };
        if marks_jobs {
            // Before the answer: once the parent has it, no more lines of this job follow.
            let _ = writeln!(std::io::stderr(), "{JOB_END_MARKER}{seq}");
        }
        #[cfg(feature = "testing")]
        if CORRUPT_REPLY.swap(false, SeqCst) {
            // A length prefix far over any cap, then garbage.
            write_raw(&mut to_parent, &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3])?;
            continue;
        }
        match outcome {
            RunOutcome::Done(frame) => {
                to_parent.write_all(&frame).map_err(io("write to parent"))?;
                reply = frame;
                reply.clear();
                trim(&mut reply);
            }
            RunOutcome::Panicked(message) => {
                let message = fit(message, max_message);
                send(
                    &mut to_parent,
                    &FromChild::Panicked { seq, message },
                    max_message,
                )?;
            }
            RunOutcome::Failed(message) => {
                let message = fit(message, max_message);
                send(
                    &mut to_parent,
                    &FromChild::Failed { seq, message },
                    max_message,
                )?;
            }
        }
        request.clear();
        trim(&mut request);
    }
}

/// Sends one frame to the parent.
fn send(to: &mut File, msg: &FromChild, max: usize) -> Result<(), String> {
    let frame = encode(msg, max)?;
    to.write_all(&frame).map_err(io("write to parent"))
}

/// Turns an OS error into the child's start error, saying what failed.
fn io<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

#[cfg(feature = "testing")]
fn write_raw(to: &mut File, bytes: &[u8]) -> Result<(), String> {
    to.write_all(bytes)
        .map_err(|e| format!("write to parent: {e}"))
}

/// Reads one frame's payload into `buf`; `false` at a clean end of input.
fn read_frame(from: &mut File, max: usize, buf: &mut Vec<u8>) -> Result<bool, String> {
    let mut prefix = [0_u8; 4];
    match from.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(format!("read from parent: {e}")),
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(format!(
            "the parent sent a frame of {len} bytes, over {max}"
        ));
    }
    buf.clear();
    // Into the spare capacity, without zero-filling it first.
    let got = from
        .take(len as u64)
        .read_to_end(buf)
        .map_err(|e| format!("read from parent: {e}"))?;
    if got < len {
        return Err(format!(
            "the parent's frame ended after {got} of {len} bytes"
        ));
    }
    Ok(true)
}
