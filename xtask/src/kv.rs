//! What `cargo xtask run` prints for the sample unikernel (docs/kvstore.md):
//! the `curl` lines to try against a `kvstore` guest's forwarded port.

use std::path::Path;

use crate::devices::Proto;
use crate::manifest::Scenario;

/// The `curl` lines for every `kvstore` guest with a TCP forward to its
/// port 80 (empty for any other scenario).
pub fn curl_lines(scenario: &Scenario) -> Vec<String> {
    let mut lines = Vec::new();
    for g in scenario.guests.iter().filter(|g| g.image == "kvstore") {
        for f in g.vnic.iter().flat_map(|v| v.forward.iter()) {
            if f.proto != Proto::Tcp || f.guest_port != 80 {
                continue;
            }
            let url = format!("http://127.0.0.1:{}", f.host_port);
            lines.push(format!(
                "the key-value service `{}` (docs/kvstore.md) answers on {url}; try, from another shell:",
                g.name
            ));
            for cmd in [
                format!("curl -X PUT --data-binary 'hello, tahoma' {url}/kv/greeting"),
                format!("curl {url}/kv/greeting"),
                format!("curl '{url}/kv?prefix=gr&limit=10'"),
                format!("curl -X DELETE {url}/kv/greeting"),
                format!("curl {url}/stats"),
            ] {
                lines.push(format!("  {cmd}"));
            }
            lines.push("Ctrl-C stops it.".to_string());
        }
    }
    lines
}

/// Where each `kvstore` guest keeps its data, for `cargo xtask run`: on its
/// first vblk, an extent of the scenario's disk image under `root`, which
/// persists across runs (said, with whether this run creates it); or,
/// without a vblk, on a RAM disk lost when it ends. Call before the boot
/// (the image is created then).
pub fn storage_lines(scenario: &Scenario, root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for g in scenario.guests.iter().filter(|g| g.image == "kvstore") {
        match (&scenario.disk, g.vblk.first()) {
            (Some(disk), Some(v)) => {
                let path = disk.path(root);
                let state = if path.exists() {
                    "found: what earlier runs stored is served again"
                } else {
                    "created by this run"
                };
                lines.push(format!(
                    "`{}` stores its data on its vblk ({} KiB at offset {} of {}, {state}); the data persists: run again and it is still there; delete the file to start afresh",
                    g.name,
                    v.size / 1024,
                    v.offset,
                    disk.file.display(),
                ));
            }
            _ => lines.push(format!(
                "`{}` has no [[guest.vblk]]: its store is a RAM disk, lost when the run ends",
                g.name
            )),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kvstore_scenario_prints_curl_lines_for_its_forward() {
        let root = crate::images::root();
        let s = Scenario::load(&root, "kvstore").unwrap();
        let lines = curl_lines(&s);
        assert!(
            lines
                .iter()
                .any(|l| l == "  curl http://127.0.0.1:8080/kv/greeting"),
            "{lines:?}"
        );
        let hello = Scenario::load(&root, "hello").unwrap();
        assert!(curl_lines(&hello).is_empty());
        assert!(storage_lines(&hello, &root).is_empty());
    }

    #[test]
    fn the_default_run_says_its_data_persists_and_where() {
        let root = crate::images::root();
        let s = Scenario::load(&root, "kvstore").unwrap();
        // A root with no image yet: this run would create it.
        let fresh = std::env::temp_dir().join(format!("tahoma-kv-root-{}", std::process::id()));
        let lines = storage_lines(&s, &fresh);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("target/tahoma/disks/kvstore.img")
                && lines[0].contains("persists")
                && lines[0].contains("created by this run"),
            "{lines:?}"
        );
        let image = fresh.join("target/tahoma/disks/kvstore.img");
        std::fs::create_dir_all(image.parent().unwrap()).unwrap();
        std::fs::write(&image, b"").unwrap();
        let again = storage_lines(&s, &fresh);
        std::fs::remove_dir_all(&fresh).unwrap();
        assert!(again[0].contains("found"), "{again:?}");
    }
}
