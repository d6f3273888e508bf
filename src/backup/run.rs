//! Backup and restore on the host: `pg_dump`/`pg_restore` through the stack
//! cluster's socket (root is mapped to the `postgres` superuser there), files copied
//! with their owners by name, services stopped only while their data is copied.

use super::archive::{unpack_verified, BackupWriter, Unpacked};
use super::{
    check_compatible, entry_name, BackupError, Header, SourceKind, Target, FORMAT, FORMAT_VERSION,
    ROLES_ENTRY, SOURCES, SPOOL, STAGING,
};
use crate::components::{self, postgres};
use crate::exec::Progress;
use crate::host::fsroot::{gid_of, group_name, uid_of, user_name};
use crate::model::{paths, ComponentSpec};
use crate::stack::{Stack, StackError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub bytes: u64,
    pub entries: usize,
    pub databases: Vec<String>,
    pub with_telemetry: bool,
    /// Things found but not taken (links, sockets, a database with an odd name).
    pub skipped: Vec<String>,
    /// pgBackRest's base backup taken first, with archiving on.
    pub base_backup: Option<super::pitr::BaseBackup>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub made_on: String,
    pub made_at: u64,
    pub package_version: String,
    pub databases: Vec<String>,
    pub files: usize,
    /// The operator's configuration files the backup's replaced, kept beside them.
    pub replaced_config: Vec<String>,
    pub seconds: f64,
}

impl From<BackupError> for StackError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Foreign(m) | BackupError::Damaged(m) => StackError::Integrity(m),
            BackupError::Incompatible(m) => StackError::Conflict(m),
            BackupError::Failed(m) => StackError::Failed(m),
        }
    }
}

