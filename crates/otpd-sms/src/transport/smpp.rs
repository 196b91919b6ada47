//! SMPP v3.4 to an SMSC: one transceiver bind kept alive by a supervisor (enquire_link, rebind
//! with backoff when the link drops), a window of outstanding submit_sm, an optional throughput
//! cap, concatenated messages with a UDH, GSM 7-bit or UCS-2 data coding, the right TON/NPI for
//! each kind of sender, and delivery receipts stored as the message's delivery status.
//!
//! The PDU codec and session are rusmpp / rusmppc; rusmppc speaks SMPP 5 by default, so the
//! interface version check is disabled and the bind says 3.4.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use otpd_core::metrics::smpp as smpp_metrics;
use otpd_core::outbox::{CarrierMessageId, Receipt, ReceiptStored};
use otpd_core::ports::{
    CarrierLink, DeliveryReport, DeliveryStatus, OutgoingSms, SmsTransport, Store,
};
use otpd_core::sms::{Encoding, Sender};
use otpd_core::text::is_short_printable;
use otpd_core::{Clock, SystemClock, Timestamp};
use rusmpp::pdus::{BindTransceiver, DeliverSmResp, SubmitSm};
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{
    DataCoding, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, ServiceType, Ton,
};
use rusmpp::{CommandStatus, Pdu};
use rusmppc::{Client, ConnectionBuilder, Event};
use tokio::sync::{Mutex, RwLock, Semaphore, watch};

use super::kept;
use crate::{gsm, segments};

/// `smpp://SYSTEM_ID:PASSWORD@HOST:PORT?system_type=..&window=..&tps=..&source_ton=..&source_npi=..`
#[derive(Clone, PartialEq, Eq)]
pub struct SmppSpec {
    pub system_id: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub system_type: String,
    /// Outstanding submit_sm at most.
    pub window: usize,
    /// Messages (parts) per second at most; `None` for no cap.
    pub max_per_second: Option<u32>,
    /// TON/NPI for the source address, overriding the choice by sender kind.
    pub source_ton_npi: Option<(u8, u8)>,
}

impl std::fmt::Debug for SmppSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmppSpec")
            .field("system_id", &self.system_id)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmppSpecError {
    #[error("an SMPP transport is smpp://SYSTEM_ID:PASSWORD@HOST:PORT")]
    Malformed,
    #[error("the SMPP option {0} has a bad value")]
    BadOption(String),
}

impl FromStr for SmppSpec {
    type Err = SmppSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let url = url::Url::parse(spec).map_err(|_| SmppSpecError::Malformed)?;
        if url.scheme() != "smpp" || url.username().is_empty() {
            return Err(SmppSpecError::Malformed);
        }
        let decode = |text: &str| {
            url::form_urlencoded::parse(text.replace('+', "%2B").as_bytes())
                .next()
                .map(|(key, _)| key.into_owned())
                .unwrap_or_default()
        };
        let mut parsed = Self {
            system_id: decode(url.username()),
            password: decode(url.password().unwrap_or_default()),
            host: url.host_str().ok_or(SmppSpecError::Malformed)?.to_owned(),
            port: url.port().unwrap_or(2775),
            system_type: String::new(),
            window: 10,
            max_per_second: None,
            source_ton_npi: None,
        };
        if parsed.system_id.len() > 15 || parsed.password.len() > 8 {
            return Err(SmppSpecError::BadOption(
                "system_id (15) or password (8) length".into(),
            ));
        }
        let (mut ton, mut npi) = (None, None);
        for (name, value) in url.query_pairs() {
            let bad = || SmppSpecError::BadOption(name.to_string());
            match name.as_ref() {
                "system_type" if value.len() <= 12 => parsed.system_type = value.into_owned(),
                "window" => {
                    parsed.window = value
                        .parse()
                        .ok()
                        .filter(|w| (1..=1000).contains(w))
                        .ok_or_else(bad)?
                }
                "tps" => {
                    parsed.max_per_second =
                        Some(value.parse().ok().filter(|t| *t > 0).ok_or_else(bad)?)
                }
                "source_ton" => ton = Some(value.parse::<u8>().map_err(|_| bad())?),
                "source_npi" => npi = Some(value.parse::<u8>().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        parsed.source_ton_npi = match (ton, npi) {
            (None, None) => None,
            (ton, npi) => Some((ton.unwrap_or(0), npi.unwrap_or(0))),
        };
        Ok(parsed)
    }
}

/// The live session, replaced by the supervisor after each rebind.
struct Link {
    client: RwLock<Option<Client>>,
    bound: watch::Sender<bool>,
}

impl Link {
    /// Says whether the transceiver is bound: to the senders waiting for a bind, and on
    /// `/metrics`, so the two never disagree.
    fn set_bound(&self, bound: bool) {
        self.bound.send_replace(bound);
        smpp_metrics::record_bound(bound);
    }
}

pub struct SmppTransport {
    spec: SmppSpec,
    link: Arc<Link>,
    window: Semaphore,
    pacer: Mutex<Instant>,
    concatenation_reference: std::sync::atomic::AtomicU8,
}

impl SmppTransport {
    /// Starts the supervisor that binds, keeps the link alive and rebinds; receipts go to
    /// `store`.
    pub fn start(spec: SmppSpec, store: Arc<dyn Store>) -> Self {
        smpp_metrics::publish_at_zero();
        let (bound, _) = watch::channel(false);
        let link = Arc::new(Link {
            client: RwLock::new(None),
            bound,
        });
        tokio::spawn(supervise(spec.clone(), link.clone(), store));
        Self {
            window: Semaphore::new(spec.window),
            spec,
            link,
            pacer: Mutex::new(Instant::now()),
            concatenation_reference: std::sync::atomic::AtomicU8::new(1),
        }
    }

    /// Waits for the pace the throughput cap allows.
    async fn pace(&self) {
        let Some(per_second) = self.spec.max_per_second else {
            return;
        };
        let slot = Duration::from_secs(1) / per_second;
        let wait_until = {
            let mut next = self.pacer.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + slot;
            start
        };
        tokio::time::sleep_until(wait_until.into()).await;
    }

    async fn client(&self) -> Option<Client> {
        if let Some(client) = self.link.client.read().await.clone() {
            return Some(client);
        }
        // Give a rebind in progress a moment rather than failing at once.
        let mut bound = self.link.bound.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), bound.wait_for(|&b| b)).await;
        self.link.client.read().await.clone()
    }
}

