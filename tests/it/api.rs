//! The customers and orders API, black-box over HTTP against a real server and database.

use crate::support::*;
use reqwest::Method;
use reqwest::header::HeaderMap;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn customer_and_order_round_trip() {
    let app = spawn_app().await;
    let customer = app
        .create_customer(json!({ "email": "wanjiku@example.com" }))
        .await;
    let order = app
        .create_order(
            customer["id"].as_str().unwrap(),
            json!({ "amount": 1200.5, "quantity": 2 }),
        )
        .await;
    assert_eq!(order["amount"], "1200.50");
    assert_eq!(order["quantity"], 2);
    assert_eq!(order["currency"], "KES");
    assert_eq!(order["status"], "pending");
    assert_eq!(order["customer"]["id"], customer["id"]);
    assert_eq!(order["notification"]["status"], "queued");
    let mut fetched: Value = app
        .get(&format!("/api/v1/orders/{}", order["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    // The SMS dispatcher may have moved the notification on since (queued -> sent).
    assert_eq!(fetched["notification"]["id"], order["notification"]["id"]);
    fetched["notification"] = order["notification"].clone();
    assert_eq!(fetched, order);
}

/// 200 orders from 32 concurrent tasks: exactly 200 orders, 200 notifications, 201
/// creation events, and every event's seq in 1..=N with no gap.
#[tokio::test]
async fn concurrent_orders_are_all_kept_with_gap_free_events() {
    let app = std::sync::Arc::new(spawn_app().await);
    let customer = app.create_customer(json!({})).await;
    let cid = customer["id"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let app = app.clone();
        let cid = cid.clone();
        tasks.push(tokio::spawn(async move {
            let n = 200 / 32 + usize::from(t < 200 % 32);
            let mut ids = Vec::new();
            for _ in 0..n {
                ids.push(
                    app.create_order(&cid, json!({})).await["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);

    let db = app.db.connect().await;
    let count = |sql: &'static str| {
        let db = &db;
        async move {
            let row = db
                .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        }
    };
    assert_eq!(count("SELECT COUNT(*) FROM orders").await, 200);
    assert_eq!(count("SELECT COUNT(*) FROM notifications").await, 200);
    assert_eq!(
        count("SELECT COUNT(*) FROM events WHERE kind IN ('order.created', 'customer.created')")
            .await,
        201
    );
    // The SMS dispatcher adds notification.updated events meanwhile: each check is one
    // statement, so it sees one consistent state.
    assert_eq!(count("SELECT MIN(seq) FROM events").await, 1);
    assert_eq!(count("SELECT MAX(seq) - COUNT(*) FROM events").await, 0);
    assert_eq!(
        count("SELECT (SELECT last_seq FROM event_counter) - (SELECT MAX(seq) FROM events)").await,
        0
    );
}

/// Concurrent requests share group-commit batches; a refused one (unknown customer) must
/// roll back alone, whatever else its batch held.
#[tokio::test]
async fn refused_orders_in_concurrent_batches_roll_back_alone() {
    let app = std::sync::Arc::new(spawn_app().await);
    let customer = app.create_customer(json!({})).await;
    let code = customer["code"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let app = app.clone();
        let code = code.clone();
        tasks.push(tokio::spawn(async move {
            let (mut created, mut refused) = (0, 0);
            for i in 0..8 {
                let bad = (t + i) % 3 == 0;
                let body = json!({
                    "customer_code": if bad { "NO-SUCH-CUSTOMER".to_string() } else { code.clone() },
                    "item": "Batch", "amount": "10.00",
                });
                let r = app.post("/api/v1/orders", &body).await;
                match (bad, r.status().as_u16()) {
                    (false, 201) => created += 1,
                    (true, 422) => refused += 1,
                    (bad, status) => panic!("bad={bad}: answered {status}"),
                }
            }
            (created, refused)
        }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        let (c, r) = t.await.unwrap();
        created += c;
        refused += r;
    }
    assert_eq!(created + refused, 256);
    assert!(refused > 0 && created > 0);
    let db = app.db.connect().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM orders").await, created);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM events WHERE kind = 'order.created'"
        )
        .await,
        created
    );
    assert_eq!(
        scalar(&db, "SELECT MAX(seq) - COUNT(*) FROM events").await,
        0
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const TOKEN2: &str = "test-token-0002";

const CUSTOMER_FIELDS: [&str; 7] = [
    "code",
    "created_at",
    "email",
    "id",
    "name",
    "phone",
    "updated_at",
];
const ORDER_FIELDS: [&str; 11] = [
    "amount",
    "created_at",
    "currency",
    "customer",
    "id",
    "item",
    "notification",
    "order_number",
    "quantity",
    "status",
    "updated_at",
];
const NOTIFICATION_FIELDS: [&str; 14] = [
    "attempts",
    "cost",
    "created_at",
    "customer_id",
    "error",
    "id",
    "message",
    "next_attempt_at",
    "order_id",
    "phone",
    "provider",
    "provider_message_id",
    "status",
    "updated_at",
];
const NOTIFICATION_STATUSES: [&str; 5] = ["queued", "sending", "sent", "delivered", "failed"];

/// A response, read completely.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Reply {
    async fn of(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
            text,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts `status` and returns the JSON body.
    fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "expected {status}, got: {}", self.text);
        &self.body
    }

    /// Asserts an RFC 9457 problem with `status` whose `errors` names every one of `fields`.
    fn problem(&self, status: u16, fields: &[&str]) -> &Value {
        assert_eq!(self.status, status, "expected {status}, got: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "content type of {}",
            self.text
        );
        assert_eq!(self.body["status"], status, "{}", self.text);
        assert!(
            self.body["title"].is_string() && self.body["type"].is_string(),
            "{}",
            self.text
        );
        for field in fields {
            assert!(
                self.body["errors"][field]
                    .as_array()
                    .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string)),
                "errors lacks {field:?}: {}",
                self.text
            );
        }
        &self.body
    }
}

/// Short request helpers answering a fully read `Reply`.
trait Api {
    async fn get_r(&self, path: &str) -> Reply;
    async fn post_r(&self, path: &str, body: Value) -> Reply;
    async fn patch_r(&self, path: &str, body: Value) -> Reply;
    async fn delete_r(&self, path: &str) -> Reply;
    /// A request with a raw body and an optional content type.
    async fn raw_r(&self, method: Method, path: &str, ctype: Option<&str>, body: &str) -> Reply;
    async fn post_idem(&self, path: &str, key: &str, body: &Value) -> Reply;
}

impl Api for TestApp {
    async fn get_r(&self, path: &str) -> Reply {
        Reply::of(self.get(path).await).await
    }

    async fn post_r(&self, path: &str, body: Value) -> Reply {
        Reply::of(self.post(path, &body).await).await
    }

    async fn patch_r(&self, path: &str, body: Value) -> Reply {
        Reply::of(self.patch(path, &body).await).await
    }

    async fn delete_r(&self, path: &str) -> Reply {
        Reply::of(self.delete(path).await).await
    }

    async fn raw_r(&self, method: Method, path: &str, ctype: Option<&str>, body: &str) -> Reply {
        let mut req = self.request(method, path).body(body.to_string());
        if let Some(ctype) = ctype {
            req = req.header("content-type", ctype);
        }
        Reply::of(req.send().await.expect("request")).await
    }

    async fn post_idem(&self, path: &str, key: &str, body: &Value) -> Reply {
        let r = self
            .request(Method::POST, path)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("POST");
        Reply::of(r).await
    }
}

fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(id).collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn key_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `path?k=v&...`, percent-encoded.
fn qs(path: &str, params: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    format!("{path}?{}", s.finish())
}

fn assert_uuid7(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    let u = uuid::Uuid::parse_str(s).unwrap_or_else(|_| panic!("not a UUID: {s}"));
    assert_eq!(u.get_version_num(), 7, "not a UUID v7: {s}");
    assert_eq!(s, u.hyphenated().to_string(), "not in canonical form: {s}");
}

/// An RFC 3339 UTC timestamp with milliseconds and `Z`; returns epoch milliseconds.
fn ts(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(
        s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.' && s.as_bytes()[10] == b'T',
        "not RFC 3339 with millis and Z: {s}"
    );
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `^[A-Z0-9][A-Z0-9_-]{1,31}$`
fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=32).contains(&b.len())
        && (b[0].is_ascii_uppercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// `^ORD-[0-9A-Z-]{4,24}$`
fn is_order_number(s: &str) -> bool {
    s.strip_prefix("ORD-").is_some_and(|rest| {
        (4..=24).contains(&rest.len())
            && rest
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-')
    })
}

/// `+254712345678` -> `0712345678`
fn national(e164: &str) -> String {
    format!("0{}", &e164[4..])
}

/// An order as stored, without the parts the SMS dispatcher may change at any moment.
fn stable(order: &Value) -> Value {
    let mut o = order.clone();
    if let Some(n) = o.get_mut("notification").and_then(Value::as_object_mut) {
        n.remove("status");
        n.remove("updated_at");
    }
    o
}

/// One list page: its items and next cursor (asserting the envelope).
async fn page(app: &TestApp, path: &str) -> (Vec<Value>, Option<String>) {
    let r = app.get_r(path).await;
    let body = r.expect(200);
    assert_eq!(
        keys(body),
        key_set(&["items", "next_cursor"]),
        "GET {path}: {}",
        r.text
    );
    let items = body["items"].as_array().expect("items").clone();
    let cursor = match &body["next_cursor"] {
        Value::Null => None,
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        other => panic!("GET {path}: bad next_cursor {other}"),
    };
    (items, cursor)
}

async fn items(app: &TestApp, path: &str) -> Vec<Value> {
    page(app, path).await.0
}

/// Follows `next_cursor` to the end (at most 200 pages).
async fn walk(app: &TestApp, path: &str, params: &[(&str, &str)]) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..200 {
        let mut p = params.to_vec();
        if let Some(c) = &cursor {
            p.push(("cursor", c));
        }
        let (items, next) = page(app, &qs(path, &p)).await;
        pages.push(items);
        match next {
            None => return pages,
            Some(c) => cursor = Some(c),
        }
    }
    panic!("pagination of {path} did not end after 200 pages");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    customers: i64,
    orders: i64,
    notifications: i64,
    events: i64,
    idempotency_keys: i64,
}

async fn counts(db: &DatabaseConnection) -> Counts {
    Counts {
        customers: scalar(db, "SELECT COUNT(*) FROM customers").await,
        orders: scalar(db, "SELECT COUNT(*) FROM orders").await,
        notifications: scalar(db, "SELECT COUNT(*) FROM notifications").await,
        // The SMS dispatcher adds notification.updated events on its own schedule; the
        // changes made through the API are the other kinds.
        events: scalar(
            db,
            "SELECT COUNT(*) FROM events WHERE kind <> 'notification.updated'",
        )
        .await,
        idempotency_keys: scalar(db, "SELECT COUNT(*) FROM idempotency_keys").await,
    }
}

/// The event log holds exactly seq 1..=n and the counter says n; returns n. One statement,
/// so one snapshot: the SMS dispatcher may be committing events meanwhile.
async fn assert_events_gap_free(db: &DatabaseConnection) -> i64 {
    let n = scalar(
        db,
        "SELECT CASE WHEN COUNT(*) = COALESCE(MAX(seq), 0) \
              AND COALESCE(MIN(seq), 1) = 1 \
              AND COALESCE(MAX(seq), 0) = (SELECT last_seq FROM event_counter) \
         THEN COUNT(*) ELSE -1 END FROM events",
    )
    .await;
    assert!(n >= 0, "events are not exactly 1..=n with the counter at n");
    n
}

fn customer_path(c: &Value) -> String {
    format!("/api/v1/customers/{}", id(c))
}

fn order_path(o: &Value) -> String {
    format!("/api/v1/orders/{}", id(o))
}

// ---------------------------------------------------------------------------------------------
// Customers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn customer_create_answers_201_with_location_and_the_contract_shape() {
    let app = spawn_app().await;
    let m = marker();
    let phone = unique_phone();
    let before = now_ms();
    let r = app
        .post_r(
            "/api/v1/customers",
            json!({ "name": "Wanjiku Kamau", "phone": phone, "email": "wanjiku@example.com",
                    "code": format!("acc-{m}") }),
        )
        .await;
    let c = r.expect(201).clone();
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.text
    );
    assert_eq!(keys(&c), key_set(&CUSTOMER_FIELDS));
    assert_eq!(c["name"], "Wanjiku Kamau");
    assert_eq!(c["phone"], phone);
    assert_eq!(c["email"], "wanjiku@example.com");
    assert_eq!(c["code"], format!("ACC-{}", m.to_uppercase()));
    assert_uuid7(&c["id"]);
    let (created, updated) = (ts(&c["created_at"]), ts(&c["updated_at"]));
    assert_eq!(created, updated);
    assert!(
        (before - 1000..=now_ms() + 1000).contains(&created),
        "{created}"
    );
    let location = r.header("location").expect("Location").to_string();
    assert_eq!(location, customer_path(&c));
    assert_eq!(app.get_r(&location).await.expect(200), &c);

    // A national number is stored in E.164; the name is trimmed; the code is generated; no
    // e-mail is null.
    let e164 = unique_phone();
    let n = app
        .post_r(
            "/api/v1/customers",
            json!({ "name": "  Achieng Otieno  ", "phone": national(&e164) }),
        )
        .await;
    let n = n.expect(201).clone();
    assert_eq!(n["phone"], e164);
    assert_eq!(n["name"], "Achieng Otieno");
    assert!(n.as_object().unwrap().contains_key("email") && n["email"].is_null());
    let other = app.create_customer(json!({ "email": null })).await;
    assert!(other["email"].is_null());
    for code in [&n["code"], &other["code"]] {
        assert!(is_code(code.as_str().unwrap()), "generated code {code}");
    }
    assert_ne!(n["code"], other["code"]);
    // Spaced international form and the boundaries of the rules are accepted.
    let e164 = unique_phone();
    let spaced = format!("{} {} {}", &e164[..4], &e164[4..7], &e164[7..]);
    let long = app
        .create_customer(
            json!({ "phone": spaced, "name": "é".repeat(200), "code": format!("{:Z<32}", "Z") }),
        )
        .await;
    assert_eq!(long["phone"], e164);
    assert_eq!(long["code"], "Z".repeat(32));
    assert_eq!(long["name"].as_str().unwrap().chars().count(), 200);
}

#[tokio::test]
async fn customer_patch_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let c = app
        .create_customer(json!({ "email": "old@example.com" }))
        .await;
    let path = customer_path(&c);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new_phone = unique_phone();
    let u = app
        .patch_r(
            &path,
            json!({ "name": "Achieng Otieno", "phone": national(&new_phone) }),
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(u["name"], "Achieng Otieno");
    assert_eq!(u["phone"], new_phone);
    for k in ["id", "code", "email", "created_at"] {
        assert_eq!(u[k], c[k], "{k} changed");
    }
    assert!(
        ts(&u["updated_at"]) > ts(&c["updated_at"]),
        "updated_at did not move"
    );
    assert_eq!(app.get_r(&path).await.expect(200), &u);

    // An empty object changes nothing, not even updated_at.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(app.patch_r(&path, json!({})).await.expect(200), &u);
    // Its own phone (in either form) is not a conflict.
    assert_eq!(
        app.patch_r(&path, json!({ "phone": national(&new_phone) }))
            .await
            .expect(200),
        &u
    );
    // The code is upper-cased; null clears the e-mail.
    let m = marker();
    let v = app
        .patch_r(&path, json!({ "code": format!("new-{m}"), "email": null }))
        .await
        .expect(200)
        .clone();
    assert_eq!(v["code"], format!("NEW-{}", m.to_uppercase()));
    assert!(v["email"].is_null());
    assert_eq!(v["name"], u["name"]);
    assert_eq!(app.get_r(&path).await.expect(200), &v);
    let w = app
        .patch_r(&path, json!({ "email": "new@example.com" }))
        .await
        .expect(200)
        .clone();
    assert_eq!(w["email"], "new@example.com");

    // Invalid patches are 422 naming the field, and change nothing.
    let bad: Vec<(Value, Vec<&str>)> = vec![
        (json!({ "name": null }), vec!["name"]),
        (json!({ "phone": null }), vec!["phone"]),
        (json!({ "code": null }), vec!["code"]),
        (json!({ "phone": "12345" }), vec!["phone"]),
        (json!({ "phone": "+254202222222" }), vec!["phone"]),
        (json!({ "email": "not-an-email" }), vec!["email"]),
        (json!({ "name": "  " }), vec!["name"]),
        (json!({ "name": "x".repeat(201) }), vec!["name"]),
        (json!({ "code": "-X" }), vec!["code"]),
        (json!({ "nickname": "Shiro" }), vec!["nickname"]),
        (json!({ "id": uuid::Uuid::now_v7() }), vec!["id"]),
        (
            json!({ "created_at": "2026-01-01T00:00:00.000Z" }),
            vec!["created_at"],
        ),
        (
            json!({ "name": "", "phone": "1", "email": "x", "code": "-" }),
            vec!["name", "phone", "email", "code"],
        ),
        (json!({ "name": "Valid Name", "phone": "1" }), vec!["phone"]),
    ];
    for (body, fields) in bad {
        app.patch_r(&path, body.clone()).await.problem(422, &fields);
        assert_eq!(
            app.get_r(&path).await.expect(200),
            &w,
            "{body} changed the customer"
        );
    }
}

#[tokio::test]
async fn customer_delete_and_unknown_or_malformed_ids() {
    let app = spawn_app().await;
    let c = app.create_customer(json!({})).await;
    let path = customer_path(&c);
    let r = app.delete_r(&path).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty(), "204 with a body: {}", r.text);
    app.get_r(&path).await.problem(404, &[]);
    app.delete_r(&path).await.problem(404, &[]);
    app.patch_r(&path, json!({ "name": "X" }))
        .await
        .problem(404, &[]);
    app.get_r(&format!("{path}/orders")).await.problem(404, &[]);
    // The phone and code of a deleted customer are free again.
    let again = app
        .create_customer(json!({ "phone": c["phone"], "code": c["code"] }))
        .await;
    assert_ne!(again["id"], c["id"]);

    let unknown = format!("/api/v1/customers/{}", uuid::Uuid::now_v7());
    app.get_r(&unknown).await.problem(404, &[]);
    app.patch_r(&unknown, json!({ "name": "X" }))
        .await
        .problem(404, &[]);
    app.delete_r(&unknown).await.problem(404, &[]);
    app.get_r(&format!("{unknown}/orders"))
        .await
        .problem(404, &[]);
    for bad in ["not-a-uuid", "123", "0193a1b2-zzzz-7000-8000-000000000000"] {
        let p = format!("/api/v1/customers/{bad}");
        for r in [
            app.get_r(&p).await,
            app.patch_r(&p, json!({ "name": "X" })).await,
            app.delete_r(&p).await,
            app.get_r(&format!("{p}/orders")).await,
        ] {
            let status = r.status;
            assert!(matches!(status, 400 | 404), "{bad}: {}", r.text);
            r.problem(status, &[]);
        }
    }
}

#[tokio::test]
async fn duplicate_phone_or_code_is_409_on_create_and_patch() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let m = marker();
    let a = app
        .create_customer(json!({ "code": format!("DUP-{}", m.to_uppercase()) }))
        .await;
    let before = counts(&db).await;
    let phone = a["phone"].as_str().unwrap().to_string();
    for p in [phone.clone(), national(&phone)] {
        app.post_r(
            "/api/v1/customers",
            json!({ "name": "Duplicate", "phone": p }),
        )
        .await
        .problem(409, &[]);
    }
    app.post_r(
        "/api/v1/customers",
        json!({ "name": "Duplicate", "phone": unique_phone(), "code": format!("dup-{m}") }),
    )
    .await
    .problem(409, &[]);
    assert_eq!(
        counts(&db).await,
        before,
        "a refused create stored something"
    );

    let b = app.create_customer(json!({})).await;
    let path = customer_path(&b);
    for body in [
        json!({ "phone": phone }),
        json!({ "phone": national(&phone) }),
        json!({ "code": format!("dup-{m}") }),
        json!({ "code": format!("Dup-{}", m.to_uppercase()), "name": "Renamed" }),
    ] {
        app.patch_r(&path, body.clone()).await.problem(409, &[]);
        assert_eq!(
            app.get_r(&path).await.expect(200),
            &b,
            "{body} changed the customer"
        );
    }
    assert_events_gap_free(&db).await;
}

#[tokio::test]
async fn invalid_customer_is_422_naming_every_bad_field_and_stores_nothing() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let phone = unique_phone();
    let long_name = "x".repeat(201);
    let long_code = "A".repeat(33);
    // (field, value or None for absent)
    let cases: Vec<(&str, Option<Value>)> = vec![
        ("name", None),
        ("name", Some(json!(""))),
        ("name", Some(json!("   "))),
        ("name", Some(json!(long_name))),
        ("name", Some(json!(123))),
        ("name", Some(json!(null))),
        ("name", Some(json!("Bad\u{0007}Name"))),
        ("phone", None),
        ("phone", Some(json!(""))),
        ("phone", Some(json!("12345"))),
        ("phone", Some(json!("not a phone"))),
        ("phone", Some(json!("+254202222222"))),
        ("phone", Some(json!("0202222222"))),
        ("phone", Some(json!(254712345678u64))),
        ("phone", Some(json!(null))),
        ("email", Some(json!("not-an-email"))),
        ("email", Some(json!("a@"))),
        ("email", Some(json!("Name <a@b.com>"))),
        ("email", Some(json!(5))),
        ("code", Some(json!("A"))),
        ("code", Some(json!("-ABC"))),
        ("code", Some(json!("AB CD"))),
        ("code", Some(json!(long_code))),
        ("code", Some(json!("ÄB"))),
        ("code", Some(json!(42))),
        ("nickname", Some(json!("Shiro"))),
    ];
    let before = counts(&db).await;
    for (field, value) in cases {
        let mut body = json!({ "name": "Invalid Customer", "phone": phone });
        match value {
            None => {
                body.as_object_mut().unwrap().remove(field);
            }
            Some(v) => {
                body[field] = v;
            }
        }
        app.post_r("/api/v1/customers", body.clone())
            .await
            .problem(422, &[field]);
        let _ = body;
    }
    let all = app
        .post_r(
            "/api/v1/customers",
            json!({ "name": "", "phone": "1", "email": "x", "code": "-", "extra": 1 }),
        )
        .await;
    all.problem(422, &["name", "phone", "email", "code", "extra"]);
    assert_eq!(counts(&db).await, before, "a 422 stored something");
    // The phone was never taken.
    let c = app.create_customer(json!({ "phone": phone })).await;
    assert_eq!(c["phone"], phone);
}

#[tokio::test]
async fn customer_search_matches_name_code_phone_and_email_case_insensitively() {
    let app = spawn_app().await;
    let m = marker();
    let up = m.to_uppercase();
    let by_name = app
        .create_customer(json!({ "name": format!("Zawadi {up}") }))
        .await;
    let by_code = app
        .create_customer(json!({ "code": format!("K-{up}") }))
        .await;
    let by_email = app
        .create_customer(json!({ "email": format!("zawadi.{m}@example.com") }))
        .await;
    let by_phone = app.create_customer(json!({})).await;
    let phone = by_phone["phone"].as_str().unwrap().to_string();
    let search = |q: String| {
        let app = &app;
        async move { ids(&items(app, &qs("/api/v1/customers", &[("q", &q)])).await) }
    };
    assert_eq!(search(format!("zawadi {m}")).await, [id(&by_name)]);
    assert_eq!(search(format!("k-{m}")).await, [id(&by_code)]);
    assert_eq!(search(format!("ZAWADI.{up}@")).await, [id(&by_email)]);
    assert_eq!(search(phone.clone()).await, [id(&by_phone)]);
    assert_eq!(search(phone[5..].to_string()).await, [id(&by_phone)]);
    assert_eq!(search(m.clone()).await.len(), 3);

    // LIKE wildcards in q are literal characters.
    let percent = app
        .create_customer(json!({ "name": format!("Promo {m} 50%_off\\x") }))
        .await;
    let plain = app
        .create_customer(json!({ "name": format!("Promo {m} 500 off") }))
        .await;
    assert_eq!(search(format!("{m} 50%")).await, [id(&percent)]);
    assert_eq!(search(format!("{m} 50%_o")).await, [id(&percent)]);
    assert_eq!(search("%".into()).await, [id(&percent)]);
    assert_eq!(search("_".into()).await, [id(&percent)]);
    assert_eq!(search("\\".into()).await, [id(&percent)]);
    assert_eq!(search(format!("{m} 500")).await, [id(&plain)]);
    assert_eq!(
        search(format!("{m} 5_0")).await,
        Vec::<String>::new(),
        "_ acted as a wildcard"
    );

    let none = app
        .get_r(&qs("/api/v1/customers", &[("q", &marker())]))
        .await;
    assert_eq!(
        none.expect(200),
        &json!({ "items": [], "next_cursor": null })
    );
    app.get_r("/api/v1/customers?q=").await.problem(400, &["q"]);
}

#[tokio::test]
async fn customer_pages_are_newest_first_without_skips_or_repeats() {
    let app = spawn_app().await;
    let m = marker();
    let mut created = Vec::new();
    for i in 0..25 {
        created.push(id(&app
            .create_customer(json!({ "name": format!("Pager {m} {i}") }))
            .await));
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let (first, cursor) = page(&app, &qs("/api/v1/customers", &[("q", &m)])).await;
    assert_eq!(ids(&first), newest_first[..20], "default limit is 20");
    assert!(cursor.is_some());
    let pages = walk(&app, "/api/v1/customers", &[("q", &m), ("limit", "2")]).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [[2; 12].as_slice(), &[1]].concat()
    );
    assert_eq!(ids(&pages.concat()), newest_first);
    let pages = walk(&app, "/api/v1/customers", &[("q", &m), ("limit", "1")]).await;
    assert_eq!(ids(&pages.concat()), newest_first);
    let (all, cursor) = page(
        &app,
        &qs("/api/v1/customers", &[("q", &m), ("limit", "100")]),
    )
    .await;
    assert_eq!(ids(&all), newest_first);
    assert_eq!(cursor, None);
    // Without q the whole table pages the same way.
    let pages = walk(&app, "/api/v1/customers", &[("limit", "7")]).await;
    assert_eq!(ids(&pages.concat()), newest_first);

    // New rows arriving between page fetches neither shift nor repeat the walk.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for round in 0..100 {
        let mut p = vec![("q", m.as_str()), ("limit", "3")];
        if let Some(c) = &cursor {
            p.push(("cursor", c));
        }
        let (items, next) = page(&app, &qs("/api/v1/customers", &p)).await;
        seen.extend(ids(&items));
        app.create_customer(json!({ "name": format!("Pager {m} late {round}") }))
            .await;
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen, newest_first,
        "a walk during inserts skipped or repeated"
    );

    for (param, value) in [
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "-1"),
        ("limit", "abc"),
        ("limit", "1.5"),
        ("limit", ""),
        ("cursor", "not-a-cursor!"),
        ("cursor", "AAAA"),
        ("cursor", ""),
        ("q", ""),
    ] {
        app.get_r(&qs("/api/v1/customers", &[(param, value)]))
            .await
            .problem(400, &[param]);
    }
}

