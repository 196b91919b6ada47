//! otpd-bench: measures otpd against its own ceilings on this machine, in one run.
//!
//! The server (otpd, or a ceiling) runs pinned to core 0, this load generator to core 1. Every
//! operation runs at each connection count for a fixed window after a warm-up; the table gives
//! requests/s, p50, p99, server CPU per request, the server's peak RSS, and the ratio to each
//! ceiling at the same connection count. Each SQLite row is read between two readings of the
//! batched-commit ceiling (its ratio divides by their mean): this machine's speed moves by a
//! third from one few-second window to the next, and readings seconds apart move together far
//! more than readings minutes apart. On PostgreSQL the operations run on one node, then on two
//! sharing the database, then (with a writable cgroup file system) on two nodes capped at a
//! share of a core each, read between two one-node readings (see `cpu_cap`).
//! `cargo run --release -p otpd-bench`.

mod ceiling;
mod cpu_cap;
mod instructions;
mod load;
mod requests;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{CommandFactory, Parser, Subcommand};
use instructions::Callgrind;
use load::{MakeRequest, Measured, Phases};
use otpd_store::ScratchDatabase;
use requests::{Client, next_destination, wrong};
use serde::Serialize;
use server::{MachineTimes, Server};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(about = "Benchmark otpd against its ceilings")]
struct Args {
    /// Seconds measured per run.
    #[arg(long, default_value_t = 3.0, value_parser = seconds(false))]
    duration: f64,
    /// Seconds of warm-up before each measured window.
    #[arg(long, default_value_t = 1.0, value_parser = seconds(true))]
    warmup: f64,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64",
          value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    connections: Vec<usize>,
    /// Codes sent before each verify or check run (a right-code run ends when they are used up).
    #[arg(long, default_value_t = 40_000, value_parser = clap::value_parser!(u64).range(1..))]
    pool: u64,
    /// Run only the operations whose name contains this (ceilings are skipped then).
    #[arg(long)]
    only: Option<String>,
    /// The PostgreSQL server to benchmark on (a scratch database is created and dropped).
    #[arg(long, env = "OTPD_TEST_POSTGRES_URL", default_value = otpd_store::DEFAULT_TEST_SERVER)]
    postgres: String,
    /// Benchmark SQLite only (the same as `--deployments sqlite`).
    #[arg(long)]
    no_postgres: bool,
    /// Which deployments to benchmark: otpd on SQLite, on PostgreSQL with one node and with
    /// two, and two PostgreSQL nodes capped to a share of a core against one (see
    /// `--node-cpu-share`).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres,capped")]
    deployments: Vec<Section>,
    /// The share of one core each PostgreSQL node is capped at (a cgroup CPU quota) for the
    /// capped rows, which compare one node with two where the nodes are what limits; they run
    /// at the largest connection count only, and need a writable cgroup file system (root).
    /// 0 skips them. On two cores, two nodes at 0.15 each plus PostgreSQL (two to three times
    /// a node's CPU per request) and the load generator leave room to spare; at 0.2 they
    /// filled the machine for the cheapest operations, and the machine was the limit again.
    #[arg(long, default_value_t = 0.15, value_parser = share_of_a_core)]
    node_cpu_share: f64,
    /// Benchmark this otpd binary instead of building the workspace's (for A/B comparisons of
    /// two builds, run one after the other).
    #[arg(long)]
    otpd: Option<PathBuf>,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results/otpd-bench.json")]
    output: PathBuf,
    /// Also write every measured request of every run, as `completed_us,latency_us` lines, to
    /// one CSV file per run in this directory (to see when the slow requests happened).
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// Count the server's instructions per request with callgrind instead of reading its
    /// speed (needs valgrind): for comparing two builds on a machine too noisy for rates. One
    /// operation (`--only`) at one `--connections` per run, on SQLite, without the ceilings;
    /// the rates it prints are valgrind's, dozens of times slower.
    #[arg(long)]
    instructions: bool,
    #[command(subcommand)]
    command: Option<Internal>,
}

/// A section of the table: where otpd keeps its state, and how many nodes run it how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Sqlite,
    Postgres,
    Capped,
}

#[derive(Subcommand)]
enum Internal {
    /// (internal) serve one ceiling.
    #[command(hide = true)]
    Ceiling {
        kind: ceiling::Ceiling,
        dir: PathBuf,
    },
}

/// What a ceiling read around one row gave.
#[derive(Debug, Clone, Copy, Serialize)]
struct CeilingReading {
    requests_per_second: f64,
    p99_ms: f64,
}

