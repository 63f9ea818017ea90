/**
 * The error hierarchy of Atelier, mirroring `src/atelier/errors.py`.
 *
 * Every error the SDK throws on purpose is an {@link AtelierError} with a
 * stable machine-readable `code` (what to switch on), a human `message`, the
 * HTTP `status` and optional structured `details`. The server's JSON error
 * body `{"code", "message", "details"}` is turned back into the matching
 * subclass, so `err instanceof SandboxNotFound` and
 * `err.code === "sandbox_not_found"` both work.
 *
 * ```
 * AtelierError (500 internal)
 * ├── InvalidRequest (400 invalid_request): InvalidPath, IsADirectory, NotADirectory
 * ├── AuthenticationError (401 unauthenticated)
 * ├── PermissionDenied (403 forbidden): FilePermissionDenied, GitAuthenticationFailed
 * ├── NotFound (404 not_found): SandboxNotFound, TemplateNotFound, ProcessNotFound,
 * │     FileNotFound, TokenNotFound, OperationNotFound, SecretNotFound,
 * │     GitRepositoryNotFound, GitRefNotFound
 * ├── Conflict (409 conflict): InvalidStateTransition, FileExists, DirectoryNotEmpty, TemplateInUse
 * ├── ValidationFailed (422 validation_error): InvalidDockerfile, BuildFailed,
 * │     GitCommandFailed, WorkspaceSetupFailed
 * ├── RateLimited (429 rate_limited)
 * ├── SandboxFailure (500 sandbox_error): RuntimeFailure, AgentFailure
 * ├── UpstreamFailure (502 upstream_error): GitUnreachable, PortUnreachable
 * └── ServiceUnavailable (503 unavailable): RuntimeUnavailable, ApiConnectionError
 * ```
 */

export type ErrorDetails = Record<string, unknown>;

export interface AtelierErrorOptions {
  details?: ErrorDetails | null | undefined;
  /** The HTTP status of the answer; defaults to the class's status. */
  status?: number | undefined;
  cause?: unknown;
}

/** Root of every error Atelier raises on purpose. */
export class AtelierError extends Error {
  static readonly status: number = 500;
  static readonly code: string = "internal";

  /** The stable error code (`sandbox_not_found`, `invalid_state`, ...). */
  readonly code: string;
  /** The HTTP status (of the answer, when there was one). */
  readonly status: number;
  readonly details: ErrorDetails;

  constructor(message: string, options: AtelierErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const cls = new.target as typeof AtelierError;
    this.name = cls.name;
    this.code = cls.code;
    this.status = options.status ?? cls.status;
    this.details = options.details ?? {};
  }

  /** The error as the API would send it. */
  toJSON(): { code: string; message: string; details?: ErrorDetails } {
    const body: { code: string; message: string; details?: ErrorDetails } = {
      code: this.code,
      message: this.message,
    };
    if (Object.keys(this.details).length > 0) body.details = this.details;
    return body;
  }
}

export class InvalidRequest extends AtelierError {
  static override readonly status: number = 400;
  static override readonly code: string = "invalid_request";
}
export class InvalidPath extends InvalidRequest {
  static override readonly code: string = "invalid_path";
}
export class IsADirectory extends InvalidRequest {
  static override readonly code: string = "is_a_directory";
}
export class NotADirectory extends InvalidRequest {
  static override readonly code: string = "not_a_directory";
}

export class AuthenticationError extends AtelierError {
  static override readonly status: number = 401;
  static override readonly code: string = "unauthenticated";
}

export class PermissionDenied extends AtelierError {
  static override readonly status: number = 403;
  static override readonly code: string = "forbidden";
}
export class FilePermissionDenied extends PermissionDenied {
  static override readonly code: string = "permission_denied";
}
export class GitAuthenticationFailed extends PermissionDenied {
  static override readonly code: string = "git_auth_failed";
}

export class NotFound extends AtelierError {
  static override readonly status: number = 404;
  static override readonly code: string = "not_found";
}
export class SandboxNotFound extends NotFound {
  static override readonly code: string = "sandbox_not_found";
}
export class TemplateNotFound extends NotFound {
  static override readonly code: string = "template_not_found";
}
export class ProcessNotFound extends NotFound {
  static override readonly code: string = "process_not_found";
}
export class FileNotFound extends NotFound {
  static override readonly code: string = "file_not_found";
}
export class TokenNotFound extends NotFound {
  static override readonly code: string = "token_not_found";
}
export class OperationNotFound extends NotFound {
  static override readonly code: string = "operation_not_found";
}
export class SecretNotFound extends NotFound {
  static override readonly code: string = "secret_not_found";
}
export class GitRepositoryNotFound extends NotFound {
  static override readonly code: string = "git_repo_not_found";
}
export class GitRefNotFound extends NotFound {
  static override readonly code: string = "git_ref_not_found";
}

export class Conflict extends AtelierError {
  static override readonly status: number = 409;
  static override readonly code: string = "conflict";
}
export class InvalidStateTransition extends Conflict {
  static override readonly code: string = "invalid_state";
}
export class FileExists extends Conflict {
  static override readonly code: string = "file_exists";
}
export class DirectoryNotEmpty extends Conflict {
  static override readonly code: string = "directory_not_empty";
}
export class TemplateInUse extends Conflict {
  static override readonly code: string = "template_in_use";
}

