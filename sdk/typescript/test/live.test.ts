// The SDK against a live Atelier server: ATELIER_URL and ATELIER_TOKEN say
// which (tests/integration/test_typescript_sdk.py runs this in `make test`).
// Without them the suite is skipped, and says why.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  type CommandHandle,
  AuthenticationError,
  FileNotFound,
  InvalidRequest,
  ProcessNotFound,
  Sandbox,
  SandboxNotFound,
} from "@atelier/sdk";

const URL_ = process.env["ATELIER_URL"];
const TOKEN = process.env["ATELIER_TOKEN"];
const LIVE = Boolean(URL_ && TOKEN);
const CODE_TEMPLATE = "code-interpreter";
const LABELS = { test: "typescript-sdk" };

if (!LIVE) {
  process.stdout.write("# live tests skipped: set ATELIER_URL and ATELIER_TOKEN to run them against a server\n");
}

const decoder = new TextDecoder();

/** Wait until `predicate` holds for the collected output, or fail after `seconds`. */
async function until(predicate: () => boolean, seconds: number, what: string): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function templateReady(name: string): Promise<boolean> {
  const response = await fetch(`${URL_}/v1/templates`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  if (!response.ok) return false;
  const data = (await response.json()) as { templates?: Array<{ name: string; ready: boolean }> };
  return (data.templates ?? []).some((t) => t.name === name && t.ready);
}

describe("live server", { skip: LIVE ? false : "ATELIER_URL / ATELIER_TOKEN not set" }, () => {
  let sb: Sandbox;

  before(async () => {
    sb = await Sandbox.create({ template: "base", timeout: 600, labels: LABELS, env: { GREETING: "hello" } });
  });

  after(async () => {
    if (sb !== undefined) await sb.kill();
  });

  test("create, connect, list, getInfo, setTimeout, logs", async () => {
    assert.equal(sb.info.state, "running");
    assert.match(sb.id, /^sb-/);
    assert.equal(sb.info.template, "base");
    assert.ok(sb.info.createdAt instanceof Date);
    const again = await Sandbox.connect(sb.id);
    assert.equal(again.id, sb.id);
    const listed = await Sandbox.list({ labels: LABELS });
    assert.ok(listed.some((s) => s.id === sb.id));
    const info = await sb.setTimeout(900);
    assert.equal(info.timeout, 900);
    assert.ok(info.expiresAt instanceof Date);
    assert.equal((await sb.getInfo()).id, sb.id);
    assert.equal(await sb.isRunning(), true);
    assert.equal(typeof (await sb.logs({ tail: 20 })), "string");
  });

  test("commands.run: echo hi, with onStdout", async () => {
    const chunks: string[] = [];
    const result = await sb.commands.run("echo hi", { onStdout: (d) => void chunks.push(d) });
    assert.equal(result.stdout, "hi\n");
    assert.equal(result.exitCode, 0);
    assert.equal(result.ok, true);
    assert.equal(chunks.join(""), "hi\n");
    assert.ok(result.pid !== null && result.pid > 0);
  });

  test("commands.run: exit codes, stderr, env, cwd, argv, timeout", async () => {
    const failed = await sb.commands.run("echo oops >&2; exit 3", { onStderr: () => undefined });
    assert.equal(failed.exitCode, 3);
    assert.equal(failed.stderr, "oops\n");
    assert.equal(failed.ok, false);
    const env = await sb.commands.run('echo "$GREETING $EXTRA"', { env: { EXTRA: "world" } });
    assert.equal(env.stdout, "hello world\n");
    const cwd = await sb.commands.run({ argv: ["pwd"] }, { cwd: "/tmp" });
    assert.equal(cwd.stdout, "/tmp\n");
    const root = await sb.commands.run(["id", "-un"], { user: "root" });
    assert.equal(root.stdout, "root\n");
    const slow = await sb.commands.run("sleep 30", { timeout: 1 });
    assert.equal(slow.timedOut, true);
    assert.equal(slow.exitCode, 137);
    const missing = await sb.commands.run({ argv: ["no-such-program-xyz"] });
    assert.equal(missing.exitCode, 127);
  });

  test("commands.run: stdin", async () => {
    const result = await sb.commands.run("tr a-z A-Z", { stdin: "shout\n" });
    assert.equal(result.stdout, "SHOUT\n");
  });

  test("files: text round trip, list, exists, stat, rename, remove", async () => {
    const dir = "/home/user/ts-sdk";
    const info = await sb.files.write(`${dir}/a.txt`, "héllo ✓\n", { mode: 0o600 });
    assert.equal(info.path, `${dir}/a.txt`);
    assert.equal(info.size, new TextEncoder().encode("héllo ✓\n").byteLength);
    assert.equal(info.mode, "0600");
    assert.equal(await sb.files.read(`${dir}/a.txt`), "héllo ✓\n");
    assert.equal(await sb.files.makeDir(`${dir}/sub`), true);
    assert.equal(await sb.files.makeDir(`${dir}/sub`), false);
    const names = (await sb.files.list(dir)).map((e) => e.name).sort();
    assert.deepEqual(names, ["a.txt", "sub"]);
    assert.equal((await sb.files.stat(`${dir}/sub`)).isDir, true);
    assert.equal(await sb.files.exists(`${dir}/a.txt`), true);
    const moved = await sb.files.rename(`${dir}/a.txt`, `${dir}/b.txt`);
    assert.equal(moved.name, "b.txt");
    assert.equal(await sb.files.exists(`${dir}/a.txt`), false);
    await sb.files.remove(`${dir}/b.txt`);
    assert.equal(await sb.files.exists(`${dir}/b.txt`), false);
    await assert.rejects(sb.files.read(`${dir}/b.txt`), FileNotFound);
    await sb.files.remove(dir, { recursive: true });
    assert.equal(await sb.files.exists(dir), false);
  });

  test("files: 1 MiB binary round trip, whole and streamed", async () => {
    const data = new Uint8Array(1024 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 8)) & 0xff;
    const info = await sb.files.write("/tmp/blob.bin", data);
    assert.equal(info.size, data.length);
    const back = await sb.files.read("/tmp/blob.bin", { format: "bytes" });
    assert.ok(back instanceof Uint8Array);
    assert.equal(back.length, data.length);
    assert.ok(back.every((b, i) => b === data[i]), "the bytes read back differ");
    // the same, uploaded as an async iterable of chunks and read as a stream
    async function* chunks(): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < data.length; i += 100_000) yield data.subarray(i, i + 100_000);
    }
    await sb.files.write("/tmp/blob2.bin", chunks());
    let size = 0;
    for await (const chunk of sb.files.readStream("/tmp/blob2.bin")) size += chunk.byteLength;
    assert.equal(size, data.length);
    const sum = await sb.commands.run("cmp /tmp/blob.bin /tmp/blob2.bin && echo same");
    assert.equal(sum.stdout, "same\n");
  });

  test("files.watch: a write is reported", async () => {
    await sb.files.makeDir("/home/user/watched");
    const watch = await sb.files.watch("/home/user/watched");
    const seen: string[] = [];
    const reading = (async () => {
      for await (const event of watch) {
        seen.push(`${event.type} ${event.path}`);
        if (event.path.endsWith("/new.txt")) break;
      }
    })();
    await sb.files.write("/home/user/watched/new.txt", "x");
    await Promise.race([reading, until(() => false, 15, "the watch event").catch(() => undefined)]);
    await watch.close();
    assert.ok(
      seen.includes("create /home/user/watched/new.txt"),
      `events: ${JSON.stringify(seen)}`,
    );
  });

  test("background command: list, wait, kill", async () => {
    const handle: CommandHandle = await sb.commands.run("echo started; sleep 300", { background: true, tag: "ts-bg" });
    assert.ok(handle.pid > 0);
    const listed = await sb.commands.list();
    const proc = listed.find((p) => p.pid === handle.pid);
    assert.ok(proc !== undefined && proc.running && proc.tag === "ts-bg");
    const out: string[] = [];
    const waiting = handle.wait({ onStdout: (d) => void out.push(d) });
    await until(() => out.join("").includes("started"), 15, "the background output");
    assert.equal(await sb.commands.kill(handle.pid), true);
    const result = await waiting;
    assert.notEqual(result.exitCode, 0);
    assert.equal(result.stdout, "started\n");
    const after = (await sb.commands.list()).find((p) => p.pid === handle.pid);
    assert.equal(after?.running ?? false, false);
    const short = await sb.commands.run("echo done", { background: true });
    assert.equal((await short.wait()).stdout, "done\n");
    await assert.rejects(sb.commands.signal(999_999, "SIGTERM"), ProcessNotFound);
  });

  test("background command: sendStdin with keepStdinOpen", async () => {
    const handle = await sb.commands.run("cat", { background: true, keepStdinOpen: true });
    await handle.sendStdin("line one\n");
    await handle.sendStdin(new TextEncoder().encode("line two\n"), { eof: true });
    const result = await handle.wait();
    assert.equal(result.stdout, "line one\nline two\n");
    assert.equal(result.exitCode, 0);
  });

  test("pty: echo, resize (stty size), exit code", async () => {
    const out: Uint8Array[] = [];
    const text = (): string => out.map((c) => decoder.decode(c)).join("");
    const term = await sb.pty.create({ cols: 100, rows: 30, cmd: "/bin/bash", onData: (d) => void out.push(d) });
    await term.sendInput("echo pty-$((40 + 2))\n");
    await until(() => text().includes("pty-42"), 20, "the terminal echo");
    await term.sendInput("stty size\n");
    await until(() => text().includes("30 100"), 20, "the first stty size");
    await term.resize(120, 40);
    await term.sendInput("stty size\n");
    await until(() => text().includes("40 120"), 20, "stty size after the resize");
    await term.sendInput("exit 7\n");
    assert.equal(await term.wait(), 7);
    assert.equal(term.exitCode, 7);
    assert.equal(term.ended, true);
  });

  test("pty: kill ends the session; iteration without onData", async () => {
    const term = await sb.pty.create({ cmd: "/bin/bash" });
    await term.sendInput("echo iter-ok\n");
    let seen = "";
    for await (const chunk of term) {
      seen += decoder.decode(chunk);
      if (seen.includes("iter-ok\r\n")) break;
    }
    await term.kill();
    assert.equal(term.ended, true);
    await assert.rejects(term.sendInput("x"));
  });

  test("runCode (needs the code-interpreter template)", async (t) => {
    if (!(await templateReady(CODE_TEMPLATE))) {
      const why = `the server has no ready '${CODE_TEMPLATE}' template (scripts/setup.sh code-interpreter-template)`;
      process.stdout.write(`# runCode skipped: ${why}\n`);
      t.skip(why);
      return;
    }
    const isb = await Sandbox.create({ template: CODE_TEMPLATE, memoryMib: 1024, timeout: 600, labels: LABELS });
    try {
      const printed: string[] = [];
      const first = await isb.runCode("x = 41\nprint('side', x)", { onStdout: (d) => void printed.push(d) });
      assert.equal(first.error, null);
      assert.equal(first.stdout, "side 41\n");
      assert.equal(printed.join(""), "side 41\n");
      const second = await isb.runCode("x + 1");
      assert.equal(second.text, "42");
      assert.equal(second.results.length, 1);
      assert.equal(second.context, "python");
      const results: string[] = [];
      const failed = await isb.runCode("1 / 0", { onResult: (r) => void results.push(String(r)) });
      assert.equal(failed.error?.name, "ZeroDivisionError");
      assert.deepEqual(results, []);
      const js = await isb.runCode("[1, 2, 3].map((n) => n * 2).join(',')", { language: "javascript" });
      assert.match(js.text ?? "", /2,4,6/);
      const bash = await isb.runCode("echo from-bash; false", { language: "bash" });
      assert.equal(bash.stdout, "from-bash\n");
      assert.equal(bash.exitCode, 1);
      const contexts = (await isb.code.listContexts()).map((c) => c.name).sort();
      assert.ok(contexts.includes("python"), JSON.stringify(contexts));
    } finally {
      await isb.kill();
    }
  });

  test("errors: an unknown sandbox is SandboxNotFound (sandbox_not_found)", async () => {
    const err = await Sandbox.connect("sb-doesnotexist").then(
      () => assert.fail("connect should have failed"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof SandboxNotFound);
    assert.equal(err.code, "sandbox_not_found");
    assert.equal(err.status, 404);
    assert.ok(err.message.length > 0);
  });

  test("errors: a bad token is AuthenticationError", async () => {
    await assert.rejects(Sandbox.list({ token: "atl_wrong" }), AuthenticationError);
    await assert.rejects(Sandbox.connect(sb.id, { token: "atl_wrong" }), (e: unknown) => {
      return e instanceof AuthenticationError && e.code === "unauthenticated" && e.status === 401;
    });
  });

  test("stop, start, pause, resume, then kill", async () => {
    const other = await Sandbox.create({ template: "base", timeout: 300, labels: LABELS });
    try {
      assert.equal((await other.stop()).state, "stopped");
      assert.equal((await other.start()).state, "running");
      try {
        assert.equal((await other.pause()).state, "paused");
        assert.equal((await other.resume()).state, "running");
      } catch (exc) {
        // a runtime without the pause capability answers 400
        if (!(exc instanceof InvalidRequest)) throw exc;
        process.stdout.write(`# pause/resume not checked: ${exc.message}\n`);
      }
      assert.equal((await other.commands.run("echo back")).stdout, "back\n");
    } finally {
      assert.equal(await other.kill(), true);
    }
    assert.equal(other.info.state, "deleted");
    assert.equal(await other.kill(), false);
    await assert.rejects(other.getInfo(), SandboxNotFound);
    await assert.rejects(other.commands.run("true"), SandboxNotFound);
    // the PTY route reports it in an error frame: wait() rejects with the class
    const term = await other.pty.create();
    await assert.rejects(term.wait(), SandboxNotFound);
  });
});
