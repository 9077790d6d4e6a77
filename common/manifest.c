/* Manifest validation with jansson. Only structure is checked here; whether the
 * referenced content exists is the store's job (under its commit lock). */
#include "manifest.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "ref.h"
#include "banned.h"

/* A manifest may not reference more than this many descriptors. */
#define MANIFEST_MAX_REFS 10000

bool
manifest_media_type_known(slice mt)
{
    return slice_eq_cstr(mt, MT_OCI_MANIFEST) || slice_eq_cstr(mt, MT_OCI_INDEX) ||
           slice_eq_cstr(mt, MT_DOCKER_MANIFEST) || slice_eq_cstr(mt, MT_DOCKER_LIST);
}

static bool
is_index_type(const char *mt)
{
    return strcmp(mt, MT_OCI_INDEX) == 0 || strcmp(mt, MT_DOCKER_LIST) == 0;
}

/* Layers whose bytes live elsewhere (Windows base layers): never pushed. */
static bool
is_foreign(const char *mt, json_t *desc)
{
    return (strstr(mt, "foreign") || strstr(mt, "nondistributable")) &&
           json_is_array(json_object_get(desc, "urls"));
}

/* parse_descriptor checks mediaType, digest and size of one descriptor. */
static bool
parse_descriptor(json_t *d, struct manifest_ref *r, const char **mt, const char **why)
{
    if (!json_is_object(d)) {
        *why = "descriptor is not an object";
        return false;
    }
    json_t *jmt = json_object_get(d, "mediaType");
    json_t *jdg = json_object_get(d, "digest");
    json_t *jsz = json_object_get(d, "size");
    if (!json_is_string(jmt)) {
        *why = "descriptor without mediaType";
        return false;
    }
    if (!json_is_string(jdg) ||
        !ref_digest_valid((slice){json_string_value(jdg), json_string_length(jdg)})) {
        *why = "descriptor with a missing or invalid digest";
        return false;
    }
    if (!json_is_integer(jsz) || json_integer_value(jsz) < 0) {
        *why = "descriptor with a missing or negative size";
        return false;
    }
    str_copy(r->digest, sizeof r->digest, json_string_value(jdg));
    r->size = (uint64_t)json_integer_value(jsz);
    *mt = json_string_value(jmt);
    return true;
}

void
manifest_info_release(struct manifest_info *m)
{
    free(m->refs);
    m->refs = NULL;
    m->nrefs = 0;
    buf_release(&m->annotations);
}

