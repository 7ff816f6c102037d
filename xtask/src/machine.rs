//! Booting a scenario: manifest -> boot pack -> QEMU. Shared by `run` and by
//! the [`Machine`] that `test` hands to the scenario tests.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tahoma_tests::{BootOutcome, BootRequest, Machine, PackMutation};
use xshell::Shell;

use crate::images::Images;
use crate::manifest::Scenario;
use crate::qemu::{Accel, Ended, Run};

/// Everything a boot needs besides the request.
pub struct Booter<'a> {
    /// For running QEMU.
    pub sh: &'a Shell,
    /// The workspace root.
    pub root: PathBuf,
    /// The built images.
    pub images: Images,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The accelerator.
    pub accel: Accel,
}

/// How to present a boot.
pub struct Presentation {
    /// Stream serial output to stdout.
    pub echo: bool,
    /// Wait for gdb on this port; no timeout.
    pub gdb: Option<u16>,
    /// Log file name (without `.log`).
    pub log_name: String,
}

/// Ports and devices a scenario asks for, and how a human reaches them.
///
/// Returns the QEMU arguments of the network (`[net]`: QEMU's user network
/// with every vNIC's forwards bound to 127.0.0.1, and the virtio-net
/// device after the disk's) and one line per endpoint for `run` to print.
/// A scenario's disk (`[disk]`) is listed here; its QEMU arguments come from
/// [`Booter::boot_with`], which also creates the image.
pub fn endpoints(scenario: &Scenario) -> (Vec<String>, Vec<String>) {
    let mut reach = Vec::new();
    let mut args = Vec::new();
    if let Some(net) = &scenario.net {
        let n = u32::from(scenario.disk.is_some());
        if let Some((base, irq)) = crate::devices::mmio_slot(n) {
            reach.push(format!(
                "network: virtio-net at {base:#x}, IOAPIC input {irq}, switched by `{}` (QEMU user network 10.0.2.0/24, gateway 10.0.2.2)",
                scenario.guests[net.driver].name
            ));
        }
        for g in &scenario.guests {
            for v in &g.vnic {
                let [a, b, c, d] = v.ipv4;
                for f in &v.forward {
                    reach.push(format!(
                        "{} 127.0.0.1:{} -> `{}` {a}.{b}.{c}.{d}:{}",
                        f.proto.name(),
                        f.host_port,
                        g.name,
                        f.guest_port
                    ));
                }
            }
        }
        let vnics: Vec<&[crate::devices::Vnic]> =
            scenario.guests.iter().map(|g| g.vnic.as_slice()).collect();
        args = net.qemu_args(&vnics, scenario.disk.is_none());
    }
    if let Some(disk) = &scenario.disk {
        if let Some((base, irq)) = crate::devices::mmio_slot(0) {
            reach.push(format!(
                "disk {} ({} MiB): virtio-blk at {base:#x}, IOAPIC input {irq}, driven by `{}`",
                disk.file.display(),
                disk.size >> 20,
                scenario.guests[disk.driver].name
            ));
        }
    }
    (args, reach)
}

