// Shared helpers for the browser tests: Debian's Chromium through playwright-core, a context per
// person, every browser console error and page error collected (any one fails the test), and
// screenshots of each screen.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

export const config = JSON.parse(process.env.CAREBELL_UI_CONFIG ?? '{}');
const shots = config.screenshots_dir ?? 'screenshots';
mkdirSync(shots, { recursive: true });

export const errors = [];

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--ignore-certificate-errors',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      '--autoplay-policy=no-user-gesture-required',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
}

/** A browser context for one person, with its page; errors are recorded under `who`. */
export async function person(browser, who) {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    locale: 'zh-CN',
    permissions: ['microphone'],
    viewport: { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') {
      errors.push(`${who}: console error: ${message.text()}`);
    }
  });
  page.on('pageerror', (error) => errors.push(`${who}: page error: ${error.message}`));
  page.setDefaultTimeout(20000);
  return { context, page };
}

export async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

export const byTestId = (page, id) => page.locator(`[data-testid="${id}"]`);

export async function signIn(page, url, username, password) {
  await page.goto(url);
  await page.fill('#username', username);
  await page.fill('#password', password);
  await byTestId(page, 'sign-in').click();
}

/** Runs `tablet-sim` with the given steps; resolves with its exit code and output. */
export function tabletSim(steps) {
  const child = spawn(config.tablet_sim, ['--credentials', config.credentials_path, ...steps], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (data) => (output += data));
  child.stderr.on('data', (data) => (output += data));
  const done = new Promise((resolve) => child.on('exit', (code) => resolve({ code, output })));
  return { child, done };
}

export function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

/** Runs a scenario; prints the outcome; exits non-zero on failure or any browser error. */
export async function scenario(name, body) {
  const browser = await launch();
  let failed = null;
  try {
    await body(browser);
  } catch (error) {
    failed = error;
  } finally {
    await browser.close().catch(() => {});
  }
  if (failed) {
    console.log(`${name}: FAILED: ${failed.stack ?? failed}`);
  }
  if (errors.length > 0) {
    console.log(`${name}: the browser logged errors:\n  ${errors.join('\n  ')}`);
  }
  if (failed || errors.length > 0) {
    process.exit(1);
  }
  console.log(`${name}: passed`);
}
