//! The hypervisor's console: COM1, the console ring, the `log` backend,
//! and `@` report lines.
//!
//! Human-readable logs go through `log` (`[LEVEL target] message`).
//! Machine-readable facts for xtask and the scenario tests go through
//! [`crate::report!`]: one line `@ <kind> key=value ...` per fact (`docs/xtask.md`).
//!
//! Both are formatted into the console ring ([`tahoma_core::conring`], as
//! Xen's `conring`), not onto the serial port: the serial writes (a port
//! read and write per byte) are off the path that reported. The ring is
//! drained to COM1, oldest byte first, when the CPU is about to idle
//! ([`flush`] from the scheduler), before a domain's console line
//! ([`write_now`]), when a domain is destroyed for a fault, on every exit
//! of the run (`arch::exit_qemu`: the end, a failure, a panic, a fatal
//! exception), whenever it is more than half full, and whenever a line
//! does not fit (so no line is ever dropped).
//!
//! Lines still in the ring are lost if the machine stops from outside (a
//! timeout's kill, a hang): for debugging such a run, `console=sync` on
//! the hypervisor's command line drains the ring after every line, as
//! Xen's `sync_console` does (`@ console mode=sync` says it is on).

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;
use tahoma_core::conring::{ConRing, Fact, RingWriter};
use uart_16550::SerialPort;

/// COM1, the serial console QEMU connects to stdio.
// SAFETY: 0x3f8 is COM1 on every PC-compatible machine QEMU models; nothing
// else in the hypervisor touches these ports, and guests never get them.
static COM1: Mutex<SerialPort> = Mutex::new(unsafe { SerialPort::new(0x3f8) });

/// `console=sync`: every line goes to COM1 as it is written.
static SYNC: AtomicBool = AtomicBool::new(false);

/// Turns `console=sync` on (the boot command line asked for it).
pub fn set_sync() {
    SYNC.store(true, Ordering::Relaxed);
}

/// Whether `console=sync` is on.
pub fn is_sync() -> bool {
    SYNC.load(Ordering::Relaxed)
}

/// Bytes of console text the ring holds before it must be drained.
const RING_BYTES: usize = 16 * 1024;

/// The console ring: text reported but not yet written to COM1.
static RING: Mutex<ConRing<RING_BYTES>> = Mutex::new(ConRing::new());

/// How long to spin for a console lock before deciding its holder faulted.
const SPINS: u32 = 1_000_000;

/// Programs the UART (115200 8N1, FIFO on).
pub fn init() {
    COM1.lock().init();
    log::set_logger(&LOGGER).ok();
    log::set_max_level(log::LevelFilter::Info);
}

/// Writes bytes to COM1.
fn serial(bytes: &[u8]) {
    // A panic or exception while the lock is held (inside a write) must still
    // be able to report: after a bounded spin, write without the lock.
    for _ in 0..SPINS {
        if let Some(mut port) = COM1.try_lock() {
            bytes.iter().for_each(|&b| port.send(b));
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: only reached when the lock is wedged by a faulting holder; we
    // build a second handle to the same ports so the report still gets out.
    let mut port = unsafe { SerialPort::new(0x3f8) };
    bytes.iter().for_each(|&b| port.send(b));
}

/// Runs `f` on the console ring.
fn with_ring(f: impl FnOnce(&mut ConRing<RING_BYTES>)) {
    for _ in 0..SPINS {
        if let Some(mut ring) = RING.try_lock() {
            f(&mut ring);
            return;
        }
        core::hint::spin_loop();
    }
    // A panic or exception while the lock is held must still be able to
    // report. One CPU: the holder is the code this fault interrupted, which
    // never resumes (every such path ends the run). The ring is consistent
    // at every instant (`ConRing::push` counts bytes only once they are in
    // place, and empties only after its drain), so at worst the part of a
    // line the holder had not yet pushed is missing, or the part of a
    // drain it had written goes out twice.
    // SAFETY: force_unlock's obligation is that no one uses the guard
    // still held: its holder is the faulted code, which never runs again.
    unsafe { RING.force_unlock() };
    if let Some(mut ring) = RING.try_lock() {
        f(&mut ring);
    }
}

/// Formats text into the console ring; drains the ring to COM1 if it is
/// now past its mark.
pub fn write_fmt(args: core::fmt::Arguments<'_>) {
    with_ring(|ring| {
        let mut w = RingWriter::new(ring, serial);
        let _ = w.write_fmt(args);
        if is_sync() {
            w.drain();
        } else {
            w.drain_past_mark();
        }
    });
}

/// Formats text into the console ring and drains all of it to COM1 now
/// (a domain's console line: it follows every hypervisor line before it).
pub fn write_now(args: core::fmt::Arguments<'_>) {
    with_ring(|ring| {
        let mut w = RingWriter::new(ring, serial);
        let _ = w.write_fmt(args);
        w.drain();
    });
}

/// Reports a fact (`@ kind key=value ...`, the text [`crate::report!`] would
/// make) encoded by [`Fact`] instead of `core::fmt`: for the facts on a
/// measured path (a domain's start).
pub fn fact(kind: &str, fields: impl FnOnce(&mut Fact<&mut dyn FnMut(&[u8])>)) {
    with_ring(|ring| {
        let mut w = RingWriter::new(ring, serial);
        {
            let mut out = |b: &[u8]| w.write_bytes(b);
            let mut f = Fact::new(kind, &mut out as &mut dyn FnMut(&[u8]));
            fields(&mut f);
            f.end();
        }
        if is_sync() {
            w.drain();
        } else {
            w.drain_past_mark();
        }
    });
}

/// Drains the console ring to COM1: when the CPU is about to idle and on
/// every exit of the run.
pub fn flush() {
    with_ring(|ring| ring.drain(serial));
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Emits a machine-readable fact: `report!("memmap", "frames={}", n)` prints
/// `@ memmap frames=…`.
#[macro_export]
macro_rules! report {
    ($kind:expr) => {
        $crate::console::write_fmt(format_args!("@ {}\n", $kind))
    };
    ($kind:expr, $($arg:tt)*) => {
        $crate::console::write_fmt(format_args!("@ {} {}\n", $kind, format_args!($($arg)*)))
    };
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let target = record
                .target()
                .strip_prefix("tahoma::")
                .unwrap_or(record.target());
            write_fmt(format_args!(
                "[{:5} {}] {}\n",
                record.level(),
                target,
                record.args()
            ));
        }
    }

    fn flush(&self) {
        flush();
    }
}

/// A string printed as a quoted report value (escapes `"` and `\`).
pub use tahoma_core::conring::Quoted;
