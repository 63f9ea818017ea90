/**
 * `sandbox.commands`: run processes, stream their output, attach to them later.
 *
 * A command's nonzero exit status is *not* an error: look at
 * `result.exitCode` (or `result.ok`). Failures of the platform itself
 * (sandbox gone, agent failure, server unreachable) reject with
 * {@link AtelierError} subclasses.
 */

import { ApiConnectionError, InvalidRequest, ProcessNotFound, errorFromPayload } from "./errors.js";
import { type Http, type OpenStream, ndjson, sandboxPath } from "./http.js";
import { type CommandEvent, type CommandResult, type ProcessInfo, processInfo } from "./models.js";

/** Called with each piece of output as it arrives; may return a promise (awaited). */
export type OutputHandler = (data: string) => unknown;

/** What to run: a shell string (`bash -l -c`), or an argv exec'd directly. */
export type CommandSpec = string | readonly string[] | { argv: readonly string[] };

export interface RunOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Default `user` (the template's unprivileged user); `root` is allowed. */
  user?: string;
  /** Seconds; past it the process group is SIGKILLed (`timedOut: true`, exit 137). */
  timeout?: number;
  /** Written to the process's stdin, which is then closed (unless `keepStdinOpen`). */
  stdin?: string;
  /** A label for the process (shown by `commands.list()`). */
  tag?: string;
  /** Aborting a foreground command drops the connection, which kills the process. */
  signal?: AbortSignal;
}

export interface ForegroundOptions extends RunOptions {
  background?: false;
  onStdout?: OutputHandler;
  onStderr?: OutputHandler;
}

export interface BackgroundOptions extends RunOptions {
  background: true;
  /** Keep stdin open for `handle.sendStdin(...)`. */
  keepStdinOpen?: boolean;
}

export interface WaitOptions {
  onStdout?: OutputHandler;
  onStderr?: OutputHandler;
  signal?: AbortSignal;
}

export function parseCommandEvent(obj: Record<string, unknown>): CommandEvent | undefined {
  switch (obj["type"]) {
    case "stdout":
      return { type: "stdout", data: String(obj["data"] ?? "") };
    case "stderr":
      return { type: "stderr", data: String(obj["data"] ?? "") };
    case "started":
      return { type: "started", pid: Number(obj["pid"]) };
    case "exit": {
      const code = obj["exit_code"];
      const signal = obj["signal"];
      return {
        type: "exit",
        exitCode: code === null || code === undefined ? -1 : Number(code),
        signal: typeof signal === "string" || typeof signal === "number" ? signal : null,
        timedOut: Boolean(obj["timed_out"]),
      };
    }
    case "error":
      throw errorFromPayload({
        code: obj["code"] ?? "agent_error",
        message: obj["message"] ?? "command failed",
        details: obj["details"],
      });
    default:
      return undefined;
  }
}

/** Accumulates command events into a {@link CommandResult}, calling the handlers. */
class ResultCollector {
  #stdout: string[] = [];
  #stderr: string[] = [];
  #exit: Extract<CommandEvent, { type: "exit" }> | undefined;

  constructor(
    private readonly onStdout: OutputHandler | undefined,
    private readonly onStderr: OutputHandler | undefined,
    public pid: number | null = null,
  ) {}

  async feed(event: CommandEvent): Promise<void> {
    switch (event.type) {
      case "stdout":
        this.#stdout.push(event.data);
        if (this.onStdout) await this.onStdout(event.data);
        break;
      case "stderr":
        this.#stderr.push(event.data);
        if (this.onStderr) await this.onStderr(event.data);
        break;
      case "started":
        this.pid = event.pid;
        break;
      case "exit":
        this.#exit = event;
        break;
    }
  }

  async drain(stream: OpenStream): Promise<CommandResult> {
    for await (const event of ndjson(stream.chunks(), parseCommandEvent)) await this.feed(event);
    return this.result();
  }

  result(): CommandResult {
    if (this.#exit === undefined) {
      throw new ApiConnectionError("the event stream ended before the process exited");
    }
    return {
      stdout: this.#stdout.join(""),
      stderr: this.#stderr.join(""),
      exitCode: this.#exit.exitCode,
      signal: this.#exit.signal,
      timedOut: this.#exit.timedOut,
      pid: this.pid,
      ok: this.#exit.exitCode === 0,
    };
  }
}

/** The JSON body of `POST .../commands`. */
export function commandBody(spec: CommandSpec, options: RunOptions & { keepStdinOpen?: boolean }): Record<string, unknown> {
  const body: Record<string, unknown> = { env: { ...(options.env ?? {}) } };
  if (typeof spec === "string") body["cmd"] = spec;
  else {
    const argv = Array.isArray(spec) ? spec : (spec as { argv: readonly string[] }).argv;
    if (!Array.isArray(argv)) throw new InvalidRequest("give a shell string or {argv: [...]} (a list of strings)");
    if (argv.length === 0) throw new InvalidRequest("argv must not be empty");
    body["argv"] = argv.map(String);
  }
  if (options.cwd !== undefined) body["cwd"] = options.cwd;
  if (options.user !== undefined) body["user"] = options.user;
  if (options.timeout !== undefined) body["timeout"] = options.timeout;
  if (options.stdin !== undefined) body["stdin"] = options.stdin;
  if (options.tag !== undefined) body["tag"] = options.tag;
  if (options.keepStdinOpen) body["keep_stdin_open"] = true;
  return body;
}

