//! Point-in-time recovery with pgBackRest: the stanza prepared at apply, base
//! backups taken with every backup, `restore --to TIME|latest`, and what the
//! repository holds (for `status`, the landing page and the alerts).
//!
//! pgBackRest always runs as PostgreSQL's user, with the stack's configuration
//! (`components::pgbackrest`), its output captured: a failure is said with its own
//! words.

use crate::components::{pgbackrest, postgres};
use crate::exec::Progress;
use crate::stack::{Stack, StackError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Where `restore --to` brings the databases: the end of the archived WAL, or a
/// moment (microseconds since the epoch, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    Latest,
    Time(i64),
}

impl RestoreTarget {
    /// `latest`, or a date and time: `2026-12-07 10:15:00`, `2026-12-07T10:15:00Z`,
    /// with up to six decimals of a second and an offset (`Z`, `UTC`, `+01:00`,
    /// `-0500`, `+02`); without one the time is UTC (the stack's cluster's zone).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "latest" {
            return Ok(RestoreTarget::Latest);
        }
        let bad = || {
            format!(
                "{:?} is not a time like \"2026-12-07 10:15:00\" (UTC), \"2026-12-07T10:15:00+01:00\" or \"latest\"",
                crate::util::printable(text)
            )
        };
        if !text.is_ascii() || text.len() < 19 {
            return Err(bad());
        }
        let (date, rest) = text.split_at(10);
        let (sep, rest) = rest.split_at(1);
        if sep != " " && sep != "T" {
            return Err(bad());
        }
        let (time, mut zone) = rest.split_at(8);
        let number = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        let d: Vec<u64> = date
            .split('-')
            .map(number)
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let t: Vec<u64> = time
            .split(':')
            .map(number)
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let (&[y, mo, day], &[h, mi, s]) = (&d[..], &t[..]) else {
            return Err(bad());
        };
        if h > 23 || mi > 59 || s > 59 {
            return Err(bad());
        }
        let mut micros = 0i64;
        if let Some(fraction) = zone.strip_prefix('.') {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if !(1..=6).contains(&digits) {
                return Err(bad());
            }
            let scaled = format!("{:0<6}", &fraction[..digits]);
            micros = scaled.parse().map_err(|_| bad())?;
            zone = &fraction[digits..];
        }
        let offset_secs: i64 = match zone.trim_start() {
            "" | "Z" | "UTC" | "+00" | "+00:00" => 0,
            z => {
                let sign = match z.as_bytes()[0] {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return Err(bad()),
                };
                let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
                let (hh, mm) = match (digits.len(), z[1..].len()) {
                    (2, 2) => (&digits[..2], "00"),
                    (4, 4) | (4, 5) => (&digits[..2], &digits[2..]),
                    _ => return Err(bad()),
                };
                let (hh, mm) = (number(hh).ok_or_else(bad)?, number(mm).ok_or_else(bad)?);
                if hh > 14 || mm > 59 {
                    return Err(bad());
                }
                sign * (hh * 3600 + mm * 60) as i64
            }
        };
        let days = super::days_from_civil(y, mo, day).ok_or_else(bad)?;
        // Refuses 2026-02-31 rather than take it as March 3rd.
        if super::utc(days * 86400).0 != y || super::utc(days * 86400).1 != mo {
            return Err(bad());
        }
        let secs = (days * 86400 + h * 3600 + mi * 60 + s) as i64 - offset_secs;
        Ok(RestoreTarget::Time(secs * 1_000_000 + micros))
    }

    /// As pgBackRest and PostgreSQL read it: UTC, to the microsecond.
    pub fn pg_timestamp(micros: i64) -> String {
        let secs = micros.div_euclid(1_000_000);
        let (y, mo, d, h, mi, s) = super::utc(secs.max(0) as u64);
        format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:06}+00",
            micros.rem_euclid(1_000_000)
        )
    }
}

impl std::fmt::Display for RestoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreTarget::Latest => f.write_str("latest"),
            RestoreTarget::Time(micros) => f.write_str(&Self::pg_timestamp(*micros)),
        }
    }
}

