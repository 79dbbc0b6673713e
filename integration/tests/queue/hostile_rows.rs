//! The hostile rows and hashes the tests write straight into SQLite and Redis (PostgreSQL's are in
//! `hostile_pg_rows.rs`): every kind of stored task apalis cannot read, or that the worker must
//! refuse, with the reason its result must name.

use std::path::Path;

use crate::fixtures::*;
use crate::hostile::{early_id, nested, unparsable_last_results, Hostile};

/// Writes every kind of unreadable SQLite row (each sorting before the ordinary tasks).
pub(crate) fn hostile_sqlite_rows(db: &Path, queue: &str, big: usize) -> Vec<Hostile> {
    let deep = format!("CAST('{}' AS BLOB)", nested(200));
    let huge = format!("CAST('\"{}\"' AS BLOB)", "x".repeat(big));
    let rows: Vec<(String, [String; 6], &'static str, &'static str)> = vec![
        (
            "deep payload".into(),
            [
                deep,
                "?".into(),
                "0".into(),
                "25".into(),
                "1".into(),
                "NULL".into(),
            ],
            "deep payload",
            "nested 200 levels",
        ),
        (
            "id not a ULID".into(),
            [
                "CAST('999' AS BLOB)".into(),
                "'task-not-a-ulid'".into(),
                "0".into(),
                "25".into(),
                "1".into(),
                "NULL".into(),
            ],
            "id not a ULID",
            "is not a ULID",
        ),
        (
            "attempts text".into(),
            [
                "CAST('999' AS BLOB)".into(),
                "?".into(),
                "'many'".into(),
                "25".into(),
                "1".into(),
                "NULL".into(),
            ],
            "attempts text (apalis reads it as 0: the task runs)",
            "",
        ),
        (
            "max_attempts negative".into(),
            [
                "CAST('999' AS BLOB)".into(),
                "?".into(),
                "0".into(),
                "-5".into(),
                "1".into(),
                "NULL".into(),
            ],
            "max_attempts negative",
            "max_attempts",
        ),
        (
            "max_attempts huge".into(),
            [
                "CAST('999' AS BLOB)".into(),
                "?".into(),
                "0".into(),
                "9223372036854775807".into(),
                "1".into(),
                "NULL".into(),
            ],
            "max_attempts huge",
            "max_attempts",
        ),
        (
            "payload not JSON".into(),
            [
                "X'FFFE00'".into(),
                "?".into(),
                "0".into(),
                "25".into(),
                "1".into(),
                "NULL".into(),
            ],
            "payload not JSON",
            "payload is not a u64",
        ),
        (
            "number out of range".into(),
            [
                "CAST('1e400' AS BLOB)".into(),
                "?".into(),
                "0".into(),
                "25".into(),
                "1".into(),
                "NULL".into(),
            ],
            "number out of range",
            "payload is not a u64",
        ),
        (
            "metadata not UTF-8".into(),
            [
                "CAST('999' AS BLOB)".into(),
                "?".into(),
                "0".into(),
                "25".into(),
                "1".into(),
                "X'C3'".into(),
            ],
            "metadata not UTF-8",
            "metadata",
        ),
        (
            "payload over the limit".into(),
            [
                huge,
                "?".into(),
                "0".into(),
                "25".into(),
                "1".into(),
                "NULL".into(),
            ],
            "payload over the limit",
            "over the queue's payload limit",
        ),
    ];
    let mut out = Vec::new();
    // A negative count (apalis reads it as a huge one) and an id whose top bits overflow (read
    // as another id).
    for (id, attempts, what, reason) in [
        (
            early_id(70),
            "-2",
            "attempts negative",
            "attempts (-2) is out of the range",
        ),
        (
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
            "0",
            "an overflowing ULID id",
            "not written as apalis writes it back",
        ),
    ] {
        let quoted = format!("'{id}'");
        raw_sqlite_row(
            db,
            queue,
            ["CAST('999' AS BLOB)", &quoted, attempts, "25", "1", "NULL"],
        );
        out.push(Hostile {
            id,
            what,
            reason: Some(reason),
        });
    }
    // A last result a JSON reader refuses: apalis-sqlite does not read it, so the task runs.
    for (n, (result, what)) in unparsable_last_results().into_iter().enumerate() {
        let id = early_id(72 + n);
        raw_sqlite(db)
            .execute(
                "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, \
                 priority, last_result) VALUES (CAST(?4 AS BLOB), ?1, ?2, 'Pending', 0, 25, 1, \
                 0, ?3)",
                // (A payload of its own: the job counts each value it runs.)
                (&id, queue, &result, (901 + n).to_string()),
            )
            .unwrap();
        out.push(Hostile {
            id,
            what,
            reason: None,
        });
    }
    // An id that reads as a ULID but is not written as apalis writes one back (lower case):
    // its lock and acknowledgement would miss the row.
    let lower = early_id(90).to_lowercase();
    raw_sqlite_row(
        db,
        queue,
        [
            "CAST('999' AS BLOB)",
            &format!("'{lower}'"),
            "0",
            "25",
            "1",
            "NULL",
        ],
    );
    out.push(Hostile {
        id: lower,
        what: "a lower-case ULID id",
        reason: Some("not written as apalis writes it back"),
    });
    for (n, (_, mut columns, what, reason)) in rows.into_iter().enumerate() {
        let reason = (!reason.is_empty()).then_some(reason);
        let id = if columns[1] == "?" {
            early_id(n)
        } else {
            columns[1].trim_matches('\'').to_owned()
        };
        columns[1] = format!("'{id}'");
        let c: [&str; 6] = std::array::from_fn(|i| columns[i].as_str());
        raw_sqlite_row(db, queue, c);
        out.push(Hostile { id, what, reason });
    }
    out
}

