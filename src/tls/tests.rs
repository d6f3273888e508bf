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
        (PRIMARY_CLIENT_KEY, 0o600),
        (CA_CERT, 0o644),
        (SERVER_CERT, 0o644),
        (PRIMARY_CLIENT_CERT, 0o644),
    ] {
        let meta = std::fs::metadata(fs.path(Path::new(path))).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{path}");
    }
    // The primary's client certificate (its Prometheus's), of the same CA, for a
    // client only.
    let client_pem = std::fs::read(fs.path(Path::new(PRIMARY_CLIENT_CERT))).unwrap();
    let primary_client = leaf(&client_pem);
    let primary_client = primary_client.parse_x509().unwrap();
    primary_client
        .verify_signature(Some(ca_cert.public_key()))
        .unwrap();
    let eku = primary_client.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(
        primary_client
            .subject()
            .to_string_with_registry(x509_parser::objects::oid_registry())
            .unwrap(),
        "O=analytics-stack, CN=analytics-stack primary"
    );
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(fs.path(Path::new(PRIMARY_CLIENT_CERT)))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("subject={PRIMARY_CLIENT_SUBJECT}"),
        "what NGINX's map compares"
    );
    // The record matches what is there, so the next plan sees it intact.
    let fact = gather(&fs, &self_signed(&["127.0.0.1", "192.0.2.11"]));
    assert!(fact.intact && !fact.renew_due);
    // Without the client certificate (a stack from before it), it is issued again.
    std::fs::remove_file(fs.path(Path::new(PRIMARY_CLIENT_KEY))).unwrap();
    let fact = gather(&fs, &self_signed(&["127.0.0.1", "192.0.2.11"]));
    assert!(!fact.intact);
    install(&fs, &self_signed(&["127.0.0.1", "192.0.2.11"])).unwrap();
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

/// A worker's request, signed by the primary: the subject is the primary's (as
/// NGINX and OpenSSL print it: what the doors' maps compare), the key the worker's,
/// the chain the stack CA's; what the worker accepts back is only that.
#[test]
fn a_worker_certificate_names_its_role_and_identity_and_only_its_own_key() {
    use crate::config::{WorkerIdentity, WorkerName};
    let (dir, fs) = root();
    install(&fs, &self_signed(&["192.0.2.10"])).unwrap();
    let name = WorkerName::try_from("w-1".to_string()).unwrap();
    let identity =
        WorkerIdentity::try_from("0123456789abcdef0123456789abcdef".to_string()).unwrap();
    let (key, request) = client::new_request(&name).unwrap();
    let address: IpAddr = "192.0.2.20".parse().unwrap();
    let cert = client::sign_worker_request(&fs, &request, &name, &identity, address).unwrap();
    let ca = String::from_utf8(std::fs::read(fs.path(Path::new(CA_CERT))).unwrap()).unwrap();
    let kept = client::check_issued(&cert, &key, &ca).unwrap();
    assert_eq!(kept.trim(), cert.trim());

    // OpenSSL's view: the subject NGINX's `$ssl_client_s_dn` gives, the chain, the
    // purposes.
    let cert_path = dir.path().join("w.crt");
    std::fs::write(&cert_path, &cert).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let subject = openssl(&[
        "x509",
        "-in",
        cert_path.to_str().unwrap(),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ]);
    assert_eq!(
        subject.trim(),
        format!("subject={}", client::worker_subject(&name, &identity)),
        "{subject}"
    );
    assert!(
        subject.contains("CN=worker_w_1,"),
        "the PostgreSQL role: {subject}"
    );
    let ca_path = fs.path(Path::new(CA_CERT));
    let verified = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        ca_path.to_str().unwrap(),
        cert_path.to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    let text = openssl(&[
        "x509",
        "-in",
        cert_path.to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(
        text.contains("IP Address:192.0.2.20") && text.contains("TLS Web Client Authentication"),
        "{text}"
    );

    // What the worker refuses: a certificate for another key, one another CA signed,
    // anything beside the certificate.
    let (other_key, other_request) = client::new_request(&name).unwrap();
    let err = client::check_issued(&cert, &other_key, &ca).unwrap_err();
    assert!(err.contains("another key"), "{err}");
    let other_ca = {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let issuer = Issuer::new(params, key);
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&other_request).unwrap();
        let forged = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .signed_by(&csr.public_key, &issuer)
            .unwrap();
        (cert.pem(), forged.pem())
    };
    let err = client::check_issued(&other_ca.1, &other_key, &ca).unwrap_err();
    assert!(err.contains("did not sign"), "{err}");
    let err = client::check_issued(&format!("{cert}{ca}"), &key, &ca).unwrap_err();
    assert!(err.contains("2 PEM blocks"), "{err}");
    // The primary: a request whose signature does not hold (the sender does not have
    // the key), or not a request at all, is not signed.
    let tampered = {
        let mut der = pem::parse(&request).unwrap().into_contents();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
    };
    assert_ne!(tampered, request);
    assert!(client::sign_worker_request(&fs, &tampered, &name, &identity, address).is_err());
    assert!(client::sign_worker_request(&fs, &other_ca.0, &name, &identity, address).is_err());
    // It never makes a CA: without one there is nothing to sign with.
    let (_empty_dir, empty) = root();
    assert!(client::sign_worker_request(&empty, &request, &name, &identity, address).is_err());
    assert!(!empty.exists(Path::new(CA_CERT)));
}
