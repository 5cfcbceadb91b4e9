//! House rules checked over the source tree: every Rust file opens with a module doc, only the
//! settings modules (and the allocator) read the environment, no crate's modules import each
//! other in a circle, and no crate grows past about 3,000 lines of non-test code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    v.sort();
    v
}

/// The file's text up to its unit-test module (the non-test code).
fn non_test(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// The lines that are code: neither blank nor comments.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with("//")
    })
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let r = root();
    let mut dirs: Vec<PathBuf> = crates()
        .iter()
        .flat_map(|c| ["src", "tests", "examples"].map(|d| c.join(d)))
        .collect();
    dirs.extend([r.join("benches/benches"), r.join("xtask/src")]);
    let missing: Vec<String> = dirs
        .iter()
        .flat_map(|d| rust_files(d))
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a `//!` module doc: {missing:?}");
}

#[test]
fn only_settings_modules_read_the_environment() {
    let allowed =
        |f: &Path| f.file_name().is_some_and(|n| n == "settings.rs") || f.ends_with("crates/seg-alloc/src/lib.rs");
    let mut offenders = Vec::new();
    for c in crates() {
        for f in rust_files(&c.join("src")) {
            let text = std::fs::read_to_string(&f).unwrap();
            let reads = code_lines(non_test(&text)).any(|l| l.contains("env::var") || l.contains("env::vars"));
            if reads && !allowed(&f) {
                offenders.push(f.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "environment read outside a settings module: {offenders:?}"
    );
}

/// Top-level module of a file under `src/` (`a.rs` and `a/b.rs` are both `a`).
fn top_module(src: &Path, f: &Path) -> Option<String> {
    let rel = f.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// `crate::name` references on code lines.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code_lines(text) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    for c in crates() {
        let src = c.join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in rust_files(&src) {
            let Some(m) = top_module(&src, &f) else { continue };
            let text = std::fs::read_to_string(&f).unwrap();
            let refs = crate_refs(non_test(&text));
            graph
                .entry(m.clone())
                .or_default()
                .extend(refs.into_iter().filter(|r| *r != m));
        }
        let names: BTreeSet<String> = graph.keys().cloned().collect();
        for g in graph.values_mut() {
            g.retain(|r| names.contains(r));
        }
        // Depth-first search for a back edge.
        fn visit(
            n: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(i) = path.iter().position(|p| p == n) {
                let mut cycle = path[i..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            if done.contains(n) {
                return None;
            }
            path.push(n.to_string());
            for m in &graph[n] {
                if let Some(c) = visit(m, graph, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            done.insert(n.to_string());
            None
        }
        let mut done = BTreeSet::new();
        for n in graph.keys() {
            if let Some(cycle) = visit(n, &graph, &mut Vec::new(), &mut done) {
                panic!(
                    "{}: modules import each other in a circle: {}",
                    c.display(),
                    cycle.join(" -> ")
                );
            }
        }
    }
}

#[test]
fn no_crate_is_over_three_thousand_lines_of_code() {
    for c in crates() {
        let lines: usize = rust_files(&c.join("src"))
            .iter()
            .map(|f| code_lines(non_test(&std::fs::read_to_string(f).unwrap())).count())
            .sum();
        assert!(
            lines <= 3_000,
            "{} has {lines} lines of non-test code (blank and comment lines aside); split it",
            c.display()
        );
    }
}
