//! The upper bound of every count, size, duration, list and text in the spec language and
//! the agent's configuration, each with the reason for its value.
//!
//! Without them a spec could be valid and still take the agent down: `replicas:
//! 4000000000` passed validation and the planner then died on a failed allocation, in a
//! loop. The bounds are far above what an operator of a small fleet writes (hundreds of
//! instances on a host, not thousands) and low enough that planning stays cheap and every
//! value fits what Docker, systemd and the kernel take. Validation checks them at the
//! field ([`Bound::check`]: "`replicas` is 4000000000; at most 1000 (…)"); the counts
//! reach the JSON Schema as `maximum`, `maxItems` or `maxLength`. docs/services.md,
//! docs/timers.md and docs/backups.md list them; docs/decisions.md says how they were
//! chosen. Lower bounds (more than `0s`, at least 1) are checked beside them in `load`.

use std::fmt;

use crate::quantity::Duration;

/// An upper bound and why it is that.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound<T> {
    /// The largest value allowed.
    pub max: T,
    /// Why, for messages: completes "at most MAX (…)".
    pub why: &'static str,
}

impl<T: PartialOrd + fmt::Display> Bound<T> {
    /// The problem of `field` holding `value`, if it is over the bound:
    /// "`replicas` is 4000000000; at most 1000 (why)".
    pub fn check(&self, field: &str, value: T) -> Option<String> {
        (value > self.max).then(|| format!("`{field}` is {value}; at most {} ({})", self.max, self.why))
    }
}

impl Bound<usize> {
    /// The problem of the list or mapping `field` holding `n` entries, if that is too many:
    /// "`env` has 2000 entries; at most 1024 (why)".
    pub fn check_items(&self, field: &str, n: usize) -> Option<String> {
        (n > self.max).then(|| format!("`{field}` has {n} entries; at most {} ({})", self.max, self.why))
    }

    /// The problem of the text `field` being `len` bytes long, if that is too long:
    /// "an argument of `command` is 70000 bytes long; at most 65536 (why)". `field` is
    /// the whole subject ("`workingDir`", "an argument of `command`").
    pub fn check_bytes(&self, field: &str, len: usize) -> Option<String> {
        (len > self.max).then(|| format!("{field} is {len} bytes long; at most {} ({})", self.max, self.why))
    }
}

// --- Counts ---------------------------------------------------------------------------------

/// `replicas` (and `rollout.maxUnavailable`, which cannot usefully exceed it).
pub const REPLICAS: Bound<u32> = Bound {
    max: 1000,
    why: "a host runs tens to hundreds of containers; planning a service costs memory per instance",
};

/// The instances of all docker services of a set together (the sum of their `replicas`).
pub const INSTANCES: Bound<u64> = Bound {
    max: 2000,
    why: "all docker services of a spec set together; one host does not run more containers usefully, and each costs the planner memory",
};

/// Services, Timers and Backups in one spec set.
pub const OBJECTS: Bound<usize> =
    Bound { max: 1000, why: "Services, Timers and Backups in one spec set; a set describes one host" };

/// The secrets of a spec set together, in bytes (each is at most 64 KiB as a file): they
/// are held in memory while the set is in use.
pub const SECRETS: Bound<u64> = Bound {
    max: 16 << 20,
    why: "16 MiB, the secrets of a spec set together; they are held in memory while the set is in use",
};

/// `healthcheck.retries`.
pub const HEALTHCHECK_RETRIES: Bound<u32> =
    Bound { max: 1000, why: "consecutive failed checks before an instance is unhealthy" };

/// Each `keep…` count of a `retention`.
pub const RETENTION_KEEP: Bound<u32> = Bound { max: 10_000, why: "archives kept by one rule" };

/// `compression.threads`: zstd's workers.
pub const COMPRESSION_THREADS: Bound<u32> =
    Bound { max: 64, why: "zstd workers beside the one reading the sources; more only contend for the cores" };

