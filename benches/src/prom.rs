//! The Prometheus text format as vigil's `/metrics` serves it, read with labels:
//! counters summed by label, and histograms (their difference between two scrapes,
//! mean and quantiles estimated from the buckets).

use std::collections::BTreeMap;

/// One sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Reads the samples of `text`; comments, blank lines and lines that do not
    /// parse are skipped (a scrape is read for figures, not validated here).
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Scrape { samples }
    }

    /// The sum of `name`'s samples whose labels include every pair of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|s| s.value).sum()
    }

    /// `name`'s values by the value of its label `label` (summed over the others).
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.matching(name, &[]) {
            if let Some(v) = s.labels.get(label) {
                *out.entry(v.clone()).or_insert(0.0) += s.value;
            }
        }
        out
    }

    /// The histogram `name` (its `_bucket`, `_sum` and `_count` samples), if served.
    pub fn histogram(&self, name: &str) -> Option<Histogram> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .matching(&bucket, &[])
            .filter_map(|s| Some((s.labels.get("le")?.parse::<f64>().ok()?, s.value)))
            .collect();
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Histogram {
            buckets,
            sum: self.sum(&format!("{name}_sum"), &[]),
            count: self.sum(&format!("{name}_count"), &[]),
        })
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }
}

/// `name{k="v",...} value [timestamp]`.
fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    let (_, quote) = chars.next()?;
                    if quote != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        };
        rest = &after[end + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A histogram's cumulative buckets (upper bound, count at or below it; the last
/// bound is +Inf), sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// What was observed between `earlier` and `self` (two scrapes of the same
    /// histogram); `None` if their buckets differ.
    pub fn since(&self, earlier: &Histogram) -> Option<Histogram> {
        if self.buckets.len() != earlier.buckets.len()
            || self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .any(|(a, b)| a.0 != b.0)
        {
            return None;
        }
        Some(Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(a, b)| (a.0, (a.1 - b.1).max(0.0)))
                .collect(),
            sum: (self.sum - earlier.sum).max(0.0),
            count: (self.count - earlier.count).max(0.0),
        })
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile (0..=1) estimated as Prometheus' `histogram_quantile` does:
    /// linear within the bucket it falls in (from 0 for the first bucket), the
    /// largest finite bound if it falls in the +Inf bucket. `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(bound, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > below {
                if bound.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (bound - lower) * (rank - below) / (cumulative - below));
            }
            (lower, below) = (bound, cumulative);
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TEXT: &str = r#"# HELP vigil_tls_rejected Refusals.
# TYPE vigil_tls_rejected counter
vigil_tls_rejected_total{reason="address_throttled"} 7
vigil_tls_rejected_total{reason="bad_client_certificate"} 32
vigil_probes_total{outcome="failed"} 2
vigil_probes_total{outcome="ack_direct"} 100
vigil_up 1
odd_total{a="x,y",b="q\"z"} 3 1700000000
vigil_probe_rtt_seconds_sum 0.5
vigil_probe_rtt_seconds_count 100
vigil_probe_rtt_seconds_bucket{le="0.001"} 10
vigil_probe_rtt_seconds_bucket{le="0.002"} 60
vigil_probe_rtt_seconds_bucket{le="0.004"} 99
vigil_probe_rtt_seconds_bucket{le="+Inf"} 100
"#;

    #[test]
    fn labelled_counters_are_summed_and_grouped() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.sum("vigil_tls_rejected_total", &[]), 39.0);
        assert_eq!(s.sum("vigil_probes_total", &[("outcome", "failed")]), 2.0);
        assert_eq!(s.sum("vigil_up", &[]), 1.0);
        assert_eq!(s.sum("vigil_absent", &[]), 0.0);
        let by = s.by_label("vigil_tls_rejected_total", "reason");
        assert_eq!(by.get("address_throttled"), Some(&7.0));
        assert_eq!(by.len(), 2);
        assert_eq!(s.sum("odd_total", &[("a", "x,y"), ("b", "q\"z")]), 3.0);
    }

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let h = Scrape::parse(TEXT)
            .histogram("vigil_probe_rtt_seconds")
            .unwrap();
        assert_eq!(h.mean(), Some(0.005));
        // Rank 50 of 100 falls in (0.001, 0.002], 40 of its 50 samples in.
        assert!((h.quantile(0.5).unwrap() - 0.0018).abs() < 1e-12);
        // Rank 99 is the top of (0.002, 0.004].
        assert!((h.quantile(0.99).unwrap() - 0.004).abs() < 1e-12);
        // The last sample is in +Inf: the largest finite bound.
        assert_eq!(h.quantile(1.0), Some(0.004));
        assert!((h.quantile(0.05).unwrap() - 0.0005).abs() < 1e-12);

        let zero = h.since(&h).unwrap();
        assert_eq!(
            (zero.count, zero.mean(), zero.quantile(0.5)),
            (0.0, None, None)
        );
        let mut other = h.clone();
        other.buckets.pop();
        assert_eq!(h.since(&other), None);
    }

    #[test]
    fn a_difference_of_two_scrapes_keeps_only_the_new_samples() {
        let before = Scrape::parse(TEXT)
            .histogram("vigil_probe_rtt_seconds")
            .unwrap();
        let after = Histogram {
            buckets: vec![
                (0.001, 10.0),
                (0.002, 60.0),
                (0.004, 99.0),
                (f64::INFINITY, 110.0),
            ],
            sum: 1.5,
            count: 110.0,
        };
        let d = after.since(&before).unwrap();
        assert_eq!(d.count, 10.0);
        assert_eq!(d.mean(), Some(0.1));
        // All ten new samples are above 4 ms.
        assert_eq!(d.quantile(0.5), Some(0.004));
    }
}
