// Shared helpers of the Carebell pages: the JSON bridge to the gRPC services (unary calls and
// WebSocket streams), the per-service session, a small i18n helper (zh-CN by default, English
// on request), the ring sound, formatting, and the sign-in / error-area scaffolding every page
// uses. No dependencies, no build step.
//
// Nothing here logs to the browser console: errors are shown in the page's error area
// ([data-testid=error]) instead.

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** The element with `data-testid="id"` under `root`. */
export function byTestId(id, root = document) {
  return root.querySelector(`[data-testid="${id}"]`);
}

/**
 * Creates an element. `attrs`: `testid` (data-testid), `class`, `text` (textContent), `hidden`,
 * `on<event>` handlers, `dataset` (object), anything else as an attribute (skipped when null,
 * undefined or false). Children: nodes or strings (null and false are skipped).
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'testid') node.dataset.testid = value;
    else if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'hidden') node.hidden = Boolean(value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'value') node.value = value;
    else if (key === 'checked') node.checked = Boolean(value);
    else if (key === 'disabled') node.disabled = Boolean(value);
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replaces the children of `node`. */
export function setChildren(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** Whether keyboard input at `target` is meant as typing (shortcuts must then stay quiet). */
export function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  const tag = target.tagName;
  if (tag === 'TEXTAREA' || tag === 'SELECT') return true;
  if (tag === 'INPUT') {
    const type = (target.getAttribute('type') || 'text').toLowerCase();
    return !['checkbox', 'radio', 'button', 'submit', 'reset', 'range', 'color', 'file'].includes(type);
  }
  return false;
}

/** Whether Enter on `target` already does something (a button, a link, a checkbox). */
export function isActivatable(target) {
  if (!(target instanceof Element)) return false;
  return ['BUTTON', 'A', 'SUMMARY', 'INPUT', 'SELECT', 'TEXTAREA'].includes(target.tagName);
}

// ---------------------------------------------------------------------------------------------
// Storage (never throws: storage may be disabled)

function storageGet(storage, key) {
  try {
    return storage.getItem(key);
  } catch {
    return null;
  }
}

function storageSet(storage, key, value) {
  try {
    if (value === null || value === undefined) storage.removeItem(key);
    else storage.setItem(key, value);
  } catch {
    /* storage disabled: the page still works for this visit */
  }
}

export function loadJson(storage, key) {
  const raw = storageGet(storage, key);
  if (!raw) return null;
  try {
    return JSON.parse(raw);
  } catch {
    return null;
  }
}

export function saveJson(storage, key, value) {
  storageSet(storage, key, value === null || value === undefined ? null : JSON.stringify(value));
}

// ---------------------------------------------------------------------------------------------
// Sessions: one per service, in sessionStorage (a tab signs in once; closing it forgets).

const sessionKey = (service) => `carebell.session.${service}`;

export function getSession(service) {
  return loadJson(sessionStorage, sessionKey(service));
}

export function setSession(service, session) {
  saveJson(sessionStorage, sessionKey(service), session);
}

export function clearSession(service) {
  saveJson(sessionStorage, sessionKey(service), null);
}

// ---------------------------------------------------------------------------------------------
// RPC

/** An error from the server (or the network): `code` is the gRPC code in snake_case. */
export class RpcError extends Error {
  constructor(code, message, { network = false } = {}) {
    super(message || code);
    this.name = 'RpcError';
    this.code = code || 'unknown';
    this.network = network;
  }
}

function codeForHttpStatus(status) {
  switch (status) {
    case 400: return 'invalid_argument';
    case 401: return 'unauthenticated';
    case 403: return 'permission_denied';
    case 404: return 'not_found';
    case 409: return 'failed_precondition';
    case 429: return 'resource_exhausted';
    case 503: return 'unavailable';
    case 504: return 'deadline_exceeded';
    default: return status >= 500 ? 'internal' : 'unknown';
  }
}

function errorFromBody(body) {
  if (body && typeof body === 'object' && body.error && typeof body.error === 'object'
      && typeof body.error.code === 'string') {
    return new RpcError(body.error.code, String(body.error.message ?? ''));
  }
  return null;
}

