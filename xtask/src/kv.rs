//! What `cargo xtask run` prints for the sample unikernel (docs/kvstore.md):
//! the `curl` lines to try against a `kvstore` guest's forwarded port.

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
    }
}
