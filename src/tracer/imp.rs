// SPDX-License-Identifier: MPL-2.0
//! The `memkittracer` tracer's GObject subclass.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, Once};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::allocator::{self, aligned::ProtectProperty};
use crate::attribution::{self, running};

use super::hooks::{object_name, task_runs_here};

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "memkittracer",
        gst::DebugColorFlags::empty(),
        Some("memkit tracer: memory audit of any pipeline"),
    )
});

/// The exit status of a process whose tracer has `fail-on-violation=true` and counted a
/// violation (protect mode's or guard mode's).
pub const VIOLATION_EXIT_STATUS: i32 = 66;

/// `fail-on-violation` of any memkittracer of the process (read by the exit hook).
static FAIL_ON_VIOLATION: AtomicBool = AtomicBool::new(false);
static EXIT_HOOK: Once = Once::new();

/// The violations counted so far: protect mode's (every one, recorded or not), guard mode's.
fn violations_counted() -> (u64, usize) {
    let protect = allocator::ProtectViolation::ALL
        .iter()
        .map(|&k| allocator::protect_violations(k))
        .sum();
    (protect, allocator::stats::violations().len())
}

/// Runs at the process's exit (`atexit`), in whichever process calls `exit()`: a forked
/// gst-check test counts its own. No panic can leave it (it is called by C).
extern "C" fn exit_hook() {
    if !FAIL_ON_VIOLATION.load(Ordering::Relaxed) {
        return;
    }
    let (protect, guard) = violations_counted();
    if protect == 0 && guard == 0 {
        return;
    }
    let _ = writeln!(
        std::io::stderr(),
        "memkit: fail-on-violation: {protect} protect and {guard} guard violations counted: \
         exit status {VIOLATION_EXIT_STATUS}"
    );
    super::hooks::exit_now(VIOLATION_EXIT_STATUS);
}

/// Whether the hooks for memory of other allocators are registered (GStreamer 1.26+).
pub(super) static FOREIGN_SEEN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[derive(Debug)]
struct Settings {
    guard: bool,
    protect: ProtectProperty,
    report: Option<String>,
    timeline: Option<String>,
    fail_on_violation: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            guard: false,
            protect: ProtectProperty::Off,
            report: None,
            timeline: None,
            fail_on_violation: false,
        }
    }
}

/// What `guard=` in the tracer's parameters asks for: the canary guard mode (`true`, as
/// before), protect mode (`protect`, `protect-continue`), or nothing.
fn guard_param(value: &gst::glib::SendValue) -> Option<(bool, ProtectProperty)> {
    if let Ok(on) = value.get::<bool>() {
        return Some((on, ProtectProperty::Off));
    }
    if let Ok(n) = value.get::<i32>() {
        return matches!(n, 0 | 1).then_some((n == 1, ProtectProperty::Off));
    }
    match value.get::<&str>().ok()?.trim() {
        "true" | "1" | "yes" | "on" | "canary" => Some((true, ProtectProperty::Off)),
        "false" | "0" | "no" | "off" => Some((false, ProtectProperty::Off)),
        "protect" | "protect-abort" => Some((false, ProtectProperty::Abort)),
        "protect-continue" => Some((false, ProtectProperty::Continue)),
        _ => None,
    }
}

#[derive(Default)]
pub struct MemkitTracer {
    settings: Mutex<Settings>,
    /// Whether the exit report was printed already.
    finished: Mutex<bool>,
}

#[glib::object_subclass]
impl ObjectSubclass for MemkitTracer {
    const NAME: &'static str = "MemkitTracer";
    type Type = super::MemkitTracer;
    type ParentType = gst::Tracer;
}

impl MemkitTracer {
    /// The settings; a poisoned lock still gives them (no panic inside core's hooks).
    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn print_report(&self, title: &str, at_exit: bool) {
        let seen = FOREIGN_SEEN.load(std::sync::atomic::Ordering::Relaxed);
        let report = super::report::Report::collect(title, at_exit, seen);
        eprint!("{}", report.to_text());
        let (path, timeline) = {
            let s = self.settings();
            (s.report.clone(), s.timeline.clone())
        };
        if let Some(timeline) = timeline {
            attribution::sample();
            if let Err(err) = super::timeline::write(&timeline) {
                gst::error!(
                    CAT,
                    imp = self,
                    "cannot write the timeline to {}: {}",
                    timeline,
                    err
                );
                eprintln!("memkit: cannot write the timeline to {timeline}: {err}");
            }
        }
        if let Some(path) = path {
            if let Err(err) = std::fs::write(&path, report.to_json()) {
                gst::error!(
                    CAT,
                    imp = self,
                    "cannot write the report to {}: {}",
                    path,
                    err
                );
                eprintln!("memkit: cannot write the report to {path}: {err}");
            } else {
                gst::info!(CAT, imp = self, "report written to {}", path);
            }
        }
    }

