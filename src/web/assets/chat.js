// The Courier chat page, on the TypeScript SDK (`courier-client.js`, the
// SDK's browser bundle served beside this file).
//
// Rules this file keeps:
// - Every value that came from a user or the server is put in the page as
//   text (`textContent`), never as markup: a message `<b>x</b>` shows the
//   characters `<b>x</b>`.
// - Messages are kept per channel in a map keyed by `seq` and rendered once
//   each: a replay after a reconnect, a history page and a live push may
//   carry the same message; the page shows it once, in `seq` order.
// - The session (access and refresh tokens) lives in sessionStorage: it is
//   gone when the tab closes, and other tabs do not see it.

import { CourierClient, login } from './courier-client.js';

const SESSION_KEY = 'courier.session';
const HISTORY_PAGE = 50;
// How often a typing indicator is renewed while the user types (the server
// expires one after 6 s), and how long a remote one is shown without renewal.
const TYPING_RENEW_MS = 3000;
const TYPING_SHOWN_MS = 6500;

const $ = (id) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el;
};

const ui = {
  status: $('status'),
  me: $('me'),
  logout: $('logout-button'),
  loginView: $('login-view'),
  loginForm: $('login-form'),
  username: $('username'),
  password: $('password'),
  passwordHint: $('password-hint'),
  loginButton: $('login-button'),
  registerButton: $('register-button'),
  loginError: $('login-error'),
  chatView: $('chat-view'),
  channelList: $('channel-list'),
  refreshChannels: $('refresh-channels'),
  createForm: $('create-channel-form'),
  channelName: $('channel-name'),
  channelKind: $('channel-kind'),
  channelTitle: $('channel-title'),
  memberList: $('member-list'),
  scroller: $('message-scroller'),
  loadOlder: $('load-older'),
  messages: $('messages'),
  pending: $('pending'),
  typing: $('typing'),
  sendForm: $('send-form'),
  input: $('message-input'),
  sendButton: $('send-button'),
  chatError: $('chat-error'),
};

const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.getAttribute('content') ?? '';
const registrationOpen = meta('courier-registration') === 'open';
const passwordMin = Number.parseInt(meta('courier-password-min'), 10) || 0;

/** @type {CourierClient | undefined} */
let client;
/** Unsubscribe functions of the current client's handlers. */
let unsubscribe = [];
/** The user signed in. */
let me;
/** userId -> username, learnt from members, messages and the session. */
const names = new Map();
/** userId -> 'online' | 'away' | 'offline', from joins and presence. */
const presence = new Map();
/** channelId -> channel from the list (`{id, name, kind, ...}`). */
const channels = new Map();
/**
 * channelId -> what the page knows of a channel it joined:
 * messages (seq -> message), hasMore (older ones exist), members (userIds),
 * reads (userId -> read seq), typing (userId -> timer), unread (count),
 * markedSeq (the highest seq this page marked read).
 */
const rooms = new Map();
/** The channel shown. */
let openId;
/** clientMsgId -> {li, seq?} of sends not yet seen as messages. */
const pendingSends = new Map();
let reconnectTimer;
let typingSentAt = 0;
let typingActive = false;

// ---- text helpers -----------------------------------------------------------

/** An element with a class and text; `text` is always set as text. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function nameOf(userId) {
  return names.get(userId) ?? `user ${String(userId).slice(0, 8)}`;
}

function errorText(err) {
  if (err && typeof err === 'object') {
    const message = typeof err.message === 'string' && err.message ? err.message : 'failed';
    return err.code ? `${message} (${err.code})` : message;
  }
  return String(err);
}

function showChatError(err) {
  ui.chatError.textContent = err ? errorText(err) : '';
}

/** A clientMsgId: a random UUID, also outside secure contexts. */
function newId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---- connection status ------------------------------------------------------

