//! Which files of a lock file a bundle needs: for each pinned requirement, the one
//! wheel PyPI publishes for it that installs on the target (Linux, glibc, the
//! architecture, the distribution's Python), or its sdist when there is no wheel.
//! Only files whose sha256 the lock lists are taken, so the bundle holds exactly what
//! `uv pip sync --require-hashes` will accept.

/// One `name==version` of a lock file with its hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub name: String,
    pub version: String,
    pub hashes: Vec<String>,
}

/// Parses a `uv pip compile --generate-hashes` lock file.
pub fn parse_lock(text: &str) -> Vec<Locked> {
    let mut out: Vec<Locked> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("--hash=sha256:") {
            if let Some(last) = out.last_mut() {
                last.hashes
                    .push(h.trim_end_matches('\\').trim().to_string());
            }
        } else if !t.starts_with('#') && !line.starts_with(' ') {
            let spec = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim_end_matches('\\')
                .trim();
            if let Some((name, version)) = spec.split_once("==") {
                let name = name.split('[').next().unwrap_or(name).trim();
                out.push(Locked {
                    name: name.to_string(),
                    version: version.trim().to_string(),
                    hashes: Vec::new(),
                });
            }
        }
    }
    out
}

/// What a bundle's wheels must install on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// `x86_64` or `aarch64`.
    pub machine: &'static str,
    pub python_minor: u32,
    /// The distribution's glibc (major 2): manylinux wheels up to it install.
    pub glibc_minor: u32,
}

impl Target {
    pub fn for_debian(codename: &str, arch: &str) -> Option<Target> {
        let (python_minor, glibc_minor) = match codename {
            "bookworm" => (11, 36),
            "trixie" => (13, 41),
            _ => return None,
        };
        let machine = match arch {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            _ => return None,
        };
        Some(Target {
            machine,
            python_minor,
            glibc_minor,
        })
    }
}

/// How well a wheel's platform tags fit: `None` if it does not install on `target`;
/// otherwise higher is preferred (platform-specific over pure, newer glibc first).
pub fn wheel_score(filename: &str, target: &Target) -> Option<(u8, u32)> {
    let stem = filename.strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() < 5 {
        return None;
    }
    let (py, abi, plat) = (
        parts[parts.len() - 3],
        parts[parts.len() - 2],
        parts[parts.len() - 1],
    );
    let minor = target.python_minor;
    let cp = |t: &str| t.strip_prefix("cp3").and_then(|m| m.parse::<u32>().ok());
    let py_ok = py.split('.').any(|t| match abi {
        "none" => t == "py3" || t == format!("py3{minor}") || cp(t) == Some(minor),
        "abi3" => cp(t).is_some_and(|m| m <= minor),
        _ => {
            cp(t) == Some(minor)
                && cp(abi.trim_end_matches('t')) == Some(minor)
                && !abi.ends_with('t')
        }
    });
    if !py_ok {
        return None;
    }
    let mut best: Option<(u8, u32)> = None;
    for tag in plat.split('.') {
        let score = if tag == "any" {
            Some((0, 0))
        } else if tag == format!("linux_{}", target.machine) {
            Some((1, 0))
        } else if let Some(rest) = tag.strip_prefix("manylinux") {
            let rest = rest.strip_suffix(&format!("_{}", target.machine));
            // manylinux1 = glibc 2.5, manylinux2010 = 2.12, manylinux2014 = 2.17,
            // manylinux_2_N = 2.N.
            let glibc = match rest {
                Some("1") => Some(5),
                Some("2010") => Some(12),
                Some("2014") => Some(17),
                Some(r) => r.strip_prefix("_2_").and_then(|n| n.parse().ok()),
                None => None,
            };
            glibc.filter(|g| *g <= target.glibc_minor).map(|g| (2, g))
        } else {
            None
        };
        best = best.max(score);
    }
    best
}

/// A file listed by the index for a project (PEP 691 JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    pub filename: String,
    pub url: String,
    pub sha256: String,
}

/// The file of `locked` to bundle for `target`: the best-fitting wheel among those the
/// lock hashes, else its sdist; `None` when nothing installs there (e.g. a
/// Windows-only dependency that the lock's markers exclude on Linux).
pub fn choose<'a>(
    locked: &Locked,
    files: &'a [IndexFile],
    target: &Target,
) -> Option<&'a IndexFile> {
    let version_of = |f: &IndexFile| -> bool {
        let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '.'], "_");
        let prefix = format!("{}_{}", norm(&locked.name), norm(&locked.version));
        norm(&f.filename).starts_with(&prefix)
    };
    let hashed: Vec<&IndexFile> = files
        .iter()
        .filter(|f| locked.hashes.contains(&f.sha256) && version_of(f))
        .collect();
    hashed
        .iter()
        .filter_map(|f| wheel_score(&f.filename, target).map(|s| (s, *f)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, f)| f)
        .or_else(|| {
            hashed
                .into_iter()
                .find(|f| f.filename.ends_with(".tar.gz") || f.filename.ends_with(".zip"))
        })
}

