//! Pure decisions of the SQLite store: whether apalis can read a claimed row (the shield
//! fails for good only rows it cannot), when the planner's statistics are stale, what a
//! give-back that found nothing to unlock means, and whether a failed setup is tried again.

use std::time::Duration;

use crate::queue::store::Settled;

/// A claimed row as stored: the columns apalis' fetch converts, as bytes or SQLite type names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRow {
    pub(crate) rowid: i64,
    pub(crate) id: Option<Vec<u8>>,
    /// The other text columns apalis reads: (name, bytes).
    pub(crate) texts: Vec<(&'static str, Option<Vec<u8>>)>,
    pub(crate) attempts_type: String,
    pub(crate) run_at_type: String,
    pub(crate) job_type: String,
}

/// Why apalis-sqlite 1.0 cannot turn `row` into a task (its row conversion: a ULID id,
/// non-NULL attempts, run_at and payload, UTF-8 text columns); `Ok` if it can.
pub(crate) fn unreadable(row: &StoredRow) -> Result<(), String> {
    let id = match &row.id {
        None => return Err("its id is NULL".to_owned()),
        Some(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| "its id is not UTF-8 text".to_owned())?
        }
    };
    // apalis writes the id back as the ULID prints (upper case): an id that does not print
    // the same is read, but its lock and acknowledgement miss the row.
    match ulid::Ulid::from_string(id) {
        Err(_) => {
            return Err(format!(
                "its id {id:?} is not a ULID (apalis-sqlite reads task ids as ULIDs)"
            ))
        }
        Ok(ulid) if ulid.to_string() != id => {
            return Err(format!(
                "its id {id:?} is not written as apalis writes it back ({ulid})"
            ))
        }
        Ok(_) => {}
    }
    for (column, ty) in [
        ("attempts", &row.attempts_type),
        ("run_at", &row.run_at_type),
        ("job", &row.job_type),
    ] {
        if ty == "null" {
            return Err(format!("its {column} is NULL"));
        }
    }
    for (column, bytes) in &row.texts {
        if bytes
            .as_deref()
            .is_some_and(|b| std::str::from_utf8(b).is_err())
        {
            return Err(format!("its {column} is not UTF-8 text"));
        }
    }
    Ok(())
}

/// The row's id for logs: its text, or its rowid.
pub(crate) fn shown_id(row: &StoredRow) -> String {
    row.id
        .as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .map_or_else(|| format!("rowid {}", row.rowid), str::to_owned)
}

/// Whether to `ANALYZE`: no statistics yet (and rows to analyze), or the table has more than
/// doubled since the statistics were taken at `analyzed` rows.
pub(crate) fn statistics_stale(analyzed: Option<i64>, rows: i64) -> bool {
    match analyzed {
        None => rows > 0,
        Some(at) => rows > at.saturating_mul(2).saturating_add(100),
    }
}

/// A give-back's unlock matched no row; the row as read just after (its status and holder):
/// whether `worker` should look again (`NotYet`) or the task is no longer its (`Gone`).
/// `Pending` and still held is an acknowledgement that landed between the two statements —
/// the next unlock matches it (answering `Gone` there left the task locked for good).
pub(crate) fn unlock_missed(row: Option<(&str, Option<&str>)>, worker: &str) -> Settled {
    match row {
        Some((status, Some(holder)))
            if holder == worker && matches!(status, "Queued" | "Running" | "Pending") =>
        {
            Settled::NotYet
        }
        _ => Settled::Gone,
    }
}

/// How long a setup may keep meeting a locked database: as long as a statement waits for a lock
/// (the pool's `busy_timeout`).
pub(crate) const SETUP_BUSY_LIMIT: Duration = Duration::from_secs(30);

