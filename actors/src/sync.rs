//! The one way the engine takes its std mutexes.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning: no user code runs under the engine's locks, so a lock
/// poisoned by a panic elsewhere still guards consistent data, and the engine must keep serving
/// (a panic here would take the host thread down).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A map keyed by the engine's own sequential ids (`LeaseId`, `PoolId`): no DoS-resistant
/// hashing needed for keys the engine makes itself, and this is on the acquire/release path.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, IdHasherBuilder>;

/// Builds [`IdHasher`]s.
pub(crate) type IdHasherBuilder = std::hash::BuildHasherDefault<IdHasher>;

/// Multiplicative (Fibonacci) hashing of a `u64` id: spreads sequential ids over the table.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0.rotate_left(5) ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Keeps `T` on cache lines of its own (128 bytes: adjacent-line prefetchers pull pairs of
/// 64-byte lines). The books' mutex is taken by every acquire and release; unpadded, the
/// bookkeeper's reference counts (which each lease's end and each new lease touch) share its
/// line, and each of their writes takes the line from a thread spinning for the lock.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);
