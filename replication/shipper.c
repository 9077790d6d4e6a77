/* The primary's shipper: one thread per secondary. It learns where the replica is
 * (handshake), resyncs it from a snapshot when the log no longer reaches back to
 * it, then streams the log: events in order, each blob's bytes (unless the replica
 * already has them) in chunks before the event that links it, with up to `window`
 * messages in flight. Any error, gap or reconnect sends it back to the handshake,
 * which restarts from what the replica has durably applied: nothing is lost and
 * nothing is applied twice. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/clock.h"
#include "repl_int.h"
#include "../common/log.h"
#include "../common/banned.h"

#define BATCH_MAX_EVENTS 256
#define BATCH_MAX_BYTES (2u << 20)
#define QUERY_TIMEOUT_MS 10000
#define HANDSHAKE_TIMEOUT_MS 3000

struct ship {
    struct replica *rp;
    repl *r;
    uint64_t gen;
    bool go_back;     /* the replica reported an error: restart from its applied seq */
    bool resync_asked;
    uint64_t last_hb_ms;
    uint64_t last_persist_ms;
    uint64_t persisted_acked;

    /* pending HaveReply */
    uint64_t want_query;
    bool have_reply, have_present;

    /* the batch being built */
    Georeg__Repl__Event *events[BATCH_MAX_EVENTS];
    size_t nevents;
    size_t batch_bytes;
    uint64_t batch_last_seq;

    /* peer proof: the nonce the replica sent */
    unsigned char nonce[64];
    size_t nonce_len;
    bool have_nonce;

    /* resync */
    bool resync;
    bool diverged;      /* the next resync is for a replica on another branch */
    bool trust_acks;    /* the fork point is known: applied seqs in acks are ours */
    uint64_t proof_msg_id; /* our latest PeerProof */
    uint64_t followed_epoch; /* the replica answered our proof: it follows us at it */
    const struct filter *filter_seen; /* the filter this connection started with */
    uint64_t fork_seq;
    uint64_t snapshot_seq;
    err fail;
};

static const char *const state_log_names[] = {"unreachable", "connecting",  "in-sync",
                                              "streaming",   "catching-up", "resyncing"};

static void
set_state(struct replica *rp, enum replica_state st)
{
    pthread_mutex_lock(&rp->mu);
    if (rp->state != st && (st == RS_UNREACHABLE || rp->state == RS_UNREACHABLE))
        log_info("REPL-REPLICA-STATE", "replica=%s state=%s", rp->name, state_log_names[st]);
    if (st == RS_IN_SYNC)
        rp->last_error[0] = '\0'; /* caught up: whatever went wrong is over */
    rp->state = st;
    pthread_mutex_unlock(&rp->mu);
}

/* Some nng 1.5 transports (tls+tcp) can leave a dialer that saw its connection refused
 * at the wrong moment never redialing; if no pipe comes back for this long, the
 * dialer is replaced. */
#define REDIAL_AFTER_MS 5000

static void
watch_dialer(struct replica *rp)
{
    uint64_t now = clock_wall_ms();
    if (!rp->down_since_ms) {
        rp->down_since_ms = now;
        return;
    }
    if (now - rp->down_since_ms < REDIAL_AFTER_MS)
        return;
    log_info("REPL-REDIAL", "replica=%s address=%s down_ms=%llu", rp->name, rp->address,
             (unsigned long long)(now - rp->down_since_ms));
    nng_dialer_close(rp->dialer);
    if (repl_start_dialer(rp->r, rp) != ERR_OK)
        log_warn("REPL-REDIAL-FAILED", "replica=%s", rp->name);
    rp->down_since_ms = now;
}

static void
set_error(struct replica *rp, const char *msg)
{
    pthread_mutex_lock(&rp->mu);
    str_copy(rp->last_error, sizeof rp->last_error, msg);
    pthread_mutex_unlock(&rp->mu);
}

static uint64_t
contact_timeout_ms(repl *r)
{
    uint64_t t = r->heartbeat_ms * 4;
    return t < 4000 ? 4000 : t;
}

static bool
broken(struct ship *sh)
{
    struct replica *rp = sh->rp;
    if (atomic_load(&sh->r->stopping) || atomic_load(&sh->r->demoted) || !sh->r->primary ||
        sh->go_back || sh->fail)
        return true;
    /* a reload removed the region, moved it, or changed its filter: start over */
    if (!atomic_load(&rp->active) || atomic_load(&rp->redial) ||
        rp_filter(rp) != sh->filter_seen)
        return true;
    if (atomic_load(&rp->pipe_gen) != sh->gen || atomic_load(&rp->pipe_id) == 0)
        return true;
    pthread_mutex_lock(&rp->mu);
    uint64_t last = rp->last_contact_ms;
    pthread_mutex_unlock(&rp->mu);
    if (last && clock_wall_ms() - last > contact_timeout_ms(sh->r)) {
        /* silent peer (a partition that swallows packets): drop the pipe to redial */
        uint32_t id = atomic_load(&rp->pipe_id);
        if (id) {
            nng_pipe p = NNG_PIPE_INITIALIZER;
            p.id = id;
            nng_pipe_close(p);
        }
        set_error(rp, "no answer from replica");
        return true;
    }
    return false;
}

