/* The secondary's receiver: one thread that takes the primary's messages in order,
 * trusts nothing from the wire (names, digests and manifests are re-validated,
 * every blob and manifest digest recomputed), applies events through store_apply
 * (in order, idempotent, applied seq in the same batch) and acknowledges each
 * message with how far it got. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "../common/clock.h"
#include "repl_int.h"
#include "../common/digest.h"
#include "../common/log.h"
#include "../common/manifest.h"
#include "../common/ref.h"
#include "../common/banned.h"

/* One connected node, as far as its proof went. */
struct peer {
    uint32_t pipe; /* 0: a free slot */
    uint64_t last_ms;
    bool nonce_set;
    unsigned char nonce[32];
};

/* A blob arriving in chunks. */
struct ingest {
    char digest[DIGEST_MAX];
    uint64_t size;
    store_upload *u;
    uint64_t started_ms;
};

struct recv {
    repl *r;
    bool url_configured;
    struct ingest in;
    slice payload;           /* bulk bytes of the message being handled */
    nng_msg *msg;            /* that message; NULL once a deferred write took it */
    char failed[DIGEST_MAX]; /* blob the primary must resend */
    char done[DIGEST_MAX];
    char error[256];
    uint32_t pipe;          /* the pipe of the message being handled */
    /* Each connection proves itself (a primary, a replaced primary that has not
     * learned it yet, a candidate asking where this node is); commands are taken
     * from one: the proven primary of the newest epoch (auth_*). */
    struct peer peers[RECV_MAX_PEERS];
    uint32_t auth_pipe;
    char auth_name[64];
    uint64_t auth_epoch;
    struct history pending; /* the followed primary's history, not yet ours */
    bool have_pending;
};

static void
ingest_drop(struct recv *rc)
{
    if (rc->in.u) {
        char id[STORE_UPLOAD_ID_LEN + 1];
        str_copy(id, sizeof id, store_upload_id(rc->in.u));
        store_upload_release(rc->r->store, rc->in.u);
        store_upload_cancel(rc->r->store, "", id);
        rc->in.u = NULL;
    }
    rc->in.digest[0] = '\0';
}

static void
chunk_failed(struct recv *rc, const char *digest, const char *why)
{
    log_warn("REPL-CHUNK-REJECTED", "digest=%s reason=\"%s\"", digest, why);
    str_copy(rc->failed, sizeof rc->failed, digest);
    ingest_drop(rc);
}

/* Blobs at least this big are hashed behind the writes (a helper thread per blob);
 * smaller ones are not worth a thread. */
#define DEFER_HASH_MIN (4u << 20)

static void
free_msg(void *m)
{
    nng_msg_free(m);
}

static void
on_chunk(struct recv *rc, const Georeg__Repl__BlobChunk *c)
{
    store *s = rc->r->store;
    if (!ref_digest_valid(slice_of_cstr(c->digest))) {
        snprintf(rc->error, sizeof rc->error, "invalid digest in chunk");
        return;
    }
    if (c->offset == 0 || strcmp(rc->in.digest, c->digest) != 0) {
        ingest_drop(rc);
        if (c->offset != 0) {
            chunk_failed(rc, c->digest, "chunk of a blob whose start was not received");
            return;
        }
        char id[STORE_UPLOAD_ID_LEN + 1];
        err e = store_upload_create(s, "", id);
        if (!e)
            e = store_upload_acquire(s, "", id, &rc->in.u);
        if (e) {
            chunk_failed(rc, c->digest, err_str(e));
            return;
        }
        str_copy(rc->in.digest, sizeof rc->in.digest, c->digest);
        rc->in.size = c->size;
        rc->in.started_ms = clock_wall_ms();
    }
    /* the bytes come as the message's payload (or, from an older sender, inline) */
    slice data = rc->payload.len ? rc->payload : (slice){(const char *)c->data.data, c->data.len};
    if (c->size != rc->in.size || c->offset != store_upload_offset(rc->in.u) ||
        c->offset + data.len > c->size) {
        chunk_failed(rc, c->digest, "chunk out of order or beyond the blob's size");
        return;
    }
    err e;
    if (rc->msg && rc->payload.len && c->size >= DEFER_HASH_MIN) {
        /* hash this chunk on the upload's helper thread while the next one is taken
         * off the socket; the message is freed once it is hashed */
        e = store_upload_write_deferred(rc->in.u, data.ptr, data.len, free_msg, rc->msg);
        if (!e)
            rc->msg = NULL;
    } else {
        e = store_upload_write(rc->in.u, data.ptr, data.len);
    }
    if (e) {
        chunk_failed(rc, c->digest, err_str(e));
        return;
    }
    pthread_mutex_lock(&rc->r->smu);
    if (rc->r->resyncing)
        rc->r->resync_bytes += data.len;
    pthread_mutex_unlock(&rc->r->smu);
    if (!c->last)
        return;
    if (store_upload_offset(rc->in.u) != c->size) {
        chunk_failed(rc, c->digest, "last chunk before the blob's size");
        return;
    }
    store_upload *u = rc->in.u;
    rc->in.u = NULL;
    e = store_upload_finish(s, u, c->digest, NULL); /* verifies the digest */
    if (e) {
        str_copy(rc->failed, sizeof rc->failed, c->digest);
        log_warn("REPL-BLOB-REJECTED", "digest=%s error=%s", c->digest, err_name(e));
    } else {
        str_copy(rc->done, sizeof rc->done, c->digest);
        uint64_t ms = clock_wall_ms() - rc->in.started_ms;
        log_debug("REPL-BLOB-RECEIVED", "digest=%s size=%llu ms=%llu", c->digest,
                  (unsigned long long)c->size, (unsigned long long)ms);
    }
    rc->in.digest[0] = '\0';
}

