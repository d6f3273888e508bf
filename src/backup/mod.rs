//! Backups: one uncompressed tar file that holds everything the stack cannot
//! reproduce, written as a stream (memory does not grow with the data) and verified
//! whole before a restore changes anything.
//!
//! Layout, in this order:
//!
//! - `analytics-stack-backup.json` — the [`Header`]: format and version, when and
//!   where it was made, the package and PostgreSQL versions, what it holds. First,
//!   so that a foreign file is refused before anything else is read.
//! - `postgres/roles.sql` — `pg_dumpall --roles-only` (roles an operator added, with
//!   their password hashes); `postgres/DB.dump` — `pg_dump -Fc` of every database.
//! - `files/PATH` — the files below [`SOURCES`]: the configuration, the secrets, the
//!   stack CA, users' DAGs and pipelines, Grafana's database, the recorded state, and
//!   with telemetry Prometheus's and Loki's data.
//! - `MANIFEST.json` — last: size, sha256, mode and owner of every entry before it,
//!   and the header's sha256.
//!
//! Each database is a consistent snapshot of itself (`pg_dump` runs in one
//! transaction); databases are dumped one after another, as `gitlab-backup` does.
//! Compression: `pg_dump`'s custom format compresses each dump; the rest is small
//! or (Prometheus's blocks) already compressed.

pub mod archive;
pub mod pitr;
pub mod run;

use crate::model::paths;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

pub const FORMAT: &str = "analytics-stack-backup";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_ENTRY: &str = "analytics-stack-backup.json";
pub const MANIFEST_ENTRY: &str = "MANIFEST.json";
pub const ROLES_ENTRY: &str = "postgres/roles.sql";
/// Where a restore unpacks and verifies a backup before using it (root's, 0700).
pub const STAGING: &str = "/var/lib/analytics-stack/restore-staging";
/// Where a backup's database dumps wait, one at a time, to be added to the file.
pub const SPOOL: &str = "/var/lib/analytics-stack/backup-spool";
/// Backups named so are the ones retention counts.
pub const FILE_PREFIX: &str = "analytics-stack-backup-";
pub const FILE_SUFFIX: &str = ".tar";

/// What a backup says about itself; the first entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// Seconds since the epoch.
    pub created: u64,
    pub hostname: String,
    /// The analytics-stack package that made it.
    pub package_version: String,
    /// The PostgreSQL major its dumps come from (None: no PostgreSQL in the stack).
    pub postgres_major: Option<u32>,
    pub databases: Vec<String>,
    pub with_telemetry: bool,
    /// Each enabled component's version when the backup was made.
    pub components: BTreeMap<String, String>,
}

/// One entry of the file, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Permission bits, owner and group (by name: uids differ between hosts).
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

/// The last entry: every entry before it, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub header_sha256: String,
    pub entries: Vec<Entry>,
}

/// Why a backup file cannot be used. Each names the file and, where there is one,
/// the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not an analytics-stack backup at all (or one of a format this package does not
    /// read).
    #[error("{0}")]
    Foreign(String),
    /// An analytics-stack backup whose contents do not match its manifest, or that
    /// ends early, or names a path a restore may not write.
    #[error("{0}")]
    Damaged(String),
    /// A backup this host cannot take: made by a newer package, or from a newer
    /// PostgreSQL.
    #[error("{0}")]
    Incompatible(String),
    #[error("{0}")]
    Failed(String),
}

/// What a directory or file of the host is to a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The configuration, secrets, CA: written back before the restore's apply.
    Config,
    /// Data of a running service: written back after it, with the service stopped.
    Data,
    /// The recorded state: carried for reference, never written back (the target
    /// host's own state describes what is installed there).
    Reference,
}

/// A path a backup takes (a file, or a tree when it ends in `/`), and the unit to
/// stop while it is copied, for data a running service changes.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub path: &'static str,
    pub kind: SourceKind,
    pub telemetry: bool,
    pub stop_unit: Option<&'static str>,
}

const fn source(path: &'static str, kind: SourceKind) -> Source {
    Source {
        path,
        kind,
        telemetry: false,
        stop_unit: None,
    }
}

