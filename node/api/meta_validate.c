/* Validation of replicated metadata events for the secondary's receiver: a
 * META_PUT or META_DEL is applied only under a key prefix this node knows, with a
 * body its own admin API would have written. Registered with replication as a
 * callback (repl_options.meta_validate), so replication/ does not look up into
 * node/. */
#include <string.h>

#include "../auth/auth.h"
#include "../node.h"
#include "../../common/banned.h"

bool
meta_validate(void *arg, const char *key, const void *val, size_t len, bool del,
              const char **why)
{
    (void)arg;
    if (strncmp(key, "id/", 3) == 0) {
        const char *name = key + 3;
        if (del) {
            *why = "identity name invalid";
            return auth_name_valid(name);
        }
        return auth_record_valid(name, (slice){val, len}, why);
    }
    *why = "unknown metadata key prefix";
    return false;
}
