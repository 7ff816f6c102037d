//! The conformance guest's own upcall handlers (TRAP-0..2): they record
//! what the hypervisor delivered and then act as the current test asks.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
use guest_sdk::abi::layout::{UpcallFrame, GUEST_VA_TOP};
use guest_sdk::abi::{regs, Hypercall};

use crate::arch::{self, frame_words, words_frame, Sh};

fn rec(slot: &[AtomicU64; 22], f: &UpcallFrame) {
    for (s, w) in slot.iter().zip(frame_words(f)) {
        s.store(w, SeqCst);
    }
}

/// Reads back a recorded frame.
pub fn recorded(slot: &[AtomicU64; 22]) -> UpcallFrame {
    let mut w = [0u64; 22];
    for (d, s) in w.iter_mut().zip(slot.iter()) {
        *d = s.load(SeqCst);
    }
    words_frame(w)
}

#[allow(clippy::declare_interior_mutable_const)]
const Z: AtomicU64 = AtomicU64::new(0);

// ---- event upcalls ----

/// Event upcalls taken.
pub static EV_COUNT: AtomicU64 = Z;
/// The last event frame and its address.
pub static EV_FRAME: [AtomicU64; 22] = [Z; 22];
pub static EV_ADDR: AtomicU64 = Z;
/// `upcall_mask` as found at the entry.
pub static EV_MASK_AT_ENTRY: AtomicU64 = Z;
/// Event upcalls running now, and the most ever.
pub static EV_DEPTH: AtomicU64 = Z;
pub static EV_MAX_DEPTH: AtomicU64 = Z;
/// Ports whose pending bits the handler clears (0 = none).
pub static EV_CLEAR: [AtomicU64; 4] = [Z; 4];
/// What the next event upcall does besides recording (see `EvMode`).
pub static EV_MODE: AtomicU64 = Z;
/// A port the handler sends on once in mode RESEND.
pub static EV_RESEND: AtomicU64 = Z;
/// Results of the bad upcall_return attempts in mode BAD_RETURNS (raw rax).
pub static EV_BAD: [AtomicU64; 12] = [Z; 12];
/// Failure of the final upcall_return (raw rax), if it came back.
pub static EV_RET_FAIL: AtomicU64 = Z;

pub const EV_NORMAL: u64 = 0;
/// Try bad upcall_return calls first (TRAP-2a/2b), then return.
pub const EV_BAD_RETURNS: u64 = 1;
/// Set every rflags bit in the frame before returning (TRAP-2).
pub const EV_FLAGS_ALL: u64 = 2;
/// Send on EV_RESEND once (no nested upcall; redelivery after return).
pub const EV_RESEND_ONCE: u64 = 3;
/// Execute ud2 inside the handler (nested trap frame placement).
pub const EV_UD2: u64 = 4;
/// Copy the frame, `rax` changed to `EV_MARKS[i]`, to `EV_ELSEWHERE[i]`
/// (i = 0, 1), then `upcall_return` with `EV_ELSEWHERE[2]` (TRAP-0d).
pub const EV_RETURN_ELSEWHERE: u64 = 5;
/// Where mode RETURN_ELSEWHERE copies the frame and which one it returns with.
pub static EV_ELSEWHERE: [AtomicU64; 3] = [Z; 3];
/// The `rax` each copy gets (what the interrupted call then returns).
pub const EV_MARKS: [u64; 2] = [0x5747, 0x11fe];

/// A scratch frame for the bad-return tests.
static mut SCRATCH: UpcallFrame = UpcallFrame {
    kind: 0,
    vector: 0,
    error_code: 0,
    cr2: 0,
    rax: 0,
    rbx: 0,
    rcx: 0,
    rdx: 0,
    rsi: 0,
    rdi: 0,
    rbp: 0,
    r8: 0,
    r9: 0,
    r10: 0,
    r11: 0,
    r12: 0,
    r13: 0,
    r14: 0,
    r15: 0,
    rip: 0,
    rsp: 0,
    rflags: 0,
};

fn upcall_return_raw(ptr: u64) -> u64 {
    // SAFETY: used with frames that are refused (the call returns) or with
    // the frame the hypervisor pushed for the current upcall.
    unsafe { guest_sdk::raw::syscall(Hypercall::UpcallReturn.number(), [ptr, 0, 0, 0, 0, 0]) }
}

