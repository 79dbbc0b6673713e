//! The process backend: leased pools of worker *processes* (feature `process`, Unix).
//!
//! Each worker thread of a pool owns one child process — the worker program (by default this
//! very executable) started with a private environment marker — and talks to it over a framed
//! pipe. Work is a [`ProcessJob`]: a serde value that names itself and runs in the child.
//!
//! - A job that panics in the child answers [`LeaseError::Panicked`](crate::LeaseError); the
//!   child survives.
//! - A child that crashes (abort, segfault, `exit`, the memory limit, the OOM killer) answers
//!   its job `WorkerLost`, is logged with its exit status or signal, and is replaced; the pool's
//!   other children are not affected.
//! - When a lease is revoked at its hard expiry, children still running its jobs are killed
//!   (their whole process group) and the jobs answer `Expired`: a runaway job really stops.
//!   `stop` past `shutdown_timeout` does the same.
//! - Children die with the parent (`PR_SET_PDEATHSIG` on Linux, and end of input everywhere).
//!
//! The rule: **[`init`] is the first line of `main`** of the worker program. In the parent it
//! returns at once; in a worker child it serves jobs and exits the process.
//!
//! ```no_run
//! use leasepool::process::{self, Jobs, ProcessJob};
//! use leasepool::{Backend, LeaseManager};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Shout(String);
//!
//! impl ProcessJob for Shout {
//!     const NAME: &'static str = "shout.v1";
//!     type Output = String;
//!     fn run(self) -> String {
//!         self.0.to_uppercase()
//!     }
//! }
//!
//! fn jobs() -> Jobs {
//!     Jobs::new().register::<Shout>()
//! }
//!
//! #[actix_rt::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     process::init(jobs()); // first line: a worker child never returns from here
//!     let manager = LeaseManager::builder()
//!         .backend(Backend::Process)
//!         .process_jobs(jobs())
//!         .workers_per_pool(2)
//!         .build()?;
//!     manager.start().await?;
//!     let lease = manager.acquire().await?;
//!     assert_eq!(lease.call(Shout("hello".into())).await?, "HELLO");
//!     lease.release().await;
//!     manager.stop().await;
//!     Ok(())
//! }
//! ```
//!
//! See the guide page [`guide::process_backend`](crate::guide::process_backend) for when to
//! choose it, `cargo test` patterns, limits and what a job may not capture.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use leasepool_actors::JobTally;

use crate::LeaseError;

#[cfg(unix)]
mod child;
pub(crate) mod counters;
#[cfg(unix)]
mod logs;
#[cfg(unix)]
mod outbox;
mod protocol;
#[cfg(unix)]
mod serve;
#[cfg(unix)]
pub(crate) mod slot;
#[cfg(unix)]
mod watcher;

/// A job that can run in a worker child: the value is the input, [`run`](Self::run) is the
/// work. The same type runs on the thread backend too (`run` on a worker thread), with the same
/// answers.
///
/// A job travels by value, encoded with serde: it may not capture anything that does not
/// serialize (a connection, a lock, a closure). State a child needs for every job (a loaded
/// model, a connection) belongs in a `static` set up by [`Jobs::on_child_start`].
///
/// ```
/// use leasepool::process::ProcessJob;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Resize { width: u32, height: u32 }
///
/// impl ProcessJob for Resize {
///     const NAME: &'static str = "resize.v1";
///     type Output = u64;
///     fn run(self) -> u64 {
///         u64::from(self.width) * u64::from(self.height)
///     }
/// }
/// assert_eq!(Resize { width: 3, height: 4 }.run(), 12);
/// ```
pub trait ProcessJob: Serialize + DeserializeOwned + Send + 'static {
    /// A stable id, e.g. `"resize.v1"`: how a child finds the job's code. Change it when the
    /// input's shape changes, so an old worker program refuses the job instead of misreading it.
    const NAME: &'static str;
    /// What the job answers.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The work.
    fn run(self) -> Self::Output;
}

