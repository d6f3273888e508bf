//! Worker hosts, on the primary: `worker add NAME` lists the worker in a file of the
//! configuration the daemon owns (`stack.d/90-workers.toml`) and applies, which
//! gives it a PostgreSQL role (a member of the workers' group, TLS only) and a Redis
//! user on the broker (through NGINX's TLS door), each with a generated password;
//! `worker remove NAME` takes it out and applies, which revokes both at once. The
//! token `worker add` returns carries what the worker needs to reach the primary:
//! its address, the ports, the two logins, and the stack CA's fingerprint to pin.

use crate::config::{ListenAddress, WorkerHost, WorkerName, WorkersConfig};
use crate::exec::Progress;
use crate::model::paths;
use crate::stack::{Stack, StackError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// The file of the configuration `worker add` and `worker remove` write.
pub const WORKERS_FILE: &str = "stack.d/90-workers.toml";
/// What begins every token (its format's version).
pub const TOKEN_PREFIX: &str = "asw1.";

/// What a worker needs to reach the primary; printed once, as a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub primary: String,
    /// The primary's HTTPS door: the CA, the execution API, the log push, the DAGs.
    pub https_port: u16,
    pub name: String,
    /// The worker's own address, as the primary allows and scrapes it.
    pub address: String,
    /// sha256 of the stack CA's certificate (DER), to pin when fetching it.
    pub ca_sha256: String,
    pub postgres_port: u16,
    pub postgres_role: String,
    pub postgres_password: String,
    pub broker_port: u16,
    pub broker_user: String,
    pub broker_password: String,
    /// The primary's Airflow venv (`VERSION-LOCKHASH`): a worker runs the same one.
    pub airflow_venv: String,
    /// Signs this worker's certificate request once, at `join` (then it is gone).
    pub enroll_secret: String,
    /// What Superset's Celery worker needs, when the primary lets worker hosts run
    /// it (`[workers] superset`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superset: Option<SupersetGrant>,
}

/// Superset's part of a token: the key its metadata is encrypted with (the worker's
/// Redis user and PostgreSQL role are the token's own), the cache's TLS door, and the
/// primary's Superset venv, which the worker must run too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupersetGrant {
    pub secret_key: String,
    pub cache_port: u16,
    pub venv: String,
}

impl JoinToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", crate::util::base64_url(&json))
    }

    /// Reads a token, checking every field it carries before anything uses it: the
    /// values end up in configuration files, URLs and SQL-free connection strings.
    pub fn decode(text: &str) -> Result<JoinToken, String> {
        let bad = |why: &str| format!("not a join token from `analytics-stack worker add`: {why}");
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| bad("it does not begin with asw1."))?;
        if body.len() > 4096 {
            return Err(bad("too long"));
        }
        let json = crate::util::base64_url_decode(body).ok_or_else(|| bad("not base64url"))?;
        let token: JoinToken = serde_json::from_slice(&json).map_err(|e| bad(&format!("{e}")))?;
        let ip = |s: &str| {
            s.parse::<std::net::IpAddr>()
                .ok()
                .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        };
        let secret = |s: &str| {
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        let venv = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        };
        let superset_ok = token.superset.as_ref().is_none_or(|g| {
            g.secret_key.len() >= 16
                && g.secret_key.len() <= 256
                && g.secret_key.bytes().all(|b| b.is_ascii_graphic())
                && g.cache_port > 0
                && venv(&g.venv)
        });
        let name = WorkerName::try_from(token.name.clone()).map_err(|e| bad(&e))?;
        let checks = [
            (ip(&token.primary).is_some(), "primary is not an address"),
            (ip(&token.address).is_some(), "address is not an address"),
            (
                token.ca_sha256.len() == 64
                    && token.ca_sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "ca_sha256 is not a sha256",
            ),
            (
                token.postgres_role == name.postgres_role(),
                "postgres_role does not match name",
            ),
            (
                token.broker_user == name.redis_user(),
                "broker_user does not match name",
            ),
            (secret(&token.postgres_password), "postgres_password"),
            (secret(&token.broker_password), "broker_password"),
            (
                token.enroll_secret.len() >= 32 && secret(&token.enroll_secret),
                "enroll_secret",
            ),
            (
                token.https_port > 0 && token.postgres_port > 0 && token.broker_port > 0,
                "a port is 0",
            ),
            (venv(&token.airflow_venv), "airflow_venv"),
            (superset_ok, "superset"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(bad(why)),
            None => Ok(token),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerAdded {
    pub name: String,
    pub token: String,
}

/// What `join` did: whose worker this host became, and the CA it now trusts.
#[derive(Debug, Clone, Serialize)]
pub struct Joined {
    pub name: String,
    pub primary: String,
    pub ca_fingerprint: String,
}

/// The file of the configuration `join` writes on a worker host.
pub const JOIN_FILE: &str = "stack.d/10-join.toml";
/// The worker's logins on the primary, as secrets (0600, root's). The Redis one
/// opens the cache's door too, when the primary grants Superset.
pub const PRIMARY_POSTGRES_SECRET: &str = "primary-postgres";
pub const PRIMARY_BROKER_SECRET: &str = "primary-broker";

/// On the primary: the secret of worker NAME's pending enrollment (0600, root's);
/// deleted once its certificate is signed, or with the worker.
pub fn enroll_secret_name(name: &WorkerName) -> String {
    format!("worker-enroll-{}", name.as_str())
}
/// The components a worker host runs; a host that has any other installed is a
/// primary (or a standalone stack) and is not turned into a worker.
const WORKER_COMPONENTS: &[&str] = &[
    "node-exporter",
    "promtail",
    "alloy",
    "airflow",
    "dlt",
    "dag-sync",
    "superset",
];

/// The largest certificate `join` reads from the primary.
const CA_MAX_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Serialize)]
pub struct WorkerEntry {
    pub name: String,
    pub address: String,
    pub added: u64,
    pub postgres_role: String,
    pub broker_user: String,
}

