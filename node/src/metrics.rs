//! Prometheus metrics of one node, served at `/metrics` on the Unix socket (and, with
//! `--metrics-bind`, over plain TCP for scrapers; [`serve_tcp`]).
//!
//! The metric handles are atomics shared by the tasks that count; only the owner task
//! changes membership state, so gauges describing it are set from there (see
//! [`crate::signals`]). docs/API.md lists every metric; docs/dashboards/vigil.json
//! is built on them, and a test keeps the two in step.
//!
//! Labels are bounded: states, zones, directions, reasons and kinds are small fixed or
//! operator-defined sets, routes are the router's patterns. Agent ids and node names
//! never become labels (a cluster of thousands of agents would make thousands of
//! series per node).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use vigil_protocol::ProbeOutcome;

pub use crate::listener::METRICS_MAX_CONNECTIONS;
use crate::listener::{Gate, Listener, Reason, Timeouts};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabel {
    pub state: String,
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub listener: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WireVersionLabel {
    pub wire_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: String,
    pub wire_version: String,
}

pub struct Metrics {
    pub udp_tx_bytes: Counter,
    pub udp_tx_packets: Counter,
    pub udp_rx_bytes: Counter,
    pub udp_rx_packets: Counter,
    pub datagrams_sent: Counter,
    pub datagrams_received: Counter,
    pub stream_frames_sent: Counter,
    pub stream_frames_received: Counter,
    pub messages_dropped: Family<ReasonLabel, Counter>,
    pub input_errors: Family<KindLabel, Counter>,
    pub tls_rejected: Family<ReasonLabel, Counter>,
    pub connections: Gauge,
    /// Live connections by the wire version they negotiated: during a rolling
    /// upgrade, how much of the cluster still speaks the old version.
    pub wire_connections: Family<WireVersionLabel, Gauge>,
    pub connections_opened: Family<DirectionLabel, Counter>,
    pub connections_evicted: Counter,
    pub handshake_seconds: Histogram,
    pub probe_rtt_seconds: Histogram,
    pub members: Family<MemberLabel, Gauge>,
    pub events: Family<TypeLabel, Counter>,
    pub joined: Gauge,
    pub local_health: Gauge,
    pub timer_errors: Counter,
    pub api_requests: Family<RouteLabel, Counter>,
    /// Connections and requests the API listeners refused or closed, by listener
    /// (`socket`, `metrics`) and reason (crate::listener::Reason).
    api_refused: Family<RefusedLabel, Counter>,
    /// Connections open on each API listener.
    api_connections: Family<ListenerLabel, Gauge>,
    pub snapshot_puts: Family<OutcomeLabel, Counter>,
    pub snapshot_put_seconds: Histogram,
    pub snapshot_gets: Family<OutcomeLabel, Counter>,
    pub snapshot_bytes_written: Counter,
    pub snapshot_corrupt: Counter,
    pub store_errors: Family<KindLabel, Counter>,
    pub repl_payload_bytes: Family<DirectionLabel, Counter>,
    pub agents_known: Gauge,
    pub agents_owned: Gauge,
    pub agents_degraded: Gauge,
    pub repair_backlog: Gauge,
    pub snapshot_memory_bytes: Gauge,
    pub stream_frame_memory_bytes: Gauge,
    /// SWIM envelopes sent and received as QUIC datagrams, in bytes.
    pub datagram_bytes_out: Counter,
    pub datagram_bytes_in: Counter,
    /// Bytes sent and received on QUIC streams (frames and snapshot payloads).
    pub stream_bytes_out: Counter,
    pub stream_bytes_in: Counter,
    pub probes: Family<OutcomeLabel, Counter>,
    pub suspicions_raised: Counter,
    pub refutations: Counter,
    pub false_alarms_refuted: Counter,
    pub snapshot_put_failure_seconds: Histogram,
    pub elections: Family<KindLabel, Counter>,
    pub elections_won: Counter,
    pub elections_running: Gauge,
    pub adoptions: Counter,
    pub agent_fences: Counter,
    pub agents_fenced: Gauge,
    pub agents_pending: Gauge,
    pub rto_seconds: Histogram,
    pub standby_capacity_free: Family<ZoneLabel, Gauge>,
    pub capacity_free: Family<ZoneLabel, Gauge>,
    build_info: Family<BuildLabel, Gauge>,
    /// TLS reloads (SIGHUP, `POST /v1/tls/reload`) by outcome, open connections a
    /// reload closed by reason, and this node's certificate expiry.
    pub tls_reloads: Family<OutcomeLabel, Counter>,
    pub tls_reload_closed: Family<ReasonLabel, Counter>,
    pub tls_certificate_expiry: Gauge,
}

/// Buckets of the recovery time histogram, in seconds: fine around the LAN profile's
/// typical 1-3 s, coarse up to the minutes an agent waits pending for room.
const RTO_BUCKETS: [f64; 17] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

impl Metrics {
    /// The metrics and the registry that encodes them.
    pub fn new() -> (Arc<Metrics>, Registry) {
        let datagram_bytes: Family<DirectionLabel, Counter> = Family::default();
        let stream_bytes: Family<DirectionLabel, Counter> = Family::default();
        // Handles kept for the hot paths (one per datagram): no label lookup there.
        let direction = |f: &Family<DirectionLabel, Counter>, d: &str| {
            f.get_or_create(&DirectionLabel {
                direction: d.to_string(),
            })
            .clone()
        };
        let m = Metrics {
            udp_tx_bytes: Counter::default(),
            udp_tx_packets: Counter::default(),
            udp_rx_bytes: Counter::default(),
            udp_rx_packets: Counter::default(),
            datagrams_sent: Counter::default(),
            datagrams_received: Counter::default(),
            stream_frames_sent: Counter::default(),
            stream_frames_received: Counter::default(),
            messages_dropped: Family::default(),
            input_errors: Family::default(),
            tls_rejected: Family::default(),
            connections: Gauge::default(),
            wire_connections: Family::default(),
            connections_opened: Family::default(),
            connections_evicted: Counter::default(),
            // 100 us .. ~3 s
            handshake_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 100 us .. ~3 s, the same scale as handshakes.
            probe_rtt_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            members: Family::default(),
            events: Family::default(),
            joined: Gauge::default(),
            local_health: Gauge::default(),
            timer_errors: Counter::default(),
            api_requests: Family::default(),
            api_refused: Family::default(),
            api_connections: Family::default(),
            snapshot_puts: Family::default(),
            // 250 us .. ~16 s
            snapshot_put_seconds: Histogram::new(exponential_buckets(0.00025, 2.0, 17)),
            snapshot_gets: Family::default(),
            snapshot_bytes_written: Counter::default(),
            snapshot_corrupt: Counter::default(),
            store_errors: Family::default(),
            repl_payload_bytes: Family::default(),
            agents_known: Gauge::default(),
            agents_owned: Gauge::default(),
            agents_degraded: Gauge::default(),
            repair_backlog: Gauge::default(),
            snapshot_memory_bytes: Gauge::default(),
            stream_frame_memory_bytes: Gauge::default(),
            datagram_bytes_out: direction(&datagram_bytes, "out"),
            datagram_bytes_in: direction(&datagram_bytes, "in"),
            stream_bytes_out: direction(&stream_bytes, "out"),
            stream_bytes_in: direction(&stream_bytes, "in"),
            probes: Family::default(),
            suspicions_raised: Counter::default(),
            refutations: Counter::default(),
            false_alarms_refuted: Counter::default(),
            // 250 us .. ~16 s, like acknowledged puts.
            snapshot_put_failure_seconds: Histogram::new(exponential_buckets(0.00025, 2.0, 17)),
            elections: Family::default(),
            elections_won: Counter::default(),
            elections_running: Gauge::default(),
            adoptions: Counter::default(),
            agent_fences: Counter::default(),
            agents_fenced: Gauge::default(),
            agents_pending: Gauge::default(),
            rto_seconds: Histogram::new(RTO_BUCKETS),
            standby_capacity_free: Family::default(),
            capacity_free: Family::default(),
            build_info: Family::default(),
            tls_reloads: Family::default(),
            tls_reload_closed: Family::default(),
            tls_certificate_expiry: Gauge::default(),
        };
        // Series whose label values are known in advance start at 0, so that rates
        // and alerts see them before the first event.
        for outcome in ProbeOutcome::ALL {
            let _ = m.probes.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().into(),
            });
        }
        for kind in ["recover", "handoff", "takeover"] {
            let _ = m.elections.get_or_create(&KindLabel { kind: kind.into() });
        }
        for direction in ["in", "out"] {
            let _ = m.repl_payload_bytes.get_or_create(&DirectionLabel {
                direction: direction.into(),
            });
        }
        for (listener, reasons) in [
            (Listener::Socket, &Reason::SOCKET[..]),
            (Listener::Metrics, &Reason::METRICS[..]),
        ] {
            let _ = m.api_connections.get_or_create(&ListenerLabel {
                listener: listener.as_str().into(),
            });
            for reason in reasons {
                let _ = m.api_refused.get_or_create(&RefusedLabel {
                    listener: listener.as_str().into(),
                    reason: reason.as_str().into(),
                });
            }
        }
        for direction in ["inbound", "outbound"] {
            let _ = m.connections_opened.get_or_create(&DirectionLabel {
                direction: direction.into(),
            });
        }
        for outcome in ["ok", "failed"] {
            let _ = m.tls_reloads.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        m.build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
                wire_version: vigil_protocol::wire::WIRE_VERSION.to_string(),
            })
            .set(1);
        let mut r = Registry::with_prefix("vigil");
        r.register(
            "udp_tx_bytes",
            "UDP payload bytes sent by the QUIC endpoint",
            m.udp_tx_bytes.clone(),
        );
        r.register(
            "udp_tx_packets",
            "UDP packets sent by the QUIC endpoint",
            m.udp_tx_packets.clone(),
        );
        r.register(
            "udp_rx_bytes",
            "UDP payload bytes received by the QUIC endpoint",
            m.udp_rx_bytes.clone(),
        );
        r.register(
            "udp_rx_packets",
            "UDP packets received by the QUIC endpoint",
            m.udp_rx_packets.clone(),
        );
        r.register(
            "datagrams_sent",
            "SWIM messages sent as QUIC datagrams",
            m.datagrams_sent.clone(),
        );
        r.register(
            "datagrams_received",
            "QUIC datagrams received from authenticated peers",
            m.datagrams_received.clone(),
        );
        r.register(
            "stream_frames_sent",
            "Messages too large for a datagram, sent on a QUIC stream",
            m.stream_frames_sent.clone(),
        );
        r.register(
            "stream_frames_received",
            "Framed messages received on QUIC streams",
            m.stream_frames_received.clone(),
        );
        described(
            &mut r,
            "messages_dropped",
            "Outgoing or incoming messages dropped, by reason",
            m.messages_dropped.clone(),
        );
        described(
            &mut r,
            "input_errors",
            "Messages from peers refused while decoding or processing, by kind",
            m.input_errors.clone(),
        );
        described(
            &mut r,
            "tls_rejected",
            "Connections refused during or right after the TLS handshake, by reason",
            m.tls_rejected.clone(),
        );
        r.register(
            "connections",
            "QUIC connections in the connection cache",
            m.connections.clone(),
        );
        described(
            &mut r,
            "connections_by_wire_version",
            "QUIC connections in the connection cache, by the wire version they negotiated",
            m.wire_connections.clone(),
        );
        described(
            &mut r,
            "connections_opened",
            "QUIC connections established, by direction",
            m.connections_opened.clone(),
        );
        r.register(
            "connections_evicted",
            "Connections closed to keep the cache within its capacity",
            m.connections_evicted.clone(),
        );
        r.register(
            "handshake_seconds",
            "Time to establish an outgoing QUIC connection (TLS handshake included)",
            m.handshake_seconds.clone(),
        );
        r.register(
            "probe_rtt_seconds",
            "Round-trip time of this node's SWIM probes answered directly, from sending the ping to handling the ack (includes the time the ack waited to be read)",
            m.probe_rtt_seconds.clone(),
        );
        described(
            &mut r,
            "members",
            "Known members by state and zone, the local node included",
            m.members.clone(),
        );
        described(
            &mut r,
            "probes",
            "SWIM probes this node sent, by outcome: ack_direct (the member answered), ack_indirect (only through another member), failed (nobody answered in time)",
            m.probes.clone(),
        );
        r.register(
            "suspicions_raised",
            "Alive members this node's own failed probe made suspect (the rest it learns by gossip)",
            m.suspicions_raised.clone(),
        );
        r.register(
            "refutations",
            "Times this node was told it is suspected and refuted by raising its incarnation",
            m.refutations.clone(),
        );
        r.register(
            "false_alarms_refuted",
            "Members this node held as suspect that proved alive at a higher incarnation",
            m.false_alarms_refuted.clone(),
        );
        described(
            &mut r,
            "events",
            "Membership events emitted, by type",
            m.events.clone(),
        );
        r.register(
            "joined",
            "1 while the node is an active member of a cluster",
            m.joined.clone(),
        );
        r.register(
            "local_health_multiplier",
            "Local health (Lifeguard): 0 when healthy, up to 8 while this node's own probes fail or its timers fire late; its probing and suspicion timeouts are stretched by 1 + this",
            m.local_health.clone(),
        );
        r.register(
            "timer_errors",
            "Errors foca reported while handling timers (should stay 0)",
            m.timer_errors.clone(),
        );
        described(
            &mut r,
            "api_requests",
            "Socket API requests by route and status",
            m.api_requests.clone(),
        );
        described(
            &mut r,
            "api_refused",
            "Connections and requests the socket API and the metrics listener refused or closed, by listener and reason (uid_not_allowed, too_many_connections, header_timeout, ...)",
            m.api_refused.clone(),
        );
        described(
            &mut r,
            "api_connections",
            "Connections open on the socket API and the metrics listener",
            m.api_connections.clone(),
        );
        described(
            &mut r,
            "snapshot_puts",
            "Snapshot puts answered by this node as owner, by outcome (acked, or the error code)",
            m.snapshot_puts.clone(),
        );
        r.register(
            "snapshot_put_seconds",
            "Time from a put's arrival to its acknowledgement",
            m.snapshot_put_seconds.clone(),
        );
        r.register(
            "snapshot_put_failure_seconds",
            "Time from a put's arrival to its refusal or failure (puts counted under an error code)",
            m.snapshot_put_failure_seconds.clone(),
        );
        described(
            &mut r,
            "snapshot_gets",
            "Snapshot reads answered by this node, by outcome",
            m.snapshot_gets.clone(),
        );
        r.register(
            "snapshot_bytes_written",
            "Snapshot bytes written durably to this node's disk (own copies and replicas)",
            m.snapshot_bytes_written.clone(),
        );
        r.register(
            "snapshot_corrupt",
            "Snapshot versions found corrupt on this node's disk (moved aside, fetched again)",
            m.snapshot_corrupt.clone(),
        );
        described(
            &mut r,
            "store_errors",
            "Snapshot store operations that failed, by kind (no_space, io, corrupt, ...)",
            m.store_errors.clone(),
        );
        described(
            &mut r,
            "replication_payload_bytes",
            "Snapshot bytes sent to or received from peers on QUIC streams, by direction",
            m.repl_payload_bytes.clone(),
        );
        r.register(
            "agents_known",
            "Agents in this node's catalog",
            m.agents_known.clone(),
        );
        r.register(
            "agents_owned",
            "Agents owned by this node",
            m.agents_owned.clone(),
        );
        r.register(
            "agents_degraded",
            "Agents this node manages with fewer copies or zones than configured",
            m.agents_degraded.clone(),
        );
        r.register(
            "repair_backlog",
            "Snapshot versions waiting to be copied by repair on this node",
            m.repair_backlog.clone(),
        );
        r.register(
            "snapshot_memory_bytes",
            "Snapshot bytes held in memory (puts in flight, replicas being received)",
            m.snapshot_memory_bytes.clone(),
        );
        r.register(
            "stream_frame_memory_bytes",
            "Bytes of stream frames from peers held in memory, being read or waiting for the owner task (bounded node-wide)",
            m.stream_frame_memory_bytes.clone(),
        );
        described(
            &mut r,
            "datagram_bytes",
            "SWIM messages sent (out) or received (in) as QUIC datagrams, in bytes (envelopes, before QUIC framing and encryption)",
            datagram_bytes,
        );
        described(
            &mut r,
            "stream_bytes",
            "Bytes sent (out) or received (in) on QUIC streams: framed messages and snapshot payloads",
            stream_bytes,
        );
        described(
            &mut r,
            "elections",
            "Elections of a new owner this node started as proposer, by kind (recover, handoff, takeover)",
            m.elections.clone(),
        );
        r.register(
            "elections_won",
            "Elections whose decree this node got chosen: it coordinates the adoption",
            m.elections_won.clone(),
        );
        r.register(
            "elections_running",
            "Elections this node runs as proposer now (pending ones included)",
            m.elections_running.clone(),
        );
        r.register(
            "adoptions",
            "Agents this node adopted (it owns them at a new epoch)",
            m.adoptions.clone(),
        );
        r.register(
            "agent_fences",
            "Times an agent owned here was fenced (this node lost its holders' lease)",
            m.agent_fences.clone(),
        );
        r.register(
            "agents_fenced",
            "Agents owned here that are fenced now",
            m.agents_fenced.clone(),
        );
        r.register(
            "agents_pending",
            "Agents whose election on this node found no live, non-isolated host with room: waiting for capacity",
            m.agents_pending.clone(),
        );
        r.register(
            "rto_seconds",
            "On the adopting node: from this node's first sight of the previous owner's failure (its first suspicion, else its down or left) to the adoption",
            m.rto_seconds.clone(),
        );
        described(
            &mut r,
            "standby_capacity_free_agents",
            "Agents the live, non-isolated standby hosts of each zone can still take, as they advertise it",
            m.standby_capacity_free.clone(),
        );
        described(
            &mut r,
            "capacity_free_agents",
            "Agents the live, non-isolated hosts of each zone (standby or not) can still take, as they advertise it",
            m.capacity_free.clone(),
        );
        described(
            &mut r,
            "build_info",
            "Version of this build and of its wire protocol",
            m.build_info.clone(),
        );
        described(
            &mut r,
            "tls_reloads",
            "Reloads of the PKI directory (SIGHUP or POST /v1/tls/reload), by outcome: ok, failed (the node kept its certificates)",
            m.tls_reloads.clone(),
        );
        described(
            &mut r,
            "tls_reload_closed",
            "Open connections a TLS reload closed because the peer's certificate no longer verifies, by reason (revoked, unknown_ca, expired, ...)",
            m.tls_reload_closed.clone(),
        );
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When this node's certificate expires (Unix time), as loaded at start or by the last reload",
            m.tls_certificate_expiry.clone(),
        );
        (Arc::new(m), r)
    }

    pub fn count_input_error(&self, kind: &str) {
        self.input_errors
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// A snapshot put answered as owner: `acked` or the error code.
    pub fn count_put(&self, outcome: &str) {
        self.snapshot_puts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A snapshot read answered: `found` or the error code.
    pub fn count_get(&self, outcome: &str) {
        self.snapshot_gets
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn count_store_error(&self, kind: &str) {
        self.store_errors
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn count_dropped(&self, reason: &str) {
        self.messages_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A connection or request refused or closed by an API listener.
    pub fn count_api_refused(&self, listener: &str, reason: &str) {
        self.api_refused
            .get_or_create(&RefusedLabel {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The gauge of connections open on `listener`.
    pub fn api_connections_gauge(&self, listener: &str) -> Gauge {
        self.api_connections
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .clone()
    }

    /// The gauge of live connections that negotiated wire `version`.
    pub fn connections_by_wire_version(&self, version: u8) -> Gauge {
        self.wire_connections
            .get_or_create(&WireVersionLabel {
                wire_version: version.to_string(),
            })
            .clone()
    }

    pub fn count_tls_rejected(&self, reason: &str) {
        self.tls_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// A family of labelled series whose `# HELP` and `# TYPE` lines are written even
/// before its first series exists. prometheus-client leaves empty families out, and
/// then a scraper (or the dashboard test) cannot tell "nothing counted yet" (no TLS
/// refusal so far) from "no such metric".
#[derive(Debug)]
struct Described<M> {
    name: &'static str,
    help: &'static str,
    metric: M,
}

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static> Collector for Described<M> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let series =
            encoder.encode_descriptor(self.name, self.help, None, self.metric.metric_type())?;
        self.metric.encode(series)
    }
}

fn described<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static>(
    r: &mut Registry,
    name: &'static str,
    help: &'static str,
    metric: M,
) {
    r.register_collector(Box::new(Described { name, help, metric }));
}

/// Renders the registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` for a scraper, with nothing else: the `--metrics-bind` listener
/// serves this router over plain TCP (the socket API stays on the Unix socket).
pub fn tcp_router(registry: Arc<Registry>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = Arc::clone(&registry);
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode(&registry)) }
            }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "only GET /metrics is served here; the API is on the node's Unix socket\n",
            )
                .into_response()
        })
}

/// Serves [`tcp_router`] on `listener` until `shutdown` resolves, with at most
/// [`METRICS_MAX_CONNECTIONS`] connections at once and the socket API's header and
/// write timeouts (crate::listener): a scraper that connects and stays silent, or
/// stops reading, loses its connection instead of holding one for ever.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    timeouts: Timeouts,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let gate = Gate::new(Listener::Metrics, metrics);
    crate::listener::serve_tcp(listener, tcp_router(registry), timeouts, gate, shutdown).await
}
