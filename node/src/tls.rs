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
//! Revocation: `crl.pem` in the PKI directory (optional) holds X.509 CRLs, at most one
//! per trusted CA, made by `vigil cert revoke` ([`crate::pki`]). Both verifiers check
//! the peer's certificate against them (webpki), so a revoked node completes no
//! handshake. A node reloads its PKI directory on SIGHUP or `POST /v1/tls/reload`
//! ([`NodeTls::reload`]); the transport then re-checks the peer certificate of every
//! open connection with [`NodeTls::verify_peer`].
//!
//! Reconnecting is cheap: both configurations keep rustls' default in-memory session
//! caches, so a node redialing a peer it talked to before resumes the session (no
//! certificate signatures or chain checks), and may send its first message in 0-RTT
//! (`quinn::Connecting::into_0rtt`). 0-RTT is safe to allow here because rustls only
//! accepts early data with its stateful, single-use ticket cache, so a replayed first
//! flight is refused within a listener process; the peer's identity in 0-RTT is the one
//! its certificate proved in the resumed session. A reload builds new configurations,
//! and with them empty session caches: no session resumed after a reload skips the
//! check against the new trust.
//!
//! Files in a PKI directory: `ca.crt` (the trusted CAs), `crl.pem` (optional),
//! `NAME.crt`, `NAME.key`; where certificates are issued also `ca.key` and `issued.txt`
//! (the serials this CA issued, for `vigil cert revoke --name`). Private keys are
//! written with mode 0600 and refused at load time when other users can access them.

use std::any::Any;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName as TlsDistinguishedName, Error,
    OtherError, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use vigil_protocol::wire::WireVersions;
use vigil_protocol::{NameError, NodeName};

use crate::transport::LogLimiter;

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
/// File name of the certificate revocation lists in a PKI directory (optional).
pub const CRL_FILE: &str = "crl.pem";
/// File, next to `ca.key`, listing every certificate that CA issued (serial, name,
/// expiry), so `vigil cert revoke --name` finds the serials of a node.
pub const ISSUED_FILE: &str = "issued.txt";

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
pub(crate) const CERT_FILE_MODE: u32 = 0o644;
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
        "the certificate at {} is revoked by {}: node {name} was taken out of the cluster; if that was a mistake, issue it a new certificate with `vigil cert issue --ca CA_DIR --name {name} --force`",
        path.display(), crl.display()
    )]
    CertificateRevoked {
        path: PathBuf,
        crl: PathBuf,
        name: NodeName,
    },
    #[error(
        "{} holds an invalid certificate revocation list ({reason}); restore it: it is the crl.pem `vigil cert revoke` wrote in the CA directory",
        path.display()
    )]
    BadCrl { path: PathBuf, reason: String },
    #[error(
        "{} holds a revocation list for \"{issuer}\" that no CA in {} signed; replace it with the crl.pem of that CA's directory, or remove it",
        path.display(), ca.display()
    )]
    CrlNotSigned {
        path: PathBuf,
        ca: PathBuf,
        issuer: String,
    },
    #[error(
        "{} holds two revocation lists of the CA \"{issuer}\"; keep one (`vigil cert trust add` keeps the newest)",
        path.display()
    )]
    DuplicateCrl { path: PathBuf, issuer: String },
    #[error(
        "{} trusts several CAs named \"{issuer}\" and {} holds a revocation list for that name, which cannot tell them apart; CAs made by `vigil cert init` of this version have unique names: rotate to one of those",
        ca.display(), path.display()
    )]
    AmbiguousCrl {
        path: PathBuf,
        ca: PathBuf,
        issuer: String,
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
    // A name of its own for every CA: webpki picks a certificate's revocation list by
    // issuer name, so two trusted CAs with one name (old and new during a rotation)
    // would have each other's lists checked against them and every certificate of one
    // refused. The date tells operators which CA is which in `vigil cert trust list`.
    let mut id = [0u8; 6];
    fill_random(&mut id, &files.cert)?;
    let mut distinguished_name = common_name(CA_COMMON_NAME);
    distinguished_name.push(
        DnType::OrganizationalUnitName,
        format!("created {} id {}", today(), hex(&id)),
    );
    params.distinguished_name = distinguished_name;
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
    let ca_fingerprint = sha256_hex(ca_cert);
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

    // Recorded before the files exist: a certificate the index does not list could
    // not be revoked by name.
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.der())
        .map_err(|e| generate_error(e, &files.cert))?;
    let entry = IssuedEntry {
        serial: hex(parsed.raw_serial()),
        name: name.clone(),
        not_after: rfc3339(parsed.validity().not_after.timestamp()),
        ca: ca_fingerprint,
    };
    append_issued(ca_dir, &entry)?;

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

