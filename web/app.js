// duka dashboard: plain JavaScript, no build step. All user data goes into the page with
// textContent (never innerHTML), so names and items always show as text. The page sets no
// inline styles (the CSP allows none): looks come from style.css, SVG from attributes.
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
const ORDER_FILTERS = ["q", "status", "start_date", "end_date", "customer_id"];
const LIVE_TYPES = "order.created,order.updated,order.deleted,notification.updated";
// viewer < staff < admin, as the server orders them. A control that changes something
// carries data-needs="staff" or "admin": style.css hides it unless <html data-role> is high
// enough (an unknown role sees none), and the views create such buttons only for a role
// that may use them, so a live re-render cannot bring one back.
const ROLE_RANK = { viewer: 0, staff: 1, admin: 2 };

const state = {
  me: null,
  timezone: "UTC",          // business.timezone, from /api/v1/stats
  orders: new Map(),        // id -> order, as the API returns it (the orders view)
  orderCursor: null,
  orderFilter: new URLSearchParams(),
  ordersGeneration: 0,
  errors: new Map(),        // notification id -> error text, for failed badges
  lastSeq: null,
  socket: null,
  frames: Promise.resolve(), // frames are handled one after another, in arrival order
  retry: 0,
  view: null,
  currentOrder: null,
  currentCustomer: null,     // the customer as loaded on the customer page
  customersCursor: null,
  customerOrdersCursor: null,
  failedCursor: null,
  trendDays: 14,
  importChecked: null,       // the file that passed the dry run
  chartDays: null,           // the days the chart shows, to redraw it at another width
  timers: new Map(),
  history: new Map(),        // seq -> event of the order on the order page (its timeline)
};

const $ = (id) => document.getElementById(id);

/// May the signed-in principal do what needs `role`?
function can(role) {
  const mine = state.me ? ROLE_RANK[state.me.role] : undefined;
  return mine !== undefined && mine >= ROLE_RANK[role];
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children) node.append(child);
  return node;
}

/// Runs `fn` at most once per `ms` for `key`, after the last call.
function debounce(key, ms, fn) {
  clearTimeout(state.timers.get(key));
  state.timers.set(key, setTimeout(fn, ms));
}

// ---- API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || (status ? `HTTP ${status}` : "The server cannot be reached."));
    this.status = status;
    this.problem = problem || {};
  }
}

/// A fresh Idempotency-Key: random, from getRandomValues (randomUUID needs a secure context).
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function call(method, url, body, options = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (options.key) init.headers["Idempotency-Key"] = options.key;
  if (options.csv !== undefined) {
    init.headers["Content-Type"] = "text/csv";
    init.body = options.csv;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError(0, null);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

async function api(method, path, body, options) {
  try {
    return await call(method, "/api/v1" + path, body, options);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) showSignIn();
    // Refused for the role: the role may have changed since sign-in; follow it (the caller
    // shows the problem's detail as it shows other errors).
    if (e instanceof ApiError && e.status === 403) refreshMe();
    throw e;
  }
}

// ---- progress and confirmation ----------------------------------------------------------

/// The one status line every action reports to: busy, then done or failed.
function progress(text, kind) {
  const p = $("progress");
  p.textContent = text;
  p.className = `progress ${kind || ""}`;
  clearTimeout(state.timers.get("progress"));
  if (kind === "ok") state.timers.set("progress", setTimeout(() => { p.textContent = ""; p.className = "progress"; }, 6000));
}

/// Runs `work` with `button` disabled (so a double click sends once) and, for an action the
/// user started (a button), the progress shown until the answer.
async function busy(button, text, work) {
  if (button && button.disabled) return undefined;
  if (button) {
    button.disabled = true;
    progress(text, "busy");
  }
  try {
    return await work();
  } finally {
    if (button) {
      button.disabled = false;
      const p = $("progress");
      if (p.textContent === text) progress("", "");
    }
  }
}

/// An in-page confirmation (no native dialog): resolves true when the user says yes.
function confirmAction(text, yes) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = yes;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.showModal();
    $("confirm-no").focus();
  });
}

// ---- formatting (the browser's locale) ------------------------------------------------------

function when(ts) {
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function money(amount, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(Number(amount));
  } catch {
    return `${currency} ${amount}`;
  }
}

function count(n) {
  return new Intl.NumberFormat().format(n);
}

/// A YYYY-MM-DD day as the browser's locale writes it.
function dayLabel(date, long) {
  const d = new Date(`${date}T12:00:00Z`);
  const style = long ? { weekday: "short", day: "numeric", month: "short", year: "numeric" } : { day: "numeric", month: "short" };
  return d.toLocaleDateString(undefined, { ...style, timeZone: "UTC" });
}

