//! analytics-stack: an installer daemon that turns one systemd host into an analytics
//! platform. The flow is config → plan (pure) → fetch/install → render → systemd → health;
//! see docs/ARCHITECTURE.md.

pub mod artifact;
pub mod backup;
pub mod budget;
pub mod bundle;
pub mod client;
pub mod components;
pub mod config;
pub mod daemon;
pub mod exec;
pub mod facts;
pub mod health;
pub mod host;
pub mod landing;
pub mod model;
pub mod plan;
pub mod stack;
pub mod state;
pub mod tls;
pub mod units;
pub mod upgrade;
pub mod util;
pub mod workers;
