//! Resolving a node's settings: flags, then `VIGIL_*` environment variables, then the
//! TOML file, then defaults. Every refusal names where the bad value came from and
//! what to do about it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;
use vigil_protocol::wire::WireVersions;
use vigil_protocol::{AckMode, NodeName, Profile, ReplicationConfig, Zone};

use crate::cli::{AgentArgs, SocketArgs};

pub const DEFAULT_BIND: &str = "0.0.0.0:7946";
pub const DEFAULT_PKI: &str = "/etc/vigil/pki";
pub const DEFAULT_SOCKET: &str = "/run/vigil/vigil.sock";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/vigil";
pub const DEFAULT_ZONE: &str = "default";
pub const DEFAULT_CONNECTION_CACHE: usize = 256;
const MAX_CONNECTION_CACHE: usize = 65_536;
/// Config files larger than this are refused before parsing.
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A node's settings, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: NodeName,
    pub zone: Zone,
    pub bind: SocketAddr,
    /// `None`: advertise the bound address. A port of 0: the bound port.
    pub advertise: Option<SocketAddr>,
    /// `HOST:PORT` strings, resolved at each join attempt (DNS may change).
    pub seeds: Vec<String>,
    pub pki: PathBuf,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub profile: Profile,
    pub connection_cache: usize,
    pub idle_timeout: Duration,
    pub log_format: LogFormat,
    /// Where to serve `/metrics` over TCP as well (`--metrics-bind`); `None`: only on
    /// the socket.
    pub metrics_bind: Option<SocketAddr>,
    pub replication: Replication,
    pub recovery: Recovery,
    /// Who may use the API socket, and what one client may hold.
    pub api: ApiAccess,
    /// The wire versions this node speaks (`--test-next-wire-version` adds the next).
    pub wire_versions: WireVersions,
}

/// Who may talk to the API socket, and the limits of each client (docs/OPERATIONS.md,
/// "Who may use the socket").
#[derive(Debug, Clone)]
pub struct ApiAccess {
    /// Permission bits of the socket file (connecting needs write permission).
    pub socket_mode: u32,
    /// The group the socket file is given to; `None`: the node's own group.
    pub socket_group: Option<SocketGroup>,
    /// Uids allowed to use the API besides the node's own (checked with
    /// SO_PEERCRED at accept); empty: the socket's mode alone decides.
    pub allow_uids: Vec<AllowedUid>,
    /// Open connections at once, all clients together.
    pub max_connections: usize,
    /// Open connections at once from one uid.
    pub max_connections_per_uid: usize,
    /// `/v1/events` streams at once from one uid.
    pub max_streams_per_uid: usize,
    /// A request head must arrive whole within this time of the connection opening
    /// or of the previous answer (so it is also the idle timeout).
    pub header_timeout: Duration,
    /// A request body must arrive whole within this time, and a write to a client
    /// that makes no progress for this long closes the connection.
    pub io_timeout: Duration,
}

/// `socket_group`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    pub gid: u32,
    /// As the operator wrote it (a name or a number).
    pub given: String,
}

/// One entry of `allow_uids`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedUid {
    pub uid: u32,
    /// As the operator wrote it (a user name or a number).
    pub given: String,
}

pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_API_MAX_CONNECTIONS_PER_UID: usize = 256;
pub const DEFAULT_API_MAX_STREAMS_PER_UID: usize = 64;
pub const DEFAULT_API_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_API_IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_API_CONNECTIONS: usize = 65_536;
const API_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

impl Default for ApiAccess {
    fn default() -> Self {
        Self {
            socket_mode: DEFAULT_SOCKET_MODE,
            socket_group: None,
            allow_uids: Vec::new(),
            max_connections: DEFAULT_API_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_API_MAX_CONNECTIONS_PER_UID,
            max_streams_per_uid: DEFAULT_API_MAX_STREAMS_PER_UID,
            header_timeout: DEFAULT_API_HEADER_TIMEOUT,
            io_timeout: DEFAULT_API_IO_TIMEOUT,
        }
    }
}

impl ApiAccess {
    /// Whether a client of `uid` may use the API. The node's own uid always may
    /// (it owns the data directory anyway); with an empty list every uid may.
    pub fn allows(&self, uid: u32, own_uid: u32) -> bool {
        self.allow_uids.is_empty() || uid == own_uid || self.allow_uids.iter().any(|a| a.uid == uid)
    }
}

/// Writes a file mode as `vigil` shows it, e.g. `0660`.
pub fn mode_text(mode: u32) -> String {
    format!("{mode:04o}")
}

/// Recovery and local agent settings.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub standby: bool,
    pub capacity: u32,
    pub lease: Duration,
    /// Launcher template (`--agent-command`), if vigil starts the agents itself.
    pub agent_command: Option<String>,
    pub agent_restarts: u32,
    pub heartbeat_timeout: Duration,
}

pub const DEFAULT_CAPACITY: u32 = 1000;
pub const DEFAULT_LEASE: Duration = Duration::from_secs(1);
pub const DEFAULT_AGENT_RESTARTS: u32 = 3;
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bounds shared with the live settings (crate::runtime).
pub const MAX_CAPACITY: u32 = 1_000_000;
pub const MAX_AGENT_RESTARTS: u32 = 100;
pub const HEARTBEAT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_secs(3600));

impl Default for Recovery {
    fn default() -> Self {
        Self {
            standby: false,
            capacity: DEFAULT_CAPACITY,
            lease: DEFAULT_LEASE,
            agent_command: None,
            agent_restarts: DEFAULT_AGENT_RESTARTS,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
        }
    }
}

/// Snapshot replication settings.
#[derive(Debug, Clone)]
pub struct Replication {
    /// Copies per agent (k).
    pub copies: usize,
    /// Versions kept per agent on each holder (N).
    pub keep: usize,
    pub ack: AckMode,
    pub owner_counts_as_copy: bool,
    /// Largest snapshot accepted, in bytes.
    pub max_snapshot: u64,
    /// Snapshot bytes held in memory at once (puts in flight, replicas arriving).
    pub memory: u64,
    /// Repair copies at most this many bytes per second.
    pub repair_rate: u64,
}

pub const DEFAULT_COPIES: usize = 3;
pub const DEFAULT_KEEP: usize = 5;
pub const DEFAULT_MAX_SNAPSHOT: u64 = 16 * 1024 * 1024;
pub const DEFAULT_SNAPSHOT_MEMORY: u64 = 256 * 1024 * 1024;
pub const DEFAULT_REPAIR_RATE: u64 = 64 * 1024 * 1024;

impl Default for Replication {
    fn default() -> Self {
        Self {
            copies: DEFAULT_COPIES,
            keep: DEFAULT_KEEP,
            ack: AckMode::Quorum,
            owner_counts_as_copy: false,
            max_snapshot: DEFAULT_MAX_SNAPSHOT,
            memory: DEFAULT_SNAPSHOT_MEMORY,
            repair_rate: DEFAULT_REPAIR_RATE,
        }
    }
}

