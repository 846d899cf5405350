//! Prometheus metrics of one node, served at `/metrics` on the Unix socket.
//!
//! The metric handles are atomics shared by the tasks that count; only the owner task
//! changes membership state, so gauges describing it are set from there.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
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
    pub connections_opened: Family<DirectionLabel, Counter>,
    pub connections_evicted: Counter,
    pub handshake_seconds: Histogram,
    pub members: Family<StateLabel, Gauge>,
    pub events: Family<TypeLabel, Counter>,
    pub joined: Gauge,
    pub local_health: Gauge,
    pub timer_errors: Counter,
    pub api_requests: Family<RouteLabel, Counter>,
    build_info: Family<BuildLabel, Gauge>,
}

impl Metrics {
    /// The metrics and the registry that encodes them.
    pub fn new() -> (Arc<Metrics>, Registry) {
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
            connections_opened: Family::default(),
            connections_evicted: Counter::default(),
            // 100 us .. ~3 s
            handshake_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            members: Family::default(),
            events: Family::default(),
            joined: Gauge::default(),
            local_health: Gauge::default(),
            timer_errors: Counter::default(),
            api_requests: Family::default(),
            build_info: Family::default(),
        };
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
        r.register(
            "messages_dropped",
            "Outgoing or incoming messages dropped, by reason",
            m.messages_dropped.clone(),
        );
        r.register(
            "input_errors",
            "Messages from peers refused while decoding or processing, by kind",
            m.input_errors.clone(),
        );
        r.register(
            "tls_rejected",
            "Connections refused during or right after the TLS handshake, by reason",
            m.tls_rejected.clone(),
        );
        r.register(
            "connections",
            "QUIC connections in the connection cache",
            m.connections.clone(),
        );
        r.register(
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
            "members",
            "Known members by state, the local node included",
            m.members.clone(),
        );
        r.register(
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
        r.register(
            "api_requests",
            "Socket API requests by route and status",
            m.api_requests.clone(),
        );
        r.register(
            "build_info",
            "Version of this build and of its wire protocol",
            m.build_info.clone(),
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

    pub fn count_dropped(&self, reason: &str) {
        self.messages_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn count_tls_rejected(&self, reason: &str) {
        self.tls_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Renders the registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
