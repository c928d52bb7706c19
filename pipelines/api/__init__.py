"""The HTTP API of `qarina serve`: intake by path or by upload, an item's results, status, and
the operators' switches (requeue, pause, resume, request priority), search and duplicates.

It is meant for the intake system and for tools on the same host: `serve` binds it to
127.0.0.1 unless an operator says otherwise. The served OpenAPI (`/openapi.json`) is the
reference; the rules it cannot say:

- **Tokens.** Every request, `/openapi.json` included, needs `Authorization: Bearer <token>`
  (401 otherwise, before a byte of the body is read; the review pages take a browser
  session instead, see below), from a tokens file of `name token` lines (blank lines and
  `#` comments ignored) that only its owner may read or write: a file group or others can
  open, owned by another user, holding no token, or holding a token under 32 characters
  stops the service at start. A presented token is compared with every known one in
  constant time (`token_owner`), so the answer's timing tells nothing of how close a guess
  was. The token's name stands where the OS user stands on the command line: custody
  actors are `qarina-<tool>@api:<name>` and the acquisition's operator is `api:<name>`.
  Tokens are never logged.
- **Paths.** A path registered by `POST /v1/items/register` must lie inside an allowed root as
  spelled (the root as given or as resolved). It is followed down from the root by open
  folder descriptors, so a symlink anywhere below the root is refused (403), as is a `..`
  above it, even one swapped in after the check; a folder is then walked the same way.
- **Uploads.** `POST /v1/items/upload` takes the raw bytes as the request body, streamed to
  the blob store's temporary area and hashed as they arrive (never held in memory), stopped
  with 413 as soon as they pass the size cap. The original name is evidence and may be in any
  encoding: it travels percent-encoded (RFC 3986) in `X-Original-Name`, and the decoded
  bytes are what is kept. `Idempotency-Key` makes a retried upload register once: the
  same key (per token) with the same bytes answers with the first registration
  (`replayed: true`), with other bytes 409.
- **Bodies.** Any other request's body is refused with 413 past 1 MiB (at once when its
  `Content-Length` says so, else as soon as the bytes pass it): the largest valid one, a
  registration, is under 64 KiB, and 1 MiB is all one request can make the service hold.
- **Review pages.** `/ui` serves the review pages (`pipelines.api.ui`; no operation of the
  OpenAPI). A browser cannot send a bearer token: it signs in at `/ui/login` with a token of
  the same file and gets a session cookie (HttpOnly, SameSite=Strict, Path=/ui; Secure
  except over plain HTTP to loopback) that lasts 12 hours or until `POST /ui/logout`, and is
  known to this process only (a restart signs every browser out). The gate takes that cookie
  under `/ui` alone, so it never opens `/v1`; under `/ui`, a request with neither a token nor
  a session is sent to the sign-in form (303) instead of answered 401.
- **Logs.** Nothing here logs a file name, a path, a query or a token; an unexpected error is
  logged by its type alone, since an exception's message can hold a path.
"""

from pipelines.api.app import create_app
from pipelines.api.auth import TokensFileError
from pipelines.api.context import ApiSettings

#: What `qarina serve` needs to run the API; the rest is imported from its own module.
__all__ = ["ApiSettings", "TokensFileError", "create_app"]