static void
account_sent(struct replica *rp, size_t bytes)
{
    uint64_t now = clock_wall_ms();
    pthread_mutex_lock(&rp->mu);
    rp->bytes_sent += bytes;
    if (!rp->tp_last_ms) {
        rp->tp_last_ms = now;
        rp->tp_last_bytes = rp->bytes_sent;
    } else if (now - rp->tp_last_ms >= 1000) {
        double inst = (double)(rp->bytes_sent - rp->tp_last_bytes) * 1000.0 /
                      (double)(now - rp->tp_last_ms);
        rp->throughput_bps = rp->throughput_bps * 0.5 + inst * 0.5;
        rp->tp_last_ms = now;
        rp->tp_last_bytes = rp->bytes_sent;
    }
    pthread_mutex_unlock(&rp->mu);
}

static err
send_env_payload(struct ship *sh, envelope *env, size_t plen,
                 err (*fill)(void *arg, char *dst, size_t n), void *arg)
{
    struct replica *rp = sh->rp;
    uint64_t id = ++rp->next_msg_id;
    size_t n = georeg__repl__envelope__get_packed_size(env);
    err e = wire_send_payload(sh->r, rp->sock, env, id, plen, fill, arg);
    if (e) {
        sh->fail = e;
        return e;
    }
    account_sent(rp, n + plen);
    return ERR_OK;
}

static err
send_env(struct ship *sh, envelope *env)
{
    return send_env_payload(sh, env, 0, NULL, NULL);
}

/* ---- receiving acks and replies ---- */

/* on_history: the replica answered with its history: keep it for the fork point, and
 * learn from it; a verified promotion newer than ours means we were replaced. */
static void
on_history(struct ship *sh, const envelope *env)
{
    struct replica *rp = sh->rp;
    repl *r = sh->r;
    Georeg__Repl__Ack *a = env->ack;
    struct history *th = &rp->their_hist;
    th->n = 0;
    th->base_epoch = 1;
    for (size_t i = 0; i < a->n_history && i < REPL_MAX_HISTORY; i++)
        if (hist_rec_from_pb(a->history[i], &th->rec[th->n]) == ERR_OK)
            th->n++;
    sh->rp->have_their_hist = true;
    pthread_mutex_lock(&rp->mu);
    rp->their_epoch = env->epoch;
    pthread_mutex_unlock(&rp->mu);
    const char *why = "";
    /* learn whatever it knows (also at our own epoch: a probe may have taught us the
     * epoch before this answer) and step down when our epoch belongs to another */
    if (repl_learn(r, a->history, a->n_history, rp->name, &why) >= 0)
        repl_learn(r, a->known, a->n_known, rp->name, &why);
    if (r->primary) {
        bool known = false;
        if (!repl_writer_is(r, atomic_load(&r->epoch), r->node_name, &known) && known) {
            char d[160];
            snprintf(d, sizeof d, "%.60s knows a promotion to epoch %llu", rp->name,
                     (unsigned long long)atomic_load(&r->epoch));
            repl_demote(r, d);
        }
    }
}

static void
on_ack(struct ship *sh, const envelope *env)
{
    struct replica *rp = sh->rp;
    Georeg__Repl__Ack *a = env->ack;
    if (a->n_history || (sh->proof_msg_id && a->acked_msg_id == sh->proof_msg_id))
        on_history(sh, env); /* the answer to our proof carries its history, maybe empty */
    /* it follows us at our epoch: a vote, counted once the fork point shows that its
     * log is not ahead of ours (shipper_main) */
    if (a->followed && env->epoch == atomic_load(&sh->r->epoch))
        sh->followed_epoch = env->epoch;
    pthread_mutex_lock(&rp->mu);
    if (a->acked_msg_id > rp->acked_msg_id)
        rp->acked_msg_id = a->acked_msg_id;
    rp->last_applied_reported = a->applied_seq;
    /* an answer before the fork point is known says where its log is, not what it
     * holds of ours */
    if (sh->trust_acks && !sh->resync && a->applied_seq > rp->acked_seq)
        rp->acked_seq = a->applied_seq;
    pthread_mutex_unlock(&rp->mu);
    sync_on_ack(sh->r); /* synchronous commits waiting for this ack */
    if (a->error && a->error[0]) {
        log_warn("REPL-REPLICA-ERROR", "replica=%s applied=%llu error=\"%s\"", rp->name,
                 (unsigned long long)a->applied_seq, a->error);
        set_error(rp, a->error);
        if (strstr(a->error, "stale epoch")) {
            pthread_mutex_lock(&rp->mu);
            rp->stale_epoch_rejects++;
            pthread_mutex_unlock(&rp->mu);
        }
        sh->go_back = true;
    }
    if (a->blob_failed && a->blob_failed[0]) {
        /* forget that it has it; the go-back resends */
        for (size_t i = 0; i < REPL_KNOWN_BLOBS; i++)
            if (strcmp(rp->known[i], a->blob_failed) == 0)
                rp->known[i][0] = '\0';
        sh->go_back = true;
    }
}

