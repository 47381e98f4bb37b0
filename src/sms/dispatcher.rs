//! The SmsDispatcher actor drains the outbox: `queued` notification rows, written in the
//! same transaction as the order they are about.
//!
//! One instance of the deployment sends at a time: the holder of the sender lease (see
//! `lease`), which every dispatcher tries to take or renew every quarter of
//! `sms.lease_secs`. The others keep trying and otherwise idle, so the governor limits
//! below are the deployment's. A dispatcher that becomes the sender searches the table at
//! once: its messages are the `queued` rows that are due and every `sending` row it is not
//! sending itself (claimed under an older epoch, their sender is dead or fenced off). So a
//! restarted instance sends again what it had in hand within a second or two, and another
//! instance takes over a dead sender's messages once its lease has run out.
//!
//! The sender learns of new rows from its Repository after each commit (`SmsQueued`: id,
//! phone and due time, so nothing is read back) and from the table: every `SWEEP_EVERY`,
//! and on PostgreSQL (where other instances take orders too) every `POLL_EVERY` while it
//! has little in hand.
//!
//! The bookkeeping is done in bulk, so that SMS never competes with order taking for the
//! single writer: messages that may go now (the per-recipient and global limits allow
//! them, and at most `sms.concurrency` are in hand) are claimed with one write, fenced by
//! the lease; each is handed to the provider outside any transaction, and only while the
//! lease it was claimed under still holds; the outcomes that have come back are recorded
//! with one write, each only if its message still carries its claim's token. While a claim
//! or a record write is in flight, the next ones gather, so the number of writes per
//! message falls as the load rises.

use super::lease::{self, Identity};
use super::{SendError, SmsProvider};
use crate::config::Sms;
use crate::domain::event;
use crate::domain::phone::mask;
use crate::domain::time::Timestamp;
use crate::store::batch::QueuedSms;
use crate::store::ops::{
    Claim, ClaimedSms, SendOutcome, SendRecord, SenderTerm, WriteOp, WriteReply,
};
use crate::store::reader::DueNotifications;
use crate::store::repository::{SmsQueued, Write};
use crate::store::{Reader, Repository, StoreError};
use actix::prelude::*;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::Rng;
use sea_orm::{DatabaseConnection, DbBackend};
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

