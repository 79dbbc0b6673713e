//! Jobs that answer: values both ways, pids, timing and rendezvous between children, sizes,
//! states kept in a child, values whose encoding or `Drop` misbehave.

//! The jobs the tests send to children (every one registered in `crate::jobs()`, since this binary
//! is the children's program too).

use crate::support::*;
use leasepool::process::ProcessJob;
use leasepool::{process, Backend, LeaseManager};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Upper-cases its text; answers with the pid that did it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Shout(pub(crate) String);

impl ProcessJob for Shout {
    const NAME: &'static str = "shout.v1";
    type Output = (String, u32);
    fn run(self) -> (String, u32) {
        (self.0.to_uppercase(), std::process::id())
    }
}

/// Registers its pid in `dir`, then waits until `expect` jobs have (or `timeout_ms` passed);
/// answers how many it saw, and its pid. Only jobs that run at the same time all see `expect`.
#[derive(Serialize, Deserialize)]
pub(crate) struct Rendezvous {
    pub(crate) dir: PathBuf,
    pub(crate) expect: usize,
    pub(crate) timeout_ms: u64,
}

impl ProcessJob for Rendezvous {
    const NAME: &'static str = "rendezvous.v1";
    type Output = (usize, u32);
    fn run(self) -> (usize, u32) {
        let me = std::process::id();
        std::fs::write(
            self.dir
                .join(format!("{me}-{:?}", std::thread::current().id())),
            b"",
        )
        .expect("write the rendezvous file");
        let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
        loop {
            let seen = std::fs::read_dir(&self.dir).map_or(0, Iterator::count);
            if seen >= self.expect || Instant::now() >= deadline {
                return (seen, me);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Waits until `flag` exists; answers whether it appeared in time.
#[derive(Serialize, Deserialize)]
pub(crate) struct WaitFor {
    pub(crate) flag: PathBuf,
    pub(crate) timeout_ms: u64,
}

impl ProcessJob for WaitFor {
    const NAME: &'static str = "wait-for.v1";
    type Output = bool;
    fn run(self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
        while Instant::now() < deadline {
            if self.flag.exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

/// Writes its pid to `pid_file`, then spins forever.
#[derive(Serialize, Deserialize)]
pub(crate) struct Spin {
    pub(crate) pid_file: PathBuf,
}

impl ProcessJob for Spin {
    const NAME: &'static str = "spin.v1";
    type Output = ();
    fn run(self) {
        std::fs::write(&self.pid_file, std::process::id().to_string()).expect("write the pid");
        loop {
            std::hint::spin_loop();
        }
    }
}

/// Logs through `tracing`, prints on stdout and stderr; answers its pid.
#[derive(Serialize, Deserialize)]
pub(crate) struct Chatty;

impl ProcessJob for Chatty {
    const NAME: &'static str = "chatty.v1";
    type Output = u32;
    fn run(self) -> u32 {
        tracing::warn!(answer = 42, "hello from the child");
        println!("printed by a job on stdout");
        eprintln!("written by a job on stderr");
        std::process::id()
    }
}

/// Not registered in [`jobs`]: the children do not know it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Unregistered;

impl ProcessJob for Unregistered {
    const NAME: &'static str = "unregistered.v1";
    type Output = ();
    fn run(self) {}
}

/// Same name as [`Shout`].
#[derive(Serialize, Deserialize)]
pub(crate) struct ShoutAgain;

impl ProcessJob for ShoutAgain {
    const NAME: &'static str = "shout.v1";
    type Output = ();
    fn run(self) {}
}

/// Tries, inside a child, to start a process-backend manager of its own; answers the error.
#[derive(Serialize, Deserialize)]
pub(crate) struct Nested;

impl ProcessJob for Nested {
    const NAME: &'static str = "nested.v1";
    type Output = (bool, String);
    fn run(self) -> (bool, String) {
        let m = LeaseManager::builder()
            .backend(Backend::Process)
            .process_jobs(crate::jobs())
            .name_prefix("pt-nested-inner")
            .build()
            .expect("valid settings");
        let outcome = testkit::block_on_tokio(async {
            let r = m.start().await;
            m.stop().await;
            r
        });
        (
            process::is_worker_child(),
            outcome.err().map(|e| e.to_string()).unwrap_or_default(),
        )
    }
}

/// A value whose encoding is `len` bytes made on the fly: it takes no memory until encoded.
#[derive(Serialize, Deserialize)]
pub(crate) struct Lazy {
    pub(crate) len: u64,
}

/// A sequence of `len` bytes, produced as it is serialized.
pub(crate) struct Stream(pub(crate) u64);

impl Serialize for Stream {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::SerializeSeq as _;
        let len = usize::try_from(self.0).map_err(serde::ser::Error::custom)?;
        let mut seq = s.serialize_seq(Some(len))?;
        for _ in 0..self.0 {
            seq.serialize_element(&7_u8)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Stream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Stream, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        Ok(Stream(bytes.len() as u64))
    }
}

/// Answers a [`Stream`] of `len` bytes.
impl ProcessJob for Lazy {
    const NAME: &'static str = "lazy.v1";
    type Output = Stream;
    fn run(self) -> Stream {
        Stream(self.len)
    }
}

/// Allocates, touches and keeps `mb` MiB (its exit then takes a while); answers its pid.
#[derive(Serialize, Deserialize)]
pub(crate) struct Keep {
    pub(crate) mb: usize,
}

pub(crate) static KEPT: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

impl ProcessJob for Keep {
    const NAME: &'static str = "keep.v1";
    type Output = u32;
    fn run(self) -> u32 {
        KEPT.lock().unwrap().push(vec![1_u8; self.mb << 20]);
        std::process::id()
    }
}

/// A linked list as deep as its length: serde encodes and decodes it recursively.
#[derive(Serialize, Deserialize)]
pub(crate) struct Node(pub(crate) Option<Box<Node>>);

impl Node {
    pub(crate) fn deep(depth: usize) -> Node {
        let mut node = Node(None);
        for _ in 0..depth {
            node = Node(Some(Box::new(node)));
        }
        node
    }

    pub(crate) fn depth(&self) -> usize {
        let (mut n, mut at) = (0, &self.0);
        while let Some(next) = at {
            n += 1;
            at = &next.0;
        }
        n
    }
}

impl Drop for Node {
    // Iterative: only serde's recursion is under test.
    fn drop(&mut self) {
        let mut next = self.0.take();
        while let Some(mut node) = next {
            next = node.0.take();
        }
    }
}

/// Answers the depth of its input, and a list `output` deep.
#[derive(Serialize, Deserialize)]
pub(crate) struct Deep {
    pub(crate) input: Node,
    pub(crate) output: usize,
}

impl ProcessJob for Deep {
    const NAME: &'static str = "deep.v1";
    type Output = (usize, Node);
    fn run(self) -> (usize, Node) {
        (self.input.depth(), Node::deep(self.output))
    }
}

/// Sleeps `nap_ms` (so that jobs sent together land on different children), then answers its
/// pid and how many of its open descriptors are pipes.
#[derive(Serialize, Deserialize)]
pub(crate) struct PipeFds {
    pub(crate) nap_ms: u64,
}

impl ProcessJob for PipeFds {
    const NAME: &'static str = "pipe-fds.v1";
    type Output = (u32, usize);
    fn run(self) -> (u32, usize) {
        std::thread::sleep(Duration::from_millis(self.nap_ms));
        let pipes = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("pipe:"))
            })
            .count();
        (std::process::id(), pipes)
    }
}

/// Sleeps `ms`; answers its pid.
#[derive(Serialize, Deserialize)]
pub(crate) struct Nap(pub(crate) u64);

impl ProcessJob for Nap {
    const NAME: &'static str = "nap.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::sleep(Duration::from_millis(self.0));
        std::process::id()
    }
}

/// Sleeps `ms`; then, if `abort`, aborts its child, else answers the child's pid. (One job
/// type for both, so that a grinder batch keeps them in one frame, in order.)
#[derive(Serialize, Deserialize)]
pub(crate) struct Step {
    pub(crate) ms: u64,
    pub(crate) abort: bool,
}

impl ProcessJob for Step {
    const NAME: &'static str = "step.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::sleep(Duration::from_millis(self.ms));
        if self.abort {
            std::process::abort();
        }
        std::process::id()
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SleepMs(pub(crate) u64);

impl ProcessJob for SleepMs {
    const NAME: &'static str = "sleep.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::sleep(Duration::from_millis(self.0));
        std::process::id()
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct BigOut(pub(crate) usize);

impl ProcessJob for BigOut {
    const NAME: &'static str = "bigout.v1";
    type Output = Vec<u8>;
    fn run(self) -> Vec<u8> {
        vec![7; self.0]
    }
}

/// Lists the child's open fds (after exec of a grandchild they would be inherited).
#[derive(Serialize, Deserialize)]
pub(crate) struct Fds;

impl ProcessJob for Fds {
    const NAME: &'static str = "fds.v1";
    type Output = Vec<String>;
    fn run(self) -> Vec<String> {
        let out = Command::new("sh")
            .args([
                "-c",
                "ls -l /proc/$$/fd | tail -n +2 | awk '{print $9 $10 $11}'",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Takes `n` bytes in, answers their count.
#[derive(Serialize, Deserialize)]
pub(crate) struct BigIn(pub(crate) leasepool::process::Bytes);

impl ProcessJob for BigIn {
    const NAME: &'static str = "big-in.v1";
    type Output = usize;
    fn run(self) -> usize {
        self.0.len()
    }
}

/// The child's resident memory, KiB.
#[derive(Serialize, Deserialize)]
pub(crate) struct ChildRss;

impl ProcessJob for ChildRss {
    const NAME: &'static str = "child-rss.v1";
    type Output = u64;
    fn run(self) -> u64 {
        vm_rss_kb()
    }
}

/// A hand-written `Serialize` that may panic or fail, and a `Drop` that may panic (third
/// review: in a batched frame these cost their neighbours, or aborted the host).
#[derive(Deserialize)]
pub(crate) struct Touchy {
    pub(crate) id: u64,
    #[serde(skip)]
    pub(crate) ser_panic: bool,
    #[serde(skip)]
    pub(crate) ser_err: bool,
    #[serde(skip)]
    pub(crate) drop_panic: bool,
}

impl Touchy {
    pub(crate) fn new(id: u64) -> Self {
        Touchy {
            id,
            ser_panic: false,
            ser_err: false,
            drop_panic: false,
        }
    }
}

impl Serialize for Touchy {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::{Error, SerializeStruct};
        if self.ser_panic {
            panic!("serialize panics {}", self.id);
        }
        if self.ser_err {
            return Err(Z::Error::custom("serialize fails"));
        }
        let mut st = s.serialize_struct("Touchy", 1)?;
        st.serialize_field("id", &self.id)?;
        st.end()
    }
}

impl Drop for Touchy {
    fn drop(&mut self) {
        if self.drop_panic {
            panic!("drop panics {}", self.id);
        }
    }
}

impl ProcessJob for Touchy {
    const NAME: &'static str = "touchy.v1";
    type Output = u64;
    fn run(mut self) -> u64 {
        self.drop_panic = false;
        self.id
    }
}

/// A job with a long name (the frame header grows with it).
#[derive(Serialize, Deserialize)]
pub(crate) struct LongName(pub(crate) u32);

impl ProcessJob for LongName {
    const NAME: &'static str = "long-name-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.v1";
    type Output = u32;
    fn run(self) -> u32 {
        self.0
    }
}

/// Answers the pid of the child that ran it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Pid;

impl ProcessJob for Pid {
    const NAME: &'static str = "pid.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::process::id()
    }
}

/// Answers the length of its payload.
#[derive(Serialize, Deserialize)]
pub(crate) struct Bytes(pub Vec<u8>);

impl ProcessJob for Bytes {
    const NAME: &'static str = "bytes.v1";
    type Output = usize;
    fn run(self) -> usize {
        self.0.len()
    }
}
