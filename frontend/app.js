// Tasklane web UI. Plain ES module, no framework, no build step.
//
// Rules this file keeps:
// - Only same-origin, relative `/api/...` URLs.
// - User text goes into the page through textContent / createElement only, never innerHTML.
// - No inline script, no inline styles, no inline handlers (the page runs under a strict CSP).
// - Every failure of the API is shown to the person in the alert region (role="alert").

/** Tasks per page, for the first page and every "Load more". */
export const PAGE_SIZE = 20;
/** Wait after the last keystroke in the search box before asking the server. */
const SEARCH_DEBOUNCE_MS = 250;

const STATUSES = [
  { value: 'todo', label: 'To Do', verb: 'to do' },
  { value: 'in_progress', label: 'In Progress', verb: 'in progress' },
  { value: 'done', label: 'Done', verb: 'done' },
];
const STATUS_BY_VALUE = new Map(STATUSES.map((s) => [s.value, s]));

// ---------------------------------------------------------------------------------------------
// API access

class ApiError extends Error {
  /**
   * @param {number} status HTTP status, or 0 when the server could not be reached.
   * @param {string} message Text fit to show a person.
   * @param {any} body The parsed JSON error body, if any.
   */
  constructor(status, message, body) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
  }
}

const FIELD_NAMES = { title: 'Title', description: 'Description', status: 'Status', q: 'Search', limit: 'Page size', cursor: 'Page' };

function describeFailure(status, body) {
  if (status === 503) {
    return 'Tasklane is unavailable right now. Please try again in a moment.';
  }
  if (status === 429) {
    return 'Too many requests right now. Please wait a moment and try again.';
  }
  const serverText = body && typeof body.error === 'string' ? body.error.trim() : '';
  if (status >= 500) {
    return `The server had a problem (HTTP ${status}). Please try again.`;
  }
  if (serverText) {
    const field = body && typeof body.field === 'string' ? body.field : '';
    const fieldName = FIELD_NAMES[field] || field;
    const text = fieldName && !serverText.toLowerCase().includes(field.toLowerCase())
      ? `${fieldName}: ${serverText}`
      : serverText;
    return /[.!?]$/.test(text) ? text : `${text}.`;
  }
  return `The request failed (HTTP ${status}).`;
}

/**
 * Calls the API. Resolves with { data, headers, status } on 2xx; rejects with ApiError otherwise
 * (status 0 for a network failure) or with the AbortError when aborted.
 */
async function api(method, url, { body, ifMatch, signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (ifMatch) headers['If-Match'] = ifMatch;
  let res;
  try {
    res = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new ApiError(0, "Can't reach Tasklane. Check your connection and try again.", null);
  }
  let data = null;
  let text = '';
  try {
    text = await res.text();
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    if (res.ok) throw new ApiError(0, 'The connection broke while reading the answer. Please try again.', null);
  }
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
      if (res.ok) throw new ApiError(res.status, 'The server sent an answer this page cannot read.', null);
    }
  }
  if (!res.ok) throw new ApiError(res.status, describeFailure(res.status, data), data);
  return { data, headers: res.headers, status: res.status };
}

/** The server's strong ETag for a task: exactly "v<version>", double quotes included. */
function etagOf(task) {
  return `"v${task.version}"`;
}

function taskUrl(id) {
  return `/api/tasks/${encodeURIComponent(String(id))}`;
}

/**
 * Finds the rel="next" target in a Link header and returns its path and query (always fetched
 * from this page's own origin, whatever host the server wrote), or null when there is none or it
 * does not point at the task list.
 */
export function parseNextLink(header) {
  if (!header) return null;
  const re = /<([^>]*)>\s*((?:;\s*[^;,]+)*)/g;
  let m;
  while ((m = re.exec(header)) !== null) {
    const params = m[2] || '';
    const rel = /;\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))/i.exec(params);
    const rels = rel ? (rel[1] || rel[2] || '').toLowerCase().split(/\s+/) : [];
    if (!rels.includes('next')) continue;
    let url;
    try {
      url = new URL(m[1], window.location.href);
    } catch {
      return null;
    }
    if (url.pathname !== '/api/tasks') return null;
    return url.pathname + url.search;
  }
  return null;
}

function isTask(t) {
  return t && typeof t === 'object' && (typeof t.id === 'number' || typeof t.id === 'string')
    && typeof t.title === 'string' && typeof t.status === 'string';
}

// ---------------------------------------------------------------------------------------------
// State

