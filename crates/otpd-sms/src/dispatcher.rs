//! The outbox dispatcher: claims due messages from the store, opens their sealed text, hands
//! them to the transport and stores each outcome, retrying transient failures with capped
//! exponential backoff and jitter. Messages whose code expired or was cancelled are dropped by
//! the store's claim, never sent. After a crash, unfinished messages come back when their claim
//! is released (at start) or its lease runs out (on shared stores).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use otpd_core::ServerKey;
use otpd_core::crypto::fill_random;
use otpd_core::metrics::AttemptMetrics;
use otpd_core::outbox::{AttemptOutcome, MessageId, MessageText, OutboxMessage, RetryPolicy};
use otpd_core::ports::{
    CarrierLink, DeliveryReport, DeliveryStatus, Dispatcher, OutgoingSms, SmsTransport, Store,
};
use otpd_core::sms::{ComposedSms, Sender};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinSet;

/// How the dispatcher paces itself.
#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    /// Messages in flight at once.
    pub concurrency: usize,
    /// How long a claim holds before another worker may take the message.
    pub lease: Duration,
    /// How often the outbox is looked at when nobody says there is something new.
    pub poll_interval: Duration,
    /// How long shutdown waits for attempts in flight.
    pub drain_timeout: Duration,
    pub retry: RetryPolicy,
}

impl DispatchSettings {
    /// `--outbox-lease-seconds` unless given.
    pub const DEFAULT_LEASE_SECONDS: u32 = 60;
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            lease: Duration::from_secs(Self::DEFAULT_LEASE_SECONDS.into()),
            poll_interval: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

struct Inner {
    store: Arc<dyn Store>,
    transport: Arc<dyn SmsTransport>,
    key: Arc<ServerKey>,
    settings: DispatchSettings,
    permits: Arc<Semaphore>,
    /// Messages claimed by this process whose attempt has not finished; `idle` fires when the
    /// set empties. At shutdown, what is left is handed back to the outbox.
    in_flight: Mutex<HashSet<MessageId>>,
    idle: Notify,
    outcomes: Mutex<Outcomes>,
    attempts: AttemptMetrics,
}

/// Outcomes stored together at most. A backlog (the database slowed down, a burst of sends)
/// goes in batches of this size, not all at once: each batch's transaction stays short, what
/// waits for it stays bounded, and a batch as one statement over arrays (tried on PostgreSQL,
/// see docs/benchmark-history.md) was planned as a read of the whole outbox once its arrays
/// held thousands of ids, and fell further behind with every batch.
const MAX_OUTCOMES_A_BATCH: usize = 256;

/// Takes the oldest queued outcomes, up to a batch (from the front of a deque: a backlog of
/// thousands is not moved along at every batch).
fn next_batch<T>(queued: &mut VecDeque<T>) -> Vec<T> {
    let oldest = queued.len().min(MAX_OUTCOMES_A_BATCH);
    queued.drain(..oldest).collect()
}

/// Attempt outcomes waiting to be stored, and whether a task is storing a batch now.
#[derive(Default)]
struct Outcomes {
    queued: VecDeque<QueuedOutcome>,
    writing: bool,
}

/// An attempt's outcome, and until when storing it may still be tried.
struct QueuedOutcome {
    id: MessageId,
    outcome: AttemptOutcome,
    store_by: Instant,
}

/// A batch of outcomes the database did not take is offered again after this, then after twice
/// as long each time, up to `OUTCOME_RETRY_MAX_WAIT`.
const OUTCOME_RETRY_FIRST_WAIT: Duration = Duration::from_millis(100);
const OUTCOME_RETRY_MAX_WAIT: Duration = Duration::from_secs(2);

/// Until when the outcome of an attempt on a message claimed at `claimed_at` may be stored:
/// three quarters of the claim's lease. Past the lease another worker may claim the message and
/// try it again, and an outcome stored then would end that worker's claim under it; the quarter
/// left covers the moments between the store's claim and `claimed_at`, and the nodes' clocks.
fn store_outcome_by(claimed_at: Instant, lease: Duration) -> Instant {
    claimed_at + lease.mul_f64(0.75)
}

impl Inner {
    fn outcomes(&self) -> std::sync::MutexGuard<'_, Outcomes> {
        self.outcomes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<MessageId>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Clone)]
