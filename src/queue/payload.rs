//! Task payloads: JSON encoded by the producer, decoded by the worker, never by apalis (the
//! worker reads the stored bytes as they are), and checked on both sides against the limits
//! any worker can read back. Pure functions, unit-tested below.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::limits::MAX_DEPTH;
use super::QueueError;

/// Encodes `task` for the store. Refuses, naming why, a payload that a worker could not read
/// back: over `limit` bytes, nested deeper than [`MAX_DEPTH`], or JSON that does not decode as
/// `T` again (a `NaN` float becomes `null`, a map with non-string keys, a hand-written
/// `Serialize` that disagrees with its `Deserialize`).
pub(crate) fn encode<T: Serialize + DeserializeOwned>(
    task: &T,
    limit: usize,
) -> Result<Vec<u8>, QueueError> {
    let bytes = serde_json::to_vec(task)
        .map_err(|e| QueueError::Payload(format!("it does not encode as JSON: {e}")))?;
    check_stored(&bytes, limit).map_err(QueueError::Payload)?;
    serde_json::from_slice::<T>(&bytes).map_err(|e| {
        QueueError::Payload(format!(
            "its JSON does not decode back as a {}: {e}",
            std::any::type_name::<T>()
        ))
    })?;
    Ok(bytes)
}

/// Decodes a stored payload as `T`; the error is the reason the task fails for good.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, String> {
    check_stored(bytes, limit)?;
    serde_json::from_slice(bytes)
        .map_err(|e| format!("the payload is not a {}: {e}", std::any::type_name::<T>()))
}

/// The checks that need no type: size, then nesting.
pub(crate) fn check_stored(bytes: &[u8], limit: usize) -> Result<(), String> {
    if bytes.len() > limit {
        return Err(format!(
            "the payload is {} bytes, over the queue's payload limit of {limit} bytes",
            bytes.len()
        ));
    }
    let depth = nesting_depth(bytes);
    if depth > MAX_DEPTH {
        return Err(format!(
            "the payload is nested {depth} levels deep; a worker reads at most {MAX_DEPTH}"
        ));
    }
    Ok(())
}

/// The deepest nesting of arrays and objects in JSON text (brackets inside strings do not
/// count). Text that is not JSON gets a depth too; the decoder then says what is wrong with it.
pub(crate) fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0_usize, 0_usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn max_depth_is_exactly_what_serde_json_reads_back() {
        // The limit is serde_json's: at MAX_DEPTH it decodes, one more level it does not.
        assert!(serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH + 1)).is_err());
        assert!(check_stored(nested(MAX_DEPTH).as_bytes(), usize::MAX).is_ok());
        let deep = check_stored(nested(MAX_DEPTH + 1).as_bytes(), usize::MAX).unwrap_err();
        assert_eq!(
            deep,
            format!(
                "the payload is nested {} levels deep; a worker reads at most {MAX_DEPTH}",
                MAX_DEPTH + 1
            )
        );
    }

    #[test]
    fn nesting_ignores_brackets_in_strings_and_escapes() {
        assert_eq!(nesting_depth(b"1"), 0);
        assert_eq!(nesting_depth(b"{\"a\":[1,{\"b\":[]}]}"), 4);
        assert_eq!(nesting_depth(br#""[[[[""#), 0);
        assert_eq!(nesting_depth(br#"["\"[[", "\\", []]"#), 2);
        assert_eq!(nesting_depth(b"]]][["), 2);
    }

    #[test]
    fn encode_refuses_what_could_not_be_read_back() {
        assert_eq!(encode(&7_u64, 100).unwrap(), b"7");
        // Too big.
        let big = "x".repeat(200);
        match encode(&big, 100) {
            Err(QueueError::Payload(t)) => assert!(
                t.contains("202 bytes, over the queue's payload limit of 100"),
                "{t}"
            ),
            other => panic!("{other:?}"),
        }
        // Too deep (a recursive type).
        let mut deep = serde_json::Value::Null;
        for _ in 0..200 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        match encode(&deep, usize::MAX) {
            Err(QueueError::Payload(t)) => assert!(t.contains("nested 200 levels"), "{t}"),
            other => panic!("{other:?}"),
        }
        // Does not decode back: NaN is written as null.
        match encode(&f64::NAN, 100) {
            Err(QueueError::Payload(t)) => {
                assert!(t.contains("does not decode back as a f64"), "{t}")
            }
            other => panic!("{other:?}"),
        }
        // Does not encode: a map with non-string keys.
        let mut m = HashMap::new();
        m.insert((1, 2), 3);
        match encode(&m, 100) {
            Err(QueueError::Payload(t)) => assert!(t.contains("does not encode as JSON"), "{t}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decode_names_the_type_and_the_limits() {
        assert_eq!(decode::<u64>(b"42", 10).unwrap(), 42);
        assert!(decode::<u64>(b"\"x\"", 10)
            .unwrap_err()
            .contains("payload is not a u64"));
        assert!(decode::<u64>(b"12345678901", 10)
            .unwrap_err()
            .contains("over the queue's payload limit of 10"));
        assert!(
            decode::<serde_json::Value>(nested(300).as_bytes(), usize::MAX)
                .unwrap_err()
                .contains("nested 300")
        );
        assert!(decode::<f64>(b"1e400", 100)
            .unwrap_err()
            .contains("payload is not a f64"));
        assert!(decode::<u64>(b"\xff\xfe", 100)
            .unwrap_err()
            .contains("payload is not a u64"));
    }
}
