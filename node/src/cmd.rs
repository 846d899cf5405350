//! What each `vigil` subcommand does. `main.rs` only calls [`main_entry`], so other
//! packages (the black-box tests) can build the very same binary.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::api::{AgentJson, MemberJson};
use crate::cli::{
    AgentsArgs, CertCommand, Cli, Command, ConfigCommand, ConfigGetArgs, ConfigSetArgs, EventsArgs,
    ExampleAgentArgs, HealthArgs, HeartbeatArgs, IsolationArgs, MembersArgs, RegisterArgs,
    SnapshotCommand, SocketArgs, TrustCommand,
};
use crate::client::{self, StreamItem};
use crate::config::{self, AgentConfig};
use crate::example_agent::{self, ExampleAgentConfig};
use crate::pki::{self, CaSelector, RevokeTarget};
use crate::runtime::{LiveValues, RuntimeConfig};
use crate::{check, logging};
use crate::{demo, tls};

/// Exit status for bad settings or arguments.
const EXIT_USAGE: u8 = 2;

pub fn main_entry() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Agent(args) => {
            let Some(sub) = matches.subcommand_matches("agent") else {
                return ExitCode::from(EXIT_USAGE);
            };
            let config = match AgentConfig::resolve_all(args, sub) {
                Ok(c) => c,
                Err(errors) => {
                    for e in errors {
                        eprintln!("vigil: {e}");
                    }
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            // The runtime changes saved by a previous run win over flags and file.
            let base = LiveValues::from_config(&config, logging::startup_filter());
            let live = match RuntimeConfig::load(&config.data_dir, base) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("vigil: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let logs = logging::init(config.log_format, &live.effective().log_filter);
            if let Some(problem) = &logs.filter_problem {
                tracing::warn!("{problem}");
            }
            let runtime = match runtime(true) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let control = logs.control.clone();
            let result = runtime.block_on(crate::node::run_agent(config, live, control));
            logs.shutdown();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("vigil: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(ConfigCommand::Check(args)) => {
            let Some(sub) = matches
                .subcommand_matches("config")
                .and_then(|m| m.subcommand_matches("check"))
            else {
                return ExitCode::from(EXIT_USAGE);
            };
            let mut out = std::io::stdout().lock();
            if check::run(args, sub, &mut out) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Config(ConfigCommand::Get(args)) => run_client(config_get(args)),
        Command::Config(ConfigCommand::Set(args)) => run_client(config_set(args)),
        Command::Completions(args) => {
            let mut command = Cli::command();
            clap_complete::generate(args.shell, &mut command, "vigil", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Members(args) => run_client(members(args)),
        Command::Events(args) => run_client(events(args)),
        Command::Health(args) => run_client(health(args)),
        Command::Register(args) => run_client(register(args)),
        Command::Agents(args) => run_client(agents(args)),
        Command::Snapshot(cmd) => run_client(snapshot(cmd)),
        Command::Heartbeat(args) => run_client(heartbeat(args)),
        Command::Isolate(args) => run_client(isolation(args, true)),
        Command::Recover(args) => run_client(isolation(args, false)),
        Command::ExampleAgent(args) => run_client(run_example_agent(args)),
        Command::Cert(CertCommand::Reload { socket, json }) => {
            run_client(cert_reload(socket, json))
        }
        Command::Cert(cert) => match cert_command(cert) {
            Ok(()) => ExitCode::SUCCESS,
            Err(f) => {
                eprintln!("vigil: {}", f.message);
                ExitCode::from(f.code)
            }
        },
        Command::Demo(args) => {
            let runtime = match runtime(false) {
                Ok(r) => r,
                Err(code) => return code,
            };
            match runtime.block_on(demo::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vigil demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A client command's failure, already worded for the user.
struct Failure {
    message: String,
    code: u8,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    }
}

/// A Tokio runtime: two worker threads for the daemon, the current thread for the
/// short-lived commands.
fn runtime(daemon: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if daemon {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("vigil: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

fn run_client(fut: impl std::future::Future<Output = Result<(), Failure>>) -> ExitCode {
    let runtime = match runtime(false) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("vigil: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

async fn members(args: MembersArgs) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let members = client::members(&socket).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &members)?;
        writeln!(out)?;
        return Ok(());
    }
    let width =
        |field: fn(&MemberJson) -> usize| members.iter().map(field).max().unwrap_or(0).max(4);
    let name_w = width(|m| m.name.len() + 1);
    let zone_w = width(|m| m.zone.len());
    let addr_w = width(|m| m.addr.len());
    writeln!(
        out,
        "{:<name_w$}  {:<zone_w$}  {:<addr_w$}  {:<7}  {:>14}  SINCE",
        "NAME", "ZONE", "ADDR", "STATE", "GENERATION"
    )?;
    for m in &members {
        let state = if m.left { "left" } else { m.state.as_str() };
        let name = if m.local {
            format!("{}*", m.name)
        } else {
            m.name.clone()
        };
        writeln!(
            out,
            "{:<name_w$}  {:<zone_w$}  {:<addr_w$}  {:<7}  {:>14}  {}",
            name, m.zone, m.addr, state, m.generation, m.state_since
        )?;
    }
    Ok(())
}

async fn register(args: RegisterArgs) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let agent =
        client::register_with_priority(&socket, &args.id, &args.meta, args.priority).await?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &agent)?;
    writeln!(out)?;
    Ok(())
}

async fn heartbeat(args: HeartbeatArgs) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let beat = client::heartbeat(&socket, &args.id).await?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &beat)?;
    writeln!(out)?;
    Ok(())
}

/// `vigil isolate` (`isolate` true) and `vigil recover`, of an agent or of this node.
async fn isolation(args: IsolationArgs, isolate: bool) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let mut out = std::io::stdout().lock();
    match &args.id {
        Some(id) => {
            let agent = if isolate {
                client::isolate_agent(&socket, id).await?
            } else {
                client::recover_agent(&socket, id).await?
            };
            if args.json {
                serde_json::to_writer_pretty(&mut out, &agent)?;
                writeln!(out)?;
            } else {
                write_agents(&mut out, std::slice::from_ref(&agent))?;
            }
        }
        None => {
            let node = if isolate {
                client::isolate_node(&socket).await?
            } else {
                client::recover_node(&socket).await?
            };
            if args.json {
                serde_json::to_writer_pretty(&mut out, &node)?;
                writeln!(out)?;
            } else if node.isolated {
                writeln!(
                    out,
                    "node {} is isolated: its agents get no restarts and it adopts none until `vigil recover`",
                    node.name
                )?;
            } else {
                writeln!(out, "node {} is not isolated", node.name)?;
            }
        }
    }
    Ok(())
}

/// Exit status of the example agent when it gave up or failed (2 is usage or "owned
/// elsewhere", as [`example_agent::ExampleAgentError::exit_code`] says).
async fn run_example_agent(args: ExampleAgentArgs) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let config = ExampleAgentConfig {
        socket,
        id: args.id,
        snapshot: args.snapshot.map(std::path::PathBuf::from),
        snapshot_every: std::time::Duration::from_millis(args.snapshot_ms),
        heartbeat_every: std::time::Duration::from_millis(args.heartbeat_ms),
        meta: args.meta,
        priority: args.priority,
        give_up_after: ExampleAgentConfig::DEFAULT_GIVE_UP,
    };
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let mut out = std::io::stdout();
    match example_agent::run(&config, shutdown, &mut out).await {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure {
            message: format!("example-agent: {e}"),
            code: e.exit_code(),
        }),
    }
}

async fn agents(args: AgentsArgs) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let agents = client::agents(&socket).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &agents)?;
        writeln!(out)?;
        return Ok(());
    }
    write_agents(&mut out, &agents)?;
    Ok(())
}

