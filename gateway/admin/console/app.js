// Pier console: a single-page app over the admin listener's API. Plain DOM, hash routes,
// no build step and no request to anything but this listener.
//
//   #/login                      username and password, checked against /api/v1/me
//   #/dashboard                  /metrics, /api/v1/mirror, /api/v1/plugins, sampled while open,
//                                and /api/v1/history (Pier's own samples of the last hour)
//   #/repositories?q=&last=      /api/v1/repositories, a page at a time
//   #/repository/NAME            /api/v1/repositories/NAME/-/tags
//   #/manifest/NAME/REFERENCE    /api/v1/repositories/NAME/-/manifests/REFERENCE
//   #/replication                /api/v1/replication/jobs (and .../ID/log), POST .../ID/retry
//   #/deliveries                 /api/v1/events/deliveries, POST .../ID/redeliver
//   #/plugins                    /api/v1/plugins, POST /api/v1/plugins/reload
//   #/fleet                      /api/v1/fleet: peers and their health, bytes, budgets (refreshed)
//   #/projects                   /api/v1/projects (the ones the user manages), create
//   #/project/NAME               /api/v1/projects/NAME: public, members (add, change, remove)
//   #/robots                     /api/v1/robots: create (secret shown once), rotate, delete
//   #/users                      /api/v1/users: create, delete
//   #/rules                      /api/v1/replication/rules: add (PUT .../NAME), delete
//
// System administrators see every page; other accounts (project admins) only Projects.
"use strict";

const SESSION_KEY = "pier-console";
const PAGE_SIZE = 50;
const SAMPLE_EVERY_MS = 3000;
const SAMPLES_KEPT = 60;
const REFRESH_EVERY_MS = 2000;

// ---------------------------------------------------------------------------------------
// DOM helpers

/** h("td", {class: "x", onclick: f}, "text", child, ...) */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

function table(headers, rows, empty) {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))), h("tbody", {}, rows));
}

function badge(state) {
  return h("span", { class: `badge ${state}` }, state);
}

function flash(message, kind) {
  const el = document.getElementById("flash");
  el.textContent = message || "";
  el.className = kind || "";
  el.hidden = !message;
}

const bytes = (n) => {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
};
const percent = (r) => `${(100 * r).toFixed(1)} %`;
const time = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "–");
const shortDigest = (d) => (d ? d.replace(/^(sha256:.{12}).*$/, "$1…") : "–");
const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------
// Session and API

const session = {
  get() {
    try { return JSON.parse(sessionStorage.getItem(SESSION_KEY)); } catch { return null; }
  },
  set(user, password, admin) {
    const auth = "Basic " + btoa(unescape(enc(`${user}:${password}`)));
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ user, auth, admin }));
  },
  clear() { sessionStorage.removeItem(SESSION_KEY); },
};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** Calls the admin listener with the session's credentials; JSON (or text) back. */
async function api(path, { method = "GET", auth, json } = {}) {
  const headers = { "X-Requested-With": "pier-console" };
  const a = auth || session.get()?.auth;
  if (a) headers.Authorization = a;
  let payload;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  // `credentials: "omit"`: the Authorization header still goes, but a 401 with a Basic
  // challenge comes back to us instead of opening the browser's own login dialog.
  const r = await fetch(path, { method, headers, body: payload, cache: "no-store", credentials: "omit" });
  if (r.status === 204) return null;
  const type = r.headers.get("content-type") || "";
  const body = type.includes("json") ? await r.json().catch(() => null) : await r.text();
  if (!r.ok) {
    const message = (body && body.error) || (typeof body === "string" && body.trim()) || r.statusText;
    if (r.status === 401 && !auth) {
      session.clear();
      location.hash = "#/login";
    }
    throw new ApiError(r.status, `${method} ${path}: ${r.status} ${message}`);
  }
  return body;
}

// ---------------------------------------------------------------------------------------
// Router

let timers = [];
let generation = 0;

/** Runs f every `ms` while the current page is shown. */
function every(ms, f) { timers.push(setInterval(f, ms)); }

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/dashboard";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "dashboard", args: parts.slice(1), query: new URLSearchParams(query) };
}

const pages = { login, dashboard, repositories, repository, manifest, replication, deliveries, plugins, fleet, projects, project, robots, users, rules, policies };
/** Pages an account that is not a system administrator may open. */
const MEMBER_PAGES = new Set(["login", "projects", "project"]);

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  const gen = ++generation;
  const { page, args, query } = parseHash();
  const user = session.get()?.user;
  const admin = session.get()?.admin;
  if (!user && page !== "login") { location.hash = "#/login"; return; }
  if (user && !admin && !MEMBER_PAGES.has(page)) { location.hash = "#/projects"; return; }
  for (const a of document.querySelectorAll("#nav a")) a.hidden = !admin && !MEMBER_PAGES.has(a.dataset.page);
  const who = document.getElementById("who");
  who.replaceChildren(...(user ? [h("span", { class: "user" }, user), h("button", { onclick: logout }, "Log out")] : []));
  document.getElementById("nav").hidden = !user;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  flash("");
  const main = document.getElementById("main");
  const show = (...nodes) => {
    if (gen === generation) main.replaceChildren(...nodes.flat().filter((n) => n || n === 0));
  };
  const render = pages[page] || notFound;
  try {
    await render(show, args, query);
  } catch (e) {
    if (gen === generation) flash(e.message);
  }
  if (gen === generation) document.body.dataset.page = page;
}

