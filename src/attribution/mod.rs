// SPDX-License-Identifier: MPL-2.0
//! Who is running, and what each element is charged: the bookkeeping behind the tracer's
//! report by element. It depends on nothing else of memkit, so that the allocators can charge
//! into it and the tracer (and protect mode) can read it.
//!
//! **Who is running** ([`running`]): every thread keeps a stack of the elements whose code it
//! runs. The tracer pushes the element whose pad receives a buffer or an event (`pad-push`,
//! the list variant, `pad-push-event`), is pulled from (`pad-pull-range`) or answers a query
//! (`pad-query`, `element-query`), and the element changing state, and pops it after. Below
//! the stack a thread runs the task it was given: GStreamer's task pool reuses threads, and a
//! pad task announces itself on its thread when it starts and stops (the stream-status
//! messages ENTER and LEAVE, which core posts from the task's thread; an ENTER counts only on
//! the thread its task runs on, so one an application posts changes nothing), so the thread is
//! the task owner's from its first instruction to its last, then nobody's. A thread that runs
//! no pad task and pushes a buffer with nothing entered (an application's thread that sent an
//! event into an element, an element's own thread) is the pushing element's for the length of
//! that push only, then nobody's again. Anything else (an application calling
//! `gst_app_src_push_buffer`, a probe's thread, `main`) is charged to "application".
//!
//! **Charges** ([`charge`], [`slots`]): nothing is recorded until [`activate`] (the tracer
//! does it); after, the allocators report each allocation (with its address, so that the free
//! finds the element that made it), free, share, copy and map, and the element running at
//! that moment is charged. Charges are kept per element, not per name: elements of the same
//! name are shown by their path. Live bytes are kept per element (bytes of blocks it allocated
//! that are not freed yet), with their peak, and for the timeline ([`timeline`], [`sample`];
//! only once [`start_timeline`] is called) the least and the most reached between two
//! samples, one by one for the elements of the highest peaks so far, summed for the rest.

pub mod charge;
pub mod published;
pub mod running;
pub mod slots;
pub mod state;
pub mod timeline;

pub use charge::{
    ElementCharges, Leak, activate, active, allocated, copied, freed, leaks, mapped, report,
    sample, samples, set_cached_bytes_source, shared, start_timeline,
};
pub use running::{APPLICATION, current_name};
