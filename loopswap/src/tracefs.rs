//! The small raw layer beside aya: kprobe events created through tracefs,
//! which (unlike aya 0.14's kprobe attach) can set a kretprobe's
//! `maxactive`, bound to a loaded program with `perf_event_open` and
//! `PERF_EVENT_IOC_SET_BPF`; and the per-event miss counts tracefs keeps.
//!
//! Events are named `lsw<pid>_<tag>` in the `loopswap` group, so events left
//! behind by a killed controller can be recognised and removed.

use std::{
    collections::HashMap,
    fs::{self, OpenOptions},
    io::Write as _,
    os::fd::{BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use perf_event_open_sys as perf;

use crate::Error;

/// Group of every event loopswap creates.
pub const GROUP: &str = "loopswap";

/// Highest `maxactive` the kernel accepts for a kretprobe event
/// (`KRETPROBE_MAXACTIVE_MAX` in kernel/trace/trace_kprobe.c).
pub const MAX_ACTIVE_LIMIT: u32 = 4096;

/// Where tracefs is mounted.
pub fn root() -> Result<PathBuf, Error> {
    let mut inaccessible = None;
    for path in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].map(PathBuf::from) {
        match fs::metadata(path.join("kprobe_events")) {
            Ok(_) => return Ok(path),
            // Mounted, but this process may not look (a user namespace, a
            // container): say so, not "not mounted".
            Err(cause) if cause.kind() == std::io::ErrorKind::PermissionDenied => {
                inaccessible.get_or_insert(Error::TracefsInaccessible { path, cause });
            }
            Err(_) => {}
        }
    }
    Err(inaccessible.unwrap_or(Error::NoTracefs))
}

/// Entry or return probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Entry,
    /// A kretprobe able to follow `max_active` concurrent calls.
    Return {
        max_active: u32,
    },
}

/// The line written to `kprobe_events` to create an event. Probes go by
/// address, not `module:symbol`: static functions of one module may share a
/// name, which the kernel refuses as ambiguous. The kernel moves the address
/// to the function's probe point (past an ENDBR) itself, and uses an int3
/// breakpoint where ftrace cannot hook (`notrace` code).
pub fn definition(event: &str, kind: ProbeKind, address: u64) -> String {
    match kind {
        ProbeKind::Entry => format!("p:{GROUP}/{event} 0x{address:x}"),
        ProbeKind::Return { max_active } => format!("r{max_active}:{GROUP}/{event} 0x{address:x}"),
    }
}

fn write_kprobe_events(tracefs: &Path, line: &str) -> std::io::Result<()> {
    // Append: opening kprobe_events without O_APPEND deletes every event.
    let mut file = OpenOptions::new()
        .append(true)
        .open(tracefs.join("kprobe_events"))?;
    file.write_all(line.as_bytes())
}

/// One kprobe event with a BPF program attached; removed on drop.
#[derive(Debug)]
pub struct AttachedProbe {
    tracefs: PathBuf,
    event: String,
    perf_fd: Option<OwnedFd>,
}

impl AttachedProbe {
    /// Creates `event` on the function of `module` named `symbol` at
    /// `address`, and runs `program` on every hit.
    pub fn attach(
        tracefs: &Path,
        event: &str,
        kind: ProbeKind,
        (module, symbol, address): (&str, &str, u64),
        program: BorrowedFd<'_>,
    ) -> Result<Self, Error> {
        let probe_error = |cause| Error::Probe {
            function: symbol.to_owned(),
            module: module.to_owned(),
            cause,
        };
        write_kprobe_events(tracefs, &definition(event, kind, address)).map_err(probe_error)?;
        let mut probe = Self {
            tracefs: tracefs.to_owned(),
            event: event.to_owned(),
            perf_fd: None,
        };
        let id_path = tracefs.join("events").join(GROUP).join(event).join("id");
        let id: u64 = fs::read_to_string(&id_path)
            .map_err(probe_error)?
            .trim()
            .parse()
            .map_err(|_| probe_error(std::io::Error::other(format!("bad id in {}", id_path.display()))))?;
        probe.perf_fd = Some(perf_attach(id, program).map_err(probe_error)?);
        Ok(probe)
    }

    /// The event's name, as `kprobe_profile` lists it.
    pub fn event(&self) -> &str {
        &self.event
    }
}

impl Drop for AttachedProbe {
    fn drop(&mut self) {
        // Closing the perf fd detaches the program; only then can the event go.
        self.perf_fd.take();
        let _ = write_kprobe_events(&self.tracefs, &format!("-:{GROUP}/{}", self.event));
    }
}

/// Opens the tracepoint-style perf event `id` and attaches `program`.
fn perf_attach(id: u64, program: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    crate::raw_bpf::perf_attach(
        perf::bindings::perf_event_attr {
            type_: perf::bindings::PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<perf::bindings::perf_event_attr>() as u32,
            config: id,
            ..Default::default()
        },
        program,
    )
}

/// Misses per event from `kprobe_profile`: `  name  hits  misses`. For a
/// kretprobe this includes returns lost to an exhausted `maxactive`.
pub fn misses(tracefs: &Path) -> Result<HashMap<String, u64>, Error> {
    let path = tracefs.join("kprobe_profile");
    let text = fs::read_to_string(&path).map_err(|cause| Error::Io { path, cause })?;
    Ok(parse_profile(&text))
}

pub fn parse_profile(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let _hits = fields.next()?;
            let misses = fields.next()?.parse().ok()?;
            Some((name.to_owned(), misses))
        })
        .collect()
}

/// The controller pid encoded in an event name of ours, if it is one.
pub fn owner_pid(event: &str) -> Option<i32> {
    event.strip_prefix("lsw")?.split('_').next()?.parse().ok()
}

/// Removes events a killed controller left behind (its pid is gone).
pub fn remove_stale_events(tracefs: &Path) -> Result<(), Error> {
    let path = tracefs.join("kprobe_events");
    let text = fs::read_to_string(&path).map_err(|cause| Error::Io { path, cause })?;
    for line in text.lines() {
        // "p:loopswap/lsw123_e4 lsw_fixture:fn" or "r4096:loopswap/..."
        let Some(event) = line
            .split_whitespace()
            .next()
            .and_then(|head| head.split_once(':'))
            .and_then(|(_, name)| name.strip_prefix(GROUP)?.strip_prefix('/'))
        else {
            continue;
        };
        if let Some(pid) = owner_pid(event)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = write_kprobe_events(tracefs, &format!("-:{GROUP}/{event}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_name_module_and_maxactive() {
        assert_eq!(
            definition("lsw1_e0", ProbeKind::Entry, 0xffffffffc0a00010),
            "p:loopswap/lsw1_e0 0xffffffffc0a00010"
        );
        assert_eq!(
            definition(
                "lsw1_r0",
                ProbeKind::Return { max_active: 1024 },
                0xffffffffc0a00010
            ),
            "r1024:loopswap/lsw1_r0 0xffffffffc0a00010"
        );
    }

    #[test]
    fn profile_lines_give_misses() {
        let profile = "  lsw7_e0                                  12               0\n  lsw7_r0                                  12               3\n";
        let misses = parse_profile(profile);
        assert_eq!(misses["lsw7_r0"], 3);
        assert_eq!(misses["lsw7_e0"], 0);
    }

    #[test]
    fn owner_pid_is_read_from_event_names() {
        assert_eq!(owner_pid("lsw123_r4"), Some(123));
        assert_eq!(owner_pid("other_r4"), None);
    }
}