static bool
meta_key_valid(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > 200)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            return false;
    return true;
}

/* apply_one validates and applies one event; false with rc->error set on failure. */
static bool
apply_one(struct recv *rc, const Georeg__Repl__Event *pe, bool resyncing)
{
    store *s = rc->r->store;
    struct store_event ev = {
        .seq = pe->seq,
        .time_ms = pe->time_ms,
        .type = pe->filtered ? EV_NONE : (enum store_event_type)pe->type,
        .repo = slice_of_cstr(pe->repo),
        .digest = slice_of_cstr(pe->digest),
        .tag = slice_of_cstr(pe->tag),
        .media_type = slice_of_cstr(pe->media_type),
        .body = {(const char *)pe->body.data, pe->body.len},
        .size = pe->size,
    };
    struct store_apply_extra x = {0};
    struct manifest_info mi;
    bool have_mi = false;
    struct store_ref *refs = NULL;
    buf desc = BUF_INIT;
    err e = ERR_OK;

    if (ev.seq == 0 && !resyncing) {
        snprintf(rc->error, sizeof rc->error, "snapshot record outside a resync");
        return false;
    }
    if (ev.type != EV_NONE) {
        bool meta = ev.type == EV_META_PUT || ev.type == EV_META_DELETE;
        bool ok = ev.type <= EV_META_DELETE;
        if (ok && !meta)
            ok = ref_name_valid(ev.repo);
        if (ok && (ev.type == EV_BLOB_LINK || ev.type == EV_BLOB_UNLINK ||
                   ev.type == EV_MANIFEST_PUT || ev.type == EV_MANIFEST_DELETE))
            ok = ref_digest_valid(ev.digest);
        if (ok && (meta || ev.tag.len)) /* a metadata event always names its key */
            ok = meta ? meta_key_valid(pe->tag) : ref_tag_valid(ev.tag);
        if (ok && ev.type == EV_TAG_DELETE)
            ok = ev.tag.len > 0;
        if (!ok) {
            atomic_fetch_add(&rc->r->forged_rejects, 1);
            snprintf(rc->error, sizeof rc->error, "invalid event %llu (type %d)",
                     (unsigned long long)ev.seq, (int)ev.type);
            return false;
        }
    }
    if (ev.type == EV_META_PUT || ev.type == EV_META_DELETE) {
        /* identities and grants: only under keys the node knows, with bodies it
         * would have accepted from its own admin API */
        const char *why = "no metadata validator";
        if (!rc->r->meta_validate ||
            !rc->r->meta_validate(rc->r->cb_arg, pe->tag, ev.body.ptr, ev.body.len,
                                  ev.type == EV_META_DELETE, &why)) {
            char d[300];
            snprintf(d, sizeof d, "key=%.200s: %s", pe->tag, why);
            repl_refuse(rc->r, REFUSE_META, rc->auth_name, d);
            snprintf(rc->error, sizeof rc->error, "metadata event %llu refused: %s",
                     (unsigned long long)ev.seq, why);
            return false;
        }
    }
    if (ev.type == EV_MANIFEST_PUT) {
        char got[DIGEST_MAX];
        digest_of(digest_alg_of(pe->digest), ev.body.ptr, ev.body.len, got);
        if (strcmp(got, pe->digest) != 0) {
            atomic_fetch_add(&rc->r->forged_rejects, 1);
            snprintf(rc->error, sizeof rc->error, "manifest %s does not match its digest",
                     pe->digest);
            return false;
        }
        const char *why = NULL;
        if (manifest_parse(ev.body, ev.media_type, &mi, &why)) {
            snprintf(rc->error, sizeof rc->error, "manifest %s invalid: %s", pe->digest, why);
            return false;
        }
        have_mi = true;
        refs = calloc(mi.nrefs ? mi.nrefs : 1, sizeof *refs);
        if (!refs) {
            e = ERR_NOMEM;
            goto out;
        }
        for (size_t i = 0; i < mi.nrefs; i++) {
            str_copy(refs[i].digest, sizeof refs[i].digest, mi.refs[i].digest);
            refs[i].size = mi.refs[i].size;
            refs[i].is_manifest = mi.refs[i].is_manifest;
        }
        x.refs = refs;
        x.nrefs = mi.nrefs;
        if (mi.has_subject) {
            manifest_descriptor(&mi, pe->digest, ev.body.len, &desc);
            x.subject = mi.subject;
            x.descriptor = buf_slice(&desc);
        }
        /* the media type we store is the one the body says, not the wire's */
        ev.media_type = slice_of_cstr(mi.media_type);
    }
    e = store_apply(s, &ev, &x);
    if (e == ERR_BLOB_UNKNOWN)
        str_copy(rc->failed, sizeof rc->failed, pe->digest);
out:
    if (e) {
        rc->r->apply_errors++;
        snprintf(rc->error, sizeof rc->error, "applying event %llu (%s %s): %s",
                 (unsigned long long)ev.seq, pe->repo, pe->digest, err_name(e));
    }
    free(refs);
    buf_release(&desc);
    if (have_mi)
        manifest_info_release(&mi);
    if (!e && resyncing && ev.type == EV_MANIFEST_PUT) {
        pthread_mutex_lock(&rc->r->smu);
        rc->r->resync_bytes += ev.body.len;
        pthread_mutex_unlock(&rc->r->smu);
    }
    return e == ERR_OK;
}

