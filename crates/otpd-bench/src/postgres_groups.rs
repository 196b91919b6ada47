//! How otpd's PostgreSQL nodes grouped a run's requests: requests a group statement, by
//! statement, read from `/metrics` before and after the window. A group of 8 or more settles
//! its common case in set statements (migrations 14 to 16) and a smaller one request by
//! request, so what a request costs PostgreSQL depends on how the requests fell into groups.

use std::collections::BTreeMap;

use otpd_store::postgres_metrics::GROUP_SIZE;

use crate::metrics_page::samples;

/// The running totals of the group histogram at one moment: by statement, the requests and
/// the groups so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupTotals(BTreeMap<String, Counts>);

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    requests: f64,
    groups: f64,
}

impl GroupTotals {
    /// Totals from otpd's `/metrics`, in Prometheus' text format: the histogram's `_sum` and
    /// `_count` for each `statement` label. `None` where there is none (otpd on SQLite, a
    /// ceiling).
    pub fn parse(text: &str) -> Option<Self> {
        let sum = format!("{GROUP_SIZE}_sum");
        let count = format!("{GROUP_SIZE}_count");
        let mut totals = BTreeMap::<String, Counts>::new();
        for sample in samples(text) {
            let Some(statement) = statement_label(sample.labels) else {
                continue;
            };
            let counts = totals.entry(statement.to_owned()).or_default();
            if sample.name == sum {
                counts.requests += sample.value;
            } else if sample.name == count {
                counts.groups += sample.value;
            }
        }
        (!totals.is_empty()).then_some(Self(totals))
    }

    /// These totals and another node's together.
    pub fn plus(mut self, other: &Self) -> Self {
        for (statement, counts) in &other.0 {
            let sum = self.0.entry(statement.clone()).or_default();
            sum.requests += counts.requests;
            sum.groups += counts.groups;
        }
        self
    }

    /// The mean requests a group of each statement that ran between `earlier` and these
    /// totals.
    pub fn since(&self, earlier: &Self) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter_map(|(statement, now)| {
                let before = earlier.0.get(statement).copied().unwrap_or_default();
                let groups = now.groups - before.groups;
                (groups > 0.0)
                    .then(|| (statement.clone(), (now.requests - before.requests) / groups))
            })
            .collect()
    }
}

/// The value of the `statement` label in a series' labels (`statement="send",le="8"}`).
fn statement_label(labels: &str) -> Option<&str> {
    let start = labels.find("statement=\"")? + "statement=\"".len();
    let length = labels[start..].find('"')?;
    Some(&labels[start..start + length])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(sends: (u32, u32), checks: (u32, u32)) -> String {
        format!(
            "# TYPE otpd_postgres_group_size histogram\n\
             otpd_postgres_group_size_bucket{{statement=\"send\",le=\"8\"}} 3\n\
             otpd_postgres_group_size_sum{{statement=\"send\"}} {}\n\
             otpd_postgres_group_size_count{{statement=\"send\"}} {}\n\
             otpd_postgres_group_size_sum{{statement=\"check\"}} {}\n\
             otpd_postgres_group_size_count{{statement=\"check\"}} {}\n\
             otpd_postgres_group_duration_seconds_sum{{statement=\"send\"}} 9\n",
            sends.0, sends.1, checks.0, checks.1
        )
    }

    #[test]
    fn a_window_gives_the_mean_group_of_each_statement_that_ran() {
        let before = GroupTotals::parse(&metrics((100, 10), (50, 5))).expect("groups");
        let after = GroupTotals::parse(&metrics((3_100, 110), (50, 5))).expect("groups");
        assert_eq!(
            after.since(&before),
            BTreeMap::from([("send".to_owned(), 30.0)]),
            "the checks ran no group in the window"
        );
    }

    #[test]
    fn two_nodes_are_counted_together() {
        let one = GroupTotals::parse(&metrics((40, 10), (0, 0))).expect("groups");
        let other = GroupTotals::parse(&metrics((20, 10), (0, 0))).expect("groups");
        let before = GroupTotals::default();
        assert_eq!(
            one.plus(&other).since(&before),
            BTreeMap::from([("send".to_owned(), 3.0)])
        );
    }

    #[test]
    fn a_server_without_groups_has_no_totals() {
        assert_eq!(
            GroupTotals::parse("otpd_sqlite_commit_size_sum 5\notpd_sqlite_commit_size_count 1\n"),
            None
        );
    }
}