fn generate_error(reason: impl fmt::Display, path: &Path) -> TlsError {
    TlsError::Generate {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// One line of a CA directory's [`ISSUED_FILE`]: `SERIAL NAME NOT_AFTER CA`, where CA
/// is the SHA-256 fingerprint of the issuing CA's certificate (a directory whose CA
/// was replaced with `init --force` keeps the old lines; they name the old CA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedEntry {
    /// The serial number in hex, as in the certificate's DER encoding.
    pub serial: String,
    pub name: NodeName,
    pub not_after: String,
    pub ca: String,
}

impl IssuedEntry {
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let serial = fields.next()?.to_owned();
        let name = NodeName::new(fields.next()?).ok()?;
        let not_after = fields.next()?.to_owned();
        let ca = fields.next()?.to_owned();
        Some(Self {
            serial,
            name,
            not_after,
            ca,
        })
    }
}

/// Appends `entry` to `ca_dir`'s [`ISSUED_FILE`] (created with a header) and syncs it.
fn append_issued(ca_dir: &Path, entry: &IssuedEntry) -> Result<(), TlsError> {
    let path = ca_dir.join(ISSUED_FILE);
    let io_error = |action: &'static str| {
        let path = path.clone();
        move |source: io::Error| TlsError::Io {
            action,
            path,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(CERT_FILE_MODE)
        .open(&path)
        .map_err(io_error("open"))?;
    let empty = file.metadata().map_err(io_error("inspect"))?.len() == 0;
    let mut text = String::new();
    if empty {
        text.push_str("# Certificates this CA issued: serial, node name, expiry, CA fingerprint (SHA-256).\n# `vigil cert revoke --name` reads it; keep it next to ca.key.\n");
    }
    text.push_str(&format!(
        "{} {} {} {}\n",
        entry.serial, entry.name, entry.not_after, entry.ca
    ));
    file.write_all(text.as_bytes()).map_err(io_error("write"))?;
    file.sync_all().map_err(io_error("sync"))
}

/// The lines of `ca_dir`'s [`ISSUED_FILE`] (none when it does not exist). Lines that
/// do not parse are skipped: the file is a record for people as much as for vigil.
pub fn read_issued(ca_dir: &Path) -> Result<Vec<IssuedEntry>, TlsError> {
    let path = ca_dir.join(ISSUED_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TlsError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(IssuedEntry::parse)
        .collect())
}

/// TLS configurations of one node, for quinn.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// The node these configurations present.
    pub name: NodeName,
    /// For quinn's listener: client certificates are required and must chain to a CA in
    /// `ca.crt`, not be revoked by `crl.pem`, and name a valid node.
    pub server: Arc<rustls::ServerConfig>,
    /// For quinn dialing. Verifies that the server certificate chains to a CA in
    /// `ca.crt` and is not revoked. When the server name passed to `connect` is a node
    /// name, the certificate must name exactly that node; when it is
    /// [`SEED_SERVER_NAME`], any node the CA vouches for is accepted and
    /// [`peer_node_name`] says which one it was. Presents this node's certificate as
    /// client certificate.
    pub client: Arc<rustls::ClientConfig>,
    /// The wire versions `server` and `client` offer (ALPN), see
    /// [`NodeTls::with_wire_versions`].
    pub wire_versions: WireVersions,
    pki_dir: PathBuf,
    /// The verifiers inside `server` and `client`, to check the peers of open
    /// connections again after a reload ([`NodeTls::verify_peer`]).
    server_verifier: Arc<NodeServerVerifier>,
    client_verifier: Arc<NodeClientVerifier>,
    own_cert: CertificateDer<'static>,
    summary: Arc<PkiSummary>,
    /// Rate-limits the verifiers' refusal lines; kept across reloads.
    log: Arc<LogLimiter>,
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

    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    /// What was loaded: this node's certificate, the trusted CAs, the revocation lists.
    pub fn summary(&self) -> &PkiSummary {
        &self.summary
    }

    /// Reads and checks the PKI directory again, exactly as at start, into new
    /// configurations. `self` is untouched, so a bad file set changes nothing.
    pub fn reload(&self) -> Result<NodeTls, TlsError> {
        // The wire versions are a setting of the node, not of the PKI files.
        load(&self.pki_dir, &self.name, Arc::clone(&self.log))
            .map(|tls| tls.with_wire_versions(self.wire_versions))
    }

    /// Whether `other` presents the same certificate as this one.
    pub fn same_certificate(&self, other: &NodeTls) -> bool {
        self.own_cert == other.own_cert
    }

    /// Checks the certificate chain a peer presented on an open connection (pass
    /// `connection.peer_identity()`) against this configuration's trust, now: it must
    /// chain to a trusted CA, be current, not be revoked, and name node `name`.
    /// `dialed_by_us` says which side's check the handshake made (server certificate
    /// when we dialed, client certificate when we accepted), and so which is redone.
    pub fn verify_peer(
        &self,
        peer_identity: Option<Box<dyn Any>>,
        name: &NodeName,
        dialed_by_us: bool,
    ) -> Result<(), PeerRefusal> {
        let chain = peer_identity
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or_else(|| PeerRefusal::new(Error::NoCertificatesPresented))?;
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(PeerRefusal::new(Error::NoCertificatesPresented));
        };
        let now = UnixTime::now();
        let verified = if dialed_by_us {
            let server_name = ServerName::try_from(name.as_str().to_owned())
                .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName));
            server_name.and_then(|server_name| {
                self.server_verifier
                    .check(leaf, intermediates, &server_name, now)
            })
        } else {
            self.client_verifier.check(leaf, intermediates, now)
        };
        verified.map_err(PeerRefusal::new)?;
        match leaf_node_name(leaf) {
            Ok(found) if found == *name => Ok(()),
            Ok(_) => Err(PeerRefusal::new(Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))),
            Err(e) => Err(PeerRefusal::new(not_a_node(e))),
        }
    }
}

