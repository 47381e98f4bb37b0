//! Operations: the OpenAPI document and /docs, health, metrics, request ids, rate limits,
//! security headers, CORS, logs and graceful shutdown of the binary.

use crate::support::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, Read, Write};
use std::time::Duration;

fn anon(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client.request(method, format!("{}{path}", app.url))
}

async fn text_of(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, String) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn openapi_is_3_1_and_documents_exactly_the_registered_routes() {
    let app = spawn_app().await;
    let (status, headers, body) = text_of(
        anon(&app, Method::GET, "/api/v1/openapi.json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(header(&headers, "content-type").starts_with("application/json"));
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let registered: BTreeSet<(String, String)> = duka::http::api_routes()
        .operations()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p))
        .collect();
    assert_eq!(documented, registered);
    for (method, path) in [
        ("GET", "/api/v1/customers"),
        ("POST", "/api/v1/orders"),
        ("PATCH", "/api/v1/orders/{id}"),
        ("GET", "/api/v1/notifications"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/auth/me"),
    ] {
        assert!(
            documented.contains(&(method.into(), path.into())),
            "{method} {path} missing"
        );
    }

    // Every documented operation is served: none falls through to the generic 404 or 405.
    for (method, path) in &documented {
        let path = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = app.request(method.clone(), &path);
        if method == Method::POST || method == Method::PATCH {
            req = req.json(&json!({}));
        }
        let (status, _, body) = text_of(req.send().await.unwrap()).await;
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !body.contains("no such resource"),
            "{method} {path} is documented but not served: {status} {body}"
        );
    }

    // Schemas, errors and security are described.
    let schemas = &doc["components"]["schemas"];
    for name in ["CustomerView", "OrderView", "NotificationView", "Problem"] {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    assert!(schemas["Problem"]["properties"]["errors"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let create = &doc["paths"]["/api/v1/orders"]["post"];
    for status in ["201", "400", "401", "422", "429", "503"] {
        assert!(
            create["responses"][status].is_object(),
            "POST /orders {status}"
        );
    }
    assert!(
        create["responses"]["422"]["content"]["application/problem+json"].is_object(),
        "{}",
        create["responses"]["422"]
    );
    assert!(create["requestBody"]["content"]["application/json"].is_object());
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([{}]));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = &op["responses"];
            // The webhook is public: it carries its own secret.
            let public = path == "/api/v1/openapi.json" || path.starts_with("/api/v1/webhooks/");
            if path.starts_with("/api/v1/") && !public {
                for status in ["401", "429", "503"] {
                    assert!(responses[status].is_object(), "{method} {path} {status}");
                }
            } else if !path.starts_with("/auth/") && !path.starts_with("/api/v1/webhooks/") {
                // Operations routes need no credentials and are not rate limited.
                assert!(
                    responses["401"].is_null() && responses["429"].is_null(),
                    "{path}"
                );
            }
        }
    }
    let required = schemas["OrderView"]["required"].as_array().unwrap();
    assert!(required.contains(&json!("notification")), "{required:?}");
}

/// The `src`/`href` of every script, link, img and iframe tag.
fn asset_refs(html: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for tag in html.split('<').skip(1) {
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_lowercase();
        if !["script", "link", "img", "iframe"].contains(&name.as_str()) {
            continue;
        }
        let tag = tag.split('>').next().unwrap_or_default();
        for attr in ["src=", "href="] {
            if let Some(at) = tag.find(attr) {
                let rest = &tag[at + attr.len()..];
                let quote = rest.chars().next().unwrap_or('"');
                if let Some(value) = rest[1..].split(quote).next() {
                    refs.push(value.to_string());
                }
            }
        }
    }
    refs
}

