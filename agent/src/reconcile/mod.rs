//! Reconciling the host, in the order a pass runs: what is live (`model`), seeing it
//! (`observe`), the pure planner (`plan`), carrying a plan out (`execute`), and one whole
//! pass with what it records (`apply`), with its options (`options`). Beside them: unit files rendered from specs
//! (`unit_files`), the state directory (`state`) and the status built from a pass
//! (`status`).

pub mod apply;
pub mod execute;
pub mod model;
pub mod observe;
pub mod options;
pub mod plan;
pub mod state;
pub mod status;
pub mod unit_files;
