//! In the parent (the host process): one job run where its lease's worker is — in the worker
//! thread's child on the process backend, on the worker thread itself otherwise — and the
//! decoding of what a child sent, each `Deserialize` caught.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;

use super::super::job::{drop_quietly, step_panicked, ProcessJob};
use super::super::protocol;
#[cfg(unix)]
use super::slot;
use crate::LeaseError;

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
pub(super) fn decode_output<J: ProcessJob>(body: &[u8]) -> Result<J::Output, LeaseError> {
    decode_in_parent::<J, J::Output>(body)
}

/// One grinder item's outcome decoded from the child's reply, as the item's answer.
#[cfg(unix)]
pub(super) fn decode_outcome<J: ProcessJob>(item: &[u8]) -> Result<J::Output, LeaseError> {
    use protocol::ItemOutcome;
    match decode_in_parent::<J, ItemOutcome<J::Output>>(item)? {
        ItemOutcome::Done(value) => Ok(value),
        ItemOutcome::Panicked(message) => Err(LeaseError::Panicked(message)),
        ItemOutcome::Failed(message) => Err(LeaseError::ProcessJob(message)),
    }
}

/// `T` decoded from what job `J`'s child sent, running the user's `Deserialize` under
/// `catch_unwind`: an error or a panic is `ProcessJob` naming it.
pub(super) fn decode_in_parent<J: ProcessJob, T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, LeaseError> {
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
