//! Plots of a run, each as SVG and PNG: latency CDFs (TTFT, TPOT, end-to-end) per stage, throughput and goodput
//! against offered load, and TTFT/TPOT of every request over time with the faults marked.
//!
//! Invariant: a plot that cannot be drawn (e.g. no font on the machine for the PNG's text) is skipped with a
//! warning; it never fails the run, whose numbers are already in `run.json`. Cost: one pass over the records per
//! plot; PNGs are 1024×640.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::LoadError;
use crate::run::RunReport;

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    /// Lines join points; otherwise each point is a dot.
    line: bool,
}

struct Chart {
    title: String,
    x_label: &'static str,
    y_label: &'static str,
    series: Vec<Series>,
    /// Vertical markers (fault times) with their labels.
    markers: Vec<(f64, String)>,
}

/// Series colours (matplotlib's tab10 without its red, which marks faults).
const COLORS: [(u8, u8, u8); 9] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Whether plots can be drawn here: a TrueType font was found (and registered for plotters' text).
pub fn plots_available() -> bool {
    font_ready()
}

/// Registers a system sans-serif font for plotters' text once; false when none is found.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let font = std::env::var("CLEAVE_PLOT_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()))
            .find_map(|p| std::fs::read(p).ok());
        match font {
            Some(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            }
            None => false,
        }
    })
}

/// Draws every plot into `dir`; returns the names written (each as `NAME.svg` and `NAME.png`).
pub fn write_plots(report: &RunReport, dir: &Path) -> Result<Vec<String>, LoadError> {
    if !font_ready() {
        tracing::warn!("no TrueType font found (set CLEAVE_PLOT_FONT to a .ttf file): plots skipped");
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, chart) in charts(report) {
        if chart.series.iter().all(|s| s.points.is_empty()) {
            continue;
        }
        let svg = dir.join(format!("{name}.svg"));
        let png = dir.join(format!("{name}.png"));
        let drawn = render(SVGBackend::new(&svg, (1024, 640)).into_drawing_area(), &chart)
            .and_then(|()| render(BitMapBackend::new(&png, (1024, 640)).into_drawing_area(), &chart));
        match drawn {
            Ok(()) => written.push(name),
            Err(e) => tracing::warn!("plot {name}: {e}"),
        }
    }
    Ok(written)
}

fn cdf(mut values: Vec<f64>) -> Vec<(f64, f64)> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| (v, (i + 1) as f64 / n))
        .collect()
}

fn charts(report: &RunReport) -> Vec<(String, Chart)> {
    let mut out = Vec::new();
    let per_stage = |f: &dyn Fn(&crate::metrics::RequestRecord) -> Option<f64>| {
        report
            .stages
            .iter()
            .map(|s| Series {
                name: s.summary.name.clone(),
                points: cdf(s.requests.iter().filter(|r| r.ok()).filter_map(f).collect()),
                line: true,
            })
            .collect::<Vec<_>>()
    };
    for (name, label, f) in [
        (
            "cdf_ttft",
            "TTFT (ms)",
            &(|r: &crate::metrics::RequestRecord| r.ttft_ms) as &dyn Fn(&_) -> _,
        ),
        ("cdf_tpot", "TPOT (ms)", &|r: &crate::metrics::RequestRecord| r.tpot_ms),
        (
            "cdf_e2e",
            "end-to-end latency (ms)",
            &|r: &crate::metrics::RequestRecord| Some(r.e2e_ms),
        ),
    ] {
        out.push((
            name.to_string(),
            Chart {
                title: format!("{}: {label} CDF", report.campaign.name),
                x_label: label,
                y_label: "fraction of requests",
                series: per_stage(f),
                markers: Vec::new(),
            },
        ));
    }
    // Throughput against offered load: offered rate, else concurrency, else the stage's position.
    let x_of = |i: usize, s: &crate::metrics::StageSummary| {
        s.offered_rate
            .or(s.concurrency.map(|c| c as f64))
            .unwrap_or(i as f64 + 1.0)
    };
    let by_load = |f: &dyn Fn(&crate::metrics::StageSummary) -> f64| {
        let mut pts: Vec<(f64, f64)> = report
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (x_of(i, &s.summary), f(&s.summary)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let x_label = if report.stages.iter().all(|s| s.summary.offered_rate.is_some()) {
        "offered load (req/s)"
    } else if report.stages.iter().all(|s| s.summary.concurrency.is_some()) {
        "concurrency"
    } else {
        "stage (offered rate, concurrency or position)"
    };
    out.push((
        "throughput_vs_load".into(),
        Chart {
            title: format!("{}: throughput and goodput", report.campaign.name),
            x_label,
            y_label: "requests/s",
            series: vec![
                Series {
                    name: "throughput".into(),
                    points: by_load(&|s| s.request_rate),
                    line: true,
                },
                Series {
                    name: "goodput (SLO met)".into(),
                    points: by_load(&|s| s.goodput),
                    line: true,
                },
            ],
            markers: Vec::new(),
        },
    ));
    let markers: Vec<(f64, String)> = report
        .stages
        .iter()
        .flat_map(|s| {
            s.summary
                .faults
                .iter()
                .map(|f| (f.at_s, format!("{} {}", f.action, f.process)))
        })
        .collect();
    let over_time = |f: &dyn Fn(&crate::metrics::RequestRecord) -> Option<f64>| {
        report
            .stages
            .iter()
            .map(|s| Series {
                name: s.summary.name.clone(),
                points: s
                    .requests
                    .iter()
                    .filter(|r| r.ok())
                    .filter_map(|r| Some((r.sent_s, f(r)?)))
                    .collect(),
                line: false,
            })
            .collect::<Vec<_>>()
    };
    out.push((
        "ttft_over_time".into(),
        Chart {
            title: format!("{}: TTFT by send time", report.campaign.name),
            x_label: "time (s)",
            y_label: "TTFT (ms)",
            series: over_time(&|r| r.ttft_ms),
            markers: markers.clone(),
        },
    ));
    out.push((
        "tpot_over_time".into(),
        Chart {
            title: format!("{}: TPOT by send time", report.campaign.name),
            x_label: "time (s)",
            y_label: "TPOT (ms)",
            series: over_time(&|r| r.tpot_ms),
            markers,
        },
    ));
    out
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let all = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0_f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    for (m, _) in &chart.markers {
        x0 = x0.min(*m);
        x1 = x1.max(*m);
    }
    x0 = x0.min(0.0);
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.05 } else { 1.0 };
    let mut ctx = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1 * 1.02, 0.0..y1)
        .map_err(|e| err(&e))?;
    ctx.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in chart.series.iter().enumerate() {
        let (r, g, b) = COLORS[i % COLORS.len()];
        let color = RGBColor(r, g, b).to_rgba();
        let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2));
        if s.line {
            ctx.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(s.name.clone())
                .legend(legend);
        } else {
            ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 2, color.filled())))
                .map_err(|e| err(&e))?
                .label(s.name.clone())
                .legend(legend);
        }
    }
    for (x, label) in &chart.markers {
        ctx.draw_series(LineSeries::new([(*x, 0.0), (*x, y1)], RED.stroke_width(2)))
            .map_err(|e| err(&e))?;
        ctx.draw_series([Text::new(
            label.clone(),
            (*x, y1 * 0.97),
            ("sans-serif", 14).into_font().color(&RED),
        )])
        .map_err(|e| err(&e))?;
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
