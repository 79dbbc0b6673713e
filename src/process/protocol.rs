//! The wire between a worker thread and its child: frames of `u32` little-endian length then a
//! postcard-encoded message, each direction on its own pipe. A frame longer than the cap, or
//! one that does not decode, is malformed: the side that reads it ends the conversation.
//!
//! The child's stdout is not the protocol pipe: `init` moves the pipe to private descriptors
//! and points stdout at stderr, so whatever a job prints cannot corrupt a frame.
#![cfg_attr(not(unix), allow(dead_code))]

use serde::{Deserialize, Serialize};

/// Bumped on any change to the messages below.
/// Smallest cap on one frame accepted: the handshake (every job name) must fit.
pub(crate) const MIN_MAX_MESSAGE: usize = 4096;

/// Default cap on one frame (a job's encoded input or output): 64 MiB.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// Most outcomes in one `DoneMany` frame. The parent relies on it too: a child that dies holds
/// at most this many outcomes unsent.
pub(crate) const OUTCOMES_PER_FRAME: usize = 32;

pub(crate) const PROTOCOL_VERSION: u32 = 2;
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

/// The line a child writes to stderr before each job (under a memory limit, or when it
/// forwards events), followed by the job's number: a report of a failed allocation counts for
/// the child's death only if no job started after it (stderr is read apart from the answers,
/// so only its own order tells), and the lines that follow belong to that job's span.
pub(crate) const JOB_MARKER: &str = "\u{1e}leasepool-job\u{1f}";

/// The line a child that marks its jobs writes to stderr after each, before its answer, with
/// the job's number: the lines of that job are over (the parent lets go of its span).
pub(crate) const JOB_END_MARKER: &str = "\u{1e}leasepool-job-end\u{1f}";

/// Parent → child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToChild {
    /// Run job `name`; its encoded input follows this header in the same frame. `seq` numbers
    /// the jobs sent to one child; its answer carries it back.
    Run { seq: u64, name: String },
    /// Run `count` jobs `name` one after the other; their inputs follow as batch items (see
    /// [`encode_item`]), back to back (a grinder batch's items, one frame for many).
    RunMany { seq: u64, name: String, count: u32 },
}

impl ToChild {
    /// The job's number.
    pub(crate) fn seq(&self) -> u64 {
        match self {
            Self::Run { seq, .. } | Self::RunMany { seq, .. } => *seq,
        }
    }
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
    /// `RunMany` jobs' [`ItemOutcome`]s follow this header as batch items, in order (one
    /// `RunMany` is answered by as many `DoneMany` frames as it takes).
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
    frame_with_body(msg, |b, _| Ok(b), Vec::new(), max)
}

/// Builds a frame in `buf` (its capacity is reused): the header `msg`, then what `body`
/// appends — a job's input or output, encoded straight into the frame with [`extend_capped`]
/// and the limit `body` is given, so that a message over `max` stops being encoded at `max`
/// instead of being encoded in full first.
pub(crate) fn frame_with_body<T: Serialize>(
    msg: &T,
    body: impl FnOnce(Vec<u8>, usize) -> postcard::Result<Vec<u8>>,
    mut buf: Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, String> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    let buf = postcard::to_extend(msg, buf).map_err(|e| format!("cannot encode a frame: {e}"))?;
    let limit = max.saturating_add(4);
    let mut frame = body(buf, limit).map_err(|e| match e {
        postcard::Error::SerializeBufferFull => {
            format!("a message over max_message_bytes ({max}); its encoding stopped there")
        }
        e => format!("cannot encode: {e}"),
    })?;
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

/// Appends `value`'s encoding to `buf`, failing with `SerializeBufferFull` as soon as `buf`
/// would grow past `limit` bytes: a value too large for a frame costs at most `limit` bytes of
/// memory, however large its encoding would be.
pub(crate) fn extend_capped<T: Serialize + ?Sized>(
    value: &T,
    buf: Vec<u8>,
    limit: usize,
) -> postcard::Result<Vec<u8>> {
    postcard::serialize_with_flavor(value, Capped { buf, limit })
}

/// A `T` decoded from `bytes` — a job's input in the child, its output in the parent — on a
/// stack that grows as deep as the value nests (`serde_stacker`): a deeply nested value (a long
/// linked list, say) never overflows the decoding thread's stack, which would abort the whole
/// process. (Encoding has no such guard: a value is encoded on the stack of the thread that
/// sends it, as it would be anywhere else — see docs/process-backend.md.)
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> postcard::Result<T> {
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    T::deserialize(serde_stacker::Deserializer::new(&mut deserializer))
}

/// A postcard output that refuses to grow past its limit.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
}

