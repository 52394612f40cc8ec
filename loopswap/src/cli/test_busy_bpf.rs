use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

/// Tests only (hidden): keep every CPU busy in BPF map syscalls for
/// DURATION, so that the kernel skips kprobe-type BPF programs (loopswap's
/// counters among them) that fire in an interrupt on top of one: the probe
/// misses a module's timer causes under load, made on demand.
#[derive(Debug, Args)]
pub struct TestBusyBpfArgs {
    /// How long, e.g. 2s.
    #[arg(value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// The map value each syscall copies: the longer the copy, the larger the
/// share of time the CPU spends with its BPF programs held off (well under
/// the kernel's largest array value, `KMALLOC_MAX_SIZE`).
const VALUE_BYTES: u32 = 1 << 20;

impl TestBusyBpfArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        loopswap::module::check_root()?;
        let until = Instant::now() + self.duration;
        let allowed =
            nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).context("this process's CPUs")?;
        let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
            .filter(|cpu| allowed.is_set(*cpu).unwrap_or(false))
            .collect();
        std::thread::scope(|scope| {
            let workers: Vec<_> = cpus
                .into_iter()
                .map(|cpu| {
                    scope.spawn(move || -> anyhow::Result<()> {
                        let mut on_cpu = nix::sched::CpuSet::new();
                        on_cpu.set(cpu).context("a CPU number")?;
                        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &on_cpu)
                            .with_context(|| format!("pinning a thread to CPU {cpu}"))?;
                        let map = loopswap::raw_bpf::BusyMap::new(VALUE_BYTES)?;
                        while Instant::now() < until {
                            map.rewrite()?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|worker| worker.join().expect("a worker does not panic"))
        })
    }
}