fn failed(what: impl std::fmt::Display) -> StackError {
    StackError::Failed(what.to_string())
}

type Hosts = std::collections::BTreeMap<WorkerName, WorkerHost>;

/// The file's text for `hosts` (serialized by toml: the names are validated, the
/// addresses typed).
fn render_file(hosts: &Hosts) -> String {
    #[derive(Serialize)]
    struct File<'a> {
        workers: Workers<'a>,
    }
    #[derive(Serialize)]
    struct Workers<'a> {
        hosts: &'a Hosts,
    }
    let body = toml::to_string(&File {
        workers: Workers { hosts },
    })
    .unwrap_or_default();
    format!(
        "# Managed by `analytics-stack worker add|remove`: this primary's worker hosts.\n{body}"
    )
}

impl Stack {
    fn workers_file(&self) -> PathBuf {
        self.etc_dir.join(WORKERS_FILE)
    }

    fn write_workers(&self, hosts: &Hosts) -> Result<(), StackError> {
        let path = self.workers_file();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(self.fs.path(dir))
                .map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        }
        self.fs
            .write_atomic(&path, render_file(hosts).as_bytes(), 0o644, 0, 0)
            .map_err(|e| failed(format!("{}: {e}", path.display())))
    }

    fn workers_config(&self) -> Result<WorkersConfig, StackError> {
        Ok(self.config()?.workers)
    }

    /// Lists `name` as a worker and applies; returns its token. On a failed apply
    /// the list is put back as it was and applied again.
    pub async fn worker_add(
        &self,
        name: &str,
        worker_address: &str,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<WorkerAdded, StackError> {
        let name = WorkerName::try_from(name.to_string()).map_err(StackError::Conflict)?;
        let worker_address = ListenAddress::try_from(worker_address.to_string())
            .ok()
            .filter(|a| a.get().is_some())
            .ok_or_else(|| {
                StackError::Conflict(format!(
                    "{:?} is not the worker's address (the IP address it connects from, not loopback)",
                    crate::util::printable(worker_address)
                ))
            })?;
        let config = self.config()?;
        let workers = &config.workers;
        let Some(address) = workers.address.get() else {
            return Err(StackError::Conflict(
                "this host has no [workers] address: set the address worker hosts reach it on first".into(),
            ));
        };
        if workers.hosts.contains_key(&name) {
            return Err(StackError::Conflict(format!(
                "{} is a worker already (`analytics-stack worker remove {}` first, for new credentials)",
                name.as_str(),
                name.as_str()
            )));
        }
        if let Some((other, _)) = workers
            .hosts
            .iter()
            .find(|(_, h)| h.address == worker_address)
        {
            return Err(StackError::Conflict(format!(
                "{} is worker {}'s address already",
                String::from(worker_address.clone()),
                other.as_str()
            )));
        }
        let before = workers.hosts.clone();
        let mut after = before.clone();
        let random = |what: &str| {
            crate::host::random_bytes::<16>()
                .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
                .map_err(|e| failed(format!("/dev/urandom ({what}): {e}")))
        };
        let identity =
            crate::config::WorkerIdentity::try_from(random("identity")?).map_err(failed)?;
        let enroll_secret = format!("{}{}", random("secret")?, random("secret")?);
        // The one-time secret first (replacing one a failed add left): a join can
        // only be signed for once the worker is listed, and never with an old secret.
        let enroll_path = Path::new(paths::SECRETS).join(enroll_secret_name(&name));
        self.fs
            .write_atomic(
                &enroll_path,
                format!("{enroll_secret}\n").as_bytes(),
                0o600,
                0,
                0,
            )
            .map_err(|e| failed(format!("{}: {e}", enroll_path.display())))?;
        after.insert(
            name.clone(),
            WorkerHost {
                added: crate::util::now_secs(),
                address: worker_address.clone(),
                identity: Some(identity),
            },
        );
        self.write_workers(&after)?;
        if let Err(e) = self.apply(cancel, progress, None).await {
            let _spent = std::fs::remove_file(self.fs.path(&enroll_path));
            let _put_back = self.write_workers(&before);
            let _revoked = self.apply(cancel, progress, None).await;
            return Err(e);
        }
        let secret = |n: String| {
            crate::host::gather::read_secret(&self.fs, &n)
                .ok_or_else(|| failed(format!("secret {n} is missing after apply")))
        };
        let token = JoinToken {
            primary: address.to_string(),
            https_port: config.nginx.https_port.get(),
            name: name.as_str().into(),
            address: String::from(worker_address),
            ca_sha256: crate::tls::ca_sha256(&self.fs)
                .ok_or_else(|| failed("the stack CA is missing after apply"))?,
            postgres_port: config.postgres.port.get(),
            postgres_role: name.postgres_role(),
            postgres_password: secret(crate::components::postgres::worker_password_secret(&name))?,
            broker_port: config.workers.broker_port.get(),
            broker_user: name.redis_user(),
            broker_password: secret(crate::components::redis::worker_password_secret(&name))?,
            airflow_venv: crate::components::python::AIRFLOW.locked_for(&config).0,
            enroll_secret,
            superset: match config.superset_on_workers() {
                false => None,
                true => Some(SupersetGrant {
                    secret_key: secret(crate::components::superset::SECRET_KEY.into())?,
                    cache_port: config.workers.cache_port.get(),
                    venv: crate::components::python::SUPERSET.locked_for(&config).0,
                }),
            },
        };
        Ok(WorkerAdded {
            name: name.as_str().into(),
            token: token.encode(),
        })
    }

    pub fn worker_list(&self) -> Result<Vec<WorkerEntry>, StackError> {
        Ok(self
            .workers_config()?
            .hosts
            .iter()
            .map(|(name, host)| WorkerEntry {
                name: name.as_str().into(),
                address: String::from(host.address.clone()),
                added: host.added,
                postgres_role: name.postgres_role(),
                broker_user: name.redis_user(),
            })
            .collect())
    }

    /// Takes `name` off the list and applies: its PostgreSQL role loses its login
    /// and sessions, its Redis user goes with the broker's restart; its passwords
    /// are deleted, so a worker added again under the name gets new ones.
    pub async fn worker_remove(
        &self,
        name: &str,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<(), StackError> {
        let workers = self.workers_config()?;
        let Some((name, _)) = workers.hosts.iter().find(|(n, _)| n.as_str() == name) else {
            return Err(StackError::NotFound(format!(
                "{name} is not a worker of this host"
            )));
        };
        let rest: Hosts = workers
            .hosts
            .iter()
            .filter(|(n, _)| *n != name)
            .map(|(n, h)| (n.clone(), h.clone()))
            .collect();
        self.write_workers(&rest)?;
        self.apply(cancel, progress, None).await?;
        for secret in [
            crate::components::postgres::worker_password_secret(name),
            crate::components::redis::worker_password_secret(name),
            enroll_secret_name(name),
        ] {
            let path = Path::new(paths::SECRETS).join(secret);
            match std::fs::remove_file(self.fs.path(&path)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(failed(format!("{}: {e}", path.display())))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The join file's text (serialized by toml from checked values).
fn render_join_file(token: &JoinToken) -> String {
    #[derive(Serialize)]
    struct File<'a> {
        stack: StackPart,
        worker: WorkerPart<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        superset: Option<SupersetPart>,
    }
    #[derive(Serialize)]
    struct SupersetPart {
        enabled: bool,
    }
    #[derive(Serialize)]
    struct StackPart {
        role: crate::config::Role,
    }
    #[derive(Serialize)]
    struct WorkerPart<'a> {
        name: &'a str,
        address: &'a str,
        primary: &'a str,
        primary_https_port: u16,
        primary_postgres_port: u16,
        primary_broker_port: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        primary_cache_port: Option<u16>,
    }
    let body = toml::to_string(&File {
        stack: StackPart {
            role: crate::config::Role::Worker,
        },
        worker: WorkerPart {
            name: &token.name,
            address: &token.address,
            primary: &token.primary,
            primary_https_port: token.https_port,
            primary_postgres_port: token.postgres_port,
            primary_broker_port: token.broker_port,
            primary_cache_port: token.superset.as_ref().map(|g| g.cache_port),
        },
        // The primary lets its workers run Superset's worker: this one does (a
        // later file of the user's may turn it off).
        superset: token
            .superset
            .as_ref()
            .map(|_| SupersetPart { enabled: true }),
    })
    .unwrap_or_default();
    format!(
        "# Written by `analytics-stack join`: this host is worker {} of {}.\n{body}",
        token.name, token.primary
    )
}

/// The primary's HTTPS door, `ADDRESS:PORT` (`primary` is an address the token's
/// check parsed).
fn primary_door(primary: &str, https_port: u16) -> String {
    primary
        .parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, https_port).to_string())
        .unwrap_or_default()
}

/// An answer of the primary's door, read up to the size of a certificate.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > CA_MAX_BYTES {
            return Err("the answer is larger than a certificate".into());
        }
    }
    Ok(body)
}

