// Drives the Pier console in Debian's Chromium with playwright-core (tests/tests/console.rs
// writes this file into a temp dir and runs it with node).
//
// Environment: CONSOLE_URL, ADMIN_USER, ADMIN_PASS, SHOTS (a directory for screenshots),
// PLAYWRIGHT_DIR (where node_modules/playwright-core is), CHROMIUM, and either REPO, TAG,
// JOB_ID, RULE, RULE_REPOSITORY, RULE_TARGET (browse a repository, retry a failed job, add
// and delete a replication rule), or MODE=mirror and EXPECTED_RATIO (watch
// the hit ratio), or MODE=fleet and PEER_URL (the Fleet page: the peer healthy, bytes from
// peers, then the peer down once the test stopped it), or MODE=members with NEW_USER, NEW_PASS, PROJECT, ROBOT, PROJECT_ADMIN_USER
// and PROJECT_ADMIN_PASS (create a user, make them a member, create and rotate a robot,
// then sign in as a project admin), or MODE=policies with PROJECT and REPO (a project's
// policies, quota and retention; each tag's signatures and pull policy).
// Prints one JSON line per step on stdout, a `{"waiting":...}` line when it wants the test
// to act (start the replication target, pull through the mirror; the test answers with a
// line on stdin), and a last line `{"ok":true,...}`. Any failure exits 1 with
// `{"ok":false,"error":...}`.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const require = createRequire(path.join(env("PLAYWRIGHT_DIR"), "package.json"));
const { chromium } = require("playwright-core");

const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const TIMEOUT = 30_000;

const result = { ok: false, steps: [], screenshots: [], consoleErrors: [] };
const mode = process.env.MODE || "browse";
const mirrorMode = mode === "mirror";
let browser;
let page;

