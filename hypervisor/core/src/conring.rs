//! The hypervisor's console ring (Xen's `conring`): the text of its own
//! console lines (`@` reports, `log` lines) is kept in a bounded ring and
//! written to the serial port later, off the path that produced it.
//!
//! * Bytes leave the ring in the order they entered it ([`ConRing::drain`]),
//!   so the lines keep their order, among themselves and against anything
//!   the caller writes straight to the port after a drain.
//! * Nothing is ever dropped: [`RingWriter`] drains the ring into its sink
//!   whenever a write does not fit, so a flood of text costs the serial
//!   writes it would have cost anyway, and no line is lost or cut.
//! * [`ConRing::past_mark`] tells the caller the ring is more than half
//!   full, so it drains before much text waits (bounded latency).
//!
//! The hypervisor drains the ring when the CPU would otherwise idle, before
//! a domain's console line, at the end of a run (every exit path, the
//! panic's included) and past the mark.

use core::fmt;

/// A ring of `N` bytes of console text.
#[derive(Clone, Debug)]
pub struct ConRing<const N: usize> {
    buf: [u8; N],
    /// Index of the oldest byte.
    head: usize,
    /// Bytes held (at most `N`).
    len: usize,
}

impl<const N: usize> Default for ConRing<N> {
    fn default() -> Self {
        ConRing::new()
    }
}

impl<const N: usize> ConRing<N> {
    /// Past this many bytes held, the caller should drain.
    pub const MARK: usize = N / 2;

    /// An empty ring.
    pub const fn new() -> ConRing<N> {
        ConRing {
            buf: [0; N],
            head: 0,
            len: 0,
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether more than [`Self::MARK`] bytes are held.
    pub fn past_mark(&self) -> bool {
        self.len > Self::MARK
    }

    /// Appends as much of `bytes` as fits (a prefix); returns how many bytes
    /// it took.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let take = bytes.len().min(N - self.len);
        if take == 0 {
            return 0;
        }
        // The free space starts at `tail` and may wrap once.
        let tail = (self.head + self.len) % N;
        let first = take.min(N - tail);
        self.buf[tail..tail + first].copy_from_slice(&bytes[..first]);
        if take > first {
            self.buf[..take - first].copy_from_slice(&bytes[first..take]);
        }
        // Counted only once the bytes are in place.
        self.len += take;
        take
    }

    /// Appends one byte if there is room; returns whether it did.
    pub fn push_byte(&mut self, b: u8) -> bool {
        if self.len == N {
            return false;
        }
        self.buf[(self.head + self.len) % N] = b;
        self.len += 1;
        true
    }

    /// Hands every byte held to `sink`, oldest first (in at most two
    /// slices), and empties the ring.
    pub fn drain(&mut self, mut sink: impl FnMut(&[u8])) {
        if self.len == 0 {
            return;
        }
        let first = self.len.min(N - self.head);
        sink(&self.buf[self.head..self.head + first]);
        if self.len > first {
            sink(&self.buf[..self.len - first]);
        }
        self.head = 0;
        self.len = 0;
    }
}

/// Formats text into a ring, draining the ring into `sink` whenever the
/// text does not fit (so nothing is dropped).
pub struct RingWriter<'a, const N: usize, F: FnMut(&[u8])> {
    ring: &'a mut ConRing<N>,
    sink: F,
}

impl<'a, const N: usize, F: FnMut(&[u8])> RingWriter<'a, N, F> {
    /// A writer into `ring` that spills into `sink`.
    pub fn new(ring: &'a mut ConRing<N>, sink: F) -> Self {
        RingWriter { ring, sink }
    }

    /// Appends `bytes`, draining the ring into the sink as often as needed.
    pub fn write_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let took = self.ring.push(bytes);
            bytes = &bytes[took..];
            if !bytes.is_empty() {
                self.ring.drain(&mut self.sink);
            }
        }
    }

    /// Appends one byte, draining the ring into the sink first if it is
    /// full.
    pub fn write_byte(&mut self, b: u8) {
        if !self.ring.push_byte(b) {
            self.ring.drain(&mut self.sink);
            self.ring.push_byte(b);
        }
    }

    /// Drains the ring into the sink if it is past its mark.
    pub fn drain_past_mark(&mut self) {
        if self.ring.past_mark() {
            self.ring.drain(&mut self.sink);
        }
    }

    /// Drains the ring into the sink.
    pub fn drain(&mut self) {
        self.ring.drain(&mut self.sink);
    }
}

