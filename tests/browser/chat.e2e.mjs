// The chat page end to end, in Debian's headless Chromium driven by
// playwright-core. Run by tests/chat_browser.rs (`cargo test --test
// chat_browser`), which says where the binary is; by hand:
//
//   COURIER_BIN=target/debug/courier node tests/browser/chat.e2e.mjs
//
// It starts `courier serve` itself (a fresh data directory, one port for the
// whole run), because it must SIGKILL it and start it again on the same port
// and data: the pages keep their origin and their SDK reconnects to it.
//
// The story: an administrator (from COURIER_INITIAL_ADMIN_*) makes a public
// channel over REST; alice and bob register through the page in two browser
// contexts, open it and chat: each sees the other's messages, typing and
// presence, and read receipts; a message with markup is shown as text and
// runs nothing; every answer of the page carries the CSP and the page has no
// inline script; then the server is SIGKILLed and restarted, both pages show
// reconnecting then connected, and the conversation goes on with every
// message shown once (counted by seq), a send made during the outage included.
// Last, more than a page of history: a reloaded tab resumes its session,
// shows the newest page and loads the older ones.

import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.COURIER_BIN && path.resolve(process.env.COURIER_BIN);
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const OWN_DIR = !process.env.CHAT_E2E_DATA_DIR;
const DATA_DIR = process.env.CHAT_E2E_DATA_DIR ?? mkdtempSync(path.join(tmpdir(), 'courier-chat-e2e-'));
const STEP_MS = 20_000;
const ADMIN = { username: 'admin', password: 'admin-password-0123456789' };
const PASSWORD = 'correct-horse-battery';
const MARKUP = '<script>window.pwned=1</script><b>bold</b>';

