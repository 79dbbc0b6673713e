//! Pure decisions of the PostgreSQL store: what a claimed row becomes (a task to run, or why
//! it cannot run), and how a give-back stands.

use std::collections::HashMap;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::metadata::MetadataStore;
use apalis_core::task::status::Status;
use apalis_core::task::task_id::TaskId;
use apalis_core::task::Task;

use crate::queue::store::Settled;

/// The largest attempt count a claimed task may have: apalis' acknowledgement writes one more
/// back into an `integer` column.
pub(crate) const MOST_ATTEMPTS: i32 = i32::MAX;

/// A row the claim (`sql::claim`) took, as it read it. Text columns come as bytes (UTF-8, or
/// as stored in a `SQL_ASCII` database, which does not check them): text that is not UTF-8 is
/// not refused by the server on its way out (which failed the whole claim), but judged here,
/// in its row alone.
/// Times are seconds since 1970 (`extract(epoch …)`, negative before).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PgRow {
    pub(crate) id: Vec<u8>,
    pub(crate) job: Option<Vec<u8>>,
    pub(crate) attempts: Option<i32>,
    pub(crate) max_attempts: Option<i32>,
    pub(crate) run_at: Option<f64>,
    pub(crate) lock_at: Option<f64>,
    pub(crate) done_at: Option<f64>,
    pub(crate) priority: Option<i32>,
    pub(crate) idempotency_key: Option<Vec<u8>>,
    /// Keys and values (`NULL` or not).
    pub(crate) metadata: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// The task a row of `queue` runs as, or why it cannot run: apalis-postgres acknowledges a
/// task by its id as the ULID prints (another spelling would never be acknowledged) and writes
/// its attempt count back into an `integer`; a task's text is UTF-8. Everything else is read as
/// it can be: a time before 1970 as 1970, a metadata key without a value left out (apalis' own
/// reader refuses or panics on these, and on a `last_result` it cannot parse, which the claim
/// does not read). `max_attempts` is passed on as apalis reads it (the worker judges it).
pub(crate) fn task_of(row: PgRow, queue: &str) -> Result<Task<Vec<u8>>, String> {
    let id = text(row.id, "id")?;
    let ulid = match ulid::Ulid::from_string(&id) {
        Err(_) => {
            return Err(format!(
                "its id {id:?} is not a ULID (apalis-postgres reads task ids as ULIDs)"
            ))
        }
        Ok(ulid) if ulid.to_string() != id => {
            return Err(format!(
                "its id {id:?} is not written as apalis writes it back ({ulid})"
            ))
        }
        Ok(ulid) => ulid,
    };
    let attempts = match row.attempts {
        Some(n) if (0..MOST_ATTEMPTS).contains(&n) => n as usize,
        Some(n) => {
            return Err(format!(
                "its stored attempts ({n}) is out of the range 0..{MOST_ATTEMPTS}"
            ))
        }
        None => return Err("its attempts is NULL".to_owned()),
    };
    let Some(job) = row.job else {
        return Err("its job is NULL".to_owned());
    };
    let key = row
        .idempotency_key
        .map(|k| text(k, "idempotency_key"))
        .transpose()?;
    let metadata = row
        .metadata
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .map(|(key, value)| Ok((text(key, "metadata key")?, text(value, "metadata value")?)))
        .collect::<Result<HashMap<String, String>, String>>()?;
    let mut task = TaskBuilder::new(job)
        .task_id(TaskId::from_ulid(ulid))
        .queue(queue.into())
        .status(Status::Running)
        .attempt(attempts)
        .max_attempts(row.max_attempts.map_or(25, |n| n as usize))
        .run_at_timestamp(row.run_at.map_or(0, seconds))
        .lock_at(row.lock_at.map(seconds))
        .done_at(row.done_at.map(seconds))
        .priority(row.priority.map_or(0, |n| n as usize))
        .with_metadata(MetadataStore::from_map(metadata));
    if let Some(key) = key {
        task = task.idempotency_key(key);
    }
    Ok(task.build())
}

