// The tablet emulator (for development and tests): speaks the real device protocol
// (docs/protocol.md) over WebSocket from the browser. Handshake with an Ed25519 proof
// (WebCrypto), sequence numbers and acknowledgements both ways, heartbeats, call requests and
// SOS alarms resent until acknowledged, call and order updates deduplicated by update_id,
// ratings, and WebRTC voice answering the operator console's offer.

import {
  byTestId, createI18n, getConfig, iceServersOf, loadJson, randomHex, saveJson, setBugReporter,
} from './common.js';
import {
  AlarmKind, CallState, RejectReason, base64ToBytes, decodeEnvelope, encodeEnvelope, signProof,
} from './proto.js';

const DICT = {
  zh: {
    page_title: 'Carebell 平板模拟器',
    heading: '平板模拟器（开发用）',
    link_title: '连接',
    credentials_label: '平板凭据（JSON，来自 carebell admin provision-device）',
    connect: '连接',
    disconnect: '断开',
    link_state: '状态：',
    screen_title: '平板屏幕',
    press: '呼叫',
    sos: 'SOS 求助',
    cancel_call: '取消呼叫',
    voice_label: '语音状态',
    rate_prompt: '请为这次服务打分：',
    rated: '谢谢！您打了 {n} 星',
    log_title: '协议日志',
    pressed: '已按下，正在发送…',
    sos_sent: '已发出紧急求助，正在发送…',
    call_1: '排队中，请稍候',
    call_2: '正在为您接通接线员',
    call_3: '{name} 已接听',
    call_3_noname: '接线员已接听',
    call_4: '通话已结束',
    call_5: '呼叫已取消',
    call_0: '状态未知',
    emergency_prefix: '紧急求助：',
    callback_prefix: '回访：',
    notice_from: '来自 {from}：{text}',
    reminder_confirm: '确认',
    reminder_reminder: '提醒：{title}',
    reminder_check_in: '{title}（请按“确认”报平安）',
    contents_title: '给您的内容',
    content_open: '打开',
    bad_credentials: '凭据不是有效的 JSON，或缺少 device_id / private_key',
    no_url: '凭据中没有 websocket_url，服务器也没有提供 device_websocket_url',
    rejected: '服务器拒绝了连接：{message}',
    server_error: '服务器报告错误：{message}',
    closed: '连接已关闭（{code}{reason}）',
    go_away: '服务器要求 {ms} 毫秒后重连',
    reconnecting: '{s} 秒后重连…',
    connect_failed: '连接失败',
    voice_failed: '语音失败',
    decode_failed: '无法解析服务器消息',
    not_connected: '尚未连接：消息会在连接后发送',
    frame_too_large: '消息超过服务器允许的大小',
    unexpected: '页面出现问题',
  },
  en: {
    page_title: 'Carebell tablet emulator',
    heading: 'Tablet emulator (development)',
    link_title: 'Connection',
    credentials_label: 'Tablet credentials (JSON, from carebell admin provision-device)',
    connect: 'Connect',
    disconnect: 'Disconnect',
    link_state: 'State: ',
    screen_title: 'Tablet screen',
    press: 'Call',
    sos: 'SOS',
    cancel_call: 'Cancel call',
    voice_label: 'Voice',
    rate_prompt: 'Please rate the service:',
    rated: 'Thank you! You gave {n} stars',
    log_title: 'Protocol log',
    pressed: 'pressed; sending…',
    sos_sent: 'SOS raised; sending…',
    call_1: 'queued',
    call_2: 'ringing',
    call_3: 'answered by {name}',
    call_3_noname: 'answered',
    call_4: 'ended',
    call_5: 'abandoned',
    call_0: 'unknown state',
    emergency_prefix: 'Emergency: ',
    callback_prefix: 'Call-back: ',
    notice_from: 'From {from}: {text}',
    reminder_confirm: 'Confirm',
    reminder_reminder: 'Reminder: {title}',
    reminder_check_in: '{title} (press Confirm to say you are OK)',
    contents_title: 'For you',
    content_open: 'Open',
    bad_credentials: 'The credentials are not valid JSON, or lack device_id / private_key',
    no_url: 'No websocket_url in the credentials and no device_websocket_url from the server',
    rejected: 'The server refused the connection: {message}',
    server_error: 'The server reported an error: {message}',
    closed: 'Connection closed ({code}{reason})',
    go_away: 'The server asks to reconnect in {ms} ms',
    reconnecting: 'reconnecting in {s} s…',
    connect_failed: 'Could not connect',
    voice_failed: 'Voice failed',
    decode_failed: 'Cannot decode a server message',
    not_connected: 'Not connected: the message is sent once connected',
    frame_too_large: 'The message is larger than the server accepts',
    unexpected: 'Something went wrong on this page',
  },
};

