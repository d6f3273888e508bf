//! A long operation as a bus object: progress as properties (for clients that
//! connect late) and signals, a result when it ends, and Cancel.

use super::BusError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use zbus::interface;
use zbus::object_server::SignalEmitter;

pub struct Job {
    pub kind: String,
    pub state: String,
    pub steps_done: u32,
    pub steps_total: u32,
    pub description: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub error_name: String,
    pub error_message: String,
    pub result: String,
    pub cancel: Arc<AtomicBool>,
    pub admin_group: String,
    /// Who started the job: with root, the only one who may read it. Its progress
    /// and result (which can quote journal lines of the stack's units) are sent to
    /// this connection alone, never broadcast.
    pub caller_uid: u32,
}

/// Whether `uid` may cancel a job `caller_uid` started.
fn may_cancel(uid: u32, caller_uid: u32) -> bool {
    uid == 0 || uid == caller_uid
}

impl Job {
    async fn readable(
        &self,
        conn: &zbus::Connection,
        header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<()> {
        // No header: the daemon itself reads the value to send it to the caller.
        let Some(header) = header else {
            return Ok(());
        };
        let uid = super::auth::caller_uid(conn, &header)
            .await
            .map_err(|e| zbus::fdo::Error::AccessDenied(e.message()))?;
        if uid == 0 || uid == self.caller_uid {
            Ok(())
        } else {
            Err(zbus::fdo::Error::AccessDenied(format!(
                "uid {uid} may not read this job: only root and its caller may"
            )))
        }
    }
}

#[interface(name = "org.analyticsstack.Stack1.Job")]
impl Job {
    /// Asks the job to stop before its next step. Only its caller and root may: a
    /// member of `admin_group` cannot cut short root's restore or `worker remove`
    /// (left half-done, or written but not applied).
    async fn cancel(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        let uid =
            super::auth::require_admin(conn, &header, &self.admin_group, "cancel a job").await?;
        if !may_cancel(uid, self.caller_uid) {
            return Err(BusError::AccessDenied(format!(
                "uid {uid} may not cancel this job: only root and the one who started it may"
            )));
        }
        self.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }

    #[zbus(property)]
    async fn kind(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<String> {
        self.readable(conn, header).await?;
        Ok(self.kind.clone())
    }
    /// `running`, `succeeded`, `failed` or `cancelled`.
    #[zbus(property)]
    async fn state(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<String> {
        self.readable(conn, header).await?;
        Ok(self.state.clone())
    }
    #[zbus(property)]
    async fn steps_done(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<u32> {
        self.readable(conn, header).await?;
        Ok(self.steps_done)
    }
    #[zbus(property)]
    async fn steps_total(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<u32> {
        self.readable(conn, header).await?;
        Ok(self.steps_total)
    }
    /// Bytes of the current download so far.
    #[zbus(property)]
    async fn bytes_done(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<u64> {
        self.readable(conn, header).await?;
        Ok(self.bytes_done)
    }
    /// Size of the current download (0: not known).
    #[zbus(property)]
    async fn bytes_total(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<u64> {
        self.readable(conn, header).await?;
        Ok(self.bytes_total)
    }
    /// What the job is doing now.
    #[zbus(property)]
    async fn description(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<String> {
        self.readable(conn, header).await?;
        Ok(self.description.clone())
    }
    /// The short error name (`Failed`, `Conflict`, …) once failed.
    #[zbus(property)]
    async fn error_name(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<String> {
        self.readable(conn, header).await?;
        Ok(self.error_name.clone())
    }
    #[zbus(property)]
    async fn error_message(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<String> {
        self.readable(conn, header).await?;
        Ok(self.error_message.clone())
    }
    /// JSON report once succeeded.
    #[zbus(property)]
    async fn result(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Option<zbus::message::Header<'_>>,
    ) -> zbus::fdo::Result<String> {
        self.readable(conn, header).await?;
        Ok(self.result.clone())
    }

    #[zbus(signal)]
    pub async fn progress(
        emitter: &SignalEmitter<'_>,
        done: u32,
        total: u32,
        description: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn bytes(emitter: &SignalEmitter<'_>, done: u64, total: u64) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn finished(
        emitter: &SignalEmitter<'_>,
        state: &str,
        error_name: &str,
        error_message: &str,
    ) -> zbus::Result<()>;
}

impl Job {
    /// A job of `kind`, running.
    pub fn new(kind: &str, cancel: Arc<AtomicBool>, admin_group: String, caller_uid: u32) -> Self {
        Job {
            kind: kind.into(),
            state: "running".into(),
            steps_done: 0,
            steps_total: 0,
            description: "planning".into(),
            bytes_done: 0,
            bytes_total: 0,
            error_name: String::new(),
            error_message: String::new(),
            result: String::new(),
            cancel,
            admin_group,
            caller_uid,
        }
    }

    pub fn finish_with(&mut self, outcome: &Result<String, BusError>) {
        match outcome {
            Ok(result) => {
                self.state = "succeeded".into();
                self.result = result.clone();
            }
            Err(e) => {
                self.state = if matches!(e, BusError::Cancelled(_)) {
                    "cancelled".into()
                } else {
                    "failed".into()
                };
                self.error_name = e.short_name().into();
                self.error_message = e.message();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_job_is_cancelled_by_its_caller_or_root_only() {
        assert!(super::may_cancel(0, 1000));
        assert!(super::may_cancel(1000, 1000));
        assert!(!super::may_cancel(1001, 1000));
        assert!(
            !super::may_cancel(1000, 0),
            "an admin cannot cancel root's job"
        );
    }
}
