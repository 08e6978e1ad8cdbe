// What the browser test scripts share: the browser, pages that record console errors, the
// web UI's login, screenshots, dtsh runs and the one-JSON-line-per-check report.

import { chromium } from 'playwright-core';
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

export const TIMEOUT = 20000;

// One check's result, for the Rust test to assert on.
export function report(check, fields) {
  console.log(JSON.stringify({ check, ...fields }));
}

// Run dtsh with the profile at `home` (and `env`, e.g. the test's software device).
export function dtsh(bin, home, args, env = {}) {
  const r = spawnSync(bin, args, {
    env: { ...process.env, ...env, DTSH_HOME: home, BROWSER: '/bin/false' },
    encoding: 'utf8',
    timeout: 60000,
  });
  const lines = (r.stdout || '').trim().split('\n');
  return { code: r.status, stdout: r.stdout || '', stderr: r.stderr || '', last: lines[lines.length - 1] };
}

// Debian's chromium, headless, never reaching the network on its own.
export async function launchBrowser() {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}

// A fresh context (no cookies) and page; `errors` collects console errors.
export async function newPage(browser, viewport = { width: 1000, height: 620 }) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(String(e)));
  return { context, page, errors };
}

// Log in to the web UI at `base` and wait for the resource list.
export async function login(page, base, user, password) {
  await page.goto(base + '/web/login');
  await page.fill('input[name="username"]', user);
  await page.fill('input[name="password"]', password);
  await page.click('button[type="submit"]');
  await page.waitForURL(base + '/web/');
  await page.waitForSelector('body[data-ready="true"]');
}

// A screenshot into `dir` (none when `dir` is empty).
export async function shot(dir, page, name) {
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, name + '.png') });
}
