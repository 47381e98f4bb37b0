//! The write path's batches, black-box: requests that arrive while the writer is held up
//! share one group-commit batch, applied as sets. These tests hold the writer up on
//! purpose (a transaction of their own holds the database's write lock on SQLite, or the
//! event counter row on PostgreSQL) so that everything they send lands in one batch, then
//! check every answer, every row and the event log.

use crate::support::*;
use reqwest::{Method, Response};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, SqliteTransactionMode, Statement,
    TransactionOptions, TransactionTrait,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Holds the writer up until `release`: its next batch waits for this transaction.
struct WriterHeld {
    txn: DatabaseTransaction,
    _db: sea_orm::DatabaseConnection,
}

impl WriterHeld {
    async fn take(app: &TestApp) -> Self {
        let db = app.db.connect().await;
        let txn = db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
            .unwrap();
        if db.get_database_backend() == DbBackend::Postgres {
            txn.execute_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT last_seq FROM event_counter WHERE id = 1 FOR UPDATE",
            ))
            .await
            .unwrap();
        }
        Self { txn, _db: db }
    }

    async fn release(self) {
        self.txn.rollback().await.unwrap();
    }
}

/// Sends every request at once while the writer is held, then releases it; answers in
/// the order of `requests`.
async fn in_one_batch(
    app: &Arc<TestApp>,
    requests: Vec<(Method, String, Option<Value>, Option<String>)>,
) -> Vec<(u16, Value)> {
    let held = WriterHeld::take(app).await;
    let mut tasks = Vec::new();
    for (method, path, body, key) in requests {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = app.request(method, &path);
            if let Some(body) = &body {
                r = r.json(body);
            }
            if let Some(key) = key {
                r = r.header("Idempotency-Key", key);
            }
            let r: Response = r.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }));
    }
    // Long enough for every request to reach the writer's queue, well within the 2 s the
    // test settings give a lock.
    tokio::time::sleep(Duration::from_millis(700)).await;
    held.release().await;
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn assert_log_gap_free(app: &TestApp) {
    let db = app.db.connect().await;
    assert_eq!(scalar(&db, "SELECT MIN(seq) FROM events").await, 1);
    assert_eq!(
        scalar(&db, "SELECT MAX(seq) - COUNT(*) FROM events").await,
        0
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT (SELECT last_seq FROM event_counter) - (SELECT MAX(seq) FROM events)"
        )
        .await,
        0
    );
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

