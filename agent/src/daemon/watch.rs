//! What wakes the loop from outside: the spec directory's watcher, the git source's poller,
//! Docker's events and systemd's signals, and the end of an operator's maintenance window.
//! They only wake it (state is always observed afresh by the pass that follows).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::daemon::AgentError;
use crate::daemon::engine_health::{Engine, connect_engines, lose_docker, note_engine, unresponsive};
use crate::daemon::shared::{Shared, SharedGit, Wake, lock};
use crate::engine::docker::DockerEngine;

/// Whether a change to `path` may change the spec set. Writes in progress do not count
/// (only a closed write, a rename into place or a removal does), nor do editors' swap and
/// backup files.
fn relevant(kind: &notify::EventKind, path: &Path) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let scratch = name.starts_with('.')
        || name.starts_with('#')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name == "4913";
    if scratch {
        return false;
    }
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Create(CreateKind::Folder)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    )
}

/// Watches the spec directory (and its parent, to see it deleted or created) and sends
/// `Wake::Specs` once changes have been quiet for `debounce`.
pub(super) fn watch_dir(
    dir: &Path,
    debounce: Duration,
    wake: mpsc::Sender<Wake>,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    use notify::{RecursiveMode, Watcher};
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let root = dir.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            if ev.paths.iter().any(|p| p.starts_with(&root) && relevant(&ev.kind, p)) {
                let _ = tx.send(());
            }
        }
        Err(e) => warn!(error = %e, "spec directory watch error"),
    })
    .map_err(|source| AgentError::Watch { path: dir.clone(), source })?;
    let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    watcher
        .watch(&parent, RecursiveMode::NonRecursive)
        .map_err(|source| AgentError::Watch { path: parent.clone(), source })?;
    if dir.is_dir() {
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|source| AgentError::Watch { path: dir.clone(), source })?;
    }
    let watched = Arc::new(Mutex::new(watcher));
    let handle = watched.clone();
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    ev = rx.recv() => if ev.is_none() { return },
                }
                // Quiet for `debounce` before reading.
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        ev = rx.recv() => if ev.is_none() { return },
                        () = tokio::time::sleep(debounce) => break,
                    }
                }
                // The directory may have been created (or re-created) since: watch it.
                if dir.is_dir() {
                    let _ = lock(&handle).watch(&dir, RecursiveMode::Recursive);
                }
                let _ = wake.send(Wake::Specs).await;
            }
        }
        .instrument(info_span!("spec-watch")),
    );
    // The task holds the watcher (through `handle`) for as long as it runs.
    drop(watched);
    Ok(())
}

