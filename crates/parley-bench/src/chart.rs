//! The latency-by-percentile chart (the classic HDR plot): the percentile on a log-scaled
//! `1/(1-p)` axis, so 90%, 99%, 99.9% … are evenly spaced, latency on a log axis so floors of
//! microseconds and scenarios of milliseconds fit together. Curves rise to the right, so the
//! legend goes in the lower right, where they are not. SVG, drawn with a font compiled
//! into the binary so it works on machines without fonts.

use crate::report::Report;
use crate::stats::Summary;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans (license beside it in assets/).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| anyhow!("the bundled font is invalid"));
    });
    result
}

/// How a line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// A scenario's latency: thick, its own colour.
    Scenario,
    /// The same scenario's service time (open loop): dashed, the scenario's colour, one
    /// legend entry for all.
    Service,
    /// persist-lag: dashed, its own colour.
    Lag,
    /// A floor engine: thin, its own colour.
    Floor,
}

/// A line on the chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    line: Line,
}

/// `p` percent as the x coordinate `1/(1-p)`, capped at `x_max`.
pub fn x_of(percentile: f64, x_max: f64) -> f64 {
    if percentile >= 100.0 {
        return x_max;
    }
    (100.0 / (100.0 - percentile)).min(x_max)
}

/// The x coordinate as a percentile label: 10 → `90%`, 1000 → `99.9%`.
pub fn label_of(x: f64) -> String {
    let p = 100.0 - 100.0 / x;
    let decimals = (x.log10().ceil() - 2.0).max(0.0) as usize;
    format!("{p:.decimals$}%")
}

/// How far along the axis a histogram's percentiles reach: 99.9% for a thousand samples,
/// 99.999% for 100,000; its maximum is drawn there, not beyond.
pub fn reach(count: u64) -> f64 {
    10f64
        .powf((count.max(1) as f64).log10().ceil())
        .clamp(100.0, 1e6)
}

fn points(s: &Summary, x_max: f64) -> Vec<(f64, f64)> {
    let x_max = reach(s.count).min(x_max);
    s.curve
        .iter()
        .map(|&(p, ms)| (x_of(p, x_max), ms.max(0.001)))
        .collect()
}

/// Distinct colours that read on white (Tableau 20, dark shades first).
const COLOURS: [(u8, u8, u8); 20] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
];

fn series(report: &Report, x_max: f64) -> Vec<Series> {
    let mut all = Vec::new();
    for s in &report.scenarios {
        if s.latency.count > 0 {
            all.push(Series {
                name: format!(
                    "{} (p99 {} ms)",
                    s.scenario,
                    crate::report::fmt_ms(s.latency.p99_ms)
                ),
                points: points(&s.latency, x_max),
                line: Line::Scenario,
            });
        }
        if let Some(service) = s.service.as_ref().filter(|s| s.count > 0) {
            all.push(Series {
                name: format!("{}: service time only", s.scenario),
                points: points(service, x_max),
                line: Line::Service,
            });
        }
        if let Some(lag) = s.persist_lag.as_ref().filter(|s| s.count > 0) {
            all.push(Series {
                name: format!("{}: lag until readable", s.scenario),
                points: points(lag, x_max),
                line: Line::Lag,
            });
        }
    }
    for f in &report.floor {
        if let Some(l) = f.latency.as_ref().filter(|l| l.count > 0) {
            all.push(Series {
                name: format!("floor: {}", f.engine),
                points: points(l, x_max),
                line: Line::Floor,
            });
        }
    }
    all
}

/// Draws the chart; `Ok(false)` when there is nothing to draw.
pub fn render(report: &Report, path: &Path) -> Result<bool> {
    let most = report
        .scenarios
        .iter()
        .map(|s| s.latency.count)
        .chain(
            report
                .floor
                .iter()
                .filter_map(|f| f.latency.as_ref().map(|l| l.count)),
        )
        .max()
        .unwrap_or(0);
    let x_max = reach(most);
    let all = series(report, x_max);
    if all.is_empty() {
        return Ok(false);
    }
    register_font()?;
    let (lo, hi) = all
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (y_lo, y_hi) = (lo / 1.5, hi * 1.5);

    let root = SVGBackend::new(path, (1360, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let title = format!("parley-bench {} — latency by percentile", report.slug());
    let root = root
        .titled(&title, (FAMILY, 22))
        .map_err(|e| anyhow!("{e}"))?;
    // The legend has a panel of its own: inside the plot it would hide curves.
    let (plot, legend) = root.split_horizontally(1020);
    let mut chart = ChartBuilder::on(&plot)
        .margin(16)
        .margin_right(40)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((1f64..x_max).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| label_of(*x))
        .y_label_formatter(&|y| crate::report::fmt_ms(*y))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let mut colour = 0;
    let mut keys: Vec<(String, ShapeStyle, bool)> = Vec::new();
    for s in all {
        // A service-time line takes the colour of the scenario drawn just before it.
        if s.line != Line::Service {
            colour += 1;
        }
        let (r, g, b) = COLOURS[(colour - 1) % COLOURS.len()];
        let style = ShapeStyle {
            color: RGBColor(r, g, b).to_rgba(),
            filled: false,
            stroke_width: if s.line == Line::Scenario { 2 } else { 1 },
        };
        let dashed = matches!(s.line, Line::Service | Line::Lag);
        if dashed {
            chart.draw_series(DashedLineSeries::new(s.points, 6, 4, style))
        } else {
            chart.draw_series(LineSeries::new(s.points, style))
        }
        .map_err(|e| anyhow!("{e}"))?;
        match s.line {
            Line::Service if keys.iter().any(|k| k.0.starts_with("dashed")) => {}
            Line::Service => {
                let grey = ShapeStyle {
                    color: BLACK.mix(0.6),
                    filled: false,
                    stroke_width: 1,
                };
                keys.push(("dashed, same colour: service time only".into(), grey, true));
            }
            _ => keys.push((s.name, style, dashed)),
        }
    }
    for (i, (name, style, dashed)) in keys.into_iter().enumerate() {
        let y = 40 + i as i32 * 22;
        let line = vec![(8, y), (36, y)];
        if dashed {
            legend.draw(&plotters::element::DashedPathElement::new(
                line, 5, 3, style,
            ))
        } else {
            legend.draw(&PathElement::new(line, style))
        }
        .map_err(|e| anyhow!("{e}"))?;
        legend
            .draw(&Text::new(
                name,
                (44, y - 7),
                (FAMILY, 13).into_font().color(&BLACK),
            ))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_map_to_the_log_axis_and_back() {
        assert_eq!(x_of(0.0, 1e5), 1.0);
        assert!((x_of(90.0, 1e5) - 10.0).abs() < 1e-9);
        assert!((x_of(99.9, 1e5) - 1000.0).abs() < 1e-6);
        assert_eq!(x_of(100.0, 1e5), 1e5);
        assert_eq!(label_of(10.0), "90%");
        assert_eq!(label_of(2.0), "50%");
        assert_eq!(label_of(1000.0), "99.9%");
        assert_eq!(label_of(1e4), "99.99%");
    }
}
