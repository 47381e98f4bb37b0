//! Test harness: the real server on a random loopback port with a fresh database.
//!
//! SQLite by default (a file in a temporary directory); PostgreSQL when
//! `DUKA_TEST_POSTGRES_URL` names a server (e.g. `postgres://postgres@127.0.0.1:5432/postgres`):
//! each app gets its own database, dropped when the app is dropped.
#![allow(dead_code)]

use duka::config::Settings;
use rand::Rng;
use reqwest::{Method, Response};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

pub const TOKEN: &str = "test-token-0001";

pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
    /// A database that another `TestDb` owns (a second instance of a deployment): nothing
    /// is dropped with it.
    Shared { url: String, postgres: bool },
}

impl TestDb {
    pub fn new() -> Self {
        match std::env::var("DUKA_TEST_POSTGRES_URL") {
            Ok(admin_url) if !admin_url.is_empty() => Self::postgres_at(admin_url),
            _ => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("duka.db").display());
                Self::Sqlite { _dir: dir, url }
            }
        }
    }

    /// A fresh PostgreSQL database whatever the run is on (several instances need one):
    /// at `DUKA_TEST_POSTGRES_URL`, else the local server scripts/test starts.
    pub fn postgres() -> Self {
        let admin_url = std::env::var("DUKA_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
        Self::postgres_at(admin_url)
    }

    fn postgres_at(admin_url: String) -> Self {
        let name = format!("duka_test_{:016x}", rand::rng().random::<u64>());
        let url = with_database(&admin_url, &name);
        let sql = format!("CREATE DATABASE \"{name}\"");
        run_admin(&admin_url, &sql).unwrap_or_else(|e| {
            panic!(
                "cannot create a PostgreSQL test database at {admin_url} ({e}): start PostgreSQL \
                 (scripts/test does) or set DUKA_TEST_POSTGRES_URL"
            )
        });
        Self::Postgres {
            admin_url,
            name,
            url,
        }
    }

    /// The same database, for another instance.
    pub fn share(&self) -> Self {
        Self::Shared {
            url: self.url().to_string(),
            postgres: self.is_postgres(),
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Self::Sqlite { url, .. } | Self::Postgres { url, .. } | Self::Shared { url, .. } => url,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(
            self,
            Self::Postgres { .. } | Self::Shared { postgres: true, .. }
        )
    }

    /// A separate connection for looking at (or tampering with) the database in tests.
    pub async fn connect(&self) -> DatabaseConnection {
        sea_orm::Database::connect(self.url())
            .await
            .expect("test database connection")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Self::Postgres {
            admin_url, name, ..
        } = self
        {
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            if let Err(e) = run_admin(admin_url, &sql) {
                eprintln!("could not drop test database {name}: {e}");
            }
        }
    }
}

fn with_database(admin_url: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin_url).expect("DUKA_TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// Runs one statement on the admin database from a thread of its own (callable anywhere,
/// including `Drop` inside an async test).
fn run_admin(admin_url: &str, sql: &str) -> Result<(), String> {
    let (admin_url, sql) = (admin_url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let db = sea_orm::Database::connect(&admin_url)
                .await
                .map_err(|e| e.to_string())?;
            db.execute_unprepared(&sql)
                .await
                .map_err(|e| e.to_string())?;
            db.close().await.map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_string())?
}

/// A running duka; dropping it stops the server and removes its database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub url: String,
    pub settings: Settings,
    pub client: reqwest::Client,
    server: Option<(duka::DukaHandle, JoinHandle<()>)>,
    pub data_dir: tempfile::TempDir,
    // Dropped last: the server must be gone before its database is.
    pub db: TestDb,
}

/// The settings every test starts from: loopback, a fresh database, a known token, the log
/// SMS provider, no rate limit.
pub fn test_settings(db: &TestDb, data_dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.http.bind = "127.0.0.1:0".into();
    s.http.workers = 2;
    s.http.rate_limit.enabled = false;
    s.database.url = db.url().to_string();
    s.database.acquire_timeout_secs = 2;
    s.data_dir = data_dir.to_path_buf();
    s.auth.tokens = vec![TOKEN.into()];
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(TestDb::new(), configure).await
}

/// An app on `db` (e.g. `TestDb::postgres()`, or `app.db.share()` for a second instance).
pub async fn spawn_app_on(db: TestDb, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let mut settings = test_settings(&db, data_dir.path());
    configure(&mut settings);
    let (addr, server) = start_server(settings.clone()).await;
    TestApp {
        addr,
        url: format!("http://{addr}"),
        settings,
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client"),
        server: Some(server),
        data_dir,
        db,
    }
}

/// Starts duka in a thread with its own actix system, as the binary does.
pub async fn start_server(settings: Settings) -> (SocketAddr, (duka::DukaHandle, JoinHandle<()>)) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let system = actix_web::rt::System::new();
        system.block_on(async move {
            match duka::build(settings).await {
                Ok(app) => {
                    let _ = tx.send(Ok((app.addr, app.handle())));
                    let _ = app.run().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    match rx.await.expect("the server thread answers") {
        Ok((addr, handle)) => (addr, (handle, thread)),
        Err(e) => panic!("duka did not start: {e}"),
    }
}

/// Starts duka and expects it to refuse to start; returns the error.
pub async fn start_error(settings: Settings) -> String {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let _ = tx.send(duka::build(settings).await.err().map(|e| e.to_string()));
        })
    });
    rx.await
        .expect("the server thread answers")
        .expect("duka should not have started")
}

