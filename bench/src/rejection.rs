//! W1: what a request refused for overload costs — leasepool's part of a 503 under a flood.
//!
//! A manager whose only pool is leased refuses every `no_wait` acquire. Timed on one thread
//! (an actix `System`), so the figures are CPU per refusal:
//! - the bare refusal: `acquire().no_wait()` answering `Unavailable`;
//! - a request through actix-web's service stack (in process, no sockets) whose `Leased`
//!   extractor is refused and answers 503 + `Retry-After` + a JSON body;
//! - the same stack with a handler that answers the same 503 itself, without leasepool: what
//!   actix costs anyway. The difference is leasepool's part.

use std::time::Instant;

use actix_web::http::header;
use actix_web::{test, web, App, HttpResponse};
use leasepool::web::{LeaseConfig, Leased};
use leasepool::{LeaseError, LeaseManager};

use crate::measure::us_per_op;

async fn saturated() -> (LeaseManager, leasepool::Lease) {
    let m = LeaseManager::builder()
        .max_pools(1)
        .workers_per_pool(1)
        .name_prefix("bench-w1")
        .build()
        .expect("bench settings");
    m.start().await.expect("start");
    let held = m.acquire().await.expect("the only pool");
    (m, held)
}

/// µs per refused `acquire().no_wait()`.
pub fn bare(ops: usize) -> f64 {
    actix_rt::System::new().block_on(async {
        let (m, held) = saturated().await;
        let begun = Instant::now();
        for _ in 0..ops {
            let refused = m.acquire().no_wait().await;
            assert!(matches!(refused, Err(LeaseError::Unavailable)));
        }
        let took = begun.elapsed();
        drop(held);
        m.stop().await;
        us_per_op(took, ops)
    })
}

async fn leased(lease: Leased) -> HttpResponse {
    drop(lease);
    HttpResponse::Ok().finish()
}

async fn shed() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::RETRY_AFTER, "1"))
        .body(r#"{"error":"unavailable","retry_after":1}"#)
}

/// µs per request refused with 503 through actix-web's service stack: by the `Leased`
/// extractor (`through_leasepool`), or by a handler that answers 503 itself.
pub fn web(ops: usize, through_leasepool: bool) -> f64 {
    actix_rt::System::new().block_on(async {
        let (m, held) = saturated().await;
        let app = App::new()
            .app_data(web::Data::new(m.clone()))
            .app_data(LeaseConfig::no_wait())
            .route("/leased", web::get().to(leased))
            .route("/shed", web::get().to(shed));
        let svc = test::init_service(app).await;
        let uri = if through_leasepool {
            "/leased"
        } else {
            "/shed"
        };
        let begun = Instant::now();
        for _ in 0..ops {
            let req = test::TestRequest::get().uri(uri).to_request();
            let resp = test::call_service(&svc, req).await;
            assert_eq!(resp.status().as_u16(), 503);
            assert!(resp.headers().contains_key(header::RETRY_AFTER));
        }
        let took = begun.elapsed();
        drop(held);
        m.stop().await;
        us_per_op(took, ops)
    })
}