const state = {
  status: '', // '' = all
  q: '',
  /** @type {Map<string, any>} tasks shown, by id */
  tasks: new Map(),
  /** @type {string[]} ids in display order (newest first) */
  order: [],
  next: null, // URL of the next page, from the Link header
  generation: 0, // bumped whenever the query changes; stale answers are dropped
  listAbort: null,
  listLoading: false,
  listFailed: false,
  moreLoading: false,
  adding: false,
  busy: new Set(), // ids with a request in flight
  editing: new Set(), // ids shown as an edit form
  countsSeq: 0,
};

// ---------------------------------------------------------------------------------------------
// Elements

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const el = {
  alert: $('alert'),
  live: $('live'),
  addForm: /** @type {HTMLFormElement} */ ($('add-form')),
  newTitle: /** @type {HTMLInputElement} */ ($('new-title')),
  newTitleError: $('new-title-error'),
  newDescription: /** @type {HTMLTextAreaElement} */ ($('new-description')),
  newStatus: /** @type {HTMLSelectElement} */ ($('new-status')),
  addButton: /** @type {HTMLButtonElement} */ ($('add-button')),
  filter: $('app').querySelector('.filter'),
  search: /** @type {HTMLInputElement} */ ($('search')),
  list: $('task-list'),
  listStatus: $('list-status'),
  empty: $('empty'),
  emptyTitle: $('empty-title'),
  emptyHint: $('empty-hint'),
  loadMore: /** @type {HTMLButtonElement} */ ($('load-more')),
  tasksHeading: $('tasks-heading'),
  progressText: $('progress-text'),
  progressBar: /** @type {HTMLProgressElement} */ ($('progress-bar')),
  dialog: /** @type {HTMLDialogElement} */ ($('confirm-dialog')),
  dialogText: $('confirm-text'),
  dialogCancel: $('confirm-cancel'),
  dialogConfirm: $('confirm-delete'),
};

// ---------------------------------------------------------------------------------------------
// Small DOM helpers

/**
 * Creates an element. `props`: className, text (→ textContent), attrs (→ setAttribute),
 * and any other DOM property (type, value, id, …). Children are nodes or strings (as text).
 */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === 'className') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'attrs') {
      for (const [a, v] of Object.entries(value)) {
        if (v !== undefined && v !== null && v !== false) node.setAttribute(a, v === true ? '' : String(v));
      }
    } else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** “Title”, shortened for labels and messages. */
function quoted(title) {
  const t = String(title).replace(/\s+/g, ' ').trim();
  const short = t.length > 60 ? `${t.slice(0, 57)}…` : t;
  return `“${short}”`;
}

// ---------------------------------------------------------------------------------------------
// Messages

let liveTimer = 0;
/** Says something politely to screen readers (and nothing visible). */
function announce(text) {
  clearTimeout(liveTimer);
  // Clear first so that the same sentence twice is read twice.
  el.live.textContent = '';
  liveTimer = window.setTimeout(() => {
    el.live.textContent = text;
  }, 50);
}

/**
 * Shows a message in the alert region. kind: 'error' | 'warning'.
 * The region keeps its role="alert"; its content is replaced.
 */
function showAlert(text, kind = 'error') {
  el.alert.replaceChildren();
  el.alert.className = `alert alert-${kind}`;
  const icon = h('span', { className: 'alert-icon', attrs: { 'aria-hidden': 'true' }, text: kind === 'error' ? '!' : 'i' });
  const message = h('p', { className: 'alert-text', text, attrs: { 'data-testid': 'alert-text' } });
  const close = h('button', {
    type: 'button',
    className: 'alert-close',
    text: '×',
    attrs: { 'aria-label': 'Dismiss message', 'data-testid': 'alert-dismiss' },
  });
  close.addEventListener('click', () => {
    clearAlert();
    el.tasksHeading.focus();
  });
  el.alert.append(icon, message, close);
}

function clearAlert() {
  el.alert.replaceChildren();
  el.alert.className = 'alert';
}

// ---------------------------------------------------------------------------------------------
// Dates

const rtf = typeof Intl !== 'undefined' && Intl.RelativeTimeFormat
  ? new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' })
  : null;
