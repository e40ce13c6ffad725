//! The shared registry (`src/broker.rs`) must not depend on any actor module,
//! directly or through the files it uses: the import cycle between the
//! registry and the actors stays gone. Reads the sources and follows their
//! `crate::` paths (comments and unit tests left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files that define actors (or route to them): the registry must reach none.
const ACTOR_FILES: &[&str] = &[
    "agent.rs",
    "conversation/mod.rs",
    "router/mod.rs",
    "supervisor.rs",
    "channel/mod.rs",
    "channel/webchat.rs",
    "channel/provider.rs",
    "sim.rs",
    "ws/mod.rs",
    "http/mod.rs",
    "server.rs",
    "wiring.rs",
];

fn sources(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(rel, std::fs::read_to_string(&path).expect("read source"));
        }
    }
}

/// The code of a file without comments and without its unit tests.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The file a `crate::a::b::c` path lives in: the longest prefix that is one.
fn file_of(segments: &[&str], files: &BTreeMap<String, String>) -> Option<String> {
    (1..=segments.len()).rev().find_map(|n| {
        let base = segments[..n].join("/");
        [format!("{base}.rs"), format!("{base}/mod.rs")]
            .into_iter()
            .find(|f| files.contains_key(f))
    })
}

/// Which files each file names through `crate::` paths, including the items
/// of a `use crate::x::{a, b::c}` group.
fn edges(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut all = BTreeMap::new();
    for (file, text) in files {
        let code = code(text);
        let mut out = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':');
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            if let Some(f) = file_of(&segments, files) {
                out.insert(f);
            }
            let after = &rest[path.len()..];
            if let Some(group) = after.strip_prefix("::{") {
                let group = group.split('}').next().unwrap_or_default();
                for item in group.split(',') {
                    let item = item.split_whitespace().next().unwrap_or_default();
                    let mut full = segments.clone();
                    full.extend(item.split("::").filter(|s| !s.is_empty() && *s != "self"));
                    if let Some(f) = file_of(&full, files) {
                        out.insert(f);
                    }
                }
            }
        }
        out.remove(file);
        all.insert(file.clone(), out);
    }
    all
}

/// Every file `start` reaches, with the path it takes to each.
fn reach(start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, Vec<String>> {
    let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack = vec![vec![start.to_owned()]];
    while let Some(path) = stack.pop() {
        let last = path.last().expect("non-empty").clone();
        for next in edges.get(&last).into_iter().flatten() {
            if !paths.contains_key(next) {
                let mut longer = path.clone();
                longer.push(next.clone());
                paths.insert(next.clone(), longer.clone());
                stack.push(longer);
            }
        }
    }
    paths
}

fn source_files() -> BTreeMap<String, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    sources(&root, &root, &mut files);
    files
}

#[test]
fn the_registry_reaches_no_actor_module() {
    let files = source_files();
    for f in ACTOR_FILES.iter().chain(["broker.rs"].iter()) {
        assert!(files.contains_key(*f), "{f} exists (update this test)");
    }
    let edges = edges(&files);
    let reached = reach("broker.rs", &edges);
    let bad: Vec<String> = ACTOR_FILES
        .iter()
        .filter_map(|f| reached.get(*f).map(|path| path.join(" → ")))
        .collect();
    assert!(bad.is_empty(), "broker.rs reaches actor files: {bad:#?}");
    assert!(
        !reached.contains_key("broker.rs"),
        "a cycle through broker.rs"
    );
}

#[test]
fn the_path_finder_sees_an_actor_import() {
    // The registry's wiring names the actors: the same walk finds them.
    let files = source_files();
    let reached = reach("wiring.rs", &edges(&files));
    for f in [
        "agent.rs",
        "conversation/mod.rs",
        "router/mod.rs",
        "supervisor.rs",
    ] {
        assert!(reached.contains_key(f), "wiring.rs → {f}: {reached:?}");
    }
}
