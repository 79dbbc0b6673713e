//! P scenarios: the process backend. This binary is its own worker program (`main` calls
//! `process::init` first).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leasepool::process::{Bytes, Jobs, ProcessJob};
use leasepool::{Backend, LeaseError, LeaseManager, StopMode, WorkGrinder};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Noop;
impl ProcessJob for Noop {
    const NAME: &'static str = "bench-noop.v1";
    type Output = ();
    fn run(self) {}
}

/// Answers its bytes back.
#[derive(Serialize, Deserialize)]
pub struct Echo(Bytes);
impl ProcessJob for Echo {
    const NAME: &'static str = "bench-echo.v1";
    type Output = Bytes;
    fn run(self) -> Bytes {
        self.0
    }
}

#[derive(Serialize, Deserialize)]
pub struct Crash;
impl ProcessJob for Crash {
    const NAME: &'static str = "bench-crash.v1";
    type Output = ();
    fn run(self) {
        std::process::abort();
    }
}

#[derive(Serialize, Deserialize)]
pub struct Runaway;
impl ProcessJob for Runaway {
    const NAME: &'static str = "bench-runaway.v1";
    type Output = ();
    fn run(self) {
        loop {
            std::hint::spin_loop();
        }
    }
}

pub fn jobs() -> Jobs {
    Jobs::new()
        .register::<Noop>()
        .register::<Echo>()
        .register::<Crash>()
        .register::<Runaway>()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn manager(pools: usize, workers: usize) -> LeaseManager {
    LeaseManager::builder()
        .backend(Backend::Process)
        .process_jobs(jobs())
        .max_pools(pools)
        .min_pools(pools)
        .workers_per_pool(workers)
        .name_prefix("bench-proc")
        .build()
        .expect("valid settings")
}

/// P1: µs per sequential `call(Noop)` on one 1-child lease.
pub fn p1(ops: usize) -> f64 {
    rt().block_on(async {
        let m = manager(1, 1);
        m.start().await.expect("start");
        let lease = m.acquire().await.expect("lease");
        let t = Instant::now();
        for _ in 0..ops {
            lease.call(Noop).await.expect("noop");
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / ops as f64;
        drop(lease);
        m.stop().await;
        per
    })
}

/// P2: calls/s of `calls` noop calls over 2 pools x 4 children.
pub fn p2(calls: usize) -> f64 {
    rt().block_on(async {
        let m = manager(2, 4);
        m.start().await.expect("start");
        let a = m.acquire().await.expect("lease");
        let b = m.acquire().await.expect("lease");
        let t = Instant::now();
        let handles: Vec<_> = (0..calls)
            .map(|i| {
                let lease = if i % 2 == 0 { &a } else { &b };
                lease.submit_call(Noop).expect("submit")
            })
            .collect();
        for h in handles {
            h.await.expect("noop");
        }
        let rate = calls as f64 / t.elapsed().as_secs_f64();
        drop((a, b));
        m.stop().await;
        rate
    })
}

/// P3: µs per round trip of `bytes` in and out of a child, through `call`.
pub fn p3_call(bytes: usize, trips: usize) -> f64 {
    rt().block_on(async {
        let m = manager(1, 1);
        m.start().await.expect("start");
        let lease = m.acquire().await.expect("lease");
        let payload = Bytes(vec![7_u8; bytes]);
        let t = Instant::now();
        for _ in 0..trips {
            let back = lease.call(Echo(payload.clone())).await.expect("echo");
            assert_eq!(back.len(), bytes);
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / trips as f64;
        drop(lease);
        m.stop().await;
        per
    })
}

/// P3 peer: µs per round trip of a `bytes`-long message through a raw echo child (this binary
/// with `--echo-child`): the same request/response shape as a process job — the child reads the
/// whole message (a `u32` length, then the bytes), then writes it back — with no encoding, on
/// default-size pipes. Includes the copy of the payload, as the `call` side does.
pub fn p3_raw_echo(bytes: usize, trips: usize) -> f64 {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .arg("--echo-child")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo child");
    let mut input = child.stdin.take().expect("stdin");
    let mut output = child.stdout.take().expect("stdout");
    let payload = vec![7_u8; bytes];
    let mut back = vec![0_u8; bytes];
    let t = Instant::now();
    for _ in 0..trips {
        let message = payload.clone();
        input
            .write_all(&(message.len() as u32).to_le_bytes())
            .expect("write");
        input.write_all(&message).expect("write");
        let mut len = [0_u8; 4];
        output.read_exact(&mut len).expect("read");
        output.read_exact(&mut back).expect("read");
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / trips as f64;
    drop(input);
    let _ = child.wait();
    per
}

/// The echo child of [`p3_raw_echo`]: echoes length-prefixed messages until its input ends.
pub fn echo_child() {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        let mut len = [0_u8; 4];
        if input.read_exact(&mut len).is_err() {
            return;
        }
        buf.resize(u32::from_le_bytes(len) as usize, 0);
        if input.read_exact(&mut buf).is_err() {
            return;
        }
        if output.write_all(&len).is_err() || output.write_all(&buf).is_err() {
            return;
        }
        let _ = output.flush();
    }
}

/// P3 second peer: µs per round trip of `bytes` streamed through `cat` over two raw pipes (a
/// writer thread feeds it while this thread reads the echo): input and output overlap, which a
/// request/response cannot do — a lower bound, shown for scale.
pub fn p3_raw_pipe(bytes: usize, trips: usize) -> f64 {
    let mut cat = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cat");
    let mut input = cat.stdin.take().expect("stdin");
    let mut output = cat.stdout.take().expect("stdout");
    let payload = vec![7_u8; bytes];
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = std::thread::spawn(move || {
        for chunk in go_rx {
            input.write_all(&chunk).expect("write");
        }
    });
    let mut back = vec![0_u8; bytes];
    let t = Instant::now();
    for _ in 0..trips {
        go_tx.send(payload.clone()).expect("send");
        output.read_exact(&mut back).expect("read");
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / trips as f64;
    drop(go_tx);
    writer.join().expect("writer");
    let _ = cat.wait();
    per
}

/// P4: (ms until `start()` returns with 4 children ready, ms from a crash's answer until the
/// replacement child has served a job).
pub fn p4() -> (f64, f64) {
    rt().block_on(async {
        let m = manager(1, 4);
        let t = Instant::now();
        m.start().await.expect("start");
        let started = t.elapsed().as_secs_f64() * 1e3;
        let m1 = manager(1, 1);
        m1.start().await.expect("start");
        let lease = m1.acquire().await.expect("lease");
        lease.call(Noop).await.expect("warm");
        assert_eq!(lease.call(Crash).await, Err(LeaseError::WorkerLost));
        let t = Instant::now();
        lease.call(Noop).await.expect("served by the replacement");
        let replaced = t.elapsed().as_secs_f64() * 1e3;
        drop(lease);
        m1.stop().await;
        m.stop().await;
        (started, replaced)
    })
}

/// P5: ms from a lease's hard expiry until its runaway job is answered `Expired`.
pub fn p5() -> f64 {
    rt().block_on(async {
        let m = LeaseManager::builder()
            .backend(Backend::Process)
            .process_jobs(jobs())
            .workers_per_pool(1)
            .lease_grace(Duration::ZERO)
            .name_prefix("bench-proc")
            .build()
            .expect("valid");
        m.start().await.expect("start");
        let lease = m
            .acquire()
            .lease_for(Duration::from_millis(100))
            .await
            .expect("lease");
        let hard = lease.hard_expires_at();
        assert_eq!(lease.call(Runaway).await, Err(LeaseError::Expired));
        let late = Instant::now().saturating_duration_since(hard);
        drop(lease);
        m.stop().await;
        late.as_secs_f64() * 1e3
    })
}

/// P6: items/s of `items` noop calls through a `WorkGrinder` over 2 pools x 4 children.
pub fn p6_grinder(items: usize) -> f64 {
    rt().block_on(async {
        let m = manager(2, 4);
        m.start().await.expect("start");
        let g = WorkGrinder::builder(&m)
            .batch_size_threshold(256)
            .max_wait(Duration::from_millis(1))
            .max_pending(items + 1)
            .build()
            .expect("grinder");
        g.start().await.expect("grinder start");
        let t = Instant::now();
        let handles: Vec<_> = (0..items)
            .map(|_| g.enqueue_call(Noop).expect("enqueue"))
            .collect();
        for h in handles {
            h.await.expect("noop");
        }
        let rate = items as f64 / t.elapsed().as_secs_f64();
        g.stop(StopMode::Drain).await;
        m.stop().await;
        rate
    })
}

/// P6 peer: items/s of one sequential `call` per item on one lease of the same manager shape.
pub fn p6_one_call_each(items: usize) -> f64 {
    rt().block_on(async {
        let m = manager(2, 4);
        m.start().await.expect("start");
        let lease = m.acquire().await.expect("lease");
        let t = Instant::now();
        for _ in 0..items {
            lease.call(Noop).await.expect("noop");
        }
        let rate = items as f64 / t.elapsed().as_secs_f64();
        drop(lease);
        m.stop().await;
        rate
    })
}