const dtf = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function relativeTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const seconds = Math.round((d.getTime() - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  if (!rtf) return dtf.format(d);
  if (abs < 45) return 'just now';
  if (abs < 3600) return rtf.format(Math.round(seconds / 60), 'minute');
  if (abs < 86400) return rtf.format(Math.round(seconds / 3600), 'hour');
  if (abs < 86400 * 30) return rtf.format(Math.round(seconds / 86400), 'day');
  return dtf.format(d);
}

function timeElement(prefix, iso) {
  const d = new Date(iso);
  const valid = !Number.isNaN(d.getTime());
  return h('time', {
    attrs: { datetime: valid ? d.toISOString() : null, title: valid ? dtf.format(d) : null },
    text: `${prefix} ${valid ? relativeTime(iso) : 'at an unknown time'}`,
  });
}

// ---------------------------------------------------------------------------------------------
// Rendering tasks

function matchesView(task) {
  if (state.status && task.status !== state.status) return false;
  if (state.q) {
    const needle = state.q.toLowerCase();
    const hay = `${task.title}\n${task.description || ''}`.toLowerCase();
    if (!hay.includes(needle)) return false;
  }
  return true;
}

function itemFor(id) {
  return el.list.querySelector(`li[data-task-id="${CSS.escape(String(id))}"]`);
}

function renderTask(task) {
  return state.editing.has(String(task.id)) ? renderEditForm(task) : renderTaskView(task);
}

function renderTaskView(task) {
  const id = String(task.id);
  const name = quoted(task.title);
  const status = STATUS_BY_VALUE.get(task.status) || { value: task.status, label: task.status, verb: task.status };

  const title = h('h3', { className: 'task-title', text: task.title, attrs: { 'data-testid': 'task-title' } });
  const main = h('div', { className: 'task-main' }, title);
  if (task.description) {
    main.append(h('p', { className: 'task-description', text: task.description, attrs: { 'data-testid': 'task-description' } }));
  }
  // The status shows as the pressed button; screen readers reading the item get it as text too.
  const meta = h('p', { className: 'task-meta' },
    h('span', { className: 'visually-hidden', text: `Status: ${status.label}.`, attrs: { 'data-testid': 'task-status' } }),
    timeElement('Created', task.created_at));
  if (task.updated_at && task.updated_at !== task.created_at) {
    meta.append(timeElement('updated', task.updated_at));
  }
  main.append(meta);

  const group = h('div', {
    className: 'status-group',
    attrs: { role: 'group', 'aria-label': `Status of ${name}` },
  });
  for (const s of STATUSES) {
    const pressed = task.status === s.value;
    const button = h('button', {
      type: 'button',
      className: `status-btn status-btn-${s.value}`,
      text: s.label,
      attrs: {
        'aria-pressed': pressed ? 'true' : 'false',
        'aria-label': `Mark ${name} ${s.verb}`,
        'data-testid': `status-${s.value}`,
        'data-action': 'status',
        'data-status': s.value,
      },
    });
    group.append(button);
  }

  const edit = h('button', {
    type: 'button',
    className: 'btn btn-small btn-ghost',
    text: 'Edit',
    attrs: { 'aria-label': `Edit ${name}`, 'data-testid': 'edit', 'data-action': 'edit' },
  });
  const del = h('button', {
    type: 'button',
    className: 'btn btn-small btn-danger-ghost',
    text: 'Delete',
    attrs: { 'aria-label': `Delete ${name}`, 'data-testid': 'delete', 'data-action': 'delete' },
  });
  const actions = h('div', { className: 'task-actions' }, group, h('div', { className: 'item-buttons' }, edit, del));

  const li = h('li', {
    className: `task task-${status.value}`,
    attrs: { 'data-testid': 'task-item', 'data-task-id': id, 'data-status': task.status },
  }, main, actions);
  if (state.busy.has(id)) markBusy(li, true);
  return li;
}

function renderEditForm(task) {
  const id = String(task.id);
  const name = quoted(task.title);
  const titleId = `edit-title-${id}`;
  const descId = `edit-description-${id}`;
  const errId = `edit-error-${id}`;
  const hintId = `edit-hint-${id}`;

  const titleInput = h('input', {
    type: 'text',
    id: titleId,
    value: task.title,
    maxLength: 255,
    autocomplete: 'off',
    attrs: { 'data-testid': 'edit-title', required: true, 'aria-describedby': `${errId} ${hintId}` },
  });
  const descInput = h('textarea', {
    id: descId,
    value: task.description || '',
    rows: 3,
    maxLength: 10000,
    attrs: { 'data-testid': 'edit-description', 'aria-describedby': hintId },
  });
  const form = h('form', {
    className: 'edit-form',
    noValidate: true,
    attrs: { 'data-testid': 'edit-form', 'aria-label': `Edit ${name}` },
  },
  h('div', { className: 'field' },
    h('label', { htmlFor: titleId, text: 'Title' }),
    titleInput,
    h('p', { className: 'field-error', id: errId, attrs: { 'data-testid': 'edit-title-error' } })),
  h('div', { className: 'field' },
    h('label', { htmlFor: descId, text: 'Description' }),
    descInput),
  h('p', { className: 'hint', id: hintId, text: 'Enter saves (Ctrl+Enter in the description), Esc cancels.' }),
  h('div', { className: 'edit-actions' },
    h('button', { type: 'submit', className: 'btn btn-primary btn-small', text: 'Save', attrs: { 'data-testid': 'save', 'aria-label': `Save ${name}` } }),
    h('button', { type: 'button', className: 'btn btn-secondary btn-small', text: 'Cancel', attrs: { 'data-testid': 'cancel', 'data-action': 'cancel', 'aria-label': `Cancel editing ${name}` } })));

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    saveEdit(id);
  });
  form.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') {
      ev.preventDefault();
      ev.stopPropagation();
      cancelEdit(id);
    } else if (ev.key === 'Enter' && ev.target === descInput && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      saveEdit(id);
    }
  });

  const li = h('li', {
    className: `task task-editing task-${task.status}`,
    attrs: { 'data-testid': 'task-item', 'data-task-id': id, 'data-status': task.status, 'data-editing': 'true' },
  }, form);
  if (state.busy.has(id)) markBusy(li, true);
  return li;
}

