//! Settings that change while the node runs (`GET`/`PUT /v1/config`), and their
//! persistence in `DATA_DIR/runtime.toml`.
//!
//! Only settings whose change is safe on one node at any moment are live:
//!
//! - `log_filter`: the tracing filter (a reload layer, see [`crate::logging`]).
//! - `standby`, `capacity`: this node's offer to adopt agents. They are announced to
//!   every member (`NodeInfo`) at once, as at start; coordinators choose targets from
//!   the latest announcement, so a change affects only later choices.
//! - `heartbeat_timeout`, `agent_restarts`: local supervision of this node's agents.
//!   A new timeout applies from each agent's next heartbeat (the answer carries it).
//!
//! Everything else needs a restart, and a patch naming it is refused with the reason
//! ([`restart_reason`]): the probe period of a profile cannot change inside foca;
//! holders grant leases with their own `lease` and owners count on three quarters of
//! theirs, so one node changing its lease alone could run an agent after its holders
//! elected another owner; the endpoint, socket, store and identity are set up at start.
//!
//! Precedence at start: `runtime.toml` > flags > `VIGIL_*` > the config file >
//! defaults, for the keys it holds. `null` in a patch drops a key from it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{self, AgentConfig};
use crate::logging;

/// The file, in the data directory.
pub const RUNTIME_FILE: &str = "runtime.toml";
/// Largest `PUT /v1/config` body.
pub const MAX_PATCH_BODY: usize = 16 * 1024;
/// Largest runtime file read at start (it holds a handful of keys).
const MAX_FILE: u64 = 64 * 1024;

/// The settings that change without a restart.
pub const LIVE_KEYS: [&str; 5] = [
    "log_filter",
    "standby",
    "capacity",
    "heartbeat_timeout",
    "agent_restarts",
];

/// Why a setting cannot change while the node runs (`None`: it can, or it is unknown).
pub fn restart_reason(key: &str) -> Option<&'static str> {
    Some(match key {
        "name" | "zone" => "the node's identity is fixed while it runs",
        "bind" | "advertise" => "the QUIC endpoint is bound and announced at start",
        "seeds" => "seeds are read at start (a running node finds members by gossip)",
        "pki" => "certificates are loaded at start",
        "socket" => "the API socket is bound at start",
        "data_dir" => "the data directory is locked and opened at start",
        "profile" => {
            "the probe period is fixed inside the failure detector; all nodes should use the same profile"
        }
        "connection_cache" => "the connection cache is sized at start",
        "log_format" => "the log formatter is installed at start (log_filter changes live)",
        "copies"
        | "keep"
        | "ack"
        | "owner_counts_as_copy"
        | "max_snapshot"
        | "snapshot_memory"
        | "repair_rate" => "the replicator and the snapshot store are configured at start",
        "lease" => {
            "holders grant leases with their own lease and owners rely on theirs, so every node must use the same lease: change it in every node's config and restart them"
        }
        "agent_command" => "running agents were started with it; the launcher reads it at start",
        "metrics_bind" => "the metrics listener is bound at start",
        "socket_mode" | "socket_group" | "allow_uids" => {
            "the API socket is created and its allow list read at start"
        }
        "api_max_connections"
        | "api_max_connections_per_uid"
        | "api_max_streams_per_uid"
        | "api_header_timeout"
        | "api_io_timeout" => "the API listeners are configured at start",
        _ => return None,
    })
}

/// A refused setting, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error(
        "{field}: restart required ({why}). Fix: change it in the config file, flags or VIGIL_* variables and restart the node"
    )]
    RestartRequired { field: String, why: &'static str },
    #[error(
        "isolated: not a setting here. Fix: POST /v1/node/isolate or /v1/node/recover (`vigil isolate` / `vigil recover`)"
    )]
    Isolation,
    #[error("{field}: unknown setting. Fix: settings that change live are {}", LIVE_KEYS.join(", "))]
    Unknown { field: String },
    #[error("{field}: {problem}. Fix: {fix}")]
    Invalid {
        field: String,
        problem: String,
        fix: &'static str,
    },
    #[error("the body must be a JSON object of settings, e.g. {{\"capacity\": 50}} ({problem})")]
    NotAnObject { problem: String },
}

