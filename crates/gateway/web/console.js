// The operator console: sign-in and status, the live feed (offers, withdrawn offers, call
// changes, alerts, voice signalling), the resident card, the call panel (note, disposition,
// service orders, voice), the emergency alarm screen with the family cascade, and the
// supervisor's view of the queues.

import {
  beep, byTestId, createI18n, el, fmtAgo, fmtDistance, fmtDuration, fmtMoney, fmtTime, getConfig,
  iceServersOf, isActivatable, isTyping, loadJson, orderStateText, reportBug, rpc, saveJson,
  setChildren, setupPage, stream,
} from './common.js';

const DICT = {
  zh: {
    page_title: 'Carebell 坐席台',
    heading: '坐席台',
    sign_in_heading: '坐席登录',
    status_label: '状态',
    status_0: '未知',
    status_1: '下线',
    status_2: '空闲（可接听）',
    status_3: '暂离',
    status_4: '通话中',
    status_5: '整理中',
    status_6: '已暂停',
    link_up: '● 已连接',
    link_down: '● 连接中断，正在重连…',
    offers_title: '来电',
    no_offers: '暂无来电',
    alerts_title: '提醒',
    card_title: '老人信息',
    waiting: '正在等待来电…',
    loading: '正在读取资料…',
    medical: '医疗情况',
    key_safe: '钥匙/进门',
    address: '地址',
    phone: '电话',
    dialect: '方言',
    station: '服务站',
    contacts: '紧急联系人',
    devices: '设备',
    recent: '最近通话',
    open_orders: '进行中的工单',
    accept: '接听',
    decline: '转给他人',
    kind_0: '呼叫',
    kind_1: '普通呼叫',
    kind_2: '紧急求助',
    kind_3: '设备告警',
    kind_4: '回访',
    ikind_call: '呼叫',
    ikind_emergency: '紧急求助',
    ikind_technical: '设备告警',
    ikind_callback: '回访',
    istate_answered: '通话中',
    istate_ended: '已结束',
    istate_abandoned: '已放弃',
    istate_queued: '排队中',
    istate_ringing: '响铃中',
    waited: '已等待 {t}',
    on_call: '通话中',
    unknown_resident: '（资料未读取）',
    resumed_call: '恢复的通话',
    voice_start: '开始语音',
    voice_label: '语音状态',
    checklist_title: '紧急处置清单',
    action_called_senior: '已回拨老人',
    action_called_120: '已拨打 120',
    action_notified_family: '已通知家属',
    action_sent_responder: '已派人上门',
    note: '通话记录',
    dispositions_hint: '选择通话结果即结束通话：',
    disposition_accidental_press: '误按',
    disposition_companionship: '陪伴聊天',
    disposition_information: '咨询信息',
    disposition_service_request: '服务需求',
    disposition_health_concern: '健康问题',
    disposition_emergency: '紧急情况',
    call_ended: '通话已结束，结果：{d}。继续等待来电。',
    call_ended_elsewhere: '通话已在别处结束。继续等待来电。',
    order_title: '派单（上门服务）',
    order_service: '服务项目',
    order_note: '工单备注',
    suggest: '推荐服务商',
    create_order: '创建工单',
    no_suggestions: '没有可推荐的服务商',
    in_circle: '10 分钟服务圈内',
    out_circle: '服务圈外',
    distance_unknown: '距离未知',
    travel: '约 {n} 分钟到达',
    load: '在办 {a}/{c}',
    rating: '评分 {r}',
    unrated: '暂无评分',
    order_created: '工单已创建。状态：{state}；已派给：{provider}',
    order_waiting: '工单已创建。状态：{state}（暂无空闲服务商，有空即自动派单）',
    contact_position: '第 {n} 顺位',
    contact_parallel: '同时通知',
    holds_keys: '有钥匙',
    online: '在线',
    offline: '离线',
    last_seen: '最后联系 {ago}',
    eta: '预计 {t} 到达',
    alarm_title: '紧急求助',
    alarm_dismiss: '关闭警报',
    alarm_countdown: '距离升级还有',
    seconds: '秒',
    escalated: '已升级：{reason}',
    alarm_ringing: '正在响铃，请立即接听！',
    alarm_withdrawn_expired: '响铃超时，仍在等待接听（警报保持显示）',
    alarm_withdrawn_taken: '已由其他坐席接听',
    alarm_withdrawn_cancelled: '呼叫已取消',
    alarm_withdrawn_other: '响铃已结束（{reason}）',
    alarm_accepted: '您已接听此紧急求助',
    alarm_more: '另有 {n} 个紧急警报',
    cascade_title: '家属通知',
    cascade_not_started: '尚未开始通知家属',
    cascade_started: '开始通知：{t}',
    cascade_empty: '没有登记的家属',
    cascade_name: '姓名',
    cascade_relationship: '关系',
    cascade_state: '状态',
    cascade_time: '时间',
    cascade_waiting: '等待中',
    cascade_sent: '已通知',
    cascade_acknowledged: '已确认',
    cascade_expired: '未回应',
    cascade_cancelled: '已取消',
    cascade_ack_line: '{name} 已确认，正在赶来',
    supervisor_title: '班长视图',
    service_level: '60 秒接通率（24 小时）',
    answered_abandoned: '接听 / 放弃',
    asa: '平均应答',
    queues: '队列',
    queue: '队列',
    waiting_count: '等待',
    longest: '最长等待',
    available_ops: '可用坐席',
    waiting_items: '等待中的呼叫',
    operators: '坐席',
    ringing: '响铃中',
    none_waiting: '没有等待中的呼叫',
    in_status: '{t}',
    alert_call: '呼叫超时提醒：{name}{reason}',
    alert_order: '工单超时提醒（{id}）：{reason}',
    accept_failed: '接听失败',
    decline_failed: '转接失败',
    end_failed: '结束通话失败',
    status_failed: '更改状态失败',
    resident_failed: '读取老人资料失败',
    catalogue_failed: '读取服务目录失败',
    suggest_failed: '推荐服务商失败',
    order_failed: '创建工单失败',
    action_failed: '记录处置失败',
    cascade_failed: '读取家属通知失败',
    voice_failed: '语音失败',
    stream_failed: '实时连接失败',
    choose_service: '请先选择服务项目',
    shortcuts_label: '快捷键：',
    shortcut_accept: '接听选中的来电',
    shortcut_end: '选择通话结果并结束通话',
    shortcut_typing: '在输入框中打字时快捷键不生效',
    status_reason: '（{reason}）',
  },
  en: {
    page_title: 'Carebell console',
    heading: 'Operator console',
    sign_in_heading: 'Operator sign-in',
    status_label: 'Status',
    status_0: 'Unknown',
    status_1: 'Offline',
    status_2: 'Available',
    status_3: 'Away',
    status_4: 'On a call',
    status_5: 'Wrap-up',
    status_6: 'Paused',
    link_up: '● Connected',
    link_down: '● Connection lost, reconnecting…',
    offers_title: 'Incoming calls',
    no_offers: 'No calls waiting',
    alerts_title: 'Alerts',
    card_title: 'Resident',
    waiting: 'Waiting for calls…',
    loading: 'Loading the record…',
    medical: 'Medical notes',
    key_safe: 'Key safe / access',
    address: 'Address',
    phone: 'Phone',
    dialect: 'Dialect',
    station: 'Station',
    contacts: 'Contacts',
    devices: 'Devices',
    recent: 'Recent calls',
    open_orders: 'Open service orders',
    accept: 'Accept',
    decline: 'Pass on',
    kind_0: 'Call',
    kind_1: 'Call',
    kind_2: 'Emergency',
    kind_3: 'Technical alarm',
    kind_4: 'Call-back',
    ikind_call: 'call',
    ikind_emergency: 'emergency',
    ikind_technical: 'technical',
    ikind_callback: 'call-back',
    istate_answered: 'in progress',
    istate_ended: 'ended',
    istate_abandoned: 'abandoned',
    istate_queued: 'queued',
    istate_ringing: 'ringing',
    waited: 'waiting {t}',
    on_call: 'On call',
    unknown_resident: '(record not loaded)',
    resumed_call: 'Resumed call',
    voice_start: 'Start voice',
    voice_label: 'Voice',
    checklist_title: 'Alarm checklist',
    action_called_senior: 'Called the senior',
    action_called_120: 'Called 120',
    action_notified_family: 'Notified the family',
    action_sent_responder: 'Sent a responder',
    note: 'Call note',
    dispositions_hint: 'Choose the outcome to end the call:',
    disposition_accidental_press: 'Accidental press',
    disposition_companionship: 'Companionship',
    disposition_information: 'Information',
    disposition_service_request: 'Service request',
    disposition_health_concern: 'Health concern',
    disposition_emergency: 'Emergency',
    call_ended: 'Call ended: {d}. Waiting for the next call.',
    call_ended_elsewhere: 'The call was ended elsewhere. Waiting for the next call.',
    order_title: 'Service order (home visit)',
    order_service: 'Service',
    order_note: 'Order note',
    suggest: 'Suggest providers',
    create_order: 'Create order',
    no_suggestions: 'No provider to suggest',
    in_circle: 'in the 10-minute circle',
    out_circle: 'outside the circle',
    distance_unknown: 'distance unknown',
    travel: 'about {n} min away',
    load: 'load {a}/{c}',
    rating: 'rating {r}',
    unrated: 'unrated',
    order_created: 'Order created. State: {state}; offered to: {provider}',
    order_waiting: 'Order created. State: {state} (no provider free now; it is offered as soon as one is)',
    contact_position: 'order {n}',
    contact_parallel: 'told at once',
    holds_keys: 'holds keys',
    online: 'online',
    offline: 'offline',
    last_seen: 'last seen {ago}',
    eta: 'arrives {t}',
    alarm_title: 'EMERGENCY',
    alarm_dismiss: 'Dismiss alarm',
    alarm_countdown: 'Escalates in',
    seconds: 's',
    escalated: 'Escalated: {reason}',
    alarm_ringing: 'Ringing: accept now!',
    alarm_withdrawn_expired: 'Ring timed out; still waiting to be answered (the alarm stays up)',
    alarm_withdrawn_taken: 'Taken by another operator',
    alarm_withdrawn_cancelled: 'The call was cancelled',
    alarm_withdrawn_other: 'No longer ringing ({reason})',
    alarm_accepted: 'You have accepted this emergency',
    alarm_more: '{n} more emergency alarm(s)',
    cascade_title: 'Family cascade',
    cascade_not_started: 'The family has not been told yet',
    cascade_started: 'Started at {t}',
    cascade_empty: 'No family contacts on record',
    cascade_name: 'Name',
    cascade_relationship: 'Relationship',
    cascade_state: 'State',
    cascade_time: 'Time',
    cascade_waiting: 'waiting',
    cascade_sent: 'notified',
    cascade_acknowledged: 'acknowledged',
    cascade_expired: 'no answer',
    cascade_cancelled: 'cancelled',
    cascade_ack_line: '{name} acknowledged — on the way',
    supervisor_title: 'Supervisor view',
    service_level: 'Answered within 60 s (24 h)',
    answered_abandoned: 'Answered / abandoned',
    asa: 'Average speed of answer',
    queues: 'Queues',
    queue: 'Queue',
    waiting_count: 'Waiting',
    longest: 'Longest wait',
    available_ops: 'Available',
    waiting_items: 'Waiting calls',
    operators: 'Operators',
    ringing: 'ringing',
    none_waiting: 'No calls waiting',
    in_status: '{t}',
    alert_call: 'Waiting too long: {name}{reason}',
    alert_order: 'Order past its deadline ({id}): {reason}',
    accept_failed: 'Could not accept',
    decline_failed: 'Could not pass the call on',
    end_failed: 'Could not end the call',
    status_failed: 'Could not change the status',
    resident_failed: 'Could not load the resident',
    catalogue_failed: 'Could not load the service catalogue',
    suggest_failed: 'Could not suggest providers',
    order_failed: 'Could not create the order',
    action_failed: 'Could not record the action',
    cascade_failed: 'Could not read the family cascade',
    voice_failed: 'Voice failed',
    stream_failed: 'Live connection failed',
    choose_service: 'Choose a service first',
    shortcuts_label: 'Shortcuts: ',
    shortcut_accept: 'accept the selected call',
    shortcut_end: 'choose the outcome and end the call',
    shortcut_typing: 'shortcuts are off while typing in a field',
    status_reason: ' ({reason})',
  },
};

