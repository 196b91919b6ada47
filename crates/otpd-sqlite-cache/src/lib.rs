//! SQLite's own page cache, without the walk of the whole cache that most commits to a growing
//! index make.
//!
//! **Why.** When SQLite rebalances sibling pages of a B-tree (`balance_nonroot`), it sorts the
//! new pages by number, swapping two of them through a spare number: the lock-byte page's,
//! 524,289 with 2 KiB pages, which never holds data. The page soon moves on, but SQLite's
//! default cache (`pcache1`) keeps 524,289 as the highest key it has held. When the transaction
//! ends, SQLite asks the cache to drop every page past the database's end. The gap between that
//! key and the end is wider than the cache's hash table, so `pcache1` walks every slot and every
//! cached page, although none of them is past the end. With otpd's 16 MiB writer cache that is
//! about 7,700 pages, in every commit whose sends split a page of the destination index (most
//! commits: its entries land on random pages). That walk was 5% of the server's CPU in a
//! Pinpoint send run at 64 connections (`perf`, 2026-12-06).
//!
//! **What.** Every call goes to SQLite's default cache unchanged, except one: a truncation that
//! cannot drop anything is not passed on. This layer keeps its own bound on the keys the cache
//! can hold: the highest key a fetch returned a page for, and the keys above it that a page was
//! moved to and has not left. A page that a swap moves to the lock-byte page's number leaves it
//! two moves later, so after a rebalance the bound is back within the database, and the
//! commit's truncation is skipped. When a truncation can drop a page (a rolled-back
//! transaction that had grown the database, say), it is passed on and does what it always did.
//!
//! **How to use it.** Call [`install`] before the process opens its first SQLite connection:
//! SQLite takes a page cache only before it starts. Called later, it changes nothing and says
//! so; the connections then use the default cache, which is correct, only slower.

use std::ffi::{c_int, c_uint, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::ffi;

/// Whether this process's SQLite connections use the tracking page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Every connection opened from now on uses it.
    Yes,
    /// SQLite had already started (or refused the configuration), so its default cache stays.
    TooLate,
}

/// Puts the tracking page cache in front of SQLite's default one, once per process; later calls
/// return what the first one did. It must run before the process's first SQLite connection
/// opens, and not while another thread is inside SQLite (SQLite's configuration is not
/// thread-safe): call it at the start of whatever opens connections.
pub fn install() -> Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    *INSTALLED.get_or_init(install_once)
}

/// How many truncations this process's caches were asked for, by what became of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncations {
    /// Could not drop a page, so were not passed on: each a walk of the cache saved, or a call.
    pub skipped: u64,
    /// Passed on to SQLite's cache.
    pub passed_on: u64,
}

/// The counts since the process started, over all its caches.
pub fn truncations() -> Truncations {
    Truncations {
        skipped: SKIPPED.load(Ordering::Relaxed),
        passed_on: PASSED_ON.load(Ordering::Relaxed),
    }
}

static SKIPPED: AtomicU64 = AtomicU64::new(0);
static PASSED_ON: AtomicU64 = AtomicU64::new(0);

/// SQLite's default page cache, which every call is passed on to.
static DEFAULT: OnceLock<DefaultCache> = OnceLock::new();

type Cache = *mut ffi::sqlite3_pcache;
type Page = *mut ffi::sqlite3_pcache_page;

/// The methods of SQLite's default cache, as `SQLITE_CONFIG_GETPCACHE2` gives them.
struct DefaultCache {
    argument: *mut c_void,
    init: unsafe extern "C" fn(*mut c_void) -> c_int,
    shutdown: unsafe extern "C" fn(*mut c_void),
    create: unsafe extern "C" fn(c_int, c_int, c_int) -> Cache,
    cache_size: unsafe extern "C" fn(Cache, c_int),
    page_count: unsafe extern "C" fn(Cache) -> c_int,
    fetch: unsafe extern "C" fn(Cache, c_uint, c_int) -> Page,
    unpin: unsafe extern "C" fn(Cache, Page, c_int),
    rekey: unsafe extern "C" fn(Cache, Page, c_uint, c_uint),
    truncate: unsafe extern "C" fn(Cache, c_uint),
    destroy: unsafe extern "C" fn(Cache),
    shrink: unsafe extern "C" fn(Cache),
}

// SAFETY: function pointers into SQLite and the argument SQLite gave for them (null for its
// default cache), written once before SQLite starts and only read after; SQLite itself calls
// them from any thread.
unsafe impl Send for DefaultCache {}
// SAFETY: as for `Send`: nothing in it is ever written after it is shared.
unsafe impl Sync for DefaultCache {}

