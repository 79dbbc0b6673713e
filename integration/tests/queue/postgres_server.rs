//! A private PostgreSQL cluster for this test binary (the store of issue 23, being built): a
//! throwaway cluster `initdb`'d into a temp dir, run as an unprivileged user (CI runs as root,
//! and PostgreSQL refuses root), on a free loopback port; stopped and its directory removed
//! when the binary ends — by `stop_postgres` at the end of `main`, or by its watchdog shell if
//! the binary dies (abort, SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::fixtures::{start_watched, stop_watched};

/// The running cluster.
pub(crate) struct PostgresServer {
    child: Child,
    url: String,
    port: u16,
    bin: PathBuf,
}

static POSTGRES: std::sync::Mutex<Option<PostgresServer>> = std::sync::Mutex::new(None);

/// The directory of PostgreSQL's server programs: Debian's `/usr/lib/postgresql/<version>/bin`
/// (the newest), else one on `PATH` that has them all.
fn server_bin() -> PathBuf {
    const PROGRAMS: [&str; 3] = ["initdb", "postgres", "pg_isready"];
    let complete = |dir: &Path| PROGRAMS.iter().all(|p| dir.join(p).is_file());
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|dir| complete(dir))
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server programs are missing: these tests need the Debian package \
                 postgresql (`apt-get install postgresql`; .ci/run installs it)"
            )
        })
}

/// `program args…` as the cluster's user: `postgres` when this binary runs as root.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The URL of this binary's cluster (`postgres://postgres@127.0.0.1:PORT/postgres`), started on
/// first use.
pub(crate) fn postgres_url() -> String {
    let mut slot = POSTGRES.lock().unwrap();
    if let Some(pg) = slot.as_ref() {
        return pg.url.clone();
    }
    let bin = server_bin();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Under the system temp dir, where the unprivileged user can reach it.
    let dir = std::env::temp_dir().join(format!("lp-queue-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        let owned = Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(owned.success(), "chown {dir:?} to postgres");
    }
    let data = dir.join("data");
    let init = as_owner(&bin.join("initdb"))
        .args([
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(
        init.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    // A shell that runs the server, ends it when this binary dies (a fast shutdown of the
    // postmaster named in its pid file: a `runuser` between them forwards no signal), and
    // removes the cluster.
    let runner = if is_root() {
        "runuser -u postgres --"
    } else {
        ""
    };
    let watchdog = format!(
        "{runner} '{postgres}' -D '{data}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 \
         -c fsync=off -c max_connections=400 >'{dir}/server.log' 2>&1 & r=$!; \
         trap 'p=$(head -n 1 \"{data}/postmaster.pid\" 2>/dev/null); \
               if [ -n \"$p\" ]; then kill -INT $p 2>/dev/null; \
                 for i in $(seq 1 100); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; \
                 kill -KILL $p 2>/dev/null; fi; \
               rm -rf \"{dir}\"' EXIT TERM INT; \
         while kill -0 {me} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.5; done",
        postgres = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display(),
        me = std::process::id()
    );
    let child = start_watched(&watchdog, "postgres", || ready(&bin, port));
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    *slot = Some(PostgresServer {
        child,
        url: url.clone(),
        port,
        bin,
    });
    url
}

fn ready(bin: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The running cluster's programs and port.
fn running() -> (PathBuf, u16) {
    let slot = POSTGRES.lock().unwrap();
    let pg = slot.as_ref().expect("postgres_url() first");
    (pg.bin.clone(), pg.port)
}

/// `psql` on this binary's cluster (tuples only, unaligned).
fn psql_command() -> Command {
    let (bin, port) = running();
    let psql = Some(bin.join("psql"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("psql"));
    let mut c = Command::new(psql);
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-tA",
    ]);
    c
}

/// Runs one SQL statement on this binary's cluster with `psql`; its output.
pub(crate) fn psql(sql: &str) -> String {
    psql_in("postgres", sql)
}

/// Runs one SQL statement in database `db` of this binary's cluster; its output.
pub(crate) fn psql_in(db: &str, sql: &str) -> String {
    let out = psql_command()
        .args(["-d", db, "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A `psql` session on this binary's cluster that holds what `sql` takes (run in a
/// transaction) until dropped; returns once `sql` ran.
pub(crate) struct Held(Child);

pub(crate) fn hold(sql: &str) -> Held {
    use std::io::{BufRead as _, Write as _};
    let mut child = psql_command()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run psql");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "BEGIN; {sql}; SELECT 'held';").unwrap();
    child.stdin = Some(stdin);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.trim() == "held")),
        "psql did not take: {sql}"
    );
    Held(child)
}

impl Drop for Held {
    fn drop(&mut self) {
        // Closing its input ends the session: its transaction is rolled back.
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Stops the cluster and removes it (its shell's trap does both).
pub(crate) fn stop_postgres() {
    let taken = POSTGRES.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(mut pg) = taken {
        stop_watched(&mut pg.child);
    }
}

/// The cluster the PostgreSQL store's tests will use: it starts, answers, and is not a
/// superuser's shared server but this binary's own.
#[testkit::test]
async fn a_throwaway_postgres_cluster_starts_on_a_free_loopback_port() {
    let _deadline = testkit::deadline();
    let url = postgres_url();
    assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    assert_eq!(psql("SELECT 40 + 2"), "42");
    assert_eq!(psql("SHOW listen_addresses"), "127.0.0.1");
    let dir = psql("SHOW data_directory");
    assert!(
        dir.contains(&format!("lp-queue-pg-{}", std::process::id())),
        "{dir}"
    );
}
