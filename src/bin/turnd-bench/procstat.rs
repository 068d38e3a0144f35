//! The server's CPU time and memory, read from /proc.

use std::time::Duration;

/// utime + stime of process `pid` (every thread), from /proc/PID/stat.
pub fn cpu(pid: u32) -> Option<Duration> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// utime + stime from a `stat` file (a process's or one thread's).
fn stat_cpu(path: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(path).ok()?;
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

/// utime + stime of each thread of `pid` (/proc/PID/task/TID/stat), by TID.
pub fn thread_cpu(pid: u32) -> Vec<(u32, Duration)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v: Vec<(u32, Duration)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((tid, stat_cpu(&format!("/proc/{pid}/task/{tid}/stat"))?))
        })
        .collect();
    v.sort_unstable();
    v
}

/// The busiest thread's CPU time between two samples, and how many threads
/// the process had at the end.
pub fn top_thread(start: &Sample, end: &Sample) -> Option<(Duration, usize)> {
    let top = end
        .threads
        .iter()
        .map(|&(tid, e)| {
            let s = start
                .threads
                .iter()
                .find(|&&(t, _)| t == tid)
                .map_or(Duration::ZERO, |&(_, s)| s);
            e.saturating_sub(s)
        })
        .max()?;
    Some((top, end.threads.len()))
}

/// A sample of the server's counters, when a PID was given.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub cpu: Option<Duration>,
    pub rss_kib: Option<u64>,
    /// utime + stime per thread (TID, time).
    pub threads: Vec<(u32, Duration)>,
}

/// Samples `pid` (nothing when `None`).
pub fn sample(pid: Option<u32>) -> Sample {
    match pid {
        Some(p) => Sample {
            cpu: cpu(p),
            rss_kib: rss_kib(p),
            threads: thread_cpu(p),
        },
        None => Sample::default(),
    }
}

/// The whole host's CPU time by state, summed over all CPUs (the `cpu` line
/// of /proc/stat). XDP and other softirq work is charged to no process in
/// particular, so this is the figure that sees all of a relay's cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Host {
    pub user: Duration,
    pub system: Duration,
    pub irq: Duration,
    pub softirq: Duration,
    pub idle: Duration,
    pub steal: Duration,
}

impl Host {
    /// user + nice + system + irq + softirq (idle, iowait and steal excluded).
    pub fn busy(&self) -> Duration {
        self.user + self.system + self.irq + self.softirq
    }

    pub fn since(&self, start: &Host) -> Host {
        Host {
            user: self.user.saturating_sub(start.user),
            system: self.system.saturating_sub(start.system),
            irq: self.irq.saturating_sub(start.irq),
            softirq: self.softirq.saturating_sub(start.softirq),
            idle: self.idle.saturating_sub(start.idle),
            steal: self.steal.saturating_sub(start.steal),
        }
    }
}

/// Reads /proc/stat's `cpu` line (None when it cannot be read).
pub fn host() -> Option<Host> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = turnd::sys::clock_ticks();
    let d = |v: u64| Duration::from_nanos(v.saturating_mul(1_000_000_000) / ticks);
    let g = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    Some(Host {
        user: d(g(0) + g(1)),
        system: d(g(2)),
        idle: d(g(3) + g(4)),
        irq: d(g(5)),
        softirq: d(g(6)),
        steal: d(g(7)),
    })
}

/// utime + stime of several processes, summed (missing ones count 0).
pub fn cpu_sum(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|&p| cpu(p)).sum()
}
