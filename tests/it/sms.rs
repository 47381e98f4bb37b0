//! SMS to customers, black-box: the real server against a fake Africa's Talking API that
//! records every request (tests/support/fake_at.rs), plus the real binary with the default
//! log provider.

use crate::fake_at::{self, FakeAt};
use crate::support::process::spawn_duka;
use crate::support::*;
use duka::config::SmsProviderKind;
use duka::domain::notification::NotifyOn;
use duka::store::entities::notification;
use sea_orm::{ActiveModelTrait, ConnectionTrait, IntoActiveModel, Statement};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub(crate) const SECRET: &str = "webhook-s3cret";

/// duka sending through `fake`, limits out of the way and retries fast (tests narrow them).
pub(crate) async fn at_app(
    fake: &FakeAt,
    configure: impl FnOnce(&mut duka::config::Settings),
) -> TestApp {
    let url = fake.url.clone();
    spawn_app_with(move |s| {
        s.sms.provider = SmsProviderKind::Africastalking;
        s.sms.africastalking.username = fake_at::USERNAME.into();
        s.sms.africastalking.api_key = fake_at::API_KEY.into();
        s.sms.africastalking.base_url = url;
        s.sms.africastalking.webhook_secret = SECRET.into();
        s.sms.rate_per_second = 1000;
        s.sms.burst = 1000;
        s.sms.per_recipient_per_minute = 1000;
        s.sms.retry_base_ms = 20;
        s.sms.retry_max_ms = 100;
        s.sms.request_timeout_secs = 2;
        s.sms.lease_secs = 3;
        configure(s);
    })
    .await
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

async fn notifications_of(app: &TestApp, order_id: &str) -> Vec<Value> {
    let r = app
        .get(&format!(
            "/api/v1/orders/{order_id}/notifications?limit=100"
        ))
        .await;
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

/// Polls an order's notifications (newest first) until `done` holds.
pub(crate) async fn wait_notifications(
    app: &TestApp,
    order_id: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = notifications_of(app, order_id).await;
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting; notifications: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

pub(crate) fn all_have_status(list: &[Value], status: &str) -> bool {
    !list.is_empty() && list.iter().all(|n| n["status"] == status)
}

/// Polls until `count` notifications in the whole system have `status`.
async fn wait_status_count(app: &TestApp, status: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page: Value = app
            .get(&format!("/api/v1/notifications?status={status}&limit=100"))
            .await
            .json()
            .await
            .unwrap();
        let n = page["items"].as_array().unwrap().len();
        if n >= count {
            assert_eq!(n, count, "more {status} notifications than expected");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {n} of {count} notifications {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn query_all(app: &TestApp, sql: &str) -> Vec<sea_orm::QueryResult> {
    let db = app.db.connect().await;
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
}

/// The `notification.updated` events about notification `id`, in seq order (their data).
async fn notification_events(app: &TestApp, id: &str) -> Vec<Value> {
    query_all(
        app,
        "SELECT data FROM events WHERE kind = 'notification.updated' ORDER BY seq",
    )
    .await
    .into_iter()
    .map(|row| serde_json::from_str::<Value>(&row.try_get_by_index::<String>(0).unwrap()).unwrap())
    .filter(|data| data["id"] == id)
    .collect()
}

fn statuses(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| s(&e["status"])).collect()
}

async fn assert_events_gap_free(app: &TestApp) {
    let seqs: Vec<i64> = query_all(app, "SELECT seq FROM events ORDER BY seq")
        .await
        .into_iter()
        .map(|r| r.try_get_by_index::<i64>(0).unwrap())
        .collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "event seqs have a gap");
}

async fn customer_and_order(app: &TestApp, order: Value) -> (String, Value) {
    let customer = app.create_customer(json!({})).await;
    let order = app.create_order(s(&customer["id"]), order).await;
    (s(&customer["phone"]).to_string(), order)
}

#[tokio::test]
async fn each_order_sends_one_request_with_the_right_fields_and_headers() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |s| s.sms.africastalking.sender_id = "DUKA".into()).await;
    let (phone, order) = customer_and_order(
        &app,
        json!({"item": "Laptop", "amount": "1200.00", "quantity": 2}),
    )
    .await;
    let list = wait_notifications(&app, s(&order["id"]), |l| all_have_status(l, "sent")).await;
    assert_eq!(list.len(), 1);
    let n = &list[0];

    let requests = fake.requests_to(&phone);
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.headers["apikey"], fake_at::API_KEY);
    assert!(r.headers["accept"].contains("application/json"));
    assert!(r.headers["content-type"].starts_with("application/x-www-form-urlencoded"));
    let mut keys: Vec<&str> = r.form.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["from", "message", "to", "username"]);
    assert_eq!(r.form["username"], fake_at::USERNAME);
    assert_eq!(r.form["to"], phone);
    assert_eq!(r.form["from"], "DUKA");
    assert_eq!(r.form["message"], s(&n["message"]));
    assert!(r.form["message"].contains(s(&order["order_number"])));
    assert!(r.form["message"].contains("2 x Laptop, KES 1200.00"));

    assert_eq!(n["attempts"], 1);
    assert_eq!(n["provider"], "africastalking");
    assert_eq!(
        n["provider_message_id"],
        json!(r.message_id.clone().unwrap())
    );
    assert_eq!(n["cost"], "KES 0.8000");
    assert_eq!(n["error"], Value::Null);
    assert_eq!(n["phone"], phone);

    let events = notification_events(&app, s(&n["id"])).await;
    assert_eq!(statuses(&events), ["sending", "sent"]);
    assert_eq!(
        events.last().unwrap(),
        n,
        "the event carries the full notification"
    );
    let order_now: Value = app
        .get(&format!("/api/v1/orders/{}", s(&order["id"])))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(order_now["notification"]["status"], "sent");
    assert_events_gap_free(&app).await;
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_until_sent() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |_| {}).await;
    let customer = app.create_customer(json!({})).await;
    let phone = s(&customer["phone"]).to_string();
    fake.fail_next(&phone, 2, 500);
    let order = app.create_order(s(&customer["id"]), json!({})).await;
    let list = wait_notifications(&app, s(&order["id"]), |l| all_have_status(l, "sent")).await;
    let n = &list[0];
    assert_eq!(n["attempts"], 3);
    assert_eq!(n["error"], Value::Null);
    let requests = fake.requests_to(&phone);
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 201]
    );
    // No sender id configured: no `from`.
    assert!(!requests[2].form.contains_key("from"));
    let events = notification_events(&app, s(&n["id"])).await;
    assert_eq!(
        statuses(&events),
        ["sending", "queued", "sending", "queued", "sending", "sent"]
    );
    assert!(s(&events[1]["error"]).contains("500"), "{}", events[1]);
    // Waiting for a retry says when; otherwise `next_attempt_at` is null.
    let retry_at = s(&events[1]["next_attempt_at"]);
    assert!(retry_at >= s(&events[1]["updated_at"]), "{}", events[1]);
    assert_eq!(events[0]["next_attempt_at"], Value::Null);
    assert_eq!(events[5]["next_attempt_at"], Value::Null);
    assert_eq!(n["next_attempt_at"], Value::Null);

    // 429 (rate limited by the provider) is worth another attempt too.
    let other = app.create_customer(json!({})).await;
    let other_phone = s(&other["phone"]).to_string();
    fake.fail_next(&other_phone, 1, 429);
    let order = app.create_order(s(&other["id"]), json!({})).await;
    let list = wait_notifications(&app, s(&order["id"]), |l| all_have_status(l, "sent")).await;
    assert_eq!(list[0]["attempts"], 2);
    assert_eq!(fake.requests_to(&other_phone).len(), 2);
    assert_events_gap_free(&app).await;
}

