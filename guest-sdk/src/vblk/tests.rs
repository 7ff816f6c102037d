use super::*;
use crate::blkback::{Conn, Extent, Next};
use core::cell::RefCell;
use hypercall_abi::ring::{RING_HEADER_SIZE, RSP_PROD_OFFSET};
use std::rc::Rc;
use std::vec::Vec;

use crate::ring::HostPage as Page;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Grant(u64, bool, u32),
    Revoke(u32),
    Notify,
}

/// A recording hypervisor: hands out references from 16 up, records
/// every call, and can be told to refuse.
#[derive(Default)]
struct Rec {
    log: Vec<Call>,
    next: u32,
    granted: Vec<u32>,
    refuse_grant_of: Option<u64>,
    refuse_with: Option<Error>,
    refuse_revoke: bool,
}
#[derive(Clone, Default)]
struct Hv(Rc<RefCell<Rec>>);
impl Host for Hv {
    fn grant(&mut self, mfn: u64, readonly: bool) -> Result<u32, Error> {
        let mut r = self.0.borrow_mut();
        if r.refuse_grant_of == Some(mfn) {
            return Err(r.refuse_with.unwrap_or(Error::PermissionDenied));
        }
        let g = 16 + r.next;
        r.next += 1;
        r.granted.push(g);
        r.log.push(Call::Grant(mfn, readonly, g));
        Ok(g)
    }
    fn revoke(&mut self, gref: u32) -> Result<(), Error> {
        let mut r = self.0.borrow_mut();
        r.log.push(Call::Revoke(gref));
        if r.refuse_revoke {
            return Err(Error::WrongState);
        }
        let i = r
            .granted
            .iter()
            .position(|&g| g == gref)
            .ok_or(Error::NotFound)?;
        r.granted.remove(i);
        Ok(())
    }
    fn notify(&mut self) -> Result<(), Error> {
        self.0.borrow_mut().log.push(Call::Notify);
        Ok(())
    }
}
impl Hv {
    fn notifies(&self) -> usize {
        self.0
            .borrow()
            .log
            .iter()
            .filter(|c| **c == Call::Notify)
            .count()
    }
    fn live_grants(&self) -> usize {
        self.0.borrow().granted.len()
    }
}

const GEO: Geometry = Geometry {
    capacity: 1024,
    readonly: false,
};
const EXT: Extent = Extent {
    first_sector: 0,
    capacity: 1024,
    readonly: false,
};

fn setup() -> (Rc<Page>, Hv, Core<Rc<Page>, Hv>) {
    let page = Rc::new(Page::new());
    let hv = Hv::default();
    let core = Core::new(page.clone(), hv.clone(), GEO);
    (page, hv, core)
}

impl SharedPage for Rc<Page> {
    fn load(&self, off: usize) -> u32 {
        (**self).load(off)
    }
    fn store(&self, off: usize, v: u32) {
        (**self).store(off, v)
    }
    fn full_barrier(&self) {}
    fn read(&self, off: usize, dst: &mut [u8]) {
        (**self).read(off, dst)
    }
    fn write(&self, off: usize, src: &[u8]) {
        (**self).write(off, src)
    }
}

/// Serves every request on the ring with `status` (no data moved).
fn serve_all(conn: &mut Conn<Rc<Page>>, status: Status) -> usize {
    let mut n = 0;
    while let Ok(next) = conn.take() {
        match next {
            Next::Serve(v) => conn.respond(&v, status).unwrap(),
            Next::Refused(_) => {}
            Next::Idle => break,
        }
        n += 1;
    }
    conn.publish().unwrap();
    n
}

