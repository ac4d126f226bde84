// Times the Pier console in Debian's Chromium (headless, playwright-core); benches/console/run.sh
// runs it with node.
//
// Environment: CONSOLE_URL (the admin listener), ADMIN_USER, ADMIN_PASS, PLAYWRIGHT_DIR
// (holds node_modules/playwright-core), CHROMIUM, REPS (repetitions), BIG_REPO (a repository
// with many tags), DEEP_LAST (a `last` for a repositories page near the catalog's end), FILTER
// (a `q` for the repositories filter), SHOTS (optional: a directory for screenshots of the
// first repetition).
//
// "Rendered" means: the console's router has set `<body data-page="NAME">`, which it does
// only after the page's render function has fetched its data and put the DOM in place
// (app.js `route()`), and then the browser has run two animation frames (the first frame
// drawn with that DOM). Every repetition opens a fresh browser context (empty HTTP cache,
// empty sessionStorage):
//
//   login      the login form submitted (capturing `submit` listener) -> dashboard rendered;
//              this includes the login check (GET /api/v1/plugins) and the dashboard's fetches
//   dashboard  a second fresh context, with the session already in sessionStorage, opening
//              /console/#/dashboard: navigation start (performance.timeOrigin) -> rendered,
//              i.e. HTML, CSS, JS, then /metrics + /api/v1/mirror + /api/v1/plugins
//   repos      then `location.hash = "#/repositories"`: the first page (50 names)
//   deep       `#/repositories?last=DEEP_LAST`: a page near the end of the catalog
//   filter     `#/repositories?q=FILTER`: a filtered first page
//   tags       `#/repository/BIG_REPO`: the first page of tags (50) of the big repository
//   manifest   `#/manifest/BIG_REPO/<first tag>`: the manifest view
//
// For in-app navigations the clock starts when the hash is set (after removing the body's
// data-page, so the same page name counts again). Every response from /api/ or /metrics is
// recorded with its body size. Prints one JSON line per repetition and a last line
// {"ok":true,"reps":[...],"responses":{phase:[{path,status,bytes,ms}]},"checks":{...}}.
import { createRequire } from "node:module";
import path from "node:path";

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined || v === "") throw new Error(`${k} is not set`);
  return v;
};
const require = createRequire(path.join(env("PLAYWRIGHT_DIR"), "package.json"));
const { chromium } = require("playwright-core");

const BASE = env("CONSOLE_URL");
const USER = env("ADMIN_USER");
const PASS = env("ADMIN_PASS");
const REPS = Number(env("REPS", "5"));
const BIG = env("BIG_REPO");
const DEEP = env("DEEP_LAST");
const FILTER = env("FILTER");
const SHOTS = process.env.SHOTS || "";
const TIMEOUT = 60_000;
const enc = encodeURIComponent;
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

// Runs in every document before the console's own script: records when each data-page value
// is set (rendered) and the end of the second animation frame after it (painted), and when
// the login form is submitted.
const INIT = () => {
  window.__marks = {};
  window.__submitAt = null;
  document.addEventListener("submit", () => { window.__submitAt = performance.now(); }, true);
  new MutationObserver((records) => {
    for (const r of records) {
      const name = r.target.dataset && r.target.dataset.page;
      if (r.target !== document.body || !name || window.__marks[name]) continue;
      const m = { rendered: performance.now() };
      window.__marks[name] = m;
      requestAnimationFrame(() => requestAnimationFrame(() => { m.painted = performance.now(); }));
    }
  }).observe(document, { attributes: true, attributeFilter: ["data-page"], subtree: true });
};

async function waitMark(page, name) {
  await page.waitForFunction((n) => window.__marks[n] && window.__marks[n].painted !== undefined, name,
    { timeout: TIMEOUT, polling: 10 });
  return page.evaluate((n) => window.__marks[n], name);
}

/** Sets the hash and times it until `name` is rendered and painted (ms from the hash change). */
async function navigate(page, hash, name) {
  return page.evaluate(([hash, name, timeout]) => new Promise((resolve, reject) => {
    delete window.__marks[name];
    document.body.removeAttribute("data-page");
    const t0 = performance.now();
    const timer = setTimeout(() => reject(new Error(`${hash}: not rendered in ${timeout} ms`)), timeout);
    const check = () => {
      const m = window.__marks[name];
      if (m && m.painted !== undefined) {
        clearTimeout(timer);
        resolve({ rendered: m.rendered - t0, painted: m.painted - t0 });
      } else {
        setTimeout(check, 2);
      }
    };
    location.hash = hash;
    check();
  }), [hash, name, TIMEOUT]);
}

