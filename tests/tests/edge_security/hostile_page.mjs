// A hostile web page in an operator's browser (Debian's Chromium, headless, driven by
// playwright-core): served from another origin on this machine, it tries to drive the
// admin API at ADMIN (http://127.0.0.1:PORT) with a no-cors fetch, a text/plain "simple"
// request, a form POST, and a DNS-rebinding name (rebind.localhost resolves to loopback in
// Chromium) whose answers the page could read as its own. tests/tests/edge_security/
// browser.rs runs it with node and then checks that nothing changed on the server.
//
// Environment: PLAYWRIGHT_DIR, CHROMIUM, ADMIN. Prints one JSON line: what the page saw.
import { createRequire } from "node:module";
import http from "node:http";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const require = createRequire(path.join(env("PLAYWRIGHT_DIR"), "package.json"));
const { chromium } = require("playwright-core");
const admin = env("ADMIN");
const adminPort = new URL(admin).port;

const page_html = `<!doctype html><html><body><iframe name="sink"></iframe><script>
const admin = ${JSON.stringify(admin)};
const gc = admin + "/api/v1/gc?untagged=true&grace=0s";
const seen = {};
async function attempt(name, f) {
  try { seen[name] = await f(); } catch (e) { seen[name] = "error: " + e.message; }
}
(async () => {
  await attempt("no-cors POST gc", async () => (await fetch(gc, { method: "POST", mode: "no-cors" })).type);
  await attempt("text/plain POST project", async () => (await fetch(admin + "/api/v1/projects", {
    method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" },
    body: JSON.stringify({ name: "evil", public: true }),
  })).type);
  await attempt("cors GET repositories", async () => (await fetch(admin + "/api/v1/repositories")).status);
  await attempt("form POST gc", () => new Promise((done) => {
    const f = document.createElement("form");
    f.method = "POST"; f.action = gc; f.target = "sink";
    document.body.appendChild(f);
    document.querySelector("iframe").onload = () => done("submitted");
    f.submit();
    setTimeout(() => done("submitted (no load event)"), 3000);
  }));
  window.seen = seen;
  document.title = "done";
})();
</script></body></html>`;

const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html" });
  res.end(page_html);
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const evil = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { ok: false };
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(30_000);
  await page.goto(evil);
  await page.waitForFunction(() => document.title === "done");
  result.seen = await page.evaluate(() => window.seen);
  // DNS rebinding: the attacker's name now points at the admin listener; the page at
  // that name is same-origin with it and could read every answer.
  const rebound = await page.goto(`http://rebind.localhost:${adminPort}/api/v1/repositories`);
  result.rebindStatus = rebound.status();
  result.rebindBody = (await rebound.text()).slice(0, 300);
  result.ok = true;
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
  server.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(result.ok ? 0 : 1);
