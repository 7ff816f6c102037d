//! The memory-reservation family (`MEM-5`..`MEM-7`): take frames, give them
//! back, read the reservation. Names follow the ABI:
//! `Hypercall::MemoryPopulate` is `abi::memory::Populate` is [`populate`].
#![forbid(unsafe_code)]

use hypercall_abi::memory;
use hypercall_abi::Error;

use crate::raw;

pub use hypercall_abi::memory::MEMORY_BATCH_MAX;

/// Frames per call: [`MEMORY_BATCH_MAX`] as a slice length.
const BATCH: usize = crate::usize_const(MEMORY_BATCH_MAX);

/// `memory_populate` (`MEM-5`): fills `frames` with fresh frames (zeroed,
/// unmapped), by machine frame number. Any length: taken in batches of
/// [`MEMORY_BATCH_MAX`]; if one batch is refused, the frames already taken
/// are given back and the error returned.
pub fn populate(frames: &mut [u64]) -> Result<(), Error> {
    let mut taken = 0;
    while taken < frames.len() {
        let chunk = &mut frames[taken..];
        let n = chunk.len().min(BATCH);
        let r = raw::invoke(&memory::Populate {
            list: chunk.as_mut_ptr() as u64,
            count: n as u64,
        });
        if let Err(e) = r {
            let _ = release(&frames[..taken]);
            return Err(e);
        }
        taken += n;
    }
    Ok(())
}

/// One fresh frame (`MEM-5`): its mfn.
pub fn populate_one() -> Result<u64, Error> {
    let mut f = [0u64];
    populate(&mut f)?;
    Ok(f[0])
}

/// `memory_release` (`MEM-6`): gives `frames` back, in batches of
/// [`MEMORY_BATCH_MAX`] (each batch all or nothing).
pub fn release(frames: &[u64]) -> Result<(), Error> {
    for chunk in frames.chunks(BATCH) {
        raw::invoke(&memory::Release {
            list: chunk.as_ptr() as u64,
            count: chunk.len() as u64,
        })?;
    }
    Ok(())
}

/// `memory_info` (`MEM-7`): `(frames owned now, max_pages)`.
pub fn info() -> Result<(u64, u64), Error> {
    let mut v = [0u64; 2];
    raw::invoke(&memory::Info {
        out: v.as_mut_ptr() as u64,
    })?;
    Ok((v[0], v[1]))
}
