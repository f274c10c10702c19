// SPDX-License-Identifier: MPL-2.0
//! Which element's code a thread is running (see the module above for the rules). The
//! tracer's hooks call [`enter`], [`push`], [`leave`], [`task_started`] and [`task_stopped`];
//! anyone may ask [`current_name`].

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use gst::glib::translate::ToGlibPtr;
use gst::prelude::*;

use super::published;
use super::slots::Target;
use super::state;

pub use super::published::APPLICATION;

/// Bumped whenever an element the charges know is forgotten: every thread's cached lookups
/// are then stale (its address may be reused by a new element).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Elements a thread remembers the targets of (the ones of a chain of pushes).
const CACHED: usize = 8;

/// An element entered on a thread.
#[derive(Clone, Copy)]
struct Frame {
    target: Target,
    /// Entered for the length of a push from a thread that ran nothing (the element pushing):
    /// left with the frame above it, the element the push entered.
    with_next: bool,
}

#[derive(Default)]
struct ThreadState {
    /// The elements whose code runs, innermost last.
    stack: Vec<Frame>,
    /// The element whose pad task the thread runs, below the stack, and that task's address.
    task: Option<(Target, usize)>,
    /// Recent lookups: (address, target), valid in `cache_generation`.
    cache: [Option<(usize, Target)>; CACHED],
    cache_next: usize,
    cache_generation: u64,
    /// This thread's row in the signal-safe view ([`published`]).
    row: Option<usize>,
}

impl ThreadState {
    fn current(&self) -> Target {
        self.stack
            .last()
            .map(|f| f.target)
            .or(self.task.map(|t| t.0))
            .unwrap_or(Target::APPLICATION)
    }

    fn push(&mut self, target: Target, with_next: bool) {
        self.stack.push(Frame { target, with_next });
        self.republish();
    }

    fn cached(&mut self, addr: usize, generation: u64) -> Option<Target> {
        if self.cache_generation != generation {
            self.cache = [None; CACHED];
            self.cache_generation = generation;
            return None;
        }
        self.cache
            .iter()
            .flatten()
            .find(|(a, _)| *a == addr)
            .map(|&(_, t)| t)
    }

    fn remember(&mut self, addr: usize, target: Target, generation: u64) {
        if self.cache_generation != generation {
            return;
        }
        self.cache[self.cache_next] = Some((addr, target));
        self.cache_next = (self.cache_next + 1) % CACHED;
    }

    /// Publishes what the thread runs now, when protect mode wants to know (a thread that
    /// runs nothing gives its row back).
    fn republish(&mut self) {
        if published::enabled() || self.row.is_some() {
            let id = self.current().published_id();
            published::publish(&mut self.row, id);
        }
    }
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        if let Some(row) = self.row {
            published::release(row);
        }
    }
}

thread_local! {
    static THREAD: RefCell<ThreadState> = RefCell::default();
}

/// Runs `f` on this thread's state; `None` while it is unavailable (at thread exit, or, which
/// no path here does, borrowed already): never a panic, these run inside core's hooks and the
/// allocators' vfuncs.
fn with_thread<R>(f: impl FnOnce(&mut ThreadState) -> R) -> Option<R> {
    THREAD
        .try_with(|t| t.try_borrow_mut().ok().map(|mut t| f(&mut t)))
        .ok()
        .flatten()
}

fn address(element: &gst::Element) -> usize {
    let ptr: *mut gst::ffi::GstElement = element.to_glib_none().0;
    ptr as usize
}

/// How an object's name is read (given by [`set_namer`]: names are bytes, not always UTF-8,
/// and reading them as bytes needs `unsafe`, which this module has not).
static NAMER: OnceLock<fn(&gst::Object) -> String> = OnceLock::new();

/// Names are read with `namer` (the tracer gives one that reads a name's bytes as UTF-8,
/// replacing what is not).
pub fn set_namer(namer: fn(&gst::Object) -> String) {
    let _ = NAMER.set(namer);
}

/// `object`'s name, as the namer reads it; without one (never, once the tracer runs), a
/// placeholder rather than `gst_object_get_name` as a Rust string, which must be UTF-8.
fn name_of(object: &gst::Object) -> String {
    NAMER
        .get()
        .map_or_else(|| "unnamed".to_owned(), |namer| namer(object))
}

/// `element`'s name and its path from the top-level bin (`pipeline0/src`: the names only,
/// not `gst_object_get_path_string`'s types).
fn describe(element: &gst::Element) -> (String, String) {
    let name = name_of(element.upcast_ref());
    let mut names = vec![name.clone()];
    let mut parent = element.parent();
    while let Some(p) = parent {
        names.push(name_of(&p));
        parent = p.parent();
    }
    names.reverse();
    (name, names.join("/"))
}

/// The target of `element`, registered at first sight.
fn target_of(element: &gst::Element) -> Target {
    let addr = address(element);
    let generation = GENERATION.load(Ordering::Acquire);
    if let Some(Some(target)) = with_thread(|t| t.cached(addr, generation)) {
        return target;
    }
    let target = state::target_of(addr, || describe(element));
    with_thread(|t| t.remember(addr, target, generation));
    target
}

/// `element`'s code starts running on this thread (a pad of it receives an event, is pulled
/// from or queried, it is queried or changes state). `None` (a pad without an element, such
/// as a ghost pad's internal pad) keeps what runs now, so that every [`enter`] has its
/// [`leave`].
pub fn enter(element: Option<&gst::Element>) {
    let target = element.map(target_of);
    with_thread(|t| {
        let target = target.unwrap_or_else(|| t.current());
        t.push(target, false);
    });
}

