//! Mutual TLS for vigil's QUIC transport: the cluster CA, node certificates, and the
//! rustls configurations both ends of a connection use.
//!
//! Trust model: one cluster CA (or, during a rotation, several, all listed in `ca.crt`)
//! signs one certificate per node. A node certificate's only DNS subject alternative
//! name is the node name, so a completed handshake proves "the peer is node X, as the
//! cluster CA vouched". Both sides check it: the dialer connects with the peer's node
//! name as server name (normal webpki name check), and the listener requires a client
//! certificate that chains to the CA and names a valid node; the transport then compares
//! [`peer_node_name`] with the identity the peer claims in its messages.
//!
//! Reconnecting is cheap: both configurations keep rustls' default in-memory session
//! caches, so a node redialing a peer it talked to before resumes the session (no
//! certificate signatures or chain checks), and may send its first message in 0-RTT
//! (`quinn::Connecting::into_0rtt`). 0-RTT is safe to allow here because rustls only
//! accepts early data with its stateful, single-use ticket cache, so a replayed first
//! flight is refused within a listener process; the peer's identity in 0-RTT is the one
//! its certificate proved in the resumed session.
//!
//! Files in a PKI directory: `ca.crt`, `ca.key` (only where certificates are issued),
//! `NAME.crt`, `NAME.key`. Private keys are written with mode 0600 and refused at load
//! time when other users can access them.

use std::any::Any;
use std::fmt;
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName as TlsDistinguishedName, Error,
    OtherError, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use vigil_protocol::wire::WireVersions;
use vigil_protocol::{NameError, NodeName};

/// ALPN protocol id of wire version 1, the only one builds before wire version
/// negotiation offered. Wire version N is `vigil/N` ([`alpn_id`]).
pub const ALPN: &[u8] = b"vigil/1";
const ALPN_PREFIX: &str = "vigil/";
/// Server name used when dialing a seed whose node name is not known yet. Node names
/// never contain a dot, so it cannot collide with one.
pub const SEED_SERVER_NAME: &str = "seed.vigil.invalid";

/// File name of the trusted CA certificates in a PKI directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key in a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";

const CA_COMMON_NAME: &str = "vigil cluster CA";
const CA_VALIDITY_DAYS: u64 = 3653;
/// Longest node certificate validity `issue_node_cert` accepts. Far beyond any sane
/// use, but it keeps dates well inside what X.509 and the date arithmetic can encode.
pub const MAX_CERT_DAYS: u32 = 36_525;
/// Certificates start this far in the past, so a node whose clock runs a little behind
/// the issuing machine's does not reject a freshly issued certificate as "not yet valid".
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);
const SECS_PER_DAY: u64 = 24 * 60 * 60;
const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;
/// Key files whose mode has any of these bits (access by "others") are refused.
const FORBIDDEN_KEY_MODE_BITS: u32 = 0o007;

/// Path of node `name`'s certificate in `dir`.
pub fn node_cert_path(dir: &Path, name: &NodeName) -> PathBuf {
    dir.join(format!("{name}.crt"))
}

/// Path of node `name`'s private key in `dir`.
pub fn node_key_path(dir: &Path, name: &NodeName) -> PathBuf {
    dir.join(format!("{name}.key"))
}

