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

/// Fails unless the effective user is root.
pub fn check_root() -> Result<(), Error> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}
