// One MQTT.js connection attempt for certmq's authentication tests.
// Usage: node connect.mjs URL [USERNAME PASSWORD]
// Prints "connack 0" when accepted, "refused CODE" when CONNACK refused it,
// "error MESSAGE" otherwise. Bounded by a 5 s timeout.

import mqtt from 'mqtt';

const [url, username, password] = process.argv.slice(2);
const opts = { reconnectPeriod: 0, connectTimeout: 5000, clientId: `mqttjs-auth-${process.pid}` };
if (username !== undefined) { opts.username = username; opts.password = password; }
const c = mqtt.connect(url, opts);
const timer = setTimeout(() => { console.log('error timeout'); process.exit(0); }, 6000);
c.on('connect', () => { console.log('connack 0'); clearTimeout(timer); c.end(true, () => process.exit(0)); });
c.on('error', (e) => {
  clearTimeout(timer);
  console.log(e.code !== undefined ? `refused ${e.code}` : `error ${e.message}`);
  c.end(true, () => process.exit(0));
});