#[test]
fn a_batch_of_32_costs_one_event_and_grants_are_given_back() {
    let (page, hv, mut core) = setup();
    let mut conn = Conn::attach(page.clone(), EXT);
    assert!(!conn.final_check().unwrap(), "the backend sleeps");
    let mut tags = Vec::new();
    for i in 0..RING_DEPTH {
        let t = core
            .read(u64::from(i) * 8, &[PageRef::whole(100 + u64::from(i))])
            .unwrap();
        tags.push(t);
    }
    assert_eq!(
        core.read(0, &[PageRef::whole(1)]),
        Err(VblkError::Busy),
        "depth 32 is the ring"
    );
    core.kick().unwrap();
    assert_eq!(hv.notifies(), 1, "one event for the batch");
    core.kick().unwrap();
    assert_eq!(hv.notifies(), 1, "nothing new, no event");
    assert_eq!(hv.live_grants(), 32);
    // Reads grant writable.
    assert!(matches!(hv.0.borrow().log[0], Call::Grant(100, false, _)));
    assert_eq!(serve_all(&mut conn, Status::Ok), 32);
    let mut done = Vec::new();
    while let Some(d) = core.poll().unwrap() {
        assert_eq!(d.result, Ok(()));
        assert!(!d.leaked);
        done.push(d.tag);
    }
    assert_eq!(done, tags);
    assert_eq!(hv.live_grants(), 0);
    assert_eq!(core.in_flight(), 0);
}

/// The backend's view of a request: the references of its segments.
fn take_grefs(conn: &mut Conn<Rc<Page>>) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    while let Ok(Next::Serve(v)) = conn.take() {
        out.push(v.segments().iter().map(|s| s.gref).collect());
        conn.respond(&v, Status::Ok).unwrap();
    }
    conn.publish().unwrap();
    out
}

#[test]
fn persistent_pages_replace_per_request_grants_and_are_never_shared() {
    let (page, hv, mut core) = setup();
    let mut conn = Conn::attach(page.clone(), EXT);
    let pool: Vec<u32> = (500..532).collect();
    assert!(core.set_pool(pool.clone()));
    // Three rounds of a full ring of one-page reads and writes: no
    // grant or revoke at all, each in-flight request on its own page.
    for round in 0..3u64 {
        let mut tags = Vec::new();
        for i in 0..RING_DEPTH {
            let p = [PageRef::whole(100 + u64::from(i))];
            let t = if (round + u64::from(i)) % 2 == 0 {
                core.read(u64::from(i) * 8, &p)
            } else {
                core.write(u64::from(i) * 8, &p)
            };
            tags.push(t.unwrap());
        }
        let mut used: Vec<u8> = tags.iter().map(|&t| core.pooled(t).unwrap()[0]).collect();
        assert!(tags.iter().all(|&t| core.pooled(t).unwrap()[1..]
            .iter()
            .all(|&k| k == NOT_POOLED)));
        used.sort_unstable();
        used.dedup();
        assert_eq!(used.len(), 32, "no page shared by two requests");
        core.kick().unwrap();
        let seen = take_grefs(&mut conn);
        assert_eq!(seen.len(), 32);
        for g in &seen {
            assert!(pool.contains(&g[0]), "segment names a persistent page");
        }
        while let Some(d) = core.poll().unwrap() {
            assert_eq!(d.result, Ok(()));
            assert_ne!(d.pooled[0], NOT_POOLED);
        }
        assert_eq!(core.in_flight(), 0);
    }
    assert_eq!(
        hv.0.borrow()
            .log
            .iter()
            .filter(|c| !matches!(c, Call::Notify))
            .count(),
        0
    );
    assert_eq!(core.request_grants(), 0);
    assert_eq!(hv.live_grants(), 0);
}

#[test]
fn a_request_too_big_for_the_free_pages_grants_its_own_frames() {
    let (page, hv, mut core) = setup();
    let mut conn = Conn::attach(page.clone(), EXT);
    assert!(core.set_pool(vec![500, 501, 502]));
    let two = [PageRef::whole(10), PageRef::whole(11)];
    let a = core.write(0, &two).unwrap();
    assert_eq!(core.pooled(a).unwrap()[..2], [0, 1]);
    // One page left: a two-page request is all granted, none pooled.
    let b = core.read(16, &two).unwrap();
    assert_eq!(core.pooled(b).unwrap(), [NOT_POOLED; MAX_SEGMENTS]);
    assert_eq!(hv.live_grants(), 2);
    assert_eq!(core.request_grants(), 2);
    // A one-page request still finds the last page.
    let c = core.read(32, &[PageRef::whole(12)]).unwrap();
    assert_eq!(core.pooled(c).unwrap()[0], 2);
    core.kick().unwrap();
    let seen = take_grefs(&mut conn);
    assert_eq!(seen[0], [500, 501]);
    assert!(!seen[1].iter().any(|g| (500..503).contains(g)));
    assert_eq!(seen[2], [502]);
    let mut n = 0;
    while core.poll().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(hv.live_grants(), 0, "the request's own grants revoked");
    // Every page is free again: a full ring of one-page requests fits
    // three, the rest grant.
    for i in 0..3 {
        let t = core.read(i * 8, &[PageRef::whole(20)]).unwrap();
        assert_ne!(core.pooled(t).unwrap()[0], NOT_POOLED);
    }
    assert!(!core.set_pool(vec![1]), "not while requests are in flight");
}

