//! Running under systemd: socket activation (`sd_listen_fds`) and readiness, stopping and
//! watchdog notifications (`sd_notify`), following the documented protocols (environment
//! variables `LISTEN_PID`/`LISTEN_FDS`, `NOTIFY_SOCKET`, `WATCHDOG_USEC`/`WATCHDOG_PID`), so
//! the daemon needs no libsystemd. Outside systemd every call here does nothing.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

fn ours(pid_var: &str) -> bool {
    std::env::var(pid_var).ok().and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| p == std::process::id())
}

/// The listening socket systemd passed (socket activation), if any: it must be one
/// `SOCK_SEQPACKET` Unix socket that listens. The variables are removed so children do not
/// inherit them.
pub fn listen_fd() -> std::io::Result<Option<OwnedFd>> {
    if !ours("LISTEN_PID") {
        return Ok(None);
    }
    let count: i32 = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    // SAFETY: single-threaded at startup, before any thread reads the environment.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if count != 1 {
        return Err(std::io::Error::other(format!("systemd passed {count} sockets; accel.socket declares one")));
    }
    // SAFETY: systemd passed descriptor 3 to this process (LISTEN_PID is ours) and nothing
    // else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    let seqpacket = rustix::net::sockopt::socket_type(&fd)? == SocketType::SEQPACKET;
    let listening = rustix::net::sockopt::socket_acceptconn(&fd)?;
    if !seqpacket || !listening {
        return Err(std::io::Error::other(
            "the socket systemd passed is not a listening SOCK_SEQPACKET socket (ListenSequentialPacket=)",
        ));
    }
    Ok(Some(fd))
}

/// Sends `state` (e.g. `READY=1`) to systemd's notification socket, if there is one.
pub fn notify(state: &str) {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddrUnix::new_abstract_name(name),
        None => SocketAddrUnix::new(std::path::Path::new(&path)),
    };
    let Ok(addr) = addr else { return };
    let Ok(sock) = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None) else {
        return;
    };
    let _ = rustix::net::sendto(&sock, state.as_bytes(), SendFlags::NOSIGNAL, &addr);
}

/// If systemd asked for watchdog pings (`WatchdogSec=`), the interval to ping at (half the
/// timeout, as sd_watchdog_enabled advises).
pub fn watchdog_interval() -> Option<Duration> {
    if std::env::var_os("WATCHDOG_PID").is_some() && !ours("WATCHDOG_PID") {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
