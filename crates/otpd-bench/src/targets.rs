//! Issue 6's targets, read off a run's rows: printed after the table and kept in the JSON, so
//! that a run says itself which it met, with the figures each verdict rests on.

use serde::Serialize;

use crate::deployment::Deployment;
use crate::report::{Row, is_ceiling};
use crate::workload::{Kind, Operation};

/// The connection count the ratio, latency and CPU targets are read at, on SQLite.
const AT_CONNECTIONS: usize = 64;

/// One target and the readings it applies to.
#[derive(Debug, Serialize, PartialEq)]
pub struct Assessment {
    pub target: &'static str,
    /// How many of the readings meet it, of how many.
    pub met: usize,
    pub of: usize,
    /// Each reading, as `name: figure`, the ones that miss marked.
    pub readings: Vec<String>,
}

/// A reading and whether it meets its target.
struct Reading {
    name: String,
    figure: String,
    meets: bool,
}

impl Reading {
    /// The figure is written as the table writes it, with more decimals where that rounding
    /// would cross the limit (a send at 0.2986 of the ceiling reads 0.299, not a missed 0.30).
    fn new(name: String, value: f64, unit: Unit, meets: impl Fn(f64) -> bool) -> Self {
        let verdict = meets(value);
        let mut decimals = unit.decimals();
        while decimals < MAX_DECIMALS && meets(round_to(value, decimals)) != verdict {
            decimals += 1;
        }
        Self {
            name,
            figure: unit.write(value, decimals),
            meets: verdict,
        }
    }
}

/// Enough to tell any figure a run measures from its limit.
const MAX_DECIMALS: usize = 6;

fn round_to(value: f64, decimals: usize) -> f64 {
    let scale = 10_f64.powi(decimals as i32);
    (value * scale).round() / scale
}

impl Assessment {
    fn of(target: &'static str, readings: Vec<Reading>) -> Option<Self> {
        if readings.is_empty() {
            return None;
        }
        Some(Self {
            target,
            met: readings.iter().filter(|reading| reading.meets).count(),
            of: readings.len(),
            readings: readings
                .into_iter()
                .map(|reading| {
                    let miss = if reading.meets { "" } else { " (missed)" };
                    format!("{}: {}{miss}", reading.name, reading.figure)
                })
                .collect(),
        })
    }
}

/// The kind of operation a row measured, if it is one of otpd's on SQLite at the targets'
/// connection count.
fn targeted_kind(row: &Row) -> Option<Kind> {
    if row.store != Deployment::Sqlite.label() || row.connections != AT_CONNECTIONS {
        return None;
    }
    Operation::ALL
        .into_iter()
        .find(|operation| operation.name() == row.operation)
        .map(Operation::kind)
}

/// How a figure is written, as the table writes it.
#[derive(Clone, Copy)]
enum Unit {
    Ratio,
    Milliseconds,
    Microseconds,
    Mebibytes,
}

impl Unit {
    fn decimals(self) -> usize {
        match self {
            Self::Ratio | Self::Milliseconds => 2,
            Self::Microseconds | Self::Mebibytes => 1,
        }
    }

    fn write(self, value: f64, decimals: usize) -> String {
        let suffix = match self {
            Self::Ratio => "",
            Self::Milliseconds => " ms",
            Self::Microseconds => " µs",
            Self::Mebibytes => " MiB",
        };
        format!("{value:.decimals$}{suffix}")
    }
}

/// The rows of one kind (or of every kind, with `None`) and `figure` read off each.
fn read(
    rows: &[Row],
    kind: Option<Kind>,
    figure: impl Fn(&Row) -> Option<f64>,
    meets: impl Fn(f64) -> bool,
    unit: Unit,
) -> Vec<Reading> {
    rows.iter()
        .filter(|row| targeted_kind(row).is_some_and(|found| kind.is_none_or(|k| k == found)))
        .filter_map(|row| {
            Some(Reading::new(
                row.operation.clone(),
                figure(row)?,
                unit,
                &meets,
            ))
        })
        .collect()
}