impl<const N: usize, F: FnMut(&[u8])> fmt::Write for RingWriter<'_, N, F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }

    // A quoted value is written a character at a time: no copy call each.
    fn write_char(&mut self, c: char) -> fmt::Result {
        match u8::try_from(c) {
            Ok(b) if b.is_ascii() => self.write_byte(b),
            _ => self.write_bytes(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
        Ok(())
    }
}

/// A string printed as a quoted fact value: in `"`, with `"` and `\\`
/// escaped by a backslash, a newline as `\\n` and other control characters
/// as `?`.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' | '\\' => {
                    f.write_char('\\')?;
                    f.write_char(c)?;
                }
                '\n' => f.write_str("\\n")?,
                c if c.is_control() => f.write_char('?')?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// Bytes a [`Fact`] gathers before it hands them on.
const FACT_BUF: usize = 192;

/// One fact line, `@ kind key=value ...\n`, encoded straight into bytes:
/// the same text `report!` makes with `core::fmt` (numbers in decimal,
/// strings as [`Quoted`]) at a fraction of its cost, for the facts on a
/// measured path (a domain's start). The bytes go to `out` in pieces of at
/// most `FACT_BUF` (192) bytes (never cut or dropped); [`Fact::end`] ends the line.
pub struct Fact<F: FnMut(&[u8])> {
    buf: [u8; FACT_BUF],
    len: usize,
    out: F,
}

