//! `loopswap watch` on a terminal: a full-screen view redrawn every
//! interval (ratatui on crossterm, as bpftop draws), with keys to sort,
//! pause and quit. Quitting (or SIGTERM) detaches every probe.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use loopswap::{
    counters::ModuleWatch,
    snapshot::{Snapshot, times},
};
use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};

/// What the function table is sorted by; `s` moves to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SortKey {
    InFlight,
    CallRate,
    P99,
    Max,
    Name,
}

impl SortKey {
    fn next(self) -> Self {
        match self {
            Self::InFlight => Self::CallRate,
            Self::CallRate => Self::P99,
            Self::P99 => Self::Max,
            Self::Max => Self::Name,
            Self::Name => Self::InFlight,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::InFlight => "in flight",
            Self::CallRate => "calls/s",
            Self::P99 => "p99",
            Self::Max => "max",
            Self::Name => "name",
        }
    }
}

/// The view's state between frames.
struct LiveView {
    mechanism: String,
    interval: Duration,
    sort: SortKey,
    paused: bool,
    /// Snapshots taken (the header shows it, so a reader sees it update).
    refreshes: u64,
    current: Snapshot,
    /// Calls per second per function, and per instance, since the
    /// previous snapshot.
    function_rates: Vec<f64>,
    instance_rates: BTreeMap<u32, f64>,
    instance_names: BTreeMap<u32, String>,
    taken: Instant,
}

impl LiveView {
    fn update(&mut self, next: Snapshot) {
        let seconds = self.taken.elapsed().as_secs_f64().max(1e-3);
        self.function_rates = next
            .functions
            .iter()
            .zip(&self.current.functions)
            .map(|(now, before)| now.calls.saturating_sub(before.calls) as f64 / seconds)
            .collect();
        let completed = |snapshot: &Snapshot| -> BTreeMap<u32, u64> {
            snapshot
                .instances
                .iter()
                .map(|i| (i.id, i.time_in_flight.as_ref().map_or(0, |t| t.calls)))
                .collect()
        };
        let before = completed(&self.current);
        self.instance_rates = completed(&next)
            .into_iter()
            .map(|(id, calls)| {
                let earlier = before.get(&id).copied().unwrap_or(0);
                (id, calls.saturating_sub(earlier) as f64 / seconds)
            })
            .collect();
        self.current = next;
        self.taken = Instant::now();
        self.refreshes += 1;
    }

