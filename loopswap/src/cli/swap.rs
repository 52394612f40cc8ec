use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use loopswap::swap::{self, SwapOptions, Target};

/// Replace the implementation serving one or more instances, state and all,
/// while calls keep arriving: load NEW if needed, attach counters to the old
/// implementation, close each instance's gate (callers wait), let the old
/// implementation quiesce, wait until no thread runs its code for that
/// instance (eBPF counters, confirmed on the kernel stacks), transfer and
/// transform the state, switch, open the gate; then unload the old module
/// once nothing uses it. On timeout or any failure the swap is aborted: the
/// old implementation resumes with its state untouched, and the report names
/// the functions and threads that held quiescence up.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  loopswap swap lswloop0 --to /modules/lswloop_v2.ko\n  loopswap swap --all --to lswloop_v1 --timeout 2s --json"
)]
pub struct SwapArgs {
    /// Instances to swap, by name (lswloop0) or id (see `loopswap status`).
    pub instances: Vec<String>,

    /// The new implementation: a .ko file (loaded if needed) or the name of
    /// a registered implementation.
    #[arg(long, value_name = "NEW")]
    pub to: String,

    /// Swap every instance of the class that does not run NEW yet.
    #[arg(long)]
    pub all: bool,

    /// Per instance, how long to wait for quiescence before aborting:
    /// 500ms, 2s, ... Before its gate closes, each instance's quiescence is
    /// estimated from how long calls stay inside; a swap estimated to take
    /// longer is refused up front, with nothing changed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Close the gate at once, even when quiescence is estimated to take
    /// longer than --timeout (the wait still ends at --timeout), and
    /// without first waiting with the gate open (--wait-out).
    #[arg(long)]
    pub force_wait: bool,

    /// Before closing the gate, wait with it open (up to --timeout) while a
    /// call of an entry point has been inside longer than this and longer
    /// than every call of its function seen returning since the counters
    /// attached, or was found inside at attach; a call still inside after
    /// --timeout refuses the swap, nothing changed. 0s waits out any
    /// overdue call.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub wait_out: Duration,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// Change nothing: tell whether each swap would be attempted, as
    /// `loopswap check` does.
    #[arg(long)]
    pub dry_run: bool,

    /// Keep the old module loaded even when nothing uses it any more.
    #[arg(long)]
    pub keep_old: bool,

    /// Tests only: stop after this phase of the first instance (attach,
    /// wait out, pause, gate, drain, quiesce, wait+confirm, transfer, commit) and sleep until killed,
    /// or with PHASE:DURATION for that long.
    #[arg(long, hide = true, value_name = "PHASE")]
    pub test_pause_after: Option<String>,

    /// Benchmarks only: hold the gate at the thread's own priority, not
    /// real-time (the control for what the real-time section buys).
    #[arg(long, hide = true)]
    pub ordinary_priority: bool,

    /// Benchmarks only: the longest pause before the gate closes (0s is
    /// the control for what the pause buys).
    #[arg(long, hide = true, default_value = "25ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub pre_gate_pause: Duration,
}

impl SwapArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        let options = SwapOptions {
            instances: self.instances.clone(),
            all: self.all,
            to: Target::parse(&self.to),
            timeout: self.timeout,
            keep_old: self.keep_old,
            force_wait: self.force_wait,
            wait_out: self.wait_out,
            pause_after: self.test_pause_after.clone(),
            ordinary_priority: self.ordinary_priority,
            pre_gate_pause: self.pre_gate_pause,
        };
        if self.dry_run {
            // The swap's own usage checks first (e.g. names with --all).
            loopswap::swap::check_usage(&options)?;
            return super::check::print(&loopswap::preflight::check(&options)?, self.json);
        }
        let json = self.json;
        let mut progress = |line: &str| {
            // A reader gone away does not stop a swap; the exit status
            // still says how it ended.
            if !json {
                let _ = super::outln!("{line}");
            }
        };
        swap::install_signal_handlers()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let (report, attached) = runtime.block_on(swap::run(&options, &mut progress))?;
        if json {
            let _ = super::outln!(
                "{}",
                serde_json::to_string(&report).context("serialising the report")?
            );
        } else {
            let _ = super::outln!("{}", report.to_table().trim_end());
        }
        // Probes left attached by --keep-old go after the report.
        drop(attached);
        if !report.succeeded() {
            let Some(failed) = report.instances.iter().find(|instance| !instance.committed) else {
                return Err(loopswap::Error::SwapFailed(
                    "interrupted by SIGINT or SIGTERM before the next instance".into(),
                )
                .into());
            };
            let reason = failed.error.as_deref().unwrap_or("unknown reason");
            return Err(loopswap::Error::SwapFailed(if failed.gated {
                format!(
                    "swap of {} aborted, {} resumed: {reason}",
                    failed.name, failed.from
                )
            } else {
                format!("swap of {} not started, nothing changed: {reason}", failed.name)
            })
            .into());
        }
        Ok(())
    }
}
