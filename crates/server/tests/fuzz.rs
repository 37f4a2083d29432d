//! Fuzz target (issue 17): the config loader, fed the example configs mutated at random (see
//! `relais_testkit::fuzz`). A config file gets a runtime or an error that names the file:
//! never a panic.

#![allow(clippy::unwrap_used, reason = "test code")]

use proptest::prelude::*;
use relais_testkit::fuzz::{config, mutated};

/// The example configs that build without files or a model beside them.
fn examples() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| std::fs::read(e.path()).unwrap())
        .filter(|text| {
            let t = String::from_utf8_lossy(text);
            !t.contains("type = \"local\"") && !t.contains("credentials_file")
        })
        .collect();
    out.sort();
    assert!(out.len() >= 4, "{} example configs", out.len());
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_config_loader(bytes in mutated(examples())) {
        let Ok(text) = String::from_utf8(bytes) else {
            return Ok(());
        };
        // A mutation may name a model file or a credentials file: those open files, which is
        // no longer parsing; they are left to the tests of those providers.
        if text.contains("local") || text.contains("credentials") || text.contains("ledger_dir") {
            return Ok(());
        }
        let outcome = relais_server::config::parse(&text, "fuzz.toml")
            .and_then(|raw| relais_server::config::build(&raw, &text, "fuzz.toml"));
        if let Err(e) = outcome {
            prop_assert!(e.0.starts_with("fuzz.toml"), "{}", e.0);
        }
    }
}
