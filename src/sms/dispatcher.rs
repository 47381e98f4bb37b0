//! The SmsDispatcher actor drains the outbox: `queued` notification rows, written in the
//! same transaction as the order they are about.
//!
//! It learns of new rows from the Repository after each commit (`Committed.queued`) and, at
//! start and every `SWEEP_EVERY`, from the table itself: `queued` rows that are due and
//! `sending` rows whose lease expired (their sender crashed). So a crash loses nothing; at
//! worst a message whose sender died mid-request is sent again after its lease.
//!
//! Each send is a spawned future (at most `sms.concurrency` at once): wait for the global
//! rate limiter, claim the row through the write path (queued -> sending, with a lease),
//! call the provider outside any transaction, record the outcome through the write path.
//! The per-recipient limit is checked before a send starts, so a customer over the limit
//! waits without holding a slot that other customers' messages could use.

use super::{SendError, SmsProvider};
use crate::config::Sms;
use crate::domain::phone::mask;
use crate::domain::time::Timestamp;
use crate::store::reads::DueNotification;
use crate::store::repository::{DueNotifications, Write};
use crate::store::writes::{Committed, SendOutcome, WriteOp, WriteReply};
use crate::store::{Repository, StoreError};
use actix::prelude::*;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::Rng;
use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    provider: Arc<dyn SmsProvider>,
    cfg: Arc<DispatchConfig>,
    global: Arc<DefaultDirectRateLimiter>,
    per_recipient: DefaultKeyedRateLimiter<String>,
    /// Due now, in order.
    ready: VecDeque<DueNotification>,
    /// Every message this dispatcher holds: ready, waiting for its time, or being sent.
    known: HashSet<Uuid>,
    in_flight: usize,
    sweeping: bool,
    stopping: Arc<AtomicBool>,
    drained: Vec<oneshot::Sender<()>>,
}

impl SmsDispatcher {
    pub fn new(
        repo: Addr<Repository>,
        provider: Arc<dyn SmsProvider>,
        cfg: DispatchConfig,
    ) -> Self {
        let global =
            Quota::per_second(nonzero(cfg.rate_per_second)).allow_burst(nonzero(cfg.burst));
        let per_recipient = Quota::per_minute(nonzero(cfg.per_recipient_per_minute));
        Self {
            repo,
            provider,
            cfg: Arc::new(cfg),
            global: Arc::new(RateLimiter::direct(global)),
            per_recipient: RateLimiter::keyed(per_recipient),
            ready: VecDeque::new(),
            known: HashSet::new(),
            in_flight: 0,
            sweeping: false,
            stopping: Arc::new(AtomicBool::new(false)),
            drained: Vec::new(),
        }
    }

    fn is_draining(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Takes a message in hand unless it is already held (or too many are).
    fn track(&mut self, due: DueNotification, ctx: &mut Context<Self>) {
        if self.known.len() >= MAX_TRACKED || !self.known.insert(due.id) {
            return;
        }
        self.schedule(due, ctx);
    }

    fn schedule(&mut self, due: DueNotification, ctx: &mut Context<Self>) {
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

    /// Starts sends while there are free slots and messages whose recipient may get one.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight < self.cfg.concurrency && !self.is_draining() {
            let Some(due) = self.ready.pop_front() else {
                break;
            };
            if let Err(not_until) = self.per_recipient.check_key(&due.phone) {
                let wait = not_until.wait_time_from(self.per_recipient.clock().now());
                let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                let due = DueNotification {
                    not_before: Timestamp::now().millis().saturating_add(wait_ms.max(1)),
                    ..due
                };
                self.schedule(due, ctx);
                continue;
            }
            self.in_flight += 1;
            let job = Job {
                repo: self.repo.clone(),
                provider: self.provider.clone(),
                cfg: self.cfg.clone(),
                global: self.global.clone(),
                stopping: self.stopping.clone(),
            };
            ctx.spawn(
                async move { job.run(due.id).await }
                    .into_actor(self)
                    .map(move |next, act, ctx| act.finished(due, next, ctx)),
            );
        }
    }

    fn finished(&mut self, due: DueNotification, next: Next, ctx: &mut Context<Self>) {
        self.in_flight -= 1;
        match next {
            Next::Forget => {
                self.known.remove(&due.id);
            }
            Next::At(at) => self.schedule(
                DueNotification {
                    not_before: at.millis(),
                    ..due
                },
                ctx,
            ),
        }
        if self.is_draining() && self.in_flight == 0 {
            for tx in self.drained.drain(..) {
                let _ = tx.send(());
            }
        }
        self.pump(ctx);
    }

