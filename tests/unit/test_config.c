/*
 * test_config.c — unit tests for host/config.c (schema, defaults, FILE:LINE errors,
 * addresses, protocol names) and host/config_view.c (the plugin's cfg_* view and the
 * section <-> text round trip). Fixtures live in tests/unit/fixtures; each broken one
 * says in its first line which line is wrong.
 */
/* Included by relative path: the build's autoheader also writes a "config.h" that an
 * -I. earlier on the command line would otherwise find first. */
#include "../../host/config.h"
#include "../../host/config_view.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mp_test.h"

#ifndef MP_TEST_FIXTURES
#error "MP_TEST_FIXTURES must name the fixtures directory"
#endif

#define FIX(name) MP_TEST_FIXTURES "/" name
#define EXAMPLE_CONF MP_TEST_FIXTURES "/example_full.conf"

/* ------------------------------------------------------------------ helpers */

static char *fixtures_dir(void) { return realpath(MP_TEST_FIXTURES, NULL); }

/* "<dir>/<rest>" in a static buffer, for comparing resolved paths. */
static const char *in_dir(const char *dir, const char *rest)
{
    static char buf[PATH_MAX + 64];
    snprintf(buf, sizeof(buf), "%s/%s", dir, rest);
    return buf;
}

static int starts_with(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Loads a fixture expected to fail; checks the exact "FILE:LINE: " prefix and a piece of
 * the reason. `file` is what the message should name (the fixture, or an include). */
static void expect_file_error(int *mp_test_failed_, const char *path, const char *file,
                              int line, const char *fragment)
{
    mp_host_config *cfg = (mp_host_config *)0x1;
    char err[512] = "";
    int rc = mp_config_load(path, &cfg, err, sizeof(err));
    MP_CHECK_EQ_INT(rc, -EINVAL);
    MP_CHECK(cfg == NULL);
    char prefix[PATH_MAX + 32];
    snprintf(prefix, sizeof(prefix), "%s:%d: ", file, line);
    if (!starts_with(err, prefix)) {
        fprintf(stderr, "  expected prefix \"%s\" in \"%s\"\n", prefix, err);
        *mp_test_failed_ = 1;
    }
    MP_CHECK_CONTAINS(err, fragment);
    mp_config_free(rc == 0 ? cfg : NULL);
}

static void expect_string_error(int *mp_test_failed_, const char *text, int line,
                                const char *fragment)
{
    mp_host_config *cfg = NULL;
    char err[512] = "";
    int rc = mp_config_load_string(text, "inline.conf", MP_TEST_FIXTURES, &cfg, err,
                                   sizeof(err));
    MP_CHECK_EQ_INT(rc, -EINVAL);
    MP_CHECK(cfg == NULL);
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "inline.conf:%d: ", line);
    if (!starts_with(err, prefix)) {
        fprintf(stderr, "  expected prefix \"%s\" in \"%s\" for:\n%s\n", prefix, err, text);
        *mp_test_failed_ = 1;
    }
    MP_CHECK_CONTAINS(err, fragment);
    if (rc == 0)
        mp_config_free(cfg);
}

static mp_host_config *load_ok(int *mp_test_failed_, const char *path)
{
    mp_host_config *cfg = NULL;
    char err[512] = "";
    int rc = mp_config_load(path, &cfg, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "  load %s: %s\n", path, err);
    MP_CHECK_EQ_INT(rc, 0);
    return cfg;
}

/* ------------------------------------------------------------------ loading */

MP_TEST(example_config_loads)
{
    mp_host_config *cfg = load_ok(mp_test_failed_, EXAMPLE_CONF);
    if (!cfg)
        return;
    MP_CHECK_EQ_INT(cfg->workers, 0);
    MP_CHECK_STR(cfg->plugin_dir, "/usr/local/lib/marchproxy/plugins");
    MP_CHECK_STR(cfg->state_dir, "/var/lib/marchproxy");
    MP_CHECK_EQ_INT(cfg->log_level, MP_LOG_INFO);
    MP_CHECK(cfg->autoload);
    MP_CHECK_EQ_INT(cfg->drain_timeout_ms, 30000);
    MP_CHECK_STR(cfg->grpc.address, "127.0.0.1:50051");
    MP_CHECK_EQ_INT(cfg->grpc.max_message_bytes, 4194304);
    MP_CHECK_EQ_INT(cfg->grpc.max_concurrent_streams, 100);
    MP_CHECK(cfg->grpc.tls_cert == NULL && cfg->grpc.tls_key == NULL &&
             cfg->grpc.tls_client_ca == NULL);
    MP_CHECK(!cfg->grpc.require_client_cert);

    MP_CHECK_EQ_INT(cfg->n_listeners, 1);
    if (cfg->n_listeners == 1) {
        MP_CHECK_STR(cfg->listeners[0].name, "web");
        MP_CHECK_STR(cfg->listeners[0].address, "127.0.0.1:8080");
        MP_CHECK_EQ_INT(cfg->listeners[0].n_modules, 1);
        if (cfg->listeners[0].n_modules == 1)
            MP_CHECK_STR(cfg->listeners[0].modules[0], "alb");
        MP_CHECK(cfg->listeners[0].default_module == NULL);
        MP_CHECK_EQ_INT(cfg->listeners[0].sniff_timeout_ms, 5000);
    }
    MP_CHECK_EQ_INT(cfg->n_routes, 1);
    if (cfg->n_routes == 1) {
        const mp_route_cfg *r = &cfg->routes[0];
        MP_CHECK_STR(r->id, "http-to-alb");
        MP_CHECK_EQ_INT(r->protocol, MP_PROTO_HTTP);
        MP_CHECK_EQ_INT(r->destination_port, 8080);
        MP_CHECK_STR(r->source, "127.0.0.0/8");
        MP_CHECK(r->destination == NULL && r->path == NULL);
        MP_CHECK_EQ_INT(r->priority, 10);
        MP_CHECK_STR(r->target, "alb");
    }
    MP_CHECK_EQ_INT(cfg->n_rate_limits, 1);
    if (cfg->n_rate_limits == 1) {
        const mp_rate_limit_cfg *r = &cfg->rate_limits[0];
        MP_CHECK_STR(r->id, "alb-global");
        MP_CHECK_STR(r->instance, "alb");
        MP_CHECK_STR(r->target, "*");
        MP_CHECK_EQ_INT(r->requests_per_second, 1000);
        MP_CHECK_EQ_INT(r->requests_per_minute, 0);
        MP_CHECK_EQ_INT(r->requests_per_hour, 0);
        MP_CHECK_EQ_INT(r->burst_size, 2000);
        MP_CHECK(r->enabled);
    }
    MP_CHECK_EQ_INT(cfg->n_instances, 1);
    const mp_instance_cfg *alb = mp_config_find_instance(cfg, "alb");
    MP_CHECK(alb != NULL);
    if (alb) {
        MP_CHECK_STR(alb->plugin, "alb");
        MP_CHECK(alb->enabled);
        MP_CHECK_EQ_INT(alb->max_connections, 10000);
        MP_CHECK(alb->settings != NULL && config_setting_is_group(alb->settings));
    }
    mp_config_free(cfg);
}

