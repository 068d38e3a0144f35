//! The server's CPU time and memory, read from /proc.

use std::time::Duration;

/// utime + stime of process `pid` (every thread), from /proc/PID/stat.
pub fn cpu(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is f[0]; utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let ticks = turnd::sys::clock_ticks();
    Some(Duration::from_nanos(
        (utime + stime).saturating_mul(1_000_000_000) / ticks,
    ))
}

/// VmRSS of process `pid` in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A sample of the server's counters, when a PID was given.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub cpu: Option<Duration>,
    pub rss_kib: Option<u64>,
}

/// Samples `pid` (nothing when `None`).
pub fn sample(pid: Option<u32>) -> Sample {
    match pid {
        Some(p) => Sample {
            cpu: cpu(p),
            rss_kib: rss_kib(p),
        },
        None => Sample::default(),
    }
}
