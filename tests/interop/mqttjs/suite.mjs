// certmq interoperability checks with MQTT.js over WebSocket (ws://HOST:PORT/mqtt).
// Usage: node suite.mjs URL   e.g. ws://127.0.0.1:8083/mqtt
// Exits non-zero, naming the failed check, if any check fails. Every wait is bounded.

import mqtt from 'mqtt';

const URL = process.argv[2];
const WAIT = 5000;
let n = 0;

function connect(opts = {}) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(URL, {
      clientId: `mqttjs-${process.pid}-${n++}`,
      reconnectPeriod: 0,
      connectTimeout: WAIT,
      ...opts,
    });
    const timer = setTimeout(() => reject(new Error('no CONNACK in time')), WAIT);
    c.once('connect', (ack) => { clearTimeout(timer); c.connack = ack; resolve(c); });
    c.once('error', (e) => { clearTimeout(timer); reject(e); });
    c.messages = [];
    c.waiters = [];
    c.on('message', (topic, payload, packet) => {
      const m = { topic, payload: payload.toString(), packet };
      const w = c.waiters.shift();
      if (w) w(m); else c.messages.push(m);
    });
  });
}

function nextMessage(c, wait = WAIT) {
  if (c.messages.length) return Promise.resolve(c.messages.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${c.options.clientId}: no message in ${wait} ms`)), wait);
    c.waiters.push((m) => { clearTimeout(timer); resolve(m); });
  });
}

async function noMessage(c, wait = 300) {
  try {
    const m = await nextMessage(c, wait);
    throw new Error(`unexpected message on ${m.topic}: ${m.payload}`);
  } catch (e) {
    if (!String(e.message).includes('no message')) throw e;
  }
}

const end = (c) => c.endAsync();

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

const checks = {
  async qos_levels_both_versions() {
    for (const protocolVersion of [4, 5]) {
      const sub = await connect({ protocolVersion });
      await sub.subscribeAsync('js/q/#', { qos: 2 });
      const pub = await connect({ protocolVersion });
      for (const qos of [0, 1, 2]) {
        await pub.publishAsync(`js/q/${qos}`, `m${qos}`, { qos });
        const m = await nextMessage(sub);
        check(m.topic === `js/q/${qos}` && m.payload === `m${qos}` && m.packet.qos === qos,
          `v${protocolVersion} qos ${qos}: got ${m.topic} ${m.payload} qos ${m.packet.qos}`);
      }
      await end(pub); await end(sub);
    }
  },

  async retained_and_retain_handling() {
    const pub = await connect({ protocolVersion: 5 });
    await pub.publishAsync('js/retained', 'kept', { qos: 1, retain: true });
    const sub = await connect({ protocolVersion: 5 });
    await sub.subscribeAsync('js/retained', { qos: 1 });
    const m = await nextMessage(sub);
    check(m.packet.retain && m.payload === 'kept', `retained: ${m.payload} retain=${m.packet.retain}`);
    const other = await connect({ protocolVersion: 5 });
    await other.subscribeAsync('js/retained', { qos: 1, rh: 2 });
    await noMessage(other);
    await pub.publishAsync('js/retained', '', { qos: 1, retain: true });
    await end(pub); await end(sub); await end(other);
  },

  async will_message() {
    const watcher = await connect({ protocolVersion: 5 });
    await watcher.subscribeAsync('js/will', { qos: 1 });
    const dying = await connect({ protocolVersion: 5, will: { topic: 'js/will', payload: 'gone', qos: 1 } });
    dying.stream.destroy();
    const m = await nextMessage(watcher);
    check(m.payload === 'gone', `will payload ${m.payload}`);
    dying.end(true);
    await end(watcher);
  },

  async user_properties_and_request_response() {
    const sub = await connect({ protocolVersion: 5 });
    await sub.subscribeAsync('js/props', { qos: 1, properties: { subscriptionIdentifier: 7 } });
    const pub = await connect({ protocolVersion: 5 });
    await pub.publishAsync('js/props', 'req', {
      qos: 1,
      properties: { userProperties: { k: 'v' }, responseTopic: 'js/reply', correlationData: Buffer.from('c1') },
    });
    const m = await nextMessage(sub);
    const p = m.packet.properties || {};
    check(p.userProperties && p.userProperties.k === 'v', `user properties ${JSON.stringify(p.userProperties)}`);
    check(p.responseTopic === 'js/reply', 'response topic lost');
    check(p.correlationData && p.correlationData.toString() === 'c1', 'correlation data lost');
    const ids = [].concat(p.subscriptionIdentifier || []);
    check(ids.includes(7), `subscription identifier ${JSON.stringify(p.subscriptionIdentifier)}`);
    await end(pub); await end(sub);
  },

  async shared_subscription() {
    const a = await connect({ protocolVersion: 5 });
    const b = await connect({ protocolVersion: 5 });
    await a.subscribeAsync('$share/js/js/jobs', { qos: 1 });
    await b.subscribeAsync('$share/js/js/jobs', { qos: 1 });
    const pub = await connect({ protocolVersion: 5 });
    for (let i = 0; i < 4; i++) await pub.publishAsync('js/jobs', String(i), { qos: 1 });
    const got = [];
    for (const c of [a, b]) {
      for (let i = 0; i < 2; i++) got.push(Number((await nextMessage(c)).payload));
      await noMessage(c, 200);
    }
    got.sort();
    check(JSON.stringify(got) === '[0,1,2,3]', `shared delivery ${got}`);
    await end(a); await end(b); await end(pub);
  },

  async persistent_session() {
    const clientId = `mqttjs-persist-${process.pid}`;
    const opts = { protocolVersion: 5, clientId, clean: false, properties: { sessionExpiryInterval: 300 } };
    const s1 = await connect(opts);
    await s1.subscribeAsync('js/persist', { qos: 1 });
    await end(s1);
    const pub = await connect({ protocolVersion: 5 });
    await pub.publishAsync('js/persist', 'queued', { qos: 1 });
    const s2 = await connect(opts);
    check(s2.connack.sessionPresent, 'session not present');
    const m = await nextMessage(s2);
    check(m.payload === 'queued', `queued message ${m.payload}`);
    await end(s2); await end(pub);
  },
};

let failed = 0;
for (const [name, fn] of Object.entries(checks)) {
  const t = Date.now();
  try {
    await fn();
    console.log(`ok    ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL  ${name}: ${e.message}`);
  }
}
console.log(`${Object.keys(checks).length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
