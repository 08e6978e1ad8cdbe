// Desktops in the browser: Debian's chromium driven by playwright-core against the real
// auth service and a real `devtrust desktop start` (Xvfb + xterm). Run by
// crates/dt-e2e/tests/desktop_access.rs, which passes everything in DT_WEB_TEST (JSON).
// Prints one JSON line per check ({"check": NAME, ...}); the Rust test asserts on them.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { TIMEOUT, launchBrowser, login, newPage as freshPage, report } from './lib.mjs';

const cfg = JSON.parse(process.env.DT_WEB_TEST);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, f, ms = TIMEOUT) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return true;
    await sleep(50);
  }
  return false;
}

// Xvfb processes of this test's access point (their -auth file is under its TMPDIR).
function xvfbPids() {
  const r = spawnSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return (r.stdout || '').split('\n')
    .filter((l) => l.includes('Xvfb') && l.includes(cfg.tmpdir))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

const newPage = (browser) => freshPage(browser, { width: 1100, height: 900 });

function desktopUrl(deskLogin) {
  return cfg.url + '/web/desktop?' + new URLSearchParams({ desktop: cfg.desktop, login: deskLogin, width: '800', height: '600' });
}

// Opens the desktop in `page`; resolves to 'open' or the end state.
async function openDesktop(page, deskLogin) {
  await page.goto(desktopUrl(deskLogin));
  await page.waitForSelector('body[data-desktop="open"], body[data-desktop="ended"]');
  return page.getAttribute('body', 'data-desktop');
}

async function status(page) {
  return (await page.textContent('#desktop-status')).trim();
}

// How many distinct colours the canvas shows (1 = blank).
async function canvasColours(page) {
  return page.evaluate(() => {
    const c = document.querySelector('#desktop-canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < d.length && seen.size < 50; i += 4 * 7) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    return seen.size;
  });
}

async function typeInto(page, line) {
  await page.click('#desktop-canvas');
  await page.keyboard.type(line);
  await page.keyboard.press('Enter');
}

// A WebSocket of our own from the page (right Origin, the session's CSRF token), to send
// what the page never would.
async function rawSession(page, payload) {
  return page.evaluate(async ({ desktop, login, payload }) => {
    const me = await (await fetch('/web/api/me')).json();
    const q = new URLSearchParams({ desktop, login, csrf: me.csrf_token, width: '400', height: '400' });
    const ws = new WebSocket('wss://' + location.host + '/web/api/desktop?' + q);
    ws.binaryType = 'arraybuffer';
    return new Promise((resolve) => {
      let hello = false;
      const timer = setTimeout(() => resolve({ hello, end: null, timeout: true }), 15000);
      ws.onmessage = (ev) => {
        const b = new Uint8Array(ev.data);
        if (b[0] === 0x81 && !hello) {
          hello = true;
          ws.send(new Uint8Array(payload));
        } else if (b[0] === 0x85) {
          clearTimeout(timer);
          resolve({ hello, reason: b[1], end: new TextDecoder().decode(b.subarray(2)) });
        }
      };
      ws.onclose = () => { clearTimeout(timer); resolve({ hello, end: null, closed: true }); };
    });
  }, { desktop: cfg.desktop, login: cfg.login, payload });
}

const browser = await launchBrowser();

try {
  // 1. bob (a role without device trust; the cluster's mode is `required`): the desktop is
  //    listed, opens, shows xterm, and what he types runs on the server.
  const bob = await newPage(browser);
  {
    const { page, errors } = bob;
    await login_(page, 'bob');
    let listed = '';
    await waitFor('listed', async () => {
      await page.goto(cfg.url + '/web/');
      await page.waitForSelector('body[data-ready="true"]');
      listed = (await page.textContent('#desktops')).replace(/\s+/g, ' ');
      return listed.includes(cfg.desktop);
    });
    const state = await openDesktop(page, cfg.login);
    const drawn = await waitFor('xterm drawn', async () => (await canvasColours(page)) > 1);
    await sleep(500);
    await typeInto(page, `echo hi > ${cfg.out}`);
    const ran = await waitFor('file', async () => existsSync(cfg.out));
    await sleep(300);
    const colours = await canvasColours(page);
    const frames = Number(await page.getAttribute('body', 'data-frames'));
    if (cfg.screenshots) {
      mkdirSync(cfg.screenshots, { recursive: true });
      await page.locator('#desktop-canvas').screenshot({ path: join(cfg.screenshots, 'desktop.png') });
    }
    report('open_and_type', { listed, state, drawn, ran, colours, frames, status: await status(page), console_errors: errors });
  }

  // 2. A second tab gets a desktop of its own; `exit` ends its session command and the page
  //    says so; its X server is gone, the first tab's is not.
  {
    const before = xvfbPids();
    const tab = await newPage(browser);
    await login_(tab.page, 'bob');
    const state = await openDesktop(tab.page, cfg.login);
    const during = xvfbPids();
    await waitFor('xterm drawn', async () => (await canvasColours(tab.page)) > 1);
    await sleep(500);
    await typeInto(tab.page, 'exit');
    await tab.page.waitForSelector('body[data-desktop="ended"]');
    const ended = await status(tab.page);
    await waitFor('xvfb gone', async () => xvfbPids().length === before.length);
    report('second_tab', { before: before.length, during: during.length, state, ended, after: xvfbPids().length });
    await tab.context.close();
  }

  // 3. Bad input: an unknown message type and an oversized one end only their own session,
  //    with the reason; the first tab keeps working.
  {
    const unknown = await rawSession(bob.page, [0x7f, 1, 2, 3]);
    const oversized = await rawSession(bob.page, Array.from({ length: 70000 }, () => 0x04));
    const truncated = await rawSession(bob.page, [0x02, 1]);
    await typeInto(bob.page, `echo again > ${cfg.out2}`);
    const still = await waitFor('file', async () => existsSync(cfg.out2));
    report('bad_input', { unknown, oversized, truncated, still_serving: still, first_tab: await bob.page.getAttribute('body', 'data-desktop') });
  }

  // 4. An X server that dies: the page says so and the session is cleaned up.
  {
    const before = xvfbPids();
    const tab = await newPage(browser);
    await login_(tab.page, 'bob');
    const state = await openDesktop(tab.page, cfg.login);
    const mine = xvfbPids().filter((p) => !before.includes(p));
    for (const p of mine) process.kill(p, 'SIGKILL');
    await tab.page.waitForSelector('body[data-desktop="ended"]');
    report('x_server_dies', { state, killed: mine.length, ended: await status(tab.page), reason: await tab.page.getAttribute('body', 'data-end-reason') });
    await tab.context.close();
  }

  // 5. A lock on bob ends his live desktop; the page says why.
  {
    const t0 = Date.now();
    const r = spawnSync(cfg.dtctl.bin, [...cfg.dtctl.args, 'lock', '--user=bob', '--message=desktop maintenance'], { env: { ...process.env, ...cfg.dtctl.env }, encoding: 'utf8' });
    const t1 = Date.now();
    await bob.page.waitForSelector('body[data-desktop="ended"]', { timeout: 10000 });
    const t2 = Date.now();
    report('lock', { code: r.status, stderr: r.stderr, ended: await status(bob.page), reason: await bob.page.getAttribute('body', 'data-end-reason'), after_lock_ms: t2 - t1, total_ms: t2 - t0 });
  }

  // 6. alice: her role requires a trusted device. Refused before device web authentication
  //    (the message in the page), allowed after.
  {
    const { page, errors } = await newPage(browser);
    await login_(page, 'alice');
    const href = await page.locator('[data-testid="device-web-auth"]').getAttribute('href');
    const refusedState = await openDesktop(page, cfg.login);
    const refused = await status(page);
    const r = spawnSync(cfg.dtsh, ['device', 'web-auth', '--no-browser', href], {
      env: { ...process.env, ...cfg.device_env, DTSH_HOME: cfg.users.alice.home, BROWSER: '/bin/false' },
      encoding: 'utf8', timeout: 60000,
    });
    const lines = (r.stdout || '').trim().split('\n');
    await page.goto(lines[lines.length - 1]);
    await page.waitForSelector('body[data-result]');
    const confirm = await page.getAttribute('body', 'data-result');
    const allowedState = await openDesktop(page, cfg.login);
    const allowed = await status(page);
    report('trusted_device', { refusedState, refused, dtsh_code: r.status, dtsh_stderr: r.stderr, confirm, allowedState, allowed, console_errors: errors });
  }
  report('done', {});
} finally {
  await browser.close();
}

async function login_(page, user) {
  await login(page, cfg.url, user, cfg.users[user].password);
}
