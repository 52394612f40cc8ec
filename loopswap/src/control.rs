//! The swap core's control interface, `/dev/lsw` (kernel/lsw_core.c): one
//! text command per write, the reply read back. A swap belongs to the open
//! handle that began it; dropping the handle aborts it in the kernel.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
};

use serde::Serialize;

use crate::Error;

pub const CONTROL_PATH: &str = "/dev/lsw";

/// A registered implementation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Implementation {
    pub name: String,
    pub class: String,
    pub version: u32,
    pub state_version: u32,
    pub module: String,
}

/// An instance and what serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub id: u32,
    pub name: String,
    pub class: String,
    pub implementation: String,
    pub gate: String,
    /// Calls that have waited at the gate, ever.
    pub held: u64,
    /// `phase:target` of a swap in progress.
    pub swap: Option<String>,
}

/// Everything the core knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CoreState {
    pub classes: Vec<String>,
    pub implementations: Vec<Implementation>,
    pub instances: Vec<Instance>,
}

impl CoreState {
    pub fn implementation(&self, name: &str) -> Option<&Implementation> {
        self.implementations
            .iter()
            .find(|implementation| implementation.name == name)
    }

    /// An instance by name (`lswloop0`) or id (`0`).
    pub fn instance(&self, name_or_id: &str) -> Option<&Instance> {
        self.instances
            .iter()
            .find(|instance| instance.name == name_or_id || instance.id.to_string() == name_or_id)
    }
}

fn fields(words: &[&str]) -> std::collections::HashMap<String, String> {
    words
        .iter()
        .filter_map(|word| word.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// Parses the reply to `list`.
pub fn parse_list(text: &str) -> CoreState {
    let mut state = CoreState::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["class", name] => state.classes.push((*name).to_owned()),
            ["impl", name, rest @ ..] => {
                let f = fields(rest);
                state.implementations.push(Implementation {
                    name: (*name).to_owned(),
                    class: f.get("class").cloned().unwrap_or_default(),
                    version: f.get("version").and_then(|v| v.parse().ok()).unwrap_or(0),
                    state_version: f.get("state_version").and_then(|v| v.parse().ok()).unwrap_or(0),
                    module: f.get("module").cloned().unwrap_or_default(),
                });
            }
            ["instance", id, rest @ ..] => {
                let Ok(id) = id.parse() else { continue };
                let f = fields(rest);
                state.instances.push(Instance {
                    id,
                    name: f.get("name").cloned().unwrap_or_default(),
                    class: f.get("class").cloned().unwrap_or_default(),
                    implementation: f.get("impl").cloned().unwrap_or_default(),
                    gate: f.get("gate").cloned().unwrap_or_default(),
                    held: f.get("held").and_then(|v| v.parse().ok()).unwrap_or(0),
                    swap: f.get("swap").filter(|swap| *swap != "none").cloned(),
                });
            }
            _ => {}
        }
    }
    state
}

/// An open handle on `/dev/lsw`.
pub struct Control {
    file: File,
}

impl Control {
    pub fn open() -> Result<Self, Error> {
        match OpenOptions::new().read(true).write(true).open(CONTROL_PATH) {
            Ok(file) => Ok(Self { file }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(Error::NoCore),
            Err(cause) => Err(Error::Io {
                path: CONTROL_PATH.into(),
                cause,
            }),
        }
    }

    /// Moves the handle to a descriptor above every other one the process
    /// has open. When the controller dies, the kernel closes descriptors in
    /// ascending order and runs their releases last-closed-first, so the
    /// core then sees the handle close (and reopens the gate) before the
    /// slow teardown of hundreds of probe descriptors, not after it.
    pub fn move_above_other_descriptors(&mut self) -> Result<(), Error> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let highest = std::fs::read_dir("/proc/self/fd")
            .map_err(|cause| Error::Io {
                path: "/proc/self/fd".into(),
                cause,
            })?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .max()
            .unwrap_or(0);
        if highest == self.file.as_raw_fd() {
            return Ok(());
        }
        let moved = nix::fcntl::fcntl(
            self.file.as_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(highest + 1),
        )
        .map_err(|errno| Error::Io {
            path: CONTROL_PATH.into(),
            cause: std::io::Error::from_raw_os_error(errno as i32),
        })?;
        // SAFETY: fcntl returned a new descriptor that nothing else owns.
        self.file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(moved) };
        Ok(())
    }

    /// The whole reply: the core hands it out in as many reads as it takes.
    fn read_reply(&mut self) -> String {
        let mut reply = Vec::new();
        let _ = self.file.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    /// Runs one command; a refusal carries the core's reason. One write:
    /// the core takes a command per write, and a write interrupted by a
    /// signal (EINTR from a `drain`) must fail, not be sent again.
    pub fn command(&mut self, line: &str) -> Result<String, Error> {
        match self.file.write(line.as_bytes()) {
            Ok(written) if written == line.len() => Ok(self.read_reply()),
            Ok(written) => Err(Error::Core {
                command: line.to_owned(),
                reason: format!("short write ({written} of {} bytes)", line.len()),
                errno: None,
            }),
            Err(cause) => {
                let reply = self.read_reply();
                Err(Error::Core {
                    command: line.to_owned(),
                    reason: if reply.is_empty() {
                        cause.to_string()
                    } else {
                        reply
                    },
                    errno: cause.raw_os_error(),
                })
            }
        }
    }

    /// Everything the core knows; the reply ends with `end`, so a cut
    /// listing is an error, never a shorter list.
    pub fn list(&mut self) -> Result<CoreState, Error> {
        let reply = self.command("list")?;
        if reply.lines().last() != Some("end") {
            return Err(Error::Core {
                command: "list".into(),
                reason: "the reply is incomplete (no `end` line)".into(),
                errno: None,
            });
        }
        Ok(parse_list(&reply))
    }
}

/// A number from a `key=value` word of a reply.
pub fn reply_value(reply: &str, key: &str) -> Option<u64> {
    reply
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "class lswloop
impl lswloop_v1 class=lswloop version=1 state_version=1 module=lswloop_v1
impl lswloop_v2 class=lswloop version=2 state_version=2 module=lswloop_v2
instance 0 name=lswloop0 class=lswloop impl=lswloop_v1 gate=open held=0 swap=none
instance 1 name=lswloop1 class=lswloop impl=lswloop_v2 gate=closed held=7 swap=gated:lswloop_v1
";

    #[test]
    fn list_replies_parse() {
        let state = parse_list(LIST);
        assert_eq!(state.classes, ["lswloop"]);
        assert_eq!(state.implementations.len(), 2);
        assert_eq!(state.implementation("lswloop_v2").unwrap().state_version, 2);
        let second = state.instance("lswloop1").unwrap();
        assert_eq!(second.id, 1);
        assert_eq!(second.held, 7);
        assert_eq!(second.swap.as_deref(), Some("gated:lswloop_v1"));
        assert_eq!(state.instance("0").unwrap().swap, None);
        assert!(state.instance("lswloop9").is_none());
    }

    #[test]
    fn reply_values() {
        let reply = "ok committed blackout_us=1234 held=5";
        assert_eq!(reply_value(reply, "blackout_us"), Some(1234));
        assert_eq!(reply_value(reply, "held"), Some(5));
        assert_eq!(reply_value(reply, "missing"), None);
    }
}
