//! A local mirror of release hosts for the end-to-end tests: serves a directory over
//! HTTP on 127.0.0.1 (the containers share the host's network) or on a Unix socket
//! (for a container with a network of its own), honours
//! `Range: bytes=N-`, and cuts a response short once when `<file>.cut-once` holds a
//! byte count (an interrupted download). Files are read at each request, so a test
//! can change the mirror between applies.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// (request path, range start) of each request, in order.
type RequestLog = Mutex<Vec<(String, Option<u64>)>>;

pub struct Mirror {
    pub root: PathBuf,
    pub url: String,
    /// (path, range start) of every request, in order.
    pub log: Arc<RequestLog>,
    _dir: tempfile::TempDir,
}

impl Mirror {
    pub fn start() -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        Mirror::serve(url, move |serve| {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Ok(reader) = stream.try_clone() else {
                    continue;
                };
                serve(Box::new(reader), Box::new(stream));
            }
        })
    }

    /// A mirror listening on the Unix socket `socket` (in a directory a container
    /// binds), for a container with a network of its own, which reaches it at
    /// `http://127.0.0.1:PORT` through `Container::loopback_proxy`: a host address on
    /// the container's bridge would be seen by every host-network test beside it.
    pub fn start_on_socket(socket: &Path, port: u16) -> Mirror {
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        Mirror::serve(format!("http://127.0.0.1:{port}"), move |serve| {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Ok(reader) = stream.try_clone() else {
                    continue;
                };
                serve(Box::new(reader), Box::new(stream));
            }
        })
    }

    /// Serves each connection `accept` hands over on a thread of its own.
    fn serve(
        url: String,
        accept: impl FnOnce(&dyn Fn(Box<dyn Read + Send>, Box<dyn Write + Send>)) + Send + 'static,
    ) -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (r, l) = (root.clone(), log.clone());
        std::thread::spawn(move || {
            accept(&move |reader, writer| {
                let (r, l) = (r.clone(), l.clone());
                std::thread::spawn(move || serve_one(reader, writer, &r, &l));
            })
        });
        Mirror {
            root,
            url,
            log,
            _dir: dir,
        }
    }

    /// The port of its URL.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the mirror's URL ends with its port")
    }

    /// Writes a file at `path` (upstream's URL path) in the mirror.
    pub fn put(&self, path: &str, bytes: &[u8]) {
        let p = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    /// The next GET of `path` stops after `bytes` bytes.
    pub fn cut_once(&self, path: &str, bytes: usize) {
        self.put(&format!("{path}.cut-once"), bytes.to_string().as_bytes());
    }

    pub fn requests(&self) -> Vec<(String, Option<u64>)> {
        self.log.lock().unwrap().clone()
    }
}

fn serve_one(
    reader: Box<dyn Read + Send>,
    mut stream: Box<dyn Write + Send>,
    root: &Path,
    log: &Mutex<Vec<(String, Option<u64>)>>,
) {
    let mut reader = BufReader::new(reader);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse::<u64>().ok();
        }
    }
    log.lock().unwrap().push((path.clone(), range));
    let file = root.join(path.trim_start_matches('/'));
    let Ok(body) = std::fs::read(&file) else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = (range.unwrap_or(0) as usize).min(body.len());
    let part = &body[start..];
    let head = match range {
        Some(_) => format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n", part.len(), body.len().saturating_sub(1), body.len()),
        None => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", part.len()),
    };
    let _ = stream.write_all(head.as_bytes());
    let cut = file.with_file_name(format!(
        "{}.cut-once",
        file.file_name().unwrap().to_string_lossy()
    ));
    let send = match std::fs::read_to_string(&cut)
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
    {
        Some(n) => {
            let _ = std::fs::remove_file(&cut);
            &part[..n.min(part.len())]
        }
        None => part,
    };
    let _ = stream.write_all(send);
}

pub const STATSD_DIR: &str = "prometheus/statsd_exporter/releases/download/v0.30.0";
pub const STATSD_TGZ: &str = "statsd_exporter-0.30.0.linux-amd64.tar.gz";

/// A stand-in program from tests/standins/.
pub fn standin(name: &str) -> Vec<u8> {
    std::fs::read(super::repo().join("tests/standins").join(name)).unwrap()
}