/** Marks an item busy without moving focus: buttons get aria-disabled, handlers check state. */
function markBusy(li, busy) {
  if (!li) return;
  li.setAttribute('aria-busy', busy ? 'true' : 'false');
  li.classList.toggle('is-busy', busy);
  for (const b of li.querySelectorAll('button, input, textarea')) {
    if (busy) b.setAttribute('aria-disabled', 'true');
    else b.removeAttribute('aria-disabled');
    if (b.tagName !== 'BUTTON') b.readOnly = busy;
  }
}

function setBusy(id, busy) {
  id = String(id);
  if (busy) state.busy.add(id);
  else state.busy.delete(id);
  markBusy(itemFor(id), busy);
}

/** Re-renders one task in place and puts focus on the control with this data-testid. */
function replaceItem(task, focusTestId) {
  const id = String(task.id);
  const old = itemFor(id);
  if (!old) return null;
  const hadFocus = old.contains(document.activeElement);
  const fresh = renderTask(task);
  old.replaceWith(fresh);
  if (focusTestId || hadFocus) {
    const target = (focusTestId && fresh.querySelector(`[data-testid="${focusTestId}"]`))
      || fresh.querySelector('button, input');
    if (target) target.focus();
  }
  return fresh;
}

/** Takes a task out of the list; focus moves to a neighbour if it was inside. */
function removeItem(id) {
  id = String(id);
  const li = itemFor(id);
  state.tasks.delete(id);
  state.order = state.order.filter((x) => x !== id);
  state.editing.delete(id);
  if (!li) return;
  const hadFocus = li.contains(document.activeElement);
  const neighbour = li.nextElementSibling || li.previousElementSibling;
  li.remove();
  if (hadFocus) {
    const target = neighbour && neighbour.querySelector('[data-testid="edit"], button');
    if (target) target.focus();
    else el.tasksHeading.focus();
  }
  updateEmptyState();
}

function storeTask(task) {
  state.tasks.set(String(task.id), task);
}

function renderList() {
  const frag = document.createDocumentFragment();
  for (const id of state.order) {
    const task = state.tasks.get(id);
    if (task) frag.append(renderTask(task));
  }
  el.list.replaceChildren(frag);
  updateEmptyState();
}

function appendTasks(tasks) {
  const frag = document.createDocumentFragment();
  for (const task of tasks) {
    const id = String(task.id);
    if (state.tasks.has(id)) continue; // the list moved under us; never show a task twice
    storeTask(task);
    state.order.push(id);
    frag.append(renderTask(task));
  }
  el.list.append(frag);
  updateEmptyState();
}

