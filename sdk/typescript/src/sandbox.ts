/**
 * `Sandbox`: the entry point of the SDK.
 *
 * ```ts
 * import { Sandbox } from "@atelier/sdk";
 *
 * const sb = await Sandbox.create({ template: "base" });
 * try {
 *   console.log((await sb.commands.run("python3 -c 'print(6*7)'")).stdout);
 *   await sb.files.write("/home/user/a.txt", "hello");
 * } finally {
 *   await sb.kill();
 * }
 * ```
 *
 * Configuration: `apiUrl` (default `$ATELIER_URL` or `http://127.0.0.1:8080`)
 * and `token` (default `$ATELIER_TOKEN`; missing → `AuthenticationError`
 * before any request).
 */

import { type Execution, CodeInterpreter, type RunCodeOptions } from "./code.js";
import { Commands } from "./commands.js";
import { InvalidRequest, SandboxNotFound } from "./errors.js";
import { Files } from "./files.js";
import { type ConnectionOptions, ConnectionConfig, DEFAULT_REQUEST_TIMEOUT, Http, type Params, sandboxPath } from "./http.js";
import { type GitAuth, type SandboxInfo, gitAuthJson, sandboxInfo } from "./models.js";
import { Pty } from "./pty.js";

/** Seconds a workspace creation may take by default (an image may be pulled or built). */
export const WORKSPACE_REQUEST_TIMEOUT = 1800;

export interface NetworkPolicy {
  mode: "none" | "egress" | "open";
  allow?: string[];
  deny?: string[];
  /** Both directions, Mbit/s (older form of `bandwidth`). */
  bandwidth_mbit?: number;
  /** Mbit/s each way: `egress` from the sandbox, `ingress` to it; unset: unlimited. */
  bandwidth?: { egress_mbit?: number; ingress_mbit?: number };
}

export interface SandboxCreateOptions extends ConnectionOptions {
  /** Default `"base"` (ignored for workspaces, which use the repository's devcontainer). */
  template?: string;
  /** Seconds until the sandbox is stopped automatically (`null`: never). Default 300. */
  timeout?: number | null;
  vcpus?: number;
  memoryMib?: number;
  diskMib?: number;
  env?: Record<string, string>;
  labels?: Record<string, string>;
  runtime?: string;
  network?: NetworkPolicy | Record<string, unknown>;
  /** Make a workspace: clone this repository and use its `devcontainer.json`. */
  repo?: string;
  ref?: string;
  devcontainer?: string;
  gitAuth?: GitAuth;
  /** A stored secret's name (`POST /v1/secrets`) for the clone. */
  gitSecret?: string;
  /** Clone depth (default 1; `null`: full history). */
  depth?: number | null;
  localEnv?: Record<string, string>;
}

export interface SandboxListOptions extends ConnectionOptions {
  state?: string;
  labels?: Record<string, string>;
}

function createRequest(o: SandboxCreateOptions): { path: string; body: Record<string, unknown> } {
  // unset resources take the server's defaults (docs/api.md)
  const common: Record<string, unknown> = { env: { ...(o.env ?? {}) }, labels: { ...(o.labels ?? {}) } };
  if (o.vcpus !== undefined) common["vcpus"] = o.vcpus;
  if (o.memoryMib !== undefined) common["memory_mib"] = o.memoryMib;
  if (o.diskMib !== undefined) common["disk_mib"] = o.diskMib;
  if (o.runtime !== undefined) common["runtime"] = o.runtime;
  if (o.network !== undefined) common["network"] = { ...o.network };
  if (o.repo === undefined) {
    if (o.ref !== undefined || o.devcontainer !== undefined || o.gitAuth !== undefined || o.gitSecret !== undefined) {
      throw new InvalidRequest("ref, devcontainer, gitAuth and gitSecret need repo");
    }
    return {
      path: "/v1/sandboxes",
      body: { template: o.template ?? "base", ...common, timeout: o.timeout === undefined ? 300 : o.timeout },
    };
  }
  const body: Record<string, unknown> = {
    repo: o.repo,
    ref: o.ref ?? null,
    devcontainer: o.devcontainer ?? null,
    depth: o.depth === undefined ? 1 : o.depth,
    secret: o.gitSecret ?? null,
    local_env: { ...(o.localEnv ?? {}) },
    ...common,
    timeout: o.timeout === undefined ? 300 : o.timeout,
  };
  if (o.gitAuth !== undefined) body["credentials"] = gitAuthJson(o.gitAuth);
  return { path: "/v1/workspaces", body };
}

/** A sandbox, with `commands`, `files`, `pty` and `code` hanging off it. */
export class Sandbox {
  readonly commands: Commands;
  readonly files: Files;
  readonly pty: Pty;
  /** Code contexts; {@link runCode} is the shortcut for cells. */
  readonly code: CodeInterpreter;
  #http: Http;
  #info: SandboxInfo;

