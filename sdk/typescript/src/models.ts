/**
 * Typed, camelCase views of the JSON objects of the REST API (`docs/api.md`).
 * Timestamps become `Date` objects (or `null`).
 */

type Json = Record<string, unknown>;

export type SandboxState =
  | "creating"
  | "starting"
  | "running"
  | "paused"
  | "stopping"
  | "stopped"
  | "error"
  | "deleted";

export function parseDate(value: unknown): Date | null {
  if (value === null || value === undefined || value === "") return null;
  const date = new Date(String(value));
  return Number.isNaN(date.getTime()) ? null : date;
}

function str(value: unknown, fallback = ""): string {
  return value === null || value === undefined ? fallback : String(value);
}

function optStr(value: unknown): string | null {
  return value === null || value === undefined ? null : String(value);
}

function optInt(value: unknown): number | null {
  return value === null || value === undefined ? null : Number(value);
}

function strDict(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof value === "object" && value !== null) {
    for (const [k, v] of Object.entries(value)) out[k] = String(v);
  }
  return out;
}

function obj(value: unknown): Json {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Json) : {};
}

/** What a workspace was made from and how its setup went. */
export interface WorkspaceInfo {
  repo: string;
  folder: string;
  /** `setting_up`, `ready_pending`, `ready` or `failed`. */
  status: string;
  ref: string | null;
  commit: string | null;
  branch: string | null;
  devcontainer: string | null;
  user: string | null;
  waitFor: string | null;
  lifecycle: Json[];
  warnings: string[];
  forwardPorts: string[];
}

export function workspaceInfo(data: Json): WorkspaceInfo {
  return {
    repo: str(data["repo"]),
    folder: str(data["folder"]),
    status: str(data["status"]),
    ref: optStr(data["ref"]),
    commit: optStr(data["commit"]),
    branch: optStr(data["branch"]),
    devcontainer: optStr(data["devcontainer"]),
    user: optStr(data["user"]),
    waitFor: optStr(data["wait_for"]),
    lifecycle: Array.isArray(data["lifecycle"]) ? data["lifecycle"].map(obj) : [],
    warnings: Array.isArray(data["warnings"]) ? data["warnings"].map(String) : [],
    forwardPorts: Array.isArray(data["forward_ports"]) ? data["forward_ports"].map(String) : [],
  };
}

/** A sandbox as the server describes it. */
export interface SandboxInfo {
  id: string;
  template: string;
  runtime: string;
  state: SandboxState | string;
  vcpus: number;
  memoryMib: number;
  diskMib: number;
  env: Record<string, string>;
  labels: Record<string, string>;
  /** Seconds until the sandbox is stopped automatically (`null`: never). */
  timeout: number | null;
  expiresAt: Date | null;
  createdAt: Date | null;
  startedAt: Date | null;
  error: string | null;
  /** Runtime specifics, e.g. `{accel: "tcg"}`. */
  runtimeInfo: Json;
  /** Set for sandboxes made from a repository. */
  workspace: WorkspaceInfo | null;
}

export function sandboxInfo(data: Json): SandboxInfo {
  return {
    id: str(data["id"]),
    template: str(data["template"]),
    runtime: str(data["runtime"]),
    state: str(data["state"]),
    vcpus: Number(data["vcpus"] ?? 0),
    memoryMib: Number(data["memory_mib"] ?? 0),
    diskMib: Number(data["disk_mib"] ?? 0),
    env: strDict(data["env"]),
    labels: strDict(data["labels"]),
    timeout: optInt(data["timeout"]),
    expiresAt: parseDate(data["expires_at"]),
    createdAt: parseDate(data["created_at"]),
    startedAt: parseDate(data["started_at"]),
    error: optStr(data["error"]),
    runtimeInfo: obj(data["runtime_info"]),
    workspace: data["workspace"] ? workspaceInfo(obj(data["workspace"])) : null,
  };
}

/** A process started through the commands API. */
export interface ProcessInfo {
  pid: number;
  cmd: string | null;
  argv: string[] | null;
  tag: string | null;
  user: string | null;
  cwd: string | null;
  background: boolean;
  running: boolean;
  exitCode: number | null;
  startedAt: Date | null;
}

export function processInfo(data: Json): ProcessInfo {
  const argv = data["argv"];
  return {
    pid: Number(data["pid"]),
    cmd: optStr(data["cmd"]),
    argv: Array.isArray(argv) ? argv.map(String) : null,
    tag: optStr(data["tag"]),
    user: optStr(data["user"]),
    cwd: optStr(data["cwd"]),
    background: Boolean(data["background"]),
    running: Boolean(data["running"]),
    exitCode: optInt(data["exit_code"]),
    startedAt: parseDate(data["started_at"]),
  };
}

/**
 * The outcome of a finished command. A nonzero `exitCode` does not throw:
 * check `result.ok` or `result.exitCode` yourself.
 */
export interface CommandResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  signal: string | number | null;
  timedOut: boolean;
  pid: number | null;
  /** `true` when the command exited with status 0. */
  ok: boolean;
}

/** One event of a command's NDJSON stream. */
export type CommandEvent =
  | { type: "started"; pid: number }
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | { type: "exit"; exitCode: number; signal: string | number | null; timedOut: boolean };

export type FileType = "file" | "dir" | "symlink" | "other";

/** A file, directory or symlink inside a sandbox. */
export interface FileInfo {
  name: string;
  path: string;
  type: FileType | string;
  size: number;
  /** Octal, e.g. `"0644"`. */
  mode: string;
  owner: string | null;
  group: string | null;
  modifiedAt: Date | null;
  symlinkTarget: string | null;
  isDir: boolean;
  isFile: boolean;
}

export function fileInfo(data: Json): FileInfo {
  const type = str(data["type"], "other");
  return {
    name: str(data["name"]),
    path: str(data["path"]),
    type,
    size: Number(data["size"] ?? 0),
    mode: str(data["mode"]),
    owner: optStr(data["owner"]),
    group: optStr(data["group"]),
    modifiedAt: parseDate(data["modified_at"]),
    symlinkTarget: optStr(data["symlink_target"]),
    isDir: type === "dir",
    isFile: type === "file",
  };
}

/** A change seen by `files.watch`. */
export interface FileEvent {
  type: "create" | "modify" | "delete" | "rename" | string;
  path: string;
  isDir: boolean;
}

export function fileEvent(data: Json): FileEvent {
  return { type: str(data["type"]), path: str(data["path"]), isDir: Boolean(data["is_dir"]) };
}

/** Credentials for one clone (a workspace); the server never stores them. */
export interface GitAuth {
  token?: string;
  username?: string;
  sshPrivateKey?: string;
  sshKnownHosts?: string;
}

export function gitAuthJson(auth: GitAuth): Json {
  const out: Json = {};
  if (auth.token !== undefined) out["token"] = auth.token;
  if (auth.username !== undefined) out["username"] = auth.username;
  if (auth.sshPrivateKey !== undefined) out["ssh_private_key"] = auth.sshPrivateKey;
  if (auth.sshKnownHosts !== undefined) out["ssh_known_hosts"] = auth.sshKnownHosts;
  return out;
}
