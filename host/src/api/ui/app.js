/*
 * busbar operator dashboard: plain JavaScript, no build step, no libraries.
 *
 * Served at /ui/ under a strict Content-Security-Policy (no inline scripts or styles, no
 * eval). Everything live comes from one Server-Sent Events stream, GET /v1/admin/stream, read
 * with fetch() so that the admin token can travel as an `Authorization` header (EventSource
 * cannot send one); it reconnects with backoff. Actions (upload, rollback, delete, publish)
 * are single requests, each followed by at most one refresh of the plugin list.
 *
 * Plugin names, event types and error messages come from untrusted plugins and publishers:
 * they reach the page only through textContent and setAttribute, never innerHTML.
 *
 * Layout of this file: helpers, API and token, overview, plugins, plugin actions, live
 * events, try it, stream, start-up.
 */
(() => {
  'use strict';

  // ---- helpers ---------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const TOKEN_KEY = 'busbar.admin-token';
  const STREAM_PATH = '/v1/admin/stream';
  const WINDOW_MS = 5 * 60 * 1000;
  const MAX_EVENTS = 200;
  const OUTCOMES = ['ok', 'error', 'trap', 'timeout', 'out_of_memory', 'invalid_output', 'policy_denied', 'quarantined', 'over_budget'];

  /** An element with attributes (`class`, `text`, others verbatim) and children (nodes or strings). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = String(value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  const num = (n) => (typeof n === 'number' && Number.isFinite(n) ? n : 0);
  const fmtInt = (n) => (typeof n === 'number' && Number.isFinite(n) ? n.toLocaleString('en') : '–');
  const fmtRate = (r) => (r === null || r === undefined ? '–' : r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString('en'));
  const fmtTime = (ms) => (ms ? new Date(ms).toLocaleTimeString() : '–');
  const fmtWhen = (ms) => (ms ? new Date(ms).toLocaleString() : '–');
  const shortHash = (hash) => (typeof hash === 'string' && hash ? hash.slice(0, 12) : '–');
  const sum = (obj) => Object.values(obj || {}).reduce((total, v) => total + num(v), 0);
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

  function fmtUs(us) {
    if (typeof us !== 'number' || !Number.isFinite(us)) return '–';
    if (us < 1000) return `${Math.round(us)} µs`;
    if (us < 1e6) return `${(us / 1000).toFixed(us < 10000 ? 2 : 1)} ms`;
    return `${(us / 1e6).toFixed(2)} s`;
  }

  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  /** A `<dl>` from [term, description, class?] triples. */
  function renderPairs(dl, pairs) {
    dl.replaceChildren(...pairs.flatMap(([term, desc, cls]) => [el('dt', { text: term }), el('dd', { text: desc, class: cls })]));
  }

  // ---- API and admin token ---------------------------------------------------------------

  const STATUS_TEXT = {
    200: 'OK', 201: 'Created', 204: 'No Content', 400: 'Bad Request', 401: 'Unauthorized',
    403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 409: 'Conflict',
    413: 'Payload Too Large', 415: 'Unsupported Media Type', 422: 'Unprocessable Content',
    429: 'Too Many Requests', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable',
  };

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
  }

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    const token = getToken();
    if (token) headers.set('Authorization', `Bearer ${token}`);
    return headers;
  }

  /** The server's error as one line: `code: message`, or the start of a non-JSON body. */
  function errorMessage(data, text) {
    const error = data && data.error;
    if (error) return `${error.code || 'error'}: ${error.message || ''}`;
    return (text || '').slice(0, 300);
  }

  /**
   * One request. Resolves (never rejects) to {ok, status, statusText, data, message}.
   * `admin`: an admin route, whose 401/403 (and 404 with `authOn404`) asks for the token.
   */
  async function api(method, path, { body, headers, admin = false, authOn404 = false } = {}) {
    let response;
    try {
      response = await fetch(path, { method, body, headers: authHeaders(headers), cache: 'no-store', credentials: 'same-origin' });
    } catch (e) {
      return { ok: false, status: 0, statusText: 'network error', data: null, message: String((e && e.message) || e) };
    }
    const text = await response.text().catch(() => '');
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    const result = {
      ok: response.ok,
      status: response.status,
      statusText: response.statusText || STATUS_TEXT[response.status] || '',
      data,
      message: response.ok ? '' : errorMessage(data, text),
    };
    if (admin) {
      if (response.status === 401 || response.status === 403 || (authOn404 && response.status === 404)) showAuthNeeded(result);
      else if (response.ok) hideAuthNeeded();
    }
    return result;
  }

  function showAuthNeeded(result) {
    const box = $('auth-needed');
    setText(box, `The server refused an admin request (${result.status} ${result.statusText}${result.message ? `: ${result.message}` : ''}). Enter the admin token at the top of the page and press Save.`);
    box.hidden = false;
    $('token-form').classList.add('attention');
  }

  function hideAuthNeeded() {
    $('auth-needed').hidden = true;
    $('token-form').classList.remove('attention');
  }

  function updateTokenState() {
    setText($('token-state'), getToken() ? 'token saved in this tab' : 'no token: loopback access only');
  }

  function initToken() {
    updateTokenState();
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const value = $('token').value.trim();
      if (!value) { setText($('token-state'), 'type a token first'); return; }
      try { sessionStorage.setItem(TOKEN_KEY, value); } catch { setText($('token-state'), 'this browser refuses sessionStorage'); return; }
      $('token').value = '';
      tokenChanged();
    });
    $('token-forget').addEventListener('click', () => {
      try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* nothing stored */ }
      $('token').value = '';
      tokenChanged();
    });
  }

  function tokenChanged() {
    updateTokenState();
    hideAuthNeeded();
    startStream('connecting');
  }

  // ---- overview --------------------------------------------------------------------------

  const samples = []; // {at, connections, events, deliveries}: rates per second, null when unknown
  let lastCounters = null; // {at, events, deliveries}: the previous stats message's totals

  function recordSample(at, rt) {
    const totals = { at, events: sum(rt.events_sent_by_type), deliveries: num(rt.messages_sent_total) };
    const rate = (key) => {
      if (!lastCounters || at <= lastCounters.at) return null;
      const delta = totals[key] - lastCounters[key];
      return delta < 0 ? null : delta / ((at - lastCounters.at) / 1000); // a restart resets counters
    };
    samples.push({ at, connections: num(rt.active_connections), events: rate('events'), deliveries: rate('deliveries') });
    lastCounters = totals;
    while (samples.length && samples[0].at < at - WINDOW_MS) samples.shift();
  }

  function renderOverview(rt, at) {
    if (!rt) return;
    if (at) recordSample(at, rt);
    const last = samples[samples.length - 1];
    setText($('ov-connections'), fmtInt(rt.active_connections));
    setText($('ov-events'), fmtRate(last && at ? last.events : null));
    setText($('ov-deliveries'), fmtRate(last && at ? last.deliveries : null));
    setText($('ov-evictions'), fmtInt(rt.slow_evictions_total));
    setText($('ov-dropped'), fmtInt(rt.messages_dropped_total));
    const rooms = Object.assign({ workspace: 0, user: 0, task: 0, chat: 0 }, rt.active_scope_rooms || {});
    renderPairs($('ov-rooms'), Object.entries(rooms).map(([kind, n]) => [kind, fmtInt(n)]));
    renderRelay(rt.relay);
    drawSpark($('spark-connections'), 'connections', 'Connections');
    drawSpark($('spark-events'), 'events', 'Events per second');
    drawSpark($('spark-deliveries'), 'deliveries', 'Deliveries per second');
    if (at) setText($('ov-updated'), `Last update ${fmtTime(at)}.`);
  }

  function renderRelay(relay) {
    if (!relay || !relay.enabled) {
      renderPairs($('ov-relay'), [['Mode', 'single node']]);
      return;
    }
    const pairs = [
      ['Mode', 'relay through Redis'],
      ['Node', relay.node_id || '–'],
      ['Redis', relay.connected ? 'connected' : 'disconnected', relay.connected ? 'good' : 'bad'],
      ['Outbox', fmtInt(relay.outbox_depth)],
      ['Lag', typeof relay.lag_ms === 'number' ? `${relay.lag_ms} ms` : '–'],
    ];
    if (relay.last_error) pairs.push(['Last error', relay.last_error, 'bad']);
    renderPairs($('ov-relay'), pairs);
  }

  /** A polyline of `key` over the last 5 minutes, in a 300×40 viewBox. */
  function drawSpark(svg, key, label) {
    const points = samples.filter((s) => s[key] !== null && s[key] !== undefined);
    const end = samples.length ? samples[samples.length - 1].at : 0;
    const peak = points.length ? Math.max(...points.map((s) => s[key])) : null;
    const max = Math.max(1, peak || 0);
    const children = [svgEl('line', { x1: 0, y1: 39.5, x2: 300, y2: 39.5, class: 'axis' })];
    if (points.length > 1) {
      const coords = points.map((s) => {
        const x = clamp(((s.at - (end - WINDOW_MS)) / WINDOW_MS) * 300, 0, 300);
        const y = 38 - (s[key] / max) * 35;
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      children.push(svgEl('polyline', { points: coords.join(' '), class: 'line', 'vector-effect': 'non-scaling-stroke' }));
    }
    svg.replaceChildren(...children);
    const current = points.length ? points[points.length - 1][key] : null;
    svg.setAttribute('aria-label', `${label}, last 5 minutes: now ${fmtRate(current)}, peak ${fmtRate(peak)}`);
  }

  // ---- plugins ---------------------------------------------------------------------------

  let plugins = []; // the latest list of plugin views
  const rows = new Map(); // name -> {tr, cells, histKey, actionsKey}
  const COLUMNS = ['name', 'status', 'version', 'position', 'subscriptions', 'roles', 'language', 'calls', 'errors',
    'traps', 'timeouts', 'out_of_memory', 'other', 'latency', 'failure', 'actions'];
  const NUMERIC = new Set(['position', 'calls', 'errors', 'traps', 'timeouts', 'out_of_memory', 'other']);

  const position = (view) => (view.listener && typeof view.listener.position === 'number' ? view.listener.position : Infinity);

  function renderPlugins(list) {
    plugins = Array.isArray(list) ? list.filter((v) => v && typeof v.name === 'string') : [];
    const sorted = [...plugins].sort((a, b) => position(a) - position(b) || a.name.localeCompare(b.name));
    const tbody = $('plugin-rows');
    tbody.querySelectorAll('tr.empty').forEach((tr) => tr.remove());
    const seen = new Set();
    sorted.forEach((view, i) => {
      const row = rows.get(view.name) || createRow(view.name);
      updateRow(row, view);
      seen.add(view.name);
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
    });
    for (const [name, row] of rows) {
      if (!seen.has(name)) { row.tr.remove(); rows.delete(name); }
    }
    if (!sorted.length) tbody.append(el('tr', { class: 'empty' }, el('td', { colspan: COLUMNS.length, text: 'No plugins installed.' })));
    // Roles and language show only when some plugin has them.
    const table = $('plugin-table');
    table.classList.toggle('no-roles', !sorted.some((v) => v.plugin && v.plugin.roles && v.plugin.roles.length));
    table.classList.toggle('no-language', !sorted.some((v) => v.language || (v.plugin && v.plugin.language)));
    updatePluginFilter(sorted.map((v) => v.name));
  }

  function createRow(name) {
    const tr = el('tr', { 'data-plugin': name });
    const cells = {};
    for (const col of COLUMNS) {
      const cell = col === 'name' ? el('th', { scope: 'row' }) : el('td', { class: NUMERIC.has(col) ? 'num' : null });
      cell.dataset.col = col;
      cells[col] = cell;
      tr.append(cell);
    }
    setText(cells.name, name);
    // The latency cell: the histogram, then p50 and p99 (each with its own hook).
    cells.hist = el('span', { class: 'hist-box' });
    cells.p50 = el('span', { 'data-col': 'p50' });
    cells.p99 = el('span', { 'data-col': 'p99' });
    cells.latency.append(cells.hist, el('span', { class: 'pct' }, 'p50 ', cells.p50), el('span', { class: 'pct' }, 'p99 ', cells.p99));
    const row = { tr, cells, histKey: null, actionsKey: null, statusKey: null };
    rows.set(name, row);
    return row;
  }

  function statusOf(view) {
    const state = view.plugin && view.plugin.status;
    if (view.status === 'quarantined' || (state && state.state === 'quarantined')) {
      const until = state && state.until_ms ? `until ${fmtTime(state.until_ms)}` : '';
      const failures = state && state.consecutive_failures ? `, ${state.consecutive_failures} failures in a row` : '';
      return { key: 'quarantined', text: 'quarantined', detail: `${until}${failures}` };
    }
    if (view.status === 'failed') return { key: 'failed', text: 'failed', detail: view.plugin ? '' : 'never loaded' };
    return { key: 'active', text: view.status || 'active', detail: '' };
  }

  function setCount(cell, n) {
    setText(cell, fmtInt(n));
    cell.classList.toggle('bad', num(n) > 0);
  }

  function updateRow(row, view) {
    const c = row.cells;
    const plugin = view.plugin || {};
    const listener = view.listener || {};
    const stats = listener.stats || {};
    const latency = stats.latency || {};
    const status = statusOf(view);
    const statusKey = `${status.text}|${status.detail}`;
    if (row.statusKey !== statusKey) {
      row.statusKey = statusKey;
      c.status.replaceChildren(status.text, status.detail ? el('span', { class: 'detail', text: status.detail }) : '');
      c.status.className = `status s-${status.key}`;
    }
    const trips = Object.entries(plugin.limit_trips || {}).map(([limit, n]) => `${limit} ${n}`).join(', ');
    if (trips) c.status.title = `limit trips: ${trips}`; else c.status.removeAttribute('title');
    setText(c.version, shortHash(plugin.hash));
    if (plugin.hash) c.version.title = `${plugin.hash}${view.previous ? `\nprevious: ${view.previous.hash}` : ''}`;
    setText(c.position, Number.isFinite(position(view)) ? position(view) : '–');
    setText(c.subscriptions, (listener.subscriptions || plugin.subscriptions || []).join(', ') || '–');
    setText(c.roles, (plugin.roles || []).join(', ') || '–');
    setText(c.language, view.language || plugin.language || '–');
    setText(c.calls, fmtInt(stats.calls));
    setCount(c.errors, stats.error);
    setCount(c.traps, stats.trap);
    setCount(c.timeouts, stats.timeout);
    setCount(c.out_of_memory, stats.out_of_memory);
    const other = ['invalid_output', 'policy_denied', 'over_budget', 'quarantined'];
    setCount(c.other, view.listener ? other.reduce((t, k) => t + num(stats[k]), 0) : undefined);
    c.other.title = other.map((k) => `${k}: ${num(stats[k])}`).join(', ');
    setText(c.p50, stats.calls ? fmtUs(latency.p50_us) : '–');
    setText(c.p99, stats.calls ? fmtUs(latency.p99_us) : '–');
    const histKey = JSON.stringify(latency.buckets || []);
    if (row.histKey !== histKey) {
      row.histKey = histKey;
      c.hist.replaceChildren(histogram(latency.buckets || [], view.name));
    }
    updateFailure(c.failure, view);
    const actionsKey = view.previous ? `rollback:${view.previous.hash}` : 'none';
    if (row.actionsKey !== actionsKey) {
      row.actionsKey = actionsKey;
      c.actions.replaceChildren(...rowActions(view));
    }
  }

  function updateFailure(cell, view) {
    const failure = view.last_failure || view.failure;
    const call = view.listener && view.listener.stats && view.listener.stats.last_failure;
    const lines = [];
    // The last failed call (a trap, a timeout, an error) and the last failed load.
    if (call) lines.push(`${fmtWhen(call.at_ms)}: ${call.message.startsWith(call.outcome) ? "" : `${call.outcome}: `}${call.message}`);
    if (failure) lines.push(`${fmtWhen(failure.at_ms)}: load failed: ${failure.error}`);
    for (const [node, version] of Object.entries(view.nodes || {})) {
      if (version && version.failure) lines.push(`node ${node}: ${version.failure}`);
    }
    setText(cell, lines.length ? lines.join('\n') : '–');
    cell.classList.toggle('bad', lines.length > 0);
    cell.classList.add('msg');
  }

  /** Power-of-two µs buckets as bars on a fixed axis, 16 µs (2^4) to about 1 s (2^20). */
  function histogram(buckets, name) {
    const lo = 4;
    const bins = new Array(17).fill(0);
    const parts = [];
    for (const [upper, count] of buckets) {
      const exp = Math.round(Math.log2(Math.max(1, num(upper))));
      bins[clamp(exp - lo, 0, bins.length - 1)] += num(count);
      if (count) parts.push(`≤ ${fmtUs(upper)}: ${count}`);
    }
    const max = Math.max(1, ...bins);
    const label = parts.length ? `Latency of ${name}: ${parts.join(', ')}` : `Latency of ${name}: no calls yet`;
    const svg = svgEl('svg', { viewBox: `0 0 ${bins.length * 4} 20`, class: 'hist', role: 'img', 'aria-label': label });
    const title = svgEl('title');
    title.textContent = label;
    svg.append(title, svgEl('line', { x1: 0, y1: 19.5, x2: bins.length * 4, y2: 19.5, class: 'axis' }));
    bins.forEach((count, i) => {
      if (!count) return;
      const h = Math.max(1.5, (count / max) * 19);
      svg.append(svgEl('rect', { x: i * 4, y: 19.5 - h, width: 3, height: h, class: 'bar' }));
    });
    return svg;
  }

  async function refreshPlugins() {
    const r = await api('GET', '/v1/plugins', { admin: true, authOn404: true });
    if (r.ok && r.data) renderPlugins(r.data.plugins);
  }

  // ---- plugin actions: confirmation, answers, rollback, delete, upload ------------------

  /** Asks in the <dialog>; resolves to false, or {keepKv} when confirmed. */
  function confirmAction(text, { keepKv = false } = {}) {
    const dialog = $('confirm');
    if (typeof dialog.showModal !== 'function') return Promise.resolve(window.confirm(text) ? { keepKv: false } : false);
    if (dialog.open) return Promise.resolve(false);
    setText($('confirm-text'), text);
    $('confirm-extra').hidden = !keepKv;
    $('confirm-keep-kv').checked = false;
    dialog.returnValue = '';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => {
        resolve(dialog.returnValue === 'ok' ? { keepKv: $('confirm-keep-kv').checked } : false);
      }, { once: true });
      dialog.showModal();
    });
  }

  function initConfirm() {
    // Buttons rather than <form method="dialog">: the page's policy has `form-action 'none'`.
    $('confirm-ok').addEventListener('click', () => $('confirm').close('ok'));
    $('confirm-cancel').addEventListener('click', () => $('confirm').close('cancel'));
  }

  /** The server's answer to an action, in the live region #answer. */
  function showAnswer(action, r, detail) {
    const status = r.status ? `${r.status} ${r.statusText}`.trim() : r.statusText || 'no answer';
    const message = r.ok ? detail : r.message;
    $('answer').replaceChildren(el('p', { class: r.ok ? 'answer-ok' : 'answer-bad', 'data-status': r.status },
      el('time', { text: new Date().toLocaleTimeString() }), ' ',
      el('strong', { text: `${action}: ` }),
      el('span', { class: 'code', text: status }),
      message ? ` — ${message}` : ''));
  }

  function rowActions(view) {
    const buttons = [];
    if (view.previous) {
      buttons.push(el('button', { type: 'button', class: 'small', 'data-action': 'rollback', 'aria-label': `Roll back ${view.name}`, text: 'Roll back' }));
    }
    buttons.push(el('button', { type: 'button', class: 'small danger', 'data-action': 'delete', 'aria-label': `Delete ${view.name}`, text: 'Delete' }));
    return buttons;
  }

  function onRowAction(e) {
    const button = e.target.closest('button[data-action]');
    const tr = button && button.closest('tr[data-plugin]');
    if (!tr) return;
    const name = tr.dataset.plugin;
    if (button.dataset.action === 'rollback') rollback(name);
    else if (button.dataset.action === 'delete') removePlugin(name);
  }

  const pluginPath = (name) => `/v1/plugins/${encodeURIComponent(name)}`;

  async function rollback(name) {
    const view = plugins.find((p) => p.name === name);
    const previous = view && view.previous ? shortHash(view.previous.hash) : 'the previous version';
    if (!(await confirmAction(`Roll back ${name} to ${previous}? The running version becomes the previous one.`))) return;
    const r = await api('POST', `${pluginPath(name)}/rollback`, { admin: true });
    const hash = r.data && r.data.plugin ? shortHash(r.data.plugin.hash) : '';
    showAnswer(`Roll back ${name}`, r, hash ? `now running ${hash}` : 'rolled back');
    if (r.ok) refreshPlugins();
  }

  async function removePlugin(name) {
    const answer = await confirmAction(`Delete plugin ${name}? Events stop reaching it at once.`, { keepKv: true });
    if (!answer) return;
    const r = await api('DELETE', `${pluginPath(name)}${answer.keepKv ? '?keep-kv=true' : ''}`, { admin: true });
    showAnswer(`Delete ${name}`, r, answer.keepKv ? 'deleted; its kv state is kept' : 'deleted');
    if (r.ok) refreshPlugins();
  }

  function setComponentFile(file) {
    const input = $('up-component');
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
    input.dispatchEvent(new Event('change'));
  }

  function initUpload() {
    const form = $('upload');
    const drop = $('drop');
    $('up-component').addEventListener('change', () => {
      const file = $('up-component').files[0];
      setText($('drop-hint'), file ? `${file.name}, ${fmtBytes(file.size)}` : 'or drop a .wasm file here');
      if (file && !form.elements.name.value.trim()) form.elements.name.value = file.name.replace(/\.wasm$/i, '');
    });
    $('up-manifest-file').addEventListener('change', async () => {
      const file = $('up-manifest-file').files[0];
      if (file) form.elements.manifest.value = await file.text().catch(() => '');
    });
    drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', async (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      for (const file of (e.dataTransfer && e.dataTransfer.files) || []) {
        if (/\.toml$/i.test(file.name)) form.elements.manifest.value = await file.text().catch(() => '');
        else setComponentFile(file);
      }
    });
    // A file dropped beside the zone must not navigate away from the dashboard.
    window.addEventListener('dragover', (e) => e.preventDefault());
    window.addEventListener('drop', (e) => e.preventDefault());
    form.addEventListener('submit', (e) => { e.preventDefault(); upload(form); });
  }

  async function upload(form) {
    const name = form.elements.name.value.trim();
    const file = form.elements.component.files[0];
    const manifest = form.elements.manifest.value;
    if (!name || !file) {
      showAnswer('Upload', { ok: false, status: 0, statusText: 'not sent', message: 'choose a plugin name and a .wasm file' });
      return;
    }
    const verb = plugins.some((p) => p.name === name) ? 'Replace the running version of' : 'Install';
    const withManifest = manifest.trim() ? ' with the manifest' : ' without a manifest';
    if (!(await confirmAction(`${verb} plugin ${name} from ${file.name} (${fmtBytes(file.size)})${withManifest}?`))) return;
    const body = new FormData();
    body.append('component', file, file.name);
    if (manifest.trim()) body.append('manifest', manifest);
    const button = $('upload-submit');
    button.disabled = true;
    const r = await api('PUT', pluginPath(name), { body, admin: true });
    button.disabled = false;
    const hash = r.data && r.data.plugin ? shortHash(r.data.plugin.hash) : '';
    showAnswer(`Upload ${name}`, r, `${r.status === 201 ? 'installed' : 'replaced'}${hash ? `, running ${hash}` : ''}`);
    if (r.ok) refreshPlugins();
  }

  // ---- live events -----------------------------------------------------------------------

  let records = []; // newest first: {msg, li}
  let pending = []; // arrived while paused, newest first
  let pendingCount = 0;
  let paused = false;
  let skipped = 0;

  function readFilters() {
    return { type: $('f-type').value.trim(), workspace: $('f-workspace').value.trim(), plugin: $('f-plugin').value };
  }

  /** Type: a substring, or `prefix*` (as in `task:*`); workspace: a substring; plugin: ran for any event of the publish. */
  function matches(msg, f) {
    const type = msg.event.type || '';
    if (f.type) {
      if (f.type.endsWith('*') ? !type.startsWith(f.type.slice(0, -1)) : !type.includes(f.type)) return false;
    }
    if (f.workspace && !(msg.event.workspace_id || '').includes(f.workspace)) return false;
    if (f.plugin && !(msg.report || []).some((r) => (r.listeners || []).some((l) => l.listener === f.plugin))) return false;
    return true;
  }

  function listenerChip(l) {
    const outcome = l.outcome || 'unknown';
    const chip = el('li', { class: `chip o-${OUTCOMES.includes(outcome) ? outcome : 'other'}`, 'data-listener': l.listener, 'data-outcome': outcome },
      el('span', { class: 'who', text: l.listener }), ' ',
      el('span', { class: 'what', text: outcome }), ' ',
      el('span', { class: 'muted', text: fmtUs(l.duration_us) }));
    if (typeof l.actions === 'number') chip.append(' ', el('span', { class: 'muted', text: `${l.actions} action${l.actions === 1 ? '' : 's'}` }));
    const message = l.message || l.error;
    if (message) chip.append(el('span', { class: 'msg', text: message }));
    return chip;
  }

  function reportBlock(report) {
    const depth = num(report.depth);
    const block = el('div', { class: `report depth-${Math.min(depth, 4)}`, 'data-depth': depth });
    if (depth > 0) block.append(el('p', { class: 'followup', text: `↳ follow-up ${report.type} (depth ${depth})` }));
    if (report.status === 'not_dispatched') block.append(el('p', { class: 'bad', text: `not dispatched: ${report.reason || 'limit'}` }));
    const listeners = report.listeners || [];
    if (listeners.length) block.append(el('ul', { class: 'chips' }, ...listeners.map(listenerChip)));
    else if (report.status !== 'not_dispatched') block.append(el('p', { class: 'muted small', text: 'no listener subscribed' }));
    return block;
  }

  function eventEntry(msg) {
    const ev = msg.event;
    const at = msg.at_ms || Date.now();
    const actor = ev.actor_type || ev.actor_id ? ` · ${ev.actor_type || ''}${ev.actor_id ? ` ${ev.actor_id}` : ''}` : '';
    return el('li', { class: 'event', 'data-event-type': ev.type || '', 'data-workspace': ev.workspace_id || '', 'data-event-id': ev.id },
      el('p', { class: 'event-head' },
        el('time', { datetime: new Date(at).toISOString(), text: fmtTime(at) }), ' ',
        el('strong', { class: 'etype', text: ev.type || '(no type)' }), ' ',
        el('span', { class: 'muted', text: `${ev.workspace_id ? `workspace ${ev.workspace_id}` : 'no workspace'}${actor}` })),
      ...(msg.report || []).map(reportBlock),
      framesBlock(msg.frames || []));
  }

  /** The frames the event and its follow-ups produced: where each went, its type and size. */
  function framesBlock(frames) {
    if (!frames.length) return el('p', { class: 'muted small', text: 'no frames sent' });
    return el('ul', { class: 'frames', 'aria-label': 'frames sent' },
      ...frames.map((f) => el('li', { class: 'frame', 'data-room': f.room || '', text: `→ ${f.room} · ${f.type} · ${num(f.bytes)} B` })));
  }

  /** Adds messages (oldest first) to the newest-first list, updating the DOM in place. */
  function addEvents(messages) {
    const list = $('events');
    const f = readFilters();
    for (const msg of messages) {
      const record = { msg, li: null };
      records.unshift(record);
      if (matches(msg, f)) { record.li = eventEntry(msg); list.prepend(record.li); }
    }
    for (const old of records.splice(MAX_EVENTS)) if (old.li) old.li.remove();
    updateEventsState();
  }

  function renderEvents() {
    const f = readFilters();
    for (const record of records) record.li = matches(record.msg, f) ? record.li || eventEntry(record.msg) : null;
    $('events').replaceChildren(...records.filter((r) => r.li).map((r) => r.li));
    updateEventsState();
  }

  function updateEventsState() {
    const shown = records.filter((r) => r.li).length;
    let text = `Showing ${shown} of the latest ${records.length} events (at most ${MAX_EVENTS} kept).`;
    if (paused) text += ` Paused: ${pendingCount} new.`;
    if (skipped) text += ` ${skipped} events were skipped because this page read the stream too slowly.`;
    setText($('events-state'), text);
    setText($('pause'), paused ? (pendingCount ? `Resume (${pendingCount} new)` : 'Resume') : 'Pause');
  }

  function onPublished(msg) {
    if (!msg || !msg.event) return;
    if (paused) {
      pending.unshift(msg);
      pending.length = Math.min(pending.length, MAX_EVENTS);
      pendingCount += 1;
      updateEventsState();
      return;
    }
    addEvents([msg]);
  }

  function onLagged(msg) {
    skipped += num(msg && msg.skipped);
    updateEventsState();
  }

  function togglePause() {
    paused = !paused;
    if (!paused) {
      const arrived = pending.reverse();
      pending = [];
      pendingCount = 0;
      addEvents(arrived);
    }
    updateEventsState();
  }

  function updatePluginFilter(names) {
    const select = $('f-plugin');
    const current = select.value;
    const wanted = ['', ...names];
    if (current && !names.includes(current)) wanted.push(current); // keep a filter on a deleted plugin
    const have = [...select.options].map((o) => o.value);
    if (have.join('\n') === wanted.join('\n')) return;
    select.replaceChildren(...wanted.map((name) => el('option', { value: name, text: name || 'any' })));
    select.value = current;
  }

  function initEvents() {
    for (const id of ['f-type', 'f-workspace']) $(id).addEventListener('input', renderEvents);
    $('f-plugin').addEventListener('change', renderEvents);
    $('filters').addEventListener('submit', (e) => e.preventDefault());
    $('pause').addEventListener('click', togglePause);
    $('clear-events').addEventListener('click', () => {
      records = [];
      skipped = 0;
      renderEvents();
    });
    updateEventsState();
  }

  // ---- try it ----------------------------------------------------------------------------

  const uniq = () => Date.now().toString(36);
  const EXAMPLES = [
    ['issue:created in ws-1', () => ({ type: 'issue:created', workspace_id: 'ws-1', actor_type: 'member', actor_id: 'user-1',
      payload: { issue: { id: 'iss-1', title: 'Printer on fire' } } })],
    ['comment:created mentioning @alice', () => ({ type: 'comment:created', workspace_id: 'ws-1', actor_type: 'member', actor_id: 'bob',
      payload: { comment: { id: `c-${uniq()}`, issue_id: 'iss-1', content: '@alice could you take a look?' }, issue_title: 'Printer on fire' } })],
    ['task:message for task-1', () => ({ type: 'task:message', workspace_id: 'ws-1', task_id: 'task-1', actor_type: 'agent', actor_id: 'agent-1',
      payload: { task_id: 'task-1', content: 'step 1 done' } })],
    ['daemon:ping without a workspace', () => ({ type: 'daemon:ping', actor_type: 'daemon', actor_id: 'daemon-1',
      payload: { daemon_id: 'daemon-1' } })],
  ];

  function loadExample() {
    const example = EXAMPLES[Number($('try-example').value)] || EXAMPLES[0];
    $('try-event').value = JSON.stringify(example[1](), null, 2);
  }

  function listenerTable(report) {
    const depth = num(report.depth);
    const status = report.status === 'not_dispatched' ? `not dispatched (${report.reason || 'limit'})` : report.status || '';
    const caption = `${depth ? `Follow-up (depth ${depth})` : 'Event'} ${report.type}: ${status}`;
    const head = el('tr', {}, ...['Listener', 'Outcome', 'Duration', 'Actions', 'Error'].map((h) => el('th', { scope: 'col', text: h })));
    const body = (report.listeners || []).map((l) => el('tr', { 'data-listener': l.listener, 'data-outcome': l.outcome },
      el('th', { scope: 'row', text: l.listener }),
      el('td', { class: `o-${OUTCOMES.includes(l.outcome) ? l.outcome : 'other'}`, text: l.outcome }),
      el('td', { class: 'num', text: fmtUs(l.duration_us) }),
      el('td', { class: 'num', text: typeof l.actions === 'number' ? l.actions : '–' }),
      el('td', { class: 'msg', text: l.message || l.error || '' })));
    if (!body.length) body.push(el('tr', {}, el('td', { colspan: 5, class: 'muted', text: 'no listener ran' })));
    return el('div', { class: `table-wrap depth-${Math.min(depth, 4)}`, 'data-event-type': report.type, 'data-depth': depth, tabindex: 0, role: 'region', 'aria-label': caption },
      el('table', { class: 'grid' }, el('caption', { text: caption }), el('thead', {}, head), el('tbody', {}, ...body)));
  }

  function renderTryResult(r) {
    const out = $('try-result');
    const status = r.status ? `${r.status} ${r.statusText}`.trim() : r.statusText;
    const parts = [el('p', { class: r.ok ? 'answer-ok' : 'answer-bad', 'data-status': r.status },
      el('strong', { text: status }), r.message ? ` — ${r.message}` : '')];
    for (const result of (r.ok && r.data && r.data.results) || []) {
      parts.push(el('h3', { text: `Event ${result.event_id}` }));
      if (result.summary) {
        const s = result.summary;
        const outcomes = Object.entries(s.outcomes || {}).map(([k, n]) => `${k} ${n}`).join(', ');
        parts.push(el('p', { text: `Report too large, summary: ${s.events} events, ${s.dispatched} dispatched; outcomes: ${outcomes || 'none'}.` }));
      }
      for (const report of result.events || []) parts.push(listenerTable(report));
    }
    out.replaceChildren(...parts);
  }

  async function publish(e) {
    e.preventDefault();
    const text = $('try-event').value;
    try {
      JSON.parse(text);
    } catch (err) {
      renderTryResult({ ok: false, status: 0, statusText: 'not sent', message: `the event is not valid JSON: ${err.message}` });
      return;
    }
    const button = $('publish');
    button.disabled = true;
    const r = await api('POST', '/v1/events', { body: text, headers: { 'Content-Type': 'application/json' } });
    button.disabled = false;
    renderTryResult(r);
  }

  function initTry() {
    const select = $('try-example');
    select.replaceChildren(...EXAMPLES.map(([label], i) => el('option', { value: i, text: label })));
    select.addEventListener('change', loadExample);
    $('try-form').addEventListener('submit', publish);
    loadExample();
  }

  // ---- the live stream -------------------------------------------------------------------

  const stream = { controller: null, backoff: 1000, timer: 0, watchdog: 0, waitingForToken: false };

  function setStreamState(state, detail) {
    const badge = $('stream-state');
    setText(badge, state);
    badge.dataset.state = state;
    setText($('stream-detail'), detail || '');
  }

  /** Parses an SSE body: `event:` and `data:` lines, a blank line ends a message, `:` lines are comments. */
  async function readSse(body, onMessage) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let name = '';
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      const held = buffer.endsWith('\r') ? '\r' : ''; // a CR whose LF may be in the next chunk
      const lines = (held ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
      buffer = lines.pop() + held;
      for (const line of lines) {
        if (line === '') {
          if (data.length) onMessage(name || 'message', data.join('\n'));
          name = '';
          data = [];
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const fieldValue = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') name = fieldValue;
          else if (field === 'data') data.push(fieldValue);
        }
      }
    }
  }

  function onStreamMessage(name, text) {
    let data;
    try { data = JSON.parse(text); } catch { return; }
    try {
      if (name === 'stats') {
        renderOverview(data.realtime, data.at_ms || Date.now());
        renderPlugins(data.plugins);
      } else if (name === 'published') onPublished(data);
      else if (name === 'lagged') onLagged(data);
    } catch (e) {
      setText($('stream-detail'), `could not show a ${name} message: ${e.message}`);
    }
  }

  /** Aborts a connection that stays silent for 15 s (stats arrive every second). */
  function armWatchdog(controller) {
    clearTimeout(stream.watchdog);
    stream.watchdog = setTimeout(() => controller.abort(), 15000);
  }

  function startStream(state) {
    clearTimeout(stream.timer);
    if (stream.controller) stream.controller.abort();
    const controller = new AbortController();
    stream.controller = controller;
    stream.waitingForToken = false;
    if (state) setStreamState(state);
    runStream(controller);
  }

  async function runStream(controller) {
    let reason = 'the stream ended';
    try {
      const response = await fetch(STREAM_PATH, {
        headers: authHeaders({ Accept: 'text/event-stream' }), cache: 'no-store', credentials: 'same-origin', signal: controller.signal,
      });
      if ([401, 403, 404].includes(response.status)) {
        const text = await response.text().catch(() => '');
        let data = null;
        try { data = JSON.parse(text); } catch { data = null; }
        const statusText = response.statusText || STATUS_TEXT[response.status] || '';
        showAuthNeeded({ status: response.status, statusText, message: errorMessage(data, text) });
        stream.waitingForToken = true;
        setStreamState('reconnecting', `waiting for the admin token (${response.status} ${statusText})`);
        return;
      }
      if (!response.ok || !response.body) throw new Error(`${response.status} ${response.statusText || STATUS_TEXT[response.status] || ''}`.trim());
      hideAuthNeeded();
      setStreamState('live');
      armWatchdog(controller);
      await readSse(response.body, (name, data) => {
        stream.backoff = 1000;
        armWatchdog(controller);
        onStreamMessage(name, data);
      });
    } catch (e) {
      reason = controller.signal.aborted ? 'no data for 15 s' : `connection failed (${(e && e.message) || e})`;
    } finally {
      clearTimeout(stream.watchdog);
    }
    if (stream.controller !== controller || stream.waitingForToken) return; // replaced, or waiting
    scheduleReconnect(reason);
  }

  function scheduleReconnect(reason) {
    const delay = stream.backoff / 2 + (Math.random() * stream.backoff) / 2;
    stream.backoff = Math.min(stream.backoff * 2, 30000);
    setStreamState('reconnecting', `${reason}; retrying in ${Math.ceil(delay / 1000)} s`);
    stream.timer = setTimeout(() => startStream(), delay);
  }

  // ---- start-up --------------------------------------------------------------------------

  function init() {
    initToken();
    initConfirm();
    initUpload();
    initEvents();
    initTry();
    $('plugin-rows').addEventListener('click', onRowAction);
    startStream('connecting'); // the server sends the first `stats` at once
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
