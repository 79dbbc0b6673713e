//! `--retry-after`: does a computed `Retry-After` help clients that honour it? An actix-web
//! service on loopback (4 pools × 1 worker, a 1 s blocking job per request, requests wait at
//! most 200 ms for a lease) is driven by 40 clients that each send a request, and on a 503
//! wait what its `Retry-After` says before the next — once with the fixed hint (1 s, the
//! default), once with `LeaseConfig::retry_after_estimated(1 s, 30 s)`. Capacity is 4 requests
//! per second; 40 clients offer ~10× that. Reported per mode: requests served, 503s, the 503s
//! per request served.

use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use leasepool::web::{LeaseConfig, Leased};
use leasepool::{LeaseError, LeaseManager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 40;
const JOB: Duration = Duration::from_secs(1);

async fn work(lease: Leased) -> Result<HttpResponse, LeaseError> {
    lease.run(|| std::thread::sleep(JOB)).await?;
    Ok(HttpResponse::Ok().finish())
}

/// One mode's figures.
pub struct Round {
    pub mode: &'static str,
    pub served: u64,
    pub rejected: u64,
    pub errors: u64,
    pub seconds: f64,
}

/// One request: the status, and the `Retry-After` of a 503.
async fn request(addr: std::net::SocketAddr) -> std::io::Result<(u16, Option<u64>)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /work HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry_after = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok());
    Ok((status, retry_after))
}

/// Runs one mode for `secs` seconds.
fn round(mode: &'static str, config: LeaseConfig, secs: u64) -> Result<Round, String> {
    let system = actix_rt::System::new();
    system.block_on(async move {
        let manager = LeaseManager::builder()
            .max_pools(4)
            .min_pools(4)
            .workers_per_pool(1)
            .max_waiters(1_000)
            .name_prefix("bench-ra")
            .build()
            .map_err(|e| e.to_string())?;
        manager.start().await.map_err(|e| e.to_string())?;
        // The estimate's basis: hold times are measured from the first estimate on.
        let _ = manager.estimated_wait();
        let data = web::Data::new(manager.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(config.clone())
                .route("/work", web::get().to(work))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .map_err(|e| e.to_string())?;
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let began = Instant::now();
        let until = began + Duration::from_secs(secs);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|n| {
                actix_rt::spawn(async move {
                    // Spread the first requests over the first second.
                    tokio::time::sleep(Duration::from_millis(25 * n as u64)).await;
                    let (mut served, mut rejected, mut errors) = (0_u64, 0_u64, 0_u64);
                    while Instant::now() < until {
                        match request(addr).await {
                            Ok((200, _)) => served += 1,
                            Ok((503, hint)) => {
                                rejected += 1;
                                let wait = Duration::from_secs(hint.unwrap_or(1));
                                tokio::time::sleep(wait).await;
                            }
                            _ => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    (served, rejected, errors)
                })
            })
            .collect();
        let mut round = Round {
            mode,
            served: 0,
            rejected: 0,
            errors: 0,
            seconds: 0.0,
        };
        for client in clients {
            let (s, r, e) = client.await.map_err(|e| e.to_string())?;
            round.served += s;
            round.rejected += r;
            round.errors += e;
        }
        round.seconds = began.elapsed().as_secs_f64();
        handle.stop(true).await;
        manager.stop().await;
        Ok(round)
    })
}

/// Both modes, `secs` seconds each, as a markdown table.
pub fn run(secs: u64) -> Result<String, String> {
    let fixed = round(
        "fixed Retry-After (1 s)",
        LeaseConfig::timeout(Duration::from_millis(200)),
        secs,
    )?;
    let estimated = round(
        "computed Retry-After (1-30 s)",
        LeaseConfig::timeout(Duration::from_millis(200))
            .retry_after_estimated(Duration::from_secs(1), Duration::from_secs(30)),
        secs,
    )?;
    let mut md = String::from(
        "| mode | served | 503s | 503s per request served | other errors | seconds |\n|---|---|---|---|---|---|\n",
    );
    for r in [fixed, estimated] {
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {} | {:.1} |\n",
            r.mode,
            r.served,
            r.rejected,
            r.rejected as f64 / r.served.max(1) as f64,
            r.errors,
            r.seconds
        ));
    }
    Ok(md)
}