/// One base backup in the repository, as `pgbackrest info` says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseBackup {
    pub label: String,
    /// `full`, `diff` or `incr`.
    pub kind: String,
    /// Seconds since the epoch.
    pub started: u64,
    pub ended: u64,
    /// The cluster's size, and what the backup took in the repository.
    pub size_bytes: u64,
    pub stored_bytes: u64,
}

/// What the repository holds: its base backups, oldest first, and the newest WAL
/// segment archived.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepositoryInfo {
    pub backups: Vec<BaseBackup>,
    pub newest_wal: Option<String>,
}

#[derive(Deserialize)]
struct InfoStanza {
    #[serde(default)]
    backup: Vec<InfoBackup>,
    #[serde(default)]
    archive: Vec<InfoArchive>,
}

#[derive(Deserialize)]
struct InfoBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: InfoTimestamp,
    info: InfoSizes,
}

#[derive(Deserialize)]
struct InfoTimestamp {
    start: u64,
    stop: u64,
}

#[derive(Deserialize)]
struct InfoSizes {
    size: u64,
    repository: InfoRepositorySize,
}

#[derive(Deserialize)]
struct InfoRepositorySize {
    delta: u64,
}

#[derive(Deserialize)]
struct InfoArchive {
    max: Option<String>,
}

impl RepositoryInfo {
    /// `pgbackrest info --output=json`: one object per stanza; ours is the only one.
    pub fn parse(json: &str) -> Result<Self, String> {
        let stanzas: Vec<InfoStanza> = serde_json::from_str(json)
            .map_err(|e| format!("pgbackrest info: unexpected output ({e})"))?;
        let Some(stanza) = stanzas.into_iter().next() else {
            return Ok(RepositoryInfo::default());
        };
        let mut backups: Vec<BaseBackup> = stanza
            .backup
            .into_iter()
            .map(|b| BaseBackup {
                label: b.label,
                kind: b.kind,
                started: b.timestamp.start,
                ended: b.timestamp.stop,
                size_bytes: b.info.size,
                stored_bytes: b.info.repository.delta,
            })
            .collect();
        backups.sort_by_key(|b| b.started);
        Ok(RepositoryInfo {
            backups,
            newest_wal: stanza.archive.into_iter().filter_map(|a| a.max).max(),
        })
    }

    /// The kind of base backup to take now: full when there is none, or the newest
    /// full one is `full_every_days` old; else differential.
    pub fn next_kind(&self, now: u64, full_every_days: u32) -> &'static str {
        let newest_full = self
            .backups
            .iter()
            .filter(|b| b.kind == "full")
            .map(|b| b.started)
            .max();
        match newest_full {
            Some(at) if now.saturating_sub(at) < u64::from(full_every_days) * 86400 => "diff",
            _ => "full",
        }
    }

    /// The earliest moment a restore can reach: the end of the oldest base backup.
    pub fn earliest(&self) -> Option<u64> {
        self.backups.iter().map(|b| b.ended).min()
    }
}

