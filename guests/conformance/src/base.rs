//! Clauses of `docs/abi/base.md`: one function per clause.

#[allow(unused_imports)]
use crate::*;

/// BASE-1 (run in the `base_and_call` phase).
pub fn base_1(si: &StartInfo) {
    clause("BASE-1", "abi_version", |ck| {
        ck.eq(
            "abi_version",
            c1(Hypercall::AbiVersion, 0),
            Ok(u64::from(ABI_VERSION)),
        );
        ck.eq("start info agrees", si.abi_version, ABI_VERSION);
        ck.eq(
            "garbage args",
            call(Hypercall::AbiVersion, [u64::MAX; 6]),
            Ok(u64::from(ABI_VERSION)),
        );
    });
}
