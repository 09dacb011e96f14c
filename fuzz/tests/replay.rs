//! Every committed corpus input, and every input that once made a target fail
//! (`fuzz/regressions/<target>/`), through its target on every `cargo test`: a failure found
//! once stays fixed.

use std::path::Path;

use txflow_fuzz::TARGETS;

#[test]
fn every_saved_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let mut seen = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                let data = std::fs::read(&path).expect("a saved input");
                seen += 1;
                if std::panic::catch_unwind(|| target(&data)).is_err() {
                    failures.push(path.display().to_string());
                }
            }
        }
        assert!(seen > 0, "no saved input for fuzz target {name}");
    }
    assert!(
        failures.is_empty(),
        "inputs that fail their target: {failures:?}"
    );
}
