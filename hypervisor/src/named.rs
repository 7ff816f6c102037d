//! Named channels at boot (`EVT-7`, `MEM-3a`): connects the boot pack's
//! channel records ([`tahoma_core::named::wire`], pure) and writes each
//! end's table into its start-info page. Called once, after every domain
//! was built and before any runs; the start-info page is still written only
//! before its domain starts (MEM-3).
#![forbid(unsafe_code)]

use crate::console::Quoted;
use crate::domain::Domain;
use crate::{mem, report};
use alloc::boxed::Box;
use hypercall_abi::layout::{START_INFO_CHANNELS_OFFSET, START_INFO_CHANNEL_COUNT_OFFSET};
use tahoma_core::bootpack::{self, Pack, NAME_LEN};
use tahoma_core::event::Channels;
use tahoma_core::named::{self, WireError};
use zerocopy::IntoBytes;

/// Wires every channel of `pack` between the domains in `doms` (indexed by
/// id) and fills their start-info tables. Reports each channel
/// (`@ channel ...`) and each one it could not wire (`@ channel-error ...`,
/// only when an end was not built); returns false if any failed.
pub fn wire(pack: &Pack<'_>, channels: &mut Channels, doms: &[Option<Box<Domain>>]) -> bool {
    let name_of = |id: u16| {
        doms.get(usize::from(id))
            .and_then(|d| d.as_ref())
            .map_or([0; NAME_LEN], |d| {
                let mut n = [0u8; NAME_LEN];
                n[..d.name.len()].copy_from_slice(d.name.as_bytes());
                n
            })
    };
    let records: alloc::vec::Vec<_> = pack.channels().collect();
    let wiring = named::wire(channels, records.iter().copied(), name_of);
    for (&dom, table) in &wiring.tables {
        let Some(d) = doms.get(usize::from(dom)).and_then(|d| d.as_ref()) else {
            continue;
        };
        let page = d.start_info << 12;
        let count = table.len() as u32;
        mem::copy_to_phys(
            page + START_INFO_CHANNEL_COUNT_OFFSET as u64,
            count.as_bytes(),
        );
        mem::copy_to_phys(
            page + START_INFO_CHANNELS_OFFSET as u64,
            table.as_slice().as_bytes(),
        );
        for c in table {
            report!(
                "channel",
                "name={} dom={} port={} peer={} peer_name={}",
                Quoted(bootpack::channel_name(&c.name).unwrap_or("?")),
                dom,
                c.port,
                c.peer_domain,
                Quoted(bootpack::name_str(&c.peer_name))
            );
        }
    }
    for &(i, why) in &wiring.failed {
        let name = records
            .get(i as usize)
            .and_then(|r| bootpack::channel_name(&r.name))
            .unwrap_or("?");
        let mut msg = heapless::String::<96>::new();
        let _ = core::fmt::write(&mut msg, format_args!("{why}"));
        report!(
            "channel-error",
            "name={} error={}",
            Quoted(name),
            Quoted(&msg)
        );
        match why {
            WireError::EndMissing { .. } => log::error!(
                "channel {name:?} not wired: {why}; the other end does not list it (fix the domain's manifest entry or image)"
            ),
            _ => log::error!("channel {name:?} not wired: {why} (a hypervisor bug: report it)"),
        }
    }
    wiring.failed.is_empty()
}
