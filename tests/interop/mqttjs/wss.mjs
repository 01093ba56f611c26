// MQTT.js over WSS: connects to wss://HOST:PORT/mqtt trusting only CA_FILE
// (so the served certificate must chain to it and name HOST), subscribes,
// publishes and receives one message. Usage: node wss.mjs URL CA_FILE
import fs from 'node:fs';
import mqtt from 'mqtt';

const [url, caFile] = process.argv.slice(2);
const fail = (m) => { console.error(m); process.exit(1); };
setTimeout(() => fail('timed out'), 10000).unref();
const c = mqtt.connect(url, { ca: fs.readFileSync(caFile), reconnectPeriod: 0, connectTimeout: 5000, clientId: `wss-${process.pid}` });
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
