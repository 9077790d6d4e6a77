/* Parsing and validation of OCI and Docker schema 2 manifests and indexes. The
 * registry stores manifests byte-exact; this only validates them and extracts what
 * must be indexed: referenced blobs and child manifests, the subject and the
 * descriptor the referrers API lists. */
#ifndef GEOREG_MANIFEST_H
#define GEOREG_MANIFEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "digest.h"
#include "err.h"

#define MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MT_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"

struct manifest_ref {
    char digest[DIGEST_MAX];
    uint64_t size;
    bool is_manifest; /* a child of an index */
};

struct manifest_info {
    char media_type[256];
    char artifact_type[256]; /* artifactType, or config.mediaType of an image manifest */
    bool is_index;
    struct manifest_ref *refs; /* owned; free with manifest_info_release */
    size_t nrefs;
    bool has_subject;
    char subject[DIGEST_MAX];
    buf annotations; /* the annotations object as compact JSON, empty when absent */
};

/* manifest_parse validates body (with the request's Content-Type, which may be empty)
 * and fills out. ERR_MANIFEST_INVALID with a reason in *why (static string) for
 * anything malformed or unsupported (schema 1 included). On error out holds nothing
 * to release; on success release it with manifest_info_release. */
err manifest_parse(slice body, slice content_type, struct manifest_info *out, const char **why);
void manifest_info_release(struct manifest_info *m);
/* manifest_descriptor writes the descriptor of this manifest (as the referrers API
 * lists it) into out as compact JSON. */
err manifest_descriptor(const struct manifest_info *m, const char *digest, uint64_t size, buf *out);
/* manifest_media_type_known: one of the four media types georeg stores. */
bool manifest_media_type_known(slice mt);

#endif