impl Booter<'_> {
    /// `target/tahoma`.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("target/tahoma")
    }

    /// Loads and packs `req.scenario`, boots it, and returns the outcome
    /// (plus the scenario, for callers that print more).
    pub fn boot(
        &self,
        req: &BootRequest,
        how: &Presentation,
    ) -> Result<(BootOutcome, Scenario, Ended), String> {
        self.boot_with(req, how, &[])
    }

    /// [`Booter::boot`] with extra QEMU arguments after the usual ones
    /// (`cargo xtask bench` adds `-icount ...` and `-rtc ...`).
    pub fn boot_with(
        &self,
        req: &BootRequest,
        how: &Presentation,
        qemu_extra: &[String],
    ) -> Result<(BootOutcome, Scenario, Ended), String> {
        let scenario = Scenario::load(&self.root, &req.scenario)?;
        scenario.check_loadable(&self.images.dir)?;
        let pack = scenario.pack(&self.images.dir)?;
        scenario.check_fit(self.images.hypervisor_memory()?, pack.len() as u64)?;
        if how.echo {
            eprintln!(
                "xtask: packed {} guest(s) into a {} KiB boot pack",
                scenario.guests.len(),
                pack.len().div_ceil(1024)
            );
        }
        let packs = self.work_dir().join("packs");
        std::fs::create_dir_all(&packs)
            .map_err(|e| format!("cannot create {}: {e}", packs.display()))?;
        let initrd = match req.pack {
            PackMutation::Intact => Some(write(&packs, &format!("{}.pack", scenario.name), &pack)?),
            PackMutation::Truncate(n) => {
                let n = usize::try_from(n)
                    .ok()
                    .filter(|&n| n <= pack.len())
                    .ok_or(format!(
                        "cannot truncate a {}-byte pack by {n} bytes",
                        pack.len()
                    ))?;
                let name = format!("{}.truncated-{n}.pack", scenario.name);
                Some(write(&packs, &name, &pack[..pack.len() - n])?)
            }
            PackMutation::Omit => None,
        };
        let pack_size = match &initrd {
            Some(p) => Some(
                std::fs::metadata(p)
                    .map_err(|e| format!("cannot stat {}: {e}", p.display()))?
                    .len(),
            ),
            None => None,
        };
        let append = [scenario.cmdline.as_str(), req.cmdline.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let (net, _) = endpoints(&scenario);
        let mut extra = Vec::new();
        if scenario.icount && self.accel == crate::qemu::Accel::Tcg {
            extra.extend(crate::bench::ICOUNT_ARGS.iter().map(|s| s.to_string()));
        }
        // The disk's device first (slot 7), then the network's (`mmio_slot`).
        if let Some(disk) = &scenario.disk {
            if req.fresh_disk {
                let path = disk.path(&self.root);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(format!(
                            "cannot delete {} for a fresh disk: {e}",
                            path.display()
                        ))
                    }
                }
            }
            let image = disk.ensure_image(&self.root)?;
            extra.extend(disk.qemu_args(&image));
        }
        extra.extend(net);
        extra.extend(qemu_extra.iter().cloned());
        let log = self
            .work_dir()
            .join("logs")
            .join(format!("{}.log", how.log_name));
        let run = Run {
            qemu: self.qemu.clone(),
            accel: self.accel,
            memory_mib: scenario.memory_mib,
            kernel: self.images.hypervisor.clone(),
            initrd,
            append,
            gdb: how.gdb,
            extra,
            cpu: req.cpu.clone(),
            timeout: if how.gdb.is_some() && req.timeout.is_none() {
                None
            } else {
                Some(req.timeout.unwrap_or(scenario.timeout))
            },
            echo: how.echo,
            log: log.clone(),
            kill_on: req.kill_on.clone(),
            kill_file: req.kill_file.clone(),
        };
        let ended = run.run(self.sh)?;
        let mut outcome = BootOutcome::new(
            ended.exit.clone(),
            ended.raw_status,
            ended.transcript.clone(),
        );
        outcome.pack_size = pack_size;
        outcome.log = Some(log);
        Ok((outcome, scenario, ended))
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The [`Machine`] for one scenario test: boots quietly, logs to
/// `target/tahoma/logs/tests/<test>[.N].log`.
pub struct TestMachine<'a, 'b> {
    /// The booter.
    pub booter: &'a Booter<'b>,
    /// The test's name.
    pub test: &'static str,
    /// Boots so far.
    pub boots: Cell<usize>,
    /// Timeout override for every boot (`--timeout`).
    pub timeout: Option<Duration>,
}

impl TestMachine<'_, '_> {
    /// The log of the last boot, if there was one.
    pub fn last_log(&self) -> Option<PathBuf> {
        let n = self.boots.get().checked_sub(1)?;
        Some(
            self.booter
                .work_dir()
                .join("logs")
                .join(format!("{}.log", self.log_name(n))),
        )
    }

    /// The log of boot number `n`.
    pub fn log_name(&self, n: usize) -> String {
        if n == 0 {
            format!("tests/{}", self.test)
        } else {
            format!("tests/{}.{n}", self.test)
        }
    }
}

impl Machine for TestMachine<'_, '_> {
    fn boot(&self, req: &BootRequest) -> Result<BootOutcome, String> {
        let n = self.boots.get();
        self.boots.set(n + 1);
        let mut req = req.clone();
        if self.timeout.is_some() {
            req.timeout = self.timeout;
        }
        let how = Presentation {
            echo: false,
            gdb: None,
            log_name: self.log_name(n),
        };
        self.booter.boot(&req, &how).map(|(outcome, _, _)| outcome)
    }
}