/// The business day (YYYY-MM-DD in business.timezone) of an instant.
function businessDay(ts) {
  try {
    return new Intl.DateTimeFormat("en-CA", { timeZone: state.timezone, year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date(ts));
  } catch {
    return new Date(ts).toISOString().slice(0, 10);
  }
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

const VIEWS = ["loading", "sign-in", "orders", "order", "customers", "customer", "import", "sms", "trend", "new-customer", "new-order"];
const NAV_OF = { order: "orders", customer: "customers", import: "customers" };

function show(view) {
  state.view = view;
  for (const v of VIEWS) $("view-" + v).hidden = v !== view;
  const nav = NAV_OF[view] || view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

/// `#/view/id?query` -> ["view", "id", URLSearchParams]
function parseHash() {
  const hash = (location.hash || "#/orders").slice(1);
  const [path, query] = hash.split("?");
  const [, view, id] = path.split("/");
  return [view || "orders", id, new URLSearchParams(query || "")];
}

function route() {
  if (!state.me) return;
  const [view, id, query] = parseHash();
  state.currentOrder = null;
  state.currentCustomer = null;
  if (view === "orders" && id) openOrder(id);
  else if (view === "customers" && id) openCustomer(id);
  else if (view === "customers") { show("customers"); loadCustomers(true).catch(showLoadError); }
  else if (view === "import") { show("import"); }
  else if (view === "sms") { show("sms"); loadSms().catch(showLoadError); }
  else if (view === "trend") { show("trend"); loadTrend().catch(showLoadError); }
  else if (view === "new-customer") { show("new-customer"); $("customer-name").focus(); }
  else if (view === "new-order") {
    show("new-order");
    if (can("staff")) fillCustomerCodes();
    if (query.get("code")) $("order-customer").value = query.get("code");
    $(query.get("code") ? "order-item" : "order-customer").focus();
  } else { show("orders"); openOrders(query).catch(showLoadError); }
}

function showLoadError(e) {
  progress(`Could not load: ${e.message}`, "error");
}

// ---- sign-in ---------------------------------------------------------------------------

async function showSignIn() {
  state.me = null;
  closeSocket();
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("connection").hidden = true;
  $("who").textContent = "";
  $("who-role").textContent = "";
  $("who-role").hidden = true;
  delete document.documentElement.dataset.role;
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
  const button = form.querySelector("button[type=submit]");
  try {
    await busy(button, "Signing in…", () => call("POST", "/auth/session", { token }));
    $("token").value = "";
    progress("Signed in.", "ok");
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
  const customer = el("a", { href: `#/customers/${order.customer.id}`, text: order.customer.name });
  const row = el("tr", { "data-order": order.id },
    el("td", { class: "nowrap" }, link),
    el("td", {}, customer),
    el("td", { text: order.item }),
    el("td", { class: "num", text: String(order.quantity) }),
    el("td", { class: "num", text: money(order.amount, order.currency) }),
    el("td", {}, statusPill(order.status)),
    el("td", {}, badge(order.notification)),
    el("td", { class: "nowrap", text: when(order.created_at) }));
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
    // Past the loaded pages: "load more" brings it.
    if (!after && state.orderCursor) return;
    body.insertBefore(row, after || null);
  }
  $("orders-empty").hidden = body.children.length > 0;
}

function removeOrder(id) {
  state.orders.delete(id);
  const row = $("orders-body").querySelector(`tr[data-order="${CSS.escape(id)}"]`);
  if (row) row.remove();
  $("orders-empty").hidden = $("orders-body").children.length > 0;
}

/// Does a (live) order belong in the list as filtered? The same rules as the API's.
function matchesFilter(order) {
  const f = state.orderFilter;
  if (f.get("status") && order.status !== f.get("status")) return false;
  if (f.get("customer_id") && order.customer.id !== f.get("customer_id")) return false;
  const q = (f.get("q") || "").trim().toLowerCase();
  if (q && ![order.item, order.order_number, order.customer.name, order.customer.code]
    .some((v) => String(v).toLowerCase().includes(q))) return false;
  const bound = (value, end) => {
    if (!value) return true;
    if (/^\d{4}-\d{2}-\d{2}$/.test(value)) {
      const day = businessDay(order.created_at);
      return end ? day <= value : day >= value;
    }
    const t = new Date(value).getTime();
    const at = new Date(order.created_at).getTime();
    return end ? at <= t : at >= t;
  };
  return bound(f.get("start_date"), false) && bound(f.get("end_date"), true);
}

function filterQuery() {
  const params = new URLSearchParams();
  for (const name of ORDER_FILTERS) {
    const value = state.orderFilter.get(name);
    if (value) params.set(name, value);
  }
  return params;
}

/// The orders view for the filters in the URL.
async function openOrders(query) {
  state.orderFilter = new URLSearchParams();
  for (const name of ORDER_FILTERS) {
    const value = (query.get(name) || "").trim();
    if (value) state.orderFilter.set(name, value);
  }
  $("filter-q").value = state.orderFilter.get("q") || "";
  $("filter-status").value = state.orderFilter.get("status") || "";
  $("filter-start").value = state.orderFilter.get("start_date") || "";
  $("filter-end").value = state.orderFilter.get("end_date") || "";
  $("filter-customer").value = state.orderFilter.get("customer_id") || "";
  const note = $("filter-customer-note");
  note.hidden = !state.orderFilter.get("customer_id");
  note.textContent = note.hidden ? "" : "Showing one customer's orders.";
  const qs = filterQuery().toString();
  $("orders-export").href = "/api/v1/orders/export.csv" + (qs ? "?" + qs : "");
  $("orders-error").textContent = "";
  if (state.lastSeq !== null) await loadOrders(true);
}

function applyFilter(event) {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, input] of [["q", "filter-q"], ["status", "filter-status"], ["start_date", "filter-start"], ["end_date", "filter-end"], ["customer_id", "filter-customer"]]) {
    const value = $(input).value.trim();
    if (value) params.set(name, value);
  }
  const start = params.get("start_date"), end = params.get("end_date");
  if (start && end && start > end) {
    $("orders-error").textContent = "The first day must not be after the last.";
    return;
  }
  setOrdersHash(params);
}

function setOrdersHash(params) {
  const qs = params.toString();
  const hash = "#/orders" + (qs ? "?" + qs : "");
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function loadOrders(reset) {
  const params = filterQuery();
  params.set("limit", "50");
  if (!reset && state.orderCursor) params.set("cursor", state.orderCursor);
  const button = $("orders-more");
  // A newer load (another filter) makes this one's answer stale.
  const generation = reset ? ++state.ordersGeneration : state.ordersGeneration;
  let page;
  try {
    page = await busy(reset ? null : button, "Loading orders…", () => api("GET", "/orders?" + params));
  } catch (e) {
    $("orders-error").textContent = e.message;
    return;
  }
  if (!page || generation !== state.ordersGeneration) return;
  if (reset) {
    state.orders.clear();
    $("orders-body").replaceChildren();
  }
  state.orderCursor = null;
  for (const order of page.items) {
    state.orders.set(order.id, order);
    renderOrder(order, false);
  }
  state.orderCursor = page.next_cursor;
  button.hidden = !page.next_cursor;
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

// ---- counters (today, in the business time zone, counted by the server) ------------------

async function loadCounters() {
  const stats = await api("GET", "/stats?days=1");
  state.timezone = stats.timezone;
  const today = stats.days[stats.days.length - 1];
  $("count-orders").textContent = count(today.orders);
  $("count-delivered").textContent = count(today.sms.delivered);
  $("count-failed").textContent = count(today.sms.failed);
}

function refreshCounters() {
  debounce("counters", 700, () => loadCounters().catch(() => {}));
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
  // Only what the page shows: an import's thousands of customer.created stay away.
  const query = new URLSearchParams({ types: LIVE_TYPES });
  if (state.lastSeq !== null) query.set("since", String(state.lastSeq));
  const socket = new WebSocket(`${proto}//${location.host}/api/v1/ws?${query}`);
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
      try { showMe(await call("GET", "/auth/me")); } catch (e) { if (e.status === 401) { showSignIn(); return; } }
      connect();
    }, delay);
  };
}

