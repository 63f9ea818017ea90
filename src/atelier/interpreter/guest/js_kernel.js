// Atelier code-interpreter JavaScript kernel: one Node process per context.
//
// Requests come on stdin, one JSON line each: {"code": "...", "timeout_ms": N|null}.
// Events go to the fd named by $ATELIER_EVENTS_FD, one JSON line each:
//   {"type":"ready"} once, then per request stdout/stderr (console.*), result,
//   error {name, value, traceback}, and {"type":"end"}.
// Cells run with vm.runInContext in one persistent context, so var, let,
// const, functions and globals survive between cells; the completion value of
// the cell is its result (a promise is awaited). Synchronous code is stopped
// by vm's own timeout and by SIGINT (breakOnSigint); a pending promise by a
// timer or SIGINT. No npm packages: Node's standard library only.
'use strict';

const fs = require('fs');
const path = require('path');
const util = require('util');
const vm = require('vm');
const { Console } = require('console');
const { Writable } = require('stream');
const { createRequire } = require('module');

const EVENTS_FD = Number(process.env.ATELIER_EVENTS_FD || 3);
delete process.env.ATELIER_EVENTS_FD;

function emit(event) {
  fs.writeSync(EVENTS_FD, JSON.stringify(event) + '\n');
}

function sink(type) {
  return new Writable({
    write(chunk, encoding, callback) {
      emit({ type, data: chunk.toString() });
      callback();
    },
  });
}

const cellConsole = new Console({ stdout: sink('stdout'), stderr: sink('stderr') });
const globals = {
  console: cellConsole,
  require: createRequire(path.join(process.cwd(), '__atelier_cell__.js')),
  process,
  Buffer,
  URL,
  URLSearchParams,
  TextEncoder,
  TextDecoder,
  setTimeout,
  clearTimeout,
  setInterval,
  clearInterval,
  setImmediate,
  clearImmediate,
  queueMicrotask,
  __dirname: process.cwd(),
  __filename: path.join(process.cwd(), '__atelier_cell__.js'),
  module: { exports: {} },
};
for (const name of ['fetch', 'structuredClone', 'AbortController', 'AbortSignal', 'Blob',
  'performance', 'crypto', 'atob', 'btoa', 'EventTarget', 'Event']) {
  if (globalThis[name] !== undefined) globals[name] = globalThis[name];
}
const context = vm.createContext(globals);
vm.runInContext('globalThis.global = globalThis;', context);

// the stack without the frames of this kernel and of node:vm (the user's frames come first)
function userStack(stack) {
  const lines = stack.split('\n');
  const cut = lines.findIndex((line) => /^\s+at /.test(line) &&
    (line.includes('node:vm') || line.includes(__filename) || line.includes('node:internal')));
  return (cut >= 0 ? lines.slice(0, cut) : lines).join('\n');
}

function describeError(err) {
  if (err !== null && typeof err === 'object' && typeof err.stack === 'string') {
    return {
      type: 'error',
      name: String(err.name || 'Error'),
      value: String(err.message === undefined ? '' : err.message),
      traceback: userStack(err.stack),
    };
  }
  return { type: 'error', name: 'Error', value: util.inspect(err), traceback: '' };
}

function timeoutError(ms) {
  return {
    type: 'error',
    name: 'TimeoutError',
    value: `execution exceeded ${ms / 1000} s and was interrupted (the kernel keeps its state)`,
    traceback: '',
  };
}

function isPlainData(value) {
  if (Array.isArray(value)) return true;
  if (value === null || typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value);
  return proto === null || Object.getPrototypeOf(proto) === null; // any realm's Object.prototype
}

function resultOf(value) {
  const data = { 'text/plain': util.inspect(value, { depth: 4, colors: false }) };
  if (isPlainData(value)) {
    try {
      const json = JSON.parse(JSON.stringify(value));
      if (json !== undefined) data['application/json'] = json;
    } catch (e) {
      // not JSON-able (cycles, BigInt): text only
    }
  }
  return { type: 'result', data, is_main_result: true };
}

let cancelPending = null;
process.on('SIGINT', () => {
  if (cancelPending) cancelPending(new Error('interrupted'));
});
process.on('uncaughtException', (err) => {
  emit({ type: 'stderr', data: `Uncaught ${err && err.stack ? err.stack : util.inspect(err)}\n` });
});
process.on('unhandledRejection', (err) => {
  emit({ type: 'stderr', data: `Unhandled rejection ${err && err.stack ? err.stack : util.inspect(err)}\n` });
});

async function runCell(request) {
  const ms = request.timeout_ms;
  const options = { filename: 'cell', breakOnSigint: true, displayErrors: false };
  if (ms) options.timeout = ms;
  const started = Date.now();
  let value;
  try {
    value = vm.runInContext(request.code, context, options);
  } catch (err) {
    if (err && err.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT') return emit(timeoutError(ms));
    return emit(describeError(err));
  }
  if (value !== null && typeof value === 'object' && typeof value.then === 'function') {
    const left = ms ? Math.max(ms - (Date.now() - started), 1) : null;
    let timer = null;
    try {
      value = await new Promise((resolve, reject) => {
        cancelPending = reject;
        if (left) timer = setTimeout(() => reject(Object.assign(new Error('timeout'), { atelierTimeout: true })), left);
        value.then(resolve, reject);
      });
    } catch (err) {
      if (err && err.atelierTimeout) return emit(timeoutError(ms));
      return emit(describeError(err));
    } finally {
      cancelPending = null;
      if (timer) clearTimeout(timer);
    }
  }
  if (value !== undefined) emit(resultOf(value));
}

let queue = Promise.resolve();
let buffer = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffer += chunk;
  let at;
  while ((at = buffer.indexOf('\n')) >= 0) {
    const line = buffer.slice(0, at);
    buffer = buffer.slice(at + 1);
    if (!line.trim()) continue;
    queue = queue.then(async () => {
      try {
        await runCell(JSON.parse(line));
      } catch (err) {
        emit(describeError(err));
      }
      emit({ type: 'end' });
    });
  }
});
process.stdin.on('end', () => process.exit(0));
emit({ type: 'ready', node: process.version });
