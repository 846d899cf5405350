//! The operator's side of the PKI files (`vigil cert trust` and `vigil cert revoke`):
//! which CAs and revocation lists a node's PKI directory trusts, and a CA's revocation
//! list. Nothing here runs inside a node: a node reads these files at start and on
//! reload ([`crate::tls::NodeTls::reload`]).
//!
//! A node's PKI directory holds `ca.crt` (the trusted CAs, PEM, any number) and
//! `crl.pem` (revocation lists, PEM, at most one per CA). A CA directory (where
//! `vigil cert init` ran) holds `ca.crt`, `ca.key`, `issued.txt` and the CA's own
//! `crl.pem`, which `vigil cert revoke` keeps up to date and which is copied into the
//! nodes' directories with `vigil cert trust add`.
//!
//! Files are rewritten whole, atomically (a node reloading at the same moment reads the
//! old or the new file, never half of one), and each block keeps its original PEM text.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use vigil_protocol::NodeName;
use x509_parser::certificate::X509Certificate;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::tls::{
    self, CA_CERT_FILE, CA_KEY_FILE, CRL_FILE, CertSummary, CrlSummary, TlsError, hex, sha256_hex,
};

/// Longest revocation list validity `revoke` accepts, in days.
pub const MAX_CRL_DAYS: u32 = 3653;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds no CA certificate and no revocation list (PEM CERTIFICATE or X509 CRL blocks); check that it is the right file", path.display())]
    NothingToAdd { path: PathBuf },
    #[error(
        "{} holds a certificate that is not a CA certificate (\"{subject}\"); trust the CA's ca.crt, not a node certificate",
        path.display()
    )]
    NotACa { path: PathBuf, subject: String },
    #[error(
        "{} holds a PEM block that cannot be read ({reason}); check that it is the right file",
        path.display()
    )]
    BadPem { path: PathBuf, reason: String },
    #[error(
        "the revocation list of \"{issuer}\" in {} is older (number {new}) than the one installed (number {installed}); install the newest crl.pem from the CA directory",
        path.display()
    )]
    OlderCrl {
        path: PathBuf,
        issuer: String,
        new: String,
        installed: String,
    },
    #[error(
        "the revocation list of \"{issuer}\" in {} is not signed by any CA in {}; add that CA first (`vigil cert trust add --pki DIR CA_DIR/ca.crt`)",
        path.display(), ca.display()
    )]
    CrlIssuerNotTrusted {
        path: PathBuf,
        ca: PathBuf,
        issuer: String,
    },
    #[error("no CA in {} matches {selector}; `vigil cert trust list --pki DIR` shows the fingerprints", path.display())]
    NoSuchCa { path: PathBuf, selector: String },
    #[error(
        "removing {} would leave {} without any trusted CA: a node needs at least one",
        what, path.display()
    )]
    LastCa { path: PathBuf, what: String },
    #[error(
        "{} signed {}, which no other trusted CA did: a node with it could neither start nor reload. Issue them from the new CA first (`vigil cert issue --ca NEW_CA_DIR --name NAME --out DIR --force`), or pass --force",
        what, files.join(", ")
    )]
    StillInUse { what: String, files: Vec<String> },
    #[error(
        "{selector:?} is not a serial number: give it in hex, as `vigil cert trust list` or `openssl x509 -serial` print it"
    )]
    BadSerial { selector: String },
    #[error(
        "no certificate for node {name} found: {} lists none from this CA and {} does not exist or is from another CA; pass --serial or --cert",
        issued.display(), cert.display()
    )]
    NothingToRevoke {
        name: NodeName,
        issued: PathBuf,
        cert: PathBuf,
    },
    #[error("{} was not issued by the CA in {}; revoke it with the CA that signed it", path.display(), ca.display())]
    NotIssuedHere { path: PathBuf, ca: PathBuf },
    #[error("revocation list validity of {days} days is out of range (1 to {MAX_CRL_DAYS})")]
    InvalidCrlDays { days: u32 },
    #[error("could not generate the revocation list {}: {reason}", path.display())]
    Generate { path: PathBuf, reason: String },
}

/// A PEM block of a file, with its original text.
struct Block {
    kind: SectionKind,
    der: Vec<u8>,
    text: String,
}

