//! SQLite's default (unix) VFS, except that a commit's frames reach the write-ahead log in one
//! system call instead of two per page.
//!
//! **Why.** SQLite writes each frame of the log with two `pwrite` calls, its 24-byte header and
//! then its page. A group commit of otpd's writer under a full send load holds about 50 frames
//! of 2 KiB, so it made about 100 calls, each going through the kernel's buffered-write path
//! for the one or two memory pages it touches. That was a third of the writer's CPU, an eighth
//! of the server's, in a Pinpoint send run at 64 connections (`perf`, 2026-12-07); the same
//! writes made as one call cost a quarter as much (a C loop on the same machine).
//!
//! **What.** Every call goes to the default VFS unchanged, except the writes to a log file that
//! append frames: they are gathered in memory and written as one call when the page of a frame
//! that ends a commit arrives (its header carries the database's size, which SQLite's file
//! format sets on commit frames only), or sooner in runs of at most 128 KiB, the most the unix
//! VFS writes in one call. Nothing else may see the log before then:
//! - other connections read a commit's frames only once the writer publishes it in the shared
//!   index, which SQLite does after writing the commit frame, so after the gathered call;
//! - any other call on the log file (a read, a sync, a truncation, a close...) first writes
//!   what is gathered, so the connection itself, and every `fsync`, sees the file as SQLite
//!   wrote it;
//! - a write that does not append to what is gathered (SQLite rewriting a frame it spilled
//!   earlier in the same transaction, or rewriting checksums) first writes what is gathered and
//!   then goes straight to the file, as does a commit frame that does not follow others.
//!
//! A failed gathered write is reported to the call that triggered it, which for a commit is the
//! write of its last page: SQLite then fails the commit as it would have on a failed `pwrite`.
//! A crash before it loses only frames of a commit nobody was told about.
//!
//! **How to use it.** Call [`registered`] after the page cache is installed
//! (`otpd_sqlite_cache::install`, which must come before SQLite starts) and open connections
//! with the name it returns.

use std::ffi::{CStr, c_int, c_void};
use std::mem::size_of;
use std::ptr;
use std::slice;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::ffi;

mod gathering;

use gathering::Gathered;

/// The name connections open this VFS with.
pub const NAME: &str = "otpd-unix";
const NAME_C: &CStr = c"otpd-unix";

/// Registers this VFS once per process, and returns the name to open connections with; `None`
/// when SQLite has no default VFS to wrap, or refused this one (connections then use its
/// default, which is correct, only slower). SQLite starts on the first call: install a page
/// cache before it.
pub fn registered() -> Option<&'static str> {
    static REGISTERED: OnceLock<Option<&'static str>> = OnceLock::new();
    *REGISTERED.get_or_init(register_once)
}

/// How the writes to log files went, since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogWrites {
    /// Writes SQLite asked for.
    pub asked: u64,
    /// Writes made to the files (a gathered run of frames is one).
    pub made: u64,
}

/// The counts since the process started, over every log file opened through this VFS.
pub fn log_writes() -> LogWrites {
    LogWrites {
        asked: ASKED.load(Ordering::Relaxed),
        made: MADE.load(Ordering::Relaxed),
    }
}

static ASKED: AtomicU64 = AtomicU64::new(0);
static MADE: AtomicU64 = AtomicU64::new(0);

/// The default VFS, which every call is passed on to.
struct DefaultVfs(*mut ffi::sqlite3_vfs);

// SAFETY: a registered VFS is never freed nor changed by SQLite, and SQLite calls its methods
// from any thread (they are thread-safe in the serialized and multi-thread modes alike).
unsafe impl Send for DefaultVfs {}
// SAFETY: as for `Send`: the pointer is written once and only read after.
unsafe impl Sync for DefaultVfs {}

static DEFAULT: OnceLock<DefaultVfs> = OnceLock::new();

fn register_once() -> Option<&'static str> {
    // SAFETY: a null name asks for the default VFS; the pointer returned (or null) stays valid,
    // since otpd never unregisters a VFS.
    let default = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    if default.is_null() {
        return None;
    }
    // SAFETY: not null, so a VFS SQLite keeps alive (above).
    let default_vfs = unsafe { *default };
    let file_bytes = c_int::try_from(size_of::<File>()).ok()?;
    if DEFAULT.set(DefaultVfs(default)).is_err() {
        return None;
    }
    // Every method but `xOpen` is the default's own: they read nothing of the VFS they are given
    // but `pAppData` and `mxPathname`, which are copied too.
    let ours = Box::leak(Box::new(ffi::sqlite3_vfs {
        szOsFile: default_vfs.szOsFile.checked_add(file_bytes)?,
        pNext: ptr::null_mut(),
        zName: NAME_C.as_ptr(),
        xOpen: Some(open),
        ..default_vfs
    }));
    // SAFETY: `ours` is a complete VFS that lives for the rest of the process; 0 leaves the
    // default as it is.
    let done = unsafe { ffi::sqlite3_vfs_register(ours, 0) };
    (done == ffi::SQLITE_OK).then_some(NAME)
}