const DISPOSITIONS = [
  'accidental_press', 'companionship', 'information', 'service_request', 'health_concern', 'emergency',
];
const KIND_EMERGENCY = 2;
const STATUS_AVAILABLE = 2;
const CALL_KEY = 'carebell.console.call';
const RING_EVERY_MS = 1600;
const ENDED_NOTICE_MS = 4000;

const i18n = createI18n(DICT);
const t = i18n.t;

// ---------------------------------------------------------------------------------------------
// State

const state = {
  session: null,
  events: null,
  queues: null,
  linkUp: false,
  clockOffset: 0, // server time − local time, from the events' at_ms
  offers: new Map(), // offer_id → { ...offer, receivedAt }
  selectedOfferId: null,
  residents: new Map(), // resident_id → ResidentRecord
  loadingResident: null,
  accepting: false,
  declining: false,
  call: null, // { call_id, resident_id, resident_name, kind, resident, startedAt, ending, actions }
  alarms: [], // { call_id, resident_id, resident_name, escalates_at_ms, offer_id, status, escalated, accepted }
  cascade: { call_id: null, data: null, inFlight: false, failedFor: null },
  catalogue: [],
  desiredStatus: STATUS_AVAILABLE,
  currentStatus: 0,
  statusReason: '',
  supervisor: null,
  alertsLog: [],
  escalations: new Map(), // call_id → reason of a supervisor alert
  endedText: null, // { key, vars } of the call-ended notice
  voice: null,
  endedTimer: null,
  resumeTimer: null,
  orderResult: null,
  suggestions: null,
  tickers: [],
};

window.carebellVoice = { pc: null };

const serverNow = () => Date.now() + state.clockOffset;

// ---------------------------------------------------------------------------------------------
// Elements

