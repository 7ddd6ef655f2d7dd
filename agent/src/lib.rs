//! tend: a declarative reconciler for one host. Specs are loaded (`tend_specs`), live state
//! is observed through an engine adapter (`docker`), a pure planner (`plan`) decides what
//! to do and why, and `apply` executes it in dependency order.

pub mod agent;
pub mod api;
pub mod apply;
pub mod backup;
pub mod backups;
pub mod cli;
pub mod docker;
pub mod engine;
pub mod jobs;
pub mod locks;
pub mod maintain;
pub mod metrics;
pub mod model;
pub mod output;
pub mod plan;
pub mod quiesce;
pub mod scheduler;
pub mod secrets;
pub mod source;
pub mod state;
pub mod status;
pub mod systemd;
pub mod time;
pub mod units;
