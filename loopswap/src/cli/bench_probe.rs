use anyhow::Context as _;
use aya::programs::KProbe;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

/// Benchmark baseline (hidden): attach a plain kprobe+kretprobe pair with
/// empty programs to MODULE's FUNCTION, the way aya attaches them by
/// default (or, with --multi, as two kprobe.multi links, the mechanism the
/// counters use), and hold them until SIGINT/SIGTERM.
#[derive(Debug, Args)]
pub struct BenchProbeArgs {
    pub module: String,
    pub function: String,
    /// Attach through kprobe.multi links instead of a kprobe+kretprobe.
    #[arg(long)]
    pub multi: bool,
}

impl BenchProbeArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        loopswap::module::check_root()?;
        loopswap::module::check_live(&self.module)?;
        // The baseline pair is attached by aya, the way it attaches by
        // default; the counters' mechanism by loopswap's own loader.
        let mut links = Vec::new();
        let mut multi_links = Vec::new();
        // Kept until the end: the kprobes' programs are aya's.
        let mut ebpf = None;
        if self.multi {
            let symbols =
                loopswap::kallsyms::module_symbols(&self.module).context("reading /proc/kallsyms")?;
            let address = loopswap::kallsyms::module_functions(
                &symbols,
                &self.module,
                loopswap::kallsyms::Scope::AllText,
            )
            .into_iter()
            .find(|function| function.names.contains(&self.function))
            .with_context(|| format!("no function {} in module {}", self.function, self.module))?
            .address;
            let object = loopswap::raw_bpf::LoadedObject::load(loopswap::counters::OBJECT, &[])?;
            let programs = object.programs();
            for (name, returns) in [("lsw_noop_enter", false), ("lsw_noop_exit", true)] {
                multi_links.push(
                    loopswap::raw_bpf::MultiLink::attach(programs, name, &[address], returns)
                        .with_context(|| format!("attaching {name} through kprobe.multi"))?,
                );
            }
        } else {
            let ebpf = ebpf.insert(aya::Ebpf::load(loopswap::counters::OBJECT)?);
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
        drop(multi_links);
        drop(ebpf);
        Ok(())
    }
}
