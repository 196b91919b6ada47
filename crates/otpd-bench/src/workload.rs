//! The operations measured and the requests of each: the codes a verify or check run meets are
//! sent just before it and read back from the file SMS sink.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;

use crate::cli::Args;
use crate::deployment::Deployed;
use crate::load::{self, MakeRequest};
use crate::report::{Row, too_much_steal};
use crate::requests::{next_destination, wrong};

/// What an operation is, for issue 6's targets (the mix is neither a send nor a verify).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Send,
    Verify,
    Mix,
}

/// The operations measured, in table order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    PinpointSend,
    PinpointVerifyRight,
    PinpointVerifyWrong,
    AmmSend,
    AmmCheck,
    Mix,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Self::PinpointSend,
        Self::PinpointVerifyRight,
        Self::PinpointVerifyWrong,
        Self::AmmSend,
        Self::AmmCheck,
        Self::Mix,
    ];

    /// Prepared codes one request uses up.
    fn codes_per_request(self) -> f64 {
        match self {
            Self::PinpointSend | Self::AmmSend => 0.0,
            Self::PinpointVerifyRight | Self::AmmCheck => 1.0,
            Self::PinpointVerifyWrong => 1.0 / PINPOINT_WRONG_PER_CODE as f64,
            Self::Mix => 6.0 / 11.0 / AMM_WRONG_PER_CODE as f64,
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Self::PinpointSend | Self::AmmSend => Kind::Send,
            Self::PinpointVerifyRight | Self::PinpointVerifyWrong | Self::AmmCheck => Kind::Verify,
            Self::Mix => Kind::Mix,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::PinpointSend => "pinpoint send",
            Self::PinpointVerifyRight => "pinpoint verify (right code)",
            Self::PinpointVerifyWrong => "pinpoint verify (wrong code)",
            Self::AmmSend => "amm send",
            Self::AmmCheck => "amm check",
            Self::Mix => "mix (1 send : 1.2 checks)",
        }
    }
}

/// The most codes sent before one run (the send rate makes more take long to prepare).
const MAX_CODES_PER_RUN: u64 = 250_000;

/// The attempts a prepared code is sent with: Pinpoint's `AllowedAttempts`, amm's `max_retry`.
const PINPOINT_ATTEMPTS: u8 = 5;
const AMM_ATTEMPTS: u8 = 20;

/// Wrong guesses one prepared code takes while staying live: all its attempts but one.
const PINPOINT_WRONG_PER_CODE: usize = PINPOINT_ATTEMPTS as usize - 1;
const AMM_WRONG_PER_CODE: usize = AMM_ATTEMPTS as usize - 1;

/// The code the `n`th guess of a run uses, when each code takes `per_code` guesses: the codes
/// are taken in turn, so the guesses of one code lie a whole pool apart (consecutive requests
/// run at once on different connections, and real users do not race their own typos).
fn code_for_guess<T>(codes: &[T], n: usize, per_code: usize) -> Option<&T> {
    if n >= codes.len().saturating_mul(per_code) {
        return None;
    }
    codes.get(n % codes.len())
}

/// The operations `--only` selects, in table order.
pub fn selected_operations(args: &Args) -> impl Iterator<Item = Operation> + '_ {
    Operation::ALL.into_iter().filter(|operation| {
        args.only
            .as_deref()
            .is_none_or(|only| operation.name().contains(only))
    })
}

/// Codes for one run of `operation` expected to go at `rate` requests a second: its warm-up
/// and window with a fifth to spare, and never fewer than `--pool`.
pub fn codes_for(args: &Args, operation: Operation, rate: f64) -> u64 {
    let requests = rate * (args.warmup + args.duration) * 1.2;
    ((requests * operation.codes_per_request()) as u64).clamp(args.pool, MAX_CODES_PER_RUN)
}