/// The agents table of `vigil agents` (also one agent's answer to isolate/recover).
/// `*` marks the agents owned by this node.
fn write_agents(out: &mut impl Write, agents: &[AgentJson]) -> std::io::Result<()> {
    let id_w = agents
        .iter()
        .map(|a| a.id.len() + 1)
        .max()
        .unwrap_or(0)
        .max(5);
    let owner_w = agents
        .iter()
        .map(|a| a.owner.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let state_w = agents
        .iter()
        .map(|a| a.state.len())
        .max()
        .unwrap_or(0)
        .max(5);
    writeln!(
        out,
        "{:<id_w$}  {:<owner_w$}  {:>5}  {:>8}  {:<state_w$}  HOLDERS",
        "AGENT", "OWNER", "EPOCH", "SEQ", "STATE"
    )?;
    for a in agents {
        let id = if a.owned_here {
            format!("{}*", a.id)
        } else {
            a.id.clone()
        };
        let holders: Vec<String> = a
            .holders
            .iter()
            .map(|h| format!("{} ({})", h.name, h.zone))
            .collect();
        let degraded = a
            .degraded
            .as_ref()
            .map_or(String::new(), |d| format!("  [degraded: {d}]"));
        writeln!(
            out,
            "{:<id_w$}  {:<owner_w$}  {:>5}  {:>8}  {:<state_w$}  {}{degraded}",
            id,
            a.owner,
            a.epoch,
            a.latest_seq,
            // A node that predates agent states answers without one.
            if a.state.is_empty() {
                "-"
            } else {
                a.state.as_str()
            },
            holders.join(", ")
        )?;
    }
    Ok(())
}

/// Largest snapshot the CLI reads from a file or stdin (the node enforces its own
/// limit, 16 MiB by default).
const MAX_CLI_SNAPSHOT: u64 = 1 << 30;

async fn snapshot(cmd: SnapshotCommand) -> Result<(), Failure> {
    match cmd {
        SnapshotCommand::Put {
            socket,
            id,
            file,
            ack,
        } => {
            let socket = config::resolve_socket(&socket)?;
            let mut body = Vec::new();
            match &file {
                Some(path) => {
                    let f = std::fs::File::open(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(f, MAX_CLI_SNAPSHOT + 1),
                        &mut body,
                    )?;
                }
                None => {
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(std::io::stdin().lock(), MAX_CLI_SNAPSHOT + 1),
                        &mut body,
                    )?;
                }
            }
            if body.len() as u64 > MAX_CLI_SNAPSHOT {
                return Err(format!("snapshot larger than {MAX_CLI_SNAPSHOT} bytes").into());
            }
            let reply =
                client::put_snapshot(&socket, &id, bytes::Bytes::from(body), ack.as_deref())
                    .await?;
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &reply)?;
            writeln!(out)?;
        }
        SnapshotCommand::Get {
            socket,
            id,
            seq,
            out,
        } => {
            let socket = config::resolve_socket(&socket)?;
            let snap = client::get_snapshot(&socket, &id, seq).await?;
            match &out {
                Some(path) => std::fs::write(path, &snap.body)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
                None => std::io::stdout().lock().write_all(&snap.body)?,
            }
            eprintln!(
                "agent {id}: epoch {} seq {} ({} bytes)",
                snap.epoch,
                snap.seq,
                snap.body.len()
            );
        }
    }
    Ok(())
}

