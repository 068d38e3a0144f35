//! coturn's `turnutils_uclient`: running it with a timeout and reading the
//! summary it prints (it exits 0 even at 100 % loss, so tests read the
//! figures).

use std::process::Command;
use std::time::Duration;

use super::run_with_timeout;

/// Figures from `turnutils_uclient`'s summary (it exits 0 even at 100 %
/// loss, so the test reads them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UclientSummary {
    /// "Total lost packets N".
    pub lost: u64,
    /// The final `tot_send_msgs=N`.
    pub sent: u64,
    /// The final `tot_recv_msgs=N`.
    pub received: u64,
}

/// Reads uclient's summary from its output; `None` when a figure is missing.
pub fn parse_uclient_summary(out: &str) -> Option<UclientSummary> {
    let (mut lost, mut sent, mut received) = (None, None, None);
    for line in out.lines() {
        if let Some(rest) = line.split("Total lost packets ").nth(1) {
            lost = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        // The final tally comes last; progress lines come earlier.
        if let Some(rest) = line.split("tot_send_msgs=").nth(1) {
            sent = rest.split(',').next().and_then(|n| n.trim().parse().ok());
            received = rest
                .split("tot_recv_msgs=")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.trim().parse().ok());
        }
    }
    Some(UclientSummary {
        lost: lost?,
        sent: sent?,
        received: received?,
    })
}

/// Runs uclient (`cmd`) for at most `timeout` and returns its summary, the
/// last 25 lines of its output (for failure messages) and how long it ran.
/// Panics, naming `what`, when it runs past `timeout` or prints no summary.
#[track_caller]
pub fn run_uclient(
    cmd: &mut Command,
    timeout: Duration,
    what: &str,
) -> (UclientSummary, String, Duration) {
    let out = run_with_timeout(cmd, timeout);
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let tail: String = {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    };
    assert!(
        !out.timed_out(),
        "{what} ran past {timeout:?}; output tail:\n{tail}"
    );
    let summary = parse_uclient_summary(&text)
        .unwrap_or_else(|| panic!("{what}: no summary in its output:\n{tail}"));
    (summary, tail, out.elapsed)
}
