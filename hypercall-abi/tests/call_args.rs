//! Every call's typed arguments survive `encode` then `decode` unchanged, sit
//! in the register positions the spec gives them, and the number table binds
//! each call to exactly one argument type. `decode` refuses out-of-range
//! words with the documented error.

use hypercall_abi::event::Virq;
use hypercall_abi::layout::{GUEST_VA_TOP, NR_PORTS};
use hypercall_abi::sched::ShutdownReason;
use hypercall_abi::{
    base, console, event, grant, io, memory, mmu, sched, time, trap, Args, Call, Error, Hypercall,
    Words,
};

/// Round-trips `v`, checks its words against `words` (the spec's positions),
/// and returns the call it is bound to.
fn check<T: Call + PartialEq + core::fmt::Debug>(v: T, words: Words) -> Hypercall {
    assert_eq!(
        v.encode(),
        words,
        "{:?} encodes to the spec's positions",
        T::CALL
    );
    assert_eq!(T::decode(words), Ok(v), "{:?} decodes back", T::CALL);
    unused_words_are_ignored::<T>(words);
    T::CALL
}

/// `CALL-1b` as `Args::USED` states it: the words from `USED` on are 0 in
/// the encoding and `decode` reads none of them, so garbage there (what
/// the SDK leaves in the registers it does not set) changes nothing.
fn unused_words_are_ignored<T: Call + PartialEq + core::fmt::Debug>(words: Words) {
    assert!(T::USED <= 6, "{:?}: USED {} > 6", T::CALL, T::USED);
    for (i, w) in words.iter().enumerate().skip(T::USED) {
        assert_eq!(
            *w,
            0,
            "{:?}: word {i} is at or past USED but encoded",
            T::CALL
        );
    }
    for garbage in [u64::MAX, 0xdead_beef_dead_beef, 1] {
        let mut g = words;
        for w in g.iter_mut().skip(T::USED) {
            *w = garbage;
        }
        assert_eq!(
            T::decode(g),
            T::decode(words),
            "{:?}: decode read a word at or past USED ({})",
            T::CALL,
            T::USED
        );
    }
}

