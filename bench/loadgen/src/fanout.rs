//! The live fan-out and its limit.
//!
//!   loadgen fanout --url U --token T --customers N --subscribers N --duration S
//!                  [--rates 5,20,50,100] [--closed 16] [--drain 30] [--pid PID]
//!     N subscribers on duka's WebSocket, then orders POSTed at each rate (open loop) for S
//!     seconds, then by C POSTers in a closed loop for S seconds.
//!   loadgen fanout-limit --subscribers N --duration S [--warmup 1]
//!     the same reader against `loadgen raw-server` (started here as its own process): a
//!     minimal tokio server writing pre-built frames of duka's shape as fast as the
//!     sockets take them.
//!   loadgen raw-server [--listen 127.0.0.1:0]
//!
//! Both runs read their sockets with the same code: `subscribe` (the upgrade and the hello
//! frame) and `read_feed` (every frame parsed by tungstenite, `seq` checked to go up by
//! exactly one per frame).

use crate::{
    AnyError, Args, REQUEST_TIMEOUT, client, field_i64, histogram, loopback_only, merge,
    order_body, summary,
};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Latency histograms are split in shards (subscriber i records into shard i % SHARDS), so
/// that the client's threads seldom wait on one lock.
const SHARDS: usize = 8;
/// The control channel's value that ends every subscriber.
const STOP: u64 = u64::MAX;

pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One snapshot of a process's threads in the shape of `bench/report.py threads`
/// (`{tid: [comm, utime + stime ticks]}`, the machine's busy and total ticks, a monotonic
/// clock in seconds), so report.py turns two of them into per-thread CPU.
fn thread_snapshot(pid: Option<u32>, epoch: Instant) -> Value {
    let Some(pid) = pid else { return Value::Null };
    let mut threads = serde_json::Map::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path();
            // A thread may end between the listing and the reading.
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("stat")),
            ) else {
                continue;
            };
            // comm may hold spaces and parentheses: the fields start after the last ')'.
            let Some(fields) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            let f: Vec<&str> = fields.split_whitespace().collect();
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            threads.insert(
                task.file_name().to_string_lossy().into_owned(),
                json!([comm.trim(), tick(11) + tick(12)]),
            );
        }
    }
    let cpu: Vec<u64> = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let total: u64 = cpu.iter().sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    json!({"t": epoch.elapsed().as_secs_f64(), "threads": threads,
           "machine_busy": total - idle, "machine_total": total})
}

/// What every subscriber adds to during one phase of a run.
struct Phase {
    /// Frames (and their payload bytes) read while this phase was the current one, the
    /// jumps and repeats of `seq` among them, the subscribers closed meanwhile (and those
    /// of them closed with 1013).
    frames: AtomicU64,
    bytes: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    closed: AtomicU64,
    closed_1013: AtomicU64,
    /// This phase's orders are the global indexes `first..first + cap`; `produced` is how
    /// many were acknowledged (u64::MAX until its POSTs are over).
    first: u64,
    cap: u64,
    produced: AtomicU64,
    /// Subscribers that hold every acknowledged order of the phase, and subscribers that
    /// ended without: the drain is over when the two make all connected.
    done: AtomicUsize,
    gone: AtomicUsize,
    /// order.created frames read before the client had read that POST's 201 (latency 0).
    early: AtomicU64,
    /// Frame latency from the POST's 201 and from the POST being sent.
    latency: Vec<Mutex<(Histogram<u64>, Histogram<u64>)>>,
}

/// The run as its subscribers see it.
struct Feed {
    phases: Vec<Phase>,
    /// The phase frames are counted under now.
    current: AtomicUsize,
    /// The `bench #k` of global order index g is k = offset + g.
    offset: u64,
    /// When the client read each order's 201 (µs since `epoch`, at least 1; 0 = not yet).
    resp_us: Vec<AtomicU64>,
    /// When the client sent each order's POST (µs since `epoch`, at least 1).
    sent_us: Vec<AtomicU64>,
    epoch: Instant,
    /// Set when the connect phase is over: a socket that opens later is dropped.
    late: AtomicBool,
}

