//! Runs a command in qemu (TCG) on Debian's 6.12 kernel and reads the
//! result from the serial ports: ttyS0 carries the kernel log (scanned for
//! panics, oopses, BUGs and WARNs), ttyS1 the command's output and its exit
//! status.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{initramfs::Archive, paths};

/// What to run.
#[derive(Clone, Debug)]
pub struct VmRequest {
    /// Host files that appear in the guest as /add/<file name>.
    pub adds: Vec<PathBuf>,
    /// Run by the guest's /bin/sh, in /add.
    pub script: String,
    /// Killed past this.
    pub timeout: Duration,
    /// Print the command's output as it arrives.
    pub echo: bool,
}

impl VmRequest {
    pub fn new(script: impl Into<String>) -> Self {
        Self {
            adds: Vec::new(),
            script: script.into(),
            timeout: Duration::from_secs(600),
            echo: false,
        }
    }
}

/// What happened.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    /// The command's output (ttyS1), without the exit marker.
    pub output: String,
    /// The command's exit status; `None` if the guest never reported one.
    pub exit_code: Option<i32>,
    /// The kernel log (ttyS0).
    pub kernel_log: String,
    /// Kernel log lines that mean something went wrong in the kernel.
    pub kernel_problems: Vec<String>,
    pub timed_out: bool,
}

/// Kernel log markers of a kernel problem.
const PROBLEM_MARKERS: &[&str] = &[
    "Kernel panic",
    "Oops",
    "BUG:",
    "WARNING:",
    "general protection fault",
    "UBSAN:",
    "Call Trace:",
    "blocked for more than",
];

const EXIT_MARKER: &str = "LSW-EXIT ";

/// The lines of a guest's output between `== NAME` and the next `== `
/// marker (or the end): how scripts run in the VM label what they print.
pub fn section<'a>(output: &'a str, name: &str) -> Vec<&'a str> {
    let start = format!("== {name}");
    output
        .lines()
        .skip_while(|line| *line != start)
        .skip(1)
        .take_while(|line| !line.starts_with("== "))
        .collect()
}

