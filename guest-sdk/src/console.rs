//! The domain's console (`CON-1`): raw writes, `print!`/`println!`, and the
//! `log` backend.
//!
//! The hypervisor prefixes every line with `[name] ` and buffers partial
//! lines, so a guest simply writes bytes.
#![forbid(unsafe_code)]

use core::fmt;

use hypercall_abi::args::CONSOLE_WRITE_MAX;
use hypercall_abi::{console, Error};

use crate::raw;

/// Largest chunk passed to one `console_write`.
const CHUNK: usize = crate::usize_const(CONSOLE_WRITE_MAX);

/// Writes `bytes` to the console, in chunks of at most `CONSOLE_WRITE_MAX`;
/// the hypervisor takes at most `CONSOLE_WRITE_STEP` bytes a call (`CON-2`)
/// and says how many, so this repeats until all are written.
pub fn write(mut bytes: &[u8]) -> Result<(), Error> {
    while !bytes.is_empty() {
        let n = bytes.len().min(CHUNK);
        let took = raw::invoke(&console::Write {
            ptr: bytes.as_ptr() as u64,
            len: n as u64,
        })?;
        // A count of 0 or beyond what was offered would be a hypervisor
        // bug: stop rather than loop or overrun.
        match usize::try_from(took) {
            Ok(t) if t > 0 && t <= n => bytes = &bytes[t..],
            _ => return Err(Error::InvalidArgument),
        }
    }
    Ok(())
}

/// Writes a string to the console.
pub fn write_str(s: &str) -> Result<(), Error> {
    write(s.as_bytes())
}

/// The console as a [`fmt::Write`] sink (unbuffered: one hypercall per
/// fragment). [`print!`](crate::print) buffers instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

/// Collects formatted output on the stack and writes it in few hypercalls.
struct Buffered {
    buf: [u8; 256],
    len: usize,
}

impl Buffered {
    const fn new() -> Buffered {
        Buffered {
            buf: [0; 256],
            len: 0,
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        let r = write(&self.buf[..self.len]);
        self.len = 0;
        r
    }
}

impl fmt::Write for Buffered {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        if self.len + bytes.len() > self.buf.len() {
            self.flush().map_err(|_| fmt::Error)?;
        }
        if bytes.len() > self.buf.len() {
            return write(bytes).map_err(|_| fmt::Error);
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }
}

/// Formats `args` (and a newline when `newline`) to the console. Errors are
/// dropped: there is nowhere else to report them.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>, newline: bool) {
    let mut out = Buffered::new();
    let _ = fmt::write(&mut out, args);
    if newline {
        let _ = fmt::Write::write_str(&mut out, "\n");
    }
    let _ = out.flush();
}

/// Prints to the domain's console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*), false) };
}

/// Prints to the domain's console, with a newline.
#[macro_export]
macro_rules! println {
    () => { $crate::console::_print(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*), true) };
}

/// The `log` backend: `[LEVEL] message` lines on the console.
struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            _print(format_args!("[{}] {}", record.level(), record.args()), true);
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Parses a level name (`off`, `error`, `warn`, `info`, `debug`, `trace`,
/// any case).
pub fn parse_level(s: &str) -> Option<log::LevelFilter> {
    s.parse().ok()
}

/// Installs the console as the `log` backend with `level`. The SDK does this
/// at start with the command line's `log=LEVEL` (default `info`); calling it
/// again only changes the level.
pub fn init_log(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse() {
        assert_eq!(parse_level("debug"), Some(log::LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Some(log::LevelFilter::Warn));
        assert_eq!(parse_level("off"), Some(log::LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
