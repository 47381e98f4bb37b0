//! The Hub: one actor per instance that follows the deployment's event log and forwards
//! every event, in `seq` order, to the subscribed sessions.
//!
//! It is a follower of the log: it publishes `latest + 1, latest + 2, ...` strictly in
//! order, whichever instance committed them. This instance's own commits arrive directly
//! from the writer (`EventsCommitted`) and are never read back; the feed (`feed`) says when
//! the log has grown beyond what arrived (another instance's commit), and the hub reads
//! that hole from the events table before going on. So every instance emits the identical
//! stream, and `hello` and `since` are answered against the deployment's seq.
//!
//! It never waits on a client: frames go out with `do_send`, and a per-session counter of
//! frames sent but not yet taken by the session bounds what one client may hold up. A
//! session over that bound leaves the table and is told to close with 1013.

use super::LiveStats;
use super::filter::TypeFilter;
use super::protocol::{
    EventFrame, LogAdvanced, SessionEnded, Shutdown, Start, Stop, Subscribe, SubscribeReply,
    SubscriberCount, ToSession, Unsubscribe,
};
use super::stall::{Link, stall_limit};
use crate::domain::event::Event;
use crate::domain::time::Timestamp;
use crate::store::reads;
use crate::store::repository::EventsCommitted;
use actix::prelude::*;
use sea_orm::DatabaseConnection;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the ring of recent events is trimmed to the replay window.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Events read from the log per query when filling a hole.
const FILL_PAGE: u64 = 500;

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub max_buffered_frames: usize,
    pub recent_events: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// The replay window (`live.retention_days`): the ring keeps no older frames.
    pub retention: Duration,
}

struct Member {
    session: Recipient<ToSession>,
    filter: TypeFilter,
    link: Arc<Link>,
    session_hash: Option<String>,
    /// Events up to this seq are not sent: the client has them (it resumed with a `since`
    /// ahead of this hub).
    skip_upto: i64,
}

pub struct Hub {
    cfg: HubConfig,
    db: DatabaseConnection,
    /// The last seq published here.
    latest: i64,
    /// The last seq the deployment's log is known to hold.
    known: i64,
    /// Events of this instance's commits that arrived ahead of `latest + 1`.
    waiting: BTreeMap<i64, EventFrame>,
    /// A read of the log is under way.
    filling: bool,
    /// Since when `latest` has been behind `known`.
    behind_since: Option<Instant>,
    recent: VecDeque<EventFrame>,
    members: HashMap<u64, Member>,
    /// Sessions told to close that have not ended yet, and since when.
    closing: HashMap<u64, (Instant, Arc<Link>)>,
    stats: Arc<LiveStats>,
    /// Tells the feed's tasks to end (when the hub stops).
    stop_feed: tokio::sync::watch::Sender<bool>,
}

impl Hub {
    /// `latest` is the last `seq` committed when the hub starts: it publishes what follows.
    pub fn new(cfg: HubConfig, db: DatabaseConnection, latest: i64, stats: Arc<LiveStats>) -> Self {
        Self {
            cfg,
            db,
            latest,
            known: latest,
            waiting: BTreeMap::new(),
            filling: false,
            behind_since: None,
            recent: VecDeque::new(),
            members: HashMap::new(),
            closing: HashMap::new(),
            stats,
            stop_feed: tokio::sync::watch::channel(false).0,
        }
    }

    /// Becomes `true` when the hub stops: the feed's tasks end on it.
    pub fn feed_stop(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop_feed.subscribe()
    }

    fn count(&self) {
        self.stats
            .subscribers
            .store(self.members.len(), Ordering::Relaxed);
    }

    /// Notes that the log holds at least `seq`.
    fn learn(&mut self, seq: i64) {
        self.known = self.known.max(seq);
    }

