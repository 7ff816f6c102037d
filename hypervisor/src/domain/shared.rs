//! A domain's shared-info page (MEM-4): the hypervisor's one accessor for
//! it. Event bits, the upcall mask and the time record are read and written
//! here only.

use super::*;

/// A domain's shared-info page: a frame shared with the domain as
/// `Special` and mapped read-write into the guest. Every access is atomic or
/// volatile, and no value read from it is trusted (MEM-4).
///
/// The hypervisor writes it whenever it raises an event, so it holds a
/// reference on the frame in the frame table (`Mm::share_special` takes it,
/// MEM-8) from the build until the domain's frames are released
/// ([`super::Domain::release_step`]): the guest can
/// unmap the page, but never release it, retype it or see it handed to
/// anyone while this accessor exists (issue 7, finding 1).
pub struct SharedPage {
    pub(super) mfn: u64,
    /// The frame's direct-map address (`mfn`'s, computed once: every
    /// raise and every `block` reach the page through it).
    base: u64,
}

impl SharedPage {
    /// The accessor for the domain's shared-info frame `mfn`, which the
    /// caller holds in the frame table for as long as this exists (MEM-8).
    pub(super) fn new(mfn: u64) -> SharedPage {
        SharedPage {
            mfn,
            base: mem::phys_to_virt(mfn << 12),
        }
    }

    /// The frame.
    pub fn mfn(&self) -> u64 {
        self.mfn
    }

    /// The frame's direct-map address.
    pub fn base_va(&self) -> u64 {
        self.base
    }

    #[inline(always)]
    fn base(&self) -> *mut SharedInfo {
        self.base as *mut SharedInfo
    }

    fn word(&self, field: *mut u64) -> &AtomicU64 {
        let _ = self;
        // SAFETY: `field` is a `u64` field of this page (callers project it
        // from `base()`): a live, 8-aligned, direct-mapped frame the
        // hypervisor holds in the frame table (MEM-8) for as long as this
        // accessor exists, so the reference cannot dangle; any bit pattern
        // is a valid u64, and the guest runs on this CPU only while we
        // don't, so every access through the atomic is race-free.
        unsafe { AtomicU64::from_ptr(field) }
    }

    fn byte(&self, field: *mut u8) -> &AtomicU8 {
        let _ = self;
        // SAFETY: `field` is a `u8` field of this page (callers project it
        // from `base()`): a live, direct-mapped frame the hypervisor holds
        // (MEM-8) while this accessor exists, so the reference cannot
        // dangle; a byte needs no alignment and any value is a valid u8.
        unsafe { AtomicU8::from_ptr(field) }
    }

    fn pending(&self, w: usize) -> &AtomicU64 {
        // SAFETY: `base()` is the direct-map address of the held frame, so
        // projecting `pending[w]` stays inside it (`w < PORT_WORDS`, and the
        // index is bounds-checked); only a raw address is formed.
        self.word(unsafe { &raw mut (*self.base()).pending[w] })
    }

    fn mask(&self, w: usize) -> &AtomicU64 {
        // SAFETY: `base()` is the direct-map address of the held frame, so
        // projecting `mask[w]` stays inside it (`w < PORT_WORDS`, and the
        // index is bounds-checked); only a raw address is formed.
        self.word(unsafe { &raw mut (*self.base()).mask[w] })
    }

    /// Sets `port`'s pending bit. Returns true when the guest must be
    /// notified: the bit was clear and the port is not masked (EVT-0).
    pub fn raise(&self, port: u32) -> bool {
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if w >= PORT_WORDS {
            return false;
        }
        let was = self.pending(w).fetch_or(bit, Ordering::SeqCst);
        if was & bit != 0 || self.mask(w).load(Ordering::SeqCst) & bit != 0 {
            return false;
        }
        self.note_pending_word(w);
        true
    }

    fn note_pending_word(&self, w: usize) {
        // SAFETY: `base()` is the direct-map address of the held frame;
        // `pending_sel` and `upcall_pending` are fields of it, so both raw
        // addresses lie inside the page; no reference is formed here.
        let (sel, up) = unsafe {
            (
                &raw mut (*self.base()).pending_sel,
                &raw mut (*self.base()).upcall_pending,
            )
        };
        self.word(sel).fetch_or(1 << w, Ordering::SeqCst);
        // Release, not SeqCst: a plain store (`mov`) instead of an `xchg`
        // (one instruction less on every raise that notifies). The guest
        // reads the byte, then `pending_sel`, then the pending words: the
        // release keeps every store above (the pending bit, the selector
        // bit) before it, so a guest that sees the byte set sees what it
        // announces. What SeqCst adds, a store ordered before this CPU's
        // later loads, matters only to an observer on another CPU running
        // at the same time, and there is none: the hypervisor runs on one
        // CPU with interrupts off (`hv::HvCell`), and the guest only after
        // it returns, on the same CPU, where its own program order holds.
        self.byte(up).store(1, Ordering::Release);
    }

