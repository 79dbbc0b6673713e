//! Pure decisions of the Redis store: owed-attempt marks, settling members, and whether
//! apalis-redis can read a claimed task (the shield fails for good only tasks it cannot).

use std::str::FromStr as _;

use apalis_core::task::status::Status;
use apalis_core::task::task_id::TaskId;

use crate::queue::store::Intent;

/// The prefix of the fields of a task's meta hash that mark attempts it is owed:
/// `leasepool_owed:<a>` is a deferral (put-back, hand-back) acknowledged at attempt `a` whose
/// worker has not given the attempt back — another worker took the task from the schedule
/// first. A mark counts once the stored attempts reached `a` (the acknowledgement landed); one
/// above them is from an acknowledgement that never landed and is stale for good (the task left
/// its worker's in-flight set), so the next worker to fetch the task deletes it. apalis hands
/// every unknown meta field to the task's metadata, so a fetched task carries its marks.
pub(crate) const OWED: &str = "leasepool_owed:";

/// The attempts `fields` (a task's meta data) owe at `stored` attempts, and the stale marks.
pub(crate) fn owed<'a>(
    fields: impl IntoIterator<Item = (&'a String, &'a String)>,
    stored: u64,
) -> (u64, Vec<String>) {
    let mut owed = 0;
    let mut stale = Vec::new();
    for (field, _) in fields {
        if let Some(at) = field.strip_prefix(OWED) {
            match at.parse::<u64>() {
                Ok(at) if at <= stored => owed += 1,
                _ => stale.push(field.clone()),
            }
        }
    }
    (owed, stale)
}

/// The settling-set member of `intent` for task `id` (see the scripts' module docs).
pub(crate) fn settling_member(id: &str, intent: &Intent) -> String {
    match intent {
        Intent::GiveBack { attempt } => format!("{id}|{attempt}|g"),
        Intent::RetryAt { attempt, at } => format!("{id}|{attempt}|r{at}"),
    }
}