#[tokio::test]
async fn customer_with_orders_cannot_be_deleted_and_lists_only_its_orders() {
    let app = spawn_app().await;
    let a = app.create_customer(json!({})).await;
    let b = app.create_customer(json!({})).await;
    let (aid, bid) = (id(&a), id(&b));
    let first = app.create_order(&aid, json!({})).await;
    let other = app.create_order(&bid, json!({})).await;
    let last = app.create_order(&aid, json!({})).await;

    let path = format!("{}/orders", customer_path(&a));
    let (list, cursor) = page(&app, &path).await;
    assert_eq!(ids(&list), [id(&last), id(&first)]);
    assert_eq!(cursor, None);
    assert!(list.iter().all(|o| o["customer"]["id"] == a["id"]));
    let pages = walk(&app, &path, &[("limit", "1")]).await;
    assert_eq!(ids(&pages.concat()), [id(&last), id(&first)]);
    assert_eq!(
        ids(&items(&app, &format!("{}/orders", customer_path(&b))).await),
        [id(&other)]
    );
    app.get_r(&format!("{path}?limit=0"))
        .await
        .problem(400, &["limit"]);

    app.delete_r(&customer_path(&a)).await.problem(409, &[]);
    assert_eq!(app.get_r(&customer_path(&a)).await.expect(200), &a);
    assert_eq!(app.delete_r(&order_path(&first)).await.status, 204);
    app.delete_r(&customer_path(&a)).await.problem(409, &[]);
    assert_eq!(app.delete_r(&order_path(&last)).await.status, 204);
    assert_eq!(app.delete_r(&customer_path(&a)).await.status, 204);
    app.get_r(&path).await.problem(404, &[]);
    assert_eq!(
        app.get_r(&order_path(&other)).await.expect(200)["customer"]["id"],
        b["id"]
    );
}

