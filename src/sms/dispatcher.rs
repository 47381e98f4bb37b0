//! The SmsDispatcher actor drains the outbox: `queued` notification rows, written in the
//! same transaction as the order they are about.
//!
//! It learns of new rows from the Repository after each commit (`SmsQueued`: id, phone and
//! due time, so nothing is read back) and, at start and every `SWEEP_EVERY`, from the table
//! itself: `queued` rows that are due and `sending` rows whose lease expired (their sender
//! crashed). So a crash loses nothing; at worst a message whose sender died mid-request is
//! sent again after its lease.
//!
//! The bookkeeping is done in bulk, so that SMS never competes with order taking for the
//! single writer: messages that may go now (the per-recipient and global limits allow
//! them, and at most `sms.concurrency` are in hand) are claimed with one write; each is
//! handed to the provider outside any transaction; the outcomes that have come back are
//! recorded with one write. While a claim or a record write is in flight, the next ones
//! gather, so the number of writes per message falls as the load rises.

use super::{SendError, SmsProvider};
use crate::config::Sms;
use crate::domain::event;
use crate::domain::phone::mask;
use crate::domain::time::Timestamp;
use crate::store::batch::QueuedSms;
use crate::store::ops::{ClaimedSms, SendOutcome, SendRecord, WriteOp, WriteReply};
use crate::store::reader::DueNotifications;
use crate::store::repository::{SmsQueued, Write};
use crate::store::{Reader, Repository, StoreError};
use actix::prelude::*;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::Rng;
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;

/// How often the table is searched for due and abandoned messages.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// The most messages kept in memory; the rest wait in the table for a later sweep.
const MAX_TRACKED: usize = 10_000;
/// The most rows one sweep loads.
const SWEEP_LIMIT: usize = 1_000;
/// How often idle per-recipient limiter entries are dropped.
const RETAIN_EVERY: Duration = Duration::from_secs(60);
/// Attempts at recording outcomes while the database is unavailable; after that the
/// messages are sent again once their lease runs out.
const RECORD_TRIES: u32 = 6;

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub lease: Duration,
    pub concurrency: usize,
    pub rate_per_second: u32,
    pub burst: u32,
    pub per_recipient_per_minute: u32,
}

impl From<&Sms> for DispatchConfig {
    fn from(s: &Sms) -> Self {
        Self {
            max_attempts: s.max_attempts,
            retry_base: Duration::from_millis(s.retry_base_ms),
            retry_max: Duration::from_millis(s.retry_max_ms),
            lease: Duration::from_secs(s.lease_secs),
            concurrency: usize::try_from(s.concurrency).unwrap_or(1).max(1),
            rate_per_second: s.rate_per_second,
            burst: s.burst,
            per_recipient_per_minute: s.per_recipient_per_minute,
        }
    }
}

impl DispatchConfig {
    /// The delay before attempt `attempts + 1`: exponential from `retry_base`, capped at
    /// `retry_max`, with "equal jitter" (half fixed, half random) so that messages failed
    /// together do not all come back together.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self
            .retry_base
            .saturating_mul(1u32 << exp)
            .min(self.retry_max);
        let half = full / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

pub struct SmsDispatcher {
    repo: Addr<Repository>,
    reader: Addr<Reader>,
    provider: Arc<dyn SmsProvider>,
    cfg: Arc<DispatchConfig>,
    global: DefaultDirectRateLimiter,
    per_recipient: DefaultKeyedRateLimiter<String>,
    /// Due now, in order.
    ready: VecDeque<QueuedSms>,
    /// Every message this dispatcher holds: ready, waiting for its time, or in hand.
    known: HashSet<Uuid>,
    /// Messages being claimed, sent, or waiting for their outcome to be recorded.
    in_flight: usize,
    claiming: bool,
    /// A later `pump` is already scheduled (the global limit said to wait).
    pump_later: bool,
    /// Outcomes waiting to be recorded, with what to do with each message afterwards.
    outcomes: Vec<Sent>,
    recording: bool,
    record_failures: u32,
    sweeping: bool,
    stopping: bool,
    drained: Vec<oneshot::Sender<()>>,
}

/// A send attempt that came back, waiting to be recorded.
struct Sent {
    due: QueuedSms,
    record: SendRecord,
    next: Next,
}

impl SmsDispatcher {
    pub fn new(
        repo: Addr<Repository>,
        reader: Addr<Reader>,
        provider: Arc<dyn SmsProvider>,
        cfg: DispatchConfig,
    ) -> Self {
        let global =
            Quota::per_second(nonzero(cfg.rate_per_second)).allow_burst(nonzero(cfg.burst));
        let per_recipient = Quota::per_minute(nonzero(cfg.per_recipient_per_minute));
        Self {
            repo,
            reader,
            provider,
            cfg: Arc::new(cfg),
            global: RateLimiter::direct(global),
            per_recipient: RateLimiter::keyed(per_recipient),
            ready: VecDeque::new(),
            known: HashSet::new(),
            in_flight: 0,
            claiming: false,
            pump_later: false,
            outcomes: Vec::new(),
            recording: false,
            record_failures: 0,
            sweeping: false,
            stopping: false,
            drained: Vec::new(),
        }
    }

