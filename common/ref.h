/* The OCI grammar for repository names, tags and digests. Anything that fails
 * these checks is answered with NAME_INVALID, TAG_INVALID or DIGEST_INVALID and
 * never reaches a storage key. */
#ifndef GEOREG_REF_H
#define GEOREG_REF_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

/* Limits: a repository name (with slashes) and a tag, without the NUL. */
#define REF_NAME_MAX 255
#define REF_TAG_MAX 128

/* ref_name_valid: path components of [a-z0-9]+ joined by '.', '_', '__' or runs of
 * '-', separated by single '/', at most REF_NAME_MAX bytes. */
bool ref_name_valid(slice s);
/* ref_tag_valid: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}. */
bool ref_tag_valid(slice s);
/* ref_digest_valid: "sha256:" + 64 lowercase hex or "sha512:" + 128 lowercase hex,
 * the two algorithms georeg verifies; anything else is DIGEST_INVALID. */
bool ref_digest_valid(slice s);
/* ref_is_digest: s looks like a digest reference (contains ':'), valid or not. */
bool ref_is_digest(slice s);
/* ref_glob_match matches a repository name against a glob where '*' matches within
 * one path segment and '**' matches across segments. Cost is at most
 * O(len(glob) * len(name)); a glob or name longer than 4096 bytes never matches. */
bool ref_glob_match(const char *glob, const char *name);

#endif