/// Why creating, issuing or loading certificates failed. Every message names the file
/// involved and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{} does not exist: run `vigil cert init --out {}` first to create the cluster CA",
        path.display(), dir.display()
    )]
    CaMissing { path: PathBuf, dir: PathBuf },
    #[error(
        "{} does not exist: certificates are issued where the CA key is, so run `vigil cert issue` on the machine where `vigil cert init` ran, or copy its ca.key here",
        path.display()
    )]
    CaKeyMissing { path: PathBuf },
    #[error(
        "{} does not exist: issue node {name}'s certificate and key with `vigil cert issue --ca CA_DIR --name {name} --out {}`",
        path.display(), dir.display()
    )]
    NodeFileMissing {
        path: PathBuf,
        dir: PathBuf,
        name: NodeName,
    },
    #[error("{} already exists; refusing to overwrite it (pass `--force` to replace it{note})", path.display())]
    AlreadyExists { path: PathBuf, note: &'static str },
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not a valid PEM file ({source}); it should hold {expected}: restore or regenerate it",
        path.display()
    )]
    Pem {
        path: PathBuf,
        expected: &'static str,
        #[source]
        source: pem::Error,
    },
    #[error(
        "{} holds no {expected}; check that it is the right file, or regenerate it",
        path.display()
    )]
    Empty {
        path: PathBuf,
        expected: &'static str,
    },
    #[error(
        "{} can be accessed by other users (mode {mode:04o}); a private key must not be: run `chmod 600 {}`",
        path.display(), path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{} holds an unusable private key ({reason}); regenerate it", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{} holds an invalid certificate ({reason}); restore or regenerate it", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error(
        "the certificate at {} names {found} but this node is \"{expected}\"; issue one with `vigil cert issue --ca CA_DIR --name {expected} --out {}`",
        path.display(), dir.display()
    )]
    WrongName {
        path: PathBuf,
        /// What the certificate names, ready to print (e.g. `"n2"` or `no DNS name`).
        found: String,
        expected: NodeName,
        dir: PathBuf,
    },
    #[error(
        "the certificate at {} is not signed by any CA in {} ({reason}); issue a new one with `vigil cert issue --ca CA_DIR --name {name}` from this cluster's CA, or add the CA that signed it to {}",
        path.display(), ca.display(), ca.display()
    )]
    UntrustedCertificate {
        path: PathBuf,
        ca: PathBuf,
        name: NodeName,
        #[source]
        reason: Error,
    },
    #[error(
        "the certificate at {} is expired or not valid yet ({reason}); check this host's clock, then issue a new one with `vigil cert issue --ca CA_DIR --name {name} --force`",
        path.display()
    )]
    CertificateNotCurrent {
        path: PathBuf,
        name: NodeName,
        #[source]
        reason: Error,
    },
    #[error(
        "the certificate at {} cannot serve as node {name}'s certificate ({reason}); issue a new one with `vigil cert issue --ca CA_DIR --name {name} --force`",
        path.display()
    )]
    CertificateRejected {
        path: PathBuf,
        name: NodeName,
        #[source]
        reason: Error,
    },
    #[error(
        "the private key at {} does not belong to the certificate at {}; issue both again with `vigil cert issue --ca CA_DIR --name NAME --force`",
        key.display(), cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "no certificate in {} matches the CA key {}; restore the ca.crt that `vigil cert init` wrote next to that key",
        cert.display(), key.display()
    )]
    CaKeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "the certificate in {} that matches ca.key {problem}; create a new CA with `vigil cert init --out DIR`",
        path.display()
    )]
    CaUnusable {
        path: PathBuf,
        problem: &'static str,
    },
    #[error(
        "cannot issue {}: validity of {days} days is out of range (1 to {MAX_CERT_DAYS})",
        path.display()
    )]
    InvalidValidity { path: PathBuf, days: u32 },
    #[error("could not generate {}: {reason}", path.display())]
    Generate { path: PathBuf, reason: String },
    #[error(
        "could not build the TLS configuration from {}: {source}",
        dir.display()
    )]
    Config {
        dir: PathBuf,
        #[source]
        source: Error,
    },
    #[error(
        "the TLS configuration loaded from {} cannot be used for QUIC ({source}); this is a bug in vigil, please report it",
        dir.display()
    )]
    Quic {
        dir: PathBuf,
        #[source]
        source: NoInitialCipherSuite,
    },
}

/// Files written by [`init_ca`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Files written by [`issue_node_cert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `vigil cert init --out DIR`: writes `DIR/ca.crt` and `DIR/ca.key` (mode 0600),
/// creating `DIR` if needed. Refuses to overwrite either file unless `force`.
pub fn init_ca(out_dir: &Path, force: bool) -> Result<CaFiles, TlsError> {
    let files = CaFiles {
        cert: out_dir.join(CA_CERT_FILE),
        key: out_dir.join(CA_KEY_FILE),
    };
    // A new CA silently replacing the old one would strand every node certificate it
    // signed, so say so in the refusal.
    let note = "; every node certificate signed by the current CA would stop being trusted";
    if !force {
        refuse_existing(&[&files.key, &files.cert], note)?;
    }
    create_dir(out_dir)?;

    let generate = |reason: rcgen::Error| TlsError::Generate {
        path: files.cert.clone(),
        reason: reason.to_string(),
    };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    // Path length 0: the CA signs node certificates directly, never sub-CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY_DAYS, &files.cert)?;
    params.serial_number = Some(random_serial(&files.cert)?);
    let cert = params.self_signed(&key).map_err(generate)?;

    write_atomically(
        &files.key,
        key.serialize_pem().as_bytes(),
        KEY_FILE_MODE,
        force,
        note,
    )?;
    write_atomically(
        &files.cert,
        cert.pem().as_bytes(),
        CERT_FILE_MODE,
        force,
        note,
    )?;
    Ok(files)
}

