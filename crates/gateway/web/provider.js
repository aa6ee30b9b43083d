// The provider portal: the orders offered to this provider and the ones it holds (the Feed
// stream), accept / decline, send staff, report en route / arrived / completed, reassign;
// the provider's own figures.

import {
  beep, byTestId, createI18n, el, fmtDistance, fmtDuration, fmtMoney, fmtTime, orderStateText, rpc,
  setChildren, setupPage, stream,
} from './common.js';

const DICT = {
  zh: {
    page_title: 'Carebell 服务商',
    heading: '服务商工作台',
    sign_in_heading: '服务商登录',
    figures_title: '本机构数据',
    orders_title: '工单',
    no_orders: '暂无工单',
    link_up: '● 已连接',
    link_down: '● 连接中断，正在重连…',
    fig_offers: '收到派单',
    fig_accepted: '已接单',
    fig_declined: '已拒绝',
    fig_timed_out: '超时未接',
    fig_on_time: '准时到达',
    fig_completed: '已完成',
    fig_rating: '平均评分',
    unrated: '暂无评分',
    suspended: '已暂停接单：{reason}',
    in_circle: '10 分钟服务圈内',
    out_circle: '服务圈外',
    distance: '距离',
    distance_unknown: '未知',
    travel: '约 {n} 分钟路程',
    eta: '预计到达',
    staff: '服务人员',
    resident: '老人',
    address: '地址',
    note: '备注',
    price: '价格',
    expires: '请在 {t} 内接单',
    expired: '接单时间已过',
    choose_staff: '派谁去',
    eta_minutes: '几分钟内到达',
    accept_order: '接单',
    decline_order: '拒绝',
    status_en_route: '出发',
    status_arrived: '已到达（签到）',
    status_completed: '服务完成',
    completion_notes: '服务记录',
    duration: '服务时长（分钟）',
    reassign: '改派人员',
    assign_staff: '改派',
    no_staff: '没有可派的服务人员',
    eta_invalid: '到达时间须在 1 到 1440 分钟之间',
    duration_invalid: '服务时长须在 0 到 1440 分钟之间',
    accept_failed: '接单失败',
    decline_failed: '拒绝失败',
    status_failed: '更新状态失败',
    assign_failed: '改派失败',
    staff_failed: '读取服务人员失败',
    figures_failed: '读取数据失败',
    feed_failed: '工单连接失败',
    decline_reason: 'declined from the portal',
  },
  en: {
    page_title: 'Carebell provider',
    heading: 'Provider portal',
    sign_in_heading: 'Provider sign-in',
    figures_title: 'Our figures',
    orders_title: 'Orders',
    no_orders: 'No orders',
    link_up: '● Connected',
    link_down: '● Connection lost, reconnecting…',
    fig_offers: 'Offers',
    fig_accepted: 'Accepted',
    fig_declined: 'Declined',
    fig_timed_out: 'Timed out',
    fig_on_time: 'On time',
    fig_completed: 'Completed',
    fig_rating: 'Average rating',
    unrated: 'unrated',
    suspended: 'Suspended from new orders: {reason}',
    in_circle: 'in the 10-minute circle',
    out_circle: 'outside the circle',
    distance: 'Distance',
    distance_unknown: 'unknown',
    travel: 'about {n} min away',
    eta: 'Arrival',
    staff: 'Staff',
    resident: 'Senior',
    address: 'Address',
    note: 'Note',
    price: 'Price',
    expires: 'Accept within {t}',
    expired: 'The time to accept has passed',
    choose_staff: 'Who goes',
    eta_minutes: 'There in (minutes)',
    accept_order: 'Accept',
    decline_order: 'Decline',
    status_en_route: 'On the way',
    status_arrived: 'Arrived (check in)',
    status_completed: 'Completed',
    completion_notes: 'Completion notes',
    duration: 'Duration (minutes)',
    reassign: 'Send someone else',
    assign_staff: 'Reassign',
    no_staff: 'No staff to send',
    eta_invalid: 'The arrival time must be 1 to 1440 minutes',
    duration_invalid: 'The duration must be 0 to 1440 minutes',
    accept_failed: 'Could not accept',
    decline_failed: 'Could not decline',
    status_failed: 'Could not update the status',
    assign_failed: 'Could not reassign',
    staff_failed: 'Could not load the staff',
    figures_failed: 'Could not load the figures',
    feed_failed: 'The orders connection failed',
    decline_reason: 'declined from the portal',
  },
};

const HELD = new Set(['accepted', 'en_route', 'arrived']);
const STATUS = { en_route: 1, arrived: 2, completed: 3 };
const FIGURES_MS = 30000;

const i18n = createI18n(DICT);
const t = i18n.t;

