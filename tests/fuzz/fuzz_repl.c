/* libFuzzer driver for replication message decoding and the secondary's receiver.
 *
 * The receiver's validation (apply_one, on_chunk, handle) is static in
 * replication/receiver.c, so this file #includes receiver.c and drives handle()
 * directly, exactly as receiver_main does after wire_recv: against a real store
 * (RocksDB without fsync, in a temporary directory made once per process), so what
 * a forged or corrupt primary can make a secondary do is what runs here.
 * wire_send is renamed for the included code: replies (Ack, HaveReply) are packed
 * as on the wire and must decode again, since the primary has to read them. So is
 * store_apply: every event that gets past the receiver must obey the protocol
 * (proto/replication.proto) as stated independently here, before it is applied:
 *  - seq 0 only inside a resync; a known type; a valid repository name for
 *    repository events; a valid digest where the event names one;
 *  - META_PUT/META_DELETE: a key (in tag) of 1..200 printable ASCII bytes;
 *    other events: no tag, or a valid one; TAG_DELETE: a valid tag;
 *  - MANIFEST_PUT: the body hashes to the digest and parses as a manifest of a
 *    stored media type, its references are valid digests, and a subject comes
 *    with a descriptor that is valid JSON.
 *
 * Input: one flags byte, then frames of [u16 little-endian length][bytes]; a length
 * beyond the input takes the rest. Every frame is unpacked with
 * georeg__repl__envelope__unpack (arbitrary bytes). A decoded envelope must pack
 * and decode back to the same bytes; one with protocol version 1 (what wire_recv
 * lets through) goes to handle(). Frames of one input are one connection, in order,
 * so multi-chunk blobs and consecutive events can be built.
 * Flags: bit 0 starts inside a resync; bit 1 as if primary_url were configured.
 *
 * Byte-level mutations rarely get through three levels of length-prefixed protobuf,
 * so half of the mutations are structural (LLVMFuzzerCustomMutator below): decode
 * one frame, change one field of the envelope or of one event or chunk (to an edge
 * value, a value the validators must reject, or libFuzzer's mutation of it),
 * optionally make digests and sequence numbers consistent again, and re-encode.
 *
 * Between inputs the receiver state is reset (epoch 1, applied seq 1, no resync, no
 * half-received blob); the store's content-addressed data persists.
 * GEOREG_FUZZ_LOG=1 turns the node's log on (stderr), with what each message did.
 * The store lives in $GEOREG_FUZZ_TMP (else $TMPDIR, else /tmp), removed at exit. */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "common/log.h"
#include "storage/store_int.h"

/* The receiver under test, with its replies sent to fuzz_wire_send and what it
 * applies checked by fuzz_store_apply on the way to the real store_apply. */
static err fuzz_store_apply(store *s, const struct store_event *ev,
                            const struct store_apply_extra *x);
#define wire_send fuzz_wire_send
#define wire_send_to fuzz_wire_send_to
#define store_apply fuzz_store_apply
#include "replication/receiver.c"
#undef wire_send
#undef wire_send_to
#undef store_apply

#define FUZZ_NAME "fuzz_repl"
#include "fuzz.h"

/* repl.c is not linked: a refusal is only counted. */
void
repl_refuse(repl *r, enum repl_refusal why, const char *peer, const char *detail)
{
    (void)peer;
    (void)detail;
    atomic_fetch_add(&r->refused[why], 1);
}

/* nor is its role switch: a fuzzed secondary stays one. */
void
repl_demote(repl *r, const char *why)
{
    (void)r;
    (void)why;
}

/* node/api/meta_validate.c is not linked either: metadata under id/ goes on to
 * store_apply (and its checks below), anything else is refused as the node would. */
static bool
fuzz_meta_validate(void *arg, const char *key, const void *val, size_t len, bool del,
                   const char **why)
{
    (void)arg;
    (void)val;
    (void)len;
    (void)del;
    *why = "unknown metadata key prefix";
    return strncmp(key, "id/", 3) == 0;
}

