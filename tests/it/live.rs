//! Live events over WebSocket, black-box against a real server and database.

use crate::support::live::*;
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, Message};

fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

async fn exec(app: &TestApp, sql: &str) {
    let db = app.db.connect().await;
    db.execute_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Creates `n` orders for `customer` (sequentially).
async fn orders(app: &TestApp, customer: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(app.create_order(customer, json!({})).await);
    }
    out
}

fn is_rfc3339_millis_z(s: &str) -> bool {
    s.len() == 24 && s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

#[tokio::test]
async fn hello_then_one_frame_per_change_with_the_contract_shape() {
    let app = spawn_live_app_with(|s| s.sms.enabled = true).await;
    // Everything but notification.updated, which an SMS sender may also publish at any time.
    let mut ws = connect(
        &app,
        "?types=customer.created,customer.updated,customer.deleted,\
         order.created,order.updated,order.deleted",
    )
    .await;
    assert_eq!(hello(&mut ws).await, 0);
    let mut notifications = connect(&app, "?types=notification.updated").await;
    // The hello frame's text, `type` first like every event frame's.
    match notifications.next().await {
        Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), r#"{"type":"hello","seq":0}"#),
        other => panic!("expected the hello frame, got {other:?}"),
    }

    let customer = app.create_customer(json!({})).await;
    let cid = id(&customer);
    let r = app
        .patch(
            &format!("/api/v1/customers/{cid}"),
            &json!({ "name": "Renamed" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let customer_updated: Value = r.json().await.unwrap();
    let order = app.create_order(&cid, json!({})).await;
    let oid = id(&order);
    let r = app
        .patch(
            &format!("/api/v1/orders/{oid}"),
            &json!({ "status": "confirmed" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let order_updated: Value = r.json().await.unwrap();
    let r = app
        .post(&format!("/api/v1/orders/{oid}/notifications"), &json!({}))
        .await;
    assert_eq!(r.status(), 202);
    let notification: Value = r.json().await.unwrap();
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

    let frames = next_n(&mut ws, 7).await;
    let seqs = seqs(&frames);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(seqs[0], 1);
    for frame in &frames {
        let keys: Vec<&str> = frame
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 5, "{frame}");
        for key in ["type", "seq", "at", "actor", "data"] {
            assert!(keys.contains(&key), "{frame}");
        }
        assert!(
            is_rfc3339_millis_z(frame["at"].as_str().unwrap()),
            "{frame}"
        );
    }
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "customer.created",
            "customer.updated",
            "order.created",
            "order.updated",
            "order.updated",
            "order.deleted",
            "customer.deleted",
        ]
    );
    assert_eq!(frames[0]["data"], customer);
    assert_eq!(frames[1]["data"], customer_updated);
    assert_eq!(frames[2]["data"], order);
    assert_eq!(frames[3]["data"], order_updated);
    assert_eq!(frames[4]["data"]["notification"]["id"], notification["id"]);
    assert_eq!(frames[5]["data"], json!({ "id": oid }));
    assert_eq!(frames[6]["data"], json!({ "id": cid }));

    // The queued notification is published in the same commit as the order.updated above.
    let frame = loop {
        let frame = next_json(&mut notifications).await;
        if frame["data"]["id"] == notification["id"] {
            break frame;
        }
    };
    assert_eq!(frame["type"], "notification.updated");
    assert_eq!(frame["seq"], seqs[4] + 1);
    assert_eq!(frame["data"], notification);
    assert!(
        is_rfc3339_millis_z(frame["at"].as_str().unwrap()),
        "{frame}"
    );

    // A later client's hello names the latest seq.
    let mut late = connect(&app, "").await;
    assert!(hello(&mut late).await >= seqs[6]);
}

/// Three events committed while a client is away come back exactly on `since`, from the
/// hub's memory and, with that disabled, from the event log.
#[tokio::test]
async fn events_missed_while_away_are_replayed_exactly() {
    for recent_events in [1024, 0] {
        let app = spawn_live_app_with(|s| s.live.recent_events = recent_events).await;
        let customer = app.create_customer(json!({})).await;
        let cid = id(&customer);
        let mut ws = connect(&app, "").await;
        assert_eq!(hello(&mut ws).await, 1);
        let first = orders(&app, &cid, 2).await;
        let seen = next_n(&mut ws, 2).await;
        assert_eq!(seqs(&seen), [2, 3]);
        ws.close(None).await.unwrap();
        drop(ws);

        let missed = orders(&app, &cid, 3).await;
        let mut ws = connect(&app, "?since=3").await;
        assert_eq!(hello(&mut ws).await, 6);
        let replayed = next_n(&mut ws, 3).await;
        assert_consecutive(&replayed, 4);
        for (frame, order) in replayed.iter().zip(&missed) {
            assert_eq!(frame["type"], "order.created");
            assert_eq!(&frame["data"], order, "recent_events = {recent_events}");
        }
        // Then live, with no gap and no repeat.
        let live = orders(&app, &cid, 1).await;
        let frame = next_json(&mut ws).await;
        assert_eq!(frame["seq"], 7);
        assert_eq!(frame["data"], live[0]);

        // since=0 replays everything (customer.created first).
        let mut all = connect(&app, "?since=0").await;
        assert_eq!(hello(&mut all).await, 7);
        let frames = next_n(&mut all, 7).await;
        assert_consecutive(&frames, 1);
        assert_eq!(frames[0]["type"], "customer.created");
        assert_eq!(frames[1]["data"], first[0]);
    }
}

#[tokio::test]
async fn types_limit_what_is_sent_and_unknown_types_are_refused() {
    let app = spawn_live_app().await;
    let mut ws = connect(&app, "?types=order.created,customer.deleted").await;
    assert_eq!(hello(&mut ws).await, 0);
    let customer = app.create_customer(json!({})).await;
    let cid = id(&customer);
    let order = app.create_order(&cid, json!({})).await;
    let oid = id(&order);
    app.patch(&format!("/api/v1/orders/{oid}"), &json!({ "quantity": 3 }))
        .await;
    app.delete(&format!("/api/v1/orders/{oid}")).await;
    app.delete(&format!("/api/v1/customers/{cid}")).await;
    let frames = next_n(&mut ws, 2).await;
    assert_eq!(frames[0]["type"], "order.created");
    assert_eq!(frames[0]["seq"], 2);
    assert_eq!(frames[1]["type"], "customer.deleted");
    assert_eq!(frames[1]["seq"], 5);

    // The filter applies to a replay too.
    let mut replay = connect(&app, "?since=0&types=order.deleted").await;
    assert_eq!(hello(&mut replay).await, 5);
    let frame = next_json(&mut replay).await;
    assert_eq!(
        (frame["type"].as_str(), frame["seq"].as_i64()),
        (Some("order.deleted"), Some(4))
    );

    // Refused before the upgrade, as a problem naming the parameter.
    for query in [
        "?types=order.created,order.exploded",
        "?types=",
        "?since=-1",
        "?since=x",
    ] {
        let r = app.get(&format!("/api/v1/ws{query}")).await;
        let body = assert_problem(r, 400, &[]).await;
        assert!(
            body.to_string().contains(if query.contains("since") {
                "since"
            } else {
                "types"
            }),
            "{body}"
        );
        match try_connect(&app, query, Some(TOKEN)).await {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
            other => panic!("{query}: expected 400, got {other:?}"),
        }
    }
    // A plain GET (no upgrade) is a bad request, not a 500.
    assert_problem(app.get("/api/v1/ws").await, 400, &[]).await;
}

#[tokio::test]
async fn resync_when_since_is_not_in_the_log() {
    let app = spawn_live_app_with(|s| s.live.recent_events = 0).await;
    let customer = app.create_customer(json!({})).await;
    orders(&app, &id(&customer), 4).await;

    // Ahead of the server (e.g. a client of a database that was reset).
    let mut ws = connect(&app, "?since=99").await;
    assert_eq!(hello(&mut ws).await, 5);
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "resync", "seq": 5 })
    );
    orders(&app, &id(&customer), 1).await;
    assert_eq!(next_json(&mut ws).await["seq"], 6);

    // Older than the retained log.
    exec(&app, "DELETE FROM events WHERE seq <= 3").await;
    let mut ws = connect(&app, "?since=1").await;
    assert_eq!(hello(&mut ws).await, 6);
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "resync", "seq": 6 })
    );
    orders(&app, &id(&customer), 1).await;
    assert_eq!(next_json(&mut ws).await["seq"], 7);

    // Still retained: replayed.
    let mut ws = connect(&app, "?since=3").await;
    assert_eq!(hello(&mut ws).await, 7);
    assert_eq!(seqs(&next_n(&mut ws, 4).await), [4, 5, 6, 7]);
}

