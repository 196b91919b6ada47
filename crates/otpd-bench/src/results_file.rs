//! Where a run's JSON goes. Unless `--output` names a file, every run gets a file of its own in
//! `bench-results/`, named by when it began, and `bench-results/otpd-bench.json` is a copy of the
//! latest: a quick `--only` run after a full one used to overwrite the full run's figures.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use otpd_core::iso8601::ToTheSecond;

const DIRECTORY: &str = "bench-results";
const LATEST: &str = "otpd-bench.json";

/// The files one run writes its results to.
#[derive(Debug, PartialEq, Eq)]
pub struct ResultsFiles {
    /// The run's own file, or the one `--output` named.
    pub own: PathBuf,
    /// The copy under a fixed name, when the run chose its own file's name.
    pub latest: Option<PathBuf>,
}

impl ResultsFiles {
    pub fn for_run(output: Option<&Path>, started_at: &str) -> Self {
        match output {
            Some(path) => Self {
                own: path.to_owned(),
                latest: None,
            },
            None => {
                // Colons are awkward in file names on some systems and in `scp` arguments.
                let stamp = started_at.replace(':', "-");
                Self {
                    own: Path::new(DIRECTORY).join(format!("otpd-bench-{stamp}.json")),
                    latest: Some(Path::new(DIRECTORY).join(LATEST)),
                }
            }
        }
    }

    pub fn write(&self, json: &[u8]) -> std::io::Result<()> {
        for path in std::iter::once(&self.own).chain(&self.latest) {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, json)?;
        }
        Ok(())
    }
}

/// The moment as `2026-12-07T09:55:12` (UTC), for the JSON and the file's name.
pub fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    ToTheSecond::since_epoch(seconds).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_an_output_gets_a_file_of_its_own_and_the_latest_copy() {
        let files = ResultsFiles::for_run(None, "2026-12-07T09:55:12");
        assert_eq!(
            files,
            ResultsFiles {
                own: PathBuf::from("bench-results/otpd-bench-2026-12-07T09-55-12.json"),
                latest: Some(PathBuf::from("bench-results/otpd-bench.json")),
            }
        );
    }

    #[test]
    fn a_named_output_is_the_only_file_written() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("nested").join("mine.json");
        let files = ResultsFiles::for_run(Some(&path), "2026-12-07T09:55:12");
        assert_eq!(files.latest, None);
        files.write(b"{}").expect("written");
        assert_eq!(std::fs::read(&path).expect("read"), b"{}");
    }

    #[test]
    fn the_time_is_utc_to_the_second() {
        let now = utc_now();
        assert_eq!(now.len(), "2026-12-07T09:55:12".len());
        assert_eq!(&now[10..11], "T");
    }
}