static char tmpdir[4096];
static repl R;
static store *S;
static bool verbose;

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* At exit the store's files are removed without closing it: RocksDB's own static
 * state may already be gone when exit handlers run. */
static void
cleanup(void)
{
    if (tmpdir[0])
        nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *lg = getenv("GEOREG_FUZZ_LOG");
    verbose = lg && *lg == '1';
    log_level_ = verbose ? LOG_DEBUG : -1;
    const char *base = getenv("GEOREG_FUZZ_TMP");
    if (!base || !*base)
        base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/georeg-fuzz-repl-XXXXXX", base);
    if (!mkdtemp(tmpdir)) {
        perror("fuzz_repl: mkdtemp");
        abort();
    }
    atexit(cleanup);
    struct store_options so = {.inline_max = 1u << 20, .cache_bytes = 8u << 20, .no_sync = true};
    if (store_open(tmpdir, &so, &S)) {
        fprintf(stderr, "fuzz_repl: store_open %s failed\n", tmpdir);
        abort();
    }
    R.store = S;
    R.primary = false;
    str_copy(R.node_name, sizeof R.node_name, "fuzz-secondary");
    R.heartbeat_ms = 1000;
    R.meta_validate = fuzz_meta_validate;
    R.rsock = (nng_socket)NNG_SOCKET_INITIALIZER; /* never used: replies go to fuzz_wire_send */
    pthread_mutex_init(&R.smu, NULL);
    pthread_mutex_init(&R.wake_mu, NULL);
    pthread_mutex_init(&R.hmu, NULL);
    pthread_mutex_init(&R.cfg_mu, NULL);
    hist_init(&R.hist);
    hist_init(&R.known);
    pthread_cond_init(&R.wake_cv, NULL);
    return 0;
}

/* has_field0 finds an unknown field numbered 0 in m or a message inside it.
 * protobuf-c 1.4 accepts field number 0 when its tag is an over-long varint
 * ("80 00") and keeps it as an unknown field, but re-encodes it as "00 00", which it
 * then refuses to decode. That is the library's, harmless to the receiver (unknown
 * fields are ignored), and exempt from the round-trip check. */
static bool
has_field0(const ProtobufCMessage *m)
{
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return true;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const char *base = (const char *)m;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t k = 0; k < n; k++)
                if (has_field0(arr[k]))
                    return true;
        } else {
            const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + f->offset);
            if (sub && has_field0(sub))
                return true;
        }
    }
    return false;
}

/* roundtrip packs env and checks that the bytes decode, and re-encode identically. */
static void
roundtrip(const envelope *env, const char *what)
{
    if (has_field0(&env->base))
        return;
    size_t n = georeg__repl__envelope__get_packed_size(env);
    uint8_t *b1 = malloc(n ? n : 1);
    FUZZ_CHECK(b1, "malloc");
    size_t w = georeg__repl__envelope__pack(env, b1);
    FUZZ_CHECK(w == n, "%s: packed %zu bytes, get_packed_size said %zu", what, w, n);
    envelope *back = georeg__repl__envelope__unpack(NULL, n, b1);
    FUZZ_CHECK(back, "%s: a packed envelope of %zu bytes does not decode", what, n);
    FUZZ_CHECK(back->body_case == env->body_case, "%s: body_case %d became %d", what,
               (int)env->body_case, (int)back->body_case);
    size_t n2 = georeg__repl__envelope__get_packed_size(back);
    uint8_t *b2 = malloc(n2 ? n2 : 1);
    FUZZ_CHECK(b2, "malloc");
    georeg__repl__envelope__pack(back, b2);
    FUZZ_CHECK(n2 == n && memcmp(b1, b2, n) == 0, "%s: re-encoding differs (%zu vs %zu bytes)",
               what, n, n2);
    georeg__repl__envelope__free_unpacked(back, NULL);
    free(b1);
    free(b2);
}

/* What the receiver sends goes through the same steps as wire_send, and the
 * primary must be able to decode it. */
