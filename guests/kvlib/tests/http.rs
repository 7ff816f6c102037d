//! The HTTP layer over an in-memory disk: every route and status, keep-alive,
//! pipelining in order, group commit, limits, timeouts, and durability of
//! what was acknowledged.

use kvlib::http::{Conn, Server, MAX_HEAD};
use kvlib::store::{MemDisk, Store, MAX_KEY, MAX_VALUE};
use proptest::prelude::*;

fn server() -> Server<MemDisk> {
    Server::new(Store::open(MemDisk::new(4096)).unwrap(), 0)
}

/// What the guest's loop does for one connection: feed, drive, commit,
/// drive again; returns what was sent.
fn exchange(s: &mut Server<MemDisk>, c: &mut Conn, bytes: &[u8]) -> String {
    c.feed(bytes, 1);
    for _ in 0..64 {
        s.drive(c, 1);
        if !s.has_staged() {
            break;
        }
        s.commit();
    }
    s.drive(c, 1);
    String::from_utf8_lossy(&std::mem::take(&mut c.out)).into_owned()
}

/// The statuses of the responses in `out`, in order.
fn statuses(out: &str) -> Vec<u16> {
    out.match_indices("HTTP/1.1 ")
        .map(|(i, _)| out[i + 9..i + 12].parse().unwrap())
        .collect()
}

fn body_of(out: &str) -> &str {
    &out[out.find("\r\n\r\n").unwrap() + 4..]
}

