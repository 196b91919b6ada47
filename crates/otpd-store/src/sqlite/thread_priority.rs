//! The CPU priorities of the store's own threads, relative to the request threads (nice 0).
//!
//! On a busy core the order in which runnable threads get it decides latency as much as their
//! cost does. Two of the store's threads do little work but sit at opposite ends of it:
//! - the log flusher's work gates every answer: a flush of the log ends, and every caller of
//!   the batches it covers can be answered. It spends most of its time waiting for the disk,
//!   and when the disk is done it must take the core at once, not after a request thread's
//!   turn (see `LOG_FLUSHER`);
//! - the checkpointer's copy can always wait (see `wal`).

/// The log flusher's nice value. Alternating 8 s runs at 64 connections (2026-12-07, 2-core
/// Xeon, the flusher reniced from outside, then the built change against the build before):
/// - Pinpoint sends, eleven pairs: the p99 fell in eight, by 0.3 ms on average (3.94-4.96 ms
///   against 4.15-5.51), and the rate rose 1-7% in most;
/// - verifies and checks, whose p99 is 2.5-3.4 ms either way: no clear change in the p99, and
///   wrong-code verifies 2-7% slower against the batched ceiling (the flusher, sooner on the
///   core, starts more and smaller flushes of these cheap commits);
/// - -19 did no better than -10, and the writer at -5 as well made sends worse (p99 5.68-6.25
///   against 4.30-4.57): it is a third of a send's CPU, and what it gains the requests lose;
/// - a short EEVDF slice instead (`sched_setattr`, which needs no privilege) made sends worse
///   in four pairs of four: it also cuts the flush's own kernel work into pieces.
pub(super) const LOG_FLUSHER: i32 = -10;

/// The checkpointer's nice value: the lowest there is.
pub(super) const CHECKPOINTER: i32 = 19;

/// Why a thread keeps the priority it has.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// The kernel refused: a higher priority than the process's needs root, `CAP_SYS_NICE` or
    /// an `RLIMIT_NICE` that allows it (systemd's `LimitNICE=`).
    #[error("the kernel refused it: {0}")]
    Kernel(#[from] std::io::Error),
    /// Outside Linux a nice value belongs to the whole process, whose request threads must
    /// keep theirs.
    #[cfg(not(target_os = "linux"))]
    #[error("a nice value is per process here")]
    PerProcess,
}

/// Sets the calling thread's nice value. Where that is refused the thread keeps the priority
/// it has, and says so in the debug log under `thread`'s name: its work is the same, only
/// its timing changes.
pub(super) fn set_own_niceness(niceness: i32, thread: &str) {
    if let Err(refused) = try_set_own_niceness(niceness) {
        tracing::debug!(%refused, niceness, "the {thread} keeps its CPU priority");
    }
}

#[cfg(target_os = "linux")]
pub(super) fn try_set_own_niceness(niceness: i32) -> Result<(), Refused> {
    let thread = rustix::thread::gettid();
    rustix::process::setpriority_process(Some(thread), niceness)
        .map_err(|errno| Refused::Kernel(errno.into()))
}

#[cfg(not(target_os = "linux"))]
pub(super) fn try_set_own_niceness(_niceness: i32) -> Result<(), Refused> {
    Err(Refused::PerProcess)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn own_niceness() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
    }

    /// What setting `niceness` does on a fresh thread once `prepare` has run on it: what
    /// `prepare` returned, the thread's nice value before, the outcome, and its value after.
    fn set_on_a_fresh_thread<P: Send + 'static>(
        niceness: i32,
        prepare: impl FnOnce() -> P + Send + 'static,
    ) -> (P, i32, Result<(), Refused>, i32) {
        std::thread::spawn(move || {
            let prepared = prepare();
            let before = own_niceness();
            let result = try_set_own_niceness(niceness);
            (prepared, before, result, own_niceness())
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn the_checkpointer_runs_at_the_lowest_priority_and_only_its_thread() {
        let callers = own_niceness();
        let ((), _, result, after) = set_on_a_fresh_thread(CHECKPOINTER, || ());
        result.expect("anyone may lower their own priority");
        assert_eq!(after, CHECKPOINTER);
        assert_eq!(
            own_niceness(),
            callers,
            "only the checkpointer's own thread"
        );
    }

    #[test]
    fn a_thread_without_the_privilege_is_refused_and_keeps_its_priority() {
        // On Linux a uid is per thread: the fresh thread alone gives up root's privileges (and
        // where the tests do not run as root, it has none to give up).
        let (dropped, before, result, after) = set_on_a_fresh_thread(LOG_FLUSHER, || {
            rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(65534))
        });
        let unprivileged = dropped.is_ok() || !rustix::process::geteuid().is_root();
        assert!(
            unprivileged,
            "the test thread could not drop root: {dropped:?}"
        );
        assert!(
            matches!(result, Err(Refused::Kernel(_))),
            "a higher priority needs a privilege: {result:?}"
        );
        assert_eq!(after, before, "a refusal changes nothing");
    }
}
