/**
 * `sandbox.pty`: interactive terminals over the PTY WebSocket, using the
 * platform's global `WebSocket` (Node >= 22, or Node 20 started with
 * `--experimental-websocket`; browsers, Deno and Bun have it).
 *
 * Binary frames are terminal bytes both ways; text frames are JSON control
 * (`resize` from the client, `exit` / `error` from the server). When the
 * server cannot open the terminal (unknown sandbox, bad token, sandbox not
 * running) it says so in an `error` frame: `wait()` rejects with the matching
 * {@link AtelierError}.
 */

import { ApiConnectionError, AtelierError, errorFromPayload } from "./errors.js";
import type { ConnectionConfig, Http, Params } from "./http.js";
import { sandboxPath } from "./http.js";

/** Seconds to wait for the WebSocket to open. */
export const PTY_CONNECT_TIMEOUT = 10;

export interface PtyCreateOptions {
  cols?: number;
  rows?: number;
  /** The program to run (default: a login shell, `/bin/bash -l`). */
  cmd?: string;
  user?: string;
  cwd?: string;
  /**
   * Called with each chunk of terminal output. Without it, output is queued
   * for `for await (const chunk of session)`.
   */
  onData?: (data: Uint8Array) => unknown;
  /** Seconds to wait for the connection (default 10). */
  timeout?: number;
}

type WebSocketCtor = new (
  url: string | URL,
  protocols?: string | string[] | { headers: Record<string, string> },
) => WebSocket;

/**
 * Node's WebSocket (undici; Bun's too) takes request headers as a non-standard
 * second argument, which keeps the token out of the URL (and so out of access
 * logs). Browsers cannot send headers: there the token goes in `?token=`.
 */
function acceptsHeaders(): boolean {
  const versions = (globalThis as { process?: { versions?: { node?: string } } }).process?.versions;
  return typeof versions?.node === "string";
}