    /// Takes a message in hand unless it is already held (or too many are).
    fn track(&mut self, due: QueuedSms, ctx: &mut Context<Self>) {
        if self.known.len() >= MAX_TRACKED || !self.known.insert(due.id) {
            return;
        }
        self.schedule(due, ctx);
    }

    fn schedule(&mut self, due: QueuedSms, ctx: &mut Context<Self>) {
        let wait = due.not_before - Timestamp::now().millis();
        match u64::try_from(wait) {
            Ok(ms) if ms > 0 => {
                ctx.run_later(Duration::from_millis(ms), move |act, ctx| {
                    act.ready.push_back(due);
                    act.pump(ctx);
                });
            }
            _ => self.ready.push_back(due),
        }
    }

    fn forget(&mut self, id: Uuid) {
        self.known.remove(&id);
    }

    /// Claims, with one write, every ready message that may go now.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.claiming || self.stopping {
            return;
        }
        let mut take = Vec::new();
        while self.in_flight + take.len() < self.cfg.concurrency {
            let Some(due) = self.ready.pop_front() else {
                break;
            };
            if let Err(not_until) = self.per_recipient.check_key(&due.phone) {
                let wait = not_until.wait_time_from(self.per_recipient.clock().now());
                let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                let due = QueuedSms {
                    not_before: Timestamp::now().millis().saturating_add(wait_ms.max(1)),
                    ..due
                };
                self.schedule(due, ctx);
                continue;
            }
            if let Err(not_until) = self.global.check() {
                self.ready.push_front(due);
                if !self.pump_later {
                    self.pump_later = true;
                    let wait = not_until.wait_time_from(self.global.clock().now());
                    ctx.run_later(wait.max(Duration::from_millis(1)), |act, ctx| {
                        act.pump_later = false;
                        act.pump(ctx);
                    });
                }
                break;
            }
            take.push(due);
        }
        if take.is_empty() {
            return;
        }
        self.claiming = true;
        self.in_flight += take.len();
        let claim = WriteOp::ClaimSms {
            ids: take.iter().map(|d| d.id).collect(),
            lease_until: later(self.cfg.lease),
        };
        ctx.spawn(
            self.repo
                .send(Write::new(claim, event::Actor::sms()))
                .into_actor(self)
                .map(move |claimed, act, ctx| act.claimed(take, claimed, ctx)),
        );
    }

    fn claimed(
        &mut self,
        asked: Vec<QueuedSms>,
        claimed: Result<Result<WriteReply, StoreError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        self.claiming = false;
        match claimed {
            Ok(Ok(WriteReply::Claimed(claimed))) => {
                let mut by_id: HashMap<Uuid, ClaimedSms> =
                    claimed.into_iter().map(|c| (c.id, c)).collect();
                for due in asked {
                    match by_id.remove(&due.id) {
                        Some(sms) => self.send(due, sms, ctx),
                        // Another sender has it, it was sent, failed or is gone.
                        None => {
                            self.in_flight -= 1;
                            self.forget(due.id);
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, count = asked.len(), "cannot claim SMS; retrying later");
                for due in asked {
                    self.in_flight -= 1;
                    let not_before = later(self.cfg.retry_base).millis();
                    self.schedule(QueuedSms { not_before, ..due }, ctx);
                }
            }
            Ok(Ok(_)) | Err(_) => {
                for due in asked {
                    self.in_flight -= 1;
                    self.forget(due.id);
                }
            }
        }
        self.after_change(ctx);
    }

    /// One provider call, outside the actor.
    fn send(&mut self, due: QueuedSms, sms: ClaimedSms, ctx: &mut Context<Self>) {
        let provider = self.provider.clone();
        let cfg = self.cfg.clone();
        ctx.spawn(
            async move { attempt(&*provider, &cfg, &sms).await }
                .into_actor(self)
                .map(move |(record, next), act, ctx| {
                    act.outcomes.push(Sent { due, record, next });
                    act.record(ctx);
                }),
        );
    }

    /// Records, with one write, every outcome that has come back.
    fn record(&mut self, ctx: &mut Context<Self>) {
        if self.recording || self.outcomes.is_empty() {
            return;
        }
        self.recording = true;
        let sent = std::mem::take(&mut self.outcomes);
        let op = WriteOp::RecordSends(sent.iter().map(|s| s.record.clone()).collect());
        ctx.spawn(
            self.repo
                .send(Write::new(op, event::Actor::sms()))
                .into_actor(self)
                .map(move |recorded, act, ctx| act.recorded(sent, recorded, ctx)),
        );
    }

    fn recorded(
        &mut self,
        sent: Vec<Sent>,
        recorded: Result<Result<WriteReply, StoreError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        self.recording = false;
        let stored: HashSet<Uuid> = match recorded {
            Ok(Ok(WriteReply::Recorded(ids))) => ids.into_iter().collect(),
            Ok(Err(e)) if e.is_infrastructure() && self.record_failures + 1 < RECORD_TRIES => {
                // The leases keep other senders away meanwhile.
                self.record_failures += 1;
                tracing::warn!(error = %e, count = sent.len(), "cannot record SMS outcomes yet");
                let mut sent = sent;
                sent.append(&mut self.outcomes);
                self.outcomes = sent;
                let pause = Duration::from_millis(200) * (1 << self.record_failures);
                ctx.run_later(pause, |act, ctx| act.record(ctx));
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, count = sent.len(),
                    "SMS outcomes lost; those messages are sent again after their lease");
                HashSet::new()
            }
            Ok(Ok(_)) | Err(_) => HashSet::new(),
        };
        self.record_failures = 0;
        for Sent { due, record, next } in sent {
            self.in_flight -= 1;
            if !stored.contains(&record.id) {
                tracing::warn!(notification = %record.id,
                    "SMS outcome not recorded: the message no longer held this claim");
                self.forget(due.id);
                continue;
            }
            match next {
                Next::Forget => self.forget(due.id),
                Next::At(at) => self.schedule(
                    QueuedSms {
                        not_before: at.millis(),
                        ..due
                    },
                    ctx,
                ),
            }
        }
        self.after_change(ctx);
    }

    fn after_change(&mut self, ctx: &mut Context<Self>) {
        if self.stopping && self.in_flight == 0 {
            for tx in self.drained.drain(..) {
                let _ = tx.send(());
            }
        }
        self.pump(ctx);
        self.record(ctx);
    }

    /// Loads what the table holds for us: due messages and abandoned sends.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let room = MAX_TRACKED
            .saturating_sub(self.known.len())
            .min(SWEEP_LIMIT);
        if self.sweeping || self.stopping || room == 0 {
            return;
        }
        self.sweeping = true;
        let now = Timestamp::now();
        let query = DueNotifications {
            now,
            horizon: now.plus_millis(i64::try_from(SWEEP_EVERY.as_millis()).unwrap_or(0)),
            limit: room as u64,
        };
        ctx.spawn(
            self.reader
                .send(query)
                .into_actor(self)
                .map(|found, act, ctx| {
                    act.sweeping = false;
                    match found {
                        Ok(Ok(rows)) => {
                            for due in rows {
                                act.track(due, ctx);
                            }
                            act.pump(ctx);
                        }
                        // Still in the table: the next sweep finds them.
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "cannot load SMS to send; retrying later")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot load SMS to send; retrying later")
                        }
                    }
                }),
        );
    }
}