/// Bytes that travel as one byte string: the efficient way to give a [`ProcessJob`] a large
/// binary input or output (serde encodes a plain `Vec<u8>` number by number, several times
/// slower for a large payload). Derefs to `Vec<u8>`.
///
/// ```
/// use leasepool::process::{Bytes, ProcessJob};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Compress(Bytes);
///
/// impl ProcessJob for Compress {
///     const NAME: &'static str = "compress.v1";
///     type Output = Bytes;
///     fn run(self) -> Bytes {
///         let mut out = self.0;
///         out.dedup(); // stand-in for real work
///         out
///     }
/// }
/// assert_eq!(*Compress(Bytes(vec![1, 1, 2])).run(), vec![1, 2]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Bytes(#[serde(with = "protocol::bytes")] pub Vec<u8>);

impl std::ops::Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

/// What running an encoded job in a child gave.
pub(crate) enum RunOutcome {
    /// The whole reply frame: `FromChild::Done` and the encoded output (built in the buffer
    /// the runner was given, so the child reuses it).
    Done(Vec<u8>),
    /// The job panicked; the message.
    Panicked(String),
    /// The job could not run or answer (undecodable input, unencodable or oversized output).
    Failed(String),
}

/// Decodes a job from its input bytes, runs it, and builds the reply frame in the buffer given
/// (at most the given size), answering job number `seq`.
type Runner = fn(u64, &[u8], Vec<u8>, usize) -> RunOutcome;

/// Like [`Runner`], for `count` jobs encoded back to back (one `RunMany` frame).
/// `emit` sends a finished frame of outcomes at once (so a crash later in the run does not cost
/// the items already answered).
type ManyRunner = fn(u64, u32, &[u8], Vec<u8>, usize, &mut Emit<'_>) -> RunOutcome;

/// Sends a complete frame to the parent now.
pub(crate) type Emit<'a> = dyn FnMut(&[u8]) -> Result<(), String> + Send + 'a;

/// The jobs a child can run, and what a child does when it starts. Build the same `Jobs` in
/// the worker program's [`init`] and in [`ManagerBuilder::process_jobs`](crate::ManagerBuilder::process_jobs)
/// (a function returning it is the easy way).
///
/// ```
/// use leasepool::process::{Jobs, ProcessJob};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Ping;
/// impl ProcessJob for Ping {
///     const NAME: &'static str = "ping.v1";
///     type Output = ();
///     fn run(self) {}
/// }
///
/// let jobs = Jobs::new()
///     .register::<Ping>()
///     .on_child_start(|| { /* open files, load a model into a static, … */ });
/// assert_eq!(jobs.names().collect::<Vec<_>>(), ["ping.v1"]);
/// ```
#[derive(Clone, Default)]
pub struct Jobs {
    runners: BTreeMap<&'static str, (Runner, ManyRunner)>,
    duplicate: Option<&'static str>,
    on_start: Vec<Arc<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("names", &self.runners.keys().collect::<Vec<_>>())
            .field("on_child_start", &self.on_start.len())
            .finish()
    }
}

impl Jobs {
    /// No jobs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds job `J`. Two jobs with the same `NAME` make
    /// [`ManagerBuilder::build`](crate::ManagerBuilder::build) fail with
    /// [`BuildError::DuplicateJobName`](crate::BuildError).
    #[must_use]
    pub fn register<J: ProcessJob>(mut self) -> Self {
        let runners: (Runner, ManyRunner) = (run_encoded::<J>, run_many_encoded::<J>);
        if self.runners.insert(J::NAME, runners).is_some() && self.duplicate.is_none() {
            self.duplicate = Some(J::NAME);
        }
        self
    }

    /// Runs `f` in each child as it starts, before it serves its first job (an initializer:
    /// open files, load a model into a `static`, install a tracing subscriber). A panic in `f`
    /// fails the child's start; the pool retries with backoff and logs the panic.
    #[must_use]
    pub fn on_child_start(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_start.push(Arc::new(f));
        self
    }

