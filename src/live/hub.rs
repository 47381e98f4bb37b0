//! The Hub: one actor that forwards every committed event to the subscribed sessions.
//!
//! It never waits on a client: frames go out with `do_send`, and a per-session counter of
//! frames sent but not yet taken by the session bounds what one client may hold up. A
//! session over that bound leaves the table and is told to close with 1013.

use super::filter::TypeFilter;
use super::session::{Deliver, Overflow, Revoked, WsSession};
use super::{ConnHandle, LiveStats};
use crate::domain::event::{Event, EventType};
use crate::domain::time::Timestamp;
use crate::store::repository::EventsCommitted;
use actix::prelude::*;
use bytestring::ByteString;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the event log is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub max_buffered_frames: usize,
    pub recent_events: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub retention: Duration,
}

/// An event serialised once, shared by every session that sends it.
#[derive(Debug, Clone)]
pub struct EventFrame {
    pub seq: i64,
    pub kind: EventType,
    pub at: Timestamp,
    pub text: ByteString,
}

impl EventFrame {
    pub fn of(event: &Event) -> Result<Self, serde_json::Error> {
        Ok(Self {
            seq: event.seq,
            kind: event.kind,
            at: event.at,
            text: serde_json::to_string(event)?.into(),
        })
    }
}

/// What a session and the hub share: the session's backlog and liveness.
pub struct Link {
    /// Frames sent by the hub and not yet written by the session.
    queued: AtomicUsize,
    epoch: Instant,
    /// When the client was last heard from, in ms since `epoch`.
    last_heard_ms: AtomicU64,
    conn: Option<ConnHandle>,
}

impl Link {
    pub fn new(conn: Option<ConnHandle>) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            epoch: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            conn,
        }
    }

    pub fn heard(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub fn taken(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// Closes the TCP connection under a session that cannot act for itself: its actor
    /// only runs when the HTTP writer asks for more bytes, which a stalled socket never does.
    fn kill(&self) {
        if let Some(conn) = &self.conn {
            conn.shutdown();
        }
    }
}

/// How a new subscriber starts.
#[derive(Debug)]
pub enum Start {
    /// Live events only (after `latest`).
    Live,
    /// Its `since` is not in the log: it reloads through the API, then goes live.
    Resync,
    /// The events it missed, from memory (already filtered).
    Recent(Vec<EventFrame>),
    /// The events it missed must be read from the log: `after < seq <= upto`.
    Log { after: i64, upto: i64 },
}

#[derive(Debug)]
pub struct SubscribeReply {
    /// The last event published before this subscriber joined; every later one is sent live.
    pub latest: i64,
    pub start: Start,
}

#[derive(Message)]
#[rtype(result = "SubscribeReply")]
pub struct Subscribe {
    pub id: u64,
    pub session: Addr<WsSession>,
    pub filter: TypeFilter,
    pub since: Option<i64>,
    pub link: Arc<Link>,
    /// The id hash of the session cookie the socket was opened with.
    pub session_hash: Option<String>,
}

/// A session was logged out: its sockets are closed with 1008.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionEnded {
    pub id_hash: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: u64,
}

/// How many sessions receive live events.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SubscriberCount;

struct Member {
    session: Addr<WsSession>,
    filter: TypeFilter,
    link: Arc<Link>,
    session_hash: Option<String>,
}

pub struct Hub {
    cfg: HubConfig,
    latest: i64,
    recent: VecDeque<EventFrame>,
    members: HashMap<u64, Member>,
    /// Sessions told to close that have not ended yet, and since when.
    closing: HashMap<u64, (Instant, Arc<Link>)>,
    stats: Arc<LiveStats>,
}

impl Hub {
    /// `latest` is the last `seq` committed before the hub was registered as a listener.
    pub fn new(cfg: HubConfig, latest: i64, stats: Arc<LiveStats>) -> Self {
        Self {
            cfg,
            latest,
            recent: VecDeque::new(),
            members: HashMap::new(),
            closing: HashMap::new(),
            stats,
        }
    }

