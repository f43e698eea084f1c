//! The experiment's SVG plots, drawn with the `plotters` crate's SVG
//! backend (no fonts are loaded: the backend writes text as SVG `<text>`
//! elements for the viewer to render): per workload, the host memory each
//! run was charged (MiB) over time (seconds since it started), one line
//! per mode ([`draw`]); and the trade-off of the whole matrix, each run's
//! time-averaged footprint against its slowdown, one point per mode and
//! workload ([`draw_tradeoff`]); and the density experiment's largest
//! number of guests per mode ([`draw_bars`]).
//!
//! This module must never write anything but the one SVG file it is
//! given, and a series that is empty is left out, not an error.

use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::child::mib;

/// Plot size in pixels.
const SIZE: (u32, u32) = (900, 520);
/// One colour per line, in series order (colour-blind friendly).
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x44, 0x44, 0x44),
    RGBColor(0x00, 0x72, 0xb2),
    RGBColor(0xd5, 0x5e, 0x00),
    RGBColor(0x00, 0x9e, 0x73),
    RGBColor(0xcc, 0x79, 0xa7),
    RGBColor(0xe6, 0x9f, 0x00),
];

/// Why the plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot draw {}: {what}", path.display())]
    Draw { path: PathBuf, what: String },
}

/// One line of the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    /// `(elapsed_ms, resident_bytes)`.
    pub points: Vec<(u64, u64)>,
}

/// A plot's title and its two axes, each from 0 to a maximum, described.
struct Axes<'t> {
    title: &'t str,
    x: (f64, &'static str),
    y: (f64, &'static str),
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

impl Axes<'_> {
    /// The white canvas with the title, the axes and their mesh drawn.
    fn chart<'a, 'b>(
        &self,
        root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    ) -> Result<Chart<'a, 'b>, DrawingAreaErrorKind<std::io::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..self.x.0, 0f64..self.y.0)?;
        chart
            .configure_mesh()
            .x_desc(self.x.1)
            .y_desc(self.y.1)
            .draw()?;
        Ok(chart)
    }
}

/// Draws the legend box and writes the file.
fn legend_and_present<'a, 'b>(
    chart: &mut Chart<'a, 'b>,
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()
}

/// The axis ranges: (seconds, MiB), each starting at 0 with a little room
/// above the largest value.
pub fn ranges(lines: &[Line]) -> (f64, f64) {
    let pts = || lines.iter().flat_map(|l| l.points.iter());
    let t = pts().map(|p| p.0).max().unwrap_or(0) as f64 / 1000.0;
    let m = pts().map(|p| mib(p.1)).fold(0.0, f64::max);
    ((t * 1.02).max(1.0), (m * 1.1).max(1.0))
}

/// Draws `lines` into the SVG file `path`, titled `title`; `limit` adds a
/// horizontal line at the host memory limit.
pub fn draw(path: &Path, title: &str, lines: &[Line], limit: Option<u64>) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.to_path_buf(),
        what: e.to_string(),
    };
    let (t_max, m_max) = ranges(lines);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let axes = Axes {
        title,
        x: (t_max, "time since the VMM started (s)"),
        y: (m_max, "host memory charged to the run (MiB)"),
    };
    let mut chart = axes.chart(&root).map_err(|e| err(&e))?;
    if let Some(b) = limit {
        let y = mib(b);
        let grey = RGBColor(0x99, 0x99, 0x99);
        chart
            .draw_series(LineSeries::new(
                [(0.0, y), (t_max, y)],
                grey.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label("host limit")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
    }
    for (i, line) in lines.iter().filter(|l| !l.points.is_empty()).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts = line
            .points
            .iter()
            .map(|&(t, b)| (t as f64 / 1000.0, mib(b)));
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    legend_and_present(&mut chart, &root).map_err(|e| err(&e))
}

/// One point of the trade-off plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// `workload mode`.
    pub label: String,
    /// Index of the mode (one colour per mode).
    pub mode: usize,
    pub footprint_mib: f64,
    pub slowdown: f64,
}

