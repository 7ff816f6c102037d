//! A domain's console line (spec clause `CON-1d`): buffering bytes into
//! lines and rendering a line for the hypervisor's serial console.
//!
//! * A line is at most [`LINE_MAX`] bytes; a longer one continues on the
//!   next line. A UTF-8 character that would straddle the cut moves whole
//!   to the next line, so a valid line is never broken inside a character.
//! * Valid UTF-8 passes unchanged, except control characters other than
//!   `\t`, which become `?` (a guest cannot drive the terminal).
//! * Each invalid UTF-8 sequence (each maximal invalid subpart, as the
//!   Unicode standard counts them) becomes one U+FFFD; the rest of the line
//!   is kept.

use core::fmt::{self, Write};

/// Most bytes of one console line.
pub const LINE_MAX: usize = 256;

/// One domain's partial console line.
#[derive(Clone, Debug)]
pub struct LineBuffer {
    bytes: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        LineBuffer::new()
    }
}

impl LineBuffer {
    /// An empty line.
    pub const fn new() -> LineBuffer {
        LineBuffer {
            bytes: [0; LINE_MAX],
            len: 0,
        }
    }

    /// The bytes buffered so far.
    pub fn pending(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes one byte. `emit` is called with each line it completes: at a
    /// newline (without it), or when the buffer is full (without the bytes
    /// of a character still incomplete at its end, which start the next
    /// line).
    pub fn push(&mut self, b: u8, mut emit: impl FnMut(&[u8])) {
        if b == b'\n' {
            emit(self.pending());
            self.len = 0;
            return;
        }
        if self.len == LINE_MAX {
            let keep = incomplete_tail(&self.bytes);
            let cut = LINE_MAX - keep;
            emit(&self.bytes[..cut]);
            self.bytes.copy_within(cut.., 0);
            self.len = keep;
        }
        self.bytes[self.len] = b;
        self.len += 1;
    }

    /// Emits what is buffered, if anything (e.g. when the domain ends).
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if self.len > 0 {
            emit(self.pending());
            self.len = 0;
        }
    }
}

/// How many bytes at the end of `bytes` are the start of a UTF-8 character
/// that is not complete yet (0 to 3).
pub fn incomplete_tail(bytes: &[u8]) -> usize {
    for k in 1..=3.min(bytes.len()) {
        let tail = &bytes[bytes.len() - k..];
        match core::str::from_utf8(tail) {
            // A valid prefix that only lacks its end.
            Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => return k,
            _ => {}
        }
    }
    0
}