MP_TEST(empty_file_gives_defaults)
{
    char *dir = fixtures_dir();
    MP_CHECK(dir != NULL);
    mp_host_config *cfg = load_ok(mp_test_failed_, FIX("empty.conf"));
    if (!cfg || !dir) {
        free(dir);
        mp_config_free(cfg);
        return;
    }
    MP_CHECK_STR(cfg->path, FIX("empty.conf"));
    MP_CHECK_STR(cfg->dir, dir);
    MP_CHECK_EQ_INT(cfg->workers, 0);
    MP_CHECK_STR(cfg->plugin_dir, in_dir(dir, "plugins"));
    MP_CHECK_STR(cfg->state_dir, in_dir(dir, "state"));
    MP_CHECK_EQ_INT(cfg->log_level, MP_LOG_INFO);
    MP_CHECK(cfg->autoload);
    MP_CHECK_EQ_INT(cfg->drain_timeout_ms, 30000);
    MP_CHECK_STR(cfg->grpc.address, MP_DEFAULT_GRPC_ADDRESS);
    MP_CHECK_EQ_INT(cfg->grpc.max_message_bytes, MP_DEFAULT_MAX_MESSAGE_BYTES);
    MP_CHECK_EQ_INT(cfg->grpc.max_concurrent_streams, 100);
    MP_CHECK(cfg->grpc.tls_cert == NULL && cfg->grpc.tls_key == NULL &&
             cfg->grpc.tls_client_ca == NULL && !cfg->grpc.require_client_cert);
    MP_CHECK(cfg->n_listeners == 0 && cfg->listeners == NULL);
    MP_CHECK(cfg->n_routes == 0 && cfg->routes == NULL);
    MP_CHECK(cfg->n_rate_limits == 0 && cfg->rate_limits == NULL);
    MP_CHECK(cfg->n_instances == 0 && cfg->instances == NULL);
    MP_CHECK(mp_config_find_instance(cfg, "alb") == NULL);
    mp_config_free(cfg);
    free(dir);
}

MP_TEST(full_config_values)
{
    char *dir = fixtures_dir();
    mp_host_config *cfg = load_ok(mp_test_failed_, FIX("full.conf"));
    if (!cfg || !dir) {
        free(dir);
        mp_config_free(cfg);
        MP_CHECK(0);
        return;
    }
    MP_CHECK_EQ_INT(cfg->workers, 4);
    MP_CHECK_STR(cfg->plugin_dir, in_dir(dir, "plugins.d"));
    MP_CHECK_STR(cfg->state_dir, in_dir(dir, "var/state"));
    MP_CHECK_EQ_INT(cfg->log_level, MP_LOG_DEBUG);
    MP_CHECK(!cfg->autoload);
    MP_CHECK_EQ_INT(cfg->drain_timeout_ms, 1500);

    MP_CHECK_STR(cfg->grpc.address, "[::1]:6000");
    MP_CHECK_EQ_INT(cfg->grpc.max_message_bytes, 1048576);
    MP_CHECK_EQ_INT(cfg->grpc.max_concurrent_streams, 7);
    MP_CHECK_STR(cfg->grpc.tls_cert, in_dir(dir, "tls/server.crt"));
    MP_CHECK_STR(cfg->grpc.tls_key, "/etc/mp/server.key");
    MP_CHECK_STR(cfg->grpc.tls_client_ca, in_dir(dir, "tls/ca.crt"));
    MP_CHECK(cfg->grpc.require_client_cert); /* defaults on with client_ca */

    MP_CHECK_EQ_INT(cfg->n_listeners, 2);
    if (cfg->n_listeners == 2) {
        const mp_listener_cfg *w = &cfg->listeners[0], *d = &cfg->listeners[1];
        MP_CHECK_STR(w->name, "web");
        MP_CHECK_STR(w->address, "*:8080");
        MP_CHECK_EQ_INT(w->n_modules, 2);
        if (w->n_modules == 2) {
            MP_CHECK_STR(w->modules[0], "alb");
            MP_CHECK_STR(w->modules[1], "alb-2");
        }
        MP_CHECK_STR(w->default_module, "alb");
        MP_CHECK_EQ_INT(w->sniff_timeout_ms, 250);
        MP_CHECK_EQ_INT(w->line, 21);
        MP_CHECK_STR(d->name, "db");
        MP_CHECK_EQ_INT(d->n_modules, 0);
        MP_CHECK(d->modules == NULL && d->default_module == NULL);
        MP_CHECK_EQ_INT(d->sniff_timeout_ms, 5000);
        MP_CHECK_EQ_INT(d->line, 22);
    }

    MP_CHECK_EQ_INT(cfg->n_routes, 2);
    if (cfg->n_routes == 2) {
        const mp_route_cfg *r1 = &cfg->routes[0], *r2 = &cfg->routes[1];
        MP_CHECK_STR(r1->id, "r1");
        MP_CHECK_EQ_INT(r1->protocol, MP_PROTO_POSTGRES);
        MP_CHECK_STR(r1->source, "10.0.0.0/8");
        MP_CHECK_STR(r1->destination, "db.example");
        MP_CHECK_EQ_INT(r1->destination_port, 5432);
        MP_CHECK_STR(r1->path, "/x");
        MP_CHECK_EQ_INT(r1->priority, -5);
        MP_CHECK_STR(r1->target, "dblb");
        MP_CHECK_EQ_INT(r1->line, 25);
        MP_CHECK_EQ_INT(r2->protocol, 0);
        MP_CHECK_STR(r2->source, "2001:db8::/32");
        MP_CHECK(r2->destination == NULL && r2->path == NULL);
        MP_CHECK_EQ_INT(r2->destination_port, 0);
        MP_CHECK_EQ_INT(r2->priority, 0);
    }

    MP_CHECK_EQ_INT(cfg->n_rate_limits, 2);
    if (cfg->n_rate_limits == 2) {
        const mp_rate_limit_cfg *a = &cfg->rate_limits[0], *b = &cfg->rate_limits[1];
        MP_CHECK_STR(a->id, "rl1");
        MP_CHECK_STR(a->instance, "alb");
        MP_CHECK_STR(a->target, "*");
        MP_CHECK_EQ_INT(a->requests_per_minute, 60);
        MP_CHECK_EQ_INT(a->burst_size, 10);
        MP_CHECK(!a->enabled);
        MP_CHECK_STR(b->instance, "alb-2"); /* same id, other instance: allowed */
        MP_CHECK_EQ_INT(b->requests_per_hour, 5000000000LL);
        MP_CHECK(b->enabled);
        MP_CHECK_EQ_INT(b->line, 30);
    }

    MP_CHECK_EQ_INT(cfg->n_instances, 2);
    const mp_instance_cfg *alb = mp_config_find_instance(cfg, "alb");
    const mp_instance_cfg *alb2 = mp_config_find_instance(cfg, "alb-2");
    MP_CHECK(alb && alb2);
    if (alb && alb2) {
        MP_CHECK_STR(alb->plugin, "alb");
        MP_CHECK(alb->enabled);
        MP_CHECK_EQ_INT(alb->max_connections, 0);
        MP_CHECK_EQ_INT(alb->line, 33);
        const char *up = NULL;
        MP_CHECK(config_setting_lookup_string(alb->settings, "upstream", &up));
        MP_CHECK_STR(up, "127.0.0.1:9000");
        MP_CHECK_STR(alb2->id, "alb-2");
        MP_CHECK_STR(alb2->plugin, "alb");
        MP_CHECK(!alb2->enabled);
        MP_CHECK_EQ_INT(alb2->max_connections, 12);
        MP_CHECK_EQ_INT(alb2->line, 34);
    }
    MP_CHECK(mp_config_find_instance(cfg, "nope") == NULL);
    MP_CHECK(mp_config_find_instance(NULL, "alb") == NULL);
    mp_config_free(cfg);
    free(dir);
}

MP_TEST(instance_settings_never_null)
{
    mp_host_config *cfg = load_ok(mp_test_failed_, FIX("full.conf"));
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->n_instances; i++) {
        const config_setting_t *s = cfg->instances[i].settings;
        MP_CHECK(s != NULL);
        if (s)
            MP_CHECK(config_setting_is_group(s));
    }
    /* alb-2 has no settings in the file: an empty group stands in, placed at the
     * instance's line so plugin errors about it point somewhere real. */
    const mp_instance_cfg *alb2 = mp_config_find_instance(cfg, "alb-2");
    if (alb2 && alb2->settings) {
        MP_CHECK_EQ_INT(config_setting_length(alb2->settings), 0);
        MP_CHECK_EQ_INT(config_setting_source_line(alb2->settings), 34);
        mp_host_api api;
        memset(&api, 0, sizeof(api));
        mp_config_view_fill_api(&api);
        char err[256];
        MP_CHECK_EQ_INT(api.cfg_error(mp_config_of(alb2->settings), err, sizeof(err),
                                      "missing %s", "upstream"),
                        -EINVAL);
        MP_CHECK_STR(err, FIX("full.conf") ":34: missing upstream");
    }
    mp_config_free(cfg);

    /* The same from string input, and an instance group with no keys at all. */
    char err[256] = "";
    MP_CHECK_EQ_INT(mp_config_load_string("instances: { x: { }; };", "s", "/", &cfg, err,
                                          sizeof(err)),
                    0);
    const mp_instance_cfg *x = mp_config_find_instance(cfg, "x");
    MP_CHECK(x && x->settings && config_setting_is_group(x->settings));
    if (x)
        MP_CHECK_STR(x->plugin, "x");
    mp_config_free(cfg);
}