/// Why an open connection's peer no longer verifies ([`NodeTls::verify_peer`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} ({error})", describe_refusal(self.kind))]
pub struct PeerRefusal {
    kind: &'static str,
    error: Error,
}

impl PeerRefusal {
    fn new(error: Error) -> Self {
        Self {
            kind: refusal_kind(&error),
            error,
        }
    }

    /// Short, stable label for metrics (the same labels as handshake refusals).
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// Label of a certificate refusal, for metrics and logs. The handshake refusals the
/// transport counts from TLS alerts use the same labels.
pub fn refusal_kind(error: &Error) -> &'static str {
    use CertificateError as E;
    match error {
        Error::InvalidCertificate(cert) => match cert {
            E::Revoked => "revoked",
            E::UnknownIssuer | E::BadSignature => "unknown_ca",
            E::Expired | E::ExpiredContext { .. } => "expired",
            E::NotValidYet | E::NotValidYetContext { .. } => "not_yet_valid",
            E::NotValidForName | E::NotValidForNameContext { .. } => "wrong_name",
            E::Other(_) => "not_a_node",
            // Non-exhaustive: anything else (key usage, encoding) is "bad".
            _ => "bad_certificate",
        },
        Error::NoCertificatesPresented => "no_certificate",
        _ => "bad_certificate",
    }
}

/// What a refusal label means, for people.
fn describe_refusal(kind: &str) -> &'static str {
    match kind {
        "revoked" => "its certificate is revoked (listed in crl.pem)",
        "unknown_ca" => "its certificate is not signed by any CA in ca.crt",
        "expired" => "its certificate has expired",
        "not_yet_valid" => "its certificate is not valid yet (check the clocks)",
        "wrong_name" => "its certificate names another node",
        "not_a_node" => "its certificate does not name exactly one valid node",
        "no_certificate" => "it presented no certificate",
        _ => "its certificate is unusable",
    }
}