const ui = {
  status: byTestId('status'),
  statusReason: document.getElementById('status-reason'),
  linkState: document.getElementById('link-state'),
  grid: document.getElementById('console-grid'),
  offers: byTestId('offers'),
  noOffers: document.getElementById('no-offers'),
  alertsBox: document.getElementById('alerts-box'),
  alertsLog: byTestId('alerts-log'),
  waitingNote: document.getElementById('waiting-note'),
  card: byTestId('card'),
  cardName: byTestId('card-name'),
  cardKind: document.getElementById('card-kind'),
  cardLoading: document.getElementById('card-loading'),
  cardRisks: byTestId('card-risks'),
  cardMedical: byTestId('card-medical'),
  cardKeySafe: byTestId('card-key-safe'),
  cardAddress: byTestId('card-address'),
  cardPhone: byTestId('card-phone'),
  cardDialect: byTestId('card-dialect'),
  cardStation: byTestId('card-station'),
  cardContacts: byTestId('card-contacts'),
  cardDevices: byTestId('card-devices'),
  cardRecent: byTestId('card-recent'),
  cardOrders: byTestId('card-orders'),
  acceptRow: document.getElementById('accept-row'),
  accept: byTestId('accept'),
  decline: byTestId('decline'),
  callEnded: byTestId('call-ended'),
  call: byTestId('call'),
  callWho: document.getElementById('call-who'),
  callTimer: document.getElementById('call-timer'),
  voiceStart: byTestId('voice-start'),
  voiceState: byTestId('voice-state'),
  remoteAudio: document.getElementById('remote-audio'),
  checklist: byTestId('checklist'),
  note: document.getElementById('note'),
  dispositionButtons: Array.from(document.querySelectorAll('[data-disposition]')),
  orderService: byTestId('order-service'),
  orderNote: document.getElementById('order-note'),
  suggest: byTestId('suggest'),
  createOrder: byTestId('create-order'),
  orderCreated: byTestId('order-created'),
  suggestions: byTestId('suggestions'),
  alarm: byTestId('alarm'),
  alarmName: byTestId('alarm-name'),
  alarmDismiss: byTestId('alarm-dismiss'),
  countdown: byTestId('countdown'),
  escalated: byTestId('escalated'),
  alarmStatus: document.getElementById('alarm-status'),
  cascadeAcks: document.getElementById('cascade-acks'),
  cascade: byTestId('cascade'),
  alarmMore: document.getElementById('alarm-more'),
  supervisor: byTestId('supervisor'),
  serviceLevel: byTestId('service-level'),
  answeredAbandoned: document.getElementById('answered-abandoned'),
  asa: document.getElementById('asa'),
  supervisorQueues: byTestId('supervisor-queues'),
  supervisorWaiting: byTestId('supervisor-waiting'),
  supervisorOperators: byTestId('supervisor-operators'),
};

// ---------------------------------------------------------------------------------------------
// Page

const page = setupPage({
  service: 'console',
  i18n,
  onSignedIn: start,
  onSignedOut: stop,
  // Closing the feed (in stop) is what takes the operator offline on the server.
});

function start(session) {
  state.session = session;
  state.desiredStatus = STATUS_AVAILABLE;
  loadCatalogue();
  openEvents();
  openSupervisor();
  state.tickers.push(setInterval(tick, 500));
  state.tickers.push(setInterval(ring, RING_EVERY_MS));
  state.tickers.push(setInterval(pollCascade, 1000));
  renderAll();
}

function stop() {
  state.events?.close();
  state.queues?.close();
  state.events = null;
  state.queues = null;
  for (const ticker of state.tickers) clearInterval(ticker);
  state.tickers = [];
  stopVoice(false);
  state.session = null;
  state.offers.clear();
  state.selectedOfferId = null;
  state.call = null;
  state.alarms = [];
  state.cascade = { call_id: null, data: null, inFlight: false, failedFor: null };
  state.supervisor = null;
  state.alertsLog = [];
  state.escalations.clear();
  state.orderResult = null;
  state.suggestions = null;
  state.currentStatus = 0;
  state.statusReason = '';
  clearTimeout(state.endedTimer);
  clearTimeout(state.resumeTimer);
  ui.callEnded.hidden = true;
  ui.supervisor.hidden = true;
  saveJson(sessionStorage, CALL_KEY, null);
  renderAll();
}

function fail(error, contextKey) {
  page.showError(error, contextKey);
}

// ---------------------------------------------------------------------------------------------
// The live feed

function openEvents() {
  state.events = stream('console', 'Subscribe', {}, onEvent, (error) => {
    if (error.code === 'unauthenticated') page.expire();
    else fail(error, 'stream_failed');
  }, {
    onOpen: () => {
      state.linkUp = true;
      renderLink();
      // Available on sign-in (and again after a reconnect), unless a call is still held: the
      // feed then resumes it first (a saved call the feed does not resume is forgotten).
      if (state.call) return;
      if (!loadJson(sessionStorage, CALL_KEY)) {
        applyStatus(state.desiredStatus, true);
        return;
      }
      clearTimeout(state.resumeTimer);
      state.resumeTimer = setTimeout(() => {
        if (state.session && !state.call) {
          saveJson(sessionStorage, CALL_KEY, null);
          applyStatus(state.desiredStatus, true);
        }
      }, 3000);
    },
    onDrop: () => {
      state.linkUp = false;
      renderLink();
    },
  });
}

function onEvent(message) {
  const atMs = Number(message?.at_ms ?? 0);
  if (atMs > 0) state.clockOffset = atMs - Date.now();
  const event = message?.event ?? {};
  if (event.offer) onOffer(event.offer);
  else if (event.offer_withdrawn) onOfferWithdrawn(event.offer_withdrawn);
  else if (event.call_changed) onCallChanged(event.call_changed);
  else if (event.status_changed) onStatusChanged(event.status_changed);
  else if (event.alert) onAlert(event.alert);
  else if (event.rtc_signal) onRtcSignal(event.rtc_signal);
}

function onOffer(raw) {
  const offer = {
    offer_id: raw.offer_id ?? '',
    call_id: raw.call_id ?? '',
    resident_id: raw.resident_id ?? '',
    resident_name: raw.resident_name ?? '',
    device_id: raw.device_id ?? '',
    kind: Number(raw.kind ?? 0),
    expires_at_ms: Number(raw.expires_at_ms ?? 0),
    call_created_at_ms: Number(raw.call_created_at_ms ?? 0),
    queue_id: raw.queue_id ?? '',
    escalates_at_ms: Number(raw.escalates_at_ms ?? 0),
    receivedAt: serverNow(),
  };
  if (!offer.offer_id) return;
  if (state.call && state.call.call_id === offer.call_id) return; // already ours
  const isNew = !state.offers.has(offer.offer_id);
  state.offers.set(offer.offer_id, offer);
  const selected = state.offers.get(state.selectedOfferId);
  // The newest offer pops the card, but an emergency is never pushed aside by a lesser call.
  if (!selected || offer.kind === KIND_EMERGENCY || selected.kind !== KIND_EMERGENCY) {
    state.selectedOfferId = offer.offer_id;
  }
  if (offer.kind === KIND_EMERGENCY) raiseAlarm(offer);
  if (offer.resident_id) loadResident(offer.resident_id);
  if (isNew) beep(offer.kind === KIND_EMERGENCY ? { frequency: 1050, repeat: 3 } : {});
  renderAll();
}

function onOfferWithdrawn(withdrawn) {
  const offerId = withdrawn.offer_id ?? '';
  const callId = withdrawn.call_id ?? '';
  const reason = withdrawn.reason ?? '';
  removeOffer(offerId);
  for (const alarm of state.alarms) {
    if (alarm.call_id === callId && alarm.offer_id === offerId && !alarm.accepted) {
      alarm.status = { withdrawn: reason };
    }
  }
  renderAll();
}

function removeOffer(offerId) {
  state.offers.delete(offerId);
  if (state.selectedOfferId === offerId) {
    // The next offer in line: emergencies first, then the newest.
    const rest = Array.from(state.offers.values());
    rest.sort((a, b) => (b.kind === KIND_EMERGENCY) - (a.kind === KIND_EMERGENCY) || b.receivedAt - a.receivedAt);
    state.selectedOfferId = rest[0]?.offer_id ?? null;
  }
}