/// The time between two runs of a `[backup] schedule`, as systemd reads it; its
/// message when systemd cannot.
pub async fn calendar_interval(spec: &str) -> Result<u64, String> {
    let out = tokio::process::Command::new("systemd-analyze")
        .args(["calendar", "--iterations=2", spec])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TZ", "UTC")
        .output()
        .await
        .map_err(|e| format!("cannot run systemd-analyze: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "[backup] schedule = {spec:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    super::interval_from_calendar(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| format!("[backup] schedule = {spec:?}: it does not repeat"))
}

/// Progress nobody watches (a backup inside another operation).
struct QuietProgress;

impl Progress for QuietProgress {
    fn step(&self, _: usize, _: usize, _: &str) {}
    fn bytes(&self, _: u64, _: Option<u64>) {}
}

/// Components whose processes use the databases or the data a restore replaces:
/// stopped while it does.
pub(crate) const STOPPED_FOR_RESTORE: &[&str] = &["airflow", "superset", "grafana"];

fn failed(what: impl std::fmt::Display) -> StackError {
    StackError::Failed(what.to_string())
}

/// Runs a PostgreSQL client program as root against the stack's cluster.
async fn pg_command(
    bin_dir: &Path,
    program: &str,
    port: u16,
    args: &[&str],
) -> Result<std::process::Output, StackError> {
    let out = tokio::process::Command::new(bin_dir.join(program))
        .args([
            "-h",
            postgres::SOCKET_DIR,
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGCONNECT_TIMEOUT", "10")
        .current_dir("/")
        .output()
        .await
        .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failed(format!(
            "{program} {}: {}",
            args.last().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A dump's table of contents (`pg_restore --create --list`) split in two: the
/// entries of the database itself (`DATABASE`, its `ACL` and `DATABASE PROPERTIES`),
/// which only the superuser can restore, and every other entry. Comment lines go to
/// both.
fn split_toc(list: &str) -> (String, String) {
    let of_database = |line: &str| {
        // `ID; CLASS OID DESC SCHEMA NAME OWNER`; the database's entries have no
        // schema (`-`).
        let mut fields = line.splitn(4, ' ');
        let rest = fields.nth(3).unwrap_or("");
        ["DATABASE - ", "ACL - DATABASE ", "DATABASE PROPERTIES - "]
            .iter()
            .any(|kind| rest.starts_with(kind))
    };
    let (mut database, mut objects) = (String::new(), String::new());
    for line in list.lines() {
        let to = if line.starts_with(';') || line.trim().is_empty() {
            database.push_str(line);
            database.push('\n');
            &mut objects
        } else if of_database(line) {
            &mut database
        } else {
            &mut objects
        };
        to.push_str(line);
        to.push('\n');
    }
    (database, objects)
}

/// Regular files below `root` (or `root` itself), in name order; links and other
/// kinds are reported, not followed.
fn walk(root: &Path, out: &mut Vec<PathBuf>, skipped: &mut Vec<String>) {
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return;
    };
    if meta.is_file() {
        out.push(root.to_path_buf());
    } else if meta.is_dir() {
        let Ok(dir) = std::fs::read_dir(root) else {
            skipped.push(format!("{} (unreadable)", root.display()));
            return;
        };
        let mut names: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        names.sort();
        for n in names {
            walk(&n, out, skipped);
        }
    } else {
        skipped.push(format!("{} (not a regular file)", root.display()));
    }
}

impl Stack {
    /// `dir` emptied of what an earlier, interrupted operation left, and made
    /// again (root's, 0700); its real path.
    pub(crate) fn fresh_private_dir(&self, dir: &str) -> Result<PathBuf, StackError> {
        let real = self.fs.path(Path::new(dir));
        let _stale = std::fs::remove_dir_all(&real);
        self.fs
            .ensure_dir(Path::new(dir), 0o700, 0, 0)
            .map_err(|e| failed(format!("{dir}: {e}")))?;
        Ok(real)
    }

    /// The PostgreSQL major the configuration runs (its client programs read any
    /// older server's data too).
    fn postgres_major(&self) -> u32 {
        let platform = self.platform();
        self.config()
            .map(|c| postgres::major(&c, &platform))
            .unwrap_or_else(|_| platform.postgres_major())
    }

    /// The newest PostgreSQL client programs installed: they dump and restore any
    /// older server too (before a major upgrade the configured major's may not be
    /// installed yet, after one the old major's may be gone).
    fn postgres_bin(&self) -> PathBuf {
        let newest = std::fs::read_dir(self.fs.path(Path::new("/usr/lib/postgresql")))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|m| self.fs.exists(&postgres::bin_dir(*m).join("pg_dump")))
            .max();
        postgres::bin_dir(newest.unwrap_or_else(|| self.postgres_major()))
    }

    /// The rows `sql` returns from the `postgres` database, one line each.
    pub(crate) async fn query(&self, port: u16, sql: &str) -> Result<Vec<String>, StackError> {
        let out = pg_command(
            &self.postgres_bin(),
            "psql",
            port,
            &["-X", "-A", "-t", "-c", sql, "postgres"],
        )
        .await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The major of the server that is running (`server_version_num` / 10000).
    async fn server_major(&self, port: u16) -> Result<u32, StackError> {
        let rows = self.query(port, "SHOW server_version_num").await?;
        rows.first()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .map(|n| n / 10000)
            .ok_or_else(|| failed(format!("PostgreSQL's version: {rows:?}")))
    }

    /// The databases of the stack's cluster a backup takes: all but the templates
    /// and `postgres`.
    async fn databases(&self, port: u16) -> Result<Vec<String>, StackError> {
        self.query(
            port,
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> 'postgres' ORDER BY datname",
        )
        .await
    }

    /// Writes a backup of the running stack to `out` (the caller's file, opened for
    /// writing) and syncs it. The caller names and renames the file; the daemon
    /// writes only where the caller could.
    pub async fn backup(
        &self,
        out: File,
        with_telemetry: bool,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<BackupReport, StackError> {
        let started = Instant::now();
        let (config, desired) = self.desired()?;
        let versions = self.component_versions(&desired).await;
        let port = config.postgres.port.get();
        let with_postgres = config.postgres.enabled;
        if with_postgres && !self.systemd.unit_fact(postgres::UNIT).await?.is_active() {
            return Err(StackError::Conflict(format!(
                "{} is not running: a backup needs it (analytics-stack start postgres)",
                postgres::UNIT
            )));
        }
        // The base backup first: a backup that cannot take it fails before it writes.
        let base_backup = if config.archiving_on() {
            progress.step(0, 1, "pgBackRest base backup");
            let (newest, _) = super::pitr::base_backup(&config)
                .await
                .map_err(|e| StackError::Failed(format!("the base backup failed: {e}")))?;
            Some(newest)
        } else {
            None
        };
        let mut skipped = Vec::new();
        let (server_major, all_databases) = if with_postgres {
            (
                Some(self.server_major(port).await?),
                self.databases(port).await?,
            )
        } else {
            (None, Vec::new())
        };
        let (databases, odd): (Vec<String>, Vec<String>) = all_databases
            .into_iter()
            .partition(|d| super::is_plain_database_name(d));
        skipped.extend(
            odd.into_iter()
                .map(|d| format!("database {:?} (a name backups do not take)", d)),
        );
        let header = Header {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            created: crate::util::now_secs(),
            hostname: config
                .stack
                .hostname
                .as_ref()
                .map(|h| h.as_str().to_string())
                .unwrap_or_default(),
            package_version: env!("CARGO_PKG_VERSION").into(),
            postgres_major: server_major,
            databases: databases.clone(),
            with_telemetry,
            components: versions,
        };
        let spool = self.fresh_private_dir(SPOOL)?;
        let result = self
            .write_backup(
                out,
                &header,
                &databases,
                port,
                with_telemetry,
                &mut skipped,
                cancel,
                progress,
            )
            .await;
        let _spool_gone = std::fs::remove_dir_all(&spool);
        let (bytes, entries) = result?;
        self.publish_backup_metrics(header.created, bytes);
        Ok(BackupReport {
            bytes,
            entries,
            databases,
            with_telemetry,
            skipped,
            base_backup,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    async fn component_versions(&self, desired: &[ComponentSpec]) -> BTreeMap<String, String> {
        let packages: Vec<String> = desired.iter().map(|s| s.version_package.clone()).collect();
        let installed = crate::host::apt::installed_versions(&packages).await;
        desired
            .iter()
            .filter_map(|s| {
                let v = match (&s.archive, &s.venv) {
                    (Some(pin), _) => Some(pin.version.clone()),
                    (None, Some(venv)) => Some(venv.id.clone()),
                    _ => installed.get(&s.version_package).cloned(),
                };
                v.map(|v| (s.name.to_string(), v))
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_backup(
        &self,
        out: File,
        header: &Header,
        databases: &[String],
        port: u16,
        with_telemetry: bool,
        skipped: &mut Vec<String>,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<(u64, usize), StackError> {
        let cancelled = || {
            cancel
                .load(Ordering::SeqCst)
                .then(|| StackError::Cancelled("backup cancelled; the file is incomplete".into()))
        };
        let sources: Vec<_> = SOURCES
            .iter()
            .filter(|s| with_telemetry || !s.telemetry)
            .collect();
        let total = databases.len() + usize::from(header.postgres_major.is_some()) + sources.len();
        let mut step = 0;
        let mut writer = BackupWriter::new(BufWriter::with_capacity(1 << 20, out), header)
            .map_err(|e| failed(format!("cannot write the backup: {e}")))?;
        let bytes = |done: u64| progress.bytes(done, None);

        // The databases: each dumped to the spool, then streamed into the file.
        if header.postgres_major.is_some() {
            let mut dumps: Vec<(String, String, Vec<String>)> = vec![(
                ROLES_ENTRY.to_string(),
                "roles.sql".into(),
                vec!["--roles-only".into()],
            )];
            for db in databases {
                dumps.push((
                    format!("postgres/{db}.dump"),
                    format!("{db}.dump"),
                    vec!["-Fc".into(), "-d".into(), db.clone()],
                ));
            }
            for (entry, spooled, args) in dumps {
                if let Some(e) = cancelled() {
                    return Err(e);
                }
                progress.step(step, total, &format!("dump {entry}"));
                step += 1;
                let path = self.fs.path(&Path::new(SPOOL).join(&spooled));
                let program = if entry == ROLES_ENTRY {
                    "pg_dumpall"
                } else {
                    "pg_dump"
                };
                let mut argv: Vec<&str> = vec!["-f"];
                let path_text = path.display().to_string();
                argv.push(&path_text);
                argv.extend(args.iter().map(String::as_str));
                pg_command(&self.postgres_bin(), program, port, &argv).await?;
                tokio::task::block_in_place(|| -> Result<(), StackError> {
                    let file =
                        File::open(&path).map_err(|e| failed(format!("{path_text}: {e}")))?;
                    let size = file.metadata().map_err(failed)?.len();
                    writer
                        .append(&entry, file, size, (0o600, "root", "root"), &bytes)
                        .map_err(|e| failed(format!("cannot write the backup: {e}")))?;
                    std::fs::remove_file(&path).map_err(failed)
                })?;
                crate::util::failpoint_phase("backup");
            }
        }

        // Files: each source, its service stopped while a copy must be consistent.
        for source in sources {
            if let Some(e) = cancelled() {
                return Err(e);
            }
            progress.step(step, total, &format!("copy {}", source.path));
            step += 1;
            let root = self.fs.path(Path::new(source.path.trim_end_matches('/')));
            let mut files = Vec::new();
            walk(&root, &mut files, skipped);
            if files.is_empty() {
                continue;
            }
            let stop = match source.stop_unit {
                Some(unit) if self.systemd.unit_fact(unit).await?.is_active() => Some(unit),
                _ => None,
            };
            if let Some(unit) = stop {
                // Recorded first: a daemon killed while it is stopped starts it again.
                self.record(|s| s.stopped_for_backup.insert(unit.to_string()))?;
                self.systemd
                    .run_job("stop", unit, Duration::from_secs(120))
                    .await?;
                crate::util::failpoint_phase("backup");
            }
            let copied = tokio::task::block_in_place(|| -> Result<(), StackError> {
                for path in &files {
                    let abs = Path::new("/").join(
                        path.strip_prefix(self.fs.path(Path::new("/")))
                            .unwrap_or(path),
                    );
                    let file = match File::open(path) {
                        Ok(f) => f,
                        // Gone since the walk (a log segment rotated): nothing to take.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(failed(format!("{}: {e}", abs.display()))),
                    };
                    let meta = file.metadata().map_err(failed)?;
                    let (owner, group) = (user_name(meta.uid()), group_name(meta.gid()));
                    writer
                        .append(
                            &entry_name(&abs),
                            file,
                            meta.len(),
                            (meta.mode() & 0o777, &owner, &group),
                            &bytes,
                        )
                        .map_err(|e| failed(format!("cannot write the backup: {e}")))?;
                }
                Ok(())
            });
            if let Some(unit) = stop {
                self.systemd
                    .run_job("start", unit, Duration::from_secs(120))
                    .await?;
                self.record(|s| s.stopped_for_backup.remove(unit))?;
            }
            copied?;
            crate::util::failpoint_phase("backup");
        }
        progress.step(total, total, "write the manifest");
        tokio::task::block_in_place(|| {
            let (out, entries) = writer
                .finish()
                .map_err(|e| failed(format!("cannot write the backup: {e}")))?;
            let file = out
                .into_inner()
                .map_err(|e| failed(format!("cannot write the backup: {}", e.error())))?;
            file.sync_all()
                .map_err(|e| failed(format!("cannot sync the backup: {e}")))?;
            let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
            Ok((bytes, entries.len()))
        })
    }

    /// The recorded state changed by `change`, saved.
    pub(crate) fn record<T>(
        &self,
        change: impl FnOnce(&mut crate::state::RecordedState) -> T,
    ) -> Result<T, StackError> {
        let mut state = crate::exec::load_state(&self.fs);
        let out = change(&mut state);
        crate::exec::save_state(&self.fs, &state)
            .map_err(|e| failed(format!("cannot record state: {e}")))?;
        Ok(out)
    }

    /// When the daemon starts: what a killed backup left is put right (the services
    /// it stopped started, its spool and a half-written file in the backup
    /// directory removed), and a restore a kill interrupted is said in the journal.
    pub async fn recover_interrupted(&self) {
        let state = crate::exec::load_state(&self.fs);
        for unit in &state.stopped_for_backup {
            tracing::warn!("a backup was interrupted while {unit} was stopped: starting it");
            // Before the daemon says it is ready (so nothing races it), within its
            // unit's start timeout.
            if let Err(e) = self
                .systemd
                .run_job("start", unit, Duration::from_secs(30))
                .await
            {
                tracing::warn!("cannot start {unit}: {e}");
            }
        }
        if !state.stopped_for_backup.is_empty() {
            if let Err(e) = self.record(|s| s.stopped_for_backup.clear()) {
                tracing::warn!("{e}");
            }
        }
        for dir in [SPOOL, STAGING] {
            let _leftover_gone = std::fs::remove_dir_all(self.fs.path(Path::new(dir)));
        }
        if let Ok(config) = self.config() {
            let dir = self.fs.path(Path::new(config.backup.directory.as_str()));
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("analytics-stack-") && name.ends_with(".tar.partial") {
                    tracing::warn!("removing {name}, left by an interrupted backup");
                    let _partial_gone = std::fs::remove_file(e.path());
                }
            }
        }
        if let Some(file) = &state.restore_in_progress {
            tracing::warn!(
                "a restore of {file} was interrupted: apply refuses until `analytics-stack restore {file}` completes"
            );
        }
    }

    /// A backup into `[backup] directory`, named `analytics-stack-LABEL-TIME.tar`
    /// (not counted by retention, which keeps only scheduled and manual backups):
    /// written to `NAME.partial`, renamed once complete.
    pub async fn backup_to_directory(
        &self,
        config: &crate::config::Config,
        label: &str,
    ) -> Result<PathBuf, StackError> {
        let dir = Path::new(config.backup.directory.as_str());
        self.fs
            .ensure_dir(dir, 0o700, 0, 0)
            .map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        let name = super::file_name(crate::util::now_secs()).replacen(
            super::FILE_PREFIX,
            &format!("analytics-stack-{label}-"),
            1,
        );
        let path = dir.join(&name);
        let partial = dir.join(format!("{name}.partial"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.fs.path(&partial))
            .map_err(|e| failed(format!("{}: {e}", partial.display())))?;
        let quiet = QuietProgress;
        let never = AtomicBool::new(false);
        match self.backup(file, false, &never, &quiet).await {
            Ok(_) => {
                std::fs::rename(self.fs.path(&partial), self.fs.path(&path))
                    .map_err(|e| failed(format!("{}: {e}", path.display())))?;
                Ok(path)
            }
            Err(e) => {
                let _cleanup = std::fs::remove_file(self.fs.path(&partial));
                Err(e)
            }
        }
    }

    /// `analytics_stack_backup.prom` changed by `change`, when node_exporter's
    /// textfile directory exists.
    pub(crate) fn update_backup_metrics(&self, change: impl FnOnce(&mut super::BackupMetrics)) {
        let path =
            Path::new(components::node_exporter::TEXTFILE_DIR).join("analytics_stack_backup.prom");
        if !self.fs.exists(path.parent().unwrap_or(Path::new("/"))) {
            return;
        }
        let before = self
            .fs
            .read(&path)
            .map(|b| super::BackupMetrics::parse(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
        let mut after = before.clone();
        change(&mut after);
        if after != before {
            if let Err(e) = self
                .fs
                .write_atomic(&path, after.render().as_bytes(), 0o644, 0, 0)
            {
                tracing::warn!("cannot publish metrics to {}: {e}", path.display());
            }
        }
    }

    /// The time of the last successful backup, for the "backup did not run" alert.
    fn publish_backup_metrics(&self, created: u64, bytes: u64) {
        self.update_backup_metrics(|m| {
            m.last_success = Some(created);
            m.last_size_bytes = Some(bytes);
        });
    }

    /// Restores a backup read from `input` (the caller's file): verified whole into
    /// staging first — a foreign, damaged or too-new file changes nothing — then the
    /// configuration, secrets and CA, an apply (which installs what the configuration
    /// names, on a fresh host too), the databases and data with the services that use
    /// them stopped, and those services started again and healthy. Run again after an
    /// interruption, it converges: every step replaces rather than adds.
    pub async fn restore(
        &self,
        input: File,
        name: &str,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<RestoreReport, StackError> {
        let started = Instant::now();
        let staging = self.fresh_private_dir(STAGING)?;
        let result = self
            .restore_from_staging(input, name, cancel, progress)
            .await;
        let _staging_gone = std::fs::remove_dir_all(&staging);
        let mut report = result?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    async fn restore_from_staging(
        &self,
        input: File,
        name: &str,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<RestoreReport, StackError> {
        progress.step(0, 6, &format!("verify {name}"));
        let staging = self.fs.path(Path::new(STAGING));
        let unpacked = tokio::task::block_in_place(|| {
            unpack_verified(
                BufReader::with_capacity(1 << 20, input),
                &staging,
                name,
                &|n| progress.bytes(n, None),
            )
        })?;
        // Compatibility and the carried configuration, before anything changes.
        check_compatible(
            &unpacked.header,
            env!("CARGO_PKG_VERSION"),
            self.postgres_major(),
            name,
        )?;
        self.check_carried_config(&unpacked, name)?;
        if cancel.load(Ordering::SeqCst) {
            return Err(StackError::Cancelled(
                "restore cancelled before any change".into(),
            ));
        }
        // From here the host is between two states until a restore completes.
        let identity = (unpacked.header.created, unpacked.header.hostname.clone());
        let applied_before = self.record(|s| {
            s.restore_in_progress = Some(name.to_string());
            s.restore_applied.as_ref() == Some(&identity)
        })?;
        crate::util::failpoint_phase("restore");

        progress.step(1, 6, "restore the configuration, secrets and CA");
        let replaced_config = self.replace_config(&unpacked)?;
        let mut files = 0;
        for (entry, target, staged) in &unpacked.entries {
            if let Target::File { path, source } = target {
                if source.kind == SourceKind::Config {
                    self.install_file(staged, path, entry)?;
                    files += 1;
                }
            }
        }

        crate::util::failpoint_phase("restore");

        progress.step(2, 6, "apply the restored configuration");
        // (PostgreSQL must run for the databases: if it does not, apply starts it.)
        let postgres_runs = self.systemd.unit_fact(postgres::UNIT).await?.is_active();
        if !(applied_before && postgres_runs) {
            self.apply_restoring(cancel, progress, STOPPED_FOR_RESTORE)
                .await?;
            self.record(|s| s.restore_applied = Some(identity.clone()))?;
        }
        crate::util::failpoint_phase("restore");

        progress.step(3, 6, "stop the services that use the data");
        let (config, desired) = self.desired()?;
        let stopped: Vec<&ComponentSpec> = desired
            .iter()
            .filter(|s| {
                STOPPED_FOR_RESTORE.contains(&s.name)
                    || (unpacked.header.with_telemetry && matches!(s.name, "prometheus" | "loki"))
            })
            .collect();
        self.stop_components(&stopped).await?;
        crate::util::failpoint_phase("restore");

        progress.step(4, 6, "restore the databases");
        if unpacked.header.postgres_major.is_some() {
            self.restore_databases(&unpacked, config.postgres.port.get())
                .await?;
        }
        // Telemetry is replaced whole: a TSDB's blocks and WAL from two times mixed
        // would not load. DAGs and pipelines only gain the backup's files.
        let mut cleared = std::collections::BTreeSet::new();
        for (entry, target, staged) in &unpacked.entries {
            if let Target::File { path, source } = target {
                if source.kind == SourceKind::Data {
                    if source.telemetry && cleared.insert(source.path) {
                        self.clear_tree(Path::new(source.path))?;
                    }
                    self.install_file(staged, path, entry)?;
                    files += 1;
                }
            }
        }
        crate::util::failpoint_phase("restore");

        progress.step(5, 6, "start the services again");
        // Each component's units in order, its one-time setup first: Airflow's and
        // Superset's migrations run again on the restored databases (a no-op for
        // the same version, an upgrade for a newer one).
        self.restart_components(&stopped).await?;
        crate::util::failpoint_phase("restore");
        self.apply_restoring(cancel, progress, &[]).await?;
        self.record(|s| {
            s.restore_in_progress = None;
            s.restore_applied = None;
        })?;
        Ok(RestoreReport {
            made_on: unpacked.header.hostname.clone(),
            made_at: unpacked.header.created,
            package_version: unpacked.header.package_version.clone(),
            databases: unpacked.header.databases.clone(),
            files,
            replaced_config,
            seconds: 0.0,
        })
    }

    /// Stops the units of `specs`, last component first, each unit in reverse.
    pub(crate) async fn stop_components(&self, specs: &[&ComponentSpec]) -> Result<(), StackError> {
        for spec in specs.iter().rev() {
            for unit in spec.units.iter().rev() {
                self.systemd
                    .run_job("stop", &unit.name, Duration::from_secs(300))
                    .await?;
            }
        }
        Ok(())
    }

    /// (Re)starts the units of `specs` in order (not those a timer starts), each
    /// waited for: an application's one-time setup (its migrations) first.
    pub(crate) async fn restart_components(
        &self,
        specs: &[&ComponentSpec],
    ) -> Result<(), StackError> {
        for spec in specs {
            for unit in spec.units.iter().filter(|u| !u.triggered) {
                self.systemd
                    .run_job("restart", &unit.name, Duration::from_secs(900))
                    .await
                    .map_err(|e| failed(format!("{}: {e}", unit.name)))?;
            }
        }
        Ok(())
    }

    /// The configuration the backup carries must load on this package: checked in
    /// a scratch copy before the real one is touched.
    fn check_carried_config(&self, unpacked: &Unpacked, name: &str) -> Result<(), StackError> {
        let scratch = self.fs.path(Path::new(STAGING)).join("etc");
        for (_, target, staged) in &unpacked.entries {
            if let Target::File { path, source } = target {
                if source.kind == SourceKind::Config && path.starts_with(paths::ETC) {
                    let rel = path.strip_prefix(paths::ETC).map_err(failed)?;
                    let dest = scratch.join(rel);
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent).map_err(failed)?;
                    }
                    std::fs::copy(staged, &dest).map_err(failed)?;
                }
            }
        }
        std::fs::create_dir_all(&scratch).map_err(failed)?;
        crate::config::load_dir(&scratch).map_err(|e| {
            StackError::Conflict(format!(
                "{name}: the configuration it carries does not load on this package:\n{e}"
            ))
        })?;
        Ok(())
    }

    /// The operator's `stack.toml` and `stack.d/*.toml` that differ from the
    /// backup's, or that the backup lacks, are kept as `NAME.before-restore` (the
    /// latter out of `stack.d/`'s way): a restore loses no configuration.
    fn replace_config(&self, unpacked: &Unpacked) -> Result<Vec<String>, StackError> {
        let carried: Vec<(&PathBuf, &PathBuf)> = unpacked
            .entries
            .iter()
            .filter_map(|(_, t, staged)| match t {
                Target::File { path, .. } if path.starts_with(paths::ETC) => Some((path, staged)),
                _ => None,
            })
            .collect();
        let mut present = Vec::new();
        let etc = Path::new(paths::ETC);
        if self.fs.exists(&etc.join("stack.toml")) {
            present.push(etc.join("stack.toml"));
        }
        if let Ok(dir) = std::fs::read_dir(self.fs.path(&etc.join("stack.d"))) {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.ends_with(".toml") {
                    present.push(etc.join("stack.d").join(n));
                }
            }
        }
        let mut kept = Vec::new();
        for path in present {
            let same = carried.iter().any(|(p, staged)| {
                **p == path && std::fs::read(staged).ok() == self.fs.read(&path).ok()
            });
            if same {
                continue;
            }
            let aside = PathBuf::from(format!("{}.before-restore", path.display()));
            std::fs::rename(self.fs.path(&path), self.fs.path(&aside))
                .map_err(|e| failed(format!("{}: {e}", path.display())))?;
            kept.push(aside.display().to_string());
        }
        Ok(kept)
    }

    /// Empties a data directory, keeping the directory itself (its owner and mode).
    fn clear_tree(&self, dir: &Path) -> Result<(), StackError> {
        let real = self.fs.path(dir);
        let Ok(entries) = std::fs::read_dir(&real) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let p = e.path();
            let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.map_err(|err| failed(format!("{}: {err}", p.display())))?;
        }
        Ok(())
    }

    /// Copies a verified staged file to `dest` atomically, with the recorded
    /// permission bits and owner where that user exists here (root otherwise).
    pub(crate) fn install_file(
        &self,
        staged: &Path,
        dest: &Path,
        entry: &super::Entry,
    ) -> Result<(), StackError> {
        let target = self.fs.path(dest);
        let dir = target
            .parent()
            .ok_or_else(|| failed(format!("{}: no parent directory", dest.display())))?;
        std::fs::create_dir_all(dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        let uid = uid_of(&entry.owner).unwrap_or(0);
        let gid = gid_of(&entry.group).unwrap_or(0);
        let tmp = dir.join(format!(
            ".{}.restore-{}",
            target
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let result = (|| -> std::io::Result<()> {
            let mut from = File::open(staged)?;
            let mut to = crate::host::fsroot::create_exclusive(&tmp, 0o600)?;
            std::os::unix::fs::fchown(&to, Some(uid), Some(gid))?;
            std::io::copy(&mut from, &mut to)?;
            to.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o777))?;
            to.flush()?;
            to.sync_all()?;
            std::fs::rename(&tmp, &target)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _cleanup = std::fs::remove_file(&tmp);
        }
        result.map_err(|e| failed(format!("{}: {e}", dest.display())))
    }

    /// `db` dropped (its connections ended) and created again from a `pg_dump -Fc`
    /// file, with the owner, settings and grants the dump records.
    pub(crate) async fn replace_database(
        &self,
        db: &str,
        dump: &Path,
        port: u16,
    ) -> Result<(), StackError> {
        let bin = self.postgres_bin();
        let drop = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            crate::exec::quote_ident(db)
        );
        pg_command(
            &bin,
            "psql",
            port,
            &["-X", "-v", "ON_ERROR_STOP=1", "-c", &drop, "postgres"],
        )
        .await?;
        // Two passes over the dump's table of contents. The database itself (its
        // owner, settings and grants) as the superuser; then every object as its own
        // owner (`SET SESSION AUTHORIZATION`), so that code a less trusted role left
        // in the dump — a CHECK constraint or a default calling its own function,
        // run while its rows are loaded — runs as that role, never as the superuser.
        let file = dump.display().to_string();
        let toc = pg_command(&bin, "pg_restore", port, &["--create", "--list", &file]).await?;
        let (database, objects) = split_toc(&String::from_utf8_lossy(&toc.stdout));
        let lists = [
            (dump.with_extension("database.list"), database),
            (dump.with_extension("objects.list"), objects),
        ];
        for (path, text) in &lists {
            std::fs::write(path, text).map_err(|e| failed(format!("{}: {e}", path.display())))?;
        }
        let list = |i: usize| lists[i].0.display().to_string();
        pg_command(
            &bin,
            "pg_restore",
            port,
            &[
                "--create",
                "--exit-on-error",
                "-L",
                &list(0),
                "-d",
                "postgres",
                &file,
            ],
        )
        .await?;
        pg_command(
            &bin,
            "pg_restore",
            port,
            &[
                "--exit-on-error",
                "--use-set-session-authorization",
                "-L",
                &list(1),
                "-d",
                db,
                &file,
            ],
        )
        .await?;
        Ok(())
    }

    /// Roles first (those the backup has and this cluster lacks; the stack's own
    /// get their passwords from the restored secrets anyway), then each database
    /// dropped and recreated from its dump with its owner and settings.
    async fn restore_databases(&self, unpacked: &Unpacked, port: u16) -> Result<(), StackError> {
        let bin = self.postgres_bin();
        if let Some((_, _, staged)) = unpacked.staged(&Target::Roles) {
            // psql runs the file with backslash commands refused (`\restrict` with a
            // key the file cannot know): it is SQL from pg_dumpall, and a `\!` in a
            // crafted file would run as root. A psql without `\restrict` is not used.
            let key = crate::host::new_secret("restrict-key")
                .map_err(|e| failed(format!("cannot make a key: {e}")))?;
            let (restrict, unrestrict) =
                (format!("\\restrict {key}"), format!("\\unrestrict {key}"));
            pg_command(
                &bin,
                "psql",
                port,
                &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", &restrict, "-c", &unrestrict, "postgres"],
            )
            .await
            .map_err(|e| {
                failed(format!(
                    "this PostgreSQL's psql cannot refuse backslash commands (\\restrict, in 15.14 and later), so the backup's roles were not replayed: {e}"
                ))
            })?;
            // Not ON_ERROR_STOP: "role already exists" is expected for every role
            // this cluster has; the ALTER ROLE lines after each still apply.
            let file = staged.display().to_string();
            pg_command(
                &bin,
                "psql",
                port,
                &["-X", "-q", "-c", &restrict, "-f", &file, "postgres"],
            )
            .await?;
        }
        for db in &unpacked.header.databases {
            let Some((_, _, staged)) = unpacked.staged(&Target::Database(db.clone())) else {
                return Err(StackError::Integrity(format!(
                    "the backup's header names database {db}, but it holds no dump of it"
                )));
            };
            self.replace_database(db, staged, port).await?;
            crate::util::failpoint_phase("restore");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_is_restored_apart_from_its_objects() {
        // `pg_restore --create --list` of a dump in which the owner of `airflow`
        // left a table whose CHECK calls its own function.
        let list = "\
;
; Archive created at 2026-12-06 18:30:00 UTC
;     dbname: airflow
;
3346; 1262 16398 DATABASE - airflow airflow
3347; 0 0 ACL - DATABASE airflow airflow
3348; 0 0 DATABASE PROPERTIES - airflow airflow
215; 1255 16399 FUNCTION public trap_escalate() airflow
214; 1259 16400 TABLE public trap airflow
216; 1259 16401 TABLE public DATABASE - x airflow
3349; 0 0 ACL public TABLE trap airflow
3340; 0 16400 TABLE DATA public trap airflow
";
        let (database, objects) = super::split_toc(list);
        let entries = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with(';'))
                .map(|l| l.split_once(' ').unwrap().1.to_string())
                .collect()
        };
        assert_eq!(
            entries(&database),
            [
                "1262 16398 DATABASE - airflow airflow",
                "0 0 ACL - DATABASE airflow airflow",
                "0 0 DATABASE PROPERTIES - airflow airflow"
            ]
        );
        assert_eq!(
            entries(&objects),
            [
                "1255 16399 FUNCTION public trap_escalate() airflow",
                "1259 16400 TABLE public trap airflow",
                "1259 16401 TABLE public DATABASE - x airflow",
                "0 0 ACL public TABLE trap airflow",
                "0 16400 TABLE DATA public trap airflow"
            ]
        );
        assert!(database.starts_with(";\n; Archive created") && objects.starts_with(";\n"));
    }
}
