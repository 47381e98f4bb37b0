//! SMS with several `duka serve` processes on one PostgreSQL database (the contract's
//! "Several instances"): one sender at a time, limits for the deployment, a dead or
//! stalled sender taken over without losing or repeating messages. Real binaries, one
//! shared database, the fake Africa's Talking server.
//!
//! These need PostgreSQL whatever the suite runs on: without `DUKA_TEST_POSTGRES_URL` they
//! fail and say so.

use crate::fake_at::FakeAt;
use crate::sms::{ProcessClient, at_toml, await_sent, notification_rows, on};
use crate::support::TestDb;
use crate::support::process::{DukaProcess, spawn_duka};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A deployment: `n` instances on one fresh PostgreSQL database, all sending through
/// `fake` with the `[sms]` settings `sms`.
struct Cluster {
    nodes: Vec<DukaProcess>,
    clients: Vec<ProcessClient>,
    db: TestDb,
}

fn postgres() -> TestDb {
    let url = std::env::var("DUKA_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "the several-instance SMS tests need PostgreSQL: set \
         DUKA_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres"
    );
    let db = TestDb::new();
    assert!(db.is_postgres());
    db
}

impl Cluster {
    async fn start(n: usize, fake: &FakeAt, sms: &str) -> Self {
        let db = postgres();
        let toml = at_toml(fake, sms);
        // The first applies the migrations; the others start on the migrated database.
        let prefix = on(&db, None);
        let mut nodes = vec![spawn_duka(&toml, &prefix).await];
        let rest = (1..n).map(|_| spawn_duka(&toml, &prefix));
        nodes.extend(futures_util::future::join_all(rest).await);
        let clients = nodes.iter().map(|p| ProcessClient::new(&p.url)).collect();
        Self { nodes, clients, db }
    }

    /// The instance that is the sender now (`duka_sms_sender` is 1 there and 0 elsewhere),
    /// waiting for the lease to settle; `skip` are instances no longer asked.
    async fn sender(&self, skip: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut holders = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if !skip.contains(&i) && node.metric("duka_sms_sender").await == 1.0 {
                    holders.push(i);
                }
            }
            if let [one] = holders[..] {
                return one;
            }
            assert!(
                holders.len() <= 1,
                "several instances say they are the SMS sender: {holders:?}"
            );
            assert!(Instant::now() < deadline, "no instance is the SMS sender");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `n` customers, made round the instances: (customer id, phone).
    async fn customers(&self, n: usize) -> Vec<(String, String)> {
        let made = (0..n).map(|i| self.clients[i % self.clients.len()].customer());
        futures_util::future::join_all(made).await
    }
}

fn signal(node: &DukaProcess, sig: i32) {
    // SAFETY: kill only signals the process this test started.
    assert_eq!(unsafe { libc::kill(node.pid as i32, sig) }, 0);
}

