//! Offline bundles: one file holding everything an install needs (Debian packages with
//! their dependencies, the wheels of the lock files, release archives, uv, the
//! catalog), described by a manifest with the sha256 of every file.
//!
//! A bundle is a plain tar (its contents are compressed already) whose first entry is
//! `manifest.json`. Opening one verifies it whole before anything is installed: every
//! file is hashed while it is extracted into a staging directory; a file that is
//! missing, altered, unexpected or escaping, or a bundle for another distribution or
//! architecture, is refused with the file named, and the staging directory is removed.

pub mod create;
pub mod debian;
pub mod wheels;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: u32 = 1;
/// Where verified bundles are extracted, one directory per manifest.
pub const EXTRACT_ROOT: &str = "/var/cache/analytics-stack/bundles";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Debian codename the packages were resolved for.
    pub distro: String,
    /// Debian architecture.
    pub arch: String,
    pub created_by: String,
    /// The Debian packages asked for (their dependencies are in `debs/` too).
    pub debian_packages: Vec<String>,
    /// Release archives (and uv), by component.
    pub archives: Vec<BundledArchive>,
    /// Applications whose wheels are in `wheels/`.
    pub venvs: Vec<String>,
    /// The suites of the signed partial Debian mirror under `debs/` (see
    /// [`debian`]); empty in bundles made before packages were carried signed.
    #[serde(default)]
    pub apt_suites: Vec<debian::AptSuite>,
    /// The components the bundle was made for (the configuration `bundle create`
    /// read); empty in bundles made before this was recorded.
    #[serde(default)]
    pub components: Vec<String>,
    /// Every other file of the bundle.
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundledArchive {
    pub component: String,
    pub version: String,
    /// The file in the bundle (also listed in `files`).
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{bundle} is not an analytics-stack bundle: {reason}")]
    NotABundle { bundle: String, reason: String },
    #[error("{bundle} is for {bundle_platform}, this host is {host}")]
    Platform {
        bundle: String,
        bundle_platform: String,
        host: String,
    },
    #[error("{file} in {bundle} is altered: sha256 {actual} (size {actual_size}), the manifest says {expected} (size {expected_size})")]
    Altered {
        bundle: String,
        file: String,
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },
    #[error("{file} is listed in the manifest of {bundle} but missing from it")]
    Missing { bundle: String, file: String },
    #[error("{file} in {bundle} is not in its manifest (or appears twice)")]
    Unexpected { bundle: String, file: String },
    #[error("{file} in {bundle} is not a plain relative path inside the bundle")]
    Unsafe { bundle: String, file: String },
    #[error("{file} in {bundle} is not what Debian signed: {reason}")]
    Unsigned {
        bundle: String,
        file: String,
        reason: String,
    },
    #[error("{file} in {bundle} is not the archive this host trusts for this version: sha256 {actual}, {trusted_by} says {pinned}")]
    NotAsPinned {
        bundle: String,
        file: String,
        actual: String,
        pinned: String,
        /// Where the trusted digest comes from (the catalog's or the operator's pin,
        /// or the digest recorded when the version was first installed here).
        trusted_by: String,
    },
    #[error("{file} in {bundle} is {component} {version} with sha256 {actual}, a digest this host does not trust yet (no pin in the catalog or in [archives] sha256, and this version was never installed here): only root may apply a bundle that brings it (its digest is then recorded), or pin it in [archives] sha256; nothing was changed")]
    Untrusted {
        bundle: String,
        file: String,
        component: String,
        version: String,
        actual: String,
    },
}

impl BundleError {
    /// A problem with the bundle's contents (as opposed to the host's I/O).
    pub fn is_integrity(&self) -> bool {
        !matches!(self, BundleError::Io { .. })
    }
}

/// A verified, extracted bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub root: PathBuf,
    pub manifest: Manifest,
    /// When Debian signed each of its suites (`ROOT/SUITE` → seconds), once
    /// [`debian::verify`] checked them; empty before.
    pub suite_dates: std::collections::BTreeMap<String, u64>,
}

impl Bundle {
    /// The bundle's partial Debian mirror as apt sources, checked by apt against
    /// Debian's keyring (see [`debian::sources`]).
    pub fn apt_sources(&self) -> String {
        debian::sources(&self.root, &self.manifest.apt_suites)
    }

    pub fn wheels(&self) -> PathBuf {
        self.root.join("wheels")
    }

    /// The bundled archive of `component` at `version`, with its sha256.
    pub fn archive(&self, component: &str, version: &str) -> Option<(PathBuf, String)> {
        let a = self
            .manifest
            .archives
            .iter()
            .find(|a| a.component == component && a.version == version)?;
        let f = self.manifest.files.iter().find(|f| f.path == a.path)?;
        Some((self.root.join(&a.path), f.sha256.clone()))
    }
}

