//! The console family (`CON-*`): `console_write` and the printing of a
//! domain's lines.
#![forbid(unsafe_code)]

use crate::guestmem::{self, GuestRange};
use crate::hv::Hv;
use hypercall_abi::console::{CONSOLE_WRITE_MAX, CONSOLE_WRITE_STEP};
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;

/// [`CONSOLE_WRITE_STEP`] as an array length (a constant that fits).
#[allow(clippy::cast_possible_truncation)]
const STEP: usize = CONSOLE_WRITE_STEP as usize;
const _: () = assert!(STEP as u64 == CONSOLE_WRITE_STEP);

/// CON-1, CON-2: checks the whole range, takes at most
/// `CONSOLE_WRITE_STEP` bytes of it and returns how many it took.
pub(crate) fn write(hv: &mut Hv, cur: DomId, a: abi::console::Write) -> Result<u64, Error> {
    let abi::console::Write { ptr, len } = a;
    let range = GuestRange::new(ptr, len, CONSOLE_WRITE_MAX)?;
    guestmem::check(&hv.space(cur)?, range, false)?;
    let len = len.min(CONSOLE_WRITE_STEP);
    let range = GuestRange::new(ptr, len, CONSOLE_WRITE_STEP)?;
    let mut buf = [0u8; STEP];
    let bytes = &mut buf[..usize::try_from(len).map_err(|_| Error::InvalidArgument)?];
    guestmem::copy_from(&hv.space(cur)?, range, bytes)?;
    let d = hv.dom(cur).ok_or(Error::NotFound)?;
    for &b in bytes.iter() {
        d.console.push(b, |line| print_line(&d.name, line));
    }
    Ok(len)
}

/// Prints one of a domain's console lines, prefixed with its name and
/// rendered as CON-1d says ([`tahoma_core::console::Rendered`]). It goes
/// out at once, after every hypervisor line still in the console ring, so
/// the two keep their order.
pub(crate) fn print_line(name: &str, line: &[u8]) {
    crate::console::write_now(format_args!(
        "[{}] {}\n",
        name,
        tahoma_core::console::Rendered(line)
    ));
}
