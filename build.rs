//! Prepares the crate documentation: the README is the crate's front page and the guide pages in
//! `docs/` become the `guide` module, so that their examples run as doctests and read on docs.rs.
//! Links between these markdown files are rewritten into rustdoc links (`docs/concepts.md` →
//! `crate::guide::concepts`); links to files rustdoc cannot show become plain text.

use std::fs;
use std::path::Path;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out);
    fs::create_dir_all(out.join("docs")).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed=README.md");
    println!("cargo:rerun-if-changed=docs");
    let readme = fs::read_to_string("README.md").expect("README.md");
    fs::write(out.join("README.md"), rewrite(&readme, "docs/")).expect("write README.md");
    for entry in fs::read_dir("docs").expect("docs/") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            println!("cargo:rerun-if-changed={}", path.display());
            let page = rewrite(&fs::read_to_string(&path).expect("a guide page"), "");
            let name = path.file_name().expect("a file name");
            fs::write(out.join("docs").join(name), &page).expect("write a page");
            // For builds without the features a page's examples need: the same text, its
            // examples shown but not compiled.
            let shown = path.with_extension("shown.md");
            let shown = shown.file_name().expect("a file name");
            fs::write(out.join("docs").join(shown), not_compiled(&page)).expect("write a page");
        }
    }
}

/// Rewrites every markdown link target `](…)` of a page whose guide pages live under `dir`.
fn rewrite(page: &str, dir: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut rest = page;
    while let Some(at) = rest.find("](") {
        let (before, after) = rest.split_at(at + 2);
        let Some(end) = after.find(')') else {
            break;
        };
        let target = &after[..end];
        match link(target, dir) {
            Link::Keep => {
                out.push_str(before);
                out.push_str(target);
                out.push(')');
            }
            Link::To(new) => {
                out.push_str(before);
                out.push_str(&new);
                out.push(')');
            }
            Link::Text => {
                // `[text](file)` → `text`: drop the `[` before the text and the link itself.
                let open = before[..before.len() - 2].rfind('[').unwrap_or(0);
                let image = open > 0 && before.as_bytes()[open - 1] == b'!';
                let text = &before[open + 1..before.len() - 2];
                out.push_str(&before[..if image { open - 1 } else { open }]);
                if !image {
                    out.push_str(text);
                }
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Marks every Rust code block `ignore`.
fn not_compiled(page: &str) -> String {
    page.lines()
        .map(|line| match line.trim_start().strip_prefix("```rust") {
            Some(_) => "```rust,ignore".to_owned(),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

enum Link {
    Keep,
    To(String),
    Text,
}

fn link(target: &str, dir: &str) -> Link {
    if target.contains("://") || target.starts_with('#') || target.starts_with("crate::") {
        return Link::Keep;
    }
    let (file, fragment) = match target.split_once('#') {
        Some((file, fragment)) => (file, Some(fragment)),
        None => (target, None),
    };
    if file == "../README.md" || file == "README.md" && dir.is_empty() {
        return Link::To("crate".to_owned());
    }
    match file.strip_prefix(dir).and_then(|f| f.strip_suffix(".md")) {
        Some(page) if !page.contains('/') => {
            let module = page.replace('-', "_");
            Link::To(match fragment {
                Some(fragment) => format!("crate::guide::{module}#{fragment}"),
                None => format!("crate::guide::{module}"),
            })
        }
        _ => Link::Text,
    }
}
