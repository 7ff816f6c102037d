//! Clauses of `docs/abi/console.md`: one function per clause.

#[allow(unused_imports)]
use crate::*;

/// CON-1 (run in the `console` phase).
pub fn con_1() {
    clause("CON-1", "console_write returns the length", |ck| {
        let m = b"CON-1 marker: hello\n";
        ck.eq(
            "write",
            write(m.as_ptr() as u64, m.len() as u64),
            Ok(m.len() as u64),
        );
        let mut buf = alloc::vec![b'x'; 256];
        buf[255] = b'\n';
        ck.eq("256 bytes", write(buf.as_ptr() as u64, 256), Ok(256));
    });
}

/// CON-2 (run in the `console` phase).
pub fn con_2() {
    clause(
        "CON-2",
        "a write over 256 bytes is short: 256 taken, the rest by the next call",
        |ck| {
            // Lines of 64 bytes ("CON2 line NN" + dashes + newline), so
            // xtask can check that every one of them was printed once.
            let mut buf = alloc::vec::Vec::new();
            for i in 0..64 {
                let mut line = alloc::format!("CON2 line {i:02} ");
                while line.len() < 63 {
                    line.push('-');
                }
                line.push('\n');
                buf.extend_from_slice(line.as_bytes());
            }
            let mut at = 0u64;
            let mut calls = 0;
            while at < 4096 {
                let n = (4096 - at).min(4096);
                let r = write(buf.as_ptr() as u64 + at, n);
                let want = n.min(CONSOLE_WRITE_STEP);
                ck.eq(
                    &alloc::format!("call {calls} ({n} bytes offered)"),
                    r,
                    Ok(want),
                );
                if r != Ok(want) {
                    break;
                }
                at += want;
                calls += 1;
            }
            ck.eq("calls for 4096 bytes", calls, 16);
            // The whole range is checked, not only the part taken: a range
            // whose tail (past the first 256 bytes) is unmapped writes
            // nothing (the marker must not appear).
            // The marker sits in the window's top 16 bytes (dead, see
            // CON-1b), inside the first 256 bytes of the range.
            let si = guest_sdk::start_info();
            let end = si.page_va(si.nr_pages);
            let msg = b"CON2-LEAK";
            let at = end - msg.len() as u64;
            for (i, &b) in msg.iter().enumerate() {
                // SAFETY: the window's top 16 bytes are dead (CON-1b).
                unsafe { core::ptr::write_volatile((at + i as u64) as *mut u8, b) };
            }
            ck.err(
                "256 bytes mapped, tail past the window",
                write(end - 256, 400),
                Error::BadAddress,
            );
            let nl = b"\n";
            let _ = write(nl.as_ptr() as u64, 1);
        },
    );
}

/// CON-1a (run in the `console` phase).
pub fn con_1a() {
    clause(
        "CON-1a",
        "length over 4096: invalid_argument, nothing written",
        |ck| {
            let mut buf = alloc::vec![b'L'; 8192];
            buf[..12].copy_from_slice(b"CON1A-LEAK \n");
            for len in [4097u64, 8192, 1 << 32, u64::MAX] {
                ck.err(
                    &format!("len {len}"),
                    write(buf.as_ptr() as u64, len),
                    Error::InvalidArgument,
                );
            }
        },
    );
}

/// CON-1b (run in the `console` phase).
pub fn con_1b() {
    clause(
        "CON-1b",
        "bad pointer: bad_address, nothing written",
        |ck| {
            // A buffer whose last byte is past the end of the window: its
            // mapped part ("CON1B-LEAK") must not be printed (xtask checks). The
            // window's top 16 bytes hold `_start`'s dead return address and
            // the runtime's saved frame pointer, never used again.
            let si = guest_sdk::start_info();
            let end = si.page_va(si.nr_pages);
            let msg = b"CON1B-LEAK";
            let at = end - msg.len() as u64;
            for (i, &b) in msg.iter().enumerate() {
                // SAFETY: `at..end` are the window's top bytes, mapped writable;
                // they hold `_start`'s dead return address and saved frame
                // pointer, which nothing reads again.
                unsafe { core::ptr::write_volatile((at + i as u64) as *mut u8, b) };
            }
            ck.err(
                "ends past the window",
                write(at, msg.len() as u64 + 1),
                Error::BadAddress,
            );
            ck.err(
                "starts unmapped, ends mapped",
                write(SHARED_INFO_VA - 4, 16),
                Error::BadAddress,
            );
            ck.err("null", write(0, 10), Error::BadAddress);
            ck.err(
                "hypervisor",
                write(0xffff_ffff_8000_0000, 10),
                Error::BadAddress,
            );
            ck.err(
                "direct map",
                write(0xffff_8000_0000_0000, 10),
                Error::BadAddress,
            );
            ck.err("wraps", write(u64::MAX, 2), Error::BadAddress);
            let nl = b"\n";
            let _ = write(nl.as_ptr() as u64, 1);
        },
    );
}

/// CON-1c (run in the `console` phase).
pub fn con_1c() {
    clause("CON-1c", "length 0 returns 0", |ck| {
        ck.eq("len 0, valid ptr", write(start_info_va(), 0), Ok(0));
        ck.eq("len 0, null ptr", write(0, 0), Ok(0));
        let leak = b"CON1C-LEAK\n";
        ck.eq("len 0, text", write(leak.as_ptr() as u64, 0), Ok(0));
        ck.eq(
            "len 0, hypervisor ptr",
            write(0xffff_ffff_8000_0000, 0),
            Ok(0),
        );
    });
}

/// CON-1d: markers judged by xtask from the transcript (run in the
/// `console` phase).
pub fn con_1d() {
    let part1 = b"CON1D partial ";
    let part2 = b"line joined\n";
    let _ = write(part1.as_ptr() as u64, part1.len() as u64);
    guest_sdk::sched::yield_now();
    let _ = write(part2.as_ptr() as u64, part2.len() as u64);
    let ctl = b"CON1D ctl:\x1b[1m\x07\r\x7f|\t|end\n";
    let _ = write(ctl.as_ptr() as u64, ctl.len() as u64);
    let forge = b"CON1D forge\n@ forged by=conf\n";
    let _ = write(forge.as_ptr() as u64, forge.len() as u64);
    let mut long = alloc::vec![b'y'; 300];
    long[..11].copy_from_slice(b"CON1D long ");
    long.push(b'\n');
    // UTF-8 (CON-1d): valid text unchanged, each invalid sequence one
    // U+FFFD with the rest kept, a character at the 256-byte cut moved whole.
    let mut straddle = alloc::vec![b'x'; 254];
    straddle[..15].copy_from_slice(b"CON1D straddle ");
    straddle.extend_from_slice("\u{1f980}tail\n".as_bytes());
    for bytes in [
        &long[..],
        "CON1D utf8: h\u{e9}llo \u{2713} \u{1f980}\n".as_bytes(),
        &b"CON1D bad:\xff|\xe2\x82|end\n"[..],
        &straddle[..],
    ] {
        // Longer than one call takes (CON-2): write the rest.
        let mut at = 0;
        while at < bytes.len() {
            match write(bytes[at..].as_ptr() as u64, (bytes.len() - at) as u64) {
                Ok(n) if n > 0 => at += n as usize,
                _ => break,
            }
        }
    }
    emit(
        "CON-1d",
        "prefix, buffering, sanitising",
        true,
        "judged by xtask",
    );
}