#[async_trait]
impl SmsTransport for SmppTransport {
    fn carrier_link(&self) -> CarrierLink {
        if *self.link.bound.borrow() {
            CarrierLink::Up
        } else {
            CarrierLink::Down
        }
    }

    async fn send(&self, sms: &OutgoingSms) -> DeliveryReport {
        let Ok(_permit) = self.window.acquire().await else {
            return temporary("the SMPP window is closed");
        };
        let Some(client) = self.client().await else {
            return temporary("not bound to the SMSC");
        };
        let pdus = match submit_pdus(
            sms,
            &self.spec,
            self.concatenation_reference
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ) {
            Ok(pdus) => pdus,
            Err(reason) => return permanent(reason),
        };
        let mut last_id = None;
        for pdu in pdus {
            self.pace().await;
            match client.submit_sm(pdu).await {
                Ok(response) => last_id = kept(response.message_id().as_str(), &sms.message_id),
                Err(error) => return report_error(error),
            }
        }
        DeliveryReport {
            retry_after: None,
            status: DeliveryStatus::Successful,
            message_id: last_id,
            status_code: 0,
            status_message: "accepted by the SMSC".into(),
        }
    }
}

fn temporary(reason: &str) -> DeliveryReport {
    DeliveryReport {
        retry_after: None,
        status: DeliveryStatus::TemporaryFailure,
        message_id: None,
        status_code: 0,
        status_message: reason.into(),
    }
}

fn permanent(reason: String) -> DeliveryReport {
    DeliveryReport {
        retry_after: None,
        status: DeliveryStatus::PermanentFailure,
        message_id: None,
        status_code: 0,
        status_message: reason.into(),
    }
}

/// ESME_RTHROTTLED and ESME_RMSGQFUL are "later"; other refusals are final; link failures are
/// temporary.
fn report_error(error: rusmppc::error::Error) -> DeliveryReport {
    use rusmppc::error::Error;
    match error {
        Error::UnexpectedResponse { response } => {
            let code = u32::from(response.status);
            let status = match response.status {
                CommandStatus::EsmeRthrottled | CommandStatus::EsmeRmsgqful => {
                    DeliveryStatus::Throttled
                }
                _ => DeliveryStatus::PermanentFailure,
            };
            DeliveryReport {
                retry_after: None,
                status,
                message_id: None,
                status_code: u16::try_from(code).unwrap_or(u16::MAX),
                status_message: format!("the SMSC answered {:?}", response.status).into(),
            }
        }
        other => temporary(&format!("SMPP link failure: {other}")),
    }
}