/// The stack CA's certificate from the primary's door, accepted only if the answer
/// is that one certificate and its DER hashes to `pin` (the door's own certificate
/// is not trusted yet: the pin is what makes this channel authentic). Returns the
/// PEM to store, re-encoded from the verified DER.
async fn fetch_pinned_ca(primary: &str, https_port: u16, pin: &str) -> Result<String, StackError> {
    let url = format!("https://{}/stack-ca.crt", primary_door(primary, https_port));
    let unreachable = |e: &dyn std::fmt::Display| {
        StackError::Failed(format!("cannot fetch the stack CA from {url}: {e}"))
    };
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(15))
        .no_proxy()
        .build()
        .map_err(|e| unreachable(&e))?;
    let response = client.get(&url).send().await.map_err(|e| unreachable(&e))?;
    if !response.status().is_success() {
        return Err(unreachable(&response.status()));
    }
    let body = read_bounded(response).await.map_err(|e| unreachable(&e))?;
    pinned_ca_pem(&body, pin).map_err(|why| {
        StackError::Integrity(format!(
            "{url} {why}: not the primary that issued the token (or someone in between); nothing was written"
        ))
    })
}

/// The answer of the CA door, checked against the token's pin: it must be exactly
/// one PEM certificate (whitespace around it at most) whose DER hashes to `pin`, and
/// what is returned is that DER encoded again, so that nothing else the answer held
/// (a second certificate after the pinned one, headers, text) can reach `ca.crt`,
/// where it would be trusted for every door between the hosts.
fn pinned_ca_pem(answer: &[u8], pin: &str) -> Result<String, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let not_one = |why: &str| format!("served {why}, not the one stack CA certificate");
    let text = std::str::from_utf8(answer).map_err(|_| not_one("bytes that are not text"))?;
    let text = text.trim();
    let blocks = text.matches("-----BEGIN ").count();
    if blocks != 1 || !text.starts_with(BEGIN) || !text.ends_with(END) {
        return Err(not_one(&format!(
            "{blocks} PEM blocks, or text around the certificate"
        )));
    }
    let block = pem::parse(text).map_err(|_| not_one("a malformed PEM block"))?;
    let got = crate::util::sha256_hex(block.contents());
    if !got.eq_ignore_ascii_case(pin) {
        return Err(format!(
            "served a CA certificate with sha256 {got}, not the token's {pin}"
        ));
    }
    x509_parser::parse_x509_certificate(block.contents())
        .map_err(|_| not_one("a certificate that does not parse"))?;
    let der = pem::Pem::new("CERTIFICATE", block.into_contents());
    Ok(pem::encode_config(
        &der,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ))
}