pub extern "C" fn event_rust(frame: *mut UpcallFrame) -> ! {
    let depth = EV_DEPTH.fetch_add(1, SeqCst) + 1;
    EV_MAX_DEPTH.fetch_max(depth, SeqCst);
    EV_MASK_AT_ENTRY.store(u64::from(Sh::upcall_mask().load(SeqCst)), SeqCst);
    EV_ADDR.store(frame as u64, SeqCst);
    // SAFETY: the hypervisor pushed a complete frame here (TRAP-0).
    let f = unsafe { &mut *frame };
    rec(&EV_FRAME, f);
    EV_COUNT.fetch_add(1, SeqCst);
    Sh::upcall_pending().store(0, SeqCst);
    Sh::sel().store(0, SeqCst);
    for p in &EV_CLEAR {
        let p = p.load(SeqCst);
        if p != 0 {
            Sh::set_pending(p as u32, false);
        }
    }
    match EV_MODE.swap(EV_NORMAL, SeqCst) {
        EV_BAD_RETURNS => {
            let fr = frame as u64;
            let scratch = &raw mut SCRATCH;
            let si_va = crate::start_info_va();
            let mut tries = [0u64; 12];
            tries[0] = upcall_return_raw(0);
            tries[1] = upcall_return_raw(0xdead_0000);
            tries[2] = upcall_return_raw(0xffff_8000_0000_0000);
            tries[3] = upcall_return_raw(0xffff_ffff_8000_0000);
            tries[4] = upcall_return_raw(u64::MAX - 8);
            tries[5] = upcall_return_raw(GUEST_VA_TOP - 8);
            // SAFETY: SCRATCH is only touched here, in one upcall at a time.
            unsafe {
                *scratch = *f;
                (*scratch).rip = GUEST_VA_TOP;
            }
            tries[6] = upcall_return_raw(scratch as u64);
            // SAFETY: SCRATCH is only touched here, in one upcall at a time,
            // so this write cannot race another.
            unsafe {
                *scratch = *f;
                (*scratch).rsp = 0xffff_8000_0000_1000;
            }
            tries[7] = upcall_return_raw(scratch as u64);
            // SAFETY: SCRATCH is only touched here, in one upcall at a time,
            // so this write cannot race another.
            unsafe {
                *scratch = *f;
                (*scratch).kind = 2;
            }
            tries[8] = upcall_return_raw(scratch as u64);
            // The read-only start-info page is readable; its first word
            // ("TAHOMASI") is no defined kind.
            tries[9] = upcall_return_raw(si_va);
            // Still in the upcall: the frame is intact and the mask still set.
            tries[10] = u64::from(Sh::upcall_mask().load(SeqCst));
            tries[11] = u64::from(EV_ADDR.load(SeqCst) == fr);
            for (s, t) in EV_BAD.iter().zip(tries) {
                s.store(t, SeqCst);
            }
        }
        EV_FLAGS_ALL => f.rflags = u64::MAX,
        EV_RESEND_ONCE => {
            let p = EV_RESEND.load(SeqCst);
            let _ = guest_sdk::raw::call1(Hypercall::EventSend, p);
        }
        EV_RETURN_ELSEWHERE => {
            let mut g = *f;
            for (to, mark) in EV_ELSEWHERE.iter().zip(EV_MARKS) {
                g.rax = mark;
                // SAFETY: the test mapped both pages writable for this and
                // nothing Rust reaches lives there.
                unsafe { (to.load(SeqCst) as *mut UpcallFrame).write_volatile(g) };
            }
            EV_DEPTH.fetch_sub(1, SeqCst);
            let r = upcall_return_raw(EV_ELSEWHERE[2].load(SeqCst));
            EV_RET_FAIL.store(r, SeqCst);
            EV_DEPTH.fetch_add(1, SeqCst);
        }
        EV_UD2 => {
            TR_MODE.store(TR_SKIP, SeqCst);
            TR_SKIP_LEN.store(2, SeqCst);
            // SAFETY: a deliberate #UD, reflected to conf_trap_entry, which
            // skips the 2 bytes.
            unsafe { core::arch::asm!("ud2") };
        }
        _ => {}
    }
    EV_DEPTH.fetch_sub(1, SeqCst);
    let r = upcall_return_raw(frame as u64);
    EV_RET_FAIL.store(r, SeqCst);
    guest_sdk::sched::shutdown(guest_sdk::sched::ShutdownReason::Crash, 90)
}