    /// Applies the parameters (`GST_TRACERS="memkittracer(guard=protect,report=...)"`): each
    /// field sets the property of its name, except `guard`, which also takes `protect` and
    /// `protect-continue`. A field that is no property, or a value that does not fit, is
    /// warned about and ignored.
    fn apply_params(&self) {
        let obj = self.obj();
        let Some(params) = obj.property::<Option<String>>("params") else {
            return;
        };
        if params.trim().is_empty() {
            return;
        }
        let s = match format!("memkittracer,{params}").parse::<gst::Structure>() {
            Ok(s) => s,
            Err(_) => {
                glib::g_warning!(
                    "memkittracer",
                    "cannot parse the parameters {params:?}: ignored"
                );
                return;
            }
        };
        for (field, value) in s.iter() {
            let shown = value.serialize().map(|s| s.to_string()).unwrap_or_default();
            if field == "guard" {
                match guard_param(value) {
                    Some((guard, protect)) => {
                        obj.set_property("guard", guard);
                        obj.set_property("protect", protect);
                    }
                    None => glib::g_warning!(
                        "memkittracer",
                        "guard={shown:?} is not a mode (true, false, protect, protect-continue): \
                         ignored"
                    ),
                }
                continue;
            }
            let Some(pspec) = obj.find_property(field) else {
                glib::g_warning!(
                    "memkittracer",
                    "{field:?} is not a parameter (guard, protect, report, timeline, \
                     fail-on-violation): ignored"
                );
                continue;
            };
            let value = if value.type_() == pspec.value_type() {
                Some(value.to_value())
            } else if let Ok(text) = value.get::<&str>() {
                glib::Value::deserialize_with_pspec(text, &pspec).ok()
            } else {
                None
            };
            match value {
                Some(v) => obj.set_property_from_value(field, &v),
                None => glib::g_warning!(
                    "memkittracer",
                    "{field}={shown:?} does not fit the parameter: ignored"
                ),
            }
        }
    }

    fn check_buffer(&self, pad: &gst::Pad, buffer: &gst::BufferRef) {
        let mut element: Option<String> = None;
        for mem in buffer.iter_memories() {
            let name = element.get_or_insert_with(|| match pad.parent_element() {
                Some(e) => object_name(e.upcast_ref()),
                None => object_name(pad.upcast_ref()),
            });
            if allocator::check_memory_guard(mem, Some(name)) {
                gst::error!(
                    CAT,
                    obj = pad,
                    "buffer pushed by {} has a damaged AlignedMemory block",
                    name
                );
            }
        }
    }
}

