// SPDX-License-Identifier: MPL-2.0
//! Which element's code a thread is running (see the module above for the rules). The
//! tracer's hooks call [`enter`], [`leave`] and [`pushing`]; anyone may ask [`current_name`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

use gst::glib::translate::ToGlibPtr;
use gst::prelude::*;

use super::published;

pub use super::published::APPLICATION;

/// A charge target: an element, or a thread that has no element running.
pub(crate) type Slot = u32;

enum Target {
    Element(String),
    /// A thread's own charges; `owner`: the element whose task it runs, once known.
    Thread(Option<Slot>),
}

#[derive(Default)]
struct Targets {
    list: Vec<Target>,
    /// Elements by address, while they live ([`forget`] drops them when they are destroyed).
    by_ptr: HashMap<usize, Slot>,
}

static TARGETS: LazyLock<Mutex<Targets>> = LazyLock::new(Mutex::default);
/// Bumped whenever an element is forgotten: a thread's cached lookup is then stale (its
/// address may be reused by a new element).
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn targets() -> MutexGuard<'static, Targets> {
    TARGETS.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct ThreadState {
    stack: Vec<Slot>,
    own: Option<Slot>,
    /// The last element looked up: (address, slot, generation).
    cache: Option<(usize, Slot, u64)>,
    /// This thread's row in the signal-safe view ([`published`]).
    row: Option<usize>,
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

/// The slot of `element`, registered under its name at first sight.
fn slot_of(element: &gst::Element) -> Slot {
    let addr = address(element);
    let generation = GENERATION.load(Ordering::Acquire);
    let cached = with_thread(|t| match t.cache {
        Some((a, slot, g)) if a == addr && g == generation => Some(slot),
        _ => None,
    })
    .flatten();
    if let Some(slot) = cached {
        return slot;
    }
    let slot = {
        let mut t = targets();
        match t.by_ptr.get(&addr) {
            Some(&slot) => slot,
            None => {
                let slot = t.list.len() as Slot;
                let name = element.name();
                published::table().set_name(published::id(slot as usize, 0), &name);
                t.list.push(Target::Element(name.to_string()));
                t.by_ptr.insert(addr, slot);
                slot
            }
        }
    };
    with_thread(|t| t.cache = Some((addr, slot, generation)));
    slot
}

/// `element`'s code starts running on this thread (a pad of it receives a buffer, is pulled
/// from, or it changes state). `None` (a pad without an element, such as a ghost pad's
/// internal pad) keeps what runs now, so that every [`enter`] has its [`leave`].
pub fn enter(element: Option<&gst::Element>) {
    let slot = element.map_or_else(current, slot_of);
    with_thread(|t| {
        t.stack.push(slot);
        published::publish(&mut t.row, published::id(slot as usize, 0));
    });
}

/// The element entered last on this thread is done.
pub fn leave() {
    with_thread(|t| t.stack.pop());
    republish();
}

/// Publishes what this thread runs now, when protect mode wants to know.
fn republish() {
    if published::enabled() {
        let slot = current();
        with_thread(|t| published::publish(&mut t.row, published::id(slot as usize, 0)));
    }
}

/// A pad of `element` pushes a buffer from this thread. With no element entered, the thread
/// runs `element`'s task (a source's loop, a queue's): the thread's own charges, past and
/// future, are `element`'s from now on. `None` (a pad without an element) changes nothing.
pub fn pushing(element: Option<&gst::Element>) {
    let Some(element) = element else {
        return;
    };
    if with_thread(|t| t.stack.is_empty()) != Some(true) {
        return;
    }
    let own = own_slot();
    let owner = slot_of(element);
    {
        let mut t = targets();
        if let Some(Target::Thread(o @ None)) = t.list.get_mut(own as usize) {
            *o = Some(owner);
            published::table().set_name(published::id(own as usize, 0), &element.name());
        }
    }
    republish();
}

/// The element at `addr` is being destroyed: its address may be reused by a new one.
pub fn forget(addr: usize) {
    let mut t = targets();
    if t.by_ptr.remove(&addr).is_some() {
        GENERATION.fetch_add(1, Ordering::AcqRel);
    }
}

/// This thread's own slot, made at first use.
fn own_slot() -> Slot {
    if let Some(Some(own)) = with_thread(|t| t.own) {
        return own;
    }
    let slot = {
        let mut t = targets();
        t.list.push(Target::Thread(None));
        let slot = (t.list.len() - 1) as Slot;
        published::table().set_name(published::id(slot as usize, 0), APPLICATION);
        slot
    };
    with_thread(|t| t.own = Some(slot));
    slot
}

/// The slot charges made now on this thread go to.
pub(crate) fn current() -> Slot {
    with_thread(|t| t.stack.last().copied())
        .flatten()
        .unwrap_or_else(own_slot)
}

/// The names of `slots`, resolved as the report shows them: an element's name; for a thread,
/// its owner's name, or [`APPLICATION`].
pub(crate) fn names() -> Vec<String> {
    let t = targets();
    t.list
        .iter()
        .map(|target| match target {
            Target::Element(name) => name.clone(),
            Target::Thread(Some(owner)) => match t.list.get(*owner as usize) {
                Some(Target::Element(name)) => name.clone(),
                _ => APPLICATION.to_owned(),
            },
            Target::Thread(None) => APPLICATION.to_owned(),
        })
        .collect()
}

/// The name of the element running on this thread, as the report would show it now.
pub fn current_name() -> String {
    let slot = current();
    names()
        .into_iter()
        .nth(slot as usize)
        .unwrap_or_else(|| APPLICATION.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_charged_to_the_element_it_runs_then_to_its_task_owner() {
        gst::init().unwrap();
        let src = gst::ElementFactory::make("fakesrc")
            .name("who-src")
            .build()
            .unwrap();
        let sink = gst::ElementFactory::make("fakesink")
            .name("who-sink")
            .build()
            .unwrap();
        std::thread::spawn(move || {
            assert_eq!(current_name(), APPLICATION, "nothing known yet");
            enter(Some(&sink));
            assert_eq!(current_name(), "who-sink");
            leave();
            assert_eq!(current_name(), APPLICATION);
            // The first push with nothing entered: this thread runs the source's task.
            pushing(Some(&src));
            assert_eq!(current_name(), "who-src");
            enter(Some(&sink));
            pushing(Some(&sink)); // inside an element: not a task owner
            assert_eq!(current_name(), "who-sink");
            leave();
            assert_eq!(current_name(), "who-src");
        })
        .join()
        .unwrap();
    }
}