/// What a node loaded from its PKI directory (the answer of `POST /v1/tls/reload`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PkiSummary {
    /// The PKI directory.
    pub pki: String,
    /// This node's certificate.
    pub certificate: CertSummary,
    /// The trusted CAs (`ca.crt`).
    pub trusted: Vec<CertSummary>,
    /// The revocation lists in use (`crl.pem`).
    pub crls: Vec<CrlSummary>,
    /// Issuers of revocation lists in `crl.pem` that no trusted CA has: they cannot
    /// apply to any certificate the node accepts, so they are left out.
    pub ignored_crls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    /// Serial number in hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, in hex.
    pub fingerprint: String,
    /// RFC 3339.
    pub not_after: String,
    /// The same, as Unix time.
    pub not_after_unix: i64,
}

impl CertSummary {
    pub(crate) fn of(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: hex(cert.raw_serial()),
            fingerprint: sha256_hex(der),
            not_after: rfc3339(cert.validity().not_after.timestamp()),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CrlSummary {
    pub issuer: String,
    /// The CRL number (each `vigil cert revoke` adds one).
    pub number: Option<String>,
    /// RFC 3339.
    pub this_update: String,
    pub next_update: Option<String>,
    /// Serial numbers (hex) of the revoked certificates.
    pub revoked: Vec<String>,
}

impl CrlSummary {
    pub(crate) fn of(crl: &x509_parser::revocation_list::CertificateRevocationList<'_>) -> Self {
        Self {
            issuer: crl.issuer().to_string(),
            number: crl.crl_number().map(ToString::to_string),
            this_update: rfc3339(crl.last_update().timestamp()),
            next_update: crl.next_update().map(|t| rfc3339(t.timestamp())),
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| hex(r.raw_serial()))
                .collect(),
        }
    }
}

/// Loads node `name`'s TLS configurations from `pki_dir`: `ca.crt` (every certificate in
/// it is trusted, which is how a CA rotation works), `crl.pem` if present, `NAME.crt`
/// and `NAME.key`.
///
/// Fails with a specific error when the certificate names another node, does not chain
/// to a CA in `ca.crt`, is expired or revoked, does not match the key, when the key
/// file can be read by other users, or when a revocation list is not signed by the CA
/// it names.
pub fn load_node_tls(pki_dir: &Path, name: &NodeName) -> Result<NodeTls, TlsError> {
    load(pki_dir, name, Arc::new(LogLimiter::default()))
}

fn load(pki_dir: &Path, name: &NodeName, log: Arc<LogLimiter>) -> Result<NodeTls, TlsError> {
    let ca_path = pki_dir.join(CA_CERT_FILE);
    let crl_path = pki_dir.join(CRL_FILE);
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
    let crls = read_crls(&crl_path, &ca_path, &ca_certs)?;

    let mut roots = RootCertStore::empty();
    let mut trusted = Vec::new();
    for ca in ca_certs {
        let bad_ca = |reason: String| TlsError::BadCertificate {
            path: ca_path.clone(),
            reason,
        };
        trusted.push(CertSummary::of(&ca).map_err(bad_ca)?);
        roots.add(ca).map_err(|e| bad_ca(e.to_string()))?;
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

    let verifier_error = |e: rustls::server::VerifierBuilderError| match e {
        rustls::server::VerifierBuilderError::InvalidCrl(reason) => TlsError::BadCrl {
            path: crl_path.clone(),
            reason: format!("{reason:?}"),
        },
        other => TlsError::BadCertificate {
            path: ca_path.clone(),
            reason: other.to_string(),
        },
    };
    // Revocation: only the node certificate is checked (the CA signs node certificates
    // directly), and a certificate whose CA has no list in crl.pem is accepted (the
    // file is optional, and may list only some CAs). A list past its next update still
    // applies: it can only be missing newer revocations.
    let server_verifier = Arc::new(NodeServerVerifier {
        inner: WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls.ders.iter().cloned())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(verifier_error)?,
        log: Arc::clone(&log),
    });
    let client_verifier = Arc::new(NodeClientVerifier {
        inner: WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .with_crls(crls.ders.iter().cloned())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(verifier_error)?,
        log: Arc::clone(&log),
    });

    // Checking both directions now turns a certificate peers would reject into a
    // startup (or reload) error instead of a node that runs but never manages to talk
    // to anyone.
    let now = UnixTime::now();
    let as_server_name =
        ServerName::try_from(name.as_str().to_owned()).map_err(|e| TlsError::BadCertificate {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    server_verifier
        .check(leaf, &chain[1..], &as_server_name, now)
        .and_then(|()| client_verifier.check(leaf, &chain[1..], now))
        .map_err(|reason| classify_rejection(reason, &cert_path, &ca_path, &crl_path, name))?;

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

    let summary = PkiSummary {
        pki: pki_dir.display().to_string(),
        certificate: CertSummary::of(leaf).map_err(|reason| TlsError::BadCertificate {
            path: cert_path.clone(),
            reason,
        })?,
        trusted,
        crls: crls.summaries,
        ignored_crls: crls.ignored,
    };
    let own_cert = leaf.clone();

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(client_verifier.clone())
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(key_error)?;
    server.alpn_protocols = alpn_protocols(WireVersions::DEFAULT);
    // Allows 0-RTT (see the module docs); QUIC accepts only 0 or u32::MAX here.
    server.max_early_data_size = u32::MAX;

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier.clone())
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
        server_verifier,
        client_verifier,
        own_cert,
        summary: Arc::new(summary),
        log,
    })
}

