//! Command-line interface. Settings of `vigil agent` may also come from `VIGIL_*`
//! environment variables and a TOML file (`--config`); flags win over the
//! environment, which wins over the file (see [`crate::config`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version = crate::version_line(),
    about = "Keeps multi-agent AI systems alive when hosts die",
    long_about = "Keeps multi-agent AI systems alive when hosts die.\n\nOne `vigil agent` runs on every host; nodes find each other by SWIM gossip over QUIC with mutual TLS. The other commands talk to the local node through its Unix socket."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node on this host.
    Agent(AgentArgs),
    /// List the members this node knows.
    Members(MembersArgs),
    /// Stream membership events as NDJSON (resumable with --since).
    Events(EventsArgs),
    /// Show this node's health; exits non-zero unless it is an active member.
    Health(HealthArgs),
    /// Register an agent with this node, which becomes its owner.
    Register(RegisterArgs),
    /// List the agents known cluster-wide: owner, epoch, latest seq, copy holders.
    Agents(AgentsArgs),
    /// Put or get an agent's state snapshot.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Send one heartbeat for an agent owned by this node (for shell-scripted agents).
    Heartbeat(HeartbeatArgs),
    /// Isolate (quarantine) an agent, or this node when no agent is named: no
    /// heartbeats, restarts or adoption until `vigil recover`.
    Isolate(IsolationArgs),
    /// End the isolation of an agent, or of this node when no agent is named.
    Recover(IsolationArgs),
    /// Run the built-in example agent: counts, snapshots and heartbeats (used by the
    /// demo and the tests).
    ///
    /// It prints NDJSON lines to stdout (`started`, every 25th `snapshot`, `stopping`).
    /// Exit status: 0 when the node tells it to stop (another owner, fenced, isolated)
    /// or on SIGTERM; 2 when another node owns the agent (start it there) or for bad
    /// arguments; 1 when the node failed every request for 30 s.
    ExampleAgent(ExampleAgentArgs),
    /// Create the cluster CA and node certificates, rotate CAs, revoke certificates,
    /// reload a node's certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Start a local 5-node cluster, kill one node, and print how fast it was detected.
    Demo(DemoArgs),
    /// Check a node's settings, or read and change the live ones of a running node.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script, e.g. `vigil completions bash >
    /// /etc/bash_completion.d/vigil`.
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

// Parsed once per process; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the settings exactly as `vigil agent` would (flags, VIGIL_* variables,
    /// --config file, and the runtime.toml a running node persisted in its data
    /// directory), check the files and directories they name, and print the
    /// effective settings. Exit status 0 when the node could start with them, 1
    /// otherwise.
    Check(AgentArgs),
    /// Show a running node's effective settings (GET /v1/config).
    Get(ConfigGetArgs),
    /// Change settings of a running node that apply without a restart
    /// (PUT /v1/config), e.g. `vigil config set capacity=50 log_filter=debug`.
    /// `KEY=null` drops a runtime change (back to the value from the config file,
    /// flags or environment). Changes are persisted in the node's data directory.
    Set(ConfigSetArgs),
}

#[derive(Debug, Args)]
pub struct ConfigGetArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Only this setting's value.
    pub key: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConfigSetArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// KEY=VALUE pairs; VALUE is read as JSON when it parses (true, 50, null),
    /// else as a string.
    #[arg(required = true, value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
}

