//! Pure decisions of the PostgreSQL store: whether apalis can read a claimed row (the shield
//! fails for good only rows it cannot), and how a give-back stands.

use crate::queue::store::Settled;

/// What the checks need of a row the next fetch would claim (read by `sql::candidates`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgRow {
    pub(crate) id: String,
    /// What apalis cannot read as it is (`job` and `attempts` are `NOT NULL` in its schema):
    /// a time a second or more before 1970 (`run_at`, `done_at`: apalis reads times as whole
    /// seconds since 1970, unsigned, truncated toward zero), a metadata key without a value.
    pub(crate) run_at_before_1970: bool,
    pub(crate) done_at_before_1970: bool,
    pub(crate) metadata_null_value: bool,
    /// `last_result` as text (apalis decodes it into a JSON value).
    pub(crate) last_result: Option<String>,
}

/// Why apalis-postgres 1.0 cannot turn `row` into a task (its row conversion: a ULID id
/// written as the ULID prints, times since 1970, metadata values, a `last_result` its JSON
/// reader takes: nested at most 128 deep, numbers within `f64`); `Ok` if it can.
pub(crate) fn unreadable(row: &PgRow) -> Result<(), String> {
    let id = &row.id;
    match ulid::Ulid::from_string(id) {
        Err(_) => {
            return Err(format!(
                "its id {id:?} is not a ULID (apalis-postgres reads task ids as ULIDs)"
            ))
        }
        // apalis locks and acknowledges a task by its id as the ULID prints: another spelling
        // is read, but its lock and acknowledgement miss the row.
        Ok(ulid) if ulid.to_string() != *id => {
            return Err(format!(
                "its id {id:?} is not written as apalis writes it back ({ulid})"
            ))
        }
        Ok(_) => {}
    }
    let problems = [
        (row.run_at_before_1970, "its run_at is before 1970"),
        (row.done_at_before_1970, "its done_at is before 1970"),
        (
            row.metadata_null_value,
            "its metadata has a key whose value is NULL",
        ),
    ];
    if let Some((_, why)) = problems.iter().find(|(found, _)| *found) {
        return Err((*why).to_owned());
    }
    match row
        .last_result
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        Some(Err(e)) => Err(format!("its last_result is not JSON apalis reads: {e}")),
        _ => Ok(()),
    }
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

    fn good() -> PgRow {
        PgRow {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            run_at_before_1970: false,
            done_at_before_1970: false,
            metadata_null_value: false,
            last_result: Some(r#"{"Err":"a reason"}"#.into()),
        }
    }

    #[test]
    fn a_row_apalis_reads_passes() {
        assert_eq!(unreadable(&good()), Ok(()));
        let no_result = PgRow {
            last_result: None,
            ..good()
        };
        assert_eq!(unreadable(&no_result), Ok(()));
        let deep_enough = PgRow {
            last_result: Some(format!("{}{}", "[".repeat(120), "]".repeat(120))),
            ..good()
        };
        assert_eq!(unreadable(&deep_enough), Ok(()));
    }

    #[test]
    fn each_unreadable_column_is_named() {
        let cases = [
            (
                PgRow {
                    id: "task-1".into(),
                    ..good()
                },
                "\"task-1\" is not a ULID",
            ),
            (
                PgRow {
                    id: "01arz3ndektsv4rrffq69g5fav".into(),
                    ..good()
                },
                "not written as apalis writes it back (01ARZ3NDEKTSV4RRFFQ69G5FAV)",
            ),
            (
                PgRow {
                    run_at_before_1970: true,
                    ..good()
                },
                "its run_at is before 1970",
            ),
            (
                PgRow {
                    done_at_before_1970: true,
                    ..good()
                },
                "its done_at is before 1970",
            ),
            (
                PgRow {
                    metadata_null_value: true,
                    ..good()
                },
                "metadata has a key whose value is NULL",
            ),
            (
                PgRow {
                    last_result: Some(format!("{}{}", "[".repeat(200), "]".repeat(200))),
                    ..good()
                },
                "its last_result is not JSON apalis reads: recursion limit exceeded",
            ),
            (
                PgRow {
                    last_result: Some(format!("{{\"Err\": 1{}}}", "0".repeat(400))),
                    ..good()
                },
                "its last_result is not JSON apalis reads: number out of range",
            ),
        ];
        for (row, why) in cases {
            let got = unreadable(&row).unwrap_err();
            assert!(got.contains(why), "{row:?}: {got}");
        }
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