/// `vigil cert issue --ca DIR --name NAME [--out DIR2]`: loads `DIR/ca.crt` and
/// `DIR/ca.key`, writes `OUT/NAME.crt` and `OUT/NAME.key` (mode 0600). The certificate's
/// only DNS SAN is `name`, its EKUs are serverAuth and clientAuth, it is valid for
/// `days` days and signed by the CA in `ca.crt` whose key is `ca.key` (so `ca.crt` may
/// list several CAs during a rotation). Refuses to overwrite unless `force`.
pub fn issue_node_cert(
    ca_dir: &Path,
    name: &NodeName,
    out_dir: &Path,
    days: u32,
    force: bool,
) -> Result<NodeCertFiles, TlsError> {
    let files = NodeCertFiles {
        cert: node_cert_path(out_dir, name),
        key: node_key_path(out_dir, name),
    };
    if days == 0 || days > MAX_CERT_DAYS {
        return Err(TlsError::InvalidValidity {
            path: files.cert,
            days,
        });
    }
    if !force {
        refuse_existing(&[&files.key, &files.cert], "")?;
    }

    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_certs = read_certs(&ca_cert_path, "the cluster CA certificate", || {
        TlsError::CaMissing {
            path: ca_cert_path.clone(),
            dir: ca_dir.to_path_buf(),
        }
    })?;
    let ca_key_der = read_key(&ca_key_path, || TlsError::CaKeyMissing {
        path: ca_key_path.clone(),
    })?;
    let ca_key = KeyPair::try_from(&ca_key_der).map_err(|e| TlsError::BadKey {
        path: ca_key_path.clone(),
        reason: e.to_string(),
    })?;
    let ca_cert = matching_ca_cert(&ca_certs, &ca_key, &ca_cert_path, &ca_key_path)?;
    let issuer =
        Issuer::from_ca_cert_der(ca_cert, ca_key).map_err(|e| TlsError::BadCertificate {
            path: ca_cert_path.clone(),
            reason: e.to_string(),
        })?;

    let generate = |reason: rcgen::Error| TlsError::Generate {
        path: files.cert.clone(),
        reason: reason.to_string(),
    };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::default();
    // Built by hand rather than with `CertificateParams::new`, which would turn anything
    // that parses as an IP address into an IP SAN.
    let dns_name = name.as_str().try_into().map_err(generate)?;
    params.subject_alt_names = vec![SanType::DnsName(dns_name)];
    params.distinguished_name = common_name(name.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // During a rotation several CAs share the same subject name; the authority key
    // identifier tells tools (and people) which one signed this certificate.
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, u64::from(days), &files.cert)?;
    params.serial_number = Some(random_serial(&files.cert)?);
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;

    create_dir(out_dir)?;
    write_atomically(
        &files.key,
        key.serialize_pem().as_bytes(),
        KEY_FILE_MODE,
        force,
        "",
    )?;
    write_atomically(
        &files.cert,
        cert.pem().as_bytes(),
        CERT_FILE_MODE,
        force,
        "",
    )?;
    Ok(files)
}

/// TLS configurations of one node, for quinn.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// The node these configurations present.
    pub name: NodeName,
    /// For quinn's listener: client certificates are required and must chain to a CA in
    /// `ca.crt` and name a valid node.
    pub server: Arc<rustls::ServerConfig>,
    /// For quinn dialing. Verifies that the server certificate chains to a CA in
    /// `ca.crt`. When the server name passed to `connect` is a node name, the
    /// certificate must name exactly that node; when it is [`SEED_SERVER_NAME`], any node
    /// the CA vouches for is accepted and [`peer_node_name`] says which one it was.
    /// Presents this node's certificate as client certificate.
    pub client: Arc<rustls::ClientConfig>,
    /// The wire versions `server` and `client` offer (ALPN), see
    /// [`NodeTls::with_wire_versions`].
    pub wire_versions: WireVersions,
    pki_dir: PathBuf,
}

impl NodeTls {
    /// These configurations, offering (as dialer) and accepting (as listener) the
    /// ALPN ids of `versions`, newest first. rustls' listener picks the first of its
    /// own list that the dialer offers, so a connection speaks the newest version
    /// both sides have; with none in common (or no ALPN offered at all) the listener
    /// refuses the handshake with a `no_application_protocol` alert (RFC 9001).
    pub fn with_wire_versions(mut self, versions: WireVersions) -> Self {
        let ids = alpn_protocols(versions);
        let mut server = (*self.server).clone();
        server.alpn_protocols = ids.clone();
        self.server = Arc::new(server);
        let mut client = (*self.client).clone();
        client.alpn_protocols = ids;
        self.client = Arc::new(client);
        self.wire_versions = versions;
        self
    }

    pub fn quinn_server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let crypto =
            QuicServerConfig::try_from(self.server.clone()).map_err(|source| TlsError::Quic {
                dir: self.pki_dir.clone(),
                source,
            })?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    pub fn quinn_client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let crypto =
            QuicClientConfig::try_from(self.client.clone()).map_err(|source| TlsError::Quic {
                dir: self.pki_dir.clone(),
                source,
            })?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }
}

