//! Kernel stacks of tasks, from `/proc/PID/task/TID/stack`: the independent
//! view of who is inside a module, used to seed the counters at attach time
//! (probes never see threads that entered before them).

use std::{collections::BTreeMap, fs};

/// One frame: `[<0>] hold_fn+0x89/0xd0 [lsw_fixture]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub module: Option<String>,
}

/// The kernel prints at most this many frames per task; a stack this deep
/// may hide its outer frames.
pub const MAX_FRAMES: usize = 64;

pub fn parse_frame(line: &str) -> Option<Frame> {
    let rest = line.trim_start().strip_prefix("[<")?;
    let (_, rest) = rest.split_once(">] ")?;
    let mut fields = rest.split_whitespace();
    let symbol = fields.next()?;
    let function = symbol.split_once('+').map_or(symbol, |(name, _)| name).to_owned();
    let module = fields
        .next()
        .and_then(|module| Some(module.strip_prefix('[')?.strip_suffix(']')?.to_owned()));
    Some(Frame { function, module })
}

/// A task's kernel stack, innermost frame first; `None` if the task is gone.
pub fn read(pid: i32, tid: i32) -> Option<Vec<Frame>> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")).ok()?;
    Some(text.lines().filter_map(parse_frame).collect())
}

/// A task, as (process id, thread id).
pub type TaskId = (i32, i32);

/// Every task whose stack holds a frame of `module`, with those frames.
pub fn tasks_in_module(module: &str) -> Result<BTreeMap<TaskId, Vec<Frame>>, procfs::ProcError> {
    let mut found = BTreeMap::new();
    for process in procfs::process::all_processes()? {
        let Ok(process) = process else { continue };
        let Ok(tasks) = process.tasks() else { continue };
        for task in tasks.flatten() {
            let Some(frames) = read(task.pid, task.tid) else {
                continue;
            };
            let frames: Vec<Frame> = frames
                .into_iter()
                .filter(|frame| frame.module.as_deref() == Some(module))
                .collect();
            if !frames.is_empty() {
                found.insert((task.pid, task.tid), frames);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_with_and_without_module() {
        assert_eq!(
            parse_frame("[<0>] hold_fn+0x89/0xd0 [lsw_fixture]"),
            Some(Frame {
                function: "hold_fn".into(),
                module: Some("lsw_fixture".into())
            })
        );
        assert_eq!(
            parse_frame("[<0>] kthread+0xd2/0x100"),
            Some(Frame {
                function: "kthread".into(),
                module: None
            })
        );
        assert_eq!(parse_frame("garbage"), None);
    }
}