#[tokio::test]
async fn attempts_stop_at_max_attempts() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |s| s.sms.max_attempts = 3).await;
    let customer = app.create_customer(json!({})).await;
    let phone = s(&customer["phone"]).to_string();
    fake.fail_next(&phone, 100, 503);
    let order = app.create_order(s(&customer["id"]), json!({})).await;
    let list = wait_notifications(&app, s(&order["id"]), |l| all_have_status(l, "failed")).await;
    assert_eq!(list[0]["attempts"], 3);
    assert!(s(&list[0]["error"]).contains("503"), "{}", list[0]);
    assert_eq!(fake.requests_to(&phone).len(), 3);
}

#[tokio::test]
async fn an_invalid_phone_number_fails_without_retry() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |_| {}).await;
    let customer = app.create_customer(json!({})).await;
    let phone = s(&customer["phone"]).to_string();
    fake.reject_number(&phone);
    let order = app.create_order(s(&customer["id"]), json!({})).await;
    let list = wait_notifications(&app, s(&order["id"]), |l| all_have_status(l, "failed")).await;
    let n = &list[0];
    assert_eq!(n["attempts"], 1);
    assert!(s(&n["error"]).contains("InvalidPhoneNumber"), "{n}");
    assert_eq!(n["provider_message_id"], Value::Null);
    assert_eq!(fake.requests_to(&phone).len(), 1);
    let events = notification_events(&app, s(&n["id"])).await;
    assert_eq!(statuses(&events), ["sending", "failed"]);
}