#[test]
fn a_disconnect_gives_the_persistent_pages_back_and_revokes_none() {
    let (_page, hv, mut core) = setup();
    assert!(core.set_pool((500..504).collect()));
    for i in 0..4 {
        core.write(i * 8, &[PageRef::whole(30)]).unwrap();
    }
    let mut done = Vec::new();
    core.fail_all(|d| done.push(d));
    assert_eq!(done.len(), 4);
    assert!(done.iter().all(|d| d.result == Err(VblkError::Disconnected)
        && !d.leaked
        && d.pooled[0] != NOT_POOLED));
    assert!(
        hv.0.borrow().log.is_empty(),
        "no revoke of a persistent page"
    );
    assert_eq!(core.in_flight(), 0);
    assert!(core.set_pool(Vec::new()), "nothing in flight");
}

#[test]
fn writes_grant_read_only_and_statuses_come_back_exactly() {
    let (page, hv, mut core) = setup();
    let mut conn = Conn::attach(page.clone(), EXT);
    let w = core.write(8, &[PageRef::whole(7)]).unwrap();
    core.kick().unwrap();
    assert!(matches!(hv.0.borrow().log[0], Call::Grant(7, true, _)));
    serve_all(&mut conn, Status::IoError);
    let d = core.poll().unwrap().unwrap();
    assert_eq!(
        (d.tag, d.result),
        (w, Err(VblkError::Refused(Status::IoError)))
    );
    // A flush has no pages and no grants.
    let f = core.flush().unwrap();
    core.kick().unwrap();
    serve_all(&mut conn, Status::Ok);
    assert_eq!(core.poll().unwrap().unwrap().tag, f);
    assert_eq!(
        hv.0.borrow()
            .log
            .iter()
            .filter(|c| matches!(c, Call::Grant(..)))
            .count(),
        1
    );
}

#[test]
fn this_side_refuses_what_the_backend_would() {
    let (_page, hv, mut core) = setup();
    let bad = |f, l| PageRef {
        mfn: 1,
        first_sect: f,
        last_sect: l,
    };
    assert_eq!(core.read(0, &[]), Err(VblkError::Invalid));
    assert_eq!(core.read(0, &[bad(3, 2)]), Err(VblkError::Invalid));
    assert_eq!(core.read(0, &[bad(0, 8)]), Err(VblkError::Invalid));
    assert_eq!(
        core.read(1017, &[PageRef::whole(1)]),
        Err(VblkError::Invalid)
    );
    assert_eq!(core.read(u64::MAX, &[bad(0, 0)]), Err(VblkError::Invalid));
    assert_eq!(
        core.read(0, &[PageRef::whole(1); 12]),
        Err(VblkError::Invalid)
    );
    let mut ro = Core::new(
        Rc::new(Page::new()),
        hv.clone(),
        Geometry {
            readonly: true,
            ..GEO
        },
    );
    assert_eq!(ro.write(0, &[PageRef::whole(1)]), Err(VblkError::Invalid));
    assert!(
        hv.0.borrow().log.is_empty(),
        "nothing granted, nothing sent"
    );
    // The unchecked path sends it, for the backend to refuse.
    assert!(ro
        .submit_unchecked(OP_WRITE, 0, &[PageRef::whole(1)])
        .is_ok());
}

