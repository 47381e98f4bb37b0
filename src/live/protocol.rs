//! Every message of the live service, in one place: what the hub is told (by the writer,
//! the feed, its shards and the app), what it tells the shards, and what shards and
//! sessions tell each other. A shard holds each session as a `Recipient<ToSession>`, so
//! `shard` and `session` do not know each other's types.

use super::filter::TypeFilter;
use super::link::Link;
use super::shard::Shard;
use crate::domain::event::{Event, EventType};
use crate::domain::time::Timestamp;
use actix::prelude::*;
use bytestring::ByteString;
use std::sync::Arc;

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

// ---- hub -> shard -----------------------------------------------------------------------

/// The next events, in `seq` order, following the last ones sent: one message per shard,
/// however many sessions it holds.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub Arc<[EventFrame]>);

// ---- shard -> hub -----------------------------------------------------------------------

/// A shard starts: it is sent every event after the seq in the reply.
#[derive(Message)]
#[rtype(result = "i64")]
pub struct AddShard(pub Addr<Shard>);

// ---- shard -> session -------------------------------------------------------------------

#[derive(Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// New frames wait for the session (in its shard's log, after its `Link`'s cursor):
    /// write a turn's worth.
    Flush,
    /// The client fell too far behind: close with 1013.
    Overflow,
    /// Its browser session was logged out: close with 1008.
    Revoked,
    /// The server is shutting down: close with 1001 (clients resume with `?since=`).
    GoingAway,
}

// ---- session -> shard -------------------------------------------------------------------

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
    /// The seq the `hello` frame names: every later event is sent (replayed, then live).
    pub latest: i64,
    pub start: Start,
}

#[derive(Message)]
#[rtype(result = "SubscribeReply")]
pub struct Subscribe {
    pub id: u64,
    pub session: Recipient<ToSession>,
    pub filter: TypeFilter,
    pub since: Option<i64>,
    pub link: Arc<Link>,
    /// The id hash of the session cookie the socket was opened with.
    pub session_hash: Option<String>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: u64,
}

/// The session wrote one turn's worth and more frames wait: it queues behind the others.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Rewake {
    pub id: u64,
}

// ---- the app -> hub ---------------------------------------------------------------------

/// A browser session was logged out: its sockets are closed with 1008.
#[derive(Clone, Message)]
#[rtype(result = "()")]
pub struct SessionEnded {
    pub id_hash: String,
}

/// How many sessions receive live events (the hub sums its shards').
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SubscriberCount;

/// The service has stopped: the hub and its feed end.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Closes every session with 1001 before the server stops (the hub tells its shards).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

// ---- the feed -> hub --------------------------------------------------------------------

/// The deployment's log reaches at least `latest` (a notification from another instance's
/// commit, or the once-a-second poll).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LogAdvanced {
    pub latest: i64,
}