impl SettingError {
    pub fn code(&self) -> &'static str {
        match self {
            SettingError::RestartRequired { .. } => "restart_required",
            SettingError::Isolation => "not_a_setting",
            SettingError::Unknown { .. } => "unknown_setting",
            SettingError::Invalid { .. } => "invalid_setting",
            SettingError::NotAnObject { .. } => "bad_request",
        }
    }

    /// The setting the error is about, if one.
    pub fn field(&self) -> Option<&str> {
        match self {
            SettingError::RestartRequired { field, .. }
            | SettingError::Unknown { field }
            | SettingError::Invalid { field, .. } => Some(field),
            SettingError::Isolation => Some("isolated"),
            SettingError::NotAnObject { .. } => None,
        }
    }
}

/// The live settings' values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveValues {
    pub log_filter: String,
    pub standby: bool,
    pub capacity: u32,
    pub heartbeat_timeout: Duration,
    pub agent_restarts: u32,
}

impl LiveValues {
    /// The values from flags, environment and file (`log_filter` from `RUST_LOG`).
    pub fn from_config(config: &AgentConfig, log_filter: String) -> Self {
        Self {
            log_filter,
            standby: config.recovery.standby,
            capacity: config.recovery.capacity,
            heartbeat_timeout: config.recovery.heartbeat_timeout,
            agent_restarts: config.recovery.agent_restarts,
        }
    }

    fn with(&self, o: &Overrides) -> Self {
        Self {
            log_filter: o
                .log_filter
                .clone()
                .unwrap_or_else(|| self.log_filter.clone()),
            standby: o.standby.unwrap_or(self.standby),
            capacity: o.capacity.unwrap_or(self.capacity),
            heartbeat_timeout: o.heartbeat_timeout.unwrap_or(self.heartbeat_timeout),
            agent_restarts: o.agent_restarts.unwrap_or(self.agent_restarts),
        }
    }

    fn get(&self, key: Key) -> Value {
        match key {
            Key::LogFilter => Value::from(self.log_filter.clone()),
            Key::Standby => Value::from(self.standby),
            Key::Capacity => Value::from(self.capacity),
            Key::HeartbeatTimeout => Value::from(duration_text(self.heartbeat_timeout)),
            Key::AgentRestarts => Value::from(self.agent_restarts),
        }
    }
}

/// What `runtime.toml` holds: the live settings changed at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub log_filter: Option<String>,
    pub standby: Option<bool>,
    pub capacity: Option<u32>,
    pub heartbeat_timeout: Option<Duration>,
    pub agent_restarts: Option<u32>,
}

impl Overrides {
    fn set(&mut self, setting: Option<Setting>, key: Key) {
        match (key, setting) {
            (Key::LogFilter, Some(Setting::LogFilter(v))) => self.log_filter = Some(v),
            (Key::Standby, Some(Setting::Standby(v))) => self.standby = Some(v),
            (Key::Capacity, Some(Setting::Capacity(v))) => self.capacity = Some(v),
            (Key::HeartbeatTimeout, Some(Setting::HeartbeatTimeout(v))) => {
                self.heartbeat_timeout = Some(v)
            }
            (Key::AgentRestarts, Some(Setting::AgentRestarts(v))) => self.agent_restarts = Some(v),
            (Key::LogFilter, _) => self.log_filter = None,
            (Key::Standby, _) => self.standby = None,
            (Key::Capacity, _) => self.capacity = None,
            (Key::HeartbeatTimeout, _) => self.heartbeat_timeout = None,
            (Key::AgentRestarts, _) => self.agent_restarts = None,
        }
    }

    /// As a JSON object (also the shape of the file's TOML table).
    pub fn to_json(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        if let Some(v) = &self.log_filter {
            map.insert("log_filter".into(), Value::from(v.clone()));
        }
        if let Some(v) = self.standby {
            map.insert("standby".into(), Value::from(v));
        }
        if let Some(v) = self.capacity {
            map.insert("capacity".into(), Value::from(v));
        }
        if let Some(v) = self.heartbeat_timeout {
            map.insert("heartbeat_timeout".into(), Value::from(duration_text(v)));
        }
        if let Some(v) = self.agent_restarts {
            map.insert("agent_restarts".into(), Value::from(v));
        }
        map
    }

