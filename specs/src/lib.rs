//! tend's spec language: typed specs, YAML loading with file:line:column diagnostics,
//! validation, canonical hashing and JSON Schema export. Pure: no async, no engines.

pub mod agent_config;
pub mod backup;
pub mod bounds;
pub mod calendar;
pub mod de;
pub mod desired;
pub mod diag;
pub mod files;
pub mod hash;
pub mod load;
pub mod quantity;
pub mod scheduled;
pub mod schema;
pub mod service;
pub mod timer;
pub mod yaml;

pub use desired::{Backup, Desired, Env, Secret, Service, Timer};
pub use diag::{Diagnostic, Location};
pub use load::{LoadOptions, load_path, load_path_with, load_str, load_str_with};
