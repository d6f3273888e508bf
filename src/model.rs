//! The desired state of the host, as data: what each component needs installed,
//! created, written and running. Components produce these; the planner diffs them
//! against host facts.

use serde::Serialize;
use std::path::PathBuf;

/// Where the stack keeps things. Fixed so that users, docs and units agree.
pub mod paths {
    pub const ETC: &str = "/etc/analytics-stack";
    pub const STATE: &str = "/var/lib/analytics-stack";
    pub const SECRETS: &str = "/var/lib/analytics-stack/secrets";
    pub const STATE_FILE: &str = "/var/lib/analytics-stack/state.json";
    pub const WWW: &str = "/var/lib/analytics-stack/www";
    pub const UNIT_DIR: &str = "/etc/systemd/system";
    pub const TARGET: &str = "analytics-stack.target";
    /// Release archives unpack to OPT/COMPONENT/VERSION, with OPT/COMPONENT/current.
    pub const OPT: &str = "/opt/analytics-stack";
    pub const DOWNLOADS: &str = "/var/cache/analytics-stack/downloads";
}

/// Fields a component does not use stay at their defaults (`..Default::default()`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ComponentSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// Debian packages to install.
    pub packages: Vec<String>,
    /// A release archive to download, verify and unpack instead of (or beside) packages.
    pub archive: Option<crate::artifact::catalog::ArchivePin>,
    /// A Python venv built from a lock file (the application's software).
    pub venv: Option<VenvSpec>,
    /// The package whose version is the component's version.
    pub version_package: String,
    /// The distribution's own units for this software, kept stopped and masked while
    /// the stack owns the component.
    pub distro_units: Vec<String>,
    /// Files that must exist before the packages are installed (e.g. to stop a
    /// package from creating its default instance).
    pub pre_install_files: Vec<FileSpec>,
    pub users: Vec<UserSpec>,
    pub dirs: Vec<DirSpec>,
    pub secrets: Vec<String>,
    pub files: Vec<FileSpec>,
    pub units: Vec<UnitSpec>,
    /// One-off, idempotent initialisation that runs before units start.
    pub init: Vec<Provision>,
    /// Idempotent provisioning that runs once units are up.
    pub provision: Vec<Provision>,
    pub ports: Vec<PortSpec>,
    pub probes: Vec<Probe>,
    /// The certificate the component serves (NGINX only).
    pub tls: Option<crate::tls::TlsSpec>,
}

impl ComponentSpec {
    /// Every file it writes: those that shape how packages install, then the rest.
    pub fn all_files(&self) -> impl Iterator<Item = &FileSpec> {
        self.pre_install_files.iter().chain(&self.files)
    }

    /// Every release archive the component needs: its own, and uv (and the managed
    /// CPython, if used) for its venv.
    pub fn archive_pins(&self) -> impl Iterator<Item = &crate::artifact::catalog::ArchivePin> {
        self.archive
            .iter()
            .chain(self.venv.iter().flat_map(VenvSpec::tool_pins))
    }
}

/// A venv under `OPT/NAME/ID` (`OPT/NAME/current` links the one in use), built by uv
/// from a lock file whose every package is pinned with its hashes. Venvs hold absolute
/// paths, so each is built where it stays; `ID` changes with the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VenvSpec {
    pub name: String,
    /// The application's version and the lock file's hash: `3.3.2-1a2b3c4d5e6f`.
    pub id: String,
    #[serde(skip)]
    pub lock: std::sync::Arc<str>,
    pub interpreter: PathBuf,
    /// The package index; "" = PyPI.
    pub index_url: String,
    /// uv, itself a verified artifact (its PyPI wheel).
    pub uv: crate::artifact::catalog::ArchivePin,
    /// The stack's own CPython, when the venv is built on it (`interpreter` is then
    /// inside it): a verified release archive like the others.
    pub python: Option<crate::artifact::catalog::ArchivePin>,
    /// Why the venv gets `interpreter` (shown by `plan`).
    pub python_why: String,
    /// The Debian packages the build needs (Debian's interpreter, or the libraries
    /// an operator's own CPython links to): apt installs them first.
    #[serde(skip)]
    pub build_packages: Vec<String>,
}

