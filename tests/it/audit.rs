//! Audit: every event names who made the change (a principal, the SMS dispatcher, the
//! provider's delivery report), and an order's history outlives the order and the live
//! replay window, for `audit.retention_days`.

use crate::fake_at::FakeAt;
use crate::sms::{SECRET, all_have_status, at_app, delivery, report, wait_notifications};
use crate::support::live::{connect, hello, next_n};
use crate::support::*;
use duka::config::{NamedToken, TokenEntry};
use reqwest::Method;
use serde_json::{Value, json};

const WANJIKU: &str = "wanjiku-staff-token";

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

async fn history(app: &TestApp, order_id: &str) -> reqwest::Response {
    app.get(&format!("/api/v1/orders/{order_id}/history")).await
}

async fn history_items(app: &TestApp, order_id: &str) -> Vec<Value> {
    let r = history(app, order_id).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["items"].as_array().unwrap().clone()
}

fn summary(items: &[Value]) -> Vec<(String, String, String)> {
    items
        .iter()
        .map(|e| {
            let status = e["data"]["status"].as_str().unwrap_or("-").to_string();
            let actor = e["actor"]["name"].as_str().unwrap_or("?").to_string();
            (s(&e["type"]).to_string(), status, actor)
        })
        .collect()
}

async fn exec(app: &TestApp, sql: &str) {
    use sea_orm::ConnectionTrait;
    app.db
        .connect()
        .await
        .execute_unprepared(sql)
        .await
        .unwrap();
}

