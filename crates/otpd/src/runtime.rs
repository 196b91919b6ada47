//! The async runtime otpd runs on, sized to the cores it may use.
//!
//! Given one worker thread (one core, or `--worker-threads 1`), otpd runs on tokio's
//! current-thread scheduler rather than a work-stealing pool of one worker, whose worker shares
//! its tasks through queues built for thieves that never come. Measured on 2026-12-03 with the
//! server pinned to one core, in 11 alternating pairs of benchmark runs: a Pinpoint send cost a
//! median 7% less CPU on the current-thread scheduler (less in 9 pairs of 11); the mix and a
//! wrong-code verify were within the host's noise. Instruction counts were the same, so the
//! saving is in the kernel (wake-ups), which callgrind does not see.

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// The runtime for `worker_threads` threads, or for every core this process may use (its CPU
/// affinity and cgroup quota) when `None`.
pub fn build(worker_threads: Option<NonZeroUsize>) -> std::io::Result<Runtime> {
    let threads = worker_threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let mut builder = if threads == 1 {
        Builder::new_current_thread()
    } else {
        let mut pool = Builder::new_multi_thread();
        pool.worker_threads(threads);
        pool
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::*;

    fn flavor_for(threads: usize) -> RuntimeFlavor {
        let runtime = build(NonZeroUsize::new(threads)).expect("runtime");
        runtime.handle().runtime_flavor()
    }

    #[test]
    fn one_thread_runs_on_the_current_thread_scheduler() {
        assert_eq!(flavor_for(1), RuntimeFlavor::CurrentThread);
    }

    #[test]
    fn several_threads_share_the_work_stealing_pool() {
        assert_eq!(flavor_for(3), RuntimeFlavor::MultiThread);
    }

    #[test]
    fn both_schedulers_run_timers_and_spawned_tasks() {
        for threads in [1, 2] {
            let runtime = build(NonZeroUsize::new(threads)).expect("runtime");
            let answer = runtime.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                tokio::spawn(async { 42 }).await.expect("task")
            });
            assert_eq!(answer, 42);
        }
    }
}