/* pump receives and handles one message, waiting up to timeout_ms. */
static err
pump(struct ship *sh, int timeout_ms)
{
    struct replica *rp = sh->rp;
    envelope *env = NULL;
    err e = wire_recv(sh->r, rp->sock, timeout_ms, &env, NULL, NULL, NULL);
    if (e)
        return e;
    /* The replica's name was verified by TLS (the dialer's server name); what it says
     * about epochs is information, never a reason to adopt one or to stop: a primary
     * is fenced by its operator (repl_fence), not by an ack. */
    if (strcmp(env->sender, rp->name) != 0) {
        char d[160];
        snprintf(d, sizeof d, "sender %.60s on the connection to %.60s", env->sender, rp->name);
        repl_refuse(sh->r, REFUSE_SENDER, env->sender, d);
        georeg__repl__envelope__free_unpacked(env, NULL);
        return ERR_OK;
    }
    pthread_mutex_lock(&rp->mu);
    rp->last_contact_ms = clock_wall_ms();
    pthread_mutex_unlock(&rp->mu);
    switch (env->body_case) {
    case GEOREG__REPL__ENVELOPE__BODY_ACK:
        on_ack(sh, env);
        break;
    case GEOREG__REPL__ENVELOPE__BODY_PEER_CHALLENGE:
        if (env->peer_challenge->nonce.len && env->peer_challenge->nonce.len <= sizeof sh->nonce) {
            memcpy(sh->nonce, env->peer_challenge->nonce.data, env->peer_challenge->nonce.len);
            sh->nonce_len = env->peer_challenge->nonce.len;
            sh->have_nonce = true;
        }
        break;
    case GEOREG__REPL__ENVELOPE__BODY_HAVE_REPLY:
        if (env->have_reply->query_id == sh->want_query) {
            sh->have_reply = true;
            sh->have_present = env->have_reply->n_present > 0;
        }
        break;
    default:
        log_warn("REPL-BAD-MESSAGE", "replica=%s reason=unexpected_body body=%d", rp->name,
                 (int)env->body_case);
        break;
    }
    georeg__repl__envelope__free_unpacked(env, NULL);
    return ERR_OK;
}

static void
drain(struct ship *sh)
{
    while (pump(sh, 0) == ERR_OK)
        ;
}

static uint64_t
inflight(struct ship *sh)
{
    struct replica *rp = sh->rp;
    pthread_mutex_lock(&rp->mu);
    uint64_t n = rp->next_msg_id - rp->acked_msg_id;
    pthread_mutex_unlock(&rp->mu);
    return n;
}

/* wait_window blocks until fewer than window messages are unacknowledged. */
static err
wait_window(struct ship *sh)
{
    /* Read every ack already here before deciding: acks left unread fill our receive
     * queue, and the replica would then block sending them instead of taking chunks. */
    drain(sh);
    while (inflight(sh) >= sh->r->window) {
        if (broken(sh))
            return ERR_UNAVAILABLE;
        if (pump(sh, 100) == ERR_OK)
            drain(sh);
    }
    return broken(sh) ? ERR_UNAVAILABLE : ERR_OK;
}

/* ---- blobs ---- */

static bool
known(struct replica *rp, const char *digest)
{
    for (size_t i = 0; i < REPL_KNOWN_BLOBS; i++)
        if (rp->known[i][0] && strcmp(rp->known[i], digest) == 0)
            return true;
    return false;
}

static void
known_add(struct replica *rp, const char *digest)
{
    if (strlen(digest) >= sizeof rp->known[0])
        return;
    str_copy(rp->known[rp->known_next], sizeof rp->known[0], digest);
    rp->known_next = (rp->known_next + 1) % REPL_KNOWN_BLOBS;
}

/* Where a chunk's bytes come from: read straight into the outgoing message. */
struct chunk_src {
    struct store_blob *b;
    uint64_t off;
};