/// What a worker sends to the primary's enrollment door (`POST /stack-enroll`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub name: String,
    pub secret: String,
    /// A PEM certificate signing request for the worker's own key.
    pub request: String,
}

/// The path of the enrollment door on the primary's HTTPS port.
pub const ENROLL_PATH: &str = "/stack-enroll";

/// Makes this worker's key and has the primary sign it: over TLS to the pinned CA
/// alone (a host in the primary's place has no certificate of it, and never sees
/// the secret), with the token's one-time secret. Returns the key and certificate
/// as PEM; nothing is written here.
async fn enroll_at_primary(token: &JoinToken, ca: &str) -> Result<(String, String), StackError> {
    let name = WorkerName::try_from(token.name.clone()).map_err(StackError::Conflict)?;
    let (key, request) =
        crate::tls::client::new_request(&name).map_err(|e| failed(e.to_string()))?;
    let url = format!(
        "https://{}{ENROLL_PATH}",
        primary_door(&token.primary, token.https_port)
    );
    let unreachable = |e: &dyn std::fmt::Display| {
        failed(format!("cannot enroll at {url}: {e}; nothing was written"))
    };
    let pinned = reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| unreachable(&e))?;
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(pinned)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .no_proxy()
        .build()
        .map_err(|e| unreachable(&e))?;
    let body = EnrollRequest {
        name: name.as_str().into(),
        secret: token.enroll_secret.clone(),
        request,
    };
    let response = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .send()
        .await
        .map_err(|e| unreachable(&e))?;
    let status = response.status();
    let answer = read_bounded(response).await.map_err(|e| unreachable(&e))?;
    let answer = String::from_utf8_lossy(&answer);
    if !status.is_success() {
        return Err(StackError::Conflict(format!(
            "the primary refused to sign this worker's certificate ({status}: {}); a token signs once: `analytics-stack worker remove {n}` and `worker add {n}` on the primary for a new one; nothing was written",
            crate::util::printable(answer.trim()),
            n = name.as_str()
        )));
    }
    let cert = crate::tls::client::check_issued(&answer, &key, ca).map_err(|why| {
        StackError::Integrity(format!(
            "{url} answered {why}: not the primary that issued the token (or someone in between); nothing was written"
        ))
    })?;
    Ok((key.serialize_pem(), cert))
}