#[tokio::test]
async fn a_rejected_api_key_fails_the_message_without_spinning() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |s| s.sms.africastalking.api_key = "wrong-key".into()).await;
    let (phone, order) = customer_and_order(&app, json!({})).await;
    let list = wait_notifications(&app, s(&order["id"]), |l| all_have_status(l, "failed")).await;
    let n = &list[0];
    assert_eq!(n["attempts"], 1);
    assert!(s(&n["error"]).contains("401"), "{n}");
    let requests = fake.requests_to(&phone);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, 401);
    // `failed` is final: nothing is left to retry.
    let page: Value = app
        .get("/api/v1/notifications?status=queued")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"], json!([]));
}

/// With `rate_per_second` R and `burst` B, request i (from 0) cannot go before
/// (i + 1 - B) / R seconds after the limiter's first decision, which comes after `start`.
#[tokio::test]
async fn the_global_rate_limit_spaces_requests() {
    const N: usize = 25;
    const RATE: f64 = 20.0;
    const BURST: usize = 5;
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |s| {
        s.sms.rate_per_second = RATE as u32;
        s.sms.burst = BURST as u32;
    })
    .await;
    let mut customers = Vec::new();
    for _ in 0..N {
        customers.push(s(&app.create_customer(json!({})).await["id"]).to_string());
    }
    // Orders arrive together, so that only the limiter can spread the requests out.
    let start = Instant::now();
    let orders = customers.iter().map(|c| app.create_order(c, json!({})));
    futures_util::future::join_all(orders).await;
    wait_status_count(&app, "sent", N).await;

    let mut times: Vec<Instant> = fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), N);
    times.sort();
    for (i, t) in times.iter().enumerate().skip(BURST) {
        let elapsed = t.duration_since(start).as_secs_f64();
        let least = (i + 1 - BURST) as f64 / RATE;
        assert!(
            elapsed >= least - 0.01,
            "request {i} came {elapsed:.3}s after the orders; the limit allows it at {least:.3}s"
        );
    }
}

/// 60 per minute: a burst of 60, then one a second. Messages over it wait; none is lost.
#[tokio::test]
async fn the_per_recipient_limit_delays_messages_without_dropping_them() {
    const N: usize = 63;
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |s| s.sms.per_recipient_per_minute = 60).await;
    let customer = app.create_customer(json!({})).await;
    let phone = s(&customer["phone"]).to_string();
    let cid = s(&customer["id"]).to_string();
    let start = Instant::now();
    let orders = (0..N).map(|_| app.create_order(&cid, json!({})));
    futures_util::future::join_all(orders).await;
    wait_status_count(&app, "sent", N).await;

    let requests = fake.requests_to(&phone);
    assert_eq!(requests.len(), N);
    let mut messages: Vec<&str> = requests
        .iter()
        .map(|r| r.form["message"].as_str())
        .collect();
    messages.sort();
    messages.dedup();
    assert_eq!(messages.len(), N, "each order's message exactly once");
    let mut times: Vec<Instant> = requests.iter().map(|r| r.at).collect();
    times.sort();
    for (i, least) in [(60, 1.0), (61, 2.0), (62, 3.0)] {
        let elapsed = times[i].duration_since(start).as_secs_f64();
        assert!(
            elapsed >= least - 0.01,
            "message {} went {elapsed:.3}s after the orders, before {least}s",
            i + 1
        );
    }
}