err
manifest_parse(slice body, slice content_type, struct manifest_info *out, const char **why)
{
    json_error_t jerr;
    json_t *root = NULL;
    err e = ERR_MANIFEST_INVALID;
    memset(out, 0, sizeof *out);
    buf_init(&out->annotations);
    *why = "manifest invalid";

    /* strip parameters: "type; charset=utf-8" */
    for (size_t i = 0; i < content_type.len; i++) {
        if (content_type.ptr[i] == ';') {
            content_type.len = i;
            break;
        }
    }
    while (content_type.len && content_type.ptr[content_type.len - 1] == ' ')
        content_type.len--;
    if (slice_starts_with(content_type, "application/vnd.docker.distribution.manifest.v1")) {
        *why = "Docker schema 1 manifests are not supported";
        goto out;
    }

    root = json_loadb(body.ptr, body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        *why = "manifest is not valid JSON";
        goto out;
    }
    if (!json_is_object(root)) {
        *why = "manifest is not a JSON object";
        goto out;
    }
    json_t *sv = json_object_get(root, "schemaVersion");
    if (json_is_integer(sv) && json_integer_value(sv) == 1) {
        *why = "Docker schema 1 manifests are not supported";
        goto out;
    }
    if (!json_is_integer(sv) || json_integer_value(sv) != 2) {
        *why = "schemaVersion must be 2";
        goto out;
    }

    json_t *jmt = json_object_get(root, "mediaType");
    const char *mt = NULL;
    if (jmt && !json_is_string(jmt)) {
        *why = "mediaType is not a string";
        goto out;
    }
    bool generic_ct = content_type.len == 0 || slice_eq_cstr(content_type, "application/json") ||
                      slice_eq_cstr(content_type, "application/octet-stream");
    if (jmt) {
        mt = json_string_value(jmt);
        if (!generic_ct && !slice_eq_cstr(content_type, mt)) {
            *why = "Content-Type does not match the manifest's mediaType";
            goto out;
        }
    } else if (!generic_ct) {
        str_copy_slice(out->media_type, sizeof out->media_type, content_type);
        mt = out->media_type;
    } else if (json_object_get(root, "manifests")) {
        mt = MT_OCI_INDEX;
    } else {
        mt = MT_OCI_MANIFEST;
    }
    if (!manifest_media_type_known(slice_of_cstr(mt))) {
        *why = "unsupported manifest media type";
        goto out;
    }
    str_copy(out->media_type, sizeof out->media_type, mt);
    out->is_index = is_index_type(mt);

    json_t *at = json_object_get(root, "artifactType");
    if (at && !json_is_string(at)) {
        *why = "artifactType is not a string";
        goto out;
    }
    /* the referrers API serves artifact_type: never a truncated one */
    if (at && !str_copy(out->artifact_type, sizeof out->artifact_type, json_string_value(at))) {
        *why = "artifactType is longer than 255 bytes";
        goto out;
    }

    json_t *list;
    json_t *config = NULL;
    if (out->is_index) {
        list = json_object_get(root, "manifests");
        if (!json_is_array(list)) {
            *why = "index without a manifests array";
            goto out;
        }
    } else {
        config = json_object_get(root, "config");
        list = json_object_get(root, "layers");
        if (!config) {
            *why = "image manifest without config";
            goto out;
        }
        if (!json_is_array(list)) {
            if (list || strcmp(mt, MT_OCI_MANIFEST) != 0) {
                *why = "image manifest without a layers array";
                goto out;
            }
        }
    }
    size_t n = (list ? json_array_size(list) : 0) + (config ? 1 : 0);
    if (n > MANIFEST_MAX_REFS) {
        *why = "manifest references too many descriptors";
        goto out;
    }
    out->refs = calloc(n ? n : 1, sizeof *out->refs);
    if (!out->refs) {
        e = ERR_NOMEM;
        goto out;
    }
    if (config) {
        const char *cmt;
        if (!parse_descriptor(config, &out->refs[out->nrefs], &cmt, why))
            goto out;
        out->nrefs++;
        if (!out->artifact_type[0] &&
            !str_copy(out->artifact_type, sizeof out->artifact_type, cmt)) {
            *why = "config mediaType is longer than 255 bytes";
            goto out;
        }
    }
    for (size_t i = 0; list && i < json_array_size(list); i++) {
        json_t *d = json_array_get(list, i);
        struct manifest_ref *r = &out->refs[out->nrefs];
        const char *dmt;
        if (!parse_descriptor(d, r, &dmt, why))
            goto out;
        if (out->is_index) {
            r->is_manifest = true;
        } else if (is_foreign(dmt, d)) {
            continue; /* not stored here, not checked */
        }
        out->nrefs++;
    }

    json_t *subj = json_object_get(root, "subject");
    if (subj) {
        struct manifest_ref sr;
        const char *smt;
        if (!parse_descriptor(subj, &sr, &smt, why))
            goto out;
        out->has_subject = true;
        str_copy(out->subject, sizeof out->subject, sr.digest);
    }
    json_t *ann = json_object_get(root, "annotations");
    if (ann) {
        if (!json_is_object(ann)) {
            *why = "annotations is not an object";
            goto out;
        }
        char *s = json_dumps(ann, JSON_COMPACT | JSON_SORT_KEYS);
        if (s) {
            buf_adds(&out->annotations, s);
            free(s);
        }
    }
    e = ERR_OK;
out:
    json_decref(root);
    if (e)
        manifest_info_release(out);
    return e;
}

err
manifest_descriptor(const struct manifest_info *m, const char *digest, uint64_t size, buf *out)
{
    buf_reset(out);
    err e = buf_adds(out, "{\"mediaType\":");
    if (!e)
        e = buf_add_json_str(out, m->media_type, strlen(m->media_type));
    if (!e)
        e = buf_adds(out, ",\"digest\":");
    if (!e)
        e = buf_add_json_str(out, digest, strlen(digest));
    if (!e)
        e = buf_addf(out, ",\"size\":%llu", (unsigned long long)size);
    if (!e && m->artifact_type[0]) {
        e = buf_adds(out, ",\"artifactType\":");
        if (!e)
            e = buf_add_json_str(out, m->artifact_type, strlen(m->artifact_type));
    }
    if (!e && m->annotations.len) {
        e = buf_adds(out, ",\"annotations\":");
        if (!e)
            e = buf_add(out, m->annotations.ptr, m->annotations.len);
    }
    if (!e)
        e = buf_addc(out, '}');
    return e;
}