/// Why apalis-redis 1.0 cannot run a claimed task (its `deserialize_with_meta`: a task id
/// written as apalis writes it back, UTF-8 meta fields, `attempts` and `max_attempts` that fit
/// a `u32`, a known status, a payload); `Ok` if it can. `meta` is the flat field/value list of
/// the task's meta hash.
pub(crate) fn unreadable(id: &[u8], meta: &[Vec<u8>], has_payload: bool) -> Result<(), String> {
    let id = std::str::from_utf8(id).map_err(|_| "its id is not UTF-8".to_owned())?;
    let parsed = TaskId::from_str(id).map_err(|e| format!("its id: {e}"))?;
    // apalis locks and acknowledges a task by its id as it prints (a ULID in upper case, a
    // number without leading zeros): an id that does not print the same is read, but its lock
    // fails and every worker that fetches it restarts.
    if parsed.to_string() != id {
        return Err(format!(
            "its id {id:?} is not written as apalis writes it back ({parsed})"
        ));
    }
    if meta.len() % 2 != 0 {
        return Err("its meta hash has an odd number of fields".to_owned());
    }
    let mut get = std::collections::HashMap::new();
    for pair in meta.chunks(2) {
        let key = std::str::from_utf8(&pair[0])
            .map_err(|_| "a field name of its meta hash is not UTF-8".to_owned())?;
        let value = std::str::from_utf8(&pair[1])
            .map_err(|_| format!("its meta field {key:?} is not UTF-8"))?;
        get.insert(key, value);
    }
    for field in ["attempts", "max_attempts"] {
        let value = get
            .get(field)
            .ok_or_else(|| format!("its meta hash has no {field}"))?;
        value.parse::<u32>().map_err(|e| {
            format!("its {field} {value:?} is not a count apalis-redis reads (a u32): {e}")
        })?;
    }
    let status = get
        .get("status")
        .ok_or_else(|| "its meta hash has no status".to_owned())?;
    Status::from_str(status).map_err(|e| format!("its status: {e}"))?;
    if !has_payload {
        return Err("it has no payload in the queue's data hash".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    fn meta(pairs: &[(&str, &str)]) -> Vec<Vec<u8>> {
        pairs
            .iter()
            .flat_map(|(k, v)| [k.as_bytes().to_vec(), v.as_bytes().to_vec()])
            .collect()
    }

    fn good() -> Vec<Vec<u8>> {
        meta(&[
            ("attempts", "0"),
            ("max_attempts", "25"),
            ("status", "Pending"),
        ])
    }

    #[test]
    fn owed_marks_count_once_reached_and_stale_above() {
        let fields: Vec<(String, String)> = [
            "leasepool_owed:2",
            "leasepool_owed:3",
            "leasepool_owed:9",
            "leasepool_owed:x",
            "other",
        ]
        .iter()
        .map(|f| (f.to_string(), "1".to_string()))
        .collect();
        let (owed_n, stale) = owed(fields.iter().map(|(a, b)| (a, b)), 3);
        assert_eq!(owed_n, 2);
        assert_eq!(stale, ["leasepool_owed:9", "leasepool_owed:x"]);
        assert_eq!(owed(std::iter::empty(), 5), (0, vec![]));
    }

    #[test]
    fn settling_members_carry_the_intent() {
        assert_eq!(
            settling_member(ID, &Intent::GiveBack { attempt: 3 }),
            format!("{ID}|3|g")
        );
        assert_eq!(
            settling_member(
                ID,
                &Intent::RetryAt {
                    attempt: 1,
                    at: 1_700_000_000
                }
            ),
            format!("{ID}|1|r1700000000")
        );
    }

    #[test]
    fn a_task_apalis_reads_passes() {
        assert_eq!(unreadable(ID.as_bytes(), &good(), true), Ok(()));
        assert_eq!(
            unreadable(b"42", &good(), true),
            Ok(()),
            "apalis also takes integer ids"
        );
    }

    /// (id, meta, has a payload, what the reason names)
    type Case = (&'static [u8], Vec<Vec<u8>>, bool, &'static str);

    #[test]
    fn each_unreadable_part_is_named() {
        let cases: Vec<Case> = vec![
            (b"\xff", good(), true, "id is not UTF-8"),
            (b"", good(), true, "could not decode task_id"),
            (
                b"007",
                good(),
                true,
                "\"007\" is not written as apalis writes it back (7)",
            ),
            (
                b"01arz3ndektsv4rrffq69g5fav",
                good(),
                true,
                "not written as apalis writes it back",
            ),
            (
                ID.as_bytes(),
                meta(&[("max_attempts", "25"), ("status", "Pending")]),
                true,
                "no attempts",
            ),
            (
                ID.as_bytes(),
                meta(&[
                    ("attempts", "0"),
                    ("max_attempts", "4294967296"),
                    ("status", "Pending"),
                ]),
                true,
                "\"4294967296\" is not a count",
            ),
            (
                ID.as_bytes(),
                meta(&[
                    ("attempts", "-1"),
                    ("max_attempts", "3"),
                    ("status", "Pending"),
                ]),
                true,
                "attempts \"-1\"",
            ),
            (
                ID.as_bytes(),
                meta(&[("attempts", "0"), ("max_attempts", "3"), ("status", "Lost")]),
                true,
                "its status",
            ),
            (
                ID.as_bytes(),
                meta(&[("attempts", "0"), ("max_attempts", "3")]),
                true,
                "no status",
            ),
            (ID.as_bytes(), good(), false, "no payload"),
            (
                ID.as_bytes(),
                vec![b"attempts".to_vec()],
                true,
                "odd number",
            ),
            (
                ID.as_bytes(),
                vec![b"x".to_vec(), b"\xc3".to_vec()],
                true,
                "field \"x\" is not UTF-8",
            ),
        ];
        for (id, meta, payload, why) in cases {
            let got = unreadable(id, &meta, payload).unwrap_err();
            assert!(got.contains(why), "{why}: {got}");
        }
    }
}