const ui = {
  figures: byTestId('figures'),
  suspended: document.getElementById('suspended'),
  orders: byTestId('orders'),
  noOrders: document.getElementById('no-orders'),
  linkState: document.getElementById('link-state'),
};

const state = {
  session: null,
  feed: null,
  linkUp: false,
  staff: [],
  staffVersion: 0,
  figures: null,
  orders: new Map(), // order_id → OrderView
  nodes: new Map(), // order_id → { root, info, actions, shape }
  busy: new Set(), // order ids with a request in flight
  timers: [],
};

const page = setupPage({
  service: 'provider',
  i18n,
  onSignedIn: start,
  onSignedOut: stop,
  describe: (session) => [session.display_name, session.provider_name].filter(Boolean).join(' · '),
});

function start(session) {
  state.session = session;
  loadStaff();
  loadFigures();
  state.feed = stream('provider', 'Feed', {}, onOrder, (error) => {
    if (error.code === 'unauthenticated') page.expire();
    else page.showError(error, 'feed_failed');
  }, {
    onOpen: () => {
      state.linkUp = true;
      renderLink();
    },
    onDrop: () => {
      state.linkUp = false;
      renderLink();
    },
  });
  state.timers.push(setInterval(loadFigures, FIGURES_MS));
  state.timers.push(setInterval(tick, 1000));
  renderAll();
}

function stop() {
  state.feed?.close();
  state.feed = null;
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  state.session = null;
  state.linkUp = false;
  state.staff = [];
  state.figures = null;
  state.orders.clear();
  state.nodes.clear();
  state.busy.clear();
  setChildren(ui.orders);
  renderAll();
}

function renderLink() {
  ui.linkState.textContent = state.session ? (state.linkUp ? t('link_up') : t('link_down')) : '';
  ui.linkState.classList.toggle('down', Boolean(state.session && !state.linkUp));
}

// ---------------------------------------------------------------------------------------------
// Staff and figures

async function loadStaff() {
  try {
    const response = await rpc('provider', 'ListStaff', {});
    state.staff = response.staff ?? [];
    state.staffVersion += 1;
    renderOrders();
  } catch (error) {
    page.showError(error, 'staff_failed');
  }
}

async function loadFigures() {
  if (!state.session) return;
  try {
    state.figures = await rpc('provider', 'Figures', {});
    renderFigures();
  } catch (error) {
    page.showError(error, 'figures_failed');
  }
}

function renderFigures() {
  const f = state.figures;
  if (!f) {
    setChildren(ui.figures);
    ui.suspended.hidden = true;
    return;
  }
  const rating = Number(f.average_rating_centi ?? 0);
  const figure = (testid, labelKey, value) => el('div', { testid },
    el('span', { class: 'muted small', text: t(labelKey) }),
    el('span', { class: 'big-figure', text: String(value) }));
  setChildren(ui.figures,
    figure('figure-offers', 'fig_offers', f.offers ?? 0),
    figure('figure-accepted', 'fig_accepted', f.accepted ?? 0),
    figure('figure-completed', 'fig_completed', f.completed ?? 0),
    figure('figure-rating', 'fig_rating', rating > 0 ? `${(rating / 100).toFixed(2)} ★` : t('unrated')),
    figure('figure-on-time', 'fig_on_time', `${f.on_time ?? 0}/${f.arrivals ?? 0}`),
    figure('figure-declined', 'fig_declined', `${f.declined ?? 0} / ${f.timed_out ?? 0}`));
  ui.suspended.hidden = !f.suspended;
  ui.suspended.className = 'badge danger';
  ui.suspended.textContent = f.suspended ? t('suspended', { reason: f.suspended_reason ?? '' }) : '';
}

// ---------------------------------------------------------------------------------------------
// Orders

function onOrder(view) {
  const id = view?.order_id ?? '';
  if (!id) return;
  const isNew = !state.orders.has(id);
  if (view.state === 'withdrawn') {
    state.orders.delete(id);
    state.nodes.get(id)?.root.remove();
    state.nodes.delete(id);
    renderOrders();
    return;
  }
  state.orders.set(id, view);
  if (isNew && view.state === 'offered') beep({ frequency: 784, repeat: 2 });
  renderOrders();
}

function serviceName(view) {
  return (i18n.lang === 'en' ? view.service_name_en || view.service_name_zh : view.service_name_zh || view.service_name_en)
    || view.service_code || '';
}

function expiresText(view) {
  const at = Number(view.offer_expires_at_ms ?? 0);
  if (!at) return '';
  const secs = (at - Date.now()) / 1000;
  return secs > 0 ? t('expires', { t: fmtDuration(secs) }) : t('expired');
}