/// Loads node `name`'s TLS configurations from `pki_dir`: `ca.crt` (every certificate in
/// it is trusted, which is how a CA rotation works), `NAME.crt` and `NAME.key`.
///
/// Fails with a specific error when the certificate names another node, does not chain
/// to a CA in `ca.crt`, is expired, does not match the key, or when the key file can be
/// read by other users.
pub fn load_node_tls(pki_dir: &Path, name: &NodeName) -> Result<NodeTls, TlsError> {
    let ca_path = pki_dir.join(CA_CERT_FILE);
    let cert_path = node_cert_path(pki_dir, name);
    let key_path = node_key_path(pki_dir, name);
    let node_missing = |path: &Path| TlsError::NodeFileMissing {
        path: path.to_path_buf(),
        dir: pki_dir.to_path_buf(),
        name: name.clone(),
    };

    let ca_certs = read_certs(&ca_path, "the cluster CA certificate", || {
        TlsError::CaMissing {
            path: ca_path.clone(),
            dir: pki_dir.to_path_buf(),
        }
    })?;
    let chain = read_certs(&cert_path, "this node's certificate", || {
        node_missing(&cert_path)
    })?;
    let key = read_key(&key_path, || node_missing(&key_path))?;

    let mut roots = RootCertStore::empty();
    for ca in ca_certs {
        roots.add(ca).map_err(|e| TlsError::BadCertificate {
            path: ca_path.clone(),
            reason: e.to_string(),
        })?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    // Checked before the chain so the most common mistake (copying another node's
    // files) gets the most specific message.
    let leaf = &chain[0];
    let names = dns_names(leaf).map_err(|reason| TlsError::BadCertificate {
        path: cert_path.clone(),
        reason,
    })?;
    if names.len() != 1 || names[0] != name.as_str() {
        return Err(TlsError::WrongName {
            path: cert_path,
            found: describe_names(&names),
            expected: name.clone(),
            dir: pki_dir.to_path_buf(),
        });
    }

    let server_verifier = Arc::new(NodeServerVerifier {
        roots: roots.clone(),
        algorithms: provider.signature_verification_algorithms,
    });
    let client_verifier = Arc::new(NodeClientVerifier {
        inner: WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::BadCertificate {
                path: ca_path.clone(),
                reason: e.to_string(),
            })?,
    });

    // Checking both directions now turns a certificate peers would reject into a
    // startup error instead of a node that runs but never manages to talk to anyone.
    let now = UnixTime::now();
    let as_server_name =
        ServerName::try_from(name.as_str().to_owned()).map_err(|e| TlsError::BadCertificate {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    server_verifier
        .verify_server_cert(leaf, &chain[1..], &as_server_name, &[], now)
        .map(|_| ())
        .and_then(|()| {
            client_verifier
                .verify_client_cert(leaf, &chain[1..], now)
                .map(|_| ())
        })
        .map_err(|reason| classify_rejection(reason, &cert_path, &ca_path, name))?;

    let config_error = |source: Error| TlsError::Config {
        dir: pki_dir.to_path_buf(),
        source,
    };
    let key_error = |source: Error| match source {
        Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert_path.clone(),
            key: key_path.clone(),
        },
        // What the key provider reports for a key it cannot parse.
        Error::General(reason) => TlsError::BadKey {
            path: key_path.clone(),
            reason,
        },
        source => config_error(source),
    };

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(key_error)?;
    server.alpn_protocols = alpn_protocols(WireVersions::DEFAULT);
    // Allows 0-RTT (see the module docs); QUIC accepts only 0 or u32::MAX here.
    server.max_early_data_size = u32::MAX;

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(key_error)?;
    client.alpn_protocols = alpn_protocols(WireVersions::DEFAULT);
    client.enable_early_data = true;

    Ok(NodeTls {
        name: name.clone(),
        server: Arc::new(server),
        client: Arc::new(client),
        wire_versions: WireVersions::DEFAULT,
        pki_dir: pki_dir.to_path_buf(),
    })
}

/// ALPN protocol id of wire version `version`: `vigil/N`.
pub fn alpn_id(version: u8) -> Vec<u8> {
    format!("{ALPN_PREFIX}{version}").into_bytes()
}

/// The ALPN ids of `versions`, newest first (the order of preference).
pub fn alpn_protocols(versions: WireVersions) -> Vec<Vec<u8>> {
    versions.newest_first().map(alpn_id).collect()
}

/// The wire version an ALPN id names, if it is a well-formed `vigil/N`.
pub fn wire_version_of_alpn(id: &[u8]) -> Option<u8> {
    let digits = id.strip_prefix(ALPN_PREFIX.as_bytes())?;
    // Canonical decimal only ("vigil/01" is not version 1), as `alpn_id` writes it.
    let text = std::str::from_utf8(digits).ok()?;
    let version: u8 = text.parse().ok()?;
    (version.to_string() == text).then_some(version)
}

/// The wire version a connection negotiated: the ALPN id its handshake chose. Pass
/// `connection.handshake_data()`. `None` when the handshake chose no vigil id (which
/// rustls does not let a QUIC handshake complete with, given our ALPN list).
pub fn negotiated_wire_version(handshake_data: Option<Box<dyn Any>>) -> Option<u8> {
    let data = handshake_data?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    wire_version_of_alpn(data.protocol.as_deref()?)
}

/// Why a peer's certificate does not prove a node name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerNameError {
    /// No certificate chain: the handshake is not complete, or the connection does not
    /// use vigil's TLS configuration.
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer's certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the peer's certificate has no DNS subject alternative name")]
    NoDnsName,
    #[error("the peer's certificate has several DNS names; a node certificate names one node")]
    SeveralNames,
    #[error("the peer's certificate does not name a valid node: the name {0}")]
    InvalidName(#[source] NameError),
}

impl PeerNameError {
    /// Short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::Unparsable(_) => "unparsable",
            Self::NoDnsName => "no_dns_name",
            Self::SeveralNames => "several_names",
            Self::InvalidName(_) => "invalid_name",
        }
    }
}

/// The node name a peer's certificate proves: the single DNS SAN of the leaf
/// certificate, validated as a [`NodeName`]. Pass `connection.peer_identity()`.
pub fn peer_node_name(peer_identity: Option<Box<dyn Any>>) -> Result<NodeName, PeerNameError> {
    let chain = peer_identity
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(PeerNameError::NoCertificate)?;
    let leaf = chain.first().ok_or(PeerNameError::NoCertificate)?;
    leaf_node_name(leaf)
}

