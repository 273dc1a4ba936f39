//! The `--plot` picture (SVG, drawn with plotters): three panels a reader takes in at a glance.
//! 1. Latency over time: p50, p99 and max of each second's operations, measured from their
//!    intended send times (log scale, so a stall and the steady state both stay visible).
//! 2. Throughput over time: intended and answered operations per second, and failures.
//! 3. The percentile distribution: corrected latency against service time, on the usual
//!    "nines" axis (90%, 99%, 99.9%, …), where coordinated omission shows as the gap between
//!    the two curves.

use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{Load, Step};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 1150;
/// The distribution's x axis ends at 1 / (1 - q) = 10^6, i.e. the 99.9999th percentile.
const NINES_MAX: f64 = 1e6;
const DISTRIBUTION_POINTS: usize = 240;
/// Latencies below this are drawn at it (a log axis has no zero).
const MS_FLOOR: f64 = 0.001;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// One second of the run, placed on the run's time axis.
struct Point {
    /// The middle of the second.
    t: f64,
    /// Latency of the operations intended in this second (`None`: there were none).
    latency_ms: Option<[f64; 3]>,
    answered: f64,
    failed: f64,
}

/// The run's seconds, and the intended rate as a step function, on one time axis (ramp steps
/// follow each other).
fn series(load: &Load) -> (Vec<Point>, Vec<(f64, f64)>) {
    let mut offset = 0.0;
    let mut points = Vec::new();
    let mut intended = Vec::new();
    for step in &load.steps {
        let phase = &step.phase;
        let end = offset + phase.plan.duration.as_secs_f64();
        intended.extend([
            (offset, 0.0),
            (offset, phase.plan.rate),
            (end, phase.plan.rate),
            (end, 0.0),
        ]);
        for (second, stats) in phase.recorder.seconds.iter().enumerate() {
            let ms = |nanos: u64| (nanos as f64 / 1e6).max(MS_FLOOR);
            let latency = &stats.latency;
            points.push(Point {
                t: offset + second as f64 + 0.5,
                latency_ms: (!latency.is_empty()).then(|| {
                    [
                        ms(latency.value_at_quantile(0.5)),
                        ms(latency.value_at_quantile(0.99)),
                        ms(latency.max()),
                    ]
                }),
                answered: stats.answered as f64,
                failed: stats.failed as f64,
            });
        }
        offset += phase.elapsed.as_secs_f64().ceil();
    }
    (points, intended)
}

/// Writes the picture; the steps whose distributions are drawn are the run itself, or for a
/// ramp the highest passing step and the step after it. `objective`, if given, is drawn as a
/// horizontal line on both latency panels.
pub fn write_svg(path: &Path, load: &Load, objective: Option<Duration>) -> anyhow::Result<()> {
    let (points, intended) = series(load);
    let shown = distribution_steps(load);
    let objective_ms = objective.map(|d| d.as_secs_f64() * 1e3);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        let drawn: Drawn = (|| {
            root.fill(&WHITE)?;
            let (top, rest) = root.split_vertically(400);
            let (middle, bottom) = rest.split_vertically(330);
            latency_over_time(&top, &points, objective_ms)?;
            throughput(&middle, &points, &intended)?;
            distribution(&bottom, &shown, objective_ms)?;
            root.present()?;
            Ok(())
        })();
        drawn.map_err(|error| anyhow::anyhow!("drawing the plot: {error}"))?;
    }
    std::fs::write(path, svg)?;
    Ok(())
}

fn distribution_steps(load: &Load) -> Vec<(String, &Step)> {
    if !load.ramp {
        return load
            .steps
            .iter()
            .map(|s| (format!("{:.0}/s", s.phase.plan.rate), s))
            .collect();
    }
    let best = load
        .steps
        .iter()
        .filter(|s| s.passed())
        .max_by(|a, b| a.phase.plan.rate.total_cmp(&b.phase.plan.rate));
    let next = best.and_then(|b| {
        load.steps
            .iter()
            .filter(|s| s.phase.plan.rate > b.phase.plan.rate)
            .min_by(|a, c| a.phase.plan.rate.total_cmp(&c.phase.plan.rate))
    });
    let fallback = load.steps.first().filter(|_| best.is_none());
    [best, next, fallback]
        .into_iter()
        .flatten()
        .map(|s| {
            (
                format!(
                    "{:.0}/s{}",
                    s.phase.plan.rate,
                    if s.passed() { " (met)" } else { " (missed)" }
                ),
                s,
            )
        })
        .collect()
}

fn ms_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (low, high) = values.fold((f64::MAX, MS_FLOOR), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let low = if low == f64::MAX { MS_FLOOR } else { low };
    (low / 1.5).max(MS_FLOOR)..(high * 1.5).max(low * 10.0)
}

fn time_axis_end(points: &[Point], intended: &[(f64, f64)]) -> f64 {
    let last_point = points.last().map_or(0.0, |p| p.t + 0.5);
    let last_step = intended.last().map_or(0.0, |p| p.0);
    last_point.max(last_step).max(1.0)
}

/// A horizontal line across the x range at `y`, labelled.
fn objective_line<'a>(x: std::ops::Range<f64>, y: f64) -> LineSeries<SVGBackend<'a>, (f64, f64)> {
    LineSeries::new([(x.start, y), (x.end, y)], BLACK.mix(0.6).stroke_width(1))
}

