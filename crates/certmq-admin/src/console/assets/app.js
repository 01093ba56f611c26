// The certmq console: hash routes over the admin API (/api/v1), with the
// session cookie and its CSRF token. No framework, no build step.
import { t, translate, langSwitch } from './i18n.js';

let session = null;
let timer = null;

const PAGES = [
  ['overview', 'Overview'], ['server-certificates', 'Server certificates'],
  ['ca-certificates', 'CA certificates'], ['device-certificates', 'Device certificates'],
  ['connections', 'Connections'], ['rejections', 'Rejections'], ['audit-log', 'Audit log'],
  ['users', 'Users'], ['policies', 'Policies'], ['alarms', 'Alarms'],
];

class ApiError extends Error {
  constructor(code, message, status) { super(message); this.code = code; this.status = status; }
  toString() { return `${this.code}: ${this.message}`; }
}

async function api(method, path, body) {
  const headers = {};
  if (method !== 'GET') headers['x-csrf-token'] = session.csrf_token;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch('/api/v1' + path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) { location.href = '/login'; throw new ApiError('NoSession', 'signed out', 401); }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!r.ok) throw new ApiError(data?.error?.code ?? 'Error', data?.error?.message ?? String(text), r.status);
  return data;
}

// A DOM element: h('td', {class: 'x', onclick: f}, child, ...).
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const canChange = () => session?.role === 'administrator';
const button = (label, onclick, cls) =>
  h('button', { type: 'button', class: cls, onclick, disabled: !canChange() }, t(label));
const short = (id) => (id ? `${id.slice(0, 12)}…` : '-');
const when = (s) => (s ? s.replace('T', ' ').replace('Z', ' UTC') : '-');

function table(headers, rows, empty = 'None.') {
  if (!rows.length) return h('p', { class: 'muted' }, t(empty));
  return h('div', { class: 'table' }, h('table', { class: 'stack' },
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, t(x))))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c, i) => h('td', { 'data-label': t(headers[i]) }, c)))))));
}

function alertBox() { return h('p', { role: 'alert', class: 'error', hidden: true }); }
function showError(box, e) { box.textContent = e instanceof ApiError ? e.toString() : String(e); box.hidden = false; }

// The one dialog element: content, then open; resolves when it closes.
const dialog = () => document.getElementById('dialog');
function openDialog(title, ...content) {
  const d = dialog();
  d.replaceChildren(h('h2', { id: 'dialog-title' }, title), ...content);
  d.setAttribute('aria-labelledby', 'dialog-title');
  d.showModal();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue), { once: true }));
}
function closeDialog(value = '') { dialog().close(value); }

function confirmDialog(message) {
  return new Promise((resolve) => {
    openDialog(t('Confirm'), h('p', {}, message), h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'primary', onclick: () => closeDialog('confirm') }, t('Confirm')),
      h('button', { type: 'button', onclick: () => closeDialog('cancel') }, t('Cancel'))))
      .then((v) => resolve(v === 'confirm'));
  });
}