#[tokio::test]
async fn every_event_names_its_actor_and_an_orders_history_outlives_it() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, |s| {
        s.auth.tokens.push(TokenEntry::Named(NamedToken {
            token: WANJIKU.into(),
            role: "staff".into(),
            name: Some("Wanjiku".into()),
        }));
    })
    .await;
    let mut ws = connect(&app, "").await;
    let start = hello(&mut ws).await;
    let as_wanjiku = |method: Method, path: &str| {
        app.client
            .request(method, format!("{}{path}", app.url))
            .bearer_auth(WANJIKU)
    };
    let customer = json_of(
        as_wanjiku(Method::POST, "/api/v1/customers")
            .json(&json!({"name": "Amina", "phone": unique_phone()})),
    )
    .await;
    let cid = s(&customer["id"]).to_string();
    let order = json_of(
        as_wanjiku(Method::POST, "/api/v1/orders")
            .json(&json!({"customer_id": cid, "item": "Laptop", "amount": "1200.00"})),
    )
    .await;
    let oid = s(&order["id"]).to_string();
    let sent = wait_notifications(&app, &oid, |l| all_have_status(l, "sent")).await;
    let provider_id = s(&sent[0]["provider_message_id"]).to_string();
    let r = report(&app, Some(SECRET), &delivery(&provider_id, "Success")).await;
    assert_eq!(r.status(), 200);
    wait_notifications(&app, &oid, |l| all_have_status(l, "delivered")).await;
    let r = as_wanjiku(Method::PATCH, &format!("/api/v1/orders/{oid}"))
        .json(&json!({"status": "confirmed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = as_wanjiku(Method::PATCH, &format!("/api/v1/customers/{cid}"))
        .json(&json!({"name": "Amina N."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The admin token (a string entry: "API token 1") deletes.
    assert_eq!(
        app.delete(&format!("/api/v1/orders/{oid}")).await.status(),
        204
    );
    assert_eq!(
        app.delete(&format!("/api/v1/customers/{cid}"))
            .await
            .status(),
        204
    );

    let items = history_items(&app, &oid).await;
    assert_eq!(
        summary(&items),
        [
            ("order.created", "pending", "Wanjiku"),
            ("notification.updated", "sending", "sms"),
            ("notification.updated", "sent", "sms"),
            ("notification.updated", "delivered", "africastalking"),
            ("order.updated", "confirmed", "Wanjiku"),
            ("order.deleted", "-", "API token 1"),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );
    let seqs: Vec<i64> = items.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let staff_subject = s(&items[0]["actor"]["subject"]).to_string();
    assert!(staff_subject.starts_with("token:"), "{}", items[0]);
    for item in &items {
        let actor = &item["actor"];
        let expected = match s(&actor["name"]) {
            "sms" => json!({"type": "system", "name": "sms"}),
            "africastalking" => json!({"type": "provider", "name": "africastalking"}),
            "Wanjiku" => json!({"type": "user", "subject": staff_subject, "name": "Wanjiku"}),
            _ => {
                assert_eq!(actor["type"], "user", "{item}");
                assert!(s(&actor["subject"]).starts_with("token:"), "{item}");
                continue;
            }
        };
        assert_eq!(actor, &expected, "{item}");
        for key in ["type", "seq", "at", "actor", "data"] {
            assert!(item.get(key).is_some(), "{item}");
        }
    }

    // The live frames carry the same actors, customers' events too.
    let frames = next_n(&mut ws, 9).await;
    assert_eq!(frames[0]["seq"].as_i64(), Some(start + 1));
    let customer_actors: Vec<(String, String)> = frames
        .iter()
        .filter(|f| s(&f["type"]).starts_with("customer."))
        .map(|f| {
            (
                s(&f["type"]).to_string(),
                s(&f["actor"]["name"]).to_string(),
            )
        })
        .collect();
    assert_eq!(
        customer_actors,
        [
            ("customer.created", "Wanjiku"),
            ("customer.updated", "Wanjiku"),
            ("customer.deleted", "API token 1"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let order_frames: Vec<&Value> = frames
        .iter()
        .filter(|f| !s(&f["type"]).starts_with("customer."))
        .collect();
    assert_eq!(order_frames.len(), items.len());
    for (frame, item) in order_frames.iter().zip(&items) {
        assert_eq!(*frame, item, "a history item is its live frame");
    }

    // No event about an unknown order (or no such id at all): 404.
    let unknown = uuid::Uuid::now_v7();
    assert_problem(history(&app, &unknown.to_string()).await, 404, &[]).await;
    assert_problem(history(&app, "not-an-id").await, 404, &[]).await;
}

#[tokio::test]
async fn history_outlives_the_replay_window_until_the_audit_retention() {
    let mut app = spawn_app_with(|s| s.sms.enabled = false).await;
    let customer = app.create_customer(json!({})).await;
    let order = app.create_order(s(&customer["id"]), json!({})).await;
    let oid = s(&order["id"]).to_string();
    let r = app
        .patch(
            &format!("/api/v1/orders/{oid}"),
            &json!({"status": "confirmed"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let before = history_items(&app, &oid).await;
    assert_eq!(before.len(), 2);
    // Something newer than the order's events, so that the newest event (always kept) is
    // not one of them.
    app.create_customer(json!({})).await;

    // Thirty days old: past the replay window (7), so a resume resyncs, but still history.
    let day = 86_400_000_i64;
    let now = chrono::Utc::now().timestamp_millis();
    exec(
        &app,
        &format!(
            "UPDATE events SET at = {} WHERE order_id = '{oid}'",
            now - 30 * day
        ),
    )
    .await;
    exec(
        &app,
        &format!(
            "UPDATE events SET at = {} WHERE order_id IS NULL",
            now - 30 * day
        ),
    )
    .await;
    app.restart(true).await;
    let kept = history_items(&app, &oid).await;
    assert_eq!(summary(&kept), summary(&before));
    let mut ws = connect(&app, "?since=0").await;
    hello(&mut ws).await;
    assert_eq!(next_n(&mut ws, 1).await[0]["type"], "resync");

    // Past the audit retention (365 days by default): gone.
    exec(
        &app,
        &format!(
            "UPDATE events SET at = {} WHERE order_id = '{oid}'",
            now - 366 * day
        ),
    )
    .await;
    app.restart(true).await;
    assert_problem(history(&app, &oid).await, 404, &[]).await;
}

#[tokio::test]
async fn audit_retention_is_its_own_setting() {
    let mut app = spawn_app_with(|s| {
        s.sms.enabled = false;
        s.audit.retention_days = 10;
    })
    .await;
    let customer = app.create_customer(json!({})).await;
    let order = app.create_order(s(&customer["id"]), json!({})).await;
    let oid = s(&order["id"]).to_string();
    app.create_customer(json!({})).await;
    let now = chrono::Utc::now().timestamp_millis();
    exec(
        &app,
        &format!(
            "UPDATE events SET at = {} WHERE order_id = '{oid}'",
            now - 11 * 86_400_000
        ),
    )
    .await;
    app.restart(true).await;
    assert_problem(history(&app, &oid).await, 404, &[]).await;
}

#[tokio::test]
async fn events_from_before_actors_were_recorded_read_as_unknown() {
    let mut app = spawn_app_with(|s| s.sms.enabled = false).await;
    let customer = app.create_customer(json!({})).await;
    let order = app.create_order(s(&customer["id"]), json!({})).await;
    let oid = s(&order["id"]).to_string();
    exec(
        &app,
        "UPDATE events SET actor_type = NULL, actor_subject = NULL, actor_name = NULL",
    )
    .await;
    let items = history_items(&app, &oid).await;
    assert_eq!(
        items[0]["actor"],
        json!({"type": "system", "name": "unknown"})
    );
    // A restart empties the hub's memory: the replay reads the log.
    app.restart(true).await;
    let mut ws = connect(&app, "?since=0").await;
    hello(&mut ws).await;
    let frames = next_n(&mut ws, 2).await;
    for frame in frames {
        assert_eq!(
            frame["actor"],
            json!({"type": "system", "name": "unknown"}),
            "{frame}"
        );
    }
}
