//! The executor: runs a plan's steps in order against the host, recording the state
//! after each step so a killed daemon converges on its next run.

use crate::artifact::catalog::ArchivePin;
use crate::artifact::Fetcher;
use crate::host::{self, fsroot::FsRoot, systemd::Systemd};
use crate::model::{fill_secrets, paths, PostgresRole, Provision, VenvSpec};
use crate::plan::{Plan, Step};
use crate::state::RecordedState;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Longer than any unit's own start timeout (a first migration takes minutes).
const UNIT_TIMEOUT: Duration = Duration::from_secs(1000);
/// uv's download and build cache.
pub const UV_CACHE: &str = "/var/cache/analytics-stack/uv";
/// The archive digests file is read, changed and written by one install at a time
/// (the graph keeps archives in order today; this holds if a rule changes).
static DIGESTS_WRITER: Mutex<()> = Mutex::new(());
/// Whether uv's cache is the build user's is checked (and fixed) by one build at a
/// time (the executor builds one venv at a time today; this holds if that changes).
static UV_CACHE_CHECK: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("step '{step}' failed: {reason}")]
    Step { step: String, reason: String },
    #[error("cancelled before step '{0}'")]
    Cancelled(String),
    #[error("step '{step}' refused: {reason}")]
    Integrity { step: String, reason: String },
}

/// Where the executor reports what it does.
pub trait Progress: Sync {
    /// Before step `done` of `total`.
    fn step(&self, done: usize, total: usize, description: &str);
    /// Bytes of the current download.
    fn bytes(&self, done: u64, total: Option<u64>);
}

pub struct Executor<'a> {
    pub fs: &'a FsRoot,
    /// The configured archive mirror ("" = upstream), for URLs a resolver names.
    pub mirror: String,
    pub systemd: &'a Systemd,
    pub cancel: &'a AtomicBool,
    /// Where Debian packages come from (the host's sources, a mirror, a bundle).
    pub apt: host::apt::AptSources,
    /// A verified offline bundle: archives and wheels come from it, nothing is
    /// downloaded.
    pub bundle: Option<crate::bundle::Bundle>,
}

pub fn load_state(fs: &FsRoot) -> RecordedState {
    fs.read_json_or_default(Path::new(paths::STATE_FILE))
}

/// The archive digests this host verified and installed (trust on first use).
pub fn recorded_digests(fs: &FsRoot) -> crate::artifact::trust::RecordedDigests {
    fs.read_json_or_default(Path::new(crate::artifact::trust::DIGESTS_FILE))
}

pub fn save_state(fs: &FsRoot, state: &RecordedState) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    fs.write_atomic(Path::new(paths::STATE_FILE), &json, 0o600, 0, 0)
}