/// `resources.memory`, in bytes: 16 TiB.
pub const MEMORY: Bound<u64> = Bound { max: 16 << 40, why: "16 TiB, more than any host tend runs on has" };

/// The smallest `resources.memory`: Docker refuses a limit under 6 MiB, and systemd's
/// `MemoryMax=` that low would only get the service killed.
pub const MIN_MEMORY: u64 = 6 << 20;

/// `resources.cpus`, in cores.
pub const CPUS: Bound<f64> = Bound { max: 1024.0, why: "cores" };

/// The smallest `resources.cpus`: Docker's (1% of a core).
pub const MIN_CPUS: f64 = 0.01;

// --- Durations ------------------------------------------------------------------------------

/// `stopTimeout`.
pub const STOP_TIMEOUT: Bound<Duration> =
    Bound { max: Duration::from_secs(3600), why: "a stop that takes longer is a hang; a pass waits for it" };

/// `healthcheck.interval` and `healthcheck.timeout`.
pub const HEALTHCHECK_PERIOD: Bound<Duration> =
    Bound { max: Duration::from_secs(3600), why: "a health check less often than hourly says little about now" };

/// `healthcheck.startPeriod`.
pub const HEALTHCHECK_START_PERIOD: Bound<Duration> =
    Bound { max: Duration::from_secs(86_400), why: "the longest recovery a starting database may need" };

/// A dependency's `timeout`: a pass waits for it.
pub const DEPENDENCY_TIMEOUT: Bound<Duration> =
    Bound { max: Duration::from_secs(3600), why: "a pass waits this long for a dependency" };

/// `restart.backoff.initial`.
pub const BACKOFF_INITIAL: Bound<Duration> =
    Bound { max: Duration::from_secs(3600), why: "the first delay before a crashed instance restarts" };

/// `restart.backoff.max`.
pub const BACKOFF_MAX: Bound<Duration> =
    Bound { max: Duration::from_secs(86_400), why: "a crash-looping instance is retried at least daily" };

/// `rollout.interval` and `rollout.scaleDownInterval`: pauses inside a pass.
pub const ROLLOUT_PAUSE: Bound<Duration> =
    Bound { max: Duration::from_secs(3600), why: "a pause between instances, taken inside a pass" };

/// `updateWindow.duration`.
pub const UPDATE_WINDOW: Bound<Duration> =
    Bound { max: Duration::from_secs(31 * 86_400), why: "a window longer than a month is not a window" };

/// A Timer's `randomizedDelay`.
pub const RANDOMIZED_DELAY: Bound<Duration> =
    Bound { max: Duration::from_secs(7 * 86_400), why: "a week spreads even a weekly job" };

/// A Timer's `accuracy`.
pub const ACCURACY: Bound<Duration> =
    Bound { max: Duration::from_secs(86_400), why: "how late a run may start to be batched with others" };

/// A Timer's `timeout`.
pub const JOB_TIMEOUT: Bound<Duration> =
    Bound { max: Duration::from_secs(7 * 86_400), why: "a run is stopped after at most a week" };

/// A Backup's `quiesce.timeout`.
pub const QUIESCE_TIMEOUT: Bound<Duration> =
    Bound { max: Duration::from_secs(3600), why: "the services stay down while it runs" };

// --- Cluster -------------------------------------------------------------------------------

/// A role (`cluster.roles` in the agent's configuration, a Service's `placement.role`): a DNS
/// label, like every name that reaches etcd.
pub const ROLE: Bound<usize> =
    Bound { max: 63, why: "a role is a DNS label, as every name tend writes into etcd keys is" };

/// `placement.lostLeaseGrace`: how long a node cut off from etcd keeps the instances of a
/// service with `onLostLease: stop` running, and so how long a slot of a dead node stays
/// down before it is placed elsewhere.
pub const LOST_LEASE_GRACE: Bound<Duration> = Bound {
    max: Duration::from_secs(600),
    why: "a slot of a dead node stays down this long (plus its stopTimeout) before it is placed on another node",
};

