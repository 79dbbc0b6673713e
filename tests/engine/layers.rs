//! The engine's files form layers, and no file imports one above it (issue: "no import
//! circle"). This test reads `actors/src` and checks every `crate::…` path against the table
//! below — the same table as in `actors/src/lib.rs` and `docs/architecture.md`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Each engine module and its layer: a module may use only modules of a lower layer.
const LAYERS: [(&str, u32); 20] = [
    ("sync", 0),
    ("blocking", 0),
    ("metrics", 0),
    ("stats", 1),
    ("error", 2),
    ("config", 3),
    ("threads", 3),
    ("lease_state", 3),
    ("current", 4),
    ("job", 5),
    ("handle", 6),
    ("books", 7),
    ("bookkeeper", 8),
    ("worker", 9),
    ("pool", 10),
    ("lease", 10),
    ("manager", 11),
    ("host", 12),
    ("grinder", 13),
    ("lib", 14),
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
    let _deadline = testkit::deadline();
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
    let _deadline = testkit::deadline();
    let layers: BTreeMap<&str, u32> = LAYERS.into_iter().collect();
    let sources = vec![(
        "books".to_owned(),
        "use crate::{error::LeaseError, manager::ManagerActor};\n".to_owned(),
    )];
    assert_eq!(
        violations(&sources, &layers),
        vec!["books (layer 7) uses crate::manager (layer 11)".to_owned()]
    );
}

// ---- no circle between the modules of a folder, in either crate -------------------------------

/// A crate's modules (as paths from the crate root: `["process", "parent", "conn"]`) and the
/// modules each one names.
struct Graph {
    modules: Vec<Vec<String>>,
    /// (user, used, the path that says so).
    uses: Vec<(Vec<String>, Vec<String>, String)>,
}

/// The code of a source file as its module sees it: without comments (doc comments
/// included), without `#[cfg(test)]` modules (tests are not the architecture), and with
/// `super::` inside an inline module (`mod web { … }`) read as the file's own module.
fn code_of(source: &str) -> String {
    let mut out = Vec::new();
    // The brace depth each open inline module started at, and whether it is a test module.
    let mut inline: Vec<(usize, bool)> = Vec::new();
    let (mut depth, mut cfg_test, mut cfg_doc) = (0usize, false, false);
    for raw in source.lines() {
        let line = raw.split("//").next().unwrap_or("");
        let t = line.trim();
        // An import for doc links only (`#[cfg(doc)] use …;`) is no dependency of the code.
        if t == "#[cfg(doc)]" {
            cfg_doc = true;
            out.push(String::new());
            continue;
        }
        if cfg_doc {
            cfg_doc = !t.ends_with(';');
            out.push(String::new());
            continue;
        }
        let opens_mod = t.ends_with('{')
            && ["mod ", "pub mod ", "pub(crate) mod ", "pub(super) mod "]
                .iter()
                .any(|p| t.starts_with(p));
        if opens_mod {
            inline.push((depth, cfg_test));
        }
        cfg_test = t == "#[cfg(test)]" || (cfg_test && t.starts_with("#["));
        let kept = if inline.iter().any(|(_, test)| *test) {
            String::new()
        } else if inline.is_empty() {
            line.to_owned()
        } else {
            line.replace("super::", "self::")
        };
        depth += line.matches('{').count();
        depth = depth.saturating_sub(line.matches('}').count());
        while inline.last().is_some_and(|(d, _)| depth <= *d) {
            inline.pop();
        }
        out.push(kept);
    }
    out.join("\n")
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or("").trim().to_owned()];
    };
    let prefix = tree[..open].trim_end_matches("::").trim();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| match p.as_str() {
            "self" => prefix.to_owned(),
            _ => format!("{prefix}::{p}"),
        })
        .collect()
}

/// Every path a file names that starts at `crate`, `super` or `self`: in its `use`
/// declarations (expanded) and in its code.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = use_paths(code);
    for root in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().last();
            let path: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            rest = &rest[at + root.len()..];
            // (`super::{a, b}` is a use group, read by `use_paths`.)
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !path.ends_with("::")
            {
                paths.push(path);
            }
        }
    }
    paths
}

