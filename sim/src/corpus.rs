//! `vigil-sim fuzz-corpus`: the seed corpus of the fuzz targets (`tests/fuzz/`), from
//! real traffic.
//!
//! The network seeds are messages a simulated 5-host cluster (the real `Core`s and
//! `Replicator`s, with joins, snapshot puts and reads, a crash with its recovery, a
//! stall and a restart) sent each other, as the wire carries them. The simulator's
//! hosts are named `h0`..`h4`, as `vigil_protocol::fuzzing::roster` is, so the fuzzed
//! node receives each message as the host it was sent to. The API seeds are the
//! requests of docs/API.md as curl writes them; the config seeds are the TOML blocks
//! of docs/OPERATIONS.md.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use foca::{Codec, PostcardCodec};
use vigil_protocol::NodeId;
use vigil_protocol::fuzzing::{ROSTER_LEN, Setup};
use vigil_protocol::wire::{self, Body, MAX_DATAGRAM_LEN, MAX_STREAM_FRAME_LEN};

use crate::world::{Captured, Fault, ReplSpec, World, WorldConfig};

/// Seeds kept per message kind and target (distinct contents, first seen first).
const PER_KIND: usize = 6;
/// Largest payload a seed carries after a replication message (the simulator's
/// snapshots are 16 to 64 bytes; a large one would add bulk, not coverage).
const MAX_SEED_PAYLOAD: usize = 512;

/// What was written, per target.
pub type Summary = BTreeMap<&'static str, usize>;

/// Writes the seeds under `out/TARGET/`. `docs` is the repository's docs/ directory.
pub fn write(out: &Path, docs: &Path, seed: u64) -> io::Result<Summary> {
    let mut summary = Summary::new();
    let captured = simulate(seed);
    let mut wire_seeds = Seeds::default();
    let mut swim_seeds = Seeds::default();
    let mut stream_seeds = Seeds::default();
    for c in &captured {
        let Ok(body) = wire::decode(&c.envelope, MAX_STREAM_FRAME_LEN) else {
            continue;
        };
        let kind = match &body {
            Body::Repl(msg) => format!("repl-{}", msg.kind()),
            Body::Swim { packet, .. } => format!("swim-{}", swim_kind(packet)),
            other => other.kind().to_string(),
        };
        let setup = Setup {
            to: c.to as usize,
            from: c.from as usize,
            from_claimed: true,
            populated: true,
        }
        .to_byte();
        wire_seeds.add(&kind, c.envelope.to_vec());
        let mut stream = vec![setup];
        match wire::frame_for_stream(&c.envelope) {
            Ok(frame) => stream.extend_from_slice(&frame),
            Err(_) => continue,
        }
        match &body {
            Body::Repl(_) => {
                if let Some(payload) = &c.payload {
                    if payload.len() > MAX_SEED_PAYLOAD {
                        continue;
                    }
                    stream.extend_from_slice(payload);
                }
                stream_seeds.add(&kind, stream);
            }
            _ => {
                let mut datagram = vec![setup];
                datagram.extend_from_slice(&c.envelope);
                if c.envelope.len() <= MAX_DATAGRAM_LEN {
                    swim_seeds.add(&kind, datagram);
                } else {
                    // Too large for a datagram: the node sends it on a stream.
                    stream_seeds.add(&kind, stream);
                }
            }
        }
    }
    summary.insert("wire_decode", wire_seeds.write(&out.join("wire_decode"))?);
    summary.insert(
        "swim_datagram",
        swim_seeds.write(&out.join("swim_datagram"))?,
    );
    summary.insert(
        "stream_frame",
        stream_seeds.write(&out.join("stream_frame"))?,
    );

    let mut api = Seeds::default();
    for (name, request) in api_requests() {
        // First byte: how the owner answers (0: every request answered).
        let mut seed = vec![0u8];
        seed.extend_from_slice(request.as_bytes());
        api.add_named(name, seed);
    }
    summary.insert("api_request", api.write(&out.join("api_request"))?);

    let operations = fs::read_to_string(docs.join("OPERATIONS.md"))?;
    let mut config = Seeds::default();
    for (i, block) in toml_blocks(&operations).into_iter().enumerate() {
        config.add_named(format!("operations-{i}"), block.into_bytes());
    }
    config.add_named("every-key".into(), EVERY_KEY.as_bytes().to_vec());
    let mut runtime = Seeds::default();
    // As the node writes it for `vigil config set` (runtime.rs, `Overrides::file_text`).
    runtime.add_named("written-by-put".into(), RUNTIME_TOML.as_bytes().to_vec());
    runtime.add_named("one-setting".into(), b"capacity = 50\n".to_vec());
    summary.insert("config_file", config.write(&out.join("config_file"))?);
    summary.insert("runtime_file", runtime.write(&out.join("runtime_file"))?);
    Ok(summary)
}