/// The PEM blocks of `text`, each with its own text (`-----BEGIN` to `-----END`
/// lines). Decoding is pki-types'; this only finds where each block starts and ends,
/// so a rewritten file keeps the other blocks byte for byte.
fn blocks(text: &str, path: &Path) -> Result<Vec<Block>, PkiError> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(trimmed);
            block.push('\n');
        }
        if trimmed.starts_with("-----END ")
            && let Some(block) = current.take()
        {
            let (kind, der) =
                <(SectionKind, Vec<u8>)>::from_pem_slice(block.as_bytes()).map_err(|e| {
                    PkiError::BadPem {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    }
                })?;
            out.push(Block {
                kind,
                der,
                text: block,
            });
        }
    }
    Ok(out)
}

/// The text of `path`, or `None` when it does not exist.
fn read_text(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_blocks(path: &Path) -> Result<Vec<Block>, PkiError> {
    match read_text(path)? {
        Some(text) => blocks(&text, path),
        None => Ok(Vec::new()),
    }
}

fn write_blocks(path: &Path, blocks: &[&Block]) -> Result<(), PkiError> {
    let text: String = blocks.iter().map(|b| b.text.as_str()).collect();
    tls::write_atomically(path, text.as_bytes(), tls::CERT_FILE_MODE, true, "")?;
    Ok(())
}

fn parse_cert<'a>(der: &'a [u8], path: &Path) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn parse_crl<'a>(der: &'a [u8], path: &Path) -> Result<CertificateRevocationList<'a>, PkiError> {
    x509_parser::parse_x509_crl(der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn summary(der: &[u8], path: &Path) -> Result<CertSummary, PkiError> {
    CertSummary::of(&CertificateDer::from(der)).map_err(|reason| PkiError::BadPem {
        path: path.to_path_buf(),
        reason,
    })
}

/// Whether `issuer` signed `cert` (name and signature).
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

fn crl_signed_by(crl: &CertificateRevocationList<'_>, issuer: &X509Certificate<'_>) -> bool {
    crl.issuer().as_raw() == issuer.subject().as_raw()
        && crl.verify_signature(issuer.public_key()).is_ok()
}

/// What `vigil cert trust list` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrustListing {
    pub cas: Vec<CaEntry>,
    pub crls: Vec<CrlSummary>,
    /// Node certificates (`NAME.crt`) in the directory.
    pub nodes: Vec<NodeEntry>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CaEntry {
    #[serde(flatten)]
    pub summary: CertSummary,
    /// `ca.key` in this directory belongs to this CA (it issues here).
    pub issues_here: bool,
    pub expired: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeEntry {
    pub file: String,
    #[serde(flatten)]
    pub summary: CertSummary,
    /// Fingerprint of the trusted CA that signed it, if any.
    pub signed_by: Option<String>,
    pub revoked: bool,
}

/// `vigil cert trust list --pki DIR`.
pub fn trust_list(pki: &Path) -> Result<TrustListing, PkiError> {
    let ca_path = pki.join(CA_CERT_FILE);
    let crl_path = pki.join(CRL_FILE);
    let ca_blocks = read_blocks(&ca_path)?;
    let cas: Vec<(&Block, X509Certificate<'_>)> = ca_blocks
        .iter()
        .filter(|b| b.kind == SectionKind::Certificate)
        .map(|b| Ok((b, parse_cert(&b.der, &ca_path)?)))
        .collect::<Result<_, PkiError>>()?;
    let key_public = match fs::read(pki.join(CA_KEY_FILE)) {
        Ok(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|pem| KeyPair::from_pem(pem).ok())
            .map(|k| k.public_key_raw().to_vec()),
        Err(_) => None,
    };
    let mut listing = TrustListing {
        cas: Vec::new(),
        crls: Vec::new(),
        nodes: Vec::new(),
    };
    for (block, ca) in &cas {
        listing.cas.push(CaEntry {
            summary: summary(&block.der, &ca_path)?,
            issues_here: key_public.as_deref()
                == Some(ca.public_key().subject_public_key.data.as_ref()),
            expired: !ca.validity().is_valid(),
        });
    }
    let crl_blocks = read_blocks(&crl_path)?;
    let mut revoked: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for block in crl_blocks.iter().filter(|b| b.kind == SectionKind::Crl) {
        let crl = parse_crl(&block.der, &crl_path)?;
        listing.crls.push(CrlSummary::of(&crl));
        for r in crl.iter_revoked_certificates() {
            revoked.push((crl.issuer().as_raw().to_vec(), r.raw_serial().to_vec()));
        }
    }
    let mut entries: Vec<_> = fs::read_dir(pki)
        .map_err(|source| PkiError::Io {
            action: "list",
            path: pki.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "crt")
                && p.file_name() != Some(CA_CERT_FILE.as_ref())
        })
        .collect();
    entries.sort();
    for path in entries {
        let Some(block) = read_blocks(&path)?
            .into_iter()
            .find(|b| b.kind == SectionKind::Certificate)
        else {
            continue;
        };
        let cert = parse_cert(&block.der, &path)?;
        if cert.is_ca() {
            continue;
        }
        let signer = cas.iter().find(|(_, ca)| signed_by(&cert, ca));
        listing.nodes.push(NodeEntry {
            file: path.display().to_string(),
            summary: summary(&block.der, &path)?,
            signed_by: signer.map(|(b, _)| sha256_hex(&b.der)),
            revoked: revoked.iter().any(|(issuer, serial)| {
                issuer == cert.issuer().as_raw() && serial == cert.raw_serial()
            }),
        });
    }
    Ok(listing)
}

/// What `vigil cert trust add` changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrustAdded {
    pub added: Vec<CertSummary>,
    pub already_trusted: Vec<CertSummary>,
    pub crls: Vec<CrlInstalled>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CrlInstalled {
    #[serde(flatten)]
    pub crl: CrlSummary,
    /// The number of the list it replaced, if one of the same CA was installed.
    pub replaced: Option<String>,
}

/// `vigil cert trust add --pki DIR FILE`: adds the CA certificates in `file` to
/// `DIR/ca.crt` (creating `DIR` if needed) and installs its revocation lists in `DIR/crl.pem` (a list replaces
/// the installed one of the same CA unless it is older). A list must be signed by a CA
/// `DIR/ca.crt` trusts (after this addition).
pub fn trust_add(pki: &Path, file: &Path) -> Result<TrustAdded, PkiError> {
    let ca_path = pki.join(CA_CERT_FILE);
    let crl_path = pki.join(CRL_FILE);
    let input = read_text(file)?.ok_or_else(|| PkiError::Io {
        action: "read",
        path: file.to_path_buf(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    let input = blocks(&input, file)?;
    let new_cas: Vec<&Block> = input
        .iter()
        .filter(|b| b.kind == SectionKind::Certificate)
        .collect();
    let new_crls: Vec<&Block> = input
        .iter()
        .filter(|b| b.kind == SectionKind::Crl)
        .collect();
    if new_cas.is_empty() && new_crls.is_empty() {
        return Err(PkiError::NothingToAdd {
            path: file.to_path_buf(),
        });
    }
    // A new host's directory may not exist yet.
    fs::create_dir_all(pki).map_err(|source| PkiError::Io {
        action: "create directory",
        path: pki.to_path_buf(),
        source,
    })?;
    let mut bundle = read_blocks(&ca_path)?;
    let mut added = TrustAdded::default();
    let mut changed = false;
    for block in new_cas {
        let cert = parse_cert(&block.der, file)?;
        if !cert.is_ca() {
            return Err(PkiError::NotACa {
                path: file.to_path_buf(),
                subject: cert.subject().to_string(),
            });
        }
        let info = summary(&block.der, file)?;
        if bundle.iter().any(|b| b.der == block.der) {
            added.already_trusted.push(info);
            continue;
        }
        bundle.push(Block {
            kind: block.kind,
            der: block.der.clone(),
            text: block.text.clone(),
        });
        added.added.push(info);
        changed = true;
    }
    if !new_crls.is_empty() {
        let cas: Vec<X509Certificate<'_>> = bundle
            .iter()
            .filter(|b| b.kind == SectionKind::Certificate)
            .map(|b| parse_cert(&b.der, &ca_path))
            .collect::<Result<_, _>>()?;
        let mut installed = read_blocks(&crl_path)?;
        for block in new_crls {
            let crl = parse_crl(&block.der, file)?;
            if !cas.iter().any(|ca| crl_signed_by(&crl, ca)) {
                return Err(PkiError::CrlIssuerNotTrusted {
                    path: file.to_path_buf(),
                    ca: ca_path.clone(),
                    issuer: crl.issuer().to_string(),
                });
            }
            let replaced = merge_crl(&mut installed, block, &crl, &crl_path, file)?;
            added.crls.push(CrlInstalled {
                crl: CrlSummary::of(&crl),
                replaced,
            });
        }
        // The bundle first: a node reloading in between sees new CAs and old lists,
        // never a list whose CA it does not trust yet.
        if changed {
            write_blocks(&ca_path, &bundle.iter().collect::<Vec<_>>())?;
            changed = false;
        }
        write_blocks(&crl_path, &installed.iter().collect::<Vec<_>>())?;
    }
    if changed {
        write_blocks(&ca_path, &bundle.iter().collect::<Vec<_>>())?;
    }
    Ok(added)
}

/// Puts `new` into `installed` in place of the list of the same issuer (the one its
/// signer signed), unless that one is newer. Returns the replaced list's number.
fn merge_crl(
    installed: &mut Vec<Block>,
    new: &Block,
    crl: &CertificateRevocationList<'_>,
    crl_path: &Path,
    file: &Path,
) -> Result<Option<String>, PkiError> {
    let number = |c: &CertificateRevocationList<'_>| c.crl_number().cloned().unwrap_or_default();
    let mut replaced = None;
    let mut kept = Vec::new();
    for block in installed.drain(..) {
        if block.kind != SectionKind::Crl {
            continue;
        }
        let old = parse_crl(&block.der, crl_path)?;
        if old.issuer().as_raw() != crl.issuer().as_raw() {
            kept.push(block);
            continue;
        }
        if number(&old) > number(crl) {
            return Err(PkiError::OlderCrl {
                path: file.to_path_buf(),
                issuer: crl.issuer().to_string(),
                new: number(crl).to_string(),
                installed: number(&old).to_string(),
            });
        }
        replaced = Some(number(&old).to_string());
    }
    kept.push(Block {
        kind: new.kind,
        der: new.der.clone(),
        text: new.text.clone(),
    });
    *installed = kept;
    Ok(replaced)
}

/// Which CA `vigil cert trust remove` removes.
#[derive(Debug, Clone)]
pub enum CaSelector {
    /// Every CA certificate in this file (e.g. the old CA directory's `ca.crt`).
    File(PathBuf),
    /// A SHA-256 fingerprint (hex, colons allowed), or a unique prefix of at least
    /// 8 hex digits.
    Fingerprint(String),
}

/// What `vigil cert trust remove` changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrustRemoved {
    pub removed: Vec<CertSummary>,
    /// Issuers of the revocation lists dropped with their CA.
    pub dropped_crls: Vec<String>,
    pub remaining: usize,
}

/// `vigil cert trust remove --pki DIR (--ca FILE | --fingerprint FP)`: removes CAs
/// from `DIR/ca.crt` and their revocation lists from `DIR/crl.pem`. Refuses to remove
/// the last CA, and, unless `force`, a CA that signed a node certificate in `DIR`
/// that no remaining CA signed (the node could not start or reload with it).
pub fn trust_remove(pki: &Path, which: &CaSelector, force: bool) -> Result<TrustRemoved, PkiError> {
    let ca_path = pki.join(CA_CERT_FILE);
    let crl_path = pki.join(CRL_FILE);
    let bundle = read_blocks(&ca_path)?;
    let (remove, selector): (Vec<bool>, String) = match which {
        CaSelector::File(file) => {
            let text = read_text(file)?.ok_or_else(|| PkiError::Io {
                action: "read",
                path: file.clone(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })?;
            let listed = blocks(&text, file)?;
            (
                bundle
                    .iter()
                    .map(|b| listed.iter().any(|l| l.der == b.der))
                    .collect(),
                format!("the CAs in {}", file.display()),
            )
        }
        CaSelector::Fingerprint(fp) => {
            let wanted: String = fp
                .chars()
                .filter(|c| *c != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            if wanted.len() < 8 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(PkiError::NoSuchCa {
                    path: ca_path,
                    selector: format!("fingerprint {fp:?} (give at least 8 hex digits)"),
                });
            }
            let matches: Vec<bool> = bundle
                .iter()
                .map(|b| sha256_hex(&b.der).starts_with(&wanted))
                .collect();
            (matches, format!("fingerprint {fp}"))
        }
    };
    let removed_count = remove.iter().filter(|r| **r).count();
    if removed_count == 0 {
        return Err(PkiError::NoSuchCa {
            path: ca_path,
            selector,
        });
    }
    if removed_count == bundle.len() {
        return Err(PkiError::LastCa {
            path: ca_path,
            what: selector,
        });
    }
    let parsed: Vec<X509Certificate<'_>> = bundle
        .iter()
        .map(|b| parse_cert(&b.der, &ca_path))
        .collect::<Result<_, _>>()?;
    if !force {
        let listing = trust_list(pki)?;
        let stranded: Vec<String> = listing
            .nodes
            .iter()
            .filter(|node| {
                let signer = node.signed_by.as_deref();
                bundle
                    .iter()
                    .zip(&remove)
                    .any(|(b, r)| *r && Some(sha256_hex(&b.der).as_str()) == signer)
            })
            .map(|node| node.file.clone())
            .collect();
        if !stranded.is_empty() {
            return Err(PkiError::StillInUse {
                what: selector,
                files: stranded,
            });
        }
    }
    let mut result = TrustRemoved {
        removed: Vec::new(),
        dropped_crls: Vec::new(),
        remaining: bundle.len() - removed_count,
    };
    let mut keep = Vec::new();
    for (block, r) in bundle.iter().zip(&remove) {
        if *r {
            result.removed.push(summary(&block.der, &ca_path)?);
        } else {
            keep.push(block);
        }
    }
    let crls = read_blocks(&crl_path)?;
    let mut keep_crls = Vec::new();
    for block in &crls {
        let dropped = block.kind == SectionKind::Crl && {
            let crl = parse_crl(&block.der, &crl_path)?;
            let by_removed = parsed
                .iter()
                .zip(&remove)
                .any(|(ca, r)| *r && crl_signed_by(&crl, ca));
            if by_removed {
                result.dropped_crls.push(crl.issuer().to_string());
            }
            by_removed
        };
        if !dropped {
            keep_crls.push(block);
        }
    }
    // The revocation lists first: a node reloading in between must not find a list
    // whose CA is gone (it would ignore it, but say so).
    if !result.dropped_crls.is_empty() {
        write_blocks(&crl_path, &keep_crls)?;
    }
    write_blocks(&ca_path, &keep)?;
    Ok(result)
}

/// Which certificates `vigil cert revoke` revokes.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// Every certificate the CA issued for this node (from `issued.txt`, and the
    /// `NAME.crt` next to the CA if it is one of them).
    Name(NodeName),
    /// One serial number, in hex.
    Serial(String),
    /// The certificate in this file.
    Cert(PathBuf),
}

/// What `vigil cert revoke` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Revocation {
    /// The CA directory's `crl.pem`, rewritten.
    pub crl: PathBuf,
    pub number: u64,
    /// Serials (hex) revoked by this call.
    pub revoked: Vec<String>,
    /// Serials it was asked to revoke that the list held already.
    pub already_revoked: Vec<String>,
    /// Every serial the list holds.
    pub total: usize,
}

/// `vigil cert revoke --ca DIR (--name N | --serial S | --cert FILE)`: adds the
/// certificates to the CA's revocation list `DIR/crl.pem` (created if needed, its
/// number increased by one, valid `crl_days` days, signed with `DIR/ca.key`). Nodes
/// apply it once it is in their PKI directory (`vigil cert trust add --pki NODE_DIR
/// DIR/crl.pem`) and they reloaded.
pub fn revoke(ca_dir: &Path, target: &RevokeTarget, crl_days: u32) -> Result<Revocation, PkiError> {
    if crl_days == 0 || crl_days > MAX_CRL_DAYS {
        return Err(PkiError::InvalidCrlDays { days: crl_days });
    }
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let crl_path = ca_dir.join(CRL_FILE);
    let ca_certs = tls::read_certs(&ca_cert_path, "the cluster CA certificate", || {
        TlsError::CaMissing {
            path: ca_cert_path.clone(),
            dir: ca_dir.to_path_buf(),
        }
    })?;
    let ca_key_der = tls::read_key(&ca_key_path, || TlsError::CaKeyMissing {
        path: ca_key_path.clone(),
    })?;
    let ca_key = KeyPair::try_from(&ca_key_der).map_err(|e| TlsError::BadKey {
        path: ca_key_path.clone(),
        reason: e.to_string(),
    })?;
    let ca_der = tls::matching_ca_cert(&ca_certs, &ca_key, &ca_cert_path, &ca_key_path)?.clone();
    let ca = parse_cert(&ca_der, &ca_cert_path)?;
    let ca_fingerprint = sha256_hex(&ca_der);

    let mut wanted: Vec<Vec<u8>> = Vec::new();
    match target {
        RevokeTarget::Name(name) => {
            for entry in tls::read_issued(ca_dir)? {
                if entry.name == *name && entry.ca == ca_fingerprint {
                    wanted.push(parse_serial(&entry.serial)?);
                }
            }
            let cert_path = tls::node_cert_path(ca_dir, name);
            for block in read_blocks(&cert_path)? {
                if block.kind == SectionKind::Certificate {
                    let cert = parse_cert(&block.der, &cert_path)?;
                    if signed_by(&cert, &ca) {
                        wanted.push(cert.raw_serial().to_vec());
                    }
                    break;
                }
            }
            if wanted.is_empty() {
                return Err(PkiError::NothingToRevoke {
                    name: name.clone(),
                    issued: ca_dir.join(tls::ISSUED_FILE),
                    cert: cert_path,
                });
            }
        }
        RevokeTarget::Serial(serial) => wanted.push(parse_serial(serial)?),
        RevokeTarget::Cert(path) => {
            let block = read_blocks(path)?
                .into_iter()
                .find(|b| b.kind == SectionKind::Certificate)
                .ok_or_else(|| PkiError::NothingToAdd { path: path.clone() })?;
            let cert = parse_cert(&block.der, path)?;
            if !signed_by(&cert, &ca) {
                return Err(PkiError::NotIssuedHere {
                    path: path.clone(),
                    ca: ca_cert_path,
                });
            }
            wanted.push(cert.raw_serial().to_vec());
        }
    }
    wanted.sort();
    wanted.dedup();

    let mut installed = read_blocks(&crl_path)?;
    let mut entries: Vec<RevokedCertParams> = Vec::new();
    let mut previous_number = 0u64;
    for block in installed.iter().filter(|b| b.kind == SectionKind::Crl) {
        let crl = parse_crl(&block.der, &crl_path)?;
        if !crl_signed_by(&crl, &ca) {
            continue;
        }
        previous_number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n.clone()).ok())
            .unwrap_or(0);
        for r in crl.iter_revoked_certificates() {
            entries.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: time::OffsetDateTime::from_unix_timestamp(
                    r.revocation_date.timestamp(),
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    let now = time::OffsetDateTime::from(SystemTime::now());
    let mut result = Revocation {
        crl: crl_path.clone(),
        number: previous_number + 1,
        revoked: Vec::new(),
        already_revoked: Vec::new(),
        total: 0,
    };
    for serial in wanted {
        if entries
            .iter()
            .any(|e| e.serial_number.as_ref() == serial.as_slice())
        {
            result.already_revoked.push(hex(&serial));
            continue;
        }
        result.revoked.push(hex(&serial));
        entries.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    result.total = entries.len();
    let generate = |reason: String| PkiError::Generate {
        path: crl_path.clone(),
        reason,
    };
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::from_secs(u64::from(crl_days) * 24 * 60 * 60),
        crl_number: SerialNumber::from(result.number),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| generate(e.to_string()))?;
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| generate(e.to_string()))?;
    let text = crl.pem().map_err(|e| generate(e.to_string()))?;
    let der: &CertificateRevocationListDer<'static> = crl.der();
    let block = Block {
        kind: SectionKind::Crl,
        der: der.as_ref().to_vec(),
        text,
    };
    let parsed = parse_crl(&block.der, &crl_path)?;
    merge_crl(&mut installed, &block, &parsed, &crl_path, &crl_path)?;
    write_blocks(&crl_path, &installed.iter().collect::<Vec<_>>())?;
    Ok(result)
}

/// A serial number given in hex (colons allowed), as the bytes of its DER encoding.
fn parse_serial(text: &str) -> Result<Vec<u8>, PkiError> {
    let bad = || PkiError::BadSerial {
        selector: text.to_owned(),
    };
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 42 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{init_ca, issue_node_cert, load_node_tls};

    fn name(n: &str) -> NodeName {
        NodeName::new(n).unwrap()
    }

    fn ca(nodes: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), false).unwrap();
        for n in nodes {
            issue_node_cert(dir.path(), &name(n), dir.path(), 30, false).unwrap();
        }
        dir
    }

    /// A node's PKI directory trusting `ca_dir`'s CA, with `node`'s files from it.
    fn node_dir(ca_dir: &Path, node: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        trust_add(dir.path(), &ca_dir.join(CA_CERT_FILE)).unwrap();
        issue_node_cert(ca_dir, &name(node), dir.path(), 30, false).unwrap();
        dir
    }

    #[test]
    fn a_full_rotation_with_the_trust_commands() {
        let old = ca(&[]);
        let new = ca(&[]);
        let n1 = node_dir(old.path(), "n1");
        load_node_tls(n1.path(), &name("n1")).unwrap();

        // Trust both, then re-issue from the new CA, then drop the old one.
        let added = trust_add(n1.path(), &new.path().join(CA_CERT_FILE)).unwrap();
        assert_eq!(added.added.len(), 1);
        let again = trust_add(n1.path(), &new.path().join(CA_CERT_FILE)).unwrap();
        assert!(again.added.is_empty() && again.already_trusted.len() == 1);
        assert_eq!(trust_list(n1.path()).unwrap().cas.len(), 2);

        let err = trust_remove(
            n1.path(),
            &CaSelector::File(old.path().join(CA_CERT_FILE)),
            false,
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::StillInUse { .. }), "{err:?}");
        assert!(err.to_string().contains("n1.crt"), "{err}");

        issue_node_cert(new.path(), &name("n1"), n1.path(), 30, true).unwrap();
        let listing = trust_list(n1.path()).unwrap();
        let new_fp = sha256_hex(
            &std::fs::read(new.path().join(CA_CERT_FILE))
                .map(|pem| CertificateDer::from_pem_slice(&pem).unwrap())
                .unwrap(),
        );
        assert_eq!(listing.nodes.len(), 1);
        assert_eq!(listing.nodes[0].signed_by.as_deref(), Some(new_fp.as_str()));

        let removed = trust_remove(
            n1.path(),
            &CaSelector::Fingerprint(listing.cas[0].summary.fingerprint[..12].to_uppercase()),
            false,
        )
        .unwrap();
        assert_eq!(removed.removed.len(), 1);
        assert_eq!(removed.remaining, 1);
        let tls = load_node_tls(n1.path(), &name("n1")).unwrap();
        assert_eq!(tls.summary().trusted.len(), 1);
        assert_eq!(tls.summary().trusted[0].fingerprint, new_fp);

        let err = trust_remove(
            n1.path(),
            &CaSelector::File(new.path().join(CA_CERT_FILE)),
            true,
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::LastCa { .. }), "{err:?}");
        let err = trust_remove(
            n1.path(),
            &CaSelector::Fingerprint("00000000".into()),
            false,
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::NoSuchCa { .. }), "{err:?}");
    }

    #[test]
    fn trust_add_refuses_node_certificates_and_empty_files() {
        let dir = ca(&["n1"]);
        let target = tempfile::tempdir().unwrap();
        let err = trust_add(target.path(), &dir.path().join("n1.crt")).unwrap_err();
        assert!(matches!(err, PkiError::NotACa { .. }), "{err:?}");
        std::fs::write(target.path().join("empty.pem"), "nothing here\n").unwrap();
        let err = trust_add(target.path(), &target.path().join("empty.pem")).unwrap_err();
        assert!(matches!(err, PkiError::NothingToAdd { .. }), "{err:?}");
        assert!(!target.path().join(CA_CERT_FILE).exists());
    }

    #[test]
    fn revoke_by_name_serial_and_file_grows_one_list() {
        let dir = ca(&["n1", "n2", "n3"]);
        let first = revoke(dir.path(), &RevokeTarget::Name(name("n2")), 30).unwrap();
        assert_eq!((first.number, first.revoked.len(), first.total), (1, 1, 1));
        let again = revoke(dir.path(), &RevokeTarget::Name(name("n2")), 30).unwrap();
        assert_eq!((again.number, again.revoked.len()), (2, 0));
        assert_eq!(again.already_revoked, first.revoked);

        let n3 = tls::read_issued(dir.path())
            .unwrap()
            .into_iter()
            .find(|e| e.name.as_str() == "n3")
            .unwrap();
        // Colons and upper case, as other tools print serials.
        let spaced: Vec<String> = n3
            .serial
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        let by_serial = revoke(dir.path(), &RevokeTarget::Serial(spaced.join(":")), 30).unwrap();
        assert_eq!(by_serial.revoked, vec![n3.serial.clone()]);
        let by_file = revoke(
            dir.path(),
            &RevokeTarget::Cert(dir.path().join("n1.crt")),
            30,
        )
        .unwrap();
        assert_eq!((by_file.number, by_file.total), (4, 3));

        let listing = trust_list(dir.path()).unwrap();
        assert_eq!(listing.crls.len(), 1);
        assert_eq!(listing.crls[0].number.as_deref(), Some("4"));
        assert!(listing.nodes.iter().all(|n| n.revoked));
        assert!(listing.cas[0].issues_here);

        let err = revoke(dir.path(), &RevokeTarget::Name(name("n9")), 30).unwrap_err();
        assert!(matches!(err, PkiError::NothingToRevoke { .. }), "{err:?}");
        let err = revoke(dir.path(), &RevokeTarget::Serial("xyz".into()), 30).unwrap_err();
        assert!(matches!(err, PkiError::BadSerial { .. }), "{err:?}");
        let other = ca(&["n1"]);
        let err = revoke(
            dir.path(),
            &RevokeTarget::Cert(other.path().join("n1.crt")),
            30,
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::NotIssuedHere { .. }), "{err:?}");
        let err = revoke(dir.path(), &RevokeTarget::Name(name("n1")), 0).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCrlDays { .. }), "{err:?}");
    }

    #[test]
    fn installing_a_list_keeps_the_newest_per_ca() {
        let a = ca(&["n1"]);
        let b = ca(&[]);
        let node = node_dir(a.path(), "n2");
        trust_add(node.path(), &b.path().join(CA_CERT_FILE)).unwrap();

        revoke(a.path(), &RevokeTarget::Name(name("n1")), 30).unwrap();
        let saved_first = std::fs::read(a.path().join(CRL_FILE)).unwrap();
        std::fs::write(node.path().join("first.pem"), &saved_first).unwrap();
        revoke(b.path(), &RevokeTarget::Serial("0badcafe".into()), 30).unwrap();
        trust_add(node.path(), &b.path().join(CRL_FILE)).unwrap();
        let installed = trust_add(node.path(), &a.path().join(CRL_FILE)).unwrap();
        assert_eq!(installed.crls[0].replaced, None);
        let tls = load_node_tls(node.path(), &name("n2")).unwrap();
        assert_eq!(tls.summary().crls.len(), 2);

        revoke(a.path(), &RevokeTarget::Serial("01".into()), 30).unwrap();
        let installed = trust_add(node.path(), &a.path().join(CRL_FILE)).unwrap();
        assert_eq!(installed.crls[0].replaced.as_deref(), Some("1"));
        let err = trust_add(node.path(), &node.path().join("first.pem")).unwrap_err();
        assert!(matches!(err, PkiError::OlderCrl { .. }), "{err:?}");
        let tls = load_node_tls(node.path(), &name("n2")).unwrap();
        assert_eq!(tls.summary().crls.len(), 2);

        // A list of a CA the node does not trust is refused; removing a CA drops its list.
        let c = ca(&[]);
        revoke(c.path(), &RevokeTarget::Serial("02".into()), 30).unwrap();
        let err = trust_add(node.path(), &c.path().join(CRL_FILE)).unwrap_err();
        assert!(
            matches!(err, PkiError::CrlIssuerNotTrusted { .. }),
            "{err:?}"
        );
        let removed = trust_remove(
            node.path(),
            &CaSelector::File(b.path().join(CA_CERT_FILE)),
            false,
        )
        .unwrap();
        assert_eq!(removed.dropped_crls.len(), 1);
        let tls = load_node_tls(node.path(), &name("n2")).unwrap();
        assert_eq!(tls.summary().crls.len(), 1);
    }
}