/// Settings of a node. Each may also be set by the environment variable shown, or by
/// the same key (with `_` for `-`) in the `--config` file.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML file with any of the settings below (keys: name, zone, bind, ...).
    #[arg(long, env = "VIGIL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name: a DNS label (a-z, 0-9, '-'), the name in its certificate.
    #[arg(long, env = "VIGIL_NAME")]
    pub name: Option<String>,
    /// Availability zone of this host [default: default].
    #[arg(long, env = "VIGIL_ZONE")]
    pub zone: Option<String>,
    /// UDP address to listen on [default: 0.0.0.0:7946].
    #[arg(long, env = "VIGIL_BIND", value_name = "ADDR")]
    pub bind: Option<String>,
    /// Address peers use to reach this node [default: the bind address when it is a
    /// specific IP]. Port 0 means "the port actually bound".
    #[arg(long, env = "VIGIL_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<String>,
    /// HOST:PORT of a node to join through; repeat, or comma-separate in VIGIL_SEED.
    #[arg(
        long = "seed",
        env = "VIGIL_SEED",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub seeds: Vec<String>,
    /// Directory with ca.crt, NAME.crt and NAME.key [default: /etc/vigil/pki].
    #[arg(long, env = "VIGIL_PKI", value_name = "DIR")]
    pub pki: Option<PathBuf>,
    /// Unix socket of the local API [default: /run/vigil/vigil.sock].
    #[arg(long, env = "VIGIL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Directory for this node's state [default: /var/lib/vigil].
    #[arg(long, env = "VIGIL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Failure-detection profile: lan or wan [default: lan].
    #[arg(long, env = "VIGIL_PROFILE")]
    pub profile: Option<String>,
    /// Most peers holding a QUIC connection at once [default: 256].
    #[arg(long, env = "VIGIL_CONNECTION_CACHE", value_name = "N")]
    pub connection_cache: Option<String>,
    /// Log format: text or json [default: text]. Filter with RUST_LOG.
    #[arg(long, env = "VIGIL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Also serve GET /metrics over plain HTTP on this TCP address, for Prometheus,
    /// e.g. 127.0.0.1:9464 [default: off; /metrics is always on the socket].
    #[arg(long, env = "VIGIL_METRICS_BIND", value_name = "ADDR")]
    pub metrics_bind: Option<String>,
    /// Copies of each agent's snapshots, on distinct hosts, one per zone first [default: 3].
    #[arg(long, env = "VIGIL_COPIES", value_name = "K")]
    pub copies: Option<String>,
    /// Snapshot versions each holder keeps per agent [default: 5].
    #[arg(long, env = "VIGIL_KEEP", value_name = "N")]
    pub keep: Option<String>,
    /// When a put is acknowledged: quorum, all or local [default: quorum].
    #[arg(long, env = "VIGIL_ACK")]
    pub ack: Option<String>,
    /// Whether the owner's own disk counts as one of the copies: true or false [default: false].
    #[arg(long, env = "VIGIL_OWNER_COUNTS_AS_COPY", value_name = "BOOL")]
    pub owner_counts_as_copy: Option<String>,
    /// Largest snapshot accepted, e.g. 16MiB [default: 16MiB].
    #[arg(long, env = "VIGIL_MAX_SNAPSHOT", value_name = "SIZE")]
    pub max_snapshot: Option<String>,
    /// Snapshot bytes held in memory at once; puts wait beyond it [default: 256MiB].
    #[arg(long, env = "VIGIL_SNAPSHOT_MEMORY", value_name = "SIZE")]
    pub snapshot_memory: Option<String>,
    /// Repair copies at most this many bytes per second [default: 64MiB].
    #[arg(long, env = "VIGIL_REPAIR_RATE", value_name = "SIZE")]
    pub repair_rate: Option<String>,
    /// Advertise this node as a standby host: agents of failed hosts are adopted here first.
    #[arg(long, env = "VIGIL_STANDBY")]
    pub standby: bool,
    /// Agents this node is willing to own (its own and adopted ones) [default: 1000].
    #[arg(long, env = "VIGIL_CAPACITY", value_name = "N")]
    pub capacity: Option<String>,
    /// Lease an owner holds on its agents' holders; keep it below the failure detection
    /// time, e.g. 1s [default: 1s].
    #[arg(long, env = "VIGIL_LEASE", value_name = "DURATION")]
    pub lease: Option<String>,
    /// Command that runs one agent, e.g. "python agent.py --id {id} --snapshot {snapshot}";
    /// placeholders {id} {epoch} {snapshot} {socket} {node}. Without it, agents are
    /// handed to your own supervisor through the event stream.
    #[arg(long, env = "VIGIL_AGENT_COMMAND", value_name = "TEMPLATE")]
    pub agent_command: Option<String>,
    /// Restarts in place of an agent that stops heartbeating before it is handed to
    /// another host [default: 3].
    #[arg(long, env = "VIGIL_AGENT_RESTARTS", value_name = "N")]
    pub agent_restarts: Option<String>,
    /// An agent that has not heartbeated for this long has failed, e.g. 2s [default: 2s].
    #[arg(long, env = "VIGIL_HEARTBEAT_TIMEOUT", value_name = "DURATION")]
    pub heartbeat_timeout: Option<String>,
    /// Permission bits of the API socket, in octal; connecting needs write
    /// permission, and "other" write is refused [default: 0660].
    #[arg(long, env = "VIGIL_SOCKET_MODE", value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// Group (name or gid) the API socket is given to, e.g. the agents' group
    /// [default: the node's own group].
    #[arg(long, env = "VIGIL_SOCKET_GROUP", value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// A user (name or uid) allowed to use the API, checked with SO_PEERCRED at
    /// accept; repeat, or comma-separate in VIGIL_ALLOW_UIDS. The node's own uid is
    /// always allowed [default: none listed: the socket's mode alone decides].
    #[arg(
        long = "allow-uid",
        env = "VIGIL_ALLOW_UIDS",
        value_name = "USER",
        value_delimiter = ','
    )]
    pub allow_uids: Vec<String>,
    /// API connections open at once, all clients together [default: 1024].
    #[arg(long, env = "VIGIL_API_MAX_CONNECTIONS", value_name = "N")]
    pub api_max_connections: Option<String>,
    /// API connections open at once from one uid [default: 256].
    #[arg(long, env = "VIGIL_API_MAX_CONNECTIONS_PER_UID", value_name = "N")]
    pub api_max_connections_per_uid: Option<String>,
    /// /v1/events streams open at once from one uid [default: 64].
    #[arg(long, env = "VIGIL_API_MAX_STREAMS_PER_UID", value_name = "N")]
    pub api_max_streams_per_uid: Option<String>,
    /// A request head must arrive within this time of connecting or of the previous
    /// answer, else the connection is closed (socket and --metrics-bind) [default: 10s].
    #[arg(long, env = "VIGIL_API_HEADER_TIMEOUT", value_name = "DURATION")]
    pub api_header_timeout: Option<String>,
    /// A request body must arrive within this time, and an answer that cannot be
    /// written for this long closes the connection [default: 30s].
    #[arg(long, env = "VIGIL_API_IO_TIMEOUT", value_name = "DURATION")]
    pub api_io_timeout: Option<String>,
    /// Test fixture, not for production: the wire versions to speak, MIN-MAX, e.g.
    /// 1-2 to also speak the next version (2) and stand in for "the next release",
    /// or 2-2 for a release that dropped version 1 (tests/tests/upgrade.rs).
    /// Hidden from --help; flag only [default: 1-1].
    #[arg(long, hide = true, value_name = "MIN-MAX")]
    pub test_wire_versions: Option<String>,
}