/// Draws the trade-off: time-averaged footprint (x) against slowdown (y),
/// one labelled point per run; `modes` names the colours in the legend.
pub fn draw_tradeoff(path: &Path, points: &[Point], modes: &[&str]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.to_path_buf(),
        what: e.to_string(),
    };
    let x_max = points.iter().map(|p| p.footprint_mib).fold(1.0, f64::max) * 1.15;
    let y_max = points.iter().map(|p| p.slowdown).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let axes = Axes {
        title: "what each mode costs: footprint against slowdown",
        x: (x_max, "time-averaged host memory of the run (MiB)"),
        y: (y_max, "slowdown against no limit (x)"),
    };
    let mut chart = axes.chart(&root).map_err(|e| err(&e))?;
    for (m, name) in modes.iter().enumerate() {
        let colour = COLOURS[(m + 1) % COLOURS.len()];
        let mine: Vec<&Point> = points.iter().filter(|p| p.mode == m).collect();
        if mine.is_empty() {
            continue;
        }
        chart
            .draw_series(mine.iter().map(|p| {
                EmptyElement::at((p.footprint_mib, p.slowdown))
                    + Circle::new((0, 0), 5, colour.filled())
                    + Text::new(p.label.clone(), (7, -7), ("sans-serif", 11))
            }))
            .map_err(|e| err(&e))?
            .label(name.to_string())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
    }
    legend_and_present(&mut chart, &root).map_err(|e| err(&e))
}

/// Draws one bar per `(label, count)`: the density experiment's largest
/// number of guests per mode.
pub fn draw_bars(path: &Path, title: &str, bars: &[(String, u32)]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.to_path_buf(),
        what: e.to_string(),
    };
    let y_max = bars.iter().map(|b| f64::from(b.1)).fold(1.0, f64::max) * 1.2;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let axes = Axes {
        title,
        x: (bars.len().max(1) as f64, "mode"),
        y: (y_max, "guests that held"),
    };
    let mut chart = axes.chart(&root).map_err(|e| err(&e))?;
    for (i, (label, n)) in bars.iter().enumerate() {
        let colour = COLOURS[(i + 1) % COLOURS.len()];
        let x = i as f64;
        chart
            .draw_series([Rectangle::new(
                [(x + 0.2, 0.0), (x + 0.8, f64::from(*n))],
                colour.filled(),
            )])
            .map_err(|e| err(&e))?
            .label(format!("{label}: {n}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    legend_and_present(&mut chart, &root).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_per_mode_with_its_count() {
        let dir = std::env::temp_dir().join(format!("vmm-bars-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.svg");
        let bars = [("host-swap".to_string(), 1), ("hinting".to_string(), 3)];
        draw_bars(&path, "density", &bars).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("host-swap: 1") && svg.contains("hinting: 3"));
        assert!(draw_bars(&dir.join("missing/b.svg"), "x", &bars).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn line(label: &str, points: &[(u64, u64)]) -> Line {
        Line {
            label: label.into(),
            points: points.to_vec(),
        }
    }

    #[test]
    fn ranges_cover_every_point() {
        let l = [line("a", &[(0, 1 << 20), (5000, 10 << 20)]), line("b", &[])];
        let (t, m) = ranges(&l);
        assert!(
            (5.0..5.2).contains(&t) && (10.0..11.5).contains(&m),
            "{t} {m}"
        );
        assert_eq!(ranges(&[]), (1.0, 1.0));
    }

    #[test]
    fn the_svg_has_a_line_and_a_legend_entry_per_mode() {
        let dir = std::env::temp_dir().join(format!("vmm-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        let lines = [
            line("off", &[(0, 0), (1000, 20 << 20), (2000, 20 << 20)]),
            line("hinting", &[(0, 0), (1000, 12 << 20), (2000, 12 << 20)]),
            line("empty", &[]),
        ];
        draw(&path, "page-cache", &lines, Some(12 << 20)).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in [
            "page-cache",
            "off",
            "hinting",
            "host limit",
            "host memory charged",
        ] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
        assert!(!svg.contains(">empty<"));
        assert!(draw(&dir.join("missing/p.svg"), "x", &lines, None).is_err());
        let points = [
            Point {
                label: "kv hinting".into(),
                mode: 1,
                footprint_mib: 12.0,
                slowdown: 1.4,
            },
            Point {
                label: "kv host-swap".into(),
                mode: 0,
                footprint_mib: 16.0,
                slowdown: 1.1,
            },
        ];
        let t = dir.join("t.svg");
        draw_tradeoff(&t, &points, &["host-swap", "hinting", "unused"]).unwrap();
        let svg = std::fs::read_to_string(&t).unwrap();
        for text in ["kv hinting", "kv host-swap", "slowdown", "time-averaged"] {
            assert!(svg.contains(text), "no {text:?} in the trade-off SVG");
        }
        assert!(
            !svg.contains(">unused<"),
            "a mode without points has no legend"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
