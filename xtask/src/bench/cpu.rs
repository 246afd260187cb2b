//! Where the cores went during a run: CPU time of each process of a benchmark and of the whole
//! machine, from `/proc`. On a box where the broker, the service and the load generator share
//! two cores, a throughput figure means little without it.

use std::time::Instant;

use anyhow::Context;

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, fixed at 100 by the Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// The processes to watch, by name.
#[derive(Debug, Clone)]
pub(crate) struct CpuMeter {
    processes: Vec<(String, u32)>,
}

/// CPU times at one moment.
#[derive(Debug, Clone)]
pub(crate) struct CpuSample {
    at: Instant,
    process_ticks: Vec<u64>,
    machine_idle: u64,
    machine_total: u64,
    cores: usize,
}

/// CPU used between two samples, in cores (1.0 = one core busy all the time).
#[derive(Debug, Clone)]
pub(crate) struct CpuUse {
    pub(crate) by_process: Vec<(String, f64)>,
    pub(crate) idle: f64,
    pub(crate) cores: usize,
}

impl CpuMeter {
    pub(crate) fn new(processes: Vec<(String, u32)>) -> Self {
        Self { processes }
    }

    pub(crate) fn sample(&self) -> anyhow::Result<CpuSample> {
        let process_ticks = self
            .processes
            .iter()
            .map(|(name, pid)| process_ticks(*pid).with_context(|| format!("CPU time of {name}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stat = std::fs::read_to_string("/proc/stat")?;
        let (machine_idle, machine_total) = machine_ticks(&stat).context("parsing /proc/stat")?;
        let cores = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        Ok(CpuSample {
            at: Instant::now(),
            process_ticks,
            machine_idle,
            machine_total,
            cores,
        })
    }

    #[allow(clippy::cast_precision_loss)] // tick counts are far below 2^52
    pub(crate) fn between(&self, before: &CpuSample, after: &CpuSample) -> CpuUse {
        let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let by_process = self
            .processes
            .iter()
            .zip(before.process_ticks.iter().zip(&after.process_ticks))
            .map(|((name, _), (b, a))| {
                (
                    name.clone(),
                    a.saturating_sub(*b) as f64 / TICKS_PER_SECOND / seconds,
                )
            })
            .collect();
        let total = after.machine_total.saturating_sub(before.machine_total) as f64;
        let idle = after.machine_idle.saturating_sub(before.machine_idle) as f64;
        CpuUse {
            by_process,
            idle: if total > 0.0 {
                idle / total * after.cores as f64
            } else {
                0.0
            },
            cores: after.cores,
        }
    }
}

impl CpuUse {
    /// One line: each process's cores and CPU microseconds per operation, then the idle cores.
    pub(crate) fn summary(&self, operations_per_second: f64, unit: &str) -> String {
        let mut parts: Vec<String> = self
            .by_process
            .iter()
            .map(|(name, cores)| {
                format!(
                    "{name} {cores:.2} ({:.1} µs/{unit})",
                    cores * 1e6 / operations_per_second.max(1.0)
                )
            })
            .collect();
        parts.push(format!("idle {:.2} of {} cores", self.idle, self.cores));
        parts.join(" · ")
    }
}

/// utime + stime of a process, all its threads included.
fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// (idle + iowait, total) ticks of all cores, from the first line of `/proc/stat`.
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    Some((idle, total))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{machine_ticks, process_ticks};

    #[test]
    fn proc_stat_parses() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        assert_eq!(machine_ticks(stat), Some((850, 1000)));
        // This very process has used some CPU.
        assert!(process_ticks(std::process::id()).is_ok());
    }
}
