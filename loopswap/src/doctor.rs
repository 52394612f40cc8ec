//! `loopswap doctor`: what this host offers of what loopswap needs, each
//! with the fix, as `bpftool feature probe` does. Kernel features are read
//! from the kernel's own symbol names (`/proc/kallsyms` names are readable
//! without privilege even where addresses are hidden), so no config file
//! is needed.

use std::{collections::HashSet, fs};

use serde::Serialize;

use crate::tracefs;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// loopswap cannot work without it.
    Missing,
    /// loopswap works, less well or with a fallback.
    Warn,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was found.
    pub found: String,
    /// What to do, when not ok.
    pub fix: Option<String>,
}

fn check(name: &'static str, verdict: Verdict, found: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        name,
        verdict,
        found: found.into(),
        fix: fix.map(str::to_owned),
    }
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|text| text.trim().to_owned())
}

/// Kernel symbol names (no addresses needed).
fn kernel_symbols() -> HashSet<String> {
    read("/proc/kallsyms")
        .map(|text| {
            text.lines()
                .filter_map(|line| line.split_whitespace().nth(2).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the bpf(2) system call exists: an empty `BPF_MAP_CREATE` is
/// refused with EINVAL (or EPERM) by a kernel that has it, ENOSYS otherwise.
fn bpf_syscall() -> Result<(), std::io::Error> {
    let mut attr = [0u8; 128];
    // SAFETY: a zeroed attribute buffer of the size given.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), attr.len() as libc::c_uint) };
    let err = std::io::Error::last_os_error();
    if ret < 0 && err.raw_os_error() == Some(libc::ENOSYS) {
        return Err(err);
    }
    if ret >= 0 {
        // SAFETY: a descriptor the call just returned.
        unsafe { libc::close(ret as libc::c_int) };
    }
    Ok(())
}

/// Every check, in the order a fix is best made.
pub fn run() -> Vec<Check> {
    use Verdict::{Missing, Ok, Warn};
    let mut checks = Vec::new();
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    let (major, minor) = crate::module::kernel_version();
    checks.push(if (major, minor) >= (6, 9) {
        check("kernel", Ok, format!("Linux {release}"), None)
    } else if (major, minor) >= (6, 7) {
        check(
            "kernel",
            Warn,
            format!("Linux {release}"),
            Some("Linux 6.9 or later opens a thread's pidfd (PIDFD_THREAD) to compare its stack with its counted frames; before it such a comparison sees no counted frames and vetoes the swap"),
        )
    } else if (major, minor) >= (5, 15) {
        check(
            "kernel",
            Warn,
            format!("Linux {release}"),
            Some("Linux 6.7 or later reports kprobe.multi misses; before it loopswap uses one tracefs kprobe pair per function"),
        )
    } else {
        check(
            "kernel",
            Missing,
            format!("Linux {release}"),
            Some("Linux 5.15 or later (bpf_get_func_ip in kprobe programs)"),
        )
    });

    let root = nix::unistd::geteuid().is_root();
    checks.push(match crate::module::check_root() {
        Result::Ok(()) => check("root", Ok, "euid 0 in the initial user namespace", None),
        Err(err) if root => check(
            "root",
            Missing,
            err.to_string(),
            Some("run on the host, not in a container"),
        ),
        Err(_) => check(
            "root",
            Missing,
            "not root",
            Some("run as root (sudo loopswap ...)"),
        ),
    });

    let modules = std::path::Path::new("/proc/modules").exists();
    checks.push(if modules {
        check("modules", Ok, "loadable modules (/proc/modules)", None)
    } else {
        check(
            "modules",
            Missing,
            "this kernel has no loadable modules (no /proc/modules)",
            Some("a kernel built with CONFIG_MODULES=y"),
        )
    });

    checks.push(match bpf_syscall() {
        Result::Ok(()) => check("bpf", Ok, "bpf(2) system call", None),
        Err(err) => check(
            "bpf",
            Missing,
            format!("bpf(2): {err}"),
            Some("a kernel built with CONFIG_BPF_SYSCALL=y"),
        ),
    });

    let symbols = kernel_symbols();
    let has = |symbol: &str| symbols.contains(symbol);
    for (name, symbol, verdict, what, fix) in [
        (
            "kprobes",
            "register_kprobe",
            Missing,
            "kprobes",
            "a kernel built with CONFIG_KPROBES=y",
        ),
        (
            "kretprobes",
            "register_kretprobe",
            Missing,
            "kretprobes (return probes)",
            "a kernel built with CONFIG_KRETPROBES=y",
        ),
        (
            "bpf-kprobes",
            "bpf_get_func_ip_kprobe",
            Missing,
            "BPF programs on kprobes (bpf_get_func_ip)",
            "a kernel built with CONFIG_BPF_EVENTS=y, 5.15 or later",
        ),
        (
            "kprobe.multi",
            "register_fprobe_ips",
            Warn,
            "kprobe.multi links (fprobe): all functions in one attach",
            "CONFIG_FPROBE=y; without it loopswap attaches one tracefs kprobe pair per function (slower, 2 descriptors each)",
        ),
        (
            "task-iterator",
            "bpf_iter_task",
            Missing,
            "BPF task iterator: the counters list frames, and stack checks unwind tasks, in the kernel",
            "a kernel built with CONFIG_BPF_SYSCALL and CONFIG_DEBUG_INFO_BTF",
        ),
        (
            "task-storage",
            "bpf_task_storage_get",
            Missing,
            "BPF task-local storage: each thread's counted frames live in it",
            "a kernel built with CONFIG_BPF_SYSCALL and CONFIG_DEBUG_INFO_BTF, 5.15 or later",
        ),
    ] {
        checks.push(if symbols.is_empty() {
            check(
                name,
                Missing,
                "/proc/kallsyms is unreadable",
                Some("a kernel with CONFIG_KALLSYMS=y"),
            )
        } else if has(symbol) {
            check(name, Ok, what, None)
        } else {
            check(
                name,
                verdict,
                format!("no {what} ({symbol} not in /proc/kallsyms)"),
                Some(fix),
            )
        });
    }

    checks.push(if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        check("btf", Ok, "kernel BTF (/sys/kernel/btf/vmlinux)", None)
    } else {
        check(
            "btf",
            Missing,
            "no kernel BTF (/sys/kernel/btf/vmlinux)",
            Some("a kernel built with CONFIG_DEBUG_INFO_BTF=y (the counters' task storage and iterators need it)"),
        )
    });

    checks.push(match tracefs::root() {
        Result::Ok(path) => check("tracefs", Ok, format!("mounted at {}", path.display()), None),
        // The error says how to fix it.
        Err(err) => check("tracefs", Missing, err.to_string(), None),
    });

    checks.push(match read("/sys/kernel/security/lockdown") {
        Some(modes) if modes.contains("[none]") => check("lockdown", Ok, "lockdown: none", None),
        // Integrity refuses unsigned modules; kprobes, tracefs and BPF
        // reads of kernel memory are refused only by confidentiality.
        Some(modes) if modes.contains("[integrity]") => check(
            "lockdown",
            Warn,
            format!("lockdown: {modes}"),
            Some("integrity mode refuses unsigned modules: sign NEW with a key the kernel trusts"),
        ),
        Some(modes) => check(
            "lockdown",
            Missing,
            format!("lockdown: {modes}"),
            Some("confidentiality mode forbids kprobes, tracefs and BPF reads of kernel memory: boot with lockdown=none or integrity"),
        ),
        None => check("lockdown", Ok, "no lockdown LSM", None),
    });
    checks.push(
        match read("/proc/sys/kernel/perf_event_max_stack").and_then(|v| v.parse::<u32>().ok()) {
            Some(depth) if depth >= 64 => check(
                "max_stack",
                Ok,
                format!("kernel.perf_event_max_stack = {depth}"),
                None,
            ),
            Some(depth) => check(
                "max_stack",
                Warn,
                format!(
                    "kernel.perf_event_max_stack = {depth}: the task scan sees fewer frames than /proc (64)"
                ),
                Some("sysctl kernel.perf_event_max_stack=127"),
            ),
            None => check("max_stack", Warn, "kernel.perf_event_max_stack unreadable", None),
        },
    );

    checks.push(match read("/proc/sys/kernel/kptr_restrict").as_deref() {
        Some("2") => check(
            "kptr_restrict",
            Missing,
            "kernel.kptr_restrict = 2: /proc/kallsyms shows no addresses, even to root",
            Some("sysctl kernel.kptr_restrict=1"),
        ),
        Some(value) => check(
            "kptr_restrict",
            Ok,
            format!("kernel.kptr_restrict = {value}"),
            None,
        ),
        None => check("kptr_restrict", Warn, "unreadable", None),
    });

    checks.push(if std::path::Path::new(crate::control::CONTROL_PATH).exists() {
        check(
            "swap-core",
            Ok,
            format!("{} (lsw_core loaded)", crate::control::CONTROL_PATH),
            None,
        )
    } else {
        check(
            "swap-core",
            Warn,
            format!(
                "no {}: the swap core is not loaded (watch works; swap and status need it)",
                crate::control::CONTROL_PATH
            ),
            Some("insmod lsw_core.ko, then the class and implementation modules"),
        )
    });

    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
    checks.push(check(
        "descriptors",
        Ok,
        format!(
            "RLIMIT_NOFILE {soft} (hard {hard}): a kprobe.multi watch needs a few; the tracefs fallback 2 per function + 64, raised as far as allowed"
        ),
        None,
    ));
    checks.push(check(
        "perf_event_paranoid",
        Ok,
        format!(
            "kernel.perf_event_paranoid = {}: does not apply to root",
            read("/proc/sys/kernel/perf_event_paranoid").unwrap_or_else(|| "unreadable".into())
        ),
        None,
    ));
    checks
}

/// Whether every required facility is there.
pub fn all_required_present(checks: &[Check]) -> bool {
    checks.iter().all(|check| check.verdict != Verdict::Missing)
}