impl Bundle {
    /// What `desired` needs that the bundle does not hold, one line per component
    /// (Debian packages, release archives, venvs), so that an apply can be refused
    /// before it changes anything.
    pub fn missing_for(&self, desired: &[crate::model::ComponentSpec]) -> Vec<String> {
        let m = &self.manifest;
        let mut missing = Vec::new();
        for spec in desired {
            let mut lacks = Vec::new();
            let packages: Vec<&str> = spec
                .packages
                .iter()
                .filter(|p| !m.debian_packages.contains(p))
                .map(String::as_str)
                .collect();
            if !packages.is_empty() {
                lacks.push(format!("Debian packages {}", packages.join(", ")));
            }
            for pin in spec.archive_pins() {
                if self.archive(&pin.component, &pin.version).is_none() {
                    lacks.push(format!("the {} {} archive", pin.component, pin.version));
                }
            }
            if let Some(venv) = &spec.venv {
                if !m.venvs.contains(&venv.name) {
                    lacks.push(format!("the wheels of {}", venv.name));
                }
            }
            if !lacks.is_empty() {
                missing.push(format!("{}: {}", spec.name, lacks.join("; ")));
            }
        }
        missing.sort();
        missing.dedup();
        missing
    }

    /// A bundled release archive is trusted as much as a downloaded one, never on the
    /// bundle's own word: it must be the very file the catalog or the operator pins,
    /// or the one this host recorded when it first installed that version (trust on
    /// first use, kept across uninstall). An archive the host knows nothing of is
    /// accepted only from root (`introduced_by_root`), and the executor then records
    /// its digest; from a member of `admin_group` it is refused, since whatever binary
    /// it carries would run with its service's credentials.
    pub fn check_trusted(
        &self,
        desired: &[crate::model::ComponentSpec],
        recorded: &crate::artifact::trust::RecordedDigests,
        introduced_by_root: bool,
    ) -> Result<(), BundleError> {
        use crate::artifact::catalog::DigestSource;
        for pin in desired.iter().flat_map(|s| s.archive_pins()) {
            let Some((path, actual)) = self.archive(&pin.component, &pin.version) else {
                continue;
            };
            let file = path
                .strip_prefix(&self.root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let trusted = match (&pin.digest, recorded.get(pin)) {
                (DigestSource::Pinned(pinned), _) => {
                    Some((pinned.clone(), "the pin (catalog or [archives] sha256)"))
                }
                (_, Some(first)) => Some((
                    first.to_string(),
                    "the digest recorded when this version was first installed here",
                )),
                _ => None,
            };
            match trusted {
                Some((pinned, _)) if actual.eq_ignore_ascii_case(&pinned) => {}
                Some((pinned, trusted_by)) => {
                    return Err(BundleError::NotAsPinned {
                        bundle: self.root.display().to_string(),
                        file,
                        actual,
                        pinned,
                        trusted_by: trusted_by.into(),
                    })
                }
                None if introduced_by_root => {}
                None => {
                    return Err(BundleError::Untrusted {
                        bundle: self.root.display().to_string(),
                        file,
                        component: pin.component.clone(),
                        version: pin.version.clone(),
                        actual,
                    })
                }
            }
        }
        Ok(())
    }
}

fn safe_relative(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !path.contains('\\')
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Verifies the bundle at `path` (see [`open_file`]).
pub fn open(
    path: &Path,
    extract_root: &Path,
    codename: &str,
    arch: &str,
) -> Result<Bundle, BundleError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    open_file(
        file,
        &path.display().to_string(),
        extract_root,
        codename,
        arch,
    )
}

/// Verifies the bundle read from `file` (named `name` in messages) for
/// `codename`/`arch` and extracts it under `extract_root`; returns it once every file
/// matched its manifest. Anything but a regular file is refused before a byte is
/// read (a FIFO would block the daemon), and no error quotes the file's bytes.
pub fn open_file(
    file: std::fs::File,
    name: &str,
    extract_root: &Path,
    codename: &str,
    arch: &str,
) -> Result<Bundle, BundleError> {
    let name = name.to_string();
    let not_bundle = |reason: String| BundleError::NotABundle {
        bundle: name.clone(),
        reason,
    };
    let meta = file.metadata().map_err(io_err(Path::new(&name)))?;
    if !meta.file_type().is_file() {
        return Err(not_bundle("it is not a regular file".into()));
    }
    // The tar reader's own errors may quote the bytes it choked on: say only where.
    let not_tar = || not_bundle("it is not a tar archive".into());
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut entries = archive.entries().map_err(|_| not_tar())?;
    let mut first = entries
        .next()
        .ok_or_else(|| not_bundle("it is empty".into()))?
        .map_err(|_| not_tar())?;
    if first.path().ok().as_deref() != Some(Path::new(MANIFEST)) {
        return Err(not_bundle(format!("its first entry is not {MANIFEST}")));
    }
    let mut text = String::new();
    first
        .by_ref()
        .take(16 << 20)
        .read_to_string(&mut text)
        .map_err(|_| not_bundle(format!("{MANIFEST} is not UTF-8 text")))?;
    // serde's messages name a line and column, and at most a field name.
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| not_bundle(format!("{MANIFEST}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(not_bundle(format!(
            "format {} (this version reads {FORMAT})",
            manifest.format
        )));
    }
    if manifest.distro != codename || manifest.arch != arch {
        return Err(BundleError::Platform {
            bundle: name,
            bundle_platform: format!("Debian {} {}", manifest.distro, manifest.arch),
            host: format!("Debian {codename} {arch}"),
        });
    }
    let id = &crate::util::sha256_hex(text.as_bytes())[..16];
    let final_dir = extract_root.join(id);
    std::fs::create_dir_all(extract_root).map_err(io_err(extract_root))?;
    let staging = extract_root.join(format!(".incoming-{id}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    // Made before extracting: a bundle may list no files at all.
    std::fs::create_dir(&staging).map_err(io_err(&staging))?;
    let result = extract_verified(&mut entries, &manifest, &staging, &name);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Same manifest, same contents: an earlier extraction is as good.
    if final_dir.is_dir() {
        let _ = std::fs::remove_dir_all(&staging);
    } else {
        // Files were synced as written; the directory entries now.
        std::fs::File::open(&staging)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&staging))?;
        std::fs::rename(&staging, &final_dir).map_err(io_err(&final_dir))?;
    }
    Ok(Bundle {
        root: final_dir,
        manifest,
        suite_dates: Default::default(),
    })
}

