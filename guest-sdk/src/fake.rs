//! A fake hypervisor for the SDK's host tests (as libtock-rs's fake
//! kernel): it records every hypercall the SDK makes and answers with the
//! `rax` words a test scripts, and it owns a shared-info page the event and
//! time code read instead of the real one.
//!
//! One fake per test thread ([`Fake::install`]), so tests run in parallel.
//! The answers go through the ABI's own result encoding (`regs::encode`),
//! so the SDK's error decoding is exercised too. A hypercall made with no
//! fake installed, or after the script ran out, panics: a test cannot pass
//! by not looking.
#![allow(unsafe_code)]

use std::boxed::Box;
use std::cell::RefCell;
use std::vec::Vec;

use hypercall_abi::{regs, Error, Hypercall, Words};

use crate::raw::Hypervisor;
use crate::shared::{test_page, Shared};

/// One hypercall as the SDK made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Made {
    /// The call (`None` for a number the ABI does not define).
    pub call: Option<Hypercall>,
    /// The six argument words.
    pub args: Words,
}

/// Answers one call: gets the call, its words and the shared-info page,
/// returns the `rax` word.
type Responder = Box<dyn FnMut(Option<Hypercall>, Words, &Shared) -> u64>;

struct State {
    log: Vec<Made>,
    respond: Option<Responder>,
}

std::thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    static PAGE: Shared = test_page();
}

/// The `rax` word of a success.
pub(crate) fn ok(v: u64) -> u64 {
    regs::encode(Ok(v))
}

/// The `rax` word of a failure.
pub(crate) fn err(e: Error) -> u64 {
    regs::encode(Err(e))
}

/// The test's handle on this thread's fake.
pub(crate) struct Fake;

impl Fake {
    /// Installs a fake that answers every call with `respond`.
    pub(crate) fn install(
        respond: impl FnMut(Option<Hypercall>, Words, &Shared) -> u64 + 'static,
    ) -> Fake {
        STATE.with(|s| {
            *s.borrow_mut() = Some(State {
                log: Vec::new(),
                respond: Some(Box::new(respond)),
            })
        });
        Fake
    }

    /// Installs a fake that answers the calls, in order, with `words`
    /// (and panics on one call more).
    pub(crate) fn script(words: &[u64]) -> Fake {
        let mut queue: std::collections::VecDeque<u64> = words.iter().copied().collect();
        Fake::install(move |call, args, _| {
            queue
                .pop_front()
                .unwrap_or_else(|| panic!("unscripted hypercall {call:?} {args:x?}"))
        })
    }

    /// The calls made so far.
    pub(crate) fn log(&self) -> Vec<Made> {
        STATE.with(|s| {
            s.borrow()
                .as_ref()
                .map(|st| st.log.clone())
                .unwrap_or_default()
        })
    }

    /// The calls made so far, as `(call, words)`.
    pub(crate) fn calls(&self) -> Vec<(Hypercall, Words)> {
        self.log()
            .into_iter()
            .map(|m| (m.call.expect("an undefined number"), m.args))
            .collect()
    }

    /// This thread's shared-info page.
    pub(crate) fn shared(&self) -> Shared {
        shared()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        STATE.with(|s| *s.borrow_mut() = None);
    }
}

/// This thread's shared-info page (what `Shared::get` returns in tests).
pub(crate) fn shared() -> Shared {
    PAGE.with(|p| *p)
}

/// The [`Hypervisor`] the SDK calls in its tests: this thread's fake.
#[derive(Clone, Copy, Debug, Default)]
pub struct Installed;

impl Hypervisor for Installed {
    unsafe fn syscall(&self, nr: u64, args: Words) -> u64 {
        let call = Hypercall::from_number(nr);
        // Take the responder out while it runs, so that it may itself look
        // at the log or the page without a double borrow.
        let mut respond = STATE.with(|s| {
            let mut s = s.borrow_mut();
            let st = s
                .as_mut()
                .unwrap_or_else(|| panic!("hypercall {nr:#x} made with no fake installed"));
            st.log.push(Made { call, args });
            st.respond
                .take()
                .expect("a hypercall made from inside the fake")
        });
        let rax = respond(call, args, &shared());
        STATE.with(|s| {
            if let Some(st) = s.borrow_mut().as_mut() {
                st.respond = Some(respond);
            }
        });
        rax
    }
}