#[tokio::test]
async fn docs_are_served_from_the_binary_with_same_origin_assets() {
    let app = spawn_app().await;
    let r = anon(&app, Method::GET, "/docs").send().await.unwrap();
    let page_url = r.url().clone();
    let (status, headers, html) = text_of(r).await;
    assert_eq!(status, 200, "{html}");
    assert!(header(&headers, "content-type").starts_with("text/html"));
    assert!(html.to_lowercase().contains("<html"));
    let refs = asset_refs(&html);
    assert!(refs.len() >= 3, "{refs:?}");
    for reference in &refs {
        let url = page_url.join(reference).unwrap();
        assert_eq!(
            url.host_str(),
            Some("127.0.0.1"),
            "external asset {reference}"
        );
        let (status, _, body) = text_of(app.client.get(url.clone()).send().await.unwrap()).await;
        assert_eq!(status, 200, "{url}");
        for cdn in [
            "cdn.jsdelivr.net",
            "unpkg.com",
            "cdnjs.cloudflare.com",
            "fonts.g",
        ] {
            assert!(!body.contains(cdn), "{url} refers to {cdn}");
        }
    }
    let init = app
        .client
        .get(page_url.join("swagger-initializer.js").unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/api/v1/openapi.json"), "{init}");
    assert!(!init.contains("https://"), "{init}");
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let (status, headers, text) =
        text_of(anon(app, Method::GET, "/metrics").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").starts_with("text/plain"));
    text
}

#[tokio::test]
async fn metrics_count_requests_by_route_orders_and_events() {
    let app = spawn_app().await;
    let posted = r#"duka_http_requests_total{method="POST",route="/api/v1/orders",status="201"}"#;
    let got = r#"duka_http_requests_total{method="GET",route="/api/v1/orders/{id}",status="200"}"#;
    let latency = r#"duka_http_request_duration_seconds_count{method="GET",route="/api/v1/orders/{id}",status="200"}"#;
    let created = "duka_orders_created_total";
    let events = r#"duka_events_published_total{type="order.created"}"#;
    let before = scrape(&app).await;

    let customer = app.create_customer(json!({})).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let order = app
            .create_order(customer["id"].as_str().unwrap(), json!({}))
            .await;
        let id = order["id"].as_str().unwrap().to_string();
        assert_eq!(app.get(&format!("/api/v1/orders/{id}")).await.status(), 200);
        ids.push(id);
    }
    let after = scrape(&app).await;

    assert!(
        after.contains("# TYPE duka_http_request_duration_seconds histogram"),
        "{after}"
    );
    // Other tests share the process's recorder: counts only grow, by at least ours.
    for (series, at_least) in [
        (posted, 2.0),
        (got, 2.0),
        (latency, 2.0),
        (created, 2.0),
        (events, 2.0),
    ] {
        let (b, a) = (metric(&before, series), metric(&after, series));
        assert!(a - b >= at_least, "{series}: {b} -> {a}\n{after}");
    }
    assert!(after.contains(r#"duka_http_request_duration_seconds_bucket{method="GET",route="/api/v1/orders/{id}",status="200",le="+Inf"}"#));
    for id in &ids {
        assert!(
            !after.contains(id.as_str()),
            "a raw path leaked into labels"
        );
    }
    for name in ["duka_sms_queue_depth", "duka_websocket_connections"] {
        assert!(after.contains(&format!("# TYPE {name} gauge")), "{name}");
    }
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    let r = app
        .request(Method::GET, "/api/v1/customers")
        .header("X-Request-Id", "ops-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(header(r.headers(), "x-request-id"), "ops-req-42");
    let a = app.get("/api/v1/customers").await;
    let b = anon(&app, Method::GET, "/nowhere").send().await.unwrap();
    let (a, b) = (
        header(a.headers(), "x-request-id"),
        header(b.headers(), "x-request-id"),
    );
    assert!(!a.is_empty() && !b.is_empty() && a != b, "{a} {b}");
    let junk = "x".repeat(300);
    let r = app
        .request(Method::GET, "/api/v1/customers")
        .header("X-Request-Id", &junk)
        .send()
        .await
        .unwrap();
    let id = header(r.headers(), "x-request-id");
    assert!(!id.is_empty() && id != junk);
}

/// Sends `send()` until a 429; returns the statuses and the 429.
async fn until_limited<F, Fut>(send: F) -> (Vec<u16>, reqwest::Response)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let r = send().await;
        if r.status() == 429 {
            return (statuses, r);
        }
        statuses.push(r.status().as_u16());
    }
    panic!("never limited: {statuses:?}");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_and_recovers_but_spares_ops_routes() {
    let app = spawn_app_with(|s| {
        s.http.rate_limit.enabled = true;
        s.http.rate_limit.per_second = 1;
        s.http.rate_limit.burst = 3;
    })
    .await;
    let (statuses, limited) = until_limited(|| app.get("/api/v1/customers")).await;
    assert!(
        statuses.len() >= 3 && statuses.iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    let retry_after: u64 = header(limited.headers(), "retry-after").parse().unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    assert_problem(limited, 429, &[]).await;

    // Before authentication the client address is limited, separately from the principal.
    let (statuses, limited) = until_limited(|| async {
        anon(&app, Method::GET, "/api/v1/customers")
            .send()
            .await
            .unwrap()
    })
    .await;
    assert!(
        statuses.len() >= 3 && statuses.iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    assert!(
        header(limited.headers(), "retry-after")
            .parse::<u64>()
            .is_ok()
    );

    // Operations routes are neither limited nor authenticated, even while the API is.
    for _ in 0..10 {
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/docs/",
            "/api/v1/openapi.json",
            "/",
        ] {
            let r = anon(&app, Method::GET, path).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
    }

    tokio::time::sleep(Duration::from_millis(retry_after * 1000 + 300)).await;
    assert_eq!(app.get("/api/v1/customers").await.status(), 200);
}

#[tokio::test]
async fn readiness_follows_the_database() {
    let app = spawn_app().await;
    let r = anon(&app, Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");
    if let Some(name) = app.db.postgres_name() {
        let sql = format!("DROP DATABASE \"{name}\" WITH (FORCE)");
        app.db.admin_execute(&sql).unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            anon(&app, Method::GET, "/readyz").send(),
        )
        .await
        .expect("readiness answers in bounded time")
        .unwrap();
        assert!(r.headers().contains_key("retry-after"));
        assert_problem(r, 503, &[]).await;
        assert_eq!(
            anon(&app, Method::GET, "/healthz")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn security_headers_on_every_kind_of_response() {
    let app = spawn_app().await;
    let responses = [
        ("api 200", app.get("/api/v1/customers").await),
        (
            "api 401",
            anon(&app, Method::GET, "/api/v1/customers")
                .send()
                .await
                .unwrap(),
        ),
        ("api 404", app.get("/api/v1/nothing-here").await),
        (
            "root 404",
            anon(&app, Method::GET, "/nothing").send().await.unwrap(),
        ),
        ("api 422", app.post("/api/v1/customers", &json!({})).await),
        (
            "dashboard",
            anon(&app, Method::GET, "/").send().await.unwrap(),
        ),
        (
            "health",
            anon(&app, Method::GET, "/healthz").send().await.unwrap(),
        ),
        (
            "docs",
            anon(&app, Method::GET, "/docs/").send().await.unwrap(),
        ),
        (
            "docs asset",
            anon(&app, Method::GET, "/docs/swagger-ui.css")
                .send()
                .await
                .unwrap(),
        ),
    ];
    for (what, r) in responses {
        let h = r.headers();
        let csp = header(h, "content-security-policy");
        let expected = if what.starts_with("docs") {
            duka::http::security::DOCS_CSP
        } else {
            duka::http::security::CSP
        };
        assert_eq!(csp, expected, "{what}");
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self';"));
        assert!(!csp.contains("unsafe-eval") && !csp.contains("script-src 'self' 'unsafe-inline'"));
        assert_eq!(header(h, "x-content-type-options"), "nosniff", "{what}");
        assert_eq!(header(h, "referrer-policy"), "no-referrer", "{what}");
        assert_eq!(header(h, "x-frame-options"), "DENY", "{what}");
    }
    assert!(
        duka::http::security::CSP
            .contains("default-src 'self'; script-src 'self'; style-src 'self';")
    );
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    anon(app, Method::OPTIONS, "/api/v1/orders")
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cors_is_closed_by_default_and_open_to_listed_origins() {
    let closed = spawn_app().await;
    let r = preflight(&closed, "https://shop.example").await;
    assert!(
        !r.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        r.headers()
    );

    let app =
        spawn_app_with(|s| s.http.cors_allowed_origins = vec!["https://shop.example".into()]).await;
    let r = preflight(&app, "https://evil.example").await;
    assert!(
        !r.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        r.headers()
    );
    let r = preflight(&app, "https://shop.example").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        "https://shop.example"
    );
    assert!(header(r.headers(), "access-control-allow-methods").contains("POST"));
    let allowed = header(r.headers(), "access-control-allow-headers").to_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );

    // Simple requests: the listed origin may read the answer; another origin's request is
    // served (same-origin pages and curl work) but without the allow header.
    let r = app
        .request(Method::GET, "/api/v1/customers")
        .header("Origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        "https://shop.example"
    );
    let r = app
        .request(Method::GET, "/api/v1/customers")
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn bad_cors_origins_refuse_to_start() {
    for origin in [
        "shop.example",
        "https://shop.example/",
        "*",
        "ftp://x.example",
    ] {
        let db = TestDb::new();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(&db, dir.path());
        settings.http.cors_allowed_origins = vec![origin.into()];
        let err = start_error(settings).await;
        assert!(
            err.contains("http.cors_allowed_origins[0]"),
            "{origin}: {err}"
        );
    }
}

/// The built binary, serving on a free port with JSON logs; killed when dropped.
struct Binary {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

impl Binary {
    fn start() -> Self {
        let db = TestDb::new();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("duka.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[http]\nbind = \"127.0.0.1:0\"\nworkers = 1\n\
                 [auth]\ntokens = [{TOKEN:?}]\n[database]\nurl = {:?}\n[log]\nformat = \"json\"\n",
                dir.path().join("data"),
                db.url()
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_duka"));
        cmd.arg("--config").arg(&config).arg("serve");
        for (k, _) in std::env::vars() {
            if k.starts_with("DUKA__") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start duka");
        let (tx, lines) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
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
        let mut binary = Self {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            lines,
            _dir: dir,
            _db: db,
        };
        let line = binary.wait_for_line(|l| l.contains(r#""message":"listening""#));
        let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let url = entry["fields"]["url"].as_str().unwrap_or_default();
        binary.addr = url.trim_start_matches("http://").parse().unwrap();
        binary
    }

    fn wait_for_line(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "no such line from duka ({e}); exit: {:?}",
                    self.child.try_wait()
                ),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "duka did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_response(stream: &mut std::net::TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let mut duka = Binary::start();
    let body = json!({"name": "Graceful Shutdown", "phone": unique_phone()}).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut stream = std::net::TcpStream::connect(duka.addr).unwrap();
    write!(
        stream,
        "POST /api/v1/customers HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        duka.addr,
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    // The server has the request half read when the signal arrives.
    std::thread::sleep(Duration::from_millis(300));
    duka.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(tail.as_bytes()).unwrap();
    let response = read_response(&mut stream);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains("Graceful Shutdown"), "{response}");
    let status = duka.wait_exit();
    assert!(status.success(), "exit: {status:?}");
}

#[test]
fn sigint_exits_0_and_logs_are_json_without_credentials_or_query_strings() {
    let mut duka = Binary::start();
    let secret = "query-secret-value-123";
    let mut stream = std::net::TcpStream::connect(duka.addr).unwrap();
    write!(
        stream,
        "GET /api/v1/customers?q={secret} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         X-Request-Id: ops-log-1\r\nConnection: close\r\n\r\n",
        duka.addr
    )
    .unwrap();
    let response = read_response(&mut stream);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let line = duka.wait_for_line(|l| l.contains("ops-log-1") && l.contains("request finished"));
    let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(entry["span"]["request_id"], "ops-log-1", "{entry}");
    assert_eq!(entry["span"]["path"], "/api/v1/customers", "{entry}");
    assert_eq!(entry["fields"]["route"], "/api/v1/customers", "{entry}");
    assert_eq!(entry["fields"]["status"], 200, "{entry}");
    assert!(entry["fields"]["latency_ms"].is_number(), "{entry}");
    // The principal's subject, never its credential.
    let subject = entry["fields"]["subject"].as_str().unwrap_or_default();
    assert!(
        subject.starts_with("token:") && subject.len() > 8,
        "{entry}"
    );
    assert!(!line.contains(secret) && !line.contains(TOKEN), "{line}");

    duka.signal("INT");
    let status = duka.wait_exit();
    assert!(status.success(), "exit: {status:?}");
    let rest: Vec<String> = duka.lines.try_iter().collect();
    for line in rest {
        assert!(!line.contains(secret) && !line.contains(TOKEN), "{line}");
    }
}