fn extract_verified<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    manifest: &Manifest,
    staging: &Path,
    bundle: &str,
) -> Result<(), BundleError> {
    let mut pending: std::collections::BTreeMap<&str, &ManifestFile> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    for entry in entries {
        let mut entry = entry.map_err(|_| BundleError::NotABundle {
            bundle: bundle.into(),
            reason: "an entry after the manifest is not valid tar".into(),
        })?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if entry.header().entry_type().is_dir() {
            continue;
        }
        if !entry.header().entry_type().is_file() || !safe_relative(&raw) {
            return Err(BundleError::Unsafe {
                bundle: bundle.into(),
                file: raw,
            });
        }
        let Some(want) = pending.remove(raw.as_str()) else {
            return Err(BundleError::Unexpected {
                bundle: bundle.into(),
                file: raw,
            });
        };
        let dest = staging.join(&raw);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut out = std::fs::File::create(&dest).map_err(io_err(&dest))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = entry.read(&mut buf).map_err(io_err(&dest))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(&dest))?;
            size += n as u64;
        }
        out.sync_all().map_err(io_err(&dest))?;
        let actual: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != want.sha256 || size != want.size {
            return Err(BundleError::Altered {
                bundle: bundle.into(),
                file: raw,
                expected: want.sha256.clone(),
                actual,
                expected_size: want.size,
                actual_size: size,
            });
        }
    }
    if let Some(missing) = pending.keys().next() {
        return Err(BundleError::Missing {
            bundle: bundle.into(),
            file: missing.to_string(),
        });
    }
    Ok(())
}

/// Writes `dir` as a bundle at `output`: the manifest first, then every file listed,
/// through `output.partial`, synced and renamed (no half-written bundle).
pub fn write(dir: &Path, manifest: &Manifest, output: &Path) -> Result<(), BundleError> {
    let partial = output.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(io_err(&partial))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let text = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, &text[..])
        .map_err(io_err(&partial))?;
    for f in &manifest.files {
        let src = dir.join(&f.path);
        let mut file = std::fs::File::open(&src).map_err(io_err(&src))?;
        tar.append_file(&f.path, &mut file).map_err(io_err(&src))?;
    }
    let out = tar
        .into_inner()
        .map_err(io_err(&partial))?
        .into_inner()
        .map_err(|e| io_err(&partial)(e.into_error()))?;
    out.sync_all().map_err(io_err(&partial))?;
    std::fs::rename(&partial, output).map_err(io_err(output))
}

/// Every regular file under `dir` (relative paths, sorted) with its sha256 and size.
pub fn list_files(dir: &Path) -> Result<Vec<ManifestFile>, BundleError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .expect("below dir")
                    .to_string_lossy()
                    .into_owned();
                files.push(ManifestFile {
                    path: rel,
                    sha256: crate::artifact::fetch::sha256_file(&path).map_err(io_err(&path))?,
                    size: entry.metadata().map_err(io_err(&path))?.len(),
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests;
