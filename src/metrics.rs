//! Prometheus metrics: one process-wide recorder (the `metrics` facade allows one per
//! process, and tests run several apps in one process, so it is installed once and every app
//! renders the same handle), plus one named function per metric so that names and labels
//! live in this file only.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const HTTP_REQUESTS: &str = "duka_http_requests_total";
pub const HTTP_DURATION: &str = "duka_http_request_duration_seconds";
pub const ORDERS_CREATED: &str = "duka_orders_created_total";
pub const EVENTS_PUBLISHED: &str = "duka_events_published_total";
pub const SMS: &str = "duka_sms_total";
pub const SMS_QUEUE_DEPTH: &str = "duka_sms_queue_depth";
pub const SMS_SENDER: &str = "duka_sms_sender";
pub const SMS_LOST_LEASE: &str = "duka_sms_lost_lease_total";
pub const WS_CONNECTIONS: &str = "duka_websocket_connections";
pub const LIVE_FEED_LAG: &str = "duka_live_feed_lag_seconds";
pub const LIVE_HOLES_FILLED: &str = "duka_live_holes_filled_total";
pub const LIVE_LISTENER_RECONNECTS: &str = "duka_live_listener_reconnects_total";
pub const LIVE_SUBSCRIBERS: &str = "duka_live_subscribers";
pub const LIVE_SLOW_CLOSED: &str = "duka_live_slow_closed_total";
pub const LIVE_CUT: &str = "duka_live_connections_cut_total";

/// Latency buckets in seconds: from a cached read to a request stuck behind a lock timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            Err(e) => {
                // Another recorder owns the facade (a host program): keep serving an
                // empty but valid page rather than refusing to start.
                tracing::warn!(error = %e, "metrics recorder not installed");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        describe();
        let upkept = handle.clone();
        // Histograms buffer samples until upkeep drains them; scrapes may be rare.
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkept.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics upkeep thread not started");
        }
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by method, route pattern and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by method, route pattern and status"
    );
    describe_counter!(ORDERS_CREATED, "Orders created (committed)");
    describe_counter!(EVENTS_PUBLISHED, "Events committed and published, by type");
    describe_counter!(SMS, "SMS notifications by resulting status");
    describe_gauge!(SMS_QUEUE_DEPTH, "SMS notifications waiting to be sent");
    describe_gauge!(
        SMS_SENDER,
        "1 while this instance holds the SMS sender lease (one instance sends at a time), else 0"
    );
    describe_counter!(
        SMS_LOST_LEASE,
        "SMS send outcomes not recorded because the message no longer carried the claim they \
         were made under (a newer sender took it over, or the message was deleted)"
    );
    describe_gauge!(WS_CONNECTIONS, "Open WebSocket connections");
    describe_gauge!(
        LIVE_FEED_LAG,
        Unit::Seconds,
        "How long this instance's live feed has been behind the database's event log"
    );
    describe_counter!(
        LIVE_HOLES_FILLED,
        "Events the live feed read from the log (committed by another instance, or missed)"
    );
    describe_counter!(
        LIVE_LISTENER_RECONNECTS,
        "Times the live feed's LISTEN connection was lost and made again"
    );
    describe_gauge!(
        LIVE_SUBSCRIBERS,
        "WebSocket sessions receiving live events (summed over the HTTP workers' shards)"
    );
    describe_counter!(
        LIVE_SLOW_CLOSED,
        "WebSocket clients closed with 1013 for falling behind (live.max_buffered_frames or \
         live.max_buffered_bytes)"
    );
    describe_counter!(
        LIVE_CUT,
        "WebSocket connections cut under a session that could not run (its client stopped \
         reading) or did not close in time"
    );
    // Series without labels are shown from the start (at 0), not from their first change.
    counter!(ORDERS_CREATED).increment(0);
    gauge!(SMS_QUEUE_DEPTH).increment(0.0);
    gauge!(SMS_SENDER).increment(0.0);
    counter!(SMS_LOST_LEASE).increment(0);
    gauge!(WS_CONNECTIONS).increment(0.0);
    gauge!(LIVE_FEED_LAG).increment(0.0);
    counter!(LIVE_HOLES_FILLED).increment(0);
    counter!(LIVE_LISTENER_RECONNECTS).increment(0);
    gauge!(LIVE_SUBSCRIBERS).increment(0.0);
    counter!(LIVE_SLOW_CLOSED).increment(0);
    counter!(LIVE_CUT).increment(0);
}

