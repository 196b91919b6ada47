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
mod cli;
mod cpu_cap;
mod deployment;
mod group_commit;
mod instructions;
mod load;
mod measure;
mod metrics_page;
mod postgres_groups;
mod report;
mod requests;
mod results_file;
mod server;
mod targets;
mod workload;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use cli::{Args, Internal, Section};
use deployment::{Deployed, Deployment, build_otpd, capped_share, deploy};
use instructions::Callgrind;
use load::MakeRequest;
use measure::measure;
use otpd_store::ScratchDatabase;
use report::{CeilingReading, Row, print_table};
use requests::Client;
use results_file::ResultsFiles;
use server::Server;
use tokio::signal::unix::{SignalKind, signal};
use workload::{Operation, codes_for, run_with_enough_codes, selected_operations, workload};

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
    let started_at = results_file::utc_now();
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
    let mut cold_starts = Vec::new();
    for (index, deployment) in deployments.iter().enumerate() {
        let store = deployment.label();
        println!("\n== otpd on {store}");
        let deployed = deploy(
            &otpd,
            work,
            deployment,
            args.limited_account,
            callgrind.as_ref(),
        )?;
        let cold_start_ms = deployed.cold_start.as_secs_f64() * 1000.0;
        println!(
            "cold start of `otpd serve` to a ready /readyz on an existing database: {cold_start_ms:.1} ms"
        );
        cold_starts.push((store.clone(), cold_start_ms));
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
            } => run_capped_scaling(&args, &deployed, &store, *share).await?,
            _ => run_operations(&args, &deployed, &store, paired.as_ref()).await?,
        });
        drop(paired);
        drop(deployed);
        if index == 0 && measure_ceilings {
            rows.extend(run_ceilings(&args, work, Reading::After).await?);
        }
    }
    drop(scratch);

    report::print_drift(&rows);
    report::print_paired_drift(&rows);
    report::print_stolen(&rows);
    report::add_ratios(&mut rows);
    print_table(&rows);
    // Under valgrind every rate, latency, CPU time and start-up is dozens of times what it is
    // natively, so a run counting instructions has no verdict on the targets.
    let assessments = if args.instructions {
        Vec::new()
    } else {
        targets::assess(&rows, &cold_starts)
    };
    targets::print(&assessments);
    let cold_start_ms: serde_json::Map<String, serde_json::Value> = cold_starts
        .into_iter()
        .map(|(store, ms)| (store, ms.into()))
        .collect();
    let report = serde_json::json!({
        "started_at": started_at,
        "arguments": std::env::args().skip(1).collect::<Vec<_>>(),
        "cold_start_ms": cold_start_ms,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rows": rows,
        "targets": assessments,
    });
    let files = ResultsFiles::for_run(args.output.as_deref(), &started_at);
    files.write(&serde_json::to_vec_pretty(&report)?)?;
    println!("\nresults written to {}", files.own.display());
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
            let run_with = |pool| async move {
                let make = workload(operation, deployed, pool).await?;
                let run = measure(
                    args,
                    &deployed.servers,
                    store,
                    operation.name(),
                    connections,
                    make,
                );
                match paired {
                    Some(ceiling) => ceiling.around(args, connections, run).await,
                    None => run.await,
                }
            };
            // The first connection count has no rate to size its codes by, and a guess from
            // the one before can fall short.
            let row = run_with_enough_codes(args, operation, pool, run_with).await?;
            previous = Some((connections, row.requests_per_second));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Two-node readings per operation in the capped comparison. Each sits between two one-node
/// readings (one, two, one, two, one): a capped reading moves by a fifth or more from one run to
/// the next (the mix's two-node ratio read 1.30 to 1.94 in five runs on 2026-12-03, with one
/// two-node reading each), so a single reading says little.
const CAPPED_TWO_NODE_READINGS: usize = 2;

/// The two-node comparison with the nodes as the scarce resource (see `cpu_cap`): `deployed`
/// (labelled `two_nodes`) is two nodes, each capped at `share` of a core, and each operation
/// runs at the largest connection count against the first node alone and both in turn,
/// starting and ending with the first alone. Each two-node row's "÷ one node" divides by the
/// mean of the one-node readings around it, as the SQLite rows' ratios do with their ceiling:
/// this machine's speed moves between windows.
async fn run_capped_scaling(
    args: &Args,
    deployed: &Deployed,
    two_nodes: &str,
    share: f64,
) -> anyhow::Result<Vec<Row>> {
    let Some(&connections) = args.connections.iter().max() else {
        return Ok(Vec::new());
    };
    let one_node = Deployment::capped_label(1, share);
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
        let one = |pool| read(1, &one_node, pool);
        let two = |pool| read(2, two_nodes, pool);
        let before = run_with_enough_codes(args, operation, args.pool, one).await?;
        let rate = before.requests_per_second;
        let mut previous = rate;
        rows.push(before);
        for _ in 0..CAPPED_TWO_NODE_READINGS {
            let two_pool = codes_for(args, operation, rate * 2.0);
            let mut both = run_with_enough_codes(args, operation, two_pool, two).await?;
            let one_pool = codes_for(args, operation, rate);
            let next = run_with_enough_codes(args, operation, one_pool, one)
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
