//! The otpd under test: where it keeps its state, how many nodes serve it, and starting them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::Args;
use crate::cpu_cap;
use crate::instructions::Callgrind;
use crate::requests::Client;
use crate::server::{self, Server};

/// Where the otpd under test keeps its state, how many nodes serve, and whether each node is
/// held to a share of a core (see `cpu_cap`).
pub enum Deployment {
    Sqlite,
    Postgres {
        url: String,
        nodes: usize,
        cpu_share: Option<f64>,
    },
}

impl Deployment {
    pub fn label(&self) -> String {
        match self {
            Self::Sqlite => "sqlite".into(),
            Self::Postgres {
                nodes,
                cpu_share: Some(share),
                ..
            } => Self::capped_label(*nodes, *share),
            Self::Postgres { nodes: 1, .. } => "postgres".into(),
            Self::Postgres { nodes, .. } => format!("postgres, {nodes} nodes"),
        }
    }

    /// The label of `nodes` PostgreSQL nodes each held to `share` of a core; one such node is
    /// what the capped rows compare two with.
    pub fn capped_label(nodes: usize, share: f64) -> String {
        let percent = share * 100.0;
        if nodes == 1 {
            format!("postgres, 1 node at {percent:.0}% of a core")
        } else {
            format!("postgres, {nodes} nodes at {percent:.0}% of a core each")
        }
    }

    /// The one-node deployment a several-node row is compared with: its label without the
    /// node count ("postgres, 2 nodes" is compared with "postgres").
    pub fn one_node_label(label: &str) -> Option<&str> {
        let (store, nodes) = label.rsplit_once(", ")?;
        nodes.strip_suffix(" nodes")?.parse::<usize>().ok()?;
        Some(store)
    }
}

/// The share each node of the capped rows gets, if they are to run and can.
pub fn capped_share(args: &Args) -> anyhow::Result<Option<f64>> {
    if args.node_cpu_share == 0.0 {
        return Ok(None);
    }
    cpu_cap::CpuCap::probe()?;
    Ok(Some(args.node_cpu_share))
}

/// Running otpd nodes, an account to drive them with, and the first node's SMS file.
pub struct Deployed {
    pub servers: Vec<Server>,
    pub client: Arc<Client>,
    pub sms_file: PathBuf,
    pub cold_start: Duration,
}

/// Credit (SMS parts) of a `--limited-account`: more than any run sends.
const LIMITED_CREDITS: &str = "1000000000000";
/// Hourly limit of a `--limited-account`: the most otpd takes, more than a run sends.
const LIMITED_SMS_PER_HOUR: &str = "10000000";

/// Creates an account (with limits it never reaches, if `limited`) and an application, then
/// starts the nodes: the first on the server core (started twice, the second start measuring a
/// cold start on an existing database), any second one on the other core, sharing the first
/// one's database and server key.
pub fn deploy(
    otpd: &Path,
    work: &Path,
    deployment: &Deployment,
    limited: bool,
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
    let mut create = vec!["accounts", "create", "bench"];
    if limited {
        create.extend([
            "--credits",
            LIMITED_CREDITS,
            "--max-sms-per-hour",
            LIMITED_SMS_PER_HOUR,
        ]);
    }
    let account = cli(&create)?;
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

/// Builds the release otpd in a target directory of its own, beside this binary's, and returns
/// its path. Cargo picks a dependency's features from the packages a build names, so `-p otpd`
/// and `-p otpd-bench` compile tokio, serde, hyper-util and others with different features; in
/// one target directory each build then replaced the other's, and every run of the benchmark
/// recompiled otpd's crates and then its own (its own alone took two minutes on two cores).
/// Apart, each stays built.
pub fn build_otpd() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().context("no parent")?;
    let target_dir = profile_dir.parent().context("no target directory")?;
    let server_target = target_dir.join("otpd-bench-server");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "otpd", "--quiet"])
        .arg("--target-dir")
        .arg(&server_target)
        .status()?;
    anyhow::ensure!(status.success(), "building otpd failed");
    let otpd = server_target.join("release").join("otpd");
    anyhow::ensure!(otpd.exists(), "{} is missing", otpd.display());
    Ok(otpd)
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
            Deployment::capped_label(1, 0.15),
            "postgres, 1 node at 15% of a core"
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
}
