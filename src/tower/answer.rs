//! The layer's own answers as HTTP responses — JSON with `Retry-After`, or gRPC's
//! Trailers-Only form — built from an [`Answer`] (pure: unit-tested here).

use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use super::body::ResponseBody;
use crate::per_request::Answer;

/// gRPC status codes the layer answers with.
const GRPC_INVALID_ARGUMENT: u32 = 3;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

/// How the layer writes its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// HTTP status, `Retry-After`, a JSON body.
    Json,
    /// gRPC Trailers-Only: HTTP 200, `grpc-status` (14 `UNAVAILABLE` for overload) and
    /// `grpc-message` in the headers, `grpc-retry-pushback-ms` for the hint, no body.
    Grpc,
}

/// The answer for a request body longer than `limit` bytes: 413.
pub(super) fn too_large(limit: usize) -> Answer {
    Answer {
        status: 413,
        retry_after: None,
        code: "body_too_large",
        body: format!(r#"{{"error":"body_too_large","limit":{limit}}}"#),
    }
}

/// The answer for a request body that took longer than the layer's `body_timeout`: 408.
pub(super) fn body_timed_out() -> Answer {
    Answer {
        status: 408,
        retry_after: None,
        code: "body_timeout",
        body: r#"{"error":"body_timeout"}"#.to_owned(),
    }
}

/// The answer for a request body that failed while it was read: 400.
pub(super) fn unreadable() -> Answer {
    Answer {
        status: 400,
        retry_after: None,
        code: "body_unreadable",
        body: r#"{"error":"body_unreadable"}"#.to_owned(),
    }
}

/// The response's status, headers and body text for `answer` in `dialect`.
pub(super) fn parts(
    answer: Answer,
    dialect: Dialect,
) -> (StatusCode, Vec<(HeaderName, HeaderValue)>, String) {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match dialect {
        Dialect::Json => {
            let mut headers = vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )];
            if let Some(secs) = answer.retry_after {
                headers.push((header::RETRY_AFTER, HeaderValue::from(secs)));
            }
            (status, headers, answer.body)
        }
        Dialect::Grpc => {
            let code = match answer.status {
                503 => GRPC_UNAVAILABLE,
                413 => GRPC_RESOURCE_EXHAUSTED,
                400 => GRPC_INVALID_ARGUMENT,
                408 => GRPC_DEADLINE_EXCEEDED,
                _ => GRPC_INTERNAL,
            };
            let mut headers = vec![
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                ),
                (
                    HeaderName::from_static("grpc-status"),
                    HeaderValue::from(code),
                ),
                (
                    HeaderName::from_static("grpc-message"),
                    HeaderValue::from_static(answer.code),
                ),
            ];
            if let Some(secs) = answer.retry_after {
                headers.push((
                    HeaderName::from_static("grpc-retry-pushback-ms"),
                    HeaderValue::from(secs.saturating_mul(1000)),
                ));
            }
            (StatusCode::OK, headers, String::new())
        }
    }
}

/// `answer` as a response of the layer's service.
pub(super) fn response<B>(answer: Answer, dialect: Dialect) -> Response<ResponseBody<B>> {
    let (status, headers, body) = parts(answer, dialect);
    let mut response = Response::new(ResponseBody::answer(body));
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LeaseError;

    fn header<'a>(h: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        h.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn json_overload_is_a_503_with_retry_after_and_a_failure_a_500_without() {
        let (status, h, body) = parts(LeaseError::Unavailable.answer(Some(4)), Dialect::Json);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&h, "retry-after"), Some("4"));
        assert_eq!(header(&h, "content-type"), Some("application/json"));
        assert_eq!(body, r#"{"error":"unavailable","retry_after":4}"#);
        let (status, h, _) = parts(LeaseError::WorkerLost.answer(Some(4)), Dialect::Json);
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(header(&h, "retry-after"), None);
        let (status, _, body) = parts(too_large(10), Dialect::Json);
        assert_eq!((status.as_u16(), body.contains("10")), (413, true));
        assert_eq!(parts(unreadable(), Dialect::Json).0.as_u16(), 400);
    }

    #[test]
    fn grpc_answers_are_trailers_only_with_a_status_and_a_pushback() {
        let (status, h, body) = parts(LeaseError::Unavailable.answer(Some(3)), Dialect::Grpc);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "");
        assert_eq!(header(&h, "content-type"), Some("application/grpc"));
        assert_eq!(header(&h, "grpc-status"), Some("14"));
        assert_eq!(header(&h, "grpc-message"), Some("unavailable"));
        assert_eq!(header(&h, "grpc-retry-pushback-ms"), Some("3000"));
        let (_, h, _) = parts(LeaseError::WorkerLost.answer(None), Dialect::Grpc);
        assert_eq!(header(&h, "grpc-status"), Some("13"));
        assert_eq!(header(&h, "grpc-retry-pushback-ms"), None);
        let (_, h, _) = parts(too_large(1), Dialect::Grpc);
        assert_eq!(header(&h, "grpc-status"), Some("8"));
        let (_, h, _) = parts(unreadable(), Dialect::Grpc);
        assert_eq!(header(&h, "grpc-status"), Some("3"));
        let (_, h, _) = parts(body_timed_out(), Dialect::Grpc);
        assert_eq!(header(&h, "grpc-status"), Some("4"));
        assert_eq!(parts(body_timed_out(), Dialect::Json).0.as_u16(), 408);
    }
}
