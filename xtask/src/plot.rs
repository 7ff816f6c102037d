//! `cargo xtask bench --plot DIR`: the bench's figures as SVG charts
//! (issue 13, item 6), drawn from the bench's records, the same
//! `{"name", "value", "unit"}` records `--json` writes, so they can be
//! redrawn from a saved file (`--plot DIR --from FILE`) without booting
//! anything.
//!
//! * `bench-density.svg`: the density sweep (`density_sweep.*`, see
//!   [`crate::sweep`]): the domain switch, the build of one guest and its
//!   frames against the number of domains running, log scale.
//! * `bench-anchors.svg`: each path with an anchor beside Linux's and Xen
//!   PV's figure for the like operation on the same emulator (the anchors
//!   table of `docs/benchmarks.md`), log scale.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::bench::{group, Record, Value};
use crate::sweep;

/// A path measured by the bench and the Linux and Xen PV figures for the
/// like operation (`docs/benchmarks.md`, "The anchors"; the same numbers
/// as [`crate::bench::rows::reference`], which a test keeps in step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Anchor {
    /// The bench figure.
    pub path: &'static str,
    /// What the chart calls it.
    pub label: &'static str,
    /// The operation Linux and Xen PV ran.
    pub against: &'static str,
    pub linux: u64,
    pub xen: u64,
}

/// The anchored paths, in the order the chart shows them.
pub const ANCHORS: [Anchor; 7] = [
    Anchor {
        path: "null_hypercall",
        label: "null hypercall",
        against: "getpid",
        linux: 322,
        xen: 1_094,
    },
    Anchor {
        path: "domain_switch",
        label: "domain switch",
        against: "half a futex ping-pong",
        linux: 4_846,
        xen: 8_152,
    },
    Anchor {
        path: "yield_round_trip",
        label: "yield round trip",
        against: "futex ping-pong",
        linux: 9_691,
        xen: 16_303,
    },
    Anchor {
        path: "event_round_trip_block",
        label: "event round trip (block)",
        against: "pipe ping-pong",
        linux: 12_694,
        xen: 22_940,
    },
    Anchor {
        path: "event_round_trip",
        label: "event round trip (SDK upcalls)",
        against: "pipe ping-pong",
        linux: 12_694,
        xen: 22_940,
    },
    Anchor {
        path: "mmu_update_batch_1",
        label: "one page-table update",
        against: "mprotect of one page",
        linux: 2_923,
        xen: 6_672,
    },
    Anchor {
        path: "page_fault",
        label: "reflected page fault",
        against: "anonymous page fault",
        linux: 3_314,
        xen: 6_367,
    },
];

/// The chart files [`write_charts`] writes.
pub const DENSITY_SVG: &str = "bench-density.svg";
pub const ANCHORS_SVG: &str = "bench-anchors.svg";

/// One point of the density curve.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepPoint {
    /// Domains running.
    pub domains: u64,
    pub switch: Option<u64>,
    pub start: Option<u64>,
    pub frames: Option<u64>,
}

/// One group of bars: a path and its anchors.
#[derive(Clone, Debug, PartialEq)]
pub struct Bars {
    pub anchor: Anchor,
    pub tahoma: u64,
}

/// Reads the records `cargo xtask bench --json` wrote.
pub fn read_json(path: &Path) -> Result<Vec<Record>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_json(&text).map_err(|e| {
        format!(
            "{}: {e} (expected what `cargo xtask bench --json` writes)",
            path.display()
        )
    })
}

/// Parses a JSON array of `{"name", "value", "unit"}` records.
pub fn parse_json(text: &str) -> Result<Vec<Record>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let arr = v.as_array().ok_or("not a JSON array")?;
    arr.iter()
        .enumerate()
        .map(|(i, r)| {
            let name = r["name"]
                .as_str()
                .ok_or(format!("record {i}: no \"name\""))?;
            let unit = r["unit"]
                .as_str()
                .ok_or(format!("record {i}: no \"unit\""))?;
            let value = match &r["value"] {
                serde_json::Value::Number(n) => match (n.as_u64(), n.as_f64()) {
                    (Some(c), _) => Value::Count(c),
                    (None, Some(x)) => Value::Real(x),
                    _ => return Err(format!("record {i} ({name}): value {n} out of range")),
                },
                other => {
                    return Err(format!(
                        "record {i} ({name}): value {other} is not a number"
                    ))
                }
            };
            Ok(Record {
                name: name.into(),
                value,
                unit: unit.into(),
            })
        })
        .collect()
}

fn count(r: &Record) -> Option<u64> {
    match r.value {
        Value::Count(n) => Some(n),
        Value::Real(_) => None,
    }
}

