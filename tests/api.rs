//! The customers and orders API, black-box over HTTP against a real server and database.

mod support;

use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use support::*;

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