// ---------------------------------------------------------------------------------------------
// Orders
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn order_create_by_id_or_code_answers_201_with_the_contract_shape() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let m = marker();
    let c = app
        .create_customer(json!({ "name": "Wanjiku Kamau", "code": format!("shop-{m}") }))
        .await;
    let cid = id(&c);
    let r = app
        .post_r(
            "/api/v1/orders",
            json!({ "customer_id": cid, "item": "Laptop", "amount": "1200" }),
        )
        .await;
    let o = r.expect(201).clone();
    assert_eq!(r.header("location"), Some(order_path(&o).as_str()));
    assert_eq!(keys(&o), key_set(&ORDER_FIELDS));
    assert_uuid7(&o["id"]);
    assert!(
        is_order_number(o["order_number"].as_str().unwrap()),
        "{}",
        o["order_number"]
    );
    assert_eq!(
        o["customer"],
        json!({ "id": c["id"], "name": c["name"], "code": c["code"], "phone": c["phone"] })
    );
    assert_eq!(o["item"], "Laptop");
    assert_eq!(o["quantity"], 1);
    assert_eq!(o["amount"], "1200.00");
    assert_eq!(o["currency"], "KES");
    assert_eq!(o["status"], "pending");
    let n = &o["notification"];
    assert_eq!(keys(n), key_set(&["id", "status", "updated_at"]));
    assert_uuid7(&n["id"]);
    assert_eq!(n["status"], "queued");
    ts(&n["updated_at"]);
    assert_eq!(ts(&o["created_at"]), ts(&o["updated_at"]));
    assert_eq!(
        stable(app.get_r(&order_path(&o)).await.expect(200)),
        stable(&o)
    );
    let notes = items(&app, &format!("{}/notifications", order_path(&o))).await;
    assert_eq!(ids(&notes), [id(n)]);

    // By code, in any case, with the optional fields.
    let by_code = app
        .post_r(
            "/api/v1/orders",
            json!({ "customer_code": format!("Shop-{m}"), "item": "  Phone case ", "amount": 0.1,
                    "quantity": 3, "currency": "USD" }),
        )
        .await
        .expect(201)
        .clone();
    assert_eq!(by_code["customer"]["id"], c["id"]);
    assert_eq!(by_code["item"], "Phone case");
    assert_eq!(by_code["amount"], "0.10");
    assert_eq!(by_code["quantity"], 3);
    assert_eq!(by_code["currency"], "USD");

    // Order numbers are unique.
    let mut numbers = BTreeSet::new();
    for _ in 0..10 {
        let o = app.create_order(&cid, json!({})).await;
        let n = o["order_number"].as_str().unwrap().to_string();
        assert!(is_order_number(&n), "{n}");
        numbers.insert(n);
    }
    assert_eq!(numbers.len(), 10);

    // Exactly one of customer_id and customer_code, naming an existing customer.
    let before = counts(&db).await;
    let either = |r: &Reply| {
        r.problem(422, &[]);
        assert!(
            r.body["errors"]["customer_id"].is_array()
                || r.body["errors"]["customer_code"].is_array(),
            "{}",
            r.text
        );
    };
    either(
        &app.post_r(
            "/api/v1/orders",
            json!({ "customer_id": cid, "customer_code": c["code"], "item": "x", "amount": "1" }),
        )
        .await,
    );
    either(
        &app.post_r("/api/v1/orders", json!({ "item": "x", "amount": "1" }))
            .await,
    );
    for (body, field) in [
        (
            json!({ "customer_id": uuid::Uuid::now_v7(), "item": "x", "amount": "1" }),
            "customer_id",
        ),
        (
            json!({ "customer_id": "not-a-uuid", "item": "x", "amount": "1" }),
            "customer_id",
        ),
        (
            json!({ "customer_id": null, "item": "x", "amount": "1" }),
            "customer_id",
        ),
        (
            json!({ "customer_code": format!("NOPE-{m}"), "item": "x", "amount": "1" }),
            "customer_code",
        ),
        (
            json!({ "customer_code": "-x", "item": "x", "amount": "1" }),
            "customer_code",
        ),
    ] {
        app.post_r("/api/v1/orders", body)
            .await
            .problem(422, &[field]);
    }
    assert_eq!(
        counts(&db).await,
        before,
        "a refused order stored something"
    );
    assert_events_gap_free(&db).await;
}

