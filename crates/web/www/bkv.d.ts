// Types of bkv's browser client (bkv.js, and window.bkv as the page's app.js sets it).
// docs/api.md "Browser client".

/** The CLI's exit classes: the same codes the native bindings use. */
export type ErrorCode =
  | "wrong_password"
  | "destroyed"
  | "not_found"
  | "unavailable"
  | "tampered"
  | "usage"
  | "failed";

export class BkvError extends Error {
  code: ErrorCode;
  /** With `wrong_password`: the guesses left before the vault destroys the record. */
  guessesRemaining?: number;
}

export interface Latest {
  version: 1;
  object: string;
  size: number;
  created_unix: number;
  key_id: string;
}

export type Trust =
  | { mode: "ota"; namespace: string; origin: string; auditor_name: string; auditor_key: string; operator_key: string }
  | { mode: "pinned"; fleet_id?: string; noise_public_key: string };

/** What every request carries. */
export interface Config {
  frontend: string;
  storage: string;
  user: string;
  token: string;
  trust: Trust;
  log_state: unknown | null;
  guess_limit: number;
  passkey_origin: string;
}

export type Request =
  | { op: "status" | "protectors"; config: Config }
  | { op: "backup"; config: Config; password: string }
  | { op: "restore"; config: Config; with: { password: string } | { recovery_key: string } | { passkey: {} } }
  | { op: "add_recovery_key" | "add_passkey"; config: Config; password: string }
  | { op: "change_password"; config: Config; password: string; new_password: string }
  | { op: "remove_protector"; config: Config; password: string; id: string };

/** What an operation may ask of the page while it runs. */
export interface Io {
  read?(max: number): Promise<Uint8Array>;
  write?(bytes: Uint8Array): void | Promise<void>;
  saveState?(state: unknown): void | Promise<void>;
}

export class Bkv {
  static load(url?: URL | string): Promise<Bkv>;
  readonly memoryBytes: number;
  run(request: Request, io?: Io): Promise<any>;
}

export interface Status {
  record:
    | { state: "active"; attempts: number; guess_limit: number; guesses_remaining: number }
    | { state: "absent" | "pending" | "destroyed" | "moved" };
  latest: Latest | null;
}

export interface Restored {
  latest: Latest;
  via: string;
  blob: Blob;
}

/** `window.bkv` on the page `bkv-admin dev up` serves. */
export interface PageApi {
  client: Bkv;
  settings: Omit<Config, "user" | "token" | "log_state"> & { dev_token_url: string };
  config(): Config;
  signIn(user: string): Promise<string>;
  status(): Promise<Status>;
  protectors(): Promise<{ id: string; kind: string; detail: string }[]>;
  backup(file: File, password: string, progress?: (done: number, total: number) => void): Promise<{ latest: Latest; registered: boolean }>;
  restore(password: string, progress?: (done: number) => void): Promise<Restored>;
  restoreWithRecoveryKey(recoveryKey: string, progress?: (done: number) => void): Promise<Restored>;
  restoreWithPasskey(progress?: (done: number) => void): Promise<Restored>;
  addRecoveryKey(password: string): Promise<{ id: string; recovery_key: string }>;
  addPasskey(password: string): Promise<{ id: string }>;
  changePassword(password: string, newPassword: string): Promise<{}>;
  removeProtector(password: string, id: string): Promise<unknown>;
}
