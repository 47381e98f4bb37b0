//! Hardening (issue 13), black-box: what an attacker, a proxy and bad bytes can do. Metric
//! values, start-up warnings and resource limits are read from the real binary in a process
//! of its own (the metrics recorder is process-wide); everything else from a test app.

use crate::fake_at::{self, FakeAt};
use crate::oidc::{self, Provider, set_cookie, spawn_oidc_app};
use crate::support::live::{self as ws, Next, PATIENCE};
use crate::support::process::{DukaProcess, spawn_duka};
use crate::support::*;
use duka::config::AuthMode;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "a-webhook-secret-of-32-characters-at-least";
const TOKEN2: &str = "second-test-token-0002";

/// The value a `Set-Cookie` header gives `name`.
fn cookie_value(r: &reqwest::Response, name: &str) -> Option<String> {
    let set = set_cookie(r, name)?;
    let pair = set.split(';').next()?;
    pair.split_once('=').map(|(_, v)| v.to_string())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn anon(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client.request(method, format!("{}{path}", app.url))
}

/// Series in a Prometheus text page (every sample line).
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

// --- 1. metric labels -------------------------------------------------------------------

#[tokio::test]
async fn odd_methods_add_no_metric_series() {
    let duka = spawn_duka("[http.rate_limit]\nenabled = false\n", "").await;
    let paths = ["/", "/api/v1/orders", "/nowhere"];
    let odd = |i: usize| {
        Method::from_bytes(format!("M{i}{}", "Z".repeat(2048)).as_bytes()).expect("a token")
    };
    let send = |method: Method, path: &'static str| {
        let request = duka.client.request(method, format!("{}{path}", duka.url));
        async move { request.send().await.expect("a request").status() }
    };
    // One of each first, so that every series these requests can make exists.
    for path in paths {
        send(odd(0), path).await;
    }
    duka.metrics().await;
    let before = duka.metrics().await;

    let requests = (1..=2000).map(|i| send(odd(i), paths[i % paths.len()]));
    let statuses: Vec<_> = futures_util::stream::iter(requests)
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(statuses.len(), 2000);
    let after = duka.metrics().await;

    assert_eq!(
        series(&after),
        series(&before),
        "2,000 odd methods added series"
    );
    assert!(
        after.len() < before.len() + 2048,
        "{} -> {}",
        before.len(),
        after.len()
    );
    assert!(!after.contains("ZZZZ"), "a method leaked into a label");
    assert!(after.contains(r#"method="other""#), "{after}");
}

// --- 2. U+0000 --------------------------------------------------------------------------

#[tokio::test]
async fn nul_is_refused_in_queries_bodies_and_forms_on_either_database() {
    let app = spawn_app_with(|s| s.sms.africastalking.webhook_secret = SECRET.into()).await;
    let customer = app.create_customer(json!({})).await;
    for path in [
        "/api/v1/orders?q=x%00y",
        "/api/v1/customers?q=x%00y",
        "/api/v1/orders?status=pend%00ing",
        "/api/v1/notifications?status=%00",
    ] {
        let body = assert_problem(app.get(path).await, 400, &[]).await;
        assert!(s(&body["detail"]).contains("U+0000"), "{path}: {body}");
    }
    let r = app
        .post(
            "/api/v1/customers",
            &json!({"name": "Nul\u{0}l", "phone": unique_phone(), "email": "a\u{0}@example.com", "code": "AB\u{0}C"}),
        )
        .await;
    assert_problem(r, 422, &["name", "email", "code"]).await;
    let r = app
        .post(
            "/api/v1/orders",
            &json!({"customer_id": customer["id"], "item": "Radio\u{0}", "amount": "10.00", "currency": "KES\u{0}"}),
        )
        .await;
    assert_problem(r, 422, &["item", "currency"]).await;
    let r = app
        .patch(
            &format!("/api/v1/customers/{}", s(&customer["id"])),
            &json!({"name": "\u{0}"}),
        )
        .await;
    assert_problem(r, 422, &["name"]).await;
    let r = anon(&app, Method::POST, "/auth/session")
        .json(&json!({"token": "test\u{0}token"}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 422, &["token"]).await;
    let r = anon(
        &app,
        Method::POST,
        &format!("/api/v1/webhooks/africastalking/delivery?secret={SECRET}"),
    )
    .header("content-type", "application/x-www-form-urlencoded")
    .body("id=a%00b&status=Success&failureReason=x%00")
    .send()
    .await
    .unwrap();
    assert_problem(r, 422, &["id", "failureReason"]).await;

    // Nothing changed.
    let page: Value = app.get("/api/v1/customers").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["items"][0]["name"], customer["name"]);
    let orders: Value = app.get("/api/v1/orders").await.json().await.unwrap();
    assert_eq!(orders["items"], json!([]));
}

// --- 3. metrics that move ---------------------------------------------------------------

async fn post_json(duka: &DukaProcess, path: &str, body: Value) -> Value {
    let r = duka
        .client
        .post(format!("{}{path}", duka.url))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn sms_and_websocket_metrics_follow_what_happens() {
    let at = FakeAt::start().await;
    let duka = spawn_duka(
        &format!(
            "[http.rate_limit]\nenabled = false\n\
             [sms]\nprovider = \"africastalking\"\nmax_attempts = 3\n\
             retry_base_ms = 120000\nretry_max_ms = 120000\n\
             [sms.africastalking]\napi_key = \"{}\"\nbase_url = \"{}\"\n",
            fake_at::API_KEY,
            at.url
        ),
        "",
    )
    .await;
    let failed = r#"duka_sms_total{status="failed"}"#;
    let sent = r#"duka_sms_total{status="sent"}"#;
    let depth = "duka_sms_queue_depth";
    let sockets = "duka_websocket_connections";

    let order_for = async |phone: &str| {
        let c = post_json(
            &duka,
            "/api/v1/customers",
            json!({"name": "Metric", "phone": phone}),
        )
        .await;
        post_json(
            &duka,
            "/api/v1/orders",
            json!({"customer_id": c["id"], "item": "Radio", "amount": "10.00"}),
        )
        .await
    };
    let rejected = unique_phone();
    at.reject_number(&rejected);
    order_for(&rejected).await;
    duka.await_metric(failed, 1.0).await;
    order_for(&unique_phone()).await;
    duka.await_metric(sent, 1.0).await;
    assert_eq!(duka.metric(failed).await, 1.0);

    // A message waiting for its retry is queued.
    assert_eq!(duka.metric(depth).await, 0.0);
    let flaky = unique_phone();
    at.fail_next(&flaky, 10, 500);
    order_for(&flaky).await;
    duka.await_metric(depth, 1.0).await;

    let url = format!("{}/api/v1/ws", duka.url.replacen("http", "ws", 1));
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        ws::hello(&mut socket).await;
        open.push(socket);
    }
    duka.await_metric(sockets, 3.0).await;
    let mut one = open.pop().unwrap();
    one.close(None).await.unwrap();
    drop(one);
    duka.await_metric(sockets, 2.0).await;
}

// --- 4. who may sign in -----------------------------------------------------------------

#[tokio::test]
async fn oidc_without_an_allow_list_needs_allow_any_account_and_lists_need_verified_emails() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&db, dir.path());
    settings.auth.mode = AuthMode::Oidc;
    settings.auth.tokens.clear();
    settings.auth.oidc.issuer_url = "https://accounts.google.com".into();
    settings.auth.oidc.client_id = "duka".into();
    let err = start_error(settings).await;
    assert!(err.contains("auth.oidc.allow_any_account"), "{err}");

    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |s| {
        s.auth.oidc.allow_any_account = false;
        s.auth.oidc.allowed_domains = vec!["example.com".into()];
    })
    .await;
    let bearer = async |claims: &Value| {
        let token = provider.mint(claims, "current").await;
        anon(&app, Method::GET, "/api/v1/customers")
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(bearer(&provider.claims("ann")).await.status(), 200);
    for verified in [None, Some(json!("false")), Some(json!(false))] {
        let mut claims = provider.claims("ann");
        match verified {
            None => {
                claims.as_object_mut().unwrap().remove("email_verified");
            }
            Some(v) => claims["email_verified"] = v,
        }
        assert_problem(bearer(&claims).await, 403, &[]).await;
    }
}