/** The platform's `WebSocket`, or a clear error saying how to get one. */
export function webSocketClass(): WebSocketCtor {
  const ctor = (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
  if (typeof ctor !== "function") {
    const node = (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node;
    const hint = node
      ? `Node ${node} has no global WebSocket: use Node >= 22, or start Node 20 with --experimental-websocket`
      : "this platform has no global WebSocket";
    throw new AtelierError(`sandbox.pty needs the WebSocket API: ${hint}`);
  }
  return ctor;
}

const encoder = new TextEncoder();

/** One terminal: `sendInput` keystrokes, `resize`, `kill`, `wait` for the exit code. */
export class PtySession implements AsyncIterable<Uint8Array> {
  #ws: WebSocket;
  #onData: ((data: Uint8Array) => unknown) | undefined;
  #queue: Uint8Array[] = [];
  #wake: (() => void) | undefined;
  #error: AtelierError | undefined;
  #killed = false;
  #ended = false;
  #done: Promise<number | null>;
  /** The program's exit status, once the server reported it. */
  exitCode: number | null = null;

  /** @internal use `sandbox.pty.create()` */
  constructor(ws: WebSocket, onData: ((data: Uint8Array) => unknown) | undefined) {
    this.#ws = ws;
    this.#onData = onData;
    this.#done = new Promise<number | null>((resolve, reject) => {
      ws.addEventListener("message", (event: MessageEvent) => this.#message(event.data));
      ws.addEventListener("close", (event: CloseEvent) => {
        this.#ended = true;
        this.#notify();
        if (this.#error !== undefined) reject(this.#error);
        else if (this.exitCode !== null || this.#killed || event.code === 1000) resolve(this.exitCode);
        else {
          reject(
            new ApiConnectionError(
              `terminal connection lost (close code ${event.code}${event.reason ? `: ${event.reason}` : ""})`,
            ),
          );
        }
      });
    });
    // wait() is optional: never let an unobserved rejection crash the process
    this.#done.catch(() => undefined);
  }

  /** `true` once the connection has closed. */
  get ended(): boolean {
    return this.#ended;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #message(data: unknown): void {
    if (typeof data === "string") {
      let obj: unknown;
      try {
        obj = JSON.parse(data);
      } catch {
        return;
      }
      if (typeof obj !== "object" || obj === null) return;
      const control = obj as Record<string, unknown>;
      if (control["type"] === "exit") {
        const code = control["exit_code"];
        this.exitCode = code === null || code === undefined ? -1 : Number(code);
      } else if (control["type"] === "error") {
        this.#error = errorFromPayload(control);
      }
      return;
    }
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else return;
    if (bytes.byteLength === 0) return;
    if (this.#onData !== undefined) {
      try {
        const handled = this.#onData(bytes);
        if (handled instanceof Promise) handled.catch(() => undefined);
      } catch {
        // a failing handler must not break the session
      }
    } else {
      this.#queue.push(bytes);
      this.#notify();
    }
  }

  #check(): void {
    if (this.#error !== undefined) throw this.#error;
    if (this.#ended || this.#ws.readyState !== 1 /* OPEN */) {
      throw new ApiConnectionError("the terminal session has ended");
    }
  }

  /** Keyboard input (a string is sent as UTF-8). */
  async sendInput(data: string | Uint8Array): Promise<void> {
    this.#check();
    this.#ws.send(typeof data === "string" ? encoder.encode(data) : data);
  }

  /** Change the terminal size (the program gets SIGWINCH). */
  async resize(cols: number, rows: number): Promise<void> {
    this.#check();
    this.#ws.send(JSON.stringify({ type: "resize", cols: Math.trunc(cols), rows: Math.trunc(rows) }));
  }

  /** End the session: the server closes the terminal and its program. Resolves once closed. */
  async kill(): Promise<void> {
    this.#killed = true;
    if (this.#ws.readyState === 0 /* CONNECTING */ || this.#ws.readyState === 1 /* OPEN */) this.#ws.close(1000);
    try {
      await this.#done;
    } catch {
      // a session we ended ourselves
    }
  }

  /** Resolve with the exit code once the session ends (`null` if none was reported). */
  wait(): Promise<number | null> {
    return this.#done;
  }

  /** Queued output chunks (only without `onData`), until the session ends. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array, void, undefined> {
    while (true) {
      const chunk = this.#queue.shift();
      if (chunk !== undefined) {
        yield chunk;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }
}

/** Terminals of one sandbox (`sandbox.pty`). */
export class Pty {
  constructor(
    private readonly http: Http,
    private readonly sandboxId: string,
  ) {}

  /** Open a terminal running `cmd` (default: a login shell). */
  async create(options: PtyCreateOptions = {}): Promise<PtySession> {
    const Ctor = webSocketClass();
    const config: ConnectionConfig = this.http.config;
    const params: Params = [
      ["cols", String(Math.trunc(options.cols ?? 80))],
      ["rows", String(Math.trunc(options.rows ?? 24))],
    ];
    if (options.cmd !== undefined) params.push(["cmd", options.cmd]);
    if (options.user !== undefined) params.push(["user", options.user]);
    if (options.cwd !== undefined) params.push(["cwd", options.cwd]);
    const path = `${sandboxPath(this.sandboxId)}/pty`;
    const ws = acceptsHeaders()
      ? new Ctor(config.wsUrl(path, params, false), { headers: config.headers })
      : new Ctor(config.wsUrl(path, params, true));
    ws.binaryType = "arraybuffer";
    // listeners go on before the first await so no frame is missed
    const session = new PtySession(ws, options.onData);
    const seconds = options.timeout ?? PTY_CONNECT_TIMEOUT;
    const opened = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), seconds * 1000);
      const settle = (ok: boolean) => () => {
        clearTimeout(timer);
        resolve(ok);
      };
      ws.addEventListener("open", settle(true), { once: true });
      ws.addEventListener("error", settle(false), { once: true });
      ws.addEventListener("close", settle(false), { once: true });
    });
    if (opened) return session;
    try {
      ws.close();
    } catch {
      // never opened
    }
    // The browser WebSocket API hides the handshake's status: ask the REST API why.
    await this.http.json("GET", sandboxPath(this.sandboxId), { timeout: seconds });
    throw new ApiConnectionError(`cannot open the terminal at ${config.apiUrl}`, {
      details: ws.readyState === 3 ? {} : { timeout: true },
    });
  }
}