#[tokio::test]
async fn resumes_reach_back_to_the_replay_window_and_pruning_keeps_the_history() {
    let mut app = spawn_app_with(|s| s.sms.enabled = false).await;
    let customer = app.create_customer(json!({})).await;
    for _ in 0..3 {
        app.create_order(&id(&customer), json!({})).await;
    }
    // Eight days old: past the replay window (seven) but well inside the audit retention.
    let day = 86_400_000;
    let now = chrono::Utc::now().timestamp_millis();
    exec(&app, &format!("UPDATE events SET at = {}", now - 8 * day)).await;
    app.restart(true).await;
    let counts = |db: sea_orm::DatabaseConnection| async move {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n, MAX(seq) AS m FROM events",
            ))
            .await
            .unwrap()
            .unwrap();
        (
            row.try_get::<i64>("", "n").unwrap(),
            row.try_get::<i64>("", "m").unwrap(),
        )
    };
    assert_eq!(
        counts(app.db.connect().await).await,
        (4, 4),
        "nothing pruned"
    );
    let mut ws = connect(&app, "?since=1").await;
    assert_eq!(hello(&mut ws).await, 4);
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "resync", "seq": 4 })
    );

    // Past the audit retention (365 days): pruned, but never the newest event.
    exec(&app, &format!("UPDATE events SET at = {}", now - 366 * day)).await;
    app.restart(true).await;
    assert_eq!(counts(app.db.connect().await).await, (1, 4));
    let mut ws = connect(&app, "?since=1").await;
    assert_eq!(hello(&mut ws).await, 4);
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "resync", "seq": 4 })
    );
    // A resume from the newest event on has nothing to replay, and goes live.
    let mut ws = connect(&app, "?since=4").await;
    assert_eq!(hello(&mut ws).await, 4);
    app.create_order(&id(&customer), json!({})).await;
    assert_eq!(seqs(&next_n(&mut ws, 1).await), [5]);
}