#[test]
fn every_route_answers() {
    let mut s = server();
    let mut c = Conn::new(0);
    let r = exchange(&mut s, &mut c, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(statuses(&r), [200]);
    assert_eq!(body_of(&r), "ok\n");
    let r = exchange(
        &mut s,
        &mut c,
        b"PUT /kv/apple HTTP/1.1\r\nContent-Length: 3\r\n\r\nred",
    );
    assert_eq!(statuses(&r), [201]);
    let r = exchange(
        &mut s,
        &mut c,
        b"PUT /kv/apricot HTTP/1.1\r\nContent-Length: 6\r\n\r\norange",
    );
    assert_eq!(statuses(&r), [201]);
    let r = exchange(
        &mut s,
        &mut c,
        b"PUT /kv/banana HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(statuses(&r), [201]);
    let r = exchange(&mut s, &mut c, b"GET /kv/apple HTTP/1.1\r\n\r\n");
    assert_eq!(statuses(&r), [200]);
    assert_eq!(body_of(&r), "red");
    let r = exchange(&mut s, &mut c, b"GET /kv?prefix=ap HTTP/1.1\r\n\r\n");
    assert_eq!(
        body_of(&r),
        "{\"keys\":[\"apple\",\"apricot\"],\"truncated\":false}\n"
    );
    let r = exchange(&mut s, &mut c, b"GET /kv?limit=1 HTTP/1.1\r\n\r\n");
    assert_eq!(body_of(&r), "{\"keys\":[\"apple\"],\"truncated\":true}\n");
    let r = exchange(&mut s, &mut c, b"DELETE /kv/apple HTTP/1.1\r\n\r\n");
    assert_eq!(
        r, "HTTP/1.1 204 No Content\r\n\r\n",
        "a 204 has no body and no length"
    );
    let r = exchange(
        &mut s,
        &mut c,
        b"DELETE /kv/apple HTTP/1.1\r\n\r\nGET /kv/apple HTTP/1.1\r\n\r\n",
    );
    assert_eq!(statuses(&r), [404, 404]);
    let r = exchange(&mut s, &mut c, b"GET /stats HTTP/1.1\r\n\r\n");
    assert_eq!(statuses(&r), [200]);
    let j = body_of(&r);
    assert!(j.starts_with("{\"keys\":2,\"bytes\":6,"), "{j}");
    assert!(
        j.contains("\"requests\":{\"200\":4,\"201\":3,\"204\":1,\"404\":2}"),
        "{j}"
    );
    assert!(!c.closing(), "keep-alive: one connection served all of it");
}

#[test]
fn keys_are_percent_decoded_and_listed_as_json_strings() {
    let mut s = server();
    let mut c = Conn::new(0);
    let r = exchange(
        &mut s,
        &mut c,
        b"PUT /kv/a%20%22b%22%5C HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(statuses(&r), [201]);
    let r = exchange(&mut s, &mut c, b"GET /kv?prefix=a%20 HTTP/1.1\r\n\r\n");
    assert_eq!(
        body_of(&r),
        "{\"keys\":[\"a \\\"b\\\"\\\\\"],\"truncated\":false}\n"
    );
    let r = exchange(&mut s, &mut c, b"GET /kv/a%2 HTTP/1.1\r\n\r\n");
    assert_eq!(statuses(&r), [400]);
    let r = exchange(&mut s, &mut c, b"GET /kv?limit=x HTTP/1.1\r\n\r\n");
    assert_eq!(statuses(&r), [400]);
}

#[test]
fn pipelined_requests_are_answered_in_order_and_see_earlier_writes() {
    let mut s = server();
    let mut c = Conn::new(0);
    let r = exchange(
        &mut s,
        &mut c,
        b"PUT /kv/k HTTP/1.1\r\nContent-Length: 2\r\n\r\nv1GET /kv/k HTTP/1.1\r\n\r\n\
          PUT /kv/k HTTP/1.1\r\nContent-Length: 2\r\n\r\nv2GET /kv/k HTTP/1.1\r\n\r\n\
          DELETE /kv/k HTTP/1.1\r\n\r\nGET /kv/k HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(statuses(&r), [201, 200, 201, 200, 204, 404]);
    let bodies: Vec<&str> = r
        .split("HTTP/1.1 200 OK")
        .skip(1)
        .map(body_of)
        .map(|b| &b[..2])
        .collect();
    assert_eq!(bodies, ["v1", "v2"]);
    assert!(c.closing(), "Connection: close is honoured");
}

#[test]
fn writes_of_many_connections_share_one_flush() {
    let mut s = server();
    let mut conns: Vec<Conn> = (0..16).map(Conn::new).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.feed(
            format!("PUT /kv/c{i} HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd").as_bytes(),
            1,
        );
        s.drive(c, 1);
        assert!(
            c.waiting() && c.out.is_empty(),
            "nothing acknowledged before the flush"
        );
    }
    s.commit();
    for c in conns.iter_mut() {
        s.drive(c, 1);
        assert_eq!(statuses(&String::from_utf8_lossy(&c.out)), [201]);
    }
    let st = s.store.stats();
    assert_eq!((st.records, st.batches, st.flushes), (16, 1, 1));
}

#[test]
fn acknowledged_writes_survive_a_restart() {
    let mut s = server();
    let mut c = Conn::new(0);
    let r = exchange(
        &mut s,
        &mut c,
        b"PUT /kv/durable HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(statuses(&r), [201]);
    let disk = s.store.into_device();
    let mut s = Server::new(Store::open(disk).unwrap(), 0);
    let mut c = Conn::new(0);
    let r = exchange(&mut s, &mut c, b"GET /kv/durable HTTP/1.1\r\n\r\n");
    assert_eq!(body_of(&r), "hello");
}

#[test]
fn every_error_status() {
    let key = "k".repeat(MAX_KEY + 1);
    let long_header = format!(
        "GET /health HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(MAX_HEAD)
    );
    let many_headers = format!("GET /health HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(40));
    let cases: Vec<(Vec<u8>, u16, bool)> = vec![
        (b"GET /nope HTTP/1.1\r\n\r\n".to_vec(), 404, false),
        (b"GET /kv/missing HTTP/1.1\r\n\r\n".to_vec(), 404, false),
        (b"GET /kv/ HTTP/1.1\r\n\r\n".to_vec(), 400, false),
        (
            b"POST /kv/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
            false,
        ),
        (
            b"PUT /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
            false,
        ),
        (b"DELETE /kv HTTP/1.1\r\n\r\n".to_vec(), 405, false),
        (
            format!("GET /kv/{key} HTTP/1.1\r\n\r\n").into_bytes(),
            414,
            false,
        ),
        (b"PUT /kv/a HTTP/1.1\r\n\r\n".to_vec(), 411, true),
        (
            format!(
                "PUT /kv/a HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                MAX_VALUE + 1
            )
            .into_bytes(),
            413,
            true,
        ),
        (
            b"PUT /kv/a HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
            true,
        ),
        (
            b"PUT /kv/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            400,
            true,
        ),
        (
            b"PUT /kv/a HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
            400,
            true,
        ),
        (
            b"PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            501,
            true,
        ),
        (b"GARBAGE\x01 / HTTP/1.1\r\n\r\n".to_vec(), 400, true),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), 400, true),
        (long_header.into_bytes(), 431, true),
        (many_headers.into_bytes(), 431, true),
    ];
    for (req, status, closes) in cases {
        let mut s = server();
        let mut c = Conn::new(0);
        // A valid request follows: answered only if the connection stays.
        let mut bytes = req.clone();
        bytes.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
        let r = exchange(&mut s, &mut c, &bytes);
        let expect: &[u16] = if closes { &[status] } else { &[status, 200] };
        assert_eq!(
            statuses(&r),
            expect,
            "request {:?}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
        assert_eq!(c.closing(), closes, "{status}: close");
        assert_eq!(s.store.stats().records, 0, "{status}: nothing written");
    }
}

#[test]
fn an_overlong_head_is_refused_before_it_ends() {
    let mut s = server();
    let mut c = Conn::new(0);
    let mut sent = String::new();
    // Headers that never end: refused once past the limit, not buffered.
    c.feed(b"GET /health HTTP/1.1\r\n", 0);
    while !c.closing() {
        assert!(
            sent.len() <= 2 * MAX_HEAD,
            "still buffering after {} bytes",
            sent.len()
        );
        c.feed(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", 0);
        sent.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        s.drive(&mut c, 0);
    }
    assert_eq!(statuses(&String::from_utf8_lossy(&c.out)), [431]);
    assert!(!c.wants_input());
}

#[test]
fn a_slow_client_is_timed_out_and_an_idle_one_closed() {
    let mut s = server();
    let t = s.timeouts;
    let mut slow = Conn::new(0);
    slow.feed(b"GET /hea", 0);
    s.drive(&mut slow, 0);
    for now in (0..t.request_ms).step_by(500) {
        slow.feed(b"", now);
        assert!(!s.expire(&mut slow, now), "closed at {now} ms");
    }
    assert!(s.expire(&mut slow, t.request_ms + 1));
    assert_eq!(statuses(&String::from_utf8_lossy(&slow.out)), [408]);

    // Dripping a byte at a time does not extend the request's deadline.
    let mut drip = Conn::new(0);
    let mut now = 0;
    while !s.expire(&mut drip, now) {
        drip.feed(b"X", now);
        s.drive(&mut drip, now);
        now += 100;
        assert!(
            now <= t.request_ms + 200,
            "a dripping client held its connection"
        );
    }

    let mut idle = Conn::new(0);
    assert!(!s.expire(&mut idle, t.idle_ms));
    assert!(s.expire(&mut idle, t.idle_ms + 1));
    assert!(idle.out.is_empty());
}

proptest! {
    /// However the bytes are split into segments, the responses are the
    /// same as for the whole stream at once.
    #[test]
    fn any_split_of_the_stream_gives_the_same_answers(cuts in prop::collection::vec(0usize..200, 0..8)) {
        let stream: &[u8] = b"PUT /kv/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /kv/a HTTP/1.1\r\n\r\n\
            GET /kv?prefix=a HTTP/1.1\r\n\r\nDELETE /kv/a HTTP/1.1\r\n\r\nGET /kv/a HTTP/1.1\r\n\r\n";
        let whole = {
            let mut s = server();
            let mut c = Conn::new(0);
            exchange(&mut s, &mut c, stream)
        };
        let mut s = server();
        let mut c = Conn::new(0);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|x| x.min(stream.len())).collect();
        cuts.sort();
        let mut got = String::new();
        let mut prev = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            got.push_str(&exchange(&mut s, &mut c, &stream[prev..cut]));
            prev = cut;
        }
        prop_assert_eq!(got, whole);
    }
}

#[test]
fn the_quit_route_exists_only_when_enabled() {
    let mut s = server();
    let mut c = Conn::new(0);
    let r = exchange(
        &mut s,
        &mut c,
        b"POST /quit HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(statuses(&r), [404]);
    assert!(!s.quit_requested);
    s.quit_route = true;
    let r = exchange(
        &mut s,
        &mut c,
        b"POST /quit HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(statuses(&r), [200]);
    assert!(s.quit_requested);
}

#[test]
fn a_full_store_answers_507_and_keeps_serving() {
    let mut s = Server::new(Store::open(MemDisk::new(2 + 2 * 64)).unwrap(), 0);
    let mut c = Conn::new(0);
    let value = "v".repeat(8000);
    let mut seen = Vec::new();
    for i in 0..8 {
        let req = format!("PUT /kv/k{i} HTTP/1.1\r\nContent-Length: 8000\r\n\r\n{value}");
        seen.extend(statuses(&exchange(&mut s, &mut c, req.as_bytes())));
    }
    assert_eq!(&seen[..3], [201, 201, 201], "{seen:?}");
    assert_eq!(
        seen.last(),
        Some(&507),
        "a 32 KiB region cannot hold 64 KB: {seen:?}"
    );
    let ok = seen.iter().filter(|&&x| x == 201).count();
    // Deleting makes room; the service goes on.
    let r = exchange(&mut s, &mut c, b"DELETE /kv/k0 HTTP/1.1\r\n\r\n");
    assert_eq!(statuses(&r), [204]);
    let r = exchange(
        &mut s,
        &mut c,
        format!("PUT /kv/again HTTP/1.1\r\nContent-Length: 8000\r\n\r\n{value}").as_bytes(),
    );
    assert_eq!(statuses(&r), [201]);
    let r = exchange(&mut s, &mut c, b"GET /kv?limit=100 HTTP/1.1\r\n\r\n");
    assert_eq!(
        ok, 3,
        "three 8 KB values and the delete reserve fill a 32 KiB region: {seen:?}"
    );
    assert_eq!(
        body_of(&r),
        "{\"keys\":[\"again\",\"k1\",\"k2\"],\"truncated\":false}\n"
    );
    assert!(!c.closing());
}

#[test]
fn only_a_connection_with_nothing_in_flight_is_idle() {
    let mut s = server();
    let mut c = Conn::new(5);
    assert_eq!(c.idle_since(), Some(5));
    c.feed(b"GET /hea", 7);
    s.drive(&mut c, 7);
    assert_eq!(c.idle_since(), None, "a partial request");
    c.feed(b"lth HTTP/1.1\r\n\r\n", 8);
    s.drive(&mut c, 8);
    assert_eq!(c.idle_since(), None, "an answer not sent");
    c.out.clear();
    assert_eq!(c.idle_since(), Some(8));
    c.feed(b"PUT /kv/a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 9);
    s.drive(&mut c, 9);
    assert_eq!(c.idle_since(), None, "a write waiting for its commit");
}
