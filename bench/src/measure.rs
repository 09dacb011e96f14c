//! What every bench reports with: quantiles, a process's peak memory, the machine it ran
//! on, and the section of a Markdown file it writes.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// The `q` quantile of sorted, non-empty `samples`.
pub(crate) fn percentile(samples: &[Duration], q: f64) -> Duration {
    samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
}

/// The highest resident set size of a process so far (`VmHWM`), in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The machine the bench ran on: cores, CPU model, memory.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown memory".to_owned());
    format!("{cores} cores ({cpu}), {memory}")
}

/// Replaces the section of `path` between the markers `start` and `end` (or appends it).
pub(crate) fn write_section(
    path: &Path,
    section: &str,
    start: &str,
    end: &str,
) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let updated = match (existing.find(start), existing.find(end)) {
        (Some(from), Some(to)) if from < to => {
            format!(
                "{}{}{}",
                &existing[..from],
                section,
                &existing[to + end.len()..].trim_start_matches('\n')
            )
        }
        _ => format!(
            "{existing}{}{section}",
            if existing.is_empty() { "" } else { "\n" }
        ),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}
