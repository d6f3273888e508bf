//! Unpacking release archives into `ROOT/VERSION` through a staging directory that no
//! entry can leave, by construction:
//!
//! - every entry is created relative to a directory descriptor reached from the
//!   staging directory one name at a time with `O_NOFOLLOW`, so no create, chmod or
//!   link ever walks through a link that an earlier entry made (a path that would is
//!   refused);
//! - files are created with `O_EXCL`: an entry never reuses (or truncates through)
//!   another entry's name;
//! - hard links may only name a regular file the archive itself put in staging;
//! - once every entry is in, each symbolic link in the tree is resolved by the kernel
//!   with `openat2(RESOLVE_BENEATH)`: one that leads out of staging, or to nothing,
//!   refuses the whole archive;
//! - modes are masked (no group/other write) and setuid/setgid bits, device files and
//!   FIFOs are refused; the uncompressed bytes and the entry count are capped by
//!   limits derived from the archive's (verified) size.
//!
//! Nothing appears under `ROOT/VERSION` unless every check passed.

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
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
    #[error("{archive}: {what} exceeds the limit of {limit} for an archive of this size")]
    TooLarge {
        archive: String,
        what: &'static str,
        limit: u64,
    },
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

/// What one archive may unpack to. Release archives compress three to four times;
/// the caps leave ample room for that and stop a decompression bomb long before it
/// fills a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Limits {
    /// Limits for an archive of `len` bytes (its verified, pinned size).
    pub fn for_archive_size(len: u64) -> Self {
        Limits {
            max_bytes: (64 << 20) + len.saturating_mul(16),
            // Small files compress well (20,000 of them fit in 0.4 MiB): a generous
            // floor, and still a bound on an archive of millions of empty entries.
            max_entries: 100_000 + len / 256,
        }
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

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

/// No group or other write, no setuid, setgid or sticky bit.
const MODE_MASK: u32 = 0o755;

struct Staging<'a> {
    dir: PathBuf,
    /// The staging directory itself: every path is resolved from here.
    root: OwnedFd,
    archive: &'a str,
    limits: Limits,
    entries: u64,
    bytes: u64,
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
    fn errno(&self, rel: &Path, e: Errno) -> UnpackError {
        io(&self.dir.join(rel))(std::io::Error::from(e))
    }
    fn check_mode(&self, entry: &Path, mode: u32) -> Result<u32, UnpackError> {
        if mode & 0o6000 != 0 {
            return Err(self.forbid(entry, "setuid or setgid bit"));
        }
        Ok(mode & MODE_MASK)
    }
    /// Counts one more entry against the cap.
    fn count_entry(&mut self) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::TooLarge {
                archive: self.archive.into(),
                what: "the number of entries",
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// The directory that holds `rel`'s last component, reached one name at a time
    /// without following links (missing directories are made), and that last name.
    fn parent_of(&self, rel: &Path) -> Result<(OwnedFd, OsString), UnpackError> {
        let mut names: Vec<&OsStr> = rel.iter().collect();
        let last = names
            .pop()
            .ok_or_else(|| self.forbid(rel, "empty name"))?
            .to_os_string();
        let mut dir = self.root.try_clone().map_err(io(&self.dir))?;
        for name in names {
            dir = match openat(&dir, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    mkdirat(&dir, name, Mode::from_bits_truncate(0o755))
                        .map_err(|e| self.errno(rel, e))?;
                    openat(&dir, name, DIR_FLAGS, Mode::empty()).map_err(|e| self.errno(rel, e))?
                }
                // A link (ELOOP) or a file (ENOTDIR) where a directory should be:
                // going on would write wherever that link points.
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(self.forbid(rel, "its path passes through a link or a file"))
                }
                Err(e) => return Err(self.errno(rel, e)),
            };
        }
        Ok((dir, last))
    }

    fn file(&mut self, rel: &Path, mode: u32, data: impl Read) -> Result<(), UnpackError> {
        self.count_entry()?;
        let (parent, name) = self.parent_of(rel)?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(
            &parent,
            name.as_os_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => return Err(self.forbid(rel, "a second entry of the same name")),
            Err(e) => return Err(self.errno(rel, e)),
        };
        let mut file = fs::File::from(fd);
        // Read one byte past what is left, so an entry that goes over is noticed.
        let left = self.limits.max_bytes - self.bytes;
        let mut capped = data.take(left + 1);
        let written = std::io::copy(&mut capped, &mut file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData
                || e.kind() == std::io::ErrorKind::UnexpectedEof
            {
                UnpackError::Corrupt {
                    archive: self.archive.into(),
                    reason: e.to_string(),
                }
            } else {
                io(&self.dir.join(rel))(e)
            }
        })?;
        if written > left {
            return Err(UnpackError::TooLarge {
                archive: self.archive.into(),
                what: "the unpacked size",
                limit: self.limits.max_bytes,
            });
        }
        self.bytes += written;
        fchmod(file.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| self.errno(rel, e))
    }

    fn dir(&mut self, rel: &Path) -> Result<(), UnpackError> {
        self.count_entry()?;
        let (parent, name) = self.parent_of(rel)?;
        match mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.errno(rel, e)),
        }
        // An existing link of that name is refused here (O_NOFOLLOW), never chmod'ed
        // through.
        let fd = match openat(&parent, name.as_os_str(), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(self.forbid(rel, "a directory over a link or a file"))
            }
            Err(e) => return Err(self.errno(rel, e)),
        };
        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o755)).map_err(|e| self.errno(rel, e))
    }

    fn link(&mut self, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        self.count_entry()?;
        if target.is_absolute() {
            return Err(self.escape(rel));
        }
        if target.as_os_str().is_empty() {
            return Err(self.forbid(rel, "symlink without target"));
        }
        let (parent, name) = self.parent_of(rel)?;
        match nix::unistd::symlinkat(target, parent.as_fd(), name.as_os_str()) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Err(self.forbid(rel, "a second entry of the same name")),
            Err(e) => Err(self.errno(rel, e)),
        }
        // Where the link leads is checked once the tree is complete (links_stay_inside).
    }

    fn hard_link(&mut self, rel: &Path, target_rel: &Path) -> Result<(), UnpackError> {
        self.count_entry()?;
        let (from_dir, from_name) = self.parent_of(target_rel)?;
        let st = fstatat(
            &from_dir,
            from_name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|_| self.forbid(rel, "hard link to an entry the archive does not hold"))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(self.forbid(rel, "hard link to something other than a regular file"));
        }
        let (to_dir, to_name) = self.parent_of(rel)?;
        match nix::unistd::linkat(
            &from_dir,
            from_name.as_os_str(),
            &to_dir,
            to_name.as_os_str(),
            nix::fcntl::AtFlags::empty(),
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Err(self.forbid(rel, "a second entry of the same name")),
            Err(e) => Err(self.errno(rel, e)),
        }
    }

    /// Every symbolic link in the finished tree must lead to something inside it,
    /// as the kernel resolves it (links through links included).
    fn links_stay_inside(&self) -> Result<(), UnpackError> {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let path = self.dir.join(&rel);
            for entry in fs::read_dir(&path).map_err(io(&path))? {
                let entry = entry.map_err(io(&path))?;
                let child = rel.join(entry.file_name());
                let kind = entry.file_type().map_err(io(&path))?;
                if kind.is_dir() {
                    stack.push(child);
                } else if kind.is_symlink() {
                    let how = OpenHow::new()
                        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
                        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
                    match openat2(&self.root, &child, how) {
                        Ok(_) => {}
                        Err(Errno::EXDEV) => return Err(self.escape(&child)),
                        Err(Errno::ENOENT | Errno::ENOTDIR) => {
                            return Err(self.forbid(&child, "link to nothing in the archive"))
                        }
                        Err(Errno::ELOOP) => return Err(self.forbid(&child, "link loop")),
                        Err(e) => return Err(self.errno(&child, e)),
                    }
                }
            }
        }
        Ok(())
    }
}

