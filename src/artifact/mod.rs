//! Release archives: downloaded by streaming into a cache while hashing (a wrong
//! length or digest is refused before anything is unpacked), then unpacked into a
//! versioned directory with every entry checked, and a `current` link switched
//! atomically.

pub mod catalog;
pub mod fetch;
pub mod trust;
pub mod unpack;

pub use fetch::{FetchError, Fetcher};
pub use unpack::{switch_current, unpack, ArchiveFormat, UnpackError};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ObtainError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The digest source named no digest for the archive.
    #[error("{0}")]
    NoDigest(String),
    /// The digest could not be trusted (plain http, or not the one recorded).
    #[error("{0}")]
    Untrusted(String),
}

impl ObtainError {
    /// The download does not verify (or cannot be verified): not a transient failure.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            ObtainError::NoDigest(_)
                | ObtainError::Untrusted(_)
                | ObtainError::Fetch(FetchError::Digest { .. })
        )
    }
}

/// Learns `pin`'s sha256 (pinned, from upstream's checksum file, or from a resolver)
/// and returns the verified archive from the cache, downloading it when needed.
/// `recorded` is the digest first verified for this version on this host, if any
/// (see [`trust`]): a source that now names another is refused.
pub async fn obtain(
    fetcher: &Fetcher,
    pin: &catalog::ArchivePin,
    mirror: &str,
    recorded: Option<&str>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<(PathBuf, String), ObtainError> {
    use catalog::DigestSource;
    trust::check_channel(pin, recorded).map_err(ObtainError::Untrusted)?;
    let mut url = pin.url.clone();
    let sha256 = match &pin.digest {
        DigestSource::Resolver => {
            let text = fetcher.get_text(&pin.url).await?;
            let (resolved, sha) = catalog::from_resolver(&text).ok_or_else(|| {
                ObtainError::NoDigest(format!("{} did not name a URL and sha256", pin.url))
            })?;
            // The resolver names upstream's host: a mirror serves the same path.
            url = catalog::through_mirror(&resolved, mirror);
            sha
        }
        DigestSource::Pinned(d) => d.clone(),
        DigestSource::ChecksumFile(sums) => {
            let text = fetcher.get_text(sums).await?;
            catalog::digest_from_checksums(&text, &pin.file_name).ok_or_else(|| {
                ObtainError::NoDigest(format!("{sums} lists no sha256 for {}", pin.file_name))
            })?
        }
    };
    trust::check_learned(pin, recorded, &sha256).map_err(ObtainError::Untrusted)?;
    let path = fetcher
        .fetch(&url, &pin.file_name, &sha256, progress)
        .await?;
    Ok((path, sha256))
}