/// One batch holding good operations and every kind of refusal: each refused operation
/// answers alone, everything else commits, and the event log stays gap-free.
#[tokio::test]
async fn a_batch_mixing_good_and_refused_operations_commits_the_good_ones() {
    let app = Arc::new(spawn_app().await);
    let with_orders = app.create_customer(json!({})).await;
    let without_orders = app.create_customer(json!({})).await;
    let other = app.create_customer(json!({})).await;
    // Deleted in the batch: not `without_orders`, whose code the batch also reuses (the
    // order of arrival within a batch is not fixed, and a deleted code is free again).
    let deletable = app.create_customer(json!({})).await;
    let pending = app.create_order(&s(&with_orders["id"]), json!({})).await;
    let delivered = app.create_order(&s(&with_orders["id"]), json!({})).await;
    for status in ["confirmed", "shipped", "delivered"] {
        let r = app
            .patch(
                &format!("/api/v1/orders/{}", s(&delivered["id"])),
                &json!({ "status": status }),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let keyed_body = json!({ "customer_id": with_orders["id"], "item": "Keyed", "amount": "5.00" });
    let r = app
        .request(Method::POST, "/api/v1/orders")
        .header("Idempotency-Key", "mixed-k1")
        .json(&keyed_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let keyed: Value = r.json().await.unwrap();
    let db = app.db.connect().await;
    let orders_before = scalar(&db, "SELECT COUNT(*) FROM orders").await;
    let customers_before = scalar(&db, "SELECT COUNT(*) FROM customers").await;

    let post = |path: &str, body: Value| (Method::POST, path.to_string(), Some(body), None);
    let order_for = |id: &Value, item: &str| {
        post(
            "/api/v1/orders",
            json!({ "customer_id": id, "item": item, "amount": "10.00" }),
        )
    };
    let shared_phone = unique_phone();
    let mut requests = Vec::new();
    let mut expect: Vec<(&str, u16)> = Vec::new();
    for i in 0..20 {
        requests.push(order_for(&with_orders["id"], &format!("Good {i}")));
        expect.push(("good order", 201));
    }
    for _ in 0..5 {
        requests.push(post(
            "/api/v1/orders",
            json!({ "customer_code": "NO-SUCH-CUSTOMER", "item": "X", "amount": "1.00" }),
        ));
        expect.push(("unknown customer", 422));
    }
    for i in 0..5 {
        requests.push(post(
            "/api/v1/customers",
            json!({ "name": format!("New {i}"), "phone": unique_phone() }),
        ));
        expect.push(("new customer", 201));
    }
    for _ in 0..3 {
        requests.push(post(
            "/api/v1/customers",
            json!({ "name": "Same phone", "phone": with_orders["phone"] }),
        ));
        expect.push(("taken phone", 409));
    }
    for _ in 0..2 {
        requests.push(post(
            "/api/v1/customers",
            json!({ "name": "Same code", "phone": unique_phone(), "code": without_orders["code"] }),
        ));
        expect.push(("taken code", 409));
    }
    // Two creates with one new phone: the first in the batch wins.
    for _ in 0..2 {
        requests.push(post(
            "/api/v1/customers",
            json!({ "name": "Twin", "phone": shared_phone }),
        ));
        expect.push(("twin", 0));
    }
    let mut replay = post("/api/v1/orders", keyed_body.clone());
    replay.3 = Some("mixed-k1".into());
    requests.push(replay);
    expect.push(("replay", 201));
    let mut reused = post(
        "/api/v1/orders",
        json!({ "customer_id": with_orders["id"], "item": "Other body", "amount": "5.00" }),
    );
    reused.3 = Some("mixed-k1".into());
    requests.push(reused);
    expect.push(("key reused with another body", 409));
    requests.push((
        Method::PATCH,
        format!("/api/v1/orders/{}", s(&delivered["id"])),
        Some(json!({ "item": "Too late" })),
        None,
    ));
    expect.push(("change a delivered order", 409));
    requests.push((
        Method::PATCH,
        format!("/api/v1/orders/{}", s(&pending["id"])),
        Some(json!({ "status": "confirmed" })),
        None,
    ));
    expect.push(("confirm", 200));
    requests.push((
        Method::PATCH,
        format!("/api/v1/customers/{}", s(&other["id"])),
        Some(json!({ "phone": with_orders["phone"] })),
        None,
    ));
    expect.push(("patch to a taken phone", 409));
    requests.push((
        Method::DELETE,
        format!("/api/v1/customers/{}", s(&with_orders["id"])),
        None,
        None,
    ));
    expect.push(("delete a customer with orders", 409));
    requests.push((
        Method::DELETE,
        "/api/v1/orders/0193a000-0000-7000-8000-000000000000".into(),
        None,
        None,
    ));
    expect.push(("delete an unknown order", 404));
    requests.push((
        Method::DELETE,
        format!("/api/v1/customers/{}", s(&deletable["id"])),
        None,
        None,
    ));
    expect.push(("delete a customer", 204));

    let answers = in_one_batch(&app, requests).await;
    let mut twins = Vec::new();
    for ((what, status), (got, body)) in expect.iter().zip(&answers) {
        if *what == "twin" {
            twins.push(*got);
            continue;
        }
        assert_eq!(got, status, "{what}: {body}");
    }
    twins.sort();
    assert_eq!(twins, [201, 409], "two creates with one phone");
    let replayed = &answers[expect.iter().position(|e| e.0 == "replay").unwrap()].1;
    assert_eq!(replayed, &keyed, "the replay is the original response");

    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM orders").await,
        orders_before + 20
    );
    // Five new customers and one twin; one deleted.
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM customers").await,
        customers_before + 5 + 1 - 1
    );
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM customers WHERE phone = '{shared_phone}'")
        )
        .await,
        1
    );
    let kinds = |kind: &str| {
        let db = &db;
        let sql = format!("SELECT COUNT(*) FROM events WHERE kind = '{kind}'");
        async move { scalar(db, &sql).await }
    };
    // Before the batch: 4 customers, 3 orders (one keyed); after: 20 orders more, 6
    // customers more, one deletion; the delivered order had 3 updates, the pending one 1.
    assert_eq!(kinds("order.created").await, 3 + 20);
    assert_eq!(kinds("customer.created").await, 4 + 6);
    assert_eq!(kinds("customer.deleted").await, 1);
    assert_eq!(kinds("order.updated").await, 3 + 1);
    assert_eq!(kinds("order.deleted").await, 0);
    // sms.notify_on is ["created"] by default: one SMS per order.
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM notifications").await,
        scalar(&db, "SELECT COUNT(*) FROM orders").await,
    );
    assert_log_gap_free(&app).await;
}