async function reloadAll() {
  await Promise.all([loadOrders(true), loadCounters().catch(() => {})]);
}

async function handleFrame(frame) {
  if (frame.type === "hello") {
    state.retry = 0;
    setConnection("live", true);
    if (state.lastSeq === null) {
      state.lastSeq = frame.seq;
      await reloadAll();
    }
    return;
  }
  if (frame.type === "resync") {
    state.lastSeq = frame.seq;
    await reloadAll();
    if (state.currentOrder) openOrder(state.currentOrder);
    return;
  }
  if (typeof frame.seq !== "number") return;
  if (state.lastSeq !== null && frame.seq <= state.lastSeq) return;
  state.lastSeq = frame.seq;
  applyEvent(frame);
}

function announce(text) {
  // A change of text is what screen readers read out; clear first so repeats are read too.
  const a = $("announcer");
  a.textContent = "";
  setTimeout(() => { a.textContent = text; }, 50);
}

function applyEvent(frame) {
  const data = frame.data || {};
  noteHistory(frame);
  switch (frame.type) {
    case "order.created":
    case "order.updated": {
      const known = state.orders.has(data.id);
      if (matchesFilter(data)) {
        state.orders.set(data.id, data);
        const fresh = frame.type === "order.created" && !known;
        renderOrder(data, fresh);
        if (fresh && state.view === "orders") announce(`New order ${data.order_number} from ${data.customer.name}`);
      } else if (known) {
        removeOrder(data.id);
      }
      refreshCounters();
      if (state.currentOrder === data.id) renderOrderDetail(data);
      break;
    }
    case "order.deleted":
      removeOrder(data.id);
      refreshCounters();
      if (state.currentOrder === data.id) {
        $("order-error").textContent = "This order was deleted.";
        $("order-actions").replaceChildren();
        $("order-delete").hidden = true;
        $("resend").hidden = true;
      }
      break;
    case "notification.updated": {
      noteNotification(data);
      refreshCounters();
      const order = state.orders.get(data.order_id);
      if (order && (!order.notification || order.notification.id <= data.id)) {
        order.notification = { id: data.id, status: data.status, updated_at: data.updated_at };
        renderOrder(order, false);
      }
      if (state.currentOrder === data.order_id) loadNotifications(data.order_id);
      if (state.view === "sms") debounce("sms", 1000, () => loadSms().catch(() => {}));
      break;
    }
    default:
      break;
  }
  if (state.view === "trend") debounce("trend", 1500, () => loadTrend().catch(() => {}));
}

function noteNotification(n) {
  if (n.error) state.errors.set(n.id, n.error);
  else state.errors.delete(n.id);
}

// ---- order detail ----------------------------------------------------------------------

async function openOrder(id) {
  state.currentOrder = id;
  state.history = new Map();
  show("order");
  $("order-error").textContent = "";
  $("order-ok").textContent = "";
  $("order-history").replaceChildren();
  $("history-note").textContent = "";
  // The history is there after a delete too, so it loads whether the order does or not.
  const history = loadHistory(id);
  try {
    const order = await api("GET", `/orders/${encodeURIComponent(id)}`);
    renderOrderDetail(order);
    await loadNotifications(id);
  } catch (e) {
    $("order-error").textContent = e.status === 404 ? "This order does not exist (any more)." : e.message;
    $("order-details").replaceChildren();
    $("order-actions").replaceChildren();
    $("order-delete").hidden = true;
    $("resend").hidden = true;
  }
  await history;
}

