// Measures a large backup and restore in headless Chromium through the dev deployment's page
// (scripts/bench-web.sh): wall time, throughput (also net of the fixed cost a one-byte backup
// and restore measure), and the peak JavaScript heap and wasm memory sampled every 50 ms.
//
// Usage: node bench.mjs WEB_URL FILE
import { chromium } from "playwright-core";
import { statSync } from "node:fs";

const [web, file] = process.argv.slice(2);
const size = statSync(file).size;
const PW = "correct horse battery staple";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Runtime.enable");
  await page.goto(web);
  await page.waitForSelector("body[data-ready]", { timeout: 60000 });
  await page.evaluate(() => window.bkv.signIn("bench-user"));
  await page.setInputFiles("#file", file);

  // Samples the JS heap (CDP) and the wasm memory while `run` goes on.
  async function measured(run) {
    let heap = 0, wasm = 0, done = false;
    const sampler = (async () => {
      while (!done) {
        const h = await cdp.send("Runtime.getHeapUsage");
        heap = Math.max(heap, h.usedSize);
        wasm = Math.max(wasm, await page.evaluate(() => window.bkv.client.memoryBytes));
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const t0 = performance.now();
    const out = await run();
    const seconds = (performance.now() - t0) / 1000;
    done = true;
    await sampler;
    return { seconds, mib_per_s: size / 1048576 / seconds, peak_js_heap_mib: heap / 1048576, peak_wasm_mib: wasm / 1048576, out };
  }

  // The fixed cost of each operation (bundle check, OPAQUE with its Argon2 in wasm, storage
  // round trips): a one-byte backup and its restore.
  const tinyBackup = await measured(() =>
    page.evaluate((pw) => window.bkv.backup(new File([new Uint8Array(1)], "one"), pw).then(() => true), PW),
  );
  const tinyRestore = await measured(() => page.evaluate((pw) => window.bkv.restore(pw).then((r) => r.blob.size), PW));
  // BKV_PROFILE=1: a CPU profile of the large backup and restore, the functions with the most
  // self time printed to stderr.
  const profiled = async (name, run) => {
    if (!process.env.BKV_PROFILE) return run();
    await cdp.send("Profiler.enable");
    await cdp.send("Profiler.start");
    const r = await run();
    const { profile } = await cdp.send("Profiler.stop");
    const self = new Map();
    const dt = profile.timeDeltas || [];
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    (profile.samples || []).forEach((id, i) => {
      const f = byId.get(id).callFrame.functionName || "(anonymous)";
      self.set(f, (self.get(f) || 0) + (dt[i] || 0));
    });
    const total = [...self.values()].reduce((a, b) => a + b, 0);
    const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12);
    console.error(`${name}: ` + top.map(([f, t]) => `${(100 * t / total).toFixed(1)}% ${f}`).join("; "));
    return r;
  };
  const backup = await profiled("backup", () => measured(() =>
    page.evaluate((pw) => window.bkv.backup(document.getElementById("file").files[0], pw).then(() => true), PW),
  ));
  const restore = await profiled("restore", () => measured(() =>
    page.evaluate((pw) => window.bkv.restore(pw).then((r) => r.blob.size), PW),
  ));
  if (restore.out !== size) throw new Error(`restored ${restore.out} bytes of ${size}`);
  const net = (big, tiny) => size / 1048576 / (big.seconds - tiny.seconds);
  backup.fixed_seconds = tinyBackup.seconds;
  backup.net_mib_per_s = net(backup, tinyBackup);
  restore.fixed_seconds = tinyRestore.seconds;
  restore.net_mib_per_s = net(restore, tinyRestore);
  delete backup.out;
  delete restore.out;
  console.log(JSON.stringify({ size_mib: size / 1048576, backup, restore }));
} finally {
  await browser.close();
}
