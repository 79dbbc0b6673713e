//! The one way the engine takes its std mutexes.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning: no user code runs under the engine's locks, so a lock
/// poisoned by a panic elsewhere still guards consistent data, and the engine must keep serving
/// (a panic here would take the host thread down).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