impl Replication {
    /// The protocol's view of these settings.
    pub fn protocol_config(&self) -> ReplicationConfig {
        ReplicationConfig {
            copies: self.copies,
            keep: self.keep,
            ack: self.ack,
            owner_counts_as_copy: self.owner_counts_as_copy,
            repair_bytes_per_sec: self.repair_rate,
            ..ReplicationConfig::default()
        }
    }
}

/// Parses a byte size: a whole number with an optional unit (B, KiB, MiB, GiB; KB,
/// MB, GB are read as the binary units too, which is what people mean for memory).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Where a value came from, as the user would write it.
#[derive(Debug, Clone)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File { key: &'static str, path: PathBuf },
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "--{flag}"),
            Origin::Env(var) => f.write_str(var),
            Origin::File { key, path } => write!(f, "`{key}` in {}", path.display()),
            Origin::Default => f.write_str("the default"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {origin} {value:?}: {problem}. Fix: {fix}")]
    Invalid {
        origin: Origin,
        value: String,
        problem: String,
        fix: String,
    },
    #[error("missing {field}. Fix: {fix}")]
    Missing { field: &'static str, fix: String },
    #[error("cannot read config file {path}: {problem}. Fix: {fix}")]
    File {
        path: PathBuf,
        problem: String,
        fix: String,
    },
}

/// The TOML file. Unknown keys are refused so a typo does not go unnoticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    zone: Option<String>,
    bind: Option<String>,
    advertise: Option<String>,
    seeds: Option<Vec<String>>,
    pki: Option<PathBuf>,
    socket: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    profile: Option<String>,
    connection_cache: Option<u64>,
    log_format: Option<String>,
    metrics_bind: Option<String>,
    copies: Option<u64>,
    keep: Option<u64>,
    ack: Option<String>,
    owner_counts_as_copy: Option<bool>,
    max_snapshot: Option<toml::Value>,
    snapshot_memory: Option<toml::Value>,
    repair_rate: Option<toml::Value>,
    standby: Option<bool>,
    capacity: Option<u64>,
    lease: Option<String>,
    agent_command: Option<String>,
    agent_restarts: Option<u64>,
    heartbeat_timeout: Option<String>,
    socket_mode: Option<toml::Value>,
    socket_group: Option<toml::Value>,
    allow_uids: Option<Vec<toml::Value>>,
    api_max_connections: Option<u64>,
    api_max_connections_per_uid: Option<u64>,
    api_max_streams_per_uid: Option<u64>,
    api_header_timeout: Option<String>,
    api_io_timeout: Option<String>,
}

const FILE_KEYS: &str = "name, zone, bind, advertise, seeds, pki, socket, data_dir, profile, connection_cache, log_format, metrics_bind, copies, keep, ack, owner_counts_as_copy, max_snapshot, snapshot_memory, repair_rate, standby, capacity, lease, agent_command, agent_restarts, heartbeat_timeout, socket_mode, socket_group, allow_uids, api_max_connections, api_max_connections_per_uid, api_max_streams_per_uid, api_header_timeout, api_io_timeout";

/// A size in the file may be a number (bytes) or a string with a unit.
fn size_text(v: Option<toml::Value>) -> Option<String> {
    v.map(value_text)
}

/// A string as it is, anything else as TOML writes it.
fn value_text(v: toml::Value) -> String {
    match v {
        toml::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let fail = |problem: String, fix: &str| ConfigError::File {
        path: path.to_path_buf(),
        problem,
        fix: fix.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        fail(
            e.to_string(),
            "check the path given with --config or VIGIL_CONFIG",
        )
    })?;
    if meta.len() > MAX_CONFIG_FILE {
        return Err(fail(
            format!(
                "{} bytes is more than the {MAX_CONFIG_FILE}-byte limit",
                meta.len()
            ),
            "point --config at the node's TOML settings file",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            e.to_string(),
            "make the file readable by this user, as UTF-8 text",
        )
    })?;
    parse_file(path, &text)
}

/// The file's text as [`read_file`] read it (`path` only names it in errors).
fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        problem: e.to_string().trim_end().replace('\n', " "),
        fix: format!("valid keys are: {FILE_KEYS}"),
    })
}

/// One setting's raw value and where it came from.
struct Raw {
    value: String,
    origin: Origin,
}

impl Raw {
    fn invalid(&self, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            value: self.value.clone(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

struct Sources<'a> {
    matches: &'a ArgMatches,
    file_path: Option<PathBuf>,
}

impl Sources<'_> {
    /// Picks flag or environment (clap already merged those), then the file.
    fn pick(
        &self,
        id: &'static str,
        env: &'static str,
        key: &'static str,
        from_args: Option<String>,
        from_file: Option<String>,
    ) -> Option<Raw> {
        if let Some(value) = from_args {
            let origin = match self.matches.value_source(id) {
                Some(ValueSource::EnvVariable) => Origin::Env(env),
                _ => Origin::Flag(flag_name(id)),
            };
            return Some(Raw { value, origin });
        }
        from_file.map(|value| Raw {
            value,
            origin: Origin::File {
                key,
                path: self.file_path.clone().unwrap_or_default(),
            },
        })
    }
}

fn flag_name(id: &'static str) -> &'static str {
    match id {
        "data_dir" => "data-dir",
        "connection_cache" => "connection-cache",
        "log_format" => "log-format",
        "metrics_bind" => "metrics-bind",
        "owner_counts_as_copy" => "owner-counts-as-copy",
        "max_snapshot" => "max-snapshot",
        "snapshot_memory" => "snapshot-memory",
        "repair_rate" => "repair-rate",
        "agent_command" => "agent-command",
        "agent_restarts" => "agent-restarts",
        "heartbeat_timeout" => "heartbeat-timeout",
        "seeds" => "seed",
        "socket_mode" => "socket-mode",
        "socket_group" => "socket-group",
        "allow_uids" => "allow-uid",
        "api_max_connections" => "api-max-connections",
        "api_max_connections_per_uid" => "api-max-connections-per-uid",
        "api_max_streams_per_uid" => "api-max-streams-per-uid",
        "api_header_timeout" => "api-header-timeout",
        "api_io_timeout" => "api-io-timeout",
        other => other,
    }
}

fn path_string(p: Option<PathBuf>) -> Option<String> {
    p.map(|p| p.to_string_lossy().into_owned())
}

/// The refusals found while resolving: the node stops at the first, `vigil config
/// check` reports them all. Each setting is still resolved after another failed.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn ok<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }
}

impl AgentConfig {
    /// Resolves `vigil agent` settings. `matches` are the agent subcommand's matches
    /// (they tell a flag from an environment variable). Returns the first refusal.
    pub fn resolve(args: AgentArgs, matches: &ArgMatches) -> Result<AgentConfig, ConfigError> {
        Self::resolve_all(args, matches).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`AgentConfig::resolve`], with every refusal (never an empty list).
    pub fn resolve_all(
        args: AgentArgs,
        matches: &ArgMatches,
    ) -> Result<AgentConfig, Vec<ConfigError>> {
        let file = match &args.config {
            Some(path) => read_file(path).map_err(|e| vec![e])?,
            None => FileConfig::default(),
        };
        Self::resolve_with_file(args, matches, file)
    }

