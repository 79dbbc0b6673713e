//! In the parent: a `WorkGrinder` batch's items of one job type — split in parts, one per
//! worker of the batch's lease, each part one engine job and (process backend) one frame to a
//! child — answered exactly once each.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use leasepool_actors::plumbing::JobTally;

use super::super::job::{drop_quietly, panic_text, ProcessJob};
#[cfg(unix)]
use super::super::job::{step_panicked, FRAME_ROOM};
#[cfg(unix)]
use super::super::protocol;
#[cfg(unix)]
use super::call::decode_outcome;
#[cfg(unix)]
use super::slot;
use crate::LeaseError;

/// One grinder item of job type `J`: the job, where its answer goes, and whether to skip it if
/// nobody waits any more.
pub(crate) type BatchItem<J> = (
    J,
    leasepool_actors::plumbing::JobReply<<J as ProcessJob>::Output>,
    leasepool_actors::plumbing::IfAbandoned,
);

/// Runs a grinder batch's items of one job type where the lease's worker is: on the process
/// backend in one frame to the worker thread's child (one round trip for all), otherwise one
/// after the other on the worker thread. Every item is answered exactly once.
pub(crate) fn run_many_here<J: ProcessJob>(items: Vec<BatchItem<J>>) -> JobTally {
    // Skipped: items whose submitter left before a worker got to them. Each dropped on its own,
    // quietly: one destructor that panics must not take the others' answers with it.
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if item.2 == leasepool_actors::plumbing::IfAbandoned::Skip && item.1.is_closed() {
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
    reply: leasepool_actors::plumbing::JobReply<T>,
    outcome: Result<T, LeaseError>,
    tally: &mut JobTally,
) {
    tally.add(leasepool_actors::metrics::JobEnd::of(&outcome));
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
    let mut ready: Vec<(Vec<u8>, leasepool_actors::plumbing::JobReply<J::Output>)> = Vec::new();
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
/// [`protocol::OUTCOMES_PER_FRAME`] outcomes unsent (a frame on its way included): when it dies,
/// the item it was running and those outcomes are unknown, every later item never started.
fn unanswered_that_may_have_run(error: &LeaseError) -> usize {
    match error {
        #[cfg(unix)]
        LeaseError::WorkerLost => protocol::OUTCOMES_PER_FRAME + 1,
        _ => usize::MAX,
    }
}

/// A grinder batch's items of job type `J`, gathered while the batch launches.
pub(crate) struct Gathered<J: ProcessJob> {
    pub(crate) items: Vec<BatchItem<J>>,
    /// Each item's submitter's span, in the items' order.
    pub(crate) spans: Vec<tracing::Span>,
    /// How many parts to send them in: the pool's workers, one part each.
    pub(crate) workers: usize,
}

impl<J: ProcessJob> Default for Gathered<J> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            spans: Vec::new(),
            workers: 1,
        }
    }
}

/// Sends a batch's gathered items on its lease: split in one part per worker, each part one job
/// (and, on the process backend, one frame). Every item is answered exactly once: by its part's
/// job, with the lease's refusal if the part cannot be sent, or `NeverRan` if the part is
/// dropped unrun (the lease was revoked).
pub(crate) fn send_gathered<S: 'static, J: ProcessJob>(
    batch: &leasepool_actors::plumbing::Batch<'_, S>,
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
    let mut spans = gathered.spans.into_iter();
    loop {
        let part: Vec<BatchItem<J>> = items.by_ref().take(per).collect();
        if part.is_empty() {
            return;
        }
        let span = part_span(spans.by_ref().take(per));
        let shared = Arc::new(std::sync::Mutex::new(Part(Some(part))));
        let for_job = Arc::clone(&shared);
        let hold = batch.hold();
        let sent = span.in_scope(|| {
            lease.dispatch_counted(
                move |_: &mut S| {
                    let _hold = hold;
                    let part = for_job.lock().unwrap_or_else(|e| e.into_inner()).take();
                    part.map(run_many_here).unwrap_or_default()
                },
                |tally: &JobTally| *tally,
                leasepool_actors::plumbing::IfAbandoned::Run,
            )
        });
        if let Err(e) = sent {
            let part = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
            for (job, reply, _) in part.into_iter().flatten() {
                reply.fail(e.clone());
                drop_quietly(job);
            }
        }
    }
}

/// The span a part (one frame of items from many submitters) is sent in: `grinder_part`
/// (target `leasepool::grinder`, DEBUG) linked to each item's submitter's span (`follows_from`),
/// so the part's `job` span and its child's log lines are reachable from every request; if
/// DEBUG is off there, the first item's submitter's span.
fn part_span(items: impl Iterator<Item = tracing::Span>) -> tracing::Span {
    let items: Vec<tracing::Span> = items.collect();
    let part =
        tracing::debug_span!(target: "leasepool::grinder", "grinder_part", items = items.len());
    if part.is_disabled() {
        return items.into_iter().next().unwrap_or_else(tracing::Span::none);
    }
    for item in &items {
        part.follows_from(item);
    }
    part
}
