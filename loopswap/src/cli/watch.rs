use std::{io::IsTerminal as _, time::Duration};

use anyhow::Context as _;
use clap::Args;
use loopswap::{
    counters::{ModuleWatch, WatchOptions},
    kallsyms::{self, Scope},
};
use tokio::signal::unix::{SignalKind, signal};

/// Counts, per function, the threads inside MODULE now (including threads
/// that were already inside before the probes were attached, found on their
/// kernel stacks) and the calls since start, with totals: frames in flight,
/// distinct threads inside, and missed events (any non-zero value means the
/// counts cannot be trusted). Threads whose kernel stacks could not be read
/// since attach (running on a CPU) are listed as unknown, never counted as
/// outside.
///
/// Time in flight: how long calls stayed inside each function (p50, p99,
/// max, from log2 histograms the probes keep), and from it when the module
/// (and, for a module built on lsw_core, each instance) will likely be
/// quiescent.
///
/// On a terminal: a full-screen live view (q quits, p pauses, s changes
/// the sort). Otherwise (a pipe, --once, --json): a table or one JSON object
/// per snapshot. Detaches on quit, Ctrl-C or SIGTERM.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  loopswap watch lswloop_v1                 # live view, q detaches\n  loopswap watch --once --json lswloop_v1   # one snapshot as JSON"
)]
pub struct WatchArgs {
    /// The module to watch, as named in /proc/modules (e.g. lsw_fixture).
    pub module: String,

    /// Count only exported functions, not every function in the module's
    /// text (threads also enter through ops tables, kthreads, work items and
    /// timers, which only the default sees).
    #[arg(long)]
    pub exported_only: bool,

    /// Time between snapshots: 500ms, 1s, 2m, ...
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Print one snapshot right after attaching, then exit.
    #[arg(long)]
    pub once: bool,

    /// One JSON object per snapshot, one per line.
    #[arg(long)]
    pub json: bool,

    /// Concurrent calls per function whose returns can be followed
    /// (kretprobe maxactive, 1 to 4096). Returns past it are counted as missed.
    #[arg(long, default_value_t = WatchOptions::default().max_active)]
    pub max_active: u32,

    /// Benchmarks only: no entry timestamps or time-in-flight histograms
    /// (to measure what they cost).
    #[arg(long, hide = true)]
    pub no_time_in_flight: bool,
}

/// How long `--once` retries stacks that were unreadable at attach.
const ONCE_SETTLE: Duration = Duration::from_secs(5);

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval =
        humantime::parse_duration(text).map_err(|err| format!("{err} (write e.g. 500ms, 1s or 2m)"))?;
    if interval < Duration::from_millis(10) {
        return Err("an interval under 10ms would only measure loopswap itself".into());
    }
    Ok(interval)
}

impl WatchArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        let options = WatchOptions {
            scope: if self.exported_only {
                Scope::ExportedOnly
            } else {
                Scope::AllText
            },
            max_active: self.max_active,
            // A module built on the swap core: its exported functions take
            // the instance first, so frames and times are per instance too.
            attribute_instances: loopswap::module::uses_swap_core(&kallsyms::normalize_module_name(
                &self.module,
            )),
            time_in_flight: !self.no_time_in_flight,
        };
        // Attaching takes seconds (symbols, BTF, BPF loads, stack seeding):
        // in the live view on a terminal, a spinner says so (never in
        // output meant for a program: --json, --once, a pipe).
        let interactive =
            !self.json && !self.once && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let spinner = interactive.then(|| {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message(format!("attaching to {}", self.module));
            spinner.enable_steady_tick(Duration::from_millis(100));
            spinner
        });
        let attached = ModuleWatch::attach(&self.module, &options);
        if let Some(spinner) = spinner {
            spinner.finish_and_clear();
        }
        let mut watch = attached?;
        if interactive {
            return super::live::run(&mut watch, self.interval, instance_names());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        runtime.block_on(self.run(&mut watch))
    }

    fn print(&self, watch: &mut ModuleWatch, redraw: bool) -> anyhow::Result<()> {
        let snapshot = watch.snapshot().context("reading the counters")?;
        if self.json {
            super::outln!("{}", snapshot.to_json_line())?;
        } else {
            // Home and clear first, when redrawing a terminal.
            let clear = if redraw { "\x1b[H\x1b[2J" } else { "" };
            super::outln!("{clear}{}", snapshot.to_table())?;
        }
        Ok(())
    }

    async fn run(&self, watch: &mut ModuleWatch) -> anyhow::Result<()> {
        let redraw = !self.json && std::io::stdout().is_terminal();
        if self.once {
            // A thread on a CPU at attach time has an unreadable stack: give
            // it a moment to sleep or be preempted, then report what is left
            // as unknown rather than as zero.
            watch.settle(ONCE_SETTLE);
            return self.print(watch, redraw);
        }
        self.print(watch, redraw)?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut ticks = tokio::time::interval(self.interval);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    watch.check_still_loaded()?;
                    self.print(watch, redraw)?;
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        // Dropping the watch detaches every probe.
        Ok(())
    }
}

/// Instance id → name, from the swap core if it is loaded.
fn instance_names() -> std::collections::BTreeMap<u32, String> {
    loopswap::control::Control::open()
        .and_then(|mut control| control.list())
        .map(|state| {
            state
                .instances
                .into_iter()
                .map(|instance| (instance.id, instance.name))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_accept_human_units() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_interval("fast").is_err());
        assert!(parse_interval("1ms").is_err());
    }
}