/// Runs pgBackRest's `command` as `user` with the stack's configuration and
/// stanza and `options`; its own words when it fails.
async fn run(user: &str, command: &str, options: &[&str]) -> Result<std::process::Output, String> {
    let uid = crate::host::fsroot::uid_of(user).ok_or_else(|| format!("no user {user}"))?;
    let gid = crate::host::fsroot::gid_of(user).ok_or_else(|| format!("no group {user}"))?;
    let out = tokio::process::Command::new(pgbackrest::BINARY)
        .args(pgbackrest::base_args())
        .args(options)
        .arg(command)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", pgbackrest::BINARY))?;
    if out.status.success() {
        return Ok(out);
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<&str> = said.lines().rev().take(20).collect();
    Err(format!(
        "pgbackrest {command}: {}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// What the repository holds.
pub async fn repository_info(user: &str) -> Result<RepositoryInfo, String> {
    let out = run(user, "info", &["--output=json"]).await?;
    RepositoryInfo::parse(&String::from_utf8_lossy(&out.stdout))
}

/// At apply: the stanza (created when missing; pgBackRest accepts an existing one
/// that matches the cluster), archiving shown to work (`check` has PostgreSQL
/// switch to a new WAL segment and waits for it in the repository), and a first
/// full base backup when there is none. After a PostgreSQL major upgrade the
/// stanza no longer matches the cluster: it is upgraded, and a full base backup of
/// the new cluster taken (the old major's cannot be restored on it).
pub async fn prepare_stanza(user: &str) -> Result<(), String> {
    let mut needs_full = false;
    if let Err(create) = run(user, "stanza-create", &[]).await {
        run(user, "stanza-upgrade", &[])
            .await
            .map_err(|upgrade| format!("{create}\n{upgrade}"))?;
        needs_full = true;
    }
    run(user, "check", &[]).await?;
    if needs_full || repository_info(user).await?.backups.is_empty() {
        run(user, "backup", &["--type=full"]).await?;
    }
    Ok(())
}

/// A base backup (full or differential, by `[postgres.archiving]`), then what the
/// repository holds; pgBackRest expires what retention no longer keeps after it.
pub async fn base_backup(
    config: &crate::config::Config,
) -> Result<(BaseBackup, RepositoryInfo), String> {
    let archiving = &config.postgres.archiving;
    let before = repository_info(postgres::USER).await?;
    let kind = before.next_kind(crate::util::now_secs(), archiving.full_every_days.get());
    run(postgres::USER, "backup", &[&format!("--type={kind}")]).await?;
    let after = repository_info(postgres::USER).await?;
    let newest = after
        .backups
        .last()
        .cloned()
        .ok_or_else(|| "pgbackrest backup succeeded but lists no backup".to_string())?;
    Ok((newest, after))
}

/// Archiving as `status`, the landing page and Prometheus see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArchivingStatus {
    pub repository: String,
    /// PostgreSQL's archiver (`pg_stat_archiver`): the last segment archived and
    /// when (seconds since the epoch), the last failure, and the segments complete
    /// but not archived yet.
    pub last_archived_wal: Option<String>,
    pub last_archived: Option<u64>,
    pub last_failed: Option<u64>,
    pub archived_count: u64,
    pub failed_count: u64,
    pub segments_waiting: u64,
    pub newest_base_backup: Option<BaseBackup>,
    /// The earliest moment `restore --to` reaches.
    pub earliest_restore_point: Option<u64>,
    /// The repository is on the cluster's filesystem: one lost disk loses both.
    pub shares_disk_with_cluster: bool,
    /// What could not be read (PostgreSQL down, the repository unreadable).
    pub problems: Vec<String>,
    /// The lines `status` and the landing page show.
    pub summary: Vec<String>,
}

/// A moment as the summary says it: `2026-12-07 10:15:00 UTC` (absolute, so that
/// the landing page changes only when the figures do).
fn at(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = super::utc(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

impl ArchivingStatus {
    /// The archiver's row: `archived|failed|wal|archived_at|failed_at|waiting`.
    fn read_archiver(&mut self, row: &str) -> Option<()> {
        let f: Vec<&str> = row.split('|').collect();
        let [archived, failed, wal, archived_at, failed_at, waiting] = f[..] else {
            return None;
        };
        let at = |s: &str| s.parse::<u64>().ok().filter(|t| *t > 0);
        self.archived_count = archived.parse().ok()?;
        self.failed_count = failed.parse().ok()?;
        self.last_archived_wal = (!wal.is_empty()).then(|| wal.to_string());
        self.last_archived = at(archived_at);
        self.last_failed = at(failed_at);
        self.segments_waiting = waiting.parse().ok()?;
        Some(())
    }

    fn summarize(&mut self) {
        let mut lines = Vec::new();
        lines.push(match (self.last_archived, &self.last_archived_wal) {
            (Some(when), Some(wal)) => format!(
                "last WAL archived {} ({wal}); {} segments waiting",
                at(when),
                self.segments_waiting
            ),
            _ => "no WAL archived yet".to_string(),
        });
        if let Some(failed) = self.last_failed.filter(|f| Some(*f) > self.last_archived) {
            lines.push(format!(
                "ARCHIVING FAILS: the last attempt, {}, failed (see analytics-stack logs postgres)",
                at(failed)
            ));
        }
        lines.push(match &self.newest_base_backup {
            Some(b) => format!(
                "newest base backup {} ({}, {}); restore --to reaches back to {}",
                at(b.ended),
                b.kind,
                b.label,
                self.earliest_restore_point.map(at).unwrap_or_default()
            ),
            None => "no base backup yet".to_string(),
        });
        if self.shares_disk_with_cluster {
            lines.push(format!(
                "the repository {} is on the cluster's filesystem: a lost disk loses both (see docs/day-two.md)",
                self.repository
            ));
        }
        lines.extend(self.problems.iter().cloned());
        self.summary = lines;
    }

    /// Prometheus's figures (node_exporter's textfile collector).
    pub fn metrics(&self) -> String {
        let mut text = String::new();
        let mut gauge = |name: &str, help: &str, value: Option<u64>| {
            if let Some(v) = value {
                text.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
                ));
            }
        };
        gauge(
            "analytics_stack_wal_last_archived_timestamp_seconds",
            "When PostgreSQL last archived a WAL segment into pgBackRest's repository.",
            Some(self.last_archived.unwrap_or(0)),
        );
        gauge(
            "analytics_stack_wal_last_failed_timestamp_seconds",
            "When an attempt to archive a WAL segment last failed (0: never).",
            Some(self.last_failed.unwrap_or(0)),
        );
        gauge(
            "analytics_stack_wal_segments_waiting",
            "WAL segments complete but not archived yet.",
            Some(self.segments_waiting),
        );
        gauge(
            "analytics_stack_base_backup_newest_timestamp_seconds",
            "When the newest base backup in pgBackRest's repository ended.",
            self.newest_base_backup.as_ref().map(|b| b.ended),
        );
        text
    }
}

fn device_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.dev())
}

impl Stack {
    /// Archiving now, when it is on: PostgreSQL's archiver and the repository.
    pub async fn archiving_status(
        &self,
        config: &crate::config::Config,
    ) -> Option<ArchivingStatus> {
        if !config.archiving_on() {
            return None;
        }
        let repository = config.postgres.archiving.repository.as_str();
        let mut status = ArchivingStatus {
            repository: repository.to_string(),
            ..Default::default()
        };
        let sql = "SELECT archived_count || '|' || failed_count || '|' || coalesce(last_archived_wal, '') || '|' || coalesce(extract(epoch FROM last_archived_time)::bigint, 0) || '|' || coalesce(extract(epoch FROM last_failed_time)::bigint, 0) || '|' || (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') FROM pg_stat_archiver";
        match self.query(config.postgres.port.get(), sql).await {
            Ok(rows) => {
                if rows.first().and_then(|r| status.read_archiver(r)).is_none() {
                    status
                        .problems
                        .push(format!("PostgreSQL's archiver said {rows:?}"));
                }
            }
            Err(_) => status
                .problems
                .push("PostgreSQL does not answer: the archiver's figures are unknown".into()),
        }
        match repository_info(postgres::USER).await {
            Ok(info) => {
                status.earliest_restore_point = info.earliest();
                status.newest_base_backup = info.backups.last().cloned();
            }
            Err(e) => status.problems.push(format!(
                "cannot read the repository: {}",
                e.lines().last().unwrap_or("")
            )),
        }
        let data = postgres::data_dir(postgres::major(config, &self.platform()));
        status.shares_disk_with_cluster = match (
            device_of(&self.fs.path(Path::new(repository))),
            device_of(&self.fs.path(&data)),
        ) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        };
        status.summarize();
        Some(status)
    }
}