function renderOrderDetail(order) {
  $("order-title").textContent = `Order ${order.order_number}`;
  const link = $("order-customer-link");
  link.href = `#/customers/${order.customer.id}`;
  link.textContent = `Customer: ${order.customer.name}`;
  const rows = [
    ["Customer", `${order.customer.name} (${order.customer.code}, ${order.customer.phone})`],
    ["Item", order.item],
    ["Quantity", String(order.quantity)],
    ["Amount", money(order.amount, order.currency)],
    ["Status", order.status],
    ["Created", when(order.created_at)],
    ["Updated", when(order.updated_at)],
  ];
  $("order-details").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  // Only for a role that may change it (a frame re-renders this, with the same rule).
  const actions = can("staff") ? STATUS_NEXT[order.status].map((to) => {
    const b = el("button", { type: "button", text: ACTION_LABEL[to], "data-status": to, "data-needs": "staff" });
    if (to === "cancelled") b.classList.add("danger");
    b.addEventListener("click", () => changeStatus(b, order, to));
    return b;
  }) : [];
  $("order-actions").replaceChildren(...actions);
  $("order-delete").hidden = false;
  $("resend").hidden = false;
}

async function deleteOrder() {
  const id = state.currentOrder;
  if (!id) return;
  $("order-error").textContent = "";
  const title = $("order-title").textContent.replace(/^Order /, "");
  if (!await confirmAction(`Delete order ${title}? This cannot be undone; its history is kept.`, "Delete")) return;
  try {
    await busy($("order-delete"), "Deleting…", () => api("DELETE", `/orders/${id}`));
    removeOrder(id);
    progress(`Order ${title} deleted.`, "ok");
    location.hash = "#/orders";
  } catch (e) {
    $("order-error").textContent = e.message;
  }
}

// ---- order history: a timeline, oldest first ------------------------------------------------

/// The order an event is about.
function eventOrderId(frame) {
  const data = frame.data || {};
  return frame.type === "notification.updated" ? data.order_id : data.id;
}

async function loadHistory(id) {
  let page;
  try {
    page = await api("GET", `/orders/${encodeURIComponent(id)}/history`);
  } catch (e) {
    if (state.currentOrder !== id) return;
    $("history-note").textContent = e.status === 404 ? "No history is kept for this order." : `The history cannot be loaded: ${e.message}`;
    return;
  }
  if (state.currentOrder !== id) return;
  for (const event of page.items) state.history.set(event.seq, event);
  renderHistory();
}

/// A live frame about the order on the page joins its timeline (once: by seq).
function noteHistory(frame) {
  if (!state.currentOrder || eventOrderId(frame) !== state.currentOrder || state.history.has(frame.seq)) return;
  state.history.set(frame.seq, frame);
  renderHistory();
}

/// Who did it, as a timeline line ends: "by Wanjiku", "by the SMS sender", "(Africa's Talking)".
function actorText(actor, sms) {
  if (!actor) return "";
  if (actor.type === "user") return `by ${actor.name || actor.subject}`;
  if (actor.type === "provider") return actor.name === "africastalking" ? "(Africa's Talking)" : `(${actor.name})`;
  if (actor.type === "system" && actor.name === "sms") return sms ? "" : "by the SMS sender";
  return "";
}

const ORDER_FIELDS = [["item", "item"], ["quantity", "quantity"], ["amount", "amount"], ["currency", "currency"]];

/// One line per event, or null for an event that says nothing new (the order.updated a
/// resend brings, next to its "SMS queued again").
function historyText(event, before) {
  const data = event.data || {};
  const parts = [];
  switch (event.type) {
    case "order.created":
      parts.push("created", actorText(event.actor));
      break;
    case "order.updated": {
      if (before && data.status && data.status !== before.status) {
        parts.push(data.status, actorText(event.actor));
      } else {
        const changed = before ? ORDER_FIELDS.filter(([k]) => String(data[k]) !== String(before[k])).map(([, label]) => label) : [];
        if (before && !changed.length) return null;
        parts.push(changed.length ? `${changed.join(", ")} changed` : "changed", actorText(event.actor));
      }
      break;
    }
    case "order.deleted":
      parts.push("deleted", actorText(event.actor));
      break;
    case "notification.updated": {
      const status = data.status || "updated";
      if (status === "queued" && data.next_attempt_at) parts.push("SMS not sent, will retry");
      else if (status === "queued") parts.push(event.actor && event.actor.type === "user" ? "SMS queued again" : "SMS queued");
      else parts.push(`SMS ${status}`);
      parts.push(actorText(event.actor, true));
      const line = parts.filter(Boolean).join(" ");
      return data.error && (status === "failed" || status === "queued") ? `${line}: ${data.error}` : line;
    }
    default:
      parts.push(event.type, actorText(event.actor));
  }
  return parts.filter(Boolean).join(" ");
}

/// HH:MM today; the page's date and time otherwise.
function historyTime(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  const today = new Date();
  if (d.toDateString() === today.toDateString()) return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  return when(ts);
}

function renderHistory() {
  const events = [...state.history.values()].sort((a, b) => a.seq - b.seq);
  let order = null;
  const items = [];
  for (const event of events) {
    const text = historyText(event, order);
    if (event.type.startsWith("order.") && event.type !== "order.deleted") order = event.data;
    if (text === null) continue;
    items.push(el("li", { "data-seq": String(event.seq), "data-type": event.type },
      el("time", { dateTime: event.at, title: when(event.at), text: historyTime(event.at) }),
      el("span", { class: "what", text })));
  }
  $("order-history").replaceChildren(...items);
  $("history-note").textContent = items.length ? "" : "Nothing has happened to this order yet.";
}

async function changeStatus(button, order, status) {
  $("order-error").textContent = "";
  if (status === "cancelled" && !await confirmAction(`Cancel order ${order.order_number}?`, "Cancel the order")) return;
  try {
    const changed = await busy(button, "Saving…", () => api("PATCH", `/orders/${order.id}`, { status }));
    if (!changed) return;
    progress(`Order ${changed.order_number} is ${changed.status}.`, "ok");
    if (matchesFilter(changed)) state.orders.set(changed.id, changed);
    renderOrderDetail(changed);
    await loadNotifications(changed.id);
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
      el("td", { class: "nowrap", text: n.phone }),
      el("td", { text: n.message }),
      el("td", {}, badge(n)),
      el("td", { class: "num", text: String(n.attempts) }),
      el("td", { class: "nowrap", text: when(n.updated_at) }),
      el("td", { class: "error-text", text: retryText(n) }));
  }));
}