// A registration's findings (SPEC 14), shown in the open pop-up; resolves
// when it is dismissed. Nothing to show: closes the pop-up.
function showWarnings(result) {
  const warnings = result?.warnings ?? [];
  if (!warnings.length) { closeDialog('done'); return; }
  const d = dialog();
  d.replaceChildren(h('h2', { id: 'dialog-title' }, t('Done, with warnings')),
    h('ul', { class: 'warnings', role: 'list' }, warnings.map((w) => h('li', {}, h('strong', {}, w.code), ' ', w.message))),
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', onclick: () => closeDialog('done') }, t('OK'))));
}

// A file as PEM text (DER is wrapped as `kind`).
async function pemOf(file, kind) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const text = new TextDecoder().decode(bytes);
  if (text.includes('-----BEGIN ')) return text;
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  const b64 = btoa(bin).replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${kind}-----\n${b64}\n-----END ${kind}-----\n`;
}

function fileField(id, label) {
  return [h('label', { for: id }, t(label)), h('input', { id, type: 'file', accept: '.pem,.crt,.cer,.key,.der' })];
}

function page(title, ...content) { return [h('h1', {}, t(title)), ...content]; }

async function download(id) {
  const r = await fetch(`/api/v1/device-certificates/${encodeURIComponent(id)}/pem`, { credentials: 'same-origin' });
  const blob = new Blob([await r.text()], { type: 'application/x-pem-file' });
  const a = h('a', { href: URL.createObjectURL(blob), download: `${id}.pem` });
  document.body.append(a); a.click(); a.remove();
}

// --- Overview ---------------------------------------------------------------

function chart(history) {
  const W = 600; const H = 160;
  const max = Math.max(1, ...history.map((p) => Math.max(p.received_per_s, p.delivered_per_s)));
  const line = (key) => history.map((p, i) =>
    `${(i / Math.max(1, history.length - 1)) * W},${H - (p[key] / max) * (H - 10)}`).join(' ');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'chart'); svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none'); svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', t('Messages per second, last 10 minutes'));
  for (const [key, color] of [['received_per_s', '#1f6feb'], ['delivered_per_s', '#067647']]) {
    const p = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    p.setAttribute('points', line(key)); p.setAttribute('fill', 'none');
    p.setAttribute('stroke', color); p.setAttribute('stroke-width', '2');
    p.setAttribute('vector-effect', 'non-scaling-stroke');
    svg.append(p);
  }
  return svg;
}

async function overview(view) {
  const render = async () => {
    const o = await api('GET', '/overview');
    const active = (await api('GET', '/alarms')).items;
    const last = o.history[o.history.length - 1] ?? { received_per_s: 0, delivered_per_s: 0 };
    const card = (n, l, id) => h('div', { class: 'card' }, h('div', { class: 'n', id }, n), h('div', { class: 'l' }, t(l)));
    view.replaceChildren(...page('Overview',
      h('div', { class: 'cards' },
        card(o.connections, 'Connections', 'stat-connections'), card(o.sessions, 'Sessions', 'stat-sessions'),
        card(Math.round(last.received_per_s), 'Messages in / s', 'stat-in'),
        card(Math.round(last.delivered_per_s), 'Messages out / s', 'stat-out'),
        card(o.refusals_total, 'Refusals', 'stat-refusals'),
        h('a', { href: '#/alarms', class: 'card' }, h('div', { class: 'n', id: 'stat-alarms' }, active.length), h('div', { class: 'l' }, t('Alarms')))),
      h('h2', {}, t('Messages per second, last 10 minutes')), chart(o.history),
      h('div', { class: 'legend' }, h('span', { class: 'rx' }, t('received')), h('span', { class: 'tx' }, t('delivered'))),
      h('h2', {}, t('Listeners')),
      table(['Protocol', 'Address'], o.listeners.map((l) => [l.protocol, l.address])),
      h('h2', {}, t('Certificates expiring within 30 days')),
      table(['Certificate', 'Name', 'Not after'], o.expiring_within_30_days.map((c) => [c.kind, c.name ?? short(c.id), when(c.not_after)]))));
  };
  await render();
  timer = setInterval(() => render().catch(() => {}), 5000);
}

// --- Server certificates ------------------------------------------------------

async function serverCertificates(view) {
  const box = alertBox();
  const certs = (await api('GET', '/server-certificates')).items;
  const toggle = async (c) => {
    const enable = !c.enabled;
    const msg = enable ? t('Enable the default server certificate?')
      : t('Disable the default server certificate? Clients without a matching name get the most recently bound certificate.');
    if (!(await confirmDialog(msg))) return;
    try { await api('POST', `/server-certificates/default/${enable ? 'enable' : 'disable'}`); route(); } catch (e) { showError(box, e); }
  };
  const unbind = async (c) => {
    if (!(await confirmDialog(t('Unbind this certificate? New handshakes stop getting it at once.')))) return;
    try { await api('DELETE', `/server-certificates/${encodeURIComponent(c.id)}`); route(); } catch (e) { showError(box, e); }
  };
  const bind = async () => {
    const err = alertBox();
    const name = h('input', { id: 'bind-name' });
    const submit = async () => {
      try {
        const chain = document.getElementById('bind-chain').files[0];
        const key = document.getElementById('bind-key').files[0];
        if (!chain || !key) throw new Error(t('Certificate chain') + ' / ' + t('Private key'));
        const bound = await api('POST', '/server-certificates', {
          name: name.value || null,
          certificate_chain: await pemOf(chain, 'CERTIFICATE'),
          private_key: await pemOf(key, 'PRIVATE KEY'),
        });
        showWarnings(bound); route();
      } catch (e) { showError(err, e); }
    };
    await openDialog(t('Bind custom certificate'),
      h('label', { for: 'bind-name' }, t('Name')), name,
      ...fileField('bind-chain', 'Certificate chain'), ...fileField('bind-key', 'Private key'), err,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', onclick: submit }, t('Submit')),
        h('button', { type: 'button', onclick: () => closeDialog() }, t('Cancel'))));
  };
  view.replaceChildren(...page('Server certificates',
    h('div', { class: 'toolbar' }, button('Bind custom certificate', bind, 'primary')), box,
    table(['Name', 'DNS names', 'Not after', 'State', 'Actions'], certs.map((c) => [
      c.is_default ? t('Default') : (c.name ?? c.subject_cn ?? short(c.id)),
      (c.dns_names ?? []).join(', '), when(c.not_after),
      c.enabled ? t('Enabled') : t('Disabled'),
      h('div', { class: 'actions' }, c.is_default
        ? button(c.enabled ? 'Disable' : 'Enable', () => toggle(c))
        : button('Unbind', () => unbind(c), 'danger')),
    ]))));
}

// --- CA certificates ------------------------------------------------------------

function seedCommands(code) {
  return [
    'openssl genrsa -out CA.key 2048',
    'openssl req -new -key CA.key -out CA.csr',
    'openssl x509 -req -extfile /etc/ssl/openssl.cnf -extensions v3_ca -in CA.csr -out CA.crt -signkey CA.key -CAcreateserial -days 3650',
    'openssl genrsa -out VerificationCert.key 2048',
    `openssl req -new -key VerificationCert.key -out VerificationCert.csr -subj "/CN=${code}"`,
    'openssl x509 -req -in VerificationCert.csr -CA CA.crt -CAkey CA.key -CAcreateserial -out VerificationCert.crt -days 600 -sha512',
  ].join('\n');
}

async function registerCa() {
  const err = alertBox();
  let code;
  try { code = await api('POST', '/ca-certificates/registration-code'); } catch (e) { alert(e); return; }
  const field = h('input', { id: 'registration-code', readonly: true, value: code.registration_code });
  const copy = h('button', { type: 'button', onclick: async () => {
    field.select();
    try { await navigator.clipboard.writeText(field.value); } catch (_) { document.execCommand('copy'); }
    copy.textContent = t('Copied');
  } }, t('Copy'));
  const submit = async () => {
    try {
      const ca = document.getElementById('ca-file').files[0];
      const ver = document.getElementById('verification-file').files[0];
      if (!ca || !ver) throw new Error(`${t('CA certificate')} / ${t('Verification certificate')}`);
      const registered = await api('POST', '/ca-certificates', {
        ca_certificate: await pemOf(ca, 'CERTIFICATE'),
        verification_certificate: await pemOf(ver, 'CERTIFICATE'),
      });
      showWarnings(registered); route();
    } catch (e) { showError(err, e); }
  };
  await openDialog(t('Register CA certificate'),
    h('label', { for: 'registration-code' }, t('Registration code')), h('div', { class: 'row' }, field, copy),
    h('p', { class: 'muted' }, t('Closing this pop-up discards the code; opening it again issues a new one.')),
    h('p', {}, t('Run these commands, then choose the two files:')),
    h('pre', { id: 'seed-commands' }, seedCommands(code.registration_code)),
    ...fileField('ca-file', 'CA certificate'), ...fileField('verification-file', 'Verification certificate'), err,
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', onclick: submit }, t('Submit')),
      h('button', { type: 'button', onclick: () => closeDialog() }, t('Close'))));
}

async function caCertificates(view) {
  const box = alertBox();
  const cas = (await api('GET', '/ca-certificates')).items;
  const act = async (c, what) => {
    if (what === 'deactivate' && !(await confirmDialog(t('Deactivating this CA disconnects every device that uses its certificates.')))) return;
    if (what === 'delete' && !(await confirmDialog(t('Delete this CA certificate and its device-certificate records?')))) return;
    try {
      if (what === 'delete') await api('DELETE', `/ca-certificates/${c.id}`);
      else await api('POST', `/ca-certificates/${c.id}/${what}`);
      route();
    } catch (e) { showError(box, e); }
  };
  view.replaceChildren(...page('CA certificates',
    h('div', { class: 'toolbar' }, button('Register CA certificate', registerCa, 'primary')), box,
    table(['Serial number', 'Common name', 'Status', 'Provisioning', 'Not after', 'Actions'], cas.map((c) => [
      h('a', { href: `#/ca-certificates/${c.id}` }, c.serial_number), c.subject_cn ?? '-',
      h('span', { class: `status-${c.status}` }, c.status), c.device_provisioning, when(c.not_after),
      h('div', { class: 'actions' },
        c.status === 'ACTIVE' ? button('Deactivate', () => act(c, 'deactivate')) : button('Activate', () => act(c, 'activate')),
        button('Delete', () => act(c, 'delete'), 'danger')),
    ]))));
}

