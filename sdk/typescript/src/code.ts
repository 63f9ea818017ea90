/**
 * `sandbox.runCode` and `sandbox.code`: stateful code cells (python,
 * javascript, bash) in kernels inside the sandbox (`docs/interpreter.md`).
 *
 * Variables live in a *context* (a kernel); each language has a default
 * context named after it, and any other name makes a new one on first use.
 * An exception in the code is *not* thrown: it is `execution.error` (name,
 * value, traceback). A cell past its `timeout` is interrupted and reports a
 * `TimeoutError` there; the context keeps its state. Failures of the platform
 * reject with {@link AtelierError} subclasses.
 */

import { errorFromPayload } from "./errors.js";
import { type Http, ndjson, sandboxPath, seg } from "./http.js";
import { parseDate } from "./models.js";

export type Language = "python" | "javascript" | "bash";

/** Seconds a cell may run by default. */
export const DEFAULT_CODE_TIMEOUT = 60;

function decodeBase64(value: string): Uint8Array {
  const binary = atob(value);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/**
 * One rich output of a cell: a MIME bundle (`data`) with typed accessors.
 * `isMainResult` is true for the value of the cell's last expression;
 * displays (`plt.show()`, `display(...)`) are results too.
 */
export class Result {
  constructor(
    readonly data: Record<string, unknown>,
    readonly isMainResult = false,
    readonly metadata: Record<string, unknown> = {},
  ) {}

  #str(mime: string): string | undefined {
    const value = this.data[mime];
    return typeof value === "string" ? value : undefined;
  }

  get text(): string | undefined {
    return this.#str("text/plain");
  }
  get html(): string | undefined {
    return this.#str("text/html");
  }
  get markdown(): string | undefined {
    return this.#str("text/markdown");
  }
  get svg(): string | undefined {
    return this.#str("image/svg+xml");
  }
  /** The PNG image, base64-encoded (see {@link pngBytes}). */
  get png(): string | undefined {
    return this.#str("image/png");
  }
  /** The JPEG image, base64-encoded. */
  get jpeg(): string | undefined {
    return this.#str("image/jpeg");
  }
  get latex(): string | undefined {
    return this.#str("text/latex");
  }
  get javascript(): string | undefined {
    return this.#str("application/javascript");
  }
  /** The `application/json` value, if any. */
  get json(): unknown {
    return this.data["application/json"];
  }
  pngBytes(): Uint8Array | undefined {
    const png = this.png;
    return png === undefined ? undefined : decodeBase64(png);
  }
  jpegBytes(): Uint8Array | undefined {
    const jpeg = this.jpeg;
    return jpeg === undefined ? undefined : decodeBase64(jpeg);
  }
  /** The MIME types this result carries. */
  formats(): string[] {
    return Object.keys(this.data);
  }
  toString(): string {
    return this.text ?? "";
  }
}

/** An exception raised by the code (or `TimeoutError`; `ExitStatus` for bash). */
export interface ExecutionError {
  name: string;
  value: string;
  traceback: string;
}

export interface Logs {
  stdout: string[];
  stderr: string[];
}

/** What a cell did: its results, its output and its error, if any. */
export class Execution {
  results: Result[] = [];
  logs: Logs = { stdout: [], stderr: [] };
  error: ExecutionError | null = null;
  executionCount: number | null = null;
  context: string | null = null;
  durationMs: number | null = null;
  /** Bash cells: the status of the last command. */
  exitCode: number | null = null;

  /** The text of the main result (the last expression's value), if any. */
  get text(): string | undefined {
    return this.results.find((r) => r.isMainResult)?.text;
  }
  get stdout(): string {
    return this.logs.stdout.join("");
  }
  get stderr(): string {
    return this.logs.stderr.join("");
  }
  get timedOut(): boolean {
    return this.error?.name === "TimeoutError";
  }
  toJSON(): Record<string, unknown> {
    return {
      text: this.text,
      results: this.results.map((r) => ({ data: r.data, isMainResult: r.isMainResult })),
      logs: this.logs,
      error: this.error,
      executionCount: this.executionCount,
      context: this.context,
      durationMs: this.durationMs,
      exitCode: this.exitCode,
    };
  }
}

export interface CodeContext {
  name: string;
  language: Language | string;
  cwd: string;
  createdAt: Date | null;
  executionCount: number;
  alive: boolean;
}

function codeContext(data: Record<string, unknown>): CodeContext {
  return {
    name: String(data["name"]),
    language: String(data["language"]),
    cwd: String(data["cwd"] ?? ""),
    createdAt: parseDate(data["created_at"]),
    executionCount: Number(data["execution_count"] ?? 0),
    alive: data["alive"] === undefined ? true : Boolean(data["alive"]),
  };
}