/// Everything besides the databases that a backup holds, and the only paths a
/// restore writes.
pub const SOURCES: &[Source] = &[
    source("/etc/analytics-stack/stack.toml", SourceKind::Config),
    source("/etc/analytics-stack/stack.d/", SourceKind::Config),
    // The operator's own lock files, where `[python] lock_dir` conventionally
    // points: the application versions they pin are not reproducible otherwise.
    source("/etc/analytics-stack/locks/", SourceKind::Config),
    source("/var/lib/analytics-stack/secrets/", SourceKind::Config),
    source("/var/lib/analytics-stack/tls/", SourceKind::Config),
    source("/var/lib/analytics-stack/dags/", SourceKind::Data),
    source("/var/lib/analytics-stack/pipelines/", SourceKind::Data),
    Source {
        path: "/var/lib/analytics-stack/grafana/grafana.db",
        kind: SourceKind::Data,
        telemetry: false,
        stop_unit: Some(crate::components::grafana::UNIT),
    },
    // Silences and the log of what was notified (so a restored host does not
    // notify again what was already sent).
    Source {
        path: "/var/lib/analytics-stack/alertmanager/",
        kind: SourceKind::Data,
        telemetry: false,
        stop_unit: Some(crate::components::alertmanager::UNIT),
    },
    source(paths::STATE_FILE, SourceKind::Reference),
    Source {
        path: "/var/lib/analytics-stack/prometheus/",
        kind: SourceKind::Data,
        telemetry: true,
        stop_unit: Some(crate::components::prometheus::UNIT),
    },
    Source {
        path: "/var/lib/analytics-stack/loki/",
        kind: SourceKind::Data,
        telemetry: true,
        stop_unit: Some(crate::components::loki::UNIT),
    },
];

/// What an entry of a backup is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Roles,
    Database(String),
    File { path: PathBuf, source: Source },
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}
impl Eq for Source {}

/// A database name that can be an entry name and an SQL identifier without quoting
/// surprises: what PostgreSQL's unquoted identifiers allow, lower case.
pub fn is_plain_database_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// The entry name a host path is stored under.
pub fn entry_name(path: &Path) -> String {
    format!("files/{}", path.strip_prefix("/").unwrap_or(path).display())
}

/// What an entry name stands for; anything else — a path outside [`SOURCES`], `..`,
/// an odd database name — is refused: a restore writes nowhere else.
pub fn target_of(name: &str) -> Option<Target> {
    if name == ROLES_ENTRY {
        return Some(Target::Roles);
    }
    if let Some(db) = name
        .strip_prefix("postgres/")
        .and_then(|n| n.strip_suffix(".dump"))
    {
        return is_plain_database_name(db).then(|| Target::Database(db.to_string()));
    }
    let rel = name.strip_prefix("files/")?;
    let rel_path = Path::new(rel);
    let plain = !rel.is_empty()
        && rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !rel.ends_with('/')
        && !rel.contains("//")
        && !rel.chars().any(|c| c.is_control());
    if !plain {
        return None;
    }
    let path = Path::new("/").join(rel_path);
    SOURCES
        .iter()
        .find(|s| match s.path.strip_suffix('/') {
            Some(tree) => path.starts_with(tree) && path != Path::new(tree),
            None => path == Path::new(s.path),
        })
        .map(|s| Target::File { path, source: *s })
}

/// The file name of a backup made at `created` (seconds since the epoch), in UTC:
/// sorting the names sorts the backups by age.
pub fn file_name(created: u64) -> String {
    let (y, mo, d, h, mi, s) = utc(created);
    format!("{FILE_PREFIX}{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z{FILE_SUFFIX}")
}

/// The backups retention removes from `names` (a directory's entries) to keep the
/// newest `keep`: only complete backups named as [`file_name`] makes them.
pub fn to_prune(names: &[String], keep: usize) -> Vec<String> {
    to_prune_named(names, FILE_PREFIX, keep)
}

/// The backups taken before upgrades (`analytics-stack-pre-upgrade-TIME.tar`).
pub const PRE_UPGRADE_PREFIX: &str = "analytics-stack-pre-upgrade-";

/// Like [`to_prune`], for the backups whose names begin with `prefix`.
pub fn to_prune_named(names: &[String], prefix: &str, keep: usize) -> Vec<String> {
    let mut backups: Vec<&String> = names
        .iter()
        .filter(|n| {
            n.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(FILE_SUFFIX))
                .is_some_and(|stamp| {
                    stamp.len() == 16
                        && stamp.chars().enumerate().all(|(i, c)| match i {
                            8 => c == 'T',
                            15 => c == 'Z',
                            _ => c.is_ascii_digit(),
                        })
                })
        })
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    backups.into_iter().take(excess).cloned().collect()
}