function deviceActions(d, box) {
  const act = async (what) => {
    if (what === 'revoke' && !(await confirmDialog(t('Revoking is final: the certificate never connects again and its live connections are closed.')))) return;
    try { await api('POST', `/device-certificates/${d.id}/${what}`); route(); } catch (e) { showError(box, e); }
  };
  return h('div', { class: 'actions' },
    h('button', { type: 'button', onclick: () => download(d.id) }, t('Download')),
    d.status !== 'ACTIVE' && d.status !== 'REVOKED' ? button('Activate', () => act('activate')) : null,
    d.status === 'ACTIVE' ? button('Deactivate', () => act('deactivate')) : null,
    d.status !== 'REVOKED' ? button('Revoke', () => act('revoke'), 'danger') : null);
}

async function caDetail(view, id) {
  const box = alertBox();
  const c = await api('GET', `/ca-certificates/${id}`);
  const devices = (await api('GET', `/device-certificates?ca_id=${encodeURIComponent(id)}&limit=200`)).items;
  let crl = null;
  try { crl = await api('GET', `/ca-certificates/${id}/crl`); } catch (e) { if (e.status !== 404) throw e; }
  const row = (k, v) => [h('dt', {}, t(k)), h('dd', {}, v)];
  const upload = async () => {
    const file = document.getElementById('crl-file').files[0];
    if (!file) { showError(box, new Error(t('CRL file'))); return; }
    const bytes = new Uint8Array(await file.arrayBuffer());
    const pem = new TextDecoder().decode(bytes.slice(0, 32)).includes('-----BEGIN');
    const r = await fetch(`/api/v1/ca-certificates/${id}/crl`, {
      method: 'PUT', credentials: 'same-origin', body: bytes,
      headers: { 'x-csrf-token': session.csrf_token, 'content-type': pem ? 'application/x-pem-file' : 'application/pkix-crl' },
    });
    if (r.ok) { route(); return; }
    const data = await r.json().catch(() => null);
    showError(box, new ApiError(data?.error?.code ?? 'Error', data?.error?.message ?? r.statusText, r.status));
  };
  view.replaceChildren(...page('CA certificates',
    h('h2', {}, t('Basic information')),
    h('dl', {}, row('Status', c.status), row('Common name', c.subject_cn ?? '-'), row('Serial number', c.serial_number),
      row('Issuer', c.issuer_cn ?? '-'), row('Not after', when(c.not_after)), row('Registered', when(c.registered_at)),
      row('Provisioning', c.device_provisioning), row('Automatic activation', String(c.automatic_activation)),
      row('Certificate', c.id)),
    h('h2', {}, t('Certificate revocation list')),
    crl ? h('dl', { id: 'crl' }, row('This update', when(crl.this_update)), row('Next update', when(crl.next_update)),
      row('Revoked', String(crl.revoked_count)), row('Stale', crl.stale ? t('Yes') : t('No')), row('Source', crl.source))
      : h('p', { class: 'muted' }, t('No CRL.')),
    canChange() ? h('div', { class: 'toolbar' }, ...fileField('crl-file', 'CRL file'), button('Upload CRL', upload)) : null,
    h('h2', {}, t('Device certificates of this CA')), box,
    table(['Common name', 'Serial number', 'Status', 'Client ID', 'Via', 'Not after', 'Actions'], devices.map((d) => [
      d.subject_cn ?? '-', d.serial_number, h('span', { class: `status-${d.status}` }, d.status), d.client_id ?? '-',
      (d.intermediates ?? []).map((i) => i.subject_cn ?? i.serial_number).join(' ← ') || '-',
      when(d.not_after), deviceActions(d, box)]))));
}