function updateEmptyState() {
  const empty = state.order.length === 0 && !state.listLoading && !state.listFailed;
  el.empty.hidden = !empty;
  if (empty) {
    const statusLabel = state.status ? STATUS_BY_VALUE.get(state.status).label : '';
    if (state.q) {
      el.emptyTitle.textContent = `No tasks match ${quoted(state.q)}${statusLabel ? ` in ${statusLabel}` : ''}.`;
      el.emptyHint.textContent = 'Try other words, or clear the search.';
    } else if (statusLabel) {
      el.emptyTitle.textContent = `Nothing in ${statusLabel}.`;
      el.emptyHint.textContent = 'Pick another status above to see the rest.';
    } else {
      el.emptyTitle.textContent = 'No tasks yet.';
      el.emptyHint.textContent = 'Add your first one above: it will show up here.';
    }
  }
  el.loadMore.hidden = !state.next || state.listFailed;
  el.list.hidden = state.order.length === 0;
}

function setListStatus(text) {
  el.listStatus.textContent = text;
  el.listStatus.hidden = !text;
}

// ---------------------------------------------------------------------------------------------
// Counts

async function refreshCounts() {
  const seq = ++state.countsSeq;
  try {
    const { data } = await api('GET', '/api/tasks/counts');
    if (seq !== state.countsSeq || !data || typeof data !== 'object') return;
    const n = (k) => (Number.isFinite(Number(data[k])) ? Number(data[k]) : 0);
    const todo = n('todo');
    const inProgress = n('in_progress');
    const done = n('done');
    const total = data.total !== undefined ? n('total') : todo + inProgress + done;
    setCount('total', total);
    setCount('todo', todo);
    setCount('in_progress', inProgress);
    setCount('done', done);
    el.progressBar.max = Math.max(total, 1);
    el.progressBar.value = done;
    el.progressText.textContent = total === 0
      ? 'No tasks yet'
      : `${done} of ${total} done${inProgress ? ` · ${inProgress} in progress` : ''}`;
  } catch (err) {
    if (seq !== state.countsSeq) return;
    el.progressText.textContent = 'Counts unavailable';
    showAlert(`Couldn't load the task counts. ${err.message}`);
  }
}

function setCount(key, n) {
  const node = el.filter.querySelector(`[data-testid="count-${key}"]`);
  if (node) node.textContent = String(n);
}

// ---------------------------------------------------------------------------------------------
// Loading the list

function listUrl() {
  const params = new URLSearchParams();
  if (state.status) params.set('status', state.status);
  if (state.q) params.set('q', state.q);
  params.set('limit', String(PAGE_SIZE));
  return `/api/tasks?${params}`;
}

async function loadFirstPage() {
  const gen = ++state.generation;
  if (state.listAbort) state.listAbort.abort();
  const abort = new AbortController();
  state.listAbort = abort;
  state.listLoading = true;
  state.listFailed = false;
  state.next = null;
  el.list.setAttribute('aria-busy', 'true');
  el.loadMore.hidden = true;
  el.empty.hidden = true;
  if (state.order.length === 0) setListStatus('Loading tasks…');
  try {
    const { data, headers } = await api('GET', listUrl(), { signal: abort.signal });
    if (gen !== state.generation) return;
    const tasks = Array.isArray(data) ? data.filter(isTask) : [];
    state.tasks.clear();
    state.order = [];
    state.editing.clear();
    for (const t of tasks) {
      const id = String(t.id);
      if (state.tasks.has(id)) continue;
      storeTask(t);
      state.order.push(id);
    }
    state.next = parseNextLink(headers.get('Link'));
    state.listLoading = false;
    setListStatus('');
    renderList();
  } catch (err) {
    if (err && err.name === 'AbortError') return;
    if (gen !== state.generation) return;
    state.listLoading = false;
    state.listFailed = true;
    state.tasks.clear();
    state.order = [];
    renderList();
    setListStatus('The task list could not be loaded.');
    showAlert(`Couldn't load tasks. ${err.message}`);
  } finally {
    if (gen === state.generation) {
      el.list.setAttribute('aria-busy', 'false');
      state.listAbort = null;
    }
  }
}

