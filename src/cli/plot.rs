//! `bench --plot FILE.svg`: the pictures of a bench run, drawn by the `poloto` plotting crate.

use std::path::Path;

use anyhow::Context;
use poloto::build;

/// A line: its label and its points.
pub type Series = (String, Vec<(f64, f64)>);

/// Writes an SVG chart of `series` to `path`: a line per series (a dot for a series of one point), the y axis from 0.
pub fn lines(path: &Path, title: &str, x: &str, y: &str, series: &[Series]) -> anyhow::Result<()> {
    let plots = series.iter().map(|(label, points)| {
        let points: Vec<[f64; 2]> = points.iter().map(|(x, y)| [*x, *y]).collect();
        match points.len() {
            1 => build::plot(label.as_str()).scatter(points),
            _ => build::plot(label.as_str()).line(points),
        }
    });
    let header = poloto::header().with_viewbox_width(1100.0);
    let svg = poloto::frame()
        .with_viewbox(header.get_viewbox())
        .build()
        .data(poloto::plots!(build::markers([], [0.0]), plots))
        .build_and_label((title, x, y))
        .append_to(header.light_theme())
        .render_string()
        .with_context(|| format!("drawing {title}"))?;
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chart_is_an_svg_with_its_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("chart.svg");
        let series =
            vec![("tiering".to_string(), vec![(1.0, 10.0), (2.0, 18.0)]), ("baseline".to_string(), vec![(1.0, 12.0)])];
        super::lines(&file, "throughput", "workers", "rows/s", &series).expect("drawn");
        let svg = std::fs::read_to_string(&file).expect("svg");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        for text in ["throughput", "workers", "rows/s", "tiering", "baseline"] {
            assert!(svg.contains(text), "{text} in the chart");
        }
    }
}