const responses = {};
let phase = "setup";
let firstRep = true;
function watch(page) {
  page.on("response", async (r) => {
    const u = new URL(r.url());
    if (!u.pathname.startsWith("/api/") && u.pathname !== "/metrics") return;
    const p = phase;
    const rec = { path: u.pathname + u.search, status: r.status(), bytes: null, ms: null };
    try { rec.bytes = (await r.body()).length; } catch { /* the page went on */ }
    const t = r.request().timing();
    if (t && t.responseEnd >= 0) rec.ms = Math.round(t.responseEnd * 10) / 10;
    if (firstRep) (responses[p] ||= []).push(rec);
  });
}

async function shot(page, name) {
  if (SHOTS && firstRep) await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

const checks = {};
let browser;
try {
  browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const reps = [];
  for (let rep = 0; rep < REPS; rep++) {
    const row = {};

    // 1. Log in through the form.
    let ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    let page = await ctx.newPage();
    page.setDefaultTimeout(TIMEOUT);
    await page.addInitScript(INIT);
    watch(page);
    phase = "login";
    await page.goto(`${BASE}/console/#/login`);
    await waitMark(page, "login");
    await page.fill("input[name=username]", USER);
    await page.fill("input[name=password]", PASS);
    await page.click("button[type=submit]");
    const lm = await waitMark(page, "dashboard");
    const submitAt = await page.evaluate(() => window.__submitAt);
    row.login = { rendered: lm.rendered - submitAt, painted: lm.painted - submitAt };
    const session = await page.evaluate(() => sessionStorage.getItem("pier-console"));
    await ctx.close();

    // 2. Open the dashboard in a fresh context with the session in place.
    ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    await ctx.addInitScript((s) => { sessionStorage.setItem("pier-console", s); }, session);
    page = await ctx.newPage();
    page.setDefaultTimeout(TIMEOUT);
    await page.addInitScript(INIT);
    watch(page);
    phase = "dashboard";
    await page.goto(`${BASE}/console/#/dashboard`);
    row.dashboard = await waitMark(page, "dashboard");
    if (firstRep) {
      checks.dashboardCards = await page.locator(".cards .card").count();
      checks.dashboardRequests = (await page.textContent("[data-testid=requests] .value")).trim();
    }
    await shot(page, "dashboard");

    // 3. In-app navigations.
    phase = "repos";
    row.repos = await navigate(page, "#/repositories", "repositories");
    if (firstRep) {
      checks.reposRows = await page.locator("a[data-repo]").count();
      checks.reposNext = await page.locator(".pager a", { hasText: "Next page" }).count();
      checks.reposFirst = await page.locator("a[data-repo]").first().getAttribute("data-repo");
    }
    await shot(page, "repositories");
    phase = "deep";
    row.deep = await navigate(page, `#/repositories?last=${enc(DEEP)}`, "repositories");
    if (firstRep) checks.deepFirst = await page.locator("a[data-repo]").first().getAttribute("data-repo");
    phase = "filter";
    row.filter = await navigate(page, `#/repositories?q=${enc(FILTER)}`, "repositories");
    if (firstRep) checks.filterRows = await page.locator("a[data-repo]").count();
    phase = "tags";
    row.tags = await navigate(page, `#/repository/${enc(BIG)}`, "repository");
    if (firstRep) {
      checks.tagRows = await page.locator("tr[data-tag]").count();
      checks.tagNext = await page.locator(".pager a", { hasText: "Next page" }).count();
    }
    await shot(page, "repository");
    const firstTag = await page.locator("tr[data-tag]").first().getAttribute("data-tag");
    phase = "manifest";
    row.manifest = await navigate(page, `#/manifest/${enc(BIG)}/${enc(firstTag)}`, "manifest");
    if (firstRep) checks.manifestDigest = (await page.textContent("[data-testid=manifest-digest]")).trim();
    await shot(page, "manifest");
    const flash = await page.evaluate(() => document.getElementById("flash").hidden ? "" : document.getElementById("flash").textContent);
    if (flash) throw new Error(`the console flashed an error: ${flash}`);
    phase = "done";
    await ctx.close();
    out({ rep: rep + 1, ...row });
    reps.push(row);
    firstRep = false;
  }
  out({ ok: true, reps, responses, checks });
} catch (e) {
  out({ ok: false, error: String((e && e.stack) || e) });
  process.exitCode = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
}