/// Polls a git source every interval; a new commit, checked out, wakes the loop as a
/// candidate.
pub(super) fn spawn_git_poller(git: SharedGit, wake: mpsc::Sender<Wake>, stop: CancellationToken) {
    tokio::spawn(
        async move {
            loop {
                let (result, interval) = {
                    let mut g = git.lock().await;
                    let interval = g.interval();
                    (g.poll().await, interval)
                };
                // The source logs new commits and failures itself.
                if let Ok(Some(rev)) = result {
                    let _ = wake.send(Wake::Candidate(rev)).await;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        }
        .instrument(info_span!("git-poll")),
    );
}

/// Docker events and systemd signals wake the loop; the watchers reconnect when their
/// stream ends.
pub(super) fn spawn_engine_watchers(shared: &Arc<Shared>, stop: &CancellationToken) {
    tokio::spawn(docker_events(shared.clone(), stop.clone()).instrument(info_span!("docker-events")));
    tokio::spawn(systemd_signals(shared.clone(), stop.clone()).instrument(info_span!("systemd-signals")));
}

/// Wakes the loop on Docker's events of this scope's containers; connects to Docker while
/// the agent has no connection, and lets go of one that cannot be reached any more.
async fn docker_events(s: Arc<Shared>, token: CancellationToken) {
    use futures::StreamExt;
    let mut delay = Duration::from_millis(500);
    loop {
        let docker = lock(&s.engines).docker.clone();
        let Some(docker) = docker else {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            connect_engines(&s).await;
            delay = (delay * 2).min(Duration::from_secs(30));
            continue;
        };
        let mut events = crate::engine::ContainerRuns::events(docker.as_ref(), &s.settings.host.scope);
        // A fresh stream: whatever happened while it was down is seen by a pass. Not
        // while Docker is unresponsive: the loop retries on its own then, and a
        // stream that is only being set up would wake it into a pass that hangs.
        if !unresponsive(&s).contains(&Engine::Docker) {
            let _ = s.wake.try_send(Wake::Engine);
        }
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                ev = events.next() => match ev {
                    Some(Ok(())) => {
                        delay = Duration::from_millis(500);
                        let _ = s.wake.try_send(Wake::Engine);
                    }
                    Some(Err(e)) => {
                        warn!(error = %crate::support::chain(&e), "Docker event stream failed; reconnecting");
                        if e.kind == crate::engine::EngineErrorKind::Timeout {
                            note_engine(&s, Engine::Docker, Some((e.kind(), crate::support::chain(&e))));
                        }
                        break;
                    }
                    None => break,
                },
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
        if let Err(e) = DockerEngine::connect(s.settings.host.timeouts).await {
            note_engine(&s, Engine::Docker, Some((e.kind(), crate::support::chain(&e))));
            lose_docker(&s, crate::support::chain(&e));
            // A pass says so, and leaves Docker's part out, without waiting for the
            // resync (unless Docker hangs: the loop retries on its own then).
            if e.kind != crate::engine::EngineErrorKind::Timeout {
                let _ = s.wake.try_send(Wake::Engine);
            }
        }
    }
}

/// Wakes the loop on systemd's signals about the units of interest (the set's systemd
/// services and timer units).
async fn systemd_signals(s: Arc<Shared>, token: CancellationToken) {
    use crate::engine::systemd::UnitEngine;
    use futures::StreamExt;
    // systemd may not have answered yet (the passes keep connecting); where it is not
    // PID 1 there is nothing to watch.
    let systemd = loop {
        let (handle, missing) = {
            let e = lock(&s.engines);
            (e.systemd.clone(), e.systemd_missing.is_some())
        };
        match handle {
            Some(systemd) => break systemd,
            None if missing => return,
            None => tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            },
        }
    };
    let mut delay = Duration::from_millis(500);
    let units = s.units_of_interest.clone();
    let interest: crate::engine::systemd::Interest =
        Arc::new(move |unit: &str| units.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(unit));
    loop {
        match systemd.watch(interest.clone()).await {
            Ok(mut wakeups) => loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    w = wakeups.next() => match w {
                        Some(()) => { let _ = s.wake.try_send(Wake::Engine); }
                        None => break,
                    },
                }
            },
            Err(e) => warn!(error = %crate::support::chain(&e), "watching systemd failed; retrying"),
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// When an operator's maintenance window on `target` ends (the lock is released, also by
/// the kernel when `tend maintain` dies), pass at once: the operator may have stopped or
/// changed the target by hand. One waiting thread per target.
pub(super) fn wait_for_release(shared: &Shared, target: &str) {
    if !lock(&shared.releases).insert(target.to_string()) {
        return;
    }
    let (locks, key) = (shared.options.host.locks.clone(), target.to_string());
    let (releases, wake) = (shared.releases.clone(), shared.wake.clone());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = locks.wait_released(&key) {
            warn!(target = %key, error = %crate::support::chain(&e), "waiting for the end of a maintenance window");
        } else {
            info!(target = %key, "maintenance window ended: passing again");
        }
        lock(&releases).remove(&key);
        let _ = wake.blocking_send(Wake::Api);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_writes_renames_and_removals_are_relevant() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};
        let p = Path::new("/etc/tend/specs/web.yaml");
        assert!(relevant(&EventKind::Access(AccessKind::Close(AccessMode::Write)), p));
        assert!(relevant(&EventKind::Modify(ModifyKind::Name(RenameMode::To)), p));
        assert!(relevant(&EventKind::Remove(RemoveKind::File), p));
        // A file being written, or just created, is not read yet.
        assert!(!relevant(&EventKind::Modify(ModifyKind::Data(DataChange::Any)), p));
        assert!(!relevant(&EventKind::Create(CreateKind::File), p));
        // Editors' scratch files.
        for scratch in [".web.yaml.swp", "web.yaml~", "#web.yaml#", "4913", ".web.yaml.tmp"] {
            let p = Path::new("/etc/tend/specs").join(scratch);
            assert!(!relevant(&EventKind::Access(AccessKind::Close(AccessMode::Write)), &p), "{scratch}");
        }
    }
}