/// The paths of a file's `use` declarations, expanded.
fn use_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // A `use` declaration starts a line (the code is rustfmt'ed), maybe after `pub(…)`.
    let mut at = 0;
    while at < code.len() {
        let line_end = code[at..].find('\n').map_or(code.len(), |n| at + n);
        let line = code[at..line_end].trim_start();
        let line = line
            .strip_prefix("pub(crate) ")
            .or_else(|| line.strip_prefix("pub(super) "))
            .or_else(|| line.strip_prefix("pub "))
            .unwrap_or(line);
        if let Some(tree) = line.strip_prefix("use ") {
            let offset = code[at..line_end].find(tree).map_or(line_end, |n| at + n);
            let end = code[offset..].find(';').map_or(code.len(), |n| offset + n);
            paths.extend(expand(&code[offset..end].replace(char::is_whitespace, "")));
        }
        at = line_end + 1;
    }
    paths
}

/// Items a module brings in with `use` from another module of the crate: (module, item name)
/// → the module the item comes from. A path through such a re-export (`crate::LeaseError`)
/// uses the module that defines it, not the one that re-exports it.
/// `None`: the item comes from another crate (a path through it names no module of ours).
type Aliases = BTreeMap<(Vec<String>, String), Option<Vec<String>>>;

/// The absolute module path `path` points into, seen from module `from` (`None`: an outside
/// crate, or a path that names no module of this crate).
fn resolve(path: &str, from: &[String], modules: &[Vec<String>]) -> Option<Vec<String>> {
    resolve_through(path, from, modules, &Aliases::new())
}

fn resolve_through(
    path: &str,
    from: &[String],
    modules: &[Vec<String>],
    aliases: &Aliases,
) -> Option<Vec<String>> {
    let mut segments = path.split("::").filter(|s| !s.is_empty());
    let first = segments.next()?;
    let mut at: Vec<String> = match first {
        "crate" => Vec::new(),
        "self" => from.to_vec(),
        "super" => from[..from.len().saturating_sub(1)].to_vec(),
        // A path relative to this module: `use wait::WaitTicket` names its child `wait`.
        child => {
            let mut m = from.to_vec();
            m.push(child.to_owned());
            if !modules.contains(&m) {
                return None;
            }
            m
        }
    };
    for s in segments {
        if s == "super" {
            at.pop();
            continue;
        }
        let mut deeper = at.clone();
        deeper.push(s.to_owned());
        if modules.contains(&deeper) {
            at = deeper;
        } else {
            if let Some(origin) = aliases.get(&(at.clone(), s.to_owned())) {
                at = origin.clone()?;
            }
            break;
        }
    }
    Some(at)
}

