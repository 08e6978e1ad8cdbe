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

// Where a login goes next: `?next=` when it is a page of this web UI, else the resources.
function afterLogin() {
  const next = new URLSearchParams(window.location.search).get('next') || '';
  return /^\/web\/[A-Za-z0-9/_?=&%.-]*$/.test(next) && !next.startsWith('//') ? next : '/web/';
}

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
      window.location.assign(afterLogin());
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

  const nav = $('#nav');
  const links = [['/web/', 'Resources', true], ['/web/devices', 'Devices', me.can.list_devices], ['/web/audit', 'Audit log', me.can.list_events]];
  nav.replaceChildren();
  for (const [href, label, allowed] of links) {
    if (!allowed) continue;
    const a = document.createElement('a');
    a.href = href;
    text(a, label);
    if (window.location.pathname === href) a.setAttribute('aria-current', 'page');
    nav.appendChild(a);
  }

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
  const rows = $('#nodes tbody').children;
  res.nodes.forEach((n, i) => {
    const td = document.createElement('td');
    for (const login of me.logins || []) {
      const a = document.createElement('a');
      a.className = 'connect';
      a.href = '/web/terminal?' + new URLSearchParams({ node: n.name, login });
      text(a, login);
      td.appendChild(a);
    }
    rows[i].appendChild(td);
  });
  fillTable($('#databases'), $('#databases-empty'),
    res.databases.map((d) => [d.name, d.protocol, labels(d.labels), d.description]));
  const apps = res.apps || [];
  fillTable($('#apps'), $('#apps-empty'), apps.map((a) => [a.name, a.description, a.public_addr, labels(a.labels)]));
  const appRows = $('#apps tbody').children;
  apps.forEach((a, i) => {
    const td = document.createElement('td');
    const link = document.createElement('a');
    link.className = 'connect';
    link.dataset.testid = 'launch-' + a.name;
    link.href = a.launch_url;
    link.rel = 'noopener';
    text(link, 'Launch');
    td.appendChild(link);
    appRows[i].appendChild(td);
  });
  const desktops = res.desktops || [];
  fillTable($('#desktops'), $('#desktops-empty'),
    desktops.map((d) => [d.name, labels(d.labels), d.description]));
  const drows = $('#desktops tbody').children;
  desktops.forEach((d, i) => {
    const td = document.createElement('td');
    for (const login of me.logins || []) {
      const a = document.createElement('a');
      a.className = 'connect';
      a.href = '/web/desktop?' + new URLSearchParams({ desktop: d.name, login });
      text(a, login);
      td.appendChild(a);
    }
    drows[i].appendChild(td);
  });
  document.body.dataset.ready = 'true';
}

// ----------------------------------------------------------------------------- devices

function actionButton(label, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'small';
  text(b, label);
  b.addEventListener('click', onClick);
  return b;
}

async function devicesPage() {
  const me = await loadMe();
  if (!me) return;
  renderHeader(me);
  const result = $('#action-result');
  const say = (msg, ok) => {
    text(result, msg);
    result.className = ok ? 'ok' : 'error';
  };
  const act = async (path, body, done) => {
    try {
      const r = await api('POST', path, body, me.csrf_token);
      say(done(r), true);
      await load('');
    } catch (e) {
      say(e.message, false);
    }
  };
  let query = '';
  const load = async (token) => {
    const params = new URLSearchParams({ q: query, page_token: token || '', limit: '10' });
    const res = await api('GET', '/web/api/devices?' + params);
    const body = $('#devices tbody');
    body.replaceChildren();
    for (const d of res.items) {
      const tr = document.createElement('tr');
      tr.dataset.deviceId = d.id;
      for (const c of [d.asset_tag, d.os_type, d.enroll_status, d.owner || '', d.id]) {
        const td = document.createElement('td');
        text(td, c);
        tr.appendChild(td);
      }
      const td = document.createElement('td');
      td.appendChild(actionButton('Enrollment token', () => act('/web/api/devices/enroll-token', { device_id: d.id },
        (r) => 'Give this command to the device owner: ' + r.command)));
      td.appendChild(actionButton('Lock', () => act('/web/api/devices/lock', { device_id: d.id, message: 'locked from the web UI' },
        (r) => 'Created a lock with name "' + r.lock + '".')));
      td.appendChild(actionButton('Remove', () => act('/web/api/devices/remove', { device_id: d.id },
        (r) => 'Device "' + r.removed.asset_tag + '" removed')));
      tr.appendChild(td);
      body.appendChild(tr);
    }
    show($('#devices-empty'), res.items.length === 0);
    const next = $('#devices-next');
    show(next, !!res.next_page_token);
    next.onclick = () => load(res.next_page_token).catch(fail);
    document.body.dataset.ready = 'true';
  };
  $('#device-search').addEventListener('submit', (ev) => {
    ev.preventDefault();
    query = ev.target.elements.q.value.trim();
    load('').catch(fail);
  });
  $('#device-add').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    act('/web/api/devices/add', { os_type: f.os_type.value, asset_tag: f.asset_tag.value },
      (r) => 'Device ' + r.device.asset_tag + '/' + r.device.os_type + ' added to the inventory');
  });
  await load('');
}

