//! The QEMU runner: find (or install) QEMU, boot, stream and keep the serial
//! console, enforce a timeout, classify the exit.
//!
//! Machine: `microvm`. It boots the hypervisor's ELF through PVH fastest,
//! and it accepts `isa-debug-exit` (it has an ISA bus for its serial port),
//! so the `q35` fallback the design allowed for is not needed. Should a QEMU
//! refuse it, change [`MACHINE`] to `q35` (the command line is otherwise the
//! same).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tahoma_tests::Exit;
use xshell::{cmd, Shell};

/// The QEMU binary.
const QEMU: &str = "qemu-system-x86_64";
/// The machine type (see the module docs).
const MACHINE: &str = "microvm";
/// The CPU model under TCG: QEMU's baseline plus SMEP/SMAP, which TCG
/// implements and the hypervisor requires (it refuses to start without
/// them). No XSAVE, no UMIP. Keep it fixed: benchmark figures depend on it.
pub const TCG_CPU: &str = "qemu64,+smep,+smap";
/// The second model the CPU-state clauses run under (spec `docs/abi/cpu.md`):
/// every feature TCG implements (XSAVE, AVX, UMIP, ...) with an Intel
/// vendor string, so that `sysenter` is a valid instruction in 64-bit mode
/// (QEMU, like AMD CPUs, raises #UD for it on AMD-vendor models).
pub const TCG_CPU_MAX: &str = "max,vendor=GenuineIntel";
/// How often the runner checks whether QEMU has exited.
const POLL: Duration = Duration::from_millis(10);

/// How QEMU executes the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// Emulation: works everywhere, including nested virtual machines.
    Tcg,
    /// Hardware virtualization: only where the CPU advertises vmx or svm.
    Kvm,
}

impl Accel {
    /// KVM where `/proc/cpuinfo` advertises `vmx` or `svm`, else TCG. (A
    /// `/dev/kvm` without them is a nested software hypervisor that cannot
    /// run a paravirtualized one: ring-0 code crawls and `syscall` breaks.)
    pub fn detect() -> Accel {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if cpu_has_virtualization(&cpuinfo) && Path::new("/dev/kvm").exists() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uid_line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            // Fields: real, effective, saved, filesystem.
            uid_line.split_whitespace().nth(2).map(|e| e == "0")
        })
        .unwrap_or(false)
}

/// Finds `qemu-system-x86_64`, installing it with apt-get when we are root on
/// a machine that has apt-get.
pub fn find_qemu(sh: &Shell) -> Result<PathBuf, String> {
    if let Some(q) = on_path(QEMU) {
        return Ok(q);
    }
    let install = "apt-get update && apt-get install -y qemu-system-x86";
    if !(is_root() && on_path("apt-get").is_some()) {
        return Err(format!(
            "{QEMU} not found on PATH. Install it, e.g. `sudo sh -c '{install}'`, then retry"
        ));
    }
    eprintln!("xtask: {QEMU} not found; installing it: {install}");
    cmd!(sh, "apt-get update")
        .run()
        .and_then(|_| {
            cmd!(sh, "apt-get install -y qemu-system-x86")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .run()
        })
        .map_err(|e| {
            format!("installing QEMU failed ({e}); run `{install}` yourself, then retry")
        })?;
    on_path(QEMU)
        .ok_or_else(|| format!("installed qemu-system-x86 but {QEMU} is still not on PATH"))
}