export interface RunCodeOptions {
  /** Default `"python"`. */
  language?: Language;
  /** The context (kernel) to run in; default: the language's own. */
  context?: string;
  /** Seconds (default 60; `null`: none). */
  timeout?: number | null;
  onStdout?: (data: string) => unknown;
  onStderr?: (data: string) => unknown;
  onResult?: (result: Result) => unknown;
  onError?: (error: ExecutionError) => unknown;
  /** Aborting interrupts the cell (the connection is dropped). */
  signal?: AbortSignal;
}

type CodeEvent =
  | { type: "stdout" | "stderr"; data: string }
  | { type: "result"; result: Result }
  | { type: "error"; error: ExecutionError }
  | { type: "end"; data: Record<string, unknown> };

function codeEvent(obj: Record<string, unknown>): CodeEvent | undefined {
  const type = obj["type"];
  if (type === "stdout" || type === "stderr") return { type, data: String(obj["data"] ?? "") };
  if (type === "result") {
    const data = obj["data"];
    const meta = obj["metadata"];
    return {
      type,
      result: new Result(
        typeof data === "object" && data !== null ? { ...(data as Record<string, unknown>) } : {},
        Boolean(obj["is_main_result"]),
        typeof meta === "object" && meta !== null ? { ...(meta as Record<string, unknown>) } : {},
      ),
    };
  }
  if (type === "error") {
    if ("code" in obj && !("name" in obj)) throw errorFromPayload(obj); // the platform's
    return {
      type,
      error: {
        name: String(obj["name"] ?? "Error"),
        value: String(obj["value"] ?? ""),
        traceback: String(obj["traceback"] ?? ""),
      },
    };
  }
  if (type === "end") return { type, data: obj };
  return undefined;
}

/** Cells and contexts of one sandbox (`sandbox.code`); `sandbox.runCode` uses it. */
export class CodeInterpreter {
  constructor(
    private readonly http: Http,
    private readonly sandboxId: string,
  ) {}

  #path(sub = ""): string {
    return `${sandboxPath(this.sandboxId)}/code${sub}`;
  }

  /** Run a cell; resolves when it ends (handlers are called as events arrive). */
  async run(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    const body: Record<string, unknown> = {
      code,
      language: options.language ?? "python",
      timeout: options.timeout === undefined ? DEFAULT_CODE_TIMEOUT : options.timeout,
    };
    if (options.context !== undefined) body["context"] = options.context;
    const stream = await this.http.open("POST", this.#path(), { json: body, signal: options.signal });
    const ex = new Execution();
    for await (const event of ndjson(stream.chunks(), codeEvent)) {
      switch (event.type) {
        case "stdout":
          ex.logs.stdout.push(event.data);
          if (options.onStdout) await options.onStdout(event.data);
          break;
        case "stderr":
          ex.logs.stderr.push(event.data);
          if (options.onStderr) await options.onStderr(event.data);
          break;
        case "result":
          ex.results.push(event.result);
          if (options.onResult) await options.onResult(event.result);
          break;
        case "error":
          ex.error = event.error;
          if (options.onError) await options.onError(event.error);
          break;
        case "end": {
          const d = event.data;
          ex.executionCount = typeof d["execution_count"] === "number" ? d["execution_count"] : null;
          ex.context = typeof d["context"] === "string" && d["context"] ? d["context"] : null;
          ex.durationMs = typeof d["duration_ms"] === "number" ? d["duration_ms"] : null;
          ex.exitCode = typeof d["exit_code"] === "number" ? d["exit_code"] : null;
          break;
        }
      }
    }
    return ex;
  }

  async listContexts(): Promise<CodeContext[]> {
    const data = await this.http.json<{ contexts?: Record<string, unknown>[] }>("GET", this.#path("/contexts"));
    return (data.contexts ?? []).map(codeContext);
  }

  /** Start a kernel now (`409 conflict` if the name exists). */
  async createContext(options: { language?: Language; name?: string; cwd?: string } = {}): Promise<CodeContext> {
    const body: Record<string, unknown> = { language: options.language ?? "python" };
    if (options.name) body["name"] = options.name;
    if (options.cwd) body["cwd"] = options.cwd;
    return codeContext(await this.http.json("POST", this.#path("/contexts"), { json: body }));
  }

  /** A new kernel for the context; its state is gone. */
  async restartContext(name: string): Promise<CodeContext> {
    return codeContext(await this.http.json("POST", this.#path(`/contexts/${seg(name)}/restart`)));
  }

  async deleteContext(name: string): Promise<void> {
    await this.http.none("DELETE", this.#path(`/contexts/${seg(name)}`));
  }
}
