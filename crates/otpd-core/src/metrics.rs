//! What the service counts, for operators' dashboards and alerts (`GET /metrics`).
//!
//! Recorded through the `metrics` facade, as logs go through `tracing`: the server installs a
//! Prometheus recorder, and without one recording does nothing. Every label is a small closed
//! set (dialect, result, status): never an account, a phone number or a code, so that a series
//! can neither grow without bound nor tell anyone who is being verified.

use std::sync::RwLock;

use metrics::{Counter, Label, Unit, counter, describe_counter, describe_gauge, gauge};

use crate::outbox::{AttemptOutcome, OutboxBacklog};
use crate::service::{SendError, SendReceipt};
use crate::verification::{CheckOutcome, Dialect, SendRejected};

/// Sends, by `dialect` and `result`.
pub const SENDS: &str = "otpd_otp_sends_total";
/// Checks of a submitted code, by `dialect` and `outcome`.
pub const CHECKS: &str = "otpd_otp_checks_total";
/// SMS parts committed for delivery (what a carrier bills), by `dialect`.
pub const SMS_PARTS: &str = "otpd_sms_parts_total";
/// Delivery attempts, by `result` and the carrier's `status`.
pub const SMS_ATTEMPTS: &str = "otpd_sms_attempts_total";
/// Attempts whose outcome the database never took: their messages go out again.
pub const SMS_OUTCOMES_UNRECORDED: &str = "otpd_sms_outcomes_unrecorded_total";
/// Delivery receipts stored, by `state` (SMPP's, or `other`).
pub const SMS_RECEIPTS: &str = "otpd_sms_receipts_total";
/// 1 while the SMPP transceiver is bound, 0 otherwise (with `--sms smpp://...` only).
pub const SMPP_BOUND: &str = "otpd_smpp_bound";
/// Binds to the SMSC that failed: unreachable, or refusing the system id and password.
pub const SMPP_BIND_FAILURES: &str = "otpd_smpp_bind_failures_total";
/// Messages waiting for delivery, read from the database at each scrape.
pub const OUTBOX_PENDING: &str = "otpd_outbox_pending_messages";
/// How long the oldest of them has waited.
pub const OUTBOX_OLDEST_AGE: &str = "otpd_outbox_oldest_pending_age_seconds";
/// Whether the database answered the scrape's backlog query.
pub const DATABASE_UP: &str = "otpd_database_up";

/// Every `result` label `record_send` gives.
const SEND_RESULTS: [&str; 10] = [
    "accepted",
    "sandbox",
    "antispam",
    "no_credit",
    "unknown_account",
    "account_hourly_limit",
    "country_not_allowed",
    "account_country_not_allowed",
    "bad_message",
    "store_error",
];
/// The `outcome` label of a check the store could not run (the others are `CheckOutcome`'s).
const CHECK_STORE_ERROR: &str = "store_error";
/// The final and interim message states of SMPP v3.4 (appendix B), the `stat:` of a receipt.
/// Any other text is counted as `OTHER_RECEIPT_STATE`, so that an SMSC cannot make series up.
const RECEIPT_STATES: [&str; 8] = [
    "DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "ACCEPTD", "UNKNOWN", "REJECTD", "ENROUTE",
];
const OTHER_RECEIPT_STATE: &str = "other";

/// The sends counter's help text: it names every `result` label `record_send` gives.
const SENDS_HELP: &str = "Code sends by result: accepted, sandbox (no SMS), antispam, no_credit, \
     country_not_allowed (--sms-countries), account_country_not_allowed and account_hourly_limit \
     (the account's own limits), unknown_account, bad_message (text or encoding refused) or \
     store_error";