impl DefaultCache {
    fn from_methods(methods: &ffi::sqlite3_pcache_methods2) -> Option<Self> {
        Some(Self {
            argument: methods.pArg,
            init: methods.xInit?,
            shutdown: methods.xShutdown?,
            create: methods.xCreate?,
            cache_size: methods.xCachesize?,
            page_count: methods.xPagecount?,
            fetch: methods.xFetch?,
            unpin: methods.xUnpin?,
            rekey: methods.xRekey?,
            truncate: methods.xTruncate?,
            destroy: methods.xDestroy?,
            shrink: methods.xShrink?,
        })
    }
}

fn install_once() -> Installed {
    let mut methods = no_methods();
    // SAFETY: SQLITE_CONFIG_GETPCACHE2 takes one argument, a pointer to a methods table that it
    // fills in; `methods` is one, alive for the call.
    let found = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, &raw mut methods) };
    if found != ffi::SQLITE_OK {
        return Installed::TooLate;
    }
    let Some(default) = DefaultCache::from_methods(&methods) else {
        return Installed::TooLate;
    };
    if DEFAULT.set(default).is_err() {
        return Installed::TooLate;
    }
    let tracking = ffi::sqlite3_pcache_methods2 {
        iVersion: methods.iVersion,
        pArg: ptr::null_mut(),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        xCreate: Some(create),
        xCachesize: Some(cache_size),
        xPagecount: Some(page_count),
        xFetch: Some(fetch),
        xUnpin: Some(unpin),
        xRekey: Some(rekey),
        xTruncate: Some(truncate),
        xDestroy: Some(destroy),
        xShrink: Some(shrink),
    };
    // SAFETY: SQLITE_CONFIG_PCACHE2 takes one argument, a pointer to a methods table, which
    // SQLite copies; SQLite refuses it (SQLITE_MISUSE) once it has started.
    let set = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE2, &raw const tracking) };
    if set == ffi::SQLITE_OK {
        Installed::Yes
    } else {
        Installed::TooLate
    }
}

fn no_methods() -> ffi::sqlite3_pcache_methods2 {
    ffi::sqlite3_pcache_methods2 {
        iVersion: 0,
        pArg: ptr::null_mut(),
        xInit: None,
        xShutdown: None,
        xCreate: None,
        xCachesize: None,
        xPagecount: None,
        xFetch: None,
        xUnpin: None,
        xRekey: None,
        xTruncate: None,
        xDestroy: None,
        xShrink: None,
    }
}

/// One cache: SQLite's own, and the bound on the keys it can hold.
struct Tracked {
    inner: Cache,
    /// The highest key a fetch has returned a page for, lowered by a truncation below it.
    highest_fetched: c_uint,
    /// Keys above `highest_fetched` that a page was moved to and has not left. Empty but for
    /// the moment of a swap, and never long: a page that leaves such a key some other way (it
    /// is evicted or discarded) is forgotten by the next truncation passed on.
    moved_above: Vec<c_uint>,
}

impl Tracked {
    /// No page in the cache has a key above this.
    fn highest_key(&self) -> c_uint {
        self.moved_above
            .iter()
            .copied()
            .fold(self.highest_fetched, c_uint::max)
    }

    fn fetched(&mut self, key: c_uint) {
        self.highest_fetched = self.highest_fetched.max(key);
    }

    fn moved(&mut self, from: c_uint, to: c_uint) {
        self.moved_above.retain(|&key| key != from);
        if to > self.highest_fetched && !self.moved_above.contains(&to) {
            self.moved_above.push(to);
        }
    }

    /// After every page at `limit` or above has been dropped.
    fn truncated(&mut self, limit: c_uint) {
        self.highest_fetched = self.highest_fetched.min(limit.saturating_sub(1));
        self.moved_above.retain(|&key| key < limit);
    }
}