// --- Alarms ---------------------------------------------------------------------

async function alarms(view) {
  const items = (await api('GET', '/alarms')).items;
  view.replaceChildren(...page('Alarms',
    table(['Severity', 'Kind', 'Subject', 'Since', 'Message'], items.map((a) => [
      h('span', { class: `severity-${a.severity}` }, t(a.severity)), a.kind, a.subject, when(a.raised_at), a.message,
    ]), 'No active alarms.')));
}

// --- Device certificates --------------------------------------------------------

const deviceQuery = { ca_id: '', client_id: '', common_name: '', status: '', offset: 0 };

async function deviceCertificates(view) {
  const box = alertBox();
  const limit = 20;
  const q = new URLSearchParams({ limit, offset: deviceQuery.offset });
  for (const k of ['ca_id', 'client_id', 'common_name', 'status']) if (deviceQuery[k]) q.set(k, deviceQuery[k]);
  const pageData = await api('GET', `/device-certificates?${q}`);
  const cas = (await api('GET', '/ca-certificates')).items;
  const input = (id, key, label) => [h('label', { for: id }, t(label)),
    h('input', { id, value: deviceQuery[key], onchange: (e) => { deviceQuery[key] = e.target.value.trim(); deviceQuery.offset = 0; } })];
  const caSelect = h('select', { id: 'filter-ca', onchange: (e) => { deviceQuery.ca_id = e.target.value; deviceQuery.offset = 0; } },
    h('option', { value: '' }, t('All')), cas.map((c) => h('option', { value: c.id, selected: c.id === deviceQuery.ca_id }, c.subject_cn ?? c.serial_number)));
  const status = h('select', { id: 'filter-status', onchange: (e) => { deviceQuery.status = e.target.value; deviceQuery.offset = 0; } },
    ['', 'ACTIVE', 'INACTIVE', 'REVOKED', 'PENDING_ACTIVATION'].map((s) => h('option', { value: s, selected: s === deviceQuery.status }, s || t('All'))));
  const register = async () => {
    const err = alertBox();
    const clientId = h('input', { id: 'register-client-id' });
    const submit = async () => {
      try {
        const f = document.getElementById('device-file').files[0];
        if (!f) throw new Error(t('Device certificate'));
        const registered = await api('POST', '/device-certificates', { device_certificate: await pemOf(f, 'CERTIFICATE'), client_id: clientId.value || null });
        showWarnings(registered); route();
      } catch (e) { showError(err, e); }
    };
    await openDialog(t('Register device certificate'), ...fileField('device-file', 'Device certificate'),
      h('label', { for: 'register-client-id' }, t('Client ID')), clientId, err,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', onclick: submit }, t('Submit')),
        h('button', { type: 'button', onclick: () => closeDialog() }, t('Cancel'))));
  };
  const more = deviceQuery.offset + limit < pageData.total;
  view.replaceChildren(...page('Device certificates',
    h('div', { class: 'toolbar' },
      h('div', {}, h('label', { for: 'filter-ca' }, t('CA')), caSelect),
      h('div', {}, ...input('filter-client-id', 'client_id', 'Client ID')),
      h('div', {}, ...input('filter-cn', 'common_name', 'Common name')),
      h('div', {}, h('label', { for: 'filter-status' }, t('Status')), status),
      h('button', { type: 'button', onclick: () => route() }, t('Filter')),
      button('Register device certificate', register, 'primary')), box,
    table(['Common name', 'Serial number', 'CA', 'Status', 'Client ID', 'Not after', 'Actions'], pageData.items.map((d) => [
      d.subject_cn ?? '-', d.serial_number, h('a', { href: `#/ca-certificates/${d.ca_id}` }, short(d.ca_id)),
      h('span', { class: `status-${d.status}` }, d.status), d.client_id ?? '-', when(d.not_after), deviceActions(d, box)])),
    h('div', { class: 'toolbar' },
      h('button', { type: 'button', disabled: deviceQuery.offset === 0, onclick: () => { deviceQuery.offset = Math.max(0, deviceQuery.offset - limit); route(); } }, t('Previous')),
      h('span', { class: 'muted' }, `${pageData.total ? deviceQuery.offset + 1 : 0}–${Math.min(deviceQuery.offset + limit, pageData.total)} / ${pageData.total}`),
      h('button', { type: 'button', disabled: !more, onclick: () => { deviceQuery.offset += limit; route(); } }, t('Next')))));
}