/// The usable revocation lists of a PKI directory.
#[derive(Default)]
struct LoadedCrls {
    ders: Vec<CertificateRevocationListDer<'static>>,
    summaries: Vec<CrlSummary>,
    ignored: Vec<String>,
}

/// Reads `crl.pem` (absent: no revocation) and checks each list against the trusted
/// CAs: it must be signed by the trusted CA whose name it carries, one list per CA.
/// webpki finds a certificate's list by issuer name and only then checks the list's
/// signature, so a list it cannot attribute to exactly one CA would refuse every
/// certificate of that CA; it is refused here instead, with the reason.
fn read_crls(
    path: &Path,
    ca_path: &Path,
    ca_certs: &[CertificateDer<'static>],
) -> Result<LoadedCrls, TlsError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadedCrls::default()),
        Err(source) => {
            return Err(TlsError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let bad = |reason: String| TlsError::BadCrl {
        path: path.to_path_buf(),
        reason,
    };
    let ders = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let mut cas = Vec::new();
    for der in ca_certs {
        let (_, ca) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
                path: ca_path.to_path_buf(),
                reason: e.to_string(),
            })?;
        cas.push(ca);
    }
    let mut loaded = LoadedCrls::default();
    let mut issuers: Vec<Vec<u8>> = Vec::new();
    for der in ders {
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| bad(e.to_string()))?;
        let issuer = crl.issuer().to_string();
        let mut keys: Vec<&[u8]> = cas
            .iter()
            .filter(|ca| ca.subject().as_raw() == crl.issuer().as_raw())
            .map(|ca| ca.public_key().raw)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let signer = match keys.as_slice() {
            [] => {
                loaded.ignored.push(issuer);
                continue;
            }
            [_] => cas
                .iter()
                .find(|ca| ca.subject().as_raw() == crl.issuer().as_raw()),
            _ => {
                return Err(TlsError::AmbiguousCrl {
                    path: path.to_path_buf(),
                    ca: ca_path.to_path_buf(),
                    issuer,
                });
            }
        };
        let signed = signer.is_some_and(|ca| crl.verify_signature(ca.public_key()).is_ok());
        if !signed {
            return Err(TlsError::CrlNotSigned {
                path: path.to_path_buf(),
                ca: ca_path.to_path_buf(),
                issuer,
            });
        }
        let raw_issuer = crl.issuer().as_raw().to_vec();
        if issuers.contains(&raw_issuer) {
            return Err(TlsError::DuplicateCrl {
                path: path.to_path_buf(),
                issuer,
            });
        }
        issuers.push(raw_issuer);
        loaded.summaries.push(CrlSummary::of(&crl));
        loaded.ders.push(der);
    }
    Ok(loaded)
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

