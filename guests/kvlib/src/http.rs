//! HTTP/1.1 over the store, on `httparse`.
//!
//! Routes: `PUT /kv/{key}` (body = value; 201 once durable), `GET /kv/{key}`
//! (200 or 404), `DELETE /kv/{key}` (204 once durable, 404 if absent),
//! `GET /kv?prefix=P&limit=N` (a JSON list of keys), `GET /health`,
//! `GET /stats` (JSON). Limits: key ≤ [`MAX_KEY`] bytes (414 beyond), value ≤
//! [`MAX_VALUE`] bytes (413 beyond, then close), request head ≤
//! [`MAX_HEAD`] bytes (431, then close); a malformed request gets 400 and the
//! connection is closed; `Transfer-Encoding` is refused with 501 and close.
//!
//! One [`Conn`] per connection holds its unparsed input and its pending
//! output. Requests of a connection are answered strictly in order: after a
//! write is staged the connection parses nothing more until the
//! [`Server::commit`] that makes it durable (one commit serves every
//! connection's staged writes: group commit), so a pipelined `GET` after a
//! `PUT` sees it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::store::{BlockDevice, Error, Op, Store, MAX_KEY, MAX_VALUE};

/// Largest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in one request (more is answered 431).
pub const MAX_HEADERS: usize = 32;
/// Largest `limit` of a listing.
pub const MAX_LIST: usize = 1000;
/// A listing's `limit` when none is given.
pub const DEFAULT_LIST: usize = 100;
/// Output a connection may have waiting before it reads no more input.
pub const MAX_PENDING_OUT: usize = 256 * 1024;

/// Time limits (milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A request begun must be complete within this (slowloris): 408, close.
    pub request_ms: u64,
    /// An idle keep-alive connection is closed after this.
    pub idle_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_ms: 10_000,
            idle_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    status: u16,
    keep_alive: bool,
    generation: u64,
}

/// One connection's state.
#[derive(Debug, Default)]
pub struct Conn {
    input: Vec<u8>,
    /// Bytes to send, in order.
    pub out: Vec<u8>,
    pending: Option<Pending>,
    closing: bool,
    last_activity_ms: u64,
    request_started_ms: Option<u64>,
}

impl Conn {
    /// A new connection, accepted at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Conn {
            last_activity_ms: now_ms,
            ..Conn::default()
        }
    }

    /// Whether the connection should be read from (bounded input and
    /// output: a client that sends without reading is not buffered without
    /// end).
    pub fn wants_input(&self) -> bool {
        !self.closing
            && self.input.len() < MAX_HEAD + MAX_VALUE + 1024
            && self.out.len() < MAX_PENDING_OUT
    }

    /// Appends bytes received at `now_ms`.
    pub fn feed(&mut self, bytes: &[u8], now_ms: u64) {
        if self.closing || bytes.is_empty() {
            return;
        }
        if self.input.is_empty() {
            self.request_started_ms = Some(now_ms);
        }
        self.input.extend_from_slice(bytes);
        self.last_activity_ms = now_ms;
    }

    /// Whether the connection is to be closed once `out` is sent.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Whether a write of this connection waits for a commit.
    pub fn waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// When the connection last received, if it is idle: no partial
    /// request, no write waiting, nothing left to send. A service out of
    /// connections evicts the longest idle one.
    pub fn idle_since(&self) -> Option<u64> {
        (self.input.is_empty() && self.pending.is_none() && self.out.is_empty())
            .then_some(self.last_activity_ms)
    }
}

/// Requests answered, by status.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// (status, count), sorted by status.
    pub by_status: Vec<(u16, u64)>,
}

impl Counters {
    fn count(&mut self, status: u16) {
        match self.by_status.binary_search_by_key(&status, |&(s, _)| s) {
            Ok(i) => self.by_status[i].1 += 1,
            Err(i) => self.by_status.insert(i, (status, 1)),
        }
    }
    /// Requests answered with `status`.
    pub fn get(&self, status: u16) -> u64 {
        self.by_status
            .iter()
            .find(|&&(s, _)| s == status)
            .map_or(0, |&(_, n)| n)
    }
}

