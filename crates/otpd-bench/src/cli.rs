//! The command line: what to measure, how long, and against which deployments.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand};

use crate::ceiling;

#[derive(Parser)]
#[command(about = "Benchmark otpd against its ceilings")]
pub struct Args {
    /// Seconds measured per run.
    #[arg(long, default_value_t = 3.0, value_parser = seconds(false))]
    pub duration: f64,
    /// Seconds of warm-up before each measured window.
    #[arg(long, default_value_t = 1.0, value_parser = seconds(true))]
    pub warmup: f64,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64",
          value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    pub connections: Vec<usize>,
    /// Codes sent before each verify or check run (a right-code run ends when they are used up;
    /// one that used them up early runs again with enough for its rate, up to 250,000).
    #[arg(long, default_value_t = 40_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub pool: u64,
    /// Run only the operations whose name contains this (ceilings are skipped then).
    #[arg(long)]
    pub only: Option<String>,
    /// The PostgreSQL server to benchmark on (a scratch database is created and dropped).
    #[arg(long, env = "OTPD_TEST_POSTGRES_URL", default_value = otpd_store::DEFAULT_TEST_SERVER)]
    pub postgres: String,
    /// Benchmark SQLite only (the same as `--deployments sqlite`).
    #[arg(long)]
    pub no_postgres: bool,
    /// Which deployments to benchmark: otpd on SQLite, on PostgreSQL with one node and with
    /// two, and two PostgreSQL nodes capped to a share of a core against one (see
    /// `--node-cpu-share`).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres,capped")]
    pub deployments: Vec<Section>,
    /// The share of one core each PostgreSQL node is capped at (a cgroup CPU quota) for the
    /// capped rows, which compare one node with two where the nodes are what limits; they run
    /// at the largest connection count only, and need a writable cgroup file system (root).
    /// 0 skips them. On two cores, two nodes at 0.15 each plus PostgreSQL (two to three times
    /// a node's CPU per request) and the load generator leave room to spare; at 0.2 they
    /// filled the machine for the cheapest operations, and the machine was the limit again.
    #[arg(long, default_value_t = 0.15, value_parser = share_of_a_core)]
    pub node_cpu_share: f64,
    /// Benchmark this otpd binary instead of building the workspace's (for A/B comparisons of
    /// two builds, run one after the other).
    #[arg(long, value_parser = existing_file)]
    pub otpd: Option<PathBuf>,
    /// Where the JSON results go. By default a file of the run's own in bench-results/, named
    /// by its start (UTC), and bench-results/otpd-bench.json, a copy of the latest run's.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also write every measured request of every run, as `completed_us,latency_us` lines, to
    /// one CSV file per run in this directory (to see when the slow requests happened).
    #[arg(long)]
    pub timeline: Option<PathBuf>,
    /// Count the server's instructions per request with callgrind instead of reading its
    /// speed (needs valgrind): for comparing two builds on a machine too noisy for rates. One
    /// operation (`--only`) at one `--connections` per run, on SQLite, without the ceilings;
    /// the rates it prints are valgrind's, dozens of times slower.
    #[arg(long)]
    pub instructions: bool,
    /// Give the benchmark's account a credit and an hourly limit that a run never reaches, so
    /// that sends take the path of an account with limits (its row is locked and debited).
    #[arg(long)]
    pub limited_account: bool,
    #[command(subcommand)]
    pub command: Option<Internal>,
}

/// A section of the table: where otpd keeps its state, and how many nodes run it how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Sqlite,
    Postgres,
    Capped,
}

#[derive(Subcommand)]
pub enum Internal {
    /// (internal) serve one ceiling.
    #[command(hide = true)]
    Ceiling {
        kind: ceiling::Ceiling,
        dir: PathBuf,
    },
}

/// A share of one core: 0 (no capped rows), or from 0.1 (1 ms of each 10 ms period, the least
/// quota the kernel takes) to 1.
fn share_of_a_core(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if share == 0.0 || (0.1..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err("must be 0 or from 0.1 to 1".into())
    }
}

/// A file that is there now: a mistyped `--otpd` fails before anything is built or started,
/// with its path, rather than with a bare "No such file or directory" once otpd is run.
fn existing_file(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is not a file", path.display()))
    }
}

/// A number of seconds up to an hour: more than zero, or (`zero_allowed`) zero too.
fn seconds(zero_allowed: bool) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |text| {
        let seconds: f64 = text
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?;
        let low_ok = if zero_allowed {
            seconds >= 0.0
        } else {
            seconds > 0.0
        };
        if low_ok && seconds <= 3600.0 {
            Ok(seconds)
        } else if zero_allowed {
            Err("must be from 0 to 3600 seconds".into())
        } else {
            Err("must be more than 0 and at most 3600 seconds".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    #[test]
    fn an_otpd_binary_that_is_not_there_is_refused_with_its_path() {
        let refused = Args::try_parse_from(["otpd-bench", "--otpd", "/nonexistent/otpd"])
            .err()
            .expect("refused");
        assert!(
            refused
                .to_string()
                .contains("/nonexistent/otpd is not a file"),
            "{refused}"
        );
        let directory = std::env::temp_dir();
        assert!(
            Args::try_parse_from(["otpd-bench", "--otpd", &directory.to_string_lossy()]).is_err()
        );
        let binary = std::env::current_exe().expect("the test binary");
        let accepted = Args::try_parse_from(["otpd-bench", "--otpd", &binary.to_string_lossy()])
            .expect("an existing file");
        assert_eq!(accepted.otpd, Some(binary));
    }
}