static err
fill_chunk(void *arg, char *dst, size_t n)
{
    struct chunk_src *cs = arg;
    if (cs->b->is_inline) {
        memcpy(dst, cs->b->data.ptr + cs->off, n);
        return ERR_OK;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(cs->b->fd, dst + got, n - got, (off_t)(cs->off + got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return ERR_IO;
        got += (size_t)k;
    }
    return ERR_OK;
}

static err
ensure_blob(struct ship *sh, const char *digest, uint64_t size)
{
    struct replica *rp = sh->rp;
    repl *r = sh->r;
    if (known(rp, digest))
        return ERR_OK;

    /* shared base layers cross the wire once: ask first */
    Georeg__Repl__HaveQuery q = GEOREG__REPL__HAVE_QUERY__INIT;
    char *digests[1] = {(char *)digest};
    q.query_id = ++rp->query_id;
    q.n_digests = 1;
    q.digests = digests;
    envelope env = GEOREG__REPL__ENVELOPE__INIT;
    env.body_case = GEOREG__REPL__ENVELOPE__BODY_HAVE_QUERY;
    env.have_query = &q;
    sh->want_query = q.query_id;
    sh->have_reply = false;
    if (wait_window(sh) || send_env(sh, &env))
        return ERR_UNAVAILABLE;
    uint64_t deadline = clock_wall_ms() + QUERY_TIMEOUT_MS;
    while (!sh->have_reply) {
        if (broken(sh) || clock_wall_ms() > deadline)
            return ERR_UNAVAILABLE;
        pump(sh, 50);
    }
    if (sh->have_present) {
        known_add(rp, digest);
        return ERR_OK;
    }

    struct store_blob b;
    err e = store_blob_get(r->store, NULL, digest, 0, true, &b);
    if (e) {
        log_error("REPL-BLOB-MISSING", "replica=%s digest=%s error=%s", rp->name, digest,
                  err_name(e));
        return e;
    }
    struct chunk_src src = {.b = &b};
    uint64_t off = 0, t0 = clock_wall_ms();
    do {
        size_t n = (size_t)(size - off < r->chunk_bytes ? size - off : r->chunk_bytes);
        Georeg__Repl__BlobChunk c = GEOREG__REPL__BLOB_CHUNK__INIT;
        c.digest = (char *)digest;
        c.size = size;
        c.offset = off;
        c.last = off + n == size;
        envelope ce = GEOREG__REPL__ENVELOPE__INIT;
        ce.body_case = GEOREG__REPL__ENVELOPE__BODY_CHUNK;
        ce.chunk = &c;
        src.off = off;
        if ((e = wait_window(sh)) || (e = send_env_payload(sh, &ce, n, fill_chunk, &src)))
            break;
        off += n;
        if (sh->resync) {
            pthread_mutex_lock(&rp->mu);
            rp->resync_sent_bytes += n;
            pthread_mutex_unlock(&rp->mu);
        }
    } while (off < size);
    store_blob_release(&b);
    log_debug("REPL-BLOB-SENT", "replica=%s digest=%s size=%llu ms=%llu", rp->name, digest,
              (unsigned long long)size, (unsigned long long)(clock_wall_ms() - t0));
    if (!e)
        known_add(rp, digest);
    return e;
}

/* ---- event batches ---- */

static char *
dup_slice(slice s)
{
    char *p = malloc(s.len + 1);
    if (p) {
        if (s.len) /* an absent field is {NULL, 0}: memcpy from NULL is undefined */
            memcpy(p, s.ptr, s.len);
        p[s.len] = '\0';
    }
    return p;
}

static void
free_event(Georeg__Repl__Event *e)
{
    if (!e)
        return;
    free(e->repo);
    free(e->digest);
    free(e->tag);
    free(e->media_type);
    free(e->body.data);
    free(e);
}

static void
batch_clear(struct ship *sh)
{
    for (size_t i = 0; i < sh->nevents; i++)
        free_event(sh->events[i]);
    sh->nevents = 0;
    sh->batch_bytes = 0;
}

static err
flush(struct ship *sh)
{
    if (!sh->nevents)
        return ERR_OK;
    Georeg__Repl__EventBatch b = GEOREG__REPL__EVENT_BATCH__INIT;
    b.n_events = sh->nevents;
    b.events = sh->events;
    b.head_seq = store_log_head(sh->r->store);
    envelope env = GEOREG__REPL__ENVELOPE__INIT;
    env.body_case = GEOREG__REPL__ENVELOPE__BODY_BATCH;
    env.batch = &b;
    err e = wait_window(sh);
    if (!e)
        e = send_env(sh, &env);
    if (!e) {
        struct replica *rp = sh->rp;
        pthread_mutex_lock(&rp->mu);
        rp->events_sent += sh->nevents;
        if (sh->batch_last_seq > rp->sent_seq)
            rp->sent_seq = sh->batch_last_seq;
        pthread_mutex_unlock(&rp->mu);
    }
    batch_clear(sh);
    return e;
}

/* add appends one event (seq 0 in a resync); filtered ones carry only their seq. */
static err
add(struct ship *sh, const struct store_event *ev, bool filtered, bool drop_tag)
{
    Georeg__Repl__Event *e = calloc(1, sizeof *e);
    if (!e)
        return ERR_NOMEM;
    georeg__repl__event__init(e);
    e->seq = ev->seq;
    e->time_ms = ev->time_ms;
    e->filtered = filtered;
    e->type = filtered ? GEOREG__REPL__EVENT_TYPE__EVENT_NONE : (Georeg__Repl__EventType)ev->type;
    e->repo = dup_slice(filtered ? (slice){"", 0} : ev->repo);
    e->digest = dup_slice(filtered ? (slice){"", 0} : ev->digest);
    e->tag = dup_slice(filtered || drop_tag ? (slice){"", 0} : ev->tag);
    e->media_type = dup_slice(filtered ? (slice){"", 0} : ev->media_type);
    e->size = ev->size;
    if (!filtered && ev->body.len) {
        e->body.data = malloc(ev->body.len);
        if (e->body.data) {
            memcpy(e->body.data, ev->body.ptr, ev->body.len);
            e->body.len = ev->body.len;
        }
    }
    if (!e->repo || !e->digest || !e->tag || !e->media_type ||
        (!filtered && ev->body.len && !e->body.data)) {
        free_event(e);
        return ERR_NOMEM;
    }
    sh->events[sh->nevents++] = e;
    sh->batch_bytes += ev->body.len + ev->repo.len + ev->digest.len + 64;
    if (ev->seq)
        sh->batch_last_seq = ev->seq;
    if (sh->nevents == BATCH_MAX_EVENTS || sh->batch_bytes >= BATCH_MAX_BYTES)
        return flush(sh);
    return ERR_OK;
}

/* ship_one decides what this replica gets of ev. */
static err
ship_one(struct ship *sh, const struct store_event *ev)
{
    const struct filter *f = rp_filter(sh->rp);
    bool included = !ev->repo.len || filter_repo(f, ev->repo);
    bool tag_ok = !ev->tag.len || ev->type == EV_META_PUT || ev->type == EV_META_DELETE ||
                  filter_tag(f, ev->tag);
    if (!included || (ev->type == EV_TAG_DELETE && !tag_ok)) {
        if (sh->resync)
            return ERR_OK; /* a snapshot simply leaves it out */
        return add(sh, ev, true, false);
    }
    if (ev->type == EV_MANIFEST_PUT && !tag_ok && sh->resync && ev->tag.len)
        return ERR_OK; /* the manifest itself came in the manifest pass */
    if (ev->type == EV_BLOB_LINK) {
        char d[DIGEST_MAX];
        str_copy_slice(d, sizeof d, ev->digest);
        err e = ensure_blob(sh, d, ev->size);
        if (e)
            return e;
    }
    return add(sh, ev, false, ev->type == EV_MANIFEST_PUT && !tag_ok);
}

static bool
on_log_event(void *arg, const struct store_event *ev)
{
    struct ship *sh = arg;
    if (broken(sh))
        return false;
    drain(sh);
    err e = ship_one(sh, ev);
    if (e) {
        sh->fail = e;
        return false;
    }
    return true;
}

/* ---- handshake, resync, stream ---- */

static err
send_heartbeat(struct ship *sh)
{
    repl *r = sh->r;
    Georeg__Repl__Heartbeat hb = GEOREG__REPL__HEARTBEAT__INIT;
    hb.head_seq = store_log_head(r->store);
    hb.time_ms = clock_wall_ms();
    hb.primary_url = r->public_url;
    envelope env = GEOREG__REPL__ENVELOPE__INIT;
    env.body_case = GEOREG__REPL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    sh->last_hb_ms = hb.time_ms;
    return send_env(sh, &env);
}

/* prove: PeerHello, then (when the replica asks) a PeerProof signed with this node's
 * key over its nonce; waits for the replica's answer to either. */
static err
prove(struct ship *sh)
{
    struct replica *rp = sh->rp;
    sh->have_nonce = false;
    Georeg__Repl__PeerHello ph = GEOREG__REPL__PEER_HELLO__INIT;
    envelope env = GEOREG__REPL__ENVELOPE__INIT;
    env.body_case = GEOREG__REPL__ENVELOPE__BODY_PEER_HELLO;
    env.peer_hello = &ph;
    if (send_env(sh, &env))
        return ERR_UNAVAILABLE;
    uint64_t want = rp->next_msg_id;
    uint64_t deadline = clock_wall_ms() + HANDSHAKE_TIMEOUT_MS;
    for (;;) {
        if (atomic_load(&rp->pipe_gen) != sh->gen || atomic_load(&sh->r->stopping) ||
            clock_wall_ms() > deadline)
            return ERR_UNAVAILABLE;
        pump(sh, 50);
        pthread_mutex_lock(&rp->mu);
        bool answered = rp->acked_msg_id >= want;
        pthread_mutex_unlock(&rp->mu);
        if (answered)
            break; /* no proof wanted (a development listener without keys): the proof
                    * still carries our history, unsigned */
        if (sh->have_nonce)
            break;
    }
    struct wire_proof wp;
    slice nonce = sh->have_nonce ? (slice){(const char *)sh->nonce, sh->nonce_len}
                                 : (slice){NULL, 0};
    err e = wire_proof_build(sh->r, nonce, rp->name, false, &wp);
    if (e) {
        set_error(rp, "cannot build the peer proof (replication.tls.key)");
        goto out;
    }
    rp->have_their_hist = false;
    sh->proof_msg_id = rp->next_msg_id + 1; /* the id send_env gives it */
    e = send_env(sh, &wp.env) ? ERR_UNAVAILABLE : ERR_OK;
    want = rp->next_msg_id;
    while (!e) {
        if (atomic_load(&rp->pipe_gen) != sh->gen || atomic_load(&sh->r->stopping) ||
            clock_wall_ms() > deadline) {
            e = ERR_UNAVAILABLE;
            break;
        }
        pump(sh, 50);
        pthread_mutex_lock(&rp->mu);
        bool answered = rp->acked_msg_id >= want;
        pthread_mutex_unlock(&rp->mu);
        if (answered)
            break;
    }
out:
    wire_proof_release(&wp);
    return e;
}

/* handshake: the peer proof, then a heartbeat whose ack tells where the replica is. */
static err
handshake(struct ship *sh, uint64_t *applied)
{
    struct replica *rp = sh->rp;
    pthread_mutex_lock(&rp->mu);
    uint64_t before = rp->acked_msg_id;
    uint64_t stale_before = rp->stale_epoch_rejects;
    pthread_mutex_unlock(&rp->mu);
    if (prove(sh))
        return ERR_UNAVAILABLE;
    pthread_mutex_lock(&rp->mu);
    bool refused_stale = rp->stale_epoch_rejects > stale_before;
    pthread_mutex_unlock(&rp->mu);
    if (refused_stale)
        return ERR_EPOCH_STALE;
    if (sh->go_back) /* the replica refused the proof (its ack says why: last_error) */
        return ERR_UNAVAILABLE;
    if (send_heartbeat(sh))
        return ERR_UNAVAILABLE;
    uint64_t want = rp->next_msg_id;
    uint64_t deadline = clock_wall_ms() + HANDSHAKE_TIMEOUT_MS;
    while (clock_wall_ms() < deadline && !atomic_load(&sh->r->stopping)) {
        if (atomic_load(&rp->pipe_gen) != sh->gen)
            return ERR_UNAVAILABLE;
        pump(sh, 100);
        pthread_mutex_lock(&rp->mu);
        bool got = rp->acked_msg_id >= want && rp->acked_msg_id > before;
        bool stale = rp->stale_epoch_rejects > stale_before;
        pthread_mutex_unlock(&rp->mu);
        if (stale)
            return ERR_EPOCH_STALE;
        if (got)
            break;
    }
    pthread_mutex_lock(&rp->mu);
    bool ok = rp->acked_msg_id >= want;
    pthread_mutex_unlock(&rp->mu);
    if (!ok)
        return ERR_TIMEOUT;
    if (sh->go_back)
        sh->go_back = false; /* an error from before the handshake */
    /* the ack carried the applied seq; rp->acked_seq only grows, so ask directly */
    *applied = 0;
    return ERR_OK;
}

static bool
on_count(void *arg, const struct store_event *ev)
{
    struct ship *sh = arg;
    if (ev->repo.len && !filter_repo(rp_filter(sh->rp), ev->repo))
        return true;
    pthread_mutex_lock(&sh->rp->mu);
    sh->rp->resync_total_bytes += ev->type == EV_BLOB_LINK ? ev->size : ev->body.len;
    pthread_mutex_unlock(&sh->rp->mu);
    return !atomic_load(&sh->r->stopping);
}

static bool
on_snapshot_record(void *arg, const struct store_event *ev)
{
    struct ship *sh = arg;
    if (!sh->resync_asked) {
        /* first record: the snapshot exists, announce it */
        sh->resync_asked = true;
    }
    if (broken(sh))
        return false;
    drain(sh);
    if (ev->type != EV_BLOB_LINK && (!ev->repo.len || filter_repo(rp_filter(sh->rp), ev->repo))) {
        pthread_mutex_lock(&sh->rp->mu);
        sh->rp->resync_sent_bytes += ev->body.len;
        pthread_mutex_unlock(&sh->rp->mu);
    }
    err e = ship_one(sh, ev);
    if (e) {
        sh->fail = e;
        return false;
    }
    return true;
}

static void
filter_key(const struct replica *rp, char *k, size_t n)
{
    snprintf(k, n, "repl/replica/%s/filter", rp->name);
}

static err
resync(struct ship *sh)
{
    struct replica *rp = sh->rp;
    repl *r = sh->r;
    uint64_t snap_seq = 0;
    set_state(rp, RS_RESYNCING);
    pthread_mutex_lock(&rp->mu);
    rp->resyncs++;
    rp->resync_total_bytes = 0;
    rp->resync_sent_bytes = 0;
    pthread_mutex_unlock(&rp->mu);
    log_info("REPL-RESYNC-START", "replica=%s", rp->name);
    store_snapshot_stream(r->store, on_count, sh, &snap_seq);

    Georeg__Repl__ResyncBegin rb = GEOREG__REPL__RESYNC_BEGIN__INIT;
    /* increasing per replica: the secondary refuses a resync not newer than its last */
    uint64_t rid = clock_wall_ms();
    rb.resync_id = rid > rp->last_resync_id ? rid : rp->last_resync_id + 1;
    rp->last_resync_id = rb.resync_id;
    pthread_mutex_lock(&rp->mu);
    rb.total_bytes = rp->resync_total_bytes;
    pthread_mutex_unlock(&rp->mu);
    rb.diverged = sh->diverged;
    rb.fork_seq = sh->fork_seq;
    envelope env = GEOREG__REPL__ENVELOPE__INIT;
    env.body_case = GEOREG__REPL__ENVELOPE__BODY_RESYNC_BEGIN;
    env.resync_begin = &rb;
    if (send_env(sh, &env))
        return ERR_UNAVAILABLE;
    sh->resync = true;
    atomic_fetch_add(&r->resyncs_active, 1);
    sh->resync_asked = false;
    err e = store_snapshot_stream(r->store, on_snapshot_record, sh, &snap_seq);
    if (!e && !sh->fail && !broken(sh))
        e = flush(sh);
    sh->resync = false;
    atomic_fetch_sub(&r->resyncs_active, 1);
    if (e || sh->fail || broken(sh)) {
        batch_clear(sh);
        log_warn("REPL-RESYNC-ABORTED", "replica=%s", rp->name);
        return ERR_UNAVAILABLE;
    }
    Georeg__Repl__ResyncEnd re = GEOREG__REPL__RESYNC_END__INIT;
    re.resync_id = rb.resync_id;
    re.snapshot_seq = snap_seq;
    envelope ee = GEOREG__REPL__ENVELOPE__INIT;
    ee.body_case = GEOREG__REPL__ENVELOPE__BODY_RESYNC_END;
    ee.resync_end = &re;
    if (wait_window(sh) || send_env(sh, &ee))
        return ERR_UNAVAILABLE;
    uint64_t want = rp->next_msg_id;
    while (inflight(sh) > 0 || rp->acked_msg_id < want) {
        if (broken(sh))
            return ERR_UNAVAILABLE;
        pump(sh, 100);
    }
    char k[128];
    filter_key(rp, k, sizeof k);
    store_meta_put(r->store, k, rp_filter(rp)->hash, strlen(rp_filter(rp)->hash));
    log_info("REPL-RESYNC-DONE", "replica=%s snapshot_seq=%llu diverged=%d", rp->name,
             (unsigned long long)snap_seq, sh->diverged);
    sh->diverged = false;
    return ERR_OK;
}

static void
persist_cursor(struct ship *sh, bool force)
{
    struct replica *rp = sh->rp;
    uint64_t now = clock_wall_ms();
    if (!force && now - sh->last_persist_ms < 1000)
        return;
    pthread_mutex_lock(&rp->mu);
    uint64_t acked = rp->acked_seq;
    pthread_mutex_unlock(&rp->mu);
    if (acked == sh->persisted_acked)
        return;
    char k[128], v[24];
    snprintf(k, sizeof k, "repl/replica/%s/acked", rp->name);
    int n = snprintf(v, sizeof v, "%llu", (unsigned long long)acked);
    store_meta_put(sh->r->store, k, v, (size_t)n);
    sh->persisted_acked = acked;
    sh->last_persist_ms = now;
}

static void
update_state(struct ship *sh, uint64_t head)
{
    struct replica *rp = sh->rp;
    pthread_mutex_lock(&rp->mu);
    uint64_t acked = rp->acked_seq;
    pthread_mutex_unlock(&rp->mu);
    enum replica_state st = acked >= head                    ? RS_IN_SYNC
                            : head - acked <= sh->r->window * 4 ? RS_STREAMING
                                                                : RS_CATCHING_UP;
    set_state(rp, st);
}

static err
stream(struct ship *sh, uint64_t from)
{
    repl *r = sh->r;
    struct replica *rp = sh->rp;
    uint64_t cursor = from;
    while (!broken(sh)) {
        drain(sh);
        persist_cursor(sh, false);
        uint64_t head = store_log_head(r->store);
        update_state(sh, head);
        if (cursor <= head) {
            if (cursor < store_log_first(r->store))
                return ERR_NOT_FOUND; /* trimmed under us: resync */
            sh->batch_last_seq = 0;
            store_log_read(r->store, cursor, 1024, on_log_event, sh);
            if (sh->fail || broken(sh))
                break;
            if (flush(sh))
                break;
            pthread_mutex_lock(&rp->mu);
            uint64_t sent = rp->sent_seq;
            pthread_mutex_unlock(&rp->mu);
            if (sent >= cursor)
                cursor = sent + 1;
            continue;
        }
        if (inflight(sh) > 0) {
            pump(sh, 20);
            continue;
        }
        uint64_t now = clock_wall_ms();
        if (now - sh->last_hb_ms >= r->heartbeat_ms && send_heartbeat(sh))
            break;
        /* sleep until a commit, a pipe change or the next heartbeat */
        uint64_t wait_ms = r->heartbeat_ms < 200 ? r->heartbeat_ms : 200;
        struct timespec ts = clock_wall_deadline(wait_ms);
        pthread_mutex_lock(&r->wake_mu);
        /* wake_seq, not store_log_head(): the commit hook (on_commit) takes wake_mu
         * under the store's commit mutex, so taking the commit mutex here, under
         * wake_mu, would deadlock a push against this shipper */
        if (r->wake_seq < cursor && !atomic_load(&r->stopping))
            pthread_cond_timedwait(&r->wake_cv, &r->wake_mu, &ts);
        pthread_mutex_unlock(&r->wake_mu);
    }
    batch_clear(sh);
    return sh->fail ? sh->fail : ERR_UNAVAILABLE;
}

/* applied_of asks the replica (through the last ack) where it is. */
static uint64_t
applied_of(struct replica *rp)
{
    pthread_mutex_lock(&rp->mu);
    uint64_t a = rp->last_applied_reported;
    pthread_mutex_unlock(&rp->mu);
    return a;
}

void *
shipper_main(void *arg)
{
    struct replica *rp = arg;
    repl *r = rp->r;
    struct ship sh = {.rp = rp, .r = r};
    char k[128];
    buf v = BUF_INIT;

    snprintf(k, sizeof k, "repl/replica/%s/acked", rp->name);
    if (store_meta_get(r->store, k, &v) == ERR_OK) {
        uint64_t a;
        if (slice_parse_u64(buf_slice(&v), &a))
            rp->acked_seq = sh.persisted_acked = a;
    }
    set_state(rp, RS_UNREACHABLE);
    while (!atomic_load(&r->stopping) && atomic_load(&rp->active)) {
        if (atomic_exchange(&rp->redial, false) && rp->dialing) {
            /* a reload changed its address: dial the new one */
            nng_dialer_close(rp->dialer);
            rp->dialing = false;
            log_info("REPL-REDIAL", "replica=%s address=%s reason=reload", rp->name,
                     rp->address);
        }
        sh.filter_seen = rp_filter(rp);
        if (!r->primary) {
            /* a secondary (or demoted) node dials nobody: a replaced primary that
             * kept dialing would take its replicas' connections from the new one */
            if (rp->dialing) {
                nng_dialer_close(rp->dialer);
                rp->dialing = false;
                log_info("REPL-DIALER-STOPPED", "replica=%s", rp->name);
            }
            set_state(rp, RS_UNREACHABLE);
            set_error(rp, "this node is not the primary");
            pthread_mutex_lock(&r->wake_mu);
            if (!atomic_load(&r->stopping) && !r->primary) {
                struct timespec ts = clock_wall_deadline(1000);
                pthread_cond_timedwait(&r->wake_cv, &r->wake_mu, &ts);
            }
            pthread_mutex_unlock(&r->wake_mu);
            continue;
        }
        if (!rp->dialing) {
            if (repl_start_dialer(r, rp) == ERR_OK) {
                rp->dialing = true;
                rp->down_since_ms = 0;
                set_error(rp, "not connected yet"); /* what it was as a secondary is over */
            } else {
                usleep(1000000);
                continue;
            }
        }
        if (atomic_load(&r->demoted)) {
            /* fenced by its operator: this node is no longer the primary */
            set_error(rp, "this node is fenced (operator): not shipping");
            pthread_mutex_lock(&r->wake_mu);
            if (!atomic_load(&r->stopping)) {
                struct timespec ts = clock_wall_deadline(1000);
                pthread_cond_timedwait(&r->wake_cv, &r->wake_mu, &ts);
            }
            pthread_mutex_unlock(&r->wake_mu);
            continue;
        }
        if (atomic_load(&rp->pipe_id) == 0) {
            set_state(rp, RS_UNREACHABLE);
            watch_dialer(rp);
            struct timespec ts = clock_wall_deadline(200);
            pthread_mutex_lock(&r->wake_mu);
            if (atomic_load(&rp->pipe_id) == 0 && !atomic_load(&r->stopping))
                pthread_cond_timedwait(&r->wake_cv, &r->wake_mu, &ts);
            pthread_mutex_unlock(&r->wake_mu);
            continue;
        }
        rp->down_since_ms = 0;
        sh.gen = atomic_load(&rp->pipe_gen);
        sh.trust_acks = false;
        sh.followed_epoch = 0;
        sh.go_back = false;
        sh.fail = ERR_OK;
        pthread_mutex_lock(&rp->mu);
        rp->last_contact_ms = clock_wall_ms(); /* a new pipe counts as contact */
        rp->acked_msg_id = rp->next_msg_id;  /* whatever was in flight is gone */
        pthread_mutex_unlock(&rp->mu);
        if (rp->state == RS_UNREACHABLE)
            set_state(rp, RS_CONNECTING);
        uint64_t applied = 0;
        err e = handshake(&sh, &applied);
        if (e) {
            pthread_mutex_lock(&rp->mu);
            rp->retries++;
            pthread_mutex_unlock(&rp->mu);
            if (e == ERR_EPOCH_STALE || atomic_load(&r->demoted)) {
                set_error(rp, "replica has a higher epoch: it follows another primary");
                usleep(1000000);
            } else {
                usleep(200000);
            }
            continue;
        }
        applied = applied_of(rp);
        uint64_t head = store_log_head(r->store);
        uint64_t first = store_log_first(r->store);
        buf_reset(&v);
        filter_key(rp, k, sizeof k);
        bool have_hash = store_meta_get(r->store, k, &v) == ERR_OK;
        bool filter_changed = have_hash && !slice_eq_cstr(buf_slice(&v), rp_filter(rp)->hash);
        /* where our histories fork: a replica whose log goes beyond that point (ahead
         * of us, or on another primary's branch) is never streamed into as if it
         * were behind: it is rebuilt from our state, and says what it loses */
        uint64_t fork = applied;
        if (rp->have_their_hist) {
            pthread_mutex_lock(&r->hmu);
            fork = hist_fork(&r->hist, &rp->their_hist, applied < head ? applied : head);
            pthread_mutex_unlock(&r->hmu);
        }
        bool diverged = fork < applied;
        pthread_mutex_lock(&rp->mu);
        rp->fork_seq = fork;
        if (diverged)
            rp->diverged++;
        pthread_mutex_unlock(&rp->mu);
        if (diverged) {
            log_warn("REPL-DIVERGED", "replica=%s applied=%llu fork_seq=%llu head=%llu "
                     "their_epoch=%llu msg=\"its log went past the fork point: resync\"",
                     rp->name, (unsigned long long)applied, (unsigned long long)fork,
                     (unsigned long long)head, (unsigned long long)rp->their_epoch);
            set_error(rp, "diverged: on another branch of the history, resyncing");
        }
        if (diverged && atomic_load(&r->confirming)) {
            /* A primary that has not confirmed its epoch (restarted, perhaps with a
             * lost or older disk) meets a replica holding more than it does: it must
             * not rebuild that replica from its own smaller state, nor count it as a
             * vote. An operator promotes the replica instead (or, knowing this node
             * is right, says so with georeg fence clear; then it is rebuilt). */
            log_warn("REPL-REPLICA-AHEAD", "replica=%s applied=%llu fork_seq=%llu head=%llu "
                     "msg=\"the replica holds events this unconfirmed primary lacks: not "
                     "rebuilding it\"",
                     rp->name, (unsigned long long)applied, (unsigned long long)fork,
                     (unsigned long long)head);
            set_error(rp, "holds events this unconfirmed primary lacks: not rebuilt");
            pthread_mutex_lock(&rp->mu);
            rp->acked_seq = fork;
            pthread_mutex_unlock(&rp->mu);
            usleep(1000000);
            continue;
        }
        if (!diverged && sh.followed_epoch && sh.followed_epoch == atomic_load(&r->epoch)) {
            atomic_store(&rp->confirmed_epoch, sh.followed_epoch);
            repl_check_confirmed(r);
        }
        sh.diverged = diverged;
        sh.fork_seq = fork;
        bool need = applied + 1 < first || applied > head || filter_changed || diverged;
        pthread_mutex_lock(&rp->mu);
        /* what it holds of ours: up to the fork */
        rp->acked_seq = diverged ? fork : applied;
        pthread_mutex_unlock(&rp->mu);
        sh.trust_acks = true; /* streaming, or a resync that starts from nothing */
        if (need) {
            log_info("REPL-RESYNC-NEEDED", "replica=%s applied=%llu log_first=%llu head=%llu "
                     "filter_changed=%d diverged=%d",
                     rp->name, (unsigned long long)applied, (unsigned long long)first,
                     (unsigned long long)head, filter_changed, diverged);
            if (resync(&sh) != ERR_OK) {
                pthread_mutex_lock(&rp->mu);
                rp->retries++;
                pthread_mutex_unlock(&rp->mu);
                usleep(200000);
            }
            continue;
        }
        if (!have_hash)
            store_meta_put(r->store, k, rp_filter(rp)->hash, strlen(rp_filter(rp)->hash));
        log_info("REPL-STREAM", "replica=%s from=%llu head=%llu", rp->name,
                 (unsigned long long)(applied + 1), (unsigned long long)head);
        e = stream(&sh, applied + 1);
        persist_cursor(&sh, true);
        if (!atomic_load(&r->stopping)) {
            pthread_mutex_lock(&rp->mu);
            rp->retries++;
            pthread_mutex_unlock(&rp->mu);
            if (sh.go_back)
                log_info("REPL-GO-BACK", "replica=%s", rp->name);
        }
    }
    if (rp->dialing) {
        nng_dialer_close(rp->dialer); /* removed by a reload: stop dialing it */
        rp->dialing = false;
    }
    set_state(rp, RS_UNREACHABLE);
    buf_release(&v);
    return NULL;
}