/// The service: the store, the counters, the commit generation.
pub struct Server<D: BlockDevice> {
    /// The store.
    pub store: Store<D>,
    /// Requests by status.
    pub counters: Counters,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Whether `POST /quit` is served (a test hook, off by default: the
    /// scenario tests end the service with it).
    pub quit_route: bool,
    /// Set once `POST /quit` was answered (with `quit_route` on).
    pub quit_requested: bool,
    started_ms: u64,
    generation: u64,
    /// The commits of the last generations that failed, and the status
    /// their writes get (507 when the store is full).
    failed: Vec<(u64, u16)>,
    broken: bool,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// What the head of a request said, copied out of the input buffer.
struct Head {
    method: String,
    path: Vec<u8>,
    head_len: usize,
    content_length: usize,
    keep_alive: bool,
}

enum Parsed {
    Incomplete,
    /// A response to give, then close.
    Reject(u16),
    Request(Head),
}

fn parse_head(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if input.len() > MAX_HEAD {
                Parsed::Reject(431)
            } else {
                Parsed::Incomplete
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Reject(431),
        Err(_) => return Parsed::Reject(400),
    };
    if head_len > MAX_HEAD {
        return Parsed::Reject(431);
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Reject(400);
    };
    let mut keep_alive = version == 1;
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = core::str::from_utf8(h.value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                return Parsed::Reject(400);
            };
            if content_length.is_some_and(|c| c != n) {
                return Parsed::Reject(400);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Reject(501);
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if v.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    if content_length.is_none() && method == "PUT" {
        return Parsed::Reject(411);
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_VALUE {
        return Parsed::Reject(413);
    }
    Parsed::Request(Head {
        method: String::from(method),
        path: path.as_bytes().to_vec(),
        head_len,
        content_length,
        keep_alive,
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s` (`+` is kept as is); `None` on a bad escape.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let h = hex(*s.get(i + 1)?)?;
            let l = hex(*s.get(i + 2)?)?;
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Appends `s` as a JSON string (bytes that are not UTF-8 become U+FFFD).
pub fn json_string(out: &mut String, s: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

enum Outcome {
    Respond(u16, &'static str, Vec<u8>),
    Staged(u16),
}

impl<D: BlockDevice> Server<D> {
    /// A server over `store`, started at `now_ms`.
    pub fn new(store: Store<D>, now_ms: u64) -> Self {
        Server {
            store,
            counters: Counters::default(),
            timeouts: Timeouts::default(),
            quit_route: false,
            quit_requested: false,
            started_ms: now_ms,
            generation: 0,
            failed: Vec::new(),
            broken: false,
        }
    }

    fn respond(&mut self, conn: &mut Conn, status: u16, ctype: &str, body: &[u8], close: bool) {
        self.counters.count(status);
        // RFC 9110 8.6: no Content-Length in a 204 (it has no body).
        let length = if status == 204 {
            String::new()
        } else {
            format!(
                "Content-Length: {}\r\nContent-Type: {}\r\n",
                body.len(),
                ctype
            )
        };
        let head = format!(
            "HTTP/1.1 {} {}\r\n{}{}\r\n",
            status,
            reason(status),
            length,
            if close { "Connection: close\r\n" } else { "" }
        );
        conn.out.extend_from_slice(head.as_bytes());
        conn.out.extend_from_slice(body);
        if close {
            conn.closing = true;
            conn.input.clear();
        }
    }

    /// Parses and answers what `conn` has received, in order, until its
    /// input is exhausted or a write of it waits for [`Server::commit`].
    pub fn drive(&mut self, conn: &mut Conn, now_ms: u64) {
        if let Some(p) = conn.pending {
            if self.generation <= p.generation {
                return;
            }
            conn.pending = None;
            let status = match self.failed.iter().find(|&&(g, _)| g == p.generation) {
                Some(&(_, status)) => status,
                None => p.status,
            };
            self.respond(conn, status, "text/plain", b"", !p.keep_alive);
        }
        while !conn.closing && conn.pending.is_none() && !conn.input.is_empty() {
            let head = match parse_head(&conn.input) {
                Parsed::Incomplete => return,
                Parsed::Reject(status) => {
                    let body = format!("{}\n", reason(status));
                    self.respond(conn, status, "text/plain", body.as_bytes(), true);
                    return;
                }
                Parsed::Request(h) => h,
            };
            let total = head.head_len + head.content_length;
            if conn.input.len() < total {
                return;
            }
            let body: Vec<u8> = conn.input[head.head_len..total].to_vec();
            conn.input.drain(..total);
            conn.request_started_ms = (!conn.input.is_empty()).then_some(now_ms);
            match self.handle(&head, body, now_ms) {
                Outcome::Respond(status, ctype, body) => {
                    self.respond(conn, status, ctype, &body, !head.keep_alive)
                }
                Outcome::Staged(status) => {
                    conn.pending = Some(Pending {
                        status,
                        keep_alive: head.keep_alive,
                        generation: self.generation,
                    })
                }
            }
        }
    }

    /// Makes every staged write durable with one commit (group commit);
    /// [`Server::drive`] then answers the connections that waited.
    pub fn commit(&mut self) {
        if self.store.staged() == 0 {
            return;
        }
        match self.store.commit() {
            Ok(_) => {}
            // Nothing of this commit was written: its writes get 507 and
            // the service goes on (deletes can make room).
            Err(Error::Full) => self.failed.push((self.generation, 507)),
            // The device failed: nothing more is acknowledged.
            Err(_) => {
                self.failed.push((self.generation, 500));
                self.broken = true;
            }
        }
        if self.failed.len() > 64 {
            self.failed.remove(0);
        }
        self.generation += 1;
    }

    /// Whether a write waits for [`Server::commit`].
    pub fn has_staged(&self) -> bool {
        self.store.staged() > 0
    }

    /// Applies the time limits to `conn` at `now_ms`: a request begun and
    /// not complete in time gets 408 and the connection closes; an idle one
    /// just closes. Returns whether the connection is to be closed.
    pub fn expire(&mut self, conn: &mut Conn, now_ms: u64) -> bool {
        if conn.closing {
            return true;
        }
        if conn.pending.is_some() {
            return false;
        }
        if let Some(t) = conn.request_started_ms {
            if !conn.input.is_empty() && now_ms.saturating_sub(t) > self.timeouts.request_ms {
                self.respond(conn, 408, "text/plain", b"Request Timeout\n", true);
                return true;
            }
        }
        if conn.input.is_empty()
            && now_ms.saturating_sub(conn.last_activity_ms) > self.timeouts.idle_ms
        {
            conn.closing = true;
            return true;
        }
        false
    }

    fn handle(&mut self, head: &Head, body: Vec<u8>, now_ms: u64) -> Outcome {
        let (path, query) = match head.path.iter().position(|&b| b == b'?') {
            Some(i) => (&head.path[..i], Some(&head.path[i + 1..])),
            None => (&head.path[..], None),
        };
        let m = head.method.as_str();
        let text = |status: u16| {
            Outcome::Respond(
                status,
                "text/plain",
                format!("{}\n", reason(status)).into_bytes(),
            )
        };
        match path {
            b"/health" => match m {
                "GET" => Outcome::Respond(200, "text/plain", b"ok\n".to_vec()),
                _ => text(405),
            },
            b"/stats" => match m {
                "GET" => Outcome::Respond(
                    200,
                    "application/json",
                    self.stats_json(now_ms).into_bytes(),
                ),
                _ => text(405),
            },
            b"/quit" if self.quit_route => match m {
                "POST" => {
                    self.quit_requested = true;
                    Outcome::Respond(200, "text/plain", b"bye\n".to_vec())
                }
                _ => text(405),
            },
            b"/kv" => match m {
                "GET" => self.list(query.unwrap_or(b"")),
                _ => text(405),
            },
            _ => {
                let Some(raw) = path.strip_prefix(b"/kv/") else {
                    return text(404);
                };
                let Some(key) = percent_decode(raw) else {
                    return text(400);
                };
                if key.is_empty() {
                    return text(400);
                }
                if key.len() > MAX_KEY {
                    return text(414);
                }
                if self.broken && (m == "PUT" || m == "DELETE") {
                    return text(503);
                }
                match m {
                    "GET" => match self.store.get(&key) {
                        Ok(Some(v)) => Outcome::Respond(200, "application/octet-stream", v),
                        Ok(None) => text(404),
                        Err(_) => text(500),
                    },
                    "PUT" => match self.store.stage(Op::Put(key, body)) {
                        Ok(()) => Outcome::Staged(201),
                        Err(Error::ValueTooLarge) => text(413),
                        Err(_) => text(400),
                    },
                    "DELETE" => {
                        if !self.store.contains(&key) {
                            return text(404);
                        }
                        match self.store.stage(Op::Delete(key)) {
                            Ok(()) => Outcome::Staged(204),
                            Err(_) => text(400),
                        }
                    }
                    _ => text(405),
                }
            }
        }
    }

    fn list(&mut self, query: &[u8]) -> Outcome {
        let mut prefix = Vec::new();
        let mut limit = DEFAULT_LIST;
        for pair in query.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let Some(v) = percent_decode(v) else {
                return Outcome::Respond(400, "text/plain", b"Bad Request\n".to_vec());
            };
            match k {
                b"prefix" => prefix = v,
                b"limit" => {
                    match core::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                    {
                        Some(n) => limit = n.min(MAX_LIST),
                        None => {
                            return Outcome::Respond(400, "text/plain", b"Bad Request\n".to_vec())
                        }
                    }
                }
                _ => {}
            }
        }
        let keys = self.store.keys_with_prefix(&prefix, limit + 1);
        let truncated = keys.len() > limit;
        let mut s = String::from("{\"keys\":[");
        for (i, k) in keys.iter().take(limit).enumerate() {
            if i > 0 {
                s.push(',');
            }
            json_string(&mut s, k);
        }
        s.push_str(&format!("],\"truncated\":{}}}\n", truncated));
        Outcome::Respond(200, "application/json", s.into_bytes())
    }

    fn stats_json(&self, now_ms: u64) -> String {
        let s = self.store.stats();
        let mut out = format!(
            "{{\"keys\":{},\"bytes\":{},\"log_bytes\":{},\"dead_bytes\":{},\"batches\":{},\"records\":{},\"flushes\":{},\"compactions\":{},\"recovered_records\":{},\"dropped_tail\":{},\"uptime_ms\":{},\"requests\":{{",
            s.keys,
            s.value_bytes,
            s.log_bytes,
            s.dead_bytes,
            s.batches,
            s.records,
            s.flushes,
            s.compactions,
            s.recovered_records,
            s.dropped_tail,
            now_ms.saturating_sub(self.started_ms)
        );
        for (i, (status, n)) in self.counters.by_status.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("\"{}\":{}", status, n));
        }
        out.push_str("}}\n");
        out
    }
}
