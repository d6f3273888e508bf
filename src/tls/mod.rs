//! The door's TLS material. With `[nginx] tls = "self-signed"` the daemon keeps a small
//! stack CA and signs a server certificate for the host's names and addresses; with
//! `"files"` it checks the operator's certificate and key and copies them. Either way
//! NGINX's unit loads `server.crt` and `server.key` from [`DIR`] as systemd credentials,
//! so the key is readable by root and that unit only.
//!
//! What was issued is recorded beside it ([`Issued`]); the planner compares that record
//! with the desired [`TlsSpec`] and re-issues when a name or address changes, when the
//! certificate is due for renewal, or when the operator's files change.

pub mod client;

use crate::host::fsroot::FsRoot;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DIR: &str = "/var/lib/analytics-stack/tls";
pub const CA_CERT: &str = "/var/lib/analytics-stack/tls/ca.crt";
const CA_KEY: &str = "/var/lib/analytics-stack/tls/ca.key";
pub const SERVER_CERT: &str = "/var/lib/analytics-stack/tls/server.crt";
pub const SERVER_KEY: &str = "/var/lib/analytics-stack/tls/server.key";
/// With the stack CA, the primary's own client certificate: what its Prometheus
/// presents to the worker hosts' node_exporters, and its Prometheus, log shipper and
/// Grafana to Loki's door (both admit the stack CA's clients only). Issued and
/// renewed with the server certificate.
pub const PRIMARY_CLIENT_CERT: &str = "/var/lib/analytics-stack/tls/primary-client.crt";
pub const PRIMARY_CLIENT_KEY: &str = "/var/lib/analytics-stack/tls/primary-client.key";
const RECORD: &str = "/var/lib/analytics-stack/tls/issued.json";

/// The stack CA lives ten years; server certificates 397 days (under the 398 days
/// browsers accept for publicly trusted ones, so no browser objects to the lifetime)
/// and are renewed by the first apply within 30 days of their end.
const CA_DAYS: u64 = 3650;
const SERVER_DAYS: u64 = 397;
pub const RENEW_BEFORE_DAYS: u64 = 30;
const DAY: u64 = 86_400;

/// What NGINX should serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TlsSpec {
    /// A certificate from the stack CA for these names and addresses.
    SelfSigned {
        names: Vec<String>,
        addresses: Vec<IpAddr>,
    },
    /// The operator's certificate (chain) and key.
    Files { certificate: PathBuf, key: PathBuf },
}

/// The record of what was installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub spec: TlsSpec,
    /// sha256 of the installed server certificate file.
    pub certificate_sha256: String,
    /// For `Files`: sha256 of the operator's certificate and key, as copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    /// Seconds since the epoch when the installed certificate ends.
    pub not_after: u64,
}

/// Gathered before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFact {
    pub issued: Option<Issued>,
    /// The installed certificate and key are present and the certificate is the one
    /// recorded.
    pub intact: bool,
    /// The installed certificate ends within [`RENEW_BEFORE_DAYS`].
    pub renew_due: bool,
    /// For `Files`: sha256 of the operator's files now (None: unreadable).
    pub source_sha256: Option<String>,
}

/// Why the planner installs a certificate, or None when the installed one is right.
pub fn change(spec: &TlsSpec, fact: Option<&TlsFact>) -> Option<&'static str> {
    let Some(fact) = fact else { return Some("new") };
    let Some(issued) = &fact.issued else {
        return Some("new");
    };
    if !fact.intact {
        return Some("missing or changed on disk");
    }
    if &issued.spec != spec {
        return Some(match spec {
            TlsSpec::SelfSigned { .. } => "names or addresses changed",
            TlsSpec::Files { .. } => "certificate files changed",
        });
    }
    match spec {
        TlsSpec::SelfSigned { .. } if fact.renew_due => Some("due for renewal"),
        TlsSpec::Files { .. } if fact.source_sha256 != issued.source_sha256 => {
            Some("certificate files changed")
        }
        _ => None,
    }
}

/// A refusal, naming the file at fault and never its contents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    #[error("{path}: cannot read it ({why})")]
    Unreadable { path: String, why: String },
    #[error("{path}: no PEM certificate in it")]
    NotACertificate { path: String },
    #[error("{path}: not a PEM private key rcgen/NGINX can use ({why})")]
    NotAKey { path: String, why: String },
    #[error("{key}: this key does not belong to the certificate in {certificate}")]
    KeyMismatch { certificate: String, key: String },
    #[error("{path}: the certificate ended {ended} (seconds since the epoch); renew it")]
    Expired { path: String, ended: u64 },
    #[error("{0}")]
    Write(String),
    #[error("generating the certificate: {0}")]
    Generate(String),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads the record and checks the installed files against it.
