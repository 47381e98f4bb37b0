//! A Shard: the live sessions of one HTTP worker thread.
//!
//! The hub sends each shard every event once, in `seq` order (`Publish`, one message per
//! shard per batch); the shard keeps the frames once in its log (encoded once, shared),
//! counts for each session what it waits for (`Link`, a cursor into the log) and tells each session with new frames to take them
//! (`ToSession::Flush`, at most one outstanding per session, however many frames wait). A
//! session writes a bounded turn's worth and, if more waits, queues behind the others
//! (`Rewake`): what waits stays in the shard's log, counted against its bounds, not in
//! buffers.
//! A shard runs on the same thread as its sessions, so fan-out uses every worker, and it
//! wakes its sessions a chunk at a time, yielding in between, so that the requests served
//! by the same worker are not queued behind thousands of socket writes: live delivery may
//! lag (and coalesces while it does), order taking does not.
//!
//! It also answers how a new subscriber starts (`hello`, a replay from memory or from the
//! log), closes sessions over their bounds with 1013, and cuts the connections of
//! sessions that cannot run (see `stall`).

use super::LiveStats;
use super::filter::TypeFilter;
use super::hub::Hub;
use super::link::{Bounds, Link, Queued, SharedLog};
use super::protocol::{
    AddShard, EventFrame, Publish, Rewake, SessionEnded, Shutdown, Start, Subscribe,
    SubscribeReply, SubscriberCount, ToSession, Unsubscribe,
};
use super::stall::stall_limit;
use crate::domain::time::Timestamp;
use crate::store::reads;
use actix::prelude::*;
use sea_orm::DatabaseConnection;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Sessions told to take their frames before the shard yields to the worker's other tasks.
const WAKE_CHUNK: usize = 128;
/// How often the ring of recent events is trimmed to the replay window.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub bounds: Bounds,
    pub recent_events: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// The replay window (`live.retention_days`): the ring keeps no older frames.
    pub retention: Duration,
}

struct Member {
    session: Recipient<ToSession>,
    link: Arc<Link>,
    session_hash: Option<String>,
}

pub struct Shard {
    cfg: ShardConfig,
    hub: Addr<Hub>,
    db: DatabaseConnection,
    /// The last seq the hub sent here.
    latest: i64,
    /// What the hub sent, kept while a session still has to write it.
    log: SharedLog,
    recent: VecDeque<EventFrame>,
    members: HashMap<u64, Member>,
    /// Sessions told to close that have not ended yet, and since when.
    closing: HashMap<u64, (Instant, Arc<Link>)>,
    /// Sessions with new frames, not yet told to take them.
    to_wake: VecDeque<u64>,
    /// A yield is under way before the next chunk of `to_wake`.
    yielding: bool,
    /// `members.len()` as last added to `stats.subscribers`.
    counted: usize,
    stats: Arc<LiveStats>,
}

impl Shard {
    pub fn new(
        cfg: ShardConfig,
        hub: Addr<Hub>,
        db: DatabaseConnection,
        log: SharedLog,
        stats: Arc<LiveStats>,
    ) -> Self {
        Self {
            cfg,
            hub,
            db,
            latest: 0,
            log,
            recent: VecDeque::new(),
            members: HashMap::new(),
            closing: HashMap::new(),
            to_wake: VecDeque::new(),
            yielding: false,
            counted: 0,
            stats,
        }
    }

    /// Keeps the instance's subscriber count (the sum over shards) and its gauge current.
    fn count(&mut self) {
        let (now, before) = (self.members.len(), self.counted);
        if now == before {
            return;
        }
        if now > before {
            self.stats
                .subscribers
                .fetch_add(now - before, Ordering::Relaxed);
        } else {
            self.stats
                .subscribers
                .fetch_sub(before - now, Ordering::Relaxed);
        }
        #[allow(clippy::cast_precision_loss)]
        crate::metrics::live_subscribers_changed(now as f64 - before as f64);
        self.counted = now;
    }