/// What a crash leaves behind, sent again as soon as the service is back: it takes its
/// own sender lease back at once with a new epoch, so every `sending` claim belongs to an
/// older epoch (a dead sender), however long the lease (30 s here).
#[tokio::test]
async fn messages_left_queued_or_abandoned_by_a_crash_are_sent_once_after_restart() {
    let fake = FakeAt::start().await;
    let mut app = at_app(&fake, |s| s.sms.lease_secs = 30).await;
    let customer = app.create_customer(json!({})).await;
    let phone = s(&customer["phone"]).to_string();
    let order = app.create_order(s(&customer["id"]), json!({})).await;
    let order_id = s(&order["id"]).to_string();
    wait_notifications(&app, &order_id, |l| all_have_status(l, "sent")).await;
    app.stop(false).await;

    // A message never picked up, one whose sender died mid-request, one claimed by an
    // older version of duka (no epoch), one whose senders died mid-send too often.
    let db = app.db.connect().await;
    let epoch = scalar(&db, "SELECT epoch FROM sms_sender WHERE id = 1").await;
    assert!(epoch >= 1, "the sender lease was taken");
    let now = chrono::Utc::now().timestamp_millis();
    let row = |message: &str, status: &str, attempts: i32, sender_epoch: Option<i64>| {
        notification::Model {
            id: uuid::Uuid::now_v7(),
            order_id: uuid::Uuid::parse_str(&order_id).unwrap(),
            customer_id: uuid::Uuid::parse_str(s(&customer["id"])).unwrap(),
            phone: phone.clone(),
            message: message.into(),
            status: duka::domain::notification::NotificationStatus::parse(status).unwrap(),
            attempts,
            provider: Some("africastalking".into()),
            provider_message_id: None,
            cost: None,
            error: None,
            next_attempt_at: Some(now - 5000),
            lease_until: (status == "sending").then_some(now + 600_000),
            resend: false,
            created_at: now - 5000,
            updated_at: now - 5000,
            sender_epoch,
        }
    };
    for m in [
        row("left queued", "queued", 0, None),
        row("in flight at the crash", "sending", 1, Some(epoch)),
        row("claimed by an older duka", "sending", 1, None),
        // Its senders died mid-send max_attempts (8) times: not sent again, failed.
        row("interrupted too often", "sending", 8, Some(epoch)),
    ] {
        m.into_active_model().insert(&db).await.unwrap();
    }

    let restarted = Instant::now();
    app.restart(false).await;
    let list = wait_notifications(&app, &order_id, |l| {
        l.iter().filter(|n| n["status"] == "sent").count() == 4
            && l.iter().any(|n| n["status"] == "failed")
    })
    .await;
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "sent {took:?} after the restart"
    );
    let by_message = |m: &str| list.iter().find(|n| n["message"] == m).unwrap().clone();
    let given_up = by_message("interrupted too often");
    assert_eq!(given_up["status"], "failed");
    assert!(s(&given_up["error"]).contains("gave up"), "{given_up}");
    assert_eq!(given_up["attempts"], 8);
    assert_eq!(by_message("left queued")["attempts"], 1);
    assert_eq!(by_message("in flight at the crash")["attempts"], 2);
    assert_eq!(by_message("claimed by an older duka")["attempts"], 2);
    assert_eq!(
        scalar(&db, "SELECT epoch FROM sms_sender WHERE id = 1").await,
        epoch + 1,
        "the restart took the lease anew"
    );

    let sent: Vec<String> = fake
        .requests_to(&phone)
        .iter()
        .map(|r| r.form["message"].clone())
        .collect();
    assert_eq!(sent.len(), 4, "{sent:?}");
    for m in [
        "left queued",
        "in flight at the crash",
        "claimed by an older duka",
    ] {
        assert_eq!(sent.iter().filter(|s| *s == m).count(), 1, "{m}: {sent:?}");
    }
    assert!(!sent.iter().any(|m| m == "interrupted too often"));
    db.close().await.unwrap();
    assert_events_gap_free(&app).await;
}

/// The settings of a `duka serve` process sending through `fake` (see `at_app`), as TOML.
pub(crate) fn at_toml(fake: &FakeAt, sms: &str) -> String {
    format!(
        "[http.rate_limit]\nenabled = false\n\
         [database]\nmax_connections = 5\n\
         [auth]\nsession_key = \"cluster-session-key-0123456789abcdef\"\n\
         [sms]\nprovider = \"africastalking\"\nper_recipient_per_minute = 1000\n\
         retry_base_ms = 20\nretry_max_ms = 100\n{sms}\n\
         [sms.africastalking]\nusername = {user:?}\napi_key = {key:?}\nbase_url = {url:?}\n\
         webhook_secret = {SECRET:?}\n",
        user = fake_at::USERNAME,
        key = fake_at::API_KEY,
        url = fake.url,
    )
}

/// A shell prefix for `spawn_duka` that runs the process on `db` and `data_dir` (another
/// process's) instead of fresh ones.
pub(crate) fn on(db: &TestDb, data_dir: Option<&std::path::Path>) -> String {
    let mut prefix = format!("export DUKA__DATABASE__URL='{}';", db.url());
    if let Some(dir) = data_dir {
        prefix.push_str(&format!(" export DUKA__DATA_DIR='{}';", dir.display()));
    }
    prefix
}

/// Every notification row: (phone, status, attempts, provider_message_id).
pub(crate) async fn notification_rows(
    db: &sea_orm::DatabaseConnection,
) -> Vec<(String, String, i32, Option<String>)> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT phone, status, attempts, provider_message_id FROM notifications ORDER BY id",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.try_get_by_index(0).unwrap(),
            r.try_get_by_index(1).unwrap(),
            r.try_get_by_index(2).unwrap(),
            r.try_get_by_index(3).unwrap(),
        )
    })
    .collect()
}