/// The density curve's points (`density_sweep.<domains>.<figure>`), by
/// number of domains.
pub fn sweep_points(records: &[Record]) -> Vec<SweepPoint> {
    let mut points: Vec<SweepPoint> = Vec::new();
    for r in records {
        let Some(rest) = r
            .name
            .strip_prefix(sweep::PREFIX)
            .and_then(|s| s.strip_prefix('.'))
        else {
            continue;
        };
        let Some((domains, figure)) = rest.split_once('.') else {
            continue;
        };
        let (Ok(domains), Some(v)) = (domains.parse::<u64>(), count(r)) else {
            continue;
        };
        let i = match points.iter().position(|p| p.domains == domains) {
            Some(i) => i,
            None => {
                points.push(SweepPoint {
                    domains,
                    ..Default::default()
                });
                points.len() - 1
            }
        };
        let p = &mut points[i];
        match figure {
            "domain_switch" => p.switch = Some(v),
            "start_per_guest" => p.start = Some(v),
            "frames_per_guest" => p.frames = Some(v),
            _ => {}
        }
    }
    points.sort_by_key(|p| p.domains);
    points
}

/// The anchored paths the records measured (instructions), in chart order.
pub fn anchor_bars(records: &[Record]) -> Vec<Bars> {
    ANCHORS
        .iter()
        .filter_map(|a| {
            records
                .iter()
                .find(|r| r.name == a.path && r.unit == "instructions")
                .and_then(count)
                .map(|tahoma| Bars { anchor: *a, tahoma })
        })
        .collect()
}

fn draw_err(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

/// One panel of the density chart: `figure` against the domains running.
struct Panel<'a> {
    points: Vec<(u64, u64)>,
    title: &'a str,
    unit: &'a str,
    colour: RGBColor,
    /// A dashed line at this value, labelled.
    goal: Option<(u64, &'a str)>,
}

fn density_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    p: &Panel<'_>,
    (lo, hi): (u64, u64),
) -> Result<(), String> {
    let (points, colour) = (&p.points, p.colour);
    let top = points
        .iter()
        .map(|&(_, v)| v)
        .chain(p.goal.map(|g| g.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.3;
    let (lo, hi) = (lo.max(1) as f64, hi.max(2) as f64);
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, ("sans-serif", 17))
        .margin(8)
        .margin_right(28)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((lo / 1.25..hi * 1.25).log_scale(), 0f64..top)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| group(x.round() as u64))
        .y_label_formatter(&|y| group(y.round() as u64))
        .x_desc("domains running (log scale)")
        .y_desc(p.unit)
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    if let Some((goal, what)) = p.goal {
        let g = goal as f64;
        chart
            .draw_series(DashedLineSeries::new(
                [(lo / 1.25, g), (hi * 1.25, g)],
                6,
                4,
                RGBColor(120, 120, 120).stroke_width(1),
            ))
            .map_err(draw_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{what}: {}", group(goal)),
                (lo, g - top * 0.02),
                ("sans-serif", 12).into_font().color(&RGBColor(90, 90, 90)),
            )))
            .map_err(draw_err)?;
    }
    let xy: Vec<(f64, f64)> = points.iter().map(|&(d, v)| (d as f64, v as f64)).collect();
    chart
        .draw_series(LineSeries::new(xy.iter().copied(), colour.stroke_width(2)))
        .map_err(draw_err)?;
    chart
        .draw_series(xy.iter().map(|&p| Circle::new(p, 4, colour.filled())))
        .map_err(draw_err)?;
    for (x, y) in [xy.first(), xy.last()].into_iter().flatten().copied() {
        // (only the ends: a reader looks for "the same" there)
        chart
            .draw_series(std::iter::once(Text::new(
                group(y.round() as u64),
                (x, y + top * 0.06),
                ("sans-serif", 13),
            )))
            .map_err(draw_err)?;
    }
    Ok(())
}

