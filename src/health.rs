//! Health probes: each speaks the component's own protocol over loopback, with short
//! timeouts, so `status` stays quick.

use crate::model::Probe;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbeResult {
    pub probe: String,
    pub healthy: bool,
    pub detail: String,
}

/// Runs a probe; `secret` resolves a secret name to its value.
pub async fn run(probe: &Probe, secret: impl Fn(&str) -> Option<String>) -> ProbeResult {
    let (name, outcome) = match probe {
        Probe::Http { port, path } => (
            format!("http://127.0.0.1:{port}{path}"),
            tokio::time::timeout(TIMEOUT, http_get(*port, path)).await,
        ),
        Probe::HttpUnix { socket, path } => (
            format!("http://unix:{socket}{path}"),
            tokio::time::timeout(TIMEOUT, http_get_unix(socket, path)).await,
        ),
        Probe::HttpsAt {
            address,
            port,
            path,
        } => (
            format!(
                "https://{}{path}",
                std::net::SocketAddr::new(*address, *port)
            ),
            tokio::time::timeout(TIMEOUT, https_get_at(*address, *port, path)).await,
        ),
        Probe::Redis {
            port,
            password_secret,
            owner,
        } => {
            let name = format!("redis 127.0.0.1:{port}");
            // The password is sent only to a socket the server's own user holds: a
            // local user who got the port first receives nothing.
            let owner_uid = nix::unistd::User::from_name(owner)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw());
            let holder = crate::host::ports::loopback_listener_uid(*port);
            match (holder, owner_uid) {
                (Some(uid), Some(want)) if uid == want => {
                    let password = password_secret.as_deref().and_then(&secret);
                    (
                        name,
                        tokio::time::timeout(TIMEOUT, redis_ping(*port, password)).await,
                    )
                }
                (None, _) => (name, Ok(Err("nothing listens there".to_string()))),
                (Some(uid), _) => (
                    name,
                    Ok(Err(format!(
                        "the port is held by uid {uid}, not by {owner}: no password sent"
                    ))),
                ),
            }
        }
        Probe::Postgres { port } => (
            format!("postgres 127.0.0.1:{port}"),
            tokio::time::timeout(TIMEOUT, postgres_ready(*port)).await,
        ),
        Probe::AirflowHealth {
            port,
            path,
            components,
        } => (
            format!("http://127.0.0.1:{port}{path} ({})", components.join(", ")),
            tokio::time::timeout(TIMEOUT, async {
                let (status, body) = http_request(*port, path).await?;
                if status != 200 {
                    return Err(format!("HTTP {status}"));
                }
                airflow_heartbeats(&body, components)
            })
            .await,
        ),
    };
    let (healthy, detail) = match outcome {
        Ok(Ok(d)) => (true, d),
        Ok(Err(e)) => (false, e),
        Err(_) => (false, format!("no answer within {} s", TIMEOUT.as_secs())),
    };
    ProbeResult {
        probe: name,
        healthy,
        detail,
    }
}