  /** @internal use {@link Sandbox.create} or {@link Sandbox.connect} */
  constructor(info: SandboxInfo, http: Http) {
    this.#http = http;
    this.#info = info;
    this.commands = new Commands(http, info.id);
    this.files = new Files(http, info.id);
    this.pty = new Pty(http, info.id);
    this.code = new CodeInterpreter(http, info.id);
  }

  /**
   * Create and start a sandbox. With `repo` it is a workspace: the server
   * clones the repository and sets it up from its `devcontainer.json`
   * (`requestTimeout` then defaults to 30 minutes).
   */
  static async create(options: SandboxCreateOptions = {}): Promise<Sandbox> {
    const requestTimeout =
      options.requestTimeout === undefined && options.repo !== undefined
        ? WORKSPACE_REQUEST_TIMEOUT
        : options.requestTimeout;
    const config = ConnectionConfig.resolve({ ...options, requestTimeout });
    const http = new Http(config);
    const { path, body } = createRequest(options);
    const info = sandboxInfo(await http.json("POST", path, { json: body }));
    // later calls use the ordinary request timeout, not the workspace's
    const later = requestTimeout === options.requestTimeout ? http : new Http(config.withTimeout(DEFAULT_REQUEST_TIMEOUT));
    return new Sandbox(info, later);
  }

  /** Attach to an existing sandbox ({@link SandboxNotFound} if there is none). */
  static async connect(sandboxId: string, options: ConnectionOptions = {}): Promise<Sandbox> {
    const http = new Http(ConnectionConfig.resolve(options));
    return new Sandbox(sandboxInfo(await http.json("GET", sandboxPath(sandboxId))), http);
  }

  /** Sandboxes visible to the token, filtered by state and labels. */
  static async list(options: SandboxListOptions = {}): Promise<SandboxInfo[]> {
    const http = new Http(ConnectionConfig.resolve(options));
    const params: Params = [];
    if (options.state !== undefined) params.push(["state", options.state]);
    for (const [k, v] of Object.entries(options.labels ?? {})) params.push(["label", `${k}=${v}`]);
    const data = await http.json<{ sandboxes?: Record<string, unknown>[] }>("GET", "/v1/sandboxes", { params });
    return (data.sandboxes ?? []).map(sandboxInfo);
  }

  get id(): string {
    return this.#info.id;
  }

  /** The last known state (refresh with {@link getInfo}). */
  get info(): SandboxInfo {
    return this.#info;
  }

  toString(): string {
    return `Sandbox(${this.id}, ${this.#info.state})`;
  }

  toJSON(): SandboxInfo {
    return this.#info;
  }

  async #lifecycle(method: string, sub = "", json?: unknown): Promise<SandboxInfo> {
    const data = await this.#http.json<Record<string, unknown>>(method, `${sandboxPath(this.id)}${sub}`, { json });
    this.#info = sandboxInfo(data);
    return this.#info;
  }

  getInfo(): Promise<SandboxInfo> {
    return this.#lifecycle("GET");
  }

  async isRunning(): Promise<boolean> {
    return (await this.getInfo()).state === "running";
  }

  stop(): Promise<SandboxInfo> {
    return this.#lifecycle("POST", "/stop");
  }

  start(): Promise<SandboxInfo> {
    return this.#lifecycle("POST", "/start");
  }

  /** Freeze every process, keeping memory; {@link resume} thaws them. */
  pause(): Promise<SandboxInfo> {
    return this.#lifecycle("POST", "/pause");
  }

  resume(): Promise<SandboxInfo> {
    return this.#lifecycle("POST", "/resume");
  }

  /** Stop the sandbox `seconds` from now (`null`: never). */
  setTimeout(seconds: number | null): Promise<SandboxInfo> {
    return this.#lifecycle("POST", "/timeout", { timeout: seconds });
  }

  /** The sandbox's log (workspace setup, runtime, agent): the last `tail` lines. */
  logs(options: { tail?: number } = {}): Promise<string> {
    const params: Params = options.tail === undefined ? [] : [["tail", String(Math.trunc(options.tail))]];
    return this.#http.text("GET", `${sandboxPath(this.id)}/logs`, { params });
  }

  /** Add an entry to the sandbox's audit trail (stored as `client.<kind>`). */
  async recordEvent(kind: string, detail: Record<string, unknown> = {}): Promise<void> {
    await this.#http.none("POST", `${sandboxPath(this.id)}/events`, { json: { kind, detail } });
  }

  /** Run a cell in a stateful kernel (`python`, `javascript`, `bash`); see {@link CodeInterpreter}. */
  runCode(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    return this.code.run(code, options);
  }

  /** Delete the sandbox; `false` if it was already gone. */
  async kill(): Promise<boolean> {
    try {
      await this.#http.none("DELETE", sandboxPath(this.id));
    } catch (exc) {
      if (!(exc instanceof SandboxNotFound)) throw exc;
      this.#info = { ...this.#info, state: "deleted" };
      return false;
    }
    this.#info = { ...this.#info, state: "deleted" };
    return true;
  }

  /** Alias of {@link kill}. */
  delete(): Promise<boolean> {
    return this.kill();
  }
}