export class ValidationFailed extends AtelierError {
  static override readonly status: number = 422;
  static override readonly code: string = "validation_error";
}
export class InvalidDockerfile extends ValidationFailed {
  static override readonly code: string = "invalid_dockerfile";
}
export class BuildFailed extends ValidationFailed {
  static override readonly code: string = "build_failed";
}
export class GitCommandFailed extends ValidationFailed {
  static override readonly code: string = "git_command_failed";
}
export class WorkspaceSetupFailed extends ValidationFailed {
  static override readonly code: string = "workspace_setup_failed";
}

export class RateLimited extends AtelierError {
  static override readonly status: number = 429;
  static override readonly code: string = "rate_limited";
}

export class SandboxFailure extends AtelierError {
  static override readonly status: number = 500;
  static override readonly code: string = "sandbox_error";
}
export class RuntimeFailure extends SandboxFailure {
  static override readonly code: string = "runtime_error";
}
export class AgentFailure extends SandboxFailure {
  static override readonly code: string = "agent_error";
}

export class UpstreamFailure extends AtelierError {
  static override readonly status: number = 502;
  static override readonly code: string = "upstream_error";
}
export class GitUnreachable extends UpstreamFailure {
  static override readonly code: string = "git_unreachable";
}
/** Nothing accepts connections on that port inside the sandbox. */
export class PortUnreachable extends UpstreamFailure {
  static override readonly code: string = "connection_refused";
}

export class ServiceUnavailable extends AtelierError {
  static override readonly status: number = 503;
  static override readonly code: string = "unavailable";
}
export class RuntimeUnavailable extends ServiceUnavailable {
  static override readonly code: string = "runtime_unavailable";
}
/** The SDK could not reach the server (refused, reset, DNS, timed out). */
export class ApiConnectionError extends ServiceUnavailable {
  static override readonly code: string = "connection_error";
}

export type AtelierErrorClass = typeof AtelierError;

const ALL: AtelierErrorClass[] = [
  AtelierError,
  InvalidRequest,
  InvalidPath,
  IsADirectory,
  NotADirectory,
  AuthenticationError,
  PermissionDenied,
  FilePermissionDenied,
  GitAuthenticationFailed,
  NotFound,
  SandboxNotFound,
  TemplateNotFound,
  ProcessNotFound,
  FileNotFound,
  TokenNotFound,
  OperationNotFound,
  SecretNotFound,
  GitRepositoryNotFound,
  GitRefNotFound,
  Conflict,
  InvalidStateTransition,
  FileExists,
  DirectoryNotEmpty,
  TemplateInUse,
  ValidationFailed,
  InvalidDockerfile,
  BuildFailed,
  GitCommandFailed,
  WorkspaceSetupFailed,
  RateLimited,
  SandboxFailure,
  RuntimeFailure,
  AgentFailure,
  UpstreamFailure,
  GitUnreachable,
  PortUnreachable,
  ServiceUnavailable,
  RuntimeUnavailable,
  ApiConnectionError,
];

const BY_CODE = new Map<string, AtelierErrorClass>(ALL.map((cls) => [cls.code, cls]));
const BY_STATUS = new Map<number, AtelierErrorClass>([
  [400, InvalidRequest],
  [401, AuthenticationError],
  [403, PermissionDenied],
  [404, NotFound],
  [409, Conflict],
  [422, ValidationFailed],
  [429, RateLimited],
  [503, ServiceUnavailable],
]);

/** The class for a wire `code`; falls back on the HTTP status, then {@link AtelierError}. */
export function errorClassFor(code: string, status?: number): AtelierErrorClass {
  const byCode = BY_CODE.get(code);
  if (byCode !== undefined) return byCode;
  if (status !== undefined) {
    const byStatus = BY_STATUS.get(status);
    if (byStatus !== undefined) return byStatus;
  }
  return AtelierError;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Rebuild an error from an API error body `{"code", "message", "details"}`. */
export function errorFromPayload(payload: Record<string, unknown>, status?: number): AtelierError {
  const code = String(payload["code"] ?? "internal");
  const cls = errorClassFor(code, status);
  const details = isRecord(payload["details"]) ? payload["details"] : null;
  return new cls(String(payload["message"] ?? code), { details, status });
}

/** Map an HTTP error answer (status + body text) to the matching {@link AtelierError}. */
export function errorFromResponse(status: number, body: string, statusText = ""): AtelierError {
  let payload: unknown = null;
  try {
    payload = body ? JSON.parse(body) : null;
  } catch {
    payload = null;
  }
  if (isRecord(payload) && "code" in payload) return errorFromPayload(payload, status);
  let message: string;
  if (isRecord(payload) && "detail" in payload) message = String(payload["detail"]);
  else message = body.trim() || statusText || "request failed";
  const cls = errorClassFor("", status);
  return new cls(`HTTP ${status}: ${message}`, { details: { status }, status });
}
