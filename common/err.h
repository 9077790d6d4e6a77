/* The one error table of georeg: every fallible function returns an `err`,
 * and the table gives each error its message, HTTP status and OCI error code.
 * Foreign errors (errno, libuv, RocksDB, nng, OpenSSL) are translated once,
 * where they enter, into one of these. */
#ifndef GEOREG_ERR_H
#define GEOREG_ERR_H

/* X(name, http status, OCI code or NULL, message) */
#define ERR_TABLE(X)                                                                   \
    X(OK, 200, NULL, "ok")                                                             \
    X(NOMEM, 500, NULL, "out of memory")                                               \
    X(IO, 500, NULL, "storage i/o error")                                              \
    X(INTERNAL, 500, NULL, "internal error")                                           \
    X(WOULDBLOCK, 500, NULL, "operation would block")                                  \
    X(BUSY, 409, "BLOB_UPLOAD_INVALID", "upload is in use by another request")         \
    X(NOT_FOUND, 404, "NOT_FOUND", "not found")                                        \
    X(INVALID, 400, "UNSUPPORTED", "invalid argument")                                 \
    X(EXISTS, 409, NULL, "already exists")                                             \
    X(BLOB_UNKNOWN, 404, "BLOB_UNKNOWN", "blob unknown to registry")                   \
    X(BLOB_UPLOAD_INVALID, 400, "BLOB_UPLOAD_INVALID", "blob upload invalid")          \
    X(BLOB_UPLOAD_UNKNOWN, 404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry") \
    X(DIGEST_INVALID, 400, "DIGEST_INVALID", "provided digest did not match uploaded content") \
    X(MANIFEST_BLOB_UNKNOWN, 400, "MANIFEST_BLOB_UNKNOWN",                             \
      "manifest references a manifest or blob unknown to registry")                    \
    X(MANIFEST_INVALID, 400, "MANIFEST_INVALID", "manifest invalid")                   \
    X(MANIFEST_UNKNOWN, 404, "MANIFEST_UNKNOWN", "manifest unknown to registry")       \
    X(MANIFEST_TOO_LARGE, 413, "SIZE_INVALID", "manifest exceeds the size limit")      \
    X(NAME_INVALID, 400, "NAME_INVALID", "invalid repository name")                    \
    X(NAME_UNKNOWN, 404, "NAME_UNKNOWN", "repository name not known to registry")      \
    X(SIZE_INVALID, 400, "SIZE_INVALID", "provided length did not match content length") \
    X(UNAUTHORIZED, 401, "UNAUTHORIZED", "authentication required")                    \
    X(DENIED, 403, "DENIED", "requested access to the resource is denied")             \
    X(UNSUPPORTED, 405, "UNSUPPORTED", "the operation is unsupported")                 \
    X(TOOMANYREQUESTS, 429, "TOOMANYREQUESTS", "too many requests")                    \
    X(TAG_INVALID, 400, "TAG_INVALID", "invalid tag")                                  \
    X(RANGE_INVALID, 416, "RANGE_INVALID", "invalid content range")                    \
    X(HEADERS_TOO_LARGE, 431, "SIZE_INVALID", "request headers too large")             \
    X(BODY_TOO_LARGE, 413, "SIZE_INVALID", "request body too large")                   \
    X(BAD_REQUEST, 400, "UNSUPPORTED", "malformed request")                            \
    X(ROUTE_UNKNOWN, 404, "UNSUPPORTED", "no such endpoint")                           \
    X(METHOD, 405, "UNSUPPORTED", "method not allowed")                                \
    X(HTTP_VERSION, 505, "UNSUPPORTED", "HTTP version not supported")                  \
    X(UNAVAILABLE, 503, "UNAVAILABLE", "service unavailable")                          \
    X(READ_ONLY, 403, "DENIED", "this node is a read-only replica")                    \
    X(TIMEOUT, 408, "UNAVAILABLE", "timed out")                                        \
    X(EPOCH_STALE, 409, NULL, "message from a stale epoch")                            \
    X(PROTOCOL, 400, NULL, "protocol violation")                                       \
    X(CONFIG, 500, NULL, "invalid configuration")                                     \
    X(INSUFFICIENT_STORAGE, 507, "UNKNOWN",                                            \
      "insufficient storage: the registry's disk is full; writes resume when space returns")

typedef enum {
#define ERR_ENUM_(name, status, code, msg) ERR_##name,
    ERR_TABLE(ERR_ENUM_)
#undef ERR_ENUM_
        ERR__COUNT
} err;

/* err_str returns the static message of e. */
const char *err_str(err e);
/* err_name returns the static enum name of e ("BLOB_UNKNOWN"). */
const char *err_name(err e);
/* err_http_status returns the HTTP status a client gets for e. */
int err_http_status(err e);
/* err_oci_code returns the OCI error code for e, or "UNKNOWN" when it has none. */
const char *err_oci_code(err e);
/* err_from_errno translates an errno value (ENOENT, ENOSPC, ...) into an err. */
err err_from_errno(int e);

#endif
