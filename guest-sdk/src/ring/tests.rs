use super::*;
use core::cell::RefCell;
use hypercall_abi::ring::RING_HEADER_SIZE;
use proptest::prelude::*;
use zerocopy::{Immutable, KnownLayout};

/// A block-like protocol: 32-byte requests, 16-byte responses.
struct Blk;
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Req {
    id: u64,
    sector: u64,
    len: u32,
    op: u32,
    pad: u64,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Rsp {
    id: u64,
    status: i32,
    pad: u32,
}
impl RingProtocol for Blk {
    type Req = Req;
    type Rsp = Rsp;
}
const N: u32 = Blk::SLOTS;

fn req(id: u64) -> Req {
    Req {
        id,
        sector: id * 8,
        len: 512,
        op: 1,
        pad: 0,
    }
}

/// A page model that records every slot read, so tests can prove that a
/// consumer reads each slot once, and lets a hostile peer poke it.
struct TestPage {
    bytes: RefCell<Vec<u8>>,
    slot_reads: RefCell<Vec<usize>>,
}

impl TestPage {
    fn new() -> Self {
        TestPage {
            bytes: RefCell::new(vec![0xAA; RING_PAGE_SIZE]),
            slot_reads: RefCell::new(vec![]),
        }
    }
    fn poke(&self, off: usize, v: u32) {
        self.bytes.borrow_mut()[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn peek(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes.borrow()[off..off + 4].try_into().unwrap())
    }
    fn reads_of(&self, off: usize) -> usize {
        self.slot_reads
            .borrow()
            .iter()
            .filter(|&&o| o == off)
            .count()
    }
}

impl SharedPage for TestPage {
    fn load(&self, off: usize) -> u32 {
        self.peek(off)
    }
    fn store(&self, off: usize, value: u32) {
        self.poke(off, value)
    }
    fn full_barrier(&self) {}
    fn read(&self, off: usize, dst: &mut [u8]) {
        assert!(off >= RING_HEADER_SIZE, "slot read in the header");
        self.slot_reads.borrow_mut().push(off);
        dst.copy_from_slice(&self.bytes.borrow()[off..off + dst.len()]);
    }
    fn write(&self, off: usize, src: &[u8]) {
        self.bytes.borrow_mut()[off..off + src.len()].copy_from_slice(src);
    }
}

#[test]
fn one_batch_costs_one_event_each_way() {
    let page = TestPage::new();
    let mut front = FrontEnd::<Blk, _>::init(&page);
    let mut back = BackEnd::<Blk, _>::attach(&page);
    assert!(
        !back.final_check().unwrap(),
        "empty ring: the backend sleeps"
    );
    for i in 0..N {
        front.push_request(&req(i.into())).unwrap();
    }
    assert_eq!(front.push_request(&req(99)), Err(RingError::Full));
    assert!(
        front.publish().unwrap(),
        "the sleeping backend is notified once"
    );
    assert!(!front.publish().unwrap(), "nothing new: no second event");
    let mut seen = vec![];
    while let Some(r) = back.take_request().unwrap() {
        seen.push(r.id);
        back.push_response(&Rsp {
            id: r.id,
            status: 0,
            pad: 0,
        })
        .unwrap();
    }
    assert_eq!(seen, (0..u64::from(N)).collect::<Vec<_>>());
    assert!(!front.final_check().unwrap(), "no responses published yet");
    assert!(
        back.publish().unwrap(),
        "the sleeping frontend is notified once"
    );
    let mut got = 0;
    while let Some(r) = front.take_response().unwrap() {
        assert_eq!(r.id, got);
        got += 1;
    }
    assert_eq!(got, u64::from(N));
    assert_eq!(front.free_slots(), N);
}

#[test]
fn no_event_while_the_backend_is_busy() {
    let page = TestPage::new();
    let mut front = FrontEnd::<Blk, _>::init(&page);
    let mut back = BackEnd::<Blk, _>::attach(&page);
    front.push_request(&req(1)).unwrap();
    assert!(
        front.publish().unwrap(),
        "initial req_event = 1 asks for the first"
    );
    assert!(back.take_request().unwrap().is_some());
    // The backend has not re-armed (it is still working): no event.
    front.push_request(&req(2)).unwrap();
    assert!(!front.publish().unwrap());
    // It finds the request on its final check instead of sleeping.
    assert!(back.final_check().unwrap());
}

#[test]
fn final_check_catches_a_request_published_during_rearm() {
    let page = TestPage::new();
    let mut front = FrontEnd::<Blk, _>::init(&page);
    let mut back = BackEnd::<Blk, _>::attach(&page);
    front.push_request(&req(1)).unwrap();
    front.publish().unwrap();
    back.take_request().unwrap().unwrap();
    // The frontend publishes before the backend sets req_event: no
    // event is sent, so the backend's second look must find it.
    front.push_request(&req(2)).unwrap();
    assert!(!front.publish().unwrap());
    assert!(back.final_check().unwrap());
    assert_eq!(back.take_request().unwrap().unwrap().id, 2);
}

#[test]
fn indices_wrap_around_u32() {
    let page = TestPage::new();
    let mut front = FrontEnd::<Blk, _>::init(&page);
    let mut back = BackEnd::<Blk, _>::attach(&page);
    let start = u32::MAX - 3;
    front.req_prod_pvt = start;
    front.req_published = start;
    front.rsp_cons = start;
    back.req_cons = start;
    back.rsp_prod_pvt = start;
    back.rsp_published = start;
    page.poke(REQ_PROD_OFFSET, start);
    page.poke(RSP_PROD_OFFSET, start);
    for i in 0..10 {
        front.push_request(&req(i)).unwrap();
    }
    front.publish().unwrap();
    for i in 0..10 {
        let r = back.take_request().unwrap().unwrap();
        assert_eq!(r.id, i);
        back.push_response(&Rsp {
            id: r.id,
            status: 0,
            pad: 0,
        })
        .unwrap();
    }
    back.publish().unwrap();
    for i in 0..10 {
        assert_eq!(front.take_response().unwrap().unwrap().id, i);
    }
    assert_eq!(page.peek(REQ_PROD_OFFSET), start.wrapping_add(10));
}

// ----- a hostile peer -----

#[test]
fn hostile_frontend_insane_producer_index_disconnects() {
    for insane in [N + 1, N + 2, u32::MAX, u32::MAX / 2, 0x8000_0000] {
        let page = TestPage::new();
        let _front = FrontEnd::<Blk, _>::init(&page);
        let mut back = BackEnd::<Blk, _>::attach(&page);
        page.poke(REQ_PROD_OFFSET, insane);
        assert_eq!(
            back.take_request(),
            Err(RingError::Overrun {
                prod: insane,
                cons: 0
            })
        );
        assert!(back.is_disconnected());
        assert!(
            page.slot_reads.borrow().is_empty(),
            "no slot read for an overrun"
        );
        // Disconnected for good, even if the index becomes sane again.
        page.poke(REQ_PROD_OFFSET, 1);
        assert_eq!(back.take_request(), Err(RingError::Disconnected));
        assert_eq!(back.final_check(), Err(RingError::Disconnected));
        assert_eq!(back.publish(), Err(RingError::Disconnected));
        assert!(page.slot_reads.borrow().is_empty());
    }
}

#[test]
fn hostile_frontend_overwriting_unanswered_slots_disconnects() {
    let page = TestPage::new();
    let mut front = FrontEnd::<Blk, _>::init(&page);
    let mut back = BackEnd::<Blk, _>::attach(&page);
    for i in 0..N {
        front.push_request(&req(i.into())).unwrap();
    }
    front.publish().unwrap();
    // The backend consumes all N but answers none; the frontend now
    // claims one more request, which would reuse an unanswered slot.
    for _ in 0..N {
        back.take_request().unwrap().unwrap();
    }
    page.poke(REQ_PROD_OFFSET, N + 1);
    assert_eq!(
        back.take_request(),
        Err(RingError::Overrun {
            prod: N + 1,
            cons: N
        })
    );
}

#[test]
fn hostile_frontend_moving_its_index_backwards_disconnects() {
    let page = TestPage::new();
    let mut front = FrontEnd::<Blk, _>::init(&page);
    let mut back = BackEnd::<Blk, _>::attach(&page);
    for i in 0..4 {
        front.push_request(&req(i)).unwrap();
    }
    front.publish().unwrap();
    for _ in 0..4 {
        back.take_request().unwrap().unwrap();
    }
    page.poke(REQ_PROD_OFFSET, 2);
    assert!(matches!(
        back.take_request(),
        Err(RingError::Overrun { prod: 2, cons: 4 })
    ));
}

#[test]
fn a_request_changed_after_publication_changes_nothing() {
    let page = TestPage::new();
    let mut front = FrontEnd::<Blk, _>::init(&page);
    let mut back = BackEnd::<Blk, _>::attach(&page);
    let original = req(7);
    front.push_request(&original).unwrap();
    front.publish().unwrap();
    let copy = back.take_request().unwrap().unwrap();
    // The frontend rewrites the slot after the backend's copy (the
    // double-fetch attack): a huge length and another sector.
    let slot = slot_offset(0, N, Blk::SLOT_SIZE);
    let evil = Req {
        id: 7,
        sector: u64::MAX,
        len: u32::MAX,
        op: 1,
        pad: 0,
    };
    page.write(slot, evil.as_bytes());
    // The backend validates and serves its private copy only...
    assert_eq!(copy, original);
    assert!(copy.len == 512 && copy.sector == 56);
    back.push_response(&Rsp {
        id: copy.id,
        status: 0,
        pad: 0,
    })
    .unwrap();
    back.publish().unwrap();
    while back.take_request().unwrap().is_some() {}
    // ...and read the slot exactly once.
    assert_eq!(page.reads_of(slot), 1);
}

#[test]
fn event_storm_costs_nothing_and_changes_nothing() {
    let page = TestPage::new();
    let mut front = FrontEnd::<Blk, _>::init(&page);
    let mut back = BackEnd::<Blk, _>::attach(&page);
    front.push_request(&req(1)).unwrap();
    front.publish().unwrap();
    let mut served = 0;
    // 10,000 spurious wake-ups: each finds at most the one request.
    for _ in 0..10_000 {
        while let Some(r) = back.take_request().unwrap() {
            back.push_response(&Rsp {
                id: r.id,
                status: 0,
                pad: 0,
            })
            .unwrap();
            served += 1;
        }
        back.final_check().unwrap();
    }
    assert_eq!(served, 1);
    assert_eq!(page.slot_reads.borrow().len(), 1);
    assert!(!back.is_disconnected());
}

#[test]
fn hostile_backend_answering_more_than_asked_disconnects() {
    let page = TestPage::new();
    let mut front = FrontEnd::<Blk, _>::init(&page);
    front.push_request(&req(1)).unwrap();
    front.publish().unwrap();
    for insane in [2, N, u32::MAX] {
        page.poke(RSP_PROD_OFFSET, insane);
        let mut f2 = FrontEnd::<Blk, _> {
            mem: &page,
            req_prod_pvt: 1,
            req_published: 1,
            rsp_cons: 0,
            disconnected: false,
            _p: PhantomData,
        };
        assert_eq!(
            f2.take_response(),
            Err(RingError::Overrun {
                prod: insane,
                cons: 0
            })
        );
        assert_eq!(f2.final_check(), Err(RingError::Disconnected));
    }
    page.poke(RSP_PROD_OFFSET, 5);
    assert!(front.take_response().is_err());
    assert!(front.is_disconnected());
    assert_eq!(front.push_request(&req(2)), Err(RingError::Disconnected));
}

#[test]
fn a_response_without_a_request_is_refused() {
    let page = TestPage::new();
    let _front = FrontEnd::<Blk, _>::init(&page);
    let mut back = BackEnd::<Blk, _>::attach(&page);
    assert_eq!(
        back.push_response(&Rsp {
            id: 0,
            status: 0,
            pad: 0
        }),
        Err(RingError::NoRequest)
    );
    assert!(!back.is_disconnected());
}

#[test]
fn the_real_page_type_works_on_a_host_page() {
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);
    let mut page = Box::new(Page([0xFF; 4096]));
    let base = page.0.as_mut_ptr();
    // SAFETY: `base` is a page-aligned, live 4 KiB allocation that
    // outlives both `RingPage`s and is not otherwise accessed while they
    // live.
    let (a, b) = unsafe { (RingPage::new(base).unwrap(), RingPage::new(base).unwrap()) };
    // SAFETY: a misaligned pointer is refused before any access.
    assert!(unsafe { RingPage::new(base.wrapping_add(8)) }.is_none());
    let mut front = FrontEnd::<Blk, _>::init(a);
    let mut back = BackEnd::<Blk, _>::attach(b);
    front.push_request(&req(3)).unwrap();
    assert!(front.publish().unwrap());
    assert_eq!(back.take_request().unwrap(), Some(req(3)));
    back.push_response(&Rsp {
        id: 3,
        status: -5,
        pad: 0,
    })
    .unwrap();
    assert!(back.publish().unwrap());
    assert_eq!(
        front.take_response().unwrap(),
        Some(Rsp {
            id: 3,
            status: -5,
            pad: 0
        })
    );
    let _ = (front, back);
    assert_eq!(&page.0[0..4], &1u32.to_le_bytes());
}

// ----- random interleavings against a model -----

#[derive(Clone, Debug)]
enum Op {
    /// The frontend pushes this many requests and publishes.
    Push(u8),
    /// The backend consumes up to this many requests.
    Take(u8),
    /// The backend answers up to this many and publishes.
    Answer(u8),
    /// The frontend consumes up to this many responses.
    Reap(u8),
    /// The backend goes to sleep if its final check says so.
    BackSleep,
    /// The frontend goes to sleep if its final check says so.
    FrontSleep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..40).prop_map(Op::Push),
        (1u8..40).prop_map(Op::Take),
        (1u8..40).prop_map(Op::Answer),
        (1u8..40).prop_map(Op::Reap),
        Just(Op::BackSleep),
        Just(Op::FrontSleep),
    ]
}

