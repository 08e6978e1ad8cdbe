// Browser flows of the devtrust web UI, in Debian's chromium driven by playwright-core.
// Run by crates/dt-e2e/tests/web_ui.rs, which starts the real servers, prepares users and
// devices with the real CLIs and passes everything in the DT_WEB_TEST variable (JSON).
// Prints one JSON line per check ({"check": NAME, ...}); the Rust test asserts on them.
// Exits non-zero only when the harness itself breaks (a failed check is a printed line).

import { TIMEOUT, dtsh as runDtsh, launchBrowser, login, newPage, report, shot as saveShot } from './lib.mjs';

const cfg = JSON.parse(process.env.DT_WEB_TEST);

const dtsh = (home, args) => runDtsh(cfg.dtsh, home, args, cfg.device_env);
const shot = (page, name) => saveShot(cfg.screenshots, page, name);

async function shieldState(page) {
  return page.getAttribute('[data-testid="device-trust-shield"]', 'data-state');
}

async function handoffLink(page) {
  const link = page.locator('[data-testid="device-web-auth"]');
  await link.waitFor({ state: 'visible' });
  return link.getAttribute('href');
}

async function confirmIn(page, url) {
  await page.goto(url);
  await page.waitForSelector('body[data-result]');
  return {
    result: await page.getAttribute('body', 'data-result'),
    status: (await page.textContent('#confirm-status')).trim(),
  };
}

const browser = await launchBrowser();

