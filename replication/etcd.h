/* A small etcd v3 client for automatic failover (issue 9 §6): leases, a campaign for a
 * key held under a lease, compare-and-swap refresh and conditional resign. It speaks
 * to etcd's JSON gateway (grpc-gateway, POST /v3/...) over libcurl; every decision
 * is the result of an etcd Txn, never something this client works out by itself.
 *
 * Threads: a client is used by one thread at a time (it owns one curl handle and
 * its buffers); different clients may be used from different threads at once.
 *
 * Outcomes and errors: a call that returns ERR_OK learned etcd's answer, and
 * conditional outcomes (won, swapped, deleted) come back through bool out-params.
 * Any other return means the answer is unknown: a write may or may not have been
 * applied (a timeout after the request went out), so a caller re-reads before it
 * acts. Errors are logged with an event id:
 *   ERR_UNAVAILABLE  ETCD-UNREACHABLE      no endpoint could be connected to, or a
 *                    ETCD-ERROR            connection broke; etcd answered an error
 *   ERR_TIMEOUT      ETCD-TIMEOUT          the call's deadline passed
 *   ERR_PROTOCOL     ETCD-BAD-RESPONSE     not HTTP, not JSON, wrong types, bad
 *                                          base64, a body over ETCD_MAX_BODY
 *   ERR_NOT_FOUND    (not logged)          no such key or lease
 *   ERR_INVALID      ETCD-BAD-ARGUMENT     an argument out of range */
#ifndef GEOREG_ETCD_H
#define GEOREG_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/clock.h"
#include "../common/buf.h"
#include "../common/err.h"

/* etcd_client is one connection pool (a curl handle) to one etcd cluster. */
typedef struct etcd_client etcd_client;

/* ETCD_MAX_ENDPOINTS: at most this many endpoints per client. */
#define ETCD_MAX_ENDPOINTS 16
/* ETCD_MAX_BODY: a response body larger than this is refused (ERR_PROTOCOL) as it
 * arrives, so a holder's value written by someone else is readable up to about
 * 3/4 of it (base64). */
#define ETCD_MAX_BODY ((size_t)1 << 20)
/* ETCD_MAX_KEY, ETCD_MAX_VALUE: the keys and values we send (etcd's own request
 * limit is 1.5 MiB). */
#define ETCD_MAX_KEY 4096
#define ETCD_MAX_VALUE ((size_t)64 << 10)

/* etcd_client_new makes a client for endpoints ("http://127.0.0.1:2379"; https
 * works with the system CA store), copied, so the strings are borrowed only for the
 * call. Each call has one deadline of timeout_ms (1..600000) shared by all its
 * attempts: it starts at the endpoint that answered last and moves to the next only
 * when the request could not be sent (connection refused, unresolvable, connect
 * timeout), so a request is never sent twice. An endpoint that failed after the
 * request went out (silence, "no leader", garbage) fails that call, and the next
 * call starts at the endpoint after it. On success *out is a new client for
 * etcd_client_free; on failure (ERR_INVALID, ERR_NOMEM) *out is NULL. */
err etcd_client_new(const char *const *endpoints, size_t n, uint64_t timeout_ms,
                    etcd_client **out);
/* etcd_client_free frees c and closes its connections; NULL is a no-op. */
void etcd_client_free(etcd_client *c);

/* Lease deadlines are on clock_mono_ms() (common/clock.h): monotonic, and it goes on
 * counting while the machine is suspended, as the etcd members' clocks do. */

/* etcd_lease_grant asks for a lease of ttl_s seconds (1..1000000) (LeaseGrant,
 * /v3/lease/grant). *lease_id gets its id; granted_ttl, when not NULL, the TTL etcd
 * granted (etcd raises a TTL below its minimum); valid_until_ms, when not NULL, the
 * clock_mono_ms() before which etcd cannot expire the lease: the clock read before
 * the request was sent plus the granted TTL (etcd starts the TTL later, when it
 * handles the request). A holder subtracts a margin for clock-rate drift. */
err etcd_lease_grant(etcd_client *c, int64_t ttl_s, int64_t *lease_id, int64_t *granted_ttl,
                     uint64_t *valid_until_ms);
/* etcd_lease_keepalive renews lease_id once (LeaseKeepAlive, /v3/lease/keepalive)
 * and sets *ttl_left to the TTL it now has and, when valid_until_ms is not NULL,
 * *valid_until_ms as etcd_lease_grant does; ERR_NOT_FOUND with both 0 when the
 * lease has lapsed or was revoked. On any other error *ttl_left is 0 and
 * *valid_until_ms is left as it was: the holder's previous deadline stands. */
err etcd_lease_keepalive(etcd_client *c, int64_t lease_id, int64_t *ttl_left,
                         uint64_t *valid_until_ms);
/* etcd_lease_time_to_live reads the remaining TTL of lease_id without renewing it
 * (LeaseTimeToLive, /v3/lease/timetolive); ERR_NOT_FOUND with *ttl_left 0 when gone. */
err etcd_lease_time_to_live(etcd_client *c, int64_t lease_id, int64_t *ttl_left);
/* etcd_lease_revoke revokes lease_id and with it every key attached to it
 * (LeaseRevoke, /v3/lease/revoke); ERR_NOT_FOUND when it was already gone. */
err etcd_lease_revoke(etcd_client *c, int64_t lease_id);

/* etcd_campaign tries to take key: one Txn, if create_revision(key) == 0 then put
 * (key, value, lease_id) else range(key). *won says whether we hold it now. holder,
 * when not NULL, gets the holder's value (ours when we won); mod_revision, when not
 * NULL, the key's mod revision (for etcd_put_if). A key already held under our
 * (nonzero) lease_id with our value counts as won: that is our own put, from a
 * campaign whose answer was lost. lease_id 0 puts the key without a lease;
 * ERR_NOT_FOUND when lease_id is not (or no longer) a lease. Key and value are
 * borrowed; key 1..ETCD_MAX_KEY bytes, value up to ETCD_MAX_VALUE. */
err etcd_campaign(etcd_client *c, slice key, slice value, int64_t lease_id, bool *won,
                  buf *holder, int64_t *mod_revision);

/* etcd_get reads key (Range, linearizable). value (replaced), mod_revision and lease
 * (0 when none) may each be NULL. ERR_NOT_FOUND when the key does not exist. */
err etcd_get(etcd_client *c, slice key, buf *value, int64_t *mod_revision, int64_t *lease);

/* etcd_put_if writes (key, value, lease_id) only if the key's mod revision is still
 * expected_mod_revision (a Txn with a MOD compare); expected 0 means "only if the key
 * does not exist". *swapped says whether it was written; when it was and
 * new_mod_revision is not NULL, *new_mod_revision is the key's new mod revision.
 * ERR_NOT_FOUND when lease_id is not (or no longer) a lease. */
err etcd_put_if(etcd_client *c, slice key, slice value, int64_t lease_id,
                int64_t expected_mod_revision, bool *swapped, int64_t *new_mod_revision);

/* etcd_delete_if_value deletes key only if its value is still value (a Txn with a
 * VALUE compare): a holder resigning does not delete a successor's key. Values
 * should therefore name their holder. *deleted says whether it was deleted. */
err etcd_delete_if_value(etcd_client *c, slice key, slice value, bool *deleted);

#endif