/// A text column's bytes as text, or why not.
fn text(bytes: Vec<u8>, column: &str) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("its {column} is not UTF-8 text ({e})"))
}

/// Whole seconds since 1970 of a time read as `extract(epoch …)`: 0 for a time before.
fn seconds(t: f64) -> u64 {
    // (A float-to-integer cast saturates: NaN is 0, infinity the largest.)
    t.max(0.0) as u64
}

/// Where a give-back (a deferral whose attempt is given back) stands. PostgreSQL's fetch takes
/// a waiting task whoever holds it, so the give-back is done in the transaction that writes
/// apalis' acknowledgement: no other worker can take the task between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveBack {
    /// Prepared; its acknowledgement has not been written.
    Waiting,
    /// In the transaction writing its acknowledgement.
    Applying,
    /// Written with its acknowledgement: the task is free, its attempt given back.
    Applied,
    /// Its acknowledgement found the task no longer this worker's.
    Missed,
}

/// What a `settle` of a give-back answers, from where it stands and, unless that settles it,
/// the task's row as read now (its status and holder).
pub(crate) fn give_back_settled(
    stands: Option<GiveBack>,
    row: Option<(&str, Option<&str>)>,
    worker: &str,
) -> Settled {
    match stands {
        Some(GiveBack::Applied) => Settled::Done,
        Some(GiveBack::Missed) => Settled::Gone,
        Some(GiveBack::Applying) => Settled::NotYet,
        Some(GiveBack::Waiting) | None => match row {
            Some((status, Some(holder)))
                if holder == worker && matches!(status, "Queued" | "Running") =>
            {
                Settled::NotYet
            }
            _ => Settled::Gone,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    fn good() -> PgRow {
        PgRow {
            id: ID.into(),
            job: Some(b"7".to_vec()),
            attempts: Some(2),
            max_attempts: Some(5),
            run_at: Some(1_700_000_000.75),
            lock_at: Some(1_700_000_100.0),
            done_at: None,
            priority: Some(3),
            idempotency_key: Some(b"k1".to_vec()),
            metadata: vec![(b"trace".to_vec(), Some(b"t1".to_vec()))],
        }
    }

    #[test]
    fn a_good_row_becomes_its_task() {
        let task = task_of(good(), "q").unwrap();
        assert_eq!(task.args, b"7".to_vec());
        assert_eq!(task.task_id().unwrap().to_string(), ID);
        let ctx = task.ctx();
        assert_eq!(ctx.attempt(), 2);
        assert_eq!(ctx.max_attempts(), Some(5));
        assert_eq!(ctx.run_at(), Some(1_700_000_000));
        assert_eq!(ctx.priority(), Some(3));
        assert_eq!(ctx.queue().as_ref().map(|q| q.as_ref()), Some("q"));
        assert_eq!(ctx.metadata().get("trace"), Some("t1"));
        assert_eq!(task.ctx().idempotency_key(), Some("k1"));
    }

    #[test]
    fn what_apalis_reads_as_it_can_runs() {
        let odd = PgRow {
            run_at: Some(-86_400.0 * 3650.0),
            done_at: Some(-1.5),
            metadata: vec![
                (b"gone".to_vec(), None),
                (b"kept".to_vec(), Some(Vec::new())),
            ],
            max_attempts: None,
            attempts: Some(MOST_ATTEMPTS - 1),
            ..good()
        };
        let task = task_of(odd, "q").unwrap();
        let ctx = task.ctx();
        assert_eq!(ctx.run_at(), Some(0), "before 1970 reads as 1970");
        assert_eq!(ctx.max_attempts(), Some(25), "apalis' default");
        assert_eq!(ctx.attempt(), (MOST_ATTEMPTS - 1) as usize);
        assert!(ctx.metadata().get("gone").is_none());
        assert_eq!(ctx.metadata().get("kept"), Some(""));
        let negative_max = PgRow {
            max_attempts: Some(-5),
            ..good()
        };
        assert_eq!(
            task_of(negative_max, "q").unwrap().ctx().max_attempts(),
            Some(-5_i64 as usize),
            "passed on as apalis reads it, for the worker to judge"
        );
    }

    #[test]
    fn a_row_that_cannot_run_is_named() {
        let cases = [
            (
                PgRow {
                    id: b"task-1".to_vec(),
                    ..good()
                },
                "\"task-1\" is not a ULID",
            ),
            (
                PgRow {
                    id: ID.to_lowercase().into_bytes(),
                    ..good()
                },
                "not written as apalis writes it back (01ARZ3NDEKTSV4RRFFQ69G5FAV)",
            ),
            (
                PgRow {
                    id: b"8ZZZZZZZZZZZZZZZZZZZZZZZZZ".to_vec(),
                    ..good()
                },
                "is not written as apalis writes it back (",
            ),
            (
                PgRow {
                    attempts: Some(MOST_ATTEMPTS),
                    ..good()
                },
                "its stored attempts (2147483647) is out of the range 0..2147483647",
            ),
            (
                PgRow {
                    attempts: Some(-2),
                    ..good()
                },
                "its stored attempts (-2) is out of the range",
            ),
            (
                PgRow {
                    attempts: None,
                    ..good()
                },
                "its attempts is NULL",
            ),
            (
                PgRow {
                    job: None,
                    ..good()
                },
                "its job is NULL",
            ),
            (
                PgRow {
                    id: vec![b'0', 0xff],
                    ..good()
                },
                "its id is not UTF-8 text",
            ),
            (
                PgRow {
                    idempotency_key: Some(vec![0xff]),
                    ..good()
                },
                "its idempotency_key is not UTF-8 text",
            ),
            (
                PgRow {
                    metadata: vec![(vec![0xc3], Some(b"v".to_vec()))],
                    ..good()
                },
                "its metadata key is not UTF-8 text",
            ),
            (
                PgRow {
                    metadata: vec![(b"k".to_vec(), Some(vec![0xff, 0xfe]))],
                    ..good()
                },
                "its metadata value is not UTF-8 text",
            ),
        ];
        for (row, why) in cases {
            let got = task_of(row.clone(), "q").unwrap_err();
            assert!(got.contains(why), "{row:?}: {got}");
        }
    }

    #[test]
    fn seconds_saturate() {
        assert_eq!(seconds(-0.5), 0);
        assert_eq!(seconds(12.99), 12);
        assert_eq!(seconds(f64::INFINITY), u64::MAX);
        assert_eq!(seconds(f64::NAN), 0);
    }

    #[test]
    fn a_give_back_is_done_only_once_written_with_its_acknowledgement() {
        let ours = Some(("Running", Some("w1")));
        assert_eq!(
            give_back_settled(Some(GiveBack::Applied), None, "w1"),
            Settled::Done
        );
        assert_eq!(
            give_back_settled(Some(GiveBack::Missed), ours, "w1"),
            Settled::Gone
        );
        assert_eq!(
            give_back_settled(Some(GiveBack::Applying), None, "w1"),
            Settled::NotYet,
            "its transaction may still commit"
        );
        for stands in [Some(GiveBack::Waiting), None] {
            for status in ["Queued", "Running"] {
                assert_eq!(
                    give_back_settled(stands, Some((status, Some("w1"))), "w1"),
                    Settled::NotYet,
                    "{status}: not acknowledged yet"
                );
                assert_eq!(
                    give_back_settled(stands, Some((status, Some("w2"))), "w1"),
                    Settled::Gone
                );
            }
            for row in [
                Some(("Pending", Some("w1"))),
                Some(("Pending", None)),
                Some(("Done", Some("w1"))),
                None,
            ] {
                assert_eq!(
                    give_back_settled(stands, row, "w1"),
                    Settled::Gone,
                    "{row:?}"
                );
            }
        }
    }
}