const CALL_STATE_WORD = {
  [CallState.UNSPECIFIED]: 'unknown',
  [CallState.QUEUED]: 'queued',
  [CallState.RINGING]: 'ringing',
  [CallState.ANSWERED]: 'answered',
  [CallState.ENDED]: 'ended',
  [CallState.ABANDONED]: 'abandoned',
};
const CREDENTIALS_KEY = 'carebell.tablet.credentials';
const SUBPROTOCOL = 'carebell.device.v1';

const i18n = createI18n(DICT);
const t = i18n.t;

const ui = {
  error: byTestId('error'),
  lang: byTestId('lang'),
  credentials: byTestId('credentials'),
  connect: byTestId('connect'),
  disconnect: byTestId('disconnect'),
  linkState: byTestId('tablet-state'),
  linkDetail: document.getElementById('link-detail'),
  press: byTestId('press'),
  sos: byTestId('sos'),
  cancel: byTestId('cancel-call'),
  callState: byTestId('call-state'),
  voiceState: byTestId('voice-state'),
  remoteAudio: document.getElementById('remote-audio'),
  notice: byTestId('notice'),
  reminder: byTestId('reminder'),
  reminderTitle: byTestId('reminder-title'),
  reminderConfirm: byTestId('reminder-confirm'),
  contents: byTestId('contents'),
  contentList: byTestId('content-list'),
  orderUpdate: byTestId('order-update'),
  rating: document.getElementById('rating'),
  rated: byTestId('rated'),
  log: document.getElementById('log'),
};

const state = {
  ws: null,
  want: false, // the user wants a connection (reconnect after drops)
  phase: 'disconnected', // connecting | hello | proof | connected | rejected | disconnected
  credentials: null, // { device_id, seed }
  nextSeq: 1,
  lastReceived: 0,
  maxFrame: 65536,
  heartbeatTimer: null,
  reconnectTimer: null,
  reconnectDelay: null,
  failures: 0,
  // Messages that must arrive: kept until acknowledged, resent after a reconnect.
  pending: [], // { name, value }
  inflight: new Map(), // seq → pending item (this connection)
  seenUpdates: new Set(),
  call: null, // the latest CallUpdate, or { local: 'pressed' | 'sos' }
  notice: null,
  reminder: null, // the Reminder shown, until confirmed
  contents: [], // ContentItems received, newest first: { item, opened }
  order: null, // the latest OrderUpdate
  ratingFor: null, // order_id awaiting a rating
  rated: null, // { order_id, stars }
  voice: null,
  voiceChain: Promise.resolve(),
  detail: null, // { key, vars } shown beside the link state
};

window.carebellVoice = { pc: null };

// ---------------------------------------------------------------------------------------------
// Errors and log

function showError(text) {
  ui.error.textContent = text || '';
  ui.error.hidden = !text;
}

setBugReporter((error) => showError(`${t('unexpected')}${t('sep')}${error?.message ?? String(error)}`));
ui.error.addEventListener('click', () => showError(''));

function log(line) {
  const stamp = new Date().toISOString().slice(11, 23);
  const text = `${stamp} ${line}\n`;
  ui.log.textContent = (ui.log.textContent + text).split('\n').slice(-300).join('\n');
}