    /// The registered job names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.runners.keys().copied()
    }

    /// The first name registered twice, if any.
    pub(crate) fn duplicate(&self) -> Option<&'static str> {
        self.duplicate
    }

    #[cfg(unix)]
    pub(crate) fn runner(&self, name: &str) -> Option<Runner> {
        self.runners.get(name).map(|r| r.0)
    }

    #[cfg(unix)]
    pub(crate) fn many_runner(&self, name: &str) -> Option<ManyRunner> {
        self.runners.get(name).map(|r| r.1)
    }

    #[cfg(unix)]
    pub(crate) fn start_hooks(&self) -> &[Arc<dyn Fn() + Send + Sync>] {
        &self.on_start
    }
}

/// Decodes a `J`, runs it, encodes its output into the reply frame, and drops what is left.
/// Every step that runs the user's code (`Deserialize`, `run`, `Serialize`, `Drop`) is caught:
/// a panic in any of them answers this job alone, naming the step, and the child serves on.
fn run_encoded<J: ProcessJob>(seq: u64, input: &[u8], buf: Vec<u8>, max: usize) -> RunOutcome {
    let job: J = match catch_unwind(AssertUnwindSafe(|| protocol::decode(input))) {
        Ok(Ok(job)) => job,
        Ok(Err(e)) => {
            return RunOutcome::Failed(format!(
                "job {:?}: the child cannot decode its input: {e}",
                J::NAME
            ))
        }
        Err(payload) => {
            return RunOutcome::Failed(step_panicked::<J>("decoding its input", payload));
        }
    };
    let output = match catch_unwind(AssertUnwindSafe(move || job.run())) {
        Ok(output) => output,
        Err(payload) => {
            let message = panic_text(payload.as_ref());
            // A payload whose destructor panics is leaked, not dropped twice.
            leasepool_actors::drop_payload(payload);
            return RunOutcome::Panicked(message);
        }
    };
    let frame = catch_unwind(AssertUnwindSafe(|| {
        protocol::frame_with_body(
            &protocol::FromChild::Done { seq },
            |b, limit| protocol::extend_capped(&output, b, limit),
            buf,
            max,
        )
    }));
    // Dropping the output runs the user's `Drop`: quietly (a panic there is leaked, and the
    // answer stands).
    drop_quietly(output);
    match frame {
        Ok(Ok(frame)) => RunOutcome::Done(frame),
        Ok(Err(e)) => RunOutcome::Failed(format!("job {:?}: its output: {e}", J::NAME)),
        Err(payload) => RunOutcome::Failed(step_panicked::<J>("encoding its output", payload)),
    }
}

/// The answer for a job whose `step` (user code the child runs around `run`) panicked.
fn step_panicked<J: ProcessJob>(step: &str, payload: Box<dyn std::any::Any + Send>) -> String {
    let text = panic_text(payload.as_ref());
    drop_quietly(payload);
    format!("job {:?}: {step} panicked: {text}", J::NAME)
}

