//! The pure rules of one exchange with a child, apart from the pipes that carry it: what a
//! frame from the child means for the job waiting on it, what a wait that gave no answer
//! means, whether the worker must start a new child afterwards, and how many jobs a child may
//! still take. `conn.rs` does the I/O and follows these verdicts; `slot.rs` acts on the health.

use std::ops::Range;

use super::super::protocol::FromChild;
use crate::LeaseError;

/// What waiting for the child's answer gave.
#[derive(Debug)]
pub(crate) enum Waited {
    /// A whole frame: its header; its body spans `body` of the buffer, which holds `end` bytes
    /// of it.
    Frame {
        header: FromChild,
        body: Range<usize>,
        end: usize,
    },
    /// The child closed its end or died.
    Ended,
    /// The child sent something that is not a frame of the protocol.
    Malformed(String),
    /// The running job must stop now, for this reason.
    Stop(LeaseError),
    /// The start's deadline passed (the handshake).
    TimedOut,
}

/// What a frame from the child means for job `seq`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// The body is the job's encoded output: decoding it gives the answer.
    Output,
    /// The body holds outcomes of the batch: decode them; more frames follow until every job
    /// has one ([`batch_complete`]).
    Outcomes,
    /// The header is the answer itself (the job panicked, or could not run or answer).
    Answer(LeaseError),
    /// Not an answer to this job: the child is broken (why).
    Foreign(String),
}

/// Reads a frame's header for job `seq`, sent as one job or as a batch (`batch`).
pub(crate) fn read_frame(header: FromChild, seq: u64, batch: bool) -> Frame {
    match header {
        FromChild::Done { seq: s } if s == seq && !batch => Frame::Output,
        FromChild::DoneMany { seq: s } if s == seq && batch => Frame::Outcomes,
        FromChild::Panicked { seq: s, message } if s == seq => {
            Frame::Answer(LeaseError::Panicked(message))
        }
        FromChild::Failed { seq: s, message } if s == seq => {
            Frame::Answer(LeaseError::ProcessJob(message))
        }
        other => Frame::Foreign(format!("an answer that is not job {seq}'s: {other:?}")),
    }
}

/// Whether a batch of `count` jobs has every outcome once `outcomes` have come.
pub(crate) fn batch_complete(count: u32, outcomes: usize) -> bool {
    outcomes >= count as usize
}

/// What a wait that gave no answer means for the job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoAnswer {
    /// The job must stop (hard expiry, an overdue stop): the child is killed; this reason is
    /// the answer.
    Stop(LeaseError),
    /// The child broke the protocol (why): killed, `WorkerLost`.
    Broken(String),
    /// The child died before it had the job: it never started; send it to a new child.
    Undelivered,
    /// The child died after it took the job: `WorkerLost` (it may have started).
    Lost,
}

/// The verdict on a wait that ended with `waited` (no answer); `taken`: the child took the
/// whole frame from its pipe (or answered part of a batch), so the job may have started.
pub(crate) fn no_answer(waited: Waited, taken: bool) -> NoAnswer {
    match waited {
        Waited::Stop(reason) => NoAnswer::Stop(reason),
        Waited::Malformed(why) => NoAnswer::Broken(why),
        Waited::Ended | Waited::TimedOut | Waited::Frame { .. } if !taken => NoAnswer::Undelivered,
        Waited::Ended | Waited::TimedOut | Waited::Frame { .. } => NoAnswer::Lost,
    }
}

/// Why the worker must start a new child before its next job (its state rebuilt), after an
/// exchange that ended in `no_answer`; `None`: it need not (stopping, or replaced at once).
pub(crate) fn rebuild_after(no_answer: &NoAnswer) -> Option<&'static str> {
    match no_answer {
        NoAnswer::Stop(LeaseError::Stopped) | NoAnswer::Undelivered => None,
        NoAnswer::Stop(_) => Some("its worker child was killed"),
        NoAnswer::Broken(_) => Some(BROKEN),
        NoAnswer::Lost => Some("its worker child died"),
    }
}

/// The rebuild reason of a child that sent a malformed frame.
pub(crate) const BROKEN: &str = "its worker child sent a malformed frame";

/// Whether a child that has served `served` jobs is spent under `max_jobs_per_child`.
pub(crate) fn spent(max_jobs: Option<usize>, served: usize) -> bool {
    max_jobs.is_some_and(|n| served >= n)
}