/**
 * Calls `POST /api/{service}/{method}` with `body` as JSON and the service's bearer token.
 * Resolves to the response message; rejects with an RpcError (`.code`, `.message`).
 */
export async function rpc(service, method, body = {}) {
  // The bridge answers a refused call with HTTP 200 and `{"error": {code, message}}` (a non-2xx
  // answer would make the browser log a console error); a non-2xx answer is understood too.
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  const token = getSession(service)?.token;
  if (token && method !== 'SignIn') headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(`/api/${encodeURIComponent(service)}/${encodeURIComponent(method)}`, {
      method: 'POST',
      headers,
      body: JSON.stringify(body ?? {}),
      cache: 'no-store',
      credentials: 'same-origin',
    });
  } catch (error) {
    throw new RpcError('unavailable', error?.message || 'network error', { network: true });
  }
  let text = '';
  try {
    text = await response.text();
  } catch {
    text = '';
  }
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const code = typeof data?.code === 'string' && data.code ? data.code : codeForHttpStatus(response.status);
    const message = typeof data?.message === 'string' && data.message ? data.message : `HTTP ${response.status}`;
    throw new RpcError(code, message);
  }
  // Also accept an error envelope in a 200 answer (no response message has a field `error`).
  const embedded = errorFromBody(data);
  if (embedded) throw embedded;
  return data && typeof data === 'object' ? data : {};
}

/** GET /api/config, fetched once per page. */
let configPromise = null;
export function getConfig() {
  if (!configPromise) {
    configPromise = (async () => {
      let response;
      try {
        response = await fetch('/api/config', { cache: 'no-store', credentials: 'same-origin' });
      } catch (error) {
        throw new RpcError('unavailable', error?.message || 'network error', { network: true });
      }
      if (!response.ok) throw new RpcError(codeForHttpStatus(response.status), `HTTP ${response.status}`);
      try {
        return await response.json();
      } catch {
        return {};
      }
    })();
    configPromise.catch(() => {
      configPromise = null;
    });
  }
  return configPromise;
}

/** The ICE servers of /api/config, as RTCPeerConnection takes them. */
export function iceServersOf(config) {
  return (config?.ice_servers ?? [])
    .filter((server) => (server?.urls ?? []).length > 0)
    .map((server) => {
      const out = { urls: server.urls };
      if (server.username) out.username = server.username;
      if (server.credential) out.credential = server.credential;
      return out;
    });
}

// ---------------------------------------------------------------------------------------------
// Streams

/** Codes after which reopening a stream cannot help. */
const FINAL_CODES = new Set([
  'unauthenticated', 'permission_denied', 'invalid_argument', 'not_found', 'failed_precondition',
  'unimplemented', 'out_of_range',
]);

/**
 * Opens the server stream `service`/`method` over WebSocket, one JSON message per text frame.
 * `params`: the request message's fields (an object, or a function giving them at each
 * (re)connection). `onMessage(message)` for each message; `onError(RpcError)` when the server
 * reports an error. The stream reopens by itself (with backoff) after a drop or a transient
 * error, but not after a final error (unauthenticated, permission_denied, ...).
 * Options: `onOpen()`, `onDrop()` (the link went away and will be retried).
 * Returns `{ close() }`.
 */
