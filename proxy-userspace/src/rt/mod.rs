//! The workers' event loop: a single-threaded executor over an
//! edge-triggered epoll reactor.
//!
//! Each worker thread runs one [`Runtime`]. Its connections are tasks that
//! never leave the thread, so the loop is built for that case: a task is
//! woken from its own thread by pushing it on a plain queue, a socket's
//! readiness is one byte the reactor sets and the socket's reads clear, and
//! the loop blocks in `epoll_wait` only when no task is ready. Other threads
//! (the deadline sweeper, the shutdown signal) wake a task through a locked
//! queue and an eventfd; that path is rare and may cost a system call.
//!
//! The reactor has no timers: deadlines live on the watchdog
//! (`proxy::watchdog`), whose sweeper thread wakes what is due.
//!
//! A socket ([`net::TcpStream`], [`net::TcpListener`]) belongs to the
//! runtime of the thread that registered it: it may be moved to and
//! dropped on another thread (the backend pool holds every worker's idle
//! connections), but only waited on by its own.

pub mod net;
mod sys;

use std::{
    cell::{Cell, RefCell, UnsafeCell},
    collections::VecDeque,
    future::Future,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll, RawWaker, RawWakerVTable, Wake, Waker},
    time::{Duration, Instant},
};

/// Tasks run between two looks at the sockets while tasks stay ready (a
/// look that finds the queue empty blocks instead).
const TASKS_PER_POLL: u32 = 64;
/// The shortest list of spawned tasks that is swept for finished ones.
const SWEEP_MIN: usize = 64;
/// Events taken from one `epoll_wait`.
const EVENTS: usize = 256;
/// A yield before a wait that lasts longer than this gave the CPU to
/// something busier than a peer answering (see [`Reactor::yield_cpu`]).
const LONG_YIELD: Duration = Duration::from_micros(200);
/// The most waits in a row that skip the yield after long ones.
const MAX_YIELD_BACKOFF: u32 = 4096;
/// The epoll key of the runtime's own eventfd.
const WAKE_KEY: u64 = u64::MAX;

/// Readiness bits of a registered socket.
const READABLE: u8 = 1;
const WRITABLE: u8 = 2;
/// The peer has shut its side (or the connection failed): sticky, never
/// cleared by a read.
const HUNG_UP: u8 = 4;

/// What other threads reach a runtime by: its queue for tasks they wake
/// and the eventfd that interrupts its wait.
struct Remote {
    id: u64,
    tasks: Mutex<RemoteTasks>,
    /// Registrations whose sockets were dropped on another thread, and
    /// whether there are any (so that the loop need not lock to know).
    released: Mutex<Vec<u64>>,
    has_released: AtomicBool,
    /// The `block_on` future was woken.
    main_woken: AtomicBool,
    /// Looks at the sockets' events so far (wrapping; written by the
    /// loop's thread only).
    turns: AtomicU32,
    wake_fd: OwnedFd,
}

/// Tasks woken from other threads, and whether the runtime is gone (a
/// task woken after that is dropped by its waker: queued here, it would
/// hold the `Remote` that holds it).
#[derive(Default)]
struct RemoteTasks {
    queue: Vec<Arc<Task>>,
    closed: bool,
}

