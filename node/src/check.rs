//! `vigil config check`: resolves the settings exactly as `vigil agent` does (flags,
//! `VIGIL_*`, the `--config` file, the data directory's runtime.toml), checks what
//! they name on this host (certificates, data directory, socket, addresses, agent
//! command), and prints the effective settings and every finding. It changes
//! nothing: no directory is created and no lock taken; writability is probed with a
//! temporary file that is removed at once, the bind address with a socket that is
//! closed at once.

use std::io::{self, Write};
use std::net::{ToSocketAddrs, UdpSocket};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::ArgMatches;

use crate::cli::AgentArgs;
use crate::config::{AgentConfig, ApiAccess, mode_text};
use crate::launcher::LaunchTemplate;
use crate::logging;
use crate::runtime::{LiveValues, RUNTIME_FILE, RuntimeConfig, SettingsJson, duration_text};
use crate::tls;

/// Unix socket paths longer than this do not fit `sockaddr_un` (108 bytes with the
/// terminating NUL on Linux).
const MAX_SOCKET_PATH: usize = 107;
/// A certificate expiring sooner than this is reported.
const CERT_WARN: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    /// Worth knowing, but the node would start.
    Note,
    /// The node would not start, or would not work.
    Error,
}

struct Finding {
    level: Level,
    field: &'static str,
    message: String,
}

#[derive(Default)]
struct Report {
    findings: Vec<Finding>,
}

impl Report {
    fn ok(&mut self, field: &'static str, message: impl Into<String>) {
        self.push(Level::Ok, field, message.into());
    }
    fn note(&mut self, field: &'static str, message: impl Into<String>) {
        self.push(Level::Note, field, message.into());
    }
    fn error(&mut self, field: &'static str, message: impl Into<String>) {
        self.push(Level::Error, field, message.into());
    }
    fn push(&mut self, level: Level, field: &'static str, message: String) {
        self.findings.push(Finding {
            level,
            field,
            message,
        });
    }
    fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .count()
    }
}

/// Runs the check, writes the report to `out`; `true` when the node could start.
pub fn run(args: AgentArgs, matches: &ArgMatches, out: &mut impl Write) -> bool {
    match check(args, matches, out) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("vigil: cannot write the report: {e}");
            false
        }
    }
}

fn check(args: AgentArgs, matches: &ArgMatches, out: &mut impl Write) -> io::Result<bool> {
    let config = match AgentConfig::resolve_all(args, matches) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                writeln!(out, "error {e}")?;
            }
            writeln!(
                out,
                "vigil config check: {} setting{} to fix before the node can start",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            )?;
            return Ok(false);
        }
    };
    let mut report = Report::default();
    let base = LiveValues::from_config(&config, logging::startup_filter());
    let runtime = match RuntimeConfig::load(&config.data_dir, base.clone()) {
        Ok(r) => r,
        Err(e) => {
            report.error("runtime", e.to_string());
            RuntimeConfig::without_changes(&config.data_dir, base)
        }
    };
    check_all(&config, &runtime, &mut report);

    let mut settings = SettingsJson::new(&config, &runtime);
    let overridden: Vec<String> = runtime.overrides().to_json().keys().cloned().collect();
    settings.live = None;
    settings.runtime = None;
    settings.runtime_file = None;
    writeln!(
        out,
        "# Effective settings of `vigil agent` (flags > VIGIL_* > config file > defaults)"
    )?;
    if !overridden.is_empty() {
        writeln!(
            out,
            "# {} from {} (changed at run time; it wins over everything else)",
            overridden.join(", "),
            config.data_dir.join(RUNTIME_FILE).display()
        )?;
    }
    match toml::to_string(&settings) {
        Ok(text) => write!(out, "{text}")?,
        Err(e) => writeln!(out, "# (cannot show the settings as TOML: {e})")?,
    }
    writeln!(out, "\n# Checks")?;
    for f in &report.findings {
        let level = match f.level {
            Level::Ok => "ok   ",
            Level::Note => "note ",
            Level::Error => "error",
        };
        writeln!(out, "{level} {}: {}", f.field, f.message)?;
    }
    let errors = report.errors();
    if errors == 0 {
        writeln!(
            out,
            "vigil config check: the node can start with these settings"
        )?;
    } else {
        writeln!(
            out,
            "vigil config check: {errors} problem{} to fix before the node can start",
            if errors == 1 { "" } else { "s" }
        )?;
    }
    Ok(errors == 0)
}