pub struct OutboxDispatcher {
    inner: Arc<Inner>,
}

impl OutboxDispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        transport: Arc<dyn SmsTransport>,
        key: Arc<ServerKey>,
        settings: DispatchSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                transport,
                key,
                permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
                settings,
                in_flight: Mutex::new(HashSet::new()),
                idle: Notify::new(),
                outcomes: Mutex::new(Outcomes::default()),
                attempts: AttemptMetrics::default(),
            }),
        }
    }

    /// Delivers until `shutdown` resolves, then waits (bounded) for attempts in flight. What is
    /// not delivered stays in the outbox for the next start.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let inner = self.inner;
        let permits = inner.permits.clone();
        let mut attempts = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while attempts.try_join_next().is_some() {}
            let room = permits.available_permits();
            let mut claimed_full_batch = false;
            if room > 0 {
                match inner.store.claim_outbox(room, inner.settings.lease).await {
                    Ok(messages) => {
                        let claimed_at = Instant::now();
                        claimed_full_batch = messages.len() == room;
                        inner
                            .in_flight()
                            .extend(messages.iter().map(|message| message.id.clone()));
                        for message in messages {
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                break;
                            };
                            let inner = inner.clone();
                            attempts.spawn(async move {
                                attempt(&inner, message, claimed_at).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot read the outbox; retrying"),
                }
            }
            if claimed_full_batch {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(inner.settings.poll_interval) => {}
                Some(_) = attempts.join_next(), if !attempts.is_empty() => {}
            }
        }
        // Attempts started by the loop and by `deliver` alike.
        let drained = tokio::time::timeout(inner.settings.drain_timeout, async {
            while attempts.join_next().await.is_some() {}
            loop {
                let idle = inner.idle.notified();
                if inner.in_flight().is_empty() {
                    break;
                }
                idle.await;
            }
        })
        .await;
        if drained.is_err() {
            // Give the unfinished claims back now rather than when their lease runs out: on a
            // shared database another node takes them over at once.
            let unfinished: Vec<MessageId> = inner.in_flight().iter().cloned().collect();
            match inner.store.release_messages(&unfinished).await {
                Ok(released) => tracing::warn!(
                    released,
                    "stopped with deliveries in flight; they go back to the outbox"
                ),
                Err(error) => tracing::warn!(
                    %error,
                    "stopped with deliveries in flight; they return when their lease runs out"
                ),
            }
        }
    }
}

#[async_trait]
impl Dispatcher for OutboxDispatcher {
    fn claim(&self) -> Duration {
        self.inner.settings.lease
    }

    fn carrier_link(&self) -> CarrierLink {
        self.inner.transport.carrier_link()
    }

    /// A transport that answers at once (a file, the console) is tried within the send's own
    /// poll: spawning every first attempt and waiting for its report cost 2.5% of a send's
    /// instructions (callgrind). An attempt that has to wait (for a provider, for a free slot)
    /// goes on in a task of its own, so that a client that hangs up cannot cancel it half way;
    /// the send waits for its report at most `wait`.
    async fn deliver(&self, message: OutboxMessage, wait: Duration) -> Option<DeliveryReport> {
        self.inner.in_flight().insert(message.id.clone());
        // The send's commit claimed the message a moment ago.
        let claimed_at = Instant::now();
        let mut first = Box::pin(first_attempt(Arc::clone(&self.inner), message, claimed_at));
        if let Some(report) = ready_now(first.as_mut()) {
            return report;
        }
        let (sender, receiver) = oneshot::channel();
        tokio::spawn(async move {
            let _ = sender.send(first.await);
        });
        tokio::time::timeout(wait, receiver)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }
}

