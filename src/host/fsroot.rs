//! Files under a root directory, written atomically: a temporary file in the same
//! directory, fsync, rename, fsync of the directory. Tests point the root at a
//! temporary directory standing in for `/`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::facts::Ownership;

#[derive(Debug, Clone)]
pub struct FsRoot {
    root: PathBuf,
}

impl FsRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsRoot { root: root.into() }
    }

    pub fn host() -> Self {
        FsRoot::new("/")
    }

    /// The real path of an absolute path below this root.
    pub fn path(&self, abs: &Path) -> PathBuf {
        self.root.join(abs.strip_prefix("/").unwrap_or(abs))
    }

    pub fn read(&self, abs: &Path) -> std::io::Result<Vec<u8>> {
        fs::read(self.path(abs))
    }

    /// The JSON file at `abs` read as a `T`; the default when it is missing or does
    /// not parse (the daemon's own records: state, digests, suite dates).
    pub fn read_json_or_default<T: serde::de::DeserializeOwned + Default>(&self, abs: &Path) -> T {
        self.read(abs)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn exists(&self, abs: &Path) -> bool {
        self.path(abs).exists()
    }

    /// Writes `contents` with `mode` and owner atomically; never leaves a partial file.
    pub fn write_atomic(
        &self,
        abs: &Path,
        contents: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> std::io::Result<()> {
        let target = self.path(abs);
        let dir = target
            .parent()
            .ok_or_else(|| std::io::Error::other("no parent directory"))?;
        fs::create_dir_all(dir)?;
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file");
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = create_exclusive(&tmp, 0o600)?;
            // Ownership before contents reach their final mode: a secret is never
            // readable by anyone but root and its owner, even for an instant.
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            f.write_all(contents)?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            f.sync_all()?;
            fs::rename(&tmp, &target)?;
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ignored_cleanup = fs::remove_file(&tmp);
        }
        result
    }

    /// Makes the directory with this mode and owner. When it exists with another
    /// owner (a service user recreated with a new uid after its data was kept), what
    /// inside belonged to the old owner is given to the new one, so the service can
    /// read its data again (PostgreSQL refuses a data directory it does not own).
    pub fn ensure_dir(&self, abs: &Path, mode: u32, uid: u32, gid: u32) -> std::io::Result<()> {
        let p = self.path(abs);
        let before = fs::symlink_metadata(&p).ok().filter(|m| m.is_dir());
        fs::create_dir_all(&p)?;
        if let Some(m) = before {
            if (m.uid(), m.gid()) != (uid, gid) && m.uid() != 0 {
                reown_tree(&p, (m.uid(), m.gid()), (uid, gid))?;
            }
        }
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
    }

    pub fn remove_file(&self, abs: &Path) -> std::io::Result<()> {
        match fs::remove_file(self.path(abs)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Mode (permission bits), uid and gid of a path, if it exists.
    pub fn stat(&self, abs: &Path) -> Option<(u32, u32, u32, bool)> {
        let m = fs::symlink_metadata(self.path(abs)).ok()?;
        Some((m.mode() & 0o7777, m.uid(), m.gid(), m.is_dir()))
    }

    pub fn ownership(&self, abs: &Path) -> Option<Ownership> {
        let (mode, uid, gid, _) = self.stat(abs)?;
        Some(Ownership {
            mode,
            owner: user_name(uid),
            group: group_name(gid),
        })
    }
}

/// Calls `visit` on everything below `dir` (links not followed, so never leaving
/// it) with its metadata; stops early when `visit` returns false.
fn walk_below(
    dir: &Path,
    mut visit: impl FnMut(&Path, &fs::Metadata) -> std::io::Result<bool>,
) -> std::io::Result<bool> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            let m = fs::symlink_metadata(&path)?;
            if !visit(&path, &m)? {
                return Ok(false);
            }
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(true)
}

/// `dir` and everything below it (links not followed) to `uid`:`gid`.
pub fn own_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    walk_below(dir, |path, _| {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map(|()| true)
    })
    .map(drop)
}

/// Whether `dir` and everything below it (links not followed) belong to `uid`.
pub fn owned_by(dir: &Path, uid: u32) -> std::io::Result<bool> {
    if fs::symlink_metadata(dir)?.uid() != uid {
        return Ok(false);
    }
    walk_below(dir, |_, m| Ok(m.uid() == uid))
}

/// Below `dir` (links not followed), what the old uid owns goes to the new uid and
/// what the old gid owns to the new gid; anything else keeps its owner.
fn reown_tree(dir: &Path, old: (u32, u32), new: (u32, u32)) -> std::io::Result<()> {
    walk_below(dir, |path, m| {
        let uid = (m.uid() == old.0).then_some(new.0);
        let gid = (m.gid() == old.1).then_some(new.1);
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(path, uid, gid)?;
        }
        Ok(true)
    })
    .map(drop)
}

pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

pub fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

/// A new file at `path` for the daemon to fill, created by this call alone:
/// whatever stands at the name first (a stale temporary file, or a link, FIFO or
/// hard link that the owner of a service's directory planted at a name it can
/// predict) is unlinked, never opened, and the file is then created with `O_EXCL`,
/// which follows no link and fails if anything was put back in between.
pub fn create_exclusive(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

pub fn uid_of(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

pub fn gid_of(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_name_planted_beforehand_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = FsRoot::new(dir.path());
        let victim = dir.path().join("victim");
        fs::write(&victim, b"root's file").unwrap();
        let served = root.path(Path::new("/var/lib/grafana"));
        fs::create_dir_all(&served).unwrap();
        let tmp = served.join(format!(".grafana.db.tmp-{}", std::process::id()));
        // What the owner of the directory can put at the name it predicts: a link,
        // a hard link and a FIFO (which would block an open for writing).
        for plant in [
            &(|t: &Path, v: &Path| std::os::unix::fs::symlink(v, t).unwrap())
                as &dyn Fn(&Path, &Path),
            &|t, v| fs::hard_link(v, t).unwrap(),
            &|t, _| {
                nix::unistd::mkfifo(t, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
            },
        ] {
            plant(&tmp, &victim);
            root.write_atomic(
                Path::new("/var/lib/grafana/grafana.db"),
                b"restored",
                0o640,
                0,
                0,
            )
            .unwrap();
            assert_eq!(fs::read(&victim).unwrap(), b"root's file");
            assert_eq!(fs::read(served.join("grafana.db")).unwrap(), b"restored");
            assert!(!tmp.exists());
        }
        // Created once only: a name that is there again is not opened either.
        let f = create_exclusive(&tmp, 0o600).unwrap();
        drop(f);
        let again = create_exclusive(&tmp, 0o600);
        assert!(again.is_ok(), "a stale file of ours is replaced");
        assert_eq!(
            fs::metadata(&tmp).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_directory_whose_owner_changed_is_reowned_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = FsRoot::new(dir.path());
        let data = Path::new("/var/lib/analytics-stack/postgres");
        let real = root.path(data);
        fs::create_dir_all(real.join("15/base")).unwrap();
        fs::write(real.join("15/base/1"), b"rows").unwrap();
        fs::write(real.join("15/root-file"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", real.join("15/link")).unwrap();
        // The data as a deleted user's uid left it; one file belongs to root.
        for p in [
            &real,
            &real.join("15"),
            &real.join("15/base"),
            &real.join("15/base/1"),
        ] {
            std::os::unix::fs::lchown(p, Some(4242), Some(4242)).unwrap();
        }
        std::os::unix::fs::lchown(real.join("15/link"), Some(4242), Some(4242)).unwrap();
        root.ensure_dir(data, 0o700, 4343, 4343).unwrap();
        for p in ["", "15", "15/base", "15/base/1", "15/link"] {
            let m = fs::symlink_metadata(real.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (4343, 4343), "{p}");
        }
        assert_eq!(fs::metadata(real.join("15/root-file")).unwrap().uid(), 0);
        // The link itself was re-owned, not what it points at.
        assert_eq!(fs::metadata("/etc/shadow").unwrap().uid(), 0);
    }

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = FsRoot::new(dir.path());
        let p = Path::new("/var/lib/analytics-stack/secrets/x");
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        root.write_atomic(p, b"one", 0o600, uid, gid).unwrap();
        root.write_atomic(p, b"two", 0o600, uid, gid).unwrap();
        assert_eq!(root.read(p).unwrap(), b"two");
        assert_eq!(root.stat(p).unwrap().0, 0o600);
        let names: Vec<_> = fs::read_dir(root.path(p.parent().unwrap()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = FsRoot::new(dir.path());
        let p = Path::new("/etc/a.conf");
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        root.write_atomic(p, b"old", 0o644, uid, gid).unwrap();
        // An owner we may not give a file (unless root): the write must fail whole.
        if uid != 0 {
            assert!(root.write_atomic(p, b"new", 0o644, 0, 0).is_err());
            assert_eq!(root.read(p).unwrap(), b"old");
        }
        // A directory where the file should go: rename fails, old content stays.
        fs::create_dir_all(root.path(Path::new("/etc/b.conf/inner"))).unwrap();
        assert!(root
            .write_atomic(Path::new("/etc/b.conf"), b"x", 0o644, uid, gid)
            .is_err());
        let leftovers: Vec<_> = fs::read_dir(root.path(Path::new("/etc")))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
