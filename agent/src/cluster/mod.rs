//! The cluster: nodes whose agents coordinate through etcd. It will hold membership (each
//! agent's key under a lease it keeps alive), leadership (one leader per cluster, through
//! etcd's election API) and placement (the leader assigning the instances of placed
//! services to members). Membership and leadership over etcd are being built; what is here
//! is pure: the placement decision.

pub mod placement;