    fn count(&self) {
        self.stats
            .subscribers
            .store(self.members.len(), Ordering::Relaxed);
    }

    fn publish(&mut self, frame: EventFrame) {
        self.latest = frame.seq;
        if self.cfg.recent_events > 0 {
            if self.recent.len() == self.cfg.recent_events {
                self.recent.pop_front();
            }
            self.recent.push_back(frame.clone());
        }
        let mut slow = Vec::new();
        for (id, member) in &self.members {
            if !member.filter.matches(frame.kind) {
                continue;
            }
            if member.link.queued.load(Ordering::Relaxed) >= self.cfg.max_buffered_frames {
                slow.push(*id);
                continue;
            }
            member.link.queued.fetch_add(1, Ordering::Relaxed);
            member.session.do_send(Deliver(frame.clone()));
        }
        for id in slow {
            if let Some(member) = self.members.remove(&id) {
                tracing::info!(
                    session = id,
                    buffered = self.cfg.max_buffered_frames,
                    "live client cannot keep up; closing it with 1013"
                );
                self.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
                member.session.do_send(Overflow);
                self.closing.insert(id, (Instant::now(), member.link));
            }
        }
        self.stats.events_published.fetch_add(1, Ordering::Relaxed);
    }

    /// The missed events `since < seq <= latest`, when memory still holds all of them.
    fn recent_after(&self, since: i64, filter: TypeFilter) -> Option<Vec<EventFrame>> {
        let first = self.recent.front()?;
        let last = self.recent.back()?;
        if first.seq > since + 1 || last.seq != self.latest {
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

    /// Ends connections whose session cannot run to end itself (see `Link::kill`).
    fn watchdog(&mut self) {
        let limit = self.cfg.idle_timeout + self.cfg.ping_interval;
        let stuck: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.link.silent_for() > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            if let Some(member) = self.members.remove(&id) {
                tracing::info!(session = id, "live client stuck; dropping its connection");
                member.link.kill();
                self.closing.insert(id, (Instant::now(), member.link));
            }
        }
        self.closing.retain(|id, (since, link)| {
            if since.elapsed() > limit {
                tracing::info!(
                    session = id,
                    "live client did not close; dropping its connection"
                );
                link.kill();
                false
            } else {
                true
            }
        });
        self.count();
    }

    /// Drops frames past the retention window from the ring (the log itself is pruned by
    /// the store's maintenance pass).
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
}

/// Closes every session with 1001 before the server stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Hub {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) {
        for (_, member) in self.members.drain() {
            member.session.do_send(super::session::GoingAway);
        }
        self.count();
    }
}

impl Handler<EventsCommitted> for Hub {
    type Result = ();

    fn handle(&mut self, msg: EventsCommitted, _: &mut Self::Context) {
        for event in msg.0.iter() {
            match EventFrame::of(event) {
                Ok(frame) => self.publish(frame),
                Err(e) => tracing::error!(seq = event.seq, error = %e, "event not serialisable"),
            }
        }
    }
}

impl Handler<Subscribe> for Hub {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        let latest = self.latest;
        let start = match msg.since {
            None => Start::Live,
            Some(since) if since > latest => Start::Resync,
            Some(since) if since == latest => Start::Live,
            Some(since) => match self.recent_after(since, msg.filter) {
                Some(frames) => Start::Recent(frames),
                None => Start::Log {
                    after: since,
                    upto: latest,
                },
            },
        };
        msg.link.heard();
        self.members.insert(
            msg.id,
            Member {
                session: msg.session,
                filter: msg.filter,
                link: msg.link,
                session_hash: msg.session_hash,
            },
        );
        self.count();
        MessageResult(SubscribeReply { latest, start })
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
                member.session.do_send(Revoked);
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

    #[test]
    fn frames_have_the_contract_shape() {
        let event = Event {
            kind: EventType::OrderDeleted,
            seq: 7,
            at: Timestamp::from_millis(1_795_253_400_123),
            actor: crate::domain::event::Actor::user("auth0|42", "Wanjiku"),
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
