//! duka's load client (driven by bench/run). Each subcommand prints one JSON object on
//! stdout; progress goes to stderr. Every loop is bounded in time and count, and every
//! address is loopback.
//!
//!   loadgen setup   --url U --token T --customers N
//!   loadgen create  --url U --token T --customers N --concurrency C --duration S [--total M]
//!   loadgen read    --url U --token T --path P --concurrency C --duration S   (P may hold {id})
//!   loadgen fanout  --url U --token T --customers N --subscribers N --duration S
//!                   [--rates 5,20,50,100] [--closed 16] [--pid PID]   (src/fanout.rs)
//!   loadgen fanout-limit --subscribers N --duration S   (against `loadgen raw-server`)
//!   loadgen cross   --url A --watch B --token T --customers N --rate R --duration S
//!                   orders POSTed to instance A, received live on instance B
//!   loadgen sqlite-direct --db FILE --customers N --concurrency C --duration S [--per-tx K]

mod fanout;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Longest any single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard cap on any run, whatever the arguments say.
const MAX_DURATION_S: f64 = 600.0;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Result<Self, AnyError> {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {k}"))?;
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_string(), v.clone());
        }
        Ok(Self(map))
    }
    fn str(&self, k: &str) -> Result<String, AnyError> {
        self.0
            .get(k)
            .cloned()
            .ok_or_else(|| format!("--{k} is required").into())
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> Result<T, AnyError> {
        match self.0.get(k) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{k}: bad number {v}").into()),
            None => default.ok_or_else(|| format!("--{k} is required").into()),
        }
    }
    fn duration(&self) -> Result<Duration, AnyError> {
        let s: f64 = self.num("duration", None)?;
        if !(s > 0.0 && s <= MAX_DURATION_S) {
            return Err(format!("--duration must be in (0, {MAX_DURATION_S}]").into());
        }
        Ok(Duration::from_secs_f64(s))
    }
}

fn loopback_only(url: &str) -> Result<(), AnyError> {
    let ok = url.starts_with("http://127.") || url.starts_with("http://localhost");
    if !ok {
        return Err(format!("refusing to send traffic to {url}: loopback only").into());
    }
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"p50_ms": null, "p99_ms": null, "p999_ms": null, "max_ms": null});
    }
    json!({
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn client(concurrency: usize) -> Result<reqwest::Client, AnyError> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1) * 2)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()?)
}

fn code(i: u64) -> String {
    format!("BENCH-{i:06}")
}

fn order_body(k: u64, customers: u64) -> Value {
    json!({
        "customer_code": code(1 + k % customers),
        "item": format!("bench #{k}"),
        "quantity": 1 + (k % 5),
        "amount": format!("{}.{:02}", 100 + k % 9000, k % 100),
    })
}

