//! A real database behind typed messages: one `rusqlite` connection per worker thread (bundled
//! SQLite, WAL mode, a file in a temporary directory), `Insert` and `Query` messages, many
//! concurrent async callers, and a check that every row arrived.
//!
//! SQLite connections are blocking and must not be shared between threads without care — the
//! per-worker state of leasepool gives each worker thread its own, opened on that thread.
//!
//! Run: `cargo run --release --example 16_sqlite_per_worker`

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use leasepool::{Handle, LeaseManager};
use rusqlite::{params, Connection};

/// One worker's connection.
struct Db {
    conn: Connection,
}

impl Db {
    fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        // WAL lets readers run while one writer writes; busy_timeout makes writers queue
        // instead of failing when another worker holds the write lock.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn })
    }
}

/// Insert one reading; answers the new row id.
struct Insert {
    device: u32,
    value: f64,
}

/// Count the readings of one device and sum their values.
struct Query {
    device: u32,
}

impl Handle<Insert> for Db {
    type Output = rusqlite::Result<i64>;
    fn handle(&mut self, msg: Insert) -> Self::Output {
        self.conn.execute(
            "INSERT INTO readings (device, value) VALUES (?1, ?2)",
            params![msg.device, msg.value],
        )?;
        Ok(self.conn.last_insert_rowid())
    }
}

impl Handle<Query> for Db {
    type Output = rusqlite::Result<(i64, f64)>;
    fn handle(&mut self, msg: Query) -> Self::Output {
        self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(value), 0.0) FROM readings WHERE device = ?1",
            params![msg.device],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
    }
}

const DEVICES: u32 = 20;
const READINGS_PER_DEVICE: u32 = 50;

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("leasepool-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path: PathBuf = dir.join("readings.db");
    Connection::open(&path)?.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE readings (id INTEGER PRIMARY KEY, device INTEGER NOT NULL, value REAL NOT NULL);",
    )?;

    let db_path = path.clone();
    let manager = LeaseManager::builder()
        .max_pools(2)
        .workers_per_pool(4)
        .name_prefix("sqlite")
        // Each worker opens its own connection, on its own thread; a failure is retried.
        .try_worker_state(move || Db::open(&db_path))
        .build()?;
    manager.start().await?;

    // Many concurrent async callers, each acquiring a lease and sending typed messages.
    let mut callers = Vec::new();
    for device in 0..DEVICES {
        let manager = manager.clone();
        callers.push(actix_rt::spawn(async move {
            let lease = manager.acquire().owner(format!("device-{device}")).await?;
            let lease = Arc::new(lease);
            let mut inserts = Vec::new();
            for i in 0..READINGS_PER_DEVICE {
                let lease = Arc::clone(&lease);
                inserts.push(actix_rt::spawn(async move {
                    lease
                        .send(Insert {
                            device,
                            value: f64::from(i),
                        })
                        .await
                }));
            }
            for insert in inserts {
                insert
                    .await
                    .map_err(|e| e.to_string())??
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(())
        }));
    }
    for caller in callers {
        caller
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }

    // Check that every row arrived, through the same typed-message path.
    let lease = manager.acquire().owner("auditor").await?;
    let expected_sum = f64::from((0..READINGS_PER_DEVICE).sum::<u32>());
    for device in 0..DEVICES {
        let (count, sum) = lease.send(Query { device }).await??;
        assert_eq!(
            count,
            i64::from(READINGS_PER_DEVICE),
            "device {device} lost rows"
        );
        assert!(
            (sum - expected_sum).abs() < 1e-9,
            "device {device} sum {sum}"
        );
    }
    let total: i64 = lease
        .run_with(|db: &mut Db| {
            db.conn
                .query_row("SELECT COUNT(*) FROM readings", [], |r| r.get(0))
        })
        .await??;
    println!(
        "{total} rows from {DEVICES} devices x {READINGS_PER_DEVICE} readings, all present ({} workers, one connection each)",
        manager.stats().await.workers_per_pool
    );
    assert_eq!(total, i64::from(DEVICES * READINGS_PER_DEVICE));
    lease.release().await;
    manager.stop().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