MP_TEST(include_resolves_against_config_dir)
{
    mp_host_config *cfg = load_ok(mp_test_failed_, FIX("include_main.conf"));
    if (!cfg)
        return;
    MP_CHECK_EQ_INT(cfg->workers, 2);
    MP_CHECK(mp_config_find_instance(cfg, "inc") != NULL);
    mp_config_free(cfg);
    /* An error inside an included file names that file and its line. */
    expect_file_error(mp_test_failed_, FIX("bad_include.conf"), "bad_part.inc", 3,
                      "unknown key 'wokers' in host");
}

MP_TEST(fixture_errors_have_file_and_line)
{
    static const struct {
        const char *file;
        int line;
        const char *fragment;
    } cases[] = {
        {"bad_syntax.conf", 4, "syntax error"},
        {"bad_unknown_top.conf", 3, "unknown key 'hots' in top level"},
        {"bad_unknown_host.conf", 4, "unknown key 'worker' in host"},
        {"bad_unknown_listener.conf", 6, "unknown key 'adress' in listeners[1]"},
        {"bad_unknown_instance.conf", 5, "unknown key 'max_conns' in instances.alb"},
        {"bad_type_workers.conf", 3, "host.workers must be an integer"},
        {"bad_range_workers.conf", 4, "host.workers must be between 0 and 256 (got 257)"},
        {"bad_cidr.conf", 6, "routes[0].source '10.0.0.0/33' is not a CIDR"},
        {"bad_protocol.conf", 5, "unknown protocol 'htttp'"},
        {"bad_address.conf", 5, "address 'example.com:80': use an IP literal"},
        {"bad_tls_key_only.conf", 5, "grpc.tls.key is set but grpc.tls.cert is not"},
        {"bad_instance_id.conf", 3, "instance id 'Alb' must match"},
        {"bad_dup_address.conf", 4, "same address as listener 'one'"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", MP_TEST_FIXTURES, cases[i].file);
        expect_file_error(mp_test_failed_, path, path, cases[i].line, cases[i].fragment);
    }
}

MP_TEST(protocol_error_lists_valid_names)
{
    mp_host_config *cfg = NULL;
    char err[512] = "";
    MP_CHECK_EQ_INT(mp_config_load(FIX("bad_protocol.conf"), &cfg, err, sizeof(err)), -EINVAL);
    MP_CHECK_CONTAINS(err, "routes[0].protocol");
    MP_CHECK_CONTAINS(err, "tcp, udp, http");
    MP_CHECK_CONTAINS(err, "postgres");
    MP_CHECK_CONTAINS(err, "dash");
}

MP_TEST(duplicate_listener_names_both_lines)
{
    /* The error sits on the second name (line 8) and points back at the first (4). */
    expect_file_error(mp_test_failed_, FIX("bad_dup_listener.conf"),
                      FIX("bad_dup_listener.conf"), 8,
                      "duplicate listener name 'web' (first defined at " FIX(
                          "bad_dup_listener.conf") ":4)");
}

MP_TEST(missing_file_is_io_error)
{
    mp_host_config *cfg = (mp_host_config *)0x1;
    char err[512] = "";
    MP_CHECK_EQ_INT(mp_config_load(FIX("does-not-exist.conf"), &cfg, err, sizeof(err)),
                    -ENOENT);
    MP_CHECK(cfg == NULL);
    MP_CHECK(starts_with(err, FIX("does-not-exist.conf") ":0: "));
    MP_CHECK_CONTAINS(err, "No such file");
    cfg = (mp_host_config *)0x1;
    MP_CHECK_EQ_INT(mp_config_load(MP_TEST_FIXTURES, &cfg, err, sizeof(err)), -EISDIR);
    MP_CHECK(cfg == NULL);
    mp_config_free(NULL); /* NULL-safe */
}

MP_TEST(relative_path_uses_file_dir)
{
    /* A relative config path: dir still comes out absolute, and defaults hang off it. */
    char *dir = fixtures_dir();
    char *cwd = getcwd(NULL, 0);
    MP_CHECK(dir && cwd);
    if (!dir || !cwd || chdir(dir) != 0) {
        MP_CHECK(0);
        free(dir);
        free(cwd);
        return;
    }
    mp_host_config *cfg = load_ok(mp_test_failed_, "empty.conf");
    if (cfg) {
        MP_CHECK_STR(cfg->path, "empty.conf");
        MP_CHECK_STR(cfg->dir, dir);
        MP_CHECK_STR(cfg->plugin_dir, in_dir(dir, "plugins"));
        mp_config_free(cfg);
    }
    cfg = load_ok(mp_test_failed_, "./full.conf");
    if (cfg) {
        MP_CHECK_STR(cfg->dir, dir);
        MP_CHECK_STR(cfg->grpc.tls_cert, in_dir(dir, "tls/server.crt"));
        mp_config_free(cfg);
    }
    MP_CHECK_EQ_INT(chdir(cwd), 0);
    free(dir);
    free(cwd);
}

MP_TEST(string_errors_have_name_and_line)
{
    static const struct {
        const char *text;
        int line;
        const char *fragment;
    } cases[] = {
        /* parse errors carry the stand-in name too */
        {"host: {\n  workers = 1;\n  log_level = ;\n};\n", 3, "syntax error"},
        {"host: { workers = 1; };\n@include \"no-such.inc\"\n", 2,
         "cannot open include file"},
        /* host */
        {"host = 5;", 1, "host must be a group"},
        {"host: {\n workers = 4.0;\n};", 2, "host.workers must be an integer"},
        {"host: {\n autoload = 1;\n};", 2, "host.autoload must be a boolean"},
        {"host: {\n\n log_level = \"verbose\";\n};", 3, "host.log_level 'verbose'"},
        {"host: {\n log_level = \"INFO\";\n};", 2, "is not one of error, warn, info, debug"},
        {"host: {\n plugin_dir = \"\";\n};", 2, "host.plugin_dir must not be empty"},
        {"host: {\n state_dir = 7;\n};", 2, "host.state_dir must be a string"},
        {"host: {\n drain_timeout_ms = 3600001;\n};", 2,
         "host.drain_timeout_ms must be between 0 and 3600000"},
        {"host: {\n workers = -1;\n};", 2, "host.workers must be between 0 and 256 (got -1)"},
        /* grpc */
        {"grpc: {\n address = \"1.2.3:80\";\n};", 2, "bad IPv4 address '1.2.3'"},
        {"grpc: {\n address = \"::1:80\";\n};", 2, "IPv6 addresses in brackets"},
        {"grpc: {\n max_message_bytes = 1023;\n};", 2,
         "grpc.max_message_bytes must be between 1024 and 67108864"},
        {"grpc: {\n max_concurrent_streams = 0;\n};", 2, "grpc.max_concurrent_streams"},
        {"grpc: {\n tlss: { };\n};", 2, "unknown key 'tlss' in grpc"},
        {"grpc: { tls: {\n  cert = \"c.pem\";\n}; };", 2,
         "grpc.tls.cert is set but grpc.tls.key is not"},
        {"grpc: { tls: {\n  client_ca = \"ca.pem\";\n}; };", 2,
         "grpc.tls.client_ca needs grpc.tls.cert and grpc.tls.key"},
        {"grpc: { tls: {\n  cert = \"c\"; key = \"k\";\n  require_client_cert = false;\n}; };",
         3, "require_client_cert needs grpc.tls.client_ca"},
        {"grpc: { tls: {\n  ciphers = \"x\";\n}; };", 2, "unknown key 'ciphers' in grpc.tls"},
        /* listeners */
        {"listeners = { };", 1, "listeners must be a list"},
        {"listeners = ( 5 );", 1, "listeners[0] must be a group"},
        {"listeners = (\n  { address = \"*:1\"; }\n);", 2, "listeners[0].name is required"},
        {"listeners = (\n  { name = \"a\"; }\n);", 2, "listeners[0].address is required"},
        {"listeners = (\n  { name = \"a\";\n    address = \"*:99999\"; }\n);", 3,
         "port must be a number 0..65535"},
        {"listeners = (\n  { name = \"a\"; address = \"*:1\";\n    modules = [ 1, 2 ]; }\n);",
         3, "listeners[0].modules must be an array of strings"},
        {"listeners = (\n  { name = \"a\"; address = \"*:1\";\n"
         "    sniff_timeout_ms = 0; }\n);",
         3, "listeners[0].sniff_timeout_ms must be between 1 and 600000"},
        {"listeners = (\n  { name = \"a\"; address = \"[::1]:5\"; },\n"
         "  { name = \"b\";\n    address = \"[0:0::1]:5\"; }\n);",
         4, "same address as listener 'a'"},
        /* routes */
        {"routes = (\n  { id = \"r\"; }\n);", 2, "routes[0].target is required"},
        {"routes = (\n  { target = \"t\"; }\n);", 2, "routes[0].id is required"},
        {"routes = (\n  { id = \"r\"; target = \"t\"; },\n  { id = \"s\"; target = \"t\"; },\n"
         "  { id = \"r\"; target = \"u\"; }\n);",
         4, "duplicate route id 'r' (first defined at inline.conf:2)"},
        {"routes = (\n  { id = \"r\"; target = \"t\";\n    destination_port = 70000; }\n);", 3,
         "routes[0].destination_port must be between 0 and 65535"},
        {"routes = (\n  { id = \"r\"; target = \"t\";\n    source = \"::1/129\"; }\n);", 3,
         "is not a CIDR"},
        {"routes = (\n  { id = \"r\"; target = \"t\";\n    source = \"10.0.0.1\"; }\n);", 3,
         "is not a CIDR"},
        {"routes = (\n  { id = \"r\"; target = \"t\";\n    source = \"10.0.0/8\"; }\n);", 3,
         "is not a CIDR"},
        {"routes = (\n  { id = \"r\"; target = \"t\";\n    protocol = 3; }\n);", 3,
         "routes[0].protocol must be a string"},
        {"routes = (\n  { id = \"r\"; target = \"t\";\n    weight = 3; }\n);", 3,
         "unknown key 'weight' in routes[0]"},
        /* rate limits */
        {"rate_limits = (\n  { id = \"a\"; instance = \"x\"; burst_size = 5; }\n);", 2,
         "rate_limits[0] needs requests_per_second, requests_per_minute or "
         "requests_per_hour greater than 0"},
        {"rate_limits = (\n  { id = \"a\"; instance = \"x\";\n"
         "    requests_per_second = -1; }\n);",
         3, "rate_limits[0].requests_per_second must be at least 0 (got -1)"},
        {"rate_limits = (\n  { id = \"a\"; requests_per_second = 1; }\n);", 2,
         "rate_limits[0].instance is required"},
        {"rate_limits = (\n  { id = \"a\"; instance = \"x\"; requests_per_second = 1; },\n"
         "  { id = \"a\"; instance = \"x\"; requests_per_hour = 1; }\n);",
         3, "duplicate rate limit 'a' for instance 'x'"},
        {"rate_limits = (\n  { id = \"a\"; instance = \"x\"; requests_per_second = 1;\n"
         "    enabled = \"yes\"; }\n);",
         3, "rate_limits[0].enabled must be a boolean"},
        /* instances */
        {"instances = ( );", 1, "instances must be a group"},
        {"instances: {\n  alb = 5;\n};", 2, "instances.alb must be a group"},
        {"instances: {\n  alb: {\n    settings = 5;\n  };\n};", 3,
         "instances.alb.settings must be a group"},
        {"instances: {\n  alb: {\n    plugin = \"../x\";\n  };\n};", 3,
         "instances.alb.plugin '../x' must match"},
        {"instances: {\n  alb: {\n    max_connections = -1;\n  };\n};", 3,
         "instances.alb.max_connections must be between 0 and 2147483647 (got -1)"},
        {"instances: {\n  alb: {\n    enabled = 0;\n  };\n};", 3,
         "instances.alb.enabled must be a boolean"},
        {"instances: {\n  a*b: { };\n};", 2, "instance id 'a*b' must match"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_string_error(mp_test_failed_, cases[i].text, cases[i].line,
                            cases[i].fragment);
}

MP_TEST(load_string_accepts_and_resolves)
{
    mp_host_config *cfg = NULL;
    char err[256] = "";
    /* Both integer widths are accepted for integer keys. */
    const char *text = "host: { workers = 8L; plugin_dir = \"p\"; state_dir = \"/abs\"; };\n"
                       "listeners = ( { name = \"v6\"; address = \"[::]:443\";\n"
                       "                modules = ( \"a\" ); } );";
    int rc = mp_config_load_string(text, "upd", "/tmp", &cfg, err, sizeof(err));
    MP_CHECK_EQ_INT(rc, 0);
    if (rc == 0) {
        char *tmp = realpath("/tmp", NULL);
        MP_CHECK_EQ_INT(cfg->workers, 8);
        MP_CHECK_STR(cfg->path, "upd");
        MP_CHECK_STR(cfg->dir, tmp);
        MP_CHECK_STR(cfg->plugin_dir, in_dir(tmp, "p"));
        MP_CHECK_STR(cfg->state_dir, "/abs");
        MP_CHECK_EQ_INT(cfg->n_listeners, 1);
        if (cfg->n_listeners == 1 && cfg->listeners[0].n_modules == 1)
            MP_CHECK_STR(cfg->listeners[0].modules[0], "a");
        /* Nodes of string input name the stand-in, for plugin errors too. */
        MP_CHECK_STR(config_setting_source_file(
                         config_lookup(&cfg->lc, "listeners.[0].address")),
                     "upd");
        free(tmp);
        mp_config_free(cfg);
    }
    /* @include resolves against base_dir, as it does against a file's directory; the
     * included nodes keep their own file name. */
    rc = mp_config_load_string("grpc: { };\n@include \"include_part.inc\"\n", "upd",
                               MP_TEST_FIXTURES, &cfg, err, sizeof(err));
    MP_CHECK_EQ_INT(rc, 0);
    if (rc == 0) {
        MP_CHECK(mp_config_find_instance(cfg, "inc") != NULL);
        MP_CHECK_STR(config_setting_source_file(config_lookup(&cfg->lc, "grpc")), "upd");
        MP_CHECK_STR(config_setting_source_file(config_lookup(&cfg->lc, "instances")),
                     "include_part.inc");
        mp_config_free(cfg);
    }
    cfg = (mp_host_config *)0x1;
    MP_CHECK_EQ_INT(mp_config_load_string("", "x", "/nonexistent/dir", &cfg, err, sizeof(err)),
                    -ENOENT);
    MP_CHECK(cfg == NULL);
    MP_CHECK(starts_with(err, "x:0: base directory"));
    MP_CHECK_EQ_INT(mp_config_load_string(NULL, "x", "/", &cfg, err, sizeof(err)), -EINVAL);
}

/* "listeners = (\n" then n one-line listeners, or routes when `routes` is set. */
static char *many(size_t n, int routes)
{
    size_t cap = 64 + n * 96, off = 0;
    char *t = malloc(cap);
    if (!t)
        return NULL;
    off += (size_t)snprintf(t, cap, "%s = (\n", routes ? "routes" : "listeners");
    for (size_t i = 0; i < n; i++) {
        const char *sep = i + 1 < n ? "," : "";
        if (routes)
            off += (size_t)snprintf(t + off, cap - off,
                                    "{ id = \"r%zu\"; target = \"t\"; }%s\n", i, sep);
        else
            off += (size_t)snprintf(t + off, cap - off,
                                    "{ name = \"l%zu\"; address = \"127.0.0.1:%zu\"; }%s\n", i,
                                    1000 + i, sep);
    }
    snprintf(t + off, cap - off, ");\n");
    return t;
}

MP_TEST(list_size_limits)
{
    static const struct {
        size_t n;
        int routes;
        int ok;
        const char *fragment;
    } cases[] = {
        {256, 0, 1, NULL},
        {257, 0, 0, "inline.conf:1: too many listeners (257, at most 256)"},
        {10000, 1, 1, NULL},
        {10001, 1, 0, "inline.conf:1: too many routes (10001, at most 10000)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *text = many(cases[i].n, cases[i].routes);
        MP_CHECK(text != NULL);
        if (!text)
            continue;
        mp_host_config *cfg = NULL;
        char err[256] = "";
        int rc = mp_config_load_string(text, "inline.conf", "/", &cfg, err, sizeof(err));
        if (cases[i].ok) {
            MP_CHECK_EQ_INT(rc, 0);
            if (rc == 0)
                MP_CHECK_EQ_INT(cases[i].routes ? cfg->n_routes : cfg->n_listeners,
                                cases[i].n);
            mp_config_free(cfg);
        } else {
            MP_CHECK_EQ_INT(rc, -EINVAL);
            MP_CHECK_STR(err, cases[i].fragment);
        }
        free(text);
    }
}

MP_TEST(error_buffer_truncates_safely)
{
    mp_host_config *cfg = NULL;
    char err[12];
    memset(err, 'Z', sizeof(err));
    MP_CHECK_EQ_INT(mp_config_load(FIX("bad_unknown_host.conf"), &cfg, err, sizeof(err)),
                    -EINVAL);
    MP_CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    MP_CHECK_EQ_INT(strlen(err), sizeof(err) - 1);
    /* and no buffer at all */
    MP_CHECK_EQ_INT(mp_config_load(FIX("bad_unknown_host.conf"), &cfg, NULL, 0), -EINVAL);
}

/* ------------------------------------------------------------------ addresses */

MP_TEST(parse_address_forms)
{
    struct sockaddr_storage ss;
    unsigned len = 0;
    char err[128];

    MP_CHECK_EQ_INT(mp_parse_address("10.1.2.3:80", &ss, &len, err, sizeof(err)), 0);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
    MP_CHECK_EQ_INT(ss.ss_family, AF_INET);
    MP_CHECK_EQ_INT(len, sizeof(struct sockaddr_in));
    MP_CHECK_EQ_INT(ntohs(sin->sin_port), 80);
    MP_CHECK_EQ_INT(ntohl(sin->sin_addr.s_addr), 0x0a010203);

    MP_CHECK_EQ_INT(mp_parse_address("localhost:65535", &ss, &len, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
    MP_CHECK_EQ_INT(ntohs(sin->sin_port), 65535);

    MP_CHECK_EQ_INT(mp_parse_address("*:0", &ss, &len, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(ntohl(sin->sin_addr.s_addr), INADDR_ANY);
    MP_CHECK_EQ_INT(ntohs(sin->sin_port), 0);
    MP_CHECK_EQ_INT(mp_parse_address("0.0.0.0:1", &ss, &len, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(ntohl(sin->sin_addr.s_addr), INADDR_ANY);

    MP_CHECK_EQ_INT(mp_parse_address("[::1]:443", &ss, &len, err, sizeof(err)), 0);
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
    MP_CHECK_EQ_INT(ss.ss_family, AF_INET6);
    MP_CHECK_EQ_INT(len, sizeof(struct sockaddr_in6));
    MP_CHECK_EQ_INT(ntohs(sin6->sin6_port), 443);
    MP_CHECK(memcmp(&sin6->sin6_addr, &in6addr_loopback, sizeof(struct in6_addr)) == 0);
    MP_CHECK_EQ_INT(mp_parse_address("[::]:8", NULL, NULL, NULL, 0), 0);

    static const struct {
        const char *text;
        const char *fragment;
    } bad[] = {
        {"", "empty"},
        {"10.0.0.1", "missing :port"},
        {"10.0.0.1:", "port must be"},
        {"10.0.0.1:65536", "port must be"},
        {"10.0.0.1:80x", "port must be"},
        {"10.0.0.1:-1", "port must be"},
        {"10.0.0.1:000080", "port must be"},
        {":80", "missing host"},
        {"example.com:80", "use an IP literal"},
        {"256.0.0.1:80", "bad IPv4 address"},
        {"::1:80", "brackets"},
        {"[::1:80", "missing ']'"},
        {"[::1]80", "missing :port"},
        {"[]:80", "bad IPv6"},
        {"[zz::1]:80", "bad IPv6 address 'zz::1'"},
        {"[10.0.0.1]:80", "bad IPv6"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        int rc = mp_parse_address(bad[i].text, &ss, &len, err, sizeof(err));
        if (rc != -EINVAL)
            fprintf(stderr, "  '%s' was accepted\n", bad[i].text);
        MP_CHECK_EQ_INT(rc, -EINVAL);
        MP_CHECK_CONTAINS(err, bad[i].fragment);
    }
    MP_CHECK_EQ_INT(mp_parse_address(NULL, &ss, &len, err, sizeof(err)), -EINVAL);
}

MP_TEST(protocol_names)
{
    static const char *const names[] = {
        "unspecified", "tcp",   "udp",   "http",    "https",    "http2",
        "http3",       "grpc",  "websocket", "mysql", "postgres", "mongodb",
        "redis",       "rtmp",  "rtmps", "hls",     "dash",
    };
    for (int i = 0; i < 17; i++) {
        MP_CHECK_EQ_INT(mp_protocol_from_name(names[i]), i);
        MP_CHECK_STR(mp_protocol_name(i), names[i]);
    }
    MP_CHECK_EQ_INT(mp_protocol_from_name("any"), 0);
    MP_CHECK_EQ_INT(mp_protocol_from_name("HTTP"), -1);
    MP_CHECK_EQ_INT(mp_protocol_from_name(""), -1);
    MP_CHECK_EQ_INT(mp_protocol_from_name(NULL), -1);
    MP_CHECK_EQ_INT(MP_PROTO_DASH, 16);
    MP_CHECK_STR(mp_protocol_name(17), "unspecified");
    MP_CHECK_STR(mp_protocol_name(-1), "unspecified");
}

/* ------------------------------------------------------------------ text round trip */

static int float_same(double a, double b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

/* Deep equality of two libconfig trees: types, names, order and values. */
static int tree_equal(const config_setting_t *a, const config_setting_t *b)
{
    if (config_setting_type(a) != config_setting_type(b))
        return 0;
    const char *na = config_setting_name(a), *nb = config_setting_name(b);
    if ((na == NULL) != (nb == NULL) || (na && strcmp(na, nb) != 0))
        return 0;
    switch (config_setting_type(a)) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return config_setting_get_int64(a) == config_setting_get_int64(b);
    case CONFIG_TYPE_FLOAT:
        return float_same(config_setting_get_float(a), config_setting_get_float(b));
    case CONFIG_TYPE_STRING:
        return strcmp(config_setting_get_string(a), config_setting_get_string(b)) == 0;
    case CONFIG_TYPE_BOOL:
        return config_setting_get_bool(a) == config_setting_get_bool(b);
    default:
        break;
    }
    int n = config_setting_length(a);
    if (n != config_setting_length(b))
        return 0;
    for (int i = 0; i < n; i++)
        if (!tree_equal(config_setting_get_elem(a, (unsigned)i),
                        config_setting_get_elem(b, (unsigned)i)))
            return 0;
    return 1;
}

static const char round_trip_src[] =
    "name = \"quote \\\" back \\\\ nl \\n tab \\t cr \\r ff \\f ctl \\x01 del \\x7F "
    "utf8 \xc3\xa9\";\n"
    "empty_str = \"\";\n"
    "small = -42;\n"
    "int_min = -2147483648;\n"
    "big = 5000000000L;\n"
    "neg64 = -9000000000L;\n"
    "small64 = 7L;\n"
    "pi = 3.141592653589793;\n"
    "whole = 2.0;\n"
    "negzero = -0.0;\n"
    "tiny = -1.5e-300;\n"
    "huge = 1e300;\n"
    "third = 0.1;\n"
    "overflow = 1e999;\n"
    "flag = true;\n"
    "off = false;\n"
    "empty_group: { };\n"
    "empty_list = ( );\n"
    "empty_array = [ ];\n"
    "nested: {\n"
    "  inner: { deep: { x = 1; }; };\n"
    "  ints = [ 1, -2, 3 ];\n"
    "  int64s = [ 1L, 5000000000L ];\n"
    "  floats = [ 0.5, -0.25, 100.0 ];\n"
    "  strs = [ \"a\", \"b\\\"c\" ];\n"
    "  bools = [ true, false ];\n"
    "  mixed = ( 1, \"two\", 3.0, { k = \"v\"; sub = ( ); }, [ 4, 5 ], ( \"n\", ( ) ) );\n"
    "};\n";

MP_TEST(section_text_round_trip)
{
    config_t a, b, c;
    config_init(&a);
    config_init(&b);
    config_init(&c);
    char err[256] = "";
    char *t1 = NULL, *t2 = NULL;
    size_t l1 = 0, l2 = 0;

    MP_CHECK_EQ_INT(mp_config_text_parse(round_trip_src, strlen(round_trip_src), "src", &a,
                                         err, sizeof(err)),
                    0);
    MP_CHECK_EQ_INT(mp_config_section_to_text(config_root_setting(&a), &t1, &l1), 0);
    MP_CHECK(t1 != NULL);
    if (!t1)
        goto out;
    MP_CHECK_EQ_INT(strlen(t1), l1);
    if (mp_config_text_parse(t1, l1, "t1", &b, err, sizeof(err)) != 0) {
        fprintf(stderr, "  rendered text did not parse: %s\n%s", err, t1);
        MP_CHECK(0);
        goto out;
    }
    MP_CHECK_EQ_INT(mp_config_section_to_text(config_root_setting(&b), &t2, &l2), 0);
    MP_CHECK_STR(t1, t2);
    MP_CHECK(tree_equal(config_root_setting(&a), config_root_setting(&b)));

    /* Spot checks on the rendering itself. */
    MP_CHECK_CONTAINS(t1, "name = \"quote \\\" back \\\\ nl \\n tab \\t cr \\r ff \\f ctl "
                          "\\x01 del \\x7F utf8 \xc3\xa9\";\n");
    MP_CHECK_CONTAINS(t1, "empty_str = \"\";\n");
    MP_CHECK_CONTAINS(t1, "small = -42;\n");
    MP_CHECK_CONTAINS(t1, "int_min = -2147483648;\n");
    MP_CHECK_CONTAINS(t1, "big = 5000000000L;\n");
    MP_CHECK_CONTAINS(t1, "neg64 = -9000000000L;\n");
    MP_CHECK_CONTAINS(t1, "small64 = 7L;\n");
    MP_CHECK_CONTAINS(t1, "whole = 2.0;\n");
    MP_CHECK_CONTAINS(t1, "negzero = -0.0;\n");
    MP_CHECK_CONTAINS(t1, "overflow = 1e999;\n");
    MP_CHECK_CONTAINS(t1, "flag = true;\n");
    MP_CHECK_CONTAINS(t1, "off = false;\n");
    MP_CHECK_CONTAINS(t1, "empty_group: { };\n");
    MP_CHECK_CONTAINS(t1, "empty_list = ( );\n");
    MP_CHECK_CONTAINS(t1, "empty_array = [ ];\n");
    MP_CHECK_CONTAINS(t1, "  int64s = [ 1L, 5000000000L ];\n");
    MP_CHECK_CONTAINS(t1, "  floats = [ 0.5, -0.25, 100.0 ];\n");

    /* Values survived, checked through the tree rather than the text. */
    const char *s = NULL;
    MP_CHECK(config_lookup_string(&b, "name", &s));
    MP_CHECK_STR(s, "quote \" back \\ nl \n tab \t cr \r ff \f ctl \x01 del \x7f utf8 "
                    "\xc3\xa9");
    long long ll = 0;
    MP_CHECK(config_lookup_int64(&b, "neg64", &ll));
    MP_CHECK_EQ_INT(ll, -9000000000LL);
    MP_CHECK_EQ_INT(config_setting_type(config_lookup(&b, "small64")), CONFIG_TYPE_INT64);
    double d = 0;
    MP_CHECK(config_lookup_float(&b, "pi", &d));
    MP_CHECK(float_same(d, 3.141592653589793));
    MP_CHECK(config_lookup_float(&b, "third", &d));
    MP_CHECK(float_same(d, 0.1));
    MP_CHECK(config_lookup_float(&b, "tiny", &d));
    MP_CHECK(float_same(d, -1.5e-300));
    MP_CHECK(config_lookup_float(&b, "negzero", &d));
    MP_CHECK(d == 0.0 && signbit(d));
    MP_CHECK(config_lookup_float(&b, "overflow", &d));
    MP_CHECK(isinf(d) && d > 0);
    MP_CHECK(config_lookup_string(&b, "nested.mixed.[3].k", &s));
    MP_CHECK_STR(s, "v");
    MP_CHECK_EQ_INT(config_setting_length(config_lookup(&b, "nested.mixed.[5]")), 2);
    int x = 0;
    MP_CHECK(config_lookup_int(&b, "nested.inner.deep.x", &x));
    MP_CHECK_EQ_INT(x, 1);

    /* A nested group renders as the section of its own children. */
    char *t3 = NULL;
    MP_CHECK_EQ_INT(mp_config_section_to_text(config_lookup(&b, "nested.inner"), &t3, NULL), 0);
    MP_CHECK_STR(t3, "deep: {\n  x = 1;\n};\n");
    free(t3);
    MP_CHECK_EQ_INT(mp_config_text_parse(t2, l2, "t2", &c, err, sizeof(err)), 0);
    MP_CHECK(tree_equal(config_root_setting(&a), config_root_setting(&c)));
out:
    free(t1);
    free(t2);
    config_destroy(&a);
    config_destroy(&b);
    config_destroy(&c);
}

MP_TEST(section_text_exact_layout)
{
    static const char src[] = "a = 1; g: { b = \"x\"; l = ( 1, [ 2 ], { c = 1.5; } ); };";
    static const char want[] = "a = 1;\n"
                               "g: {\n"
                               "  b = \"x\";\n"
                               "  l = (\n"
                               "    1,\n"
                               "    [ 2 ],\n"
                               "    {\n"
                               "      c = 1.5;\n"
                               "    }\n"
                               "  );\n"
                               "};\n";
    config_t lc;
    config_init(&lc);
    char err[128] = "";
    char *t = NULL;
    size_t len = 99;
    MP_CHECK_EQ_INT(mp_config_text_parse(src, sizeof(src) - 1, "x", &lc, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(mp_config_section_to_text(config_root_setting(&lc), &t, &len), 0);
    MP_CHECK_STR(t, want);
    MP_CHECK_EQ_INT(len, sizeof(want) - 1);
    free(t);
    config_destroy(&lc);

    /* An empty section is an empty string, not NULL. */
    config_init(&lc);
    MP_CHECK_EQ_INT(mp_config_text_parse("", 0, "x", &lc, err, sizeof(err)), 0);
    t = NULL;
    len = 99;
    MP_CHECK_EQ_INT(mp_config_section_to_text(config_root_setting(&lc), &t, &len), 0);
    MP_CHECK_STR(t, "");
    MP_CHECK_EQ_INT(len, 0);
    free(t);
    /* Only groups are sections. */
    config_setting_t *i = config_setting_add(config_root_setting(&lc), "i", CONFIG_TYPE_INT);
    t = (char *)0x1;
    MP_CHECK_EQ_INT(mp_config_section_to_text(i, &t, NULL), -EINVAL);
    MP_CHECK(t == NULL);
    config_destroy(&lc);
}

MP_TEST(section_text_of_loaded_instance)
{
    mp_host_config *cfg = load_ok(mp_test_failed_, FIX("full.conf"));
    if (!cfg)
        return;
    const mp_instance_cfg *alb = mp_config_find_instance(cfg, "alb");
    const mp_instance_cfg *alb2 = mp_config_find_instance(cfg, "alb-2");
    char *t = NULL;
    if (alb) {
        MP_CHECK_EQ_INT(mp_config_section_to_text(alb->settings, &t, NULL), 0);
        MP_CHECK_STR(t, "upstream = \"127.0.0.1:9000\";\n");
        free(t);
    }
    if (alb2) {
        t = NULL;
        MP_CHECK_EQ_INT(mp_config_section_to_text(alb2->settings, &t, NULL), 0);
        MP_CHECK_STR(t, "");
        free(t);
    }
    mp_config_free(cfg);
}

MP_TEST(text_parse_errors)
{
    config_t lc;
    char err[256] = "";
    config_init(&lc);
    MP_CHECK_EQ_INT(mp_config_text_parse("a = 1;\nb = ;\n", 13, "sect", &lc, err, sizeof(err)),
                    -EINVAL);
    MP_CHECK_STR(err, "sect:2: syntax error");
    config_destroy(&lc);

    /* The length bounds the text: the junk after it is never read. */
    config_init(&lc);
    static const char longer[] = "a = 1;JUNK";
    MP_CHECK_EQ_INT(mp_config_text_parse(longer, 6, "sect", &lc, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(config_setting_length(config_root_setting(&lc)), 1);
    config_destroy(&lc);

    config_init(&lc);
    static const char withnul[] = "a = 1;\nb = 2;\0c = 3;";
    MP_CHECK_EQ_INT(mp_config_text_parse(withnul, sizeof(withnul) - 1, "sect", &lc, err,
                                         sizeof(err)),
                    -EINVAL);
    MP_CHECK(starts_with(err, "sect:2: "));
    MP_CHECK_CONTAINS(err, "NUL");
    config_destroy(&lc);

    config_init(&lc);
    static const char inc[] = "a = 1;\n\n  @include \"/etc/passwd\"\n";
    MP_CHECK_EQ_INT(mp_config_text_parse(inc, sizeof(inc) - 1, "sect", &lc, err, sizeof(err)),
                    -EINVAL);
    MP_CHECK_STR(err, "sect:3: @include is not allowed in configuration text");
    config_destroy(&lc);

    config_init(&lc);
    MP_CHECK_EQ_INT(mp_config_text_parse("a = 1; a = 2;", 13, NULL, &lc, err, sizeof(err)),
                    -EINVAL);
    MP_CHECK_STR(err, "<config>:1: duplicate setting name");
    config_destroy(&lc);
    MP_CHECK_EQ_INT(mp_config_text_parse("a = 1;", 6, "x", NULL, err, sizeof(err)), -EINVAL);
}

/* ------------------------------------------------------------------ the cfg_* view */

/* Line numbers matter: the view test asserts some of them. */
static const char view_src[] = "instances: {\n"                            /* 1 */
                               "  v: {\n"                                  /* 2 */
                               "    settings: {\n"                         /* 3 */
                               "      port = 80;\n"                        /* 4 */
                               "      big = 5000000000L;\n"                /* 5 */
                               "      ratio = 0.75;\n"                     /* 6 */
                               "      name = \"svc\";\n"                   /* 7 */
                               "      on = true;\n"                        /* 8 */
                               "      upstream: {\n"                       /* 9 */
                               "        timeout = 5;\n"                    /* 10 */
                               "        hosts = [ \"a\", \"b\" ];\n"       /* 11 */
                               "        list = ( 1, { deep = \"x\"; } );\n" /* 12 */
                               "      };\n"                                /* 13 */
                               "    };\n"                                  /* 14 */
                               "  };\n"                                    /* 15 */
                               "};\n";

MP_TEST(view_functions)
{
    mp_host_api api;
    memset(&api, 0, sizeof(api));
    mp_config_view_fill_api(&api);
    MP_CHECK(api.cfg_kind && api.cfg_lookup && api.cfg_get_int && api.cfg_get_float &&
             api.cfg_get_bool && api.cfg_get_string && api.cfg_count && api.cfg_child &&
             api.cfg_name && api.cfg_line && api.cfg_error && api.cfg_check_keys);
    MP_CHECK(api.log == NULL && api.register_rpc == NULL); /* only cfg_* are touched */
    mp_config_view_fill_api(NULL);                          /* harmless */
    if (!api.cfg_kind)
        return;

    mp_host_config *cfg = NULL;
    char err[256] = "";
    MP_CHECK_EQ_INT(
        mp_config_load_string(view_src, "view.conf", "/", &cfg, err, sizeof(err)), 0);
    const mp_instance_cfg *v = mp_config_find_instance(cfg, "v");
    MP_CHECK(v != NULL);
    if (!v) {
        mp_config_free(cfg);
        return;
    }
    const mp_config *sec = mp_config_of(v->settings);

    /* kinds */
    MP_CHECK_EQ_INT(api.cfg_kind(sec), MP_CFG_GROUP);
    MP_CHECK_EQ_INT(api.cfg_kind(api.cfg_lookup(sec, "port")), MP_CFG_INT);
    MP_CHECK_EQ_INT(api.cfg_kind(api.cfg_lookup(sec, "big")), MP_CFG_INT);
    MP_CHECK_EQ_INT(api.cfg_kind(api.cfg_lookup(sec, "ratio")), MP_CFG_FLOAT);
    MP_CHECK_EQ_INT(api.cfg_kind(api.cfg_lookup(sec, "name")), MP_CFG_STRING);
    MP_CHECK_EQ_INT(api.cfg_kind(api.cfg_lookup(sec, "on")), MP_CFG_BOOL);
    MP_CHECK_EQ_INT(api.cfg_kind(api.cfg_lookup(sec, "upstream.hosts")), MP_CFG_ARRAY);
    MP_CHECK_EQ_INT(api.cfg_kind(api.cfg_lookup(sec, "upstream.list")), MP_CFG_LIST);
    MP_CHECK_EQ_INT(api.cfg_kind(NULL), MP_CFG_NONE);
    MP_CHECK_EQ_INT(api.cfg_kind(api.cfg_lookup(sec, "missing")), MP_CFG_NONE);

    /* lookups with dot paths */
    const mp_config *up = api.cfg_lookup(sec, "upstream");
    MP_CHECK(up != NULL);
    MP_CHECK(api.cfg_lookup(sec, "upstream.timeout") == api.cfg_lookup(up, "timeout"));
    MP_CHECK(api.cfg_lookup(sec, "upstream.nope") == NULL);
    MP_CHECK(api.cfg_lookup(sec, "port.sub") == NULL);
    MP_CHECK(api.cfg_lookup(NULL, "port") == NULL);
    MP_CHECK(api.cfg_lookup(sec, NULL) == NULL);
    const char *s = NULL;
    MP_CHECK_EQ_INT(api.cfg_get_string(sec, "upstream.list.[1].deep", &s), 0);
    MP_CHECK_STR(s, "x");

    /* typed getters */
    int64_t i = 0;
    double d = 0;
    int b = -1;
    MP_CHECK_EQ_INT(api.cfg_get_int(sec, "port", &i), 0);
    MP_CHECK_EQ_INT(i, 80);
    MP_CHECK_EQ_INT(api.cfg_get_int(sec, "big", &i), 0);
    MP_CHECK_EQ_INT(i, 5000000000LL);
    MP_CHECK_EQ_INT(api.cfg_get_int(sec, "upstream.timeout", &i), 0);
    MP_CHECK_EQ_INT(i, 5);
    i = 1234;
    MP_CHECK_EQ_INT(api.cfg_get_int(sec, "name", &i), -EINVAL);
    MP_CHECK_EQ_INT(api.cfg_get_int(sec, "ratio", &i), -EINVAL);
    MP_CHECK_EQ_INT(api.cfg_get_int(sec, "absent", &i), -ENOENT);
    MP_CHECK_EQ_INT(i, 1234); /* untouched on failure */
    MP_CHECK_EQ_INT(api.cfg_get_int(NULL, "port", &i), -ENOENT);
    MP_CHECK_EQ_INT(api.cfg_get_float(sec, "ratio", &d), 0);
    MP_CHECK(d == 0.75);
    MP_CHECK_EQ_INT(api.cfg_get_float(sec, "upstream.timeout", &d), 0);
    MP_CHECK(d == 5.0);
    MP_CHECK_EQ_INT(api.cfg_get_float(sec, "big", &d), 0);
    MP_CHECK(d == 5e9);
    MP_CHECK_EQ_INT(api.cfg_get_float(sec, "name", &d), -EINVAL);
    MP_CHECK_EQ_INT(api.cfg_get_float(sec, "on", &d), -EINVAL);
    MP_CHECK_EQ_INT(api.cfg_get_float(sec, "absent", &d), -ENOENT);
    MP_CHECK_EQ_INT(api.cfg_get_bool(sec, "on", &b), 0);
    MP_CHECK_EQ_INT(b, 1);
    MP_CHECK_EQ_INT(api.cfg_get_bool(sec, "port", &b), -EINVAL);
    MP_CHECK_EQ_INT(api.cfg_get_bool(sec, "absent", &b), -ENOENT);
    MP_CHECK_EQ_INT(api.cfg_get_string(sec, "name", &s), 0);
    MP_CHECK_STR(s, "svc");
    MP_CHECK_EQ_INT(api.cfg_get_string(sec, "port", &s), -EINVAL);
    MP_CHECK_EQ_INT(api.cfg_get_string(sec, "upstream", &s), -EINVAL);
    MP_CHECK_EQ_INT(api.cfg_get_string(sec, "absent", &s), -ENOENT);

    /* children */
    MP_CHECK_EQ_INT(api.cfg_count(sec), 6);
    MP_CHECK_EQ_INT(api.cfg_count(up), 3);
    const mp_config *hosts = api.cfg_lookup(up, "hosts");
    MP_CHECK_EQ_INT(api.cfg_count(hosts), 2);
    MP_CHECK_EQ_INT(api.cfg_count(api.cfg_lookup(sec, "port")), 0);
    MP_CHECK_EQ_INT(api.cfg_count(NULL), 0);
    MP_CHECK_STR(api.cfg_name(api.cfg_child(sec, 0)), "port");
    MP_CHECK_STR(api.cfg_name(api.cfg_child(sec, 5)), "upstream");
    MP_CHECK(api.cfg_child(sec, 6) == NULL);
    MP_CHECK(api.cfg_child(sec, -1) == NULL);
    MP_CHECK(api.cfg_child(NULL, 0) == NULL);
    const mp_config *h1 = api.cfg_child(hosts, 1);
    MP_CHECK(api.cfg_name(h1) == NULL); /* array elements have no name */
    MP_CHECK_EQ_INT(api.cfg_get_string(h1, NULL, &s), 0); /* the node itself */
    MP_CHECK_STR(s, "b");
    MP_CHECK_EQ_INT(api.cfg_get_string(h1, "", &s), 0);
    MP_CHECK(api.cfg_name(NULL) == NULL);

    /* lines and errors */
    MP_CHECK_EQ_INT(api.cfg_line(api.cfg_lookup(sec, "port")), 4);
    MP_CHECK_EQ_INT(api.cfg_line(api.cfg_lookup(sec, "upstream.timeout")), 10);
    MP_CHECK_EQ_INT(api.cfg_line(sec), 3);
    MP_CHECK_EQ_INT(api.cfg_line(NULL), 0);
    MP_CHECK_EQ_INT(api.cfg_error(api.cfg_lookup(sec, "upstream.timeout"), err, sizeof(err),
                                  "timeout %d is too short", 5),
                    -EINVAL);
    MP_CHECK_STR(err, "view.conf:10: timeout 5 is too short");
    MP_CHECK_EQ_INT(api.cfg_error(NULL, err, sizeof(err), "no node"), -EINVAL);
    MP_CHECK_STR(err, "<config>:0: no node");
    MP_CHECK_EQ_INT(api.cfg_error(sec, NULL, 0, "nowhere"), -EINVAL);

    /* check_keys */
    static const char *const all[] = {"port", "big", "ratio", "name", "on", "upstream", NULL};
    static const char *const some[] = {"port", "big", "ratio", "name", "upstream", NULL};
    static const char *const up_keys[] = {"timeout", "hosts", NULL};
    MP_CHECK_EQ_INT(api.cfg_check_keys(sec, all, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(api.cfg_check_keys(sec, some, err, sizeof(err)), -EINVAL);
    MP_CHECK_STR(err, "view.conf:8: unknown key 'on'");
    MP_CHECK_EQ_INT(api.cfg_check_keys(up, up_keys, err, sizeof(err)), -EINVAL);
    MP_CHECK_STR(err, "view.conf:12: unknown key 'list'");
    MP_CHECK_EQ_INT(api.cfg_check_keys(NULL, all, err, sizeof(err)), 0);
    MP_CHECK_EQ_INT(api.cfg_check_keys(hosts, all, err, sizeof(err)), -EINVAL);
    MP_CHECK_EQ_INT(api.cfg_check_keys(sec, NULL, err, sizeof(err)), -EINVAL);
    MP_CHECK_STR(err, "view.conf:4: unknown key 'port'");
    mp_config_free(cfg);
}

MP_TEST(view_on_parsed_text_without_file)
{
    /* Sections parsed from text have no file; the stand-in is "<config>". */
    config_t lc;
    config_init(&lc);
    char err[128] = "";
    static const char src[] = "a = 1;\nb = \"x\";\n";
    MP_CHECK_EQ_INT(
        mp_config_text_parse(src, sizeof(src) - 1, "upd", &lc, err, sizeof(err)), 0);
    const mp_config *root = mp_config_of(config_root_setting(&lc));
    MP_CHECK_EQ_INT(mp_config_error(config_lookup(&lc, "b"), err, sizeof(err), "bad %s", "b"),
                    -EINVAL);
    MP_CHECK_STR(err, "<config>:2: bad b");
    static const char *const only_a[] = {"a", NULL};
    MP_CHECK_EQ_INT(mp_config_check_keys(config_root_setting(&lc), only_a, err, sizeof(err)),
                    -EINVAL);
    MP_CHECK_STR(err, "<config>:2: unknown key 'b'");
    mp_host_api api;
    memset(&api, 0, sizeof(api));
    mp_config_view_fill_api(&api);
    MP_CHECK_EQ_INT(api.cfg_count(root), 2);
    MP_CHECK(api.cfg_name(root) == NULL);
    config_destroy(&lc);
}

MP_TEST_MAIN(MP_CASE(example_config_loads), MP_CASE(empty_file_gives_defaults),
             MP_CASE(full_config_values), MP_CASE(instance_settings_never_null),
             MP_CASE(include_resolves_against_config_dir),
             MP_CASE(fixture_errors_have_file_and_line),
             MP_CASE(protocol_error_lists_valid_names),
             MP_CASE(duplicate_listener_names_both_lines), MP_CASE(missing_file_is_io_error),
             MP_CASE(relative_path_uses_file_dir), MP_CASE(string_errors_have_name_and_line),
             MP_CASE(load_string_accepts_and_resolves),
             MP_CASE(list_size_limits),
             MP_CASE(error_buffer_truncates_safely), MP_CASE(parse_address_forms),
             MP_CASE(protocol_names), MP_CASE(section_text_round_trip),
             MP_CASE(section_text_exact_layout), MP_CASE(section_text_of_loaded_instance),
             MP_CASE(text_parse_errors), MP_CASE(view_functions),
             MP_CASE(view_on_parsed_text_without_file))
