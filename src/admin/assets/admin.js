// The Courier admin console: one hand-written ES module, no framework and no
// build step, served from the binary at /admin/assets/admin.js.
//
// Every piece of work goes through the REST API (`/api/*`) and the console's
// own `/admin/session` and `/admin/overview`, signed in with the console
// cookie; every request that changes state carries `X-CSRF-Token`. The page
// is built with one DOM builder, `h`, that turns strings into text nodes: no
// markup is ever parsed from data (no HTML-string sinks), and no inline style is
// written (the CSP forbids it).

'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';
const POLL_MS = 2000;
const CHART_POINTS = 60;
const PAGE = 20;

// ---- the DOM builder ----------------------------------------------------------

/** Appends children: strings and numbers become text nodes; arrays are flattened; null, undefined and false are skipped. */
function append(el, ...children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, ...child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
  return el;
}

/** Sets attributes: `on…` functions become listeners, `true` a bare attribute, false/null none; `value`, `checked` and `selected` are properties. */
function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'style') throw new Error('no style attributes: the CSP forbids them');
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'value' || key === 'checked' || key === 'selected') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  return el;
}

/** `h(tag, attrs, ...children)`: the one way this page makes HTML elements. */
function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** The same for SVG elements. */
function s(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// ---- formatting ---------------------------------------------------------------

function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? String(ms) : d.toLocaleString();
}

