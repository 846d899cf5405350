#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Only nodes with a certificate from the cluster CA, naming the node, get in.

use vigil::client;
use vigil::harness::HarnessError;
use vigil_protocol::NodeName;
use vigil_tests::{CONVERGE, cluster, metric_sum, start_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_never_joins() {
    let mut c = cluster!(&["n1", "n2"]);
    start_all(&mut c, &["n1", "n2"]).await;
    c.wait_converged(CONVERGE).await.expect("converge");

    // A well-formed node with its own CA: everything right but the signature.
    let rogue_pki = c.root().join("rogue-pki");
    vigil::tls::init_ca(&rogue_pki, false).unwrap();
    vigil::tls::issue_node_cert(
        &rogue_pki,
        &NodeName::new("n3").unwrap(),
        &rogue_pki,
        1,
        false,
    )
    .unwrap();
    let seed = c.node("n1").unwrap().addr;
    c.start_with_pki("n3", "az3", &[seed], &rogue_pki)
        .await
        .expect("the rogue node starts");

    // Let it try several times (it retries with backoff), seen from its own side.
    let mut last = 0;
    for attempt in 1..=3 {
        let failed = c
            .wait_event("n3", CONVERGE, |e| {
                e.kind == "join_failed" && e.index > last
            })
            .await
            .unwrap_or_else(|e| panic!("join attempt {attempt} of the rogue: {e}"));
        assert!(
            failed
                .detail
                .as_deref()
                .unwrap_or("")
                .contains(&seed.to_string()),
            "{failed:?}"
        );
        last = failed.index;
    }
    let rogue = client::health(&c.node("n3").unwrap().socket).await.unwrap();
    assert_eq!(rogue.status, "joining");
    assert_eq!(rogue.live_members, 1);

    for member in ["n1", "n2"] {
        let socket = &c.node(member).unwrap().socket;
        let members = client::members(socket).await.unwrap();
        assert!(
            members.iter().all(|m| m.name != "n3"),
            "{member} let the rogue in: {members:?}"
        );
    }
    // The seed refused it during the handshake and counted it.
    let refused = metric_sum(&c.node("n1").unwrap().socket, "vigil_tls_rejected_total").await;
    assert!(refused >= 1.0, "refusals counted on n1: {refused}");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_names_another_node_does_not_start() {
    let mut c = cluster!(&["n1", "n2"]);
    let pki = c.pki().to_path_buf();
    // n9 presents n2's certificate and key.
    std::fs::copy(pki.join("n2.crt"), pki.join("n9.crt")).unwrap();
    std::fs::copy(pki.join("n2.key"), pki.join("n9.key")).unwrap();
    let err = match c.start("n9", "az1", &[]).await {
        Err(e) => e,
        Ok(_) => panic!("n9 started with n2's certificate"),
    };
    let HarnessError::Node { log, .. } = &err else {
        panic!("unexpected error {err}");
    };
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("n2") && log.contains("n9"), "log: {log}");
}
