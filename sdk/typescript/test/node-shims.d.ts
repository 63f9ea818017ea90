// The few Node APIs the tests use, typed here so that `typescript` stays the
// only devDependency (no @types/node).

declare module "node:test" {
  interface TestContext {
    readonly name: string;
    skip(message?: string): void;
    diagnostic(message: string): void;
  }
  interface TestOptions {
    skip?: boolean | string;
    timeout?: number;
    concurrency?: boolean | number;
  }
  type TestFn = (t: TestContext) => void | Promise<void>;
  type SuiteFn = () => void | Promise<void>;
  type HookFn = () => void | Promise<void>;
  export function test(name: string, fn: TestFn): Promise<void>;
  export function test(name: string, options: TestOptions, fn: TestFn): Promise<void>;
  export const it: typeof test;
  export function describe(name: string, fn: SuiteFn): Promise<void>;
  export function describe(name: string, options: TestOptions, fn: SuiteFn): Promise<void>;
  export function before(fn: HookFn, options?: { timeout?: number }): void;
  export function after(fn: HookFn, options?: { timeout?: number }): void;
}

declare module "node:assert/strict" {
  function assert(value: unknown, message?: string): asserts value;
  namespace assert {
    function ok(value: unknown, message?: string): asserts value;
    function equal<T>(actual: unknown, expected: T, message?: string): asserts actual is T;
    function notEqual(actual: unknown, expected: unknown, message?: string): void;
    function deepEqual(actual: unknown, expected: unknown, message?: string): void;
    function match(value: string, regexp: RegExp, message?: string): void;
    function rejects(
      block: Promise<unknown> | (() => Promise<unknown>),
      error?: unknown,
      message?: string,
    ): Promise<void>;
    function throws(block: () => unknown, error?: unknown, message?: string): void;
    function fail(message?: string): never;
  }
  export default assert;
}

declare var process: {
  env: Record<string, string | undefined>;
  versions: { node: string };
  stdout: { write(text: string): boolean };
};
