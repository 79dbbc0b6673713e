//! Hostile tasks: payloads a worker could not read back are refused at push; stored tasks that
//! apalis cannot read (written by another producer, an older version, another language) fail
//! alone with their reason while every other task runs, and no worker restarts.

use std::path::Path;
use std::sync::Arc;

use leasepool::queue::{Queue, QueueError, QueueWorker, MAX_DEPTH};

use crate::fixtures::*;

/// JSON nested `levels` deep.
fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

fn nested_value(levels: usize) -> serde_json::Value {
    let mut v = serde_json::Value::Null;
    for _ in 0..levels {
        v = serde_json::Value::Array(vec![v]);
    }
    v
}

/// A ULID-shaped id that sorts before any id made today: fetched before the ordinary tasks.
fn early_id(n: usize) -> String {
    format!("01ARZ3NDEKTSV4RRFFQ69G5F{n:02}")
}

fn refused(r: Result<String, QueueError>, why: &str) {
    match r {
        Err(QueueError::Payload(t)) => assert!(t.contains(why), "expected {why:?} in: {t}"),
        other => panic!("expected a payload refusal naming {why:?}, got {other:?}"),
    }
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn payloads_a_worker_could_not_read_are_refused_at_push(kind: Kind) {
    let (queue, dir) = queue_for(kind, "refuse").await;
    // (Before the fix a payload nested deeper than serde_json reads was stored, and every
    // fetch failed on it: the queue stalled.)
    refused(
        queue.push("refuse", nested_value(MAX_DEPTH + 1)).await,
        &format!("nested {} levels", MAX_DEPTH + 1),
    );
    assert!(queue.push("refuse", nested_value(MAX_DEPTH)).await.is_ok());
    refused(
        queue.push("refuse", f64::NAN).await,
        "does not decode back as a f64",
    );
    let small = queue.clone().with_payload_limit(1000).unwrap();
    refused(
        small.push("refuse", "x".repeat(1000)).await,
        "1002 bytes, over the queue's payload limit of 1000",
    );
    assert!(small.push("refuse", "x".repeat(998)).await.is_ok());
    // One bad task in a batch pushes none, and names which one.
    let batch = vec![nested_value(1), nested_value(2), nested_value(300)];
    match queue.push_all("batch", batch).await {
        Err(QueueError::Payload(t)) => assert!(t.starts_with("task 2 of the batch"), "{t}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(queue.counts("batch").await.unwrap().total(), 0);
    assert!(matches!(
        queue.clone().with_payload_limit(0),
        Err(QueueError::InvalidArgument(t)) if t.contains("payload limit (0 bytes)")
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// A task written straight into the store (or pushed), and what must become of it.
struct Hostile {
    id: String,
    what: &'static str,
    /// What its stored result must name; `None`: it reads fine and runs (done).
    reason: Option<&'static str>,
}

/// Writes every kind of unreadable SQLite row (each sorting before the ordinary tasks).
fn hostile_sqlite_rows(db: &Path, queue: &str, big: usize) -> Vec<Hostile> {
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
    // A last result a JSON reader refuses (nested past 128 levels, beyond f64): apalis-sqlite
    // does not read it, so the task runs (apalis-postgres does: see the PostgreSQL rows).
    for (n, (result, what)) in [
        (
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
            "a last_result nested 200 deep",
        ),
        (
            "{\"Err\": 1e400}".to_owned(),
            "a last_result number beyond f64",
        ),
    ]
    .into_iter()
    .enumerate()
    {
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
fn hostile_redis_tasks(queue: &str, big: usize) -> Vec<Hostile> {
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

/// Writes every kind of PostgreSQL row apalis cannot read, or that the worker must refuse
/// (each sorting before the ordinary tasks: due an hour ago). `job` and `attempts` are
/// `NOT NULL` in apalis' schema, so no row lacks them.
fn hostile_postgres_rows(queue: &str, big: usize) -> Vec<Hostile> {
    let ulid = |n: usize| early_id(n);
    let deep = format!("convert_to('{}', 'UTF8')", nested(200));
    let huge = format!("convert_to('\"' || repeat('x', {big}) || '\"', 'UTF8')");
    let ago = "now() - interval '1 hour'";
    // (job, id, attempts, max_attempts, run_at, metadata, done_at, what, reason)
    type Row = (
        String,
        String,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );
    let rows: Vec<Row> = vec![
        (
            deep,
            ulid(0),
            "0",
            "25",
            ago,
            "NULL",
            "NULL",
            "deep payload",
            "nested 200 levels",
        ),
        (
            "'999'".into(),
            "task-not-a-ulid".into(),
            "0",
            "25",
            ago,
            "NULL",
            "NULL",
            "id not a ULID",
            "is not a ULID",
        ),
        (
            "'999'".into(),
            ulid(1).to_lowercase(),
            "0",
            "25",
            ago,
            "NULL",
            "NULL",
            "a lower-case ULID id",
            "not written as apalis writes it back",
        ),
        (
            "'999'".into(),
            ulid(2),
            "0",
            "-5",
            ago,
            "NULL",
            "NULL",
            "max_attempts negative",
            "max_attempts",
        ),
        (
            "'\\xfffe00'".into(),
            ulid(3),
            "0",
            "25",
            ago,
            "NULL",
            "NULL",
            "payload not JSON",
            "payload is not a u64",
        ),
        (
            "'1e400'".into(),
            ulid(4),
            "0",
            "25",
            ago,
            "NULL",
            "NULL",
            "number out of range",
            "payload is not a u64",
        ),
        (
            "'999'".into(),
            ulid(5),
            "0",
            "25",
            ago,
            "'note=>NULL'",
            "NULL",
            "a metadata value NULL",
            "metadata has a key whose value is NULL",
        ),
        (
            "'999'".into(),
            ulid(6),
            "0",
            "25",
            "'1960-01-01'",
            "NULL",
            "NULL",
            "run_at before 1970",
            "run_at is before 1970",
        ),
        (
            "'999'".into(),
            ulid(7),
            "0",
            "25",
            ago,
            "NULL",
            "'1960-01-01'",
            "done_at before 1970",
            "done_at is before 1970",
        ),
        (
            huge,
            ulid(8),
            "0",
            "25",
            ago,
            "NULL",
            "NULL",
            "payload over the limit",
            "over the queue's payload limit",
        ),
        (
            "'999'".into(),
            ulid(9),
            "0",
            "2147483647",
            ago,
            "NULL",
            "NULL",
            "max_attempts i32::MAX (within range: the task runs)",
            "",
        ),
        // apalis writes one more attempt back into an `integer`: its acknowledgement failed,
        // and the worker with it, for ever.
        (
            "'999'".into(),
            ulid(10),
            "2147483647",
            "25",
            ago,
            "NULL",
            "NULL",
            "attempts i32::MAX",
            "attempts (2147483647) is out of the range",
        ),
        (
            "'999'".into(),
            ulid(11),
            "-2",
            "25",
            ago,
            "NULL",
            "NULL",
            "attempts negative",
            "attempts (-2) is out of the range",
        ),
        // Read by apalis as a ULID whose top bits overflow: it prints as another id.
        (
            "'999'".into(),
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ".into(),
            "0",
            "25",
            ago,
            "NULL",
            "NULL",
            "an overflowing ULID id",
            "not written as apalis writes it back",
        ),
    ];
    let mut out = Vec::new();
    // A last result apalis' JSON reader refuses (nested past 128 levels, a number beyond f64):
    // every fetch failed on it.
    for (n, (result, what)) in [
        (
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
            "a last_result nested 200 deep",
        ),
        (
            "{\"Err\": 1e400}".to_owned(),
            "a last_result number beyond f64",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = ulid(20 + n);
        crate::postgres_server::psql(&format!(
            "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, \
             priority, last_result) VALUES ('999', '{id}', '{queue}', 'Pending', 0, 25, {ago}, 0, \
             '{result}')"
        ));
        out.push(Hostile {
            id,
            what,
            reason: Some("last_result is not JSON apalis reads"),
        });
    }
    out.extend(rows.into_iter().map(
        |(job, id, attempts, max, run_at, metadata, done_at, what, reason)| {
            crate::postgres_server::psql(&format!(
                "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, \
                 run_at, priority, metadata, done_at) VALUES ({job}, '{id}', '{queue}', \
                 'Pending', {attempts}, {max}, {run_at}, 0, {metadata}, {done_at})"
            ));
            Hostile {
                id,
                what,
                reason: (!reason.is_empty()).then_some(reason),
            }
        },
    ));
    out
}

/// A waiting PostgreSQL row of `queue`, due an hour ago.
fn raw_postgres_row(queue: &str, job: &str, id: &str, max_attempts: &str) {
    crate::postgres_server::psql(&format!(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at) \
         VALUES ({job}, '{id}', '{queue}', 'Pending', 0, {max_attempts}, now() - interval '1 hour')"
    ));
}

/// Ordinary tasks around hostile ones: the ordinary run once each, every hostile task fails
/// alone with its reason, and the worker never restarts.
async fn run_among_hostile(
    kind: Kind,
    queue: &Queue,
    name: &str,
    hostile: &[Hostile],
    ordinary: u64,
) {
    let m = manager(&format!("q-h-{name}"), 2).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, queue, name)
        .poll_interval(std::time::Duration::from_millis(5))
        .build_blocking(counting_job(&seen, 0))
        .unwrap();
    worker.start().unwrap();
    let total = ordinary + hostile.len() as u64;
    let runs = hostile.iter().filter(|h| h.reason.is_none()).count() as u64;
    testkit::until(
        "every task settled",
        || async { queue.counts(name).await.unwrap() },
        |c| c.done + c.failed >= total && c.pending == 0 && c.claimed == 0,
    )
    .await;
    let st = worker.stop().await;
    m.stop().await;
    let c = queue.counts(name).await.unwrap();
    assert_eq!(
        (c.done, c.failed),
        (ordinary + runs, hostile.len() as u64 - runs),
        "{kind:?}: {c:?}, {st:?}"
    );
    assert_eq!(
        tally(&seen, ordinary),
        (0, 0),
        "{kind:?}: ordinary tasks lost or run twice"
    );
    assert_eq!(
        st.restarts,
        0,
        "{kind:?}: the worker restarted: {:?}",
        worker.last_error()
    );
    for h in hostile {
        let t = queue
            .task(name, &h.id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}: gone", h.what));
        let stored = t.last_result.clone().unwrap_or_default();
        // apalis stores results as JSON: `{"Err": why}`.
        let result = serde_json::from_str::<serde_json::Value>(&stored)
            .ok()
            .and_then(|v| v.get("Err").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(stored);
        match h.reason {
            Some(reason) => assert!(
                t.status == "Killed" && result.contains(reason),
                "{kind:?}: the task with {} must fail for good naming {reason:?}: {t:?}",
                h.what
            ),
            None => assert_eq!(t.status, "Done", "{kind:?}: {}: {t:?}", h.what),
        }
    }
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn stored_tasks_apalis_cannot_read_fail_alone(kind: Kind) {
    let (queue, dir) = queue_for(kind, "unreadable").await;
    let queue = queue.with_payload_limit(64 << 10).unwrap();
    let name = "unreadable";
    let hostile = match kind {
        Kind::Sqlite => hostile_sqlite_rows(queue.path().unwrap(), name, 100 << 10),
        Kind::Redis => hostile_redis_tasks(name, 100 << 10),
        Kind::Postgres => hostile_postgres_rows(name, 100 << 10),
    };
    queue.push_all(name, 0..20_u64).await.unwrap();
    run_among_hostile(kind, &queue, name, &hostile, 20).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The SQL stores: their fetch reads a row's id as a ULID.
const SQL_STORES: &[(&str, Kind)] = &[("sqlite", Kind::Sqlite), ("postgres", Kind::Postgres)];

/// Ids that apalis reads as another ULID (lower case; top bits that overflow), alone among
/// ordinary tasks: no fetch fails, so no quarantine finds them first. The fetch that claims one
/// fails its row at once. (Before, the overflowing one stayed claimed by the worker for good.)
#[testkit::test(each = SQL_STORES)]
async fn ids_apalis_reads_as_another_fail_alone(kind: Kind) {
    let (queue, dir) = queue_for(kind, "misread").await;
    let name = "misread";
    let mut hostile = Vec::new();
    for (id, what) in [
        // (Not the other tests' ids: on PostgreSQL an id is one key across queues.)
        (
            "9ZZZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
            "an overflowing ULID id",
        ),
        (early_id(60).to_lowercase(), "a lower-case ULID id"),
    ] {
        match kind {
            Kind::Sqlite => {
                let quoted = format!("'{id}'");
                raw_sqlite_row(
                    queue.path().unwrap(),
                    name,
                    ["CAST('999' AS BLOB)", &quoted, "0", "25", "1", "NULL"],
                );
            }
            _ => raw_postgres_row(name, "'999'", &id, "25"),
        }
        hostile.push(Hostile {
            id,
            what,
            reason: Some("not written as apalis writes it back"),
        });
    }
    queue.push_all(name, 0..10_u64).await.unwrap();
    run_among_hostile(kind, &queue, name, &hostile, 10).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A small deterministic generator (xorshift), so that a failing seed can be run again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Property: random hostile payloads among ordinary tasks — refused at push when a worker could
/// not read them back, failed alone (with a reason) when pushed or written anyway — never cost
/// an ordinary task, never restart a worker, never make it claim a task twice.
#[testkit::test(each = crate::fixtures::STORES)]
async fn hostile_payloads_never_stall_a_queue(kind: Kind) {
    const LIMIT: usize = 256 << 10;
    for seed in [
        0x9e37_79b9_7f4a_7c15_u64,
        0xdead_beef_cafe_f00d,
        0x0123_4567_89ab_cdef,
    ] {
        let (queue, dir) = queue_for(kind, &format!("prop-{seed:x}")).await;
        let queue = queue.with_payload_limit(LIMIT).unwrap();
        let name = format!("prop{}", seed % 1000);
        let mut rng = Rng(seed);
        let mut failing = Vec::new();
        let mut refused_n = 0;
        let mut ordinary = 0;
        for _ in 0..30 {
            match rng.below(8) {
                0..=3 => {
                    queue.push(&name, ordinary).await.unwrap();
                    ordinary += 1;
                }
                4 => {
                    // Refused at push: too deep, too big, or not readable back.
                    let r = match rng.below(3) {
                        0 => {
                            queue
                                .push(&name, nested_value(MAX_DEPTH + 1 + rng.below(300) as usize))
                                .await
                        }
                        1 => {
                            queue
                                .push(&name, "y".repeat(LIMIT + rng.below(2 << 20) as usize))
                                .await
                        }
                        _ => queue.push(&name, f64::INFINITY).await,
                    };
                    assert!(matches!(r, Err(QueueError::Payload(_))), "{r:?}");
                    refused_n += 1;
                }
                5 | 6 => {
                    // Accepted (valid JSON a worker reads), but not the worker's type.
                    let (id, reason) = match rng.below(4) {
                        0 => (
                            queue
                                .push(&name, "z".repeat(rng.below(LIMIT as u64 - 2) as usize))
                                .await,
                            "payload is not a u64",
                        ),
                        1 => (
                            queue
                                .push(&name, serde_json::json!({"a": [1, 2, {"b": null}]}))
                                .await,
                            "payload is not a u64",
                        ),
                        2 => (
                            queue.push(&name, -(rng.below(1 << 40) as i64) - 1).await,
                            "payload is not a u64",
                        ),
                        _ => (
                            queue
                                .push(&name, 1e300_f64 * (1 + rng.below(9)) as f64)
                                .await,
                            "payload is not a u64",
                        ),
                    };
                    failing.push(Hostile {
                        id: id.unwrap(),
                        what: "a payload of the wrong shape",
                        reason: Some(reason),
                    });
                }
                _ => {
                    // Written straight into the store.
                    let n = failing.len() + 40;
                    // PostgreSQL's ids are one key across queues: one set per seed.
                    let id = match kind {
                        Kind::Postgres => format!("01ARZ3NDEKTSV4RR{:06}{n:04}", seed % 1_000_000),
                        _ => early_id(n),
                    };
                    let (what, reason) = match (kind, rng.below(3)) {
                        (Kind::Sqlite, 0) => {
                            raw_sqlite_row(
                                queue.path().unwrap(),
                                &name,
                                [
                                    &format!(
                                        "CAST('{}' AS BLOB)",
                                        nested(MAX_DEPTH + 1 + rng.below(200) as usize)
                                    ),
                                    &format!("'{id}'"),
                                    "0",
                                    "25",
                                    "1",
                                    "NULL",
                                ],
                            );
                            ("a deep stored payload", "levels deep")
                        }
                        (Kind::Sqlite, 1) => {
                            raw_sqlite_row(
                                queue.path().unwrap(),
                                &name,
                                [
                                    "CAST('3' AS BLOB)",
                                    &format!("'{id}'"),
                                    "0",
                                    &format!("{}", -1 - rng.below(1 << 50) as i64),
                                    "1",
                                    "NULL",
                                ],
                            );
                            ("a negative max_attempts", "max_attempts")
                        }
                        (Kind::Sqlite, _) => {
                            raw_sqlite_row(
                                queue.path().unwrap(),
                                &name,
                                [
                                    "CAST('3' AS BLOB)",
                                    &format!("'bad-id-{n}'"),
                                    "'x'",
                                    "25",
                                    "1",
                                    "NULL",
                                ],
                            );
                            failing.push(Hostile {
                                id: format!("bad-id-{n}"),
                                what: "a row apalis cannot read",
                                reason: Some("apalis cannot read"),
                            });
                            continue;
                        }
                        (Kind::Postgres, 0) => {
                            let deep = nested(MAX_DEPTH + 1 + rng.below(200) as usize);
                            raw_postgres_row(
                                &name,
                                &format!("convert_to('{deep}', 'UTF8')"),
                                &id,
                                "25",
                            );
                            ("a deep stored payload", "levels deep")
                        }
                        (Kind::Postgres, 1) => {
                            let max = format!("{}", -1 - rng.below(1 << 30) as i64);
                            raw_postgres_row(&name, "'3'", &id, &max);
                            ("a negative max_attempts", "max_attempts")
                        }
                        (Kind::Postgres, _) => {
                            let bad = format!("bad-id-{seed:x}-{n}");
                            raw_postgres_row(&name, "'3'", &bad, "25");
                            failing.push(Hostile {
                                id: bad,
                                what: "a row apalis cannot read",
                                reason: Some("apalis cannot read"),
                            });
                            continue;
                        }
                        (Kind::Redis, 0) => {
                            raw_redis_task(
                                &name,
                                &id,
                                Some(nested(MAX_DEPTH + 1 + rng.below(200) as usize).as_bytes()),
                                &[
                                    ("attempts", b"0"),
                                    ("max_attempts", b"25"),
                                    ("status", b"Pending"),
                                ],
                            );
                            ("a deep stored payload", "levels deep")
                        }
                        (Kind::Redis, 1) => {
                            let big = format!("{}", u64::from(u32::MAX) + 1 + rng.below(1 << 40));
                            let big: &'static [u8] = Box::leak(big.into_bytes().into_boxed_slice());
                            raw_redis_task(
                                &name,
                                &id,
                                Some(b"3"),
                                &[
                                    ("attempts", b"0"),
                                    ("max_attempts", big),
                                    ("status", b"Pending"),
                                ],
                            );
                            ("max_attempts above u32", "apalis cannot read")
                        }
                        (Kind::Redis, _) => {
                            raw_redis_task(
                                &name,
                                &id,
                                None,
                                &[
                                    ("attempts", b"0"),
                                    ("max_attempts", b"25"),
                                    ("status", b"Pending"),
                                ],
                            );
                            ("no payload", "no payload")
                        }
                    };
                    failing.push(Hostile {
                        id,
                        what,
                        reason: Some(reason),
                    });
                }
            }
        }
        println!("    {kind:?} seed {seed:x}: {ordinary} ordinary, {} failing, {refused_n} refused at push", failing.len());
        run_among_hostile(kind, &queue, &name, &failing, ordinary).await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