// --- Connections, rejections, audit -----------------------------------------

async function connections(view) {
  const box = alertBox();
  const items = (await api('GET', '/connections')).items;
  const kick = async (c) => {
    if (!(await confirmDialog(t('Close this connection?')))) return;
    try { await api('DELETE', `/connections/${encodeURIComponent(c.client_id)}`); route(); } catch (e) { showError(box, e); }
  };
  view.replaceChildren(...page('Connections', box,
    table(['Client ID', 'Listener', 'Peer', 'User', 'Certificate', 'Connected at', 'Actions'], items.map((c) => [
      c.client_id, c.listener, c.peer_address, c.username ?? '-', short(c.certificate_id), when(c.connected_at),
      button('Kick', () => kick(c), 'danger')]))));
}

async function rejections(view) {
  const r = await api('GET', '/connection-rejections?limit=200');
  view.replaceChildren(...page('Rejections',
    table(['At', 'Reason', 'Listener', 'Peer', 'Client ID', 'User', 'Certificate'], r.items.map((x) => [
      when(x.at), x.reason, x.listener, x.peer_address, x.client_id ?? '-', x.username ?? '-', short(x.certificate_id)]))));
}

async function auditLog(view) {
  const items = (await api('GET', '/audit-log?limit=200')).items;
  view.replaceChildren(...page('Audit log',
    table(['Seq', 'At', 'Actor', 'Action', 'Target'], items.map((a) => [a.seq, when(a.at), a.actor, a.action, a.target]))));
}

