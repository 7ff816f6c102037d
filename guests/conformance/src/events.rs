//! Clauses of `docs/abi/events.md`: one function per clause.

#[allow(unused_imports)]
use crate::*;

// ---------------------------------------------------------------- helpers of the EVT clauses

/// Calls of [`on_hit`], the ports it saw in order, and a port it raises
/// again from inside the handler (0: none).
pub static HITS: AtomicU64 = AtomicU64::new(0);
pub static ORDER: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
pub static RERAISE: AtomicU64 = AtomicU64::new(0);
pub fn on_hit(p: Port) {
    let n = HITS.fetch_add(1, SeqCst);
    if (n as usize) < ORDER.len() {
        ORDER[n as usize].store(u64::from(p.0), SeqCst);
    }
    let r = RERAISE.swap(0, SeqCst);
    if r != 0 {
        let _ = send(r);
    }
}
/// Forgets the hits seen so far.
pub fn reset_hits() {
    HITS.store(0, SeqCst);
    for o in &ORDER {
        o.store(0, SeqCst);
    }
}

/// Port numbers that never name a port (and `extra`).
pub fn bad_ports(extra: &[u64]) -> Vec<u64> {
    let mut v = alloc::vec![
        0u64,
        NR_PORTS as u64,
        NR_PORTS as u64 + 1,
        u32::MAX as u64,
        1 << 32,
        u64::MAX
    ];
    v.extend_from_slice(extra);
    v
}

/// Events seen on the `link` channel.
pub static LINK: AtomicU64 = AtomicU64::new(0);
pub fn on_link(_: Port) {
    LINK.fetch_add(1, SeqCst);
}

/// Sends on `link` and waits (5 s at most) for the helper's answer.
pub fn link_round_trip(ck: &mut Ck, port: Port) {
    let n = LINK.load(SeqCst);
    ck.eq("send on link", send(port.0.into()), Ok(0));
    event::wait_for_until(|| LINK.load(SeqCst) > n, now() + 5_000 * MS);
    ck.eq("answer on link", LINK.load(SeqCst), n + 1);
}

/// EVT-0 (run in the `events` phase).
pub fn evt_0() {
    clause(
        "EVT-0",
        "raising sets pending, selector, upcall_pending",
        |ck| {
            let (a, b) = loopback();
            event::without_upcalls(|| {
                Sh::sel().store(0, SeqCst);
                Sh::upcall_pending().store(0, SeqCst);
                ck.eq("send", send(a), Ok(0));
                ck.t(Sh::is_pending(b as u32), "b not pending");
                ck.t(
                    !Sh::is_pending(a as u32),
                    "the sender's port became pending",
                );
                ck.t(
                    Sh::sel().load(SeqCst) & (1 << (b / 64)) != 0,
                    "selector bit not set",
                );
                ck.eq("upcall_pending", Sh::upcall_pending().load(SeqCst), 1);
                Sh::set_pending(b as u32, false);
                ck.eq("send back", send(b), Ok(0));
                ck.t(Sh::is_pending(a as u32), "a not pending");
                Sh::set_pending(a as u32, false);
                // Masked: the bit is set but neither selector nor upcall_pending.
                Sh::set_mask(b as u32, true);
                Sh::sel().store(0, SeqCst);
                Sh::upcall_pending().store(0, SeqCst);
                ck.eq("send to masked", send(a), Ok(0));
                ck.t(Sh::is_pending(b as u32), "masked b not pending");
                ck.eq("selector for masked", Sh::sel().load(SeqCst), 0);
                ck.eq(
                    "upcall_pending for masked",
                    Sh::upcall_pending().load(SeqCst),
                    0,
                );
                Sh::set_mask(b as u32, false);
                Sh::set_pending(b as u32, false);
            });
            let _ = close(a);
            let _ = close(b);
        },
    );
}

/// EVT-0b (run in the `events` phase).
pub fn evt_0b() {
    clause("EVT-0b", "coalescing: N raises are one event", |ck| {
        let (a, b) = loopback();
        reset_hits();
        event::without_upcalls(|| {
            event::set_handler(Port(b as u32), on_hit);
            for _ in 0..5 {
                ck.eq("send", send(a), Ok(0));
            }
        });
        ck.eq("handler calls", HITS.load(SeqCst), 1);
        let _ = event::close(Port(b as u32));
        let _ = close(a);
    });
}

