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

/// A world around the unpack root with a sentinel outside it: what an escape would
/// touch. Returns (tempdir, archive path, root, outside dir).
fn world(bytes: &[u8]) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(outside.join("etc/cron.d")).unwrap();
    fs::write(outside.join("shadow"), b"root:secret\n").unwrap();
    let archive = write(tmp.path(), "evil.tar.gz", bytes);
    let root = tmp.path().join("opt/x");
    (tmp, archive, root, outside)
}

/// Every file under `dir` (links not followed) with its contents and mode.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
                out.push((p, Vec::new(), m.permissions().mode()));
            } else if m.is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.push((p, t.into_os_string().into_encoded_bytes(), 0));
            } else {
                out.push((p.clone(), fs::read(&p).unwrap(), m.permissions().mode()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn chained_links_cannot_carry_a_later_entry_out() {
    // The attack from the review: `up` points at staging's root, `up/esc` is then
    // created *through* `up` as STAGING/esc -> ../../../.. (outside), and a regular
    // entry written through `esc` would land in the host's /etc/cron.d.
    let (tmp, archive, root, outside) = world(&tar_gz(&[
        (
            "x-1/a/b/c/d/up",
            T::Symlink,
            0o777,
            b"",
            Some("../../../.."),
        ),
        (
            "x-1/a/b/c/d/up/esc",
            T::Symlink,
            0o777,
            b"",
            Some("../../../outside"),
        ),
        (
            "x-1/esc/etc/cron.d/job",
            T::Regular,
            0o644,
            b"* * * * * root evil\n",
            None,
        ),
    ]));
    let before = snapshot(&outside);
    let e = unpack(&archive, ArchiveFormat::TarGz, &root, "1").unwrap_err();
    assert!(
        matches!(
            e,
            UnpackError::Forbidden { .. } | UnpackError::Escape { .. }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("up/esc"), "names the culprit: {e}");
    assert_eq!(snapshot(&outside), before);
    assert!(!root.join("1").exists());
    drop(tmp);
}

#[test]
fn entries_never_write_through_a_link_made_by_the_archive() {
    // A link that points inside is fine on its own, but nothing may be created,
    // truncated or chmod'ed through it.
    for (second, kind) in [
        ("x-1/l/file", T::Regular), // a file under a link
        ("x-1/l", T::Directory),    // a directory entry over a link: would chmod its target
        ("x-1/f", T::Regular),      // a file reusing a link's name: would truncate the target
    ] {
        let (_tmp, archive, root, _) = world(&tar_gz(&[
            ("x-1/real/", T::Directory, 0o755, b"", None),
            ("x-1/real/data", T::Regular, 0o644, b"keep", None),
            ("x-1/l", T::Symlink, 0o777, b"", Some("real")),
            ("x-1/f", T::Symlink, 0o777, b"", Some("real/data")),
            (second, kind, 0o777, b"x", None),
        ]));
        let e = unpack(&archive, ArchiveFormat::TarGz, &root, "1").unwrap_err();
        assert!(matches!(e, UnpackError::Forbidden { .. }), "{second}: {e}");
        assert!(
            e.to_string().contains(second.trim_start_matches("x-1/")),
            "{e}"
        );
        assert!(!root.join("1").exists());
    }
}

#[test]
fn hard_links_may_only_name_regular_files_of_the_archive() {
    // Through a link to outside, the hard link would reach the host's shadow file.
    let (_tmp, archive, root, outside) = world(&tar_gz(&[
        ("x-1/o", T::Symlink, 0o777, b"", Some("../../../outside")),
        ("x-1/copy", T::Link, 0o644, b"", Some("x-1/o/shadow")),
    ]));
    let before = snapshot(&outside);
    let e = unpack(&archive, ArchiveFormat::TarGz, &root, "1").unwrap_err();
    assert!(matches!(e, UnpackError::Forbidden { .. }), "{e}");
    assert_eq!(snapshot(&outside), before);
    // A hard link to a link of the archive is refused as well.
    let (_tmp, archive, root, _) = world(&tar_gz(&[
        ("x-1/f", T::Regular, 0o644, b"data", None),
        ("x-1/l", T::Symlink, 0o777, b"", Some("f")),
        ("x-1/h", T::Link, 0o644, b"", Some("x-1/l")),
    ]));
    let e = unpack(&archive, ArchiveFormat::TarGz, &root, "1").unwrap_err();
    assert!(e.to_string().contains("regular file"), "{e}");
    // A hard link to a file of the archive works.
    let (_tmp, archive, root, _) = world(&tar_gz(&[
        ("x-1/f", T::Regular, 0o644, b"data", None),
        ("x-1/h", T::Link, 0o644, b"", Some("x-1/f")),
    ]));
    let dir = unpack(&archive, ArchiveFormat::TarGz, &root, "1").unwrap();
    assert_eq!(fs::read(dir.join("h")).unwrap(), b"data");
}

#[test]
fn links_that_resolve_out_through_other_links_are_refused() {
    // Each link looks harmless as text; `x` resolves through `sub/l` to the parent
    // of staging.
    let (_tmp, archive, root, _) = world(&tar_gz(&[
        ("x-1/sub/l", T::Symlink, 0o777, b"", Some("..")),
        ("x-1/x", T::Symlink, 0o777, b"", Some("sub/l/..")),
    ]));
    let e = unpack(&archive, ArchiveFormat::TarGz, &root, "1").unwrap_err();
    assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
    // A dangling link is refused too: nothing in the archive for it to mean.
    let (_tmp, archive, root, _) = world(&tar_gz(&[(
        "x-1/d",
        T::Symlink,
        0o777,
        b"",
        Some("missing"),
    )]));
    let e = unpack(&archive, ArchiveFormat::TarGz, &root, "1").unwrap_err();
    assert!(e.to_string().contains("link to nothing"), "{e}");
}

#[test]
fn modes_are_masked_and_sizes_capped() {
    let (_tmp, archive, root, _) = world(&tar_gz(&[(
        "x-1/bin/tool",
        T::Regular,
        0o777,
        b"#!/bin/sh\n",
        None,
    )]));
    let dir = unpack(&archive, ArchiveFormat::TarGz, &root, "1").unwrap();
    let mode = fs::metadata(dir.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);

    let big = vec![0u8; 64 * 1024];
    let (_tmp, archive, root, _) = world(&tar_gz(&[("x-1/big", T::Regular, 0o644, &big, None)]));
    let limits = Limits {
        max_bytes: 1024,
        max_entries: 10,
    };
    let e = unpack_with_limits(&archive, ArchiveFormat::TarGz, &root, "1", limits).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e}");
    assert!(!root.join("1").exists());

    let many: Vec<String> = (0..20).map(|i| format!("x-1/f{i}")).collect();
    let entries: Vec<RawEntry> = many
        .iter()
        .map(|n| (n.as_str(), T::Regular, 0o644, &b""[..], None))
        .collect();
    let (_tmp, archive, root, _) = world(&tar_gz(&entries));
    let e = unpack_with_limits(&archive, ArchiveFormat::TarGz, &root, "1", limits).unwrap_err();
    assert!(e.to_string().contains("number of entries"), "{e}");
    // The default limits follow the archive's size.
    let l = Limits::for_archive_size(100 << 20);
    assert!(l.max_bytes >= 1600 << 20 && l.max_entries >= 100_000);
}

#[test]
fn a_zip_link_is_checked_like_a_tar_link() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.add_symlink("out", "../../..", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.finish().unwrap();
    }
    let archive = write(tmp.path(), "l.zip", buf.get_ref());
    let e = unpack(&archive, ArchiveFormat::Zip, &tmp.path().join("opt/z"), "1").unwrap_err();
    assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
}

mod adversarial {
    //! Archives generated from a small alphabet of names, link targets and entry
    //! types, unpacked in a world with a sentinel tree beside the root: whatever the
    //! archive, nothing outside the unpack root changes, and an accepted archive
    //! holds only links the kernel resolves beneath it.
    use super::*;
    use proptest::prelude::*;

    /// One path segment: names that collide, climb, or name what lies outside.
    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&["a", "b", "l", "..", ".", "outside", "etc"][..])
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..5).prop_map(|v| format!("x-1/{}", v.join("/")))
    }

    fn target() -> impl Strategy<Value = String> {
        (any::<bool>(), prop::collection::vec(segment(), 1..6)).prop_map(|(abs, v)| {
            let t = v.join("/");
            if abs {
                format!("/{t}")
            } else {
                t
            }
        })
    }

    /// (name, type, mode, contents, link target), owned.
    type OwnedEntry = (String, T, u32, Vec<u8>, Option<String>);

    #[derive(Debug, Clone)]
    enum Kind {
        File,
        Dir,
        Symlink(String),
        Hard(String),
    }

    fn entry() -> impl Strategy<Value = (String, Kind, u32)> {
        let kind = prop_oneof![
            Just(Kind::File),
            Just(Kind::Dir),
            target().prop_map(Kind::Symlink),
            name().prop_map(Kind::Hard),
        ];
        (
            name(),
            kind,
            prop_oneof![Just(0o644u32), Just(0o777), Just(0o755)],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn nothing_outside_the_root_changes(entries in prop::collection::vec(entry(), 1..8)) {
            let raw: Vec<OwnedEntry> = entries
                .iter()
                .map(|(n, k, m)| match k {
                    Kind::File => (n.clone(), T::Regular, *m, b"payload".to_vec(), None),
                    Kind::Dir => (n.clone(), T::Directory, *m, Vec::new(), None),
                    Kind::Symlink(t) => (n.clone(), T::Symlink, *m, Vec::new(), Some(t.clone())),
                    Kind::Hard(t) => (n.clone(), T::Link, *m, Vec::new(), Some(t.clone())),
                })
                .collect();
            let refs: Vec<RawEntry> = raw
                .iter()
                .map(|(n, k, m, d, l)| (n.as_str(), *k, *m, d.as_slice(), l.as_deref()))
                .collect();
            let (tmp, archive, root, outside) = world(&tar_gz(&refs));
            let before = snapshot(&outside);
            let archive_before = fs::read(&archive).unwrap();
            let result = unpack(&archive, ArchiveFormat::TarGz, &root, "1");
            prop_assert_eq!(snapshot(&outside), before);
            prop_assert_eq!(fs::read(&archive).unwrap(), archive_before);
            // Nothing new beside the root either.
            let mut top: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            top.sort();
            prop_assert_eq!(top, vec![std::ffi::OsString::from("evil.tar.gz"), "opt".into(), "outside".into()]);
            match result {
                Ok(dir) => {
                    for (path, _, mode) in snapshot(&dir) {
                        prop_assert_eq!(mode & 0o7022, 0, "{}", path.display());
                        if fs::symlink_metadata(&path).unwrap().is_symlink() {
                            let real = fs::canonicalize(&path).unwrap();
                            prop_assert!(real.starts_with(fs::canonicalize(&dir).unwrap()), "{} -> {}", path.display(), real.display());
                        }
                    }
                }
                Err(_) => {
                    let left: Vec<_> = fs::read_dir(&root).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
                    prop_assert!(left.is_empty(), "{:?}", left);
                }
            }
        }
    }
}