/// A config file that sets every key docs/API.md lists.
const EVERY_KEY: &str = r#"name = "h0"
zone = "az1"
bind = "[::]:7946"
advertise = "[2001:db8::5]:7946"
seeds = ["10.0.0.2:7946", "node-1.internal:7946", "[2001:db8::2]:7946"]
pki = "/etc/vigil/pki"
socket = "/run/vigil/vigil.sock"
data_dir = "/var/lib/vigil"
profile = "wan"
connection_cache = 256
log_format = "json"
metrics_bind = "127.0.0.1:9464"
copies = 3
keep = 5
ack = "quorum"
owner_counts_as_copy = false
max_snapshot = "16 MiB"
snapshot_memory = 268435456
repair_rate = "64MiB"
standby = true
capacity = 8
lease = "1s"
agent_command = "python3 -m myagent --id {id} --epoch {epoch} --snapshot {snapshot} --socket {socket}"
agent_restarts = 3
heartbeat_timeout = "3s"
"#;

/// `DATA_DIR/runtime.toml` as the node writes it.
const RUNTIME_TOML: &str =
    "# Written by vigil for PUT /v1/config (`vigil config set`). These values win over
# the config file, flags and VIGIL_* variables at start. Remove a line (or set it
# to null through the API) to go back to them.
log_filter = \"info,vigil::transport=debug\"
standby = true
capacity = 8
heartbeat_timeout = \"5s\"
agent_restarts = 2
";

/// A 5-host cluster with replication through joins, a workload, a stall, a crash
/// with the recovery of its agents, and a restart; every message it sent.
fn simulate(seed: u64) -> Vec<Captured> {
    let nodes = u32::try_from(ROSTER_LEN).unwrap_or(5);
    let mut config = WorldConfig::new(nodes, seed);
    config.replication = Some(ReplSpec {
        put_interval: Duration::from_millis(500),
        ..ReplSpec::new(6)
    });
    let mut world = World::new(config);
    world.capture();
    world.bootstrap();
    world.run_for(Duration::from_secs(5));
    world.start_workload();
    world.run_for(Duration::from_secs(5));
    let now = world.now();
    world.schedule_fault(
        now + Duration::from_secs(1),
        Fault::Stall {
            host: 3,
            duration: Duration::from_secs(3),
        },
    );
    world.schedule_fault(now + Duration::from_secs(8), Fault::Crash(4));
    world.schedule_fault(now + Duration::from_secs(25), Fault::Restart(4));
    world.run_for(Duration::from_secs(40));
    world.captured()
}

/// The SWIM message type of a packet (`ping`, `ack`, `pingreq`, ...).
fn swim_kind(packet: &[u8]) -> String {
    let mut buf = packet;
    match Codec::<NodeId>::decode_header(&mut PostcardCodec, &mut buf) {
        Ok(header) => {
            let name = format!("{:?}", header.message);
            let end = name
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(name.len());
            name[..end].to_ascii_lowercase()
        }
        Err(_) => "undecodable".into(),
    }
}

/// Seeds by kind, each kind kept to [`PER_KIND`] distinct contents.
#[derive(Default)]
struct Seeds {
    by_name: BTreeMap<String, Vec<u8>>,
    per_kind: BTreeMap<String, usize>,
}

impl Seeds {
    fn add(&mut self, kind: &str, bytes: Vec<u8>) {
        let n = self.per_kind.entry(kind.to_string()).or_default();
        if *n >= PER_KIND || self.by_name.values().any(|b| *b == bytes) {
            return;
        }
        self.by_name.insert(format!("{kind}-{n}"), bytes);
        *n += 1;
    }

    fn add_named(&mut self, name: String, bytes: Vec<u8>) {
        self.by_name.insert(name, bytes);
    }

    /// Replaces `dir`'s contents with the seeds.
    fn write(&self, dir: &Path) -> io::Result<usize> {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
        for (name, bytes) in &self.by_name {
            fs::write(dir.join(name), bytes)?;
        }
        Ok(self.by_name.len())
    }
}

