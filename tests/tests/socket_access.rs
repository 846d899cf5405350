#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Who may talk to a node's socket API, and what one client may hold, on real
//! processes: the socket's mode and group, the uid allow list (SO_PEERCRED), the
//! connection caps (all clients, per uid) of the socket and of the `--metrics-bind`
//! listener, the event-stream cap, and the header and body timeouts. Each refusal
//! must reach the client as a JSON error (or a closed connection) and move
//! `vigil_api_refused_total{listener, reason}` before the client sees it.
//!
//! The allow-list test runs clients as other uids, so it needs root (CI runs as
//! root); elsewhere it is skipped with a message, unless `VIGIL_REQUIRE_ROOT=1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vigil::api::ErrorJson;
use vigil_tests::{CONVERGE, cluster, vigil_bin};

/// The uid the allow list admits, the one it does not, and the socket's group.
const ALLOWED_UID: u32 = 65533;
const OTHER_UID: u32 = 65534;
const SOCKET_GID: u32 = 54321;

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("VIGIL_REQUIRE_ROOT").as_deref() != Ok("1"),
        "{test} needs root (VIGIL_REQUIRE_ROOT=1)"
    );
    eprintln!(
        "skipping {test}: it runs clients as other uids, which needs root (set VIGIL_REQUIRE_ROOT=1 to make this a failure)"
    );
    false
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Sends `request` on a new socket connection and reads until the node closes it:
/// (status, body). The read timeout only bounds a broken build.
fn unix_http(socket: &Path, request: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(CONVERGE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    split_response(&response)
}

fn tcp_http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(CONVERGE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    split_response(&response)
}

fn split_response(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

const HEALTH: &str = "GET /v1/health HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n";
const METRICS: &str = "GET /metrics HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n";

/// The value of one series in a Prometheus text page.
fn series(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{page}"))
}

fn refused(listener: &str, reason: &str) -> String {
    format!("vigil_api_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}}")
}

fn open_connections(listener: &str) -> String {
    format!("vigil_api_connections{{listener=\"{listener}\"}}")
}

/// Reads the socket's metrics page (the node's own uid is always allowed).
async fn socket_metrics(socket: &Path) -> String {
    let reply = vigil::client::get(socket, "/metrics").await.unwrap();
    String::from_utf8(reply.body.to_vec()).unwrap()
}

fn error_body(body: &str) -> ErrorJson {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error body ({e}): {body:?}"))
}

/// A copy of the vigil binary that other uids can run (the build directory may be
/// out of their reach).
fn binary_for_everyone(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = bin.join("vigil");
    std::fs::copy(vigil_bin!(), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `vigil health` as `uid`:`gid`: (exit ok, stdout, stderr, pid).
fn health_as(bin: &Path, socket: &Path, uid: u32, gid: u32) -> (bool, String, String, u32) {
    let child = Command::new(bin)
        .args(["health", "--socket"])
        .arg(socket)
        .env_remove("VIGIL_SOCKET")
        .env_remove("VIGIL_CONFIG")
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    )
}

/// The socket is created with the configured mode and group; a uid in `allow_uids`
/// is served, another uid that the mode and group let connect is refused with 403
/// `uid_not_allowed` naming its uid and the setting (counted, and logged with its
/// uid and pid), and a uid outside the group cannot even connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_uids_pass_and_the_socket_has_the_configured_mode_and_group() {
    if !root_or_skip("only_allowed_uids_pass_and_the_socket_has_the_configured_mode_and_group") {
        return;
    }
    let mut c = cluster!(&["n1"]);
    // Other uids must be able to reach the socket: search permission on the way.
    let root = c.root().to_path_buf();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::create_dir_all(root.join("n1")).unwrap();
    std::fs::set_permissions(root.join("n1"), std::fs::Permissions::from_mode(0o711)).unwrap();
    let bin = binary_for_everyone(&root);
    let args = strings(&[
        "--socket-mode",
        "0660",
        "--socket-group",
        &SOCKET_GID.to_string(),
        "--allow-uid",
        &ALLOWED_UID.to_string(),
    ]);
    let node = c.start_with("n1", "az1", &[], &args).await.unwrap();
    let (socket, log) = (node.socket.clone(), node.log.clone());

    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), SOCKET_GID);

    let (ok, stdout, stderr, _) = health_as(&bin, &socket, ALLOWED_UID, SOCKET_GID);
    assert!(ok, "the allowed uid is served: {stdout} {stderr}");
    assert!(stdout.contains("n1"), "{stdout}");

    let (ok, _, stderr, pid) = health_as(&bin, &socket, OTHER_UID, SOCKET_GID);
    assert!(!ok);
    assert!(
        stderr.contains("403")
            && stderr.contains("uid_not_allowed")
            && stderr.contains(&format!("uid {OTHER_UID}"))
            && stderr.contains("allow_uids"),
        "{stderr}"
    );

    // Not in the socket's group: the file mode refuses before the node sees anything.
    let (ok, _, stderr, _) = health_as(&bin, &socket, ALLOWED_UID, SOCKET_GID + 1);
    assert!(!ok);
    assert!(stderr.contains("Permission denied"), "{stderr}");

    let page = socket_metrics(&socket).await;
    assert_eq!(series(&page, &refused("socket", "uid_not_allowed")), 1.0);
    assert_eq!(
        series(&page, &refused("socket", "too_many_connections")),
        0.0
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(&format!("uid {OTHER_UID} (pid {pid})")) && log.contains("uid_not_allowed"),
        "{log}"
    );
    c.stop_all().await;
}

