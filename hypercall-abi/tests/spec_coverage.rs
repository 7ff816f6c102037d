//! The specification in `docs/abi/` and the crate must agree: every
//! hypercall number has a section headed `## CLAUSE name (0xNN)`.

use hypercall_abi::Hypercall;
use std::path::Path;

fn spec_text() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/abi");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            text.push_str(&std::fs::read_to_string(&path).expect("spec page"));
            text.push('\n');
        }
    }
    text
}

#[test]
fn spec_covers_every_hypercall() {
    let text = spec_text();
    let missing: Vec<String> = Hypercall::ALL
        .iter()
        .map(|h| format!("## {} {} ({:#04x})", h.clause(), h.spec_name(), h.number()))
        .filter(|heading| !text.lines().any(|l| l.trim_end() == heading))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/abi lacks sections:\n{}",
        missing.join("\n")
    );
}

#[test]
fn spec_names_no_hypercall_the_crate_lacks() {
    let text = spec_text();
    for line in text
        .lines()
        .filter(|l| l.starts_with("## ") && l.trim_end().ends_with(')'))
    {
        let Some(num) = line
            .rsplit_once("(0x")
            .map(|(_, n)| n.trim_end_matches(')'))
        else {
            continue;
        };
        let n = u64::from_str_radix(num, 16).unwrap_or_else(|_| panic!("bad number in {line:?}"));
        let h = Hypercall::from_number(n)
            .unwrap_or_else(|| panic!("spec section {line:?} names no hypercall"));
        assert!(
            line.contains(h.spec_name()) && line.contains(h.clause()),
            "{line:?} disagrees with {h:?}"
        );
    }
}

#[test]
fn every_error_code_is_in_the_table() {
    let text = spec_text();
    for e in hypercall_abi::Error::ALL {
        let row = format!("| {} | `{}` |", e.code(), e.name());
        assert!(text.contains(&row), "CALL-3 table lacks {row}");
    }
}

/// The clause IDs a page defines: headings `## ID ...` and bold rules
/// `**ID**` / `**ID (title).**` (the same rule as xtask's `clauses_in`).
fn clause_ids(text: &str) -> Vec<String> {
    let is_id = |s: &str| {
        let Some((family, rest)) = s.split_once('-') else {
            return false;
        };
        let digits = rest.trim_end_matches(|c: char| c.is_ascii_lowercase());
        !family.is_empty()
            && family.chars().all(|c| c.is_ascii_uppercase())
            && !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
            && rest.len() - digits.len() <= 1
    };
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("## ") {
            let id = rest.split_whitespace().next().unwrap_or("");
            if is_id(id) {
                out.push(id.to_string());
            }
        }
        let mut rest = line;
        while let Some(start) = rest.find("**") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("**") else { break };
            let inner = &after[..end];
            let id = inner.split(' ').next().unwrap_or("");
            if is_id(id) && (id == inner || inner[id.len()..].starts_with(" (")) {
                out.push(id.to_string());
            }
            rest = &after[end + 2..];
        }
    }
    out
}

/// The family table of `docs/abi/README.md`: (family, page).
fn family_table(readme: &str) -> Vec<(String, String)> {
    readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let family = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            if family.is_empty() || !family.chars().all(|c| c.is_ascii_uppercase()) {
                return None;
            }
            let page = cells.get(2)?;
            let page = if *page == "this page" {
                "README.md"
            } else {
                page.split_once("](")?.1.strip_suffix(')')?
            };
            Some((family.to_string(), page.to_string()))
        })
        .collect()
}

/// One page per family (issue 8): the README's table names each family's
/// page, every page there exists, and each page defines clauses of its own
/// family only (it may cite others in prose, but never define them).
#[test]
fn spec_pages_hold_one_family_each() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/abi");
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("docs/abi/README.md");
    let table = family_table(&readme);
    assert!(
        table.len() >= 11,
        "docs/abi/README.md's family table has only {} rows: {table:?}",
        table.len()
    );
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .expect("docs/abi")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    pages.sort();
    for page in &pages {
        let owners: Vec<&str> = table
            .iter()
            .filter(|(_, p)| p == page)
            .map(|(f, _)| f.as_str())
            .collect();
        assert_eq!(
            owners.len(),
            1,
            "docs/abi/{page} must be the page of exactly one family in README.md's table, is of {owners:?}"
        );
        let text = std::fs::read_to_string(dir.join(page)).expect("spec page");
        let strays: Vec<String> = clause_ids(&text)
            .into_iter()
            .filter(|id| id.split('-').next() != Some(owners[0]))
            .collect();
        assert!(
            strays.is_empty(),
            "docs/abi/{page} is the {} page but defines {strays:?}: move them to their family's page",
            owners[0]
        );
    }
    for (family, page) in &table {
        assert!(
            pages.contains(page),
            "README.md names {page} for {family}, but docs/abi has no such page"
        );
    }
}
