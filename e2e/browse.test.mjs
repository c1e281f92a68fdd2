// Suite "browse": filtering by status, searching as you type, paging with "Load more".
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  PAGE_SIZE, assertNoProblems, createTask, eventually, listedIds, listedTitles,
  openApp, search, sleep, suiteBrowser, uniqueToken, waitForList,
} from './lib.mjs';

const SUITE = 'browse';
const T = { timeout: 90_000 };

describe('browse', () => {
  const browser = suiteBrowser(SUITE);

  test('the status filter shows only tasks in that status', T, async () => {
    const token = uniqueToken(SUITE, 'filter');
    const todo = await createTask(`Sort the mail ${token}`, { status: 'todo' });
    const doing = await createTask(`Paint the fence ${token}`, { status: 'in_progress' });
    const done = await createTask(`File the taxes ${token}`, { status: 'done' });
    const s = await openApp(browser());
    const { page } = s;
    try {
      await search(page, token);
      assert.deepEqual(await listedIds(page), [done.id, doing.id, todo.id].map(String));

      const pick = async (testid, expected) => {
        await page.getByTestId(testid).check();
        await waitForList(page);
        await eventually(async () => {
          assert.deepEqual(await listedIds(page), expected.map((t) => String(t.id)));
        });
      };
      await pick('filter-done', [done]);
      await pick('filter-in_progress', [doing]);
      await pick('filter-todo', [todo]);

      // Marking the to-do task done while filtering by To Do takes it out of the view.
      await page.locator(`[data-task-id="${todo.id}"]`).getByTestId('status-done').click();
      await eventually(async () => {
        assert.deepEqual(await listedIds(page), []);
      });
      await page.getByTestId('empty').waitFor({ state: 'visible' });
      assert.match(await page.getByTestId('empty').textContent(), /No tasks match/);

      await pick('filter-done', [done, todo]);
      await pick('filter-all', [done, doing, todo]);

      // The filter works by keyboard: arrow keys move between the options.
      await page.getByTestId('filter-all').focus();
      await page.keyboard.press('ArrowRight');
      await waitForList(page);
      assert.equal(await page.getByTestId('filter-todo').isChecked(), true);
      await eventually(async () => {
        assert.deepEqual(await listedIds(page), []);
      });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('search narrows the list as you type, with a debounce', T, async () => {
    const token = uniqueToken(SUITE, 'search');
    const apples = await createTask(`${token} buy apples`);
    const pears = await createTask(`${token} buy pears`);
    const s = await openApp(browser());
    const { page } = s;
    try {
      const queries = [];
      page.on('request', (req) => {
        const url = new URL(req.url());
        if (url.pathname === '/api/tasks' && req.method() === 'GET' && url.searchParams.get('q')) {
          queries.push(url.searchParams.get('q'));
        }
      });
      const box = page.getByTestId('search');
      await box.click();
      // Type like a person, 40 ms a key: only the pause at the end should trigger a search.
      await box.pressSequentially(`${token} buy`, { delay: 40 });
      await eventually(async () => {
        assert.deepEqual(await listedIds(page), [pears.id, apples.id].map(String));
      });
      const typedKeys = `${token} buy`.length;
      assert.ok(queries.length >= 1 && queries.length <= 3,
        `expected a debounced search (1–3 requests for ${typedKeys} keys), saw ${queries.length}: ${queries.join(' | ')}`);

      await box.pressSequentially(' pe', { delay: 40 });
      await eventually(async () => {
        assert.deepEqual(await listedTitles(page), [`${token} buy pears`]);
      });
      // Case does not matter.
      await box.fill('');
      await box.pressSequentially(`${token} BUY APPLES`.toUpperCase(), { delay: 10 });
      await eventually(async () => {
        assert.deepEqual(await listedIds(page), [String(apples.id)]);
      });
      // Nothing matches: the empty state names the search.
      await box.fill(`${token} kiwis`);
      await eventually(async () => {
        assert.equal(await page.getByTestId('empty').isVisible(), true);
        assert.match(await page.getByTestId('empty').textContent(), /kiwis/);
      });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('older tasks load page by page with "Load more", following the Link header', T, async () => {
    const token = uniqueToken(SUITE, 'paging');
    const n = PAGE_SIZE + 5;
    const created = [];
    for (let i = 1; i <= n; i += 1) {
      // In order, so newest first is n … 1.
      created.push(await createTask(`Page item ${String(i).padStart(2, '0')} ${token}`));
    }
    const s = await openApp(browser(), { autoLoad: false });
    const { page } = s;
    try {
      const listRequests = [];
      page.on('request', (req) => {
        const url = new URL(req.url());
        if (url.pathname === '/api/tasks' && req.method() === 'GET') listRequests.push(url);
      });
      await search(page, token);
      const newestFirst = created.map((t) => String(t.id)).reverse();
      assert.deepEqual(await listedIds(page), newestFirst.slice(0, PAGE_SIZE));
      assert.equal(listRequests.at(-1).searchParams.get('limit'), String(PAGE_SIZE));

      const more = page.getByTestId('load-more');
      assert.equal(await more.isVisible(), true);
      await more.click();
      await eventually(async () => {
        assert.deepEqual(await listedIds(page), newestFirst);
      });
      // The second page came from the server's Link (it carries a cursor).
      assert.ok(listRequests.some((u) => u.searchParams.get('cursor')), 'no request followed the Link header');
      await eventually(async () => {
        assert.equal(await more.isVisible(), false);
      });
      await eventually(async () => {
        assert.match(await page.getByTestId('live').textContent(), /5 more tasks loaded/);
      });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('scrolling to the end loads the next page by itself', T, async () => {
    const token = uniqueToken(SUITE, 'scroll');
    const n = PAGE_SIZE + 2;
    for (let i = 1; i <= n; i += 1) {
      await createTask(`Scroll item ${String(i).padStart(2, '0')} ${token}`);
    }
    const s = await openApp(browser(), { width: 1280, height: 700 });
    const { page } = s;
    try {
      await search(page, token);
      assert.equal((await listedIds(page)).length, PAGE_SIZE);
      await page.mouse.wheel(0, 20000);
      await sleep(200);
      await page.mouse.wheel(0, 20000);
      await eventually(async () => {
        assert.equal((await listedIds(page)).length, n);
      });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });
});
