//! The top-level folders of `src/` are the architecture (ARCHITECTURE.md): none may reach
//! back into a folder that reaches it. Read from the source, as `use crate::<folder>` and
//! `crate::<folder>::` paths (grouped `use crate::{a::x, b}` included; comment lines, doc
//! links among them, are skipped), so a new cycle fails here with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Edges that must never exist even without a cycle: the record is read by the new kernel's
/// `report` without the tracer, and the histograms are built from reports, not the reverse.
const FORBIDDEN: &[(&str, &str)] = &[("record", "trace"), ("record", "metrics")];

/// Loader-side edges that close cycles on main and are being removed (issue 12, the loader
/// folders). Each must still exist: delete an entry as soon as its edge is gone.
const PENDING: &[(&str, &str)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The first path segment of every `crate::` reference in `text`.
fn crate_roots(text: &str) -> BTreeSet<String> {
    let mut roots = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        // `fastkexec_crate::` or `my_crate::` are not this crate.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of a `{...}` group: split at depth-0 commas.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        roots.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            roots.insert(first_segment(&item));
        } else {
            roots.insert(first_segment(rest));
        }
    }
    roots.remove("");
    roots
}

fn first_segment(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// folder → folders it refers to (only top-level folders of `src/`, `bin` excluded).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let folders: BTreeSet<String> = fs::read_dir(src())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "bin")
        .collect();
    let mut g = BTreeMap::new();
    for f in &folders {
        let mut files = Vec::new();
        rust_files(&src().join(f), &mut files);
        let mut to = BTreeSet::new();
        for file in files {
            // Doc links name modules without depending on them.
            let text: String = fs::read_to_string(&file)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            to.extend(
                crate_roots(&text)
                    .into_iter()
                    .filter(|r| r != f && folders.contains(r)),
            );
        }
        g.insert(f.clone(), to);
    }
    g
}

/// One cycle through `start`, if any (a path `start → … → start`).
fn cycle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(g, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_parser_sees_plain_grouped_and_inline_paths() {
    let text = "use crate::record::x;\nuse crate::{files::atomic_file, host::{a, b}, Error};\n\
                let v = crate::trace::ebpf::X; use fastkexec_crate::nope;";
    let got: Vec<String> = crate_roots(text).into_iter().collect();
    assert_eq!(got, ["Error", "files", "host", "record", "trace"]);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (f, t) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(f.to_string()).or_default().insert(t.to_string());
    }
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(cycle_from(&g, "d"), None);
}

#[test]
fn no_cycle_between_top_level_folders() {
    let mut g = graph();
    assert!(g.len() > 5, "src/ folders not found: {g:?}");
    for (from, to) in FORBIDDEN {
        assert!(
            !g[*from].contains(*to),
            "src/{from} refers to crate::{to}; that direction is not allowed (ARCHITECTURE.md)"
        );
    }
    for (from, to) in PENDING {
        assert!(
            g.get_mut(*from).is_some_and(|s| s.remove(*to)),
            "{from} → {to} is gone: remove it from PENDING in {}",
            file!()
        );
    }
    let cycles: Vec<String> = g
        .keys()
        .filter_map(|f| cycle_from(&g, f))
        .map(|c| c.join(" → "))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles between src/ folders:\n{}",
        cycles.join("\n")
    );
}
