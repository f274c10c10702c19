// SPDX-License-Identifier: MPL-2.0
//! The backtrace of protect mode's reports, written from the fault handler: async-signal-safe
//! (glibc's `backtrace`, its unwinder loaded before the first fault, `dladdr`, reads of the
//! loaded libraries' own ELF tables and code; stack buffers and `write` only).
//!
//! A library's static functions have no dynamic symbol: glibc prints them as `lib(+0x...)`.
//! And a public function that ends by jumping to a static one (a tail call, `jmp`) leaves no
//! frame of its own: on Debian's libgstvideo, `gst_video_overlay_rectangle_get_pixels_*`
//! all jump to one static function. For such a frame the report also names the exported
//! functions of its library that jump to the frame's function start (read from the unwind
//! tables): the public entry points the call could have come through.

use std::ffi::{CStr, c_void};

/// `struct dwarf_eh_bases` of libgcc's unwinder.
#[repr(C)]
struct DwarfEhBases {
    tbase: *mut c_void,
    dbase: *mut c_void,
    func: *mut c_void,
}

unsafe extern "C" {
    /// libgcc's unwinder (libgcc_s, which the Rust standard library links): the unwind entry
    /// of the function holding `pc`; `bases.func` is that function's start.
    fn _Unwind_Find_FDE(pc: *mut c_void, bases: *mut DwarfEhBases) -> *const c_void;
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: i64 = 0;
const DT_HASH: i64 = 4;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_GNU_HASH: i64 = 0x6fff_fef5;
const STT_FUNC: u8 = 2;
/// Names listed at most per frame.
const MAX_NAMES: usize = 6;

fn write(s: &[u8]) {
    // SAFETY: write(2) is async-signal-safe; the buffer is ours.
    unsafe { libc::write(2, s.as_ptr().cast(), s.len()) };
}

/// The stack walk that [`write_backtrace`] guards: glibc's `backtrace` into `frames`.
struct Walk {
    frames: [*mut c_void; 64],
}

/// Fills the [`Walk`] at `walk` (null entries past the last frame found).
///
/// # Safety
/// `walk` must point at a live [`Walk`] whose frames are all null.
unsafe extern "C" fn walk(walk: *mut c_void) {
    // SAFETY: per the contract; glibc's unwinder writes at most `len` entries (its library
    // was loaded by `fault::install`).
    unsafe {
        let walk = &mut *walk.cast::<Walk>();
        libc::backtrace(walk.frames.as_mut_ptr(), walk.frames.len() as libc::c_int);
    }
}

/// Writes the backtrace of the calling thread, skipping the frames of this library at its
/// top (the report's own) and, after a fault, the signal trampoline below them. The caller
/// holds the report lock (see `recover`): a fault while reading the stack (damaged, or in a
/// protected block) ends the backtrace with a line saying where.
pub(super) fn write_backtrace(after_signal: bool) {
    let mut w = Walk {
        frames: [std::ptr::null_mut(); 64],
    };
    // SAFETY: `walk` fills our Walk and holds nothing when abandoned (see `recover`).
    let stopped = unsafe { super::recover::guarded(walk, (&raw mut w).cast()) }.err();
    let n = w
        .frames
        .iter()
        .position(|f| f.is_null())
        .unwrap_or(w.frames.len());
    let frames = &w.frames[..n];
    let own = base_of(write_backtrace as *const () as *mut c_void);
    let mut first = frames
        .iter()
        .position(|&pc| base_of(pc) != own)
        .unwrap_or(0);
    if after_signal && first < frames.len() {
        first += 1;
    }
    for (i, &pc) in frames.iter().enumerate().skip(first) {
        write(b"    ");
        // SAFETY: one frame, printed by glibc to fd 2 without allocating.
        unsafe { libc::backtrace_symbols_fd(&pc, 1, 2) };
        if i > first {
            // A return address: the call is the instruction before it.
            tail_callers(pc.wrapping_byte_sub(1));
        } else {
            tail_callers(pc);
        }
    }
    if let Some(addr) = stopped {
        let mut hex = [0u8; 18];
        write(b"    (the backtrace stopped: reading the stack faulted at ");
        write(hex_into(addr, &mut hex));
        write(b")\n");
    }
}

/// `v` in hexadecimal ("0x..."), written into `buf`.
fn hex_into(v: usize, buf: &mut [u8; 18]) -> &[u8] {
    buf[0] = b'0';
    buf[1] = b'x';
    let digits = (usize::BITS as usize / 4 - v.leading_zeros() as usize / 4).max(1);
    for i in 0..digits {
        buf[2 + i] = b"0123456789abcdef"[(v >> ((digits - 1 - i) * 4)) & 0xf];
    }
    &buf[..2 + digits]
}

/// The load base of the object holding `pc`, null when none does.
fn base_of(pc: *mut c_void) -> *mut c_void {
    // SAFETY: dladdr only reads the loader's tables; `info` is ours.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(pc, &mut info) == 0 {
            return std::ptr::null_mut();
        }
        info.dli_fbase
    }
}

