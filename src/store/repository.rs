//! The Repository actor: the single writer. It runs on an arbiter (thread) of its own.
//!
//! Writes queue in the actor and run one batch at a time, each batch in one transaction
//! (group commit, see `batch`): under load a batch holds everything that arrived while the
//! previous one was committing. After each commit the hub hears of the batch's events and
//! the SMS dispatcher of the messages it queued, in commit order. Reads do not come here:
//! they run on the `Reader` actors, one per HTTP worker (see `reader`).
//!
//! It also owns the housekeeping timer: expired sessions and idempotency keys, and events
//! past the audit retention, are removed by one maintenance pass.

use super::OwnPool;
use super::batch::{self, Pending, QueuedSms, WriteConfig};
use super::error::StoreError;
use super::maintenance;
use super::ops::{WriteOp, WriteReply};
use crate::domain::event::{self, Event, EventType};
use actix::prelude::*;
use sea_orm::DatabaseConnection;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The most operations one transaction takes.
const MAX_BATCH: usize = 256;
/// The most operations waiting for a batch. Beyond it (the database is slower than the
/// requests coming in) a write answers 503 at once instead of queueing without bound.
pub const MAX_PENDING: usize = 8 * 1024;
/// A mailbox that never pushes back. actix computes `MAX_CAPACITY - capacity` whenever an
/// `Addr` is cloned, so `usize::MAX` overflows (a panic in debug builds); this is the
/// largest capacity actix accepts.
pub const UNBOUNDED_MAILBOX: usize = usize::MAX >> 2;
/// The longest the SMS dispatcher's bookkeeping waits for a request's write to share a
/// batch with. Under load a claim or a send outcome then rides in the next batch of
/// orders instead of taking a transaction (and the writer) of its own between two of them.
const BACKGROUND_LINGER: Duration = Duration::from_millis(5);
/// How often the maintenance pass runs.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(600);

/// The events of a committed batch, in `seq` order: for the live hub.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct EventsCommitted(pub Arc<Vec<Event>>);

/// The messages a committed batch queued: for the SMS dispatcher.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SmsQueued(pub Vec<QueuedSms>);

pub struct Repository {
    db: DatabaseConnection,
    cfg: Arc<WriteConfig>,
    /// Events older than this are pruned (`audit.retention_days`).
    event_retention: Duration,
    pending: VecDeque<Pending>,
    writing: bool,
    /// `Stop` came: no new batch starts.
    stopping: bool,
    events_to: Vec<Recipient<EventsCommitted>>,
    sms_to: Vec<Recipient<SmsQueued>>,
    /// A pool of its own to open when started (see `store::PoolPlan`).
    own_pool: Option<OwnPool>,
    /// Until when only background work waits (see `BACKGROUND_LINGER`).
    linger_until: Option<Instant>,
}

impl Repository {
    pub fn new(db: DatabaseConnection, cfg: WriteConfig, event_retention: Duration) -> Self {
        Self {
            db,
            cfg: Arc::new(cfg),
            event_retention,
            pending: VecDeque::new(),
            writing: false,
            stopping: false,
            events_to: Vec::new(),
            sms_to: Vec::new(),
            own_pool: None,
            linger_until: None,
        }
    }

    /// Writes through a pool of its own, opened on the writer's thread before its first batch.
    pub fn own_pool(mut self, pool: Option<OwnPool>) -> Self {
        self.own_pool = pool;
        self
    }

    /// Starts the writer on `arbiter`, a thread of its own, so that its per-batch work never
    /// waits for (or delays) the hub, the dispatcher or the HTTP workers.
    pub fn start_alone(self, arbiter: &ArbiterHandle) -> Addr<Self> {
        Self::start_in_arbiter(arbiter, move |_| self)
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.pending.is_empty() {
            return;
        }
        if !self.stopping && self.pending.iter().all(|p| p.op.is_background()) {
            let now = Instant::now();
            let until = *self.linger_until.get_or_insert_with(|| {
                ctx.run_later(BACKGROUND_LINGER, |act, ctx| {
                    // Over, even if the timer fired a hair early.
                    if act.linger_until.is_some() {
                        act.linger_until = Some(Instant::now());
                    }
                    act.flush(ctx);
                });
                now + BACKGROUND_LINGER
            });
            if now < until {
                return;
            }
        }
        self.linger_until = None;
        self.writing = true;
        let n = self.pending.len().min(MAX_BATCH);
        let ops: Vec<Pending> = self.pending.drain(..n).collect();
        let db = self.db.clone();
        let cfg = self.cfg.clone();
        ctx.spawn(
            async move { batch::run(&db, &cfg, ops).await }
                .into_actor(self)
                .map(|outcome, act, ctx| {
                    act.writing = false;
                    if !outcome.events.is_empty() {
                        count_published(&outcome.events);
                        let events = EventsCommitted(Arc::new(outcome.events));
                        for to in &act.events_to {
                            to.do_send(events.clone());
                        }
                    }
                    if !outcome.queued.is_empty() {
                        for to in &act.sms_to {
                            to.do_send(SmsQueued(outcome.queued.clone()));
                        }
                    }
                    if act.stopping {
                        ctx.stop();
                    } else {
                        act.flush(ctx);
                    }
                }),
        );
    }
}

