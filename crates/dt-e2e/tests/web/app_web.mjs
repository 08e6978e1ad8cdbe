// App launch from the web UI, in Debian's chromium driven by playwright-core. Run by
// crates/dt-e2e/tests/app_web.rs, which starts the auth service, an app access point and an
// app that echoes the request it got, and passes everything in DT_WEB_TEST (JSON).
// Prints one JSON line per check ({"check": NAME, ...}); the Rust test asserts on them.

import { dtsh as runDtsh, launchBrowser, login as webLogin, newPage, report, shot as saveShot } from './lib.mjs';

const cfg = JSON.parse(process.env.DT_WEB_TEST);
const SESSION = '__Host-devtrust_app_session';
const STATE = '__Host-devtrust_app_state';

const dtsh = (home, args) => runDtsh(cfg.dtsh, home, args, cfg.device_env);
const shot = (page, name) => saveShot(cfg.screenshots, page, name);
const login = (page, user) => webLogin(page, cfg.url, user, cfg.password);

// What the echo app answered (its JSON), or null.
async function echoOf(page) {
  try {
    return JSON.parse(await page.textContent('body'));
  } catch (_) {
    return null;
  }
}

// A devtrust page shown by the access point: its status and text.
async function apPage(page) {
  await page.waitForSelector('body[data-devtrust-page]');
  return {
    status: Number(await page.getAttribute('body', 'data-devtrust-page')),
    title: (await page.textContent('h1')).trim(),
    why: (await page.textContent('#why')).trim(),
    todo: (await page.textContent('#todo')).replace(/\s+/g, ' ').trim(),
  };
}

// A fresh browser that holds only `cookie` (name, value) for `url`, opening `url`.
async function withCookie(browser, url, name, value) {
  const { context, page } = await newPage(browser);
  await context.addCookies([{ name, value, url, secure: true, httpOnly: true }]);
  const resp = await page.goto(url + '/');
  const shown = (await page.$('body[data-devtrust-page]')) ? await apPage(page) : null;
  const out = { status: resp.status(), page: shown };
  await context.close();
  return out;
}

const browser = await launchBrowser();