    fn draw(&self, frame: &mut Frame) {
        let snapshot = &self.current;
        let instance_rows = snapshot.instances.len().min(8) as u16;
        let [header, functions, instances, footer] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Min(4),
            Constraint::Length(if instance_rows == 0 { 0 } else { instance_rows + 3 }),
            Constraint::Length(1),
        ])
        .areas(frame.area());

        let state = if self.paused { "  PAUSED" } else { "" };
        let mut lines = vec![
            Line::from(format!(
                "loopswap watch {}  ({}, every {:?}, refresh {}){state}",
                snapshot.module, self.mechanism, self.interval, self.refreshes
            )),
            Line::from(format!(
                "{} frames in flight ({} seen on stacks at attach), {} threads inside, {} missed",
                snapshot.inflight, snapshot.seeded, snapshot.threads, snapshot.missed
            )),
            Line::from(format!("quiescent in {}", snapshot.quiescent_in.describe())),
        ];
        if snapshot.missed > 0 {
            lines[1] = lines[1]
                .clone()
                .style(Style::new().add_modifier(Modifier::REVERSED));
        }
        frame.render_widget(Paragraph::new(lines), header);

        let mut busy: Vec<usize> = (0..snapshot.functions.len())
            .filter(|&i| snapshot.functions[i].inflight > 0 || snapshot.functions[i].calls > 0)
            .collect();
        let rate = |i: usize| self.function_rates.get(i).copied().unwrap_or(0.0);
        let time = |i: usize, pick: fn(&loopswap::time_in_flight::TimeSummary) -> u64| {
            snapshot.functions[i].time_in_flight.as_ref().map_or(0, pick)
        };
        match self.sort {
            SortKey::InFlight => busy.sort_by_key(|&i| std::cmp::Reverse(snapshot.functions[i].inflight)),
            SortKey::CallRate => busy.sort_by(|&a, &b| rate(b).total_cmp(&rate(a))),
            SortKey::P99 => busy.sort_by_key(|&i| std::cmp::Reverse(time(i, |t| t.p99_ns))),
            SortKey::Max => busy.sort_by_key(|&i| std::cmp::Reverse(time(i, |t| t.max_ns))),
            SortKey::Name => {
                busy.sort_by(|&a, &b| snapshot.functions[a].name.cmp(&snapshot.functions[b].name))
            }
        }
        let bold = Style::new().add_modifier(Modifier::BOLD);
        let rows = busy.iter().map(|&i| {
            let function = &snapshot.functions[i];
            let [p50, p99, max] = times(function.time_in_flight.as_ref());
            Row::new(vec![
                function.name.clone(),
                function.inflight.to_string(),
                format!("{:.0}", rate(i)),
                function.calls.to_string(),
                p50,
                p99,
                max,
            ])
        });
        let widths = [
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
        ];
        let idle = snapshot.functions.len() - busy.len();
        frame.render_widget(
            Table::new(rows, widths)
                .header(
                    Row::new(["FUNCTION", "IN FLIGHT", "CALLS/S", "CALLS", "P50", "P99", "MAX"]).style(bold),
                )
                .block(Block::bordered().title(format!(
                    " functions (sorted by {}; {idle} idle since attach) ",
                    self.sort.label()
                ))),
            functions,
        );

        if instance_rows > 0 {
            let rows = snapshot.instances.iter().map(|instance| {
                let [p50, p99, max] = times(instance.time_in_flight.as_ref());
                let name = self
                    .instance_names
                    .get(&instance.id)
                    .cloned()
                    .unwrap_or_else(|| instance.id.to_string());
                Row::new(vec![
                    name,
                    instance.inflight.to_string(),
                    format!(
                        "{:.0}",
                        self.instance_rates.get(&instance.id).copied().unwrap_or(0.0)
                    ),
                    p50,
                    p99,
                    max,
                    instance.quiescent_in.short(),
                    instance.quiescent_in.held_by.clone().unwrap_or_default(),
                ])
            });
            let widths = [
                Constraint::Length(12),
                Constraint::Length(9),
                Constraint::Length(10),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(12),
                Constraint::Fill(1),
            ];
            frame.render_widget(
                Table::new(rows, widths)
                    .header(
                        Row::new([
                            "INSTANCE",
                            "IN FLIGHT",
                            "CALLS/S",
                            "P50",
                            "P99",
                            "MAX",
                            "QUIESCENT IN",
                            "HELD BY",
                        ])
                        .style(bold),
                    )
                    .block(Block::bordered().title(" instances ")),
                instances,
            );
        }
        frame.render_widget(
            Paragraph::new("q quit (detaches)   p pause   s sort by the next column"),
            footer,
        );
    }
}

/// Runs the live view until `q`, Esc, Ctrl-C or SIGTERM, or until the
/// module is unloaded (an error). The terminal is restored either way.
pub fn run(
    watch: &mut ModuleWatch,
    interval: Duration,
    instance_names: BTreeMap<u32, String>,
) -> anyhow::Result<()> {
    loopswap::swap::install_signal_handlers()?;
    let first = watch.snapshot().context("reading the counters")?;
    let mut view = LiveView {
        mechanism: watch.mechanism(),
        interval,
        sort: SortKey::InFlight,
        paused: false,
        refreshes: 1,
        function_rates: vec![0.0; first.functions.len()],
        instance_rates: BTreeMap::new(),
        current: first,
        instance_names,
        taken: Instant::now(),
    };
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let outcome = (|| -> anyhow::Result<()> {
        let mut next_tick = Instant::now() + interval;
        loop {
            terminal.draw(|frame| view.draw(frame)).context("drawing")?;
            // Keys until the next tick; a key redraws at once.
            let wait = next_tick.saturating_duration_since(Instant::now());
            if event::poll(wait.min(Duration::from_millis(200))).context("reading keys")?
                && let Event::Key(key) = event::read().context("reading keys")?
                && key.kind == KeyEventKind::Press
            {
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                    KeyCode::Char('p') | KeyCode::Char(' ') => view.paused = !view.paused,
                    KeyCode::Char('s') => view.sort = view.sort.next(),
                    _ => {}
                }
            }
            if loopswap::swap::cancelled() {
                return Ok(());
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + interval;
                watch.check_still_loaded()?;
                if !view.paused {
                    view.update(watch.snapshot().context("reading the counters")?);
                }
            }
        }
    })();
    ratatui::restore();
    outcome
}