function onCallChanged(change) {
  const callId = change.call_id ?? '';
  const callState = change.state ?? '';
  if (!callId) return;
  if (callState === 'answered') {
    if (state.call?.call_id === callId || state.accepting) return;
    if (state.call) return; // one call at a time
    // A console that reconnects (or a reloaded page) resumes the call its operator holds.
    const saved = loadJson(sessionStorage, CALL_KEY);
    const info = saved?.call_id === callId ? saved : { call_id: callId, kind: 0, resident_id: '', resident_name: '' };
    startCall({ ...info, resident: null, resumed: saved?.call_id !== callId });
    return;
  }
  if (state.call?.call_id === callId && !state.call.ending) {
    finishCall(callId, { elsewhere: true });
  }
}

function onStatusChanged(change) {
  state.currentStatus = Number(change.status ?? 0);
  state.statusReason = change.reason ?? '';
  renderStatus();
}

function onAlert(alert) {
  const callId = alert.call_id ?? '';
  const reason = alert.reason ?? '';
  let matched = false;
  if (callId) state.escalations.set(callId, reason || ' ');
  for (const alarm of state.alarms) {
    if (callId && alarm.call_id === callId) {
      alarm.escalated = reason || ' ';
      matched = true;
    }
  }
  const name = callId
    ? (Array.from(state.offers.values()).find((o) => o.call_id === callId)?.resident_name
      ?? state.alarms.find((a) => a.call_id === callId)?.resident_name ?? '')
    : '';
  state.alertsLog.unshift({ at: Date.now(), call_id: callId, order_id: alert.order_id ?? '', reason, name });
  state.alertsLog.length = Math.min(state.alertsLog.length, 20);
  if (!matched) beep({ frequency: 660, repeat: 1 });
  renderAlarm();
  renderAlerts();
}

// ---------------------------------------------------------------------------------------------
// Status

async function applyStatus(status, automatic = false) {
  for (let attempt = 0; attempt < 3; attempt += 1) {
    try {
      const response = await rpc('console', 'SetStatus', { status });
      state.currentStatus = Number(response.status ?? status);
      state.statusReason = '';
      state.desiredStatus = status;
      renderStatus();
      return;
    } catch (error) {
      const retry = automatic && (error.code === 'failed_precondition' || error.code === 'unavailable') && attempt < 2;
      if (!retry) {
        fail(error, 'status_failed');
        renderStatus();
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 700));
    }
  }
}

ui.status.addEventListener('change', () => {
  const status = Number(ui.status.value);
  if (![1, 2, 3].includes(status)) return;
  applyStatus(status);
});

// ---------------------------------------------------------------------------------------------
// Residents

async function loadResident(residentId) {
  if (!residentId) return;
  if (state.loadingResident === residentId) return;
  state.loadingResident = residentId;
  renderCard();
  try {
    const record = await rpc('console', 'GetResident', { resident_id: residentId });
    state.residents.set(residentId, record);
  } catch (error) {
    fail(error, 'resident_failed');
  } finally {
    if (state.loadingResident === residentId) state.loadingResident = null;
    renderCard();
  }
}

// ---------------------------------------------------------------------------------------------
// Accepting, declining

async function acceptSelected() {
  const offer = state.offers.get(state.selectedOfferId);
  if (!offer || state.accepting || state.call || !state.session) return;
  state.accepting = true;
  renderAcceptRow();
  try {
    const response = await rpc('console', 'Accept', { offer_id: offer.offer_id });
    removeOffer(offer.offer_id);
    const resident = response.resident ?? null;
    if (resident?.resident_id) state.residents.set(resident.resident_id, resident);
    startCall({
      call_id: response.call_id || offer.call_id,
      resident_id: resident?.resident_id || offer.resident_id,
      resident_name: resident?.full_name || offer.resident_name,
      kind: offer.kind,
      resident,
    });
  } catch (error) {
    removeOffer(offer.offer_id);
    fail(error, 'accept_failed');
  } finally {
    state.accepting = false;
    renderAll();
  }
}

async function declineSelected() {
  const offer = state.offers.get(state.selectedOfferId);
  if (!offer || state.declining || state.accepting || state.call) return;
  state.declining = true;
  renderAcceptRow();
  try {
    await rpc('console', 'Decline', { offer_id: offer.offer_id });
  } catch (error) {
    fail(error, 'decline_failed');
  } finally {
    removeOffer(offer.offer_id);
    state.declining = false;
    renderAll();
  }
}

ui.accept.addEventListener('click', () => acceptSelected());
ui.decline.addEventListener('click', () => declineSelected());

// ---------------------------------------------------------------------------------------------
// The call

function startCall({ call_id, resident_id = '', resident_name = '', kind = 0, resident = null, resumed = false }) {
  clearTimeout(state.endedTimer);
  ui.callEnded.hidden = true;
  state.call = {
    call_id,
    resident_id: resident_id || resident?.resident_id || '',
    resident_name: resident_name || resident?.full_name || '',
    kind: Number(kind) || 0,
    startedAt: Date.now(),
    ending: false,
    resumed,
    actions: new Set(),
  };
  saveJson(sessionStorage, CALL_KEY, {
    call_id, resident_id: state.call.resident_id, resident_name: state.call.resident_name, kind: state.call.kind,
  });
  for (const alarm of state.alarms) if (alarm.call_id === call_id) alarm.accepted = true;
  for (const offer of Array.from(state.offers.values())) if (offer.call_id === call_id) removeOffer(offer.offer_id);
  state.orderResult = null;
  state.suggestions = null;
  ui.note.value = '';
  ui.orderNote.value = '';
  if (!state.voice) ui.voiceState.textContent = '—';
  for (const box of ui.checklist.querySelectorAll('input[type=checkbox]')) {
    box.checked = false;
    box.disabled = false;
  }
  if (state.call.resident_id && !state.residents.has(state.call.resident_id)) loadResident(state.call.resident_id);
  if (document.activeElement instanceof HTMLElement && document.activeElement !== document.body) {
    document.activeElement.blur();
  }
  renderAll();
}

async function endCall(dispositionNumber) {
  const call = state.call;
  if (!call || call.ending) return;
  call.ending = true;
  renderCall();
  try {
    await rpc('console', 'EndCall', { call_id: call.call_id, disposition: dispositionNumber, note: ui.note.value });
    finishCall(call.call_id, { disposition: DISPOSITIONS[dispositionNumber - 1] });
  } catch (error) {
    call.ending = false;
    fail(error, 'end_failed');
    // The call is no longer ours to end (gone, or taken back): return to waiting.
    if (error.code === 'not_found' || error.code === 'failed_precondition' || error.code === 'permission_denied') {
      finishCall(call.call_id, { elsewhere: true });
    } else {
      renderCall();
    }
  }
}

function finishCall(callId, { disposition = '', elsewhere = false } = {}) {
  if (!state.call || state.call.call_id !== callId) return;
  stopVoice(true);
  state.call = null;
  saveJson(sessionStorage, CALL_KEY, null);
  state.alarms = state.alarms.filter((alarm) => alarm.call_id !== callId);
  state.orderResult = null;
  state.suggestions = null;
  ui.note.value = '';
  state.endedText = elsewhere
    ? { key: 'call_ended_elsewhere', vars: {} }
    : { key: 'call_ended', vars: { disposition } };
  renderEnded();
  ui.callEnded.hidden = false;
  clearTimeout(state.endedTimer);
  state.endedTimer = setTimeout(() => {
    ui.callEnded.hidden = true;
  }, ENDED_NOTICE_MS);
  renderAll();
}