/// Gives the recorder installed now the help text of every metric above.
pub fn describe() {
    describe_counter!(SENDS, Unit::Count, SENDS_HELP);
    describe_counter!(
        CHECKS,
        Unit::Count,
        "Checks of a submitted code by outcome: verified, mismatch, mismatch_exhausted (the last \
         attempt was wrong), attempts_exhausted, expired, already_verified, cancelled, not_found, \
         rate_limited (too many wrong checks from one IP address) or store_error"
    );
    describe_counter!(
        SMS_PARTS,
        Unit::Count,
        "SMS parts committed for delivery; a sudden rise with few verified checks is the mark of \
         SMS pumping"
    );
    describe_counter!(
        SMS_ATTEMPTS,
        Unit::Count,
        "Delivery attempts by result (accepted, retry, failed) and the carrier's status"
    );
    describe_counter!(
        SMS_OUTCOMES_UNRECORDED,
        Unit::Count,
        "Delivery attempts whose outcome could not be stored within three quarters of the claim's \
         lease (the database away): each of their messages is sent again when its lease runs out"
    );
    describe_counter!(
        SMS_RECEIPTS,
        Unit::Count,
        "SMPP delivery receipts stored, by state (DELIVRD, UNDELIV, EXPIRED, REJECTD, ...; \
         `other` for a state outside SMPP's)"
    );
    describe_gauge!(
        SMPP_BOUND,
        "1 while the SMPP transceiver is bound to the SMSC, else 0"
    );
    describe_counter!(
        SMPP_BIND_FAILURES,
        Unit::Count,
        "Binds to the SMSC that failed (unreachable, or the credentials refused); otpd binds \
         again with backoff"
    );
    describe_gauge!(
        OUTBOX_PENDING,
        Unit::Count,
        "Messages neither handed to a carrier nor given up on, in the shared database (every \
         node reports the same figure)"
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "How long the oldest waiting message has waited since its send; 0 when none waits"
    );
    describe_gauge!(
        DATABASE_UP,
        "1 when the database answered the last scrape, 0 when not (the outbox figures are then \
         the last ones read)"
    );
}

/// Publishes every series of the counters above that an alert or a dashboard may watch, at 0,
/// in the recorder installed now. A series that appears only with its first event hides that
/// event from `increase()` and `rate()` (they need a sample before it), and a ratio of two
/// counters reads "no data" until both have counted: a first store error, a first refused
/// check, a first outcome given up on would go unseen. Delivery attempts are left to appear as
/// they happen: their carrier statuses are the transport's, not a set known here.
pub fn publish_at_zero() {
    for dialect in [Dialect::Pinpoint, Dialect::Amm] {
        let dialect = dialect.as_str();
        for result in SEND_RESULTS {
            counter!(SENDS, "dialect" => dialect, "result" => result).increment(0);
        }
        let outcomes = CheckOutcome::ALL.map(CheckOutcome::as_str);
        for outcome in outcomes.into_iter().chain([CHECK_STORE_ERROR]) {
            counter!(CHECKS, "dialect" => dialect, "outcome" => outcome).increment(0);
        }
        counter!(SMS_PARTS, "dialect" => dialect).increment(0);
    }
    counter!(SMS_OUTCOMES_UNRECORDED).increment(0);
}

