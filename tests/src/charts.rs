//! Line charts of benchmark results as SVG (plotters' SVG backend: no fonts or system libraries
//! needed, and the files diff and render on GitHub).
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::{coord::ranged1d::ValueFormatter, prelude::*};

/// One line: a label for the legend and (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Lines from labelled points, one per label in the order labels first appear.
pub fn series_by_label(points: impl IntoIterator<Item = (String, (f64, f64))>) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for (label, point) in points {
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(point),
            None => series.push(Series {
                label,
                points: vec![point],
            }),
        }
    }
    series
}

/// One panel; x is drawn on a log scale (service counts span 1 to 50,000).
pub struct Panel {
    pub title: String,
    pub x_desc: &'static str,
    pub y_desc: &'static str,
    /// Log scale on y too (latencies spanning orders of magnitude).
    pub log_y: bool,
    pub series: Vec<Series>,
}

const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// Panels side by side in one SVG file.
pub fn write_svg(path: &Path, panels: &[Panel]) -> Result<()> {
    let width = 480 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        draw(area, panel)?;
    }
    root.present().map_err(err)
}

fn draw(area: &DrawingArea<SVGBackend, plotters::coord::Shift>, panel: &Panel) -> Result<()> {
    let points = || panel.series.iter().flat_map(|s| &s.points);
    let x_max = points().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let y_max = points().map(|p| p.1).fold(0.0, f64::max) * 1.15;
    let y_min = points().map(|p| p.1).fold(f64::MAX, f64::min).max(1e-3) / 1.5;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    let x = (0.7f64..x_max).log_scale();
    if panel.log_y {
        let mut chart = builder
            .build_cartesian_2d(x, (y_min..y_max).log_scale())
            .map_err(err)?;
        mesh_and_lines(&mut chart, panel)
    } else {
        let mut chart = builder.build_cartesian_2d(x, 0f64..y_max).map_err(err)?;
        mesh_and_lines(&mut chart, panel)
    }
}

fn mesh_and_lines<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<LogCoord<f64>, Y>>,
    panel: &Panel,
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(panel.x_desc)
        .y_desc(panel.y_desc)
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .draw()
        .map_err(err)?;
    for (series, color) in panel.series.iter().zip(COLORS.iter().cycle()) {
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(series.points.clone(), style))
            .map_err(err)?
            .label(&series.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        let marks = series
            .points
            .iter()
            .map(|p| Circle::new(*p, 3, color.filled()));
        chart.draw_series(marks).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// Axis labels without a trailing ".0", and with decimals only below 10.
fn label(v: &f64) -> String {
    if *v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// plotters' errors borrow the backend; keep the message.
fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}
