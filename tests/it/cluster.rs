//! Several instances on one PostgreSQL database (always PostgreSQL, whatever the run is
//! on): every instance's subscribers see every event of the deployment, in seq order, with
//! no gap or duplicate; a client resumes on another instance; a lost listener connection
//! only delays events.

use crate::support::live::{Ws, connect, hello, next_json};
use crate::support::process::metric_value;
use crate::support::*;
use duka::config::Settings;
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SESSION_KEY: &str = "cluster-session-key-0123456789abcdef0123456789";

fn peer_settings(s: &mut Settings) {
    s.sms.enabled = false;
    s.auth.session_key = SESSION_KEY.into();
}

/// `n` instances on one fresh PostgreSQL database.
async fn cluster(n: usize) -> Vec<TestApp> {
    let first = spawn_app_on(TestDb::postgres(), peer_settings).await;
    let mut apps = Vec::with_capacity(n);
    for _ in 1..n {
        apps.push(spawn_app_on(first.db.share(), peer_settings).await);
    }
    // The owner of the database last: it is dropped after the others.
    apps.insert(0, first);
    apps
}

/// Event frames (no hello/resync) until `count` of them arrived, within 20 s.
async fn events(ws: &mut Ws, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, next_json(ws))
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived", out.len()));
        if frame["seq"].is_i64() && frame["type"] != "hello" && frame["type"] != "resync" {
            out.push(frame);
        }
    }
    out
}

fn assert_gap_free(frames: &[Value], first: i64) {
    let seqs: Vec<i64> = frames.iter().map(|f| f["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (first..first + seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "events out of order, missing or repeated");
}

#[tokio::test]
async fn every_instance_streams_the_whole_deployment_in_seq_order() {
    let apps = cluster(3).await;
    let mut sockets = Vec::new();
    for app in &apps {
        let mut ws = connect(app, "").await;
        assert_eq!(hello(&mut ws).await, 0);
        sockets.push(ws);
    }
    // Orders taken on every instance at once.
    let per_instance = 15;
    let work = apps.iter().map(|app| async move {
        let customer = app.create_customer(json!({})).await;
        let id = customer["id"].as_str().unwrap().to_string();
        for _ in 0..per_instance {
            app.create_order(&id, json!({})).await;
        }
    });
    join_all(work).await;
    let total = apps.len() * (per_instance + 1);
    let mut streams = Vec::new();
    for ws in &mut sockets {
        let frames = events(ws, total).await;
        assert_gap_free(&frames, 1);
        streams.push(frames);
    }
    // The identical stream on every instance, actors and data included.
    for stream in &streams[1..] {
        assert_eq!(stream, &streams[0]);
    }
    assert_eq!(
        streams[0]
            .iter()
            .filter(|f| f["type"] == "order.created")
            .count(),
        apps.len() * per_instance
    );

    // A client resumes on another instance from what it saw on the first, and instances
    // answer `hello` with the deployment's seq.
    let seen = streams[0][total / 2]["seq"].as_i64().unwrap();
    let mut resumed = connect(&apps[2], &format!("?since={seen}")).await;
    assert_eq!(hello(&mut resumed).await, total as i64);
    let rest = events(&mut resumed, total - seen as usize).await;
    assert_gap_free(&rest, seen + 1);
    assert_eq!(&rest[..], &streams[0][seen as usize..]);
}

#[tokio::test]
async fn a_resume_ahead_of_this_instance_is_not_a_resync() {
    let apps = cluster(2).await;
    let mut on_b = connect(&apps[1], "").await;
    hello(&mut on_b).await;
    let customer = apps[0].create_customer(json!({})).await;
    for _ in 0..5 {
        apps[0]
            .create_order(customer["id"].as_str().unwrap(), json!({}))
            .await;
    }
    // The customer and five orders.
    let latest = 6;
    // At once, with the seq just committed on A: B may not have read it yet, but it is in
    // the deployment's log, so B goes on from there (no resync, nothing replayed).
    let mut ws = connect(&apps[1], &format!("?since={latest}")).await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "hello", "{first}");
    assert!(first["seq"].as_i64().unwrap() >= latest, "{first}");
    apps[0].create_customer(json!({})).await;
    let next = events(&mut ws, 1).await;
    assert_eq!(next[0]["seq"], latest + 1, "{}", next[0]);
    // A since beyond the deployment's log is still a resync.
    let mut ws = connect(&apps[1], &format!("?since={}", latest + 100)).await;
    hello(&mut ws).await;
    assert_eq!(next_json(&mut ws).await["type"], "resync");
    events(&mut on_b, latest as usize + 1).await;
}

#[tokio::test]
async fn a_lost_listener_connection_only_delays_events() {
    let apps = cluster(2).await;
    let mut on_b = connect(&apps[1], "").await;
    hello(&mut on_b).await;
    let customer = apps[0].create_customer(json!({})).await;
    events(&mut on_b, 1).await;
    // Cut every LISTEN connection of the database (B's among them).
    let db = apps[0].db.connect().await;
    let name = apps[0].db.url().rsplit('/').next().unwrap().to_string();
    let cut = scalar(
        &db,
        &format!(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{name}' AND query ILIKE 'LISTEN%'"
        ),
    )
    .await;
    assert!(cut >= 2, "no listener connections found ({cut})");
    for _ in 0..5 {
        apps[0]
            .create_order(customer["id"].as_str().unwrap(), json!({}))
            .await;
    }
    let frames = events(&mut on_b, 5).await;
    assert_gap_free(&frames, 2);
    // The reconnect is counted.
    let metrics = apps[1]
        .client
        .get(format!("{}/metrics", apps[1].url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_value(&metrics, "duka_live_listener_reconnects_total") >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn the_others_carry_on_when_one_instance_goes_down() {
    let mut apps = cluster(3).await;
    let mut watchers = Vec::new();
    for app in &apps[1..] {
        let mut ws = connect(app, "").await;
        hello(&mut ws).await;
        watchers.push(ws);
    }
    let customer = apps[1].create_customer(json!({})).await;
    let id = customer["id"].as_str().unwrap().to_string();
    // Orders on the instance that goes down, then on the others while it is gone.
    for _ in 0..5 {
        apps[0].create_order(&id, json!({})).await;
    }
    apps[0].stop(false).await;
    let work = apps[1..].iter().map(|app| {
        let id = id.clone();
        async move {
            for _ in 0..10 {
                app.create_order(&id, json!({})).await;
            }
        }
    });
    join_all(work).await;
    let mut streams = Vec::new();
    for ws in &mut watchers {
        let frames = events(ws, 26).await;
        assert_gap_free(&frames, 1);
        streams.push(frames);
    }
    assert_eq!(streams[0], streams[1]);
    // It comes back and serves the same log, resuming a client from where it left.
    apps[0].restart(false).await;
    let mut back = connect(&apps[0], "?since=20").await;
    assert_eq!(hello(&mut back).await, 26);
    let rest = events(&mut back, 6).await;
    assert_eq!(&rest[..], &streams[0][20..]);
}
