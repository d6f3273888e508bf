//! Facts about the host that the planner needs, gathered before planning. The
//! gathering is I/O (see `crate::host::gather`); these types are plain data so the
//! planner stays pure and unit tests can build facts by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub codename: String,
    /// Installed package → version (only the packages asked about).
    pub packages: BTreeMap<String, String>,
    pub users: BTreeSet<String>,
    pub dirs: BTreeMap<PathBuf, Ownership>,
    /// Existing files: their contents' hash and ownership.
    pub files: BTreeMap<PathBuf, FileFact>,
    /// Existing secrets, by name. Never printed or serialized.
    pub secrets: BTreeMap<String, String>,
    pub units: BTreeMap<String, UnitFact>,
    /// Paths whose existence some step depends on (e.g. `PG_VERSION`).
    pub existing: BTreeSet<PathBuf>,
    /// Unpacked release archives: (component, version) directories present.
    pub archives: BTreeSet<(String, String)>,
    /// Where each component's `current` link points.
    pub current_archives: BTreeMap<String, String>,
    /// Venvs whose `current` build is complete: name → id.
    pub venvs: BTreeMap<String, String>,
    /// The Python 3 minor version of `[python] interpreter`, when it exists.
    pub python_minor: Option<u32>,
    /// Listening TCP sockets.
    pub listeners: Vec<Listener>,
    /// The installed certificate, when a component serves one.
    pub tls: Option<crate::tls::TlsFact>,
    /// The stack's PostgreSQL clusters: major version (from `PG_VERSION`) → data
    /// directory. More than one only between a major upgrade and its cleanup.
    pub postgres_clusters: BTreeMap<u32, PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFact {
    pub sha256: String,
    pub ownership: Ownership,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnitFact {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub unit_file_state: String,
    pub main_pid: u32,
}

impl UnitFact {
    pub fn is_active(&self) -> bool {
        matches!(
            self.active_state.as_str(),
            "active" | "activating" | "reloading"
        )
    }
    pub fn is_enabled(&self) -> bool {
        matches!(
            self.unit_file_state.as_str(),
            "enabled" | "enabled-runtime" | "linked"
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: std::net::IpAddr,
    pub port: u16,
    pub pid: Option<u32>,
    pub process: Option<String>,
    /// The systemd unit the process belongs to, from its cgroup.
    pub unit: Option<String>,
}