/// EVT-0c (run in the `events` phase).
pub fn evt_0c() {
    clause(
        "EVT-0c",
        "a set of ports; a raise during handling is seen again",
        |ck| {
            let (a1, b1) = loopback();
            let (a2, b2) = loopback();
            let (a3, b3) = loopback();
            reset_hits();
            event::without_upcalls(|| {
                for b in [b1, b2, b3] {
                    event::set_handler(Port(b as u32), on_hit);
                }
                for a in [a3, a1, a2] {
                    let _ = send(a);
                }
                for b in [b1, b2, b3] {
                    ck.t(Sh::is_pending(b as u32), "not all pending");
                }
                RERAISE.store(a1, SeqCst);
            });
            ck.eq("handler calls (3 + re-raise)", HITS.load(SeqCst), 4);
            let order: Vec<u64> = ORDER.iter().take(4).map(|o| o.load(SeqCst)).collect();
            ck.eq("order", order, alloc::vec![b1, b2, b3, b1]);
            for p in [a1, b1, a2, b2, a3, b3] {
                let _ = event::close(Port(p as u32));
            }
        },
    );
}

/// EVT-0d (run in the `events` phase).
pub fn evt_0d() {
    clause(
        "EVT-0d",
        "masked ports stay pending, no wake, no upcall",
        |ck| {
            let (a, b) = loopback();
            reset_hits();
            event::set_handler(Port(b as u32), on_hit);
            Sh::set_mask(b as u32, true);
            ck.eq("send", send(a), Ok(0));
            ck.eq("no upcall", HITS.load(SeqCst), 0);
            ck.t(Sh::is_pending(b as u32), "masked port not pending");
            let t0 = now();
            ck.eq("block is not woken", block(t0 + 5 * MS), Ok(1));
            ck.t(now() >= t0 + 5 * MS, "block returned before its deadline");
            ck.eq("still no upcall", HITS.load(SeqCst), 0);
            ck.eq("unmask", unmask(b), Ok(0));
            ck.eq("delivered on unmask", HITS.load(SeqCst), 1);
            ck.t(!Sh::is_masked(b as u32), "still masked");
            let _ = event::close(Port(b as u32));
            let _ = close(a);
        },
    );
}

/// EVT-0e (run in the `events` phase).
pub fn evt_0e() {
    clause(
        "EVT-0e",
        "shared-info garbage affects only this domain",
        |ck| {
            let (a, b) = loopback();
            // Garbage in our bitmaps and selector, then hypercalls that read
            // them; upcalls stay masked so the SDK never sees the garbage.
            event::without_upcalls(|| {
                let saved: Vec<u64> = (0..32).map(|w| Sh::word(w).load(SeqCst)).collect();
                for w in 0..32 {
                    Sh::word(w).store(0xa5a5_a5a5_a5a5_a5a5, SeqCst);
                }
                Sh::sel().store(u64::MAX, SeqCst);
                ck.eq("send with garbage", send(a), Ok(0));
                ck.eq("unmask with garbage", unmask(b), Ok(0));
                ck.eq(
                    "abi_version with garbage",
                    c1(Hypercall::AbiVersion, 0),
                    Ok(u64::from(ABI_VERSION)),
                );
                for (w, v) in saved.iter().enumerate() {
                    Sh::word(w).store(*v, SeqCst);
                }
                Sh::sel().store(0, SeqCst);
                Sh::upcall_pending().store(0, SeqCst);
                Sh::set_pending(b as u32, false);
            });
            let _ = close(a);
            let _ = close(b);
            // Other domains are unaffected: the helpers answer later (EVT-2b,
            // EVT-5 ask them after this).
        },
    );
}

