//! What one claimed task's run means for the queue: pure functions from what happened
//! ([`Ran`]) to the queue's answer, the counter that moves, what to set right after apalis'
//! acknowledgement, and what to log ([`Verdict`]). Unit-tested below without a store.

use crate::queue::store::Intent;
use crate::LeaseError;

/// What became of one claimed task in this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ran {
    /// It cannot run here: its payload does not decode, a stored setting is out of range.
    Unrunnable(String),
    /// Its attempts were used up before this run.
    OutOfAttempts(u32),
    /// It must not run now (the store could not set it right first).
    NotNow(&'static str),
    /// The worker is stopping: handed back before or during its run.
    HandedBack,
    /// No lease came: the acquire's error.
    NoLease(LeaseError),
    /// It ran on a lease: the job's answer.
    Finished(Result<Result<(), String>, LeaseError>),
}

/// How a task goes back to the queue without counting an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Defer {
    /// No lease came, or the task could not run now: for anyone, at once.
    PutBack,
    /// The worker stopped first.
    HandBack,
}

/// The queue's view of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    /// The attempt failed: the job's error or panic (`lost: false`), or its worker died or
    /// its lease was revoked under it (`lost: true`). Retried while attempts remain.
    Failed {
        why: String,
        lost: bool,
    },
    /// Failed for good at once, never retried.
    Kill(String),
    /// Back to the queue, the attempt not counted.
    Defer(Defer, String),
}

pub(crate) fn classify(ran: Ran) -> Outcome {
    match ran {
        Ran::Unrunnable(why) => Outcome::Kill(why),
        Ran::OutOfAttempts(max) => Outcome::Kill(format!("out of attempts ({max})")),
        Ran::NotNow(why) => Outcome::Defer(Defer::PutBack, why.to_owned()),
        Ran::HandedBack => Outcome::Defer(
            Defer::HandBack,
            "handed back: the queue worker stopped".to_owned(),
        ),
        Ran::NoLease(e) => Outcome::Defer(Defer::PutBack, format!("put back: no lease came ({e})")),
        Ran::Finished(Ok(Ok(()))) => Outcome::Done,
        Ran::Finished(Ok(Err(why))) => Outcome::Failed { why, lost: false },
        Ran::Finished(Err(LeaseError::Panicked(why))) => Outcome::Failed {
            why: format!("panicked: {why}"),
            lost: false,
        },
        Ran::Finished(Err(e @ (LeaseError::WorkerLost | LeaseError::Expired))) => Outcome::Failed {
            why: e.to_string(),
            lost: true,
        },
        Ran::Finished(Err(e @ (LeaseError::InvalidArgument(_) | LeaseError::ProcessJob(_)))) => {
            Outcome::Kill(e.to_string())
        }
        // The lease itself could not run it (released, stopped, revoked before it started).
        Ran::Finished(Err(e)) => Outcome::Defer(
            Defer::PutBack,
            format!("put back: the lease could not run the task ({e})"),
        ),
    }
}

/// A task's attempt counts at this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// This run's number (1 = first), attempts the store keeps owed back not counted.
    pub(crate) counted: usize,
    /// apalis' count, which its acknowledgement writes.
    pub(crate) apalis: usize,
    pub(crate) max: u32,
}

/// What the apalis worker is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Done,
    /// The attempt failed; the task is retried (at the time the intent sets).
    Retry(String),
    /// Failed for good.
    Kill(String),
    /// Back to the queue; the intent gives the attempt back.
    Defer(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    Done,
    Failed,
    Retried,
    PutBack,
    HandedBack,
}

/// What to log about the run (see the module docs of `task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Log {
    Quiet,
    /// A failed attempt that will be retried at this time (seconds since 1970).
    AttemptFailed {
        next_at: u64,
    },
    /// Failed for good.
    FailedForGood,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) answer: Answer,
    pub(crate) counter: Counter,
    pub(crate) intent: Option<Intent>,
    pub(crate) log: Log,
}

