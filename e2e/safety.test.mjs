// Suite "safety": API failures are shown, user text is never HTML, the CSP holds, and the page
// is usable by keyboard and at 360 px.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BASE_URL, alertText, assertNoProblems, createTask, eventually, item, listedIds,
  openApp, search, searchTasks, suiteBrowser, uniqueToken, waitForList,
} from './lib.mjs';

const SUITE = 'safety';
const T = { timeout: 60_000 };
const XSS_TITLE = '<img src=x onerror=alert(1)>';

describe('safety', () => {
  const browser = suiteBrowser(SUITE);

  test('the page is served with a strict Content-Security-Policy', T, async () => {
    const res = await fetch(`${BASE_URL}/`);
    assert.equal(res.status, 200);
    const csp = res.headers.get('content-security-policy') || '';
    assert.match(csp, /script-src 'self'/, `CSP was: ${csp}`);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, `CSP was: ${csp}`);
    const html = await res.text();
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'inline <script> in index.html');
    assert.doesNotMatch(html, /\son[a-z]+\s*=/i, 'inline event handler in index.html');
    assert.doesNotMatch(html, /\sstyle\s*=/i, 'inline style attribute in index.html');
  });

  test('the page\'s files are served with the right types', T, async () => {
    for (const [file, type] of [
      ['/', /^text\/html/], ['/app.js', /^(text|application)\/javascript/],
      ['/style.css', /^text\/css/], ['/favicon.svg', /^image\/svg\+xml/],
    ]) {
      const res = await fetch(`${BASE_URL}${file}`);
      assert.equal(res.status, 200, `${file}: HTTP ${res.status}`);
      assert.match(res.headers.get('content-type') || '', type, `${file}: ${res.headers.get('content-type')}`);
    }
  });

  test('a 503 on add is shown in the alert region, and the typed text is kept', T, async () => {
    const s = await openApp(browser());
    const { page } = s;
    try {
      const token = uniqueToken(SUITE, 'fail');
      await page.route('**/api/tasks', (route) => {
        if (route.request().method() !== 'POST') return route.continue();
        return route.fulfill({
          status: 503,
          contentType: 'application/json',
          body: JSON.stringify({ error: 'the task store is unavailable', code: 'unavailable' }),
        });
      });
      await page.getByTestId('new-title').fill(`Will not be saved ${token}`);
      await page.getByTestId('add-button').click();
      const alert = page.getByTestId('alert');
      await eventually(async () => {
        assert.equal(await alert.isVisible(), true);
        assert.match(await alertText(page), /couldn.t add/i);
        assert.match(await alertText(page), /unavailable/i);
      });
      assert.equal(await alert.getAttribute('role'), 'alert');
      assert.equal(await page.getByTestId('new-title').inputValue(), `Will not be saved ${token}`);
      assert.equal(await page.getByTestId('add-button').isEnabled(), true);
      assert.deepEqual(await searchTasks(token), []);

      // The message can be dismissed.
      await page.getByTestId('alert-dismiss').click();
      assert.equal(await alertText(page), '');

      // Once the server is back, the same click works and clears the form.
      await page.unroute('**/api/tasks');
      await page.getByTestId('add-button').click();
      await eventually(async () => {
        assert.equal((await searchTasks(token)).length, 1);
        assert.equal(await page.getByTestId('new-title').inputValue(), '');
      });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('a network failure or a failing list is shown, not only logged', T, async () => {
    const s = await openApp(browser());
    const { page } = s;
    try {
      const token = uniqueToken(SUITE, 'net');
      const task = await createTask(`Network victim ${token}`);
      await search(page, token);
      await page.route(`**/api/tasks/${task.id}`, (route) => route.abort('connectionrefused'));
      await item(page, task.id).getByTestId('status-done').click();
      await eventually(async () => {
        assert.match(await alertText(page), /can.t reach/i);
      });
      assert.equal(await item(page, task.id).getAttribute('data-status'), 'todo');
      await page.unroute(`**/api/tasks/${task.id}`);

      const isList = (url) => url.pathname === '/api/tasks' && url.search !== '';
      await page.route(isList, (route) => route.fulfill({
        status: 500,
        contentType: 'application/json',
        body: JSON.stringify({ error: 'unexpected task store error', code: 'internal' }),
      }));
      await page.getByTestId('filter-done').check();
      await eventually(async () => {
        assert.match(await alertText(page), /couldn.t load tasks/i);
      });
      assert.match(await page.getByTestId('list-status').textContent(), /could not be loaded/);
      await page.unroute(isList);
      await page.getByTestId('filter-all').check();
      await waitForList(page);
      assert.deepEqual(await listedIds(page), [String(task.id)]);
    } finally {
      await s.context.close();
    }
  });

  test('a title full of HTML shows literally and runs nothing', T, async () => {
    const s = await openApp(browser());
    const { page } = s;
    try {
      const token = uniqueToken(SUITE, 'xss');
      await page.evaluate(() => { window.__pwned = 0; });
      // Created through the page, exactly as a person would type it.
      await page.getByTestId('new-title').fill(XSS_TITLE);
      await page.getByTestId('new-description').fill(`<script>window.__pwned=1</script><b>bold?</b> ${token}`);
      const [response] = await Promise.all([
        page.waitForResponse((r) => r.url().endsWith('/api/tasks') && r.request().method() === 'POST'),
        page.getByTestId('add-button').click(),
      ]);
      assert.equal(response.status(), 201);
      const { id } = await response.json();
      // And another through the API, with an attribute-breaking title.
      const other = await createTask(`"><svg onload=alert(2)> ${token}`, { description: '<iframe src="javascript:alert(3)"></iframe>' });

      // The exact title is found by searching for it (older runs may have left the same title:
      // every one of them must render as text too); ours is the newest, so on the first page.
      await search(page, XSS_TITLE);
      assert.equal(await item(page, id).getByTestId('task-title').textContent(), XSS_TITLE);
      assert.equal(await item(page, id).getByTestId('task-description').textContent(),
        `<script>window.__pwned=1</script><b>bold?</b> ${token}`);
      const injectedHere = await page.evaluate(() => document.querySelectorAll(
        '[data-testid="task-list"] img, [data-testid="task-list"] script, [data-testid="task-list"] b',
      ).length);
      assert.equal(injectedHere, 0, 'an element was created from task text');

      await search(page, token);
      assert.equal(await item(page, other.id).getByTestId('task-title').textContent(), `"><svg onload=alert(2)> ${token}`);
      const injected = await page.evaluate(() => document.querySelectorAll(
        '[data-testid="task-list"] img, [data-testid="task-list"] script, [data-testid="task-list"] svg,'
        + ' [data-testid="task-list"] iframe, [data-testid="task-list"] b',
      ).length);
      assert.equal(injected, 0, 'an element was created from task text');

      // The edit form and the delete dialog show it as text too.
      await search(page, XSS_TITLE);
      await item(page, id).getByTestId('edit').click();
      assert.equal(await item(page, id).getByTestId('edit-title').inputValue(), XSS_TITLE);
      await page.keyboard.press('Escape');
      await item(page, id).getByTestId('delete').click();
      assert.match(await page.getByTestId('confirm-dialog').textContent(), /<img src=x onerror=alert\(1\)>/);
      assert.equal(await page.locator('[data-testid="confirm-dialog"] img').count(), 0);
      await page.getByTestId('confirm-cancel').click();

      // Reloading shows the stored text the same way.
      await page.reload();
      await search(page, XSS_TITLE);
      assert.equal(await item(page, id).getByTestId('task-title').textContent(), XSS_TITLE);
      assert.equal(await page.locator('[data-testid="task-list"] img').count(), 0);

      await page.waitForTimeout(300);
      assert.equal(await page.evaluate(() => window.__pwned), undefined);
      assertNoProblems(s); // no dialog fired, no CSP report, no script error
    } finally {
      await s.context.close();
    }
  });

  test('every control has a label, and the form works by keyboard alone with visible focus', T, async () => {
    const token = uniqueToken(SUITE, 'a11y');
    await createTask(`Labelled task ${token}`);
    const s = await openApp(browser());
    const { page } = s;
    try {
      await search(page, token);
      const unlabelled = await page.evaluate(() => {
        const bad = [];
        for (const c of document.querySelectorAll('button, input, select, textarea')) {
          if (c.closest('[hidden]') || c.type === 'hidden') continue;
          const name = (c.getAttribute('aria-label') || '').trim()
            || (c.labels && [...c.labels].map((l) => l.textContent.trim()).join(' '))
            || (c.tagName === 'BUTTON' ? c.textContent.trim() : '');
          if (!name) bad.push(c.outerHTML.slice(0, 120));
        }
        return bad;
      });
      assert.deepEqual(unlabelled, []);
      const label = await page.locator('[data-testid="task-item"]').first().getByTestId('status-done').getAttribute('aria-label');
      assert.equal(label, `Mark “Labelled task ${token}” done`);
      assert.equal(await page.locator('[aria-live="polite"]').count() >= 1, true);

      // Keyboard only: from the top of the page, Tab to the title field, type, submit.
      // A click on the (not focusable) heading moves the keyboard's starting point there.
      await page.locator('h1').click();
      let reached = false;
      for (let i = 0; i < 8 && !reached; i += 1) {
        await page.keyboard.press('Tab');
        reached = await page.evaluate(() => document.activeElement?.getAttribute('data-testid') === 'new-title');
      }
      assert.ok(reached, 'could not reach the title field with Tab');
      const focusStyle = await page.evaluate(() => {
        const cs = getComputedStyle(document.activeElement);
        return { style: cs.outlineStyle, width: parseFloat(cs.outlineWidth) };
      });
      assert.notEqual(focusStyle.style, 'none');
      assert.ok(focusStyle.width >= 2, `focus outline too thin: ${focusStyle.width}px`);

      await page.keyboard.type(`Typed by keyboard ${token}`);
      await page.keyboard.press('Tab'); // description
      await page.keyboard.type('No mouse needed');
      await page.keyboard.press('Tab'); // status
      await page.keyboard.press('Tab'); // add button
      assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('data-testid')), 'add-button');
      const buttonFocus = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
      assert.notEqual(buttonFocus, 'none', 'the Add button shows no focus outline');
      await page.keyboard.press('Enter');
      await eventually(async () => {
        assert.equal((await searchTasks(`Typed by keyboard ${token}`)).length, 1);
      });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('at 360 px wide nothing scrolls sideways, even with a long unbroken title', T, async () => {
    const token = uniqueToken(SUITE, 'narrow');
    await createTask(`${'Supercalifragilistic'.repeat(6)} ${token}`, { description: 'x'.repeat(300) });
    await createTask(`A normal task ${token}`, { status: 'in_progress' });
    const s = await openApp(browser(), { width: 360, height: 740 });
    const { page } = s;
    try {
      await search(page, token);
      assert.equal((await listedIds(page)).length, 2);
      const widths = await page.evaluate(() => ({
        scroll: document.documentElement.scrollWidth,
        client: document.documentElement.clientWidth,
      }));
      assert.ok(widths.scroll <= widths.client, `page is ${widths.scroll}px wide in a ${widths.client}px window`);
      // Edit form and dialog fit too.
      const first = page.getByTestId('task-item').first();
      await first.getByTestId('edit').click();
      const editWidth = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(editWidth <= 360, `edit form makes the page ${editWidth}px wide`);
      await page.keyboard.press('Escape');
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });
});
