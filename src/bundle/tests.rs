use super::*;
use std::os::unix::fs::OpenOptionsExt;

/// The default configuration's components on bookworm/amd64.
fn default_stack() -> Vec<crate::model::ComponentSpec> {
    let config = crate::config::load_texts(&[("t.toml", "")]).unwrap();
    let platform = crate::components::Platform {
        codename: "bookworm".into(),
        arch: "amd64".into(),
        ..Default::default()
    };
    crate::components::render_all(&config, &platform)
}

fn sample(dir: &Path) -> Manifest {
    std::fs::create_dir_all(dir.join("debs")).unwrap();
    std::fs::write(dir.join("debs/a_1_amd64.deb"), b"deb bytes").unwrap();
    std::fs::write(dir.join("debs/Packages"), b"Package: a\n").unwrap();
    std::fs::create_dir_all(dir.join("archives/uv")).unwrap();
    std::fs::write(dir.join("archives/uv/uv.whl"), b"zip bytes").unwrap();
    Manifest {
        format: FORMAT,
        distro: "bookworm".into(),
        arch: "amd64".into(),
        created_by: "test".into(),
        debian_packages: vec!["a".into()],
        archives: vec![BundledArchive {
            component: "uv".into(),
            version: "0.1".into(),
            path: "archives/uv/uv.whl".into(),
        }],
        venvs: vec![],
        apt_suites: vec![],
        components: vec!["postgres".into()],
        files: list_files(dir).unwrap(),
    }
}

#[test]
fn a_written_bundle_opens_verified_and_names_its_parts() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let manifest = sample(&src);
    let out = t.path().join("b.tar");
    write(&src, &manifest, &out).unwrap();
    let b = open(&out, &t.path().join("x"), "bookworm", "amd64").unwrap();
    assert_eq!(b.manifest, manifest);
    assert_eq!(
        std::fs::read(b.root.join("debs/a_1_amd64.deb")).unwrap(),
        b"deb bytes"
    );
    let (path, sha) = b.archive("uv", "0.1").unwrap();
    assert_eq!(sha, crate::util::sha256_hex(b"zip bytes"));
    assert!(path.ends_with("archives/uv/uv.whl"));
    assert!(b.apt_sources().is_empty(), "no signed suites, no sources");
    // Opening it again reuses the extraction.
    let again = open(&out, &t.path().join("x"), "bookworm", "amd64").unwrap();
    assert_eq!(again.root, b.root);
}

#[test]
fn one_altered_byte_is_refused_naming_the_file_and_nothing_is_left() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let manifest = sample(&src);
    let out = t.path().join("b.tar");
    write(&src, &manifest, &out).unwrap();
    let mut bytes = std::fs::read(&out).unwrap();
    let at = bytes.windows(9).position(|w| w == b"deb bytes").unwrap();
    bytes[at] ^= 1;
    std::fs::write(&out, &bytes).unwrap();
    let extract = t.path().join("x");
    let err = open(&out, &extract, "bookworm", "amd64").unwrap_err();
    assert!(err.is_integrity());
    assert!(err.to_string().contains("debs/a_1_amd64.deb"), "{err}");
    assert!(err.to_string().contains("altered"), "{err}");
    assert_eq!(
        std::fs::read_dir(&extract).unwrap().count(),
        0,
        "nothing extracted"
    );
}

#[test]
fn another_platform_a_missing_file_or_an_extra_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let manifest = sample(&src);
    let out = t.path().join("b.tar");
    write(&src, &manifest, &out).unwrap();
    let err = open(&out, &t.path().join("x"), "trixie", "amd64").unwrap_err();
    assert!(
        err.to_string()
            .contains("Debian bookworm amd64, this host is Debian trixie amd64"),
        "{err}"
    );
    let err = open(&out, &t.path().join("x"), "bookworm", "arm64").unwrap_err();
    assert!(matches!(err, BundleError::Platform { .. }));

    // A manifest that lists a file the tar does not hold.
    let mut missing = manifest.clone();
    missing.files.push(ManifestFile {
        path: "wheels/gone.whl".into(),
        sha256: "00".into(),
        size: 1,
    });
    let listed: Vec<(String, Vec<u8>)> = manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), std::fs::read(src.join(&f.path)).unwrap()))
        .collect();
    let tar_with_missing = t.path().join("m.tar");
    hand_made_tar(&tar_with_missing, &missing, &listed);
    let err = open(&tar_with_missing, &t.path().join("y"), "bookworm", "amd64").unwrap_err();
    assert!(
        err.to_string().contains("wheels/gone.whl is listed"),
        "{err}"
    );

    // A file the manifest does not list.
    let tar_with_extra = t.path().join("e.tar");
    hand_made_tar(
        &tar_with_extra,
        &manifest,
        &[("debs/evil.deb".into(), b"evil".to_vec())],
    );
    let err = open(&tar_with_extra, &t.path().join("z"), "bookworm", "amd64").unwrap_err();
    assert!(err.to_string().contains("debs/evil.deb"), "{err}");
}