/// What a pool of workers counted.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    samples: Vec<String>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.samples.len() < 5 {
            self.samples.push(what);
        }
    }
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        for s in other.samples {
            if self.samples.len() < 5 {
                self.samples.push(s);
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = raw.split_first() else {
        eprintln!(
            "usage: loadgen setup|create|read|fanout|fanout-limit|raw-server|cross|sqlite-direct --key value ..."
        );
        std::process::exit(2);
    };
    let result = match Args::parse(rest) {
        Ok(args) => match cmd.as_str() {
            "setup" => setup(&args).await,
            "create" => create(&args).await,
            "read" => read(&args).await,
            "fanout" => fanout::fanout(&args).await,
            "fanout-limit" => fanout::fanout_limit(&args).await,
            "raw-server" => fanout::raw_server(&args).await,
            "cross" => cross(&args).await,
            "sqlite-direct" => sqlite_direct(&args).await,
            other => Err(format!("unknown command {other}").into()),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("loadgen {cmd}: {e}");
            std::process::exit(1);
        }
    }
}

/// Creates customers BENCH-000001..N (an existing one, 409, is fine).
async fn setup(a: &Args) -> Result<Value, AnyError> {
    let url = a.str("url")?;
    loopback_only(&url)?;
    let token = a.str("token")?;
    let n: u64 = a.num("customers", None)?;
    let http = client(16)?;
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, url, token, next) = (http.clone(), url.clone(), token.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > n {
                    break;
                }
                let body = json!({
                    "name": format!("Bench Customer {i}"),
                    "code": code(i),
                    "phone": format!("+25471{:07}", i),
                });
                match http
                    .post(format!("{url}/api/v1/customers"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 409 => {
                        tally.ok += 1
                    }
                    Ok(r) => {
                        let s = r.status();
                        let t = r.text().await.unwrap_or_default();
                        tally.error(format!("{s}: {}", &t[..t.len().min(300)]));
                    }
                    Err(e) => tally.error(e.to_string()),
                }
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        tally.merge(t.await?);
    }
    if tally.errors > 0 {
        return Err(format!("customer setup failed: {:?}", tally.samples).into());
    }
    Ok(json!({"kind": "setup", "customers": tally.ok}))
}

/// Closed loop: C workers each POST an order, wait for the answer, repeat.
async fn create(a: &Args) -> Result<Value, AnyError> {
    let url = a.str("url")?;
    loopback_only(&url)?;
    let token = a.str("token")?;
    let customers: u64 = a.num("customers", None)?;
    let c: usize = a.num("concurrency", None)?;
    let duration = a.duration()?;
    let total: u64 = a.num("total", Some(u64::MAX))?;
    let offset: u64 = a.num("offset", Some(0))?;
    let http = client(c)?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (http, url, token, next) = (http.clone(), url.clone(), token.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let body = order_body(offset + k, customers);
                let t0 = Instant::now();
                let r = http
                    .post(format!("{url}/api/v1/orders"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                let outcome = match r {
                    Ok(r) if r.status().as_u16() == 201 => {
                        r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => {
                        let s = r.status();
                        let t = r.text().await.unwrap_or_default();
                        Err(format!("{s}: {}", &t[..t.len().min(300)]))
                    }
                    Err(e) => Err(e.to_string()),
                };
                let us = t0.elapsed().as_micros() as u64;
                match outcome {
                    Ok(()) => {
                        tally.ok += 1;
                        h.saturating_record(us.max(1));
                    }
                    Err(e) => tally.error(e),
                }
            }
            (h, tally)
        }));
    }
    let mut h = histogram();
    let mut tally = Tally::default();
    for t in tasks {
        let (wh, wt) = t.await?;
        h.add(&wh)?;
        tally.merge(wt);
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = json!({
        "kind": "create", "concurrency": c, "seconds": secs,
        "ok": tally.ok, "errors": tally.errors, "error_samples": tally.samples,
        "rps": (tally.ok as f64 / secs).round(),
    });
    merge(&mut out, summary(&h));
    Ok(out)
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// Closed loop GETs of one path; `{id}` cycles through the ids of the first 100 orders.
async fn read(a: &Args) -> Result<Value, AnyError> {
    let url = a.str("url")?;
    loopback_only(&url)?;
    let token = a.str("token")?;
    let path = a.str("path")?;
    let c: usize = a.num("concurrency", None)?;
    let duration = a.duration()?;
    let http = client(c)?;
    let ids: Arc<Vec<String>> = Arc::new(if path.contains("{id}") {
        let page: Value = http
            .get(format!("{url}/api/v1/orders?limit=100"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let ids: Vec<String> = page["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|o| o["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() {
            return Err("no orders to read".into());
        }
        ids
    } else {
        Vec::new()
    });
    let start = Instant::now();
    let deadline = start + duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (http, url, token, path, ids, next) = (
            http.clone(),
            url.clone(),
            token.clone(),
            path.clone(),
            ids.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut tally = Tally::default();
            let mut bytes = 0u64;
            while Instant::now() < deadline {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                let p = if ids.is_empty() {
                    path.clone()
                } else {
                    path.replace("{id}", &ids[k % ids.len()])
                };
                let t0 = Instant::now();
                let outcome = match http
                    .get(format!("{url}{p}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 200 => r
                        .bytes()
                        .await
                        .map(|b| b.len() as u64)
                        .map_err(|e| e.to_string()),
                    Ok(r) => Err(format!("{}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                let us = t0.elapsed().as_micros() as u64;
                match outcome {
                    Ok(n) => {
                        bytes += n;
                        tally.ok += 1;
                        h.saturating_record(us.max(1));
                    }
                    Err(e) => tally.error(e),
                }
            }
            (h, tally, bytes)
        }));
    }
    let mut h = histogram();
    let mut tally = Tally::default();
    let mut bytes = 0;
    for t in tasks {
        let (wh, wt, b) = t.await?;
        h.add(&wh)?;
        tally.merge(wt);
        bytes += b;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = json!({
        "kind": "read", "path": path, "concurrency": c, "seconds": secs,
        "ok": tally.ok, "errors": tally.errors, "error_samples": tally.samples,
        "rps": (tally.ok as f64 / secs).round(),
        "mean_body_bytes": bytes.checked_div(tally.ok).unwrap_or(0),
    });
    merge(&mut out, summary(&h));
    Ok(out)
}

fn field_i64(text: &str, key: &str) -> Option<i64> {
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Cross-instance delivery: one subscriber on instance B (`--watch`), orders POSTed to
/// instance A (`--url`) at a steady rate; for every order, the time from its POST being sent
/// (and from A's 201) to its `order.created` frame arriving on B. The frames must also come
/// in seq order with no gap.
async fn cross(a: &Args) -> Result<Value, AnyError> {
    let url = a.str("url")?;
    let watch = a.str("watch")?;
    loopback_only(&url)?;
    loopback_only(&watch)?;
    let token = a.str("token")?;
    let customers: u64 = a.num("customers", None)?;
    let rate: f64 = a.num("rate", None)?;
    let duration = a.duration()?;
    let offset: u64 = a.num("offset", Some(0))?;
    let server: SocketAddr = watch
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|_| "--watch must be http://IP:PORT")?;
    let planned = (rate * duration.as_secs_f64()).ceil() as u64;
    let (mut ws, hello) = fanout::subscribe(server, Ipv4Addr::LOCALHOST, &token).await?;
    let epoch = Instant::now();
    let sent_us: Arc<Vec<AtomicU64>> = Arc::new((0..planned).map(|_| AtomicU64::new(0)).collect());
    let acked_us: Arc<Vec<AtomicU64>> = Arc::new((0..planned).map(|_| AtomicU64::new(0)).collect());
    let reader = {
        let (sent_us, acked_us) = (sent_us.clone(), acked_us.clone());
        tokio::spawn(async move {
            let (mut from_send, mut from_ack) = (histogram(), histogram());
            let (mut seen, mut gaps, mut last) = (0u64, 0u64, hello);
            let deadline = Instant::now() + Duration::from_secs_f64(duration.as_secs_f64() + 10.0);
            while seen < planned && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some(Ok(msg))) = tokio::time::timeout(left, ws.next()).await else {
                    break;
                };
                let Ok(text) = msg.into_text() else { continue };
                let Some(seq) = field_i64(&text, "\"seq\":") else {
                    continue;
                };
                if seq != last + 1 {
                    gaps += 1;
                }
                last = seq;
                if !text.contains("\"order.created\"") {
                    continue;
                }
                let Some(k) = field_i64(&text, "\"item\":\"bench #") else {
                    continue;
                };
                let Some(i) = (k as u64).checked_sub(offset).filter(|i| *i < planned) else {
                    continue;
                };
                let now = epoch.elapsed().as_micros() as u64;
                let sent = sent_us[i as usize].load(Ordering::Relaxed);
                from_send.saturating_record(now.saturating_sub(sent).max(1));
                let acked = acked_us[i as usize].load(Ordering::Relaxed);
                if acked > 0 {
                    from_ack.saturating_record(now.saturating_sub(acked).max(1));
                }
                seen += 1;
            }
            (from_send, from_ack, seen, gaps)
        })
    };
    let http = client(8)?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..planned {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (http, url, token, sent_us, acked_us) = (
            http.clone(),
            url.clone(),
            token.clone(),
            sent_us.clone(),
            acked_us.clone(),
        );
        tasks.push(tokio::spawn(async move {
            sent_us[i as usize].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            let r = http
                .post(format!("{url}/api/v1/orders"))
                .bearer_auth(&token)
                .json(&order_body(offset + i, customers))
                .send()
                .await;
            let ok = matches!(&r, Ok(r) if r.status().as_u16() == 201);
            if ok {
                acked_us[i as usize].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            ok
        }));
    }
    let mut errors = 0u64;
    for t in tasks {
        if !t.await? {
            errors += 1;
        }
    }
    let (from_send, from_ack, seen, gaps) = reader.await?;
    let mut out = json!({
        "kind": "cross", "planned": planned, "errors": errors, "received": seen,
        "missed": planned.saturating_sub(errors).saturating_sub(seen), "gaps": gaps,
        "rate": rate,
    });
    merge(
        &mut out,
        json!({"from_send": summary(&from_send), "from_201": summary(&from_ack)}),
    );
    Ok(out)
}

/// A UUID v7 as 16 bytes (48-bit ms time, version and variant bits, the rest random).
fn uuid7(rng: &mut u64) -> [u8; 16] {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    for chunk in b[6..].chunks_mut(8) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let r = rng.to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// An event payload the size of duka's order.created data.
fn event_data(order_number: &str, k: u64) -> String {
    json!({
        "id": "019aa9e0-0000-7000-8000-000000000000", "order_number": order_number,
        "customer": {"id": "019aa9e0-0000-7000-8000-000000000001", "name": "Bench Customer",
            "code": "BENCH-000001", "phone": "+254710000001"},
        "item": format!("bench #{k}"), "quantity": 1, "amount": "1200.00", "currency": "KES",
        "status": "pending",
        "notification": {"id": "019aa9e0-0000-7000-8000-000000000002", "status": "queued",
            "updated_at": "2026-11-22T02:00:00.000Z"},
        "created_at": "2026-11-22T02:00:00.000Z", "updated_at": "2026-11-22T02:00:00.000Z"
    })
    .to_string()
}

/// The database alone: the rows duka writes for an order (customer looked up by code,
/// order, notification, order.created event), straight on SQLite in this process
/// (rusqlite: plain library calls, as the Python sqlite3 loop, no driver thread to
/// hop to) with duka's pragmas (WAL, synchronous=FULL, busy_timeout 3 s, foreign keys), in
/// IMMEDIATE transactions of `--per-tx` orders each, one cached prepared statement per row.
/// There is no shared counter row: each event's `seq` comes from this process (SQLite
/// serialises writers anyway, so a counter row would only add two statements).
/// `--concurrency` threads, each with its connection, take turns at writing through a FIFO
/// lock, as any server on SQLite (duka's single writer included) queues its writes, rather
/// than polling SQLite's busy handler, whose backoff sleeps would be what c=64 measured.
/// Run it on a copy of duka's database: it writes orders duka never made.
async fn sqlite_direct(a: &Args) -> Result<Value, AnyError> {
    use rusqlite::types::Value as Sql;
    use std::sync::atomic::AtomicI64;
    let db = a.str("db")?;
    let customers: u64 = a.num("customers", None)?;
    let c: usize = a.num("concurrency", None)?;
    let duration = a.duration()?;
    let per_tx: u64 = a.num("per-tx", Some(1))?;
    if !(1..=1000).contains(&per_tx) {
        return Err("--per-tx must be in 1..=1000".into());
    }
    if !(1..=256).contains(&c) {
        return Err("--concurrency must be in 1..=256 (one thread each)".into());
    }
    let open = {
        let db = db.clone();
        move || -> rusqlite::Result<rusqlite::Connection> {
            let con = rusqlite::Connection::open(&db)?;
            con.busy_timeout(Duration::from_secs(3))?;
            con.pragma_update(None, "journal_mode", "WAL")?;
            con.pragma_update(None, "synchronous", "FULL")?;
            con.pragma_update(None, "foreign_keys", true)?;
            Ok(con)
        }
    };
    let (blob_ids, last_seq) = {
        let con = open()?;
        let blob: bool = con.query_row(
            "SELECT typeof(id) = 'blob' FROM customers LIMIT 1",
            [],
            |r| r.get(0),
        )?;
        let last: i64 =
            con.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        (blob, last)
    };
    let id = move |b: [u8; 16]| {
        if blob_ids {
            Sql::Blob(b.to_vec())
        } else {
            Sql::Text(uuid_text(&b))
        }
    };
    let seq = Arc::new(AtomicI64::new(last_seq + 1));
    // tokio's Mutex queues its waiters in order; blocking_lock serves plain threads.
    let writer = Arc::new(tokio::sync::Mutex::new(()));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for w in 0..c {
        let con = open()?;
        let (next, seq, writer) = (next.clone(), seq.clone(), writer.clone());
        workers.push(std::thread::spawn(move || {
            let mut h = histogram();
            let mut tally = Tally::default();
            // Seeded from the clock: order numbers must not repeat those of an earlier run.
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            let mut rng = (clock ^ 0x9e37_79b9_7f4a_7c15u64)
                .wrapping_mul(w as u64 * 2 + 1)
                .max(1);
            let mut con = con;
            while Instant::now() < deadline {
                let first = next.fetch_add(per_tx, Ordering::Relaxed);
                let t0 = Instant::now();
                let r = (|| -> rusqlite::Result<()> {
                    let _turn = writer.blocking_lock();
                    let tx = con.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    for k in first..first + per_tx {
                        let (cid, name, phone): (Sql, String, String) = tx
                            .prepare_cached("SELECT id, name, phone FROM customers WHERE code = ?1")?
                            .query_row([code(1 + k % customers)], |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                            })?;
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(0);
                        let oid = id(uuid7(&mut rng));
                        let nid = id(uuid7(&mut rng));
                        let number = format!("ORD-SQ-{rng:016X}");
                        tx.prepare_cached(
                            "INSERT INTO orders (id, order_number, customer_id, item, quantity, amount_minor, currency, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, 1, 120000, 'KES', 'pending', ?5, ?5)",
                        )?
                        .execute(rusqlite::params![oid, number, cid, format!("bench #{k}"), now])?;
                        let message = format!(
                            "Hi {name}, we have your order {number}: 1 x bench #{k}, KES 1200.00. Thank you!"
                        );
                        tx.prepare_cached(
                            "INSERT INTO notifications (id, order_id, customer_id, phone, message, status, attempts, provider, next_attempt_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 0, 'log', ?6, ?6, ?6)",
                        )?
                        .execute(rusqlite::params![nid, oid, cid, phone, message, now])?;
                        tx.prepare_cached(
                            "INSERT INTO events (seq, kind, at, data) VALUES (?1, 'order.created', ?2, ?3)",
                        )?
                        .execute(rusqlite::params![
                            seq.fetch_add(1, Ordering::Relaxed),
                            now,
                            event_data(&number, k)
                        ])?;
                    }
                    tx.commit()
                })();
                match r {
                    Ok(()) => {
                        tally.ok += per_tx;
                        h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                    }
                    Err(e) => tally.error(e.to_string()),
                }
            }
            (h, tally)
        }));
    }
    let mut h = histogram();
    let mut tally = Tally::default();
    for t in workers {
        let (wh, wt) = t.join().map_err(|_| "a writer thread panicked")?;
        h.add(&wh)?;
        tally.merge(wt);
    }
    let secs = start.elapsed().as_secs_f64();
    // ok and rps count orders; the latencies are of whole transactions.
    let mut out = json!({
        "kind": "sqlite-direct", "driver": "rusqlite", "concurrency": c, "seconds": secs,
        "orders_per_tx": per_tx, "transactions": tally.ok / per_tx,
        "ok": tally.ok, "errors": tally.errors, "error_samples": tally.samples,
        "rps": (tally.ok as f64 / secs).round(),
    });
    merge(&mut out, summary(&h));
    Ok(out)
}