/// What `restore --to` did.
#[derive(Debug, Clone, Serialize)]
pub struct PitrReport {
    /// What was asked: `latest` or the time, UTC.
    pub target: String,
    /// The base backup restored before the WAL was replayed.
    pub base_backup: String,
    /// The commit time of the last transaction replayed, UTC, if any was.
    pub last_replayed_commit: Option<String>,
    /// Where the cluster as it was before the restore is kept, if there was one.
    pub kept_previous: Option<String>,
    pub seconds: f64,
}

fn failed(what: impl std::fmt::Display) -> StackError {
    StackError::Failed(what.to_string())
}

/// The cluster directory a restore moves aside while it works (so a kill leaves it
/// whole), and where it is kept after a restore that succeeded (until the next).
fn aside(data_dir: &Path, suffix: &str) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
const BEING_REPLACED: &str = ".before-restore";
const REPLACED: &str = ".replaced";

/// How long a restore waits for PostgreSQL to replay the WAL and promote itself.
const REPLAY_LIMIT: Duration = Duration::from_secs(6 * 3600);

impl Stack {
    /// `restore --to`: the base backup before `target` restored into an empty
    /// cluster directory and the WAL replayed to it, PostgreSQL promoted (a new
    /// timeline; the repository keeps the old one's WAL), the applications started
    /// again. The cluster as it was is moved aside first and kept until the next
    /// restore; a restore that fails puts it back. Run again after a kill, it
    /// converges (the directory moved aside is the original; what is in the
    /// cluster's place is discarded).
    pub async fn restore_to(
        &self,
        target: RestoreTarget,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<PitrReport, StackError> {
        let started = Instant::now();
        let (config, desired) = self.desired()?;
        if !config.archiving_on() {
            return Err(StackError::Conflict(
                "restore --to needs [postgres.archiving] enabled (and PostgreSQL)".into(),
            ));
        }
        let repository = config.postgres.archiving.repository.as_str();
        progress.step(0, 5, &format!("read the repository {repository}"));
        let info = repository_info(postgres::USER)
            .await
            .map_err(|e| failed(format!("cannot read the repository {repository}: {e}")))?;
        let earliest = info.earliest().ok_or_else(|| {
            StackError::Conflict(format!(
                "the repository {repository} holds no base backup: there is nothing to restore from"
            ))
        })?;
        let now = crate::util::now_secs() as i64;
        if let RestoreTarget::Time(micros) = target {
            if micros > now * 1_000_000 {
                return Err(StackError::Conflict(format!(
                    "{target} is in the future (now is {}): for everything archived, use --to latest",
                    RestoreTarget::pg_timestamp(now * 1_000_000)
                )));
            }
            if micros < earliest as i64 * 1_000_000 {
                return Err(StackError::Conflict(format!(
                    "{target} is before the oldest base backup kept, which ended at {}: the earliest moment to restore to",
                    RestoreTarget::pg_timestamp(earliest as i64 * 1_000_000)
                )));
            }
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(StackError::Cancelled(
                "restore cancelled before any change".into(),
            ));
        }
        let data_dir = postgres::data_dir(postgres::major(&config, &self.platform()));
        let moved = aside(&data_dir, BEING_REPLACED);
        self.record(|s| s.restore_in_progress = Some(format!("--to '{target}'")))?;
        crate::util::failpoint_phase("restore");

        progress.step(
            1,
            5,
            "stop the services that use the databases, and PostgreSQL",
        );
        let users: Vec<&crate::model::ComponentSpec> = desired
            .iter()
            .filter(|s| super::run::STOPPED_FOR_RESTORE.contains(&s.name))
            .collect();
        self.stop_components(&users).await?;
        self.systemd
            .run_job("stop", postgres::UNIT, Duration::from_secs(300))
            .await?;
        // The cluster there now: the original, moved aside — unless a restore a kill
        // interrupted moved it already, and what is there is that restore's.
        let here = self.fs.path(&data_dir);
        let kept = self.fs.path(&moved);
        if kept.exists() {
            if here.exists() {
                std::fs::remove_dir_all(&here)
                    .map_err(|e| failed(format!("{}: {e}", data_dir.display())))?;
            }
        } else if here.exists() {
            std::fs::rename(&here, &kept)
                .map_err(|e| failed(format!("{}: {e}", data_dir.display())))?;
        }
        // PostgreSQL's user exists (apply made it); never a root-owned cluster.
        let (uid, gid) = crate::host::fsroot::uid_of(postgres::USER)
            .zip(crate::host::fsroot::gid_of(postgres::USER))
            .ok_or_else(|| {
                failed(format!(
                    "no user {}: run analytics-stack apply",
                    postgres::USER
                ))
            })?;
        self.fs
            .ensure_dir(&data_dir, 0o700, uid, gid)
            .map_err(|e| failed(format!("{}: {e}", data_dir.display())))?;
        crate::util::failpoint_phase("restore");

        progress.step(
            2,
            5,
            &format!("restore the base backup and replay the WAL to {target}"),
        );
        let port = config.postgres.port.get();
        let restored = self.restore_and_replay(target, &info, port).await;
        let restored = match restored {
            Ok(r) => r,
            Err(e) => return Err(self.put_back(&data_dir, &moved, &users, e).await),
        };
        crate::util::failpoint_phase("restore");

        progress.step(3, 5, "start the services again");
        self.restart_components(&users).await?;
        crate::util::failpoint_phase("restore");
        progress.step(4, 5, "check every component");
        self.apply_restoring(cancel, progress, &[]).await?;
        let kept_previous = if kept.exists() {
            let replaced = aside(&data_dir, REPLACED);
            let _older_gone = std::fs::remove_dir_all(self.fs.path(&replaced));
            std::fs::rename(&kept, self.fs.path(&replaced))
                .map_err(|e| failed(format!("{}: {e}", replaced.display())))?;
            Some(replaced.display().to_string())
        } else {
            None
        };
        self.record(|s| s.restore_in_progress = None)?;
        Ok(PitrReport {
            target: target.to_string(),
            base_backup: restored.0,
            last_replayed_commit: restored.1,
            kept_previous,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// pgBackRest's restore into the empty cluster directory, PostgreSQL started on
    /// it, and the wait until it has replayed to the target and promoted itself:
    /// the base backup used and the last commit replayed.
    async fn restore_and_replay(
        &self,
        target: RestoreTarget,
        info: &RepositoryInfo,
        port: u16,
    ) -> Result<(String, Option<String>), StackError> {
        let options: Vec<String> = match target {
            RestoreTarget::Latest => vec!["--type=default".into()],
            RestoreTarget::Time(micros) => vec![
                "--type=time".into(),
                format!("--target={}", RestoreTarget::pg_timestamp(micros)),
                "--target-action=promote".into(),
            ],
        };
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        run(postgres::USER, "restore", &options)
            .await
            .map_err(failed)?;
        // The set pgBackRest chose: the newest that ended before the target.
        let base = match target {
            RestoreTarget::Latest => info.backups.last(),
            RestoreTarget::Time(micros) => info
                .backups
                .iter()
                .rev()
                .find(|b| (b.ended as i64) * 1_000_000 <= micros)
                .or(info.backups.last()),
        }
        .map(|b| b.label.clone())
        .unwrap_or_default();

        self.systemd.reset_failed(postgres::UNIT).await?;
        self.systemd
            .run_job("start", postgres::UNIT, REPLAY_LIMIT)
            .await
            .map_err(|e| {
                failed(format!(
                    "PostgreSQL did not start on the restored cluster: {e}"
                ))
            })?;
        let began = Instant::now();
        loop {
            // A PostgreSQL that dies while it replays is started again by systemd
            // (Restart=on-failure) and goes on from its last restartpoint; one that
            // keeps dying (a target the WAL does not reach) ends failed.
            let fact = self.systemd.unit_fact(postgres::UNIT).await?;
            if matches!(fact.active_state.as_str(), "failed" | "inactive") {
                return Err(failed(format!(
                    "PostgreSQL stopped while replaying the WAL ({}):\n{}",
                    fact.active_state,
                    crate::host::journal_tail(postgres::UNIT, 15).await
                )));
            }
            if let Ok(rows) = self.query(port, "SELECT pg_is_in_recovery()").await {
                if rows.first().map(String::as_str) == Some("f") {
                    break;
                }
            }
            if began.elapsed() > REPLAY_LIMIT {
                return Err(failed(
                    "PostgreSQL did not finish replaying the WAL within 6 hours",
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // A commit on the new timeline, archived at once: a later restore to a moment
        // before now that replays this timeline meets a commit after its target and
        // stops there. (PostgreSQL stops at the first commit past the target; with
        // none, it refuses, not knowing whether WAL is missing.)
        self.query(port, "SELECT txid_current()")
            .await
            .and(self.query(port, "SELECT pg_switch_wal()").await)
            .map_err(|e| failed(format!("the restored cluster does not take a write: {e}")))?;
        let last = self
            .query(
                port,
                "SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
            )
            .await
            .ok()
            .and_then(|rows| rows.into_iter().next());
        Ok((base, last))
    }

    /// After a failed restore: the cluster as it was put back and started with the
    /// services; the error says whether that could be done.
    async fn put_back(
        &self,
        data_dir: &Path,
        moved: &Path,
        users: &[&crate::model::ComponentSpec],
        error: StackError,
    ) -> StackError {
        let _stopped = self
            .systemd
            .run_job("stop", postgres::UNIT, Duration::from_secs(300))
            .await;
        let kept = self.fs.path(moved);
        if !kept.exists() {
            return failed(format!(
                "{error}\nThere was no cluster before the restore to put back: run restore --to again (an earlier time, or latest)."
            ));
        }
        let here = self.fs.path(data_dir);
        let _restored_gone = std::fs::remove_dir_all(&here);
        if let Err(e) = std::fs::rename(&kept, &here) {
            return failed(format!(
                "{error}\nThe cluster as it was is in {}, and could not be put back: {e}",
                moved.display()
            ));
        }
        let _forgotten = self.systemd.reset_failed(postgres::UNIT).await;
        let mut back = self
            .systemd
            .run_job("start", postgres::UNIT, Duration::from_secs(300))
            .await
            .is_ok();
        for spec in users {
            for unit in spec.units.iter().filter(|u| !u.triggered) {
                back &= self
                    .systemd
                    .run_job("start", &unit.name, Duration::from_secs(900))
                    .await
                    .is_ok();
            }
        }
        let _ = self.record(|s| s.restore_in_progress = None);
        failed(format!(
            "{error}\nNothing was changed: the cluster as it was is back{}.",
            if back {
                " and running"
            } else {
                " (some services did not start: see status)"
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_targets_are_read_in_utc_to_the_microsecond() {
        let t = |s: &str| match RestoreTarget::parse(s) {
            Ok(RestoreTarget::Time(m)) => m,
            other => panic!("{s}: {other:?}"),
        };
        let base = 1_796_256_000 * 1_000_000; // 2026-12-03 00:00:00 UTC
        assert_eq!(t("2026-12-03 00:00:00"), base);
        assert_eq!(t("2026-12-03T00:00:00Z"), base);
        assert_eq!(t("2026-12-03 00:00:00 UTC"), base);
        assert_eq!(t("2026-12-03 01:00:00+01:00"), base);
        assert_eq!(t("2026-12-02 19:00:00-0500"), base);
        assert_eq!(t("2026-12-03 02:00:00+02"), base);
        assert_eq!(t("2026-12-03 00:00:00.5"), base + 500_000);
        assert_eq!(t("2026-12-03 00:00:00.000123"), base + 123);
        assert_eq!(
            RestoreTarget::pg_timestamp(base + 123),
            "2026-12-03 00:00:00.000123+00"
        );
        assert_eq!(RestoreTarget::parse(" latest "), Ok(RestoreTarget::Latest));
    }

    #[test]
    fn restore_targets_refuse_what_is_not_a_time_naming_it() {
        for bad in [
            "",
            "yesterday",
            "2026-02-31 00:00:00",
            "2026-12-03 24:00:00",
            "2026-12-03 00:00:00.1234567",
            "2026-12-03 00:00:00+1",
            "2026-12-03 00:00:00 +01:00'; DROP",
            "2026-12-03 00:00:00\nrecovery_target_action = 'shutdown'",
            "1969-12-31 23:59:59",
            "2026-12-03 00:00",
        ] {
            let e = RestoreTarget::parse(bad).unwrap_err();
            assert!(e.contains("is not a time"), "{bad:?}: {e}");
            assert!(!e.contains('\n'), "the culprit is shown printable: {e}");
        }
    }

    /// `pgbackrest info --output=json` of 2.45, trimmed to what is read.
    const INFO: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000007","min":"000000010000000000000003"}],
        "backup":[
          {"label":"20261207-101500F_20261207-101700D","type":"diff","timestamp":{"start":1796638620,"stop":1796638625},"info":{"size":30000000,"delta":100,"repository":{"size":4000000,"delta":100000}}},
          {"label":"20261207-101500F","type":"full","timestamp":{"start":1796638500,"stop":1796638510},"info":{"size":30000000,"delta":30000000,"repository":{"size":4000000,"delta":4000000}}}
        ],"name":"analytics","status":{"code":0,"message":"ok"}}]"#;

    #[test]
    fn archiving_is_summarized_for_people_and_measured_for_prometheus() {
        let mut status = ArchivingStatus {
            repository: "/var/backups/analytics-stack-pgbackrest".into(),
            shares_disk_with_cluster: true,
            ..Default::default()
        };
        assert!(status.read_archiver("not|a|row").is_none());
        status
            .read_archiver("12|1|000000010000000000000007|1796638620|1796638680|3")
            .unwrap();
        status.newest_base_backup = RepositoryInfo::parse(INFO).unwrap().backups.pop();
        status.earliest_restore_point = Some(1796638510);
        status.summarize();
        let text = status.summary.join("\n");
        assert!(text.contains("last WAL archived 2026-12-07 10:17:00 UTC (000000010000000000000007); 3 segments waiting"), "{text}");
        assert!(
            text.contains("ARCHIVING FAILS: the last attempt, 2026-12-07 10:18:00 UTC, failed"),
            "{text}"
        );
        assert!(text.contains("newest base backup 2026-12-07 10:17:05 UTC (diff, 20261207-101500F_20261207-101700D); restore --to reaches back to 2026-12-07 10:15:10 UTC"), "{text}");
        assert!(text.contains("is on the cluster's filesystem"), "{text}");
        let m = status.metrics();
        assert!(
            m.contains("analytics_stack_wal_last_failed_timestamp_seconds 1796638680\n"),
            "{m}"
        );
        assert!(
            m.contains("analytics_stack_wal_segments_waiting 3\n"),
            "{m}"
        );
        assert!(
            m.contains("analytics_stack_base_backup_newest_timestamp_seconds 1796638625\n"),
            "{m}"
        );
        // A success after the failure: no longer said to fail.
        status
            .read_archiver("13|1|000000010000000000000008|1796638700|1796638680|0")
            .unwrap();
        status.summarize();
        assert!(!status.summary.join("\n").contains("FAILS"));
    }

    #[test]
    fn the_repository_says_its_backups_and_the_kind_of_the_next() {
        let info = RepositoryInfo::parse(INFO).unwrap();
        assert_eq!(info.backups.len(), 2);
        assert_eq!(info.backups[0].kind, "full", "oldest first");
        assert_eq!(info.earliest(), Some(1796638510));
        assert_eq!(info.newest_wal.as_deref(), Some("000000010000000000000007"));
        assert_eq!(info.next_kind(1796638500 + 86400, 7), "diff");
        assert_eq!(info.next_kind(1796638500 + 7 * 86400, 7), "full");
        let empty =
            RepositoryInfo::parse(r#"[{"backup":[],"archive":[],"name":"analytics"}]"#).unwrap();
        assert_eq!(empty.next_kind(0, 7), "full");
        assert_eq!(empty.earliest(), None);
        assert!(RepositoryInfo::parse("not json")
            .unwrap_err()
            .contains("pgbackrest info"));
    }
}