fn check_all(config: &AgentConfig, runtime: &RuntimeConfig, report: &mut Report) {
    let filter = runtime.effective().log_filter;
    match logging::parse_filter(&filter) {
        Ok(_) => report.ok("log_filter", format!("{filter:?}")),
        Err(problem) => report.error(
            "log_filter",
            format!(
                "{filter:?} {problem}. Fix: correct RUST_LOG (or log_filter in runtime.toml), e.g. \"info\""
            ),
        ),
    }
    if let Ok(raw) = std::env::var("RUST_LOG")
        && !raw.trim().is_empty()
        && let Err(problem) = logging::parse_filter(&raw)
    {
        // The node starts anyway, with the default filter and a warning.
        report.note(
            "log_filter",
            format!(
                "RUST_LOG={raw:?} {problem}: the node will log with {:?} instead. Fix: correct RUST_LOG",
                logging::DEFAULT_FILTER
            ),
        );
    }
    check_pki(config, report);
    check_data_dir(&config.data_dir, report);
    check_socket(&config.socket, config.api.socket_mode, report);
    check_access(&config.api, report);
    check_addresses(config, report);
    if let Some(command) = &config.recovery.agent_command {
        check_agent_command(command, report);
    }
}

fn check_pki(config: &AgentConfig, report: &mut Report) {
    match tls::load_node_tls(&config.pki, &config.name) {
        Ok(loaded) => {
            let cert = tls::node_cert_path(&config.pki, &config.name);
            let loaded = loaded.summary();
            let revoked: usize = loaded.crls.iter().map(|c| c.revoked.len()).sum();
            let mut message = format!(
                "{} and its key are readable, name {}, signed by a CA in {} ({} trusted, {} revocation list(s) with {revoked} revoked certificate(s))",
                cert.display(),
                config.name,
                config.pki.join("ca.crt").display(),
                loaded.trusted.len(),
                loaded.crls.len(),
            );
            match expires_in(&cert) {
                Some(left) if left < CERT_WARN => {
                    report.note(
                        "pki",
                        format!(
                            "{} expires in {} days. Fix: issue a new one with `vigil cert issue --name {}`, then `vigil cert reload` (no restart needed)",
                            cert.display(),
                            left.as_secs() / 86_400,
                            config.name
                        ),
                    );
                }
                Some(left) => message.push_str(&format!(
                    ", valid for {} more days",
                    left.as_secs() / 86_400
                )),
                None => {}
            }
            report.ok("pki", message);
        }
        Err(e) => report.error("pki", e.to_string()),
    }
}

/// Time left before the certificate in `path` expires (`None` if it cannot tell).
fn expires_in(path: &Path) -> Option<Duration> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(not_after.saturating_sub(now)))
}

/// Whether this user can create files in `dir`, found by creating (and removing) one.
fn writable(dir: &Path) -> io::Result<()> {
    tempfile::Builder::new()
        .prefix(".vigil-check-")
        .tempfile_in(dir)
        .map(drop)
}

/// The closest existing ancestor of `path` (where a missing directory would be made).
fn existing_ancestor(path: &Path) -> Option<PathBuf> {
    let mut p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    loop {
        if p.exists() {
            return Some(p);
        }
        if !p.pop() {
            return None;
        }
    }
}

fn check_data_dir(dir: &Path, report: &mut Report) {
    let field = "data_dir";
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            report.error(
                field,
                format!(
                    "{} is not a directory. Fix: point data_dir at a directory",
                    dir.display()
                ),
            );
            return;
        }
        Ok(_) => match writable(dir) {
            Ok(()) => report.ok(field, format!("{} is writable", dir.display())),
            Err(e) => report.error(
                field,
                format!(
                    "cannot write in {}: {e}. Fix: give this user write access (the systemd unit's StateDirectory= does), or choose another data_dir",
                    dir.display()
                ),
            ),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match existing_ancestor(dir).map(|a| (writable(&a), a)) {
                Some((Ok(()), a)) => report.ok(
                    field,
                    format!(
                        "{} does not exist yet; the node creates it (mode 0700) in {}",
                        dir.display(),
                        a.display()
                    ),
                ),
                Some((Err(e), a)) => report.error(
                    field,
                    format!(
                        "{} does not exist and cannot be created in {}: {e}. Fix: create it for this user, or choose another data_dir",
                        dir.display(),
                        a.display()
                    ),
                ),
                None => report.error(field, format!("{}: no such directory", dir.display())),
            }
            return;
        }
        Err(e) => {
            report.error(field, format!("{}: {e}", dir.display()));
            return;
        }
    }
    // Another node holds the lock: a second one would refuse to start. Checked with a
    // read-only descriptor, so the running node's lock file is left as it is.
    let lock = dir.join("lock");
    if let Ok(file) = std::fs::File::open(&lock) {
        use nix::fcntl::{Flock, FlockArg};
        if let Err((mut file, _)) = Flock::lock(file, FlockArg::LockSharedNonblock) {
            let mut pid = String::new();
            let _ = io::Read::read_to_string(&mut file, &mut pid);
            report.note(
                field,
                format!(
                    "in use by a running vigil node (pid {}); a second node on it would be refused",
                    pid.trim()
                ),
            );
        }
    }
}

