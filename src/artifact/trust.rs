//! How far an archive's digest can be trusted before its download is.
//!
//! A digest is as good as where it comes from: pinned in the catalog (or by the
//! operator in `[archives] sha256`), it is trusted outright; learned from a checksum
//! file or a resolver, it is only as good as the channel, so it must come over
//! https (or from a loopback mirror, which no network path can alter). The first
//! digest verified for a version is recorded (trust on first use, in
//! `/var/lib/analytics-stack/archive-digests.json`, kept by uninstall); a later
//! download of the same version that a mirror describes with another digest is
//! refused.

use super::catalog::{ArchivePin, DigestSource};
use std::collections::BTreeMap;

pub const DIGESTS_FILE: &str = "/var/lib/analytics-stack/archive-digests.json";

/// Digests verified on this host, by [`key`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedDigests(pub BTreeMap<String, String>);

impl RecordedDigests {
    pub fn get(&self, pin: &ArchivePin) -> Option<&str> {
        self.0.get(&key(pin)).map(String::as_str)
    }
    pub fn record(&mut self, pin: &ArchivePin, sha256: &str) {
        self.0.insert(key(pin), sha256.to_string());
    }
}

/// `component version file`: one archive of one version.
pub fn key(pin: &ArchivePin) -> String {
    format!("{} {} {}", pin.component, pin.version, pin.file_name)
}

/// Where the digest comes from, as `plan` says it.
pub fn describe(pin: &ArchivePin, recorded: Option<&str>) -> &'static str {
    match (&pin.digest, recorded) {
        (DigestSource::Pinned(_), _) => "pinned digest",
        (_, Some(_)) => "digest recorded on first use",
        (DigestSource::ChecksumFile(_), None) => {
            "digest from the checksum file, recorded on first use"
        }
        (DigestSource::Resolver, None) => "digest from the download API, recorded on first use",
    }
}

/// Whether the URL's host is a loopback address (a mirror on this machine).
fn is_loopback(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Refuses to learn a digest over a channel anyone on the path could alter: an
/// unpinned, unrecorded archive whose digest would come over plain http from
/// another machine.
pub fn check_channel(pin: &ArchivePin, recorded: Option<&str>) -> Result<(), String> {
    let source = match &pin.digest {
        DigestSource::Pinned(_) => return Ok(()),
        _ if recorded.is_some() => return Ok(()),
        DigestSource::ChecksumFile(url) => url,
        DigestSource::Resolver => &pin.url,
    };
    if source.starts_with("https://") || is_loopback(source) {
        return Ok(());
    }
    Err(format!(
        "{} {} has no pinned digest, and its digest would come over plain http from {}: \
         whoever controls that path could swap the archive and its checksum together. \
         Pin it ([archives] sha256 = {{ {} = \"…\" }}) or use an https mirror",
        pin.component,
        pin.version,
        crate::config::redact_url(source),
        pin.component
    ))
}

/// Refuses a digest that differs from the one first verified for this version.
pub fn check_learned(
    pin: &ArchivePin,
    recorded: Option<&str>,
    learned: &str,
) -> Result<(), String> {
    match recorded {
        Some(first) if !first.eq_ignore_ascii_case(learned) => Err(format!(
            "{} {}: the source now says sha256 {learned}, but this version was verified as \
             {first} when it was first installed here (trust on first use): refused. If \
             upstream really re-published it, remove its line from {DIGESTS_FILE}",
            pin.component, pin.version
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::ArchiveFormat;

    fn pin(digest: DigestSource, url: &str) -> ArchivePin {
        ArchivePin {
            component: "statsd-exporter".into(),
            version: "0.30.0".into(),
            format: ArchiveFormat::TarGz,
            url: url.into(),
            file_name: "s.tar.gz".into(),
            digest,
            binary: "statsd_exporter".into(),
        }
    }

    #[test]
    fn digests_learned_over_plain_http_from_elsewhere_are_refused() {
        let sums = |u: &str| DigestSource::ChecksumFile(format!("{u}/sha256sums.txt"));
        let far = pin(
            sums("http://tok:en@mirror.internal/x"),
            "http://mirror.internal/x/s.tar.gz",
        );
        let err = check_channel(&far, None).unwrap_err();
        assert!(
            err.contains("plain http") && err.contains("[archives] sha256"),
            "{err}"
        );
        assert!(!err.contains("tok:en"), "{err}");
        // https, a loopback mirror, a pin or a recorded digest are all fine.
        for ok in [
            pin(
                sums("https://mirror.internal/x"),
                "https://mirror.internal/x/s.tar.gz",
            ),
            pin(
                sums("http://127.0.0.1:8099/x"),
                "http://127.0.0.1:8099/x/s.tar.gz",
            ),
            pin(sums("http://[::1]:80/x"), "http://[::1]/x/s.tar.gz"),
            pin(
                DigestSource::Pinned("a".repeat(64)),
                "http://mirror.internal/x/s.tar.gz",
            ),
        ] {
            check_channel(&ok, None).unwrap();
        }
        check_channel(&far, Some(&"a".repeat(64))).unwrap();
        let resolver = pin(DigestSource::Resolver, "http://mirror.internal/api/x");
        assert!(check_channel(&resolver, None).is_err());
    }

    #[test]
    fn a_version_keeps_the_digest_it_was_first_verified_with() {
        let p = pin(DigestSource::Resolver, "https://x/y");
        let mut rec = RecordedDigests::default();
        assert!(check_learned(&p, rec.get(&p), &"a".repeat(64)).is_ok());
        rec.record(&p, &"a".repeat(64));
        assert!(check_learned(&p, rec.get(&p), &"A".repeat(64)).is_ok());
        let err = check_learned(&p, rec.get(&p), &"b".repeat(64)).unwrap_err();
        assert!(
            err.contains("trust on first use") && err.contains(DIGESTS_FILE),
            "{err}"
        );
        assert_eq!(describe(&p, rec.get(&p)), "digest recorded on first use");
    }
}