function fmtNumber(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function fmtDuration(secs) {
  const s0 = Math.floor(secs || 0);
  const d = Math.floor(s0 / 86400);
  const hh = Math.floor((s0 % 86400) / 3600);
  const mm = Math.floor((s0 % 3600) / 60);
  const ss = s0 % 60;
  if (d) return `${d}d ${hh}h ${mm}m`;
  if (hh) return `${hh}h ${mm}m`;
  if (mm) return `${mm}m ${ss}s`;
  return `${ss}s`;
}

function badge(text, kind = 'neutral') {
  return h('span', { class: `badge badge-${kind}` }, text);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// ---- the API ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

const state = {
  session: null,
  route: null,
  timer: null,
  notice: null,
  // A temporary password to show once: {userId, password}.
  secret: null,
};

/**
 * One request: same-origin credentials (the console cookie), JSON in and
 * out, `X-CSRF-Token` on everything but GET. A 401 ends the session and
 * shows the sign-in form (except for the sign-in itself).
 */
async function api(method, url, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = state.session ? state.session.csrf : '';
  const init = { method, credentials: 'same-origin', headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, 'network', `the server could not be reached (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const e = (data && data.error) || {};
    const error = new ApiError(response.status, e.code, e.message || `HTTP ${response.status}`, e.field);
    if (response.status === 401 && url !== '/admin/session') {
      state.session = null;
      showSignIn(e.message || 'Your session has ended. Sign in again.');
    }
    throw error;
  }
  return data;
}

function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

// ---- sections and routing -----------------------------------------------------

const SECTIONS = [
  { key: 'overview', title: 'Overview', perm: 'users.manage', render: renderOverview },
  { key: 'users', title: 'Users', perm: 'users.manage', render: renderUsers },
  { key: 'channels', title: 'Channels', perm: 'channels.manage', render: renderChannels },
  { key: 'moderation', title: 'Moderation', perm: 'messages.moderate', render: renderModeration },
  { key: 'break-glass', title: 'Break-glass', perm: 'break_glass.review', render: renderBreakGlass },
  { key: 'audit', title: 'Audit log', perm: 'audit.read', render: renderAudit },
  { key: 'settings', title: 'Settings', perm: 'settings.manage', render: renderSettings },
];

function can(perm) {
  return Boolean(state.session && state.session.permissions && state.session.permissions.includes(perm));
}

function allowedSections() {
  return SECTIONS.filter((sec) => can(sec.perm));
}

function parseRoute() {
  const raw = (location.hash || '').replace(/^#\/?/, '');
  const [section = '', id = ''] = raw.split('/');
  return { section, id: id ? decodeURIComponent(id) : '' };
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

let forbiddenReason = '';

function route() {
  stopPolling();
  if (!state.session) return;
  if (state.session.mustChangePassword) {
    showChangePassword();
    return;
  }
  if (state.session.secondFactorEnrolmentRequired) {
    showEnrolSecondFactor();
    return;
  }
  const { section, id } = parseRoute();
  if (section === 'forbidden') {
    renderShell('forbidden', (main) => renderForbidden(main));
    return;
  }
  const found = SECTIONS.find((sec) => sec.key === section);
  if (!found) {
    const first = allowedSections()[0];
    if (first) go(`#/${first.key}`);
    else forbid('Your role has no section of the console.');
    return;
  }
  if (!can(found.perm)) {
    forbid(`The ${found.title} section needs the permission “${found.perm}”, which your role does not have.`);
    return;
  }
  renderShell(found.key, (main) => {
    Promise.resolve()
      .then(() => found.render(main, id))
      .catch((err) => failed(main, err));
  });
}

/** Shows the 403 page. */
function forbid(reason) {
  forbiddenReason = reason;
  // Replaced, not pushed: Back returns to where the reader came from.
  if (location.hash === '#/forbidden') route();
  else location.replace('#/forbidden');
}

/** A page's loading error: a 403 shows the 403 page, anything else a message in place. */
function failed(main, err) {
  if (err instanceof ApiError && err.status === 403) {
    forbid(`The server refused: ${err.message}`);
    return;
  }
  if (err instanceof ApiError && err.status === 401) return;
  append(main, h('div', { class: 'alert alert-error', role: 'alert' }, `Could not load: ${err.message}`));
}

// ---- the shell ----------------------------------------------------------------

const app = () => document.getElementById('app');

function renderShell(active, fill) {
  const root = clear(app());
  const user = state.session.user;
  const nav = h(
    'nav',
    { class: 'nav', 'aria-label': 'Sections' },
    h(
      'ul',
      {},
      allowedSections().map((sec) =>
        h('li', {}, h('a', { href: `#/${sec.key}`, class: sec.key === active ? 'active' : null, 'aria-current': sec.key === active ? 'page' : null, 'data-section': sec.key }, sec.title)),
      ),
    ),
  );
  const sidebar = h(
    'aside',
    { class: 'sidebar' },
    h('div', { class: 'brand' }, h('span', { class: 'brand-mark', 'aria-hidden': 'true' }, 'C'), h('span', {}, h('strong', {}, 'Courier'), h('small', {}, 'Admin console'))),
    nav,
    h(
      'div',
      { class: 'whoami' },
      h('div', { class: 'whoami-name', id: 'whoami' }, user.username),
      badge(user.role.replace('_', ' '), 'role'),
      h('button', { type: 'button', class: 'btn btn-ghost', id: 'sign-out', onclick: signOut }, 'Sign out'),
    ),
  );
  const main = h('main', { class: 'content', id: 'main' });
  const notice = h('div', { id: 'notice', class: 'notice-area', 'aria-live': 'polite' });
  append(root, h('div', { class: 'layout' }, sidebar, h('div', { class: 'page' }, notice, main)));
  if (state.notice) {
    showNotice(state.notice.text, state.notice.kind);
    state.notice = null;
  }
  fill(main);
}

function showNotice(text, kind = 'ok') {
  const area = document.getElementById('notice');
  if (!area) {
    state.notice = { text, kind };
    return;
  }
  clear(area);
  append(area, h('div', { class: `alert alert-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text, h('button', { type: 'button', class: 'alert-close', 'aria-label': 'Dismiss', onclick: () => clear(area) }, '×')));
}

/** Runs an action from a button or form: its errors become a notice. Returns its result, or undefined. */
async function act(what, fn) {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return undefined;
    const refused = err instanceof ApiError && err.status === 403 ? 'refused (403)' : 'failed';
    showNotice(`${what} ${refused}: ${err.message}${err.field ? ` (${err.field})` : ''}`, 'error');
    return undefined;
  }
}

function header(title, ...extra) {
  return h('header', { class: 'page-header' }, h('h1', {}, title), h('div', { class: 'page-actions' }, extra));
}

function card(title, ...children) {
  return h('section', { class: 'card' }, title ? h('h2', {}, title) : null, children);
}

function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 10)}`;
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('small', { class: 'hint' }, hint) : null);
}

function table(headers, rows, empty = 'Nothing to show.') {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h(
    'div',
    { class: 'table-wrap' },
    h('table', {}, h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))), h('tbody', {}, rows)),
  );
}

function pager(offset, hasMore, onPage, count = PAGE) {
  return h(
    'div',
    { class: 'pager' },
    h('button', { type: 'button', class: 'btn', disabled: offset <= 0, onclick: () => onPage(Math.max(0, offset - PAGE)) }, '← Previous'),
    count ? h('span', { class: 'pager-pos' }, `${offset + 1}–${offset + count}`) : null,
    h('button', { type: 'button', class: 'btn', disabled: !hasMore, onclick: () => onPage(offset + PAGE) }, 'Next →'),
  );
}

function select(options, value, attrs = {}) {
  const el = h('select', attrs, options.map(([v, label]) => h('option', { value: v }, label)));
  el.value = value;
  return el;
}

const ROLES = [
  ['user', 'User'],
  ['moderator', 'Moderator'],
  ['admin', 'Admin'],
  ['super_admin', 'Super admin'],
];
const CHANNEL_ROLES = [
  ['member', 'Member'],
  ['moderator', 'Moderator'],
  ['owner', 'Owner'],
];

// ---- sign-in, password change, sign-out ---------------------------------------

function showSignIn(message, kind = 'error') {
  stopPolling();
  const root = clear(app());
  const username = h('input', { name: 'username', autocomplete: 'username', required: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  // The second factor's step: shown once the server asks for it.
  const code = h('input', { name: 'totp-code', id: 'totp-code', autocomplete: 'one-time-code', inputmode: 'text' });
  const codeField = field('Authentication code', code, 'The six digits of your authenticator app, or one of your recovery codes.');
  codeField.hidden = true;
  const status = h('div', { class: 'form-status', 'aria-live': 'polite' }, message ? h('div', { class: `alert alert-${kind}`, role: 'alert' }, message) : null);
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, 'Sign in');
  const form = h(
    'form',
    {
      class: 'signin-form',
      id: 'sign-in',
      onsubmit: async (ev) => {
        ev.preventDefault();
        submit.disabled = true;
        clear(status);
        try {
          const body = { username: username.value, password: password.value };
          const given = code.value.trim();
          if (!codeField.hidden && given) {
            if (/^[0-9 ]+$/.test(given)) body.totpCode = given;
            else body.recoveryCode = given;
          }
          state.session = await api('POST', '/admin/session', body);
          password.value = '';
          if (!parseRoute().section || parseRoute().section === 'forbidden') location.hash = '';
          route();
        } catch (err) {
          if (err.code === 'second_factor_required' || err.code === 'second_factor_failed') {
            codeField.hidden = false;
            code.value = '';
            code.focus();
          }
          const text =
            err.code === 'second_factor_required'
              ? 'Enter the code of your authenticator app.'
              : err.code === 'second_factor_failed'
                ? 'That code is wrong, expired or already used. Try the next one.'
                : err.status === 401
                  ? 'Wrong username or password.'
                  : err.status === 403
                    ? `This account cannot use the console: ${err.message}`
                    : err.status === 429
                      ? `Too many attempts: ${err.message}`
                      : err.message;
          append(status, h('div', { class: 'alert alert-error', role: 'alert' }, text));
        } finally {
          submit.disabled = false;
        }
      },
    },
    field('Username', username),
    field('Password', password),
    codeField,
    submit,
  );
  append(
    root,
    h(
      'div',
      { class: 'signin' },
      h('div', { class: 'signin-card' }, h('div', { class: 'brand brand-large' }, h('span', { class: 'brand-mark', 'aria-hidden': 'true' }, 'C'), h('span', {}, h('strong', {}, 'Courier'), h('small', {}, 'Admin console'))), h('h1', {}, 'Sign in'), status, form),
    ),
  );
  username.focus();
}

function showChangePassword() {
  const root = clear(app());
  const current = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const next = h('input', { type: 'password', autocomplete: 'new-password', required: true });
  const again = h('input', { type: 'password', autocomplete: 'new-password', required: true });
  const status = h('div', { class: 'form-status', 'aria-live': 'polite' });
  const form = h(
    'form',
    {
      class: 'signin-form',
      id: 'change-password',
      onsubmit: async (ev) => {
        ev.preventDefault();
        clear(status);
        if (next.value !== again.value) {
          append(status, h('div', { class: 'alert alert-error', role: 'alert' }, 'The two new passwords differ.'));
          return;
        }
        try {
          await api('POST', '/api/auth/change-password', { currentPassword: current.value, newPassword: next.value });
          state.session = null;
          showSignIn('Password changed. Every session ended: sign in with the new password.', 'ok');
        } catch (err) {
          if (err.status !== 401) append(status, h('div', { class: 'alert alert-error', role: 'alert' }, err.message));
        }
      },
    },
    field('Temporary password', current),
    field('New password', next),
    field('New password again', again),
    h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, 'Change password'),
    h('button', { type: 'button', class: 'btn btn-ghost btn-block', onclick: signOut }, 'Sign out'),
  );
  append(
    root,
    h(
      'div',
      { class: 'signin' },
      h('div', { class: 'signin-card' }, h('h1', {}, 'Change your temporary password'), h('p', { class: 'muted' }, `Signed in as ${state.session.user.username}. Choose a new password before using the console.`), status, form),
    ),
  );
  current.focus();
}

/**
 * The enrolment a role in `totp_required_roles` must finish before
 * anything else: the current password, then the QR code and a code from
 * the app, then the recovery codes, shown once.
 */
function showEnrolSecondFactor() {
  const root = clear(app());
  const card = h('div', { class: 'signin-card' });
  append(root, h('div', { class: 'signin' }, card));
  const status = h('div', { class: 'form-status', 'aria-live': 'polite' });
  const alertOf = (err) => h('div', { class: 'alert alert-error', role: 'alert' }, err.message);
  const current = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const step1 = h(
    'form',
    {
      class: 'signin-form',
      id: 'totp-enroll',
      onsubmit: async (ev) => {
        ev.preventDefault();
        clear(status);
        try {
          const enrolment = await api('POST', '/api/auth/totp/enroll', { currentPassword: current.value });
          current.value = '';
          showScan(enrolment);
        } catch (err) {
          if (err.status !== 401) append(status, alertOf(err));
        }
      },
    },
    field('Current password', current),
    h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, 'Continue'),
    h('button', { type: 'button', class: 'btn btn-ghost btn-block', onclick: signOut }, 'Sign out'),
  );
  append(card, h('h1', {}, 'Set up two-step sign-in'), h('p', { class: 'muted' }, `Signed in as ${state.session.user.username}. Your role needs an authenticator app (a second factor) before you can use the console.`), status, step1);
  current.focus();

  function showScan(enrolment) {
    clear(card);
    const code = h('input', { id: 'totp-confirm-code', autocomplete: 'one-time-code', inputmode: 'numeric', required: true });
    const form = h(
      'form',
      {
        class: 'signin-form',
        id: 'totp-confirm',
        onsubmit: async (ev) => {
          ev.preventDefault();
          clear(status);
          try {
            const confirmed = await api('POST', '/api/auth/totp/confirm', { code: code.value.trim() });
            showRecoveryCodes(confirmed.recoveryCodes);
          } catch (err) {
            if (err.status !== 401) append(status, alertOf(err));
          }
        },
      },
      field('Code from the app', code),
      h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, 'Turn on'),
    );
    append(
      card,
      h('h1', {}, 'Scan this code'),
      h('p', { class: 'muted' }, 'Scan it with your authenticator app, then enter the six digits it shows.'),
      h('img', { src: enrolment.qrCode, alt: 'QR code of the authenticator secret', id: 'totp-qr', width: 200, height: 200 }),
      h('p', { class: 'hint' }, 'Or type this secret into the app: ', h('code', { id: 'totp-secret' }, enrolment.secret)),
      status,
      form,
    );
    code.focus();
  }

  function showRecoveryCodes(codes) {
    clear(card);
    append(
      card,
      h('h1', {}, 'Save your recovery codes'),
      h('p', { class: 'muted' }, 'Each signs you in once if you lose your device. They are shown only now: keep them somewhere safe.'),
      h('ul', { class: 'recovery-codes', id: 'recovery-codes' }, codes.map((c) => h('li', {}, h('code', {}, c)))),
      h(
        'button',
        {
          type: 'button',
          class: 'btn btn-primary btn-block',
          id: 'totp-done',
          onclick: async () => {
            try {
              state.session = await api('GET', '/admin/session');
              route();
            } catch (err) {
              append(card, alertOf(err));
            }
          },
        },
        'I saved them',
      ),
    );
  }
}