#[derive(Debug, Default, Serialize)]
struct Row {
    /// The store otpd ran on (`-` for the ceilings).
    store: String,
    operation: String,
    connections: usize,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    /// What PostgreSQL's own processes spent per request (PostgreSQL rows only).
    database_cpu_us_per_request: Option<f64>,
    /// What the load generator spent per request: the rest of the machine's budget.
    client_cpu_us_per_request: f64,
    peak_rss_mib: f64,
    errors: u64,
    /// The batched-commit ceiling measured right before and right after this row (SQLite
    /// rows): `ratio_to_batched` divides by the mean of their rates.
    batched_ceiling_around: Option<[CeilingReading; 2]>,
    ratio_to_json: Option<f64>,
    ratio_to_commit_each: Option<f64>,
    ratio_to_batched: Option<f64>,
    /// Two PostgreSQL nodes' throughput over one node's, same operation and connections.
    ratio_to_one_node: Option<f64>,
    /// The one-node rates read right before and after this two-node row (capped rows):
    /// `ratio_to_one_node` divides by their mean.
    one_node_around: Option<[f64; 2]>,
    /// The share of the machine's CPU time its hypervisor gave to others during the window
    /// (steal time, in percent; absent where `/proc/stat` does not say): a row measured with
    /// more than a few percent reads slow, its ceiling too.
    steal_percent: Option<f64>,
    /// The server's instructions per request by thread, largest first (`--instructions`).
    thread_instructions_per_request: Option<Vec<f64>>,
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(only) = &args.only
        && !Operation::ALL
            .iter()
            .any(|operation| operation.name().contains(only.as_str()))
    {
        let names: Vec<&str> = Operation::ALL
            .iter()
            .map(|operation| operation.name())
            .collect();
        Args::command()
            .error(
                clap::error::ErrorKind::InvalidValue,
                format!(
                    "--only {only:?} matches no operation; they are: {}",
                    names.join(", ")
                ),
            )
            .exit();
    }
    if let Some(Internal::Ceiling { kind, dir }) = &args.command {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(ceiling::serve(*kind, 0, dir));
    }
    if std::env::var_os("OTPD_BENCH_PINNED").is_none() {
        // Run the load generator itself on the client core, as this same process (so that a
        // signal sent to it reaches the run, which then cleans up).
        let failed = Command::new("taskset")
            .args(["-c", server::CLIENT_CORE])
            .arg(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("OTPD_BENCH_PINNED", "1")
            .exec();
        return Err(failed).context("taskset is needed to pin cores (util-linux)");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(async {
            // Interrupted or told to stop, the run is dropped: its servers are killed, their
            // cgroups removed and the scratch database dropped, rather than left behind.
            let mut terminate = signal(SignalKind::terminate())?;
            tokio::select! {
                finished = bench(args) => finished,
                interrupted = tokio::signal::ctrl_c() => {
                    interrupted?;
                    anyhow::bail!("interrupted; the run's servers, cgroups, files and scratch database are gone")
                }
                _ = terminate.recv() => {
                    anyhow::bail!("terminated; the run's servers, cgroups, files and scratch database are gone")
                }
            }
        })
}

async fn bench(args: Args) -> anyhow::Result<()> {
    println!(
        "otpd-bench: server pinned to core {}, load generator to core {}",
        server::SERVER_CORE,
        server::CLIENT_CORE
    );
    let otpd = match &args.otpd {
        Some(binary) => binary.clone(),
        None => build_otpd()?,
    };
    // Removed when the run ends, interrupted or not.
    let work = tempfile::Builder::new().prefix("otpd-bench-").tempdir()?;
    let work = work.path();

    let callgrind = args
        .instructions
        .then(|| {
            instructions::check_one_row(selected_operations(&args).count(), &args.connections)?;
            Callgrind::new(work).map(Arc::new)
        })
        .transpose()?;
    // Instructions are counted on SQLite alone: the other deployments compare speeds.
    let wanted = |section: Section| {
        args.deployments.contains(&section)
            && (section == Section::Sqlite || !(args.no_postgres || args.instructions))
    };
    let mut deployments = Vec::new();
    if wanted(Section::Sqlite) {
        deployments.push(Deployment::Sqlite);
    }
    let mut scratch = None;
    if wanted(Section::Postgres) || wanted(Section::Capped) {
        match ScratchDatabase::create(&args.postgres, "bench").await {
            Ok(database) => {
                let url = database.url().to_owned();
                if wanted(Section::Postgres) {
                    for nodes in [1, 2] {
                        deployments.push(Deployment::Postgres {
                            url: url.clone(),
                            nodes,
                            cpu_share: None,
                        });
                    }
                }
                if wanted(Section::Capped) {
                    match capped_share(&args) {
                        Ok(Some(share)) => deployments.push(Deployment::Postgres {
                            url: url.clone(),
                            nodes: 2,
                            cpu_share: Some(share),
                        }),
                        Ok(None) => {}
                        Err(error) => println!("no capped PostgreSQL rows: {error:#}"),
                    }
                }
                scratch = Some(database);
            }
            Err(error) => println!(
                "PostgreSQL is not reachable ({error}): no PostgreSQL rows (scripts/ensure-postgres sets up the test server)"
            ),
        }
    }

    anyhow::ensure!(
        !deployments.is_empty(),
        "nothing to benchmark: --deployments named none that can run here"
    );

    // The ceilings are measured before and after the SQLite rows, and the ratios taken against
    // their mean: this machine's speed drifts by a third within minutes, and a ceiling measured
    // once, minutes away from the rows it divides, gave ratios off by a factor of two.
    let measure_ceilings = args.only.is_none() && !args.instructions;
    let mut rows = Vec::new();
    if measure_ceilings {
        rows.extend(run_ceilings(&args, work, Reading::Before).await?);
    }
    let mut cold_starts = serde_json::Map::new();
    for (index, deployment) in deployments.iter().enumerate() {
        let store = deployment.label();
        println!("\n== otpd on {store}");
        let deployed = deploy(&otpd, work, deployment, callgrind.as_ref())?;
        println!(
            "cold start of `otpd serve` to a ready /readyz on an existing database: {:.1} ms",
            deployed.cold_start.as_secs_f64() * 1000.0
        );
        cold_starts.insert(
            store.clone(),
            (deployed.cold_start.as_secs_f64() * 1000.0).into(),
        );
        let paired = match deployment {
            Deployment::Sqlite if !args.instructions => Some(CeilingServer::start(
                ceiling::Ceiling::SqliteBatched,
                work,
                "paired",
            )?),
            Deployment::Sqlite | Deployment::Postgres { .. } => None,
        };
        rows.extend(match deployment {
            Deployment::Postgres {
                cpu_share: Some(share),
                ..
            } => run_capped_scaling(&args, &deployed, *share).await?,
            _ => run_operations(&args, &deployed, &store, paired.as_ref()).await?,
        });
        drop(paired);
        drop(deployed);
        if index == 0 && measure_ceilings {
            rows.extend(run_ceilings(&args, work, Reading::After).await?);
        }
    }
    drop(scratch);

    // Each ceiling's readings by (operation, connections), in table order for the drift lines.
    let mut ceiling_runs: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    for row in rows.iter().filter(|row| is_ceiling(row)) {
        ceiling_runs
            .entry((row.operation.clone(), row.connections))
            .or_default()
            .push(row.requests_per_second);
    }
    print_drift(&ceiling_runs);
    print_paired_drift(&rows);
    print_stolen(&rows);
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
    print_table(&rows);
    if let Some(parent) = args.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let report = serde_json::json!({
        "cold_start_ms": cold_starts,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rows": rows,
    });
    std::fs::write(&args.output, serde_json::to_vec_pretty(&report)?)?;
    println!("\nresults written to {}", args.output.display());
    Ok(())
}

const CEILINGS: [ceiling::Ceiling; 3] = [
    ceiling::Ceiling::Json,
    ceiling::Ceiling::SqliteCommitEach,
    ceiling::Ceiling::SqliteBatched,
];
/// The ceilings' two readings, around the SQLite rows.
#[derive(Clone, Copy)]
enum Reading {
    Before,
    After,
}

impl Reading {
    fn name(self) -> &'static str {
        match self {
            Self::Before => "before",
            Self::After => "after",
        }
    }

    /// The store column of the ceilings' rows.
    fn store(self) -> &'static str {
        match self {
            Self::Before => "- (before)",
            Self::After => "- (after)",
        }
    }
}

