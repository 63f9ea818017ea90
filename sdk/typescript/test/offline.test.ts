// Tests that need no server: error mapping, configuration, timeouts and NDJSON
// decoding, with a fake `fetch` where a request is involved.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ApiConnectionError,
  AtelierError,
  AuthenticationError,
  ConnectionConfig,
  FileExists,
  InvalidRequest,
  NotFound,
  Sandbox,
  SandboxNotFound,
  ServiceUnavailable,
  errorClassFor,
  errorFromPayload,
  errorFromResponse,
  formatMode,
} from "@atelier/sdk";

const encoder = new TextEncoder();

function streamOf(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
}

/** A `fetch` that answers every request with `answer(url, init)`. */
function fakeFetch(answer: (url: string, init: RequestInit) => Response | Promise<Response>): typeof fetch {
  return (async (input: RequestInfo | URL, init?: RequestInit) => answer(String(input), init ?? {})) as typeof fetch;
}

const SANDBOX = {
  id: "sb-0123456789",
  template: "base",
  runtime: "gvisor",
  state: "running",
  vcpus: 1,
  memory_mib: 512,
  disk_mib: 2048,
  env: {},
  labels: {},
  timeout: 300,
  expires_at: "2030-01-01T00:00:00Z",
  created_at: "2030-01-01T00:00:00Z",
  started_at: null,
  error: null,
};

async function fakeSandbox(commands: (init: RequestInit) => Response): Promise<Sandbox> {
  const fetch = fakeFetch((url, init) => {
    if (url.endsWith("/commands")) return commands(init);
    return Response.json(SANDBOX);
  });
  return Sandbox.connect(SANDBOX.id, { apiUrl: "http://fake.invalid", token: "t", fetch });
}

describe("errors", () => {
  test("a JSON error body becomes the class of its code", () => {
    const err = errorFromResponse(404, JSON.stringify({ code: "sandbox_not_found", message: "no sandbox sb-x" }));
    assert.ok(err instanceof SandboxNotFound);
    assert.ok(err instanceof NotFound);
    assert.ok(err instanceof AtelierError);
    assert.ok(err instanceof Error);
    assert.equal(err.code, "sandbox_not_found");
    assert.equal(err.status, 404);
    assert.equal(err.message, "no sandbox sb-x");
    assert.equal(err.name, "SandboxNotFound");
    assert.deepEqual(err.details, {});
  });

  test("details are kept; unknown codes fall back on the status", () => {
    const err = errorFromPayload({ code: "file_exists", message: "m", details: { path: "/a" } }, 409);
    assert.ok(err instanceof FileExists);
    assert.deepEqual(err.details, { path: "/a" });
    const odd = errorFromPayload({ code: "brand_new_code", message: "m" }, 400);
    assert.ok(odd instanceof InvalidRequest);
    assert.equal(errorClassFor("brand_new_code"), AtelierError);
  });

  test("a body that is not an error object still maps by status", () => {
    const err = errorFromResponse(503, "<html>bad gateway</html>", "Service Unavailable");
    assert.ok(err instanceof ServiceUnavailable);
    assert.match(err.message, /HTTP 503/);
    assert.deepEqual(err.details, { status: 503 });
  });

  test("ApiConnectionError is a ServiceUnavailable with code connection_error", () => {
    const err = new ApiConnectionError("down");
    assert.ok(err instanceof ServiceUnavailable);
    assert.equal(err.code, "connection_error");
    assert.equal(err.status, 503);
    assert.deepEqual(err.toJSON(), { code: "connection_error", message: "down" });
  });
});

describe("configuration", () => {
  test("a missing token fails before any request", () => {
    const saved = process.env["ATELIER_TOKEN"];
    delete process.env["ATELIER_TOKEN"];
    try {
      assert.throws(() => ConnectionConfig.resolve({ apiUrl: "http://127.0.0.1:1" }), AuthenticationError);
    } finally {
      if (saved !== undefined) process.env["ATELIER_TOKEN"] = saved;
    }
  });

  test("the URL loses its trailing slash; WebSocket URLs carry the token", () => {
    const config = ConnectionConfig.resolve({ apiUrl: "https://atelier.example/base/", token: "tok" });
    assert.equal(config.apiUrl, "https://atelier.example/base");
    assert.equal(config.wsUrl("/v1/x", [["cols", "80"]]), "wss://atelier.example/base/v1/x?cols=80&token=tok");
    assert.equal(JSON.stringify(config).includes("tok\""), false);
  });

  test("file modes", () => {
    assert.equal(formatMode(0o644), "0644");
    assert.equal(formatMode("755"), "0755");
    assert.equal(formatMode("0o600"), "0600");
    assert.throws(() => formatMode("rwx"), InvalidRequest);
  });
});