async function signOut() {
  try {
    await api('DELETE', '/admin/session');
  } catch {
    // Signed out either way.
  }
  state.session = null;
  location.hash = '';
  showSignIn('Signed out.', 'ok');
}

// ---- 403 ----------------------------------------------------------------------

function renderForbidden(main) {
  append(
    main,
    h(
      'div',
      { class: 'forbidden', id: 'forbidden' },
      h('div', { class: 'forbidden-code' }, '403'),
      h('h1', {}, 'Not allowed'),
      h('p', {}, forbiddenReason || 'Your role may not open this page.'),
      allowedSections().length ? h('p', {}, 'Go to ', h('a', { href: `#/${allowedSections()[0].key}` }, allowedSections()[0].title), '.') : null,
    ),
  );
}

// ---- overview -----------------------------------------------------------------

const overview = {
  last: null,
  series: {},
};

const CHARTS = [
  { key: 'connections', title: 'Connections', unit: '', digits: 0 },
  { key: 'messagesPerSec', title: 'Messages per second', unit: '/s', digits: 1 },
  { key: 'p99', title: 'p99 publish-to-ack', unit: ' ms', digits: 1 },
  { key: 'batch', title: 'Persistence batch size', unit: '', digits: 1 },
  { key: 'rssMiB', title: 'Memory (RSS)', unit: ' MiB', digits: 1 },
  { key: 'cpu', title: 'CPU', unit: ' %', digits: 1 },
];

function stopPolling() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

function pushPoint(key, at, value) {
  const list = overview.series[key] || (overview.series[key] = []);
  list.push({ at, value: value === null || value === undefined || Number.isNaN(value) ? null : value });
  while (list.length > CHART_POINTS) list.shift();
}

function record(figures) {
  const prev = overview.last;
  const at = figures.at;
  pushPoint('connections', at, figures.connections);
  pushPoint('p99', at, figures.publishAckP99Ms);
  pushPoint('batch', at, figures.persistBatchSizeAvg);
  pushPoint('rssMiB', at, figures.rssBytes / (1024 * 1024));
  if (prev && at > prev.at) {
    const dt = (at - prev.at) / 1000;
    pushPoint('messagesPerSec', at, Math.max(0, (figures.messagesPublished - prev.messagesPublished) / dt));
    pushPoint('cpu', at, Math.max(0, ((figures.cpuSeconds - prev.cpuSeconds) / dt) * 100));
  }
  overview.last = figures;
}

function drawChart(svg, points) {
  clear(svg);
  const W = 320;
  const H = 120;
  const pad = { l: 38, r: 8, t: 8, b: 18 };
  const values = points.map((p) => p.value).filter((v) => v !== null);
  const max = values.length ? Math.max(...values) : 0;
  const top = max > 0 ? niceCeil(max) : 1;
  const x = (i) => pad.l + ((W - pad.l - pad.r) * i) / Math.max(1, CHART_POINTS - 1);
  const y = (v) => pad.t + (H - pad.t - pad.b) * (1 - v / top);
  for (const frac of [0, 0.5, 1]) {
    const gy = y(top * frac);
    append(svg, s('line', { x1: pad.l, x2: W - pad.r, y1: gy, y2: gy, class: 'grid' }));
    append(svg, s('text', { x: pad.l - 4, y: gy + 3, class: 'axis', 'text-anchor': 'end' }, fmtNumber(top * frac, top < 1 ? 2 : top < 10 ? 1 : 0)));
  }
  append(svg, s('text', { x: pad.l, y: H - 4, class: 'axis' }, `${CHART_POINTS * (POLL_MS / 1000)} s ago`));
  append(svg, s('text', { x: W - pad.r, y: H - 4, class: 'axis', 'text-anchor': 'end' }, 'now'));
  const offset = CHART_POINTS - points.length;
  let run = [];
  const runs = [];
  points.forEach((p, i) => {
    if (p.value === null) {
      if (run.length) runs.push(run);
      run = [];
    } else run.push(`${x(i + offset).toFixed(1)},${y(p.value).toFixed(1)}`);
  });
  if (run.length) runs.push(run);
  for (const r of runs) {
    if (r.length === 1) {
      const [cx, cy] = r[0].split(',');
      append(svg, s('circle', { cx, cy, r: 2, class: 'dot' }));
    } else {
      const first = r[0].split(',')[0];
      const last = r[r.length - 1].split(',')[0];
      const base = y(0).toFixed(1);
      append(svg, s('polygon', { points: `${first},${base} ${r.join(' ')} ${last},${base}`, class: 'area' }));
      append(svg, s('polyline', { points: r.join(' '), class: 'line' }));
    }
  }
}

function niceCeil(v) {
  const exp = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= v) return m * exp;
  return 10 * exp;
}

function renderOverview(main) {
  append(main, header('Overview', h('span', { class: 'muted', id: 'overview-updated' }, 'Waiting for figures…')));
  const stats = h('div', { class: 'stats', id: 'overview-stats' });
  const charts = {};
  const chartGrid = h(
    'div',
    { class: 'charts' },
    CHARTS.map((c) => {
      const svg = s('svg', { viewBox: '0 0 320 120', class: 'chart', role: 'img', 'aria-label': c.title });
      const current = h('span', { class: 'chart-value' }, '—');
      charts[c.key] = { svg, current, spec: c };
      return h('section', { class: 'card chart-card', 'data-chart': c.key }, h('div', { class: 'chart-head' }, h('h2', {}, c.title), current), svg);
    }),
  );
  append(main, stats, chartGrid);
  const update = (figures) => {
    record(figures);
    const up = document.getElementById('overview-updated');
    if (up) up.textContent = `Updated ${new Date(figures.at).toLocaleTimeString()} · every ${POLL_MS / 1000} s`;
    for (const { svg, current, spec } of Object.values(charts)) {
      const points = overview.series[spec.key] || [];
      drawChart(svg, points);
      const lastPoint = points[points.length - 1];
      current.textContent = lastPoint && lastPoint.value !== null ? `${fmtNumber(lastPoint.value, spec.digits)}${spec.unit}` : '—';
    }
    clear(stats);
    const store = figures.store || {};
    const audit = figures.audit || {};
    append(
      stats,
      stat('Uptime', fmtDuration(figures.uptimeSeconds)),
      stat('Users online', fmtNumber(figures.usersOnline)),
      stat('Active channels', fmtNumber(figures.channelsActive)),
      stat('Messages published', fmtNumber(figures.messagesPublished)),
      stat('Messages delivered', fmtNumber(figures.messagesDelivered)),
      stat('Memory', fmtBytes(figures.rssBytes)),
      stat('Store', h('span', {}, `${store.backend || '?'} `, store.reachable ? badge('reachable', 'ok') : badge('unreachable', 'danger')), 'store-health'),
      stat('Audit chain', h('span', {}, `${fmtNumber(audit.entries)} entries `, audit.healthy ? badge('healthy', 'ok') : badge(`${fmtNumber(audit.appendFailures)} append failures`, 'danger')), 'audit-health'),
    );
  };
  const poll = async () => {
    try {
      update(await api('GET', '/admin/overview'));
    } catch (err) {
      stopPolling();
      if (err.status === 403) forbid(`The server refused: ${err.message}`);
      else if (err.status !== 401) showNotice(`Could not load the figures: ${err.message}`, 'error');
    }
  };
  poll();
  state.timer = setInterval(poll, POLL_MS);
}

