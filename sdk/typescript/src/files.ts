/**
 * `sandbox.files`: the sandbox's filesystem (absolute paths inside the sandbox).
 *
 * `readStream` never holds a whole file in memory; `write` streams
 * `ReadableStream`s and async iterables chunk by chunk.
 */

import { InvalidRequest } from "./errors.js";
import { type Http, type Params, type RequestBody, ndjson, sandboxPath } from "./http.js";
import { type FileEvent, type FileInfo, fileEvent, fileInfo } from "./models.js";

/** What `files.write` accepts; async iterables and streams are sent chunked. */
export type WriteData =
  | string
  | Uint8Array
  | ArrayBuffer
  | Blob
  | ReadableStream<Uint8Array>
  | AsyncIterable<Uint8Array | string>
  | Iterable<Uint8Array | string>;

export type FileMode = number | string;

/** `0o644` or `"644"`/`"0644"`/`"0o644"` → `"0644"`. */
export function formatMode(mode: FileMode): string {
  if (typeof mode === "number") {
    if (!Number.isInteger(mode) || mode < 0) throw new InvalidRequest(`invalid file mode ${mode}`);
    return mode.toString(8).padStart(4, "0");
  }
  let text = mode.trim();
  if (text.startsWith("0o")) text = text.slice(2);
  if (!/^[0-7]{1,4}$/.test(text)) {
    throw new InvalidRequest(`invalid file mode ${JSON.stringify(mode)}: expected octal like '0644'`);
  }
  return text.padStart(4, "0");
}

const encoder = new TextEncoder();

function toBytes(chunk: Uint8Array | string): Uint8Array {
  return typeof chunk === "string" ? encoder.encode(chunk) : chunk;
}

function isAsyncIterable(value: unknown): value is AsyncIterable<Uint8Array | string> {
  return typeof value === "object" && value !== null && Symbol.asyncIterator in value;
}

function isIterable(value: unknown): value is Iterable<Uint8Array | string> {
  return typeof value === "object" && value !== null && Symbol.iterator in value;
}

/** The request body for `data`: whole values stay whole, iterables become a stream. */
export function uploadBody(data: WriteData): RequestBody {
  if (typeof data === "string" || data instanceof Uint8Array || data instanceof ArrayBuffer) return data;
  if (typeof Blob !== "undefined" && data instanceof Blob) return data;
  if (typeof ReadableStream !== "undefined" && data instanceof ReadableStream) return data;
  if (isAsyncIterable(data) || isIterable(data)) {
    const source = data;
    return new ReadableStream<Uint8Array>({
      async start(controller) {
        try {
          if (isAsyncIterable(source)) {
            for await (const chunk of source) {
              const bytes = toBytes(chunk);
              if (bytes.byteLength > 0) controller.enqueue(bytes);
            }
          } else {
            for (const chunk of source) {
              const bytes = toBytes(chunk);
              if (bytes.byteLength > 0) controller.enqueue(bytes);
            }
          }
          controller.close();
        } catch (exc) {
          controller.error(exc);
        }
      },
    });
  }
  throw new TypeError(`cannot upload a ${typeof data}`);
}

export interface ReadOptions {
  /** `"text"` (default, UTF-8) or `"bytes"` (a `Uint8Array`). */
  format?: "text" | "bytes";
  signal?: AbortSignal;
}

export interface WriteOptions {
  /** `0o644` or `"0644"`. */
  mode?: FileMode;
  /** The owner (default `user`). */
  user?: string;
  /** Seconds for the whole upload (default: the client's request timeout). */
  requestTimeout?: number | null;
  signal?: AbortSignal;
}

/** A live `files.watch`: iterate it for events; `close()` (or `break`) stops it. */
export class FileWatch implements AsyncIterable<FileEvent> {
  #events: AsyncGenerator<FileEvent, void, undefined>;
  #close: () => Promise<void>;

  constructor(events: AsyncGenerator<FileEvent, void, undefined>, close: () => Promise<void>) {
    this.#events = events;
    this.#close = close;
  }

  [Symbol.asyncIterator](): AsyncGenerator<FileEvent, void, undefined> {
    return this.#events;
  }

  /** Stop watching (drops the connection). */
  async close(): Promise<void> {
    await this.#close();
    await this.#events.return(undefined);
  }
}

/** Files of one sandbox (`sandbox.files`). */
export class Files {
  constructor(
    private readonly http: Http,
    private readonly sandboxId: string,
  ) {}