/// A pad of `pusher` pushes a buffer to a pad of `peer` from this thread: `peer` is entered
/// as by [`enter`]. On a thread that runs nothing (no element entered, no pad task: an
/// application's thread that sent an event into an element, an element's own thread),
/// `pusher` runs for the length of the push too, below `peer`, and the [`leave`] after the
/// push leaves both: the thread runs nothing again.
pub fn push(pusher: Option<&gst::Element>, peer: Option<&gst::Element>) {
    let idle = with_thread(|t| t.stack.is_empty() && t.task.is_none()) == Some(true);
    if idle && let Some(pusher) = pusher {
        let target = target_of(pusher);
        with_thread(|t| t.push(target, true));
    }
    enter(peer);
}

/// The element entered last on this thread is done (and the element pushing, when the push
/// had entered it: see [`push`]).
pub fn leave() {
    with_thread(|t| {
        t.stack.pop();
        if t.stack.last().is_some_and(|f| f.with_next) {
            t.stack.pop();
        }
        t.republish();
    });
}

/// This thread starts running `owner`'s pad task, the task at `task` (its stream-status
/// ENTER, posted from the task's thread before its first iteration: the caller checks that
/// it is): below any element entered, the thread is `owner`'s until that task stops.
pub fn task_started(owner: &gst::Element, task: usize) {
    let target = target_of(owner);
    with_thread(|t| {
        t.task = Some((target, task));
        t.republish();
    });
}

/// The task at `task` has stopped on this thread (its stream-status LEAVE): the thread goes
/// back to the pool, and runs no element until it is given another task. A LEAVE of a task
/// this thread does not run changes nothing.
pub fn task_stopped(task: usize) {
    with_thread(|t| {
        if t.task.is_some_and(|(_, running)| running == task) {
            t.task = None;
            t.republish();
        }
    });
}

/// `element` changes state: its name and path are read again (it may have been renamed, or
/// added to a bin, since it was first seen).
pub fn refresh(element: &gst::Element) {
    let target = target_of(element);
    let (name, path) = describe(element);
    state::rename(target, &name, &path);
}

/// The object at `addr` is being destroyed: if it is an element the charges know, its
/// address may be reused by a new one.
pub fn forget(addr: usize) {
    if state::forget(addr) {
        GENERATION.fetch_add(1, Ordering::AcqRel);
    }
}

/// What charges made now on this thread go to.
pub(crate) fn current() -> Target {
    with_thread(|t| t.current()).unwrap_or(Target::APPLICATION)
}

/// The name of the element running on this thread, as the report would show it now.
pub fn current_name() -> String {
    state::shown_name(current())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(factory: &str, name: &str) -> gst::Element {
        set_namer(|o| o.name().to_string());
        gst::ElementFactory::make(factory)
            .name(name)
            .build()
            .unwrap()
    }

    fn task(n: usize) -> usize {
        0x1000 * n
    }

    /// What the tracer's object-destroyed hook does before `elements` are freed: another test
    /// may make an element at the same address.
    fn destroyed(elements: &[&gst::Element]) {
        for e in elements {
            forget(address(e));
        }
    }

    #[test]
    fn a_thread_is_charged_to_the_element_it_runs_then_to_nobody() {
        gst::init().unwrap();
        let src = fake("fakesrc", "who-src");
        let sink = fake("fakesink", "who-sink");
        std::thread::spawn(move || {
            assert_eq!(current_name(), APPLICATION, "nothing known yet");
            enter(Some(&sink));
            assert_eq!(current_name(), "who-sink");
            leave();
            assert_eq!(current_name(), APPLICATION);
            // A push from a thread that runs nothing (an application's thread that sent an
            // event into the source): the sink runs, then nobody again.
            push(Some(&src), Some(&sink));
            assert_eq!(current_name(), "who-sink");
            push(Some(&sink), None); // a pad without a peer element: the sink still runs
            assert_eq!(current_name(), "who-sink");
            leave();
            leave();
            assert_eq!(
                current_name(),
                APPLICATION,
                "the thread is not the source's"
            );
            // The pusher runs for the length of a push to nowhere.
            push(Some(&src), None);
            assert_eq!(current_name(), "who-src");
            leave();
            assert_eq!(current_name(), APPLICATION);
            destroyed(&[&src, &sink]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_reused_thread_follows_the_task_it_runs_now() {
        gst::init().unwrap();
        let first = fake("fakesrc", "task-first");
        let second = fake("fakesrc", "task-second");
        let mux = fake("fakesink", "task-mux");
        std::thread::spawn(move || {
            task_started(&first, task(1));
            assert_eq!(current_name(), "task-first");
            push(Some(&first), Some(&mux));
            assert_eq!(current_name(), "task-mux");
            leave();
            assert_eq!(current_name(), "task-first");
            task_stopped(task(1));
            assert_eq!(current_name(), APPLICATION, "back in the pool");
            // The pool gives the thread to another task: an aggregator's, which works
            // before its first push and then pushes from its own pad.
            task_started(&mux, task(2));
            assert_eq!(current_name(), "task-mux", "before any push");
            task_stopped(task(1)); // not the task it runs
            assert_eq!(current_name(), "task-mux");
            push(Some(&mux), Some(&second));
            assert_eq!(current_name(), "task-second");
            leave();
            assert_eq!(
                current_name(),
                "task-mux",
                "a push does not change the task"
            );
            task_stopped(task(2));
            assert_eq!(current_name(), APPLICATION);
            destroyed(&[&first, &second, &mux]);
        })
        .join()
        .unwrap();
    }
}