describe("transport", () => {
  test("an unreachable server is an ApiConnectionError", async () => {
    // port 1 on localhost: nothing listens there
    await assert.rejects(Sandbox.connect("sb-x", { apiUrl: "http://127.0.0.1:1", token: "t" }), ApiConnectionError);
  });

  test("a request past its timeout is an ApiConnectionError with details.timeout", async () => {
    const never = fakeFetch(
      (_url, init) =>
        new Promise<Response>((_resolve, reject) => {
          init.signal?.addEventListener("abort", () => reject(init.signal?.reason));
        }),
    );
    const started = Date.now();
    await assert.rejects(
      Sandbox.list({ apiUrl: "http://fake.invalid", token: "t", fetch: never, requestTimeout: 0.2 }),
      (err: unknown) => err instanceof ApiConnectionError && err.details["timeout"] === true,
    );
    assert.ok(Date.now() - started < 5000);
  });

  test("NDJSON lines and UTF-8 characters split across chunks are reassembled", async () => {
    const text =
      '{"type":"started","pid":7}\n{"type":"stdout","data":"h\u00e9llo \u2713\\n"}\n' +
      '{"type":"stderr","data":"warn"}\n{"type":"exit","exit_code":3,"signal":null,"timed_out":false}';
    const bytes = encoder.encode(text);
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < bytes.length; i += 5) chunks.push(bytes.slice(i, i + 5)); // cuts é and ✓
    const sb = await fakeSandbox(() => new Response(streamOf(chunks), { headers: { "content-type": "application/x-ndjson" } }));
    const seen: string[] = [];
    const result = await sb.commands.run("x", { onStdout: (d) => void seen.push(d) });
    assert.equal(result.stdout, "h\u00e9llo \u2713\n");
    assert.equal(result.stderr, "warn");
    assert.equal(result.exitCode, 3);
    assert.equal(result.ok, false);
    assert.equal(result.pid, 7);
    assert.deepEqual(seen, ["h\u00e9llo \u2713\n"]);
  });

  test("an error event rejects with its class after the output before it", async () => {
    const body = '{"type":"stdout","data":"partial"}\n{"type":"error","code":"agent_error","message":"agent died"}\n';
    const sb = await fakeSandbox(() => new Response(streamOf([encoder.encode(body)])));
    const seen: string[] = [];
    await assert.rejects(
      sb.commands.run("x", { onStdout: (d) => void seen.push(d) }),
      (err: unknown) => err instanceof AtelierError && err.code === "agent_error" && err.message === "agent died",
    );
    assert.deepEqual(seen, ["partial"]);
  });

  test("a stream that ends before exit is an ApiConnectionError", async () => {
    const sb = await fakeSandbox(() => new Response(streamOf([encoder.encode('{"type":"stdout","data":"x"}\n')])));
    await assert.rejects(sb.commands.run("x"), ApiConnectionError);
  });

  test("the command body: shell string, argv, options", async () => {
    const bodies: unknown[] = [];
    const sb = await fakeSandbox((init) => {
      bodies.push(JSON.parse(String(init.body)));
      return new Response(streamOf([encoder.encode('{"type":"exit","exit_code":0}\n')]));
    });
    await sb.commands.run("echo hi", { env: { A: "1" }, cwd: "/tmp", timeout: 5, stdin: "in" });
    await sb.commands.run(["ls", "-l"], { user: "root" });
    await sb.commands.run({ argv: ["true"] });
    assert.deepEqual(bodies, [
      { env: { A: "1" }, cmd: "echo hi", cwd: "/tmp", timeout: 5, stdin: "in", background: false },
      { env: {}, argv: ["ls", "-l"], user: "root", background: false },
      { env: {}, argv: ["true"], background: false },
    ]);
    await assert.rejects(sb.commands.run([]), InvalidRequest);
  });
});
