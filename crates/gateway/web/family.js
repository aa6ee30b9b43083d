// The family page: a family member's relatives (tablet online, last call, open orders, a short
// message to the tablet), the live alerts about them with "I'm on my way", and one relative's
// page at #resident=<uuid>.

import {
  beep, byTestId, createI18n, el, fmtAgo, fmtTime, orderStateText, rpc, setChildren, setupPage, stream,
} from './common.js';

const DICT = {
  zh: {
    page_title: 'Carebell 家属',
    heading: '家属页面',
    sign_in_heading: '家属登录',
    alerts_title: '紧急提醒',
    no_alerts: '目前没有提醒',
    relatives_title: '我的家人',
    no_relatives: '没有登记的家人',
    detail_title: '老人详情',
    tablet_online: '平板在线',
    tablet_offline: '平板离线',
    last_seen: '最后联系',
    last_call: '最近一次呼叫',
    no_call: '暂无呼叫记录',
    open_orders: '进行中的服务',
    no_orders: '无',
    eta: '预计 {t} 到达',
    message_label: '给 {name} 留言（显示在平板上）',
    send: '发送',
    message_sent: '已发送：{text}',
    message_empty: '请输入留言内容',
    message_failed: '留言发送失败',
    call_answered: '已接通',
    call_ended: '已结束',
    call_abandoned: '已取消',
    call_queued: '排队中',
    call_ringing: '等待接听',
    alert_kind_emergency: '紧急求助',
    alert_kind_technical: '设备告警',
    alert_kind_call: '呼叫',
    alert_kind_offline: '平板离线',
    alert_kind_missed_reminder: '提醒未确认',
    alert_kind_missed_check_in: '今日未报平安',
    alert_state_sent: '已通知',
    alert_state_acknowledged: '已确认',
    alert_state_expired: '已过期',
    alert_state_cancelled: '已取消',
    alert_sent_at: '通知时间 {t}',
    alert_acked_at: '确认时间 {t}',
    acknowledge: '我来处理，正在赶去',
    acknowledge_failed: '确认失败',
    relatives_failed: '读取家人信息失败',
    relative_failed: '读取老人信息失败',
    not_allowed: '您无权查看这位老人的信息',
    alerts_failed: '提醒连接失败',
  },
  en: {
    page_title: 'Carebell family',
    heading: 'Family page',
    sign_in_heading: 'Family sign-in',
    alerts_title: 'Alerts',
    no_alerts: 'No alerts',
    relatives_title: 'My relatives',
    no_relatives: 'No relatives on record',
    detail_title: 'Relative',
    tablet_online: 'tablet online',
    tablet_offline: 'tablet offline',
    last_seen: 'Last seen',
    last_call: 'Last call',
    no_call: 'No calls yet',
    open_orders: 'Open services',
    no_orders: 'none',
    eta: 'arrives {t}',
    message_label: 'Message for {name} (shown on the tablet)',
    send: 'Send',
    message_sent: 'Sent: {text}',
    message_empty: 'Please type a message',
    message_failed: 'Could not send the message',
    call_answered: 'answered',
    call_ended: 'ended',
    call_abandoned: 'cancelled',
    call_queued: 'queued',
    call_ringing: 'ringing',
    alert_kind_emergency: 'Emergency',
    alert_kind_technical: 'Technical alarm',
    alert_kind_call: 'Call',
    alert_kind_offline: 'Tablet offline',
    alert_kind_missed_reminder: 'Reminder not confirmed',
    alert_kind_missed_check_in: 'No "I\'m OK" today',
    alert_state_sent: 'sent',
    alert_state_acknowledged: 'acknowledged',
    alert_state_expired: 'expired',
    alert_state_cancelled: 'cancelled',
    alert_sent_at: 'sent {t}',
    alert_acked_at: 'acknowledged {t}',
    acknowledge: "I'm on my way",
    acknowledge_failed: 'Could not acknowledge',
    relatives_failed: 'Could not load your relatives',
    relative_failed: 'Could not load this relative',
    not_allowed: "You may not see this person's page",
    alerts_failed: 'The alerts connection failed',
  },
};

const REFRESH_MS = 30000;
const RING_MS = 3000;

const i18n = createI18n(DICT);
const t = i18n.t;

const ui = {
  alerts: byTestId('alerts'),
  noAlerts: document.getElementById('no-alerts'),
  relatives: byTestId('relatives'),
  noRelatives: document.getElementById('no-relatives'),
  detail: byTestId('relative-detail'),
  detailBody: document.getElementById('detail-body'),
};

const state = {
  session: null,
  alertsStream: null,
  alerts: new Map(), // alert_id (string) → Alert
  acknowledging: new Set(),
  relatives: [],
  relativeNodes: new Map(), // resident_id → { root, info, label, sent }
  detail: null,
  timers: [],
};

const page = setupPage({
  service: 'family',
  i18n,
  onSignedIn: start,
  onSignedOut: stop,
});