/// EVT-1 (run in the `events` phase).
pub fn evt_1() {
    clause("EVT-1", "alloc_unbound", |ck| {
        // A freshly allocated port has pending and mask clear, even if the
        // guest left them set.
        let p = next_port();
        event::without_upcalls(|| {
            Sh::set_pending(p as u32, true);
            Sh::set_mask(p as u32, true);
            let q = alloc_unbound(DOMID_SELF);
            ck.eq("same port", q, Ok(p));
            ck.t(!Sh::is_pending(p as u32), "pending not cleared");
            ck.t(!Sh::is_masked(p as u32), "mask not cleared");
            ck.err("unbound: send", send(p), Error::WrongState);
            let _ = close(p);
        });
        let q = alloc_unbound(2);
        ck.t(q.is_ok(), "offer to domain 2 refused");
        let _ = close(q.unwrap_or(0));
    });
}

/// EVT-1a (run in the `events` phase).
pub fn evt_1a() {
    clause("EVT-1a", "alloc_unbound to no domain: not_found", |ck| {
        let next = next_port();
        for d in [
            0u64,
            99,
            0x7fef,
            0x7ff1,
            0xffff,
            0x1_0001,
            0x1_7ff0,
            u64::MAX,
        ] {
            ck.err(&format!("domain {d:#x}"), alloc_unbound(d), Error::NotFound);
        }
        ck.eq("nothing allocated", next_port(), next);
    });
}

/// EVT-2 (run in the `events` phase).
pub fn evt_2(peers: Option<Peers>) {
    clause("EVT-2", "bind_interdomain connects both ends", |ck| {
        let a = ck.ok("alloc", alloc_unbound(DOMID_SELF));
        let b = ck.ok("bind", bind(DOMID_SELF, a));
        event::without_upcalls(|| {
            ck.eq("send a", send(a), Ok(0));
            ck.t(Sh::is_pending(b as u32), "b not pending");
            ck.eq("send b", send(b), Ok(0));
            ck.t(Sh::is_pending(a as u32), "a not pending");
            Sh::set_pending(a as u32, false);
            Sh::set_pending(b as u32, false);
        });
        let _ = close(a);
        let _ = close(b);
        ck.t(
            peers.is_some(),
            "could not bind the helper domains' offered ports",
        );
    });
}

/// EVT-2a (run in the `events` phase).
pub fn evt_2a() {
    clause("EVT-2a", "no such domain or port: not_found", |ck| {
        let a = alloc_unbound(DOMID_SELF).unwrap_or(0);
        let next = next_port();
        for d in [0u64, 99, 0x1_0001, u64::MAX] {
            ck.err(&format!("domain {d:#x}"), bind(d, a), Error::NotFound);
        }
        for p in bad_ports(&[(1 << 32) | a]) {
            ck.err(
                &format!("port {p:#x}"),
                bind(DOMID_SELF, p),
                Error::NotFound,
            );
        }
        ck.eq("nothing allocated", next_port(), next);
        ck.err("a still unbound", send(a), Error::WrongState);
        let b = bind(DOMID_SELF, a);
        ck.t(b.is_ok(), "a no longer bindable");
        let _ = close(b.unwrap_or(0));
        let _ = close(a);
    });
}

/// EVT-2b (run in the `events` phase).
pub fn evt_2b(peers: Option<Peers>) {
    clause(
        "EVT-2b",
        "not unbound, or offered elsewhere: wrong_state",
        |ck| {
            let next = next_port();
            // Helper's port 5 is offered to domain 3, not to us.
            ck.err("port offered to domain 3", bind(2, 5), Error::WrongState);
            // Helper's port 1 is already connected (to us).
            ck.err("connected port", bind(2, 1), Error::WrongState);
            // Helper's port 1000 is free.
            ck.err("free port", bind(2, 1000), Error::WrongState);
            // Our own port offered to domain 2 cannot be bound by us.
            let o = alloc_unbound(2).unwrap_or(0);
            ck.err(
                "own port offered to 2",
                bind(DOMID_SELF, o),
                Error::WrongState,
            );
            let _ = close(o);
            ck.eq("nothing allocated", next_port(), next);
            // The legitimate binder (domain 3) still can.
            match peers {
                Some(p) => ck.eq("third binds helper's port 5", ask(p.ctl3), Some(true)),
                None => ck.t(false, "no helper domains"),
            }
        },
    );
}