impl Actor for SmsDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::store::repository::UNBOUNDED_MAILBOX);
        self.sweep(ctx);
        ctx.run_interval(SWEEP_EVERY, |act, ctx| act.sweep(ctx));
        ctx.run_interval(RETAIN_EVERY, |act, _| {
            act.per_recipient.retain_recent();
            act.per_recipient.shrink_to_fit();
        });
    }
}

impl Handler<SmsQueued> for SmsDispatcher {
    type Result = ();

    fn handle(&mut self, msg: SmsQueued, ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        for due in msg.0 {
            self.track(due, ctx);
        }
        self.pump(ctx);
    }
}

/// Stop starting sends and answer once the sends in flight have finished and their
/// outcomes are recorded; what is still queued stays in the table for the next start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for SmsDispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        self.ready.clear();
        if self.in_flight == 0 {
            return Box::pin(async {});
        }
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// What to do with a message after a send attempt.
enum Next {
    /// Done with it (sent or failed).
    Forget,
    /// Try again at this time.
    At(Timestamp),
}

fn later(d: Duration) -> Timestamp {
    Timestamp::now().plus_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One provider call for a claimed message, and what it came to.
async fn attempt(
    provider: &dyn SmsProvider,
    cfg: &DispatchConfig,
    sms: &ClaimedSms,
) -> (SendRecord, Next) {
    let id = sms.id;
    let attempts = u32::try_from(sms.attempts).unwrap_or(u32::MAX);
    let to = mask(&sms.phone);
    let name = provider.name();
    let (outcome, next) = match provider.send(&sms.phone, &sms.message).await {
        Ok(accepted) => {
            tracing::info!(notification = %id, %to, provider = name, attempts,
                provider_message_id = %accepted.message_id, "SMS sent");
            let outcome = SendOutcome::Sent {
                provider_message_id: accepted.message_id,
                cost: accepted.cost,
            };
            (outcome, Next::Forget)
        }
        Err(SendError::Permanent(error)) => {
            tracing::warn!(notification = %id, %to, provider = name, attempts, %error, "SMS failed");
            (SendOutcome::Failed { error }, Next::Forget)
        }
        Err(SendError::Retry(error)) if attempts >= cfg.max_attempts => {
            tracing::warn!(notification = %id, %to, provider = name, attempts, %error,
                "SMS failed; no attempts left");
            let error = format!("{error} (gave up after {attempts} attempts)");
            (SendOutcome::Failed { error }, Next::Forget)
        }
        Err(SendError::Retry(error)) => {
            let at = later(cfg.backoff(attempts));
            tracing::info!(notification = %id, %to, provider = name, attempts, %error,
                retry_at = %at.to_rfc3339(), "SMS not sent; will retry");
            (
                SendOutcome::Retry {
                    error,
                    next_attempt_at: at,
                },
                Next::At(at),
            )
        }
    };
    let record = SendRecord {
        id,
        lease_until: sms.lease_until,
        outcome,
    };
    (record, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let cfg = DispatchConfig {
            max_attempts: 8,
            retry_base: Duration::from_millis(1000),
            retry_max: Duration::from_millis(10_000),
            lease: Duration::from_secs(60),
            concurrency: 1,
            rate_per_second: 1,
            burst: 1,
            per_recipient_per_minute: 1,
        };
        for _ in 0..50 {
            let b1 = cfg.backoff(1);
            assert!((500..=1000).contains(&b1.as_millis()), "{b1:?}");
            let b3 = cfg.backoff(3);
            assert!((2000..=4000).contains(&b3.as_millis()), "{b3:?}");
            let b20 = cfg.backoff(20);
            assert!((5000..=10_000).contains(&b20.as_millis()), "{b20:?}");
        }
    }
}
