//! Reconciling the host: the model of what is live (`model`), observing it (`apply`'s
//! observe functions), the pure planner (`plan`), executing a plan (`apply`), unit files
//! rendered from specs (`unit_files`), the state directory (`state`) and the status built
//! from a pass (`status`).

pub mod apply;
pub mod model;
pub mod plan;
pub mod state;
pub mod status;
pub mod unit_files;
