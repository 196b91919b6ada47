//! What the SMPP link shows an operator: whether it is bound, how often binding fails, and the
//! delivery receipts it brings back, by state. Published at 0 when the transport starts, so an
//! alert on a link that never bound, or on a first rejected receipt, sees it (see
//! `otpd_core::metrics::publish_at_zero`).

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

/// 1 while the transceiver is bound, 0 otherwise.
pub const SMPP_BOUND: &str = "otpd_smpp_bound";
/// Binds that failed: the SMSC unreachable, or refusing the system id and password.
pub const SMPP_BIND_FAILURES: &str = "otpd_smpp_bind_failures_total";
/// Delivery receipts stored, by `state`.
pub const SMS_RECEIPTS: &str = "otpd_sms_receipts_total";

/// The final and interim message states of SMPP v3.4 (appendix B), the `stat:` of a receipt.
/// Any other text is counted as `other`, so that an SMSC cannot make series up.
const RECEIPT_STATES: [&str; 8] = [
    "DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "ACCEPTD", "UNKNOWN", "REJECTD", "ENROUTE",
];
const OTHER_STATE: &str = "other";

/// Describes the link's metrics and publishes them at 0 (not bound, nothing failed, no receipt).
pub(super) fn publish() {
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
    describe_counter!(
        SMS_RECEIPTS,
        Unit::Count,
        "SMPP delivery receipts stored, by state (DELIVRD, UNDELIV, EXPIRED, REJECTD, ...; \
         `other` for a state outside SMPP's)"
    );
    gauge!(SMPP_BOUND).set(0.0);
    counter!(SMPP_BIND_FAILURES).increment(0);
    for state in RECEIPT_STATES.into_iter().chain([OTHER_STATE]) {
        counter!(SMS_RECEIPTS, "state" => state).increment(0);
    }
}

pub(super) fn record_bound(bound: bool) {
    gauge!(SMPP_BOUND).set(if bound { 1.0 } else { 0.0 });
}

pub(super) fn record_bind_failure() {
    counter!(SMPP_BIND_FAILURES).increment(1);
}

/// Counts a stored receipt; a few a second at most, so the series is looked up each time.
pub(super) fn record_receipt(state: &str) {
    let state = RECEIPT_STATES
        .into_iter()
        .find(|known| *known == state)
        .unwrap_or(OTHER_STATE);
    counter!(SMS_RECEIPTS, "state" => state).increment(1);
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn rendered(record: impl FnOnce()) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, record);
        recorder.handle().render()
    }

    #[test]
    fn a_link_starts_unbound_with_every_receipt_state_at_zero() {
        let text = rendered(publish);
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
            record_bound(true);
            record_bind_failure();
            record_receipt("DELIVRD");
            record_receipt("DELIVRD");
            record_receipt("delivered, honest");
            record_receipt("UNDELIV");
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