#[tokio::test]
async fn order_money_quantity_currency_and_item_rules() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let cid = id(&app.create_customer(json!({})).await);
    // Raw JSON so that numbers keep their exact text (1e3, 1.001...).
    let raw = |field: &str, value: &str| {
        let mut fields = vec![
            ("customer_id", format!("\"{cid}\"")),
            ("item", "\"Laptop\"".to_string()),
            ("amount", "\"10.00\"".to_string()),
        ];
        fields.retain(|(k, _)| *k != field);
        if value != "ABSENT" {
            fields.push((field, value.to_string()));
        }
        let inner: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        format!("{{{}}}", inner.join(", "))
    };
    let before = counts(&db).await;
    let long_item = format!("\"{}\"", "x".repeat(201));
    let bad: Vec<(&str, &str)> = vec![
        ("amount", "\"1.001\""),
        ("amount", "1.001"),
        ("amount", "0"),
        ("amount", "\"0\""),
        ("amount", "\"0.00\""),
        ("amount", "0.00"),
        ("amount", "-5"),
        ("amount", "\"-5\""),
        ("amount", "-0.01"),
        ("amount", "\"NaN\""),
        ("amount", "\"nan\""),
        ("amount", "\"Infinity\""),
        ("amount", "\"1e3\""),
        ("amount", "1e3"),
        ("amount", "1E3"),
        ("amount", "1.5e2"),
        ("amount", "\"1000000000\""),
        ("amount", "1000000000"),
        ("amount", "1000000000.00"),
        ("amount", "999999999.999"),
        ("amount", "\"12a\""),
        ("amount", "\"\""),
        ("amount", "\" 12\""),
        ("amount", "\"1,000\""),
        ("amount", "\"+1\""),
        ("amount", "\".5\""),
        ("amount", "true"),
        ("amount", "null"),
        ("amount", "[1]"),
        ("amount", "{}"),
        ("amount", "ABSENT"),
        ("quantity", "0"),
        ("quantity", "-1"),
        ("quantity", "1000001"),
        ("quantity", "1.5"),
        ("quantity", "2.0"),
        ("quantity", "1e2"),
        ("quantity", "\"2\""),
        ("quantity", "null"),
        ("quantity", "true"),
        ("quantity", "99999999999999999999"),
        ("currency", "\"XYZ\""),
        ("currency", "\"\""),
        ("currency", "\"KESS\""),
        ("currency", "123"),
        ("currency", "null"),
        ("item", "ABSENT"),
        ("item", "\"\""),
        ("item", "\"   \""),
        ("item", long_item.as_str()),
        ("item", "null"),
        ("item", "5"),
        ("price", "\"10.00\""),
    ];
    for (field, value) in &bad {
        let body = raw(field, value);
        let r = app
            .raw_r(
                Method::POST,
                "/api/v1/orders",
                Some("application/json"),
                &body,
            )
            .await;
        assert_eq!(r.status, 422, "{body} -> {}", r.text);
        r.problem(422, &[field]);
    }
    app.raw_r(
        Method::POST,
        "/api/v1/orders",
        Some("application/json"),
        &format!(
            r#"{{"customer_id": "{cid}", "item": "", "amount": 1e3, "quantity": 0, "currency": "XYZ", "extra": 1}}"#
        ),
    )
    .await
    .problem(422, &["item", "amount", "quantity", "currency", "extra"]);
    assert_eq!(counts(&db).await, before, "a 422 stored something");

    let good: Vec<(&str, &str, Value)> = vec![
        ("amount", "\"1200\"", json!("1200.00")),
        ("amount", "1200", json!("1200.00")),
        ("amount", "1200.5", json!("1200.50")),
        ("amount", "0.1", json!("0.10")),
        ("amount", "\"0.01\"", json!("0.01")),
        ("amount", "\"007.10\"", json!("7.10")),
        ("amount", "999999999.99", json!("999999999.99")),
        ("amount", "\"999999999.99\"", json!("999999999.99")),
        ("quantity", "1000000", json!(1000000)),
        ("quantity", "1", json!(1)),
        ("quantity", "ABSENT", json!(1)),
        ("currency", "\"EUR\"", json!("EUR")),
        ("currency", "ABSENT", json!("KES")),
    ];
    for (field, value, expected) in &good {
        let body = raw(field, value);
        let r = app
            .raw_r(
                Method::POST,
                "/api/v1/orders",
                Some("application/json"),
                &body,
            )
            .await;
        let o = r.expect(201);
        assert_eq!(&o[*field], expected, "{body}");
        assert_eq!(
            stable(app.get_r(&order_path(o)).await.expect(200)),
            stable(o)
        );
    }
    let long = app
        .create_order(&cid, json!({ "item": "é".repeat(200) }))
        .await;
    assert_eq!(long["item"].as_str().unwrap().chars().count(), 200);
    let after = counts(&db).await;
    assert_eq!(after.orders, before.orders + good.len() as i64 + 1);
    assert_eq!(after.notifications, after.orders);
    assert_events_gap_free(&db).await;
}