const started = Date.now();
const log = (...args) => console.log(`[chat e2e ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);

class Failure extends Error {}
function check(ok, message) {
  if (!ok) throw new Failure(message);
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

// ---- the server -------------------------------------------------------------

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function serverEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('COURIER_')) env[k] = v;
  return {
    ...env,
    NO_COLOR: '1',
    RUST_LOG: process.env.RUST_LOG ?? 'info',
    COURIER_ENV: 'development',
    COURIER_LOG_FORMAT: 'pretty',
    COURIER_JWT_SECRET: 'courier-chat-e2e-jwt-secret-0123456789abcdef',
    COURIER_ARGON2_MEMORY_KIB: '1024',
    COURIER_ARGON2_ITERATIONS: '1',
    COURIER_ALLOW_REGISTRATION: 'true',
    COURIER_REGISTER_PER_HOUR: '1000',
    COURIER_AUTH_PER_15MIN: '100000',
    COURIER_REST_PER_15MIN: '100000',
    COURIER_SEND_PER_MINUTE: '100000',
    COURIER_INITIAL_ADMIN_USERNAME: ADMIN.username,
    COURIER_INITIAL_ADMIN_PASSWORD: ADMIN.password,
  };
}

let server;
let port;
const base = () => `http://127.0.0.1:${port}`;

async function startServer() {
  const logFile = openSync(path.join(DATA_DIR, 'broker.log'), 'a');
  writeFileSync(path.join(DATA_DIR, 'broker.log'), `===== courier serve --bind 127.0.0.1:${port}\n`, { flag: 'a' });
  const child = spawn(BIN, ['--data-dir', DATA_DIR, 'serve', '--bind', `127.0.0.1:${port}`], {
    cwd: DATA_DIR,
    env: serverEnv(),
    stdio: ['ignore', logFile, logFile],
  });
  let exited = null;
  child.once('exit', (code, signal) => {
    exited = { code, signal };
  });
  child.once('error', (err) => {
    exited = { error: String(err) };
  });
  await until(
    'the server to be ready',
    async () => {
      if (exited) throw new Failure(`courier exited during start: ${JSON.stringify(exited)} (see ${DATA_DIR}/broker.log)`);
      const r = await fetch(`${base()}/ready`).catch(() => undefined);
      return r?.status === 200;
    },
    60_000,
  ).catch((err) => {
    child.kill('SIGKILL');
    throw err;
  });
  server = child;
}

async function killServer() {
  const child = server;
  server = undefined;
  const gone = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await gone;
}

async function rest(method, urlPath, token, body) {
  const r = await fetch(`${base()}${urlPath}`, {
    method,
    headers: {
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
      ...(body ? { 'Content-Type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  check(r.ok, `${method} ${urlPath} answered ${r.status}: ${text}`);
  return text ? JSON.parse(text) : undefined;
}

// ---- the pages --------------------------------------------------------------

/** Records, in the page, every CSP violation and every connection state. */
function instrument() {
  window.__csp = [];
  window.__states = [];
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`);
  });
  document.addEventListener('DOMContentLoaded', () => {
    const status = document.getElementById('status');
    const note = () => window.__states.push(status.dataset.state);
    note();
    new MutationObserver(note).observe(status, { attributes: true, attributeFilter: ['data-state'] });
  });
}

async function openPage(browser, who) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  const responses = [];
  page.on('pageerror', (err) => errors.push(String(err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  page.on('response', (response) => {
    const url = new URL(response.url());
    if (url.port === String(port) && !url.pathname.startsWith('/api/')) responses.push(response);
  });
  await page.addInitScript(instrument);
  const document = await page.goto(`${base()}/`);
  check(document.status() === 200, `GET / answered ${document.status()}`);
  return { who, context, page, errors, responses, html: await document.text() };
}

const state = (p) => p.page.$eval('#status', (s) => s.dataset.state);

async function registerAndSignIn(p) {
  await p.page.fill('#username', p.who);
  await p.page.fill('#password', PASSWORD);
  await p.page.click('#register-button');
  await until(`${p.who} to be connected`, async () => (await state(p)) === 'connected');
  const me = await p.page.textContent('#me');
  check(me.includes(p.who), `${p.who}'s page says ${me}`);
  const stored = await p.page.evaluate(() => ({
    session: sessionStorage.getItem('courier.session'),
    local: Object.keys(localStorage).length,
  }));
  check(stored.session?.includes('"token"'), 'the session is in sessionStorage');
  check(stored.local === 0, 'nothing is kept in localStorage');
}

async function openChannel(p, name) {
  const button = p.page.locator('#channel-list button[data-testid="channel"]', { hasText: name });
  await until(`${p.who} to list ${name}`, async () => (await button.count()) === 1);
  await button.click();
  await until(`${p.who} to open ${name}`, async () => (await p.page.textContent('#channel-title')) === name);
  await until(`${p.who}'s composer`, () => p.page.isEnabled('#message-input'));
}

async function send(p, text) {
  await p.page.fill('#message-input', text);
  await p.page.click('#send-button');
}

/** The messages shown: `[{seq, sender, text}]`, in page order. */
function shown(p) {
  return p.page.$$eval('#messages li[data-testid="message"]', (items) =>
    items.map((li) => ({
      seq: Number(li.dataset.seq),
      sender: li.querySelector('.sender')?.textContent,
      text: li.querySelector('[data-testid="message-text"]')?.textContent,
    })),
  );
}

async function sees(p, text, ms) {
  return until(`${p.who} to see ${JSON.stringify(text)}`, async () => (await shown(p)).find((m) => m.text === text), ms);
}

// ---- the story --------------------------------------------------------------

async function main() {
  check(BIN, 'COURIER_BIN names the courier binary');
  port = Number(process.env.CHAT_E2E_PORT) || (await freePort());
  await startServer();
  log(`courier on ${base()}, data in ${DATA_DIR}`);

  const admin = await rest('POST', '/api/auth/login', undefined, ADMIN);
  await rest('POST', '/api/channels', admin.token, { name: 'ward-7', kind: 'public' });

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    log(`chromium ${browser.version()}`);
    const alice = await openPage(browser, 'alice');
    const bob = await openPage(browser, 'bob');

    // The page: strict CSP on every answer, no inline script or style.
    for (const p of [alice, bob]) {
      for (const response of p.responses) {
        const csp = response.headers()['content-security-policy'] ?? '';
        check(csp.includes("script-src 'self'"), `${response.url()} has the CSP (got ${JSON.stringify(csp)})`);
        check(!csp.includes('unsafe-inline') && !csp.includes('unsafe-eval'), `${response.url()}: ${csp}`);
      }
      const paths = p.responses.map((r) => new URL(r.url()).pathname);
      for (const asset of ['/', '/assets/chat.js', '/assets/chat.css', '/assets/courier-client.js']) {
        check(paths.includes(asset), `${p.who}'s page loaded ${asset} (loaded ${paths})`);
      }
    }
    check(!/<script\b(?![^>]*\bsrc=)[^>]*>/i.test(alice.html), 'the HTML has no inline <script>');
    check(!/\sstyle\s*=/i.test(alice.html), 'the HTML has no style= attribute');
    check(!/\son[a-z]+\s*=/i.test(alice.html), 'the HTML has no on*= attribute');
    const inline = await alice.page.evaluate(() => ({
      scripts: [...document.scripts].filter((s) => !s.src).length,
      styled: document.querySelectorAll('[style]').length,
    }));
    check(inline.scripts === 0 && inline.styled === 0, `inline script or style in the DOM: ${JSON.stringify(inline)}`);
    log('CSP on every answer, no inline script or style');

    await registerAndSignIn(alice);
    await registerAndSignIn(bob);
    log('alice and bob registered and connected');

    // alice may not make public channels (the user role makes private ones):
    // the refusal is shown; a private one opens and takes a message.
    await alice.page.fill('#channel-name', 'not-allowed');
    await alice.page.selectOption('#channel-kind', 'public');
    await alice.page.click('#create-channel-button');
    await until('the refusal to be shown', async () => (await alice.page.textContent('#chat-error')).includes('forbidden'));
    await alice.page.fill('#channel-name', 'alice-notes');
    await alice.page.selectOption('#channel-kind', 'private');
    await alice.page.click('#create-channel-button');
    await until('alice-notes to open', async () => (await alice.page.textContent('#channel-title')) === 'alice-notes');
    await until("alice's composer", () => alice.page.isEnabled('#message-input'));
    await send(alice, 'a note to self');
    await sees(alice, 'a note to self');
    log('channel creation: refused public shown, private created, opened, written to');

    await openChannel(alice, 'ward-7');
    await openChannel(bob, 'ward-7');

    // Presence: each sees the other online in the open channel.
    const online = (p, name) =>
      p.page.$$eval(
        '#member-list li[data-testid="member"]',
        (items, name) => items.some((li) => li.textContent.startsWith(name) && li.dataset.status === 'online'),
        name,
      );
    await until('alice to see bob online', () => online(alice, 'bob'));
    await until('bob to see alice online', () => online(bob, 'alice'));
    log('presence: each sees the other online');

    await send(alice, 'hello bob');
    await sees(bob, 'hello bob');
    await send(bob, 'hi alice');
    await sees(alice, 'hi alice');
    log('each sees the other');

    // Typing: bob types without sending; alice sees it.
    await bob.page.click('#message-input');
    await bob.page.keyboard.type('I am typi');
    await until('alice to see bob typing', async () => (await alice.page.textContent('#typing')) === 'bob is typing…');
    await bob.page.fill('#message-input', '');
    log('typing shown');

    // Markup is text.
    await send(alice, MARKUP);
    for (const p of [alice, bob]) {
      const found = await sees(p, MARKUP);
      check(found.text === MARKUP, `${p.who} shows the markup as text`);
      const ran = await p.page.evaluate(() => ({
        pwned: 'pwned' in window,
        bold: document.querySelectorAll('#messages b').length,
        scripts: document.querySelectorAll('#messages script').length,
      }));
      check(!ran.pwned && ran.bold === 0 && ran.scripts === 0, `${p.who}: markup became elements or ran: ${JSON.stringify(ran)}`);
    }
    log('markup shown as text, nothing ran');

    // Read receipts: bob's page marks what it shows read; alice sees it.
    const markupSeq = (await shown(alice)).find((m) => m.text === MARKUP).seq;
    await until("alice to see bob's read receipt", () =>
      alice.page.$eval(
        `#messages li[data-seq="${markupSeq}"] [data-testid="receipts"]`,
        (el) => el.textContent === 'Read by bob',
      ),
    );
    log('read receipt shown');

    // The server dies (SIGKILL) and comes back on the same port and data.
    for (const p of [alice, bob]) await p.page.evaluate(() => (window.__states = []));
    await killServer();
    log('server SIGKILLed');
    for (const p of [alice, bob]) {
      await until(`${p.who} to show reconnecting`, async () => {
        const states = await p.page.evaluate(() => window.__states);
        return states.includes('reconnecting');
      });
      const status = await p.page.textContent('#status');
      check(status.startsWith('Reconnecting in'), `${p.who}'s status says ${status}`);
    }
    log('both pages show reconnecting');
    // A send while the server is down: the SDK keeps it and resends it.
    await send(bob, 'sent while the server was down');
    await until('the send to be pending', async () => (await bob.page.$$('#pending li')).length === 1);
    await startServer();
    log('server restarted');
    for (const p of [alice, bob]) {
      await until(`${p.who} to be connected again`, async () => (await state(p)) === 'connected', 45_000);
    }
    log('both pages connected again');
    await sees(alice, 'sent while the server was down');
    await sees(bob, 'sent while the server was down');
    await until("bob's pending list to empty", async () => (await bob.page.$$('#pending li')).length === 0);

    await send(alice, 'after the restart, from alice');
    await send(bob, 'after the restart, from bob');
    for (const p of [alice, bob]) {
      await sees(p, 'after the restart, from alice');
      await sees(p, 'after the restart, from bob');
    }

    // Nothing lost, nothing doubled: both show the same seqs 1..n, each once.
    const expected = [
      'hello bob',
      'hi alice',
      MARKUP,
      'sent while the server was down',
      'after the restart, from alice',
      'after the restart, from bob',
    ];
    const a = await shown(alice);
    const b = await shown(bob);
    for (const [p, list] of [
      [alice, a],
      [bob, b],
    ]) {
      const seqs = list.map((m) => m.seq);
      check(
        seqs.every((s, i) => s === i + 1),
        `${p.who} shows seqs ${seqs}, not 1..${seqs.length} once each`,
      );
      check(list.length === expected.length, `${p.who} shows ${list.length} messages: ${JSON.stringify(list)}`);
      const texts = list.map((m) => m.text).sort();
      check(JSON.stringify(texts) === JSON.stringify([...expected].sort()), `${p.who} shows ${JSON.stringify(texts)}`);
    }
    check(JSON.stringify(a) === JSON.stringify(b), 'alice and bob show the same conversation');
    log(`after the restart both show the ${a.length} messages once each, in seq order`);

    // History: more than a page is posted (over REST), alice reloads the tab
    // (the session comes back from sessionStorage), opens the channel, sees
    // the newest page with the newest message at the bottom, and loads the
    // older ones: every message once, in seq order.
    const ward = (await rest('GET', '/api/channels', admin.token)).channels.find((c) => c.name === 'ward-7');
    const filler = 55;
    for (let i = 1; i <= filler; i += 1) {
      await rest('POST', '/api/messages', admin.token, { channelId: ward.id, text: `filler ${i}`, clientMsgId: `filler-${i}` });
    }
    const total = expected.length + filler;
    await sees(bob, `filler ${filler}`);
    await alice.page.reload();
    await until('alice to be connected after a reload', async () => (await state(alice)) === 'connected');
    await openChannel(alice, 'ward-7');
    const firstPage = await until('the newest page', async () => {
      const list = await shown(alice);
      return list.length === 50 && list;
    });
    check(firstPage.at(-1).text === `filler ${filler}` && firstPage.at(-1).seq === total, 'the newest message is at the bottom');
    check(await alice.page.isVisible('#load-older'), 'there are older messages to load');
    await alice.page.click('#load-older');
    const all = await until('the older messages', async () => {
      const list = await shown(alice);
      return list.length === total && list;
    });
    check(
      all.every((m, i) => m.seq === i + 1),
      `after load older alice shows seqs ${all.map((m) => m.seq)}`,
    );
    check(!(await alice.page.isVisible('#load-older')), 'nothing older is left');
    const bobs = await shown(bob);
    check(bobs.length === total && bobs.every((m, i) => m.seq === i + 1), `bob shows ${bobs.length} messages once each`);
    log(`history: a reloaded tab shows the newest page, then all ${total} messages after load older`);

    // Presence across a restart: bob's tab closes while the server is down,
    // so no `offline` push can tell alice; her page learns it from the
    // rejoin's answer (the SDK's `joined` event) and shows bob offline.
    const status = (p, name) =>
      p.page.$$eval(
        '#member-list li[data-testid="member"]',
        (items, name) => items.find((li) => li.textContent.startsWith(name))?.dataset.status,
        name,
      );
    check((await status(alice, 'bob')) === 'online', 'alice sees bob online before the restart');
    const clean = async (p) => {
      const csp = await p.page.evaluate(() => window.__csp);
      check(csp.length === 0, `${p.who}'s page had CSP violations: ${csp}`);
      const errors = p.errors.filter((e) => !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(e));
      check(errors.length === 0, `${p.who}'s page had errors: ${errors.join('\n')}`);
    };
    await clean(bob);
    await killServer();
    await bob.page.close();
    await startServer();
    await until('alice to be connected after the second restart', async () => (await state(alice)) === 'connected', 45_000);
    await until('alice to see bob offline', async () => (await status(alice, 'bob')) === 'offline');
    log('presence after a restart: the rejoin tells alice that bob is gone');

    await clean(alice);
  } finally {
    await browser.close();
  }
}

// Stopped from outside (the Rust test's deadline): take the server along.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server?.kill('SIGKILL');
    console.error(`[chat e2e] stopped by ${signal}`);
    process.exit(1);
  });
}

let failed = false;
try {
  await main();
  log('passed');
} catch (err) {
  failed = true;
  console.error(`[chat e2e] FAILED: ${err instanceof Failure ? err.message : err?.stack ?? err}`);
  console.error(`[chat e2e] the server's log: ${path.join(DATA_DIR, 'broker.log')}`);
} finally {
  if (server) await killServer();
  if (OWN_DIR && !failed) rmSync(DATA_DIR, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