/// SQLite's default cache, and the tracked cache behind a pointer that `create` returned:
/// what every method below works with. `None` only if the default cache was never recorded,
/// which cannot happen once these methods are installed.
///
/// # Safety
/// `cache` must come from `create` and not yet be destroyed, and nothing else may use it for
/// the lifetime of the reference. SQLite guarantees the second: a cache belongs to one
/// connection's pager, which one thread at a time uses, and the default cache's methods never
/// call back into these.
unsafe fn parts<'a>(cache: Cache) -> Option<(&'static DefaultCache, &'a mut Tracked)> {
    let default = DEFAULT.get()?;
    // SAFETY: as the function's contract says.
    Some((default, unsafe { &mut *cache.cast::<Tracked>() }))
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    match DEFAULT.get() {
        // SAFETY: SQLite's own method, given SQLite's own argument.
        Some(default) => unsafe { (default.init)(default.argument) },
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn shutdown(_: *mut c_void) {
    if let Some(default) = DEFAULT.get() {
        // SAFETY: SQLite's own method, given SQLite's own argument.
        unsafe { (default.shutdown)(default.argument) }
    }
}

unsafe extern "C" fn create(page_size: c_int, extra_size: c_int, purgeable: c_int) -> Cache {
    let Some(default) = DEFAULT.get() else {
        return ptr::null_mut();
    };
    // SAFETY: SQLite's own method, with the arguments SQLite gave.
    let inner = unsafe { (default.create)(page_size, extra_size, purgeable) };
    if inner.is_null() {
        return ptr::null_mut();
    }
    let tracked = Tracked {
        inner,
        highest_fetched: 0,
        moved_above: Vec::new(),
    };
    Box::into_raw(Box::new(tracked)).cast()
}

unsafe extern "C" fn cache_size(cache: Cache, pages: c_int) {
    // SAFETY: SQLite passes a cache that `create` made and it has not destroyed.
    if let Some((default, tracked)) = unsafe { parts(cache) } {
        // SAFETY: SQLite's own method, on the cache it made for this one.
        unsafe { (default.cache_size)(tracked.inner, pages) }
    }
}

unsafe extern "C" fn page_count(cache: Cache) -> c_int {
    // SAFETY: SQLite passes a cache that `create` made and it has not destroyed.
    let Some((default, tracked)) = (unsafe { parts(cache) }) else {
        return 0;
    };
    // SAFETY: SQLite's own method, on the cache it made for this one.
    unsafe { (default.page_count)(tracked.inner) }
}

unsafe extern "C" fn fetch(cache: Cache, key: c_uint, create: c_int) -> Page {
    // SAFETY: SQLite passes a cache that `create` made and it has not destroyed.
    let Some((default, tracked)) = (unsafe { parts(cache) }) else {
        return ptr::null_mut();
    };
    // SAFETY: SQLite's own method, on the cache it made for this one, with SQLite's arguments.
    let page = unsafe { (default.fetch)(tracked.inner, key, create) };
    if !page.is_null() {
        tracked.fetched(key);
    }
    page
}

unsafe extern "C" fn unpin(cache: Cache, page: Page, discard: c_int) {
    // SAFETY: SQLite passes a cache that `create` made and it has not destroyed.
    if let Some((default, tracked)) = unsafe { parts(cache) } {
        // SAFETY: SQLite's own method, on the cache it made for this one and one of its pages.
        unsafe { (default.unpin)(tracked.inner, page, discard) }
    }
}

unsafe extern "C" fn rekey(cache: Cache, page: Page, from: c_uint, to: c_uint) {
    // SAFETY: SQLite passes a cache that `create` made and it has not destroyed.
    if let Some((default, tracked)) = unsafe { parts(cache) } {
        // SAFETY: SQLite's own method, on the cache it made for this one and one of its pages.
        unsafe { (default.rekey)(tracked.inner, page, from, to) };
        tracked.moved(from, to);
    }
}

unsafe extern "C" fn truncate(cache: Cache, limit: c_uint) {
    // SAFETY: SQLite passes a cache that `create` made and it has not destroyed.
    let Some((default, tracked)) = (unsafe { parts(cache) }) else {
        return;
    };
    if limit > tracked.highest_key() {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // SAFETY: SQLite's own method, on the cache it made for this one.
    unsafe { (default.truncate)(tracked.inner, limit) };
    tracked.truncated(limit);
    PASSED_ON.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn destroy(cache: Cache) {
    // SAFETY: SQLite passes a cache that `create` made, once, and never uses it again, so the
    // box `create` leaked can be taken back.
    let tracked = unsafe { Box::from_raw(cache.cast::<Tracked>()) };
    if let Some(default) = DEFAULT.get() {
        // SAFETY: SQLite's own method, on the cache it made for this one, which ends with it.
        unsafe { (default.destroy)(tracked.inner) }
    }
}

unsafe extern "C" fn shrink(cache: Cache) {
    // SAFETY: SQLite passes a cache that `create` made and it has not destroyed.
    if let Some((default, tracked)) = unsafe { parts(cache) } {
        // SAFETY: SQLite's own method, on the cache it made for this one.
        unsafe { (default.shrink)(tracked.inner) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Tracked {
        Tracked {
            inner: ptr::null_mut(),
            highest_fetched: 0,
            moved_above: Vec::new(),
        }
    }

    #[test]
    fn a_swap_through_a_spare_number_leaves_the_bound_where_it_was() {
        let mut cache = cache();
        for key in 1..=40 {
            cache.fetched(key);
        }
        // `balance_nonroot`'s swap of pages 30 and 12 through the lock-byte page's number.
        cache.moved(30, 524_289);
        assert_eq!(cache.highest_key(), 524_289);
        cache.moved(12, 30);
        cache.moved(524_289, 12);
        assert_eq!(cache.highest_key(), 40);
    }

    #[test]
    fn a_page_moved_past_the_fetched_keys_raises_the_bound_until_it_is_truncated() {
        let mut cache = cache();
        cache.fetched(10);
        cache.moved(4, 90);
        assert_eq!(cache.highest_key(), 90);
        cache.truncated(50);
        assert_eq!(cache.highest_key(), 10);
        cache.truncated(5);
        assert_eq!(cache.highest_key(), 4);
    }
}
