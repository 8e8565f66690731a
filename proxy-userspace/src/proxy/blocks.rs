//! Memory for the futures of requests in flight, reused by a worker's
//! connections.
//!
//! A connection's task is one future, as large as the largest state it can
//! be in; most connections of a busy node sit idle between requests, yet an
//! inline exchange would make every idle task as large as a request in
//! flight (the exchange's future holds the route, the upstream, the
//! answer's facts, the body relay's state: kilobytes). So the exchange runs
//! in a block of its own ([`InBlock`]) taken from its worker's [`Blocks`]
//! when a request starts and given back when it ends: an idle connection's
//! task holds only what waiting needs. The blocks are kept (up to
//! [`KEEP`], like the buffers idle connections lend, `conn::Spare`), so a
//! request allocates nothing once as many as run at once have been made.

use std::{
    alloc::Layout,
    cell::RefCell,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    ptr::NonNull,
    task::{Context, Poll},
};

/// How many free blocks a worker keeps: enough for the requests in flight
/// at once on one worker; more are freed when given back.
pub const KEEP: usize = 64;

/// A worker's free blocks, each with the layout it was made with.
#[derive(Default)]
pub struct Blocks {
    free: RefCell<Vec<(Layout, NonNull<u8>)>>,
}

impl Blocks {
    /// A block for `layout`: a free one (the last one given back: warm in
    /// the cache), or a new one.
    fn take(&self, layout: Layout) -> NonNull<u8> {
        let mut free = self.free.borrow_mut();
        if let Some(i) = free.iter().rposition(|(l, _)| *l == layout) {
            return free.swap_remove(i).1;
        }
        drop(free);
        // SAFETY: `layout` has a non-zero size (`InBlock::new` makes sure).
        let p = unsafe { std::alloc::alloc(layout) };
        NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    }

    /// Takes back a block that `take` gave for `layout`.
    fn give(&self, layout: Layout, p: NonNull<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < KEEP {
            free.push((layout, p));
        } else {
            drop(free);
            // SAFETY: `p` came from `alloc` with `layout` and is not used
            // any more.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        }
    }

    /// How many free blocks it holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.borrow().len()
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        for (layout, p) in self.free.get_mut().drain(..) {
            // SAFETY: as in `give`: made by `alloc` with `layout`, unused.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        }
    }
}

/// A future living in a block of `blocks`; the block goes back when it is
/// dropped. The future never moves once written (it is polled pinned where
/// it lies), so the handle itself may move.
pub struct InBlock<'b, F: Future> {
    fut: NonNull<F>,
    layout: Layout,
    blocks: &'b Blocks,
    /// It owns an `F` (for the drop check).
    _owns: PhantomData<F>,
}

// The future lies in its block and never moves with the handle.
impl<F: Future> Unpin for InBlock<'_, F> {}

impl<'b, F: Future> InBlock<'b, F> {
    pub fn new(blocks: &'b Blocks, fut: F) -> InBlock<'b, F> {
        let l = Layout::new::<F>();
        // Never zero-sized: `alloc` needs a size.
        let layout = Layout::from_size_align(l.size().max(1), l.align()).expect("a valid layout");
        let block = blocks.take(layout).cast::<F>();
        // SAFETY: the block is large and aligned enough for an `F`, and
        // nothing else uses it.
        unsafe { block.as_ptr().write(fut) };
        InBlock {
            fut: block,
            layout,
            blocks,
            _owns: PhantomData,
        }
    }
}

impl<F: Future> Future for InBlock<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future was written in `new` and is dropped only in
        // `drop`; it never moves (the handle points at it), so it may be
        // pinned; the handle is borrowed mutably, so nothing else touches it.
        let fut = unsafe { Pin::new_unchecked(&mut *self.fut.as_ptr()) };
        fut.poll(cx)
    }
}

impl<F: Future> Drop for InBlock<'_, F> {
    fn drop(&mut self) {
        // SAFETY: the future is live (written in `new`, not dropped yet),
        // and after this it is not used again.
        unsafe { std::ptr::drop_in_place(self.fut.as_ptr()) };
        self.blocks.give(self.layout, self.fut.cast());
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc, task::Waker};

    use super::*;

    /// Counts its drops.
    struct Dropped(Rc<Cell<usize>>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn a_block_is_reused_and_its_future_dropped_once() {
        let blocks = Blocks::default();
        let drops = Rc::new(Cell::new(0));
        let mut seen = None;
        for i in 0..3u64 {
            let d = Dropped(drops.clone());
            let mut f = InBlock::new(&blocks, async move {
                let _d = d;
                [i; 64].iter().sum::<u64>()
            });
            let at = f.fut.as_ptr() as usize;
            assert_eq!(*seen.get_or_insert(at), at, "the same block each time");
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(64 * i));
            assert_eq!(blocks.len(), 0);
            drop(f);
            assert_eq!(blocks.len(), 1);
        }
        assert_eq!(drops.get(), 3);
        // Dropped before it ran: its captures are dropped all the same.
        let d = Dropped(drops.clone());
        let f = InBlock::new(&blocks, async move {
            let _d = d;
        });
        drop(f);
        assert_eq!(drops.get(), 4);
    }

    #[test]
    fn only_so_many_are_kept() {
        let blocks = Blocks::default();
        let many: Vec<_> = (0..KEEP + 5)
            .map(|_| InBlock::new(&blocks, async { 1u8 }))
            .collect();
        drop(many);
        assert_eq!(blocks.len(), KEEP);
    }
}
