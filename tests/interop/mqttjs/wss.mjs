// MQTT.js over WSS: connects to wss://HOST:PORT/mqtt trusting only CA_FILE
// (so the served certificate must chain to it and name HOST), optionally
// with a client certificate, subscribes, publishes and receives one message.
// Usage: node wss.mjs URL CA_FILE [CERT_FILE KEY_FILE]
import fs from 'node:fs';
import mqtt from 'mqtt';

const [url, caFile, certFile, keyFile] = process.argv.slice(2);
const fail = (m) => { console.error(m); process.exit(1); };
setTimeout(() => fail('timed out'), 10000).unref();
const identity = certFile ? { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) } : {};
const c = mqtt.connect(url, { ca: fs.readFileSync(caFile), ...identity, reconnectPeriod: 0, connectTimeout: 5000, clientId: `wss-${process.pid}` });
c.on('error', (e) => fail(`error: ${e.message}`));
c.on('connect', () => {
  c.subscribe('wss/t', { qos: 1 }, (err) => {
    if (err) fail(`subscribe: ${err.message}`);
    c.publish('wss/t', 'over-wss', { qos: 1 });
  });
});
c.on('message', (topic, payload) => {
  if (payload.toString() !== 'over-wss') fail(`unexpected ${payload}`);
  console.log('ok');
  c.end(false, () => process.exit(0));
});
