//! Instances that start side by side: on PostgreSQL several `duka serve` share a database
//! (migrations run once, one session key for all, housekeeping by one at a time, timeouts
//! on every connection); on SQLite one `serve` holds a database file and a second refuses.
//! Real processes, as an operator starts them.

use crate::support::process::log_field;
use crate::support::*;
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use serde_json::json;
use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const KEY_A: &str = "cluster-session-key-A-0123456789abcdef";
const KEY_B: &str = "cluster-session-key-B-0123456789abcdef";

/// The binary with none of this shell's duka settings: `database.url`, the test token,
/// `data_dir` and, when given, `auth.session_key` from the environment.
fn duka(db_url: &str, data_dir: &Path, session_key: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duka"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DUKA__") || k == "RUST_LOG" || k == "STATE_DIRECTORY" {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(data_dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env("DUKA__DATA_DIR", data_dir)
        .env("DUKA__DATABASE__URL", db_url)
        .env("DUKA__HTTP__BIND", "127.0.0.1:0")
        .env("DUKA__HTTP__WORKERS", "1")
        .env("DUKA__AUTH__TOKENS", format!("[\"{TOKEN}\"]"));
    if let Some(key) = session_key {
        cmd.env("DUKA__AUTH__SESSION_KEY", key);
    }
    cmd
}

/// A `duka serve` on its way up: every line it writes is collected.
struct Starting {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

/// One that said where it listens (its lines are still collected: a closed pipe would
/// fail its logging).
struct Running {
    child: Child,
    url: String,
    lines: Receiver<String>,
    seen: Vec<String>,
}

/// One that exited instead.
#[derive(Debug)]
struct Refused {
    code: Option<i32>,
    output: String,
}

fn spawn(mut cmd: Command) -> Starting {
    let mut child = cmd
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start duka");
    let (tx, lines) = std::sync::mpsc::channel();
    let pipes: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for pipe in pipes {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    Starting {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Starting {
    /// Waits (blocking, bounded) until it listens or exits.
    fn outcome(mut self) -> Result<Running, Refused> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let url = line
                        .contains("listening")
                        .then(|| log_field(&line, "url"))
                        .flatten();
                    self.seen.push(line);
                    if let Some(url) = url {
                        return Ok(Running {
                            child: self.child,
                            url,
                            lines: self.lines,
                            seen: self.seen,
                        });
                    }
                }
                // Both pipes closed: it exited.
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait for duka");
                    return Err(Refused {
                        code: status.code(),
                        output: self.seen.join("\n"),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("duka neither listened nor exited in 60 s: {:#?}", self.seen);
                }
            }
        }
    }
}

async fn start(cmd: Command) -> Result<Running, Refused> {
    tokio::task::spawn_blocking(move || spawn(cmd).outcome())
        .await
        .unwrap()
}

async fn started(cmd: Command) -> Running {
    start(cmd)
        .await
        .unwrap_or_else(|refused| panic!("duka did not start: {refused:?}"))
}

async fn refused(cmd: Command) -> Refused {
    match start(cmd).await {
        Ok(running) => panic!("duka started at {}, expected a refusal", running.url),
        Err(refused) => {
            assert_ne!(refused.code, Some(0), "{}", refused.output);
            refused
        }
    }
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (SIGKILL: the process dies as in a crash) and answers its lines so far.
    fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader threads end with the pipes.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn status(url: &str) -> u16 {
    client().get(url).send().await.unwrap().status().as_u16()
}

/// A session cookie made by the instance at `url` from the test token.
async fn session_cookie(url: &str) -> String {
    let r = client()
        .post(format!("{url}/auth/session"))
        .json(&json!({ "token": TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("duka_session="))
        .expect("a session cookie")
        .to_string();
    set.split(';').next().unwrap().to_string()
}

async fn me_with_cookie(url: &str, cookie: &str) -> u16 {
    client()
        .get(format!("{url}/auth/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `duka ARGS` (a one-shot command) to its end: (exit code, stdout + stderr).
async fn run(mut cmd: Command, args: &[&str]) -> (i32, String) {
    cmd.args(args);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output().expect("run duka")),
    )
    .await
    .expect("duka exited in bounded time")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn is_error_line(line: &str) -> bool {
    line.contains(" ERROR ") || line.contains("\"level\":\"ERROR\"")
}

#[tokio::test]
async fn instances_started_together_on_an_empty_database_migrate_it_once() {
    let db = TestDb::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // All three before any is waited for.
    let starting: Vec<_> = dirs
        .iter()
        .map(|d| spawn(duka(db.url(), d.path(), Some(KEY_A))))
        .collect();
    let outcomes = tokio::task::spawn_blocking(move || {
        starting
            .into_iter()
            .map(Starting::outcome)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    if !db.is_postgres() {
        // SQLite: one process per file; the others say it is taken.
        let mut running = Vec::new();
        let mut refused = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(r) => running.push(r),
                Err(r) => refused.push(r),
            }
        }
        assert_eq!(running.len(), 1, "{refused:?}");
        for r in &refused {
            assert_ne!(r.code, Some(0));
            assert!(r.output.contains("is in use by"), "{}", r.output);
        }
        let running = running.pop().unwrap();
        assert_eq!(status(&format!("{}/readyz", running.url)).await, 200);
        return;
    }
    let running: Vec<Running> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|r| panic!("an instance did not start: {r:?}")))
        .collect();
    for r in &running {
        assert_eq!(status(&format!("{}/readyz", r.url)).await, 200);
    }
    let conn = db.connect().await;
    let applied = scalar(&conn, "SELECT COUNT(*) FROM seaql_migrations").await;
    use migrations::MigratorTrait;
    assert_eq!(applied, migrations::Migrator::migrations().len() as i64);
    let logs: Vec<Vec<String>> = running.into_iter().map(Running::kill).collect();
    for lines in &logs {
        let errors: Vec<_> = lines.iter().filter(|l| is_error_line(l)).collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }
    // The first migration was applied by exactly one of them.
    let appliers = logs
        .iter()
        .filter(|lines| {
            lines
                .iter()
                .any(|l| l.contains("Applying migration 'm20261122_000001_initial'"))
        })
        .count();
    assert_eq!(appliers, 1, "{logs:#?}");
}

#[tokio::test]
async fn an_instance_with_another_session_key_refuses_to_start_until_the_key_is_reset() {
    let db = TestDb::new();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = started(duka(db.url(), dir_a.path(), Some(KEY_A))).await;
    let cookie = session_cookie(&first.url).await;
    // SQLite has one process per file: the others start after the first has stopped.
    let first = if db.is_postgres() {
        Some(first)
    } else {
        first.kill();
        None
    };

    let other = refused(duka(db.url(), dir_b.path(), Some(KEY_B))).await;
    assert!(
        other.output.contains("auth.session_key"),
        "{}",
        other.output
    );
    assert!(other.output.contains("same"), "{}", other.output);
    assert!(!other.output.contains(KEY_A) && !other.output.contains(KEY_B));
    // With no key configured, the key generated into its data directory differs too.
    let generated = refused(duka(db.url(), dir_b.path(), None)).await;
    assert!(
        generated.output.contains("auth.session_key") && generated.output.contains("session-key"),
        "{}",
        generated.output
    );

    // With the deployment's key: it starts, and a cookie made by the first instance works.
    let second = started(duka(db.url(), dir_b.path(), Some(KEY_A))).await;
    assert_eq!(me_with_cookie(&second.url, &cookie).await, 200);
    if let Some(first) = &first {
        let theirs = session_cookie(&second.url).await;
        assert_eq!(me_with_cookie(&first.url, &theirs).await, 200);
    }
    drop(first);
    second.kill();

    // A deliberate change: reset to the new key, and then only the new key starts.
    let (code, out) = run(
        duka(db.url(), dir_b.path(), Some(KEY_B)),
        &["migrate", "--reset-session-key"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let renewed = started(duka(db.url(), dir_b.path(), Some(KEY_B))).await;
    assert_eq!(me_with_cookie(&renewed.url, &cookie).await, 401);
    let renewed = if db.is_postgres() {
        Some(renewed)
    } else {
        renewed.kill();
        None
    };
    let old = refused(duka(db.url(), dir_a.path(), Some(KEY_A))).await;
    assert!(old.output.contains("auth.session_key"), "{}", old.output);
    drop(renewed);
}

/// Always on SQLite, whichever database the rest of the suite uses.
#[tokio::test]
async fn a_sqlite_file_is_served_by_one_process_and_a_killed_one_does_not_block_the_next() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("db/duka.db");
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = started(duka(&url, dir_a.path(), None)).await;
    assert!(work.path().join("db/duka.db.lock").exists());

    let second = refused(duka(&url, dir_b.path(), None)).await;
    assert!(
        second.output.contains(&format!("process {}", first.pid())),
        "{}",
        second.output
    );
    assert!(second.output.contains("duka.db.lock"), "{}", second.output);

    // The one-shot commands work beside it.
    let (code, out) = run(duka(&url, dir_a.path(), None), &["migrate"]).await;
    assert_eq!(code, 0, "{out}");
    let copy = work.path().join("copy.db");
    let (code, out) = run(
        duka(&url, dir_a.path(), None),
        &["backup", copy.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(copy.exists());
    assert_eq!(status(&format!("{}/readyz", first.url)).await, 200);

    // Killed: the kernel drops its lock, and the next one starts at once.
    first.kill();
    let next = started(duka(&url, dir_a.path(), None)).await;
    assert_eq!(status(&format!("{}/readyz", next.url)).await, 200);
}

#[tokio::test]
async fn duka_connections_carry_their_timeouts() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&db, dir.path());
    let conn = duka::store::connect(&settings.database, settings.database.max_connections)
        .await
        .unwrap();
    let show = |sql: &'static str| {
        let conn = conn.clone();
        async move {
            let row = conn
                .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<String>(0)
                .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
                .unwrap()
        }
    };
    if !db.is_postgres() {
        assert_eq!(show("PRAGMA journal_mode").await, "wal");
        assert_eq!(show("PRAGMA synchronous").await, "2");
        assert_eq!(show("PRAGMA foreign_keys").await, "1");
        return;
    }
    assert_eq!(
        show("SHOW idle_in_transaction_session_timeout").await,
        "30s"
    );
    assert_eq!(show("SHOW statement_timeout").await, "30s");
    assert_eq!(show("SHOW lock_timeout").await, "2s");
    // A value the URL gives wins.
    let mut settings = settings.clone();
    settings.database.url = format!(
        "{}?options=-c%20statement_timeout%3D45s",
        settings.database.url
    );
    let conn = duka::store::connect(&settings.database, settings.database.max_connections)
        .await
        .unwrap();
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SHOW statement_timeout",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get_by_index::<String>(0).unwrap(), "45s");
}

/// sqlx 0.9.0 leaves Nagle's algorithm on; duka turns it off on each connection it opens
/// (`store::pg_socket`), or a statement larger than a TCP segment waits up to 40 ms.
#[tokio::test]
async fn postgres_connections_send_without_delay() {
    let db = TestDb::postgres();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&db, dir.path());
    let conn = duka::store::connect(&settings.database, settings.database.max_connections)
        .await
        .unwrap();
    // Several connections at once, so that more than the first one is looked at.
    let ends = "SELECT host(inet_client_addr()) || ' ' || inet_client_port() || ' ' || \
                host(inet_server_addr()) || ' ' || inet_server_port() AS ends, \
                pg_sleep(0.2)::text AS slept";
    let mut seen = futures_util::future::join_all((0..4).map(|_| text(&conn, ends))).await;
    seen.sort();
    seen.dedup();
    assert!(
        seen.len() > 1,
        "the queries shared one connection: {seen:?}"
    );
    for ends in seen {
        let parts: Vec<&str> = ends.split(' ').collect();
        let addr = |ip: &str, port: &str| {
            std::net::SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap())
        };
        let (local, peer) = (addr(parts[0], parts[1]), addr(parts[2], parts[3]));
        let fd = duka::sys::socket_of(local, peer)
            .unwrap_or_else(|| panic!("no socket of this process is {local} -> {peer}"));
        let nodelay = duka::sys::int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY);
        assert_eq!(nodelay.map(|v| v != 0), Some(true), "{local} -> {peer}");
    }
}

/// A pooled connection is pinged before it is handed out only once it has been idle for a
/// second (`store::PING_IF_IDLE_FOR`, not on every acquire): connections the server dropped
/// are found that way and replaced, so the writes and reads after the cut all succeed.
#[tokio::test]
async fn connections_the_server_dropped_are_replaced() {
    let app = spawn_app_on(TestDb::postgres(), |s| s.sms.enabled = false).await;
    let customer = app.create_customer(json!({})).await;
    let id = customer["id"].as_str().unwrap();
    app.create_order(id, json!({})).await;
    assert_eq!(app.get("/api/v1/orders").await.status(), 200);
    let name = app.db.postgres_name().expect("a database of its own");
    let admin = app.db.connect().await;
    let cut = scalar(
        &admin,
        &format!(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ),
    )
    .await;
    assert!(cut >= 2, "only {cut} of the app's connections were found");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        app.create_order(id, json!({})).await;
    }
    let orders: serde_json::Value = app.get("/api/v1/orders").await.json().await.unwrap();
    assert_eq!(
        orders["items"].as_array().map(Vec::len),
        Some(4),
        "{orders}"
    );
}

#[tokio::test]
async fn the_maintenance_pass_is_skipped_while_another_instance_runs_it() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&db, dir.path());
    let conn = duka::store::connect(&settings.database, settings.database.max_connections)
        .await
        .unwrap();
    duka::store::migrate(&conn).await.unwrap();
    let expired = "INSERT INTO sessions (id_hash, subject, mode, created_at, expires_at) \
                   VALUES ('gone', 'someone', 'token', 0, 1)";
    conn.execute_unprepared(expired).await.unwrap();
    let retention = Duration::from_secs(365 * 86_400);
    let sessions_pruned = |pruned: duka::store::maintenance::Pruned| {
        let steps = pruned.expect("the pass ran");
        let (what, result) = &steps[0];
        assert_eq!(*what, "expired sessions");
        *result.as_ref().unwrap()
    };
    if db.is_postgres() {
        // Another instance in the middle of its pass holds the lock.
        let other = db.connect().await;
        let txn = other.begin().await.unwrap();
        txn.execute_raw(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [duka::store::MAINTENANCE_LOCK_KEY.into()],
        ))
        .await
        .unwrap();
        let pruned = duka::store::maintenance::pass(&conn, retention)
            .await
            .unwrap();
        assert!(pruned.is_none(), "ran beside another instance's pass");
        assert_eq!(scalar(&conn, "SELECT COUNT(*) FROM sessions").await, 1);
        txn.commit().await.unwrap();
    }
    let pruned = duka::store::maintenance::pass(&conn, retention)
        .await
        .unwrap();
    assert_eq!(sessions_pruned(pruned), 1);
    assert_eq!(scalar(&conn, "SELECT COUNT(*) FROM sessions").await, 0);
}