fn is_ceiling(row: &Row) -> bool {
    row.store.starts_with('-')
}

/// Every ceiling at every connection count, each served by this binary on the server core.
async fn run_ceilings(args: &Args, work: &Path, reading: Reading) -> anyhow::Result<Vec<Row>> {
    println!("\n== ceilings, {}", reading.name());
    let mut rows = Vec::new();
    for kind in CEILINGS {
        let ceiling = CeilingServer::start(kind, work, reading.name())?;
        for &connections in &args.connections {
            rows.push(
                measure(
                    args,
                    std::slice::from_ref(&ceiling.server),
                    reading.store(),
                    kind.label(),
                    connections,
                    ceiling.make.clone(),
                )
                .await?,
            );
        }
    }
    Ok(rows)
}

/// A ceiling served by this binary on the server core, and the requests that load it.
struct CeilingServer {
    kind: ceiling::Ceiling,
    server: Server,
    make: MakeRequest,
}

impl CeilingServer {
    /// Starts `kind` with its database (if any) in a directory of `work` named after `tag`.
    fn start(kind: ceiling::Ceiling, work: &Path, tag: &str) -> anyhow::Result<Self> {
        let dir = work.join(format!("{kind:?}-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let exe = std::env::current_exe()?;
        let dir_arg = dir.to_string_lossy().into_owned();
        let name = clap::ValueEnum::to_possible_value(&kind)
            .context("name")?
            .get_name()
            .to_owned();
        let server = Server::start(
            server::SERVER_CORE,
            exe.to_str().unwrap_or_default(),
            &["ceiling", &name, &dir_arg],
            &[],
            false,
        )?;
        let client = Client::new(
            server.address.to_string(),
            String::new(),
            String::new(),
            String::new(),
        );
        let make: MakeRequest = Arc::new(move |_| Some(client.ceiling()));
        Ok(Self { kind, server, make })
    }

    /// Runs `run` (a row at `connections`) between two readings of this ceiling, and records
    /// them in the row.
    async fn around(
        &self,
        args: &Args,
        connections: usize,
        run: impl Future<Output = anyhow::Result<Row>>,
    ) -> anyhow::Result<Row> {
        let before = self.read(args, connections).await?;
        let mut row = run.await?;
        row.batched_ceiling_around = Some([before, self.read(args, connections).await?]);
        Ok(row)
    }

    /// One reading at `connections`.
    async fn read(&self, args: &Args, connections: usize) -> anyhow::Result<CeilingReading> {
        let label = format!("{} (paired)", self.kind.label());
        let row = measure(
            args,
            std::slice::from_ref(&self.server),
            "-",
            &label,
            connections,
            self.make.clone(),
        )
        .await?;
        Ok(CeilingReading {
            requests_per_second: row.requests_per_second,
            p99_ms: row.p99_ms,
        })
    }
}

/// How far the paired ceiling moved across each row it was read around.
fn print_paired_drift(rows: &[Row]) {
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

/// Steal above which a row is named after the table: the host took that share of the machine
/// during its window, and the row's rate and latency are the host's as much as otpd's.
const STOLEN_PERCENT: f64 = 5.0;

/// The rows read while the host took more than `STOLEN_PERCENT` of the machine.
fn stolen(rows: &[Row]) -> Vec<&Row> {
    rows.iter()
        .filter(|row| {
            row.steal_percent
                .is_some_and(|steal| steal > STOLEN_PERCENT)
        })
        .collect()
}

/// Names the rows read with too much steal, so that nobody reads a ratio off one of them.
fn print_stolen(rows: &[Row]) {
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

/// How far each ceiling moved between its two readings: the machine's drift during the run.
fn print_drift(runs: &BTreeMap<(String, usize), Vec<f64>>) {
    let drifts: Vec<String> = runs
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

/// Where the otpd under test keeps its state, how many nodes serve, and whether each node is
/// held to a share of a core (see `cpu_cap`).
enum Deployment {
    Sqlite,
    Postgres {
        url: String,
        nodes: usize,
        cpu_share: Option<f64>,
    },
}

impl Deployment {
    fn label(&self) -> String {
        match self {
            Self::Sqlite => "sqlite".into(),
            Self::Postgres {
                nodes, cpu_share, ..
            } => {
                let mut label = String::from("postgres");
                if *nodes > 1 {
                    label.push_str(&format!(", {nodes} nodes"));
                }
                if let Some(share) = cpu_share {
                    label.push_str(&format!(" at {:.0}% of a core each", share * 100.0));
                }
                label
            }
        }
    }

    /// The one-node deployment a several-node row is compared with: its label without the
    /// node count ("postgres, 2 nodes" is compared with "postgres").
    fn one_node_label(label: &str) -> Option<&str> {
        let (store, nodes) = label.rsplit_once(", ")?;
        nodes.strip_suffix(" nodes")?.parse::<usize>().ok()?;
        Some(store)
    }
}

/// The share each node of the capped rows gets, if they are to run and can.
fn capped_share(args: &Args) -> anyhow::Result<Option<f64>> {
    if args.node_cpu_share == 0.0 {
        return Ok(None);
    }
    cpu_cap::CpuCap::probe()?;
    Ok(Some(args.node_cpu_share))
}

/// Running otpd nodes, an account to drive them with, and the first node's SMS file.
struct Deployed {
    servers: Vec<Server>,
    client: Arc<Client>,
    sms_file: PathBuf,
    cold_start: Duration,
}

/// Creates an account and an application, then starts the nodes: the first on the server core
/// (started twice, the second start measuring a cold start on an existing database), any
/// second one on the other core, sharing the first one's database and server key.
fn deploy(
    otpd: &Path,
    work: &Path,
    deployment: &Deployment,
    callgrind: Option<&Arc<Callgrind>>,
) -> anyhow::Result<Deployed> {
    let (url, nodes, cpu_share) = match deployment {
        Deployment::Sqlite => (None, 1, None),
        Deployment::Postgres {
            url,
            nodes,
            cpu_share,
        } => (Some(url.as_str()), *nodes, *cpu_share),
    };
    let base = work.join(deployment.label().replace([' ', ','], "-"));
    let node_dir = |n: usize| base.join(format!("node-{n}"));
    let key_file = node_dir(0).join("server.key");
    let global_args = |n: usize| -> Vec<String> {
        let mut global = vec!["--data-dir".into(), node_dir(n).display().to_string()];
        if let Some(url) = url {
            global.extend(["--database-url".into(), url.to_owned()]);
        }
        if n > 0 {
            global.extend(["--server-key-file".into(), key_file.display().to_string()]);
        }
        global
    };
    let cli = |args: &[&str]| -> anyhow::Result<serde_json::Value> {
        let output = Command::new(otpd)
            .args(global_args(0))
            .args(args)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "otpd {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let account = cli(&["accounts", "create", "bench"])?;
    let key = account["access_key_id"].as_str().context("key")?.to_owned();
    let secret = account["secret_access_key"]
        .as_str()
        .context("secret")?
        .to_owned();
    let app = cli(&["apps", "create", "--account", &key, "bench"])?["application_id"]
        .as_str()
        .context("app")?
        .to_owned();
    let start_node = |n: usize, core: &str| -> anyhow::Result<(Server, Duration)> {
        let since = Instant::now();
        let sms = format!("file:{}", node_dir(n).join("sms.jsonl").display());
        let mut args = global_args(n);
        args.extend(["serve", "--listen", "127.0.0.1:0", "--sms", &sms].map(String::from));
        let otpd = otpd.to_str().unwrap_or_default();
        let (program, args) = match callgrind {
            Some(callgrind) => callgrind.wrap(otpd, args),
            None => (otpd.to_owned(), args),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Server::start(
            core,
            &program,
            &args,
            &[("OTPD_LOG", "warn,otpd=info")],
            true,
        )?;
        if let Some(callgrind) = callgrind {
            server.counted_by(Arc::clone(callgrind));
        }
        let ready = server::wait_ready(server.address, since)?;
        if let Some(share) = cpu_share {
            server.cap_cpu(share)?;
        }
        Ok((server, ready))
    };
    drop(start_node(0, server::SERVER_CORE)?);
    let (first, cold_start) = start_node(0, server::SERVER_CORE)?;
    let client = Client::new(first.address.to_string(), key, secret, app);
    let mut servers = vec![first];
    for n in 1..nodes {
        servers.push(start_node(n, server::CLIENT_CORE)?.0);
    }
    Ok(Deployed {
        servers,
        client,
        sms_file: node_dir(0).join("sms.jsonl"),
        cold_start,
    })
}

/// The operations measured, in table order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    PinpointSend,
    PinpointVerifyRight,
    PinpointVerifyWrong,
    AmmSend,
    AmmCheck,
    Mix,
}

impl Operation {
    const ALL: [Operation; 6] = [
        Self::PinpointSend,
        Self::PinpointVerifyRight,
        Self::PinpointVerifyWrong,
        Self::AmmSend,
        Self::AmmCheck,
        Self::Mix,
    ];

    /// Prepared codes one request uses up.
    fn codes_per_request(self) -> f64 {
        match self {
            Self::PinpointSend | Self::AmmSend => 0.0,
            Self::PinpointVerifyRight | Self::AmmCheck => 1.0,
            Self::PinpointVerifyWrong => 1.0 / PINPOINT_WRONG_PER_CODE as f64,
            Self::Mix => 6.0 / 11.0 / AMM_WRONG_PER_CODE as f64,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::PinpointSend => "pinpoint send",
            Self::PinpointVerifyRight => "pinpoint verify (right code)",
            Self::PinpointVerifyWrong => "pinpoint verify (wrong code)",
            Self::AmmSend => "amm send",
            Self::AmmCheck => "amm check",
            Self::Mix => "mix (1 send : 1.2 checks)",
        }
    }
}

/// The most codes sent before one run (the send rate makes more take long to prepare).
const MAX_CODES_PER_RUN: u64 = 250_000;

/// Wrong guesses one prepared code takes while staying live: Pinpoint codes are sent with
/// `AllowedAttempts` 5 and amm codes with `max_retry` 20.
const PINPOINT_WRONG_PER_CODE: usize = 4;
const AMM_WRONG_PER_CODE: usize = 19;

/// The code the `n`th guess of a run uses, when each code takes `per_code` guesses: the codes
/// are taken in turn, so the guesses of one code lie a whole pool apart (consecutive requests
/// run at once on different connections, and real users do not race their own typos).
fn code_for_guess<T>(codes: &[T], n: usize, per_code: usize) -> Option<&T> {
    if n >= codes.len().saturating_mul(per_code) {
        return None;
    }
    codes.get(n % codes.len())
}

/// Every operation at every connection count against `deployed`. Each verify or check run
/// gets codes sent just before it, so that every request meets a live code (a code verified
/// or killed earlier would be a cheaper "not found"); a run ends early if they run out.
async fn run_operations(
    args: &Args,
    deployed: &Deployed,
    store: &str,
    paired: Option<&CeilingServer>,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for operation in selected_operations(args) {
        // Enough codes for the warm-up and the window at the rate the previous (smaller)
        // connection count reached, scaled by the step in connections, with room to spare.
        // From 1 to 16 connections verifies went 8.3-8.4 times as fast (2026-12-03, both
        // machines); a cap of 6 left the 16-connection right-code run without codes before
        // the end of its window.
        let mut pool = args.pool;
        let mut previous: Option<(usize, f64)> = None;
        for &connections in &args.connections {
            if let Some((previous_connections, rate)) = previous {
                let step = (connections as f64 / previous_connections as f64).clamp(1.0, 10.0);
                pool = codes_for(args, operation, rate * step);
            }
            let make = workload(operation, deployed, pool).await?;
            let run = measure(
                args,
                &deployed.servers,
                store,
                operation.name(),
                connections,
                make,
            );
            let row = match paired {
                Some(ceiling) => ceiling.around(args, connections, run).await?,
                None => run.await?,
            };
            previous = Some((connections, row.requests_per_second));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The operations `--only` selects, in table order.
fn selected_operations(args: &Args) -> impl Iterator<Item = Operation> + '_ {
    Operation::ALL.into_iter().filter(|operation| {
        args.only
            .as_deref()
            .is_none_or(|only| operation.name().contains(only))
    })
}

/// Codes for one run of `operation` expected to go at `rate` requests a second: its warm-up
/// and window with a fifth to spare, and never fewer than `--pool`.
fn codes_for(args: &Args, operation: Operation, rate: f64) -> u64 {
    let requests = rate * (args.warmup + args.duration) * 1.2;
    ((requests * operation.codes_per_request()) as u64).clamp(args.pool, MAX_CODES_PER_RUN)
}

/// Two-node readings per operation in the capped comparison. Each sits between two one-node
/// readings (one, two, one, two, one): a capped reading moves by a fifth or more from one run to
/// the next (the mix's two-node ratio read 1.30 to 1.94 in five runs on 2026-12-03, with one
/// two-node reading each), so a single reading says little.
const CAPPED_TWO_NODE_READINGS: usize = 2;

/// The two-node comparison with the nodes as the scarce resource (see `cpu_cap`): `deployed`
/// is two nodes, each capped at `share` of a core, and each operation runs at the largest
/// connection count against the first node alone and both in turn, starting and ending with
/// the first alone. Each two-node row's "÷ one node" divides by the mean of the one-node
/// readings around it, as the SQLite rows' ratios do with their ceiling: this machine's speed
/// moves between windows.
async fn run_capped_scaling(
    args: &Args,
    deployed: &Deployed,
    share: f64,
) -> anyhow::Result<Vec<Row>> {
    let Some(&connections) = args.connections.iter().max() else {
        return Ok(Vec::new());
    };
    let percent = share * 100.0;
    let one_node = format!("postgres, 1 node at {percent:.0}% of a core");
    let two_nodes = format!("postgres, 2 nodes at {percent:.0}% of a core each");
    let first = &deployed.servers[0];
    let mut rows = Vec::new();
    for operation in selected_operations(args) {
        let read = |nodes: usize, store: &str, pool: u64| {
            let store = store.to_owned();
            async move {
                // The codes a reading needs are sent through the first node at a whole core:
                // that is not measured, and held to its share it took half a minute a reading.
                first.set_cpu_share(1.0)?;
                let prepared = workload(operation, deployed, pool).await;
                first.set_cpu_share(share)?;
                let make = prepared?;
                let servers = &deployed.servers[..nodes];
                measure(args, servers, &store, operation.name(), connections, make).await
            }
        };
        let before = read(1, &one_node, args.pool).await?;
        let rate = before.requests_per_second;
        let mut previous = rate;
        rows.push(before);
        for _ in 0..CAPPED_TWO_NODE_READINGS {
            let mut both = read(2, &two_nodes, codes_for(args, operation, rate * 2.0)).await?;
            let next = read(1, &one_node, codes_for(args, operation, rate))
                .await?
                .requests_per_second;
            let around = [previous, next];
            both.ratio_to_one_node =
                Some(both.requests_per_second / ((around[0] + around[1]) / 2.0));
            both.one_node_around = Some(around);
            rows.push(both);
            previous = next;
        }
    }
    Ok(rows)
}

/// The requests of one run of `operation` against `deployed`; a verify or check run gets
/// `pool` codes sent just before it.
async fn workload(
    operation: Operation,
    deployed: &Deployed,
    pool: u64,
) -> anyhow::Result<MakeRequest> {
    let client = &deployed.client;
    let first = &deployed.servers[0];
    let c = client.clone();
    Ok(match operation {
        Operation::PinpointSend => {
            Arc::new(move |_| Some(c.pinpoint_send(&next_destination(), None)))
        }
        Operation::AmmSend => Arc::new(move |_| Some(c.amm_send(&next_destination(), None))),
        Operation::PinpointVerifyRight | Operation::PinpointVerifyWrong => {
            let codes = prepare_pinpoint(first, client, &deployed.sms_file, pool).await?;
            let right = operation == Operation::PinpointVerifyRight;
            let per_code = if right { 1 } else { PINPOINT_WRONG_PER_CODE };
            Arc::new(move |n| {
                let (to, code) = code_for_guess(&codes, usize::try_from(n).ok()?, per_code)?;
                Some(if right {
                    c.pinpoint_verify(to, code)
                } else {
                    c.pinpoint_verify(to, &wrong(code))
                })
            })
        }
        Operation::AmmCheck => {
            let codes = prepare_amm(first, client, &deployed.sms_file, pool).await?;
            Arc::new(move |n| {
                let (id, code) = codes.get(usize::try_from(n).ok()?)?;
                Some(c.amm_check(id, code))
            })
        }
        Operation::Mix => {
            let codes = prepare_amm(first, client, &deployed.sms_file, pool).await?;
            Arc::new(move |n| {
                // 5 of every 11 requests send, 6 check (a wrong code: the user's typo).
                if n % 11 < 5 {
                    return Some(c.amm_send(&next_destination(), None));
                }
                let check = usize::try_from(n / 11 * 6 + n % 11 - 5).ok()?;
                let (id, code) = code_for_guess(&codes, check, AMM_WRONG_PER_CODE)?;
                Some(c.amm_check(id, &wrong(code)))
            })
        }
    })
}

/// Builds the release otpd next to this binary and returns its path.
fn build_otpd() -> anyhow::Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "otpd", "--quiet"])
        .status()?;
    anyhow::ensure!(status.success(), "building otpd failed");
    let exe = std::env::current_exe()?;
    let otpd = exe.parent().context("no parent")?.join("otpd");
    anyhow::ensure!(otpd.exists(), "{} is missing", otpd.display());
    Ok(otpd)
}

/// Writes one run's requests as CSV, named after the run.
fn write_timeline(
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

/// One run against `servers` (every node of a deployment): CPU is their sum, RSS their peak.
async fn measure(
    args: &Args,
    servers: &[Server],
    store: &str,
    operation: &str,
    connections: usize,
    make: MakeRequest,
) -> anyhow::Result<Row> {
    let addresses: Vec<_> = servers.iter().map(|server| server.address).collect();
    let cpu_time = || servers.iter().map(Server::cpu_time).sum::<Duration>();
    let now = Instant::now();
    let phases = Phases {
        measure_from: now + Duration::from_secs_f64(args.warmup),
        measure_until: now + Duration::from_secs_f64(args.warmup + args.duration),
    };
    let run = tokio::spawn(async move { load::run(&addresses, connections, phases, make).await });
    tokio::time::sleep_until(phases.measure_from.into()).await;
    let counting = servers
        .iter()
        .filter_map(Server::start_counting)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let before = (
        cpu_time(),
        server::postgres_cpu_time(),
        server::own_cpu_time(),
        MachineTimes::read(),
    );
    tokio::time::sleep_until(phases.measure_until.into()).await;
    let after = (
        cpu_time(),
        server::postgres_cpu_time(),
        server::own_cpu_time(),
        MachineTimes::read(),
    );
    let counted = counting
        .into_iter()
        .map(instructions::Counting::finish)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let measured: Measured = run.await??;
    let planned = phases.window();
    if measured.window < planned.mul_f64(0.9) {
        // Only a run of prepared codes ends early; the figures then cover a short window.
        println!(
            "  note: {operation} at {connections} connections used up its prepared codes {:.1} s into its {:.1} s window; --pool raises them",
            measured.window.as_secs_f64(),
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
        cpu_us_per_request: per_request(after.0.saturating_sub(before.0)),
        database_cpu_us_per_request: (store.starts_with("postgres"))
            .then(|| per_request(after.1.saturating_sub(before.1))),
        client_cpu_us_per_request: per_request(after.2.saturating_sub(before.2)),
        peak_rss_mib: servers.iter().map(Server::peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        errors: measured.errors,
        batched_ceiling_around: None,
        ratio_to_json: None,
        ratio_to_commit_each: None,
        ratio_to_batched: None,
        ratio_to_one_node: None,
        one_node_around: None,
        steal_percent: before
            .3
            .zip(after.3)
            .map(|(before, after)| after.steal_percent_since(&before)),
        thread_instructions_per_request: per_request_by_thread(&counted),
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

/// Sends `count` Pinpoint codes and reads them back from the file sink: (destination, code).
async fn prepare_pinpoint(
    server: &Server,
    client: &Arc<Client>,
    sms_file: &Path,
    count: u64,
) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let before = file_length(sms_file);
    let c = client.clone();
    load::collect(
        server.address,
        16,
        count,
        Arc::new(move |_| Some(c.pinpoint_send(&next_destination(), Some(5)))),
    )
    .await?;
    let codes = sms_lines(sms_file, before)?
        .into_iter()
        .filter_map(|(to, text)| Some((to.trim_start_matches('+').to_owned(), code_in(&text)?)))
        .collect();
    Ok(Arc::new(codes))
}

/// Sends `count` amm codes: (verify_id, code).
async fn prepare_amm(
    server: &Server,
    client: &Arc<Client>,
    sms_file: &Path,
    count: u64,
) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let before = file_length(sms_file);
    let destinations: Arc<Vec<String>> = Arc::new((0..count).map(|_| next_destination()).collect());
    let (c, d) = (client.clone(), destinations.clone());
    let bodies = load::collect(
        server.address,
        16,
        count,
        Arc::new(move |n| Some(c.amm_send(&d[n as usize], Some(20)))),
    )
    .await?;
    let code_by_destination: HashMap<String, String> = sms_lines(sms_file, before)?
        .into_iter()
        .filter_map(|(to, text)| Some((to.trim_start_matches('+').to_owned(), code_in(&text)?)))
        .collect();
    let mut codes = Vec::with_capacity(bodies.len());
    for (n, body) in bodies {
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        let id = answer["verify_id"]
            .as_str()
            .context("verify_id")?
            .to_owned();
        if let Some(code) = code_by_destination.get(&destinations[n as usize]) {
            codes.push((id, code.clone()));
        }
    }
    Ok(Arc::new(codes))
}

fn file_length(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

/// (to, text) of each message the file sink wrote after byte `offset`.
fn sms_lines(path: &Path, offset: u64) -> anyhow::Result<Vec<(String, String)>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_string(&mut text)?;
    }
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)?;
            Ok((
                value["to"].as_str().unwrap_or_default().to_owned(),
                value["text"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn code_in(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|word| (4..=8).contains(&word.len()))
        .map(str::to_owned)
}

fn print_table(rows: &[Row]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nodes_compare_with_one_node() {
        let deployment = |nodes, cpu_share| Deployment::Postgres {
            url: String::new(),
            nodes,
            cpu_share,
        };
        let labels: Vec<String> = [
            deployment(1, None),
            deployment(2, None),
            deployment(2, Some(0.2)),
        ]
        .iter()
        .map(Deployment::label)
        .collect();
        assert_eq!(
            labels,
            [
                "postgres",
                "postgres, 2 nodes",
                "postgres, 2 nodes at 20% of a core each"
            ]
        );
        assert_eq!(
            Deployment::one_node_label("postgres, 2 nodes"),
            Some("postgres")
        );
        for alone in [
            "postgres",
            "sqlite",
            "postgres, 2 nodes at 20% of a core each",
        ] {
            assert_eq!(Deployment::one_node_label(alone), None, "{alone}");
        }
    }

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

    #[test]
    fn guesses_take_the_codes_in_turn_and_stop_when_each_had_its_share() {
        let codes = ["a", "b", "c"];
        let used: Vec<_> = (0..7).map(|n| code_for_guess(&codes, n, 2)).collect();
        assert_eq!(
            used,
            [
                Some(&"a"),
                Some(&"b"),
                Some(&"c"),
                Some(&"a"),
                Some(&"b"),
                Some(&"c"),
                None
            ]
        );
        assert_eq!(code_for_guess::<&str>(&[], 0, 4), None);
    }
}
