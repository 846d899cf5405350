//! CPU time and resident memory of a process, read from `/proc` (Linux only).
//!
//! The benchmark samples every node it started at intervals and reports the CPU
//! fraction between samples, so that vigil over QUIC+TLS and the same core over plain
//! UDP are measured by the same ruler in the same run.

use std::io;
use std::sync::OnceLock;
use std::time::Instant;

use nix::unistd::{SysconfVar, sysconf};
use serde::Serialize;

/// One reading of a process's CPU counters and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User-mode CPU time, in clock ticks (see [`clock_ticks_per_second`]).
    pub utime_ticks: u64,
    /// Kernel-mode CPU time, in clock ticks.
    pub stime_ticks: u64,
    /// Resident set size. Zero for processes without a user address space (zombies,
    /// kernel threads), which `/proc` reports without a `VmRSS` line.
    pub rss_bytes: u64,
    /// When the CPU counters were read.
    pub at: Instant,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Taken right after the counters so that wall time and CPU time line up; the
    // status read below only supplies memory, which needs no timestamp.
    let at = Instant::now();
    let (utime_ticks, stime_ticks) = parse_stat(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_bytes = parse_vm_rss(&status)?.unwrap_or(0);
    Ok(ProcSample {
        utime_ticks,
        stime_ticks,
        rss_bytes,
        at,
    })
}

/// The share of one CPU that the process used between `a` and `b` (1.0 = one core
/// fully busy; can exceed 1.0 for multi-threaded processes). Zero if no wall time
/// passed, so a degenerate pair of samples cannot poison a summary with NaN.
pub fn cpu_fraction(a: &ProcSample, b: &ProcSample) -> f64 {
    let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    let ticks = (b.utime_ticks + b.stime_ticks).saturating_sub(a.utime_ticks + a.stime_ticks);
    // Tick counts of a benchmark run stay far below 2^53, so the conversion is exact.
    (ticks as f64 / clock_ticks_per_second() as f64) / wall
}

/// The kernel's `USER_HZ`, the unit of the CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        match sysconf(SysconfVar::CLK_TCK) {
            Ok(Some(t)) if t > 0 => u64::try_from(t).unwrap_or(100),
            // USER_HZ is 100 on every Linux architecture; sysconf failing here would
            // mean a broken libc, and a plausible value beats aborting a long run.
            _ => 100,
        }
    })
}

/// User and system CPU ticks from the contents of `/proc/PID/stat`.
///
/// The second field (comm) is the executable name in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> io::Result<(u64, u64)> {
    let close = stat
        .rfind(')')
        .ok_or_else(|| invalid("no ')' closing the comm field"))?;
    // After the comm: state(3) ppid(4) ... utime(14) stime(15), so utime is the 12th
    // field after ')' (index 11).
    let mut fields = stat[close + 1..].split_ascii_whitespace().skip(11);
    let mut next = |what: &str| -> io::Result<u64> {
        let field = fields
            .next()
            .ok_or_else(|| invalid(&format!("stat line too short for {what}")))?;
        field
            .parse()
            .map_err(|_| invalid(&format!("{what} is not a number: {field:?}")))
    };
    let utime = next("utime")?;
    let stime = next("stime")?;
    Ok((utime, stime))
}

/// `VmRSS` in bytes from the contents of `/proc/PID/status`, or `None` if the
/// process has no such line.
pub fn parse_vm_rss(status: &str) -> io::Result<Option<u64>> {
    let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:")) else {
        return Ok(None);
    };
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let value: u64 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid(&format!("unreadable VmRSS line: {line:?}")))?;
    // The kernel has always printed this field in kB; anything else means the format
    // changed and the number cannot be trusted.
    match parts.next() {
        Some("kB") => Ok(Some(value.saturating_mul(1024))),
        unit => Err(invalid(&format!("unexpected VmRSS unit {unit:?}"))),
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Smallest, middle and largest of a set of measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub min: f64,
    /// The middle value, or the mean of the two middle values for an even count.
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// "min / median / max" with `digits` decimals, as the reports print it.
    pub fn min_median_max(&self, digits: usize) -> String {
        format!(
            "{:.d$} / {:.d$} / {:.d$}",
            self.min,
            self.median,
            self.max,
            d = digits
        )
    }
}

/// Sorts `values` in place and summarizes them. `None` if there are none, or if any
/// is NaN (a NaN has no place in an order, and silently dropping it would hide a
/// broken measurement).
pub fn summarize(values: &mut [f64]) -> Option<Summary> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some(Summary {
        min: values[0],
        median,
        max: values[n - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_paren() {
        // A comm that tries to look like the end of the field and more fields.
        let line = "4242 (evil) (name 1 2) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 567 0 0 20 0 1 0 99 1000000 250 18446744073709551615";
        assert_eq!(parse_stat(line).unwrap(), (1234, 567));
    }

    #[test]
    fn stat_parsing_reports_damage() {
        assert!(parse_stat("4242 no paren S 1").is_err());
        assert!(parse_stat("4242 (x) S 1 2 3").is_err());
        assert!(parse_stat("4242 (x) S 1 2 3 4 5 6 7 8 9 10 abc 5").is_err());
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    1536 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status).unwrap(), Some(1536 * 1024));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\nState:\tS\n").unwrap(), None);
        assert!(parse_vm_rss("VmRSS:\tlots\n").is_err());
    }

    #[test]
    fn sampling_our_own_process_works() {
        let pid = std::process::id();
        let a = sample(pid).unwrap();
        // Burn a little CPU so the second sample has something to show.
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed().as_millis() < 30 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = sample(pid).unwrap();
        assert!(a.rss_bytes > 0);
        assert!(b.utime_ticks + b.stime_ticks >= a.utime_ticks + a.stime_ticks);
        let f = cpu_fraction(&a, &b);
        // Other test threads share the process, so only sanity bounds hold.
        assert!(f.is_finite() && f >= 0.0, "{f}");
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn cpu_fraction_of_identical_instants_is_zero() {
        let a = sample(std::process::id()).unwrap();
        assert_eq!(cpu_fraction(&a, &a), 0.0);
    }

    #[test]
    fn cpu_fraction_divides_ticks_by_wall_time() {
        let a = ProcSample {
            utime_ticks: 0,
            stime_ticks: 0,
            rss_bytes: 0,
            at: Instant::now(),
        };
        let hz = clock_ticks_per_second();
        let b = ProcSample {
            utime_ticks: hz,
            stime_ticks: hz,
            rss_bytes: 0,
            at: a.at + std::time::Duration::from_secs(4),
        };
        assert!((cpu_fraction(&a, &b) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn summaries_of_odd_and_even_counts() {
        let odd = summarize(&mut [3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            odd,
            Summary {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        let even = summarize(&mut [4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(
            even,
            Summary {
                min: 1.0,
                median: 2.5,
                max: 4.0
            }
        );
        let one = summarize(&mut [7.0]).unwrap();
        assert_eq!((one.min, one.median, one.max), (7.0, 7.0, 7.0));
        assert_eq!(summarize(&mut []), None);
        assert_eq!(summarize(&mut [1.0, f64::NAN]), None);
    }
}