for (const button of ui.dispositionButtons) {
  button.addEventListener('click', () => endCall(Number(button.dataset.disposition)));
}

// The alarm checklist.
for (const box of ui.checklist.querySelectorAll('input[type=checkbox]')) {
  box.addEventListener('change', async () => {
    const call = state.call;
    if (!call || !box.checked) return;
    const action = Number(box.dataset.action);
    box.disabled = true;
    try {
      await rpc('console', 'RecordAlarmAction', { call_id: call.call_id, action, note: '' });
      call.actions.add(action);
    } catch (error) {
      box.checked = false;
      box.disabled = false;
      fail(error, 'action_failed');
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Service orders

async function loadCatalogue() {
  try {
    const response = await rpc('console', 'Catalogue', {});
    state.catalogue = response.items ?? [];
  } catch (error) {
    state.catalogue = [];
    fail(error, 'catalogue_failed');
  }
  renderCatalogue();
}

function serviceName(item) {
  if (!item) return '';
  return (i18n.lang === 'en' ? item.name_en || item.name_zh : item.name_zh || item.name_en) || item.code || '';
}

function renderCatalogue() {
  const chosen = ui.orderService.value;
  setChildren(ui.orderService, state.catalogue.map((item) => el('option', { value: item.code ?? '' },
    `${serviceName(item)}${item.default_price_fen ? ` · ${fmtMoney(item.default_price_fen)}` : ''}`)));
  if (chosen && state.catalogue.some((item) => item.code === chosen)) ui.orderService.value = chosen;
}

function callResidentId() {
  return state.call?.resident_id || '';
}

async function suggestProviders() {
  const serviceCode = ui.orderService.value;
  if (!state.call) return;
  if (!serviceCode) {
    page.showMessage(t('choose_service'));
    return;
  }
  ui.suggest.disabled = true;
  try {
    const response = await rpc('console', 'SuggestProviders', { resident_id: callResidentId(), service_code: serviceCode });
    state.suggestions = response.providers ?? [];
  } catch (error) {
    state.suggestions = null;
    fail(error, 'suggest_failed');
  } finally {
    ui.suggest.disabled = false;
    renderOrderBox();
  }
}

async function createOrder() {
  const serviceCode = ui.orderService.value;
  const call = state.call;
  if (!call) return;
  if (!serviceCode) {
    page.showMessage(t('choose_service'));
    return;
  }
  ui.createOrder.disabled = true;
  try {
    const response = await rpc('console', 'CreateOrder', {
      resident_id: callResidentId(),
      service_code: serviceCode,
      call_id: call.call_id,
      note: ui.orderNote.value.trim(),
    });
    if (state.call !== call) return;
    state.orderResult = response;
    if ((response.providers ?? []).length) state.suggestions = response.providers;
  } catch (error) {
    fail(error, 'order_failed');
  } finally {
    ui.createOrder.disabled = false;
    renderOrderBox();
  }
}

ui.suggest.addEventListener('click', () => suggestProviders());
ui.createOrder.addEventListener('click', () => createOrder());

function renderOrderBox() {
  const result = state.orderResult;
  if (result) {
    const providers = result.providers ?? state.suggestions ?? [];
    const offeredTo = result.offered_to ?? '';
    const provider = providers.find((p) => p.provider_id === offeredTo)?.provider_name || offeredTo;
    const stateText = orderStateText(result.state ?? '', i18n);
    ui.orderCreated.textContent = provider
      ? t('order_created', { state: stateText, provider })
      : t('order_waiting', { state: stateText });
    ui.orderCreated.hidden = false;
  } else {
    ui.orderCreated.textContent = '';
    ui.orderCreated.hidden = true;
  }
  const list = state.suggestions;
  if (list === null || list === undefined) {
    setChildren(ui.suggestions);
    return;
  }
  if (list.length === 0) {
    setChildren(ui.suggestions, el('li', { class: 'empty', text: t('no_suggestions') }));
    return;
  }
  setChildren(ui.suggestions, list.map((p) => {
    const distance = Number(p.distance_m ?? 0);
    const known = distance > 0 || p.in_circle;
    const rating = Number(p.rating_centi ?? 0);
    return el('li', { testid: 'suggestion', class: 'suggestion' },
      el('span', { class: 'name', text: p.provider_name || p.provider_id || '' }), ' · ',
      el('span', { testid: 'suggestion-distance', text: known ? fmtDistance(distance, i18n) : t('distance_unknown') }),
      known && Number(p.travel_minutes ?? 0) > 0 ? ` · ${t('travel', { n: p.travel_minutes })}` : '', ' ',
      p.in_circle ? el('span', { class: 'badge ok', testid: 'in-circle', text: t('in_circle') })
        : el('span', { class: 'badge', text: t('out_circle') }),
      el('span', { class: 'muted small' },
        Number(p.capacity ?? 0) > 0 ? ` · ${t('load', { a: p.active_orders ?? 0, c: p.capacity })}` : '',
        ` · ${rating > 0 ? t('rating', { r: (rating / 100).toFixed(2) }) : t('unrated')}`,
        Number(p.price_fen ?? 0) > 0 ? ` · ${fmtMoney(p.price_fen)}` : ''));
  }));
}

// ---------------------------------------------------------------------------------------------
// Emergencies: the alarm screen

function raiseAlarm(offer) {
  let alarm = state.alarms.find((a) => a.call_id === offer.call_id);
  if (!alarm) {
    alarm = {
      call_id: offer.call_id,
      resident_id: offer.resident_id,
      resident_name: offer.resident_name,
      escalates_at_ms: 0,
      offer_id: offer.offer_id,
      status: { ringing: true },
      escalated: state.escalations.get(offer.call_id) ?? '',
      accepted: false,
    };
    state.alarms.push(alarm);
  }
  alarm.offer_id = offer.offer_id;
  alarm.resident_name = offer.resident_name || alarm.resident_name;
  alarm.escalates_at_ms = offer.escalates_at_ms;
  alarm.status = { ringing: true };
}

function shownAlarm() {
  return state.alarms[state.alarms.length - 1] ?? null;
}

ui.alarmDismiss.addEventListener('click', () => {
  const alarm = shownAlarm();
  if (!alarm) return;
  state.alarms = state.alarms.filter((a) => a !== alarm);
  renderAlarm();
});

async function pollCascade() {
  const alarm = shownAlarm();
  if (!alarm || !state.session) return;
  if (state.cascade.call_id !== alarm.call_id) {
    state.cascade = { call_id: alarm.call_id, data: null, inFlight: false, failedFor: null };
  }
  const cascade = state.cascade;
  if (cascade.inFlight || cascade.failedFor === alarm.call_id) return;
  cascade.inFlight = true;
  try {
    const response = await rpc('console', 'FamilyCascade', { call_id: alarm.call_id });
    if (state.cascade === cascade) cascade.data = response;
  } catch (error) {
    if (error.code === 'unauthenticated') {
      page.expire();
    } else if (!['unavailable', 'deadline_exceeded', 'internal', 'unknown'].includes(error.code)) {
      cascade.failedFor = alarm.call_id; // it will not get better by asking again
      fail(error, 'cascade_failed');
    }
  } finally {
    cascade.inFlight = false;
    renderCascade();
  }
}

function cascadeStateText(value) {
  const key = `cascade_${value}`;
  const text = t(key);
  return text === key ? value : text;
}

function renderCascade() {
  const alarm = shownAlarm();
  const data = alarm && state.cascade.call_id === alarm.call_id ? state.cascade.data : null;
  if (!data) {
    setChildren(ui.cascade);
    setChildren(ui.cascadeAcks);
    return;
  }
  const contacts = data.contacts ?? [];
  const startedAt = Number(data.started_at_ms ?? 0);
  const head = el('p', { class: 'small', text: startedAt ? t('cascade_started', { t: fmtTime(startedAt, i18n) }) : t('cascade_not_started') });
  const rows = contacts.map((c) => el('tr', { testid: 'cascade-contact', dataset: { state: c.state ?? '' } },
    el('td', { text: Number(c.position ?? 0) > 0 ? String(c.position) : '=' }),
    el('td', { text: c.name ?? '' }),
    el('td', { text: c.relationship ?? '' }),
    el('td', { testid: 'cascade-state', text: cascadeStateText(c.state ?? '') }),
    el('td', { text: fmtTime(Number(c.acknowledged_at_ms ?? 0) || Number(c.sent_at_ms ?? 0), i18n) })));
  const table = contacts.length
    ? el('table', {},
      el('thead', {}, el('tr', {},
        el('th', { text: '#' }), el('th', { text: t('cascade_name') }), el('th', { text: t('cascade_relationship') }),
        el('th', { text: t('cascade_state') }), el('th', { text: t('cascade_time') }))),
      el('tbody', {}, rows))
    : el('p', { text: t('cascade_empty') });
  setChildren(ui.cascade, head, table);
  setChildren(ui.cascadeAcks, contacts.filter((c) => c.state === 'acknowledged').map((c) => el('span', {
    testid: 'cascade-acknowledged',
    text: `✔ ${t('cascade_ack_line', { name: c.name ?? '' })}${c.relationship ? ` (${c.relationship})` : ''}`,
  })));
}

function alarmStatusText(alarm) {
  if (alarm.accepted || state.call?.call_id === alarm.call_id) return t('alarm_accepted');
  if (alarm.status?.ringing) return t('alarm_ringing');
  const reason = alarm.status?.withdrawn ?? '';
  if (reason === 'expired') return t('alarm_withdrawn_expired');
  if (reason === 'taken') return t('alarm_withdrawn_taken');
  if (reason === 'cancelled') return t('alarm_withdrawn_cancelled');
  return t('alarm_withdrawn_other', { reason });
}

function renderCountdown() {
  const alarm = shownAlarm();
  if (!alarm) return;
  const remaining = alarm.escalates_at_ms > 0 ? Math.ceil((alarm.escalates_at_ms - serverNow()) / 1000) : 0;
  const text = String(Math.max(0, remaining));
  if (ui.countdown.textContent !== text) ui.countdown.textContent = text;
}

function renderAlarm() {
  const alarm = shownAlarm();
  if (!alarm) {
    ui.alarm.hidden = true;
    return;
  }
  ui.alarm.hidden = false;
  ui.alarmName.textContent = alarm.resident_name || t('unknown');
  renderCountdown();
  ui.escalated.hidden = !alarm.escalated;
  ui.escalated.textContent = alarm.escalated ? t('escalated', { reason: alarm.escalated.trim() }) : '';
  ui.alarmStatus.textContent = alarmStatusText(alarm);
  const more = state.alarms.length - 1;
  ui.alarmMore.hidden = more <= 0;
  ui.alarmMore.textContent = more > 0 ? t('alarm_more', { n: more }) : '';
  renderCascade();
}

function renderAlerts() {
  ui.alertsBox.hidden = state.alertsLog.length === 0;
  setChildren(ui.alertsLog, state.alertsLog.map((entry) => el('li', { testid: 'alert-entry' },
    el('span', { class: 'muted', text: `${fmtTime(entry.at, i18n)} ` }),
    entry.order_id
      ? t('alert_order', { id: entry.order_id.slice(0, 8), reason: entry.reason })
      : t('alert_call', { name: entry.name, reason: entry.reason ? ` — ${entry.reason}` : '' }))));
}

// ---------------------------------------------------------------------------------------------
// Voice (WebRTC): the console offers, the tablet answers; signals go through SendRtcSignal and
// come back as ConsoleEvent.rtc_signal.

function sendSignal(voice, kind, payload) {
  voice.outgoing = voice.outgoing.then(async () => {
    try {
      await rpc('console', 'SendRtcSignal', { call_id: voice.call_id, kind, payload });
    } catch (error) {
      if (kind !== 'hangup' && state.voice === voice) fail(error, 'voice_failed');
    }
  });
  return voice.outgoing;
}

function renderVoiceState() {
  const voice = state.voice;
  // Without a voice session the text stays as stopVoice left it ("closed", or "—").
  if (voice) ui.voiceState.textContent = voice.pc ? voice.pc.connectionState : 'new';
  const busy = Boolean(voice) && (!voice.pc || !['failed', 'closed', 'disconnected'].includes(voice.pc.connectionState));
  ui.voiceStart.disabled = !state.call || busy;
}

async function startVoice() {
  const call = state.call;
  if (!call) return;
  stopVoice(false);
  const voice = {
    call_id: call.call_id, pc: null, stream: null, outgoing: Promise.resolve(), incoming: Promise.resolve(),
    pendingCandidates: [], remoteSet: false, offerSent: false, early: [],
  };
  state.voice = voice;
  ui.voiceStart.disabled = true;
  ui.voiceState.textContent = 'new';
  try {
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
      const payload = JSON.stringify(event.candidate.toJSON());
      if (voice.offerSent) sendSignal(voice, 'candidate', payload);
      else voice.early.push(payload);
    };
    pc.ontrack = (event) => {
      const remote = event.streams?.[0] ?? new MediaStream([event.track]);
      ui.remoteAudio.srcObject = remote;
      const playing = ui.remoteAudio.play?.();
      if (playing && typeof playing.catch === 'function') playing.catch(() => {});
    };
    pc.onconnectionstatechange = () => renderVoiceState();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (state.voice !== voice) return;
    sendSignal(voice, 'offer', pc.localDescription?.sdp ?? offer.sdp);
    voice.offerSent = true;
    for (const payload of voice.early.splice(0)) sendSignal(voice, 'candidate', payload);
  } catch (error) {
    if (state.voice === voice) {
      stopVoice(false);
      fail({ message: error?.message || String(error), code: error?.code ?? 'unknown' }, 'voice_failed');
    }
  } finally {
    renderVoiceState();
  }
}

function onRtcSignal(signal) {
  const voice = state.voice;
  if (!voice || signal.call_id !== voice.call_id) return;
  voice.incoming = voice.incoming.then(() => applySignal(voice, signal.kind ?? '', signal.payload ?? ''))
    .catch((error) => {
      if (state.voice === voice) fail({ message: error?.message || String(error), code: 'unknown' }, 'voice_failed');
    });
}

async function applySignal(voice, kind, payload) {
  const pc = voice.pc;
  if (state.voice !== voice) return;
  if (kind === 'hangup') {
    stopVoice(false);
    return;
  }
  if (!pc) return;
  if (kind === 'answer') {
    await pc.setRemoteDescription({ type: 'answer', sdp: payload });
    voice.remoteSet = true;
    for (const candidate of voice.pendingCandidates.splice(0)) await pc.addIceCandidate(candidate);
  } else if (kind === 'candidate') {
    let candidate;
    try {
      candidate = JSON.parse(payload);
    } catch {
      return;
    }
    if (voice.remoteSet) await pc.addIceCandidate(candidate);
    else voice.pendingCandidates.push(candidate);
  }
  renderVoiceState();
}

function stopVoice(sendHangup) {
  const voice = state.voice;
  if (!voice) return;
  state.voice = null;
  if (sendHangup && voice.pc) sendSignal(voice, 'hangup', '');
  try {
    voice.pc?.close();
  } catch {
    /* already closed */
  }
  for (const track of voice.stream?.getTracks() ?? []) track.stop();
  ui.remoteAudio.srcObject = null;
  if (voice.pc) window.carebellVoice = { pc: voice.pc };
  ui.voiceState.textContent = voice.pc ? 'closed' : '—';
  ui.voiceStart.disabled = !state.call;
}

ui.voiceStart.addEventListener('click', () => startVoice());

// ---------------------------------------------------------------------------------------------
// Supervisor view: the WatchQueues stream answers with the picture (supervisors) or
// PERMISSION_DENIED (everyone else, and the panel stays hidden without an error).

function openSupervisor() {
  state.queues = stream('console', 'WatchQueues', {}, (snapshot) => {
    state.supervisor = snapshot;
    renderSupervisor();
  }, (error) => {
    if (error.code === 'permission_denied') {
      state.queues?.close();
      state.supervisor = null;
      renderSupervisor();
    } else if (error.code === 'unauthenticated') {
      page.expire();
    }
  });
}

function renderSupervisor() {
  const snapshot = state.supervisor;
  ui.supervisor.hidden = !snapshot;
  ui.grid.classList.toggle('with-supervisor', Boolean(snapshot));
  if (!snapshot) return;
  const stats = snapshot.last_24_hours ?? {};
  ui.serviceLevel.textContent = `${Math.round(Number(stats.service_level_60s ?? 0) * 100)}%`;
  ui.answeredAbandoned.textContent = `${stats.answered ?? 0} / ${stats.abandoned ?? 0}`;
  ui.asa.textContent = `${Math.round(Number(stats.average_speed_of_answer_secs ?? 0))} ${t('seconds')}`;
  setChildren(ui.supervisorQueues, (snapshot.queues ?? []).map((q) => el('tr', {},
    el('td', { text: q.queue_id ?? '' }),
    el('td', { text: String(q.waiting ?? 0) }),
    el('td', { text: fmtDuration(q.longest_wait_secs ?? 0) }),
    el('td', { text: String(q.eligible_available_operators ?? 0) }))));
  const waiting = snapshot.waiting ?? [];
  setChildren(ui.supervisorWaiting, waiting.length ? waiting.map((w) => el('li', { testid: 'waiting-item' },
    el('strong', { text: w.resident_name || t('unknown') }), ' ',
    el('span', { class: Number(w.kind) === KIND_EMERGENCY ? 'badge danger' : 'badge', text: t(`kind_${Number(w.kind ?? 0)}`) }), ' ',
    el('span', { class: 'muted', text: `${w.queue_id ?? ''} · ` }),
    el('span', { testid: 'waited', text: fmtDuration(w.waited_secs ?? 0) }),
    w.ringing ? el('span', { class: 'badge info', text: ` ${t('ringing')}` }) : ''))
    : [el('li', { class: 'empty', text: t('none_waiting') })]);
  setChildren(ui.supervisorOperators, (snapshot.operators ?? []).map((o) => el('li', { testid: 'operator-state' },
    el('strong', { text: o.display_name || o.operator_id || '' }), ' ',
    el('span', { class: statusBadgeClass(Number(o.status ?? 0)), text: t(`status_${Number(o.status ?? 0)}`) }),
    o.reason ? el('span', { class: 'muted', text: ` (${o.reason})` }) : '',
    el('span', { class: 'muted small', text: ` · ${fmtDuration(o.secs_in_status ?? 0)}` }))));
}

function statusBadgeClass(status) {
  if (status === 2) return 'badge ok';
  if (status === 4 || status === 5) return 'badge info';
  if (status === 6) return 'badge warn';
  return 'badge';
}

// ---------------------------------------------------------------------------------------------
// Rendering

function renderEnded() {
  const ended = state.endedText;
  if (!ended) return;
  ui.callEnded.textContent = t(ended.key, { d: t(`disposition_${ended.vars.disposition ?? ''}`) });
}

function renderAll() {
  renderEnded();
  renderStatus();
  renderLink();
  renderOffers();
  renderCard();
  renderAcceptRow();
  renderCall();
  renderAlarm();
  renderAlerts();
  renderSupervisor();
}

function renderStatus() {
  const status = state.currentStatus;
  for (const option of ui.status.options) {
    const value = Number(option.value);
    if (value >= 4) {
      option.hidden = value !== status;
    }
  }
  if (status) ui.status.value = String(status);
  ui.statusReason.textContent = state.statusReason ? t('status_reason', { reason: state.statusReason }) : '';
}

function renderLink() {
  ui.linkState.textContent = state.session ? (state.linkUp ? t('link_up') : t('link_down')) : '';
  ui.linkState.classList.toggle('down', Boolean(state.session && !state.linkUp));
}

function kindBadge(kind) {
  return el('span', { class: kind === KIND_EMERGENCY ? 'badge danger' : 'badge info', testid: 'offer-kind', text: t(`kind_${kind}`) });
}

function waitedSecs(offer) {
  const created = offer.call_created_at_ms || offer.receivedAt;
  return Math.max(0, (serverNow() - created) / 1000);
}

function renderOffers() {
  const offers = Array.from(state.offers.values());
  offers.sort((a, b) => (b.kind === KIND_EMERGENCY) - (a.kind === KIND_EMERGENCY)
    || (a.call_created_at_ms || a.receivedAt) - (b.call_created_at_ms || b.receivedAt));
  setChildren(ui.offers, offers.map((offer) => {
    const selected = offer.offer_id === state.selectedOfferId;
    return el('li', {
      testid: 'offer',
      class: `offer ringing${offer.kind === KIND_EMERGENCY ? ' emergency' : ''}${selected ? ' selected' : ''}`,
      dataset: { offerId: offer.offer_id, callId: offer.call_id },
    }, el('button', {
      type: 'button',
      'aria-pressed': selected ? 'true' : 'false',
      onclick: () => {
        state.selectedOfferId = offer.offer_id;
        if (offer.resident_id && !state.residents.has(offer.resident_id)) loadResident(offer.resident_id);
        renderAll();
      },
    },
    el('span', { class: 'offer-name', testid: 'offer-name', text: offer.resident_name || t('unknown') }),
    kindBadge(offer.kind),
    el('span', { class: 'offer-wait', testid: 'offer-wait', text: t('waited', { t: fmtDuration(waitedSecs(offer)) }) })));
  }));
  ui.noOffers.hidden = offers.length > 0;
}

function cardSubject() {
  if (state.call) {
    return {
      resident_id: state.call.resident_id,
      name: state.call.resident_name,
      kind: state.call.kind,
    };
  }
  const offer = state.offers.get(state.selectedOfferId);
  if (offer) return { resident_id: offer.resident_id, name: offer.resident_name, kind: offer.kind };
  return null;
}

function renderCard() {
  const subject = cardSubject();
  ui.waitingNote.hidden = Boolean(subject) || !ui.callEnded.hidden;
  if (!subject) {
    ui.card.hidden = true;
    return;
  }
  ui.card.hidden = false;
  const record = state.residents.get(subject.resident_id) ?? null;
  ui.cardName.textContent = record?.full_name || subject.name || t('unknown_resident');
  ui.cardKind.textContent = subject.kind ? t(`kind_${subject.kind}`) : '';
  ui.cardKind.className = subject.kind === KIND_EMERGENCY ? 'badge danger' : 'badge info';
  ui.cardKind.hidden = !subject.kind;
  ui.cardLoading.hidden = !(state.loadingResident && state.loadingResident === subject.resident_id && !record);
  const risks = record?.risk_warnings ?? '';
  ui.cardRisks.hidden = !risks;
  ui.cardRisks.textContent = risks ? `⚠ ${risks}` : '';
  const dash = (value) => value || '—';
  ui.cardMedical.textContent = dash(record?.medical_notes);
  ui.cardKeySafe.replaceChildren(record?.key_safe ? el('span', { class: 'key-safe', text: record.key_safe }) : '—');
  ui.cardAddress.textContent = dash(record?.address);
  ui.cardPhone.textContent = dash(record?.phone);
  ui.cardDialect.textContent = dash(record?.dialect);
  ui.cardStation.textContent = dash(record?.station_name);

  const contacts = record?.contacts ?? [];
  setChildren(ui.cardContacts, contacts.length ? contacts.map((c) => el('li', { testid: 'contact' },
    el('strong', { text: c.name ?? '' }),
    c.relationship ? ` (${c.relationship})` : '',
    c.phone ? ` ${c.phone}` : '', ' ',
    c.holds_keys ? el('span', { class: 'badge warn', text: t('holds_keys') }) : '', ' ',
    el('span', { class: 'muted small', text: Number(c.position ?? 0) > 0 ? t('contact_position', { n: c.position }) : t('contact_parallel') })))
    : [el('li', { class: 'empty', text: t('none') })]);

  const devices = record?.devices ?? [];
  setChildren(ui.cardDevices, devices.length ? devices.map((d) => el('li', { testid: 'device' },
    el('span', { text: d.device_id ?? '' }), ' ',
    el('span', { class: d.online ? 'badge ok' : 'badge danger', text: d.online ? t('online') : t('offline') }), ' ',
    el('span', { class: 'muted small', text: t('last_seen', { ago: fmtAgo(Number(d.last_seen_ms ?? 0), i18n) }) })))
    : [el('li', { class: 'empty', text: t('none') })]);

  const recent = record?.recent ?? [];
  setChildren(ui.cardRecent, recent.length ? recent.map((r) => {
    const kindKey = `ikind_${r.kind ?? ''}`;
    const stateKey = `istate_${r.state ?? ''}`;
    const dispositionKey = `disposition_${r.disposition ?? ''}`;
    return el('li', { testid: 'interaction' },
      el('span', { class: 'muted', text: `${fmtTime(Number(r.created_at_ms ?? 0), i18n)} ` }),
      el('strong', { text: t(kindKey) === kindKey ? (r.kind ?? '') : t(kindKey) }),
      r.disposition ? ` · ${t(dispositionKey) === dispositionKey ? r.disposition : t(dispositionKey)}`
        : (r.state ? ` · ${t(stateKey) === stateKey ? r.state : t(stateKey)}` : ''),
      r.operator_name ? el('span', { class: 'muted', text: ` · ${r.operator_name}` }) : '',
      r.note ? el('div', { class: 'small', text: r.note }) : '');
  }) : [el('li', { class: 'empty', text: t('none') })]);

  const orders = record?.open_orders ?? [];
  setChildren(ui.cardOrders, orders.length ? orders.map((o) => el('li', { testid: 'card-order' },
    el('strong', { text: (i18n.lang === 'en' ? o.service_name_en || o.service_name_zh : o.service_name_zh || o.service_name_en) || o.service_code || '' }),
    ' ', el('span', { class: 'badge info', text: orderStateText(o.state ?? '', i18n) }),
    o.provider_name ? ` · ${o.provider_name}` : '',
    o.staff_name ? ` · ${o.staff_name}` : '',
    Number(o.eta_ms ?? 0) > 0 ? ` · ${t('eta', { t: fmtTime(Number(o.eta_ms), i18n) })}` : ''))
    : [el('li', { class: 'empty', text: t('none') })]);
}

function renderAcceptRow() {
  const offer = state.offers.get(state.selectedOfferId);
  ui.acceptRow.hidden = Boolean(state.call) || !offer;
  ui.accept.disabled = state.accepting || state.declining || !offer || Boolean(state.call);
  ui.decline.disabled = state.accepting || state.declining || !offer || Boolean(state.call);
}

function renderCall() {
  const call = state.call;
  ui.call.hidden = !call;
  if (!call) {
    renderVoiceState();
    return;
  }
  const name = state.residents.get(call.resident_id)?.full_name || call.resident_name || t('unknown_resident');
  ui.callWho.textContent = call.resumed ? `${name} · ${t('resumed_call')}` : name;
  ui.checklist.hidden = call.kind !== KIND_EMERGENCY;
  for (const button of ui.dispositionButtons) button.disabled = call.ending;
  ui.createOrder.disabled = false;
  ui.suggest.disabled = false;
  renderCallTimer();
  renderOrderBox();
  renderVoiceState();
}

function renderCallTimer() {
  if (!state.call) return;
  ui.callTimer.textContent = fmtDuration((Date.now() - state.call.startedAt) / 1000);
}

// ---------------------------------------------------------------------------------------------
// Timers

function tick() {
  // Offers whose ring time is long past (a withdrawal we missed) are dropped.
  let changed = false;
  for (const offer of Array.from(state.offers.values())) {
    if (offer.expires_at_ms > 0 && serverNow() > offer.expires_at_ms + 10000) {
      removeOffer(offer.offer_id);
      changed = true;
    }
  }
  if (changed) {
    renderAll();
  } else {
    for (const item of ui.offers.querySelectorAll('[data-testid="offer"]')) {
      const offer = state.offers.get(item.dataset.offerId);
      const wait = item.querySelector('[data-testid="offer-wait"]');
      if (offer && wait) wait.textContent = t('waited', { t: fmtDuration(waitedSecs(offer)) });
    }
  }
  renderCountdown();
  renderCallTimer();
}

function ring() {
  if (state.offers.size === 0) return;
  const emergency = Array.from(state.offers.values()).some((o) => o.kind === KIND_EMERGENCY);
  beep(emergency ? { frequency: 1050, repeat: 3 } : {});
}

// ---------------------------------------------------------------------------------------------
// Keyboard: A or Enter accepts; 1..6 end the call with that outcome (not while typing).

document.addEventListener('keydown', (event) => {
  if (!state.session || event.defaultPrevented || event.repeat) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (isTyping(event.target)) return;
  if (state.call) {
    if (/^[1-6]$/.test(event.key)) {
      event.preventDefault();
      endCall(Number(event.key));
    }
    return;
  }
  if (event.key === 'a' || event.key === 'A' || (event.key === 'Enter' && !isActivatable(event.target))) {
    if (!state.offers.has(state.selectedOfferId)) return;
    event.preventDefault();
    acceptSelected();
  }
});

i18n.onChange(() => {
  renderCatalogue();
  renderAll();
});

// Render once at load so that the static parts are consistent before sign-in.
try {
  renderAll();
} catch (error) {
  reportBug(error);
}
