//! The one-minute soak: `turnd-bench soak --minutes 1` against the debug
//! turnd, under churn (UDP, TCP and TLS clients with REST credentials,
//! refreshes, permissions and channels left to expire, abandoned
//! allocations, SIGHUPs, traffic throughout). It checks ports and
//! descriptors (and loss), not RSS and not time: every relay port is free
//! again and turnd holds no more descriptors than before the first client.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// The whole run: one minute of churn, at most 45 s of drain (abandoned
/// allocations live 15 s), start and stop.
const SOAK_TIMEOUT: Duration = Duration::from_secs(150);

#[test]
fn one_minute_soak_leaves_no_relay_ports_or_descriptors() {
    let dir = TempDir::new("soak");
    let (min, max) = relay_ports(Suite::Soak, 0);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnd-bench"));
    cmd.args(["soak", "--turnd", env!("CARGO_BIN_EXE_turnd"), "--out"])
        .arg(&dir.path)
        .args([
            "--minutes",
            "1",
            "--clients",
            "30",
            "--hold-min",
            "5",
            "--hold-max",
            "20",
            "--lifetime",
            "15",
            "--sighup-secs",
            "20",
            "--sample-secs",
            "5",
            "--drain-secs",
            "40",
            "--min-port",
            &min.to_string(),
            "--max-port",
            &max.to_string(),
        ]);
    let out = run_with_timeout(&mut cmd, SOAK_TIMEOUT);
    // turnd-bench stops its turnd; should it have been killed at the
    // timeout, the turnd it started is stopped here, by its PID.
    let turnd_pid = out.stdout.lines().find_map(|l| {
        l.strip_prefix("turnd-bench soak: started turnd pid ")
            .and_then(|r| r.split(':').next())
            .and_then(|p| p.trim().parse::<u32>().ok())
    });
    if let Some(pid) = turnd_pid {
        let cmdline = read_or_empty(std::path::Path::new(&format!("/proc/{pid}/cmdline")));
        if cmdline.contains("turnd") {
            let _ = run_with_timeout(
                Command::new("kill").args(["-KILL", &pid.to_string()]),
                Duration::from_secs(5),
            );
        }
    }
    let report = format!(
        "turnd-bench soak ({:?}, {:?}):\n{}\nstderr:\n{}\nturnd log tail:\n{}",
        out.status,
        out.elapsed,
        out.stdout,
        out.stderr,
        tail(&read_or_empty(&dir.join("turnd.log")), 40)
    );
    assert!(!out.timed_out(), "timed out: {report}");
    for check in [
        "PASS turnd ran to the end",
        "PASS ports: 0 allocations and 0 relay ports in use at the end",
        "PASS fds: ",
        "PASS loss: 0 of ",
        "PASS errors: 0 lives failed",
    ] {
        assert!(out.stdout.contains(check), "no `{check}`: {report}");
    }
    assert!(!out.stdout.contains("FAIL"), "a check failed: {report}");
    assert!(out.status.is_some_and(|s| s.success()), "{report}");

    // Churn did happen: every transport, deletes, abandoned and closed
    // allocations, SIGHUPs.
    let summary = out
        .stdout
        .lines()
        .find(|l| l.contains(" lives (udp "))
        .unwrap_or_else(|| panic!("no summary line: {report}"));
    for part in [" abandoned to expire", " closed without delete", " SIGHUPs"] {
        assert!(summary.contains(part), "{summary}");
    }
    let count_before = |what: &str| -> u64 {
        let i = summary
            .find(what)
            .unwrap_or_else(|| panic!("{what}: {summary}"));
        summary[..i]
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no count before {what}: {summary}"))
    };
    for what in [
        " deleted",
        " abandoned to expire",
        " closed without delete",
        " SIGHUPs",
    ] {
        assert!(count_before(what) > 0, "no{what}: {summary}");
    }
    for t in ["udp ", "tcp ", "tls "] {
        let i = summary.find(t).expect("transport") + t.len();
        let n: u64 = summary[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "no {t}lives: {summary}");
    }

    // The CSV has a row per sample and the plot is a PNG.
    let csv = read_or_empty(&dir.join("soak.csv"));
    let rows: Vec<&str> = csv.lines().collect();
    assert!(
        rows.first()
            .is_some_and(|h| h.starts_with("t_s,phase,rss_kib,fds,allocations,relay_ports_in_use")),
        "{csv}"
    );
    assert!(rows.len() >= 12, "too few samples: {csv}");
    assert!(rows.last().is_some_and(|r| r.contains(",end,")), "{csv}");
    let png = std::fs::read(dir.join("soak.png")).expect("soak.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "soak.png is no PNG");
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
