//! Streaming, verified, resumable downloads into a cache directory.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("{url}: {reason}")]
    Network { url: String, reason: String },
    #[error(
        "{url}: sha256 mismatch: expected {expected}, got {actual}; the download was discarded"
    )]
    Digest {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: incomplete download: expected {expected} bytes, got {actual}; the next try resumes it")]
    Length {
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Hex sha256 of a file, read in blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Fetcher {
    client: reqwest::Client,
    cache_dir: PathBuf,
}

impl Fetcher {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("analytics-stack/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(20))
            .build()
            .map_err(|e| FetchError::Network {
                url: String::new(),
                reason: e.to_string(),
            })?;
        Ok(Fetcher {
            client,
            cache_dir: cache_dir.into(),
        })
    }

    async fn get_bytes(&self, url: &str, accept: &str) -> Result<Vec<u8>, FetchError> {
        let net = |e: reqwest::Error| FetchError::Network {
            url: url.into(),
            reason: e.to_string(),
        };
        let response = self
            .client
            .get(url)
            .header("Accept", accept)
            .send()
            .await
            .map_err(net)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Http {
                url: url.into(),
                status,
            });
        }
        Ok(response.bytes().await.map_err(net)?.to_vec())
    }

    /// A package index's project page in PEP 691 JSON (may be megabytes).
    pub async fn get_json(&self, url: &str) -> Result<String, FetchError> {
        let bytes = self
            .get_bytes(url, "application/vnd.pypi.simple.v1+json")
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A small text resource (a checksum file), at most 1 MiB.
    pub async fn get_text(&self, url: &str) -> Result<String, FetchError> {
        let bytes = self.get_bytes(url, "*/*").await?;
        if bytes.len() > 1 << 20 {
            return Err(FetchError::Network {
                url: url.into(),
                reason: "checksum file larger than 1 MiB".into(),
            });
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The verified archive in the cache, downloading (or resuming) it when needed.
    /// `progress(done, total)` is called as bytes arrive.
    pub async fn fetch(
        &self,
        url: &str,
        file_name: &str,
        sha256: &str,
        progress: &(dyn Fn(u64, Option<u64>) + Sync),
    ) -> Result<PathBuf, FetchError> {
        std::fs::create_dir_all(&self.cache_dir).map_err(io_err(&self.cache_dir))?;
        let done = self.cache_dir.join(file_name);
        let partial = self.cache_dir.join(format!("{file_name}.partial"));
        // A cached archive is used only if it still verifies.
        if done.exists() {
            if sha256_file(&done).map_err(io_err(&done))? == sha256 {
                return Ok(done);
            }
            std::fs::remove_file(&done).map_err(io_err(&done))?;
        }

        let mut hasher = Sha256::new();
        let mut have = 0u64;
        if let Ok(mut f) = std::fs::File::open(&partial) {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(io_err(&partial))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                have += n as u64;
            }
        }
        let net = |e: reqwest::Error| FetchError::Network {
            url: url.into(),
            reason: e.to_string(),
        };
        let mut request = self.client.get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(net)?;
        let status = response.status().as_u16();
        let resumed = status == 206 && have > 0;
        if !resumed {
            if status != 200 {
                return Err(FetchError::Http {
                    url: url.into(),
                    status,
                });
            }
            // The server ignored the range (or there was none): start over.
            hasher = Sha256::new();
            have = 0;
        }
        let total = response.content_length().map(|len| len + have);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&partial)
            .map_err(io_err(&partial))?;
        let mut stream = response.bytes_stream();
        progress(have, total);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(net)?;
            file.write_all(&chunk).map_err(io_err(&partial))?;
            hasher.update(&chunk);
            have += chunk.len() as u64;
            progress(have, total);
        }
        file.sync_all().map_err(io_err(&partial))?;
        drop(file);
        if let Some(expected) = total {
            if expected != have {
                // Short read: keep the partial file so the next try resumes.
                return Err(FetchError::Length {
                    url: url.into(),
                    expected,
                    actual: have,
                });
            }
        }
        let actual = hex(&hasher.finalize());
        if actual != sha256 {
            std::fs::remove_file(&partial).map_err(io_err(&partial))?;
            return Err(FetchError::Digest {
                url: url.into(),
                expected: sha256.into(),
                actual,
            });
        }
        std::fs::rename(&partial, &done).map_err(io_err(&done))?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests;
