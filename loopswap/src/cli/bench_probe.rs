use anyhow::Context as _;
use aya::programs::KProbe;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

/// Benchmark baseline (hidden): attach a plain kprobe+kretprobe pair with
/// empty programs to MODULE's FUNCTION, the way aya attaches them by
/// default, and hold them until SIGINT/SIGTERM.
#[derive(Debug, Args)]
pub struct BenchProbeArgs {
    pub module: String,
    pub function: String,
}

impl BenchProbeArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        loopswap::module::check_root()?;
        loopswap::module::check_live(&self.module)?;
        let mut ebpf = loopswap::counters::load_object()?;
        let mut links = Vec::new();
        for name in ["lsw_noop_enter", "lsw_noop_exit"] {
            let program: &mut KProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            program.load()?;
            links.push(
                program
                    .attach(&self.function, 0)
                    .with_context(|| format!("attaching {name}"))?,
            );
        }
        println!("attached to {}:{}", self.module, self.function);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let mut interrupt = signal(SignalKind::interrupt())?;
                let mut terminate = signal(SignalKind::terminate())?;
                tokio::select! {
                    _ = interrupt.recv() => {},
                    _ = terminate.recv() => {},
                }
                anyhow::Ok(())
            })?;
        drop(links);
        Ok(())
    }
}