fn leaf_node_name(leaf: &CertificateDer<'_>) -> Result<NodeName, PeerNameError> {
    let names = dns_names(leaf).map_err(PeerNameError::Unparsable)?;
    match names.as_slice() {
        [] => Err(PeerNameError::NoDnsName),
        [name] => NodeName::new(name).map_err(PeerNameError::InvalidName),
        _ => Err(PeerNameError::SeveralNames),
    }
}

fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| e.to_string())?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|general| match general {
                    x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn describe_names(names: &[String]) -> String {
    if names.is_empty() {
        return "no DNS name".to_owned();
    }
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn classify_rejection(reason: Error, cert: &Path, ca: &Path, name: &NodeName) -> TlsError {
    use CertificateError as E;
    let (path, name) = (cert.to_path_buf(), name.clone());
    match &reason {
        Error::InvalidCertificate(
            E::UnknownIssuer | E::BadSignature | E::UnsupportedSignatureAlgorithmContext { .. },
        ) => TlsError::UntrustedCertificate {
            path,
            ca: ca.to_path_buf(),
            name,
            reason,
        },
        Error::InvalidCertificate(
            E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. },
        ) => TlsError::CertificateNotCurrent { path, name, reason },
        // rustls' error enums are non-exhaustive; everything else (wrong key usage, a CA
        // certificate used as a node certificate, ...) gets the generic advice.
        _ => TlsError::CertificateRejected { path, name, reason },
    }
}

/// The dialer's check of the listener's certificate. Unlike rustls' stock webpki
/// verifier, it lets [`SEED_SERVER_NAME`] stand for "whichever node the CA vouches for".
#[derive(Debug)]
struct NodeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        // Checks the serverAuth EKU as well as the chain and validity period.
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )
        .map_err(same_name_issuer_is_unknown)?;
        leaf_node_name(end_entity).map_err(not_a_node)?;
        let dialing_seed =
            matches!(server_name, ServerName::DnsName(dns) if dns.as_ref() == SEED_SERVER_NAME);
        if !dialing_seed {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The listener's check of the dialer's certificate: webpki's (chain, clientAuth EKU,
/// validity), plus "it names exactly one valid node", so a certificate the CA issued
/// for something else never gets a connection to reach the membership layer.
#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[TlsDistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(same_name_issuer_is_unknown)?;
        leaf_node_name(end_entity).map_err(not_a_node)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Every vigil CA has the same subject name, so webpki finds a candidate issuer for a
/// certificate from another cluster's CA and reports the signature as bad. Reporting it
/// as an unknown issuer (alert `unknown_ca`) tells the operator what actually happened:
/// the peer belongs to another CA.
fn same_name_issuer_is_unknown(error: Error) -> Error {
    match error {
        Error::InvalidCertificate(CertificateError::BadSignature) => {
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        }
        other => other,
    }
}

fn not_a_node(error: PeerNameError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Makes `params` valid from now (minus the clock skew allowance) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u64, path: &Path) -> Result<(), TlsError> {
    // Last second X.509's GeneralizedTime can express (9999-12-31T23:59:59Z); staying
    // below it also keeps the date arithmetic from overflowing.
    const LAST_ENCODABLE_SECOND: u64 = 253_402_300_799;
    let clock = |reason: &str| TlsError::Generate {
        path: path.to_path_buf(),
        reason: format!("{reason}; fix this host's clock"),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| clock("the system clock is set before 1970"))?;
    let lifetime = Duration::from_secs(days * SECS_PER_DAY);
    if now.as_secs().saturating_add(lifetime.as_secs()) > LAST_ENCODABLE_SECOND {
        return Err(clock("the system clock is set too far in the future"));
    }
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(CLOCK_SKEW_ALLOWANCE);
    params.not_after = epoch + now + lifetime;
    Ok(())
}

/// A random positive serial number: RFC 5280 asks for unique serials, and random ones
/// need no state shared between the machines that issue certificates.
fn random_serial(path: &Path) -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| TlsError::Generate {
            path: path.to_path_buf(),
            reason: "the system random number generator failed".to_owned(),
        })?;
    // The top bit clear keeps the DER INTEGER positive.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The certificate in `ca.crt` that `ca.key` signs for. `ca.crt` can list several CAs
/// during a rotation; only the one with the key can issue.
fn matching_ca_cert<'a>(
    ca_certs: &'a [CertificateDer<'static>],
    ca_key: &KeyPair,
    cert_path: &Path,
    key_path: &Path,
) -> Result<&'a CertificateDer<'static>, TlsError> {
    for der in ca_certs {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
                path: cert_path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if parsed.public_key().subject_public_key.data.as_ref() != ca_key.public_key_raw() {
            continue;
        }
        if !parsed.is_ca() {
            return Err(TlsError::CaUnusable {
                path: cert_path.to_path_buf(),
                problem: "is not a CA certificate",
            });
        }
        if !parsed.validity().is_valid() {
            return Err(TlsError::CaUnusable {
                path: cert_path.to_path_buf(),
                problem: "is expired or not valid yet (check this host's clock)",
            });
        }
        return Ok(der);
    }
    Err(TlsError::CaKeyMismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
    })
}

