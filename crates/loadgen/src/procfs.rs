//! CPU time and resident memory of a process, from Linux's `/proc`.
//!
//! ```no_run
//! use sluice_loadgen::procfs::ProcSample;
//!
//! let before = ProcSample::read(std::process::id()).unwrap();
//! // ... work ...
//! let after = ProcSample::read(std::process::id()).unwrap();
//! println!("{:.0}% of a core, {} KiB resident", after.cpu_percent_since(&before), after.rss_kib);
//! ```

use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, which Linux fixes at 100
/// for user space on every architecture this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was read.
    pub at: Instant,
    /// User plus system CPU time of all its threads, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size (`VmRSS`), in KiB.
    pub rss_kib: u64,
    /// Write system calls made so far (`syscw` of `/proc/<pid>/io`: `write`, `writev`, …),
    /// when readable.
    pub write_syscalls: Option<u64>,
}

impl ProcSample {
    /// Reads process `pid`'s counters; `None` when it is gone or `/proc` is unreadable.
    pub fn read(pid: u32) -> Option<ProcSample> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let write_syscalls = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .ok()
            .and_then(|io| parse_field(&io, "syscw:"));
        Some(ProcSample {
            at,
            cpu_ticks: parse_cpu_ticks(&stat)?,
            rss_kib: parse_field(&status, "VmRSS:")?,
            write_syscalls,
        })
    }

    /// CPU use between `earlier` and this sample, in percent of one core.
    pub fn cpu_percent_since(&self, earlier: &ProcSample) -> f64 {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        let ticks = self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64;
        ticks / TICKS_PER_SECOND / seconds * 100.0
    }
}

/// The sum of several processes' samples (the load generator's coordinator and workers):
/// ticks and RSS added, the earliest time kept.
pub fn sum(samples: &[ProcSample]) -> Option<ProcSample> {
    let first = samples.first()?;
    Some(ProcSample {
        at: first.at,
        cpu_ticks: samples.iter().map(|s| s.cpu_ticks).sum(),
        rss_kib: samples.iter().map(|s| s.rss_kib).sum(),
        write_syscalls: samples.iter().map(|s| s.write_syscalls).sum(),
    })
}

/// The sum of the samples of every process in `pids`; none if any of them cannot be read.
pub fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    let samples: Vec<ProcSample> = pids.iter().filter_map(|&pid| ProcSample::read(pid)).collect();
    (samples.len() == pids.len()).then(|| sum(&samples)).flatten()
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The number after `name` on the line that starts with it (`VmRSS:  1234 kB` → 1234).
fn parse_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// A counter of the kernel's `TcpExt` statistics (`/proc/net/netstat`), for instance
/// `ListenOverflows`: connections dropped because a listener's accept queue was full (the
/// client then retransmits its SYN after a second). System-wide.
pub fn tcp_ext_counter(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    parse_tcp_ext(&text, name)
}

fn parse_tcp_ext(text: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// The processes whose process group is `pgid` (field 5 of `/proc/<pid>/stat`).
pub fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_pgrp(&stat))
                == Some(pgid)
        })
        .collect()
}

fn parse_pgrp(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state (3), ppid (4), pgrp (5).
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Peak resident set size (`VmHWM`) of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_field(&status, "VmHWM:")
}

/// The CPUs a process may run on (`Cpus_allowed_list` of `/proc/<pid>/status`).
pub fn allowed_cpus(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_tricky_name() {
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0 \
                    5000 100000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_pgrp(stat), Some(1234));
        assert_eq!(
            parse_field("Name:\tx\nVmRSS:\t  10240 kB\nThreads: 3\n", "VmRSS:"),
            Some(10240)
        );
        assert_eq!(parse_field("rchar: 5\nsyscw: 77\n", "syscw:"), Some(77));
    }

    #[test]
    fn parses_netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 127 130\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_tcp_ext(text, "ListenOverflows"), Some(127));
        assert_eq!(parse_tcp_ext(text, "Nope"), None);
    }

    #[test]
    fn reads_its_own_process() {
        let sample = ProcSample::read(std::process::id()).unwrap();
        assert!(sample.rss_kib > 0);
        assert!(peak_rss_kib(std::process::id()).unwrap() >= sample.rss_kib);
    }
}
