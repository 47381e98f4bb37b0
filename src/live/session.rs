//! WsSession: one actor per WebSocket. It says hello, replays what the client missed (from
//! its shard's memory or from the event log, page by page), then writes live frames from the
//! shard of its HTTP worker (see `shard`); it pings the client and drops it when it falls
//! silent.
//!
//! The actor runs only when actix-web asks its response stream for more bytes, so a page
//! of replay is read only once the previous one has been handed to the socket: a slow
//! reader slows its own replay and nothing else.

use super::Slot;
use super::filter::TypeFilter;
use super::link::Link;
use super::protocol::{
    EventFrame, Rewake, Start, Subscribe, SubscribeReply, ToSession, Unsubscribe,
};
use super::shard::Shard;
use crate::auth::{AuthFailure, Authenticator, Proof};
use crate::domain::time::Timestamp;
use crate::store::Reader;
use crate::store::reader::EventsAfter;
use actix::prelude::*;
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use std::sync::Arc;
use std::time::Duration;

/// Events read from the log per query during a replay.
const REPLAY_PAGE: u64 = 500;
/// Bytes of live frames written per turn: what one session holds in its buffers at a time
/// (with `crate::http::WRITE_BUFFER`), however far behind it is. The rest waits in its shard's log,
/// counted against `live.max_buffered_bytes`, while the other sessions take their turns.
const TURN_BYTES: usize = 7 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// `live.retention_days`: a resume that needs older events is told to resync (the log
    /// keeps them longer, for the audit history, but a replay is not meant to reach back
    /// that far).
    pub replay_window: Duration,
}

/// Leaves the shard's table when the session ends, however it ends (the actor is dropped
/// even when its connection is cut without a close).
struct Membership {
    shard: Addr<Shard>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.shard.do_send(Unsubscribe { id: self.id });
    }
}

/// What the socket was opened with, checked again on every ping tick: a socket must not
/// outlive its credentials (a logout, an expired token, a token removed from the settings).
pub struct Credentials {
    pub auth: Arc<Authenticator>,
    pub proof: Proof,
    /// The session's id hash, when a session cookie opened the socket (logout finds it).
    pub session_hash: Option<String>,
    /// Its place under the connection caps, given back when the session ends.
    pub slot: Slot,
}

pub struct WsSession {
    id: u64,
    shard: Addr<Shard>,
    reader: Addr<Reader>,
    filter: TypeFilter,
    since: Option<i64>,
    link: Arc<Link>,
    cfg: SessionConfig,
    membership: Option<Membership>,
    credentials: Option<Credentials>,
}

impl WsSession {
    pub fn new(
        id: u64,
        shard: Addr<Shard>,
        reader: Addr<Reader>,
        filter: TypeFilter,
        since: Option<i64>,
        link: Arc<Link>,
        cfg: SessionConfig,
    ) -> Self {
        Self {
            id,
            shard,
            reader,
            filter,
            since,
            link,
            cfg,
            membership: None,
            credentials: None,
        }
    }

    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    fn credentials_ended(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.close(
            ctx,
            CloseCode::Policy,
            "the credentials of this connection are no longer valid",
        );
    }

    /// Checks the credentials again; closes with 1008 when they no longer hold (a database
    /// that cannot be asked is not a reason to close).
    fn recheck(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(c) = &self.credentials else {
            return;
        };
        let (auth, credential) = (c.auth.clone(), c.proof.credential.clone());
        ctx.spawn(
            async move { auth.verify(&credential).await.err() }
                .into_actor(self)
                .map(|failure, act, ctx| match failure {
                    None | Some(AuthFailure::Unavailable(_)) => {}
                    Some(failure) => {
                        tracing::info!(
                            session = act.id,
                            reason = failure.reason(),
                            "live client's credentials ended; closing it with 1008"
                        );
                        act.credentials_ended(ctx);
                    }
                }),
        );
    }