fn check_socket(socket: &Path, mode: u32, report: &mut Report) {
    let field = "socket";
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        report.error(
            field,
            format!(
                "{} is {len} bytes long; a Unix socket path may have at most {MAX_SOCKET_PATH}. Fix: choose a shorter path, e.g. /run/vigil/vigil.sock",
                socket.display()
            ),
        );
        return;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if !meta.file_type().is_socket() => {
            report.error(
                field,
                format!(
                    "{} exists and is not a socket. Fix: remove it or choose another socket path",
                    socket.display()
                ),
            );
            return;
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                report.note(
                    field,
                    format!(
                        "a node is serving {} now; a second node on it would be refused",
                        socket.display()
                    ),
                );
            } else {
                report.ok(
                    field,
                    format!(
                        "{} is a leftover socket nobody serves; the node replaces it",
                        socket.display()
                    ),
                );
            }
            return;
        }
        Err(_) => {}
    }
    let parent = match socket.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = if parent.exists() {
        Some(parent.clone())
    } else {
        existing_ancestor(&parent)
    };
    match dir.map(|d| (writable(&d), d)) {
        Some((Ok(()), d)) if d == parent => report.ok(
            field,
            format!(
                "{} can be created (mode {})",
                socket.display(),
                mode_text(mode)
            ),
        ),
        Some((Ok(()), _)) => report.ok(
            field,
            format!(
                "{} can be created; the node creates {} first",
                socket.display(),
                parent.display()
            ),
        ),
        Some((Err(e), d)) => report.error(
            field,
            format!(
                "cannot create {} (no write access to {}: {e}). Fix: create the directory for this user (the systemd unit's RuntimeDirectory= does), or choose another socket path",
                socket.display(),
                d.display()
            ),
        ),
        None => report.error(field, format!("{}: no such directory", parent.display())),
    }
    // Group access matters to agents: report the mode the directory has.
    if let Ok(meta) = std::fs::metadata(&parent) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o010 == 0 && mode & 0o001 == 0 {
            report.note(
                field,
                format!(
                    "{} has mode {mode:04o}: only its owner can reach the socket inside. Fix: give the group access (e.g. 0750) if agents run as other users of that group",
                    parent.display()
                ),
            );
        }
    }
}

/// Who may use the socket, as the settings say, and whether the node can give the
/// socket to its group.
fn check_access(access: &ApiAccess, report: &mut Report) {
    let mode = access.socket_mode;
    let who = match (mode & 0o200 != 0, mode & 0o020 != 0) {
        (true, true) => "its owner and its group may connect",
        (true, false) => "only its owner (the node's user) may connect",
        (false, true) => "only its group may connect",
        (false, false) => "nobody but root may connect",
    };
    report.ok("socket_mode", format!("{}: {who}", mode_text(mode)));
    if mode & 0o200 == 0 {
        report.note(
            "socket_mode",
            format!(
                "{} gives the node's own user no write permission: `vigil` commands run as that user cannot connect (root can). Fix: add owner write, e.g. 0660",
                mode_text(mode)
            ),
        );
    }
    if let Some(group) = &access.socket_group {
        let gid = nix::unistd::Gid::from_raw(group.gid);
        let name = match nix::unistd::Group::from_gid(gid) {
            Ok(Some(g)) => format!("group {} (gid {})", g.name, group.gid),
            _ => format!("gid {} (no group of that number on this host)", group.gid),
        };
        let is_root = nix::unistd::geteuid().is_root();
        let member = nix::unistd::getegid() == gid
            || nix::unistd::getgroups().is_ok_and(|groups| groups.contains(&gid));
        if is_root || member {
            report.ok("socket_group", format!("the socket is given to {name}"));
        } else {
            report.error(
                "socket_group",
                format!(
                    "this user (uid {}) is not root and not in {name}, so it cannot give the socket to it. Fix: add the node's user to the group (usermod -aG), run the check as the service's user, or leave socket_group unset",
                    nix::unistd::geteuid()
                ),
            );
        }
        if mode & 0o020 == 0 {
            report.note(
                "socket_group",
                format!(
                    "socket_mode {} gives the group no write permission, so its members cannot connect. Fix: use 0660",
                    mode_text(mode)
                ),
            );
        }
    }
    if access.allow_uids.is_empty() {
        report.note(
            "allow_uids",
            "empty: every user the socket's mode and group let connect may use the whole API (register, isolate, read any agent's snapshots). Recommended: list the agents' users, e.g. allow_uids = [\"agents\"] (the node's own uid is always allowed)",
        );
    } else {
        let list: Vec<String> = access
            .allow_uids
            .iter()
            .map(|u| {
                if u.given == u.uid.to_string() {
                    format!("uid {}", u.uid)
                } else {
                    format!("{} (uid {})", u.given, u.uid)
                }
            })
            .collect();
        report.ok(
            "allow_uids",
            format!(
                "only {} and the node's own uid may use the API (checked at each connection)",
                list.join(", ")
            ),
        );
    }
    report.ok(
        "api_limits",
        format!(
            "at most {} connections ({} per uid), {} event streams per uid; request heads within {}, bodies and stalled answers within {}",
            access.max_connections,
            access.max_connections_per_uid,
            access.max_streams_per_uid,
            duration_text(access.header_timeout),
            duration_text(access.io_timeout)
        ),
    );
    if access.max_connections_per_uid > access.max_connections {
        report.note(
            "api_max_connections_per_uid",
            format!(
                "{} is above api_max_connections ({}): one user can take every connection. Fix: keep it below",
                access.max_connections_per_uid, access.max_connections
            ),
        );
    }
}