/// Prometheus text exposition of every metric.
pub fn render() -> String {
    handle().render()
}

/// One finished HTTP request; `route` is the matched pattern or `unmatched` (never the raw
/// path, whose ids would make one series per resource). Every label comes from a closed set,
/// so that no request can add a series: any token is a valid HTTP method, so unknown ones
/// are `other`.
pub fn http_request(method: &actix_web::http::Method, route: &str, status: u16, latency: Duration) {
    let labels = [
        ("method", method_label(method).to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(latency.as_secs_f64());
}

fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub fn orders_created(n: u64) {
    counter!(ORDERS_CREATED).increment(n);
}

/// Committed events of one type (`order.created`...).
pub fn events_published(kind: &str, n: u64) {
    counter!(EVENTS_PUBLISHED, "type" => kind.to_string()).increment(n);
}

/// Committed SMS status changes (`sent`, `delivered`, `failed`...); `status` comes from a
/// notification row, anything unexpected is counted as `other`.
pub fn sms_status(status: &str, n: u64) {
    let status = crate::domain::notification::NotificationStatus::parse(status)
        .map(|s| s.as_str())
        .unwrap_or("other");
    counter!(SMS, "status" => status).increment(n);
}

/// Notifications currently waiting to be sent.
pub fn sms_queue_depth(depth: u64) {
    gauge!(SMS_QUEUE_DEPTH).set(depth as f64);
}

/// Whether this instance is the SMS sender now.
pub fn sms_sender(holds: bool) {
    gauge!(SMS_SENDER).set(if holds { 1.0 } else { 0.0 });
}

/// Send outcomes refused because their message's claim had moved on.
pub fn sms_lost_lease(n: u64) {
    counter!(SMS_LOST_LEASE).increment(n);
}

/// How often the SMS queue depth is read from the database.
pub const QUEUE_DEPTH_EVERY: Duration = Duration::from_secs(5);

/// Keeps the SMS queue depth gauge current from a count of `queued` rows (the database is
/// the queue, whichever instance sends). Runs until the actix system stops.
pub async fn track_sms_queue(db: sea_orm::DatabaseConnection) {
    let mut tick = tokio::time::interval(QUEUE_DEPTH_EVERY);
    loop {
        tick.tick().await;
        match crate::store::gauges::queued_notifications(&db).await {
            Ok(depth) => sms_queue_depth(depth),
            Err(e) => tracing::debug!(error = %e, "could not read the SMS queue depth"),
        }
    }
}

pub fn websocket_opened() {
    gauge!(WS_CONNECTIONS).increment(1.0);
}

pub fn websocket_closed() {
    gauge!(WS_CONNECTIONS).decrement(1.0);
}

pub fn live_feed_lag(lag: Duration) {
    gauge!(LIVE_FEED_LAG).set(lag.as_secs_f64());
}

pub fn live_holes_filled(n: u64) {
    counter!(LIVE_HOLES_FILLED).increment(n);
}

pub fn live_listener_reconnected() {
    counter!(LIVE_LISTENER_RECONNECTS).increment(1);
}

/// Sessions joined (positive) or left (negative) one shard.
pub fn live_subscribers_changed(delta: f64) {
    gauge!(LIVE_SUBSCRIBERS).increment(delta);
}

pub fn live_slow_closed() {
    counter!(LIVE_SLOW_CLOSED).increment(1);
}

pub fn live_connection_cut() {
    counter!(LIVE_CUT).increment(1);
}
