//! Unit tests of `cargo xtask bench`: parsing, rows, tables, JSON.

use super::host::Host;
use super::*;

const SOLO: &str = "\
@ time tsc_hz=1000000000 apic_hz=1000000000 source=pit
@ domain-first-hypercall id=1 name=\"bench\" build_ticks=360248 run_ticks=4820 total_ticks=365068
[bench] @ bench name=empty_pair value=6 min=6 mean=6 iters=10000 unit=ticks
[bench] @ bench name=calibration value=200000 min=200000 mean=200000 iters=31 unit=ticks expected=200000 expected_unit=instructions
[bench] @ bench name=null_hypercall value=151 min=150 mean=152 iters=10000 unit=ticks
@ exit status=success
";

fn solo() -> BootFigures {
    collect(&Facts::parse(SOLO), Some("bench"), Clock::Icount).unwrap()
}

#[test]
fn collects_guest_figures_and_start() {
    let b = solo();
    assert_eq!(b.figures.len(), 3);
    assert_eq!(
        b.figures[2],
        GuestFigure {
            name: "null_hypercall".into(),
            median: 151,
            min: 150,
            mean: 152,
            iters: 10000,
            expected: None,
        }
    );
    assert_eq!(b.figures[1].expected, Some(200_000));
    assert_eq!(b.start, Some((360_248, 4_820, 365_068)));
    assert_eq!(b.tsc_hz, Some(1_000_000_000));
    // The start-up is only taken for the named domain.
    assert_eq!(
        collect(&Facts::parse(SOLO), None, Clock::Icount)
            .unwrap()
            .start,
        None
    );
}

#[test]
fn rejects_figures_without_ticks() {
    let t = "[g] @ bench name=x value=1 min=1 mean=1 iters=1 unit=ns\n";
    assert!(collect(&Facts::parse(t), None, Clock::Icount).is_err());
    let t = "[g] @ bench name=x value=1 iters=1 unit=ticks\n";
    assert!(collect(&Facts::parse(t), None, Clock::Icount).is_err());
}

#[test]
fn rows_say_instructions_and_check_calibration() {
    let rows = icount_rows(&[solo()]);
    let names: Vec<_> = rows.iter().map(|r| r.record.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "empty_pair",
            "calibration",
            "null_hypercall",
            "guest_start.build",
            "guest_start.run",
            "guest_start.total"
        ]
    );
    assert!(rows.iter().all(|r| r.record.unit == "instructions"));
    assert!(rows[1].compare.contains("1 tick = 1 instruction"));
    assert!(rows[2].compare.contains("Linux getpid 322"));
    assert_eq!(rows[2].record.value, Value::Count(151));

    let mut off = solo();
    off.figures[1].median = 200_001;
    assert!(icount_rows(&[off])[1].compare.contains("MISMATCH"));
}

#[test]
fn wall_figures_are_ratios_only() {
    let host = Host {
        getpid_ns: 100.0,
        pipe_round_trip_ns: 4000.0,
        spawn_ns: 500_000.0,
        tcp_loopback_1m_ns: 1_000_000.0,
    };
    let mut b = solo();
    b.tsc_hz = Some(2_000_000_000); // 151 ticks = 75.5 ns
    b.figures.push(GuestFigure {
        name: "tcp_guest_to_guest_1m".into(),
        median: 200_000_000, // 100 ms
        min: 200_000_000,
        mean: 200_000_000,
        iters: 1,
        expected: None,
    });
    let rows = wall_rows(&host, &[b]);
    let tcp = rows
        .iter()
        .find(|r| r.record.name == "tcp_guest_to_guest_1m.wall_vs_host_tcp_loopback_1m")
        .unwrap();
    assert_eq!(tcp.record.value, Value::Real(100.0));
    let mbs = rows
        .iter()
        .find(|r| r.record.name == "tcp_guest_to_guest_1m.wall_mb_s")
        .unwrap();
    assert_eq!(mbs.record.unit, "MB/s");
    let null = rows
        .iter()
        .find(|r| r.record.name == "null_hypercall.wall_vs_host_getpid")
        .unwrap();
    assert_eq!(null.record.value, Value::Real(0.755));
    assert_eq!(null.record.unit, "ratio");
    let start = rows
        .iter()
        .find(|r| r.record.name == "guest_start.total.wall_vs_host_spawn")
        .unwrap();
    assert_eq!(start.record.unit, "ratio");
    // Guest figures never appear in ns; host baselines do.
    for r in &rows {
        assert!(
            r.record.unit == "ratio"
                || r.record.unit == "MB/s"
                || r.record.name.starts_with("host."),
            "{r:?}"
        );
    }
}

#[test]
fn table_and_json() {
    let rows = icount_rows(&[solo()]);
    let t = table(&rows);
    let lines: Vec<_> = t.lines().collect();
    assert!(lines[0].starts_with("benchmark"), "{t}");
    assert!(lines[3].starts_with("null_hypercall"), "{t}");
    assert!(
        lines[3].contains("  151  instructions  min 150 mean 152 n=10000"),
        "{t}"
    );
    assert!(lines[2].contains("200,000"), "{t}");

    let v: serde_json::Value = serde_json::from_str(&json(&rows)).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), rows.len());
    for rec in arr {
        let o = rec.as_object().unwrap();
        let mut keys: Vec<_> = o.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["name", "unit", "value"]);
    }
    assert_eq!(arr[2]["name"], "null_hypercall");
    assert_eq!(arr[2]["value"], 151);
    assert_eq!(arr[2]["unit"], "instructions");
    let ratio = json(&[Row {
        record: Record {
            name: "r".into(),
            value: Value::Real(1.5),
            unit: "ratio".into(),
        },
        detail: String::new(),
        compare: String::new(),
    }]);
    assert!(ratio.contains("\"value\": 1.5"), "{ratio}");
}

#[test]
fn blk_ratios_pair_each_ring_figure_with_the_direct_one() {
    let fig = |name: &str, v: u64| GuestFigure {
        name: name.into(),
        median: v,
        min: v,
        mean: v,
        iters: 400,
        expected: None,
    };
    let b = BootFigures {
        figures: vec![
            fig("blk_direct_read_d32", 80),
            fig("blk_vblk_read_d32", 100),
            fig("blk_vblk_write_d1", 50), // no direct figure: no ratio
        ],
        ..Default::default()
    };
    let rows = blk_ratio_rows(&b, "x");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record.name, "blk_vblk_read_d32.vs_direct");
    assert_eq!(rows[0].record.value, Value::Real(0.8));
    assert!(rows[0].compare.contains("0.8"));
}

#[test]
fn grouping() {
    assert_eq!(group(0), "0");
    assert_eq!(group(999), "999");
    assert_eq!(group(1000), "1,000");
    assert_eq!(group(12_694), "12,694");
    assert_eq!(group(1_234_567), "1,234,567");
}