/// Decodes `count` `J`s from `input` and runs each (catching a panic). Their outcomes go back
/// in order, as they come ([`outbox`]); the last frame is the returned one. An outcome too
/// large for a frame is answered `Failed` alone.
fn run_many_encoded<J: ProcessJob>(
    seq: u64,
    count: u32,
    input: &[u8],
    buf: Vec<u8>,
    max: usize,
    emit: &mut Emit<'_>,
) -> RunOutcome {
    use protocol::ItemOutcome;
    let room = FRAME_ROOM;
    let mut rest = input;
    let encoded = |outcome: &ItemOutcome<J::Output>| -> Vec<u8> {
        // Encoded up to what a frame can hold, no further.
        let limit = max.saturating_sub(room);
        match catch_unwind(AssertUnwindSafe(|| protocol::encode_item(outcome, limit))) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(postcard::Error::SerializeBufferFull)) => failed_outcome::<J>(
                format!(
                    "job {:?}: its output: a message over max_message_bytes ({max}); its encoding stopped there",
                    J::NAME
                ),
                max,
            ),
            Ok(Err(e)) => failed_outcome::<J>(
                format!("job {:?}: the child cannot encode its output: {e}", J::NAME),
                max,
            ),
            Err(payload) => {
                failed_outcome::<J>(step_panicked::<J>("encoding its output", payload), max)
            }
        }
    };
    let next = || {
        // Each input is an item of its own: one that does not decode fails alone.
        let outcome: ItemOutcome<J::Output> = match protocol::take_item(rest) {
            None => ItemOutcome::Failed(format!(
                "job {:?}: its input is missing from the batch frame",
                J::NAME
            )),
            Some((item, after)) => {
                rest = after;
                match catch_unwind(AssertUnwindSafe(|| protocol::decode::<J>(item))) {
                    Ok(Ok(job)) => match catch_unwind(AssertUnwindSafe(move || job.run())) {
                        Ok(output) => ItemOutcome::Done(output),
                        Err(payload) => {
                            let message = panic_text(payload.as_ref());
                            drop_quietly(payload);
                            ItemOutcome::Panicked(serve::fit(message, max.saturating_sub(room)))
                        }
                    },
                    Ok(Err(e)) => ItemOutcome::Failed(format!(
                        "job {:?}: the child cannot decode its input: {e}",
                        J::NAME
                    )),
                    Err(payload) => {
                        ItemOutcome::Failed(step_panicked::<J>("decoding its input", payload))
                    }
                }
            }
        };
        let bytes = encoded(&outcome);
        drop_quietly(outcome);
        bytes
    };
    let header = protocol::FromChild::DoneMany { seq };
    match outbox::run_and_send(header, max, buf, emit, count, next) {
        Ok(last) => RunOutcome::Done(last),
        Err(e) => RunOutcome::Failed(format!("jobs {:?}: {e}", J::NAME)),
    }
}

/// An encoded `Failed` outcome (always small).
fn failed_outcome<J: ProcessJob>(text: String, max: usize) -> Vec<u8> {
    let text = serve::fit(text, max.saturating_sub(FRAME_ROOM));
    let outcome = protocol::ItemOutcome::<J::Output>::Failed(text);
    protocol::encode_item(&outcome, usize::MAX).unwrap_or_default()
}

use leasepool_actors::panic_message as panic_text;

/// **The first line of `main`** of a program whose process-backend managers use it as their
/// worker program (the default: the running executable). In the parent — any process not
/// started as a leasepool worker — it returns at once. In a worker child it serves jobs from
/// `jobs` until its parent closes the pipe or dies, then exits the process: it never returns.
///
/// Anything `main` does before `init` runs in every child too, and anything it prints on stdout
/// there would be taken for the handshake: keep `init` first.
pub fn init(jobs: Jobs) {
    #[cfg(unix)]
    serve::serve_if_child(jobs);
    #[cfg(not(unix))]
    drop(jobs);
}

