//! The calling thread at real-time priority while a swap's gate is closed.
//!
//! Every call to the instance waits at the gate until the controller opens
//! it, and the controller's own steps there take well under a millisecond
//! each. Under load, though, an ordinary (`SCHED_OTHER`) controller is
//! preempted by the very workload it holds up: the blocked callers' own
//! siblings, kernel workers, other processes. On the 2-vCPU test VM under
//! fio single steps (closing the gate, the commit) were seen to take 8–14 ms
//! instead of 0.4 ms. At `SCHED_FIFO` priority 1 no ordinary task preempts
//! the controller's own steps; interrupts still do, and so does any
//! real-time kernel thread above priority 1 (threaded interrupt handlers,
//! the watchdog and migration threads).
//!
//! No wait in the section polls: the drain sleeps in the kernel, and the
//! wait for the counters sleeps until a frame that counts for the instance
//! leaves or 20 ms pass. The core's deadline work runs on an unbound
//! workqueue, so a controller stuck at this priority on one CPU cannot
//! hold it off.

use std::{io, marker::PhantomData};

/// The lowest real-time priority: above every ordinary task, below every
/// real-time kernel thread that runs higher.
const PRIORITY: libc::c_int = 1;

/// `SCHED_DEADLINE`, which `sched_setscheduler` cannot set back (it takes
/// `sched_setattr`): a thread under it is left as it is.
const SCHED_DEADLINE: libc::c_int = 6;

/// The kernel's `struct sched_param`. musl's `sched_*` wrappers of these
/// calls return ENOSYS (POSIX means the process, Linux the thread), and
/// its `sched_param` is larger, so the system calls are made directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SchedParam {
    priority: libc::c_int,
}

/// The calling thread's policy (with `SCHED_RESET_ON_FORK` if set) and
/// parameters.
fn current() -> io::Result<(libc::c_int, SchedParam)> {
    let mut param = SchedParam::default();
    // SAFETY: queries of the calling thread (pid 0); the parameter is the
    // kernel's layout and outlives the call.
    let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
    if policy < 0 || unsafe { libc::syscall(libc::SYS_sched_getparam, 0, &raw mut param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((policy as libc::c_int, param))
}

/// Sets the calling thread's policy and parameters.
fn set(policy: libc::c_int, param: SchedParam) -> io::Result<()> {
    // SAFETY: the calling thread (pid 0); the parameter is the kernel's
    // layout and outlives the call.
    if unsafe { libc::syscall(libc::SYS_sched_setscheduler, 0, policy, &raw const param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// While it lives, the calling thread runs `SCHED_FIFO` at [`PRIORITY`]
/// (children it forks do not inherit it); left (or dropped), its policy and
/// priority are what they were. Not `Send`: the policy is the thread's.
#[derive(Debug)]
pub struct RealtimeSection {
    /// The policy and parameters to restore; `None` when nothing was
    /// changed (already real-time, or the control).
    previous: Option<(libc::c_int, SchedParam)>,
    /// The thread runs at real-time priority (raised here, or already).
    realtime: bool,
    _thread_bound: PhantomData<*const ()>,
}

impl RealtimeSection {
    /// Raises the calling thread to real-time priority. Not allowed (no
    /// `CAP_SYS_NICE` nor `RLIMIT_RTPRIO`, or a cgroup without real-time
    /// runtime), it says why; the caller goes on at the thread's own
    /// priority, as correct, only more exposed to preemption. A thread
    /// already real-time (or under `SCHED_DEADLINE`) is left as it is.
    pub fn enter() -> io::Result<Self> {
        let (policy, param) = current()?;
        let base = policy & !libc::SCHED_RESET_ON_FORK;
        if [libc::SCHED_FIFO, libc::SCHED_RR, SCHED_DEADLINE].contains(&base) {
            return Ok(Self {
                previous: None,
                realtime: true,
                _thread_bound: PhantomData,
            });
        }
        set(
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            SchedParam { priority: PRIORITY },
        )?;
        Ok(Self {
            previous: Some((policy, param)),
            realtime: true,
            _thread_bound: PhantomData,
        })
    }

    /// A section that changes nothing (the control in benchmarks).
    pub fn ordinary() -> Self {
        Self {
            previous: None,
            realtime: false,
            _thread_bound: PhantomData,
        }
    }

    /// Whether the thread runs at real-time priority in this section.
    pub fn is_realtime(&self) -> bool {
        self.realtime
    }

    /// Ends the section: the thread's policy and priority as before. The
    /// kernel lets a thread without `CAP_SYS_NICE` lower its priority but
    /// not clear `SCHED_RESET_ON_FORK`, so that flag is kept if it must
    /// be; if even that is refused the thread is made ordinary, and the
    /// error says what it could not restore.
    pub fn leave(mut self) -> io::Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> io::Result<()> {
        let Some((policy, param)) = self.previous.take() else {
            return Ok(());
        };
        let refused = match set(policy, param) {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        if set(policy | libc::SCHED_RESET_ON_FORK, param).is_ok() {
            return Ok(());
        }
        let ordinary = set(
            libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK,
            SchedParam::default(),
        );
        Err(io::Error::new(
            refused.kind(),
            format!(
                "policy {policy} not restored ({refused}); {}",
                match ordinary {
                    Ok(()) => "the thread is ordinary (SCHED_OTHER) instead".to_owned(),
                    Err(err) => format!("it stays real-time ({err})"),
                }
            ),
        ))
    }
}

impl Drop for RealtimeSection {
    fn drop(&mut self) {
        // On paths that did not `leave` (an early return, a panic).
        let _ = self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_before_the_section_is_the_policy_after_it() {
        let before = current().expect("the thread's policy").0;
        match RealtimeSection::enter() {
            Ok(section) => {
                if section.is_realtime() {
                    let inside = current().expect("the thread's policy").0 & !libc::SCHED_RESET_ON_FORK;
                    // FIFO, or the real-time policy the thread had.
                    assert!(
                        [libc::SCHED_FIFO, libc::SCHED_RR, SCHED_DEADLINE].contains(&inside),
                        "policy {inside}"
                    );
                }
                section.leave().expect("the policy restored");
            }
            // Unprivileged test runs are not allowed real-time priority.
            Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}"),
        }
        assert_eq!(current().expect("the thread's policy").0, before);
    }
}
