// certmq's web console in a real browser: Debian's Chromium driven by
// playwright-core (no browser download). Walks the seeds' flows through the
// UI only, with the seeds' OpenSSL commands run as written, and checks the
// console's security at the HTTP level. Screenshots of every page go to
// ARTIFACTS. Prints "ok <check>" per check and "N passed, 0 failed" at the
// end; exits non-zero on the first failure. Every wait is bounded.
//
// Usage: node console.mjs CONFIG.json
//   { "http": "http://127.0.0.1:P", "https": "https://localhost:P", "tls_port": P,
//     "wss": "wss://localhost:P/mqtt", "data_dir": "...", "work": "...", "artifacts": "...",
//     "admin": ["name", "password"], "viewer": ["name", "password"] }

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const here = dirname(fileURLToPath(import.meta.url));
const W = cfg.work;
mkdirSync(cfg.artifacts, { recursive: true });
let passed = 0;
const ok = (what) => { passed += 1; console.log(`ok ${what}`); };
const check = (cond, what) => { if (!cond) throw new Error(`FAILED ${what}`); ok(what); };
const sh = (cmd, args, opts = {}) => execFileSync(cmd, args, { cwd: W, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60000, ...opts }).toString();
const shot = (page, name) => page.screenshot({ path: join(cfg.artifacts, `${name}.png`), fullPage: true });

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--ignore-certificate-errors'],
});
const errors = [];
async function newPage(viewport = { width: 1280, height: 800 }) {
  const ctx = await browser.newContext({ viewport, ignoreHTTPSErrors: true });
  const page = await ctx.newPage();
  page.setDefaultTimeout(10000);
  page.on('pageerror', (e) => errors.push(e.message));
  return page;
}
async function signIn(page, base, [user, pw]) {
  await page.goto(`${base}/`);
  await page.waitForURL(/\/login$/);
  await page.getByLabel('Username').fill(user);
  await page.getByLabel('Password').fill(pw);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
}