/* resync_mark persists the latest resync begun (epoch:id) and whether it finished. */
static err
resync_mark(repl *r, uint64_t epoch, uint64_t id, bool done)
{
    char v[64];
    int n = snprintf(v, sizeof v, "%llu:%llu:%d", (unsigned long long)epoch,
                     (unsigned long long)id, done ? 1 : 0);
    return store_meta_put(r->store, "repl/resync", v, (size_t)n);
}

static void
reply(struct recv *rc, Georeg__Repl__Ack *ack, uint64_t msg_id)
{
    repl *r = rc->r;
    ack->acked_msg_id = msg_id;
    /* where this node's log is: what it applied, or, as a primary, what it wrote */
    uint64_t head = store_log_head(r->store), applied = store_applied_seq(r->store);
    ack->applied_seq = r->primary || head > applied ? head : applied;
    ack->is_primary = r->primary;
    ack->filtered = r->self_filtered;
    ack->error = rc->error;
    ack->blob_failed = rc->failed;
    ack->blob_done = rc->done;
    pthread_mutex_lock(&r->smu);
    ack->resyncing = r->resyncing;
    if (ack->applied_seq >= r->primary_head)
        r->caught_up_ms = clock_wall_ms();
    if (rc->error[0])
        str_copy(r->apply_error, sizeof r->apply_error, rc->error);
    pthread_mutex_unlock(&r->smu);
    envelope env = GEOREG__REPL__ENVELOPE__INIT;
    env.body_case = GEOREG__REPL__ENVELOPE__BODY_ACK;
    env.ack = ack;
    wire_send_to(r, r->rsock, rc->pipe, &env);
}

/* reply_history answers with our history of promotions in the ack: a replaced
 * primary learns (verifiably) that it was, a primary finds the fork point. */
