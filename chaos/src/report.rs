//! The Markdown report of a run (`--report FILE`): the fault timeline, every verdict with its figures,
//! and an SVG plot (plotters) of the success rates and the leader over time, written beside it as
//! `FILE.svg` and linked from the report.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::history::{Op, Outcome};
use crate::traffic::Request;

/// What the report shows.
pub struct Report<'a> {
    pub title: String,
    /// (milliseconds since the start, what happened).
    pub timeline: &'a [(u64, String)],
    pub verdicts: &'a [String],
    pub summary: &'a str,
    pub ops: &'a [Op],
    pub requests: &'a [Request],
    pub datagrams: &'a [Request],
    /// (milliseconds since the start, the leader's node id if one was found).
    pub leaders: &'a [(u64, Option<u64>)],
}

/// Per second: the share of operations that succeeded, `None` for a second without any.
fn per_second(points: impl Iterator<Item = (u64, bool)>, seconds: usize) -> Vec<Option<f64>> {
    let mut ok = vec![0u32; seconds];
    let mut all = vec![0u32; seconds];
    for (ms, good) in points {
        let s = (ms / 1000) as usize;
        if s < seconds {
            all[s] += 1;
            ok[s] += u32::from(good);
        }
    }
    all.iter().zip(ok).map(|(a, o)| (*a > 0).then(|| 100.0 * f64::from(o) / f64::from(*a))).collect()
}

pub fn write(path: &Path, r: &Report<'_>) -> Result<()> {
    let svg_path = path.with_extension("svg");
    let svg = plot(r)?;
    std::fs::write(&svg_path, svg).with_context(|| format!("write {}", svg_path.display()))?;
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", r.title);
    let _ = writeln!(md, "`{}`\n", r.summary);
    let _ = writeln!(md, "## Verdicts\n");
    for v in r.verdicts {
        let _ = writeln!(md, "- {v}");
    }
    let name = svg_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let _ = writeln!(md, "\n## Over time\n\n![success rate and leader over time]({name})\n");
    let _ = writeln!(md, "## Fault timeline\n\n| time | event |\n|---:|---|");
    for (ms, what) in r.timeline {
        let _ = writeln!(md, "| {:.1} s | {} |", *ms as f64 / 1000.0, what.replace('|', "\\|"));
    }
    std::fs::write(path, md).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn plot(r: &Report<'_>) -> Result<String> {
    let end_ms = r
        .ops
        .iter()
        .map(|o| o.return_ms)
        .chain(r.requests.iter().map(|q| q.at_ms))
        .chain(r.leaders.iter().map(|l| l.0))
        .max()
        .unwrap_or(0);
    let seconds = (end_ms / 1000 + 1) as usize;
    let register =
        per_second(r.ops.iter().map(|o| (o.invoke_ms, matches!(o.outcome, Outcome::Ok(_)))), seconds);
    let http = per_second(r.requests.iter().map(|q| (q.at_ms, q.ok_first())), seconds);
    let udp = per_second(r.datagrams.iter().map(|q| (q.at_ms, q.ok_first())), seconds);
    let top_leader = r.leaders.iter().filter_map(|l| l.1).max().unwrap_or(1);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (upper, lower) = root.split_vertically(340);
        let mut chart = ChartBuilder::on(&upper)
            .caption("success rate (%) per second", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..seconds as f64, 0f64..101f64)
            .map_err(|e| anyhow!("{e}"))?;
        chart.configure_mesh().x_desc("seconds").draw().map_err(|e| anyhow!("{e}"))?;
        let udp_color = RGBColor(0, 150, 150);
        for (series, color, label) in [
            (&register, BLUE, "register ops"),
            (&http, RED, "HTTP, first try"),
            (&udp, udp_color, "UDP, first try"),
        ] {
            let pts: Vec<(f64, f64)> =
                series.iter().enumerate().filter_map(|(s, v)| v.map(|v| (s as f64 + 0.5, v))).collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        // Faults as shaded spans: from each "fault" entry to the next "healed".
        let mut start: Option<u64> = None;
        for (ms, what) in r.timeline {
            if what.starts_with("fault") {
                start = Some(*ms);
            } else if what.starts_with("healed") {
                if let Some(s) = start.take() {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(s as f64 / 1000.0, 0.0), (*ms as f64 / 1000.0, 101.0)],
                            RGBColor(255, 200, 0).mix(0.2).filled(),
                        )))
                        .map_err(|e| anyhow!("{e}"))?;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;

        let mut lchart = ChartBuilder::on(&lower)
            .caption("leader (node id; 0: none found)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..seconds as f64, 0f64..(top_leader as f64 + 0.5))
            .map_err(|e| anyhow!("{e}"))?;
        lchart
            .configure_mesh()
            .x_desc("seconds")
            .y_labels(top_leader as usize + 1)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let pts: Vec<(f64, f64)> =
            r.leaders.iter().map(|(ms, l)| (*ms as f64 / 1000.0, l.unwrap_or(0) as f64)).collect();
        lchart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 2, GREEN.filled())))
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(out)
}
