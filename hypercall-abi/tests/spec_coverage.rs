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