async fn events(args: EventsArgs) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let mut stream = client::events(&socket, args.since).await?;
    let mut out = std::io::stdout().lock();
    while let Some(item) = stream.next().await? {
        match item {
            StreamItem::Event(record) => {
                serde_json::to_writer(&mut out, &record)?;
                writeln!(out)?;
                out.flush()?;
            }
            StreamItem::Error(e) => {
                return Err(Failure {
                    message: format!("{} ({})", e.error, e.code),
                    code: 1,
                });
            }
        }
    }
    Ok(())
}

async fn health(args: HealthArgs) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let h = client::health(&socket).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&h)?);
    } else {
        println!(
            "{}: {} ({}) at {}, generation {}, {} live of {} known members, profile {}, up {} s",
            h.status,
            h.name,
            h.zone,
            h.addr,
            h.generation,
            h.live_members,
            h.known_members,
            h.profile,
            h.uptime_secs
        );
    }
    if h.status == "ok" || h.status == "alone" {
        Ok(())
    } else {
        Err(Failure {
            message: String::new(),
            code: 1,
        })
    }
}

fn cert_command(cert: CertCommand) -> Result<(), Failure> {
    match cert {
        CertCommand::Init { out, force } => {
            let files = tls::init_ca(&out, force)?;
            println!(
                "wrote {} and {} (keep the key safe: it admits nodes to the cluster)",
                files.cert.display(),
                files.key.display()
            );
        }
        CertCommand::Issue {
            ca,
            name,
            out,
            days,
            force,
        } => {
            let name = node_name(&name)?;
            let out = out.unwrap_or_else(|| ca.clone());
            let files = tls::issue_node_cert(&ca, &name, &out, days, force)?;
            println!("wrote {} and {}", files.cert.display(), files.key.display());
        }
        CertCommand::Trust(trust) => trust_command(trust)?,
        CertCommand::Revoke {
            ca,
            name,
            serial,
            cert,
            crl_days,
        } => {
            let target = match (name, serial, cert) {
                (Some(name), _, _) => RevokeTarget::Name(node_name(&name)?),
                (None, Some(serial), _) => RevokeTarget::Serial(serial),
                (None, None, Some(cert)) => RevokeTarget::Cert(cert),
                // clap requires one of the three.
                (None, None, None) => return Err(usage("give --name, --serial or --cert")),
            };
            let done = pki::revoke(&ca, &target, crl_days)?;
            for serial in &done.revoked {
                println!("revoked serial {serial}");
            }
            for serial in &done.already_revoked {
                println!("serial {serial} was revoked already");
            }
            println!(
                "wrote {} (revocation list number {}, {} revoked certificate(s))",
                done.crl.display(),
                done.number,
                done.total
            );
            println!(
                "next, on every node: `vigil cert trust add --pki PKI_DIR {}`, then `vigil cert reload`",
                done.crl.display()
            );
        }
        CertCommand::Reload { .. } => return Err(usage("`vigil cert reload` talks to a node")),
    }
    Ok(())
}

