//! What happens on a panic, and a test-only hook that injects one.
//!
//! A panic anywhere in the server ends the process with status
//! [`PANIC_EXIT_STATUS`] after one error log line ([`exit_on_panic`]), so
//! that the service manager restarts it (the systemd unit has
//! `Restart=on-failure`). Without this, a panic inside a tokio task would
//! end that task only (tokio catches it), and a panic on a worker thread
//! would end that worker only: either way a half-alive server whose
//! listeners still take clients that nobody serves.
//!
//! **Test-only**: the environment variable `TURND_FAULT_INJECT`, read once,
//! injects faults for `tests/faults.rs`. It is inert unless set; no
//! deployment should set it. Its forms:
//!
//! - `panic-worker:N`: UDP relay worker `N` (0-based) panics on
//!   the first datagram its UDP listener receives;
//! - `end-worker:N`: UDP relay worker `N` ends its thread as it
//!   starts, without a panic (the main thread notices within 500 ms and
//!   turnd exits with status 1).

use std::sync::OnceLock;

/// The exit status after a panic: Rust's own for a panicking main thread.
pub const PANIC_EXIT_STATUS: i32 = 101;

/// The environment variable of the test-only fault hook.
pub const FAULT_INJECT_ENV: &str = "TURND_FAULT_INJECT";

/// Installs a panic hook that runs the default one (the message and
/// location on stderr), logs one error line and exits the process with
/// [`PANIC_EXIT_STATUS`]. Call once, after logging is set up.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("?"),
            panic = %info,
            status = PANIC_EXIT_STATUS,
            "a thread panicked: exiting so that the service manager restarts turnd"
        );
        std::process::exit(PANIC_EXIT_STATUS);
    }));
}

/// The parsed `TURND_FAULT_INJECT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `panic-worker:N`.
    PanicWorker(usize),
    /// `end-worker:N`.
    EndWorker(usize),
}

/// Parses the hook's value; `None` for an empty or unknown one.
fn parse(value: &str) -> Option<Fault> {
    let (kind, n) = value.split_once(':')?;
    let n = n.parse().ok()?;
    match kind {
        "panic-worker" => Some(Fault::PanicWorker(n)),
        "end-worker" => Some(Fault::EndWorker(n)),
        _ => None,
    }
}

fn injected() -> Option<Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        let value = std::env::var(FAULT_INJECT_ENV).ok()?;
        let fault = parse(&value);
        match fault {
            Some(f) => tracing::warn!(?f, "{FAULT_INJECT_ENV} is set: a test-only fault is armed"),
            None => tracing::warn!(%value, "{FAULT_INJECT_ENV}: unknown fault, ignored"),
        }
        fault
    })
}

/// Reads `TURND_FAULT_INJECT` now (at start), logging a warning when it
/// arms a fault.
pub fn arm() {
    let _ = injected();
}

/// Test-only: panics when `TURND_FAULT_INJECT=panic-worker:N` names
/// `worker`. Called by a UDP worker on each batch its listeners receive.
pub fn on_datagram(worker: usize) {
    if injected() == Some(Fault::PanicWorker(worker)) {
        panic!("{FAULT_INJECT_ENV}: injected panic in relay worker {worker}");
    }
}

/// Test-only: true when `TURND_FAULT_INJECT=end-worker:N` names `worker`,
/// which then ends its thread at once.
pub fn ends_worker(worker: usize) -> bool {
    injected() == Some(Fault::EndWorker(worker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_faults_only() {
        assert_eq!(parse("panic-worker:1"), Some(Fault::PanicWorker(1)));
        assert_eq!(parse("panic-worker:0"), Some(Fault::PanicWorker(0)));
        assert_eq!(parse("end-worker:2"), Some(Fault::EndWorker(2)));
        assert_eq!(parse("panic-worker:"), None);
        assert_eq!(parse("panic-worker:x"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("other"), None);
    }
}
