// Suite "tasks": adding, changing status, editing in place (and the 412 path), deleting.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  alertText, apiFetch, assertNoProblems, createTask, eventually, getTask, item,
  listedIds, openApp, readCounts, search, searchTasks, sleep, suiteBrowser, uniqueToken,
} from './lib.mjs';

const SUITE = 'tasks';
const T = { timeout: 60_000 };

describe('tasks', () => {
  const browser = suiteBrowser(SUITE);

  test('adding a task puts it at the top and updates the counts', T, async () => {
    const s = await openApp(browser());
    const { page } = s;
    try {
      const token = uniqueToken(SUITE, 'add');
      const before = await readCounts(page);
      await page.getByTestId('new-title').fill(`Buy oat milk ${token}`);
      await page.getByTestId('new-description').fill('Two cartons, the barista kind.');
      await page.getByTestId('new-status').selectOption('in_progress');
      await page.getByTestId('add-button').click();

      const first = page.getByTestId('task-item').first();
      await eventually(async () => {
        assert.equal(await first.getByTestId('task-title').textContent(), `Buy oat milk ${token}`);
      });
      assert.equal(await first.getAttribute('data-status'), 'in_progress');
      assert.equal(await first.getByTestId('task-description').textContent(), 'Two cartons, the barista kind.');
      await eventually(async () => {
        const now = await readCounts(page);
        assert.equal(now.total, before.total + 1);
        assert.equal(now.in_progress, before.in_progress + 1);
      });
      // The form is cleared and ready for the next task.
      assert.equal(await page.getByTestId('new-title').inputValue(), '');
      assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('data-testid')), 'new-title');

      const stored = await searchTasks(token);
      assert.equal(stored.length, 1);
      assert.equal(stored[0].status, 'in_progress');
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('an empty title is refused in the page, with a message next to the field', T, async () => {
    const s = await openApp(browser());
    const { page } = s;
    try {
      await page.getByTestId('new-title').fill('   ');
      await page.getByTestId('add-button').click();
      assert.match(await page.getByTestId('new-title-error').textContent(), /title/i);
      assert.equal(await page.getByTestId('new-title').getAttribute('aria-invalid'), 'true');
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('double-clicking Add creates one task', T, async () => {
    const s = await openApp(browser());
    const { page } = s;
    try {
      const token = uniqueToken(SUITE, 'dbl');
      let posts = 0;
      // Slow the create down so the second click surely lands while the first is in flight.
      await page.route('**/api/tasks', async (route) => {
        if (route.request().method() === 'POST') {
          posts += 1;
          await sleep(400);
        }
        await route.continue();
      });
      await page.getByTestId('new-title').fill(`Double-click me ${token}`);
      await page.getByTestId('add-button').dblclick();
      // And a third, impatient click while it is still busy.
      await page.getByTestId('add-button').click({ force: true, noWaitAfter: true, timeout: 2000 }).catch(() => {});
      await eventually(async () => {
        assert.equal(await page.getByTestId('task-item').first().getByTestId('task-title').textContent(),
          `Double-click me ${token}`);
      });
      await sleep(800);
      assert.equal(posts, 1, 'the page sent more than one POST');
      const stored = await searchTasks(token);
      assert.equal(stored.length, 1, `expected one task, found ${stored.length}`);
      await search(page, token);
      assert.equal((await listedIds(page)).length, 1);
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('marking a task done changes its status, announces it, and persists', T, async () => {
    const token = uniqueToken(SUITE, 'done');
    const task = await createTask(`Water the plants ${token}`);
    const s = await openApp(browser());
    const { page } = s;
    try {
      await search(page, token);
      const before = await readCounts(page);
      const row = item(page, task.id);
      await row.getByTestId('status-done').click();
      await eventually(async () => {
        assert.equal(await item(page, task.id).getAttribute('data-status'), 'done');
        assert.equal(await item(page, task.id).getByTestId('status-done').getAttribute('aria-pressed'), 'true');
        assert.equal(await item(page, task.id).getByTestId('status-todo').getAttribute('aria-pressed'), 'false');
      });
      await eventually(async () => {
        assert.match(await page.getByTestId('live').textContent(), /Water the plants .* is now Done/);
      });
      await eventually(async () => {
        const now = await readCounts(page);
        assert.equal(now.done, before.done + 1);
        assert.equal(now.todo, before.todo - 1);
      });
      // Focus stays on the button that was pressed.
      assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('data-testid')), 'status-done');

      await page.reload();
      await search(page, token);
      assert.equal(await item(page, task.id).getAttribute('data-status'), 'done');
      assert.equal((await getTask(task.id)).data.status, 'done');

      // And back to In Progress, by keyboard.
      await item(page, task.id).getByTestId('status-in_progress').focus();
      await page.keyboard.press('Enter');
      await eventually(async () => {
        assert.equal((await getTask(task.id)).data.status, 'in_progress');
        assert.equal(await item(page, task.id).getAttribute('data-status'), 'in_progress');
      });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('editing a title in place saves it (Enter) and it persists; Escape cancels', T, async () => {
    const token = uniqueToken(SUITE, 'edit');
    const task = await createTask(`Call the plumber ${token}`, { description: 'About the kitchen sink' });
    const s = await openApp(browser());
    const { page } = s;
    try {
      await search(page, token);
      // Escape cancels and changes nothing.
      await item(page, task.id).getByTestId('edit').click();
      await item(page, task.id).getByTestId('edit-title').fill(`Never mind ${token}`);
      await page.keyboard.press('Escape');
      await eventually(async () => {
        assert.equal(await item(page, task.id).getByTestId('task-title').textContent(), `Call the plumber ${token}`);
      });
      assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('data-testid')), 'edit');

      // Enter saves.
      await item(page, task.id).getByTestId('edit').click();
      const input = item(page, task.id).getByTestId('edit-title');
      assert.equal(await input.inputValue(), `Call the plumber ${token}`);
      await input.fill(`Call the electrician ${token}`);
      await item(page, task.id).getByTestId('edit-description').fill('About the hallway light');
      await input.press('Enter');
      await eventually(async () => {
        assert.equal(await item(page, task.id).getByTestId('task-title').textContent(), `Call the electrician ${token}`);
      });
      assert.equal(await item(page, task.id).getByTestId('task-description').textContent(), 'About the hallway light');

      const stored = (await getTask(task.id)).data;
      assert.equal(stored.title, `Call the electrician ${token}`);
      assert.equal(stored.description, 'About the hallway light');
      assert.equal(stored.version, 2);

      await page.reload();
      await search(page, token);
      assert.equal(await item(page, task.id).getByTestId('task-title').textContent(), `Call the electrician ${token}`);

      // Save by button too.
      await item(page, task.id).getByTestId('edit').click();
      await item(page, task.id).getByTestId('edit-title').fill(`Call the roofer ${token}`);
      await item(page, task.id).getByTestId('save').click();
      await eventually(async () => {
        assert.equal((await getTask(task.id)).data.title, `Call the roofer ${token}`);
      });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('saving over a change made elsewhere (412) reloads the task and says so', T, async () => {
    const token = uniqueToken(SUITE, 'conflict');
    const task = await createTask(`Plan the offsite ${token}`);
    const s = await openApp(browser());
    const { page } = s;
    try {
      await search(page, token);
      await item(page, task.id).getByTestId('edit').click();
      await item(page, task.id).getByTestId('edit-title').fill(`Plan the offsite (mine) ${token}`);

      // Someone else changes the task behind the page's back.
      const theirs = await apiFetch('PATCH', `/api/tasks/${task.id}`, {
        body: { title: `Plan the offsite (theirs) ${token}` },
        ifMatch: `"v${task.version}"`,
      });
      assert.equal(theirs.status, 200);

      await item(page, task.id).getByTestId('save').click();
      await eventually(async () => {
        assert.match(await alertText(page), /changed elsewhere/i);
      });
      assert.match(await alertText(page), /re-apply/i);
      await eventually(async () => {
        assert.equal(await item(page, task.id).getByTestId('task-title').textContent(),
          `Plan the offsite (theirs) ${token}`);
      });
      // Nothing of "mine" was written.
      const stored = (await getTask(task.id)).data;
      assert.equal(stored.title, `Plan the offsite (theirs) ${token}`);
      assert.equal(stored.version, 2);

      // Re-applying now works, since the page holds the fresh version.
      await item(page, task.id).getByTestId('edit').click();
      await item(page, task.id).getByTestId('edit-title').fill(`Plan the offsite (merged) ${token}`);
      await item(page, task.id).getByTestId('edit-title').press('Enter');
      await eventually(async () => {
        assert.equal((await getTask(task.id)).data.title, `Plan the offsite (merged) ${token}`);
      });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('a status change on a stale task (412) reloads it instead of overwriting', T, async () => {
    const token = uniqueToken(SUITE, 'stale');
    const task = await createTask(`Renew passport ${token}`);
    const s = await openApp(browser());
    const { page } = s;
    try {
      await search(page, token);
      await apiFetch('PATCH', `/api/tasks/${task.id}`, { body: { status: 'in_progress' }, ifMatch: '"v1"' });
      await item(page, task.id).getByTestId('status-done').click();
      await eventually(async () => {
        assert.match(await alertText(page), /changed elsewhere/i);
        assert.equal(await item(page, task.id).getAttribute('data-status'), 'in_progress');
      });
      assert.equal((await getTask(task.id)).data.status, 'in_progress');
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });

  test('deleting asks first; cancelling keeps the task, confirming removes it', T, async () => {
    const token = uniqueToken(SUITE, 'delete');
    const task = await createTask(`Old receipts ${token}`);
    const s = await openApp(browser());
    const { page } = s;
    try {
      await search(page, token);
      const before = await readCounts(page);

      await item(page, task.id).getByTestId('delete').click();
      const dialog = page.getByTestId('confirm-dialog');
      await dialog.waitFor({ state: 'visible' });
      assert.match(await dialog.textContent(), /Old receipts/);
      await page.getByTestId('confirm-cancel').click();
      await dialog.waitFor({ state: 'hidden' });
      assert.equal(await item(page, task.id).count(), 1);
      assert.equal((await getTask(task.id)).status, 200);

      // Escape closes it too, and keeps the task.
      await item(page, task.id).getByTestId('delete').click();
      await dialog.waitFor({ state: 'visible' });
      await page.keyboard.press('Escape');
      await dialog.waitFor({ state: 'hidden' });
      assert.equal((await getTask(task.id)).status, 200);

      await item(page, task.id).getByTestId('delete').click();
      await dialog.waitFor({ state: 'visible' });
      await page.getByTestId('confirm-delete').click();
      await eventually(async () => {
        assert.equal(await item(page, task.id).count(), 0);
      });
      assert.equal((await getTask(task.id)).status, 404);
      await eventually(async () => {
        const now = await readCounts(page);
        assert.equal(now.total, before.total - 1);
      });
      await eventually(async () => {
        assert.match(await page.getByTestId('live').textContent(), /Deleted/);
      });
      // The list for this search is now empty: the empty state says so.
      await page.getByTestId('empty').waitFor({ state: 'visible' });
      assertNoProblems(s);
    } finally {
      await s.context.close();
    }
  });
});