/// Waits (up to `within`) until `count` notifications are `sent`; answers how long it took.
pub(crate) async fn await_sent(
    db: &sea_orm::DatabaseConnection,
    count: usize,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let rows = notification_rows(db).await;
        let sent = rows.iter().filter(|r| r.1 == "sent").count();
        if sent == count {
            return start.elapsed();
        }
        assert!(
            sent < count,
            "{sent} notifications sent, expected {count}: {rows:?}"
        );
        assert!(
            start.elapsed() < within,
            "{sent} of {count} notifications sent after {within:?}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A crash (kill -9) while the provider holds every message: the restarted process (same
/// data directory, so the same instance) takes its sender lease back at once and sends
/// them again within seconds, although the lease is 30 s.
#[tokio::test]
async fn a_killed_sender_restarted_sends_what_it_had_in_flight_within_seconds() {
    const N: usize = 4;
    let fake = FakeAt::start().await;
    fake.set_delay(Duration::from_secs(120));
    let toml = at_toml(
        &fake,
        "rate_per_second = 1000\nburst = 1000\nconcurrency = 8\nlease_secs = 30\n\
         request_timeout_secs = 60",
    );
    let first = spawn_duka(&toml, "").await;
    let http = ProcessClient::new(&first.url);
    let mut phones = Vec::new();
    for _ in 0..N {
        let (phone, _) = http.customer_and_order().await;
        phones.push(phone);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.requests().len() < N {
        assert!(Instant::now() < deadline, "{:?}", fake.requests());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let db = first.db.connect().await;
    assert!(
        notification_rows(&db)
            .await
            .iter()
            .all(|r| r.1 == "sending"),
        "every message is in flight"
    );
    // SAFETY: kill only signals the process this test started.
    assert_eq!(unsafe { libc::kill(first.pid as i32, libc::SIGKILL) }, 0);
    fake.set_delay(Duration::ZERO);

    let restarted = Instant::now();
    let _second = spawn_duka(&toml, &on(&first.db, Some(first.data_dir.path()))).await;
    let took = await_sent(&db, N, Duration::from_secs(30)).await;
    let total = restarted.elapsed();
    eprintln!("in-flight messages sent again {total:?} after the restart began");
    assert!(
        total < Duration::from_secs(10),
        "sent again {total:?} after the restart began ({took:?} after it listened)"
    );
    for phone in &phones {
        // Once before the crash (the provider may have taken it), once after.
        assert_eq!(fake.requests_to(phone).len(), 2, "{phone}");
    }
    assert!(notification_rows(&db).await.iter().all(|r| r.2 == 2));
    db.close().await.unwrap();
}

/// The API of a `duka serve` process, as the tests use it.
pub(crate) struct ProcessClient {
    pub url: String,
    client: reqwest::Client,
}

impl ProcessClient {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// POSTs `body`; answers the status and the JSON body (`Null` when there is none, or
    /// the request failed: the process may be gone).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        match self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    pub async fn customer(&self) -> (String, String) {
        let phone = unique_phone();
        let (status, body) = self
            .post(
                "/api/v1/customers",
                &json!({"name": format!("Customer {}", marker()), "phone": phone}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (s(&body["id"]).to_string(), phone)
    }

    /// Creates an order for `customer_id`: its id when acknowledged (201).
    pub async fn order(&self, customer_id: &str) -> Option<String> {
        let (status, body) = self
            .post(
                "/api/v1/orders",
                &json!({"customer_id": customer_id, "item": "Maize flour", "amount": "250.00"}),
            )
            .await;
        (status == 201).then(|| s(&body["id"]).to_string())
    }

    /// A fresh customer and an order for it: (phone, order id).
    pub async fn customer_and_order(&self) -> (String, String) {
        let (id, phone) = self.customer().await;
        let order = self.order(&id).await.expect("order created");
        (phone, order)
    }
}

/// Another sender takes the lease over and claims a message while this one is sending it
/// (as when this one stalled): this one's outcome is refused and counted, it sends nothing
/// more while the other holds the lease, and once that lease runs out it takes over (a
/// newer epoch) and sends both what the other had claimed and what waited.
#[tokio::test]
async fn a_sender_fenced_off_by_a_newer_one_stores_no_outcome_and_sends_nothing_more() {
    let fake = FakeAt::start().await;
    fake.set_delay(Duration::from_millis(1500));
    let app = at_app(&fake, |s| s.sms.request_timeout_secs = 5).await;
    let lost = async || {
        let text = app.get("/metrics").await.text().await.unwrap();
        crate::support::process::metric_value(&text, "duka_sms_lost_lease_total")
    };
    let lost_before = lost().await;
    let (phone, order) = customer_and_order(&app, json!({})).await;
    let order_id = s(&order["id"]).to_string();
    wait_notifications(&app, &order_id, |l| all_have_status(l, "sending")).await;

    let db = app.db.connect().await;
    let exec = async |sql: String| {
        db.execute_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap();
    };
    let mine = scalar(&db, "SELECT epoch FROM sms_sender WHERE id = 1").await;
    let far = chrono::Utc::now().timestamp_millis() + 3_600_000;
    exec(format!(
        "UPDATE sms_sender SET holder = 'duka-another', boot = 'another-boot', \
         epoch = epoch + 1, expires_at = {far} WHERE id = 1"
    ))
    .await;
    exec(
        "UPDATE notifications SET sender_epoch = (SELECT epoch FROM sms_sender WHERE id = 1), \
         attempts = attempts + 1 WHERE status = 'sending'"
            .into(),
    )
    .await;

    // The provider answers this sender after 1.5 s; its outcome no longer has a claim.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lost().await < lost_before + 1.0 {
        assert!(Instant::now() < deadline, "no refused outcome counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = &notifications_of(&app, &order_id).await[0];
    assert_eq!(n["status"], "sending", "the newer claim stands: {n}");
    assert_eq!(n["provider_message_id"], Value::Null, "{n}");
    assert_eq!(n["attempts"], 2, "{n}");
    assert_eq!(fake.requests_to(&phone).len(), 1);

    // No longer the sender: a new order's SMS waits.
    let (other_phone, other) = customer_and_order(&app, json!({})).await;
    let other_id = s(&other["id"]).to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        notifications_of(&app, &other_id).await[0]["status"],
        "queued"
    );
    assert!(fake.requests_to(&other_phone).is_empty());

    // The other sender is gone: its lease runs out, this one takes over and sends both.
    fake.set_delay(Duration::ZERO);
    exec("UPDATE sms_sender SET expires_at = 0 WHERE id = 1".into()).await;
    let first = wait_notifications(&app, &order_id, |l| all_have_status(l, "sent")).await;
    wait_notifications(&app, &other_id, |l| all_have_status(l, "sent")).await;
    assert_eq!(first[0]["attempts"], 3);
    let requests = fake.requests_to(&phone);
    assert_eq!(
        requests.len(),
        2,
        "at least once: the fenced send's outcome was lost"
    );
    assert_eq!(
        first[0]["provider_message_id"],
        json!(requests[1].message_id.clone().unwrap())
    );
    assert_eq!(fake.requests_to(&other_phone).len(), 1);
    assert_eq!(
        scalar(&db, "SELECT epoch FROM sms_sender WHERE id = 1").await,
        mine + 2
    );
    db.close().await.unwrap();
    assert_events_gap_free(&app).await;
}

/// The provider holds each answer 1.5 s and one send runs at a time: orders are still
/// acknowledged meanwhile; a graceful stop lets the send in flight finish and leaves the
/// next message queued, and the restarted service sends it.
#[tokio::test]
async fn a_slow_provider_holds_no_order_and_a_graceful_stop_finishes_the_send_in_flight() {
    let fake = FakeAt::start().await;
    fake.set_delay(Duration::from_millis(1500));
    let mut app = at_app(&fake, |s| {
        s.sms.concurrency = 1;
        s.sms.request_timeout_secs = 5;
        s.sms.lease_secs = 8;
    })
    .await;
    let customer = app.create_customer(json!({})).await;
    let phone = s(&customer["phone"]).to_string();
    let first = app.create_order(s(&customer["id"]), json!({})).await;
    let first_id = s(&first["id"]).to_string();
    wait_notifications(&app, &first_id, |l| all_have_status(l, "sending")).await;
    let second = app.create_order(s(&customer["id"]), json!({})).await;
    let second_id = s(&second["id"]).to_string();
    assert_eq!(
        notifications_of(&app, &first_id).await[0]["status"],
        "sending",
        "the order was acknowledged while the provider still held the first message"
    );

    app.stop(true).await;
    let rows: Vec<(String, String)> = query_all(
        &app,
        "SELECT order_id, status FROM notifications ORDER BY id",
    )
    .await
    .into_iter()
    .map(|r| {
        let order: uuid::Uuid = r.try_get_by_index(0).unwrap();
        (order.to_string(), r.try_get_by_index::<String>(1).unwrap())
    })
    .collect();
    assert_eq!(
        rows,
        [
            (first_id.clone(), "sent".to_string()),
            (second_id.clone(), "queued".to_string())
        ]
    );
    assert_eq!(fake.requests_to(&phone).len(), 1);

    app.restart(true).await;
    wait_notifications(&app, &second_id, |l| all_have_status(l, "sent")).await;
    assert_eq!(fake.requests_to(&phone).len(), 2);
}

pub(crate) async fn report(
    app: &TestApp,
    secret: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut url = format!("{}/api/v1/webhooks/africastalking/delivery", app.url);
    if let Some(secret) = secret {
        url.push_str(&format!("?secret={secret}"));
    }
    app.client.post(url).form(form).send().await.unwrap()
}

pub(crate) fn delivery<'a>(id: &'a str, status: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("id", id),
        ("status", status),
        ("phoneNumber", "+254711000000"),
        ("networkCode", "63902"),
        ("retryCount", "0"),
    ]
}

#[tokio::test]
async fn delivery_reports_move_sent_messages_forward_only() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |_| {}).await;
    let customer = app.create_customer(json!({})).await;
    let mut sent = Vec::new();
    for _ in 0..4 {
        let order = app.create_order(s(&customer["id"]), json!({})).await;
        let list = wait_notifications(&app, s(&order["id"]), |l| all_have_status(l, "sent")).await;
        sent.push((s(&order["id"]).to_string(), list[0].clone()));
    }
    let pid = |i: usize| s(&sent[i].1["provider_message_id"]).to_string();
    let status_of = async |i: usize| notifications_of(&app, &sent[i].0).await[0].clone();

    // Success -> delivered; a later failure report does not move it back.
    assert_eq!(
        report(&app, Some(SECRET), &delivery(&pid(0), "Success"))
            .await
            .status(),
        200
    );
    assert_eq!(status_of(0).await["status"], "delivered");
    let pid0 = pid(0);
    let mut failed = delivery(&pid0, "Failed");
    failed.push(("failureReason", "DeliveryFailure"));
    assert_eq!(report(&app, Some(SECRET), &failed).await.status(), 200);
    assert_eq!(status_of(0).await["status"], "delivered");
    let events = notification_events(&app, s(&sent[0].1["id"])).await;
    assert_eq!(statuses(&events), ["sending", "sent", "delivered"]);

    // Rejected -> failed with the reason.
    let pid1 = pid(1);
    let mut rejected = delivery(&pid1, "Rejected");
    rejected.push(("failureReason", "UserInBlacklist"));
    assert_eq!(report(&app, Some(SECRET), &rejected).await.status(), 200);
    let n = status_of(1).await;
    assert_eq!(n["status"], "failed");
    assert!(s(&n["error"]).contains("UserInBlacklist"), "{n}");

    // Still on its way: stays sent.
    assert_eq!(
        report(&app, Some(SECRET), &delivery(&pid(2), "Buffered"))
            .await
            .status(),
        200
    );
    assert_eq!(status_of(2).await["status"], "sent");

    // Unknown ids are acknowledged and ignored.
    assert_eq!(
        report(&app, Some(SECRET), &delivery("ATXid_unknown", "Success"))
            .await
            .status(),
        200
    );

    // A wrong or missing secret is refused and changes nothing.
    assert_problem(
        report(&app, Some("wrong"), &delivery(&pid(3), "Success")).await,
        401,
        &[],
    )
    .await;
    assert_problem(
        report(&app, None, &delivery(&pid(3), "Success")).await,
        401,
        &[],
    )
    .await;
    assert_eq!(status_of(3).await["status"], "sent");

    // A report without an id names the field.
    assert_problem(
        report(&app, Some(SECRET), &[("status", "Success")]).await,
        422,
        &["id"],
    )
    .await;
    assert_events_gap_free(&app).await;
}

#[tokio::test]
async fn an_idempotent_replay_sends_no_second_sms() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |_| {}).await;
    let customer = app.create_customer(json!({})).await;
    let phone = s(&customer["phone"]).to_string();
    let body = json!({"customer_id": customer["id"], "item": "Sofa", "amount": "300.00"});
    let send = || {
        app.request(reqwest::Method::POST, "/api/v1/orders")
            .header("Idempotency-Key", "order-once-1")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    wait_notifications(&app, s(&first["id"]), |l| all_have_status(l, "sent")).await;
    let again = send().await.unwrap();
    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let rows = query_all(&app, "SELECT COUNT(*) FROM notifications").await;
    assert_eq!(rows[0].try_get_by_index::<i64>(0).unwrap(), 1);
    assert_eq!(fake.requests_to(&phone).len(), 1);
}