fn usage(message: &str) -> Failure {
    Failure {
        message: message.to_owned(),
        code: EXIT_USAGE,
    }
}

fn node_name(name: &str) -> Result<vigil_protocol::NodeName, Failure> {
    vigil_protocol::NodeName::new(name).map_err(|e| Failure {
        message: format!(
            "invalid --name {name:?}: the name {e}. Fix: use a DNS label such as \"web-3\""
        ),
        code: EXIT_USAGE,
    })
}

/// Up to 16 hex digits of a fingerprint: enough to tell CAs apart, and to pass to
/// `trust remove --fingerprint`.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

fn trust_command(trust: TrustCommand) -> Result<(), Failure> {
    match trust {
        TrustCommand::List { pki, json } => {
            let listing = pki::trust_list(&pki)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
                return Ok(());
            }
            println!("trusted CAs ({}):", pki.join(tls::CA_CERT_FILE).display());
            for ca in &listing.cas {
                println!(
                    "  {}  {}  expires {}{}{}",
                    short(&ca.summary.fingerprint),
                    ca.summary.subject,
                    ca.summary.not_after,
                    if ca.issues_here {
                        "  [ca.key here]"
                    } else {
                        ""
                    },
                    if ca.expired { "  [EXPIRED]" } else { "" },
                );
            }
            println!("revocation lists ({}):", pki.join(tls::CRL_FILE).display());
            if listing.crls.is_empty() {
                println!("  none");
            }
            for crl in &listing.crls {
                println!(
                    "  {}  number {}, updated {}, {} revoked",
                    crl.issuer,
                    crl.number.as_deref().unwrap_or("-"),
                    crl.this_update,
                    crl.revoked.len()
                );
            }
            println!("node certificates:");
            for node in &listing.nodes {
                println!(
                    "  {}  serial {}  expires {}  {}{}",
                    node.file,
                    node.summary.serial,
                    node.summary.not_after,
                    node.signed_by.as_deref().map_or_else(
                        || "signed by no trusted CA".to_owned(),
                        |fp| format!("signed by {}", short(fp))
                    ),
                    if node.revoked { "  [REVOKED]" } else { "" },
                );
            }
        }
        TrustCommand::Add { pki, files } => {
            for file in files {
                let added = pki::trust_add(&pki, &file)?;
                for ca in &added.added {
                    println!("now trusting {} ({})", ca.subject, short(&ca.fingerprint));
                }
                for ca in &added.already_trusted {
                    println!(
                        "already trusted: {} ({})",
                        ca.subject,
                        short(&ca.fingerprint)
                    );
                }
                for crl in &added.crls {
                    println!(
                        "installed the revocation list of {} (number {}, {} revoked{})",
                        crl.crl.issuer,
                        crl.crl.number.as_deref().unwrap_or("-"),
                        crl.crl.revoked.len(),
                        crl.replaced
                            .as_deref()
                            .map_or_else(String::new, |n| format!("; replaced number {n}"))
                    );
                }
            }
            println!("run `vigil cert reload` for the node to apply it");
        }
        TrustCommand::Remove {
            pki,
            ca,
            fingerprint,
            force,
        } => {
            let which = match (ca, fingerprint) {
                (Some(file), _) => CaSelector::File(file),
                (None, Some(fp)) => CaSelector::Fingerprint(fp),
                (None, None) => return Err(usage("give --ca or --fingerprint")),
            };
            let removed = pki::trust_remove(&pki, &which, force)?;
            for ca in &removed.removed {
                println!(
                    "no longer trusting {} ({})",
                    ca.subject,
                    short(&ca.fingerprint)
                );
            }
            for issuer in &removed.dropped_crls {
                println!("dropped the revocation list of {issuer}");
            }
            println!(
                "{} CA(s) left; run `vigil cert reload` for the node to apply it",
                removed.remaining
            );
        }
    }
    Ok(())
}

