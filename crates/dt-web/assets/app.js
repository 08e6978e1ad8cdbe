// devtrust web UI. One script for every page (the CSP allows no inline code); pages say
// which they are with <body data-page>. Every state-changing call is a POST that carries
// the session's CSRF token in X-CSRF-Token.
'use strict';

const $ = (sel) => document.querySelector(sel);

function text(el, value) {
  el.textContent = value == null ? '' : String(value);
}

function show(el, on) {
  el.hidden = !on;
}

async function api(method, path, body, csrf) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (csrf) headers['X-CSRF-Token'] = csrf;
  const resp = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (!resp.ok) {
    const err = new Error((data && data.error) || resp.statusText);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function labels(obj) {
  return Object.entries(obj || {})
    .map(([k, v]) => k + '=' + v)
    .join(', ');
}

function fillTable(table, empty, rows) {
  const body = table.querySelector('tbody');
  body.replaceChildren();
  for (const cells of rows) {
    const tr = document.createElement('tr');
    for (const c of cells) {
      const td = document.createElement('td');
      text(td, c);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  show(empty, rows.length === 0);
}

// ----------------------------------------------------------------------------- login

function loginPage() {
  const form = $('#login-form');
  const error = $('#login-error');
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    show(error, false);
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      await api('POST', '/web/api/login', {
        username: form.elements.username.value,
        password: form.elements.password.value,
      }, csrf);
      window.location.assign('/web/');
    } catch (e) {
      text(error, e.message);
      show(error, true);
      button.disabled = false;
    }
  });
}

// ----------------------------------------------------------------------------- header

const SHIELD_TITLES = {
  trusted: 'Session authorized with Device Trust',
  required: 'Session not authorized with Device Trust: a trusted device is required, so your access is restricted',
  none: 'Session not authorized with Device Trust',
};

function renderHeader(me) {
  text($('#user-name'), me.user);
  const shield = $('[data-testid="device-trust-shield"]');
  shield.dataset.state = me.shield;
  shield.title = SHIELD_TITLES[me.shield] || '';
  text($('#trust-status'), SHIELD_TITLES[me.shield] || '');
  if (me.device) {
    text($('#session-device'), 'This session is trusted through device ' + me.device.asset_tag + ' (' + me.device.os_type + ')');
    show($('#session-device'), true);
  }
  const list = $('#trusted-devices');
  list.replaceChildren();
  for (const d of me.trusted_devices || []) {
    const li = document.createElement('li');
    text(li, d.asset_tag + ' · ' + d.os_type);
    list.appendChild(li);
  }
  if (!me.trusted_devices || me.trusted_devices.length === 0) {
    const li = document.createElement('li');
    li.className = 'muted';
    text(li, 'none enrolled');
    list.appendChild(li);
  }
  text($('#session-expires'), new Date(me.expires).toLocaleString());

  const button = $('#user-menu-button');
  const menu = $('#user-menu');
  button.addEventListener('click', () => {
    const open = menu.hidden;
    show(menu, open);
    button.setAttribute('aria-expanded', String(open));
  });
  $('#logout').addEventListener('click', async () => {
    try {
      await api('POST', '/web/api/logout', undefined, me.csrf_token);
    } finally {
      window.location.assign('/web/login');
    }
  });
}

async function loadMe() {
  try {
    return await api('GET', '/web/api/me');
  } catch (e) {
    if (e.status === 401) {
      window.location.assign('/web/login');
      return null;
    }
    throw e;
  }
}

// ----------------------------------------------------------------------------- index

async function indexPage() {
  const me = await loadMe();
  if (!me) return;
  renderHeader(me);
  if (me.device_web_auth_url) {
    const link = $('[data-testid="device-web-auth"]');
    link.href = me.device_web_auth_url;
    text($('#device-web-auth-command'), "dtsh device web-auth '" + me.device_web_auth_url + "'");
    show($('#device-web-auth-panel'), true);
  }
  show($('#required-panel'), me.shield === 'required' && !me.device_web_auth_url);
  const res = await api('GET', '/web/api/resources');
  fillTable($('#nodes'), $('#nodes-empty'), res.nodes.map((n) => [n.name, n.addr, labels(n.labels)]));
  fillTable($('#databases'), $('#databases-empty'),
    res.databases.map((d) => [d.name, d.protocol, labels(d.labels), d.description]));
  document.body.dataset.ready = 'true';
}

// ----------------------------------------------------------------------------- confirm

async function confirmPage() {
  const status = $('#confirm-status');
  const q = new URLSearchParams(window.location.search);
  try {
    const me = await api('GET', '/web/api/me');
    const r = await api('POST', '/web/api/device/confirm', { id: q.get('id') || '', token: q.get('token') || '' }, me.csrf_token);
    text(status, 'Device ' + r.device.asset_tag + ' authenticated: this browser session is now authorized with Device Trust.');
    status.className = 'ok';
    document.body.dataset.result = 'confirmed';
  } catch (e) {
    text(status, 'Device web authentication failed: ' + e.message);
    status.className = 'error';
    document.body.dataset.result = 'refused';
  }
}

function fail(e) {
  const el = $('#page-error');
  if (el) {
    text(el, e.message);
    show(el, true);
  }
}

document.addEventListener('DOMContentLoaded', () => {
  const page = document.body.dataset.page;
  const run = { login: loginPage, index: indexPage, confirm: confirmPage }[page];
  if (run) Promise.resolve().then(run).catch(fail);
});