#[tokio::test]
async fn notify_on_adds_an_sms_for_the_listed_status_changes() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |s| {
        s.sms.notify_on = vec![NotifyOn::Created, NotifyOn::Shipped]
    })
    .await;
    let (phone, order) = customer_and_order(&app, json!({"item": "Bicycle"})).await;
    let id = s(&order["id"]).to_string();
    wait_notifications(&app, &id, |l| all_have_status(l, "sent")).await;

    let r = app
        .patch(
            &format!("/api/v1/orders/{id}"),
            &json!({"status": "confirmed"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        notifications_of(&app, &id).await.len(),
        1,
        "confirmed is not listed"
    );
    let r = app
        .patch(
            &format!("/api/v1/orders/{id}"),
            &json!({"status": "shipped"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let list = wait_notifications(&app, &id, |l| l.len() == 2 && all_have_status(l, "sent")).await;
    assert!(
        s(&list[0]["message"]).contains("is on its way"),
        "{}",
        list[0]
    );
    let sent = fake.requests_to(&phone);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].form["message"], s(&list[0]["message"]));
    assert!(sent[1].form["message"].contains("Bicycle"));
}

/// Kills the child process when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_with_defaults_logs_each_sms_and_marks_it_sent() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("duka.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[http]\nbind = \"127.0.0.1:{port}\"\n[database]\nurl = {:?}\n\
             [auth]\ntokens = [\"{TOKEN}\"]\n",
            dir.path().join("data").display().to_string(),
            db.url()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("duka.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_duka"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            Instant::now() < deadline,
            "duka did not start: {}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let post = async |path: &str, body: Value| -> Value {
        let r = client
            .post(format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().await.unwrap()
    };
    let phone = unique_phone();
    let customer = post(
        "/api/v1/customers",
        json!({"name": "Achieng", "phone": phone}),
    )
    .await;
    let order = post(
        "/api/v1/orders",
        json!({"customer_id": customer["id"], "item": "Radio", "amount": "45.00"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let n = loop {
        let page: Value = client
            .get(format!(
                "{url}/api/v1/orders/{}/notifications",
                s(&order["id"])
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = page["items"][0].clone();
        if n["status"] == "sent" {
            break n;
        }
        assert!(Instant::now() < deadline, "not sent: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(n["provider"], "log");
    assert_eq!(n["attempts"], 1);
    assert!(s(&n["provider_message_id"]).starts_with("log-"), "{n}");

    // No webhook secret configured: delivery reports are refused.
    let r = client
        .post(format!(
            "{url}/api/v1/webhooks/africastalking/delivery?secret="
        ))
        .form(&delivery(s(&n["provider_message_id"]), "Success"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    drop(child);
    let output = std::fs::read_to_string(&log_path).unwrap();
    let masked = duka::domain::phone::mask(&phone);
    let line = output
        .lines()
        .find(|l| l.contains("log provider") && l.contains(&masked))
        .unwrap_or_else(|| panic!("no log line for the SMS in:\n{output}"));
    assert!(line.contains(s(&n["message"])), "{line}");
    assert!(
        !output.contains(&phone),
        "the full phone number was logged:\n{output}"
    );
}

/// Claims and outcomes are written in bulk while the provider's delivery reports race
/// them: a report may reach duka before the outcome that names its message id is stored.
/// No report is answered with anything but 200, no message is sent twice, no row goes
/// backwards, and once the provider repeats its reports every message is delivered.
#[tokio::test]
async fn bulk_claims_and_records_racing_delivery_reports() {
    let fake = FakeAt::start().await;
    let app = std::sync::Arc::new(at_app(&fake, |s| s.sms.concurrency = 16).await);
    let customer = app.create_customer(json!({})).await;
    let phone = s(&customer["phone"]).to_string();
    let reporter = {
        let app = app.clone();
        let fake_requests = std::sync::Arc::new(fake);
        let fake = fake_requests.clone();
        let task = tokio::spawn(async move {
            // Reports each accepted message as soon as the fake has answered for it.
            let mut reported = std::collections::HashSet::new();
            let mut statuses = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while reported.len() < 60 && Instant::now() < deadline {
                for r in fake.requests() {
                    if let Some(id) = r.message_id
                        && reported.insert(id.clone())
                    {
                        let resp = report(&app, Some(SECRET), &delivery(&id, "Success")).await;
                        statuses.push(resp.status().as_u16());
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (reported, statuses)
        });
        (task, fake_requests)
    };
    let mut orders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let app = app.clone();
        let cid = s(&customer["id"]).to_string();
        tasks.push(tokio::spawn(async move {
            app.create_order(&cid, json!({})).await["id"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    for t in tasks {
        orders.push(t.await.unwrap());
    }
    let (task, fake) = reporter;
    let (reported, statuses) = task.await.unwrap();
    assert_eq!(reported.len(), 60, "every message reached the provider");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fake.requests_to(&phone).len(), 60, "no message sent twice");
    for order in &orders {
        wait_notifications(&app, order, |l| {
            l.iter()
                .all(|n| n["status"] == "sent" || n["status"] == "delivered")
        })
        .await;
    }
    // The provider retries its callbacks: now every outcome is stored, so all move on.
    for id in &reported {
        let r = report(&app, Some(SECRET), &delivery(id, "Success")).await;
        assert_eq!(r.status(), 200);
    }
    for order in &orders {
        let list = notifications_of(&app, order).await;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["status"], "delivered", "{}", list[0]);
        assert!(reported.contains(s(&list[0]["provider_message_id"])));
    }
}
