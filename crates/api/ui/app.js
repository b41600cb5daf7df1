// apitrail console: a single page over apitrail's own JSON routes.
//
// The credential (an org API key or a viewer token) lives in this tab's sessionStorage and
// travels only as `Authorization: Bearer`; it is never put in a URL. The address holds the
// page and its filters, so a view can be shared and back/forward work. Every value from the
// server is written with textContent (never as HTML).
'use strict';
(function () {
  const CRED = 'apitrail.credential';
  const THEME = 'apitrail.theme';
  const view = document.getElementById('view');
  let me = null;            // GET /v1/me
  let tail = null;          // the running live tail's AbortController
  let charts = [];          // uPlot instances to destroy on the next render
  let renderSeq = 0;        // drops answers of a render that was replaced

  // ---------- small DOM helpers ----------
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  // replaceChildren that takes nested arrays and skips empty slots, as h() does.
  function fill(el, ...kids) {
    el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
  }
  const fmtTime = (s) => (s ? String(s).replace('T', ' ').replace(/\+00:00$/, 'Z') : '');
  const statusClass = (s) => (s ? 's' + String(s)[0] : '');
  const pretty = (v) => {
    if (typeof v === 'string') {
      try { return JSON.stringify(JSON.parse(v), null, 2); } catch (_) { return v; }
    }
    return JSON.stringify(v, null, 2);
  };

  // ---------- theme ----------
  function applyTheme(t) {
    document.documentElement.dataset.theme = t;
  }
  applyTheme(localStorage.getItem(THEME) ||
    (window.matchMedia && matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'));
  document.getElementById('theme').addEventListener('click', () => {
    const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
    localStorage.setItem(THEME, next);
    applyTheme(next);
    route();
  });

  // ---------- API ----------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  function qs(params) {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== '') u.set(k, v);
    }
    const s = u.toString();
    return s ? '?' + s : '';
  }
  function headers() {
    return { Authorization: 'Bearer ' + sessionStorage.getItem(CRED) };
  }
  async function errorOf(res) {
    let msg = res.statusText || 'error';
    try {
      const b = await res.json();
      msg = (b.error && b.error.message) || b.message ||
        (b.errors && b.errors[0] && b.errors[0].message) || msg;
    } catch (_) { /* not JSON */ }
    return new ApiError(res.status, msg);
  }
  async function api(path, params, opts) {
    let res;
    try {
      res = await fetch(path + qs(params), Object.assign({ headers: headers() }, opts || {}));
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'apitrail did not answer (' + e.message + '): is the server running?');
    }
    if (!res.ok) {
      const err = await errorOf(res);
      if (res.status === 401) expired(err.message);
      throw err;
    }
    return res;
  }
  const getJson = async (path, params) => (await api(path, params)).json();

  // ---------- sign in / out ----------
  function signOut(message) {
    stopTail();
    sessionStorage.removeItem(CRED);
    me = null;
    history.pushState(null, '', '/ui');
    renderSignIn(message);
  }
  function expired(message) {
    if (sessionStorage.getItem(CRED)) {
      signOut('Your credential was refused: ' + message + '. Sign in again, or ask for a new viewer link.');
    }
  }
  document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));

  function renderSignIn(message, isError) {
    document.getElementById('tabs').hidden = true;
    document.getElementById('signout').hidden = true;
    document.getElementById('who').textContent = '';
    const input = h('input', {
      id: 'signin-key', type: 'password', name: 'key', autocomplete: 'off', spellcheck: 'false',
      placeholder: 'atk_…', required: true, 'aria-describedby': 'signin-hint',
    });
    const msg = message ? h('p', { id: 'signin-message', class: isError === false ? 'hint' : 'error', role: 'alert', text: message }) : null;
    const form = h('form', { id: 'signin-form', method: 'post', action: '/ui', onsubmit: async (ev) => {
      ev.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(CRED, key);
      try {
        me = await getJson('/v1/me');
        const u = new URL(location.href);
        if (!u.searchParams.get('page')) u.searchParams.set('page', firstPage());
        history.replaceState(null, '', u.pathname + u.search);
        route();
      } catch (e) {
        sessionStorage.removeItem(CRED);
        renderSignIn(e.status === 401
          ? 'That key was not accepted (' + e.message + '). Check that you pasted the whole secret, starting with atk_.'
          : e.message, true);
      }
    } },
      h('label', { for: 'signin-key' }, 'Org API key', input),
      h('button', { type: 'submit', id: 'signin-submit' }, 'Sign in'));
    view.replaceChildren(h('section', { class: 'signin' },
      h('h1', { text: 'Sign in to apitrail' }),
      h('p', { id: 'signin-hint', class: 'hint',
        text: 'Paste an org API key with the read scope. It stays in this browser tab only (sessionStorage) and is sent to this server alone. To share a view without a key, create a viewer token and open its /ui?viewer_token=… link.' }),
      msg, form));
    input.focus();
  }

  // ---------- what this credential may see ----------
  const isViewer = () => me && me.credential && me.credential.type === 'viewer_token';
  function can(kind) {
    if (!me) return false;
    if (isViewer()) return (me.credential.kinds || []).includes(kind);
    return true;
  }
  function firstPage() {
    if (can('request_logs')) return 'logs';
    if (can('audit_log')) return 'audit';
    return 'actions';
  }
  function renderChrome(page) {
    const tabs = document.getElementById('tabs');
    tabs.hidden = false;
    for (const a of tabs.querySelectorAll('a')) {
      const kind = { logs: 'request_logs', audit: 'audit_log', actions: 'action_records' }[a.dataset.page];
      a.hidden = !can(kind);
      if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.getElementById('signout').hidden = false;
    const who = document.getElementById('who');
    who.replaceChildren();
    who.append(h('span', { id: 'org-name', text: me.org.name || me.org.id }), ' ');
    if (isViewer()) {
      const f = me.credential.filter || {};
      const forced = Object.entries(f).filter(([, v]) => v).map(([k, v]) => k + '=' + v).join(', ');
      who.append(h('span', { class: 'badge viewer', id: 'viewer-badge',
        title: 'Read-only viewer link' + (me.credential.expires_at ? ', expires ' + fmtTime(me.credential.expires_at) : ''),
        text: 'viewer' + (forced ? ' · ' + forced : '') }));
    }
  }

  // ---------- routing ----------
  function params() { return new URLSearchParams(location.search); }
  function navigate(p, replace) {
    const s = p.toString();
    const url = '/ui' + (s ? '?' + s : '');
    if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
    route();
  }
  window.addEventListener('popstate', () => route());
  document.getElementById('tabs').addEventListener('click', (ev) => {
    const a = ev.target.closest('a[data-page]');
    if (!a) return;
    ev.preventDefault();
    navigate(new URLSearchParams({ page: a.dataset.page }));
  });

  function route() {
    stopTail();
    for (const c of charts) c.destroy();
    charts = [];
    renderSeq++;
    if (!sessionStorage.getItem(CRED)) return renderSignIn();
    if (!me) {
      view.replaceChildren(h('p', { class: 'loading', text: 'Loading…' }));
      getJson('/v1/me').then((m) => { me = m; route(); })
        .catch((e) => { if (e.status !== 401) renderSignIn(e.message, true); });
      return;
    }
    const p = params();
    let page = p.get('page') || firstPage();
    renderChrome(page);
    const kind = { logs: 'request_logs', audit: 'audit_log', actions: 'action_records' }[page];
    if (kind && !can(kind)) {
      return view.replaceChildren(h('p', { class: 'error', text: 'This viewer link cannot read ' + kind.replace('_', ' ') + '.' }));
    }
    if (page === 'logs') return renderLogs(p);
    if (page === 'audit') return renderAudit(p);
    if (page === 'actions') return renderActions(p);
    if (page === 'timeline') return renderTimeline(p);
    view.replaceChildren(h('p', { class: 'error', text: 'Unknown page ' + page + '.' }));
  }

  // ---------- shared pieces ----------
  function errorBox(e, what) {
    let advice = '';
    if (e.status === 400) advice = ' Check the filters.';
    else if (e.status === 403) advice = ' This credential may not read this.';
    else if (e.status === 404) advice = ' It may have expired, or it belongs to another org.';
    else if (e.status === 503) advice = ' The server is busy; try again in a moment.';
    return h('p', { class: 'error', role: 'alert', text: 'Could not load ' + what + ': ' + e.message + '.' + advice });
  }
  function filterForm(id, fields, p, onApply, extra) {
    const inputs = {};
    const controls = fields.map((f) => {
      let input;
      if (f.options) {
        input = h('select', { name: f.name, id: id + '-' + f.name },
          f.options.map(([v, label]) => h('option', { value: v, text: label })));
        input.value = p.get(f.name) || f.def || '';
      } else {
        input = h('input', { name: f.name, id: id + '-' + f.name, type: f.type || 'text',
          class: f.cls, placeholder: f.placeholder, min: f.min, max: f.max, inputmode: f.inputmode });
        input.value = p.get(f.name) || '';
      }
      inputs[f.name] = input;
      return h('label', { for: id + '-' + f.name }, f.label, input);
    });
    const form = h('form', { class: 'filters', id, role: 'search', onsubmit: (ev) => {
      ev.preventDefault();
      const next = new URLSearchParams({ page: p.get('page') || '' });
      for (const [name, input] of Object.entries(inputs)) {
        const v = input.value.trim();
        if (v) next.set(name, v);
      }
      onApply(next, inputs);
    } }, controls,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', id: id + '-apply' }, 'Apply'),
      h('button', { type: 'button', class: 'ghost', id: id + '-reset', onclick: () => navigate(new URLSearchParams({ page: p.get('page') || '' })) }, 'Reset'),
      extra || []));
    return { form, inputs };
  }
  function pager(id, { hasPrev, hasNext, onPrev, onNext, label }) {
    return h('div', { class: 'pager', id },
      h('button', { type: 'button', class: 'ghost', id: id + '-prev', disabled: !hasPrev, onclick: onPrev, title: 'Previous page (p)' }, '← Newer'),
      h('button', { type: 'button', class: 'ghost', id: id + '-next', disabled: !hasNext, onclick: onNext, title: 'Next page (n)' }, 'Older →'),
      h('span', { class: 'hint', text: label || '' }));
  }
  // Keyset paging: `cursor` is the current page's, `back` the cursors of the pages before it.
  function pageNav(p, nextCursor) {
    const back = (p.get('back') || '').split(',').filter((x) => x !== '');
    return {
      hasPrev: p.has('cursor'),
      hasNext: !!nextCursor,
      onPrev: () => {
        const q = new URLSearchParams(p);
        const prev = back.pop();
        if (prev && prev !== '-') q.set('cursor', prev); else q.delete('cursor');
        if (back.length) q.set('back', back.join(',')); else q.delete('back');
        q.delete('sel');
        navigate(q);
      },
      onNext: () => {
        const q = new URLSearchParams(p);
        q.set('back', back.concat([p.get('cursor') || '-']).join(','));
        q.set('cursor', nextCursor);
        q.delete('sel');
        navigate(q);
      },
    };
  }
  // Rows: arrow keys or j/k move, Enter opens, Escape closes the detail; n/p page.
  function tableKeys(table, onOpen) {
    table.addEventListener('keydown', (ev) => {
      const row = ev.target.closest('tbody tr');
      if (!row) return;
      if (ev.key === 'ArrowDown' || ev.key === 'j') { ev.preventDefault(); (row.nextElementSibling || row).focus(); }
      else if (ev.key === 'ArrowUp' || ev.key === 'k') { ev.preventDefault(); (row.previousElementSibling || row).focus(); }
      else if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); onOpen(row.dataset.id); }
    });
  }
  document.addEventListener('keydown', (ev) => {
    if (ev.target.closest && ev.target.closest('input, select, textarea')) return;
    if (ev.key === '/') {
      const first = view.querySelector('.filters input, .filters select');
      if (first) { ev.preventDefault(); first.focus(); }
    } else if (ev.key === 'Escape') {
      const close = view.querySelector('.detail .close');
      if (close) close.click();
    } else if (ev.key === 'n' || ev.key === 'p') {
      const b = view.querySelector('.pager button[id$="-' + (ev.key === 'n' ? 'next' : 'prev') + '"]');
      if (b && !b.disabled) b.click();
    }
  });
  function select(p, id, at) {
    const q = new URLSearchParams(p);
    if (id) q.set('sel', id); else q.delete('sel');
    if (at) q.set('at', at); else q.delete('at');
    navigate(q, true);
  }
  function fields(pairs) {
    return h('dl', { class: 'fields' }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [
      h('dt', { text: k }), h('dd', { class: 'mono', dataset: { field: k } }, v === null || v === '' ? '—' : (v instanceof Node ? v : String(v))),
    ]));
  }
  function download(path, params, base, format) {
    return async () => {
      const status = document.getElementById('export-status');
      status.textContent = 'Exporting…';
      try {
        const res = await api(path, Object.assign({}, params, { format }));
        const blob = await res.blob();
        const a = h('a', { href: URL.createObjectURL(blob),
          download: base + '-' + new Date().toISOString().replace(/[:.]/g, '').slice(0, 15) + 'Z.' + (format === 'csv' ? 'csv' : 'ndjson') });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 60000);
        status.textContent = 'Exported ' + (blob.size / 1024).toFixed(1) + ' KiB as ' + format.toUpperCase() + '.';
      } catch (e) {
        status.textContent = 'Export failed: ' + e.message;
      }
    };
  }

  // ---------- request logs ----------
  const RANGES = [['15m', 'Last 15 minutes', 15 * 60], ['1h', 'Last hour', 3600], ['6h', 'Last 6 hours', 6 * 3600],
    ['24h', 'Last 24 hours', 86400], ['7d', 'Last 7 days', 7 * 86400], ['30d', 'Last 30 days', 30 * 86400],
    ['all', 'All time', null], ['custom', 'Custom (UTC)', null]];
  const LOG_FILTERS = ['method', 'route_pattern', 'status_min', 'status_max', 'request_id', 'api_key_id', 'user_id', 'auth_type'];
  // The time window a view's filters name: [from, to] as ISO strings (either may be absent).
  function window_(p, now) {
    const range = p.get('range') || (p.get('from') || p.get('to') ? 'custom' : '24h');
    if (range === 'custom') return { range, from: toIso(p.get('from')), to: toIso(p.get('to')) };
    const r = RANGES.find((x) => x[0] === range);
    if (!r || !r[2]) return { range: 'all' };
    return { range, from: new Date(now - r[2] * 1000).toISOString(), to: undefined, seconds: r[2] };
  }
  function toIso(v) {
    if (!v) return undefined;
    // datetime-local values carry no zone: the console's times are UTC.
    return /[zZ]|[+-]\d\d:\d\d$/.test(v) ? v : v + (v.length === 16 ? ':00Z' : 'Z');
  }
  function logFilterParams(p, win) {
    const out = {};
    for (const k of LOG_FILTERS) if (p.get(k)) out[k] = p.get(k);
    if (out.method) out.method = out.method.toUpperCase();
    if (win.from) out.from = win.from;
    if (win.to) out.to = win.to;
    return out;
  }
  function statsInterval(seconds) {
    if (seconds <= 3 * 3600) return '1m';
    if (seconds <= 12 * 3600) return '5m';
    if (seconds <= 3 * 86400) return '15m';
    if (seconds <= 31 * 86400) return '1h';
    return '1d';
  }

  function renderLogs(p) {
    const seq = renderSeq;
    const now = Date.now();
    const win = window_(p, now);
    const filters = logFilterParams(p, win);
    const sortBy = p.get('sort_by') || 'created_at';
    const sortDir = p.get('sort_dir') || 'desc';
    const tailOn = p.get('tail') === 'on';
    const customFrom = h('input', { type: 'datetime-local', step: 1, id: 'logs-from', name: 'from' });
    const customTo = h('input', { type: 'datetime-local', step: 1, id: 'logs-to', name: 'to' });
    if (win.range === 'custom') {
      customFrom.value = (p.get('from') || '').replace(/Z$/, '').slice(0, 19);
      customTo.value = (p.get('to') || '').replace(/Z$/, '').slice(0, 19);
    }
    const { form, inputs } = filterForm('logs-filters', [
      { name: 'range', label: 'Time range', options: RANGES.map(([v, l]) => [v, l]), def: win.range },
      { name: 'method', label: 'Method', options: [['', 'Any'], ...['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'].map((m) => [m, m])] },
      { name: 'route_pattern', label: 'Route', placeholder: '/v1/things/{id}', cls: 'wide' },
      { name: 'status_min', label: 'Status from', type: 'number', min: 100, max: 599, cls: 'narrow', placeholder: '100' },
      { name: 'status_max', label: 'Status to', type: 'number', min: 100, max: 599, cls: 'narrow', placeholder: '599' },
      { name: 'request_id', label: 'Request id', placeholder: 'req_…' },
      { name: 'api_key_id', label: 'API key id' },
      { name: 'user_id', label: 'User id' },
      { name: 'auth_type', label: 'Auth type', placeholder: 'api_key' },
    ], p, (next, ins) => {
      next.set('range', ins.range.value);
      if (ins.range.value === 'custom') {
        if (customFrom.value) next.set('from', customFrom.value + (customFrom.value.length === 16 ? ':00' : '') + 'Z');
        if (customTo.value) next.set('to', customTo.value + (customTo.value.length === 16 ? ':00' : '') + 'Z');
      }
      for (const k of ['sort_by', 'sort_dir', 'tail']) if (p.get(k)) next.set(k, p.get(k));
      navigate(next);
    }, [
      h('button', { type: 'button', class: 'ghost', id: 'export-csv', onclick: download('/v1/logs/export', filters, 'request-logs', 'csv') }, 'Export CSV'),
      h('button', { type: 'button', class: 'ghost', id: 'export-ndjson', onclick: download('/v1/logs/export', filters, 'request-logs', 'ndjson') }, 'Export NDJSON'),
    ]);
    // A viewer link's forced filter: shown, and not editable (the server forces it anyway).
    if (isViewer()) {
      for (const [k, v] of Object.entries(me.credential.filter || {})) {
        if (v && inputs[k]) { inputs[k].value = v; inputs[k].disabled = true; inputs[k].title = 'Fixed by this viewer link'; }
      }
    }
    const custom = h('span', { class: 'custom-range', hidden: inputs.range.value !== 'custom' },
      h('label', { for: 'logs-from' }, 'From (UTC)', customFrom), ' ', h('label', { for: 'logs-to' }, 'To (UTC)', customTo));
    inputs.range.addEventListener('change', () => { custom.hidden = inputs.range.value !== 'custom'; });
    form.insertBefore(custom, form.children[1]);

    const tailToggle = h('input', { type: 'checkbox', id: 'tail-toggle', checked: tailOn, onchange: (ev) => {
      const q = new URLSearchParams(p);
      q.delete('cursor'); q.delete('back');
      if (ev.target.checked) { q.set('tail', 'on'); q.delete('sort_by'); q.delete('sort_dir'); } else q.delete('tail');
      navigate(q);
    } });
    const tailStatus = h('span', { id: 'tail-status', class: 'hint', text: tailOn ? 'Connecting…' : '' });
    const chartsBox = h('section', { class: 'charts', id: 'charts', 'aria-label': 'Charts' },
      chartBox('chart-volume', 'Requests'), chartBox('chart-errors', '4xx / 5xx rate (%)'), chartBox('chart-latency', 'Latency (ms): p50 / p95 / p99'));
    const breakdown = h('section', { class: 'breakdown', id: 'breakdown' }, h('h2', { text: 'By route' }), h('p', { class: 'loading', text: 'Loading…' }));
    const tableBox = h('div', { class: 'tablewrap', id: 'logs-table-wrap' }, h('p', { class: 'loading', text: 'Loading request logs…' }));
    const detail = h('aside', { class: 'detail', id: 'detail', hidden: !p.get('sel'), 'aria-label': 'Request detail' });
    const layout = h('div', { class: p.get('sel') ? 'layout with-detail' : 'layout' }, h('div', {}, tableBox), detail);
    view.replaceChildren(form,
      h('div', { class: 'toolbar' }, h('label', { class: 'inline', for: 'tail-toggle' }, tailToggle, 'Live tail'), tailStatus,
        h('span', { class: 'spacer' }), h('span', { id: 'export-status', class: 'hint', role: 'status' })),
      chartsBox, breakdown, layout);

    // Charts and the route breakdown, from the stats route.
    const statsSeconds = win.seconds || (win.from ? ((win.to ? Date.parse(win.to) : now) - Date.parse(win.from)) / 1000 : 30 * 86400);
    const interval = statsInterval(statsSeconds);
    const statsParams = Object.assign({}, filters, { interval,
      from: filters.from || new Date(now - statsSeconds * 1000).toISOString(), to: filters.to || new Date(now).toISOString() });
    getJson('/v1/logs/stats', statsParams).then((s) => { if (seq === renderSeq) drawCharts(s); })
      .catch((e) => { if (seq === renderSeq) chartsBox.replaceChildren(errorBox(e, 'the charts')); });
    getJson('/v1/logs/stats', Object.assign({}, statsParams, { group_by: 'route_pattern', limit: 10 }))
      .then((s) => { if (seq === renderSeq) drawBreakdown(breakdown, s, p); })
      .catch((e) => { if (seq === renderSeq) breakdown.replaceChildren(errorBox(e, 'the route breakdown')); });

    // The table.
    const listParams = Object.assign({}, filters, { limit: 50, cursor: p.get('cursor'),
      sort_by: sortBy === 'created_at' ? undefined : sortBy, sort_dir: sortDir === 'desc' ? undefined : sortDir });
    getJson('/v1/logs', listParams).then((page) => {
      if (seq !== renderSeq) return;
      const table = logsTable(page.data, p, sortBy, sortDir);
      const nav = pageNav(p, page.pagination.has_more ? page.pagination.next_cursor : null);
      tableBox.replaceChildren(page.data.length ? table : h('p', { class: 'empty', id: 'logs-empty',
        text: p.has('cursor') ? 'No more request logs on this page.' : 'No request logs match these filters. Widen the time range or clear some filters.' }),
      pager('logs-pager', Object.assign(nav, { label: page.data.length + ' shown' + (tailOn ? ' · newest first, live' : '') })));
      // For the page-speed benchmark (console-bench): when the first page of logs is on screen.
      performance.mark('apitrail:logs-table');
      if (tailOn) startTail(filters, table, tailStatus, p);
      if (p.get('sel')) renderLogDetail(detail, p.get('sel'), p, page.data.find((i) => i.id === p.get('sel')));
    }).catch((e) => { if (seq === renderSeq) tableBox.replaceChildren(errorBox(e, 'request logs')); });
  }

  function chartBox(id, title) {
    return h('div', { class: 'chart' }, h('h2', { text: title }), h('div', { class: 'plot', id }, h('p', { class: 'loading', text: 'Loading…' })));
  }
  function cssVar(n) { return getComputedStyle(document.documentElement).getPropertyValue(n).trim(); }
  function drawCharts(stats) {
    if (typeof uPlot === 'undefined') return;
    const series = stats.series[0] || { buckets: [], total: { count: 0 } };
    const b = series.buckets;
    const xs = b.map((x) => Date.parse(x.start) / 1000);
    const rate = (n, c) => (c ? (100 * n) / c : null);
    const axis = { stroke: cssVar('--muted'), grid: { stroke: cssVar('--line') }, ticks: { stroke: cssVar('--line') } };
    const mk = (id, series, data) => {
      const el = document.getElementById(id);
      el.replaceChildren();
      const width = Math.max(240, el.clientWidth || 300);
      const opts = { width, height: 150, series: [{}].concat(series), axes: [axis, axis], legend: { show: true },
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC'),
        cursor: { drag: { x: false, y: false } } };
      charts.push(new uPlot(opts, [xs].concat(data), el));
      el.dataset.buckets = String(xs.length);
      el.dataset.drawn = 'true';
    };
    const line = (label, color, fill) => ({ label, stroke: cssVar(color), width: 1.5, fill: fill ? cssVar(color) + '33' : undefined, spanGaps: false });
    mk('chart-volume', [line('requests', '--chart-1', true)], [b.map((x) => x.count)]);
    mk('chart-errors', [line('4xx %', '--chart-2'), line('5xx %', '--chart-3')],
      [b.map((x) => rate(x.errors_4xx, x.count)), b.map((x) => rate(x.errors_5xx, x.count))]);
    mk('chart-latency', [line('p50', '--chart-4'), line('p95', '--chart-2'), line('p99', '--chart-3')],
      [b.map((x) => x.p50_ms), b.map((x) => x.p95_ms), b.map((x) => x.p99_ms)]);
    const vol = document.getElementById('chart-volume');
    vol.dataset.count = String(series.total.count);
    vol.dataset.errors4xx = String(series.total.errors_4xx);
    vol.dataset.errors5xx = String(series.total.errors_5xx);
    vol.dataset.interval = stats.interval;
    document.getElementById('chart-latency').dataset.p99 = String(series.total.p99_ms);
    performance.mark('apitrail:charts');
  }
  function drawBreakdown(box, stats, p) {
    const rows = stats.series.filter((s) => s.total.count > 0);
    box.replaceChildren(h('h2', { text: 'By route (' + stats.interval + ' buckets, top ' + rows.length + ')' }));
    if (!rows.length) return box.append(h('p', { class: 'empty', text: 'No requests in this range.' }));
    box.append(h('div', { class: 'tablewrap' }, h('table', { id: 'breakdown-table' },
      h('thead', {}, h('tr', {}, ['Route', 'Requests', '4xx', '5xx', 'p50 ms', 'p95 ms', 'p99 ms'].map((t) => h('th', { text: t })))),
      h('tbody', {}, rows.map((s) => {
        const route = s.group === null ? '(no route)' : String(s.group);
        const t = s.total;
        return h('tr', { dataset: { route }, onclick: () => {
          if (s.group === null) return;
          const q = new URLSearchParams(p); q.set('route_pattern', s.group); q.delete('cursor'); q.delete('back'); q.delete('sel');
          navigate(q);
        } }, h('td', { class: 'mono', text: route }), h('td', { class: 'num', text: t.count }), h('td', { class: 'num', text: t.errors_4xx }),
        h('td', { class: 'num', text: t.errors_5xx }), h('td', { class: 'num', text: t.p50_ms ?? '—' }),
        h('td', { class: 'num', text: t.p95_ms ?? '—' }), h('td', { class: 'num', text: t.p99_ms ?? '—' }));
      })))));
  }

  function logRow(r, p, isNew) {
    return h('tr', { tabindex: 0, class: isNew ? 'new' : null, dataset: { id: r.id }, 'aria-selected': p.get('sel') === r.id ? 'true' : 'false',
      onclick: () => select(p, r.id, r.created_at) },
    h('td', { class: 'mono', text: fmtTime(r.created_at) }), h('td', { text: r.method }),
    h('td', { class: 'mono path', title: r.path, text: r.path }), h('td', { class: 'mono', text: r.route_pattern || '' }),
    h('td', { class: 'num ' + statusClass(r.status_code), text: r.status_code }),
    h('td', { class: 'num', text: r.duration_ms === null ? '—' : r.duration_ms }),
    h('td', { class: 'mono', text: r.request_id || '' }), h('td', { text: r.auth_type || '' }));
  }
  function logsTable(items, p, sortBy, sortDir) {
    const sortable = (key, label) => {
      const active = sortBy === key;
      return h('th', { 'aria-sort': active ? (sortDir === 'asc' ? 'ascending' : 'descending') : null },
        h('button', { type: 'button', class: 'sort', id: 'sort-' + key, title: 'Sort by ' + label, onclick: () => {
          const q = new URLSearchParams(p);
          const dir = active && sortDir === 'desc' ? 'asc' : 'desc';
          if (key === 'created_at' && dir === 'desc') { q.delete('sort_by'); q.delete('sort_dir'); } else { q.set('sort_by', key); q.set('sort_dir', dir); }
          q.delete('cursor'); q.delete('back'); q.delete('sel'); q.delete('tail');
          navigate(q);
        } }, label + (active ? (sortDir === 'asc' ? ' ↑' : ' ↓') : '')));
    };
    const table = h('table', { id: 'logs-table' },
      h('thead', {}, h('tr', {}, sortable('created_at', 'Time (UTC)'), h('th', { text: 'Method' }), h('th', { text: 'Path' }),
        h('th', { text: 'Route' }), sortable('status_code', 'Status'), sortable('duration_ms', 'ms'), h('th', { text: 'Request id' }), h('th', { text: 'Auth' }))),
      h('tbody', {}, items.map((r) => logRow(r, p, false))));
    tableKeys(table, (id) => select(p, id, (items.find((i) => i.id === id) || {}).created_at));
    return table;
  }

  async function renderLogDetail(box, id, p, listItem) {
    const seq = renderSeq;
    const close = h('button', { type: 'button', class: 'ghost close', title: 'Close (Esc)', onclick: () => select(p, null) }, 'Close');
    const head = (title) => h('header', {}, h('h2', { text: title }), close);
    box.replaceChildren(head('Request ' + id), h('p', { class: 'loading', text: 'Loading…' }));
    try {
      // The whole record (every stored field, bodies included) is the export's line for it:
      // the export of the one millisecond the record was created in.
      let at = p.get('at') || (listItem && listItem.created_at);
      if (!at) {
        try {
          at = (await getJson('/org/api-calls/' + encodeURIComponent(id))).created_at;
        } catch (e) {
          if (e.status !== 403 && e.status !== 404) throw e;
        }
      }
      if (!at) throw new ApiError(404, 'this request is not on the current page; open it from the table');
      const res = await api('/v1/logs/export', { format: 'ndjson', from: at, to: new Date(Date.parse(at) + 1).toISOString() });
      const rec = (await res.text()).split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l)).find((r) => r.id === id);
      if (seq !== renderSeq) return;
      if (!rec) throw new ApiError(404, 'no request ' + id + ' at ' + at);
      const shown = Object.entries(rec).filter(([k]) => k !== 'request_body' && k !== 'response_body' && k !== 'metadata')
        .filter(([, v]) => v !== null && v !== '').map(([k, v]) => [k, typeof v !== 'object' ? v : JSON.stringify(v)]);
      const rid = rec.request_id;
      const body = (title, domId, v, truncated) => [h('h3', { text: title + (truncated ? ' (truncated)' : '') }),
        v === null || v === undefined ? h('p', { class: 'hint', text: 'Not captured.' }) : h('pre', { id: domId, text: pretty(v) })];
      fill(box, head(rec.method + ' ' + rec.path),
        rid ? h('p', {}, h('a', { href: '/ui?page=timeline&request_id=' + encodeURIComponent(rid), id: 'timeline-link', onclick: (ev) => {
          ev.preventDefault(); navigate(new URLSearchParams({ page: 'timeline', request_id: rid }));
        } }, 'Open this request\'s timeline →')) : null,
        fields(shown),
        body('Request body', 'request-body', rec.request_body, rec.request_body_truncated),
        body('Response body', 'response-body', rec.response_body, rec.response_body_truncated),
        rec.metadata ? [h('h3', { text: 'Metadata' }), h('pre', { id: 'metadata', text: pretty(rec.metadata) })] : null);
    } catch (e) {
      if (seq === renderSeq) box.replaceChildren(head('Request ' + id), errorBox(e, 'this request'));
    }
  }

  // ---------- live tail ----------
  function stopTail() {
    if (tail) { tail.abort(); tail = null; }
  }
  async function startTail(filters, table, status, p) {
    stopTail();
    const ctl = new AbortController();
    tail = ctl;
    const params = Object.assign({}, filters);
    delete params.from; delete params.to;
    let lastId = null;
    const tbody = table.tBodies[0];
    while (!ctl.signal.aborted) {
      try {
        const res = await api('/v1/logs/tail', params, {
          signal: ctl.signal, headers: Object.assign(headers(), lastId ? { 'Last-Event-ID': lastId } : {}) });
        status.textContent = 'Live: new requests appear at the top.';
        status.dataset.state = 'live';
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let data = '', id = null;
            for (const line of block.split('\n')) {
              if (line.startsWith('data:')) data += line.slice(5).trimStart();
              else if (line.startsWith('id:')) id = line.slice(3).trim();
            }
            if (!data) continue;
            if (id) lastId = id;
            const item = JSON.parse(data);
            if (tbody.querySelector('tr[data-id="' + CSS.escape(item.id) + '"]')) continue;
            tbody.prepend(logRow(item, p, true));
            while (tbody.rows.length > 500) tbody.lastElementChild.remove();
            const empty = document.getElementById('logs-empty');
            if (empty) empty.replaceWith(table);
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
        if (e.status && e.status < 500) {
          // Refused (e.g. 429: too many tails open for this org): retrying would not help.
          status.textContent = 'Live tail stopped: ' + e.message + '. Switch it off and on to try again.';
          status.dataset.state = 'stopped';
          return;
        }
        status.textContent = 'Live tail interrupted (' + e.message + '); reconnecting…';
        status.dataset.state = 'retrying';
      }
      await new Promise((r) => setTimeout(r, 1500));
    }
  }

  // ---------- timeline ----------
  async function renderTimeline(p) {
    const seq = renderSeq;
    const rid = p.get('request_id') || '';
    view.replaceChildren(h('h1', { text: 'Timeline of ' + rid }), h('p', { class: 'loading', text: 'Loading…' }));
    try {
      const t = await getJson('/v1/requests/' + encodeURIComponent(rid) + '/timeline');
      if (seq !== renderSeq) return;
      const sec = (title, id, items, cols, open) => h('section', { id },
        h('h2', { text: title + ' (' + items.length + ')' }),
        items.length ? h('div', { class: 'tablewrap' }, h('table', {},
          h('thead', {}, h('tr', {}, cols.map(([t]) => h('th', { text: t })))),
          h('tbody', {}, items.map((it) => h('tr', { dataset: { id: it.id }, tabindex: open ? 0 : null, onclick: open ? () => open(it) : null,
            onkeydown: open ? (ev) => { if (ev.key === 'Enter') open(it); } : null },
          cols.map(([, f]) => h('td', { class: 'mono', text: f(it) }))))))) :
          h('p', { class: 'empty', text: 'None.' }));
      view.replaceChildren(h('div', { class: 'timeline', id: 'timeline' },
        h('h1', { text: 'Timeline of ' + t.request_id }),
        h('p', { class: 'hint', text: 'Every record of this org carrying this request id, oldest first.' + (Object.values(t.truncated || {}).some(Boolean) ? ' Some parts were cut at 1,000 records.' : '') }),
        sec('Request logs', 'timeline-logs', t.request_logs, [['Time (UTC)', (r) => fmtTime(r.created_at)], ['Method', (r) => r.method], ['Path', (r) => r.path], ['Status', (r) => r.status_code], ['ms', (r) => r.duration_ms ?? '—']],
          can('request_logs') ? (r) => navigate(new URLSearchParams({ page: 'logs', range: 'all', request_id: r.request_id || t.request_id, sel: r.id, at: r.created_at })) : null),
        sec('Audit entries', 'timeline-audit', t.audit_log, [['Time (UTC)', (r) => fmtTime(r.created_at)], ['Action', (r) => r.action], ['Resource', (r) => r.resource_type + ' ' + (r.resource_id || '')], ['User', (r) => r.user_id || '']]),
        sec('Action records', 'timeline-actions', t.action_records, [['Id', (r) => r.id], ['Definition', (r) => r.action_definition_id], ['Status', (r) => (r.state && r.state.status) || (r.events.length ? r.events[r.events.length - 1].status : '')]])));
    } catch (e) {
      if (seq === renderSeq) view.replaceChildren(errorBox(e, 'the timeline'));
    }
  }

  // ---------- audit log ----------
  function renderAudit(p) {
    const seq = renderSeq;
    const filters = {};
    for (const k of ['resource_type', 'resource_id', 'action']) if (p.get(k)) filters[k] = p.get(k);
    const { form } = filterForm('audit-filters', [
      { name: 'action', label: 'Action', placeholder: 'create' },
      { name: 'resource_type', label: 'Resource type', placeholder: 'api_key' },
      { name: 'resource_id', label: 'Resource id', cls: 'wide' },
    ], p, (next) => navigate(next), [
      h('button', { type: 'button', class: 'ghost', id: 'export-csv', onclick: download('/v1/audit-log/export', filters, 'audit-log', 'csv') }, 'Export CSV'),
      h('button', { type: 'button', class: 'ghost', id: 'export-ndjson', onclick: download('/v1/audit-log/export', filters, 'audit-log', 'ndjson') }, 'Export NDJSON'),
    ]);
    const verify = h('span', { id: 'verify-status', class: 'badge', text: 'Checking the chain…' });
    const tableBox = h('div', { class: 'tablewrap' }, h('p', { class: 'loading', text: 'Loading audit entries…' }));
    const detail = h('aside', { class: 'detail', id: 'detail', hidden: !p.get('sel'), 'aria-label': 'Audit entry detail' });
    view.replaceChildren(form, h('div', { class: 'toolbar' }, h('span', { class: 'hint', text: 'Hash chain:' }), verify,
      h('span', { class: 'spacer' }), h('span', { id: 'export-status', class: 'hint', role: 'status' })),
    h('div', { class: p.get('sel') ? 'layout with-detail' : 'layout' }, h('div', {}, tableBox), detail));
    getJson('/v1/audit-log/verify').then((r) => {
      verify.className = 'badge ' + (r.ok ? 'ok' : 'bad');
      verify.textContent = r.ok ? 'verified · ' + r.entries_checked + ' entries' : 'BROKEN at ' + r.first_bad_id + ': ' + r.problem;
      verify.title = 'Head hash ' + r.head_hash;
    }).catch((e) => { verify.className = 'badge'; verify.textContent = e.status === 403 ? 'not available to this credential' : 'unknown (' + e.message + ')'; });
    let items = [];
    getJson('/v1/audit-log', Object.assign({}, filters, { limit: 50, cursor: p.get('cursor') })).then((page) => {
      if (seq !== renderSeq) return;
      items = page.audit_log;
      const table = h('table', { id: 'audit-table' },
        h('thead', {}, h('tr', {}, ['Time (UTC)', 'Action', 'Resource type', 'Resource id', 'User', 'IP'].map((t) => h('th', { text: t })))),
        h('tbody', {}, items.map((r) => h('tr', { tabindex: 0, dataset: { id: r.id }, 'aria-selected': p.get('sel') === r.id ? 'true' : 'false', onclick: () => select(p, r.id) },
          h('td', { class: 'mono', text: fmtTime(r.created_at) }), h('td', { text: r.action }), h('td', { text: r.resource_type }),
          h('td', { class: 'mono', text: r.resource_id || '' }), h('td', { class: 'mono', text: r.user_id || '' }), h('td', { class: 'mono', text: r.ip_address || '' })))));
      tableKeys(table, (id) => select(p, id));
      tableBox.replaceChildren(items.length ? table : h('p', { class: 'empty', id: 'audit-empty', text: 'No audit entries match these filters.' }),
        pager('audit-pager', Object.assign(pageNav(p, page.has_more ? page.next_cursor : null), { label: items.length + ' shown' })));
      const sel = p.get('sel');
      if (sel) {
        const r = items.find((x) => x.id === sel);
        const close = h('button', { type: 'button', class: 'ghost close', onclick: () => select(p, null) }, 'Close');
        fill(detail, h('header', {}, h('h2', { text: r ? r.action + ' ' + r.resource_type : 'Entry ' + sel }), close),
          r ? [fields([['id', r.id], ['created at', fmtTime(r.created_at)], ['org', r.org_id], ['user id', r.user_id], ['action', r.action],
            ['resource type', r.resource_type], ['resource id', r.resource_id], ['ip address', r.ip_address]]),
          h('h3', { text: 'Details' }), h('pre', { id: 'audit-details', text: r.details === null ? 'null' : pretty(r.details) })]
            : h('p', { class: 'hint', text: 'This entry is not on the current page.' }));
      }
    }).catch((e) => { if (seq === renderSeq) tableBox.replaceChildren(errorBox(e, 'audit entries')); });
  }

  // ---------- action records ----------
  function renderActions(p) {
    const seq = renderSeq;
    const take = 20;
    const skip = Math.max(0, parseInt(p.get('skip') || '0', 10) || 0);
    const q = { take, skip: skip || undefined, include_state: 'true' };
    for (const k of ['action_definition_id', 'variant', 'version']) if (p.get(k)) q[k] = p.get(k);
    if (p.get('search_field') && p.get('search_value')) { q['search[field]'] = p.get('search_field'); q['search[value]'] = p.get('search_value'); }
    const { form } = filterForm('actions-filters', [
      { name: 'action_definition_id', label: 'Definition id', cls: 'wide' },
      { name: 'variant', label: 'Variant' },
      { name: 'version', label: 'Version', type: 'number', min: 1, cls: 'narrow' },
      { name: 'search_field', label: 'Search field', placeholder: 'input.user_id' },
      { name: 'search_value', label: 'Search value' },
    ], p, (next) => navigate(next));
    const tableBox = h('div', { class: 'tablewrap' }, h('p', { class: 'loading', text: 'Loading action records…' }));
    const detail = h('aside', { class: 'detail', id: 'detail', hidden: !p.get('sel'), 'aria-label': 'Action record detail' });
    view.replaceChildren(form, h('div', { class: p.get('sel') ? 'layout with-detail' : 'layout' }, h('div', {}, tableBox), detail));
    const org = me.org.id;
    if (!/^[0-9]+$/.test(org)) {
      tableBox.replaceChildren(h('p', { class: 'empty', text: 'The actions dialect addresses orgs by a numeric id; this org\'s id (' + org + ') is not one, so it has no action records route.' }));
      return;
    }
    getJson('/v1/orgs/' + org + '/actions/records', q).then((r) => {
      if (seq !== renderSeq) return;
      const items = r.data.items;
      const status = (x) => (x.state && x.state.status) || (x.events.length ? x.events[x.events.length - 1].status : '');
      const table = h('table', { id: 'actions-table' },
        h('thead', {}, h('tr', {}, ['Id', 'Definition', 'Status', 'Attempts', 'Updated (UTC)', 'Tags'].map((t) => h('th', { text: t })))),
        h('tbody', {}, items.map((x) => h('tr', { tabindex: 0, dataset: { id: x.id }, 'aria-selected': p.get('sel') === x.id ? 'true' : 'false', onclick: () => select(p, x.id) },
          h('td', { class: 'mono', text: x.id }), h('td', { class: 'mono', text: x.action_definition_id }),
          h('td', { class: 'status-' + status(x), text: status(x) }), h('td', { class: 'num', text: x.state ? x.state.attempt : '' }),
          h('td', { class: 'mono', text: x.state ? fmtTime(x.state.updated_at) : '' }),
          h('td', { class: 'mono', text: Object.entries(x.tags || {}).map(([k, v]) => k + '=' + v).join(' ') })))));
      tableKeys(table, (id) => select(p, id));
      const go = (s) => { const n = new URLSearchParams(p); if (s) n.set('skip', s); else n.delete('skip'); n.delete('sel'); navigate(n); };
      tableBox.replaceChildren(items.length ? table : h('p', { class: 'empty', id: 'actions-empty', text: 'No action records match these filters.' }),
        pager('actions-pager', { hasPrev: skip > 0, hasNext: skip + items.length < r.data.count, onPrev: () => go(Math.max(0, skip - take)), onNext: () => go(skip + take),
          label: (items.length ? (skip + 1) + '–' + (skip + items.length) : '0') + ' of ' + r.data.count }));
      const sel = p.get('sel');
      if (sel) {
        const x = items.find((i) => i.id === sel);
        const close = h('button', { type: 'button', class: 'ghost close', onclick: () => select(p, null) }, 'Close');
        fill(detail, h('header', {}, h('h2', { text: 'Action record' }), close),
          x ? [fields([['id', x.id], ['definition', x.action_definition_id], ['status', status(x)], ['timeout', x.timeout + ' s'],
            ['attempts', x.state ? x.state.attempt : null], ['error', x.state ? x.state.error_message : null]]),
          h('h3', { text: 'Input' }), h('pre', { id: 'action-input', text: pretty(x.input) }),
          h('h3', { text: 'Events' }), h('div', { class: 'tablewrap' }, h('table', { id: 'action-events' },
            h('thead', {}, h('tr', {}, ['Kind', 'Status', 'Attempt', 'Message'].map((t) => h('th', { text: t })))),
            h('tbody', {}, x.events.map((ev) => h('tr', {}, h('td', { text: ev.kind }), h('td', { text: ev.status }), h('td', { class: 'num', text: ev.attempt }), h('td', { text: ev.message || '' }))))))]
            : h('p', { class: 'hint', text: 'This record is not on the current page.' }));
      }
    }).catch((e) => { if (seq === renderSeq) tableBox.replaceChildren(errorBox(e, 'action records')); });
  }

  // ---------- start ----------
  function boot() {
    const u = new URL(location.href);
    const vt = u.searchParams.get('viewer_token');
    if (vt) {
      // A viewer link: keep the token for this tab and take it out of the address bar and
      // the history at once.
      sessionStorage.setItem(CRED, vt);
      me = null;
      u.searchParams.delete('viewer_token');
      history.replaceState(null, '', u.pathname + u.search);
    }
    route();
  }
  boot();
})();
