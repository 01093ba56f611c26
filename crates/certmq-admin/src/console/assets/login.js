import { t, translate, langSwitch } from './i18n.js';

const form = document.getElementById('login');
const error = document.getElementById('error');
translate();
langSwitch(document.getElementById('lang'), () => translate());

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  error.hidden = true;
  const body = JSON.stringify({ username: form.username.value, password: form.password.value });
  const resp = await fetch('/console/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body, credentials: 'same-origin' });
  if (resp.ok) { location.href = '/'; return; }
  let message = `HTTP ${resp.status}`;
  try { message = (await resp.json()).error.message; } catch (_) { /* not JSON */ }
  error.textContent = message;
  error.hidden = false;
});