/// EVT-3 (run in the `events` phase).
pub fn evt_3() {
    clause("EVT-3", "bind_virq", |ck| {
        let p = ck.ok("bind timer", bind_virq(0));
        ck.t((1..NR_PORTS as u64).contains(&p), "not a port");
        ck.err("send on virq port", send(p), Error::WrongState);
        ck.eq("close", close(p), Ok(0));
    });
}

/// EVT-3a (run in the `events` phase).
pub fn evt_3a() {
    clause("EVT-3a", "undefined virq: invalid_argument", |ck| {
        let next = next_port();
        for v in [1u64, 2, 0xff, 1 << 32, u64::MAX] {
            ck.err(
                &format!("virq {v:#x}"),
                bind_virq(v),
                Error::InvalidArgument,
            );
        }
        ck.eq("nothing allocated", next_port(), next);
    });
}

/// EVT-3b (run in the `events` phase).
pub fn evt_3b() {
    clause("EVT-3b", "virq already bound: wrong_state", |ck| {
        let p = ck.ok("bind", bind_virq(0));
        let next = next_port();
        ck.err("bind again", bind_virq(0), Error::WrongState);
        ck.eq("nothing allocated", next_port(), next);
        ck.eq("close", close(p), Ok(0));
        let q = ck.ok("rebind after close", bind_virq(0));
        let _ = close(q);
    });
}

/// EVT-1b (run in the `events` phase).
pub fn evt_1b(in_use: usize) {
    clause("EVT-1b", "all ports in use: no_resources", |ck| {
        ck.eq("ports in use when full", in_use, NR_PORTS - 1);
        ck.err(
            "alloc when full",
            alloc_unbound(DOMID_SELF),
            Error::NoResources,
        );
    });
}

/// EVT-2c (run in the `events` phase).
pub fn evt_2c(held: &mut Vec<u64>, offered_self: u64) {
    clause("EVT-2c", "no local port: no_resources", |ck| {
        ck.err(
            "bind when full",
            bind(DOMID_SELF, offered_self),
            Error::NoResources,
        );
        // The remote port is still unbound and bindable.
        ck.err(
            "remote still unbound",
            send(offered_self),
            Error::WrongState,
        );
        let last = held.pop().unwrap_or(0);
        let _ = close(last);
        let b = bind(DOMID_SELF, offered_self);
        ck.t(b.is_ok(), "bind after freeing one port failed");
        let _ = close(b.unwrap_or(0));
        held.push(alloc_unbound(DOMID_SELF).unwrap_or(0));
    });
}

/// EVT-3c (run in the `events` phase).
pub fn evt_3c(held: &mut Vec<u64>) {
    clause("EVT-3c", "bind_virq when full: no_resources", |ck| {
        ck.err("bind_virq when full", bind_virq(0), Error::NoResources);
        let last = held.pop().unwrap_or(0);
        let _ = close(last);
        let v = bind_virq(0);
        ck.t(
            v.is_ok(),
            "virq not bindable after freeing a port (refusal changed state)",
        );
        let _ = close(v.unwrap_or(0));
    });
}

/// EVT-4 (run in the `events` phase).
pub fn evt_4(peers: Option<Peers>) {
    clause("EVT-4", "event_send raises the peer port", |ck| {
        let (a, b) = loopback();
        event::without_upcalls(|| {
            ck.eq("send", send(a), Ok(0));
            ck.t(Sh::is_pending(b as u32), "not raised");
            Sh::set_pending(b as u32, false);
        });
        let _ = close(a);
        let _ = close(b);
        if let Some(p) = peers {
            ck.eq("send to helper", send(p.evt5), Ok(0));
        }
    });
}

/// EVT-4a (run in the `events` phase).
pub fn evt_4a() {
    clause("EVT-4a", "bad or free port: not_found", |ck| {
        let (a, b) = loopback();
        event::without_upcalls(|| {
            for p in bad_ports(&[1000, (1 << 32) | a]) {
                ck.err(&format!("port {p:#x}"), send(p), Error::NotFound);
            }
            ck.t(!Sh::is_pending(b as u32), "a refused send raised the peer");
        });
        let _ = close(a);
        let _ = close(b);
    });
}