/// How fast a run that used up its prepared codes before 90% of its window went, at least, so
/// that it can run again with enough; `None` if it did not use them up, needs no codes, or
/// already had the most a run gets. A run that used them up in its warm-up measured nothing:
/// its `pool` codes went in the warm-up and what it had of the window.
fn rate_of_run_short_of_codes(
    args: &Args,
    operation: Operation,
    pool: u64,
    row: &Row,
) -> Option<f64> {
    let codes_per_request = operation.codes_per_request();
    if !row.used_up_codes || codes_per_request == 0.0 || pool >= MAX_CODES_PER_RUN {
        return None;
    }
    let spent_seconds = (args.warmup + row.measured_seconds).max(f64::EPSILON);
    Some(
        row.requests_per_second
            .max(pool as f64 / codes_per_request / spent_seconds),
    )
}

/// Times a run is run again because the host took too much of the machine during it. Steal
/// comes in spells of seconds here: a capped two-node reading under 17.5% steal read 0.94 of
/// one node, where its second reading read 2.18 (2026-12-07).
const STOLEN_RUNS_AGAIN: usize = 2;

/// Runs `run` with `pool` codes; a run that used them up before the end of its window runs
/// again with enough for the rate it showed. One that used them up in its warm-up shows only a
/// lower bound, so it may take a few runs; each has at least a fifth more codes, up to the cap.
/// A run the host took more than a little of the machine from runs again too, up to
/// `STOLEN_RUNS_AGAIN` times; the last is kept, and the report names it if it still had steal.
pub async fn run_with_enough_codes<Run, Ran>(
    args: &Args,
    operation: Operation,
    mut pool: u64,
    run: Run,
) -> anyhow::Result<Row>
where
    Run: Fn(u64) -> Ran,
    Ran: Future<Output = anyhow::Result<Row>>,
{
    let mut row = run(pool).await?;
    let mut stolen_runs = 0;
    loop {
        if let Some(rate) = rate_of_run_short_of_codes(args, operation, pool, &row) {
            pool = codes_for(args, operation, rate);
            println!("  running it again with {pool} codes");
        } else if let Some(steal) = too_much_steal(&row)
            && stolen_runs < STOLEN_RUNS_AGAIN
        {
            stolen_runs += 1;
            println!("  the host took {steal:.1}% of the machine: running it again");
        } else {
            return Ok(row);
        }
        row = run(pool).await?;
    }
}

/// The requests of one run of `operation` against `deployed`; a verify or check run gets
/// `pool` codes sent just before it.
pub async fn workload(
    operation: Operation,
    deployed: &Deployed,
    pool: u64,
) -> anyhow::Result<MakeRequest> {
    let c = deployed.client.clone();
    Ok(match operation {
        Operation::PinpointSend => {
            Arc::new(move |_| Some(c.pinpoint_send(&next_destination(), None)))
        }
        Operation::AmmSend => Arc::new(move |_| Some(c.amm_send(&next_destination(), None))),
        Operation::PinpointVerifyRight | Operation::PinpointVerifyWrong => {
            let codes = prepare_pinpoint(deployed, pool).await?;
            let right = operation == Operation::PinpointVerifyRight;
            let per_code = if right { 1 } else { PINPOINT_WRONG_PER_CODE };
            Arc::new(move |n| {
                let (to, code) = code_for_guess(&codes, usize::try_from(n).ok()?, per_code)?;
                Some(if right {
                    c.pinpoint_verify(to, code)
                } else {
                    c.pinpoint_verify(to, &wrong(code))
                })
            })
        }
        Operation::AmmCheck => {
            let codes = prepare_amm(deployed, pool).await?;
            Arc::new(move |n| {
                let (id, code) = codes.get(usize::try_from(n).ok()?)?;
                Some(c.amm_check(id, code))
            })
        }
        Operation::Mix => {
            let codes = prepare_amm(deployed, pool).await?;
            Arc::new(move |n| {
                // 5 of every 11 requests send, 6 check (a wrong code: the user's typo).
                if n % 11 < 5 {
                    return Some(c.amm_send(&next_destination(), None));
                }
                let check = usize::try_from(n / 11 * 6 + n % 11 - 5).ok()?;
                let (id, code) = code_for_guess(&codes, check, AMM_WRONG_PER_CODE)?;
                Some(c.amm_check(id, &wrong(code)))
            })
        }
    })
}

