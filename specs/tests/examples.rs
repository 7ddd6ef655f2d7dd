//! Every example spec set in `examples/` loads without a problem.

use std::path::Path;

#[test]
fn every_example_validates() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"));
    let mut seen = 0;
    for entry in std::fs::read_dir(root).expect("examples dir") {
        let path = entry.expect("entry").path();
        if !path.is_dir() {
            continue;
        }
        match tend_specs::load_path(&path) {
            Ok(desired) => assert!(!desired.services.is_empty(), "{} declares no service", path.display()),
            Err(diags) => {
                panic!("{}:\n{}", path.display(), diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))
            }
        }
        seen += 1;
    }
    assert!(seen >= 3, "expected at least 3 example sets, found {seen}");
}

#[test]
fn the_backups_example_declares_a_paths_and_an_exec_backup() {
    use tend_specs::backup::SourceKind;

    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/backups"));
    let desired = tend_specs::load_path(path).unwrap_or_else(|diags| panic!("{diags:?}"));
    let kinds: Vec<(&str, SourceKind)> =
        desired.backups.values().map(|b| (b.name.as_str(), b.spec.source_kind())).collect();
    assert_eq!(kinds, [("retro-db", SourceKind::Paths), ("srs-collections", SourceKind::Exec)]);
    assert!(desired.backups.values().all(|b| b.calendar.is_some()), "both are scheduled");
    assert_eq!(desired.backups["srs-collections"].restore_vars.iter().collect::<Vec<_>>(), ["db"]);
}