    /// `{"type":"hello","seq":N}` and the like, `type` first as in event frames (`kind` is
    /// one of this module's own words, never client input).
    fn control(kind: &'static str, seq: i64) -> String {
        format!(r#"{{"type":"{kind}","seq":{seq}}}"#)
    }

    fn begin(&mut self, reply: SubscribeReply, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.text(Self::control("hello", reply.latest));
        match reply.start {
            Start::Live => {}
            Start::Resync => ctx.text(Self::control("resync", reply.latest)),
            Start::Recent(frames) => {
                for frame in frames {
                    ctx.text(frame.text);
                }
            }
            Start::Log { after, upto } => self.replay(after, upto, ctx),
        }
    }

    /// Writes the logged events `after < seq <= upto`, one page at a time. Live frames wait
    /// in the mailbox meanwhile (`wait` holds it), so they follow the replay in order.
    fn replay(&mut self, after: i64, upto: i64, ctx: &mut ws::WebsocketContext<Self>) {
        let query = EventsAfter {
            after,
            upto,
            limit: REPLAY_PAGE,
        };
        let page = self
            .reader
            .send(query)
            .into_actor(self)
            .map(move |result, act, ctx| {
                let events = match result {
                    Ok(Ok(events)) => events,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "live replay failed");
                        return act.close(ctx, CloseCode::Again, "the event log is unavailable");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "live replay failed");
                        return act.close(ctx, CloseCode::Again, "the event log is unavailable");
                    }
                };
                // This page is read only because the socket took the previous one: the client is
                // reading. That is the sign of life to go by while the replay holds the session
                // (no pings go out and no pongs are read until it ends).
                act.link.heard();
                let window = i64::try_from(act.cfg.replay_window.as_millis()).unwrap_or(i64::MAX);
                let oldest = Timestamp::now().plus_millis(-window);
                let mut expected = after + 1;
                for event in &events {
                    if event.seq != expected || event.at < oldest {
                        // Pruned under us, or older than the replay window: the client
                        // reloads instead.
                        ctx.text(Self::control("resync", upto));
                        return;
                    }
                    expected += 1;
                    if !act.filter.matches(event.kind) {
                        continue;
                    }
                    match EventFrame::of(event) {
                        Ok(frame) => ctx.text(frame.text),
                        Err(e) => {
                            tracing::error!(seq = event.seq, error = %e, "event not serialisable")
                        }
                    }
                }
                let done = expected - 1;
                if done == upto {
                    return;
                }
                if events.is_empty() {
                    ctx.text(Self::control("resync", upto));
                    return;
                }
                act.replay(done, upto, ctx);
            });
        ctx.wait(page);
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: CloseCode, why: &str) {
        ctx.close(Some(CloseReason {
            code,
            description: Some(why.to_string()),
        }));
        ctx.stop();
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.heard();
        self.membership = Some(Membership {
            shard: self.shard.clone(),
            id: self.id,
        });
        let subscribe = Subscribe {
            id: self.id,
            session: ctx.address().recipient(),
            filter: self.filter,
            since: self.since,
            link: self.link.clone(),
            session_hash: self
                .credentials
                .as_ref()
                .and_then(|c| c.session_hash.clone()),
        };
        // A token's or session's expiry ends the socket at that moment, not a tick later.
        if let Some(expires_at) = self.credentials.as_ref().and_then(|c| c.proof.expires_at) {
            let left =
                expires_at.saturating_mul(1000) - crate::domain::time::Timestamp::now().millis();
            let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
            ctx.run_later(left, |act, ctx| {
                tracing::info!(
                    session = act.id,
                    "live client's credentials expired; closing it with 1008"
                );
                act.credentials_ended(ctx);
            });
        }
        ctx.wait(
            self.shard
                .send(subscribe)
                .into_actor(self)
                .map(|reply, act, ctx| match reply {
                    Ok(reply) => act.begin(reply, ctx),
                    Err(_) => act.close(ctx, CloseCode::Restart, "the server is shutting down"),
                }),
        );
        ctx.run_interval(self.cfg.ping_interval, |act, ctx| {
            if act.link.silent_for() > act.cfg.idle_timeout {
                tracing::debug!(session = act.id, "live client silent; dropping it");
                act.close(ctx, CloseCode::Away, "no answer to pings");
            } else {
                ctx.ping(b"");
                act.recheck(ctx);
            }
        });
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            // A turn's worth of what waits, in one socket write.
            ToSession::Flush => {
                let (frames, more) = self.link.take(TURN_BYTES);
                for frame in frames {
                    ctx.text(frame.text);
                }
                if more {
                    self.shard.do_send(Rewake { id: self.id });
                }
            }
            ToSession::Overflow => self.close(
                ctx,
                CloseCode::Again,
                "too far behind; reconnect with ?since=<last seq>",
            ),
            ToSession::Revoked => {
                tracing::info!(
                    session = self.id,
                    "live client's session ended; closing it with 1008"
                );
                self.credentials_ended(ctx);
            }
            ToSession::GoingAway => self.close(ctx, CloseCode::Away, "the server is shutting down"),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                tracing::debug!(session = self.id, error = %e, "live client protocol error");
                return self.close(ctx, CloseCode::Protocol, "protocol error");
            }
        };
        self.link.heard();
        match msg {
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
            // Clients have nothing to say yet; anything they send counts as a sign of life.
            ws::Message::Pong(_)
            | ws::Message::Text(_)
            | ws::Message::Binary(_)
            | ws::Message::Continuation(_)
            | ws::Message::Nop => {}
        }
    }
}