async function loadMore() {
  if (!state.next || state.moreLoading || state.listLoading) return;
  const gen = state.generation;
  const url = state.next;
  state.moreLoading = true;
  el.loadMore.setAttribute('aria-disabled', 'true');
  el.loadMore.textContent = 'Loading…';
  el.list.setAttribute('aria-busy', 'true');
  try {
    const { data, headers } = await api('GET', url);
    if (gen !== state.generation) return;
    const tasks = Array.isArray(data) ? data.filter(isTask) : [];
    const before = state.order.length;
    state.next = parseNextLink(headers.get('Link'));
    appendTasks(tasks);
    const added = state.order.length - before;
    announce(`${added} more ${added === 1 ? 'task' : 'tasks'} loaded${state.next ? '' : '; that is all of them'}.`);
    if (added > 0) window.setTimeout(loadMoreIfInView, 100);
  } catch (err) {
    if (gen !== state.generation) return;
    showAlert(`Couldn't load more tasks. ${err.message}`);
  } finally {
    state.moreLoading = false;
    el.loadMore.removeAttribute('aria-disabled');
    el.loadMore.textContent = 'Load more';
    el.list.setAttribute('aria-busy', 'false');
    updateEmptyState();
  }
}

/** On a tall screen the button can still be in view after a page came in: keep going. */
function loadMoreIfInView() {
  if (el.loadMore.hidden || state.moreLoading || state.listLoading || state.listFailed) return;
  const rect = el.loadMore.getBoundingClientRect();
  if (rect.top < window.innerHeight + 200 && rect.bottom > 0) loadMore();
}

// Load older tasks by themselves when the "Load more" button scrolls into view.
function setUpInfiniteScroll() {
  if (!('IntersectionObserver' in window)) return;
  const io = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !el.loadMore.hidden) loadMore();
  }, { rootMargin: '0px 0px 200px 0px' });
  io.observe(el.loadMore);
}

// ---------------------------------------------------------------------------------------------
// Adding

function setTitleError(text) {
  el.newTitleError.textContent = text;
  if (text) el.newTitle.setAttribute('aria-invalid', 'true');
  else el.newTitle.removeAttribute('aria-invalid');
}

async function addTask(ev) {
  ev.preventDefault();
  if (state.adding) return; // a second click or Enter while the first is in flight
  const title = el.newTitle.value;
  const description = el.newDescription.value;
  const status = el.newStatus.value;
  if (!title.trim()) {
    setTitleError('Please give the task a title.');
    el.newTitle.focus();
    return;
  }
  setTitleError('');
  state.adding = true;
  el.addButton.disabled = true;
  el.addButton.textContent = 'Adding…';
  el.addForm.setAttribute('aria-busy', 'true');
  let focusTitle = false;
  try {
    const { data: task } = await api('POST', '/api/tasks', { body: { title, description, status } });
    if (!isTask(task)) throw new ApiError(0, 'The server sent an answer this page cannot read.', null);
    clearAlert();
    el.newTitle.value = '';
    el.newDescription.value = '';
    focusTitle = true;
    const id = String(task.id);
    if (matchesView(task) && !state.tasks.has(id)) {
      storeTask(task);
      state.order.unshift(id);
      el.list.prepend(renderTask(task));
      const li = itemFor(id);
      if (li) {
        li.classList.add('is-new');
        li.addEventListener('animationend', () => li.classList.remove('is-new'), { once: true });
      }
      updateEmptyState();
      announce(`Added ${quoted(task.title)}.`);
    } else {
      announce(`Added ${quoted(task.title)}. It is hidden by the current filter or search.`);
    }
    refreshCounts();
  } catch (err) {
    if (err instanceof ApiError && err.body && err.body.field === 'title') {
      setTitleError(err.message);
    }
    showAlert(`Couldn't add the task. ${err.message}`);
  } finally {
    state.adding = false;
    el.addButton.disabled = false;
    el.addButton.textContent = 'Add task';
    el.addForm.removeAttribute('aria-busy');
    if (focusTitle) el.newTitle.focus();
    else if (document.activeElement === document.body) el.addButton.focus();
  }
}

// ---------------------------------------------------------------------------------------------
// Changing, editing, deleting

/** After a failed write: 412 reloads the task and says so; 404 removes it; else explains. */
async function handleWriteFailure(err, id, what) {
  const task = state.tasks.get(String(id));
  const name = task ? quoted(task.title) : 'this task';
  if (err instanceof ApiError && err.status === 412) {
    state.editing.delete(String(id));
    const fresh = await reloadTask(id);
    if (fresh) {
      showAlert(`${quoted(fresh.title)} was changed elsewhere, so your change was not saved. `
        + 'The latest version is shown now — please re-apply your edit.', 'warning');
    }
    refreshCounts();
    return;
  }
  if (err instanceof ApiError && err.status === 404) {
    removeItem(id);
    showAlert(`${name} no longer exists: it was deleted elsewhere.`, 'warning');
    refreshCounts();
    return;
  }
  showAlert(`Couldn't ${what} ${name}. ${err.message}`);
}

