//! The async runtime otpd runs on, sized to the cores it may use.
//!
//! Given one worker thread (one core, or `--worker-threads 1`), otpd runs on tokio's
//! current-thread scheduler rather than a work-stealing pool of one worker, whose worker shares
//! its tasks through queues built for thieves that never come. Measured on 2026-12-03 with the
//! server pinned to one core, in 11 alternating pairs of benchmark runs: a Pinpoint send cost a
//! median 7% less CPU on the current-thread scheduler (less in 9 pairs of 11); the mix and a
//! wrong-code verify were within the host's noise. Instruction counts were the same, so the
//! saving is in the kernel (wake-ups), which callgrind does not see.
//!
//! The current-thread scheduler also looks for I/O events and timers less often than tokio's
//! default (`EVENT_INTERVAL`): otpd's tasks are short, and a check for events in the middle of a
//! round of requests split the round's writes into more, smaller group commits.

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// Tasks the current-thread scheduler runs before it looks for I/O events and due timers, when
/// tasks are always ready (tokio's default is 61; it looks whenever nothing is ready). One round
/// of 64 connections' sends is about 130-190 task polls: at 61 the scheduler polled for events
/// two or three times a round, and the writes it then read began commits of their own. Measured
/// on 2026-12-06 (2-vCPU AMD EPYC, 10 s Pinpoint send runs at 64 connections, alternating): 256
/// gave 36-38 writer jobs a commit against 28, and 45-47 µs of CPU a send against 49-50; wrong-code
/// verifies did not move. Behind tasks that are always ready, events now wait for at most 256 of
/// them: 5-13 ms of otpd's (20-50 µs each), where a larger value would make an overloaded node
/// read new requests later still.
const EVENT_INTERVAL: u32 = 256;

/// The runtime for `worker_threads` threads, or for every core this process may use (its CPU
/// affinity and cgroup quota) when `None`.
pub fn build(worker_threads: Option<NonZeroUsize>) -> std::io::Result<Runtime> {
    let threads = worker_threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let mut builder = if threads == 1 {
        let mut single = Builder::new_current_thread();
        single.event_interval(EVENT_INTERVAL);
        single
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

    /// Two tasks that wake each other for ever keep the scheduler from ever running out of
    /// ready tasks: it must still fire a timer and accept a connection between them. The
    /// runtime runs on a thread of its own so that a scheduler that never looks for events
    /// fails the test instead of hanging it.
    #[test]
    fn tasks_always_ready_do_not_starve_timers_or_sockets() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = build(NonZeroUsize::new(1)).expect("runtime");
            runtime.block_on(async {
                let (ping, mut pinged) = tokio::sync::mpsc::unbounded_channel::<()>();
                let (pong, mut ponged) = tokio::sync::mpsc::unbounded_channel::<()>();
                let bouncer = ping.clone();
                tokio::spawn(async move {
                    while pinged.recv().await.is_some() {
                        if pong.send(()).is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    while ponged.recv().await.is_some() {
                        if bouncer.send(()).is_err() {
                            return;
                        }
                    }
                });
                ping.send(()).expect("start the ping-pong");

                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("listener");
                let address = listener.local_addr().expect("address");
                let (accepted, connected) =
                    tokio::join!(listener.accept(), tokio::net::TcpStream::connect(address));
                accepted.expect("accepted");
                connected.expect("connected");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            });
            let _ = done.send(());
        });
        assert!(
            finished
                .recv_timeout(std::time::Duration::from_secs(5))
                .is_ok(),
            "a timer and a connection waited over 5 s behind tasks that were always ready"
        );
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
