//! The Hub: one actor per instance that follows the deployment's event log and hands every
//! event, in `seq` order, to the shards (one per HTTP worker thread, see `shard`), which
//! deliver it to their sessions.
//!
//! It is a follower of the log: it publishes `latest + 1, latest + 2, ...` strictly in
//! order, whichever instance committed them. This instance's own commits arrive directly
//! from the writer (`EventsCommitted`) and are never read back; the feed (`feed`) says when
//! the log has grown beyond what arrived (another instance's commit), and the hub reads
//! that hole from the events table before going on. So every instance emits the identical
//! stream, and `hello` and `since` are answered against the deployment's seq.
//!
//! It never waits on a shard or a client: what it publishes goes out as one `Publish` per
//! shard per batch.

use super::LiveStats;
use super::protocol::{
    AddShard, EventFrame, LogAdvanced, Publish, SessionEnded, Shutdown, Stop, SubscriberCount,
};
use super::shard::Shard;
use crate::domain::event::Event;
use crate::store::reads;
use crate::store::repository::EventsCommitted;
use actix::prelude::*;
use sea_orm::DatabaseConnection;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Events read from the log per query when filling a hole.
const FILL_PAGE: u64 = 500;

pub struct Hub {
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
    /// Published and not yet sent to the shards.
    outgoing: Vec<EventFrame>,
    shards: Vec<Addr<Shard>>,
    stats: Arc<LiveStats>,
    /// Tells the feed's tasks to end (when the hub stops).
    stop_feed: tokio::sync::watch::Sender<bool>,
}

impl Hub {
    /// `latest` is the last `seq` committed when the hub starts: it publishes what follows.
    pub fn new(db: DatabaseConnection, latest: i64, stats: Arc<LiveStats>) -> Self {
        Self {
            db,
            latest,
            known: latest,
            waiting: BTreeMap::new(),
            filling: false,
            behind_since: None,
            outgoing: Vec::new(),
            shards: Vec::new(),
            stats,
            stop_feed: tokio::sync::watch::channel(false).0,
        }
    }

    /// Becomes `true` when the hub stops: the feed's tasks end on it.
    pub fn feed_stop(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop_feed.subscribe()
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
        self.send_out();
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
        self.outgoing.push(frame);
        self.stats.events_published.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends what was published to every shard, as one message each.
    fn send_out(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let batch: Arc<[EventFrame]> = std::mem::take(&mut self.outgoing).into();
        self.shards.retain(Addr::connected);
        for shard in &self.shards {
            shard.do_send(Publish(batch.clone()));
        }
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Sessions and the repository must never be pushed back by a full hub mailbox.
        // (usize::MAX would overflow in actix when an address is cloned.)
        ctx.set_mailbox_capacity(crate::store::repository::UNBOUNDED_MAILBOX);
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
        for shard in &self.shards {
            shard.do_send(Shutdown);
        }
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

impl Handler<AddShard> for Hub {
    type Result = i64;

    fn handle(&mut self, msg: AddShard, _: &mut Self::Context) -> i64 {
        self.shards.push(msg.0);
        self.latest
    }
}

impl Handler<SessionEnded> for Hub {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, _: &mut Self::Context) {
        for shard in &self.shards {
            shard.do_send(msg.clone());
        }
    }
}

impl Handler<SubscriberCount> for Hub {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: SubscriberCount, _: &mut Self::Context) -> Self::Result {
        let asks: Vec<_> = self
            .shards
            .iter()
            .map(|s| s.send(SubscriberCount))
            .collect();
        Box::pin(async move {
            futures_util::future::join_all(asks)
                .await
                .into_iter()
                .map(|n| n.unwrap_or(0))
                .sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Actor, EventType};
    use crate::domain::time::Timestamp;

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