// ----------------------------------------------------------------------------- audit

async function auditPage() {
  const me = await loadMe();
  if (!me) return;
  renderHeader(me);
  const form = $('#event-filters');
  const load = async () => {
    const f = form.elements;
    const params = new URLSearchParams();
    for (const k of ['type', 'user', 'device', 'since_hours']) if (f[k].value) params.set(k, f[k].value.trim());
    const res = await api('GET', '/web/api/events?' + params);
    fillTable($('#events'), $('#events-empty'), res.items.map((e) => [
      new Date(e.time).toLocaleString(), e.event, e.code, e.user || '',
      (e.device && e.device.device_id) || '', (e.device && e.device.asset_tag) || '',
      e.success ? 'success' : 'failure', e.message || '',
    ]));
    document.body.dataset.ready = 'true';
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    load().catch(fail);
  });
  await load();
}

// ----------------------------------------------------------------------------- terminal

// Strip what a plain <pre> cannot show: CSI and OSC escape sequences; apply \r\n and
// backspaces well enough for a shell prompt.
function termText(current, chunk) {
  const clean = chunk
    .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, '')
    .replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]/g, '')
    .replace(/\x1b[()][0-9A-Za-z]/g, '')
    .replace(/\x1b[=>]/g, '')
    .replace(/\r\n/g, '\n')
    .replace(/\r/g, '');
  let out = current;
  for (const ch of clean) {
    if (ch === '\b') out = out.slice(0, -1);
    else if (ch === '\x07') continue;
    else out += ch;
  }
  return out.length > 200000 ? out.slice(-200000) : out;
}

const KEYS = {
  Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b',
  ArrowUp: '\x1b[A', ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D',
};

async function terminalPage() {
  const me = await loadMe();
  if (!me) return;
  renderHeader(me);
  const q = new URLSearchParams(window.location.search);
  const node = q.get('node') || '';
  const login = q.get('login') || '';
  text($('#terminal-title'), login + '@' + node);
  const out = $('#terminal-output');
  let buffer = '';
  const write = (chunk) => {
    buffer = termText(buffer, chunk);
    out.textContent = buffer;
    out.scrollTop = out.scrollHeight;
  };
  const params = new URLSearchParams({ node, login, csrf: me.csrf_token, cols: '100', rows: '30' });
  const ws = new WebSocket('wss://' + window.location.host + '/web/api/ssh?' + params);
  ws.addEventListener('open', () => { document.body.dataset.terminal = 'open'; });
  ws.addEventListener('message', (ev) => { if (typeof ev.data === 'string') write(ev.data); });
  ws.addEventListener('close', () => { document.body.dataset.terminal = 'closed'; });
  out.addEventListener('keydown', (ev) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    let data = null;
    if (ev.ctrlKey && ev.key.length === 1) {
      const c = ev.key.toUpperCase().charCodeAt(0);
      if (c >= 64 && c <= 95) data = String.fromCharCode(c - 64);
    } else if (KEYS[ev.key]) {
      data = KEYS[ev.key];
    } else if (ev.key.length === 1 && !ev.metaKey && !ev.altKey) {
      data = ev.key;
    }
    if (data !== null) {
      ev.preventDefault();
      ws.send(data);
    }
  });
  out.addEventListener('paste', (ev) => {
    ev.preventDefault();
    if (ws.readyState === WebSocket.OPEN) ws.send(ev.clipboardData.getData('text'));
  });
  out.focus();
}

// ----------------------------------------------------------------------------- app launch

// Step 2 of the app launch (see dt-auth's app_sessions): this page, on the auth service's
// origin, turns the web session into a single-use launch code for the app and the state
// its access point set, and sends the browser back to the app. The web session's cookie
// never leaves this origin.
async function launchPage() {
  const status = $('#launch-status');
  const app = decodeURIComponent(window.location.pathname.replace(/^\/web\/launch\//, ''));
  const state = new URLSearchParams(window.location.search).get('state') || '';
  let me;
  try {
    me = await api('GET', '/web/api/me');
  } catch (e) {
    if (e.status !== 401) throw e;
    text(status, 'Log in to devtrust to open app ' + app + '.');
    $('#launch-login-link').href = '/web/login?' + new URLSearchParams({ next: window.location.pathname + window.location.search });
    show($('#launch-login'), true);
    document.body.dataset.result = 'login';
    return;
  }
  try {
    const r = await api('POST', '/web/api/apps/launch', { app, state }, me.csrf_token);
    document.body.dataset.result = 'redirect';
    window.location.replace(r.url);
  } catch (e) {
    text(status, 'Cannot open app ' + app + ': ' + e.message);
    status.className = 'error';
    document.body.dataset.result = 'refused';
  }
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
  const run = { login: loginPage, index: indexPage, devices: devicesPage, audit: auditPage, terminal: terminalPage, confirm: confirmPage, launch: launchPage }[page];
  if (run) Promise.resolve().then(run).catch(fail);
});
