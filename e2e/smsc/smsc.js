// A loopback SMSC for otpd's tests, on node-smpp's server mode (third-party code, not ours).
// It checks credentials, answers submit_sm with a message id, records every submit_sm as a JSON
// line, and sends a delivery receipt when one is asked for. A JSON control file steers failures:
//   {"refuse_binds": true}        bind_transceiver answered with ESME_RBINDFAIL
//   {"throttle_next": 3}          the next 3 submit_sm answered with ESME_RTHROTTLED
//   {"drop_link": true}           the next submit_sm closes the TCP connection unanswered
//   {"receipt_delay_ms": 3000}    receipts go out this long after submit_sm (50 ms otherwise)
//   {"repeat_receipts": 2}        each receipt is delivered this many more times once
//                                 acknowledged, as an SMSC does when an acknowledgement is lost
// A receipt whose deliver_sm_resp is not ESME_ROK is delivered again 500 ms later, as SMSCs
// retry, up to 60 times; every deliver_sm_resp's status is recorded.
// Usage: node smsc.js SYSTEM_ID PASSWORD RECORD_FILE CONTROL_FILE  (prints "listening PORT")
'use strict';
const fs = require('fs');
const smpp = require('smpp');

smpp.encodings.default = 'ASCII'; // node-smpp's name for GSM 03.38

const [systemId, password, recordFile, controlFile] = process.argv.slice(2);
let nextId = 1000;

function control() {
  try {
    return JSON.parse(fs.readFileSync(controlFile, 'utf8'));
  } catch (e) {
    return {};
  }
}

function updateControl(change) {
  fs.writeFileSync(controlFile, JSON.stringify(Object.assign(control(), change)));
}

function record(entry) {
  fs.appendFileSync(recordFile, JSON.stringify(entry) + '\n');
}

function stamp(date) {
  const p = (n) => String(n).padStart(2, '0');
  return `${p(date.getUTCFullYear() % 100)}${p(date.getUTCMonth() + 1)}${p(date.getUTCDate())}${p(date.getUTCHours())}${p(date.getUTCMinutes())}`;
}

const server = smpp.createServer({ debug: false }, (session) => {
  session.on('error', () => {});
  session.on('bind_transceiver', (pdu) => {
    if (pdu.system_id !== systemId || pdu.password !== password || control().refuse_binds) {
      record({ event: 'bind_refused', system_id: pdu.system_id });
      session.send(pdu.response({ command_status: smpp.ESME_RBINDFAIL }));
      session.close();
      return;
    }
    record({ event: 'bind', system_id: pdu.system_id, interface_version: pdu.interface_version });
    session.send(pdu.response({ system_id: 'test-smsc' }));
  });
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on('submit_sm', (pdu) => {
    const steer = control();
    if (steer.drop_link) {
      updateControl({ drop_link: false });
      record({ event: 'dropped' });
      session.socket.destroy();
      return;
    }
    if (steer.throttle_next > 0) {
      updateControl({ throttle_next: steer.throttle_next - 1 });
      record({ event: 'throttled' });
      session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED }));
      return;
    }
    const id = String(nextId++);
    const message = pdu.short_message || {};
    const udh = (message.udh || []).map((part) => Buffer.from(part).toString('hex'));
    record({
      event: 'submit_sm',
      id,
      source_addr: pdu.source_addr,
      source_addr_ton: pdu.source_addr_ton,
      source_addr_npi: pdu.source_addr_npi,
      destination_addr: pdu.destination_addr,
      dest_addr_ton: pdu.dest_addr_ton,
      dest_addr_npi: pdu.dest_addr_npi,
      esm_class: pdu.esm_class,
      data_coding: pdu.data_coding,
      registered_delivery: pdu.registered_delivery,
      udh,
      text: typeof message === 'string' ? message : message.message,
    });
    session.send(pdu.response({ message_id: id }));
    if (pdu.registered_delivery & 0x01) {
      const now = stamp(new Date());
      const receipt = {
        source_addr: pdu.destination_addr,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        short_message: `id:${id} sub:001 dlvrd:001 submit date:${now} done date:${now} stat:DELIVRD err:000 text:`,
      };
      let repeats = steer.repeat_receipts || 0;
      const deliver = (tries) => {
        session.deliver_sm(receipt, (resp) => {
          record({ event: 'deliver_sm_resp', id, command_status: resp.command_status });
          if (resp.command_status !== smpp.ESME_ROK && tries < 60) {
            setTimeout(() => deliver(tries + 1), 500);
          } else if (resp.command_status === smpp.ESME_ROK && repeats > 0) {
            repeats -= 1;
            setTimeout(() => deliver(1), 50);
          }
        });
      };
      setTimeout(() => deliver(1), steer.receipt_delay_ms || 50);
    }
  });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