static PHONES: AtomicU64 = AtomicU64::new(0);

/// A fresh valid Kenyan mobile number in E.164, unique within this test process.
pub fn unique_phone() -> String {
    let seed = PHONES.fetch_add(1, Ordering::Relaxed);
    let base = std::process::id() as u64 % 1000 * 100_000;
    format!("+25471{:07}", (base + seed) % 10_000_000)
}

static MARKS: AtomicU64 = AtomicU64::new(0);

/// A unique lower-case word for names and searches.
pub fn marker() -> String {
    format!(
        "m{:x}{}",
        rand::rng().random::<u32>(),
        MARKS.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestApp {
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Response {
        self.request(Method::PATCH, path)
            .json(body)
            .send()
            .await
            .expect("PATCH")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path)
            .send()
            .await
            .expect("DELETE")
    }

    pub async fn create_customer(&self, extra: Value) -> Value {
        let mut body = json!({ "name": format!("Customer {}", marker()), "phone": unique_phone() });
        merge(&mut body, extra);
        let r = self.post("/api/v1/customers", &body).await;
        assert_eq!(
            r.status(),
            201,
            "create customer: {}",
            r.text().await.unwrap_or_default()
        );
        r.json().await.expect("customer JSON")
    }

    pub async fn create_order(&self, customer_id: &str, extra: Value) -> Value {
        let mut body = json!({ "customer_id": customer_id, "item": format!("Item {}", marker()), "amount": "1200.00" });
        merge(&mut body, extra);
        let r = self.post("/api/v1/orders", &body).await;
        assert_eq!(
            r.status(),
            201,
            "create order: {}",
            r.text().await.unwrap_or_default()
        );
        r.json().await.expect("order JSON")
    }

    /// Stops the server (gracefully or not) and starts it again on the same database and
    /// data directory, as after a restart or a crash.
    pub async fn restart(&mut self, graceful: bool) {
        self.stop(graceful).await;
        let mut settings = self.settings.clone();
        settings.http.bind = self.addr.to_string();
        let (addr, server) = start_server(settings).await;
        self.addr = addr;
        self.server = Some(server);
    }

    /// The running server's stop handle.
    pub fn server_handle(&self) -> Option<duka::DukaHandle> {
        self.server.as_ref().map(|(handle, _)| handle.clone())
    }

    pub async fn stop(&mut self, graceful: bool) {
        if let Some((handle, thread)) = self.server.take() {
            handle.stop(graceful).await;
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some((handle, thread)) = self.server.take() {
            // `stop` sends its command at once; the returned future only waits for it.
            drop(handle.stop(false));
            let _ = thread.join();
        }
    }
}

pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        for (k, v) in extra {
            base.insert(k, v);
        }
    }
}

/// Sends `request` and reads its JSON answer.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("the request is answered")
        .json()
        .await
        .expect("a JSON answer")
}

/// Asserts an RFC 9457 problem with `status`, naming `fields` in `errors`; returns the body.
pub async fn assert_problem(r: Response, status: u16, fields: &[&str]) -> Value {
    let got = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "expected {status}, got {got}: {text}");
    assert_eq!(ctype, "application/problem+json", "content type of {text}");
    let body: Value = serde_json::from_str(&text).expect("problem JSON");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["title"].is_string() && body["type"].is_string(),
        "{body}"
    );
    for field in fields {
        assert!(
            body["errors"][field]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "errors lacks {field:?}: {body}"
        );
    }
    body
}

impl TestDb {
    /// Runs one statement on the PostgreSQL server's admin database (e.g. to drop this test's
    /// database under a running server); `Err` on SQLite.
    pub fn admin_execute(&self, sql: &str) -> Result<(), String> {
        match self {
            Self::Postgres { admin_url, .. } => run_admin(admin_url, sql),
            _ => Err("not a PostgreSQL test database this test owns".into()),
        }
    }

    /// The PostgreSQL database's name.
    pub fn postgres_name(&self) -> Option<&str> {
        match self {
            Self::Postgres { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// The first column of the first row of `sql` as an integer (COUNT, MAX...).
pub async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    first_column(db, sql).await
}

/// The first column of the first row of `sql` as text.
pub async fn text(db: &DatabaseConnection, sql: &str) -> String {
    first_column(db, sql).await
}

async fn first_column<T: sea_orm::TryGetable>(db: &DatabaseConnection, sql: &str) -> T {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql.to_string(),
        ))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: no row"));
    row.try_get_by_index::<T>(0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub mod live;
pub mod process;
