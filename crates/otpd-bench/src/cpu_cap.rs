//! A CPU quota for one server process, through a cgroup of its own.
//!
//! Two otpd nodes can only show how they scale when the nodes are what limits the throughput.
//! On a machine with two cores the first node, PostgreSQL and the load generator already fill
//! both, so a second node adds almost nothing whatever the design. Capping each node at a share
//! of a core makes the nodes the scarce resource again, as when each has a machine of its own,
//! while the database and the load generator keep the rest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// The quota's accounting period. Short, so that a capped node is held back in slices of a few
/// milliseconds rather than stopped for most of the default 100 ms.
const PERIOD_MICROS: u64 = 10_000;

/// Where a cgroup's CPU quota is set, for the cgroup version this machine mounts.
enum Controller {
    /// cgroup v2: one `cpu.max` file holding "quota period".
    Unified(PathBuf),
    /// cgroup v1: the `cpu` hierarchy's `cpu.cfs_period_us` and `cpu.cfs_quota_us`.
    Legacy(PathBuf),
}

impl Controller {
    fn find() -> anyhow::Result<Self> {
        let legacy = Path::new("/sys/fs/cgroup/cpu");
        if legacy.join("cpu.cfs_quota_us").exists() {
            return Ok(Self::Legacy(legacy.to_owned()));
        }
        let unified = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(unified.join("cgroup.subtree_control"))
            .context("no cgroup file system with a CPU controller")?;
        anyhow::ensure!(
            controllers.split_whitespace().any(|name| name == "cpu"),
            "the root cgroup does not hand the CPU controller to its children"
        );
        Ok(Self::Unified(unified.to_owned()))
    }

    fn root(&self) -> &Path {
        match self {
            Self::Unified(root) | Self::Legacy(root) => root,
        }
    }

    fn set_quota(&self, group: &Path, quota_micros: u64) -> std::io::Result<()> {
        match self {
            Self::Unified(_) => std::fs::write(
                group.join("cpu.max"),
                format!("{quota_micros} {PERIOD_MICROS}"),
            ),
            Self::Legacy(_) => {
                std::fs::write(group.join("cpu.cfs_period_us"), PERIOD_MICROS.to_string())?;
                std::fs::write(group.join("cpu.cfs_quota_us"), quota_micros.to_string())
            }
        }
    }
}

/// A cgroup holding one process at a share of one core; removed when dropped (after the
/// process has exited: a cgroup with a process in it cannot be removed).
pub struct CpuCap {
    controller: Controller,
    group: PathBuf,
}

impl CpuCap {
    /// Caps process `pid`, every thread of it, at `share` of one core.
    pub fn apply(pid: u32, share: f64) -> anyhow::Result<Self> {
        let cap = Self::create(&pid.to_string(), share)?;
        std::fs::write(cap.group.join("cgroup.procs"), pid.to_string())
            .context("cannot move the server into its cgroup")?;
        Ok(cap)
    }

    /// Whether a process can be capped here: creates and removes an empty cgroup.
    pub fn probe() -> anyhow::Result<()> {
        Self::create("probe", 1.0).map(drop)
    }

    /// An empty cgroup named after this run and `name`, its quota `share` of a core.
    fn create(name: &str, share: f64) -> anyhow::Result<Self> {
        let controller = Controller::find()?;
        let group = controller
            .root()
            .join(format!("otpd-bench-{}-{name}", std::process::id()));
        std::fs::create_dir(&group)
            .with_context(|| format!("cannot create the cgroup {}", group.display()))?;
        // From here on, dropping `cap` removes the cgroup.
        let cap = Self { controller, group };
        cap.set_share(share)?;
        Ok(cap)
    }

    /// Holds the process to `share` of one core from now on.
    pub fn set_share(&self, share: f64) -> anyhow::Result<()> {
        let quota = (share * PERIOD_MICROS as f64).round() as u64;
        self.controller
            .set_quota(&self.group, quota.max(1_000))
            .context("cannot set the cgroup's CPU quota")
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // The kernel empties the cgroup a moment after its last process is reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.group).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("cgroup {} is left behind", self.group.display());
    }
}