function orderInfo(view) {
  const distance = Number(view.distance_m ?? 0);
  const known = distance > 0 || view.in_circle;
  const eta = Number(view.eta_ms ?? 0);
  const items = [];
  const add = (labelKey, value, testid) => {
    if (value === '' || value === null || value === undefined) return;
    items.push(el('dt', { text: t(labelKey) }), el('dd', { testid }, value));
  };
  add('distance', [
    known ? fmtDistance(distance, i18n) : t('distance_unknown'),
    known && Number(view.travel_minutes ?? 0) > 0 ? ` · ${t('travel', { n: view.travel_minutes })}` : '',
  ].join(''), 'order-distance');
  add('eta', eta > 0 ? fmtTime(eta, i18n) : '', 'order-eta');
  add('staff', view.staff_name ?? '', 'order-staff');
  add('resident', view.resident_name ?? '', 'order-resident');
  add('address', view.resident_address ?? '', 'order-address');
  add('note', view.note ?? '', 'order-note');
  add('price', Number(view.price_fen ?? 0) > 0 ? fmtMoney(view.price_fen) : '', 'order-price');
  return [
    el('h3', {},
      el('span', { testid: 'order-service', text: serviceName(view) }), ' ',
      el('span', {
        testid: 'order-state',
        class: view.state === 'offered' ? 'badge info' : view.state === 'cancelled' ? 'badge danger' : 'badge ok',
        text: orderStateText(view.state ?? '', i18n),
      }), ' ',
      view.in_circle
        ? el('span', { testid: 'in-circle', class: 'badge ok', text: t('in_circle') })
        : el('span', { class: 'badge', text: t('out_circle') })),
    view.state === 'offered' ? el('p', { testid: 'offer-expires', class: 'muted small', text: expiresText(view) }) : null,
    el('dl', {}, items),
  ];
}

function staffOptions(selected) {
  return state.staff.map((member) => el('option', {
    value: member.staff_id ?? '',
    selected: member.staff_id === selected ? 'selected' : null,
  }, member.name || member.staff_id || ''));
}

function actionShape(view) {
  if (view.state === 'offered') return `offered:${state.staffVersion}:${i18n.lang}`;
  if (HELD.has(view.state)) return `held:${state.staffVersion}:${i18n.lang}`;
  return `none:${i18n.lang}`;
}

function field(labelText, input) {
  return el('span', { class: 'field' }, el('label', { for: input.id, text: labelText }), input);
}

function buildActions(view, node) {
  const id = view.order_id;
  if (view.state === 'offered') {
    const staff = el('select', { id: `staff-${id}`, testid: 'staff' }, staffOptions(view.staff_id ?? ''));
    const eta = el('input', { id: `eta-${id}`, testid: 'eta', type: 'number', min: '1', max: '1440', step: '1', value: '30', inputmode: 'numeric' });
    const accept = el('button', { type: 'button', class: 'primary', testid: 'accept-order', text: t('accept_order') });
    const decline = el('button', { type: 'button', class: 'danger', testid: 'decline-order', text: t('decline_order') });
    accept.addEventListener('click', () => acceptOrder(id, staff, eta));
    decline.addEventListener('click', () => declineOrder(id));
    node.buttons = [accept, decline];
    return [field(t('choose_staff'), staff), field(t('eta_minutes'), eta), accept, decline];
  }
  if (HELD.has(view.state)) {
    const buttons = ['en_route', 'arrived', 'completed'].map((status) => {
      const button = el('button', {
        type: 'button',
        class: status === 'completed' ? 'ok' : 'primary',
        testid: `status-${status}`,
        text: t(`status_${status}`),
      });
      button.addEventListener('click', () => updateStatus(id, status, node));
      return button;
    });
    const notes = el('input', { id: `notes-${id}`, testid: 'completion-notes', type: 'text', maxlength: '2000' });
    const duration = el('input', { id: `duration-${id}`, testid: 'duration', type: 'number', min: '0', max: '1440', step: '1', value: '30', inputmode: 'numeric' });
    const reassign = el('select', { id: `reassign-${id}`, testid: 'reassign' }, staffOptions(view.staff_id ?? ''));
    const assign = el('button', { type: 'button', testid: 'assign-staff', text: t('assign_staff') });
    assign.addEventListener('click', () => assignStaff(id, reassign));
    node.notes = notes;
    node.duration = duration;
    node.buttons = [...buttons, assign];
    return [
      el('div', { class: 'actions' }, buttons),
      el('div', { class: 'actions' }, field(t('completion_notes'), notes), field(t('duration'), duration)),
      el('div', { class: 'actions' }, field(t('reassign'), reassign), assign),
    ];
  }
  node.buttons = [];
  return [];
}

