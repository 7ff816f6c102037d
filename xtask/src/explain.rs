//! After a run, in words: the per-guest console logs, the hypervisor's
//! backtrace symbolized, one row per domain; and `cargo xtask list`.

use std::fmt::Write as _;
use std::path::Path;

use crate::machine::Booter;
use crate::manifest::{self, Scenario};
use crate::{summary, symbols};

/// After a run: the per-guest console logs, the hypervisor's fault (if
/// any) symbolized, and one row per domain.
pub fn explain(booter: &Booter<'_>, scenario: &Scenario, transcript: &str) {
    let dir = booter.work_dir().join("logs").join(&scenario.name);
    for (name, text) in summary::console_logs(transcript) {
        let path = dir.join(format!("{name}.log"));
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("xtask: warning: cannot write {}: {e}", path.display());
        }
    }
    let syms = symbols::Symbols::new(&booter.root);
    let facts = tahoma_tests::Facts::parse(transcript);
    for f in facts.of_kind("backtrace") {
        eprintln!("xtask: hypervisor backtrace:");
        for (i, field) in f.fields.iter().enumerate() {
            let Some(addr) = tahoma_tests::facts::parse_number(&field.key) else {
                continue;
            };
            // Return addresses point after the call: look up the call.
            let probe = if i == 0 { addr } else { addr.saturating_sub(1) };
            let at = syms
                .locate(&booter.images.hypervisor, probe)
                .unwrap_or_else(|| "?".into());
            eprintln!("xtask:   {addr:#018x}  {at}");
        }
    }
    let rows = rows(booter, scenario, transcript, &syms);
    if !rows.is_empty() {
        eprintln!();
        for line in summary::render(&rows).lines() {
            eprintln!("  {line}");
        }
        eprintln!();
    }
}

/// One row per domain of `scenario`'s run, faults symbolized from the
/// guests' images.
pub fn rows(
    booter: &Booter<'_>,
    scenario: &Scenario,
    transcript: &str,
    syms: &symbols::Symbols,
) -> Vec<summary::Row> {
    let image_of = |name: &str| {
        scenario
            .guests
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.image_path(&booter.images.dir))
    };
    let symbolize = |name: &str, rip: u64| syms.locate(&image_of(name)?, rip);
    let expected: Vec<String> = scenario.guests.iter().map(|g| g.name.clone()).collect();
    summary::summarize(transcript, &expected, &symbolize)
}

/// What `cargo xtask list` prints: every scenario, its guests and channels.
pub fn list_text(root: &Path) -> Result<String, String> {
    let mut out = String::new();
    for name in manifest::list(root)? {
        let s = Scenario::load(root, &name)?;
        let _ = writeln!(
            out,
            "{name:<20} {}",
            s.description.as_deref().unwrap_or("(no description)")
        );
        let mut groups: Vec<(String, &str, u32, usize)> = Vec::new();
        for g in &s.guests {
            let base = g
                .name
                .rsplit_once('-')
                .filter(|(_, n)| n.parse::<u32>().is_ok())
                .map_or(g.name.as_str(), |(b, _)| b);
            match groups
                .iter_mut()
                .find(|(b, i, m, _)| b == base && *i == g.image && *m == g.mem_pages)
            {
                Some(grp) => grp.3 += 1,
                None => groups.push((base.to_string(), &g.image, g.mem_pages, 1)),
            }
        }
        for (name, image, pages, count) in groups {
            let copies = if count > 1 {
                format!(" x{count}")
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{:<20}   guest {name}{copies}: image {image}, {} KiB",
                "",
                u64::from(pages) * 4
            );
        }
        for c in &s.channels {
            let _ = writeln!(
                out,
                "{:<20}   channel {}: {} <-> {}",
                "", c.name, s.guests[c.ends[0]].name, s.guests[c.ends[1]].name
            );
        }
        let (_, reach) = crate::machine::endpoints(&s);
        if reach.is_empty() {
            let _ = writeln!(
                out,
                "{:<20}   devices: none; machine memory {} MiB",
                "", s.memory_mib
            );
        } else {
            for r in reach {
                let _ = writeln!(out, "{:<20}   {r}", "");
            }
            let _ = writeln!(out, "{:<20}   machine memory {} MiB", "", s.memory_mib);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_every_scenario_with_its_guests() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = list_text(root).unwrap();
        for name in manifest::list(root).unwrap() {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains("guest ping: image pingpong"), "{text}");
        assert!(text.contains("channel pingpong: ping <-> pong"), "{text}");
    }
}