/// A console line as the hypervisor prints it: see the module docs.
pub struct Rendered<'a>(pub &'a [u8]);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                f.write_char(if c.is_control() && c != '\t' { '?' } else { c })?;
            }
            if !chunk.invalid().is_empty() {
                f.write_char(char::REPLACEMENT_CHARACTER)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    fn render(b: &[u8]) -> String {
        Rendered(b).to_string()
    }

    /// Feeds `input` and returns the lines emitted, rendered.
    fn lines(input: &[u8]) -> Vec<String> {
        let mut buf = LineBuffer::new();
        let mut out = Vec::new();
        for &b in input {
            buf.push(b, |l| out.push(render(l)));
        }
        buf.flush(|l| out.push(render(l)));
        out
    }

    #[test]
    fn valid_utf8_passes_unchanged() {
        assert_eq!(
            render("héllo wörld ✓ 🦀\t|".as_bytes()),
            "héllo wörld ✓ 🦀\t|"
        );
    }

    #[test]
    fn control_characters_become_question_marks() {
        assert_eq!(render(b"a\x1b[1m\x07\r\x7f|\t|b"), "a?[1m???|\t|b");
        // C1 controls are control characters too.
        assert_eq!(render("x\u{85}y".as_bytes()), "x?y");
    }

    #[test]
    fn each_invalid_sequence_becomes_one_replacement_and_the_rest_stays() {
        assert_eq!(render(b"ok \xff then"), "ok \u{fffd} then");
        assert_eq!(render(b"a\xc3b"), "a\u{fffd}b");
        // A truncated 3-byte sequence is one maximal subpart.
        assert_eq!(render(b"a\xe2\x82b"), "a\u{fffd}b");
        assert_eq!(render(b"\xff\xfe"), "\u{fffd}\u{fffd}");
        // An overlong encoding and a surrogate are invalid too.
        assert_eq!(render(b"<\xc0\xaf>"), "<\u{fffd}\u{fffd}>");
        assert_eq!(render(b"<\xed\xa0\x80>"), "<\u{fffd}\u{fffd}\u{fffd}>");
    }

    #[test]
    fn newline_ends_a_line_and_partials_join() {
        assert_eq!(lines(b"one\ntwo\n"), ["one", "two"]);
        assert_eq!(lines(b"partial "), ["partial "]);
        assert_eq!(lines(b"\n"), [""]);
    }

    #[test]
    fn a_long_ascii_line_is_cut_at_line_max() {
        let mut input = alloc::vec![b'y'; 300];
        input.push(b'\n');
        let out = lines(&input);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), LINE_MAX);
        assert_eq!(out[1], "y".repeat(300 - LINE_MAX));
    }

    #[test]
    fn a_character_straddling_the_cut_moves_whole_to_the_next_line() {
        for (ch, width) in [("é", 2), ("€", 3), ("🦀", 4)] {
            for shift in 1..width {
                // The character starts `shift` bytes before the cut.
                let mut input = alloc::vec![b'x'; LINE_MAX - shift];
                input.extend_from_slice(ch.as_bytes());
                input.extend_from_slice(b"tail\n");
                let out = lines(&input);
                assert_eq!(out.len(), 2, "{ch} shift {shift}");
                assert_eq!(out[0], "x".repeat(LINE_MAX - shift), "{ch} shift {shift}");
                assert_eq!(out[1], alloc::format!("{ch}tail"), "{ch} shift {shift}");
            }
            // Ending exactly at the cut: nothing moves.
            let mut input = alloc::vec![b'x'; LINE_MAX - width];
            input.extend_from_slice(ch.as_bytes());
            input.extend_from_slice(b"tail\n");
            let out = lines(&input);
            assert_eq!(out[0].len(), LINE_MAX);
            assert!(out[0].ends_with(ch));
            assert_eq!(out[1], "tail");
        }
    }

    #[test]
    fn invalid_bytes_at_the_cut_are_not_carried() {
        // A lone continuation byte at the end is not the start of anything.
        let mut input = alloc::vec![b'x'; LINE_MAX - 1];
        input.push(0x80);
        input.extend_from_slice(b"z\n");
        let out = lines(&input);
        assert_eq!(
            out[0],
            alloc::format!("{}\u{fffd}", "x".repeat(LINE_MAX - 1))
        );
        assert_eq!(out[1], "z");
        assert_eq!(incomplete_tail(b"ab\xf0\x9f"), 2);
        assert_eq!(incomplete_tail(b"ab\xf0\x9f\xa6"), 3);
        assert_eq!(incomplete_tail(b"ab\xf0\x9f\xa6\x80"), 0);
        assert_eq!(incomplete_tail(b"ab\xff"), 0);
        assert_eq!(incomplete_tail(b""), 0);
    }

    /// `is_empty` and `pending` follow the buffer: empty when new, after a
    /// newline and after a flush (which then emits nothing), not empty
    /// with a byte buffered or with the carried start of a character
    /// after a cut.
    #[test]
    fn the_buffer_says_what_it_holds() {
        let mut buf = LineBuffer::default();
        let mut out: Vec<Vec<u8>> = Vec::new();
        assert!(buf.is_empty());
        buf.push(b'a', |l| out.push(l.to_vec()));
        assert!(!buf.is_empty());
        assert_eq!(buf.pending(), b"a");
        buf.push(b'\n', |l| out.push(l.to_vec()));
        assert!(buf.is_empty());
        buf.flush(|l| out.push(l.to_vec()));
        assert_eq!(out, [b"a".to_vec()], "an empty flush emits nothing");
        for _ in 0..LINE_MAX - 1 {
            buf.push(b'x', |l| out.push(l.to_vec()));
        }
        for &b in "é".as_bytes() {
            buf.push(b, |l| out.push(l.to_vec()));
        }
        assert_eq!(out.len(), 2, "the full line was emitted");
        assert!(!buf.is_empty());
        assert_eq!(buf.pending(), "é".as_bytes());
        buf.flush(|l| out.push(l.to_vec()));
        assert!(buf.is_empty());
        assert_eq!(out[2], "é".as_bytes());
    }
}
