/* Writes the seed corpus of fuzz_repl (tests/fuzz/corpus/repl/): small valid
 * connections from a primary, in fuzz_repl's input format (a flags byte, then
 * [u16 little-endian length][packed Envelope] frames). Run by
 * `make -f tests/fuzz/Makefile seeds`; the output is committed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/digest.h"
#include "proto/replication.pb-c.h"

typedef Georeg__Repl__Envelope envelope;
typedef Georeg__Repl__Event event;

static const char *outdir;

struct seed {
    buf b;
};

static void
seed_begin(struct seed *s, uint8_t flags)
{
    buf_init(&s->b);
    buf_addc(&s->b, (char)flags);
}

static void
seed_frame(struct seed *s, envelope *env, uint64_t epoch, uint64_t msg_id)
{
    env->version = 1;
    env->sender = "primary";
    env->epoch = epoch;
    env->msg_id = msg_id;
    size_t n = georeg__repl__envelope__get_packed_size(env);
    if (n > 0xffff) {
        fprintf(stderr, "gen_repl_seeds: frame too large\n");
        exit(1);
    }
    uint8_t *p = malloc(n ? n : 1);
    georeg__repl__envelope__pack(env, p);
    char len[2] = {(char)(n & 0xff), (char)(n >> 8)};
    buf_add(&s->b, len, 2);
    buf_add(&s->b, p, n);
    free(p);
}

static void
seed_end(struct seed *s, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", outdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(s->b.ptr, 1, s->b.len, f) != s->b.len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
    buf_release(&s->b);
}

static void
frame_chunk(struct seed *s, const char *digest, const char *data, size_t size, size_t off,
            size_t len, uint64_t msg_id)
{
    envelope env = GEOREG__REPL__ENVELOPE__INIT;
    Georeg__Repl__BlobChunk c = GEOREG__REPL__BLOB_CHUNK__INIT;
    c.digest = (char *)digest;
    c.size = size;
    c.offset = off;
    c.data.data = (uint8_t *)data + off;
    c.data.len = len;
    c.last = off + len == size;
    env.body_case = GEOREG__REPL__ENVELOPE__BODY_CHUNK;
    env.chunk = &c;
    seed_frame(s, &env, 1, msg_id);
}

static void
frame_batch(struct seed *s, event **evs, size_t n, uint64_t msg_id)
{
    envelope env = GEOREG__REPL__ENVELOPE__INIT;
    Georeg__Repl__EventBatch b = GEOREG__REPL__EVENT_BATCH__INIT;
    b.events = evs;
    b.n_events = n;
    env.body_case = GEOREG__REPL__ENVELOPE__BODY_BATCH;
    env.batch = &b;
    seed_frame(s, &env, 1, msg_id);
}

static event
ev(uint64_t seq, Georeg__Repl__EventType type, const char *repo, const char *digest,
   const char *tag)
{
    event e = GEOREG__REPL__EVENT__INIT;
    e.seq = seq;
    e.time_ms = 1700000000000ull + seq;
    e.type = type;
    e.repo = (char *)repo;
    e.digest = (char *)digest;
    e.tag = (char *)tag;
    return e;
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_repl_seeds DIR\n");
        return 2;
    }
    outdir = argv[1];
    struct seed s;

    /* a heartbeat */
    {
        envelope env = GEOREG__REPL__ENVELOPE__INIT;
        Georeg__Repl__Heartbeat hb = GEOREG__REPL__HEARTBEAT__INIT;
        hb.head_seq = 5;
        hb.time_ms = 1700000000000ull;
        hb.primary_url = "https://primary.example:5000";
        env.body_case = GEOREG__REPL__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &hb;
        seed_begin(&s, 0);
        seed_frame(&s, &env, 1, 1);
        seed_end(&s, "heartbeat");
        /* the same from a stale epoch, then from a newer one */
        seed_begin(&s, 0);
        seed_frame(&s, &env, 0, 1);
        seed_frame(&s, &env, 7, 2);
        seed_end(&s, "heartbeat_epochs");
    }

    /* a have-query */
    char cfg_digest[DIGEST_MAX], man_digest[DIGEST_MAX], ref_digest[DIGEST_MAX];
    static const char cfg[] = "{}";
    digest_of(DIGEST_SHA256, cfg, 2, cfg_digest);
    {
        envelope env = GEOREG__REPL__ENVELOPE__INIT;
        Georeg__Repl__HaveQuery q = GEOREG__REPL__HAVE_QUERY__INIT;
        char *ds[3] = {cfg_digest, "sha256:nothex", "sha512:00"};
        q.query_id = 9;
        q.digests = ds;
        q.n_digests = 3;
        env.body_case = GEOREG__REPL__ENVELOPE__BODY_HAVE_QUERY;
        env.have_query = &q;
        seed_begin(&s, 0);
        seed_frame(&s, &env, 1, 1);
        seed_end(&s, "have_query");
    }

    /* a blob in one chunk, then every kind of event on it */
    char body[1024];
    int bl = snprintf(body, sizeof body,
                      "{\"schemaVersion\":2,"
                      "\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
                      "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\","
                      "\"digest\":\"%s\",\"size\":2},\"layers\":[]}",
                      cfg_digest);
    digest_of(DIGEST_SHA256, body, (size_t)bl, man_digest);
    char refbody[1024];
    int rl = snprintf(refbody, sizeof refbody,
                      "{\"schemaVersion\":2,"
                      "\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
                      "\"artifactType\":\"application/vnd.example.sig\","
                      "\"config\":{\"mediaType\":\"application/vnd.oci.empty.v1+json\","
                      "\"digest\":\"%s\",\"size\":2},\"layers\":[],"
                      "\"subject\":{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
                      "\"digest\":\"%s\",\"size\":%d},\"annotations\":{\"a\":\"b\"}}",
                      cfg_digest, man_digest, bl);
    digest_of(DIGEST_SHA256, refbody, (size_t)rl, ref_digest);
    {
        seed_begin(&s, 0);
        frame_chunk(&s, cfg_digest, cfg, 2, 0, 2, 1);
        event e[9];
        e[0] = ev(2, GEOREG__REPL__EVENT_TYPE__BLOB_LINK, "library/app", cfg_digest, "");
        e[0].size = 2;
        e[1] = ev(3, GEOREG__REPL__EVENT_TYPE__MANIFEST_PUT, "library/app", man_digest, "latest");
        e[1].media_type = "application/vnd.oci.image.manifest.v1+json";
        e[1].body.data = (uint8_t *)body;
        e[1].body.len = (size_t)bl;
        e[2] = ev(4, GEOREG__REPL__EVENT_TYPE__MANIFEST_PUT, "library/app", ref_digest, "");
        e[2].media_type = "application/vnd.oci.image.manifest.v1+json";
        e[2].body.data = (uint8_t *)refbody;
        e[2].body.len = (size_t)rl;
        e[3] = ev(5, GEOREG__REPL__EVENT_TYPE__TAG_DELETE, "library/app", "", "latest");
        e[4] = ev(6, GEOREG__REPL__EVENT_TYPE__MANIFEST_DELETE, "library/app", ref_digest, "");
        e[5] = ev(7, GEOREG__REPL__EVENT_TYPE__META_PUT, "", "", "identity/robot");
        e[5].body.data = (uint8_t *)"{\"grants\":[\"library/*:pull\"]}";
        e[5].body.len = strlen((char *)e[5].body.data);
        e[6] = ev(8, GEOREG__REPL__EVENT_TYPE__META_DELETE, "", "", "identity/robot");
        e[7] = ev(9, GEOREG__REPL__EVENT_TYPE__BLOB_UNLINK, "library/app", cfg_digest, "");
        e[8] = ev(10, GEOREG__REPL__EVENT_TYPE__MANIFEST_PUT, "library/app", man_digest, "");
        e[8].filtered = true;
        event *ep[9];
        for (int i = 0; i < 9; i++)
            ep[i] = &e[i];
        frame_batch(&s, ep, 9, 2);
        seed_end(&s, "events");
    }

    /* a blob in three chunks */
    {
        static const char data[] = "0123456789abcdefghij";
        char d[DIGEST_MAX];
        digest_of(DIGEST_SHA256, data, 20, d);
        seed_begin(&s, 0);
        frame_chunk(&s, d, data, 20, 0, 8, 1);
        frame_chunk(&s, d, data, 20, 8, 8, 2);
        frame_chunk(&s, d, data, 20, 16, 4, 3);
        seed_end(&s, "chunks");
        /* a sha512 blob whose content does not match its digest */
        char d5[DIGEST_MAX];
        digest_of(DIGEST_SHA512, "other", 5, d5);
        seed_begin(&s, 0);
        frame_chunk(&s, d5, data, 20, 0, 20, 1);
        seed_end(&s, "chunk_mismatch");
    }

    /* a resync: begin, snapshot records (seq 0), end */
    {
        seed_begin(&s, 0);
        envelope env = GEOREG__REPL__ENVELOPE__INIT;
        Georeg__Repl__ResyncBegin rb = GEOREG__REPL__RESYNC_BEGIN__INIT;
        rb.resync_id = 3;
        rb.snapshot_seq = 40;
        rb.total_bytes = 1000;
        env.body_case = GEOREG__REPL__ENVELOPE__BODY_RESYNC_BEGIN;
        env.resync_begin = &rb;
        seed_frame(&s, &env, 1, 1);
        frame_chunk(&s, cfg_digest, cfg, 2, 0, 2, 2);
        event e[2];
        e[0] = ev(0, GEOREG__REPL__EVENT_TYPE__BLOB_LINK, "library/app", cfg_digest, "");
        e[1] = ev(0, GEOREG__REPL__EVENT_TYPE__MANIFEST_PUT, "library/app", man_digest, "v1");
        e[1].body.data = (uint8_t *)body;
        e[1].body.len = (size_t)bl;
        event *ep[2] = {&e[0], &e[1]};
        frame_batch(&s, ep, 2, 3);
        envelope end = GEOREG__REPL__ENVELOPE__INIT;
        Georeg__Repl__ResyncEnd re = GEOREG__REPL__RESYNC_END__INIT;
        re.resync_id = 3;
        re.snapshot_seq = 40;
        end.body_case = GEOREG__REPL__ENVELOPE__BODY_RESYNC_END;
        end.resync_end = &re;
        seed_frame(&s, &end, 1, 4);
        seed_end(&s, "resync");
    }

    /* found by fuzz_repl: metadata events without a key were applied */
    {
        seed_begin(&s, 0);
        event e[2];
        e[0] = ev(2, GEOREG__REPL__EVENT_TYPE__META_PUT, "", "", "");
        e[0].body.data = (uint8_t *)"x";
        e[0].body.len = 1;
        e[1] = ev(3, GEOREG__REPL__EVENT_TYPE__META_DELETE, "", "", "");
        event *ep[2] = {&e[0], &e[1]};
        frame_batch(&s, ep, 1, 1);
        frame_batch(&s, ep + 1, 1, 2);
        seed_end(&s, "repro_meta_empty_key");
    }

    /* messages a primary never sends: an Ack and a Hello */
    {
        seed_begin(&s, 1);
        envelope env = GEOREG__REPL__ENVELOPE__INIT;
        Georeg__Repl__Ack ack = GEOREG__REPL__ACK__INIT;
        ack.applied_seq = 3;
        ack.error = "x";
        env.body_case = GEOREG__REPL__ENVELOPE__BODY_ACK;
        env.ack = &ack;
        seed_frame(&s, &env, 1, 1);
        envelope h = GEOREG__REPL__ENVELOPE__INIT;
        Georeg__Repl__Hello hello = GEOREG__REPL__HELLO__INIT;
        hello.applied_seq = 1;
        hello.filter_hash = "0123456789abcdef";
        h.body_case = GEOREG__REPL__ENVELOPE__BODY_HELLO;
        h.hello = &hello;
        seed_frame(&s, &h, 1, 2);
        seed_end(&s, "unexpected");
    }
    return 0;
}