impl postcard::ser_flavors::Flavor for Capped {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.buf)
    }
}

/// One item of a batch frame (an input of `RunMany`, an outcome of `DoneMany`): `value`
/// encoded in at most `limit` bytes behind a `u32` little-endian length, so that a reader can
/// skip an item it cannot decode and read the next.
pub(crate) fn encode_item<T: Serialize + ?Sized>(
    value: &T,
    limit: usize,
) -> postcard::Result<Vec<u8>> {
    let mut item = extend_capped(value, vec![0; 4], limit.saturating_add(4))?;
    let len = u32::try_from(item.len() - 4).map_err(|_| postcard::Error::SerializeBufferFull)?;
    item[..4].copy_from_slice(&len.to_le_bytes());
    Ok(item)
}

/// The first item of a batch frame's body and the rest after it; `None` if the body does not
/// start with a whole item.
pub(crate) fn take_item(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (prefix, rest) = body.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*prefix)).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
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

/// Cuts a message to fit a frame (with room for its header).
pub(crate) fn fit(mut message: String, max: usize) -> String {
    let room = max.saturating_sub(64);
    if message.len() > room {
        let mut cut = room;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_partial_frames_wait() {
        let frame = frame_with_body(
            &FromChild::Done { seq: 9 },
            |b, limit| extend_capped(&vec![1_u8, 2, 3], b, limit),
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

    /// A value whose encoding never ends: it counts how much was asked of it.
    struct Endless(std::cell::Cell<usize>);

    impl serde::Serialize for Endless {
        fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
            use serde::ser::SerializeSeq as _;
            let mut seq = s.serialize_seq(Some(1 << 40))?;
            loop {
                self.0.set(self.0.get() + 1);
                seq.serialize_element(&[7_u8; 32])?;
                seq.serialize_element(&[7_u8; 32])?;
            }
        }
    }

    #[test]
    fn encoding_stops_at_the_cap() {
        let endless = Endless(std::cell::Cell::new(0));
        let err = frame_with_body(
            &FromChild::Done { seq: 1 },
            |b, limit| extend_capped(&endless, b, limit),
            Vec::new(),
            4096,
        )
        .unwrap_err();
        assert!(err.contains("over max_message_bytes (4096)"), "{err}");
        // It stopped within a few rounds of the cap (64 bytes each), not at the end of time.
        assert!(
            endless.0.get() <= 4096 / 64 + 2,
            "{} rounds",
            endless.0.get()
        );
        // A fixed array is its bytes: three fit in 3, not in 2.
        assert_eq!(
            extend_capped(&[1_u8, 2, 3], vec![0], 3).unwrap_err(),
            postcard::Error::SerializeBufferFull
        );
        assert_eq!(
            extend_capped(&[1_u8, 2, 3], vec![0], 4).unwrap(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn batch_items_are_read_one_by_one_and_a_cut_one_is_refused() {
        let mut body = encode_item(&[1_u8, 2, 3], 3).unwrap();
        assert_eq!(body, [3, 0, 0, 0, 1, 2, 3]);
        body.extend(encode_item(&[9_u8; 0], 0).unwrap());
        body.extend(encode_item("ab", 10).unwrap());
        let (first, rest) = take_item(&body).unwrap();
        assert_eq!(first, [1, 2, 3]);
        let (second, rest) = take_item(rest).unwrap();
        assert!(second.is_empty());
        let (third, rest) = take_item(rest).unwrap();
        assert_eq!(postcard::from_bytes::<&str>(third).unwrap(), "ab");
        assert!(rest.is_empty() && take_item(rest).is_none());
        // A length past the end, or a cut prefix, is no item.
        for cut in 1..7 {
            assert_eq!(take_item(&body[..cut]), None, "cut at {cut}");
        }
        assert_eq!(take_item(&body[..7]).unwrap().0, [1, 2, 3]);
        // The limit is the value's, the prefix aside.
        assert_eq!(
            encode_item(&[1_u8, 2, 3], 2).unwrap_err(),
            postcard::Error::SerializeBufferFull
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
