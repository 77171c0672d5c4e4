//! Sampling server processes (and ourselves) through /proc.

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Clock ticks per second, from `getconf CLK_TCK` (100 if that fails).
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// `VmRSS` from the text of /proc/PID/status, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    let mult = match parts.next().unwrap_or("kB") {
        "kB" | "KB" | "kb" => 1024,
        "mB" | "MB" => 1024 * 1024,
        "B" => 1,
        _ => return None,
    };
    Some(n * mult)
}

/// `utime + stime` in clock ticks from the text of /proc/PID/stat.
///
/// The command name (field 2) is in parentheses and may contain spaces or
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': field 3 (state) is index 0, so utime (14) is 11, stime (15) is 12.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The soft `Max open files` limit from the text of /proc/self/limits.
pub fn parse_limits_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// The soft open-files limit of this process.
pub fn open_files_limit() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    parse_limits_nofile(&text).context("no 'Max open files' line in /proc/self/limits")
}

/// One sample of one process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PidSample {
    pub pid: u32,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// A sample of a set of processes, with totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub pids: Vec<PidSample>,
}

/// Samples processes by pid.
#[derive(Debug, Clone)]
pub struct Sampler {
    pids: Vec<u32>,
    tck: u64,
}

impl Sampler {
    pub fn new(pids: Vec<u32>) -> Result<Self> {
        let s = Self {
            pids,
            tck: clk_tck(),
        };
        // Fail early on a wrong pid rather than after a long run.
        for &pid in &s.pids {
            s.sample_pid(pid)
                .with_context(|| format!("--pid {pid}: cannot read /proc/{pid}"))?;
        }
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    fn sample_pid(&self, pid: u32) -> Result<PidSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let Some(rss_bytes) = parse_status_rss(&status) else {
            bail!("no VmRSS in /proc/{pid}/status");
        };
        let Some(ticks) = parse_stat_ticks(&stat) else {
            bail!("cannot parse /proc/{pid}/stat");
        };
        Ok(PidSample {
            pid,
            rss_bytes,
            cpu_seconds: ticks as f64 / self.tck as f64,
        })
    }

    /// Sample all pids; `None` when no pid was given. A pid that cannot be
    /// read any more (process gone) is reported on stderr and skipped.
    pub fn sample(&self) -> Option<Snapshot> {
        if self.pids.is_empty() {
            return None;
        }
        let mut snap = Snapshot::default();
        for &pid in &self.pids {
            match self.sample_pid(pid) {
                Ok(s) => {
                    snap.rss_bytes += s.rss_bytes;
                    snap.cpu_seconds += s.cpu_seconds;
                    snap.pids.push(s);
                }
                Err(e) => eprintln!("warning: cannot sample pid {pid}: {e:#}"),
            }
        }
        Some(snap)
    }

    /// CPU seconds used by this (benchmark) process so far.
    pub fn self_cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(parse_stat_ticks(&stat)? as f64 / self.tck as f64)
    }

    /// RSS of this (benchmark) process.
    pub fn self_rss_bytes(&self) -> Option<u64> {
        parse_status_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let stat = "12345 (wsgate) S 1 12345 12345 0 -1 4194560 1520 0 0 0 250 37 0 0 20 0 3 0 \
                    987654 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(287));
    }

    #[test]
    fn stat_parsing_weird_comm() {
        let stat = "7 (a b) c)) R 1 7 7 0 -1 0 0 0 0 0 10 5 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat_ticks(stat), Some(15));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) R 1 2"), None);
    }

    #[test]
    fn status_parsing() {
        let status = "Name:\twsgate\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(51234 * 1024));
        assert_eq!(parse_status_rss("Name:\tx\n"), None);
    }

    #[test]
    fn limits_parsing() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(parse_limits_nofile(limits), Some(20000));
        assert_eq!(
            parse_limits_nofile(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(u64::MAX)
        );
    }

    #[test]
    fn real_self_sampling() -> Result<()> {
        let s = Sampler::new(vec![std::process::id()])?;
        let snap = s.sample().context("sample")?;
        assert!(snap.rss_bytes > 0);
        assert!(s.self_cpu_seconds().is_some());
        assert!(open_files_limit()? > 0);
        Ok(())
    }
}