function describeBody(envelope) {
  const name = envelope.body;
  if (!name) return `ack ${envelope.ack}`;
  const value = envelope[name] ?? {};
  const shown = {};
  for (const [key, v] of Object.entries(value)) {
    if (v instanceof Uint8Array) shown[key] = `<${v.length} bytes>`;
    else if (key === 'payload' && typeof v === 'string' && v.length > 80) shown[key] = `${v.slice(0, 77)}…`;
    else shown[key] = v;
  }
  return `${envelope.seq}/${envelope.ack} ${name} ${JSON.stringify(shown)}`;
}

// ---------------------------------------------------------------------------------------------
// Credentials

function parseCredentials() {
  let parsed;
  try {
    parsed = JSON.parse(ui.credentials.value);
  } catch {
    return null;
  }
  if (!parsed || typeof parsed.device_id !== 'string' || !parsed.device_id || typeof parsed.private_key !== 'string') return null;
  let seed;
  try {
    seed = base64ToBytes(parsed.private_key);
  } catch {
    return null;
  }
  if (seed.length !== 32) return null;
  return { device_id: parsed.device_id, seed, websocket_url: typeof parsed.websocket_url === 'string' ? parsed.websocket_url : '' };
}

const savedCredentials = loadJson(sessionStorage, CREDENTIALS_KEY);
if (typeof savedCredentials === 'string') ui.credentials.value = savedCredentials;
ui.credentials.addEventListener('change', () => saveJson(sessionStorage, CREDENTIALS_KEY, ui.credentials.value));

// ---------------------------------------------------------------------------------------------
// The link

async function connect() {
  showError('');
  const credentials = parseCredentials();
  if (!credentials) {
    showError(t('bad_credentials'));
    return;
  }
  saveJson(sessionStorage, CREDENTIALS_KEY, ui.credentials.value);
  if (state.credentials && state.credentials.device_id !== credentials.device_id) {
    // Another tablet: forget what the previous one had pending.
    state.pending = [];
    state.seenUpdates.clear();
  }
  state.credentials = credentials;
  state.want = true;
  state.failures = 0;
  clearTimeout(state.reconnectTimer);
  await open();
}

async function open() {
  if (!state.want || !state.credentials) return;
  closeSocket();
  let url = state.credentials.websocket_url;
  if (!url) {
    try {
      url = (await getConfig()).device_websocket_url ?? '';
    } catch {
      url = '';
    }
  }
  if (!url) {
    state.want = false;
    setPhase('disconnected');
    showError(t('no_url'));
    return;
  }
  let ws;
  try {
    ws = new WebSocket(url, SUBPROTOCOL);
  } catch (error) {
    state.want = false;
    setPhase('disconnected');
    showError(`${t('connect_failed')}${t('sep')}${error?.message ?? error}`);
    return;
  }
  ws.binaryType = 'arraybuffer';
  state.ws = ws;
  state.nextSeq = 1;
  state.lastReceived = 0;
  state.inflight.clear();
  state.detail = null;
  setPhase('connecting');
  log(`connecting to ${url}`);

  ws.onopen = () => {
    if (ws !== state.ws) return;
    setPhase('hello');
    sendEnvelope({
      hello: {
        device_id: state.credentials.device_id,
        protocol_versions: [1],
        firmware_version: 'web-emulator',
      },
    });
  };
  ws.onmessage = (event) => {
    if (ws !== state.ws) return;
    if (!(event.data instanceof ArrayBuffer)) return; // envelopes come in binary frames only
    let envelope;
    try {
      envelope = decodeEnvelope(new Uint8Array(event.data));
    } catch (error) {
      showError(`${t('decode_failed')}${t('sep')}${error?.message ?? error}`);
      return;
    }
    receive(envelope).catch((error) => showError(`${t('unexpected')}${t('sep')}${error?.message ?? error}`));
  };
  ws.onerror = () => {
    /* a close event follows */
  };
  ws.onclose = (event) => {
    if (ws !== state.ws) return;
    state.ws = null;
    stopHeartbeat();
    log(`closed ${event.code} ${event.reason ?? ''}`);
    if (state.phase !== 'rejected') setPhase('disconnected');
    if (event.code !== 1000 || event.reason) {
      state.detail = { key: 'closed', vars: { code: event.code, reason: event.reason ? `: ${event.reason}` : '' } };
    }
    scheduleReconnect();
    renderLink();
  };
}

