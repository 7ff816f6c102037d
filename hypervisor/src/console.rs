//! The hypervisor's console: COM1, the `log` backend, and `@` report lines.
//!
//! Human-readable logs go through `log` (`[LEVEL target] message`).
//! Machine-readable facts for xtask and the scenario tests go through
//! [`report!`]: one line `@ <kind> key=value ...` per fact (`docs/xtask.md`).

use core::fmt::Write;
use spin::Mutex;
use uart_16550::SerialPort;

/// COM1, the serial console QEMU connects to stdio.
// SAFETY: 0x3f8 is COM1 on every PC-compatible machine QEMU models; nothing
// else in the hypervisor touches these ports, and guests never get them.
static COM1: Mutex<SerialPort> = Mutex::new(unsafe { SerialPort::new(0x3f8) });

/// Programs the UART (115200 8N1, FIFO on).
pub fn init() {
    COM1.lock().init();
    log::set_logger(&LOGGER).ok();
    log::set_max_level(log::LevelFilter::Info);
}

/// Writes formatted text to COM1.
pub fn write_fmt(args: core::fmt::Arguments<'_>) {
    // A panic or exception while the lock is held (inside a write) must still
    // be able to report: after a bounded spin, write without the lock.
    for _ in 0..1_000_000 {
        if let Some(mut port) = COM1.try_lock() {
            let _ = port.write_fmt(args);
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: only reached when the lock is wedged by a faulting holder; we
    // build a second handle to the same ports so the report still gets out.
    let mut port = unsafe { SerialPort::new(0x3f8) };
    let _ = port.write_fmt(args);
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

    fn flush(&self) {}
}

/// A string to be printed as a quoted report value (escapes `"` and `\`).
pub struct Quoted<'a>(pub &'a str);

impl core::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' | '\\' => {
                    f.write_char('\\')?;
                    f.write_char(c)?;
                }
                '\n' => f.write_str("\\n")?,
                c if c.is_control() => f.write_char('?')?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}
