//! `--chart out.svg`: throughput and message-latency percentiles over time, one
//! line per target (Switchboard, baseline). SVG only, so no fonts are needed:
//! text goes into the file as `<text>` for the viewer to render.

use std::path::Path;

use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;

use crate::progress::Sample;

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Labelled ticks on the latency axis at most (it is ~300 pixels high).
const MAX_LATENCY_TICKS: usize = 14;

/// The values `m` × 10^k (for `m` in `multiples`) from `lo` to `hi`.
fn decade_multiples(lo: f64, hi: f64, multiples: &[f64]) -> Vec<f64> {
    let mut out = Vec::new();
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return out;
    }
    let mut exp = lo.log10().floor() as i32;
    while 10f64.powi(exp) <= hi {
        for m in multiples {
            // m × 10^exp, rounded to the decade's digits (0.05, not 0.05000000000000001).
            let v = format!("{m}e{exp}").parse::<f64>().unwrap_or(0.0);
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
        exp += 1;
    }
    out
}

/// Labelled ticks of the log latency axis (ms): 1, 2 and 5 times each power
/// of ten, below 1 ms too (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, …), or only the
/// powers of ten when that would be too many.
pub fn latency_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let ticks = decade_multiples(lo, hi, &[1.0, 2.0, 5.0]);
    if ticks.len() <= MAX_LATENCY_TICKS {
        ticks
    } else {
        decade_multiples(lo, hi, &[1.0])
    }
}

/// A latency tick's label: as many decimals as its decade needs (0.05, 0.2,
/// 1, 20, 500).
pub fn ms_label(v: f64) -> String {
    let decimals = if v > 0.0 && v < 1.0 {
        (-v.log10().floor()) as usize
    } else {
        0
    };
    format!("{v:.decimals$}")
}

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
        .build_cartesian_2d(
            0f64..t_max,
            (lat_min..lat_max)
                .log_scale()
                .with_key_points(latency_ticks(lat_min, lat_max))
                .with_light_points(decade_multiples(
                    lat_min,
                    lat_max,
                    &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
                )),
        )?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .y_label_formatter(&|v| ms_label(*v))
        .draw()?;
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

    /// The texts of an SVG's `<text>` elements.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_string())
            })
            .collect()
    }

    #[test]
    fn sub_millisecond_latencies_get_labelled_ticks() {
        assert_eq!(latency_ticks(0.04, 3.0), [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]);
        // Many decades: powers of ten only.
        assert_eq!(
            latency_ticks(0.001, 100_000.0),
            [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0]
        );
        assert_eq!(
            [0.05, 0.2, 1.0, 20.0, 500.0, 0.005].map(ms_label),
            ["0.05", "0.2", "1", "20", "500", "0.005"]
        );
        // p50 0.07-0.27 ms, p99 0.6-1 ms: like the smoke's latency run.
        let s: Vec<Sample> = (0..40)
            .map(|i| Sample {
                t: i as f64 * 0.25,
                msgs_per_s: 150.0,
                p50: Some(0.07 + 0.005 * i as f64),
                p99: Some(0.6 + 0.01 * i as f64),
                p999: Some(0.9),
                ..Sample::default()
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("lt-chart-sub-ms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        draw(&path, "latency", &[("switchboard".into(), s)]).unwrap();
        let texts = svg_texts(&std::fs::read_to_string(&path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        // The axis runs from the lowest p50 / 1.5 (0.047 ms) to p99.9 × 1.5.
        for label in ["0.05", "0.1", "0.2", "0.5", "1"] {
            assert!(texts.iter().any(|t| t == label), "{label} in {texts:?}");
        }
        assert!(!texts.iter().any(|t| t == "0.02" || t == "2"), "{texts:?}");
    }
}