pub(crate) fn leaf_node_name(leaf: &CertificateDer<'_>) -> Result<NodeName, PeerNameError> {
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

fn classify_rejection(
    reason: Error,
    cert: &Path,
    ca: &Path,
    crl: &Path,
    name: &NodeName,
) -> TlsError {
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
        Error::InvalidCertificate(E::Revoked) => TlsError::CertificateRevoked {
            path,
            crl: crl.to_path_buf(),
            name,
        },
        // rustls' error enums are non-exhaustive; everything else (wrong key usage, a CA
        // certificate used as a node certificate, ...) gets the generic advice.
        _ => TlsError::CertificateRejected { path, name, reason },
    }
}

/// Logs a certificate a verifier refused during a handshake, naming the node when
/// the certificate names one, at most once per ten seconds per kind of refusal (the
/// transport counts the refusal, from the TLS alert, in `vigil_tls_rejected_total`).
fn log_refusal(log: &LogLimiter, end_entity: &CertificateDer<'_>, error: &Error, when: &str) {
    let kind = refusal_kind(error);
    let key = match kind {
        "revoked" => "tls_refused_revoked",
        "unknown_ca" => "tls_refused_unknown_ca",
        "expired" | "not_yet_valid" => "tls_refused_not_current",
        _ => "tls_refused_other",
    };
    let who =
        leaf_node_name(end_entity).map_or_else(|_| "a peer".to_owned(), |n| format!("node {n}"));
    let serial = x509_parser::parse_x509_certificate(end_entity)
        .map_or_else(|_| "unparsable".to_owned(), |(_, c)| hex(c.raw_serial()));
    log.warn(
        key,
        format_args!(
            "refused {who} {when}: {} (serial {serial}, reason={kind}: {error})",
            describe_refusal(kind)
        ),
    );
}

/// The dialer's check of the listener's certificate: webpki's (chain, serverAuth EKU,
/// validity, revocation, name), except that [`SEED_SERVER_NAME`] stands for "whichever
/// node the CA vouches for".
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    log: Arc<LogLimiter>,
}

impl NodeServerVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), Error> {
        let dialing_seed =
            matches!(server_name, ServerName::DnsName(dns) if dns.as_ref() == SEED_SERVER_NAME);
        if dialing_seed {
            // Checked against the name it carries, so everything but the name is checked.
            let node = leaf_node_name(end_entity).map_err(not_a_node)?;
            let own = ServerName::try_from(node.as_str().to_owned())
                .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName))?;
            self.inner
                .verify_server_cert(end_entity, intermediates, &own, &[], now)
                .map_err(same_name_issuer_is_unknown)?;
        } else {
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, &[], now)
                .map_err(same_name_issuer_is_unknown)?;
            leaf_node_name(end_entity).map_err(not_a_node)?;
        }
        Ok(())
    }
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
        self.check(end_entity, intermediates, server_name, now)
            .inspect_err(|e| log_refusal(&self.log, end_entity, e, "(we dialed it)"))?;
        Ok(ServerCertVerified::assertion())
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

/// The listener's check of the dialer's certificate: webpki's (chain, clientAuth EKU,
/// validity, revocation), plus "it names exactly one valid node", so a certificate
/// the CA issued for something else never gets a connection to reach the membership
/// layer.
#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    log: Arc<LogLimiter>,
}

impl NodeClientVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(same_name_issuer_is_unknown)?;
        leaf_node_name(end_entity).map_err(not_a_node)?;
        Ok(())
    }
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
        self.check(end_entity, intermediates, now)
            .inspect_err(|e| log_refusal(&self.log, end_entity, e, "(it dialed us)"))?;
        Ok(ClientCertVerified::assertion())
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

/// CAs made by older versions of vigil all have the same subject name, so webpki finds
/// a candidate issuer for a certificate from another cluster's CA and reports the
/// signature as bad. Reporting it
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
    fill_random(&mut bytes, path)?;
    // The top bit clear keeps the DER INTEGER positive.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn fill_random(bytes: &mut [u8], path: &Path) -> Result<(), TlsError> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(bytes)
        .map_err(|_| TlsError::Generate {
            path: path.to_path_buf(),
            reason: "the system random number generator failed".to_owned(),
        })
}

/// Lower-case hex, no separators (how serials and fingerprints are printed).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// SHA-256 of `data` in hex: a certificate's fingerprint, as `openssl x509
/// -fingerprint -sha256` prints it (without the colons). Uses the hash of rustls'
/// crypto provider rather than another crate for one function.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => {
            hex(suite.common.hash_provider.hash(data).as_ref())
        }
        rustls::SupportedCipherSuite::Tls12(_) => String::new(),
    }
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(i64::try_from(secs).unwrap_or(0))
        .get(..10)
        .unwrap_or("")
        .to_owned()
}

