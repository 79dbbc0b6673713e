//! The hostile PostgreSQL rows the tests write straight into `apalis.jobs`: every kind of
//! stored task apalis' reader refuses or the worker must refuse, with the reason its result
//! must name (or none: leasepool's claim reads it, and it runs).

use crate::hostile::{early_id, nested, unparsable_last_results, Hostile};

/// Writes every kind of PostgreSQL row apalis cannot read, or that the worker must refuse
/// (each sorting before the ordinary tasks: due an hour ago). `job` and `attempts` are
/// `NOT NULL` in apalis' schema, so no row lacks them.
pub(crate) fn hostile_postgres_rows(queue: &str, big: usize) -> Vec<Hostile> {
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
    // (Rows that run have payloads of their own: a run twice would show.)
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
            "'1005'".into(),
            ulid(5),
            "0",
            "25",
            ago,
            "'note=>NULL'",
            "NULL",
            "a metadata value NULL (the key is left out: the task runs)",
            "",
        ),
        (
            "'1006'".into(),
            ulid(6),
            "0",
            "25",
            "'1960-01-01'",
            "NULL",
            "NULL",
            "run_at before 1970 (read as 1970: the task runs)",
            "",
        ),
        (
            "'1007'".into(),
            ulid(7),
            "0",
            "25",
            ago,
            "NULL",
            "'1960-01-01'",
            "done_at before 1970 (read as 1970: the task runs)",
            "",
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
    // A last result apalis' JSON reader refuses: every apalis fetch failed on it; leasepool's
    // claim does not read it, and the task runs.
    for (n, (result, what)) in unparsable_last_results().into_iter().enumerate() {
        let id = ulid(20 + n);
        crate::postgres_server::psql(&format!(
            "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, \
             priority, last_result) VALUES ('{}', '{id}', '{queue}', 'Pending', 0, 25, {ago}, 0, \
             '{result}')",
            1020 + n
        ));
        out.push(Hostile {
            id,
            what,
            reason: None,
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
pub(crate) fn raw_postgres_row(queue: &str, job: &str, id: &str, max_attempts: &str) {
    crate::postgres_server::psql(&format!(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at) \
         VALUES ({job}, '{id}', '{queue}', 'Pending', 0, {max_attempts}, now() - interval '1 hour')"
    ));
}
