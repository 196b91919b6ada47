//! Slows down guessing of the console password. An address that gave a wrong password
//! `MAX_FAILURES` times within `WINDOW` is refused until that window has passed, right password
//! or not; a right password clears its count. At this server's speed an unthrottled guesser
//! could try thousands of passwords a second, and an operator-chosen one may be a phrase from a
//! dictionary. Counts live in memory, per node: a restart forgets them. An IPv6 client counts by
//! its /64, which one host can send from whole.
//!
//! Behind a reverse proxy every browser has the proxy's address, so one guesser locks every
//! operator behind that proxy out for the window: the price of not trusting a forwarded address
//! (which the guesser would write itself).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Wrong passwords an address may give within `WINDOW`.
const MAX_FAILURES: u32 = 10;
/// How long failures count, and how long an address that used them up waits.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Addresses followed at once; beyond it the oldest count is dropped, so that a guesser with
/// many addresses cannot grow the map without bound.
const MAX_TRACKED: usize = 10_000;

/// The failures of one address since its window began.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

/// Failed sign-ins by client address (`None` when the connection's address is unknown).
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<Option<IpAddr>, Failures>>,
}

impl LoginThrottle {
    fn failures(&self) -> MutexGuard<'_, HashMap<Option<IpAddr>, Failures>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long `client` must still wait, if it has used up its failures.
    pub fn wait(&self, client: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let client = client.map(guesser);
        let failures = self.failures();
        let failed = failures.get(&client)?;
        let elapsed = now.saturating_duration_since(failed.since);
        (failed.count >= MAX_FAILURES && elapsed < WINDOW).then(|| WINDOW - elapsed)
    }

    /// Counts a wrong password; returns true when this one used up the address's failures.
    pub fn failed(&self, client: Option<IpAddr>, now: Instant) -> bool {
        let client = client.map(guesser);
        let mut failures = self.failures();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&client) {
            failures.retain(|_, failed| now.saturating_duration_since(failed.since) < WINDOW);
            if failures.len() >= MAX_TRACKED
                && let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, failed)| failed.since)
                    .map(|(address, _)| *address)
            {
                failures.remove(&oldest);
            }
        }
        let failed = failures.entry(client).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.saturating_duration_since(failed.since) >= WINDOW {
            *failed = Failures {
                count: 0,
                since: now,
            };
        }
        failed.count += 1;
        failed.count == MAX_FAILURES
    }

    /// The right password: the address starts afresh.
    pub fn succeeded(&self, client: Option<IpAddr>) {
        self.failures().remove(&client.map(guesser));
    }
}

/// Whom an address stands for. One IPv6 host usually holds a whole /64 and can send from any
/// address in it, so its count is kept per /64; an IPv4 address mapped into IPv6 is itself.
fn guesser(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn address(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    #[test]
    fn an_address_that_used_up_its_failures_waits_out_the_window() {
        let throttle = LoginThrottle::default();
        let start = Instant::now();
        for n in 1..MAX_FAILURES {
            assert!(!throttle.failed(address(1), start), "failure {n}");
            assert_eq!(throttle.wait(address(1), start), None);
        }
        assert!(throttle.failed(address(1), start), "the last one counts");
        let later = start + Duration::from_secs(60);
        assert_eq!(
            throttle.wait(address(1), later),
            Some(WINDOW - Duration::from_secs(60))
        );
        assert_eq!(
            throttle.wait(address(2), later),
            None,
            "other addresses go on"
        );
        assert_eq!(throttle.wait(None, later), None);
        assert_eq!(
            throttle.wait(address(1), start + WINDOW),
            None,
            "the window passed"
        );
        assert!(
            !throttle.failed(address(1), start + WINDOW),
            "and counts start again"
        );
    }

    #[test]
    fn the_right_password_clears_the_count() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        for _ in 1..MAX_FAILURES {
            throttle.failed(address(1), now);
        }
        throttle.succeeded(address(1));
        for _ in 1..MAX_FAILURES {
            throttle.failed(address(1), now);
        }
        assert_eq!(throttle.wait(address(1), now), None);
    }

    #[test]
    fn an_ipv6_network_counts_as_one_guesser() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        let host = |last: u16| {
            Some(IpAddr::V6(Ipv6Addr::new(
                0x2001, 0xdb8, 0, 7, 0, 0, 0, last,
            )))
        };
        for n in 1..=MAX_FAILURES {
            throttle.failed(host(n as u16), now);
        }
        assert!(
            throttle.wait(host(999), now).is_some(),
            "the whole /64 waits"
        );
        let neighbour = Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 8, 0, 0, 0, 1)));
        assert_eq!(throttle.wait(neighbour, now), None, "the next /64 does not");
        let mapped = Some(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()));
        for _ in 0..MAX_FAILURES {
            throttle.failed(mapped, now);
        }
        assert!(
            throttle.wait(address(1), now).is_some(),
            "a mapped address is its IPv4 one"
        );
        assert_eq!(throttle.wait(address(2), now), None);
    }

    #[test]
    fn the_map_stays_bounded_and_drops_the_oldest_count() {
        let throttle = LoginThrottle::default();
        let start = Instant::now();
        for n in 0..MAX_TRACKED {
            let client = Some(IpAddr::from(((n as u128) << 64).to_be_bytes()));
            throttle.failed(client, start + Duration::from_millis(n as u64));
        }
        let newcomer = address(9);
        throttle.failed(newcomer, start + Duration::from_secs(30));
        let failures = throttle.failures();
        assert_eq!(failures.len(), MAX_TRACKED);
        assert!(failures.contains_key(&newcomer));
        assert!(
            !failures.contains_key(&Some(IpAddr::from(0u128.to_be_bytes()))),
            "the oldest went"
        );
    }
}
