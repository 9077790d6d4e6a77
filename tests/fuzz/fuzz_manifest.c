/* libFuzzer driver for common/manifest: manifest_parse and manifest_descriptor.
 *
 * Input: "CONTENT-TYPE\nBODY". The first line is the request's Content-Type (may be
 * empty); without a '\n' the whole input is the body and the Content-Type is empty.
 *
 * On every input manifest_parse must return ERR_OK or ERR_MANIFEST_INVALID with a
 * reason, and leave nothing to release on error. On success the result is checked
 * against the body as jansson reads it independently:
 *  - media_type is one of the four stored types; is_index follows it;
 *  - every reference and the subject is a valid digest; children of an index are
 *    manifests, the config and layers of an image are not;
 *  - annotations, when present, is the body's annotations object;
 * and manifest_descriptor's output (what the referrers API serves verbatim) must be
 * valid JSON carrying exactly that media type, digest, size, artifactType (the
 * body's non-empty artifactType, else an image's config mediaType) and annotations. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/digest.h"
#include "common/manifest.h"
#include "common/ref.h"

#define FUZZ_NAME "fuzz_manifest"
#include "fuzz.h"

static bool
json_str_eq(json_t *j, const char *s)
{
    return json_is_string(j) && json_string_length(j) == strlen(s) &&
           memcmp(json_string_value(j), s, json_string_length(j)) == 0;
}

/* check_result compares a successful parse with the body read independently. */
static void
check_result(const struct manifest_info *mi, slice body)
{
    FUZZ_CHECK(manifest_media_type_known(slice_of_cstr(mi->media_type)), "media_type %s",
               mi->media_type);
    bool idx = strcmp(mi->media_type, MT_OCI_INDEX) == 0 ||
               strcmp(mi->media_type, MT_DOCKER_LIST) == 0;
    FUZZ_CHECK(mi->is_index == idx, "is_index %d for %s", mi->is_index, mi->media_type);
    FUZZ_CHECK(mi->nrefs == 0 || mi->refs, "refs NULL with %zu refs", mi->nrefs);
    for (size_t i = 0; i < mi->nrefs; i++) {
        FUZZ_CHECK(ref_digest_valid(slice_of_cstr(mi->refs[i].digest)), "ref %zu digest %s", i,
                   mi->refs[i].digest);
        FUZZ_CHECK(mi->refs[i].is_manifest == mi->is_index, "ref %zu is_manifest", i);
    }
    if (mi->has_subject)
        FUZZ_CHECK(ref_digest_valid(slice_of_cstr(mi->subject)), "subject %s", mi->subject);

    json_error_t jerr;
    json_t *root = json_loadb(body.ptr, body.len, JSON_REJECT_DUPLICATES, &jerr);
    FUZZ_CHECK(json_is_object(root), "accepted a body jansson does not read as an object");
    if (!mi->is_index)
        FUZZ_CHECK(mi->nrefs >= 1, "an image manifest without its config reference");
    FUZZ_CHECK(mi->has_subject == (json_object_get(root, "subject") != NULL), "has_subject");

    /* what the descriptor must carry as artifactType */
    const char *want_at = json_string_value(json_object_get(root, "artifactType"));
    if ((!want_at || !*want_at) && !mi->is_index)
        want_at = json_string_value(json_object_get(json_object_get(root, "config"), "mediaType"));
    if (want_at && !*want_at)
        want_at = NULL;
    json_t *ann = json_object_get(root, "annotations");

    char digest[DIGEST_MAX];
    FUZZ_CHECK(digest_of(DIGEST_SHA256, body.ptr, body.len, digest) == ERR_OK, "digest_of");
    buf desc = BUF_INIT;
    FUZZ_CHECK(manifest_descriptor(mi, digest, body.len, &desc) == ERR_OK, "manifest_descriptor");
    FUZZ_CHECK(strlen(desc.ptr) == desc.len, "descriptor with a NUL byte");
    json_t *d = json_loadb(desc.ptr, desc.len, JSON_REJECT_DUPLICATES, &jerr);
    FUZZ_CHECK(json_is_object(d), "descriptor is not valid JSON (%s): %s", jerr.text, desc.ptr);
    FUZZ_CHECK(json_str_eq(json_object_get(d, "mediaType"), mi->media_type), "mediaType: %s",
               desc.ptr);
    FUZZ_CHECK(json_str_eq(json_object_get(d, "digest"), digest), "digest: %s", desc.ptr);
    json_t *sz = json_object_get(d, "size");
    FUZZ_CHECK(json_is_integer(sz) && (uint64_t)json_integer_value(sz) == body.len, "size: %s",
               desc.ptr);
    json_t *dat = json_object_get(d, "artifactType");
    if (want_at)
        FUZZ_CHECK(json_str_eq(dat, want_at), "artifactType: want \"%s\", descriptor %s", want_at,
                   desc.ptr);
    else
        FUZZ_CHECK(!dat, "artifactType without one in the manifest: %s", desc.ptr);
    json_t *dann = json_object_get(d, "annotations");
    if (ann)
        FUZZ_CHECK(json_equal(ann, dann), "annotations differ: %s", desc.ptr);
    else
        FUZZ_CHECK(!dann && mi->annotations.len == 0, "annotations without any: %s", desc.ptr);
    json_decref(d);
    json_decref(root);
    buf_release(&desc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t ct_len = nl ? (size_t)(nl - data) : 0;
    size_t body_off = nl ? ct_len + 1 : 0;
    /* exact-size copies so that reads past either slice are caught */
    char *ct = malloc(ct_len ? ct_len : 1);
    char *body = malloc(size - body_off ? size - body_off : 1);
    if (!ct || !body)
        abort();
    memcpy(ct, data, ct_len);
    memcpy(body, data + body_off, size - body_off);
    slice sct = {ct, ct_len}, sbody = {body, size - body_off};

    struct manifest_info mi;
    const char *why = NULL;
    err e = manifest_parse(sbody, sct, &mi, &why);
    if (e == ERR_OK) {
        check_result(&mi, sbody);
        manifest_info_release(&mi);
    } else {
        FUZZ_CHECK(e == ERR_MANIFEST_INVALID, "unexpected error %s", err_name(e));
        FUZZ_CHECK(why && *why, "no reason");
        FUZZ_CHECK(!mi.refs && mi.nrefs == 0 && mi.annotations.cap == 0,
                   "something left to release after an error");
    }
    free(ct);
    free(body);
    return 0;
}
