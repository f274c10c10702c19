// SPDX-License-Identifier: MPL-2.0
//! The two socket calls of the transport that rustix does not have: the option
//! `SO_PASSRIGHTS` (Linux 6.16) and the `SIOCOUTQ` ioctl. Std and libc only: the transport's
//! tests compile this file in as it is.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `SO_PASSRIGHTS` in `include/uapi/asm-generic/socket.h`, which these architectures use (alpha,
/// parisc and sparc number it otherwise; there the option is not set).
const SO_PASSRIGHTS: Option<libc::c_int> = if cfg!(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64"
)) {
    Some(83)
} else {
    None
};

/// Makes the kernel refuse `SCM_RIGHTS` sent to the Unix socket `fd` (and, for a listener, to
/// every connection it accepts, from their first packet): the sender's `sendmsg` fails with
/// `EPERM`, no descriptor ever reaches us. `ENOPROTOOPT` on kernels before 6.16.
pub fn refuse_descriptors(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let Some(option) = SO_PASSRIGHTS else {
        return Err(std::io::ErrorKind::Unsupported.into());
    };
    let off: libc::c_int = 0;
    // SAFETY: `fd` is a valid descriptor for the duration of the call (borrowed); the option
    // value points to a live `c_int` whose size is passed with it; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The bytes we sent on the Unix socket `fd` that its peer has not read yet (`SIOCOUTQ`: the
/// packets, with the descriptors they carry, still in its queue); 0 when it read everything.
pub fn unread(fd: BorrowedFd<'_>) -> std::io::Result<usize> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: `fd` is a valid descriptor for the duration of the call (borrowed); SIOCOUTQ
    // writes one `c_int` to the pointer, which points to a live one.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &raw mut bytes) };
    if rc == 0 {
        Ok(bytes.max(0) as usize)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