/// Civil date and time in UTC (Howard Hinnant's days-from-civil, inverted).
fn utc(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = secs / 86400;
    let rem = secs % 86400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y as u64,
        m as u64,
        d as u64,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

/// What the daemon tells Prometheus about backups (node_exporter's textfile
/// collector, `analytics_stack_backup.prom`): the last successful one, and, while
/// backups are scheduled, since when and how often, for the "backup did not run"
/// alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupMetrics {
    pub last_success: Option<u64>,
    pub last_size_bytes: Option<u64>,
    pub scheduled_since: Option<u64>,
    pub interval_seconds: Option<u64>,
}

const METRICS: [(&str, &str); 4] = [
    (
        "analytics_stack_backup_last_success_timestamp_seconds",
        "When the last successful backup was made.",
    ),
    (
        "analytics_stack_backup_last_size_bytes",
        "The size of the last successful backup.",
    ),
    (
        "analytics_stack_backup_scheduled_since_timestamp_seconds",
        "Since when backups are scheduled.",
    ),
    (
        "analytics_stack_backup_interval_seconds",
        "The time between two scheduled backups.",
    ),
];

impl BackupMetrics {
    pub fn parse(text: &str) -> Self {
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        BackupMetrics {
            last_success: value(METRICS[0].0),
            last_size_bytes: value(METRICS[1].0),
            scheduled_since: value(METRICS[2].0),
            interval_seconds: value(METRICS[3].0),
        }
    }

    pub fn render(&self) -> String {
        let values = [
            self.last_success,
            self.last_size_bytes,
            self.scheduled_since,
            self.interval_seconds,
        ];
        let mut out = String::new();
        for ((name, help), value) in METRICS.iter().zip(values) {
            if let Some(v) = value {
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
                ));
            }
        }
        out
    }
}

/// The time between a schedule's first two runs, from `TZ=UTC systemd-analyze
/// calendar --iterations=2 SPEC`'s output ("Next elapse: Thu 2026-12-03 02:30:00
/// UTC", "Iter. #2: Fri 2026-12-04 02:30:00 UTC"; systemd 257, Debian 13's, says
/// "Iteration #2:").
pub fn interval_from_calendar(output: &str) -> Option<u64> {
    let when = |labels: &[&str]| -> Option<u64> {
        let line = output.lines().find(|l| {
            let l = l.trim_start();
            labels.iter().any(|label| l.starts_with(label))
        })?;
        let mut words = line.split_whitespace().skip_while(|w| !w.contains('-'));
        let date = words.next()?;
        let time = words.next()?;
        let d: Vec<u64> = date
            .split('-')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        let t: Vec<u64> = time
            .split(':')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        let (&[y, m, day], &[h, mi, sec]) = (&d[..], &t[..]) else {
            return None;
        };
        Some(days_from_civil(y, m, day)? * 86400 + h * 3600 + mi * 60 + sec)
    };
    let (first, second) = (
        when(&["Next elapse:"])?,
        when(&["Iter. #2:", "Iteration #2:"])?,
    );
    second.checked_sub(first).filter(|s| *s > 0)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`utc`]'s date part).
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y } as i64;
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// `a` older than `b`, comparing dotted version numbers numerically (`0.9` < `0.10`);
/// a part that is not a number compares as 0.
pub fn version_older(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+', '~'])
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    parts(a) < parts(b)
}

/// Whether this host (package `ours`, PostgreSQL `our_major`) can take a backup
/// with `header`: the same or a newer package and PostgreSQL.
pub fn check_compatible(
    header: &Header,
    ours: &str,
    our_major: u32,
    file: &str,
) -> Result<(), BackupError> {
    if version_older(ours, &header.package_version) {
        return Err(BackupError::Incompatible(format!(
            "{file} was made by analytics-stack {}; this host has {ours}: install the same or a newer package first",
            header.package_version
        )));
    }
    match header.postgres_major {
        Some(theirs) if theirs > our_major => Err(BackupError::Incompatible(format!(
            "{file} holds PostgreSQL {theirs} dumps; this host's PostgreSQL is {our_major}, which cannot read them"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
