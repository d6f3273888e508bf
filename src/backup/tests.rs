use super::archive::{unpack_verified, BackupWriter};
use super::*;
use std::io::Read;

fn header() -> Header {
    Header {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        created: 1_790_000_000,
        hostname: "db1.example".into(),
        package_version: "0.1.0".into(),
        postgres_major: Some(15),
        databases: vec!["airflow".into(), "warehouse".into()],
        with_telemetry: false,
        components: BTreeMap::new(),
    }
}

const ENTRIES: &[(&str, &[u8])] = &[
    ("postgres/roles.sql", b"CREATE ROLE reader;\n"),
    ("postgres/airflow.dump", b"PGDMP airflow"),
    ("postgres/warehouse.dump", b"PGDMP warehouse rows"),
    (
        "files/etc/analytics-stack/stack.toml",
        b"[nginx]\nport = 8080\n",
    ),
    (
        "files/var/lib/analytics-stack/secrets/postgres-airflow",
        b"s3cret",
    ),
    ("files/var/lib/analytics-stack/dags/mine.py", b"# a DAG\n"),
];

fn backup_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = BackupWriter::new(Vec::new(), &header()).unwrap();
    for (name, data) in entries {
        w.append(
            name,
            *data,
            data.len() as u64,
            (0o640, "root", "root"),
            &|_| {},
        )
        .unwrap();
    }
    w.finish().unwrap().0
}

fn unpack(bytes: &[u8]) -> Result<archive::Unpacked, BackupError> {
    let staging = tempfile::tempdir().unwrap();
    let r = unpack_verified(bytes, staging.path(), "b.tar", &|_| {});
    if let Ok(u) = &r {
        // Staged bytes are read back while the directory exists.
        for ((entry, _, staged), (name, data)) in u.entries.iter().zip(ENTRIES) {
            assert_eq!(&entry.name, name);
            assert_eq!(std::fs::read(staged).unwrap(), *data);
        }
    }
    r
}

#[test]
fn a_backup_reads_back_whole_with_its_header_and_owners() {
    let bytes = backup_bytes(ENTRIES);
    let u = unpack(&bytes).unwrap();
    assert_eq!(u.header, header());
    assert_eq!(u.entries.len(), ENTRIES.len());
    assert!(u
        .entries
        .iter()
        .all(|(e, _, _)| e.mode == 0o640 && e.owner == "root"));
    assert_eq!(
        u.entries[2].1,
        Target::Database("warehouse".into()),
        "entries keep their meaning"
    );
}

