// duka dashboard: plain JavaScript, no build step. All user data goes into the page with
// textContent (never innerHTML), so names and items always show as text.
"use strict";

const STATUS_NEXT = {
  pending: ["confirmed", "cancelled"],
  confirmed: ["shipped", "cancelled"],
  shipped: ["delivered", "cancelled"],
  delivered: [],
  cancelled: [],
};
const ACTION_LABEL = {
  confirmed: "Confirm", shipped: "Mark shipped", delivered: "Mark delivered", cancelled: "Cancel order",
};

const state = {
  me: null,
  orders: new Map(),        // id -> order, as the API returns it
  orderCursor: null,
  errors: new Map(),        // notification id -> error text, for failed badges
  todayStart: null,
  todayOrders: new Set(),
  todaySms: new Map(),      // notification id -> status, notifications created today
  lastSeq: null,
  socket: null,
  frames: Promise.resolve(), // frames are handled one after another, in arrival order
  retry: 0,
  currentOrder: null,
  customersCursor: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

// ---- API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function call(method, url, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

async function api(method, path, body) {
  try {
    return await call(method, "/api/v1" + path, body);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) showSignIn();
    throw e;
  }
}

// ---- formatting ------------------------------------------------------------------------

function when(ts) {
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? ts : d.toLocaleString();
}

function badge(notification) {
  if (!notification) return el("span", { class: "badge none", text: "no SMS" });
  const b = el("span", { class: `badge ${notification.status}`, text: notification.status });
  const error = notification.error || state.errors.get(notification.id);
  if (error) b.title = error;
  b.setAttribute("data-notification", notification.id);
  return b;
}

function statusPill(status) {
  return el("span", { class: `status ${status}`, text: status });
}

// ---- views -----------------------------------------------------------------------------

const VIEWS = ["loading", "sign-in", "orders", "order", "customers", "new-customer", "new-order"];

function show(view) {
  for (const v of VIEWS) $("view-" + v).hidden = v !== view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function route() {
  if (!state.me) return;
  const hash = location.hash || "#/orders";
  const [, view, id] = hash.split("/");
  if (view === "orders" && id) openOrder(id);
  else if (view === "customers") { show("customers"); loadCustomers(true); }
  else if (view === "new-customer") { show("new-customer"); $("customer-name").focus(); }
  else if (view === "new-order") { show("new-order"); fillCustomerCodes(); $("order-customer").focus(); }
  else { state.currentOrder = null; show("orders"); }
}

// ---- sign-in ---------------------------------------------------------------------------

async function showSignIn() {
  state.me = null;
  closeSocket();
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("connection").hidden = true;
  $("who").textContent = "";
  let mode = "token";
  try { mode = (await call("GET", "/auth/config")).mode || "token"; } catch { /* token */ }
  $("token-form").hidden = mode !== "token";
  $("oidc-sign-in").hidden = mode === "token";
  const next = location.pathname + location.hash;
  $("oidc-link").href = "/auth/login?next=" + encodeURIComponent(next.startsWith("/") ? next : "/");
  show("sign-in");
  if (mode === "token") $("token").focus();
}

async function signInWithToken(event) {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const token = $("token").value.trim();
  if (!token) return fieldError(form, "token", "Paste the API token.");
  try {
    await call("POST", "/auth/session", { token });
    $("token").value = "";
    await start();
  } catch (e) {
    fieldError(form, "token", e.status === 401 ? "That token is not valid." : e.message);
  }
}

async function signOut() {
  try { await call("POST", "/auth/logout"); } catch { /* the session is gone either way */ }
  state.orders.clear();
  $("orders-body").replaceChildren();
  showSignIn();
}

// ---- orders list -----------------------------------------------------------------------

function orderRow(order, fresh) {
  const link = el("a", { href: `#/orders/${order.id}`, text: order.order_number });
  const row = el("tr", { "data-order": order.id },
    el("td", {}, link),
    el("td", { text: order.customer.name }),
    el("td", { text: order.item }),
    el("td", { class: "num", text: String(order.quantity) }),
    el("td", { class: "num", text: `${order.currency} ${order.amount}` }),
    el("td", {}, statusPill(order.status)),
    el("td", {}, badge(order.notification)),
    el("td", { text: when(order.created_at) }));
  if (fresh) row.classList.add("fresh");
  return row;
}

function renderOrder(order, fresh) {
  const body = $("orders-body");
  const existing = body.querySelector(`tr[data-order="${CSS.escape(order.id)}"]`);
  const row = orderRow(order, fresh);
  if (existing) existing.replaceWith(row);
  else {
    // newest first: ids are time-ordered UUIDs, so string order is creation order
    const after = [...body.children].find((tr) => tr.dataset.order < order.id);
    body.insertBefore(row, after || null);
  }
  $("orders-empty").hidden = body.children.length > 0;
}

async function loadOrders(reset) {
  if (reset) {
    state.orders.clear();
    state.orderCursor = null;
    $("orders-body").replaceChildren();
  }
  const query = state.orderCursor ? `?limit=50&cursor=${encodeURIComponent(state.orderCursor)}` : "?limit=50";
  const page = await api("GET", "/orders" + query);
  for (const order of page.items) {
    state.orders.set(order.id, order);
    renderOrder(order, false);
  }
  state.orderCursor = page.next_cursor;
  $("orders-more").hidden = !page.next_cursor;
  $("orders-empty").hidden = state.orders.size > 0;
  await loadFailedErrors(page.items);
}

async function loadFailedErrors(orders) {
  for (const order of orders) {
    const n = order.notification;
    if (n && n.status === "failed" && !state.errors.has(n.id)) {
      try {
        const page = await api("GET", `/orders/${order.id}/notifications?limit=1`);
        if (page.items[0]) noteNotification(page.items[0]);
      } catch { /* the badge just has no tooltip */ }
    }
  }
}

// ---- counters (today, in the browser's time zone) ---------------------------------------

function startOfToday() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return d;
}