/// What SQLite holds for each file opened through this VFS: our part, followed in the same
/// block (`szOsFile` bytes, 8-byte aligned) by the default VFS's file. `repr(C)` with
/// `sqlite3_file` first, as SQLite requires of every VFS's file.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    /// The default VFS's file, right after this struct.
    inner: *mut ffi::sqlite3_file,
    /// For a log file, the frames gathered; null for any other file.
    gathered: *mut Gathered,
}

impl File {
    /// # Safety
    /// `file` must be a file this VFS's `open` filled in and SQLite has not closed.
    unsafe fn from_sqlite<'a>(file: *mut ffi::sqlite3_file) -> &'a mut File {
        // SAFETY: per the contract, `file` is the start of a `File` (its first field), which
        // SQLite hands to one call at a time.
        unsafe { &mut *file.cast::<File>() }
    }

    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: `open` keeps a file only once the default VFS has set its methods, which stay
        // valid (static in SQLite) until it is closed.
        unsafe { &*(*self.inner).pMethods }
    }

    /// Writes what is gathered, if anything: before any other call on a log file.
    fn write_gathered(&self) -> c_int {
        if self.gathered.is_null() {
            return ffi::SQLITE_OK;
        }
        // SAFETY: not null, so the `Gathered` this file owns (see `open` and `close`).
        let gathered = unsafe { &mut *self.gathered };
        gathered.flush(&mut |bytes, offset| self.write_inner(bytes, offset))
    }

    /// One write to the default VFS's file (counted in `LogWrites::made` for a log file).
    fn write_inner(&self, bytes: &[u8], offset: i64) -> c_int {
        let (Some(write), Ok(length)) = (self.methods().xWrite, c_int::try_from(bytes.len()))
        else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        if !self.gathered.is_null() {
            MADE.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the default VFS's open file and its own method; `bytes` is valid for
        // `length` bytes for the call.
        unsafe { write(self.inner, bytes.as_ptr().cast(), length, offset) }
    }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite hands `szOsFile` bytes for the file; ours come first, the default VFS's
    // file right after (8-byte aligned, as `File` is 24 bytes).
    let inner = unsafe { file.cast::<u8>().add(size_of::<File>()) }.cast::<ffi::sqlite3_file>();
    // SAFETY: writable and ours: SQLite must find null methods if the open fails.
    unsafe { (*file).pMethods = ptr::null() };
    let Some(DefaultVfs(default)) = DEFAULT.get() else {
        return ffi::SQLITE_CANTOPEN;
    };
    // SAFETY: a VFS SQLite keeps alive (see `register_once`).
    let Some(default_open) = (unsafe { (**default).xOpen }) else {
        return ffi::SQLITE_CANTOPEN;
    };
    // SAFETY: the default VFS's own open, given its own VFS and the room it asked for.
    let opened = unsafe { default_open(*default, name, inner, flags, out_flags) };
    // SAFETY: the default VFS set its file's methods, null or not, whatever it returned.
    let inner_methods = unsafe { (*inner).pMethods };
    if opened != ffi::SQLITE_OK {
        // SQLite will not close a file whose methods are null, which ours are: close the
        // default's if it left it open.
        // SAFETY: methods the default VFS set on its file.
        if let Some(close) = unsafe { inner_methods.as_ref() }.and_then(|methods| methods.xClose) {
            // SAFETY: its own file, closed once.
            unsafe { close(inner) };
        }
        return opened;
    }
    // SAFETY: set by a successful open.
    if unsafe { inner_methods.as_ref() }.is_none_or(|methods| methods.iVersion < METHODS.iVersion) {
        // Our methods speak for every method of version 3 (shared memory, memory mapping);
        // SQLite's unix VFS has them all.
        // SAFETY: as above.
        if let Some(close) = unsafe { inner_methods.as_ref() }.and_then(|methods| methods.xClose) {
            // SAFETY: its own file, closed once.
            unsafe { close(inner) };
        }
        return ffi::SQLITE_CANTOPEN;
    }
    let gathered = if flags & ffi::SQLITE_OPEN_WAL != 0 {
        Box::into_raw(Box::default())
    } else {
        ptr::null_mut()
    };
    // SAFETY: our part of the block (above), written whole.
    unsafe {
        file.cast::<File>().write(File {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            inner,
            gathered,
        });
    }
    ffi::SQLITE_OK
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls a file's methods only on a file it opened and has not closed.
    let file = unsafe { File::from_sqlite(file) };
    let Ok(length) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite's buffer of `amount` bytes, valid for the call.
    let bytes = unsafe { slice::from_raw_parts(data.cast::<u8>(), length) };
    if file.gathered.is_null() {
        return file.write_inner(bytes, offset);
    }
    ASKED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: not null, so the `Gathered` this file owns.
    let gathered = unsafe { &mut *file.gathered };
    gathered.write(bytes, offset, &mut |bytes, offset| {
        file.write_inner(bytes, offset)
    })
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file it opened, once.
    let file = unsafe { File::from_sqlite(file) };
    let written = file.write_gathered();
    let closed = match file.methods().xClose {
        // SAFETY: the default VFS's file, closed once.
        Some(close) => unsafe { close(file.inner) },
        None => ffi::SQLITE_OK,
    };
    if !file.gathered.is_null() {
        // SAFETY: made by `Box::into_raw` in `open`, freed here only.
        drop(unsafe { Box::from_raw(file.gathered) });
        file.gathered = ptr::null_mut();
    }
    if written == ffi::SQLITE_OK {
        closed
    } else {
        written
    }
}

