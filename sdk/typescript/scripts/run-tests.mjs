// Runs the compiled tests (dist-test/*.test.js) with Node's test runner.
//
// sandbox.pty needs the platform WebSocket: Node >= 22 has it; Node 20 only
// with --experimental-websocket, which this adds when (and only when) the
// running Node has no global WebSocket but knows the flag.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const testDir = join(root, "dist-test");
const files = readdirSync(testDir)
  .filter((name) => name.endsWith(".test.js"))
  .sort()
  .map((name) => join(testDir, name));
if (files.length === 0) {
  console.error(`no compiled tests in ${testDir}: run "npm run build:test" first`);
  process.exit(1);
}

const flags = [];
if (typeof globalThis.WebSocket === "undefined") {
  if (process.allowedNodeEnvironmentFlags.has("--experimental-websocket")) {
    flags.push("--experimental-websocket");
  } else {
    console.error(`# Node ${process.versions.node} has no WebSocket: the PTY tests will fail (use Node >= 20.10)`);
  }
}
const reporter = process.env.ATELIER_TEST_REPORTER ?? "spec";
const args = [...flags, "--test", `--test-reporter=${reporter}`, ...process.argv.slice(2), ...files];
console.log(`# node ${process.versions.node}: node ${args.map((a) => a.replace(root + "/", "")).join(" ")}`);
const result = spawnSync(process.execPath, args, { stdio: "inherit", cwd: root });
if (result.error) throw result.error;
process.exit(result.status ?? 1);
