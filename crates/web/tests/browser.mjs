// Drives the dev deployment's web page in headless Chromium with a virtual WebAuthn
// authenticator (PRF, resident keys, user verification): the browser half of the system test
// `web::the_browser_client_backs_up_restores_and_uses_passkeys` (crates/system-tests).
//
// Usage: node browser.mjs WEB_URL SOURCE_FILE CLI_USER CLI_SOURCE
//   SOURCE_FILE: backed up from the page as user web-alice (the test restores it with bkv);
//   CLI_USER/CLI_SOURCE: a backup bkv made (restored here, compared with CLI_SOURCE).
// Prints one JSON line of results; exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

const [web, source, cliUser, cliSource] = process.argv.slice(2);
const PW = "correct horse battery staple";
const sha = (path) => createHash("sha256").update(readFileSync(path)).digest("hex");
const results = {};
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      hasPrf: true,
      automaticPresenceSimulation: true,
    },
  });
  await page.goto(web);
  await page.waitForSelector("body[data-ready]", { timeout: 60000 });

  // In-page helpers: run a bkv call, return its result or its error's code.
  const call = (body, arg) =>
    page.evaluate(
      async ([body, arg]) => {
        try {
          return { ok: await new Function("bkv", "arg", `return (async () => { ${body} })()`)(window.bkv, arg) };
        } catch (e) {
          return { code: e.code || "js", message: e.message, guesses: e.guessesRemaining };
        }
      },
      [body, arg],
    );
  const digest = `const b = new Uint8Array(await r.blob.arrayBuffer());
    const d = new Uint8Array(await crypto.subtle.digest("SHA-256", b));
    return { size: b.length, sha: [...d].map((x) => x.toString(16).padStart(2, "0")).join(""), via: r.via };`;

  // Create: the file is picked in the page's file input, as a user would.
  check((await call(`return bkv.signIn("web-alice")`)).ok === "web-alice", "sign in");
  await page.setInputFiles("#file", source);
  let r = await call(`return bkv.backup(document.getElementById("file").files[0], arg)`, PW);
  check(r.ok && r.ok.registered === true, `backup: ${JSON.stringify(r)}`);
  results.backup = r.ok.latest;

  // Restore: byte-identical.
  r = await call(`const r = await bkv.restore(arg); ${digest}`, PW);
  check(r.ok && r.ok.sha === sha(source), `restore: ${JSON.stringify(r)}`);

  // Wrong passwords count down; the right one resets the count.
  for (const want of [9, 8]) {
    r = await call(`return bkv.restore(arg)`, "wrong password");
    check(r.code === "wrong_password" && r.guesses === want, `wrong password → ${want}: ${JSON.stringify(r)}`);
  }
  r = await call(`const r = await bkv.restore(arg); ${digest}`, PW);
  check(r.ok && r.ok.sha === sha(source), "restore after wrong guesses");
  r = await call(`return bkv.status()`);
  check(r.ok.record.guesses_remaining === 10, `count reset: ${JSON.stringify(r)}`);

  // A passkey with PRF, added here and restored with.
  r = await call(`return bkv.addPasskey(arg)`, PW);
  check(r.ok && r.ok.id.startsWith("pk-"), `add passkey: ${JSON.stringify(r)}`);
  r = await call(`const r = await bkv.restoreWithPasskey(); ${digest}`);
  check(r.ok && r.ok.sha === sha(source) && r.ok.via.startsWith("pk-"), `passkey restore: ${JSON.stringify(r)}`);

  // A recovery key.
  r = await call(`return bkv.addRecoveryKey(arg)`, PW);
  check(r.ok && r.ok.recovery_key, `add recovery key: ${JSON.stringify(r)}`);
  const rk = r.ok.recovery_key;
  r = await call(`const r = await bkv.restoreWithRecoveryKey(arg); ${digest}`, rk);
  check(r.ok && r.ok.sha === sha(source), `recovery key restore: ${JSON.stringify(r)}`);

  // The CLI's backup, restored here with its password.
  check((await call(`return bkv.signIn(arg)`, cliUser)).ok === cliUser, "sign in as the CLI user");
  r = await call(`const r = await bkv.restore(arg); ${digest}`, PW);
  check(r.ok && r.ok.sha === sha(cliSource), `CLI backup restored in the browser: ${JSON.stringify(r)}`);

  // A wrong pinned fleet key and a tampered bundle are refused, with the CLI's code.
  r = await call(`return bkv.client.run({ op: "status", config: { ...bkv.config(),
      trust: { mode: "pinned", noise_public_key: "11".repeat(32) } } })`);
  check(r.code === "tampered", `wrong pinned key: ${JSON.stringify(r)}`);
  results.wrong_pinned_key = r.code;
  await page.route("**/frontend/v1/bundle*", async (route) => {
    const resp = await route.fetch();
    const pkg = await resp.json();
    // One flipped bit in the operator's counter-signature.
    const sig = Buffer.from(pkg.operator_signature, "base64");
    sig[0] ^= 1;
    pkg.operator_signature = sig.toString("base64");
    await route.fulfill({ response: resp, body: JSON.stringify(pkg) });
  });
  r = await call(`return bkv.status()`);
  check(r.code === "tampered", `tampered bundle: ${JSON.stringify(r)}`);
  results.tampered_bundle = r.code;
  await page.unroute("**/frontend/v1/bundle*");
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
}
