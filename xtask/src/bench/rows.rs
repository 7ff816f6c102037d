//! The rows of the icount pass: each guest figure with the reference it
//! is compared with (the anchors of `docs/benchmarks.md`), guest start,
//! density and the disk ratios.

use super::{group, kv_guest, BootFigures, Record, Row, Value};

/// What a guest figure should be compared with (the anchors measured on
/// the same emulator; `docs/benchmarks.md`).
pub fn reference(name: &str) -> &'static str {
    match name {
        "empty_pair" => "subtracted from every figure below",
        "null_hypercall" => {
            "floor 32 (syscall+swapgs+stack switch+call into Rust; bare syscall+sysretq 9); \
             Linux getpid 322; Xen PV getpid 1,094"
        }
        "event_round_trip" | "event_round_trip_block" | "event_round_trip_poll" => {
            "Linux pipe ping-pong 12,694 (futex 9,691); Xen PV 22,940 (futex 16,303)"
        }
        "yield_round_trip" => "Linux futex ping-pong 9,691; Xen PV 16,303 (2 switches each)",
        "domain_switch" => "half a futex ping-pong: Linux 4,846; Xen PV 8,152",
        "domain_switch_64dom" => "domain_switch with 62 more (blocked) domains: must match it",
        "domain_switch_fpu" => {
            "both domains write XMM0 after each yield: eager FPU switching costs the same"
        }
        "yield_round_trip_fpu" => {
            "yield_round_trip with SIMD in use on both sides (+1 instruction)"
        }
        "domain_switch_density" => {
            "domain_switch with the density scenario's idle guests present: must match it"
        }
        "yield_round_trip_density" => {
            "yield_round_trip with the density scenario's idle guests present: must match it"
        }
        "yield_round_trip_64dom" => {
            "yield_round_trip with 62 more (blocked) domains: must match it"
        }
        "mmu_update_batch_1" | "mmu_update_batch_32" | "mmu_update_batch_512" => {
            "per entry; floor: the null hypercall split over the batch plus one \
             validated store. Linux mprotect of one page 2,923; Xen PV 6,672"
        }
        "mmu_pin_fresh_space" | "mmu_pin_per_table" | "mmu_unpin_fresh_space" => {
            "validates every entry of the tree once (512 per table)"
        }
        "blk_direct_read_d1"
        | "blk_direct_read_d32"
        | "blk_direct_write_d1"
        | "blk_direct_write_d32" => {
            "per 4 KiB request: the driver domain on the device itself (the baseline)"
        }
        "blk_vblk_read_d1" | "blk_vblk_read_d32" | "blk_vblk_write_d1" | "blk_vblk_write_d32" => {
            "per 4 KiB request through the ring: compare blk_direct_* of the same run"
        }
        "blk_cpu_direct_read_d1"
        | "blk_cpu_direct_read_d32"
        | "blk_cpu_direct_write_d1"
        | "blk_cpu_direct_write_d32" => {
            "CPU work per request, the driver on the device (time blocked in event::wait left out)"
        }
        "blk_cpu_front_read_d1"
        | "blk_cpu_front_read_d32"
        | "blk_cpu_front_write_d1"
        | "blk_cpu_front_write_d32" => {
            "CPU work per request in the frontend (vblk); add blk_cpu_serve_* for the ring's total"
        }
        "blk_cpu_serve_read_d1"
        | "blk_cpu_serve_read_d32"
        | "blk_cpu_serve_write_d1"
        | "blk_cpu_serve_write_d32" => {
            "CPU work per request in the driver serving the ring (copies, events, device)"
        }
        "grant_copy_4k" => {
            "one element: checks, then 4 KiB frame to frame through the direct map (one copy, \
             as Xen GNTTABOP_copy)"
        }
        "page_fault" => {
            "guest handler maps the page with update_va_mapping; \
             Linux anonymous page fault 3,314; Xen PV 6,367"
        }
        "grant_map_unmap" => {
            "map installs one entry; unmap clears it and flushes the whole TLB (no PCIDs)"
        }
        "switch_frame_64" | "switch_frame_1514" => {
            "netback's switch, port to port (checks, learning, lookup, copy, pop): \
             compare queue_frame_* of the same boot"
        }
        "queue_frame_64" | "queue_frame_1514" => {
            "the same frame copied into one of netback's own queues, moved to another, popped"
        }
        "tcp_host_to_guest_1m" => {
            "1 MiB from xtask through QEMU's forward, the uplink and the switch to an smoltcp \
             guest, SYN to closed; wall pass only"
        }
        "tcp_guest_to_guest_1m" => {
            "1 MiB over TCP (smoltcp both ends) through the switch, connect to both FINs \
             acknowledged; whole system"
        }
        "vnic_frame_64_batch1"
        | "vnic_frame_64_batch32"
        | "vnic_frame_1514_batch1"
        | "vnic_frame_1514_batch32" => {
            "per frame, whole system: two grant copies, the switch, events per batch \
             (docs/network.md)"
        }
        n if n.starts_with("kv_guest_") => kv_guest::reference(n),
        _ => "",
    }
}