function logout() {
  session.clear();
  location.hash = "#/login";
}

function notFound(show) {
  show(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/dashboard" }, "Back to the dashboard")));
}

// ---------------------------------------------------------------------------------------
// Pages

async function login(show) {
  const user = h("input", { name: "username", autocomplete: "username", required: true });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const submit = async (ev) => {
    ev.preventDefault();
    const auth = "Basic " + btoa(unescape(enc(`${user.value}:${pass.value}`)));
    let admin;
    try {
      admin = (await api("/api/v1/me", { auth })).systemAdmin;
    } catch (e) {
      flash(e.status === 401 ? "Wrong username or password." : e.message);
      return;
    }
    session.set(user.value, pass.value, admin);
    location.hash = admin ? "#/dashboard" : "#/projects";
  };
  show(h("form", { class: "login", onsubmit: submit },
    h("h1", {}, "Sign in to Pier"),
    h("label", {}, "Username", user),
    h("label", {}, "Password", pass),
    h("button", { class: "primary", type: "submit" }, "Sign in")));
  user.focus();
}

/** Sums the samples of a Prometheus series (all label sets) in the text format. */
function metricSum(text, name) {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) sum += Number(line.slice(line.lastIndexOf(" ") + 1)) || 0;
  }
  return sum;
}