async fn connect(port: u16) -> Result<TcpStream, String> {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// GET over HTTP/1.1; healthy on 2xx/3xx.
pub async fn http_get(port: u16, path: &str) -> Result<String, String> {
    http_get_at(std::net::Ipv4Addr::LOCALHOST.into(), port, path).await
}

/// GET over HTTP/1.1 from `address`; healthy on 2xx/3xx.
pub async fn http_get_at(
    address: std::net::IpAddr,
    port: u16,
    path: &str,
) -> Result<String, String> {
    let (status, _) = http_request_at(address, port, path).await?;
    if (200..400).contains(&status) {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// GET over HTTPS from `address`, the server's certificate checked against the
/// stack CA alone and this host's worker certificate presented; healthy on 2xx/3xx.
pub async fn https_get_at(
    address: std::net::IpAddr,
    port: u16,
    path: &str,
) -> Result<String, String> {
    use crate::tls::client::{CLIENT_CERT, CLIENT_KEY};
    let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
    let ca = reqwest::Certificate::from_pem(&read(crate::tls::CA_CERT)?)
        .map_err(|e| format!("{}: {e}", crate::tls::CA_CERT))?;
    let mut identity = read(CLIENT_CERT)?;
    identity.extend(read(CLIENT_KEY)?);
    let identity =
        reqwest::Identity::from_pem(&identity).map_err(|e| format!("{CLIENT_CERT}: {e}"))?;
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(identity)
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("https://{}{path}", std::net::SocketAddr::new(address, port));
    let status = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{e}"))?
        .status()
        .as_u16();
    if (200..400).contains(&status) {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// GET over HTTP/1.1 on a Unix socket; healthy on 2xx/3xx.
pub async fn http_get_unix(socket: &str, path: &str) -> Result<String, String> {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: analytics-stackd\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    if (200..400).contains(&status) {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// A minimal HTTP/1.1 GET returning status and body.
pub async fn http_request(port: u16, path: &str) -> Result<(u16, String), String> {
    http_request_at(std::net::Ipv4Addr::LOCALHOST.into(), port, path).await
}

async fn http_request_at(
    address: std::net::IpAddr,
    port: u16,
    path: &str,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect((address, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: analytics-stackd\r\nConnection: close\r\n\r\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Reads Airflow's health answer: `{"scheduler": {"status": "healthy", …}, …}`.
pub fn airflow_heartbeats(body: &str, components: &[String]) -> Result<String, String> {
    let json = &body[body.find('{').unwrap_or(0)..body.rfind('}').map_or(0, |i| i + 1)];
    let health: serde_json::Value = serde_json::from_str(json)
        .map_err(|_| "the answer is not Airflow's health JSON".to_string())?;
    let sick: Vec<String> = components
        .iter()
        .filter_map(|c| {
            let status = health[c.as_str()]["status"].as_str().unwrap_or("missing");
            (status != "healthy").then(|| format!("{c} {status}"))
        })
        .collect();
    if sick.is_empty() {
        Ok("HTTP 200, every heartbeat recent".into())
    } else {
        Err(sick.join(", "))
    }
}

async fn redis_ping(port: u16, password: Option<String>) -> Result<String, String> {
    let mut s = connect(port).await?;
    let mut cmd = Vec::new();
    if let Some(pw) = &password {
        cmd.extend(format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len()).into_bytes());
    }
    cmd.extend(b"*1\r\n$4\r\nPING\r\n");
    s.write_all(&cmd).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256];
    let mut got = String::new();
    let expected_lines = if password.is_some() { 2 } else { 1 };
    while got.matches("\r\n").count() < expected_lines {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    if got.lines().last() == Some("+PONG") && !got.contains("-ERR") && !got.contains("-WRONGPASS") {
        Ok("PONG".into())
    } else {
        Err(format!("unexpected answer {:?}", got.trim()))
    }
}

/// Sends a startup message; a server that accepts connections asks for
/// authentication ('R'), one that is starting or stopping answers an error ('E').
async fn postgres_ready(port: u16) -> Result<String, String> {
    let mut s = connect(port).await?;
    let mut body = Vec::new();
    body.extend(196608u32.to_be_bytes()); // protocol 3.0
    for (k, v) in [("user", "analytics_stack_probe"), ("database", "postgres")] {
        body.extend(k.as_bytes());
        body.push(0);
        body.extend(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend(body);
    s.write_all(&msg).await.map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.map_err(|e| e.to_string())?;
    match first[0] {
        b'R' => Ok("accepting connections".into()),
        b'E' => {
            let mut rest = vec![0u8; 512];
            let n = s.read(&mut rest).await.unwrap_or(0);
            let text: String = String::from_utf8_lossy(&rest[..n])
                .split('\0')
                .filter(|f| f.starts_with('M'))
                .map(|f| f[1..].to_string())
                .collect();
            Err(format!("server error: {text}"))
        }
        other => Err(format!("unexpected message type {:?}", other as char)),
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    /// A listener that records whatever is sent to it.
    async fn fake_listener() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_secs(3), l.accept()).await
            else {
                return Vec::new();
            };
            let mut got = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut got))
                .await
                .map_or(0, |r| r.unwrap_or(0));
            got.truncate(n);
            got
        });
        (port, task)
    }

    #[tokio::test]
    async fn the_redis_password_goes_only_to_a_socket_its_user_owns() {
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        let other = if me == "nobody" { "root" } else { "nobody" };
        let (port, heard) = fake_listener().await;
        let probe = Probe::Redis {
            port,
            password_secret: Some("redis-broker".into()),
            owner: other.into(),
        };
        let r = run(&probe, |_| Some("TOPSECRET".into())).await;
        assert!(!r.healthy);
        assert!(r.detail.contains("no password sent"), "{}", r.detail);
        // Nobody connected: the listener times out with nothing heard.
        assert!(heard.await.unwrap().is_empty());

        // The same listener owned by the expected user does get the AUTH.
        let (port, heard) = fake_listener().await;
        let probe = Probe::Redis {
            port,
            password_secret: Some("redis-broker".into()),
            owner: me,
        };
        let _unhealthy_fake = run(&probe, |_| Some("TOPSECRET".into())).await;
        let got = String::from_utf8_lossy(&heard.await.unwrap()).into_owned();
        assert!(got.contains("AUTH") && got.contains("TOPSECRET"), "{got:?}");
    }
}