/// Writes `v` at the guest address `addr` the SDK passed in an argument
/// word, as the hypervisor writes a call's output.
///
/// # Safety
///
/// `addr` must be the address of a live, aligned `T` the SDK passed for
/// this call to write (an out-parameter of the call under test).
pub(crate) unsafe fn write_out<T>(addr: u64, v: T) {
    // SAFETY: the caller names a live, aligned, writable `T` (see `# Safety`).
    unsafe { core::ptr::write(usize::try_from(addr).expect("a host address") as *mut T, v) }
}

/// The SDK's call paths against the fake: what each wrapper placed in the
/// registers, how it read the answer, and what it did next.
#[cfg(test)]
mod tests {
    use core::sync::atomic::Ordering;

    use hypercall_abi::sched::{BlockResult, ShutdownReason, NO_DEADLINE};
    use hypercall_abi::{Error, Hypercall};

    use super::{err, ok, write_out, Fake};
    use crate::event::{self, DomId, Port};
    use crate::{console, memory, mmu, sched};

    #[test]
    fn event_calls_place_their_arguments_as_the_abi_encodes_them() {
        let fake = Fake::script(&[ok(7), ok(9), ok(3), ok(0), ok(0)]);
        assert_eq!(event::alloc_unbound(DomId(2)), Ok(Port(7)));
        assert_eq!(event::bind_interdomain(DomId(4), Port(11)), Ok(Port(9)));
        assert_eq!(
            event::bind_virq(hypercall_abi::event::Virq::Timer),
            Ok(Port(3))
        );
        assert_eq!(event::send(Port(5)), Ok(()));
        assert_eq!(event::close(Port(9)), Ok(()));
        assert_eq!(
            fake.calls(),
            [
                (Hypercall::EventAllocUnbound, [2, 0, 0, 0, 0, 0]),
                (Hypercall::EventBindInterdomain, [4, 11, 0, 0, 0, 0]),
                (Hypercall::EventBindVirq, [0, 0, 0, 0, 0, 0]),
                (Hypercall::EventSend, [5, 0, 0, 0, 0, 0]),
                (Hypercall::EventClose, [9, 0, 0, 0, 0, 0]),
            ]
        );
    }

    #[test]
    fn every_documented_error_comes_back_as_itself() {
        for e in Error::ALL {
            let fake = Fake::script(&[err(e)]);
            assert_eq!(event::send(Port(1)), Err(e));
            assert_eq!(fake.log().len(), 1);
        }
    }

    #[test]
    fn an_undefined_negative_word_is_invalid_argument_not_success() {
        let _fake = Fake::script(&[u64::MAX - 99, u64::MAX]);
        assert_eq!(event::send(Port(1)), Err(Error::InvalidArgument));
        // -1 is NoSuchCall, a defined code.
        assert_eq!(event::send(Port(1)), Err(Error::NoSuchCall));
    }

    #[test]
    fn console_write_repeats_until_the_hypervisor_took_everything() {
        let fake = Fake::install(|call, a, _| {
            assert_eq!(call, Some(Hypercall::ConsoleWrite));
            ok(a[1].min(256))
        });
        let bytes = [b'x'; 600];
        assert_eq!(console::write(&bytes), Ok(()));
        let base = bytes.as_ptr() as u64;
        let log = fake.calls();
        let words: std::vec::Vec<_> = log.iter().map(|(_, a)| (a[0] - base, a[1])).collect();
        assert_eq!(words, [(0, 600), (256, 344), (512, 88)]);
    }

    #[test]
    fn console_write_stops_on_a_count_it_did_not_offer() {
        let fake = Fake::script(&[ok(0)]);
        assert_eq!(console::write(b"abc"), Err(Error::InvalidArgument));
        assert_eq!(fake.log().len(), 1, "no retry loop on a zero count");
        let _fake = Fake::script(&[ok(4)]);
        assert_eq!(console::write(b"abc"), Err(Error::InvalidArgument));
    }

    #[test]
    fn block_reads_deadline_and_event() {
        let fake = Fake::script(&[ok(1), ok(0)]);
        assert_eq!(sched::block(1234), BlockResult::Deadline);
        assert_eq!(sched::block(NO_DEADLINE), BlockResult::Event);
        assert_eq!(
            fake.calls(),
            [
                (Hypercall::Block, [1234, 0, 0, 0, 0, 0]),
                (Hypercall::Block, [u64::MAX, 0, 0, 0, 0, 0]),
            ]
        );
    }