// ---- trap upcalls ----

/// Trap upcalls taken.
pub static TR_COUNT: AtomicU64 = Z;
/// The outermost trap frame of the last trap and its address.
pub static TR_FRAME: [AtomicU64; 22] = [Z; 22];
pub static TR_ADDR: AtomicU64 = Z;
/// A nested trap's frame and address (depth 2).
pub static TR_NESTED: [AtomicU64; 22] = [Z; 22];
pub static TR_NESTED_ADDR: AtomicU64 = Z;
pub static TR_DEPTH: AtomicU64 = Z;
/// `upcall_mask` at the trap entry.
pub static TR_MASK_AT_ENTRY: AtomicU64 = Z;
/// What the handler does (see the TR_* modes).
pub static TR_MODE: AtomicU64 = Z;
pub static TR_SKIP_LEN: AtomicU64 = Z;

/// Resume at `frame.r15` (the probe macros load it with the address after
/// the instruction under test); add 8 to rsp if `TR_SKIP_LEN` is 8 (a
/// `call` whose target faulted).
pub const TR_R15: u64 = 0;
/// Move rip by `TR_SKIP_LEN` bytes.
pub const TR_SKIP: u64 = 1;
/// Resume the event frame in rdi (an event entry that faulted, TRAP-1b).
pub const TR_RESUME_EVENT: u64 = 2;
/// Take a nested #UD inside the handler (placement, depth), then as TR_R15.
pub const TR_NEST: u64 = 3;

pub extern "C" fn trap_rust(frame: *mut UpcallFrame) -> ! {
    let depth = TR_DEPTH.fetch_add(1, SeqCst) + 1;
    // SAFETY: the hypervisor pushed a complete frame here (TRAP-0).
    let f = unsafe { &mut *frame };
    if depth == 1 {
        TR_ADDR.store(frame as u64, SeqCst);
        rec(&TR_FRAME, f);
        TR_MASK_AT_ENTRY.store(u64::from(Sh::upcall_mask().load(SeqCst)), SeqCst);
        TR_COUNT.fetch_add(1, SeqCst);
    } else {
        TR_NESTED_ADDR.store(frame as u64, SeqCst);
        rec(&TR_NESTED, f);
        f.rip += 2;
        TR_DEPTH.fetch_sub(1, SeqCst);
        let r = upcall_return_raw(frame as u64);
        EV_RET_FAIL.store(r, SeqCst);
        guest_sdk::sched::shutdown(guest_sdk::sched::ShutdownReason::Crash, 91)
    }
    match TR_MODE.load(SeqCst) {
        TR_SKIP => f.rip += TR_SKIP_LEN.load(SeqCst),
        TR_RESUME_EVENT => {
            // The event handler never ran: consume the event here, or the
            // return would deliver it to the bad entry again.
            TR_MODE.store(TR_R15, SeqCst);
            Sh::upcall_pending().store(0, SeqCst);
            for p in &EV_CLEAR {
                let p = p.load(SeqCst);
                if p != 0 {
                    Sh::set_pending(p as u32, false);
                }
            }
            f.rip = arch::resume_rdi();
        }
        TR_NEST => {
            TR_MODE.store(TR_R15, SeqCst);
            // SAFETY: a deliberate nested #UD; the depth-2 branch skips it.
            unsafe { core::arch::asm!("ud2") };
            f.rip = f.r15;
        }
        _ => {
            f.rip = f.r15;
            if TR_SKIP_LEN.load(SeqCst) == 8 {
                f.rsp += 8;
            }
        }
    }
    TR_DEPTH.fetch_sub(1, SeqCst);
    let r = upcall_return_raw(frame as u64);
    EV_RET_FAIL.store(r, SeqCst);
    guest_sdk::sched::shutdown(guest_sdk::sched::ShutdownReason::Crash, 92)
}

/// Decodes a raw result word.
pub fn dec(raw: u64) -> Result<u64, guest_sdk::Error> {
    regs::decode(raw)
}
