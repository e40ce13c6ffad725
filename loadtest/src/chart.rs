//! `--chart out.svg`: throughput and message-latency percentiles over time, one
//! line per target (Switchboard, baseline). SVG only, so no fonts are needed:
//! text goes into the file as `<text>` for the viewer to render.

use std::path::Path;

use plotters::prelude::*;

use crate::progress::Sample;

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws the chart; `series` is (label, timeline) per target.
pub fn draw(path: &Path, title: &str, series: &[(String, Vec<Sample>)]) -> Result<(), String> {
    draw_inner(path, title, series).map_err(|e| format!("chart {}: {e}", path.display()))
}

fn draw_inner(
    path: &Path,
    title: &str,
    series: &[(String, Vec<Sample>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(360);
    let all = || series.iter().flat_map(|(_, s)| s.iter());
    let t_max = all().map(|s| s.t).fold(1.0, f64::max);
    let rate_max = all().map(|s| s.msgs_per_s).fold(1.0, f64::max) * 1.1;

    let mut c = ChartBuilder::on(&top)
        .caption(
            format!("{title}: end-to-end messages per second"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max)?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_desc("msg/s")
        .draw()?;
    for (i, (label, s)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        c.draw_series(LineSeries::new(
            s.iter().skip(1).map(|x| (x.t, x.msgs_per_s)),
            color.stroke_width(2),
        ))?
        .label(label.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;

    let lat_max = all().filter_map(|s| s.p999.or(s.p99)).fold(1.0, f64::max) * 1.5;
    let lat_min = all()
        .filter_map(|s| s.p50)
        .fold(f64::INFINITY, f64::min)
        .clamp(0.001, 1.0)
        / 1.5;
    let mut c = ChartBuilder::on(&bottom)
        .caption(
            "message latency (ms, log scale): p50 dots, p99 solid, p99.9 thin",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (lat_min..lat_max).log_scale())?;
    c.configure_mesh().x_desc("seconds").y_desc("ms").draw()?;
    for (i, (label, s)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts = |f: fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
            s.iter().filter_map(|x| Some((x.t, f(x)?))).collect()
        };
        c.draw_series(LineSeries::new(pts(|x| x.p99), color.stroke_width(2)))?
            .label(format!("{label} p99"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        c.draw_series(LineSeries::new(
            pts(|x| x.p999),
            color.mix(0.6).stroke_width(1),
        ))?;
        c.draw_series(
            pts(|x| x.p50)
                .into_iter()
                .map(|p| Circle::new(p, 2, color.filled())),
        )?;
    }
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg() {
        let s: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t: i as f64,
                msgs_per_s: 100.0 * i as f64,
                p50: Some(0.5),
                p99: Some(2.0 + i as f64),
                p999: Some(5.0),
                ..Sample::default()
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("lt-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        draw(
            &path,
            "test",
            &[("switchboard".into(), s.clone()), ("baseline".into(), s)],
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<svg"));
        assert!(text.contains("switchboard p99"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
