//! The console's pages. maud escapes every value it is given, so text from accounts and carriers
//! cannot become markup.

use std::collections::HashMap;

use maud::{DOCTYPE, Markup, html};
use otpd_core::account::{Account, AccountLimits, Application};
use otpd_core::countries::DestinationCountries;
use otpd_core::iso8601::iso8601;
use otpd_core::outbox::{MessageRecord, OutboxBacklog};
use otpd_core::ports::CarrierLink;
use otpd_core::verification::Verification;
use otpd_core::{AccessKeyId, Timestamp};

const STYLE: &str = "
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f6f7f9; }
header { background: #1d2430; color: #fff; padding: .8rem 1.5rem; display: flex; gap: 1.5rem;
         align-items: baseline; }
header a { color: #cfe0ff; }
main { padding: 1.2rem 1.5rem; max-width: 70rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6ea; }
th { background: #eef1f5; font-weight: 600; }
dl { display: grid; grid-template-columns: max-content auto; gap: .3rem 1.2rem; background: #fff;
     padding: 1rem; }
dt { font-weight: 600; }
dd { margin: 0; }
form { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; margin: .6rem 0 1.2rem; }
input { font: inherit; padding: .25rem .4rem; min-width: 16rem; }
.figures { display: flex; gap: 1rem; margin-bottom: 1rem; }
.figure { background: #fff; padding: .7rem 1rem; min-width: 12rem; }
.figure b { display: block; font-size: 1.6rem; }
.warn { color: #a33a00; }
code { font-size: 90%; }
";

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · otpd console" }
                style { (STYLE) }
            }
            body {
                header {
                    strong { "otpd console" }
                    a href="/console" { "Overview" }
                    a href="/metrics" { "Metrics" }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn time(at: Timestamp) -> String {
    iso8601(at.millis())
}

fn optional_time(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "-".to_owned(), time)
}

/// An account's own limits in a few words (`accounts limit`), with what it sent in its last
/// hour against the hourly one.
fn limits(limits: &AccountLimits, sms_in_last_hour: u64) -> String {
    let hourly = limits.sms_per_hour.map(|limit| {
        format!(
            "{} SMS parts an hour ({sms_in_last_hour} in the last)",
            limit.get()
        )
    });
    let countries = match &limits.countries {
        DestinationCountries::Any => None,
        only => Some(format!("only {only}")),
    };
    match (hourly, countries) {
        (None, None) => "none".into(),
        (Some(one), None) | (None, Some(one)) => one,
        (Some(hourly), Some(countries)) => format!("{hourly}, {countries}"),
    }
}

fn lookup_forms() -> Markup {
    html! {
        form method="get" action="/console/message" {
            label for="message-id" { "Message id" }
            input id="message-id" name="id" required placeholder="from a send's MessageId or id_sms";
            button { "Find the message" }
        }
        form method="get" action="/console/verification" {
            label for="account" { "Account access key id" }
            input id="account" name="account" required;
            label for="verify-id" { "verify_id" }
            input id="verify-id" name="id" required;
            button { "Find the verification" }
        }
    }
}

/// What the overview shows.
pub struct Overview {
    pub accounts: Vec<Account>,
    pub applications: Vec<Application>,
    pub backlog: OutboxBacklog,
    /// The newest deliveries given up on, newest first.
    pub failed: Vec<MessageRecord>,
    /// The SMS parts each account sent in its last hour, by access key id; none if absent.
    pub sms_in_last_hour: HashMap<AccessKeyId, u64>,
    /// This node's link to the carrier, when its transport keeps one.
    pub carrier_link: CarrierLink,
}

pub fn overview(overview: &Overview) -> Markup {
    let Overview {
        accounts,
        applications,
        backlog,
        failed,
        sms_in_last_hour,
        carrier_link,
    } = overview;
    let mut applications_of: HashMap<&str, usize> = HashMap::new();
    for application in applications {
        *applications_of
            .entry(application.account_id.as_str())
            .or_default() += 1;
    }
    let waited = backlog.oldest_age.as_secs();
    layout(
        "Overview",
        html! {
            div class="figures" {
                div class="figure" { b { (backlog.pending) } "messages waiting for delivery" }
                div class="figure" {
                    b class=[(waited >= 60).then_some("warn")] { (waited) " s" }
                    "the oldest has waited"
                }
                div class="figure" { b { (accounts.len()) } "accounts" }
                @match carrier_link {
                    CarrierLink::PerMessage => {}
                    CarrierLink::Up => div class="figure" { b { "up" } "this node's link to the SMSC" },
                    CarrierLink::Down => div class="figure" {
                        b class="warn" { "down" }
                        "this node's link to the SMSC: messages wait until it is up again"
                    },
                }
            }
            (lookup_forms())
            h2 { "Accounts" }
            table {
                thead {
                    tr {
                        th { "Name" } th { "Access key id" } th { "Credit (SMS parts)" }
                        th { "Own limits" } th { "Default sender" } th { "Pinpoint applications" }
                        th { "Created" }
                    }
                }
                tbody {
                    @for account in accounts {
                        tr {
                            td { (account.name) }
                            td { code { (account.access_key_id) } }
                            td {
                                @match account.credits {
                                    Some(credits) => (credits),
                                    None => "no limit",
                                }
                            }
                            td {
                                (limits(&account.limits, sms_in_last_hour.get(&account.access_key_id).copied().unwrap_or(0)))
                            }
                            td { (account.default_sender.as_deref().unwrap_or("-")) }
                            td { (applications_of.get(account.id.as_str()).copied().unwrap_or(0)) }
                            td { (time(account.created_at)) }
                        }
                    }
                }
            }
            h2 { "Deliveries given up on" }
            @if failed.is_empty() {
                p { "None lately." }
            } @else {
                table {
                    thead {
                        tr {
                            th { "Message" } th { "To" } th { "Attempts" } th { "Status" }
                            th { "Carrier's words" } th { "Created" }
                        }
                    }
                    tbody {
                        @for record in failed {
                            tr {
                                td { a href={ "/console/message?id=" (record.id) } { code { (record.id) } } }
                                td { (record.to.redacted()) }
                                td { (record.attempts) }
                                td { (record.delivery_status.as_deref().unwrap_or("-")) }
                                td { (record.status_message.as_deref().unwrap_or("-")) }
                                td { (time(record.created_at)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn message(record: &MessageRecord) -> Markup {
    layout(
        "Message",
        html! {
            (lookup_forms())
            dl {
                dt { "Message id" } dd { code { (record.id) } }
                dt { "Verification" } dd { code { (record.verify_id) } }
                dt { "To" } dd { (record.to.redacted()) }
                dt { "From" } dd { (record.from) }
                dt { "Encoding, parts" } dd { (record.encoding.as_str()) ", " (record.parts) }
                dt { "State" } dd { (record.state.as_str()) }
                dt { "Attempts" } dd { (record.attempts) }
                @if let Some(at) = record.next_attempt_at {
                    dt { "Next attempt" } dd { (time(at)) }
                }
                dt { "Created" } dd { (time(record.created_at)) }
                dt { "Handed to the carrier" } dd { (optional_time(record.sent_at)) }
                dt { "Delivery status" } dd { (record.delivery_status.as_deref().unwrap_or("-")) }
                dt { "Status message" } dd { (record.status_message.as_deref().unwrap_or("-")) }
                dt { "Carrier's message id" } dd { (record.carrier_message_id.as_deref().unwrap_or("-")) }
                dt { "Receipt" } dd {
                    (record.receipt_state.as_deref().unwrap_or("-"))
                    @if let Some(at) = record.receipt_at { " at " (time(at)) }
                }
            }
        },
    )
}

pub fn verification(account: &Account, found: &Verification) -> Markup {
    layout(
        "Verification",
        html! {
            (lookup_forms())
            dl {
                dt { "verify_id" } dd { code { (found.id) } }
                dt { "Account" } dd { (account.name) " (" code { (account.access_key_id) } ")" }
                dt { "Dialect" } dd { (found.key.dialect.as_str()) }
                dt { "Application" } dd { (if found.key.app.is_empty() { "-" } else { &found.key.app }) }
                dt { "To" } dd { (found.key.destination.redacted()) }
                dt { "Status" } dd { (found.status.as_str()) }
                dt { "Attempts" } dd { (found.attempts_used) " of " (found.max_attempts) }
                dt { "Created" } dd { (time(found.created_at)) }
                dt { "Expires" } dd { (time(found.expires_at)) }
                dt { "Sandbox" } dd { (if found.sandbox { "yes: no SMS was sent" } else { "no" }) }
                dt { "Message" } dd {
                    @match &found.message_id {
                        Some(id) => a href={ "/console/message?id=" (id) } { code { (id) } },
                        None => "-",
                    }
                }
                dt { "Delivery" } dd {
                    (found.delivery_status.as_deref().unwrap_or("-"))
                    @if let Some(at) = found.delivery_updated_at { " at " (time(at)) }
                }
            }
            @if !found.checks.is_empty() {
                h2 { "Checks" }
                table {
                    thead { tr { th { "At" } th { "Outcome" } } }
                    tbody {
                        @for check in &found.checks {
                            tr { td { (time(check.at)) } td { (check.outcome.as_str()) } }
                        }
                    }
                }
            }
        },
    )
}

pub fn message_not_found(asked: &str) -> Markup {
    not_found("No such message", "message", asked)
}

pub fn verification_not_found(asked: &str) -> Markup {
    not_found(
        "No such verification",
        "verification for that account",
        asked,
    )
}

fn not_found(title: &str, what: &str, asked: &str) -> Markup {
    layout(
        title,
        html! {
            p { "There is no " (what) " with the id " code { (asked) } "." }
            (lookup_forms())
        },
    )
}

pub fn unauthorized() -> Markup {
    layout(
        "Sign in",
        html! { p { "The console answers the operator only: user " code { "operator" } " and the console password." } },
    )
}

pub fn throttled(retry_after_secs: u64) -> Markup {
    let minutes = retry_after_secs.div_ceil(60);
    layout(
        "Too many wrong passwords",
        html! { p { "This address gave the wrong password too often. Try again in " (minutes) " minute(s)." } },
    )
}

pub fn unavailable() -> Markup {
    layout(
        "The database does not answer",
        html! { p { "Try again in a moment; the server's log says why." } },
    )
}