err
fuzz_wire_send(repl *r, nng_socket s, envelope *env, uint64_t msg_id)
{
    (void)s;
    env->version = REPL_PROTOCOL_VERSION;
    env->sender = r->node_name;
    env->epoch = atomic_load(&r->epoch);
    env->msg_id = msg_id;
    size_t n = georeg__repl__envelope__get_packed_size(env);
    if (n > REPL_MAX_MSG)
        return ERR_INTERNAL;
    FUZZ_CHECK(env->body_case == GEOREG__REPL__ENVELOPE__BODY_ACK ||
                   env->body_case == GEOREG__REPL__ENVELOPE__BODY_HAVE_REPLY,
               "the receiver sent body %d", (int)env->body_case);
    roundtrip(env, "reply");
    return ERR_OK;
}

/* replies to one pipe (wire_send_to in receiver.c) go the same way */
err
fuzz_wire_send_to(repl *r, nng_socket s, uint32_t pipe, envelope *env)
{
    (void)pipe;
    return fuzz_wire_send(r, s, env, 0);
}

static bool
meta_key_ok(slice k)
{
    if (k.len < 1 || k.len > 200)
        return false;
    for (size_t i = 0; i < k.len; i++)
        if ((unsigned char)k.ptr[i] < 0x21 || (unsigned char)k.ptr[i] > 0x7e)
            return false;
    return true;
}

static err
fuzz_store_apply(store *s, const struct store_event *ev, const struct store_apply_extra *x)
{
    bool resyncing;
    pthread_mutex_lock(&R.smu);
    resyncing = R.resyncing;
    pthread_mutex_unlock(&R.smu);
    FUZZ_CHECK(ev->seq != 0 || resyncing, "a seq 0 event outside a resync");
    FUZZ_CHECK(ev->type <= EV_META_DELETE, "event type %d", (int)ev->type);
    bool meta = ev->type == EV_META_PUT || ev->type == EV_META_DELETE;
    if (ev->type != EV_NONE && !meta)
        FUZZ_CHECK(ref_name_valid(ev->repo), "type %d with repo \"%.*s\"", (int)ev->type,
                   (int)ev->repo.len, ev->repo.ptr);
    if (ev->type == EV_BLOB_LINK || ev->type == EV_BLOB_UNLINK || ev->type == EV_MANIFEST_PUT ||
        ev->type == EV_MANIFEST_DELETE)
        FUZZ_CHECK(ref_digest_valid(ev->digest), "type %d with digest \"%.*s\"", (int)ev->type,
                   (int)ev->digest.len, ev->digest.ptr);
    if (meta)
        FUZZ_CHECK(meta_key_ok(ev->tag), "type %d with key \"%.*s\"", (int)ev->type,
                   (int)ev->tag.len, ev->tag.ptr);
    else if (ev->type != EV_NONE && (ev->tag.len || ev->type == EV_TAG_DELETE))
        FUZZ_CHECK(ref_tag_valid(ev->tag), "type %d with tag \"%.*s\"", (int)ev->type,
                   (int)ev->tag.len, ev->tag.ptr);
    if (ev->type == EV_MANIFEST_PUT) {
        char d[DIGEST_MAX];
        digest_of(digest_alg_of(ev->digest.ptr), ev->body.ptr, ev->body.len, d);
        FUZZ_CHECK(slice_eq_cstr(ev->digest, d), "manifest body does not hash to its digest");
        FUZZ_CHECK(manifest_media_type_known(ev->media_type), "manifest media type \"%.*s\"",
                   (int)ev->media_type.len, ev->media_type.ptr);
        struct manifest_info mi;
        const char *why;
        FUZZ_CHECK(manifest_parse(ev->body, ev->media_type, &mi, &why) == ERR_OK,
                   "an invalid manifest was applied: %s", why);
        manifest_info_release(&mi);
        FUZZ_CHECK(x, "MANIFEST_PUT without its references");
        for (size_t i = 0; i < x->nrefs; i++)
            FUZZ_CHECK(ref_digest_valid(slice_of_cstr(x->refs[i].digest)), "reference %s",
                       x->refs[i].digest);
        if (x->subject) {
            FUZZ_CHECK(ref_digest_valid(slice_of_cstr(x->subject)), "subject %s", x->subject);
            json_error_t jerr;
            json_t *j = json_loadb(x->descriptor.ptr, x->descriptor.len, 0, &jerr);
            FUZZ_CHECK(json_is_object(j), "descriptor is not JSON: %s", jerr.text);
            json_decref(j);
        }
    }
    return store_apply(s, ev, x);
}

