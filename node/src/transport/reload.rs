//! TLS reload of the transport ([`Transport::set_tls`]): kept apart from the
//! connection cache's code, which it only reads and prunes.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::VarInt;
use vigil_protocol::NodeName;

use super::{Dialed, Peer, ServerTls, Transport, TransportError, close_code, dial, quinn_configs};
use crate::tls::NodeTls;

/// What a TLS reload did to the open connections ([`Transport::set_tls`]).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Reverified {
    /// Connections whose peer still verifies.
    pub kept: usize,
    /// Connections closed because their peer no longer verifies.
    pub closed: Vec<ClosedConnection>,
    /// New connections opened to present this node's new certificate.
    pub renewed: usize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClosedConnection {
    pub peer: String,
    /// `revoked`, `unknown_ca`, `expired`, ... (as in `vigil_tls_rejected_total`).
    pub reason: String,
    /// Another connection to the peer, made with a certificate that verifies, stays
    /// (the closed one was older: a rotation, not a refusal).
    pub replaced: bool,
}

impl Transport {
    /// The TLS configurations in use.
    pub fn tls(&self) -> &NodeTls {
        &self.tls
    }

    /// Switches to `tls` (a reload, already checked by [`NodeTls::reload`]): new
    /// handshakes, in both directions, use it at once; every open connection whose
    /// peer certificate no longer verifies under its trust is closed with the reason,
    /// the others stay. When this node's own certificate changed, a new connection is
    /// dialed to every connected peer, so that each peer soon holds a connection
    /// showing the new certificate (and sends on it, the newest): a later reload that
    /// stops trusting the old one then closes only connections no longer in use.
    pub fn set_tls(&mut self, tls: NodeTls) -> Result<Reverified, TransportError> {
        let (server, client) = quinn_configs(&tls, &self.quic)?;
        let renew = !self.tls.same_certificate(&tls);
        self.trust += 1;
        self.endpoint.set_server_config(Some(server.clone()));
        self.server_tls.send_replace(ServerTls {
            generation: self.trust,
            config: Arc::new(server),
        });
        self.client_config = client;
        self.tls = tls;

        let mut report = Reverified::default();
        let tls = &self.tls;
        for (name, entry) in &mut self.peers {
            let Peer::Ready { conns } = &mut entry.peer else {
                continue;
            };
            let verdicts: Vec<_> = conns
                .iter()
                .map(|l| tls.verify_peer(l.conn.peer_identity(), name, l.dialed_by_us))
                .collect();
            let replaced = verdicts.iter().any(Result::is_ok);
            let mut verdicts = verdicts.into_iter();
            conns.retain(|live| match verdicts.next() {
                Some(Err(refusal)) => {
                    // An older connection of a peer that has a newer one that
                    // verifies (a rotation) is superseded, which its side takes in
                    // stride; otherwise the peer is told it is no longer trusted.
                    let code = if replaced {
                        close_code::SUPERSEDED
                    } else {
                        close_code::UNTRUSTED
                    };
                    live.conn
                        .close(VarInt::from_u32(code), refusal.kind().as_bytes());
                    if replaced {
                        tracing::info!(peer = %name, reason = refusal.kind(), "closed an older connection: {refusal}; a newer one verifies");
                    } else {
                        tracing::warn!(peer = %name, reason = refusal.kind(), "closed the connection with {name} after the TLS reload: {refusal}");
                    }
                    report.closed.push(ClosedConnection {
                        peer: name.to_string(),
                        reason: refusal.kind().to_owned(),
                        replaced,
                    });
                    false
                }
                Some(Ok(())) | None => {
                    report.kept += 1;
                    true
                }
            });
        }
        self.peers.retain(|_, e| match &e.peer {
            Peer::Ready { conns } => !conns.is_empty(),
            Peer::Dialing { .. } => true,
        });
        self.update_connection_gauge();
        if renew {
            let targets: Vec<(NodeName, SocketAddr)> = self
                .peers
                .iter()
                .filter_map(|(name, e)| match &e.peer {
                    // The address this node dialed (the one the peer advertises)
                    // if it has such a connection; else where an accepted one came
                    // from: the peer's one UDP port serves both directions.
                    Peer::Ready { conns } => conns
                        .iter()
                        .rev()
                        .find(|l| l.dialed_by_us)
                        .or(conns.last())
                        .map(|l| (name.clone(), l.conn.remote_address())),
                    Peer::Dialing { .. } => None,
                })
                .collect();
            for (name, addr) in targets {
                if let Ok(connecting) =
                    self.endpoint
                        .connect_with(self.client_config.clone(), addr, name.as_str())
                {
                    report.renewed += 1;
                    tokio::spawn(dial(
                        connecting,
                        Dialed::Node(name),
                        self.inbound_tx.clone(),
                        Arc::clone(&self.metrics),
                        (self.config.dial_timeout, self.trust),
                        self.limits.clone(),
                        self.wire_versions,
                    ));
                }
            }
        }
        Ok(report)
    }
}
