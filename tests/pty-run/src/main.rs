//! `pty-run OUTPUT KEYS COMMAND [ARG...]`: runs COMMAND on a new
//! pseudo-terminal of 120x40, as the session leader with the terminal as its
//! controlling terminal; writes everything it draws to OUTPUT; follows
//! KEYS, a comma-separated list of steps: `DELAY:KEY` types KEY after
//! DELAY, `until=TEXT` waits (up to 60 s) until COMMAND has drawn TEXT
//! (e.g. `until=detaches,2s:s,1s:p,2s:q`); then waits up to 20 s for COMMAND
//! to exit and exits with its status (124 if it had to be killed).
//!
//! The guest's busybox has no `script`; this is the least that gives a
//! program a real terminal, so that its terminal code runs as a user's would.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::pty::{Winsize, openpty};

/// One step of the key script.
enum Step {
    Type(Duration, u8),
    Until(String),
}

fn parse_keys(keys: &str) -> anyhow::Result<Vec<Step>> {
    keys.split(',')
        .filter(|step| !step.is_empty())
        .map(|step| {
            if let Some(text) = step.strip_prefix("until=") {
                if text.is_empty() {
                    bail!("until= needs the text to wait for");
                }
                return Ok(Step::Until(text.to_owned()));
            }
            let (delay, key) = step
                .rsplit_once(':')
                .with_context(|| format!("key step {step:?}: write DELAY:KEY, e.g. 2s:q"))?;
            let key = match key {
                "esc" => 0x1b,
                "ctrl-c" => 0x03,
                key if key.len() == 1 => key.as_bytes()[0],
                key => bail!("key {key:?}: one character, esc or ctrl-c"),
            };
            Ok(Step::Type(humantime::parse_duration(delay)?, key))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [output, keys, command, rest @ ..] = args.as_slice() else {
        bail!("usage: pty-run OUTPUT KEYS COMMAND [ARG...]");
    };
    let keys = parse_keys(keys)?;
    let size = Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).context("openpty")?;
    // openpty does not set close-on-exec: the child must not inherit the
    // master, nor keep a second slave (reading would then never end).
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .context("setting close-on-exec")?;
    }
    // The Command holds the terminal's other side until dropped: built and
    // spawned in this block, so that reading it ends once the child is gone.
    let mut child = {
        let mut child = Command::new(command);
        child
            .args(rest)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            child.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        child.spawn().with_context(|| format!("starting {command}"))?
    };
    let mut master = File::from(pty.master);
    let mut reader = master.try_clone()?;
    let mut recording = File::create(output).with_context(|| format!("creating {output}"))?;
    let drawn = Arc::new(Mutex::new(Vec::new()));
    let copier = {
        let drawn = Arc::clone(&drawn);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // EIO once the last holder of the terminal's other side is gone.
            while let Ok(read) = reader.read(&mut buffer) {
                if read == 0 || recording.write_all(&buffer[..read]).is_err() {
                    break;
                }
                drawn
                    .lock()
                    .expect("no panics")
                    .extend_from_slice(&buffer[..read]);
            }
        })
    };
    for step in keys {
        match step {
            Step::Type(delay, key) => {
                std::thread::sleep(delay);
                // A program that already quit no longer reads: that is its
                // test's business, not an error here.
                let _ = master.write_all(&[key]);
            }
            Step::Until(text) => {
                let until = Instant::now() + Duration::from_secs(60);
                loop {
                    let seen = {
                        let drawn = drawn.lock().expect("no panics");
                        drawn.windows(text.len()).any(|window| window == text.as_bytes())
                    };
                    if seen {
                        break;
                    }
                    if Instant::now() > until || child.try_wait()?.is_some() {
                        eprintln!("pty-run: {command} never drew {text:?}");
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status.code().unwrap_or(128);
        }
        if Instant::now() > until {
            child.kill()?;
            child.wait()?;
            break 124;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(master);
    let _ = copier.join();
    println!("pty-run: {command} exited with {status}");
    std::process::exit(status);
}
