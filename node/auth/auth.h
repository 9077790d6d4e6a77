/* Access control: identities (users, service principals, repository-scoped tokens)
 * kept as replicated metadata, secrets stored only as salted PBKDF2 hashes, basic
 * and bearer (JWT ES256) credentials, grants of actions on repository globs, and
 * a slow-down for addresses that keep failing to log in.
 *
 * Checks are steps like request handlers: with nowait they answer from memory or
 * return ERR_WOULDBLOCK (a secret to hash, identities to reload) to be re-run on
 * the thread pool. */
#ifndef GEOREG_AUTH_H
#define GEOREG_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include "../../common/buf.h"
#include "../../common/err.h"
#include "../../storage/store.h"

typedef struct auth auth;

enum auth_mode { AUTH_NONE = 0, AUTH_BASIC = 1, AUTH_TOKEN = 2 };

/* Actions. push implies pull; admin implies everything. */
#define ACT_PULL 1u
#define ACT_PUSH 2u
#define ACT_DELETE 4u
#define ACT_METADATA 8u /* metadata_read: tags lists, catalog, locate, replication status */
#define ACT_IMPORT 16u
#define ACT_ADMIN 32u
#define ACT_ALL 63u
/* ACT_READ is asked, never granted: pull or metadata_read (tag lists, locate). */
#define ACT_READ 64u
/* ACT_CATALOG is asked, never granted: listing the catalog, which any identity that
 * logged in may do (it sees what it may read); challenges ask for registry:catalog:*. */
#define ACT_CATALOG 128u

#define AUTH_MAX_GRANTS 32

struct auth_grant {
    char glob[256];
    unsigned actions;
};

/* Who a request is, once authenticated. */
struct auth_principal {
    char name[64];
    char kind[8]; /* user | sp | token | anonymous */
    bool anonymous;
    struct auth_grant grants[AUTH_MAX_GRANTS];
    size_t ngrants;
};

struct auth_options {
    enum auth_mode mode;
    const char *service;      /* token audience, e.g. "georeg" */
    const char *realm;        /* token endpoint URL */
    const char *issuer;       /* node name */
    const char *data_dir;     /* where the token signing key lives */
    const char *admin_password_file; /* the built-in admin's password (may be NULL) */
    bool admin_enabled;
    uint64_t token_ttl_s;
    const char *const *anonymous_pull; /* repository globs anyone may pull */
    size_t nanonymous_pull;
};

/* auth_new loads (or creates) the signing key and the admin account. store is
 * borrowed. ERR_CONFIG with a logged reason. */
err auth_new(store *s, const struct auth_options *o, auth **out);
void auth_free(auth *a);
enum auth_mode auth_get_mode(const auth *a);
/* auth_registry_admins counts the identities that can administer the whole registry
 * (an enabled built-in admin, identities with "**" admin that are neither disabled
 * nor expired). */
size_t auth_registry_admins(const auth *a);

/* auth_parse_actions parses "pull,push,delete,metadata_read,import,admin" (or role
 * names) into ACT_* bits; false on an unknown word. */
bool auth_parse_actions(const char *s, unsigned *out);
/* auth_actions_str writes the action names of bits (comma-separated) into out. */
void auth_actions_str(unsigned bits, char *out, size_t n);
/* auth_parse_scope parses "GLOB:ACTIONS" into a grant. */
bool auth_parse_scope(const char *s, struct auth_grant *g);

/* auth_identify authenticates the Authorization header (may be absent: anonymous).
 * ERR_UNAUTHORIZED for wrong, unknown, disabled, revoked or expired credentials,
 * ERR_TOOMANYREQUESTS while peer is being slowed down, ERR_WOULDBLOCK (nowait only)
 * when a secret must be hashed or identities reloaded. *why gets a static reason. */
err auth_identify(auth *a, slice authorization, const char *peer, bool nowait,
                  struct auth_principal *who, const char **why);
/* auth_identify_password checks name and secret exactly as Basic credentials are
 * checked (slow-down of peer, disabled, expired, the hash on this thread: call it
 * off the loop); the token endpoint's password grant. Errors as auth_identify. */
err auth_identify_password(auth *a, const char *name, const char *secret, const char *peer,
                           struct auth_principal *who, const char **why);
/* auth_basic_user copies the user name of a Basic Authorization header into out
 * (never the secret, never verified): the audit log names who a failed login
 * claimed to be. False when the header holds no readable Basic credentials. */