    /// Loads what the table holds for us: due messages and abandoned sends.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let room = MAX_TRACKED
            .saturating_sub(self.known.len())
            .min(SWEEP_LIMIT);
        if self.sweeping || self.is_draining() || room == 0 {
            return;
        }
        self.sweeping = true;
        let now = Timestamp::now();
        let query = DueNotifications {
            ids: None,
            now,
            horizon: now.plus_millis(i64::try_from(SWEEP_EVERY.as_millis()).unwrap_or(0)),
            limit: room as u64,
        };
        ctx.spawn(
            self.repo
                .send(query)
                .into_actor(self)
                .map(|found, act, ctx| {
                    act.sweeping = false;
                    act.take(found, ctx);
                }),
        );
    }

    fn take(
        &mut self,
        found: Result<Result<Vec<DueNotification>, StoreError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        match found {
            Ok(Ok(rows)) => {
                for due in rows {
                    self.track(due, ctx);
                }
                self.pump(ctx);
            }
            // Still in the table: the next sweep finds them.
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot load SMS to send; retrying later"),
            Err(e) => tracing::warn!(error = %e, "cannot load SMS to send; retrying later"),
        }
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

impl Handler<Committed> for SmsDispatcher {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Self::Context) {
        if msg.queued.is_empty() || self.is_draining() || self.known.len() >= MAX_TRACKED {
            return;
        }
        let now = Timestamp::now();
        let query = DueNotifications {
            limit: msg.queued.len() as u64,
            ids: Some(msg.queued),
            now,
            horizon: now,
        };
        ctx.spawn(
            self.repo
                .send(query)
                .into_actor(self)
                .map(|found, act, ctx| act.take(found, ctx)),
        );
    }
}

/// Stop starting sends and answer once the sends in flight have finished; what is still
/// queued stays in the table for the next start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for SmsDispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Self::Context) -> Self::Result {
        self.stopping.store(true, Ordering::Relaxed);
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
    /// Done with it (sent, failed, taken by another sender, or gone).
    Forget,
    /// Try again at this time.
    At(Timestamp),
}

/// One send, outside the actor.
struct Job {
    repo: Addr<Repository>,
    provider: Arc<dyn SmsProvider>,
    cfg: Arc<DispatchConfig>,
    global: Arc<DefaultDirectRateLimiter>,
    stopping: Arc<AtomicBool>,
}

fn later(d: Duration) -> Timestamp {
    Timestamp::now().plus_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Job {
    async fn run(self, id: Uuid) -> Next {
        self.global.until_ready().await;
        if self.stopping.load(Ordering::Relaxed) {
            return Next::Forget;
        }
        let claim = WriteOp::ClaimNotification {
            id,
            lease_until: later(self.cfg.lease),
        };
        let n = match self.repo.send(Write(claim)).await {
            Ok(Ok(WriteReply::Notification(n))) => n,
            Ok(Err(StoreError::Conflict(_) | StoreError::NotFound(_))) | Ok(Ok(_)) => {
                return Next::Forget;
            }
            Ok(Err(e)) => {
                tracing::warn!(notification = %id, error = %e, "cannot claim an SMS; retrying later");
                return Next::At(later(self.cfg.retry_base));
            }
            Err(_) => return Next::Forget,
        };
        let attempts = u32::try_from(n.attempts).unwrap_or(u32::MAX);
        let to = mask(&n.phone);
        let provider = self.provider.name();
        let (outcome, next) = match self.provider.send(&n.phone, &n.message).await {
            Ok(accepted) => {
                tracing::info!(notification = %id, %to, provider, attempts,
                    provider_message_id = %accepted.message_id, "SMS sent");
                let outcome = SendOutcome::Sent {
                    provider_message_id: accepted.message_id,
                    cost: accepted.cost,
                };
                (outcome, Next::Forget)
            }
            Err(SendError::Permanent(error)) => {
                tracing::warn!(notification = %id, %to, provider, attempts, %error, "SMS failed");
                (SendOutcome::Failed { error }, Next::Forget)
            }
            Err(SendError::Retry(error)) if attempts >= self.cfg.max_attempts => {
                tracing::warn!(notification = %id, %to, provider, attempts, %error,
                    "SMS failed; no attempts left");
                let error = format!("{error} (gave up after {attempts} attempts)");
                (SendOutcome::Failed { error }, Next::Forget)
            }
            Err(SendError::Retry(error)) => {
                let at = later(self.cfg.backoff(attempts));
                tracing::info!(notification = %id, %to, provider, attempts, %error,
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
        if self.record(id, outcome).await {
            next
        } else {
            Next::Forget
        }
    }

    /// Persists an outcome, retrying while the database is unavailable; the lease keeps
    /// other senders away meanwhile. `false` when it could not be recorded (the message is
    /// then sent again once its lease expires).
    async fn record(&self, id: Uuid, outcome: SendOutcome) -> bool {
        let mut pause = Duration::from_millis(200);
        for _ in 0..6 {
            let op = WriteOp::RecordSend {
                id,
                outcome: outcome.clone(),
            };
            match self.repo.send(Write(op)).await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) if !e.is_infrastructure() => {
                    tracing::warn!(notification = %id, error = %e, "SMS outcome not recorded");
                    return false;
                }
                Ok(Err(e)) => {
                    tracing::warn!(notification = %id, error = %e, "cannot record an SMS outcome yet");
                }
                Err(_) => return false,
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        tracing::error!(notification = %id, "SMS outcome lost; it is sent again after its lease");
        false
    }
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
