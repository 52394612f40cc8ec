//! Loading and unloading modules (finit_module/delete_module), and the name
//! a `.ko` file will load under.

use std::{ffi::CString, fs::File, path::Path};

use nix::kmod::{DeleteModuleFlags, ModuleInitFlags, delete_module, finit_module};
use object::{Object as _, ObjectSection as _};

use crate::Error;

/// The module name recorded in a `.ko`'s `.modinfo` section (`name=...`).
pub fn module_name_of(path: &Path) -> Result<String, Error> {
    let bad = |why: &str| Error::BadModuleFile {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let data = std::fs::read(path).map_err(|cause| Error::Io {
        path: path.to_owned(),
        cause,
    })?;
    let file = object::File::parse(&*data).map_err(|_| bad("not an ELF file"))?;
    let modinfo = file
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("no .modinfo section"))?;
    let bytes = modinfo.data().map_err(|_| bad("unreadable .modinfo"))?;
    name_from_modinfo(bytes).ok_or_else(|| bad("no name= in .modinfo"))
}

pub fn name_from_modinfo(bytes: &[u8]) -> Option<String> {
    bytes
        .split(|byte| *byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix("name="))
        .map(str::to_owned)
}

pub fn is_loaded(name: &str) -> Result<bool, Error> {
    Ok(procfs::modules()?.contains_key(name))
}

pub fn load(path: &Path) -> Result<(), Error> {
    let file = File::open(path).map_err(|cause| Error::Io {
        path: path.to_owned(),
        cause,
    })?;
    finit_module(&file, c"", ModuleInitFlags::empty()).map_err(|errno| Error::Io {
        path: path.to_owned(),
        cause: std::io::Error::from_raw_os_error(errno as i32),
    })
}

pub fn unload(name: &str) -> Result<(), Error> {
    let cname = CString::new(name).expect("module names have no NUL");
    delete_module(&cname, DeleteModuleFlags::O_NONBLOCK).map_err(|errno| Error::Io {
        path: format!("delete_module({name})").into(),
        cause: std::io::Error::from_raw_os_error(errno as i32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_names() {
        assert_eq!(
            name_from_modinfo(b"license=GPL\0name=lswloop_v2\0vermagic=6.12\0").as_deref(),
            Some("lswloop_v2")
        );
        assert_eq!(name_from_modinfo(b"license=GPL\0"), None);
    }
}
