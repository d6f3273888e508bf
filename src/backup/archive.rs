//! Writing a backup as a stream, and reading one back into staging, verified.

use super::{target_of, BackupError, Entry, Header, Manifest, Target, FORMAT, FORMAT_VERSION};
use super::{HEADER_ENTRY, MANIFEST_ENTRY};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The header and manifest are small; a larger one is not ours.
const MAX_HEADER_BYTES: u64 = 1 << 20;
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Counts and hashes what passes through, reporting the count as it goes.
struct Hashing<'a, R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    progress: &'a dyn Fn(u64),
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        (self.progress)(self.count);
        Ok(n)
    }
}

fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A backup being written: the header first, then entries, then the manifest.
pub struct BackupWriter<W: Write> {
    tar: tar::Builder<W>,
    header_sha256: String,
    entries: Vec<Entry>,
    names: BTreeSet<String>,
}

fn tar_header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode & 0o777);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    h
}

impl<W: Write> BackupWriter<W> {
    pub fn new(out: W, header: &Header) -> io::Result<Self> {
        let mut tar = tar::Builder::new(out);
        let json = serde_json::to_vec_pretty(header).map_err(io::Error::other)?;
        let mut h = tar_header(json.len() as u64, 0o600);
        tar.append_data(&mut h, HEADER_ENTRY, json.as_slice())?;
        Ok(BackupWriter {
            tar,
            header_sha256: crate::util::sha256_hex(&json),
            entries: Vec::new(),
            names: BTreeSet::new(),
        })
    }

    /// Appends `size` bytes of `data` as `name`. A source that ends early or grows
    /// while it is read (a file changed during the backup) fails the backup rather
    /// than recording something the manifest does not describe.
    pub fn append(
        &mut self,
        name: &str,
        data: impl Read,
        size: u64,
        ownership: (u32, &str, &str),
        progress: &dyn Fn(u64),
    ) -> io::Result<()> {
        if !self.names.insert(name.to_string()) {
            return Err(io::Error::other(format!("{name} is in the backup twice")));
        }
        let (mode, owner, group) = ownership;
        let mut reader = Hashing {
            inner: data.take(size),
            hasher: Sha256::new(),
            count: 0,
            progress,
        };
        let mut h = tar_header(size, mode);
        self.tar.append_data(&mut h, name, &mut reader)?;
        if reader.count != size {
            return Err(io::Error::other(format!(
                "{name} changed while it was backed up ({} bytes, then {})",
                size, reader.count
            )));
        }
        let mut rest = [0u8; 1];
        if reader.inner.into_inner().read(&mut rest)? != 0 {
            return Err(io::Error::other(format!(
                "{name} grew while it was backed up"
            )));
        }
        self.entries.push(Entry {
            name: name.to_string(),
            size,
            sha256: hex(reader.hasher),
            mode: mode & 0o777,
            owner: owner.to_string(),
            group: group.to_string(),
        });
        Ok(())
    }

