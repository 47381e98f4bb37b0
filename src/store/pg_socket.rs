//! Nagle's algorithm off on every PostgreSQL connection (TCP_NODELAY), as libpq does.
//!
//! sqlx 0.9.0 no longer sets TCP_NODELAY on its TCP sockets (sqlx issue #4335, fixed by pull
//! request #4336 after that release). Without it, a message that does not fit one TCP
//! segment (a batch's multi-row INSERT of 64 orders' events is larger than loopback's
//! 64 KiB) leaves its tail in the kernel until the server acknowledges the first part, and
//! Linux delays that acknowledgement by up to 40 ms: every large batch waited for it.
//!
//! sqlx gives no handle to its socket, so each new connection asks the server which
//! addresses it sees at both ends (`inet_client_addr()`, `inet_server_addr()` and their
//! ports: this process's local and peer addresses), and the one descriptor of this process
//! connected with exactly those addresses gets the option. A connection over a Unix socket
//! (no addresses) needs none. Delete this module once sqlx sets the option again.

use crate::sys;
use sea_orm::sqlx::{self, Row, postgres::PgConnection};
use std::net::{IpAddr, SocketAddr};

/// For the pool's `after_connect`: turns Nagle's algorithm off on `conn`'s socket. A socket
/// that cannot be found (a proxy in between shows the server other addresses) is left as it
/// is, with a warning: the connection works, only large statements are slower. So is a
/// server that refuses the query (one that only speaks PostgreSQL's protocol, without
/// these functions); a connection that fails is an error.
pub async fn set_nodelay(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let asked = sqlx::query(
        "SELECT host(inet_client_addr()) AS local_ip, inet_client_port() AS local_port, \
         host(inet_server_addr()) AS peer_ip, inet_server_port() AS peer_port",
    )
    .fetch_one(conn)
    .await;
    let row = match asked {
        Ok(row) => row,
        Err(sqlx::Error::Database(e)) => {
            tracing::warn!(
                error = %e,
                "the server did not tell a PostgreSQL connection's addresses: Nagle's \
                 algorithm stays on, and statements larger than a TCP segment may wait up \
                 to 40 ms"
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let addr = |ip: &str, port: &str| -> Option<SocketAddr> {
        let ip: IpAddr = row.try_get::<Option<String>, _>(ip).ok()??.parse().ok()?;
        let port = u16::try_from(row.try_get::<Option<i32>, _>(port).ok()??).ok()?;
        Some(SocketAddr::new(ip.to_canonical(), port))
    };
    let (Some(local), Some(peer)) = (addr("local_ip", "local_port"), addr("peer_ip", "peer_port"))
    else {
        return Ok(());
    };
    match sys::socket_of(local, peer) {
        Some(fd) if sys::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1) => {}
        _ => tracing::warn!(
            %local, %peer,
            "could not turn Nagle's algorithm off on a PostgreSQL connection: statements \
             larger than a TCP segment may wait up to 40 ms"
        ),
    }
    Ok(())
}
