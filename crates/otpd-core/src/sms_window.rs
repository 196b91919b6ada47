//! The SMS parts an account sent in the last hour, as its hourly limit counts them.
//!
//! A count per clock hour let an account send twice its limit within minutes: the whole limit
//! just before an hour ended and again just after. The window keeps the parts sent in 5-minute
//! buckets instead, the current bucket and the 12 before it, and a send is judged against all
//! of them. Any 60 minutes, wherever they start, lie within the 13 buckets of the last send in
//! them, so no 60 minutes hold more than the limit. The price is that a part stays counted for
//! 60 to 65 minutes: the window errs on the side of refusing.

use std::time::Duration;

use crate::clock::Timestamp;

/// Parts sent in each of the last 13 five-minute buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsWindow {
    /// The start of the newest bucket, the last of `parts`.
    newest: Timestamp,
    /// Oldest first.
    parts: [u32; SmsWindow::BUCKETS],
}

/// Five minutes.
const BUCKET_MILLIS: i64 = 300_000;

impl SmsWindow {
    /// An hour of buckets and the current one.
    pub const BUCKETS: usize = 13;

    /// A window with nothing sent.
    pub fn empty() -> Self {
        Self {
            newest: Timestamp(0),
            parts: [0; Self::BUCKETS],
        }
    }

    /// The window as a store keeps it: the newest bucket's start and `BUCKETS` counts, oldest
    /// first. `None` for anything these could not have written.
    pub fn from_stored(newest: Timestamp, parts: impl IntoIterator<Item = i64>) -> Option<Self> {
        if newest.millis().rem_euclid(BUCKET_MILLIS) != 0 {
            return None;
        }
        let mut counts = [0; Self::BUCKETS];
        let mut stored = parts.into_iter();
        for count in &mut counts {
            *count = u32::try_from(stored.next()?).ok()?;
        }
        stored.next().is_none().then_some(Self {
            newest,
            parts: counts,
        })
    }

    /// The window as it stands at `now`: buckets more than an hour before `now`'s are dropped.
    /// A `now` before the newest bucket (a clock stepped back) moves nothing, so parts are
    /// never forgotten early.
    pub fn at(&self, now: Timestamp) -> Self {
        let current = Timestamp(now.millis() - now.millis().rem_euclid(BUCKET_MILLIS));
        let steps = current.millis().saturating_sub(self.newest.millis()) / BUCKET_MILLIS;
        if steps <= 0 {
            return self.clone();
        }
        let steps = usize::try_from(steps).map_or(Self::BUCKETS, |s| s.min(Self::BUCKETS));
        let mut parts = [0; Self::BUCKETS];
        parts[..Self::BUCKETS - steps].copy_from_slice(&self.parts[steps..]);
        Self {
            newest: current,
            parts,
        }
    }