/// The submit_sm PDUs for one message: one, or one per part with a concatenation UDH.
fn submit_pdus(sms: &OutgoingSms, spec: &SmppSpec, reference: u8) -> Result<Vec<SubmitSm>, String> {
    let parts = segments::split(&sms.message.text, sms.message.encoding)
        .ok_or_else(|| "the text does not fit its encoding".to_owned())?;
    let total = u8::try_from(parts.len()).map_err(|_| "too many parts".to_owned())?;
    let data_coding = match sms.message.encoding {
        Encoding::Gsm7 => DataCoding::McSpecific,
        Encoding::Ucs2 => DataCoding::Ucs2,
    };
    let encode = |text: &str| match sms.message.encoding {
        Encoding::Gsm7 => gsm::encode_unpacked(text),
        Encoding::Ucs2 => Some(text.encode_utf16().flat_map(u16::to_be_bytes).collect()),
    };
    let (source_ton, source_npi, source) = source_address(&sms.from, spec);
    let mut pdus = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        let mut payload = Vec::with_capacity(160);
        if total > 1 {
            // UDH: length 5, IE 0x00 (8-bit reference concatenation), length 3, ref, total, seq.
            let sequence = u8::try_from(index + 1).map_err(|_| "too many parts".to_owned())?;
            payload.extend([0x05, 0x00, 0x03, reference, total, sequence]);
        }
        payload
            .extend(encode(part).ok_or_else(|| "the text does not fit its encoding".to_owned())?);
        let last = index + 1 == parts.len();
        // esm_class set explicitly: rusmpp's default is not 0; 0x40 marks a UDH.
        let esm_class = EsmClass::from(if total > 1 { 0x40 } else { 0x00 });
        // A receipt for the last part only (0x01: final state, success or failure).
        let registered_delivery = RegisteredDelivery::from(if last { 0x01 } else { 0x00 });
        pdus.push(
            SubmitSm::builder()
                .service_type(ServiceType::default())
                .source_addr_ton(Ton::from(source_ton))
                .source_addr_npi(Npi::from(source_npi))
                .source_addr(
                    COctetString::from_str(&source).map_err(|e| format!("source address: {e}"))?,
                )
                .dest_addr_ton(Ton::International)
                .dest_addr_npi(Npi::Isdn)
                .destination_addr(
                    COctetString::from_str(sms.to.digits())
                        .map_err(|e| format!("destination: {e}"))?,
                )
                .esm_class(esm_class)
                .registered_delivery(registered_delivery)
                .data_coding(data_coding)
                .short_message(OctetString::from_vec(payload).map_err(|e| format!("message: {e}"))?)
                .build(),
        );
    }
    Ok(pdus)
}

/// TON/NPI by kind of sender: alphanumeric 5/0, short code 3/0, number 1/1 (international, ISDN).
fn source_address(sender: &Sender, spec: &SmppSpec) -> (u8, u8, String) {
    let (ton, npi, address) = match sender {
        Sender::Alphanumeric(name) => (5, 0, name.clone()),
        Sender::ShortCode(code) => (3, 0, code.clone()),
        Sender::Number(number) => (1, 1, number.trim_start_matches('+').to_owned()),
    };
    let (ton, npi) = spec.source_ton_npi.unwrap_or((ton, npi));
    (ton, npi, address)
}

