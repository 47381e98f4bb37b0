//! Running duka for real: the binary's commands (`token`, `config check`, `backup`,
//! `--version`, `watch` over https), where it keeps its files, its logs from the first
//! line, compression and caching of what it serves, and the deployment files in `deploy/`.

use crate::support::process::log_field as field;
use crate::support::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The binary with none of this shell's duka settings, run in `cwd`.
fn duka(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duka"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DUKA__") || k == "RUST_LOG" || k == "STATE_DIRECTORY" {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(cwd).env("NO_COLOR", "1");
    cmd
}

/// Runs to the end (bounded), answering (exit code, stdout, stderr).
async fn output(mut cmd: Command) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output().expect("run duka")),
    )
    .await
    .expect("duka exited in bounded time")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `duka serve` whose every output line (stdout and stderr) is collected.
struct Served {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<(&'static str, String)>,
    seen: Vec<(&'static str, String)>,
    url: String,
}

impl Served {
    /// Starts `cmd` (a `serve` command line) and waits for its "listening" line.
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start duka");
        let (tx, lines) = std::sync::mpsc::channel();
        let pipes: [(&'static str, Box<dyn Read + Send>); 2] = [
            ("stdout", Box::new(child.stdout.take().unwrap())),
            ("stderr", Box::new(child.stderr.take().unwrap())),
        ];
        for (name, pipe) in pipes {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((name, line)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut served = Self {
            child,
            lines,
            seen: Vec::new(),
            url: String::new(),
        };
        let line = served.wait_for(|l| l.contains("listening"));
        served.url = field(&line, "url").unwrap_or_else(|| panic!("no url in {line}"));
        served
    }

    fn wait_for(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((pipe, line)) => {
                    self.seen.push((pipe, line.clone()));
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no such line from duka ({e}); exit: {:?}; so far: {:#?}",
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// Stops it with SIGINT and answers every line it wrote, in order.
    fn stop(mut self) -> Vec<(&'static str, String)> {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if std::time::Instant::now() >= deadline {
                let last: Vec<_> = self.seen.iter().rev().take(15).rev().collect();
                panic!("duka did not stop within 30 s of SIGINT; its last lines: {last:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The reader threads end with the pipes.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of a log line: `fields.NAME` of a JSON line, `NAME=value` of a text one.
fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn version_names_the_commit_it_was_built_from() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = duka(dir.path());
    cmd.arg("--version");
    let (code, stdout, _) = output(cmd).await;
    assert_eq!(code, 0);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let expected = match (std::env::var("DUKA_BUILD_COMMIT"), head) {
        (Ok(commit), _) if !commit.is_empty() => commit,
        (_, Some(head)) => head,
        _ => "unknown".into(),
    };
    assert_eq!(
        stdout.trim(),
        format!("duka {} (commit {expected})", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn config_check_prints_the_effective_settings_with_every_secret_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        "tok-never-shown-1",
        "atsk_never_shown_2",
        "hook-never-shown-3",
        "session-key-never-shown-4-0123456789abcdef",
        "pg-pass-never-shown-5",
    ];
    let config = dir.path().join("etc/duka.toml");
    write(
        &config,
        &format!(
            "data_dir = \"state\"\n\
             [database]\nurl = \"postgres://duka:{}@db.example:5432/duka\"\n\
             [auth]\ntokens = [\"{}\"]\nsession_key = \"{}\"\n\
             [sms]\nprovider = \"africastalking\"\n\
             [sms.africastalking]\napi_key = \"{}\"\nwebhook_secret = \"{}\"\n",
            secrets[4], secrets[0], secrets[3], secrets[1], secrets[2]
        ),
    );
    let mut cmd = duka(dir.path());
    cmd.arg("--config")
        .arg(&config)
        .args(["config", "check"])
        .env("DUKA__HTTP__BIND", "0.0.0.0:9999");
    let (code, stdout, stderr) = output(cmd).await;
    assert_eq!(code, 0, "{stderr}");
    for secret in secrets {
        assert!(!stdout.contains(secret), "{secret} shown:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} shown:\n{stderr}");
    }
    // The output is TOML a person can read back: the effective values, secrets marked.
    let shown: toml::Table = stdout.parse().unwrap_or_else(|e| panic!("{e}:\n{stdout}"));
    assert_eq!(shown["http"]["bind"].as_str(), Some("0.0.0.0:9999"));
    assert_eq!(shown["sms"]["provider"].as_str(), Some("africastalking"));
    assert_eq!(
        shown["sms"]["africastalking"]["api_key"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(shown["auth"]["session_key"].as_str(), Some("[redacted]"));
    let url = shown["database"]["url"].as_str().unwrap();
    assert!(
        url.contains("db.example") && url.contains("redacted"),
        "{url}"
    );
    // A relative data_dir is relative to the config file's directory.
    assert_eq!(
        shown["data_dir"].as_str().map(PathBuf::from),
        Some(
            config
                .parent()
                .unwrap()
                .canonicalize()
                .unwrap()
                .join("state")
        )
    );

    // Invalid: exit 2 and the one line `serve` gives, before anything starts.
    for (env, key) in [
        ("DUKA__HTTP__BIND", "http.bind"),
        (
            "DUKA__SMS__AFRICASTALKING__API_KEY",
            "sms.africastalking.api_key",
        ),
    ] {
        let value = if key == "http.bind" { "nowhere" } else { "" };
        let mut check = duka(dir.path());
        check
            .arg("--config")
            .arg(&config)
            .args(["config", "check"])
            .env(env, value);
        let (code, stdout, stderr) = output(check).await;
        assert_eq!(code, 2, "{stdout}{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        let message = stderr
            .trim()
            .split_once("configuration error: ")
            .map(|(_, m)| m.to_string())
            .unwrap_or_else(|| panic!("{stderr}"));
        assert!(message.starts_with(key), "{message}");
        let mut serve = duka(dir.path());
        serve
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env(env, value);
        let (code, _, served) = output(serve).await;
        assert_eq!(code, 2, "{served}");
        assert!(served.trim().ends_with(&message), "{served} vs {message}");
    }
}

#[tokio::test]
async fn json_logs_parse_line_by_line_from_the_first_line() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("duka.toml");
    write(
        &config,
        &format!(
            "data_dir = \"data\"\n[http]\nbind = \"127.0.0.1:0\"\nworkers = 1\n\
             [database]\nurl = {:?}\n[log]\nformat = \"json\"\n",
            db.url()
        ),
    );
    let mut cmd = duka(dir.path());
    cmd.arg("--config").arg(&config).arg("serve");
    let mut served = Served::start(cmd);
    // A token generated at this start is logged once, as JSON too.
    let token_line = served.wait_for(|l| l.contains("generated an API token"));
    let token = field(&token_line, "token").unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/customers", served.url))
        .bearer_auth(&token)
        .json(&json!({"name": "Logged", "phone": unique_phone()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    served.wait_for(|l| l.contains("request finished"));
    let lines = served.stop();
    assert!(lines.len() >= 5, "{lines:#?}");
    let mut messages = Vec::new();
    for (pipe, line) in &lines {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{pipe} line not JSON ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
        messages.push(
            entry["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        // Logs are stderr's; stdout is for a command's result.
        assert_eq!(*pipe, "stderr", "{line}");
    }
    assert_eq!(messages[0], "duka starting", "{messages:?}");
    let location = lines
        .iter()
        .find(|(_, l)| l.contains("SQLite database") || l.contains("\"database\""))
        .map(|(_, l)| l.clone())
        .unwrap_or_else(|| panic!("the database location is not logged: {lines:#?}"));
    let data_dir = field(&location, "data_dir").unwrap();
    assert_eq!(
        PathBuf::from(&data_dir),
        dir.path().canonicalize().unwrap().join("data")
    );
    assert!(messages.iter().any(|m| m == "shutting down gracefully"));

    // A configuration error is JSON too, and the next start logs no token.
    let mut broken = duka(dir.path());
    broken
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("DUKA__HTTP__BIND", "nowhere");
    let (code, stdout, stderr) = output(broken).await;
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    let entry: Value =
        serde_json::from_str(stderr.trim()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(entry["level"], "ERROR");
    assert!(
        entry["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("http.bind")
    );

    let mut again = duka(dir.path());
    again.arg("--config").arg(&config).arg("serve");
    let again = Served::start(again);
    let lines = again.stop();
    assert!(
        lines.iter().all(|(_, l)| !l.contains(&token)),
        "the token was logged again: {lines:#?}"
    );
}

#[tokio::test]
async fn token_prints_the_generated_token_and_refuses_when_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("conf/duka.toml");
    write(
        &config,
        "[http]\nbind = \"127.0.0.1:0\"\nworkers = 1\n[database]\nurl = \"sqlite://db/duka.db?mode=rwc\"\n",
    );
    let token_cmd = || {
        let mut cmd = duka(dir.path());
        cmd.arg("--config").arg(&config).arg("token");
        cmd
    };
    let (code, stdout, stderr) = output(token_cmd()).await;
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("no token yet"), "{stderr}");

    let mut cmd = duka(dir.path());
    cmd.arg("--config").arg(&config);
    let mut served = Served::start(cmd);
    let line = served.wait_for(|l| l.contains("generated an API token"));
    let token = field(&line, "token").unwrap();
    drop(served.stop());
    let (code, stdout, _) = output(token_cmd()).await;
    assert_eq!((code, stdout.trim()), (0, token.as_str()));
    // The file sits in the data directory beside the config file, mode 0600.
    let file = config.parent().unwrap().join("data/api-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Configured tokens are not printed.
    let mut cmd = token_cmd();
    cmd.env("DUKA__AUTH__TOKENS", "[\"configured-token-1\"]");
    let (code, stdout, stderr) = output(cmd).await;
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert!(stderr.contains("auth.tokens") && !stderr.contains("configured-token-1"));
}

#[tokio::test]
async fn started_from_another_directory_with_its_config_file_it_finds_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etc/duka/duka.toml");
    write(
        &config,
        "data_dir = \"state\"\n[http]\nbind = \"127.0.0.1:0\"\nworkers = 1\n\
         [database]\nurl = \"sqlite://state/duka.db?mode=rwc\"\n",
    );
    let elsewhere = [dir.path().join("one"), dir.path().join("two/deeper")];
    for d in &elsewhere {
        std::fs::create_dir_all(d).unwrap();
    }
    let expected = config
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap()
        .join("state");

    let mut cmd = duka(&elsewhere[0]);
    cmd.arg("--config").arg(&config).arg("serve");
    let mut served = Served::start(cmd);
    let line = served.wait_for(|l| l.contains("generated an API token"));
    let token = field(&line, "token").unwrap();
    let name = format!("Same Place {}", marker());
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/customers", served.url))
        .bearer_auth(&token)
        .json(&json!({"name": name, "phone": unique_phone()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let lines = served.stop();
    let location = lines
        .iter()
        .find(|(_, l)| l.contains("SQLite database"))
        .unwrap()
        .1
        .clone();
    assert_eq!(
        field(&location, "database").map(PathBuf::from),
        Some(expected.join("duka.db")),
        "{location}"
    );

    // Another working directory, the config file named by a relative path this time.
    let mut cmd = duka(&elsewhere[1]);
    cmd.args(["--config", "../../etc/duka/duka.toml", "serve"]);
    let served = Served::start(cmd);
    let r = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/customers?q={}",
            served.url,
            name.replace(' ', "+")
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["items"][0]["name"], name.as_str(), "{body}");
    let lines = served.stop();
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.contains("SQLite database found")),
        "{lines:#?}"
    );
    for d in &elsewhere {
        assert_eq!(
            std::fs::read_dir(d).unwrap().count(),
            0,
            "files made in {d:?}"
        );
    }
}

#[tokio::test]
async fn under_systemd_the_state_directory_holds_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var/lib/duka");
    let cwd = dir.path().join("root");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    let mut cmd = duka(&cwd);
    cmd.env("STATE_DIRECTORY", &state)
        .env("DUKA__HTTP__BIND", "127.0.0.1:0")
        .env("DUKA__HTTP__WORKERS", "1")
        .arg("serve");
    let served = Served::start(cmd);
    let lines = served.stop();
    assert!(state.join("duka.db").is_file(), "{lines:#?}");
    assert!(state.join("api-token").is_file());
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);
    let mut token = duka(&cwd);
    token.env("STATE_DIRECTORY", &state).arg("token");
    let (code, stdout, stderr) = output(token).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        std::fs::read_to_string(state.join("api-token"))
            .unwrap()
            .trim()
    );
}

/// `duka backup` of the app's database (through the binary, as an operator runs it).
fn backup_cmd(cwd: &Path, db_url: &str, target: &Path) -> Command {
    let mut cmd = duka(cwd);
    cmd.env("DUKA__DATABASE__URL", db_url)
        .arg("backup")
        .arg(target);
    cmd
}

async fn open_sqlite(path: &Path) -> sea_orm::DatabaseConnection {
    sea_orm::Database::connect(format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap()
}

async fn order_ids(db: &sea_orm::DatabaseConnection) -> BTreeSet<String> {
    use sea_orm::{ConnectionTrait, Statement};
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT CAST(id AS TEXT) AS id FROM orders",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            r.try_get::<String>("", "id")
                .or_else(|_| r.try_get::<uuid::Uuid>("", "id").map(|u| u.to_string()))
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_backup_taken_while_orders_are_created_holds_every_order_acknowledged_before_it() {
    let app = spawn_app().await;
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("backup.db");
    if app.db.is_postgres() {
        let (code, stdout, stderr) = output(backup_cmd(work.path(), app.db.url(), &target)).await;
        assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
        assert!(stderr.contains("pg_dump"), "{stderr}");
        assert!(!target.exists());
        return;
    }
    let customer = app.create_customer(json!({})).await;
    let customer_id = customer["id"].as_str().unwrap().to_string();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let total = 1000;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..16 {
        let (client, url, acked, next, customer_id) = (
            app.client.clone(),
            app.url.clone(),
            acked.clone(),
            next.clone(),
            customer_id.clone(),
        );
        writers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < total {
                let r = client
                    .post(format!("{url}/api/v1/orders"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"customer_id": customer_id, "item": "Backup", "amount": "10.00"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let order: Value = r.json().await.unwrap();
                acked
                    .lock()
                    .unwrap()
                    .push(order["id"].as_str().unwrap().to_string());
            }
        }));
    }
    // Under way, but far from done.
    while acked.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before: Vec<String> = acked.lock().unwrap().clone();
    let (code, stdout, stderr) = output(backup_cmd(work.path(), app.db.url(), &target)).await;
    let after_backup = acked.lock().unwrap().len();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("backed up"), "{stdout}");
    assert_eq!(acked.lock().unwrap().len(), total);
    assert!(
        after_backup < total,
        "the orders were all created before the backup ended: nothing was tested"
    );

    let copy = open_sqlite(&target).await;
    use sea_orm::{ConnectionTrait, Statement};
    let verdict = copy
        .query_one_raw(Statement::from_string(
            copy.get_database_backend(),
            "PRAGMA integrity_check",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verdict.try_get_by_index::<String>(0).unwrap(), "ok");
    let saved = order_ids(&copy).await;
    let missing: Vec<&String> = before.iter().filter(|id| !saved.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged orders missing",
        missing.len()
    );
    // Every order in the copy is a real one (no half-written rows).
    let live = order_ids(&app.db.connect().await).await;
    assert!(saved.is_subset(&live));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Never over an existing file; never from a database that is not there.
    let (code, _, stderr) = output(backup_cmd(work.path(), app.db.url(), &target)).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exists"), "{stderr}");
    let nowhere = format!("sqlite://{}/none.db?mode=rwc", work.path().display());
    let (code, _, stderr) =
        output(backup_cmd(work.path(), &nowhere, &work.path().join("x.db"))).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no database"), "{stderr}");
    assert!(!work.path().join("none.db").exists());
    // A directory gets a timestamped file.
    let (code, stdout, stderr) = output(backup_cmd(work.path(), app.db.url(), work.path())).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("duka-"), "{stdout}");
}

#[tokio::test]
async fn back_up_wipe_restore_and_the_orders_are_there() {
    let db = TestDb::new();
    if db.is_postgres() {
        // PostgreSQL is backed up with pg_dump (the test above checks that duka says so).
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let settings = test_settings(&db, data.path());
    let (addr, (handle, thread)) = start_server(settings.clone()).await;
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();
    let customer: Value = client
        .post(format!("{url}/api/v1/customers"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "Restored", "phone": unique_phone()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids = BTreeSet::new();
    for i in 0..20 {
        let order: Value = client
            .post(format!("{url}/api/v1/orders"))
            .bearer_auth(TOKEN)
            .json(&json!({"customer_id": customer["id"], "item": format!("Item {i}"), "amount": 5}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.insert(order["id"].as_str().unwrap().to_string());
    }
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("nightly.db");
    let (code, _, stderr) = output(backup_cmd(work.path(), db.url(), &target)).await;
    assert_eq!(code, 0, "{stderr}");

    handle.stop(true).await;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    // Wipe: the database and its WAL files are gone.
    let file = settings.sqlite_path().unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    // Restore as the README says: the copy becomes the database file.
    std::fs::copy(&target, &file).unwrap();
    let (addr, (handle, thread)) = start_server(settings).await;
    let mut restored = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page = format!("http://{addr}/api/v1/orders?limit=100");
        if let Some(c) = &cursor {
            page.push_str(&format!("&cursor={c}"));
        }
        let body: Value = get(&page).await.json().await.unwrap();
        for o in body["items"].as_array().unwrap() {
            restored.insert(o["id"].as_str().unwrap().to_string());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(restored, ids);
    handle.stop(true).await;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        other => panic!("unexpected encoding {other:?}"),
    }
    out
}

#[tokio::test]
async fn compressed_responses_decode_to_the_same_bytes() {
    let app = spawn_app().await;
    app.create_customer(json!({})).await;
    let docs: String = app
        .client
        .get(format!("{}/docs/", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The Swagger UI bundle is the largest thing served.
    let bundle = docs
        .split('"')
        .find(|s| s.contains("swagger-ui-bundle") && s.ends_with(".js"))
        .map(|s| format!("/docs/{}", s.trim_start_matches("./")))
        .unwrap_or_else(|| panic!("no bundle in {docs}"));
    for path in [
        "/",
        "/app.js",
        "/style.css",
        "/api/v1/openapi.json",
        "/api/v1/customers",
        &bundle,
    ] {
        let fetch = |encoding: &'static str| {
            app.request(Method::GET, path)
                .header("accept-encoding", encoding)
                .send()
        };
        let plain = fetch("identity").await.unwrap();
        assert_eq!(plain.status(), 200, "{path}");
        assert!(plain.headers().get("content-encoding").is_none(), "{path}");
        let plain = plain.bytes().await.unwrap();
        for encoding in ["gzip", "br"] {
            let r = fetch(encoding).await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(
                r.headers()
                    .get("content-encoding")
                    .and_then(|v| v.to_str().ok()),
                Some(encoding),
                "{path}"
            );
            let vary = r.headers().get("vary").and_then(|v| v.to_str().ok());
            assert!(
                vary.is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")),
                "{path}: {vary:?}"
            );
            let body = r.bytes().await.unwrap();
            if plain.len() > 4096 {
                assert!(
                    body.len() * 2 < plain.len(),
                    "{path} {encoding}: {} of {}",
                    body.len(),
                    plain.len()
                );
            }
            assert!(
                decode(encoding, &body) == plain,
                "{path} {encoding} decodes to other bytes"
            );
        }
    }
}

#[tokio::test]
async fn embedded_assets_carry_etags_and_content_hashed_names_cached_for_a_year() {
    let app = spawn_app().await;
    let page = app
        .client
        .get(format!("{}/", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(header_of(&page, "cache-control"), "no-cache");
    let etag = header_of(&page, "etag");
    assert!(etag.starts_with("W/\""), "{etag}");
    let html = page.text().await.unwrap();
    for (plain, ext) in [("/app.js", "js"), ("/style.css", "css")] {
        let stem = plain.trim_end_matches(&format!(".{ext}"));
        let hashed = html
            .split('"')
            .find(|s| {
                s.starts_with(&format!("{stem}.")) && s.ends_with(&format!(".{ext}")) && *s != plain
            })
            .unwrap_or_else(|| panic!("{plain} is not referred to by a hashed name: {html}"));
        let r = app
            .client
            .get(format!("{}{hashed}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{hashed}");
        assert_eq!(
            header_of(&r, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        let body = r.bytes().await.unwrap();
        let r = app
            .client
            .get(format!("{}{plain}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(header_of(&r, "cache-control"), "no-cache");
        let tag = header_of(&r, "etag");
        assert_eq!(
            r.bytes().await.unwrap(),
            body,
            "{plain} and {hashed} differ"
        );
        // Revalidation costs no body.
        let r = app
            .client
            .get(format!("{}{plain}", app.url))
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{plain}");
        assert_eq!(header_of(&r, "etag"), tag);
        assert!(r.bytes().await.unwrap().is_empty());
        let r = app
            .client
            .get(format!("{}{plain}", app.url))
            .header("if-none-match", "W/\"something-else\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = app
        .client
        .get(format!("{}/", app.url))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
}

fn header_of(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A TLS front for `app` with a certificate from a CA of its own; answers its port and
/// the CA's PEM.
async fn tls_front(backend: std::net::SocketAddr) -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (port, ca_cert.pem())
}

// Frames are read with blocking waits while the TLS front runs on the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_connects_over_https_and_gives_up_when_the_first_connection_never_succeeds() {
    let app = spawn_app().await;
    let (port, ca) = tls_front(app.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    write(&ca_file, &ca);
    let mut cmd = duka(dir.path());
    cmd.env("SSL_CERT_FILE", &ca_file)
        .env_remove("SSL_CERT_DIR")
        .args(["watch", "--json", "--token", TOKEN, "--url"])
        .arg(format!("https://localhost:{port}"));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let next = |rx: &std::sync::mpsc::Receiver<String>, child: &mut Kill| -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| {
                let _ = child.0.kill();
                let mut err = String::new();
                let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
                panic!("no frame from duka watch ({e}): {err}")
            });
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next(&rx, &mut child)["type"], "hello");
    let customer = app.create_customer(json!({})).await;
    let frame = next(&rx, &mut child);
    assert_eq!(frame["type"], "customer.created");
    assert_eq!(frame["data"]["id"], customer["id"]);
    drop(child);

    // Nobody listens there: a bounded number of attempts, then a clear message. The port
    // stays bound (without listening, so connections are refused) for the whole attempt:
    // a port merely freed could be taken by another test's server meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port();
    let mut cmd = duka(dir.path());
    cmd.args(["watch", "--token", TOKEN, "--url"])
        .arg(format!("http://127.0.0.1:{port}"));
    let (code, stdout, stderr) = output(cmd).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("gave up after 5 attempts"), "{stderr}");
    drop(closed);
    // An untrusted certificate is no connection either.
    let (port, _) = tls_front(app.addr).await;
    let mut cmd = duka(dir.path());
    cmd.env("SSL_CERT_FILE", &ca_file)
        .args(["watch", "--token", TOKEN, "--url"])
        .arg(format!("https://localhost:{port}"));
    let (code, _, stderr) = output(cmd).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("gave up") && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/duka.service"))
        .unwrap();
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=duka",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/local/bin/duka ",
    ] {
        assert!(unit.contains(directive), "{directive} missing");
    }
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!(
            "systemd-analyze is not installed, so deploy/duka.service cannot be verified: \
             apt-get install systemd (scripts/test does)"
        );
    };
    assert!(version.status.success());
    // Verified as installed, but with this build's binary where the unit expects it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duka.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/duka", env!("CARGO_BIN_EXE_duka")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {report}");
    // It reports unknown or misspelt directives without failing.
    for line in report.lines() {
        assert!(!line.contains("duka.service"), "{report}");
    }
}

/// What compose.yaml gives every duka instance: `x-duka` (merged into duka1 and duka2).
fn compose_environment(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    use yaml_rust2::{Yaml, YamlLoader};
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/compose.yaml"))
        .unwrap();
    let doc = YamlLoader::load_from_str(&text).unwrap().remove(0);
    let base = &doc["x-duka"];
    for service in ["duka1", "duka2"] {
        assert_eq!(
            &doc["services"][service]["<<"], base,
            "{service} is not x-duka"
        );
    }
    let Yaml::Hash(env) = &base["environment"] else {
        panic!("x-duka.environment is not a mapping")
    };
    // ${NAME:?message}, ${NAME:-default} and ${NAME} as compose interpolates them.
    let interpolate = |value: &str| {
        let mut out = String::new();
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').unwrap() + start;
            let expr = &rest[start + 2..end];
            let name = expr.split([':', '-', '?']).next().unwrap();
            let default = expr.split_once(":-").map(|(_, d)| d).unwrap_or("");
            let value = vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            assert!(
                value.is_some() || !expr.contains(":?"),
                "{name} is required"
            );
            out.push_str(value.unwrap_or(default));
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    };
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                other => panic!("{k:?}: {other:?}"),
            };
            (k.as_str().unwrap().to_string(), interpolate(&v))
        })
        .collect()
}

#[tokio::test]
async fn the_container_settings_alone_start_duka_on_postgresql() {
    let db = TestDb::new();
    let token = "compose-api-token-0123456789";
    let vars = [
        ("POSTGRES_PASSWORD", "pw"),
        ("DUKA_API_TOKEN", token),
        (
            "DUKA_SESSION_KEY",
            "compose-session-key-0123456789abcdef0123",
        ),
    ];
    let env = compose_environment(&vars);
    let names: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for needed in [
        "DUKA__HTTP__BIND",
        "DUKA__DATABASE__URL",
        "DUKA__AUTH__TOKENS",
        "DUKA__AUTH__SESSION_KEY",
    ] {
        assert!(names.contains(needed), "{needed} missing from compose.yaml");
    }
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER duka") && dockerfile.contains("HEALTHCHECK"));
    assert!(dockerfile.contains("VOLUME [\"/var/lib/duka\"]"));
    let state = tempfile::tempdir().unwrap();
    // As in the image: nothing but these variables, the image's own, and an empty working
    // directory; the database (the test's) and the port (a free one) are the only changes.
    let start = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_duka"));
        cmd.env_clear()
            .current_dir(state.path())
            .env("STATE_DIRECTORY", state.path())
            .env("PATH", "/usr/bin:/bin");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.env("DUKA__DATABASE__URL", db.url())
            .env("DUKA__HTTP__BIND", "127.0.0.1:0")
            .arg("serve");
        Served::start(cmd)
    };
    let first = start();
    let second = if db.is_postgres() {
        Some(start())
    } else {
        None
    };
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/healthz", first.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/readyz", first.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{}/api/v1/customers", first.url))
        .bearer_auth(token)
        .json(&json!({"name": "Composed", "phone": unique_phone()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    if let Some(second) = &second {
        let r = client
            .get(format!("{}/api/v1/customers?q=Composed", second.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["items"][0]["name"], "Composed", "{body}");
    }
    for served in [Some(first), second].into_iter().flatten() {
        let lines = served.stop();
        for (_, line) in &lines {
            let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(!line.contains(token), "the token was logged: {entry}");
        }
    }
}

/// A log nobody reads any more (its pipe's reader went away, as with `duka serve | head`)
/// does not take the server down: requests are still answered.
#[tokio::test]
async fn serve_survives_a_closed_log_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = duka(dir.path())
        .arg("serve")
        .env("DUKA__HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("DUKA__DATABASE__URL", db.url())
        .env("DUKA__AUTH__TOKENS", format!("[\"{TOKEN}\"]"))
        .env("DUKA__DATA_DIR", dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "duka did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nobody reads its log from here on.
    drop(child.stderr.take());
    for _ in 0..20 {
        let r = client
            .get(format!("{url}/api/v1/customers"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("duka still answers");
        assert_eq!(r.status(), 200);
    }
    assert!(child.try_wait().unwrap().is_none(), "duka exited");
    let _ = child.kill();
    let _ = child.wait();
}