/** A line chart of `values` (oldest first) from 0 to the largest value, at least `floor`. */
function lineChart(title, values, format, floor, fixed) {
  const W = 360, H = 140, L = 48, B = 18;
  const top = fixed ? floor : Math.max(floor, ...values);
  const el = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (const f of [0, 0.5, 1]) {
    const y = (H - B) * (1 - f) + 4 * f;
    el.append(svg("line", { x1: L, x2: W, y1: y, y2: y }));
    const label = svg("text", { x: 2, y: y + 3 });
    label.textContent = format(top * f);
    el.append(label);
  }
  const step = (W - L) / Math.max(1, SAMPLES_KEPT - 1);
  const points = values.map((v, i) => {
    const x = L + step * (SAMPLES_KEPT - values.length + i);
    const y = (H - B) * (1 - v / top) + 4 * (v / top);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  el.append(svg("polyline", { points: points.join(" ") }));
  const caption = svg("text", { x: L, y: H - 4 });
  caption.textContent = `last ${values.length} samples, every ${SAMPLE_EVERY_MS / 1000} s`;
  el.append(caption);
  return h("div", { class: "card chart" }, h("div", { class: "label" }, title), el);
}

const card = (label, value, id) => h("div", { class: "card", "data-testid": id }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));

async function dashboard(show) {
  const samples = { hit: [], rps: [], bps: [] };
  let last = null;
  const sample = async () => {
    const [metrics, mirror, plug, hist] = await Promise.all([api("/metrics"), api("/api/v1/mirror"), api("/api/v1/plugins"), api("/api/v1/history?minutes=60")]);
    const now = Date.now();
    const requests = metricSum(metrics, "pier_http_requests_total");
    const served = metricSum(metrics, "pier_http_response_bytes_total");
    if (last) {
      const dt = (now - last.now) / 1000;
      push(samples.rps, Math.max(0, (requests - last.requests) / dt));
      push(samples.bps, Math.max(0, (served - last.served) / dt));
    }
    last = { now, requests, served };
    push(samples.hit, mirror.blobHitRatio);
    const calls = plug.plugins.reduce((s, p) => s + p.calls, 0);
    const seconds = plug.plugins.reduce((s, p) => s + p.callSeconds, 0);
    show(
      h("h1", {}, "Dashboard"),
      h("div", { class: "cards" },
        card("Registry requests", requests.toLocaleString("en"), "requests"),
        card("Bytes served", bytes(served), "bytes-served"),
        card("Mirror blob hit ratio", mirror.enabled ? percent(mirror.blobHitRatio) : "mirror off", "hit-ratio"),
        card("Bytes fetched from upstreams", bytes(mirror.upstreamBytes), "upstream-bytes"),
        card("Upstream bytes saved (served from the cache)", bytes(mirror.cacheBytes), "upstream-saved"),
        card("Blob requests served without an upstream fetch", (mirror.blobHits + mirror.blobCoalesced).toLocaleString("en"), "blob-hits"),
        card("Plugin calls", calls.toLocaleString("en"), "plugin-calls"),
        card("Mean plugin latency", calls ? `${(1e6 * seconds / calls).toFixed(1)} µs` : "–", "plugin-latency")),
      h("h2", {}, "Over time (while this page is open)"),
      h("div", { class: "charts" },
        lineChart("Mirror blob hit ratio", samples.hit, (v) => `${Math.round(100 * v)}%`, 1, true),
        lineChart("Registry requests per second", samples.rps, (v) => v.toFixed(1), 1),
        lineChart("Bytes served per second", samples.bps, bytes, 1024)),
      historyCharts(hist),
      h("h2", {}, "Plugins"),
      pluginTable(plug.plugins));
  };
  const push = (a, v) => { a.push(v); if (a.length > SAMPLES_KEPT) a.shift(); };
  await sample();
  every(SAMPLE_EVERY_MS, () => sample().catch((e) => flash(e.message)));
}

/** Charts of the server's samples (kept for a day, so they survive reloads of the page). */
function historyCharts(hist) {
  const s = hist.samples;
  const rates = (f) => s.slice(1).map((b, i) => f(s[i], b, Math.max(0.001, (b.timeMs - s[i].timeMs) / 1000)));
  const ratio = (a, b) => { const l = b.blobLookups - a.blobLookups; return l > 0 ? (b.blobHits - a.blobHits) / l : 0; };
  const latency = (a, b) => { const c = b.pluginCalls - a.pluginCalls; return c > 0 ? 1e6 * (b.pluginSeconds - a.pluginSeconds) / c : 0; };
  const points = s.length - 1;
  const caption = `last hour: ${points} intervals of ${hist.everySeconds} s`;
  return [
    h("h2", {}, "Last hour (sampled by Pier every ", hist.everySeconds, " s)"),
    points < 1 ? h("p", { class: "muted" }, "Not enough samples yet.") :
      h("div", { class: "charts", "data-testid": "history" },
        historyChart("Requests per second (last hour)", rates((a, b, dt) => (b.requests - a.requests) / dt), (v) => v.toFixed(1), 1, caption),
        historyChart("Bytes served per second (last hour)", rates((a, b, dt) => (b.bytesSent - a.bytesSent) / dt), bytes, 1024, caption),
        historyChart("Mirror hit ratio (last hour)", rates((a, b) => ratio(a, b)), (v) => `${Math.round(100 * v)}%`, 1, caption, true),
        historyChart("Upstream bytes saved per second (last hour)", rates((a, b, dt) => (b.cacheBytes - a.cacheBytes) / dt), bytes, 1024, caption),
        historyChart("Plugin latency, µs (last hour)", rates((a, b) => latency(a, b)), (v) => v.toFixed(1), 1, caption)),
  ];
}

/** A line chart over `values` spread across the full width. */
function historyChart(title, values, format, floor, caption, fixed) {
  const W = 360, H = 140, L = 48, B = 18;
  const top = fixed ? floor : Math.max(floor, ...values);
  const el = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (const f of [0, 0.5, 1]) {
    const y = (H - B) * (1 - f) + 4 * f;
    el.append(svg("line", { x1: L, x2: W, y1: y, y2: y }));
    const label = svg("text", { x: 2, y: y + 3 });
    label.textContent = format(top * f);
    el.append(label);
  }
  const step = (W - L) / Math.max(1, values.length - 1);
  const points = values.map((v, i) => `${(L + step * i).toFixed(1)},${((H - B) * (1 - v / top) + 4 * (v / top)).toFixed(1)}`);
  el.append(svg("polyline", { points: points.join(" ") }));
  const c = svg("text", { x: L, y: H - 4 });
  c.textContent = caption;
  el.append(c);
  return h("div", { class: "card chart" }, h("div", { class: "label" }, title), el);
}

async function repositories(show, _args, query) {
  const q = query.get("q") || "";
  const lastName = query.get("last");
  const params = new URLSearchParams({ n: PAGE_SIZE });
  if (q) params.set("q", q);
  if (lastName) params.set("last", lastName);
  const page = await api(`/api/v1/repositories?${params}`);
  const filter = h("input", { name: "q", value: q, placeholder: "filter by name" });
  const onsubmit = (ev) => { ev.preventDefault(); location.hash = `#/repositories?q=${enc(filter.value)}`; };
  const rows = page.repositories.map((r) =>
    h("tr", {}, h("td", {}, h("a", { href: `#/repository/${enc(r.name)}`, "data-repo": r.name }, r.name))));
  const nextLast = page.next && new URL(page.next, location.href).searchParams.get("last");
  show(
    h("h1", {}, "Repositories"),
    h("form", { class: "inline", onsubmit }, filter, h("button", { type: "submit" }, "Filter")),
    table(["Name"], rows, q ? `No repository name contains “${q}”.` : "No repositories yet."),
    h("div", { class: "pager" },
      lastName && h("a", { href: `#/repositories?q=${enc(q)}` }, "« First page"),
      nextLast && h("a", { href: `#/repositories?q=${enc(q)}&last=${enc(nextLast)}` }, "Next page »")));
}

async function repository(show, [name], query) {
  const params = new URLSearchParams({ n: PAGE_SIZE });
  if (query.get("last")) params.set("last", query.get("last"));
  const page = await api(`/api/v1/repositories/${enc(name)}/-/tags?${params}`);
  const rows = page.tags.map((t) => h("tr", { "data-tag": t.name },
    h("td", {}, h("a", { href: `#/manifest/${enc(name)}/${enc(t.name)}` }, t.name)),
    h("td", { class: "mono digest" }, t.digest),
    h("td", {}, bytes(t.size)),
    h("td", {}, t.platforms.length ? t.platforms.join(", ") : "–"),
    h("td", {}, t.referrers),
    h("td", { "data-col": "signatures" }, signatureText(t.signatures)),
    h("td", { "data-col": "policy" }, policyCell(t.admission)),
    h("td", { "data-col": "last-push" }, time(t.lastPush && Date.parse(t.lastPush))),
    h("td", { "data-col": "last-pull" }, time(t.lastPull && Date.parse(t.lastPull)))));
  const nextLast = page.next && new URL(page.next, location.href).searchParams.get("last");
  show(
    h("p", {}, h("a", { href: "#/repositories" }, "« Repositories")),
    h("h1", {}, name),
    table(["Tag", "Digest", "Size", "Platforms", "Referrers", "Signatures", "Pull policy", "Last push", "Last pull"], rows, "No tags."),
    h("div", { class: "pager" },
      nextLast && h("a", { href: `#/repository/${enc(name)}?last=${enc(nextLast)}` }, "Next page »")));
}

/** A tag's signatures: a cosign `.sig` tag and Sigstore bundles attached as referrers. */
function signatureText(s) {
  if (!s) return "–";
  const parts = [];
  if (s.cosign) parts.push("cosign");
  if (s.bundles) parts.push(`${s.bundles} Sigstore bundle${s.bundles > 1 ? "s" : ""}`);
  return parts.length ? parts.join(", ") : "none";
}

/** What the admission policies say of pulling a tag (null: none governs it). */
function policyCell(a) {
  if (!a) return "–";
  if (a.state === "admitted") return badge("admitted");
  const why = a.policy ? `${a.policy}: ${a.reason}` : a.reason;
  return [badge(a.state), " ", h("span", { class: "reason" }, why)];
}

/** Bytes from "500MiB", "2 GiB", "10GB" or a plain number; NaN when unreadable. */
function parseSize(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$/i.exec(text);
  if (!m) return NaN;
  const unit = (m[2] || "B").toUpperCase();
  const pow = { B: 0, KB: 1, KIB: 1, MB: 2, MIB: 2, GB: 3, GIB: 3, TB: 4, TIB: 4 }[unit];
  const base = unit.includes("I") ? 1024 : 1000;
  return pow === undefined ? NaN : Math.round(Number(m[1]) * base ** pow);
}

/** A project's policies: admission plugins, quota, retention and its last run. */
async function projectPolicies(name, reload) {
  const pol = await api(`/api/v1/policies/${enc(name)}`);
  const admin = session.get()?.admin;
  const admission = table(["Admission plugin", "Repositories"], pol.admission.map((a) =>
    h("tr", { "data-policy": a.name }, h("td", {}, a.name), h("td", { class: "mono" }, a.repositories.join(", ") || "all"))),
  "No admission plugin governs this project.");
  let quota = h("p", { class: "muted" }, "Quotas are not configured.");
  if (pol.quota) {
    const q = pol.quota;
    const share = q.limit ? ` (${Math.round((100 * q.used) / q.limit)} %)` : "";
    const limit = h("input", { name: "quota-limit", placeholder: "e.g. 10GiB, empty: none" });
    const set = action(() => {
      const text = limit.value.trim();
      const limitBytes = text === "" ? null : parseSize(text);
      if (Number.isNaN(limitBytes)) throw new Error(`not a size: ${text}`);
      return api(`/api/v1/quotas/${enc(name)}`, { method: "PUT", json: { limit: limitBytes } });
    }, () => "Quota set.", reload);
    quota = [h("dl", { "data-testid": "quota" },
      h("dt", {}, "Used"), h("dd", { "data-testid": "quota-used" }, `${bytes(q.used)}${share}`),
      h("dt", {}, "Limit"), h("dd", { "data-testid": "quota-limit" }, q.limit === null ? "none" : bytes(q.limit)),
      h("dt", {}, "Digests"), h("dd", {}, q.items)),
    admin && h("form", { class: "inline", id: "set-quota", onsubmit: set }, limit, h("button", { type: "submit" }, "Set limit"))];
  }
  let retention = h("p", { class: "muted" }, "No retention plugin is configured.");
  if (pol.retention) {
    const run = pol.retention.lastRun;
    const rows = (run ? run.removals : []).map((r) => h("tr", { "data-removal": `${r.repository}:${r.tag || r.digest}` },
      h("td", {}, r.repository), h("td", { class: "mono" }, r.tag || r.digest), h("td", {}, r.reason), h("td", {}, r.result)));
    const start = (dryRun) => action(() => api(`/api/v1/retention/${enc(name)}?dry_run=${dryRun}`, { method: "POST" }),
      (r) => `${dryRun ? "Dry run" : "Run"}: ${r.removals.length} removal(s).`, reload);
    retention = [
      h("p", { "data-testid": "retention-last" }, `Plugin ${pol.retention.plugin}. `,
        run ? `Last ${run.dryRun ? "dry run" : "run"} ${time(run.at)}: ${run.removals.length} removal(s), ${run.manifestsDeleted.length} untagged manifest(s) deleted.` : "Never run."),
      run && table(["Repository", "Tag or digest", "Why", "Result"], rows, "Nothing to remove."),
      admin && h("p", {}, h("button", { id: "retention-dry-run", onclick: start(true) }, "Dry run"), " ",
        h("button", { id: "retention-run", class: "danger", onclick: start(false) }, "Run and delete"))];
  }
  return h("section", { id: "policies" }, h("h2", {}, "Admission policies"), admission,
    h("h2", {}, "Quota"), quota, h("h2", {}, "Retention"), retention);
}

/** Projects (the first segment of repository names, and those with a quota) with their
 * quota; each links to its policies. */
async function policies(show, [name]) {
  if (name) {
    const load = async () => show(h("p", {}, h("a", { href: "#/policies" }, "« Policies")),
      h("h1", {}, `Project ${name}`), await projectPolicies(name, load));
    return load();
  }
  const [repos, quotas] = await Promise.all([
    api("/api/v1/repositories?n=1000"),
    api("/api/v1/quotas").catch(() => ({ quotas: [] })),
  ]);
  const byName = new Map(quotas.quotas.map((q) => [q.project, q]));
  for (const r of repos.repositories) {
    const p = r.name.split("/")[0];
    if (!byName.has(p)) byName.set(p, null);
  }
  const rows = [...byName.keys()].sort().map((p) => {
    const q = byName.get(p);
    return h("tr", { "data-project": p },
      h("td", {}, h("a", { href: `#/policies/${enc(p)}` }, p)),
      h("td", {}, q ? bytes(q.used) : "–"),
      h("td", {}, q ? bytes(q.limit) : "none"));
  });
  show(h("h1", {}, "Policies"),
    h("p", { class: "muted" }, "Admission plugins, quotas and retention, per project."),
    table(["Project", "Used", "Quota"], rows, "No projects yet."));
}

async function manifest(show, [name, reference]) {
  const m = await api(`/api/v1/repositories/${enc(name)}/-/manifests/${enc(reference)}`);
  const platform = (p) => (p ? `${p.os}/${p.architecture}${p.variant ? "/" + p.variant : ""}` : "–");
  const descriptorRows = (ds, link, withPlatform) => ds.map((d) => h("tr", {},
    h("td", { class: "mono" }, link ? h("a", { href: `#/manifest/${enc(name)}/${enc(d.digest)}` }, d.digest) : d.digest),
    h("td", {}, d.artifactType || d.mediaType || "–"),
    h("td", {}, bytes(d.size)),
    withPlatform && h("td", {}, platform(d.platform))));
  const heads = ["Digest", "Type", "Size"];
  show(
    h("p", {}, h("a", { href: `#/repository/${enc(name)}` }, `« ${name}`)),
    h("h1", {}, `${name} @ ${reference}`),
    h("dl", {},
      h("dt", {}, "Digest"), h("dd", { class: "mono", "data-testid": "manifest-digest" }, m.digest),
      h("dt", {}, "Media type"), h("dd", {}, m.mediaType),
      h("dt", {}, "Size"), h("dd", {}, bytes(m.size)),
      h("dt", {}, "Tags"), h("dd", {}, m.tags.join(", ") || "–"),
      h("dt", {}, "Config"), h("dd", { class: "mono" }, m.config ? m.config.digest : "–"),
      m.subject && [h("dt", {}, "Subject"), h("dd", { class: "mono" }, m.subject)]),
    m.manifests.length > 0 && [h("h2", {}, "Platforms"), table([...heads, "Platform"], descriptorRows(m.manifests, true, true), "")],
    h("h2", {}, "Layers"),
    table(heads, descriptorRows(m.layers, false), "No layers (an index or an artifact)."),
    h("h2", {}, "Referrers"),
    table(heads, descriptorRows(m.referrers, true), "No referrers."));
}

async function replication(show) {
  const open = new Set();
  const load = async () => {
    const { jobs } = await api("/api/v1/replication/jobs?n=200");
    const logs = new Map(await Promise.all([...open].map(async (id) =>
      [id, (await api(`/api/v1/replication/jobs/${id}/log`)).lines])));
    const retry = (id) => action(() => api(`/api/v1/replication/jobs/${id}/retry`, { method: "POST" }), `Job ${id} queued again.`, load);
    const toggle = (id) => async () => {
      if (open.has(id)) open.delete(id); else open.add(id);
      await load().catch((e) => flash(e.message));
    };
    const rows = jobs.flatMap((j) => {
      const r = j.report || {};
      const report = j.report ? `${bytes(r.bytes)} sent, ${r.blobsCopied} blobs copied, ${r.blobsSkipped} skipped, ${r.blobsMounted} mounted, ${r.manifests} manifests` : "–";
      const row = h("tr", { "data-job-id": j.id },
        h("td", {}, j.id),
        h("td", {}, j.rule),
        h("td", { class: "mono" }, `${j.sourceRepository}:${j.reference}`, h("br"), `→ ${j.destination}/${j.destinationRepository}${j.delete ? " (delete)" : ""}`),
        h("td", { class: "state" }, badge(j.state)),
        h("td", { class: "attempts" }, j.attempts),
        h("td", {}, report),
        h("td", { class: "error" }, r.error || ""),
        h("td", {}, j.updated ? j.updated.replace("T", " ").replace(/\.\d+Z$/, " UTC") : "–"),
        h("td", {},
          h("button", { class: "log", onclick: toggle(j.id) }, open.has(j.id) ? "Hide log" : "Log"), " ",
          j.state === "failed" && h("button", { class: "retry", "data-job": j.id, onclick: retry(j.id) }, "Retry")));
      const lines = logs.get(j.id);
      if (!lines) return [row];
      return [row, h("tr", { class: "job-log", "data-log-of": j.id }, h("td", { colspan: 9 },
        h("pre", { class: "mono" }, lines.map((l) => `${l.time}  ${l.message}`).join("\n") || "(no lines yet)")))];
    });
    show(h("h1", {}, "Replication jobs"),
      table(["Job", "Rule", "Image", "State", "Attempts", "Report", "Error", "Updated", ""], rows, "No replication jobs."));
  };
  await load();
  every(REFRESH_EVERY_MS, () => load().catch((e) => flash(e.message)));
}

async function deliveries(show) {
  const load = async () => {
    const { deliveries: list } = await api("/api/v1/events/deliveries?n=200");
    const redeliver = (id) => async (ev) => {
      ev.target.disabled = true;
      try {
        await api(`/api/v1/events/deliveries/${enc(id)}/redeliver`, { method: "POST" });
        flash(`Delivery ${id} queued again.`, "info");
      } catch (e) {
        flash(e.message);
      }
      await load().catch((e) => flash(e.message));
    };
    const rows = list.map((d) => h("tr", { "data-delivery-id": d.id },
      h("td", { class: "mono" }, d.id),
      h("td", {}, d.eventId),
      h("td", { class: "mono" }, d.url),
      h("td", {}, badge(d.status)),
      h("td", {}, d.attempts),
      h("td", {}, d.lastStatus ?? "–"),
      h("td", {}, d.lastError || ""),
      h("td", {}, d.lastAttempt || "–"),
      h("td", {}, d.status !== "pending" && h("button", { class: "redeliver", onclick: redeliver(d.id) }, "Redeliver"))));
    show(h("h1", {}, "Webhook deliveries"),
      table(["Delivery", "Event", "URL", "Status", "Attempts", "Last status", "Last error", "Last attempt", ""], rows, "No webhook deliveries."));
  };
  await load();
  every(REFRESH_EVERY_MS, () => load().catch((e) => flash(e.message)));
}

function pluginTable(list) {
  const rows = list.map((p) => {
    const errors = Object.entries(p.errors).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(", ");
    return h("tr", { "data-plugin": p.name },
      h("td", {}, p.name),
      h("td", {}, p.world),
      h("td", { class: "mono", title: p.digest }, shortDigest(p.digest)),
      h("td", {}, p.calls),
      h("td", {}, p.denials),
      h("td", {}, errors || "0"),
      h("td", {}, p.traps),
      h("td", {}, p.calls ? `${(1e6 * p.callSeconds / p.calls).toFixed(1)} µs` : "–"),
      h("td", {}, p.reloads));
  });
  return table(["Name", "Hook", "Digest", "Calls", "Denials", "Errors", "Traps", "Mean latency", "Reloads"], rows, "No plugins loaded.");
}

async function plugins(show) {
  const load = async () => {
    const { plugins: list } = await api("/api/v1/plugins");
    const reload = async (ev) => {
      ev.target.disabled = true;
      try {
        flash((await api("/api/v1/plugins/reload", { method: "POST" })).results.join("; "), "info");
      } catch (e) {
        flash(e.message);
      }
      await load().catch((e) => flash(e.message));
    };
    show(h("h1", {}, "Plugins"), pluginTable(list),
      h("p", {}, h("button", { onclick: reload }, "Reload plugins")));
  };
  await load();
}

/** The edge fleet: this node, its peers and their health, bytes moved, upstream budgets. */
async function fleet(show) {
  const load = async () => {
    const f = await api("/api/v1/fleet");
    const num = (n) => (n ?? 0).toLocaleString("en");
    const budgets = table(
      ["Upstream", "Fetches in flight", "Max concurrent", "Paused for", "Pauses (429)", "Rate limit left"],
      f.budgets.map((b) => h("tr", { "data-upstream": b.upstream },
        h("td", {}, b.upstream),
        h("td", {}, num(b.fetchesInFlight)),
        h("td", {}, b.maxConcurrentFetches ? num(b.maxConcurrentFetches) : "no limit"),
        h("td", {}, b.pausedForSeconds ? `${Math.ceil(b.pausedForSeconds)} s` : "–"),
        h("td", {}, num(b.pauses)),
        h("td", {}, b.rateLimitRemaining === null ? "–" : `${num(b.rateLimitRemaining)} of ${num(b.rateLimitLimit)}`))),
      "No upstreams configured.");
    if (!f.enabled) {
      show(h("h1", {}, "Fleet"),
        h("p", { class: "muted", "data-testid": "fleet-off" }, "This node is not part of a fleet ([fleet] is not configured)."),
        h("h2", {}, "Upstream budgets"), budgets);
      return;
    }
    const peers = table(
      ["Peer", "Health", "Last error", "Last health check passed", "Bytes received from it"],
      f.peers.map((p) => h("tr", { "data-peer": p.url },
        h("td", {}, p.url),
        h("td", {}, h("span", { class: `badge ${p.healthy ? "succeeded" : "failed"}` },
          p.healthy ? "healthy" : p.coolDownS ? `cooling down (${p.coolDownS} s)` : "down")),
        h("td", {}, p.lastError || ""),
        h("td", {}, p.lastSeen ? new Date(p.lastSeen * 1000).toLocaleString() : "never"),
        h("td", {}, bytes(p.bytesFrom)))),
      "No peers known yet.");
    show(h("h1", {}, "Fleet"),
      h("p", {}, "This node: ", h("code", {}, f.me), ` (members: ${f.discovery})`),
      h("div", { class: "cards" },
        card("Upstream requests saved (answered by peers)", num(f.upstreamRequestsSaved), "fleet-saved"),
        card("Bytes received from peers", bytes(f.bytesFromPeers), "fleet-from-peers"),
        card("Bytes served to peers", bytes(f.servedToPeersBytes), "fleet-to-peers"),
        card("Bytes fetched from upstreams", bytes(f.upstreamBytes), "fleet-upstream")),
      h("h2", {}, "Peers"), peers,
      h("h2", {}, "Upstream budgets"), budgets);
  };
  await load();
  every(REFRESH_EVERY_MS, () => load().catch((e) => flash(e.message)));
}

const ROLES = ["project-admin", "developer", "guest"];

/** Runs a change; flashes `done` (or the error) and reloads the page's data. */
function action(run, done, reload) {
  return async (ev) => {
    ev.preventDefault();
    if (ev.target.disabled !== undefined) ev.target.disabled = true;
    try {
      const r = await run();
      flash(typeof done === "function" ? done(r) : done, "info");
    } catch (e) {
      flash(e.message);
    }
    await reload().catch((e) => flash(e.message));
  };
}

function select(name, options, value) {
  return h("select", { name }, options.map((o) => h("option", { value: o, selected: o === value }, o)));
}

async function projects(show, _args, query) {
  const load = async () => {
    const params = new URLSearchParams({ n: PAGE_SIZE });
    if (query.get("last")) params.set("last", query.get("last"));
    const page = await api(`/api/v1/projects?${params}`);
    const rows = page.projects.map((p) => h("tr", { "data-project": p.name },
      h("td", {}, h("a", { href: `#/project/${enc(p.name)}` }, p.name)),
      h("td", {}, p.public ? "public" : "private"),
      h("td", {}, p.members.length)));
    const nextLast = page.next && new URL(page.next, location.href).searchParams.get("last");
    const name = h("input", { name: "project", placeholder: "new project name", required: true });
    const pub = h("input", { name: "public", type: "checkbox" });
    const create = action(() => api("/api/v1/projects", { method: "POST", json: { name: name.value, public: pub.checked } }),
      () => `Project ${name.value} created.`, load);
    show(h("h1", {}, "Projects"),
      table(["Project", "Access", "Members"], rows, "No project you manage."),
      h("div", { class: "pager" }, nextLast && h("a", { href: `#/projects?last=${enc(nextLast)}` }, "Next page »")),
      session.get()?.admin && h("form", { class: "inline", id: "create-project", onsubmit: create },
        name, h("label", {}, pub, " public"), h("button", { type: "submit" }, "Create project")));
  };
  await load();
}

async function project(show, [name]) {
  const base = `/api/v1/projects/${enc(name)}`;
  const load = async () => {
    const p = await api(base);
    const member = (m) => `${base}/members/${m.kind}/${enc(m.name)}`;
    const rows = p.members.map((m) => {
      const role = select("role", ROLES, m.role);
      role.addEventListener("change", action(() => api(member(m), { method: "PUT", json: { role: role.value } }),
        `${m.name} is now ${role.value}.`, load));
      return h("tr", { "data-member": m.name, "data-kind": m.kind },
        h("td", {}, m.name), h("td", {}, m.kind), h("td", {}, role),
        h("td", {}, h("button", { class: "remove", onclick: action(() => api(member(m), { method: "DELETE" }), `${m.name} removed.`, load) }, "Remove")));
    });
    const who = h("input", { name: "member", placeholder: "user or group name", required: true });
    const kind = select("kind", ["user", "group"], "user");
    const role = select("new-role", ROLES, "developer");
    const add = action(() => api(`${base}/members/${kind.value}/${enc(who.value)}`, { method: "PUT", json: { role: role.value } }),
      () => `${who.value} added as ${role.value}.`, load);
    const toggle = action(() => api(base, { method: "PATCH", json: { public: !p.public } }),
      `${name} is now ${p.public ? "private" : "public"}.`, load);
    const remove = action(() => api(base, { method: "DELETE" }), `Project ${name} deleted.`,
      async () => { location.hash = "#/projects"; });
    const policies = await projectPolicies(name, load);
    show(h("p", {}, h("a", { href: "#/projects" }, "« Projects")),
      h("h1", {}, name),
      h("p", {}, p.public ? "Public: everyone may pull and search. " : "Private: members only. ",
        h("button", { id: "toggle-public", onclick: toggle }, p.public ? "Make private" : "Make public")),
      h("h2", {}, "Members"),
      table(["Name", "Kind", "Role", ""], rows, "No members."),
      h("form", { class: "inline", id: "add-member", onsubmit: add }, who, kind, role, h("button", { type: "submit" }, "Add member")),
      policies,
      session.get()?.admin && h("p", {}, h("button", { id: "delete-project", class: "danger", onclick: remove }, "Delete project")));
  };
  await load();
}

/** A robot's or a rotation's secret, shown once. */
function secretBox(login, secret) {
  return h("div", { class: "card secret", "data-testid": "robot-secret" },
    h("div", { class: "label" }, `Secret of ${login} (shown once: copy it now)`),
    h("div", { class: "value mono" }, secret));
}

async function robots(show) {
  let secret = null;
  const load = async () => {
    const { robots: list } = await api("/api/v1/robots");
    const rows = list.map((r) => h("tr", { "data-robot": r.name },
      h("td", { class: "mono" }, r.login),
      h("td", {}, r.permissions.map((p) => `${p.project}: ${p.actions.join(", ")}`).join("; ")),
      h("td", {}, r.description),
      h("td", {}, r.expired ? `expired ${r.expiresAt}` : r.expiresAt || "never"),
      h("td", {},
        h("button", { class: "rotate", onclick: action(async () => { const s = await api(`/api/v1/robots/${enc(r.name)}/secret`, { method: "POST" }); secret = [s.login, s.secret]; }, `New secret for ${r.login}.`, load) }, "Rotate secret"), " ",
        h("button", { class: "remove", onclick: action(() => api(`/api/v1/robots/${enc(r.name)}`, { method: "DELETE" }), `${r.login} deleted.`, load) }, "Delete"))));
    const name = h("input", { name: "robot", placeholder: "name", required: true });
    const proj = h("input", { name: "robot-project", placeholder: "project", required: true });
    const boxes = ["pull", "push", "delete", "search"].map((a) => h("input", { type: "checkbox", name: `action-${a}`, value: a, checked: a === "pull" }));
    const days = h("input", { name: "expires", type: "number", min: 1, placeholder: "days (never)" });
    const create = action(async () => {
      const body = { name: name.value, permissions: [{ project: proj.value, actions: boxes.filter((b) => b.checked).map((b) => b.value) }] };
      if (days.value) body.expiresInDays = Number(days.value);
      const r = await api("/api/v1/robots", { method: "POST", json: body });
      secret = [r.login, r.secret];
      return r;
    }, (r) => `${r.login} created.`, load);
    show(h("h1", {}, "Robot accounts"),
      secret && secretBox(...secret),
      table(["Login", "Permissions", "Description", "Expires", ""], rows, "No robot accounts."),
      h("form", { class: "inline", id: "create-robot", onsubmit: create },
        name, proj, boxes.map((b) => h("label", {}, b, ` ${b.value}`)), days, h("button", { type: "submit" }, "Create robot")));
    secret = null;
  };
  await load();
}

async function users(show) {
  const load = async () => {
    const { users: list } = await api("/api/v1/users");
    const rows = list.map((u) => h("tr", { "data-user": u.name },
      h("td", {}, u.name),
      h("td", {}, u.name !== session.get()?.user && h("button", { class: "remove", onclick: action(() => api(`/api/v1/users/${enc(u.name)}`, { method: "DELETE" }), `${u.name} deleted.`, load) }, "Delete"))));
    const name = h("input", { name: "new-user", placeholder: "name", autocomplete: "off", required: true });
    const pass = h("input", { name: "new-password", type: "password", placeholder: "password", autocomplete: "new-password", required: true });
    const create = action(() => api("/api/v1/users", { method: "POST", json: { name: name.value, password: pass.value } }),
      () => `User ${name.value} created.`, load);
    show(h("h1", {}, "Users"),
      table(["Name", ""], rows, "No local users."),
      h("form", { class: "inline", id: "create-user", onsubmit: create }, name, pass, h("button", { type: "submit" }, "Create user")));
  };
  await load();
}

async function rules(show) {
  const load = async () => {
    const { rules: list } = await api("/api/v1/replication/rules");
    const source = (r) => (r.source.project !== undefined ? `project ${r.source.project}` : `repository ${r.source.repository}`);
    const trigger = (r) => (r.trigger === "event" ? "on push" : `every ${r.trigger.everySecs} s`);
    const rows = list.map((r) => h("tr", { "data-rule": r.name },
      h("td", {}, r.name),
      h("td", {}, source(r)),
      h("td", {}, r.tags.length ? r.tags.join(", ") : "every tag"),
      h("td", {}, `${r.direction} ${r.target}`),
      h("td", { class: "mono" }, r.destination),
      h("td", {}, trigger(r), r.delete ? ", deletes too" : ""),
      h("td", {}, r.plugin),
      h("td", {}, h("button", { class: "remove", onclick: action(() => api(`/api/v1/replication/rules/${enc(r.name)}?plugin=${enc(r.plugin)}`, { method: "DELETE" }), `Rule ${r.name} deleted.`, load) }, "Delete"))));
    const name = h("input", { name: "rule", placeholder: "rule name", required: true });
    const kind = select("rule-source", ["project", "repository"], "project");
    const pattern = h("input", { name: "rule-pattern", placeholder: "project or repository (pattern)", required: true });
    const tags = h("input", { name: "rule-tags", placeholder: "tags, e.g. v* (every tag)" });
    const target = h("input", { name: "rule-target", placeholder: "target", required: true });
    const when = select("rule-trigger", ["event", "every"], "event");
    const secs = h("input", { name: "rule-every", type: "number", min: 1, placeholder: "seconds" });
    const create = action(() => {
      const body = {
        source: { [kind.value]: pattern.value },
        tags: tags.value.split(",").map((t) => t.trim()).filter((t) => t),
        target: target.value,
        trigger: when.value === "event" ? "event" : { everySecs: Number(secs.value) },
      };
      return api(`/api/v1/replication/rules/${enc(name.value)}`, { method: "PUT", json: body });
    }, () => `Rule ${name.value} saved.`, load);
    show(h("h1", {}, "Replication rules"),
      table(["Rule", "Source", "Tags", "To", "Destination", "When", "Plugin", ""], rows, "No replication rules."),
      h("form", { class: "inline", id: "create-rule", onsubmit: create },
        name, kind, pattern, tags, target, when, secs, h("button", { type: "submit" }, "Save rule")));
  };
  await load();
}

window.addEventListener("hashchange", route);
route();