/// Whether this process is a process-backend worker child (inside a job, or in
/// [`Jobs::on_child_start`]). A child may not start worker processes of its own.
pub fn is_worker_child() -> bool {
    #[cfg(unix)]
    {
        serve::in_child()
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Fault injection (feature `testing`), for a job running in a worker child: its reply goes to
/// the parent as a malformed frame, which the parent must treat as a broken child (kill it,
/// answer the job `WorkerLost`, start a new one). Does nothing outside a child.
#[cfg(all(unix, feature = "testing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub fn corrupt_this_reply() {
    if serve::in_child() {
        serve::CORRUPT_REPLY.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `job` where its lease's worker is: in the worker thread's child on the process backend,
/// on the worker thread itself otherwise. Called on a worker thread.
pub(crate) fn run_here<J: ProcessJob>(job: J) -> Result<J::Output, LeaseError> {
    #[cfg(unix)]
    if slot::has_child_slot() {
        // The user's `Serialize` and `Deserialize` run here, on the worker thread: a panic in
        // either is the job's answer (`ProcessJob` naming the step), and the child serves on.
        let mut encode_panic = None;
        let mut output = None;
        let sent = slot::call(
            J::NAME,
            None,
            &mut |buf, limit| {
                catch_unwind(AssertUnwindSafe(|| {
                    protocol::extend_capped(&job, buf, limit)
                }))
                .unwrap_or_else(|payload| {
                    encode_panic = Some(step_panicked::<J>("encoding its input", payload));
                    Err(postcard::Error::SerdeSerCustom)
                })
            },
            &mut |body| {
                output = Some(decode_output::<J>(body));
                Ok(1)
            },
        );
        drop_quietly(job);
        if let Some(text) = encode_panic {
            return Err(LeaseError::ProcessJob(text));
        }
        sent?;
        return output.unwrap_or(Err(LeaseError::WorkerLost));
    }
    // A panic here is the engine's to catch, as for a closure: `Panicked`, state rebuilt.
    Ok(job.run())
}

/// A job's output decoded from the child's reply; a decoding error or panic is the job's
/// answer (`ProcessJob`).
fn decode_output<J: ProcessJob>(body: &[u8]) -> Result<J::Output, LeaseError> {
    decode_in_parent::<J, J::Output>(body)
}

/// One grinder item's outcome decoded from the child's reply, as the item's answer.
#[cfg(unix)]
fn decode_outcome<J: ProcessJob>(item: &[u8]) -> Result<J::Output, LeaseError> {
    use protocol::ItemOutcome;
    match decode_in_parent::<J, ItemOutcome<J::Output>>(item)? {
        ItemOutcome::Done(value) => Ok(value),
        ItemOutcome::Panicked(message) => Err(LeaseError::Panicked(message)),
        ItemOutcome::Failed(message) => Err(LeaseError::ProcessJob(message)),
    }
}

/// `T` decoded from what job `J`'s child sent, running the user's `Deserialize` under
/// `catch_unwind`: an error or a panic is `ProcessJob` naming it.
fn decode_in_parent<J: ProcessJob, T: DeserializeOwned>(bytes: &[u8]) -> Result<T, LeaseError> {
    match catch_unwind(AssertUnwindSafe(|| protocol::decode::<T>(bytes))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(LeaseError::ProcessJob(format!(
            "job {:?}: cannot decode the child's output: {e}",
            J::NAME
        ))),
        Err(payload) => Err(LeaseError::ProcessJob(step_panicked::<J>(
            "decoding its output",
            payload,
        ))),
    }
}

/// One grinder item of job type `J`: the job, where its answer goes, and whether to skip it if
/// nobody waits any more.
pub(crate) type BatchItem<J> = (
    J,
    leasepool_actors::JobReply<<J as ProcessJob>::Output>,
    leasepool_actors::IfAbandoned,
);

/// Runs a grinder batch's items of one job type where the lease's worker is: on the process
/// backend in one frame to the worker thread's child (one round trip for all), otherwise one
/// after the other on the worker thread. Every item is answered exactly once.
pub(crate) fn run_many_here<J: ProcessJob>(items: Vec<BatchItem<J>>) -> JobTally {
    // Skipped: items whose submitter left before a worker got to them. Each dropped on its own,
    // quietly: one destructor that panics must not take the others' answers with it.
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if item.2 == leasepool_actors::IfAbandoned::Skip && item.1.is_closed() {
            drop_quietly(item);
        } else {
            kept.push(item);
        }
    }
    let mut tally = JobTally::default();
    if kept.is_empty() {
        return tally;
    }
    #[cfg(unix)]
    if slot::has_child_slot() {
        return run_many_in_child(kept);
    }
    for (job, reply, _) in kept {
        let outcome = catch_unwind(AssertUnwindSafe(move || job.run())).map_err(|payload| {
            let message = panic_text(payload.as_ref());
            drop_quietly(payload);
            LeaseError::Panicked(message)
        });
        answer(reply, outcome, &mut tally);
    }
    tally
}

/// Answers one grinder item, counting it as its answer says.
fn answer<T: Send + 'static>(
    reply: leasepool_actors::JobReply<T>,
    outcome: Result<T, LeaseError>,
    tally: &mut JobTally,
) {
    tally.add(counters::job_count(&outcome));
    if let Err(unsent) = reply.answer(outcome) {
        drop_quietly(unsent);
    }
}

/// A part of a batch's items on its way to a worker. Dropped unrun (its lease was revoked, its
/// pool died), it answers each item `NeverRan` and drops it on its own, quietly, whatever the
/// items' destructors do.
pub(crate) struct Part<J: ProcessJob>(Option<Vec<BatchItem<J>>>);

impl<J: ProcessJob> Part<J> {
    fn take(&mut self) -> Option<Vec<BatchItem<J>>> {
        self.0.take()
    }
}

impl<J: ProcessJob> Drop for Part<J> {
    fn drop(&mut self) {
        for (job, reply, _) in self.0.take().into_iter().flatten() {
            reply.fail(LeaseError::NeverRan);
            drop_quietly(job);
        }
    }
}

#[cfg(unix)]
fn run_many_in_child<J: ProcessJob>(items: Vec<BatchItem<J>>) -> JobTally {
    let mut tally = JobTally::default();
    let max = slot::max_message();
    let room = FRAME_ROOM + J::NAME.len();
    // Each input encoded on its own, then packed into frames that fit `max_message_bytes`: an
    // item fails alone if it does not fit or does not encode, never because of its neighbours.
    let mut ready: Vec<(Vec<u8>, leasepool_actors::JobReply<J::Output>)> = Vec::new();
    for (job, reply, _) in items {
        let limit = max.saturating_sub(room);
        match catch_unwind(AssertUnwindSafe(|| protocol::encode_item(&job, limit))) {
            Ok(Ok(bytes)) => ready.push((bytes, reply)),
            Ok(Err(postcard::Error::SerializeBufferFull)) => {
                let text = format!(
                    "job {:?}: its input: a message over max_message_bytes ({max}); its encoding stopped there",
                    J::NAME
                );
                answer(reply, Err(LeaseError::ProcessJob(text)), &mut tally);
            }
            Ok(Err(e)) => {
                let text = format!("job {:?}: cannot encode its input: {e}", J::NAME);
                answer(reply, Err(LeaseError::ProcessJob(text)), &mut tally);
            }
            Err(payload) => {
                let text = step_panicked::<J>("encoding its input", payload);
                answer(reply, Err(LeaseError::ProcessJob(text)), &mut tally);
            }
        }
        drop_quietly(job);
    }
    let mut ready = ready.into_iter().peekable();
    while ready.peek().is_some() {
        let mut size = 0;
        let mut frame_items = Vec::new();
        // No more in one frame than the child may still run (`max_jobs_per_child`): a spent
        // child is replaced before the next frame.
        let most = slot::jobs_left().unwrap_or(usize::MAX).max(1);
        while let Some((bytes, _)) = ready.peek() {
            if !frame_items.is_empty()
                && (size + bytes.len() + room > max || frame_items.len() >= most)
            {
                break;
            }
            size += bytes.len();
            frame_items.extend(ready.next());
        }
        let count = u32::try_from(frame_items.len()).unwrap_or(u32::MAX);
        let (inputs, replies): (Vec<Vec<u8>>, Vec<_>) = frame_items.into_iter().unzip();
        let mut replies = replies.into_iter();
        let outcome = slot::call(
            J::NAME,
            Some(count),
            &mut |mut buf, _| {
                for input in &inputs {
                    buf.extend_from_slice(input);
                }
                Ok(buf)
            },
            &mut |body| {
                // One frame of outcomes (the child sends them in several): answer each. An
                // outcome that does not decode fails alone.
                let mut rest = body;
                let mut answered = 0;
                while !rest.is_empty() {
                    let (item, after) =
                        protocol::take_item(rest).ok_or("a batch frame with a cut outcome")?;
                    rest = after;
                    let reply = replies.next().ok_or("more outcomes than jobs")?;
                    answer(reply, decode_outcome::<J>(item), &mut tally);
                    answered += 1;
                }
                Ok(answered)
            },
        );
        // The frame failed as a whole (the child died, the lease expired): its items not
        // answered above get that error — but for a lost child, only those that may have run.
        let Err(error) = outcome else { continue };
        let may_have_run = unanswered_that_may_have_run(&error);
        for (n, reply) in replies.enumerate() {
            let error = if n < may_have_run {
                error.clone()
            } else {
                LeaseError::NeverRan
            };
            answer(reply, Err(error), &mut tally);
        }
        if matches!(error, LeaseError::Expired | LeaseError::Stopped) {
            // The job must stop: the frames not sent yet are answered the same (uncounted:
            // they never ran).
            for (_, reply) in ready.by_ref() {
                reply.fail(error.clone());
            }
        }
    }
    tally
}

/// Of a frame's items that have no outcome when the frame fails with `error`, how many (from
/// the first) may have run. A child runs its items in order and holds at most
/// [`outbox::OUTCOMES_PER_FRAME`] outcomes unsent (a frame on its way included): when it dies,
/// the item it was running and those outcomes are unknown, every later item never started.
fn unanswered_that_may_have_run(error: &LeaseError) -> usize {
    match error {
        #[cfg(unix)]
        LeaseError::WorkerLost => outbox::OUTCOMES_PER_FRAME + 1,
        _ => usize::MAX,
    }
}

/// Room for a frame's header beside its inputs or outputs (a job name adds its length).
const FRAME_ROOM: usize = 256;

/// Drops a user value, containing a panic of its destructor (this may run on the host thread).
pub(crate) fn drop_quietly<T>(value: T) {
    let _ = leasepool_actors::drop_contained(value);
}

/// A grinder batch's items of job type `J`, gathered while the batch launches.
pub(crate) struct Gathered<J: ProcessJob> {
    pub(crate) items: Vec<BatchItem<J>>,
    /// How many parts to send them in: the pool's workers, one part each.
    pub(crate) workers: usize,
}

impl<J: ProcessJob> Default for Gathered<J> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            workers: 1,
        }
    }
}

