//! Helpers for the black-box tests in `tests/`.

use std::time::Duration;

pub mod campaign;
pub mod faultproxy;
pub mod netns;

pub use vigil::harness::{HarnessError, LocalCluster};

/// Generous bounds: these are correctness waits, not performance assertions (timing
/// targets live in benches/). They only cap how long a broken build hangs.
pub const CONVERGE: Duration = Duration::from_secs(30);
pub const DETECT: Duration = Duration::from_secs(30);

/// The vigil binary Cargo built for this package. A macro because Cargo tells only
/// integration tests (not this library) where the binary is.
#[macro_export]
macro_rules! vigil_bin {
    () => {
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_vigil-test-node"))
    };
}

/// A cluster with certificates for `names`, none started.
#[macro_export]
macro_rules! cluster {
    ($names:expr) => {
        $crate::LocalCluster::new($crate::vigil_bin!(), $names, false)
            .expect("create the cluster's certificates")
    };
}

/// Starts `names` (zones az1, az2, az3 in turn), all seeded by the first.
pub async fn start_all(cluster: &mut LocalCluster, names: &[&str]) {
    start_all_with(cluster, names, &[]).await;
}

/// Like [`start_all`], with `extra` arguments for every node.
pub async fn start_all_with(cluster: &mut LocalCluster, names: &[&str], extra: &[String]) {
    let zones = ["az1", "az2", "az3"];
    let seed = cluster
        .start_with(names[0], zones[0], &[], extra)
        .await
        .expect("start the first node")
        .addr;
    for (i, name) in names.iter().enumerate().skip(1) {
        cluster
            .start_with(name, zones[i % zones.len()], &[seed], extra)
            .await
            .expect("start a node");
    }
}

/// Reads one counter (summed over its labels) from a node's /metrics.
pub async fn metric_sum(socket: &std::path::Path, name: &str) -> f64 {
    let reply = vigil::client::get(socket, "/metrics")
        .await
        .expect("GET /metrics");
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