    /// Cuts a connection (see `stall`) and counts it.
    fn cut(id: u64, link: &Link, why: &str) {
        tracing::info!(session = id, "live client {why}; dropping its connection");
        link.cut();
        crate::metrics::live_connection_cut();
    }

    /// Takes a member out and tells it to close; it is cut if it has not gone by the stall
    /// limit.
    fn close(&mut self, id: u64, why: ToSession) {
        if let Some(member) = self.members.remove(&id) {
            member.session.do_send(why);
            self.closing.insert(id, (Instant::now(), member.link));
        }
    }

    /// Tells the next chunk of sessions to take their frames, then yields to the worker's
    /// other tasks before the next chunk.
    fn wake(&mut self, ctx: &mut Context<Self>) {
        if self.yielding {
            return;
        }
        let mut told = 0;
        while told < WAKE_CHUNK {
            let Some(id) = self.to_wake.pop_front() else {
                break;
            };
            if let Some(member) = self.members.get(&id) {
                member.session.do_send(ToSession::Flush);
                told += 1;
            }
        }
        if !self.to_wake.is_empty() {
            self.yielding = true;
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(tokio::task::yield_now()).map(|(), act, ctx| {
                    act.yielding = false;
                    act.wake(ctx);
                }),
            );
        }
    }

    /// The missed events `since < seq <= latest`, when memory holds every one of them: the
    /// ring must reach back to `since + 1`, end at `latest` and have no hole.
    fn recent_after(&self, since: i64, filter: TypeFilter) -> Option<Vec<EventFrame>> {
        let first = self.recent.front()?;
        let last = self.recent.back()?;
        let contiguous = usize::try_from(last.seq - first.seq + 1).ok() == Some(self.recent.len());
        if !contiguous || first.seq > since + 1 || last.seq != self.latest {
            return None;
        }
        Some(
            self.recent
                .iter()
                .filter(|f| f.seq > since && filter.matches(f.kind))
                .cloned()
                .collect(),
        )
    }

    /// How a subscriber with `since` starts, given what this shard has been sent.
    fn start_for(&self, since: Option<i64>, filter: TypeFilter) -> Start {
        match since {
            None => Start::Live,
            Some(since) if since >= self.latest => Start::Live,
            Some(since) => match self.recent_after(since, filter) {
                Some(frames) => Start::Recent(frames),
                None => Start::Log {
                    after: since,
                    upto: self.latest,
                },
            },
        }
    }

    fn join(&mut self, msg: Subscribe, skip_upto: i64) {
        msg.link.heard();
        msg.link.join(skip_upto);
        self.members.insert(
            msg.id,
            Member {
                session: msg.session,
                link: msg.link,
                session_hash: msg.session_hash,
            },
        );
        self.count();
    }

    /// Cuts the connections of sessions that cannot run to end themselves (see `stall`).
    fn watchdog(&mut self) {
        let limit = stall_limit(self.cfg.idle_timeout, self.cfg.ping_interval);
        let stuck: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.link.silent_for() > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            if let Some(member) = self.members.remove(&id) {
                Self::cut(id, &member.link, "stuck");
                self.closing.insert(id, (Instant::now(), member.link));
            }
        }
        self.closing.retain(|id, (since, link)| {
            if since.elapsed() > limit {
                Self::cut(*id, link, "did not close");
                false
            } else {
                true
            }
        });
        self.count();
    }

    /// Drops frames past the replay window from the ring.
    fn prune(&mut self) {
        let retention = i64::try_from(self.cfg.retention.as_millis()).unwrap_or(i64::MAX);
        let before = Timestamp::now().plus_millis(-retention);
        while self.recent.len() > 1 && self.recent.front().is_some_and(|f| f.at < before) {
            self.recent.pop_front();
        }
    }
}

