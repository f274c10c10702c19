// SPDX-License-Identifier: MPL-2.0
//! Who is running, and what each element is charged: the bookkeeping behind the tracer's
//! report by element. It depends on nothing else of memkit, so that the allocators can charge
//! into it and the tracer (and later protect mode) can read it.
//!
//! **Who is running** ([`running`]): every thread keeps a stack of the elements whose code it
//! runs. The tracer pushes the element whose pad receives a buffer or an event (`pad-push-pre`,
//! the list variant, `pad-push-event-pre`), is pulled from (`pad-pull-range-pre`) or answers a
//! query (`pad-query-pre`, `element-query-pre`) and pops it after (`-post`); an element
//! changing state is pushed for the change. Below the stack a thread is charged as itself
//! until it first pushes a buffer with an empty stack: the element whose pad pushes is the one
//! whose task the thread runs (a source's loop, a queue's), and what the thread was charged
//! before goes to that element. A thread that never does (an application calling
//! `gst_app_src_push_buffer`, a probe, `main`) is charged to "application".
//!
//! **Charges** ([`charge`]): nothing is recorded until [`activate`] (the tracer does it);
//! after, the allocators report each allocation (with its address, so that the free finds
//! the element that made it), free, share, copy and map, and the element running at that
//! moment is charged. Live bytes are kept per element (bytes of blocks it allocated that are
//! not freed yet), with their peak, and sampled over time for the timeline ([`timeline`],
//! [`sample`]).

pub mod charge;
pub mod published;
pub mod running;
pub mod timeline;

pub use charge::{
    ElementCharges, Leak, activate, active, allocated, copied, freed, leaks, mapped, report,
    sample, samples, set_cached_bytes_source, shared,
};
pub use running::{APPLICATION, current_name};