/// The verdict on `outcome` at `attempt`; a retry runs no sooner than `retry_at` (seconds
/// since 1970, the store's clock).
pub(crate) fn verdict(outcome: Outcome, attempt: Attempt, retry_at: u64) -> Verdict {
    match outcome {
        Outcome::Done => Verdict {
            answer: Answer::Done,
            counter: Counter::Done,
            intent: None,
            log: Log::Quiet,
        },
        Outcome::Failed { why, lost } => {
            let counter = if lost {
                Counter::Retried
            } else {
                Counter::Failed
            };
            if attempt.counted < attempt.max as usize {
                Verdict {
                    answer: Answer::Retry(why),
                    counter,
                    intent: Some(Intent::RetryAt {
                        attempt: attempt.apalis,
                        at: retry_at,
                    }),
                    log: Log::AttemptFailed { next_at: retry_at },
                }
            } else {
                Verdict {
                    answer: Answer::Kill(why),
                    counter,
                    intent: None,
                    log: Log::FailedForGood,
                }
            }
        }
        Outcome::Kill(why) => Verdict {
            answer: Answer::Kill(why),
            counter: Counter::Failed,
            intent: None,
            log: Log::FailedForGood,
        },
        Outcome::Defer(how, why) => Verdict {
            answer: Answer::Defer(why),
            counter: match how {
                Defer::PutBack => Counter::PutBack,
                Defer::HandBack => Counter::HandedBack,
            },
            intent: Some(Intent::GiveBack {
                attempt: attempt.apalis,
            }),
            log: Log::Quiet,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const AT: Attempt = Attempt {
        counted: 2,
        apalis: 3,
        max: 5,
    };

    #[test]
    fn every_lease_error_has_its_place() {
        let failed = |e: LeaseError| classify(Ran::Finished(Err(e)));
        assert_eq!(
            failed(LeaseError::Panicked("boom".into())),
            Outcome::Failed {
                why: "panicked: boom".into(),
                lost: false
            }
        );
        for lost in [LeaseError::WorkerLost, LeaseError::Expired] {
            assert!(matches!(failed(lost), Outcome::Failed { lost: true, .. }));
        }
        for kill in [
            LeaseError::InvalidArgument("x".into()),
            LeaseError::ProcessJob("y".into()),
        ] {
            let text = kill.to_string();
            assert_eq!(failed(kill), Outcome::Kill(text));
        }
        for back in [
            LeaseError::NotStarted,
            LeaseError::Unavailable,
            LeaseError::Timeout(Duration::from_secs(1)),
            LeaseError::Stopped,
            LeaseError::Released,
            LeaseError::NoHealthyPool("f".into()),
            LeaseError::StartFailed("s".into()),
            LeaseError::BlockingOnRuntime("b"),
            LeaseError::NeverRan,
        ] {
            assert!(
                matches!(failed(back.clone()), Outcome::Defer(Defer::PutBack, ref why) if why.contains("lease could not run")),
                "{back:?}"
            );
        }
    }

    #[test]
    fn what_did_not_run_is_named() {
        assert_eq!(classify(Ran::Finished(Ok(Ok(())))), Outcome::Done);
        assert_eq!(
            classify(Ran::Finished(Ok(Err("no".into())))),
            Outcome::Failed {
                why: "no".into(),
                lost: false
            }
        );
        assert_eq!(
            classify(Ran::Unrunnable("bad".into())),
            Outcome::Kill("bad".into())
        );
        assert_eq!(
            classify(Ran::OutOfAttempts(4)),
            Outcome::Kill("out of attempts (4)".into())
        );
        assert!(matches!(
            classify(Ran::HandedBack),
            Outcome::Defer(Defer::HandBack, _)
        ));
        assert!(matches!(
            classify(Ran::NoLease(LeaseError::Timeout(Duration::from_secs(3)))),
            Outcome::Defer(Defer::PutBack, ref why) if why.starts_with("put back: no lease came (timed out")
        ));
        assert_eq!(
            classify(Ran::NotNow("later")),
            Outcome::Defer(Defer::PutBack, "later".into())
        );
    }

    #[test]
    fn a_failure_is_retried_while_attempts_remain() {
        let v = verdict(
            Outcome::Failed {
                why: "e".into(),
                lost: false,
            },
            AT,
            99,
        );
        assert_eq!(
            v,
            Verdict {
                answer: Answer::Retry("e".into()),
                counter: Counter::Failed,
                intent: Some(Intent::RetryAt { attempt: 3, at: 99 }),
                log: Log::AttemptFailed { next_at: 99 },
            }
        );
        // The last attempt: failed for good, nothing to set right.
        let last = Attempt { counted: 5, ..AT };
        let v = verdict(
            Outcome::Failed {
                why: "e".into(),
                lost: true,
            },
            last,
            99,
        );
        assert_eq!(
            (v.answer, v.counter, v.intent, v.log),
            (
                Answer::Kill("e".into()),
                Counter::Retried,
                None,
                Log::FailedForGood
            )
        );
        // One before the last is retried.
        let v = verdict(
            Outcome::Failed {
                why: "e".into(),
                lost: true,
            },
            Attempt { counted: 4, ..AT },
            7,
        );
        assert_eq!(
            (v.counter, v.log),
            (Counter::Retried, Log::AttemptFailed { next_at: 7 })
        );
    }

    #[test]
    fn deferrals_give_the_attempt_back_and_kills_end_it() {
        let v = verdict(Outcome::Defer(Defer::HandBack, "h".into()), AT, 0);
        assert_eq!(
            (v.answer, v.counter, v.intent, v.log),
            (
                Answer::Defer("h".into()),
                Counter::HandedBack,
                Some(Intent::GiveBack { attempt: 3 }),
                Log::Quiet
            )
        );
        assert_eq!(
            verdict(Outcome::Defer(Defer::PutBack, "p".into()), AT, 0).counter,
            Counter::PutBack
        );
        let v = verdict(Outcome::Kill("k".into()), AT, 0);
        assert_eq!(
            (v.answer, v.counter, v.intent, v.log),
            (
                Answer::Kill("k".into()),
                Counter::Failed,
                None,
                Log::FailedForGood
            )
        );
        let v = verdict(Outcome::Done, AT, 0);
        assert_eq!(
            (v.answer, v.counter, v.intent),
            (Answer::Done, Counter::Done, None)
        );
    }
}
