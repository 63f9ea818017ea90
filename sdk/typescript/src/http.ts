/**
 * The thin I/O layer over the platform `fetch`: configuration, request
 * timeouts (`AbortController`), error mapping and NDJSON decoding.
 */

import { ApiConnectionError, AtelierError, AuthenticationError, errorFromResponse } from "./errors.js";

export const DEFAULT_API_URL = "http://127.0.0.1:8080";
/** Seconds a plain request may take (`null`: no limit). */
export const DEFAULT_REQUEST_TIMEOUT = 120;
export const USER_AGENT = "atelier-typescript-sdk/0.1";

/** How to reach the API; every field falls back on the environment or a default. */
export interface ConnectionOptions {
  /** Default `$ATELIER_URL`, else `http://127.0.0.1:8080`. */
  apiUrl?: string | undefined;
  /** Default `$ATELIER_TOKEN`; missing → {@link AuthenticationError} before any request. */
  token?: string | undefined;
  /**
   * Seconds a request may take, from sending it to the end of the answer
   * (`null`: no limit). Streams (command output, watches, downloads) are
   * bounded only until their headers arrive. Default 120.
   */
  requestTimeout?: number | null | undefined;
  /** A `fetch` implementation (default: the global one). */
  fetch?: typeof fetch | undefined;
}

function envVar(name: string): string | undefined {
  const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  const value = proc?.env?.[name];
  return value === undefined || value === "" ? undefined : value;
}

/** Where the API is and how to authenticate; resolved once per client. */
export class ConnectionConfig {
  readonly apiUrl: string;
  readonly requestTimeout: number | null;
  readonly fetch: typeof fetch;
  readonly #token: string;

  private constructor(apiUrl: string, token: string, requestTimeout: number | null, fetchFn: typeof fetch) {
    this.apiUrl = apiUrl;
    this.#token = token;
    this.requestTimeout = requestTimeout;
    this.fetch = fetchFn;
  }

  /** Fill in `ATELIER_URL` / `ATELIER_TOKEN`; a missing token fails here. */
  static resolve(options: ConnectionOptions = {}): ConnectionConfig {
    const url = (options.apiUrl ?? envVar("ATELIER_URL") ?? DEFAULT_API_URL).replace(/\/+$/, "");
    const token = options.token ?? envVar("ATELIER_TOKEN");
    if (!token) {
      throw new AuthenticationError(
        "no API token: pass token or set ATELIER_TOKEN " +
          "(the server writes the admin token to <data_dir>/admin-token)",
      );
    }
    const fetchFn = options.fetch ?? globalThis.fetch;
    if (typeof fetchFn !== "function") {
      throw new AtelierError("no fetch implementation: use Node >= 20 or pass fetch");
    }
    const timeout = options.requestTimeout === undefined ? DEFAULT_REQUEST_TIMEOUT : options.requestTimeout;
    return new ConnectionConfig(url, token, timeout, fetchFn);
  }