#[tokio::test]
async fn order_patch_edits_fields_and_follows_the_status_machine() {
    let app = spawn_app().await;
    let cid = id(&app.create_customer(json!({})).await);
    let o = app.create_order(&cid, json!({})).await;
    let path = order_path(&o);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let u = app
        .patch_r(
            &path,
            json!({ "item": "Solar lamp", "quantity": 5, "amount": "99.5" }),
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(
        (&u["item"], &u["quantity"], &u["amount"]),
        (&json!("Solar lamp"), &json!(5), &json!("99.50"))
    );
    for k in [
        "id",
        "order_number",
        "customer",
        "currency",
        "status",
        "created_at",
    ] {
        assert_eq!(u[k], o[k], "{k} changed");
    }
    assert!(ts(&u["updated_at"]) > ts(&o["updated_at"]));
    assert_eq!(stable(app.get_r(&path).await.expect(200)), stable(&u));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        stable(app.patch_r(&path, json!({})).await.expect(200)),
        stable(&u)
    );
    assert_eq!(
        stable(
            app.patch_r(&path, json!({ "status": "pending" }))
                .await
                .expect(200)
        ),
        stable(&u),
        "staying pending is not a change"
    );

    let bad: Vec<(Value, Vec<&str>)> = vec![
        (json!({ "quantity": 0 }), vec!["quantity"]),
        (json!({ "quantity": 1.5 }), vec!["quantity"]),
        (json!({ "amount": "1.001" }), vec!["amount"]),
        (json!({ "amount": 0 }), vec!["amount"]),
        (json!({ "amount": null }), vec!["amount"]),
        (json!({ "item": "" }), vec!["item"]),
        (json!({ "item": null }), vec!["item"]),
        (json!({ "status": "bogus" }), vec!["status"]),
        (json!({ "status": "PENDING" }), vec!["status"]),
        (json!({ "status": null }), vec!["status"]),
        (json!({ "customer_id": cid }), vec!["customer_id"]),
        (json!({ "order_number": "ORD-1234" }), vec!["order_number"]),
        (json!({ "currency": "USD" }), vec!["currency"]),
        (
            json!({ "item": "", "quantity": -1, "amount": "x", "status": "x" }),
            vec!["item", "quantity", "amount", "status"],
        ),
        (json!({ "item": "Valid", "amount": "-1" }), vec!["amount"]),
    ];
    for (body, fields) in bad {
        app.patch_r(&path, body.clone()).await.problem(422, &fields);
        assert_eq!(
            stable(app.get_r(&path).await.expect(200)),
            stable(&u),
            "{body} changed the order"
        );
    }

    // Every transition: allowed ones are 200, all others 409 and change nothing.
    let states = ["pending", "confirmed", "shipped", "delivered", "cancelled"];
    let route = |to: &str| -> &'static [&'static str] {
        match to {
            "pending" => &[],
            "confirmed" => &["confirmed"],
            "shipped" => &["confirmed", "shipped"],
            "delivered" => &["confirmed", "shipped", "delivered"],
            _ => &["cancelled"],
        }
    };
    let allowed = |from: &str, to: &str| {
        from == to
            || matches!(
                (from, to),
                ("pending", "confirmed")
                    | ("confirmed", "shipped")
                    | ("shipped", "delivered")
                    | ("pending" | "confirmed" | "shipped", "cancelled")
            )
    };
    let order_in = |from: &'static str| {
        let (app, cid) = (&app, cid.clone());
        async move {
            let o = app.create_order(&cid, json!({})).await;
            let mut last = o.clone();
            for step in route(from) {
                last = app
                    .patch_r(&order_path(&o), json!({ "status": step }))
                    .await
                    .expect(200)
                    .clone();
            }
            assert_eq!(last["status"], from);
            last
        }
    };
    for from in states {
        let o = order_in(from).await;
        for to in states.into_iter().filter(|to| !allowed(from, to)) {
            app.patch_r(&order_path(&o), json!({ "status": to }))
                .await
                .problem(409, &[]);
            assert_eq!(
                stable(app.get_r(&order_path(&o)).await.expect(200)),
                stable(&o),
                "{from} -> {to} changed the order"
            );
        }
        for to in states
            .into_iter()
            .filter(|to| allowed(from, to) && *to != from)
        {
            let o = order_in(from).await;
            let moved = app
                .patch_r(&order_path(&o), json!({ "status": to }))
                .await
                .expect(200)
                .clone();
            assert_eq!(moved["status"], to, "{from} -> {to}");
            assert_eq!(app.get_r(&order_path(&o)).await.expect(200)["status"], to);
        }
    }
    // A delivered or cancelled order cannot be edited.
    for from in ["delivered", "cancelled"] {
        let o = order_in(from).await;
        for body in [
            json!({ "item": "Changed" }),
            json!({ "quantity": 2 }),
            json!({ "amount": "1.00" }),
            json!({ "item": "Changed", "status": from }),
        ] {
            app.patch_r(&order_path(&o), body.clone())
                .await
                .problem(409, &[]);
            assert_eq!(
                stable(app.get_r(&order_path(&o)).await.expect(200)),
                stable(&o),
                "{body} changed a {from} order"
            );
        }
        // Saying what it already is changes nothing and is not an error.
        app.patch_r(&order_path(&o), json!({ "status": from }))
            .await
            .expect(200);
    }
    // A shipped order may still have its fields edited along with a status change.
    let o = order_in("shipped").await;
    let d = app
        .patch_r(
            &order_path(&o),
            json!({ "status": "delivered", "item": "Final" }),
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(
        (&d["status"], &d["item"]),
        (&json!("delivered"), &json!("Final"))
    );

    // Delete: 204, then 404 everywhere.
    let r = app.delete_r(&path).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty());
    app.get_r(&path).await.problem(404, &[]);
    app.delete_r(&path).await.problem(404, &[]);
    app.patch_r(&path, json!({ "item": "x" }))
        .await
        .problem(404, &[]);
    app.get_r(&format!("{path}/notifications"))
        .await
        .problem(404, &[]);
    app.post_r(&format!("{path}/notifications"), json!({}))
        .await
        .problem(404, &[]);
    for bad in ["not-a-uuid", "42"] {
        let p = format!("/api/v1/orders/{bad}");
        for r in [
            app.get_r(&p).await,
            app.patch_r(&p, json!({ "item": "x" })).await,
            app.delete_r(&p).await,
        ] {
            let status = r.status;
            assert!(matches!(status, 400 | 404), "{bad}: {}", r.text);
            r.problem(status, &[]);
        }
    }
    let db = app.db.connect().await;
    assert_events_gap_free(&db).await;
}

#[tokio::test]
async fn order_list_filters_by_status_customer_text_and_dates() {
    let app = spawn_app().await;
    let m = marker();
    let up = m.to_uppercase();
    let c1 = app
        .create_customer(json!({ "name": format!("Achieng {m}"), "code": format!("AC-{up}") }))
        .await;
    let c2 = app
        .create_customer(json!({ "name": "Baraka Mwangi" }))
        .await;
    let (c1id, c2id) = (id(&c1), id(&c2));
    let o1 = app
        .create_order(&c1id, json!({ "item": "Laptop 15in" }))
        .await;
    let o2 = app
        .create_order(&c1id, json!({ "item": "Phone case" }))
        .await;
    let o3 = app
        .create_order(&c2id, json!({ "item": "Solar lamp" }))
        .await;
    app.patch_r(&order_path(&o2), json!({ "status": "confirmed" }))
        .await
        .expect(200);
    app.patch_r(&order_path(&o3), json!({ "status": "cancelled" }))
        .await
        .expect(200);
    let all = [id(&o3), id(&o2), id(&o1)];
    let list = |params: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ids(&items(app, &qs("/api/v1/orders", &p)).await)
        }
    };
    let s = |v: &str| v.to_string();
    assert_eq!(list(vec![]).await, all);
    assert_eq!(list(vec![("status", s("pending"))]).await, [id(&o1)]);
    assert_eq!(list(vec![("status", s("confirmed"))]).await, [id(&o2)]);
    assert_eq!(list(vec![("status", s("cancelled"))]).await, [id(&o3)]);
    assert!(list(vec![("status", s("shipped"))]).await.is_empty());
    assert_eq!(
        list(vec![("customer_id", c1id.clone())]).await,
        [id(&o2), id(&o1)]
    );
    assert_eq!(list(vec![("customer_id", c2id.clone())]).await, [id(&o3)]);
    assert!(
        list(vec![("customer_id", uuid::Uuid::now_v7().to_string())])
            .await
            .is_empty()
    );
    assert_eq!(
        list(vec![
            ("customer_id", c1id.clone()),
            ("status", s("pending"))
        ])
        .await,
        [id(&o1)]
    );
    // q: item, order number, customer name and code, case-insensitively.
    assert_eq!(list(vec![("q", s("LAPTOP"))]).await, [id(&o1)]);
    let number = o3["order_number"].as_str().unwrap();
    assert_eq!(list(vec![("q", number.to_lowercase())]).await, [id(&o3)]);
    assert_eq!(list(vec![("q", number[4..].to_string())]).await, [id(&o3)]);
    assert_eq!(
        list(vec![("q", format!("achieng {up}"))]).await,
        [id(&o2), id(&o1)]
    );
    assert_eq!(
        list(vec![("q", format!("ac-{m}"))]).await,
        [id(&o2), id(&o1)]
    );
    assert_eq!(list(vec![("q", s("baraka"))]).await, [id(&o3)]);
    assert!(list(vec![("q", s("%"))]).await.is_empty());
    assert!(list(vec![("q", s("_"))]).await.is_empty());
    assert_eq!(
        list(vec![("q", s("lamp")), ("status", s("pending"))]).await,
        Vec::<String>::new()
    );

    // Dates: whole UTC days (inclusive) and RFC 3339 instants.
    let created: Vec<(String, i64)> = [&o3, &o2, &o1]
        .iter()
        .map(|o| (id(o), ts(&o["created_at"])))
        .collect();
    let expect = |pred: &dyn Fn(i64) -> bool| -> Vec<String> {
        created
            .iter()
            .filter(|(_, t)| pred(*t))
            .map(|(i, _)| i.clone())
            .collect()
    };
    let day_of = |ms: i64| rfc3339(ms)[..10].to_string();
    let (min, max) = (created[2].1, created[0].1);
    let day = day_of(min);
    assert_eq!(list(vec![("start_date", day.clone())]).await, all);
    assert_eq!(
        list(vec![("start_date", day.clone()), ("end_date", day_of(max))]).await,
        all
    );
    assert_eq!(list(vec![("end_date", day_of(max))]).await, all);
    assert!(
        list(vec![("end_date", day_of(min - 86_400_000))])
            .await
            .is_empty()
    );
    assert!(
        list(vec![("start_date", day_of(max + 86_400_000))])
            .await
            .is_empty()
    );
    let t2 = ts(&o2["created_at"]);
    assert_eq!(
        list(vec![("start_date", rfc3339(t2))]).await,
        expect(&|t| t >= t2)
    );
    assert_eq!(
        list(vec![("start_date", rfc3339(t2 + 1))]).await,
        expect(&|t| t > t2)
    );
    assert_eq!(
        list(vec![("end_date", rfc3339(t2))]).await,
        expect(&|t| t <= t2)
    );
    assert_eq!(
        list(vec![("end_date", rfc3339(t2 - 1))]).await,
        expect(&|t| t < t2)
    );
    assert_eq!(
        list(vec![("start_date", rfc3339(t2)), ("end_date", rfc3339(t2))]).await,
        expect(&|t| t == t2)
    );
    // The same instant written with an offset.
    let plus3 = chrono::DateTime::from_timestamp_millis(t2)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::east_opt(3 * 3600).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    assert!(plus3.ends_with("+03:00"), "{plus3}");
    assert_eq!(
        list(vec![("start_date", plus3)]).await,
        expect(&|t| t >= t2)
    );

    for (param, value) in [
        ("start_date", "2026-13-01"),
        ("start_date", "yesterday"),
        ("end_date", "2026-1-1"),
        ("end_date", "21/11/2026"),
        ("start_date", "2026-11-21T25:00:00Z"),
        ("start_date", ""),
        ("end_date", ""),
        ("status", "bogus"),
        ("status", ""),
        ("customer_id", "not-a-uuid"),
        ("customer_id", ""),
        ("q", ""),
        ("limit", "0"),
        ("limit", "101"),
        ("cursor", "garbage!"),
    ] {
        app.get_r(&qs("/api/v1/orders", &[(param, value)]))
            .await
            .problem(400, &[param]);
    }
    let r = app
        .get_r(&qs(
            "/api/v1/orders",
            &[("start_date", "2026-11-22"), ("end_date", "2026-11-21")],
        ))
        .await;
    r.problem(400, &[]);
    assert!(
        r.body["errors"]["start_date"].is_array() || r.body["errors"]["end_date"].is_array(),
        "{}",
        r.text
    );
    assert!(
        list(vec![
            ("start_date", s("2026-11-21")),
            ("end_date", s("2026-11-21T00:00:00Z"))
        ])
        .await
        .len()
            <= 3
    );

    let pages = walk(&app, "/api/v1/orders", &[("limit", "1")]).await;
    assert_eq!(ids(&pages.concat()), all);
    let pages = walk(
        &app,
        "/api/v1/orders",
        &[("limit", "2"), ("customer_id", &c1id)],
    )
    .await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [2],
        "an exactly full last page has no next_cursor or an empty follow-up"
    );
}

