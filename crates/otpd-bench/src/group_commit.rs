//! How otpd's SQLite writer grouped a run's work: writer jobs a commit, commits a flush,
//! flushes a second and how long one took, read from otpd's own `/metrics` before and after
//! the window. At 64 connections the sends' p99 depends on how their requests fall into
//! commits and flushes (docs/benchmark-history.md), which the CPU a request cannot show.

use std::time::Duration;

use otpd_store::sqlite_metrics::{COMMIT_SIZE, LOG_FLUSH_COMMITS, LOG_FLUSH_DURATION};

use crate::metrics_page::samples;

/// The running totals of the writer's three histograms at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    jobs: f64,
    commits: f64,
    flushed_commits: f64,
    flushes: f64,
    flush_seconds: f64,
}

/// A window's grouping, from two `Totals`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Grouping {
    pub jobs_per_commit: f64,
    pub commits_per_flush: f64,
    pub flushes_per_second: f64,
    pub milliseconds_per_flush: f64,
}

impl Totals {
    /// Totals from otpd's `/metrics`, in Prometheus' text format: each histogram's `_sum` and
    /// `_count`, summed over any labels. `None` unless all three histograms are there (a
    /// ceiling, otpd on PostgreSQL): the figures are extra, and their absence stops no run.
    pub fn parse(text: &str) -> Option<Self> {
        let total = |name: &str| -> Option<f64> {
            samples(text)
                .filter(|sample| sample.name == name)
                .map(|sample| sample.value)
                .reduce(|sum, value| sum + value)
        };
        Some(Self {
            jobs: total(&format!("{COMMIT_SIZE}_sum"))?,
            commits: total(&format!("{COMMIT_SIZE}_count"))?,
            flushed_commits: total(&format!("{LOG_FLUSH_COMMITS}_sum"))?,
            flushes: total(&format!("{LOG_FLUSH_COMMITS}_count"))?,
            flush_seconds: total(&format!("{LOG_FLUSH_DURATION}_sum"))?,
        })
    }

    /// These totals and another server's together.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            jobs: self.jobs + other.jobs,
            commits: self.commits + other.commits,
            flushed_commits: self.flushed_commits + other.flushed_commits,
            flushes: self.flushes + other.flushes,
            flush_seconds: self.flush_seconds + other.flush_seconds,
        }
    }

    /// The grouping of what happened between `earlier` and these totals, over `window`; `None`
    /// if nothing was committed or flushed meanwhile.
    pub fn since(&self, earlier: &Self, window: Duration) -> Option<Grouping> {
        let commits = self.commits - earlier.commits;
        let flushes = self.flushes - earlier.flushes;
        (commits > 0.0 && flushes > 0.0 && !window.is_zero()).then(|| Grouping {
            jobs_per_commit: (self.jobs - earlier.jobs) / commits,
            commits_per_flush: (self.flushed_commits - earlier.flushed_commits) / flushes,
            flushes_per_second: flushes / window.as_secs_f64(),
            milliseconds_per_flush: (self.flush_seconds - earlier.flush_seconds) * 1e3 / flushes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(jobs: f64, commits: u32, flushed: f64, flushes: u32, flush_seconds: f64) -> String {
        format!(
            "# TYPE otpd_sqlite_commit_size histogram\n\
             otpd_sqlite_commit_size_bucket{{le=\"1\"}} 3\n\
             otpd_sqlite_commit_size_bucket{{le=\"+Inf\"}} {commits}\n\
             otpd_sqlite_commit_size_sum {jobs}\n\
             otpd_sqlite_commit_size_count {commits}\n\
             # TYPE otpd_sqlite_log_flush_commits summary\n\
             otpd_sqlite_log_flush_commits{{quantile=\"0.5\"}} 1\n\
             otpd_sqlite_log_flush_commits_sum {flushed}\n\
             otpd_sqlite_log_flush_commits_count {flushes}\n\
             otpd_sqlite_log_flush_commits_sum_of_something_else 99\n\
             otpd_sqlite_log_flush_duration_seconds_sum {flush_seconds}\n\
             otpd_sqlite_log_flush_duration_seconds_count {flushes}\n"
        )
    }

    #[test]
    fn a_window_is_the_difference_of_two_readings() {
        let before = Totals::parse(&metrics(100.0, 10, 10.0, 8, 0.5)).expect("all histograms");
        let after =
            Totals::parse(&metrics(3_100.0, 110, 130.0, 108, 0.55)).expect("all histograms");
        let grouping = after
            .since(&before, Duration::from_secs(2))
            .expect("commits and flushes in the window");
        assert_eq!(grouping.jobs_per_commit, 30.0);
        assert_eq!(grouping.commits_per_flush, 1.2);
        assert_eq!(grouping.flushes_per_second, 50.0);
        assert!((grouping.milliseconds_per_flush - 0.5).abs() < 1e-9);
    }

    #[test]
    fn labelled_series_are_summed() {
        let text = "otpd_sqlite_commit_size_sum{node=\"a\"} 5\n\
                    otpd_sqlite_commit_size_sum{node=\"b\"} 7\n\
                    otpd_sqlite_commit_size_count 2\n\
                    otpd_sqlite_log_flush_commits_sum 2\n\
                    otpd_sqlite_log_flush_commits_count 1\n\
                    otpd_sqlite_log_flush_duration_seconds_sum 0.001\n";
        let totals = Totals::parse(text).expect("all histograms");
        assert_eq!(totals.jobs, 12.0);
    }

    #[test]
    fn a_server_without_a_sqlite_writer_gives_no_totals() {
        let text = "# TYPE otpd_http_requests_total counter\notpd_http_requests_total 5\n";
        assert_eq!(Totals::parse(text), None);
    }

    #[test]
    fn a_window_without_commits_gives_no_grouping() {
        let totals = Totals::parse(&metrics(100.0, 10, 10.0, 8, 0.5)).expect("all histograms");
        assert_eq!(totals.since(&totals, Duration::from_secs(1)), None);
    }
}
