//! The bench's pictures, as SVG (plotters): I/O latency over time with the
//! swaps' blackout windows marked, and blackout beside the alternatives.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;

/// The red of blackout windows and loopswap's bars.
const BLACKOUT: RGBColor = RGBColor(214, 39, 40);
/// The blue of I/O samples and the other bars.
const SAMPLE: RGBColor = RGBColor(31, 119, 180);

/// Per-window worst I/O latency (`samples`: seconds since the first
/// sample, latency in µs) as points on a log scale, with each blackout
/// window (seconds, start and end) shaded and a thin line at its start so
/// that short ones stay visible at this scale.
pub fn latency_over_time(
    path: &Path,
    title: &str,
    samples: &[(f64, f64)],
    windows: &[(f64, f64)],
) -> anyhow::Result<()> {
    let end = samples.iter().map(|(t, _)| *t).fold(1.0, f64::max);
    let top = samples.iter().map(|(_, us)| *us).fold(10.0, f64::max) * 2.0;
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, (1.0..top).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("worst I/O latency per 10 ms (µs)")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(
            windows.iter().map(|(start, stop)| {
                Rectangle::new([(*start, 1.0), (*stop, top)], BLACKOUT.mix(0.35).filled())
            }),
        )
        .map_err(plot_error)?
        .label("swap blackout (gate closed)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], BLACKOUT.mix(0.35).filled()));
    chart
        .draw_series(
            windows
                .iter()
                .map(|(start, _)| PathElement::new(vec![(*start, 1.0), (*start, top)], BLACKOUT.mix(0.6))),
        )
        .map_err(plot_error)?;
    chart
        .draw_series(
            samples
                .iter()
                .map(|(t, us)| Circle::new((*t, us.max(1.0)), 1, SAMPLE.filled())),
        )
        .map_err(plot_error)?
        .label("fio direct job: worst I/O in each 10 ms")
        .legend(|(x, y)| Circle::new((x + 7, y), 3, SAMPLE.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Horizontal bars, one per (label, milliseconds), on a log scale; the
/// first bar is loopswap's and drawn red.
pub fn bars(path: &Path, title: &str, values: &[(String, f64)]) -> anyhow::Result<()> {
    let top = values.iter().map(|(_, ms)| *ms).fold(1.0, f64::max) * 3.0;
    let bottom = values.iter().map(|(_, ms)| *ms).fold(top, f64::min).min(1.0) / 3.0;
    let rows = values.len() as f64;
    let root = SVGBackend::new(path, (1000, 120 + 60 * values.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d((bottom..top).log_scale(), 0.0..rows)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("milliseconds (log scale)")
        .draw()
        .map_err(plot_error)?;
    for (row, (label, ms)) in values.iter().enumerate() {
        let y = rows - row as f64 - 1.0;
        let color = if row == 0 { BLACKOUT } else { SAMPLE };
        chart
            .draw_series([Rectangle::new(
                [(bottom, y + 0.2), (*ms, y + 0.8)],
                color.filled(),
            )])
            .map_err(plot_error)?;
        chart
            .draw_series([Text::new(
                format!("{label}: {ms:.1} ms"),
                (bottom * 1.1, y + 0.95),
                ("sans-serif", 15),
            )])
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("drawing: {err:?}")
}

/// Writes both pictures of a run into `folder`; returns their paths.
pub fn write_swap_pictures(
    folder: &Path,
    samples: &[(f64, f64)],
    windows: &[(f64, f64)],
    bars_ms: &[(String, f64)],
) -> anyhow::Result<[std::path::PathBuf; 2]> {
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    let latency = folder.join("swap-latency.svg");
    latency_over_time(
        &latency,
        "I/O latency on lswloop0 (ext4, fio) across loopswap swaps v1 <-> v2",
        samples,
        windows,
    )?;
    let comparison = folder.join("swap-blackout.svg");
    bars(
        &comparison,
        "How long lswloop0 serves no I/O: loopswap vs the alternatives",
        bars_ms,
    )?;
    Ok([latency, comparison])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_pictures_are_written_as_svg() {
        let folder = std::env::temp_dir().join(format!("loopswap-plot-{}", std::process::id()));
        let samples: Vec<(f64, f64)> = (0..500)
            .map(|i| (i as f64 * 0.01, 50.0 + (i % 7) as f64))
            .collect();
        let [latency, comparison] = write_swap_pictures(
            &folder,
            &samples,
            &[(1.0, 1.02), (3.0, 3.03)],
            &[("loopswap blackout".into(), 20.0), ("naive reload".into(), 120.0)],
        )
        .unwrap();
        for path in [latency, comparison] {
            let svg = std::fs::read_to_string(&path).unwrap();
            assert!(svg.starts_with("<svg"), "{svg:.80}");
            assert!(svg.contains("<rect"), "{}", path.display());
        }
        let bars = std::fs::read_to_string(folder.join("swap-blackout.svg")).unwrap();
        assert!(bars.contains("naive reload: 120.0 ms"));
        std::fs::remove_dir_all(folder).unwrap();
    }
}