/// statsd_exporter's upstream layout (a top directory with the binary and licences),
/// holding the STAND-IN; `extra_entry` adds a raw entry name (e.g. one escaping).
pub fn statsd_tarball(extra_entry: Option<&str>) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let top = "statsd_exporter-0.30.0.linux-amd64";
    for (name, mode, data) in [
        ("statsd_exporter", 0o755, standin("statsd_exporter")),
        (
            "LICENSE",
            0o644,
            b"Apache-2.0 (stand-in archive)\n".to_vec(),
        ),
        ("NOTICE", 0o644, b"stand-in\n".to_vec()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(format!("{top}/{name}")).unwrap();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    if let Some(evil) = extra_entry {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..evil.len()].copy_from_slice(evil.as_bytes());
        h.set_mode(0o644);
        h.set_size(5);
        h.set_cksum();
        b.append(&h, &b"evil\n"[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A real release archive of `shared/fixtures/release-archives/` (built from
/// upstream's source at the catalog's tags, in upstream's layout: see its README),
/// by its path under the release host.
pub fn real_archive(path: &str) -> Vec<u8> {
    let root = std::env::var_os("ANALYTICS_STACK_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| super::repo().join("../shared/fixtures"));
    let file = root.join("release-archives").join(path);
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// shared/fixtures/cpython/'s CPython 3.12 (built from upstream's source in
/// python-build-standalone's `install_only` layout; see its README): the test's
/// stand-in for the catalog's pinned python-build-standalone archive.
pub const CPYTHON_FIXTURE: &str = "cpython-3.12.14-x86_64-unknown-linux-gnu-install_only.tar.gz";

/// The Debian 12 packages of the shared libraries the fixture's extension modules
/// link to (`ldd lib-dynload/*.so`; python-build-standalone links them statically).
pub const CPYTHON_FIXTURE_LIBRARIES: [&str; 12] = [
    "libsqlite3-0",
    "libssl3",
    "libffi8",
    "liblzma5",
    "libbz2-1.0",
    "zlib1g",
    "libreadline8",
    "libuuid1",
    "libgdbm6",
    "libncursesw6",
    "libnsl2",
    "libgssapi-krb5-2",
];

/// The same libraries on Debian 13 (renamed by the 64-bit time_t transition).
pub const CPYTHON_FIXTURE_LIBRARIES_TRIXIE: [&str; 12] = [
    "libsqlite3-0",
    "libssl3t64",
    "libffi8",
    "liblzma5",
    "libbz2-1.0",
    "zlib1g",
    "libreadline8t64",
    "libuuid1",
    "libgdbm6t64",
    "libncursesw6",
    "libnsl2",
    "libgssapi-krb5-2",
];

impl Mirror {
    /// The fixture CPython at `cpython/FILE`; returns the `[python]` configuration
    /// that names it as the stack's own CPython (the operator's own archive: its URL
    /// and the test's digest, since the catalog pins the real archive's), with the
    /// Debian packages of the libraries it links; `for_all` builds every venv on it.
    pub fn put_cpython_fixture(&self, for_all: bool, libraries: &[&str]) -> String {
        let root = std::env::var_os("ANALYTICS_STACK_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| super::repo().join("../shared/fixtures"));
        let file = root.join("cpython").join(CPYTHON_FIXTURE);
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        self.put(&format!("cpython/{CPYTHON_FIXTURE}"), &bytes);
        let interpreter = if for_all {
            "[python]\ninterpreter = \"managed\"\n"
        } else {
            ""
        };
        format!(
            "{interpreter}[python.managed]\nurl = \"{}/cpython/{CPYTHON_FIXTURE}\"\nsha256 = \"{}\"\nversion = \"3.12.14\"\npackages = {libraries:?}\n",
            self.url.trim_end_matches('/'),
            analytics_stack::util::sha256_hex(&bytes)
        )
    }

    /// The real Loki 3.7.0, Promtail 3.5.1 and statsd_exporter 0.30.0 with checksum
    /// files of their digests, in upstream's layout (replacing stand-ins put before).
    pub fn put_real_loki_promtail_statsd(&self) {
        for (dir, file, sums) in [
            (LOKI_DIR, LOKI_ZIP, "SHA256SUMS"),
            (PROMTAIL_DIR, PROMTAIL_ZIP, "SHA256SUMS"),
            (STATSD_DIR, STATSD_TGZ, "sha256sums.txt"),
        ] {
            let bytes = real_archive(&format!("{dir}/{file}"));
            self.put(&format!("{dir}/{file}"), &bytes);
            self.put(
                &format!("{dir}/{sums}"),
                format!("{}  {file}\n", analytics_stack::util::sha256_hex(&bytes)).as_bytes(),
            );
        }
    }

    /// The stand-in statsd_exporter with its checksum file, in upstream's layout.
    pub fn put_statsd_exporter(&self) {
        let tgz = statsd_tarball(None);
        self.put(&format!("{STATSD_DIR}/{STATSD_TGZ}"), &tgz);
        self.put(
            &format!("{STATSD_DIR}/sha256sums.txt"),
            format!(
                "{}  {STATSD_TGZ}\n",
                analytics_stack::util::sha256_hex(&tgz)
            )
            .as_bytes(),
        );
    }

    /// A file fetched from its real URL on the host (PyPI is reachable here), kept at
    /// its upstream path: what an internal mirror of that host holds.
    pub fn put_from(&self, url: &str) {
        let path = url
            .split_once("://")
            .and_then(|(_, r)| r.find('/').map(|i| r[i..].to_string()))
            .unwrap();
        let dest = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let ok = std::process::Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&dest)
            .arg(url)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot fetch {url} for the mirror");
    }
}

pub const LOKI_DIR: &str = "grafana/loki/releases/download/v3.7.0";
pub const LOKI_ZIP: &str = "loki-linux-amd64.zip";
pub const PROMTAIL_DIR: &str = "grafana/loki/releases/download/v3.5.1";
pub const PROMTAIL_ZIP: &str = "promtail-linux-amd64.zip";

/// The layout of Alloy's and Promtail's zips: one file, `NAME-linux-amd64`.
pub fn single_binary_zip(name: &str) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    z.start_file(
        format!("{name}-linux-amd64"),
        zip::write::SimpleFileOptions::default().unix_permissions(0o755),
    )
    .unwrap();
    z.write_all(&standin(name)).unwrap();
    z.finish().unwrap();
    buf.into_inner()
}

/// Loki's upstream layout: a zip holding one file, `loki-linux-amd64`.
pub fn loki_zip() -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    z.start_file(
        "loki-linux-amd64",
        zip::write::SimpleFileOptions::default().unix_permissions(0o755),
    )
    .unwrap();
    z.write_all(&standin("loki")).unwrap();
    // Padding so that the download is long enough to be cut in the middle.
    z.start_file(
        "PADDING-stand-in",
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
    )
    .unwrap();
    z.write_all(&vec![b'x'; 400_000]).unwrap();
    z.finish().unwrap();
    buf.into_inner()
}

/// Grafana's upstream layout: `grafana-VERSION/` with bin/, conf/ and public/.
pub fn grafana_tarball() -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, mode, data) in [
        ("grafana-13.0.1/bin/grafana", 0o755, standin("grafana")),
        (
            "grafana-13.0.1/conf/defaults.ini",
            0o644,
            b"; stand-in archive\n".to_vec(),
        ),
        (
            "grafana-13.0.1/public/index.html",
            0o644,
            b"stand-in\n".to_vec(),
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

impl Mirror {
    /// Every release archive of the stack in upstream's layout, with stand-in
    /// binaries: statsd_exporter, Loki, Grafana (behind its download API's answer)
    /// and Alloy, each with what the catalog verifies it by.
    pub fn put_release_archives(&self) {
        let sha = |b: &[u8]| analytics_stack::util::sha256_hex(b);
        self.put_statsd_exporter();
        let zip = loki_zip();
        self.put(&format!("{LOKI_DIR}/{LOKI_ZIP}"), &zip);
        self.put(
            &format!("{LOKI_DIR}/SHA256SUMS"),
            format!("{}  {LOKI_ZIP}\n", sha(&zip)).as_bytes(),
        );
        let grafana = grafana_tarball();
        self.put(
            "grafana/release/13.0.1/grafana_13.0.1_99999_linux_amd64.tar.gz",
            &grafana,
        );
        self.put(
            "api/downloads/grafana/versions/13.0.1/packages/amd64/linux",
            format!(r#"{{"url": "https://dl.grafana.com/grafana/release/13.0.1/grafana_13.0.1_99999_linux_amd64.tar.gz", "sha256": "{}"}}"#, sha(&grafana)).as_bytes(),
        );
        let alloy = single_binary_zip("alloy");
        self.put(
            "grafana/alloy/releases/download/v1.12.0/alloy-linux-amd64.zip",
            &alloy,
        );
        self.put(
            "grafana/alloy/releases/download/v1.12.0/SHA256SUMS",
            format!("{}  alloy-linux-amd64.zip\n", sha(&alloy)).as_bytes(),
        );
    }
}