/// Draws the density curve into `path`.
pub fn density_svg(points: &[SweepPoint], path: &Path) -> Result<(), String> {
    let lo = points.iter().map(|p| p.domains).min().unwrap_or(2);
    let hi = points.iter().map(|p| p.domains).max().unwrap_or(2);
    let root = SVGBackend::new(path, (820, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root
        .titled(
            &format!(
                "Density: {} to {} domains (bench-density; instructions under -icount)",
                group(lo),
                group(hi)
            ),
            ("sans-serif", 20),
        )
        .map_err(draw_err)?;
    let series = |f: fn(&SweepPoint) -> Option<u64>| -> Vec<(u64, u64)> {
        points
            .iter()
            .filter_map(|p| f(p).map(|v| (p.domains, v)))
            .collect()
    };
    let panels = [
        Panel {
            points: series(|p| p.switch),
            title: "domain switch (the yield ping-pong beside the idle guests)",
            unit: "instructions",
            colour: RGBColor(31, 119, 180),
            goal: None,
        },
        Panel {
            points: series(|p| p.start),
            title: "build of one idle guest (hypervisor)",
            unit: "instructions",
            colour: RGBColor(214, 39, 40),
            goal: None,
        },
        Panel {
            points: series(|p| p.frames),
            title: "frames per idle guest (its pages and shared page)",
            unit: "frames",
            colour: RGBColor(44, 160, 44),
            goal: Some((FRAMES_GOAL, "issue 13 goal (20,000 in 2 GiB)")),
        },
    ];
    for (area, panel) in root.split_evenly((3, 1)).iter().zip(&panels) {
        density_panel(area, panel, (lo, hi))?;
    }
    root.present().map_err(draw_err)
}

/// Frames per guest that let 20,000 guests fit in 2 GiB (issue 13).
const FRAMES_GOAL: u64 = 25;

/// Draws the paths beside their anchors into `path`.
pub fn anchors_svg(bars: &[Bars], path: &Path) -> Result<(), String> {
    let n = bars.len();
    let root = SVGBackend::new(path, (900, 120 + 78 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let labels: Vec<String> = bars
        .iter()
        .map(|b| format!("{} / {}", b.anchor.label, b.anchor.against))
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Tahoma against Linux and Xen PV on the same emulator (instructions, log scale)",
            ("sans-serif", 18),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(300)
        .build_cartesian_2d((10f64..60_000f64).log_scale(), 0f64..n as f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|x| group(x.round() as u64))
        .x_desc("guest instructions per operation (QEMU TCG, -icount shift=0)")
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    // The category labels, right-aligned beside their group (top to bottom
    // in table order: row i is drawn at n - 1 - i).
    let style =
        TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    for (i, label) in labels.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(10.0, (n - 1 - i) as f64 + 0.5));
        root.draw(&Text::new(label.clone(), (px - 8, py), style.clone()))
            .map_err(draw_err)?;
    }
    let colours = [
        ("Tahoma", RGBColor(31, 119, 180)),
        ("Linux 6.1", RGBColor(255, 127, 14)),
        ("Xen 4.17 PV dom0", RGBColor(148, 103, 189)),
    ];
    for (k, &(name, colour)) in colours.iter().enumerate() {
        let mut rects = Vec::new();
        let mut texts = Vec::new();
        for (i, b) in bars.iter().enumerate() {
            let v = [b.tahoma, b.anchor.linux, b.anchor.xen][k] as f64;
            let row = (n - 1 - i) as f64;
            let y0 = row + 0.8 - 0.22 * k as f64;
            let y1 = y0 - 0.2;
            rects.push(Rectangle::new([(10.0, y0), (v, y1)], colour.filled()));
            texts.push(Text::new(
                group(v as u64),
                (v * 1.06, y0 - 0.04),
                ("sans-serif", 12),
            ));
        }
        chart
            .draw_series(rects)
            .map_err(draw_err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled()));
        chart.draw_series(texts).map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)
}

/// Writes every chart the records have data for into `dir`; returns the
/// files written. An error when they have data for none.
pub fn write_charts(dir: &Path, records: &[Record]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let points = sweep_points(records);
    if points.is_empty() {
        eprintln!(
            "xtask: bench: no density sweep in the records ({}.*): {DENSITY_SVG} not drawn",
            sweep::PREFIX
        );
    } else {
        let p = dir.join(DENSITY_SVG);
        density_svg(&points, &p)?;
        written.push(p);
    }
    let bars = anchor_bars(records);
    let missing: Vec<&str> = ANCHORS
        .iter()
        .map(|a| a.path)
        .filter(|p| !bars.iter().any(|b| b.anchor.path == *p))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "xtask: bench: not measured, left out of {ANCHORS_SVG}: {} (run without --only)",
            missing.join(", ")
        );
    }
    if !bars.is_empty() {
        let p = dir.join(ANCHORS_SVG);
        anchors_svg(&bars, &p)?;
        written.push(p);
    }
    if written.is_empty() {
        return Err(
            "nothing to plot: the records have no density sweep and no anchored path \
             (plot from a full `cargo xtask bench --plot DIR` or its --json)"
                .into(),
        );
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Row;

    fn rec(name: &str, v: u64, unit: &str) -> Record {
        Record {
            name: name.into(),
            value: Value::Count(v),
            unit: unit.into(),
        }
    }

    fn records() -> Vec<Record> {
        let mut r = vec![
            rec("null_hypercall", 106, "instructions"),
            rec("domain_switch", 500, "instructions"),
            rec("page_fault", 1_672, "instructions"),
            rec("null_hypercall.wall_vs_host_getpid", 2, "ratio"),
        ];
        for (d, sw, start, frames) in [
            (15_002, 501, Some(89_300), Some(33)),
            (2, 500, None, None),
            (12, 500, Some(89_290), Some(33)),
        ] {
            r.push(rec(
                &format!("density_sweep.{d}.domain_switch"),
                sw,
                "instructions",
            ));
            if let Some(s) = start {
                r.push(rec(
                    &format!("density_sweep.{d}.start_per_guest"),
                    s,
                    "instructions",
                ));
            }
            if let Some(f) = frames {
                r.push(rec(
                    &format!("density_sweep.{d}.frames_per_guest"),
                    f,
                    "frames",
                ));
            }
        }
        r
    }

    #[test]
    fn sweep_points_are_gathered_per_size_and_sorted() {
        let p = sweep_points(&records());
        assert_eq!(
            p,
            [
                SweepPoint {
                    domains: 2,
                    switch: Some(500),
                    start: None,
                    frames: None
                },
                SweepPoint {
                    domains: 12,
                    switch: Some(500),
                    start: Some(89_290),
                    frames: Some(33)
                },
                SweepPoint {
                    domains: 15_002,
                    switch: Some(501),
                    start: Some(89_300),
                    frames: Some(33)
                },
            ]
        );
        // Other density rows and malformed names are not points.
        let other = [
            rec("density.guests", 15_002, "guests"),
            rec("density_sweep.x.domain_switch", 1, "instructions"),
        ];
        assert!(sweep_points(&other).is_empty());
    }

    #[test]
    fn bars_pair_measured_paths_with_their_anchors() {
        let b = anchor_bars(&records());
        let got: Vec<_> = b
            .iter()
            .map(|b| (b.anchor.path, b.tahoma, b.anchor.linux, b.anchor.xen))
            .collect();
        assert_eq!(
            got,
            [
                ("null_hypercall", 106, 322, 1_094),
                ("domain_switch", 500, 4_846, 8_152),
                ("page_fault", 1_672, 3_314, 6_367),
            ]
        );
        // A ratio of the same name is not an instruction count.
        assert!(anchor_bars(&[rec("null_hypercall", 2, "ratio")]).is_empty());
    }

    /// The chart's anchors are the numbers the bench's table compares with.
    #[test]
    fn anchors_match_the_bench_references() {
        for a in ANCHORS {
            let r = crate::bench::rows::reference(a.path);
            for n in [a.linux, a.xen] {
                assert!(
                    r.contains(&group(n)),
                    "{}: {} not in {r:?}",
                    a.path,
                    group(n)
                );
            }
        }
    }

    #[test]
    fn json_round_trip() {
        let rows: Vec<Row> = records()
            .into_iter()
            .chain([Record {
                name: "r".into(),
                value: Value::Real(0.8),
                unit: "ratio".into(),
            }])
            .map(|record| Row {
                record,
                detail: String::new(),
                compare: String::new(),
            })
            .collect();
        let back = parse_json(&crate::bench::json(&rows)).unwrap();
        let want: Vec<Record> = rows.into_iter().map(|r| r.record).collect();
        assert_eq!(back, want);
        assert!(parse_json("{}").unwrap_err().contains("array"));
        assert!(parse_json("[{\"name\": \"x\", \"unit\": \"u\"}]")
            .unwrap_err()
            .contains("not a number"));
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-plot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn charts_are_written_as_svg_with_their_figures() {
        let dir = scratch("both");
        let files = write_charts(&dir, &records()).unwrap();
        assert_eq!(files, [dir.join(DENSITY_SVG), dir.join(ANCHORS_SVG)]);
        let density = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            density.starts_with("<svg"),
            "{}",
            &density[..80.min(density.len())]
        );
        for text in [
            "domain switch",
            "build of one idle guest",
            "frames per idle guest",
            "15,002",
            "89,300",
            "501",
        ] {
            assert!(density.contains(text), "{text} not in the density chart");
        }
        let anchors = std::fs::read_to_string(&files[1]).unwrap();
        for text in [
            "null hypercall / getpid",
            "Linux 6.1",
            "Xen 4.17 PV dom0",
            "1,094",
            "1,672",
            "4,846",
        ] {
            assert!(anchors.contains(text), "{text} not in the anchors chart");
        }
        // Paths not measured are not drawn.
        assert!(!anchors.contains("yield round trip"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nothing_to_plot_is_an_error_and_one_chart_alone_is_drawn() {
        let dir = scratch("partial");
        assert!(write_charts(&dir, &[rec("calibration", 1, "instructions")]).is_err());
        let only_density: Vec<Record> = records()
            .into_iter()
            .filter(|r| r.name.starts_with("density_sweep"))
            .collect();
        assert_eq!(
            write_charts(&dir, &only_density).unwrap(),
            [dir.join(DENSITY_SVG)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
