//! The catalog of release archives (`catalog/archives.toml`, embedded): per component
//! a version, format, entry binary and, per architecture, URL and digest source.

use super::ArchiveFormat;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const EMBEDDED: &str = include_str!("../../catalog/archives.toml");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub version: String,
    pub format: ArchiveFormat,
    /// The program inside the unpacked directory; `{arch}` is replaced.
    pub binary: String,
    /// Upstream's checksum file beside the archive, when no digest is pinned.
    #[serde(default)]
    pub checksums: Option<String>,
    /// The per-arch URL is a resolver answering JSON `{"url", "sha256"}` (Grafana's
    /// download URLs hold a build id that cannot be derived from the version).
    #[serde(default)]
    pub resolve: bool,
    pub amd64: String,
    pub arm64: String,
    #[serde(default)]
    pub sha256_amd64: Option<String>,
    #[serde(default)]
    pub sha256_arm64: Option<String>,
}

/// How an archive's digest is known.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestSource {
    Pinned(String),
    /// The line for the archive's file name in this checksum file.
    ChecksumFile(#[serde(serialize_with = "serialize_redacted")] String),
    /// `url` is a resolver: its JSON names the archive's URL and sha256.
    Resolver,
}

/// One archive to install, resolved for this host's architecture and mirror.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArchivePin {
    pub component: String,
    pub version: String,
    pub format: ArchiveFormat,
    /// Printed (`plan --json`) without a mirror's credentials.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    pub file_name: String,
    pub digest: DigestSource,
    pub binary: String,
}

fn serialize_redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::config::redact_url(url))
}

pub fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// `url` with its scheme and host replaced by `mirror` (path kept), when set.
pub fn through_mirror(url: &str, mirror: &str) -> String {
    if mirror.is_empty() {
        return url.to_string();
    }
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    format!("{}{path}", mirror.trim_end_matches('/'))
}

pub fn load() -> Result<BTreeMap<String, CatalogEntry>, toml::de::Error> {
    toml::from_str(EMBEDDED)
}

/// The pin of `component` for `arch`, through `mirror`.
pub fn pin(component: &str, arch: &str, mirror: &str) -> Option<ArchivePin> {
    let entry = load().ok()?.remove(component)?;
    let (url, sha) = match arch {
        "arm64" => (entry.arm64.clone(), entry.sha256_arm64.clone()),
        _ => (entry.amd64.clone(), entry.sha256_amd64.clone()),
    };
    let url = through_mirror(&url, mirror);
    let file_name = if entry.resolve {
        format!(
            "{component}-{}.linux-{arch}.{}",
            entry.version,
            match entry.format {
                ArchiveFormat::TarGz => "tar.gz",
                ArchiveFormat::Zip => "zip",
            }
        )
    } else {
        url.rsplit('/').next().unwrap_or_default().to_string()
    };
    let digest = match (sha, &entry.checksums) {
        _ if entry.resolve => DigestSource::Resolver,
        (Some(sha), _) => DigestSource::Pinned(sha),
        (None, Some(sums)) => DigestSource::ChecksumFile(format!(
            "{}/{sums}",
            url.rsplit_once('/').map_or("", |(base, _)| base)
        )),
        (None, None) => return None,
    };
    Some(ArchivePin {
        component: component.into(),
        version: entry.version,
        format: entry.format,
        url,
        file_name,
        digest,
        binary: entry.binary.replace("{arch}", arch),
    })
}

/// The archive URL and sha256 a resolver's JSON names.
pub fn from_resolver(json: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let url = v["url"].as_str()?.to_string();
    let sha = v["sha256"].as_str()?.to_ascii_lowercase();
    (sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit())).then_some((url, sha))
}

/// The digest for `file_name` in a `sha256sum`-style checksum file.
pub fn digest_from_checksums(text: &str, file_name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (digest, name) = (f.next()?, f.next()?);
        (name.trim_start_matches('*') == file_name
            && digest.len() == 64
            && digest.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| digest.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_parses_and_has_both_architectures_and_a_digest_source() {
        let catalog = load().expect("catalog/archives.toml parses");
        assert!(catalog.contains_key("statsd-exporter") && catalog.contains_key("loki"));
        for (name, e) in &catalog {
            for arch in ["amd64", "arm64"] {
                let pin = pin(name, arch, "")
                    .unwrap_or_else(|| panic!("{name}/{arch} has no digest source"));
                assert!(pin.url.starts_with("https://"), "{name}: {}", pin.url);
                // Wheels name the machine (x86_64, aarch64) rather than Debian's arch.
                let machine = if arch == "amd64" { "x86_64" } else { "aarch64" };
                assert!(
                    (pin.url.contains(arch) || pin.url.contains(machine))
                        && pin.url.contains(&e.version),
                    "{name}: {}",
                    pin.url
                );
            }
        }
    }

    #[test]
    fn a_mirror_keeps_the_upstream_path() {
        let p = pin("loki", "amd64", "http://127.0.0.1:8099/mirror/").unwrap();
        assert_eq!(p.url, "http://127.0.0.1:8099/mirror/grafana/loki/releases/download/v3.7.0/loki-linux-amd64.zip");
        assert_eq!(
            p.digest,
            DigestSource::ChecksumFile(
                "http://127.0.0.1:8099/mirror/grafana/loki/releases/download/v3.7.0/SHA256SUMS"
                    .into()
            )
        );
        assert_eq!(p.binary, "loki-linux-amd64");
        assert_eq!(p.file_name, "loki-linux-amd64.zip");
    }

    #[test]
    fn grafana_is_resolved_through_its_download_api() {
        let p = pin("grafana", "arm64", "").unwrap();
        assert_eq!(p.digest, DigestSource::Resolver);
        assert!(
            p.url
                .starts_with("https://grafana.com/api/downloads/grafana/versions/"),
            "{}",
            p.url
        );
        assert_eq!(
            p.file_name,
            format!("grafana-{}.linux-arm64.tar.gz", p.version)
        );
        let json = format!(
            r#"{{"url": "https://dl.grafana.com/grafana/release/13.0.1/grafana_13.0.1_123_linux_amd64.tar.gz", "sha256": "{}"}}"#,
            "AB".repeat(32)
        );
        let (url, sha) = from_resolver(&json).unwrap();
        assert!(url.ends_with("_linux_amd64.tar.gz"));
        assert_eq!(sha, "ab".repeat(32));
        assert!(from_resolver(r#"{"url": "x", "sha256": "short"}"#).is_none());
    }

    #[test]
    fn checksum_files_in_both_styles_are_read() {
        let d = "a".repeat(64);
        let text = format!("{} other.zip\n{d}  loki-linux-amd64.zip\n", "b".repeat(64));
        assert_eq!(
            digest_from_checksums(&text, "loki-linux-amd64.zip"),
            Some(d.clone())
        );
        assert_eq!(
            digest_from_checksums(&format!("{d} *x.tar.gz\n"), "x.tar.gz"),
            Some(d)
        );
        assert_eq!(digest_from_checksums("nothing here", "x.tar.gz"), None);
    }
}