try {
  const apps = cfg.apps;

  // 1. alice authenticates her web session with her device, then launches both apps.
  {
    const { context, page, errors } = await newPage(browser);
    await login(page, 'alice');
    const link = page.locator('[data-testid="device-web-auth"]');
    await link.waitFor({ state: 'visible' });
    const run = dtsh(cfg.alice_home, ['device', 'web-auth', '--no-browser', await link.getAttribute('href')]);
    await page.goto(run.last);
    await page.waitForSelector('body[data-result]');
    await page.goto(cfg.url + '/web/');
    await page.waitForSelector('body[data-ready="true"]');
    await shot(page, 'apps-list');
    const links = await page.$$eval('#apps a.connect', (as) => as.map((a) => ({ id: a.dataset.testid, href: a.href })));
    const appRows = await page.$$eval('#apps tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    const callbacks = [];
    page.on('request', (r) => {
      if (r.url().includes('/__devtrust/auth')) callbacks.push(r.url());
    });
    await page.click('[data-testid="launch-wiki"]');
    await page.waitForURL(apps.wiki + '/');
    const wiki = await echoOf(page);
    const cookie = (await context.cookies(apps.wiki)).find((c) => c.name === SESSION) || null;
    const webCookiesAtApp = (await context.cookies(apps.wiki)).map((c) => c.name);
    // A deep link to the other app: the launch returns to it.
    await page.goto(apps.vault + '/deep/path?x=1');
    await page.waitForURL(apps.vault + '/deep/path?x=1');
    const vault = await echoOf(page);
    const vaultCookie = (await context.cookies(apps.vault)).find((c) => c.name === SESSION) || null;
    report('alice', {
      device_web_auth: run.code,
      links,
      app_rows: appRows,
      wiki,
      vault,
      cookie,
      cookie_names_at_app: webCookiesAtApp,
      callback: callbacks[0] || null,
      console_errors: errors,
    });

    // 2. The launch link again: in this browser its state cookie is gone; in a browser given
    //    the right state cookie, the code itself is spent.
    const cb = callbacks[0];
    await page.goto(cb);
    const sameBrowser = await apPage(page);
    const state = new URL(cb).searchParams.get('state');
    const { context: c2, page: p2 } = await newPage(browser);
    await c2.addCookies([{ name: STATE, value: state + '.Lw', url: apps.wiki, secure: true, httpOnly: true }]);
    const r2 = await p2.goto(cb);
    const spent = { status: r2.status(), page: await apPage(p2) };
    await c2.close();
    report('replayed_code', { same_browser: sameBrowser, spent });

    // 3. Forged cookies, and one app's cookie at another app.
    const forged = await withCookie(browser, apps.wiki, SESSION, '00000000-0000-0000-0000-000000000000.forged');
    const malformed = await withCookie(browser, apps.wiki, SESSION, 'garbage');
    const otherApp = await withCookie(browser, apps.vault, SESSION, cookie ? cookie.value : '');
    const copied = await withCookie(browser, apps.wiki, SESSION, cookie ? cookie.value : '');
    report('cookies', { forged, malformed, other_app: otherApp, copied_same_app: { status: copied.status } });

    // 4. App logout ends the wiki session; web logout ends the vault one.
    await page.goto(apps.wiki + '/__devtrust/logout');
    const loggedOut = await apPage(page);
    const afterAppLogout = await withCookie(browser, apps.wiki, SESSION, cookie ? cookie.value : '');
    await page.goto(cfg.url + '/web/');
    await page.waitForSelector('body[data-ready="true"]');
    await page.click('#user-menu-button');
    await page.click('#logout');
    await page.waitForURL(/\/web\/login/);
    await new Promise((r) => setTimeout(r, cfg.recheck_ms + 500));
    const afterWebLogout = await withCookie(browser, apps.vault, SESSION, vaultCookie ? vaultCookie.value : '');
    report('logout', { logged_out: loggedOut, after_app_logout: afterAppLogout, after_web_logout: afterWebLogout });
    await context.close();
  }

  // 5. bob has no trusted device: the prod app says why and what to do; the dev app opens.
  {
    const { context, page, errors } = await newPage(browser);
    await login(page, 'bob');
    await page.click('[data-testid="launch-vault"]');
    const denied = await apPage(page);
    await shot(page, 'app-trusted-device-required');
    await page.goto(cfg.url + '/web/');
    await page.waitForSelector('body[data-ready="true"]');
    await page.click('[data-testid="launch-wiki"]');
    await page.waitForURL(apps.wiki + '/');
    const cookie = (await context.cookies(apps.wiki)).find((c) => c.name === SESSION);
    report('bob', { denied, wiki: await echoOf(page), cookie: cookie ? cookie.value : null, console_errors: errors });
    await context.close();
  }

  // 6. Not logged in: the launch asks for a login and then carries on to the app.
  {
    const { context, page, errors } = await newPage(browser);
    await page.goto(apps.wiki + '/start?y=2');
    await page.waitForSelector('body[data-result="login"]');
    const asked = (await page.textContent('#launch-status')).trim();
    await page.click('#launch-login-link');
    await page.fill('input[name="username"]', 'bob');
    await page.fill('input[name="password"]', cfg.password);
    await page.click('button[type="submit"]');
    await page.waitForURL(apps.wiki + '/start?y=2');
    const cookie = (await context.cookies(apps.wiki)).find((c) => c.name === SESSION);
    report('login_first', { asked, echo: await echoOf(page), cookie: cookie ? cookie.value : null, console_errors: errors });
    await context.close();
  }

  report('done', {});
} finally {
  await browser.close();
}