/// The handles of one counter's series, by label values, each registered on first use.
///
/// Recording through `counter!` builds the series' key (an allocation) and looks it up in the
/// recorder's registry on every call: with three counters a send, that was 2-3% of a send's CPU
/// (perf, 2026-12-03). A handle records with one atomic add. A handle belongs to the recorder
/// installed when it was made, so a set lives in the service that records through it, and its
/// handles are made at the first request, after the server installed its recorder. (The HTTP
/// series keep their handles the same way, in otpd-api's `RouteSeries`, per thread because
/// their route labels are not `'static`.)
struct Series<const N: usize> {
    name: &'static str,
    keys: [&'static str; N],
    handles: RwLock<Vec<([&'static str; N], Counter)>>,
}

impl<const N: usize> Series<N> {
    const fn new(name: &'static str, keys: [&'static str; N]) -> Self {
        Self {
            name,
            keys,
            handles: RwLock::new(Vec::new()),
        }
    }

    fn increment(&self, values: [&'static str; N], by: u64) {
        {
            let handles = self
                .handles
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((_, counter)) = handles.iter().find(|(seen, _)| *seen == values) {
                counter.increment(by);
                return;
            }
        }
        let labels: Vec<Label> = self
            .keys
            .iter()
            .zip(values)
            .map(|(key, value)| Label::from_static_parts(key, value))
            .collect();
        let counter = counter!(self.name, labels);
        counter.increment(by);
        self.handles
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((values, counter));
    }
}

/// What the verification service counts: sends, the SMS parts they commit, and checks.
pub(crate) struct VerificationMetrics {
    sends: Series<2>,
    parts: Series<1>,
    checks: Series<2>,
}

impl Default for VerificationMetrics {
    fn default() -> Self {
        Self {
            sends: Series::new(SENDS, ["dialect", "result"]),
            parts: Series::new(SMS_PARTS, ["dialect"]),
            checks: Series::new(CHECKS, ["dialect", "outcome"]),
        }
    }
}

impl VerificationMetrics {
    /// Counts a send once its fate is known.
    pub(crate) fn record_send(&self, dialect: Dialect, result: &Result<SendReceipt, SendError>) {
        let result = match result {
            Ok(SendReceipt {
                message_id: None, ..
            }) => "sandbox",
            Ok(_) => "accepted",
            Err(SendError::Rejected(SendRejected::TooManySends { .. })) => "antispam",
            Err(SendError::Rejected(SendRejected::NoCredit)) => "no_credit",
            Err(SendError::Rejected(SendRejected::UnknownAccount)) => "unknown_account",
            Err(SendError::Rejected(SendRejected::HourlyLimit { .. })) => "account_hourly_limit",
            Err(SendError::CountryNotAllowed(_)) => "country_not_allowed",
            Err(SendError::CountryNotAllowedForAccount(_)) => "account_country_not_allowed",
            Err(SendError::Compose(_)) => "bad_message",
            Err(SendError::Store(_)) => "store_error",
        };
        self.sends.increment([dialect.as_str(), result], 1);
    }

    /// Counts the parts of a message committed for delivery.
    pub(crate) fn record_parts(&self, dialect: Dialect, parts: u32) {
        self.parts.increment([dialect.as_str()], u64::from(parts));
    }

    /// Counts a check; `None` when the store could not run it.
    pub(crate) fn record_check(&self, dialect: Dialect, outcome: Option<CheckOutcome>) {
        let outcome = outcome.map_or(CHECK_STORE_ERROR, CheckOutcome::as_str);
        self.checks.increment([dialect.as_str(), outcome], 1);
    }
}

/// Sets the outbox figures read for a scrape; `None` when the database did not answer.
pub fn record_backlog(backlog: Option<OutboxBacklog>) {
    gauge!(DATABASE_UP).set(if backlog.is_some() { 1.0 } else { 0.0 });
    if let Some(backlog) = backlog {
        gauge!(OUTBOX_PENDING).set(backlog.pending as f64);
        gauge!(OUTBOX_OLDEST_AGE).set(backlog.oldest_age.as_secs_f64());
    }
}

/// Delivery attempts, counted by the dispatcher.
pub struct AttemptMetrics {
    attempts: Series<2>,
}

impl Default for AttemptMetrics {
    fn default() -> Self {
        Self {
            attempts: Series::new(SMS_ATTEMPTS, ["result", "status"]),
        }
    }
}

impl AttemptMetrics {
    /// Counts one delivery attempt.
    pub fn record(&self, outcome: &AttemptOutcome) {
        let result = match outcome {
            AttemptOutcome::Accepted(_) => "accepted",
            AttemptOutcome::Retry { .. } => "retry",
            AttemptOutcome::Failed(_) => "failed",
        };
        self.attempts
            .increment([result, outcome.report().status.as_str()], 1);
    }

    /// Counts attempts whose outcomes were given up on; rare, so the series is looked up each
    /// time rather than kept.
    pub fn record_unrecorded(&self, attempts: usize) {
        counter!(SMS_OUTCOMES_UNRECORDED).increment(attempts as u64);
    }
}

/// What an SMPP link shows an operator: whether it is bound, how often binding fails, and the
/// receipts it brings back. Each is rare (a bind, a receipt), so the series are looked up each
/// time rather than kept.
pub mod smpp {
    use metrics::{counter, gauge};

    use super::{
        OTHER_RECEIPT_STATE, RECEIPT_STATES, SMPP_BIND_FAILURES, SMPP_BOUND, SMS_RECEIPTS,
    };

    /// Publishes the link's series at 0 (not bound, nothing failed, no receipt), as
    /// `publish_at_zero` does the service's; called when an SMPP transport starts, so that a
    /// server without one shows none.
    pub fn publish_at_zero() {
        gauge!(SMPP_BOUND).set(0.0);
        counter!(SMPP_BIND_FAILURES).increment(0);
        for state in RECEIPT_STATES.into_iter().chain([OTHER_RECEIPT_STATE]) {
            counter!(SMS_RECEIPTS, "state" => state).increment(0);
        }
    }

    pub fn record_bound(bound: bool) {
        gauge!(SMPP_BOUND).set(if bound { 1.0 } else { 0.0 });
    }

    pub fn record_bind_failure() {
        counter!(SMPP_BIND_FAILURES).increment(1);
    }

    /// Counts a stored receipt by its state.
    pub fn record_receipt(state: &str) {
        let state = RECEIPT_STATES
            .into_iter()
            .find(|known| *known == state)
            .unwrap_or(OTHER_RECEIPT_STATE);
        counter!(SMS_RECEIPTS, "state" => state).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::ids::VerifyId;
    use crate::outbox::tests::report;
    use crate::ports::{DeliveryStatus, StoreError};
    use crate::sms::ComposeError;

    /// What `record` counted, rendered as `/metrics` renders it.
    fn rendered(record: impl FnOnce()) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, record);
        recorder.handle().render()
    }

    #[test]
    fn every_send_result_has_its_own_label() {
        let sandbox = SendReceipt {
            verify_id: VerifyId::generate(),
            message_id: None,
            delivery: None,
        };
        let cases: [(Result<SendReceipt, SendError>, &str); 9] = [
            (Ok(sandbox), "sandbox"),
            (
                Err(SendRejected::TooManySends { retry_after: None }.into()),
                "antispam",
            ),
            (Err(SendRejected::NoCredit.into()), "no_credit"),
            (Err(SendRejected::UnknownAccount.into()), "unknown_account"),
            (
                Err(SendRejected::HourlyLimit { retry_after: None }.into()),
                "account_hourly_limit",
            ),
            (
                Err(SendError::CountryNotAllowed(Some("DE"))),
                "country_not_allowed",
            ),
            (
                Err(SendError::CountryNotAllowedForAccount(Some("FR"))),
                "account_country_not_allowed",
            ),
            (Err(ComposeError::TooLong.into()), "bad_message"),
            (
                Err(StoreError::Unavailable("down".into()).into()),
                "store_error",
            ),
        ];
        let mut labels = vec!["accepted"];
        for (result, label) in cases {
            labels.push(label);
            let text =
                rendered(|| VerificationMetrics::default().record_send(Dialect::Amm, &result));
            let line = format!("{SENDS}{{dialect=\"amm\",result=\"{label}\"}} 1");
            assert!(text.contains(&line), "{line} in {text}");
            assert!(SENDS_HELP.contains(label), "the help text names {label}");
        }
        let accepted = SendReceipt {
            verify_id: VerifyId::generate(),
            message_id: Some(crate::outbox::MessageId::generate()),
            delivery: None,
        };
        let text =
            rendered(|| VerificationMetrics::default().record_send(Dialect::Amm, &Ok(accepted)));
        assert!(text.contains(&format!("{SENDS}{{dialect=\"amm\",result=\"accepted\"}} 1")));
        labels.sort_unstable();
        let mut published = SEND_RESULTS.to_vec();
        published.sort_unstable();
        assert_eq!(
            labels, published,
            "every result is published at 0, and nothing else"
        );
    }

    #[test]
    fn the_series_alerts_watch_exist_at_zero_before_anything_happens() {
        let text = rendered(publish_at_zero);
        for line in [
            format!("{SENDS}{{dialect=\"pinpoint\",result=\"store_error\"}} 0"),
            format!("{SENDS}{{dialect=\"amm\",result=\"antispam\"}} 0"),
            format!("{CHECKS}{{dialect=\"amm\",outcome=\"rate_limited\"}} 0"),
            format!("{CHECKS}{{dialect=\"pinpoint\",outcome=\"store_error\"}} 0"),
            format!("{SMS_PARTS}{{dialect=\"pinpoint\"}} 0"),
            format!("{SMS_OUTCOMES_UNRECORDED} 0"),
        ] {
            assert!(text.contains(&line), "{line} in {text}");
        }
        let sends = text.lines().filter(|line| line.starts_with(SENDS)).count();
        let checks = text.lines().filter(|line| line.starts_with(CHECKS)).count();
        assert_eq!(sends, 2 * SEND_RESULTS.len());
        assert_eq!(checks, 2 * (CheckOutcome::ALL.len() + 1));
        assert!(
            !text.contains(SMS_ATTEMPTS),
            "attempts appear as they happen"
        );
    }

    #[test]
    fn a_check_the_store_could_not_run_is_a_store_error() {
        let text = rendered(|| {
            let metrics = VerificationMetrics::default();
            metrics.record_check(Dialect::Pinpoint, None);
            metrics.record_check(Dialect::Pinpoint, Some(CheckOutcome::RateLimited));
        });
        assert!(text.contains(&format!(
            "{CHECKS}{{dialect=\"pinpoint\",outcome=\"store_error\"}} 1"
        )));
        assert!(text.contains(&format!(
            "{CHECKS}{{dialect=\"pinpoint\",outcome=\"rate_limited\"}} 1"
        )));
    }

    #[test]
    fn the_backlog_is_kept_while_the_database_does_not_answer() {
        let text = rendered(|| {
            record_backlog(Some(OutboxBacklog {
                pending: 3,
                oldest_age: Duration::from_millis(2_500),
            }));
            record_backlog(None);
        });
        assert!(text.contains(&format!("{DATABASE_UP} 0")), "{text}");
        assert!(text.contains(&format!("{OUTBOX_PENDING} 3")), "{text}");
        assert!(text.contains(&format!("{OUTBOX_OLDEST_AGE} 2.5")), "{text}");
    }

    #[test]
    fn outcomes_given_up_on_are_counted_by_attempt() {
        let text = rendered(|| {
            let metrics = AttemptMetrics::default();
            metrics.record_unrecorded(3);
            metrics.record_unrecorded(1);
        });
        assert!(
            text.contains(&format!("{SMS_OUTCOMES_UNRECORDED} 4")),
            "{text}"
        );
    }

    #[test]
    fn delivery_attempts_are_counted_by_result_and_status() {
        let text = rendered(|| {
            let metrics = AttemptMetrics::default();
            metrics.record(&AttemptOutcome::Retry {
                report: report(DeliveryStatus::Throttled),
                retry_after: Duration::from_secs(1),
            });
            metrics.record(&AttemptOutcome::Failed(report(
                DeliveryStatus::PermanentFailure,
            )));
            metrics.record(&AttemptOutcome::Failed(report(
                DeliveryStatus::PermanentFailure,
            )));
        });
        assert!(text.contains(&format!(
            "{SMS_ATTEMPTS}{{result=\"retry\",status=\"THROTTLED\"}} 1"
        )));
        assert!(text.contains(&format!(
            "{SMS_ATTEMPTS}{{result=\"failed\",status=\"PERMANENT_FAILURE\"}} 2"
        )));
    }
    #[test]
    fn an_smpp_link_starts_unbound_with_every_receipt_state_at_zero() {
        let text = rendered(smpp::publish_at_zero);
        assert!(text.contains(&format!("{SMPP_BOUND} 0")), "{text}");
        assert!(text.contains(&format!("{SMPP_BIND_FAILURES} 0")), "{text}");
        for state in ["DELIVRD", "UNDELIV", "REJECTD", "other"] {
            let line = format!("{SMS_RECEIPTS}{{state=\"{state}\"}} 0");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn receipts_are_counted_by_state_and_an_unknown_state_is_other() {
        let text = rendered(|| {
            smpp::record_bound(true);
            smpp::record_bind_failure();
            smpp::record_receipt("DELIVRD");
            smpp::record_receipt("DELIVRD");
            smpp::record_receipt("delivered, honest");
            smpp::record_receipt("UNDELIV");
        });
        for line in [
            format!("{SMPP_BOUND} 1"),
            format!("{SMPP_BIND_FAILURES} 1"),
            format!("{SMS_RECEIPTS}{{state=\"DELIVRD\"}} 2"),
            format!("{SMS_RECEIPTS}{{state=\"UNDELIV\"}} 1"),
            format!("{SMS_RECEIPTS}{{state=\"other\"}} 1"),
        ] {
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(
            !text.contains("honest"),
            "no state outside SMPP's becomes a label"
        );
    }
}
