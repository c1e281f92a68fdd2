// Shared helpers for the Tasklane end-to-end tests: the server's address, the browser, the API,
// unique names, polling assertions and screenshots.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

const RAW_BASE = process.env.TASKLANE_BASE_URL;
if (!RAW_BASE) {
  throw new Error(
    'TASKLANE_BASE_URL is not set. Start tasklane and run, for example:\n'
    + '  TASKLANE_BASE_URL=http://127.0.0.1:5000 node --test e2e/',
  );
}
/** The server under test, without a trailing slash. */
export const BASE_URL = RAW_BASE.replace(/\/+$/, '');
export const ARTIFACTS_DIR = path.resolve(process.env.TASKLANE_ARTIFACTS_DIR || 'artifacts');
export const CHROMIUM = process.env.TASKLANE_CHROMIUM || '/usr/bin/chromium';
/** Must match PAGE_SIZE in frontend/app.js. */
export const PAGE_SIZE = 20;

const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];

/** Launches Debian's Chromium; never downloads a browser. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    // playwright would add its own --headless; ours (new headless) comes last and wins.
    ignoreDefaultArgs: ['--headless'],
  });
}

// ---- Names ---------------------------------------------------------------------------------

const RUN = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
let seq = 0;

/**
 * A token no other task in the database contains, for this suite run: tests put it in their
 * task titles and search for it, so suites (and old data) can share one server.
 */
export function uniqueToken(suite, label) {
  seq += 1;
  // The trailing "x" keeps "…add1x" from being a substring of "…add10x".
  return `${suiteToken(suite)}${label}${seq}x`.replace(/[^A-Za-z0-9]/g, '');
}

/** The token shared by every task a suite creates (its screenshot searches for it). */
export function suiteToken(suite) {
  return `e2e${RUN}${suite}`.replace(/[^A-Za-z0-9]/g, '');
}

// ---- The API, from Node (behind the page's back) --------------------------------------------