function retryText(n) {
  if (n.next_attempt_at) return `${n.error || "not sent yet"}; next try ${when(n.next_attempt_at)}`;
  return n.error || "";
}

/// Queues the SMS of an order again, after the user confirms (each one costs money).
async function resendSms(button, orderId, label, phone) {
  if (!await confirmAction(`Send the SMS for ${label} again to ${phone}? Each SMS costs money.`, "Send again")) return null;
  try {
    const n = await busy(button, "Sending the SMS again…", () => api("POST", `/orders/${orderId}/notifications`));
    if (n) progress(`The SMS for ${label} is queued to ${n.phone}.`, "ok");
    return n;
  } catch (e) {
    progress(`The SMS was not sent again: ${e.message}`, "error");
    return null;
  }
}

async function resend() {
  if (!state.currentOrder) return;
  $("order-error").textContent = "";
  const id = state.currentOrder;
  const title = $("order-title").textContent.replace(/^Order /, "");
  const phone = ($("notifications-body").querySelector("td") || {}).textContent || "the customer";
  const n = await resendSms($("resend"), id, title, phone);
  if (n) {
    $("order-ok").textContent = `Queued a new SMS to ${n.phone}.`;
    await loadNotifications(id);
  }
}

// ---- customers -------------------------------------------------------------------------

async function loadCustomers(reset) {
  const q = $("customer-search").value.trim();
  const params = new URLSearchParams({ limit: "50" });
  if (q) params.set("q", q);
  if (!reset && state.customersCursor) params.set("cursor", state.customersCursor);
  $("customers-export").href = "/api/v1/customers/export.csv" + (q ? "?" + new URLSearchParams({ q }) : "");
  const page = await busy(reset ? null : $("customers-more"), "Loading customers…", () => api("GET", "/customers?" + params));
  if (!page) return;
  if (reset) $("customers-body").replaceChildren();
  for (const c of page.items) {
    $("customers-body").append(el("tr", { "data-customer": c.id },
      el("td", { class: "nowrap" }, el("a", { href: `#/customers/${c.id}`, text: c.code })),
      el("td", {}, el("a", { href: `#/customers/${c.id}`, text: c.name })),
      el("td", { class: "nowrap", text: c.phone }),
      el("td", { text: c.email || "" })));
  }
  state.customersCursor = page.next_cursor;
  $("customers-more").hidden = !page.next_cursor;
  $("customers-empty").hidden = $("customers-body").children.length > 0;
}

async function fillCustomerCodes() {
  try {
    const page = await api("GET", "/customers?limit=100");
    $("customer-codes").replaceChildren(...page.items.map((c) => el("option", { value: c.code, text: c.name })));
  } catch { /* suggestions are optional */ }
}

// ---- one customer: edit, delete, their orders ---------------------------------------------

async function openCustomer(id) {
  show("customer");
  const form = $("customer-edit");
  clearErrors(form);
  $("customer-orders-body").replaceChildren();
  $("customer-details").replaceChildren();
  try {
    const c = await api("GET", `/customers/${encodeURIComponent(id)}`);
    fillCustomer(c);
    await loadCustomerOrders(true);
  } catch (e) {
    $("customer-title").textContent = "Customer";
    const message = e.status === 404 ? "This customer does not exist (any more)." : e.message;
    fieldError(form, "_", message);
    // A role that may not edit does not see the form, nor the errors in it.
    if (!can("staff")) progress(message, "error");
  }
}