/// `vigil cert reload`: `POST /v1/tls/reload`.
async fn cert_reload(socket: SocketArgs, json: bool) -> Result<(), Failure> {
    let socket = config::resolve_socket(&socket)?;
    let r = client::tls_reload(&socket).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let c = &r.loaded.certificate;
    println!(
        "reloaded {}: certificate serial {} from {}, expires {}",
        r.loaded.pki, c.serial, c.issuer, c.not_after
    );
    println!(
        "trusting {} CA(s); {} revocation list(s) with {} revoked certificate(s)",
        r.loaded.trusted.len(),
        r.loaded.crls.len(),
        r.loaded.crls.iter().map(|l| l.revoked.len()).sum::<usize>()
    );
    for issuer in &r.loaded.ignored_crls {
        println!("ignored the revocation list of {issuer}: not a trusted CA");
    }
    println!(
        "connections: {} kept, {} closed, {} renewed",
        r.connections.kept,
        r.connections.closed.len(),
        r.connections.renewed
    );
    for closed in &r.connections.closed {
        println!(
            "  closed {} ({}{})",
            closed.peer,
            closed.reason,
            if closed.replaced {
                "; a newer connection verifies"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `vigil config get [KEY]`: the running node's settings as JSON, or one value.
async fn config_get(args: ConfigGetArgs) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let settings = client::config(&socket).await?;
    let mut out = std::io::stdout().lock();
    match &args.key {
        None => serde_json::to_writer_pretty(&mut out, &settings)?,
        Some(key) => {
            let value = serde_json::to_value(&settings)?;
            let Some(v) = value.get(key) else {
                return Err(Failure {
                    message: format!("no setting named {key:?}; `vigil config get` lists them all"),
                    code: EXIT_USAGE,
                });
            };
            match v {
                // Plain text for scripts: `vigil config get capacity`.
                serde_json::Value::String(text) => write!(out, "{text}")?,
                other => serde_json::to_writer(&mut out, other)?,
            }
        }
    }
    writeln!(out)?;
    Ok(())
}

/// `vigil config set KEY=VALUE...`: one `PUT /v1/config` with all pairs.
async fn config_set(args: ConfigSetArgs) -> Result<(), Failure> {
    let socket = config::resolve_socket(&args.socket)?;
    let mut patch = serde_json::Map::new();
    for pair in &args.settings {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Failure {
                message: format!("{pair:?} is not KEY=VALUE, e.g. capacity=50"),
                code: EXIT_USAGE,
            });
        };
        // `50`, `true` and `null` as JSON; anything else (`debug`, `2s`) as text.
        let value = serde_json::from_str(value.trim())
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        patch.insert(key.trim().to_string(), value);
    }
    let settings = client::set_config(&socket, &serde_json::Value::Object(patch)).await?;
    let mut out = std::io::stdout().lock();
    if settings.changed.is_empty() {
        writeln!(out, "nothing changed")?;
    }
    for c in &settings.changed {
        writeln!(out, "{}: {} -> {}", c.field, c.old, c.new)?;
    }
    Ok(())
}