/// Loads ext4 (a module in Debian's kernel), the swap core, the lswloop
/// class and its v1 implementation, and defines `add NAME MB`, which
/// creates a device backed by /tmp/NAME.img.
pub const LSWLOOP_SETUP: &str = r#"set -e
for m in /lib/modules/ext4/*.ko; do insmod $m; done
insmod /modules/lsw_core.ko
insmod /modules/lswloop.ko
insmod /modules/lswloop_v1.ko
add() { truncate -s ${2}M /tmp/$1.img; echo /tmp/$1.img > /sys/kernel/lswloop/add; }
"#;

impl VmOutcome {
    /// The last lines of the kernel log and output, for error reports.
    pub fn tail(&self) -> String {
        let last = |text: &str, n: usize| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        // From just before the first problem, if there is one: the start of
        // an oops says what went wrong, its end does not.
        let lines: Vec<&str> = self.kernel_log.lines().collect();
        let kernel = match lines
            .iter()
            .position(|line| PROBLEM_MARKERS.iter().any(|marker| line.contains(marker)))
        {
            Some(first) => lines[first.saturating_sub(5)..lines.len().min(first + 80)].join("\n"),
            None => last(&self.kernel_log, 40),
        };
        format!(
            "--- guest kernel log ---\n{kernel}\n--- guest output (last lines) ---\n{}",
            last(&self.output, 20)
        )
    }

    /// Ok only if the guest reported status 0 and the kernel stayed clean.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.timed_out {
            bail!("the guest timed out\n{}", self.tail());
        }
        if !self.kernel_problems.is_empty() {
            bail!(
                "the guest kernel reported: {}\n{}",
                self.kernel_problems.join(" | "),
                self.tail()
            );
        }
        match self.exit_code {
            Some(0) => Ok(()),
            Some(code) => bail!("the guest command exited with {code}\n{}", self.tail()),
            None => bail!(
                "the guest stopped without reporting an exit status\n{}",
                self.tail()
            ),
        }
    }
}

fn require(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo xtask build` (or `cargo xtask test`) first",
            path.display()
        );
    }
    Ok(())
}

/// The project's modules, as built by `cargo xtask build`.
pub fn built_modules() -> anyhow::Result<Vec<PathBuf>> {
    let dir = paths::module_build();
    require(&dir)?;
    let mut modules: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "ko"))
        .collect();
    modules.sort();
    Ok(modules)
}

static RUN_NUMBER: AtomicU32 = AtomicU32::new(0);

/// Boots the VM, runs the request, returns what happened.
pub fn run(request: &VmRequest) -> anyhow::Result<VmOutcome> {
    for path in [
        paths::vmlinuz(),
        paths::base_initramfs(),
        paths::loopswap_binary(),
        paths::pty_run_binary(),
    ] {
        require(&path)?;
    }
    let runs = paths::target().join("guest").join("runs");
    fs::create_dir_all(&runs)?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        RUN_NUMBER.fetch_add(1, Ordering::Relaxed)
    );
    let initrd = runs.join(format!("{tag}.cpio"));
    let console = runs.join(format!("{tag}.console"));

    let mut overlay = Archive::default();
    overlay.bytes("/cmd", request.script.as_bytes(), 0o644);
    overlay.file("/usr/bin/loopswap", &paths::loopswap_binary())?;
    overlay.file("/usr/bin/pty-run", &paths::pty_run_binary())?;
    for module in built_modules()? {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .context("module name")?;
        overlay.file(&format!("/modules/{name}"), &module)?;
    }
    for add in &request.adds {
        let name = add
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("--add {}: not a file name", add.display()))?;
        if !add.is_file() {
            bail!("--add {}: no such file", add.display());
        }
        overlay.file(&format!("/add/{name}"), add)?;
    }
    {
        let mut out = std::io::BufWriter::new(fs::File::create(&initrd)?);
        out.write_all(&fs::read(paths::base_initramfs())?)?;
        overlay.write(&mut out)?;
        out.flush()?;
    }

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-m",
        "1024",
        "-smp",
        "2",
        // One host thread runs both vCPUs: with multi-threaded TCG, live
        // kernel text patching (ftrace/kprobe arming via text_poke_bp) races
        // with the other vCPU's translated code and the guest crashes
        // (stray int3, or a jump to 0) even with a plain tracefs kprobe.
        "-accel",
        "tcg,thread=single",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(paths::vmlinuz())
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 loglevel=5 panic=-1 oops=panic"])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .args(["-chardev", "stdio,id=out,signal=off", "-serial", "chardev:out"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let echo = request.echo;
    let reader = std::thread::spawn(move || {
        let mut collected = String::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_owned();
            if echo && !line.starts_with(EXIT_MARKER) {
                println!("{line}");
            }
            collected.push_str(&line);
            collected.push('\n');
        }
        collected
    });
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > request.timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let raw_output = reader.join().unwrap_or_default();
    let kernel_log = String::from_utf8_lossy(&fs::read(&console).unwrap_or_default()).replace('\r', "");
    let _ = fs::remove_file(&initrd);
    let _ = fs::remove_file(&console);

    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    if !status.success() && !timed_out && raw_output.is_empty() {
        bail!("qemu failed ({status}): {stderr}");
    }

    let exit_code = raw_output
        .lines()
        .filter_map(|line| line.strip_prefix(EXIT_MARKER))
        .filter_map(|code| code.trim().parse().ok())
        .next_back();
    let output: String = raw_output
        .lines()
        .filter(|line| !line.starts_with(EXIT_MARKER))
        .flat_map(|line| [line, "\n"])
        .collect();
    let kernel_problems = kernel_log
        .lines()
        .filter(|line| PROBLEM_MARKERS.iter().any(|marker| line.contains(marker)))
        .map(str::to_owned)
        .collect();
    Ok(VmOutcome {
        output,
        exit_code,
        kernel_log,
        kernel_problems,
        timed_out,
    })
}
