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
        self.buf[..take - first].copy_from_slice(&bytes[first..take]);
        // Counted only once the bytes are in place.
        self.len += take;
        take
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
