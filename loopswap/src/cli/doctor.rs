use clap::Args;
use loopswap::doctor::{self, Verdict};

/// Check what this host offers of what loopswap needs (kernel version,
/// root, loadable modules, the bpf system call, kprobes and kretprobes, BPF
/// programs on kprobes, kprobe.multi, the task iterator, BTF, tracefs,
/// lockdown, kptr_restrict, the swap core, descriptors) and print each with
/// ok, warn (works with a fallback) or missing, and the fix. Exit status 0
/// only if nothing required is missing. Changes nothing.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  loopswap doctor")]
pub struct DoctorArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl DoctorArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        let checks = doctor::run();
        if self.json {
            super::outln!(
                "{}",
                serde_json::json!({ "checks": checks, "ready": doctor::all_required_present(&checks) })
            )?;
        } else {
            for check in &checks {
                let verdict = match check.verdict {
                    Verdict::Ok => "ok",
                    Verdict::Warn => "warn",
                    Verdict::Missing => "MISSING",
                };
                match &check.fix {
                    Some(fix) => super::outln!("{verdict:<8} {:<20} {} -> {fix}", check.name, check.found)?,
                    None => super::outln!("{verdict:<8} {:<20} {}", check.name, check.found)?,
                }
            }
        }
        if doctor::all_required_present(&checks) {
            Ok(())
        } else {
            let missing: Vec<&str> = checks
                .iter()
                .filter(|check| check.verdict == Verdict::Missing)
                .map(|check| check.name)
                .collect();
            Err(loopswap::Error::Unsupported(format!(
                "this host lacks what loopswap needs: {} (fixes above)",
                missing.join(", ")
            ))
            .into())
        }
    }
}