/// One QEMU run.
#[derive(Clone, Debug)]
pub struct Run {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// RAM in MiB.
    pub memory_mib: u64,
    /// The hypervisor ELF (`-kernel`).
    pub kernel: PathBuf,
    /// The boot module (`-initrd`), if any.
    pub initrd: Option<PathBuf>,
    /// The hypervisor command line (`-append`).
    pub append: String,
    /// Wait for gdb on this port of 127.0.0.1 (`-gdb tcp:... -S`).
    pub gdb: Option<u16>,
    /// Extra QEMU arguments (network devices, port forwards).
    pub extra: Vec<String>,
    /// The `-cpu` model under TCG (`None`: [`TCG_CPU`]); KVM always uses `host`.
    pub cpu: Option<String>,
    /// Kill QEMU after this long; `None`: never.
    pub timeout: Option<Duration>,
    /// Copy serial output to our stdout as it arrives.
    pub echo: bool,
    /// Where to keep the transcript.
    pub log: PathBuf,
    /// Kill QEMU as soon as a console line contains this (a power cut at a
    /// chosen moment; the run ends [`Exit::Killed`]).
    pub kill_on: Option<String>,
    /// Kill QEMU as soon as this file exists (a power cut the caller times
    /// from outside; removed before QEMU starts).
    pub kill_file: Option<PathBuf>,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct Ended {
    /// How it ended.
    pub exit: Exit,
    /// QEMU's exit status, if it exited by itself.
    pub raw_status: Option<i32>,
    /// The serial output (lines joined with `\n`, CR stripped).
    pub transcript: String,
    /// What QEMU itself printed on stderr.
    pub qemu_stderr: String,
}

impl Run {
    /// The QEMU arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-machine".into(), MACHINE.into()];
        a.extend(["-accel".into(), self.accel.name().into()]);
        let cpu = match self.accel {
            Accel::Tcg => self.cpu.as_deref().unwrap_or(TCG_CPU),
            Accel::Kvm => "host",
        };
        a.extend(["-cpu".into(), cpu.into()]);
        a.extend(["-m".into(), format!("{}M", self.memory_mib)]);
        for s in [
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ] {
            a.push(s.into());
        }
        a.extend(["-kernel".into(), self.kernel.display().to_string()]);
        if let Some(initrd) = &self.initrd {
            a.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        a.extend(["-append".into(), self.append.clone()]);
        if let Some(port) = self.gdb {
            a.extend(["-gdb".into(), format!("tcp:127.0.0.1:{port}"), "-S".into()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// The command line, quoted for a shell (for logs and humans).
    pub fn command_line(&self) -> String {
        std::iter::once(self.qemu.display().to_string())
            .chain(self.args())
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Boots, streams and waits. `Err` only if QEMU could not be started or
    /// the log could not be written.
    pub fn run(&self, sh: &Shell) -> Result<Ended, String> {
        self.run_with_args(sh, &self.args())
    }

    fn run_with_args(&self, sh: &Shell, args: &[String]) -> Result<Ended, String> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut log = File::create(&self.log)
            .map_err(|e| format!("cannot create {}: {e}", self.log.display()))?;
        writeln!(log, "# {}", self.command_line())
            .map_err(|e| format!("cannot write {}: {e}", self.log.display()))?;

        if let Some(f) = &self.kill_file {
            // A trigger left by an earlier run must not cut this one at once.
            let _ = std::fs::remove_file(f);
        }
        let mut command: Command = sh.cmd(&self.qemu).args(args).into();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // QEMU stays in our process group, so Ctrl-C reaches it too. It does
        // not fork, so once it is killed its pipes close and the readers end.
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.qemu.display()))?;
        let started = Instant::now();

        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            return Err("QEMU's output pipes were not set up".into());
        };
        let echo = self.echo;
        // A live status line (domains running, time) under the echoed
        // console: redrawn in place on a terminal, a plain line now and then
        // otherwise.
        let live = echo.then(|| {
            use std::io::IsTerminal;
            std::sync::Arc::new(std::sync::Mutex::new(crate::status::Status::new(
                std::io::stderr().is_terminal(),
            )))
        });
        let serial_status = live.clone();
        let kill = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trigger = self.kill_on.clone().map(|t| (t, kill.clone()));
        let serial = std::thread::spawn(move || {
            stream_serial(stdout, log, echo, serial_status.as_deref(), trigger)
        });
        let qemu_err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            s
        });

        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for QEMU failed: {e}")),
            }
            if let Some(st) = &live {
                if let Ok(mut st) = st.lock() {
                    st.draw(&mut std::io::stderr(), false);
                }
            }
            if kill.load(std::sync::atomic::Ordering::Acquire)
                || self.kill_file.as_ref().is_some_and(|f| f.exists())
            {
                let _ = child.kill();
                break child.wait().ok();
            }
            if self.timeout.is_some_and(|t| started.elapsed() >= t) {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            std::thread::sleep(POLL);
        };