/** A background process: wait for or stream its output, feed its stdin, signal it. */
export class CommandHandle {
  constructor(
    private readonly http: Http,
    readonly sandboxId: string,
    readonly pid: number,
    readonly info: ProcessInfo | null = null,
  ) {}

  #path(sub: string): string {
    return `${sandboxPath(this.sandboxId)}/commands/${this.pid}/${sub}`;
  }

  /**
   * Events from the start of the process (buffered output replayed), then live
   * until `exit`. Each call attaches anew; `break` out of the loop to detach.
   */
  async *stream(options: { signal?: AbortSignal } = {}): AsyncGenerator<CommandEvent, void, undefined> {
    const stream = await this.http.open("GET", this.#path("events"), { signal: options.signal });
    yield* ndjson(stream.chunks(), parseCommandEvent);
  }

  /** Wait until the process exits; resolve with its whole output. */
  async wait(options: WaitOptions = {}): Promise<CommandResult> {
    const collector = new ResultCollector(options.onStdout, options.onStderr, this.pid);
    const stream = await this.http.open("GET", this.#path("events"), { signal: options.signal });
    return collector.drain(stream);
  }

  /**
   * Write to stdin (the process was started with `keepStdinOpen: true`);
   * `eof: true` closes stdin afterwards.
   */
  async sendStdin(data: string | Uint8Array, options: { eof?: boolean } = {}): Promise<void> {
    const params: Array<[string, string]> = options.eof ? [["eof", "true"]] : [];
    await this.http.none("POST", this.#path("stdin"), { params, body: data });
  }

  /** Close the process's stdin. */
  async closeStdin(): Promise<void> {
    await this.sendStdin("", { eof: true });
  }

  /** Send a signal (name like `"SIGTERM"` or number). */
  async signal(signal: string | number = "SIGTERM"): Promise<void> {
    await this.http.none("POST", this.#path("signal"), { json: { signal } });
  }

  /** SIGKILL the process; `false` if it no longer exists. */
  async kill(): Promise<boolean> {
    try {
      await this.signal("SIGKILL");
    } catch (exc) {
      if (exc instanceof ProcessNotFound) return false;
      throw exc;
    }
    return true;
  }
}

/** Processes of one sandbox (`sandbox.commands`). */
export class Commands {
  constructor(
    private readonly http: Http,
    private readonly sandboxId: string,
  ) {}

  #path(): string {
    return `${sandboxPath(this.sandboxId)}/commands`;
  }

  /**
   * Run `cmd` (a shell string, run by `bash -l -c`) or an argv (`["ls", "-l"]`
   * or `{argv: [...]}`, exec'd directly).
   *
   * In the foreground, resolve once it exits with a {@link CommandResult}
   * (output is also passed to `onStdout`/`onStderr` as it arrives). With
   * `background: true`, resolve at once with a {@link CommandHandle}.
   */
  run(cmd: CommandSpec, options: BackgroundOptions): Promise<CommandHandle>;
  run(cmd: CommandSpec, options?: ForegroundOptions): Promise<CommandResult>;
  async run(cmd: CommandSpec, options: ForegroundOptions | BackgroundOptions = {}): Promise<CommandResult | CommandHandle> {
    const body = commandBody(cmd, options);
    if (options.background) {
      const data = await this.http.json<Record<string, unknown>>("POST", this.#path(), {
        json: { ...body, background: true },
        signal: options.signal,
      });
      const info = processInfo(data);
      return new CommandHandle(this.http, this.sandboxId, info.pid, info);
    }
    const fg = options as ForegroundOptions;
    const stream = await this.http.open("POST", this.#path(), {
      json: { ...body, background: false },
      signal: fg.signal,
    });
    return new ResultCollector(fg.onStdout, fg.onStderr).drain(stream);
  }

  /** Processes started through the API (running, and finished ones still listed). */
  async list(): Promise<ProcessInfo[]> {
    const data = await this.http.json<{ processes?: Record<string, unknown>[] }>("GET", this.#path());
    return (data.processes ?? []).map(processInfo);
  }

  /** A handle on a listed process; {@link ProcessNotFound} if there is none. */
  async connect(pid: number): Promise<CommandHandle> {
    const info = (await this.list()).find((p) => p.pid === pid);
    if (info === undefined) throw new ProcessNotFound(`no process ${pid} in sandbox ${this.sandboxId}`);
    return new CommandHandle(this.http, this.sandboxId, pid, info);
  }

  sendStdin(pid: number, data: string | Uint8Array, options: { eof?: boolean } = {}): Promise<void> {
    return new CommandHandle(this.http, this.sandboxId, pid).sendStdin(data, options);
  }

  signal(pid: number, signal: string | number = "SIGTERM"): Promise<void> {
    return new CommandHandle(this.http, this.sandboxId, pid).signal(signal);
  }

  /** SIGKILL a process; `false` if it no longer exists. */
  kill(pid: number): Promise<boolean> {
    return new CommandHandle(this.http, this.sandboxId, pid).kill();
  }
}
