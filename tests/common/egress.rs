//! An egress proxy for containers on a private bridge (no route out, see
//! [`super::net::Bridge`]): the host fetches Debian's packages and PyPI's files for
//! them, and keeps every place they asked for, so that a test can say which hosts an
//! install reached. It listens on a Unix socket in a directory bound into the
//! container, where systemd-socket-proxyd makes it `127.0.0.1:3128`
//! ([`super::Container::use_egress_proxy`]); the daemon is given it as an operator
//! behind a site's proxy gives it (`http_proxy`/`https_proxy` in a drop-in of its
//! unit): apt and the archive fetcher read those, and the daemon hands them to uv.
//!
//! HTTPS goes through `CONNECT` (the TLS is the container's own, end to end); plain
//! HTTP (apt's Debian mirror) is forwarded one request per connection
//! (`Connection: close`), which apt handles as any server closing.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::mirror::Mirror;
use super::net::Bridge;
use super::Container;

/// Where the proxy answers inside a container (its loopback).
pub const PORT: u16 = 3128;
/// Where the proxy's directory is bound inside a container.
pub const DIR_INSIDE: &str = "/srv/egress";

pub struct EgressProxy {
    dir: tempfile::TempDir,
    destinations: Arc<Mutex<BTreeSet<String>>>,
}

impl EgressProxy {
    pub fn start() -> EgressProxy {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let listener = UnixListener::bind(dir.path().join("proxy.sock")).unwrap();
        let destinations = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = destinations.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ended = forward(client, &seen);
                });
            }
        });
        EgressProxy { dir, destinations }
    }

    /// The directory to bind at [`DIR_INSIDE`].
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Every `host:port` asked for so far.
    pub fn destinations(&self) -> BTreeSet<String> {
        self.destinations.lock().unwrap().clone()
    }
}

/// Where a test's hosts are when they must download but should not share the host's
/// network (and so can run beside other tests): a bridge of their own with no route
/// out, Debian's mirror and PyPI through the egress proxy, and a mirror of release
/// archives on each host's loopback (`http://127.0.0.1:18080`).
pub struct OwnNetwork {
    pub bridge: Bridge,
    pub proxy: EgressProxy,
    pub mirror: Mirror,
    mirror_dir: tempfile::TempDir,
}

impl OwnNetwork {
    pub fn new(bridge: &str) -> OwnNetwork {
        let mirror_dir = tempfile::tempdir_in("/var/tmp").unwrap();
        OwnNetwork {
            bridge: Bridge::create(bridge),
            proxy: EgressProxy::start(),
            mirror: Mirror::start_on_socket(&mirror_dir.path().join("mirror.sock"), 18080),
            mirror_dir,
        }
    }

    /// What a host of this network binds: the proxy's and the mirror's sockets.
    fn binds(&self) -> Vec<(PathBuf, &'static str)> {
        vec![
            (self.proxy.dir(), DIR_INSIDE),
            (self.mirror_dir.path().to_path_buf(), "/srv/mirror"),
        ]
    }

    /// A container of this build on the bridge at `address`, its way out set up.
    pub fn boot(&self, name: &str, address: &str) -> Container {
        self.ready(Container::boot_on_with(
            name,
            &self.bridge,
            address,
            &self.binds(),
        ))
    }

    /// Like `boot`, limited to `bytes` of memory ([`Container::boot_with_memory`]).
    pub fn boot_with_memory(&self, name: &str, address: &str, bytes: u64) -> Container {
        self.ready(Container::boot_with_memory_on(
            name,
            bytes,
            &self.bridge,
            address,
            &self.binds(),
        ))
    }

    fn ready(&self, c: Container) -> Container {
        c.loopback_proxy(self.mirror.port(), "/srv/mirror/mirror.sock");
        c.use_egress_proxy();
        c
    }
}

/// The request's head (up to the blank line), read a byte at a time so that nothing
/// after it is consumed.
fn read_head(client: &mut UnixStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 || head.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn forward(mut client: UnixStream, seen: &Mutex<BTreeSet<String>>) -> std::io::Result<()> {
    let head = read_head(&mut client)?;
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut words = request.split(' ');
    let (method, target, version) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
        words.next().unwrap_or("HTTP/1.1"),
    );
    let (authority, upstream_head) = if method == "CONNECT" {
        (target.to_string(), None)
    } else if let Some(rest) = target.strip_prefix("http://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        // Origin form, and one request per connection (no hop-by-hop headers kept).
        let mut out = format!("{method} /{path} {version}\r\n");
        for line in lines.filter(|l| !l.is_empty()) {
            let name = line
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !matches!(
                name.as_str(),
                "connection" | "proxy-connection" | "keep-alive"
            ) {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        let authority = match authority.contains(':') {
            true => authority.to_string(),
            false => format!("{authority}:80"),
        };
        (authority, Some(out))
    } else {
        client.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    };
    seen.lock().unwrap().insert(authority.clone());
    let mut upstream = match TcpStream::connect(&authority) {
        Ok(s) => s,
        Err(e) => {
            let body = format!("{authority}: {e}\n");
            write!(
                client,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
    };
    match upstream_head {
        None => client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?,
        Some(head) => upstream.write_all(head.as_bytes())?,
    }
    // Both ways at once; when the far end is done, so is the client's connection.
    let (mut from_client, mut to_upstream) = (client.try_clone()?, upstream.try_clone()?);
    let outbound = std::thread::spawn(move || {
        let _ended = std::io::copy(&mut from_client, &mut to_upstream);
        let _closed = to_upstream.shutdown(Shutdown::Write);
    });
    let _ended = std::io::copy(&mut upstream, &mut client);
    let _closed = client.shutdown(Shutdown::Both);
    let _closed = upstream.shutdown(Shutdown::Both);
    let _joined = outbound.join();
    Ok(())
}
