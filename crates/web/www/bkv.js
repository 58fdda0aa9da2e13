// bkv.js: the JavaScript half of bkv's browser client (docs/api.md "Browser client").
// It loads bkv_web.wasm (bkv-client compiled to wasm32) and performs what an operation asks
// for: fetches, slices of the picked file, a place for restored plaintext, WebAuthn
// ceremonies, keeping the log state. No secret is handled here beyond what the page passes in.

const enc = new TextEncoder();
const dec = new TextDecoder();

/** base64url without padding, as WebAuthn JSON uses. */
export function b64u(bytes) {
  const b = bytes instanceof ArrayBuffer ? new Uint8Array(bytes) : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function unb64u(s) {
  const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** An operation's failure: `code` is the CLI's exit class (wrong_password, destroyed,
 * not_found, unavailable, tampered, usage, failed). */
export class BkvError extends Error {
  constructor(e) {
    super(e.message);
    this.name = "BkvError";
    this.code = e.code;
    if (e.guesses_remaining !== undefined) this.guessesRemaining = e.guesses_remaining;
  }
}

// WebAuthn JSON (base64url strings) to the browser's dictionaries (buffers), and back.
function creationOptions(o) {
  const pk = structuredClone(o.publicKey);
  pk.challenge = unb64u(pk.challenge);
  pk.user.id = unb64u(pk.user.id);
  for (const c of pk.excludeCredentials || []) c.id = unb64u(c.id);
  prfIn(pk);
  return { publicKey: pk };
}

function requestOptions(o) {
  const pk = structuredClone(o.publicKey);
  pk.challenge = unb64u(pk.challenge);
  for (const c of pk.allowCredentials || []) c.id = unb64u(c.id);
  prfIn(pk);
  return { publicKey: pk };
}

function prfIn(pk) {
  const ev = pk.extensions && pk.extensions.prf && pk.extensions.prf.eval;
  if (ev) {
    ev.first = unb64u(ev.first);
    if (ev.second) ev.second = unb64u(ev.second);
  }
}

function jsonBuffers(v) {
  if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return b64u(v);
  if (Array.isArray(v)) return v.map(jsonBuffers);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, jsonBuffers(x)]));
  return v;
}

