//! The agent's layering, enforced: every `crate::<module>` path in `agent/src` (in `use`
//! declarations, `use crate::{a, b::c}` groups and inline paths, test modules included) must
//! point to a module on a strictly lower layer than the one it is written in; `fog_proto` and
//! `tonic` appear only in the API's, the market link's and the command line's layers (and
//! `tonic` in the composition root, which serves them).
//!
//! The layers, top to bottom, and why each sits where it does, are in [`LAYERS`]. A new top-level
//! module must be placed in it: an unplaced module fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules of `fog_agent`, from the top layer down. A module may use modules of lower
/// layers only.
const LAYERS: &[&[&str]] = &[
    // The command line: parses, then calls into everything below.
    &["cli"],
    // The composition root: builds the parts, wires them, serves, shuts down.
    &["daemon"],
    // The market link: serves the API's routes through tunnels it opens to markets.
    &["market"],
    // The faces: gRPC (proto conversion, auth, TLS, one error type) and Prometheus.
    &["api", "metrics"],
    // Usage receipts: follow the jobs, sign with the TPM identity (attest); the API serves them.
    &["receipts"],
    // Attestation signs the benchmark results, so it sits above the benchmarks.
    &["attest", "jobs", "telemetry"],
    &["bench"],
    // Shared domain state: the capacity ledger, GPUs at run time (NVML, accounting, health).
    &["capacity", "gpu"],
    // Facts about the host and its stores.
    &["inventory", "cgroup", "image", "net"],
    // CDI specs: read by the inventory (which GPUs have a CDI device) and the jobs (their edits).
    &["cdi"],
    &["fsroot", "config", "state", "sdnotify"],
];

/// Crates only the API and the command line may name (the daemon serves tonic's transport).
const BOUNDARY_CRATES: &[(&str, &[&str])] = &[
    ("fog_proto", &["api", "cli", "market"]),
    ("tonic", &["api", "cli", "daemon", "market"]),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `(module, layer)`; layer 0 is the top.
fn layer_of() -> BTreeMap<&'static str, usize> {
    let mut map = BTreeMap::new();
    for (layer, modules) in LAYERS.iter().enumerate() {
        for module in *modules {
            assert!(
                map.insert(*module, layer).is_none(),
                "{module} listed twice"
            );
        }
    }
    map
}

/// The top-level modules declared in `lib.rs`.
fn declared_modules() -> Vec<String> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches(';').trim().to_owned())
        .collect()
}

/// Every `.rs` file of `module` (a file or a directory).
fn files_of(module: &str) -> Vec<PathBuf> {
    let dir = src_dir().join(module);
    let file = src_dir().join(format!("{module}.rs"));
    let mut files = Vec::new();
    if file.is_file() {
        files.push(file);
    }
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The source without `//` comments (doc comments included: they may name any module).
fn strip_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(text: &str) -> Option<&str> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// The top-level modules a source file names through `crate::`.
fn crate_edges(source: &str) -> Vec<String> {
    let code = strip_comments(source);
    let mut edges = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            // `fog_crate::`, `my_crate::`: not this crate.
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the first identifier of each top-level item.
            let mut depth = 1;
            let mut item_start = true;
            let mut i = 0;
            let bytes = group.as_bytes();
            while i < bytes.len() && depth > 0 {
                match bytes[i] {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    b',' if depth == 1 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == b'_') && depth == 1 => {
                        if let Some(ident) = ident_at(&group[i..]) {
                            edges.push(ident.to_owned());
                            i += ident.len();
                            item_start = false;
                            continue;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        } else if let Some(ident) = ident_at(rest) {
            edges.push(ident.to_owned());
        }
    }
    edges
}

/// Whether `source` names the crate `name` (`name::` not preceded by an identifier or `::`).
fn names_crate(source: &str, name: &str) -> bool {
    let code = strip_comments(source);
    let needle = format!("{name}::");
    code.match_indices(&needle).any(|(at, _)| {
        let before = &code[..at];
        !before.ends_with("::")
            && !before
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Every violation of the layering in the tree: `(file, message)`.
fn violations() -> Vec<String> {
    let layers = layer_of();
    let mut found = Vec::new();
    for module in declared_modules() {
        let Some(&own) = layers.get(module.as_str()) else {
            found.push(format!(
                "module {module} is not placed in LAYERS (tests/it/architecture.rs)"
            ));
            continue;
        };
        for file in files_of(&module) {
            let source = std::fs::read_to_string(&file).unwrap();
            let shown = file.strip_prefix(src_dir()).unwrap_or(&file).display();
            for target in crate_edges(&source) {
                if target == module {
                    continue;
                }
                match layers.get(target.as_str()) {
                    Some(&theirs) if theirs > own => {}
                    Some(_) => found.push(format!(
                        "{shown}: {module} uses crate::{target}, which is not on a lower layer"
                    )),
                    None => found.push(format!(
                        "{shown}: crate::{target} is not a module placed in LAYERS"
                    )),
                }
            }
            for (krate, allowed) in BOUNDARY_CRATES {
                if !allowed.contains(&module.as_str()) && names_crate(&source, krate) {
                    found.push(format!(
                        "{shown}: {module} names {krate}, which only {allowed:?} may use"
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn modules_depend_only_on_lower_layers() {
    let found = violations();
    assert!(
        found.is_empty(),
        "layering violations:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn every_module_is_placed_and_exists() {
    let declared = declared_modules();
    for module in layer_of().keys() {
        assert!(
            declared.iter().any(|d| d == module),
            "{module} is in LAYERS but not declared in lib.rs"
        );
    }
    assert!(declared.len() >= 10, "lib.rs parsed as {declared:?}");
}

#[test]
fn the_edge_reader_sees_every_form_of_path() {
    let source = "use crate::config::Config;\n\
                  use crate::{jobs::JobSpec, image, gpu::{self, NvmlTelemetry}};\n\
                  // use crate::cli::ignored;\n\
                  fn f() { crate::daemon::start(); fog_crate::x(); }\n";
    assert_eq!(
        crate_edges(source),
        ["config", "jobs", "image", "gpu", "daemon"]
    );
    assert!(names_crate("use fog_proto::v1 as pb;", "fog_proto"));
    assert!(!names_crate(
        "use my_fog_proto::x; // fog_proto::y",
        "fog_proto"
    ));
    assert!(!names_crate("tokio_util::tonic::x", "tonic"));
}
