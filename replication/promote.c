/* Promotion: a secondary becomes the primary at a new epoch. First it asks every
 * other region where it stands (a probe: hello, challenge, proof with `probe` set;
 * the answer is the region's applied seq, epoch, role and history), so that it can
 * refuse what an operator would regret: a filtered or half-resynced replica, a
 * primary that is still alive, a candidate behind another. Then it signs a
 * promotion record (new epoch, the seq where its history forks from the old one),
 * becomes primary and ships to every region from where each stands; the record
 * travels in its proofs, so every node can verify it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/clock.h"
#include "repl_int.h"
#include "../common/log.h"
#include "../common/banned.h"

#define PROBE_TIMEOUT_MS 2000

struct probe {
    repl *r;
    struct replica *rp;
    pthread_t thread;
    bool started;
    bool answered;
    uint64_t epoch, applied;
    bool is_primary, filtered;
    struct history hist;
    Georeg__Repl__Envelope *ack_env; /* kept to learn its history */
    char error[160];
};

static err
probe_recv(struct probe *p, nng_socket s, Georeg__Repl__Envelope__BodyCase want,
           envelope **out)
{
    uint64_t deadline = clock_wall_ms() + PROBE_TIMEOUT_MS;
    while (clock_wall_ms() < deadline) {
        envelope *env = NULL;
        err e = wire_recv(p->r, s, 200, &env, NULL, NULL, NULL);
        if (e == ERR_TIMEOUT)
            continue;
        if (e)
            return e;
        if (strcmp(env->sender, p->rp->name) != 0) {
            georeg__repl__envelope__free_unpacked(env, NULL);
            snprintf(p->error, sizeof p->error, "answered by another node");
            return ERR_PROTOCOL;
        }
        if (env->body_case == want ||
            (env->body_case == GEOREG__REPL__ENVELOPE__BODY_ACK &&
             want == GEOREG__REPL__ENVELOPE__BODY_PEER_CHALLENGE)) {
            *out = env;
            return ERR_OK;
        }
        georeg__repl__envelope__free_unpacked(env, NULL);
    }
    return ERR_TIMEOUT;
}

static void *
probe_main(void *arg)
{
    struct probe *p = arg;
    repl *r = p->r;
    nng_socket s;
    nng_dialer d;
    nng_tls_config *tls = NULL;
    envelope *env = NULL;
    struct wire_proof wp;
    memset(&wp, 0, sizeof wp);
    buf_init(&wp.cert);
    buf_init(&wp.sig);
    hist_init(&wp.hist);
    snprintf(p->error, sizeof p->error, "unreachable");
    if (nng_pair1_open(&s))
        goto out0;
    nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, REPL_MAX_MSG + 4096);
    nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, PROBE_TIMEOUT_MS);
    if (nng_dialer_create(&d, s, p->rp->address))
        goto out;
    nng_dialer_set_ms(d, NNG_OPT_RECONNMINT, 100);
    nng_dialer_set_ms(d, NNG_OPT_RECONNMAXT, 500);
    if (strncmp(p->rp->address, "tls+tcp://", 10) == 0) {
        if (wire_tls_config(r, false, p->rp->name, &tls))
            goto out;
        int rv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, tls);
        nng_tls_config_free(tls);
        if (rv)
            goto out;
    }
    if (nng_dialer_start(d, NNG_FLAG_NONBLOCK))
        goto out;
    Georeg__Repl__PeerHello ph = GEOREG__REPL__PEER_HELLO__INIT;
    envelope hello = GEOREG__REPL__ENVELOPE__INIT;
    hello.body_case = GEOREG__REPL__ENVELOPE__BODY_PEER_HELLO;
    hello.peer_hello = &ph;
    if (wire_send(r, s, &hello, 1))
        goto out; /* no connection within the timeout */
    snprintf(p->error, sizeof p->error, "no answer");
    if (probe_recv(p, s, GEOREG__REPL__ENVELOPE__BODY_PEER_CHALLENGE, &env))
        goto out;
    if (env->body_case == GEOREG__REPL__ENVELOPE__BODY_ACK) {
        snprintf(p->error, sizeof p->error, "refused: %.120s",
                 env->ack->error ? env->ack->error : "");
        goto out;
    }
    slice nonce = {(const char *)env->peer_challenge->nonce.data, env->peer_challenge->nonce.len};
    err e = wire_proof_build(r, nonce, p->rp->name, true, &wp);
    georeg__repl__envelope__free_unpacked(env, NULL);
    env = NULL;
    if (e) {
        snprintf(p->error, sizeof p->error, "cannot build the proof");
        goto out;
    }
    if (wire_send(r, s, &wp.env, 2))
        goto out;
    if (probe_recv(p, s, GEOREG__REPL__ENVELOPE__BODY_ACK, &env))
        goto out;
    Georeg__Repl__Ack *a = env->ack;
    if (a->error && a->error[0]) {
        snprintf(p->error, sizeof p->error, "refused: %.120s", a->error);
        goto out;
    }
    p->answered = true;
    p->error[0] = '\0';
    p->epoch = env->epoch;
    p->applied = a->applied_seq;
    p->is_primary = a->is_primary;
    p->filtered = a->filtered;
    for (size_t i = 0; i < a->n_history && p->hist.n < REPL_MAX_HISTORY; i++)
        if (hist_rec_from_pb(a->history[i], &p->hist.rec[p->hist.n]) == ERR_OK)
            p->hist.n++;
    p->ack_env = env; /* its history is learned on the caller's thread */
    env = NULL;
