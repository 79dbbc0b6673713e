//! Jobs that fail their child on purpose: panics, crashes and kills, hangs, memory hogs, broken
//! frames, floods of output, subprocesses that stay or leave the group.

//! The jobs the tests send to children (every one registered in `crate::jobs()`, since this binary
//! is the children's program too).

use leasepool::process;
use leasepool::process::ProcessJob;
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Ends its child the way a crash would.
#[derive(Serialize, Deserialize)]
pub(crate) enum Crash {
    Abort,
    Exit(i32),
    Segv,
    Killed,
}

impl ProcessJob for Crash {
    const NAME: &'static str = "crash.v1";
    type Output = ();
    fn run(self) {
        match self {
            Crash::Abort => std::process::abort(),
            Crash::Exit(code) => std::process::exit(code),
            Crash::Segv => {
                // The first SIGSEGV meets Rust's stack-overflow handler, which restores the
                // default action; the second kills, as a real segfault would.
                let me = std::process::id();
                let _ = Command::new("sh")
                    .args([
                        "-c",
                        &format!("kill -SEGV {me}; sleep 0.05; kill -SEGV {me}"),
                    ])
                    .status();
                std::thread::sleep(Duration::from_secs(30));
            }
            Crash::Killed => {
                // What the OOM killer does.
                let me = std::process::id();
                let _ = Command::new("sh")
                    .args(["-c", &format!("kill -KILL {me}")])
                    .status();
                std::thread::sleep(Duration::from_secs(30));
            }
        }
    }
}

/// Sends its reply as a malformed frame (fault injection).
#[derive(Serialize, Deserialize)]
pub(crate) struct Corrupt;

impl ProcessJob for Corrupt {
    const NAME: &'static str = "corrupt.v1";
    type Output = u32;
    fn run(self) -> u32 {
        process::corrupt_this_reply();
        std::process::id()
    }
}

/// Which user callback of [`Fragile`] panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Fault {
    None,
    /// The input's `Serialize` (in the parent).
    EncodeInput,
    /// The input's `Deserialize` (in the child).
    DecodeInput,
    /// The output's `Serialize` (in the child).
    EncodeOutput,
    /// The output's `Deserialize` (in the parent).
    DecodeOutput,
}

/// A job whose input and output panic in the callback its `fault` names; answers `id`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
pub(crate) struct Fragile {
    pub(crate) id: u32,
    pub(crate) fault: Fault,
}

/// What goes on the wire for [`Fragile`] and [`FragileOut`].
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Wire {
    pub(crate) id: u32,
    pub(crate) fault: Fault,
}

impl From<Fragile> for Wire {
    fn from(f: Fragile) -> Wire {
        assert!(
            f.fault != Fault::EncodeInput,
            "input {} refuses to encode",
            f.id
        );
        Wire {
            id: f.id,
            fault: f.fault,
        }
    }
}