impl<F: FnMut(&[u8])> Fact<F> {
    /// Starts the line `@ kind`.
    pub fn new(kind: &str, out: F) -> Self {
        let mut f = Fact {
            buf: [0; FACT_BUF],
            len: 0,
            out,
        };
        f.bytes(b"@ ");
        f.bytes(kind.as_bytes());
        f
    }

    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) {
        if self.len + b.len() > FACT_BUF {
            (self.out)(&self.buf[..self.len]);
            self.len = 0;
            if b.len() > FACT_BUF {
                (self.out)(b);
                return;
            }
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        if self.len == FACT_BUF {
            (self.out)(&self.buf[..self.len]);
            self.len = 0;
        }
        self.buf[self.len] = b;
        self.len += 1;
    }

    #[inline(always)]
    fn key(&mut self, key: &str) {
        self.byte(b' ');
        self.bytes(key.as_bytes());
        self.byte(b'=');
    }

    /// Appends ` key=v`, `v` in decimal.
    #[inline(always)]
    pub fn num(&mut self, key: &str, v: u64) -> &mut Self {
        self.key(key);
        // The digits straight into the buffer, last first.
        let mut n = 1;
        let mut t = v;
        while t >= 10 {
            t /= 10;
            n += 1;
        }
        if self.len + n > FACT_BUF {
            (self.out)(&self.buf[..self.len]);
            self.len = 0;
        }
        let digits = &mut self.buf[self.len..self.len + n];
        let mut v = v;
        for d in digits.iter_mut().rev() {
            *d = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
        }
        self.len += n;
        self
    }

    /// Appends ` key="s"`, `s` as [`Quoted`] prints it.
    pub fn quoted(&mut self, key: &str, s: &str) -> &mut Self {
        self.key(key);
        self.byte(b'"');
        for c in s.chars() {
            match c {
                '"' => self.bytes(b"\\\""),
                '\\' => self.bytes(b"\\\\"),
                '\n' => self.bytes(b"\\n"),
                ' '..='~' => self.byte(u8::try_from(c).unwrap_or(b'?')),
                c if c.is_control() => self.byte(b'?'),
                c => self.bytes(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        self.byte(b'"');
        self
    }

    /// Ends the line and hands what is left of it to `out`.
    pub fn end(&mut self) {
        self.byte(b'\n');
        (self.out)(&self.buf[..self.len]);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::fmt::Write;

    #[test]
    fn push_and_drain_keep_order_across_the_wrap() {
        let mut r = ConRing::<8>::new();
        assert_eq!(r.push(b"abcde"), 5);
        let mut out = Vec::new();
        r.drain(|s| out.extend_from_slice(s));
        assert_eq!(out, b"abcde");
        assert!(r.is_empty());
        assert_eq!(r.push(b"123456"), 6);
        assert_eq!(r.push(b"789"), 2, "only what fits is taken");
        assert_eq!(r.len(), 8);
        assert_eq!(r.push(b"x"), 0, "a full ring takes nothing");
        let mut parts = Vec::new();
        r.drain(|s| parts.push(s.to_vec()));
        assert_eq!(parts.concat(), b"12345678");
    }

    #[test]
    fn a_write_that_does_not_fit_spills_the_ring_first() {
        let mut r = ConRing::<8>::new();
        r.push(b"abcdef");
        let mut seen = Vec::new();
        {
            let mut w = RingWriter::new(&mut r, |s: &[u8]| seen.extend_from_slice(s));
            w.write_bytes(b"ghijk"); // 6 + 5 > 8: spills "abcdefgh", keeps "ijk"
        }
        assert_eq!(seen, b"abcdefgh");
        assert_eq!(r.len(), 3);
        let mut parts = Vec::new();
        r.drain(|s| parts.push(s.to_vec()));
        assert_eq!(parts.concat(), b"ijk");
    }

    #[test]
    fn the_tail_wraps_past_the_end() {
        let mut r = ConRing::<8>::new();
        r.push(b"abcdef");
        r.head = 5; // as if "abcde" had left the ring one way or another
        r.len = 1; // "f" at index 5
        assert_eq!(r.push(b"ghijklm"), 7, "7 free bytes, wrapping");
        let mut parts = Vec::new();
        r.drain(|s| parts.push(s.to_vec()));
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts.concat(), b"fghijklm");
    }

    #[test]
    fn a_flood_through_a_small_ring_loses_nothing_and_keeps_order() {
        let mut r = ConRing::<64>::new();
        let mut out = Vec::new();
        let mut expect = String::new();
        for i in 0..1000 {
            let line = format!("@ line n={i} {}\n", "x".repeat(i % 150));
            expect.push_str(&line);
            let mut w = RingWriter::new(&mut r, |s: &[u8]| out.extend_from_slice(s));
            w.write_str(&line).unwrap();
            w.drain_past_mark();
        }
        r.drain(|s| out.extend_from_slice(s));
        assert_eq!(String::from_utf8(out).unwrap(), expect);
    }

    #[test]
    fn characters_one_at_a_time_fill_drain_and_keep_order() {
        let mut r = ConRing::<4>::new();
        let mut out = Vec::new();
        {
            let mut w = RingWriter::new(&mut r, |s: &[u8]| out.extend_from_slice(s));
            for c in "ab\u{e9}cd\u{1f600}e\n".chars() {
                w.write_char(c).unwrap();
            }
        }
        r.drain(|s| out.extend_from_slice(s));
        assert_eq!(String::from_utf8(out).unwrap(), "ab\u{e9}cd\u{1f600}e\n");
        assert!(r.push_byte(b'x'));
        assert_eq!(r.push(b"yzw"), 3);
        assert!(!r.push_byte(b'!'), "a full ring takes no byte");
    }

    fn fact(build: impl FnOnce(&mut Fact<&mut dyn FnMut(&[u8])>)) -> String {
        let mut out = Vec::new();
        let mut sink = |b: &[u8]| out.extend_from_slice(b);
        let mut f = Fact::new("kind", &mut sink as &mut dyn FnMut(&[u8]));
        build(&mut f);
        f.end();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_fact_is_the_text_format_makes() {
        let nums = [0u64, 1, 9, 10, 99, 100, 512, 65_535, 1 << 32, u64::MAX];
        for &n in &nums {
            assert_eq!(
                fact(|f| {
                    f.num("n", n).num("id", 7);
                }),
                format!("@ kind n={n} id=7\n")
            );
        }
        let names = [
            "",
            "bench",
            "a\"b\\c",
            "new\nline",
            "tab\there\u{7}",
            "\u{e9}t\u{e9} \u{1f600}",
            "\u{85}c1",
        ];
        for name in names {
            assert_eq!(
                fact(|f| {
                    f.num("id", 3).quoted("name", name).num("pages", 512);
                }),
                format!("@ kind id=3 name={} pages=512\n", Quoted(name))
            );
        }
    }

    #[test]
    fn a_long_fact_goes_out_whole_in_pieces() {
        let long = "x\"".repeat(300);
        let mut pieces = 0;
        let mut out = Vec::new();
        let mut f = Fact::new("long", |b: &[u8]| {
            pieces += 1;
            out.extend_from_slice(b);
        });
        for k in 0..40 {
            f.num("some_rather_long_key", k);
        }
        f.quoted("s", &long);
        f.end();
        let mut expect = String::from("@ long");
        for k in 0..40 {
            expect.push_str(&format!(" some_rather_long_key={k}"));
        }
        expect.push_str(&format!(" s={}\n", Quoted(&long)));
        assert_eq!(String::from_utf8(out).unwrap(), expect);
        assert!(pieces > 1);
    }

    #[test]
    fn the_mark_is_half_the_ring() {
        let mut r = ConRing::<16>::new();
        r.push(&[b'a'; 8]);
        assert!(!r.past_mark());
        r.push(b"b");
        assert!(r.past_mark());
        let mut n = 0;
        RingWriter::new(&mut r, |s: &[u8]| n += s.len()).drain_past_mark();
        assert_eq!(n, 9);
        assert!(r.is_empty());
        // Below the mark, nothing is written.
        r.push(b"c");
        let mut calls = 0;
        RingWriter::new(&mut r, |_: &[u8]| calls += 1).drain_past_mark();
        assert_eq!(calls, 0);
        assert_eq!(r.len(), 1);
    }
}