/// Binds, serves the link until it drops, and binds again with capped exponential backoff.
async fn supervise(spec: SmppSpec, link: Arc<Link>, store: Arc<dyn Store>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match bind(&spec).await {
            Ok((client, events)) => {
                tracing::info!(host = %spec.host, port = spec.port, "bound to the SMSC");
                backoff = Duration::from_millis(250);
                *link.client.write().await = Some(client.clone());
                link.set_bound(true);
                serve_events(&client, events, store.as_ref()).await;
                link.set_bound(false);
                *link.client.write().await = None;
                let _ = client.close().await;
                tracing::warn!("the SMPP link dropped; rebinding");
            }
            Err(error) => {
                smpp_metrics::record_bind_failure();
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "cannot bind to the SMSC");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn bind(
    spec: &SmppSpec,
) -> Result<(Client, impl futures_util::Stream<Item = Event> + Unpin), String> {
    let stream = tokio::net::TcpStream::connect((spec.host.as_str(), spec.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (client, events) = ConnectionBuilder::new()
        .enquire_link_interval(Duration::from_secs(30))
        .enquire_link_response_timeout(Duration::from_secs(10))
        .response_timeout(Duration::from_secs(10))
        .disable_interface_version_check()
        .connected(stream);
    let bound = client
        .bind_transceiver(
            BindTransceiver::builder()
                .system_id(c_text(&spec.system_id, "system_id")?)
                .password(c_text(&spec.password, "password")?)
                .system_type(c_text(&spec.system_type, "system_type")?)
                .interface_version(InterfaceVersion::Smpp3_4)
                .addr_ton(Ton::Unknown)
                .addr_npi(Npi::Unknown)
                .address_range(COctetString::empty())
                .build(),
        )
        .await;
    if let Err(error) = bound {
        let _ = client.close().await;
        return Err(format!("bind: {error}"));
    }
    Ok((client, events))
}

fn c_text<const MIN: usize, const MAX: usize>(
    value: &str,
    what: &str,
) -> Result<COctetString<MIN, MAX>, String> {
    COctetString::from_str(value).map_err(|e| format!("{what}: {e}"))
}

/// Answers deliver_sm (storing receipts) until the link fails.
async fn serve_events(
    client: &Client,
    mut events: impl futures_util::Stream<Item = Event> + Unpin,
    store: &dyn Store,
) {
    while let Some(event) = events.next().await {
        match event {
            Event::Incoming(command) => {
                if let Some(Pdu::DeliverSm(deliver)) = command.pdu() {
                    let is_receipt = u8::from(deliver.esm_class) & 0x3C == 0x04;
                    let receipt = is_receipt
                        .then(|| parse_receipt(deliver.short_message(), SystemClock.now()))
                        .flatten();
                    let mut status = CommandStatus::EsmeRok;
                    if let Some(receipt) = receipt {
                        let state = receipt.state.clone();
                        match store.record_receipt(receipt).await {
                            Ok(ReceiptStored::New) => smpp_metrics::record_receipt(&state),
                            // The SMSC missed our acknowledgement and delivered it again: stored
                            // and counted once already, acknowledged again below.
                            Ok(ReceiptStored::Repeated) => {
                                tracing::debug!("a receipt delivered again");
                            }
                            Ok(ReceiptStored::UnknownMessage) => {
                                tracing::warn!("a receipt for an unknown message");
                            }
                            Err(error) => {
                                // A temporary error asks the SMSC to deliver the receipt again
                                // later, rather than have it lost with the database away.
                                tracing::warn!(%error, "cannot store a receipt; the SMSC is asked to deliver it again");
                                status = CommandStatus::EsmeRxTAppn;
                            }
                        }
                    }
                    let _ = client
                        .status(status)
                        .deliver_sm_resp(command.sequence_number, DeliverSmResp::default())
                        .await;
                }
            }
            Event::Error(error) => {
                tracing::warn!(%error, "SMPP link error");
                if client.is_closed() {
                    break;
                }
            }
        }
        if client.is_closed() {
            break;
        }
    }
}

/// The longest receipt state kept. SMPP's are seven letters (DELIVRD, UNDELIV, ...).
const MAX_RECEIPT_STATE_CHARS: usize = 32;

/// Reads the SMPP receipt text: `id:... sub:... dlvrd:... submit date:... done date:... stat:DELIVRD err:...`.
/// A receipt whose id or state a store could not hold (see `CarrierMessageId`) is not one.
pub fn parse_receipt(text: &[u8], now: Timestamp) -> Option<Receipt> {
    let text = String::from_utf8_lossy(text);
    let field = |name: &str| {
        text.split(' ')
            .find_map(|word| word.strip_prefix(name))
            .map(str::to_owned)
    };
    let id = CarrierMessageId::parse(&field("id:")?)?;
    let state = field("stat:")?;
    if !is_short_printable(&state, MAX_RECEIPT_STATE_CHARS) {
        return None;
    }
    Some(Receipt {
        carrier_message_id: id,
        state,
        at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SmppSpec {
        "smpp://otpd:secret@127.0.0.1:2775".parse().expect("spec")
    }

    fn sms(text: &str, encoding: Encoding, from: &str) -> OutgoingSms {
        let mut sms = crate::transport::test_sms(text);
        sms.message.encoding = encoding;
        sms.from = Sender::parse(from).expect("sender");
        sms
    }

    #[test]
    fn specs() {
        let parsed: SmppSpec =
            "smpp://sys:p%40ss@smsc.local:2776?system_type=otp&window=4&tps=50&source_ton=1"
                .parse()
                .expect("spec");
        assert_eq!(parsed.system_id, "sys");
        assert_eq!(parsed.password, "p@ss");
        assert_eq!((parsed.host.as_str(), parsed.port), ("smsc.local", 2776));
        assert_eq!((parsed.window, parsed.max_per_second), (4, Some(50)));
        assert_eq!(parsed.source_ton_npi, Some((1, 0)));
        assert_eq!(spec().port, 2775);
        assert!("smpp://host:2775".parse::<SmppSpec>().is_err());
        assert!("smpp://a:b@h:1?window=0".parse::<SmppSpec>().is_err());
        assert!("smpp://a:b@h:1?colour=red".parse::<SmppSpec>().is_err());
        assert!(!format!("{:?}", spec()).contains("secret"));
    }

    #[test]
    fn single_gsm_message() {
        let pdus =
            submit_pdus(&sms("Code 1234 €", Encoding::Gsm7, "Acme"), &spec(), 9).expect("pdus");
        assert_eq!(pdus.len(), 1);
        let pdu = &pdus[0];
        assert_eq!(pdu.short_message().as_ref(), b"Code 1234 \x1b\x65");
        assert_eq!(u8::from(pdu.esm_class), 0x00);
        assert_eq!(u8::from(pdu.registered_delivery), 0x01);
        assert_eq!(pdu.data_coding, DataCoding::McSpecific);
        assert_eq!(
            (u8::from(pdu.source_addr_ton), u8::from(pdu.source_addr_npi)),
            (5, 0)
        );
        assert_eq!(pdu.destination_addr.as_str(), "393481234567");
    }

    #[test]
    fn concatenated_ucs2_message() {
        let text = "è".repeat(100);
        let pdus =
            submit_pdus(&sms(&text, Encoding::Ucs2, "+12065550100"), &spec(), 7).expect("pdus");
        assert_eq!(pdus.len(), 2);
        for (index, pdu) in pdus.iter().enumerate() {
            let bytes = pdu.short_message().as_ref();
            assert_eq!(
                &bytes[..6],
                &[
                    0x05,
                    0x00,
                    0x03,
                    7,
                    2,
                    u8::try_from(index + 1).expect("small")
                ]
            );
            assert_eq!(u8::from(pdu.esm_class), 0x40);
            assert_eq!(pdu.data_coding, DataCoding::Ucs2);
            assert_eq!(
                (u8::from(pdu.source_addr_ton), u8::from(pdu.source_addr_npi)),
                (1, 1)
            );
            assert_eq!(pdu.source_addr.as_str(), "12065550100");
        }
        assert_eq!(pdus[0].short_message().len(), 6 + 67 * 2);
        assert_eq!(u8::from(pdus[0].registered_delivery), 0x00);
        assert_eq!(u8::from(pdus[1].registered_delivery), 0x01);
    }

    #[test]
    fn short_codes() {
        let pdus = submit_pdus(&sms("x", Encoding::Gsm7, "12345"), &spec(), 1).expect("pdus");
        assert_eq!(
            (
                u8::from(pdus[0].source_addr_ton),
                u8::from(pdus[0].source_addr_npi)
            ),
            (3, 0)
        );
    }

    #[test]
    fn receipts() {
        let text = b"id:abc123 sub:001 dlvrd:001 submit date:2611212230 done date:2611212231 stat:DELIVRD err:000 text:Code";
        let receipt = parse_receipt(text, Timestamp(5)).expect("parses");
        assert_eq!(receipt.carrier_message_id.as_str(), "abc123");
        assert_eq!(receipt.state, "DELIVRD");
        assert!(parse_receipt(b"hello", Timestamp(5)).is_none());
        // An id no outbox row can hold matches nothing; PostgreSQL refused the lookup with it.
        assert!(parse_receipt(b"id:ab\0c stat:DELIVRD", Timestamp(5)).is_none());
        assert!(parse_receipt(b"id:abc stat:DELIV\0RD", Timestamp(5)).is_none());
        let long_state = format!("id:abc stat:{}", "D".repeat(33));
        assert!(parse_receipt(long_state.as_bytes(), Timestamp(5)).is_none());
    }

    mod any_receipt {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any short message body a carrier sends back is a receipt with an id and a state,
            /// or not a receipt; nothing panics, invalid UTF-8 included.
            #[test]
            fn any_body_is_a_receipt_or_not(
                words in prop::collection::vec(
                    prop_oneof![
                        "(id|stat|err|sub|dlvrd):[A-Za-z0-9]{0,10}",
                        "(submit|done) date:[0-9]{0,12}",
                        ".{0,12}",
                    ],
                    0..8,
                ),
                noise in prop::collection::vec(any::<u8>(), 0..8),
            ) {
                let mut body = words.join(" ").into_bytes();
                body.extend(noise);
                if let Some(receipt) = parse_receipt(&body, Timestamp(5)) {
                    let id = receipt.carrier_message_id.as_str();
                    prop_assert!(!id.is_empty() && !id.contains(' '));
                    prop_assert!(!id.chars().any(char::is_control));
                    prop_assert!(!receipt.state.is_empty());
                    prop_assert!(!receipt.state.chars().any(char::is_control));
                }
            }
        }
    }
}