// --- Lists and mappings ---------------------------------------------------------------------

/// The arguments of one command (`exec`, `command`, `entrypoint`, a health check's, a
/// Backup's commands, a drill's check).
pub const ARGS: Bound<usize> = Bound { max: 1024, why: "arguments of one command" };

/// `env`.
pub const ENV: Bound<usize> = Bound { max: 1024, why: "environment variables of one service or job" };

/// `labels` (`metadata.labels`, a docker service's `labels`).
pub const LABELS: Bound<usize> = Bound { max: 128, why: "labels of one object; each is read back at every pass" };

/// `ports`.
pub const PORTS: Bound<usize> = Bound { max: 1024, why: "published ports of one service" };

/// `volumes`.
pub const VOLUMES: Bound<usize> = Bound { max: 256, why: "mounts of one container" };

/// `networks`.
pub const NETWORKS: Bound<usize> = Bound { max: 32, why: "networks one container joins" };

/// `dependsOn`.
pub const DEPENDS_ON: Bound<usize> = Bound { max: 256, why: "dependencies of one service" };

/// `quiesce.stop`.
pub const QUIESCE_STOP: Bound<usize> = Bound { max: 256, why: "services one Backup stops" };

/// `source.paths`.
pub const SOURCE_PATHS: Bound<usize> =
    Bound { max: 256, why: "paths of one Backup; list a directory rather than its files" };

/// `copies`.
pub const COPIES: Bound<usize> = Bound { max: 16, why: "copies of each archive" };

/// `restore.vars`.
pub const RESTORE_VARS: Bound<usize> = Bound { max: 64, why: "placeholders of one restore command" };

// --- Text -----------------------------------------------------------------------------------

/// One argument, one environment value (secrets are capped as files, at the same 64 KiB),
/// one `restore.vars` value.
pub const TEXT: Bound<usize> =
    Bound { max: 64 << 10, why: "Linux takes one argument or environment string of at most 128 KiB" };

/// A path (`workingDir`, `pidFile`, mount sources and targets, `fromFile`, a Backup's
/// directories and paths, `copies.rsync`, `destination.layout`).
pub const PATH: Bound<usize> = Bound { max: 4095, why: "Linux's PATH_MAX, 4096 with the final NUL" };

/// An environment variable's name.
pub const ENV_NAME: Bound<usize> = Bound { max: 255, why: "environment variable names" };

/// A label's key.
pub const LABEL_KEY: Bound<usize> = Bound { max: 255, why: "label keys" };

/// A label's value.
pub const LABEL_VALUE: Bound<usize> =
    Bound { max: 4096, why: "label values; labels are for selecting, and are read back at every pass" };

/// A calendar expression (`schedule`, `updateWindow.schedule`, `drill.schedule`).
pub const SCHEDULE: Bound<usize> = Bound { max: 1024, why: "calendar expressions" };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_says_the_value_the_limit_and_why() {
        assert_eq!(
            REPLICAS.check("replicas", 4_000_000_000),
            Some(
                "`replicas` is 4000000000; at most 1000 (a host runs tens to hundreds of containers; planning a service costs memory per instance)"
                    .into()
            )
        );
        assert_eq!(REPLICAS.check("replicas", 1000), None);
        assert_eq!(
            STOP_TIMEOUT.check("stopTimeout", Duration::from_secs(7200)),
            Some("`stopTimeout` is 2h; at most 1h (a stop that takes longer is a hang; a pass waits for it)".into())
        );
        assert_eq!(
            ENV.check_items("env", 2000),
            Some("`env` has 2000 entries; at most 1024 (environment variables of one service or job)".into())
        );
        assert_eq!(
            TEXT.check_bytes("an argument of `command`", 70_000),
            Some("an argument of `command` is 70000 bytes long; at most 65536 (Linux takes one argument or environment string of at most 128 KiB)".into())
        );
    }
}