static void
reset_receiver(uint8_t flags)
{
    atomic_store(&R.epoch, 1);
    atomic_store(&R.demoted, false);
    /* promotion records one input taught it (unsigned: no keys) go with it */
    pthread_mutex_lock(&R.hmu);
    R.hist.n = 0;
    R.hist.base_epoch = 1;
    R.known.n = 0;
    R.known.base_epoch = 1;
    pthread_mutex_unlock(&R.hmu);
    pthread_mutex_lock(&R.smu);
    R.resyncing = flags & 1;
    R.resync_bytes = 0;
    R.primary_head = 0;
    R.primary_time_ms = 0;
    R.learned_primary_url[0] = '\0';
    R.primary_name[0] = '\0';
    R.apply_error[0] = '\0';
    pthread_mutex_unlock(&R.smu);
    /* applied seq 1: events must come as 2, 3, ... (0 only inside a resync) */
    pthread_mutex_lock(&S->commit_mu);
    S->applied = 1;
    pthread_mutex_unlock(&S->commit_mu);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    reset_receiver(flags);
    struct recv rc = {.r = &R, .url_configured = (flags & 2) != 0, .pipe = 1};
    hist_init(&rc.pending);
    /* unless flag 4 is set, the connection is taken as proven by the first frame's
     * sender at its epoch (a development listener without keys: no signature), so the
     * validation behind the peer checks is reached */
    bool proven = (flags & 4) == 0, first = true;
    size_t off = 1;
    while (off + 2 <= size) {
        size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;
        off += 2;
        if (len > size - off)
            len = size - off;
        /* an exact-size copy, as nng hands over a message body */
        uint8_t *msg = malloc(len ? len : 1);
        FUZZ_CHECK(msg, "malloc");
        memcpy(msg, data + off, len);
        off += len;
        envelope *env = georeg__repl__envelope__unpack(NULL, len, msg);
        free(msg);
        if (!env)
            continue;
        roundtrip(env, "input");
        if (first && proven) {
            rc.auth_pipe = rc.pipe;
            str_copy(rc.auth_name, sizeof rc.auth_name, env->sender ? env->sender : "");
            rc.auth_epoch = env->epoch;
        }
        first = false;
        if (env->version == REPL_PROTOCOL_VERSION) {
            handle(&rc, env);
            if (verbose)
                fprintf(stderr, "fuzz_repl: body %d: error=\"%s\" failed=%s done=%s applied=%llu\n",
                        (int)env->body_case, rc.error, rc.failed, rc.done,
                        (unsigned long long)store_applied_seq(S));
        }
        georeg__repl__envelope__free_unpacked(env, NULL);
    }
    ingest_drop(&rc); /* as receiver_main does when the connection changes */
    hist_release(&rc.pending);
    return 0;
}

/* ---- the structure-aware mutator ---- */

static uint64_t rng_state;

static unsigned
rnd(unsigned n)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return n ? (unsigned)((rng_state >> 33) % n) : 0;
}

/* Strings and byte buffers made while mutating one frame, freed after packing. */
struct arena {
    void *p[64];
    size_t n;
};

static void *
arena_alloc(struct arena *a, size_t n)
{
    if (a->n == sizeof a->p / sizeof a->p[0])
        return NULL;
    void *p = calloc(1, n ? n : 1);
    if (p)
        a->p[a->n++] = p;
    return p;
}