/// For a `pc` in a function without a dynamic symbol: writes the exported functions of its
/// library that jump to that function's start.
fn tail_callers(pc: *mut c_void) {
    // SAFETY: dladdr reads the loader's tables into our `info`; _Unwind_Find_FDE reads the
    // unwind tables of the loaded objects into our `bases`.
    let (base, start) = unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(pc, &mut info) == 0 || !info.dli_sname.is_null() {
            return;
        }
        let mut bases: DwarfEhBases = std::mem::zeroed();
        if _Unwind_Find_FDE(pc, &mut bases).is_null() || bases.func.is_null() {
            return;
        }
        (info.dli_fbase as usize, bases.func as usize)
    };
    let mut found = 0;
    // SAFETY: `base` is a loaded ELF object (dladdr found it): its headers, dynamic section,
    // symbol and string tables and its functions' code are mapped readable.
    unsafe {
        for_each_function(base, |name, code, len| {
            if !jumps_to(code, len, start) {
                return true;
            }
            write(if found == 0 {
                b"      a static function; jumped to (tail call) by: "
            } else {
                b", "
            });
            write(name.to_bytes());
            found += 1;
            found < MAX_NAMES
        });
    }
    if found > 0 {
        write(b"\n");
    }
}

/// Whether the code at `code` (`len` bytes) holds a `jmp` to `target`.
///
/// # Safety
/// `code..code + len` must be readable.
unsafe fn jumps_to(code: usize, len: usize, target: usize) -> bool {
    // SAFETY: per the contract.
    let bytes = unsafe { std::slice::from_raw_parts(code as *const u8, len) };
    bytes.iter().enumerate().any(|(i, &op)| match op {
        0xE9 if i + 5 <= len => {
            let rel = i32::from_le_bytes([bytes[i + 1], bytes[i + 2], bytes[i + 3], bytes[i + 4]]);
            (code + i + 5).wrapping_add_signed(rel as isize) == target
        }
        0xEB if i + 2 <= len => {
            (code + i + 2).wrapping_add_signed(bytes[i + 1] as i8 as isize) == target
        }
        _ => false,
    })
}