static void
reply_history(struct recv *rc, Georeg__Repl__Ack *ack, uint64_t msg_id)
{
    repl *r = rc->r;
    struct history h;
    struct hist_pb pb = {0};
    hist_init(&h);
    struct history k;
    struct hist_pb kb = {0};
    hist_init(&k);
    pthread_mutex_lock(&r->hmu);
    err e = hist_copy(&h, &r->hist);
    if (!e)
        e = hist_copy(&k, &r->known);
    pthread_mutex_unlock(&r->hmu);
    if (!e && !hist_pb_new(&h, &pb)) {
        ack->n_history = pb.n;
        ack->history = pb.ptrs;
    }
    if (!e && !hist_pb_new(&k, &kb)) {
        ack->n_known = kb.n;
        ack->known = kb.ptrs;
    }
    reply(rc, ack, msg_id);
    ack->n_history = 0;
    ack->history = NULL;
    ack->n_known = 0;
    ack->known = NULL;
    hist_pb_free(&pb);
    hist_pb_free(&kb);
    hist_release(&h);
    hist_release(&k);
}

static struct peer *
peer_of(struct recv *rc, uint32_t pipe)
{
    struct peer *free_slot = NULL, *oldest = &rc->peers[0];
    for (size_t i = 0; i < RECV_MAX_PEERS; i++) {
        struct peer *p = &rc->peers[i];
        if (p->pipe == pipe)
            return p;
        if (!p->pipe && !free_slot)
            free_slot = p;
        if (p->last_ms < oldest->last_ms)
            oldest = p;
    }
    struct peer *p = free_slot ? free_slot : oldest;
    memset(p, 0, sizeof *p);
    p->pipe = pipe;
    return p;
}

static bool
allowed_primary(repl *r, const char *name)
{
    pthread_mutex_lock(&r->cfg_mu);
    bool ok = false;
    for (size_t i = 0; i < r->nprimaries && !ok; i++)
        ok = strcmp(r->primaries[i], name) == 0;
    pthread_mutex_unlock(&r->cfg_mu);
    return ok;
}

/* proof_required: with a node key and cluster CA configured, a primary proves its
 * name; without them (replication.insecure on loopback, development) the claimed
 * name and the allow list are all there is. */
static bool
proof_required(repl *r)
{
    return r->tls_key[0] && r->tls_ca[0];
}

/* accept_peer decides what a proven peer at epoch is to this node (its history
 * already learned): the primary it follows, a stale primary, or neither. */
static void
accept_peer(struct recv *rc, const envelope *env, bool probe, Georeg__Repl__Ack *ack)
{
    repl *r = rc->r;
    uint64_t epoch = env->epoch;
    uint64_t mine = atomic_load(&r->epoch);
    bool known = false;
    bool writer = repl_writer_is(r, epoch, env->sender, &known);
    if (probe)
        return; /* a candidate asking where we are: the answer is the ack */
    if (epoch < mine) {
        atomic_fetch_add(&r->stale_epoch_rejects, 1);
        log_warn("REPL-STALE-EPOCH", "sender=%s their_epoch=%llu our_epoch=%llu", env->sender,
                 (unsigned long long)epoch, (unsigned long long)mine);
        snprintf(rc->error, sizeof rc->error, "stale epoch %llu: this node is at epoch %llu",
                 (unsigned long long)epoch, (unsigned long long)mine);
        return;
    }
    if (epoch > mine) {
        /* learning the sender's history would have raised ours: no record for it */
        char d[120];
        snprintf(d, sizeof d, "epoch %llu without a verifiable promotion record (ours: %llu)",
                 (unsigned long long)epoch, (unsigned long long)mine);
        repl_refuse(r, REFUSE_EPOCH, env->sender, d);
        snprintf(rc->error, sizeof rc->error, "refused: %s", d);
        return;
    }
    if (known && !writer) {
        char d[160];
        snprintf(d, sizeof d, "%.60s is not the primary of epoch %llu", env->sender,
                 (unsigned long long)epoch);
        repl_refuse(r, REFUSE_NOT_PRIMARY, env->sender, d);
        snprintf(rc->error, sizeof rc->error, "refused: %s", d);
        return;
    }
    if (r->primary) {
        if (!known || strcmp(env->sender, r->node_name) == 0 ||
            repl_writer_is(r, epoch, r->node_name, &known)) {
            snprintf(rc->error, sizeof rc->error, "refused: this node is the primary of epoch "
                     "%llu", (unsigned long long)mine);
            return;
        }
        /* a verified promotion of the sender at our epoch or above: we were replaced */
        char why[160];
        snprintf(why, sizeof why, "%.60s was promoted at epoch %llu", env->sender,
                 (unsigned long long)epoch);
        repl_demote(r, why);
    }
    uint32_t old = rc->auth_pipe;
    bool same = old && strcmp(rc->auth_name, env->sender) == 0;
    rc->auth_pipe = rc->pipe;
    rc->auth_epoch = epoch;
    str_copy(rc->auth_name, sizeof rc->auth_name, env->sender);
    atomic_store(&r->rpipe_id, rc->pipe);
    ack->followed = true;
    if (same && old != rc->pipe) {
        /* the same primary on a new connection: the old one is a leftover */
        nng_pipe op = NNG_PIPE_INITIALIZER;
        op.id = old;
        nng_pipe_close(op);
    }
    log_info("REPL-PEER-AUTHENTICATED", "sender=%s epoch=%llu proof=%s", env->sender,
             (unsigned long long)epoch, proof_required(r) ? "signed" : "none");
}