function scheduleReconnect() {
  if (!state.want) return;
  let delay = state.reconnectDelay;
  state.reconnectDelay = null;
  if (delay === null || delay === undefined) {
    delay = Math.min(1000 * 2 ** Math.min(state.failures, 5), 30000) + Math.floor(Math.random() * 500);
    state.failures += 1;
  }
  state.detail = { key: 'reconnecting', vars: { s: Math.ceil(delay / 1000) } };
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(() => open(), delay);
  renderLink();
}

function closeSocket() {
  const ws = state.ws;
  state.ws = null;
  stopHeartbeat();
  if (ws) {
    try {
      ws.close(1000);
    } catch {
      /* already closing */
    }
  }
}

function disconnect() {
  state.want = false;
  clearTimeout(state.reconnectTimer);
  closeSocket();
  state.detail = null;
  setPhase('disconnected');
}

/** Sends an envelope with a body (a new seq) or, with no body, a pure acknowledgement. */
function sendEnvelope(body, item = null) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  const hasBody = Object.keys(body).length > 0;
  const envelope = { seq: hasBody ? state.nextSeq : 0, ack: state.lastReceived, ...body };
  const bytes = encodeEnvelope(envelope);
  if (bytes.length > state.maxFrame) {
    showError(t('frame_too_large'));
    return false;
  }
  try {
    ws.send(bytes);
  } catch {
    return false;
  }
  if (hasBody) {
    if (item) state.inflight.set(state.nextSeq, item);
    state.nextSeq += 1;
  }
  log(`→ ${describeBody({ ...envelope, body: hasBody ? Object.keys(body)[0] : undefined })}`);
  return true;
}

function sendAck() {
  sendEnvelope({});
}

/** Queues a message that must arrive (resent after reconnects until acknowledged). */
function sendReliable(name, value) {
  const item = { name, value };
  state.pending.push(item);
  if (state.phase === 'connected') sendEnvelope({ [name]: value }, item);
  else showError(t('not_connected'));
}

function acknowledged(ack) {
  for (const [seq, item] of Array.from(state.inflight.entries())) {
    if (seq <= ack) {
      state.inflight.delete(seq);
      state.pending = state.pending.filter((p) => p !== item);
    }
  }
}

function startHeartbeat(intervalMs) {
  stopHeartbeat();
  const every = Math.max(1000, Number(intervalMs) || 30000);
  state.heartbeatTimer = setInterval(() => {
    if (state.phase === 'connected') sendEnvelope({ heartbeat: { battery_percent: 100 } });
  }, every);
}

function stopHeartbeat() {
  clearInterval(state.heartbeatTimer);
  state.heartbeatTimer = null;
}

async function receive(envelope) {
  log(`← ${describeBody(envelope)}`);
  if (state.phase === 'connected') acknowledged(envelope.ack);
  const name = envelope.body;
  if (envelope.seq > 0 && name) state.lastReceived = Math.max(state.lastReceived, envelope.seq);
  if (!name) return;
  const value = envelope[name];
  switch (name) {
    case 'challenge': {
      if (state.phase !== 'hello') return;
      setPhase('proof');
      const ws = state.ws;
      let signature;
      try {
        signature = await signProof(state.credentials.seed, state.credentials.device_id, value.nonce);
      } catch (error) {
        showError(`${t('connect_failed')}${t('sep')}Ed25519: ${error?.message ?? error}`);
        disconnect();
        return;
      }
      if (ws !== state.ws) return;
      sendEnvelope({ proof: { signature } });
      return; // no pure acknowledgements before Welcome
    }
    case 'welcome': {
      state.maxFrame = Number(value.max_frame_bytes) || 65536;
      state.failures = 0;
      state.detail = null;
      setPhase('connected');
      startHeartbeat(value.heartbeat_interval_ms);
      // Resend what was not acknowledged, in order, with new sequence numbers.
      for (const item of state.pending) sendEnvelope({ [item.name]: item.value }, item);
      return;
    }
    case 'rejected': {
      setPhase('rejected');
      if (Number(value.reason) === RejectReason.BAD_CREDENTIALS || Number(value.reason) === RejectReason.UNSUPPORTED_VERSION) {
        state.want = false; // retrying does not change the answer
      }
      showError(t('rejected', { message: value.message || String(value.reason) }));
      return;
    }
    case 'call_update':
      if (firstTime(value.update_id)) applyCallUpdate(value);
      break;
    case 'order_update':
      if (firstTime(value.update_id)) applyOrderUpdate(value);
      break;
    case 'notice':
      if (firstTime(value.update_id)) {
        state.notice = value;
        renderScreen();
      }
      break;
    case 'reminder':
      if (firstTime(value.update_id)) {
        state.reminder = value;
        renderScreen();
      }
      break;
    case 'content_item':
      if (firstTime(value.update_id) && !state.contents.some((c) => c.item.content_id === value.content_id)) {
        state.contents.unshift({ item: value, opened: false });
        renderScreen();
      }
      break;
    case 'rtc_signal':
      onRtcSignal(value);
      break;
    case 'go_away':
      state.reconnectDelay = Number(value.reconnect_after_ms) || 0;
      state.detail = { key: 'go_away', vars: { ms: state.reconnectDelay } };
      renderLink();
      break;
    case 'error':
      showError(t('server_error', { message: `${value.message || ''} (${value.code})` }));
      break;
    default:
      break;
  }
  if (state.phase === 'connected' && envelope.seq > 0) sendAck();
}

