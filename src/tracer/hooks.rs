// SPDX-License-Identifier: MPL-2.0
//! The tracer's reads of GStreamer that need `unsafe`: core's `memory-init` and
//! `memory-free-pre` hooks (GStreamer 1.26 and later), registered by hand (gstreamer-rs
//! exposes them only with its `v1_26` feature, and memkit builds with `v1_22` so that one build
//! loads on every GStreamer from 1.22), which tell the tracer about memory of other allocators
//! (an element's own pool of SystemMemory, a hardware allocator), charged to the element
//! running like memkit's own; an object's name as bytes; a task's thread; and the process's
//! exit hook that `fail-on-violation` needs (`atexit`, `_exit`).

use std::ffi::CStr;

use gst::ffi;
use gst::glib;
use gst::glib::translate::ToGlibPtr;
use gst::prelude::*;

use crate::allocator;
use crate::attribution;

/// `object`'s name, its bytes read as UTF-8 with U+FFFD for what is not (GStreamer takes any
/// C string as a name; `gst::Object::name` must not be given one that is not UTF-8).
pub fn object_name(object: &gst::Object) -> String {
    let ptr: *mut ffi::GstObject = object.to_glib_none().0;
    // SAFETY: `object` is alive for this call; gst_object_get_name returns a copy of the name
    // (taken under the object's lock) that we own and free, or NULL.
    unsafe {
        let name = ffi::gst_object_get_name(ptr);
        if name.is_null() {
            return String::new();
        }
        let out = CStr::from_ptr(name).to_string_lossy().into_owned();
        glib::ffi::g_free(name.cast());
        out
    }
}

/// Whether `task` runs on this thread now: core sets a task's `thread` to the thread that runs
/// it before it calls the task's enter callback there (which posts the stream-status ENTER),
/// and clears it before the leave callback.
pub fn task_runs_here(task: &gst::Task) -> bool {
    let ptr: *mut ffi::GstTask = task.to_glib_none().0;
    let _lock = task.object_lock();
    // SAFETY: `task` is alive for this call; its `thread` field is written under the object
    // lock, which we hold; g_thread_self has no precondition.
    unsafe { !(*ptr).thread.is_null() && (*ptr).thread == glib::ffi::g_thread_self() }
}

/// Whether `mem` is a root memory of an allocator that is not memkit's.
///
/// # Safety
/// `mem` must be a live GstMemory.
unsafe fn foreign_root(mem: *mut ffi::GstMemory) -> bool {
    // SAFETY: per the caller's contract; the reference does not outlive this call.
    let mem = unsafe { gst::MemoryRef::from_ptr(mem) };
    mem.parent().is_none() && mem.allocator().is_some_and(|a| !allocator::is_memkit(a))
}

/// `GstTracerHookMemoryInit`: a memory was initialised.
unsafe extern "C" fn memory_init(_tracer: *mut ffi::GstTracer, _ts: u64, mem: *mut ffi::GstMemory) {
    // SAFETY: core calls the hook from gst_memory_init with the memory it initialised.
    if unsafe { foreign_root(mem) } {
        // SAFETY: as above.
        let bytes = unsafe { (*mem).maxsize };
        attribution::allocated(mem as usize, bytes, true);
    }
}

/// `GstTracerHookMemoryFreePre`: a memory is about to be freed.
unsafe extern "C" fn memory_free_pre(
    _tracer: *mut ffi::GstTracer,
    _ts: u64,
    mem: *mut ffi::GstMemory,
) {
    // SAFETY: core calls the hook with the memory, still live, before freeing it.
    if unsafe { foreign_root(mem) } {
        attribution::freed(mem as usize);
    }
}

/// Registers both hooks on `tracer` when the running GStreamer has them (1.26 or later):
/// returns whether it does.
pub fn watch_other_memory(tracer: &gst::Tracer) -> bool {
    let (major, minor, _, _) = gst::version();
    if (major, minor) < (1, 26) {
        return false;
    }
    let ptr: *mut ffi::GstTracer = tracer.to_glib_none().0;
    type Hook = unsafe extern "C" fn(*mut ffi::GstTracer, u64, *mut ffi::GstMemory);
    let hooks: [(&std::ffi::CStr, Hook); 2] = [
        (c"memory-init", memory_init),
        (c"memory-free-pre", memory_free_pre),
    ];
    for (name, hook) in hooks {
        // SAFETY: GStreamer 1.26+ calls these hooks as
        // `void (*)(GObject *tracer, GstClockTime ts, GstMemory *mem)`, the signature of
        // `hook`; GCallback is the generic function pointer it is stored as; the name is a
        // static NUL-terminated string.
        unsafe {
            let callback: glib::gobject_ffi::GCallback =
                Some(std::mem::transmute::<Hook, unsafe extern "C" fn()>(hook));
            ffi::gst_tracing_register_hook(ptr, name.as_ptr(), callback);
        }
    }
    true
}

/// Runs `hook` when the process exits normally (`exit()` or a return from `main`), after the
/// hooks registered later and before those registered earlier (`atexit(3)`); `false` when
/// the C library has no room for it.
pub fn at_exit(hook: extern "C" fn()) -> bool {
    // SAFETY: `hook` is a plain function with no arguments, valid for the whole life of the
    // process (a function item of this library, which GStreamer never unloads).
    unsafe { libc::atexit(hook) == 0 }
}

/// Ends the process now with `status`, from inside an exit hook: C's buffered streams are
/// flushed first, the remaining exit hooks do not run (calling `exit()` again from a hook is
/// undefined behaviour; `_exit` is what sanitizers use for the same purpose).
pub fn exit_now(status: i32) -> ! {
    // SAFETY: fflush(NULL) flushes every open output stream and takes no pointer of ours.
    unsafe {
        libc::fflush(std::ptr::null_mut());
    }
    // SAFETY: `_exit` ends the process without running anything of ours; nothing is left
    // half done that another thread could observe afterwards.
    unsafe { libc::_exit(status) }
}