try {
  // --- Security at the HTTP level --------------------------------------------
  let r = await fetch(`${cfg.http}/`, { redirect: 'manual' });
  check(r.status >= 300 && r.status < 400 && r.headers.get('location') === '/login', 'no session cookie -> redirect to /login');
  r = await fetch(`${cfg.http}/api/v1/ca-certificates`);
  check(r.status === 401, 'the API without token or session -> 401');
  const login = async (base, [u, p]) => fetch(`${base}/console/login`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: u, password: p }),
  });
  r = await login(cfg.http, cfg.admin);
  const setCookie = r.headers.get('set-cookie') ?? '';
  check(r.ok && /HttpOnly/i.test(setCookie) && /SameSite=Strict/i.test(setCookie) && !/Secure/i.test(setCookie),
    'session cookie is HttpOnly, SameSite=Strict (no Secure over HTTP)');
  const cookie = setCookie.split(';')[0];
  const csrf = (await r.json()).csrf_token;
  r = await fetch(`${cfg.http}/api/v1/ca-certificates/registration-code`, { method: 'POST', headers: { cookie } });
  check(r.status === 403 && (await r.json()).error.code === 'CsrfTokenMissing', 'a state change without the CSRF token -> 403');
  r = await fetch(`${cfg.http}/api/v1/ca-certificates/registration-code`, { method: 'POST', headers: { cookie, 'x-csrf-token': 'forged' } });
  check(r.status === 403, 'a forged CSRF token -> 403');
  r = await fetch(`${cfg.http}/api/v1/ca-certificates`, { headers: { cookie } });
  check(r.ok, 'the session cookie reads the API');
  // (NODE_EXTRA_CA_CERTS holds certmq's default CA.)
  r = await login(cfg.https, cfg.admin);
  check(r.ok && /;\s*Secure/i.test(r.headers.get('set-cookie') ?? ''), 'HTTPS admin listener: the session cookie is Secure');
  for (let i = 0; i < 5; i += 1) await login(cfg.http, ['nobody-here', 'wrong-password']);
  r = await login(cfg.http, ['nobody-here', 'wrong-password']);
  check(r.status === 429 && r.headers.get('retry-after'), 'failed sign-ins are rate limited (429, Retry-After)');

  // --- Secure cookie over the HTTPS listener, in the browser ------------------
  {
    const page = await newPage();
    await signIn(page, cfg.https, cfg.admin);
    const cookies = await page.context().cookies();
    const c = cookies.find((x) => x.name === 'certmq_session');
    check(c && c.secure && c.httpOnly && c.sameSite === 'Strict', 'HTTPS: the session cookie is Secure, HttpOnly, SameSite=Strict');
    await page.context().close();
  }

  // --- The administrator walks the seeds' flows ------------------------------
  const page = await newPage();
  await signIn(page, cfg.http, cfg.admin);
  await shot(page, '01-overview');
  check(await page.getByRole('link', { name: 'CA certificates' }).isVisible(), 'signed in: the Overview and the navigation');

  // Register CA certificate: the code from the pop-up, the seed's commands.
  await page.getByRole('link', { name: 'CA certificates' }).click();
  await page.getByRole('button', { name: 'Register CA certificate' }).click();
  const code = await page.getByLabel('Registration code').inputValue();
  check(/^[0-9a-f]{16,}$/.test(code), `the pop-up shows a registration code (${code})`);
  const commands = await page.locator('#seed-commands').innerText();
  check(commands.includes(`/CN=${code}`), 'the pop-up shows the seed\'s commands with the code filled in');
  await shot(page, '02-register-ca');
  sh('openssl', ['genrsa', '-out', 'CA.key', '2048']);
  sh('openssl', ['req', '-new', '-key', 'CA.key', '-out', 'CA.csr', '-subj', '/C=CN/ST=ZJ/L=HZ/O=Example/CN=*.mqtt.example.com']);
  sh('openssl', ['x509', '-req', '-extfile', '/etc/ssl/openssl.cnf', '-extensions', 'v3_ca', '-in', 'CA.csr', '-out', 'CA.crt', '-signkey', 'CA.key', '-CAcreateserial', '-days', '3650']);
  sh('openssl', ['genrsa', '-out', 'VerificationCert.key', '2048']);
  sh('openssl', ['req', '-new', '-key', 'VerificationCert.key', '-out', 'VerificationCert.csr', '-subj', `/CN=${code}`]);
  sh('openssl', ['x509', '-req', '-in', 'VerificationCert.csr', '-CA', 'CA.crt', '-CAkey', 'CA.key', '-CAcreateserial', '-out', 'VerificationCert.crt', '-days', '600', '-sha512']);
  await page.getByLabel('CA certificate', { exact: true }).setInputFiles(join(W, 'CA.crt'));
  await page.getByLabel('Verification certificate').setInputFiles(join(W, 'VerificationCert.crt'));
  await page.getByRole('button', { name: 'Submit' }).click();
  await page.getByRole('link', { name: /^[0-9a-f]+$/ }).first().waitFor();
  check(await page.getByRole('cell', { name: 'ACTIVE' }).first().isVisible(), 'the CA is registered, ACTIVE, through the pop-up');
  await shot(page, '03-ca-list');
  await page.getByRole('button', { name: 'Delete' }).first().click();
  await page.getByRole('button', { name: 'Confirm' }).click();
  const why = page.getByRole('alert').first();
  await why.waitFor();
  check(/ACTIVE/.test(await why.innerText()), `deleting an ACTIVE CA is refused, and the page says why: ${await why.innerText()}`);

  // A device connects over mutual TLS and appears under the CA (JITP).
  sh('openssl', ['genrsa', '-out', 'device.key', '2048']);
  sh('openssl', ['req', '-new', '-key', 'device.key', '-out', 'device.csr', '-subj', '/CN=console-device-1']);
  sh('openssl', ['x509', '-req', '-in', 'device.csr', '-CA', 'CA.crt', '-CAkey', 'CA.key', '-CAcreateserial', '-out', 'device.crt', '-days', '365']);
  const ca = join(cfg.data_dir, 'tls/default-ca.pem');
  const sub = spawn('mosquitto_sub', ['-h', 'localhost', '-p', String(cfg.tls_port), '--cafile', ca, '--cert', 'device.crt',
    '--key', 'device.key', '-i', 'console-device-1', '-t', 'console/#', '-V', 'mqttv5', '-W', '60'], { cwd: W, stdio: 'ignore' });
  const exited = new Promise((resolve) => sub.on('exit', () => resolve(Date.now())));
  // The Overview refreshes itself: the new connection shows without a reload.
  await page.getByRole('link', { name: 'Overview' }).click();
  await page.locator('#stat-connections').waitFor();
  await page.waitForFunction(() => Number(document.getElementById('stat-connections')?.textContent) >= 1, null, { timeout: 15000 });
  ok('the Overview shows the new connection without reloading the page');
  await page.getByRole('link', { name: 'Connections' }).click();
  for (let i = 0; i < 50 && !(await page.getByRole('cell', { name: 'console-device-1' }).count()); i += 1) {
    await page.waitForTimeout(200);
    await page.getByRole('link', { name: 'Overview' }).click();
    await page.getByRole('link', { name: 'Connections' }).click();
  }
  if (!(await page.getByRole('cell', { name: 'console-device-1' }).count())) {
    await shot(page, '99-connections-failure');
    console.log(`the Connections page reads:\n${await page.locator('body').innerText()}`);
  }
  check(await page.getByRole('cell', { name: 'console-device-1' }).isVisible(), 'the device\'s live connection is listed');
  await shot(page, '04-connections');
  await page.getByRole('link', { name: 'CA certificates' }).click();
  await page.getByRole('link', { name: /^[0-9a-f]+$/ }).first().click();
  const row = page.getByRole('row', { name: /console-device-1/ });
  await row.waitFor();
  check(await row.isVisible(), 'the device certificate is listed under its CA (detail page)');
  check(await page.getByRole('heading', { name: 'Certificate revocation list' }).isVisible()
    && await page.getByRole('button', { name: 'Upload CRL' }).isVisible(), 'the CA detail shows its CRL and the upload');
  await shot(page, '05-ca-detail');
  const revokedAt = Date.now();
  await row.getByRole('button', { name: 'Revoke' }).click();
  await page.getByRole('button', { name: 'Confirm' }).click();
  const closed = await Promise.race([exited, new Promise((res) => setTimeout(() => res(null), 5000))]);
  check(closed !== null && closed - revokedAt < 5000, `revoked from the CA detail: its live connection closed (${closed - revokedAt} ms)`);
  await page.getByRole('row', { name: /console-device-1.*REVOKED/ }).waitFor();
  ok('the device shows REVOKED');

  // Bind the server certificate made by the seed's commands; refusals are precise.
  writeFileSync(join(W, 'server.conf'), [
    '[req]', 'distinguished_name = req_distinguished_name', 'req_extensions = v3_req', 'prompt = no',
    '[req_distinguished_name]', 'C = CN', 'O = Example', 'CN = mqtt.example.com',
    '[v3_req]', 'keyUsage = digitalSignature, keyEncipherment', 'extendedKeyUsage = serverAuth',
    'subjectAltName = @alt_names', '[alt_names]', 'DNS.1 = mqtt.example.com', 'DNS.2 = localhost', '',
  ].join('\n'));
  sh('openssl', ['ecparam', '-genkey', '-name', 'prime256v1', '-out', 'server.key']);
  sh('openssl', ['req', '-new', '-key', 'server.key', '-out', 'server.csr', '-config', 'server.conf']);
  sh('openssl', ['x509', '-req', '-in', 'server.csr', '-CA', 'CA.crt', '-CAkey', 'CA.key', '-CAcreateserial', '-out', 'server.crt',
    '-days', '365', '-extensions', 'v3_req', '-extfile', 'server.conf']);
  writeFileSync(join(W, 'server.chain.crt'), readFileSync(join(W, 'server.crt'), 'utf8') + readFileSync(join(W, 'CA.crt'), 'utf8'));
  await page.getByRole('link', { name: 'Server certificates' }).click();
  await page.getByRole('button', { name: 'Bind custom certificate' }).click();
  await page.getByLabel('Certificate chain').setInputFiles(join(W, 'server.chain.crt'));
  await page.getByLabel('Private key').setInputFiles(join(W, 'device.key'));
  await page.getByRole('button', { name: 'Submit' }).click();
  const refusal = page.getByRole('dialog').getByRole('alert');
  await refusal.waitFor();
  check((await refusal.innerText()).includes('KeyMismatch'), `a refused upload shows its reason inline: ${await refusal.innerText()}`);
  await shot(page, '06-bind-refused');
  await page.getByLabel('Private key').setInputFiles(join(W, 'server.key'));
  await page.getByRole('button', { name: 'Submit' }).click();
  await page.getByRole('cell', { name: /mqtt\.example\.com/ }).first().waitFor();
  ok('a custom server certificate is bound');
  const defaultRow = page.getByRole('row', { name: /Default/ });
  await defaultRow.getByRole('button', { name: 'Disable' }).click();
  check(await page.getByRole('dialog').getByText(/Disable the default/).isVisible(), 'disabling the default asks for confirmation');
  await page.getByRole('button', { name: 'Confirm' }).click();
  await page.getByRole('row', { name: /Default.*Disabled/ }).waitFor();
  ok('the default certificate is disabled after the confirmation pop-up');
  await shot(page, '07-server-certificates');
  const sc = spawnSync('openssl', ['s_client', '-connect', `127.0.0.1:${cfg.tls_port}`, '-servername', 'mqtt.example.com', '-CAfile', 'CA.crt'],
    { cwd: W, input: '', timeout: 30000 });
  const served = `${sc.stdout}`;
  check(served.includes('Verify return code: 0 (ok)'), `the bound certificate is served by SNI (${served.match(/Verify return code: .*/)?.[0]})`);

  // Every other page renders, in English and Chinese, at 1280x800.
  let rendered = 0;
  for (const [name, file] of [['Device certificates', '08-devices'], ['Rejections', '09-rejections'], ['Audit log', '10-audit'],
    ['Users', '11-users'], ['Policies', '12-policies'], ['Alarms', '13-alarms']]) {
    await page.getByRole('link', { name }).click();
    await page.getByRole('heading', { name }).waitFor();
    await shot(page, file);
    rendered += 1;
  }
  check(rendered === 6, 'Device certificates, Rejections, Audit log, Users, Policies and Alarms render');
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.getByRole('cell', { name: 'device_certificate.revoke' }).first().waitFor();
  ok('the audit log page lists the revocation');
  const audit = await (await fetch(`${cfg.http}/api/v1/audit-log`, { headers: { cookie } })).text();
  check(audit.includes(`console:${cfg.admin[0]}`), 'the audit log names the console user');
  await page.getByRole('button', { name: '中文' }).click();
  await page.getByRole('link', { name: '概览' }).waitFor();
  await page.getByRole('link', { name: 'CA 证书' }).click();
  await page.getByRole('button', { name: '注册 CA 证书' }).waitFor();
  await shot(page, '13-zh');
  ok('the language switch shows Chinese');
  await page.getByRole('button', { name: 'English' }).click();
  await page.getByRole('link', { name: 'Overview' }).waitFor();
  ok('and back to English');
  await page.context().close();

  // --- A phone: 390 px wide ---------------------------------------------------
  {
    const phone = await newPage({ width: 390, height: 844 });
    await signIn(phone, cfg.http, cfg.admin);
    await shot(phone, '14-phone-overview');
    await phone.getByRole('button', { name: 'Menu' }).click();
    await phone.getByRole('link', { name: 'CA certificates' }).click();
    await phone.getByRole('button', { name: 'Register CA certificate' }).waitFor();
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    check(width <= 390, `usable at 390 px (page width ${width})`);
    await shot(phone, '15-phone-ca');
    await phone.context().close();
  }

  // --- The viewer cannot change anything, and the server refuses it too -----
  {
    const viewer = await newPage();
    await signIn(viewer, cfg.http, cfg.viewer);
    await viewer.getByRole('link', { name: 'CA certificates' }).click();
    const register = viewer.getByRole('button', { name: 'Register CA certificate' });
    check(await register.isDisabled(), 'the viewer sees change buttons disabled');
    const status = await viewer.evaluate(async () => {
      const s = await (await fetch('/console/session')).json();
      const r = await fetch('/api/v1/ca-certificates/registration-code', { method: 'POST', headers: { 'x-csrf-token': s.csrf_token } });
      return [r.status, (await r.json()).error.code];
    });
    check(status[0] === 403 && status[1] === 'ReadOnlyRole', 'the server refuses the viewer\'s change (403 ReadOnlyRole)');
    await shot(viewer, '16-viewer');
    await viewer.context().close();
  }

  // --- MQTT over WSS from the same browser (MQTT.js's browser bundle) --------
  {
    const bundle = readFileSync(join(here, 'node_modules/mqtt/dist/mqtt.min.js'));
    const server = createServer((req, res) => {
      if (req.url === '/mqtt.min.js') { res.writeHead(200, { 'content-type': 'text/javascript' }); res.end(bundle); return; }
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><script src="/mqtt.min.js"></script><p>wss test</p>');
    });
    await new Promise((res) => server.listen(0, '127.0.0.1', res));
    const page2 = await newPage();
    await page2.goto(`http://127.0.0.1:${server.address().port}/`);
    const got = await page2.evaluate((url) => new Promise((resolve) => {
      const c = window.mqtt.connect(url, { clientId: 'browser-1', reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 5 });
      c.on('connect', () => {
        c.subscribe('browser/echo', () => c.publish('browser/echo', 'from chromium'));
      });
      c.on('message', (t, p) => { resolve(`${t} ${p}`); c.end(); });
      c.on('error', (e) => resolve(`error ${e.message}`));
      setTimeout(() => resolve('timeout'), 8000);
    }), cfg.wss);
    check(got === 'browser/echo from chromium', `MQTT over WSS from Chromium without a device certificate: ${got}`);
    await page2.context().close();
    server.close();
  }

  check(errors.length === 0, `no page errors (${errors.join('; ')})`);
  console.log(`${passed} passed, 0 failed`);
} catch (e) {
  console.log(String(e?.stack ?? e));
  console.log(`${passed} passed, 1 failed`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