/// EVT-4b (run in the `events` phase).
pub fn evt_4b() {
    clause("EVT-4b", "unbound or virq port: wrong_state", |ck| {
        let u = alloc_unbound(DOMID_SELF).unwrap_or(0);
        ck.err("unbound", send(u), Error::WrongState);
        let v = bind_virq(0).unwrap_or(0);
        ck.err("virq", send(v), Error::WrongState);
        let _ = close(u);
        let _ = close(v);
    });
}

/// EVT-4c (run in the `events` phase).
pub fn evt_4c(peers: Option<Peers>) {
    clause(
        "EVT-4c",
        "send never fails for the receiver's state",
        |ck| {
            let (a, b) = loopback();
            Sh::set_mask(b as u32, true);
            for i in 0..100 {
                ck.eq(&format!("send {i} to masked"), send(a), Ok(0));
            }
            Sh::set_mask(b as u32, false);
            Sh::set_pending(b as u32, false);
            let _ = close(a);
            let _ = close(b);
            if let Some(p) = peers {
                // The helper is blocked; its port 4 has no handler.
                for i in 0..20 {
                    ck.eq(&format!("send {i} to busy helper"), send(p.evt5), Ok(0));
                }
            }
        },
    );
}

/// EVT-5 (run in the `events` phase).
pub fn evt_5(peers: Option<Peers>) {
    clause(
        "EVT-5",
        "close frees the port, peer becomes unbound",
        |ck| {
            let (a, b) = loopback();
            event::without_upcalls(|| {
                let _ = send(a);
                ck.t(Sh::is_pending(b as u32), "not pending before close");
                ck.eq("close b", close(b), Ok(0));
                ck.t(
                    !Sh::is_pending(b as u32),
                    "pending bit not cleared by close",
                );
            });
            ck.err("closed port: send", send(b), Error::NotFound);
            ck.err("peer now unbound", send(a), Error::WrongState);
            let b2 = bind(DOMID_SELF, a);
            ck.t(b2.is_ok(), "peer not offered back to the closer");
            let _ = close(b2.unwrap_or(0));
            let _ = close(a);
            let v = bind_virq(0).unwrap_or(0);
            ck.eq("close virq port", close(v), Ok(0));
            let v2 = bind_virq(0);
            ck.t(v2.is_ok(), "virq not released by close");
            let _ = close(v2.unwrap_or(0));
            match peers {
                Some(p) => {
                    ck.eq("close our end of helper port 4", close(p.evt5), Ok(0));
                    ck.eq("helper sees wrong_state", ask(p.ctl2), Some(true));
                    let again = bind(2, 4);
                    ck.t(again.is_ok(), "helper's port 4 not offered back to us");
                    let _ = close(again.unwrap_or(0));
                }
                None => ck.t(false, "no helper domains"),
            }
        },
    );
}

/// EVT-5a (run in the `events` phase).
pub fn evt_5a() {
    clause("EVT-5a", "bad or free port: not_found", |ck| {
        let (a, b) = loopback();
        for p in bad_ports(&[1000, (1 << 32) | a]) {
            ck.err(&format!("port {p:#x}"), close(p), Error::NotFound);
        }
        event::without_upcalls(|| {
            ck.eq("a still connected", send(a), Ok(0));
            Sh::set_pending(b as u32, false);
        });
        let _ = close(a);
        let _ = close(b);
    });
}

/// EVT-6 (run in the `events` phase).
pub fn evt_6() {
    clause("EVT-6", "unmask delivers a pending port at once", |ck| {
        let (a, b) = loopback();
        event::without_upcalls(|| {
            Sh::set_mask(b as u32, true);
            let _ = send(a);
            Sh::sel().store(0, SeqCst);
            Sh::upcall_pending().store(0, SeqCst);
            ck.eq("unmask", unmask(b), Ok(0));
            ck.t(!Sh::is_masked(b as u32), "mask not cleared");
            ck.t(
                Sh::sel().load(SeqCst) & (1 << (b / 64)) != 0,
                "selector not set",
            );
            ck.eq("upcall_pending", Sh::upcall_pending().load(SeqCst), 1);
            Sh::set_pending(b as u32, false);
            // Unmasking a port that is not pending raises nothing.
            Sh::set_mask(b as u32, true);
            Sh::sel().store(0, SeqCst);
            Sh::upcall_pending().store(0, SeqCst);
            ck.eq("unmask idle", unmask(b), Ok(0));
            ck.eq(
                "idle: no upcall_pending",
                Sh::upcall_pending().load(SeqCst),
                0,
            );
        });
        let _ = close(a);
        let _ = close(b);
    });
}