    /// [`AgentConfig::resolve_all`] with the file's text given instead of read from
    /// `args.config` (the fuzz target, `crate::fuzzing`, runs this on every input).
    pub(crate) fn resolve_text(
        args: AgentArgs,
        matches: &ArgMatches,
        text: &str,
    ) -> Result<AgentConfig, Vec<ConfigError>> {
        let path = args.config.clone().unwrap_or_default();
        let file = parse_file(&path, text).map_err(|e| vec![e])?;
        Self::resolve_with_file(args, matches, file)
    }

    fn resolve_with_file(
        args: AgentArgs,
        matches: &ArgMatches,
        mut file: FileConfig,
    ) -> Result<AgentConfig, Vec<ConfigError>> {
        let mut errs = Errors::default();
        let wire_versions = args.test_wire_versions.clone();
        let file_repl = ReplArgs {
            copies: file.copies.take().map(|n| n.to_string()),
            keep: file.keep.take().map(|n| n.to_string()),
            ack: file.ack.take(),
            owner_counts_as_copy: file.owner_counts_as_copy.take().map(|b| b.to_string()),
            max_snapshot: size_text(file.max_snapshot.take()),
            snapshot_memory: size_text(file.snapshot_memory.take()),
            repair_rate: size_text(file.repair_rate.take()),
        };
        let args_repl = ReplArgs {
            copies: args.copies.clone(),
            keep: args.keep.clone(),
            ack: args.ack.clone(),
            owner_counts_as_copy: args.owner_counts_as_copy.clone(),
            max_snapshot: args.max_snapshot.clone(),
            snapshot_memory: args.snapshot_memory.clone(),
            repair_rate: args.repair_rate.clone(),
        };
        let src = Sources {
            matches,
            file_path: args.config.clone(),
        };
        let recovery = resolve_recovery(&src, &args, &mut file, &mut errs);
        let api = resolve_api_access(&src, &args, &mut file, &mut errs);

        let name = src
            .pick("name", "VIGIL_NAME", "name", args.name, file.name)
            .ok_or_else(|| ConfigError::Missing {
                field: "node name",
                fix: "pass --name NAME, set VIGIL_NAME, or add name = \"NAME\" to the config file; it must match the name in the node's certificate".into(),
            });
        let name = errs.ok(name.and_then(|name| {
            NodeName::new(&name.value).map_err(|e| {
                name.invalid(
                    format!("the name {e}"),
                    "pick a DNS label such as \"web-3\" and issue its certificate with `vigil cert issue --name`",
                )
            })
        }));

        let zone = src
            .pick("zone", "VIGIL_ZONE", "zone", args.zone, file.zone)
            .unwrap_or(Raw {
                value: DEFAULT_ZONE.into(),
                origin: Origin::Default,
            });
        let zone = errs.ok(Zone::new(&zone.value).map_err(|e| {
            zone.invalid(
                format!("the zone {e}"),
                "use the availability zone's label, e.g. \"eu-west-1a\"",
            )
        }));

        let bind = src
            .pick("bind", "VIGIL_BIND", "bind", args.bind, file.bind)
            .unwrap_or(Raw {
                value: DEFAULT_BIND.into(),
                origin: Origin::Default,
            });
        let bind_addr = errs.ok(parse_socket_addr(&bind));

        let advertise = match src.pick(
            "advertise",
            "VIGIL_ADVERTISE",
            "advertise",
            args.advertise,
            file.advertise,
        ) {
            Some(raw) => errs.ok(parse_socket_addr(&raw).and_then(|addr| {
                if addr.ip().is_unspecified() || addr.ip().is_multicast() {
                    Err(raw.invalid(
                        "peers cannot reach an unspecified or multicast address",
                        "advertise this host's own address, e.g. 10.0.0.5:7946",
                    ))
                } else {
                    Ok(addr)
                }
            })),
            None => {
                if let Some(bind_addr) = bind_addr
                    && bind_addr.ip().is_unspecified()
                {
                    errs.0.push(ConfigError::Missing {
                        field: "advertise address",
                        fix: format!(
                            "--bind is {bind_addr}, which peers cannot dial; pass --advertise with this host's reachable address (e.g. 10.0.0.5:{}), or bind a specific address",
                            bind_addr.port()
                        ),
                    });
                }
                None
            }
        };

        let (seed_values, seed_origin) = if !args.seeds.is_empty() {
            let origin = match matches.value_source("seeds") {
                Some(ValueSource::EnvVariable) => Origin::Env("VIGIL_SEED"),
                _ => Origin::Flag("seed"),
            };
            (args.seeds, origin)
        } else {
            (
                file.seeds.unwrap_or_default(),
                Origin::File {
                    key: "seeds",
                    path: args.config.clone().unwrap_or_default(),
                },
            )
        };
        let mut seeds = Vec::with_capacity(seed_values.len());
        for value in seed_values {
            let raw = Raw {
                value: value.trim().to_string(),
                origin: seed_origin.clone(),
            };
            if errs.ok(validate_seed(&raw)).is_some() {
                seeds.push(raw.value);
            }
        }

        let path_or = |raw: Option<Raw>, default: &str| -> PathBuf {
            raw.map_or_else(|| PathBuf::from(default), |r| PathBuf::from(r.value))
        };
        let pki = path_or(
            src.pick(
                "pki",
                "VIGIL_PKI",
                "pki",
                path_string(args.pki),
                path_string(file.pki),
            ),
            DEFAULT_PKI,
        );
        let socket = path_or(
            src.pick(
                "socket",
                "VIGIL_SOCKET",
                "socket",
                path_string(args.socket),
                path_string(file.socket),
            ),
            DEFAULT_SOCKET,
        );
        let data_dir = path_or(
            src.pick(
                "data_dir",
                "VIGIL_DATA_DIR",
                "data_dir",
                path_string(args.data_dir),
                path_string(file.data_dir),
            ),
            DEFAULT_DATA_DIR,
        );

        let profile = match src.pick(
            "profile",
            "VIGIL_PROFILE",
            "profile",
            args.profile,
            file.profile,
        ) {
            Some(raw) => errs
                .ok(raw.value.parse::<Profile>().map_err(|problem| {
                    raw.invalid(
                        problem,
                        "use --profile lan within a datacenter, wan across regions",
                    )
                }))
                .unwrap_or(Profile::Lan),
            None => Profile::Lan,
        };

        let connection_cache = match src.pick(
            "connection_cache",
            "VIGIL_CONNECTION_CACHE",
            "connection_cache",
            args.connection_cache,
            file.connection_cache.map(|n| n.to_string()),
        ) {
            Some(raw) => {
                match raw.value.parse::<usize>() {
                    Ok(n) if (1..=MAX_CONNECTION_CACHE).contains(&n) => n,
                    _ => {
                        errs.0.push(raw.invalid(
                        format!("must be a whole number from 1 to {MAX_CONNECTION_CACHE}"),
                        format!("the default, {DEFAULT_CONNECTION_CACHE}, suits clusters of any size"),
                    ));
                        DEFAULT_CONNECTION_CACHE
                    }
                }
            }
            None => DEFAULT_CONNECTION_CACHE,
        };

        let log_format = match src.pick(
            "log_format",
            "VIGIL_LOG_FORMAT",
            "log_format",
            args.log_format,
            file.log_format,
        ) {
            Some(raw) => match raw.value.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    errs.0
                        .push(raw.invalid("unknown log format", "use text or json"));
                    LogFormat::Text
                }
            },
            None => LogFormat::Text,
        };

