// The admin console end to end, in Debian's headless Chromium driven by
// playwright-core. Run by tests/admin_browser.rs (`cargo test --test
// admin_browser`), which starts the server, gives its address in
// ADMIN_E2E_BASE and the initial super admin in ADMIN_E2E_USERNAME/_PASSWORD,
// and answers this script's `TAMPER` line on stdout by changing one audit row
// in the database, then writing `done <seq>` to its stdin. Node 20 needs
// `--experimental-websocket` for the global WebSocket.
//
// The story: the super admin signs in; creates a user, locks them (their REST
// login is refused) and unlocks them; terminates a live user's sessions and
// the user's socket closes 4003; a channel named with markup gets a member
// who posts a message with markup; both show as text, nothing runs; the
// message is flagged from the channel page and deleted with a reason from the
// moderation queue; sendPerMinute is set to 2 in Settings and a third
// WebSocket send is refused rate_limited; the audit log is filtered by action
// and the chain verifies; after the tampering it reports the first bad seq;
// a state change without the CSRF token is refused; a moderator sees the 403
// page for #/users and is refused POST /api/users; an admin (their role must
// have a second factor) enrols one from the console's enrolment page and signs
// in again with a code; sign-out. Screenshots of
// every page go to ADMIN_E2E_SCREENSHOTS.

import { createHmac } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const BASE = process.env.ADMIN_E2E_BASE;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = process.env.ADMIN_E2E_SCREENSHOTS ?? path.resolve('../../target/admin-screenshots');
const ADMIN = { username: process.env.ADMIN_E2E_USERNAME ?? 'root', password: process.env.ADMIN_E2E_PASSWORD ?? '' };
const PASSWORD = 'correct-horse-battery-staple';
const XSS_MESSAGE = '<img src=x onerror=window.__xss=1>';
const XSS_CHANNEL = '<img src=x onerror=window.__xss=2>';
const STEP_MS = 20_000;

const started = Date.now();
const log = (...args) => console.log(`[admin e2e ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
let checks = 0;

class Failure extends Error {}
function check(ok, message) {
  if (!ok) throw new Failure(message);
  checks += 1;
}

/** Polls `probe` until it returns a truthy value; fails after `ms`. */
async function until(what, probe, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Failure(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---- REST and WebSocket from node ------------------------------------------

async function rest(method, urlPath, token, body) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(`${BASE}${urlPath}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = text;
  }
  return { status: r.status, body: json };
}

async function login(username, password = PASSWORD) {
  const r = await rest('POST', '/api/auth/login', undefined, { username, password });
  check(r.status === 200, `login of ${username}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

async function createUser(adminToken, username, role = 'user') {
  const r = await rest('POST', '/api/users', adminToken, { username, password: PASSWORD, role });
  check(r.status === 201, `create ${username}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.user;
}

/** RFC 6238 with the console's parameters: the code of 30-second `step` for a base32 secret. */
function totpCode(secret, step) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const bytes = [];
  for (const c of secret.replace(/=+$/, '').toUpperCase()) {
    value = ((value << 5) | alphabet.indexOf(c)) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bytes.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac('sha1', Buffer.from(bytes)).update(counter).digest();
  const at = mac[19] & 0xf;
  const n = ((mac[at] & 0x7f) << 24) | (mac[at + 1] << 16) | (mac[at + 2] << 8) | mac[at + 3];
  return String(n % 1_000_000).padStart(6, '0');
}

/** An authenticated JSON WebSocket: `request(frame)` resolves with the frame answering its ref. */
async function socket(token) {
  const ws = new WebSocket(`${BASE.replace(/^http/, 'ws')}/ws`);
  const frames = [];
  const waiters = new Map();
  let nextRef = 1;
  const closed = new Promise((resolve) => ws.addEventListener('close', (ev) => resolve({ code: ev.code, reason: ev.reason })));
  ws.addEventListener('message', (ev) => {
    const frame = JSON.parse(ev.data);
    frames.push(frame);
    if (frame.ref !== undefined && waiters.has(frame.ref)) {
      waiters.get(frame.ref)(frame);
      waiters.delete(frame.ref);
    }
  });
  await new Promise((resolve, reject) => {
    ws.addEventListener('open', resolve, { once: true });
    ws.addEventListener('error', () => reject(new Failure('the WebSocket did not open')), { once: true });
  });
  const request = (frame) =>
    new Promise((resolve, reject) => {
      const ref = nextRef++;
      const timer = setTimeout(() => reject(new Failure(`no answer to ${frame.type} (ref ${ref})`)), STEP_MS);
      waiters.set(ref, (answer) => {
        clearTimeout(timer);
        resolve(answer);
      });
      ws.send(JSON.stringify({ ...frame, ref }));
    });
  const auth = await request({ type: 'authenticate', token });
  check(auth.type === 'authentication_response' && auth.success, `WebSocket authentication: ${JSON.stringify(auth)}`);
  return { ws, frames, request, closed };
}

// ---- stdin: the Rust side's answers ----------------------------------------

const stdinLines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function nextStdinLine() {
  const { value, done } = await stdinLines.next();
  if (done) throw new Failure('stdin closed before the Rust side answered');
  return value;
}

// ---- the page --------------------------------------------------------------

let lastPage;

async function newPage(browser, who) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  lastPage = page;
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(`${who}: ${err}`));
  page.on('console', (msg) => {
    // Answers of 401/403/404 that the page expects are logged as failed loads.
    if (msg.type() === 'error' && !/Failed to load resource/.test(msg.text())) page.errors.push(`${who} console: ${msg.text()}`);
  });
  page.on('response', (response) => {
    const url = new URL(response.url());
    if (url.pathname.startsWith('/admin')) {
      const csp = response.headers()['content-security-policy'] ?? '';
      if (!csp.includes("script-src 'self'") || !csp.includes("frame-ancestors 'none'")) {
        page.errors.push(`${who}: ${url.pathname} answered without the console CSP: ${csp}`);
      }
    }
  });
  return page;
}