#[test]
fn every_call_round_trips_in_its_documented_positions() {
    let a = 0x1111;
    let b = 0x2222;
    let c = 0x3000;
    let seen = [
        check(base::AbiVersion {}, [0; 6]),
        check(console::Write { ptr: a, len: b }, [a, b, 0, 0, 0, 0]),
        check(sched::Yield {}, [0; 6]),
        check(sched::Block { deadline_ns: a }, [a, 0, 0, 0, 0, 0]),
        check(
            sched::Shutdown {
                reason: ShutdownReason::Crash,
                code: b,
            },
            [2, b, 0, 0, 0, 0],
        ),
        check(time::TimerSet { deadline_ns: a }, [a, 0, 0, 0, 0, 0]),
        check(event::AllocUnbound { remote: a }, [a, 0, 0, 0, 0, 0]),
        check(
            event::BindInterdomain {
                remote: a,
                remote_port: b,
            },
            [a, b, 0, 0, 0, 0],
        ),
        check(event::BindVirq { virq: Virq::Timer }, [0; 6]),
        check(event::Send { port: 7 }, [7, 0, 0, 0, 0, 0]),
        check(event::Close { port: 8 }, [8, 0, 0, 0, 0, 0]),
        check(event::Unmask { port: 9 }, [9, 0, 0, 0, 0, 0]),
        check(
            trap::SetCallbacks {
                event: a,
                trap: b,
                stack: c,
            },
            [a, b, c, 0, 0, 0],
        ),
        check(trap::UpcallReturn { frame: a }, [a, 0, 0, 0, 0, 0]),
        check(
            mmu::Update {
                reqs: a,
                count: 3,
                done: c,
            },
            [a, 3, c, 0, 0, 0],
        ),
        check(mmu::Pin { mfn: a, level: 4 }, [a, 4, 0, 0, 0, 0]),
        check(mmu::Unpin { mfn: a }, [a, 0, 0, 0, 0, 0]),
        check(mmu::SwitchRoot { mfn: a }, [a, 0, 0, 0, 0, 0]),
        check(mmu::Invlpg { va: a }, [a, 0, 0, 0, 0, 0]),
        check(mmu::FlushTlb {}, [0; 6]),
        check(
            mmu::UpdateVaMapping {
                va: a,
                val: b,
                invlpg: true,
            },
            [a, b, mmu::UVM_INVLPG, 0, 0, 0],
        ),
        check(mmu::FrameInfo { mfn: a, out: b }, [a, b, 0, 0, 0, 0]),
        check(memory::Populate { list: a, count: 5 }, [a, 5, 0, 0, 0, 0]),
        check(memory::Release { list: a, count: 6 }, [a, 6, 0, 0, 0, 0]),
        check(memory::Info { out: a }, [a, 0, 0, 0, 0, 0]),
        check(
            grant::Access {
                mfn: a,
                grantee: 2,
                flags: grant::ACCESS_READONLY | grant::ACCESS_AT_REF,
                gref: 3,
            },
            [a, 2, 3, 3, 0, 0],
        ),
        check(grant::Revoke { gref: 17 }, [17, 0, 0, 0, 0, 0]),
        check(
            grant::Map {
                granter: 2,
                gref: 17,
                va: c,
                flags: grant::MAP_READONLY,
            },
            [2, 17, c, 1, 0, 0],
        ),
        check(grant::Unmap { handle: 4 }, [4, 0, 0, 0, 0, 0]),
        check(grant::Copy { ops: a, count: 64 }, [a, 64, 0, 0, 0, 0]),
        check(io::IrqAck { device: 3 }, [3, 0, 0, 0, 0, 0]),
    ];
    assert_eq!(seen.len(), Hypercall::ALL.len(), "one sample per call");
    for h in Hypercall::ALL {
        assert!(seen.contains(h), "{h:?} has no round-trip sample");
    }
}

#[test]
fn the_number_table_names_each_calls_argument_type() {
    assert_eq!(Hypercall::EventSend.args_type(), "crate::event::Send");
    assert_eq!(Hypercall::MmuFrameInfo.args_type(), "crate::mmu::FrameInfo");
    for h in Hypercall::ALL {
        assert!(h.args_type().starts_with("crate::"), "{h:?}");
    }
}