        let metrics_bind = match src.pick(
            "metrics_bind",
            "VIGIL_METRICS_BIND",
            "metrics_bind",
            args.metrics_bind,
            file.metrics_bind,
        ) {
            Some(raw) => errs.ok(raw.value.trim().parse::<SocketAddr>().map_err(|_| {
                raw.invalid(
                    "not an IP:PORT address to serve /metrics on",
                    "write it as 127.0.0.1:9464 (0.0.0.0:9464 lets a Prometheus on another host scrape it), or leave it unset: /metrics is always served on the socket",
                )
            })),
            None => None,
        };

        let replication = resolve_replication(&src, &args_repl, file_repl, &mut errs);
        let wire_versions = match wire_versions {
            None => WireVersions::DEFAULT,
            Some(value) => {
                let raw = Raw {
                    value,
                    origin: Origin::Flag("test-wire-versions"),
                };
                errs.ok(parse_wire_versions(&raw)).unwrap_or_default()
            }
        };

        let (Some(name), Some(zone), Some(bind_addr), true) =
            (name, zone, bind_addr, errs.0.is_empty())
        else {
            return Err(errs.0);
        };
        Ok(AgentConfig {
            name,
            zone,
            bind: bind_addr,
            advertise,
            seeds,
            pki,
            socket,
            data_dir,
            profile,
            connection_cache,
            idle_timeout: Duration::from_secs(60),
            log_format,
            metrics_bind,
            replication,
            recovery,
            api,
            wire_versions,
        })
    }
}

fn resolve_api_access(
    src: &Sources<'_>,
    args: &AgentArgs,
    file: &mut FileConfig,
    errs: &mut Errors,
) -> ApiAccess {
    let mut a = ApiAccess::default();
    if let Some(raw) = src.pick(
        "socket_mode",
        "VIGIL_SOCKET_MODE",
        "socket_mode",
        args.socket_mode.clone(),
        file.socket_mode.take().map(|v| match v {
            // A TOML number is the mode itself (0o660 in the file); show it in octal.
            toml::Value::Integer(n) => format!("0o{n:o}"),
            other => value_text(other),
        }),
    ) && let Some(mode) = errs.ok(parse_socket_mode(&raw))
    {
        a.socket_mode = mode;
    }
    if let Some(raw) = src.pick(
        "socket_group",
        "VIGIL_SOCKET_GROUP",
        "socket_group",
        args.socket_group.clone(),
        file.socket_group.take().map(value_text),
    ) {
        a.socket_group = errs.ok(resolve_group(&raw));
    }
    let (uid_values, uid_origin) = if !args.allow_uids.is_empty() {
        let origin = match src.matches.value_source("allow_uids") {
            Some(ValueSource::EnvVariable) => Origin::Env("VIGIL_ALLOW_UIDS"),
            _ => Origin::Flag("allow-uid"),
        };
        (args.allow_uids.clone(), origin)
    } else {
        (
            file.allow_uids
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(value_text)
                .collect(),
            Origin::File {
                key: "allow_uids",
                path: src.file_path.clone().unwrap_or_default(),
            },
        )
    };
    for value in uid_values {
        let raw = Raw {
            value: value.trim().to_string(),
            origin: uid_origin.clone(),
        };
        if let Some(allowed) = errs.ok(resolve_user(&raw))
            && !a.allow_uids.iter().any(|u| u.uid == allowed.uid)
        {
            a.allow_uids.push(allowed);
        }
    }
    let count = |raw: &Raw, fix: &str| -> Result<usize, ConfigError> {
        match raw.value.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_API_CONNECTIONS).contains(&n) => Ok(n),
            _ => Err(raw.invalid(
                format!("must be a whole number from 1 to {MAX_API_CONNECTIONS}"),
                fix,
            )),
        }
    };
    if let Some(raw) = src.pick(
        "api_max_connections",
        "VIGIL_API_MAX_CONNECTIONS",
        "api_max_connections",
        args.api_max_connections.clone(),
        file.api_max_connections.take().map(|n| n.to_string()),
    ) && let Some(v) = errs.ok(count(
        &raw,
        &format!(
            "the default, {DEFAULT_API_MAX_CONNECTIONS}, leaves room for every agent of a full host"
        ),
    )) {
        a.max_connections = v;
    }
    if let Some(raw) = src.pick(
        "api_max_connections_per_uid",
        "VIGIL_API_MAX_CONNECTIONS_PER_UID",
        "api_max_connections_per_uid",
        args.api_max_connections_per_uid.clone(),
        file.api_max_connections_per_uid.take().map(|n| n.to_string()),
    ) && let Some(v) = errs.ok(count(
        &raw,
        &format!("the default is {DEFAULT_API_MAX_CONNECTIONS_PER_UID}; keep it below api_max_connections so one user cannot take every connection"),
    )) {
        a.max_connections_per_uid = v;
    }
    if let Some(raw) = src.pick(
        "api_max_streams_per_uid",
        "VIGIL_API_MAX_STREAMS_PER_UID",
        "api_max_streams_per_uid",
        args.api_max_streams_per_uid.clone(),
        file.api_max_streams_per_uid.take().map(|n| n.to_string()),
    ) && let Some(v) = errs.ok(count(
        &raw,
        &format!("the default is {DEFAULT_API_MAX_STREAMS_PER_UID} event streams per user"),
    )) {
        a.max_streams_per_uid = v;
    }
    let (lo, hi) = API_TIMEOUT_RANGE;
    let duration = |raw: &Raw| -> Result<Duration, ConfigError> {
        match humantime::parse_duration(raw.value.trim()) {
            Ok(d) if (lo..=hi).contains(&d) => Ok(d),
            _ => Err(raw.invalid(
                format!("must be a duration from {lo:?} to {hi:?}"),
                "write a number with a unit, e.g. 10s or 500ms",
            )),
        }
    };
    if let Some(raw) = src.pick(
        "api_header_timeout",
        "VIGIL_API_HEADER_TIMEOUT",
        "api_header_timeout",
        args.api_header_timeout.clone(),
        file.api_header_timeout.take(),
    ) && let Some(v) = errs.ok(duration(&raw))
    {
        a.header_timeout = v;
    }
    if let Some(raw) = src.pick(
        "api_io_timeout",
        "VIGIL_API_IO_TIMEOUT",
        "api_io_timeout",
        args.api_io_timeout.clone(),
        file.api_io_timeout.take(),
    ) && let Some(v) = errs.ok(duration(&raw))
    {
        a.io_timeout = v;
    }
    a
}