static void
arena_free(struct arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->p[i]);
    a->n = 0;
}

/* mutate_bytes returns libFuzzer's mutation of (p, n) in a new buffer of *out_n bytes. */
static uint8_t *
mutate_bytes(struct arena *a, const uint8_t *p, size_t n, size_t *out_n)
{
    size_t cap = n + 64 > 512 ? n + 64 : 512;
    uint8_t *b = arena_alloc(a, cap + 1);
    if (!b) {
        *out_n = 0;
        return NULL;
    }
    if (n)
        memcpy(b, p, n);
    *out_n = LLVMFuzzerMutate(b, n, cap);
    return b;
}

static char *
mutate_str(struct arena *a, const char *s)
{
    size_t n;
    char *b = (char *)mutate_bytes(a, (const uint8_t *)s, strlen(s), &n);
    if (!b)
        return (char *)s;
    b[n] = '\0';
    return b;
}

static char *
repeat(struct arena *a, char c, size_t n)
{
    char *b = arena_alloc(a, n + 1);
    if (b)
        memset(b, c, n);
    return b ? b : "";
}

static char *
pick_repo(struct arena *a, const char *cur)
{
    static const char *const v[] = {"", "library/app", "a", "Library/App", "a//b", "a/", "-a",
                                    "a__b.c-d/e", "a:b", "a/b/../c", "x y"};
    switch (rnd(4)) {
    case 0: return (char *)v[rnd(sizeof v / sizeof v[0])];
    case 1: return repeat(a, 'a', 250 + rnd(10));
    default: return mutate_str(a, cur);
    }
}

static char *
pick_tag(struct arena *a, const char *cur)
{
    static const char *const v[] = {"", "latest", "v1.0", "-x", ".x", "a b", "identity/robot",
                                    "policy/x", "k\x7f", "x"};
    switch (rnd(4)) {
    case 0: return (char *)v[rnd(sizeof v / sizeof v[0])];
    case 1: return repeat(a, 't', 126 + rnd(80));
    default: return mutate_str(a, cur);
    }
}

static char *
digest_of_bytes(struct arena *a, const void *p, size_t n, bool sha512)
{
    char *d = arena_alloc(a, DIGEST_MAX);
    if (!d)
        return "";
    digest_of(sha512 ? DIGEST_SHA512 : DIGEST_SHA256, p, n, d);
    return d;
}

static char *
pick_digest(struct arena *a, const char *cur)
{
    static const char *const v[] = {"", "sha256:", "sha256:abc", "md5:0123", "sha256:*"};
    switch (rnd(5)) {
    case 0: return (char *)v[rnd(sizeof v / sizeof v[0])];
    case 1: {
        char *d = digest_of_bytes(a, "{}", 2, rnd(2));
        if (*d && rnd(2))
            d[7] = 'A'; /* upper-case hex: invalid */
        return d;
    }
    default: return mutate_str(a, cur);
    }
}

static uint64_t
pick_u64(uint64_t cur)
{
    static const uint64_t v[] = {0, 1, 2, 3, 4, 40, 1u << 20, UINT32_MAX, INT64_MAX, UINT64_MAX};
    switch (rnd(3)) {
    case 0: return v[rnd(sizeof v / sizeof v[0])];
    case 1: return cur + 1;
    default: return cur ^ (1ull << rnd(64));
    }
}

