use clap::Args;
use loopswap::control::Control;

/// Force-abort the swap in progress on an instance, whoever began it: its
/// gate reopens on the old implementation with its state untouched. For a
/// controller that is stopped or hung (the core also aborts by itself when
/// the swap's deadline passes).
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  loopswap abort lswloop0")]
pub struct AbortArgs {
    /// The instance, by name (lswloop0) or id (see `loopswap status`).
    pub instance: String,
}

impl AbortArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        loopswap::module::check_root()?;
        let mut control = Control::open()?;
        let state = control.list()?;
        let instance = state.instance(&self.instance).ok_or_else(|| {
            loopswap::Error::Usage(format!(
                "no instance named {} (loopswap status lists them)",
                self.instance
            ))
        })?;
        if instance.swap.is_none() {
            return Err(loopswap::Error::Usage(format!(
                "{}: no swap in progress, nothing to abort",
                instance.name
            ))
            .into());
        }
        let reply = control.command(&format!("abort {}", instance.id))?;
        super::outln!("{}: {reply}", instance.name)?;
        Ok(())
    }
}
