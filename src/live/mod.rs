//! Live events over WebSocket: the Hub actor (follows the log), a Shard actor per HTTP
//! worker thread (fans out to that worker's sockets), one WsSession actor per socket, the
//! `GET /api/v1/ws` upgrade and the `duka watch` client.
//!
//! actix-web-actors (deprecated upstream, chosen for actor-per-socket) is used only in
//! this module, so that a move to `actix-ws` touches nothing else.

pub mod feed;
pub mod filter;
pub mod hub;
pub mod link;
pub mod protocol;
pub mod session;
pub mod shard;
pub mod stall;
pub mod watch;

pub use stall::on_connect;

use crate::auth::{Authenticator, Principal, Proof};
use crate::config::Settings;
use crate::http::params::Params;
use crate::http::problem::ApiError;
use crate::store::Repository;
use crate::store::repository::ListenEvents;
use actix::{Actor, Addr};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use filter::TypeFilter;
use hub::Hub;
use link::{Bounds, Link, SharedLog};
use protocol::SubscriberCount;
use sea_orm::DatabaseConnection;
use session::{SessionConfig, WsSession};
use shard::{Shard, ShardConfig};
use stall::ConnHandle;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters for operations (and tests); the hub keeps them current.
#[derive(Debug, Default)]
pub struct LiveStats {
    subscribers: AtomicUsize,
    events_published: AtomicU64,
    slow_closed: AtomicU64,
    /// How long the hub has been behind the deployment's log, in ms (0: caught up).
    lag_ms: AtomicU64,
}

impl LiveStats {
    /// Sessions currently receiving live events.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    pub fn events_published(&self) -> u64 {
        self.events_published.load(Ordering::Relaxed)
    }

    /// Clients closed with 1013 because they fell too far behind.
    pub fn slow_closed(&self) -> u64 {
        self.slow_closed.load(Ordering::Relaxed)
    }

    /// How long this instance's live feed has been behind the database's event log.
    pub fn lag(&self) -> Duration {
        Duration::from_millis(self.lag_ms.load(Ordering::Relaxed))
    }
}

/// The running live service, as the rest of the app sees it.
#[derive(Clone)]
pub struct Live {
    /// Tells this service's shards apart from another's in the same process (tests).
    id: u64,
    pub hub: Addr<Hub>,
    pub stats: Arc<LiveStats>,
    shard: ShardConfig,
    db: DatabaseConnection,
    session: SessionConfig,
    next_id: Arc<AtomicU64>,
    sockets: Arc<Sockets>,
    /// `live.max_lag_secs`.
    max_lag: Duration,
}

/// Open sockets, in all and per principal, against `live.max_connections*`.
struct Sockets {
    max_total: usize,
    max_per_principal: usize,
    /// (all open sockets, open sockets per subject)
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// Ids of running live services.
static NEXT_LIVE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's shard of each live service (and its log), started with its first
    /// socket here.
    static SHARDS: RefCell<HashMap<u64, (Addr<Shard>, SharedLog)>> = RefCell::new(HashMap::new());
}

/// The kernel send buffer of a WebSocket's socket (see `ConnHandle::limit_send_buffer`):
/// ample for event frames (128 KiB in flight at 100 ms is 1.3 MB/s to one dashboard).
const SOCKET_SEND_BUFFER: usize = 64 * 1024;

/// How long a client refused by a cap is told to wait.
const CAPPED_RETRY_SECS: u64 = 10;

/// One open socket's place under the caps (and in the connection gauge), given back when
/// its session ends.
pub struct Slot {
    sockets: Arc<Sockets>,
    subject: String,
}

impl Sockets {
    fn acquire(self: &Arc<Self>, subject: &str) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *open;
        let mine = per.get(subject).copied().unwrap_or(0);
        if *total >= self.max_total || mine >= self.max_per_principal {
            return None;
        }
        *total += 1;
        per.insert(subject.to_string(), mine + 1);
        crate::metrics::websocket_opened();
        Some(Slot {
            sockets: self.clone(),
            subject: subject.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.sockets.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.subject);
            }
        }
        crate::metrics::websocket_closed();
    }
}

impl Live {
    /// Starts the hub and its feed (on `arbiter`, a thread of their own) and registers the hub for
    /// this instance's commits. `latest` is the last seq of the log when it starts: the hub
    /// publishes what follows, whoever commits it.
    pub fn start(
        settings: &Settings,
        repo: &Addr<Repository>,
        db: DatabaseConnection,
        latest: i64,
        notify_tag: String,
        arbiter: &actix::ArbiterHandle,
    ) -> Self {
        let live = &settings.live;
        let ping_interval = Duration::from_secs(live.ping_interval_secs);
        let idle_timeout = Duration::from_secs(live.idle_timeout_secs);
        let stats = Arc::new(LiveStats::default());
        let shard = ShardConfig {
            bounds: Bounds {
                frames: live.max_buffered_frames,
                bytes: live.max_buffered_bytes,
            },
            recent_events: live.recent_events,
            ping_interval,
            idle_timeout,
            retention: retention(settings),
        };
        let hub = Hub::new(db.clone(), latest, stats.clone());
        let listen = matches!(db.get_database_backend(), sea_orm::DbBackend::Postgres).then(|| {
            feed::Listen {
                url: settings.database.url.clone(),
                own_tag: notify_tag,
            }
        });
        let feed_db = db.clone();
        let hub = Hub::start_in_arbiter(arbiter, move |ctx| {
            feed::start(
                actix::AsyncContext::address(ctx),
                feed_db,
                listen,
                hub.feed_stop(),
            );
            hub
        });
        repo.do_send(ListenEvents(hub.clone().recipient()));
        Self {
            id: NEXT_LIVE.fetch_add(1, Ordering::Relaxed),
            hub,
            stats,
            shard,
            db,
            session: SessionConfig {
                ping_interval,
                idle_timeout,
                replay_window: retention(settings),
            },
            next_id: Arc::new(AtomicU64::new(1)),
            max_lag: Duration::from_secs(live.max_lag_secs),
            sockets: Arc::new(Sockets {
                max_total: live.max_connections,
                max_per_principal: live.max_connections_per_principal,
                open: Mutex::new((0, HashMap::new())),
            }),
        }
    }

