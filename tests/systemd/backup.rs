//! Backups of a systemd service's data inside a systemd node: the unit is stopped for the
//! archive and started again; a stray process holding a file open under the paths stops
//! the backup before a byte is read, and the unit still runs afterwards.

use super::node::{self, Node, describe};

const TEND: &str = "/usr/local/bin/tend";
const SPECS: &str = "/etc/tend/specs";

fn specs(node: &Node) {
    node.exec_ok(&["mkdir", "-p", SPECS, "/srv/db"]);
    node.write_file("/srv/db/records", "the records\n");
    node.write_file(
        &format!("{SPECS}/db.yaml"),
        "apiVersion: tend/v1\nkind: Service\nmetadata: {name: db}\nspec:\n  runtime: systemd\n  exec: [/bin/sh, -c, 'exec 3>>/srv/db/log; while true; do echo x >&3; sleep 0.2; done']\n",
    );
    node.write_file(
        &format!("{SPECS}/backup.yaml"),
        "apiVersion: tend/v1\nkind: Backup\nmetadata: {name: nightly}\nspec:\n  source: {paths: [/srv/db]}\n  quiesce: {stop: [db], timeout: 20s}\n  destination: {dir: /var/backups/tend}\n",
    );
}

fn tend(node: &Node, args: &[&str]) -> std::process::Output {
    let mut full = vec![TEND];
    full.extend_from_slice(args);
    node.exec(&full)
}

#[test]
fn a_backup_stops_a_unit_for_its_archive_and_starts_it_again() {
    node::require_systemd_node_image();
    let node = Node::start("tend-backup-unit");
    node.copy_in(env!("CARGO_BIN_EXE_tend"), TEND);
    specs(&node);
    let out = tend(&node, &["apply", SPECS]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(node.systemctl_ok(&["is-active", "db.service"]).trim(), "active");
    let pid = node.show_property("db.service", "MainPID");

    let out = tend(&node, &["backup", "run", "nightly", "--specs", SPECS]);
    assert!(out.status.success(), "{}", describe(&out));
    // Stopped for the archive (a new process now), running again.
    assert_eq!(node.systemctl_ok(&["is-active", "db.service"]).trim(), "active");
    assert_ne!(node.show_property("db.service", "MainPID"), pid, "db was not stopped for the backup");
    let list = node.exec_ok(&["find", "/var/backups/tend", "-name", "*.tar.zst"]);
    assert_eq!(list.lines().count(), 1, "{list}");
    let verify = tend(&node, &["backup", "verify", "nightly", "--specs", SPECS]);
    assert!(verify.status.success(), "{}", describe(&verify));

    // A process outside the unit holds a file open under the paths: refused, unit running.
    node.exec_ok(&["sh", "-c", "nohup sh -c 'exec 4</srv/db/records; sleep 60' >/dev/null 2>&1 &"]);
    let out = tend(&node, &["backup", "run", "nightly", "--specs", SPECS]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("still open"), "{}", describe(&out));
    assert_eq!(node.systemctl_ok(&["is-active", "db.service"]).trim(), "active", "left stopped after a refusal");
    assert_eq!(node.exec_ok(&["find", "/var/backups/tend", "-name", "*.tar.zst"]).lines().count(), 1);
}

#[test]
fn a_unit_killed_at_its_stop_timeout_fails_the_backup_and_is_started_again() {
    node::require_systemd_node_image();
    let node = Node::start("tend-backup-killed-unit");
    node.copy_in(env!("CARGO_BIN_EXE_tend"), TEND);
    node.exec_ok(&["mkdir", "-p", SPECS, "/srv/db"]);
    node.write_file("/srv/db/records", "the records\n");
    // Ignores SIGTERM: systemd kills it when TimeoutStopSec (2 s) runs out.
    node.write_file(
        &format!("{SPECS}/db.yaml"),
        "apiVersion: tend/v1\nkind: Service\nmetadata: {name: db}\nspec:\n  runtime: systemd\n  exec: [/bin/sh, -c, \"trap '' TERM; while true; do sleep 1; done\"]\n  stopTimeout: 2s\n",
    );
    node.write_file(
        &format!("{SPECS}/backup.yaml"),
        "apiVersion: tend/v1\nkind: Backup\nmetadata: {name: nightly}\nspec:\n  source: {paths: [/srv/db]}\n  quiesce: {stop: [db]}\n  destination: {dir: /var/backups/tend}\n",
    );
    let out = tend(&node, &["apply", SPECS]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = tend(&node, &["backup", "run", "nightly", "--specs", SPECS]);
    assert!(!out.status.success(), "a killed writer was archived: {}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("db.service (TimeoutStopSec)") && err.contains("was killed"), "{}", describe(&out));
    assert_eq!(node.exec_ok(&["sh", "-c", "find /var/backups/tend -type f | wc -l"]).trim(), "0");
    assert_eq!(node.systemctl_ok(&["is-active", "db.service"]).trim(), "active", "left stopped");
}
