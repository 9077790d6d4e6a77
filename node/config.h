/* Node configuration: one YAML file, every key overridable by an environment
 * variable (node.data_dir -> GEOREG_NODE_DATA_DIR; list items by index:
 * replication.replicas.0.name -> GEOREG_REPLICATION_REPLICAS_0_NAME; lists of
 * strings as comma-separated values), then the quick command-line flags. The
 * result is frozen before the node starts. */
#ifndef GEOREG_CONFIG_H
#define GEOREG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

#define CFG_MAX_REPLICAS 16
#define CFG_MAX_GLOBS 32
#define CFG_MAX_LISTENERS 4
#define CFG_MAX_CIDRS 32

struct cfg_globs {
    char *items[CFG_MAX_GLOBS];
    size_t n;
};

struct cfg_replica {
    char name[64];
    char address[256]; /* nng URL: tls+tcp://host:port or tcp://host:port */
    char url[256];     /* cluster regions: the region's HTTP URL */
    bool eligible;     /* cluster regions: may become primary (default true) */
    struct cfg_globs include, exclude;           /* repository globs */
    struct cfg_globs include_tags, exclude_tags; /* tag globs */
};

struct cfg_tls {
    char cert[1024];
    char key[1024];
    char ca[1024];
    char client_cert[1024]; /* replication: the clientAuth certificate (else cert) */
};

struct cfg {
    char config_path[1024]; /* the file it was loaded from ("" for none): reloads */
    /* node */
    char name[64];
    char data_dir[1024];
    int log_level;

    /* http */
    char listen[128];
    unsigned workers; /* event loops; 0 = one per core */
    unsigned max_connections;
    unsigned max_connections_per_address; /* 0: unlimited */
    bool access_log;                      /* request log at info */
    uint64_t header_timeout_ms, idle_timeout_ms, body_timeout_ms, drain_timeout_ms;
    uint64_t max_header_bytes, max_manifest_bytes;
    char public_url[256];
    struct cfg_tls http_tls;
    struct cfg_globs http_allow; /* CIDRs for the public listener (none: any) */
    bool http_enabled;           /* false: no public listener (private endpoint only) */
    bool http_insecure;          /* plain HTTP allowed on non-loopback addresses */
    char private_listen[128];
    struct cfg_globs private_allow;
    struct cfg_tls private_tls;

    /* storage */
    uint64_t inline_max;
    uint64_t cache_bytes;
    uint64_t upload_max_age_s;
    unsigned max_uploads;              /* open upload sessions per node; 0: unlimited */
    unsigned max_uploads_per_identity; /* per client identity (or address); 0: unlimited */
    uint64_t min_free;                 /* writes refused (507) below this many free bytes */
    uint64_t upload_idle_timeout_s;    /* idle sessions are purged after this */

    /* replication */
    bool primary;         /* role: primary | secondary */
    char repl_listen[256];
    char primary_url[256]; /* secondaries: the primary's HTTP URL, named in DENIED errors */
    struct cfg_tls repl_tls;
    bool repl_insecure;    /* plain tcp:// allowed */
    unsigned repl_window;  /* messages in flight per replica */
    uint64_t repl_chunk_bytes;
    uint64_t repl_log_retention; /* events kept beyond the slowest replica, at most */
    uint64_t repl_heartbeat_ms;
    uint64_t repl_min_epoch;
    struct cfg_globs repl_primaries; /* secondaries: names allowed to command it */
    struct cfg_replica replicas[CFG_MAX_REPLICAS];
    size_t nreplicas;
    uint64_t repl_max_staleness_ms; /* a secondary staler than this is not ready */

    /* cluster: one description every node loads (regions; the role is state) */
    struct cfg_replica regions[CFG_MAX_REPLICAS];
    size_t nregions;
    char initial_primary[64];
    struct cfg_globs etcd_endpoints; /* cluster.etcd.endpoints: automatic failover */
    uint64_t etcd_ttl_ms;
    char etcd_prefix[128];
    /* replication.sync: {replicas: N | [names], timeout, max_waiters} */
    unsigned sync_replicas;       /* acks needed (replicas: N); 0 with no names: off */
    struct cfg_globs sync_names;  /* replicas: [names]: every one must ack */
    uint64_t sync_timeout_ms;     /* validated by replication (more than 0, at most 60 s) */
    unsigned sync_max_waiters;    /* writes waiting at once; 0: the default (4096) */

    /* auth */
    int auth_mode; /* enum auth_mode; -1 until stated (auth.mode is required) */
    bool allow_none_off_loopback; /* auth.mode none on a non-loopback listener */
    char auth_service[128];
    char auth_realm[512];
    char admin_password_file[1024];
    bool admin_enabled;
    uint64_t token_ttl_ms;
    struct cfg_globs anonymous_pull;

    /* audit */
    uint64_t audit_retention_ms;
};

/* cfg_parse_auth_mode: "none" 0, "basic" 1, "token" 2 (enum auth_mode); -1 otherwise. */
int cfg_parse_auth_mode(const char *v);
/* cfg_defaults fills c with the built-in defaults. */
void cfg_defaults(struct cfg *c);
/* cfg_load reads path (NULL: no file) over c, then the environment. On error *why
 * receives a message naming the key (static or in why_buf). */
err cfg_load(struct cfg *c, const char *path, char *why, size_t why_len);
/* cfg_validate checks rules that span keys, after flags were applied (plain HTTP only
 * on loopback unless http.insecure). ERR_CONFIG with a message in why. */
err cfg_validate(const struct cfg *c, char *why, size_t why_len);
/* cfg_release frees the glob strings. */
void cfg_release(struct cfg *c);
/* cfg_parse_duration parses "250ms", "10s", "5m", "2h", "30d" or a bare number of
 * seconds into milliseconds. */
bool cfg_parse_duration(const char *s, uint64_t *ms);
/* cfg_parse_size parses "512", "64KiB", "64k", "4MiB", "1G" into bytes. */
bool cfg_parse_size(const char *s, uint64_t *bytes);

#endif
