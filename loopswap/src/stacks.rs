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

/// What reading a task's kernel stack told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stack {
    /// The task has exited.
    Gone,
    /// Nothing could be read: the task was running on another CPU (the
    /// unwinder refuses a running task, so its frames are *unknown*, not
    /// absent). Read again later, as livepatch retries such tasks.
    Unknown,
    /// Its frames, innermost first.
    Frames(Vec<Frame>),
}

/// Reads again this many times at once before calling a stack unknown.
const UNKNOWN_RETRIES: usize = 3;

/// A task's kernel stack. A live task always has kernel frames unless it is
/// on a CPU at that instant, so an empty stack is retried, then `Unknown`.
pub fn read(pid: i32, tid: i32) -> Stack {
    for _ in 0..UNKNOWN_RETRIES {
        match read_once(pid, tid) {
            Stack::Unknown if is_dead(pid, tid) => return Stack::Gone,
            Stack::Unknown => std::thread::yield_now(),
            known => return known,
        }
    }
    Stack::Unknown
}

/// One read of a task's kernel stack: `Unknown` if it is empty (on a CPU,
/// or dead: [`read`] tells them apart).
pub fn read_once(pid: i32, tid: i32) -> Stack {
    let Some(text) = stack_text(pid, tid) else {
        return Stack::Gone;
    };
    let frames: Vec<Frame> = text.lines().filter_map(parse_frame).collect();
    if frames.is_empty() {
        Stack::Unknown
    } else {
        Stack::Frames(frames)
    }
}

/// `/proc`'s text of a task's kernel stack; `None` once the task is gone.
fn stack_text(pid: i32, tid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")).ok()
}

/// Zombie or dead: no kernel frames to find, ever.
fn is_dead(pid: i32, tid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) {
        Ok(stat) => state_in_stat(&stat).is_some_and(|state| matches!(state, "Z" | "X" | "x")),
        Err(_) => true,
    }
}

/// The state letter of a `stat` line; the name in parentheses may itself
/// contain spaces and parentheses, so it is skipped from the last `)`.
fn state_in_stat(stat: &str) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().next()
}

/// A task, as (process id, thread id).
pub type TaskId = (i32, i32);

/// Every task whose stack holds a frame of `module`, with those frames, and
/// the tasks whose stacks could not be read (see [`Stack::Unknown`]).
pub type ModuleTasks = (BTreeMap<TaskId, Vec<Frame>>, Vec<TaskId>);

/// Every task whose stack holds a frame of `module`, and the unknown ones.
pub fn scan_module(module: &str) -> Result<ModuleTasks, procfs::ProcError> {
    let mut found = BTreeMap::new();
    let mut unknown = Vec::new();
    for process in procfs::process::all_processes()? {
        let Ok(process) = process else { continue };
        let Ok(tasks) = process.tasks() else { continue };
        for task in tasks.flatten() {
            let frames = match read(task.pid, task.tid) {
                Stack::Gone => continue,
                Stack::Unknown => {
                    unknown.push((task.pid, task.tid));
                    continue;
                }
                Stack::Frames(frames) => frames,
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
    Ok((found, unknown))
}

/// A task's kernel stack as `/proc` prints it, one line per frame, if it
/// shows a frame of `module` (for reports). An empty stack (the task on a
/// CPU) is read again, as [`read`] does; one never read shows none.
pub fn text_if_inside(pid: i32, tid: i32, module: &str) -> Option<Vec<String>> {
    for _ in 0..UNKNOWN_RETRIES {
        let text = stack_text(pid, tid)?;
        let mut frames = text.lines().filter_map(parse_frame).peekable();
        if frames.peek().is_none() {
            std::thread::yield_now();
            continue;
        }
        return frames
            .any(|frame| frame.module.as_deref() == Some(module))
            .then(|| text.lines().map(str::to_owned).collect());
    }
    None
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

    #[test]
    fn the_state_is_read_past_any_task_name() {
        assert_eq!(state_in_stat("42 (fio) R 1 42 42 0"), Some("R"));
        assert_eq!(state_in_stat("43 (a) b (c)) Z 1 43"), Some("Z"));
        assert_eq!(state_in_stat("garbage"), None);
    }
}