/* authenticate handles PeerHello (answered with a nonce) and PeerProof (verified
 * against the cluster CA and the allow list, its history learned). */
static void
authenticate(struct recv *rc, const envelope *env)
{
    repl *r = rc->r;
    Georeg__Repl__Ack ack = GEOREG__REPL__ACK__INIT;
    struct peer *pe = peer_of(rc, rc->pipe);
    pe->last_ms = clock_wall_ms();
    if (rc->auth_pipe == rc->pipe) {
        rc->auth_pipe = 0; /* a new hello or proof starts over */
        atomic_store(&r->rpipe_id, 0);
    }
    pthread_mutex_lock(&r->cfg_mu);
    bool listed = r->nprimaries > 0;
    pthread_mutex_unlock(&r->cfg_mu);
    if (!allowed_primary(r, env->sender) && (proof_required(r) || listed)) {
        repl_refuse(r, REFUSE_NOT_PRIMARY, env->sender, "not in replication.primaries");
        snprintf(rc->error, sizeof rc->error, "refused: %s may not command this node",
                 env->sender);
        reply(rc, &ack, env->msg_id);
        return;
    }
    if (env->body_case == GEOREG__REPL__ENVELOPE__BODY_PEER_HELLO) {
        if (!proof_required(r)) {
            /* development, without keys: the claimed name and the allow list are all
             * there is; the peer may still send its history in an unsigned proof */
            accept_peer(rc, env, false, &ack);
            reply_history(rc, &ack, env->msg_id);
            return;
        }
        if (RAND_bytes(pe->nonce, sizeof pe->nonce) != 1) {
            snprintf(rc->error, sizeof rc->error, "cannot make a nonce");
            reply(rc, &ack, env->msg_id);
            return;
        }
        pe->nonce_set = true;
        Georeg__Repl__PeerChallenge ch = GEOREG__REPL__PEER_CHALLENGE__INIT;
        ch.nonce.data = pe->nonce;
        ch.nonce.len = sizeof pe->nonce;
        envelope out = GEOREG__REPL__ENVELOPE__INIT;
        out.body_case = GEOREG__REPL__ENVELOPE__BODY_PEER_CHALLENGE;
        out.peer_challenge = &ch;
        wire_send_to(r, r->rsock, rc->pipe, &out);
        return;
    }
    const Georeg__Repl__PeerProof *pp = env->peer_proof;
    const char *why = "no challenge on this connection";
    enum repl_refusal res = REFUSE_BAD_PROOF;
    if (!proof_required(r))
        res = REFUSE_COUNT; /* development: the claimed name and the allow list */
    else if (pe->nonce_set)
        res = wire_proof_verify(r, (slice){(const char *)pp->cert.data, pp->cert.len},
                                (slice){(const char *)pp->signature.data, pp->signature.len},
                                (slice){(const char *)pe->nonce, sizeof pe->nonce}, env->sender,
                                pp->receiver ? pp->receiver : "", env->epoch, &why);
    pe->nonce_set = false; /* a nonce answers one proof */
    if (res != REFUSE_COUNT) {
        repl_refuse(r, res, env->sender, why);
        snprintf(rc->error, sizeof rc->error, "refused: peer proof: %s", why);
        reply(rc, &ack, env->msg_id);
        return;
    }
    if (repl_learn(r, pp->history, pp->n_history, env->sender, &why) < 0) {
        snprintf(rc->error, sizeof rc->error, "refused: %s", why);
    } else {
        bool known = false;
        if (r->primary &&
            !repl_writer_is(r, atomic_load(&r->epoch), r->node_name, &known) && known) {
            /* what it told us (a probe too) shows another node owns our epoch now */
            char d[160];
            snprintf(d, sizeof d, "%.60s showed a promotion to epoch %llu", env->sender,
                     (unsigned long long)atomic_load(&r->epoch));
            repl_demote(r, d);
        }
        accept_peer(rc, env, pp->probe, &ack);
        if (ack.followed) {
            /* its history becomes ours once it has shown that our log agrees with it
             * (its first batch: it found the fork point behind what we hold) or has
             * rebuilt it (the end of a resync); until then, we answer with ours */
            rc->pending.n = 0;
            rc->pending.base_epoch = 1;
            for (size_t i = 0; i < pp->n_history && i < REPL_MAX_HISTORY; i++)
                if (hist_rec_from_pb(pp->history[i], &rc->pending.rec[rc->pending.n]) == ERR_OK)
                    rc->pending.n++;
            rc->have_pending = true;
        }
    }
    reply_history(rc, &ack, env->msg_id);
}