/// A tar laid out like a bundle (manifest first) whatever the manifest says.
fn hand_made_tar(path: &Path, manifest: &Manifest, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let text = serde_json::to_vec(manifest).unwrap();
    let entries = std::iter::once((MANIFEST.to_string(), text)).chain(files.iter().cloned());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn a_fifo_or_a_non_bundle_is_refused_without_quoting_its_bytes() {
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Opened without blocking, as the CLI hands over what it opened: refused before a
    // read (a read would block the daemon for ever).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&fifo)
        .unwrap();
    let err = open_file(f, "fifo", &t.path().join("x"), "bookworm", "amd64").unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    // A secret-looking text file: the error says what it is not, and none of it.
    let shadow = t.path().join("shadow");
    std::fs::write(
        &shadow,
        "root:$6$SECRETHASH$abcdef:19000:0:99999:7:::\n".repeat(20),
    )
    .unwrap();
    let err = open(&shadow, &t.path().join("x"), "bookworm", "amd64").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("not a tar archive") || text.contains("first entry"),
        "{text}"
    );
    assert!(
        !text.contains("SECRET") && !text.contains("root:"),
        "{text}"
    );
    assert!(!t
        .path()
        .join("x")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some()));
}

#[test]
fn a_bundle_names_what_a_configuration_needs_and_it_lacks() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let manifest = sample(&src);
    let b = Bundle {
        root: src.clone(),
        manifest,
        suite_dates: Default::default(),
    };
    let desired = default_stack();
    let missing = b.missing_for(&desired);
    // The sample bundle holds package `a` and uv 0.1 only: every component lacks something.
    assert!(
        missing
            .iter()
            .any(|m| m.starts_with("postgres: Debian packages")),
        "{missing:?}"
    );
    assert!(
        missing
            .iter()
            .any(|m| m.starts_with("statsd-exporter: the statsd-exporter")),
        "{missing:?}"
    );
    assert!(
        missing.iter().any(|m| m.contains("the wheels of airflow")),
        "{missing:?}"
    );
    // With only the components it holds, nothing is missing.
    let none: Vec<_> = desired
        .into_iter()
        .filter(|s| s.packages.is_empty() && s.archive.is_none() && s.venv.is_none())
        .collect();
    assert!(b.missing_for(&none).is_empty());
}

#[test]
fn a_bundled_archive_must_be_the_one_the_catalog_pins() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut manifest = sample(&src);
    let desired = default_stack();
    let uv = desired
        .iter()
        .find_map(|s| s.venv.as_ref())
        .unwrap()
        .uv
        .clone();
    // The bundle claims to hold the pinned uv, but its bytes are something else.
    manifest.archives[0].version = uv.version.clone();
    let b = Bundle {
        root: src,
        manifest,
        suite_dates: Default::default(),
    };
    let none = crate::artifact::trust::RecordedDigests::default();
    // Not even root's choice overrides a pin.
    for by_root in [false, true] {
        let err = b.check_trusted(&desired, &none, by_root).unwrap_err();
        assert!(matches!(err, BundleError::NotAsPinned { .. }), "{err}");
        assert!(err.to_string().contains("archives/uv/uv.whl"), "{err}");
    }
}

#[test]
fn an_unpinned_bundled_archive_needs_a_recorded_digest_or_root() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut manifest = sample(&src);
    let desired = default_stack();
    let statsd = desired
        .iter()
        .find(|s| s.name == "statsd-exporter")
        .and_then(|s| s.archive.clone())
        .expect("statsd_exporter comes from its release archive by default");
    assert!(
        !matches!(
            statsd.digest,
            crate::artifact::catalog::DigestSource::Pinned(_)
        ),
        "the catalog does not pin it (the test needs an unpinned archive)"
    );
    std::fs::create_dir_all(src.join("archives/statsd-exporter")).unwrap();
    std::fs::write(
        src.join("archives/statsd-exporter/s.tar.gz"),
        b"whatever binary",
    )
    .unwrap();
    manifest.archives = vec![BundledArchive {
        component: "statsd-exporter".into(),
        version: statsd.version.clone(),
        path: "archives/statsd-exporter/s.tar.gz".into(),
    }];
    manifest.files = list_files(&src).unwrap();
    let b = Bundle {
        root: src,
        manifest,
        suite_dates: Default::default(),
    };
    let actual = crate::util::sha256_hex(b"whatever binary");
    let mut recorded = crate::artifact::trust::RecordedDigests::default();
    // Nothing known of it: root may bring it (and the executor records it) ...
    b.check_trusted(&desired, &recorded, true).unwrap();
    // ... an admin-group member may not, and is told why and what to do.
    let err = b.check_trusted(&desired, &recorded, false).unwrap_err();
    assert!(matches!(err, BundleError::Untrusted { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("archives/statsd-exporter/s.tar.gz")
            && text.contains(&actual)
            && text.contains("only root")
            && text.contains("[archives] sha256"),
        "{text}"
    );
    // Once this version was installed here, the recorded digest decides, for both.
    recorded.record(&statsd, &actual);
    b.check_trusted(&desired, &recorded, false).unwrap();
    recorded.record(&statsd, &"0".repeat(64));
    for by_root in [false, true] {
        let err = b.check_trusted(&desired, &recorded, by_root).unwrap_err();
        assert!(
            matches!(err, BundleError::NotAsPinned { .. })
                && err.to_string().contains("first installed here"),
            "{err}"
        );
    }
}