fn refuse_existing(paths: &[&Path], note: &'static str) -> Result<(), TlsError> {
    for path in paths {
        match fs::symlink_metadata(path) {
            Ok(_) => {
                return Err(TlsError::AlreadyExists {
                    path: path.to_path_buf(),
                    note,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TlsError::Io {
                    action: "check",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` so that readers see either the old file or the complete
/// new one, never a torn write, and a crash right after returning cannot lose it.
fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
    note: &'static str,
) -> Result<(), TlsError> {
    let io_error = |action: &'static str| {
        move |source: io::Error| TlsError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // Created with its final mode, so a key is never readable by others, not even
    // briefly before a chmod.
    let mut temp = tempfile::Builder::new()
        .prefix(".vigil-tmp-")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_error("create a temporary file next to"))?;
    temp.write_all(contents).map_err(io_error("write"))?;
    temp.as_file().sync_all().map_err(io_error("sync"))?;
    if overwrite {
        temp.persist(path)
            .map_err(|e| e.error)
            .map_err(io_error("rename into"))?;
    } else {
        // No-clobber rename: another `vigil cert` racing with this one cannot have its
        // file silently replaced.
        temp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                TlsError::AlreadyExists {
                    path: path.to_path_buf(),
                    note,
                }
            } else {
                io_error("rename into")(e.error)
            }
        })?;
    }
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| TlsError::Io {
            action: "sync directory",
            path: dir.to_path_buf(),
            source,
        })
}

fn open(path: &Path, missing: impl FnOnce() -> TlsError) -> Result<File, TlsError> {
    File::open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            missing()
        } else {
            TlsError::Io {
                action: "open",
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn read_all(mut file: File, path: &Path) -> Result<Vec<u8>, TlsError> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| TlsError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

fn read_certs(
    path: &Path,
    expected: &'static str,
    missing: impl FnOnce() -> TlsError,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_all(open(path, missing)?, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            expected,
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            expected: "PEM CERTIFICATE block",
        });
    }
    Ok(certs)
}

fn read_key(
    path: &Path,
    missing: impl FnOnce() -> TlsError,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = open(path, missing)?;
    // Checked on the open file, not the path, so the mode is that of what is read.
    let metadata = file.metadata().map_err(|source| TlsError::Io {
        action: "inspect",
        path: path.to_path_buf(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & FORBIDDEN_KEY_MODE_BITS != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = read_all(file, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_path_buf(),
            expected: "PEM PRIVATE KEY block",
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            expected: "a private key",
            source,
        },
    })
}

impl fmt::Display for CaFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} and {}", self.cert.display(), self.key.display())
    }
}

impl fmt::Display for NodeCertFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} and {}", self.cert.display(), self.key.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> NodeName {
        NodeName::new(n).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// A PKI directory with a CA and certificates for `nodes`.
    fn pki(nodes: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), false).unwrap();
        for n in nodes {
            issue_node_cert(dir.path(), &name(n), dir.path(), 30, false).unwrap();
        }
        dir
    }

    fn leaf(path: &Path) -> CertificateDer<'static> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
    }

    fn copy_node_files(from: &Path, from_name: &str, to: &Path, to_name: &str) {
        for ext in ["crt", "key"] {
            let dst = to.join(format!("{to_name}.{ext}"));
            fs::copy(from.join(format!("{from_name}.{ext}")), &dst).unwrap();
            fs::set_permissions(&dst, Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[test]
    fn init_issue_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let ca = init_ca(&pki, false).unwrap();
        assert_eq!(ca.cert, pki.join("ca.crt"));
        assert_eq!(ca.key, pki.join("ca.key"));
        let files = issue_node_cert(&pki, &name("n1"), &pki, 90, false).unwrap();
        assert_eq!(files.cert, pki.join("n1.crt"));
        assert_eq!(files.key, pki.join("n1.key"));

        let tls = load_node_tls(&pki, &name("n1")).unwrap();
        assert_eq!(tls.name, name("n1"));
        assert_eq!(tls.server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(tls.client.alpn_protocols, vec![ALPN.to_vec()]);
        let next = tls.clone().with_wire_versions(WireVersions::WITH_NEXT);
        let newest_first = vec![b"vigil/2".to_vec(), b"vigil/1".to_vec()];
        assert_eq!(next.server.alpn_protocols, newest_first);
        assert_eq!(next.client.alpn_protocols, newest_first);
        tls.quinn_server_config().unwrap();
        tls.quinn_client_config().unwrap();

        let ca_der = leaf(&ca.cert);
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(ca_cert.is_ca());
        let constraints = ca_cert.basic_constraints().unwrap().unwrap().value;
        assert_eq!(constraints.path_len_constraint, Some(0));
        let ca_usage = ca_cert.key_usage().unwrap().unwrap().value;
        assert!(ca_usage.key_cert_sign() && ca_usage.crl_sign());
        assert!(ca_cert.subject().to_string().contains(CA_COMMON_NAME));
        let ca_days = ca_cert
            .validity()
            .time_to_expiration()
            .unwrap()
            .whole_days();
        assert!((3650..=3654).contains(&ca_days), "{ca_days}");

        let node_der = leaf(&files.cert);
        assert_eq!(leaf_node_name(&node_der), Ok(name("n1")));
        let (_, node) = x509_parser::parse_x509_certificate(&node_der).unwrap();
        assert!(!node.is_ca());
        assert!(node.subject().to_string().contains("CN=n1"));
        assert_eq!(node.issuer(), ca_cert.subject());
        let eku = node.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let days = node.validity().time_to_expiration().unwrap().whole_days();
        assert!((89..=90).contains(&days), "{days}");
        assert_eq!(
            node.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
    }

    #[test]
    fn alpn_ids_name_wire_versions() {
        assert_eq!(alpn_id(1), ALPN);
        assert_eq!(wire_version_of_alpn(b"vigil/1"), Some(1));
        assert_eq!(wire_version_of_alpn(b"vigil/2"), Some(2));
        assert_eq!(wire_version_of_alpn(b"vigil/255"), Some(255));
        for bad in [
            &b"vigil/"[..],
            b"vigil/01",
            b"vigil/256",
            b"vigil/+1",
            b"vigil/1 ",
            b"h3",
            b"",
            b"vigil/\xff",
        ] {
            assert_eq!(wire_version_of_alpn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn serial_numbers_differ_between_certificates() {
        let dir = pki(&["n1", "n2"]);
        let serial = |file: &str| {
            let der = leaf(&dir.path().join(file));
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            cert.raw_serial().to_vec()
        };
        assert_ne!(serial("n1.crt"), serial("n2.crt"));
        assert!(serial("n1.crt").len() >= 8);
    }

    #[test]
    fn load_refuses_a_certificate_issued_for_another_name() {
        let dir = pki(&["n2"]);
        copy_node_files(dir.path(), "n2", dir.path(), "n1");
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(matches!(&err, TlsError::WrongName { expected, .. } if expected.as_str() == "n1"));
        let message = err.to_string();
        assert!(
            message.contains(r#"names "n2" but this node is "n1""#),
            "{message}"
        );
        assert!(message.contains("vigil cert issue"), "{message}");
    }

    #[test]
    fn load_refuses_a_certificate_from_another_ca() {
        let ours = pki(&[]);
        let theirs = pki(&["n1"]);
        copy_node_files(theirs.path(), "n1", ours.path(), "n1");
        let err = load_node_tls(ours.path(), &name("n1")).unwrap_err();
        assert!(
            matches!(&err, TlsError::UntrustedCertificate { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }

    #[test]
    fn load_trusts_every_ca_listed_in_ca_crt() {
        let old = pki(&["n1"]);
        let new = pki(&[]);
        let mut both = fs::read(old.path().join(CA_CERT_FILE)).unwrap();
        both.extend(fs::read(new.path().join(CA_CERT_FILE)).unwrap());
        fs::write(new.path().join(CA_CERT_FILE), &both).unwrap();
        // n1 still has the old CA's certificate; n2 is issued by the new CA, chosen
        // among the two in ca.crt by ca.key.
        copy_node_files(old.path(), "n1", new.path(), "n1");
        issue_node_cert(new.path(), &name("n2"), new.path(), 30, false).unwrap();
        load_node_tls(new.path(), &name("n1")).unwrap();
        load_node_tls(new.path(), &name("n2")).unwrap();
    }

    #[test]
    fn issue_refuses_a_ca_key_that_matches_no_ca_certificate() {
        let a = pki(&[]);
        let b = pki(&[]);
        fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).unwrap();
        let err = issue_node_cert(a.path(), &name("n1"), a.path(), 30, false).unwrap_err();
        assert!(matches!(err, TlsError::CaKeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn overwrite_is_refused_without_force() {
        let dir = pki(&["n1"]);
        let ca_before = fs::read(dir.path().join("ca.crt")).unwrap();
        let err = init_ca(dir.path(), false).unwrap_err();
        assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err:?}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(dir.path().join("ca.crt")).unwrap(), ca_before);

        let node_before = fs::read(dir.path().join("n1.crt")).unwrap();
        let err = issue_node_cert(dir.path(), &name("n1"), dir.path(), 30, false).unwrap_err();
        assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err:?}");
        assert_eq!(fs::read(dir.path().join("n1.crt")).unwrap(), node_before);

        issue_node_cert(dir.path(), &name("n1"), dir.path(), 30, true).unwrap();
        assert_ne!(fs::read(dir.path().join("n1.crt")).unwrap(), node_before);
        load_node_tls(dir.path(), &name("n1")).unwrap();
        init_ca(dir.path(), true).unwrap();
        assert_ne!(fs::read(dir.path().join("ca.crt")).unwrap(), ca_before);
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".vigil-tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn key_files_are_written_with_mode_0600() {
        let dir = pki(&["n1"]);
        assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
        assert_eq!(mode(&dir.path().join("n1.key")), 0o600);
        // Certificates are public.
        assert_eq!(mode(&dir.path().join("n1.crt")) & 0o600, 0o600);
    }

    #[test]
    fn load_refuses_a_key_file_other_users_can_read() {
        let dir = pki(&["n1"]);
        let key = dir.path().join("n1.key");
        fs::set_permissions(&key, Permissions::from_mode(0o644)).unwrap();
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(
            matches!(err, TlsError::KeyPermissions { mode: 0o644, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        // Group access is the operator's call (e.g. a shared service group).
        fs::set_permissions(&key, Permissions::from_mode(0o640)).unwrap();
        load_node_tls(dir.path(), &name("n1")).unwrap();
    }

    #[test]
    fn issue_refuses_a_ca_key_other_users_can_read() {
        let dir = pki(&[]);
        let key = dir.path().join("ca.key");
        fs::set_permissions(&key, Permissions::from_mode(0o604)).unwrap();
        let err = issue_node_cert(dir.path(), &name("n1"), dir.path(), 30, false).unwrap_err();
        assert!(matches!(err, TlsError::KeyPermissions { .. }), "{err:?}");
    }

    #[test]
    fn load_refuses_a_key_that_does_not_belong_to_the_certificate() {
        let dir = pki(&["n1", "n2"]);
        fs::copy(dir.path().join("n2.key"), dir.path().join("n1.key")).unwrap();
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn missing_files_say_which_command_creates_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(matches!(err, TlsError::CaMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("vigil cert init --out"), "{err}");
        let err = issue_node_cert(dir.path(), &name("n1"), dir.path(), 30, false).unwrap_err();
        assert!(matches!(err, TlsError::CaMissing { .. }), "{err:?}");

        init_ca(dir.path(), false).unwrap();
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(matches!(err, TlsError::NodeFileMissing { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("vigil cert issue --ca CA_DIR --name n1"),
            "{err}"
        );
    }

    #[test]
    fn load_refuses_files_that_are_not_pem() {
        let dir = pki(&["n1"]);
        fs::write(dir.path().join("n1.crt"), "not a certificate\n").unwrap();
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(matches!(err, TlsError::Empty { .. }), "{err:?}");
        fs::write(
            dir.path().join("n1.crt"),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    }

    #[test]
    fn issue_refuses_zero_and_absurd_validity() {
        let dir = pki(&[]);
        for days in [0, MAX_CERT_DAYS + 1] {
            let err =
                issue_node_cert(dir.path(), &name("n1"), dir.path(), days, false).unwrap_err();
            assert!(matches!(err, TlsError::InvalidValidity { .. }), "{err:?}");
        }
    }

    /// A certificate signed by a fresh self-signed CA, with the given DNS SANs.
    fn cert_with_dns_names(names: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| SanType::DnsName((*n).try_into().unwrap()))
            .collect();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn identity(chain: Vec<CertificateDer<'static>>) -> Option<Box<dyn Any>> {
        Some(Box::new(chain))
    }

    #[test]
    fn peer_node_name_reads_the_single_dns_name() {
        let chain = vec![cert_with_dns_names(&["n7"])];
        assert_eq!(peer_node_name(identity(chain)), Ok(name("n7")));
    }

    #[test]
    fn peer_node_name_errors() {
        let cases: Vec<(Option<Box<dyn Any>>, &str)> = vec![
            (None, "no_certificate"),
            (Some(Box::new("not a chain")), "no_certificate"),
            (identity(vec![]), "no_certificate"),
            (
                identity(vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])]),
                "unparsable",
            ),
            (identity(vec![cert_with_dns_names(&[])]), "no_dns_name"),
            (
                identity(vec![cert_with_dns_names(&["n1", "n2"])]),
                "several_names",
            ),
            (identity(vec![cert_with_dns_names(&["N1"])]), "invalid_name"),
            (
                identity(vec![cert_with_dns_names(&["n1.example.com"])]),
                "invalid_name",
            ),
        ];
        for (i, (identity, kind)) in cases.into_iter().enumerate() {
            let err = peer_node_name(identity).unwrap_err();
            assert_eq!(err.kind(), kind, "case {i}: {err}");
        }
        // Labels are distinct, for metrics.
        let kinds = [
            PeerNameError::NoCertificate.kind(),
            PeerNameError::Unparsable(String::new()).kind(),
            PeerNameError::NoDnsName.kind(),
            PeerNameError::SeveralNames.kind(),
            PeerNameError::InvalidName(NameError::Empty).kind(),
        ];
        let unique: std::collections::BTreeSet<_> = kinds.iter().collect();
        assert_eq!(unique.len(), kinds.len());
    }

    #[test]
    fn server_verifier_takes_the_name_from_the_certificate_only_for_seeds() {
        let dir = pki(&["n1"]);
        let tls_roots = {
            let mut roots = RootCertStore::empty();
            roots.add(leaf(&dir.path().join("ca.crt"))).unwrap();
            Arc::new(roots)
        };
        let verifier = NodeServerVerifier {
            roots: tls_roots,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        let cert = leaf(&dir.path().join("n1.crt"));
        let verify = |server_name: &str| {
            let server_name = ServerName::try_from(server_name.to_owned()).unwrap();
            verifier.verify_server_cert(&cert, &[], &server_name, &[], UnixTime::now())
        };
        verify("n1").unwrap();
        verify(SEED_SERVER_NAME).unwrap();
        assert!(matches!(
            verify("n2"),
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ));
    }
}