/** Fetches one task again and shows it (or drops it when gone). Returns it, or null. */
async function reloadTask(id) {
  try {
    const { data } = await api('GET', taskUrl(id));
    if (!isTask(data)) return null;
    storeTask(data);
    if (matchesView(data)) replaceItem(data, 'edit');
    else removeItem(id);
    return data;
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      const old = state.tasks.get(String(id));
      removeItem(id);
      showAlert(`${old ? quoted(old.title) : 'This task'} was deleted elsewhere.`, 'warning');
    } else {
      showAlert(`This task was changed elsewhere, and reloading it failed. ${err.message}`);
    }
    return null;
  }
}

async function changeStatus(id, status) {
  id = String(id);
  const task = state.tasks.get(id);
  if (!task || state.busy.has(id) || task.status === status) return;
  setBusy(id, true);
  try {
    const { data } = await api('PATCH', taskUrl(id), { body: { status }, ifMatch: etagOf(task) });
    if (!isTask(data)) throw new ApiError(0, 'The server sent an answer this page cannot read.', null);
    storeTask(data);
    const label = (STATUS_BY_VALUE.get(data.status) || { label: data.status }).label;
    state.busy.delete(id);
    if (matchesView(data)) {
      replaceItem(data, `status-${data.status}`);
      announce(`${quoted(data.title)} is now ${label}.`);
    } else {
      removeItem(id);
      announce(`${quoted(data.title)} is now ${label}, and hidden by the current filter.`);
    }
    refreshCounts();
  } catch (err) {
    await handleWriteFailure(err, id, 'change the status of');
  } finally {
    setBusy(id, false);
  }
}

function startEdit(id) {
  id = String(id);
  const task = state.tasks.get(id);
  if (!task || state.busy.has(id)) return;
  state.editing.add(id);
  replaceItem(task, 'edit-title');
  const input = itemFor(id)?.querySelector('[data-testid="edit-title"]');
  if (input) input.select();
}

function cancelEdit(id) {
  id = String(id);
  const task = state.tasks.get(id);
  if (!task || state.busy.has(id)) return;
  state.editing.delete(id);
  replaceItem(task, 'edit');
  announce('Edit cancelled.');
}

async function saveEdit(id) {
  id = String(id);
  const task = state.tasks.get(id);
  const li = itemFor(id);
  if (!task || !li || state.busy.has(id)) return;
  const titleInput = /** @type {HTMLInputElement} */ (li.querySelector('[data-testid="edit-title"]'));
  const descInput = /** @type {HTMLTextAreaElement} */ (li.querySelector('[data-testid="edit-description"]'));
  const errorNode = li.querySelector('[data-testid="edit-title-error"]');
  const title = titleInput.value;
  const description = descInput.value;
  if (!title.trim()) {
    errorNode.textContent = 'The title cannot be empty.';
    titleInput.setAttribute('aria-invalid', 'true');
    titleInput.focus();
    return;
  }
  const patch = {};
  if (title !== task.title) patch.title = title;
  if (description !== (task.description || '')) patch.description = description;
  if (Object.keys(patch).length === 0) {
    state.editing.delete(id);
    replaceItem(task, 'edit');
    announce('Nothing changed.');
    return;
  }
  setBusy(id, true);
  try {
    const { data } = await api('PATCH', taskUrl(id), { body: patch, ifMatch: etagOf(task) });
    if (!isTask(data)) throw new ApiError(0, 'The server sent an answer this page cannot read.', null);
    storeTask(data);
    state.editing.delete(id);
    state.busy.delete(id);
    clearAlert();
    if (matchesView(data)) {
      replaceItem(data, 'edit');
      announce(`Saved ${quoted(data.title)}.`);
    } else {
      removeItem(id);
      announce(`Saved ${quoted(data.title)}. It no longer matches the search, so it is hidden.`);
    }
  } catch (err) {
    if (err instanceof ApiError && (err.status === 412 || err.status === 404)) {
      await handleWriteFailure(err, id, 'save');
    } else {
      // Keep the form and the person's text; explain what went wrong.
      if (err instanceof ApiError && err.body && err.body.field === 'title') {
        errorNode.textContent = err.message;
        titleInput.setAttribute('aria-invalid', 'true');
      }
      showAlert(`Couldn't save ${quoted(task.title)}. ${err.message}`);
    }
  } finally {
    setBusy(id, false);
  }
}

