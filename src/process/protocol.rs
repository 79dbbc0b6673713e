//! The wire between a worker thread and its child: frames of `u32` little-endian length then a
//! postcard-encoded message, each direction on its own pipe. A frame longer than the cap, or
//! one that does not decode, is malformed: the side that reads it ends the conversation.
//!
//! The child's stdout is not the protocol pipe: `init` moves the pipe to private descriptors
//! and points stdout at stderr, so whatever a job prints cannot corrupt a frame.
#![cfg_attr(not(unix), allow(dead_code))]

use serde::{Deserialize, Serialize};

/// Bumped on any change to the messages below.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
/// First bytes of every child's handshake, so that a program that is no leasepool worker (its
/// `main` does not call `init`) is told apart from a broken one at once.
pub(crate) const MAGIC: [u8; 4] = *b"LPW\x01";

/// Environment of a worker child: the marker (its value is the handshake token), the parent's
/// pid, and the child's settings.
pub(crate) const ENV_TOKEN: &str = "LEASEPOOL_PROCESS_WORKER_TOKEN";
pub(crate) const ENV_PARENT: &str = "LEASEPOOL_PROCESS_PARENT_PID";
pub(crate) const ENV_MEMORY_LIMIT: &str = "LEASEPOOL_PROCESS_MEMORY_LIMIT";
pub(crate) const ENV_MAX_MESSAGE: &str = "LEASEPOOL_PROCESS_MAX_MESSAGE";
pub(crate) const ENV_LOG_LEVEL: &str = "LEASEPOOL_PROCESS_LOG_LEVEL";

/// Starts a stderr line that carries a `tracing` event of the child (fields separated by
/// `\x1f`); every other line is the child's own output.
pub(crate) const LOG_MARKER: &str = "\u{1e}leasepool-event\u{1f}";

/// Parent → child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToChild {
    /// Run job `name`; its encoded input follows this header in the same frame. `seq` numbers
    /// the jobs sent to one child; its answer carries it back.
    Run { seq: u64, name: String },
    /// Run `count` jobs `name` one after the other; their encoded inputs follow, back to back
    /// (a grinder batch's items, one frame for many).
    RunMany { seq: u64, name: String, count: u32 },
}

/// Child → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromChild {
    /// The handshake, the child's first frame (after [`MAGIC`]).
    Hello {
        protocol: u32,
        token: String,
        pid: u32,
        jobs: Vec<String>,
    },
    /// The child could not start (an `on_child_start` hook panicked): the text.
    StartFailed(String),
    /// The job's encoded output follows this header in the same frame.
    Done { seq: u64 },
    /// The `RunMany` jobs' [`ItemOutcome`]s follow this header, in order.
    DoneMany { seq: u64 },
    /// The job panicked: its message.
    Panicked { seq: u64, message: String },
    /// The job could not run or answer: the text.
    Failed { seq: u64, message: String },
}

/// What one job of a `RunMany` gave.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ItemOutcome<T> {
    Done(T),
    Panicked(String),
    Failed(String),
}

/// Encodes `msg` as one frame (length prefix included), refusing one over `max` bytes.
pub(crate) fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, String> {
    frame_with_body(msg, Ok, Vec::new(), max)
}

/// Builds a frame in `buf` (its capacity is reused): the header `msg`, then what `body`
/// appends — a job's input or output, encoded straight into the frame.
pub(crate) fn frame_with_body<T: Serialize>(
    msg: &T,
    body: impl FnOnce(Vec<u8>) -> postcard::Result<Vec<u8>>,
    mut buf: Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, String> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    let buf = postcard::to_extend(msg, buf).map_err(|e| format!("cannot encode a frame: {e}"))?;
    let mut frame = body(buf).map_err(|e| format!("cannot encode: {e}"))?;
    let len = frame.len() - 4;
    if len > max {
        return Err(format!(
            "a message of {len} bytes exceeds max_message_bytes ({max})"
        ));
    }
    let len = u32::try_from(len).map_err(|_| format!("a message of {len} bytes is too long"))?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Splits a frame's payload into its header and the body after it.
pub(crate) fn split<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<(T, &'a [u8]), String> {
    postcard::take_from_bytes(payload).map_err(|e| format!("undecodable frame: {e}"))
}

/// Capacity a reused buffer keeps between jobs: a large message's is given back.
const KEEP: usize = 2 << 20;

/// Gives back a buffer's capacity beyond [`KEEP`] (its contents are consumed).
pub(crate) fn trim(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP && buf.is_empty() {
        buf.shrink_to(KEEP / 2);
    }
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not a whole frame yet.
    Partial,
    /// A whole frame: its payload spans `start..end` of the buffer.
    Frame { start: usize, end: usize },
    /// The length prefix announces more than the cap.
    TooLong(u64),
}

/// Looks for a whole frame at the start of `buf`.
pub(crate) fn parse(buf: &[u8], max: usize) -> Parsed {
    let Some(prefix) = buf.get(..4) else {
        return Parsed::Partial;
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let len_usize = len as usize;
    if len_usize > max {
        return Parsed::TooLong(u64::from(len));
    }
    if buf.len() - 4 < len_usize {
        return Parsed::Partial;
    }
    Parsed::Frame {
        start: 4,
        end: 4 + len_usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_partial_frames_wait() {
        let frame = frame_with_body(
            &FromChild::Done { seq: 9 },
            |b| postcard::to_extend(&vec![1_u8, 2, 3], b),
            Vec::new(),
            1024,
        )
        .unwrap();
        for cut in 0..frame.len() {
            assert_eq!(parse(&frame[..cut], 1024), Parsed::Partial, "cut at {cut}");
        }
        let Parsed::Frame { start, end } = parse(&frame, 1024) else {
            panic!("a whole frame")
        };
        let (header, body) = split::<FromChild>(&frame[start..end]).unwrap();
        assert!(matches!(header, FromChild::Done { seq: 9 }), "{header:?}");
        assert_eq!(postcard::from_bytes::<Vec<u8>>(body).unwrap(), [1, 2, 3]);
    }

    #[test]
    fn frames_over_the_cap_are_refused_both_ways() {
        let big = FromChild::Panicked {
            seq: 1,
            message: "x".repeat(100),
        };
        let err = encode(&big, 50).unwrap_err();
        assert!(err.contains("exceeds max_message_bytes (50)"), "{err}");
        let frame = encode(&big, 1000).unwrap();
        assert!(matches!(parse(&frame, 50), Parsed::TooLong(n) if n > 50));
        // A garbage prefix announcing 4 GiB is refused before anything is allocated.
        assert_eq!(
            parse(&[0xff; 8], 1 << 20),
            Parsed::TooLong(u64::from(u32::MAX))
        );
    }
}

/// Serde for a `Vec<u8>` as one byte string (postcard: a length and a copy), not a sequence of
/// numbers encoded one by one.
pub(crate) mod bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}
