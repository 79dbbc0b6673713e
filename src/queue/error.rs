//! The queue's one error type.

/// What went wrong with a [`Queue`](super::Queue) or a [`QueueWorker`](super::QueueWorker).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue's store failed (the SQLite file could not be opened, a query failed).
    #[error("queue store: {0}")]
    Store(String),
    /// A setting or argument was refused; the text names it and the range it must be in.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A task's payload was refused at push: a worker could not read it back (too deeply
    /// nested, too big, not JSON that decodes as its type). The text says why.
    #[error("task payload refused: {0}")]
    Payload(String),
    /// [`QueueWorker::start`](super::QueueWorker::start) was called while the worker runs.
    #[error("the queue worker `{0}` is already running")]
    AlreadyRunning(String),
    /// [`QueueWorker::start`](super::QueueWorker::start) was called while a
    /// [`QueueWorker::stop`](super::QueueWorker::stop) is under way; start again once it has
    /// returned.
    #[error("the queue worker `{0}` is stopping")]
    Stopping(String),
    /// [`QueueWorker::start`](super::QueueWorker::start) was called outside a tokio runtime
    /// (actix's `System` is one).
    #[error("QueueWorker::start needs a tokio runtime (actix_rt::System or #[tokio::main])")]
    NoRuntime,
}

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        QueueError::Store(e.to_string())
    }
}

impl From<::redis::RedisError> for QueueError {
    fn from(e: ::redis::RedisError) -> Self {
        QueueError::Store(e.to_string())
    }
}