/// Why the primary refuses an enrollment. What the requester is told is only that it
/// was refused (no answer tells a guess apart from a used secret or a wrong address);
/// the journal says which.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrollRefusal {
    #[error("{0:?} is not a worker of this host")]
    UnknownWorker(String),
    #[error("worker {0} was added before worker certificates: remove it and add it again")]
    NoIdentity(String),
    #[error("worker {name} enrolls from {expected}, not {peer}")]
    WrongAddress {
        name: String,
        expected: String,
        peer: String,
    },
    #[error(
        "worker {0} has no enrollment pending (its token signed once already, or it was removed)"
    )]
    NotPending(String),
    #[error("worker {0}: not its token's secret")]
    WrongSecret(String),
    #[error("worker {name}: {why}")]
    BadRequest { name: String, why: String },
}

impl Stack {
    /// Signs a joining worker's certificate request ([`enroll`]).
    pub fn enroll(
        &self,
        request: &EnrollRequest,
        peer: std::net::IpAddr,
    ) -> Result<String, EnrollRefusal> {
        let config = self
            .config()
            .map_err(|_| EnrollRefusal::UnknownWorker(crate::util::printable(&request.name)))?;
        enroll(&self.fs, &config, request, peer)
    }
}

/// Signs worker `request.name`'s certificate request, once: the worker must be
/// listed, enrolling from its address, with the secret of its token, which is
/// deleted as the certificate is returned.
pub fn enroll(
    fs: &crate::host::fsroot::FsRoot,
    config: &crate::config::Config,
    request: &EnrollRequest,
    peer: std::net::IpAddr,
) -> Result<String, EnrollRefusal> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let printable = crate::util::printable(&request.name);
    let unknown = || EnrollRefusal::UnknownWorker(printable.clone());
    let name = WorkerName::try_from(request.name.clone()).map_err(|_| unknown())?;
    let host = config.workers.hosts.get(&name).ok_or_else(unknown)?;
    let n = name.as_str().to_string();
    let identity = host
        .identity
        .clone()
        .ok_or_else(|| EnrollRefusal::NoIdentity(n.clone()))?;
    let expected = host.address.get().ok_or_else(unknown)?;
    if expected != peer {
        return Err(EnrollRefusal::WrongAddress {
            name: n,
            expected: expected.to_string(),
            peer: peer.to_string(),
        });
    }
    let secret_path = Path::new(paths::SECRETS).join(enroll_secret_name(&name));
    let pending = crate::host::gather::read_secret(fs, &enroll_secret_name(&name))
        .ok_or_else(|| EnrollRefusal::NotPending(n.clone()))?;
    // Compared as digests: the time taken says nothing of how much matched.
    if crate::util::sha256_hex(pending.as_bytes())
        != crate::util::sha256_hex(request.secret.as_bytes())
    {
        return Err(EnrollRefusal::WrongSecret(n));
    }
    let cert =
        crate::tls::client::sign_worker_request(fs, &request.request, &name, &identity, expected)
            .map_err(|e| EnrollRefusal::BadRequest {
            name: n.clone(),
            why: e.to_string(),
        })?;
    std::fs::remove_file(fs.path(&secret_path)).map_err(|e| EnrollRefusal::BadRequest {
        name: n,
        why: format!("{}: {e}", secret_path.display()),
    })?;
    Ok(cert)
}

