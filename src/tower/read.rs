//! Reading a request body before its lease: at most a limit per request, within a budget
//! shared by the layer's requests, in a bounded time — and the verdict on whether to read at all.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::per_request::Wait;
#[cfg(doc)]
use crate::Capacity;

/// A body read in full, with its share of the budget.
pub(super) struct Whole {
    pub(super) data: Bytes,
    pub(super) trailers: Option<HeaderMap>,
    pub(super) budget: Option<OwnedSemaphorePermit>,
}

/// Why a request body could not be read in full before the lease.
#[derive(Debug)]
pub(super) enum Unread<E> {
    /// Longer than the layer's limit.
    TooLarge,
    /// The layer's buffer budget is spent by other requests' bodies: overload.
    OverBudget,
    /// The body failed (the client went away, a protocol error).
    Failed(E),
}

/// Whether to answer a request before reading its body: a request that may not wait
/// (`no_wait`) while no pool is free would be refused anyway, so it is refused before its body
/// costs memory.
/// `free`: the manager's [`Capacity::free`] now.
pub(super) fn refuse_unread(wait: Wait, free: usize) -> bool {
    wait == Wait::NoWait && free == 0
}

/// Reads `body` to its end: at most `limit` bytes, each byte taken from `budget` (a chunk that
/// does not fit is `OverBudget`, at once — reading never waits for other requests).
pub(super) async fn read_whole<B: Body<Data = Bytes>>(
    body: B,
    limit: usize,
    budget: &Arc<Semaphore>,
) -> Result<Whole, Unread<B::Error>> {
    let mut body = std::pin::pin!(body);
    let mut data = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(Unread::Failed)?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len().saturating_add(chunk.len()) > limit {
                    return Err(Unread::TooLarge);
                }
                if !chunk.is_empty() {
                    let n = u32::try_from(chunk.len()).map_err(|_| Unread::TooLarge)?;
                    let more = Arc::clone(budget)
                        .try_acquire_many_owned(n)
                        .map_err(|_| Unread::OverBudget)?;
                    match &mut held {
                        Some(p) => p.merge(more),
                        None => held = Some(more),
                    }
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(more);
                }
            }
        }
    }
    Ok(Whole {
        data: data.freeze(),
        trailers,
        budget: held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body::Frame;

    /// A body of these frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(chunks: &[&'static str], trailers: &[(&'static str, &'static str)]) -> Frames {
        let mut f: std::collections::VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        for (k, v) in trailers {
            let mut h = HeaderMap::new();
            h.insert(*k, v.parse().unwrap());
            f.push_back(Frame::trailers(h));
        }
        Frames(f)
    }

    fn read(
        body: Frames,
        limit: usize,
        budget: &Arc<Semaphore>,
    ) -> Result<Whole, Unread<Infallible>> {
        futures_executor::block_on(read_whole(body, limit, budget))
    }

    #[test]
    fn the_limit_counts_across_chunks_and_is_inclusive() {
        let budget = Arc::new(Semaphore::new(1 << 20));
        let whole = read(frames(&["abc", "", "defg"], &[]), 7, &budget).unwrap();
        assert_eq!(&whole.data[..], b"abcdefg");
        assert!(matches!(
            read(frames(&["abcd", "efgh"], &[]), 7, &budget),
            Err(Unread::TooLarge)
        ));
    }

    #[test]
    fn every_trailers_frame_is_kept() {
        let budget = Arc::new(Semaphore::new(1 << 20));
        let whole = read(frames(&["x"], &[("a", "1"), ("b", "2")]), 10, &budget).unwrap();
        let t = whole.trailers.unwrap();
        assert_eq!(
            (t["a"].to_str().unwrap(), t["b"].to_str().unwrap()),
            ("1", "2")
        );
    }

    #[test]
    fn a_body_holds_its_bytes_of_the_budget_until_it_is_dropped() {
        let budget = Arc::new(Semaphore::new(10));
        let first = read(frames(&["0123", "4567"], &[]), 100, &budget).unwrap();
        assert_eq!(budget.available_permits(), 2);
        assert!(matches!(
            read(frames(&["abc"], &[]), 100, &budget),
            Err(Unread::OverBudget)
        ));
        drop(first);
        assert_eq!(budget.available_permits(), 10);
        assert!(read(frames(&["abc"], &[]), 100, &budget).is_ok());
    }

    #[test]
    fn only_a_no_wait_request_with_no_free_pool_is_refused_unread() {
        assert!(refuse_unread(Wait::NoWait, 0));
        assert!(!refuse_unread(Wait::NoWait, 1));
        assert!(!refuse_unread(Wait::Timeout(Duration::from_secs(1)), 0));
    }
}
