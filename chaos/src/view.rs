//! The live terminal view of a run (ratatui), drawn when standard output is a terminal: each node's role,
//! term, applied index and state, the fault in progress, operations and HTTP requests per second with
//! their success rates, and the latest timeline entries (leader changes among them). Otherwise the run
//! prints plain lines.

use std::io::{IsTerminal, Stdout};
use std::sync::Arc;
use std::time::Duration;

use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Terminal;

use crate::history::Outcome;
use crate::run::Shared;

/// One node as last sampled.
#[derive(Debug, Clone, Default)]
pub struct NodeRow {
    pub name: String,
    /// leader, follower, candidate, …; empty when the node did not answer.
    pub role: String,
    pub term: u64,
    pub applied: u64,
    pub config_version: u64,
}

/// Whether the live view is drawn (standard output is a terminal).
pub fn wanted() -> bool {
    std::io::stdout().is_terminal()
}

/// Draws until aborted; the terminal is restored by [`restore`].
pub async fn run(shared: Arc<Shared>) {
    let Ok(mut term) = ratatui::try_init() else { return };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let _ = draw(&mut term, &shared);
    }
}

/// Leave the view (alternate screen, raw mode) before the verdicts are printed.
pub fn restore() {
    ratatui::restore();
}

/// Count of the last `window_ms` of `(time, ok)` samples, and the share that succeeded.
fn rate(samples: impl Iterator<Item = (u64, bool)>, now: u64, window_ms: u64) -> (f64, f64) {
    let (mut all, mut ok) = (0u32, 0u32);
    for (t, good) in samples {
        if t + window_ms >= now {
            all += 1;
            ok += u32::from(good);
        }
    }
    let per_s = f64::from(all) * 1000.0 / window_ms as f64;
    (per_s, if all == 0 { 100.0 } else { 100.0 * f64::from(ok) / f64::from(all) })
}

fn draw(term: &mut Terminal<CrosstermBackend<Stdout>>, shared: &Shared) -> std::io::Result<()> {
    let now = shared.ms();
    let rows = shared.node_rows();
    let fault = shared.fault_now();
    let (ops_s, ops_ok) = shared.with_ops(|ops| {
        rate(ops.iter().map(|o| (o.return_ms, matches!(o.outcome, Outcome::Ok(_)))), now, 5000)
    });
    let (http_s, http_ok) =
        shared.with_requests(|reqs| rate(reqs.iter().map(|r| (r.at_ms, r.ok_first())), now, 5000));
    let (udp_s, udp_ok) =
        shared.with_datagrams(|reqs| rate(reqs.iter().map(|r| (r.at_ms, r.ok_first())), now, 5000));
    let recent = shared.recent_events(12);
    term.draw(|f| {
        let area = f.area();
        let parts = Layout::default()
            .direction(Direction::Vertical)
            .constraints([
                Constraint::Length(rows.len() as u16 + 3),
                Constraint::Length(4),
                Constraint::Min(3),
            ])
            .split(area);
        let table_rows = rows.iter().map(|n| {
            let style = match n.role.as_str() {
                "leader" => Style::default().fg(Color::Green).add_modifier(Modifier::BOLD),
                "" => Style::default().fg(Color::Red),
                _ => Style::default(),
            };
            let role = if n.role.is_empty() { "no answer".to_string() } else { n.role.clone() };
            Row::new(vec![
                n.name.clone(),
                role,
                n.term.to_string(),
                n.applied.to_string(),
                n.config_version.to_string(),
            ])
            .style(style)
        });
        let table = Table::new(
            table_rows,
            [
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
        .header(Row::new(vec!["node", "role", "term", "applied", "config"]).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::default().borders(Borders::ALL).title(format!(" lbchaos run  {:.1} s ", now as f64 / 1000.0)));
        f.render_widget(table, parts[0]);
        let stats = vec![
            Line::from(format!("fault: {}", fault.unwrap_or_else(|| "none".into()))),
            Line::from(format!(
                "register {ops_s:.0} ops/s, {ops_ok:.1}% ok    HTTP {http_s:.0} req/s, {http_ok:.1}% ok on the first try    UDP {udp_s:.0} datagrams/s, {udp_ok:.1}% ok on the first try"
            )),
        ];
        f.render_widget(Paragraph::new(stats).block(Block::default().borders(Borders::ALL)), parts[1]);
        let events: Vec<Line> =
            recent.iter().map(|(t, e)| Line::from(format!("{:>7.1}s  {e}", *t as f64 / 1000.0))).collect();
        f.render_widget(
            Paragraph::new(events).block(Block::default().borders(Borders::ALL).title(" timeline ")),
            parts[2],
        );
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_the_window() {
        let samples = [(0, true), (4000, false), (5000, true), (9000, true)];
        let (per_s, ok) = rate(samples.into_iter(), 9000, 5000);
        // 4000, 5000 and 9000 are within 5 s of 9000.
        assert!((per_s - 0.6).abs() < 1e-9);
        assert!((ok - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(rate(std::iter::empty(), 9000, 5000), (0.0, 100.0));
    }
}