/// How often the sender searches the table for due and abandoned messages.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// On PostgreSQL, how often the sender looks for messages that other instances queued,
/// while it has little ready to send.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// The most messages kept in memory; the rest wait in the table for a later sweep.
const MAX_TRACKED: usize = 10_000;
/// The most rows one sweep loads.
const SWEEP_LIMIT: usize = 1_000;
/// How often idle per-recipient limiter entries are dropped.
const RETAIN_EVERY: Duration = Duration::from_secs(60);
/// Attempts at recording outcomes while the database is unavailable; after that the
/// messages stay `sending` and a later sweep (of this sender or the next) sends them again.
const RECORD_TRIES: u32 = 6;

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// The sender lease (`sms.lease_secs`): another instance may take over this long after
    /// the sender last renewed it.
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

    /// How often the lease is taken or renewed: three tries before it could run out.
    fn renew_every(&self) -> Duration {
        (self.lease / 4).max(Duration::from_millis(100))
    }

    /// How long after sending a lease statement this process may act on its answer. The
    /// database grants the lease from when it runs the statement, which is later; a fifth
    /// is kept back besides, so that no send starts just before the lease could lapse.
    fn trust(&self) -> Duration {
        self.lease - self.lease / 5
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// This process holds the sender lease with `epoch`, as far as it knows until `until`.
#[derive(Debug, Clone, Copy)]
struct Term {
    epoch: i64,
    until: Instant,
}

/// What a lease statement came to.
enum LeaseAnswer {
    Held(i64),
    /// Another process holds it (as the database said just after).
    Other(Option<lease::Holder>),
    Failed(String),
}

pub struct SmsDispatcher {
    repo: Addr<Repository>,
    reader: Addr<Reader>,
    db: DatabaseConnection,
    me: Arc<Identity>,
    provider: Arc<dyn SmsProvider>,
    cfg: Arc<DispatchConfig>,
    global: DefaultDirectRateLimiter,
    per_recipient: DefaultKeyedRateLimiter<String>,
    /// `Some` while this process is the sender.
    term: Option<Term>,
    acquiring: bool,
    /// Lease statements failed in a row (the first is a warning, the rest are quieter).
    lease_failures: u32,
    /// The other instance last seen holding the lease (for the log).
    other_holder: Option<String>,
    /// Due now, in order.
    ready: VecDeque<QueuedSms>,
    /// Every message this dispatcher holds: ready, waiting for its time, or in hand. A
    /// message being sent stays here until its outcome is recorded, so that no sweep (of
    /// this term or a later one) takes it again meanwhile.
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
        db: DatabaseConnection,
        me: Identity,
        provider: Arc<dyn SmsProvider>,
        cfg: DispatchConfig,
    ) -> Self {
        let global =
            Quota::per_second(nonzero(cfg.rate_per_second)).allow_burst(nonzero(cfg.burst));
        let per_recipient = Quota::per_minute(nonzero(cfg.per_recipient_per_minute));
        Self {
            repo,
            reader,
            db,
            me: Arc::new(me),
            provider,
            cfg: Arc::new(cfg),
            global: RateLimiter::direct(global),
            per_recipient: RateLimiter::keyed(per_recipient),
            term: None,
            acquiring: false,
            lease_failures: 0,
            other_holder: None,
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

    /// The epoch this process may claim and send under now, if it is the sender.
    fn epoch(&self) -> Option<i64> {
        self.term
            .filter(|t| Instant::now() < t.until)
            .map(|t| t.epoch)
    }

    /// Takes or renews the sender lease, with one statement.
    fn acquire(&mut self, ctx: &mut Context<Self>) {
        if self.acquiring || self.stopping {
            return;
        }
        self.acquiring = true;
        let sent = Instant::now();
        let (db, me, lease) = (self.db.clone(), self.me.clone(), self.cfg.lease);
        let answer = async move {
            let attempt = async {
                match lease::acquire(&db, &me, lease).await {
                    Ok(Some(epoch)) => LeaseAnswer::Held(epoch),
                    Ok(None) => LeaseAnswer::Other(lease::holder(&db).await.ok().flatten()),
                    Err(e) => LeaseAnswer::Failed(e.to_string()),
                }
            };
            tokio::time::timeout(lease / 2, attempt)
                .await
                .unwrap_or_else(|_| {
                    LeaseAnswer::Failed("the database did not answer in time".into())
                })
        };
        ctx.spawn(answer.into_actor(self).map(move |answer, act, ctx| {
            act.acquiring = false;
            act.lease_answered(answer, sent, ctx);
        }));
    }

    fn lease_answered(&mut self, answer: LeaseAnswer, sent: Instant, ctx: &mut Context<Self>) {
        match answer {
            LeaseAnswer::Held(epoch) => {
                if self.lease_failures > 0 {
                    tracing::info!("the SMS sender lease answers again");
                }
                self.lease_failures = 0;
                if self.stopping {
                    // Drain gives the lease up once the sends in flight are done.
                    return;
                }
                let until = sent + self.cfg.trust();
                let renewed = self.term.is_some_and(|t| t.epoch == epoch);
                // While the lease was not trusted, messages queued here were left to the
                // table: look for them now.
                let lapsed = self.term.is_none_or(|t| Instant::now() >= t.until);
                if !renewed {
                    // Whatever the last term had in hand (not yet claimed) is let go.
                    self.step_down();
                    tracing::info!(
                        instance = self.me.short(),
                        epoch,
                        "this instance is now the SMS sender"
                    );
                    self.other_holder = None;
                }
                self.term = Some(Term { epoch, until });
                crate::metrics::sms_sender(true);
                if lapsed || !renewed {
                    // A new term: what the last sender left, due messages and those it was
                    // sending.
                    self.sweep(ctx);
                }
                self.pump(ctx);
            }
            LeaseAnswer::Other(holder) => {
                self.lease_failures = 0;
                if let Some(term) = self.term {
                    tracing::warn!(
                        epoch = term.epoch,
                        "this instance is no longer the SMS sender: another took the lease over"
                    );
                    self.step_down();
                }
                if let Some(h) = holder
                    && self.other_holder.as_deref() != Some(h.instance.as_str())
                {
                    tracing::info!(
                        sender = lease::short(&h.instance),
                        epoch = h.epoch,
                        "another instance is the SMS sender"
                    );
                    self.other_holder = Some(h.instance);
                }
            }
            LeaseAnswer::Failed(error) => {
                self.lease_failures += 1;
                if self.lease_failures == 1 {
                    tracing::warn!(%error, "cannot take or renew the SMS sender lease; retrying");
                } else {
                    tracing::debug!(%error, "cannot take or renew the SMS sender lease");
                }
                self.check_lapse();
            }
        }
    }

    /// Stops being the sender once the lease may have run out unrenewed.
    fn check_lapse(&mut self) {
        if let Some(term) = self.term
            && Instant::now() >= term.until
        {
            tracing::warn!(
                epoch = term.epoch,
                "the SMS sender lease was not renewed in time; sending stops until it is held again"
            );
            self.step_down();
        }
    }

    /// Lets go of what is not in hand yet: another sender (or a later term) sends it.
    fn step_down(&mut self) {
        if self.term.take().is_some() {
            crate::metrics::sms_sender(false);
        }
        for due in std::mem::take(&mut self.ready) {
            self.known.remove(&due.id);
        }
    }

    /// Takes a message in hand unless it is already held (or too many are), while this
    /// process is the sender.
    fn track(&mut self, due: QueuedSms, ctx: &mut Context<Self>) {
        if self.epoch().is_none() || self.known.len() >= MAX_TRACKED || !self.known.insert(due.id) {
            return;
        }
        self.schedule(due, ctx);
    }

    fn schedule(&mut self, due: QueuedSms, ctx: &mut Context<Self>) {
        if self.epoch().is_none() {
            self.forget(due.id);
            return;
        }
        let wait = due.not_before - Timestamp::now().millis();
        match u64::try_from(wait) {
            Ok(ms) if ms > 0 => {
                ctx.run_later(Duration::from_millis(ms), move |act, ctx| {
                    if act.epoch().is_none() {
                        act.forget(due.id);
                        return;
                    }
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
        let Some(epoch) = self.epoch() else {
            return;
        };
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
            sender: SenderTerm {
                holder: self.me.instance.clone(),
                boot: self.me.boot.clone(),
                epoch,
            },
        };
        ctx.spawn(
            self.repo
                .send(Write::new(claim, event::Actor::sms()))
                .into_actor(self)
                .map(move |claimed, act, ctx| act.claimed(take, epoch, claimed, ctx)),
        );
    }

    fn claimed(
        &mut self,
        asked: Vec<QueuedSms>,
        epoch: i64,
        claimed: Result<Result<WriteReply, StoreError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        self.claiming = false;
        match claimed {
            Ok(Ok(WriteReply::Claimed(Claim { fenced: true, .. }))) => {
                tracing::warn!(
                    epoch,
                    count = asked.len(),
                    "claim refused: this instance does not hold the SMS sender lease with that epoch"
                );
                for due in asked {
                    self.in_flight -= 1;
                    self.forget(due.id);
                }
                if self.term.is_some_and(|t| t.epoch == epoch) {
                    self.step_down();
                }
                self.acquire(ctx);
            }
            Ok(Ok(WriteReply::Claimed(Claim { taken, .. }))) => {
                let mut by_id: HashMap<Uuid, ClaimedSms> =
                    taken.into_iter().map(|c| (c.id, c)).collect();
                // A claim is acted on only in the term it was made in, while the lease
                // still holds: a stalled process sends nothing it claimed before.
                let go = self.epoch() == Some(epoch);
                let mut held_back = 0;
                for due in asked {
                    match by_id.remove(&due.id) {
                        Some(sms) if go => self.send(due, sms, ctx),
                        // Left `sending` under this epoch: the next sender takes it.
                        Some(_) => {
                            held_back += 1;
                            self.in_flight -= 1;
                            self.forget(due.id);
                        }
                        // Another claim has it, it was sent, failed or is gone.
                        None => {
                            self.in_flight -= 1;
                            self.forget(due.id);
                        }
                    }
                }
                if held_back > 0 {
                    tracing::warn!(
                        epoch,
                        count = held_back,
                        "claimed SMS not sent: the sender lease they were claimed under no longer holds"
                    );
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
        let (stored, answered): (HashSet<Uuid>, bool) = match recorded {
            Ok(Ok(WriteReply::Recorded(ids))) => (ids.into_iter().collect(), true),
            Ok(Err(e)) if e.is_infrastructure() && self.record_failures + 1 < RECORD_TRIES => {
                // The claims' tokens keep other senders' records away meanwhile.
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
                    "SMS outcomes lost; those messages stay sending and are sent again later");
                (HashSet::new(), false)
            }
            Ok(Ok(_)) | Err(_) => (HashSet::new(), false),
        };
        self.record_failures = 0;
        let mut lost = 0;
        for Sent { due, record, next } in sent {
            self.in_flight -= 1;
            if !stored.contains(&record.id) {
                if answered {
                    lost += 1;
                    tracing::warn!(notification = %record.id, epoch = record.epoch,
                        attempts = record.attempts,
                        "SMS outcome not recorded: the message no longer carries this claim \
                         (a newer sender took it over, or it was deleted)");
                }
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
        if lost > 0 {
            crate::metrics::sms_lost_lease(lost);
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

    /// Loads what the table holds for the sender: due messages and abandoned sends.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let room = MAX_TRACKED
            .saturating_sub(self.known.len())
            .min(SWEEP_LIMIT);
        if self.sweeping || self.stopping || room == 0 || self.epoch().is_none() {
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

    /// A sweep unless a second's worth of messages is ready anyway.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        let enough = usize::try_from(self.cfg.rate_per_second)
            .unwrap_or(usize::MAX)
            .max(self.cfg.concurrency);
        if self.ready.len() < enough {
            self.sweep(ctx);
        }
    }
}

impl Actor for SmsDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::store::repository::UNBOUNDED_MAILBOX);
        crate::metrics::sms_sender(false);
        // Becoming the sender sweeps at once.
        self.acquire(ctx);
        ctx.run_interval(self.cfg.renew_every(), |act, ctx| {
            act.check_lapse();
            act.acquire(ctx);
        });
        ctx.run_interval(SWEEP_EVERY, |act, ctx| act.sweep(ctx));
        if self.db.get_database_backend() == DbBackend::Postgres {
            ctx.run_interval(POLL_EVERY, |act, ctx| act.poll(ctx));
        }
        ctx.run_interval(RETAIN_EVERY, |act, _| {
            act.per_recipient.retain_recent();
            act.per_recipient.shrink_to_fit();
        });
    }
}

impl Handler<SmsQueued> for SmsDispatcher {
    type Result = ();

    /// Messages this instance queued. Only the sender takes them in hand; otherwise the
    /// sender's sweeps find them in the table.
    fn handle(&mut self, msg: SmsQueued, ctx: &mut Self::Context) {
        if self.stopping || self.epoch().is_none() {
            return;
        }
        for due in msg.0 {
            self.track(due, ctx);
        }
        self.pump(ctx);
    }
}

/// Stop starting sends and answer once the sends in flight have finished and their
/// outcomes are recorded, and the sender lease is given up (another instance takes over at
/// once); what is still queued stays in the table for the next sender.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// The service has stopped (after `Drain`): the dispatcher ends, with its timers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for SmsDispatcher {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Drain> for SmsDispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        for due in std::mem::take(&mut self.ready) {
            self.known.remove(&due.id);
        }
        let wait = (self.in_flight > 0).then(|| {
            let (tx, rx) = oneshot::channel();
            self.drained.push(tx);
            rx
        });
        let (db, me) = (self.db.clone(), self.me.clone());
        Box::pin(async move {
            if let Some(rx) = wait {
                let _ = rx.await;
            }
            // Only now: the next sender takes over this epoch's messages at once.
            match lease::release(&db, &me).await {
                Ok(true) => tracing::info!("SMS sender lease given up"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not give up the SMS sender lease; it runs out by itself")
                }
            }
            crate::metrics::sms_sender(false);
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
        epoch: sms.epoch,
        attempts: sms.attempts,
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
            lease: Duration::from_secs(10),
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
