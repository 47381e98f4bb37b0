//! Stalled sessions, and the workaround that cuts them.
//!
//! A WebSocket session's actor (actix-web-actors) runs only when actix-web asks its
//! response stream for more bytes, which a socket whose client stopped reading never does:
//! such a session can neither ping nor notice that it should close. So the hub watches each
//! session's `Link` and cuts the TCP connection under it, through a second descriptor of
//! the socket noted when the connection was accepted.
//!
//! The rule, in one place: a session not heard from for `idle_timeout + ping_interval`
//! (see `stall_limit`), or told to close and not gone that long after, is cut.

use actix_web::HttpRequest;
use actix_web::dev::Extensions;
use std::any::Any;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a session may be silent (or take to close) before its connection is cut: the
/// session itself drops a client silent for `idle_timeout`, and checks every
/// `ping_interval`, so only a session that cannot run goes past this.
pub fn stall_limit(idle_timeout: Duration, ping_interval: Duration) -> Duration {
    idle_timeout + ping_interval
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

    /// Frames handed to the session and not yet written.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn sent(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn taken(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// Cuts the TCP connection under a session that cannot act for itself.
    pub fn cut(&self) {
        if let Some(conn) = &self.conn {
            conn.shutdown();
        }
    }
}

/// The raw socket of a plain TCP connection, noted when it is accepted.
#[derive(Debug, Clone, Copy)]
struct ConnFd(#[cfg(unix)] std::os::fd::RawFd);

/// For `HttpServer::on_connect`: remembers each connection's socket.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    #[cfg(unix)]
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        use std::os::fd::AsRawFd;
        ext.insert(ConnFd(tcp.as_raw_fd()));
    }
    #[cfg(not(unix))]
    let _ = (conn, ext);
}

/// A second handle on a WebSocket's TCP socket, to cut it when its session is stuck.
pub struct ConnHandle(std::net::TcpStream);

impl ConnHandle {
    pub fn of(req: &HttpRequest) -> Option<Self> {
        #[cfg(unix)]
        {
            let fd = req.conn_data::<ConnFd>()?.0;
            // SAFETY: the request is being served on this connection, so its socket is open
            // for as long as this handler runs; the clone below owns a descriptor of its own.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let owned = borrowed.try_clone_to_owned().ok()?;
            Some(Self(std::net::TcpStream::from(owned)))
        }
        #[cfg(not(unix))]
        {
            let _ = req;
            None
        }
    }

    fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}
