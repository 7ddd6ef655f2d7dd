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