/// `socket_mode`: octal permission bits (`0660`, `660` or `0o660`). Connecting to a
/// Unix socket needs write permission on it, so a mode that gives "other" write
/// gives every local user the whole API; it is refused.
fn parse_socket_mode(raw: &Raw) -> Result<u32, ConfigError> {
    let fix = "write the permission bits in octal, e.g. \"0660\" (owner and group may connect) or \"0600\" (only the node's user)";
    let text = raw.value.trim();
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o777 => m,
        _ => return Err(raw.invalid("not an octal file mode from 0000 to 0777", fix)),
    };
    if mode & 0o002 != 0 {
        return Err(raw.invalid(
            format!(
                "{} lets every user of this host connect (connecting needs write permission), and the API registers, isolates and reads the snapshots of every agent",
                mode_text(mode)
            ),
            "keep \"other\" without write, e.g. 0660, and give the agents' users the socket's group (socket_group), or list them in allow_uids",
        ));
    }
    Ok(mode)
}

/// `socket_group`: a group name, or a numeric gid (which need not have a name).
fn resolve_group(raw: &Raw) -> Result<SocketGroup, ConfigError> {
    let text = raw.value.trim();
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(SocketGroup {
            gid,
            given: text.to_string(),
        });
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(group)) => Ok(SocketGroup {
            gid: group.gid.as_raw(),
            given: text.to_string(),
        }),
        Ok(None) => Err(raw.invalid(
            "no group of that name on this host",
            "create the group (groupadd), give its numeric gid, or leave socket_group unset (the socket then belongs to the node's own group)",
        )),
        Err(e) => Err(raw.invalid(
            format!("cannot look the group up: {e}"),
            "give the numeric gid instead",
        )),
    }
}

/// One `allow_uids` entry: a user name, or a numeric uid (which need not have a name).
fn resolve_user(raw: &Raw) -> Result<AllowedUid, ConfigError> {
    let text = raw.value.as_str();
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(AllowedUid {
            uid,
            given: text.to_string(),
        });
    }
    if text.is_empty() {
        return Err(raw.invalid(
            "an empty entry",
            "list user names or numeric uids, e.g. --allow-uid agents --allow-uid 1001",
        ));
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(user)) => Ok(AllowedUid {
            uid: user.uid.as_raw(),
            given: text.to_string(),
        }),
        Ok(None) => Err(raw.invalid(
            "no user of that name on this host",
            "create the user, give its numeric uid, or remove it from allow_uids",
        )),
        Err(e) => Err(raw.invalid(
            format!("cannot look the user up: {e}"),
            "give the numeric uid instead",
        )),
    }
}

/// The replication settings as given by flags, environment or file.
struct ReplArgs {
    copies: Option<String>,
    keep: Option<String>,
    ack: Option<String>,
    owner_counts_as_copy: Option<String>,
    max_snapshot: Option<String>,
    snapshot_memory: Option<String>,
    repair_rate: Option<String>,
}

const MAX_COPIES: usize = 16;
const MAX_KEEP: usize = 1000;

fn resolve_replication(
    src: &Sources<'_>,
    args: &ReplArgs,
    file: ReplArgs,
    errs: &mut Errors,
) -> Replication {
    let mut r = Replication::default();
    let whole = |raw: &Raw, lo: usize, hi: usize, fix: &str| -> Result<usize, ConfigError> {
        match raw.value.trim().parse::<usize>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(raw.invalid(format!("must be a whole number from {lo} to {hi}"), fix)),
        }
    };
    if let Some(raw) = src.pick(
        "copies",
        "VIGIL_COPIES",
        "copies",
        args.copies.clone(),
        file.copies,
    ) && let Some(v) = errs.ok(whole(
        &raw,
        1,
        MAX_COPIES,
        "3 copies in 3 zones survive the loss of any zone",
    )) {
        r.copies = v;
    }
    if let Some(raw) = src.pick("keep", "VIGIL_KEEP", "keep", args.keep.clone(), file.keep)
        && let Some(v) = errs.ok(whole(
            &raw,
            1,
            MAX_KEEP,
            "keep a few versions (the default is 5)",
        ))
    {
        r.keep = v;
    }
    if let Some(raw) = src.pick("ack", "VIGIL_ACK", "ack", args.ack.clone(), file.ack)
        && let Some(v) = errs.ok(raw
            .value
            .trim()
            .parse::<AckMode>()
            .map_err(|problem| raw.invalid(problem, "quorum is the safe default")))
    {
        r.ack = v;
    }
    if let Some(raw) = src.pick(
        "owner_counts_as_copy",
        "VIGIL_OWNER_COUNTS_AS_COPY",
        "owner_counts_as_copy",
        args.owner_counts_as_copy.clone(),
        file.owner_counts_as_copy,
    ) {
        match raw.value.trim() {
            "true" => r.owner_counts_as_copy = true,
            "false" => r.owner_counts_as_copy = false,
            _ => errs
                .0
                .push(raw.invalid("must be true or false", "use true or false")),
        }
    }
    let size = |raw: &Raw, lo: u64, hi: u64| -> Result<u64, ConfigError> {
        match parse_size(&raw.value) {
            Some(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(raw.invalid(
                format!("must be a size from {lo} to {hi} bytes"),
                "write bytes or a number with KiB, MiB or GiB, e.g. 16MiB",
            )),
        }
    };
    if let Some(raw) = src.pick(
        "max_snapshot",
        "VIGIL_MAX_SNAPSHOT",
        "max_snapshot",
        args.max_snapshot.clone(),
        file.max_snapshot,
    ) && let Some(v) = errs.ok(size(&raw, 1, 1 << 30))
    {
        r.max_snapshot = v;
    }
    if let Some(raw) = src.pick(
        "snapshot_memory",
        "VIGIL_SNAPSHOT_MEMORY",
        "snapshot_memory",
        args.snapshot_memory.clone(),
        file.snapshot_memory,
    ) && let Some(v) = errs.ok(size(&raw, 1 << 20, 1 << 40))
    {
        r.memory = v;
    }
    if let Some(raw) = src.pick(
        "repair_rate",
        "VIGIL_REPAIR_RATE",
        "repair_rate",
        args.repair_rate.clone(),
        file.repair_rate,
    ) && let Some(v) = errs.ok(size(&raw, 1 << 10, 1 << 40))
    {
        r.repair_rate = v;
    }
    if r.memory < r.max_snapshot {
        errs.0.push(ConfigError::Invalid {
            origin: Origin::Default,
            value: r.memory.to_string(),
            problem: format!(
                "snapshot_memory ({}) is smaller than max_snapshot ({})",
                r.memory, r.max_snapshot
            ),
            fix:
                "raise snapshot_memory to at least max_snapshot (a few times it lets puts overlap)"
                    .into(),
        });
    }
    r
}