#[test]
fn decode_refuses_out_of_range_words_with_the_documented_error() {
    let w = |x: [u64; 3]| [x[0], x[1], x[2], 0, 0, 0];
    // SCHED-3a
    assert_eq!(
        sched::Shutdown::decode(w([3, 0, 0])),
        Err(Error::InvalidArgument)
    );
    // EVT-3
    assert_eq!(
        event::BindVirq::decode(w([1, 0, 0])),
        Err(Error::InvalidArgument)
    );
    // EVT-4/5/6: a port that cannot exist is not found.
    let huge = 1u64 << 32;
    assert_eq!(event::Send::decode(w([huge, 0, 0])), Err(Error::NotFound));
    assert_eq!(
        event::Close::decode(w([huge + 1, 0, 0])),
        Err(Error::NotFound)
    );
    assert_eq!(event::Unmask::decode(w([0, 0, 0])), Err(Error::NotFound));
    let top = u64::try_from(NR_PORTS).unwrap();
    // EVT-4a, EVT-5a: port 0 and ports from NR_PORTS up are refused by
    // the decode itself (the table would say the same); the rest decode.
    for bad in [0, top, top + 1, huge - 1, huge, u64::MAX] {
        assert_eq!(event::Send::decode(w([bad, 0, 0])), Err(Error::NotFound));
        assert_eq!(event::Close::decode(w([bad, 0, 0])), Err(Error::NotFound));
    }
    for good in [1, 2, top / 2, top - 1] {
        let port = u32::try_from(good).unwrap();
        assert_eq!(
            event::Send::decode(w([good, 0, 0])),
            Ok(event::Send { port })
        );
        assert_eq!(
            event::Close::decode(w([good, 0, 0])),
            Ok(event::Close { port })
        );
    }
    assert_eq!(event::Unmask::decode(w([top, 0, 0])), Err(Error::NotFound));
    assert_eq!(
        event::Unmask::decode(w([top - 1, 0, 0])).map(|u| u.port),
        Ok(u32::try_from(top - 1).unwrap())
    );
    // TRAP-1
    let bad = GUEST_VA_TOP;
    assert_eq!(
        trap::SetCallbacks::decode(w([bad, 0, 16])),
        Err(Error::BadAddress)
    );
    assert_eq!(
        trap::SetCallbacks::decode(w([0, 0, bad])),
        Err(Error::BadAddress)
    );
    assert_eq!(
        trap::SetCallbacks::decode(w([0, 0, 8])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        trap::SetCallbacks::decode(w([4096, 0, 0])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        trap::SetCallbacks::decode(w([0, 0, 0])),
        Ok(trap::SetCallbacks::default())
    );
    // MMU-22, MMU-26, MMU-28
    let max = mmu::MMU_BATCH_MAX;
    assert_eq!(
        mmu::Update::decode(w([0, max + 1, 0])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        mmu::Update::decode(w([0, max, 0])).map(|u| u.count),
        Ok(max)
    );
    assert_eq!(
        mmu::Invlpg::decode(w([bad, 0, 0])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        mmu::Invlpg::decode(w([bad - 1, 0, 0])).map(|i| i.va),
        Ok(bad - 1)
    );
    assert_eq!(
        mmu::UpdateVaMapping::decode(w([0, 0, 2])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        mmu::UpdateVaMapping::decode(w([0, 0, 0])).map(|u| u.invlpg),
        Ok(false)
    );
    // MEM-5, MEM-6
    let max = memory::MEMORY_BATCH_MAX;
    assert_eq!(
        memory::Populate::decode(w([0, max + 1, 0])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        memory::Release::decode(w([0, max + 1, 0])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        memory::Release::decode(w([0, max, 0])).map(|r| r.count),
        Ok(max)
    );
    // GNT-1: unknown flags; a reference by number outside the table.
    let at = grant::ACCESS_AT_REF;
    assert_eq!(
        grant::Access::decode([0, 2, 4, 0, 0, 0]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        grant::Access::decode([0, 2, at, u64::from(grant::MAX_GRANTS), 0, 0]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        grant::Access::decode([0, 2, at, u64::from(grant::MAX_GRANTS) - 1, 0, 0]).map(|a| a.gref),
        Ok(u64::from(grant::MAX_GRANTS) - 1)
    );
    // GNT-2: a reference that cannot be in a table is not found.
    assert_eq!(
        grant::Revoke::decode(w([u64::from(grant::MAX_GRANTS), 0, 0])),
        Err(Error::NotFound)
    );
    // GNT-3: unknown flags, an unaligned address.
    assert_eq!(
        grant::Map::decode([2, 16, 0x1000, 2, 0, 0]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        grant::Map::decode([2, 16, 0x1008, 0, 0, 0]),
        Err(Error::InvalidArgument)
    );
    // GNT-5: more than 64 elements.
    assert_eq!(
        grant::Copy::decode(w([0, grant::COPY_BATCH_MAX + 1, 0])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        grant::Copy::decode(w([0, grant::COPY_BATCH_MAX, 0])).map(|c| c.count),
        Ok(grant::COPY_BATCH_MAX)
    );
    // IO-1: a device index past the start-info table.
    assert_eq!(io::IrqAck::decode(w([4, 0, 0])), Err(Error::NotFound));
    assert_eq!(io::IrqAck::decode(w([1 << 32, 0, 0])), Err(Error::NotFound));
    assert_eq!(io::IrqAck::decode(w([3, 0, 0])).map(|a| a.device), Ok(3));
}