/// Whether a failed setup of the queue file (apalis' pragmas and migrations) is tried again, and
/// after what pause. Processes that open one file together meet each other's locks — and some
/// lock conflicts (a journal-mode switch, a snapshot gone stale) answer `SQLITE_BUSY` at once,
/// without waiting out `busy_timeout` — so a locked database (`code` 5 or 6, extended codes
/// included, or the message says so) is tried again until [`SETUP_BUSY_LIMIT`] has passed;
/// anything else (two processes running the same migration) a few times. `tries` counts the
/// failures so far, `waited` the time since the first.
pub(crate) fn setup_again(
    code: Option<&str>,
    message: &str,
    tries: u32,
    waited: Duration,
) -> Option<Duration> {
    let primary = code.and_then(|c| c.parse::<i64>().ok()).map(|c| c & 0xff);
    let locked = matches!(primary, Some(5 | 6))
        || message.contains("database is locked")
        || message.contains("database table is locked");
    let pause = Duration::from_millis(50 * u64::from(tries.clamp(1, 10)));
    if locked {
        (waited < SETUP_BUSY_LIMIT).then_some(pause)
    } else {
        (tries < 5).then_some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_give_back_looks_again_only_while_the_row_is_still_its() {
        for status in ["Queued", "Running", "Pending"] {
            assert_eq!(
                unlock_missed(Some((status, Some("w1"))), "w1"),
                Settled::NotYet,
                "{status}"
            );
            assert_eq!(
                unlock_missed(Some((status, Some("w2"))), "w1"),
                Settled::Gone,
                "{status}"
            );
            assert_eq!(unlock_missed(Some((status, None)), "w1"), Settled::Gone);
        }
        for status in ["Done", "Failed", "Killed"] {
            assert_eq!(
                unlock_missed(Some((status, Some("w1"))), "w1"),
                Settled::Gone,
                "{status}"
            );
        }
        assert_eq!(unlock_missed(None, "w1"), Settled::Gone);
    }

    fn good() -> StoredRow {
        StoredRow {
            rowid: 7,
            id: Some(b"01ARZ3NDEKTSV4RRFFQ69G5FAV".to_vec()),
            texts: vec![("metadata", Some(b"{}".to_vec())), ("last_result", None)],
            attempts_type: "integer".into(),
            run_at_type: "integer".into(),
            job_type: "blob".into(),
        }
    }

    #[test]
    fn a_row_apalis_reads_passes() {
        assert_eq!(unreadable(&good()), Ok(()));
        let no_meta = StoredRow {
            texts: vec![("metadata", None)],
            job_type: "text".into(),
            ..good()
        };
        assert_eq!(unreadable(&no_meta), Ok(()));
        assert_eq!(shown_id(&good()), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    }

    #[test]
    fn each_unreadable_column_is_named() {
        let cases = [
            (StoredRow { id: None, ..good() }, "its id is NULL"),
            (
                StoredRow {
                    id: Some(vec![0xff]),
                    ..good()
                },
                "not UTF-8",
            ),
            (
                StoredRow {
                    id: Some(b"task-1".to_vec()),
                    ..good()
                },
                "\"task-1\" is not a ULID",
            ),
            (
                StoredRow {
                    id: Some(b"01arz3ndektsv4rrffq69g5fav".to_vec()),
                    ..good()
                },
                "not written as apalis writes it back (01ARZ3NDEKTSV4RRFFQ69G5FAV)",
            ),
            (
                StoredRow {
                    attempts_type: "null".into(),
                    ..good()
                },
                "its attempts is NULL",
            ),
            (
                StoredRow {
                    run_at_type: "null".into(),
                    ..good()
                },
                "its run_at is NULL",
            ),
            (
                StoredRow {
                    job_type: "null".into(),
                    ..good()
                },
                "its job is NULL",
            ),
            (
                StoredRow {
                    texts: vec![("metadata", Some(vec![0xc3]))],
                    ..good()
                },
                "its metadata is not UTF-8",
            ),
            (
                StoredRow {
                    texts: vec![("last_result", Some(vec![0xff, 0]))],
                    ..good()
                },
                "its last_result is not UTF-8",
            ),
        ];
        for (row, why) in cases {
            let got = unreadable(&row).unwrap_err();
            assert!(got.contains(why), "{row:?}: {got}");
        }
        assert_eq!(shown_id(&StoredRow { id: None, ..good() }), "rowid 7");
    }

    #[test]
    fn statistics_go_stale_when_the_table_doubles() {
        assert!(!statistics_stale(None, 0));
        assert!(statistics_stale(None, 1));
        assert!(!statistics_stale(Some(1000), 2100));
        assert!(statistics_stale(Some(1000), 2101));
        assert!(!statistics_stale(Some(i64::MAX), i64::MAX));
        assert!(statistics_stale(Some(0), 101));
    }

    #[test]
    fn a_locked_database_is_waited_out_anything_else_tried_a_few_times() {
        let early = Duration::from_millis(10);
        assert!(setup_again(Some("5"), "database is locked", 9, early).is_some());
        assert!(
            setup_again(Some("517"), "", 9, early).is_some(),
            "BUSY_SNAPSHOT"
        );
        assert!(setup_again(Some("6"), "", 9, early).is_some(), "LOCKED");
        assert!(setup_again(None, "(code: 5) database is locked", 9, early).is_some());
        assert_eq!(
            setup_again(Some("5"), "", 9, SETUP_BUSY_LIMIT),
            None,
            "not past the limit"
        );
        assert!(setup_again(Some("1"), "table already exists", 4, early).is_some());
        assert_eq!(
            setup_again(Some("1"), "table already exists", 5, early),
            None,
            "five tries for anything else"
        );
        assert_eq!(
            setup_again(Some("5"), "", 1, early),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            setup_again(Some("5"), "", 100, early),
            Some(Duration::from_millis(500)),
            "the pause is capped"
        );
    }
}