/** Asks in the in-page dialog; resolves true when the person confirms. */
function confirmDelete(task) {
  el.dialogText.textContent = `${quoted(task.title)} will be deleted. This cannot be undone.`;
  return new Promise((resolve) => {
    const finish = (ok) => {
      el.dialog.removeEventListener('close', onClose);
      el.dialogCancel.removeEventListener('click', onCancel);
      el.dialogConfirm.removeEventListener('click', onConfirm);
      resolve(ok);
    };
    const onClose = () => finish(el.dialog.returnValue === 'confirm');
    const onCancel = () => el.dialog.close('cancel');
    const onConfirm = () => el.dialog.close('confirm');
    el.dialog.addEventListener('close', onClose);
    el.dialogCancel.addEventListener('click', onCancel);
    el.dialogConfirm.addEventListener('click', onConfirm);
    el.dialog.returnValue = '';
    el.dialog.showModal();
    el.dialogCancel.focus();
  });
}

async function deleteTask(id) {
  id = String(id);
  const task = state.tasks.get(id);
  if (!task || state.busy.has(id)) return;
  const ok = await confirmDelete(task);
  const li = itemFor(id);
  if (!ok) {
    li?.querySelector('[data-testid="delete"]')?.focus();
    return;
  }
  const current = state.tasks.get(id) || task;
  setBusy(id, true);
  try {
    await api('DELETE', taskUrl(id), { ifMatch: etagOf(current) });
    state.busy.delete(id);
    removeItem(id);
    announce(`Deleted ${quoted(current.title)}.`);
    refreshCounts();
  } catch (err) {
    state.busy.delete(id);
    if (err instanceof ApiError && err.status === 404) {
      removeItem(id);
      announce(`${quoted(current.title)} was already deleted.`);
      refreshCounts();
    } else if (err instanceof ApiError && err.status === 412) {
      const fresh = await reloadTask(id);
      if (fresh) {
        showAlert(`${quoted(fresh.title)} was changed elsewhere, so it was not deleted. `
          + 'The latest version is shown now — delete it again if you still want to.', 'warning');
      }
      refreshCounts();
    } else {
      showAlert(`Couldn't delete ${quoted(current.title)}. ${err.message}`);
    }
  } finally {
    setBusy(id, false);
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

function onListClick(ev) {
  const button = /** @type {HTMLElement} */ (ev.target).closest('button[data-action]');
  if (!button || !el.list.contains(button)) return;
  const li = button.closest('li[data-task-id]');
  if (!li) return;
  const id = li.getAttribute('data-task-id');
  if (button.getAttribute('aria-disabled') === 'true') return;
  switch (button.getAttribute('data-action')) {
    case 'status': changeStatus(id, button.getAttribute('data-status')); break;
    case 'edit': startEdit(id); break;
    case 'delete': deleteTask(id); break;
    case 'cancel': cancelEdit(id); break;
    default: break;
  }
}

let searchTimer = 0;
function onSearchInput() {
  clearTimeout(searchTimer);
  searchTimer = window.setTimeout(() => {
    const q = el.search.value.trim();
    if (q === state.q) return;
    state.q = q;
    loadFirstPage();
  }, SEARCH_DEBOUNCE_MS);
}

function onFilterChange(ev) {
  const input = /** @type {HTMLInputElement} */ (ev.target);
  if (input.name !== 'filter') return;
  state.status = input.value;
  loadFirstPage();
}

function init() {
  el.addForm.addEventListener('submit', addTask);
  el.newTitle.addEventListener('input', () => {
    if (el.newTitle.value.trim()) setTitleError('');
  });
  el.list.addEventListener('click', onListClick);
  el.search.addEventListener('input', onSearchInput);
  el.search.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter') { // search now, no need to wait
      ev.preventDefault();
      clearTimeout(searchTimer);
      const q = el.search.value.trim();
      if (q !== state.q) {
        state.q = q;
        loadFirstPage();
      }
    }
  });
  el.filter.addEventListener('change', onFilterChange);
  el.loadMore.addEventListener('click', () => {
    if (el.loadMore.getAttribute('aria-disabled') !== 'true') loadMore();
  });
  // Keep the current filter if the browser restored a checked radio after a reload.
  const checked = /** @type {HTMLInputElement|null} */ (el.filter.querySelector('input[name="filter"]:checked'));
  state.status = checked ? checked.value : '';
  state.q = el.search.value.trim();
  setUpInfiniteScroll();
  loadFirstPage();
  refreshCounts();
}

init();