impl ObjectImpl for MemkitTracer {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecBoolean::builder("guard")
                    .nick("Guard mode")
                    .blurb(
                        "Allocate AlignedMemory blocks with guards and check every pushed buffer \
                         (in the parameters, guard=protect and guard=protect-continue set protect \
                         mode instead)",
                    )
                    .default_value(false)
                    .construct()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("protect", ProtectProperty::Off)
                    .nick("Protect mode")
                    .blurb(
                        "Protect mode for every AlignedMemory block: abort or continue at a \
                         violation (guard=protect and guard=protect-continue in the parameters \
                         set it too)",
                    )
                    .construct()
                    .build(),
                glib::ParamSpecString::builder("report")
                    .nick("Report file")
                    .blurb("Also write the report as JSON to this path")
                    .construct()
                    .build(),
                glib::ParamSpecString::builder("timeline")
                    .nick("Timeline file")
                    .blurb(
                        "Also write live bytes over time, by element, to this path: an SVG \
                         chart when it ends in .svg, CSV samples otherwise",
                    )
                    .construct()
                    .build(),
                glib::ParamSpecBoolean::builder("fail-on-violation")
                    .nick("Fail on violation")
                    .blurb(
                        "When the process exits, make its exit status 66 if any protect-mode \
                         or guard-mode violation was counted (for CI, as a sanitizer does)",
                    )
                    .default_value(false)
                    .construct()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings();
        match pspec.name() {
            "guard" => {
                settings.guard = value.get().expect("type checked upstream");
                if settings.guard {
                    allocator::set_guard_enabled(true);
                }
            }
            "protect" => {
                settings.protect = value.get().expect("type checked upstream");
                if settings.protect != ProtectProperty::Off {
                    allocator::set_protect_mode(settings.protect.into());
                }
            }
            "report" => settings.report = value.get().expect("type checked upstream"),
            "timeline" => {
                settings.timeline = value.get().expect("type checked upstream");
                // Samples are taken only for a timeline file (none are, without one).
                if settings.timeline.is_some() {
                    attribution::start_timeline();
                }
            }
            "fail-on-violation" => {
                settings.fail_on_violation = value.get().expect("type checked upstream");
                if settings.fail_on_violation {
                    FAIL_ON_VIOLATION.store(true, Ordering::Relaxed);
                    EXIT_HOOK.call_once(|| {
                        if !super::hooks::at_exit(exit_hook) {
                            glib::g_warning!(
                                "memkittracer",
                                "fail-on-violation: cannot register the exit hook"
                            );
                        }
                    });
                }
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings();
        match pspec.name() {
            "guard" => settings.guard.to_value(),
            "protect" => settings.protect.to_value(),
            "report" => settings.report.to_value(),
            "timeline" => settings.timeline.to_value(),
            "fail-on-violation" => settings.fail_on_violation.to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.apply_params();
        // Charges by element from now on; maps of the registered instance are charged too.
        // The timeline reads the caches' bytes at an allocation or a free, which may come
        // under an allocator's lock: the source takes none.
        attribution::set_cached_bytes_source(|| {
            (allocator::aligned::cached_bytes() as u64)
                .saturating_add(allocator::memfd::cached_bytes() as u64)
        });
        running::set_namer(object_name);
        attribution::activate();
        let aligned = allocator::aligned_allocator().upcast::<gst::Allocator>();
        allocator::aligned::charge_maps(&aligned);
        // Every element that allocates with the default allocator now gets AlignedMemory.
        aligned.set_default();
        allocator::stats::set_enabled(true);
        allocator::stats::set_tracking(true);
        allocator::reset_stats();
        self.register_hook(TracerHook::PadPushPre);
        self.register_hook(TracerHook::PadPushPost);
        self.register_hook(TracerHook::PadPushListPre);
        self.register_hook(TracerHook::PadPushListPost);
        self.register_hook(TracerHook::PadPullRangePre);
        self.register_hook(TracerHook::PadPullRangePost);
        self.register_hook(TracerHook::PadPushEventPre);
        self.register_hook(TracerHook::PadPushEventPost);
        self.register_hook(TracerHook::PadQueryPre);
        self.register_hook(TracerHook::PadQueryPost);
        self.register_hook(TracerHook::ElementQueryPre);
        self.register_hook(TracerHook::ElementQueryPost);
        self.register_hook(TracerHook::ElementChangeStatePre);
        self.register_hook(TracerHook::ElementChangeStatePost);
        self.register_hook(TracerHook::ElementPostMessagePre);
        self.register_hook(TracerHook::ObjectDestroyed);
        let seen = super::hooks::watch_other_memory(self.obj().upcast_ref());
        FOREIGN_SEEN.store(seen, std::sync::atomic::Ordering::Relaxed);
        gst::info!(
            CAT,
            imp = self,
            "memkit tracer active: AlignedMemory is the default allocator ({:?})",
            self.settings()
        );
    }

    fn dispose(&self) {
        let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        if !*finished {
            *finished = true;
            drop(finished);
            self.print_report("exit", true);
        }
    }
}

impl GstObjectImpl for MemkitTracer {}

impl TracerImpl for MemkitTracer {
    /// The parameters are parsed by `apply_params`: `guard=` takes a boolean or a mode name.
    const USE_STRUCTURE_PARAMS: bool = false;

    fn pad_push_pre(&self, _ts: u64, pad: &gst::Pad, buffer: &gst::Buffer) {
        self.check_buffer(pad, buffer);
        enter_peer(pad, true);
    }

    fn pad_push_post(
        &self,
        _ts: u64,
        _pad: &gst::Pad,
        _result: Result<gst::FlowSuccess, gst::FlowError>,
    ) {
        running::leave();
    }

    fn pad_push_list_pre(&self, _ts: u64, pad: &gst::Pad, list: &gst::BufferList) {
        for buffer in list.iter() {
            self.check_buffer(pad, buffer);
        }
        enter_peer(pad, true);
    }

    fn pad_push_list_post(
        &self,
        _ts: u64,
        _pad: &gst::Pad,
        _result: Result<gst::FlowSuccess, gst::FlowError>,
    ) {
        running::leave();
    }

    fn pad_push_event_pre(&self, _ts: u64, pad: &gst::Pad, _event: &gst::Event) {
        enter_peer(pad, false);
    }

    fn pad_push_event_post(&self, _ts: u64, _pad: &gst::Pad, _success: bool) {
        running::leave();
    }

    /// `pad`'s own query function runs (core calls the hook in `gst_pad_query`, which
    /// `gst_pad_peer_query` calls on the peer).
    fn pad_query_pre(&self, _ts: u64, pad: &gst::Pad, _query: &gst::QueryRef) {
        running::enter(pad.parent_element().as_ref());
    }

    fn pad_query_post(&self, _ts: u64, _pad: &gst::Pad, _query: &gst::QueryRef, _res: bool) {
        running::leave();
    }

    fn element_query_pre(&self, _ts: u64, element: &gst::Element, _query: &gst::QueryRef) {
        running::enter(Some(element));
    }

    fn element_query_post(
        &self,
        _ts: u64,
        _element: &gst::Element,
        _query: &gst::QueryRef,
        _res: bool,
    ) {
        running::leave();
    }

    /// A pad task starts or stops on this thread: core posts the stream-status ENTER and
    /// LEAVE messages from the task's own thread (`pad_enter_thread`, `pad_leave_thread`),
    /// naming the element that owns the task.
    fn element_post_message_pre(&self, _ts: u64, element: &gst::Element, message: &gst::Message) {
        if let gst::MessageView::StreamStatus(status) = message.view() {
            let (kind, owner) = status.get();
            if !matches!(
                kind,
                gst::StreamStatusType::Enter | gst::StreamStatusType::Leave
            ) {
                return;
            }
            if let Some(task) = pad_task(element, &owner, message, status) {
                let addr = task.as_ptr() as usize;
                match kind {
                    gst::StreamStatusType::Enter if task_runs_here(&task) => {
                        running::task_started(&owner, addr)
                    }
                    gst::StreamStatusType::Leave => running::task_stopped(addr),
                    _ => {}
                }
            }
        }
    }

    fn pad_pull_range_pre(&self, _ts: u64, pad: &gst::Pad, _offset: u64, _size: u32) {
        enter_peer(pad, false);
    }

    fn pad_pull_range_post(
        &self,
        _ts: u64,
        _pad: &gst::Pad,
        _result: Result<&gst::Buffer, gst::FlowError>,
    ) {
        running::leave();
    }

    fn element_change_state_pre(
        &self,
        _ts: u64,
        element: &gst::Element,
        _change: gst::StateChange,
    ) {
        running::refresh(element);
        running::enter(Some(element));
    }

    fn object_destroyed(&self, _ts: u64, object: std::ptr::NonNull<gst::ffi::GstObject>) {
        running::forget(object.as_ptr() as usize);
    }

    fn element_change_state_post(
        &self,
        _ts: u64,
        element: &gst::Element,
        change: gst::StateChange,
        result: Result<gst::StateChangeSuccess, gst::StateChangeError>,
    ) {
        running::leave();
        // A top-level pipeline has stopped: report what it did.
        if change == gst::StateChange::ReadyToNull
            && result.is_ok()
            && element.parent().is_none()
            && element.is::<gst::Pipeline>()
        {
            let name = object_name(element.upcast_ref());
            self.print_report(&format!("pipeline {name} stopped"), false);
        }
    }
}

/// A buffer or an event goes through `pad` to its peer (`push`: a buffer pushed, else a
/// buffer pulled by `pad` or an event sent either way): the peer's element runs now. A buffer
/// pushed from a thread running no element and no pad task charges the pushing element for
/// the length of the push, not after (see `running::push`).
fn enter_peer(pad: &gst::Pad, push: bool) {
    let peer = pad.peer().and_then(|peer| peer.parent_element());
    if push {
        running::push(pad.parent_element().as_ref(), peer.as_ref());
    } else {
        running::enter(peer.as_ref());
    }
}

/// The pad task a stream-status message that `element` posts describes, if it is one: its
/// object is a GstTask, its source a pad of `element`, which is `owner`, the element it
/// names (as core's `pad_enter_thread` and `pad_leave_thread` post it). An application can
/// post any message: one that is not such is ignored.
fn pad_task(
    element: &gst::Element,
    owner: &gst::Element,
    message: &gst::Message,
    status: &gst::message::StreamStatus,
) -> Option<gst::Task> {
    if owner != element {
        return None;
    }
    let pad = message.src()?.downcast_ref::<gst::Pad>()?;
    if pad.parent_element().as_ref() != Some(element) {
        return None;
    }
    status.stream_status_object()?.get::<gst::Task>().ok()
}