#[test]
fn a_refused_grant_sends_nothing_and_gives_back_the_others() {
    let (page, hv, mut core) = setup();
    hv.0.borrow_mut().refuse_grant_of = Some(3);
    let pages = [PageRef::whole(1), PageRef::whole(2), PageRef::whole(3)];
    assert_eq!(
        core.read(0, &pages),
        Err(VblkError::Grant(Error::PermissionDenied))
    );
    assert_eq!(hv.live_grants(), 0);
    core.kick().unwrap();
    let mut conn = Conn::attach(page, EXT);
    assert_eq!(conn.take(), Ok(Next::Idle), "no request was published");
}

/// A hostile backend writing its own responses in the ring.
fn put(page: &Page, i: u32, rsp: Response) {
    let off = RING_HEADER_SIZE + (i as usize % 32) * 112;
    page.write(off, zerocopy::IntoBytes::as_bytes(&rsp));
    page.store(RSP_PROD_OFFSET, i + 1);
}

fn rsp(id: u64, op: u8, status: i16) -> Response {
    Response {
        id,
        op,
        status,
        ..Default::default()
    }
}

#[test]
fn an_undefined_status_is_an_error_not_success() {
    let (page, _hv, mut core) = setup();
    let t = core.read(0, &[PageRef::whole(1)]).unwrap();
    core.kick().unwrap();
    put(&page, 0, rsp(t.0, OP_READ, 77));
    let d = core.poll().unwrap().unwrap();
    assert_eq!((d.tag, d.result), (t, Err(VblkError::BadStatus(77))));
    assert!(!core.is_disconnected(), "the protocol itself held");
}

#[test]
fn an_unknown_id_or_op_disconnects_and_fails_everything_no_hang() {
    for bogus in [
        |t: Tag| rsp(t.0 ^ 0x100, OP_READ, 0), // right slot, stale generation
        |t: Tag| rsp(t.0 + 5, OP_READ, 0),     // a slot not in use
        |_: Tag| rsp(u64::MAX, OP_READ, 0),
        |t: Tag| rsp(t.0, OP_WRITE, 0), // the right id, another op
    ] {
        let (page, hv, mut core) = setup();
        let t = core.read(0, &[PageRef::whole(1)]).unwrap();
        let t2 = core.write(8, &[PageRef::whole(2)]).unwrap();
        core.kick().unwrap();
        let r = bogus(t);
        put(&page, 0, r);
        assert_eq!(core.poll(), Err(VblkError::BadResponse { id: r.id }));
        assert_eq!(core.poll(), Err(VblkError::Disconnected));
        let mut failed = Vec::new();
        core.fail_all(|d| failed.push((d.tag, d.result)));
        assert_eq!(
            failed,
            [
                (t, Err(VblkError::Disconnected)),
                (t2, Err(VblkError::Disconnected))
            ]
        );
        assert_eq!(core.in_flight(), 0);
        assert_eq!(hv.live_grants(), 0, "grants given back");
        assert_eq!(
            core.read(0, &[PageRef::whole(1)]),
            Err(VblkError::Disconnected)
        );
    }
}

#[test]
fn more_responses_than_requests_disconnects() {
    let (page, _hv, mut core) = setup();
    let t = core.read(0, &[PageRef::whole(1)]).unwrap();
    core.kick().unwrap();
    page.store(RSP_PROD_OFFSET, 40);
    assert_eq!(core.poll(), Err(VblkError::Disconnected));
    let mut failed = Vec::new();
    core.fail_all(|d| failed.push(d.tag));
    assert_eq!(failed, [t]);
}

#[test]
fn a_backend_that_no_longer_exists_disconnects() {
    let (_page, hv, mut core) = setup();
    let t = core.read(0, &[PageRef::whole(1)]).unwrap();
    core.kick().unwrap();
    // The backend died: granting to it is `not_found` (GNT-1).
    hv.0.borrow_mut().refuse_grant_of = Some(2);
    hv.0.borrow_mut().refuse_with = Some(Error::NotFound);
    assert_eq!(
        core.read(8, &[PageRef::whole(2)]),
        Err(VblkError::Disconnected)
    );
    assert!(core.is_disconnected());
    let mut failed = Vec::new();
    core.fail_all(|d| failed.push((d.tag, d.result)));
    assert_eq!(failed, [(t, Err(VblkError::Disconnected))]);
}

