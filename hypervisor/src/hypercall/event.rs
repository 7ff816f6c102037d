//! The event-channel family (`EVT-*`).
#![forbid(unsafe_code)]

use crate::hv::Hv;
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::Channels;
use tahoma_core::event::DomId;

/// Runs a port allocation and resets the new port's bits in the caller's
/// shared info.
fn new_port(
    hv: &mut Hv,
    cur: DomId,
    f: impl FnOnce(&mut Channels) -> Result<u32, Error>,
) -> Result<u64, Error> {
    let port = f(&mut hv.channels)?;
    if let Some(d) = hv.dom(cur) {
        d.shared.reset_port(port);
    }
    Ok(u64::from(port))
}

/// EVT-1.
pub(crate) fn alloc_unbound(
    hv: &mut Hv,
    cur: DomId,
    a: abi::event::AllocUnbound,
) -> Result<u64, Error> {
    new_port(hv, cur, |c| c.alloc_unbound(cur, a.remote))
}

/// EVT-2.
pub(crate) fn bind_interdomain(
    hv: &mut Hv,
    cur: DomId,
    a: abi::event::BindInterdomain,
) -> Result<u64, Error> {
    new_port(hv, cur, |c| {
        c.bind_interdomain(cur, a.remote, a.remote_port)
    })
}

/// EVT-3.
pub(crate) fn bind_virq(hv: &mut Hv, cur: DomId, a: abi::event::BindVirq) -> Result<u64, Error> {
    new_port(hv, cur, |c| c.bind_virq(cur, a.virq as u64))
}

/// EVT-4: raises the event on the port's peer. Inline into its fast
/// handler (the look-up and the raise with it: no call on the way).
#[inline(always)]
pub(crate) fn send(hv: &mut Hv, cur: DomId, a: abi::event::Send) -> Result<u64, Error> {
    let t = hv.channels.send(cur, u64::from(a.port))?;
    hv.raise_inline(t);
    Ok(0)
}

/// EVT-5: closes the port and clears its bits.
pub(crate) fn close(hv: &mut Hv, cur: DomId, a: abi::event::Close) -> Result<u64, Error> {
    hv.channels.close(cur, u64::from(a.port))?;
    if let Some(d) = hv.dom(cur) {
        d.shared.clear(a.port);
    }
    Ok(0)
}

/// EVT-6: the port range was checked by the decode.
pub(crate) fn unmask(hv: &mut Hv, cur: DomId, a: abi::event::Unmask) -> Result<u64, Error> {
    if let Some(d) = hv.dom(cur) {
        d.shared.unmask(a.port);
    }
    Ok(0)
}