// ---------------------------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn order_notifications_list_resend_and_global_filters() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let c = app.create_customer(json!({ "name": "Wanjiku" })).await;
    let o = app.create_order(&id(&c), json!({})).await;
    let other = app.create_order(&id(&c), json!({})).await;
    let path = format!("{}/notifications", order_path(&o));
    let first = items(&app, &path).await;
    assert_eq!(ids(&first), [id(&o["notification"])]);
    let n = &first[0];
    assert_eq!(keys(n), key_set(&NOTIFICATION_FIELDS));
    assert_eq!(n["order_id"], o["id"]);
    assert_eq!(n["customer_id"], c["id"]);
    assert_eq!(n["phone"], c["phone"]);
    assert!(NOTIFICATION_STATUSES.contains(&n["status"].as_str().unwrap()));
    assert!(n["attempts"].as_i64().is_some_and(|a| a >= 0));
    assert!(
        n["message"]
            .as_str()
            .is_some_and(|msg| msg.contains(o["order_number"].as_str().unwrap())),
        "{n}"
    );
    ts(&n["created_at"]);
    ts(&n["updated_at"]);

    let before = counts(&db).await;
    let r = app.post_r(&path, json!({})).await;
    let fresh = r.expect(202).clone();
    assert_eq!(keys(&fresh), key_set(&NOTIFICATION_FIELDS));
    assert_eq!(fresh["status"], "queued");
    assert_eq!(fresh["order_id"], o["id"]);
    assert_eq!(fresh["attempts"], 0);
    assert_ne!(fresh["id"], n["id"]);
    let after = counts(&db).await;
    assert_eq!(after.notifications, before.notifications + 1);
    assert_eq!(after.orders, before.orders);
    assert_eq!(ids(&items(&app, &path).await), [id(&fresh), id(n)]);
    let pages = walk(&app, &path, &[("limit", "1")]).await;
    assert_eq!(ids(&pages.concat()), [id(&fresh), id(n)]);
    assert_eq!(
        app.get_r(&order_path(&o)).await.expect(200)["notification"]["id"],
        fresh["id"],
        "the order shows its latest notification"
    );
    let listed = items(&app, &qs("/api/v1/orders", &[("customer_id", &id(&c))])).await;
    let shown = listed.iter().find(|x| x["id"] == o["id"]).unwrap();
    assert_eq!(shown["notification"]["id"], fresh["id"], "so does the list");
    let shown = listed.iter().find(|x| x["id"] == other["id"]).unwrap();
    assert_eq!(shown["notification"]["id"], other["notification"]["id"]);

    // Each SMS costs money: a second "send again" of this order within a minute is refused
    // with Retry-After and queues nothing; the SMS sent on creation did not count, and
    // another order is not held back.
    let before = counts(&db).await;
    let r = app.post_r(&path, json!({})).await;
    r.problem(429, &[]);
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("less than a minute ago"),
        "{}",
        r.text
    );
    assert_eq!(counts(&db).await.notifications, before.notifications);
    let r = app
        .post_r(&format!("{}/notifications", order_path(&other)), json!({}))
        .await;
    r.expect(202);

    // GET /notifications filters.
    let by_order = items(&app, &qs("/api/v1/notifications", &[("order_id", &id(&o))])).await;
    assert_eq!(ids(&by_order), [id(&fresh), id(n)]);
    let everything = items(&app, "/api/v1/notifications").await;
    assert_eq!(everything.len(), 4, "two of each order (one sent again)");
    assert!(ids(&everything).contains(&id(&other["notification"])));
    // Counted by status once they stop moving (the dispatcher is sending them meanwhile).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while items(&app, "/api/v1/notifications")
        .await
        .iter()
        .any(|x| x["status"] == "queued" || x["status"] == "sending")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the SMS stay in flight"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut by_status = 0;
    for status in NOTIFICATION_STATUSES {
        let list = items(&app, &qs("/api/v1/notifications", &[("status", status)])).await;
        assert!(
            list.iter().all(|x| x["status"] == status),
            "{status}: {list:?}"
        );
        by_status += list.len();
    }
    assert_eq!(by_status, 4);
    let pages = walk(&app, "/api/v1/notifications", &[("limit", "2")]).await;
    assert_eq!(ids(&pages.concat()), ids(&everything));
    for (param, value) in [
        ("status", "bogus"),
        ("status", ""),
        ("order_id", "nope"),
        ("order_id", ""),
        ("limit", "0"),
        ("cursor", "?"),
    ] {
        app.get_r(&qs("/api/v1/notifications", &[(param, value)]))
            .await
            .problem(400, &[param]);
    }
    assert!(
        items(
            &app,
            &qs(
                "/api/v1/notifications",
                &[("order_id", &uuid::Uuid::now_v7().to_string())]
            )
        )
        .await
        .is_empty()
    );

    let unknown = format!("/api/v1/orders/{}/notifications", uuid::Uuid::now_v7());
    app.get_r(&unknown).await.problem(404, &[]);
    app.post_r(&unknown, json!({})).await.problem(404, &[]);
    assert_events_gap_free(&db).await;
}

#[tokio::test]
async fn with_sms_disabled_orders_have_no_notification() {
    let app = spawn_app_with(|s| s.sms.enabled = false).await;
    let o = app
        .create_order(&id(&app.create_customer(json!({})).await), json!({}))
        .await;
    assert!(o.as_object().unwrap().contains_key("notification"));
    assert!(o["notification"].is_null(), "{o}");
    assert!(
        items(&app, &format!("{}/notifications", order_path(&o)))
            .await
            .is_empty()
    );
    let r = app
        .post_r(&format!("{}/notifications", order_path(&o)), json!({}))
        .await;
    r.problem(409, &[]);
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn idempotency_key_replays_orders_and_customers_once_per_principal() {
    let app = spawn_app_with(|s| s.auth.tokens = vec![TOKEN.into(), TOKEN2.into()]).await;
    let db = app.db.connect().await;
    let c = app.create_customer(json!({})).await;
    let m = marker();
    let key = format!("order-{m}");
    let body = json!({ "customer_id": id(&c), "item": "Laptop", "amount": "1200.00" });

    let before = counts(&db).await;
    let first = app.post_idem("/api/v1/orders", &key, &body).await;
    let o = first.expect(201).clone();
    let after_first = counts(&db).await;
    assert_eq!(after_first.orders, before.orders + 1);
    assert_eq!(after_first.notifications, before.notifications + 1);
    assert_eq!(after_first.events, before.events + 1);
    for _ in 0..2 {
        let again = app.post_idem("/api/v1/orders", &key, &body).await;
        assert_eq!(again.status, 201, "{}", again.text);
        assert_eq!(again.body, o, "the replay differs");
        assert_eq!(again.header("location"), first.header("location"));
    }
    // Key order and spacing of the body do not matter.
    let respaced = format!(
        r#"{{ "amount":"1200.00" , "item" : "Laptop", "customer_id": "{}" }}"#,
        id(&c)
    );
    let r = app
        .request(Method::POST, "/api/v1/orders")
        .header("Idempotency-Key", &key)
        .header("content-type", "application/json")
        .body(respaced)
        .send()
        .await
        .unwrap();
    assert_eq!(Reply::of(r).await.expect(201), &o);
    assert_eq!(counts(&db).await, after_first, "a replay created something");

    // The same key with another body is a conflict and creates nothing.
    app.post_idem(
        "/api/v1/orders",
        &key,
        &json!({ "customer_id": id(&c), "item": "Laptop", "amount": "1300.00" }),
    )
    .await
    .problem(409, &[]);
    assert_eq!(counts(&db).await, after_first);

    // Another principal has its own keys.
    let r = app
        .client
        .post(format!("{}/api/v1/orders", app.url))
        .bearer_auth(TOKEN2)
        .header("Idempotency-Key", &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let theirs = Reply::of(r).await.expect(201).clone();
    assert_ne!(theirs["id"], o["id"]);
    let after_theirs = counts(&db).await;
    assert_eq!(after_theirs.orders, after_first.orders + 1);

    // Bad keys are 400 naming the header; the longest allowed key works.
    for bad in [
        "x".repeat(256),
        "has space".into(),
        "tab\tkey".into(),
        String::new(),
    ] {
        app.post_idem("/api/v1/orders", &bad, &body)
            .await
            .problem(400, &["Idempotency-Key"]);
        app.post_idem(
            "/api/v1/customers",
            &bad,
            &json!({ "name": "X", "phone": unique_phone() }),
        )
        .await
        .problem(400, &["Idempotency-Key"]);
    }
    assert_eq!(counts(&db).await, after_theirs);
    let longest = "k".repeat(255);
    let a = app.post_idem("/api/v1/orders", &longest, &body).await;
    let b = app.post_idem("/api/v1/orders", &longest, &body).await;
    assert_eq!(a.expect(201), b.expect(201));

    // Concurrent repeats of one new key create one order.
    let before = counts(&db).await;
    let ckey = format!("burst-{m}");
    let replies = futures_util::future::join_all(
        (0..12).map(|_| app.post_idem("/api/v1/orders", &ckey, &body)),
    )
    .await;
    let bodies: BTreeSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.text);
            r.body.to_string()
        })
        .collect();
    assert_eq!(
        bodies.len(),
        1,
        "concurrent replays answered different orders"
    );
    assert_eq!(counts(&db).await.orders, before.orders + 1);

    // Customers: the same, and the route is part of the key.
    let before = counts(&db).await;
    let cbody = json!({ "name": format!("Idem {m}"), "phone": unique_phone() });
    let first = app.post_idem("/api/v1/customers", &key, &cbody).await;
    let created = first.expect(201).clone();
    let again = app.post_idem("/api/v1/customers", &key, &cbody).await;
    assert_eq!(again.expect(201), &created);
    assert_eq!(again.header("location"), first.header("location"));
    app.post_idem(
        "/api/v1/customers",
        &key,
        &json!({ "name": format!("Other {m}"), "phone": cbody["phone"] }),
    )
    .await
    .problem(409, &[]);
    let after = counts(&db).await;
    assert_eq!(after.customers, before.customers + 1);
    assert_eq!(after.events, before.events + 1);
    assert_eq!(
        ids(&items(&app, &qs("/api/v1/customers", &[("q", &m)])).await),
        [id(&created)]
    );
    assert_events_gap_free(&db).await;
}

