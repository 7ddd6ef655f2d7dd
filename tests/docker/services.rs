//! Services end to end: converge, no-op, drift, removal, conflicts, holds, rollouts.
