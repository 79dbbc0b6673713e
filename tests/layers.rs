//! The engine's files form layers, and no file imports one above it (issue: "no import
//! circle"). This test reads `actors/src` and checks every `crate::…` path against the table
//! below — the same table as in `actors/src/lib.rs` and `docs/architecture.md`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Each engine module and its layer: a module may use only modules of a lower layer.
const LAYERS: [(&str, u32); 19] = [
    ("sync", 0),
    ("stats", 0),
    ("blocking", 0),
    ("error", 1),
    ("config", 2),
    ("threads", 2),
    ("lease_state", 2),
    ("current", 3),
    ("job", 4),
    ("handle", 5),
    ("books", 6),
    ("bookkeeper", 7),
    ("worker", 8),
    ("pool", 9),
    ("lease", 9),
    ("manager", 10),
    ("host", 11),
    ("grinder", 12),
    ("lib", 13),
];

/// The `crate::module` paths a source file names.
fn crate_modules(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
        // `use crate::{a, b::C}` groups.
        if let Some(group) = code.split("use crate::{").nth(1) {
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        }
    }
    found
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn files(dir: &Path, module: Option<&str>, out: &mut Vec<(String, String)>) {
    for entry in fs::read_dir(dir).expect("a readable source dir") {
        let path = entry.expect("an entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            files(&path, Some(module.unwrap_or(&name)), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let owner = module.unwrap_or(&name).to_owned();
            out.push((owner, fs::read_to_string(&path).expect("a readable file")));
        }
    }
}

fn violations(sources: &[(String, String)], layers: &BTreeMap<&str, u32>) -> Vec<String> {
    let mut broken = Vec::new();
    for (module, source) in sources {
        let Some(&mine) = layers.get(module.as_str()) else {
            broken.push(format!("{module}: not in the layer table"));
            continue;
        };
        for used in crate_modules(source) {
            if used == *module {
                continue;
            }
            match layers.get(used.as_str()) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => broken.push(format!(
                    "{module} (layer {mine}) uses crate::{used} (layer {theirs})"
                )),
                None => {} // a re-exported item named at the crate root, not a module
            }
        }
    }
    broken
}

#[test]
fn no_engine_file_imports_one_above_it() {
    let _deadline = common::deadline();
    let layers: BTreeMap<&str, u32> = LAYERS.into_iter().collect();
    let mut sources = Vec::new();
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("actors/src"),
        None,
        &mut sources,
    );
    assert!(
        sources.len() >= 20,
        "found only {} engine files",
        sources.len()
    );
    let broken = violations(&sources, &layers);
    assert!(
        broken.is_empty(),
        "imports from above:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_check_catches_an_import_from_above() {
    let _deadline = common::deadline();
    let layers: BTreeMap<&str, u32> = LAYERS.into_iter().collect();
    let sources = vec![(
        "books".to_owned(),
        "use crate::{error::LeaseError, manager::ManagerActor};\n".to_owned(),
    )];
    assert_eq!(
        violations(&sources, &layers),
        vec!["books (layer 6) uses crate::manager (layer 10)".to_owned()]
    );
}