proptest! {
    /// Whatever the interleaving: requests arrive in order, each once;
    /// responses match; a sleeping side is always woken when work
    /// arrives for it (no lost wake-up); and events are only sent to a
    /// side that asked.
    #[test]
    fn interleavings_match_the_model(start in any::<u32>(), ops in prop::collection::vec(op(), 1..200)) {
        let page = TestPage::new();
        let mut front = FrontEnd::<Blk, _>::init(&page);
        let mut back = BackEnd::<Blk, _>::attach(&page);
        // Start anywhere in the index space, to cross the wrap.
        front.req_prod_pvt = start; front.req_published = start; front.rsp_cons = start;
        back.req_cons = start; back.rsp_prod_pvt = start; back.rsp_published = start;
        page.poke(REQ_PROD_OFFSET, start); page.poke(RSP_PROD_OFFSET, start);
        page.poke(REQ_EVENT_OFFSET, start.wrapping_add(1));
        page.poke(RSP_EVENT_OFFSET, start.wrapping_add(1));

        let mut next_id = 0u64;
        let mut sent = std::collections::VecDeque::new(); // published, not taken
        let mut taken = std::collections::VecDeque::new(); // taken, not answered
        let mut answered = std::collections::VecDeque::new(); // published responses
        let (mut back_asleep, mut front_asleep) = (false, false);

        for op in ops {
            match op {
                Op::Push(n) => {
                    let mut pushed = 0;
                    for _ in 0..n {
                        match front.push_request(&req(next_id)) {
                            Ok(()) => { sent.push_back(next_id); next_id += 1; pushed += 1; }
                            Err(RingError::Full) => break,
                            Err(e) => prop_assert!(false, "push: {e:?}"),
                        }
                    }
                    let notify = front.publish().unwrap();
                    if back_asleep && pushed > 0 {
                        prop_assert!(notify, "lost wake-up: the backend sleeps on a non-empty ring");
                    }
                    if notify { back_asleep = false; }
                }
                Op::Take(n) => {
                    prop_assert!(!back_asleep || sent.is_empty());
                    for _ in 0..n {
                        match back.take_request().unwrap() {
                            Some(r) => {
                                prop_assert_eq!(Some(r.id), sent.pop_front());
                                prop_assert_eq!(r, req(r.id));
                                taken.push_back(r.id);
                            }
                            None => { prop_assert!(sent.is_empty()); break; }
                        }
                    }
                }
                Op::Answer(n) => {
                    let mut pushed = 0;
                    for _ in 0..n {
                        let Some(id) = taken.pop_front() else { break };
                        back.push_response(&Rsp { id, status: 0, pad: 0 }).unwrap();
                        answered.push_back(id);
                        pushed += 1;
                    }
                    let notify = back.publish().unwrap();
                    if front_asleep && pushed > 0 {
                        prop_assert!(notify, "lost wake-up: the frontend sleeps on responses");
                    }
                    if notify { front_asleep = false; }
                }
                Op::Reap(n) => {
                    for _ in 0..n {
                        match front.take_response().unwrap() {
                            Some(r) => prop_assert_eq!(Some(r.id), answered.pop_front()),
                            None => { prop_assert!(answered.is_empty()); break; }
                        }
                    }
                }
                Op::BackSleep => {
                    let busy = back.final_check().unwrap();
                    prop_assert_eq!(busy, !sent.is_empty());
                    back_asleep = !busy;
                }
                Op::FrontSleep => {
                    let busy = front.final_check().unwrap();
                    prop_assert_eq!(busy, !answered.is_empty());
                    front_asleep = !busy;
                }
            }
            prop_assert!(!front.is_disconnected() && !back.is_disconnected());
            prop_assert_eq!(
                front.free_slots() as usize,
                N as usize - sent.len() - taken.len() - answered.len()
            );
        }
    }

    /// A hostile frontend writing any producer index: the backend never
    /// panics, never reads a slot beyond what it may, and either serves
    /// sane requests or disconnects.
    #[test]
    fn any_producer_index_is_served_or_refused(prods in prop::collection::vec(any::<u32>(), 1..50)) {
        let page = TestPage::new();
        let _front = FrontEnd::<Blk, _>::init(&page);
        let mut back = BackEnd::<Blk, _>::attach(&page);
        let mut taken = 0u32;
        for p in prods {
            let p = if p % 2 == 0 { taken.wrapping_add(p % (N + 2)) } else { p };
            page.poke(REQ_PROD_OFFSET, p);
            loop {
                match back.take_request() {
                    Ok(Some(_)) => {
                        taken += 1;
                        back.push_response(&Rsp { id: 0, status: 0, pad: 0 }).unwrap();
                    }
                    Ok(None) => break,
                    Err(RingError::Overrun { .. }) | Err(RingError::Disconnected) => {
                        prop_assert!(back.is_disconnected());
                        break;
                    }
                    Err(e) => prop_assert!(false, "{e:?}"),
                }
            }
        }
        prop_assert_eq!(page.slot_reads.borrow().len(), taken as usize);
    }
}
