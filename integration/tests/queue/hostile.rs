//! Hostile tasks: payloads a worker could not read back are refused at push; stored tasks that
//! apalis cannot read (written by another producer, an older version, another language) fail
//! alone with their reason while every other task runs, and no worker restarts.

use std::sync::Arc;

use leasepool::queue::{Queue, QueueError, QueueWorker, MAX_DEPTH};

use crate::fixtures::*;
use crate::hostile_pg_rows::{hostile_postgres_rows, raw_postgres_row};
use crate::hostile_rows::{hostile_redis_tasks, hostile_sqlite_rows};

/// Last results a JSON reader refuses (nested past 128 levels, a number beyond `f64`), and
/// what each is.
pub(crate) fn unparsable_last_results() -> [(String, &'static str); 2] {
    [
        (
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
            "a last_result nested 200 deep",
        ),
        (
            "{\"Err\": 1e400}".to_owned(),
            "a last_result number beyond f64",
        ),
    ]
}

/// JSON nested `levels` deep.
pub(crate) fn nested(levels: usize) -> String {
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
pub(crate) fn early_id(n: usize) -> String {
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
pub(crate) struct Hostile {
    pub(crate) id: String,
    pub(crate) what: &'static str,
    /// What its stored result must name; `None`: it reads fine and runs (done).
    pub(crate) reason: Option<&'static str>,
}

/// Ordinary tasks around hostile ones: the ordinary run once each, every hostile task fails
/// alone with its reason, and the worker never restarts.
pub(crate) async fn run_among_hostile(
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
