//! One copy per image of its read-only pages (MEM-2e): which frames hold
//! each image's shared pages, and how many domains use them.
//!
//! A page of an image that no writable segment touches (text, rodata) has
//! the same contents in every domain built from that image, and no domain
//! may write it. The first domain of an image gets a copy of each such page
//! in a frame of its own image ([`super::Owner::Image`], made so by
//! [`super::Mm::share_image`]); every later domain of the same image maps
//! those frames instead of taking frames of its own. The frames go back to
//! the pool (scrubbed) when the last domain of the image is released: this
//! record says when, [`super::Mm::unshare_image`] checks that nothing maps
//! them any more.
//!
//! Pure bookkeeping: the frame table is the authority on who owns a frame;
//! the frame audit checks the two agree ([`SharedImages::check`]).

use super::frame::ImageId;
use super::{Mm, Owner};
use crate::frames::Mfn;
use alloc::vec::Vec;

/// One image's shared pages: `(page of the window, frame)`, by page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Shared {
    pages: Vec<(u64, Mfn)>,
    users: u32,
}

/// Every image's shared pages and user count.
#[derive(Clone, Debug, Default)]
pub struct SharedImages {
    images: Vec<Option<Shared>>,
}

/// Why [`SharedImages`] refused (a hypervisor bug or an exhausted heap;
/// guests cannot reach it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareError {
    /// The image already has its shared copy ([`SharedImages::create`]).
    Exists,
    /// The image has no shared copy ([`SharedImages::detach`]).
    NotShared,
    /// The record cannot grow: the heap is full.
    NoMemory,
    /// The user count would overflow.
    TooManyUsers,
}

impl SharedImages {
    /// No image shared.
    pub const fn new() -> SharedImages {
        SharedImages { images: Vec::new() }
    }

    fn get(&self, image: ImageId) -> Option<&Shared> {
        self.images.get(usize::from(image))?.as_ref()
    }

    /// The shared pages of `image`, if it has its copy: `(page, frame)`,
    /// by page.
    pub fn pages(&self, image: ImageId) -> Option<&[(u64, Mfn)]> {
        self.get(image).map(|s| s.pages.as_slice())
    }

    /// How many domains use `image`'s copy (0: it has none).
    pub fn users(&self, image: ImageId) -> u32 {
        self.get(image).map_or(0, |s| s.users)
    }

    /// One more domain of `image` uses its existing copy; returns the
    /// copy's pages. `NotShared` (nothing changed) if it has none: the
    /// caller makes it ([`SharedImages::create`]).
    pub fn attach(&mut self, image: ImageId) -> Result<&[(u64, Mfn)], ShareError> {
        let s = self
            .images
            .get_mut(usize::from(image))
            .and_then(Option::as_mut)
            .ok_or(ShareError::NotShared)?;
        s.users = s.users.checked_add(1).ok_or(ShareError::TooManyUsers)?;
        Ok(&s.pages)
    }

    /// Records `image`'s copy, `pages` sorted by page, used by one domain.
    /// `Exists` if it has one already; nothing changed on any refusal.
    pub fn create(&mut self, image: ImageId, pages: Vec<(u64, Mfn)>) -> Result<(), ShareError> {
        let i = usize::from(image);
        if self.get(image).is_some() {
            return Err(ShareError::Exists);
        }
        if i >= self.images.len() {
            self.images
                .try_reserve(i + 1 - self.images.len())
                .map_err(|_| ShareError::NoMemory)?;
            self.images.resize_with(i + 1, || None);
        }
        self.images[i] = Some(Shared { pages, users: 1 });
        Ok(())
    }

    /// One domain of `image` is gone. When it was the last, the record of
    /// the copy goes and its `(page, frame)` list is returned: the caller
    /// unshares and frees those frames. `NotShared` (nothing changed) if
    /// the image has no copy.
    pub fn detach(&mut self, image: ImageId) -> Result<Option<Vec<(u64, Mfn)>>, ShareError> {
        let slot = self
            .images
            .get_mut(usize::from(image))
            .ok_or(ShareError::NotShared)?;
        let s = slot.as_mut().ok_or(ShareError::NotShared)?;
        s.users -= 1;
        if s.users > 0 {
            return Ok(None);
        }
        Ok(slot.take().map(|s| s.pages))
    }

    /// Checks this record against the frame table: every recorded frame is
    /// owned by its image, every frame owned by an image is recorded, and
    /// every recorded image has users. Returns the first wrong frame and
    /// what is wrong. O(frames + shared pages).
    pub fn check(&self, mm: &Mm) -> Result<(), (Mfn, &'static str)> {
        let mut recorded = 0u64;
        for (i, s) in self.images.iter().enumerate() {
            let Some(s) = s else { continue };
            let image = ImageId::try_from(i).map_err(|_| (0, "image index beyond ImageId"))?;
            for &(_, mfn) in &s.pages {
                if mm.frame(mfn).map(|f| f.owner()) != Some(Owner::Image(image)) {
                    return Err((mfn, "recorded shared image frame not owned by its image"));
                }
                recorded += 1;
            }
            if s.users == 0 {
                return Err((
                    s.pages.first().map_or(0, |p| p.1),
                    "shared image with no user",
                ));
            }
        }
        let owned = (0..mm.frame_count())
            .filter(|&m| matches!(mm.frame(m).map(|f| f.owner()), Some(Owner::Image(_))))
            .count() as u64;
        if owned != recorded {
            let stray = (0..mm.frame_count())
                .find(|&m| match mm.frame(m).map(|f| f.owner()) {
                    Some(Owner::Image(img)) => !self
                        .pages(img)
                        .is_some_and(|p| p.iter().any(|&(_, f)| f == m)),
                    _ => false,
                })
                .unwrap_or(0);
            return Err((
                stray,
                "frame owned by an image but not recorded as its copy",
            ));
        }
        Ok(())
    }
}