/// How many jobs the next call may send: what the child may still run, or — spent, it is
/// replaced first — what a new one may. `None`: no limit.
pub(crate) fn jobs_left(max_jobs: Option<usize>, served: usize) -> Option<usize> {
    max_jobs.map(|n| match n.saturating_sub(served) {
        0 => n,
        left => left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_answers_only_its_own_job_in_its_own_shape() {
        let done = |seq| FromChild::Done { seq };
        let many = |seq| FromChild::DoneMany { seq };
        assert_eq!(read_frame(done(3), 3, false), Frame::Output);
        assert_eq!(read_frame(many(3), 3, true), Frame::Outcomes);
        // Another job's answer, or the other shape: broken.
        for (header, batch) in [
            (done(2), false),
            (many(4), true),
            (done(3), true),
            (many(3), false),
        ] {
            assert!(
                matches!(read_frame(header, 3, batch), Frame::Foreign(why) if why.contains("job 3"))
            );
        }
        let panicked = FromChild::Panicked {
            seq: 3,
            message: "boom".into(),
        };
        assert_eq!(
            read_frame(panicked, 3, true),
            Frame::Answer(LeaseError::Panicked("boom".into()))
        );
        let failed = FromChild::Failed {
            seq: 3,
            message: "no".into(),
        };
        assert_eq!(
            read_frame(failed, 3, false),
            Frame::Answer(LeaseError::ProcessJob("no".into()))
        );
        let stale = FromChild::Failed {
            seq: 2,
            message: "old".into(),
        };
        assert!(matches!(read_frame(stale, 3, false), Frame::Foreign(_)));
        let stale = FromChild::Panicked {
            seq: 4,
            message: "later".into(),
        };
        assert!(matches!(read_frame(stale, 3, true), Frame::Foreign(_)));
        assert!(matches!(
            read_frame(FromChild::StartFailed("x".into()), 3, false),
            Frame::Foreign(_)
        ));
    }

    #[test]
    fn a_batch_is_complete_once_every_job_has_an_outcome() {
        assert!(!batch_complete(3, 0));
        assert!(!batch_complete(3, 2));
        assert!(batch_complete(3, 3));
        assert!(batch_complete(3, 4));
        assert!(batch_complete(0, 0));
    }

    #[test]
    fn a_death_before_the_job_was_taken_is_undelivered_after_it_lost() {
        for ended in [Waited::Ended, Waited::TimedOut] {
            assert_eq!(no_answer(ended, false), NoAnswer::Undelivered);
        }
        assert_eq!(no_answer(Waited::Ended, true), NoAnswer::Lost);
        assert_eq!(no_answer(Waited::TimedOut, true), NoAnswer::Lost);
        // Whatever was taken: a stop is a stop, garbage is broken.
        for taken in [false, true] {
            assert_eq!(
                no_answer(Waited::Stop(LeaseError::Expired), taken),
                NoAnswer::Stop(LeaseError::Expired)
            );
            assert_eq!(
                no_answer(Waited::Malformed("x".into()), taken),
                NoAnswer::Broken("x".into())
            );
        }
    }

    #[test]
    fn the_worker_starts_a_new_child_after_a_death_a_kill_or_garbage_not_a_stop() {
        assert_eq!(rebuild_after(&NoAnswer::Stop(LeaseError::Stopped)), None);
        assert_eq!(rebuild_after(&NoAnswer::Undelivered), None);
        assert!(rebuild_after(&NoAnswer::Stop(LeaseError::Expired)).is_some());
        assert_eq!(rebuild_after(&NoAnswer::Broken("x".into())), Some(BROKEN));
        assert!(rebuild_after(&NoAnswer::Lost).is_some());
    }

    #[test]
    fn a_child_is_spent_at_max_jobs_and_a_new_one_takes_a_whole_quota() {
        assert!(!spent(None, usize::MAX));
        assert!(!spent(Some(3), 2));
        assert!(spent(Some(3), 3));
        assert_eq!(jobs_left(None, 7), None);
        assert_eq!(jobs_left(Some(3), 0), Some(3));
        assert_eq!(jobs_left(Some(3), 2), Some(1));
        assert_eq!(jobs_left(Some(3), 3), Some(3));
        assert_eq!(jobs_left(Some(3), 9), Some(3));
    }
}