  #path(sub = ""): string {
    return `${sandboxPath(this.sandboxId)}/files${sub}`;
  }

  /** The file's contents: text (UTF-8, the default) or bytes. */
  read(path: string, options?: ReadOptions & { format?: "text" }): Promise<string>;
  read(path: string, options: ReadOptions & { format: "bytes" }): Promise<Uint8Array>;
  read(path: string, options?: ReadOptions): Promise<string | Uint8Array>;
  async read(path: string, options: ReadOptions = {}): Promise<string | Uint8Array> {
    const request = { params: [["path", path]] as Params, signal: options.signal };
    const stream = await this.http.open("GET", this.#path(), request);
    const parts: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of stream.chunks()) {
      parts.push(chunk);
      size += chunk.byteLength;
    }
    const bytes = new Uint8Array(size);
    let at = 0;
    for (const part of parts) {
      bytes.set(part, at);
      at += part.byteLength;
    }
    return options.format === "bytes" ? bytes : new TextDecoder("utf-8").decode(bytes);
  }

  /** The file's bytes as they arrive (`break` to stop early). */
  async *readStream(path: string, options: { signal?: AbortSignal } = {}): AsyncGenerator<Uint8Array, void, undefined> {
    const stream = await this.http.open("GET", this.#path(), { params: [["path", path]], signal: options.signal });
    yield* stream.chunks();
  }

  /**
   * Create or atomically replace `path` (missing parents are created).
   * `data`: a string (UTF-8), bytes, a `Blob`, or — streamed — a
   * `ReadableStream` or an (async) iterable of chunks.
   */
  async write(path: string, data: WriteData, options: WriteOptions = {}): Promise<FileInfo> {
    const params: Params = [["path", path]];
    if (options.mode !== undefined) params.push(["mode", formatMode(options.mode)]);
    if (options.user !== undefined) params.push(["user", options.user]);
    const body = uploadBody(data);
    const data_ = await this.http.json<Record<string, unknown>>("PUT", this.#path(), {
      params,
      body,
      signal: options.signal,
      timeout: options.requestTimeout,
    });
    return fileInfo(data_);
  }

  /** The entries of a directory (`depth` levels deep). */
  async list(path: string, options: { depth?: number } = {}): Promise<FileInfo[]> {
    const params: Params = [
      ["path", path],
      ["depth", String(options.depth ?? 1)],
    ];
    const data = await this.http.json<{ entries?: Record<string, unknown>[] }>("GET", this.#path("/list"), { params });
    return (data.entries ?? []).map(fileInfo);
  }

  async stat(path: string): Promise<FileInfo> {
    return fileInfo(await this.http.json("GET", this.#path("/stat"), { params: [["path", path]] }));
  }

  async exists(path: string): Promise<boolean> {
    const data = await this.http.json<{ exists?: boolean }>("GET", this.#path("/exists"), {
      params: [["path", path]],
    });
    return Boolean(data.exists);
  }

  /** Create a directory (parents too by default); `false` if it already existed. */
  async makeDir(path: string, options: { parents?: boolean; mode?: FileMode; user?: string } = {}): Promise<boolean> {
    const body: Record<string, unknown> = {
      path,
      parents: options.parents ?? true,
      mode: options.mode === undefined ? "0755" : formatMode(options.mode),
    };
    if (options.user !== undefined) body["user"] = options.user;
    const data = await this.http.json<{ created?: boolean }>("POST", this.#path("/mkdir"), { json: body });
    return Boolean(data.created);
  }

  /** Delete a file, or a directory (`recursive: true` for a non-empty one). */
  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    const params: Params = [
      ["path", path],
      ["recursive", options.recursive ? "true" : "false"],
    ];
    await this.http.none("DELETE", this.#path(), { params });
  }

  async rename(source: string, destination: string): Promise<FileInfo> {
    return fileInfo(await this.http.json("POST", this.#path("/rename"), { json: { source, destination } }));
  }

  async chmod(path: string, mode: FileMode): Promise<FileInfo> {
    return fileInfo(await this.http.json("POST", this.#path("/chmod"), { json: { path, mode: formatMode(mode) } }));
  }

  /**
   * Watch `path` for changes. The watch is active once the promise resolves;
   * iterate the result (`for await`) and `close()` it (or `break`) to stop.
   */
  async watch(path: string, options: { recursive?: boolean; signal?: AbortSignal } = {}): Promise<FileWatch> {
    const params: Params = [
      ["path", path],
      ["recursive", options.recursive ? "true" : "false"],
    ];
    const stream = await this.http.open("GET", this.#path("/watch"), { params, signal: options.signal });
    return new FileWatch(ndjson(stream.chunks(), fileEvent), () => stream.close());
  }
}
