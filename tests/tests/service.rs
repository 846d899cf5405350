#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Running vigil as a service: systemd notifications, runtime settings, `vigil config
//! check`, completions, `--version`; real processes and real files.

use std::path::Path;
use std::process::{Command, Output};

use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use vigil::api::ErrorJson;
use vigil::harness::Placement;
use vigil::runtime::SettingsJson;
use vigil_tests::{CONVERGE, DETECT, cluster, vigil_bin};

fn vigil(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(vigil_bin!());
    cmd.args(args);
    for var in [
        "VIGIL_CONFIG",
        "VIGIL_SOCKET",
        "VIGIL_NAME",
        "VIGIL_ZONE",
        "VIGIL_CAPACITY",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Datagrams a node sends to its NOTIFY_SOCKET, as systemd would receive them.
struct NotifySocket {
    path: std::path::PathBuf,
    rx: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send(text).await.is_err() {
                    break;
                }
            }
        });
        Self {
            path,
            rx,
            _dir: dir,
        }
    }

    /// The next datagram (bounded wait: a broken build must not hang the suite).
    async fn next(&mut self) -> String {
        tokio::time::timeout(CONVERGE, self.rx.recv())
            .await
            .expect("a notification")
            .expect("the notify socket is open")
    }
}

fn lines(msg: &str) -> Vec<&str> {
    msg.lines().collect()
}

/// `Type=notify`: READY=1 only once the node joined its seed (watchdog pings before
/// that do not make it ready), WATCHDOG=1 keeps coming, STOPPING=1 on SIGTERM, and
/// the graceful stop exits 0 with the peers seeing the node leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_only_after_the_join_then_watchdog_pings_and_stopping() {
    let mut c = cluster!(&["n1", "n2"]);
    // The seed's port, reserved now; nothing listens on it until n1 starts.
    let seed: std::net::SocketAddr = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut notify = NotifySocket::bind();
    let env_before = c.env.clone();
    c.env.push((
        "NOTIFY_SOCKET".into(),
        notify.path.to_str().unwrap().to_string(),
    ));
    // Pings every 100 ms.
    c.env.push(("WATCHDOG_USEC".into(), "200000".into()));
    c.start("n2", "az2", &[seed]).await.unwrap();
    c.env = env_before;

    // The seed is down: the owner loop runs (it pings) but the node is not ready.
    let mut pings = 0;
    let mut joining_status = false;
    while pings < 5 {
        let msg = notify.next().await;
        assert!(
            !lines(&msg).contains(&"READY=1"),
            "ready before joining: {msg:?}"
        );
        pings += usize::from(lines(&msg).contains(&"WATCHDOG=1"));
        joining_status |= msg.contains("STATUS=joining");
    }
    assert!(joining_status, "a STATUS line says the node is joining");

    c.start_placed(
        "n1",
        "az1",
        &[],
        &[],
        &Placement {
            wrapper: Vec::new(),
            bind: seed.to_string(),
        },
    )
    .await
    .unwrap();
    let ready = loop {
        let msg = notify.next().await;
        if lines(&msg).contains(&"READY=1") {
            break msg;
        }
    };
    assert!(ready.contains("STATUS=member of the cluster"), "{ready:?}");
    let health = vigil::client::health(&c.node("n2").unwrap().socket)
        .await
        .unwrap();
    assert_eq!(health.status, "ok", "READY=1 means joined: {health:?}");

    let mut pings_after = 0;
    while pings_after < 3 {
        let msg = notify.next().await;
        assert!(!lines(&msg).contains(&"READY=1"), "READY=1 is sent once");
        pings_after += usize::from(lines(&msg).contains(&"WATCHDOG=1"));
    }

    assert_eq!(c.stop("n2").await.unwrap(), Some(0), "SIGTERM exits 0");
    let stopping = loop {
        let msg = notify.next().await;
        if lines(&msg).contains(&"STOPPING=1") {
            break msg;
        }
    };
    assert!(stopping.contains("STATUS=leaving"), "{stopping:?}");
    let left = c
        .wait_event("n1", DETECT, |e| {
            e.member.as_deref() == Some("n2")
                && matches!(e.kind.as_str(), "member_left" | "member_down")
        })
        .await
        .unwrap();
    assert_eq!(left.kind, "member_left", "{left:?}");
    c.stop_all().await;
}

