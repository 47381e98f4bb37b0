//! Stalled sessions, and how they are cut.
//!
//! A WebSocket session's actor (actix-web-actors) runs only when actix-web asks its
//! response stream for more bytes, which a socket whose client stopped reading never does:
//! such a session can neither ping nor notice that it should close. So its shard watches
//! each session's `Link` and shuts down the TCP connection under it.
//!
//! The rule, in one place: a session not heard from for `idle_timeout + 2 * ping_interval`
//! (see `stall_limit`), or told to close and not gone that long after, is cut.
//!
//! The cut uses the connection's own descriptor, noted (as a number, with both ends'
//! addresses) when it was accepted; no second descriptor is held. It is safe because it
//! runs only on the thread that serves the connection (the shard shares the session's HTTP
//! worker): while the cut runs, that connection cannot be closed, so the descriptor is
//! either still this connection's or was closed before. A number reused since by another
//! socket is told apart by its addresses, and left alone.

#[cfg(unix)]
use crate::sys;
use actix_web::HttpRequest;
use actix_web::dev::Extensions;
use std::any::Any;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a session may be silent (or take to close) before its connection is cut: the
/// session itself drops a client silent for `idle_timeout`, checking every `ping_interval`,
/// so a session that runs has sent its close frame by `idle_timeout + ping_interval` (plus
/// its timer's lateness). One more interval keeps the cut from racing that close frame:
/// only a session that cannot run goes past this.
pub fn stall_limit(idle_timeout: Duration, ping_interval: Duration) -> Duration {
    idle_timeout + 2 * ping_interval
}

/// A plain TCP connection's socket, noted when it is accepted.
#[derive(Debug, Clone, Copy)]
struct ConnFd {
    #[cfg(unix)]
    fd: std::os::fd::RawFd,
    local: SocketAddr,
    peer: SocketAddr,
}

/// For `HttpServer::on_connect`: notes each connection's socket.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    #[cfg(unix)]
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        use std::os::fd::AsRawFd;
        if let (Ok(local), Ok(peer)) = (tcp.local_addr(), tcp.peer_addr()) {
            ext.insert(ConnFd {
                fd: tcp.as_raw_fd(),
                local,
                peer,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (conn, ext);
}

/// How to cut a WebSocket's TCP connection when its session is stuck.
#[derive(Debug)]
pub struct ConnHandle {
    conn: ConnFd,
    /// The HTTP worker serving the connection: the only thread that may cut it.
    thread: std::thread::ThreadId,
}

impl ConnHandle {
    pub fn of(req: &HttpRequest) -> Option<Self> {
        Some(Self {
            conn: *req.conn_data::<ConnFd>()?,
            thread: std::thread::current().id(),
        })
    }

    /// The descriptor, while it is still this connection's (see the module's note).
    #[cfg(unix)]
    fn fd(&self) -> Option<std::os::fd::RawFd> {
        if std::thread::current().id() != self.thread {
            tracing::error!("a connection may only be handled from the thread that serves it");
            return None;
        }
        let fd = self.conn.fd;
        let same = sys::local_addr(fd) == Some(self.conn.local)
            && sys::peer_addr(fd) == Some(self.conn.peer);
        same.then_some(fd)
    }

    /// Shuts the connection down (both ways), if its descriptor is still this connection.
    pub fn shutdown(&self) {
        #[cfg(unix)]
        if let Some(fd) = self.fd() {
            // The number is this connection's socket (checked, on the one thread that can
            // close it).
            sys::shutdown(fd);
        }
    }

    /// Fixes the socket's kernel send buffer at `bytes` (Linux doubles it for its own
    /// bookkeeping) instead of letting it grow to `tcp_wmem`'s maximum (4 MiB by default):
    /// a client that reads slowly then holds up its own session, within its bounds in the
    /// shard's log, rather than megabytes of kernel memory.
    pub fn limit_send_buffer(&self, bytes: usize) {
        #[cfg(unix)]
        if let Some(fd) = self.fd() {
            let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
            sys::set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size);
        }
        #[cfg(not(unix))]
        let _ = bytes;
    }
}