/// Connections the codes of a run are sent on before it (not measured).
const PREPARING_CONNECTIONS: usize = 16;

/// Sends `count` Pinpoint codes and reads them back from the file sink: (destination, code).
async fn prepare_pinpoint(
    deployed: &Deployed,
    count: u64,
) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let c = deployed.client.clone();
    let make: MakeRequest =
        Arc::new(move |_| Some(c.pinpoint_send(&next_destination(), Some(PINPOINT_ATTEMPTS))));
    let (_, codes) = send_codes(deployed, count, make).await?;
    Ok(Arc::new(codes))
}

/// Sends `count` amm codes: (verify_id, code).
async fn prepare_amm(
    deployed: &Deployed,
    count: u64,
) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let destinations: Arc<Vec<String>> = Arc::new((0..count).map(|_| next_destination()).collect());
    let (c, d) = (deployed.client.clone(), destinations.clone());
    let make: MakeRequest = Arc::new(move |n| Some(c.amm_send(&d[n as usize], Some(AMM_ATTEMPTS))));
    let (answers, sent) = send_codes(deployed, count, make).await?;
    let code_by_destination: HashMap<String, String> = sent.into_iter().collect();
    let mut codes = Vec::with_capacity(answers.len());
    for (n, body) in answers {
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        let id = answer["verify_id"]
            .as_str()
            .context("verify_id")?
            .to_owned();
        if let Some(code) = code_by_destination.get(&destinations[n as usize]) {
            codes.push((id, code.clone()));
        }
    }
    Ok(Arc::new(codes))
}

/// Sends `count` codes through the first node with `make` (not measured), and returns each
/// request's answer by its number and the (destination, code) the file sink wrote meanwhile.
async fn send_codes(
    deployed: &Deployed,
    count: u64,
    make: MakeRequest,
) -> anyhow::Result<(Vec<(u64, Bytes)>, Vec<(String, String)>)> {
    let before = file_length(&deployed.sms_file);
    let address = deployed.servers[0].address;
    let answers = load::collect(address, PREPARING_CONNECTIONS, count, make).await?;
    Ok((answers, codes_sent(&deployed.sms_file, before)?))
}

/// Where the next message the file sink writes will start.
fn file_length(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

/// (destination without its `+`, code) of each code the file sink wrote after byte `offset`.
fn codes_sent(path: &Path, offset: u64) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sms_lines(path, offset)?
        .into_iter()
        .filter_map(|(to, text)| Some((to.trim_start_matches('+').to_owned(), code_in(&text)?)))
        .collect())
}

