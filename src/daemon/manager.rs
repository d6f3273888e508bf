//! `org.analyticsstack.Stack1.Manager` at `/org/analyticsstack/Stack1`.

use super::job::Job;
use super::{auth, BusError, OBJECT_PATH};
use crate::stack::{BundleSource, Stack};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use zbus::interface;
use zbus::zvariant::OwnedObjectPath;

pub struct Manager {
    /// `None` only when the interface is built to print its introspection.
    pub stack: Option<Arc<Stack>>,
    /// Held by the one mutating operation allowed at a time (and, for a moment every
    /// 15 s, by the background refresh of the landing page).
    pub busy: Arc<Mutex<()>>,
    /// True while the background refresh holds `busy`: an operation then waits for
    /// it rather than being refused.
    pub refreshing: Arc<AtomicBool>,
    pub next_job: AtomicU32,
}

impl Manager {
    async fn apply_from(
        &self,
        conn: &zbus::Connection,
        header: &zbus::message::Header<'_>,
        bundle: Option<(std::fs::File, String)>,
    ) -> Result<OwnedObjectPath, BusError> {
        let caller = self.authorize(conn, header, "apply").await?;
        let bundle = bundle.map(|(file, name)| BundleSource::File {
            file,
            name,
            caller_uid: caller.uid,
        });
        let stack = self.stack()?;
        // Refuse a bad configuration at once rather than through the job.
        stack.config()?;
        let guard = self.try_busy().await?;
        self.start_job(
            conn,
            caller,
            "apply",
            guard,
            stack,
            |stack, cancel, progress| async move {
                stack
                    .apply(&cancel, &progress, bundle)
                    .await
                    .map_err(BusError::from)
                    .and_then(|report| to_json(&report))
            },
        )
        .await
    }

    pub fn new(stack: Option<Arc<Stack>>) -> Self {
        Manager {
            stack,
            busy: Arc::new(Mutex::new(())),
            refreshing: Arc::new(AtomicBool::new(false)),
            next_job: AtomicU32::new(1),
        }
    }

    fn stack(&self) -> Result<Arc<Stack>, BusError> {
        self.stack
            .clone()
            .ok_or_else(|| BusError::Failed("daemon has no stack".into()))
    }

    fn admin_group(&self) -> String {
        self.stack
            .as_ref()
            .and_then(|s| s.config().ok())
            .map(|c| c.stack.admin_group.into())
            .unwrap_or_default()
    }

    async fn authorize(
        &self,
        conn: &zbus::Connection,
        header: &zbus::message::Header<'_>,
        what: &str,
    ) -> Result<Caller, BusError> {
        let uid = auth::require_admin(conn, header, &self.admin_group(), what).await?;
        let name = header
            .sender()
            .ok_or_else(|| BusError::AccessDenied("message has no sender".into()))?
            .to_owned();
        Ok(Caller { uid, name })
    }

    /// Root alone (not the admin group): for what hands out every secret.
    async fn authorize_root(
        &self,
        conn: &zbus::Connection,
        header: &zbus::message::Header<'_>,
        what: &str,
    ) -> Result<Caller, BusError> {
        let caller = self.authorize(conn, header, what).await?;
        if caller.uid != 0 {
            return Err(BusError::AccessDenied(format!(
                "uid {} may not {what}: only root may",
                caller.uid
            )));
        }
        Ok(caller)
    }

