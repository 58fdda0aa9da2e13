// The page's logic, and `window.bkv`: the same calls for other pages and tests.
import { Bkv, BkvError } from "./bkv.js";

const settings = await (await fetch("config.json")).json();
const client = await Bkv.load(new URL("bkv_web.wasm", import.meta.url));
const stateKey = `bkv.log_state.${settings.trust.origin || settings.frontend}`;
let session = null; // { user, token }

function config() {
  if (!session) throw new BkvError({ code: "usage", message: "sign in first" });
  const saved = localStorage.getItem(stateKey);
  return { ...settings, ...session, log_state: saved ? JSON.parse(saved) : null };
}

const keep = { saveState: (s) => localStorage.setItem(stateKey, JSON.stringify(s)) };

/** Reads `file` a slice at a time (the whole file is never in memory). */
function fileReader(file, progress) {
  let at = 0;
  return async (max) => {
    const b = new Uint8Array(await file.slice(at, at + max).arrayBuffer());
    at += b.length;
    progress && progress(at, file.size);
    return b;
  };
}

/** Restored plaintext kept as Blob parts, given as one Blob only once it all authenticated. */
async function restoreTo(request, progress) {
  const parts = [];
  let n = 0;
  const r = await client.run(request, {
    ...keep,
    write: (b) => {
      parts.push(new Blob([b]));
      n += b.length;
      progress && progress(n);
    },
  });
  return { ...r, blob: new Blob(parts, { type: "application/octet-stream" }) };
}

const api = {
  client,
  BkvError,
  settings,
  /** The settings a request carries: the page's, the signed-in user's and the kept log state. */
  config,
  /** Signs in with the dev deployment's token endpoint. */
  async signIn(user) {
    const r = await fetch(settings.dev_token_url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user }),
    });
    if (!r.ok) throw new BkvError({ code: "unavailable", message: `token endpoint: ${r.status}` });
    session = { user, token: (await r.json()).token };
    return user;
  },
  status: () => client.run({ op: "status", config: config() }, keep),
  protectors: () => client.run({ op: "protectors", config: config() }, keep),
  backup: (file, password, progress) =>
    client.run({ op: "backup", config: config(), password }, { ...keep, read: fileReader(file, progress) }),
  restore: (password, progress) => restoreTo({ op: "restore", config: config(), with: { password } }, progress),
  restoreWithRecoveryKey: (recoveryKey, progress) =>
    restoreTo({ op: "restore", config: config(), with: { recovery_key: recoveryKey } }, progress),
  restoreWithPasskey: (progress) => restoreTo({ op: "restore", config: config(), with: { passkey: {} } }, progress),
  addRecoveryKey: (password) => client.run({ op: "add_recovery_key", config: config(), password }, keep),
  addPasskey: (password) => client.run({ op: "add_passkey", config: config(), password }, keep),
  changePassword: (password, newPassword) =>
    client.run({ op: "change_password", config: config(), password, new_password: newPassword }, keep),
  removeProtector: (password, id) => client.run({ op: "remove_protector", config: config(), password, id }, keep),
};
window.bkv = api;

// The page's controls.
const $ = (id) => document.getElementById(id);
function show(what, err) {
  $("out").textContent = typeof what === "string" ? what : JSON.stringify(what, null, 2);
  $("out").className = err ? "err" : "";
}
function failed(e) {
  const extra = e.guessesRemaining !== undefined ? ` (${e.guessesRemaining} guesses remaining)` : "";
  show(`${e.code || "failed"}: ${e.message}${extra}`, true);
}
async function act(f) {
  try {
    show("…");
    show(await f());
  } catch (e) {
    failed(e);
  }
}
function offer(r, name) {
  const a = $("download");
  a.href = URL.createObjectURL(r.blob);
  a.download = name;
  a.textContent = `download ${name} (${r.blob.size} bytes)`;
  return { restored: r.blob.size, via: r.via, object: r.latest.object };
}
const bar = (done, total) => ($("progress").textContent = total ? `${done} of ${total} bytes` : `${done} bytes`);

$("signin").onclick = () => act(async () => `signed in as ${await api.signIn($("user").value)}`);
$("status").onclick = () => act(api.status);
$("protectors").onclick = () => act(api.protectors);
$("backup").onclick = () => act(() => api.backup($("file").files[0], $("password").value, bar));
$("restore").onclick = () => act(async () => offer(await api.restore($("password").value, bar), "restored"));
$("restore-rk").onclick = () =>
  act(async () => offer(await api.restoreWithRecoveryKey($("rk").value, bar), "restored"));
$("restore-pk").onclick = () => act(async () => offer(await api.restoreWithPasskey(bar), "restored"));
$("add-pk").onclick = () => act(() => api.addPasskey($("password").value));
$("add-rk").onclick = () => act(() => api.addRecoveryKey($("password").value));
document.body.dataset.ready = "1";