/// A Unix time as RFC 3339 (UTC), or the number when it is out of range.
pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The certificate in `ca.crt` that `ca.key` signs for. `ca.crt` can list several CAs
/// during a rotation; only the one with the key can issue.
pub(crate) fn matching_ca_cert<'a>(
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
pub(crate) fn write_atomically(
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

pub(crate) fn read_certs(
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

pub(crate) fn read_key(
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
        // A reload (SIGHUP) keeps speaking the same versions.
        let reloaded = next.reload().unwrap();
        assert_eq!(reloaded.wire_versions, WireVersions::WITH_NEXT);
        assert_eq!(reloaded.server.alpn_protocols, newest_first);
        assert_eq!(reloaded.client.alpn_protocols, newest_first);
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
        let dir = pki(&["n1", "n2"]);
        let tls = load_node_tls(dir.path(), &name("n2")).unwrap();
        let cert = leaf(&dir.path().join("n1.crt"));
        let verify = |server_name: &str| {
            let server_name = ServerName::try_from(server_name.to_owned()).unwrap();
            tls.server_verifier
                .check(&cert, &[], &server_name, UnixTime::now())
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

    fn chain_of(path: &Path) -> Option<Box<dyn Any>> {
        identity(vec![leaf(path)])
    }

    #[test]
    fn every_ca_gets_a_name_of_its_own() {
        let a = pki(&[]);
        let b = pki(&[]);
        let subject = |dir: &Path| {
            let der = leaf(&dir.join(CA_CERT_FILE));
            let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
            ca.subject().to_string()
        };
        assert_ne!(subject(a.path()), subject(b.path()));
        assert!(
            subject(a.path()).contains("created "),
            "{}",
            subject(a.path())
        );
    }

    #[test]
    fn issue_records_each_certificate_in_the_ca_directory() {
        let dir = pki(&["n1", "n2"]);
        issue_node_cert(dir.path(), &name("n1"), dir.path(), 30, true).unwrap();
        let issued = read_issued(dir.path()).unwrap();
        let names: Vec<&str> = issued.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n1"]);
        let ca = sha256_hex(&leaf(&dir.path().join(CA_CERT_FILE)));
        assert!(issued.iter().all(|e| e.ca == ca));
        // The last line is the certificate now in n1.crt.
        let summary = CertSummary::of(&leaf(&dir.path().join("n1.crt"))).unwrap();
        assert_eq!(issued[2].serial, summary.serial);
        assert_ne!(issued[0].serial, issued[2].serial);
    }

    #[test]
    fn verify_peer_follows_the_trust_of_the_configuration() {
        let dir = pki(&["n1", "n2"]);
        let tls = load_node_tls(dir.path(), &name("n1")).unwrap();
        let n2 = dir.path().join("n2.crt");
        tls.verify_peer(chain_of(&n2), &name("n2"), true).unwrap();
        tls.verify_peer(chain_of(&n2), &name("n2"), false).unwrap();
        // Installed under another name, or with no certificate at all.
        let err = tls
            .verify_peer(chain_of(&n2), &name("n3"), false)
            .unwrap_err();
        assert_eq!(err.kind(), "wrong_name");
        let err = tls
            .verify_peer(chain_of(&n2), &name("n3"), true)
            .unwrap_err();
        assert_eq!(err.kind(), "wrong_name");
        assert_eq!(
            tls.verify_peer(None, &name("n2"), true).unwrap_err().kind(),
            "no_certificate"
        );

        // A node of another CA.
        let other = pki(&["n2"]);
        let err = tls
            .verify_peer(chain_of(&other.path().join("n2.crt")), &name("n2"), false)
            .unwrap_err();
        assert_eq!(err.kind(), "unknown_ca");
        assert!(err.to_string().contains("not signed by any CA"), "{err}");
    }

    #[test]
    fn a_revoked_certificate_is_refused_by_peers_and_at_its_own_load() {
        let dir = pki(&["n1", "n2"]);
        let before = load_node_tls(dir.path(), &name("n1")).unwrap();
        crate::pki::revoke(dir.path(), &crate::pki::RevokeTarget::Name(name("n2")), 30).unwrap();

        // The configuration loaded before the revocation still accepts n2; a reload
        // reads crl.pem and refuses it, both ways.
        let n2 = dir.path().join("n2.crt");
        before
            .verify_peer(chain_of(&n2), &name("n2"), true)
            .unwrap();
        let after = before.reload().unwrap();
        assert_eq!(after.summary().crls.len(), 1);
        assert_eq!(after.summary().crls[0].revoked.len(), 1);
        for dialed_by_us in [true, false] {
            let err = after
                .verify_peer(chain_of(&n2), &name("n2"), dialed_by_us)
                .unwrap_err();
            assert_eq!(err.kind(), "revoked", "{err}");
        }
        after
            .verify_peer(chain_of(&dir.path().join("n1.crt")), &name("n1"), false)
            .unwrap();

        let err = load_node_tls(dir.path(), &name("n2")).unwrap_err();
        assert!(
            matches!(err, TlsError::CertificateRevoked { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("crl.pem"), "{err}");
        // A new certificate for the same name is not revoked.
        issue_node_cert(dir.path(), &name("n2"), dir.path(), 30, true).unwrap();
        load_node_tls(dir.path(), &name("n2")).unwrap();
    }

    /// A CA with the same name as the one in `dir` but another key (what two CAs of
    /// older vigil versions look like), as PEM.
    fn same_name_ca(dir: &Path) -> (String, Issuer<'static, KeyPair>) {
        let der = leaf(&dir.join(CA_CERT_FILE));
        let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for cn in ca.subject().iter_common_name() {
            dn.push(DnType::CommonName, cn.as_str().unwrap());
        }
        for ou in ca.subject().iter_organizational_unit() {
            dn.push(DnType::OrganizationalUnitName, ou.as_str().unwrap());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            x509_parser::parse_x509_certificate(cert.der())
                .unwrap()
                .1
                .subject()
                .as_raw(),
            ca.subject().as_raw()
        );
        let issuer = Issuer::from_ca_cert_der(cert.der(), key).unwrap();
        (cert.pem(), issuer)
    }

    fn crl_pem(issuer: &Issuer<'_, KeyPair>) -> String {
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::from_secs(3600),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    #[test]
    fn revocation_lists_that_no_trusted_ca_signed_are_refused_or_ignored() {
        let dir = pki(&["n1"]);
        // Signed by a key that is not the CA's, under the CA's name: a forgery.
        let (_, impostor) = same_name_ca(dir.path());
        fs::write(dir.path().join(CRL_FILE), crl_pem(&impostor)).unwrap();
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(matches!(err, TlsError::CrlNotSigned { .. }), "{err:?}");

        // From a CA this node does not trust: cannot apply, left out and reported.
        let other = pki(&[]);
        crate::pki::revoke(
            other.path(),
            &crate::pki::RevokeTarget::Serial("01".into()),
            30,
        )
        .unwrap();
        fs::copy(other.path().join(CRL_FILE), dir.path().join(CRL_FILE)).unwrap();
        let tls = load_node_tls(dir.path(), &name("n1")).unwrap();
        assert!(tls.summary().crls.is_empty());
        assert_eq!(tls.summary().ignored_crls.len(), 1);

        fs::write(
            dir.path().join(CRL_FILE),
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(matches!(err, TlsError::BadCrl { .. }), "{err:?}");
    }

    #[test]
    fn a_revocation_list_for_two_same_name_cas_is_refused() {
        let dir = pki(&["n1"]);
        let (twin, twin_issuer) = same_name_ca(dir.path());
        let mut bundle = fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        bundle.push_str(&twin);
        fs::write(dir.path().join(CA_CERT_FILE), bundle).unwrap();
        // Without revocation lists, two same-name CAs are fine.
        load_node_tls(dir.path(), &name("n1")).unwrap();
        fs::write(dir.path().join(CRL_FILE), crl_pem(&twin_issuer)).unwrap();
        let err = load_node_tls(dir.path(), &name("n1")).unwrap_err();
        assert!(matches!(err, TlsError::AmbiguousCrl { .. }), "{err:?}");
    }
}