async function loadCounters() {
  state.todayStart = startOfToday();
  state.todayOrders.clear();
  state.todaySms.clear();
  const since = encodeURIComponent(state.todayStart.toISOString());
  let cursor = null;
  for (let pages = 0; pages < 100; pages++) {
    const page = await api("GET", `/orders?limit=100&start_date=${since}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
    for (const o of page.items) state.todayOrders.add(o.id);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  cursor = null;
  for (let pages = 0; pages < 100; pages++) {
    const page = await api("GET", "/notifications?limit=100" + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
    let older = false;
    for (const n of page.items) {
      if (new Date(n.created_at) < state.todayStart) { older = true; break; }
      state.todaySms.set(n.id, n.status);
    }
    cursor = page.next_cursor;
    if (older || !cursor) break;
  }
  renderCounters();
}

function renderCounters() {
  if (startOfToday().getTime() !== (state.todayStart && state.todayStart.getTime())) {
    loadCounters().catch(() => {});
    return;
  }
  let delivered = 0, failed = 0;
  for (const status of state.todaySms.values()) {
    if (status === "delivered") delivered++;
    if (status === "failed") failed++;
  }
  $("count-orders").textContent = String(state.todayOrders.size);
  $("count-delivered").textContent = String(delivered);
  $("count-failed").textContent = String(failed);
}

// ---- live events -----------------------------------------------------------------------

function setConnection(text, live) {
  const c = $("connection");
  c.hidden = false;
  c.textContent = text;
  c.classList.toggle("live", live);
}

function closeSocket() {
  if (state.socket) {
    state.socket.onclose = null;
    state.socket.close();
    state.socket = null;
  }
}

function connect() {
  closeSocket();
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const since = state.lastSeq === null ? "" : `?since=${state.lastSeq}`;
  const socket = new WebSocket(`${proto}//${location.host}/api/v1/ws${since}`);
  state.socket = socket;
  setConnection(state.lastSeq === null ? "connecting…" : "reconnecting…", false);
  socket.onmessage = (message) => {
    let frame;
    try { frame = JSON.parse(message.data); } catch { return; }
    state.frames = state.frames.then(() => handleFrame(frame)).catch(() => {});
  };
  socket.onclose = () => {
    state.socket = null;
    if (!state.me) return;
    setConnection("reconnecting…", false);
    const delay = Math.min(10000, 500 * 2 ** state.retry++);
    setTimeout(async () => {
      if (!state.me) return;
      try { await call("GET", "/auth/me"); } catch (e) { if (e.status === 401) { showSignIn(); return; } }
      connect();
    }, delay);
  };
}

async function handleFrame(frame) {
  if (frame.type === "hello") {
    state.retry = 0;
    setConnection("live", true);
    if (state.lastSeq === null) {
      state.lastSeq = frame.seq;
      await Promise.all([loadOrders(true), loadCounters()]);
    }
    return;
  }
  if (frame.type === "resync") {
    state.lastSeq = frame.seq;
    await Promise.all([loadOrders(true), loadCounters()]);
    if (state.currentOrder) openOrder(state.currentOrder);
    return;
  }
  if (typeof frame.seq !== "number") return;
  if (state.lastSeq !== null && frame.seq <= state.lastSeq) return;
  state.lastSeq = frame.seq;
  applyEvent(frame);
}

function applyEvent(frame) {
  const data = frame.data || {};
  switch (frame.type) {
    case "order.created":
    case "order.updated": {
      const known = state.orders.has(data.id);
      state.orders.set(data.id, data);
      renderOrder(data, frame.type === "order.created" && !known);
      if (new Date(data.created_at) >= state.todayStart) state.todayOrders.add(data.id);
      renderCounters();
      if (state.currentOrder === data.id) renderOrderDetail(data);
      break;
    }
    case "order.deleted": {
      state.orders.delete(data.id);
      state.todayOrders.delete(data.id);
      const row = $("orders-body").querySelector(`tr[data-order="${CSS.escape(data.id)}"]`);
      if (row) row.remove();
      renderCounters();
      break;
    }
    case "notification.updated": {
      noteNotification(data);
      if (new Date(data.created_at) >= state.todayStart) state.todaySms.set(data.id, data.status);
      renderCounters();
      const order = state.orders.get(data.order_id);
      if (order && (!order.notification || order.notification.id <= data.id)) {
        order.notification = { id: data.id, status: data.status, updated_at: data.updated_at };
        renderOrder(order, false);
      }
      if (state.currentOrder === data.order_id) loadNotifications(data.order_id);
      break;
    }
    default:
      break;
  }
}

function noteNotification(n) {
  if (n.error) state.errors.set(n.id, n.error);
  else state.errors.delete(n.id);
}

// ---- order detail ----------------------------------------------------------------------

async function openOrder(id) {
  state.currentOrder = id;
  show("order");
  $("order-error").textContent = "";
  try {
    const order = await api("GET", `/orders/${encodeURIComponent(id)}`);
    renderOrderDetail(order);
    await loadNotifications(id);
  } catch (e) {
    $("order-error").textContent = e.status === 404 ? "This order does not exist (any more)." : e.message;
    $("order-details").replaceChildren();
    $("order-actions").replaceChildren();
  }
}

function renderOrderDetail(order) {
  $("order-title").textContent = `Order ${order.order_number}`;
  const rows = [
    ["Customer", `${order.customer.name} (${order.customer.code}, ${order.customer.phone})`],
    ["Item", order.item],
    ["Quantity", String(order.quantity)],
    ["Amount", `${order.currency} ${order.amount}`],
    ["Status", order.status],
    ["Created", when(order.created_at)],
    ["Updated", when(order.updated_at)],
  ];
  $("order-details").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  const actions = STATUS_NEXT[order.status].map((to) => {
    const b = el("button", { type: "button", text: ACTION_LABEL[to], "data-status": to });
    if (to === "cancelled") b.classList.add("danger");
    b.addEventListener("click", () => changeStatus(order.id, to));
    return b;
  });
  $("order-actions").replaceChildren(...actions);
}

async function changeStatus(id, status) {
  $("order-error").textContent = "";
  try {
    const order = await api("PATCH", `/orders/${id}`, { status });
    state.orders.set(order.id, order);
    renderOrder(order, false);
    renderOrderDetail(order);
    await loadNotifications(id);
  } catch (e) {
    $("order-error").textContent = e.message;
  }
}

async function loadNotifications(orderId) {
  const page = await api("GET", `/orders/${orderId}/notifications?limit=100`);
  if (state.currentOrder !== orderId) return;
  $("notifications-body").replaceChildren(...page.items.map((n) => {
    noteNotification(n);
    return el("tr", { "data-notification": n.id },
      el("td", { text: n.phone }),
      el("td", { text: n.message }),
      el("td", {}, badge(n)),
      el("td", { class: "num", text: String(n.attempts) }),
      el("td", { text: when(n.updated_at) }));
  }));
}

async function resend() {
  if (!state.currentOrder) return;
  $("order-error").textContent = "";
  try {
    await api("POST", `/orders/${state.currentOrder}/notifications`);
    await loadNotifications(state.currentOrder);
  } catch (e) {
    $("order-error").textContent = e.message;
  }
}

// ---- customers -------------------------------------------------------------------------

let searchTimer = null;

async function loadCustomers(reset) {
  if (reset) {
    state.customersCursor = null;
    $("customers-body").replaceChildren();
  }
  const q = $("customer-search").value.trim();
  const params = new URLSearchParams({ limit: "50" });
  if (q) params.set("q", q);
  if (state.customersCursor) params.set("cursor", state.customersCursor);
  const page = await api("GET", "/customers?" + params);
  for (const c of page.items) {
    $("customers-body").append(el("tr", { "data-customer": c.id },
      el("td", { text: c.code }), el("td", { text: c.name }), el("td", { text: c.phone }),
      el("td", { text: c.email || "" })));
  }
  state.customersCursor = page.next_cursor;
  $("customers-more").hidden = !page.next_cursor;
}

async function fillCustomerCodes() {
  try {
    const page = await api("GET", "/customers?limit=100");
    $("customer-codes").replaceChildren(...page.items.map((c) => el("option", { value: c.code, text: c.name })));
  } catch { /* suggestions are optional */ }
}

// ---- forms -----------------------------------------------------------------------------

function clearErrors(form) {
  for (const p of form.querySelectorAll("[data-error-for]")) p.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const ok = form.querySelector("[data-ok]");
  if (ok) ok.textContent = "";
}

function fieldError(form, field, message) {
  const target = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) || form.querySelector('[data-error-for="_"]');
  if (target) target.textContent = target.textContent ? `${target.textContent} ${message}` : message;
  const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
  if (input) input.setAttribute("aria-invalid", "true");
}

function showProblem(form, e) {
  const errors = e.problem && e.problem.errors;
  if (errors && typeof errors === "object") {
    let first = null;
    for (const [field, messages] of Object.entries(errors)) {
      fieldError(form, field, (Array.isArray(messages) ? messages : [String(messages)]).join(" "));
      first = first || form.querySelector(`[name="${CSS.escape(field)}"]`);
    }
    if (first) first.focus();
  } else {
    fieldError(form, "_", e.message);
  }
}

function formValues(form) {
  const body = {};
  for (const input of form.querySelectorAll("input[name]")) {
    const value = input.value.trim();
    if (value !== "") body[input.name] = value;
  }
  return body;
}

async function submitCustomer(event) {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  try {
    const customer = await api("POST", "/customers", formValues(form));
    form.reset();
    form.querySelector("[data-ok]").textContent = `Customer ${customer.name} created (code ${customer.code}).`;
  } catch (e) {
    showProblem(form, e);
  }
}

async function submitOrder(event) {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const body = formValues(form);
  if (body.quantity !== undefined) {
    const n = Number(body.quantity);
    body.quantity = Number.isInteger(n) ? n : body.quantity;
  }
  try {
    const order = await api("POST", "/orders", body);
    form.reset();
    form.querySelector("[data-ok]").textContent = `Order ${order.order_number} created.`;
  } catch (e) {
    showProblem(form, e);
  }
}

// ---- start -----------------------------------------------------------------------------

async function start() {
  try {
    state.me = await call("GET", "/auth/me");
  } catch {
    showSignIn();
    return;
  }
  $("who").textContent = state.me.name || state.me.email || state.me.subject;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  state.lastSeq = null;
  connect();
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", signInWithToken);
  $("sign-out").addEventListener("click", signOut);
  $("customer-form").addEventListener("submit", submitCustomer);
  $("order-form").addEventListener("submit", submitOrder);
  $("resend").addEventListener("click", resend);
  $("orders-more").addEventListener("click", () => loadOrders(false));
  $("customers-more").addEventListener("click", () => loadCustomers(false));
  $("customer-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadCustomers(true), 250);
  });
  window.addEventListener("hashchange", route);
  start();
});