/// Every single changed byte of an entry's data is caught, and named.
#[test]
fn a_changed_byte_anywhere_in_the_data_is_refused_by_entry_name() {
    let bytes = backup_bytes(ENTRIES);
    for (name, data) in ENTRIES {
        let at = bytes
            .windows(data.len())
            .position(|w| w == *data)
            .expect("data is stored as is");
        let mut bad = bytes.clone();
        bad[at] ^= 0x20;
        match unpack(&bad) {
            Err(BackupError::Damaged(m)) => assert!(m.contains(name), "{m}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn a_cut_short_file_is_refused() {
    let bytes = backup_bytes(ENTRIES);
    for cut in [bytes.len() - 1024 - 512, bytes.len() / 2, 2048] {
        match unpack(&bytes[..cut]) {
            Err(BackupError::Damaged(m)) => assert!(m.starts_with("b.tar: "), "{m}"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn foreign_files_are_refused_at_their_first_entry() {
    // Random bytes, an empty file, a tar of something else.
    let mut other = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    other
        .append_data(&mut h, "etc/passwd", &b"x:0"[..])
        .unwrap();
    let other = other.into_inner().unwrap();
    for (what, bytes) in [
        ("noise", vec![0x5a; 4096]),
        ("empty", Vec::new()),
        ("another tar", other),
    ] {
        match unpack(&bytes) {
            Err(BackupError::Foreign(m)) => {
                assert!(m.contains("not an analytics-stack backup"), "{what}: {m}")
            }
            r => panic!("{what}: {r:?}"),
        }
    }
    let mut newer = header();
    newer.version = 2;
    let w = BackupWriter::new(Vec::new(), &newer).unwrap();
    match unpack(&w.finish().unwrap().0) {
        Err(BackupError::Foreign(m)) => assert!(m.contains("format 2"), "{m}"),
        r => panic!("{r:?}"),
    }
}

/// An attacker who rebuilds the manifest to match still cannot make a restore write
/// anywhere but the stack's own paths, or write through a link.
#[test]
fn entries_outside_the_stacks_paths_are_refused_even_with_a_matching_manifest() {
    for name in [
        "files/etc/shadow",
        "files/var/lib/analytics-stack/secrets/../../../../etc/shadow",
        "files/etc/analytics-stack/stack.toml/../../../root/.ssh/authorized_keys",
        "files/var/lib/analytics-stack/postgres/15/PG_VERSION",
        "files/var/lib/analytics-stack/dags",
        "files//etc/analytics-stack/stack.toml",
        "postgres/Bad-Name.dump",
        "postgres/x;DROP.dump",
        "../../etc/passwd",
        "/etc/passwd",
    ] {
        match unpack(&crafted(name, b"owned")) {
            Err(BackupError::Damaged(m)) => {
                assert!(m.contains("not a path a restore may write"), "{name}: {m}")
            }
            r => panic!("{name}: {r:?}"),
        }
    }
    // A link entry, even to an allowed name.
    let (mut t, _) = begun();
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    t.append_link(
        &mut l,
        "files/var/lib/analytics-stack/dags/x.py",
        "/etc/shadow",
    )
    .unwrap();
    match unpack(&t.into_inner().unwrap()) {
        Err(BackupError::Damaged(m)) => assert!(m.contains("not a regular file"), "{m}"),
        r => panic!("{r:?}"),
    }
}

/// A tar that begins as a backup does (its header entry), and the header's bytes.
fn begun() -> (tar::Builder<Vec<u8>>, Vec<u8>) {
    let mut t = tar::Builder::new(Vec::new());
    let json = serde_json::to_vec(&header()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o600);
    t.append_data(&mut h, HEADER_ENTRY, json.as_slice())
        .unwrap();
    (t, json)
}

/// A backup as an attacker would write it: one entry under any raw name (the tar
/// crate's writer refuses `..`), and a manifest that matches it.
fn crafted(name: &str, data: &[u8]) -> Vec<u8> {
    let (mut t, json) = begun();
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    t.append(&h, data).unwrap();
    let manifest = Manifest {
        header_sha256: crate::util::sha256_hex(&json),
        entries: vec![Entry {
            name: name.into(),
            size: data.len() as u64,
            sha256: crate::util::sha256_hex(data),
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
        }],
    };
    let json = serde_json::to_vec(&manifest).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o600);
    t.append_data(&mut h, MANIFEST_ENTRY, json.as_slice())
        .unwrap();
    t.into_inner().unwrap()
}

#[test]
fn a_crafted_backup_within_the_stacks_paths_is_accepted() {
    // The crafting itself is sound: the same entry under an allowed name passes.
    let u = unpack_ok(&crafted(
        "files/var/lib/analytics-stack/dags/x.py",
        b"owned",
    ));
    assert_eq!(u, 1);
}

fn unpack_ok(bytes: &[u8]) -> usize {
    let staging = tempfile::tempdir().unwrap();
    unpack_verified(bytes, staging.path(), "b.tar", &|_| {})
        .unwrap()
        .entries
        .len()
}

#[test]
fn what_each_entry_name_means() {
    assert_eq!(target_of(ROLES_ENTRY), Some(Target::Roles));
    assert_eq!(
        target_of("postgres/warehouse.dump"),
        Some(Target::Database("warehouse".into()))
    );
    let file = |name: &str| match target_of(name) {
        Some(Target::File { path, source }) => Some((path, source.kind)),
        _ => None,
    };
    assert_eq!(
        file("files/var/lib/analytics-stack/dags/team/etl.py"),
        Some((
            "/var/lib/analytics-stack/dags/team/etl.py".into(),
            SourceKind::Data
        ))
    );
    assert_eq!(
        file("files/etc/analytics-stack/stack.d/50-site.toml"),
        Some((
            "/etc/analytics-stack/stack.d/50-site.toml".into(),
            SourceKind::Config
        ))
    );
    assert_eq!(
        file("files/var/lib/analytics-stack/state.json"),
        Some((
            "/var/lib/analytics-stack/state.json".into(),
            SourceKind::Reference
        ))
    );
    assert_eq!(file("files/var/lib/analytics-stack/grafana/other.db"), None);
    assert_eq!(
        entry_name(Path::new("/var/lib/analytics-stack/secrets/x")),
        "files/var/lib/analytics-stack/secrets/x"
    );
    // Every source's own entries are accepted back.
    for s in SOURCES {
        let sample = match s.path.strip_suffix('/') {
            Some(tree) => format!("{tree}/a/b"),
            None => s.path.to_string(),
        };
        assert!(
            target_of(&entry_name(Path::new(&sample))).is_some(),
            "{sample}"
        );
    }
}

#[test]
fn retention_removes_only_the_oldest_complete_backups() {
    let names: Vec<String> = [
        file_name(1_790_000_000),
        file_name(1_790_086_400),
        file_name(1_790_172_800),
        format!("{}.partial", file_name(1_790_259_200)),
        "analytics-stack-backup-notes.tar".into(),
        "mine.tar".into(),
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(to_prune(&names, 2), vec![file_name(1_790_000_000)]);
    assert!(to_prune(&names, 3).is_empty());
    assert_eq!(to_prune(&names, 1).len(), 2);
    assert_eq!(file_name(0), "analytics-stack-backup-19700101T000000Z.tar");
    assert_eq!(
        file_name(1_796_256_000),
        "analytics-stack-backup-20261203T000000Z.tar"
    );
    assert_eq!(
        file_name(951_827_696),
        "analytics-stack-backup-20000229T123456Z.tar"
    );
}

#[test]
fn pre_upgrade_backups_have_a_retention_of_their_own() {
    let pre = |t: u64| file_name(t).replacen(FILE_PREFIX, PRE_UPGRADE_PREFIX, 1);
    let names: Vec<String> = vec![
        pre(1_700_000_000),
        pre(1_800_000_000),
        pre(1_750_000_000),
        file_name(1_600_000_000),
        format!("{}.partial", pre(1_600_000_000)),
    ];
    assert_eq!(
        to_prune_named(&names, PRE_UPGRADE_PREFIX, 2),
        vec![pre(1_700_000_000)]
    );
    // Each kind counts its own.
    assert!(to_prune(&names, 1).is_empty());
}

#[test]
fn a_backup_from_a_newer_package_or_postgres_is_refused() {
    let h = header();
    assert!(check_compatible(&h, "0.1.0", 15, "b").is_ok());
    assert!(
        check_compatible(&h, "0.10.0", 17, "b").is_ok(),
        "newer takes older"
    );
    match check_compatible(&h, "0.0.9", 15, "b") {
        Err(BackupError::Incompatible(m)) => {
            assert!(m.contains("0.1.0") && m.contains("0.0.9"), "{m}")
        }
        r => panic!("{r:?}"),
    }
    let mut pg17 = header();
    pg17.postgres_major = Some(17);
    match check_compatible(&pg17, "0.1.0", 15, "b") {
        Err(BackupError::Incompatible(m)) => assert!(m.contains("PostgreSQL 17"), "{m}"),
        r => panic!("{r:?}"),
    }
    assert!(version_older("0.9.0", "0.10.0"));
    assert!(!version_older("1.2.3", "1.2.3"));
}

/// The writer streams: a source larger than any buffer goes through with constant
/// memory, and a source that is shorter or longer than announced fails the backup.
#[test]
fn sources_that_change_while_read_fail_the_backup() {
    let mut w = BackupWriter::new(std::io::sink(), &header()).unwrap();
    let big = 64u64 << 20;
    w.append(
        "postgres/warehouse.dump",
        std::io::repeat(7).take(big),
        big,
        (0o600, "root", "root"),
        &|_| {},
    )
    .unwrap();
    let short = w.append(
        "files/var/lib/analytics-stack/dags/a.py",
        &b"abc"[..],
        10,
        (0o600, "root", "root"),
        &|_| {},
    );
    assert!(short.unwrap_err().to_string().contains("changed while"));
    let long = w.append(
        "files/var/lib/analytics-stack/dags/b.py",
        &b"abcdef"[..],
        3,
        (0o600, "root", "root"),
        &|_| {},
    );
    assert!(long.unwrap_err().to_string().contains("grew while"));
}

#[test]
fn a_schedules_interval_is_read_from_systemd_analyze() {
    let daily = "Normalized form: *-*-* 02:30:00\n    Next elapse: Thu 2026-12-03 02:30:00 UTC\n       From now: 1h 32min left\n       Iter. #2: Fri 2026-12-04 02:30:00 UTC\n       From now: 1 day 1h left\n";
    assert_eq!(interval_from_calendar(daily), Some(86400));
    let weekly = "    Next elapse: Sun 2026-12-27 03:00:00 UTC\n       Iter. #2: Sun 2027-01-03 03:00:00 UTC\n";
    assert_eq!(interval_from_calendar(weekly), Some(7 * 86400));
    let leap = "    Next elapse: Sat 2028-02-28 00:00:00 UTC\n       Iter. #2: Wed 2028-03-01 00:00:00 UTC\n";
    assert_eq!(interval_from_calendar(leap), Some(2 * 86400));
    // systemd 257 (Debian 13) spells the second run "Iteration #2:".
    let trixie = "Normalized form: *-*-* 02:30:00\n    Next elapse: Mon 2026-12-07 02:30:00 UTC\n       From now: 30min left\n   Iteration #2: Tue 2026-12-08 02:30:00 UTC\n       From now: 24h left\n";
    assert_eq!(interval_from_calendar(trixie), Some(86400));
    assert_eq!(interval_from_calendar("Failed to parse"), None);
    // The date arithmetic agrees with file_name's.
    assert_eq!(days_from_civil(2026, 12, 3).unwrap() * 86400, 1_796_256_000);
}