impl VenvSpec {
    pub fn root(&self) -> PathBuf {
        PathBuf::from(paths::OPT).join(&self.name)
    }
    pub fn dir(&self) -> PathBuf {
        self.root().join(&self.id)
    }
    /// Written last: a venv without it is a broken build and is rebuilt.
    pub fn complete_marker(&self) -> PathBuf {
        self.dir().join(VENV_COMPLETE)
    }
    /// The archives building it needs: uv, and the managed CPython when it is built
    /// on that.
    pub fn tool_pins(&self) -> impl Iterator<Item = &crate::artifact::catalog::ArchivePin> {
        std::iter::once(&self.uv).chain(&self.python)
    }
    pub fn uv_binary(&self) -> PathBuf {
        PathBuf::from(paths::OPT)
            .join(&self.uv.component)
            .join(&self.uv.version)
            .join(&self.uv.binary)
    }
}

pub const VENV_COMPLETE: &str = ".analytics-stack-complete";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserSpec {
    pub name: String,
    pub home: PathBuf,
    pub groups: Vec<String>,
}

impl UserSpec {
    /// A system user for one service, in no other group.
    pub fn service(name: &str, home: impl Into<PathBuf>) -> Self {
        UserSpec {
            name: name.into(),
            home: home.into(),
            groups: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirSpec {
    pub path: PathBuf,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

impl DirSpec {
    /// Configuration a service reads but may not change: root's, readable by its group.
    pub fn config(path: impl Into<PathBuf>, service_user: &str) -> Self {
        DirSpec {
            path: path.into(),
            mode: 0o750,
            owner: "root".into(),
            group: service_user.into(),
        }
    }
    /// A service's own data, for its user alone.
    pub fn private(path: impl Into<PathBuf>, user: &str) -> Self {
        DirSpec {
            path: path.into(),
            mode: 0o700,
            owner: user.into(),
            group: user.into(),
        }
    }
    /// Root's, readable by everyone.
    pub fn public(path: impl Into<PathBuf>) -> Self {
        DirSpec {
            path: path.into(),
            mode: 0o755,
            owner: "root".into(),
            group: "root".into(),
        }
    }
}

/// What happens to a running unit when one of its files changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnChange {
    Restart,
    Reload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    pub path: PathBuf,
    /// Contents; `@@secret:NAME@@` is replaced by the secret NAME when written, so that
    /// rendered text never carries a secret and plans can be shown safely.
    #[serde(skip)]
    pub template: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// Units to restart or reload when this file changes.
    pub notify: Vec<(String, OnChange)>,
}

impl FileSpec {
    pub fn new(path: impl Into<PathBuf>, template: impl Into<String>) -> Self {
        FileSpec {
            path: path.into(),
            template: template.into(),
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            notify: Vec::new(),
        }
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    pub fn group(mut self, group: &str) -> Self {
        self.group = group.into();
        self
    }
    pub fn notify(mut self, unit: &str, on_change: OnChange) -> Self {
        self.notify.push((unit.into(), on_change));
        self
    }
    /// Secrets named in the template.
    pub fn secret_names(&self) -> Vec<String> {
        secret_names(&self.template)
    }
}

pub const SECRET_OPEN: &str = "@@secret:";
pub const SECRET_CLOSE: &str = "@@";

pub fn secret_ref(name: &str) -> String {
    format!("{SECRET_OPEN}{name}{SECRET_CLOSE}")
}

pub fn secret_names(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find(SECRET_OPEN) {
        let after = &rest[start + SECRET_OPEN.len()..];
        let Some(end) = after.find(SECRET_CLOSE) else {
            break;
        };
        names.push(after[..end].to_string());
        rest = &after[end + SECRET_CLOSE.len()..];
    }
    names
}

/// Replaces every secret reference; `None` when a named secret is missing.
pub fn fill_secrets(template: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find(SECRET_OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + SECRET_OPEN.len()..];
        let end = after.find(SECRET_CLOSE)?;
        out.push_str(&lookup(&after[..end])?);
        rest = &after[end + SECRET_CLOSE.len()..];
    }
    out.push_str(rest);
    Some(out)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitSpec {
    pub name: String,
    #[serde(skip)]
    pub content: String,
    /// Started by something else (a timer), never by apply: written, but not
    /// enabled, started or restarted; healthy unless it failed.
    pub triggered: bool,
}

impl UnitSpec {
    pub fn path(&self) -> PathBuf {
        PathBuf::from(paths::UNIT_DIR).join(&self.name)
    }
}

/// Idempotent work the daemon does itself, skipped when its fingerprint is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Provision {
    /// `initdb` a PostgreSQL data directory unless it holds a cluster already.
    PostgresInitdb {
        bin_dir: PathBuf,
        data_dir: PathBuf,
        user: String,
    },
    /// Roles with their passwords, and databases owned by them. Members of the
    /// workers' group role that `roles` no longer lists lose their login, their
    /// sessions, and (when they own nothing) the role itself.
    PostgresRoles {
        socket_dir: PathBuf,
        port: u16,
        roles: Vec<PostgresRole>,
        /// The workers' group role (no login) and the databases it may connect to;
        /// None when this host has no workers.
        worker_group: Option<WorkerGroup>,
    },
    /// pgBackRest's stanza in `repository` (created when missing), archiving shown
    /// to work, and a first full base backup when the repository has none: from
    /// then on `restore --to` can reach any second.
    PgBackRestStanza {
        stanza: String,
        repository: PathBuf,
        data_dir: PathBuf,
        user: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerGroup {
    pub role: String,
    pub databases: Vec<String>,
    /// Roles the group is a member of, to act as with `SET ROLE` (the warehouse:
    /// what a worker's pipelines load is the warehouse role's, as on the primary).
    pub acts_as: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostgresRole {
    pub role: String,
    pub password_secret: String,
    /// The database it owns (created if missing), if any.
    pub database: Option<String>,
    /// Predefined roles it is granted (e.g. `pg_monitor`).
    pub member_of: Vec<String>,
}

impl Provision {
    /// A stable id for the state file.
    pub fn id(&self) -> String {
        match self {
            Provision::PostgresInitdb { data_dir, .. } => format!("initdb:{}", data_dir.display()),
            Provision::PostgresRoles { port, .. } => format!("postgres-roles:{port}"),
            Provision::PgBackRestStanza { stanza, .. } => format!("pgbackrest-stanza:{stanza}"),
        }
    }
    /// Hash of what this provisioning would do; rerun when it changes.
    pub fn fingerprint(&self) -> String {
        crate::util::sha256_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    pub address: std::net::IpAddr,
    pub port: u16,
    pub unit: String,
}

impl PortSpec {
    pub fn loopback(port: u16, unit: &str) -> Self {
        PortSpec {
            address: [127, 0, 0, 1].into(),
            port,
            unit: unit.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Probe {
    /// GET `path` over HTTP; healthy on a 2xx or 3xx answer.
    Http { port: u16, path: String },
    /// GET `path` over HTTPS from a listener on another of this host's addresses (a
    /// worker host's node_exporter, on the address the primary scrapes), its
    /// certificate checked against the stack CA, this host's client certificate
    /// presented (the listener requires one); healthy on a 2xx or 3xx answer.
    HttpsAt {
        address: std::net::IpAddr,
        port: u16,
        path: String,
    },
    /// GET `path` over HTTP on a Unix socket (Loki behind its door); healthy on a
    /// 2xx or 3xx answer.
    HttpUnix { socket: String, path: String },
    /// AUTH (when a secret is named) and PING; healthy on +PONG.
    Redis {
        port: u16,
        password_secret: Option<String>,
        /// The user the server runs as: the password goes only to a socket it owns.
        owner: String,
    },
    /// The PostgreSQL wire protocol: a startup message answered by the server.
    Postgres { port: u16 },
    /// Airflow's health endpoint (JSON, one object per process kind): healthy when it
    /// answers 200 and each of `components` says `"status": "healthy"` (a heartbeat
    /// recent enough).
    AirflowHealth {
        port: u16,
        path: String,
        components: Vec<String>,
    },
}
