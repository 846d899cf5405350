//! Small pure helpers of the snapshot benchmark: latency distributions, the
//! machine's CPU split from `/proc/stat`, the filesystem of a path from
//! `/proc/mounts`, and reading the node's metrics and repair events.

use std::path::Path;

/// A latency distribution, in milliseconds. Percentiles are nearest-rank (p99 of
/// 200 samples is the second largest); the median of an even count is the mean of
/// the two middle values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dist {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

/// `None` for no samples or a NaN among them.
pub fn dist(values: &[f64]) -> Option<Dist> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Dist {
        n,
        min: v[0],
        median,
        p99: nearest_rank(&v, 99.0),
        max: v[n - 1],
    })
}

/// The nearest-rank percentile `p` of sorted, non-empty `sorted`.
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub iowait: u64,
    pub idle: u64,
    /// Time the hypervisor gave this VM's CPUs to someone else.
    pub steal: u64,
}

/// Shares of all CPU time (busy + iowait + idle + steal) between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuShares {
    pub busy: f64,
    pub iowait: f64,
    pub steal: f64,
}

impl CpuTimes {
    pub fn read() -> Result<CpuTimes, String> {
        let text = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
        parse_proc_stat(&text)
    }

    /// Shares of all CPU time between `self` and `later`.
    pub fn shares(&self, later: &CpuTimes) -> CpuShares {
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64;
        let busy = d(self.busy, later.busy);
        let iowait = d(self.iowait, later.iowait);
        let steal = d(self.steal, later.steal);
        let total = busy + iowait + steal + d(self.idle, later.idle);
        if total <= 0.0 {
            return CpuShares::default();
        }
        CpuShares {
            busy: busy / total,
            iowait: iowait / total,
            steal: steal / total,
        }
    }
}

pub fn parse_proc_stat(text: &str) -> Result<CpuTimes, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("/proc/stat: no aggregate cpu line")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("/proc/stat: {e} in {line:?}"))?;
    if f.len() < 5 {
        return Err(format!("/proc/stat: short cpu line {line:?}"));
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already inside user and nice.
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Ok(CpuTimes {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        iowait: at(4),
        idle: at(3),
        steal: at(7),
    })
}

/// The mount holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    pub options: String,
}

/// The mount in `/proc/mounts` whose mount point is the longest prefix of `path`
/// (canonicalized).
pub fn mount_of(path: &Path) -> Result<MountInfo, String> {
    let path = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mounts =
        std::fs::read_to_string("/proc/mounts").map_err(|e| format!("/proc/mounts: {e}"))?;
    best_mount(&mounts, &path).ok_or_else(|| format!("no mount holds {}", path.display()))
}

pub fn best_mount(mounts: &str, path: &Path) -> Option<MountInfo> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(MountInfo {
                device: f.next()?.to_string(),
                // Spaces in mount points are written as \040.
                mount_point: f.next()?.replace("\\040", " "),
                fs_type: f.next()?.to_string(),
                options: f.next()?.to_string(),
            })
        })
        .filter(|m| path.starts_with(&m.mount_point))
        // The last of equally long ones is the one mounted on top.
        .fold(None, |best: Option<MountInfo>, m| match best {
            Some(b) if b.mount_point.len() > m.mount_point.len() => Some(b),
            _ => Some(m),
        })
}

/// Sum of the samples of metric `name` in Prometheus text, over the label sets that
/// contain every one of `labels` (e.g. `direction="out"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The bytes a `repair_done` event's detail reports ("agent A: copies added on
/// [..], dropped from [..], N bytes copied").
pub fn repair_bytes(detail: &str) -> Option<u64> {
    let before = detail.strip_suffix(" bytes copied")?;
    before.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn p99_is_nearest_rank_and_the_median_averages_an_even_middle() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let d = dist(&v).unwrap();
        assert_eq!(
            (d.n, d.min, d.median, d.p99, d.max),
            (200, 1.0, 100.5, 198.0, 200.0)
        );
        let d = dist(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((d.median, d.p99), (3.0, 5.0));
        assert!(dist(&[]).is_none());
        assert!(dist(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn proc_stat_splits_busy_iowait_idle_and_steal() {
        let text = "cpu  100 5 50 1000 40 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let t = parse_proc_stat(text).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 160,
                iowait: 40,
                idle: 1000,
                steal: 1
            }
        );
        let later = CpuTimes {
            busy: 260,
            iowait: 140,
            idle: 1199,
            steal: 2,
        };
        let s = t.shares(&later);
        assert_eq!((s.busy, s.iowait, s.steal), (0.25, 0.25, 0.0025));
        assert!(parse_proc_stat("intr 1 2").is_err());
    }

    #[test]
    fn the_longest_mount_point_prefix_wins() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n\
                      tmpfs /tmpx tmpfs rw 0 0\n";
        let m = best_mount(mounts, Path::new("/tmp/vigil-1/n1")).unwrap();
        assert_eq!(
            (m.mount_point.as_str(), m.fs_type.as_str()),
            ("/tmp", "tmpfs")
        );
        let m = best_mount(mounts, Path::new("/work/x")).unwrap();
        assert_eq!(m.fs_type, "ext4");
    }

    #[test]
    fn metrics_and_repair_details_are_read() {
        let text = "# HELP x\n\
                    vigil_replication_payload_bytes_total{direction=\"out\"} 100\n\
                    vigil_replication_payload_bytes_total{direction=\"in\"} 7\n\
                    vigil_replication_payload_bytes_total_other 9\n";
        let name = "vigil_replication_payload_bytes_total";
        assert_eq!(metric_sum(text, name, &["direction=\"out\""]), 100.0);
        assert_eq!(metric_sum(text, name, &[]), 107.0);
        assert_eq!(
            repair_bytes("agent a: copies added on [n3], dropped from [n6], 4194304 bytes copied"),
            Some(4_194_304)
        );
        assert_eq!(repair_bytes("agent a: something else"), None);
    }
}