export function stream(service, method, params, onMessage, onError, options = {}) {
  let socket = null;
  let stopped = false;
  let failures = 0;
  let timer = null;

  const safely = (fn, ...args) => {
    try {
      fn?.(...args);
    } catch (error) {
      reportBug(error);
    }
  };

  const schedule = () => {
    if (stopped) return;
    const delay = Math.min(1000 * 2 ** Math.min(failures, 4), 15000);
    failures += 1;
    clearTimeout(timer);
    timer = setTimeout(connect, delay);
  };

  function connect() {
    if (stopped) return;
    const query = new URLSearchParams();
    query.set('token', getSession(service)?.token ?? '');
    const fields = typeof params === 'function' ? params() : params;
    for (const [key, value] of Object.entries(fields ?? {})) {
      if (value !== undefined && value !== null) query.set(key, String(value));
    }
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${scheme}//${location.host}/api/${service}/${method}/stream?${query}`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      schedule();
      return;
    }
    socket = ws;
    let opened = false;
    ws.onopen = () => {
      if (ws !== socket) return;
      opened = true;
      safely(options.onOpen);
    };
    ws.onmessage = (event) => {
      if (ws !== socket || stopped) return;
      if (typeof event.data !== 'string') return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      const error = errorFromBody(message);
      if (error) {
        if (FINAL_CODES.has(error.code)) stopped = true;
        safely(onError, error);
        return;
      }
      failures = 0;
      safely(onMessage, message);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
    ws.onclose = () => {
      if (ws !== socket) return;
      socket = null;
      if (stopped) return;
      if (opened) safely(options.onDrop);
      schedule();
    };
  }

  connect();
  return {
    close() {
      stopped = true;
      clearTimeout(timer);
      const ws = socket;
      socket = null;
      if (ws) {
        try {
          ws.close(1000);
        } catch {
          /* already closing */
        }
      }
    },
    get open() {
      return socket?.readyState === WebSocket.OPEN;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// i18n

const LANG_KEY = 'carebell.lang';

const COMMON_DICT = {
  zh: {
    lang_switch: 'English',
    lang_switch_label: '切换到英文界面',
    sep: '：',
    session_expired: '会话已过期，请重新登录',
    sign_in_failed: '登录失败',
    network_error: '无法连接服务器，请检查网络',
    username: '用户名',
    password: '密码',
    sign_in: '登录',
    sign_out: '退出登录',
    signing_in: '正在登录…',
    dismiss_error: '点击关闭此提示',
    unexpected: '页面出现问题',
    never: '从未',
    unknown: '未知',
    none: '无',
    yes: '是',
    no: '否',
    just_now: '刚刚',
    minutes_ago: '{n} 分钟前',
    hours_ago: '{n} 小时前',
    minutes: '{n} 分钟',
    km: '{n} 公里',
    m: '{n} 米',
    stream_reconnecting: '连接中断，正在重新连接…',
    stream_connected: '已连接',
    state_created: '待派单',
    state_offered: '已派单',
    state_accepted: '已接单',
    state_en_route: '在路上',
    state_arrived: '已到达',
    state_completed: '已完成',
    state_called_back: '已回访',
    state_rated: '已评价',
    state_closed: '已关闭',
    state_cancelled: '已取消',
    state_withdrawn: '已撤回',
  },
  en: {
    lang_switch: '中文',
    lang_switch_label: 'Switch to Chinese',
    sep: ': ',
    session_expired: 'Your session has expired; please sign in again',
    sign_in_failed: 'Sign-in failed',
    network_error: 'Cannot reach the server; please check the network',
    username: 'Username',
    password: 'Password',
    sign_in: 'Sign in',
    sign_out: 'Sign out',
    signing_in: 'Signing in…',
    dismiss_error: 'Click to dismiss',
    unexpected: 'Something went wrong on this page',
    never: 'never',
    unknown: 'unknown',
    none: 'none',
    yes: 'yes',
    no: 'no',
    just_now: 'just now',
    minutes_ago: '{n} min ago',
    hours_ago: '{n} h ago',
    minutes: '{n} min',
    km: '{n} km',
    m: '{n} m',
    stream_reconnecting: 'Connection lost; reconnecting…',
    stream_connected: 'Connected',
    state_created: 'waiting for a provider',
    state_offered: 'offered',
    state_accepted: 'accepted',
    state_en_route: 'on the way',
    state_arrived: 'arrived',
    state_completed: 'completed',
    state_called_back: 'called back',
    state_rated: 'rated',
    state_closed: 'closed',
    state_cancelled: 'cancelled',
    state_withdrawn: 'withdrawn',
  },
};

/**
 * A translator over the page's dictionary `{ zh: {...}, en: {...} }` and the common one.
 * `t(key, vars)` fills `{name}` placeholders. `apply()` fills every `[data-i18n]` element (and
 * `data-i18n-placeholder`, `data-i18n-title`, `data-i18n-aria-label`). The choice of language
 * is kept in localStorage.
 */
export function createI18n(pageDict) {
  let lang = storageGet(localStorage, LANG_KEY) === 'en' ? 'en' : 'zh';
  const listeners = [];

  function t(key, vars) {
    let text = pageDict?.[lang]?.[key] ?? COMMON_DICT[lang][key]
      ?? pageDict?.zh?.[key] ?? COMMON_DICT.zh[key] ?? key;
    if (vars) text = text.replace(/\{(\w+)\}/g, (_, name) => (vars[name] ?? '').toString());
    return text;
  }

  function apply(root = document) {
    for (const node of root.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    for (const node of root.querySelectorAll('[data-i18n-placeholder]')) {
      node.setAttribute('placeholder', t(node.dataset.i18nPlaceholder));
    }
    for (const node of root.querySelectorAll('[data-i18n-title]')) node.setAttribute('title', t(node.dataset.i18nTitle));
    for (const node of root.querySelectorAll('[data-i18n-aria-label]')) {
      node.setAttribute('aria-label', t(node.dataset.i18nAriaLabel));
    }
    if (root === document) {
      document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
      const title = t('page_title');
      if (title !== 'page_title') document.title = title;
    }
  }

  function setLang(next) {
    lang = next === 'en' ? 'en' : 'zh';
    storageSet(localStorage, LANG_KEY, lang);
    apply();
    for (const listener of listeners) {
      try {
        listener(lang);
      } catch (error) {
        reportBug(error);
      }
    }
  }

  return {
    t,
    apply,
    setLang,
    toggle: () => setLang(lang === 'zh' ? 'en' : 'zh'),
    onChange: (listener) => listeners.push(listener),
    get lang() {
      return lang;
    },
    /** The BCP 47 locale for dates and numbers. */
    get locale() {
      return lang === 'zh' ? 'zh-CN' : 'en-GB';
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Formatting

/** "14:05" today, "3月2日 14:05" / "2 Mar 14:05" on another day; "" for 0. */
export function fmtTime(ms, i18n) {
  if (!ms) return '';
  const date = new Date(Number(ms));
  if (Number.isNaN(date.getTime())) return '';
  const now = new Date();
  const sameDay = date.toDateString() === now.toDateString();
  const time = date.toLocaleTimeString(i18n.locale, { hour: '2-digit', minute: '2-digit', hour12: false });
  if (sameDay) return time;
  const day = date.toLocaleDateString(i18n.locale, { month: 'short', day: 'numeric' });
  return `${day} ${time}`;
}

/** "m:ss" (or "h:mm:ss") for a number of seconds. */
export function fmtDuration(totalSeconds) {
  const secs = Math.max(0, Math.floor(Number(totalSeconds) || 0));
  const h = Math.floor(secs / 3600);
  const m = Math.floor((secs % 3600) / 60);
  const s = secs % 60;
  const pad = (n) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
}

/** "刚刚", "5 分钟前", ... ; "从未" for 0. */
export function fmtAgo(ms, i18n) {
  if (!ms) return i18n.t('never');
  const secs = Math.max(0, (Date.now() - Number(ms)) / 1000);
  if (secs < 60) return i18n.t('just_now');
  if (secs < 3600) return i18n.t('minutes_ago', { n: Math.floor(secs / 60) });
  if (secs < 86400) return i18n.t('hours_ago', { n: Math.floor(secs / 3600) });
  return fmtTime(ms, i18n);
}

/** A distance in metres as "850 米" or "1.2 公里". */
export function fmtDistance(metres, i18n) {
  const m = Number(metres) || 0;
  if (m >= 1000) return i18n.t('km', { n: (m / 1000).toFixed(1) });
  return i18n.t('m', { n: Math.round(m) });
}

/** Fen as "¥12.50". */
export function fmtMoney(fen) {
  return `¥${((Number(fen) || 0) / 100).toFixed(2)}`;
}

/** An order state ("en_route") in words. */
export function orderStateText(state, i18n) {
  if (!state) return '';
  const key = `state_${state}`;
  const text = i18n.t(key);
  return text === key ? state : text;
}

// ---------------------------------------------------------------------------------------------
// Sound

let audioContext = null;

function audioContextClass() {
  return typeof window !== 'undefined' ? (window.AudioContext || window.webkitAudioContext) : undefined;
}

function unlockAudio() {
  try {
    const Context = audioContextClass();
    if (!Context) return;
    if (!audioContext) audioContext = new Context();
    if (audioContext.state === 'suspended') audioContext.resume().catch(() => {});
  } catch {
    /* no audio: the page still shows everything */
  }
}

if (typeof window !== 'undefined') {
  for (const type of ['pointerdown', 'keydown']) {
    window.addEventListener(type, unlockAudio, { capture: true, passive: true });
  }
}

/**
 * A short ring (WebAudio oscillator). Never throws: when audio is blocked (no user gesture yet)
 * or missing, it is silently skipped.
 */
export function beep({ frequency = 880, duration = 0.18, repeat = 2, gap = 0.1, volume = 0.25 } = {}) {
  try {
    const Context = audioContextClass();
    if (!Context) return;
    if (!audioContext) {
      // Before any user gesture the browser would refuse (and complain): wait for one.
      if (navigator.userActivation && !navigator.userActivation.hasBeenActive) return;
      audioContext = new Context();
    }
    if (audioContext.state === 'suspended') {
      audioContext.resume().catch(() => {});
      return;
    }
    const start = audioContext.currentTime + 0.01;
    for (let i = 0; i < repeat; i += 1) {
      const at = start + i * (duration + gap);
      const oscillator = audioContext.createOscillator();
      const gain = audioContext.createGain();
      oscillator.type = 'sine';
      oscillator.frequency.setValueAtTime(frequency, at);
      gain.gain.setValueAtTime(0.0001, at);
      gain.gain.exponentialRampToValueAtTime(volume, at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + duration);
      oscillator.connect(gain);
      gain.connect(audioContext.destination);
      oscillator.start(at);
      oscillator.stop(at + duration + 0.02);
    }
  } catch {
    /* audio blocked or unavailable */
  }
}

// ---------------------------------------------------------------------------------------------
// Unexpected errors: shown in the error area, never thrown to the console.

let bugReporter = null;

/** Where unexpected exceptions are shown (setupPage sets this; the tablet page sets its own). */
export function setBugReporter(reporter) {
  bugReporter = reporter;
}

/** Shows an unexpected exception in the page's error area (instead of the console). */
export function reportBug(error) {
  try {
    if (bugReporter) bugReporter(error);
  } catch {
    /* nothing more to do */
  }
}

if (typeof window !== 'undefined') {
  window.addEventListener('unhandledrejection', (event) => {
    event.preventDefault();
    reportBug(event.reason);
  });
  window.addEventListener('error', (event) => {
    // Uncaught exceptions of the page's own code (not failed resource loads).
    if (event.error !== undefined) {
      event.preventDefault();
      reportBug(event.error);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Page scaffolding: sign-in form, sign-out, the error area, session expiry.

/**
 * Wires the common parts of a page. The HTML must have: `[data-testid=lang]`,
 * `[data-testid=error]`, `#sign-in-view` containing `form#sign-in-form` with `#username`,
 * `#password` and `[data-testid=sign-in]`, `#app` (shown when signed in), optionally
 * `[data-testid=me]`, `#sign-out` and elements marked `data-signed-in` (shown when signed in).
 *
 * `onSignedIn(session)` runs after sign-in or, on load, when the tab already has a session;
 * `onSignedOut()` must stop streams and timers. Returns helpers: `showError(err, contextKey)`,
 * `showMessage(text)`, `clearError()`, `expire()`, `signOut()`, `session()`.
 */
export function setupPage({ service, i18n, onSignedIn, onSignedOut, describe, beforeSignOut }) {
  const errorArea = byTestId('error');
  const langButton = byTestId('lang');
  const signInView = document.getElementById('sign-in-view');
  const form = document.getElementById('sign-in-form');
  const app = document.getElementById('app');
  const me = byTestId('me');
  const signOutButton = document.getElementById('sign-out');
  const signInButton = byTestId('sign-in');
  let signedIn = false;

  function showMessage(text) {
    errorArea.textContent = text || '';
    errorArea.hidden = !text;
  }

  function clearError() {
    showMessage('');
  }

  function messageOf(error) {
    if (error?.network) return i18n.t('network_error');
    if (error instanceof Error || (error && typeof error.message === 'string')) return error.message || String(error.code ?? '');
    return String(error ?? '');
  }

  /** Shows `error` (prefixed with the translation of `contextKey`); unauthenticated signs out. */
  function showError(error, contextKey) {
    if (error?.code === 'unauthenticated') {
      expire();
      return;
    }
    const message = messageOf(error);
    showMessage(contextKey ? `${i18n.t(contextKey)}${i18n.t('sep')}${message}` : message);
  }

  function setSignedInView(on) {
    signedIn = on;
    signInView.hidden = on;
    app.hidden = !on;
    for (const node of document.querySelectorAll('[data-signed-in]')) node.hidden = !on;
  }

  function stopEverything() {
    try {
      onSignedOut?.();
    } catch (error) {
      reportBug(error);
    }
  }

  /** The session is no longer valid: back to the sign-in form, with the expiry message. */
  function expire() {
    const wasSignedIn = signedIn || getSession(service);
    clearSession(service);
    if (signedIn) stopEverything();
    setSignedInView(false);
    if (wasSignedIn) showMessage(i18n.t('session_expired'));
    const username = document.getElementById('username');
    if (username) username.focus();
  }

  async function signOut() {
    try {
      await beforeSignOut?.();
    } catch {
      /* signing out anyway */
    }
    clearSession(service);
    if (signedIn) stopEverything();
    setSignedInView(false);
    clearError();
  }

  function enter(session) {
    setSignedInView(true);
    if (me) me.textContent = describe ? describe(session) : (session.display_name ?? '');
    try {
      onSignedIn(session);
    } catch (error) {
      reportBug(error);
    }
  }

  function resume(session) {
    // Show the signed-in view at once, but start the page after the caller has its helpers.
    setSignedInView(true);
    queueMicrotask(() => {
      if (getSession(service)?.token === session.token) enter(session);
    });
  }

  bugReporter = (error) => {
    const text = messageOf(error);
    showMessage(`${i18n.t('unexpected')}${i18n.t('sep')}${text}`);
  };

  errorArea.setAttribute('role', 'alert');
  errorArea.hidden = !errorArea.textContent;
  errorArea.addEventListener('click', clearError);

  langButton.addEventListener('click', () => i18n.toggle());
  const renderLangButton = () => {
    langButton.textContent = i18n.t('lang_switch');
    langButton.setAttribute('aria-label', i18n.t('lang_switch_label'));
    langButton.setAttribute('lang', i18n.lang === 'zh' ? 'en' : 'zh-CN');
    errorArea.title = i18n.t('dismiss_error');
    if (signedIn && me) {
      const session = getSession(service);
      if (session) me.textContent = describe ? describe(session) : (session.display_name ?? '');
    }
  };
  i18n.onChange(renderLangButton);
  i18n.apply();
  renderLangButton();

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const username = document.getElementById('username').value.trim();
    const password = document.getElementById('password').value;
    signInButton.disabled = true;
    clearError();
    try {
      const session = await rpc(service, 'SignIn', { username, password });
      if (!session.token) throw new RpcError('unknown', 'no token in the answer');
      setSession(service, { ...session, username });
      document.getElementById('password').value = '';
      enter(getSession(service));
    } catch (error) {
      // A refused sign-in is not an expired session: show the server's reason.
      showMessage(`${i18n.t('sign_in_failed')}${i18n.t('sep')}${messageOf(error)}`);
    } finally {
      signInButton.disabled = false;
    }
  });

  if (signOutButton) signOutButton.addEventListener('click', () => signOut());

  const existing = getSession(service);
  if (existing?.token) resume(existing);
  else setSignedInView(false);

  return {
    showError,
    showMessage,
    clearError,
    expire,
    signOut,
    session: () => getSession(service),
    get signedIn() {
      return signedIn;
    },
  };
}

/** A random hex string of `bytes` bytes. */
export function randomHex(bytes = 16) {
  const data = new Uint8Array(bytes);
  crypto.getRandomValues(data);
  return Array.from(data, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Resolves after `ms`. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