fn check_addresses(config: &AgentConfig, report: &mut Report) {
    match UdpSocket::bind(config.bind) {
        Ok(_) => report.ok("bind", format!("UDP {} can be bound", config.bind)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => report.note(
            "bind",
            format!(
                "UDP {} is in use (by the running node?); the node could not start next to it",
                config.bind
            ),
        ),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => report.error(
            "bind",
            format!(
                "{} is not an address of this host ({e}). Fix: bind one of this host's addresses, or 0.0.0.0 with advertise set",
                config.bind
            ),
        ),
        Err(e) => report.error(
            "bind",
            format!(
                "cannot bind UDP {}: {e}. Fix: choose another port, or one above 1023 for a non-root user",
                config.bind
            ),
        ),
    }
    if let Some(addr) = config.metrics_bind {
        // The node refuses to start when this listener cannot be bound.
        match std::net::TcpListener::bind(addr) {
            Ok(_) => report.ok("metrics_bind", format!("TCP {addr} can be bound")),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => report.note(
                "metrics_bind",
                format!(
                    "TCP {addr} is in use (by the running node?); the node could not start next to it"
                ),
            ),
            Err(e) => report.error(
                "metrics_bind",
                format!(
                    "cannot listen on TCP {addr}: {e}. Fix: one of this host's addresses and a free port, or leave it unset (/metrics is always on the socket)"
                ),
            ),
        }
    }
    if let Some(a) = config.advertise {
        report.ok("advertise", format!("peers dial {a}"));
    }
    if config.seeds.is_empty() {
        report.note(
            "seeds",
            "none: this node founds a cluster (others join through it)",
        );
    }
    for seed in &config.seeds {
        // Resolved at every join attempt, so a name that does not resolve now may
        // later; reported, not refused.
        match seed.to_socket_addrs() {
            Ok(addrs) => {
                let addrs: Vec<String> = addrs.map(|a| a.to_string()).collect();
                report.ok("seeds", format!("{seed} resolves to {}", addrs.join(", ")));
            }
            Err(e) => report.note(
                "seeds",
                format!(
                    "{seed} does not resolve now ({e}); the node retries it at every join attempt"
                ),
            ),
        }
    }
}

fn check_agent_command(command: &str, report: &mut Report) {
    let field = "agent_command";
    let template = match LaunchTemplate::parse(command) {
        Ok(t) => t,
        Err(e) => {
            report.error(field, e.to_string());
            return;
        }
    };
    let Some(program) = template.program() else {
        return;
    };
    let found = if program.contains('/') {
        is_executable(Path::new(program)).then(|| PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| is_executable(p))
        })
    };
    match found {
        Some(path) => report.ok(field, format!("runs {}", path.display())),
        None => report.error(
            field,
            format!(
                "{program} is not an executable file{}. Fix: give the program's full path, or install it",
                if program.contains('/') { "" } else { " on PATH" }
            ),
        ),
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