/// The files of a PEP 691 JSON project page.
pub fn parse_index(json: &str, base: &str) -> Vec<IndexFile> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    v["files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .filter_map(|f| {
                    let url = f["url"].as_str()?;
                    let url = if url.starts_with("http") {
                        url.to_string()
                    } else {
                        format!("{}/{}", base.trim_end_matches('/'), url)
                    };
                    Some(IndexFile {
                        filename: f["filename"].as_str()?.to_string(),
                        url,
                        sha256: f["hashes"]["sha256"].as_str()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: Target = Target {
        machine: "x86_64",
        python_minor: 11,
        glibc_minor: 36,
    };

    #[test]
    fn wheels_that_install_on_bookworm_amd64_and_those_that_do_not() {
        let fits = |f: &str| wheel_score(f, &BOOKWORM);
        assert_eq!(fits("six-1.16.0-py2.py3-none-any.whl"), Some((0, 0)));
        assert_eq!(
            fits(
                "psycopg2_binary-2.9.10-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
            ),
            Some((2, 17))
        );
        assert_eq!(
            fits("cryptography-44.0.0-cp39-abi3-manylinux_2_34_x86_64.whl"),
            Some((2, 34))
        );
        assert_eq!(
            fits("x-1-cp311-cp311-manylinux_2_39_x86_64.whl"),
            None,
            "glibc too new"
        );
        assert_eq!(
            fits("x-1-cp312-cp312-manylinux_2_17_x86_64.whl"),
            None,
            "other Python"
        );
        assert_eq!(
            fits("x-1-cp311-cp311-manylinux_2_17_aarch64.whl"),
            None,
            "other arch"
        );
        assert_eq!(fits("x-1-cp311-cp311-musllinux_1_2_x86_64.whl"), None);
        assert_eq!(fits("x-1-cp311-cp311-win_amd64.whl"), None);
        assert_eq!(fits("x-1-cp313-cp313t-manylinux_2_17_x86_64.whl"), None);
        assert_eq!(
            fits("x-1-cp312-abi3-manylinux_2_17_x86_64.whl"),
            None,
            "abi3 from a newer Python"
        );
    }

    #[test]
    fn the_lock_is_parsed_with_extras_markers_and_hashes() {
        let lock = "# comment\ncelery[redis]==5.5.3 ; python_full_version >= '3.11' \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via superset\nsix==1.16.0 \\\n    --hash=sha256:cc\n";
        let parsed = parse_lock(lock);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].name, "celery");
        assert_eq!(parsed[0].version, "5.5.3");
        assert_eq!(parsed[0].hashes, ["aa", "bb"]);
        assert_eq!(parsed[1].hashes, ["cc"]);
    }

    #[test]
    fn the_best_hashed_wheel_is_chosen_else_the_sdist() {
        let f = |name: &str, sha: &str| IndexFile {
            filename: name.into(),
            url: format!("https://files/{name}"),
            sha256: sha.into(),
        };
        let files = [
            f("pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "a"),
            f("pkg-1.0-cp311-cp311-manylinux_2_28_x86_64.whl", "b"),
            f("pkg-1.0-cp311-cp311-manylinux_2_28_x86_64.whl", "unlisted"),
            f("pkg-1.0.tar.gz", "c"),
            f("pkg-0.9-py3-none-any.whl", "d"),
        ];
        let locked = Locked {
            name: "pkg".into(),
            version: "1.0".into(),
            hashes: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        };
        assert_eq!(choose(&locked, &files, &BOOKWORM).unwrap().sha256, "b");
        let sdist_only = Locked {
            hashes: vec!["c".into()],
            ..locked.clone()
        };
        assert_eq!(
            choose(&sdist_only, &files, &BOOKWORM).unwrap().filename,
            "pkg-1.0.tar.gz"
        );
        let windows = [f("pywin32-311-cp311-cp311-win_amd64.whl", "w")];
        let pywin = Locked {
            name: "pywin32".into(),
            version: "311".into(),
            hashes: vec!["w".into()],
        };
        assert!(choose(&pywin, &windows, &BOOKWORM).is_none());
    }
}
