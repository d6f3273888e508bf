//! Worker hosts' client certificates: how a worker is known at the primary's doors.
//!
//! At `join` the worker makes its own key and asks the primary to sign it (a CSR sent
//! over TLS to the pinned stack CA, with the one-time secret of its token); the
//! primary sets the subject itself — the worker's PostgreSQL role as CN (what
//! PostgreSQL's `clientcert=verify-full` compares with the login) and its identity
//! from `worker add` as OU — and takes nothing but the public key from the request.
//! Every door between the hosts admits a certificate of the stack CA whose subject
//! is a *current* worker's ([`worker_subject`], rendered into NGINX's maps from the
//! configuration), so removing a worker revokes its certificate with the same apply
//! that revokes its logins; a worker added again under the name has a new identity,
//! and the old certificate stays refused.

use super::{gen, read, TlsError, CA_CERT, CA_KEY};
use crate::config::{WorkerIdentity, WorkerName};
use crate::host::fsroot::FsRoot;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::net::IpAddr;
use std::path::Path;

/// A worker host's certificate and key (the key 0600, root's); its units get them
/// as systemd credentials ([`credentials`]).
pub const CLIENT_CERT: &str = "/var/lib/analytics-stack/tls/client.crt";
pub const CLIENT_KEY: &str = "/var/lib/analytics-stack/tls/client.key";

/// The organisation every worker certificate names.
const ORGANIZATION: &str = "analytics-stack workers";

/// A worker certificate's subject as OpenSSL prints it in RFC 2253 form (NGINX's
/// `$ssl_client_s_dn`): most specific first. The values need no escaping: a role
/// name is `[a-z0-9_]`, an identity hex.
pub fn worker_subject(name: &WorkerName, identity: &WorkerIdentity) -> String {
    format!(
        "CN={},OU={},O={ORGANIZATION}",
        name.postgres_role(),
        identity.as_str()
    )
}

/// The credentials a worker host's unit loads to present its certificate, and the
/// paths the unit's processes read them at.
pub struct ClientCredentials {
    pub credentials: Vec<(String, String)>,
    pub cert: String,
    pub key: String,
}

pub fn credentials(unit: &str) -> ClientCredentials {
    ClientCredentials {
        credentials: vec![
            ("client.crt".into(), CLIENT_CERT.into()),
            ("client.key".into(), CLIENT_KEY.into()),
        ],
        cert: format!("/run/credentials/{unit}/client.crt"),
        key: format!("/run/credentials/{unit}/client.key"),
    }
}

/// On a primary: its own client certificate (`tls::PRIMARY_CLIENT_CERT`) as `unit`'s
/// credentials — what its log shipper, Prometheus and Grafana present.
pub fn primary_credentials(unit: &str) -> ClientCredentials {
    ClientCredentials {
        credentials: vec![
            (
                "primary-client.crt".into(),
                super::PRIMARY_CLIENT_CERT.into(),
            ),
            (
                "primary-client.key".into(),
                super::PRIMARY_CLIENT_KEY.into(),
            ),
        ],
        cert: format!("/run/credentials/{unit}/primary-client.crt"),
        key: format!("/run/credentials/{unit}/primary-client.key"),
    }
}

/// On the worker: a new key and the request for it. The request's subject is only
/// informative (the primary sets its own).
pub fn new_request(name: &WorkerName) -> Result<(KeyPair, String), TlsError> {
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    params
        .distinguished_name
        .push(DnType::CommonName, name.postgres_role());
    let csr = params.serialize_request(&key).map_err(gen)?;
    Ok((key, csr.pem().map_err(gen)?))
}

/// The largest request the primary reads.
pub const REQUEST_MAX_BYTES: usize = 8 << 10;

/// On the primary: signs the key of `request` (its signature checked: whoever sent it
/// holds the key) for worker `name` at `address`. The CA must exist already — this
/// never makes one. The certificate lives as long as the CA (revocation is the
/// doors' list of current workers, not the end date).
pub fn sign_worker_request(
    fs: &FsRoot,
    request: &str,
    name: &WorkerName,
    identity: &WorkerIdentity,
    address: IpAddr,
) -> Result<String, TlsError> {
    if request.len() > REQUEST_MAX_BYTES {
        return Err(TlsError::Generate("the request is too large".into()));
    }
    let csr = CertificateSigningRequestParams::from_pem(request)
        .map_err(|e| TlsError::Generate(format!("not a signed certificate request ({e})")))?;
    let ca_pem = String::from_utf8_lossy(&read(fs, Path::new(CA_CERT))?).into_owned();
    let ca_key = String::from_utf8_lossy(&read(fs, Path::new(CA_KEY))?).into_owned();
    let ca_key = KeyPair::from_pem(&ca_key).map_err(gen)?;
    let ca_end =
        super::leaf_not_after(ca_pem.as_bytes()).ok_or_else(|| TlsError::NotACertificate {
            path: CA_CERT.into(),
        })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(gen)?;

    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    let mut dn = DistinguishedName::new();
    // Encoded in this order; RFC 2253 prints it reversed (`worker_subject`).
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::OrganizationalUnitName, identity.as_str());
    dn.push(DnType::CommonName, name.postgres_role());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::IpAddress(address)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A client at the primary's doors; a server for the primary's Prometheus.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut serial: [u8; 16] = crate::host::random_bytes()
        .map_err(|e| TlsError::Generate(format!("/dev/urandom: {e}")))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let start = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    params.not_before = start.into();
    params.not_after = (std::time::UNIX_EPOCH + std::time::Duration::from_secs(ca_end)).into();
    let cert = params.signed_by(&csr.public_key, &issuer).map_err(gen)?;
    Ok(cert.pem())
}

/// On the worker: what the primary answered is one certificate, for `key`, signed by
/// the pinned CA. Returns it re-encoded from its DER (nothing else from the answer).
pub fn check_issued(answer: &str, key: &KeyPair, ca_pem: &str) -> Result<String, String> {
    let blocks = pem::parse_many(answer).map_err(|_| "not PEM".to_string())?;
    let [block] = blocks.as_slice() else {
        return Err(format!("{} PEM blocks, not one certificate", blocks.len()));
    };
    if block.tag() != "CERTIFICATE" {
        return Err(format!("a {} block, not a certificate", block.tag()));
    }
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
        .map_err(|_| "a certificate that does not parse".to_string())?;
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|_| "the pinned CA does not parse".to_string())?;
    let ca = ca
        .parse_x509()
        .map_err(|_| "the pinned CA does not parse".to_string())?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| "a certificate the stack CA did not sign".to_string())?;
    if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(key).as_slice() {
        return Err("a certificate for another key".into());
    }
    Ok(pem::encode_config(
        &pem::Pem::new("CERTIFICATE", block.contents().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ))
}