bool auth_basic_user(slice authorization, char *out, size_t n);
/* auth_retry_after: the seconds (at least 1) until peer may try to log in again, or 0
 * when it is not being slowed down. */
uint64_t auth_retry_after(auth *a, const char *peer);
/* auth_allows: who may do all of actions on repo (NULL repo: on any repository). */
bool auth_allows(const auth *a, const struct auth_principal *who, const char *repo,
                 unsigned actions);

/* auth_issue_token signs a JWT for who with the access it has among the requested
 * scopes ("repository:NAME:ACTIONS" or "registry:catalog:*"; scopes and their strings
 * are borrowed); writes the token endpoint's JSON answer into out: token and
 * access_token (the same JWT), expires_in, issued_at, scope (what was granted) and,
 * when refresh_token (borrowed) is not NULL, refresh_token. ERR_DENIED when service
 * names another service, ERR_NOMEM, ERR_INTERNAL (signing). */
err auth_issue_token(auth *a, const struct auth_principal *who, const char *service,
                     const char *const *scopes, size_t nscopes, const char *refresh_token,
                     buf *out);

/* Refresh tokens (the OAuth2 password grant with access_type=offline): random
 * strings this node keeps only as SHA-256 hashes, in memory (a restart forgets them
 * and clients log in again with the password grant), at most AUTH_REFRESH_MAX (a
 * new one evicts the oldest), each valid AUTH_REFRESH_TTL_S, bound to the identity
 * it was issued to (name, creation, secret): deleting, re-creating, replacing
 * (which is how an identity is narrowed), disabling or expiring the identity ends
 * it, and what it yields is cut to the identity's grants of the moment. */
#define AUTH_REFRESH_MAX 4096
#define AUTH_REFRESH_TTL_S (7u * 24 * 3600)
#define AUTH_REFRESH_PREFIX "grr1."
#define AUTH_REFRESH_LEN 64 /* buffer size for one, with its NUL */
/* auth_refresh_new issues a refresh token for who (authenticated just now, not
 * anonymous) into out (n bytes, AUTH_REFRESH_LEN is enough). ERR_INVALID outside
 * token mode or for anonymous, ERR_UNAUTHORIZED when the identity is gone. */
err auth_refresh_new(auth *a, const struct auth_principal *who, char *out, size_t n);
/* auth_refresh_identify: who the refresh token (borrowed) stands for, with the
 * identity's current grants. ERR_UNAUTHORIZED for an unknown, expired, evicted or
 * forged token or one whose identity changed (*why, static, for the audit log),
 * ERR_TOOMANYREQUESTS while peer is slowed down. Reads the store: off the loop. */
err auth_refresh_identify(auth *a, const char *token, const char *peer, struct auth_principal *who,
                          const char **why);
/* auth_challenge writes the WWW-Authenticate value for a request that needs actions
 * on repo (repo NULL: the registry itself); insufficient adds the error hint. */
void auth_challenge(const auth *a, const char *repo, unsigned actions, bool insufficient,
                    char *out, size_t n);

/* ---- identity management (primary; the records replicate) ---- */

struct auth_identity_spec {
    const char *kind;    /* user | sp | token */
    const char *name;
    const char *secret;  /* NULL: generate one (returned in secret_out) */
    const struct auth_grant *grants;
    size_t ngrants;
    uint64_t expires_s;  /* unix time, 0: never */
    const char *created_by;
};

/* auth_put_identity creates or replaces an identity; a generated secret is written
 * into secret_out (n bytes) and never stored in clear. */
err auth_put_identity(auth *a, const struct auth_identity_spec *spec, char *secret_out, size_t n);
/* auth_set_disabled disables (or enables) an identity; revoking a token is disabling it. */
err auth_set_disabled(auth *a, const char *name, bool disabled);
err auth_delete_identity(auth *a, const char *name);
/* auth_list_identities writes a JSON array of identities of kind (NULL: all), without
 * secrets. */
err auth_list_identities(auth *a, const char *kind, buf *out);
/* auth_name_valid: names of identities: [A-Za-z0-9._@-]{1,63}. */
bool auth_name_valid(const char *name);
/* auth_record_valid: v is an identity record for name as auth_put_identity writes it
 * (a kind, a hashed secret, grants with known actions); false with *why (static). */
bool auth_record_valid(const char *name, slice v, const char **why);

#endif
