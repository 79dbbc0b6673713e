//! What a job is ([`ProcessJob`], [`Bytes`]), and the helpers both sides use around the
//! user's code: a panic's text, a quiet drop, the room a frame's header takes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::protocol;

/// A job that can run in a worker child: the value is the input, [`run`](Self::run) is the
/// work. The same type runs on the thread backend too (`run` on a worker thread), with the same
/// answers.
///
/// A job travels by value, encoded with serde: it may not capture anything that does not
/// serialize (a connection, a lock, a closure). State a child needs for every job (a loaded
/// model, a connection) belongs in a `static` set up by [`Jobs::on_child_start`](super::Jobs::on_child_start).
///
/// ```
/// use leasepool::process::ProcessJob;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Resize { width: u32, height: u32 }
///
/// impl ProcessJob for Resize {
///     const NAME: &'static str = "resize.v1";
///     type Output = u64;
///     fn run(self) -> u64 {
///         u64::from(self.width) * u64::from(self.height)
///     }
/// }
/// assert_eq!(Resize { width: 3, height: 4 }.run(), 12);
/// ```
pub trait ProcessJob: Serialize + DeserializeOwned + Send + 'static {
    /// A stable id, e.g. `"resize.v1"`: how a child finds the job's code. Change it when the
    /// input's shape changes, so an old worker program refuses the job instead of misreading it.
    const NAME: &'static str;
    /// What the job answers.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The work.
    fn run(self) -> Self::Output;
}

/// Bytes that travel as one byte string: the efficient way to give a [`ProcessJob`] a large
/// binary input or output (serde encodes a plain `Vec<u8>` number by number, several times
/// slower for a large payload). Derefs to `Vec<u8>`.
///
/// ```
/// use leasepool::process::{Bytes, ProcessJob};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Compress(Bytes);
///
/// impl ProcessJob for Compress {
///     const NAME: &'static str = "compress.v1";
///     type Output = Bytes;
///     fn run(self) -> Bytes {
///         let mut out = self.0;
///         out.dedup(); // stand-in for real work
///         out
///     }
/// }
/// assert_eq!(*Compress(Bytes(vec![1, 1, 2])).run(), vec![1, 2]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Bytes(#[serde(with = "protocol::bytes")] pub Vec<u8>);

impl std::ops::Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

pub(crate) use leasepool_actors::plumbing::panic_message as panic_text;

/// The answer for a job whose `step` (user code the child runs around `run`) panicked.
pub(crate) fn step_panicked<J: ProcessJob>(
    step: &str,
    payload: Box<dyn std::any::Any + Send>,
) -> String {
    let text = panic_text(payload.as_ref());
    drop_quietly(payload);
    format!("job {:?}: {step} panicked: {text}", J::NAME)
}

/// Room for a frame's header beside its inputs or outputs (a job name adds its length).
pub(crate) const FRAME_ROOM: usize = 256;

/// Drops a user value, containing a panic of its destructor (this may run on the host thread).
pub(crate) fn drop_quietly<T>(value: T) {
    let _ = leasepool_actors::plumbing::drop_contained(value);
}