try {
  const base = cfg.url;
  const alice = cfg.users.alice;

  // 1. Login, hand-off to dtsh, confirmation: yellow shield before, green after.
  {
    const { context, page, errors } = await newPage(browser);
    await page.goto(base + '/web/login');
    await shot(page, 'login');
    await login(page, base, 'alice', alice.password);
    const before = await shieldState(page);
    const href = await handoffLink(page);
    await shot(page, 'device-web-auth');
    const run = dtsh(alice.home, ['device', 'web-auth', '--no-browser', href]);
    let confirm = null;
    let after = null;
    if (run.code === 0) {
      confirm = await confirmIn(page, run.last);
      await shot(page, 'device-confirmed');
      await page.goto(base + '/web/');
      await page.waitForSelector('body[data-ready="true"]');
      after = await shieldState(page);
      await page.click('#user-menu-button');
      await page.waitForSelector('#user-menu:not([hidden])');
      await shot(page, 'trusted');
    }
    const handoffHidden = await page.locator('#device-web-auth-panel').isHidden();
    report('trusted_flow', {
      shield_before: before,
      href,
      dtsh_code: run.code,
      dtsh_stdout: run.stdout,
      dtsh_stderr: run.stderr,
      confirm,
      shield_after: after,
      handoff_hidden_after: handoffHidden,
      menu_text: after ? (await page.textContent('#user-menu')).replace(/\s+/g, ' ').trim() : null,
      console_errors: errors,
    });

    // 2. The same link again: the web token was spent.
    const replay = dtsh(alice.home, ['device', 'web-auth', '--no-browser', href]);
    report('replayed_token', { code: replay.code, stderr: replay.stderr });

    // 3. CSRF: a state-changing call without the token is refused and changes nothing.
    const csrf = await page.evaluate(async () => {
      const r = await fetch('/web/api/logout', { method: 'POST' });
      const body = await r.json();
      const me = await fetch('/web/api/me');
      // The terminal's WebSocket without the token is refused at the handshake.
      const ws = await new Promise((resolve) => {
        const s = new WebSocket('wss://' + location.host + '/web/api/ssh?node=node1&login=root');
        s.onopen = () => resolve('open');
        s.onerror = () => resolve('refused');
      });
      return { status: r.status, error: body.error, still_logged_in: me.status === 200, websocket: ws };
    });
    report('csrf_refused', csrf);

    // Logout (with the token, from the menu) ends the session.
    await page.click('#logout');
    await page.waitForURL(base + '/web/login');
    const afterLogout = await page.evaluate(async () => (await fetch('/web/api/me')).status);
    report('logout', { me_status: afterLogout });
    await context.close();
  }

  // 4. IP mismatch: dtsh connects from 127.0.0.2, the browser from 127.0.0.1.
  {
    const { context, page } = await newPage(browser);
    await login(page, base, 'alice', alice.password);
    const href = await handoffLink(page);
    const run = dtsh(alice.home, ['device', 'web-auth', '--no-browser', '--bind-addr', '127.0.0.2', href]);
    let confirm = null;
    if (run.code === 0) {
      confirm = await confirmIn(page, run.last);
      await shot(page, 'ip-mismatch');
      await page.goto(base + '/web/');
      await page.waitForSelector('body[data-ready="true"]');
    }
    report('ip_mismatch', { dtsh_code: run.code, dtsh_stderr: run.stderr, confirm, shield_after: await shieldState(page) });
    await context.close();
  }

  // 5. Another user's token: bob's dtsh refuses alice's link; edited to name bob, the
  // server refuses it.
  {
    const { context, page } = await newPage(browser);
    await login(page, base, 'alice', alice.password);
    const href = await handoffLink(page);
    const bob = cfg.users.bob;
    const local = dtsh(bob.home, ['device', 'web-auth', '--no-browser', href]);
    const forged = href.replace('devtrust://alice@', 'devtrust://bob@');
    const server = dtsh(bob.home, ['device', 'web-auth', '--no-browser', forged]);
    report('other_users_token', {
      local_code: local.code,
      local_stderr: local.stderr,
      server_code: server.code,
      server_stderr: server.stderr,
      shield_after: await shieldState(page),
    });
    await context.close();
  }

  // 6. Yellow shield: carol's role requires a trusted device and she has none.
  {
    const { context, page, errors } = await newPage(browser);
    await login(page, base, 'carol', cfg.users.carol.password);
    const state = await shieldState(page);
    const required = await page.locator('#required-panel').isVisible();
    const handoff = await page.locator('#device-web-auth-panel').isVisible();
    await shot(page, 'required');
    const nodes = await page.locator('#nodes tbody tr').count();
    report('required', { shield: state, required_panel: required, handoff_panel: handoff, nodes, console_errors: errors });
    await context.close();
  }

  // 8. The device inventory and the audit log (alice is an editor).
  {
    const { context, page, errors } = await newPage(browser);
    await login(page, base, 'alice', alice.password);
    const nav = (await page.textContent('#nav')).replace(/\s+/g, ' ').trim();
    await page.goto(base + '/web/devices');
    await page.waitForSelector('body[data-ready="true"]');
    const listed = await page.locator('#devices tbody tr').allTextContents();
    const act = async () => {
      await page.waitForFunction(() => document.querySelector('#action-result').textContent !== '');
      const t = (await page.textContent('#action-result')).trim();
      await page.evaluate(() => { document.querySelector('#action-result').textContent = ''; });
      return t;
    };
    await page.selectOption('#device-add select[name="os_type"]', 'linux');
    await page.fill('#device-add input[name="asset_tag"]', 'WEB-NEW-1');
    await page.click('#device-add button[type="submit"]');
    const added = await act();
    await page.fill('#device-search input[name="q"]', 'WEB-NEW-1');
    await page.click('#device-search button[type="submit"]');
    await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr').length === 1);
    const found = await page.locator('#devices tbody tr').allTextContents();
    const row = page.locator('#devices tbody tr').first();
    await row.getByText('Enrollment token').click();
    const token = await act();
    await page.fill('#device-search input[name="q"]', 'WEB-NEW-1');
    await page.click('#device-search button[type="submit"]');
    await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr').length === 1);
    await page.locator('#devices tbody tr').first().getByText('Lock').click();
    const locked = await act();
    await page.fill('#device-search input[name="q"]', 'WEB-NEW-1');
    await page.click('#device-search button[type="submit"]');
    await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr').length === 1);
    await page.locator('#devices tbody tr').first().getByText('Remove').click();
    const removed = await act();
    await page.fill('#device-search input[name="q"]', '');
    await page.click('#device-search button[type="submit"]');
    await page.waitForSelector('#devices tbody tr');
    await shot(page, 'devices');
    await page.goto(base + '/web/audit');
    await page.waitForSelector('body[data-ready="true"]');
    await page.fill('#event-filters input[name="type"]', 'device.authenticate.confirm');
    await page.evaluate(() => { document.body.dataset.ready = ''; });
    await page.click('#event-filters button[type="submit"]');
    await page.waitForSelector('body[data-ready="true"]');
    const events = await page.locator('#events tbody tr').allTextContents();
    await shot(page, 'audit');
    report('admin_pages', { nav, listed, added, found, token, locked, removed, events, console_errors: errors });
    await context.close();
  }

  // 7. Expired token (a server whose web tokens live 1 s).
  if (cfg.expired) {
    const e = cfg.expired;
    const { context, page } = await newPage(browser);
    await login(page, e.url, 'alice', e.password);
    const href = await handoffLink(page);
    await new Promise((r) => setTimeout(r, 2500));
    const run = dtsh(e.home, ['device', 'web-auth', '--no-browser', href]);
    report('expired_token', { code: run.code, stderr: run.stderr });
    await context.close();
  }
  // 9. The browser terminal: refused while the session has no trusted device (alice's role
  // requires one), allowed after device web authentication. Last: it locks alice's device.
  if (cfg.node) {
    const { context, page, errors } = await newPage(browser);
    await login(page, base, 'alice', alice.password);
    const href = await handoffLink(page);
    const nodes = await page.locator('#nodes tbody tr').allTextContents();
    const open = async () => {
      await page.goto(base + '/web/terminal?' + new URLSearchParams({ node: cfg.node, login: 'root' }));
      await page.waitForSelector('body[data-terminal]');
    };
    await open();
    await page.waitForSelector('body[data-terminal="closed"]');
    const refused = await page.textContent('#terminal-output');
    await shot(page, 'terminal-refused');
    const run = dtsh(alice.home, ['device', 'web-auth', '--no-browser', href]);
    let confirm = null;
    let output = null;
    let lock = null;
    if (run.code === 0) {
      confirm = await confirmIn(page, run.last);
      await open();
      await page.waitForSelector('body[data-terminal="open"]');
      await page.click('#terminal-output');
      await page.keyboard.type('echo web-term-$((6*7))');
      await page.keyboard.press('Enter');
      await page.waitForFunction(() => document.querySelector('#terminal-output').textContent.includes('web-term-42'));
      await shot(page, 'terminal');
      output = await page.textContent('#terminal-output');
      // A lock on the device (from the inventory page, in another tab) ends the live
      // terminal and the device-trusted web session.
      const admin = await context.newPage();
      admin.setDefaultTimeout(TIMEOUT);
      await admin.goto(base + '/web/devices');
      await admin.waitForSelector('body[data-ready="true"]');
      await admin.fill('#device-search input[name="q"]', 'WEB-LAPTOP-1');
      await admin.click('#device-search button[type="submit"]');
      await admin.waitForFunction(() => document.querySelectorAll('#devices tbody tr').length === 1);
      await admin.locator('#devices tbody tr').first().getByText('Lock').click();
      await admin.waitForFunction(() => document.querySelector('#action-result').textContent !== '');
      await page.waitForSelector('body[data-terminal="closed"]');
      const afterLock = await page.textContent('#terminal-output');
      const me = await admin.evaluate(async () => {
        const r = await fetch('/web/api/me');
        return { status: r.status, error: (await r.json()).error };
      });
      lock = { terminal_tail: afterLock.slice(-300), me };
    }
    report('terminal', { nodes, refused, dtsh_code: run.code, dtsh_stderr: run.stderr, confirm, output, lock, console_errors: errors });
    await context.close();
  }

} finally {
  await browser.close();
}
report('done', {});
