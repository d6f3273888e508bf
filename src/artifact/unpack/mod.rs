//! Unpacking release archives into `ROOT/VERSION` through a staging directory, with
//! every entry checked: no absolute paths, no `..`, no links pointing out, no device
//! files or FIFOs, no setuid/setgid bits.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveFormat {
    /// A gzip'd tar, usually with one top directory (stripped when unpacking).
    TarGz,
    /// A zip, e.g. Loki's: files at the top.
    Zip,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{archive}: entry {entry:?} would escape the target directory")]
    Escape { archive: String, entry: String },
    #[error("{archive}: entry {entry:?} refused: {reason}")]
    Forbidden {
        archive: String,
        entry: String,
        reason: &'static str,
    },
    #[error("{archive}: {reason}")]
    Corrupt { archive: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The entry's path relative to the target, or None if it would leave it.
fn safe_relative(path: &Path, strip_top: bool) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut skipped = !strip_top;
    for c in path.components() {
        match c {
            Component::Normal(n) => {
                if !skipped {
                    skipped = true;
                    continue;
                }
                out.push(n);
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a link at `link_rel` (relative to the target) pointing at `target` stays inside.
fn link_stays_inside(link_rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = link_rel
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| {
                    if let Component::Normal(n) = c {
                        Some(n)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

struct Staging<'a> {
    dir: PathBuf,
    archive: &'a str,
}

impl Staging<'_> {
    fn escape(&self, entry: &Path) -> UnpackError {
        UnpackError::Escape {
            archive: self.archive.into(),
            entry: entry.display().to_string(),
        }
    }
    fn forbid(&self, entry: &Path, reason: &'static str) -> UnpackError {
        UnpackError::Forbidden {
            archive: self.archive.into(),
            entry: entry.display().to_string(),
            reason,
        }
    }
    fn check_mode(&self, entry: &Path, mode: u32) -> Result<u32, UnpackError> {
        if mode & 0o6000 != 0 {
            return Err(self.forbid(entry, "setuid or setgid bit"));
        }
        Ok(mode & 0o777)
    }
    fn file(&self, rel: &Path, mode: u32, mut data: impl Read) -> Result<(), UnpackError> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut f = fs::File::create(&path).map_err(io(&path))?;
        std::io::copy(&mut data, &mut f).map_err(io(&path))?;
        f.flush().map_err(io(&path))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io(&path))
    }
    fn dir(&self, rel: &Path) -> Result<(), UnpackError> {
        let path = self.dir.join(rel);
        fs::create_dir_all(&path).map_err(io(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(io(&path))
    }
    fn link(&self, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        if !link_stays_inside(rel, target) {
            return Err(self.escape(rel));
        }
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        symlink(target, &path).map_err(io(&path))
    }
}

fn unpack_tar_gz(archive: &Path, staging: &Staging, strip_top: bool) -> Result<(), UnpackError> {
    let f = fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
        std::io::BufReader::with_capacity(1 << 20, f),
    ));
    let corrupt = |e: std::io::Error| UnpackError::Corrupt {
        archive: staging.archive.into(),
        reason: e.to_string(),
    };
    for entry in tar.entries().map_err(corrupt)? {
        let entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let rel = safe_relative(&raw, strip_top).ok_or_else(|| staging.escape(&raw))?;
        if rel.as_os_str().is_empty() {
            continue; // the top directory itself
        }
        let mode = staging.check_mode(&raw, entry.header().mode().map_err(corrupt)?)?;
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous => staging.file(&rel, mode, entry)?,
            T::Directory => staging.dir(&rel)?,
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| staging.forbid(&raw, "symlink without target"))?
                    .into_owned();
                staging.link(&rel, &target)?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| staging.forbid(&raw, "hard link without target"))?
                    .into_owned();
                let target_rel =
                    safe_relative(&target, strip_top).ok_or_else(|| staging.escape(&raw))?;
                let (from, to) = (staging.dir.join(&target_rel), staging.dir.join(&rel));
                fs::hard_link(&from, &to).map_err(io(&to))?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            T::Char | T::Block => return Err(staging.forbid(&raw, "device file")),
            T::Fifo => return Err(staging.forbid(&raw, "FIFO")),
            _ => return Err(staging.forbid(&raw, "unsupported entry type")),
        }
    }
    Ok(())
}

fn unpack_zip(archive: &Path, staging: &Staging) -> Result<(), UnpackError> {
    let f = fs::File::open(archive).map_err(io(archive))?;
    let corrupt = |e: zip::result::ZipError| UnpackError::Corrupt {
        archive: staging.archive.into(),
        reason: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(f).map_err(corrupt)?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(corrupt)?;
        let raw = PathBuf::from(entry.name());
        let rel = safe_relative(&raw, false).ok_or_else(|| staging.escape(&raw))?;
        let unix = entry
            .unix_mode()
            .unwrap_or(if entry.is_dir() { 0o40755 } else { 0o100644 });
        let mode = staging.check_mode(&raw, unix)?;
        match unix & 0o170000 {
            0o040000 => staging.dir(&rel)?,
            0o120000 => {
                let mut target = String::new();
                entry.read_to_string(&mut target).map_err(io(archive))?;
                staging.link(&rel, Path::new(&target))?;
            }
            0o100000 | 0 => {
                if entry.is_dir() {
                    staging.dir(&rel)?
                } else {
                    staging.file(&rel, mode, &mut entry)?
                }
            }
            _ => return Err(staging.forbid(&raw, "device file or FIFO")),
        }
    }
    Ok(())
}

/// Unpacks `archive` into `root/version` (unless it is there already) and returns
/// that directory. Nothing appears under `version` unless every entry passed.
pub fn unpack(
    archive: &Path,
    format: ArchiveFormat,
    root: &Path,
    version: &str,
) -> Result<PathBuf, UnpackError> {
    let target = root.join(version);
    if target.is_dir() {
        return Ok(target);
    }
    fs::create_dir_all(root).map_err(io(root))?;
    let staging = Staging {
        dir: root.join(format!(".{version}.staging-{}", std::process::id())),
        archive: &archive.display().to_string(),
    };
    if staging.dir.exists() {
        fs::remove_dir_all(&staging.dir).map_err(io(&staging.dir))?;
    }
    fs::create_dir(&staging.dir).map_err(io(&staging.dir))?;
    let result = match format {
        ArchiveFormat::TarGz => unpack_tar_gz(archive, &staging, true),
        ArchiveFormat::Zip => unpack_zip(archive, &staging),
    };
    if let Err(e) = result {
        let _best_effort = fs::remove_dir_all(&staging.dir);
        return Err(e);
    }
    fs::set_permissions(&staging.dir, fs::Permissions::from_mode(0o755))
        .map_err(io(&staging.dir))?;
    fs::rename(&staging.dir, &target).map_err(io(&target))?;
    Ok(target)
}

/// Points `root/current` at `version`, atomically (a new link renamed over the old).
pub fn switch_current(root: &Path, version: &str) -> Result<(), UnpackError> {
    let current = root.join("current");
    if fs::read_link(&current).ok().as_deref() == Some(Path::new(version)) {
        return Ok(());
    }
    let tmp = root.join(format!(".current.tmp-{}", std::process::id()));
    let _stale = fs::remove_file(&tmp);
    symlink(version, &tmp).map_err(io(&tmp))?;
    fs::rename(&tmp, &current).map_err(io(&current))
}

#[cfg(test)]
mod tests;