#[test]
fn an_unrevocable_grant_is_reported_as_leaked() {
    let (page, hv, mut core) = setup();
    let mut conn = Conn::attach(page.clone(), EXT);
    core.read(0, &[PageRef::whole(1)]).unwrap();
    core.kick().unwrap();
    serve_all(&mut conn, Status::Ok);
    hv.0.borrow_mut().refuse_revoke = true;
    let d = core.poll().unwrap().unwrap();
    assert!(d.leaked);
    assert_eq!(d.result, Ok(()));
}

#[test]
fn sleeping_asks_for_an_event_and_misses_none() {
    let (page, _hv, mut core) = setup();
    let mut conn = Conn::attach(page.clone(), EXT);
    core.read(0, &[PageRef::whole(1)]).unwrap();
    core.kick().unwrap();
    assert!(!core.final_check().unwrap(), "nothing yet: sleep");
    let Ok(Next::Serve(v)) = conn.take() else {
        panic!()
    };
    conn.respond(&v, Status::Ok).unwrap();
    assert!(
        conn.publish().unwrap(),
        "the frontend asked: the backend notifies"
    );
    assert!(core.final_check().unwrap());
}

/// The real `Host` against the SDK's recording fake: the grants and
/// events the frontend makes, word for word.
#[test]
fn the_hypervisor_sees_grants_of_the_right_kind_and_one_event() {
    use crate::fake::{ok, Fake};
    use hypercall_abi::grant::ACCESS_READONLY;
    use hypercall_abi::Hypercall;
    let mut next = 16;
    let fake = Fake::install(move |call, _a, _| match call {
        Some(Hypercall::GrantAccess) => {
            next += 1;
            ok(next - 1)
        }
        Some(Hypercall::GrantRevoke) | Some(Hypercall::EventSend) => ok(0),
        c => panic!("unexpected {c:?}"),
    });
    let page = Rc::new(Page::new());
    let host = Hyper {
        backend: 1,
        port: Port(5),
        events: 0,
    };
    let mut core = Core::new(page.clone(), host, GEO);
    let mut conn = Conn::attach(page.clone(), EXT);
    assert!(!conn.final_check().unwrap());
    core.read(0, &[PageRef::whole(0x100)]).unwrap();
    core.write(8, &[PageRef::whole(0x101), PageRef::whole(0x102)])
        .unwrap();
    core.kick().unwrap();
    assert_eq!(
        fake.calls(),
        [
            (Hypercall::GrantAccess, [0x100, 1, 0, 0, 0, 0]),
            (Hypercall::GrantAccess, [0x101, 1, ACCESS_READONLY, 0, 0, 0]),
            (Hypercall::GrantAccess, [0x102, 1, ACCESS_READONLY, 0, 0, 0]),
            (Hypercall::EventSend, [5, 0, 0, 0, 0, 0]),
        ]
    );
    assert_eq!(core.host_ref().events, 1);
    serve_all(&mut conn, Status::Ok);
    while core.poll().unwrap().is_some() {}
    let revoked: Vec<u64> = fake
        .calls()
        .iter()
        .filter(|(c, _)| *c == Hypercall::GrantRevoke)
        .map(|(_, a)| a[0])
        .collect();
    assert_eq!(revoked, [16, 17, 18], "every grant given back");
}

#[test]
fn ids_are_reused_with_a_new_generation() {
    let (page, _hv, mut core) = setup();
    let mut conn = Conn::attach(page.clone(), EXT);
    let a = core.read(0, &[PageRef::whole(1)]).unwrap();
    core.kick().unwrap();
    serve_all(&mut conn, Status::Ok);
    core.poll().unwrap().unwrap();
    let b = core.read(0, &[PageRef::whole(1)]).unwrap();
    assert_eq!(a.slot(), b.slot());
    assert_ne!(a, b);
    assert!(!core.is_outstanding(a) && core.is_outstanding(b));
}