function start(session) {
  state.session = session;
  state.alertsStream = stream('family', 'Alerts', { after_id: 0 }, onAlert, (error) => {
    if (error.code === 'unauthenticated') page.expire();
    else page.showError(error, 'alerts_failed');
  });
  loadRelatives();
  showHashRelative();
  state.timers.push(setInterval(loadRelatives, REFRESH_MS));
  state.timers.push(setInterval(ringWhileUnanswered, RING_MS));
  render();
}

function stop() {
  state.alertsStream?.close();
  state.alertsStream = null;
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  state.session = null;
  state.alerts.clear();
  state.acknowledging.clear();
  state.relatives = [];
  state.relativeNodes.clear();
  state.detail = null;
  setChildren(ui.relatives);
  render();
}

// ---------------------------------------------------------------------------------------------
// Relatives

async function loadRelatives() {
  if (!state.session) return;
  try {
    const response = await rpc('family', 'Relatives', {});
    state.relatives = response.relatives ?? [];
    renderRelatives();
  } catch (error) {
    page.showError(error, 'relatives_failed');
  }
}

function lastCallText(relative) {
  const at = Number(relative.last_call_at_ms ?? 0);
  if (!at) return t('no_call');
  const key = `call_${relative.last_call_state ?? ''}`;
  const stateText = relative.last_call_state ? (t(key) === key ? relative.last_call_state : t(key)) : '';
  return `${fmtTime(at, i18n)}${stateText ? ` · ${stateText}` : ''}`;
}

function serviceName(order) {
  return (i18n.lang === 'en' ? order.service_name_en || order.service_name_zh : order.service_name_zh || order.service_name_en) || '';
}

/** The facts about a relative (without the message form). */
function relativeInfo(relative) {
  const online = Boolean(relative.tablet_online);
  const orders = relative.open_orders ?? [];
  return [
    el('h3', { testid: 'relative-name', text: relative.name ?? '' }),
    el('span', {
      testid: 'tablet_online',
      class: online ? 'badge ok' : 'badge danger',
      dataset: { online: online ? 'true' : 'false' },
      text: online ? t('tablet_online') : t('tablet_offline'),
    }),
    el('dl', {},
      el('dt', { text: t('last_seen') }),
      el('dd', { testid: 'last-seen', text: fmtAgo(Number(relative.last_seen_ms ?? 0), i18n) }),
      el('dt', { text: t('last_call') }),
      el('dd', { testid: 'last-call', text: lastCallText(relative) }),
      el('dt', { text: t('open_orders') }),
      el('dd', { testid: 'relative-orders' }, orders.length
        ? el('ul', { class: 'plain' }, orders.map((order) => el('li', { testid: 'relative-order' },
          el('strong', { text: serviceName(order) }), ' ',
          el('span', { class: 'badge info', text: orderStateText(order.state ?? '', i18n) }),
          Number(order.eta_ms ?? 0) > 0 ? ` · ${t('eta', { t: fmtTime(Number(order.eta_ms), i18n) })}` : '')))
        : t('no_orders'))),
  ];
}

function relativeNode(relative) {
  const id = relative.resident_id ?? '';
  let node = state.relativeNodes.get(id);
  if (node) return node;
  const inputId = `message-text-${id}`;
  const info = el('div', { class: 'relative-info' });
  const label = el('label', { for: inputId });
  const input = el('input', { id: inputId, type: 'text', testid: 'message-text', maxlength: '200', autocomplete: 'off' });
  const button = el('button', { type: 'submit', class: 'primary', testid: 'send-message' });
  const sent = el('p', { testid: 'message-sent', class: 'notice-ok', hidden: true });
  const form = el('form', { class: 'message-form' },
    el('div', { class: 'field' }, label, input), button);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) {
      page.showMessage(t('message_empty'));
      return;
    }
    button.disabled = true;
    sent.hidden = true;
    try {
      await rpc('family', 'SendMessage', { resident_id: id, text });
      node.lastSent = text;
      sent.textContent = t('message_sent', { text });
      sent.hidden = false;
      input.value = '';
    } catch (error) {
      page.showError(error, 'message_failed');
    } finally {
      button.disabled = false;
    }
  });
  const root = el('li', { testid: 'relative', class: 'relative', dataset: { residentId: id } }, info, form, sent);
  node = { root, info, label, button, sent, lastSent: '' };
  state.relativeNodes.set(id, node);
  return node;
}

function renderRelatives() {
  const seen = new Set();
  const nodes = state.relatives.map((relative) => {
    const node = relativeNode(relative);
    seen.add(relative.resident_id ?? '');
    setChildren(node.info, relativeInfo(relative));
    node.label.textContent = t('message_label', { name: relative.name ?? '' });
    node.button.textContent = t('send');
    if (node.lastSent) node.sent.textContent = t('message_sent', { text: node.lastSent });
    return node.root;
  });
  for (const id of Array.from(state.relativeNodes.keys())) if (!seen.has(id)) state.relativeNodes.delete(id);
  // Re-append in order; the nodes (and what is being typed in them) are kept.
  const current = Array.from(ui.relatives.children);
  if (current.length !== nodes.length || current.some((node, i) => node !== nodes[i])) setChildren(ui.relatives, nodes);
  ui.noRelatives.hidden = !state.session || state.relatives.length > 0;
}

