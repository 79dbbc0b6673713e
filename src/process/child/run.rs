//! In the child: decoding a job (or a frame of them), running it, encoding the outcome — every
//! step that runs user code caught, so that it answers its job alone.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::super::job::{drop_quietly, panic_text, step_panicked, ProcessJob, FRAME_ROOM};
use super::super::protocol;
use super::outbox::{self, Emit};

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
pub(crate) type Runner = fn(u64, &[u8], Vec<u8>, usize) -> RunOutcome;

/// Like [`Runner`], for `count` jobs encoded back to back (one `RunMany` frame).
/// `emit` sends a finished frame of outcomes at once (so a crash later in the run does not cost
/// the items already answered).
pub(crate) type ManyRunner = fn(u64, u32, &[u8], Vec<u8>, usize, &mut Emit<'_>) -> RunOutcome;

/// Decodes a `J`, runs it, encodes its output into the reply frame, and drops what is left.
/// Every step that runs the user's code (`Deserialize`, `run`, `Serialize`, `Drop`) is caught:
/// a panic in any of them answers this job alone, naming the step, and the child serves on.
pub(crate) fn run_encoded<J: ProcessJob>(
    seq: u64,
    input: &[u8],
    buf: Vec<u8>,
    max: usize,
) -> RunOutcome {
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
            leasepool_actors::plumbing::drop_payload(payload);
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

/// Decodes `count` `J`s from `input` and runs each (catching a panic). Their outcomes go back
/// in order, as they come ([`outbox`]); the last frame is the returned one. An outcome too
/// large for a frame is answered `Failed` alone.
pub(crate) fn run_many_encoded<J: ProcessJob>(
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
                            ItemOutcome::Panicked(protocol::fit(message, max.saturating_sub(room)))
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
    let text = protocol::fit(text, max.saturating_sub(FRAME_ROOM));
    let outcome = protocol::ItemOutcome::<J::Output>::Failed(text);
    protocol::encode_item(&outcome, usize::MAX).unwrap_or_default()
}