/// A method that writes what is gathered and then passes the call on: every method but
/// `xWrite`, `xClose` and those that only describe the file.
macro_rules! after_gathered {
    ($name:ident, $method:ident ( $($argument:ident : $type:ty),* )) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($argument: $type),*) -> c_int {
            // SAFETY: SQLite calls a file's methods only on a file it opened and has not closed.
            let file = unsafe { File::from_sqlite(file) };
            let written = file.write_gathered();
            if written != ffi::SQLITE_OK {
                return written;
            }
            match file.methods().$method {
                // SAFETY: SQLite's own arguments, passed on to the default VFS's file.
                Some(method) => unsafe { method(file.inner, $($argument),*) },
                None => ffi::SQLITE_IOERR,
            }
        }
    };
}

after_gathered!(read, xRead(buffer: *mut c_void, amount: c_int, offset: ffi::sqlite3_int64));
after_gathered!(truncate, xTruncate(size: ffi::sqlite3_int64));
after_gathered!(sync, xSync(flags: c_int));
after_gathered!(file_size, xFileSize(size: *mut ffi::sqlite3_int64));
after_gathered!(lock, xLock(level: c_int));
after_gathered!(unlock, xUnlock(level: c_int));
after_gathered!(check_reserved_lock, xCheckReservedLock(reserved: *mut c_int));
after_gathered!(file_control, xFileControl(operation: c_int, argument: *mut c_void));
after_gathered!(shm_map, xShmMap(region: c_int, size: c_int, extend: c_int, mapped: *mut *mut c_void));
after_gathered!(shm_lock, xShmLock(offset: c_int, count: c_int, flags: c_int));
after_gathered!(shm_unmap, xShmUnmap(delete: c_int));
after_gathered!(fetch, xFetch(offset: ffi::sqlite3_int64, amount: c_int, mapped: *mut *mut c_void));
after_gathered!(unfetch, xUnfetch(offset: ffi::sqlite3_int64, mapped: *mut c_void));

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls a file's methods only on a file it opened and has not closed.
    let file = unsafe { File::from_sqlite(file) };
    match file.methods().xSectorSize {
        // SAFETY: the default VFS's file.
        Some(method) => unsafe { method(file.inner) },
        None => 4096,
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls a file's methods only on a file it opened and has not closed.
    let file = unsafe { File::from_sqlite(file) };
    match file.methods().xDeviceCharacteristics {
        // SAFETY: the default VFS's file.
        Some(method) => unsafe { method(file.inner) },
        None => 0,
    }
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite calls a file's methods only on a file it opened and has not closed.
    let file = unsafe { File::from_sqlite(file) };
    // A barrier cannot fail; whatever is gathered stays for the next call to report.
    if let Some(method) = file.methods().xShmBarrier {
        // SAFETY: the default VFS's file.
        unsafe { method(file.inner) };
    }
}