/// (to, text) of each message the file sink wrote after byte `offset`.
fn sms_lines(path: &Path, offset: u64) -> anyhow::Result<Vec<(String, String)>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_string(&mut text)?;
    }
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)?;
            Ok((
                value["to"].as_str().unwrap_or_default().to_owned(),
                value["text"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

/// The code in a message's text: its first run of 4 to 8 digits.
fn code_in(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|word| (4..=8).contains(&word.len()))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_take_the_codes_in_turn_and_stop_when_each_had_its_share() {
        let codes = ["a", "b", "c"];
        let used: Vec<_> = (0..7).map(|n| code_for_guess(&codes, n, 2)).collect();
        assert_eq!(
            used,
            [
                Some(&"a"),
                Some(&"b"),
                Some(&"c"),
                Some(&"a"),
                Some(&"b"),
                Some(&"c"),
                None
            ]
        );
        assert_eq!(code_for_guess::<&str>(&[], 0, 4), None);
    }

    fn args(duration: f64, warmup: f64) -> Args {
        use clap::Parser;
        let mut args = Args::parse_from(["otpd-bench"]);
        (args.duration, args.warmup) = (duration, warmup);
        args
    }

    #[test]
    fn a_run_that_used_up_its_codes_in_the_warm_up_is_given_enough_for_its_rate() {
        let args = args(10.0, 1.0);
        // 40,000 right-code checks gone within the 1 s warm-up: at least 40,000 a second.
        let rate =
            rate_of_run_short_of_codes(&args, Operation::AmmCheck, 40_000, &used_up(0.0, 0.0));
        assert_eq!(rate, Some(40_000.0));
        assert_eq!(
            codes_for(&args, Operation::AmmCheck, 40_000.0),
            MAX_CODES_PER_RUN,
            "11 s at 40,000 a second, capped"
        );
        // Used up 2 s into the window at 30,000 a second measured there.
        let rate = rate_of_run_short_of_codes(
            &args,
            Operation::PinpointVerifyRight,
            90_000,
            &used_up(2.0, 30_000.0),
        );
        assert_eq!(rate, Some(30_000.0));
    }

    #[test]
    fn a_run_is_not_run_again_if_it_did_not_use_up_its_codes_needed_none_or_had_the_most() {
        let args = args(10.0, 1.0);
        let again =
            |operation, pool, row: &Row| rate_of_run_short_of_codes(&args, operation, pool, row);
        let ran_its_window = Row {
            measured_seconds: 10.0,
            requests_per_second: 20_000.0,
            ..Row::default()
        };
        assert_eq!(again(Operation::AmmCheck, 40_000, &ran_its_window), None);
        // Nothing completed in the window: short, but not for want of codes.
        assert_eq!(again(Operation::AmmCheck, 40_000, &Row::default()), None);
        assert_eq!(
            again(Operation::PinpointSend, 40_000, &used_up(0.0, 0.0)),
            None
        );
        let short = used_up(4.0, 20_000.0);
        assert_eq!(again(Operation::AmmCheck, MAX_CODES_PER_RUN, &short), None);
        assert!(again(Operation::PinpointVerifyWrong, 40_000, &short).is_some());
    }

    /// A reading: its rate, the host's steal during it, and whether it ran out of codes.
    type Reading = (f64, f64, bool);

    /// Runs `run_with_enough_codes` over readings that come in the order given (the last again
    /// once they are used up): the rate of the one kept, and how many were taken.
    fn kept_reading(args: &Args, readings: &[Reading]) -> (f64, usize) {
        let taken = std::cell::Cell::new(0);
        let run = |_pool| {
            let (requests_per_second, steal, used_up_codes) =
                readings[taken.get().min(readings.len() - 1)];
            taken.set(taken.get() + 1);
            async move {
                Ok(Row {
                    measured_seconds: 10.0,
                    requests_per_second,
                    steal_percent: Some(steal),
                    used_up_codes,
                    ..Row::default()
                })
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let row = runtime
            .block_on(run_with_enough_codes(
                args,
                Operation::AmmCheck,
                40_000,
                run,
            ))
            .expect("row");
        (row.requests_per_second, taken.get())
    }

    #[test]
    fn a_run_the_host_took_the_machine_from_runs_again_at_most_twice() {
        let args = args(10.0, 1.0);
        let clean = (3.0, 0.4, false);
        let stolen = (1.0, 17.5, false);
        assert_eq!(kept_reading(&args, &[clean]), (3.0, 1));
        assert_eq!(
            kept_reading(&args, &[(4.0, 5.0, false)]),
            (4.0, 1),
            "at the limit"
        );
        assert_eq!(kept_reading(&args, &[stolen, clean]), (3.0, 2));
        assert_eq!(
            kept_reading(&args, &[stolen]),
            (1.0, 3),
            "named in the report"
        );
        // A run short of codes runs again for that, and does not spend a retry for steal.
        let short_and_stolen = (1.0, 17.5, true);
        let readings = [short_and_stolen, (1.0, 9.0, false), (2.0, 9.0, false)];
        assert_eq!(kept_reading(&args, &readings), (2.0, 4));
    }

    /// A row of a run that used up its codes `measured_seconds` into its window.
    fn used_up(measured_seconds: f64, requests_per_second: f64) -> Row {
        Row {
            used_up_codes: true,
            measured_seconds,
            requests_per_second,
            ..Row::default()
        }
    }
}