function stat(label, value, id) {
  return h('div', { class: 'stat', id: id || null }, h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value' }, value));
}

// ---- searchable pages -----------------------------------------------------------

// A searchable, paged table of `what`s: its search form, the list it fills,
// and the loader. `fetchPage(search, offset)` answers `{items, hasMore}`;
// `row(item)` makes one table row.
function pagedSearch({ main, what, searchId, listId, placeholder, fetchPage, columns, row }) {
  let search = '';
  let offset = 0;
  const searchInput = h('input', { type: 'search', id: searchId, placeholder });
  const list = h('div', { id: listId });
  const load = async () => {
    try {
      const { items, hasMore } = await fetchPage(search, offset);
      clear(list);
      append(
        list,
        table(columns, items.map(row), search ? `No ${what} matches “${search}”.` : `No ${what}s yet.`),
        pager(
          offset,
          hasMore,
          (o) => {
            offset = o;
            load();
          },
          items.length,
        ),
      );
    } catch (err) {
      failed(main, err);
    }
  };
  const toolbar = h(
    'form',
    {
      class: 'toolbar',
      role: 'search',
      onsubmit: (ev) => {
        ev.preventDefault();
        search = searchInput.value.trim();
        offset = 0;
        load();
      },
    },
    field(`Search ${what}s`, searchInput),
    h('button', { type: 'submit', class: 'btn' }, 'Search'),
  );
  return { toolbar, list, load };
}

// ---- users --------------------------------------------------------------------

function userStatus(u) {
  return [
    u.disabled ? badge('disabled', 'danger') : null,
    u.locked ? badge(u.lockedUntil ? 'locked (back-off)' : 'locked', 'warn') : null,
    u.mustChangePassword ? badge('must change password', 'info') : null,
    !u.disabled && !u.locked ? badge('active', 'ok') : null,
  ];
}

function renderUsers(main, id) {
  if (id) return renderUser(main, id);
  const users = pagedSearch({
    main,
    what: 'user',
    searchId: 'user-search',
    listId: 'user-list',
    placeholder: 'username or email',
    fetchPage: async (search, offset) => {
      const page = await api('GET', `/api/users${qs({ search, limit: PAGE, offset })}`);
      return { items: page.users, hasMore: page.hasMore };
    },
    columns: ['Username', 'Role', 'Status', 'Email', 'Created', 'Last sign-in'],
    row: (u) =>
      h(
        'tr',
        { class: 'clickable', 'data-user': u.username, onclick: () => go(`#/users/${u.id}`) },
        h('td', {}, h('a', { href: `#/users/${u.id}` }, u.username)),
        h('td', {}, badge(u.role.replace('_', ' '), 'role')),
        h('td', {}, userStatus(u)),
        h('td', {}, u.email || '—'),
        h('td', {}, fmtTime(u.createdAt)),
        h('td', {}, fmtTime(u.lastLoginAt)),
      ),
  });
  const username = h('input', { name: 'username', autocomplete: 'off', required: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'new-password', required: true });
  const email = h('input', { name: 'email', type: 'email', autocomplete: 'off' });
  const role = select(ROLES, 'user', { name: 'role' });
  const createForm = h(
    'form',
    {
      class: 'form-grid',
      id: 'create-user',
      onsubmit: (ev) => {
        ev.preventDefault();
        act('Creating the user', async () => {
          const body = { username: username.value.trim(), password: password.value, role: role.value };
          if (email.value.trim()) body.email = email.value.trim();
          const { user } = await api('POST', '/api/users', body);
          createForm.reset();
          showNotice(`User ${user.username} created.`);
          go(`#/users/${user.id}`);
        });
      },
    },
    field('Username', username),
    field('Initial password', password),
    field('Email (optional)', email),
    field('Role', role),
    h('div', { class: 'form-actions' }, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create user')),
  );
  append(main, header('Users'), card(null, users.toolbar, users.list), card('Create a user', createForm));
  users.load();
}

async function renderUser(main, id) {
  let user;
  try {
    ({ user } = await api('GET', `/api/users/${encodeURIComponent(id)}`));
  } catch (err) {
    failed(main, err);
    return;
  }
  const reload = () => route();
  const secret = h('div', { id: 'temporary-password-area' });
  const roleSelect = select(ROLES, user.role, { id: 'user-role' });
  const post = (what, path, done) =>
    act(what, async () => {
      const answer = await api('POST', `/api/users/${user.id}/${path}`);
      state.notice = { text: done(answer), kind: 'ok' };
      reload();
    });
  append(
    main,
    header(user.username, h('a', { href: '#/users', class: 'btn btn-ghost' }, '← All users')),
    card(
      'Account',
      h(
        'dl',
        { class: 'details', id: 'user-details' },
        h('dt', {}, 'Username'),
        h('dd', { id: 'user-name' }, user.username),
        h('dt', {}, 'User id'),
        h('dd', {}, h('code', {}, user.id)),
        h('dt', {}, 'Email'),
        h('dd', {}, user.email || '—'),
        h('dt', {}, 'Status'),
        h('dd', { id: 'user-status' }, userStatus(user)),
        h('dt', {}, 'Created'),
        h('dd', {}, fmtTime(user.createdAt)),
        h('dt', {}, 'Last sign-in'),
        h('dd', {}, fmtTime(user.lastLoginAt)),
      ),
      h(
        'form',
        {
          class: 'toolbar',
          onsubmit: (ev) => {
            ev.preventDefault();
            act('Changing the role', async () => {
              await api('PUT', `/api/users/${user.id}`, { role: roleSelect.value });
              state.notice = { text: `Role changed to ${roleSelect.value}.`, kind: 'ok' };
              reload();
            });
          },
        },
        field('Role', roleSelect),
        h('button', { type: 'submit', class: 'btn' }, 'Save role'),
      ),
      h(
        'div',
        { class: 'button-row' },
        user.locked
          ? h('button', { type: 'button', class: 'btn', id: 'unlock-user', onclick: () => post('Unlocking', 'unlock', () => `${user.username} unlocked.`) }, 'Unlock')
          : h('button', { type: 'button', class: 'btn btn-warn', id: 'lock-user', onclick: () => post('Locking', 'lock', () => `${user.username} locked: sign-ins are refused until unlocked.`) }, 'Lock'),
        user.disabled
          ? h('button', { type: 'button', class: 'btn', id: 'enable-user', onclick: () => post('Enabling', 'enable', () => `${user.username} enabled.`) }, 'Enable')
          : h('button', { type: 'button', class: 'btn btn-danger', id: 'disable-user', onclick: () => post('Disabling', 'disable', () => `${user.username} disabled.`) }, 'Disable'),
        h(
          'button',
          {
            type: 'button',
            class: 'btn',
            id: 'reset-password',
            onclick: () =>
              act('Resetting the password', async () => {
                const answer = await api('POST', `/api/users/${user.id}/reset-password`);
                // Shown once: kept only until the page is drawn again.
                state.secret = { userId: user.id, password: answer.temporaryPassword };
                reload();
              }),
          },
          'Reset password',
        ),
        h(
          'button',
          {
            type: 'button',
            class: 'btn btn-danger',
            id: 'terminate-sessions',
            onclick: () => post('Terminating sessions', 'terminate-sessions', (a) => `${a.revoked} session(s) of ${user.username} terminated; their sockets were closed.`),
          },
          'Terminate sessions',
        ),
      ),
      secret,
    ),
  );
  if (state.secret && state.secret.userId === user.id) {
    const password = state.secret.password;
    state.secret = null;
    append(
      secret,
      h(
        'div',
        { class: 'alert alert-info', role: 'status' },
        h('strong', {}, 'Temporary password (shown once): '),
        h('code', { id: 'temporary-password', class: 'secret' }, password),
        h('div', { class: 'hint' }, `Give it to ${user.username} through a trusted channel. They must change it at their next sign-in; their sessions have ended.`),
      ),
    );
  }
  const sessionsBox = h('div', { id: 'user-sessions' }, h('p', { class: 'muted' }, 'Loading…'));
  const eventsBox = h('div', { id: 'user-events' }, h('p', { class: 'muted' }, 'Loading…'));
  append(main, card('Sessions', sessionsBox), card('Recent security events', eventsBox));
  try {
    const { sessions } = await api('GET', `/api/users/${user.id}/sessions`);
    clear(sessionsBox);
    append(
      sessionsBox,
      table(
        ['Session', 'Started', 'Expires', 'Address', 'Client'],
        sessions.map((x) =>
          h('tr', {}, h('td', {}, h('code', {}, x.id.slice(0, 8)), x.current ? badge('this console', 'info') : null), h('td', {}, fmtTime(x.createdAt)), h('td', {}, fmtTime(x.expiresAt)), h('td', {}, x.ip || '—'), h('td', { class: 'truncate' }, x.userAgent || '—')),
        ),
        'No live sessions.',
      ),
    );
  } catch (err) {
    clear(sessionsBox);
    append(sessionsBox, h('p', { class: 'muted' }, `Could not load: ${err.message}`));
  }
  try {
    const { entries } = await api('GET', `/api/users/${user.id}/security-events?limit=20`);
    clear(eventsBox);
    append(eventsBox, auditTable(entries, null, 'No security events.'));
  } catch (err) {
    clear(eventsBox);
    append(eventsBox, h('p', { class: 'muted' }, `Could not load: ${err.message}`));
  }
}

// ---- channels -----------------------------------------------------------------

function channelBadges(c) {
  return [badge(c.kind, 'neutral'), c.archived ? badge('archived', 'warn') : null];
}

function renderChannels(main, id) {
  if (id) return renderChannel(main, id);
  const channels = pagedSearch({
    main,
    what: 'channel',
    searchId: 'channel-search',
    listId: 'channel-list',
    placeholder: 'channel name',
    fetchPage: async (search, offset) => {
      const page = await api('GET', `/api/channels${qs({ all: 'true', search, limit: PAGE, offset })}`);
      return { items: page.channels, hasMore: page.hasMore };
    },
    columns: ['Name', 'Kind', 'Description', 'Created'],
    row: (c) =>
      h(
        'tr',
        { class: 'clickable', onclick: () => go(`#/channels/${c.id}`) },
        h('td', {}, h('a', { href: `#/channels/${c.id}`, class: 'channel-link' }, c.name)),
        h('td', {}, channelBadges(c)),
        h('td', { class: 'truncate' }, c.description || '—'),
        h('td', {}, fmtTime(c.createdAt)),
      ),
  });
  const name = h('input', { name: 'name', required: true, autocomplete: 'off' });
  const description = h('input', { name: 'description', autocomplete: 'off' });
  const kind = select(
    [
      ['public', 'Public'],
      ['private', 'Private'],
      ['broadcast', 'Broadcast'],
    ],
    'public',
    { name: 'kind' },
  );
  const createForm = h(
    'form',
    {
      class: 'form-grid',
      id: 'create-channel',
      onsubmit: (ev) => {
        ev.preventDefault();
        act('Creating the channel', async () => {
          const body = { name: name.value, kind: kind.value };
          if (description.value.trim()) body.description = description.value;
          const { channel } = await api('POST', '/api/channels', body);
          state.notice = { text: `Channel ${channel.name} created.`, kind: 'ok' };
          go(`#/channels/${channel.id}`);
        });
      },
    },
    field('Name', name),
    field('Description (optional)', description),
    field('Kind', kind),
    h('div', { class: 'form-actions' }, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create channel')),
  );
  append(main, header('Channels'), card(null, channels.toolbar, channels.list), card('Create a channel', createForm));
  channels.load();
}

async function renderChannel(main, id) {
  let channel;
  try {
    ({ channel } = await api('GET', `/api/channels/${encodeURIComponent(id)}`));
  } catch (err) {
    failed(main, err);
    return;
  }
  const reload = () => route();
  const name = h('input', { name: 'name', value: channel.name, required: true, autocomplete: 'off' });
  const description = h('textarea', { name: 'description', rows: 2 });
  description.value = channel.description || '';
  const confirmBox = h('div', { id: 'delete-confirm' });
  append(
    main,
    header(channel.name, h('a', { href: '#/channels', class: 'btn btn-ghost' }, '← All channels')),
    card(
      'Channel',
      h('dl', { class: 'details' }, h('dt', {}, 'Id'), h('dd', {}, h('code', {}, channel.id)), h('dt', {}, 'Kind'), h('dd', { id: 'channel-badges' }, channelBadges(channel)), h('dt', {}, 'Created'), h('dd', {}, fmtTime(channel.createdAt)), h('dt', {}, 'Last seq'), h('dd', {}, fmtNumber(channel.lastSeq))),
      h(
        'form',
        {
          class: 'form-grid',
          id: 'edit-channel',
          onsubmit: (ev) => {
            ev.preventDefault();
            act('Saving the channel', async () => {
              await api('PUT', `/api/channels/${channel.id}`, { name: name.value, description: description.value.trim() ? description.value : null });
              state.notice = { text: 'Channel saved.', kind: 'ok' };
              reload();
            });
          },
        },
        field('Name', name),
        field('Description', description),
        h('div', { class: 'form-actions' }, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Save')),
      ),
      h(
        'div',
        { class: 'button-row' },
        channel.archived
          ? h(
              'button',
              {
                type: 'button',
                class: 'btn',
                id: 'unarchive-channel',
                onclick: () =>
                  act('Unarchiving', async () => {
                    await api('POST', `/api/channels/${channel.id}/unarchive`);
                    state.notice = { text: 'Channel unarchived: members may post again.', kind: 'ok' };
                    reload();
                  }),
              },
              'Unarchive',
            )
          : h(
              'button',
              {
                type: 'button',
                class: 'btn btn-warn',
                id: 'archive-channel',
                onclick: () =>
                  act('Archiving', async () => {
                    await api('POST', `/api/channels/${channel.id}/archive`);
                    state.notice = { text: 'Channel archived: no new messages; history is kept.', kind: 'ok' };
                    reload();
                  }),
              },
              'Archive',
            ),
        h(
          'button',
          {
            type: 'button',
            class: 'btn btn-danger',
            id: 'delete-channel',
            onclick: () => {
              clear(confirmBox);
              append(
                confirmBox,
                h(
                  'div',
                  { class: 'alert alert-error confirm' },
                  `Delete ${channel.name} and all of its messages? This cannot be undone.`,
                  h(
                    'div',
                    { class: 'button-row' },
                    h(
                      'button',
                      {
                        type: 'button',
                        class: 'btn btn-danger',
                        id: 'confirm-delete-channel',
                        onclick: () =>
                          act('Deleting the channel', async () => {
                            await api('DELETE', `/api/channels/${channel.id}`);
                            state.notice = { text: `Channel ${channel.name} deleted.`, kind: 'ok' };
                            go('#/channels');
                          }),
                      },
                      'Delete permanently',
                    ),
                    h('button', { type: 'button', class: 'btn', onclick: () => clear(confirmBox) }, 'Cancel'),
                  ),
                ),
              );
            },
          },
          'Delete…',
        ),
      ),
      confirmBox,
    ),
  );
  const membersBox = h('div', { id: 'channel-members' });
  const who = h('input', { id: 'member-who', autocomplete: 'off', required: true, placeholder: 'alice or a user id' });
  const memberRole = select(CHANNEL_ROLES, 'member', { id: 'member-role' });
  const addForm = h(
    'form',
    {
      class: 'toolbar',
      id: 'add-member',
      onsubmit: (ev) => {
        ev.preventDefault();
        act('Adding the member', async () => {
          const text = who.value.trim();
          let userId = text;
          if (!UUID.test(text)) {
            const { users } = await api('GET', `/api/users${qs({ search: text, limit: 100 })}`);
            const match = users.find((u) => u.username.toLowerCase() === text.toLowerCase());
            if (!match) throw new ApiError(404, 'not_found', `no user is called “${text}”`);
            userId = match.id;
          }
          await api('POST', `/api/channels/${channel.id}/members`, { userId, role: memberRole.value });
          who.value = '';
          showNotice('Member added.');
          loadMembers();
        });
      },
    },
    field('Username or user id', who),
    field('Role', memberRole),
    h('button', { type: 'submit', class: 'btn btn-primary' }, 'Add member'),
  );
  const loadMembers = async () => {
    try {
      const { members } = await api('GET', `/api/channels/${channel.id}/members`);
      clear(membersBox);
      append(
        membersBox,
        table(
          ['Member', 'Role', 'Joined', ''],
          members.map((m) => {
            const roleSel = select(CHANNEL_ROLES, m.role, { 'aria-label': `Channel role of ${m.username || m.userId}` });
            roleSel.addEventListener('change', () =>
              act('Changing the member role', async () => {
                await api('PUT', `/api/channels/${channel.id}/members/${m.userId}`, { role: roleSel.value });
                showNotice(`${m.username || m.userId} is now ${roleSel.value}.`);
              }),
            );
            return h(
              'tr',
              { 'data-member': m.username || m.userId },
              h('td', {}, m.username || h('code', {}, m.userId)),
              h('td', {}, roleSel),
              h('td', {}, fmtTime(m.joinedAt)),
              h(
                'td',
                { class: 'actions' },
                h(
                  'button',
                  {
                    type: 'button',
                    class: 'btn btn-small',
                    onclick: () =>
                      act('Removing the member', async () => {
                        await api('DELETE', `/api/channels/${channel.id}/members/${m.userId}`);
                        showNotice(`${m.username || m.userId} removed.`);
                        loadMembers();
                      }),
                  },
                  'Remove',
                ),
              ),
            );
          }),
          'No members.',
        ),
      );
    } catch (err) {
      clear(membersBox);
      append(membersBox, h('p', { class: 'muted' }, `Could not load the members: ${err.message}`));
    }
  };
  const messagesBox = h('div', { id: 'channel-messages' });
  const loadMessages = async () => {
    try {
      const { messages } = await api('GET', `/api/channels/${channel.id}/messages?limit=20`);
      clear(messagesBox);
      append(
        messagesBox,
        h('p', { class: 'hint' }, 'Reading these messages is recorded in the audit log as a history read.'),
        table(
          ['Seq', 'Sender', 'Message', 'Sent', ''],
          messages
            .slice()
            .reverse()
            .map((m) => messageRow(m, loadMessages)),
          'No messages.',
        ),
      );
    } catch (err) {
      clear(messagesBox);
      append(messagesBox, h('p', { class: 'muted' }, `Could not load the messages: ${err.message}`));
    }
  };
  append(main, card('Members', addForm, membersBox), card('Recent messages', messagesBox));
  loadMembers();
  loadMessages();
}

/** A message of a channel's recent list, with a flag form. */
function messageRow(m, reload) {
  const reason = h('input', { 'aria-label': `Flag reason for message ${m.seq}`, placeholder: 'reason', class: 'input-small' });
  const flagForm = h(
    'form',
    {
      class: 'inline-form',
      onsubmit: (ev) => {
        ev.preventDefault();
        act('Flagging the message', async () => {
          await api('POST', `/api/messages/${m.id}/flag`, { reason: reason.value });
          showNotice(`Message ${m.seq} flagged.`);
          reload();
        });
      },
    },
    reason,
    h('button', { type: 'submit', class: 'btn btn-small btn-warn' }, 'Flag'),
  );
  return h(
    'tr',
    { 'data-message': m.id },
    h('td', {}, String(m.seq)),
    h('td', {}, m.sender || m.senderId),
    h('td', { class: 'message-text' }, m.text, m.flagged ? [' ', badge(`flagged: ${m.flagReason || ''}`, 'warn')] : null),
    h('td', {}, fmtTime(m.timestamp)),
    h('td', { class: 'actions' }, m.flagged ? null : flagForm),
  );
}

// ---- moderation ---------------------------------------------------------------

function renderModeration(main) {
  let offset = 0;
  const queue = h('div', { id: 'flag-queue' });
  const load = async () => {
    try {
      const page = await api('GET', `/api/moderation/flags${qs({ limit: PAGE, offset })}`);
      clear(queue);
      append(
        queue,
        h('p', { class: 'hint' }, 'Reading flagged messages here is recorded in the audit log as a history read.'),
        table(
          ['Channel', 'Sender', 'Message', 'Flag', 'Flagged', 'Actions'],
          page.messages.map((m) => flagRow(m, load)),
          'No flagged messages. The queue is clear.',
        ),
        pager(
          offset,
          page.hasMore,
          (o) => {
            offset = o;
            load();
          },
          (page.users || page.channels || page.messages || []).length,
        ),
      );
    } catch (err) {
      failed(main, err);
    }
  };
  const messageId = h('input', { id: 'flag-message-id', required: true, autocomplete: 'off', placeholder: 'message id' });
  const reason = h('input', { id: 'flag-reason', autocomplete: 'off' });
  const flagForm = h(
    'form',
    {
      class: 'toolbar',
      id: 'flag-by-id',
      onsubmit: (ev) => {
        ev.preventDefault();
        act('Flagging the message', async () => {
          await api('POST', `/api/messages/${encodeURIComponent(messageId.value.trim())}/flag`, { reason: reason.value });
          flagForm.reset();
          showNotice('Message flagged.');
          load();
        });
      },
    },
    field('Message id', messageId),
    field('Reason', reason),
    h('button', { type: 'submit', class: 'btn btn-warn' }, 'Flag message'),
  );
  append(main, header('Moderation'), card('Flagged messages', queue), card('Flag a message by id', h('p', { class: 'hint' }, 'A channel’s page lists its recent messages with a Flag button each.'), flagForm));
  load();
}

// ---- break-glass --------------------------------------------------------------

function renderBreakGlass(main) {
  let status = 'unreviewed';
  const queue = h('div', { id: 'break-glass-queue' });
  const load = async () => {
    try {
      const page = await api('GET', `/api/break-glass${qs({ status })}`);
      clear(queue);
      append(
        queue,
        h('p', { class: 'hint' }, 'Reading this list opens the reasons; it is recorded in the audit log (break_glass.queue_read). A grant stays here until reviewed, after it ended too.'),
        table(
          ['Channel', 'User', 'Reason', 'Granted', 'Expires', 'State', 'Review'],
          page.grants.map((g) => breakGlassRow(g, load)),
          status === 'unreviewed' ? 'No break-glass access waits for review.' : 'No break-glass access yet.',
        ),
      );
    } catch (err) {
      failed(main, err);
    }
  };
  const which = h(
    'select',
    {
      id: 'break-glass-status',
      onchange: () => {
        status = which.value;
        load();
      },
    },
    h('option', { value: 'unreviewed' }, 'Waiting for review'),
    h('option', { value: 'all' }, 'Every grant'),
  );
  const userId = h('input', { id: 'break-glass-user', required: true, autocomplete: 'off', placeholder: 'user id' });
  const allowed = h('select', { id: 'break-glass-allowed' }, h('option', { value: 'true' }, 'may break the glass'), h('option', { value: 'false' }, 'may not'));
  const rightForm = h(
    'form',
    {
      class: 'toolbar',
      id: 'break-glass-right',
      onsubmit: (ev) => {
        ev.preventDefault();
        act('Setting the break-glass right', async () => {
          const res = await api('PUT', `/api/users/${encodeURIComponent(userId.value.trim())}/break-glass`, { allowed: allowed.value === 'true' });
          rightForm.reset();
          showNotice(res.allowed ? 'The user may now break the glass.' : 'The user may no longer break the glass.');
        });
      },
    },
    field('User id', userId),
    field('Right', allowed),
    h('button', { type: 'submit', class: 'btn' }, 'Save'),
  );
  append(
    main,
    header('Break-glass', field('Show', which)),
    card('Emergency access', queue),
    card('Who may break the glass', h('p', { class: 'hint' }, 'Clinicians need this right (patients never); admins have it by role.'), rightForm),
  );
  load();
}

function breakGlassRow(g, reload) {
  const note = h('input', { 'aria-label': `Review note for grant ${g.id}`, placeholder: 'review note', class: 'input-small review-note', required: true });
  const state = g.active ? 'active' : g.endReason ? `ended (${g.endReason.replace(/_/g, ' ')})` : 'lapsed';
  const review = g.reviewedAt
    ? h('span', {}, `${fmtTime(g.reviewedAt)}: ${g.reviewNote || ''}`)
    : h(
        'form',
        {
          class: 'inline-form',
          onsubmit: (ev) => {
            ev.preventDefault();
            act('Reviewing', async () => {
              await api('POST', `/api/break-glass/${g.id}/review`, { note: note.value });
              showNotice('Reviewed; it has left the queue.');
              reload();
            });
          },
        },
        note,
        h('button', { type: 'submit', class: 'btn btn-small' }, 'Review'),
      );
  const revoke = g.active
    ? h(
        'button',
        {
          type: 'button',
          class: 'btn btn-small btn-warn',
          onclick: () =>
            act('Revoking', async () => {
              await api('DELETE', `/api/break-glass/${g.id}`);
              showNotice('Access revoked: the user has left the channel.');
              reload();
            }),
        },
        'Revoke',
      )
    : null;
  return h(
    'tr',
    { 'data-grant': g.id },
    h('td', {}, h('a', { href: `#/channels/${g.channelId}` }, g.channelId)),
    h('td', {}, h('a', { href: `#/users/${g.userId}` }, g.userId)),
    h('td', { class: 'message-text' }, g.reason || ''),
    h('td', {}, fmtTime(g.grantedAt)),
    h('td', {}, fmtTime(g.expiresAt)),
    h('td', {}, state, revoke ? ' ' : null, revoke),
    h('td', { class: 'actions' }, review),
  );
}

function flagRow(m, reload) {
  const reason = h('input', { 'aria-label': `Deletion reason for message ${m.id}`, placeholder: 'reason for deletion', class: 'input-small delete-reason', required: true });
  return h(
    'tr',
    { 'data-message': m.id },
    h('td', {}, h('a', { href: `#/channels/${m.channelId}` }, m.channelName || m.channelId)),
    h('td', {}, m.sender || m.senderId),
    h('td', { class: 'message-text' }, m.text),
    h('td', {}, m.flagReason || '—'),
    h('td', {}, fmtTime(m.flaggedAt)),
    h(
      'td',
      { class: 'actions' },
      h(
        'button',
        {
          type: 'button',
          class: 'btn btn-small',
          onclick: () =>
            act('Unflagging', async () => {
              await api('DELETE', `/api/messages/${m.id}/flag`);
              showNotice('Flag removed.');
              reload();
            }),
        },
        'Unflag',
      ),
      h(
        'form',
        {
          class: 'inline-form',
          onsubmit: (ev) => {
            ev.preventDefault();
            act('Deleting the message', async () => {
              await api('DELETE', `/api/messages/${m.id}`, { reason: reason.value });
              showNotice('Message deleted for everyone; the reason is in the audit log.');
              reload();
            });
          },
        },
        reason,
        h('button', { type: 'submit', class: 'btn btn-small btn-danger' }, 'Delete'),
      ),
    ),
  );
}

// ---- audit --------------------------------------------------------------------

function auditTable(entries, onPick, empty = 'No entries.') {
  return table(
    ['Seq', 'Time', 'Actor', 'Action', 'Address'],
    entries.map((e) =>
      h(
        'tr',
        { class: onPick ? 'clickable' : null, 'data-seq': e.seq, onclick: onPick ? () => onPick(e) : null },
        h('td', {}, String(e.seq)),
        h('td', {}, fmtTime(e.timestamp)),
        h('td', {}, e.actorId ? h('code', {}, e.actorId.slice(0, 8)) : '—'),
        h('td', {}, h('span', { class: 'action' }, e.action)),
        h('td', {}, e.ip || '—'),
      ),
    ),
    empty,
  );
}

function localToMs(value) {
  if (!value) return null;
  const t = new Date(value).getTime();
  return Number.isNaN(t) ? null : t;
}

function renderAudit(main) {
  const userId = h('input', { id: 'audit-user', autocomplete: 'off', placeholder: 'user id' });
  const action = h('input', { id: 'audit-action', autocomplete: 'off', placeholder: 'e.g. auth.login' });
  const since = h('input', { id: 'audit-since', type: 'datetime-local' });
  const until = h('input', { id: 'audit-until', type: 'datetime-local' });
  const after = h('input', { id: 'audit-after', type: 'number', min: 0 });
  const before = h('input', { id: 'audit-before', type: 'number', min: 1 });
  const list = h('div', { id: 'audit-list' });
  const detail = h('div', { id: 'audit-detail' });
  const verifyBox = h('div', { id: 'verify-result', 'aria-live': 'polite' });
  let pageBefore = null;
  const history = [];
  const filters = () => ({
    userId: userId.value.trim(),
    action: action.value.trim(),
    since: localToMs(since.value),
    until: localToMs(until.value),
    after: after.value,
    limit: PAGE,
  });
  const load = async () => {
    try {
      const f = filters();
      const page = await api('GET', `/api/audit${qs({ ...f, before: pageBefore ?? before.value })}`);
      clear(list);
      append(
        list,
        auditTable(page.entries, showEntry, 'No entry matches these filters.'),
        h(
          'div',
          { class: 'pager' },
          h(
            'button',
            {
              type: 'button',
              class: 'btn',
              disabled: !history.length,
              onclick: () => {
                pageBefore = history.pop() ?? null;
                load();
              },
            },
            '← Newer',
          ),
          h(
            'button',
            {
              type: 'button',
              class: 'btn',
              id: 'audit-older',
              disabled: page.nextBefore === null || page.nextBefore === undefined,
              onclick: () => {
                history.push(pageBefore);
                pageBefore = page.nextBefore;
                load();
              },
            },
            'Older →',
          ),
        ),
      );
    } catch (err) {
      if (err.status === 400) {
        clear(list);
        append(list, h('div', { class: 'alert alert-error', role: 'alert' }, `${err.message}${err.field ? ` (${err.field})` : ''}`));
      } else failed(main, err);
    }
  };
  const showEntry = async (e) => {
    clear(detail);
    let entry = e;
    try {
      ({ entry } = await api('GET', `/api/audit/${e.seq}`));
    } catch (err) {
      if (err.status === 401) return;
    }
    append(
      detail,
      card(
        `Entry ${entry.seq}`,
        h(
          'dl',
          { class: 'details' },
          h('dt', {}, 'Action'),
          h('dd', {}, entry.action),
          h('dt', {}, 'Time'),
          h('dd', {}, fmtTime(entry.timestamp)),
          h('dt', {}, 'Actor'),
          h('dd', {}, entry.actorId ? h('a', { href: `#/users/${entry.actorId}` }, entry.actorId) : '—'),
          h('dt', {}, 'Address'),
          h('dd', {}, entry.ip || '—'),
          h('dt', {}, 'Client'),
          h('dd', {}, entry.userAgent || '—'),
          h('dt', {}, 'Hash'),
          h('dd', {}, h('code', { class: 'hash' }, entry.hash)),
          h('dt', {}, 'Previous hash'),
          h('dd', {}, h('code', { class: 'hash' }, entry.prevHash)),
        ),
        h('h3', {}, 'Details'),
        h('pre', { class: 'json', id: 'audit-entry-details' }, JSON.stringify(entry.details, null, 2)),
      ),
    );
    detail.scrollIntoView({ block: 'nearest' });
  };
  const verify = () =>
    act('Verifying the chain', async () => {
      clear(verifyBox);
      append(verifyBox, h('span', { class: 'muted' }, 'Verifying…'));
      const r = await api('GET', '/api/audit/verify');
      clear(verifyBox);
      append(
        verifyBox,
        r.ok
          ? h('div', { class: 'alert alert-ok verify-ok', role: 'status' }, badge('OK', 'ok'), ` The chain is intact: ${fmtNumber(r.entries)} entries checked.`)
          : h('div', { class: 'alert alert-error verify-bad', role: 'alert' }, badge('TAMPERED', 'danger'), ` The chain is broken: ${fmtNumber(r.entries)} entries read; first bad seq `, h('strong', { id: 'first-bad-seq' }, String(r.firstBadSeq)), '.'),
        h('div', { class: 'hint' }, 'Head hash ', h('code', { class: 'hash' }, r.headHash || '—')),
      );
    });
  const checkpointsBox = h('div', { id: 'checkpoints' });
  const loadCheckpoints = async () => {
    try {
      const { checkpoints } = await api('GET', '/api/audit/checkpoints');
      clear(checkpointsBox);
      append(
        checkpointsBox,
        table(
          ['Seq', 'Time', 'Head hash', 'Key', 'Signature'],
          checkpoints.map((c) =>
            h(
              'tr',
              {},
              h('td', {}, String(c.seq)),
              h('td', {}, fmtTime(c.time ?? c.createdAt)),
              h('td', {}, h('code', { class: 'hash' }, c.headHash ?? c.hash)),
              h('td', {}, c.keyId || '—'),
              h('td', {}, h('code', { class: 'hash' }, c.signature)),
            ),
          ),
          'No signed checkpoint yet.',
        ),
      );
    } catch (err) {
      clear(checkpointsBox);
      if (err.status !== 401) append(checkpointsBox, h('p', { class: 'muted' }, `Could not load the checkpoints: ${err.message}`));
    }
  };
  const filterForm = h(
    'form',
    {
      class: 'filters',
      id: 'audit-filters',
      onsubmit: (ev) => {
        ev.preventDefault();
        pageBefore = null;
        history.length = 0;
        clear(detail);
        load();
      },
    },
    field('User id', userId),
    field('Action', action),
    field('Since', since),
    field('Until', until),
    field('Seq after', after),
    field('Seq before', before),
    h(
      'div',
      { class: 'form-actions' },
      h('button', { type: 'submit', class: 'btn btn-primary' }, 'Apply filters'),
      h(
        'button',
        {
          type: 'button',
          class: 'btn btn-ghost',
          onclick: () => {
            filterForm.reset();
            pageBefore = null;
            history.length = 0;
            load();
          },
        },
        'Clear',
      ),
    ),
  );
  append(
    main,
    header('Audit log', h('button', { type: 'button', class: 'btn btn-primary', id: 'verify-chain', onclick: verify }, 'Verify chain')),
    verifyBox,
    card('Filters', filterForm),
    h('div', { class: 'split' }, card('Entries', list), detail),
    card('Signed checkpoints', checkpointsBox),
  );
  load();
  loadCheckpoints();
}

// ---- settings -----------------------------------------------------------------

function flatten(value, prefix = '', out = []) {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const key of Object.keys(value).sort()) flatten(value[key], prefix ? `${prefix}.${key}` : key, out);
  } else {
    out.push([prefix, value]);
  }
  return out;
}

const LIMITS = [
  ['sendPerMinute', 'WebSocket sends per user per minute', 1],
  ['restPer15Min', 'REST requests per user per 15 minutes (0: off)', 0],
  ['authPer15Min', 'Sign-in requests per address per 15 minutes (0: off)', 0],
  ['registerPerHour', 'Registrations per address per hour (0: off)', 0],
];

async function renderSettings(main) {
  let settings;
  try {
    settings = await api('GET', '/api/settings');
  } catch (err) {
    failed(main, err);
    return;
  }
  const inputs = {};
  const limitsForm = h(
    'form',
    {
      class: 'form-grid',
      id: 'rate-limits',
      onsubmit: (ev) => {
        ev.preventDefault();
        act('Saving the rate limits', async () => {
          const change = {};
          for (const [key] of LIMITS) {
            const v = Number(inputs[key].value);
            if (v !== settings.rateLimits[key]) change[key] = v;
          }
          const { rateLimits } = await api('PUT', '/api/settings/rate-limits', change);
          settings.rateLimits = rateLimits;
          for (const [key] of LIMITS) inputs[key].value = String(rateLimits[key]);
          showNotice(Object.keys(change).length ? `Rate limits saved and in force: ${Object.keys(change).join(', ')}.` : 'Nothing changed.');
        });
      },
    },
    LIMITS.map(([key, label, min]) => {
      inputs[key] = h('input', { type: 'number', min, step: 1, name: key, id: `limit-${key}`, value: String(settings.rateLimits[key]), required: true });
      return field(label, inputs[key]);
    }),
    h('div', { class: 'form-actions' }, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Save rate limits')),
  );
  const rows = flatten(settings.config).map(([key, value]) =>
    h(
      'tr',
      {},
      h('td', {}, h('code', {}, key)),
      h('td', { class: value === '[redacted]' ? 'redacted' : null }, value === null || value === undefined ? '—' : typeof value === 'string' ? value : JSON.stringify(value)),
    ),
  );
  append(
    main,
    header('Settings'),
    card('Rate limits', h('p', { class: 'hint' }, 'Applied at once on this server, recorded in the audit log and kept across a restart.'), limitsForm),
    card('Effective configuration', h('p', { class: 'hint' }, 'Secrets are never shown.'), h('div', { id: 'config-table' }, table(['Key', 'Value'], rows))),
  );
}

// ---- start --------------------------------------------------------------------

async function start() {
  window.addEventListener('hashchange', route);
  try {
    state.session = await api('GET', '/admin/session');
    route();
  } catch (err) {
    if (err.status === 401) showSignIn();
    else showSignIn(`The console could not start: ${err.message}`);
  }
}

start();