function setStatus(state, text) {
  clearInterval(reconnectTimer);
  reconnectTimer = undefined;
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function showReconnecting(attempt, delayMs) {
  const until = Date.now() + delayMs;
  const render = () => {
    const seconds = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    ui.status.textContent = `Reconnecting in ${seconds} s (attempt ${attempt})`;
  };
  setStatus('reconnecting', '');
  render();
  reconnectTimer = setInterval(render, 250);
}

// ---- session ----------------------------------------------------------------

function saveSession(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

function loadSession() {
  try {
    const raw = sessionStorage.getItem(SESSION_KEY);
    return raw ? JSON.parse(raw) : undefined;
  } catch {
    return undefined;
  }
}

function showLogin(message) {
  ui.chatView.hidden = true;
  ui.loginView.hidden = false;
  ui.me.hidden = true;
  ui.logout.hidden = true;
  ui.loginError.textContent = message ?? '';
  ui.registerButton.hidden = !registrationOpen;
  if (passwordMin > 0) {
    ui.passwordHint.textContent = `New passwords need at least ${passwordMin} characters.`;
    ui.passwordHint.hidden = !registrationOpen;
  }
}

function showChat() {
  ui.loginView.hidden = true;
  ui.chatView.hidden = false;
  ui.me.hidden = false;
  ui.logout.hidden = false;
  ui.me.textContent = `Signed in as ${me.username}`;
}

async function register(username, password) {
  const response = await fetch('/api/auth/register', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  if (response.status === 201) return;
  let message = `registration failed (HTTP ${response.status})`;
  try {
    const body = await response.json();
    if (body?.error?.message) {
      message = body.error.field
        ? `${body.error.field}: ${body.error.message}`
        : body.error.message;
    }
  } catch {
    // not JSON: keep the status
  }
  throw new Error(message);
}

async function signIn(event, registerFirst) {
  event?.preventDefault();
  const username = ui.username.value.trim();
  const password = ui.password.value;
  if (!username || !password) {
    ui.loginError.textContent = 'Enter a username and a password.';
    return;
  }
  ui.loginButton.disabled = true;
  ui.registerButton.disabled = true;
  ui.loginError.textContent = registerFirst ? 'Registering…' : 'Signing in…';
  try {
    if (registerFirst) await register(username, password);
    const session = await login(location.origin, username, password);
    ui.password.value = '';
    saveSession(session);
    await start(session);
  } catch (err) {
    if (client) {
      stop();
      sessionStorage.removeItem(SESSION_KEY);
      setStatus('idle', 'Not signed in');
    }
    showLogin(errorText(err));
  } finally {
    ui.loginButton.disabled = false;
    ui.registerButton.disabled = false;
  }
}

async function signOut() {
  const current = client;
  try {
    await current?.api('POST', '/api/auth/logout');
  } catch {
    // the session may be gone already; the page forgets it either way
  }
  stop();
  sessionStorage.removeItem(SESSION_KEY);
  setStatus('idle', 'Signed out');
  showLogin();
}

function stop() {
  for (const off of unsubscribe) off();
  unsubscribe = [];
  client?.close();
  client = undefined;
  openId = undefined;
  rooms.clear();
  channels.clear();
  presence.clear();
  pendingSends.clear();
  ui.messages.replaceChildren();
  ui.pending.replaceChildren();
  ui.memberList.replaceChildren();
  ui.channelList.replaceChildren();
  ui.typing.textContent = '';
  ui.channelTitle.textContent = 'Pick a channel';
  setComposer(false);
}

// ---- the client and its events ----------------------------------------------

async function start(session) {
  stop();
  me = session.user;
  names.set(me.id, me.username);
  presence.set(me.id, 'online');
  client = new CourierClient({ baseUrl: location.origin, session });
  const on = (event, handler) => unsubscribe.push(client.on(event, handler));
  on('connecting', () => setStatus('connecting', 'Connecting…'));
  on('connected', () => {
    setStatus('connected', 'Connected');
    presence.set(me.id, 'online');
    renderMembers();
    // Channels made while this page was away show up.
    void refreshChannels();
  });
  on('disconnected', () => setStatus('disconnected', 'Disconnected'));
  on('reconnecting', (attempt, delayMs) => showReconnecting(attempt, delayMs));
  on('stopped', (code, reason) => {
    setStatus('stopped', `Stopped: ${reason || 'the session ended'} (${code}). Sign in again.`);
    sessionStorage.removeItem(SESSION_KEY);
    setComposer(false);
    showLogin('Your session ended. Sign in again.');
  });
  on('session', (fresh) => saveSession(fresh));
  on('message', onMessage);
  on('messageUpdated', onMessageUpdated);
  on('messageDeleted', onMessageDeleted);
  on('typing', onTyping);
  on('readReceipt', onReadReceipt);
  on('presence', onPresence);
  on('joined', onJoined);
  on('system', onSystem);
  on('error', (err) => showChatError(err));
  showChat();
  setStatus('connecting', 'Connecting…');
  await client.connect();
}

function roomOf(channelId) {
  let room = rooms.get(channelId);
  if (!room) {
    room = {
      messages: new Map(),
      hasMore: false,
      members: new Set(),
      reads: new Map(),
      typing: new Map(),
      unread: 0,
      markedSeq: 0,
      joined: false,
      loaded: false,
    };
    rooms.set(channelId, room);
  }
  return room;
}

function onMessage(msg) {
  const room = roomOf(msg.channelId);
  if (room.messages.has(msg.seq)) return;
  room.messages.set(msg.seq, msg);
  if (msg.senderId && msg.sender) names.set(msg.senderId, msg.sender);
  if (msg.channelId === openId) {
    insertMessage(msg);
    settlePending(msg.seq);
    renderReceipts();
    scrollToNewest();
    markReadNewest();
  } else if (msg.senderId !== me?.id) {
    room.unread += 1;
    renderChannelList();
  }
}

function onMessageUpdated(msg) {
  const room = rooms.get(msg.channelId);
  if (!room || !room.messages.has(msg.seq)) return;
  room.messages.set(msg.seq, msg);
  if (msg.channelId === openId) {
    const li = ui.messages.querySelector(`li[data-seq="${Number(msg.seq)}"]`);
    if (li) li.replaceWith(messageElement(msg));
    renderReceipts();
  }
}

function onMessageDeleted({ channelId, seq }) {
  const room = rooms.get(channelId);
  if (!room) return;
  room.messages.delete(seq);
  if (channelId === openId) {
    ui.messages.querySelector(`li[data-seq="${Number(seq)}"]`)?.remove();
    renderReceipts();
  }
}

function onTyping({ channelId, userId, isTyping }) {
  if (userId === me?.id) return;
  const room = roomOf(channelId);
  clearTimeout(room.typing.get(userId));
  room.typing.delete(userId);
  if (isTyping) {
    room.typing.set(
      userId,
      setTimeout(() => {
        room.typing.delete(userId);
        if (channelId === openId) renderTyping();
      }, TYPING_SHOWN_MS),
    );
  }
  if (channelId === openId) renderTyping();
}

function onReadReceipt({ channelId, userId, seq }) {
  const room = roomOf(channelId);
  if ((room.reads.get(userId) ?? 0) < seq) room.reads.set(userId, seq);
  if (channelId === openId) renderReceipts();
}

/** Every join's answer, rejoins after a reconnect included: who is online now. */
function onJoined(view) {
  const room = roomOf(view.id);
  const online = new Set(view.online ?? []);
  for (const userId of room.members) {
    if (userId !== me.id && !online.has(userId)) presence.set(userId, 'offline');
  }
  for (const userId of online) {
    if (presence.get(userId) !== 'away') presence.set(userId, 'online');
    room.members.add(userId);
  }
  if (view.id === openId) renderMembers();
}

function onPresence({ userId, status }) {
  presence.set(userId, status);
  const room = openId && rooms.get(openId);
  if (room && !room.members.has(userId) && status !== 'offline') {
    // Someone joined who was not a member when the list was read.
    room.members.add(userId);
    if (!names.has(userId)) void loadMembers(openId);
  }
  renderMembers();
}

function onSystem({ eventType, data }) {
  if (eventType === 'channel_deleted' || eventType === 'member_removed') {
    const channelId = data?.channelId;
    if (channelId && channelId === openId) {
      showChatError({ message: `This channel is no longer available (${eventType}).` });
      setComposer(false);
    }
    void refreshChannels();
  } else if (eventType === 'shutdown') {
    ui.status.textContent = 'The server is restarting…';
  }
}

// ---- channels ---------------------------------------------------------------

async function refreshChannels() {
  if (!client) return;
  try {
    const body = await client.api('GET', '/api/channels');
    channels.clear();
    for (const channel of body?.channels ?? []) channels.set(channel.id, channel);
    renderChannelList();
  } catch (err) {
    showChatError(err);
  }
}

function renderChannelList() {
  const items = [...channels.values()]
    .filter((c) => c.kind !== 'direct')
    .sort((a, b) => a.name.localeCompare(b.name));
  ui.channelList.replaceChildren(
    ...items.map((channel) => {
      const li = el('li');
      const button = el('button', 'channel', channel.name);
      button.type = 'button';
      button.dataset.channelId = channel.id;
      button.dataset.testid = 'channel';
      if (channel.id === openId) button.setAttribute('aria-current', 'true');
      const kind = el('span', 'kind', channel.kind);
      button.append(' ', kind);
      const unread = rooms.get(channel.id)?.unread ?? 0;
      if (unread > 0 && channel.id !== openId) {
        button.append(' ', el('span', 'badge', unread));
      }
      button.addEventListener('click', () => void openChannel(channel.id));
      li.append(button);
      return li;
    }),
  );
}

async function createChannel(event) {
  event.preventDefault();
  const name = ui.channelName.value.trim();
  if (!name || !client) return;
  showChatError();
  try {
    const body = await client.api('POST', '/api/channels', { name, kind: ui.channelKind.value });
    ui.channelName.value = '';
    const channel = body.channel;
    channels.set(channel.id, channel);
    renderChannelList();
    await openChannel(channel.id);
  } catch (err) {
    showChatError(err);
  }
}

async function openChannel(channelId) {
  if (!client) return;
  showChatError();
  stopTyping();
  openId = channelId;
  const room = roomOf(channelId);
  room.unread = 0;
  ui.channelTitle.textContent = channels.get(channelId)?.name ?? 'Channel';
  ui.messages.replaceChildren();
  ui.pending.replaceChildren(...[...pendingSends.values()].filter((p) => p.channelId === channelId).map((p) => p.li));
  renderChannelList();
  renderTyping();
  try {
    if (!room.joined) {
      const view = await client.join(channelId);
      room.joined = true;
      for (const userId of view.online ?? []) presence.set(userId, 'online');
      for (const userId of view.online ?? []) room.members.add(userId);
      room.markedSeq = Math.max(room.markedSeq, view.lastReadSeq ?? 0);
      void loadMembers(channelId);
      void loadReceipts(channelId);
    }
    if (!room.loaded) {
      addPage(room, await client.history(channelId, { limit: HISTORY_PAGE }));
      room.loaded = true;
    }
    if (openId !== channelId) return;
    renderMessages();
    setComposer(true);
    markReadNewest();
  } catch (err) {
    showChatError(err);
  }
}

function addPage(room, page) {
  for (const msg of page?.messages ?? []) {
    if (!room.messages.has(msg.seq)) room.messages.set(msg.seq, msg);
    if (msg.senderId && msg.sender) names.set(msg.senderId, msg.sender);
  }
  room.hasMore = Boolean(page?.hasMore);
}

async function loadOlder() {
  const channelId = openId;
  const room = channelId && rooms.get(channelId);
  if (!room || !client) return;
  const oldest = Math.min(...room.messages.keys());
  ui.loadOlder.disabled = true;
  try {
    const before = ui.scroller.scrollHeight - ui.scroller.scrollTop;
    const page = await client.history(channelId, {
      beforeSeq: Number.isFinite(oldest) ? oldest : undefined,
      limit: HISTORY_PAGE,
    });
    addPage(room, page);
    if (openId !== channelId) return;
    renderMessages(false);
    ui.scroller.scrollTop = ui.scroller.scrollHeight - before;
  } catch (err) {
    showChatError(err);
  } finally {
    ui.loadOlder.disabled = false;
  }
}

async function loadMembers(channelId) {
  try {
    const body = await client.api('GET', `/api/channels/${encodeURIComponent(channelId)}/members`);
    const room = roomOf(channelId);
    for (const member of body?.members ?? []) {
      room.members.add(member.userId);
      if (member.username) names.set(member.userId, member.username);
    }
    if (channelId === openId) {
      renderMembers();
      renderReceipts();
      renderTyping();
    }
  } catch (err) {
    showChatError(err);
  }
}

async function loadReceipts(channelId) {
  try {
    const body = await client.api('GET', `/api/channels/${encodeURIComponent(channelId)}/receipts`);
    const room = roomOf(channelId);
    for (const { userId, readSeq } of body?.receipts ?? []) {
      if ((room.reads.get(userId) ?? 0) < readSeq) room.reads.set(userId, readSeq);
    }
    if (channelId === openId) renderReceipts();
  } catch {
    // receipts are a nicety: the pushes still come
  }
}

// ---- rendering the open channel ---------------------------------------------

function messageElement(msg) {
  const li = el('li', msg.senderId === me?.id ? 'message mine' : 'message');
  li.dataset.seq = String(msg.seq);
  li.dataset.testid = 'message';
  li.dataset.senderId = msg.senderId ?? '';
  const head = el('div', 'message-head');
  head.append(el('span', 'sender', msg.sender ?? nameOf(msg.senderId)));
  const time = el('time', 'time', new Date(msg.timestamp).toLocaleTimeString());
  time.dateTime = new Date(msg.timestamp).toISOString();
  head.append(' ', time, ' ', el('span', 'seq', `#${msg.seq}`));
  if (msg.editedAt) head.append(' ', el('span', 'edited', '(edited)'));
  const text = el('p', 'text', msg.text);
  text.dataset.testid = 'message-text';
  const receipts = el('p', 'receipts');
  receipts.dataset.testid = 'receipts';
  li.append(head, text, receipts);
  return li;
}

/** Puts one message in `seq` order among those shown. */
function insertMessage(msg) {
  const li = messageElement(msg);
  let after = null;
  for (let node = ui.messages.lastElementChild; node; node = node.previousElementSibling) {
    if (Number(node.dataset.seq) < msg.seq) {
      after = node;
      break;
    }
  }
  if (after) after.after(li);
  else ui.messages.prepend(li);
}

function renderMessages(scroll = true) {
  const room = rooms.get(openId);
  if (!room) return;
  const sorted = [...room.messages.values()].sort((a, b) => a.seq - b.seq);
  ui.messages.replaceChildren(...sorted.map(messageElement));
  ui.loadOlder.hidden = !room.hasMore;
  for (const msg of sorted) settlePending(msg.seq);
  renderMembers();
  renderReceipts();
  if (scroll) scrollToNewest();
}

function scrollToNewest() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
}

function renderMembers() {
  const room = openId && rooms.get(openId);
  if (!room) {
    ui.memberList.replaceChildren();
    return;
  }
  const members = [...room.members].sort((a, b) => nameOf(a).localeCompare(nameOf(b)));
  ui.memberList.replaceChildren(
    ...members.map((userId) => {
      const status = presence.get(userId) ?? 'offline';
      const li = el('li', `member ${status}`);
      li.dataset.userId = userId;
      li.dataset.testid = 'member';
      li.dataset.status = status;
      const dot = el('span', 'dot');
      dot.setAttribute('aria-hidden', 'true');
      li.append(dot, el('span', 'member-name', nameOf(userId)), el('span', 'visually-hidden', ` (${status})`));
      li.title = `${nameOf(userId)}: ${status}`;
      return li;
    }),
  );
}

function renderTyping() {
  const room = openId && rooms.get(openId);
  const who = room ? [...room.typing.keys()].map(nameOf) : [];
  if (who.length === 0) ui.typing.textContent = '';
  else if (who.length === 1) ui.typing.textContent = `${who[0]} is typing…`;
  else ui.typing.textContent = `${who.join(', ')} are typing…`;
}

/** Under each shown message: who has read up to it (and no further). */
function renderReceipts() {
  const room = openId && rooms.get(openId);
  if (!room) return;
  const shown = [...ui.messages.children];
  const at = new Map();
  for (const [userId, seq] of room.reads) {
    if (userId === me?.id) continue;
    let target;
    for (const li of shown) {
      if (Number(li.dataset.seq) <= seq) target = li;
      else break;
    }
    if (!target) continue;
    if (!at.has(target)) at.set(target, []);
    at.get(target).push(nameOf(userId));
  }
  for (const li of shown) {
    const receipts = li.querySelector('.receipts');
    const readers = at.get(li);
    receipts.textContent = readers ? `Read by ${readers.sort().join(', ')}` : '';
  }
}

/** Marks the newest shown message read, when the page is in view. */
function markReadNewest() {
  const room = openId && rooms.get(openId);
  if (!room || !client || document.visibilityState !== 'visible') return;
  const newest = Math.max(0, ...room.messages.keys());
  if (newest <= room.markedSeq) return;
  room.markedSeq = newest;
  const channelId = openId;
  client.markRead(channelId, newest).catch((err) => {
    if (err?.code !== 'closed' && err?.code !== 'timeout') showChatError(err);
    // Not marked: let a later message or a return to the page try again.
    if (rooms.get(channelId)?.markedSeq === newest) rooms.get(channelId).markedSeq = 0;
  });
}

// ---- sending and typing -----------------------------------------------------

function setComposer(enabled) {
  ui.input.disabled = !enabled;
  ui.sendButton.disabled = !enabled;
}

async function send(event) {
  event.preventDefault();
  const text = ui.input.value;
  const channelId = openId;
  if (!text.trim() || !client || !channelId) return;
  ui.input.value = '';
  stopTyping();
  showChatError();
  const clientMsgId = newId();
  const li = el('li', 'message mine sending');
  li.dataset.testid = 'pending-message';
  li.append(el('div', 'message-head', 'Sending…'), el('p', 'text', text));
  const entry = { li, channelId, seq: undefined };
  pendingSends.set(clientMsgId, entry);
  if (openId === channelId) ui.pending.append(li);
  scrollToNewest();
  try {
    const result = await client.send(channelId, text, { clientMsgId });
    entry.seq = result.seq;
    if (rooms.get(channelId)?.messages.has(result.seq)) settlePending(result.seq);
  } catch (err) {
    pendingSends.delete(clientMsgId);
    li.classList.add('failed');
    li.firstElementChild.textContent = `Not sent: ${errorText(err)}`;
    showChatError(err);
  }
}

/** A send whose message is now shown leaves the "sending" list. */
function settlePending(seq) {
  for (const [id, entry] of pendingSends) {
    if (entry.seq === seq) {
      entry.li.remove();
      pendingSends.delete(id);
    }
  }
}

function onInput() {
  if (!client || !openId) return;
  if (!ui.input.value) {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (!typingActive || now - typingSentAt > TYPING_RENEW_MS) {
    typingActive = true;
    typingSentAt = now;
    client.typing(openId, true);
  }
}

function stopTyping() {
  if (typingActive && client && openId && client.state === 'connected') client.typing(openId, false);
  typingActive = false;
}

// ---- wiring -----------------------------------------------------------------

ui.loginForm.addEventListener('submit', (event) => void signIn(event, false));
ui.registerButton.addEventListener('click', () => void signIn(undefined, true));
ui.logout.addEventListener('click', () => void signOut());
ui.refreshChannels.addEventListener('click', () => void refreshChannels());
ui.createForm.addEventListener('submit', (event) => void createChannel(event));
ui.loadOlder.addEventListener('click', () => void loadOlder());
ui.sendForm.addEventListener('submit', (event) => void send(event));
ui.input.addEventListener('input', onInput);
ui.input.addEventListener('blur', stopTyping);
document.addEventListener('visibilitychange', markReadNewest);

const saved = loadSession();
if (saved?.token && saved?.user) {
  start(saved).catch((err) => {
    stop();
    sessionStorage.removeItem(SESSION_KEY);
    setStatus('idle', 'Not signed in');
    showLogin(`Sign in again: ${errorText(err)}`);
  });
} else {
  showLogin();
}