pub fn gather(fs: &FsRoot, spec: &TlsSpec) -> TlsFact {
    let issued: Option<Issued> = fs
        .read(Path::new(RECORD))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let cert = fs.read(Path::new(SERVER_CERT)).ok();
    let primary_client = match spec {
        TlsSpec::SelfSigned { .. } => {
            fs.exists(Path::new(PRIMARY_CLIENT_CERT)) && fs.exists(Path::new(PRIMARY_CLIENT_KEY))
        }
        TlsSpec::Files { .. } => true,
    };
    let intact = match (&issued, &cert) {
        (Some(i), Some(c)) => {
            crate::util::sha256_hex(c) == i.certificate_sha256
                && fs.exists(Path::new(SERVER_KEY))
                && primary_client
        }
        _ => false,
    };
    let renew_due = issued
        .as_ref()
        .is_some_and(|i| i.not_after < now() + RENEW_BEFORE_DAYS * DAY);
    let source_sha256 = match spec {
        TlsSpec::Files { certificate, key } => source_digest(fs, certificate, key).ok(),
        TlsSpec::SelfSigned { .. } => None,
    };
    TlsFact {
        issued,
        intact,
        renew_due,
        source_sha256,
    }
}

fn read(fs: &FsRoot, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs.read(path).map_err(|e| TlsError::Unreadable {
        path: path.display().to_string(),
        why: e.kind().to_string(),
    })
}

fn source_digest(fs: &FsRoot, certificate: &Path, key: &Path) -> Result<String, TlsError> {
    let mut both = read(fs, certificate)?;
    both.extend(read(fs, key)?);
    Ok(crate::util::sha256_hex(&both))
}

/// Checks what `spec` names before an apply changes anything: the operator's files
/// must be a certificate and its key, not expired.
pub fn preflight(fs: &FsRoot, spec: &TlsSpec) -> Result<(), TlsError> {
    match spec {
        TlsSpec::SelfSigned { .. } => Ok(()),
        TlsSpec::Files { certificate, key } => {
            check_pair(certificate, &read(fs, certificate)?, key, &read(fs, key)?).map(|_| ())
        }
    }
}

/// Installs what `spec` asks for; writes are atomic, the record last.
pub fn install(fs: &FsRoot, spec: &TlsSpec) -> Result<Issued, TlsError> {
    let (cert_pem, key_pem, not_after, source_sha256) = match spec {
        TlsSpec::SelfSigned { names, addresses } => {
            let (cert, key, not_after) = issue(fs, names, addresses)?;
            let (client_cert, client_key) = issue_primary_client(fs, names)?;
            write(fs, PRIMARY_CLIENT_KEY, client_key.as_bytes(), 0o600)?;
            write(fs, PRIMARY_CLIENT_CERT, client_cert.as_bytes(), 0o644)?;
            (cert, key, not_after, None)
        }
        TlsSpec::Files { certificate, key } => {
            let cert_bytes = read(fs, certificate)?;
            let key_bytes = read(fs, key)?;
            let not_after = check_pair(certificate, &cert_bytes, key, &key_bytes)?;
            let digest = source_digest(fs, certificate, key)?;
            (
                String::from_utf8_lossy(&cert_bytes).into_owned(),
                String::from_utf8_lossy(&key_bytes).into_owned(),
                not_after,
                Some(digest),
            )
        }
    };
    write(fs, SERVER_KEY, key_pem.as_bytes(), 0o600)?;
    write(fs, SERVER_CERT, cert_pem.as_bytes(), 0o644)?;
    let issued = Issued {
        spec: spec.clone(),
        certificate_sha256: crate::util::sha256_hex(cert_pem.as_bytes()),
        source_sha256,
        not_after,
    };
    let record = serde_json::to_vec_pretty(&issued).map_err(|e| TlsError::Write(e.to_string()))?;
    write(fs, RECORD, &record, 0o644)?;
    Ok(issued)
}

fn write(fs: &FsRoot, path: &str, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    fs.write_atomic(Path::new(path), bytes, mode, 0, 0)
        .map_err(|e| TlsError::Write(format!("{path}: {e}")))
}