// --- 5. sockets end with their credentials ----------------------------------------------

/// A WebSocket opened with a session cookie from this site.
async fn connect_with_cookie(app: &TestApp, cookie: &str) -> ws::Ws {
    let mut request = ws::ws_url(app, "").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", format!("duka_session={cookie}").parse().unwrap());
    headers.insert("origin", app.url.parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

async fn session_cookie(app: &TestApp, token: &str) -> String {
    let r = anon(app, Method::POST, "/auth/session")
        .header("origin", &app.url)
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    cookie_value(&r, "duka_session").expect("a session cookie")
}

/// Waits (at most 30 s, the contract's bound, plus a margin for a loaded machine) for the
/// server to close `socket` with 1008.
async fn assert_closed_1008(socket: &mut ws::Ws) {
    let wait = async {
        loop {
            match ws::next(socket).await {
                Next::Frame(_) => continue,
                Next::Closed(Some(close)) => return u16::from(close.code),
                other => panic!("expected a 1008 close, got {other:?}"),
            }
        }
    };
    let code = tokio::time::timeout(Duration::from_secs(35), wait)
        .await
        .expect("the socket is still open 35 s later");
    assert_eq!(code, 1008);
}

#[tokio::test]
async fn a_socket_is_closed_with_1008_when_its_session_is_logged_out() {
    let app = ws::spawn_live_app().await;
    let cookie = session_cookie(&app, TOKEN).await;
    let mut socket = connect_with_cookie(&app, &cookie).await;
    ws::hello(&mut socket).await;
    let mut other = ws::connect(&app, "").await;
    ws::hello(&mut other).await;

    let r = anon(&app, Method::POST, "/auth/logout")
        .header("cookie", format!("duka_session={cookie}"))
        .header("origin", &app.url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_closed_1008(&mut socket).await;
    // A bearer socket is not touched, and still gets events.
    app.create_customer(json!({})).await;
    assert_eq!(ws::next_json(&mut other).await["type"], "customer.created");
}

#[tokio::test]
async fn a_socket_is_closed_with_1008_when_its_session_ends_elsewhere() {
    let app = ws::spawn_live_app().await;
    let cookie = session_cookie(&app, TOKEN).await;
    let mut socket = connect_with_cookie(&app, &cookie).await;
    ws::hello(&mut socket).await;
    // As a logout on another instance does: the row goes, this instance hears nothing.
    let db = app.db.connect().await;
    sea_orm::ConnectionTrait::execute_unprepared(&db, "DELETE FROM sessions")
        .await
        .unwrap();
    let started = Instant::now();
    assert_closed_1008(&mut socket).await;
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_socket_is_closed_with_1008_when_its_bearer_token_expires() {
    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |s| s.sms.enabled = false).await;
    let mut claims = provider.claims("ann");
    claims["exp"] = json!(chrono::Utc::now().timestamp() + 3);
    let token = provider.mint(&claims, "current").await;
    let mut socket = ws::try_connect(&app, "", Some(&token)).await.unwrap();
    ws::hello(&mut socket).await;
    let started = Instant::now();
    assert_closed_1008(&mut socket).await;
    assert!(started.elapsed() < Duration::from_secs(30));
}

// --- 6. sessions last no longer than their token ----------------------------------------

#[tokio::test]
async fn a_session_from_a_short_token_ends_with_the_token() {
    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |_| {}).await;
    let mut claims = provider.claims("ann");
    claims["aud"] = json!(oidc::AUDIENCE);
    claims["exp"] = json!(chrono::Utc::now().timestamp() + 4);
    let token = provider.mint(&claims, "current").await;
    let r = anon(&app, Method::POST, "/auth/session")
        .header("origin", &app.url)
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let set = header(&r, "set-cookie").to_string();
    let max_age: i64 = set
        .split(';')
        .find_map(|p| p.trim().strip_prefix("Max-Age="))
        .expect("Max-Age")
        .parse()
        .unwrap();
    assert!((1..=4).contains(&max_age), "{set}");
    let cookie = cookie_value(&r, "duka_session").unwrap();
    let me = async || {
        anon(&app, Method::GET, "/auth/me")
            .header("cookie", format!("duka_session={cookie}"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(me().await, 200);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(me().await, 401, "the session outlived its token");
}

#[tokio::test]
async fn a_new_sign_in_ends_the_browsers_previous_session() {
    let app = spawn_app().await;
    let first = session_cookie(&app, TOKEN).await;
    let r = anon(&app, Method::POST, "/auth/session")
        .header("origin", &app.url)
        .header("cookie", format!("duka_session={first}"))
        .json(&json!({ "token": TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let second = cookie_value(&r, "duka_session").unwrap();
    assert_ne!(first, second);
    let me = async |cookie: &str| {
        anon(&app, Method::GET, "/auth/me")
            .header("cookie", format!("duka_session={cookie}"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(me(&second).await, 200);
    assert_eq!(me(&first).await, 401, "the previous session still works");
}

// --- 7. caps ----------------------------------------------------------------------------

fn refused_with_429(result: Result<ws::Ws, tungstenite::Error>) {
    match result {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let retry = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            assert!(retry.is_some_and(|s| s >= 1), "{response:?}");
        }
        Err(e) => panic!("expected 429, got {e}"),
        Ok(_) => panic!("expected 429, the socket opened"),
    }
}

#[tokio::test]
async fn websockets_are_capped_per_principal_and_in_all() {
    let app = ws::spawn_live_app_with(|s| {
        s.auth.tokens = vec![TOKEN.into(), TOKEN2.into()];
        s.live.max_connections = 3;
        s.live.max_connections_per_principal = 2;
    })
    .await;
    let mut mine = Vec::new();
    for _ in 0..2 {
        let mut socket = ws::try_connect(&app, "", Some(TOKEN)).await.unwrap();
        ws::hello(&mut socket).await;
        mine.push(socket);
    }
    refused_with_429(ws::try_connect(&app, "", Some(TOKEN)).await);
    let mut theirs = ws::try_connect(&app, "", Some(TOKEN2)).await.unwrap();
    ws::hello(&mut theirs).await;
    refused_with_429(ws::try_connect(&app, "", Some(TOKEN2)).await);

    // A closed socket gives its place back.
    let mut one = mine.pop().unwrap();
    one.close(None).await.unwrap();
    drop(one);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match ws::try_connect(&app, "", Some(TOKEN)).await {
            Ok(mut socket) => {
                ws::hello(&mut socket).await;
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let duka = spawn_duka("", "ulimit -Sn 256;").await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", duka.pid)).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft limit not raised: {line}");
    assert_ne!(numbers[0], "256", "{line}");
}

// --- 8. withdrawn signing keys ----------------------------------------------------------

#[tokio::test]
async fn a_withdrawn_signing_key_stops_being_trusted_on_the_jwks_schedule() {
    let provider = Provider::start_with(&[("OIDC_JWKS_MAX_AGE", "1")]).await;
    let app = spawn_oidc_app(&provider, |_| {}).await;
    let old = provider.mint(&provider.claims("ann"), "current").await;
    let call = async || {
        anon(&app, Method::GET, "/api/v1/customers")
            .bearer_auth(&old)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(call().await, 200);
    let fetches = provider.jwks_fetches().await;
    let rotated = Instant::now();
    provider.rotate().await;
    // Only the old key's kid is used: nothing names an unknown key; the timer refreshes.
    loop {
        if call().await == 401 {
            break;
        }
        assert!(
            rotated.elapsed() < PATIENCE,
            "the withdrawn key is still trusted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // max-age=1 is held to the 5 s throttle.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let made = provider.jwks_fetches().await - fetches;
    let allowed = rotated.elapsed().as_secs() / 5 + 2;
    assert!(
        (1..=allowed).contains(&made),
        "{made} fetches in {:?}",
        rotated.elapsed()
    );
}

// --- 9. proxy headers -------------------------------------------------------------------

async fn sign_in_forwarded(app: &TestApp, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = anon(app, Method::POST, "/auth/session").json(&json!({ "token": TOKEN }));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn proxy_headers_count_only_from_trusted_proxies() {
    let forged = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("origin", "https://evil.example"),
    ];
    let app = spawn_app_with(|s| {
        s.http.rate_limit.enabled = true;
        s.http.rate_limit.per_second = 1;
        s.http.rate_limit.burst = 3;
    })
    .await;
    // From an untrusted peer: a forged Origin does not pass, https is not believed...
    let r = sign_in_forwarded(&app, &forged).await;
    assert_problem(r, 403, &[]).await;
    let r = sign_in_forwarded(&app, &[("x-forwarded-proto", "https")]).await;
    assert_eq!(r.status(), 204);
    assert!(!header(&r, "set-cookie").contains("Secure"), "{r:?}");
    assert!(r.headers().get("strict-transport-security").is_none());
    // ...and every anonymous caller is the peer, whatever X-Forwarded-For says.
    let mut limited = false;
    for i in 0..10 {
        let r = anon(&app, Method::GET, "/api/v1/customers")
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        limited |= r.status() == 429;
    }
    assert!(
        limited,
        "X-Forwarded-For from anyone picked a rate-limit bucket"
    );

    let app = spawn_app_with(|s| {
        s.http.trusted_proxies = vec!["127.0.0.0/8".into()];
        s.http.rate_limit.enabled = true;
        s.http.rate_limit.per_second = 1;
        s.http.rate_limit.burst = 3;
    })
    .await;
    let r = sign_in_forwarded(
        &app,
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "198.51.100.1"),
        ],
    )
    .await;
    assert_eq!(r.status(), 204);
    assert!(header(&r, "set-cookie").contains("Secure"), "{r:?}");
    assert!(header(&r, "strict-transport-security").starts_with("max-age="));
    // Behind the proxy, each client has its own bucket.
    for i in 0..10 {
        let r = anon(&app, Method::GET, "/api/v1/customers")
            .header("x-forwarded-for", format!("203.0.113.{i}, 127.0.0.1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "client {i} shared a bucket");
    }
    let mut limited = false;
    for _ in 0..10 {
        let r = anon(&app, Method::GET, "/api/v1/customers")
            .header("x-forwarded-for", "203.0.113.200")
            .send()
            .await
            .unwrap();
        limited |= r.status() == 429;
    }
    assert!(limited, "one client behind the proxy was not limited");
}

// --- 10. slow bodies --------------------------------------------------------------------

/// Sends headers announcing a body, then drips it a byte a second; returns what the server
/// answered and how long it took, or panics if the server still waits after `patience`.
async fn drip(app: &TestApp, path: &str, content_type: &str, patience: Duration) -> String {
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: 200\r\n\r\n",
        app.addr
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            started.elapsed() < patience,
            "the server still waits for the body after {patience:?}"
        );
        // A write after the server closed may fail: the answer is read below anyway.
        let _ = socket.write_all(b" ").await;
        match tokio::time::timeout(Duration::from_secs(1), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_body_sent_a_byte_a_second_is_cut_off_and_others_are_served() {
    let app = spawn_app_with(|s| {
        s.http.body_timeout_secs = 2;
        s.sms.africastalking.webhook_secret = SECRET.into();
    })
    .await;
    let patience = Duration::from_secs(15);
    let slow = drip(&app, "/auth/session", "application/json", patience);
    let hook = format!("/api/v1/webhooks/africastalking/delivery?secret={SECRET}");
    let slow_hook = drip(&app, &hook, "application/x-www-form-urlencoded", patience);
    let others = async {
        for _ in 0..5 {
            assert_eq!(app.get("/api/v1/customers").await.status(), 200);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let (answer, hook_answer, ()) = tokio::join!(slow, slow_hook, others);
    for answer in [answer, hook_answer] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

// --- 11. the webhook --------------------------------------------------------------------

#[tokio::test]
async fn the_webhook_checks_the_secret_before_reading_and_holds_back_guessers() {
    let app = spawn_app_with(|s| {
        s.sms.africastalking.webhook_secret = SECRET.into();
        s.http.rate_limit.enabled = true;
    })
    .await;
    // Headers announce a large body that never comes: the answer must not wait for it.
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/webhooks/africastalking/delivery?secret=wrong HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200000\r\n\r\n",
        app.addr
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
        .await
        .expect("an answer before the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    let mut held_back = None;
    for _ in 0..10 {
        let r = anon(
            &app,
            Method::POST,
            "/api/v1/webhooks/africastalking/delivery?secret=guess",
        )
        .form(&[("id", "x"), ("status", "Success")])
        .send()
        .await
        .unwrap();
        if r.status() == 429 {
            held_back = Some(header(&r, "retry-after").to_string());
            break;
        }
        assert_eq!(r.status(), 401);
    }
    let retry = held_back.expect("wrong secrets are never held back");
    assert!(retry.parse::<u64>().is_ok_and(|s| s >= 1), "{retry}");
}

#[tokio::test]
async fn a_delivery_reports_failure_reason_is_stored_bounded() {
    let app = spawn_app_with(|s| s.sms.africastalking.webhook_secret = SECRET.into()).await;
    let customer = app.create_customer(json!({})).await;
    let order = app.create_order(s(&customer["id"]), json!({})).await;
    let path = format!("/api/v1/orders/{}/notifications", s(&order["id"]));
    let deadline = Instant::now() + PATIENCE;
    let sent = loop {
        let page: Value = app.get(&path).await.json().await.unwrap();
        if page["items"][0]["status"] == "sent" {
            break page["items"][0].clone();
        }
        assert!(Instant::now() < deadline, "not sent: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = "R".repeat(5000);
    let r = anon(
        &app,
        Method::POST,
        &format!("/api/v1/webhooks/africastalking/delivery?secret={SECRET}"),
    )
    .form(&[
        ("id", s(&sent["provider_message_id"])),
        ("status", "Failed"),
        ("failureReason", reason.as_str()),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = app.get(&path).await.json().await.unwrap();
    let n = &page["items"][0];
    assert_eq!(n["status"], "failed", "{n}");
    let error = s(&n["error"]);
    assert!(error.starts_with("Failed: RRR"), "{error}");
    assert!(error.chars().count() <= 256, "{} characters", error.len());
}

#[tokio::test]
async fn short_secrets_are_warned_about_at_start() {
    // The test token is 15 characters.
    let duka = spawn_duka(
        "[sms.africastalking]\nwebhook_secret = \"short-secret\"\n",
        "",
    )
    .await;
    let output = duka.output().join("\n");
    assert!(
        output.contains("auth.tokens[0] is shorter than 16 characters"),
        "{output}"
    );
    assert!(
        output.contains("sms.africastalking.webhook_secret is shorter than 32 characters"),
        "{output}"
    );
    assert!(!output.contains("short-secret"), "the secret was logged");
}

// --- 12. the small ones -----------------------------------------------------------------

#[tokio::test]
async fn api_and_auth_answers_are_not_cached() {
    let app = spawn_app().await;
    for r in [
        app.get("/api/v1/customers").await,
        anon(&app, Method::GET, "/api/v1/customers")
            .send()
            .await
            .unwrap(),
        app.get("/auth/me").await,
        anon(&app, Method::GET, "/auth/config")
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(header(&r, "cache-control"), "no-store", "{}", r.url());
    }
    let r = anon(&app, Method::GET, "/healthz").send().await.unwrap();
    assert_ne!(header(&r, "cache-control"), "no-store");
    // Plain http: no HSTS.
    assert!(r.headers().get("strict-transport-security").is_none());
}

#[tokio::test]
async fn secret_files_that_others_can_read_or_that_are_links_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    for case in ["loose", "link"] {
        let db = TestDb::new();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(&db, dir.path());
        settings.auth.tokens.clear();
        let file = dir.path().join("api-token");
        match case {
            "loose" => {
                std::fs::write(&file, "duka_0123456789abcdef0123456789abcdef\n").unwrap();
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
            _ => {
                let target = dir.path().join("elsewhere");
                std::fs::write(&target, "duka_0123456789abcdef0123456789abcdef\n").unwrap();
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
                std::os::unix::fs::symlink(&target, &file).unwrap();
            }
        }
        let err = start_error(settings).await;
        assert!(err.contains(&file.display().to_string()), "{case}: {err}");
    }
}

#[tokio::test]
async fn failed_token_guesses_are_held_back_per_address() {
    let app = spawn_app_with(|s| s.http.rate_limit.enabled = true).await;
    let mut held_back = None;
    for i in 0..12 {
        let r = anon(&app, Method::GET, "/api/v1/customers")
            .bearer_auth(format!("guess-{i:04}-xxxxxxxx"))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            held_back = Some(header(&r, "retry-after").to_string());
            break;
        }
        let body = assert_problem(r, 401, &[]).await;
        assert_eq!(body["detail"], "the credentials are not valid");
    }
    let retry = held_back.expect("guesses are limited only by the normal rate");
    assert!(retry.parse::<u64>().is_ok_and(|s| s >= 1), "{retry}");
    // Held back means not even checked: the right token waits too.
    let r = app.get("/api/v1/customers").await;
    assert_eq!(r.status(), 429);
    // The same goes for trading a token for a session.
    let r = anon(&app, Method::POST, "/auth/session")
        .json(&json!({"token": "another-guess-xxxx"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_address() {
    let app = spawn_app_with(|s| {
        s.http.rate_limit.enabled = true;
        s.http.rate_limit.per_second = 1;
        s.http.rate_limit.burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = sign_in_forwarded(&app, &[]).await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses[0], 204, "{statuses:?}");
}

#[tokio::test]
async fn plain_http_is_accepted_only_for_loopback_issuers_and_providers() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&db, dir.path());
    settings.auth.mode = AuthMode::Oidc;
    settings.auth.oidc.issuer_url = "http://idp.example".into();
    settings.auth.oidc.client_id = "duka".into();
    settings.auth.oidc.allow_any_account = true;
    let err = start_error(settings).await;
    assert!(err.starts_with("auth.oidc.issuer_url"), "{err}");

    let mut settings = test_settings(&db, dir.path());
    settings.sms.provider = duka::config::SmsProviderKind::Africastalking;
    settings.sms.africastalking.api_key = "key".into();
    settings.sms.africastalking.base_url = "http://api.africastalking.example".into();
    let err = start_error(settings).await;
    assert!(err.starts_with("sms.africastalking.base_url"), "{err}");
}

#[tokio::test]
async fn searches_longer_than_200_characters_are_refused() {
    let app = spawn_app().await;
    let long = "a".repeat(201);
    for list in ["orders", "customers"] {
        let r = app.get(&format!("/api/v1/{list}?q={long}")).await;
        let body = assert_problem(r, 400, &[]).await;
        assert!(s(&body["detail"]).contains("200"), "{body}");
        let ok = app.get(&format!("/api/v1/{list}?q={}", &long[..200])).await;
        assert_eq!(ok.status(), 200);
    }
}