function fillCustomer(c) {
  state.currentCustomer = c;
  $("customer-title").textContent = `${c.name} (${c.code})`;
  $("edit-name").value = c.name;
  $("edit-phone").value = c.phone;
  $("edit-email").value = c.email || "";
  $("edit-code").value = c.code;
  // What the edit form shows, for a role that may not edit.
  $("customer-details").replaceChildren(...[["Code", c.code], ["Phone", c.phone], ["E-mail", c.email || "–"]]
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  $("customer-new-order").href = `#/new-order?code=${encodeURIComponent(c.code)}`;
}

async function loadCustomerOrders(reset) {
  const c = state.currentCustomer;
  if (!c) return;
  const params = new URLSearchParams({ limit: "20" });
  if (!reset && state.customerOrdersCursor) params.set("cursor", state.customerOrdersCursor);
  const page = await busy(reset ? null : $("customer-orders-more"), "Loading orders…", () => api("GET", `/customers/${c.id}/orders?${params}`));
  if (!page || state.currentCustomer !== c) return;
  if (reset) $("customer-orders-body").replaceChildren();
  for (const o of page.items) {
    $("customer-orders-body").append(el("tr", { "data-order": o.id },
      el("td", { class: "nowrap" }, el("a", { href: `#/orders/${o.id}`, text: o.order_number })),
      el("td", { text: o.item }),
      el("td", { class: "num", text: money(o.amount, o.currency) }),
      el("td", {}, statusPill(o.status)),
      el("td", {}, badge(o.notification)),
      el("td", { class: "nowrap", text: when(o.created_at) })));
  }
  state.customerOrdersCursor = page.next_cursor;
  $("customer-orders-more").hidden = !page.next_cursor;
  $("customer-orders-empty").hidden = $("customer-orders-body").children.length > 0;
}

async function saveCustomer(event) {
  event.preventDefault();
  const form = event.target;
  const c = state.currentCustomer;
  if (!c) return;
  clearErrors(form);
  const patch = {};
  for (const [field, input] of [["name", "edit-name"], ["phone", "edit-phone"], ["email", "edit-email"], ["code", "edit-code"]]) {
    const value = $(input).value.trim();
    const current = c[field] || "";
    if (value === current) continue;
    patch[field] = field === "email" && value === "" ? null : value;
  }
  if (Object.keys(patch).length === 0) {
    form.querySelector("[data-ok]").textContent = "Nothing to change.";
    return;
  }
  try {
    const saved = await busy(form.querySelector("button[type=submit]"), "Saving…", () => api("PATCH", `/customers/${c.id}`, patch));
    if (!saved) return;
    fillCustomer(saved);
    progress(`Customer ${saved.name} saved.`, "ok");
    form.querySelector("[data-ok]").textContent = "Saved.";
  } catch (e) {
    showProblem(form, e);
  }
}

async function deleteCustomer() {
  const c = state.currentCustomer;
  if (!c) return;
  const form = $("customer-edit");
  clearErrors(form);
  if (!await confirmAction(`Delete ${c.name} (${c.code})? This cannot be undone.`, "Delete")) return;
  try {
    await busy($("customer-delete"), "Deleting…", () => api("DELETE", `/customers/${c.id}`));
    progress(`Customer ${c.name} deleted.`, "ok");
    location.hash = "#/customers";
  } catch (e) {
    fieldError(form, "_", e.status === 409 ? `${e.message}.` : e.message);
  }
}

// ---- import ------------------------------------------------------------------------------

/// RFC 4180, as the server reads it (blank lines skipped), for showing the rows.
function parseCsv(text) {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const rows = [];
  let row = [], field = "", quoted = false;
  const endRow = () => {
    row.push(field);
    if (!(row.length === 1 && row[0] === "")) rows.push(row);
    row = [];
    field = "";
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") { if (c === "\r" && text[i + 1] === "\n") i++; endRow(); }
    else field += c;
  }
  if (field !== "" || row.length) endRow();
  return rows;
}

const PREVIEW_ROWS = 500;

function resetImport() {
  state.importChecked = null;
  $("import-run").hidden = true;
  $("import-summary").textContent = "";
  $("import-summary").className = "summary";
  $("import-preview-wrap").hidden = true;
  $("import-body").replaceChildren();
  clearErrors($("import-form"));
}

async function checkImport(event) {
  event.preventDefault();
  const form = $("import-form");
  const file = $("import-file").files[0];
  resetImport();
  if (!file) return fieldError(form, "file", "Choose a CSV file.");
  let text;
  try { text = await file.text(); } catch { return fieldError(form, "file", "The file cannot be read."); }
  let problem = null, result = null;
  try {
    result = await busy($("import-check"), "Checking the file…", () => api("POST", "/customers/import?dry_run=true", undefined, { csv: text }));
  } catch (e) {
    if (e.status !== 422) {
        return fieldError(form, e.status === 413 ? "file" : "_", e.message);
    }
    problem = e.problem;
  }
  const errors = (problem && problem.errors) || {};
  const rows = parseCsv(text);
  renderImportPreview(rows, errors);
  for (const key of ["header", "file"]) {
    if (errors[key]) fieldError(form, "file", errors[key].join(" "));
  }
  const summary = $("import-summary");
  if (result) {
    state.importChecked = { file, text, count: result.would_create };
    summary.textContent = `Every row is right: ${count(result.would_create)} customers will be created.`;
    summary.classList.add("ok");
    const run = $("import-run");
    run.textContent = `Import ${count(result.would_create)} customers`;
    run.hidden = false;
    run.focus();
  } else {
    const bad = new Set(Object.keys(errors).filter((k) => k.startsWith("row ")).map((k) => k.split(":")[0]));
    summary.textContent = bad.size
      ? `${count(bad.size)} of ${count(Math.max(rows.length - 1, bad.size))} rows have errors. Nothing was imported: fix them and check the file again.`
      : "The file cannot be imported. Nothing was imported.";
    summary.classList.add("bad");
  }
}

function renderImportPreview(rows, errors) {
  const [header, ...data] = rows;
  if (!header) return;
  $("import-head").replaceChildren(el("tr", {},
    el("th", { scope: "col", class: "num", text: "Row" }),
    ...header.map((h) => el("th", { scope: "col", text: h })),
    el("th", { scope: "col", text: "Result" })));
  const messages = (n) => Object.entries(errors)
    .filter(([k]) => k === `row ${n}` || k.startsWith(`row ${n}:`))
    .map(([k, v]) => `${k.includes(":") ? k.split(": ")[1] + " " : ""}${v.join(" ")}`);
  const body = [];
  let shown = 0;
  data.forEach((cells, i) => {
    const n = i + 1;
    const problems = messages(n);
    if (!problems.length && shown >= PREVIEW_ROWS) return;
    shown++;
    const row = el("tr", { "data-row": String(n), class: problems.length ? "bad" : "good" },
      el("td", { class: "num", text: String(n) }),
      ...header.map((_, j) => el("td", { text: cells[j] === undefined ? "" : cells[j] })),
      el("td", { class: problems.length ? "error-text" : "ok-text", text: problems.length ? problems.join("; ") : "OK" }));
    body.push(row);
  });
  $("import-body").replaceChildren(...body);
  $("import-preview-wrap").hidden = false;
}

async function runImport() {
  const checked = state.importChecked;
  if (!checked) return;
  const form = $("import-form");
  try {
    const result = await busy($("import-run"), `Importing ${count(checked.count)} customers…`, () => api("POST", "/customers/import", undefined, { csv: checked.text }));
    if (!result) return;
    state.importChecked = null;
    $("import-run").hidden = true;
    progress(`${count(result.created)} customers imported.`, "ok");
    form.querySelector("[data-ok]").textContent = `${count(result.created)} customers imported.`;
    $("import-summary").textContent = "";
  } catch (e) {
    if (e.status === 422 && e.problem.errors) {
      // Taken since the check (someone else created one meanwhile): show which rows.
      renderImportPreview(parseCsv(checked.text), e.problem.errors);
      $("import-run").hidden = true;
      $("import-summary").textContent = "Some rows are no longer free. Nothing was imported.";
      $("import-summary").className = "summary bad";
    } else fieldError(form, "_", e.message);
  }
}

// ---- SMS: failed, and waiting for a retry -------------------------------------------------

async function orderOf(id) {
  if (state.orders.has(id)) return state.orders.get(id);
  try { return await api("GET", `/orders/${id}`); } catch { return null; }
}

async function loadSms() {
  await Promise.all([loadFailed(true), loadRetrying()]);
}

async function smsRow(n, withAction) {
  const order = await orderOf(n.order_id);
  const label = order ? order.order_number : "an order";
  const orderCell = el("td", { class: "nowrap" },
    el("a", { href: `#/orders/${n.order_id}`, text: label }),
    el("span", { class: "sub", text: order ? order.customer.name : "" }));
  const cells = [orderCell,
    el("td", { class: "nowrap", text: n.phone }),
    el("td", { class: "error-text", text: n.error || "" }),
    el("td", { class: "num", text: String(n.attempts) })];
  if (withAction) {
    cells.push(el("td", { class: "nowrap", text: when(n.updated_at) }));
    if (can("staff")) {
      const button = el("button", { type: "button", text: "Send again", class: "secondary", "data-resend": n.order_id, "data-needs": "staff" });
      const note = el("span", { class: "ok-text", "aria-live": "polite" });
      button.addEventListener("click", async () => {
        const queued = await resendSms(button, n.order_id, label, n.phone);
        if (queued) {
          button.disabled = true;
          note.textContent = "Queued again";
        }
      });
      cells.push(el("td", { class: "nowrap", "data-needs": "staff" }, button, note));
    }
  } else {
    cells.push(el("td", { class: "nowrap", text: n.next_attempt_at ? when(n.next_attempt_at) : "" }));
  }
  return el("tr", { "data-notification": n.id }, ...cells);
}

async function loadFailed(reset) {
  const params = new URLSearchParams({ status: "failed", limit: "50" });
  if (!reset && state.failedCursor) params.set("cursor", state.failedCursor);
  const page = await busy(reset ? null : $("failed-more"), "Loading failed SMS…", () => api("GET", "/notifications?" + params));
  if (!page) return;
  const rows = await Promise.all(page.items.map((n) => smsRow(n, true)));
  if (reset) $("failed-body").replaceChildren();
  $("failed-body").append(...rows);
  state.failedCursor = page.next_cursor;
  $("failed-more").hidden = !page.next_cursor;
  $("failed-empty").hidden = $("failed-body").children.length > 0;
}

async function loadRetrying() {
  const page = await api("GET", "/notifications?status=queued&limit=100");
  const waiting = page.items.filter((n) => n.next_attempt_at);
  $("retry-body").replaceChildren(...await Promise.all(waiting.map((n) => smsRow(n, false))));
  $("retry-empty").hidden = waiting.length > 0;
}

// ---- trend -------------------------------------------------------------------------------

async function loadTrend() {
  const stats = await api("GET", `/stats?days=${state.trendDays}`);
  state.timezone = stats.timezone;
  $("trend-zone").textContent = `Days in the ${stats.timezone} time zone; today is the last one.`;
  for (const b of document.querySelectorAll("#view-trend [data-days]")) {
    b.setAttribute("aria-pressed", String(Number(b.dataset.days) === state.trendDays));
  }
  renderChart(stats.days);
  $("trend-body").replaceChildren(...stats.days.slice().reverse().map((d) => el("tr", { "data-date": d.date },
    el("th", { scope: "row", class: "nowrap", text: dayLabel(d.date, true) }),
    el("td", { class: "num", "data-orders": String(d.orders), text: count(d.orders) }),
    el("td", { class: "num", text: Object.entries(d.amount).map(([c, a]) => money(a, c)).join(", ") || "–" }),
    el("td", { class: "num", "data-delivered": String(d.sms.delivered), text: count(d.sms.delivered) }),
    el("td", { class: "num", "data-failed": String(d.sms.failed), text: count(d.sms.failed) }))));
}

/// Bars per day: orders, SMS delivered, SMS failed, on one scale. Drawn at the box's own
/// width, so that its text keeps its size on a phone too.
function renderChart(days) {
  state.chartDays = days;
  const box = $("chart");
  const width = Math.max(300, Math.round(box.clientWidth || 760)), height = 240;
  const left = 36, right = 8, top = 12, bottom = 30;
  const plotW = width - left - right, plotH = height - top - bottom;
  const max = Math.max(1, ...days.flatMap((d) => [d.orders, d.sms.delivered, d.sms.failed]));
  // A round top of the scale whose half is a whole number too.
  const step = Math.pow(10, Math.floor(Math.log10(max)));
  let top_ = Math.ceil(max / step) * step;
  if (top_ % 2) top_ += step;
  const y = (v) => top + plotH - (v / top_) * plotH;
  const slot = plotW / days.length;
  const barW = Math.max(2, Math.min(16, (slot - 3) / 3));
  const children = [];
  for (const tick of [0, top_ / 2, top_]) {
    children.push(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(tick), y2: y(tick) }));
    children.push(svg("text", { class: "axis", x: left - 6, y: y(tick) + 4, "text-anchor": "end" }, count(tick)));
  }
  const labelEvery = Math.max(1, Math.ceil(days.length / Math.floor(plotW / 52)));
  days.forEach((d, i) => {
    const x0 = left + i * slot + (slot - barW * 3) / 2;
    [["orders", d.orders], ["delivered", d.sms.delivered], ["failed", d.sms.failed]].forEach(([series, value], k) => {
      children.push(svg("rect", {
        class: `bar ${series}`, x: (x0 + k * barW).toFixed(1), y: y(value).toFixed(1),
        width: Math.max(1, barW - 1).toFixed(1), height: Math.max(0, top + plotH - y(value)).toFixed(1),
        "data-date": d.date, "data-series": series, "data-value": value,
      }, svg("title", {}, `${dayLabel(d.date, true)}: ${value} ${series === "orders" ? "orders" : "SMS " + series}`)));
    });
    if ((days.length - 1 - i) % labelEvery === 0) {
      // The last label ends at the edge instead of running past it.
      const last = i === days.length - 1;
      const x = last ? width - right : left + i * slot + slot / 2;
      children.push(svg("text", { class: "axis", x: x.toFixed(1), y: height - 10, "text-anchor": last ? "end" : "middle" }, dayLabel(d.date)));
    }
  });
  children.push(svg("line", { class: "baseline", x1: left, x2: width - right, y1: y(0), y2: y(0) }));
  box.replaceChildren(svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "Chart of the numbers in the table below" }, ...children));
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
  } else if (e.status === 409 && /phone/.test(e.message)) {
    fieldError(form, "phone", e.message);
  } else if (e.status === 409 && /code/.test(e.message)) {
    fieldError(form, "code", e.message);
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

/// Submits a create form once: the button stays disabled until the answer, and the request
/// carries an Idempotency-Key, so a double click or a retried request creates one record.
async function submitCreate(event, path, body, done) {
  event.preventDefault();
  const form = event.target;
  const button = form.querySelector("button[type=submit]");
  if (button.disabled) return;
  clearErrors(form);
  const key = newKey();
  try {
    const created = await busy(button, "Saving…", () => api("POST", path, body, { key }));
    if (!created) return;
    form.reset();
    const message = done(created);
    form.querySelector("[data-ok]").textContent = message;
    progress(message, "ok");
  } catch (e) {
    showProblem(form, e);
  }
}

function submitCustomer(event) {
  return submitCreate(event, "/customers", formValues(event.target),
    (c) => `Customer ${c.name} created (code ${c.code}).`);
}

function submitOrder(event) {
  const body = formValues(event.target);
  if (body.quantity !== undefined) {
    const n = Number(body.quantity);
    body.quantity = Number.isInteger(n) ? n : body.quantity;
  }
  return submitCreate(event, "/orders", body, (o) => `Order ${o.order_number} created.`);
}

// ---- start -----------------------------------------------------------------------------

/// Who is signed in, and their role: shown in the top bar, and on <html data-role>, which
/// decides (in style.css) which controls show.
function showMe(me) {
  state.me = me;
  $("who").textContent = me.name || me.email || me.subject;
  const role = $("who-role");
  role.textContent = me.role || "";
  role.title = me.role ? `Your role: ${me.role}` : "";
  role.hidden = !me.role;
  document.documentElement.dataset.role = me.role || "";
}

/// Asks the server for the principal again (after a 403, or a reconnect).
async function refreshMe() {
  try {
    const me = await call("GET", "/auth/me");
    if (state.me) showMe(me);
  } catch (e) {
    if (e.status === 401) showSignIn();
  }
}

async function start() {
  try {
    state.me = await call("GET", "/auth/me");
  } catch {
    showSignIn();
    return;
  }
  showMe(state.me);
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
  $("order-delete").addEventListener("click", deleteOrder);
  $("order-filter").addEventListener("submit", applyFilter);
  $("filter-clear").addEventListener("click", () => setOrdersHash(new URLSearchParams()));
  $("filter-today").addEventListener("click", () => {
    const today = businessDay(new Date().toISOString());
    const params = filterQuery();
    params.set("start_date", today);
    params.set("end_date", today);
    setOrdersHash(params);
  });
  $("orders-more").addEventListener("click", () => loadOrders(false));
  $("customers-more").addEventListener("click", () => loadCustomers(false).catch(showLoadError));
  $("customer-search").addEventListener("input", () => debounce("search", 250, () => loadCustomers(true).catch(showLoadError)));
  $("customer-edit").addEventListener("submit", saveCustomer);
  $("customer-delete").addEventListener("click", deleteCustomer);
  $("customer-orders-more").addEventListener("click", () => loadCustomerOrders(false).catch(showLoadError));
  $("import-form").addEventListener("submit", checkImport);
  $("import-file").addEventListener("change", resetImport);
  $("import-run").addEventListener("click", runImport);
  $("failed-more").addEventListener("click", () => loadFailed(false).catch(showLoadError));
  for (const b of document.querySelectorAll("#view-trend [data-days]")) {
    b.addEventListener("click", () => { state.trendDays = Number(b.dataset.days); loadTrend().catch(showLoadError); });
  }
  window.addEventListener("hashchange", route);
  // "Today" moves on at midnight even when nothing happens.
  setInterval(() => { if (state.me) refreshCounters(); }, 60000);
  window.addEventListener("resize", () => debounce("chart", 200, () => {
    if (state.view === "trend" && state.chartDays) renderChart(state.chartDays);
  }));
  start();
});