fn resolve_recovery(
    src: &Sources<'_>,
    args: &AgentArgs,
    file: &mut FileConfig,
    errs: &mut Errors,
) -> Recovery {
    let mut r = Recovery {
        standby: args.standby || file.standby.unwrap_or(false),
        ..Recovery::default()
    };
    let whole = |raw: &Raw, hi: u64, fix: &str| -> Result<u32, ConfigError> {
        match raw.value.trim().parse::<u32>() {
            Ok(n) if u64::from(n) <= hi => Ok(n),
            _ => Err(raw.invalid(format!("must be a whole number from 0 to {hi}"), fix)),
        }
    };
    let duration = |raw: &Raw, lo: Duration, hi: Duration| -> Result<Duration, ConfigError> {
        match humantime::parse_duration(raw.value.trim()) {
            Ok(d) if (lo..=hi).contains(&d) => Ok(d),
            _ => Err(raw.invalid(
                format!("must be a duration from {lo:?} to {hi:?}"),
                "write a number with a unit, e.g. 1s or 800ms",
            )),
        }
    };
    let capacity = file.capacity.take().map(|n| n.to_string());
    if let Some(raw) = src.pick(
        "capacity",
        "VIGIL_CAPACITY",
        "capacity",
        args.capacity.clone(),
        capacity,
    ) && let Some(v) = errs.ok(whole(
        &raw,
        u64::from(MAX_CAPACITY),
        "the agents this host can run at once",
    )) {
        r.capacity = v;
    }
    if let Some(raw) = src.pick(
        "lease",
        "VIGIL_LEASE",
        "lease",
        args.lease.clone(),
        file.lease.take(),
    ) && let Some(v) = errs.ok(duration(
        &raw,
        Duration::from_millis(100),
        Duration::from_secs(60),
    )) {
        r.lease = v;
    }
    if let Some(raw) = src.pick(
        "agent_command",
        "VIGIL_AGENT_COMMAND",
        "agent_command",
        args.agent_command.clone(),
        file.agent_command.take(),
    ) {
        if raw.value.trim().is_empty() {
            errs.0.push(raw.invalid(
                "is empty",
                "give the command that runs one agent, or leave it out",
            ));
        } else {
            r.agent_command = Some(raw.value);
        }
    }
    let restarts = file.agent_restarts.take().map(|n| n.to_string());
    if let Some(raw) = src.pick(
        "agent_restarts",
        "VIGIL_AGENT_RESTARTS",
        "agent_restarts",
        args.agent_restarts.clone(),
        restarts,
    ) && let Some(v) = errs.ok(whole(
        &raw,
        u64::from(MAX_AGENT_RESTARTS),
        "a few restarts (the default is 3)",
    )) {
        r.agent_restarts = v;
    }
    if let Some(raw) = src.pick(
        "heartbeat_timeout",
        "VIGIL_HEARTBEAT_TIMEOUT",
        "heartbeat_timeout",
        args.heartbeat_timeout.clone(),
        file.heartbeat_timeout.take(),
    ) {
        let (lo, hi) = HEARTBEAT_TIMEOUT_RANGE;
        if let Some(v) = errs.ok(duration(&raw, lo, hi)) {
            r.heartbeat_timeout = v;
        }
    }
    r
}

/// Why zone-scoped IPv6 addresses are refused, and what to use instead.
const SCOPED_V6_PROBLEM: &str = "zone-scoped IPv6 addresses (fe80::...%eth0) are not supported: the scope names an interface of one host, and peers on other hosts cannot dial it";
const SCOPED_V6_FIX: &str = "use a global or unique-local IPv6 address, e.g. [fd00::5]:7946, or IPv4; to listen on every interface, bind [::]:7946 and advertise such an address";

fn parse_socket_addr(raw: &Raw) -> Result<SocketAddr, ConfigError> {
    let addr: SocketAddr = raw.value.parse().map_err(|_| {
        if raw.value.contains('%') {
            raw.invalid(SCOPED_V6_PROBLEM, SCOPED_V6_FIX)
        } else {
            raw.invalid(
                "not an IP:PORT socket address",
                "write it as 10.0.0.5:7946, or [2001:db8::5]:7946 for IPv6",
            )
        }
    })?;
    if let SocketAddr::V6(v6) = addr {
        // A numeric scope (`%2`) parses, but the wire carries no scope: peers would
        // get the address without it.
        if v6.scope_id() != 0 {
            return Err(raw.invalid(SCOPED_V6_PROBLEM, SCOPED_V6_FIX));
        }
        if v6.ip().is_unicast_link_local() {
            return Err(raw.invalid(
                "link-local IPv6 addresses (fe80::/10) need an interface scope, which is not supported",
                SCOPED_V6_FIX,
            ));
        }
    }
    Ok(addr)
}

/// `MIN-MAX` (or a single version) of the hidden `--test-wire-versions`.
fn parse_wire_versions(raw: &Raw) -> Result<WireVersions, ConfigError> {
    let value = raw.value.trim();
    let (min, max) = value.split_once('-').unwrap_or((value, value));
    min.trim()
        .parse()
        .ok()
        .zip(max.trim().parse().ok())
        .and_then(|(min, max)| WireVersions::new(min, max))
        .ok_or_else(|| {
            raw.invalid(
                format!(
                    "not a range of wire versions this build knows ({} to {})",
                    vigil_protocol::wire::MIN_WIRE_VERSION,
                    vigil_protocol::wire::NEXT_WIRE_VERSION
                ),
                "write MIN-MAX, e.g. 1-2; this setting exists for tests only, leave it out in production",
            )
        })
}

/// A seed is HOST:PORT; the host may be a name, resolved at each join attempt.
fn validate_seed(raw: &Raw) -> Result<(), ConfigError> {
    if raw.value.parse::<SocketAddr>().is_ok() || raw.value.contains('%') {
        return parse_socket_addr(raw).map(|_| ());
    }
    let fix =
        "write seeds as HOST:PORT, e.g. 10.0.0.2:7946, node-1.internal:7946 or [2001:db8::2]:7946";
    let Some((host, port)) = raw.value.rsplit_once(':') else {
        return Err(raw.invalid("missing :PORT", fix));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(raw.invalid("the port must be a number from 1 to 65535", fix));
    }
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid_host {
        return Err(raw.invalid("not a host name or IP address", fix));
    }
    Ok(())
}