    /// Writes the manifest and the end of the archive; returns the output and the
    /// entries written.
    pub fn finish(mut self) -> io::Result<(W, Vec<Entry>)> {
        let manifest = Manifest {
            header_sha256: self.header_sha256,
            entries: self.entries,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        let mut h = tar_header(json.len() as u64, 0o600);
        self.tar
            .append_data(&mut h, MANIFEST_ENTRY, json.as_slice())?;
        let out = self.tar.into_inner()?;
        Ok((out, manifest.entries))
    }
}

/// A backup unpacked into staging and verified against its manifest.
#[derive(Debug)]
pub struct Unpacked {
    pub header: Header,
    /// Each entry, what it is for, and where its verified bytes are.
    pub entries: Vec<(Entry, Target, PathBuf)>,
}

impl Unpacked {
    pub fn staged(&self, wanted: &Target) -> Option<&(Entry, Target, PathBuf)> {
        self.entries.iter().find(|(_, t, _)| t == wanted)
    }
}

/// Reads a backup from `input` into `staging` (an empty directory of root's), each
/// entry's bytes hashed on the way; returns it only when the manifest at its end
/// matches everything read. A file that is not a backup is refused at its first
/// entry; one that was changed, cut short or names a path a restore may not write,
/// by the entry at fault. `file` names the backup in messages.
pub fn unpack_verified(
    input: impl Read,
    staging: &Path,
    file: &str,
    progress: &dyn Fn(u64),
) -> Result<Unpacked, BackupError> {
    let damaged = |what: String| BackupError::Damaged(format!("{file}: {what}"));
    let foreign = || {
        BackupError::Foreign(format!(
            "{file} is not an analytics-stack backup (it does not begin with {HEADER_ENTRY})"
        ))
    };
    let mut archive = tar::Archive::new(input);
    let mut entries = archive.entries().map_err(|_| foreign())?;

    // The header, first.
    let mut first = match entries.next() {
        Some(Ok(e)) => e,
        _ => return Err(foreign()),
    };
    let first_name = first.path().ok().map(|p| p.display().to_string());
    if first_name.as_deref() != Some(HEADER_ENTRY)
        || first.header().entry_type() != tar::EntryType::Regular
        || first.size() > MAX_HEADER_BYTES
    {
        return Err(foreign());
    }
    let mut json = Vec::new();
    first.read_to_end(&mut json).map_err(|_| foreign())?;
    let header: Header = serde_json::from_slice(&json).map_err(|_| foreign())?;
    if header.format != FORMAT {
        return Err(foreign());
    }
    if header.version != FORMAT_VERSION {
        return Err(BackupError::Foreign(format!(
            "{file} is an analytics-stack backup of format {}; this package reads format {FORMAT_VERSION}",
            header.version
        )));
    }
    let header_sha256 = crate::util::sha256_hex(&json);

    let mut seen: Vec<(Entry, Target, PathBuf)> = Vec::new();
    let mut names = BTreeSet::new();
    let mut manifest: Option<Manifest> = None;
    let mut total = 0u64;
    for (index, entry) in entries.enumerate() {
        let mut entry =
            entry.map_err(|e| damaged(format!("cannot read entry {}: {e}", index + 2)))?;
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .map_err(|_| damaged(format!("entry {} has an unreadable name", index + 2)))?;
        let shown = crate::util::printable(&name);
        if manifest.is_some() {
            return Err(damaged(format!("{shown} follows the manifest")));
        }
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            return Err(damaged(format!("{shown} is not a regular file")));
        }
        if name == MANIFEST_ENTRY {
            if entry.size() > MAX_MANIFEST_BYTES {
                return Err(damaged("its manifest is too large".into()));
            }
            let mut json = Vec::new();
            entry
                .read_to_end(&mut json)
                .map_err(|e| damaged(format!("cannot read its manifest: {e}")))?;
            manifest = Some(
                serde_json::from_slice(&json)
                    .map_err(|e| damaged(format!("its manifest is not valid: {e}")))?,
            );
            continue;
        }
        let target = target_of(&name).ok_or_else(|| {
            damaged(format!(
                "{shown} is not a path a restore may write; nothing was changed"
            ))
        })?;
        if !names.insert(name.clone()) {
            return Err(damaged(format!("{shown} appears twice")));
        }
        // Staged under a number, never under its own name: nothing in the file
        // decides where the staging copy lands.
        let staged = staging.join(format!("{:06}", seen.len()));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged)
            .map_err(|e| BackupError::Failed(format!("{}: {e}", staged.display())))?;
        let size = entry.size();
        let base = total;
        let report = |n: u64| progress(base + n);
        let mut reader = Hashing {
            inner: &mut entry,
            hasher: Sha256::new(),
            count: 0,
            progress: &report,
        };
        io::copy(&mut reader, &mut out)
            .map_err(|e| damaged(format!("{shown} cannot be read whole: {e}")))?;
        let count = reader.count;
        let sha256 = hex(reader.hasher);
        out.sync_all()
            .map_err(|e| BackupError::Failed(format!("{}: {e}", staged.display())))?;
        if count != size {
            return Err(damaged(format!("{shown} ends early")));
        }
        total += size;
        let mode = entry.header().mode().unwrap_or(0o600);
        seen.push((
            Entry {
                name,
                size,
                sha256,
                mode,
                owner: String::new(),
                group: String::new(),
            },
            target,
            staged,
        ));
    }
    let manifest = manifest.ok_or_else(|| {
        damaged("it ends before its manifest (cut short?); nothing was changed".into())
    })?;
    if manifest.header_sha256 != header_sha256 {
        return Err(damaged(format!(
            "{HEADER_ENTRY} does not match the manifest; nothing was changed"
        )));
    }
    if manifest.entries.len() != seen.len() {
        return Err(damaged(format!(
            "the manifest lists {} entries, the file holds {}; nothing was changed",
            manifest.entries.len(),
            seen.len()
        )));
    }
    for ((got, _, _), want) in seen.iter_mut().zip(&manifest.entries) {
        if got.name != want.name || got.size != want.size || got.sha256 != want.sha256 {
            return Err(damaged(format!(
                "{} does not match its sha256 in the manifest; nothing was changed",
                crate::util::printable(&got.name)
            )));
        }
        // Ownership comes from the manifest (covered by its own integrity check
        // above only through the entries' hashes; it only names users and modes,
        // which a restore limits to permission bits).
        got.mode = want.mode & 0o777;
        got.owner = want.owner.clone();
        got.group = want.group.clone();
    }
    Ok(Unpacked {
        header,
        entries: seen,
    })
}
