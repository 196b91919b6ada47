//! Child servers pinned to the server core, and what the kernel says they used.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cpu_cap::CpuCap;
use crate::instructions::{Callgrind, Counting};

pub const SERVER_CORE: &str = "0";
pub const CLIENT_CORE: &str = "1";

pub struct Server {
    child: Child,
    pub address: SocketAddr,
    /// Dropped after the child is killed: its cgroup can only go once the child has.
    cap: Option<CpuCap>,
    /// Set when the server runs under callgrind (`--instructions`).
    callgrind: Option<Arc<Callgrind>>,
}

impl Server {
    /// Starts `program args` on `core`; `port_from` finds the port in a line of its output
    /// (stdout for the ceilings, stderr for otpd's log).
    pub fn start(
        core: &str,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        port_from_stderr: bool,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new("taskset");
        command.args(["-c", core, program]).args(args);
        for (name, value) in envs {
            command.env(name, value);
        }
        command.env("NO_COLOR", "1").stdin(Stdio::null());
        if port_from_stderr {
            command.stderr(Stdio::piped()).stdout(Stdio::null());
        } else {
            command.stdout(Stdio::piped()).stderr(Stdio::null());
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let output: Box<dyn std::io::Read + Send> = if port_from_stderr {
            Box::new(child.stderr.take().context("no stderr")?)
        } else {
            Box::new(child.stdout.take().context("no stdout")?)
        };
        let mut lines = BufReader::new(output).lines();
        let port = loop {
            let line = lines
                .next()
                .context("the server exited before listening")??;
            if let Some(port) = find_port(&line) {
                break port;
            }
        };
        // Keep draining the output so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            cap: None,
            callgrind: None,
        })
    }

    /// Says the server was started under `callgrind` (see `Callgrind::wrap`).
    pub fn counted_by(&mut self, callgrind: Arc<Callgrind>) {
        self.callgrind = Some(callgrind);
    }

    /// Switches instruction counting on, when the server runs under callgrind.
    pub fn start_counting(&self) -> Option<anyhow::Result<Counting<'_>>> {
        self.callgrind
            .as_ref()
            .map(|callgrind| callgrind.start(self.pid()))
    }

    /// Holds the server, from now on, to `share` of one core (see `cpu_cap`).
    pub fn cap_cpu(&mut self, share: f64) -> anyhow::Result<()> {
        self.cap = Some(CpuCap::apply(self.pid(), share)?);
        Ok(())
    }

    /// Changes the share of a core a capped server is held to (see `cap_cpu`).
    pub fn set_cpu_share(&self, share: f64) -> anyhow::Result<()> {
        self.cap
            .as_ref()
            .context("the server has no CPU cap")?
            .set_share(share)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid()).unwrap_or_default()
    }

    /// CPU time so far of each of the server's threads, by name (`main` for the main thread,
    /// which runs the requests on one core), from the scheduler's nanosecond counts. Threads of
    /// one name (a pool's) are summed.
    pub fn thread_cpu_times(&self) -> BTreeMap<String, Duration> {
        let pid = self.pid();
        let mut times = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return times;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let read = |file: &str| std::fs::read_to_string(path.join(file)).ok();
            let Some(nanos) = read("schedstat").as_deref().and_then(schedstat_nanos) else {
                continue;
            };
            let name = if task.file_name().to_str() == Some(&pid.to_string()) {
                "main".to_owned()
            } else {
                read("comm").map_or_else(String::new, |name| name.trim().to_owned())
            };
            *times.entry(name).or_default() += Duration::from_nanos(nanos);
        }
        times
    }

    /// How often the main thread, which runs the requests, has been switched out so far;
    /// `None` when its status cannot be read.
    pub fn request_thread_switches(&self) -> Option<Switches> {
        let pid = self.pid();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status"))
            .ok()
            .map(|status| Switches::parse(&status))
    }

    /// Peak resident set size in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|status| status_number(&status, "VmHWM:"))
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_port(line: &str) -> Option<u16> {
    if let Some(rest) = line.strip_prefix("listening ") {
        return rest.trim().parse().ok();
    }
    let at = line.find("http://127.0.0.1:")?;
    let digits: String = line[at + 17..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// CPU time so far of every PostgreSQL server process on the machine (the postmaster and its
/// backends), so that a run can say what the database spent per request. Backends that exit
/// during a run take their time with them; the pools keep theirs open, so little is lost.
pub fn postgres_cpu_time() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == "postgres")
        })
        .filter_map(cpu_time)
        .sum()
}

/// The whole machine's CPU time so far, from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTimes {
    /// Every state: user, nice, system, idle, iowait, irq, softirq and steal.
    total: u64,
    /// Time the hypervisor ran something else while this machine had work (steal).
    steal: u64,
}

