// Console-like load on Pier's admin listener at a fixed rate (open loop); benches/admin/run.sh
// runs it with node beside a registry load.
//
//   node browse-load.mjs ADMIN_URL RATE SECONDS AUTH_HEADER REPOS BIG_REPO BIG_TAGS
//
// Request i is sent at start + i / RATE seconds whatever the answers before it did (at most 64
// in flight; a request that would exceed that is counted as skipped). The requests cycle
// through what the console's pages fetch (app.js): the dashboard's /metrics, /api/v1/mirror
// and /api/v1/plugins (and /metrics once more: it samples every 3 s), the first repositories
// page, a page after a random repository, a filtered page, the tags of a random repository,
// a page of the big repository's tags after a random tag, and a manifest. Repository names
// are those of benches/console/seed.mjs. Prints one JSON line: sent, ok, errors, skipped,
// the achieved rate, latency median and p99 (ms), body bytes.
import http from "node:http";

const [admin, rateArg, secondsArg, authHeader, reposArg, bigRepo, bigTagsArg] = process.argv.slice(2);
if (!admin || !rateArg || !secondsArg || !reposArg || !bigRepo || !bigTagsArg) {
  console.error("usage: node browse-load.mjs ADMIN_URL RATE SECONDS AUTH_HEADER REPOS BIG_REPO BIG_TAGS");
  process.exit(2);
}
const RATE = Number(rateArg);
const SECONDS = Number(secondsArg);
const REPOS = Number(reposArg);
const BIG_TAGS = Number(bigTagsArg);
const MAX_IN_FLIGHT = 64;
const base = new URL(admin);
const agent = new http.Agent({ keepAlive: true, maxSockets: MAX_IN_FLIGHT });
const headers = { "X-Requested-With": "pier-console" };
if (authHeader) headers.Authorization = authHeader;

const enc = encodeURIComponent;
const rand = (n) => Math.floor(Math.random() * n);
const repoName = (i) => `proj${String(Math.floor(i / 100)).padStart(2, "0")}/app${String(i % 100).padStart(3, "0")}`;
const tagName = (t) => `v${String(t).padStart(5, "0")}`;
const cycle = [
  () => "/metrics",
  () => "/api/v1/mirror",
  () => "/api/v1/plugins",
  () => "/api/v1/repositories?n=50",
  () => `/api/v1/repositories?n=50&last=${enc(repoName(rand(REPOS)))}`,
  () => `/api/v1/repositories?n=50&q=app0${String(rand(100)).padStart(2, "0")}`,
  () => `/api/v1/repositories/${enc(repoName(1 + rand(REPOS - 1)))}/-/tags?n=50`,
  () => `/api/v1/repositories/${enc(bigRepo)}/-/tags?n=50&last=${tagName(rand(BIG_TAGS))}`,
  () => `/api/v1/repositories/${enc(repoName(rand(REPOS)))}/-/manifests/v00000`,
  () => "/metrics",
];

const lat = [];
let sent = 0, ok = 0, errors = 0, skipped = 0, inFlight = 0, bytes = 0;
const firstErrors = [];

function fire(path) {
  const t0 = process.hrtime.bigint();
  inFlight++;
  const req = http.request({ host: base.hostname, port: base.port, path, agent, headers }, (res) => {
    res.on("data", (c) => { bytes += c.length; });
    res.on("end", () => {
      inFlight--;
      lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (res.statusCode === 200) ok++;
      else { errors++; if (firstErrors.length < 3) firstErrors.push(`${path}: ${res.statusCode}`); }
    });
  });
  req.on("error", (e) => { inFlight--; errors++; if (firstErrors.length < 3) firstErrors.push(`${path}: ${e.message}`); });
  req.end();
}

const start = performance.now();
const total = Math.round(RATE * SECONDS);
await new Promise((resolve) => {
  const tick = () => {
    const now = performance.now();
    while (sent + skipped < total && start + ((sent + skipped) * 1000) / RATE <= now) {
      const i = sent + skipped;
      if (inFlight >= MAX_IN_FLIGHT) { skipped++; continue; }
      fire(cycle[i % cycle.length]());
      sent++;
    }
    if (sent + skipped >= total) return resolve();
    const next = start + ((sent + skipped) * 1000) / RATE;
    setTimeout(tick, Math.max(0, next - performance.now()));
  };
  tick();
});
while (inFlight > 0) await new Promise((r) => setTimeout(r, 5));
const elapsed = (performance.now() - start) / 1000;
agent.destroy();
lat.sort((a, b) => a - b);
const q = (p) => (lat.length ? Math.round(lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] * 100) / 100 : null);
console.log(JSON.stringify({
  sent, ok, errors, skipped, seconds: Math.round(elapsed * 100) / 100,
  rate: Math.round((ok / elapsed) * 10) / 10, p50: q(0.5), p99: q(0.99), bytes, firstErrors,
}));
