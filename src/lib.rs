//! analytics-stack: an installer daemon that turns one systemd host into an analytics
//! platform. The flow is config → plan (pure) → fetch/install → render → systemd → health;
//! see docs/ARCHITECTURE.md.

pub mod config;
pub mod components;
pub mod model;
pub mod units;
pub mod util;
pub mod facts;
pub mod plan;
pub mod state;
pub mod exec;
pub mod health;
pub mod host;
pub mod landing;
pub mod stack;
pub mod daemon;
pub mod client;