static void
handle(struct recv *rc, envelope *env)
{
    repl *r = rc->r;
    Georeg__Repl__Ack ack = GEOREG__REPL__ACK__INIT;
    rc->error[0] = rc->failed[0] = rc->done[0] = '\0';

    if (env->body_case == GEOREG__REPL__ENVELOPE__BODY_PEER_HELLO ||
        env->body_case == GEOREG__REPL__ENVELOPE__BODY_PEER_PROOF) {
        authenticate(rc, env);
        return;
    }
    if (rc->auth_pipe != rc->pipe || !rc->pipe) {
        repl_refuse(r, REFUSE_UNAUTHENTICATED, env->sender,
                    "message on a connection this node does not follow");
        snprintf(rc->error, sizeof rc->error, "refused: connection not authenticated (this "
                 "node does not follow %.60s at epoch %llu; its epoch is %llu)", env->sender,
                 (unsigned long long)env->epoch, (unsigned long long)atomic_load(&r->epoch));
        reply_history(rc, &ack, env->msg_id);
        return;
    }
    if (r->primary) {
        /* promoted while this connection was followed */
        snprintf(rc->error, sizeof rc->error, "refused: this node is a primary now");
        rc->auth_pipe = 0;
        atomic_store(&r->rpipe_id, 0);
        reply_history(rc, &ack, env->msg_id);
        return;
    }
    if (strcmp(env->sender, rc->auth_name) != 0) {
        char d[160];
        snprintf(d, sizeof d, "sender %.60s on the connection of %.60s", env->sender,
                 rc->auth_name);
        repl_refuse(r, REFUSE_SENDER, env->sender, d);
        snprintf(rc->error, sizeof rc->error, "refused: sender is not the authenticated peer");
        reply(rc, &ack, env->msg_id);
        return;
    }
    if (env->epoch != rc->auth_epoch) {
        /* an epoch rises only through a proof (a new connection), never a heartbeat */
        char d[120];
        snprintf(d, sizeof d, "epoch %llu on a connection proven at epoch %llu",
                 (unsigned long long)env->epoch, (unsigned long long)rc->auth_epoch);
        repl_refuse(r, REFUSE_EPOCH, env->sender, d);
        snprintf(rc->error, sizeof rc->error, "refused: %s", d);
        reply(rc, &ack, env->msg_id);
        return;
    }
    if (wire_epoch_stale(r, env) == ERR_EPOCH_STALE) {
        snprintf(rc->error, sizeof rc->error, "stale epoch %llu: this node is at epoch %llu",
                 (unsigned long long)env->epoch, (unsigned long long)atomic_load(&r->epoch));
        reply(rc, &ack, env->msg_id);
        return;
    }
    pthread_mutex_lock(&r->smu);
    r->last_contact_ms = clock_wall_ms();
    str_copy(r->primary_name, sizeof r->primary_name, env->sender);
    bool resyncing = r->resyncing;
    pthread_mutex_unlock(&r->smu);

    switch (env->body_case) {
    case GEOREG__REPL__ENVELOPE__BODY_HEARTBEAT: {
        Georeg__Repl__Heartbeat *hb = env->heartbeat;
        pthread_mutex_lock(&r->smu);
        r->primary_head = hb->head_seq;
        r->primary_time_ms = hb->time_ms;
        if (!rc->url_configured && hb->primary_url && hb->primary_url[0])
            str_copy(r->learned_primary_url, sizeof r->learned_primary_url, hb->primary_url);
        pthread_mutex_unlock(&r->smu);
        break;
    }
    case GEOREG__REPL__ENVELOPE__BODY_HAVE_QUERY: {
        Georeg__Repl__HaveQuery *q = env->have_query;
        Georeg__Repl__HaveReply hr = GEOREG__REPL__HAVE_REPLY__INIT;
        char *present[64];
        hr.query_id = q->query_id;
        for (size_t i = 0; i < q->n_digests && hr.n_present < 64; i++)
            if (ref_digest_valid(slice_of_cstr(q->digests[i])) &&
                store_blob_exists(r->store, q->digests[i], NULL))
                present[hr.n_present++] = q->digests[i];
        hr.present = present;
        envelope out = GEOREG__REPL__ENVELOPE__INIT;
        out.body_case = GEOREG__REPL__ENVELOPE__BODY_HAVE_REPLY;
        out.have_reply = &hr;
        wire_send_to(r, r->rsock, rc->pipe, &out);
        break;
    }
    case GEOREG__REPL__ENVELOPE__BODY_CHUNK:
        on_chunk(rc, env->chunk);
        break;
    case GEOREG__REPL__ENVELOPE__BODY_BATCH: {
        Georeg__Repl__EventBatch *b = env->batch;
        if (rc->have_pending && !resyncing && b->n_events && b->events[0]->seq) {
            if (repl_take_history(r, &rc->pending, env->sender)) {
                snprintf(rc->error, sizeof rc->error, "cannot take the primary's history");
                break;
            }
            rc->have_pending = false;
        }
        for (size_t i = 0; i < b->n_events; i++)
            if (!apply_one(rc, b->events[i], resyncing))
                break;
        /* the primary's head as of the batch: under a backlog the secondary knows how
         * far behind it is, not only where the batch ends */
        pthread_mutex_lock(&r->smu);
        if (b->n_events && b->events[b->n_events - 1]->seq > r->primary_head)
            r->primary_head = b->events[b->n_events - 1]->seq;
        if (b->head_seq > r->primary_head)
            r->primary_head = b->head_seq;
        pthread_mutex_unlock(&r->smu);
        break;
    }
    case GEOREG__REPL__ENVELOPE__BODY_RESYNC_BEGIN: {
        /* a resync wipes state: only a newer one than any begun before may start (a
         * replayed or delayed ResyncBegin must not roll this node back) */
        uint64_t id = env->resync_begin->resync_id;
        pthread_mutex_lock(&r->smu);
        bool newer = env->epoch > r->resync_epoch ||
                     (env->epoch == r->resync_epoch && id > r->resync_id);
        pthread_mutex_unlock(&r->smu);
        if (!newer || !id) {
            atomic_fetch_add(&r->forged_rejects, 1);
            snprintf(rc->error, sizeof rc->error, "stale resync %llu refused",
                     (unsigned long long)id);
            break;
        }
        ingest_drop(rc);
        if (env->resync_begin->diverged &&
            divergence_begin(r, env->resync_begin->fork_seq, env->epoch, env->sender)) {
            /* no report, no wipe: what this node holds beyond the fork stays */
            snprintf(rc->error, sizeof rc->error, "cannot keep the divergence report");
            break;
        }
        if (resync_mark(r, env->epoch, id, false) || store_resync_begin(r->store)) {
            snprintf(rc->error, sizeof rc->error, "cannot start resync");
            break;
        }
        pthread_mutex_lock(&r->smu);
        r->resyncing = true;
        r->resync_epoch = env->epoch;
        r->resync_id = id;
        r->resync_bytes = 0;
        pthread_mutex_unlock(&r->smu);
        log_info("REPL-RESYNC-BEGIN", "primary=%s total_bytes=%llu", env->sender,
                 (unsigned long long)env->resync_begin->total_bytes);
        break;
    }
    case GEOREG__REPL__ENVELOPE__BODY_RESYNC_END:
        pthread_mutex_lock(&r->smu);
        bool current = resyncing && env->resync_end->resync_id == r->resync_id &&
                       env->epoch == r->resync_epoch;
        pthread_mutex_unlock(&r->smu);
        if (!current) {
            atomic_fetch_add(&r->forged_rejects, 1);
            snprintf(rc->error, sizeof rc->error, "resync end without its resync");
            break;
        }
        if (store_resync_end(r->store, env->resync_end->snapshot_seq) ||
            resync_mark(r, env->epoch, env->resync_end->resync_id, true)) {
            snprintf(rc->error, sizeof rc->error, "cannot finish resync");
            break;
        }
        pthread_mutex_lock(&r->smu);
        r->resyncing = false;
        if (env->resync_end->snapshot_seq > r->primary_head)
            r->primary_head = env->resync_end->snapshot_seq;
        pthread_mutex_unlock(&r->smu);
        log_info("REPL-RESYNC-END", "snapshot_seq=%llu",
                 (unsigned long long)env->resync_end->snapshot_seq);
        if (rc->have_pending && !repl_take_history(r, &rc->pending, env->sender))
            rc->have_pending = false;
        divergence_end(r);
        break;
    default:
        atomic_fetch_add(&r->forged_rejects, 1);
        snprintf(rc->error, sizeof rc->error, "unexpected message");
        break;
    }
    reply(rc, &ack, env->msg_id);
}

