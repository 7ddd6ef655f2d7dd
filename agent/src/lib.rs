//! tend: a declarative reconciler for one host. Specs are loaded (`tend_specs`), live state
//! is observed through the engine adapters (`engine`), a pure planner decides what to do
//! and why, and the executor applies it in dependency order (`reconcile`); the agent keeps
//! doing so (`daemon`). Jobs, backups and maintenance windows are capabilities of their
//! own (`jobs`, `backup`, `maintain`); `cli` is the command line.

pub mod backup;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod engine;
pub mod host;
pub mod jobs;
pub mod maintain;
pub mod reconcile;
pub mod sim;
pub mod support;
