//! Backups. The archive engine that `kind: Backup` runs on — filesystem only, no engines, no
//! spec types: callers hand in plain paths, readers and rules:
//!
//! - [`archive`]: writing archives safely (temporary name, fsync, rename, never overwrite),
//!   verifying them with a full read, and extracting them all or nothing, refusing anything
//!   that could write outside the target.
//! - [`catalog`]: the destination is the catalog — layout rendering, the manifest beside each
//!   archive, and listing what a destination holds, leftovers of interrupted runs included.
//! - [`retention`]: which archives to keep (pure).
//! - [`remote`]: copies on another host through rsync — listing one, and removing what its
//!   retention drops.
//!
//! And what runs it, with engines and specs, failing with one [`BackupError`]: [`run`] (a backup run), [`quiesce`] (stopping
//! services for it and starting them again), [`copies`], [`prune`] (retention applied,
//! pins), [`restore`], [`drill`] and [`health`].

pub mod archive;
pub mod catalog;
pub mod copies;
pub mod drill;
mod error;
pub mod health;
pub mod prune;
pub mod quiesce;
pub mod remote;
pub mod restore;
pub mod retention;
pub mod run;

pub use error::BackupError;
