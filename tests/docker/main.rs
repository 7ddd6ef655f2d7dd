//! Integration tests of `tend` against a real Docker daemon. They fail, never skip, when
//! the daemon or the test image is missing: run `scripts/test.sh` to set both up.

#[path = "../harness/mod.rs"]
mod harness;

#[path = "../harness/bad_spec_corpus.rs"]
// `Case::root` serves only the loader's test in tend-specs (here the root is the case's copy).
#[allow(dead_code)]
mod bad_spec_corpus;

mod agent;
mod backup;
mod backup_faults;
mod backup_pg;
mod backup_safety;
mod bad_specs;
mod drain;
mod engine_timeout;
mod examples;
mod hard_edges;
mod jobs;
mod maintain;
mod restore_escapes;
mod services;