const START_REFERENCE: &str = "no anchor on this emulator (wall clock elsewhere: \
                               Unikraft tens-hundreds of us, LightVM 2.3 ms)";

/// The rows of the instruction-count pass.
pub fn icount_rows(boots: &[BootFigures]) -> Vec<Row> {
    let mut rows = Vec::new();
    for b in boots {
        for g in &b.figures {
            let compare = match (g.name.as_str(), g.expected) {
                ("calibration", Some(exp)) => format!(
                    "expected {} (2 x loop count): {}",
                    group(exp),
                    if g.median == exp && g.min == exp {
                        "1 tick = 1 instruction"
                    } else {
                        "MISMATCH: ticks are not instructions"
                    }
                ),
                (n, _) => reference(n).to_string(),
            };
            rows.push(Row {
                record: Record {
                    name: g.name.clone(),
                    value: Value::Count(g.median),
                    unit: "instructions".into(),
                },
                detail: format!("min {} mean {} n={}", group(g.min), group(g.mean), g.iters),
                compare,
            });
        }
        rows.extend(blk_ratio_rows(b, "instructions per request"));
        kv_guest::add_rows(&mut rows, b);
        if let Some(d) = &b.density {
            for (name, v, unit, what, compare) in [
                (
                    "density.guests",
                    d.started,
                    "guests",
                    "domains started and running (idle guests block)".to_string(),
                    "issue 13 goal: 20,000 at -m 2G; Denali: >10,000 in 1 GiB (2002)".to_string(),
                ),
                (
                    "density.frames_per_guest",
                    d.frames_per_guest,
                    "frames",
                    "own: window and shared-info page, less the image's shared pages".into(),
                    "goal <= 25 for 20,000 in 2 GiB (17 before MEM-2e)".into(),
                ),
                (
                    "density.heap_per_guest",
                    d.heap_per_guest,
                    "bytes",
                    "hypervisor heap per domain (mean)".into(),
                    "a1c1678: over 16 KiB (eager port table)".into(),
                ),
                (
                    "density.start_per_guest",
                    d.start_per_guest,
                    "instructions",
                    "hypervisor builds one idle guest (mean)".into(),
                    "flat in the number of domains (a1c1678: grew ~24 per domain present)".into(),
                ),
                (
                    "density.teardown_per_guest",
                    d.teardown_per_guest,
                    "instructions",
                    format!("busy time tearing one down (mean of {})", d.torn_down),
                    "a1c1678: 110,482 (already its own frames, not the frame table)".into(),
                ),
            ] {
                rows.push(Row {
                    record: Record {
                        name: name.into(),
                        value: Value::Count(v),
                        unit: unit.into(),
                    },
                    detail: what,
                    compare,
                });
            }
        }
        if let Some((build, run, total)) = b.start {
            for (part, v, what) in [
                ("build", build, "hypervisor builds the domain"),
                ("run", run, "first instruction to first hypercall"),
                ("total", total, "build start to first hypercall"),
            ] {
                rows.push(Row {
                    record: Record {
                        name: format!("guest_start.{part}"),
                        value: Value::Count(v),
                        unit: "instructions".into(),
                    },
                    detail: what.into(),
                    compare: if part == "total" {
                        START_REFERENCE.into()
                    } else {
                        String::new()
                    },
                });
            }
        }
    }
    rows
}

/// Requests per second through the ring as a fraction of the driver
/// domain's own, from the same boot: `blk_direct_X / blk_vblk_X` (ticks per
/// request), for each op and depth both reported. Goal (issue 9): at
/// least 0.8 at depth 32.
pub fn blk_ratio_rows(b: &BootFigures, basis: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for g in b.figures.iter().filter(|g| g.name.starts_with("blk_vblk_")) {
        let direct = g.name.replacen("blk_vblk_", "blk_direct_", 1);
        let Some(d) = b.figures.iter().find(|f| f.name == direct) else {
            continue;
        };
        if g.median == 0 {
            continue;
        }
        rows.push(Row {
            record: Record {
                name: format!("{}.vs_direct", g.name),
                value: Value::Real(d.median as f64 / g.median as f64),
                unit: "ratio".into(),
            },
            detail: format!("requests/s through the ring / direct, same run ({basis})"),
            compare: if g.name.ends_with("_d32") {
                "goal >= 0.8 at depth 32".into()
            } else {
                String::new()
            },
        });
    }
    rows
}