/// Every target the run has readings for, in the order. `cold_starts` is each
/// deployment's cold start in milliseconds.
pub fn assess(rows: &[Row], cold_starts: &[(String, f64)]) -> Vec<Assessment> {
    let ratio = |row: &Row| row.ratio_to_batched;
    let p99 = |row: &Row| Some(row.p99_ms);
    let cpu_within = |kind: Kind, limit: f64| {
        let cpu = |row: &Row| Some(row.cpu_us_per_request);
        read(
            rows,
            Some(kind),
            cpu,
            move |us| us <= limit,
            Unit::Microseconds,
        )
    };
    let mut peak_rss: Vec<(String, f64)> = Vec::new();
    for row in rows.iter().filter(|row| !is_ceiling(row)) {
        match peak_rss.iter_mut().find(|(store, _)| *store == row.store) {
            Some((_, peak)) => *peak = peak.max(row.peak_rss_mib),
            None => peak_rss.push((row.store.clone(), row.peak_rss_mib)),
        }
    }
    let two_nodes_capped: Vec<Reading> = rows
        .iter()
        .filter(|row| row.one_node_around.is_some())
        .filter_map(|row| {
            let ratio = row.ratio_to_one_node?;
            Some(Reading::new(
                capped_reading_name(row),
                ratio,
                Unit::Ratio,
                |r| r >= 1.6,
            ))
        })
        .collect();
    [
        Assessment::of(
            "verify ≥ 0.5 of the batched ceiling",
            read(rows, Some(Kind::Verify), ratio, |r| r >= 0.5, Unit::Ratio),
        ),
        Assessment::of(
            "send ≥ 0.3 of the batched ceiling",
            read(rows, Some(Kind::Send), ratio, |r| r >= 0.3, Unit::Ratio),
        ),
        Assessment::of(
            "p99 < 5 ms, every operation",
            read(rows, None, p99, |ms| ms < 5.0, Unit::Milliseconds),
        ),
        Assessment::of("CPU ≤ 50 µs a verify", cpu_within(Kind::Verify, 50.0)),
        Assessment::of("CPU ≤ 100 µs a send", cpu_within(Kind::Send, 100.0)),
        Assessment::of(
            "peak RSS < 64 MiB",
            peak_rss
                .into_iter()
                .map(|(store, mib)| Reading::new(store, mib, Unit::Mebibytes, |mib| mib < 64.0))
                .collect(),
        ),
        Assessment::of(
            "cold start < 100 ms",
            cold_starts
                .iter()
                .map(|(store, ms)| {
                    Reading::new(store.clone(), *ms, Unit::Milliseconds, |ms| ms < 100.0)
                })
                .collect(),
        ),
        Assessment::of("two nodes ≥ 1.6 × one (capped rows)", two_nodes_capped),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A capped two-node reading's operation, and how much of a core PostgreSQL spent in it. The
/// capped rows measure how the nodes scale; where PostgreSQL, on the core it shares with the
/// second node and the load generator, used most of that core, the database set the rate.
fn capped_reading_name(row: &Row) -> String {
    match row.database_cpu_us_per_request {
        Some(database_us) => format!(
            "{} (PostgreSQL at {:.2} of a core)",
            row.operation,
            database_us * row.requests_per_second / 1e6
        ),
        None => row.operation.clone(),
    }
}

/// The assessments as lines after the table.
pub fn print(assessments: &[Assessment]) {
    if assessments.is_empty() {
        return;
    }
    println!(
        "\nissue 6's targets (ratios, p99 and CPU on SQLite at {AT_CONNECTIONS} connections; \
         a row read with steal, named above, gives no verdict to trust):"
    );
    for assessment in assessments {
        let verdict = if assessment.met == assessment.of {
            "met".to_owned()
        } else {
            format!("{} of {}", assessment.met, assessment.of)
        };
        println!(
            "  {:<38} {verdict:<8} {}",
            assessment.target,
            assessment.readings.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CeilingReading;

    fn row(store: &str, operation: Operation, connections: usize) -> Row {
        Row {
            store: store.into(),
            operation: operation.name().into(),
            connections,
            ..Row::default()
        }
    }

    fn at_64(operation: Operation, ratio: f64, p99_ms: f64, cpu: f64) -> Row {
        Row {
            ratio_to_batched: Some(ratio),
            p99_ms,
            cpu_us_per_request: cpu,
            peak_rss_mib: 50.0,
            ..row("sqlite", operation, 64)
        }
    }

    fn found<'a>(assessments: &'a [Assessment], target: &str) -> &'a Assessment {
        assessments
            .iter()
            .find(|assessment| assessment.target == target)
            .unwrap_or_else(|| panic!("no assessment of {target:?}"))
    }

    #[test]
    fn each_target_is_read_off_the_rows_it_is_set_for() {
        let rows = vec![
            at_64(Operation::PinpointSend, 0.33, 5.74, 52.3),
            at_64(Operation::PinpointVerifyRight, 0.53, 3.98, 34.7),
            at_64(Operation::PinpointVerifyWrong, 0.49, 3.71, 32.6),
            at_64(Operation::AmmSend, 0.31, 4.9, 101.0),
            at_64(Operation::AmmCheck, 0.63, 2.44, 25.5),
            at_64(Operation::Mix, 0.43, 3.71, 42.1),
            // Rows the ratio, latency and CPU targets are not set for.
            Row {
                ratio_to_batched: Some(0.01),
                p99_ms: 40.0,
                ..row("sqlite", Operation::PinpointSend, 16)
            },
            Row {
                ratio_to_batched: Some(0.01),
                p99_ms: 40.0,
                peak_rss_mib: 70.0,
                ..row("postgres", Operation::AmmCheck, 64)
            },
            Row {
                p99_ms: 1.0,
                ..row("- (before)", Operation::Mix, 64)
            },
            Row {
                ratio_to_one_node: Some(1.45),
                one_node_around: Some([1000.0, 1100.0]),
                ..row(
                    "postgres, 2 nodes at 15% of a core each",
                    Operation::AmmSend,
                    64,
                )
            },
            Row {
                ratio_to_one_node: Some(2.31),
                one_node_around: Some([1000.0, 1100.0]),
                requests_per_second: 12_000.0,
                database_cpu_us_per_request: Some(60.0),
                ..row(
                    "postgres, 2 nodes at 15% of a core each",
                    Operation::AmmCheck,
                    64,
                )
            },
            // An uncapped two-node row has no readings around it.
            Row {
                ratio_to_one_node: Some(0.9),
                ..row("postgres, 2 nodes", Operation::AmmCheck, 64)
            },
        ];
        let cold_starts = [("sqlite".to_owned(), 10.9), ("postgres".to_owned(), 123.0)];
        let assessments = assess(&rows, &cold_starts);
        let verdicts: Vec<(&str, usize, usize)> = assessments
            .iter()
            .map(|assessment| (assessment.target, assessment.met, assessment.of))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("verify ≥ 0.5 of the batched ceiling", 2, 3),
                ("send ≥ 0.3 of the batched ceiling", 2, 2),
                ("p99 < 5 ms, every operation", 5, 6),
                ("CPU ≤ 50 µs a verify", 3, 3),
                ("CPU ≤ 100 µs a send", 1, 2),
                ("peak RSS < 64 MiB", 3, 4),
                ("cold start < 100 ms", 1, 2),
                ("two nodes ≥ 1.6 × one (capped rows)", 1, 2),
            ]
        );
        assert_eq!(
            found(&assessments, "verify ≥ 0.5 of the batched ceiling").readings,
            [
                "pinpoint verify (right code): 0.53",
                "pinpoint verify (wrong code): 0.49 (missed)",
                "amm check: 0.63",
            ]
        );
        assert_eq!(
            found(&assessments, "p99 < 5 ms, every operation").readings[0],
            "pinpoint send: 5.74 ms (missed)"
        );
        assert_eq!(
            found(&assessments, "two nodes ≥ 1.6 × one (capped rows)").readings,
            [
                "amm send: 1.45 (missed)",
                "amm check (PostgreSQL at 0.72 of a core): 2.31",
            ]
        );
        // One reading a deployment, its highest.
        assert_eq!(
            found(&assessments, "peak RSS < 64 MiB").readings,
            [
                "sqlite: 50.0 MiB",
                "postgres: 70.0 MiB (missed)",
                "postgres, 2 nodes at 15% of a core each: 0.0 MiB",
                "postgres, 2 nodes: 0.0 MiB",
            ]
        );
    }

    #[test]
    fn a_figure_next_to_its_limit_is_written_with_the_decimals_that_tell_it_apart() {
        let rows = vec![
            at_64(Operation::PinpointSend, 0.2986, 4.998, 100.04),
            at_64(Operation::AmmSend, 0.3004, 5.001, 99.96),
        ];
        let assessments = assess(&rows, &[]);
        // Where the table's rounding gives the same verdict (5.00 is not under 5 ms, 100.0 is
        // within 100 µs), the figure keeps the table's decimals.
        assert_eq!(
            found(&assessments, "send ≥ 0.3 of the batched ceiling").readings,
            ["pinpoint send: 0.299 (missed)", "amm send: 0.30"]
        );
        assert_eq!(
            found(&assessments, "p99 < 5 ms, every operation").readings,
            ["pinpoint send: 4.998 ms", "amm send: 5.00 ms (missed)"]
        );
        assert_eq!(
            found(&assessments, "CPU ≤ 100 µs a send").readings,
            ["pinpoint send: 100.04 µs (missed)", "amm send: 100.0 µs"]
        );
    }

    #[test]
    fn a_run_without_the_rows_of_a_target_says_nothing_of_it() {
        // `--only "amm check" --connections 16`, without the ceilings: no ratios, nothing at 64.
        let rows = vec![Row {
            batched_ceiling_around: Some(
                [CeilingReading {
                    requests_per_second: 1.0,
                    p99_ms: 1.0,
                }; 2],
            ),
            peak_rss_mib: 40.0,
            ..row("sqlite", Operation::AmmCheck, 16)
        }];
        let assessments = assess(&rows, &[("sqlite".to_owned(), 9.0)]);
        let targets: Vec<&str> = assessments.iter().map(|found| found.target).collect();
        assert_eq!(targets, ["peak RSS < 64 MiB", "cold start < 100 ms"]);
    }
}