    async fn try_busy(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, BusError> {
        let busy = || BusError::Busy("another operation is running; try again when it ends".into());
        match self.busy.clone().try_lock_owned() {
            Ok(guard) => Ok(guard),
            // The landing page's refresh takes a few seconds at most: wait for it.
            Err(_) if self.refreshing.load(Ordering::SeqCst) => {
                tokio::time::timeout(Duration::from_secs(30), self.busy.clone().lock_owned())
                    .await
                    .map_err(|_| busy())
            }
            Err(_) => Err(busy()),
        }
    }

    async fn control(
        &self,
        conn: &zbus::Connection,
        header: &zbus::message::Header<'_>,
        component: &str,
        verb: &'static str,
    ) -> Result<(), BusError> {
        self.authorize(conn, header, &format!("{verb} components"))
            .await?;
        let stack = self.stack()?;
        stack.component_units(component)?;
        let _guard = self.try_busy().await?;
        super::notify::notify(&format!("STATUS={verb} {component}"));
        let result = stack.control(component, verb).await;
        super::notify::notify("STATUS=idle");
        Ok(result?)
    }
}

/// A file descriptor the caller passed, if it is a regular file.
fn regular_file(
    fd: zbus::zvariant::OwnedFd,
    name: &str,
    what: &str,
) -> Result<std::fs::File, BusError> {
    let file = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
    if file.metadata().is_ok_and(|m| m.file_type().is_file()) {
        Ok(file)
    } else {
        Err(BusError::InvalidConfig(format!(
            "{}: {what} must be a regular file",
            crate::util::printable(name)
        )))
    }
}

/// Who called a mutating method: its uid and its connection's unique name.
struct Caller {
    uid: u32,
    name: zbus::names::UniqueName<'static>,
}

/// What the executor reports, on its way to the job object.
enum Update {
    Step(u32, u32, String),
    Bytes(u64, u64),
}

/// Sends progress to the job's forwarder; download bytes at most every 200 ms.
struct ChannelProgress {
    tx: tokio::sync::mpsc::UnboundedSender<Update>,
    last_bytes: std::sync::Mutex<Option<std::time::Instant>>,
}

impl crate::exec::Progress for ChannelProgress {
    fn step(&self, done: usize, total: usize, description: &str) {
        // A closed channel means the job object is gone: nobody to tell.
        let _nobody_listening =
            self.tx
                .send(Update::Step(done as u32, total as u32, description.into()));
    }
    fn bytes(&self, done: u64, total: Option<u64>) {
        let mut last = self.last_bytes.lock().unwrap_or_else(|p| p.into_inner());
        let finished = Some(done) == total;
        if finished || last.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            *last = Some(std::time::Instant::now());
            let _nobody_listening = self.tx.send(Update::Bytes(done, total.unwrap_or(0)));
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, BusError> {
    serde_json::to_string(v).map_err(|e| BusError::Failed(e.to_string()))
}

impl Manager {
    /// Publishes a job object at once and runs `work` behind it: progress flows to
    /// the job's properties and signals, its result ends it, and `guard` (the
    /// one-operation-at-a-time lock) is held until then.
    async fn start_job<F, Fut>(
        &self,
        conn: &zbus::Connection,
        caller: Caller,
        kind: &'static str,
        guard: tokio::sync::OwnedMutexGuard<()>,
        stack: Arc<Stack>,
        work: F,
    ) -> Result<OwnedObjectPath, BusError>
    where
        F: FnOnce(Arc<Stack>, Arc<AtomicBool>, ChannelProgress) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<String, BusError>> + Send + 'static,
    {
        let id = self.next_job.fetch_add(1, Ordering::SeqCst);
        let path = OwnedObjectPath::try_from(format!("{OBJECT_PATH}/job/{id}"))
            .map_err(|e| BusError::Failed(e.to_string()))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job::new(kind, cancel.clone(), self.admin_group(), caller.uid);
        conn.object_server().at(&path, job).await?;
        let iface = conn.object_server().interface::<_, Job>(&path).await?;
        // Progress and results go to the caller's connection only.
        let emitter = zbus::object_server::SignalEmitter::new(conn, path.clone())?
            .set_destination(caller.name.into())
            .into_owned();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Update>();

        // Progress: properties first (late clients read them), then the signal.
        let progress_iface = iface.clone();
        let progress_emitter = emitter.clone();
        let forward = tokio::spawn(async move {
            let emitter = &progress_emitter;
            while let Some(update) = rx.recv().await {
                let results = match update {
                    Update::Step(done, total, description) => {
                        {
                            let mut j = progress_iface.get_mut().await;
                            j.steps_done = done;
                            j.steps_total = total;
                            j.description = description.clone();
                            j.bytes_done = 0;
                            j.bytes_total = 0;
                        }
                        let j = progress_iface.get().await;
                        vec![
                            j.steps_done_changed(emitter).await,
                            j.steps_total_changed(emitter).await,
                            j.description_changed(emitter).await,
                            Job::progress(emitter, done, total, &description).await,
                        ]
                    }
                    Update::Bytes(done, total) => {
                        {
                            let mut j = progress_iface.get_mut().await;
                            j.bytes_done = done;
                            j.bytes_total = total;
                        }
                        let j = progress_iface.get().await;
                        vec![
                            j.bytes_done_changed(emitter).await,
                            j.bytes_total_changed(emitter).await,
                            Job::bytes(emitter, done, total).await,
                        ]
                    }
                };
                for r in results {
                    if let Err(e) = r {
                        tracing::warn!("cannot send progress: {e}");
                    }
                }
            }
        });

        let conn = conn.clone();
        let job_path = path.clone();
        tokio::spawn(async move {
            super::notify::notify(&format!("STATUS={kind}ing"));
            let progress = ChannelProgress {
                tx,
                last_bytes: std::sync::Mutex::new(None),
            };
            let outcome: Result<String, BusError> = work(stack, cancel, progress).await;
            if let Err(e) = forward.await {
                tracing::warn!("progress forwarding ended abnormally: {e}");
            }
            match &outcome {
                Ok(_) => tracing::info!("{kind} succeeded"),
                Err(e) => tracing::error!("{kind} failed: {}", e.message()),
            }
            {
                let mut j = iface.get_mut().await;
                j.finish_with(&outcome);
            }
            crate::util::release_free_memory();
            let emitter = &emitter;
            let j = iface.get().await;
            for r in [
                j.state_changed(emitter).await,
                j.error_name_changed(emitter).await,
                j.error_message_changed(emitter).await,
                j.result_changed(emitter).await,
                Job::finished(emitter, &j.state, &j.error_name, &j.error_message).await,
            ] {
                if let Err(e) = r {
                    tracing::warn!("cannot send job result: {e}");
                }
            }
            drop(j);
            // The next operation may start now; the job object stays readable.
            drop(guard);
            super::notify::notify("STATUS=idle");
            // Keep the finished job readable for a while, then drop it.
            tokio::time::sleep(Duration::from_secs(600)).await;
            if let Err(e) = conn.object_server().remove::<Job, _>(&job_path).await {
                tracing::debug!("job {job_path} already gone: {e}");
            }
        });
        Ok(path)
    }
}

#[interface(name = "org.analyticsstack.Stack1.Manager")]
impl Manager {
    /// What `Apply` would do, as JSON (`steps`, `conflicts`, `plan`). Changes nothing.
    async fn plan(&self) -> Result<String, BusError> {
        to_json(&self.stack()?.plan().await?)
    }

    /// Starts bringing the host to the configured state; returns the job to watch.
    async fn apply(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<OwnedObjectPath, BusError> {
        self.apply_from(conn, &header, None).await
    }

    /// Like Apply, installing only from the offline bundle the caller opened and
    /// passes as `bundle` (so the daemon reads only what the caller may read);
    /// `name` is how the caller names it in messages. Anything but a regular file is
    /// refused at once; the bundle is verified whole before anything changes.
    async fn apply_bundle(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
        bundle: zbus::zvariant::OwnedFd,
        name: String,
    ) -> Result<OwnedObjectPath, BusError> {
        let file = regular_file(bundle, &name, "a bundle")?;
        self.apply_from(conn, &header, Some((file, crate::util::printable(&name))))
            .await
    }

    /// Removes every unit, user, directory and file the stack created and restores
    /// the distribution's units it masked; data too when `purge_data`. Returns the job.
    async fn uninstall(
        &self,
        purge_data: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<OwnedObjectPath, BusError> {
        let caller = self.authorize(conn, &header, "uninstall").await?;
        let stack = self.stack()?;
        let guard = self.try_busy().await?;
        self.start_job(
            conn,
            caller,
            "uninstall",
            guard,
            stack,
            move |stack, cancel, progress| async move {
                stack
                    .uninstall(purge_data, &cancel, &progress)
                    .await
                    .map_err(BusError::from)
                    .and_then(|report| to_json(&report))
            },
        )
        .await
    }

    /// Writes a backup of the stack (databases, secrets, configuration, DAGs and
    /// pipelines, Grafana's database; Prometheus's and Loki's data with
    /// `with_telemetry`) into `output`, a regular file the caller opened for
    /// writing, and syncs it; the caller renames it into place once the job
    /// succeeds. Root only: a backup holds every secret. Returns the job.
    async fn backup(
        &self,
        output: zbus::zvariant::OwnedFd,
        name: String,
        with_telemetry: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<OwnedObjectPath, BusError> {
        let caller = self.authorize_root(conn, &header, "make a backup").await?;
        let file = regular_file(output, &name, "a backup")?;
        let stack = self.stack()?;
        let guard = self.try_busy().await?;
        self.start_job(
            conn,
            caller,
            "backup",
            guard,
            stack,
            move |stack, cancel, progress| async move {
                stack
                    .backup(file, with_telemetry, &cancel, &progress)
                    .await
                    .map_err(BusError::from)
                    .and_then(|report| to_json(&report))
            },
        )
        .await
    }

    /// Restores the backup the caller opened and passes as `backup` (`name` is how
    /// the caller names it): verified whole before anything changes, then the
    /// configuration, secrets and CA, an apply, the databases and data, and the
    /// services healthy again. Root only. Returns the job.
    async fn restore(
        &self,
        backup: zbus::zvariant::OwnedFd,
        name: String,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<OwnedObjectPath, BusError> {
        let caller = self
            .authorize_root(conn, &header, "restore a backup")
            .await?;
        let file = regular_file(backup, &name, "a backup")?;
        let stack = self.stack()?;
        let guard = self.try_busy().await?;
        let name = crate::util::printable(&name);
        self.start_job(
            conn,
            caller,
            "restore",
            guard,
            stack,
            move |stack, cancel, progress| async move {
                stack
                    .restore(file, &name, &cancel, &progress)
                    .await
                    .map_err(BusError::from)
                    .and_then(|report| to_json(&report))
            },
        )
        .await
    }

    /// Brings the stack's databases back to `target` ("latest", or a time; UTC
    /// unless it carries an offset) from pgBackRest's repository: a base backup
    /// restored and the archived WAL replayed. Root only.
    async fn restore_to(
        &self,
        target: String,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<OwnedObjectPath, BusError> {
        let caller = self
            .authorize_root(conn, &header, "restore the databases to a point in time")
            .await?;
        let target =
            crate::backup::pitr::RestoreTarget::parse(&target).map_err(BusError::Conflict)?;
        let stack = self.stack()?;
        let guard = self.try_busy().await?;
        self.start_job(
            conn,
            caller,
            "restore --to",
            guard,
            stack,
            move |stack, cancel, progress| async move {
                stack
                    .restore_to(target, &cancel, &progress)
                    .await
                    .map_err(BusError::from)
                    .and_then(|report| to_json(&report))
            },
        )
        .await
    }

    /// Lists `name` as a worker host and applies (its PostgreSQL role and Redis user
    /// with new passwords); the job's result holds its token, printed once. Root only.
    async fn worker_add(
        &self,
        name: String,
        address: String,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<OwnedObjectPath, BusError> {
        let caller = self.authorize_root(conn, &header, "add a worker").await?;
        let stack = self.stack()?;
        let guard = self.try_busy().await?;
        self.start_job(
            conn,
            caller,
            "worker add",
            guard,
            stack,
            move |stack, cancel, progress| async move {
                let added = stack
                    .worker_add(&name, &address, &cancel, &progress)
                    .await
                    .map_err(BusError::from)?;
                // NGINX's user exists now: it may reach the enrollment door.
                super::enroll::grant_door_access();
                to_json(&added)
            },
        )
        .await
    }

    /// Takes `name` off the worker hosts and applies: its logins stop working.
    /// Root only.
    async fn worker_remove(
        &self,
        name: String,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<OwnedObjectPath, BusError> {
        let caller = self
            .authorize_root(conn, &header, "remove a worker")
            .await?;
        let stack = self.stack()?;
        let guard = self.try_busy().await?;
        self.start_job(
            conn,
            caller,
            "worker remove",
            guard,
            stack,
            move |stack, cancel, progress| async move {
                stack
                    .worker_remove(&name, &cancel, &progress)
                    .await
                    .map_err(BusError::from)
                    .map(|()| "{}".to_string())
            },
        )
        .await
    }

    /// The worker hosts (JSON): names, when added, their logins' names. Root only.
    async fn worker_list(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<String, BusError> {
        self.authorize_root(conn, &header, "list the workers")
            .await?;
        to_json(&self.stack()?.worker_list()?)
    }

    /// On a worker host: takes the token `worker add` printed on the primary, fetches
    /// the stack CA's certificate from `primary` and checks it against the token's
    /// pin, then stores the CA, the two logins (0600) and `stack.d/10-join.toml`.
    /// Nothing is written unless all of that succeeded; `Apply` then installs the
    /// worker. Returns JSON: name, primary, the CA's fingerprint. Root only.
    async fn join(
        &self,
        primary: String,
        token: String,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<String, BusError> {
        self.authorize_root(conn, &header, "join a primary").await?;
        let stack = self.stack()?;
        let _guard = self.try_busy().await?;
        let joined = stack.join(&primary, &token).await?;
        to_json(&joined)
    }

    /// Lets apply try again a version `component` was rolled back from; returns the
    /// version that was held.
    async fn unhold(
        &self,
        component: String,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<String, BusError> {
        self.authorize(conn, &header, "unhold").await?;
        let stack = self.stack()?;
        let _guard = self.try_busy().await?;
        Ok(stack.unhold(&component)?)
    }

    /// Puts an upgraded application back on the version it was upgraded from (kept
    /// on disk), its database restored from the backup taken before the upgrade;
    /// waits until it is healthy. Returns the job.
    async fn rollback(
        &self,
        component: String,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<OwnedObjectPath, BusError> {
        let caller = self.authorize(conn, &header, "roll back").await?;
        let stack = self.stack()?;
        let guard = self.try_busy().await?;
        self.start_job(
            conn,
            caller,
            "rollback",
            guard,
            stack,
            move |stack, _cancel, _progress| async move {
                stack
                    .rollback(&component)
                    .await
                    .map_err(BusError::from)
                    .and_then(|report| to_json(&report))
            },
        )
        .await
    }

    /// Every enabled component with its units, health and version, as JSON.
    async fn status(&self) -> Result<String, BusError> {
        let report = to_json(&self.stack()?.status().await?);
        // A status renders the whole configuration and probes every component.
        crate::util::release_free_memory();
        report
    }

    /// The alerts Alertmanager holds (firing, silenced ones too), as JSON.
    async fn alerts(&self) -> Result<String, BusError> {
        to_json(&self.stack()?.alerts().await?)
    }

    /// (name, description, enabled, units) of every component the stack knows.
    async fn list_components(&self) -> Result<Vec<(String, String, bool, Vec<String>)>, BusError> {
        let (_, desired) = self.stack()?.desired()?;
        Ok(crate::components::KNOWN
            .iter()
            .map(|(name, description)| {
                let enabled = desired.iter().any(|s| s.name == *name);
                (
                    name.to_string(),
                    description.to_string(),
                    enabled,
                    crate::components::unit_names(name),
                )
            })
            .collect())
    }

    async fn start(
        &self,
        component: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        self.control(conn, &header, component, "start").await
    }

    async fn stop(
        &self,
        component: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        self.control(conn, &header, component, "stop").await
    }

    async fn restart(
        &self,
        component: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        self.control(conn, &header, component, "restart").await
    }

    /// Generated logins and connection URLs as JSON ("" = every component). Root only.
    async fn credentials(
        &self,
        component: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<String, BusError> {
        let uid = auth::caller_uid(conn, &header).await?;
        if uid != 0 {
            return Err(BusError::AccessDenied(format!(
                "uid {uid} may not read credentials: only root may"
            )));
        }
        let name = (!component.is_empty()).then_some(component);
        to_json(&self.stack()?.credentials(name)?)
    }

    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").into()
    }

    /// True while a mutating operation runs.
    #[zbus(property)]
    fn busy(&self) -> bool {
        self.busy.try_lock().is_err()
    }
}

/// The introspection XML of both interfaces, as committed under packaging/.
pub fn introspection_xml() -> String {
    use zbus::object_server::Interface;
    let mut xml = String::from("<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n");
    Manager::new(None).introspect_to_writer(&mut xml, 1);
    let job = Job::new("", Arc::new(AtomicBool::new(false)), String::new(), 0);
    job.introspect_to_writer(&mut xml, 1);
    xml.push_str("</node>\n");
    xml
}