/// Messaging requests per phone.
fn per_phone(fake: &FakeAt) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in fake.requests() {
        if r.path == "/version1/messaging" {
            *counts.entry(r.to().to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Every `sent` row carries a message id the provider gave for its phone.
fn assert_rows_match_provider(rows: &[(String, String, i32, Option<String>)], fake: &FakeAt) {
    let mut given: HashMap<String, Vec<String>> = HashMap::new();
    for r in fake.requests() {
        if let Some(id) = &r.message_id {
            given
                .entry(r.to().to_string())
                .or_default()
                .push(id.clone());
        }
    }
    for (phone, status, _, message_id) in rows {
        assert_eq!(status, "sent", "{phone}");
        let id = message_id
            .as_deref()
            .unwrap_or_else(|| panic!("{phone}: no id"));
        assert!(
            given
                .get(phone)
                .is_some_and(|ids| ids.iter().any(|g| g == id)),
            "{phone}: {id} is not an id the provider gave for it"
        );
    }
}

/// 200 orders taken round three instances: one instance sends, each SMS exactly once.
#[tokio::test]
async fn three_instances_send_each_sms_exactly_once() {
    const N: usize = 200;
    let fake = FakeAt::start().await;
    let cluster = Cluster::start(
        3,
        &fake,
        "rate_per_second = 1000\nburst = 1000\nconcurrency = 8\nrequest_timeout_secs = 5",
    )
    .await;
    let sender = cluster.sender(&[]).await;
    let customers = cluster.customers(N).await;
    let orders = customers
        .iter()
        .enumerate()
        .map(|(i, (id, _))| cluster.clients[i % 3].order(id));
    let made = futures_util::future::join_all(orders).await;
    assert!(made.iter().all(Option::is_some), "every order acknowledged");

    let db = cluster.db.connect().await;
    let took = await_sent(&db, N, Duration::from_secs(60)).await;
    eprintln!("{N} SMS sent {took:?} after the last order");
    // A little longer: nothing else goes out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = per_phone(&fake);
    assert_eq!(fake.requests().len(), N, "provider requests");
    for (_, phone) in &customers {
        assert_eq!(counts.get(phone), Some(&1), "{phone}");
    }
    let rows = notification_rows(&db).await;
    assert_rows_match_provider(&rows, &fake);
    assert!(rows.iter().all(|r| r.2 == 1), "one attempt each");
    assert_eq!(cluster.sender(&[]).await, sender, "the sender stayed");
    for node in &cluster.nodes {
        assert_eq!(node.metric("duka_sms_lost_lease_total").await, 0.0);
    }
    db.close().await.unwrap();
}

/// `rate_per_second = 5`, `burst = 5` on each of three instances: the deployment sends no
/// more than burst + 5·w messages in any w seconds, orders taken on all of them.
#[tokio::test]
async fn the_rate_limit_holds_for_the_deployment() {
    const N: usize = 40;
    const RATE: f64 = 5.0;
    const BURST: usize = 5;
    let fake = FakeAt::start().await;
    let cluster = Cluster::start(
        3,
        &fake,
        "rate_per_second = 5\nburst = 5\nconcurrency = 8\nrequest_timeout_secs = 5",
    )
    .await;
    cluster.sender(&[]).await;
    let customers = cluster.customers(N).await;
    let orders = customers
        .iter()
        .enumerate()
        .map(|(i, (id, _))| cluster.clients[i % 3].order(id));
    futures_util::future::join_all(orders).await;
    let db = cluster.db.connect().await;
    await_sent(&db, N, Duration::from_secs(60)).await;

    let mut times: Vec<Instant> = fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), N);
    times.sort();
    let span = times[N - 1].duration_since(times[0]).as_secs_f64();
    eprintln!("{N} SMS over {span:.2} s");
    // Arrival times, not the limiter's decisions: 250 ms of slack for the way there (the
    // first burst opens new connections to the provider, later sends reuse them, so a send
    // allowed later can arrive right behind the burst). Three senders would be 15/s.
    for i in 0..N {
        for j in i..N {
            let w = times[j].duration_since(times[i]).as_secs_f64();
            let allowed = BURST as f64 + RATE * (w + 0.25);
            assert!(
                (j - i + 1) as f64 <= allowed,
                "{} messages within {w:.3} s; the deployment allows {allowed:.1}",
                j - i + 1
            );
        }
    }
    db.close().await.unwrap();
}

/// Orders keep coming round three instances, and the sender is killed (-9) under load:
/// another instance takes over once the dead one's lease has run out; every SMS is sent
/// within 30 s of the kill, and only messages the dead sender had in flight may go twice.
#[tokio::test]
async fn killing_the_sender_under_load_loses_nothing() {
    const N: usize = 150;
    const CONCURRENCY: usize = 8;
    let fake = FakeAt::start().await;
    fake.set_delay(Duration::from_millis(300));
    let cluster = Cluster::start(
        3,
        &fake,
        &format!(
            "rate_per_second = 50\nburst = 10\nconcurrency = {CONCURRENCY}\n\
             request_timeout_secs = 5"
        ),
    )
    .await;
    let sender = cluster.sender(&[]).await;
    let customers = cluster.customers(N).await;
    let mut killed_at = None;
    let mut acknowledged = 0;
    for (i, (id, _)) in customers.iter().enumerate() {
        if i == N / 3 {
            signal(&cluster.nodes[sender], libc::SIGKILL);
            killed_at = Some(Instant::now());
        }
        let node = i % 3;
        if killed_at.is_some() && node == sender {
            continue;
        }
        if cluster.clients[node].order(id).await.is_some() {
            acknowledged += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = killed_at.unwrap();
    let db = cluster.db.connect().await;
    // Every committed order's SMS, acknowledged or not.
    let committed = notification_rows(&db).await.len();
    assert!(committed >= acknowledged, "{committed} < {acknowledged}");
    let left = Duration::from_secs(30).saturating_sub(killed_at.elapsed());
    await_sent(&db, committed, left).await;
    let recovered = killed_at.elapsed();
    let next = cluster.sender(&[sender]).await;
    assert_ne!(next, sender);

    let counts = per_phone(&fake);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{committed} SMS ({acknowledged} acknowledged orders) all sent {recovered:?} after the \
         kill; {} provider requests, {} phones twice",
        fake.requests().len(),
        twice.len()
    );
    assert!(
        twice.iter().all(|(_, n)| **n == 2) && twice.len() <= CONCURRENCY,
        "only what the dead sender had in flight goes again: {twice:?}"
    );
    let rows = notification_rows(&db).await;
    assert_eq!(rows.len(), committed);
    assert_rows_match_provider(&rows, &fake);
    db.close().await.unwrap();
}

/// The sender is stopped (SIGSTOP) for 25 s under load, then continued: another instance
/// takes over meanwhile; the stalled one, back, sends nothing it had claimed (its claims
/// are an older epoch's and its lease has lapsed) and its late outcomes are refused, so no
/// row is overwritten.
#[tokio::test]
async fn a_stalled_sender_coming_back_repeats_nothing() {
    const N: usize = 90;
    const CONCURRENCY: usize = 4;
    let fake = FakeAt::start().await;
    fake.set_delay(Duration::from_millis(200));
    let cluster = Cluster::start(
        3,
        &fake,
        &format!(
            "rate_per_second = 20\nburst = 5\nconcurrency = {CONCURRENCY}\n\
             request_timeout_secs = 5"
        ),
    )
    .await;
    let sender = cluster.sender(&[]).await;
    let customers = cluster.customers(N).await;
    let order = async |i: usize| {
        let node = if i % 3 == sender { (i + 1) % 3 } else { i % 3 };
        cluster.clients[node].order(&customers[i].0).await
    };
    // A third before the stop, on the other instances (the stalled one cannot answer).
    for i in 0..N / 3 {
        order(i).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    signal(&cluster.nodes[sender], libc::SIGSTOP);
    let stopped = Instant::now();
    for i in N / 3..2 * N / 3 {
        order(i).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wait = Duration::from_secs(25).saturating_sub(stopped.elapsed());
    tokio::time::sleep(wait).await;
    let continued = Instant::now();
    signal(&cluster.nodes[sender], libc::SIGCONT);
    for i in 2 * N / 3..N {
        order(i).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let db = cluster.db.connect().await;
    let committed = notification_rows(&db).await.len();
    await_sent(&db, committed, Duration::from_secs(30)).await;
    // The stalled instance has had time to act on what it held.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let requests = fake.requests();
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let mut repeated_after_continue = Vec::new();
    let mut sorted = requests.clone();
    sorted.sort_by_key(|r| r.at);
    for r in &sorted {
        match first_seen.get(r.to()) {
            Some(_) if r.at >= continued => repeated_after_continue.push(r.to().to_string()),
            Some(_) => {}
            None => {
                first_seen.insert(r.to().to_string(), r.at);
            }
        }
    }
    let counts = per_phone(&fake);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let lost = cluster.nodes[sender]
        .metric("duka_sms_lost_lease_total")
        .await;
    eprintln!(
        "{committed} SMS, {} provider requests; {} phones twice (the stalled sender's sends in \
         flight); {lost} of its outcomes refused",
        requests.len(),
        twice.len()
    );
    assert!(
        repeated_after_continue.is_empty(),
        "the stalled sender sent again after it came back: {repeated_after_continue:?}"
    );
    assert!(
        twice.iter().all(|(_, n)| **n == 2) && twice.len() <= CONCURRENCY,
        "only what the stalled sender had in flight went twice: {twice:?}"
    );
    assert!(
        lost >= twice.len() as f64,
        "each message it sent and another sent again has its late outcome refused"
    );
    let rows = notification_rows(&db).await;
    assert_eq!(rows.len(), committed);
    assert_rows_match_provider(&rows, &fake);
    // One sender, and not the stalled one (its lease was taken over).
    let now = cluster.sender(&[]).await;
    assert_ne!(now, sender);
    db.close().await.unwrap();
}
