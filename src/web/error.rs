//! [`LeasedError`] as an actix-web response (the answer itself is shared with tower: see
//! [`LeasedError::answer`]).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use super::LeasedError;

impl ResponseError for LeasedError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.answer().status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let answer = self.answer();
        if let (500, Some(error)) = (answer.status, self.lease_error()) {
            tracing::error!(%error, "no lease for the request; answering 500");
        }
        let status =
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, "application/json"));
        if let Some(secs) = answer.retry_after {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response.body(answer.body)
    }
}
