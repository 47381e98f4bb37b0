//! duka's load client (driven by bench/run). Each subcommand prints one JSON object on
//! stdout; progress goes to stderr. Every loop is bounded in time and count, and every
//! address is loopback.
//!
//!   loadgen setup   --url U --token T --customers N
//!   loadgen create  --url U --token T --customers N --concurrency C --duration S [--total M]
//!   loadgen read    --url U --token T --path P --concurrency C --duration S   (P may hold {id})
//!   loadgen fanout  --url U --token T --customers N --subscribers N --rate R --duration S
//!                   [--pid PID] [--sources K]
//!   loadgen cross   --url A --watch B --token T --customers N --rate R --duration S
//!                   orders POSTed to instance A, received live on instance B
//!   loadgen sqlite-direct --db FILE --customers N --concurrency C --duration S [--per-tx K]

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

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
        eprintln!("usage: loadgen setup|create|read|fanout|sqlite-direct --key value ...");
        std::process::exit(2);
    };
    let result = match Args::parse(rest) {
        Ok(args) => match cmd.as_str() {
            "setup" => setup(&args).await,
            "create" => create(&args).await,
            "read" => read(&args).await,
            "fanout" => fanout(&args).await,
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

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What one subscriber saw.
#[derive(Default)]
struct SubStats {
    frames: u64,
    orders: u64,
    /// Events skipped: the sum of every jump in `seq` beyond one.
    gaps: u64,
    duplicates: u64,
    /// order.created frames that arrived before the client had read that POST's response
    /// (their latency counts as 0).
    early: u64,
    closed: Option<String>,
    latencies_us: Vec<u32>,
}

fn field_i64(text: &str, key: &str) -> Option<i64> {
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Opens one WebSocket from `source` and reads the hello frame: its `seq`.
async fn subscribe(
    server: SocketAddr,
    source: Ipv4Addr,
    token: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        i64,
    ),
    AnyError,
> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{server}/api/v1/ws?access_token={token}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let hello = tokio::time::timeout(REQUEST_TIMEOUT, ws.next())
        .await
        .map_err(|_| "no hello frame")?
        .ok_or("closed before hello")??;
    let text = hello.into_text()?;
    if !text.contains("\"hello\"") {
        return Err(format!("first frame is not hello: {text}").into());
    }
    let seq = field_i64(&text, "\"seq\":").ok_or("hello without seq")?;
    Ok((ws, seq))
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
    let (mut ws, hello) = subscribe(server, Ipv4Addr::LOCALHOST, &token).await?;
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

/// N WebSocket subscribers; orders POSTed at a steady rate; each subscriber checks `seq`
/// continuity and measures POST response -> frame receipt for every order.created.
async fn fanout(a: &Args) -> Result<Value, AnyError> {
    let url = a.str("url")?;
    loopback_only(&url)?;
    let token = a.str("token")?;
    let customers: u64 = a.num("customers", None)?;
    let n: usize = a.num("subscribers", None)?;
    let rate: f64 = a.num("rate", None)?;
    let duration = a.duration()?;
    let offset: u64 = a.num("offset", Some(0))?;
    let pid: Option<u32> = a.0.get("pid").and_then(|p| p.parse().ok());
    let sources: usize = a.num("sources", Some(n.div_ceil(20_000).max(1)))?;
    let settle = Duration::from_secs_f64(a.num("settle", Some(3.0))?);
    let server: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|_| "--url must be http://IP:PORT")?;
    if !server.ip().is_loopback() {
        return Err("loopback only".into());
    }
    let planned = (rate * duration.as_secs_f64()).ceil() as u64;
    let rss_before = rss_kib(pid);

    // Connect everyone (at most 256 handshakes at a time), each ready on its hello.
    let t_connect = Instant::now();
    let gate = Arc::new(Semaphore::new(256));
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    // 0: connected, waiting; 1: load running; 2: `produced_ok` is final; 3: stop.
    let (state_tx, state_rx) = tokio::sync::watch::channel(0u8);
    let resp_us: Arc<Vec<AtomicU64>> = Arc::new((0..planned).map(|_| AtomicU64::new(0)).collect());
    let produced_ok = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicUsize::new(0));
    let epoch = Instant::now();
    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % sources) as u8);
        let (gate, connected, failed, token) = (
            gate.clone(),
            connected.clone(),
            failed.clone(),
            token.clone(),
        );
        let (mut rx, resp_us, produced_ok, done) = (
            state_rx.clone(),
            resp_us.clone(),
            produced_ok.clone(),
            done.clone(),
        );
        subs.push(tokio::spawn(async move {
            let mut st = SubStats::default();
            let permit = gate.acquire_owned().await;
            let (mut ws, mut last) = match subscribe(server, source, &token).await {
                Ok(x) => x,
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("subscriber {i}: {e}");
                    }
                    st.closed = Some(format!("connect: {e}"));
                    return (st, None);
                }
            };
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            let mut marked = false;
            loop {
                let state = *rx.borrow_and_update();
                if state >= 3 {
                    break;
                }
                if state == 2 && !marked && st.orders >= produced_ok.load(Ordering::Acquire) {
                    marked = true;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let m = tokio::select! {
                    _ = rx.changed() => continue,
                    m = ws.next() => m,
                };
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => {
                        st.closed = Some(format!("close frame {c:?}"));
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        st.closed = Some(format!("error {e}"));
                        break;
                    }
                    None => {
                        st.closed = Some("eof".into());
                        break;
                    }
                };
                st.frames += 1;
                let now = epoch.elapsed().as_micros() as u64;
                let Some(seq) = field_i64(&text, "\"seq\":") else {
                    continue;
                };
                if seq == last + 1 {
                    last = seq;
                } else if seq <= last {
                    st.duplicates += 1;
                } else {
                    st.gaps += (seq - last - 1) as u64;
                    last = seq;
                }
                if text.starts_with("{\"type\":\"order.created\"")
                    && let Some(k) = field_i64(&text, "\"item\":\"bench #")
                {
                    let k = (k as u64).wrapping_sub(offset);
                    st.orders += 1;
                    if let Some(slot) = resp_us.get(k as usize) {
                        let t = slot.load(Ordering::Acquire);
                        if t == 0 {
                            st.early += 1;
                            st.latencies_us.push(0);
                        } else {
                            st.latencies_us
                                .push(u32::try_from(now.saturating_sub(t)).unwrap_or(u32::MAX));
                        }
                    }
                }
            }
            (st, Some(ws))
        }));
    }
    // Bounded: 300 s in all, and 15 s without a single socket more (a server out of file
    // descriptors leaves the rest hanging in its accept queue).
    let connect_deadline = Instant::now() + Duration::from_secs(300);
    let (mut progress, mut progress_at) = (0, Instant::now());
    loop {
        let seen = connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        if seen >= n || Instant::now() >= connect_deadline {
            break;
        }
        if seen != progress {
            (progress, progress_at) = (seen, Instant::now());
        } else if progress_at.elapsed() > Duration::from_secs(15) {
            eprintln!("fanout: no new connection for 15 s; going on with {seen}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    let n_connected = connected.load(Ordering::Relaxed);
    eprintln!("fanout: {n_connected}/{n} connected in {connect_s:.1}s");
    tokio::time::sleep(settle).await;
    let rss_connected = rss_kib(pid);

    // Steady producer: one POST every 1/rate s, each on its own task.
    state_tx.send_replace(1);
    let http = client(64)?;
    let ok = Arc::new(AtomicU64::new(0));
    let post_errors = Arc::new(Mutex::new(Tally::default()));
    let post_h = Arc::new(Mutex::new(histogram()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut posts = Vec::with_capacity(planned as usize);
    let t_load = Instant::now();
    for k in 0..planned {
        tick.tick().await;
        let (http, url, token, resp_us, ok, post_errors, post_h) = (
            http.clone(),
            url.clone(),
            token.clone(),
            resp_us.clone(),
            ok.clone(),
            post_errors.clone(),
            post_h.clone(),
        );
        posts.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = http
                .post(format!("{url}/api/v1/orders"))
                .bearer_auth(&token)
                .json(&order_body(offset + k, customers))
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 201 => {
                    let _ = r.bytes().await;
                    let now = (epoch.elapsed().as_micros() as u64).max(1);
                    resp_us[k as usize].store(now, Ordering::Release);
                    ok.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut h) = post_h.lock() {
                        h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                    }
                }
                Ok(r) => {
                    let s = r.status();
                    if let Ok(mut e) = post_errors.lock() {
                        e.error(s.to_string());
                    }
                }
                Err(e) => {
                    if let Ok(mut t) = post_errors.lock() {
                        t.error(e.to_string());
                    }
                }
            }
        }));
    }
    for p in posts {
        p.await?;
    }
    let load_s = t_load.elapsed().as_secs_f64();
    let produced = ok.load(Ordering::Relaxed);
    produced_ok.store(produced, Ordering::Release);
    state_tx.send_replace(2);
    // Every subscriber still connected must see every acknowledged order; bounded wait.
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let t_drain = Instant::now();
    loop {
        let finished = subs.iter().filter(|s| s.is_finished()).count();
        if done.load(Ordering::Relaxed) + finished >= n || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = t_drain.elapsed().as_secs_f64();
    let rss_after = rss_kib(pid);
    state_tx.send_replace(3);

    let mut lat = histogram();
    let mut frames = 0;
    let mut gaps = 0;
    let mut duplicates = 0;
    let mut early = 0;
    let mut missed_orders = 0;
    let mut closed = 0;
    let mut close_samples: Vec<String> = Vec::new();
    let mut sockets = Vec::new();
    for s in subs {
        let (st, ws) = s.await?;
        frames += st.frames;
        gaps += st.gaps;
        duplicates += st.duplicates;
        early += st.early;
        missed_orders += produced.saturating_sub(st.orders);
        if let Some(c) = st.closed {
            closed += 1;
            if close_samples.len() < 5 {
                close_samples.push(c);
            }
        }
        for us in st.latencies_us {
            lat.saturating_record(u64::from(us).max(1));
        }
        if let Some(ws) = ws {
            sockets.push(ws);
        }
    }
    let mut closing = futures_util::stream::iter(sockets.into_iter().map(|mut ws| async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }))
    .buffer_unordered(512);
    let close_deadline = Instant::now() + Duration::from_secs(60);
    while closing.next().await.is_some() && Instant::now() < close_deadline {}
    let post_tally = std::mem::take(&mut *post_errors.lock().map_err(|_| "poisoned")?);
    let post_summary = summary(&*post_h.lock().map_err(|_| "poisoned")?);
    let bytes_per_conn = match (rss_before, rss_connected) {
        (Some(b), Some(c)) if n_connected > 0 => {
            Some((c.saturating_sub(b) * 1024) / n_connected as u64)
        }
        _ => None,
    };
    let mut out = json!({
        "kind": "fanout", "subscribers": n, "connected": n_connected,
        "connect_seconds": connect_s, "rate": rate, "load_seconds": load_s,
        "drain_seconds": drain_s,
        "orders_planned": planned, "orders_ok": produced, "post_errors": post_tally.errors,
        "post_error_samples": post_tally.samples, "post_latency": post_summary,
        "frames": frames, "missed_events": gaps, "duplicates": duplicates,
        "missed_orders": missed_orders, "received_before_response": early,
        "closed_early": closed, "close_samples": close_samples,
        "rss_before_kib": rss_before, "rss_connected_kib": rss_connected,
        "rss_after_load_kib": rss_after, "bytes_per_connection": bytes_per_conn,
    });
    merge(&mut out, summary(&lat));
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