/// EVT-6a (run in the `events` phase).
pub fn evt_6a() {
    clause("EVT-6a", "port 0 or >= NR_PORTS: not_found", |ck| {
        let (a, b) = loopback();
        Sh::set_mask(b as u32, true);
        for p in bad_ports(&[(1 << 32) | b]) {
            ck.err(&format!("port {p:#x}"), unmask(p), Error::NotFound);
        }
        ck.t(
            Sh::is_masked(b as u32),
            "a refused unmask cleared a mask bit",
        );
        Sh::set_mask(b as u32, false);
        let _ = close(a);
        let _ = close(b);
    });
}

/// EVT-7 (run in the `named_channels` phase).
pub fn evt_7(si: &StartInfo) {
    let link = si.channel("link");
    clause(
        "EVT-7",
        "named channels are wired before the guests run",
        |ck| {
            let Some(ch) = link else {
                ck.t(false, "no channel `link` in the start info");
                return;
            };
            ck.eq("peer domain", ch.peer.0, NAMED);
            ck.eq("peer name", ch.peer_name, "named");
            ck.t(
                ch.port.0 != 0 && (ch.port.0 as usize) < NR_PORTS,
                "port out of range",
            );
            // The helper sent one event as its first act, before we could
            // have done anything: the SDK kept it pending (masked) until now.
            ck.t(event::is_masked(ch.port), "the SDK did not mask the port");
            ck.eq("listen", ch.listen(on_link), Ok(()));
            event::wait_for_until(|| LINK.load(SeqCst) >= 1, now() + 5_000 * MS);
            ck.eq(
                "the helper's first event (sent as soon as it ran; it checked its own table first)",
                LINK.load(SeqCst),
                1,
            );
            link_round_trip(ck, ch.port);
        },
    );
}

/// EVT-7a (run in the `named_channels` phase).
pub fn evt_7a(si: &StartInfo) {
    let link = si.channel("link");
    clause(
        "EVT-7a",
        "a wired channel is ordinary; nobody else can bind it",
        |ck| {
            let Some(ch) = link else {
                ck.t(false, "no channel `link` in the start info");
                return;
            };
            // The helper's ports: 1 = link (to us), 2 = side (to rostack),
            // 3 = free. None was offered to us.
            let next = next_port();
            for p in 1..=3u64 {
                ck.err(
                    &format!("bind named's port {p}"),
                    bind(NAMED.into(), p),
                    Error::WrongState,
                );
            }
            ck.eq("nothing allocated", next_port(), next);
            ck.eq("only our own channels are listed", si.channels().count(), 1);
            ck.t(
                si.channel("side").is_none(),
                "named<->rostack is listed here",
            );
            ck.err(
                "the wired port is interdomain, not unbound",
                bind(DOMID_SELF, ch.port.0.into()),
                Error::WrongState,
            );
            // Still connected, both ways.
            link_round_trip(ck, ch.port);
        },
    );
}

/// EVT-0a (run in the `multi_domain` phase).
pub fn evt_0a(p: Peers) {
    clause("EVT-0a", "events queue while descheduled", |ck| {
        // Command the helper, then stay busy (upcalls masked) until our
        // slice ends; its answer arrives while we are descheduled and must
        // be pending when we run again.
        let y = YES.load(SeqCst);
        event::without_upcalls(|| {
            ck.eq("command", send(p.ctl2), Ok(0));
            let deadline = now() + 2_000 * MS;
            while !Sh::is_pending(p.yes2 as u32) && now() < deadline {
                core::hint::spin_loop();
            }
            ck.t(
                Sh::is_pending(p.yes2 as u32),
                "answer not pending after 2 s of running",
            );
        });
        event::wait_for_until(|| YES.load(SeqCst) > y, now() + 1_000 * MS);
        ck.eq("answer handled once unmasked", YES.load(SeqCst), y + 1);
    });
}
