//! The D-Bus face of the daemon: `org.analyticsstack.Stack1` on the system bus.
//! Errors are typed here, at the bus boundary, and nowhere else.

pub mod auth;
pub mod enroll;
pub mod job;
pub mod manager;
pub mod notify;

pub const BUS_NAME: &str = "org.analyticsstack.Stack1";
pub const OBJECT_PATH: &str = "/org/analyticsstack/Stack1";
pub const MANAGER_IFACE: &str = "org.analyticsstack.Stack1.Manager";
pub const JOB_IFACE: &str = "org.analyticsstack.Stack1.Job";

/// The errors clients can branch on; names are `org.analyticsstack.Stack1.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.analyticsstack.Stack1.Error")]
pub enum BusError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidConfig(String),
    Busy(String),
    AccessDenied(String),
    Conflict(String),
    NotFound(String),
    Failed(String),
    Cancelled(String),
    Integrity(String),
}

impl From<crate::stack::StackError> for BusError {
    fn from(e: crate::stack::StackError) -> Self {
        use crate::stack::StackError as S;
        let text = e.to_string();
        match e {
            // A budget the components cannot meet is the configuration's problem.
            S::InvalidConfig(_) | S::Budget(_) => BusError::InvalidConfig(text),
            S::Conflict(_) => BusError::Conflict(text),
            S::NotFound(_) => BusError::NotFound(text),
            S::Failed(_) => BusError::Failed(text),
            S::Cancelled(_) => BusError::Cancelled(text),
            S::Integrity(_) => BusError::Integrity(text),
        }
    }
}

impl BusError {
    /// The short name (`Busy`, `Failed`, …) used in job results.
    pub fn short_name(&self) -> &'static str {
        match self {
            BusError::ZBus(_) => "Failed",
            BusError::InvalidConfig(_) => "InvalidConfig",
            BusError::Busy(_) => "Busy",
            BusError::AccessDenied(_) => "AccessDenied",
            BusError::Conflict(_) => "Conflict",
            BusError::NotFound(_) => "NotFound",
            BusError::Failed(_) => "Failed",
            BusError::Cancelled(_) => "Cancelled",
            BusError::Integrity(_) => "Integrity",
        }
    }
    pub fn message(&self) -> String {
        match self {
            BusError::ZBus(e) => e.to_string(),
            BusError::InvalidConfig(m)
            | BusError::Busy(m)
            | BusError::AccessDenied(m)
            | BusError::Conflict(m)
            | BusError::NotFound(m)
            | BusError::Failed(m)
            | BusError::Cancelled(m)
            | BusError::Integrity(m) => m.clone(),
        }
    }
}
