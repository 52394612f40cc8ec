use clap::Args;
use loopswap::control::Control;

/// Show the swap core's classes, implementations (module, version, state
/// version), instances with the implementation serving each, and any swap
/// in progress.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  loopswap status --json")]
pub struct StatusArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        loopswap::module::check_root()?;
        let state = Control::open()?.list()?;
        if self.json {
            super::outln!("{}", serde_json::to_string(&state)?)?;
            return Ok(());
        }
        super::outln!("classes: {}", state.classes.join(", "))?;
        super::outln!(
            "{:<16} {:<10} {:>7} {:>13}  MODULE",
            "IMPLEMENTATION",
            "CLASS",
            "VERSION",
            "STATE VERSION"
        )?;
        for implementation in &state.implementations {
            super::outln!(
                "{:<16} {:<10} {:>7} {:>13}  {}",
                implementation.name,
                implementation.class,
                implementation.version,
                implementation.state_version,
                implementation.module
            )?;
        }
        super::outln!(
            "{:<4} {:<12} {:<10} {:<16} {:<6} {:>6}  SWAP",
            "ID",
            "INSTANCE",
            "CLASS",
            "IMPLEMENTATION",
            "GATE",
            "HELD"
        )?;
        for instance in &state.instances {
            super::outln!(
                "{:<4} {:<12} {:<10} {:<16} {:<6} {:>6}  {}",
                instance.id,
                instance.name,
                instance.class,
                instance.implementation,
                instance.gate,
                instance.held,
                instance.swap.as_deref().unwrap_or("-")
            )?;
        }
        Ok(())
    }
}