/// Where to find the local node.
#[derive(Debug, Args)]
pub struct SocketArgs {
    /// Unix socket of the node [default: `socket` from --config, else /run/vigil/vigil.sock].
    #[arg(long, env = "VIGIL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The node's TOML config file, to read its `socket` setting.
    #[arg(long, env = "VIGIL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Only events after this index.
    #[arg(long, value_name = "INDEX")]
    pub since: Option<u64>,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print JSON instead of a summary line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// The agent's id: letters, digits, '.', '_' and '-', at most 128.
    pub id: String,
    /// Metadata as JSON (at most 4 KiB).
    #[arg(long, default_value = "{}")]
    pub meta: String,
    /// Adoption priority: higher priorities are adopted first when standby capacity is
    /// short [default: the node's, 0].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
}

#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// The agent's id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct IsolationArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// The agent; without it, this node.
    pub id: Option<String>,
    /// Print JSON instead of a table or a line.
    #[arg(long)]
    pub json: bool,
}

/// Settings of `vigil example-agent` (see [`crate::example_agent`]).
#[derive(Debug, Args)]
pub struct ExampleAgentArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// The agent's id (the launcher sets VIGIL_AGENT_ID).
    #[arg(long, env = "VIGIL_AGENT_ID")]
    pub id: String,
    /// Restore from this snapshot file instead of the cluster's latest (the launcher
    /// sets VIGIL_SNAPSHOT); an empty path or file means the cluster's latest.
    // Not a PathBuf: clap refuses an empty path, and the launcher's `{snapshot}` is
    // empty when there is none.
    #[arg(long, env = "VIGIL_SNAPSHOT", value_name = "PATH")]
    pub snapshot: Option<std::ffi::OsString>,
    /// Milliseconds between snapshots; each adds one to the count.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_ms: u64,
    /// Milliseconds between heartbeats (the first goes at once).
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: u64,
    /// Metadata as JSON, used when the agent is registered.
    #[arg(long, default_value = "{}")]
    pub meta: String,
    /// Adoption priority, used when the agent is registered.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
}

