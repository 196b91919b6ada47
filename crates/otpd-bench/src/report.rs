//! The table: one row per run, the ratios each row is read by, and how the rows are printed,
//! named and written.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::ceiling;
use crate::deployment::Deployment;
use crate::group_commit::Grouping;

/// What a ceiling read around one row gave.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CeilingReading {
    pub requests_per_second: f64,
    pub p99_ms: f64,
}

/// Times a thread left its core per request (see `server::Switches`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SwitchesPerRequest {
    pub waiting: f64,
    pub preempted: f64,
}

/// One run's figures: a line of the table, and of the JSON.
#[derive(Debug, Default, Serialize)]
pub struct Row {
    /// The store otpd ran on (`-` for the ceilings).
    pub store: String,
    pub operation: String,
    pub connections: usize,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The seconds measured: shorter than `--duration` when a run used up its prepared codes
    /// early, and 0 when it used them up in its warm-up or nothing completed in its window.
    pub measured_seconds: f64,
    /// Whether the run used up its prepared codes (verify and check runs) before 90% of its
    /// window: its figures cover a short window, and it is run again with more.
    pub used_up_codes: bool,
    pub cpu_us_per_request: f64,
    /// What PostgreSQL's own processes spent per request (PostgreSQL rows only).
    pub database_cpu_us_per_request: Option<f64>,
    /// What the load generator spent per request: the rest of the machine's budget.
    pub client_cpu_us_per_request: f64,
    pub peak_rss_mib: f64,
    pub errors: u64,
    /// The batched-commit ceiling measured right before and right after this row (SQLite
    /// rows): `ratio_to_batched` divides by the mean of their rates.
    pub batched_ceiling_around: Option<[CeilingReading; 2]>,
    pub ratio_to_json: Option<f64>,
    pub ratio_to_commit_each: Option<f64>,
    pub ratio_to_batched: Option<f64>,
    /// Two PostgreSQL nodes' throughput over one node's, same operation and connections.
    pub ratio_to_one_node: Option<f64>,
    /// The one-node rates read right before and after this two-node row (capped rows):
    /// `ratio_to_one_node` divides by their mean.
    pub one_node_around: Option<[f64; 2]>,
    /// The share of the machine's CPU time its hypervisor gave to others during the window
    /// (steal time, in percent; absent where `/proc/stat` does not say): a row measured with
    /// more than a few percent reads slow, its ceiling too.
    pub steal_percent: Option<f64>,
    /// The server's instructions per request by thread, largest first (`--instructions`).
    pub thread_instructions_per_request: Option<Vec<f64>>,
    /// The servers' CPU microseconds per request by thread name (`main` runs the requests on
    /// one core, `otpd-sqlite-wri` is the SQLite writer). The writer's over the main thread's
    /// compares two builds' writers when the machine's speed moves too much for rates: the
    /// main thread does the same work in both.
    pub thread_cpu_us_per_request: BTreeMap<String, f64>,
    /// How often the servers' request threads left their cores, over all their requests: to
    /// wait (a PostgreSQL node sleeps about once or twice a group while the group is in the
    /// database, so groups half as large cost it twice the waits a request), or preempted by
    /// another process on their core. Each switch costs a node its caches as well.
    pub request_thread_switches_per_request: Option<SwitchesPerRequest>,
    /// How otpd's SQLite writer grouped the window's work (SQLite rows; see `group_commit`).
    pub sqlite_grouping: Option<Grouping>,
    /// PostgreSQL rows: the mean requests a group statement, by statement (`send`, `check`,
    /// ...), over every node; a group of 8 or more runs set statements (see `postgres_groups`).
    pub postgres_group_sizes: BTreeMap<String, f64>,
}

/// A ceiling's row (its store is `- (before)` or `- (after)`), not otpd's.
pub fn is_ceiling(row: &Row) -> bool {
    is_ceiling_store(&row.store)
}

/// Whether a row's store names a ceiling: `-`, `- (before)`, `- (after)`.
pub fn is_ceiling_store(store: &str) -> bool {
    store.starts_with('-')
}

/// How far the paired ceiling moved across each row it was read around.
pub fn print_paired_drift(rows: &[Row]) {
    let drifts: Vec<f64> = rows
        .iter()
        .filter_map(|row| row.batched_ceiling_around)
        .map(|[before, after]| after.requests_per_second / before.requests_per_second)
        .collect();
    let Some(low) = drifts.iter().copied().reduce(f64::min) else {
        return;
    };
    let high = drifts.iter().copied().fold(low, f64::max);
    println!(
        "batched ceiling read around each SQLite row, after ÷ before: {low:.2} to {high:.2} over {} rows",
        drifts.len()
    );
}

/// Steal above which a row is run again, and named after the table if it still has it: the
/// host took that share of the machine during its window, and the row's rate and latency are
/// the host's as much as otpd's.
const STOLEN_PERCENT: f64 = 5.0;

/// The share of the machine the host took while `row` was read, if over `STOLEN_PERCENT`.
pub fn too_much_steal(row: &Row) -> Option<f64> {
    row.steal_percent.filter(|&steal| steal > STOLEN_PERCENT)
}

/// The rows read while the host took more than `STOLEN_PERCENT` of the machine.
fn stolen(rows: &[Row]) -> Vec<&Row> {
    rows.iter()
        .filter(|row| too_much_steal(row).is_some())
        .collect()
}

/// Names the rows read with too much steal, so that nobody reads a ratio off one of them.
pub fn print_stolen(rows: &[Row]) {
    let stolen = stolen(rows);
    if stolen.is_empty() {
        return;
    }
    println!(
        "\nrows read while the host took more than {STOLEN_PERCENT}% of the machine (steal): {} of {}",
        stolen.len(),
        rows.len()
    );
    for row in stolen {
        println!(
            "  {:<40} {:<40} {:>3} conns  steal {:.1}%",
            row.store,
            row.operation,
            row.connections,
            row.steal_percent.unwrap_or_default()
        );
    }
}

