//! The crate's modules form layers, and a module uses only modules of its own layer or below:
//! errors, guards, limits, per-thread state and sync at the bottom, then settings, the captured
//! context, the job, the pool, the options' control, programs and per-worker programs, the
//! default pool, batches and the tower feature. This reads the sources and fails on any
//! `crate::` path that points up a layer (an import cycle waiting to happen).

use std::path::Path;

const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("guard", 0),
    ("limits", 0),
    ("local_state", 0),
    ("sync", 0),
    ("settings", 1),
    ("capture", 2),
    ("job", 3),
    ("pool", 4),
    ("control", 5),
    ("program", 6),
    ("per_worker", 6),
    ("global", 7),
    ("batch", 8),
    ("tower", 9),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a line of code names after `crate::` (also inside `crate::{a, b::c}`).
fn named_modules(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        } else {
            found.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    found
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "the sources were not found");
    let mut upward = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let Some(own) = layer(top.trim_end_matches(".rs")) else {
            continue; // lib.rs, which ties the layers together
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for module in named_modules(code) {
                if layer(&module).is_some_and(|l| l > own) {
                    upward.push(format!("{}:{}: uses crate::{module}", rel.display(), n + 1));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "upward dependencies:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_check_sees_grouped_and_plain_paths() {
    assert_eq!(
        named_modules("use crate::{job::Job, pool::WorkerPool};"),
        ["job", "pool"]
    );
    assert_eq!(
        named_modules("crate::guard::drop(x); crate::sync::lock(m)"),
        ["guard", "sync"]
    );
}
