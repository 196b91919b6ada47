//! Instructions per request, counted by callgrind: for comparing two builds on a machine whose
//! speed moves too much for rates to tell them apart (a virtual machine whose host takes CPU
//! away). Instructions do not move with the host: the same binary, inputs and environment give
//! the same count, whatever else the machine is doing.
//!
//! The server runs under `valgrind --tool=callgrind` with counting off, one output file per
//! thread. Counting is switched on for the measuring window (`callgrind_control -i on`), once the
//! server has answered a few requests (`measure::ANSWERS_BEFORE_COUNTING`), then
//! the counts are dumped and switched off again (once per server: with valgrind 3.19 the counts
//! of a second window in the same process came out wrong, some just under 2^64, whether
//! counting was switched on again or zeroed with `-z`; see `check_one_row`); each thread's
//! total, divided by the requests the server began meanwhile (its calls to
//! `otpd_api::observe::next_request_id`, once per request), is that thread's instructions per
//! request. The server's own count, not the load generator's: under valgrind a request takes
//! tens of milliseconds, and the control commands take effect a moment after they are sent, so
//! the two windows differ. Work in the kernel (system calls, the WAL's writes and fsync) is not
//! counted, and SHA-256 runs in software under valgrind, so SigV4 and code digests count several
//! times what they cost natively.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Where the servers' callgrind files go, and the command that starts a server under it.
pub struct Callgrind {
    directory: PathBuf,
}

/// One server's count in progress: the files that were there before it began.
pub struct Counting<'a> {
    callgrind: &'a Callgrind,
    pid: u32,
    earlier: HashSet<PathBuf>,
}

impl Callgrind {
    /// Fails early, with what to install, when valgrind is missing.
    pub fn new(work: &Path) -> anyhow::Result<Self> {
        let found = Command::new("callgrind_control").arg("--version").output();
        anyhow::ensure!(
            found.is_ok_and(|output| output.status.success()),
            "--instructions needs valgrind (Debian: apt-get install valgrind)"
        );
        let directory = work.join("callgrind");
        std::fs::create_dir_all(&directory)?;
        Ok(Self { directory })
    }

    /// `program` and its `args` as valgrind runs them, counting nothing until told to.
    pub fn wrap(&self, program: &str, args: Vec<String>) -> (String, Vec<String>) {
        let mut wrapped = vec![
            "--tool=callgrind".to_owned(),
            "--separate-threads=yes".to_owned(),
            "--instr-atstart=no".to_owned(),
            format!(
                "--callgrind-out-file={}",
                self.directory.join("callgrind.%p").display()
            ),
            program.to_owned(),
        ];
        wrapped.extend(args);
        ("valgrind".to_owned(), wrapped)
    }

    /// Switches counting on in server `pid`.
    pub fn start(&self, pid: u32) -> anyhow::Result<Counting<'_>> {
        let earlier = self.files_of(pid)?;
        control(pid, &["-i", "on"])?;
        Ok(Counting {
            callgrind: self,
            pid,
            earlier,
        })
    }

    fn files_of(&self, pid: u32) -> anyhow::Result<HashSet<PathBuf>> {
        let prefix = format!("callgrind.{pid}.");
        Ok(std::fs::read_dir(&self.directory)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&prefix))
            })
            .collect())
    }
}

/// What one server did while counting was on.
pub struct Counted {
    /// Each thread's instructions, largest first.
    pub threads: Vec<u64>,
    /// The requests it began.
    pub requests: u64,
}

impl Counting<'_> {
    /// Dumps the counts and switches counting off.
    pub fn finish(self) -> anyhow::Result<Counted> {
        control(self.pid, &["-d"])?;
        control(self.pid, &["-i", "off"])?;
        let mut counted = Counted {
            threads: Vec::new(),
            requests: 0,
        };
        for path in self.callgrind.files_of(self.pid)? {
            if self.earlier.contains(&path) {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            match instructions_in(&text) {
                Some(count) => counted.threads.push(count),
                None => println!(
                    "  note: {} has no usable instruction count; that thread is left out",
                    path.display()
                ),
            }
            counted.requests += calls_to(&text, REQUEST_MARKER);
        }
        counted.threads.sort_unstable_by(|a, b| b.cmp(a));
        Ok(counted)
    }
}

/// The function otpd calls once per request.
const REQUEST_MARKER: &str = "otpd_api::observe::next_request_id";

/// How many calls a callgrind file records to the function named `name`. Names are given once,
/// as `fn=(id) name` or `cfn=(id) name`, and referred to by `(id)` after; a call is a `cfn=`
/// line followed by `calls=count ...`.
fn calls_to(text: &str, name: &str) -> u64 {
    let mut ids = HashSet::new();
    let mut callee_matches = false;
    let mut calls = 0;
    for line in text.lines() {
        let called = line.strip_prefix("cfn=");
        if let Some(reference) = called.or_else(|| line.strip_prefix("fn=")) {
            let (id, named) = match reference.split_once(' ') {
                Some((id, named)) => (id, Some(named)),
                None => (reference, None),
            };
            if named == Some(name) {
                ids.insert(id.to_owned());
            }
            if called.is_some() {
                callee_matches = ids.contains(id);
            }
        } else if let Some(count) = line.strip_prefix("calls=")
            && callee_matches
        {
            calls += count
                .split_whitespace()
                .next()
                .and_then(|count| count.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    calls
}

/// `--instructions` counts one window per server process (see the module docs), so one row:
/// one operation at one connection count.
pub fn check_one_row(operations: usize, connections: &[usize]) -> anyhow::Result<()> {
    anyhow::ensure!(
        operations == 1 && connections.len() == 1,
        "--instructions measures one row per run: choose one operation with --only (for \
         example --only \"pinpoint send\") and one --connections (for example 16)"
    );
    Ok(())
}

fn control(pid: u32, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("cannot run callgrind_control")?;
    anyhow::ensure!(
        output.status.success(),
        "callgrind_control {args:?} {pid}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The instructions a callgrind file counted: its `summary:` line (`totals:` in some versions).
/// A thread that ran nothing in the window has been seen to get a count just under 2^64 (a
/// negative difference, printed unsigned): that is no count.
fn instructions_in(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|counts| counts.split_whitespace().next())
        .and_then(|first| first.parse::<u64>().ok())
        .filter(|&count| i64::try_from(count).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_calls_to_a_function_by_name_or_by_its_id() {
        let file = "fn=(1) main\ncfn=(2) otpd_api::observe::next_request_id\ncalls=3 10\n5 100\n\
                    cfn=(3) other\ncalls=7 11\n1 1\nfn=(4) worker\ncfn=(2)\ncalls=4 12\n2 20\n";
        assert_eq!(calls_to(file, REQUEST_MARKER), 7);
        assert_eq!(calls_to(file, "other"), 7);
        assert_eq!(calls_to(file, "absent"), 0);
    }

    #[test]
    fn one_row_per_run() {
        assert!(check_one_row(1, &[16]).is_ok());
        assert!(check_one_row(2, &[16]).is_err());
        assert!(check_one_row(1, &[1, 16]).is_err());
    }

    #[test]
    fn reads_the_summary_line() {
        let file = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 178971881\n\nfn=(1) main\n";
        assert_eq!(instructions_in(file), Some(178_971_881));
        assert_eq!(instructions_in("totals: 42\n"), Some(42));
        assert_eq!(instructions_in("events: Ir\n"), None);
        assert_eq!(instructions_in("summary: 18446744073709551000\n"), None);
    }
}