async function shot(page, name) {
  await page.waitForTimeout(150);
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
  log(`screenshot ${name}.png`);
}

async function signIn(page, username, password) {
  await page.goto(`${BASE}/admin`);
  await page.locator('#sign-in').waitFor();
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#whoami').waitFor();
  check((await page.locator('#whoami').textContent()) === username, `signed in as ${username}`);
}

async function nav(page, section) {
  await page.locator(`nav a[data-section="${section}"]`).click();
  await page.locator(`nav a[data-section="${section}"].active`).waitFor();
}

async function notice(page, includes) {
  const el = page.locator('#notice .alert');
  await until(`a notice containing “${includes}”`, async () => ((await el.textContent({ timeout: 500 })) ?? '').includes(includes));
  return el.textContent();
}

/** Fetch from inside the page (same-origin credentials: the console cookie). */
async function pageFetch(page, method, url, { csrf, body } = {}) {
  return page.evaluate(
    async ({ method, url, csrf, body }) => {
      const headers = { 'Content-Type': 'application/json' };
      if (csrf !== undefined) headers['X-CSRF-Token'] = csrf;
      const r = await fetch(url, { method, credentials: 'same-origin', headers, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await r.text();
      return { status: r.status, text };
    },
    { method, url, csrf, body },
  );
}

// ---- the story -------------------------------------------------------------

async function main() {
  check(Boolean(BASE), 'ADMIN_E2E_BASE names the server');
  mkdirSync(SHOTS, { recursive: true });
  log(`courier at ${BASE}; screenshots in ${SHOTS}`);

  const admin = await login(ADMIN.username, ADMIN.password);
  const live = await createUser(admin.token, 'live-user');
  const poster = await createUser(admin.token, 'poster');
  const sender = await createUser(admin.token, 'sender');
  await createUser(admin.token, 'moder', 'moderator');

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    log(`chromium ${browser.version()}`);
    const page = await newPage(browser, 'admin');

    // ---- sign-in
    await page.goto(`${BASE}/admin`);
    await page.locator('#sign-in').waitFor();
    const inline = await page.evaluate(() => [...document.scripts].filter((s) => !s.src).length);
    check(inline === 0, `the page has ${inline} inline scripts`);
    await page.getByLabel('Username').fill(ADMIN.username);
    await page.getByLabel('Password').fill('not-the-password');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('.signin .alert-error').waitFor();
    check((await page.locator('.signin .alert-error').textContent()).includes('Wrong username or password'), 'a wrong password is refused');
    await shot(page, '01-sign-in');
    await page.getByLabel('Password').fill(ADMIN.password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#whoami').waitFor();
    log('signed in as the super admin');

    // ---- overview: live figures
    await page.locator('nav a[data-section="overview"].active').waitFor();
    const sections = await page.locator('nav a[data-section]').evaluateAll((as) => as.map((a) => a.dataset.section));
    check(sections.join(',') === 'overview,users,channels,moderation,break-glass,audit,settings', `the super admin's nav: ${sections}`);
    await until('the overview charts to draw a line', async () => (await page.locator('svg.chart polyline').count()) >= 4, 15_000);
    check((await page.locator('#store-health').textContent()).includes('reachable'), 'the store badge');
    check((await page.locator('#audit-health').textContent()).includes('healthy'), 'the audit badge');
    await shot(page, '02-overview');
    log('overview: charts and health badges');

    // ---- users: create, lock, unlock
    await nav(page, 'users');
    await page.locator('#user-list table').waitFor();
    await shot(page, '03-users');
    const createForm = page.locator('#create-user');
    await createForm.getByLabel('Username').fill('nurse-jo');
    await createForm.getByLabel('Initial password').fill(PASSWORD);
    await createForm.getByLabel('Role').selectOption('user');
    await createForm.getByRole('button', { name: 'Create user' }).click();
    await until('the new user page', async () => (await page.locator('#user-name').textContent({ timeout: 500 })) === 'nurse-jo');
    const nurseId = page.url().split('#/users/')[1];
    check(/^[0-9a-f-]{36}$/.test(nurseId), `the user page's id: ${nurseId}`);
    await page.locator('#lock-user').click();
    await notice(page, 'locked');
    await page.locator('#unlock-user').waitFor();
    check((await page.locator('#user-status').textContent()).includes('locked'), 'the status shows locked');
    const refused = await rest('POST', '/api/auth/login', undefined, { username: 'nurse-jo', password: PASSWORD });
    check(refused.status === 401, `a locked user's login: ${refused.status}`);
    await page.locator('#unlock-user').click();
    await notice(page, 'unlocked');
    await page.locator('#lock-user').waitFor();
    await login('nurse-jo');
    log('a user created, locked (login refused) and unlocked (login works)');

    // ---- terminate a live user's sessions: their socket closes 4003
    const liveLogin = await login('live-user');
    const liveSocket = await socket(liveLogin.token);
    await page.goto(`${BASE}/admin#/users/${live.id}`);
    await until('the live user page', async () => (await page.locator('#user-name').textContent({ timeout: 500 })) === 'live-user');
    await until('the live session listed', async () => (await page.locator('#user-sessions tbody tr').count()) >= 1);
    await page.locator('#reset-password').click();
    await page.locator('#temporary-password').waitFor();
    const temporary = await page.locator('#temporary-password').textContent();
    check(temporary.length >= 8, 'a temporary password is shown');
    const closed = await Promise.race([liveSocket.closed, new Promise((r) => setTimeout(() => r(null), 10_000))]);
    check(closed && closed.code === 4003, `the live user's socket after the password reset: ${JSON.stringify(closed)}`);
    await shot(page, '04-user');
    // A fresh session and socket, ended by "Terminate sessions".
    const afterReset = await rest('POST', '/api/auth/login', undefined, { username: 'live-user', password: temporary });
    check(afterReset.status === 200, `login with the temporary password: ${afterReset.status}`);
    const fresh = await rest('POST', '/api/auth/change-password', afterReset.body.token, { currentPassword: temporary, newPassword: PASSWORD });
    check(fresh.status === 204, `change of the temporary password: ${fresh.status} ${JSON.stringify(fresh.body)}`);
    const liveAgain = await socket((await login('live-user')).token);
    await page.reload();
    await until('the live session listed again', async () => (await page.locator('#user-sessions tbody tr').count()) >= 1);
    await page.locator('#terminate-sessions').click();
    const terminated = await Promise.race([liveAgain.closed, new Promise((r) => setTimeout(() => r(null), 10_000))]);
    check(terminated && terminated.code === 4003, `the live user's socket after Terminate sessions: ${JSON.stringify(terminated)}`);
    await notice(page, 'terminated');
    log("a live user's sessions terminated from the console: socket closed 4003");

    // ---- a channel and a message with markup
    await nav(page, 'channels');
    await page.locator('#channel-list').waitFor();
    const channelForm = page.locator('#create-channel');
    await channelForm.getByLabel('Name').fill(XSS_CHANNEL);
    await channelForm.getByLabel('Description (optional)').fill('Markup in a name must stay text');
    await channelForm.getByLabel('Kind').selectOption('public');
    await channelForm.getByRole('button', { name: 'Create channel' }).click();
    await until('the channel page', async () => (await page.locator('h1').textContent({ timeout: 500 })) === XSS_CHANNEL);
    const channelId = page.url().split('#/channels/')[1];
    await page.locator('#member-who').fill('poster');
    await page.locator('#member-role').selectOption('member');
    await page.locator('#add-member').getByRole('button', { name: 'Add member' }).click();
    await page.locator('#channel-members tr[data-member="poster"]').waitFor();
    const posterToken = (await login('poster')).token;
    const posted = await rest('POST', '/api/messages', posterToken, { channelId, text: XSS_MESSAGE });
    check(posted.status === 201, `poster's message: ${posted.status} ${JSON.stringify(posted.body)}`);
    const messageId = posted.body.id;
    await page.reload();
    const row = page.locator(`#channel-messages tr[data-message="${messageId}"]`);
    await row.waitFor();
    check((await row.locator('td.message-text').textContent()) === XSS_MESSAGE, 'the message shows as text on the channel page');
    await row.getByRole('textbox').fill('markup in a clinical channel');
    await row.getByRole('button', { name: 'Flag' }).click();
    await notice(page, 'flagged');
    await until('the flag badge', async () => ((await row.locator('td.message-text').textContent({ timeout: 500 })) ?? '').includes('flagged'));
    await shot(page, '06-channel');
    // Archived: no new messages, history kept; then open again.
    await page.locator('#archive-channel').click();
    await notice(page, 'archived');
    check((await page.locator('#channel-badges').textContent()).includes('archived'), 'the archived badge');
    const archivedSend = await rest('POST', '/api/messages', posterToken, { channelId, text: 'into the archive' });
    check(archivedSend.status === 403, `a send to the archived channel: ${archivedSend.status} ${JSON.stringify(archivedSend.body)}`);
    check((await page.locator(`#channel-messages tr[data-message="${messageId}"]`).count()) === 1, 'the history stays readable');
    await page.locator('#unarchive-channel').click();
    await notice(page, 'unarchived');
    await nav(page, 'channels');
    const link = page.locator('#channel-list a.channel-link').filter({ hasText: 'onerror' });
    await link.waitFor();
    check((await link.textContent()) === XSS_CHANNEL, 'the channel name shows as text in the list');
    await shot(page, '05-channels');
    log('a channel and a message with markup, shown as text; the message flagged; the channel archived (sends refused) and unarchived');

    // ---- moderation: the queue, delete with a reason
    await nav(page, 'moderation');
    const flagged = page.locator(`#flag-queue tr[data-message="${messageId}"]`);
    await flagged.waitFor();
    check((await flagged.locator('td.message-text').textContent()) === XSS_MESSAGE, 'the flagged message shows as text');
    check((await flagged.locator('td').first().textContent()) === XSS_CHANNEL, 'its channel name shows as text');
    check((await page.locator('main img').count()) === 0, 'no img element in the page');
    await shot(page, '07-moderation');
    await flagged.locator('input.delete-reason').fill('unsafe markup');
    await flagged.getByRole('button', { name: 'Delete' }).click();
    await notice(page, 'deleted');
    await until('the message to leave the queue', async () => (await page.locator(`#flag-queue tr[data-message="${messageId}"]`).count()) === 0);
    const gone = await rest('GET', `/api/messages/${messageId}`, admin.token);
    check(gone.status === 404 || gone.body?.deleted === true || gone.body?.message?.deleted === true, `the deleted message: ${gone.status} ${JSON.stringify(gone.body)}`);
    check((await page.evaluate(() => window.__xss)) === undefined, 'no markup ran (window.__xss is undefined)');
    log('flagged message deleted with a reason from the queue');

    // ---- break-glass: an emergency access in the queue, reviewed from it
    const ward = await rest('POST', '/api/channels', posterToken, { name: 'ward-7', kind: 'private' });
    check(ward.status === 201, `a private channel: ${ward.status} ${JSON.stringify(ward.body)}`);
    const opened = await rest('POST', `/api/channels/${ward.body.channel.id}/break-glass`, admin.token, { reason: 'Code blue <b>bed 7</b>, need the notes' });
    check(opened.status === 201, `break-glass opened: ${opened.status} ${JSON.stringify(opened.body)}`);
    const grantId = opened.body.grant.id;
    await nav(page, 'break-glass');
    const grantRow = page.locator(`#break-glass-queue tr[data-grant="${grantId}"]`);
    await grantRow.waitFor();
    check((await grantRow.locator('td.message-text').textContent()) === 'Code blue <b>bed 7</b>, need the notes', 'the reason shows, as text');
    await shot(page, '07b-break-glass');
    await grantRow.locator('input.review-note').fill('justified');
    await grantRow.getByRole('button', { name: 'Review' }).click();
    await notice(page, 'Reviewed');
    await until('the grant to leave the queue', async () => (await page.locator(`#break-glass-queue tr[data-grant="${grantId}"]`).count()) === 0);
    const reviewed = await rest('GET', '/api/break-glass?status=all', admin.token);
    check(reviewed.body.grants.some((g) => g.id === grantId && g.reviewNote === 'justified'), `the review is stored: ${JSON.stringify(reviewed.body)}`);
    log('a break-glass access listed with its reason and reviewed from the queue');

    // ---- settings: sendPerMinute 2 is enforced at once
    await nav(page, 'settings');
    await page.locator('#config-table table').waitFor();
    const redacted = await page.locator('#config-table td.redacted').count();
    check(redacted >= 1, `secrets are redacted (${redacted} cells)`);
    check(!(await page.locator('#config-table').textContent()).includes('courier-fault-tests-jwt-secret'), 'the JWT secret is not shown');
    // Before the change: three quick sends are all accepted.
    const senderSocket = await socket((await login('sender')).token);
    const joined = await senderSocket.request({ type: 'join_channel', channelId });
    check(joined.type === 'ack', `sender joins: ${JSON.stringify(joined)}`);
    const before = [];
    for (let i = 1; i <= 3; i += 1) before.push(await senderSocket.request({ type: 'send_message', channelId, text: `before ${i}` }));
    check(before.every((a) => a.type === 'ack'), `three sends before the change: ${JSON.stringify(before)}`);
    await page.locator('#limit-sendPerMinute').fill('2');
    await page.getByRole('button', { name: 'Save rate limits' }).click();
    await notice(page, 'sendPerMinute');
    await shot(page, '08-settings');
    // After it, on the same socket: the first is accepted, the third refused.
    // (The limiter's burst is a sixth of the rate, at least 1: with 2 per
    // minute the second send is already refused.)
    const answers = [];
    for (let i = 1; i <= 3; i += 1) answers.push(await senderSocket.request({ type: 'send_message', channelId, text: `after ${i}` }));
    check(answers[0].type === 'ack', `the first send after the change: ${JSON.stringify(answers[0])}`);
    check(answers[2].type === 'error' && answers[2].code === 'rate_limited', `the third send after the change: ${JSON.stringify(answers[2])}`);
    senderSocket.ws.close();
    log('sendPerMinute 2 set in Settings: the third WebSocket send is rate_limited');

    // ---- audit: filter, details, verify
    await nav(page, 'audit');
    await page.locator('#audit-list table').waitFor();
    await page.locator('#audit-action').fill('user.lock');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    await until('only user.lock entries', async () => {
      const actions = await page.locator('#audit-list tbody tr td:nth-child(4)').allTextContents();
      return actions.length >= 1 && actions.every((a) => a === 'user.lock');
    });
    await page.locator('#audit-list tbody tr').first().click();
    await page.locator('#audit-entry-details').waitFor();
    check((await page.locator('#audit-entry-details').textContent()).includes(nurseId), "the lock entry's details name the user");
    await page.locator('#checkpoints').waitFor();
    await page.locator('#verify-chain').click();
    await page.locator('#verify-result .verify-ok').waitFor();
    await shot(page, '09-audit');
    log('audit filtered by action, an entry opened, the chain verified ok');

    // ---- tampering, done by the Rust side
    console.log('TAMPER');
    const answer = await nextStdinLine();
    const badSeq = answer.trim().split(/\s+/)[1];
    check(answer.startsWith('done') && /^\d+$/.test(badSeq), `the Rust side's answer: ${answer}`);
    await page.locator('#verify-chain').click();
    await page.locator('#verify-result .verify-bad').waitFor();
    const shown = await page.locator('#first-bad-seq').textContent();
    check(shown === badSeq, `verify reports first bad seq ${shown}, the row changed was ${badSeq}`);
    await shot(page, '10-audit-tampered');
    log(`after tampering, verify reports the first bad seq ${shown}`);

    // ---- CSRF: the cookie alone changes nothing
    const noToken = await pageFetch(page, 'POST', '/api/users', { body: { username: 'csrf-victim', password: PASSWORD } });
    check(noToken.status === 403 && noToken.text.includes('CSRF'), `POST without the CSRF token: ${noToken.status} ${noToken.text}`);
    const wrongToken = await pageFetch(page, 'POST', '/api/users', { csrf: 'x'.repeat(64), body: { username: 'csrf-victim', password: PASSWORD } });
    check(wrongToken.status === 403, `POST with a wrong CSRF token: ${wrongToken.status}`);
    const noTokenOut = await pageFetch(page, 'DELETE', '/admin/session');
    check(noTokenOut.status === 403, `sign-out without the CSRF token: ${noTokenOut.status}`);
    log('state changes without the CSRF token are refused');

    // ---- a moderator: a temporary password to change first, then no user management
    const moderId = (await rest('GET', '/api/users?search=moder', admin.token)).body.users.find((u) => u.username === 'moder').id;
    await page.goto(`${BASE}/admin#/users/${moderId}`);
    await until('the moderator page', async () => (await page.locator('#user-name').textContent({ timeout: 500 })) === 'moder');
    await page.locator('#reset-password').click();
    await page.locator('#temporary-password').waitFor();
    const moderTemporary = await page.locator('#temporary-password').textContent();
    check((await page.locator('#user-status').textContent()).includes('must change password'), 'the status shows the pending change');
    const mod = await newPage(browser, 'moderator');
    await mod.goto(`${BASE}/admin`);
    await mod.locator('#sign-in').waitFor();
    await mod.getByLabel('Username').fill('moder');
    await mod.getByLabel('Password').fill(moderTemporary);
    await mod.getByRole('button', { name: 'Sign in' }).click();
    await mod.locator('#change-password').waitFor();
    await shot(mod, '11-change-password');
    await mod.getByLabel('Temporary password').fill(moderTemporary);
    await mod.getByLabel('New password', { exact: true }).fill(PASSWORD);
    await mod.getByLabel('New password again').fill(PASSWORD);
    await mod.getByRole('button', { name: 'Change password' }).click();
    await mod.locator('#sign-in').waitFor();
    check((await mod.locator('.signin .alert').textContent()).includes('Password changed'), 'the password change is confirmed');
    await signIn(mod, 'moder', PASSWORD);
    const modSections = await mod.locator('nav a[data-section]').evaluateAll((as) => as.map((a) => a.dataset.section));
    check(modSections.join(',') === 'moderation,audit', `the moderator's nav: ${modSections}`);
    await mod.goto(`${BASE}/admin#/users`);
    await mod.locator('#forbidden').waitFor();
    check((await mod.locator('#forbidden').textContent()).includes('403'), 'the 403 page');
    await shot(mod, '12-moderator-forbidden');
    const { csrf } = JSON.parse((await pageFetch(mod, 'GET', '/admin/session')).text);
    const modCreate = await pageFetch(mod, 'POST', '/api/users', { csrf, body: { username: 'mod-made', password: PASSWORD } });
    check(modCreate.status === 403, `the moderator's POST /api/users: ${modCreate.status} ${modCreate.text}`);
    const modOverview = await pageFetch(mod, 'GET', '/admin/overview');
    check(modOverview.status === 403, `the moderator's overview: ${modOverview.status}`);
    await mod.goto(`${BASE}/admin#/moderation`);
    await mod.locator('#flag-queue table, #flag-queue .empty').first().waitFor();
    check(mod.errors.length === 0, `moderator page errors: ${mod.errors.join(' | ')}`);
    log('a moderator changes a temporary password, then gets the 403 page for #/users and a 403 from POST /api/users');

    // ---- an admin must enrol a second factor, then signs in with a code
    await createUser(admin.token, 'ada', 'admin');
    const ada = await newPage(browser, 'ada');
    await ada.goto(`${BASE}/admin`);
    await ada.locator('#sign-in').waitFor();
    await ada.getByLabel('Username').fill('ada');
    await ada.getByLabel('Password').fill(PASSWORD);
    await ada.getByRole('button', { name: 'Sign in' }).click();
    await ada.locator('#totp-enroll').waitFor();
    const adaOverview = await pageFetch(ada, 'GET', '/admin/overview');
    check(adaOverview.status === 403, `the overview before enrolling: ${adaOverview.status}`);
    await ada.getByLabel('Current password').fill(PASSWORD);
    await ada.getByRole('button', { name: 'Continue' }).click();
    await ada.locator('#totp-qr').waitFor();
    check((await ada.locator('#totp-qr').getAttribute('src')).startsWith('data:image/png;base64,'), 'the QR code is an image');
    await shot(ada, '14-totp-enrol');
    const totpSecret = (await ada.locator('#totp-secret').textContent()).trim();
    const enrolStep = Math.floor(Date.now() / 30_000);
    await ada.getByLabel('Code from the app').fill(totpCode(totpSecret, enrolStep));
    await ada.getByRole('button', { name: 'Turn on' }).click();
    await ada.locator('#recovery-codes').waitFor();
    check((await ada.locator('#recovery-codes li').count()) === 10, 'ten recovery codes');
    await shot(ada, '15-recovery-codes');
    await ada.locator('#totp-done').click();
    await ada.locator('#whoami').waitFor();
    check((await ada.locator('#whoami').textContent()) === 'ada', 'the enrolled admin reaches the console');
    const again = await newPage(browser, 'ada again');
    await again.goto(`${BASE}/admin`);
    await again.locator('#sign-in').waitFor();
    await again.getByLabel('Username').fill('ada');
    await again.getByLabel('Password').fill(PASSWORD);
    await again.getByRole('button', { name: 'Sign in' }).click();
    await again.locator('#totp-code').waitFor({ state: 'visible' });
    await shot(again, '16-sign-in-code');
    await again.locator('#totp-code').fill(totpCode(totpSecret, enrolStep + 1));
    await again.getByRole('button', { name: 'Sign in' }).click();
    await again.locator('#whoami').waitFor();
    check((await again.locator('#whoami').textContent()) === 'ada', 'signed in with the code');
    check(ada.errors.length === 0 && again.errors.length === 0, `ada's page errors: ${[...ada.errors, ...again.errors].join(' | ')}`);
    log('an admin enrols a second factor from the console, then signs in with a code');

    // ---- sign-out
    await page.locator('#sign-out').click();
    await page.locator('#sign-in').waitFor();
    const after = await pageFetch(page, 'GET', '/admin/session');
    check(after.status === 401, `the session after sign-out: ${after.status}`);
    await shot(page, '13-signed-out');
    check(page.errors.length === 0, `admin page errors: ${page.errors.join(' | ')}`);
    log('signed out: the session answers 401');
  } catch (err) {
    // What the page showed when the story stopped.
    if (lastPage) {
      const noticeText = await lastPage.locator('#notice').textContent({ timeout: 1000 }).catch(() => '');
      console.error(`[admin e2e] the page at ${lastPage.url()} shows: ${noticeText || '(no notice)'}`);
      await lastPage.screenshot({ path: path.join(SHOTS, 'FAILED.png'), fullPage: true }).catch(() => {});
      if (lastPage.errors.length) console.error(`[admin e2e] page errors: ${lastPage.errors.join(' | ')}`);
    }
    throw err;
  } finally {
    await browser.close();
  }
}

let failed = false;
try {
  await main();
  log(`passed (${checks} checks)`);
} catch (err) {
  failed = true;
  console.error(`[admin e2e] FAILED: ${err instanceof Failure ? err.message : err?.stack ?? err}`);
}
process.exit(failed ? 1 : 0);