impl Feed {
    fn new(caps: &[u64], offset: u64) -> Self {
        let mut first = 0;
        let phases = caps
            .iter()
            .map(|&cap| {
                let p = Phase {
                    frames: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                    gaps: AtomicU64::new(0),
                    duplicates: AtomicU64::new(0),
                    closed: AtomicU64::new(0),
                    closed_1013: AtomicU64::new(0),
                    first,
                    cap,
                    produced: AtomicU64::new(if cap == 0 { 0 } else { u64::MAX }),
                    done: AtomicUsize::new(0),
                    gone: AtomicUsize::new(0),
                    early: AtomicU64::new(0),
                    latency: (0..SHARDS)
                        .map(|_| Mutex::new((histogram(), histogram())))
                        .collect(),
                };
                first += cap;
                p
            })
            .collect();
        Self {
            phases,
            current: AtomicUsize::new(0),
            offset,
            resp_us: (0..first).map(|_| AtomicU64::new(0)).collect(),
            sent_us: (0..first).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            late: AtomicBool::new(false),
        }
    }

    fn phase_of(&self, g: u64) -> Option<usize> {
        self.phases
            .iter()
            .position(|p| (p.first..p.first + p.cap).contains(&g))
    }

    /// Phase p's frame latency: from the 201, from the POST being sent.
    fn latency(&self, p: usize) -> (Histogram<u64>, Histogram<u64>) {
        let (mut from_201, mut from_send) = (histogram(), histogram());
        for shard in &self.phases[p].latency {
            if let Ok(s) = shard.lock() {
                let _ = from_201.add(&s.0);
                let _ = from_send.add(&s.1);
            }
        }
        (from_201, from_send)
    }
}

/// What one subscriber saw: the orders of each phase it read, the phase it was closed in
/// (and how), and its socket if it is still open.
struct Sub {
    orders: Vec<u64>,
    closed_in: Option<usize>,
    close: Option<String>,
    ws: Option<Ws>,
}