fn latency_over_time(area: &Area, points: &[Point], objective_ms: Option<f64>) -> Drawn {
    let t_max = points.last().map_or(1.0, |p| p.t + 0.5);
    let y = ms_range(
        points
            .iter()
            .filter_map(|p| p.latency_ms)
            .flatten()
            .chain(objective_ms),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Latency per second, from each request's intended send time",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, y.log_scale())?;
    chart
        .configure_mesh()
        .x_desc(
            "seconds since the load started (each point: the operations intended in that second)",
        )
        .y_desc("latency, ms (log)")
        .y_label_formatter(&|v| format!("{v}"))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    for (name, color, at) in [("max", RED, 2), ("p99", MAGENTA, 1), ("p50", BLUE, 0)] {
        let line = points
            .iter()
            .filter_map(|p| p.latency_ms.map(|l| (p.t, l[at])));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if let Some(ms) = objective_ms {
        chart
            .draw_series(objective_line(0.0..t_max, ms))?
            .label(format!("objective p99 {ms} ms"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

fn throughput(area: &Area, points: &[Point], intended: &[(f64, f64)]) -> Drawn {
    let t_max = time_axis_end(points, intended);
    let y_max = points
        .iter()
        .map(|p| p.answered.max(p.failed))
        .chain(intended.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Operations per second: intended, answered, failed",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load started (answered and failed: by the second of the answer)")
        .y_desc("operations / s")
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    chart
        .draw_series(
            AreaSeries::new(
                points.iter().map(|p| (p.t, p.answered)),
                0.0,
                GREEN.mix(0.25),
            )
            .border_style(GREEN),
        )?
        .label("answered")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], GREEN.mix(0.4).filled()));
    chart
        .draw_series(LineSeries::new(
            intended.iter().copied(),
            BLACK.stroke_width(2),
        ))?
        .label("intended")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.t, p.failed)),
            RED.stroke_width(2),
        ))?
        .label("failed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}

/// Points of a percentile curve.
type Curve = Vec<(f64, f64)>;

/// (1 / (1 - q), latency ms) pairs up to the histogram's resolution, ending at its max.
fn curve(histogram: &Histogram<u64>) -> Curve {
    let count = histogram.len();
    if count == 0 {
        return Vec::new();
    }
    let last_q = 1.0 - 1.0 / count as f64;
    let mut points: Vec<(f64, f64)> = (0..DISTRIBUTION_POINTS)
        .map(|i| 10f64.powf(NINES_MAX.log10() * i as f64 / (DISTRIBUTION_POINTS - 1) as f64))
        .filter(|x| 1.0 - 1.0 / x <= last_q)
        .map(|x| {
            (
                x,
                (histogram.value_at_quantile(1.0 - 1.0 / x) as f64 / 1e6).max(MS_FLOOR),
            )
        })
        .collect();
    let end = (count as f64).min(NINES_MAX);
    points.push((end, (histogram.max() as f64 / 1e6).max(MS_FLOOR)));
    points
}

fn nines_label(x: f64) -> String {
    let percent = (1.0 - 1.0 / x) * 100.0;
    let text = format!("{percent:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

fn distribution(area: &Area, steps: &[(String, &Step)], objective_ms: Option<f64>) -> Drawn {
    let curves: Vec<(String, Curve, Curve)> = steps
        .iter()
        .map(|(name, step)| {
            (
                name.clone(),
                curve(&step.phase.recorder.corrected),
                curve(&step.phase.recorder.service),
            )
        })
        .collect();
    let y = ms_range(
        curves
            .iter()
            .flat_map(|(_, a, b)| a.iter().chain(b.iter()).map(|p| p.1))
            .chain(objective_ms),
    );
    let x_max = curves
        .iter()
        .flat_map(|(_, a, _)| a.iter().map(|p| p.0))
        .fold(10.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Latency by percentile: corrected (from intended send) vs service time",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..x_max).log_scale(), y.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms (log)")
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|v| format!("{v}"))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    let palette = [(BLUE, CYAN), (RED, RGBColor(255, 160, 0))];
    for (n, (name, corrected, service)) in curves.iter().enumerate() {
        let (strong, light) = palette[n % palette.len()];
        chart
            .draw_series(LineSeries::new(
                corrected.iter().copied(),
                strong.stroke_width(2),
            ))?
            .label(format!("{name} corrected"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], strong.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(
                service.iter().copied(),
                light.stroke_width(2),
            ))?
            .label(format!("{name} service time"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], light.stroke_width(2))
            });
    }
    if let Some(ms) = objective_ms {
        chart
            .draw_series(objective_line(1.0..x_max, ms))?
            .label(format!("objective p99 {ms} ms"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_are_labelled_as_percentiles() {
        assert_eq!(nines_label(1.0), "0%");
        assert_eq!(nines_label(10.0), "90%");
        assert_eq!(nines_label(1000.0), "99.9%");
        assert_eq!(nines_label(1e6), "99.9999%");
    }

    #[test]
    fn the_curve_ends_at_the_maximum() {
        let mut histogram = crate::measure::histogram();
        for v in 1..=1000u64 {
            histogram.record(v * 1_000_000).expect("in range");
        }
        let points = curve(&histogram);
        let last = points.last().expect("points");
        assert!((last.1 - 1000.0).abs() < 1.0, "max {last:?}");
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1), "monotone");
    }
}