export async function apiFetch(method, urlPath, { body, ifMatch } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (ifMatch) headers['If-Match'] = ifMatch;
  const res = await fetch(`${BASE_URL}${urlPath}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  return { status: res.status, data, headers: res.headers };
}

export async function createTask(title, { description = '', status = 'todo' } = {}) {
  const res = await apiFetch('POST', '/api/tasks', { body: { title, description, status } });
  assert.equal(res.status, 201, `creating ${JSON.stringify(title)}: HTTP ${res.status} ${JSON.stringify(res.data)}`);
  return res.data;
}

export async function getTask(id) {
  return apiFetch('GET', `/api/tasks/${id}`);
}

/** Every task whose text matches q, following the Link header across pages. */
export async function searchTasks(q) {
  const all = [];
  let url = `/api/tasks?q=${encodeURIComponent(q)}&limit=100`;
  for (let i = 0; url && i < 50; i += 1) {
    const res = await apiFetch('GET', url);
    assert.equal(res.status, 200, `listing ${url}: HTTP ${res.status}`);
    all.push(...res.data);
    const link = res.headers.get('link') || '';
    const m = /<([^>]+)>\s*;\s*rel="?next"?/.exec(link);
    url = m ? new URL(m[1], BASE_URL).pathname + new URL(m[1], BASE_URL).search : null;
  }
  return all;
}

export async function getCounts() {
  const res = await apiFetch('GET', '/api/tasks/counts');
  assert.equal(res.status, 200);
  return res.data;
}

// ---- Waiting ---------------------------------------------------------------------------------

/** Retries fn (which throws on failure, e.g. with assert) until it passes or time runs out. */
export async function eventually(fn, { timeout = 7000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let lastError;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) throw lastError;
    await new Promise((r) => setTimeout(r, interval));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- Pages -----------------------------------------------------------------------------------

/**
 * Opens the app in a fresh context. Collects page errors, console errors (CSP violations
 * show up there) and dialogs, so tests can assert that none happened.
 */
export async function openApp(browser, { width = 1280, height = 900, autoLoad = true } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, baseURL: BASE_URL });
  if (!autoLoad) {
    // Without IntersectionObserver the page loads older tasks only through "Load more": a test
    // of the button must not race the automatic load that scrolling it into view starts.
    await context.addInitScript(() => {
      delete window.IntersectionObserver;
    });
  }
  const page = await context.newPage();
  const problems = [];
  const dialogs = [];
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    // A failed fetch that a test provoked on purpose is logged by Chromium as a resource error.
    if (/Failed to load resource/.test(text)) return;
    problems.push(`console: ${text}`);
  });
  page.on('dialog', async (dialog) => {
    dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    await dialog.dismiss().catch(() => {});
  });
  await page.goto('/');
  await waitForList(page);
  return { context, page, problems, dialogs };
}

/** Waits until the list has finished loading (first page or after a change of query). */
export async function waitForList(page) {
  await page.waitForFunction(() => {
    const list = document.querySelector('[data-testid="task-list"]');
    return list && list.getAttribute('aria-busy') === 'false';
  }, null, { timeout: 10000 });
}

export async function waitForCounts(page) {
  await page.waitForFunction(() => {
    const n = document.querySelector('[data-testid="count-total"]');
    return n && /^\d+$/.test(n.textContent.trim());
  }, null, { timeout: 10000 });
}

export async function readCounts(page) {
  await waitForCounts(page);
  return page.evaluate(() => {
    const get = (k) => Number(document.querySelector(`[data-testid="count-${k}"]`).textContent.trim());
    return { todo: get('todo'), in_progress: get('in_progress'), done: get('done'), total: get('total') };
  });
}

/** Types a search and waits until the list shows exactly the tasks matching it. */
export async function search(page, q) {
  // Enter searches at once (no debounce) and marks the list busy until the answer is shown.
  await page.getByTestId('search').fill(q);
  await page.getByTestId('search').press('Enter');
  await waitForList(page);
}

/** The list item of a task, by id. */
export function item(page, id) {
  return page.locator(`[data-testid="task-item"][data-task-id="${id}"]`);
}

/** Titles of the visible list items, in order. */
export async function listedTitles(page) {
  return page.locator('[data-testid="task-item"] [data-testid="task-title"]').allTextContents();
}

export async function listedIds(page) {
  return page.locator('[data-testid="task-item"]').evaluateAll((els) => els.map((e) => e.getAttribute('data-task-id')));
}

export async function alertText(page) {
  return (await page.getByTestId('alert').textContent()).trim();
}

export function assertNoProblems(session) {
  assert.deepEqual(session.problems, [], 'the page logged errors (CSP violation or script error)');
  assert.deepEqual(session.dialogs, [], 'a browser dialog opened');
}

/** Full-page screenshot of the app showing this suite's tasks, at desktop and phone widths. */
export async function suiteScreenshot(browser, suite) {
  await mkdir(ARTIFACTS_DIR, { recursive: true });
  for (const [suffix, width, height] of [['', 1280, 900], ['-360', 360, 740]]) {
    const session = await openApp(browser, { width, height });
    try {
      await search(session.page, suiteToken(suite));
      await waitForCounts(session.page);
      // Let arrival animations settle.
      await sleep(300);
      const file = path.join(ARTIFACTS_DIR, `e2e-${suite}${suffix}.png`);
      await session.page.screenshot({ path: file, fullPage: true });
    } finally {
      await session.context.close();
    }
  }
}

// One browser for the enclosing `describe` block: launched before its tests, and after them a
// screenshot of the suite is saved and the browser closed. Returns a function that gives it.
export function suiteBrowser(suite) {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    if (!browser) return;
    try {
      await suiteScreenshot(browser, suite);
    } finally {
      await browser.close();
    }
  });
  return () => browser;
}