    /// The file's text.
    pub fn file_text(&self) -> String {
        let mut table = toml::Table::new();
        if let Some(v) = &self.log_filter {
            table.insert("log_filter".into(), toml::Value::String(v.clone()));
        }
        if let Some(v) = self.standby {
            table.insert("standby".into(), toml::Value::Boolean(v));
        }
        if let Some(v) = self.capacity {
            table.insert("capacity".into(), toml::Value::Integer(i64::from(v)));
        }
        if let Some(v) = self.heartbeat_timeout {
            table.insert(
                "heartbeat_timeout".into(),
                toml::Value::String(duration_text(v)),
            );
        }
        if let Some(v) = self.agent_restarts {
            table.insert("agent_restarts".into(), toml::Value::Integer(i64::from(v)));
        }
        format!(
            "# Written by vigil for PUT /v1/config (`vigil config set`). These values win over\n\
             # the config file, flags and VIGIL_* variables at start. Remove a line (or set it\n\
             # to null through the API) to go back to them.\n{table}"
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    LogFilter,
    Standby,
    Capacity,
    HeartbeatTimeout,
    AgentRestarts,
}

impl Key {
    fn parse(field: &str) -> Result<Key, SettingError> {
        Ok(match field {
            "log_filter" => Key::LogFilter,
            "standby" => Key::Standby,
            "capacity" => Key::Capacity,
            "heartbeat_timeout" => Key::HeartbeatTimeout,
            "agent_restarts" => Key::AgentRestarts,
            "isolated" => return Err(SettingError::Isolation),
            other => {
                return Err(match restart_reason(other) {
                    Some(why) => SettingError::RestartRequired {
                        field: other.to_string(),
                        why,
                    },
                    None => SettingError::Unknown {
                        // Bounded: the name is echoed in the error and the log.
                        field: other.chars().take(64).collect(),
                    },
                });
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Key::LogFilter => "log_filter",
            Key::Standby => "standby",
            Key::Capacity => "capacity",
            Key::HeartbeatTimeout => "heartbeat_timeout",
            Key::AgentRestarts => "agent_restarts",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    LogFilter(String),
    Standby(bool),
    Capacity(u32),
    HeartbeatTimeout(Duration),
    AgentRestarts(u32),
}

fn validate(key: Key, value: &Value) -> Result<Setting, SettingError> {
    let invalid = |problem: String, fix: &'static str| SettingError::Invalid {
        field: key.name().to_string(),
        problem,
        fix,
    };
    let whole = |hi: u32, fix: &'static str| -> Result<u32, SettingError> {
        value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n <= hi)
            .ok_or_else(|| {
                invalid(
                    format!(
                        "must be a whole number from 0 to {hi}, got {}",
                        short(value)
                    ),
                    fix,
                )
            })
    };
    Ok(match key {
        Key::LogFilter => {
            let text = value.as_str().ok_or_else(|| {
                invalid(
                    format!("must be a string, got {}", short(value)),
                    "write RUST_LOG-style directives, e.g. \"info\" or \"warn,vigil::node=debug\"",
                )
            })?;
            logging::parse_filter(text).map_err(|problem| {
                invalid(
                    problem,
                    "write RUST_LOG-style directives, e.g. \"info\" or \"warn,vigil::node=debug\"",
                )
            })?;
            Setting::LogFilter(text.to_string())
        }
        Key::Standby => Setting::Standby(value.as_bool().ok_or_else(|| {
            invalid(
                format!("must be true or false, got {}", short(value)),
                "use true or false",
            )
        })?),
        Key::Capacity => Setting::Capacity(whole(
            config::MAX_CAPACITY,
            "the agents this host can run at once",
        )?),
        Key::AgentRestarts => Setting::AgentRestarts(whole(
            config::MAX_AGENT_RESTARTS,
            "a few restarts (the default is 3)",
        )?),
        Key::HeartbeatTimeout => {
            let (lo, hi) = config::HEARTBEAT_TIMEOUT_RANGE;
            let fix = "write a number with a unit, e.g. \"2s\" or \"800ms\"";
            let text = value.as_str().ok_or_else(|| {
                invalid(
                    format!("must be a duration string, got {}", short(value)),
                    fix,
                )
            })?;
            match humantime::parse_duration(text.trim()) {
                Ok(d) if (lo..=hi).contains(&d) => Setting::HeartbeatTimeout(d),
                _ => {
                    return Err(invalid(
                        format!(
                            "must be a duration from {} to {}, got {}",
                            duration_text(lo),
                            duration_text(hi),
                            short(value)
                        ),
                        fix,
                    ));
                }
            }
        }
    })
}

/// A value as shown in an error (bounded).
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

pub fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A validated `PUT /v1/config` body: each setting's new value, or `None` to drop
/// its runtime change.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    entries: Vec<(Key, Option<Setting>)>,
}

impl Patch {
    /// Parses and validates a JSON object. Nothing is applied unless every key passes.
    pub fn from_json(body: &[u8]) -> Result<Patch, SettingError> {
        let map: serde_json::Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| SettingError::NotAnObject {
                problem: e.to_string(),
            })?;
        Self::from_map(map)
    }

    fn from_map(map: serde_json::Map<String, Value>) -> Result<Patch, SettingError> {
        let mut entries = Vec::with_capacity(map.len());
        for (field, value) in &map {
            let key = Key::parse(field)?;
            let setting = if value.is_null() {
                None
            } else {
                Some(validate(key, value)?)
            };
            entries.push((key, setting));
        }
        Ok(Patch { entries })
    }
}

/// One changed value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub old: Value,
    pub new: Value,
}