/// Every ```toml block of a Markdown text.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_start().starts_with("```toml") => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => {
                blocks.extend(current.take());
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// The requests of docs/API.md, as `curl --unix-socket` sends them.
fn api_requests() -> Vec<(String, String)> {
    let get = |path: &str| request("GET", path, None, None);
    let mut all = vec![
        ("health", get("/v1/health")),
        ("members", get("/v1/members")),
        ("events", get("/v1/events")),
        ("events-since", get("/v1/events?since=1")),
        ("agents", get("/v1/agents")),
        ("agent", get("/v1/agents/worker-1")),
        (
            "register",
            request(
                "PUT",
                "/v1/agents/worker-1",
                Some("application/json"),
                Some(r#"{"role": "planner", "model": "small"}"#),
            ),
        ),
        (
            "register-priority",
            request("PUT", "/v1/agents/worker-1?priority=10", None, None),
        ),
        (
            "heartbeat",
            request("POST", "/v1/agents/worker-1/heartbeat", None, None),
        ),
        (
            "isolate",
            request("POST", "/v1/agents/worker-1/isolate", None, None),
        ),
        (
            "recover",
            request("POST", "/v1/agents/worker-1/recover", None, None),
        ),
        (
            "node-isolate",
            request("POST", "/v1/node/isolate", None, None),
        ),
        (
            "node-recover",
            request("POST", "/v1/node/recover", None, None),
        ),
        (
            "snapshot-put",
            request(
                "PUT",
                "/v1/agents/worker-1/snapshot?ack=all",
                Some("application/octet-stream"),
                Some("step 42: state"),
            ),
        ),
        ("snapshot-get", get("/v1/agents/worker-1/snapshot")),
        (
            "snapshot-get-seq",
            get("/v1/agents/worker-1/snapshot?seq=3"),
        ),
        ("config", get("/v1/config")),
        (
            "config-put",
            request(
                "PUT",
                "/v1/config",
                Some("application/json"),
                Some(
                    r#"{"log_filter": "info,vigil::transport=debug", "standby": true, "capacity": 4, "heartbeat_timeout": "5s", "agent_restarts": 2}"#,
                ),
            ),
        ),
        (
            "config-put-null",
            request(
                "PUT",
                "/v1/config",
                Some("application/json"),
                Some(r#"{"log_filter": null}"#),
            ),
        ),
        ("metrics", get("/metrics")),
    ];
    // Two requests on one keep-alive connection, as the Python client's pool may.
    let pipelined = format!(
        "{}{}",
        request("POST", "/v1/agents/worker-1/heartbeat", None, None),
        get("/v1/health")
    );
    all.push(("pipelined", pipelined));
    // A chunked body, as a client that does not know the length sends it.
    all.push((
        "snapshot-put-chunked",
        "PUT /v1/agents/worker-1/snapshot HTTP/1.1\r\nHost: vigil\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(),
    ));
    all.into_iter().map(|(n, r)| (n.to_string(), r)).collect()
}

fn request(method: &str, path: &str, content_type: Option<&str>, body: Option<&str>) -> String {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: vigil\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"
    );
    if let Some(ct) = content_type {
        r.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(body) = body {
        r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        r.push_str("\r\n");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_writes_seeds_of_every_kind_for_every_target() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let summary = write(dir.path(), &docs, 1).expect("the corpus is written");
        for (target, n) in &summary {
            assert!(*n >= 2, "{target}: only {n} seeds");
        }
        let names = |target: &str| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(dir.path().join(target))
                .expect("the target's directory")
                .map(|e| {
                    e.expect("an entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            v.sort();
            v
        };
        let swim = names("swim_datagram");
        for kind in [
            "swim-ping-0",
            "swim-ack-0",
            "swim-pingreq-0",
            "pull-0",
            "state-0",
        ] {
            assert!(swim.contains(&kind.to_string()), "no {kind} in {swim:?}");
        }
        let stream = names("stream_frame");
        for kind in [
            "repl-store-0",
            "repl-fetch_reply-0",
            "repl-prepare-0",
            "repl-adopt-0",
        ] {
            assert!(
                stream.contains(&kind.to_string()),
                "no {kind} in {stream:?}"
            );
        }
    }

    #[test]
    fn toml_blocks_are_found() {
        let md = "text\n```toml\na = 1\n```\nmore\n```sh\nx\n```\n```toml\nb = 2\n```\n";
        assert_eq!(toml_blocks(md), vec!["a = 1\n", "b = 2\n"]);
    }
}
