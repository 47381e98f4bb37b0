//! Every message of the live service, in one place: what the hub is told (by sessions, the
//! writer, the feed and the app), and what it tells sessions. The hub holds each session as
//! a `Recipient<ToSession>`, so `hub` and `session` do not know each other's types.

use super::filter::TypeFilter;
use super::stall::Link;
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

// ---- hub -> session ---------------------------------------------------------------------

#[derive(Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A live frame.
    Deliver(EventFrame),
    /// The client fell too far behind: close with 1013.
    Overflow,
    /// Its browser session was logged out: close with 1008.
    Revoked,
    /// The server is shutting down: close with 1001 (clients resume with `?since=`).
    GoingAway,
}

// ---- session -> hub ---------------------------------------------------------------------

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

// ---- the app -> hub ---------------------------------------------------------------------

/// A browser session was logged out: its sockets are closed with 1008.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionEnded {
    pub id_hash: String,
}

/// How many sessions receive live events.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SubscriberCount;

/// The service has stopped: the hub and its feed end.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Closes every session with 1001 before the server stops.
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