static void
mutate_event(struct arena *a, Georeg__Repl__Event *e)
{
    static const char *const mts[] = {MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST,
                                      MT_DOCKER_LIST, "", "application/json", "text/plain"};
    switch (rnd(11)) {
    case 0: e->seq = pick_u64(e->seq); break;
    case 1: e->type = (Georeg__Repl__EventType)(rnd(5) ? (int)rnd(9) : (int)pick_u64(0)); break;
    case 2: e->repo = pick_repo(a, e->repo); break;
    case 3: e->digest = pick_digest(a, e->digest); break;
    case 4: e->tag = pick_tag(a, e->tag); break;
    case 5: e->media_type = rnd(2) ? (char *)mts[rnd(7)] : mutate_str(a, e->media_type); break;
    case 6:
    case 7: {
        size_t n;
        uint8_t *b = mutate_bytes(a, e->body.data, e->body.len, &n);
        if (b) {
            e->body.data = b;
            e->body.len = n;
        }
        break;
    }
    case 8: e->size = pick_u64(e->size); break;
    case 9: e->filtered = !e->filtered; break;
    default: e->time_ms = pick_u64(e->time_ms); break;
    }
    /* often keep the body's digest right, so the manifest itself gets parsed */
    if (e->type == GEOREG__REPL__EVENT_TYPE__MANIFEST_PUT && rnd(3))
        e->digest = digest_of_bytes(a, e->body.data, e->body.len, rnd(8) == 0);
}

static void
mutate_chunk(struct arena *a, Georeg__Repl__BlobChunk *c)
{
    switch (rnd(6)) {
    case 0: c->digest = pick_digest(a, c->digest); break;
    case 1: c->size = pick_u64(c->size); break;
    case 2: c->offset = pick_u64(c->offset); break;
    case 3: c->last = !c->last; break;
    default: {
        size_t n;
        uint8_t *b = mutate_bytes(a, c->data.data, c->data.len, &n);
        if (b) {
            c->data.data = b;
            c->data.len = n;
        }
        break;
    }
    }
    if (rnd(2)) { /* a whole blob in one chunk, consistent */
        c->offset = 0;
        c->size = c->data.len;
        c->last = true;
        c->digest = digest_of_bytes(a, c->data.data, c->data.len, rnd(8) == 0);
    }
}

/* mutate_frame decodes one envelope, changes it and packs it into out (at most max
 * bytes); 0 when it could not. */
static size_t
mutate_frame(const uint8_t *in, size_t n, uint8_t *out, size_t max)
{
    envelope *orig = georeg__repl__envelope__unpack(NULL, n, in);
    if (!orig)
        return 0;
    struct arena a = {0};
    /* shallow copies: the decoded message is only read, then freed untouched */
    envelope env = *orig;
    Georeg__Repl__EventBatch batch;
    Georeg__Repl__Event evs[16], *evp[16];
    Georeg__Repl__BlobChunk chunk;
    Georeg__Repl__Heartbeat hb;
    Georeg__Repl__HaveQuery hq;
    char *digests[16];
    switch (rnd(8)) {
    case 0: env.version = rnd(4) ? 1 : (uint32_t)pick_u64(env.version); break;
    case 1: env.epoch = rnd(2) ? rnd(3) : pick_u64(env.epoch); break;
    case 2: env.sender = mutate_str(&a, env.sender); break;
    default:
        switch (env.body_case) {
        case GEOREG__REPL__ENVELOPE__BODY_BATCH: {
            batch = *orig->batch;
            size_t k = batch.n_events < 16 ? batch.n_events : 16;
            for (size_t i = 0; i < k; i++) {
                evs[i] = *orig->batch->events[i];
                evp[i] = &evs[i];
            }
            unsigned op = rnd(10);
            if (op == 0 && k > 0 && k < 16) { /* duplicate an event */
                size_t i = rnd((unsigned)k);
                evs[k] = evs[i];
                evp[k] = &evs[k];
                k++;
            } else if (op == 1 && k > 0) { /* drop one */
                size_t i = rnd((unsigned)k);
                memmove(&evs[i], &evs[i + 1], (k - i - 1) * sizeof evs[0]);
                k--;
                for (size_t j = 0; j < k; j++)
                    evp[j] = &evs[j];
            } else if (k > 0) {
                mutate_event(&a, &evs[rnd((unsigned)k)]);
            }
            if (rnd(2)) /* sequence numbers that follow the receiver's applied seq (1) */
                for (size_t i = 0; i < k; i++)
                    evs[i].seq = i + 2;
            batch.n_events = k;
            batch.events = evp;
            env.batch = &batch;
            break;
        }
        case GEOREG__REPL__ENVELOPE__BODY_CHUNK:
            chunk = *orig->chunk;
            mutate_chunk(&a, &chunk);
            env.chunk = &chunk;
            break;
        case GEOREG__REPL__ENVELOPE__BODY_HEARTBEAT:
            hb = *orig->heartbeat;
            if (rnd(2))
                hb.head_seq = pick_u64(hb.head_seq);
            else
                hb.primary_url = mutate_str(&a, hb.primary_url);
            env.heartbeat = &hb;
            break;
        case GEOREG__REPL__ENVELOPE__BODY_HAVE_QUERY: {
            hq = *orig->have_query;
            size_t k = hq.n_digests < 16 ? hq.n_digests : 16;
            if (k) /* an empty repeated field decodes as NULL: memcpy(x, NULL, 0) is UB */
                memcpy(digests, hq.digests, k * sizeof digests[0]);
            if (k < 16 && rnd(2))
                digests[k++] = pick_digest(&a, "");
            else if (k)
                digests[rnd((unsigned)k)] = pick_digest(&a, digests[0]);
            hq.digests = digests;
            hq.n_digests = k;
            env.have_query = &hq;
            break;
        }
        default:
            env.epoch = pick_u64(env.epoch);
            break;
        }
    }
    size_t len = georeg__repl__envelope__get_packed_size(&env);
    size_t w = 0;
    if (len <= max)
        w = georeg__repl__envelope__pack(&env, out);
    arena_free(&a);
    georeg__repl__envelope__free_unpacked(orig, NULL);
    return w;
}