        let (transcript, mut log) = serial
            .join()
            .map_err(|_| "the serial reader thread panicked".to_string())?;
        if let Some(st) = &live {
            if let Ok(mut st) = st.lock() {
                st.finish(&mut std::io::stderr());
            }
        }
        let qemu_stderr = qemu_err.join().unwrap_or_default();
        let raw_status = if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        };
        let exit = match (timed_out, raw_status) {
            (true, _) => Exit::TimedOut(self.timeout.unwrap_or_default()),
            (false, Some(code)) => Exit::from_status(code),
            (false, None) => Exit::Killed,
        };
        let mut tail = String::new();
        for line in qemu_stderr.lines() {
            tail.push_str(&format!("# qemu: {line}\n"));
        }
        tail.push_str(&format!(
            "# ended after {:.2} s: {exit}\n",
            started.elapsed().as_secs_f64()
        ));
        log.write_all(tail.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.log.display()))?;
        Ok(Ended {
            exit,
            raw_status,
            transcript,
            qemu_stderr,
        })
    }
}

/// Reads serial output line by line: into the transcript (a last line that
/// ended without a newline stays without one), the log and
/// (if `echo`) our stdout, keeping `status` (if any) below it. Returns the
/// transcript and the log.
fn stream_serial(
    out: impl Read,
    mut log: File,
    echo: bool,
    status: Option<&std::sync::Mutex<crate::status::Status>>,
    kill_on: Option<(String, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
) -> (String, File) {
    let mut reader = BufReader::new(out);
    let mut transcript = String::new();
    let mut buf = Vec::new();
    let stdout = std::io::stdout();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if let Some((t, flag)) = &kill_on {
            if line.contains(t.as_str()) {
                flag.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        transcript.push_str(line);
        // A last line cut by a kill keeps no newline, so a test can tell a
        // line printed whole from one cut mid-print (`seq=48` of `seq=482`).
        if buf.ends_with(b"\n") {
            transcript.push('\n');
        }
        let _ = writeln!(log, "{line}");
        if echo {
            let mut st = status.and_then(|s| s.lock().ok());
            if let Some(st) = st.as_mut() {
                st.observe(line);
                st.before_output(&mut std::io::stderr());
            }
            let mut o = stdout.lock();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
            if let Some(st) = st.as_mut() {
                st.draw(&mut std::io::stderr(), true);
            }
        }
    }
    (transcript, log)
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=,+:@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Run {
        Run {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            memory_mib: 512,
            kernel: "target/tahoma".into(),
            initrd: Some("boot.pack".into()),
            append: "selftest=panic x=1".into(),
            gdb: None,
            extra: vec![],
            cpu: None,
            timeout: Some(Duration::from_secs(1)),
            echo: false,
            log: "x.log".into(),
            kill_on: None,
            kill_file: None,
        }
    }

    #[test]
    fn command_line() {
        let mut r = sample();
        assert_eq!(
            r.command_line(),
            "/usr/bin/qemu-system-x86_64 -machine microvm -accel tcg -cpu qemu64,+smep,+smap -m 512M \
             -display none -monitor none -serial stdio -no-reboot \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel target/tahoma -initrd boot.pack \
             -append 'selftest=panic x=1'"
        );
        r.initrd = None;
        r.gdb = Some(1234);
        r.accel = Accel::Kvm;
        r.append.clear();
        let line = r.command_line();
        assert!(line.contains("-cpu host"), "{line}");
        assert!(!line.contains("-initrd"), "{line}");
        assert!(
            line.ends_with("-append '' -gdb tcp:127.0.0.1:1234 -S"),
            "{line}"
        );
    }

    #[test]
    fn virtualization_flags() {
        assert!(cpu_has_virtualization("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpu_has_virtualization("flags : svm\n"));
        assert!(!cpu_has_virtualization(
            "flags : fpu vme sse hypervisor\nvmx flags : ept\n"
        ));
    }

    /// A stand-in for QEMU: a shell script that ignores its arguments.
    fn fake_qemu(name: &str, body: &str) -> (Run, PathBuf) {
        let dir = std::env::temp_dir().join(format!("tahoma-xtask-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("qemu");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        let mut run = sample();
        run.qemu = "/bin/sh".into();
        run.log = dir.join("logs/run.log");
        (run, script)
    }

    fn run_fake(name: &str, body: &str, timeout: u64) -> (Ended, String) {
        let (mut run, script) = fake_qemu(name, body);
        run.timeout = Some(Duration::from_secs(timeout));
        let sh = Shell::new().unwrap();
        // Put the script first: `/bin/sh script -machine ...`.
        let mut args = vec![script.display().to_string()];
        args.extend(run.args());
        let ended = run.run_with_args(&sh, &args).unwrap();
        let log = std::fs::read_to_string(&run.log).unwrap();
        std::fs::remove_dir_all(script.parent().unwrap()).unwrap();
        (ended, log)
    }

    #[test]
    fn success_status_and_transcript() {
        let (ended, log) = run_fake(
            "ok",
            "printf 'hello\\r\\n@ exit status=success\\nno newline'; echo oops >&2; exit 33",
            10,
        );
        assert_eq!(ended.exit, Exit::Success);
        assert_eq!(ended.raw_status, Some(33));
        assert_eq!(
            ended.transcript, "hello\n@ exit status=success\nno newline",
            "a last line without its newline stays without one"
        );
        assert_eq!(ended.qemu_stderr, "oops\n");
        assert!(log.starts_with("# /bin/sh"), "{log}");
        assert!(
            log.contains("\nhello\n@ exit status=success\nno newline\n# qemu: oops\n"),
            "{log}"
        );
        assert!(log.contains("success (status 33)"), "{log}");
    }

    #[test]
    fn other_statuses() {
        assert_eq!(run_fake("fail", "exit 35", 10).0.exit, Exit::Failure);
        assert_eq!(run_fake("zero", "exit 0", 10).0.exit, Exit::Unexpected(0));
        assert_eq!(run_fake("sig", "kill -9 $$", 10).0.exit, Exit::Killed);
    }

    #[test]
    fn timeout_kills_and_keeps_output() {
        let started = Instant::now();
        let (ended, log) = run_fake("hang", "echo '@ boot abi=1'; exec sleep 30", 1);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(ended.exit, Exit::TimedOut(Duration::from_secs(1)));
        assert_eq!(ended.raw_status, None);
        assert_eq!(ended.transcript, "@ boot abi=1\n");
        assert!(log.contains("timed out after 1 s"), "{log}");
    }

    #[test]
    fn a_console_line_can_cut_the_power() {
        let (mut run, script) = fake_qemu(
            "cut",
            "echo '@ vblk wrote seq=1'; echo '@ vblk acked seq=1'; exec sleep 30",
        );
        run.timeout = Some(Duration::from_secs(20));
        run.kill_on = Some("acked seq=".into());
        let sh = Shell::new().unwrap();
        let mut args = vec![script.display().to_string()];
        args.extend(run.args());
        let started = Instant::now();
        let ended = run.run_with_args(&sh, &args).unwrap();
        std::fs::remove_dir_all(script.parent().unwrap()).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "killed at once"
        );
        assert_eq!(ended.exit, Exit::Killed);
        assert_eq!(ended.transcript, "@ vblk wrote seq=1\n@ vblk acked seq=1\n");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a=b"), "a=b");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