/// Captures the server's log lines (the servers run in this process).
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one log subscriber");
        buffer
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn credentials_are_required_before_the_upgrade_and_never_logged() {
    let log = captured_log();
    let app = spawn_live_app().await;
    for token in [None, Some("wrong-token-123")] {
        match try_connect(&app, "", token).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401);
                assert!(response.headers().contains_key("www-authenticate"));
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
    match try_connect(&app, "?access_token=wrong-token-123", None).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // Browsers cannot set headers on a WebSocket: the token may come in the query.
    let mut ws = try_connect(&app, &format!("?access_token={TOKEN}&since=0"), None)
        .await
        .expect("the access_token parameter is accepted");
    assert_eq!(hello(&mut ws).await, 0);
    ws.close(None).await.unwrap();
    app.await_subscribers(0).await;

    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains("request finished") && l.contains("/api/v1/ws")),
        "the upgrade is logged: {text}"
    );
    assert!(!text.contains(TOKEN), "a token was logged");
    assert!(!text.contains("wrong-token-123"), "a token was logged");
}

#[tokio::test]
async fn a_hundred_subscribers_each_get_all_fifty_events_in_order() {
    let app = spawn_live_app().await;
    let customer = app.create_customer(json!({})).await;
    let mut readers = Vec::new();
    for _ in 0..100 {
        let mut ws = connect(&app, "").await;
        assert_eq!(hello(&mut ws).await, 1);
        readers.push(tokio::spawn(async move { next_n(&mut ws, 50).await }));
    }
    app.await_subscribers(100).await;
    let created = orders(&app, &id(&customer), 50).await;
    for reader in readers {
        let frames = reader.await.unwrap();
        assert_consecutive(&frames, 2);
        for (frame, order) in frames.iter().zip(&created) {
            assert_eq!(frame["data"]["id"], order["id"]);
        }
    }
}

