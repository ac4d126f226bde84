// Seeds a Pier through its registry API (benches/console/run.sh runs it with node):
// REPOS repositories `projPP/appAAA` (100 repositories per project), TAGS tags in all. The
// first repository (`proj00/app000`) gets BIG_TAGS of them, the others share the rest evenly.
//
//   node seed.mjs URL REPOS TAGS BIG_TAGS [CONCURRENCY]
//
// One small config and one 1 KiB layer are pushed to the first repository and mounted
// (`POST ...?mount=&from=`) into every other one; then every tag is a `PUT
// /v2/<repo>/manifests/<tag>` of its own image manifest (an annotation names the tag, so
// every tag has a distinct manifest digest, as after real pushes). Requests go over
// keep-alive connections, CONCURRENCY at a time. Prints one JSON line with the counts and
// the seconds each phase took; exits 1 on the first unexpected answer.
import http from "node:http";
import crypto from "node:crypto";

const [url, reposArg, tagsArg, bigArg, concArg] = process.argv.slice(2);
if (!url || !reposArg || !tagsArg || !bigArg) {
  console.error("usage: node seed.mjs URL REPOS TAGS BIG_TAGS [CONCURRENCY]");
  process.exit(2);
}
const REPOS = Number(reposArg);
const TAGS = Number(tagsArg);
const BIG = Number(bigArg);
const CONC = Number(concArg || 16);
const base = new URL(url);
const agent = new http.Agent({ keepAlive: true, maxSockets: CONC });

const repoName = (i) => `proj${String(Math.floor(i / 100)).padStart(2, "0")}/app${String(i % 100).padStart(3, "0")}`;
const sha = (b) => "sha256:" + crypto.createHash("sha256").update(b).digest("hex");

function request(method, path, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: base.hostname, port: base.port, method, path, agent,
      headers: { "Content-Length": body ? body.length : 0, ...headers },
    }, (res) => {
      res.resume();
      res.on("end", () => resolve(res));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (body) req.write(body);
    req.end();
  });
}

async function expect(code, method, path, body, headers) {
  const res = await request(method, path, body, headers);
  if (res.statusCode !== code) throw new Error(`${method} ${path}: ${res.statusCode}, expected ${code}`);
  return res;
}

/** Runs job(i) for i in 0..count, CONC at a time. */
async function pool(count, job) {
  let next = 0;
  const worker = async () => {
    while (next < count) await job(next++);
  };
  await Promise.all(Array.from({ length: Math.min(CONC, count) }, worker));
}

const config = Buffer.from(JSON.stringify({
  architecture: "amd64", os: "linux",
  rootfs: { type: "layers", diff_ids: [sha(Buffer.from("pier console bench layer"))] },
}));
const layer = crypto.randomBytes(1024);
const cd = sha(config);
const ld = sha(layer);
const manifest = (repo, tag) => Buffer.from(JSON.stringify({
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: cd, size: config.length },
  layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: ld, size: layer.length }],
  annotations: { "org.opencontainers.image.ref.name": tag, "bench.pier/repository": repo },
}));

// How many tags repository i gets: BIG for the first, the rest spread evenly.
const rest = TAGS - BIG;
const others = REPOS - 1;
const tagsOf = (i) => (i === 0 ? BIG : Math.floor(rest / others) + (i - 1 < rest % others ? 1 : 0));

const t0 = Date.now();
const first = repoName(0);
for (const [blob, digest] of [[config, cd], [layer, ld]]) {
  await expect(201, "POST", `/v2/${first}/blobs/uploads/?digest=${digest}`, blob,
    { "Content-Type": "application/octet-stream" });
}
await pool(others * 2, (k) => {
  const repo = repoName(1 + (k >> 1));
  const digest = k & 1 ? ld : cd;
  return expect(201, "POST", `/v2/${repo}/blobs/uploads/?mount=${digest}&from=${first}`);
});
const t1 = Date.now();

// Every (repository, tag) pair, interleaved so that concurrent PUTs hit different repositories.
const pairs = [];
for (let i = 0; i < REPOS; i++) for (let t = 0; t < tagsOf(i); t++) pairs.push([i, t]);
let done = 0;
await pool(pairs.length, (k) => {
  const [i, t] = pairs[k];
  const repo = repoName(i);
  const tag = `v${String(t).padStart(5, "0")}`;
  return expect(201, "PUT", `/v2/${repo}/manifests/${tag}`, manifest(repo, tag),
    { "Content-Type": "application/vnd.oci.image.manifest.v1+json" }).then(() => { done++; });
});
const t2 = Date.now();
agent.destroy();
console.log(JSON.stringify({
  repositories: REPOS, tags: done, bigRepository: first, bigTags: BIG,
  mountSeconds: (t1 - t0) / 1000, manifestSeconds: (t2 - t1) / 1000,
  manifestsPerSecond: Math.round(done / ((t2 - t1) / 1000)),
}));