    /// Publishes what can be published in order, and reads the log for a hole.
    fn advance(&mut self, ctx: &mut Context<Self>) {
        while let Some(frame) = self.waiting.remove(&(self.latest + 1)) {
            self.publish(frame);
        }
        // Frames at or below `latest` came twice (a fill raced the writer): dropped.
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > self.latest {
                break;
            }
            entry.remove();
        }
        self.note_lag();
        if self.latest >= self.known || self.filling {
            return;
        }
        // The hole: from `latest + 1` up to the first frame this instance already has.
        let upto = self
            .waiting
            .keys()
            .next()
            .map_or(self.known, |first| first - 1)
            .min(self.known);
        if upto <= self.latest {
            return;
        }
        self.filling = true;
        let (db, after) = (self.db.clone(), self.latest);
        ctx.spawn(
            async move { reads::events_after(&db, after, upto, FILL_PAGE).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.filling = false;
                    match result {
                        Ok(events) => act.fill(events, upto, ctx),
                        Err(e) => {
                            // The next poll tries again.
                            tracing::warn!(error = %e, after, upto, "live feed: cannot read the event log");
                        }
                    }
                }),
        );
    }

    /// Publishes events read from the log (a hole), then goes on.
    fn fill(&mut self, events: Vec<Event>, upto: i64, ctx: &mut Context<Self>) {
        let mut filled = 0;
        for event in events {
            if event.seq != self.latest + 1 {
                if event.seq > self.latest + 1 {
                    // The log itself has a hole (pruned past this instance): skip over it;
                    // sessions resuming into it are told to resync by their replay.
                    tracing::warn!(
                        from = self.latest + 1,
                        to = event.seq - 1,
                        "live feed: events missing from the log"
                    );
                } else {
                    continue;
                }
            }
            match EventFrame::of(&event) {
                Ok(frame) => self.publish(frame),
                Err(e) => {
                    tracing::error!(seq = event.seq, error = %e, "event not serialisable");
                    self.latest = event.seq;
                }
            }
            filled += 1;
        }
        if filled > 0 {
            crate::metrics::live_holes_filled(filled);
        } else if upto > self.latest {
            // Nothing left in the log of what it said it holds: pruned. Go past it.
            tracing::warn!(
                from = self.latest + 1,
                to = upto,
                "live feed: events missing from the log"
            );
            self.latest = upto;
        }
        self.advance(ctx);
    }

    fn note_lag(&mut self) {
        if self.latest >= self.known {
            self.behind_since = None;
        } else if self.behind_since.is_none() {
            self.behind_since = Some(Instant::now());
        }
        let lag = self.behind_since.map_or(0, |since| {
            u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
        });
        self.stats.lag_ms.store(lag, Ordering::Relaxed);
        crate::metrics::live_feed_lag(Duration::from_millis(lag));
    }

    fn publish(&mut self, frame: EventFrame) {
        self.latest = frame.seq;
        self.learn(frame.seq);
        if self.cfg.recent_events > 0 {
            if self.recent.len() == self.cfg.recent_events {
                self.recent.pop_front();
            }
            self.recent.push_back(frame.clone());
        }
        let mut slow = Vec::new();
        for (id, member) in &self.members {
            if !member.filter.matches(frame.kind) || frame.seq <= member.skip_upto {
                continue;
            }
            if member.link.queued() >= self.cfg.max_buffered_frames {
                slow.push(*id);
                continue;
            }
            member.link.sent();
            member.session.do_send(ToSession::Deliver(frame.clone()));
        }
        for id in slow {
            if let Some(member) = self.members.remove(&id) {
                tracing::info!(
                    session = id,
                    buffered = self.cfg.max_buffered_frames,
                    "live client cannot keep up; closing it with 1013"
                );
                self.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
                member.session.do_send(ToSession::Overflow);
                self.closing.insert(id, (Instant::now(), member.link));
            }
        }
        self.stats.events_published.fetch_add(1, Ordering::Relaxed);
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

    /// How a subscriber with `since` starts, given what this hub has published.
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
        self.members.insert(
            msg.id,
            Member {
                session: msg.session,
                filter: msg.filter,
                link: msg.link,
                session_hash: msg.session_hash,
                skip_upto,
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
                tracing::info!(session = id, "live client stuck; dropping its connection");
                member.link.cut();
                self.closing.insert(id, (Instant::now(), member.link));
            }
        }
        self.closing.retain(|id, (since, link)| {
            if since.elapsed() > limit {
                tracing::info!(
                    session = id,
                    "live client did not close; dropping its connection"
                );
                link.cut();
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

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Sessions and the repository must never be pushed back by a full hub mailbox.
        // (usize::MAX would overflow in actix when an address is cloned.)
        ctx.set_mailbox_capacity(crate::store::repository::UNBOUNDED_MAILBOX);
        ctx.run_interval(self.cfg.ping_interval, |act, _| act.watchdog());
        ctx.run_interval(PRUNE_EVERY, |act, _| act.prune());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let _ = self.stop_feed.send(true);
    }
}

impl Handler<Stop> for Hub {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Shutdown> for Hub {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) {
        for (_, member) in self.members.drain() {
            member.session.do_send(ToSession::GoingAway);
        }
        self.count();
    }
}

impl Handler<EventsCommitted> for Hub {
    type Result = ();

    fn handle(&mut self, msg: EventsCommitted, ctx: &mut Self::Context) {
        for event in msg.0.iter() {
            self.learn(event.seq);
            if event.seq <= self.latest {
                continue;
            }
            match EventFrame::of(event) {
                Ok(frame) => {
                    self.waiting.insert(event.seq, frame);
                }
                Err(e) => tracing::error!(seq = event.seq, error = %e, "event not serialisable"),
            }
        }
        self.advance(ctx);
    }
}

impl Handler<LogAdvanced> for Hub {
    type Result = ();

    fn handle(&mut self, msg: LogAdvanced, ctx: &mut Self::Context) {
        self.learn(msg.latest);
        self.advance(ctx);
    }
}

impl Handler<Subscribe> for Hub {
    type Result = ResponseActFuture<Self, SubscribeReply>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        let since = msg.since;
        match since {
            // Ahead of this hub: the client saw newer events on another instance. Ask the
            // log whether they exist before calling it a resync.
            Some(since) if since > self.latest => {
                let db = self.db.clone();
                Box::pin(
                    async move { reads::latest_seq(&db).await }
                        .into_actor(self)
                        .map(move |result, act, _| {
                            if let Ok(latest) = result {
                                act.learn(latest);
                            }
                            if since > act.known {
                                let latest = act.latest;
                                act.join(msg, latest);
                                return SubscribeReply {
                                    latest,
                                    start: Start::Resync,
                                };
                            }
                            // This hub may have caught up meanwhile.
                            let start = act.start_for(Some(since), msg.filter);
                            let latest = act.latest.max(since);
                            act.join(msg, since);
                            SubscribeReply { latest, start }
                        }),
                )
            }
            _ => {
                let start = self.start_for(since, msg.filter);
                let latest = self.latest;
                self.join(msg, latest);
                Box::pin(actix::fut::ready(SubscribeReply { latest, start }))
            }
        }
    }
}

impl Handler<SessionEnded> for Hub {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, _: &mut Self::Context) {
        let ended: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.session_hash.as_deref() == Some(msg.id_hash.as_str()))
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            if let Some(member) = self.members.remove(&id) {
                member.session.do_send(ToSession::Revoked);
                self.closing.insert(id, (Instant::now(), member.link));
            }
        }
        self.count();
    }
}

impl Handler<Unsubscribe> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        self.members.remove(&msg.id);
        self.closing.remove(&msg.id);
        self.count();
    }
}

impl Handler<SubscriberCount> for Hub {
    type Result = usize;

    fn handle(&mut self, _: SubscriberCount, _: &mut Self::Context) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Actor, EventType};

    #[test]
    fn frames_have_the_contract_shape() {
        let event = Event {
            kind: EventType::OrderDeleted,
            seq: 7,
            at: Timestamp::from_millis(1_795_253_400_123),
            actor: Actor::user("auth0|42", "Wanjiku"),
            data: serde_json::json!({"id": "x"}),
        };
        let frame = EventFrame::of(&event).unwrap();
        let v: serde_json::Value = serde_json::from_str(&frame.text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "order.deleted", "seq": 7,
                "at": "2026-11-21T09:30:00.123Z",
                "actor": {"type": "user", "subject": "auth0|42", "name": "Wanjiku"},
                "data": {"id": "x"}})
        );
    }
}