fn gen(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn validity(params: &mut CertificateParams, days: u64) -> u64 {
    let start = SystemTime::now() - Duration::from_secs(3600);
    let end = SystemTime::now() + Duration::from_secs(days * DAY);
    params.not_before = start.into();
    params.not_after = end.into();
    end.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The stack CA: kept when present and usable, created (key 0600) otherwise.
/// Returns the CA certificate (PEM) and the issuer that signs with its key.
fn stack_ca(fs: &FsRoot, host: &str) -> Result<(String, Issuer<'static, KeyPair>), TlsError> {
    if let (Ok(cert), Ok(key)) = (fs.read(Path::new(CA_CERT)), fs.read(Path::new(CA_KEY))) {
        let cert = String::from_utf8_lossy(&cert).into_owned();
        if let Ok(key) = KeyPair::from_pem(&String::from_utf8_lossy(&key)) {
            if !ended(cert.as_bytes()) {
                if let Ok(issuer) = Issuer::from_ca_cert_pem(&cert, key) {
                    return Ok((cert, issuer));
                }
            }
        }
    }
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("analytics-stack CA on {host}"));
    dn.push(DnType::OrganizationName, "analytics-stack");
    params.distinguished_name = dn;
    // It signs server certificates only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key).map_err(gen)?.pem();
    write(fs, CA_KEY, key.serialize_pem().as_bytes(), 0o600)?;
    write(fs, CA_CERT, cert.as_bytes(), 0o644)?;
    Ok((cert, Issuer::new(params, key)))
}

fn ended(pem: &[u8]) -> bool {
    leaf_not_after(pem).is_none_or(|end| end <= now())
}

fn issue(
    fs: &FsRoot,
    names: &[String],
    addresses: &[IpAddr],
) -> Result<(String, String, u64), TlsError> {
    let host = names.first().map_or("localhost", String::as_str);
    let (ca_cert, issuer) = stack_ca(fs, host)?;
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host);
    params.distinguished_name = dn;
    for name in names {
        let name = rcgen::string::Ia5String::try_from(name.as_str()).map_err(gen)?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    for address in addresses {
        params.subject_alt_names.push(SanType::IpAddress(*address));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let not_after = validity(&mut params, SERVER_DAYS);
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    // The chain NGINX sends: the server certificate, then the CA.
    Ok((
        format!("{}{}", cert.pem(), ca_cert),
        key.serialize_pem(),
        not_after,
    ))
}

/// The primary client certificate's subject, as NGINX's `$ssl_client_s_dn` prints it
/// (no worker's: theirs name a PostgreSQL role and an identity).
pub const PRIMARY_CLIENT_SUBJECT: &str = "CN=analytics-stack primary,O=analytics-stack";

/// The primary's client certificate, from the stack CA.
fn issue_primary_client(fs: &FsRoot, names: &[String]) -> Result<(String, String), TlsError> {
    let host = names.first().map_or("localhost", String::as_str);
    let (_, issuer) = stack_ca(fs, host)?;
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    let mut dn = DistinguishedName::new();
    // Encoded in this order; RFC 2253 prints it reversed (`PRIMARY_CLIENT_SUBJECT`).
    dn.push(DnType::OrganizationName, "analytics-stack");
    dn.push(DnType::CommonName, "analytics-stack primary");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, SERVER_DAYS);
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// When each certificate of the stack on this host ends (seconds since the epoch),
/// by what it is: the door's, the stack CA, the primary's client certificate and a
/// worker's. Those not here are left out.
pub fn certificate_ends(fs: &FsRoot) -> Vec<(&'static str, u64)> {
    [
        ("server", SERVER_CERT),
        ("ca", CA_CERT),
        ("primary-client", PRIMARY_CLIENT_CERT),
        ("worker-client", client::CLIENT_CERT),
    ]
    .into_iter()
    .filter_map(|(what, path)| Some((what, leaf_not_after(&fs.read(Path::new(path)).ok()?)?)))
    .collect()
}

fn leaf_not_after(pem: &[u8]) -> Option<u64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// Checks the operator's files: a PEM certificate, a key that belongs to it, not
/// expired. Returns when the certificate ends.
fn check_pair(cert_path: &Path, cert: &[u8], key_path: &Path, key: &[u8]) -> Result<u64, TlsError> {
    let cert_name = cert_path.display().to_string();
    let key_name = key_path.display().to_string();
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert).map_err(|_| TlsError::NotACertificate {
            path: cert_name.clone(),
        })?;
    let leaf = pem.parse_x509().map_err(|_| TlsError::NotACertificate {
        path: cert_name.clone(),
    })?;
    let key_text = std::str::from_utf8(key).map_err(|_| TlsError::NotAKey {
        path: key_name.clone(),
        why: "not text".into(),
    })?;
    let pair = KeyPair::from_pem(key_text).map_err(|e| TlsError::NotAKey {
        path: key_name.clone(),
        why: e.to_string(),
    })?;
    if leaf.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&pair).as_slice() {
        return Err(TlsError::KeyMismatch {
            certificate: cert_name,
            key: key_name,
        });
    }
    let ends = u64::try_from(leaf.validity().not_after.timestamp()).unwrap_or(0);
    if ends <= now() {
        return Err(TlsError::Expired {
            path: cert_name,
            ended: ends,
        });
    }
    Ok(ends)
}

/// The sha256 of the CA's certificate (DER), in lower-case hex.
pub fn ca_sha256(fs: &FsRoot) -> Option<String> {
    let pem = fs.read(Path::new(CA_CERT)).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    Some(crate::util::sha256_hex(&pem.contents))
}

/// The CA's SHA-256 fingerprint (colon-separated hex), for `credentials`.
pub fn ca_fingerprint(fs: &FsRoot) -> Option<String> {
    let hex = ca_sha256(fs)?;
    let pairs: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    Some(pairs.join(":"))
}

#[cfg(test)]
mod tests;
