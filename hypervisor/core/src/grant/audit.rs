//! What the grant tables hold, for the frame audit: one hold per mapping
//! ([`GrantTables::holds`]) and the tables checked against their mappings
//! and the frame table ([`GrantTables::audit`]).

use super::*;

/// An inconsistency found by [`GrantTables::audit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantAuditError {
    /// The domain whose table it is in.
    pub dom: DomId,
    /// What is wrong.
    pub what: &'static str,
}

impl GrantTables {
    /// One frame per grant mapping: the hypervisor's holds on behalf of
    /// grants, for `mm::audit::audit_holds`.
    pub fn holds(&self) -> impl Iterator<Item = Mfn> + '_ {
        self.doms
            .values()
            .flat_map(|d| d.mappings.iter().flatten().map(|m| m.mfn))
    }

    /// Grant mappings in all.
    pub fn mapping_count(&self) -> usize {
        self.doms.values().map(|d| d.live_mappings).sum()
    }

    /// Checks the tables against their mappings and the frame table: every
    /// grant's map count equals the mappings of it; every mapping names a
    /// live grant to its holder, of the same frame, writable only if the
    /// grant is; a mapped frame is its granter's, held, and not a table;
    /// the bounds hold.
    pub fn audit(&self, mm: &Mm) -> Result<(), GrantAuditError> {
        let fail = |dom, what| Err(GrantAuditError { dom, what });
        let mut counted: BTreeMap<(DomId, GrantRef), u32> = BTreeMap::new();
        for (&dom, d) in &self.doms {
            if d.grants.len() > MAX_GRANTS_PER_DOMAIN || d.mappings.len() > MAX_MAPPINGS_PER_DOMAIN
            {
                return fail(dom, "table beyond its bound");
            }
            if d.live_mappings != d.mappings.iter().flatten().count() {
                return fail(dom, "live mapping count differs from the mappings");
            }
            for m in d.mappings.iter().flatten() {
                let Some(g) = self.grant(m.granter, m.gref) else {
                    return fail(dom, "mapping of a grant that does not exist");
                };
                if g.grantee != dom || g.mfn != m.mfn {
                    return fail(dom, "mapping differs from its grant");
                }
                if m.writable && g.readonly {
                    return fail(dom, "writable mapping of a read-only grant");
                }
                let Some(f) = mm.frame(m.mfn) else {
                    return fail(dom, "mapped frame beyond the frame table");
                };
                if f.owner() != Owner::Domain(m.granter) {
                    return fail(dom, "mapped frame not owned by its granter");
                }
                if f.frame_type().level().is_some() {
                    return fail(dom, "mapped grant frame is a page table");
                }
                *counted.entry((m.granter, m.gref)).or_default() += 1;
            }
        }
        let mut per_frame: BTreeMap<Mfn, (DomId, u32)> = BTreeMap::new();
        for (&dom, d) in &self.doms {
            for (i, g) in d.grants.iter().enumerate() {
                let Some(g) = g else { continue };
                let n = counted.get(&(dom, index(i))).copied().unwrap_or(0);
                if n != g.maps {
                    return fail(dom, "grant map count differs from its mappings");
                }
                if d.dying && g.maps == 0 {
                    return fail(dom, "dying domain kept an unmapped grant");
                }
                let e = per_frame.entry(g.mfn).or_insert((dom, 0));
                e.1 += g.maps;
            }
        }
        // Every grant mapping of a frame holds it once (other holds, such as
        // a ring page the hypervisor keeps, may come on top).
        for (mfn, (dom, maps)) in per_frame {
            let held = mm.frame(mfn).map_or(0, |f| u32::from(f.held()));
            if held < maps {
                return fail(dom, "a granted frame has fewer holds than mappings");
            }
        }
        Ok(())
    }
}