function credentialJson(c) {
  const r = c.response;
  const response = { clientDataJSON: b64u(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = b64u(r.attestationObject);
    response.transports = r.getTransports ? r.getTransports() : [];
  } else {
    response.authenticatorData = b64u(r.authenticatorData);
    response.signature = b64u(r.signature);
    if (r.userHandle) response.userHandle = b64u(r.userHandle);
  }
  return {
    id: c.id,
    rawId: b64u(c.rawId),
    type: c.type,
    authenticatorAttachment: c.authenticatorAttachment,
    response,
    clientExtensionResults: jsonBuffers(c.getClientExtensionResults()),
  };
}

export class Bkv {
  #x;
  #queue = Promise.resolve();
  #broken = null;

  /** Loads and starts the module (default: bkv_web.wasm next to this file). */
  static async load(url = new URL("bkv_web.wasm", import.meta.url)) {
    let memory;
    const imports = {
      bkv: {
        random(ptr, len) {
          for (let o = 0; o < len; o += 65536) {
            crypto.getRandomValues(new Uint8Array(memory.buffer, (ptr >>> 0) + o, Math.min(65536, len - o)));
          }
        },
        now_ms: () => Date.now(),
      },
    };
    const module = await WebAssembly.compileStreaming(fetch(url));
    // Dependencies built for wasm-bindgen leave imports of its glue behind (getrandom's
    // JavaScript backend, js-sys), on paths bkv never takes: bkv-client draws its randomness
    // and time from the two imports above. Should one be reached, it fails loudly.
    for (const imp of WebAssembly.Module.imports(module)) {
      if (imp.module !== "bkv" && imp.kind === "function") {
        (imports[imp.module] ??= {})[imp.name] = () => {
          throw new Error(`bkv: ${imp.module}.${imp.name} is not provided`);
        };
      }
    }
    const instance = await WebAssembly.instantiate(module, imports);
    memory = instance.exports.memory;
    instance.exports.bkv_init();
    const b = new Bkv();
    b.#x = instance.exports;
    return b;
  }

  /** Bytes of wasm memory in use (for measurements). */
  get memoryBytes() {
    return this.#x.memory.buffer.byteLength;
  }

  #put(bytes) {
    if (!bytes || bytes.length === 0) return 0;
    const p = this.#x.bkv_alloc(bytes.length) >>> 0;
    new Uint8Array(this.#x.memory.buffer, p, bytes.length).set(bytes);
    return p;
  }

  #ret(len) {
    const p = this.#x.bkv_ret_ptr() >>> 0;
    return new Uint8Array(this.#x.memory.buffer, p, len >>> 0).slice();
  }

  /** Runs one request (docs/api.md "Browser client"); `io` answers what it needs:
   * `read(max)` → Uint8Array (empty at the end), `write(bytes)`, `saveState(state)`. Requests
   * run one at a time. */
  run(request, io = {}) {
    const r = this.#queue.then(() => this.#run(request, io));
    this.#queue = r.catch(() => {});
    return r;
  }

  async #run(request, io) {
    if (this.#broken) throw this.#broken;
    const x = this.#x;
    const req = enc.encode(JSON.stringify(request));
    const id = x.bkv_start(this.#put(req), req.length);
    if (!id) throw new BkvError({ code: "failed", message: "too many operations at once" });
    try {
      return await this.#drive(id, io);
    } catch (e) {
      // A trap (a panic in the module) leaves it in no state to go on: load it again.
      if (e instanceof WebAssembly.RuntimeError) {
        this.#broken = new BkvError({ code: "failed", message: `the client stopped (${e.message}): reload the page` });
        throw this.#broken;
      }
      x.bkv_drop(id);
      throw e;
    }
  }

  async #drive(id, io) {
    const x = this.#x;
    // Calls run side by side (an upload part in flight while the next slice is read and
    // sealed); each answer is handed over as it comes, and the task polled again.
    const inflight = new Map();
    let state = x.bkv_poll(id);
    while (state === 0) {
      for (let n; (n = x.bkv_next_call()); ) {
        const call = JSON.parse(dec.decode(this.#ret(n)));
        const body = this.#ret(x.bkv_call_body());
        inflight.set(
          call.id,
          this.#perform(call, body, io).then(
            ([meta, out]) => ({ id: call.id, ok: 1, meta: enc.encode(JSON.stringify(meta ?? {})), out }),
            (e) => ({ id: call.id, ok: 0, meta: enc.encode(e && e.message ? e.message : String(e)), out: null }),
          ),
        );
      }
      if (inflight.size === 0) throw new BkvError({ code: "failed", message: "the operation waits for nothing" });
      const a = await Promise.race(inflight.values());
      inflight.delete(a.id);
      x.bkv_answer(a.id, a.ok, this.#put(a.meta), a.meta.length, this.#put(a.out), a.out ? a.out.length : 0);
      state = x.bkv_poll(id);
    }
    const result = JSON.parse(dec.decode(this.#ret(x.bkv_result(id))));
    if (result.error) throw new BkvError(result.error);
    return result.ok;
  }

  async #perform(call, body, io) {
    switch (call.kind) {
      case "fetch":
        return fetchCall(call, body);
      case "read": {
        const b = await io.read(call.max);
        if (!(b instanceof Uint8Array)) throw new Error("io.read must return a Uint8Array");
        return [{ eof: b.length === 0 }, b];
      }
      case "write":
        await io.write(body);
        return [{}, null];
      case "state":
        if (!io.saveState) throw new Error("nowhere to keep the log state");
        await io.saveState(call.state);
        return [{}, null];
      case "webauthn": {
        let c;
        try {
          c = call.action === "create"
            ? await navigator.credentials.create(creationOptions(call.options))
            : await navigator.credentials.get(requestOptions(call.options));
        } catch (e) {
          throw new Error(e.name === "NotAllowedError" ? "no_credential" : `${e.name}: ${e.message}`);
        }
        return [credentialJson(c), null];
      }
      default:
        throw new Error(`unknown host call ${call.kind}`);
    }
  }
}

async function fetchCall(call, body) {
  const init = { method: call.method, headers: Object.fromEntries(call.headers) };
  // As a Blob: Chromium sends an ArrayBuffer body at a tenth of the speed (13 against 100
  // MiB/s for 5 MiB parts over loopback, measured).
  if (call.has_body) init.body = new Blob([body]);
  let resp;
  for (let attempt = 0; ; attempt++) {
    try {
      resp = await fetch(call.url, init);
      break;
    } catch (e) {
      // Only requests the client marked safe to resend are tried again.
      if (!call.idempotent || attempt >= 2) throw new Error(`${call.url}: ${e.message}`);
      await new Promise((r) => setTimeout(r, 50 * (attempt + 1)));
    }
  }
  const headers = [...resp.headers].map(([n, v]) => [n.toLowerCase(), v]);
  // Read no more than the client accepts (an error body: its start), so a hostile server
  // cannot make the page buffer without bound.
  const limit = resp.ok ? call.limit : 16384;
  const parts = [];
  let n = 0;
  const reader = resp.body ? resp.body.getReader() : null;
  while (reader) {
    const { done, value } = await reader.read();
    if (done) break;
    if (n + value.length > limit) {
      await reader.cancel();
      if (resp.ok) throw new Error(`${call.url}: response larger than ${limit} bytes`);
      parts.push(value.subarray(0, limit - n));
      n = limit;
      break;
    }
    parts.push(value);
    n += value.length;
  }
  const bytes = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  return [{ status: resp.status, headers }, bytes];
}