function orderNode(view) {
  const id = view.order_id;
  let node = state.nodes.get(id);
  if (!node) {
    const info = el('div', { class: 'order-info' });
    const actions = el('div', { class: 'actions' });
    const root = el('li', { testid: 'order', class: 'order', dataset: { orderId: id } }, info, actions);
    node = { root, info, actions, shape: '', buttons: [] };
    state.nodes.set(id, node);
  }
  node.root.className = `order ${view.state ?? ''}`;
  node.root.dataset.state = view.state ?? '';
  setChildren(node.info, orderInfo(view));
  const shape = actionShape(view);
  if (shape !== node.shape) {
    // Rebuilt only when what can be done changes, so that typed values survive updates.
    node.shape = shape;
    setChildren(node.actions, buildActions(view, node));
  } else if (HELD.has(view.state)) {
    const reassign = node.actions.querySelector('[data-testid="reassign"]');
    if (reassign && document.activeElement !== reassign && view.staff_id) reassign.value = view.staff_id;
  }
  for (const button of node.buttons) button.disabled = state.busy.has(id);
  return node.root;
}

function sortedOrders() {
  const orders = Array.from(state.orders.values());
  orders.sort((a, b) => (b.state === 'offered') - (a.state === 'offered')
    || Number(b.created_at_ms ?? 0) - Number(a.created_at_ms ?? 0));
  return orders;
}

function renderOrders() {
  const nodes = sortedOrders().map(orderNode);
  const current = Array.from(ui.orders.children);
  if (current.length !== nodes.length || current.some((node, i) => node !== nodes[i])) setChildren(ui.orders, nodes);
  ui.noOrders.hidden = nodes.length > 0 || !state.session;
}

function tick() {
  for (const view of state.orders.values()) {
    if (view.state !== 'offered') continue;
    const node = state.nodes.get(view.order_id);
    const expires = node?.info.querySelector('[data-testid="offer-expires"]');
    if (expires) expires.textContent = expiresText(view);
  }
}

async function act(id, contextKey, request) {
  if (state.busy.has(id)) return false;
  state.busy.add(id);
  renderOrders();
  try {
    await request();
    return true;
  } catch (error) {
    page.showError(error, contextKey);
    return false;
  } finally {
    state.busy.delete(id);
    renderOrders();
  }
}

async function acceptOrder(id, staffSelect, etaInput) {
  const staffId = staffSelect.value;
  const eta = Number(etaInput.value);
  if (!staffId) {
    page.showMessage(t('no_staff'));
    return;
  }
  if (!Number.isInteger(eta) || eta < 1 || eta > 1440) {
    page.showMessage(t('eta_invalid'));
    return;
  }
  const done = await act(id, 'accept_failed', () => rpc('provider', 'Accept', { order_id: id, staff_id: staffId, eta_minutes: eta }));
  if (done) loadFigures();
}

async function declineOrder(id) {
  const done = await act(id, 'decline_failed', () => rpc('provider', 'Decline', { order_id: id, reason: DICT.en.decline_reason }));
  if (done) loadFigures();
}

/** Where the phone is, if it can tell quickly; otherwise null. */
function quickPosition(timeoutMs = 1500) {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (value) => {
      if (!settled) {
        settled = true;
        resolve(value);
      }
    };
    if (!navigator.geolocation) {
      finish(null);
      return;
    }
    setTimeout(() => finish(null), timeoutMs);
    try {
      navigator.geolocation.getCurrentPosition(
        (position) => finish({ lat: position.coords.latitude, lon: position.coords.longitude }),
        () => finish(null),
        { enableHighAccuracy: false, timeout: timeoutMs, maximumAge: 120000 },
      );
    } catch {
      finish(null);
    }
  });
}

async function updateStatus(id, status, node) {
  const body = { order_id: id, status: STATUS[status] };
  if (status === 'completed') {
    const duration = node.duration?.value === '' ? 30 : Number(node.duration?.value ?? 30);
    if (!Number.isInteger(duration) || duration < 0 || duration > 1440) {
      page.showMessage(t('duration_invalid'));
      return;
    }
    body.notes = (node.notes?.value ?? '').trim();
    body.duration_minutes = duration;
  }
  const done = await act(id, 'status_failed', async () => {
    if (status === 'arrived') {
      const position = await quickPosition();
      if (position) body.position = position;
    }
    await rpc('provider', 'UpdateStatus', body);
  });
  if (done && status === 'completed') loadFigures();
}

async function assignStaff(id, select) {
  const staffId = select.value;
  if (!staffId) {
    page.showMessage(t('no_staff'));
    return;
  }
  await act(id, 'assign_failed', () => rpc('provider', 'AssignStaff', { order_id: id, staff_id: staffId }));
}

function renderAll() {
  renderLink();
  renderFigures();
  renderOrders();
}

i18n.onChange(renderAll);