/// Opens one WebSocket from `source` and reads the hello frame: its `seq`.
pub async fn subscribe(
    server: SocketAddr,
    source: Ipv4Addr,
    token: &str,
) -> Result<(Ws, i64), AnyError> {
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

/// Reads one subscriber's frames until told to stop or closed: counts them under the
/// current phase, checks that `seq` goes up by exactly one from the hello's, and times
/// every order.created of this run from its POST's 201.
async fn read_feed(
    mut ws: Ws,
    mut last: i64,
    shard: usize,
    feed: Arc<Feed>,
    mut ctl: watch::Receiver<u64>,
) -> Sub {
    let n = feed.phases.len();
    let mut orders = vec![0u64; n];
    let mut marked = vec![false; n];
    let mark = |q: usize, orders: &[u64], marked: &mut [bool]| {
        let ph = &feed.phases[q];
        if !marked[q] && ph.cap > 0 && orders[q] >= ph.produced.load(Ordering::Acquire) {
            marked[q] = true;
            ph.done.fetch_add(1, Ordering::AcqRel);
        }
    };
    let close = loop {
        let m = tokio::select! {
            r = ctl.changed() => {
                if r.is_err() || *ctl.borrow_and_update() == STOP {
                    break None;
                }
                for q in 0..n {
                    mark(q, &orders, &mut marked);
                }
                continue;
            }
            m = ws.next() => m,
        };
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                let code = c.as_ref().map(|c| u16::from(c.code));
                break Some((code == Some(1013), format!("close frame {c:?}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break Some((false, format!("error {e}"))),
            None => break Some((false, "eof".into())),
        };
        let now = feed.epoch.elapsed().as_micros() as u64;
        let ph = &feed.phases[feed.current.load(Ordering::Relaxed)];
        ph.frames.fetch_add(1, Ordering::Relaxed);
        ph.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
        let Some(seq) = field_i64(&text, "\"seq\":") else {
            continue;
        };
        if seq == last + 1 {
            last = seq;
        } else if seq <= last {
            ph.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            ph.gaps
                .fetch_add((seq - last - 1) as u64, Ordering::Relaxed);
            last = seq;
        }
        if !text.starts_with("{\"type\":\"order.created\"") {
            continue;
        }
        let Some(k) = field_i64(&text, "\"item\":\"bench #") else {
            continue;
        };
        let g = (k as u64).wrapping_sub(feed.offset);
        let Some(q) = feed.phase_of(g) else { continue };
        orders[q] += 1;
        let t = feed.resp_us[g as usize].load(Ordering::Acquire);
        let us = if t == 0 {
            feed.phases[q].early.fetch_add(1, Ordering::Relaxed);
            0
        } else {
            now.saturating_sub(t)
        };
        let sent = feed.sent_us[g as usize].load(Ordering::Acquire);
        if let Ok(mut h) = feed.phases[q].latency[shard % SHARDS].lock() {
            h.0.saturating_record(us.max(1));
            h.1.saturating_record(now.saturating_sub(sent).max(1));
        }
        mark(q, &orders, &mut marked);
    };
    let Some((is_1013, why)) = close else {
        return Sub {
            orders,
            closed_in: None,
            close: None,
            ws: Some(ws),
        };
    };
    let p = feed.current.load(Ordering::Relaxed);
    feed.phases[p].closed.fetch_add(1, Ordering::Relaxed);
    if is_1013 {
        feed.phases[p].closed_1013.fetch_add(1, Ordering::Relaxed);
    }
    for (q, ph) in feed.phases.iter().enumerate() {
        if !marked[q] {
            ph.gone.fetch_add(1, Ordering::AcqRel);
        }
    }
    Sub {
        orders,
        closed_in: Some(p),
        close: Some(why),
        ws: None,
    }
}

/// Everyone connected (or not) at the end of the connect phase.
struct Connected {
    subs: Vec<JoinHandle<Option<Sub>>>,
    connected: usize,
    failed: usize,
    /// Why some did not connect (filled in until their handshakes end, after the phase).
    samples: Arc<Mutex<Vec<String>>>,
    seconds: f64,
}

/// Opens n subscribers (at most 256 handshakes at a time, each bounded by `timeout`), each
/// then reading its feed. Bounded: 300 s in all, and 15 s without a single socket more (a
/// server out of file descriptors leaves the rest hanging in its accept queue).
async fn connect_all(
    n: usize,
    server: SocketAddr,
    sources: usize,
    token: &str,
    feed: &Arc<Feed>,
    ctl: &watch::Receiver<u64>,
    timeout: Duration,
) -> Connected {
    let t0 = Instant::now();
    let gate = Arc::new(Semaphore::new(256));
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % sources) as u8);
        let (gate, connected, failed, samples) = (
            gate.clone(),
            connected.clone(),
            failed.clone(),
            samples.clone(),
        );
        let (token, feed, ctl) = (token.to_string(), feed.clone(), ctl.clone());
        subs.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let r = tokio::time::timeout(timeout, subscribe(server, source, &token)).await;
            drop(permit);
            let (ws, last) = match r {
                Ok(Ok(x)) if !feed.late.load(Ordering::Acquire) => x,
                r => {
                    let e = match r {
                        Ok(Ok(_)) => "connected after the connect phase (dropped)".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no hello within {timeout:?}"),
                    };
                    failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut s) = samples.lock()
                        && s.len() < 5
                    {
                        s.push(format!("subscriber {i}: {e}"));
                    }
                    return None;
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            Some(read_feed(ws, last, i, feed, ctl).await)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut progress, mut progress_at) = (0, Instant::now());
    loop {
        let seen = connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        if seen >= n || Instant::now() >= deadline {
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
    feed.late.store(true, Ordering::Release);
    let seconds = t0.elapsed().as_secs_f64();
    let connected = connected.load(Ordering::Relaxed);
    eprintln!("fanout: {connected}/{n} connected in {seconds:.1}s");
    Connected {
        subs,
        connected,
        failed: n - connected,
        samples,
        seconds,
    }
}

fn samples_of(s: &Mutex<Vec<String>>) -> Vec<String> {
    s.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Stops every subscriber and collects what they saw (bounded: 30 s, then the rest are
/// aborted and counted as lost).
async fn finish(subs: Vec<JoinHandle<Option<Sub>>>, ctl: &watch::Sender<u64>) -> (Vec<Sub>, usize) {
    ctl.send_replace(STOP);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::with_capacity(subs.len());
    let mut lost = 0;
    for mut s in subs {
        match tokio::time::timeout_at(deadline, &mut s).await {
            Ok(Ok(Some(sub))) => out.push(sub),
            Ok(Ok(None)) => {}
            Ok(Err(_)) => lost += 1,
            Err(_) => {
                s.abort();
                lost += 1;
            }
        }
    }
    (out, lost)
}

/// The stats of phase p that the subscribers counted.
fn phase_counts(ph: &Phase) -> Value {
    let frames = ph.frames.load(Ordering::Relaxed);
    json!({
        "frames": frames,
        "mean_frame_bytes": ph.bytes.load(Ordering::Relaxed).checked_div(frames),
        "missed_events": ph.gaps.load(Ordering::Relaxed),
        "duplicates": ph.duplicates.load(Ordering::Relaxed),
        "closed": ph.closed.load(Ordering::Relaxed),
        "closed_1013": ph.closed_1013.load(Ordering::Relaxed),
    })
}

fn server_addr(url: &str) -> Result<SocketAddr, AnyError> {
    let server: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|_| "--url must be http://IP:PORT")?;
    if !server.ip().is_loopback() {
        return Err("loopback only".into());
    }
    Ok(server)
}

#[derive(Clone, Copy)]
enum Load {
    /// Open loop: one POST every 1/rate s, each on its own task.
    Rate(f64),
    /// Closed loop: C POSTers, each POSTing as soon as its previous answer arrived.
    Closed(usize),
}

/// POSTs order g, marking when it was sent and when the client read its 201 (body read).
/// Its latency in µs.
async fn post_order(
    http: reqwest::Client,
    url: Arc<str>,
    token: Arc<str>,
    feed: Arc<Feed>,
    g: u64,
    customers: u64,
) -> Result<u64, String> {
    let t0 = Instant::now();
    let sent = (feed.epoch.elapsed().as_micros() as u64).max(1);
    feed.sent_us[g as usize].store(sent, Ordering::Release);
    let r = http
        .post(format!("{url}/api/v1/orders"))
        .bearer_auth(&*token)
        .json(&order_body(feed.offset + g, customers))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().as_u16() != 201 {
        return Err(r.status().to_string());
    }
    r.bytes().await.map_err(|e| e.to_string())?;
    let now = (feed.epoch.elapsed().as_micros() as u64).max(1);
    feed.resp_us[g as usize].store(now, Ordering::Release);
    Ok((t0.elapsed().as_micros() as u64).max(1))
}

/// N subscribers on duka, then each load in turn: POSTs for `--duration` s, then a bounded
/// wait until every open subscriber has every acknowledged order of it.
pub async fn fanout(a: &Args) -> Result<Value, AnyError> {
    let url = a.str("url")?;
    loopback_only(&url)?;
    let server = server_addr(&url)?;
    let token = a.str("token")?;
    let customers: u64 = a.num("customers", None)?;
    let n: usize = a.num("subscribers", None)?;
    let duration = a.duration()?;
    let drain = Duration::from_secs_f64(a.num("drain", Some(30.0))?);
    let offset: u64 = a.num("offset", Some(0))?;
    let pid: Option<u32> = a.0.get("pid").and_then(|p| p.parse().ok());
    let sources: usize = a.num("sources", Some(n.div_ceil(20_000).max(1)))?;
    let settle = Duration::from_secs_f64(a.num("settle", Some(3.0))?);
    let connect_timeout = Duration::from_secs_f64(a.num("connect-timeout", Some(20.0))?);
    let closed_cap: u64 = a.num("closed-cap", Some(200_000))?;
    let mut loads = Vec::new();
    for r in a
        .str("rates")
        .unwrap_or_else(|_| "5,20,50,100".into())
        .split(',')
    {
        let r = r.trim();
        if !r.is_empty() {
            let r: f64 = r.parse().map_err(|_| format!("--rates: bad rate {r}"))?;
            if !(r > 0.0 && r <= 10_000.0) {
                return Err("--rates: each in (0, 10000]".into());
            }
            loads.push(Load::Rate(r));
        }
    }
    let closed: usize = a.num("closed", Some(16))?;
    if closed > 0 {
        loads.push(Load::Closed(closed.min(1024)));
    }
    // Phase 0 is the connect phase: frames read while connecting and settling.
    let mut caps = vec![0];
    for l in &loads {
        caps.push(match l {
            Load::Rate(r) => (r * duration.as_secs_f64()).ceil() as u64,
            Load::Closed(_) => closed_cap,
        });
    }
    let feed = Arc::new(Feed::new(&caps, offset));
    let (ctl_tx, ctl_rx) = watch::channel(0u64);
    let rss_before = rss_kib(pid);
    let conn = connect_all(n, server, sources, &token, &feed, &ctl_rx, connect_timeout).await;
    tokio::time::sleep(settle).await;
    let rss_connected = rss_kib(pid);
    let open_at = |feed: &Feed| {
        let closed: u64 = feed
            .phases
            .iter()
            .map(|p| p.closed.load(Ordering::Relaxed))
            .sum();
        conn.connected.saturating_sub(closed as usize)
    };

    let http = client(64)?;
    let posters = poster_runtime()?;
    let (url, token): (Arc<str>, Arc<str>) = (url.into(), token.into());
    let mut results = vec![json!({"name": "connect"})];
    for (i, load) in loads.iter().enumerate() {
        let p = i + 1;
        let ph = &feed.phases[p];
        let open = open_at(&feed);
        feed.current.store(p, Ordering::Relaxed);
        let threads_before = thread_snapshot(pid, feed.epoch);
        let start = Instant::now();
        let deadline = start + duration;
        let name = match *load {
            Load::Rate(rate) => format!("r{rate}"),
            Load::Closed(c) => format!("c{c}"),
        };
        let (first, cap, load_now) = (ph.first, ph.cap, *load);
        let (http, url, token, feed2) = (http.clone(), url.clone(), token.clone(), feed.clone());
        let (post_h, tally) = posters
            .spawn(async move {
                run_posts(load_now, first, cap, deadline, http, url, token, feed2, customers).await
            })
            .await??;
        let load_s = start.elapsed().as_secs_f64();
        ph.produced.store(tally.ok, Ordering::Release);
        ctl_tx.send_modify(|v| *v += 1);
        let t_drain = Instant::now();
        let drained = loop {
            let settled = ph.done.load(Ordering::Acquire) + ph.gone.load(Ordering::Acquire);
            if settled >= conn.connected {
                break true;
            }
            if t_drain.elapsed() >= drain {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let drain_s = t_drain.elapsed().as_secs_f64();
        let seconds = start.elapsed().as_secs_f64();
        let threads_after = thread_snapshot(pid, feed.epoch);
        let rss = rss_kib(pid);
        let frames = ph.frames.load(Ordering::Relaxed);
        let mut out = json!({
            "name": name,
            "load": match load { Load::Rate(_) => "rate", Load::Closed(_) => "closed" },
            "rate": match load { Load::Rate(r) => Some(*r), Load::Closed(_) => None },
            "concurrency": match load { Load::Rate(_) => None, Load::Closed(c) => Some(*c) },
            "subscribers_open": open, "seconds": seconds, "load_seconds": load_s,
            "drain_seconds": drain_s, "drained": drained,
            "not_drained": conn.connected.saturating_sub(
                ph.done.load(Ordering::Acquire) + ph.gone.load(Ordering::Acquire)),
            "orders_ok": tally.ok, "orders_per_s": (tally.ok as f64 / load_s * 10.0).round() / 10.0,
            "post_errors": tally.errors, "post_error_samples": tally.samples,
            "post_latency": summary(&post_h),
            "frames_per_s": (frames as f64 / seconds).round() as u64,
            "rss_kib": rss, "threads_before": threads_before, "threads_after": threads_after,
        });
        eprintln!(
            "fanout {}: {} orders in {load_s:.1}s, {} frames/s, drain {drain_s:.1}s{}",
            out["name"].as_str().unwrap_or(""),
            tally.ok,
            out["frames_per_s"],
            if drained { "" } else { " (not drained)" }
        );
        merge(&mut out, phase_counts(ph));
        results.push(out);
    }
    merge(&mut results[0], phase_counts(&feed.phases[0]));

    let (subs, lost) = finish(conn.subs, &ctl_tx).await;
    // An order is missed by a subscriber still open at the end of its phase that never read
    // it (late frames read during a later phase count as read; their latency shows it).
    let mut close_samples = Vec::new();
    for (p, out) in results.iter_mut().enumerate().skip(1) {
        let produced = feed.phases[p].produced.load(Ordering::Acquire);
        let missed: u64 = subs
            .iter()
            .filter(|s| s.closed_in.is_none_or(|c| c > p))
            .map(|s| produced.saturating_sub(s.orders[p]))
            .sum();
        let ph = &feed.phases[p];
        let (from_201, from_send) = feed.latency(p);
        merge(
            out,
            json!({
                "missed_orders": missed,
                "received_before_response": ph.early.load(Ordering::Relaxed),
                "order_frames": from_201.len(),
                "frame_latency": summary(&from_201),
                "frame_latency_from_send": summary(&from_send),
            }),
        );
    }
    for s in &subs {
        if let Some(c) = &s.close
            && close_samples.len() < 5
        {
            close_samples.push(c.clone());
        }
    }
    let sockets: Vec<Ws> = subs.into_iter().filter_map(|s| s.ws).collect();
    let mut closing = futures_util::stream::iter(sockets.into_iter().map(|mut ws| async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }))
    .buffer_unordered(512);
    let close_deadline = Instant::now() + Duration::from_secs(60);
    while closing.next().await.is_some() && Instant::now() < close_deadline {}

    let sum = |k: &str| {
        results
            .iter()
            .map(|r| r[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let bytes_per_conn = match (rss_before, rss_connected) {
        (Some(b), Some(c)) if conn.connected > 0 => {
            Some((c.saturating_sub(b) * 1024) / conn.connected as u64)
        }
        _ => None,
    };
    let best = results
        .iter()
        .skip(1)
        .filter_map(|r| Some((r["frames_per_s"].as_u64()?, r["name"].as_str()?.to_string())))
        .max_by_key(|b| b.0);
    let rss_max = results.iter().filter_map(|r| r["rss_kib"].as_u64()).max();
    Ok(json!({
        "kind": "fanout", "pid": pid, "subscribers": n, "connected": conn.connected,
        "connect_failed": conn.failed, "connect_error_samples": samples_of(&conn.samples),
        "connect_seconds": conn.seconds, "duration": duration.as_secs_f64(),
        "rss_before_kib": rss_before, "rss_connected_kib": rss_connected,
        "bytes_per_connection": bytes_per_conn, "rss_max_after_load_kib": rss_max,
        "best_frames_per_s": best.as_ref().map(|b| b.0), "best_phase": best.map(|b| b.1),
        "orders_ok": sum("orders_ok"), "post_errors": sum("post_errors"),
        "missed_events": sum("missed_events"), "duplicates": sum("duplicates"),
        "missed_orders": sum("missed_orders"), "closed_early": sum("closed"),
        "closed_1013": sum("closed_1013"), "subscribers_lost": lost,
        "close_samples": close_samples, "phases": results,
    }))
}

/// Kills the child process it holds when dropped, however the run ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The limit: `loadgen raw-server` started as its own process, N subscribers on it read
/// by the same code as duka's, then frames delivered per second over a fixed window.
pub async fn fanout_limit(a: &Args) -> Result<Value, AnyError> {
    use std::io::BufRead;
    let n: usize = a.num("subscribers", None)?;
    let duration = a.duration()?;
    let warmup = Duration::from_secs_f64(a.num("warmup", Some(1.0))?);
    let sources: usize = a.num("sources", Some(n.div_ceil(20_000).max(1)))?;
    let connect_timeout = Duration::from_secs_f64(a.num("connect-timeout", Some(20.0))?);
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["raw-server", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("raw-server: no stdout")?;
    let child = Child(child);
    let pid = Some(child.0.id());
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let server: SocketAddr = line
        .trim()
        .parse()
        .map_err(|_| format!("raw-server said {line:?}, not its address"))?;
    let rss_before = rss_kib(pid);

    // Phases: 0 connect, 1 warm-up, 2 the window measured.
    let feed = Arc::new(Feed::new(&[0, 0, 0], 0));
    let (ctl_tx, ctl_rx) = watch::channel(0u64);
    let conn = connect_all(n, server, sources, "raw", &feed, &ctl_rx, connect_timeout).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_kib(pid);
    let mut go = tokio::net::TcpStream::connect(server).await?;
    go.write_all(b"GET /go HTTP/1.1\r\nHost: raw\r\n\r\n")
        .await?;
    let mut answer = [0u8; 64];
    let _ = go.read(&mut answer).await?;
    feed.current.store(1, Ordering::Relaxed);
    tokio::time::sleep(warmup).await;
    feed.current.store(2, Ordering::Relaxed);
    let threads_before = thread_snapshot(pid, feed.epoch);
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let seconds = start.elapsed().as_secs_f64();
    let window = phase_counts(&feed.phases[2]);
    let threads_after = thread_snapshot(pid, feed.epoch);
    let rss_after = rss_kib(pid);
    let counts: Vec<Value> = feed.phases.iter().map(phase_counts).collect();
    let (subs, lost) = finish(conn.subs, &ctl_tx).await;
    drop(child);
    drop(subs);
    let sum = |k: &str| {
        counts
            .iter()
            .map(|r| r[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let frames = window["frames"].as_u64().unwrap_or(0);
    let mut out = json!({
        "kind": "fanout-limit", "pid": pid, "subscribers": n, "connected": conn.connected,
        "connect_failed": conn.failed, "connect_error_samples": samples_of(&conn.samples),
        "connect_seconds": conn.seconds, "seconds": seconds,
        "frames_per_s": (frames as f64 / seconds).round() as u64,
        "missed_events": sum("missed_events"), "duplicates": sum("duplicates"),
        "closed_early": sum("closed"), "subscribers_lost": lost,
        "rss_before_kib": rss_before, "rss_connected_kib": rss_connected,
        "rss_after_kib": rss_after,
        "bytes_per_connection": match (rss_before, rss_connected) {
            (Some(b), Some(c)) if conn.connected > 0 =>
                Some((c.saturating_sub(b) * 1024) / conn.connected as u64),
            _ => None,
        },
        "threads_before": threads_before, "threads_after": threads_after,
    });
    merge(&mut out, window);
    Ok(out)
}

/// Frames of the raw server: copies of real duka frames (an order.created and the two
/// notification.updated its SMS makes, `sending` then `sent`, in that order), each with its
/// `seq` put in, so the reader's checks run on them as on duka's.
const TEMPLATES: [&str; 3] = [
    r#"{"type":"order.created","seq":SEQ,"at":"2026-12-02T06:12:07.713Z","actor":{"type":"user","subject":"token:b613d05774d4","name":"API token 1"},"data":{"amount":"1123.45","created_at":"2026-12-02T06:12:07.713Z","currency":"KES","customer":{"code":"BENCH-000001","id":"01a23561-bd95-70a8-be12-2c36d135dac5","name":"Bench Customer 1","phone":"+254710000001"},"id":"01a23561-bda1-7693-ac05-2a39b14cb721","item":"bench #2000000123","notification":{"id":"01a23561-bda1-7693-ac05-2a3a782d25c2","status":"queued","updated_at":"2026-12-02T06:12:07.713Z"},"order_number":"ORD-20261202-99CD4H","quantity":2,"status":"pending","updated_at":"2026-12-02T06:12:07.713Z"}}"#,
    r#"{"type":"notification.updated","seq":SEQ,"at":"2026-12-02T06:12:07.716Z","actor":{"type":"system","name":"sms"},"data":{"attempts":1,"cost":null,"created_at":"2026-12-02T06:12:07.713Z","customer_id":"01a23561-bd95-70a8-be12-2c36d135dac5","error":null,"id":"01a23561-bda1-7693-ac05-2a3a782d25c2","message":"Hi Bench Customer 1, we have your order ORD-20261202-99CD4H: 2 x bench #2000000123, KES 1123.45. Thank you!","next_attempt_at":null,"order_id":"01a23561-bda1-7693-ac05-2a39b14cb721","phone":"+254710000001","provider":"log","provider_message_id":null,"status":"sending","updated_at":"2026-12-02T06:12:07.715Z"}}"#,
    r#"{"type":"notification.updated","seq":SEQ,"at":"2026-12-02T06:12:07.717Z","actor":{"type":"system","name":"sms"},"data":{"attempts":1,"cost":null,"created_at":"2026-12-02T06:12:07.713Z","customer_id":"01a23561-bd95-70a8-be12-2c36d135dac5","error":null,"id":"01a23561-bda1-7693-ac05-2a3a782d25c2","message":"Hi Bench Customer 1, we have your order ORD-20261202-99CD4H: 2 x bench #2000000123, KES 1123.45. Thank you!","next_attempt_at":null,"order_id":"01a23561-bda1-7693-ac05-2a39b14cb721","phone":"+254710000001","provider":"log","provider_message_id":"log-01a23561-bda5-7450-a8b4-9f99d5d6b488","status":"sent","updated_at":"2026-12-02T06:12:07.717Z"}}"#,
];
/// The hello's seq: the frames' have as many digits as duka's after a full bench run.
const RAW_HELLO_SEQ: u64 = 999_999;
const FRAMES_PER_CHUNK: u64 = 256;

/// An unmasked WebSocket text frame (server to client).
fn ws_text(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// The raw server's log: chunks of pre-built frames, each built once (by the first
/// connection to reach it) and shared by all; a chunk no connection holds any more is freed.
struct Chunk {
    bytes: Vec<u8>,
    first_seq: u64,
    next: OnceLock<Arc<Chunk>>,
}

impl Chunk {
    fn build(first_seq: u64) -> Self {
        let mut bytes = Vec::new();
        for seq in first_seq..first_seq + FRAMES_PER_CHUNK {
            let text = TEMPLATES[(seq % 3) as usize].replacen("SEQ", &seq.to_string(), 1);
            bytes.extend(ws_text(text.as_bytes()));
        }
        Self {
            bytes,
            first_seq,
            next: OnceLock::new(),
        }
    }
    fn next(&self) -> Arc<Chunk> {
        self.next
            .get_or_init(|| Arc::new(Chunk::build(self.first_seq + FRAMES_PER_CHUNK)))
            .clone()
    }
}

/// A minimal WebSocket server for the limit: it answers the upgrade (101 and the hello
/// frame), waits for `GET /go`, then writes the shared log to every connection, one task
/// each, everything pending in one write, as fast as the socket takes it. It never reads
/// after the upgrade. Prints its address on the first line of stdout.
pub async fn raw_server(a: &Args) -> Result<Value, AnyError> {
    let listen: SocketAddr = a
        .str("listen")
        .unwrap_or_else(|_| "127.0.0.1:0".into())
        .parse()
        .map_err(|_| "--listen must be IP:PORT")?;
    if !listen.ip().is_loopback() {
        return Err("loopback only".into());
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        writeln!(out, "{}", listener.local_addr()?)?;
        out.flush()?;
    }
    // Held until `go`: every connection starts at the log's first chunk.
    let first = Arc::new(Mutex::new(Some(Arc::new(Chunk::build(RAW_HELLO_SEQ + 1)))));
    let (go_tx, go_rx) = watch::channel(false);
    let go_tx = Arc::new(go_tx);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("raw-server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (first, go_tx, go_rx) = (first.clone(), go_tx.clone(), go_rx.clone());
        tokio::spawn(async move {
            let _ = raw_connection(stream, first, go_tx, go_rx).await;
        });
    }
}

async fn raw_connection(
    mut s: tokio::net::TcpStream,
    first: Arc<Mutex<Option<Arc<Chunk>>>>,
    go_tx: Arc<watch::Sender<bool>>,
    mut go_rx: watch::Receiver<bool>,
) -> Result<(), AnyError> {
    s.set_nodelay(true)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err("no request".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    if head.starts_with("GET /go ") {
        if let Ok(mut f) = first.lock() {
            f.take();
        }
        go_tx.send_replace(true);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .ok_or("no Sec-WebSocket-Key")?;
    let mut chunk = first
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .ok_or("connected after go")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    out.extend(ws_text(
        format!(r#"{{"type":"hello","seq":{RAW_HELLO_SEQ}}}"#).as_bytes(),
    ));
    s.write_all(&out).await?;
    go_rx.wait_for(|go| *go).await?;
    let mut off = 0;
    loop {
        if off == chunk.bytes.len() {
            chunk = chunk.next();
            off = 0;
        }
        let n = s.write(&chunk.bytes[off..]).await?;
        if n == 0 {
            return Ok(());
        }
        off += n;
    }
}

/// A thread and runtime of their own for the POSTs: on the main runtime, the subscriber
/// tasks (10,000 of them, reading as fast as they can) would queue the client's own reading
/// of each 201 and the rate's ticks, and that wait would be measured as duka's latency.
fn poster_runtime() -> Result<tokio::runtime::Handle, AnyError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("posters".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// One load's POSTs (on the posters' runtime): their latency histogram and tally.
#[allow(clippy::too_many_arguments)]
async fn run_posts(
    load: Load,
    first: u64,
    cap: u64,
    deadline: Instant,
    http: reqwest::Client,
    url: Arc<str>,
    token: Arc<str>,
    feed: Arc<Feed>,
    customers: u64,
) -> Result<(Histogram<u64>, crate::Tally), AnyError> {
    let mut tasks = Vec::new();
    match load {
        Load::Rate(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for g in first..first + cap {
                tick.tick().await;
                let (http, url, token, feed) =
                    (http.clone(), url.clone(), token.clone(), feed.clone());
                tasks.push(tokio::spawn(async move {
                    vec![post_order(http, url, token, feed, g, customers).await]
                }));
            }
        }
        Load::Closed(c) => {
            let next = Arc::new(AtomicU64::new(first));
            let end = first + cap;
            for _ in 0..c {
                let (http, url, token, feed, next) = (
                    http.clone(),
                    url.clone(),
                    token.clone(),
                    feed.clone(),
                    next.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut answers = Vec::new();
                    while Instant::now() < deadline {
                        let g = next.fetch_add(1, Ordering::Relaxed);
                        if g >= end {
                            break;
                        }
                        answers.push(
                            post_order(
                                http.clone(),
                                url.clone(),
                                token.clone(),
                                feed.clone(),
                                g,
                                customers,
                            )
                            .await,
                        );
                    }
                    answers
                }));
            }
        }
    }
    let (mut post_h, mut tally) = (histogram(), crate::Tally::default());
    for t in tasks {
        for answer in t.await? {
            match answer {
                Ok(us) => {
                    tally.ok += 1;
                    post_h.saturating_record(us);
                }
                Err(e) => tally.error(e),
            }
        }
    }
    Ok((post_h, tally))
}