/// 256 creates with idempotency keys in one batch, some keys repeated inside the batch:
/// a repeat with the same body gets the first one's response, another body gets 409, and
/// each key creates one order.
#[tokio::test]
async fn idempotency_keys_repeated_inside_one_batch_create_once() {
    let app = Arc::new(spawn_app().await);
    let customer = app.create_customer(json!({})).await;
    let body = |i: usize| json!({ "customer_id": customer["id"], "item": format!("K{i}"), "amount": "3.00" });
    let mut requests = Vec::new();
    let mut keys = Vec::new();
    // (key, body): 200 fresh keys, 50 of them again with the same body, 6 with another.
    let sends = (0..200)
        .map(|i| (i, i))
        .chain((0..50).map(|i| (i, i)))
        .chain((50..56).map(|i| (i, i + 1000)));
    for (i, b) in sends {
        keys.push(i);
        requests.push((
            Method::POST,
            "/api/v1/orders".to_string(),
            Some(body(b)),
            Some(format!("batch-key-{i}")),
        ));
    }
    assert_eq!(requests.len(), 256);
    let answers = in_one_batch(&app, requests).await;
    // Keys 50..56 were sent with two bodies: whichever came first in the batch created
    // the order, the other is 409.
    let mut by_key: HashMap<usize, Vec<Value>> = HashMap::new();
    let mut conflicts = 0;
    for (i, (status, reply)) in keys.iter().zip(answers) {
        match status {
            201 => by_key.entry(*i).or_default().push(reply),
            409 if (50..56).contains(i) => conflicts += 1,
            _ => panic!("key {i}: {status} {reply}"),
        }
    }
    assert_eq!(conflicts, 6);
    assert_eq!(by_key.len(), 200);
    for (i, replies) in &by_key {
        assert!(
            replies.windows(2).all(|w| w[0] == w[1]),
            "key {i} answered different orders: {replies:?}"
        );
        if !(50..56).contains(i) {
            assert_eq!(replies[0]["item"], format!("K{i}"));
        }
    }
    let db = app.db.connect().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM orders").await, 200);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM notifications").await, 200);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM idempotency_keys").await,
        200
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM events WHERE kind = 'order.created'"
        )
        .await,
        200
    );
    assert_log_gap_free(&app).await;
    // After the batch, the stored records answer the same way.
    let r = app
        .request(Method::POST, "/api/v1/orders")
        .header("Idempotency-Key", "batch-key-7")
        .json(&body(7))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap(), by_key[&7][0]);
}