/// Polls `future` once, for a result it has without waiting.
fn ready_now<F: Future>(future: Pin<&mut F>) -> Option<F::Output> {
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A message's first attempt, made for the send that queued it: the report is handed back as
/// soon as the transport has answered, and the outcome is stored after.
async fn first_attempt(
    inner: Arc<Inner>,
    message: OutboxMessage,
    claimed_at: Instant,
) -> Option<DeliveryReport> {
    // The same limit on deliveries in flight as the outbox loop's.
    let Ok(permit) = inner.permits.acquire().await else {
        return None;
    };
    let attempted = try_once(&inner, message, claimed_at).await;
    drop(permit);
    let report = attempted.outcome.report().clone();
    queue_outcome(&inner, attempted);
    Some(report)
}

/// One delivery attempt, start to stored outcome. The message was put in `in_flight` when it
/// was claimed; it leaves when its outcome is stored.
async fn attempt(inner: &Arc<Inner>, message: OutboxMessage, claimed_at: Instant) {
    let attempted = try_once(inner, message, claimed_at).await;
    queue_outcome(inner, attempted);
}

/// Hands the message, claimed at `claimed_at`, to the transport and judges its answer.
async fn try_once(inner: &Inner, message: OutboxMessage, claimed_at: Instant) -> QueuedOutcome {
    let OutboxMessage {
        id,
        verify_id,
        to,
        from,
        text,
        encoding,
        parts,
        entity_id,
        template_id,
        attempts,
    } = message;
    let text = match text {
        MessageText::Open(text) => Some(text),
        MessageText::Sealed(sealed) => inner
            .key
            .open(&sealed)
            .map(|text| String::from_utf8_lossy(&text).into_owned()),
    };
    let report = match text {
        Some(text) => {
            let sms = OutgoingSms {
                message_id: id.clone(),
                verify_id,
                to,
                from: Sender::parse(&from).unwrap_or(Sender::Alphanumeric(from)),
                message: ComposedSms {
                    text,
                    encoding,
                    parts,
                },
                entity_id,
                template_id,
            };
            inner.transport.send(&sms).await
        }
        None => DeliveryReport {
            retry_after: None,
            status: DeliveryStatus::PermanentFailure,
            message_id: None,
            status_code: 500,
            status_message: "the message does not open with this server key".into(),
        },
    };
    let outcome = inner.settings.retry.outcome(report, attempts + 1, jitter);
    inner.attempts.record(&outcome);
    match &outcome {
        // A first attempt's success is on its send request's log line.
        AttemptOutcome::Accepted(_) if attempts == 0 => {
            tracing::debug!(message_id = %id, "SMS handed to the carrier")
        }
        AttemptOutcome::Accepted(_) => {
            tracing::info!(message_id = %id, attempt = attempts + 1, "SMS handed to the carrier")
        }
        AttemptOutcome::Retry { report, .. } => {
            tracing::warn!(message_id = %id, status = report.status.as_str(), reason = %report.status_message, "SMS attempt failed; will retry")
        }
        AttemptOutcome::Failed(report) => {
            tracing::error!(message_id = %id, status = report.status.as_str(), reason = %report.status_message, "SMS delivery failed for good")
        }
    }
    QueuedOutcome {
        id,
        outcome,
        store_by: store_outcome_by(claimed_at, inner.settings.lease),
    }
}

/// Queues an attempt's outcome to be stored. Outcomes that finish while a batch is being
/// written wait for the next one: whoever finds nobody writing starts a task that writes, for
/// itself and for everyone who queues meanwhile, so a busy dispatcher stores many outcomes per
/// transaction. The send that made the attempt has its report already, without waiting for
/// this commit (a second fsync: at one connection, a send's latency went from 1.1-1.3 ms to
/// 0.8-1.1 ms without it). Until the outcome is stored, a moment later, a search shows the
/// message without a delivery status; a crash in between sends it again at the next start, as
/// a crash between the carrier's answer and the commit always did.
fn queue_outcome(inner: &Arc<Inner>, attempted: QueuedOutcome) {
    {
        let mut outcomes = inner.outcomes();
        outcomes.queued.push_back(attempted);
        if outcomes.writing {
            return;
        }
        outcomes.writing = true;
    }
    tokio::spawn(write_outcomes(Arc::clone(inner)));
}

/// Stores queued outcomes until none is left, then ends their attempts.
async fn write_outcomes(inner: Arc<Inner>) {
    loop {
        let batch = {
            let mut outcomes = inner.outcomes();
            if outcomes.queued.is_empty() {
                outcomes.writing = false;
                return;
            }
            next_batch(&mut outcomes.queued)
        };
        let store_by = batch.iter().map(|queued| queued.store_by).min();
        let batch: Arc<[(MessageId, AttemptOutcome)]> = batch
            .into_iter()
            .map(|queued| (queued.id, queued.outcome))
            .collect();
        store_batch(&inner, Arc::clone(&batch), store_by).await;
        for (id, _) in batch.iter() {
            end_attempt(&inner, id);
        }
    }
}

/// Stores a batch of outcomes, offering it again while the database is away (a restart, a
/// failover, a dropped connection) until the first of its deadlines. An outcome that is not
/// stored leaves its message claimed until the lease runs out, and it is then sent again: a
/// database back within seconds would otherwise cost a second SMS for every attempt that ended
/// while it was away.
async fn store_batch(
    inner: &Inner,
    batch: Arc<[(MessageId, AttemptOutcome)]>,
    store_by: Option<Instant>,
) {
    let mut wait = OUTCOME_RETRY_FIRST_WAIT;
    loop {
        let Err(error) = inner.store.finish_attempts(Arc::clone(&batch)).await else {
            return;
        };
        if store_by.is_none_or(|deadline| Instant::now() + wait >= deadline) {
            // The claims' leases run out and the messages are tried again: at worst sent twice.
            tracing::error!(%error, messages = batch.len(), "cannot record delivery attempts");
            inner.attempts.record_unrecorded(batch.len());
            return;
        }
        tracing::warn!(
            %error,
            messages = batch.len(),
            retry_in_ms = wait.as_millis(),
            "cannot record delivery attempts yet; trying again"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(OUTCOME_RETRY_MAX_WAIT);
    }
}

/// The attempt is over: it leaves `in_flight`.
fn end_attempt(inner: &Inner, id: &MessageId) {
    let mut in_flight = inner.in_flight();
    in_flight.remove(id);
    if in_flight.is_empty() {
        inner.idle.notify_waiters();
    }
}

/// A number in 0.0..1.0 from the OS CSPRNG, for retry jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    fill_random(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use std::time::{Duration, Instant};

    use super::{MAX_OUTCOMES_A_BATCH, next_batch, store_outcome_by};

    #[test]
    fn an_outcome_is_offered_for_three_quarters_of_its_lease() {
        let claimed_at = Instant::now();
        for (lease, offered) in [(60_000, 45_000), (5_000, 3_750)] {
            let deadline = store_outcome_by(claimed_at, Duration::from_millis(lease));
            assert_eq!(deadline - claimed_at, Duration::from_millis(offered));
        }
    }

    #[test]
    fn a_backlog_is_stored_oldest_first_in_bounded_batches() {
        let mut queued: VecDeque<usize> = (0..2 * MAX_OUTCOMES_A_BATCH + 88).collect();
        let mut batches = Vec::new();
        while !queued.is_empty() {
            batches.push(next_batch(&mut queued));
        }
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [MAX_OUTCOMES_A_BATCH, MAX_OUTCOMES_A_BATCH, 88]);
        let in_order: Vec<usize> = batches.concat();
        assert_eq!(
            in_order,
            (0..2 * MAX_OUTCOMES_A_BATCH + 88).collect::<Vec<_>>()
        );
    }
}