    /// Clears `port`'s mask bit; returns true when it is pending (EVT-6).
    pub fn unmask(&self, port: u32) -> bool {
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if w >= PORT_WORDS {
            return false;
        }
        self.mask(w).fetch_and(!bit, Ordering::SeqCst);
        if self.pending(w).load(Ordering::SeqCst) & bit != 0 {
            self.note_pending_word(w);
            return true;
        }
        false
    }

    /// Sets `port`'s mask bit (a device port, masked until the guest
    /// unmasks it: IO-2).
    pub fn set_mask(&self, port: u32) {
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if w < PORT_WORDS {
            self.mask(w).fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Clears `port`'s pending bit (on close).
    pub fn clear(&self, port: u32) {
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if w < PORT_WORDS {
            self.pending(w).fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Clears `port`'s pending and mask bits (a freshly allocated port, EVT-1).
    pub fn reset_port(&self, port: u32) {
        self.clear(port);
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if w < PORT_WORDS {
            self.mask(w).fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Clears `upcall_mask`, then says whether any port is pending and not
    /// masked. Every word is read (the guest may set pending or clear mask bits itself, EVT-0e, so
    /// `pending_sel` cannot narrow the search for a "no"), but without a
    /// branch per word: the pending words are or-ed first, and the masks
    /// are read only when one of them is nonzero. The usual `block` finds
    /// nothing pending (the guest cleared what it handled).
    ///
    /// `block`'s test (SCHED-2a, SCHED-2b): `upcall_mask` cleared first,
    /// with the page's address computed once (the store is atomic, so the
    /// compiler read `mfn` again after it).
    #[inline(always)] // on every `block`, in the slow entry (SCHED-2b)
    pub fn unmask_upcalls_then_any_pending(&self) -> bool {
        let base = self.base();
        // SAFETY: `base` is the direct-map address of the held frame;
        // `upcall_mask` is a field of it, so the raw address lies inside.
        // Release, not SeqCst (a `mov`, not an `xchg`): the loads below
        // need not be ordered after it, as no other CPU runs the guest or
        // raises meanwhile (see `note_pending_word`).
        self.byte(unsafe { &raw mut (*base).upcall_mask })
            .store(0, Ordering::Release);
        self.any_unmasked_pending_at(base)
    }

    /// Whether any port of the page at `base` (its `base()`) is pending
    /// and not masked.
    #[inline(always)]
    fn any_unmasked_pending_at(&self, base: *mut SharedInfo) -> bool {
        // SAFETY: as in `pending` and `mask`: `base` is the direct-map
        // address of the held frame and `w < PORT_WORDS`, so each
        // projection stays inside it; only raw addresses are formed.
        let pending = |w: usize| self.word(unsafe { &raw mut (*base).pending[w] });
        // SAFETY: as for `pending` just above.
        let mask = |w: usize| self.word(unsafe { &raw mut (*base).mask[w] });
        // The "no" of the usual `block` is one load and 15 `or`s from
        // memory: volatile reads, which the compiler folds into the `or`
        // (atomic loads it keeps as a load and an `or` each: 16 more).
        let mut any = 0;
        for w in 0..PORT_WORDS {
            // SAFETY: as for `pending` above: `base` is the direct-map
            // address of the held frame, `w < PORT_WORDS`, so the 8-aligned
            // word lies inside it; any bit pattern is a valid u64, and the
            // guest does not run while we do (one CPU), so the volatile
            // read races with nothing.
            any |= unsafe { core::ptr::read_volatile(&raw const (*base).pending[w]) };
        }
        if any == 0 {
            return false;
        }
        let mut unmasked = 0;
        for w in 0..PORT_WORDS {
            unmasked |= pending(w).load(Ordering::SeqCst) & !mask(w).load(Ordering::SeqCst);
        }
        unmasked != 0
    }

    /// Sets or clears `upcall_mask` (on every event upcall and its
    /// return). Release, not SeqCst: a `mov`, not an `xchg` (see
    /// `note_pending_word`: one CPU, the guest reads it only after the
    /// hypervisor returns to it).
    pub fn set_upcall_mask(&self, masked: bool) {
        // SAFETY: `base()` is the direct-map address of the held frame;
        // `upcall_mask` is a field of it, so the raw address lies inside.
        self.byte(unsafe { &raw mut (*self.base()).upcall_mask })
            .store(u8::from(masked), Ordering::Release);
    }

    pub(super) fn write_time(&self, t: &TimeInfo) {
        let off = core::mem::offset_of!(SharedInfo, time) as u64;
        mem::copy_to_phys((self.mfn << 12) + off, t.as_bytes());
    }
}