/// With `api_max_connections` 3, three silent connections hold every place: the
/// fourth gets 503 `too_many_connections` and the metric moves. With
/// `api_max_connections_per_uid` 2, the third connection of one uid gets 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_caps_refuse_the_extra_connection() {
    let mut c = cluster!(&["n1", "n2"]);
    let long = [
        "--api-header-timeout",
        "1h",
        "--metrics-bind",
        "127.0.0.1:0",
    ];
    let args = strings(&[&long[..], &["--api-max-connections", "3"]].concat());
    let node = c.start_with("n1", "az1", &[], &args).await.unwrap();
    let (socket, metrics) = (node.socket.clone(), node.metrics.unwrap());
    let held: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let (status, body) = unix_http(&socket, HEALTH);
    assert_eq!(status, 503, "{body}");
    let error = error_body(&body);
    assert_eq!(error.code, "too_many_connections");
    assert!(
        error.error.contains("api_max_connections"),
        "{}",
        error.error
    );
    // Read over the metrics listener: the socket is full.
    let (_, page) = tcp_http(metrics, METRICS);
    assert_eq!(
        series(&page, &refused("socket", "too_many_connections")),
        1.0
    );
    assert_eq!(series(&page, &open_connections("socket")), 3.0);
    drop(held);

    let args = strings(&[&long[..], &["--api-max-connections-per-uid", "2"]].concat());
    let node = c.start_with("n2", "az1", &[], &args).await.unwrap();
    let (socket, metrics) = (node.socket.clone(), node.metrics.unwrap());
    let _held: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let (status, body) = unix_http(&socket, HEALTH);
    assert_eq!(status, 429, "{body}");
    let error = error_body(&body);
    assert_eq!(error.code, "too_many_client_connections");
    assert!(
        error.error.contains("api_max_connections_per_uid") && error.error.contains("uid "),
        "{}",
        error.error
    );
    let (_, page) = tcp_http(metrics, METRICS);
    assert_eq!(
        series(&page, &refused("socket", "too_many_client_connections")),
        1.0
    );
    assert_eq!(
        series(&page, &refused("socket", "too_many_connections")),
        0.0
    );
    c.stop_all().await;
}

/// The `--metrics-bind` listener serves at most 16 connections: the 17th gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_caps_its_connections() {
    let mut c = cluster!(&["n1"]);
    let args = strings(&[
        "--api-header-timeout",
        "1h",
        "--metrics-bind",
        "127.0.0.1:0",
    ]);
    let node = c.start_with("n1", "az1", &[], &args).await.unwrap();
    let (socket, metrics) = (node.socket.clone(), node.metrics.unwrap());
    let cap = vigil::metrics::METRICS_MAX_CONNECTIONS;
    let _held: Vec<TcpStream> = (0..cap)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    let (status, body) = tcp_http(metrics, METRICS);
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_body(&body).code, "too_many_connections");
    let page = socket_metrics(&socket).await;
    assert_eq!(
        series(&page, &refused("metrics", "too_many_connections")),
        1.0
    );
    assert_eq!(series(&page, &open_connections("metrics")), cap as f64);
    c.stop_all().await;
}

/// A client that connects and says nothing, or begins a request head and stops, is
/// disconnected after `api_header_timeout`, on the socket and on the metrics
/// listener, and counted. A client that was answered and then stays idle is
/// disconnected too (the same timeout), but that is normal and not counted. Bytes
/// that are not HTTP get 400 and count as `bad_http`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_disconnected_after_the_header_timeout() {
    let mut c = cluster!(&["n1"]);
    let args = strings(&[
        "--api-header-timeout",
        "300ms",
        "--metrics-bind",
        "127.0.0.1:0",
    ]);
    let node = c.start_with("n1", "az1", &[], &args).await.unwrap();
    let (socket, metrics) = (node.socket.clone(), node.metrics.unwrap());

    // Each read returns when the node closes the connection.
    let mut silent = UnixStream::connect(&socket).unwrap();
    silent.set_read_timeout(Some(CONVERGE)).unwrap();
    let mut got = Vec::new();
    assert_eq!(silent.read_to_end(&mut got).unwrap(), 0);

    let mut half = UnixStream::connect(&socket).unwrap();
    half.set_read_timeout(Some(CONVERGE)).unwrap();
    half.write_all(b"GET /v1/health HTTP/1.1\r\nHo").unwrap();
    assert_eq!(half.read_to_end(&mut got).unwrap(), 0);

    let mut scraper = TcpStream::connect(metrics).unwrap();
    scraper.set_read_timeout(Some(CONVERGE)).unwrap();
    assert_eq!(scraper.read_to_end(&mut got).unwrap(), 0);

    // Answered, kept alive, then idle: closed without a count.
    let mut idle = UnixStream::connect(&socket).unwrap();
    idle.set_read_timeout(Some(CONVERGE)).unwrap();
    idle.write_all(b"GET /v1/members HTTP/1.1\r\nHost: vigil\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    idle.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // Not HTTP: hyper answers 400 and closes; counted apart.
    let (status, _) = unix_http(&socket, "HELLO THERE\r\n\r\n");
    assert_eq!(status, 400);

    let page = socket_metrics(&socket).await;
    assert_eq!(series(&page, &refused("socket", "bad_http")), 1.0);
    assert_eq!(series(&page, &refused("socket", "header_timeout")), 2.0);
    assert_eq!(series(&page, &refused("metrics", "header_timeout")), 1.0);
    let log = std::fs::read_to_string(node_log(&c)).unwrap();
    assert!(
        log.contains("api_header_timeout") && log.contains("header_timeout"),
        "{log}"
    );
    c.stop_all().await;
}

