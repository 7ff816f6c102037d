//! The start-info page (`MEM-3`), as a snapshot the guest can keep.

use core::ops::Deref;

use hypercall_abi::layout::{self, StartFlags};

/// What the hypervisor told this domain at start (`MEM-3`): a copy of the
/// start-info page taken before `main` runs, with decoding helpers.
///
/// Dereferences to the raw [`layout::StartInfo`] for the plain fields
/// (`domain_id`, `nr_pages`, `tsc_hz`, ...).
#[derive(Clone, Copy, Debug)]
pub struct StartInfo {
    raw: layout::StartInfo,
}

static START_INFO: spin::Once<StartInfo> = spin::Once::new();

/// The start info of this domain.
///
/// # Panics
///
/// Before the SDK's start-up has run (only possible in host tests).
pub fn start_info() -> &'static StartInfo {
    START_INFO
        .get()
        .expect("start info is available once the SDK has started")
}

/// Keeps the snapshot; called once by the runtime.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) fn install(raw: layout::StartInfo) -> &'static StartInfo {
    START_INFO.call_once(|| StartInfo { raw })
}

impl StartInfo {
    /// Wraps a raw start-info record.
    pub const fn new(raw: layout::StartInfo) -> StartInfo {
        StartInfo { raw }
    }

    /// The raw record.
    pub fn raw(&self) -> &layout::StartInfo {
        &self.raw
    }

    /// The domain's name (from the scenario manifest).
    pub fn name(&self) -> &str {
        decode_name(&self.raw.name)
    }

    /// The domain's command line.
    pub fn cmdline(&self) -> &str {
        decode_cmdline(&self.raw.cmdline, self.raw.cmdline_len)
    }

    /// The value of `key=value` in the command line (the last one wins);
    /// `Some("")` for a bare `key`.
    pub fn cmdline_value(&self, key: &str) -> Option<&str> {
        cmdline_value(self.cmdline(), key)
    }

    /// Whether this is the privileged driver domain.
    pub fn is_privileged(&self) -> bool {
        StartFlags::from_bits_truncate(self.raw.flags).contains(StartFlags::PRIVILEGED)
    }

    /// Virtual address of pseudo-physical page `page` of the window (`MEM-2`).
    pub fn page_va(&self, page: u64) -> u64 {
        self.raw
            .window_base
            .saturating_add(page.saturating_mul(hypercall_abi::PAGE_SIZE as u64))
    }
}

impl Deref for StartInfo {
    type Target = layout::StartInfo;
    fn deref(&self) -> &layout::StartInfo {
        &self.raw
    }
}

/// The longest valid UTF-8 prefix of `bytes` (the hypervisor is trusted for
/// layout, but a broken name must not crash the guest).
fn utf8_prefix(bytes: &[u8]) -> &str {
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Decodes a NUL-padded UTF-8 name.
pub(crate) fn decode_name(name: &[u8]) -> &str {
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    utf8_prefix(&name[..len])
}

/// Decodes `len` bytes of a command-line buffer (clamped to the buffer).
pub(crate) fn decode_cmdline(buf: &[u8], len: u32) -> &str {
    let len = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
    utf8_prefix(&buf[..len])
}

/// The value of `key=value` among the whitespace-separated words of
/// `cmdline`; the last occurrence wins, a bare `key` gives `Some("")`.
pub(crate) fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|word| match word.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if word == key => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_nul_padded() {
        let mut n = [0u8; 32];
        n[..5].copy_from_slice(b"hello");
        assert_eq!(decode_name(&n), "hello");
        assert_eq!(decode_name(&[b'x'; 32]), "x".repeat(32));
        assert_eq!(decode_name(&[0; 32]), "");
    }

    #[test]
    fn broken_utf8_keeps_the_valid_prefix() {
        let mut n = [0u8; 32];
        n[..4].copy_from_slice(&[b'a', b'b', 0xff, b'c']);
        assert_eq!(decode_name(&n), "ab");
    }

    #[test]
    fn cmdline_length_is_clamped() {
        let mut buf = [0u8; 1024];
        buf[..9].copy_from_slice(b"log=debug");
        assert_eq!(decode_cmdline(&buf, 9), "log=debug");
        assert_eq!(decode_cmdline(&buf, 3), "log");
        assert_eq!(decode_cmdline(&buf, 0), "");
        assert_eq!(decode_cmdline(&buf, u32::MAX).len(), 1024);
    }

    #[test]
    fn cmdline_values() {
        let c = "a=1  verbose b=two a=3";
        assert_eq!(cmdline_value(c, "a"), Some("3"));
        assert_eq!(cmdline_value(c, "b"), Some("two"));
        assert_eq!(cmdline_value(c, "verbose"), Some(""));
        assert_eq!(cmdline_value(c, "c"), None);
        assert_eq!(cmdline_value("", "a"), None);
    }
}