/// Calls `f(name, code address, size)` for each function the object at `base` exports, until
/// it returns `false`.
///
/// # Safety
/// `base` must be the load base of a loaded 64-bit ELF object.
unsafe fn for_each_function(base: usize, mut f: impl FnMut(&CStr, usize, usize) -> bool) {
    // SAFETY: per the contract, the ELF header and program headers are mapped at `base`.
    unsafe {
        let ehdr = &*(base as *const libc::Elf64_Ehdr);
        if ehdr.e_ident[..4] != *b"\x7fELF" || ehdr.e_ident[4] != 2 {
            return;
        }
        let phdrs = std::slice::from_raw_parts(
            (base + ehdr.e_phoff as usize) as *const libc::Elf64_Phdr,
            usize::from(ehdr.e_phnum),
        );
        let Some(dynamic) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
            return;
        };
        // The load bias: the base, less the address the object was linked at (0 for a
        // shared library or a position-independent executable; its own base for another).
        let Some(linked) = phdrs
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .map(|p| p.p_vaddr as usize & !(p.p_align.max(1) as usize - 1))
            .min()
        else {
            return;
        };
        let bias = base.wrapping_sub(linked);
        // The loader relocates these entries in place; an unrelocated one is an offset.
        let abs = |v: u64| {
            let v = v as usize;
            if v < bias { bias + v } else { v }
        };
        let (mut symtab, mut strtab, mut hash, mut gnu_hash) = (0, 0, 0, 0);
        let mut d = bias.wrapping_add(dynamic.p_vaddr as usize) as *const [i64; 2];
        while (*d)[0] != DT_NULL {
            let v = (*d)[1] as u64;
            match (*d)[0] {
                DT_SYMTAB => symtab = abs(v),
                DT_STRTAB => strtab = abs(v),
                DT_HASH => hash = abs(v),
                DT_GNU_HASH => gnu_hash = abs(v),
                _ => {}
            }
            d = d.add(1);
        }
        if symtab == 0 || strtab == 0 {
            return;
        }
        let count = if hash != 0 {
            *(hash as *const u32).add(1) as usize
        } else if gnu_hash != 0 {
            gnu_symbol_count(gnu_hash as *const u32)
        } else {
            return;
        };
        let syms = std::slice::from_raw_parts(symtab as *const libc::Elf64_Sym, count);
        for sym in syms {
            if sym.st_info & 0xf != STT_FUNC || sym.st_value == 0 || sym.st_size == 0 {
                continue;
            }
            let name = CStr::from_ptr((strtab + sym.st_name as usize) as *const libc::c_char);
            if !f(
                name,
                bias.wrapping_add(sym.st_value as usize),
                sym.st_size as usize,
            ) {
                return;
            }
        }
    }
}

/// The number of symbols of a `DT_GNU_HASH` table: one past the last symbol of the longest
/// chain's end.
///
/// # Safety
/// `h` must be a loaded object's GNU hash table.
unsafe fn gnu_symbol_count(h: *const u32) -> usize {
    // SAFETY: per the contract: header, bloom words, buckets, then chains.
    unsafe {
        let nbuckets = *h as usize;
        let symoffset = *h.add(1) as usize;
        let bloom_words = *h.add(2) as usize;
        let buckets = h.add(4 + bloom_words * 2);
        let chains = buckets.add(nbuckets);
        let last = (0..nbuckets)
            .map(|i| *buckets.add(i) as usize)
            .max()
            .unwrap_or(0);
        if last < symoffset {
            return symoffset;
        }
        let mut i = last;
        while *chains.add(i - symoffset) & 1 == 0 {
            i += 1;
        }
        i + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exported_functions_of_a_library_are_found_at_their_addresses() {
        let gst_init = gst::ffi::gst_init as *const () as usize;
        let base = base_of(gst_init as *mut c_void) as usize;
        assert_ne!(base, 0);
        let (mut found, mut count) = (None, 0);
        // SAFETY: `base` is libgstreamer's load base, as dladdr gave it.
        unsafe {
            for_each_function(base, |name, code, _len| {
                count += 1;
                if name.to_bytes() == b"gst_init" {
                    found = Some(code);
                }
                true
            })
        };
        assert_eq!(found, Some(gst_init));
        assert!(count > 500, "{count} functions");
    }

    #[test]
    fn an_address_is_written_in_hexadecimal() {
        let mut buf = [0u8; 18];
        assert_eq!(hex_into(0, &mut buf), b"0x0");
        assert_eq!(hex_into(0x10, &mut buf), b"0x10");
        assert_eq!(hex_into(usize::MAX, &mut buf), b"0xffffffffffffffff");
    }

    #[test]
    fn a_jump_is_found_by_its_target() {
        // nop; jmp rel32 (-0x100 from the end of the jmp); jmp rel8 (+2)
        let code: [u8; 9] = [0x90, 0xE9, 0x00, 0xFF, 0xFF, 0xFF, 0xEB, 0x02, 0x90];
        let at = code.as_ptr() as usize;
        // SAFETY: our own array.
        unsafe {
            assert!(jumps_to(at, code.len(), at + 6 - 0x100));
            assert!(jumps_to(at, code.len(), at + 8 + 2));
            assert!(!jumps_to(at, code.len(), at + 0x40));
        }
    }
}