async fn put_config(socket: &Path, body: &str) -> (u16, String) {
    let reply = vigil::client::call(
        socket,
        hyper::Method::PUT,
        "/v1/config",
        bytes::Bytes::from(body.to_string()),
    )
    .await
    .unwrap();
    (
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

fn refusal((status, body): (u16, String)) -> ErrorJson {
    assert_eq!(status, 400, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn log_since(path: &Path, offset: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.get(offset..).unwrap_or_default().to_string()
}

/// Live settings change at once, are refused by name when bad or not live, survive a
/// restart (runtime.toml), and `null` goes back to the configured value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_settings_apply_at_once_and_survive_a_restart() {
    let mut c = cluster!(&["n1"]);
    c.start("n1", "az1", &[]).await.unwrap();
    let (socket, log, data) = {
        let n = c.node("n1").unwrap();
        (n.socket.clone(), n.log.clone(), n.data_dir.clone())
    };
    let before = vigil::client::config(&socket).await.unwrap();
    assert_eq!((before.capacity, before.standby), (1000, false));
    assert_eq!(before.isolated, Some(false));
    assert!(before.runtime.as_ref().unwrap().is_empty());

    let (status, body) = put_config(&socket, r#"{"log_filter": "warn"}"#).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put_config(&socket, r#"{"capacity": 7, "standby": true}"#).await;
    assert_eq!(status, 200, "{body}");
    let answer: SettingsJson = serde_json::from_str(&body).unwrap();
    let changed: Vec<&str> = answer.changed.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(changed, ["standby", "capacity"]);
    assert_eq!((answer.capacity, answer.standby), (7, true));

    // Refused, each naming its setting; nothing of a refused patch applies.
    let e = refusal(put_config(&socket, r#"{"capacity": 9, "keep": 2}"#).await);
    assert_eq!(
        (e.code.as_str(), e.field.as_deref()),
        ("restart_required", Some("keep"))
    );
    let e = refusal(put_config(&socket, r#"{"lease": "3s"}"#).await);
    assert!(e.error.contains("restart required"), "{}", e.error);
    let e = refusal(put_config(&socket, r#"{"capacity": "lots"}"#).await);
    assert_eq!(
        (e.code.as_str(), e.field.as_deref()),
        ("invalid_setting", Some("capacity"))
    );
    let e = refusal(put_config(&socket, r#"{"log_filter": "vigil=loud"}"#).await);
    assert_eq!(e.field.as_deref(), Some("log_filter"));
    let e = refusal(put_config(&socket, "[1]").await);
    assert_eq!(e.code, "bad_request");
    let (status, _) = put_config(
        &socket,
        &format!(r#"{{"log_filter": "{}"}}"#, "a".repeat(20_000)),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(vigil::client::config(&socket).await.unwrap().capacity, 7);

    // The filter is live: the capacity change was logged at info after the switch to
    // `warn` and is not in the log, while the refusal (a warning) after it is.
    let text = log_since(&log, 0);
    assert!(text.contains("refused a settings change"), "{text}");
    assert!(!text.contains("setting=\"capacity\""), "{text}");
    let saved = std::fs::read_to_string(data.join("runtime.toml")).unwrap();
    assert!(saved.contains("capacity = 7"), "{saved}");

    // After a restart the runtime settings still apply, the log filter included.
    assert_eq!(c.stop("n1").await.unwrap(), Some(0));
    let offset = std::fs::read_to_string(&log).unwrap().len();
    c.start("n1", "az1", &[]).await.unwrap();
    let after = vigil::client::config(&socket).await.unwrap();
    assert_eq!((after.capacity, after.standby), (7, true));
    assert_eq!(after.log_filter, "warn");
    assert_eq!(
        after.runtime.as_ref().unwrap().get("capacity"),
        Some(&serde_json::Value::from(7))
    );
    let e = refusal(put_config(&socket, r#"{"capacity": -1}"#).await);
    assert_eq!(e.field.as_deref(), Some("capacity"));
    let text = log_since(&log, offset);
    assert!(text.contains("refused a settings change"), "{text}");
    assert!(
        !text.contains("vigil node started"),
        "info hidden at start: {text}"
    );

    // The CLI: `config set` with KEY=VALUE (null drops the runtime value).
    let s = socket.to_str().unwrap();
    let out = vigil(
        &[
            "config",
            "set",
            "--socket",
            s,
            "capacity=null",
            "log_filter=info",
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("capacity: 7 -> 1000"),
        "{}",
        stdout(&out)
    );
    let out = vigil(&["config", "get", "--socket", s, "capacity"], &[]);
    assert_eq!(stdout(&out).trim(), "1000");
    let out = vigil(&["config", "set", "--socket", s, "lease=2s"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lease"),
        "{out:?}"
    );
    let saved = std::fs::read_to_string(data.join("runtime.toml")).unwrap();
    assert!(
        !saved.contains("capacity") && saved.contains("standby = true"),
        "{saved}"
    );
    c.stop_all().await;
}

/// `vigil config check` resolves like `vigil agent` (file, environment, flags, the
/// data directory's runtime.toml) and names every problem it finds on the host.
#[test]
fn config_check_shows_the_effective_settings_and_names_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = d.join("pki");
    let p = pki.to_str().unwrap();
    assert!(vigil(&["cert", "init", "--out", p], &[]).status.success());
    assert!(
        vigil(&["cert", "issue", "--ca", p, "--name", "n1"], &[])
            .status
            .success()
    );
    let data = d.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("runtime.toml"), "capacity = 11\n").unwrap();
    let file = d.join("vigil.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"n1\"\nzone = \"az1\"\nbind = \"127.0.0.1:0\"\npki = {p:?}\nsocket = {:?}\ndata_dir = {:?}\nstandby = false\n",
            d.join("vigil.sock").to_str().unwrap(),
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let out = vigil(
        &["config", "check", "--config", f, "--agent-restarts", "5"],
        &[("VIGIL_ZONE", "az9")],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("name = \"n1\""), "{text}");
    assert!(
        text.contains("zone = \"az9\""),
        "the environment wins over the file: {text}"
    );
    assert!(text.contains("agent_restarts = 5"), "flags win: {text}");
    assert!(text.contains("capacity = 11"), "runtime.toml wins: {text}");
    assert!(text.contains("ok    pki:"), "{text}");
    assert!(text.contains("the node can start"), "{text}");

    // Problems on the host, each named with its setting and a fix.
    let plain = d.join("not-a-dir");
    std::fs::write(&plain, b"x").unwrap();
    let long = format!("{}/{}.sock", d.display(), "s".repeat(120));
    let out = vigil(
        &[
            "config",
            "check",
            "--config",
            f,
            "--name",
            "n2",
            "--data-dir",
            plain.to_str().unwrap(),
            "--socket",
            &long,
        ],
        &[],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        "error pki:",
        "vigil cert issue",
        "error data_dir:",
        "error socket:",
        "3 problems",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }

    // Bad values: every one named with where it came from.
    let out = vigil(
        &[
            "config",
            "check",
            "--config",
            f,
            "--capacity",
            "many",
            "--profile",
            "fast",
        ],
        &[("VIGIL_BIND", "nowhere")],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    for source in ["--capacity", "--profile", "VIGIL_BIND", "3 settings to fix"] {
        assert!(text.contains(source), "{source}: {text}");
    }
    std::fs::write(data.join("runtime.toml"), "capacity = \"x\"\n").unwrap();
    let out = vigil(&["config", "check", "--config", f], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("error runtime:"), "{}", stdout(&out));
}

#[test]
fn completions_and_version() {
    for shell in ["bash", "zsh", "fish"] {
        let out = vigil(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}");
        let text = stdout(&out);
        assert!(text.contains("vigil") && text.contains("config"), "{shell}");
    }
    let out = vigil(&["completions", "tcsh"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = vigil(&["--version"], &[]);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("vigil {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("wire protocol 1"), "{text}");
}
