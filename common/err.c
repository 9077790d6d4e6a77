/* The error table's lookups, generated from ERR_TABLE. */
#include "err.h"

#include <errno.h>
#include <stddef.h>

struct err_info {
    const char *name;
    int status;
    const char *code;
    const char *msg;
};

static const struct err_info err_infos[] = {
#define ERR_INFO_(name, status, code, msg) {#name, status, code, msg},
    ERR_TABLE(ERR_INFO_)
#undef ERR_INFO_
};

static const struct err_info *
err_info_of(err e)
{
    if ((unsigned)e >= ERR__COUNT)
        e = ERR_INTERNAL;
    return &err_infos[e];
}

const char *
err_str(err e)
{
    return err_info_of(e)->msg;
}

const char *
err_name(err e)
{
    return err_info_of(e)->name;
}

int
err_http_status(err e)
{
    return err_info_of(e)->status;
}

const char *
err_oci_code(err e)
{
    const char *c = err_info_of(e)->code;
    return c ? c : "UNKNOWN";
}

err
err_from_errno(int e)
{
    switch (e) {
    case 0:
        return ERR_OK;
    case ENOMEM:
        return ERR_NOMEM;
    case ENOENT:
        return ERR_NOT_FOUND;
    case EEXIST:
        return ERR_EXISTS;
    case EAGAIN:
        return ERR_WOULDBLOCK;
    case EINVAL:
        return ERR_INVALID;
    case ENOSPC:
    case EDQUOT:
        return ERR_INSUFFICIENT_STORAGE;
    default:
        return ERR_IO;
    }
}