  /** A copy with another request timeout. */
  withTimeout(requestTimeout: number | null): ConnectionConfig {
    return new ConnectionConfig(this.apiUrl, this.#token, requestTimeout, this.fetch);
  }

  get token(): string {
    return this.#token;
  }

  get headers(): Record<string, string> {
    return { Authorization: `Bearer ${this.#token}`, "User-Agent": USER_AGENT };
  }

  url(path: string, params: Params = []): string {
    const query = new URLSearchParams(params).toString();
    return `${this.apiUrl}${path}${query ? `?${query}` : ""}`;
  }

  /**
   * The `ws://` / `wss://` URL of a WebSocket route; with `withToken` the
   * token goes in `?token=` (for WebSocket APIs that cannot send headers).
   */
  wsUrl(path: string, params: Params = [], withToken = true): string {
    const all: Params = withToken ? [...params, ["token", this.#token]] : params;
    const url = new URL(this.url(path, all));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  }

  toJSON(): { apiUrl: string; requestTimeout: number | null } {
    return { apiUrl: this.apiUrl, requestTimeout: this.requestTimeout };
  }
}

export type Params = Array<[string, string]>;

export type RequestBody = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array>;

export interface RequestOptions {
  params?: Params | undefined;
  json?: unknown;
  body?: RequestBody | undefined;
  /** Seconds; overrides the client's request timeout for this call. */
  timeout?: number | null | undefined;
  signal?: AbortSignal | undefined;
}

const TIMED_OUT = Symbol("atelier.timeout");

function isAbortError(exc: unknown): boolean {
  return exc instanceof Error && (exc.name === "AbortError" || exc.name === "TimeoutError");
}

function describe(exc: unknown): string {
  if (exc instanceof Error) {
    const cause = (exc as { cause?: unknown }).cause;
    if (cause instanceof Error && cause.message) return `${exc.message} (${cause.message})`;
    return exc.message || exc.name;
  }
  return String(exc);
}

/**
 * One request's abort plumbing: the caller's signal plus a timer. `settle()`
 * stops the timer (for streams: once the headers are in).
 */
class Deadline {
  readonly controller = new AbortController();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #unlink: (() => void) | undefined;
  timedOut = false;

  constructor(seconds: number | null, readonly userSignal: AbortSignal | undefined) {
    if (userSignal !== undefined) {
      if (userSignal.aborted) this.controller.abort(userSignal.reason);
      else {
        const onAbort = (): void => this.controller.abort(userSignal.reason);
        userSignal.addEventListener("abort", onAbort, { once: true });
        this.#unlink = () => userSignal.removeEventListener("abort", onAbort);
      }
    }
    if (seconds !== null && seconds > 0) {
      this.#timer = setTimeout(() => {
        this.timedOut = true;
        this.controller.abort(TIMED_OUT);
      }, seconds * 1000);
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  settle(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Stop everything: the timer and the link to the caller's signal. */
  done(): void {
    this.settle();
    this.#unlink?.();
    this.#unlink = undefined;
  }

  /** Turn a fetch/read failure into an {@link AtelierError} (or rethrow the caller's abort). */
  translate(exc: unknown, what: string): unknown {
    if (exc instanceof AtelierError) return exc;
    if (this.timedOut) {
      return new ApiConnectionError(`${what} timed out`, { details: { timeout: true }, cause: exc });
    }
    if (this.userSignal?.aborted && (isAbortError(exc) || exc === this.userSignal.reason)) {
      return this.userSignal.reason ?? exc;
    }
    if (isAbortError(exc)) return exc;
    return new ApiConnectionError(`cannot reach the Atelier API: ${describe(exc)}`, { cause: exc });
  }
}

/** Executes requests with `fetch`; every method checks the status and maps errors. */
export class Http {
  constructor(readonly config: ConnectionConfig) {}

  async #send(method: string, path: string, options: RequestOptions, deadline: Deadline): Promise<Response> {
    const headers: Record<string, string> = { ...this.config.headers };
    let body: BodyInit | undefined;
    let streamed = false;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    } else if (options.body !== undefined) {
      headers["Content-Type"] = "application/octet-stream";
      body = options.body as BodyInit;
      streamed = typeof ReadableStream !== "undefined" && options.body instanceof ReadableStream;
    }
    const init: RequestInit & { duplex?: "half" } = { method, headers, signal: deadline.signal };
    if (body !== undefined) init.body = body;
    if (streamed) init.duplex = "half"; // required by fetch for streamed request bodies
    let response: Response;
    try {
      response = await this.config.fetch(this.config.url(path, options.params), init);
    } catch (exc) {
      throw deadline.translate(exc, `${method} ${path}`);
    }
    if (!response.ok) {
      let text = "";
      try {
        text = await response.text();
      } catch (exc) {
        throw deadline.translate(exc, `${method} ${path}`);
      }
      throw errorFromResponse(response.status, text, response.statusText);
    }
    return response;
  }

  #deadline(options: RequestOptions): Deadline {
    const seconds = options.timeout === undefined ? this.config.requestTimeout : options.timeout;
    return new Deadline(seconds, options.signal);
  }

  /** A whole exchange; `read` consumes the body inside the deadline. */
  async request<T>(
    method: string,
    path: string,
    options: RequestOptions,
    read: (response: Response) => Promise<T>,
  ): Promise<T> {
    const deadline = this.#deadline(options);
    try {
      const response = await this.#send(method, path, options, deadline);
      let value: T;
      try {
        value = await read(response);
      } catch (exc) {
        if (exc instanceof SyntaxError) {
          throw new AtelierError(`unexpected answer to ${method} ${path}: ${exc.message}`, {
            details: { status: response.status },
          });
        }
        throw deadline.translate(exc, `${method} ${path}`);
      }
      return value;
    } finally {
      deadline.done();
    }
  }

  json<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    return this.request(method, path, options, async (r) => (await r.json()) as T);
  }

