/**
 * The Atelier TypeScript SDK: sandboxes, commands, files, terminals and the
 * code interpreter over Atelier's REST + NDJSON + WebSocket API.
 * No runtime dependencies: it uses the platform's `fetch` and `WebSocket`.
 */

export { Sandbox, WORKSPACE_REQUEST_TIMEOUT } from "./sandbox.js";
export type { NetworkPolicy, SandboxCreateOptions, SandboxListOptions } from "./sandbox.js";
export { CommandHandle, Commands } from "./commands.js";
export type {
  BackgroundOptions,
  CommandSpec,
  ForegroundOptions,
  OutputHandler,
  RunOptions,
  WaitOptions,
} from "./commands.js";
export { FileWatch, Files, formatMode } from "./files.js";
export type { FileMode, ReadOptions, WriteData, WriteOptions } from "./files.js";
export { PTY_CONNECT_TIMEOUT, Pty, PtySession } from "./pty.js";
export type { PtyCreateOptions } from "./pty.js";
export { CodeInterpreter, DEFAULT_CODE_TIMEOUT, Execution, Result } from "./code.js";
export type { CodeContext, ExecutionError, Language, Logs, RunCodeOptions } from "./code.js";
export { ConnectionConfig, DEFAULT_API_URL, DEFAULT_REQUEST_TIMEOUT, USER_AGENT } from "./http.js";
export type { ConnectionOptions } from "./http.js";
export type {
  CommandEvent,
  CommandResult,
  FileEvent,
  FileInfo,
  FileType,
  GitAuth,
  ProcessInfo,
  SandboxInfo,
  SandboxState,
  WorkspaceInfo,
} from "./models.js";
export * from "./errors.js";
