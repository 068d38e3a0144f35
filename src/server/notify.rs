//! systemd's notify protocol (`sd_notify`): a datagram such as `READY=1` sent
//! to the Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). Without the variable nothing is sent.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (for example `"READY=1"` or `"STOPPING=1"`) to systemd.
///
/// # Errors
/// The socket error; `Ok(false)` when `$NOTIFY_SOCKET` is unset.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let path = path.to_string_lossy().into_owned();
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}
