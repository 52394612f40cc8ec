//! Checks that a name is a live, loadable module before anything is changed.

use std::path::Path;

use crate::Error;

/// Fails with a one-line reason unless `module` is loaded and live.
pub fn check_live(module: &str) -> Result<(), Error> {
    let modules = procfs::modules()?;
    match modules.get(module) {
        Some(loaded) if loaded.state == "Live" => Ok(()),
        Some(loaded) => Err(Error::ModuleNotLive {
            module: module.to_owned(),
            state: loaded.state.to_lowercase(),
        }),
        None if Path::new("/sys/module").join(module).exists() => Err(Error::BuiltIn {
            module: module.to_owned(),
        }),
        None => Err(Error::ModuleNotLoaded {
            module: module.to_owned(),
        }),
    }
}

/// Whether `module` is built against the swap core (`lsw_core` lists it as
/// a user): its exported functions are instance entry points then.
pub fn uses_swap_core(module: &str) -> bool {
    procfs::modules().is_ok_and(|modules| {
        modules
            .get("lsw_core")
            .is_some_and(|core| core.used_by.iter().any(|user| user == module))
    })
}

/// The module's memory as /proc/modules gives it (base, size), which
/// covers every text section of a live module.
pub fn memory(module: &str) -> Option<(u64, u64)> {
    let modules = std::fs::read_to_string("/proc/modules").ok()?;
    modules.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&module) {
            return None;
        }
        let size = fields.get(1)?.parse().ok()?;
        let base = u64::from_str_radix(fields.get(5)?.trim_start_matches("0x"), 16).ok()?;
        Some((base, size))
    })
}

/// Fails unless the effective user is root.
pub fn check_root() -> Result<(), Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    // Root of a user namespace (a container, `unshare -U -r`) cannot read
    // kernel addresses, create kprobes or load kprobe programs.
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) if !is_initial_uid_map(&map) => Err(Error::UserNamespace(map.trim().to_owned())),
        _ => Ok(()),
    }
}

/// The running kernel's (major, minor); (0, 0) if unreadable.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .filter_map(|part| part.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The initial user namespace maps every uid to itself.
fn is_initial_uid_map(map: &str) -> bool {
    map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_identity_uid_map_is_the_initial_namespace() {
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map("         0       1000          1\n"));
    }
}