impl From<Wire> for Fragile {
    fn from(w: Wire) -> Fragile {
        assert!(
            w.fault != Fault::DecodeInput,
            "input {} refuses to decode",
            w.id
        );
        Fragile {
            id: w.id,
            fault: w.fault,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
pub(crate) struct FragileOut {
    pub(crate) id: u32,
    pub(crate) fault: Fault,
}

impl From<FragileOut> for Wire {
    fn from(f: FragileOut) -> Wire {
        assert!(
            f.fault != Fault::EncodeOutput,
            "output {} refuses to encode",
            f.id
        );
        Wire {
            id: f.id,
            fault: f.fault,
        }
    }
}

impl From<Wire> for FragileOut {
    fn from(w: Wire) -> FragileOut {
        assert!(
            w.fault != Fault::DecodeOutput,
            "output {} refuses to decode",
            w.id
        );
        FragileOut {
            id: w.id,
            fault: w.fault,
        }
    }
}

impl ProcessJob for Fragile {
    const NAME: &'static str = "fragile.v1";
    type Output = FragileOut;
    fn run(self) -> FragileOut {
        FragileOut {
            id: self.id,
            fault: self.fault,
        }
    }
}

/// Aborts its child.
#[derive(Serialize, Deserialize)]
pub(crate) struct Abort;

impl ProcessJob for Abort {
    const NAME: &'static str = "abort.v1";
    type Output = ();
    fn run(self) {
        std::process::abort();
    }
}

/// Writes its pid to `pid_file`, then sleeps until killed.
#[derive(Serialize, Deserialize)]
pub(crate) struct Hang {
    pub(crate) pid_file: PathBuf,
}

impl ProcessJob for Hang {
    const NAME: &'static str = "hang.v1";
    type Output = ();
    fn run(self) {
        std::fs::write(&self.pid_file, std::process::id().to_string()).expect("write the pid");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Prints what Rust prints when an allocation fails (without failing one); answers its pid.
#[derive(Serialize, Deserialize)]
pub(crate) struct SaysOom;

impl ProcessJob for SaysOom {
    const NAME: &'static str = "says-oom.v1";
    type Output = u32;
    fn run(self) -> u32 {
        eprintln!("memory allocation of 12 bytes failed");
        std::process::id()
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Fail {
    Abort,
    Exit(i32),
    Panic,
}

impl ProcessJob for Fail {
    const NAME: &'static str = "fail.v1";
    type Output = u32;
    fn run(self) -> u32 {
        match self {
            Fail::Abort => std::process::abort(),
            Fail::Exit(c) => std::process::exit(c),
            Fail::Panic => panic!("boom"),
        }
    }
}

/// Spawns `sleep secs` (in our group, or its own), writes its pid to a file, then returns or
/// aborts. Answers (child pid, grandchild pid).
#[derive(Serialize, Deserialize)]
pub(crate) struct Grandchild {
    pub(crate) secs: u64,
    pub(crate) own_group: bool,
    pub(crate) abort_after: bool,
}

impl ProcessJob for Grandchild {
    const NAME: &'static str = "grandchild.v1";
    type Output = (u32, u32);
    fn run(self) -> (u32, u32) {
        let mut cmd = Command::new("sleep");
        cmd.arg(self.secs.to_string());
        if self.own_group {
            cmd.process_group(0);
        }
        let g = cmd.spawn().expect("spawn sleep");
        let gp = g.id();
        std::mem::forget(g);
        if let Ok(f) = std::env::var("ADV_GRANDCHILD_FILE") {
            let _ = std::fs::write(f, gp.to_string());
        }
        if self.abort_after {
            std::thread::sleep(Duration::from_millis(50));
            std::process::abort();
        }
        (std::process::id(), gp)
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct BigPanic(pub(crate) usize);

impl ProcessJob for BigPanic {
    const NAME: &'static str = "bigpanic.v1";
    type Output = ();
    fn run(self) {
        panic!("{}", "x".repeat(self.0));
    }
}

/// Writes `bytes` bytes on stderr, in one line (no newline) or in lines of 100.
#[derive(Serialize, Deserialize)]
pub(crate) struct Spew {
    pub(crate) bytes: usize,
    pub(crate) newline: bool,
    pub(crate) binary: bool,
}

impl ProcessJob for Spew {
    const NAME: &'static str = "spew.v1";
    type Output = u32;
    fn run(self) -> u32 {
        use std::io::Write;
        let mut chunk = vec![if self.binary { 0xff } else { b'a' }; 1 << 20];
        if self.newline {
            for i in (99..chunk.len()).step_by(100) {
                chunk[i] = b'\n';
            }
        }
        let mut err = std::io::stderr().lock();
        let mut left = self.bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            err.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        if !self.newline {
            let _ = err.write_all(b"\n");
        }
        std::process::id()
    }
}

/// Starts a thread that keeps printing and logging after the job returns.
#[derive(Serialize, Deserialize)]
pub(crate) struct BgLogger;

impl ProcessJob for BgLogger {
    const NAME: &'static str = "bglogger.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::spawn(|| loop {
            eprintln!("background line");
            tracing::warn!("background event");
            std::thread::sleep(Duration::from_millis(1));
        });
        std::process::id()
    }
}

/// Exits while another thread writes to stderr as fast as it can.
#[derive(Serialize, Deserialize)]
pub(crate) struct ExitWhileWriting;

impl ProcessJob for ExitWhileWriting {
    const NAME: &'static str = "exitwrite.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::spawn(|| loop {
            eprintln!("{}", "z".repeat(4000));
        });
        std::thread::sleep(Duration::from_millis(20));
        std::process::exit(0)
    }
}

/// Writes raw bytes to the child's protocol write end (fd 4) via /proc, then answers.
#[derive(Serialize, Deserialize)]
pub(crate) struct Inject(pub(crate) Vec<u8>);

impl ProcessJob for Inject {
    const NAME: &'static str = "inject.v1";
    type Output = u32;
    fn run(self) -> u32 {
        use std::io::Write;
        // Find the write end of the protocol pipe: a pipe fd > 2 opened for writing.
        for fd in 3..20 {
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            let flags =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            let write = flags
                .lines()
                .find(|l| l.starts_with("flags:"))
                .and_then(|l| {
                    u32::from_str_radix(l.split_whitespace().nth(1).unwrap_or("0"), 8).ok()
                })
                .is_some_and(|f| f & 3 == 1);
            if link.to_string_lossy().starts_with("pipe:") && write {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(format!("/proc/self/fd/{fd}"))
                    .unwrap();
                f.write_all(&self.0).unwrap();
                break;
            }
        }
        1
    }
}

/// Starts `yes` in a process group of its own, writing into the child's stderr pipe; answers
/// its pid. (Second review: a writer outside the group kept the log thread, and so the worker,
/// busy forever.)
#[derive(Serialize, Deserialize)]
pub(crate) struct ChattyDaemon;

impl ProcessJob for ChattyDaemon {
    const NAME: &'static str = "chatty-daemon.v1";
    type Output = u32;
    fn run(self) -> u32 {
        let c = Command::new("yes")
            .process_group(0)
            .stdout(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let p = c.id();
        std::mem::forget(c);
        p
    }
}

/// Moves the child into its parent's process group, then sleeps. (Second review: a kill of
/// the child's group missed it.)
#[derive(Serialize, Deserialize)]
pub(crate) struct LeaveGroup(pub(crate) u64);

impl ProcessJob for LeaveGroup {
    const NAME: &'static str = "leave-group.v1";
    type Output = u32;
    fn run(self) -> u32 {
        let parent = rustix::process::getppid().unwrap();
        let pg = rustix::process::getpgid(Some(parent)).unwrap();
        rustix::process::setpgid(None, Some(pg)).unwrap();
        std::thread::sleep(Duration::from_millis(self.0));
        std::process::id()
    }
}

/// Panics with its text.
#[derive(Serialize, Deserialize)]
pub(crate) struct Boom(pub String);

impl ProcessJob for Boom {
    const NAME: &'static str = "boom.v1";
    type Output = ();
    fn run(self) {
        panic!("{}", self.0);
    }
}

/// Allocates and touches `bytes`; answers their sum.
#[derive(Serialize, Deserialize)]
pub(crate) struct Hog {
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
