use super::*;
use std::os::unix::fs::MetadataExt;

fn root() -> (tempfile::TempDir, FsRoot) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsRoot::new(dir.path());
    (dir, fs)
}

fn self_signed(addresses: &[&str]) -> TlsSpec {
    TlsSpec::SelfSigned {
        names: vec![
            "stack.example.org".into(),
            "stack".into(),
            "localhost".into(),
        ],
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn leaf(pem: &[u8]) -> x509_parser::pem::Pem {
    x509_parser::pem::parse_x509_pem(pem).unwrap().1
}

#[test]
fn the_server_certificate_names_the_host_and_chains_to_the_kept_stack_ca() {
    let (dir, fs) = root();
    let spec = self_signed(&["127.0.0.1", "::1", "192.0.2.10"]);
    let issued = install(&fs, &spec).unwrap();
    let cert_pem = std::fs::read(fs.path(Path::new(SERVER_CERT))).unwrap();
    let pem = leaf(&cert_pem);
    let cert = pem.parse_x509().unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect();
    for want in ["stack.example.org", "stack", "localhost"] {
        assert!(sans.iter().any(|s| s.contains(want)), "{want}: {sans:?}");
    }
    for want in ["IPAddress(7f:00:00:01)", "IPAddress(c0:00:02:0a)"] {
        assert!(sans.iter().any(|s| s == want), "{want}: {sans:?}");
    }
    assert!(!cert.is_ca());
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert!((397..=398).contains(&days), "{days} days");

    // Signed by the stack CA, which is a CA and stays the same across re-issues.
    let ca_pem = std::fs::read(fs.path(Path::new(CA_CERT))).unwrap();
    let ca = leaf(&ca_pem);
    let ca_cert = ca.parse_x509().unwrap();
    assert!(ca_cert.is_ca());
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());
    let fingerprint = ca_fingerprint(&fs).unwrap();
    install(&fs, &self_signed(&["127.0.0.1", "192.0.2.11"])).unwrap();
    assert_eq!(ca_fingerprint(&fs).unwrap(), fingerprint, "the CA is kept");
    assert_eq!(fingerprint.len(), 32 * 3 - 1);

    // Keys are root's alone; certificates public.
    for (path, mode) in [
        (CA_KEY, 0o600),
        (SERVER_KEY, 0o600),
        (CA_CERT, 0o644),
        (SERVER_CERT, 0o644),
    ] {
        let meta = std::fs::metadata(fs.path(Path::new(path))).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{path}");
    }
    // The record matches what is there, so the next plan sees it intact.
    let fact = gather(&fs, &self_signed(&["127.0.0.1", "192.0.2.11"]));
    assert!(fact.intact && !fact.renew_due);
    assert_eq!(
        change(&self_signed(&["127.0.0.1", "192.0.2.11"]), Some(&fact)),
        None
    );
    assert_ne!(
        fact.issued.unwrap().certificate_sha256,
        issued.certificate_sha256
    );
    drop(dir);
}

#[test]
fn a_certificate_replaced_by_hand_is_noticed() {
    let (_dir, fs) = root();
    let spec = self_signed(&["127.0.0.1"]);
    install(&fs, &spec).unwrap();
    std::fs::write(fs.path(Path::new(SERVER_CERT)), "something else").unwrap();
    let fact = gather(&fs, &spec);
    assert_eq!(
        change(&spec, Some(&fact)),
        Some("missing or changed on disk")
    );
}

/// A certificate and key made elsewhere, as an operator would bring them.
fn operator_pair(days: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["stack.example.org".to_string()]).unwrap();
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(10 * DAY)).into();
    params.not_after = if days > 0 {
        now + Duration::from_secs(days as u64 * DAY)
    } else {
        now - Duration::from_secs(days.unsigned_abs() * DAY)
    }
    .into();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn files_spec(fs: &FsRoot, cert: &str, key: &str) -> TlsSpec {
    let c = Path::new("/etc/ssl/stack.pem");
    let k = Path::new("/etc/ssl/private/stack.key");
    fs.write_atomic(c, cert.as_bytes(), 0o644, 0, 0).unwrap();
    fs.write_atomic(k, key.as_bytes(), 0o600, 0, 0).unwrap();
    TlsSpec::Files {
        certificate: c.into(),
        key: k.into(),
    }
}

#[test]
fn operator_files_are_checked_before_anything_is_written() {
    let (_dir, fs) = root();
    let (cert, key) = operator_pair(90);
    let (_, other_key) = operator_pair(90);
    let (expired, expired_key) = operator_pair(-1);
    let refused = |spec: TlsSpec| {
        let err = install(&fs, &spec).unwrap_err();
        assert!(!fs.exists(Path::new(SERVER_KEY)), "nothing written: {err}");
        assert!(!fs.exists(Path::new(SERVER_CERT)));
        let text = err.to_string();
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
            "{text}"
        );
        err
    };
    let err = refused(files_spec(&fs, &cert, &other_key));
    assert_eq!(
        err,
        TlsError::KeyMismatch {
            certificate: "/etc/ssl/stack.pem".into(),
            key: "/etc/ssl/private/stack.key".into()
        }
    );
    assert!(matches!(
        refused(files_spec(&fs, "not a certificate", &key)),
        TlsError::NotACertificate { path } if path == "/etc/ssl/stack.pem"
    ));
    assert!(matches!(
        refused(files_spec(&fs, &cert, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")),
        TlsError::NotAKey { path, .. } if path == "/etc/ssl/private/stack.key"
    ));
    assert!(matches!(
        refused(files_spec(&fs, &expired, &expired_key)),
        TlsError::Expired { path, .. } if path == "/etc/ssl/stack.pem"
    ));
    assert!(matches!(
        refused(TlsSpec::Files { certificate: "/nonexistent.pem".into(), key: "/nonexistent.key".into() }),
        TlsError::Unreadable { path, .. } if path == "/nonexistent.pem"
    ));

    // A good pair is copied as it is; a renewed one is noticed.
    let spec = files_spec(&fs, &cert, &key);
    install(&fs, &spec).unwrap();
    assert_eq!(
        std::fs::read_to_string(fs.path(Path::new(SERVER_CERT))).unwrap(),
        cert
    );
    assert_eq!(change(&spec, Some(&gather(&fs, &spec))), None);
    let (renewed, renewed_key) = operator_pair(365);
    let spec = files_spec(&fs, &renewed, &renewed_key);
    assert_eq!(
        change(&spec, Some(&gather(&fs, &spec))),
        Some("certificate files changed")
    );
}