// ---------------------------------------------------------------------------------------------
// Transport: bodies, content types, auth, routing, request ids
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_bodies_and_wrong_content_types_are_refused() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let c = app.create_customer(json!({})).await;
    let before = counts(&db).await;
    let json = Some("application/json");
    for path in ["/api/v1/customers", "/api/v1/orders"] {
        for bad in [
            "{",
            "[1]",
            "\"text\"",
            "42",
            "null",
            "",
            "{\"a\":1}{",
            "{\"name\":}",
        ] {
            app.raw_r(Method::POST, path, json, bad)
                .await
                .problem(400, &[]);
        }
        app.raw_r(Method::POST, path, Some("text/plain"), "{}")
            .await
            .problem(415, &[]);
        app.raw_r(Method::POST, path, None, "{}")
            .await
            .problem(415, &[]);
        app.raw_r(
            Method::POST,
            path,
            Some("application/x-www-form-urlencoded"),
            "name=x",
        )
        .await
        .problem(415, &[]);
    }
    for bad in ["{", "[]"] {
        app.raw_r(Method::PATCH, &customer_path(&c), json, bad)
            .await
            .problem(400, &[]);
    }
    app.raw_r(Method::PATCH, &customer_path(&c), Some("text/plain"), "{}")
        .await
        .problem(415, &[]);

    // Over 64 KiB is 413; just under it reaches validation.
    let big = json!({ "name": "x".repeat(70 * 1024), "phone": unique_phone() }).to_string();
    app.raw_r(Method::POST, "/api/v1/customers", json, &big)
        .await
        .problem(413, &[]);
    let near = json!({ "name": "x".repeat(60 * 1024), "phone": unique_phone() }).to_string();
    assert!(near.len() < 64 * 1024);
    app.raw_r(Method::POST, "/api/v1/customers", json, &near)
        .await
        .problem(422, &["name"]);
    // Without a Content-Length (chunked), the limit still holds.
    let mut request = format!(
        "POST /api/v1/customers HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.addr
    );
    let chunk = "x".repeat(1024);
    request.push_str(&format!("{:x}\r\n{{\"name\": \"\r\n", 10));
    for _ in 0..80 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    let response = raw_http(app.addr, request.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "chunked body over 64 KiB: {}",
        &response[..response.len().min(300)]
    );
    assert_eq!(counts(&db).await, before);

    // A charset parameter and +json types are fine.
    let r = app
        .raw_r(
            Method::POST,
            "/api/v1/customers",
            Some("application/json; charset=utf-8"),
            &json!({ "name": "Charset", "phone": unique_phone() }).to_string(),
        )
        .await;
    r.expect(201);
    let r = app
        .raw_r(
            Method::PATCH,
            &customer_path(&c),
            Some("application/merge-patch+json"),
            "{\"name\": \"Merged\"}",
        )
        .await;
    assert_eq!(r.expect(200)["name"], "Merged");
}

#[tokio::test]
async fn auth_routing_and_request_ids() {
    let app = spawn_app().await;
    let url = |p: &str| format!("{}{p}", app.url);
    let unauthorized = |r: Reply| {
        r.problem(401, &[]);
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "WWW-Authenticate: {challenge:?}"
        );
    };
    for path in [
        "/api/v1/customers",
        "/api/v1/orders",
        "/api/v1/notifications",
        "/api/v1/nope",
    ] {
        unauthorized(Reply::of(app.client.get(url(path)).send().await.unwrap()).await);
        unauthorized(
            Reply::of(
                app.client
                    .get(url(path))
                    .bearer_auth("wrong-token-123")
                    .send()
                    .await
                    .unwrap(),
            )
            .await,
        );
    }
    for header in [
        format!("Basic {TOKEN}"),
        "Bearer".into(),
        "Bearer ".into(),
        TOKEN.into(),
        format!("Bearer {TOKEN}x"),
    ] {
        unauthorized(
            Reply::of(
                app.client
                    .get(url("/api/v1/customers"))
                    .header("authorization", header)
                    .send()
                    .await
                    .unwrap(),
            )
            .await,
        );
    }
    let r = app
        .client
        .post(url("/api/v1/customers"))
        .json(&json!({ "name": "X", "phone": unique_phone() }))
        .send()
        .await
        .unwrap();
    unauthorized(Reply::of(r).await);
    let db = app.db.connect().await;
    assert_eq!(counts(&db).await.customers, 0);
    // The scheme is case-insensitive.
    let r = app
        .client
        .get(url("/api/v1/customers"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    Reply::of(r).await.expect(200);

    // Unknown routes and methods are problem documents.
    app.get_r("/api/v1/nope").await.problem(404, &[]);
    app.get_r("/api/v1/customers/x/y/z").await.problem(404, &[]);
    Reply::of(app.client.get(url("/nope")).send().await.unwrap())
        .await
        .problem(404, &[]);
    for (method, path) in [
        (Method::PUT, "/api/v1/customers".to_string()),
        (Method::DELETE, "/api/v1/orders".into()),
        (Method::PATCH, "/api/v1/notifications".into()),
        (
            Method::POST,
            format!("/api/v1/customers/{}", uuid::Uuid::now_v7()),
        ),
        (
            Method::PUT,
            format!("/api/v1/orders/{}", uuid::Uuid::now_v7()),
        ),
    ] {
        let r = app.request(method.clone(), &path).send().await.unwrap();
        Reply::of(r).await.problem(405, &[]);
    }

    // Request ids: echoed when sane, generated otherwise, on every kind of response.
    for (path, auth) in [
        ("/api/v1/customers", true),
        ("/api/v1/customers", false),
        ("/api/v1/nope", true),
        ("/healthz", false),
    ] {
        let mut req = app
            .client
            .get(url(path))
            .header("x-request-id", "req-abc-123");
        if auth {
            req = req.bearer_auth(TOKEN);
        }
        let r = req.send().await.unwrap();
        assert_eq!(
            r.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            Some("req-abc-123"),
            "{path}"
        );
        let r = app.client.get(url(path)).send().await.unwrap();
        let generated = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(!generated.is_empty(), "{path}: no generated request id");
        let again = app.client.get(url(path)).send().await.unwrap();
        assert_ne!(
            again
                .headers()
                .get("x-request-id")
                .unwrap()
                .to_str()
                .unwrap(),
            generated
        );
    }
    let r = app
        .client
        .get(url("/healthz"))
        .header("x-request-id", "has space")
        .send()
        .await
        .unwrap();
    let id = r.headers().get("x-request-id").unwrap().to_str().unwrap();
    assert!(!id.is_empty() && id != "has space");

    // Health needs no auth.
    Reply::of(app.client.get(url("/healthz")).send().await.unwrap())
        .await
        .expect(200);
    Reply::of(app.client.get(url("/readyz")).send().await.unwrap())
        .await
        .expect(200);
}

// ---------------------------------------------------------------------------------------------
// Group commit under mixed load
// ---------------------------------------------------------------------------------------------

/// Concurrent writes where some must fail inside the batch (duplicate phones, unknown
/// customers): the valid ones all succeed, the invalid ones get their own error, and the
/// event log stays gap-free (a failed operation consumes no seq).
#[tokio::test]
async fn concurrent_mixed_writes_keep_valid_ones_and_events_gap_free() {
    let app = std::sync::Arc::new(spawn_app().await);
    let db = app.db.connect().await;
    let mut existing = Vec::new();
    for _ in 0..8 {
        existing.push(app.create_customer(json!({})).await);
    }
    let cid = id(&existing[0]);
    let pair_phones: Vec<String> = (0..6).map(|_| unique_phone()).collect();
    let mut bodies: Vec<(&'static str, Value, &'static str)> = Vec::new();
    for i in 0..24 {
        bodies.push((
            "/api/v1/customers",
            json!({ "name": format!("Fresh {i}"), "phone": unique_phone() }),
            "ok",
        ));
    }
    for c in &existing {
        bodies.push((
            "/api/v1/customers",
            json!({ "name": "Dup", "phone": national(c["phone"].as_str().unwrap()) }),
            "409",
        ));
    }
    for p in &pair_phones {
        for _ in 0..2 {
            bodies.push((
                "/api/v1/customers",
                json!({ "name": "Pair", "phone": p }),
                "pair",
            ));
        }
    }
    for i in 0..24 {
        bodies.push((
            "/api/v1/orders",
            json!({ "customer_id": cid, "item": format!("Item {i}"), "amount": "5.00" }),
            "ok",
        ));
    }
    for i in 0..8 {
        bodies.push((
            "/api/v1/orders",
            json!({ "customer_code": format!("NOBODY-{i}"), "item": "x", "amount": "5.00" }),
            "422",
        ));
    }
    let before = counts(&db).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(bodies.len()));
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|(path, body, expect)| {
            let (app, barrier) = (app.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = app.post_r(path, body).await;
                (expect, r.status, r.text)
            })
        })
        .collect();
    let mut pair_wins = 0;
    let mut ok = 0;
    for t in tasks {
        let (expect, status, text) = t.await.unwrap();
        match expect {
            "ok" => {
                assert_eq!(status, 201, "{text}");
                ok += 1;
            }
            "409" => assert_eq!(status, 409, "{text}"),
            "422" => assert_eq!(status, 422, "{text}"),
            _ => {
                assert!(matches!(status, 201 | 409), "{status} {text}");
                pair_wins += usize::from(status == 201);
            }
        }
    }
    assert_eq!(
        pair_wins,
        pair_phones.len(),
        "exactly one of each pair wins"
    );
    let after = counts(&db).await;
    assert_eq!(after.customers, before.customers + 24 + pair_wins as i64);
    assert_eq!(after.orders, before.orders + 24);
    assert_eq!(after.notifications, before.notifications + 24);
    assert_eq!(after.events, before.events + ok + pair_wins as i64);
    assert_events_gap_free(&db).await;
}