fn count_published(events: &[Event]) {
    for kind in EventType::ALL {
        let n = events.iter().filter(|e| e.kind == kind).count() as u64;
        if n > 0 {
            crate::metrics::events_published(kind.as_str(), n);
            if kind == EventType::OrderCreated {
                crate::metrics::orders_created(n);
            }
        }
    }
    // Every SMS status change is committed as a notification.updated event, whoever made it
    // (the dispatcher, a delivery report, a resend).
    let mut by_status: std::collections::BTreeMap<&str, u64> = Default::default();
    for event in events {
        if event.kind == EventType::NotificationUpdated
            && let Some(status) = event.data.get("status").and_then(|s| s.as_str())
        {
            *by_status.entry(status).or_default() += 1;
        }
    }
    for (status, n) in by_status {
        crate::metrics::sms_status(status, n);
    }
}

impl Actor for Repository {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The mailbox must not push back on HTTP handlers; `pending` is the bounded buffer.
        ctx.set_mailbox_capacity(UNBOUNDED_MAILBOX);
        if let Some(pool) = self.own_pool.take() {
            pool.open_for(ctx, |act, db| act.db = db);
        }
        ctx.run_interval(MAINTENANCE_EVERY, |act, ctx| {
            let db = act.db.clone();
            let retention = act.event_retention;
            ctx.spawn(async move { maintenance::run(&db, retention).await }.into_actor(act));
        });
    }
}

/// The service has stopped: the writer ends once its batch in flight (if any) is done;
/// operations still queued are answered as unavailable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Repository {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        self.stopping = true;
        if self.writing {
            return;
        }
        if self.pending.is_empty() {
            ctx.stop();
        } else {
            // What waits (background work lingering) is written first; the batch's end stops.
            self.flush(ctx);
        }
    }
}

/// Registers the live hub for committed events.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListenEvents(pub Recipient<EventsCommitted>);

impl Handler<ListenEvents> for Repository {
    type Result = ();

    fn handle(&mut self, msg: ListenEvents, _: &mut Self::Context) {
        self.events_to.push(msg.0);
    }
}

/// Registers the SMS dispatcher for queued messages.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListenSms(pub Recipient<SmsQueued>);

impl Handler<ListenSms> for Repository {
    type Result = ();

    fn handle(&mut self, msg: ListenSms, _: &mut Self::Context) {
        self.sms_to.push(msg.0);
    }
}

/// A change, applied in the next batch, and who asked for it (the actor of its events).
#[derive(Message)]
#[rtype(result = "Result<WriteReply, StoreError>")]
pub struct Write {
    pub op: WriteOp,
    pub actor: event::Actor,
}

impl Write {
    pub fn new(op: WriteOp, actor: event::Actor) -> Self {
        Self { op, actor }
    }
}

impl Handler<Write> for Repository {
    type Result = ResponseFuture<Result<WriteReply, StoreError>>;

    fn handle(&mut self, msg: Write, ctx: &mut Self::Context) -> Self::Result {
        if self.pending.len() >= MAX_PENDING {
            return Box::pin(async {
                Err(StoreError::Unavailable(
                    "too many writes are waiting for the database".into(),
                ))
            });
        }
        let (reply, answer) = oneshot::channel();
        self.pending.push_back(Pending {
            op: msg.op,
            actor: msg.actor,
            reply,
        });
        self.flush(ctx);
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("the writer stopped".into())))
        })
    }
}