size_t
LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    rng_state = seed;
    if (size < 3 || rnd(2))
        return LLVMFuzzerMutate(data, size, max_size);
    /* the frames of the input */
    size_t off[64], len[64], nf = 0;
    for (size_t o = 1; o + 2 <= size && nf < 64;) {
        size_t l = (size_t)data[o] | (size_t)data[o + 1] << 8;
        o += 2;
        if (l > size - o)
            l = size - o;
        off[nf] = o;
        len[nf++] = l;
        o += l;
    }
    if (!nf)
        return LLVMFuzzerMutate(data, size, max_size);
    size_t k = rnd((unsigned)nf);
    uint8_t *out = malloc(max_size);
    uint8_t *frame = malloc(0x10000);
    if (!out || !frame) {
        free(out);
        free(frame);
        return LLVMFuzzerMutate(data, size, max_size);
    }
    size_t fl = 0;
    unsigned op = rnd(8); /* 0: duplicate frame k, 1: drop it, else: change it */
    if (op > 1) {
        fl = mutate_frame(data + off[k], len[k], frame, 0xffff);
        if (!fl) {
            free(out);
            free(frame);
            return LLVMFuzzerMutate(data, size, max_size);
        }
    }
    const uint8_t *pp[65];
    size_t pl[65], np = 0;
    for (size_t i = 0; i < nf; i++) {
        if (i == k && op == 1)
            continue;
        if (i == k && op > 1) {
            pp[np] = frame;
            pl[np++] = fl;
            continue;
        }
        pp[np] = data + off[i];
        pl[np++] = len[i];
        if (i == k) { /* op 0 */
            pp[np] = data + off[i];
            pl[np++] = len[i];
        }
    }
    size_t n = 0;
    bool ok = true;
    out[n++] = rnd(16) ? data[0] : (uint8_t)rnd(4);
    for (size_t i = 0; i < np && ok; i++) {
        if (n + 2 + pl[i] > max_size) {
            ok = false;
            break;
        }
        out[n++] = (uint8_t)(pl[i] & 0xff);
        out[n++] = (uint8_t)(pl[i] >> 8);
        memcpy(out + n, pp[i], pl[i]);
        n += pl[i];
    }
    if (ok) {
        memcpy(data, out, n);
    } else {
        n = LLVMFuzzerMutate(data, size, max_size);
    }
    free(out);
    free(frame);
    return n;
}