/// Sends raw bytes to the server and reads the response until the server closes (bounded).
async fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read everything: ignore write errors.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Storage unavailable: 503 with Retry-After, bounded, nothing half-written
// ---------------------------------------------------------------------------------------------

/// How long a request may take while the database is unavailable: the configured acquire
/// timeout plus generous slack, never a hang.
const UNAVAILABLE_BOUND: Duration = Duration::from_secs(1 + 9);

async fn post_bounded(app: &TestApp, path: &str, key: &str, body: &Value) -> Reply {
    let started = std::time::Instant::now();
    match tokio::time::timeout(UNAVAILABLE_BOUND, app.post_idem(path, key, body)).await {
        Ok(r) => r,
        Err(_) => panic!(
            "POST {path} hung for {:?} while the database was locked (expected 503 with Retry-After)",
            started.elapsed()
        ),
    }
}

fn assert_unavailable(r: &Reply) {
    r.problem(503, &[]);
    let retry = r.header("retry-after").unwrap_or_default();
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After: {retry:?}"
    );
}

/// Another connection holds the database's write lock longer than the acquire timeout
/// (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an exclusive lock on the event counter that
/// every write takes): writes answer 503 in bounded time and write nothing; once the lock
/// is gone the same request (same Idempotency-Key) succeeds.
#[tokio::test]
async fn a_locked_database_answers_503_and_recovers() {
    let app = spawn_app_with(|s| s.database.acquire_timeout_secs = 1).await;
    let db = app.db.connect().await;
    let c = app.create_customer(json!({})).await;
    let before = counts(&db).await;
    let locker = app.db.connect().await;
    let txn = locker
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await
        .expect("begin on the locking connection");
    if app.db.is_postgres() {
        txn.execute_unprepared("LOCK TABLE event_counter IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("LOCK TABLE");
    } else {
        // Make sure the write lock is really held (IMMEDIATE takes it at BEGIN).
        txn.execute_unprepared("UPDATE event_counter SET last_seq = last_seq WHERE id = 1")
            .await
            .expect("write under the lock");
    }
    let order = json!({ "customer_id": id(&c), "item": "Locked", "amount": "10.00" });
    let customer = json!({ "name": "Locked", "phone": unique_phone() });
    let r = post_bounded(&app, "/api/v1/orders", "locked-order", &order).await;
    assert_unavailable(&r);
    let r = post_bounded(&app, "/api/v1/customers", "locked-customer", &customer).await;
    assert_unavailable(&r);
    // Reads do not need the write lock.
    if !app.db.is_postgres() {
        app.get_r(&customer_path(&c)).await.expect(200);
    }
    txn.rollback().await.expect("release the lock");
    drop(locker);

    assert_eq!(counts(&db).await, before, "a 503 left something behind");
    let r = post_bounded(&app, "/api/v1/orders", "locked-order", &order).await;
    let o = r.expect(201).clone();
    let r = post_bounded(&app, "/api/v1/customers", "locked-customer", &customer).await;
    r.expect(201);
    let after = counts(&db).await;
    assert_eq!(after.orders, before.orders + 1);
    assert_eq!(after.customers, before.customers + 1);
    assert_eq!(after.notifications, before.notifications + 1);
    assert_eq!(after.events, before.events + 2);
    assert_eq!(
        stable(app.get_r(&order_path(&o)).await.expect(200)),
        stable(&o)
    );
    assert_events_gap_free(&db).await;
}

/// PostgreSQL only: the database disappears under the running server (dropped with FORCE,
/// which also terminates its connections). Reads, writes and /readyz answer 503 with
/// Retry-After in bounded time, never 500 and never a hang.
#[tokio::test]
async fn a_vanished_postgres_database_answers_503() {
    let app = spawn_app_with(|s| s.database.acquire_timeout_secs = 1).await;
    let Some(name) = app.db.postgres_name().map(str::to_string) else {
        eprintln!("skipped: PostgreSQL only (set DUKA_TEST_POSTGRES_URL)");
        return;
    };
    let c = app.create_customer(json!({})).await;
    app.db
        .admin_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .expect("drop the test database");
    let r = post_bounded(
        &app,
        "/api/v1/orders",
        "gone",
        &json!({ "customer_id": id(&c), "item": "x", "amount": "1.00" }),
    )
    .await;
    assert_unavailable(&r);
    for path in [
        "/api/v1/customers".to_string(),
        customer_path(&c),
        "/readyz".into(),
    ] {
        let r = tokio::time::timeout(UNAVAILABLE_BOUND, app.get_r(&path))
            .await
            .unwrap_or_else(|_| panic!("GET {path} hung with the database gone"));
        assert_unavailable(&r);
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and CLI
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_settings_refuse_to_start_naming_the_key() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let base = test_settings(&db, dir.path());
    type Edit = fn(&mut duka::config::Settings);
    let cases: Vec<(&str, Edit)> = vec![
        ("http.bind", |s| s.http.bind = "nowhere".into()),
        ("http.bind", |s| s.http.bind = "127.0.0.1:99999".into()),
        ("database.url", |s| s.database.url = "mysql://x/y".into()),
        ("database.url", |s| {
            s.database.url = "postgres://user@[::1:5432/db".into()
        }),
        ("database.url", |s| s.database.url = "not a url".into()),
        ("database.max_connections", |s| {
            s.database.max_connections = 0
        }),
        ("database.acquire_timeout_secs", |s| {
            s.database.acquire_timeout_secs = 0
        }),
        ("auth.tokens", |s| s.auth.tokens = vec!["short".into()]),
        ("orders.default_currency", |s| {
            s.orders.default_currency = "XYZ".into()
        }),
        ("sms.default_region", |s| s.sms.default_region = "XX".into()),
    ];
    for (key, edit) in cases {
        let mut settings = base.clone();
        edit(&mut settings);
        let err = start_error(settings).await;
        assert!(
            err.starts_with(key),
            "expected an error naming {key}: {err:?}"
        );
        assert!(!err.contains('\n'), "not one line: {err:?}");
    }
    // An unreachable PostgreSQL is refused with a message, after the connect timeout.
    let mut settings = base.clone();
    settings.database.url = "postgres://duka@127.0.0.1:1/duka".into();
    settings.database.acquire_timeout_secs = 1;
    let err = tokio::time::timeout(Duration::from_secs(20), start_error(settings))
        .await
        .expect("start gave up in bounded time");
    assert!(err.contains("database"), "{err}");
    assert!(!err.contains('\n'), "not one line: {err:?}");
}

/// The built binary with a config file and environment overrides.
fn duka_cmd(config: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_duka"));
    cmd.arg("--config").arg(config);
    for (k, _) in std::env::vars() {
        if k.starts_with("DUKA__") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(config.parent().unwrap());
    cmd
}

async fn run_to_end(mut cmd: std::process::Command) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || cmd.output().expect("run duka")),
    )
    .await
    .expect("duka exited in bounded time")
    .unwrap()
}

#[tokio::test]
async fn the_binary_refuses_bad_config_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[http]\nbindd = \"127.0.0.1:0\"\n", "bindd"),
        ("[http]\nbind = \"nowhere\"\n", "http.bind"),
        (
            "[database]\nurl = \"postgres://u@[::1:5/x\"\n",
            "database.url",
        ),
        ("[nonsense]\nkey = 1\n", "nonsense"),
        ("[sms]\nnotify_on = [\"teleported\"]\n", "sms.notify_on"),
    ];
    for (i, (toml, key)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        for sub in ["migrate", "serve"] {
            let mut cmd = duka_cmd(&path);
            cmd.arg(sub);
            let out = run_to_end(cmd).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{toml} was accepted");
            assert_ne!(out.status.code(), Some(101), "duka panicked: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
            assert!(stderr.contains(key), "{key} not named: {stderr}");
        }
    }
    let out = run_to_end(duka_cmd(&dir.path().join("missing.toml"))).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

/// `duka migrate`, then `duka serve` with `migrate_on_start = false`, the bind address from
/// `DUKA__HTTP__BIND` (the file's is invalid), and a generated token kept with mode 0600.
#[tokio::test]
async fn the_binary_migrates_then_serves_with_env_override_and_generated_token() {
    use std::io::BufRead;
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("duka.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[http]\nbind = \"not-an-address\"\nworkers = 1\n\
             [database]\nurl = {:?}\nmigrate_on_start = false\n",
            db.url()
        ),
    )
    .unwrap();
    let mut cmd = duka_cmd(&config);
    cmd.env("DUKA__HTTP__BIND", "127.0.0.1:0").arg("migrate");
    let out = run_to_end(cmd).await;
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checker = db.connect().await;
    assert_eq!(scalar(&checker, "SELECT COUNT(*) FROM customers").await, 0);

    let mut cmd = duka_cmd(&config);
    cmd.env("DUKA__HTTP__BIND", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("start duka");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stderr.take().unwrap();
    let mut child = Kill(child);
    // Read the log (stderr) on a thread for the child's whole life so that it never blocks
    // on a pipe.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut url, mut token) = (None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while url.is_none() || token.is_none() {
        let line = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "duka printed no URL and token; exit: {:?}",
                    child.0.try_wait()
                )
            })
            .unwrap_or_else(|| panic!("duka exited early: {:?}", child.0.try_wait()));
        let field = |name: &str| {
            let (_, rest) = line.split_once(&format!(" {name}="))?;
            rest.split_whitespace().next().map(str::to_string)
        };
        if line.contains(" listening ") {
            url = field("url");
        }
        if line.contains("generated an API token") {
            token = field("token");
        }
    }
    let (url, token) = (url.unwrap(), token.unwrap());
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with(":0"), "{url}");

    let file = data.join("api-token");
    let meta = std::fs::metadata(&file).expect("the generated token file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "token file mode");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = client
        .post(format!("{url}/api/v1/customers"))
        .bearer_auth(&token)
        .json(&json!({ "name": "Served", "phone": unique_phone() }))
        .send()
        .await
        .unwrap();
    Reply::of(r).await.expect(201);
    let r = client
        .get(format!("{url}/api/v1/customers"))
        .bearer_auth("wrong-token-123")
        .send()
        .await
        .unwrap();
    Reply::of(r).await.problem(401, &[]);
    assert_eq!(scalar(&checker, "SELECT COUNT(*) FROM customers").await, 1);
    drop(child);
    drop(checker);
}