impl Stack {
    /// Makes this host a worker of `primary` (see the D-Bus method `Join`).
    pub async fn join(&self, primary: &str, token: &str) -> Result<Joined, StackError> {
        let token = JoinToken::decode(token).map_err(StackError::Conflict)?;
        if primary.trim() != token.primary {
            return Err(StackError::Conflict(format!(
                "the token is for primary {}, not {:?}",
                token.primary,
                crate::util::printable(primary)
            )));
        }
        // Tasks (and queries) are run by the primary's Airflow (and Superset) on one
        // side and this host's on the other: the same version and lock, or a worker
        // would run them differently.
        let config = self.config()?;
        use crate::components::python::{AIRFLOW, SUPERSET};
        let venvs = [
            (&AIRFLOW, "Airflow", Some(&token.airflow_venv)),
            (
                &SUPERSET,
                "Superset",
                token.superset.as_ref().map(|g| &g.venv),
            ),
        ];
        for (app, title, primary_venv) in venvs {
            let Some(primary_venv) = primary_venv else {
                continue;
            };
            let own = app.locked_for(&config).0;
            if &own != primary_venv {
                return Err(StackError::Conflict(format!(
                    "the primary runs {title} {primary_venv}, this host would install {own}: give both the same analytics-stack version and [python] lock_dir"
                )));
            }
        }
        let state = crate::exec::load_state(&self.fs);
        if let Some(other) = state
            .components
            .iter()
            .find(|c| !WORKER_COMPONENTS.contains(&c.as_str()))
        {
            return Err(StackError::Conflict(format!(
                "this host runs {other}: a primary (or a stack of its own) does not become a worker; `analytics-stack uninstall` first"
            )));
        }
        let ca = fetch_pinned_ca(&token.primary, token.https_port, &token.ca_sha256).await?;
        let (client_key, client_cert) = enroll_at_primary(&token, &ca).await?;
        let write = |path: &Path, text: &str, mode: u32| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(self.fs.path(dir))
                    .map_err(|e| failed(format!("{}: {e}", dir.display())))?;
            }
            self.fs
                .write_atomic(path, text.as_bytes(), mode, 0, 0)
                .map_err(|e| failed(format!("{}: {e}", path.display())))
        };
        // The logins and the CA first; the join file last: until it exists this host
        // is not a worker, and a failure leaves nothing that changes what apply does.
        let secrets = [
            (PRIMARY_POSTGRES_SECRET, Some(&token.postgres_password)),
            (PRIMARY_BROKER_SECRET, Some(&token.broker_password)),
            (
                crate::components::superset::SECRET_KEY,
                token.superset.as_ref().map(|g| &g.secret_key),
            ),
        ];
        for (name, value) in secrets {
            if let Some(value) = value {
                write(
                    &Path::new(paths::SECRETS).join(name),
                    &format!("{value}\n"),
                    0o600,
                )?;
            }
        }
        write(Path::new(crate::tls::CA_CERT), &ca, 0o644)?;
        write(
            Path::new(crate::tls::client::CLIENT_KEY),
            &client_key,
            0o600,
        )?;
        write(
            Path::new(crate::tls::client::CLIENT_CERT),
            &client_cert,
            0o644,
        )?;
        write(
            &self.etc_dir.join(JOIN_FILE),
            &render_join_file(&token),
            0o644,
        )?;
        Ok(Joined {
            name: token.name,
            primary: token.primary,
            ca_fingerprint: crate::tls::ca_fingerprint(&self.fs).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token as `worker add` makes one.
    fn token() -> JoinToken {
        JoinToken {
            primary: "10.0.0.1".into(),
            https_port: 443,
            name: "w1".into(),
            address: "10.0.0.2".into(),
            ca_sha256: "ab".repeat(32),
            postgres_port: 5432,
            postgres_role: "worker_w1".into(),
            postgres_password: "p".into(),
            broker_port: 6390,
            broker_user: "worker-w1".into(),
            broker_password: "r".into(),
            airflow_venv: "3.3.2-0123456789ab".into(),
            enroll_secret: "e".repeat(64),
            superset: None,
        }
    }

    #[test]
    fn the_workers_file_loads_as_the_configuration_it_lists() {
        let host = |added, ip: &str| WorkerHost {
            added,
            address: ListenAddress::try_from(ip.to_string()).unwrap(),
            identity: crate::config::WorkerIdentity::try_from(format!("{added:032x}")).ok(),
        };
        let mut hosts = Hosts::new();
        hosts.insert(
            WorkerName::try_from("w-1".to_string()).unwrap(),
            host(1_796_000_000, "10.0.0.2"),
        );
        hosts.insert(
            WorkerName::try_from("b2".to_string()).unwrap(),
            host(1_796_000_001, "fd00::3"),
        );
        let text = render_file(&hosts);
        let config = crate::config::load_texts(&[
            ("stack.toml", "[workers]\naddress = \"10.0.0.1\"\n"),
            ("90-workers.toml", &text),
        ])
        .unwrap();
        let names: Vec<&str> = config.workers.hosts.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["b2", "w-1"]);
        assert_eq!(config.workers.hosts, hosts);
        let first = config.workers.hosts.keys().nth(1).unwrap();
        assert_eq!(first.postgres_role(), "worker_w_1");
        assert_eq!(first.redis_user(), "worker-w-1");
        for bad in ["", "W1", "1w", "w_1", "w;drop", &"w".repeat(32)] {
            assert!(WorkerName::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_join_file_loads_as_a_worker_configuration() {
        let token = JoinToken {
            https_port: 8443,
            postgres_port: 5433,
            ..token()
        };
        let text = render_join_file(&token);
        assert!(
            !text.contains("p\"") && !text.contains("ab".repeat(32).as_str()),
            "no secrets, no pin: {text}"
        );
        let config = crate::config::load_texts(&[("10-join.toml", &text)]).unwrap();
        assert_eq!(config.stack.role, crate::config::Role::Worker);
        assert_eq!(config.worker.name.as_ref().unwrap().as_str(), "w1");
        assert_eq!(config.worker.primary_https_port.get(), 8443);
        assert_eq!(config.worker.primary_postgres_port.get(), 5433);
        assert!(!config.postgres.enabled && !config.nginx.enabled && !config.grafana.enabled);
        assert!(!config.superset.enabled);
        // A primary that grants Superset: its worker runs here, on the cache's door;
        // the key is a secret, never in the file.
        let token = JoinToken {
            superset: Some(SupersetGrant {
                secret_key: "k".repeat(64),
                cache_port: 6392,
                venv: "6.1.0-0123456789ab".into(),
            }),
            ..token
        };
        let text = render_join_file(&token);
        assert!(!text.contains(&"k".repeat(64)), "{text}");
        let config = crate::config::load_texts(&[("10-join.toml", &text)]).unwrap();
        assert!(config.superset.enabled && !config.postgres.enabled);
        assert_eq!(config.worker.primary_cache_port.get(), 6392);
    }

    /// A self-signed CA certificate as PEM, and the sha256 of its DER.
    fn ca(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), crate::util::sha256_hex(cert.der()))
    }

    #[test]
    fn only_the_one_pinned_certificate_is_taken_from_the_ca_door() {
        let (real, pin) = ca("analytics-stack CA");
        let (other, other_pin) = ca("someone else's CA");
        // What the primary serves: taken, and stored as that certificate alone.
        let stored = pinned_ca_pem(real.as_bytes(), &pin).unwrap();
        let der = pem::parse(&stored).unwrap();
        assert_eq!(crate::util::sha256_hex(der.contents()), pin);
        assert_eq!(stored.matches("BEGIN").count(), 1);
        let crlf = real.replace('\n', "\r\n");
        assert_eq!(pinned_ca_pem(crlf.as_bytes(), &pin).unwrap(), stored);
        // A host in the primary's place serving the real (public) CA followed by its
        // own, or its own first, or anything around it: refused, naming the cause.
        for (answer, why) in [
            (format!("{real}{other}"), "PEM blocks"),
            (format!("{other}{real}"), "PEM blocks"),
            (
                format!("{real}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
                "PEM blocks",
            ),
            (format!("# the CA\n{real}"), "text around"),
            (format!("{real}trailing"), "text around"),
            (other.clone(), other_pin.as_str()),
            (String::new(), "PEM blocks"),
            ("garbage".into(), "PEM blocks"),
        ] {
            let err = pinned_ca_pem(answer.as_bytes(), &pin).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
        assert!(pinned_ca_pem(&[0xff, 0xfe, 0x00], &pin).is_err());
    }

    /// The primary signs a worker's request once, for the listed worker, from its
    /// address, with its token's secret; each other case is refused, typed, and
    /// leaves the pending secret as it was (a guess does not spend it).
    #[test]
    fn an_enrollment_is_signed_once_for_the_listed_worker_from_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::host::fsroot::FsRoot::new(dir.path());
        crate::tls::install(
            &fs,
            &crate::tls::TlsSpec::SelfSigned {
                names: vec!["primary".into()],
                addresses: vec!["10.0.0.1".parse().unwrap()],
            },
        )
        .unwrap();
        let config = crate::config::load_texts(&[(
            "stack.toml",
            "[workers]\naddress = \"10.0.0.1\"\n[workers.hosts.w1]\nadded = 1\naddress = \"10.0.0.2\"\nidentity = \"0123456789abcdef0123456789abcdef\"\n[workers.hosts.old]\nadded = 1\naddress = \"10.0.0.3\"\n",
        )])
        .unwrap();
        let w1 = WorkerName::try_from("w1".to_string()).unwrap();
        let secret = "s".repeat(64);
        let secret_file = Path::new(paths::SECRETS).join(enroll_secret_name(&w1));
        std::fs::create_dir_all(fs.path(Path::new(paths::SECRETS))).unwrap();
        std::fs::write(fs.path(&secret_file), format!("{secret}\n")).unwrap();
        let (key, csr) = crate::tls::client::new_request(&w1).unwrap();
        let asking = |name: &str, secret: &str, request: &str| EnrollRequest {
            name: name.into(),
            secret: secret.into(),
            request: request.into(),
        };
        let from = |ip: &str| ip.parse::<std::net::IpAddr>().unwrap();
        for (request, peer, refusal) in [
            (asking("w9", &secret, &csr), "10.0.0.2", "not a worker"),
            (asking("../w1", &secret, &csr), "10.0.0.2", "not a worker"),
            (asking("old", &secret, &csr), "10.0.0.3", "before worker certificates"),
            (asking("w1", &secret, &csr), "10.0.0.9", "enrolls from 10.0.0.2, not 10.0.0.9"),
            (asking("w1", &"t".repeat(64), &csr), "10.0.0.2", "not its token's secret"),
            (asking("w1", "", &csr), "10.0.0.2", "not its token's secret"),
            (asking("w1", &secret, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), "10.0.0.2", "not a signed certificate request"),
        ] {
            let err = enroll(&fs, &config, &request, from(peer)).unwrap_err();
            assert!(err.to_string().contains(refusal), "{refusal}: {err}");
            assert!(fs.exists(&secret_file), "{refusal}: the secret is still pending");
        }
        let cert = enroll(&fs, &config, &asking("w1", &secret, &csr), from("10.0.0.2")).unwrap();
        let ca = String::from_utf8(std::fs::read(fs.path(Path::new(crate::tls::CA_CERT))).unwrap())
            .unwrap();
        crate::tls::client::check_issued(&cert, &key, &ca).unwrap();
        // Once: the secret is spent.
        assert!(!fs.exists(&secret_file));
        let err = enroll(&fs, &config, &asking("w1", &secret, &csr), from("10.0.0.2")).unwrap_err();
        assert_eq!(err, EnrollRefusal::NotPending("w1".into()));
    }

    #[test]
    fn a_token_is_json_behind_its_version() {
        let token = token();
        let encoded = token.encode();
        assert!(encoded.starts_with(TOKEN_PREFIX));
        assert!(!encoded.contains(['+', '/', ' ', '\n']));
        assert_eq!(JoinToken::decode(&encoded).unwrap(), token);
        // Every field is checked before anything uses it.
        let forged = |f: &dyn Fn(&mut JoinToken)| {
            let mut t = token.clone();
            f(&mut t);
            JoinToken::decode(&t.encode())
        };
        for (why, change) in [
            (
                "primary",
                &(|t: &mut JoinToken| t.primary = "127.0.0.1".into()) as &dyn Fn(&mut JoinToken),
            ),
            ("address", &|t| t.address = "evil.example".into()),
            ("ca_sha256", &|t| t.ca_sha256 = "zz".into()),
            ("postgres_role", &|t| t.postgres_role = "postgres".into()),
            ("broker_user", &|t| t.broker_user = "default".into()),
            ("postgres_password", &|t| {
                t.postgres_password = "a@b/c".into()
            }),
            ("broker_password", &|t| t.broker_password = "x\ny".into()),
            ("enroll_secret", &|t| t.enroll_secret = "s".repeat(16)),
            ("enroll_secret", &|t| {
                t.enroll_secret = format!("{}/", "s".repeat(64))
            }),
            ("name", &|t| t.name = "W;drop".into()),
            ("airflow_venv", &|t| t.airflow_venv = "3.3.2\n[x]".into()),
            ("superset.secret_key", &|t| {
                t.superset = Some(SupersetGrant {
                    secret_key: "short".into(),
                    cache_port: 6391,
                    venv: "6.1.0-0123456789ab".into(),
                })
            }),
            ("superset.venv", &|t| {
                t.superset = Some(SupersetGrant {
                    secret_key: "k".repeat(64),
                    cache_port: 6391,
                    venv: "6.1.0\n[superset]".into(),
                })
            }),
            ("superset.cache_port", &|t| {
                t.superset = Some(SupersetGrant {
                    secret_key: "k".repeat(64),
                    cache_port: 0,
                    venv: "6.1.0-0123456789ab".into(),
                })
            }),
        ] {
            let e = forged(change).unwrap_err();
            assert!(e.contains("not a join token"), "{why}: {e}");
        }
        // A token with Superset's grant reads back whole; one without it (as before
        // the grant existed) still reads.
        let granted = JoinToken {
            superset: Some(SupersetGrant {
                secret_key: "0123abcd".repeat(8),
                cache_port: 6391,
                venv: "6.1.0-0123456789ab".into(),
            }),
            ..token.clone()
        };
        assert_eq!(JoinToken::decode(&granted.encode()).unwrap(), granted);
        assert!(
            !token.encode().is_empty()
                && !serde_json::to_string(&token).unwrap().contains("superset")
        );
        assert!(JoinToken::decode("asw2.e30").is_err());
        assert!(JoinToken::decode("asw1.!!!").is_err());
        assert!(JoinToken::decode(&format!("asw1.{}", "A".repeat(5000))).is_err());
    }
}