fn node_log(c: &vigil_tests::LocalCluster) -> PathBuf {
    c.node("n1").unwrap().log.clone()
}

/// A request body that stops arriving is answered 408 `body_timeout` after
/// `api_io_timeout`, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408() {
    let mut c = cluster!(&["n1"]);
    let args = strings(&["--api-io-timeout", "300ms"]);
    let node = c.start_with("n1", "az1", &[], &args).await.unwrap();
    let socket = node.socket.clone();
    let (status, body) = unix_http(
        &socket,
        "PUT /v1/config HTTP/1.1\r\nHost: vigil\r\nContent-Length: 100\r\n\r\n{\"capacity\"",
    );
    assert_eq!(status, 408, "{body}");
    let error = error_body(&body);
    assert_eq!(error.code, "body_timeout");
    assert!(error.error.contains("api_io_timeout"), "{}", error.error);
    let page = socket_metrics(&socket).await;
    assert_eq!(series(&page, &refused("socket", "body_timeout")), 1.0);
    c.stop_all().await;
}

/// With `api_max_streams_per_uid` 1, a second `/v1/events` stream of the same uid
/// gets 429 `too_many_streams` while the first is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_uid() {
    let mut c = cluster!(&["n1"]);
    let args = strings(&["--api-max-streams-per-uid", "1"]);
    let node = c.start_with("n1", "az1", &[], &args).await.unwrap();
    let socket = node.socket.clone();
    let mut first = UnixStream::connect(&socket).unwrap();
    first.set_read_timeout(Some(CONVERGE)).unwrap();
    first
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: vigil\r\n\r\n")
        .unwrap();
    let mut lines = BufReader::new(first);
    let mut status_line = String::new();
    lines.read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");

    let (status, body) = unix_http(
        &socket,
        "GET /v1/events HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 429, "{body}");
    let error = error_body(&body);
    assert_eq!(error.code, "too_many_streams");
    assert!(
        error.error.contains("api_max_streams_per_uid"),
        "{}",
        error.error
    );
    let page = socket_metrics(&socket).await;
    assert_eq!(series(&page, &refused("socket", "too_many_streams")), 1.0);
    drop(lines);
    c.stop_all().await;
}

/// `vigil config check` shows the socket's access settings and says what they mean;
/// an empty allow list is a note recommending one.
#[test]
fn config_check_shows_who_may_use_the_socket() {
    let c = cluster!(&["n1"]);
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: &[&str]| {
        let out = Command::new(vigil_bin!())
            .args(["config", "check", "--name", "n1", "--bind", "127.0.0.1:0"])
            .arg("--pki")
            .arg(c.pki())
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .env_remove("VIGIL_CONFIG")
            .env_remove("VIGIL_SOCKET")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = base(&[]);
    assert!(ok, "{text}");
    assert!(text.contains("socket_mode = \"0660\""), "{text}");
    assert!(text.contains("allow_uids = []"), "{text}");
    assert!(
        text.contains("note  allow_uids: empty") && text.contains("Recommended"),
        "{text}"
    );
    let gid = nix::unistd::getegid().as_raw().to_string();
    let (ok, text) = base(&[
        "--socket-mode",
        "0640",
        "--socket-group",
        &gid,
        "--allow-uid",
        "0",
        "--api-max-connections",
        "10",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("socket_mode = \"0640\"")
            && text.contains(&format!("socket_group = \"{gid}\""))
            && text.contains("allow_uids = [\"0\"]")
            && text.contains("api_max_connections = 10"),
        "{text}"
    );
    assert!(
        text.contains("only its owner (the node's user) may connect"),
        "{text}"
    );
    assert!(
        text.contains("gives the group no write permission"),
        "{text}"
    );

    let (ok, text) = base(&["--socket-mode", "0666"]);
    assert!(!ok);
    assert!(
        text.contains("--socket-mode") && text.contains("Fix:"),
        "{text}"
    );
}
