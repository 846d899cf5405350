#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! The command line, configuration errors and the socket API, through the binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use vigil::api::{ErrorJson, MemberJson};
use vigil_tests::{CONVERGE, cluster, start_all, vigil_bin};

fn vigil(args: &[&str]) -> Output {
    Command::new(vigil_bin!())
        .args(args)
        .env_remove("VIGIL_CONFIG")
        .env_remove("VIGIL_SOCKET")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One raw HTTP/1.1 request on the socket, as curl --unix-socket would send it.
fn raw_http(socket: &Path, request: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn version_names_the_wire_protocol() {
    let out = vigil(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("wire protocol 1"), "{text}");
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "agent",
        "members",
        "events",
        "health",
        "cert",
        "demo",
        "config",
        "completions",
    ] {
        let out = vigil(&[sub, "--help"]);
        assert!(out.status.success(), "{sub}: {}", stderr(&out));
    }
}

#[test]
fn bad_settings_name_their_source_and_exit_2() {
    let out = vigil(&["agent", "--name", "Bad_Name", "--bind", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--name") && stderr(&out).contains("Fix:"),
        "{}",
        stderr(&out)
    );

    let out = Command::new(vigil_bin!())
        .args(["agent", "--name", "n1"])
        .env("VIGIL_BIND", "not-an-address")
        .env_remove("VIGIL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("VIGIL_BIND"), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vigil.toml");
    std::fs::write(
        &file,
        "name = \"n1\"\nbind = \"127.0.0.1:0\"\nprofil = \"lan\"\n",
    )
    .unwrap();
    let out = vigil(&["agent", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("profil") && stderr(&out).contains("valid keys"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_pki_is_reported_with_the_command_that_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = vigil(&[
        "agent",
        "--name",
        "n1",
        "--bind",
        "127.0.0.1:0",
        "--pki",
        d.join("pki").to_str().unwrap(),
        "--socket",
        d.join("s.sock").to_str().unwrap(),
        "--data-dir",
        d.join("data").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("vigil cert"), "{}", stderr(&out));
}

#[test]
fn cert_commands_write_private_keys_readable_only_by_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let p = pki.to_str().unwrap();
    assert!(vigil(&["cert", "init", "--out", p]).status.success());
    let again = vigil(&["cert", "init", "--out", p]);
    assert!(!again.status.success(), "init must not overwrite the CA");
    assert!(
        vigil(&["cert", "issue", "--ca", p, "--name", "n1"])
            .status
            .success()
    );
    for key in ["ca.key", "n1.key"] {
        let mode = std::fs::metadata(pki.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    assert!(pki.join("n1.crt").exists());
    let bad = vigil(&["cert", "issue", "--ca", p, "--name", "N_1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--name"), "{}", stderr(&bad));
}

#[test]
fn client_commands_explain_a_missing_node() {
    let out = vigil(&["members", "--socket", "/nonexistent/vigil.sock"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/vigil.sock") && err.contains("vigil agent"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_raw_socket_api_show_the_cluster() {
    let mut c = cluster!(&["n1", "n2"]);
    start_all(&mut c, &["n1", "n2"]).await;
    c.wait_converged(CONVERGE).await.unwrap();
    let socket = c.node("n1").unwrap().socket.clone();
    let s = socket.to_str().unwrap().to_string();

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    let table = vigil(&["members", "--socket", &s]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("n1*") && table.contains("n2") && table.contains("alive"),
        "{table}"
    );

    let json = vigil(&["members", "--json", "--socket", &s]);
    let members: Vec<MemberJson> = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(members.len(), 2);

    let health = vigil(&["health", "--socket", &s]);
    assert!(health.status.success(), "{}", stderr(&health));
    assert!(String::from_utf8_lossy(&health.stdout).starts_with("ok: n1"));

    // The socket speaks plain HTTP/1.1, as curl --unix-socket does.
    let (status, body) = raw_http(
        &socket,
        "GET /v1/members HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(body.contains("\"state\":\"alive\""), "{body}");
    for (path, code) in [
        ("/v1/nope", "not_found"),
        ("/v1/events?since=abc", "bad_request"),
        ("/v1/events?since=999999", "index_from_future"),
    ] {
        let (status, body) = raw_http(
            &socket,
            &format!("GET {path} HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n"),
        );
        assert!(status >= 400, "{path}: {status}");
        let err: ErrorJson =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
        assert_eq!(err.code, code, "{path}");
    }
    let (status, _) = raw_http(
        &socket,
        "POST /v1/members HTTP/1.1\r\nHost: vigil\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405);

    let (status, metrics) = raw_http(
        &socket,
        "GET /metrics HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    // n1 in az1, n2 in az2 (start_all).
    for zone in ["az1", "az2"] {
        assert!(
            metrics.contains(&format!(
                "vigil_members{{state=\"alive\",zone=\"{zone}\"}} 1"
            )),
            "{metrics}"
        );
    }
    assert!(metrics.contains("vigil_udp_tx_bytes_total"), "{metrics}");
    assert!(
        metrics.contains("vigil_local_health_multiplier "),
        "{metrics}"
    );

    // `vigil events` streams NDJSON and resumes after an index.
    let mut child = Command::new(vigil_bin!())
        .args(["events", "--since", "1", "--socket", &s])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["index"], 2, "events after index 1 start at 2");
    assert_eq!(first["node"], "n1");
    child.kill().unwrap();
    let _ = child.wait();

    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_socket_or_data_dir_is_refused() {
    let mut c = cluster!(&["n1", "n2"]);
    c.start("n1", "az1", &[]).await.unwrap();
    let n1 = c.node("n1").unwrap();
    let (socket, data) = (n1.socket.clone(), n1.data_dir.clone());
    let pki = c.pki().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let run = |socket: &Path, data: &Path| {
        vigil(&[
            "agent",
            "--name",
            "n2",
            "--bind",
            "127.0.0.1:0",
            "--pki",
            pki.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
    };
    let out = run(&socket, &dir.path().join("data"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another process is serving"),
        "{}",
        stderr(&out)
    );
    let out = run(&dir.path().join("s.sock"), &data);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("in use by another vigil node"),
        "{}",
        stderr(&out)
    );
    // The refused node must not have removed the live node's socket.
    assert!(socket.exists());
    c.stop_all().await;
}