impl Remote {
    fn interrupt(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to an eventfd we own. EAGAIN (the counter
        // is full) still leaves the loop to be woken, so it is ignored.
        unsafe { libc::write(self.wake_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// The loop's state, reached through [`CURRENT`] while it runs.
struct Local {
    remote: Arc<Remote>,
    queue: RefCell<VecDeque<Arc<Task>>>,
    reactor: Reactor,
}

thread_local! {
    /// The runtime running on this thread, if any: set for the length of
    /// [`Runtime::block_on`].
    static CURRENT: Cell<*const Local> = const { Cell::new(std::ptr::null()) };
}

/// Calls `f` with the runtime running on this thread.
fn with_current<R>(f: impl FnOnce(Option<&Local>) -> R) -> R {
    CURRENT.with(|c| {
        let p = c.get();
        // SAFETY: set only while `block_on` holds the `Local` alive on
        // this thread, and reset before it returns.
        f(unsafe { p.as_ref() })
    })
}

/// One worker's executor and reactor. Not `Send`: it runs where it was made.
pub struct Runtime {
    local: Box<Local>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Runtime {
    pub fn new() -> io::Result<Runtime> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        // SAFETY: plain system calls; the descriptors are checked and owned.
        let wake_fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake_fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let wake_fd = unsafe { OwnedFd::from_raw_fd(wake_fd) };
        let reactor = Reactor::new()?;
        // Readable only: the loop's own read of the counter makes it
        // writable, which would be one more event for nothing.
        reactor.add(
            wake_fd.as_raw_fd(),
            WAKE_KEY,
            (libc::EPOLLIN | libc::EPOLLET) as u32,
        )?;
        Ok(Runtime {
            local: Box::new(Local {
                remote: Arc::new(Remote {
                    id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                    tasks: Mutex::default(),
                    released: Mutex::default(),
                    has_released: AtomicBool::new(false),
                    main_woken: AtomicBool::new(true),
                    turns: AtomicU32::new(0),
                    wake_fd,
                }),
                queue: RefCell::new(VecDeque::with_capacity(64)),
                reactor,
            }),
            _not_send: std::marker::PhantomData,
        })
    }

    /// Whether the loop yields the CPU once (`sched_yield`) before it
    /// blocks in `epoll_wait`. Off in a new runtime.
    ///
    /// A loop that has nothing left to run has just handed work to a peer
    /// (written a request to a backend, a response to a client) and would
    /// sleep until the answer comes. When that peer shares its CPU, the
    /// sleep and the wake-up cost the kernel more than letting the peer
    /// run at once: after the yield the answer is usually waiting and
    /// `epoll_wait` returns without sleeping. When the peer runs elsewhere
    /// the yield returns at once, one system call spent while the peer
    /// works. The yield only passes the CPU within the loop's own CPU
    /// cgroup: a peer in another one (a pod of its own, where the cpu
    /// controller is on) mostly does not run first. Beside a CPU-bound
    /// task the yield would cost a slice of that task's time, so a yield
    /// that comes back late makes the loop skip the next ones for a while
    /// (`Reactor::yield_cpu`).
    pub fn set_yield_before_wait(&self, on: bool) {
        self.local.reactor.yield_before_wait.set(on);
    }

    /// Runs `main`, and the tasks it spawns, until `main` completes. Tasks
    /// still pending then stay (a later `block_on` runs them on); those
    /// left when the runtime is dropped are dropped with it, on its thread.
    pub fn block_on<F: Future>(&self, main: F) -> F::Output {
        let local: &Local = &self.local;
        // Checked before anything changes: the panic leaves the running
        // runtime current.
        assert!(
            CURRENT.with(Cell::get).is_null(),
            "a runtime is already running on this thread"
        );
        let _reset = Reset(CURRENT.with(|c| c.replace(local as *const Local)));
        let waker = Waker::from(Arc::new(MainWaker(local.remote.clone())));
        let mut cx = Context::from_waker(&waker);
        let mut main = pin!(main);
        local.remote.main_woken.store(true, Ordering::Relaxed);
        let mut since_poll = 0u32;
        loop {
            // Looked at before it is swapped: a plain load when not woken.
            if local.remote.main_woken.load(Ordering::Acquire)
                && local.remote.main_woken.swap(false, Ordering::AcqRel)
                && let Poll::Ready(out) = main.as_mut().poll(&mut cx)
            {
                return out;
            }
            // The tasks ready now; those they wake wait for the next round.
            let ready = local.queue.borrow().len();
            for _ in 0..ready {
                let Some(task) = local.queue.borrow_mut().pop_front() else {
                    break;
                };
                task.run();
            }
            since_poll += ready as u32;
            let idle =
                local.queue.borrow().is_empty() && !local.remote.main_woken.load(Ordering::Acquire);
            if idle || since_poll >= TASKS_PER_POLL {
                since_poll = 0;
                local.turn(idle);
            }
        }
    }

    /// Drops every task still pending (their sockets close).
    fn clear(&self) {
        let local: &Local = &self.local;
        let previous = CURRENT.with(|c| c.replace(local as *const Local));
        // Back to what was current (another runtime's, when this one is
        // dropped inside it), never left pointing at this one.
        let _reset = Reset(previous);
        let queued: Vec<_> = local.queue.borrow_mut().drain(..).collect();
        for task in queued {
            task.cancel();
        }
        let remote: Vec<_> = {
            let mut tasks = local.remote.tasks.lock().expect("runtime lock");
            tasks.closed = true;
            std::mem::take(&mut tasks.queue)
        };
        for task in remote {
            task.cancel();
        }
        for task in local.reactor.tasks.take() {
            if let Some(task) = task.upgrade() {
                task.cancel();
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Puts back the runtime that was current before.
struct Reset(*const Local);

impl Drop for Reset {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Runs `fut` as a task on this thread's runtime.
///
/// # Panics
/// Outside a runtime.
pub fn spawn<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    with_current(|local| {
        let local = local.expect("rt::spawn outside a runtime");
        let task = Arc::new(Task {
            future: UnsafeCell::new(Some(Box::pin(fut))),
            queued: AtomicBool::new(true),
            remote: local.remote.clone(),
        });
        local.reactor.tasks.borrow_mut().push(Arc::downgrade(&task));
        local.queue.borrow_mut().push_back(task);
    })
}

/// Wakes `block_on`'s own future.
struct MainWaker(Arc<Remote>);

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let remote = &self.0;
        remote.main_woken.store(true, Ordering::Release);
        let here = with_current(|l| l.is_some_and(|l| l.remote.id == remote.id));
        if !here {
            remote.interrupt();
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A spawned future and whether it is queued to run.
struct Task {
    /// Touched only on the runtime's thread (polled, or dropped when done).
    future: UnsafeCell<Option<BoxFuture>>,
    queued: AtomicBool,
    remote: Arc<Remote>,
}

// SAFETY: `future` is only accessed on the thread of the runtime the task
// belongs to (`run` and `cancel` are called by that runtime alone); what
// crosses threads is the `Arc` (through wakers) and the atomic flag.
unsafe impl Sync for Task {}

impl Task {
    fn run(self: Arc<Self>) {
        // A read-modify-write, not a store: a waker on another thread that
        // changes what the poll below reads and then finds `queued` still
        // set must be ordered before this poll (a plain store could wait
        // in the store buffer while the poll reads the old state, and the
        // wake would be lost).
        self.queued.swap(false, Ordering::AcqRel);
        // SAFETY: see `unsafe impl Sync`: we are on the runtime's thread,
        // and no other borrow of the slot is live (a task is never polled
        // from within its own poll).
        let slot = unsafe { &mut *self.future.get() };
        let Some(fut) = slot.as_mut() else { return };
        // Borrowed, not counted: `self` holds the task while it runs, and
        // whoever keeps the waker clones it (which counts).
        // SAFETY: the pointer is a live `Arc<Task>`'s; the waker is never
        // dropped (so never gives back a count it did not take).
        let waker = std::mem::ManuallyDrop::new(unsafe {
            Waker::from_raw(RawWaker::new(Arc::as_ptr(&self).cast::<()>(), &TASK_VTABLE))
        });
        let mut cx = Context::from_waker(&waker);
        // A task that panics is dropped, and the loop and its other tasks
        // go on (one connection's bug does not take down the worker's
        // others). The panic hook has printed the message already.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        match polled {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(())) => drop_future(slot.take()),
            Err(_) => {
                tracing::error!("a task panicked; it was dropped and the worker goes on");
                drop_future(slot.take());
            }
        }
    }

    fn cancel(&self) {
        // SAFETY: as in `run`.
        let fut = unsafe { (*self.future.get()).take() };
        drop(fut);
    }

    fn schedule(self: Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let rejected = with_current(|local| match local {
            Some(local) if local.remote.id == self.remote.id => {
                local.queue.borrow_mut().push_back(self);
                None
            }
            _ => Some(self),
        });
        if let Some(task) = rejected {
            let remote = task.remote.clone();
            let mut tasks = remote.tasks.lock().expect("runtime lock");
            if tasks.closed {
                // Dropped once the lock is let go.
                drop(tasks);
                drop(task);
                return;
            }
            tasks.queue.push(task);
            drop(tasks);
            remote.interrupt();
        }
    }
}

/// Drops a finished or panicked future; a panic in its drop (what is left
/// of the future is then leaked) is contained like one in its poll.
fn drop_future(fut: Option<BoxFuture>) {
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(fut)));
    if dropped.is_err() {
        tracing::error!("a task panicked while it was dropped; the worker goes on");
    }
}

static TASK_VTABLE: RawWakerVTable =
    RawWakerVTable::new(clone_task, wake_task, wake_task_by_ref, drop_task);

unsafe fn clone_task(ptr: *const ()) -> RawWaker {
    // SAFETY: `ptr` came from `Arc::into_raw` and its count is held.
    unsafe { Arc::increment_strong_count(ptr.cast::<Task>()) };
    RawWaker::new(ptr, &TASK_VTABLE)
}

unsafe fn wake_task(ptr: *const ()) {
    // SAFETY: consumes the waker's count.
    let task = unsafe { Arc::from_raw(ptr.cast::<Task>()) };
    task.schedule();
}

unsafe fn wake_task_by_ref(ptr: *const ()) {
    // SAFETY: borrows the waker's count and takes a new one for the queue.
    let task = unsafe {
        Arc::increment_strong_count(ptr.cast::<Task>());
        Arc::from_raw(ptr.cast::<Task>())
    };
    task.schedule();
}

unsafe fn drop_task(ptr: *const ()) {
    // SAFETY: releases the waker's count.
    unsafe { Arc::decrement_strong_count(ptr.cast::<Task>()) };
}

impl Local {
    /// One look at the sockets: waits for events when `block`, else takes
    /// only those already there; wakes what they concern.
    fn turn(&self, block: bool) {
        self.reactor.release_dropped(&self.remote);
        let woken = self.reactor.poll(block);
        let t = self.remote.turns.load(Ordering::Relaxed);
        self.remote
            .turns
            .store(t.wrapping_add(1), Ordering::Relaxed);
        if woken.remote {
            let mut buf = 0u64;
            // SAFETY: an 8-byte read from our eventfd (resets its counter).
            unsafe {
                libc::read(
                    self.remote.wake_fd.as_raw_fd(),
                    (&mut buf as *mut u64).cast(),
                    8,
                )
            };
            let tasks = std::mem::take(&mut self.remote.tasks.lock().expect("runtime lock").queue);
            self.queue.borrow_mut().extend(tasks);
            self.reactor.release_dropped(&self.remote);
        }
    }
}

/// The epoll instance and what each registration's key leads to.
struct Reactor {
    epoll: OwnedFd,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    events: RefCell<Vec<libc::epoll_event>>,
    /// Wakers taken from sockets during one poll, woken after it.
    to_wake: RefCell<Vec<Waker>>,
    /// Registrations dropped on this thread, released at the next turn.
    dropped: RefCell<Vec<u64>>,
    /// Every task spawned here, so that the runtime can drop those left.
    tasks: RefCell<Vec<std::sync::Weak<Task>>>,
    /// The length of `tasks` at which the finished ones are next forgotten.
    sweep_at: Cell<usize>,
    /// See [`Runtime::set_yield_before_wait`].
    yield_before_wait: Cell<bool>,
    /// Waits left to go without yielding, and how many the last long
    /// yield set (see [`Reactor::yield_cpu`]).
    yield_skip: Cell<u32>,
    yield_backoff: Cell<u32>,
}

struct Slot {
    generation: u32,
    io: Option<Arc<IoState>>,
}

struct Polled {
    remote: bool,
}

impl Reactor {
    fn new() -> io::Result<Reactor> {
        // SAFETY: a plain system call; the descriptor is checked and owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Reactor {
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: RefCell::default(),
            free: RefCell::default(),
            events: RefCell::new(vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS]),
            to_wake: RefCell::new(Vec::with_capacity(EVENTS)),
            dropped: RefCell::default(),
            tasks: RefCell::default(),
            sweep_at: Cell::new(SWEEP_MIN),
            yield_before_wait: Cell::new(false),
            yield_skip: Cell::new(0),
            yield_backoff: Cell::new(0),
        })
    }

    fn add(&self, fd: RawFd, key: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: key };
        // SAFETY: epoll_ctl with descriptors we hold and a valid event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn register(&self, fd: RawFd, remote: &Arc<Remote>) -> io::Result<Arc<IoState>> {
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                slots.push(Slot {
                    generation: 0,
                    io: None,
                });
                (slots.len() - 1) as u32
            }
        };
        let slot = &mut slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let key = (u64::from(slot.generation) << 32) | u64::from(index);
        let io = Arc::new(IoState {
            ready: AtomicU8::new(0),
            edges: AtomicU32::new(0),
            drained_at: AtomicU32::new(u32::MAX),
            drained_turn: AtomicU32::new(0),
            reader: UnsafeCell::new(None),
            writer: UnsafeCell::new(None),
            key,
            remote: remote.clone(),
        });
        let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        if let Err(e) = self.add(fd, key, events) {
            self.free.borrow_mut().push(index);
            return Err(e);
        }
        slot.io = Some(io.clone());
        Ok(io)
    }

    fn deregister(&self, fd: RawFd) {
        // SAFETY: epoll_ctl on descriptors we hold; failure leaves nothing to undo.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    fn release(&self, key: u64) {
        let index = (key & u64::from(u32::MAX)) as usize;
        let io = {
            let mut slots = self.slots.borrow_mut();
            slots
                .get_mut(index)
                .filter(|slot| u64::from(slot.generation) == key >> 32)
                .and_then(|slot| slot.io.take())
        };
        if io.is_some() {
            self.free.borrow_mut().push(index as u32);
        }
        // Dropped with no borrow held.
        drop(io);
    }

    fn release_dropped(&self, remote: &Remote) {
        // One at a time: releasing drops a socket's wakers, and with them
        // perhaps a task, whose drop may release more.
        loop {
            let key = self.dropped.borrow_mut().pop();
            let Some(key) = key else { break };
            self.release(key);
        }
        if remote.has_released.load(Ordering::Relaxed)
            && remote.has_released.swap(false, Ordering::Acquire)
        {
            let elsewhere = std::mem::take(&mut *remote.released.lock().expect("runtime lock"));
            for key in elsewhere {
                self.release(key);
            }
        }
        self.sweep_tasks();
    }

    /// Forgets finished tasks now and then (the list only serves `clear`):
    /// when it has doubled since the last sweep, so that the list stays
    /// within twice the tasks alive at once however many are spawned
    /// between two turns, and the sweeps cost O(1) a task.
    fn sweep_tasks(&self) {
        let mut tasks = self.tasks.borrow_mut();
        if tasks.len() < self.sweep_at.get() {
            return;
        }
        tasks.retain(|t| t.strong_count() > 0);
        let at = (2 * tasks.len()).max(SWEEP_MIN);
        self.sweep_at.set(at);
        if tasks.capacity() > 2 * at {
            tasks.shrink_to(at);
        }
    }

    /// Yields the CPU before a wait, unless recent yields came back late.
    ///
    /// A yield that lasts longer than [`LONG_YIELD`] means something else
    /// on this CPU ran for that long: a CPU-bound task, which the scheduler
    /// lets finish its slice (a millisecond or more) before the yielded
    /// loop runs again, even when its events came meanwhile (a sleeping
    /// loop would have been woken, and could have preempted it), or a peer
    /// whose answer takes that long, when the yield saves nothing worth
    /// having anyway.
    ///
    /// Each long yield doubles the number of waits that then skip the yield
    /// (up to [`MAX_YIELD_BACKOFF`]), each short one halves it: beside a
    /// CPU-bound task the loop soon yields once in thousands of waits.
    fn yield_cpu(&self) {
        let skip = self.yield_skip.get();
        if skip > 0 {
            self.yield_skip.set(skip - 1);
            return;
        }
        let start = Instant::now();
        sys::sched_yield();
        let backoff = self.yield_backoff.get();
        let backoff = if start.elapsed() > LONG_YIELD {
            (backoff * 2).clamp(1, MAX_YIELD_BACKOFF)
        } else {
            backoff / 2
        };
        self.yield_backoff.set(backoff);
        self.yield_skip.set(backoff);
    }

    fn poll(&self, block: bool) -> Polled {
        let mut events = self.events.borrow_mut();
        if block && self.yield_before_wait.get() {
            self.yield_cpu();
        }
        let n = loop {
            // SAFETY: the buffer holds `events.len()` entries.
            let got = unsafe {
                sys::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len(),
                    if block { -1 } else { 0 },
                )
            };
            let e = match got {
                Ok(n) => break n,
                Err(e) => e,
            };
            assert_eq!(
                e.kind(),
                io::ErrorKind::Interrupted,
                "epoll_wait failed: {e}"
            );
        };
        let mut polled = Polled { remote: false };
        let mut to_wake = self.to_wake.borrow_mut();
        {
            let slots = self.slots.borrow();
            for ev in &events[..n] {
                let (key, flags) = (ev.u64, ev.events as i32);
                if key == WAKE_KEY {
                    polled.remote = true;
                    continue;
                }
                let Some(io) = slots
                    .get((key & u64::from(u32::MAX)) as usize)
                    .filter(|s| u64::from(s.generation) == key >> 32)
                    .and_then(|s| s.io.as_deref())
                else {
                    continue;
                };
                let closed = flags & (libc::EPOLLHUP | libc::EPOLLERR) != 0;
                let mut bits = 0;
                if closed || flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLPRI) != 0 {
                    bits |= READABLE;
                }
                if closed || flags & libc::EPOLLOUT != 0 {
                    bits |= WRITABLE;
                }
                if closed || flags & libc::EPOLLRDHUP != 0 {
                    bits |= HUNG_UP;
                }
                io.set(bits);
                // SAFETY: the waker slots are touched only on this thread.
                unsafe {
                    if bits & READABLE != 0
                        && let Some(w) = (*io.reader.get()).take()
                    {
                        to_wake.push(w);
                    }
                    if bits & WRITABLE != 0
                        && let Some(w) = (*io.writer.get()).take()
                    {
                        to_wake.push(w);
                    }
                }
            }
        }
        drop(events);
        // Woken with no borrow held; the vector's allocation is kept.
        let mut wakers = std::mem::take(&mut *to_wake);
        drop(to_wake);
        for w in wakers.drain(..) {
            w.wake();
        }
        *self.to_wake.borrow_mut() = wakers;
        polled
    }
}