impl MachineTimes {
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<Self> {
        // guest and guest_nice, after steal, are already counted in user and nice.
        let states: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let &[.., steal] = states.as_slice() else {
            return None;
        };
        (states.len() == 8).then(|| Self {
            total: states.iter().sum(),
            steal,
        })
    }

    /// Steal's share of the time elapsed since `earlier`, in percent.
    pub fn steal_percent_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        let steal = self.steal.saturating_sub(earlier.steal);
        if total == 0 {
            0.0
        } else {
            100.0 * steal as f64 / total as f64
        }
    }
}

/// A thread's time on a CPU in nanoseconds: the first field of `/proc/.../schedstat`.
fn schedstat_nanos(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// The number on the line of a `/proc/.../status` that starts with `key` (`VmHWM:`, say),
/// without its unit (`kB`).
fn status_number(status: &str, key: &str) -> Option<u64> {
    let value = status.lines().find_map(|line| line.strip_prefix(key))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Times a thread left its core: `waiting` when it went to sleep for more work (a request, the
/// database's answer), `preempted` when the scheduler gave the core to another process. Each
/// costs the switch itself and, on its return, caches that the other process used meanwhile.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Switches {
    pub waiting: u64,
    pub preempted: u64,
}

impl Switches {
    /// From a thread's `/proc/.../status`; a count it does not show reads 0.
    fn parse(status: &str) -> Self {
        let count = |key: &str| status_number(status, key).unwrap_or(0);
        Self {
            waiting: count("voluntary_ctxt_switches:"),
            preempted: count("nonvoluntary_ctxt_switches:"),
        }
    }

    pub fn plus(self, other: Self) -> Self {
        Self {
            waiting: self.waiting + other.waiting,
            preempted: self.preempted + other.preempted,
        }
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            waiting: self.waiting.saturating_sub(before.waiting),
            preempted: self.preempted.saturating_sub(before.preempted),
        }
    }
}

/// This process's CPU time so far (the load generator's cost).
pub fn own_cpu_time() -> Duration {
    cpu_time(std::process::id()).unwrap_or_default()
}

fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(
        ticks * 1000 / clock_ticks_per_second(),
    ))
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// Waits until `GET /readyz` answers 200; returns how long that took from `since`.
pub fn wait_ready(address: SocketAddr, since: Instant) -> anyhow::Result<Duration> {
    use std::io::{Read, Write};
    let deadline = since + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let _ =
                stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return Ok(since.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    anyhow::bail!("otpd did not become ready")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_read_as_a_share_of_all_the_time_that_passed() {
        let earlier = MachineTimes::parse("cpu  100 0 50 800 0 0 0 50 0 0\ncpu0 1 2 3\n")
            .expect("a cpu line");
        let later =
            MachineTimes::parse("cpu  400 0 150 1200 0 0 0 250 30 0\n").expect("a cpu line");
        // 1,000 ticks passed, 200 of them stolen; guest time is inside user already.
        assert_eq!(later.steal_percent_since(&earlier), 20.0);
        assert_eq!(later.steal_percent_since(&later), 0.0);
    }

    #[test]
    fn schedstat_gives_its_first_field_in_nanoseconds() {
        assert_eq!(schedstat_nanos("1234567 89 10\n"), Some(1_234_567));
        assert_eq!(schedstat_nanos(""), None);
        assert_eq!(schedstat_nanos("x 1 2"), None);
    }

    #[test]
    fn a_status_number_is_read_without_its_unit() {
        let status = "VmPeak:\t  9000 kB\nVmHWM:\t   51234 kB\nThreads:\t7\n";
        assert_eq!(status_number(status, "VmHWM:"), Some(51_234));
        assert_eq!(status_number(status, "Threads:"), Some(7));
        assert_eq!(status_number(status, "VmRSS:"), None);
    }

    #[test]
    fn switches_are_read_apart_and_a_missing_count_reads_zero() {
        let status = "Name:\totpd\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        let earlier = Switches::parse(status);
        assert_eq!(
            earlier,
            Switches {
                waiting: 120,
                preempted: 7
            }
        );
        let later = Switches::parse("voluntary_ctxt_switches:\t150\n");
        assert_eq!(
            later.since(earlier),
            Switches {
                waiting: 30,
                preempted: 0
            }
        );
        assert_eq!(
            earlier.plus(earlier),
            Switches {
                waiting: 240,
                preempted: 14
            }
        );
    }

    #[test]
    fn a_stat_without_a_whole_cpu_line_says_nothing() {
        assert_eq!(MachineTimes::parse("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(MachineTimes::parse("cpu  1 2 3 4\n"), None);
        assert_eq!(MachineTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }
}