    #[test]
    fn shutdown_sign_extends_the_code_and_insists_on_crash() {
        // A hypervisor that (wrongly) returns from shutdown: the SDK retries
        // with reason crash. The fake ends the test by panicking on the
        // block that follows.
        let fake = Fake::script(&[err(Error::InvalidArgument), err(Error::InvalidArgument)]);
        let r = std::panic::catch_unwind(|| sched::shutdown(ShutdownReason::Reboot, -3));
        assert!(r.is_err());
        let calls = fake.calls();
        assert_eq!(
            calls[0],
            (
                Hypercall::Shutdown,
                [1, (-3i64).cast_unsigned(), 0, 0, 0, 0]
            )
        );
        assert_eq!(
            calls[1],
            (
                Hypercall::Shutdown,
                [2, (-3i64).cast_unsigned(), 0, 0, 0, 0]
            )
        );
        assert_eq!(calls[2].0, Hypercall::Block);
    }

    #[test]
    fn unmask_names_the_word_of_a_port_left_pending_then_calls_evt6() {
        let fake = Fake::install(|call, a, sh| {
            assert_eq!(call, Some(Hypercall::EventUnmask));
            // The selector names word 1 before the hypervisor is asked.
            assert_eq!(sh.pending_sel().load(Ordering::Acquire) & 0b10, 0b10);
            assert_eq!(a[0], 70);
            ok(0)
        });
        let sh = fake.shared();
        sh.pending(1).store(1 << (70 - 64), Ordering::Release);
        assert_eq!(event::unmask(Port(70)), Ok(()));
        assert_eq!(
            fake.calls(),
            [(Hypercall::EventUnmask, [70, 0, 0, 0, 0, 0])]
        );
        sh.pending(1).store(0, Ordering::Release);
        sh.pending_sel().store(0, Ordering::Release);
    }