/// Each ceiling's readings by (operation, connections), in table order.
fn ceiling_readings(rows: &[Row]) -> BTreeMap<(String, usize), Vec<f64>> {
    let mut readings: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    for row in rows.iter().filter(|row| is_ceiling(row)) {
        readings
            .entry((row.operation.clone(), row.connections))
            .or_default()
            .push(row.requests_per_second);
    }
    readings
}

/// How far each ceiling moved between its two readings: the machine's drift during the run.
pub fn print_drift(rows: &[Row]) {
    let drifts: Vec<String> = ceiling_readings(rows)
        .iter()
        .filter_map(|((operation, connections), readings)| match readings[..] {
            [before, after] => Some(format!(
                "  {operation:<40} {connections:>3} conns  {:.2}",
                after / before
            )),
            _ => None,
        })
        .collect();
    if drifts.is_empty() {
        return;
    }
    println!("\nceilings after ÷ before (the machine's drift; ratios use their mean):");
    for drift in drifts {
        println!("{drift}");
    }
}

/// Writes one run's requests as CSV, named after the run.
pub fn write_timeline(
    directory: &Path,
    store: &str,
    operation: &str,
    connections: usize,
    timeline: &[(u32, u32)],
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(directory)?;
    let name: String = format!("{store} {operation} {connections}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut csv = String::from("completed_us,latency_us\n");
    for (completed, latency) in timeline {
        let _ = writeln!(csv, "{completed},{latency}");
    }
    std::fs::write(directory.join(format!("{name}.csv")), csv)?;
    Ok(())
}

pub fn print_table(rows: &[Row]) {
    let ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
    println!(
        "\n| store | operation | conns | req/s | p50 ms | p99 ms | batched p99 ms | CPU µs/req | DB CPU µs/req | peak RSS MiB | ÷ JSON | ÷ commit-each | ÷ batched | ÷ one node | steal % | k instructions/req |"
    );
    println!(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in rows {
        let ceiling_p99 = row
            .batched_ceiling_around
            .map(|[before, after]| format!("{:.2}", (before.p99_ms + after.p99_ms) / 2.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} | {} |",
            row.store,
            row.operation,
            row.connections,
            row.requests_per_second,
            row.p50_ms,
            row.p99_ms,
            ceiling_p99,
            row.cpu_us_per_request,
            row.database_cpu_us_per_request
                .map(|cpu| format!("{cpu:.1}"))
                .unwrap_or_else(|| "-".into()),
            row.peak_rss_mib,
            ratio(row.ratio_to_json),
            ratio(row.ratio_to_commit_each),
            ratio(row.ratio_to_batched),
            ratio(row.ratio_to_one_node),
            row.steal_percent
                .map(|steal| format!("{steal:.1}"))
                .unwrap_or_else(|| "-".into()),
            row.thread_instructions_per_request
                .as_ref()
                .map(|threads| format!("{:.1}", threads.iter().sum::<f64>() / 1000.0))
                .unwrap_or_else(|| "-".into()),
        );
    }
}

/// Gives every otpd row its ratios: to the batched ceiling read around it where there was one,
/// else to the mean of each ceiling's two passes, and several nodes to one node.
pub fn add_ratios(rows: &mut [Row]) {
    let ceiling_runs = ceiling_readings(rows);
    let by_store: HashMap<(&str, &str, usize), f64> = rows
        .iter()
        .map(|row| {
            (
                (row.store.as_str(), row.operation.as_str(), row.connections),
                row.requests_per_second,
            )
        })
        .collect();
    let one_node_ratios: Vec<Option<f64>> = rows
        .iter()
        .map(|row| {
            let one_node = Deployment::one_node_label(&row.store)?;
            let base = by_store.get(&(one_node, row.operation.as_str(), row.connections))?;
            Some(row.requests_per_second / base)
        })
        .collect();
    for (row, one_node_ratio) in rows.iter_mut().zip(one_node_ratios) {
        if is_ceiling(row) {
            continue;
        }
        let ratio = |kind: ceiling::Ceiling| {
            let readings = ceiling_runs.get(&(kind.label().to_owned(), row.connections))?;
            let mean = readings.iter().sum::<f64>() / readings.len() as f64;
            Some(row.requests_per_second / mean)
        };
        row.ratio_to_json = ratio(ceiling::Ceiling::Json);
        row.ratio_to_commit_each = ratio(ceiling::Ceiling::SqliteCommitEach);
        row.ratio_to_batched = match row.batched_ceiling_around {
            Some([before, after]) => Some(
                row.requests_per_second
                    / ((before.requests_per_second + after.requests_per_second) / 2.0),
            ),
            None => ratio(ceiling::Ceiling::SqliteBatched),
        };
        // The capped rows have theirs from the readings around them.
        if row.ratio_to_one_node.is_none() {
            row.ratio_to_one_node = one_node_ratio;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_more_than_a_little_steal_are_named() {
        let row = |operation: &str, steal_percent| Row {
            operation: operation.into(),
            steal_percent,
            ..Row::default()
        };
        let rows = [
            row("quiet", Some(0.4)),
            row("at the limit", Some(STOLEN_PERCENT)),
            row("stolen", Some(33.2)),
            row("unknown", None),
        ];
        let named: Vec<&str> = stolen(&rows)
            .iter()
            .map(|row| row.operation.as_str())
            .collect();
        assert_eq!(named, ["stolen"]);
    }
}
