use std::time::Duration;

use clap::Args;
use loopswap::{
    preflight::{self, Preflight},
    swap::{SwapOptions, Target},
};

/// Tell, changing nothing, whether `loopswap swap INSTANCE... --to NEW`
/// would be attempted: NEW's module name, vermagic against the running
/// kernel, signature against the kernel's policy, class, version, state
/// version and the state versions it imports (from its .modinfo, see
/// kernel/lsw_core.h); then one line per instance, saying
/// whether NEW has a transformer from the state it runs. Without instances:
/// every instance of NEW's class not running it yet. Exit status 0 only if
/// every swap would be attempted.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  loopswap check /modules/lswloop_v2.ko lswloop0")]
pub struct CheckArgs {
    /// The new implementation: a .ko file or a registered implementation's name.
    pub new: String,

    /// Instances, by name or id (default: every instance NEW could serve).
    pub instances: Vec<String>,

    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl CheckArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        let options = SwapOptions {
            instances: self.instances.clone(),
            all: self.instances.is_empty(),
            to: Target::parse(&self.new),
            timeout: Duration::from_secs(5),
            keep_old: false,
            force_wait: false,
            wait_out: Duration::from_millis(10),
            pause_after: None,
            ordinary_priority: false,
            pre_gate_pause: loopswap::swap::PRE_GATE_PAUSE,
        };
        print(&preflight::check(&options)?, self.json)
    }
}

/// Prints a preflight and fails unless every swap would be attempted.
pub fn print(preflight: &Preflight, json: bool) -> anyhow::Result<()> {
    if json {
        super::outln!(
            "{}",
            serde_json::json!({ "new": preflight.new, "instances": preflight.instances, "ready": preflight.ready() })
        )?;
    } else {
        super::outln!("{}", preflight.to_table().trim_end())?;
    }
    if preflight.ready() {
        Ok(())
    } else {
        Err(loopswap::Error::WouldNotSwap("not every swap would be attempted (see above)".into()).into())
    }
}