/// Sends a batch's gathered items on its lease: split in one part per worker, each part one job
/// (and, on the process backend, one frame). Every item is answered exactly once: by its part's
/// job, with the lease's refusal if the part cannot be sent, or `NeverRan` if the part is
/// dropped unrun (the lease was revoked).
pub(crate) fn send_gathered<S: 'static, J: ProcessJob>(
    batch: &leasepool_actors::Batch<'_, S>,
    gathered: Gathered<J>,
) {
    let Some(lease) = batch.lease() else {
        for (job, reply, _) in gathered.items {
            reply.fail(LeaseError::NeverRan);
            drop_quietly(job);
        }
        return;
    };
    let n = gathered.items.len();
    if n == 0 {
        return;
    }
    let per = n.div_ceil(gathered.workers.clamp(1, n));
    let mut items = gathered.items.into_iter();
    loop {
        let part: Vec<BatchItem<J>> = items.by_ref().take(per).collect();
        if part.is_empty() {
            return;
        }
        let shared = Arc::new(std::sync::Mutex::new(Part(Some(part))));
        let for_job = Arc::clone(&shared);
        let hold = batch.hold();
        let sent = lease.dispatch_counted(
            move |_: &mut S| {
                let _hold = hold;
                let part = for_job.lock().unwrap_or_else(|e| e.into_inner()).take();
                part.map(run_many_here).unwrap_or_default()
            },
            |tally: &JobTally| *tally,
            leasepool_actors::IfAbandoned::Run,
        );
        if let Err(e) = sent {
            let part = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
            for (job, reply, _) in part.into_iter().flatten() {
                reply.fail(e.clone());
                drop_quietly(job);
            }
        }
    }
}