/// A new cluster as the service user: UTF-8, no locale (its sorting does not change
/// with the host's locales), peer auth locally and SCRAM over TCP.
async fn initdb(bin_dir: &Path, data_dir: &Path, user: &str) -> Result<(), String> {
    let (uid, gid) = ids(user, user)?;
    let out = tokio::process::Command::new(bin_dir.join("initdb"))
        .args([
            "--username=postgres",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "-D",
        ])
        .arg(data_dir)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .await
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn ids(owner: &str, group: &str) -> Result<(u32, u32), String> {
    let uid = host::fsroot::uid_of(owner).ok_or_else(|| format!("no user {owner}"))?;
    let gid = host::fsroot::gid_of(group).ok_or_else(|| format!("no group {group}"))?;
    Ok((uid, gid))
}

/// uv's cache, emptied and given to the build user if it holds anything that user
/// does not own.
fn empty_unless_owned(cache: &Path, builder: (u32, u32)) -> std::io::Result<()> {
    if !host::fsroot::owned_by(cache, builder.0)? {
        std::fs::remove_dir_all(cache)?;
        std::fs::create_dir(cache)?;
        std::fs::set_permissions(cache, std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(cache, Some(builder.0), Some(builder.1))?;
    }
    Ok(())
}

/// The state, locked for one change (a step never holds it across a wait).
fn recorded(state: &Mutex<RecordedState>) -> std::sync::MutexGuard<'_, RecordedState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// How many steps run at once: installs and unit jobs mostly wait on the network,
/// the disk, a child process or systemd, so more than the cores. Venvs one at a
/// time: uv already downloads in parallel and compiles bytecode on every core, and
/// three builds at once took 67 s where one after another took 56 (the whole
/// stack, two cores): whatever the limit, one venv builds at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    pub steps: usize,
}

impl Concurrency {
    pub const SERIAL: Concurrency = Concurrency { steps: 1 };

    /// From the host's cores; `ANALYTICS_STACK_APPLY_STEPS` in the daemon's
    /// environment sets how many steps at most (1: one after another, as before).
    pub fn for_host() -> Concurrency {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let steps = std::env::var("ANALYTICS_STACK_APPLY_STEPS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or((2 * cores).max(4));
        Concurrency { steps }
    }
}

/// Where an apply's time went, by phase: the steps' summed seconds and the span from
/// the phase's first start to its last end (less than the sum when steps ran at once).
#[derive(Default)]
struct Timings {
    began: Option<std::time::Instant>,
    starts: std::collections::BTreeMap<usize, std::time::Instant>,
    /// phase → (steps, summed seconds, first start, last end)
    phases: std::collections::BTreeMap<&'static str, (usize, f64, f64, f64)>,
}

impl Timings {
    fn started(&mut self, i: usize) {
        let now = std::time::Instant::now();
        self.began.get_or_insert(now);
        self.starts.insert(i, now);
    }

    fn finished(&mut self, i: usize, step: &Step) {
        let (Some(began), Some(start)) = (self.began, self.starts.remove(&i)) else {
            return;
        };
        let (from, to) = (
            start.duration_since(began).as_secs_f64(),
            began.elapsed().as_secs_f64(),
        );
        let phase = self
            .phases
            .entry(step.phase())
            .or_insert((0, 0.0, from, to));
        phase.0 += 1;
        phase.1 += to - from;
        phase.2 = phase.2.min(from);
        phase.3 = phase.3.max(to);
    }

    fn summary(&self) -> String {
        let wall = self.began.map_or(0.0, |b| b.elapsed().as_secs_f64());
        let mut phases: Vec<_> = self.phases.iter().collect();
        phases.sort_by(|a, b| a.1 .2.total_cmp(&b.1 .2));
        let parts: Vec<String> = phases
            .iter()
            .map(|(name, (n, sum, from, to))| {
                format!("{name} {n} steps {sum:.1} s from {from:.1} to {to:.1} s")
            })
            .collect();
        format!("{wall:.1} s in all; {}", parts.join("; "))
    }
}

impl Executor<'_> {
    /// Runs every step, one after another, reporting each (and download bytes) to
    /// `progress`: plans that are not an apply's (uninstalls, rollbacks).
    pub async fn run(
        &self,
        plan: &Plan,
        state: &mut RecordedState,
        progress: &dyn Progress,
    ) -> Result<(), ExecError> {
        let serial = crate::plan::graph::Graph::serial(plan.steps.len());
        self.run_graph(plan, &serial, Concurrency::SERIAL, state, progress)
            .await
    }

    /// Runs every step once the steps it waits for (`graph`) are done, up to
    /// `limits` at once, lowest index first among the ready ones. The state is
    /// recorded after each step, whichever finishes first, so a killed apply
    /// converges. The first failure (or a cancel) starts nothing more; the steps
    /// already running finish (a dpkg or a migration cut short would be worse), and
    /// the error names them.
    pub async fn run_graph(
        &self,
        plan: &Plan,
        graph: &crate::plan::graph::Graph,
        limits: Concurrency,
        state: &mut RecordedState,
        progress: &dyn Progress,
    ) -> Result<(), ExecError> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let total = plan.steps.len();
        let shared = Mutex::new(std::mem::take(state));
        let mut done = vec![false; total];
        let mut started = vec![false; total];
        let mut finished = 0;
        let mut running = FuturesUnordered::new();
        let mut venv_running = false;
        let mut timings = Timings::default();
        let mut failure: Option<ExecError> = None;
        // Steps that were running when the first failed, and finished (or failed) after.
        let mut while_stopping: Vec<String> = Vec::new();
        loop {
            // Start what is ready, unless something failed or a cancel came.
            while failure.is_none() && running.len() < limits.steps.max(1) {
                let ready = (0..total).find(|&i| {
                    !started[i]
                        && graph.needs[i].iter().all(|&n| done[n])
                        && (!matches!(plan.steps[i], Step::BuildVenv { .. }) || !venv_running)
                });
                let Some(i) = ready else { break };
                let step = &plan.steps[i];
                let description = step.describe();
                progress.step(finished, total, &description);
                if self.cancel.load(Ordering::SeqCst) {
                    failure = Some(ExecError::Cancelled(description));
                    break;
                }
                tracing::info!(
                    step = i + 1,
                    total,
                    running = running.len(),
                    "{description}"
                );
                started[i] = true;
                timings.started(i);
                if matches!(step, Step::BuildVenv { .. }) {
                    venv_running = true;
                }
                let shared = &shared;
                running.push(async move {
                    let as_step = |reason| ExecError::Step {
                        step: description.clone(),
                        reason,
                    };
                    let result = match step {
                        Step::InstallArchive { pin } => self.install_archive(pin, progress).await,
                        Step::BuildVenv { venv } => self.build_venv(venv).await.map_err(as_step),
                        other => self.step(other, shared).await.map_err(as_step),
                    };
                    (i, result)
                });
            }
            let Some((i, result)) = running.next().await else {
                break;
            };
            let step = &plan.steps[i];
            if matches!(step, Step::BuildVenv { .. }) {
                venv_running = false;
            }
            if let Err(e) = result {
                tracing::warn!(step = i + 1, "{e}");
                match failure {
                    None => failure = Some(e),
                    Some(_) => while_stopping.push(format!("{} (failed too)", step.describe())),
                }
                continue;
            }
            done[i] = true;
            timings.finished(i, step);
            finished += 1;
            // Once the state is gone on purpose, do not write it back.
            let state_removed = matches!(step, Step::ForgetState)
                || matches!(step, Step::RemoveTree { path } if path == Path::new(paths::STATE));
            if !state_removed {
                let saved = save_state(self.fs, &recorded(&shared));
                if let Err(e) = saved {
                    failure.get_or_insert(ExecError::Step {
                        step: step.describe(),
                        reason: format!("cannot record state: {e}"),
                    });
                    continue;
                }
                crate::util::failpoint_step_recorded();
            }
            if failure.is_some() {
                while_stopping.push(step.describe());
            }
        }
        drop(running);
        *state = shared.into_inner().unwrap_or_else(|p| p.into_inner());
        tracing::info!("apply timings: {}", timings.summary());
        match failure {
            Some(ExecError::Step { step, reason }) if !while_stopping.is_empty() => {
                Err(ExecError::Step {
                    step,
                    reason: format!(
                        "{reason}\n(running beside it, and let finish: {})",
                        while_stopping.join("; ")
                    ),
                })
            }
            Some(e) => Err(e),
            None if finished < total => Err(ExecError::Step {
                step: "the plan".into(),
                reason: format!(
                    "{} of {total} steps could not start: they wait for one another",
                    total - finished
                ),
            }),
            None => {
                progress.step(total, total, "done");
                Ok(())
            }
        }
    }

    /// Download (or reuse the cached), verify, unpack and switch `current`. A digest
    /// mismatch or an unsafe archive is an integrity error, and nothing is unpacked.
    async fn install_archive(
        &self,
        pin: &ArchivePin,
        progress: &dyn Progress,
    ) -> Result<(), ExecError> {
        use crate::artifact::{fetch::FetchError, UnpackError};
        // Reasons may quote a mirror's URL: never with its credentials.
        let failed = |reason: String| ExecError::Step {
            step: format!("install {} {}", pin.component, pin.version),
            reason: crate::config::redact_urls_in(&reason),
        };
        let integrity = |reason: String| ExecError::Integrity {
            step: format!("install {} {}", pin.component, pin.version),
            reason: crate::config::redact_urls_in(&reason),
        };
        let from_fetch = |e: FetchError| match e {
            FetchError::Digest { .. } => integrity(e.to_string()),
            other => failed(other.to_string()),
        };
        let fetcher =
            Fetcher::new(self.fs.path(Path::new(paths::DOWNLOADS))).map_err(from_fetch)?;
        use crate::artifact::trust;
        let digests_file = Path::new(trust::DIGESTS_FILE);
        let recorded = recorded_digests(self.fs);
        // (archive, the digest to record once it installed)
        let (archive, first_use) = match &self.bundle {
            // The bundle was verified whole against its manifest when it was opened,
            // and its archives against the digests this host trusts (or root chose
            // it): what it brings first is recorded like a first download.
            Some(bundle) => {
                let (path, sha256) =
                    bundle
                        .archive(&pin.component, &pin.version)
                        .ok_or_else(|| {
                            failed(format!(
                                "the bundle holds no {} {} archive",
                                pin.component, pin.version
                            ))
                        })?;
                trust::check_learned(pin, recorded.get(pin), &sha256).map_err(integrity)?;
                let first_use = recorded.get(pin).is_none().then_some(sha256);
                (path, first_use)
            }
            None => {
                let (path, sha256) = crate::artifact::obtain(
                    &fetcher,
                    pin,
                    &self.mirror,
                    recorded.get(pin),
                    &|done, total| progress.bytes(done, total),
                )
                .await
                .map_err(|e| {
                    if e.is_integrity() {
                        integrity(e.to_string())
                    } else {
                        failed(e.to_string())
                    }
                })?;
                let first_use = recorded.get(pin).is_none().then_some(sha256);
                (path, first_use)
            }
        };
        let root = self.fs.path(&Path::new(paths::OPT).join(&pin.component));
        let from_unpack = |e: UnpackError| match e {
            UnpackError::Io { .. } => failed(e.to_string()),
            other => integrity(other.to_string()),
        };
        // Unpacking reads and writes for seconds: off the executor's task, so the
        // steps running beside it go on.
        let (format, version) = (pin.format, pin.version.clone());
        tokio::task::spawn_blocking(move || {
            crate::artifact::unpack(&archive, format, &root, &version)?;
            crate::artifact::switch_current(&root, &version)
        })
        .await
        .map_err(|e| failed(format!("the unpacking stopped: {e}")))?
        .map_err(from_unpack)?;
        // Only an archive that verified *and* unpacked is remembered as this version.
        if let Some(sha256) = first_use {
            // Read again under the lock, whatever the graph lets run beside this.
            let _one_writer = DIGESTS_WRITER.lock().unwrap_or_else(|p| p.into_inner());
            let mut recorded = recorded_digests(self.fs);
            recorded.record(pin, &sha256);
            let json = serde_json::to_vec_pretty(&recorded).map_err(|e| failed(e.to_string()))?;
            self.fs
                .write_atomic(digests_file, &json, 0o644, 0, 0)
                .map_err(|e| failed(format!("{}: {e}", digests_file.display())))?;
        }
        Ok(())
    }

    /// Builds `venv` where it will stay (venvs hold absolute paths), marks it complete
    /// last, then switches `current`. A build without the mark is removed first, so a
    /// killed daemon's half-built venv is never used.
    async fn build_venv(&self, venv: &VenvSpec) -> Result<(), String> {
        let root = self.fs.path(&venv.root());
        let dir = self.fs.path(&venv.dir());
        // Incomplete (a killed build), or built on an interpreter that is gone or is
        // now another Python 3 minor version: built again.
        let complete = self.fs.exists(&venv.complete_marker());
        let stale = complete && {
            let now = match venv.python {
                None => host::gather::python_minor(&self.fs.path(&venv.interpreter)).await,
                Some(_) => None,
            };
            host::gather::built_on_another_python(self.fs, venv, &venv.dir(), now)
        };
        if !complete || stale {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("{}: {e}", dir.display()))
                }
                _ => {}
            }
            std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
            // The build runs as the unprivileged build user, in a directory that user
            // owns until the venv is complete; root owns the result.
            let builder = ids(crate::components::BUILD_USER, crate::components::BUILD_USER)?;
            let io = |p: &Path| {
                let p = p.display().to_string();
                move |e: std::io::Error| format!("{p}: {e}")
            };
            std::fs::create_dir(&dir).map_err(io(&dir))?;
            std::os::unix::fs::chown(&dir, Some(builder.0), Some(builder.1)).map_err(io(&dir))?;
            // A cache with anything the build user does not own (filled by root before
            // builds were unprivileged) is emptied, not re-owned: its files may be the
            // very inodes of an older venv (hard links), which the build user must not
            // be able to change.
            let cache = self.fs.path(Path::new(UV_CACHE));
            // One build looks at the cache at a time.
            let checked = {
                let _one_checker = UV_CACHE_CHECK.lock().unwrap_or_else(|p| p.into_inner());
                empty_unless_owned(&cache, builder)
            };
            checked.map_err(io(&cache))?;
            let uv = self.fs.path(&venv.uv_binary());
            let interpreter = self.fs.path(&venv.interpreter);
            run_uv(
                &uv,
                builder,
                &[
                    "venv",
                    "--quiet",
                    "--no-project",
                    "--allow-existing",
                    "--python",
                ],
                &[interpreter.as_os_str(), dir.as_os_str()],
            )
            .await?;
            let lock = dir.join("requirements.lock");
            std::fs::write(&lock, venv.lock.as_bytes()).map_err(io(&lock))?;
            // Build backends for sdists: exactly these, hash-checked by uv.
            let build_lock = dir.join("build-constraints.lock");
            std::fs::write(&build_lock, crate::components::python::BUILD_LOCK)
                .map_err(io(&build_lock))?;
            let build_lock = build_lock.display().to_string();
            let python = dir.join("bin/python");
            let mut args = vec![
                "pip",
                "sync",
                "--quiet",
                "--require-hashes",
                "--compile-bytecode",
                "--build-constraints",
                build_lock.as_str(),
            ];
            let wheels = self
                .bundle
                .as_ref()
                .map(|b| b.wheels().display().to_string());
            match &wheels {
                // Offline: the bundle's wheels and nothing else.
                Some(dir) => args.extend(["--offline", "--no-index", "--find-links", dir.as_str()]),
                None if !venv.index_url.is_empty() => {
                    args.extend(["--index-url", venv.index_url.as_str()])
                }
                None => {}
            }
            args.push("--python");
            run_uv(&uv, builder, &args, &[python.as_os_str(), lock.as_os_str()]).await?;
            host::fsroot::own_tree(&dir, 0, 0).map_err(io(&dir))?;
            let marker = self.fs.path(&venv.complete_marker());
            std::fs::write(&marker, format!("{}\n", venv.id))
                .and_then(|()| std::fs::File::open(&marker)?.sync_all())
                .map_err(io(&marker))?;
        }
        crate::artifact::switch_current(&root, &venv.id).map_err(|e| e.to_string())
    }

    async fn unit_job(&self, verb: &'static str, unit: &str) -> Result<(), String> {
        match self.systemd.run_job(verb, unit, UNIT_TIMEOUT).await {
            Ok(()) => Ok(()),
            Err(e) => Err(format!(
                "{e}\n--- last journal lines of {unit} ---\n{}",
                host::journal_tail(unit, 20).await
            )),
        }
    }

    /// `pg_upgrade` from the old major's cluster into `to_data`, by way of
    /// `to_data.upgrading` renamed into place only when pg_upgrade succeeded: a
    /// killed upgrade leaves no half-made cluster the planner could take for a
    /// real one, and the next apply starts it again. Copy mode (no `--link`): the
    /// old cluster is left exactly as it was.
    async fn upgrade_postgres(
        &self,
        from: u32,
        to: u32,
        from_data: &Path,
        to_data: &Path,
        user: &str,
    ) -> Result<(), String> {
        use crate::components::postgres;
        let (old_bin, new_bin) = (postgres::bin_dir(from), postgres::bin_dir(to));
        for (bin, major) in [(&old_bin, from), (&new_bin, to)] {
            if !self.fs.exists(&bin.join("postgres")) {
                return Err(format!(
                    "PostgreSQL {major}'s programs are not in {} (package postgresql-{major}): pg_upgrade needs both majors; nothing was changed",
                    bin.display()
                ));
            }
        }
        let staging = PathBuf::from(format!("{}.upgrading", to_data.display()));
        let work_dir = to_data.parent().unwrap_or(Path::new("/"));
        match std::fs::remove_dir_all(self.fs.path(&staging)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{}: {e}", staging.display()))
            }
            _ => {}
        }
        self.unit_job("stop", postgres::UNIT).await?;
        let (uid, gid) = ids(user, user)?;
        let as_user = |program: PathBuf| {
            let mut cmd = tokio::process::Command::new(program);
            cmd.uid(uid)
                .gid(gid)
                .stdin(std::process::Stdio::null())
                .current_dir(self.fs.path(work_dir))
                .env_clear()
                .env("PATH", "/usr/bin:/bin");
            cmd
        };
        // Both servers read the stack's access rules, which map the service user to
        // the `postgres` superuser on the local socket pg_upgrade uses.
        let hba = format!(
            "-c hba_file={dir}/pg_hba.conf -c ident_file={dir}/pg_ident.conf",
            dir = postgres::CONF_DIR
        );
        // A cluster that was not shut down cleanly (its server killed, e.g. with an
        // earlier upgrade) is one pg_upgrade refuses: recover it first, by starting
        // and stopping it with its own major's programs.
        let control = as_user(old_bin.join("pg_controldata"))
            .arg(from_data)
            .output()
            .await
            .map_err(|e| format!("cannot run pg_controldata: {e}"))?;
        let clean = String::from_utf8_lossy(&control.stdout)
            .lines()
            .any(|l| l.starts_with("Database cluster state:") && l.ends_with("shut down"));
        if !clean {
            let socket_opts = format!(
                "{hba} -c listen_addresses='' -c unix_socket_directories='{}'",
                self.fs.path(work_dir).display()
            );
            // The server's output goes to a file: a server started with pg_ctl
            // would otherwise hold our pipes open, and reading them to their end
            // would wait for the server to stop.
            let log = self
                .fs
                .path(&work_dir.join("recovery.log"))
                .display()
                .to_string();
            for args in [
                vec![
                    "start",
                    "-w",
                    "-t",
                    "300",
                    "-l",
                    log.as_str(),
                    "-o",
                    socket_opts.as_str(),
                ],
                vec!["stop", "-w", "-m", "fast"],
            ] {
                let out = as_user(old_bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(from_data)
                    .args(&args)
                    .output()
                    .await
                    .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "PostgreSQL {from}'s cluster in {} was not shut down cleanly and cannot be recovered ({}): {} {}",
                        from_data.display(),
                        args[0],
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
        }
        initdb(&new_bin, &staging, user).await?;
        let out = as_user(new_bin.join("pg_upgrade"))
            .arg("--old-bindir")
            .arg(&old_bin)
            .arg("--new-bindir")
            .arg(&new_bin)
            .arg("--old-datadir")
            .arg(from_data)
            .arg("--new-datadir")
            .arg(&staging)
            .args([
                "--username=postgres",
                "--old-options",
                &hba,
                "--new-options",
                &hba,
            ])
            .output()
            .await
            .map_err(|e| format!("cannot run pg_upgrade: {e}"))?;
        if !out.status.success() {
            let _cleanup = std::fs::remove_dir_all(self.fs.path(&staging));
            let said = String::from_utf8_lossy(&out.stdout);
            let tail: Vec<&str> = said.lines().rev().take(15).collect();
            return Err(format!(
                "pg_upgrade {from} → {to} failed; the PostgreSQL {from} cluster in {} is unchanged:\n{}\n{}",
                from_data.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::fs::rename(self.fs.path(&staging), self.fs.path(to_data))
            .and_then(|()| std::fs::File::open(self.fs.path(work_dir))?.sync_all())
            .map_err(|e| format!("{}: {e}", to_data.display()))
    }

    async fn step(&self, step: &Step, state: &Mutex<RecordedState>) -> Result<(), String> {
        let sd = |e: host::systemd::SystemdError| e.to_string();
        match step {
            Step::MaskDistroUnit { unit, before } => {
                recorded(state)
                    .distro_units
                    .entry(unit.clone())
                    .or_insert_with(|| before.clone());
                if before.was_active || self.systemd.unit_fact(unit).await.map_err(sd)?.is_active()
                {
                    self.unit_job("stop", unit).await?;
                }
                self.systemd.mask(unit).await.map_err(sd)?;
            }
            // run() sends these to install_archive, which reports integrity errors apart.
            Step::InstallArchive { pin } => {
                return Err(format!(
                    "{} must be installed through install_archive",
                    pin.component
                ))
            }
            Step::BuildVenv { venv } => self.build_venv(venv).await?,
            // apt installed the new version already; the plan restarts the units onto
            // it and apply records the version once they are healthy.
            Step::PackageChanged { .. } => {}
            Step::InstallPackages { packages } => host::apt::install(packages, &self.apt)
                .await
                .map_err(|e| e.to_string())?,
            Step::CreateUser { user } => {
                host::create_system_user(&user.name, &user.home, &user.groups).await?;
                recorded(state).users.insert(user.name.clone());
            }
            Step::UpgradePostgres {
                from,
                to,
                from_data,
                to_data,
                user,
            } => {
                self.upgrade_postgres(*from, *to, from_data, to_data, user)
                    .await?;
                recorded(state)
                    .upgraded_postgres
                    .insert(from_data.display().to_string(), *to);
            }
            Step::EnsureDir { dir } => {
                let (uid, gid) = ids(&dir.owner, &dir.group)?;
                self.fs
                    .ensure_dir(&dir.path, dir.mode, uid, gid)
                    .map_err(|e| format!("{}: {e}", dir.path.display()))?;
            }
            Step::GenerateSecret { name } => {
                let value = host::new_secret(name).map_err(|e| e.to_string())?;
                let path = PathBuf::from(paths::SECRETS).join(name);
                self.fs
                    .write_atomic(&path, format!("{value}\n").as_bytes(), 0o600, 0, 0)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Step::InstallCertificate { tls, .. } => {
                crate::tls::install(self.fs, tls).map_err(|e| e.to_string())?;
            }
            Step::WriteFile { file, .. } => {
                let text = fill_secrets(&file.template, |n| host::gather::read_secret(self.fs, n))
                    .ok_or_else(|| {
                        format!("{}: a secret it names is missing", file.path.display())
                    })?;
                let (uid, gid) = ids(&file.owner, &file.group)?;
                self.fs
                    .write_atomic(&file.path, text.as_bytes(), file.mode, uid, gid)
                    .map_err(|e| format!("{}: {e}", file.path.display()))?;
                recorded(state)
                    .files
                    .insert(file.path.display().to_string());
            }
            Step::WriteUnit { unit, .. } => {
                self.fs
                    .write_atomic(&unit.path(), unit.content.as_bytes(), 0o644, 0, 0)
                    .map_err(|e| format!("{}: {e}", unit.name))?;
                recorded(state)
                    .files
                    .insert(unit.path().display().to_string());
            }
            Step::RemoveFile { path } => {
                self.fs
                    .remove_file(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                recorded(state).files.remove(&path.display().to_string());
            }
            Step::ReloadSystemd => {
                self.systemd.reload().await.map_err(sd)?;
                recorded(state).daemon_reload_pending = false;
            }
            Step::Init { provision } | Step::Provision { provision } => {
                self.provision(provision).await?;
                recorded(state)
                    .provisioned
                    .insert(provision.id(), provision.fingerprint());
            }
            Step::EnableUnits { units } => self.systemd.enable(units).await.map_err(sd)?,
            Step::DisableUnits { units } => self.systemd.disable(units).await.map_err(sd)?,
            Step::StartUnit { unit } => {
                self.unit_job("start", unit).await?;
                recorded(state).pending_restarts.remove(unit);
            }
            Step::RestartUnit { unit } => {
                self.unit_job("restart", unit).await?;
                recorded(state).pending_restarts.remove(unit);
            }
            Step::ReloadUnit { unit } => {
                self.unit_job("reload", unit).await?;
                recorded(state).pending_restarts.remove(unit);
            }
            Step::RecordPending {
                units,
                daemon_reload,
            } => {
                recorded(state)
                    .pending_restarts
                    .extend(units.iter().map(|(u, how)| (u.clone(), *how)));
                recorded(state).daemon_reload_pending |= daemon_reload;
            }
            Step::StopUnit { unit } => self.unit_job("stop", unit).await?,
            Step::RestoreDistroUnit { unit, before } => {
                self.systemd.unmask(unit).await.map_err(sd)?;
                self.systemd.reload().await.map_err(sd)?;
                if before.unit_file_state == "enabled" {
                    self.systemd
                        .enable(std::slice::from_ref(unit))
                        .await
                        .map_err(sd)?;
                }
                if before.was_active {
                    self.unit_job("start", unit).await?;
                }
                recorded(state).distro_units.remove(unit);
            }
            Step::DeleteUser { user } => {
                host::delete_system_user(user).await?;
                recorded(state).users.remove(user);
            }
            Step::RemoveTree { path } => match std::fs::remove_dir_all(self.fs.path(path)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("{}: {e}", path.display()))
                }
                _ => {}
            },
            Step::ForgetState => self
                .fs
                .remove_file(Path::new(paths::STATE_FILE))
                .map_err(|e| e.to_string())?,
            Step::RecordComponent {
                component,
                installed,
            } => recorded(state).record_component(component, *installed),
        }
        Ok(())
    }

    async fn provision(&self, provision: &Provision) -> Result<(), String> {
        match provision {
            Provision::PostgresInitdb {
                bin_dir,
                data_dir,
                user,
            } => initdb(bin_dir, data_dir, user).await,
            Provision::PostgresRoles {
                socket_dir,
                port,
                roles,
                worker_group,
            } => {
                let mut sql = String::from("\\set ON_ERROR_STOP on\n");
                for r in roles {
                    let password = host::gather::read_secret(self.fs, &r.password_secret)
                        .ok_or_else(|| format!("secret {} is missing", r.password_secret))?;
                    let role = quote_ident(&r.role);
                    sql.push_str(&format!(
                        "SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {rl})\\gexec\n\
                         ALTER ROLE {role} WITH LOGIN PASSWORD {pw};\n",
                        rl = quote_literal(&r.role),
                        pw = quote_literal(&password),
                    ));
                    if let Some(database) = &r.database {
                        sql.push_str(&format!(
                            "SELECT 'CREATE DATABASE {db} OWNER {role}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {dl})\\gexec\n\
                             REVOKE ALL ON DATABASE {db} FROM PUBLIC;\n",
                            db = quote_ident(database),
                            dl = quote_literal(database),
                        ));
                    }
                    for granted in &r.member_of {
                        if Some(granted) == worker_group.as_ref().map(|g| &g.role) {
                            // Created below, before the grants run.
                            continue;
                        }
                        sql.push_str(&format!("GRANT {} TO {role};\n", quote_ident(granted)));
                    }
                }
                sql.push_str(&worker_group_sql(roles, worker_group.as_ref()));
                run_psql(socket_dir, *port, &sql).await
            }
            Provision::PgBackRestStanza { user, .. } => {
                crate::backup::pitr::prepare_stanza(user).await
            }
        }
    }
}

/// The proxy variables curl's convention names (uv reads these, in either case).
fn is_proxy_variable(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy().to_ascii_lowercase();
    matches!(
        name.as_str(),
        "http_proxy" | "https_proxy" | "all_proxy" | "no_proxy"
    )
}

/// Runs uv with its own cache and no user configuration; never downloads a Python.
/// Runs uv as `user` (uid, gid; supplementary groups dropped), never as root.
async fn run_uv(
    uv: &Path,
    user: (u32, u32),
    args: &[&str],
    paths: &[&std::ffi::OsStr],
) -> Result<(), String> {
    let mut command = tokio::process::Command::new(uv);
    command.env_clear();
    // A site's egress proxy, as the daemon's unit was given it (a drop-in's
    // `Environment=`): apt and the archive fetcher read these themselves.
    for (name, value) in std::env::vars_os().filter(|(n, _)| is_proxy_variable(n)) {
        command.env(name, value);
    }
    let out = command
        .args(args)
        .args(paths)
        .uid(user.0)
        .gid(user.1)
        // Not the cache: uv refuses to run from inside its cache directory.
        .current_dir("/")
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", UV_CACHE)
        .env("UV_CACHE_DIR", UV_CACHE)
        .env("UV_NO_CONFIG", "1")
        .env("UV_PYTHON_DOWNLOADS", "never")
        // The host's trust store: a site's own CA (an internal index, a proxy).
        .env("UV_SYSTEM_CERTS", "1")
        .env("UV_NO_PROGRESS", "1")
        // Copies, never hard links into the cache: a venv handed to root must share
        // no inode with files the build user keeps owning.
        .env("UV_LINK_MODE", "copy")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", uv.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        Err(format!(
            "uv {}: {}",
            args.iter().take(2).copied().collect::<Vec<_>>().join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

/// The workers' group role, its members' grants, and the revocation of members no
/// longer listed: their login and sessions at once, the role itself when it owns
/// nothing (else it only leaves the group).
fn worker_group_sql(roles: &[PostgresRole], group: Option<&crate::model::WorkerGroup>) -> String {
    let name = crate::components::postgres::WORKERS_GROUP;
    let mut sql = String::new();
    if let Some(g) = group {
        let role = quote_ident(&g.role);
        sql.push_str(&format!(
            "SELECT 'CREATE ROLE {role} NOLOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {rl})\\gexec\n",
            rl = quote_literal(&g.role)
        ));
        for db in &g.databases {
            sql.push_str(&format!(
                "GRANT CONNECT ON DATABASE {} TO {role};\n",
                quote_ident(db)
            ));
        }
        for r in roles.iter().filter(|r| r.member_of.contains(&g.role)) {
            sql.push_str(&format!("GRANT {role} TO {};\n", quote_ident(&r.role)));
        }
        // The warehouse: a worker's pipelines load as that role (their connection
        // sets `role`), so what they create is the warehouse's, as on the primary.
        for other in &g.acts_as {
            sql.push_str(&format!("GRANT {} TO {role};\n", quote_ident(other)));
        }
        // What the group no longer needs (Superset's worker turned off for worker
        // hosts): the roles it acted as and the databases it connected to.
        let list = |items: &[String]| {
            items
                .iter()
                .map(|i| quote_literal(i))
                .collect::<Vec<_>>()
                .join(", ")
        };
        sql.push_str(&format!(
            "DO $narrow$\n\
             DECLARE r record;\n\
             BEGIN\n\
             FOR r IN SELECT g.rolname FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member\n\
             WHERE m.rolname = {gl} AND NOT (g.rolname = ANY (ARRAY[{acts}]::text[])) LOOP\n\
             EXECUTE format('REVOKE %I FROM %I', r.rolname, {gl});\n\
             END LOOP;\n\
             FOR r IN SELECT d.datname FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a JOIN pg_roles g ON g.oid = a.grantee\n\
             WHERE g.rolname = {gl} AND a.privilege_type = 'CONNECT' AND NOT (d.datname = ANY (ARRAY[{dbs}]::text[])) LOOP\n\
             EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM %I', r.datname, {gl});\n\
             END LOOP;\n\
             END\n\
             $narrow$;\n",
            gl = quote_literal(&g.role),
            acts = list(&g.acts_as),
            dbs = list(&g.databases),
        ));
    }
    let listed: Vec<String> = roles
        .iter()
        .filter(|r| r.member_of.iter().any(|m| m == name))
        .map(|r| quote_literal(&r.role))
        .collect();
    sql.push_str(&format!(
        "DO $revoke$\n\
         DECLARE r record;\n\
         BEGIN\n\
         FOR r IN SELECT m.rolname FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member\n\
         WHERE g.rolname = {gl} AND NOT (m.rolname = ANY (ARRAY[{list}]::text[])) LOOP\n\
         EXECUTE format('ALTER ROLE %I NOLOGIN PASSWORD NULL', r.rolname);\n\
         PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = r.rolname;\n\
         BEGIN\n\
         EXECUTE format('DROP ROLE %I', r.rolname);\n\
         EXCEPTION WHEN dependent_objects_still_exist THEN\n\
         EXECUTE format('REVOKE %I FROM %I', {gl}, r.rolname);\n\
         END;\n\
         END LOOP;\n\
         END\n\
         $revoke$;\n",
        gl = quote_literal(name),
        list = listed.join(", "),
    ));
    sql
}

/// Feeds SQL to psql on stdin (passwords never appear in a process's arguments).
async fn run_psql(socket_dir: &Path, port: u16, sql: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("psql")
        .arg("-h")
        .arg(socket_dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-q",
            "-X",
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(sql.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "psql: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod worker_group_tests {
    /// What the group may act as and connect to is granted, and what it no longer
    /// may is revoked (checked on PostgreSQL 15 by hand: a group granted `superset`
    /// and CONNECT on its database loses both when neither is listed).
    #[test]
    fn the_workers_group_is_narrowed_to_what_is_listed() {
        let roles = vec![crate::model::PostgresRole {
            role: "worker_w1".into(),
            password_secret: "x".into(),
            database: None,
            member_of: vec!["analytics_workers".into()],
        }];
        let group = crate::model::WorkerGroup {
            role: "analytics_workers".into(),
            databases: vec!["airflow".into(), "warehouse".into()],
            acts_as: vec!["warehouse".into()],
        };
        let sql = super::worker_group_sql(&roles, Some(&group));
        for want in [
            "GRANT \"warehouse\" TO \"analytics_workers\";\n",
            "NOT (g.rolname = ANY (ARRAY['warehouse']::text[])) LOOP\nEXECUTE format('REVOKE %I FROM %I', r.rolname, 'analytics_workers');",
            "NOT (d.datname = ANY (ARRAY['airflow', 'warehouse']::text[])) LOOP\nEXECUTE format('REVOKE CONNECT ON DATABASE %I FROM %I', r.datname, 'analytics_workers');",
        ] {
            assert!(sql.contains(want), "{want} in {sql}");
        }
    }
}

#[cfg(test)]
mod uv_environment_tests {
    /// uv is given a site's proxy (in either case, as curl's convention has it) and
    /// nothing else of the daemon's environment.
    #[test]
    fn only_proxy_variables_reach_uv() {
        for name in ["http_proxy", "HTTPS_PROXY", "no_proxy", "ALL_PROXY"] {
            assert!(super::is_proxy_variable(name.as_ref()), "{name}");
        }
        for name in [
            "PATH",
            "UV_INDEX_URL",
            "proxy",
            "HTTP_PROXY_USER",
            "LD_PRELOAD",
        ] {
            assert!(!super::is_proxy_variable(name.as_ref()), "{name}");
        }
    }
}