fn unpack_tar_gz(
    archive: &Path,
    staging: &mut Staging,
    strip_top: bool,
) -> Result<(), UnpackError> {
    let f = fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
        std::io::BufReader::with_capacity(1 << 20, f),
    ));
    let name = staging.archive.to_string();
    let corrupt = |e: std::io::Error| UnpackError::Corrupt {
        archive: name.clone(),
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
                staging.hard_link(&rel, &target_rel)?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            T::Char | T::Block => return Err(staging.forbid(&raw, "device file")),
            T::Fifo => return Err(staging.forbid(&raw, "FIFO")),
            _ => return Err(staging.forbid(&raw, "unsupported entry type")),
        }
    }
    Ok(())
}

/// A zip link's target is its contents; no real one is longer than a path.
const MAX_ZIP_LINK: u64 = 4096;

fn unpack_zip(archive: &Path, staging: &mut Staging) -> Result<(), UnpackError> {
    let f = fs::File::open(archive).map_err(io(archive))?;
    let name = staging.archive.to_string();
    let corrupt = |e: zip::result::ZipError| UnpackError::Corrupt {
        archive: name.clone(),
        reason: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(f).map_err(corrupt)?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(corrupt)?;
        let raw = PathBuf::from(entry.name());
        let rel = safe_relative(&raw, false).ok_or_else(|| staging.escape(&raw))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let unix = entry
            .unix_mode()
            .unwrap_or(if entry.is_dir() { 0o40755 } else { 0o100644 });
        let mode = staging.check_mode(&raw, unix)?;
        match unix & 0o170000 {
            0o040000 => staging.dir(&rel)?,
            0o120000 => {
                let mut target = Vec::new();
                (&mut entry)
                    .take(MAX_ZIP_LINK + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| UnpackError::Corrupt {
                        archive: name.clone(),
                        reason: e.to_string(),
                    })?;
                if target.len() as u64 > MAX_ZIP_LINK {
                    return Err(staging.forbid(&raw, "link target longer than a path"));
                }
                use std::os::unix::ffi::OsStrExt;
                staging.link(&rel, Path::new(OsStr::from_bytes(&target)))?;
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
    let len = fs::metadata(archive).map_err(io(archive))?.len();
    unpack_with_limits(
        archive,
        format,
        root,
        version,
        Limits::for_archive_size(len),
    )
}

/// [`unpack`] with explicit limits.
pub fn unpack_with_limits(
    archive: &Path,
    format: ArchiveFormat,
    root: &Path,
    version: &str,
    limits: Limits,
) -> Result<PathBuf, UnpackError> {
    let target = root.join(version);
    if target.is_dir() {
        return Ok(target);
    }
    fs::create_dir_all(root).map_err(io(root))?;
    let dir = root.join(format!(".{version}.staging-{}", std::process::id()));
    if fs::symlink_metadata(&dir).is_ok() {
        fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    fs::create_dir(&dir).map_err(io(&dir))?;
    let result = (|| {
        let root_fd = openat(nix::fcntl::AT_FDCWD, &dir, DIR_FLAGS, Mode::empty())
            .map_err(|e| io(&dir)(e.into()))?;
        let name = archive.display().to_string();
        let mut staging = Staging {
            dir: dir.clone(),
            root: root_fd,
            archive: &name,
            limits,
            entries: 0,
            bytes: 0,
        };
        match format {
            ArchiveFormat::TarGz => unpack_tar_gz(archive, &mut staging, true)?,
            ArchiveFormat::Zip => unpack_zip(archive, &mut staging)?,
        }
        staging.links_stay_inside()
    })();
    if let Err(e) = result {
        let _best_effort = fs::remove_dir_all(&dir);
        return Err(e);
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io(&dir))?;
    fs::rename(&dir, &target).map_err(io(&target))?;
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