/** Updates are resent until acknowledged: each is applied once (by update_id). */
function firstTime(updateId) {
  const key = String(updateId ?? '');
  if (!key || key === '0') return true;
  if (state.seenUpdates.has(key)) return false;
  state.seenUpdates.add(key);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Calls, alarms, orders

function applyCallUpdate(update) {
  state.call = update;
  const callState = Number(update.state);
  if ((callState === CallState.ENDED || callState === CallState.ABANDONED)
      && state.voice && state.voice.call_id === update.call_id) {
    closeVoice();
  }
  renderScreen();
}

function applyOrderUpdate(update) {
  state.order = update;
  if (update.state === 'called_back') {
    state.ratingFor = update.order_id;
    if (state.rated?.order_id === update.order_id) state.rated = null;
  } else if (state.ratingFor === update.order_id && update.state !== 'completed') {
    state.ratingFor = null;
  }
  renderScreen();
}

ui.press.addEventListener('click', () => {
  const requestId = randomHex(16);
  state.call = { local: 'pressed', request_id: requestId };
  sendReliable('call_request', { request_id: requestId, pressed_at_ms: Date.now() });
  renderScreen();
});

ui.sos.addEventListener('click', () => {
  const alarmId = randomHex(16);
  state.call = { local: 'sos', request_id: `alarm:${alarmId}` };
  sendReliable('alarm', { alarm_id: alarmId, kind: AlarmKind.SOS, raised_at_ms: Date.now(), detail: '' });
  renderScreen();
});

ui.cancel.addEventListener('click', () => {
  const requestId = state.call?.request_id;
  if (!requestId || requestId.includes(':')) return;
  sendReliable('call_cancel', { request_id: requestId });
});

ui.reminderConfirm.addEventListener('click', () => {
  const reminder = state.reminder;
  if (!reminder) return;
  sendReliable('reminder_confirm', { occurrence_id: reminder.occurrence_id });
  state.reminder = null;
  renderScreen();
});

for (const button of ui.rating.querySelectorAll('[data-stars]')) {
  button.addEventListener('click', () => {
    const orderId = state.ratingFor;
    if (!orderId) return;
    const stars = Number(button.dataset.stars);
    sendReliable('order_rating', { order_id: orderId, stars });
    state.rated = { order_id: orderId, stars };
    state.ratingFor = null;
    renderScreen();
  });
}

// ---------------------------------------------------------------------------------------------
// Voice: the console offers, the tablet answers.

function sendRtc(callId, kind, payload) {
  if (state.phase !== 'connected') return;
  sendEnvelope({ rtc_signal: { call_id: callId, kind, payload } });
}

function renderVoice() {
  const voice = state.voice;
  if (voice) ui.voiceState.textContent = voice.pc ? voice.pc.connectionState : 'new';
}

function closeVoice() {
  const voice = state.voice;
  if (!voice) return;
  state.voice = null;
  try {
    voice.pc?.close();
  } catch {
    /* already closed */
  }
  for (const track of voice.stream?.getTracks() ?? []) track.stop();
  ui.remoteAudio.srcObject = null;
  ui.voiceState.textContent = voice.pc ? 'closed' : '—';
}

function onRtcSignal(signal) {
  state.voiceChain = state.voiceChain
    .then(() => handleRtc(signal.call_id ?? '', signal.kind ?? '', signal.payload ?? ''))
    .catch((error) => showError(`${t('voice_failed')}${t('sep')}${error?.message ?? error}`));
}

async function handleRtc(callId, kind, payload) {
  if (kind === 'offer') {
    closeVoice();
    const voice = { call_id: callId, pc: null, stream: null, remoteSet: false, pending: [], answered: false, early: [] };
    state.voice = voice;
    ui.voiceState.textContent = 'new';
    let iceServers = [];
    try {
      iceServers = iceServersOf(await getConfig());
    } catch {
      iceServers = [];
    }
    const media = await navigator.mediaDevices.getUserMedia({ audio: true });
    if (state.voice !== voice) {
      for (const track of media.getTracks()) track.stop();
      return;
    }
    voice.stream = media;
    const pc = new RTCPeerConnection({ iceServers });
    voice.pc = pc;
    window.carebellVoice = { pc };
    for (const track of media.getAudioTracks()) pc.addTrack(track, media);
    pc.onicecandidate = (event) => {
      if (!event.candidate || state.voice !== voice) return;
      const candidate = JSON.stringify(event.candidate.toJSON());
      if (voice.answered) sendRtc(callId, 'candidate', candidate);
      else voice.early.push(candidate);
    };
    pc.ontrack = (event) => {
      ui.remoteAudio.srcObject = event.streams?.[0] ?? new MediaStream([event.track]);
      const playing = ui.remoteAudio.play?.();
      if (playing && typeof playing.catch === 'function') playing.catch(() => {});
    };
    pc.onconnectionstatechange = () => renderVoice();
    await pc.setRemoteDescription({ type: 'offer', sdp: payload });
    voice.remoteSet = true;
    for (const candidate of voice.pending.splice(0)) await pc.addIceCandidate(candidate);
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (state.voice !== voice) return;
    sendRtc(callId, 'answer', pc.localDescription?.sdp ?? answer.sdp);
    voice.answered = true;
    for (const candidate of voice.early.splice(0)) sendRtc(callId, 'candidate', candidate);
    renderVoice();
  } else if (kind === 'candidate') {
    const voice = state.voice;
    if (!voice || voice.call_id !== callId) return;
    let candidate;
    try {
      candidate = JSON.parse(payload);
    } catch {
      return;
    }
    if (voice.remoteSet && voice.pc) await voice.pc.addIceCandidate(candidate);
    else voice.pending.push(candidate);
  } else if (kind === 'hangup') {
    if (state.voice && state.voice.call_id === callId) closeVoice();
  }
}

// ---------------------------------------------------------------------------------------------
// Rendering

function setPhase(phase) {
  state.phase = phase;
  renderLink();
}

function renderLink() {
  // The machine-readable word ("connected", "disconnected", ...), whatever the language.
  const word = state.phase === 'hello' || state.phase === 'proof' ? 'connecting' : state.phase;
  ui.linkState.textContent = word;
  ui.linkState.className = word === 'connected' ? 'connected' : word === 'connecting' ? '' : 'disconnected';
  ui.linkDetail.textContent = state.detail ? t(state.detail.key, state.detail.vars) : '';
  ui.connect.disabled = state.phase !== 'disconnected' && state.phase !== 'rejected';
  ui.disconnect.disabled = !state.want && !state.ws;
}

function callText(call) {
  if (call.local === 'pressed') return { word: 'pressed', text: t('pressed') };
  if (call.local === 'sos') return { word: 'pressed', text: t('sos_sent') };
  const callState = Number(call.state ?? 0);
  const word = CALL_STATE_WORD[callState] ?? 'unknown';
  let text;
  if (callState === CallState.ANSWERED) {
    text = call.operator_display_name ? t('call_3', { name: call.operator_display_name }) : t('call_3_noname');
  } else {
    text = t(`call_${callState}`);
    if (text === `call_${callState}`) text = t('call_0');
  }
  if (call.reason && (callState === CallState.ENDED || callState === CallState.ABANDONED || callState === CallState.QUEUED)) {
    text += ` (${call.reason})`;
  }
  const requestId = call.request_id ?? '';
  if (requestId.startsWith('alarm:')) text = `${t('emergency_prefix')}${text}`;
  else if (requestId.startsWith('callback:')) text = `${t('callback_prefix')}${text}`;
  // In Chinese, the protocol's word follows in brackets (this is a developer's tool).
  if (i18n.lang === 'zh') text += ` (${word})`;
  return { word, text };
}

function renderScreen() {
  const call = state.call;
  if (call) {
    const { word, text } = callText(call);
    ui.callState.textContent = text;
    ui.callState.dataset.state = word;
    const requestId = call.request_id ?? '';
    const cancellable = !requestId.includes(':')
      && (call.local === 'pressed' || [CallState.QUEUED, CallState.RINGING].includes(Number(call.state)));
    ui.cancel.hidden = !cancellable;
  } else {
    ui.callState.textContent = '';
    delete ui.callState.dataset.state;
    ui.cancel.hidden = true;
  }

  const notice = state.notice;
  ui.notice.hidden = !notice;
  ui.notice.textContent = notice
    ? (notice.from ? t('notice_from', { from: notice.from, text: notice.text ?? '' }) : (notice.text ?? ''))
    : '';

  const order = state.order;
  ui.orderUpdate.hidden = !order;
  if (order) {
    const line = i18n.lang === 'en' ? order.text_en || order.text_zh : order.text_zh || order.text_en;
    ui.orderUpdate.textContent = line || `${order.service_name_zh || order.service_name_en || ''} ${order.state ?? ''}`.trim();
    ui.orderUpdate.dataset.state = order.state ?? '';
  }

  const reminder = state.reminder;
  ui.reminder.hidden = !reminder;
  ui.reminderTitle.textContent = reminder
    ? t(reminder.kind === 'check_in' ? 'reminder_check_in' : 'reminder_reminder', { title: reminder.title ?? '' })
    : '';
  ui.reminder.dataset.kind = reminder?.kind ?? '';

  ui.contents.hidden = state.contents.length === 0;
  ui.contentList.replaceChildren(...state.contents.map((entry) => {
    const li = document.createElement('li');
    li.dataset.testid = 'content-item';
    li.dataset.contentId = entry.item.content_id;
    const title = document.createElement('strong');
    title.textContent = entry.item.title ?? '';
    li.append(title);
    if (entry.opened) {
      const body = document.createElement('p');
      body.dataset.testid = 'content-body';
      body.textContent = entry.item.body ?? '';
      li.append(body);
    } else {
      const open = document.createElement('button');
      open.type = 'button';
      open.dataset.testid = 'content-open';
      open.textContent = t('content_open');
      open.addEventListener('click', () => {
        sendReliable('content_opened', { content_id: entry.item.content_id });
        entry.opened = true;
        renderScreen();
      });
      li.append(' ', open);
    }
    return li;
  }));

  ui.rating.hidden = !state.ratingFor;
  ui.rated.hidden = !state.rated;
  ui.rated.textContent = state.rated ? t('rated', { n: state.rated.stars }) : '';
}

function renderAll() {
  renderLink();
  renderScreen();
}

ui.connect.addEventListener('click', () => {
  connect().catch((error) => showError(`${t('connect_failed')}${t('sep')}${error?.message ?? error}`));
});
ui.disconnect.addEventListener('click', () => disconnect());

const renderLangButton = () => {
  ui.lang.textContent = t('lang_switch');
  ui.lang.setAttribute('aria-label', t('lang_switch_label'));
};
ui.lang.addEventListener('click', () => i18n.toggle());
i18n.onChange(() => {
  renderLangButton();
  renderAll();
});
i18n.apply();
renderLangButton();
renderAll();