const step = (name, extra) => { result.steps.push(name); out({ step: name, ...extra }); };
const shot = async (name) => {
  const file = path.join(env("SHOTS"), `${String(result.screenshots.length + 1).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  result.screenshots.push(file);
};
const onPage = (name) => page.waitForSelector(`body[data-page="${name}"]`);

/** Login (a wrong password first when access control is on), then the dashboard. */
async function login() {
  await page.goto(`${env("CONSOLE_URL")}/console/`);
  await onPage("login");
  await page.fill("input[name=username]", env("ADMIN_USER"));
  if (mode === "browse") {
    await page.fill("input[name=password]", "not-the-password");
    await page.click("button[type=submit]");
    await page.waitForSelector("#flash:not([hidden])");
    result.wrongPasswordMessage = (await page.textContent("#flash")).trim();
    // Chrome logs the refused login's 401 as an error: expected, the rest must be clean.
    result.consoleErrors.length = 0;
  }
  await page.fill("input[name=password]", env("ADMIN_PASS"));
  await shot("login");
  await page.click("button[type=submit]");
  await onPage("dashboard");
  await page.waitForSelector("[data-testid=requests] .value");
  result.dashboardRequests = (await page.textContent("[data-testid=requests] .value")).trim();
  result.signedInAs = (await page.textContent("#who .user")).trim();
  step("dashboard", { requests: result.dashboardRequests });
  await shot("dashboard");
}

/** A pull through the mirror (by the test, between two lines) moves the hit-ratio card and chart. */
async function mirror() {
  const ratio = "[data-testid=hit-ratio] .value";
  const chart = 'svg[aria-label="Mirror blob hit ratio"] polyline';
  result.hitRatioBefore = (await page.textContent(ratio)).trim();
  out({ waiting: "pull" });
  await stdinLines.next();
  // A sample may land between the test's pulls: wait for the final ratio.
  await page.waitForFunction(([ratio, chart, expected]) => {
    const ys = (document.querySelector(chart)?.getAttribute("points") || "")
      .split(" ").filter(Boolean).map((p) => Number(p.split(",")[1]));
    // SVG y grows downwards: the newest point above the first one.
    return document.querySelector(ratio)?.textContent.trim() === expected && ys.length >= 2 && ys[ys.length - 1] < ys[0];
  }, [ratio, chart, env("EXPECTED_RATIO")]);
  result.hitRatioAfter = (await page.textContent(ratio)).trim();
  result.chartPoints = await page.getAttribute(chart, "points");
  step("hit-ratio-moved", { before: result.hitRatioBefore, after: result.hitRatioAfter });
  await shot("dashboard-mirror");
  // Pier's own samples: an interval with hits sits above the chart's floor, and the chart
  // is back at once when the page is loaded again.
  const history = 'svg[aria-label="Mirror hit ratio (last hour)"] polyline';
  const historyMoved = ([sel]) => {
    const ys = (document.querySelector(sel)?.getAttribute("points") || "")
      .split(" ").filter(Boolean).map((p) => Number(p.split(",")[1]));
    return ys.length >= 2 && Math.min(...ys) < Math.max(...ys) ? ys.length : false;
  };
  result.historyRatioPoints = await (await page.waitForFunction(historyMoved, [history])).jsonValue();
  await page.reload();
  await onPage("dashboard");
  result.historyAfterReload = Boolean(await (await page.waitForFunction(historyMoved, [history])).jsonValue());
  step("history", { points: result.historyRatioPoints });
  await shot("dashboard-history");
}

/** The Fleet page: the peer healthy and bytes received from it; then, once the test has
 * stopped the peer, the page (refreshing itself) shows it down. */
async function fleet() {
  await page.click('#nav a[data-page="fleet"]');
  await onPage("fleet");
  const badge = `tr[data-peer="${env("PEER_URL")}"] .badge`;
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === "healthy", badge);
  result.peerBefore = (await page.textContent(badge)).trim();
  result.bytesFromPeers = (await page.textContent("[data-testid=fleet-from-peers] .value")).trim();
  result.saved = (await page.textContent("[data-testid=fleet-saved] .value")).trim();
  step("fleet-peer-healthy", { bytesFromPeers: result.bytesFromPeers });
  await shot("fleet-healthy");
  out({ waiting: "stop-peer" });
  await stdinLines.next();
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent !== "healthy", badge);
  result.peerAfter = (await page.textContent(badge)).trim();
  step("fleet-peer-down", { peer: result.peerAfter });
  await shot("fleet-peer-down");
}

async function browse() {
  // Repositories, filtered, then the repository's tags.
  const repo = env("REPO");
  await page.click("#nav a[data-page=repositories]");
  await onPage("repositories");
  await page.fill("input[name=q]", repo.split("/").pop());
  await page.click("form.inline button");
  await page.waitForSelector(`a[data-repo="${repo}"]`);
  await shot("repositories");
  await page.click(`a[data-repo="${repo}"]`);
  await onPage("repository");
  const row = `tr[data-tag="${env("TAG")}"]`;
  await page.waitForSelector(row);
  result.tagDigest = (await page.textContent(`${row} td.digest`)).trim();
  step("repository", { digest: result.tagDigest });
  await shot("repository");

  // The tag's manifest: digest and layers.
  await page.click(`${row} a`);
  await onPage("manifest");
  result.manifestDigest = (await page.textContent("[data-testid=manifest-digest]")).trim();
  result.layerRows = await page.locator("h2:text-is('Layers') + table tbody tr").count();
  step("manifest", { digest: result.manifestDigest, layers: result.layerRows });
  await shot("manifest");

  // Replication: the failed job, Retry once the target is up, then succeeded.
  const job = `tr[data-job-id="${env("JOB_ID")}"]`;
  await page.click("#nav a[data-page=replication]");
  await onPage("replication");
  await page.waitForSelector(`${job} td.state .badge.failed`);
  result.failedJobError = (await page.textContent(`${job} td.error`)).trim();
  await shot("replication-failed");
  step("job-failed", { error: result.failedJobError });
  out({ waiting: "target" });
  await stdinLines.next();
  await page.click(`${job} button.retry`);
  await page.waitForSelector(`${job} td.state .badge.succeeded`, { timeout: 60_000 });
  result.jobAttempts = (await page.textContent(`${job} td.attempts`)).trim();
  step("job-succeeded", { attempts: result.jobAttempts });
  // Its log: one line per attempt and the outcome.
  await page.click(`${job} button.log`);
  await page.waitForSelector(`tr[data-log-of="${env("JOB_ID")}"] pre`);
  result.jobLog = (await page.textContent(`tr[data-log-of="${env("JOB_ID")}"] pre`)).trim();
  await shot("replication-succeeded");

  // Webhook deliveries and plugins.
  await page.click("#nav a[data-page=deliveries]");
  await onPage("deliveries");
  await page.waitForSelector("tr[data-delivery-id] .badge.failed");
  result.deliveryRows = await page.locator("tr[data-delivery-id]").count();
  await shot("deliveries");
  await page.click("tr[data-delivery-id] button.redeliver");
  await page.waitForSelector("#flash.info");
  result.redeliverMessage = (await page.textContent("#flash")).trim();
  step("deliveries", { rows: result.deliveryRows, redeliver: result.redeliverMessage });
  await page.click("#nav a[data-page=plugins]");
  await onPage("plugins");
  await page.waitForSelector("tr[data-plugin]");
  result.plugins = await page.locator("tr[data-plugin]").evaluateAll((rows) => rows.map((r) => r.dataset.plugin));
  step("plugins", { plugins: result.plugins });
  await shot("plugins");

  // Replication rules: the TOML's rule is listed; add one, see it, delete it.
  const ruleNames = () => page.locator("tr[data-rule]").evaluateAll((rows) => rows.map((r) => r.dataset.rule));
  await page.click("#nav a[data-page=rules]");
  await onPage("rules");
  await page.waitForSelector(`tr[data-rule="${env("RULE")}"]`);
  result.rulesBefore = await ruleNames();
  await page.fill("input[name=rule]", "console-hourly");
  await page.selectOption("select[name=rule-source]", "repository");
  await page.fill("input[name=rule-pattern]", env("RULE_REPOSITORY"));
  await page.fill("input[name=rule-tags]", "v*, stable");
  await page.fill("input[name=rule-target]", env("RULE_TARGET"));
  await page.selectOption("select[name=rule-trigger]", "every");
  await page.fill("input[name=rule-every]", "3600");
  await page.click("#create-rule button[type=submit]");
  await page.waitForSelector('tr[data-rule="console-hourly"]');
  result.addedRule = await page.locator('tr[data-rule="console-hourly"] td').evaluateAll((tds) => tds.map((td) => td.textContent.trim()));
  result.rulesAdded = await ruleNames();
  step("rule-added", { cells: result.addedRule });
  await shot("rules");
  await page.click('tr[data-rule="console-hourly"] button.remove');
  await page.waitForSelector('tr[data-rule="console-hourly"]', { state: "detached" });
  result.rulesAfterDelete = await ruleNames();
  step("rule-deleted", { rules: result.rulesAfterDelete });

  // Log out: back to the login page, and the session is gone.
  await page.click("#who button");
  await onPage("login");
  result.sessionAfterLogout = await page.evaluate(() => sessionStorage.getItem("pier-console"));
  step("logged-out");
}

/** Per project its policies, quota and retention (a dry run, a limit set), then per tag
 * its signatures and what the admission policies say of pulling it. */
async function policies() {
  const project = env("PROJECT");
  await page.click("#nav a[data-page=policies]");
  await onPage("policies");
  await page.waitForSelector(`tr[data-project="${project}"]`);
  await shot("policies");
  await page.click(`tr[data-project="${project}"] a`);
  await page.waitForSelector("[data-testid=quota-used]");
  result.admissionPolicies = await page.locator("tr[data-policy]").evaluateAll((rows) => rows.map((r) => r.dataset.policy));
  result.quotaUsed = (await page.textContent("[data-testid=quota-used]")).trim();
  result.retentionBefore = (await page.textContent("[data-testid=retention-last]")).trim();
  await page.click("#retention-dry-run");
  await page.waitForSelector("#flash.info");
  result.dryRunMessage = (await page.textContent("#flash")).trim();
  await page.waitForFunction((before) => document.querySelector("[data-testid=retention-last]")?.textContent.trim() !== before, result.retentionBefore);
  result.retentionAfter = (await page.textContent("[data-testid=retention-last]")).trim();
  result.removalRows = await page.locator("tr[data-removal]").evaluateAll((rows) => rows.map((r) => r.dataset.removal));
  await page.fill("input[name=quota-limit]", "10MiB");
  await page.click("#set-quota button");
  await page.waitForFunction(() => document.querySelector("[data-testid=quota-limit]")?.textContent.trim() === "10.0 MiB");
  result.quotaLimit = (await page.textContent("[data-testid=quota-limit]")).trim();
  step("project-policies", { policies: result.admissionPolicies, used: result.quotaUsed, limit: result.quotaLimit });
  await shot("project-policies");

  await page.click("#nav a[data-page=repositories]");
  await onPage("repositories");
  await page.click(`a[data-repo="${env("REPO")}"]`);
  await onPage("repository");
  await page.waitForSelector("tr[data-tag]");
  result.tagPolicies = Object.fromEntries(await page.locator("tr[data-tag]").evaluateAll((rows) => rows.map((r) => [
    r.dataset.tag,
    [r.querySelector("td[data-col=signatures]").textContent.trim(), r.querySelector("td[data-col=policy]").textContent.trim()],
  ])));
  step("tag-policies", { tags: result.tagPolicies });
  await shot("repository-policies");
}

/** Users, members and robots, as the operator would do them. */
async function members() {
  const user = env("NEW_USER");
  const project = env("PROJECT");
  // A user, made on the Users page.
  await page.click("#nav a[data-page=users]");
  await onPage("users");
  await page.fill("input[name=new-user]", user);
  await page.fill("input[name=new-password]", env("NEW_PASS"));
  await page.click("#create-user button");
  await page.waitForSelector(`tr[data-user="${user}"]`);
  step("user-created", { user });
  await shot("users");
  out({ waiting: "user-created" });
  await stdinLines.next();

  // The user made a developer of the project.
  await page.click("#nav a[data-page=projects]");
  await onPage("projects");
  await page.waitForSelector(`tr[data-project="${project}"]`);
  await shot("projects");
  await page.click(`tr[data-project="${project}"] a`);
  await onPage("project");
  await page.fill("input[name=member]", user);
  await page.selectOption("select[name=new-role]", "developer");
  await page.click("#add-member button");
  const row = `tr[data-member="${user}"][data-kind=user]`;
  await page.waitForSelector(row);
  result.memberRole = await page.inputValue(`${row} select[name=role]`);
  result.memberMessage = (await page.textContent("#flash")).trim();
  step("member-added", { role: result.memberRole });
  await shot("project-members");
  out({ waiting: "member-added" });
  await stdinLines.next();

  // A robot: its secret shown once, then rotated.
  const robot = env("ROBOT");
  await page.click("#nav a[data-page=robots]");
  await onPage("robots");
  await page.fill("input[name=robot]", robot);
  await page.fill("input[name=robot-project]", project);
  await page.check("input[name=action-push]");
  await page.click("#create-robot button");
  await page.waitForSelector(`tr[data-robot="${robot}"]`);
  result.robotSecret = (await page.textContent("[data-testid=robot-secret] .value")).trim();
  await shot("robots");
  await page.click(`tr[data-robot="${robot}"] button.rotate`);
  await page.waitForFunction((old) => {
    const el = document.querySelector("[data-testid=robot-secret] .value");
    return el && el.textContent.trim() !== old;
  }, result.robotSecret);
  result.rotatedSecret = (await page.textContent("[data-testid=robot-secret] .value")).trim();
  step("robot-rotated");

  // A project admin signs in: only Projects, only their project.
  await page.click("#who button");
  await onPage("login");
  await page.fill("input[name=username]", env("PROJECT_ADMIN_USER"));
  await page.fill("input[name=password]", env("PROJECT_ADMIN_PASS"));
  await page.click("button[type=submit]");
  await onPage("projects");
  result.projectAdminProjects = await page.locator("tr[data-project]").evaluateAll((rows) => rows.map((r) => r.dataset.project));
  result.projectAdminNav = await page.locator("#nav a:not([hidden])").evaluateAll((as) => as.map((a) => a.dataset.page));
  step("project-admin", { projects: result.projectAdminProjects, nav: result.projectAdminNav });
  await shot("project-admin");
}

try {
  browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(TIMEOUT);
  page.on("console", (m) => { if (m.type() === "error") result.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => result.consoleErrors.push(String(e)));
  // Nothing but the admin listener may be asked for anything.
  const origin = new URL(env("CONSOLE_URL")).origin;
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith("data:")) foreign.push(r.url()); });

  await login();
  const modes = { fleet, members, policies };
  await (mirrorMode ? mirror() : (modes[mode] || browse)());
  result.foreignRequests = foreign;
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack || e);
} finally {
  if (browser) await browser.close().catch(() => {});
}
out(result);
process.exit(result.ok ? 0 : 1);