impl Actor for Shard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The hub must never be pushed back by a full shard mailbox.
        ctx.set_mailbox_capacity(crate::store::repository::UNBOUNDED_MAILBOX);
        ctx.run_interval(self.cfg.ping_interval, |act, _| act.watchdog());
        ctx.run_interval(PRUNE_EVERY, |act, _| act.prune());
        // Sessions wait (the mailbox is held) until the hub says where this shard starts.
        ctx.wait(self.hub.send(AddShard(ctx.address())).into_actor(self).map(
            |latest, act, ctx| match latest {
                Ok(latest) => act.latest = latest,
                Err(_) => ctx.stop(),
            },
        ));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.members.clear();
        self.count();
    }
}

impl Handler<Publish> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        // Only what follows `latest` (the hub sends each event once; this is a guard).
        let batch: &[EventFrame] = &msg.0;
        let fresh = batch.partition_point(|f| f.seq <= self.latest);
        let batch = &batch[fresh..];
        let Some(last) = batch.last() else {
            return;
        };
        self.latest = last.seq;
        if self.cfg.recent_events > 0 {
            for frame in batch {
                if self.recent.len() == self.cfg.recent_events {
                    self.recent.pop_front();
                }
                self.recent.push_back(frame.clone());
            }
        }
        let first = self.log.append(batch);
        let mut over = Vec::new();
        for (id, member) in &self.members {
            match member.link.queue(first, batch, self.cfg.bounds) {
                Queued::Wake => self.to_wake.push_back(*id),
                Queued::Over => over.push(*id),
                Queued::Behind | Queued::Nothing => {}
            }
        }
        for id in over {
            tracing::info!(
                session = id,
                frames = self.cfg.bounds.frames,
                bytes = self.cfg.bounds.bytes,
                "live client cannot keep up; closing it with 1013"
            );
            self.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
            crate::metrics::live_slow_closed();
            self.close(id, ToSession::Overflow);
        }
        self.log.trim(
            self.members
                .values()
                .filter_map(|m| m.link.needs_from())
                .min(),
        );
        self.count();
        self.wake(ctx);
    }
}

impl Handler<Subscribe> for Shard {
    type Result = ResponseActFuture<Self, SubscribeReply>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        match msg.since {
            // Ahead of this instance: the client saw newer events on another one. Ask the
            // log whether they exist before calling it a resync.
            Some(since) if since > self.latest => {
                let db = self.db.clone();
                Box::pin(
                    async move { reads::latest_seq(&db).await }
                        .into_actor(self)
                        .map(move |logged, act, _| {
                            let known = logged.unwrap_or(act.latest).max(act.latest);
                            if since > known {
                                let latest = act.latest;
                                act.join(msg, latest);
                                return SubscribeReply {
                                    latest,
                                    start: Start::Resync,
                                };
                            }
                            // This shard may have caught up meanwhile.
                            let start = act.start_for(Some(since), msg.filter);
                            let latest = act.latest.max(since);
                            act.join(msg, since);
                            SubscribeReply { latest, start }
                        }),
                )
            }
            since => {
                let start = self.start_for(since, msg.filter);
                let latest = self.latest;
                self.join(msg, latest);
                Box::pin(actix::fut::ready(SubscribeReply { latest, start }))
            }
        }
    }
}

impl Handler<Rewake> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Rewake, ctx: &mut Self::Context) {
        if self.members.contains_key(&msg.id) {
            self.to_wake.push_back(msg.id);
            self.wake(ctx);
        }
    }
}

impl Handler<Unsubscribe> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        self.members.remove(&msg.id);
        self.closing.remove(&msg.id);
        self.count();
    }
}

impl Handler<SessionEnded> for Shard {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, _: &mut Self::Context) {
        let ended: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.session_hash.as_deref() == Some(msg.id_hash.as_str()))
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            self.close(id, ToSession::Revoked);
        }
        self.count();
    }
}

impl Handler<Shutdown> for Shard {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) {
        for (_, member) in self.members.drain() {
            member.session.do_send(ToSession::GoingAway);
        }
        self.count();
    }
}

impl Handler<SubscriberCount> for Shard {
    type Result = usize;

    fn handle(&mut self, _: SubscriberCount, _: &mut Self::Context) -> usize {
        self.members.len()
    }
}
