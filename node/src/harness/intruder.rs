//! A stranger on the network, for the tests and benches of the handshake limits:
//! QUIC clients from an address of their own (e.g. 127.0.0.2, so that the cluster's
//! 127.0.0.1 is not the sender) with a certificate from a foreign CA.
//!
//! The intruder trusts the cluster's CA certificate as well as its own (a CA
//! certificate is public): it accepts the node's certificate and sends its own,
//! which the node must refuse after checking it. That is the most work a stranger
//! can make a node do per attempt.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionError, TransportErrorCode};
use vigil_protocol::NodeName;

use super::HarnessError;
use crate::tls;

/// The name in the intruder's (foreign) certificate.
pub const INTRUDER_NAME: &str = "intruder";

/// How one connection attempt ended, as the intruder saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The handshake completed and the node kept the connection open (for as
    /// long again as the intruder gives an attempt): it let a foreign certificate in.
    Accepted,
    /// The node answered CONNECTION_REFUSED before any crypto.
    Refused,
    /// The handshake ran and the node refused the certificate (a TLS alert).
    Rejected,
    /// No answer before the intruder gave up (ignored, or a lost packet).
    Unanswered,
    /// Anything else (a local error, a transport error), with quinn's words.
    Failed(String),
}

/// QUIC client endpoint with a foreign certificate. Create it inside a Tokio
/// runtime. Clones share the endpoint.
#[derive(Clone)]
pub struct Intruder {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl Intruder {
    /// A foreign CA and certificate in `dir`, trusting the cluster CA of
    /// `cluster_pki` too, and an endpoint bound to `source` (port 0).
    pub fn new(dir: &Path, cluster_pki: &Path, source: IpAddr) -> Result<Self, HarnessError> {
        let pki = dir.join("intruder-pki");
        tls::init_ca(&pki, true)?;
        let name = NodeName::new(INTRUDER_NAME)
            .map_err(|e| HarnessError::Unknown(format!("{INTRUDER_NAME}: {e}")))?;
        tls::issue_node_cert(&pki, &name, &pki, 1, true)?;
        let cluster_ca = std::fs::read(cluster_pki.join(tls::CA_CERT_FILE))?;
        let mut trusted = std::fs::read(pki.join(tls::CA_CERT_FILE))?;
        trusted.extend_from_slice(&cluster_ca);
        std::fs::write(pki.join(tls::CA_CERT_FILE), trusted)?;
        let node_tls = tls::load_node_tls(&pki, &name)?;
        let mut config = node_tls.quinn_client_config()?;
        let mut transport = quinn::TransportConfig::default();
        // The LAN profile's first round-trip estimate: the Initial is sent again as
        // soon as a LAN node would send it again.
        transport.initial_rtt(Duration::from_millis(20));
        config.transport_config(Arc::new(transport));

        let socket = UdpSocket::bind((source, 0))?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            HarnessError::Io(std::io::Error::other(
                "the intruder needs a Tokio runtime to run in",
            ))
        })?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
        Ok(Intruder { endpoint, config })
    }

    /// The address the intruder sends from.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// One connection attempt to the node `server_name` at `target`, given up after
    /// `give_up`.
    pub async fn attempt(
        &self,
        target: SocketAddr,
        server_name: &str,
        give_up: Duration,
    ) -> Attempt {
        let connecting = match self
            .endpoint
            .connect_with(self.config.clone(), target, server_name)
        {
            Ok(c) => c,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let conn = match tokio::time::timeout(give_up, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return classify(&e),
            Err(_) => return Attempt::Unanswered,
        };
        // In TLS 1.3 the client is done before the server has checked the client's
        // certificate: the node's verdict comes after, as a close with a TLS alert.
        match tokio::time::timeout(give_up, conn.closed()).await {
            Ok(e) => classify(&e),
            Err(_) => {
                conn.close(0u32.into(), b"");
                Attempt::Accepted
            }
        }
    }

    /// Closes the endpoint (attempts still running end at once).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"");
    }
}

fn classify(e: &ConnectionError) -> Attempt {
    // QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
    let tls_alert = |code: TransportErrorCode| (0x100..=0x1ff).contains(&u64::from(code));
    match e {
        ConnectionError::ConnectionClosed(c)
            if c.error_code == TransportErrorCode::CONNECTION_REFUSED =>
        {
            Attempt::Refused
        }
        ConnectionError::ConnectionClosed(c) if tls_alert(c.error_code) => Attempt::Rejected,
        ConnectionError::TimedOut => Attempt::Unanswered,
        other => Attempt::Failed(other.to_string()),
    }
}