/// A Redis task as written: payload, meta fields, what it is, what its failure must name.
type RedisCase = (
    Option<Vec<u8>>,
    Vec<(&'static str, &'static [u8])>,
    &'static str,
    &'static str,
);

/// Writes every kind of unreadable Redis task.
pub(crate) fn hostile_redis_tasks(queue: &str, big: usize) -> Vec<Hostile> {
    let good: [(&str, &[u8]); 3] = [
        ("attempts", b"0"),
        ("max_attempts", b"25"),
        ("status", b"Pending"),
    ];
    let with = |field: &'static str, value: &'static [u8]| -> Vec<(&'static str, &'static [u8])> {
        let mut m: Vec<(&str, &[u8])> = good.iter().filter(|(f, _)| *f != field).copied().collect();
        m.push((field, value));
        m
    };
    let deep = nested(200);
    let huge = format!("\"{}\"", "x".repeat(big));
    let cases: Vec<RedisCase> = vec![
        (
            Some(deep.into_bytes()),
            good.to_vec(),
            "deep payload",
            "nested 200 levels",
        ),
        (
            Some(b"1".to_vec()),
            with("max_attempts", b"4294967296"),
            "max_attempts above u32",
            "max_attempts \"4294967296\"",
        ),
        (
            Some(b"1".to_vec()),
            with("max_attempts", b"18446744073709551615"),
            "max_attempts usize::MAX",
            "max_attempts",
        ),
        (
            Some(b"1".to_vec()),
            with("attempts", b"-1"),
            "attempts negative",
            "attempts \"-1\"",
        ),
        (Some(b"999".to_vec()), vec![], "no meta hash", "no attempts"),
        (None, good.to_vec(), "no payload", "no payload"),
        (
            Some(b"1".to_vec()),
            with("status", b"Bogus"),
            "status unknown",
            "status",
        ),
        (
            Some(vec![0xff, 0xfe]),
            good.to_vec(),
            "payload not JSON",
            "payload is not a u64",
        ),
        (
            Some(b"1".to_vec()),
            with("note", b"\xc3"),
            "meta not UTF-8",
            "not UTF-8",
        ),
        (
            Some(huge.into_bytes()),
            good.to_vec(),
            "payload over the limit",
            "over the queue's payload limit",
        ),
    ];
    let mut out = Vec::new();
    // Ids apalis reads but writes back otherwise ("007" as 7, a ULID in upper case): their
    // lock fails and every worker that fetched one restarted.
    for (id, what) in [
        ("007", "a number id with leading zeros"),
        ("01arz3ndektsv4rrffq69g5f91", "a lower-case ULID id"),
    ] {
        raw_redis_task(queue, id, Some(b"999"), &good);
        out.push(Hostile {
            id: id.to_owned(),
            what,
            reason: Some("not written as apalis writes it back"),
        });
    }
    // A meta key of another type: apalis' fetch script itself fails on it.
    let listed = early_id(92);
    raw_redis_task(queue, &listed, Some(b"999"), &[]);
    let _: () = redis::cmd("RPUSH")
        .arg(format!("{queue}:meta:{listed}"))
        .arg("not a hash")
        .query(&mut redis_conn())
        .unwrap();
    out.push(Hostile {
        id: listed,
        what: "a meta key that is a list",
        reason: Some("holds a list, not a hash"),
    });
    for (n, (data, meta, what, reason)) in cases.into_iter().enumerate() {
        let id = early_id(n);
        raw_redis_task(queue, &id, data.as_deref(), &meta);
        out.push(Hostile {
            id,
            what,
            reason: Some(reason),
        });
    }
    out
}