fn graph(root: &Path) -> Graph {
    fn walk(dir: &Path, at: &[String], out: &mut Vec<(Vec<String>, String)>) {
        for entry in fs::read_dir(dir).expect("a readable source dir") {
            let path = entry.expect("an entry").path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let mut module = at.to_vec();
            if path.is_dir() {
                module.push(name);
                walk(&path, &module, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if !matches!(name.as_str(), "mod" | "lib" | "main") {
                    module.push(name);
                }
                out.push((module, code_of(&fs::read_to_string(&path).unwrap())));
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &[], &mut files);
    let modules: Vec<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    // What each module re-exports (or imports) from another, by item name; then every use,
    // through them.
    let mut aliases = Aliases::new();
    for (module, code) in &files {
        for path in use_paths(code) {
            let name = path.rsplit("::").next().unwrap_or("").to_owned();
            if name.is_empty() || name == "*" {
                continue;
            }
            match resolve(&path, module, &modules) {
                Some(origin) if origin != *module => {
                    let mut named = origin.clone();
                    named.push(name.clone());
                    if !modules.contains(&named) {
                        aliases
                            .entry((module.clone(), name))
                            .or_insert(Some(origin));
                    }
                }
                Some(_) => {}
                None => {
                    aliases.entry((module.clone(), name)).or_insert(None);
                }
            }
        }
    }
    let mut uses = Vec::new();
    for (module, code) in &files {
        // Paths in code that start at a child module (`spawn::ThreadGroup::new`).
        let mut paths = named_paths(code);
        for child in modules
            .iter()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
        {
            let name = format!("{}::", child[module.len()]);
            let mut rest = code.as_str();
            while let Some(at) = rest.find(&name) {
                let before = rest[..at].chars().last();
                if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    paths.push(format!("self::{name}"));
                }
                rest = &rest[at + name.len()..];
            }
        }
        for path in paths {
            if let Some(target) = resolve_through(&path, module, &modules, &aliases) {
                uses.push((module.clone(), target, path));
            }
        }
    }
    Graph { modules, uses }
}

/// In every folder, the modules directly in it (and the folder's own `mod.rs`) must not use
/// each other in a circle — what a module's descendants use counts as its own use. Returns
/// each circle found, as `folder: a -> b -> a`.
fn circles(g: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    let folders: std::collections::BTreeSet<Vec<String>> = g.modules.iter().cloned().collect();
    for folder in &folders {
        // The node of `m` in this folder: `folder` itself or its child containing `m`.
        let node = |m: &Vec<String>| -> Option<String> {
            if !m.starts_with(folder) {
                return None;
            }
            Some(
                m.get(folder.len())
                    .cloned()
                    .unwrap_or_else(|| "(mod)".to_owned()),
            )
        };
        let mut edges: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        let mut why: BTreeMap<(String, String), String> = BTreeMap::new();
        for (from, to, path) in &g.uses {
            if let (Some(a), Some(b)) = (node(from), node(to)) {
                if a != b {
                    why.entry((a.clone(), b.clone()))
                        .or_insert_with(|| format!("{} names {path}", from.join("::")));
                    edges.entry(a).or_default().insert(b);
                }
            }
        }
        // A depth-first search for a back edge.
        fn visit(
            n: &str,
            edges: &BTreeMap<String, std::collections::BTreeSet<String>>,
            stack: &mut Vec<String>,
            done: &mut std::collections::BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = stack.iter().position(|s| s == n) {
                let mut circle = stack[at..].to_vec();
                circle.push(n.to_owned());
                return Some(circle);
            }
            if done.contains(n) {
                return None;
            }
            stack.push(n.to_owned());
            for next in edges.get(n).into_iter().flatten() {
                if let Some(c) = visit(next, edges, stack, done) {
                    return Some(c);
                }
            }
            stack.pop();
            done.insert(n.to_owned());
            None
        }
        let mut done = std::collections::BTreeSet::new();
        for start in edges.keys() {
            if let Some(circle) = visit(start, &edges, &mut Vec::new(), &mut done) {
                let name = if folder.is_empty() {
                    "crate".to_owned()
                } else {
                    folder.join("::")
                };
                let evidence: Vec<&str> = circle
                    .windows(2)
                    .filter_map(|w| why.get(&(w[0].clone(), w[1].clone())).map(String::as_str))
                    .collect();
                found.push(format!(
                    "{name}: {} ({})",
                    circle.join(" -> "),
                    evidence.join("; ")
                ));
                break;
            }
        }
    }
    found
}

#[test]
fn no_folder_of_either_crate_has_an_import_circle() {
    let _deadline = testkit::deadline();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    for (krate, root) in [("leasepool-actors", "actors/src"), ("leasepool", "src")] {
        let g = graph(&dir.join(root));
        assert!(
            g.modules.len() >= 20,
            "{krate}: found only {} modules",
            g.modules.len()
        );
        all.extend(circles(&g).into_iter().map(|c| format!("{krate} {c}")));
    }
    assert!(all.is_empty(), "import circles:\n{}", all.join("\n"));
}

#[test]
fn the_circle_check_sees_use_trees_super_paths_and_folders() {
    let _deadline = testkit::deadline();
    assert_eq!(
        expand("a::{b, c::{d, self}}"),
        ["a::b", "a::c::d", "a::c"].map(String::from)
    );
    let m = |p: &str| p.split("::").map(String::from).collect::<Vec<_>>();
    let modules = vec![m("q"), m("q::gate"), m("q::store"), m("q::store::redis")];
    assert_eq!(
        resolve("super::Shared", &m("q::gate"), &modules),
        Some(m("q"))
    );
    assert_eq!(
        resolve("crate::q::store::redis::Conn", &m("q"), &modules),
        Some(m("q::store::redis"))
    );
    assert_eq!(resolve("std::sync::Arc", &m("q"), &modules), None);
    assert_eq!(
        resolve("store::redis::Conn", &m("q"), &modules),
        Some(m("q::store::redis"))
    );
    // gate uses the folder's mod.rs, which uses gate: a circle; and one through a descendant.
    let g = Graph {
        modules: modules.clone(),
        uses: vec![
            (m("q::gate"), m("q"), "super::Shared".into()),
            (m("q"), m("q::gate"), "gate::Gate".into()),
        ],
    };
    assert_eq!(
        circles(&g),
        ["q: (mod) -> gate -> (mod) (q names gate::Gate; q::gate names super::Shared)"]
    );
    // What a descendant uses is its ancestor's use: store (through redis) <-> gate.
    let g = Graph {
        modules,
        uses: vec![
            (
                m("q::store::redis"),
                m("q::gate"),
                "super::super::gate::G".into(),
            ),
            (m("q::gate"), m("q::store"), "super::store::S".into()),
            (m("q"), m("q::gate"), "gate::G".into()),
        ],
    };
    let found = circles(&g);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("q: gate -> store -> gate"),
        "{found:?}"
    );
}