/// A registered socket's readiness and the tasks waiting on it.
struct IoState {
    ready: AtomicU8,
    /// Readable events the reactor has taken for this socket (wrapping).
    edges: AtomicU32,
    /// `edges` when a read last found the socket empty (see
    /// [`IoState::quiet`]); `u32::MAX` until then.
    drained_at: AtomicU32,
    /// The loop's `turns` then.
    drained_turn: AtomicU32,
    reader: UnsafeCell<Option<Waker>>,
    writer: UnsafeCell<Option<Waker>>,
    key: u64,
    remote: Arc<Remote>,
}

// SAFETY: the waker slots are only touched on the owning runtime's thread
// (`poll_ready` checks it is there; the reactor runs there); other threads
// only move the `Arc` around and drop it.
unsafe impl Sync for IoState {}
unsafe impl Send for IoState {}

impl IoState {
    /// Ready when `bit` is set; else registers the task to be woken.
    ///
    /// # Panics
    /// Off the runtime that registered the socket.
    fn poll_ready(&self, bit: u8, cx: &mut Context<'_>) -> Poll<()> {
        if self.ready.load(Ordering::Relaxed) & bit != 0 {
            return Poll::Ready(());
        }
        assert!(
            self.on_owner(),
            "a socket waited on off the runtime that registered it"
        );
        let slot = if bit == READABLE {
            &self.reader
        } else {
            &self.writer
        };
        // SAFETY: on the owning runtime's thread (checked above).
        let slot = unsafe { &mut *slot.get() };
        match slot {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn on_owner(&self) -> bool {
        with_current(|l| l.is_some_and(|l| l.remote.id == self.remote.id))
    }

    fn is_ready(&self, bit: u8) -> bool {
        self.ready.load(Ordering::Relaxed) & bit != 0
    }

    /// Readiness is written on the owning thread only (the reactor and
    /// the socket's operations), so a load and a store do: no locked
    /// instruction on the data path.
    fn clear(&self, bit: u8) {
        debug_assert!(self.on_owner(), "a socket used off its runtime");
        let r = self.ready.load(Ordering::Relaxed);
        self.ready.store(r & !bit, Ordering::Relaxed);
    }

    fn set(&self, bits: u8) {
        let r = self.ready.load(Ordering::Relaxed);
        self.ready.store(r | bits, Ordering::Relaxed);
        if bits & READABLE != 0 {
            let e = self.edges.load(Ordering::Relaxed);
            self.edges.store(e.wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// A read found the socket empty (`WouldBlock`, or fewer bytes than
    /// it asked for).
    fn drained(&self) {
        self.drained_at
            .store(self.edges.load(Ordering::Relaxed), Ordering::Relaxed);
        self.drained_turn
            .store(self.remote.turns.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Since a read found the socket empty, the loop has looked at its
    /// events at least once, and none was for this socket; nor has the
    /// peer hung up (an end that came with the last bytes, before the
    /// event that told of them was taken, makes no event of its own). What
    /// arrived after the loop's last look is not seen.
    fn quiet(&self) -> bool {
        self.ready.load(Ordering::Relaxed) & HUNG_UP == 0
            && self.drained_at.load(Ordering::Relaxed) == self.edges.load(Ordering::Relaxed)
            && self.drained_turn.load(Ordering::Relaxed)
                != self.remote.turns.load(Ordering::Relaxed)
    }

    /// Forgets the registration; the descriptor is being closed (which
    /// takes it out of the epoll set).
    fn release(&self) {
        let local = with_current(|l| {
            l.filter(|l| l.remote.id == self.remote.id)
                .map(|l| l.reactor.dropped.borrow_mut().push(self.key))
                .is_some()
        });
        if !local {
            self.remote
                .released
                .lock()
                .expect("runtime lock")
                .push(self.key);
            self.remote.has_released.store(true, Ordering::Release);
        }
    }
}

/// Registers `fd` with this thread's runtime.
fn register(fd: RawFd) -> io::Result<Arc<IoState>> {
    with_current(|local| {
        let local = local.ok_or_else(|| io::Error::other("no runtime on this thread"))?;
        local.reactor.register(fd, &local.remote)
    })
}

/// Takes `fd` out of this thread's runtime before it is handed on.
fn deregister(fd: RawFd, io: &IoState) {
    with_current(|local| {
        if let Some(local) = local.filter(|l| l.remote.id == io.remote.id) {
            local.reactor.deregister(fd);
        }
    });
}

/// Runs `fut` on a runtime of its own (tests).
#[cfg(test)]
pub(crate) fn run<F: Future>(fut: F) -> F::Output {
    Runtime::new().expect("a runtime").block_on(fut)
}

#[cfg(test)]
mod tests;
