//! One run: the load for a fixed window after a warm-up, and what the servers spent on it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cli::Args;
use crate::group_commit::Totals;
use crate::instructions;
use crate::load::{self, MakeRequest, Measured, Phases};
use crate::metrics_page;
use crate::postgres_groups::GroupTotals;
use crate::report::{Row, SwitchesPerRequest, is_ceiling_store, write_timeline};
use crate::server::{self, MachineTimes, Server, Switches};

/// Whether a run measured for `measured_seconds` of its planned window stopped early enough to
/// be run again.
fn used_up_early(measured_seconds: f64, planned_seconds: f64) -> bool {
    measured_seconds < planned_seconds * 0.9
}

/// Answers per connection the server must have given, warm-up included, before callgrind
/// counts. Under valgrind a server's first requests take seconds, and the work a process does
/// once is done then: the first send compiles its country's number patterns (28 million
/// instructions) and waits for the phone metadata, loaded on a thread of its own at start (31
/// million). Counted from the end of a one-second warm-up, they added a fifth to a Pinpoint
/// send's count (2026-12-06).
const ANSWERS_BEFORE_COUNTING: u64 = 2;

/// One run against `servers` (every node of a deployment): CPU is their sum, RSS their peak.
pub async fn measure(
    args: &Args,
    servers: &[Server],
    store: &str,
    operation: &str,
    connections: usize,
    make: MakeRequest,
) -> anyhow::Result<Row> {
    let addresses: Vec<_> = servers.iter().map(|server| server.address).collect();
    let cpu_time = || servers.iter().map(Server::cpu_time).sum::<Duration>();
    let thread_cpu_times = || {
        let mut times = BTreeMap::<String, Duration>::new();
        for (name, time) in servers.iter().flat_map(Server::thread_cpu_times) {
            *times.entry(name).or_default() += time;
        }
        times
    };
    let now = Instant::now();
    let phases = Phases {
        measure_from: now + Duration::from_secs_f64(args.warmup),
        measure_until: now + Duration::from_secs_f64(args.warmup + args.duration),
    };
    let answered = load::Answered::default();
    let run = tokio::spawn({
        let answered = answered.clone();
        async move { load::run(&addresses, connections, phases, make, answered).await }
    });
    tokio::time::sleep_until(phases.measure_from.into()).await;
    let answers_wanted = ANSWERS_BEFORE_COUNTING * connections as u64;
    let warmed_up = !args.instructions
        || answered
            .wait_for(answers_wanted, phases.measure_until)
            .await;
    // Switched on after the window, counting would find no request begun, and the row would
    // blame the prepared codes.
    let counting = if warmed_up {
        servers
            .iter()
            .filter_map(Server::start_counting)
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        println!(
            "  note: the server had not answered {ANSWERS_BEFORE_COUNTING} {operation} requests a connection by the end of the window, so nothing was counted; a longer --duration gives it time"
        );
        Vec::new()
    };
    // Over every server, or none if one cannot be read.
    let switches = || {
        servers
            .iter()
            .map(Server::request_thread_switches)
            .try_fold(Switches::default(), |sum, one| Some(sum.plus(one?)))
    };
    let threads_before = thread_cpu_times();
    let switches_before = switches();
    let before = (
        cpu_time(),
        server::postgres_cpu_time(),
        server::own_cpu_time(),
        MachineTimes::read(),
    );
    // Read after the CPU figures, which must bracket the window closely; these are ratios. Not
    // under callgrind, whose count of the window's instructions would take in `/metrics` too.
    let grouped: &[Server] = if args.instructions { &[] } else { servers };
    let grouping_before = metrics_totals(grouped).await;
    tokio::time::sleep_until(phases.measure_until.into()).await;
    let threads_after = thread_cpu_times();
    let switched = switches()
        .zip(switches_before)
        .map(|(after, before)| after.since(before));
    let after = (
        cpu_time(),
        server::postgres_cpu_time(),
        server::own_cpu_time(),
        MachineTimes::read(),
    );
    let grouping_after = metrics_totals(grouped).await;
    let counted = counting
        .into_iter()
        .map(instructions::Counting::finish)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let measured: Measured = run.await??;
    let planned = phases.window();
    let measured_seconds = measured.window.as_secs_f64();
    let used_up_codes =
        measured.ran_out_of_work && used_up_early(measured_seconds, planned.as_secs_f64());
    if used_up_codes {
        // The figures then cover a short window.
        println!(
            "  note: {operation} at {connections} connections used up its prepared codes {measured_seconds:.1} s into its {:.1} s window",
            planned.as_secs_f64()
        );
    } else if measured.requests == 0 {
        println!(
            "  note: no {operation} request at {connections} connections completed in its {:.1} s window",
            planned.as_secs_f64()
        );
    }
    if let Some(directory) = &args.timeline {
        write_timeline(directory, store, operation, connections, &measured.timeline)?;
    }
    let per_request = |spent: Duration| spent.as_secs_f64() * 1e6 / measured.requests.max(1) as f64;
    let row = Row {
        store: store.to_owned(),
        operation: operation.to_owned(),
        connections,
        requests_per_second: measured.per_second(),
        p50_ms: measured.percentile_ms(0.50),
        p99_ms: measured.percentile_ms(0.99),
        measured_seconds,
        used_up_codes,
        cpu_us_per_request: per_request(after.0.saturating_sub(before.0)),
        database_cpu_us_per_request: (store.starts_with("postgres"))
            .then(|| per_request(after.1.saturating_sub(before.1))),
        client_cpu_us_per_request: per_request(after.2.saturating_sub(before.2)),
        peak_rss_mib: servers.iter().map(Server::peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        errors: measured.errors,
        steal_percent: before
            .3
            .zip(after.3)
            .map(|(before, after)| after.steal_percent_since(&before)),
        thread_instructions_per_request: per_request_by_thread(&counted),
        thread_cpu_us_per_request: threads_after
            .iter()
            .filter_map(|(name, after)| {
                let before = threads_before.get(name)?;
                Some((name.clone(), per_request(after.saturating_sub(*before))))
            })
            .collect(),
        // A ceiling's requests run on its runtime's workers, not its main thread.
        request_thread_switches_per_request: switched
            .filter(|_| !args.instructions && !is_ceiling_store(store) && measured.requests > 0)
            .map(|switched| SwitchesPerRequest {
                waiting: switched.waiting as f64 / measured.requests as f64,
                preempted: switched.preempted as f64 / measured.requests as f64,
            }),
        sqlite_grouping: grouping_before
            .0
            .zip(grouping_after.0)
            .and_then(|(before, after)| after.since(&before, phases.window())),
        postgres_group_sizes: grouping_before
            .1
            .zip(grouping_after.1)
            .map(|(before, after)| after.since(&before))
            .unwrap_or_default(),
        // The ratios are the report's, once every row is in.
        ..Row::default()
    };
    if !counted.is_empty() && row.thread_instructions_per_request.is_none() {
        println!(
            "  note: no {operation} began in the window at {connections} connections: no instruction count (a verify or check run that used up its prepared codes in the warm-up needs a larger --pool)"
        );
    }
    println!(
        "  {:<40} {:>3} conns {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {:>6.1} µs CPU/req{}  (load generator {:.1} µs/req{}){}",
        row.operation,
        row.connections,
        row.requests_per_second,
        row.p50_ms,
        row.p99_ms,
        row.cpu_us_per_request,
        row.database_cpu_us_per_request
            .map(|cpu| format!(" + {cpu:.1} µs in PostgreSQL"))
            .unwrap_or_default(),
        row.client_cpu_us_per_request,
        row.steal_percent
            .map(|steal| format!(", steal {steal:.1}%"))
            .unwrap_or_default(),
        if row.errors > 0 {
            format!("  ({} errors)", row.errors)
        } else {
            String::new()
        }
    );
    let busiest: Vec<String> = busiest_threads(&row.thread_cpu_us_per_request)
        .into_iter()
        .map(|(name, us)| format!("{name} {us:.1}"))
        .collect();
    if !busiest.is_empty() {
        let switches = row
            .request_thread_switches_per_request
            .map(|s| {
                format!(
                    "; main left its core {:.3} times a request to wait, {:.3} preempted",
                    s.waiting, s.preempted
                )
            })
            .unwrap_or_default();
        println!(
            "  {:<40} {:>3} conns  µs CPU/req by thread: {}{switches}",
            row.operation,
            row.connections,
            busiest.join(", ")
        );
    }
    if let Some(grouping) = &row.sqlite_grouping {
        println!(
            "  {:<40} {:>3} conns  SQLite writer: {:.1} jobs a commit, {:.2} commits a flush, {:.0} flushes a second of {:.2} ms each",
            row.operation,
            row.connections,
            grouping.jobs_per_commit,
            grouping.commits_per_flush,
            grouping.flushes_per_second,
            grouping.milliseconds_per_flush
        );
    }
    if !row.postgres_group_sizes.is_empty() {
        let groups: Vec<String> = row
            .postgres_group_sizes
            .iter()
            .map(|(statement, size)| format!("{statement} {size:.1}"))
            .collect();
        println!(
            "  {:<40} {:>3} conns  PostgreSQL requests a group: {}",
            row.operation,
            row.connections,
            groups.join(", ")
        );
    }
    if let Some(threads) = &row.thread_instructions_per_request {
        let each: Vec<String> = threads
            .iter()
            .filter(|&&count| count >= 1000.0)
            .map(|count| format!("{:.1}k", count / 1000.0))
            .collect();
        println!(
            "  {:<40} {:>3} conns {:>9.1}k instructions/req (threads: {})",
            row.operation,
            row.connections,
            threads.iter().sum::<f64>() / 1000.0,
            each.join(", ")
        );
    }
    Ok(row)
}

/// The SQLite writer's totals so far (see `group_commit`) and the PostgreSQL groups' (see
/// `postgres_groups`), each summed over the servers that have them; `None` when none has (or
/// there are none).
async fn metrics_totals(servers: &[Server]) -> (Option<Totals>, Option<GroupTotals>) {
    let mut writer: Option<Totals> = None;
    let mut groups: Option<GroupTotals> = None;
    for server in servers {
        let Some(text) = metrics_page::read_metrics(server.address).await else {
            continue;
        };
        if let Some(totals) = Totals::parse(&text) {
            writer = Some(writer.map_or(totals, |sum| sum.plus(&totals)));
        }
        if let Some(totals) = GroupTotals::parse(&text) {
            groups = Some(match groups {
                Some(sum) => sum.plus(&totals),
                None => totals,
            });
        }
    }
    (writer, groups)
}

/// The threads that took a tenth of a microsecond a request or more, busiest first.
fn busiest_threads(threads: &BTreeMap<String, f64>) -> Vec<(&str, f64)> {
    let mut busiest: Vec<(&str, f64)> = threads
        .iter()
        .filter(|&(_, &us)| us >= 0.1)
        .map(|(name, &us)| (name.as_str(), us))
        .collect();
    busiest.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    busiest
}

/// The servers' instructions per request by thread, largest first, when they ran under
/// callgrind and began requests while it counted.
fn per_request_by_thread(counted: &[instructions::Counted]) -> Option<Vec<f64>> {
    let requests: u64 = counted.iter().map(|server| server.requests).sum();
    (requests > 0).then(|| {
        let mut threads: Vec<f64> = counted
            .iter()
            .flat_map(|server| &server.threads)
            .map(|&count| count as f64 / requests as f64)
            .collect();
        threads.sort_unstable_by(|a, b| b.total_cmp(a));
        threads
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_threads_come_first_and_idle_ones_are_left_out() {
        let threads = BTreeMap::from([
            ("main".to_owned(), 35.2),
            ("otpd-metrics".to_owned(), 0.01),
            ("otpd-sqlite-wri".to_owned(), 40.5),
            ("otpd-log".to_owned(), 1.1),
        ]);
        assert_eq!(
            busiest_threads(&threads),
            [("otpd-sqlite-wri", 40.5), ("main", 35.2), ("otpd-log", 1.1)]
        );
    }
}