#[derive(Debug, Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Store a new snapshot of an agent owned by this node (from a file or stdin);
    /// prints the acknowledgement as JSON.
    Put {
        #[command(flatten)]
        socket: SocketArgs,
        id: String,
        /// Read the snapshot from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Acknowledgement: quorum, all or local [default: the node's setting].
        #[arg(long)]
        ack: Option<String>,
    },
    /// Fetch an agent's latest snapshot (or `--seq`) from the cluster; epoch and seq
    /// go to stderr.
    Get {
        #[command(flatten)]
        socket: SocketArgs,
        id: String,
        #[arg(long)]
        seq: Option<u64>,
        /// Write the snapshot to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create the cluster CA: DIR/ca.crt and DIR/ca.key.
    Init {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate: OUT/NAME.crt and OUT/NAME.key, signed by the CA in DIR.
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The node's name (its certificate's DNS name).
        #[arg(long)]
        name: String,
        /// Where to write the files [default: the CA directory].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Manage the CAs and revocation lists a node's PKI directory trusts (ca.crt,
    /// crl.pem). Run `vigil cert reload` afterwards to apply the change.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Revoke node certificates: add them to the revocation list DIR/crl.pem of the CA
    /// in DIR. Then install that list on every node (`vigil cert trust add --pki
    /// NODE_PKI DIR/crl.pem`) and reload them (`vigil cert reload`).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["name", "serial", "cert"])))]
    Revoke {
        /// Directory holding ca.crt and ca.key (and issued.txt, crl.pem).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Every certificate this CA issued for this node (listed in DIR/issued.txt).
        #[arg(long)]
        name: Option<String>,
        /// One certificate, by serial number (hex).
        #[arg(long)]
        serial: Option<String>,
        /// The certificate in this file.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// Validity of the new revocation list, in days (nodes keep applying a list
        /// after it; revoke again or reissue it before to keep its dates meaningful).
        #[arg(long, default_value_t = 365)]
        crl_days: u32,
    },
    /// Make the running node re-read its PKI directory (POST /v1/tls/reload; SIGHUP
    /// does the same). Prints what it loaded, or why it kept its current certificates.
    Reload {
        #[command(flatten)]
        socket: SocketArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Show the trusted CAs, the revocation lists and the node certificates of DIR.
    List {
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Trust the CA certificates in FILE (e.g. a new CA's ca.crt) and install the
    /// revocation lists in it (e.g. a CA's crl.pem); a list replaces the older one of
    /// the same CA.
    Add {
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        /// PEM files with CA certificates and/or revocation lists.
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
    },
    /// Stop trusting a CA (and drop its revocation list). Refused while a node
    /// certificate in DIR depends on it, unless --force.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ca", "fingerprint"])))]
    Remove {
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        /// Remove the CAs in this file (e.g. the old CA directory's ca.crt).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Remove the CA with this SHA-256 fingerprint (or a unique prefix of at least
        /// 8 hex digits; `vigil cert trust list` shows them).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Remove it even if a node certificate in DIR depends on it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's directory (certificates, logs, sockets) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Give up if the cluster does not converge or detect within this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}