    /// A session was logged out: its sockets are closed with 1008 now (sockets on other
    /// instances notice on their next credential check).
    pub fn session_ended(&self, id_hash: String) {
        self.hub.do_send(protocol::SessionEnded { id_hash });
    }

    /// How far behind the database's event log the feed is, when that is more than
    /// `live.max_lag_secs` (readiness fails meanwhile).
    pub fn lagging(&self) -> Option<Duration> {
        let lag = self.stats.lag();
        (lag > self.max_lag).then_some(lag)
    }

    /// The number of subscribed sessions, as the shards count them.
    pub async fn subscriber_count(&self) -> Option<usize> {
        self.hub.send(SubscriberCount).await.ok()
    }

    /// This thread's shard (an HTTP worker's) and its log, started with the first socket
    /// here.
    fn local_shard(&self) -> (Addr<Shard>, SharedLog) {
        SHARDS.with(|shards| {
            let mut shards = shards.borrow_mut();
            if let Some(shard) = shards.get(&self.id).filter(|(s, _)| s.connected()) {
                return shard.clone();
            }
            let log = SharedLog::default();
            let shard = Shard::new(
                self.shard.clone(),
                self.hub.clone(),
                self.db.clone(),
                log.clone(),
                self.stats.clone(),
            )
            .start();
            shards.insert(self.id, (shard.clone(), log.clone()));
            (shard, log)
        })
    }
}

/// How far back `?since=` may resume (`live.retention_days`).
pub fn retention(settings: &Settings) -> Duration {
    Duration::from_secs(u64::from(settings.live.retention_days) * 86_400)
}

/// Routes inside the authenticated `/api/v1` scope.
pub fn routes(api: &mut crate::http::openapi::Routes) {
    api.add_for(crate::auth::role::Role::Viewer, __path_upgrade, upgrade);
}

/// `GET /api/v1/ws`: checks the query, then upgrades to a WebSocket session.
#[utoipa::path(get, path = "/api/v1/ws", tag = "live",
    params(
        ("since" = Option<i64>, Query, description = "Replay every event with `seq` greater than this, then continue live"),
        ("types" = Option<String>, Query, description = "Comma-separated event types to receive, e.g. `order.created,notification.updated`"),
        ("access_token" = Option<String>, Query, description = "The bearer credential, for clients that cannot set headers"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol: `hello`, then event frames `{type, seq, at, data}`"),
        (status = 400, description = "A bad `since` or `types`, or not a WebSocket upgrade", body = crate::http::openapi::Problem, content_type = crate::http::openapi::PROBLEM_JSON),
        (status = 429, description = "Too many open WebSockets (in all, or of this principal): retry after `Retry-After` seconds", body = crate::http::openapi::Problem, content_type = crate::http::openapi::PROBLEM_JSON),
    ))]
pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    live: web::Data<Live>,
    state: web::Data<crate::http::AppState>,
    auth: web::Data<Authenticator>,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let params = Params::of(&req);
    let since = params.parse("since", |v| {
        v.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| "must be a non-negative integer (the last seq you saw)".to_string())
    })?;
    let filter = params
        .parse("types", TypeFilter::parse)?
        .unwrap_or(TypeFilter::ALL);
    ws::handshake(&req).map_err(|e| ApiError::BadRequest {
        detail: format!("a WebSocket upgrade is required here: {e}"),
        param: None,
    })?;
    let proof = req
        .extensions()
        .get::<Proof>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("no proof of credentials".into()))?;
    let slot = live
        .sockets
        .acquire(&principal.subject)
        .ok_or(ApiError::RateLimited {
            retry_after_secs: CAPPED_RETRY_SECS,
        })?;
    let session_hash = match &proof.credential {
        crate::auth::Credential::Session(cookie) => auth.sessions.id_hash_of(cookie),
        crate::auth::Credential::Bearer(_) => None,
    };
    let conn = ConnHandle::of(&req);
    if let Some(conn) = &conn {
        conn.limit_send_buffer(SOCKET_SEND_BUFFER);
    }
    let (shard, log) = live.local_shard();
    let link = Arc::new(Link::new(log, filter, conn));
    let id = live.next_id.fetch_add(1, Ordering::Relaxed);
    let session = WsSession::new(
        id,
        shard,
        state.reader.clone(),
        filter,
        since,
        link,
        live.session,
    )
    .with_credentials(session::Credentials {
        auth: auth.into_inner(),
        proof,
        session_hash,
        slot,
    });
    ws::WsResponseBuilder::new(session, &req, stream)
        .start()
        .map_err(|e| ApiError::BadRequest {
            detail: format!("a WebSocket upgrade is required here: {e}"),
            param: None,
        })
}