/// The settings of a process backend, gathered by the builder.
#[derive(Debug, Clone)]
pub(crate) struct ProcessOptions {
    pub(crate) jobs: Option<Jobs>,
    pub(crate) program: Option<std::path::PathBuf>,
    pub(crate) max_jobs_per_child: Option<usize>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) max_message_bytes: usize,
    pub(crate) start_timeout: std::time::Duration,
}

/// Settings checked and wrapped for the process backend, and its children's counters.
pub(crate) type Configured<S> = (
    leasepool_actors::Settings<S>,
    Option<Arc<counters::ChildCounters>>,
);

/// Smallest cap on one frame accepted: the handshake (every job name) must fit.
pub(crate) const MIN_MAX_MESSAGE: usize = 4096;

/// Default cap on one frame (a job's encoded input or output): 64 MiB.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

impl Default for ProcessOptions {
    fn default() -> Self {
        Self {
            jobs: None,
            program: None,
            max_jobs_per_child: None,
            memory_limit: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE,
            start_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Checks the process settings and, for [`Backend::Process`](crate::Backend), wraps the worker
/// state factory so that each worker thread starts and owns a child.
/// Also returns the children's counters, for the manager's stats (`None`: thread backend).
pub(crate) fn configure<S: 'static>(
    #[cfg_attr(not(unix), allow(unused_mut))] mut settings: leasepool_actors::Settings<S>,
    options: ProcessOptions,
) -> Result<Configured<S>, crate::BuildError> {
    use crate::BuildError;
    if let Some(name) = options.jobs.as_ref().and_then(Jobs::duplicate) {
        return Err(BuildError::DuplicateJobName(name));
    }
    for (setting, value) in [
        ("max_jobs_per_child", options.max_jobs_per_child),
        (
            "child_memory_limit",
            options.memory_limit.map(|b| usize::from(b != 0)),
        ),
    ] {
        if value == Some(0) {
            return Err(BuildError::Zero { setting });
        }
    }
    if options.max_message_bytes < MIN_MAX_MESSAGE {
        return Err(BuildError::TooSmall {
            setting: "max_message_bytes",
            min: MIN_MAX_MESSAGE as u64,
            got: options.max_message_bytes as u64,
        });
    }
    if options.start_timeout.is_zero() {
        return Err(BuildError::ZeroDuration {
            setting: "child_start_timeout",
        });
    }
    if settings.backend != crate::Backend::Process {
        return Ok((settings, None));
    }
    #[cfg(not(unix))]
    {
        return Err(BuildError::UnsupportedBackend {
            backend: crate::Backend::Process,
            why: format!("it runs on Unix only, not on {}", std::env::consts::OS),
        });
    }
    #[cfg(unix)]
    {
        if options.jobs.is_none() {
            return Err(BuildError::MissingProcessJobs);
        }
        let program = match options.program {
            Some(path) => path,
            None => std::env::current_exe().map_err(|e| {
                BuildError::WorkerProgram(format!("cannot find the running executable: {e}"))
            })?,
        };
        if !program.is_file() {
            return Err(BuildError::WorkerProgram(format!(
                "{} is not a file",
                program.display()
            )));
        }
        let counters = Arc::new(counters::ChildCounters::default());
        let spec = Arc::new(child::ChildSpec {
            manager: settings.name_prefix.clone(),
            program,
            max_message: options.max_message_bytes,
            memory_limit: options.memory_limit,
            max_jobs_per_child: options.max_jobs_per_child,
            start_timeout: options.start_timeout,
            counters: Arc::clone(&counters),
        });
        settings.state_factory = slot::wrap_factory(settings.state_factory, spec);
        settings.worker_exit = Some(Arc::new(slot::end_child));
        Ok((settings, Some(counters)))
    }
}