/// A client that stops reading holds nobody up and is closed with 1013 once its backlog is
/// over `live.max_buffered_frames`; it then resumes with `since`.
#[tokio::test]
async fn a_client_that_does_not_read_is_closed_with_1013_and_others_carry_on() {
    // Above the 32 events one round of concurrent writes may commit at once.
    a_slow_client_is_closed_with_1013(|live| live.max_buffered_frames = 128).await;
}

/// The same bound in bytes: a slow reader among fast ones is closed with 1013 once its
/// queued frames are over `live.max_buffered_bytes`, however few they are.
#[tokio::test]
async fn a_slow_client_over_the_byte_bound_is_closed_with_1013_and_others_miss_nothing() {
    a_slow_client_is_closed_with_1013(|live| {
        live.max_buffered_frames = 1_000_000;
        live.max_buffered_bytes = 32 * 1024;
    })
    .await;
}

async fn a_slow_client_is_closed_with_1013(bound: impl FnOnce(&mut duka::config::Live)) {
    // Pings far apart so that the stuck-connection watchdog does not end the slow client
    // first.
    let app = Arc::new(
        spawn_live_app_with(|s| {
            bound(&mut s.live);
            s.live.ping_interval_secs = 3600;
            s.live.idle_timeout_secs = 7200;
        })
        .await,
    );
    let customer = app.create_customer(json!({})).await;
    let cid = id(&customer);

    let mut slow = connect_small_window(&app, "").await;
    assert_eq!(hello(&mut slow).await, 1);
    let mut fast = connect(&app, "").await;
    assert_eq!(hello(&mut fast).await, 1);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let fast_reader = tokio::spawn(async move {
        let mut expected = 2;
        loop {
            match next(&mut fast).await {
                Next::Frame(frame) => {
                    assert_eq!(frame["seq"], expected, "the fast client missed nothing");
                    expected += 1;
                    let _ = seen_tx.send(expected - 1);
                }
                other => panic!("the fast client was closed: {other:?}"),
            }
        }
    });

    // Big events fill the slow client's socket sooner.
    let long = "x".repeat(180);
    let mut created = 0i64;
    while app.live.stats.slow_closed() == 0 {
        assert!(created < 30_000, "the slow client was never closed");
        let mut batch = Vec::new();
        for _ in 0..32 {
            let app = app.clone();
            let cid = cid.clone();
            let item = format!("{long} {}", marker());
            batch.push(tokio::spawn(async move {
                app.create_order(&cid, json!({ "item": item })).await
            }));
        }
        for task in batch {
            task.await.unwrap();
        }
        created += 32;
        // The fast client keeps up with every commit while the slow one stalls.
        let latest = 1 + created;
        loop {
            match seen_rx.recv().await {
                Some(seq) if seq == latest => break,
                Some(_) => {}
                None => panic!("the fast client stopped reading"),
            }
        }
    }
    app.await_subscribers(1).await;

    // Reading again, the slow client gets an unbroken prefix, then the 1013 close.
    let mut last = 1;
    let close = loop {
        match next(&mut slow).await {
            Next::Frame(frame) => {
                assert_eq!(frame["seq"], last + 1, "{frame}");
                last += 1;
            }
            Next::Closed(close) => break close,
            Next::Ended(e) => panic!("ended without a close frame after seq {last}: {e:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 1013, "{close:?}");
    assert!(last < 1 + created, "the slow client was behind");
    eprintln!("slow client closed after {last} of {} events", 1 + created);

    // It resumes where it stopped.
    let mut again = connect(&app, &format!("?since={last}")).await;
    let latest = hello(&mut again).await;
    assert_eq!(latest, 1 + created);
    let rest = next_n(&mut again, (latest - last) as usize).await;
    assert_consecutive(&rest, last + 1);
    fast_reader.abort();
}

/// Leaves a socket the `i`th of three ways: a polite close, a dropped socket, and a close
/// without waiting for the answer.
async fn leave(mut ws: Ws, i: usize) {
    match i % 3 {
        0 => ws.close(None).await.unwrap(),
        1 => drop(ws),
        _ => {
            ws.send(Message::Close(None)).await.unwrap();
            drop(ws);
        }
    }
}

/// `writers` tasks at once, each creating `each` orders for `cid`.
async fn orders_from_writers(app: &Arc<LiveApp>, cid: &str, writers: usize, each: usize) {
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (app, cid) = (app.clone(), cid.to_string());
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                app.create_order(&cid, json!({})).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn a_thousand_connects_and_disconnects_leave_no_subscriber_behind() {
    let app = spawn_live_app().await;
    let mut keep = connect(&app, "").await;
    hello(&mut keep).await;
    app.await_subscribers(1).await;
    for i in 0..1000 {
        let mut ws = connect(&app, "").await;
        hello(&mut ws).await;
        leave(ws, i).await;
    }
    app.await_subscribers(1).await;
    assert_eq!(app.live.stats.subscribers(), 1);
    // The one that stayed still works.
    let customer = app.create_customer(json!({})).await;
    assert_eq!(next_json(&mut keep).await["data"]["id"], customer["id"]);
}

#[tokio::test]
async fn concurrent_writers_still_give_every_subscriber_a_strictly_increasing_seq() {
    let app = Arc::new(spawn_live_app().await);
    let customer = app.create_customer(json!({})).await;
    let cid = id(&customer);
    let mut readers = Vec::new();
    for _ in 0..5 {
        let mut ws = connect(&app, "").await;
        assert_eq!(hello(&mut ws).await, 1);
        readers.push(tokio::spawn(async move { next_n(&mut ws, 160).await }));
    }
    orders_from_writers(&app, &cid, 16, 10).await;
    for reader in readers {
        let frames = reader.await.unwrap();
        assert_consecutive(&frames, 2);
        assert!(frames.iter().all(|f| f["type"] == "order.created"));
    }
}

/// Events committed while a `since` replay reads the log arrive once each, in order, after
/// the replayed ones.
#[tokio::test]
async fn events_committed_during_a_replay_arrive_exactly_once_in_order() {
    let app = Arc::new(spawn_live_app_with(|s| s.live.recent_events = 0).await);
    let customer = app.create_customer(json!({})).await;
    let cid = id(&customer);
    // More than one replay page (500), so the replay takes several queries.
    let mut batch = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        let cid = cid.clone();
        batch.push(tokio::spawn(async move { orders(&app, &cid, 150).await }));
    }
    for task in batch {
        task.await.unwrap();
    }
    let mut total: i64 = 1 + 8 * 150;

    for _ in 0..3 {
        let writer = {
            let app = app.clone();
            let cid = cid.clone();
            tokio::spawn(async move { orders(&app, &cid, 40).await })
        };
        let mut ws = connect(&app, "?since=0").await;
        let latest_at_hello = hello(&mut ws).await;
        writer.await.unwrap();
        assert!(latest_at_hello >= total && latest_at_hello <= total + 40);
        total += 40;
        let frames = next_n(&mut ws, total as usize).await;
        assert_consecutive(&frames, 1);
        // Nothing more: the next frame is the next new event.
        let extra = app.create_customer(json!({})).await;
        total += 1;
        let frame = next_json(&mut ws).await;
        assert_eq!(frame["seq"], total);
        assert_eq!(frame["data"]["id"], extra["id"]);
        ws.close(None).await.unwrap();
    }
}

/// With short intervals: a client that answers pings stays, a silent one is dropped.
#[tokio::test]
async fn a_silent_client_is_dropped_and_a_responsive_one_stays() {
    let app = spawn_live_app_with(|s| {
        s.live.ping_interval_secs = 1;
        s.live.idle_timeout_secs = 2;
    })
    .await;
    let mut silent = connect(&app, "").await;
    hello(&mut silent).await;
    let mut alive = connect(&app, "").await;
    hello(&mut alive).await;
    app.await_subscribers(2).await;

    // The responsive client reads (tungstenite answers pings while reading).
    let alive_reader = tokio::spawn(async move {
        let mut pings = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, alive.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("the responsive client was dropped: {other:?}"),
                Err(_) => break,
            }
        }
        (alive, pings)
    });
    let (alive, pings) = alive_reader.await.unwrap();
    assert!(pings >= 2, "the server pings ({pings})");
    app.await_subscribers(1).await;
    drop(alive);

    // The silent one was closed by the server (its pings went unanswered).
    assert_eq!(close_code_unanswered(silent).await, Some(1001));
}

/// `duka watch` prints one line per event, from `--since`, with the token from the
/// environment; a bad token stops it with an error instead of retrying forever.
#[tokio::test]
async fn duka_watch_prints_one_line_per_event() {
    use tokio::io::AsyncBufReadExt;
    let app = spawn_live_app().await;
    let customer = app.create_customer(json!({})).await;
    let order = app.create_order(&id(&customer), json!({})).await;

    let config = app.data_dir.path().join("watch.toml");
    std::fs::write(&config, "").unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_duka"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "watch",
            "--since",
            "0",
        ])
        .args(["--url", &app.url, "--types", "order.created,order.deleted"])
        .env("DUKA_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("duka watch starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("duka watch is still running")
    };
    assert_eq!(next_line().await, "connected (latest seq 2)");
    let line = next_line().await;
    assert!(line.contains("order.created"), "{line}");
    assert!(
        line.contains(order["order_number"].as_str().unwrap()),
        "{line}"
    );
    app.delete(&format!("/api/v1/orders/{}", id(&order))).await;
    let line = next_line().await;
    assert!(
        line.contains("order.deleted") && line.contains(&id(&order)),
        "{line}"
    );
    assert!(line.trim_start().starts_with('3'), "{line}");
    child.kill().await.unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_duka"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "watch",
            "--url",
            &app.url,
        ])
        .args(["--token", "wrong-token-123"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("401"), "{stderr}");
}