/* poll_tls_refusals: connections nng refused before we saw them (a TLS handshake
 * that failed: a foreign CA, plain tcp on a TLS port) show only in the listener's
 * statistics; each new one is counted and audited as a refusal. */
static void
poll_tls_refusals(repl *r)
{
    nng_stat *all = NULL;
    if (strncmp(r->listen, "tls+tcp://", 10) != 0 || nng_stats_get(&all) != 0)
        return;
    nng_stat *l = nng_stat_find_listener(all, r->listener);
    uint64_t v = 0;
    const char *names[] = {"auth", "proto", "other"};
    for (size_t i = 0; l && i < sizeof names / sizeof names[0]; i++) {
        nng_stat *st = nng_stat_find(l, names[i]);
        if (st)
            v += nng_stat_value(st);
    }
    nng_stats_free(all);
    if (v > r->tls_auth_seen) {
        uint64_t n = v - r->tls_auth_seen;
        r->tls_auth_seen = v;
        char d[96];
        snprintf(d, sizeof d, "%llu TLS handshake(s) failed on the replication listener",
                 (unsigned long long)n);
        atomic_fetch_add(&r->refused[REFUSE_TLS], n - 1); /* repl_refuse adds the last */
        repl_refuse(r, REFUSE_TLS, "", d);
    }
}