// --- Users and policies ------------------------------------------------------

async function users(view) {
  const box = alertBox();
  const items = (await api('GET', '/users')).items;
  const add = async () => {
    const err = alertBox();
    const name = h('input', { id: 'user-name', autocomplete: 'off' });
    const pw = h('input', { id: 'user-password', type: 'password', autocomplete: 'new-password' });
    const submit = async () => {
      try { await api('POST', '/users', { username: name.value, password: pw.value }); closeDialog('done'); route(); } catch (e) { showError(err, e); }
    };
    await openDialog(t('Add user'), h('label', { for: 'user-name' }, t('Username')), name,
      h('label', { for: 'user-password' }, t('Password')), pw, err,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', onclick: submit }, t('Submit')),
        h('button', { type: 'button', onclick: () => closeDialog() }, t('Cancel'))));
  };
  const del = async (u) => {
    if (!(await confirmDialog(t('Delete?')))) return;
    try { await api('DELETE', `/users/${encodeURIComponent(u.username)}`); route(); } catch (e) { showError(box, e); }
  };
  view.replaceChildren(...page('Users', h('div', { class: 'toolbar' }, button('Add user', add, 'primary')), box,
    table(['Username', 'Created', 'Actions'], items.map((u) => [u.username, when(u.created_at), button('Delete', () => del(u), 'danger')]))));
}

