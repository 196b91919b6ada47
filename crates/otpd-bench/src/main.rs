//! otpd-bench: measures otpd against its own ceilings on this machine, in one run.
//!
//! The server (otpd, or a ceiling) runs pinned to core 0, this load generator to core 1. Every
//! operation runs at each connection count for a fixed window after a warm-up; the table gives
//! requests/s, p50, p99, server CPU per request, the server's peak RSS, and the ratio to each
//! ceiling at the same connection count. `cargo run --release -p otpd-bench`.

mod ceiling;
mod load;
mod requests;
mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use load::{MakeRequest, Measured, Phases};
use requests::{Client, next_destination, wrong};
use serde::Serialize;
use server::Server;

#[derive(Parser)]
#[command(about = "Benchmark otpd against its ceilings")]
struct Args {
    /// Seconds measured per run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of warm-up before each measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    connections: Vec<usize>,
    /// Codes prepared per dialect for the verify and check runs.
    #[arg(long, default_value_t = 30_000)]
    pool: u64,
    /// Run only the operations whose name contains this (ceilings are skipped then).
    #[arg(long)]
    only: Option<String>,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results/otpd-bench.json")]
    output: PathBuf,
    #[command(subcommand)]
    command: Option<Internal>,
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

#[derive(Debug, Serialize)]
struct Row {
    operation: String,
    connections: usize,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    peak_rss_mib: f64,
    errors: u64,
    ratio_to_json: Option<f64>,
    ratio_to_commit_each: Option<f64>,
    ratio_to_batched: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Internal::Ceiling { kind, dir }) = &args.command {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(ceiling::serve(*kind, 0, dir));
    }
    if std::env::var_os("OTPD_BENCH_PINNED").is_none() {
        // Run the load generator itself on the client core.
        let status = Command::new("taskset")
            .args(["-c", server::CLIENT_CORE])
            .arg(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("OTPD_BENCH_PINNED", "1")
            .status()
            .context("taskset is needed to pin cores (util-linux)")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    println!(
        "otpd-bench: server pinned to core {}, load generator to core {}",
        server::SERVER_CORE,
        server::CLIENT_CORE
    );
    let otpd = build_otpd()?;
    let work = std::env::temp_dir().join(format!("otpd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let data_dir = work.join("data");
    let data_arg = data_dir.to_string_lossy().into_owned();
    let cli = |args: &[&str]| -> anyhow::Result<serde_json::Value> {
        let output = Command::new(&otpd)
            .arg("--data-dir")
            .arg(&data_arg)
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
    let sms_file = work.join("sms.jsonl");
    let serve_args = [
        "--data-dir",
        &data_arg,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--sms",
    ];
    let sms_arg = format!("file:{}", sms_file.display());
    let start_otpd = || -> anyhow::Result<(Server, Duration)> {
        let since = Instant::now();
        let mut all: Vec<&str> = serve_args.to_vec();
        all.push(&sms_arg);
        let server = Server::start(
            otpd.to_str().unwrap_or_default(),
            &all,
            &[("OTPD_LOG", "warn,otpd=info")],
            true,
        )?;
        let ready = server::wait_ready(server.address, since)?;
        Ok((server, ready))
    };
    // The first start creates the database; the second measures a cold start on it.
    drop(start_otpd()?);
    let (otpd_server, cold_start) = start_otpd()?;
    println!(
        "cold start of `otpd serve` to a ready /readyz on an existing data directory: {:.1} ms",
        cold_start.as_secs_f64() * 1000.0
    );
    let client = Client::new(otpd_server.address.to_string(), key, secret, app);

    println!("preparing {} codes per dialect...", args.pool);
    let pinpoint_codes = prepare_pinpoint(&otpd_server, &client, &sms_file, args.pool).await?;
    let amm_codes = prepare_amm(&otpd_server, &client, &sms_file, args.pool).await?;

    let mut rows = Vec::new();
    let operations: Vec<(&str, MakeRequest)> = vec![
        ("pinpoint send", {
            let c = client.clone();
            Arc::new(move |_| c.pinpoint_send(&next_destination()))
        }),
        ("pinpoint verify (right code)", {
            let (c, codes) = (client.clone(), pinpoint_codes.clone());
            Arc::new(move |n| {
                let (to, code) = &codes[(n % codes.len() as u64) as usize];
                c.pinpoint_verify(to, code)
            })
        }),
        ("pinpoint verify (wrong code)", {
            let (c, codes) = (client.clone(), pinpoint_codes.clone());
            Arc::new(move |n| {
                let (to, code) = &codes[codes.len() - 1 - (n % codes.len() as u64) as usize];
                c.pinpoint_verify(to, &wrong(code))
            })
        }),
        ("amm send", {
            let c = client.clone();
            Arc::new(move |_| c.amm_send(&next_destination()))
        }),
        ("amm check", {
            let (c, codes) = (client.clone(), amm_codes.clone());
            Arc::new(move |n| {
                let (id, code) = &codes[(n % codes.len() as u64) as usize];
                c.amm_check(id, code)
            })
        }),
        ("mix (1 send : 1.2 checks)", {
            let (c, codes) = (client.clone(), amm_codes.clone());
            Arc::new(move |n| {
                // 5 of every 11 requests send, 6 check.
                if n % 11 < 5 {
                    c.amm_send(&next_destination())
                } else {
                    let (id, code) = &codes[codes.len() - 1 - (n % codes.len() as u64) as usize];
                    c.amm_check(id, &wrong(code))
                }
            })
        }),
    ];
    let selected = |name: &str| args.only.as_deref().is_none_or(|only| name.contains(only));
    for (name, make) in operations.iter().filter(|(name, _)| selected(name)) {
        for &connections in &args.connections {
            rows.push(measure(&args, &otpd_server, name, connections, make.clone()).await?);
        }
    }
    drop(otpd_server);

    let ceilings = [
        ceiling::Ceiling::Json,
        ceiling::Ceiling::SqliteCommitEach,
        ceiling::Ceiling::SqliteBatched,
    ];
    let mut ceiling_rows = HashMap::new();
    for kind in ceilings.into_iter().filter(|_| args.only.is_none()) {
        let dir = work.join(format!("{kind:?}"));
        std::fs::create_dir_all(&dir)?;
        let exe = std::env::current_exe()?;
        let dir_arg = dir.to_string_lossy().into_owned();
        let name = clap::ValueEnum::to_possible_value(&kind)
            .context("name")?
            .get_name()
            .to_owned();
        let server = Server::start(
            exe.to_str().unwrap_or_default(),
            &["ceiling", &name, &dir_arg],
            &[],
            false,
        )?;
        let ceiling_client = Client::new(
            server.address.to_string(),
            String::new(),
            String::new(),
            String::new(),
        );
        let make: MakeRequest = Arc::new(move |_| ceiling_client.ceiling());
        for &connections in &args.connections {
            let row = measure(&args, &server, kind.label(), connections, make.clone()).await?;
            ceiling_rows.insert((kind, connections), row.requests_per_second);
            rows.push(row);
        }
    }
    for row in &mut rows {
        if row.operation.starts_with("ceiling") {
            continue;
        }
        let ratio = |kind| {
            ceiling_rows
                .get(&(kind, row.connections))
                .map(|base: &f64| row.requests_per_second / base)
        };
        row.ratio_to_json = ratio(ceiling::Ceiling::Json);
        row.ratio_to_commit_each = ratio(ceiling::Ceiling::SqliteCommitEach);
        row.ratio_to_batched = ratio(ceiling::Ceiling::SqliteBatched);
    }
    print_table(&rows);
    if let Some(parent) = args.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let report = serde_json::json!({
        "cold_start_ms": cold_start.as_secs_f64() * 1000.0,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rows": rows,
    });
    std::fs::write(&args.output, serde_json::to_vec_pretty(&report)?)?;
    println!("\nresults written to {}", args.output.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
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

async fn measure(
    args: &Args,
    server: &Server,
    operation: &str,
    connections: usize,
    make: MakeRequest,
) -> anyhow::Result<Row> {
    let now = Instant::now();
    let phases = Phases {
        measure_from: now + Duration::from_secs_f64(args.warmup),
        measure_until: now + Duration::from_secs_f64(args.warmup + args.duration),
    };
    let run = tokio::spawn(load::run(server.address, connections, phases, make));
    tokio::time::sleep_until(phases.measure_from.into()).await;
    let cpu_before = server.cpu_time();
    tokio::time::sleep_until(phases.measure_until.into()).await;
    let cpu_after = server.cpu_time();
    let measured: Measured = run.await??;
    let cpu = cpu_after.saturating_sub(cpu_before);
    let row = Row {
        operation: operation.to_owned(),
        connections,
        requests_per_second: measured.per_second(),
        p50_ms: measured.percentile_ms(0.50),
        p99_ms: measured.percentile_ms(0.99),
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / measured.requests.max(1) as f64,
        peak_rss_mib: server.peak_rss_kib() as f64 / 1024.0,
        errors: measured.errors,
        ratio_to_json: None,
        ratio_to_commit_each: None,
        ratio_to_batched: None,
    };
    println!(
        "  {:<40} {:>3} conns {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {:>6.1} µs CPU/req{}",
        row.operation,
        row.connections,
        row.requests_per_second,
        row.p50_ms,
        row.p99_ms,
        row.cpu_us_per_request,
        if row.errors > 0 {
            format!("  ({} errors)", row.errors)
        } else {
            String::new()
        }
    );
    Ok(row)
}

/// Sends `count` Pinpoint codes and reads them back from the file sink: (destination, code).
async fn prepare_pinpoint(
    server: &Server,
    client: &Arc<Client>,
    sms_file: &Path,
    count: u64,
) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let before = sms_lines(sms_file)?.len();
    let c = client.clone();
    load::collect(
        server.address,
        16,
        count,
        Arc::new(move |_| c.pinpoint_send(&next_destination())),
    )
    .await?;
    let codes = sms_lines(sms_file)?
        .into_iter()
        .skip(before)
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
    let before = sms_lines(sms_file)?.len();
    let destinations: Arc<Vec<String>> = Arc::new((0..count).map(|_| next_destination()).collect());
    let (c, d) = (client.clone(), destinations.clone());
    let bodies = load::collect(
        server.address,
        16,
        count,
        Arc::new(move |n| c.amm_send(&d[n as usize])),
    )
    .await?;
    let code_by_destination: HashMap<String, String> = sms_lines(sms_file)?
        .into_iter()
        .skip(before)
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

fn sms_lines(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
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
        "\n| operation | conns | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | ÷ JSON | ÷ commit-each | ÷ batched |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} | {} |",
            row.operation,
            row.connections,
            row.requests_per_second,
            row.p50_ms,
            row.p99_ms,
            row.cpu_us_per_request,
            row.peak_rss_mib,
            ratio(row.ratio_to_json),
            ratio(row.ratio_to_commit_each),
            ratio(row.ratio_to_batched),
        );
    }
}