out:
    repl_close_bounded(r, &s, 1, PROBE_TIMEOUT_MS);
out0:
    if (env)
        georeg__repl__envelope__free_unpacked(env, NULL);
    wire_proof_release(&wp);
    return NULL;
}

static void add_reason(buf *reasons, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
add_reason(buf *reasons, const char *fmt, ...)
{
    char t[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    if (reasons->len)
        buf_addc(reasons, ',');
    buf_add_json_str(reasons, t, strlen(t));
}

err
repl_promote(repl *r, bool force, buf *out)
{
    return repl_promote_as(r, force ? PROMOTE_FORCE : PROMOTE_ASK, out);
}

err
repl_promote_as(repl *r, enum promote_mode mode, buf *out)
{
    bool force = mode == PROMOTE_FORCE;
    bool eligible_ahead = false;
    size_t nrep = 0; /* the regions probed: a reload may add more meanwhile */
    err res = ERR_DENIED;
    buf reasons = BUF_INIT, regions = BUF_INIT;
    struct probe *ps = NULL;
    if (!r->cluster) {
        buf_adds(out, "{\"promoted\":false,\"refused\":[\"promotion needs a cluster "
                      "description (cluster.regions)\"]}");
        return ERR_INVALID;
    }
    pthread_mutex_lock(&r->promote_mu);
    if (r->primary) {
        add_reason(&reasons, "%s is already the primary", r->node_name);
        goto report;
    }
    if (!r->self_eligible) {
        /* not even with force: a filtered replica lacks what its filter leaves out,
         * and the other regions would not follow it (replication.primaries) */
        add_reason(&reasons, "%s may not become primary (a filtered replica or "
                             "primary_eligible: false)", r->node_name);
        goto report;
    }
    pthread_mutex_lock(&r->smu);
    bool resyncing = r->resyncing;
    uint64_t last_head = r->primary_head;
    pthread_mutex_unlock(&r->smu);
    if (resyncing) {
        add_reason(&reasons, "%s is in the middle of a resync: its content is partial",
                   r->node_name);
        goto report;
    }

    nrep = r->nreplicas;
    ps = calloc(nrep ? nrep : 1, sizeof *ps);
    if (!ps) {
        res = ERR_NOMEM;
        goto report;
    }
    for (size_t i = 0; i < nrep; i++) {
        ps[i].r = r;
        ps[i].rp = &r->replicas[i];
        hist_init(&ps[i].hist);
        if (!atomic_load(&ps[i].rp->active)) {
            snprintf(ps[i].error, sizeof ps[i].error, "removed");
            continue;
        }
        ps[i].started = pthread_create(&ps[i].thread, NULL, probe_main, &ps[i]) == 0;
        if (!ps[i].started)
            snprintf(ps[i].error, sizeof ps[i].error, "no thread");
    }
    for (size_t i = 0; i < nrep; i++)
        if (ps[i].started)
            pthread_join(ps[i].thread, NULL);
    /* a region that took the connection and dropped it is busy with a primary it
     * still hears from (within two heartbeats): once more, after that */
    bool again = false;
    for (size_t i = 0; i < nrep; i++)
        again = again || (!ps[i].answered && !strcmp(ps[i].error, "no answer"));
    if (again) {
        usleep((useconds_t)((r->heartbeat_ms * 2 + 600) * 1000));
        for (size_t i = 0; i < nrep; i++) {
            struct probe *p = &ps[i];
            p->started = false;
            if (p->answered || strcmp(p->error, "no answer"))
                continue;
            p->started = pthread_create(&p->thread, NULL, probe_main, p) == 0;
        }
        for (size_t i = 0; i < nrep; i++)
            if (ps[i].started)
                pthread_join(ps[i].thread, NULL);
    }

    /* what the others know first: a newer promotion anywhere raises our epoch */
    for (size_t i = 0; i < nrep; i++) {
        if (!ps[i].ack_env)
            continue;
        const char *why = "";
        Georeg__Repl__Ack *a = ps[i].ack_env->ack;
        repl_learn(r, a->history, a->n_history, ps[i].rp->name, &why);
        repl_learn(r, a->known, a->n_known, ps[i].rp->name, &why);
    }
    uint64_t mine = store_applied_seq(r->store);
    uint64_t head = store_log_head(r->store);
    if (head > mine)
        mine = head;
    uint64_t max_epoch = atomic_load(&r->epoch);
    uint64_t lose_total = 0;
    for (size_t i = 0; i < nrep; i++) {
        struct probe *p = &ps[i];
        uint64_t fork = 0, ahead = 0;
        if (p->answered) {
            if (p->epoch > max_epoch)
                max_epoch = p->epoch;
            pthread_mutex_lock(&r->hmu);
            fork = hist_fork(&r->hist, &p->hist, p->applied < mine ? p->applied : mine);
            pthread_mutex_unlock(&r->hmu);
            /* what it holds that we do not: beyond the fork on its side */
            ahead = p->applied > fork ? p->applied - fork : 0;
            if (p->is_primary && p->epoch >= atomic_load(&r->epoch)) {
                /* elected through etcd: its lease lapsed, so it stopped taking writes */
                if (mode != PROMOTE_ELECTED)
                    add_reason(&reasons, "%s answers as the primary at epoch %llu: fence it "
                                         "first (georeg fence) or use --force",
                               p->rp->name, (unsigned long long)p->epoch);
            } else if (ahead && mode == PROMOTE_ELECTED &&
                       (p->filtered || !repl_may_be_primary(r, p->rp->name))) {
                /* no better candidate: what only it holds is lost (reported there) */
            } else if (ahead)
                add_reason(&reasons, p->filtered || !repl_may_be_primary(r, p->rp->name)
                                         ? "%s holds %llu events this node lacks (it may not "
                                           "be primary itself): --force to lose them"
                                         : "%s holds %llu events this node lacks: promote it "
                                           "instead, or --force to lose them",
                           p->rp->name, (unsigned long long)ahead);
            if (ahead && !p->filtered && repl_may_be_primary(r, p->rp->name))
                eligible_ahead = true;
            lose_total += ahead;
        }
        if (!atomic_load(&p->rp->active))
            continue;
        buf_addf(&regions, "%s{\"name\":", regions.len ? "," : "");
        buf_add_json_str(&regions, p->rp->name, strlen(p->rp->name));
        buf_addf(&regions, ",\"reachable\":%s", p->answered ? "true" : "false");
        if (p->answered)
            buf_addf(&regions,
                     ",\"epoch\":%llu,\"applied_seq\":%llu,\"role\":\"%s\",\"filtered\":%s,"
                     "\"fork_seq\":%llu,\"ahead_by\":%llu",
                     (unsigned long long)p->epoch, (unsigned long long)p->applied,
                     p->is_primary ? "primary" : "secondary", p->filtered ? "true" : "false",
                     (unsigned long long)fork, (unsigned long long)ahead);
        buf_adds(&regions, ",\"error\":");
        buf_add_json_str(&regions, p->error, strlen(p->error));
        buf_addc(&regions, '}');
    }
    if (reasons.len && !force)
        goto report;
    (void)eligible_ahead;

    uint64_t epoch = max_epoch + 1;
    if (store_role_align(r->store)) {
        add_reason(&reasons, "cannot align the log with the applied seq");
        res = ERR_IO;
        goto report;
    }
    mine = store_log_head(r->store);
    uint64_t start = mine + 1;
    err e = repl_history_add_own(r, epoch, start);
    if (e) {
        add_reason(&reasons, "cannot record the promotion (%s)", err_name(e));
        res = e;
        goto report;
    }
    repl_become_primary(r);
    /* stop following the old primary: its connection gets refusals from now on */
    uint32_t followed = atomic_exchange(&r->rpipe_id, 0);
    if (followed) {
        nng_pipe op = NNG_PIPE_INITIALIZER;
        op.id = followed;
        nng_pipe_close(op);
    }
    log_warn("REPL-PROMOTED", "epoch=%llu start_seq=%llu forced=%d lost_elsewhere=%llu "
             "last_primary_head=%llu",
             (unsigned long long)epoch, (unsigned long long)start, force && reasons.len,
             (unsigned long long)lose_total, (unsigned long long)last_head);
    res = ERR_OK;
report:
    buf_addf(out, "{\"promoted\":%s,\"node\":", res == ERR_OK ? "true" : "false");
    buf_add_json_str(out, r->node_name, strlen(r->node_name));
    buf_addf(out, ",\"epoch\":%llu,\"forced\":%s,\"refused\":[%s],\"regions\":[%s]",
             (unsigned long long)atomic_load(&r->epoch), force ? "true" : "false",
             res == ERR_OK ? "" : reasons.ptr, regions.ptr);
    if (res == ERR_OK) {
        buf_addf(out, ",\"overridden\":[%s]", reasons.ptr);
        pthread_mutex_lock(&r->hmu);
        const struct hist_rec *h = r->hist.n ? &r->hist.rec[r->hist.n - 1] : NULL;
        buf_addf(out, ",\"start_seq\":%llu", h ? (unsigned long long)h->start_seq : 0ull);
        pthread_mutex_unlock(&r->hmu);
    }
    pthread_mutex_lock(&r->smu);
    uint64_t ph = r->primary_head;
    pthread_mutex_unlock(&r->smu);
    uint64_t applied = store_applied_seq(r->store);
    /* what the old primary had said it committed beyond what we applied: lost unless
     * it comes back (then reported as its divergence) */
    buf_addf(out, ",\"applied_seq\":%llu,\"last_primary_head\":%llu,\"behind_last_primary\":%llu}",
             (unsigned long long)applied, (unsigned long long)ph,
             (unsigned long long)(ph > applied ? ph - applied : 0));
    pthread_mutex_unlock(&r->promote_mu);
    if (ps) {
        for (size_t i = 0; i < nrep; i++) {
            if (ps[i].ack_env)
                georeg__repl__envelope__free_unpacked(ps[i].ack_env, NULL);
            hist_release(&ps[i].hist);
        }
        free(ps);
    }
    buf_release(&reasons);
    buf_release(&regions);
    return res;
}