async function policies(view) {
  const box = alertBox();
  const items = (await api('GET', '/policies')).items;
  const add = async () => {
    const err = alertBox();
    const text = h('textarea', { id: 'policy-json' });
    text.value = JSON.stringify({ priority: 10, effect: 'allow', actions: ['publish', 'subscribe'], topics: ['devices/${cert.cn}/#'] }, null, 2);
    const submit = async () => {
      try { await api('POST', '/policies', JSON.parse(text.value)); closeDialog('done'); route(); } catch (e) { showError(err, e); }
    };
    await openDialog(t('Add policy'), h('label', { for: 'policy-json' }, t('Policy (JSON)')), text, err,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', onclick: submit }, t('Submit')),
        h('button', { type: 'button', onclick: () => closeDialog() }, t('Cancel'))));
  };
  const del = async (p) => {
    if (!(await confirmDialog(t('Delete?')))) return;
    try { await api('DELETE', `/policies/${encodeURIComponent(p.id)}`); route(); } catch (e) { showError(box, e); }
  };
  const conditions = (p) => ['client_ids', 'usernames', 'ca_ids', 'source_cidrs', 'qos', 'retain']
    .filter((k) => p[k] !== undefined && p[k] !== null).map((k) => `${k}=${JSON.stringify(p[k])}`).join(' ') || '-';
  view.replaceChildren(...page('Policies', h('div', { class: 'toolbar' }, button('Add policy', add, 'primary')), box,
    table(['Name', 'Priority', 'Effect', 'Action', 'Topics', 'Conditions', 'Actions'], items.map((p) => [
      p.id, p.priority, p.effect, p.actions.join(', '), (p.topics ?? ['*']).join(' '), conditions(p),
      button('Delete', () => del(p), 'danger')]))));
}

// --- Shell ---------------------------------------------------------------------

function nav(current) {
  const el = document.getElementById('nav');
  el.replaceChildren(...PAGES.map(([slug, name]) =>
    h('a', { href: `#/${slug}`, 'aria-current': slug === current ? 'page' : null }, t(name))));
}

async function route() {
  clearInterval(timer);
  const [, slug = 'overview', id] = location.hash.split('/');
  nav(slug);
  document.getElementById('nav').classList.remove('open');
  const view = document.getElementById('view');
  if (!view.firstChild) view.append(h('p', { class: 'muted' }, t('Loading…')));
  const pages = {
    'overview': overview, 'server-certificates': serverCertificates, 'ca-certificates': id ? (v) => caDetail(v, id) : caCertificates,
    'device-certificates': deviceCertificates, 'connections': connections, 'rejections': rejections,
    'audit-log': auditLog, 'users': users, 'policies': policies, 'alarms': alarms,
  };
  try {
    await (pages[slug] ?? overview)(view);
    if (!canChange()) view.prepend(h('p', { class: 'muted', role: 'note' }, t('Read only: your role is viewer.')));
  } catch (e) {
    view.replaceChildren(h('p', { role: 'alert', class: 'error' }, String(e)));
  }
}

async function main() {
  const r = await fetch('/console/session', { credentials: 'same-origin' });
  if (!r.ok) { location.href = '/login'; return; }
  session = await r.json();
  document.getElementById('who').textContent = `${session.username} (${session.role})`;
  translate();
  langSwitch(document.getElementById('lang'), () => { translate(); route(); });
  const menu = document.getElementById('menu');
  menu.addEventListener('click', () => {
    const open = document.getElementById('nav').classList.toggle('open');
    menu.setAttribute('aria-expanded', String(open));
  });
  document.getElementById('signout').addEventListener('click', async () => {
    await fetch('/console/logout', { method: 'POST', headers: { 'x-csrf-token': session.csrf_token }, credentials: 'same-origin' });
    location.href = '/login';
  });
  window.addEventListener('hashchange', route);
  route();
}

main();
