//! A bundle's Debian packages as a partial mirror that Debian itself vouches for:
//! each suite's signed `InRelease` and the `Packages` index it covers, and the
//! `.deb`s at their pool paths. Before anything is installed, `verify` checks the
//! chain the way apt does — the signature with the host's `debian-archive-keyring`
//! (gpgv), the index's sha256 against the signed text, each `.deb`'s sha256 against
//! the index — and apt then checks it again from a source with `signed-by=`, never
//! `trusted=yes`. A bundle's manifest is an index of its files, not a root of trust.

use super::{BundleError, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The keyring apt trusts for Debian's archives on every Debian host.
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One suite of the partial mirror: `debs/ROOT/dists/SUITE/…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSuite {
    /// `debian` or `debian-security`: the archive the suite belongs to.
    pub root: String,
    /// `bookworm`, `bookworm-updates`, `bookworm-security`.
    pub suite: String,
}

impl AptSuite {
    /// `ROOT/SUITE`, e.g. `debian-security/bookworm-security`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.root, self.suite)
    }
    pub fn dir(&self) -> String {
        format!("debs/{}/dists/{}", self.root, self.suite)
    }
    pub fn in_release(&self) -> String {
        format!("{}/InRelease", self.dir())
    }
    pub fn packages(&self, arch: &str) -> String {
        format!("{}/{}", self.dir(), index_path(arch))
    }
}

/// The index of a suite's packages as the signed Release names it: Debian publishes
/// it xz-compressed, and apt asks for that file first.
pub fn index_path(arch: &str) -> String {
    format!("main/binary-{arch}/Packages.xz")
}

/// The text of a compressed index, decompressed by apt's own helper (present
/// wherever apt is; xz-utils need not be).
fn read_xz(path: &Path) -> Result<String, String> {
    let out = std::process::Command::new("/usr/lib/apt/apt-helper")
        .arg("cat-file")
        .arg(path)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run apt-helper: {e}"))?;
    if !out.status.success() {
        return Err("not a compressed index apt can read".into());
    }
    String::from_utf8(out.stdout).map_err(|_| "not UTF-8 text".into())
}

/// apt sources for the bundle extracted at `root`: signature checked, never trusted
/// blindly. `check-valid-until=no`: the security suite's signature says it is fresh
/// for a week only, and an offline bundle is older than that by design (it still
/// installs only what Debian signed).
pub fn sources(root: &Path, suites: &[AptSuite]) -> String {
    suites
        .iter()
        .map(|s| {
            format!(
                "deb [signed-by={KEYRING} check-valid-until=no] file:{}/debs/{} {} main\n",
                root.display(),
                s.root,
                s.suite
            )
        })
        .collect()
}

fn unsigned(bundle: &str, file: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Unsigned {
        bundle: bundle.into(),
        file: file.into(),
        reason: reason.into(),
    }
}

/// The text `keyring` signed in the clearsigned `in_release`, or why not.
fn signed_text(in_release: &Path, keyring: &Path) -> Result<String, String> {
    let out = std::process::Command::new("/usr/bin/gpgv")
        .arg("--keyring")
        .arg(keyring)
        .args(["--output", "-"])
        .arg(in_release)
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run gpgv: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // gpgv's own words ("BAD signature", "No public key"), not the file's.
        let why: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("gpgv:"))
            .map(|l| l.trim_start_matches("gpgv:").trim())
            .filter(|l| !l.starts_with("Signature made") && !l.starts_with("using "))
            .collect();
        return Err(if why.is_empty() {
            "the signature does not verify".into()
        } else {
            why.join("; ")
        });
    }
    String::from_utf8(out.stdout).map_err(|_| "the signed text is not UTF-8".into())
}

/// The sha256 the signed Release text gives for `path` (e.g. `main/binary-amd64/Packages`).
pub fn release_sha256(release: &str, path: &str) -> Option<String> {
    let mut in_sha256 = false;
    for line in release.lines() {
        if !line.starts_with(' ') {
            in_sha256 = line.trim_end() == "SHA256:";
            continue;
        }
        if in_sha256 {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [hex, _size, p] = f[..] {
                if p == path {
                    return Some(hex.to_ascii_lowercase());
                }
            }
        }
    }
    None
}

/// `Filename` → `SHA256` of each stanza of a Packages index whose file is wanted.
pub fn package_hashes(
    packages: &str,
    wanted: &std::collections::BTreeSet<&str>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stanza in packages.split("\n\n") {
        let mut file = None;
        let mut sha = None;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Filename: ") {
                file = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("SHA256: ") {
                sha = Some(v.trim());
            }
        }
        if let (Some(f), Some(s)) = (file, sha) {
            if wanted.contains(f) {
                out.insert(f.to_string(), s.to_ascii_lowercase());
            }
        }
    }
    out
}

/// When the suite was signed: the signed Release's `Date:` (`Sat, 08 Nov 2025
/// 09:43:20 UTC`), in seconds since the epoch.
pub fn release_date(release: &str) -> Option<u64> {
    let value = release
        .lines()
        .find_map(|l| l.strip_prefix("Date:"))?
        .trim();
    // `Day, DD Mon YYYY HH:MM:SS UTC` (Debian writes UTC; `+0000` and GMT are the same).
    let rest = value.split_once(", ").map_or(value, |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, time, zone] = fields.as_slice() else {
        return None;
    };
    if !["UTC", "GMT", "+0000", "Z"].contains(zone) {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day)
        || !(0..24).contains(h)
        || !(0..60).contains(m)
        || !(0..61).contains(sec)
    {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
    // days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec).ok()
}

/// Checks every Debian file of the bundle extracted at `root` against Debian's
/// signatures with `keyring`; `bundle` names it in errors. Returns when each suite
/// was signed (`ROOT/SUITE` → its Release's date), for [`check_not_older`].
pub fn verify(
    root: &Path,
    manifest: &Manifest,
    keyring: &Path,
    bundle: &str,
) -> Result<BTreeMap<String, u64>, BundleError> {
    let debs: Vec<&super::ManifestFile> = manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with("debs/"))
        .collect();
    let mut dates = BTreeMap::new();
    if debs.is_empty() && manifest.debian_packages.is_empty() {
        return Ok(dates);
    }
    if manifest.apt_suites.is_empty() {
        return Err(unsigned(
            bundle,
            "debs/",
            "the bundle carries Debian packages without Debian's signed indexes (made by an \
             older analytics-stack?): create it again",
        ));
    }
    let index_files: std::collections::BTreeSet<String> = manifest
        .apt_suites
        .iter()
        .flat_map(|s| [s.in_release(), s.packages(&manifest.arch)])
        .collect();
    // Pool files, by archive root: `pool/…` → (manifest path, sha256).
    let mut pool: BTreeMap<&str, BTreeMap<&str, &super::ManifestFile>> = BTreeMap::new();
    for f in &debs {
        if index_files.contains(&f.path) {
            continue;
        }
        let rest = &f.path["debs/".len()..];
        let Some((archive, rel)) = rest.split_once('/').filter(|(_, r)| r.starts_with("pool/"))
        else {
            return Err(unsigned(
                bundle,
                &f.path,
                "not a pool file of a signed suite",
            ));
        };
        pool.entry(archive).or_default().insert(rel, f);
    }
    let mut vouched: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for suite in &manifest.apt_suites {
        let in_release = suite.in_release();
        let signed = signed_text(&root.join(&in_release), keyring)
            .map_err(|why| unsigned(bundle, &in_release, why))?;
        let date = release_date(&signed)
            .ok_or_else(|| unsigned(bundle, &in_release, "it carries no Date"))?;
        dates.insert(suite.key(), date);
        let packages_path = suite.packages(&manifest.arch);
        let index_path = index_path(&manifest.arch);
        let want = release_sha256(&signed, &index_path).ok_or_else(|| {
            unsigned(
                bundle,
                &in_release,
                format!("it lists no sha256 for {index_path}"),
            )
        })?;
        let have = manifest
            .files
            .iter()
            .find(|f| f.path == packages_path)
            .map(|f| f.sha256.clone())
            .ok_or_else(|| unsigned(bundle, &packages_path, "missing"))?;
        if have != want {
            return Err(unsigned(
                bundle,
                &packages_path,
                format!("sha256 {have}, but the signed InRelease says {want}"),
            ));
        }
        let Some(files) = pool.get(suite.root.as_str()) else {
            continue;
        };
        let text = read_xz(&root.join(&packages_path))
            .map_err(|why| unsigned(bundle, &packages_path, why))?;
        let wanted = files.keys().copied().collect();
        for (file, sha) in package_hashes(&text, &wanted) {
            if let Some((rel, _)) = files.get_key_value(file.as_str()) {
                vouched.insert((suite.root.as_str(), rel), sha);
            }
        }
    }
    for (archive, files) in &pool {
        for (rel, f) in files {
            match vouched.get(&(*archive, *rel)) {
                Some(sha) if *sha == f.sha256 => {}
                Some(sha) => {
                    return Err(unsigned(
                        bundle,
                        &f.path,
                        format!("sha256 {}, but Debian's signed index says {sha}", f.sha256),
                    ))
                }
                None => return Err(unsigned(bundle, &f.path, "no signed index lists it")),
            }
        }
    }
    Ok(dates)
}

/// Where the dates of the suites this host installed from are kept.
pub const SUITE_DATES_FILE: &str = "/var/lib/analytics-stack/apt-suite-dates.json";

/// A bundle's suites may not be older than what this host already installed from:
/// Debian's signature on an old suite stays valid (bundles install with
/// `check-valid-until=no`), and a replayed one would bring package versions with
/// flaws fixed since — for packages not installed yet, since apt never downgrades
/// the others. `seen` is [`SUITE_DATES_FILE`]'s map.
pub fn check_not_older(
    bundle: &str,
    dates: &BTreeMap<String, u64>,
    seen: &BTreeMap<String, u64>,
) -> Result<(), BundleError> {
    for (suite, date) in dates {
        if let Some(newest) = seen.get(suite).filter(|newest| date < newest) {
            let (root, name) = suite.split_once('/').unwrap_or(("debian", suite));
            return Err(unsigned(
                bundle,
                &format!("debs/{root}/dists/{name}/InRelease"),
                format!(
                    "Debian signed it {} days before the {suite} this host already installed from: an older suite could bring versions with flaws fixed since; create the bundle again",
                    (newest - date).div_ceil(86_400)
                ),
            ));
        }
    }
    Ok(())
}

/// `seen` with `dates` merged in, each suite at its newest.
pub fn newest_dates(
    seen: &BTreeMap<String, u64>,
    dates: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut merged = seen.clone();
    for (suite, date) in dates {
        let entry = merged.entry(suite.clone()).or_insert(*date);
        *entry = (*entry).max(*date);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_text_gives_the_index_hash_from_its_sha256_section() {
        let release = "Origin: Debian\nMD5Sum:\n aaaa 10 main/binary-amd64/Packages\nSHA256:\n 0123 5 main/binary-arm64/Packages\n ABCD 50060337 main/binary-amd64/Packages\n 9999 7 main/binary-amd64/Packages.xz\n";
        assert_eq!(
            release_sha256(release, "main/binary-amd64/Packages").as_deref(),
            Some("abcd")
        );
        assert_eq!(
            release_sha256(release, &index_path("amd64")).as_deref(),
            Some("9999")
        );
        assert_eq!(release_sha256(release, "main/binary-i386/Packages"), None);
    }

    #[test]
    fn only_wanted_files_of_the_index_are_kept() {
        let packages = "Package: a\nFilename: pool/main/a/a_1_amd64.deb\nSHA256: AA\n\nPackage: b\nFilename: pool/main/b/b_1_amd64.deb\nSHA256: bb\n";
        let wanted = ["pool/main/a/a_1_amd64.deb"].into_iter().collect();
        let got = package_hashes(packages, &wanted);
        assert_eq!(got.len(), 1);
        assert_eq!(got["pool/main/a/a_1_amd64.deb"], "aa");
    }
}

#[cfg(test)]
mod signed {
    //! The whole chain with a real signature: a throwaway key stands in for Debian's
    //! (gpg makes it; gpgv checks it exactly as for the real keyring).
    use super::*;
    use crate::bundle::ManifestFile;
    use std::process::Command;

    struct Archive {
        _tmp: tempfile::TempDir,
        root: std::path::PathBuf,
        keyring: std::path::PathBuf,
        other_keyring: std::path::PathBuf,
        manifest: Manifest,
    }

    fn gpg(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        use std::io::Write;
        let mut c = Command::new("gpg")
            .arg("--homedir")
            .arg(home)
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or(b""))
            .unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "gpg {args:?}");
        out.stdout
    }

    fn key(dir: &Path, name: &str) -> std::path::PathBuf {
        let home = dir.join(format!("gnupg-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        gpg(
            &home,
            &[
                "--quick-gen-key",
                &format!("{name} <{name}@test>"),
                "ed25519",
                "sign",
                "never",
            ],
            None,
        );
        let exported = gpg(&home, &["--export"], None);
        std::fs::write(dir.join(format!("{name}.gpg")), exported).unwrap();
        home
    }

    fn file(root: &Path, path: &str, bytes: &[u8]) -> ManifestFile {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        ManifestFile {
            path: path.into(),
            sha256: crate::util::sha256_hex(bytes),
            size: bytes.len() as u64,
        }
    }

    fn archive() -> Archive {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("bundle");
        let home = key(tmp.path(), "debian");
        key(tmp.path(), "other");
        let deb = b"!<arch>\ndebian-binary stand-in".to_vec();
        let rel = "pool/main/p/pkg/pkg_1.0_amd64.deb";
        let packages = format!(
            "Package: pkg\nVersion: 1.0\nFilename: {rel}\nSHA256: {}\n\nPackage: other\nFilename: pool/main/o/other_1_amd64.deb\nSHA256: {}\n",
            crate::util::sha256_hex(&deb),
            "0".repeat(64)
        );
        let xz = {
            use std::io::Write;
            let mut c = Command::new("xz")
                .args(["--compress", "--stdout"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin
                .take()
                .unwrap()
                .write_all(packages.as_bytes())
                .unwrap();
            c.wait_with_output().unwrap().stdout
        };
        let release = format!(
            "Origin: Debian\nSuite: bookworm\nDate: Sat, 08 Nov 2025 09:43:20 UTC\nSHA256:\n {} {} main/binary-amd64/Packages\n {} {} main/binary-amd64/Packages.xz\n",
            crate::util::sha256_hex(packages.as_bytes()),
            packages.len(),
            crate::util::sha256_hex(&xz),
            xz.len()
        );
        let signed = gpg(&home, &["--clearsign"], Some(release.as_bytes()));
        let suite = AptSuite {
            root: "debian".into(),
            suite: "bookworm".into(),
        };
        let files = vec![
            file(&root, &suite.in_release(), &signed),
            file(&root, &suite.packages("amd64"), &xz),
            file(&root, &format!("debs/debian/{rel}"), &deb),
        ];
        let manifest = Manifest {
            format: crate::bundle::FORMAT,
            distro: "bookworm".into(),
            arch: "amd64".into(),
            created_by: "test".into(),
            debian_packages: vec!["pkg".into()],
            archives: vec![],
            venvs: vec![],
            apt_suites: vec![suite],
            components: vec![],
            files,
        };
        Archive {
            keyring: tmp.path().join("debian.gpg"),
            other_keyring: tmp.path().join("other.gpg"),
            root,
            manifest,
            _tmp: tmp,
        }
    }

    #[test]
    fn a_suite_older_than_the_one_installed_from_is_refused() {
        assert_eq!(
            release_date("Date: Thu, 01 Jan 1970 00:00:00 UTC\n"),
            Some(0)
        );
        // `date -u -d 'Sat, 08 Nov 2025 09:43:20 UTC' +%s`
        assert_eq!(
            release_date("Origin: Debian\nDate: Sat, 08 Nov 2025 09:43:20 UTC\n"),
            Some(1_762_595_000)
        );
        assert_eq!(
            release_date("Date: Tue, 29 Feb 2028 23:59:59 +0000\n"),
            Some(1_835_481_599)
        );
        for bad in [
            "Date: Sat, 08 Nov 2025 09:43:20 CET\n",
            "Date: Sat, 08 Foo 2025 09:43:20 UTC\n",
            "Date: 08 Nov 2025\n",
            "Valid-Until: Sat, 08 Nov 2025 09:43:20 UTC\n",
        ] {
            assert_eq!(release_date(bad), None, "{bad}");
        }
        let dates = |d: u64| BTreeMap::from([("debian/bookworm".to_string(), d)]);
        let seen = dates(1_762_595_000);
        check_not_older("b.tar", &dates(1_762_595_000), &seen).unwrap();
        check_not_older("b.tar", &dates(1_762_595_001), &seen).unwrap();
        check_not_older("b.tar", &dates(1), &BTreeMap::new()).unwrap();
        let e = check_not_older("b.tar", &dates(1_762_595_000 - 30 * 86_400), &seen).unwrap_err();
        assert!(
            e.to_string()
                .contains("debs/debian/dists/bookworm/InRelease")
                && e.to_string().contains("30 days before"),
            "{e}"
        );
        assert_eq!(newest_dates(&seen, &dates(5)), seen);
        assert_eq!(
            newest_dates(&seen, &dates(1_800_000_000)),
            dates(1_800_000_000)
        );
    }

    #[test]
    fn a_signed_partial_mirror_verifies_and_every_break_in_the_chain_is_refused() {
        let a = archive();
        let dates = verify(&a.root, &a.manifest, &a.keyring, "b.tar").unwrap();
        assert_eq!(
            dates,
            BTreeMap::from([("debian/bookworm".to_string(), 1_762_595_000)])
        );

        // Signed by a key the host does not trust.
        let e = verify(&a.root, &a.manifest, &a.other_keyring, "b.tar").unwrap_err();
        assert!(matches!(e, BundleError::Unsigned { .. }), "{e}");
        assert!(e.to_string().contains("InRelease"), "{e}");

        // A .deb swapped, with a manifest that vouches for it.
        let mut m = a.manifest.clone();
        let evil = file(
            &a.root,
            "debs/debian/pool/main/p/pkg/pkg_1.0_amd64.deb",
            b"evil postinst",
        );
        m.files[2] = evil;
        let e = verify(&a.root, &m, &a.keyring, "b.tar").unwrap_err();
        assert!(e.to_string().contains("Debian's signed index says"), "{e}");

        // An index rewritten to match the swapped .deb.
        let mut m = a.manifest.clone();
        m.files[1] = file(
            &a.root,
            &m.apt_suites[0].packages("amd64"),
            b"Package: pkg\n",
        );
        let e = verify(&a.root, &m, &a.keyring, "b.tar").unwrap_err();
        assert!(e.to_string().contains("the signed InRelease says"), "{e}");

        // A .deb no signed index lists.
        let a = archive();
        let mut m = a.manifest.clone();
        m.files
            .push(file(&a.root, "debs/debian/pool/main/x/x_1_amd64.deb", b"x"));
        let e = verify(&a.root, &m, &a.keyring, "b.tar").unwrap_err();
        assert!(e.to_string().contains("no signed index lists it"), "{e}");

        // A bundle with packages but no signed suites (the old flat layout).
        let mut m = a.manifest.clone();
        m.apt_suites.clear();
        let e = verify(&a.root, &m, &a.keyring, "b.tar").unwrap_err();
        assert!(
            e.to_string().contains("without Debian's signed indexes"),
            "{e}"
        );
    }
}
