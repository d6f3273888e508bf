use super::*;
use std::io::Write;

/// (name, type, mode, contents, link target)
type RawEntry<'a> = (&'a str, tar::EntryType, u32, &'a [u8], Option<&'a str>);

/// A tar.gz with entries written raw, so that hostile names can be built.
fn tar_gz(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, kind, mode, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

use tar::EntryType as T;

#[test]
fn a_release_tarball_unpacks_under_its_version_with_the_top_dir_stripped() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = write(
        tmp.path(),
        "a.tar.gz",
        &tar_gz(&[
            ("grafana-13.0.1/", T::Directory, 0o755, b"", None),
            (
                "grafana-13.0.1/bin/grafana",
                T::Regular,
                0o755,
                b"#!/bin/sh\n",
                None,
            ),
            (
                "grafana-13.0.1/conf/defaults.ini",
                T::Regular,
                0o644,
                b"[server]\n",
                None,
            ),
            (
                "grafana-13.0.1/bin/grafana-server",
                T::Symlink,
                0o777,
                b"",
                Some("grafana"),
            ),
        ]),
    );
    let root = tmp.path().join("opt/grafana");
    let dir = unpack(&archive, ArchiveFormat::TarGz, &root, "13.0.1").unwrap();
    assert_eq!(
        fs::read(dir.join("conf/defaults.ini")).unwrap(),
        b"[server]\n"
    );
    assert_eq!(
        fs::metadata(dir.join("bin/grafana"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(dir.join("bin/grafana-server")).unwrap(),
        Path::new("grafana")
    );
    switch_current(&root, "13.0.1").unwrap();
    assert_eq!(
        fs::read_link(root.join("current")).unwrap(),
        Path::new("13.0.1")
    );
    assert!(root.join("current/bin/grafana").exists());
    // A second version, then the switch: the link is replaced, not removed first.
    let archive2 = write(
        tmp.path(),
        "b.tar.gz",
        &tar_gz(&[("grafana-13.0.2/bin/grafana", T::Regular, 0o755, b"v2", None)]),
    );
    unpack(&archive2, ArchiveFormat::TarGz, &root, "13.0.2").unwrap();
    switch_current(&root, "13.0.2").unwrap();
    assert_eq!(fs::read(root.join("current/bin/grafana")).unwrap(), b"v2");
    let leftovers: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn refused(entries: &[RawEntry]) -> (UnpackError, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let archive = write(tmp.path(), "evil.tar.gz", &tar_gz(entries));
    let root = tmp.path().join("opt/x");
    let err = unpack(&archive, ArchiveFormat::TarGz, &root, "1.0").unwrap_err();
    // Nothing was installed and no staging directory is left.
    let names: Vec<_> = fs::read_dir(&root)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(names.is_empty(), "{names:?}");
    assert!(!tmp.path().join("escaped").exists());
    (err, tmp.path().to_path_buf())
}

#[test]
fn parent_directory_entries_are_refused() {
    let (e, _) = refused(&[
        ("x-1.0/ok", T::Regular, 0o644, b"ok", None),
        ("x-1.0/../../../escaped", T::Regular, 0o644, b"evil", None),
    ]);
    assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
    assert!(e.to_string().contains("would escape"));
}

#[test]
fn absolute_entries_are_refused() {
    let (e, _) = refused(&[("/etc/evil", T::Regular, 0o644, b"evil", None)]);
    assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
}

#[test]
fn links_pointing_out_are_refused() {
    let (e, _) = refused(&[(
        "x-1.0/bin/sh",
        T::Symlink,
        0o777,
        b"",
        Some("../../../../bin/sh"),
    )]);
    assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
    let (e, _) = refused(&[("x-1.0/passwd", T::Symlink, 0o777, b"", Some("/etc/passwd"))]);
    assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
    let (e, _) = refused(&[("x-1.0/h", T::Link, 0o644, b"", Some("../../etc/passwd"))]);
    assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
}

#[test]
fn device_files_and_setuid_bits_are_refused() {
    let (e, _) = refused(&[("x-1.0/dev/sda", T::Block, 0o600, b"", None)]);
    assert!(e.to_string().contains("device file"), "{e}");
    let (e, _) = refused(&[("x-1.0/bin/su", T::Regular, 0o4755, b"x", None)]);
    assert!(e.to_string().contains("setuid"), "{e}");
}

#[test]
fn a_zip_with_one_file_unpacks_and_a_hostile_zip_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file(
            "loki-linux-amd64",
            zip::write::SimpleFileOptions::default().unix_permissions(0o755),
        )
        .unwrap();
        z.write_all(b"\x7fELF stand-in").unwrap();
        z.finish().unwrap();
    }
    let archive = write(tmp.path(), "loki.zip", buf.get_ref());
    let dir = unpack(
        &archive,
        ArchiveFormat::Zip,
        &tmp.path().join("opt/loki"),
        "3.7.0",
    )
    .unwrap();
    assert_eq!(
        fs::metadata(dir.join("loki-linux-amd64"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    let mut evil = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut evil);
        z.start_file("../../escaped", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"evil").unwrap();
        z.finish().unwrap();
    }
    let archive = write(tmp.path(), "evil.zip", evil.get_ref());
    let e = unpack(
        &archive,
        ArchiveFormat::Zip,
        &tmp.path().join("opt/evil"),
        "1",
    )
    .unwrap_err();
    assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
    assert!(!tmp.path().join("escaped").exists());
}

#[test]
fn a_corrupt_archive_is_a_typed_error_and_installs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = tar_gz(&[("x-1/a", T::Regular, 0o644, &[7u8; 4096], None)]);
    bytes.truncate(bytes.len() / 2);
    let archive = write(tmp.path(), "cut.tar.gz", &bytes);
    let e = unpack(
        &archive,
        ArchiveFormat::TarGz,
        &tmp.path().join("opt/x"),
        "1",
    )
    .unwrap_err();
    assert!(
        matches!(e, UnpackError::Corrupt { .. } | UnpackError::Io { .. }),
        "{e}"
    );
    assert!(!tmp.path().join("opt/x/1").exists());
}