    #[test]
    fn an_event_that_came_while_masked_is_collected_after_unmasking() {
        let fake = Fake::script(&[ok(2)]);
        let sh = fake.shared();
        event::without_upcalls(|| {
            assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 1);
            // The hypervisor marks an upcall pending meanwhile.
            sh.upcall_pending().store(1, Ordering::Release);
        });
        assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 0);
        // The pending check after unmasking made a hypercall, so the
        // upcall is delivered on its way back (TRAP-0).
        assert_eq!(fake.calls(), [(Hypercall::AbiVersion, [0; 6])]);
        sh.upcall_pending().store(0, Ordering::Release);
        // Nothing pending: no hypercall at all.
        event::without_upcalls(|| ());
        assert_eq!(fake.log().len(), 1);
    }

    #[test]
    fn wait_blocks_with_upcalls_masked_and_takes_the_wakeup_of_the_upcall() {
        // Serialise the tests that use the SDK's one wake-up token.
        let _g = crate::event::tests_token_lock();
        let fake = Fake::install(|call, a, sh| {
            assert_eq!(call, Some(Hypercall::Block));
            // The token was checked with upcalls masked: `block` unmasks
            // atomically with sleeping, so no wake-up falls in between.
            assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 1);
            sh.upcall_mask().store(0, Ordering::Release);
            if a[0] == 55 {
                return ok(1);
            }
            // An event arrives: the upcall runs on the way back.
            crate::event::dispatch();
            ok(0)
        });
        assert_eq!(event::wait_until(55), BlockResult::Deadline);
        assert_eq!(event::wait_until(NO_DEADLINE), BlockResult::Event);
        assert_eq!(fake.calls().len(), 2, "one block each");
        // A wake-up that came before the call is not lost: no block at all.
        crate::event::dispatch();
        assert_eq!(event::wait_until(NO_DEADLINE), BlockResult::Event);
        assert_eq!(fake.calls().len(), 2);
    }

    #[test]
    fn blocked_time_is_counted_only_while_tracking_is_on() {
        let _g = crate::event::tests_token_lock();
        let fake = Fake::install(|call, _, sh| {
            assert_eq!(call, Some(Hypercall::Block));
            sh.upcall_mask().store(0, Ordering::Release);
            // An event: its upcall sets the token `wait` takes.
            crate::event::dispatch();
            ok(0)
        });
        // Take a token an earlier test may have left, so that each `wait`
        // below blocks once.
        event::wait();
        // Off (the default): a wait blocks, nothing is counted.
        let (b0, n0) = (event::blocked_ticks(), fake.calls().len());
        event::wait();
        assert_eq!(fake.calls().len(), n0 + 1, "the wait blocked");
        assert_eq!(event::blocked_ticks(), b0, "counted while off");
        // On: each `block` adds its time (1 on the host's tick counter).
        event::track_blocked(true);
        event::wait();
        event::wait();
        let on = event::blocked_ticks();
        event::track_blocked(false);
        assert_eq!(on, b0 + 2, "one tick per counted block");
        event::wait();
        assert_eq!(event::blocked_ticks(), on, "counted after switching off");
    }

    #[test]
    fn wait_for_checks_the_condition_masked_before_block_and_leaves_the_token() {
        let _g = crate::event::tests_token_lock();
        static DONE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
        static SPURIOUS: core::sync::atomic::AtomicBool =
            core::sync::atomic::AtomicBool::new(false);
        DONE.store(0, Ordering::SeqCst);
        let fake = Fake::install(|call, a, sh| {
            assert_eq!(call, Some(Hypercall::Block));
            assert_eq!(a[0], NO_DEADLINE);
            // The condition was checked with upcalls masked: `block`
            // unmasks atomically with sleeping.
            assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 1);
            sh.upcall_mask().store(0, Ordering::Release);
            if !SPURIOUS.swap(false, Ordering::SeqCst) {
                // An event: the upcall runs on the way back and its handler
                // makes the condition true.
                DONE.fetch_add(1, Ordering::SeqCst);
                crate::event::dispatch();
            }
            ok(0)
        });
        let sh = fake.shared();
        // Not yet true: one block, the upcall makes it true, upcalls left
        // unmasked, the wake-up token left for a later `wait`.
        event::wait_for(|| DONE.load(Ordering::SeqCst) >= 1);
        assert_eq!(fake.calls().len(), 1);
        assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 0);
        // The token is still set: a `wait` returns at once (no block).
        event::wait();
        assert_eq!(
            fake.calls().len(),
            1,
            "the wake-up token was left for `wait`"
        );
        // Already true: no block, nothing masked.
        event::wait_for(|| DONE.load(Ordering::SeqCst) >= 1);
        assert_eq!(fake.calls().len(), 1);
        assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 0);
        // Made true by an upcall between the first look and the mask (here:
        // by the condition's own first call): seen by the masked look, no
        // block, upcalls unmasked again.
        let mut looks = 0;
        event::wait_for(|| {
            looks += 1;
            if looks == 1 {
                DONE.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            DONE.load(Ordering::SeqCst) >= 2
        });
        assert_eq!((looks, fake.calls().len()), (2, 1));
        assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 0);
        // A spurious wake-up: masked again, looked at, a second block.
        SPURIOUS.store(true, Ordering::SeqCst);
        event::wait_for(|| DONE.load(Ordering::SeqCst) >= 3);
        assert_eq!(fake.calls().len(), 3);
        assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 0);
        // A caller with upcalls masked keeps them masked.
        event::without_upcalls(|| {
            event::wait_for(|| DONE.load(Ordering::SeqCst) >= 4);
            assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 1);
        });
        // (`wait_until_masked` took the token the last upcall set, as it
        // does for `wait`: the other tests start without one.)
        assert_eq!(fake.calls().len(), 4);
    }

    #[test]
    fn wait_with_upcalls_masked_leaves_them_masked_and_loops_past_a_spurious_wake() {
        let _g = crate::event::tests_token_lock();
        static SPURIOUS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);
        SPURIOUS.store(true, Ordering::SeqCst);
        let fake = Fake::install(|call, a, sh| {
            assert_eq!(call, Some(Hypercall::Block));
            assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 1);
            sh.upcall_mask().store(0, Ordering::Release);
            if a[0] == 55 {
                return ok(1);
            }
            // First a wake-up with no upcall (spurious), then an event.
            if !SPURIOUS.swap(false, Ordering::SeqCst) {
                crate::event::dispatch();
            }
            ok(0)
        });
        let sh = fake.shared();
        // The caller has upcalls masked: each return leaves them masked.
        event::without_upcalls(|| {
            assert_eq!(event::wait_until(55), BlockResult::Deadline);
            assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 1);
            assert_eq!(event::wait_until(NO_DEADLINE), BlockResult::Event);
            assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 1);
        });
        // deadline, spurious, event: three blocks.
        assert_eq!(fake.calls().len(), 3);
        // Unmasked caller: a spurious wake loops (masked again) to a
        // second block, and the return leaves upcalls unmasked.
        SPURIOUS.store(true, Ordering::SeqCst);
        assert_eq!(event::wait_until(NO_DEADLINE), BlockResult::Event);
        assert_eq!(fake.calls().len(), 5);
        assert_eq!(sh.upcall_mask().load(Ordering::Acquire), 0);
    }

    #[test]
    fn populate_takes_batches_and_gives_back_on_a_refusal() {
        let fake = Fake::install(|call, a, _| match call {
            Some(Hypercall::MemoryPopulate) if a[1] == 512 => {
                for i in 0..a[1] {
                    // SAFETY: `a[0]` is the SDK's `&mut [u64]` chunk of
                    // `a[1]` frames, passed for this call to fill.
                    unsafe { write_out(a[0] + 8 * i, 1000 + i) };
                }
                ok(0)
            }
            Some(Hypercall::MemoryPopulate) => err(Error::NoResources),
            Some(Hypercall::MemoryRelease) => ok(0),
            c => panic!("{c:?}"),
        });
        let mut frames = std::vec![0u64; 600];
        assert_eq!(memory::populate(&mut frames), Err(Error::NoResources));
        let base = frames.as_ptr() as u64;
        assert_eq!(
            fake.calls(),
            [
                (Hypercall::MemoryPopulate, [base, 512, 0, 0, 0, 0]),
                (Hypercall::MemoryPopulate, [base + 512 * 8, 88, 0, 0, 0, 0]),
                (Hypercall::MemoryRelease, [base, 512, 0, 0, 0, 0]),
            ]
        );
        assert_eq!(frames[511], 1511);
    }

    #[test]
    fn memory_info_and_frame_info_read_what_the_hypervisor_wrote() {
        let fake = Fake::install(|call, a, _| {
            match call {
                // SAFETY: `a[0]` is the SDK's `[u64; 2]` out-buffer (MEM-7).
                Some(Hypercall::MemoryInfo) => unsafe { write_out(a[0], [40u64, 64u64]) },
                Some(Hypercall::MmuFrameInfo) => {
                    let rec = hypercall_abi::mmu::FrameRecord {
                        type_count: 2,
                        ..Default::default()
                    };
                    // SAFETY: `a[1]` is the SDK's `FrameRecord` out-buffer.
                    unsafe { write_out(a[1], rec) }
                }
                c => panic!("{c:?}"),
            }
            ok(0)
        });
        assert_eq!(memory::info(), Ok((40, 64)));
        assert_eq!(mmu::frame_info(77).map(|r| r.type_count), Ok(2));
        assert_eq!(fake.calls()[1].1[0], 77);
    }

    #[test]
    fn mmu_update_reports_how_many_were_applied() {
        let _fake = Fake::install(|call, a, _| {
            assert_eq!(call, Some(Hypercall::MmuUpdate));
            assert_eq!(a[1], 5);
            // SAFETY: `a[2]` is the SDK's `done` counter (MMU-22b).
            unsafe { write_out(a[2], 3u64) };
            err(Error::TypeConflict)
        });
        let reqs = [hypercall_abi::mmu::MmuUpdate { ptr: 0, val: 0 }; 5];
        assert_eq!(
            mmu::update(&reqs),
            Err(mmu::BatchError {
                done: 3,
                error: Error::TypeConflict
            })
        );
    }

    #[test]
    fn update_va_mapping_sets_the_invlpg_flag_word() {
        let fake = Fake::script(&[ok(0), ok(0)]);
        assert_eq!(mmu::update_va_mapping(0x1000, 0x2003, true), Ok(()));
        assert_eq!(mmu::update_va_mapping(0x1000, 0, false), Ok(()));
        assert_eq!(
            fake.calls(),
            [
                (Hypercall::UpdateVaMapping, [0x1000, 0x2003, 1, 0, 0, 0]),
                (Hypercall::UpdateVaMapping, [0x1000, 0, 0, 0, 0, 0]),
            ]
        );
    }
}