void *
receiver_main(void *arg)
{
    repl *r = arg;
    struct recv rc = {.r = r};
    hist_init(&rc.pending);
    rc.url_configured = r->learned_primary_url[0] != '\0';
    uint32_t last_pipe = 0;
    pthread_mutex_lock(&r->smu);
    r->caught_up_ms = 0; /* stale from the start until the primary says otherwise */
    pthread_mutex_unlock(&r->smu);
    while (!atomic_load(&r->stopping)) {
        envelope *env = NULL;
        uint32_t pipe = 0;
        nng_msg *msg = NULL;
        err e = wire_recv(r, r->rsock, 200, &env, &pipe, &rc.payload, &msg);
        if (e == ERR_TIMEOUT) {
            poll_tls_refusals(r);
            uint64_t applied = store_applied_seq(r->store);
            uint64_t now = clock_wall_ms();
            uint64_t silent_limit = r->heartbeat_ms * 4 < 4000 ? 4000 : r->heartbeat_ms * 4;
            pthread_mutex_lock(&r->smu);
            bool silent = r->last_contact_ms && now - r->last_contact_ms > silent_limit;
            /* caught up only counts while the primary is heard from; cut off, the
             * staleness grows from the last time we were known to be current: the
             * last contact, not the last poll (which would hide the first seconds of
             * silence, up to silent_limit) */
            if (applied >= r->primary_head && !silent && r->last_contact_ms)
                r->caught_up_ms = r->last_contact_ms;
            pthread_mutex_unlock(&r->smu);
            uint32_t cur = atomic_load(&r->rpipe_id);
            if (silent && cur) {
                /* a half-open connection from before a partition: drop it so the
                 * primary's next dial is accepted */
                nng_pipe op = NNG_PIPE_INITIALIZER;
                op.id = cur;
                log_info("REPL-PRIMARY-SILENT", "pipe=%u silent_ms=%llu", cur,
                         (unsigned long long)(now - r->last_contact_ms));
                nng_pipe_close(op);
            }
            continue;
        }
        if (e)
            continue;
        rc.pipe = pipe;
        if (pipe == rc.auth_pipe && pipe != last_pipe) {
            /* commands from another connection than the last: a blob half-received
             * on the old one restarts */
            ingest_drop(&rc);
            last_pipe = pipe;
        }
        rc.msg = msg;
        handle(&rc, env);
        georeg__repl__envelope__free_unpacked(env, NULL);
        if (rc.msg) /* NULL when a deferred write took it */
            nng_msg_free(rc.msg);
        rc.msg = NULL;
        rc.payload = (slice){NULL, 0};
    }
    ingest_drop(&rc);
    hist_release(&rc.pending);
    return NULL;
}
