use anyhow::Context as _;
use aya::programs::KProbe;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

/// Benchmark baseline (hidden): attach a plain kprobe+kretprobe pair with
/// empty programs to MODULE's FUNCTION, the way aya attaches them by
/// default (or, with --multi, as two kprobe.multi links; with --session, as
/// one kprobe.session link running one empty program at entry and return,
/// the counters' mechanism), and hold them until SIGINT/SIGTERM. Without
/// FUNCTION (with --multi or --session only), every function of the
/// module's text, as the counters probe them: the floor of what attaching
/// and detaching them costs, without counting.
#[derive(Debug, Args)]
pub struct BenchProbeArgs {
    pub module: String,
    #[arg(required_unless_present_any = ["multi", "session"])]
    pub function: Option<String>,
    /// Attach through kprobe.multi links instead of a kprobe+kretprobe.
    #[arg(long, conflicts_with = "session")]
    pub multi: bool,
    /// Attach one kprobe.session link (Linux 6.10+) instead.
    #[arg(long)]
    pub session: bool,
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
        if self.multi || self.session {
            let symbols =
                loopswap::kallsyms::module_symbols(&self.module).context("reading /proc/kallsyms")?;
            let functions = loopswap::kallsyms::module_functions(
                &symbols,
                &self.module,
                loopswap::kallsyms::Scope::AllText,
            );
            let addresses: Vec<u64> = match &self.function {
                Some(name) => vec![
                    functions
                        .into_iter()
                        .find(|function| function.names.contains(name))
                        .with_context(|| format!("no function {name} in module {}", self.module))?
                        .address,
                ],
                // As the counters probe them: all but the exit function.
                None => functions
                    .into_iter()
                    .filter(|function| !function.is_module_exit())
                    .map(|function| function.address)
                    .collect(),
            };
            let object = loopswap::raw_bpf::LoadedObject::load(loopswap::counters::OBJECT, &[])?;
            let programs = object.programs();
            if self.session {
                // An empty program returning 0 runs at the return too; it
                // calls no kfunc, so no BTF id is needed.
                let no_kfuncs = loopswap::raw_bpf::SessionKfuncs { is_return: 0 };
                multi_links.push(
                    loopswap::raw_bpf::MultiLink::attach_session(
                        programs,
                        "lsw_noop_enter",
                        &addresses,
                        no_kfuncs,
                    )
                    .context("attaching lsw_noop_enter through kprobe.session")?,
                );
            }
            for (name, returns) in [("lsw_noop_enter", false), ("lsw_noop_exit", true)]
                .into_iter()
                .filter(|_| self.multi)
            {
                multi_links.push(
                    loopswap::raw_bpf::MultiLink::attach(programs, name, &addresses, returns)
                        .with_context(|| format!("attaching {name} through kprobe.multi"))?,
                );
            }
        } else {
            let function = self
                .function
                .as_deref()
                .context("FUNCTION is needed without --multi or --session")?;
            // The counters' task storage map is one aya 0.14 has no type
            // for; the baseline does not use it.
            let ebpf = ebpf.insert(
                aya::EbpfLoader::new()
                    .allow_unsupported_maps()
                    .load(loopswap::counters::OBJECT)?,
            );
            for name in ["lsw_noop_enter", "lsw_noop_exit"] {
                let program: &mut KProbe = ebpf
                    .program_mut(name)
                    .with_context(|| format!("program {name} missing from the eBPF object"))?
                    .try_into()?;
                program.load()?;
                links.push(
                    program
                        .attach(function, 0)
                        .with_context(|| format!("attaching {name}"))?,
                );
            }
        }
        let target = format!(
            "{}:{}",
            self.module,
            self.function.as_deref().unwrap_or("every function")
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                // Handled before "attached" is said: a shell's background
                // job starts with SIGINT ignored, and a signal sent on
                // reading that line must not be lost.
                let mut interrupt = signal(SignalKind::interrupt())?;
                let mut terminate = signal(SignalKind::terminate())?;
                println!("attached to {target}");
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