    /// Every part in the window.
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|&parts| u64::from(parts)).sum()
    }

    /// How long after `now` the window first has room for `parts` more under `limit`: zero if it
    /// has room now, `None` if it never will (`parts` alone are over the limit). Buckets leave
    /// the window oldest first, each when a bucket 65 minutes younger begins.
    pub fn wait_for_room(&self, now: Timestamp, parts: u64, limit: u64) -> Option<Duration> {
        if parts > limit {
            return None;
        }
        let window = self.at(now);
        let mut total = window.total();
        let mut room_at = now;
        for (leaving, &count) in (1i64..).zip(&window.parts) {
            if total + parts <= limit {
                break;
            }
            total -= u64::from(count);
            room_at = Timestamp(window.newest.millis() + leaving * BUCKET_MILLIS);
        }
        Some(room_at.since(now))
    }

    /// Counts `parts` more in the newest bucket.
    pub fn add(&mut self, parts: u32) {
        let newest = &mut self.parts[Self::BUCKETS - 1];
        *newest = newest.saturating_add(parts);
    }

    /// The start of the newest bucket.
    pub fn newest(&self) -> Timestamp {
        self.newest
    }

    /// The counts, oldest first.
    pub fn parts(&self) -> &[u32; Self::BUCKETS] {
        &self.parts
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MINUTE: i64 = 60_000;
    /// A bucket's start.
    const START: Timestamp = Timestamp(1_699_999_800_000);

    fn sent_at(at: Timestamp, parts: u32) -> SmsWindow {
        let mut window = SmsWindow::empty().at(at);
        window.add(parts);
        window
    }

    #[test]
    fn a_part_stays_counted_for_an_hour_and_at_most_five_minutes_more() {
        let window = sent_at(Timestamp(START.0 + 4 * MINUTE), 3);
        assert_eq!(window.total(), 3);
        assert_eq!(window.at(Timestamp(START.0 + 64 * MINUTE)).total(), 3);
        assert_eq!(window.at(Timestamp(START.0 + 65 * MINUTE - 1)).total(), 3);
        assert_eq!(window.at(Timestamp(START.0 + 65 * MINUTE)).total(), 0);
        assert_eq!(window.at(Timestamp(START.0 + 999 * MINUTE)).total(), 0);
    }

    #[test]
    fn an_hour_ending_does_not_reset_the_count() {
        let hour_end = Timestamp(1_700_002_800_000);
        assert_eq!(hour_end.millis() % 3_600_000, 0);
        let before = sent_at(Timestamp(hour_end.0 - 1), 5);
        assert_eq!(before.at(Timestamp(hour_end.0 + 1)).total(), 5);
    }

    #[test]
    fn a_clock_stepped_back_forgets_nothing() {
        let mut window = sent_at(START, 2);
        window = window.at(Timestamp(START.0 - 30 * MINUTE));
        window.add(1);
        assert_eq!(window.newest(), START);
        assert_eq!(window.total(), 3);
        assert_eq!(window.at(Timestamp(START.0 + 64 * MINUTE)).total(), 3);
    }

    #[test]
    fn a_window_is_read_back_as_it_was_stored() {
        let mut window = sent_at(START, 2);
        window = window.at(Timestamp(START.0 + 10 * MINUTE));
        window.add(7);
        let stored: Vec<i64> = window.parts().iter().map(|&p| i64::from(p)).collect();
        assert_eq!(
            SmsWindow::from_stored(window.newest(), stored.clone()),
            Some(window.clone())
        );
        assert_eq!(stored[SmsWindow::BUCKETS - 3..], [2, 0, 7]);
        assert_eq!(
            SmsWindow::from_stored(window.newest(), stored[1..].to_vec()),
            None
        );
        assert_eq!(
            SmsWindow::from_stored(Timestamp(START.0 + 1), stored.clone()),
            None
        );
        let mut negative = stored.clone();
        negative[0] = -1;
        assert_eq!(SmsWindow::from_stored(window.newest(), negative), None);
    }

    #[test]
    fn room_comes_when_enough_buckets_have_left() {
        // 2 parts at START + 4 min, 3 at START + 12 min: a limit of 5 is full.
        let mut window = sent_at(Timestamp(START.0 + 4 * MINUTE), 2);
        window = window.at(Timestamp(START.0 + 12 * MINUTE));
        window.add(3);
        let now = Timestamp(START.0 + 20 * MINUTE);
        assert_eq!(window.wait_for_room(now, 0, 5), Some(Duration::ZERO));
        // One part more fits once the first bucket (START) leaves, at START + 65 min.
        assert_eq!(
            window.wait_for_room(now, 1, 5),
            Some(Duration::from_secs(45 * 60))
        );
        // Three parts more need the second bucket (START + 10 min) gone too.
        assert_eq!(
            window.wait_for_room(now, 3, 5),
            Some(Duration::from_secs(55 * 60))
        );
        assert_eq!(
            window.wait_for_room(now, 5, 5),
            Some(Duration::from_secs(55 * 60))
        );
        assert_eq!(window.wait_for_room(now, 6, 5), None);
        assert_eq!(window.wait_for_room(now, 1, 6), Some(Duration::ZERO));
    }

    proptest! {
        /// The wait is exact: the window has room at its end and none a millisecond before.
        #[test]
        fn the_wait_for_room_ends_exactly_when_room_comes(
            sends in proptest::collection::vec((0i64..20 * MINUTE, 1u32..4), 1..40),
            later in 0i64..90 * MINUTE,
            parts in 0u64..8,
            limit in 1u64..30,
        ) {
            let mut window = SmsWindow::empty();
            let mut now = START.0;
            for (gap, sent) in sends {
                now += gap;
                window = window.at(Timestamp(now));
                window.add(sent);
            }
            let now = Timestamp(now + later);
            let has_room = |at: Timestamp| window.at(at).total() + parts <= limit;
            match window.wait_for_room(now, parts, limit) {
                None => prop_assert!(parts > limit),
                Some(wait) => {
                    prop_assert!(has_room(now.plus(wait)));
                    if !wait.is_zero() {
                        prop_assert!(!has_room(now.plus(wait - Duration::from_millis(1))));
                    }
                }
            }
        }

        /// Sends at random moments, each let through only if the window at that moment has room:
        /// no 60 minutes hold more than the limit.
        #[test]
        fn no_sixty_minutes_hold_more_than_the_limit(
            limit in 1u64..20,
            sends in proptest::collection::vec((0i64..20 * MINUTE, 1u32..4), 1..120),
        ) {
            let mut window = SmsWindow::empty();
            let mut now = START.0;
            let mut accepted: Vec<(i64, u64)> = Vec::new();
            for (gap, parts) in sends {
                now += gap;
                window = window.at(Timestamp(now));
                if window.total() + u64::from(parts) <= limit {
                    window.add(parts);
                    accepted.push((now, u64::from(parts)));
                }
            }
            for &(end, _) in &accepted {
                let in_hour: u64 = accepted
                    .iter()
                    .filter(|&&(at, _)| at >= end - 60 * MINUTE && at <= end)
                    .map(|&(_, parts)| parts)
                    .sum();
                prop_assert!(in_hour <= limit, "{in_hour} parts in the hour to {end}");
            }
        }
    }
}