// ---------------------------------------------------------------------------------------------
// One relative: #resident=<uuid>

function hashResident() {
  const match = /^#resident=([^&]+)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : '';
}

async function showHashRelative() {
  const residentId = hashResident();
  if (!residentId || !state.session) {
    state.detail = null;
    renderDetail();
    return;
  }
  try {
    const relative = await rpc('family', 'Relative', { resident_id: residentId });
    if (hashResident() !== residentId) return;
    state.detail = relative;
  } catch (error) {
    state.detail = null;
    if (error.code === 'permission_denied') {
      page.showMessage(`${t('not_allowed')}${t('sep')}${error.message}`);
    } else {
      page.showError(error, 'relative_failed');
    }
  }
  renderDetail();
}

function renderDetail() {
  const relative = state.detail;
  ui.detail.hidden = !relative;
  setChildren(ui.detailBody, relative ? relativeInfo(relative) : []);
}

window.addEventListener('hashchange', () => showHashRelative());

// ---------------------------------------------------------------------------------------------
// Alerts

function onAlert(alert) {
  const id = String(alert.alert_id ?? '');
  if (!id) return;
  const isNew = !state.alerts.has(id);
  const previous = state.alerts.get(id);
  state.alerts.set(id, alert);
  if ((alert.state ?? '') !== 'sent') state.acknowledging.delete(id);
  if (isNew && alert.state === 'sent') beep({ frequency: 988, repeat: 3 });
  renderAlerts();
  if (isNew || previous?.state !== alert.state) refreshRelativesSoon();
}

let refreshTimer = null;
function refreshRelativesSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(loadRelatives, 800);
}

async function acknowledge(id) {
  const alert = state.alerts.get(id);
  if (!alert || state.acknowledging.has(id)) return;
  state.acknowledging.add(id);
  renderAlerts();
  try {
    await rpc('family', 'Acknowledge', { alert_id: Number(alert.alert_id) });
    const current = state.alerts.get(id);
    if (current && current.state === 'sent') {
      state.alerts.set(id, { ...current, state: 'acknowledged', acknowledged_at_ms: Date.now() });
    }
  } catch (error) {
    page.showError(error, 'acknowledge_failed');
  } finally {
    state.acknowledging.delete(id);
    renderAlerts();
  }
}

function textOr(key, raw) {
  const text = t(key);
  return text === key ? raw : text;
}

function renderAlerts() {
  const alerts = Array.from(state.alerts.values());
  alerts.sort((a, b) => Number(b.alert_id ?? 0) - Number(a.alert_id ?? 0));
  const existing = new Map(Array.from(ui.alerts.children).map((node) => [node.dataset.alertId, node]));
  const nodes = alerts.map((alert) => {
    const id = String(alert.alert_id ?? '');
    const alertState = alert.state ?? '';
    const sentAt = Number(alert.sent_at_ms ?? 0);
    const ackedAt = Number(alert.acknowledged_at_ms ?? 0);
    const children = [
      el('h3', {},
        el('span', { testid: 'alert-resident', text: alert.resident_name ?? '' }), ' · ',
        el('span', { testid: 'alert-kind', text: textOr(`alert_kind_${alert.kind ?? ''}`, alert.kind ?? '') })),
      el('span', {
        testid: 'alert-state',
        class: alertState === 'sent' ? 'badge danger' : alertState === 'acknowledged' ? 'badge ok' : 'badge',
        text: textOr(`alert_state_${alertState}`, alertState),
      }),
      el('span', { class: 'muted small' },
        sentAt ? ` ${t('alert_sent_at', { t: fmtTime(sentAt, i18n) })}` : '',
        ackedAt ? ` · ${t('alert_acked_at', { t: fmtTime(ackedAt, i18n) })}` : ''),
      alertState === 'sent'
        ? el('div', { class: 'row', style: 'margin-top:0.5rem' }, el('button', {
          type: 'button',
          class: 'danger solid big',
          testid: 'acknowledge',
          disabled: state.acknowledging.has(id),
          onclick: () => acknowledge(id),
          text: t('acknowledge'),
        }))
        : null,
    ];
    // Update in place: one element per alert, its content replaced.
    const node = existing.get(id) ?? el('li', { testid: 'alert', dataset: { alertId: id } });
    node.className = `alert-item ${alertState}`;
    node.dataset.state = alertState;
    setChildren(node, children);
    return node;
  });
  const current = Array.from(ui.alerts.children);
  if (current.length !== nodes.length || current.some((node, i) => node !== nodes[i])) setChildren(ui.alerts, nodes);
  ui.noAlerts.hidden = alerts.length > 0;
}

function ringWhileUnanswered() {
  const waiting = Array.from(state.alerts.values()).some((alert) => alert.state === 'sent');
  if (waiting) beep({ frequency: 988, repeat: 2 });
}

function render() {
  renderAlerts();
  renderRelatives();
  renderDetail();
}

i18n.onChange(render);
