//! The real `duka` binary in a process of its own: for what must be seen from outside one
//! process (the metrics recorder is process-wide, so values are only exact there; the start
//! log; resource limits). Configured by a TOML file; killed when dropped.
#![allow(dead_code)]

use super::{TOKEN, TestDb};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct DukaProcess {
    pub url: String,
    pub pid: u32,
    child: Child,
    /// Every line the process wrote so far (its log on stderr, anything on stdout).
    output: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    pub db: TestDb,
}

/// Starts `duka serve` on a fresh database (SQLite, or PostgreSQL when
/// `DUKA_TEST_POSTGRES_URL` is set) with the test token and `extra` TOML appended;
/// `shell_prefix` runs before it in `sh` (e.g. `ulimit -Sn 512;`).
pub async fn spawn_duka(extra: &str, shell_prefix: &str) -> DukaProcess {
    let db = TestDb::new();
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let config = data_dir.path().join("duka.toml");
    let text = format!(
        "data_dir = {data:?}\n{extra}\n",
        data = data_dir.path().display().to_string(),
    );
    std::fs::write(&config, text).expect("write the config file");
    let command = format!("{shell_prefix} exec \"$DUKA_BIN\" --config \"$DUKA_CONFIG\" serve",);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("DUKA_BIN", env!("CARGO_BIN_EXE_duka"))
        .env("DUKA_CONFIG", &config)
        .env("DUKA__HTTP__BIND", "127.0.0.1:0")
        .env("DUKA__DATABASE__URL", db.url())
        .env("DUKA__AUTH__TOKENS", format!("[\"{TOKEN}\"]"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("duka starts");
    let pid = child.id();
    let output = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    // Logs go to stderr (JSON or text, by `log.format`); commands' answers to stdout.
    let pipes: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("stdout")),
        Box::new(child.stderr.take().expect("stderr")),
    ];
    for pipe in pipes {
        let (lines, tx) = (output.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening")
                    && let Some(url) = log_field(&line, "url")
                    && let Some(tx) = tx.lock().unwrap().take()
                {
                    let _ = tx.send(url);
                }
                lines.lock().unwrap().push(line);
            }
        });
    }
    let url = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .expect("duka says where it listens within 60 s")
        .unwrap_or_else(|_| panic!("duka exited: {:?}", output.lock().unwrap()));
    DukaProcess {
        url,
        pid,
        child,
        output,
        // No idle connections: the server closes them after its keep-alive (5 s), and a
        // request sent on one it is just closing fails (`IncompleteMessage`).
        client: reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        data_dir,
        db,
    }
}

impl DukaProcess {
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    pub async fn metrics(&self) -> String {
        let r = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The value of one series (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Waits (up to 30 s) until `series` reads `value`.
    pub async fn await_metric(&self, series: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.metric(series).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} reads {now}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A field of a log line, JSON (`{"fields":{"url":..}}`) or text (` url=...`).
pub fn log_field(line: &str, name: &str) -> Option<String> {
    if let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) {
        return entry["fields"][name].as_str().map(str::to_string);
    }
    let (_, rest) = line.split_once(&format!(" {name}="))?;
    rest.split_whitespace().next().map(str::to_string)
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

impl Drop for DukaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