  none(method: string, path: string, options: RequestOptions = {}): Promise<void> {
    return this.request(method, path, options, async (r) => {
      await r.arrayBuffer();
    });
  }

  text(method: string, path: string, options: RequestOptions = {}): Promise<string> {
    return this.request(method, path, options, (r) => r.text());
  }

  bytes(method: string, path: string, options: RequestOptions = {}): Promise<Uint8Array> {
    return this.request(method, path, options, async (r) => new Uint8Array(await r.arrayBuffer()));
  }

  /**
   * Send a request whose answer is read incrementally. The timeout covers
   * the wait for the headers only: a stream may stay silent for as long as
   * the process behind it does.
   */
  async open(method: string, path: string, options: RequestOptions = {}): Promise<OpenStream> {
    const deadline = this.#deadline(options);
    try {
      const response = await this.#send(method, path, options, deadline);
      deadline.settle();
      return new OpenStream(response, deadline, `${method} ${path}`);
    } catch (exc) {
      deadline.done();
      throw exc;
    }
  }
}

/** An answer being read chunk by chunk; `close()` (or finishing the iteration) releases it. */
export class OpenStream {
  #reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  #closed = false;

  constructor(
    readonly response: Response,
    readonly deadline: Deadline,
    readonly what: string,
  ) {}

  /** The body's chunks; ends (and releases the connection) at the end or on `break`. */
  async *chunks(): AsyncGenerator<Uint8Array, void, undefined> {
    const body = this.response.body;
    if (body === null || this.#closed) return;
    this.#reader = body.getReader();
    try {
      while (true) {
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await this.#reader.read();
        } catch (exc) {
          if (this.#closed) return;
          throw this.deadline.translate(exc, `reading the answer to ${this.what}`);
        }
        if (result.done) return;
        if (result.value.byteLength > 0) yield result.value;
      }
    } finally {
      await this.close();
    }
  }

  /** Stop reading and drop the connection (for a foreground command: kills it). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.deadline.done();
    try {
      if (this.#reader !== undefined) await this.#reader.cancel();
      else await this.response.body?.cancel();
    } catch {
      // already errored or closed
    }
  }
}

/**
 * Newline-delimited JSON from a stream of chunks. Lines are split on the byte
 * `\n` before decoding, so a UTF-8 sequence cut between chunks is reassembled
 * first. `item` maps each object to a value, or to `undefined` to skip it; if
 * it throws (an `error` event), everything decoded before it has been yielded.
 */
export async function* ndjson<T>(
  chunks: AsyncIterable<Uint8Array>,
  item: (obj: Record<string, unknown>) => T | undefined,
): AsyncGenerator<T, void, undefined> {
  const decoder = new TextDecoder("utf-8");
  let pending: Uint8Array = new Uint8Array(0);
  const line = (raw: Uint8Array): T | undefined => {
    const text = decoder.decode(raw).trim();
    if (!text) return undefined;
    let obj: unknown;
    try {
      obj = JSON.parse(text);
    } catch {
      throw new AtelierError(`malformed event from the server: ${JSON.stringify(text.slice(0, 200))}`);
    }
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
      throw new AtelierError(`malformed event from the server: ${JSON.stringify(text.slice(0, 200))}`);
    }
    return item(obj as Record<string, unknown>);
  };
  for await (const chunk of chunks) {
    let buffer: Uint8Array;
    if (pending.byteLength === 0) buffer = chunk;
    else {
      buffer = new Uint8Array(pending.byteLength + chunk.byteLength);
      buffer.set(pending, 0);
      buffer.set(chunk, pending.byteLength);
    }
    let start = 0;
    let end: number;
    while ((end = buffer.indexOf(10, start)) !== -1) {
      const value = line(buffer.subarray(start, end));
      start = end + 1;
      if (value !== undefined) yield value;
    }
    pending = buffer.slice(start);
  }
  const last = line(pending);
  if (last !== undefined) yield last;
}

/** Quote one path segment (a sandbox id, a context name). */
export function seg(value: string | number): string {
  return encodeURIComponent(String(value));
}

export function sandboxPath(sandboxId: string): string {
  return `/v1/sandboxes/${seg(sandboxId)}`;
}