/// The socket the CLI client talks to: --socket / VIGIL_SOCKET, else the `socket` of
/// the --config file, else the default.
pub fn resolve_socket(args: &SocketArgs) -> Result<PathBuf, ConfigError> {
    if let Some(socket) = &args.socket {
        return Ok(socket.clone());
    }
    if let Some(path) = &args.config
        && let Some(socket) = read_file(path)?.socket
    {
        return Ok(socket);
    }
    Ok(PathBuf::from(DEFAULT_SOCKET))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    use crate::cli::{Cli, Command};

    fn resolve(argv: &[&str]) -> Result<AgentConfig, ConfigError> {
        let mut full = vec!["vigil", "agent"];
        full.extend_from_slice(argv);
        let matches = Cli::command().try_get_matches_from(full).unwrap();
        let sub = matches.subcommand_matches("agent").unwrap().clone();
        let Command::Agent(args) = Cli::from_arg_matches(&matches).unwrap().command else {
            unreachable!()
        };
        AgentConfig::resolve(args, &sub)
    }

    #[test]
    fn flags_give_a_complete_config() {
        let c = resolve(&[
            "--name",
            "n1",
            "--zone",
            "az1",
            "--bind",
            "127.0.0.1:7000",
            "--seed",
            "127.0.0.1:7001",
            "--seed",
            "node-2.internal:7946",
            "--profile",
            "wan",
        ])
        .unwrap();
        assert_eq!(c.name.as_str(), "n1");
        assert_eq!(c.zone.as_str(), "az1");
        assert_eq!(c.bind, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.advertise, None);
        assert_eq!(c.seeds, vec!["127.0.0.1:7001", "node-2.internal:7946"]);
        assert_eq!(c.profile, Profile::Wan);
        assert_eq!(c.connection_cache, DEFAULT_CONNECTION_CACHE);
    }

    #[test]
    fn a_bad_name_is_reported_with_its_flag_and_a_fix() {
        let err = resolve(&["--name", "Web_1", "--bind", "127.0.0.1:1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--name"), "{err}");
        assert!(err.contains("\"Web_1\""), "{err}");
        assert!(err.contains("Fix:"), "{err}");
    }

    #[test]
    fn binding_everywhere_requires_an_advertised_address() {
        let err = resolve(&["--name", "n1"]).unwrap_err().to_string();
        assert!(err.contains("--advertise"), "{err}");
        let ok = resolve(&["--name", "n1", "--advertise", "10.0.0.5:7946"]).unwrap();
        assert_eq!(ok.bind, DEFAULT_BIND.parse().unwrap());
    }

    #[test]
    fn the_hidden_wire_version_fixture_takes_a_known_range_only() {
        let base = ["--name", "n1", "--bind", "127.0.0.1:1"];
        assert_eq!(resolve(&base).unwrap().wire_versions, WireVersions::DEFAULT);
        let next = resolve(&[&base[..], &["--test-wire-versions", "1-2"]].concat()).unwrap();
        assert_eq!(next.wire_versions, WireVersions::WITH_NEXT);
        let only = resolve(&[&base[..], &["--test-wire-versions", "2"]].concat()).unwrap();
        assert_eq!(only.wire_versions, WireVersions::new(2, 2).unwrap());
        for bad in ["0-1", "2-1", "1-3", "x", ""] {
            let err = resolve(&[&base[..], &["--test-wire-versions", bad]].concat())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--test-wire-versions") && err.contains("Fix:"),
                "{err}"
            );
        }
        let help = Cli::command()
            .find_subcommand_mut("agent")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("wire-versions"), "{help}");
    }

    #[test]
    fn ipv6_addresses_bind_advertise_and_seed() {
        let c = resolve(&[
            "--name",
            "n1",
            "--bind",
            "[::]:7946",
            "--advertise",
            "[2001:db8::5]:0",
            "--seed",
            "[::1]:7001",
            "--seed",
            "[fd00::2]:7946",
            "--seed",
            "127.0.0.1:7002",
        ])
        .unwrap();
        assert_eq!(c.bind, "[::]:7946".parse().unwrap());
        assert_eq!(c.advertise, Some("[2001:db8::5]:0".parse().unwrap()));
        assert_eq!(
            c.seeds,
            vec!["[::1]:7001", "[fd00::2]:7946", "127.0.0.1:7002"]
        );
        let err = resolve(&["--name", "n1", "--bind", "[::]:7946"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--advertise"), "{err}");
    }

    #[test]
    fn zone_scoped_ipv6_addresses_are_refused_naming_the_field_and_the_fix() {
        let cases: [(&str, &str); 6] = [
            ("--bind", "[fe80::1%eth0]:7946"),
            ("--bind", "[fe80::1%2]:7946"),
            ("--bind", "[fe80::1]:7946"),
            ("--advertise", "[fe80::fc:ff:fe00:1%eth0]:7946"),
            ("--advertise", "[2001:db8::1%3]:7946"),
            ("--seed", "[fe80::1%eth0]:7946"),
        ];
        for (flag, value) in cases {
            let mut argv = vec!["--name", "n1", "--bind", "[::1]:0", flag, value];
            if flag == "--bind" {
                argv.drain(2..4);
            }
            let err = resolve(&argv).unwrap_err().to_string();
            assert!(
                err.contains(flag) && err.contains(value) && err.contains("Fix:"),
                "{flag} {value}: {err}"
            );
            assert!(
                err.contains("zone-scoped") || err.contains("link-local"),
                "{flag} {value}: {err}"
            );
            assert!(err.contains("[fd00::5]:7946"), "{flag} {value}: {err}");
        }
        let err = resolve(&[
            "--name",
            "n1",
            "--bind",
            "[::1]:0",
            "--seed",
            "[fe80::1]:7946",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--seed") && err.contains("link-local"),
            "{err}"
        );
    }

    #[test]
    fn bad_addresses_and_seeds_name_the_field() {
        let err = resolve(&["--name", "n1", "--bind", "localhost"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--bind") && err.contains("IP:PORT"), "{err}");
        let err = resolve(&[
            "--name",
            "n1",
            "--bind",
            "127.0.0.1:1",
            "--seed",
            "10.0.0.2",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--seed") && err.contains(":PORT"), "{err}");
        let err = resolve(&["--name", "n1", "--bind", "[fe80::1]:7946"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("link-local"), "{err}");
        let err = resolve(&["--name", "n1", "--bind", "127.0.0.1:1", "--profile", "fast"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--profile") && err.contains("\"lan\""),
            "{err}"
        );
        let err = resolve(&[
            "--name",
            "n1",
            "--bind",
            "127.0.0.1:1",
            "--connection-cache",
            "0",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--connection-cache"), "{err}");
    }

    #[test]
    fn metrics_bind_is_off_by_default_and_a_bad_one_names_its_source() {
        let base = ["--name", "n1", "--bind", "127.0.0.1:1"];
        assert_eq!(resolve(&base).unwrap().metrics_bind, None);
        let on = resolve(&[&base[..], &["--metrics-bind", "127.0.0.1:9464"]].concat()).unwrap();
        assert_eq!(on.metrics_bind, Some("127.0.0.1:9464".parse().unwrap()));
        let err = resolve(&[&base[..], &["--metrics-bind", "9464"]].concat())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--metrics-bind") && err.contains("\"9464\"") && err.contains("Fix:"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vigil.toml");
        std::fs::write(&path, "metrics_bind = \"localhost:9464\"\n").unwrap();
        let p = path.to_str().unwrap();
        let err = resolve(&[&base[..], &["--config", p]].concat())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`metrics_bind` in"), "{err}");
    }

    #[test]
    fn the_file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vigil.toml");
        std::fs::write(
            &path,
            "name = \"n7\"\nzone = \"az2\"\nbind = \"127.0.0.1:9000\"\nseeds = [\"127.0.0.1:9001\"]\nconnection_cache = 8\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = resolve(&["--config", p, "--zone", "az9"]).unwrap();
        assert_eq!(c.name.as_str(), "n7");
        assert_eq!(c.zone.as_str(), "az9");
        assert_eq!(c.seeds, vec!["127.0.0.1:9001"]);
        assert_eq!(c.connection_cache, 8);

        std::fs::write(&path, "name = \"n7\"\nbind = \"nope\"\n").unwrap();
        let err = resolve(&["--config", p]).unwrap_err().to_string();
        assert!(
            err.contains("`bind` in") && err.contains("vigil.toml"),
            "{err}"
        );

        std::fs::write(&path, "nmae = \"n7\"\n").unwrap();
        let err = resolve(&["--config", p]).unwrap_err().to_string();
        assert!(err.contains("nmae") && err.contains("valid keys"), "{err}");
    }

    #[test]
    fn every_bad_setting_is_reported_not_only_the_first() {
        let mut full = vec!["vigil", "agent"];
        full.extend_from_slice(&[
            "--name",
            "Bad_Name",
            "--bind",
            "nope",
            "--capacity",
            "many",
            "--keep",
            "0",
            "--seed",
            "10.0.0.2",
        ]);
        let matches = Cli::command().try_get_matches_from(full).unwrap();
        let sub = matches.subcommand_matches("agent").unwrap().clone();
        let Command::Agent(args) = Cli::from_arg_matches(&matches).unwrap().command else {
            unreachable!()
        };
        let errors: Vec<String> = AgentConfig::resolve_all(args, &sub)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        for flag in ["--name", "--bind", "--capacity", "--keep", "--seed"] {
            assert!(
                errors.iter().any(|e| e.contains(flag)),
                "{flag}: {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 5, "{errors:#?}");
    }

    #[test]
    fn socket_access_defaults_to_mode_0660_and_no_allow_list() {
        let c = resolve(&["--name", "n1", "--bind", "127.0.0.1:1"]).unwrap();
        assert_eq!(c.api.socket_mode, 0o660);
        assert_eq!(c.api.socket_group, None);
        assert!(c.api.allow_uids.is_empty());
        assert!(
            c.api.allows(12345, 0),
            "an empty list leaves it to the mode"
        );
        assert_eq!(c.api.max_connections, DEFAULT_API_MAX_CONNECTIONS);
        assert_eq!(
            c.api.max_connections_per_uid,
            DEFAULT_API_MAX_CONNECTIONS_PER_UID
        );
        assert_eq!(c.api.max_streams_per_uid, DEFAULT_API_MAX_STREAMS_PER_UID);
        assert_eq!(c.api.header_timeout, DEFAULT_API_HEADER_TIMEOUT);
        assert_eq!(c.api.io_timeout, DEFAULT_API_IO_TIMEOUT);
    }

    #[test]
    fn socket_mode_is_octal_and_other_write_is_refused_with_the_reason() {
        let base = ["--name", "n1", "--bind", "127.0.0.1:1"];
        for (text, mode) in [("0640", 0o640), ("600", 0o600), ("0o660", 0o660)] {
            let c = resolve(&[&base[..], &["--socket-mode", text]].concat()).unwrap();
            assert_eq!(c.api.socket_mode, mode, "{text}");
        }
        let err = resolve(&[&base[..], &["--socket-mode", "0666"]].concat())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--socket-mode") && err.contains("every user") && err.contains("Fix:"),
            "{err}"
        );
        for bad in ["0888", "1777", "rw-rw----", ""] {
            let err = resolve(&[&base[..], &["--socket-mode", bad]].concat())
                .unwrap_err()
                .to_string();
            assert!(err.contains("octal"), "{bad}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vigil.toml");
        std::fs::write(&path, "socket_mode = 0o640\n").unwrap();
        let p = path.to_str().unwrap();
        let c = resolve(&[&base[..], &["--config", p]].concat()).unwrap();
        assert_eq!(c.api.socket_mode, 0o640);
        std::fs::write(&path, "socket_mode = \"0606\"\n").unwrap();
        let err = resolve(&[&base[..], &["--config", p]].concat())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`socket_mode` in"), "{err}");
    }

    #[test]
    fn socket_group_and_allow_uids_take_names_or_numbers() {
        let base = ["--name", "n1", "--bind", "127.0.0.1:1"];
        let c = resolve(
            &[
                &base[..],
                &[
                    "--socket-group",
                    "root",
                    "--allow-uid",
                    "root",
                    "--allow-uid",
                    "1000,1000",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(c.api.socket_group.as_ref().map(|g| g.gid), Some(0));
        let uids: Vec<u32> = c.api.allow_uids.iter().map(|u| u.uid).collect();
        assert_eq!(uids, vec![0, 1000], "names resolved, duplicates dropped");
        assert!(c.api.allows(1000, 4242) && c.api.allows(4242, 4242));
        assert!(!c.api.allows(1001, 4242));
        let c = resolve(&[&base[..], &["--socket-group", "54321"]].concat()).unwrap();
        assert_eq!(c.api.socket_group.map(|g| g.gid), Some(54321));

        let err = resolve(&[&base[..], &["--socket-group", "no-such-group-vigil"]].concat())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--socket-group") && err.contains("no group") && err.contains("Fix:"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vigil.toml");
        std::fs::write(&path, "allow_uids = [\"root\", 1001]\n").unwrap();
        let p = path.to_str().unwrap();
        let c = resolve(&[&base[..], &["--config", p]].concat()).unwrap();
        let uids: Vec<u32> = c.api.allow_uids.iter().map(|u| u.uid).collect();
        assert_eq!(uids, vec![0, 1001]);
        std::fs::write(&path, "allow_uids = [\"no-such-user-vigil\"]\n").unwrap();
        let err = resolve(&[&base[..], &["--config", p]].concat())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`allow_uids` in") && err.contains("no user") && err.contains("Fix:"),
            "{err}"
        );
    }

    #[test]
    fn api_limits_are_bounded_and_name_their_flag() {
        let base = ["--name", "n1", "--bind", "127.0.0.1:1"];
        let c = resolve(
            &[
                &base[..],
                &[
                    "--api-max-connections",
                    "8",
                    "--api-max-connections-per-uid",
                    "2",
                    "--api-max-streams-per-uid",
                    "1",
                    "--api-header-timeout",
                    "500ms",
                    "--api-io-timeout",
                    "1m",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(
            (
                c.api.max_connections,
                c.api.max_connections_per_uid,
                c.api.max_streams_per_uid
            ),
            (8, 2, 1)
        );
        assert_eq!(c.api.header_timeout, Duration::from_millis(500));
        assert_eq!(c.api.io_timeout, Duration::from_secs(60));
        for (flag, bad) in [
            ("--api-max-connections", "0"),
            ("--api-max-connections-per-uid", "many"),
            ("--api-max-streams-per-uid", "100000"),
            ("--api-header-timeout", "5ms"),
            ("--api-io-timeout", "2h"),
        ] {
            let err = resolve(&[&base[..], &[flag, bad]].concat())
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag) && err.contains("Fix:"), "{flag}: {err}");
        }
    }

    #[test]
    fn a_missing_name_says_how_to_set_it() {
        let err = resolve(&["--bind", "127.0.0.1:1"]).unwrap_err().to_string();
        assert!(
            err.contains("--name") && err.contains("VIGIL_NAME"),
            "{err}"
        );
    }
}
