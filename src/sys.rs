//! The few socket calls made by descriptor number, where the library that owns a socket
//! gives no handle to it: the live shards cut stalled WebSocket connections (`live::stall`)
//! and the store turns Nagle's algorithm off on its PostgreSQL connections
//! (`store::pg_socket`), each finding its socket by its addresses (`socket_of`). Unix
//! only; callers check that a number is still the socket they mean by its addresses
//! before changing it.

#![cfg(unix)]

use std::net::SocketAddr;
use std::os::fd::RawFd;

/// The socket's own address (`getsockname`), if `fd` is an IPv4 or IPv6 socket.
pub fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    sockaddr(fd, libc::getsockname)
}

/// The address the socket is connected to (`getpeername`), if it is connected.
pub fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    sockaddr(fd, libc::getpeername)
}

/// This process's descriptor of the TCP connection between `local` and `peer`.
pub fn socket_of(local: SocketAddr, peer: SocketAddr) -> Option<std::os::fd::RawFd> {
    let same = |a: Option<SocketAddr>, b: SocketAddr| {
        a.is_some_and(|a| a.ip().to_canonical() == b.ip() && a.port() == b.port())
    };
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .find(|&fd| same(local_addr(fd), local) && same(peer_addr(fd), peer))
}

/// Sets an integer socket option; false if the call failed.
pub fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> bool {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: setsockopt reads `len` bytes from `value`, a c_int that outlives the call; a
    // closed or foreign descriptor only makes it fail (callers check the addresses first).
    unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), len) == 0 }
}

/// Reads an integer socket option.
pub fn int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, a c_int, and sets `len`.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    (rc == 0).then_some(value)
}

/// Shuts the socket down both ways.
pub fn shutdown(fd: RawFd) {
    // SAFETY: shutdown takes a descriptor number and changes no memory.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

fn sockaddr(
    fd: RawFd,
    get: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: a zeroed sockaddr_storage is a valid value of it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_storage>()).ok()?;
    // SAFETY: `get` writes at most `len` bytes into `storage` and sets `len`; a closed or
    // foreign descriptor only makes it fail.
    let rc = unsafe { get(fd, (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { *(&raw const storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { *(&raw const storage).cast() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses_are_read_back_from_a_descriptor_and_not_after_it_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = client.as_raw_fd();
        let peer = client.peer_addr().ok();
        assert_eq!(local_addr(fd), client.local_addr().ok());
        assert_eq!(peer_addr(fd), peer);
        drop(client);
        // (Another test's socket may have the number by now, never with this peer.)
        assert_ne!(peer_addr(fd), peer);
    }

    #[test]
    fn an_option_set_by_number_is_read_back_by_std() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(!client.nodelay().unwrap());
        assert!(set_int_option(
            client.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            1
        ));
        assert!(client.nodelay().unwrap());
        let read = int_option(client.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY);
        assert_eq!(read.map(|v| v != 0), Some(true));
    }
}