/// A refused runtime file.
#[derive(Debug, thiserror::Error)]
#[error("invalid {}: {problem}. Fix: correct or remove that line (vigil writes this file for PUT /v1/config), or delete the file to use the config file's values", path.display())]
pub struct RuntimeFileError {
    pub path: PathBuf,
    pub problem: String,
}

/// The live settings of a running node: the values it started from, and the runtime
/// changes on top.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    base: LiveValues,
    overrides: Overrides,
    path: PathBuf,
}

impl RuntimeConfig {
    /// Reads `DATA_DIR/runtime.toml` (absent: no changes) over `base`.
    pub fn load(data_dir: &Path, base: LiveValues) -> Result<Self, RuntimeFileError> {
        let path = data_dir.join(RUNTIME_FILE);
        let overrides = read_file(&path)?;
        Ok(Self {
            base,
            overrides,
            path,
        })
    }

    /// `base` without runtime changes (when the file could not be read).
    pub fn without_changes(data_dir: &Path, base: LiveValues) -> Self {
        Self {
            base,
            overrides: Overrides::default(),
            path: data_dir.join(RUNTIME_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    pub fn effective(&self) -> LiveValues {
        self.base.with(&self.overrides)
    }

    /// The runtime changes after `patch`, and what it changes in the effective values.
    pub fn preview(&self, patch: &Patch) -> (Overrides, Vec<Change>) {
        let mut next = self.overrides.clone();
        for (key, setting) in &patch.entries {
            next.set(setting.clone(), *key);
        }
        let (before, after) = (self.effective(), self.base.with(&next));
        let mut changes = Vec::new();
        for key in [
            Key::LogFilter,
            Key::Standby,
            Key::Capacity,
            Key::HeartbeatTimeout,
            Key::AgentRestarts,
        ] {
            let (old, new) = (before.get(key), after.get(key));
            if old != new {
                changes.push(Change {
                    field: key.name().to_string(),
                    old,
                    new,
                });
            }
        }
        (next, changes)
    }

    /// Takes `overrides` (already written to the file).
    pub fn commit(&mut self, overrides: Overrides) {
        self.overrides = overrides;
    }
}

fn read_file(path: &Path) -> Result<Overrides, RuntimeFileError> {
    let fail = |problem: String| RuntimeFileError {
        path: path.to_path_buf(),
        problem,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        // No file, or no data directory yet (opening it reports what is wrong there).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Overrides::default());
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    if meta.len() > MAX_FILE {
        return Err(fail(format!("larger than {MAX_FILE} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    parse_file(path, &text)
}

/// The file's text as [`read_file`] read it (`path` only names it in errors); the
/// fuzz target (`crate::fuzzing`) runs this on every input.
pub(crate) fn parse_file(path: &Path, text: &str) -> Result<Overrides, RuntimeFileError> {
    let fail = |problem: String| RuntimeFileError {
        path: path.to_path_buf(),
        problem,
    };
    let table: toml::Table =
        toml::from_str(text).map_err(|e| fail(e.to_string().trim_end().replace('\n', " ")))?;
    let mut map = serde_json::Map::new();
    for (key, value) in table {
        let json = serde_json::to_value(&value).map_err(|e| fail(format!("{key}: {e}")))?;
        map.insert(key, json);
    }
    let patch = Patch::from_map(map).map_err(|e| fail(e.to_string()))?;
    let mut overrides = Overrides::default();
    for (key, setting) in patch.entries {
        overrides.set(setting, key);
    }
    Ok(overrides)
}

/// The effective settings as `GET /v1/config` shows them (and `vigil config check`
/// prints as TOML). Key names are the config file's. No secrets: the node's key is
/// named by its directory, never read here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsJson {
    pub name: String,
    pub zone: String,
    pub bind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    pub seeds: Vec<String>,
    pub pki: String,
    pub socket: String,
    pub data_dir: String,
    pub profile: String,
    pub connection_cache: usize,
    pub log_format: String,
    pub log_filter: String,
    pub copies: usize,
    pub keep: usize,
    pub ack: String,
    pub owner_counts_as_copy: bool,
    pub max_snapshot: u64,
    pub snapshot_memory: u64,
    pub repair_rate: u64,
    pub standby: bool,
    pub capacity: u32,
    pub lease: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_command: Option<String>,
    pub agent_restarts: u32,
    pub heartbeat_timeout: String,
    /// The API socket's permission bits, in octal.
    #[serde(default)]
    pub socket_mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Users allowed on the socket as configured (names or uids); empty: the
    /// socket's mode alone decides.
    #[serde(default)]
    pub allow_uids: Vec<String>,
    #[serde(default)]
    pub api_max_connections: usize,
    #[serde(default)]
    pub api_max_connections_per_uid: usize,
    #[serde(default)]
    pub api_max_streams_per_uid: usize,
    #[serde(default)]
    pub api_header_timeout: String,
    #[serde(default)]
    pub api_io_timeout: String,
    /// This node is isolated (`POST /v1/node/isolate`); only from a running node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated: Option<bool>,
    /// The settings `PUT /v1/config` accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Vec<String>>,
    /// What `runtime.toml` holds (those values are included above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<serde_json::Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_file: Option<String>,
    /// What a `PUT` changed (only in its answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<Change>,
}

impl SettingsJson {
    /// `config` with the live values in `runtime` applied.
    pub fn new(config: &AgentConfig, runtime: &RuntimeConfig) -> Self {
        let live = runtime.effective();
        let r = &config.replication;
        Self {
            name: config.name.to_string(),
            zone: config.zone.to_string(),
            bind: config.bind.to_string(),
            advertise: config.advertise.map(|a| a.to_string()),
            seeds: config.seeds.clone(),
            pki: config.pki.display().to_string(),
            socket: config.socket.display().to_string(),
            data_dir: config.data_dir.display().to_string(),
            profile: config.profile.as_str().to_string(),
            connection_cache: config.connection_cache,
            log_format: match config.log_format {
                config::LogFormat::Text => "text",
                config::LogFormat::Json => "json",
            }
            .to_string(),
            log_filter: live.log_filter,
            copies: r.copies,
            keep: r.keep,
            ack: r.ack.as_str().to_string(),
            owner_counts_as_copy: r.owner_counts_as_copy,
            max_snapshot: r.max_snapshot,
            snapshot_memory: r.memory,
            repair_rate: r.repair_rate,
            standby: live.standby,
            capacity: live.capacity,
            lease: duration_text(config.recovery.lease),
            agent_command: config.recovery.agent_command.clone(),
            agent_restarts: live.agent_restarts,
            heartbeat_timeout: duration_text(live.heartbeat_timeout),
            socket_mode: config::mode_text(config.api.socket_mode),
            socket_group: config.api.socket_group.as_ref().map(|g| g.given.clone()),
            allow_uids: config
                .api
                .allow_uids
                .iter()
                .map(|u| u.given.clone())
                .collect(),
            api_max_connections: config.api.max_connections,
            api_max_connections_per_uid: config.api.max_connections_per_uid,
            api_max_streams_per_uid: config.api.max_streams_per_uid,
            api_header_timeout: duration_text(config.api.header_timeout),
            api_io_timeout: duration_text(config.api.io_timeout),
            isolated: None,
            live: Some(LIVE_KEYS.iter().map(|k| k.to_string()).collect()),
            runtime: Some(runtime.overrides().to_json()),
            runtime_file: Some(runtime.path().display().to_string()),
            changed: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> LiveValues {
        LiveValues {
            log_filter: "info".into(),
            standby: false,
            capacity: 1000,
            heartbeat_timeout: Duration::from_secs(2),
            agent_restarts: 3,
        }
    }

    fn refused(body: &str) -> SettingError {
        Patch::from_json(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_patch_changes_only_what_it_names_and_null_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut rt = RuntimeConfig::load(dir.path(), base()).unwrap();
        let patch =
            Patch::from_json(br#"{"capacity": 5, "standby": true, "heartbeat_timeout": "500ms"}"#)
                .unwrap();
        let (next, changes) = rt.preview(&patch);
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["standby", "capacity", "heartbeat_timeout"]);
        assert_eq!(changes[1].old, Value::from(1000));
        assert_eq!(changes[1].new, Value::from(5));
        rt.commit(next);
        let eff = rt.effective();
        assert_eq!(eff.capacity, 5);
        assert_eq!(eff.heartbeat_timeout, Duration::from_millis(500));
        assert_eq!(eff.log_filter, "info");

        let (next, changes) = rt.preview(&Patch::from_json(br#"{"capacity": null}"#).unwrap());
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].new, Value::from(1000));
        rt.commit(next);
        assert_eq!(rt.overrides().capacity, None);
        assert_eq!(rt.overrides().standby, Some(true));
    }

    #[test]
    fn the_file_round_trips_and_is_validated_like_a_patch() {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            log_filter: Some("warn,vigil=debug".into()),
            standby: Some(true),
            capacity: Some(7),
            heartbeat_timeout: Some(Duration::from_millis(1500)),
            agent_restarts: Some(0),
        };
        std::fs::write(dir.path().join(RUNTIME_FILE), overrides.file_text()).unwrap();
        let rt = RuntimeConfig::load(dir.path(), base()).unwrap();
        assert_eq!(rt.overrides(), &overrides);

        std::fs::write(dir.path().join(RUNTIME_FILE), "capacity = -1\n").unwrap();
        let err = RuntimeConfig::load(dir.path(), base())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("runtime.toml") && err.contains("capacity"),
            "{err}"
        );
        std::fs::write(dir.path().join(RUNTIME_FILE), "lease = \"2s\"\n").unwrap();
        let err = RuntimeConfig::load(dir.path(), base())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lease") && err.contains("restart required"),
            "{err}"
        );
    }

    #[test]
    fn refusals_name_the_field_and_the_fix() {
        let e = refused(r#"{"lease": "2s"}"#);
        assert_eq!((e.code(), e.field()), ("restart_required", Some("lease")));
        assert!(e.to_string().contains("restart required"), "{e}");
        let e = refused(r#"{"profile": "wan"}"#);
        assert_eq!(e.code(), "restart_required");
        let e = refused(r#"{"capcity": 5}"#);
        assert_eq!((e.code(), e.field()), ("unknown_setting", Some("capcity")));
        assert!(e.to_string().contains("log_filter"), "{e}");
        let e = refused(r#"{"capacity": "many"}"#);
        assert_eq!((e.code(), e.field()), ("invalid_setting", Some("capacity")));
        let e = refused(r#"{"capacity": 5000000}"#);
        assert_eq!(e.field(), Some("capacity"));
        let e = refused(r#"{"log_filter": "vigil=loud"}"#);
        assert_eq!(e.field(), Some("log_filter"));
        let e = refused(r#"{"heartbeat_timeout": "1ms"}"#);
        assert_eq!(e.field(), Some("heartbeat_timeout"));
        let e = refused(r#"{"standby": "yes"}"#);
        assert_eq!(e.field(), Some("standby"));
        let e = refused(r#"{"isolated": true}"#);
        assert_eq!(e.code(), "not_a_setting");
        for junk in ["[1]", "nope", "", "{\"capacity\": 5"] {
            assert_eq!(refused(junk).code(), "bad_request", "{junk}");
        }
        // One bad key refuses the whole patch.
        assert!(Patch::from_json(br#"{"capacity": 5, "keep": 3}"#).is_err());
    }
}