/// A graceful stop (SIGTERM in the binary) closes every WebSocket with 1001 at once, so the
/// server need not wait out its shutdown timeout; the client resumes with `since` later.
#[tokio::test]
async fn a_graceful_stop_closes_websockets_with_1001() {
    let app = spawn_live_app().await;
    let mut ws = connect(&app, "").await;
    hello(&mut ws).await;
    app.await_subscribers(1).await;
    let started = std::time::Instant::now();
    let stopping = {
        let handle = app.app.server_handle().expect("a running server");
        tokio::spawn(handle.stop(true))
    };
    let close = match next(&mut ws).await {
        Next::Closed(close) => close.expect("a close frame with a code"),
        other => panic!("expected a close frame, got {other:?}"),
    };
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
    stopping.await.unwrap();
    // Well under the 10 s shutdown timeout that an open WebSocket would otherwise hold it.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// How many of the process's descriptors are the server's end of the TCP connection whose
/// client side has local port `client_port` (from /proc/PID/net/tcp and /proc/PID/fd).
fn server_descriptors_of(pid: u32, client_port: u16) -> usize {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let remote_port = cols[2]
                .rsplit(':')
                .next()
                .map(|p| u16::from_str_radix(p, 16));
            if remote_port == Some(Ok(client_port)) {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        .count()
}

fn process_addr(duka: &crate::support::process::DukaProcess) -> std::net::SocketAddr {
    duka.url
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address")
}

async fn process_post(
    duka: &crate::support::process::DukaProcess,
    path: &str,
    body: Value,
) -> Value {
    let r = duka
        .client
        .post(format!("{}{path}", duka.url))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 201, "POST {path}");
    r.json().await.unwrap()
}

/// A client that stops reading entirely: its session cannot run, so its shard cuts the
/// connection, and the one descriptor the server holds for it (no duplicate) is released.
#[tokio::test]
async fn a_stalled_client_is_cut_and_its_only_descriptor_released() {
    let duka = crate::support::process::spawn_duka(
        "[http]\nworkers = 2\n[http.rate_limit]\nenabled = false\n\
         [live]\nping_interval_secs = 1\nidle_timeout_secs = 4\n\
         max_buffered_frames = 1000000\nmax_buffered_bytes = 1073741824\n",
        "",
    )
    .await;
    let addr = process_addr(&duka);
    let customer = process_post(
        &duka,
        "/api/v1/customers",
        json!({"name": "Stalled", "phone": unique_phone()}),
    )
    .await;
    let mut stalled = connect_small_window_at(addr, "").await;
    hello(&mut stalled).await;
    let port = stalled.get_ref().get_ref().local_addr().unwrap().port();
    assert_eq!(
        server_descriptors_of(duka.pid, port),
        1,
        "one descriptor per WebSocket"
    );

    // Far more than the socket buffers hold (the server fixes its send buffer at 64 KiB),
    // quickly, while the client reads nothing.
    let long = "x".repeat(190);
    let mut posts = Vec::new();
    for _ in 0..16 {
        let (client, url, cid, long) = (
            duka.client.clone(),
            duka.url.clone(),
            id(&customer),
            long.clone(),
        );
        posts.push(tokio::spawn(async move {
            for _ in 0..60 {
                let r = client
                    .post(format!("{url}/api/v1/orders"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"customer_id": cid, "item": long, "amount": "1.00"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        }));
    }
    for post in posts {
        post.await.unwrap();
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server_descriptors_of(duka.pid, port) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled connection still holds its descriptor: {:?}",
            duka.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    duka.await_metric("duka_live_connections_cut_total", 1.0)
        .await;
    assert!(
        duka.output()
            .iter()
            .any(|l| l.contains("live client stuck; dropping its connection")),
        "{:?}",
        duka.output()
    );
    duka.await_metric("duka_live_subscribers", 0.0).await;
    duka.await_metric("duka_websocket_connections", 0.0).await;
    drop(stalled);
}

/// After 1,000 connects and disconnects over two workers' shards, the shards' subscriber
/// count, its gauge and the connection gauge all agree on the one socket that stayed.
#[tokio::test]
async fn subscriber_counts_and_the_gauge_agree_after_a_thousand_connects() {
    let duka = crate::support::process::spawn_duka(
        "[http]\nworkers = 2\n[http.rate_limit]\nenabled = false\n",
        "",
    )
    .await;
    let addr = process_addr(&duka);
    let connect = || async move {
        let (ws, _) = tokio_tungstenite::connect_async(request_at(addr, "", Some(TOKEN)))
            .await
            .expect("WebSocket connect");
        ws
    };
    let mut keep = connect().await;
    hello(&mut keep).await;
    for i in 0..1000 {
        let mut ws = connect().await;
        hello(&mut ws).await;
        leave(ws, i).await;
    }
    duka.await_metric("duka_live_subscribers", 1.0).await;
    duka.await_metric("duka_websocket_connections", 1.0).await;
    // The one that stayed still works.
    let customer = process_post(
        &duka,
        "/api/v1/customers",
        json!({"name": "Stayed", "phone": unique_phone()}),
    )
    .await;
    assert_eq!(next_json(&mut keep).await["data"]["id"], customer["id"]);
}

/// With four workers (four shards), sockets spread over them all see the identical,
/// gap-free sequence while sixteen writers publish at once.
#[tokio::test]
async fn shards_deliver_the_same_sequence_in_order_under_concurrent_writers() {
    let app = Arc::new(spawn_live_app_with(|s| s.http.workers = 4).await);
    let customer = app.create_customer(json!({})).await;
    let cid = id(&customer);
    let mut readers = Vec::new();
    for _ in 0..24 {
        let mut ws = connect(&app, "").await;
        assert_eq!(hello(&mut ws).await, 1);
        readers.push(tokio::spawn(async move { next_n(&mut ws, 320).await }));
    }
    app.await_subscribers(24).await;
    orders_from_writers(&app, &cid, 16, 20).await;
    let mut first: Option<Vec<Value>> = None;
    for reader in readers {
        let frames = reader.await.unwrap();
        assert_consecutive(&frames, 2);
        let ids: Vec<Value> = frames.iter().map(|f| f["data"]["id"].clone()).collect();
        match &first {
            None => first = Some(ids),
            Some(ids0) => assert_eq!(&ids, ids0, "every shard sends the same events"),
        }
    }
}

/// Frames and responses leave without waiting on Nagle's algorithm: the server side of an
/// accepted connection has TCP_NODELAY set (actix would leave the OS default: Nagle on).
#[tokio::test]
async fn accepted_connections_send_without_delay() {
    use std::io::{Read, Write};
    let app = spawn_app().await;
    let mut client = std::net::TcpStream::connect(app.addr).unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: duka\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    client.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let server_side = duka::sys::socket_of(app.addr, client.local_addr().unwrap())
        .expect("the server's socket of this connection");
    let nodelay = duka::sys::int_option(server_side, libc::IPPROTO_TCP, libc::TCP_NODELAY);
    assert_eq!(nodelay.map(|v| v != 0), Some(true));
}
